"""Utilities: downloads, torch-file reading."""

from .download import DownLoad, download_cached, get_cache_dir, get_default_download_root, set_default_download_root

__all__ = ["DownLoad", "download_cached", "get_cache_dir", "get_default_download_root", "set_default_download_root"]
