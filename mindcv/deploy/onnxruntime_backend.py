"""ONNX Runtime as an inference backend: the exported, BN-folded graph of a loaded model.

The graph is exported on first use, checked against the MindSpore model (:func:`export_checked`), and
cached next to the checkpoint (or in ``<cache>/onnx`` when that folder is not writable or there is no
checkpoint). The cache key is a hash of the loaded weights and of everything that shapes the graph (model,
settings, input size, package version), so a changed checkpoint, the EMA copy or another input size get
their own file. A record beside the file holds the file's sha256, and every cache hit is run once more
against the model: a cached graph that was changed, damaged or replaced after it was written, or that misses
a stricter tolerance, is exported again, never used.
"""

import hashlib
import json
import logging
import os
from typing import Optional, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..io.atomic import AtomicWriteError, atomic_write
from ..io.download import file_sha256, get_cache_dir
from ..models.loading import LoadedModel
from ..version import __version__
from .export import ExportError, export_checked, exported_difference, require_onnx

__all__ = ["OnnxRuntimeModel", "OnnxEvalStep", "cached_onnx_export", "onnx_cache_key", "BACKENDS"]

_logger = logging.getLogger(__name__)
BACKENDS = ("mindspore", "onnxruntime")
_CACHE_FORMAT = 1  # bump when the exported graph changes for the same weights


