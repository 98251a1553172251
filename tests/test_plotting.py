"""The one figure writer (mindcv/utils/plotting.py): valid PNGs, atomic, optional matplotlib."""

import logging
import sys

import pytest
from PIL import Image

from mindcv.utils import plotting


def test_writes_a_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    path = str(tmp_path / "curve.png")
    assert plotting.save_figure(path, lambda ax: ax.plot([0, 1], [1, 0]), figsize=(3, 2), dpi=50) == path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (150, 100)
    assert plt.get_fignums() == []


@pytest.mark.slow
def test_a_failing_drawing_leaves_the_previous_figure_whole(tmp_path):
    import matplotlib.pyplot as plt

    path = str(tmp_path / "curve.png")
    plotting.save_figure(path, lambda ax: ax.plot([0, 1]), figsize=(2, 2), dpi=40)
    before = open(path, "rb").read()

    def broken(ax):
        ax.plot([0, 1])
        raise KeyError("no such column")

    with pytest.raises(KeyError, match="no such column"):
        plotting.save_figure(path, broken)
    assert open(path, "rb").read() == before and plt.get_fignums() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]  # no temporary left behind


def test_without_matplotlib_nothing_is_written_and_one_warning_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(plotting, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="mindcv.utils.plotting"):
        for name in ("a.png", "b.png"):
            assert plotting.save_figure(str(tmp_path / name), lambda ax: None) is None
    assert list(tmp_path.iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["matplotlib is not installed (pip install mindcv[plot]): no figures are written"]
