"""tandem: the command-line client of a Tandem server's /api/v1/."""

__version__ = "0.1.0"
