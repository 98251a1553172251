"""ImageFolder trees (``root/<split>/<class>/<image>``): indexing, decoding and unreadable files.

Images are decoded in the dataset source with OpenCV (libjpeg-turbo / libpng, GIL released), so that
a file that cannot be decoded is known *by path*. ImageNet contains CMYK and grayscale JPEGs, a PNG
saved as ``.JPEG`` and the odd truncated file; all decodable ones come out as 3-channel RGB uint8, and
the others are reported instead of killing a long run. On the development CPU this source feeding
MindSpore's C++ augmentation ops is also faster than ``ImageFolderDataset`` + ``Decode``
(see ``benchmarks/bench_data.py``).

Safety rules (each violation is reported by path and skipped, never a crash or a silent mislabel):

* **Decompression bombs.** The width and height are read from the header bytes (PNG IHDR, JPEG SOF,
  BMP, TIFF, PNM, WebP) *before* decoding; an image above ``max_image_pixels`` (default
  :data:`MAX_IMAGE_PIXELS`, PIL's 89,478,485) is never decoded. OpenCV's own limit (see
  ``mindcv.data._opencv``) is honoured too, so ``cv2.imdecode`` never raises on size.
* **Decoder errors** (``cv2.error``, ``MemoryError``, odd channel counts or depths, zero-sized images)
  are per-file "unreadable" results; in strict mode :class:`UnreadableImageError` names the path.
* **Symbolic links** are followed at most once per real directory, see :func:`make_samples`.
"""

import logging
import math
import os
import stat
import struct
import threading
from operator import attrgetter, itemgetter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ._opencv import OPENCV_MAX_IMAGE_HEIGHT, OPENCV_MAX_IMAGE_PIXELS, OPENCV_MAX_IMAGE_WIDTH, cv2

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "UnreadableImageError",
    "UnreadableFiles",
    "collect_images",
    "find_classes",
    "make_samples",
    "image_size",
    "decode_image",
    "ImageFileSource",
]

_logger = logging.getLogger(__name__)
cv2.setNumThreads(1)  # the pipeline parallelises across samples; OpenCV's own threads only contend

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

#: Default pixel limit of :func:`decode_image` (PIL's ``Image.MAX_IMAGE_PIXELS``: about 268 MB as RGB).
#: Read when a source / classifier is created; pass ``max_image_pixels`` to override it per dataset.
MAX_IMAGE_PIXELS = 89_478_485
_RESIZE_BOUND = 512  # the largest short side an evaluation transform is assumed to resize to

