"""Seeding of Python, NumPy, MindSpore and the data pipeline."""

import random

import numpy as np

import mindspore as ms
import mindspore.dataset as ds

__all__ = ["set_seed"]


def set_seed(seed: int = 42, rank: int = 0) -> None:
    """Seed every generator with ``seed + rank``.

    Args:
        seed: base seed.
        rank: process rank (0 gives every rank the same model initialisation when all pass 0).
    """
    value = int(seed) + int(rank or 0)
    random.seed(value)
    np.random.seed(value)
    ms.set_seed(value)
    ds.config.set_seed(value)
