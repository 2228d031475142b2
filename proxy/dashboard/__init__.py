"""The dashboard page (`index.html`, `login.html`): data files that `proxy.analytics` serves."""
