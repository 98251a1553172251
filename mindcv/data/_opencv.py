"""Import OpenCV with known decoding limits (imported by ``mindcv.data`` before anything else uses cv2).

``cv2.imdecode`` refuses images above ``OPENCV_IO_MAX_IMAGE_PIXELS`` pixels (and wider or taller than
``OPENCV_IO_MAX_IMAGE_WIDTH`` / ``_HEIGHT``) by *raising* ``cv2.error``. OpenCV reads these environment
variables once, when its library is loaded (``import cv2``); changing them later has no effect. This module
sets them explicitly (to OpenCV's own defaults, unless the user already set them) before the first
``import cv2``, and records the effective values, so that :func:`mindcv.data.image_folder.decode_image`
never hands OpenCV an image it would refuse: the header check in ``decode_image`` enforces
``min(max_image_pixels, OPENCV_MAX_IMAGE_PIXELS)`` and reports the file by path instead. To decode images
above 2**30 pixels, set ``OPENCV_IO_MAX_IMAGE_PIXELS`` in the environment before starting Python.
"""

import logging
import os
import sys

_logger = logging.getLogger(__name__)

# OpenCV's compiled-in defaults (modules/imgcodecs/src/loadsave.cpp)
_DEFAULTS = {
    "OPENCV_IO_MAX_IMAGE_PIXELS": 1 << 30,
    "OPENCV_IO_MAX_IMAGE_WIDTH": 1 << 20,
    "OPENCV_IO_MAX_IMAGE_HEIGHT": 1 << 20,
}

#: True when cv2 was already imported before mindcv.data (the environment values below are then a best guess)
IMPORTED_BEFORE = "cv2" in sys.modules
if not IMPORTED_BEFORE:
    for _name, _value in _DEFAULTS.items():
        os.environ.setdefault(_name, str(_value))

import cv2  # noqa: E402  (the environment must be set first)


def _limit(name: str) -> int:
    """The value OpenCV parsed: digits with an optional ``KB`` / ``MB`` suffix (as ``parseOption<size_t>``)."""
    raw = os.environ.get(name, "").strip()
    digits = raw.rstrip("KMBkmb")
    scale = {"": 1, "KB": 1024, "MB": 1024 * 1024}.get(raw[len(digits) :].upper())
    if not digits.isdigit() or scale is None:
        return _DEFAULTS[name]
    return int(digits) * scale


OPENCV_MAX_IMAGE_PIXELS = _limit("OPENCV_IO_MAX_IMAGE_PIXELS")
OPENCV_MAX_IMAGE_WIDTH = _limit("OPENCV_IO_MAX_IMAGE_WIDTH")
OPENCV_MAX_IMAGE_HEIGHT = _limit("OPENCV_IO_MAX_IMAGE_HEIGHT")
if IMPORTED_BEFORE:
    _logger.debug(
        "cv2 was imported before mindcv.data; assuming OpenCV's decode limit is %d pixels", OPENCV_MAX_IMAGE_PIXELS
    )

__all__ = ["cv2", "OPENCV_MAX_IMAGE_PIXELS", "OPENCV_MAX_IMAGE_WIDTH", "OPENCV_MAX_IMAGE_HEIGHT", "IMPORTED_BEFORE"]
