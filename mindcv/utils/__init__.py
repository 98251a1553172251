"""Utilities: checkpoint rotation, EMA, train step, logging, seeding, CPU kernel choice (downloads: mindcv.io)."""

from ..io.download import DownLoad, download_cached, get_cache_dir, get_default_download_root, set_default_download_root
from .checkpoint_manager import CheckpointManager
from .ema import EMA
from .logger import set_logger
from .model_stats import count_macs, count_params
from .random import set_seed
from .train_step import NetWithLoss, TrainStep

__all__ = [
    "CheckpointManager",
    "DownLoad",
    "download_cached",
    "get_cache_dir",
    "get_default_download_root",
    "set_default_download_root",
    "EMA",
    "set_logger",
    "count_macs",
    "count_params",
    "set_seed",
    "NetWithLoss",
    "TrainStep",
]
