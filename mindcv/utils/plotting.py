"""The one way this package draws a figure: matplotlib off-screen, written atomically, optional.

matplotlib is an optional dependency (``pip install mindcv[plot]``): without it no figure is written and a
single warning says so, and training or searching goes on.
"""

import logging
from typing import Any, Callable, Optional, Tuple

from ..io.atomic import atomic_write

__all__ = ["save_figure"]

_logger = logging.getLogger(__name__)
_warned = False


def save_figure(
    path: str,
    draw: Callable[[Any], None],
    grid: Tuple[int, int] = (1, 1),
    figsize: Tuple[float, float] = (7, 5),
    dpi: int = 120,
) -> Optional[str]:
    """Draw a figure and write it as PNG to ``path`` (atomically: an earlier figure stays whole until replaced).

    Args:
        path: the PNG file.
        draw: fills the figure; called with the axes (one ``Axes`` for a 1x1 grid, else an array of them).
        grid: rows and columns of subplots.
        figsize: size in inches.
        dpi: resolution.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: figures go to files, also on a headless server
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            _logger.warning("matplotlib is not installed (pip install mindcv[plot]): no figures are written")
            _warned = True
        return None
    fig, axes = plt.subplots(*grid, figsize=figsize)
    try:
        draw(axes)
        fig.tight_layout()
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
