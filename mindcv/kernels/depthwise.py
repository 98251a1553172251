"""Direct depthwise convolution kernels for the CPU, built once per machine and checked before use.

MindSpore 2.10 computes depthwise-convolution gradients on the CPU in slow scalar kernels: depthwise layers
took 60% of a MnasNet training step (``benchmarks/results/profile_train_step.md``). ``depthwise_direct.cc``
computes the same convolution directly (2.4x faster over mnasnet_100's depthwise layers, forward and
gradients, ``benchmarks/results/depthwise_direct.md``). :class:`DepthwiseConv2d` is an ``nn.Conv2d``
(same parameters, same checkpoint names, same results) that runs them when it can:

* device target CPU, float32 input and weight, odd kernel up to 11, stride 1 or 2, padding ``k // 2``;
* the library is built with the C++ compiler (``$CXX`` or ``g++``, ``-O3 -march=native -pthread``) the first
  time a model needs it, into ``$MINDCV_KERNEL_CACHE`` or ``<cache>/kernels/`` (``<cache>`` is ``$MINDCV_HOME``
  or ``~/.cache/mindcv``),
  named by a hash of the source, the flags, the compiler and the CPU, so that a cache shared between
  machines never hands one CPU another's binary. A file lock makes concurrent processes build it once.
* Before a library is used, a child process checks it against a numpy reference (forward, both gradients,
  strides 1 and 2, odd sizes, batch 1, refused shapes); the check is recorded next to it with the library's
  sha256, so a changed or truncated file is checked (and rebuilt) again instead of loaded.
* Anything missing (no compiler, a failed build or check, another device) falls back to MindSpore's
  convolution with one warning that says why. ``MINDCV_DIRECT_DEPTHWISE=0`` turns the kernels off;
  ``MINDCV_DIRECT_DEPTHWISE=1`` makes their absence an error instead of a warning.
* They use MindSpore's op thread count (:func:`set_kernel_threads`, called by ``mindcv.runtime``).
* Export (ONNX, MindIR) never contains them: :func:`standard_depthwise` switches a model to MindSpore's
  convolution, which ``export.py`` does, so exported files run anywhere.
"""

import contextlib
import copy
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import functional as F

from ..errors import InvalidArgumentError, RunFailedError
from ..io.atomic import AtomicWriteError, atomic_path, atomic_write, remove_stale_temporaries
from ..io.download import LockTimeoutError, _file_lock, file_sha256, get_cache_dir
from ..utils.cpu_isa import _cpuinfo, _lock_timeout, cpu_model

__all__ = [
    "ENV_SWITCH",
    "KernelStatus",
    "DepthwiseConv2d",
    "DirectDepthwiseUnavailableError",
    "depthwise_kernel_status",
    "direct_depthwise_supported",
    "set_kernel_threads",
    "standard_depthwise",
    "use_direct_depthwise",
]

_logger = logging.getLogger(__name__)

ENV_SWITCH = "MINDCV_DIRECT_DEPTHWISE"
CACHE_ENV = "MINDCV_KERNEL_CACHE"  # the folder for built kernels (default: <cache>/kernels)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_direct.cc")
_SELFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_depthwise_selftest.py")
_RUN_SCRIPT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
FLAGS = ("-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=c++14")
MAX_KERNEL = 11
BUILD_TIMEOUT_S = 300.0
SELFTEST_TIMEOUT_S = 120.0


class DirectDepthwiseUnavailableError(RunFailedError):
    """``MINDCV_DIRECT_DEPTHWISE=1`` asked for the direct kernels and they cannot be used here."""


@dataclass(frozen=True)
class KernelStatus:
    """Whether the direct kernels are in use in this process, and why (not).

    Attributes:
        library: the checked library, or ``None`` when MindSpore's convolution is used.
        reason: one sentence for logs and reports.
        slower: MindSpore's kernels run where the direct ones would have been faster (warned about once).
    """

    library: Optional[str]
    reason: str
    slower: bool = True

    @property
    def name(self) -> str:
        """``"direct"`` or ``"mindspore"``: which depthwise kernels layers built now run."""
        return "direct" if self.library else "mindspore"


_status: Optional[KernelStatus] = None
_status_lock = threading.Lock()
_threads = 0  # 0: MindSpore's default op thread count, read when the library is loaded


# ------------------------------------------------------------------------------------------------ the switch
def _switch() -> str:
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes"):
        return "required"
    raise InvalidArgumentError(
        f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not valid; use 0 (off), 1 (required) or auto"
    )


