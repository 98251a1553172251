"""Export to MindIR or ONNX, checked against the in-framework model before the file is published.

:func:`export_checked` is what ``export.py`` and the ONNX Runtime backend use: it folds BatchNorm in a copy
built from the model's own settings, writes the graph under a temporary name, runs batches through the
exported file (MindIR reloaded by MindSpore, ONNX in onnxruntime), compares them with the unfused model and
only then moves the file to its final name. A graph that does not reproduce the model never appears under
the name a user asked for.
"""

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

from ..errors import InvalidArgumentError, MindcvError
from ..io.atomic import atomic_path, current_umask
from ..kernels import standard_depthwise
from ..models.fuse import fuse_bn
from ..models.loading import LoadedModel

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "export_model",
    "export_checked",
    "make_onnx_batch_dynamic",
    "run_exported",
    "exported_difference",
    "check_exported",
    "require_onnx",
]

EXPORT_FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
ONNX_BATCH_NAME = "batch"
# What mindspore.export(file_format="ONNX") logs on every call (a WARNING on MindSpore's logger, MindSpore 2.10).
ONNX_DEPRECATION_MESSAGE = "mindspore.export(file_format='ONNX') will be deleted"


class _DropMindsporeOnnxDeprecation(logging.Filter):
    """Drops exactly MindSpore's "mindspore.export(file_format='ONNX') will be deleted" warning record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.getMessage().startswith(ONNX_DEPRECATION_MESSAGE))


@contextmanager
def _without_onnx_deprecation_warning() -> Iterator[None]:
    """Run a ``mindspore.export(..., file_format="ONNX")`` call without its deprecation warning.

    The warning asks the caller of ``mindspore.export`` to move to ``mindspore.onnx.export()``; a user of
    export.py can do nothing about it. mindcv keeps ``mindspore.export``: in MindSpore 2.10 its successor goes
    through another exporter (``_get_onnx_func_graph_proto``) whose graphs have not been checked against the
    torchvision/timm fixtures that this path reproduces (tests/test_deploy.py). Every other MindSpore message
    still gets through.
    """
    from mindspore import log as ms_log

    get_logger = getattr(ms_log, "_get_logger", None)  # MindSpore's one logger (a per-process name)
    if get_logger is None:  # another MindSpore: nothing known to filter
        yield
        return
    logger = get_logger()
    drop = _DropMindsporeOnnxDeprecation()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class ExportError(MindcvError, RuntimeError):
    """An exported graph does not reproduce the model, or cannot be written or checked."""


def require_onnx(what: str) -> None:
    """Raise a clear error when ``onnx``/``onnxruntime`` are missing (``what`` says what needed them)."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(
            f"{what} needs {' and '.join(missing)}: pip install {' '.join(missing)} (or pip install -e '.[onnx]' "
            "in a mindcv checkout)"
        )


