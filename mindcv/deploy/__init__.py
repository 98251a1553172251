"""Deployment: checked MindIR/ONNX export, ONNX Runtime inference and INT8 quantization."""

from .export import (
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    export_checked,
    export_model,
    exported_difference,
    make_onnx_batch_dynamic,
    run_exported,
)
from .onnxruntime_backend import BACKENDS, OnnxEvalStep, OnnxRuntimeModel, cached_onnx_export, onnx_cache_key

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "export_checked",
    "export_model",
    "exported_difference",
    "make_onnx_batch_dynamic",
    "run_exported",
    "BACKENDS",
    "OnnxEvalStep",
    "OnnxRuntimeModel",
    "cached_onnx_export",
    "onnx_cache_key",
]
