"""Utilities: checkpoint rotation, EMA, train step, logging, seeding, CPU kernel choice (downloads: mindcv.io);
upstream mindcv's ``mindspore.Model`` training API (create_trainer, StateMonitor, ...) on the same train step."""

from ..io.download import DownLoad, download_cached, get_cache_dir, get_default_download_root, set_default_download_root
from .amp import auto_mixed_precision
from .callbacks import StateMonitor, ValCallback, get_resume_epoch
from .checkpoint_manager import CheckpointManager
from .ema import EMA
from .logger import set_logger
from .model_stats import count_macs, count_params
from .random import set_seed
from .reduce_manager import AllReduceSum
from .train_step import GradientAccumulation, ModelTrainStep, NetWithLoss, TrainStep
from .trainer_factory import create_trainer, get_metrics, require_customized_train_step

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
    "ModelTrainStep",
    "GradientAccumulation",
    "AllReduceSum",
    "auto_mixed_precision",
    "StateMonitor",
    "ValCallback",
    "get_resume_epoch",
    "create_trainer",
    "get_metrics",
    "require_customized_train_step",
]
