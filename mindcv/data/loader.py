"""``create_loader``: transforms, batching and batch-level MixUp / CutMix with soft targets."""

import logging
from typing import Any, List, Optional

import numpy as np
from PIL import Image

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision

from ..errors import InvalidArgumentError
from .dataset_factory import LabelledDataset, usable_worker_count
from .transforms_factory import DecodeImage, _RandomResizedCrop, create_transforms

__all__ = ["create_loader", "adapt_decode_step"]

_logger = logging.getLogger(__name__)


def create_loader(
    dataset: ds.Dataset,
    batch_size: int,
    drop_remainder: bool = False,
    is_training: bool = False,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    cutmix_prob: float = 0.0,
    num_classes: int = 1000,
    transform: Optional[List[Any]] = None,
    target_transform: Optional[List[Any]] = None,
    num_parallel_workers: Optional[int] = None,
    python_multiprocessing: bool = False,
    separate: bool = False,
    label_smoothing: float = 0.0,
) -> ds.Dataset:
    """Apply transforms and batch a dataset from :func:`create_dataset`.

    Args:
        dataset: the dataset.
        batch_size: batch size per device.
        drop_remainder: drop the last incomplete batch (training); keep it for evaluation.
        is_training: enables MixUp / CutMix (any batch size; a single-image batch is mixed with itself, which
            leaves it as it is, with the one-hot soft target).
        mixup: MixUp alpha (0 = off).
        cutmix: CutMix alpha (0 = off).
        cutmix_prob: probability that a batch is mixed at all (timm's ``prob``); with both MixUp and
            CutMix on, each mixed batch uses one of them with equal probability. 0 (upstream's default,
            which silently disabled the mixing it asked for) means 1.
        num_classes: classes, for the one-hot soft targets.
        transform: image ops (default: ImageNet evaluation preprocessing, with a warning). A leading decode step
            (:class:`~mindcv.data.transforms_factory.DecodeImage`, ``vision.Decode()``, ``vision.Decode(to_pil=True)``
            or ``vision.RandomCropDecodeResize``, as in upstream mindcv's lists) is adapted to datasets of
            :func:`create_dataset`, whose images are already decoded: see :func:`adapt_decode_step`.
        target_transform: label ops (default: cast to int32).
        num_parallel_workers: threads of the augmentation map (default 1; more than the CPU count is
            reduced to it, with a warning).
        python_multiprocessing: run Python transforms in processes.
        separate: AugMix/JSD augmentation splits, as upstream: ``transform`` is the ``(primary, secondary, final)``
            triple of ``create_transforms(..., separate=True)``; each image gives a clean view (primary + final)
            and two augmented views (primary + secondary + final), and a batch of N images comes out as
            ``(3N, C, H, W)`` images ordered clean, aug1, aug2 with the labels repeated three times, the layout
            :class:`~mindcv.loss.JSDCrossEntropy` splits. Training only; not combined with MixUp/CutMix.
        label_smoothing: folded into the soft targets when MixUp/CutMix produce them (then the loss must
            not smooth again); hard labels are left to the loss.

    Returns:
        The batched dataset: images ``(N, C, H, W)`` float32; labels ``(N,)`` int32, or ``(N, num_classes)``
        float32 soft targets summing to 1 when mixing (with ``separate``: ``3N`` rows, see above).
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    if separate:
        _check_split_transforms(transform, is_training, mixup, cutmix)
    if not 0 <= label_smoothing < 1:
        raise InvalidArgumentError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    workers = usable_worker_count(num_parallel_workers)
    if transform is None:
        _logger.warning("create_loader: no transform given, using ImageNet evaluation preprocessing at 224")
        transform = create_transforms("imagenet", is_training=False)
    if separate:
        return _split_views_loader(
            dataset, batch_size, drop_remainder, transform, target_transform, workers, python_multiprocessing
        )
    image_ops = list(transform) if isinstance(transform, (list, tuple)) else [transform]
    if _yields_decoded_images(dataset):
        image_ops = adapt_decode_step(image_ops)
    out = dataset
    if image_ops:  # a list that only decoded has nothing left to do
        out = out.map(
            operations=image_ops,
            input_columns="image",
            num_parallel_workers=workers,
            python_multiprocessing=python_multiprocessing,
        )
    out = out.map(operations=target_transform or [T.TypeCast(ms.int32)], input_columns="label", num_parallel_workers=1)

    mixing = is_training and (mixup > 0 or cutmix > 0)
    if mixing:
        if batch_size == 1:
            _logger.warning(
                "MixUp/CutMix with batch_size=1 mix each image with itself: images are unchanged, labels become "
                "one-hot soft targets (upstream mindcv silently disables mixing and keeps integer labels)"
            )
        out = out.map(
            operations=[T.OneHot(num_classes, smoothing_rate=label_smoothing), T.TypeCast(ms.float32)],
            input_columns="label",
        )
    out = out.batch(batch_size, drop_remainder=drop_remainder)
    if mixing:
        ops = []
        if mixup > 0:
            ops.append(vision.MixUpBatch(alpha=mixup))
        if cutmix > 0:
            ops.append(vision.CutMixBatch(vision.ImageBatchFormat.NCHW, alpha=cutmix, prob=1.0))
        op = ops[0] if len(ops) == 1 else T.RandomChoice(ops)
        prob = cutmix_prob if cutmix_prob > 0 else 1.0
        if prob < 1.0:
            op = T.RandomApply([op], prob=prob)
        out = out.map(operations=op, input_columns=["image", "label"])
    return out


def _check_split_transforms(transform: Any, is_training: bool, mixup: float, cutmix: float) -> None:
    if not is_training:
        raise InvalidArgumentError("separate=True (augmentation splits) is for training loaders: set is_training=True")
    if mixup > 0 or cutmix > 0:
        raise InvalidArgumentError(
            "separate=True (AugMix/JSD augmentation splits) cannot be combined with MixUp/CutMix: "
            "JSDCrossEntropy needs the three views of each image with its hard label"
        )
    if not (isinstance(transform, tuple) and len(transform) == 3 and all(isinstance(t, list) for t in transform)):
        raise InvalidArgumentError(
            "separate=True needs transform=(primary, secondary, final), three lists as returned by "
            f"create_transforms(..., is_training=True, separate=True); got {type(transform).__name__}"
        )


def _concat_views(clean: np.ndarray, aug1: np.ndarray, aug2: np.ndarray, label: np.ndarray):
    return np.concatenate((clean, aug1, aug2)), np.concatenate((label, label, label))


# MindSpore ops with no Python (PIL) implementation: seeded from the dataset seed at every call, so they draw the
# same augmentation for both views of an image (and for every call on the same input)
_SEEDED_CPP_POLICIES = (vision.RandAugment, vision.AutoAugment, vision.TrivialAugmentWide, vision.UniformAugment)


class _TwoAugmentedViews:
    """Both augmented views of an image, drawn one after the other in the same call.

    The ops run on a PIL image, so MindSpore's random ops take their PIL implementation, which draws from Python's
    generator like the Python policies (:mod:`mindcv.data.auto_augment`): the second view continues the stream
    of the first, so the two differ even with a dataset seed set, in any worker.
    """

    def __init__(self, ops: List[Any]) -> None:
        self.ops = [op for op in ops if not isinstance(op, vision.ToPIL)]  # the views are PIL images already

    def _view(self, image: np.ndarray) -> np.ndarray:
        out = Image.fromarray(np.ascontiguousarray(image))
        for op in self.ops:
            out = op(out)
        return np.asarray(out, dtype=np.uint8)

    def __call__(self, image: np.ndarray):
        return self._view(image), self._view(image)


def _check_secondary_ops(secondary: List[Any]) -> None:
    seeded = [type(op).__name__ for op in secondary if isinstance(op, _SEEDED_CPP_POLICIES)]
    if seeded:
        raise InvalidArgumentError(
            f"separate=True: {', '.join(seeded)} in the augmentation (secondary) ops is a MindSpore C++ op without "
            "a Python implementation; it draws the same augmentation for both augmented views, so the JSD term "
            "would be 0. Use create_transforms(..., separate=True), whose views use the Python policies "
            "(mindcv.data.auto_augment), or those policies directly"
        )


def _split_views_loader(
    dataset: ds.Dataset,
    batch_size: int,
    drop_remainder: bool,
    transform: tuple,
    target_transform: Optional[List[Any]],
    workers: int,
    python_multiprocessing: bool,
) -> ds.Dataset:
    """Three views per image (clean, aug1, aug2), batched as one ``3N`` batch: upstream's AugMix/JSD layout."""
    primary, secondary, final = (list(ops) for ops in transform)
    _check_secondary_ops(secondary)
    if _yields_decoded_images(dataset):
        primary = adapt_decode_step(primary)

    def apply(data: ds.Dataset, ops: List[Any], column: str, outputs: Optional[List[str]] = None) -> ds.Dataset:
        if not ops:
            return data
        return data.map(
            operations=ops,
            input_columns=column,
            output_columns=outputs,
            num_parallel_workers=workers,
            python_multiprocessing=python_multiprocessing,
        )

    out = apply(dataset, primary, "image")
    if secondary:
        out = out.map(operations=T.Duplicate(), input_columns="image", output_columns=["image_clean", "image_aug"])
        out = apply(out, [_TwoAugmentedViews(secondary)], "image_aug", ["image_aug1", "image_aug2"])
    else:
        out = out.map(operations=T.Duplicate(), input_columns="image", output_columns=["image_clean", "image_aug2"])
        out = out.map(
            operations=T.Duplicate(), input_columns="image_clean", output_columns=["image_clean", "image_aug1"]
        )
    for column in ("image_clean", "image_aug1", "image_aug2"):
        out = apply(out, final, column)
    out = out.map(operations=target_transform or [T.TypeCast(ms.int32)], input_columns="label", num_parallel_workers=1)
    out = out.project(["image_clean", "image_aug1", "image_aug2", "label"])
    out = out.batch(batch_size, drop_remainder=drop_remainder)
    return out.map(
        operations=_concat_views,
        input_columns=["image_clean", "image_aug1", "image_aug2", "label"],
        output_columns=["image", "label"],
    )


