"""CIFAR-10/100 (official binary format) and MNIST / Fashion-MNIST (idx format), read with numpy.

MindSpore's own ``Cifar10Dataset`` insists on exactly 10000 records per file; these readers accept any
record count (so tests can write small files in the real format) and validate the files instead.
``download=True`` fetches the official archives into the cache and checks their published MD5.
"""

import gzip
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..io.download import DownloadError, download_cached, extract_archive, get_cache_dir

__all__ = ["DatasetSpec", "DATASET_SPECS", "load_standard_dataset", "download_standard_dataset", "dataset_root"]


@dataclass(frozen=True)
class DatasetSpec:
    """Where a standard dataset comes from and how its files are laid out."""

    name: str
    kind: str  # "cifar" or "idx"
    urls: Tuple[Tuple[str, str], ...]  # (url, md5)
    splits: Dict[str, Tuple[str, ...]]  # split -> files (cifar) or (images, labels) (idx)
    classes: Tuple[str, ...]
    label_bytes: int = 1  # cifar: 1 (cifar10) or 2 (cifar100: coarse, fine)
    subdir: str = ""


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASET_SPECS: Dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10",
        "cifar",
        (("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
        {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        _CIFAR10_CLASSES,
        label_bytes=1,
        subdir="cifar-10-batches-bin",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        "cifar",
        (("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),),
        {"train": ("train.bin",), "test": ("test.bin",)},
        tuple(str(i) for i in range(100)),
        label_bytes=2,
        subdir="cifar-100-binary",
    ),
    "mnist": DatasetSpec(
        "mnist",
        "idx",
        (
            (_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        _IDX_SPLITS,
        tuple(str(i) for i in range(10)),
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        "idx",
        (
            (_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        _IDX_SPLITS,
        _FASHION_CLASSES,
    ),
}


def dataset_root(name: str) -> str:
    """Default folder of a dataset: ``<cache>/datasets/<name>``."""
    return os.path.join(get_cache_dir(), "datasets", name)


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_standard_dataset(name: str, root: str) -> str:
    """Download (once) and unpack the official files of ``name`` into ``root``; returns ``root``.

    Raises:
        DownloadError: offline, HTTP error, or an MD5 that does not match the published one.
    """
    spec = DATASET_SPECS[name]
    os.makedirs(root, exist_ok=True)
    for url, md5 in spec.urls:
        archive = download_cached(url, subdir="", cache_dir=root)
        actual = _md5(archive)
        if actual != md5:
            os.remove(archive)
            raise DownloadError(f"{url}: MD5 {actual} is not the published {md5}; the corrupted file was removed")
        if archive.endswith(".tar.gz"):
            extract_archive(archive, root)  # refuses members that would land outside root
        elif archive.endswith(".gz") and not os.path.exists(archive[: -len(".gz")]):
            extract_archive(archive, root)
    return root


def _find(root: str, filename: str, spec: DatasetSpec) -> str:
    for candidate in (os.path.join(root, spec.subdir, filename), os.path.join(root, filename)):
        for path in (candidate, candidate + ".gz"):
            if os.path.isfile(path):
                return path
    where = os.path.join(root, spec.subdir) if spec.subdir else root
    raise FileNotFoundError(
        f"{spec.name}: '{filename}' not found in '{where}' or '{root}'. "
        "Pass download=True to fetch the official files, "
        f"or point root at the folder holding {', '.join(sum(spec.splits.values(), ()))}"
    )


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _read_cifar(paths: Sequence[str], label_bytes: int) -> Tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    images, labels = [], []
    for path in paths:
        raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise InvalidArgumentError(
                f"'{path}' is not a CIFAR binary file: {raw.size} bytes is not a multiple of the {record}-byte record"
            )
        rows = raw.reshape(-1, record)
        labels.append(rows[:, label_bytes - 1].astype(np.int32))  # cifar100: the fine label is the 2nd byte
        images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _read_idx(path: str, expected_dims: int) -> np.ndarray:
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise InvalidArgumentError(f"'{path}' is not an idx file (too short)")
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
        raise InvalidArgumentError(f"'{path}' is not a uint8 idx file with {expected_dims} dimensions")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InvalidArgumentError(f"'{path}' is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def load_standard_dataset(name: str, root: str, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read a split of a standard dataset.

    Args:
        name: ``cifar10``, ``cifar100``, ``mnist`` or ``fashion_mnist``.
        root: folder with the official files (optionally inside the archive's folder).
        split: ``train`` or ``test`` (``val`` is accepted as ``test``).

    Returns:
        ``(images HWC uint8, labels int32, class names)``.
    """
    spec = DATASET_SPECS[name]
    split = "test" if split == "val" else split
    if split not in spec.splits:
        raise InvalidArgumentError(
            f"{name} has no split '{split}'; valid: {', '.join(spec.splits)} (or 'val' for 'test')"
        )
    if spec.kind == "cifar":
        images, labels = _read_cifar([_find(root, f, spec) for f in spec.splits[split]], spec.label_bytes)
    else:
        img_file, label_file = spec.splits[split]
        images = _read_idx(_find(root, img_file, spec), 3)[..., None]
        labels = _read_idx(_find(root, label_file, spec), 1).astype(np.int32)
        if len(images) != len(labels):
            raise InvalidArgumentError(f"{name} {split}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise InvalidArgumentError(f"{name} {split}: labels outside [0, {len(spec.classes)}) - wrong files?")
    return images, labels, list(spec.classes)
