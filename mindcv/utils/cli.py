"""How every command-line tool ends: user errors as one line, bugs with their traceback.

Exit codes: 0 success; 1 a run that started and could not go on (a full disk, a diverged training:
:class:`~mindcv.errors.RunFailedError`) or a bug (Python prints the traceback); 2 the input is wrong
(:class:`~mindcv.errors.MindcvError`: a bad option, a missing or corrupted file, an unknown name).
"""

import logging
import sys
from typing import Any, Callable, NoReturn, Optional

from ..errors import MindcvError, RunFailedError

__all__ = ["call_cli", "run_cli", "EXIT_USER_ERROR", "EXIT_RUN_FAILED"]

EXIT_RUN_FAILED = 1
EXIT_USER_ERROR = 2
# a path that does not exist or cannot be opened is the user's to fix, whoever raised it
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def call_cli(prog: str, main: Callable[..., Any], *args: Any, logger: Optional[logging.Logger] = None) -> int:
    """Call ``main(*args)``; return its exit code (``None`` counts as 0), or 1/2 after printing a user error.

    Args:
        prog: the tool's name, prefixed to error lines (``train.py: ...``).
        main: the tool's body; it raises on errors.
        *args: its arguments.
        logger: also records the error line there (e.g. into the run's log file).

    Returns:
        The exit code. Exceptions that are not user errors propagate with their traceback.
    """
    try:
        code = main(*args)
    except (MindcvError, *_PATH_ERRORS) as error:
        if logger is not None and logger.hasHandlers():  # the run's log file; the console line follows
            logger.error("%s", error)
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED if isinstance(error, RunFailedError) else EXIT_USER_ERROR
    return code if isinstance(code, int) else 0


def run_cli(prog: str, main: Callable[..., Any], *args: Any, logger: Optional[logging.Logger] = None) -> NoReturn:
    """:func:`call_cli`, then exit the process with its code."""
    sys.exit(call_cli(prog, main, *args, logger=logger))