def depthwise_kernel_status() -> KernelStatus:
    """Build and check the kernel library if needed (once per process), and say whether it is used.

    Returns:
        The status. With ``MINDCV_DIRECT_DEPTHWISE=1``, a library that cannot be used raises instead.

    Raises:
        DirectDepthwiseUnavailableError: the kernels were required and cannot be used.
    """
    global _status
    with _status_lock:
        if _status is None:
            switch = _switch()
            if switch == "off":
                _status = KernelStatus(None, f"turned off by {ENV_SWITCH}=0")
            else:
                _status = _find_library()
                if _status.library is None:
                    if switch == "required":
                        status, _status = _status, None
                        raise DirectDepthwiseUnavailableError(
                            f"{ENV_SWITCH}=1 asks for the direct depthwise kernels, but {status.reason}"
                        )
                    if _status.slower:
                        warnings.warn(
                            f"direct depthwise kernels not used: {_status.reason}; MindSpore's depthwise "
                            f"convolution runs instead (about 2.4x slower on the CPU; {ENV_SWITCH}=0 silences this)",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                else:
                    _apply_threads(_status.library)
            _logger.info("depthwise kernels: %s (%s)", _status.name, _status.reason)
        return _status


def _reset_for_tests() -> None:
    global _status
    with _status_lock:
        _status = None


# --------------------------------------------------------------------------------------- build and check
def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX") or "g++")


@functools.lru_cache(maxsize=None)  # asked for the cache key and the check record: run it once per process
def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, errors="replace", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    return done.stdout.splitlines()[0] if done.stdout else "unknown"


def _cpu_identity() -> str:
    return f"{cpu_model()}|{_cpuinfo().get('flags', '')}|{os.uname().machine}"


def library_path(compiler: str) -> str:
    """Where the library for this source, these flags, this compiler and this CPU lives in the cache."""
    folder = os.environ.get(CACHE_ENV) or os.path.join(get_cache_dir(), "kernels")
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(FLAGS).encode(), _compiler_version(compiler).encode(), _cpu_identity().encode()])
    ).hexdigest()[:16]
    # absolute: MindSpore opens the library at the first forward, possibly after the process changed directory
    return os.path.abspath(os.path.join(os.path.expanduser(folder), f"depthwise_direct-{key}.so"))


def _recorded_check(library: str) -> bool:
    """Whether ``library`` passed the check as it is now (its sha256 is the one recorded after the check)."""
    try:
        with open(library + ".checked", encoding="utf-8") as f:
            recorded = json.load(f)
        return isinstance(recorded, dict) and recorded.get("sha256") == file_sha256(library)
    except (OSError, ValueError):
        return False


def _self_test(library: str) -> Optional[str]:
    """Run the child check; ``None`` when it passed, else what went wrong."""
    cmd = [sys.executable, "-c", _RUN_SCRIPT, _SELFTEST, library]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=SELFTEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"its check did not finish within {SELFTEST_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    said = (done.stdout + done.stderr).strip().splitlines()
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
    return f"its check failed ({how}: {said[-1] if said else 'no output'})"


class _BuildFailed(Exception):
    """Why a build or its check failed (raised inside :func:`atomic_path` so the library is not published)."""


def _build(compiler: str, target: str) -> Optional[str]:
    """Compile into a temporary sibling of ``target`` and check it there; ``None`` on success."""
    try:
        with atomic_path(target, ".so") as tmp:
            problem = _compile_and_check(compiler, tmp)
            if problem:
                raise _BuildFailed(problem)
            with atomic_write(target + ".checked") as f:  # the record is only trusted with a matching sha256
                json.dump({"sha256": file_sha256(tmp), "source": SOURCE, "compiler": _compiler_version(compiler)}, f)
    except _BuildFailed as failed:
        return str(failed)
    return None


