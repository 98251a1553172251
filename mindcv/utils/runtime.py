"""Device, execution mode and data-parallel setup shared by train.py and validate.py."""

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops

__all__ = ["Runtime", "init_runtime", "launched_by_cluster_tool"]

_logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where this process runs: device, mode, rank and group size."""

    device_target: str
    mode: int
    distributed: bool
    rank: int = 0
    group_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_shards(self) -> Optional[int]:
        return self.group_size if self.distributed else None

    @property
    def shard_id(self) -> Optional[int]:
        return self.rank if self.distributed else None

    def sum_across_ranks(self) -> Optional[Callable[[np.ndarray], np.ndarray]]:
        """A function summing a float64 vector over ranks (``None`` when not distributed)."""
        if not self.distributed:
            return None
        all_reduce = ops.AllReduce()

        def reduce(values: np.ndarray) -> np.ndarray:
            # float64 keeps exact integer counts for any realistic dataset size
            return all_reduce(Tensor(values.astype(np.float64))).asnumpy()

        return reduce


def launched_by_cluster_tool() -> bool:
    """Whether msrun / mpirun / a rank table started this process."""
    return any(
        k in os.environ for k in ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE", "RANK_SIZE")
    )


def init_runtime(
    device_target: str = "CPU", mode: int = 0, distribute: bool = False, require_launcher: bool = True
) -> Runtime:
    """Select the device and mode and, when ``distribute``, join the data-parallel group.

    The collective backend is MindSpore's own (HCCL on Ascend, NCCL on GPU, ``mccl`` on the CPU); the
    processes are started by msrun or by ``scripts/`` launchers.

    Args:
        device_target: ``CPU``, ``GPU`` or ``Ascend``.
        mode: 0 for GRAPH_MODE, 1 for PYNATIVE_MODE.
        distribute: join the data-parallel group.
        require_launcher: with ``distribute`` but no launcher, raise (training) instead of running as a
            single process with a warning (validation, where a recipe's ``distribute: True`` is incidental).

    Raises:
        RuntimeError: ``distribute`` without a launcher (no cluster environment variables).
    """
    ms.set_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == 0 else ms.PYNATIVE_MODE)
    if not distribute:
        return Runtime(device_target, mode, False)
    if not launched_by_cluster_tool():
        if not require_launcher:
            _logger.warning("distribute is set but no launcher started this process: running as a single process")
            return Runtime(device_target, mode, False)
        raise RuntimeError(
            "--distribute True needs a launcher that starts every process: use "
            "`msrun --worker_num N --local_worker_num N python train.py ...` or scripts/run_distributed_*.sh "
            "(or drop --distribute for a single process)"
        )
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    _logger.info("joined data-parallel group: rank %d of %d", rank, size)
    return Runtime(device_target, mode, True, rank, size)
