"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every temporary file this package writes next to its target is named ``.tmp-*`` so a run can find
and remove the leftovers of a killed predecessor (see :func:`remove_stale_temporaries`).
"""

import contextlib
import os
import re
import shutil
import tempfile
from typing import IO, Callable, Iterator, List, Optional

from ..errors import RunFailedError

__all__ = [
    "TMP_PREFIX",
    "AtomicWriteError",
    "atomic_path",
    "atomic_write",
    "current_umask",
    "remove_stale_temporaries",
    "describe_write_error",
]

TMP_PREFIX = ".tmp-"
# what mkstemp makes of TMP_PREFIX (8 random characters, the target's extension), and MindSpore's
# '<name>.tmp' of such a file; nothing else is ever taken for a leftover
_TMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}(\.[A-Za-z0-9]+)?")


class AtomicWriteError(RunFailedError):
    """A file could not be written (full disk, read-only file system); the old file is unchanged."""


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` can only set it, racing other threads).

    Returns:
        The umask from ``/proc/self/status``; where that is unavailable, from ``os.umask`` set and restored.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(
    path: str,
    suffix: Optional[str] = None,
    *,
    prefix: str = TMP_PREFIX,
    error: Optional[Callable[[OSError], BaseException]] = None,
) -> Iterator[str]:
    """Give a writer that needs a file *name* (MindSpore, ONNX, a compiler) a temporary sibling of ``path``.

    The temporary file exists (empty) when the block starts. When the block succeeds it is flushed to disk,
    given the permissions a new file gets (``0o666 & ~umask``; ``mkstemp`` and MindSpore make owner-only
    files) and renamed onto ``path`` in one step. When the block raises, it is removed and ``path`` is left as
    it was.

    Args:
        path: the final file.
        suffix: the temporary file's extension (default: ``path``'s, which writers that append their own
            extension rely on).
        prefix: the temporary file's name prefix; the default :data:`TMP_PREFIX` lets
            :func:`remove_stale_temporaries` find what a killed process left.
        error: turns an ``OSError`` into the exception to raise. Without it, an ``OSError`` raised while the
            block writes or while the file is published becomes an :class:`AtomicWriteError` naming ``path`` and
            the free space (a run that could not go on), and one raised while making the folder or the
            temporary file propagates as it is (an unusable path, e.g. a ``PermissionError``: the user's to fix).

    Yields:
        The temporary file's path.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=prefix, suffix=os.path.splitext(path)[1] if suffix is None else suffix, dir=directory
        )
        os.close(fd)
    except OSError as err:
        if error is None:
            raise
        raise error(err) from err
    try:
        yield tmp
        # the writer may have closed the file without fsync: a crash after the rename must not leave it empty
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota, an I/O error: while writing or publishing
        raise (error(err) if error else AtomicWriteError(describe_write_error(path, err))) from err
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the final file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (text mode only).

    Yields:
        The open temporary file. If the block raises, the temporary file is removed and ``path`` is left as
        it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    # a folder that cannot be written is an AtomicWriteError here too: the callers report one kind of failure
    with atomic_path(path, error=lambda err: AtomicWriteError(describe_write_error(path, err))) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding, "newline": ""})) as f:
            yield f


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
