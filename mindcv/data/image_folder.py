"""ImageFolder trees (``root/<split>/<class>/<image>``): indexing, decoding and unreadable files.

Images are decoded in the dataset source with OpenCV (libjpeg-turbo / libpng, GIL released), so that
a file that cannot be decoded is known *by path*. ImageNet contains CMYK and grayscale JPEGs, a PNG
saved as ``.JPEG`` and the odd truncated file; all decodable ones come out as 3-channel RGB uint8, and
the others are reported instead of killing a long run. On the development CPU this source feeding
MindSpore's C++ augmentation ops is also faster than ``ImageFolderDataset`` + ``Decode``
(see ``benchmarks/bench_data.py``).
"""

import logging
import os
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "IMG_EXTENSIONS",
    "UnreadableImageError",
    "UnreadableFiles",
    "find_classes",
    "make_samples",
    "decode_image",
    "ImageFileSource",
]

_logger = logging.getLogger(__name__)
cv2.setNumThreads(1)  # the pipeline parallelises across samples; OpenCV's own threads only contend

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"P5": "pnm",
    b"P6": "pnm",
}


class UnreadableImageError(RuntimeError):
    """An image file cannot be decoded (raised in strict mode)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"unreadable image '{path}': {reason}")


class UnreadableFiles:
    """A record of unreadable files, shared by dataset worker threads and processes.

    Each event is one appended line ``<path>\\t<reason>`` of a log file, so counts survive worker
    processes and crashes; the training loop reports :meth:`count` at the end of each epoch.

    Args:
        log_path: the log file (default: a new file in the temporary directory).
    """

    def __init__(self, log_path: Optional[str] = None) -> None:
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="mindcv-unreadable-", suffix=".tsv")
            os.close(fd)
        self.log_path = log_path
        self._lock = threading.Lock()
        self._warned = set()

    def record(self, path: str, reason: str) -> None:
        with self._lock, open(self.log_path, "a") as f:
            f.write(f"{path}\t{reason}\n")
        if path not in self._warned:
            self._warned.add(path)
            _logger.warning("skipping unreadable image '%s': %s", path, reason)

    def entries(self) -> List[Tuple[str, str]]:
        """All recorded events as ``(path, reason)`` (a file read in several epochs appears several times)."""
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]

    def count(self) -> int:
        """Number of distinct unreadable files seen so far."""
        return len({path for path, _ in self.entries()})


def find_classes(directory: str) -> Tuple[List[str], Dict[str, int]]:
    """Class folders of an ImageFolder split, in sorted (stable) order.

    Raises:
        FileNotFoundError: the directory does not exist.
        ValueError: it has no class sub-folders.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"dataset split folder '{directory}' does not exist (expected <root>/<split>/<class>/<images>)"
        )
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"'{directory}' has no class folders: expected one sub-folder of images per class")
    return classes, {c: i for i, c in enumerate(classes)}


def make_samples(
    directory: str,
    class_to_idx: Dict[str, int],
    extensions: Sequence[str] = IMG_EXTENSIONS,
    report: Optional[UnreadableFiles] = None,
) -> List[Tuple[str, int]]:
    """``(path, label)`` for every image of every class folder, sorted within each class.

    Files with other extensions are reported (not silently ignored); an empty class folder is an
    error, since its label would silently never be trained.
    """
    samples = []
    for cls, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
        folder = os.path.join(directory, cls)
        found = 0
        for root, _, files in sorted(os.walk(folder, followlinks=True)):
            for name in sorted(files):
                path = os.path.join(root, name)
                if name.lower().endswith(tuple(extensions)):
                    samples.append((path, idx))
                    found += 1
                elif not name.startswith(".") and report is not None:
                    report.record(path, f"not an image file (extension not in {', '.join(extensions)})")
        if not found:
            raise ValueError(f"class folder '{folder}' contains no images ({', '.join(extensions)})")
    return samples


def _check_signature(data: np.ndarray) -> Optional[str]:
    """A reason the bytes cannot be a complete image, or None."""
    if data.size == 0:
        return "empty file"
    head = data[:8].tobytes()
    kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None and not (head[:4] == b"RIFF" and data[8:12].tobytes() == b"WEBP"):
        return "unknown file signature (not a JPEG/PNG/BMP/TIFF/PNM/WebP image)"
    if kind == "jpeg":
        tail = data[-1024:].tobytes()
        if b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in data[-64:].tobytes():
        return "truncated PNG (no IEND chunk)"
    return None


def decode_image(path: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Read and decode an image as RGB uint8 ``(H, W, 3)``.

    Returns:
        ``(image, None)`` or ``(None, reason)``.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return None, f"cannot read file: {err}"
    reason = _check_signature(data)
    if reason:
        return None, reason
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # grayscale, CMYK, palette, 16-bit and alpha become 8-bit BGR
    if img is None or img.size == 0:
        return None, "decoder failed (corrupted data)"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), None


class ImageFileSource:
    """Random-access source for ``mindspore.dataset.GeneratorDataset``: ``(image, label)`` by index.

    Args:
        samples: ``(path, label)`` pairs.
        unreadable: where unreadable files are recorded.
        strict: raise :class:`UnreadableImageError` on the first unreadable file.
        replace_unreadable: training mode: return the next readable sample instead, so every rank keeps
            the same number of steps. Evaluation mode (False): return a 1x1 black image with label
            -1, which metrics ignore, so evaluation counts only real images.
    """

    def __init__(
        self,
        samples: List[Tuple[str, int]],
        unreadable: UnreadableFiles,
        strict: bool = False,
        replace_unreadable: bool = True,
    ) -> None:
        self.samples = samples
        self.unreadable = unreadable
        self.strict = strict
        self.replace_unreadable = replace_unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            img, reason = decode_image(path)
            if img is not None:
                return img, np.array(label, dtype=np.int32)
            if self.strict:
                raise UnreadableImageError(path, reason)
            self.unreadable.record(path, reason)
            if not self.replace_unreadable:
                return np.zeros((1, 1, 3), np.uint8), np.array(-1, dtype=np.int32)
        raise UnreadableImageError(self.samples[index][0], "no readable image in the whole dataset")
