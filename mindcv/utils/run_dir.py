"""One training run per output folder.

A run holds an exclusive ``flock`` on ``<folder>/.mindcv-run.lock`` for its whole life. The kernel
drops the lock when the process dies however it dies, so a killed run never leaves a stale lock
behind (a lock *file* alone, as a library such as ``filelock``'s soft locks, would need a staleness
guess); the file's content only names the holder for the error message.
"""

import fcntl
import glob
import logging
import os
import socket
import time
from typing import List, Optional

from ..errors import MindcvError
from .atomic import remove_stale_temporaries

__all__ = ["RunDirError", "RunDirLock", "claim_run_dir", "previous_run_files"]

_logger = logging.getLogger(__name__)
LOCK_NAME = ".mindcv-run.lock"
# what train.py writes into its folder; finding any of them means another run lived here
_RUN_FILE_PATTERNS = ("*.ckpt", "*.safetensors", "metrics.csv", "metrics.jsonl")


class RunDirError(MindcvError, RuntimeError):
    """The output folder is in use by another run, or holds one that would be overwritten."""


class RunDirLock:
    """The held lock on a run folder (released by :meth:`release` or when the process ends)."""

    def __init__(self, folder: str, fd: int) -> None:
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def previous_run_files(folder: str) -> List[str]:
    """Checkpoints and metrics of an earlier run in ``folder`` (sorted)."""
    found = set()
    for pattern in _RUN_FILE_PATTERNS:
        found.update(p for p in glob.glob(os.path.join(folder, pattern)) if not os.path.basename(p).startswith("."))
    return sorted(found)


def claim_run_dir(folder: str, resume: bool, overwrite: bool, ours: Optional[List[str]] = None) -> RunDirLock:
    """Lock ``folder`` for this run and check it may be written.

    Args:
        folder: the run's output folder (created if needed).
        resume: this run continues the one in the folder (its files are expected there).
        overwrite: the user allows replacing an earlier run's files; those among ``ours`` are deleted
            so they cannot be mistaken for this run's (rotation, best metric, metrics rows).
        ours: glob patterns of the files this run writes (relative to ``folder``).

    Returns:
        The held lock.

    Raises:
        RunDirError: another live run holds the folder, or it holds an earlier run and neither
            ``resume`` nor ``overwrite`` was given.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown process"
        os.close(fd)
        raise RunDirError(
            f"output folder '{folder}' is in use by another run ({holder}); "
            "wait for it to finish or choose another --ckpt_save_dir"
        ) from None
    lock = RunDirLock(folder, fd)
    try:
        earlier = previous_run_files(folder)
        if earlier and not resume:
            if not overwrite:
                shown = ", ".join(os.path.basename(p) for p in earlier[:4]) + (" ..." if len(earlier) > 4 else "")
                raise RunDirError(
                    f"output folder '{folder}' holds another run ({shown}); pass --overwrite True to replace "
                    "it, --resume True with --ckpt_path to continue it, or choose another --ckpt_save_dir"
                )
            doomed = sorted({p for pattern in ours or () for p in glob.glob(os.path.join(folder, pattern))})
            for p in doomed:
                os.remove(p)
            if doomed:
                _logger.warning("--overwrite: removed %d file(s) of the earlier run in %s", len(doomed), folder)
        for stale in remove_stale_temporaries(folder):
            _logger.info("removed a temporary file left by a killed run: %s", stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.ctime()}\n".encode(), 0)
    except BaseException:
        lock.release()
        raise
    return lock