def onnx_cache_key(loaded: LoadedModel, image_size: int) -> str:
    """sha256 of the loaded weights and of the settings that shape the exported graph."""
    digest = hashlib.sha256()
    settings = {
        "format": _CACHE_FORMAT,
        "mindcv": __version__,
        "model": loaded.model_name,
        "build": {k: v for k, v in sorted(loaded.build_kwargs.items())},
        "image_size": image_size,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for param in sorted(loaded.model.get_parameters(), key=lambda p: p.name):
        value = np.ascontiguousarray(param.asnumpy())
        digest.update(f"{param.name}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _cache_locations(loaded: LoadedModel, key: str) -> Tuple[str, ...]:
    fallback = os.path.join(get_cache_dir(), "onnx", f"{loaded.model_name}-{key[:16]}")
    if os.path.isfile(loaded.source):
        base = os.path.basename(loaded.source)
        return os.path.join(os.path.dirname(os.path.abspath(loaded.source)), f"{base}.{key[:16]}"), fallback
    return (fallback,)


def _valid_record(stem: str, key: str) -> bool:
    """The ONNX file at ``stem.onnx`` is the one exported for ``key`` and unchanged since."""
    path, record_path = stem + ".onnx", stem + ".onnx.json"
    if not (os.path.isfile(path) and os.path.isfile(record_path)):
        return False
    try:
        with open(record_path) as f:
            record = json.load(f)
        intact = record.get("key") == key and record.get("onnx_sha256") == file_sha256(path)
    except (OSError, ValueError, AttributeError):
        intact = False
    if not intact:
        _logger.warning("cached ONNX graph '%s' does not match its record (changed or damaged): exporting again", path)
    return intact


def _still_reproduces(loaded: LoadedModel, path: str, image_size: int, tolerance: float) -> bool:
    """A cache hit is checked again on one image: the record beside a file cannot vouch for it against someone
    who can write both, and the tolerance asked for now may be stricter than the one it was exported with."""
    try:
        _, relative = exported_difference(loaded.model, path, image_size, 1, loaded.model.in_channels)
    except Exception as err:  # noqa: BLE001  (whatever the file is, it is not the graph of this model)
        _logger.warning("cached ONNX graph '%s' does not run (%s): exporting again", path, err)
        return False
    if relative <= tolerance:
        return True
    _logger.warning(
        "cached ONNX graph '%s' differs from the model by %.2e (tolerance %g): exporting again",
        path,
        relative,
        tolerance,
    )
    return False


def _export_into(loaded: LoadedModel, stem: str, key: str, image_size: int, tolerance: float) -> str:
    result = export_checked(loaded, stem, "ONNX", image_size=image_size, tolerance=tolerance)
    record = {
        "key": key,
        "onnx_sha256": file_sha256(result.path),
        "source": loaded.source,
        "model": loaded.model_name,
        "image_size": image_size,
        "max_relative_difference": result.worst_relative,
    }
    with atomic_write(stem + ".onnx.json") as f:
        json.dump(record, f, indent=1)
    _logger.info("exported %s to %s (relative difference %.2e)", loaded.source, result.path, result.worst_relative)
    return result.path


def cached_onnx_export(loaded: LoadedModel, image_size: Optional[int] = None, tolerance: float = 1e-4) -> str:
    """The checked, BN-folded ONNX graph of ``loaded`` with a dynamic batch, exported on first use.

    Args:
        loaded: from :func:`~mindcv.models.loading.load_model`.
        image_size: input size (default: the evaluation transform's).
        tolerance: largest accepted difference to the MindSpore model, relative to the largest logit.

    Returns:
        The path of the ONNX file.

    Raises:
        ExportError: the export does not reproduce the model, no cache location is writable, or onnx /
            onnxruntime are missing.
    """
    require_onnx("the onnxruntime backend")
    image_size = image_size or loaded.image_size
    key = onnx_cache_key(loaded, image_size)
    locations = _cache_locations(loaded, key)
    for stem in locations:
        if _valid_record(stem, key) and _still_reproduces(loaded, stem + ".onnx", image_size, tolerance):
            return stem + ".onnx"
    errors = []
    for stem in locations:
        try:
            return _export_into(loaded, stem, key, image_size, tolerance)
        except (OSError, AtomicWriteError) as err:  # a read-only or full folder: try the next location
            errors.append(f"{os.path.dirname(stem)}: {err}")
    raise ExportError("cannot write the ONNX graph anywhere: " + "; ".join(errors))


class OnnxRuntimeModel:
    """Logits of an exported ONNX graph in onnxruntime, called like the model on ``(N, C, H, W)`` float32.

    Args:
        path: the ONNX file.
        threads: intra-op threads (default: onnxruntime's, one per core).
    """

    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        require_onnx("the onnxruntime backend")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  (onnxruntime raises its own classes for bad files)
            raise ExportError(f"onnxruntime cannot load '{path}': {err}") from None
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.image_size = shape[-1] if isinstance(shape[-1], int) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.image_size is not None and images.shape[-2:] != (self.image_size, self.image_size):
            raise ExportError(
                f"'{self.path}' takes {self.image_size}x{self.image_size} images, got {images.shape[-2]}x"
                f"{images.shape[-1]}: preprocess with the model's evaluation transform"
            )
        return self.session.run(None, {self.input_name: images})[0]

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, image_size: Optional[int] = None, threads: Optional[int] = None):
        """The cached (exported on first use) graph of ``loaded`` in onnxruntime."""
        return cls(cached_onnx_export(loaded, image_size), threads)


class OnnxEvalStep:
    """Per-batch sums for exact metrics, as :class:`mindcv.engine.EvalStep`, from an onnxruntime graph.

    Returns ``(loss sum, top-1 hits, top-k hits, valid samples)`` as numpy scalars; labels of -1
    (unreadable images) are ignored.
    """

    def __init__(self, model: OnnxRuntimeModel, topk: int = 5) -> None:
        self.model = model
        self.topk = topk

    def __call__(self, images, labels):
        images = images.asnumpy() if hasattr(images, "asnumpy") else np.asarray(images)
        labels = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
        logits = self.model(images).astype(np.float64)
        if labels.size and labels.max() >= logits.shape[1]:
            raise InvalidArgumentError(
                f"label {int(labels.max())} is out of range for a {logits.shape[1]}-class model: the dataset has "
                "more classes than the weights' classifier"
            )
        valid = labels >= 0
        safe = np.where(valid, labels, 0).astype(np.int64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(len(safe)), safe]
        top = np.argsort(-logits, axis=1, kind="stable")[:, : self.topk]
        hits = top == safe[:, None]
        weight = valid.astype(np.float64)
        return (
            np.float64((loss * weight).sum()),
            np.float64((hits[:, 0] * weight).sum()),
            np.float64((hits.any(axis=1) * weight).sum()),
            np.float64(weight.sum()),
        )