def adapt_decode_step(ops: List[Any]) -> List[Any]:
    """The ops of a transform list for already decoded images: its leading decode step removed or adapted.

    Lists written for upstream mindcv (or MindSpore's ``ImageFolderDataset``) start by decoding bytes, which would
    fail on decoded images ("invalid input shape"). Our datasets decode in the source so that an unreadable file
    is reported by path and skipped, so the decode step's work is already done:

    * :class:`~mindcv.data.transforms_factory.DecodeImage` and ``vision.Decode()``: removed;
    * ``vision.Decode(to_pil=True)``: becomes ``vision.ToPIL()``, so the ops after it receive the PIL image they
      were written for (MindSpore then runs them in their PIL implementation, as it would after that decode);
    * ``vision.RandomCropDecodeResize(...)``: becomes ``RandomResizedCrop`` with the same size, scale, ratio,
      interpolation and attempts (the same operation without the decode);
    * ``transforms.Compose([...])``: its own list is adapted the same way.

    Any other first op leaves the list unchanged.

    Args:
        ops: the transform list.

    Returns:
        A new list (the input list is not modified).
    """
    if not ops:
        return []
    first, rest = ops[0], list(ops[1:])
    if isinstance(first, DecodeImage):
        return rest
    if isinstance(first, vision.Decode):
        return [vision.ToPIL()] + rest if first.to_pil else rest
    if isinstance(first, vision.RandomCropDecodeResize):
        crop = _RandomResizedCrop(
            first.size, first.scale, first.ratio, interpolation=first.interpolation, max_attempts=first.max_attempts
        )
        return [crop] + rest
    if isinstance(first, T.Compose):  # a list wrapped in Compose: its own first op is the decode step
        inner = adapt_decode_step(list(first.transforms))
        return ([T.Compose(inner)] if inner else []) + rest
    return list(ops)


def _yields_decoded_images(dataset: ds.Dataset) -> bool:
    """True when every source under ``dataset`` is a :func:`create_dataset` dataset (images decoded in the source).

    Other sources (e.g. ``mindspore.dataset.ImageFolderDataset``, which yields encoded bytes) keep their
    transform list as it is: its decode step has work to do there.
    """
    stack, sources = [dataset], []
    while stack:
        node = stack.pop()
        children = getattr(node, "children", None) or []
        if children:
            stack.extend(children)
        else:
            sources.append(node)
    return bool(sources) and all(isinstance(source, LabelledDataset) for source in sources)
