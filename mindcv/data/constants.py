"""Normalisation constants shared by models (pretrained metadata) and the data pipeline.

Means and standard deviations are on the 0-255 scale, as MindSpore's ``Normalize`` expects them for
uint8 images (the same convention as upstream mindcv).
"""

__all__ = [
    "DEFAULT_CROP_PCT",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]

DEFAULT_CROP_PCT = 0.875
IMAGENET_DEFAULT_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_DEFAULT_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
