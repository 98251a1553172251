"""Batches from arrays already in memory, with the interface of a ``mindspore.dataset`` loader.

The search's proxy task decodes its images once and trains hundreds of candidates on them; this loader
feeds those arrays to the same training and evaluation loops (:mod:`mindcv.engine`) that ``train.py`` uses.
"""

from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from mindspore import Tensor

from ..errors import InvalidArgumentError

__all__ = ["ArrayLoader", "pad_crop_flip"]

# (batch NCHW, generator) -> augmented batch of the same shape
BatchTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class ArrayLoader:
    """Batches of ``(images, labels)`` from arrays; the order and augmentation of an epoch derive from (seed, epoch).

    Args:
        images: ``(N, C, H, W)`` float32.
        labels: ``(N,)`` int32.
        batch_size: images per batch.
        shuffle: a new permutation every epoch (else the array order).
        drop_remainder: drop the last incomplete batch.
        transform: applied to every training batch with the epoch's generator.
        seed: seed of the order and the augmentation.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        drop_remainder: bool = False,
        transform: Optional[BatchTransform] = None,
        seed: int = 0,
    ) -> None:
        if len(images) != len(labels):
            raise InvalidArgumentError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_remainder = batch_size, shuffle, drop_remainder
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the data order and augmentation of ``epoch``."""
        self.epoch = epoch

    def get_dataset_size(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.labels), self.batch_size)
        return full if self.drop_remainder or rest == 0 else full + 1

    def create_tuple_iterator(self, num_epochs: int = 1, output_numpy: bool = False) -> Iterator[Tuple]:
        """One epoch of batches (``num_epochs`` must be 1: the caller selects each epoch with :meth:`set_epoch`)."""
        if num_epochs != 1:
            raise InvalidArgumentError(f"ArrayLoader iterates one epoch at a time, got num_epochs={num_epochs}")
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.labels)) if self.shuffle else np.arange(len(self.labels))
        for i in range(self.get_dataset_size()):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images, labels = self.images[idx], self.labels[idx]
            if self.transform is not None:
                images = self.transform(images, rng)
            yield (images, labels) if output_numpy else (Tensor(images), Tensor(labels))


def pad_crop_flip(batch: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random horizontal flip and a random crop from a ``pad``-pixel reflection padding (CIFAR-style)."""
    flip = rng.random(len(batch)) < 0.5
    batch = np.where(flip[:, None, None, None], batch[..., ::-1], batch)
    padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    height, width = batch.shape[-2:]
    out = np.empty_like(batch)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * pad + 1, size=(len(batch), 2))):
        out[i] = padded[i, :, dy : dy + height, dx : dx + width]
    return out
