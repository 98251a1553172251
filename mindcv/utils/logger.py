"""Logging to the console (rank 0) and to ``<output_dir>/train.log`` (every rank, one file each)."""

import logging
import os
import sys
from typing import Optional

__all__ = ["set_logger", "ConsoleHandler"]

_FORMAT = "[%(asctime)s] %(name)s %(levelname)s - %(message)s"


class ConsoleHandler(logging.StreamHandler):
    """A handler writing to the *current* ``sys.stdout`` or ``sys.stderr``, looked up for every record.

    A plain ``StreamHandler`` keeps the stream it was created with: after a tool's ``main`` runs in-process
    (a notebook, a test's output capture, a caller that swaps ``sys.stderr``), later records would go to a
    closed or stale stream and print "--- Logging error ---" tracebacks instead of the message.

    Args:
        which: ``"stdout"`` or ``"stderr"``.
    """

    def __init__(self, which: str = "stderr") -> None:
        if which not in ("stdout", "stderr"):
            raise ValueError(f"which must be 'stdout' or 'stderr', got {which!r}")
        self._which = which
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it in __init__; the live stream is used instead
        pass


def set_logger(
    name: str = "mindcv",
    output_dir: Optional[str] = None,
    rank: int = 0,
    log_level: int = logging.INFO,
    color: bool = False,
) -> logging.Logger:
    """Configure the ``mindcv`` logger family.

    Args:
        name: logger name (all package loggers are children of ``mindcv``).
        output_dir: folder of the log file (``train.log`` on rank 0, ``train_rank<N>.log`` on the others).
        rank: process rank; only rank 0 logs to the console.
        log_level: level.
        color: accepted for upstream compatibility.

    Returns:
        The logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(log_level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    if not rank:
        console = ConsoleHandler("stdout")
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fname = "train.log" if not rank else f"train_rank{rank}.log"
        file_handler = logging.FileHandler(os.path.join(output_dir, fname))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
