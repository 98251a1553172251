"""Upstream mindcv's dataset downloaders: ``MnistDownload``, ``Cifar10Download``, ``Cifar100Download``.

Each is a :class:`~mindcv.io.download.DownLoad` with ``root``, ``path`` and ``download()`` as upstream, built on
:func:`~mindcv.data.standard_datasets.download_standard_dataset`, the one place that fetches these datasets
(also behind ``create_dataset(..., download=True)``): the official archives are downloaded once under a
cross-process lock into a temporary file that is renamed into place only when its published MD5 matches, and
extracted by the package's safe extraction (members escaping ``root`` are refused; nothing half-extracted is
left). The addresses and MD5s are those of :data:`~mindcv.data.standard_datasets.DATASET_SPECS`.

Differences from upstream: a corrupt download raises :class:`~mindcv.io.download.DownloadError` (upstream keeps
the file), MNIST is fetched from the mirror torchvision uses rather than yann.lecun.com, and the downloaded
archives are kept beside the extracted files.
"""

import os
from typing import List, Optional, Tuple

from ..io.download import DownLoad
from .standard_datasets import DATASET_SPECS, dataset_root, download_standard_dataset

__all__ = ["MnistDownload", "Cifar10Download", "Cifar100Download"]


class _StandardDownload(DownLoad):
    """A downloader of one entry of ``DATASET_SPECS``; ``path`` is the folder the dataset's files land in."""

    dataset: str = ""  # key of DATASET_SPECS
    files: Tuple[str, ...] = ()  # what a complete download has in ``path`` (upstream's check)

    def __init__(self, root: Optional[str] = None) -> None:
        super().__init__()
        self.root = os.path.expanduser(root) if root else dataset_root(self.dataset)
        self.path = os.path.join(self.root, self.base_dir) if self.base_dir else self.root

    @property
    def base_dir(self) -> str:
        """The archive's top folder inside ``root`` (``""``: the files are in ``root``)."""
        return DATASET_SPECS[self.dataset].subdir

    def is_complete(self) -> bool:
        """Whether every file of the dataset is in ``path``."""
        return all(os.path.isfile(os.path.join(self.path, f)) for f in self.files)

    def download(self) -> None:
        """Download and extract the dataset into ``root`` unless ``path`` holds it already.

        Raises:
            DownloadError: offline, an HTTP error, a corrupt download (MD5 mismatch; the file is removed), or an
                archive that would write outside ``root``.
        """
        if self.is_complete():
            return
        download_standard_dataset(self.dataset, self.root)


class MnistDownload(_StandardDownload):
    """MNIST's four idx files, downloaded and decompressed into ``root`` (``path`` is ``root``).

    Args:
        root: target folder (default ``<download root>/datasets/mnist``).
    """

    dataset = "mnist"
    files = tuple(f for pair in DATASET_SPECS["mnist"].splits.values() for f in pair)

    @property
    def url_path(self) -> str:
        """The folder URL the files are downloaded from."""
        return DATASET_SPECS[self.dataset].urls[0][0].rsplit("/", 1)[0] + "/"

    @property
    def resources(self) -> List[Tuple[str, str]]:
        """``(archive name, md5)`` of each file, as upstream."""
        return [(url.rsplit("/", 1)[1], md5) for url, md5 in DATASET_SPECS[self.dataset].urls]


class _CifarDownload(_StandardDownload):
    @property
    def url(self) -> Tuple[str, str]:
        """``(archive URL, md5)``, as upstream."""
        return DATASET_SPECS[self.dataset].urls[0]

    @property
    def resources(self) -> List[str]:
        """The files the archive holds in ``base_dir``, as upstream."""
        return list(self.files)


class Cifar10Download(_CifarDownload):
    """CIFAR-10's binary version, extracted into ``root/cifar-10-batches-bin`` (``path``).

    Args:
        root: target folder (default ``<download root>/datasets/cifar10``).
    """

    dataset = "cifar10"
    files = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin", "batches.meta.txt")


class Cifar100Download(_CifarDownload):
    """CIFAR-100's binary version, extracted into ``root/cifar-100-binary`` (``path``).

    Args:
        root: target folder (default ``<download root>/datasets/cifar100``).
    """

    dataset = "cifar100"
    files = ("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt")
