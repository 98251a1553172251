"""Errors a user can fix (bad input, a wrong path, a corrupted file, a full disk), as opposed to bugs.

The command-line tools print these as one line and exit with code 2 (a run that started and then
could not continue, such as a full disk or a diverged training, exits with 1); any other exception is
a bug in mindcv and keeps its traceback. Each class also derives from the built-in exception callers
caught before it existed (``ValueError``, ``RuntimeError``), so existing ``except`` clauses still work.
"""

__all__ = ["MindcvError", "InvalidArgumentError", "UnknownModelError", "RunFailedError"]


class MindcvError(Exception):
    """Base class of every error caused by the input rather than by a bug."""


class InvalidArgumentError(MindcvError, ValueError):
    """An argument is out of range or malformed (the message names it and what is valid)."""


class UnknownModelError(MindcvError, RuntimeError):
    """An unknown model name (the message lists close matches); a RuntimeError as in upstream mindcv."""


class RunFailedError(MindcvError, RuntimeError):
    """A run that started could not go on for a reason outside mindcv (a full disk, a lost file system)."""
