"""Data pipeline: datasets, transforms and loaders on ``mindspore.dataset``."""

from . import _opencv  # first: OpenCV's decode limits are read from the environment when cv2 is imported
from . import (
    arrays,
    constants,
    dataset_factory,
    demo,
    image_folder,
    loader,
    samplers,
    standard_datasets,
    transforms_factory,
)
from .arrays import ArrayLoader
from .constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .dataset_factory import create_dataset, get_dataset_download_root, list_datasets
from .demo import DEMO_CLASSES, ensure_demo_dataset
from .image_folder import UnreadableFiles, UnreadableImageError
from .loader import create_loader
from .samplers import ShardSampler
from .transforms_factory import create_transforms

__all__ = [
    "create_dataset",
    "create_transforms",
    "create_loader",
    "ArrayLoader",
    "list_datasets",
    "get_dataset_download_root",
    "ensure_demo_dataset",
    "DEMO_CLASSES",
    "ShardSampler",
    "UnreadableFiles",
    "UnreadableImageError",
    "DEFAULT_CROP_PCT",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]
