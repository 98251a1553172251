"""``create_dataset``: ImageFolder trees (ImageNet), CIFAR, MNIST, Fashion-MNIST and the demo set.

Every dataset yields two columns, ``image`` (decoded HWC uint8, RGB or 1-channel) and ``label``
(int32), and carries what training and inference need to know about it: ``num_classes()``,
``class_names`` (the stable index order, saved with checkpoints), ``shard_sampler`` (a :class:`ShardSampler`; call
``dataset.shard_sampler.set_epoch(e)`` for the seeded order of epoch e) and the :class:`UnreadableFiles` log.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np

import mindspore.dataset as ds

from ..errors import InvalidArgumentError
from .demo import DEMO_SIZES, ensure_demo_dataset
from .image_folder import ImageFileSource, UnreadableFiles, find_classes, make_samples, resolve_max_image_pixels
from .samplers import ShardSampler
from .standard_datasets import DATASET_SPECS, dataset_root, download_standard_dataset, load_standard_dataset

__all__ = ["create_dataset", "list_datasets", "get_dataset_download_root", "LabelledDataset", "DatasetInfo"]

_logger = logging.getLogger(__name__)
_IMAGE_FOLDER_NAMES = ("imagenet", "imagefolder", "")
_VALID_NAMES = ("imagenet", "imagefolder") + tuple(DEMO_SIZES) + tuple(DATASET_SPECS)


def list_datasets() -> List[str]:
    """Names accepted by :func:`create_dataset` (any other name is read as an ImageFolder tree)."""
    return sorted(set(_VALID_NAMES) - {""})


def get_dataset_download_root() -> str:
    """Folder under which datasets are downloaded or generated (``<cache>/datasets``)."""
    return os.path.dirname(dataset_root("x"))


class _ArraySource:
    """Random access to in-memory images (CIFAR, MNIST)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.images[index], np.array(self.labels[index], dtype=np.int32)


def create_dataset(
    name: str = "",
    root: Optional[str] = None,
    split: str = "train",
    shuffle: bool = True,
    num_samples: Optional[int] = None,
    num_shards: Optional[int] = None,
    shard_id: Optional[int] = None,
    num_parallel_workers: Optional[int] = None,
    download: bool = False,
    num_aug_repeats: int = 0,
    **kwargs: Any,
) -> ds.Dataset:
    """Create a dataset of ``(image, label)`` rows.

    Args:
        name: ``imagenet`` (or any other name, or ``""``) for an ImageFolder tree ``root/<split>/<class>/*``;
            ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``; or ``demo`` (generated, no download:
            1,200 training / 400 validation images of 10 classes) or ``demo_large`` (6,000 / 2,000).
        root: dataset folder (default: ``<cache>/datasets/<name>``).
        split: ``train``, ``val`` or ``test`` (the sub-folder for ImageFolder trees).
        shuffle: a seeded new order every epoch (``seed`` kwarg, default 0; use ``dataset.shard_sampler.set_epoch``).
        num_samples: use only this many samples per epoch.
        num_shards: number of ranks for distributed training/evaluation.
        shard_id: this rank.
        num_parallel_workers: decoding threads of the source (default 1; on a 2-core host one decoder
            thread beside the augmentation workers is fastest).
        download: fetch the official CIFAR/MNIST files (with MD5 check) if absent; ImageNet cannot be
            downloaded.
        num_aug_repeats: repeated augmentation factor (0/1 = off).
        **kwargs: ``seed`` (int), ``block_size`` (training shards take consecutive blocks of this many
            samples, normally the per-device batch; see :class:`ShardSampler`), ``strict`` (raise on the
            first unreadable image instead of skipping it),
            ``is_training`` (default: ``split == "train"``; evaluation shards partition the data exactly
            and mark unreadable images with label -1 instead of replacing them), ``unreadable_log``
            (path of the unreadable-file log, normally in the run's output folder, created when the first
            file is recorded; without it the records are kept in memory and no file is created),
            ``max_image_pixels`` (images whose header claims more pixels are reported by path and never
            decoded; default ``mindcv.data.image_folder.MAX_IMAGE_PIXELS``, PIL's 89,478,485),
            ``python_multiprocessing`` (decode in processes; give ``unreadable_log`` too, or the parent
            process never sees what the workers recorded).

    Returns:
        A MindSpore dataset with attributes ``class_names``, ``shard_sampler``, ``unreadable`` and a
        ``num_classes()`` method.

    Raises:
        FileNotFoundError: missing root or split folder (the message says what layout is expected).
        ValueError: unknown split, no class folders, an empty class folder, unreadable standard files.
    """
    name = (name or "").lower()
    seed = int(kwargs.pop("seed", 0))
    block_size = int(kwargs.pop("block_size", 1))
    strict = bool(kwargs.pop("strict", False))
    is_training = bool(kwargs.pop("is_training", split == "train"))
    unreadable_log = kwargs.pop("unreadable_log", None)
    max_image_pixels = resolve_max_image_pixels(kwargs.pop("max_image_pixels", None))
    python_multiprocessing = bool(kwargs.pop("python_multiprocessing", False))
    if kwargs:
        raise TypeError(
            f"create_dataset() got unexpected argument(s) {', '.join(sorted(kwargs))}; extra options: seed, "
            "block_size, strict, is_training, unreadable_log, max_image_pixels, python_multiprocessing"
        )
    workers = usable_worker_count(num_parallel_workers)
    unreadable = UnreadableFiles(unreadable_log)  # no file is created until a file is recorded

    if name in DATASET_SPECS:
        root = root or dataset_root(name)
        if download:
            download_standard_dataset(name, root)
        images, labels, class_names = load_standard_dataset(name, root, split)
        source = _ArraySource(images, labels)
    else:
        if name in DEMO_SIZES:
            root = ensure_demo_dataset(root, train_per_class=DEMO_SIZES[name])["root"]
        elif download:
            raise InvalidArgumentError(
                f"dataset '{name or 'imagenet'}' cannot be downloaded; "
                f"download=True works for {', '.join(DATASET_SPECS)}"
            )
        if root is None:
            builtin = ", ".join(tuple(DATASET_SPECS) + tuple(DEMO_SIZES))
            raise InvalidArgumentError(
                f"dataset '{name or 'imagefolder'}' is read as an ImageFolder tree and needs "
                f"root=<folder with {split}/<class>/<images>> (datasets that need no root: {builtin})"
            )
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset root '{root}' does not exist")
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            present = sorted(e.name for e in os.scandir(root) if e.is_dir())
            raise FileNotFoundError(
                f"split folder '{split_dir}' does not exist; folders in '{root}': {', '.join(present) or 'none'}"
            )
        class_names, class_to_idx = find_classes(split_dir)
        samples = make_samples(split_dir, class_to_idx, report=unreadable)
        source = ImageFileSource(
            samples, unreadable, strict=strict, replace_unreadable=is_training, max_image_pixels=max_image_pixels
        )
        if python_multiprocessing and workers > 1 and unreadable.in_memory:
            _logger.warning(
                "create_dataset: python_multiprocessing decodes in worker processes, whose unreadable-file records "
                "the parent cannot see: pass unreadable_log=<output folder>/unreadable_images.tsv to count them"
            )

    sampler = ShardSampler(
        len(source),
        num_shards,
        shard_id,
        shuffle=shuffle,
        seed=seed,
        pad=is_training,
        num_samples=num_samples,
        num_repeats=num_aug_repeats,
        block_size=block_size if is_training else 1,
    )
    return LabelledDataset(
        source,
        sampler,
        DatasetInfo(list(class_names), root, sampler, unreadable),
        num_parallel_workers=workers,
        python_multiprocessing=python_multiprocessing and workers > 1,
    )


