"""Kept so upstream mindcv's ``mindcv.utils.download.DownLoad`` still imports; the code is :mod:`mindcv.io.download`."""

from ..io.download import *  # noqa: F401,F403
from ..io.download import __all__  # noqa: F401