_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"P5": "pnm",
    b"P6": "pnm",
}
# JPEG start-of-frame markers (all but DHT C4, JPG C8 and DAC CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class UnreadableImageError(RuntimeError):
    """An image file cannot be decoded (raised in strict mode)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"unreadable image '{path}': {reason}")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class UnreadableFiles:
    """A record of unreadable (and refused) files: ``(path, reason)`` events.

    Without ``log_path`` the events are kept in memory (thread-safe) and **no file is created**. With a
    ``log_path``, each event is one appended line ``<path>\\t<reason>`` (tabs, newlines and backslashes in
    names are escaped), so counts survive worker processes (``python_multiprocessing``) and crashes; the
    file and its folder are created when the first event is written, not before. :meth:`entries` and
    :meth:`count` cover the events recorded since this object was created (lines that were already in the
    file, e.g. from an earlier run, are kept but not counted), unless ``overwrite`` removed them. Objects
    sharing one file (ranks of a distributed run, a train and a val set) all see each other's later events.

    Args:
        log_path: the log file (normally in the run's output folder), or None for in-memory records.
        overwrite: remove an existing log file now (a one-shot report such as infer.py's).
    """

    def __init__(self, log_path: Optional[str] = None, overwrite: bool = False) -> None:
        self.log_path = os.fspath(log_path) if log_path else None
        self._lock = threading.Lock()
        self._records: List[Tuple[str, str]] = []
        self._warned = set()
        self._start = 0
        self._write_failed = False
        if self.log_path is not None:
            if os.path.isdir(self.log_path):
                raise InvalidArgumentError(f"the unreadable-file log '{self.log_path}' is a folder; give a file path")
            if overwrite and os.path.lexists(self.log_path):
                os.remove(self.log_path)
            self._start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def __getstate__(self) -> dict:  # picklable for spawned worker processes (the lock is not)
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool:
        """True when events are kept in this process only (no log file)."""
        return self.log_path is None

    def record(self, path: str, reason: str) -> None:
        path, reason = os.fspath(path), str(reason)
        with self._lock:
            if self.log_path is None or not self._write(path, reason):
                self._records.append((path, reason))
            first = path not in self._warned
            self._warned.add(path)
        if first:
            _logger.warning("skipping '%s': %s", path, reason)

    def _write(self, path: str, reason: str) -> bool:
        """Append one line to the log file (created with its folder on the first event); False if impossible."""
        try:
            folder = os.path.dirname(self.log_path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            # one short write() per line in append mode: lines of concurrent processes do not interleave
            with open(self.log_path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"{_escape(path)}\t{_escape(reason)}\n")
            return True
        except OSError as err:  # a full disk must not stop training: keep the event in memory
            if not self._write_failed:
                self._write_failed = True
                _logger.error(
                    "cannot write the unreadable-file log '%s' (%s); keeping records in memory", self.log_path, err
                )
            return False

    def entries(self) -> List[Tuple[str, str]]:
        """All recorded events as ``(path, reason)`` (a file read in several epochs appears several times)."""
        with self._lock:
            memory = list(self._records)
        if self.log_path is None or not os.path.exists(self.log_path):
            return memory
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._start)
                text = f.read().decode("utf-8", errors="surrogateescape")
        except OSError:
            return memory
        out = []
        for line in text.split("\n"):
            if line.strip():
                path, _, reason = line.partition("\t")
                out.append((_unescape(path), _unescape(reason)))
        return out + memory

    def count(self) -> int:
        """Number of distinct files recorded so far."""
        return len({path for path, _ in self.entries()})


# ----------------------------------------------------------------------------------------------------------
# the folder walk


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop (ELOOP) or a vanished target
        return False


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
    with os.scandir(directory) as it:
        classes = sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))
    if not classes:
        raise InvalidArgumentError(f"'{directory}' has no class folders: expected one sub-folder of images per class")
    return classes, {c: i for i, c in enumerate(classes)}


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both real, absolute paths)."""
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


def _class_of(real: str, roots: Dict[str, str]) -> Optional[str]:
    """The class whose real folder contains ``real`` (or None)."""
    path = real
    while True:
        if path in roots:
            return roots[path]
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


class _Walk:
    """State of :func:`make_samples`: every real directory is listed at most once for the whole split."""

    def __init__(self, directory: str, class_to_idx: Dict[str, int], extensions: Sequence[str], report) -> None:
        self.directory = directory
        self.split_real = os.path.realpath(directory)
        self.exts = tuple(e.lower() for e in extensions)
        self.report = report
        self.roots: Dict[str, str] = {}  # real class folder -> class
        self.visited: Dict[str, Tuple[str, str]] = {}  # real folder -> (class, path it was listed under)
        self.parent: Dict[str, Optional[str]] = {}  # real folder -> real folder it was reached from
        self.contested = set()  # real folders reached from two classes: excluded from both
        self.linked: Dict[str, Tuple[str, str]] = {}  # real file reached by a file symlink -> (class, link)
        self.ambiguous_files = set()  # real files reached from two classes
        self.dropped_links = set()  # link paths found to duplicate a file of the same class
        self.dropped_regular = set()  # (real folder, name) of regular files reached from two classes
        for cls in sorted(class_to_idx, key=class_to_idx.get):
            real = os.path.realpath(os.path.join(directory, cls))
            if real in self.roots:
                raise InvalidArgumentError(
                    f"class folders '{self.roots[real]}' and '{cls}' of '{directory}' are the same folder '{real}': "
                    "its images cannot have two labels; remove or fix one of the links"
                )
            self.roots[real] = cls
        for real, cls in self.roots.items():
            if _within(self.split_real, real):
                raise InvalidArgumentError(
                    f"class folder '{os.path.join(directory, cls)}' links to '{real}', which contains the split "
                    "folder itself: it would take every class's images; fix the link"
                )
            outer = _class_of(os.path.dirname(real), self.roots)
            if outer is not None:
                raise InvalidArgumentError(
                    f"class folder '{cls}' ('{real}') lies inside class folder '{outer}' of '{directory}': "
                    "its images would have two labels; fix the link"
                )

    def _report(self, path: str, reason: str) -> None:
        if self.report is not None:
            self.report.record(path, reason)
        else:
            _logger.warning("skipping '%s': %s", path, reason)

    def is_image(self, name: str) -> bool:
        return name.lower().endswith(self.exts)

    def _enter(self, path: str, real: str, parent_real: str, cls: str, stack: list) -> None:
        """Queue the folder ``real`` (listed as ``path``) for class ``cls`` unless it was seen already."""
        if real in self.visited:
            other, first = self.visited[real]
            if other == cls:
                self._report(
                    path, f"folder '{real}' is already included as '{first}' (a loop or duplicate link): skipped"
                )
            else:
                self.contested.add(real)
                self._report(
                    path,
                    f"folder '{real}' is also reached from class '{other}' as '{first}': its images would have two "
                    "labels, so they are excluded from both classes",
                )
            return
        if real in self.roots and self.roots[real] != cls:
            self._report(path, f"is the folder of class '{self.roots[real]}': skipped for class '{cls}'")
            return
        self.visited[real] = (cls, path)
        self.parent[real] = parent_real
        stack.append((path, real))

    def _link_refusal(self, link: str, target: str, cls: str, folder_real: str, is_dir: bool) -> Optional[str]:
        """Why the symlink ``link`` (to the real path ``target``) in class ``cls`` must not be followed."""
        if _within(self.split_real, target):
            return (
                f"symbolic link to '{target}', which contains the whole split folder '{self.directory}': skipped "
                f"(it would loop and put other classes' images under '{cls}')"
            )
        owner = _class_of(target, self.roots)
        if owner is None:
            return self._sibling_split_refusal(target, cls)
        if owner != cls:
            return (
                f"symbolic link into class '{owner}' ('{target}'): skipped; those images belong to class '{owner}', "
                f"not '{cls}'"
            )
        if is_dir and _within(folder_real, target):
            return f"symbolic link to its own ancestor folder '{target}' (a loop): skipped"
        if is_dir or self.is_image(os.path.basename(target)):
            return f"symbolic link to '{target}' in the same class folder: skipped (already included)"
        return None  # a link named .jpg to a same-class file with another extension: the link is the sample

    def _sibling_split_refusal(self, target: str, cls: str) -> Optional[str]:
        """A link into another split of the same dataset (``val/a/x -> train`` or ``-> train/b``) would give
        that split's images this class's label (and leak training images into validation)."""
        parent = os.path.dirname(self.split_real)
        if not _within(target, parent) or target == parent:
            return None
        parts = os.path.relpath(target, parent).split(os.sep)
        sibling = os.path.join(parent, parts[0])
        if not any(os.path.isdir(os.path.join(sibling, c)) for c in self.roots.values()):
            return None  # not a split of this dataset (e.g. a shared image store beside the splits)
        if len(parts) > 1 and parts[1] == cls:
            return None  # the same class of another split: the label stays right
        where = f"class '{parts[1]}' of" if len(parts) > 1 else "the whole of"
        return (
            f"symbolic link into {where} split '{sibling}' ('{target}'): skipped; those images must not be "
            f"labelled '{cls}' here"
        )

    def walk_class(self, cls: str) -> List[Tuple[str, str, List[str], Dict[str, str]]]:
        """``(listed path, real folder, image file names, {name: real file} of file links)`` per folder."""
        root_path = os.path.join(self.directory, cls)
        root_real = os.path.realpath(root_path)
        stack: List[Tuple[str, str]] = []
        self._enter(root_path, root_real, None, cls, stack)
        groups = []
        exts = self.exts
        while stack:
            path, real = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=attrgetter("name"))
            except OSError as err:
                self._report(path, f"cannot list folder: {err.strerror or err}")
                continue
            files: List[str] = []
            links: Dict[str, str] = {}
            subdirs: List[Tuple[str, str]] = []
            for entry in entries:
                name = entry.name
                try:
                    if entry.is_symlink():
                        self._link(entry, cls, real, files, links, subdirs)
                    elif entry.is_dir(follow_symlinks=False):
                        subdirs.append((entry.path, os.path.join(real, name)))
                    elif entry.is_file(follow_symlinks=False):
                        if name.lower().endswith(exts):
                            files.append(name)
                        elif not name.startswith("."):
                            self._report(entry.path, f"not an image file (extension not in {', '.join(self.exts)})")
                    elif not name.startswith("."):
                        self._report(entry.path, "not a regular file (a FIFO, socket or device): skipped")
                except OSError as err:
                    self._report(entry.path, f"cannot inspect: {err.strerror or err}")
            groups.append((path, real, files, links))
            pending: List[Tuple[str, str]] = []
            for sub_path, sub_real in subdirs:
                self._enter(sub_path, sub_real, real, cls, pending)
            stack.extend(reversed(pending))  # depth-first, in name order
        return groups

    def _link(self, entry: os.DirEntry, cls: str, folder_real: str, files: list, links: dict, subdirs: list) -> None:
        link = entry.path
        target = os.path.realpath(link)
        try:
            st = os.stat(link)
        except OSError as err:
            if self.is_image(entry.name) or not entry.name.startswith("."):
                self._report(link, f"broken symbolic link (to '{target}': {err.strerror or err}): skipped")
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not self.is_image(entry.name):
            if not entry.name.startswith("."):
                self._report(link, f"not an image file (extension not in {', '.join(self.exts)})")
            return
        refusal = self._link_refusal(link, target, cls, folder_real, is_dir)
        if refusal:
            self._report(link, refusal)
        elif is_dir:
            subdirs.append((link, target))
        elif not stat.S_ISREG(st.st_mode):
            self._report(link, f"links to '{target}', not a regular file (a FIFO, socket or device): skipped")
        elif target in self.linked:
            other, first = self.linked[target]
            if other == cls:
                self._report(link, f"same file as '{first}' (both link to '{target}'): skipped, counted once")
            else:
                self.ambiguous_files.add(target)
                self._report(
                    link,
                    f"same file '{target}' as '{first}' of class '{other}': ambiguous label, excluded from both",
                )
                self._report(
                    first,
                    f"same file '{target}' as '{link}' of class '{cls}': ambiguous label, excluded from both",
                )
        else:
            self.linked[target] = (cls, link)
            files.append(entry.name)
            links[entry.name] = target

    def resolve_linked_files(self) -> None:
        """A file link whose target folder was also walked duplicates (same class) or contests (other class)."""
        for target, (cls, link) in self.linked.items():
            folder, name = os.path.split(target)
            if folder not in self.visited or not self.is_image(name):
                continue
            other, listed = self.visited[folder]
            first = os.path.join(listed, name)
            if other == cls:
                self.dropped_links.add(link)
                self._report(link, f"same file as '{first}': skipped, counted once")
            else:
                self.ambiguous_files.add(target)
                self.dropped_regular.add((folder, name))
                self._report(
                    link, f"same file as '{first}' of class '{other}': ambiguous label, excluded from both classes"
                )
                self._report(
                    first, f"same file as '{link}' of class '{cls}': ambiguous label, excluded from both classes"
                )

    def excluded_folder(self, real: str, memo: Dict[str, bool]) -> bool:
        """``real`` is, or was reached through, a folder that two classes reach."""
        chain = []
        node = real
        while node is not None and node not in memo:
            if node in self.contested:
                memo[node] = True
                break
            chain.append(node)
            node = self.parent.get(node)
        result = memo.get(node, False) if node is not None else False
        for n in chain:
            memo[n] = result
        return result


def make_samples(
    directory: str,
    class_to_idx: Dict[str, int],
    extensions: Sequence[str] = IMG_EXTENSIONS,
    report: Optional[UnreadableFiles] = None,
) -> List[Tuple[str, int]]:
    """``(path, label)`` for every image of every class folder, sorted within each class.

    Sub-folders and symbolic links are followed, but every real directory is listed at most once
    (realpaths are tracked), so links can neither loop nor duplicate nor relabel images:

    * a class folder may itself be a link (e.g. into a shared store outside the split), and links to
      folders or files outside the split's class folders are followed;
    * a link inside class A to the split folder (or one of its ancestors), to class B's folder or into it is
      refused: B's images stay B's only;
    * a link to an ancestor or to a folder/file already included in the same class is a loop or a duplicate:
      the file is counted once (the physical path wins over a link inside the class; otherwise the first in
      name order), the skipped link is reported;
    * a real folder or file outside the split reached from two classes has no well-defined label: it is
      reported and excluded from **both** classes.

    Every skipped link names itself in the report (or a warning if ``report`` is None). Files with other
    extensions are reported (not silently ignored). The order is deterministic (folders by listed path,
    files by name).

    Raises:
        ValueError: an empty class folder (its label would silently never be trained), two class folders
            that are the same real folder, one inside another, or one containing the split.
    """
    walk = _Walk(directory, class_to_idx, extensions, report)
    per_class = [(cls, walk.walk_class(cls)) for cls in sorted(class_to_idx, key=class_to_idx.get)]
    walk.resolve_linked_files()
    memo: Dict[str, bool] = {}
    samples: List[Tuple[str, int]] = []
    for cls, groups in per_class:
        idx = class_to_idx[cls]
        found = excluded = 0
        for path, real, files, links in sorted(groups, key=itemgetter(0)):
            contested = walk.excluded_folder(real, memo)
            prefix = os.path.join(path, "")
            if not (links or contested or walk.dropped_regular):  # the common case: plain files
                samples.extend([(prefix + name, idx) for name in files])
                found += len(files)
                continue
            for name in files:
                file_path = prefix + name
                target = links.get(name)
                if target is not None and file_path in walk.dropped_links:
                    continue  # a duplicate within the class (reported)
                if (target is not None and target in walk.ambiguous_files) or (real, name) in walk.dropped_regular:
                    excluded += 1  # reported when the second class reached it
                    continue
                if contested:
                    excluded += 1
                    walk._report(file_path, "its folder is also reached from another class: ambiguous label, excluded")
                    continue
                samples.append((file_path, idx))
                found += 1
        if not found:
            folder = os.path.join(directory, cls)
            extra = f" ({excluded} excluded as ambiguous, see the report)" if excluded else ""
            raise InvalidArgumentError(f"class folder '{folder}' contains no images ({', '.join(extensions)}){extra}")
    return samples


# ----------------------------------------------------------------------------------------------------------
# header check and decoding


def _file_kind(raw: bytes) -> Optional[str]:
    for sig, kind in _SIGNATURES.items():
        if raw.startswith(sig):
            return kind
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return None


def _check_signature(raw: bytes) -> Tuple[Optional[str], Optional[str]]:
    """``(kind, None)``, or ``(None, reason)`` when the bytes cannot be a complete image."""
    if len(raw) == 0:
        return None, "empty file"
    kind = _file_kind(raw)
    if kind is None:
        return None, "unknown file signature (not a JPEG/PNG/BMP/TIFF/PNM/WebP image)"
    if kind == "jpeg" and b"\xff\xd9" not in raw[-1024:]:
        return None, "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in raw[-64:]:
        return None, "truncated PNG (no IEND chunk)"
    return kind, None


def _jpeg_size(raw: bytes) -> Optional[Tuple[int, int]]:
    n, i = len(raw), 2
    while i < n:
        if raw[i] != 0xFF:  # extraneous bytes between segments: libjpeg skips to the next marker too
            i = raw.find(b"\xff", i)
            if i < 0:
                return None
        while i < n and raw[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = raw[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker in (0xD9, 0xDA):  # end of image / scan data before any frame header
            return None
        if i + 2 > n:
            return None
        length = (raw[i] << 8) | raw[i + 1]
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if length < 8 or i + 7 > n:
                return None
            height, width = struct.unpack_from(">HH", raw, i + 3)
            return width, height
        i += length
    return None


def _tiff_size(raw: bytes) -> Optional[Tuple[int, int]]:
    bo = "<" if raw[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(bo + "I", raw, 4)
    (count,) = struct.unpack_from(bo + "H", raw, offset)
    size = {}
    for k in range(count):
        tag, kind = struct.unpack_from(bo + "HH", raw, offset + 2 + 12 * k)
        if tag in (256, 257):
            if kind == 3:  # SHORT
                (value,) = struct.unpack_from(bo + "H", raw, offset + 10 + 12 * k)
            elif kind == 4:  # LONG
                (value,) = struct.unpack_from(bo + "I", raw, offset + 10 + 12 * k)
            else:
                return None
            size[tag] = max(value, size.get(tag, 0))  # a repeated tag: the larger claim counts
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _pnm_size(raw: bytes) -> Optional[Tuple[int, int]]:
    head, i, numbers = raw[:4096], 2, []
    while len(numbers) < 2 and i < len(head):
        c = head[i]
        if c in b" \t\r\n\x0b\x0c":
            i += 1
        elif c == 0x23:  # '#' comment to the end of the line
            ends = [j for j in (head.find(b"\n", i), head.find(b"\r", i)) if j >= 0]
            i = min(ends) + 1 if ends else len(head)
        else:
            j = i
            while j < len(head) and 0x30 <= head[j] <= 0x39:
                j += 1
            if j == i:
                return None
            numbers.append(int(head[i:j]))
            i = j
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def _webp_size(raw: bytes) -> Optional[Tuple[int, int]]:
    chunk = raw[12:16]
    if chunk == b"VP8 " and raw[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", raw, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and raw[20:21] == b"\x2f":
        (bits,) = struct.unpack_from("<I", raw, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(raw) >= 30:
        return 1 + int.from_bytes(raw[24:27], "little"), 1 + int.from_bytes(raw[27:30], "little")
    return None


def _bmp_size(raw: bytes) -> Optional[Tuple[int, int]]:
    (header,) = struct.unpack_from("<I", raw, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack_from("<HH", raw, 18)
    if header < 16:
        return None
    width, height = struct.unpack_from("<ii", raw, 18)
    return (width, abs(height)) if width >= 0 else None


def image_size(raw: bytes, kind: Optional[str] = None) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the header bytes of a JPEG/PNG/BMP/TIFF/PNM/WebP image, or None.

    Only the header is parsed (nothing is decoded); ``raw`` may be the whole file or its first bytes
    (a JPEG's frame header follows its metadata segments, which can be large).
    """
    kind = kind or _file_kind(raw)
    try:
        if kind == "png":
            return struct.unpack_from(">II", raw, 16) if raw[12:16] == b"IHDR" else None
        if kind == "jpeg":
            return _jpeg_size(raw)
        if kind == "bmp":
            return _bmp_size(raw)
        if kind == "tiff":
            return _tiff_size(raw)
        if kind == "pnm":
            return _pnm_size(raw)
        if kind == "webp":
            return _webp_size(raw)
    except struct.error:  # the header is cut short
        return None
    return None


def collect_images(inputs: Iterable[str]) -> List[str]:
    """Expand files and folders (recursively, image extensions only) into a sorted file list.

    Args:
        inputs: image files (taken whatever their extension) and folders.

    Returns:
        The files, in the order given, each folder's images sorted by path.

    Raises:
        FileNotFoundError: an input does not exist.
    """
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


def resolve_max_image_pixels(max_image_pixels: Optional[int]) -> int:
    """``max_image_pixels``, or the module default :data:`MAX_IMAGE_PIXELS` for None (checked positive)."""
    value = MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}")
    return int(value)


def _size_refusal(width: int, height: int, limit: int) -> Optional[str]:
    pixels = width * height
    if pixels == 0:
        return f"zero-sized image ({width}×{height} in its header)"
    if pixels > limit:
        return (
            f"image is {width}×{height} = {pixels} pixels, above the limit of {limit}; "
            "raise max_image_pixels to read it"
        )
    # a thin image passes the pixel limit but explodes when its short side is resized up for evaluation
    # (1x80000 -> 256x20,480,000); bound the image a short-side resize to _RESIZE_BOUND pixels would make
    short, long = min(width, height), max(width, height)
    resized, resized_limit = _RESIZE_BOUND * math.ceil(long * _RESIZE_BOUND / short), max(limit, MAX_IMAGE_PIXELS)
    if resized > resized_limit:
        return (
            f"image is {width}×{height} (aspect ratio {long / short:.0f}:1): resizing its short side to "
            f"{_RESIZE_BOUND} pixels would make {resized} pixels, above the limit of {resized_limit}; "
            "raise max_image_pixels to read it"
        )
    if pixels > OPENCV_MAX_IMAGE_PIXELS or width > OPENCV_MAX_IMAGE_WIDTH or height > OPENCV_MAX_IMAGE_HEIGHT:
        return (
            f"image is {width}×{height} = {pixels} pixels, above OpenCV's limits ({OPENCV_MAX_IMAGE_PIXELS} pixels, "
            f"{OPENCV_MAX_IMAGE_WIDTH}×{OPENCV_MAX_IMAGE_HEIGHT}); set OPENCV_IO_MAX_IMAGE_PIXELS / _WIDTH / _HEIGHT "
            "in the environment before starting Python to read it"
        )
    return None


def _to_rgb8(img: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """OpenCV's BGR(A)/gray output of any depth as RGB uint8 ``(H, W, 3)``."""
    if img.size == 0 or img.ndim not in (2, 3):
        return None, f"decoder returned an empty or malformed array (shape {img.shape})"
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype in (np.float32, np.float64):
            img = np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            return None, f"unsupported pixel type {img.dtype}"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB), None
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), None
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), None
    return None, f"unsupported number of channels ({channels})"


def decode_bytes(raw: bytes, max_image_pixels: Optional[int] = None) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """:func:`decode_image` for a file's bytes. Never raises."""
    limit = resolve_max_image_pixels(max_image_pixels)  # a bad setting is an error, not a bad file
    try:
        kind, reason = _check_signature(raw)
        if reason:
            return None, reason
        size = image_size(raw, kind)
        if size is None:
            return None, f"decoder failed (corrupted {kind.upper()} header: no image size)"
        reason = _size_refusal(size[0], size[1], limit)
        if reason:
            return None, reason
        try:
            # grayscale, CMYK, palette, 16-bit and alpha become 8-bit BGR
            img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as err:
            return None, f"decoder failed ({_cv2_message(err)})"
        if img is None:
            return None, "decoder failed (corrupted data)"
        return _to_rgb8(img)
    except MemoryError:
        return None, "out of memory while decoding this image"
    except Exception as err:  # noqa: BLE001  (any decoder failure is this file's problem, not the run's)
        return None, f"decoder failed ({type(err).__name__}: {_cv2_message(err)})"


def _cv2_message(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def decode_image(path: str, max_image_pixels: Optional[int] = None) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Read and decode an image as RGB uint8 ``(H, W, 3)``. Never raises for a bad file.

    The file is read once; its header gives the size, and an image above ``max_image_pixels`` (default
    :data:`MAX_IMAGE_PIXELS`) or OpenCV's own limits is refused without being decoded.

    Returns:
        ``(image, None)`` or ``(None, reason)``.
    """
    try:
        # O_NONBLOCK: opening a FIFO named *.jpg must not hang the pipeline (no effect on regular files)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, "not a regular file"
            raw = f.read()
    except MemoryError:
        return None, "out of memory reading the file"
    except OSError as err:
        return None, f"cannot read file: {err}"
    return decode_bytes(raw, max_image_pixels)


class ImageFileSource:
    """Random-access source for ``mindspore.dataset.GeneratorDataset``: ``(image, label)`` by index.

    Args:
        samples: ``(path, label)`` pairs.
        unreadable: where unreadable files are recorded (default: a new in-memory record).
        strict: raise :class:`UnreadableImageError` on the first unreadable file.
        replace_unreadable: training mode: return the next readable sample instead, so every rank keeps
            the same number of steps. Evaluation mode (False): return a 1x1 black image with label
            -1, which metrics ignore, so evaluation counts only real images.
        max_image_pixels: images whose header claims more pixels are reported and never decoded
            (default :data:`MAX_IMAGE_PIXELS`).
    """

    def __init__(
        self,
        samples: List[Tuple[str, int]],
        unreadable: Optional[UnreadableFiles] = None,
        strict: bool = False,
        replace_unreadable: bool = True,
        max_image_pixels: Optional[int] = None,
    ) -> None:
        self.samples = samples
        self.unreadable = unreadable if unreadable is not None else UnreadableFiles()
        self.strict = strict
        self.replace_unreadable = replace_unreadable
        self.max_image_pixels = resolve_max_image_pixels(max_image_pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                img, reason = decode_image(path, self.max_image_pixels)
            except Exception as err:  # noqa: BLE001  (decode_image reports errors itself; a last guard)
                img, reason = None, f"decoder failed ({type(err).__name__}: {err})"
            if img is not None:
                return img, np.array(label, dtype=np.int32)
            if self.strict:
                raise UnreadableImageError(path, reason)
            self.unreadable.record(path, reason)
            if not self.replace_unreadable:
                return np.zeros((1, 1, 3), np.uint8), np.array(-1, dtype=np.int32)
        raise UnreadableImageError(self.samples[index][0], "no readable image in the whole dataset")
