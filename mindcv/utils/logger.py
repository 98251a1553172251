"""Logging to the console (rank 0) and to ``<output_dir>/train.log`` (every rank, one file each)."""

import copy
import logging
import os
import sys
from typing import Optional

__all__ = ["set_logger", "ConsoleHandler"]

_FORMAT = "[%(asctime)s] %(name)s %(levelname)s - %(message)s"
_OWN_HANDLER = "_mindcv_set_logger"  # marks the handlers set_logger added
# ANSI SGR codes of the level names (upstream's colours: debug magenta, info green, warning yellow, error red)
_LEVEL_COLOURS = {
    logging.DEBUG: "35",
    logging.INFO: "32",
    logging.WARNING: "33",
    logging.ERROR: "31",
    logging.CRITICAL: "1;31",
}


def _is_colour_terminal(stream) -> bool:
    """Colour only for a terminal (a file, a pipe or a test capture gets plain text) and unless NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ConsoleHandler(logging.StreamHandler):
    """A handler writing to the *current* ``sys.stdout`` or ``sys.stderr``, looked up for every record.

    A plain ``StreamHandler`` keeps the stream it was created with: after a tool's ``main`` runs in-process
    (a notebook, a test's output capture, a caller that swaps ``sys.stderr``), later records would go to a
    closed or stale stream and print "--- Logging error ---" tracebacks instead of the message.

    Args:
        which: ``"stdout"`` or ``"stderr"``.
        color: colour the level names when the stream is a terminal (plain text otherwise, or if the
            ``NO_COLOR`` environment variable is set).
    """

    def __init__(self, which: str = "stderr", color: bool = False) -> None:
        if which not in ("stdout", "stderr"):
            raise ValueError(f"which must be 'stdout' or 'stderr', got {which!r}")
        self._which = which
        self.color = color
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        if self.color and _is_colour_terminal(self.stream):
            record = copy.copy(record)  # other handlers (the log file) must get the plain level name
            code = _LEVEL_COLOURS.get(record.levelno, "0")
            record.levelname = f"\033[{code}m{record.levelname}\033[0m"
        return super().format(record)

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it in __init__; the live stream is used instead
        pass


def set_logger(
    name: Optional[str] = None,
    output_dir: Optional[str] = None,
    rank: Optional[int] = 0,
    log_level: int = logging.INFO,
    color: bool = True,
) -> logging.Logger:
    """Configure a logger: console on rank 0, a log file per rank. Calling it again reconfigures the logger.

    Args:
        name: logger name; ``None`` (upstream's default) configures the root logger, which every logger
            propagates to; ``"mindcv"`` configures the package's loggers only (what ``train.py`` does).
        output_dir: folder of the log file (``train.log`` on rank 0, ``train_rank<N>.log`` on the others).
        rank: process rank (None: 0); only rank 0 logs to the console.
        log_level: level.
        color: colour the console's level names, as upstream (default True); only a terminal gets colours, so
            redirected output and log files stay plain text. No extra package is needed.

    Returns:
        The logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(log_level)
    logger.propagate = False
    # replace what an earlier call added, and only that: the root logger may carry a user's or a test
    # runner's handlers
    for handler in [h for h in logger.handlers if getattr(h, _OWN_HANDLER, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    handlers = []
    if not rank:
        handlers.append(ConsoleHandler("stdout", color=color))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fname = "train.log" if not rank else f"train_rank{rank}.log"
        handlers.append(logging.FileHandler(os.path.join(output_dir, fname)))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OWN_HANDLER, True)
        logger.addHandler(handler)
    return logger
