"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every temporary file this package writes next to its target is named ``.tmp-*`` so a run can find
and remove the leftovers of a killed predecessor (see :func:`remove_stale_temporaries`).
"""

import contextlib
import os
import re
import shutil
import tempfile
from typing import IO, Iterator, List

from ..errors import RunFailedError

__all__ = ["TMP_PREFIX", "AtomicWriteError", "atomic_write", "remove_stale_temporaries", "describe_write_error"]

TMP_PREFIX = ".tmp-"
# what mkstemp makes of TMP_PREFIX (8 random characters, the target's extension), and MindSpore's
# '<name>.tmp' of such a file; nothing else is ever taken for a leftover
_TMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}(\.[A-Za-z0-9]+)?")


class AtomicWriteError(RunFailedError):
    """A file could not be written (full disk, read-only file system); the old file is unchanged."""


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the final file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (text mode only).

    Yields:
        The open temporary file. If the block raises, the temporary file is removed and ``path`` is
        left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=directory)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding, "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    except OSError as err:  # a full disk or read-only folder, wherever the write failed
        raise AtomicWriteError(describe_write_error(path, err)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the ``.tmp-*`` files a killed run left in ``folder`` (call only while holding its run lock).

    Returns:
        The removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        if _TMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)
            removed.append(entry.path)
    return removed


def describe_write_error(path: str, error: BaseException) -> str:
    """One line naming the file, the cause and the free space of its file system."""
    directory = os.path.dirname(os.path.abspath(path))
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free on {directory}"
    except OSError:
        free = "free space unknown"
    cause = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"cannot write '{path}': {cause} ({free})"
