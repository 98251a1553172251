"""Classify image files: top-k class ids, scores and label names (the API behind ``infer.py``)."""

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import ops

from .data.image_folder import IMG_EXTENSIONS, UnreadableFiles, decode_image, resolve_max_image_pixels
from .data.transforms_factory import create_transforms
from .errors import InvalidArgumentError
from .models import create_model, get_pretrained_cfg
from .models.checkpoint import read_checkpoint_metadata
from .models.model_factory import split_model_name_tag, weights_num_classes

__all__ = ["Classifier", "imagenet_class_names", "collect_images"]

_logger = logging.getLogger(__name__)


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    with open(os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")) as f:
        return [line.rstrip("\n") for line in f]


def collect_images(inputs: Iterable[str]) -> List[str]:
    """Expand files and folders (recursively, image extensions only) into a sorted file list."""
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, names in sorted(os.walk(item)):
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
        elif os.path.exists(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"'{item}' does not exist")
    return files


class Classifier:
    """A model plus its evaluation preprocessing and class names.

    Args:
        model_name: registered model (``"mnasnet_100"`` or with a weights tag).
        ckpt_path: weights (a train.py checkpoint carries its class names and eval transform).
        pretrained: use the published weights (ImageNet class names).
        topk: how many classes per image.
        batch_size: images per forward pass.
        class_names: override the label names.
        max_image_pixels: images whose header claims more pixels are reported as unreadable by path and never
            decoded (default ``mindcv.data.image_folder.MAX_IMAGE_PIXELS``, PIL's 89,478,485).
    """

    def __init__(
        self,
        model_name: str,
        ckpt_path: str = "",
        pretrained: bool = False,
        topk: int = 5,
        batch_size: int = 16,
        class_names: Optional[Sequence[str]] = None,
        max_image_pixels: Optional[int] = None,
    ) -> None:
        self.max_image_pixels = resolve_max_image_pixels(max_image_pixels)
        if topk < 1 or batch_size < 1:
            raise InvalidArgumentError(f"topk and batch_size must be >= 1, got {topk} and {batch_size}")
        meta = read_checkpoint_metadata(ckpt_path)
        names = list(class_names or meta.get("class_names") or imagenet_class_names())
        num_classes = weights_num_classes(model_name, ckpt_path, pretrained) or len(names)
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained, checkpoint_path=ckpt_path)
        self.model.set_train(False)
        self.class_names = names if len(names) == num_classes else [str(i) for i in range(num_classes)]
        transform = dict(meta.get("eval_transform") or {})
        if not transform and pretrained:
            cfg = get_pretrained_cfg(*split_model_name_tag(model_name))
            transform = dict(
                image_resize=cfg.input_size[-1],
                interpolation=cfg.interpolation,
                resize_size=cfg.eval_resize,
                mean=list(cfg.mean),
                std=list(cfg.std),
            )
        self.ops = create_transforms("imagenet", is_training=False, **transform)
        self.topk = min(topk, num_classes)
        self.batch_size = batch_size

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        for op in self.ops:
            image = op(image)
        return image

    def predict(self, paths: Sequence[str], report: Optional[UnreadableFiles] = None) -> List[Dict]:
        """One record per file: ``{"file_name", "class_ids", "scores", "label_names"}``, or ``"error"`` for
        an unreadable file (the others are still classified).

        Any per-file failure (unreadable or oversized file, decoder error, an image the preprocessing cannot
        handle) becomes that file's ``"error"``, and is also recorded in ``report`` if given.
        """
        records: List[Dict] = []
        batch, batch_records = [], []
        for path in paths:
            image, reason = decode_image(path, self.max_image_pixels)
            if image is not None:
                try:
                    image = self._preprocess(image)
                except MemoryError:
                    image, reason = None, "out of memory while preprocessing this image"
                except Exception as err:  # noqa: BLE001  (one odd image must not stop the others)
                    image, reason = None, f"preprocessing failed ({type(err).__name__}: {err})"
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

    def _run(self, batch: List[np.ndarray], records: List[Dict]) -> None:
        logits = self.model(ms.Tensor(np.stack(batch).astype(np.float32)))
        scores, ids = ops.topk(ops.softmax(logits, axis=-1), self.topk)
        for record, s, i in zip(records, scores.asnumpy(), ids.asnumpy()):
            record.update(
                class_ids=[int(c) for c in i],
                scores=[float(v) for v in s],
                label_names=[self.class_names[c] for c in i],
            )
