"""Version of the mindcv package."""

__version__ = "0.6.0"
