"""Index samplers: seeded shuffling, exact sharding across ranks, and repeated augmentation.

MindSpore calls a sampler's ``__iter__`` a few extra times while it sets a pipeline up, so an epoch
counter kept by counting ``__iter__`` calls is not the epoch number. The training loop therefore calls
:meth:`ShardSampler.set_epoch` before each epoch (as with PyTorch's ``DistributedSampler``): the order
of epoch ``e`` is then a pure function of ``(seed, e)``, identical on every rank and after a resume.
"""

import math
from typing import Iterator, List, Optional

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["ShardSampler"]


class ShardSampler:
    """Indices of one shard of one epoch.

    Args:
        dataset_size: number of samples in the dataset.
        num_shards: number of ranks (``None`` = 1).
        shard_id: this rank (``None`` = 0).
        shuffle: a new seeded permutation every epoch; otherwise the natural order.
        seed: base seed; every rank must use the same one.
        pad: training mode. Every shard gets ``ceil(N / num_shards)`` indices, the permutation being
            wrapped around to fill the last ones, so all ranks run the same number of steps and every
            sample is seen at least once per epoch. With ``pad=False`` (evaluation) the shards are a
            partition: together they hold every sample exactly once, so distributed metrics equal
            single-process metrics exactly.
        num_samples: use only this many samples per epoch (across all shards).
        num_repeats: repeated augmentation (DeiT): each sampled index appears ``num_repeats`` times in
            a row before sharding, so its copies land on different ranks (or in one batch on a single
            rank), and the epoch keeps its length.
        block_size: shards take consecutive blocks of this many indices in turn (set it to the per-device
            batch): step ``s`` of rank ``r`` then trains on block ``s * num_shards + r``, exactly the
            micro-batch a single process accumulating ``num_shards`` micro-batches sees. 1 = strided.
    """

    def __init__(
        self,
        dataset_size: int,
        num_shards: Optional[int] = None,
        shard_id: Optional[int] = None,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
        num_samples: Optional[int] = None,
        num_repeats: int = 0,
        block_size: int = 1,
    ) -> None:
        num_shards = num_shards or 1
        shard_id = shard_id or 0
        if dataset_size < 1:
            raise InvalidArgumentError("cannot sample from an empty dataset")
        if not 0 <= shard_id < num_shards:
            raise InvalidArgumentError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        if num_samples is not None and num_samples < 1:
            raise InvalidArgumentError(f"num_samples must be >= 1, got {num_samples}")
        if num_repeats < 0:
            raise InvalidArgumentError(f"num_repeats must be >= 0, got {num_repeats}")
        self.dataset_size = dataset_size
        self.num_shards, self.shard_id = num_shards, shard_id
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.total = min(num_samples or dataset_size, dataset_size)
        self.num_repeats = num_repeats
        if block_size < 1:
            raise InvalidArgumentError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def _epoch_order(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_size)
        else:
            order = np.arange(self.dataset_size)
        order = order[: self.total]
        if self.num_repeats > 1:
            order = np.repeat(order, self.num_repeats)
        return order

    def __len__(self) -> int:
        if self.pad:
            per_shard = math.ceil(self.total / self.num_shards)
            if self.num_shards > 1 and self.block_size > 1:  # whole blocks for every shard
                per_shard = math.ceil(per_shard / self.block_size) * self.block_size
            return per_shard
        return len(range(self.shard_id, self.total, self.num_shards))

    def indices(self) -> List[int]:
        """This shard's indices for the current epoch."""
        order = self._epoch_order()
        if self.pad:
            per_shard = len(self)
            needed = per_shard * self.num_shards
            if len(order) < needed:
                order = np.resize(order, needed)  # wrap around
            order = order[:needed]
            return self._take(order)[:per_shard].tolist()
        return self._take(order[: self.total]).tolist()

    def _take(self, order: np.ndarray) -> np.ndarray:
        """This shard's part of ``order``: every ``num_shards``-th block of ``block_size`` indices."""
        if self.block_size == 1 or self.num_shards == 1:
            return order[self.shard_id :: self.num_shards]
        block = np.arange(len(order)) // self.block_size
        return order[block % self.num_shards == self.shard_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())
