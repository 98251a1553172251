"""Progress reports: a tqdm bar on a terminal, a few whole lines when stderr is a file or a pipe."""

import io

import numpy as np
import pytest
from tqdm import tqdm

from mindcv.engine import evaluate
from mindcv.io import progress as progress_module
from mindcv.io.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_lines():
    assert isinstance(progress_bar(range(3), file=_Terminal()), tqdm)
    assert isinstance(progress_bar(range(3), file=io.StringIO()), LineProgress)
    assert isinstance(progress_bar(range(3), file=_Terminal(), disable=True), LineProgress)  # nothing to draw


def test_iterating_into_a_file_writes_one_line_per_quarter_not_one_long_line():
    out = io.StringIO()
    items = list(progress_bar(range(40), desc="epoch 1/3", file=out))
    assert items == list(range(40))
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "epoch 1/3: 10/40 (25%)",
        "epoch 1/3: 20/40 (50%)",
        "epoch 1/3: 30/40 (75%)",
        "epoch 1/3: 40/40 (100%)",
    ]
    assert all(" elapsed, " in line and " it/s" in line for line in lines)


def test_update_postfix_and_close_as_the_training_loop_uses_them():
    out = io.StringIO()
    bar = progress_bar(total=8, desc="train", file=out, every_percent=50, dynamic_ncols=True, leave=False)
    for step in range(5):
        bar.set_postfix(loss=f"{1.0 / (step + 1):.2f}", lr="1e-3")
        bar.update(1)
    bar.close()  # stopped early (a diverged run): the last count is still reported, once
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("train: 4/8 (50%)") and lines[0].endswith("loss=0.25, lr=1e-3")
    assert lines[1].startswith("train: 5/8 (62%)") and lines[1].endswith("loss=0.20, lr=1e-3")


def test_without_a_total_lines_come_by_time(monkeypatch):
    clock = iter(np.arange(0.0, 1000.0, 7.0))  # every call to the clock advances 7 s
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    bar = progress_bar(total=None, desc="download", unit="B", unit_scale=True, file=out, every_seconds=20)
    for _ in range(6):
        bar.update(1_500_000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 4
    assert lines[-1].startswith("download: 9.00MB, ") and "B/s" in lines[-1]


def test_a_resumed_bar_counts_from_initial_and_disabled_writes_nothing():
    out = io.StringIO()
    untouched = progress_bar(total=10, initial=5, desc="search", file=out, every_percent=50)
    untouched.close()  # nothing happened in this run: nothing to report
    assert out.getvalue() == ""
    bar = progress_bar(total=10, initial=5, desc="search", file=out, every_percent=50)
    bar.update(1)
    assert out.getvalue() == ""  # 60%: the next line is due at 100%
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search: 10/10 (100%)")
    quiet = io.StringIO()
    for _ in progress_bar(range(100), file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError):
        LineProgress(total=3, every_percent=0)


class _Loader:
    """The two loader methods evaluate() uses, over 8 batches."""

    def get_dataset_size(self) -> int:
        return 8

    def create_tuple_iterator(self, num_epochs: int = 1):
        return iter([(np.zeros((2, 3), np.float32), np.zeros(2, np.int32))] * 8)


def test_evaluate_reports_progress_in_lines_when_stderr_is_not_a_terminal(capsys):
    def eval_step(images, labels):  # loss sum, top-1 hits, top-5 hits, samples
        return 1.0, 1.0, 2.0, 2.0

    metrics = evaluate(None, _Loader(), num_classes=10, progress=True, desc="validate", eval_step=eval_step)
    assert metrics["num_samples"] == 16 and metrics["top1"] == 50.0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines()] == [
        "validate: 2/8 (25%)",
        "validate: 4/8 (50%)",
        "validate: 6/8 (75%)",
        "validate: 8/8 (100%)",
    ]
