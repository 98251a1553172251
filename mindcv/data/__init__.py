"""Data pipeline: datasets, transforms and loaders on ``mindspore.dataset``."""

from . import _opencv  # first: OpenCV's decode limits are read from the environment when cv2 is imported
from . import (
    arrays,
    auto_augment,
    constants,
    dataset_download,
    dataset_factory,
    demo,
    image_folder,
    loader,
    samplers,
    standard_datasets,
    transforms_factory,
)
from .arrays import ArrayLoader
from .auto_augment import (
    AugMixAugment,
    AutoAugment,
    RandAugment,
    TrivialAugmentWide,
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
    trivial_augment_wide_transform,
)
from .constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .dataset_download import Cifar10Download, Cifar100Download, MnistDownload
from .dataset_factory import create_dataset, get_dataset_download_root, list_datasets
from .demo import DEMO_CLASSES, ensure_demo_dataset
from .image_folder import UnreadableFiles, UnreadableImageError
from .loader import create_loader
from .samplers import ShardSampler
from .transforms_factory import DecodeImage, create_transforms

__all__ = [
    "create_dataset",
    "create_transforms",
    "DecodeImage",
    "create_loader",
    "ArrayLoader",
    "list_datasets",
    "get_dataset_download_root",
    "MnistDownload",
    "Cifar10Download",
    "Cifar100Download",
    "RandAugment",
    "AutoAugment",
    "TrivialAugmentWide",
    "AugMixAugment",
    "rand_augment_transform",
    "auto_augment_transform",
    "trivial_augment_wide_transform",
    "augment_and_mix_transform",
    "ensure_demo_dataset",
    "DEMO_CLASSES",
    "ShardSampler",
    "UnreadableFiles",
    "UnreadableImageError",
    "DEFAULT_CROP_PCT",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]
