"""Learning-rate schedules as per-step lists."""

from . import dynamic_lr
from .scheduler_factory import SCHEDULERS, create_scheduler

__all__ = ["create_scheduler", "SCHEDULERS"]