@dataclass
class DatasetInfo:
    """What training and inference need to know about a dataset besides its samples.

    Args:
        class_names: class names in label order (saved with checkpoints).
        root: the dataset folder.
        shard_sampler: the sampler; ``set_epoch(e)`` selects the seeded order of epoch e.
        unreadable: the files that could not be decoded (and why).
    """

    class_names: List[str]
    root: Optional[str]
    shard_sampler: ShardSampler
    unreadable: UnreadableFiles


class LabelledDataset(ds.GeneratorDataset):
    """A ``mindspore.dataset`` of ``(image, label)`` rows that carries its :class:`DatasetInfo`.

    Args:
        source: random-access samples.
        sampler: the :class:`ShardSampler` selecting this rank's samples.
        info: the dataset's metadata.
        num_parallel_workers: decoding workers.
        python_multiprocessing: decode in processes instead of threads.
    """

    def __init__(
        self,
        source: Any,
        sampler: ShardSampler,
        info: DatasetInfo,
        num_parallel_workers: int = 1,
        python_multiprocessing: bool = False,
    ) -> None:
        super().__init__(
            source,
            column_names=["image", "label"],
            sampler=sampler,
            num_parallel_workers=num_parallel_workers,
            python_multiprocessing=python_multiprocessing,
        )
        self.info = info

    def num_classes(self) -> int:
        """Number of classes (upstream mindcv's ``dataset.num_classes()``)."""
        return len(self.info.class_names)

    @property
    def class_names(self) -> List[str]:
        return self.info.class_names

    @property
    def root(self) -> Optional[str]:
        return self.info.root

    @property
    def shard_sampler(self) -> ShardSampler:
        return self.info.shard_sampler

    @property
    def unreadable(self) -> UnreadableFiles:
        return self.info.unreadable


def usable_worker_count(num_parallel_workers: Optional[int]) -> int:
    """The worker count to give MindSpore: ``None`` means 1; a count above the CPUs is lowered with a warning.

    Upstream's recipes, written for 8-GPU servers, ask for 8 workers, and MindSpore rejects more workers than
    CPUs; lowering keeps those recipes running unchanged on a smaller machine (the count only affects speed).

    Args:
        num_parallel_workers: the requested count, or None.

    Returns:
        A count between 1 and the number of CPUs.
    """
    if num_parallel_workers is None:
        return 1
    if isinstance(num_parallel_workers, bool) or not isinstance(num_parallel_workers, (int, np.integer)):
        raise InvalidArgumentError(
            f"num_parallel_workers must be an integer >= 1 (or None for 1), got {num_parallel_workers!r}"
        )
    workers = int(num_parallel_workers)
    if workers < 1:
        raise InvalidArgumentError(f"num_parallel_workers must be >= 1, got {num_parallel_workers}")
    cpus = os.cpu_count() or 1
    if workers > cpus:
        _logger.warning("num_parallel_workers=%d exceeds this machine's %d CPUs; using %d", workers, cpus, cpus)
        workers = cpus
    return workers
