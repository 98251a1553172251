"""Optimizers by name."""

from .lion import Lion
from .optim_factory import OPTIMIZERS, WEIGHT_DECAY_FILTERS, AdamW, create_optimizer, list_optimizers

__all__ = ["create_optimizer", "list_optimizers", "OPTIMIZERS", "WEIGHT_DECAY_FILTERS", "AdamW", "Lion"]
