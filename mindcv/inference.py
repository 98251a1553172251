"""Classify image files: top-k class ids, scores and label names (the API behind ``infer.py``)."""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms

from .data.image_folder import UnreadableFiles, collect_images, decode_image, resolve_max_image_pixels
from .data.transforms_factory import create_transforms
from .deploy.onnxruntime_backend import BACKENDS, OnnxRuntimeModel
from .errors import InvalidArgumentError
from .models.loading import LoadedModel, imagenet_class_names, load_model

__all__ = ["Classifier", "imagenet_class_names", "collect_images"]

_logger = logging.getLogger(__name__)


class Classifier:
    """A model plus its evaluation preprocessing and class names, on MindSpore or ONNX Runtime.

    Everything about the weights (architecture, width, class count, BN eps, class names, evaluation
    transform) comes from :func:`~mindcv.models.loading.load_model`.

    Args:
        model_name: registered model (``"mnasnet_100"`` or with a weights tag); ``None``: the name a
            checkpoint written by this package records.
        ckpt_path: weights (a train.py checkpoint carries its class names and eval transform).
        pretrained: use the published weights (ImageNet class names).
        topk: how many classes per image.
        batch_size: images per forward pass.
        class_names: override the label names.
        max_image_pixels: images whose header claims more pixels are reported as unreadable by path and never
            decoded (default ``mindcv.data.image_folder.MAX_IMAGE_PIXELS``, PIL's 89,478,485).
        backend: ``"mindspore"`` or ``"onnxruntime"`` (the checked, BN-folded ONNX export of the same weights,
            exported on first use and cached next to the checkpoint).
        arch: for ``mnasnet_arch``: the architecture (default: the one the checkpoint records).
        ema: use the EMA copy of the checkpoint.
        loaded: an already loaded model (then the weight arguments above must be left out).
    """

    def __init__(
        self,
        model_name: Optional[str] = None,
        ckpt_path: str = "",
        pretrained: bool = False,
        topk: int = 5,
        batch_size: int = 16,
        class_names: Optional[Sequence[str]] = None,
        max_image_pixels: Optional[int] = None,
        backend: str = "mindspore",
        arch: Optional[str] = None,
        loaded: Optional[LoadedModel] = None,
        ema: bool = False,
    ) -> None:
        self.max_image_pixels = resolve_max_image_pixels(max_image_pixels)
        if topk < 1 or batch_size < 1:
            raise InvalidArgumentError(f"topk and batch_size must be >= 1, got {topk} and {batch_size}")
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")
        if loaded is None:
            loaded = load_model(model_name, ckpt_path, pretrained, ema=ema, arch=arch, class_names=class_names)
        elif model_name or ckpt_path or pretrained or arch or ema or class_names is not None:
            raise InvalidArgumentError("pass either a loaded model or the weights to load, not both")
        self.loaded = loaded
        self.model = loaded.model
        self.class_names = loaded.class_names
        self.backend = backend
        self.ops = create_transforms(loaded.dataset, is_training=False, **loaded.eval_transform)
        self.topk = min(topk, loaded.num_classes)
        self.batch_size = batch_size
        self.runtime = OnnxRuntimeModel.from_loaded(loaded) if backend == "onnxruntime" else None

    def preprocess(self, path: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
        """Decode and preprocess one image file: ``(CHW float32 array, None)`` or ``(None, reason)``.

        Any per-file failure (unreadable or oversized file, decoder error, an image the preprocessing
        cannot handle) is returned as the reason, never raised.
        """
        image, reason = decode_image(path, self.max_image_pixels)
        if image is None:
            return None, reason
        try:
            for op in self.ops:
                image = op(image)
        except MemoryError:
            return None, "out of memory while preprocessing this image"
        except Exception as err:  # noqa: BLE001  (one odd image must not stop the others)
            return None, f"preprocessing failed ({type(err).__name__}: {err})"
        return np.asarray(image, dtype=np.float32), None

    def predict(self, paths: Sequence[str], report: Optional[UnreadableFiles] = None) -> List[Dict]:
        """One record per file: ``{"file_name", "class_ids", "scores", "label_names"}``, or ``"error"`` for
        an unreadable file (the others are still classified).

        Any per-file failure (unreadable or oversized file, decoder error, an image the preprocessing cannot
        handle) becomes that file's ``"error"``, and is also recorded in ``report`` if given.
        """
        records: List[Dict] = []
        batch, batch_records = [], []
        for path in paths:
            image, reason = self.preprocess(path)
            if image is None:
                if report is not None:
                    report.record(path, reason)
                else:
                    _logger.warning("cannot classify '%s': %s", path, reason)
                records.append({"file_name": path, "error": reason})
                continue
            record = {"file_name": path}
            records.append(record)
            batch.append(image)
            batch_records.append(record)
            if len(batch) == self.batch_size:
                self._run(batch, batch_records)
                batch, batch_records = [], []
        if batch:
            self._run(batch, batch_records)
        return records

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits of preprocessed images ``(N, C, H, W)`` on the chosen backend."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.runtime is not None:
            return self.runtime(images)
        return self.model(ms.Tensor(images)).asnumpy()

    def _run(self, batch: List[np.ndarray], records: List[Dict]) -> None:
        logits = self.logits(np.stack(batch)).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        ids = np.argsort(-probs, axis=1, kind="stable")[:, : self.topk]
        scores = np.take_along_axis(probs, ids, axis=1)
        for record, s, i in zip(records, scores, ids):
            record.update(
                class_ids=[int(c) for c in i],
                scores=[float(v) for v in s],
                label_names=[self.class_names[c] for c in i],
            )
