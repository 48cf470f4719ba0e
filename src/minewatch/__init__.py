"""minewatch: find hidden cryptocurrency mining from traffic and meter data."""

__version__ = "0.1.0"
