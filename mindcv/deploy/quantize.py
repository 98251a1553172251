"""INT8 post-training static quantization of an exported ONNX graph with onnxruntime's tools.

QDQ format, per-channel int8 weights, uint8 activations (onnxruntime's recommended layout for x86 CPUs),
calibrated on images run through the model's own evaluation transform. Layers can be kept in fp32 by kind
(``keep_fp32=("depthwise",)``): the depthwise convolutions are the usual suspects in MobileNet-like models.
"""

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from ..io.atomic import TMP_PREFIX, atomic_path
from .export import ExportError, require_onnx

__all__ = ["KEEP_FP32_CHOICES", "CALIBRATION_METHODS", "QuantizeResult", "quantize_int8", "select_calibration_files"]

KEEP_FP32_CHOICES = ("depthwise", "stem", "head", "classifier")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QUANT_OPSET = 13


@dataclass
class QuantizeResult:
    """An INT8 graph and what stayed in fp32.

    Attributes:
        path: the INT8 ONNX file.
        calibration_images: how many images calibrated it.
        kept_fp32: names of the nodes left in fp32.
    """

    path: str
    calibration_images: int
    kept_fp32: List[str] = field(default_factory=list)


def select_calibration_files(files: Sequence[str], count: int, seed: int = 0) -> List[str]:
    """``count`` files drawn without replacement (seeded), in their original order; all if fewer."""
    if count < 1:
        raise InvalidArgumentError(f"the number of calibration images must be >= 1, got {count}")
    if len(files) <= count:
        return list(files)
    chosen = np.random.default_rng(seed).choice(len(files), size=count, replace=False)
    return [files[i] for i in sorted(chosen)]


def cpu_lacks_vnni() -> bool:
    """This CPU has no AVX-512 VNNI / AVX-VNNI (read from /proc/cpuinfo; False when unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not {"avx512_vnni", "avx_vnni"} & set(flags)


def _nodes_to_keep(model_proto, keep: Sequence[str]) -> List[str]:
    """Names of the graph nodes of the kinds in ``keep`` (see :data:`KEEP_FP32_CHOICES`)."""
    unknown = sorted(set(keep) - set(KEEP_FP32_CHOICES))
    if unknown:
        raise InvalidArgumentError(f"unknown layer kind(s) {unknown} to keep in fp32; valid: {list(KEEP_FP32_CHOICES)}")
    convs = [n for n in model_proto.graph.node if n.op_type == "Conv"]
    names: List[str] = []
    for node in convs:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if "depthwise" in keep and group > 1:
            names.append(node.name)
    if "stem" in keep and convs:
        names.append(convs[0].name)
    if "head" in keep and convs:
        names.append(convs[-1].name)
    if "classifier" in keep:
        names += [n.name for n in model_proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return names


def _check_runs(path: str, input_name: str, batch: np.ndarray) -> None:
    """The quantized graph loads in onnxruntime and gives finite logits (it is never published otherwise)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = session.run(None, {input_name: batch})[0]
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"the INT8 graph does not run in onnxruntime: {type(err).__name__}: {err}") from None
    if not np.isfinite(logits).all():
        raise ExportError("the INT8 graph gives non-finite logits on the calibration images")


def quantize_int8(
    fp32_path: str,
    out_path: str,
    calibration: np.ndarray,
    keep_fp32: Sequence[str] = (),
    method: str = "percentile",
    progress: Optional[Callable[[int], None]] = None,
    batch_size: int = 16,
    reduce_range: Optional[bool] = None,
) -> QuantizeResult:
    """Write a static INT8 (QDQ, per-channel weights) version of an fp32 ONNX classifier.

    Args:
        fp32_path: the checked fp32 ONNX graph (e.g. from :func:`~mindcv.deploy.export_checked`).
        out_path: the INT8 file to write (replaced atomically; never left half-written).
        calibration: preprocessed images, ``(N, C, H, W)`` float32, as the model's evaluation transform makes them.
        keep_fp32: layer kinds left in fp32 (:data:`KEEP_FP32_CHOICES`).
        method: activation range calibration, one of :data:`CALIBRATION_METHODS`.
        progress: called with the number of images fed so far.
        batch_size: images per calibration batch.
        reduce_range: 7-bit weights. Default: on CPUs without VNNI, whose int8 multiply-add instruction
            (``vpmaddubsw``) saturates with 8-bit weights and loses accuracy.

    Returns:
        A :class:`QuantizeResult`.
    """
    require_onnx("INT8 quantization")
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise InvalidArgumentError(f"unknown calibration method '{method}'; valid: {', '.join(CALIBRATION_METHODS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    with np.errstate(over="ignore", invalid="ignore"):  # cast first: 1e300 is finite until it is float32
        calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise InvalidArgumentError(
            f"calibration images must be a non-empty (N, C, H, W) array, got {calibration.shape}"
        )
    if not np.isfinite(calibration).all():
        raise InvalidArgumentError("calibration images contain NaN or infinite values")
    try:
        input_name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
    except Exception as err:  # noqa: BLE001  (protobuf's DecodeError, a missing file, an empty graph)
        raise ExportError(f"cannot read the fp32 ONNX graph '{fp32_path}': {type(err).__name__}: {err}") from None
    # the histogram calibrators stack their batches: they need equal batch sizes
    step = batch_size if method == "minmax" else 1

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self):
            if self.start >= len(calibration):
                return None
            batch = calibration[self.start : self.start + step]
            self.start += len(batch)
            if progress is not None:
                progress(self.start)
            return {input_name: batch}

        def rewind(self) -> None:
            self.start = 0

    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=folder) as work:
        prepared = os.path.join(work, "prepared.onnx")
        source = onnx.load(fp32_path)
        opset = next((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < QUANT_OPSET:  # MindSpore writes opset 11; per-channel DequantizeLinear needs 13
            source = onnx.version_converter.convert_version(source, QUANT_OPSET)
        upgraded = os.path.join(work, "opset.onnx")
        onnx.save(source, upgraded)
        quant_pre_process(upgraded, prepared, skip_symbolic_shape=True)
        model_proto = onnx.load(prepared)
        kept = _nodes_to_keep(model_proto, keep_fp32)
        with atomic_path(out_path) as tmp_out:
            try:
                quantize_static(
                    prepared,
                    tmp_out,
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=cpu_lacks_vnni() if reduce_range is None else reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=kept,
                    calibrate_method={
                        "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy,
                    }[method],
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
            except Exception as err:  # noqa: BLE001  (onnxruntime's quantizer raises many kinds)
                raise ExportError(f"INT8 quantization of '{fp32_path}' failed: {type(err).__name__}: {err}") from None
            _check_runs(tmp_out, input_name, calibration[:batch_size])
    return QuantizeResult(out_path, len(calibration), kept)
