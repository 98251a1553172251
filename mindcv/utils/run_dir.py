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
import re
import socket
import time
from typing import List, Optional, Sequence

from ..errors import MindcvError
from ..io.atomic import remove_stale_temporaries

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


def _inside(path: str, folder: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def claim_run_dir(folder: str, resume_from: Optional[str], overwrite: bool, ours: Sequence[str] = ()) -> RunDirLock:
    """Lock ``folder`` for this run and check it may be written.

    Args:
        folder: the run's output folder (created if needed).
        resume_from: the checkpoint a resumed run continues from (``None`` for a new run). Only a
            checkpoint of this folder's run continues it; resuming another run's checkpoint into a
            folder that holds a run needs ``overwrite``.
        overwrite: the user allows replacing an earlier run's files; those matching ``ours`` are
            deleted so they cannot be mistaken for this run's (rotation, best metric, metrics rows).
        ours: regular expressions (full match) of the names of the files this run writes.

    Returns:
        The held lock.

    Raises:
        RunDirError: another live run holds the folder; it holds an earlier run this run does not
            continue and ``overwrite`` was not given; or it cannot be created or written.
    """
    path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise RunDirError(f"output folder '{folder}' exists but is not a folder") from None
    except OSError as err:
        raise RunDirError(f"cannot use output folder '{folder}': {err.strerror or err}") from None
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
        continues = resume_from is not None and _inside(resume_from, folder)
        if earlier and not continues:
            if not overwrite:
                shown = ", ".join(os.path.basename(p) for p in earlier[:4]) + (" ..." if len(earlier) > 4 else "")
                elsewhere = " (resuming another folder's checkpoint starts a new run here)" if resume_from else ""
                raise RunDirError(
                    f"output folder '{folder}' holds another run ({shown}){elsewhere}; pass --overwrite True to "
                    "replace it, --resume True with --ckpt_path to one of its checkpoints to continue it, or "
                    "choose another --ckpt_save_dir"
                )
            patterns = [re.compile(p) for p in ours]
            doomed = sorted(e.path for e in os.scandir(folder) if any(p.fullmatch(e.name) for p in patterns))
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
