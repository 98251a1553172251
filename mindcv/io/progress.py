"""Progress bars that stay readable when stderr is a file: tqdm on a terminal, a line now and then otherwise.

A tqdm bar redirected to a file (``python train.py ... 2> log``, a batch job, CI) is rewritten in place with
carriage returns, so the log holds one very long line. :func:`progress_bar` returns a tqdm bar only when the
stream it writes to is a terminal; otherwise a :class:`LineProgress` with the methods mindcv uses (iteration,
``update``, ``set_postfix``, ``set_description``, ``close``, ``with``) that writes one complete line every
``every_percent`` percent of the total or every ``every_seconds`` seconds, whichever comes first.
"""

import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

from tqdm import tqdm

__all__ = ["progress_bar", "LineProgress", "EVERY_PERCENT", "EVERY_SECONDS"]

EVERY_PERCENT = 25.0  # a line at 25, 50, 75 and 100% of a bar with a known total
EVERY_SECONDS = 60.0  # and at least one a minute (the only trigger when the total is unknown)


class LineProgress:
    """A progress report written as whole lines: ``desc: 10/40 (25%), 0:05 elapsed, 2.0 it/s, loss=1.2``.

    Args:
        iterable: iterate over this, counting one step per item (optional).
        total: the expected number of steps (default: ``len(iterable)`` when it has one).
        desc: the label at the start of every line.
        initial: steps already done (a resumed run).
        unit: the unit of the rate.
        unit_scale: scale counts with SI prefixes (``1.5M``), for byte counts.
        disable: write nothing.
        file: the stream (default: ``sys.stderr`` at the time of writing).
        every_percent: write when the count crosses another multiple of this percentage of ``total``.
        every_seconds: write when this many seconds passed since the last line.
    """

    def __init__(
        self,
        iterable: Optional[Iterable] = None,
        total: Optional[float] = None,
        desc: str = "",
        initial: float = 0,
        unit: str = "it",
        unit_scale: bool = False,
        disable: bool = False,
        file: Optional[TextIO] = None,
        every_percent: float = EVERY_PERCENT,
        every_seconds: float = EVERY_SECONDS,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        if every_percent <= 0 or every_seconds <= 0:
            raise ValueError(f"every_percent and every_seconds must be > 0, got {every_percent}, {every_seconds}")
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = initial
        self.unit = unit
        self.unit_scale = unit_scale
        self.disable = disable
        self._file = file
        self.every_percent = every_percent
        self.every_seconds = every_seconds
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._initial = initial
        self._last_n: Optional[float] = None
        self._next_percent = self._following_threshold(initial)
        self._closed = False

    def _following_threshold(self, n: float) -> float:
        """The next percentage at which a line is due once ``n`` steps are done."""
        if not self.total:
            return float("inf")
        done = 100.0 * n / self.total
        return (int(done // self.every_percent) + 1) * self.every_percent

    def _count(self, n: float) -> str:
        return f"{tqdm.format_sizeof(n)}{self.unit}" if self.unit_scale else f"{n:g}"

    def format_line(self) -> str:
        """The line describing the current state (what :meth:`update` writes)."""
        elapsed = time.monotonic() - self._start
        count = self._count(self.n)
        if self.total:
            count += f"/{self._count(self.total)} ({100.0 * self.n / self.total:.0f}%)"
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        rate_text = f"{tqdm.format_sizeof(rate)}{self.unit}/s" if self.unit_scale else f"{rate:.3g} {self.unit}/s"
        line = f"{count}, {tqdm.format_interval(elapsed)} elapsed, {rate_text}"
        if self.desc:
            line = f"{self.desc}: {line}"
        return f"{line}, {self.postfix}" if self.postfix else line

    def _write(self) -> None:
        stream = self._file if self._file is not None else sys.stderr
        self._last_time = time.monotonic()
        self._last_n = self.n
        if stream is None:  # no stderr at all (pythonw): nothing to report to
            return
        stream.write(self.format_line() + "\n")
        stream.flush()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more steps; write a line if a percentage threshold was crossed or enough time passed."""
        self.n += n
        if self.disable or self._closed:
            return
        due_percent = self.total and 100.0 * self.n / self.total >= self._next_percent
        if due_percent or time.monotonic() - self._last_time >= self.every_seconds:
            self._write()
            self._next_percent = self._following_threshold(self.n)

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values appended to the following lines (``key=value``), as tqdm's ``set_postfix``."""
        values = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        """Change the label of the following lines."""
        self.desc = desc or ""

    def close(self) -> None:
        """Finish: write a last line unless the last one already showed the final count."""
        if self._closed:
            return
        self._closed = True
        if not self.disable and self._last_n != self.n and self.n != self._initial:
            self._write()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress report was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _is_terminal(stream: Optional[TextIO]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    iterable: Optional[Iterable] = None,
    total: Optional[float] = None,
    desc: str = "",
    disable: bool = False,
    *,
    initial: float = 0,
    unit: str = "it",
    unit_scale: bool = False,
    leave: bool = True,
    dynamic_ncols: bool = False,
    file: Optional[TextIO] = None,
    every_percent: float = EVERY_PERCENT,
    every_seconds: float = EVERY_SECONDS,
):
    """A tqdm bar when the output stream is a terminal, else a :class:`LineProgress` (whole lines, now and then).

    Args:
        iterable: iterate over this (optional; without it, call ``update``).
        total: expected steps (default: ``len(iterable)`` when it has one).
        desc: the label.
        disable: show nothing.
        initial: steps already done.
        unit: the unit of the rate.
        unit_scale: SI prefixes for the counts (byte counts).
        leave: tqdm only: keep the finished bar on the terminal.
        dynamic_ncols: tqdm only: follow the terminal's width.
        file: the output stream (default ``sys.stderr``, as tqdm).
        every_percent: non-terminal only: a line every this many percent of ``total``.
        every_seconds: non-terminal only: a line at least this often.

    Returns:
        A ``tqdm`` or a :class:`LineProgress`; both iterate over ``iterable`` and have ``update``, ``set_postfix``,
        ``set_description`` and ``close`` and work in a ``with`` statement.
    """
    stream = file if file is not None else sys.stderr
    common = dict(total=total, initial=initial, unit=unit, unit_scale=unit_scale, file=file)
    if not disable and _is_terminal(stream):
        return tqdm(iterable, desc=desc or None, leave=leave, dynamic_ncols=dynamic_ncols, **common)
    return LineProgress(
        iterable, desc=desc, disable=disable, every_percent=every_percent, every_seconds=every_seconds, **common
    )
