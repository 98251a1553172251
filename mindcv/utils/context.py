"""MindSpore's global execution mode, changed for a block and restored after it."""

import contextlib
from typing import Iterator

import mindspore as ms

__all__ = ["execution_mode"]


@contextlib.contextmanager
def execution_mode(mode: int) -> Iterator[None]:
    """Run the block in ``mode`` (``ms.GRAPH_MODE`` or ``ms.PYNATIVE_MODE``), then restore the caller's mode.

    Library code that needs a mode (timing a compiled graph, counting MACs with hooks, a proxy training) must
    not leave it changed for the caller: the mode is process-wide.

    Args:
        mode: the mode inside the block.
    """
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)
