"""One module per scenario of issue 7; each fills its part of the results dictionary."""
