"""The chart library the dashboard inlines (uPlot, MIT): data files, see README.md here."""
