"""Command-line tools shipped with the package."""