def export_model(
    model: nn.Cell, file_name: str, fmt: str, image_size: int, batch_size: int = -1, in_channels: int = 3
) -> str:
    """Export ``model`` (inference mode) as it is, with MindSpore's own depthwise convolution.

    Args:
        model: the network; fold BatchNorm first (:meth:`~mindcv.models.loading.LoadedModel.fused_copy`).
        file_name: output path without extension.
        fmt: ``"MINDIR"`` or ``"ONNX"``.
        image_size: input height and width.
        batch_size: fixed batch size, or -1 for a dynamic batch (MindIR only; see :func:`make_onnx_batch_dynamic`).
        in_channels: input channels.

    Returns:
        The written path.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgumentError(f"unknown export format '{fmt}'; valid: {', '.join(EXPORT_FORMATS)}")
    model.set_train(False)
    batch = None if batch_size < 0 else batch_size
    spec = ms.Tensor(shape=[batch, in_channels, image_size, image_size], dtype=ms.float32)
    with standard_depthwise(model):  # an exported file must run without this machine's kernel library
        with _without_onnx_deprecation_warning():  # a note to mindcv's code, not to its users (see there)
            ms.export(model, spec, file_name=file_name, file_format=fmt)
    return file_name + EXPORT_FORMATS[fmt]


def make_onnx_batch_dynamic(path: str) -> bool:
    """Turn the leading dimension of every graph input and output of an ONNX file into a symbolic ``batch``.

    MindSpore traces ONNX graphs with static shapes; MnasNet has no reshape that bakes the batch size in,
    so renaming the leading dimension is enough. Returns False when the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ImportError:
        return False
    graph_proto = onnx.load(path)
    for value in list(graph_proto.graph.input) + list(graph_proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH_NAME
    # intermediate shapes recorded at trace time would contradict other batch sizes
    del graph_proto.graph.value_info[:]
    onnx.save(graph_proto, path)
    return True


def run_exported(path: str, x: np.ndarray) -> np.ndarray:
    """Run an exported file: MindIR with MindSpore, ONNX with onnxruntime (ImportError when it is missing)."""
    if path.endswith(".mindir"):
        return nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def exported_difference(
    reference: nn.Cell, path: str, image_size: int, batch: int, in_channels: int = 3
) -> Tuple[float, float]:
    """``(max-abs, relative to the largest logit)`` difference of the exported graph and ``reference``."""
    x = np.random.default_rng(batch).standard_normal((batch, in_channels, image_size, image_size)).astype(np.float32)
    expected = reference(ms.Tensor(x)).asnumpy()
    got = run_exported(path, x)
    if got.shape != expected.shape:
        raise ExportError(f"'{path}' returns shape {got.shape} for a batch of {batch}, expected {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(diff):
        return float("inf"), float("inf")
    return diff, diff / max(float(np.abs(expected).max()), 1e-30)


def check_exported(
    model: nn.Cell,
    path: str,
    image_size: int,
    batch: int = 3,
    in_channels: int = 3,
    reference: Optional[nn.Cell] = None,
) -> float:
    """Max-abs difference between the exported graph and ``reference`` (default: ``model``) on a random batch."""
    return exported_difference(reference or model, path, image_size, batch, in_channels)[0]


@dataclass
class ExportResult:
    """What :func:`export_checked` wrote and how closely the file reproduces the model.

    Attributes:
        path: the published file.
        fmt: ``"MINDIR"`` or ``"ONNX"``.
        image_size: the input height and width baked into the graph.
        dynamic_batch: the batch dimension is symbolic.
        folded: the number of BatchNorm layers folded into convolutions.
        differences: per checked batch size, ``(max-abs, relative)`` difference to the unfused model.
    """

    path: str
    fmt: str
    image_size: int
    dynamic_batch: bool
    folded: int
    differences: Dict[int, Tuple[float, float]] = field(default_factory=dict)

    @property
    def worst_relative(self) -> float:
        """The largest relative difference over the checked batches (0 when nothing was checked)."""
        return max((rel for _, rel in self.differences.values()), default=0.0)


def export_checked(
    loaded: LoadedModel,
    file_name: str,
    fmt: str = "ONNX",
    image_size: Optional[int] = None,
    batch_size: int = -1,
    fuse: bool = True,
    tolerance: float = 1e-4,
    check_batches: Sequence[int] = (1, 3),
) -> ExportResult:
    """Export a loaded model and publish the file only if it reproduces the model.

    Args:
        loaded: from :func:`~mindcv.models.loading.load_model`.
        file_name: output path without extension.
        fmt: ``"MINDIR"`` or ``"ONNX"``.
        image_size: input size (default: the evaluation transform's).
        batch_size: fixed batch size, or -1 for a dynamic batch dimension.
        fuse: fold BatchNorm into the convolutions (in a copy; ``loaded.model`` is unchanged).
        tolerance: the largest accepted difference, relative to the largest logit.
        check_batches: batch sizes run through the file for the check (a fixed batch checks only itself).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: the exported graph differs from the model by more than ``tolerance`` (no file is left
            at ``file_name``), or ONNX tools are missing.
        InvalidArgumentError: a bad format, size or batch size.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidArgumentError(f"unknown export format '{fmt}'; valid: {', '.join(EXPORT_FORMATS)}")
    image_size = image_size or loaded.image_size
    if image_size < 1 or batch_size == 0 or batch_size < -1:
        raise InvalidArgumentError(
            f"image size must be >= 1 and batch size >= 1 or -1 (dynamic), got {image_size}, {batch_size}"
        )
    if not np.isfinite(tolerance) or tolerance < 0:
        raise InvalidArgumentError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if not check_batches or any(not isinstance(b, int) or b < 1 for b in check_batches):
        raise InvalidArgumentError(
            f"check_batches must be batch sizes >= 1 (a file is never published unchecked), got {check_batches}"
        )
    if fmt == "ONNX":
        require_onnx("checking an ONNX export")
    model, folded = loaded.model, 0
    if fuse:  # in a copy built with the model's own settings (its BN eps): folding changes only round-off
        model = loaded.rebuild()
        folded = fuse_bn(model)
    dynamic = batch_size < 0
    # MindSpore 2.10 cannot trace ONNX with dynamic shapes: trace at batch 1, then rename the dimension
    traced_batch = 1 if (fmt == "ONNX" and dynamic) else batch_size
    final = file_name + EXPORT_FORMATS[fmt]
    # a full disk or a read-only folder is an AtomicWriteError: one line naming the file (exit 1), nothing left
    with atomic_path(final, EXPORT_FORMATS[fmt]) as tmp:
        export_model(model, tmp[: -len(EXPORT_FORMATS[fmt])], fmt, image_size, traced_batch, loaded.model.in_channels)
        # MindSpore leaves the file owner-read-only, and make_onnx_batch_dynamic rewrites it in place
        os.chmod(tmp, 0o666 & ~current_umask())
        if fmt == "ONNX" and dynamic:
            make_onnx_batch_dynamic(tmp)
        result = ExportResult(final, fmt, image_size, dynamic, folded)
        for batch in check_batches if dynamic else (batch_size,):
            result.differences[batch] = exported_difference(
                loaded.model, tmp, image_size, batch, loaded.model.in_channels
            )
        if not result.worst_relative <= tolerance:
            details = ", ".join(f"batch {b}: {rel:.2e}" for b, (_, rel) in result.differences.items())
            raise ExportError(
                f"the exported {fmt} graph does not reproduce the model ({details} relative to the largest "
                f"logit, tolerance {tolerance:g}); nothing was written to '{final}'"
            )
    return result
