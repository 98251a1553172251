"""Device, execution mode, data-parallel setup and the host description shared by the CLIs and benchmarks.

A top-level module rather than part of :mod:`mindcv.utils` because it configures :mod:`mindcv.kernels`, which
sits above ``utils`` in the package's layers (``tests/test_layering.py``).
"""

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops

from .kernels import depthwise_kernel_status, set_kernel_threads
from .utils.cpu_isa import cpu_environment_line

__all__ = ["Runtime", "environment_line", "init_runtime", "launched_by_cluster_tool", "port_in_use"]

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
            # the CPU AllReduce has no float64: send a float32 pair (value, rounding remainder) and add them back
            # in float64; sums of integers below 2**24 (counts) stay exact, others get float32's rounding of the sum
            high = values.astype(np.float32)
            low = (values - high.astype(np.float64)).astype(np.float32)
            summed = all_reduce(Tensor(np.stack([high, low]))).asnumpy().astype(np.float64)
            return summed[0] + summed[1]

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
    if device_target == "CPU" and "OMPI_COMM_WORLD_SIZE" in os.environ and "MS_ROLE" not in os.environ:
        _join_dynamic_cluster_from_mpi()
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    if device_target == "CPU":
        # ranks on one host share its cores: one op thread pool per rank, not one per core per rank
        local = int(os.environ.get("MS_LOCAL_WORKER_NUM") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or size)
        threads = max(1, (os.cpu_count() or 1) // max(1, local))
        ms.device_context.cpu.op_tuning.threads_num(threads)
        set_kernel_threads(threads)  # our own kernels (mindcv.kernels) too
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    _logger.info("joined data-parallel group: rank %d of %d", rank, size)
    return Runtime(device_target, mode, True, rank, size)


def environment_line() -> str:
    """One line for benchmark results and logs: the CPU and oneDNN setup, and which depthwise kernels run.

    Returns:
        :func:`mindcv.utils.cpu_isa.cpu_environment_line` followed by the :mod:`mindcv.kernels` status.
    """
    try:
        kernels = depthwise_kernel_status().name
    except Exception as err:  # noqa: BLE001  (MINDCV_DIRECT_DEPTHWISE=1 without the kernels: say so in the line)
        kernels = f"unavailable ({err})"
    return f"{cpu_environment_line()}; depthwise kernels: {kernels}"


_SCHEDULER = "import mindspore as ms; ms.set_device('CPU'); from mindspore.communication import init; init()"


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` is already bound by another process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _join_dynamic_cluster_from_mpi() -> None:
    """Let ``mpirun -n N python train.py --distribute True`` work on the CPU.

    MindSpore's CPU collectives (mccl) run on its dynamic cluster: N workers plus a scheduler process,
    configured by ``MS_*`` variables. MPI rank r becomes worker r; rank 0 also starts the scheduler.
    The scheduler address is ``MS_SCHED_HOST``/``MASTER_ADDR`` (default 127.0.0.1; on several nodes
    pass the first node's address with ``mpirun -x MASTER_ADDR=...``) and ``MS_SCHED_PORT``/``MASTER_PORT``
    (default 8118).
    """
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    host = os.environ.get("MS_SCHED_HOST") or os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = int(os.environ.get("MS_SCHED_PORT") or os.environ.get("MASTER_PORT") or 8118)
    os.environ.update(
        MS_SCHED_HOST=host,
        MS_SCHED_PORT=str(port),
        MS_WORKER_NUM=os.environ["OMPI_COMM_WORLD_SIZE"],
        MS_ROLE="MS_WORKER",
        MS_NODE_ID=str(rank),
    )
    if rank == 0:
        if port_in_use("0.0.0.0", port):
            raise RuntimeError(
                f"scheduler port {port} is already in use: pass another one with MASTER_PORT=<free port>"
            )
        env = {**os.environ, "MS_ROLE": "MS_SCHED"}
        env.pop("MS_NODE_ID", None)
        subprocess.Popen(
            [sys.executable, "-c", _SCHEDULER], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    _logger.info("mpirun rank %d joins MindSpore's dynamic cluster at %s:%d", rank, host, port)