def _compile_and_check(compiler: str, library: str) -> Optional[str]:
    """Compile the kernels into ``library`` and run the child check on it; ``None`` on success."""
    cmd = [compiler, *FLAGS, "-o", library, SOURCE]
    _logger.warning("building the direct depthwise kernels once for this machine: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{compiler} did not finish within {BUILD_TIMEOUT_S:.0f} s"
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        return f"{compiler} failed to build {SOURCE} ({said[-1] if said else f'exit code {done.returncode}'})"
    problem = _self_test(library)
    if problem:
        return f"the library built by {compiler} is wrong: {problem}"
    return None


def _find_library() -> KernelStatus:
    try:
        if ms.get_context("device_target") != "CPU":
            # the kernels are CPU code: on an accelerator MindSpore's own kernels are the right ones, no warning
            return KernelStatus(None, f"the device target is {ms.get_context('device_target')}, not CPU", slower=False)
    except Exception as err:  # noqa: BLE001  (no device set yet and none available: report it, do not crash)
        return KernelStatus(None, f"the device target could not be read ({err})")
    compiler = _compiler()
    if compiler is None:
        wanted = os.environ.get("CXX") or "g++"
        return KernelStatus(None, f"no C++ compiler ({wanted!r} is not on PATH; Debian: apt-get install g++)")
    target = library_path(compiler)
    if ":" in target:  # MindSpore names an AOT kernel "<library>:<function>" and splits at the first colon
        return KernelStatus(None, f"the kernel cache path {target!r} contains ':'; set {CACHE_ENV} to a path without")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # one lock for the folder: whoever holds it may remove temporaries left by a killed build
        lock = os.path.join(os.path.dirname(target), "build.lock")
        with _file_lock(lock, timeout=_lock_timeout(), what="building depthwise kernels"):
            if os.path.exists(target) and _recorded_check(target):
                problem = None
            else:
                if os.path.exists(target):
                    _logger.warning(
                        "the depthwise kernel library %s does not match its check record: rebuilding", target
                    )
                remove_stale_temporaries(os.path.dirname(target))  # a build killed mid-way (we hold the lock)
                problem = _build(compiler, target)
    except LockTimeoutError as err:
        return KernelStatus(None, f"another process held the build lock too long ({err})")
    except (OSError, AtomicWriteError) as err:  # AtomicWriteError: the check record could not be written
        return KernelStatus(None, f"the kernel cache {os.path.dirname(target)} is unusable ({err})")
    if problem:
        return KernelStatus(None, problem)
    try:
        _direct_op(target, 1)  # MindSpore checks the library's folder (MS_CUSTOM_AOT_WHITE_LIST) when the op is made
    except Exception as err:  # noqa: BLE001  (whatever MindSpore refuses, the layers fall back)
        return KernelStatus(None, f"MindSpore refuses the kernel library {target} ({type(err).__name__}: {err})")
    return KernelStatus(target, f"built and checked library {target}")


# ---------------------------------------------------------------------------------------------------- threads
def set_kernel_threads(threads: int) -> None:
    """Run the direct kernels on ``threads`` threads (call with MindSpore's op thread count).

    Args:
        threads: positive thread count; 0 means MindSpore's default (the processor count).
    """
    global _threads
    if threads < 0:
        raise InvalidArgumentError(f"kernel threads must be >= 0, got {threads}")
    _threads = int(threads)
    if _status is not None and _status.library:
        _apply_threads(_status.library)


def _apply_threads(library: str) -> None:
    # MindSpore dlopens the same path, so this handle and MindSpore's share the library's thread setting
    ctypes.CDLL(library).DwSetThreads(ctypes.c_int(_threads))


# ------------------------------------------------------------------------------------------------- the cell
_ops: Dict[tuple, ops.Custom] = {}


def _direct_op(library: str, stride: int) -> ops.Custom:
    """The forward operator for ``stride``, whose bprop is the two gradient kernels."""
    key = (library, stride)
    if key not in _ops:
        grad_input = ops.Custom(
            f"{library}:DwBwdInputS{stride}", out_shape=lambda x, g, w: x, out_dtype=lambda x, g, w: x, func_type="aot"
        )
        grad_weight = ops.Custom(
            f"{library}:DwBwdFilterS{stride}", out_shape=lambda x, g, w: w, out_dtype=lambda x, g, w: w, func_type="aot"
        )

        def bprop(x, w, out, dout):
            return grad_input(x, dout, w), grad_weight(x, dout, w)

        def out_shape(x, w):
            return [x[0], x[1], *(-1 if d < 0 else (d - 1) // stride + 1 for d in x[2:])]

        _ops[key] = ops.Custom(
            f"{library}:DwFwdS{stride}", out_shape=out_shape, out_dtype=lambda x, w: x, func_type="aot", bprop=bprop
        )
    return _ops[key]


def direct_depthwise_supported(in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int) -> bool:
    """Whether a convolution with these settings (and padding ``k // 2``) is one the direct kernels compute."""
    return groups == in_chs == out_chs and kernel_size % 2 == 1 and 1 < kernel_size <= MAX_KERNEL and stride in (1, 2)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (padding ``k // 2``) that runs the direct kernels on the CPU.

    Its parameters, their names and its results are those of ``nn.Conv2d(channels, channels, kernel_size,
    stride, pad_mode="pad", padding=kernel_size // 2, group=channels)``; only the kernels differ. Without
    the kernels (see :func:`depthwise_kernel_status`), or on non-float32 input, it is exactly that cell.

    Args:
        channels: input and output channels.
        kernel_size: odd kernel size up to 11.
        stride: 1 or 2.
        has_bias: add a bias.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, has_bias: bool = False) -> None:
        if not direct_depthwise_supported(channels, channels, kernel_size, stride, channels):
            raise InvalidArgumentError(
                f"DepthwiseConv2d computes odd kernels 3..{MAX_KERNEL} at stride 1 or 2, got kernel {kernel_size}, "
                f"stride {stride}"
            )
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=stride,
            pad_mode="pad",
            padding=kernel_size // 2,
            group=channels,
            has_bias=has_bias,
        )
        status = depthwise_kernel_status()
        self.direct = status.library is not None
        self.direct_conv = _direct_op(status.library, stride) if self.direct else self.conv2d

    def construct(self, x):
        # decided at compile time in GRAPH mode; anything the kernels do not compute (another dtype, a shape
        # known only at run time, a wrong input, which MindSpore's convolution then reports clearly) goes to
        # MindSpore's convolution
        if (
            self.direct
            and x.dtype == ms.float32
            and self.weight.dtype == ms.float32
            and x.ndim == 4
            and not F.is_sequence_value_unknown(x.shape)
            and x.shape[1] == self.in_channels
        ):
            output = self.direct_conv(x, self.weight)
        else:
            output = self.conv2d(x, self.weight)
        if self.has_bias:
            output = self.bias_add(output, self.bias)
        return output

    def __deepcopy__(self, memo):
        # the operators are stateless, shared by every layer, and cannot be re-created by copy: copies share them
        memo[id(self.direct_conv)] = self.direct_conv
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        for key, value in self.__dict__.items():
            copied.__dict__[key] = copy.deepcopy(value, memo)
        return copied


def use_direct_depthwise(model: nn.Cell, enabled: bool) -> int:
    """Switch every :class:`DepthwiseConv2d` of ``model`` to the direct kernels (if built) or to MindSpore's.

    Switch before the model's first call in GRAPH mode: MindSpore keeps a compiled graph, and the kernels in
    it, whatever the layers' switch says afterwards (as for :func:`~mindcv.models.fuse.fuse_bn`). A model
    called in GRAPH mode itself is refused; one compiled only inside another cell or function (a gradient
    wrapper) cannot be detected, so switch first, or create the model again.

    Args:
        model: the network.
        enabled: ``True`` for the direct kernels (where the layer has them), ``False`` for MindSpore's.

    Returns:
        How many layers run the direct kernels now.

    Raises:
        InvalidArgumentError: ``model`` (or one of its cells) was already compiled in GRAPH mode.
    """
    compiled = [name or "the model" for name, cell in model.cells_and_names() if getattr(cell, "compile_cache", None)]
    if compiled:
        raise InvalidArgumentError(
            f"{compiled[0]} was already run in GRAPH mode and keeps the depthwise kernels it was compiled with; "
            "switch before its first call, or create the model again"
        )
    return _set_direct(model, enabled)


def _set_direct(model: nn.Cell, enabled: bool) -> int:
    count = 0
    for _, cell in model.cells_and_names():
        if isinstance(cell, DepthwiseConv2d):
            cell.direct = bool(enabled) and cell.direct_conv is not cell.conv2d
            count += cell.direct
    return count


@contextlib.contextmanager
def standard_depthwise(model: nn.Cell) -> Iterator[nn.Cell]:
    """Within the block, ``model`` uses MindSpore's depthwise convolution; restored after.

    For export: ``ms.export`` compiles a graph of its own, so this works after GRAPH-mode calls too, and the
    model's own compiled graph is left as it was.
    """
    saved = {id(cell): cell.direct for _, cell in model.cells_and_names() if isinstance(cell, DepthwiseConv2d)}
    _set_direct(model, False)
    try:
        yield model
    finally:
        for _, cell in model.cells_and_names():
            if isinstance(cell, DepthwiseConv2d) and id(cell) in saved:
                cell.direct = saved[id(cell)]
