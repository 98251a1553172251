"""One row per epoch: a CSV and a JSON-lines file, and a PNG of the curves when matplotlib is installed."""

import csv
import json
import logging
import os
from typing import Any, Dict, List, Optional

from ..io.atomic import atomic_write
from .plotting import save_figure

__all__ = ["MetricsLog"]

_logger = logging.getLogger(__name__)


class MetricsLog:
    """Append epoch metrics to ``metrics.csv`` / ``metrics.jsonl`` in ``folder`` and plot them.

    Args:
        folder: output folder.
        resume_epoch: on resume, rows of epochs after it (from the interrupted run) are dropped so the
            files never hold the same epoch twice.
    """

    def __init__(self, folder: str, resume_epoch: Optional[int] = None) -> None:
        os.makedirs(folder, exist_ok=True)
        self.csv_path = os.path.join(folder, "metrics.csv")
        self.jsonl_path = os.path.join(folder, "metrics.jsonl")
        self.png_path = os.path.join(folder, "metrics.png")
        self.rows: List[Dict[str, Any]] = []
        if resume_epoch is not None and os.path.exists(self.jsonl_path):
            with open(self.jsonl_path) as f:
                self.rows = [r for r in (json.loads(line) for line in f if line.strip()) if r["epoch"] <= resume_epoch]
        self._rewrite()

    def _rewrite(self) -> None:
        # atomic: a kill mid-write must not truncate the rows of earlier epochs
        with atomic_write(self.jsonl_path) as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        keys = self._keys()
        with atomic_write(self.csv_path) as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: row.get(k, "") for k in keys})

    def _keys(self) -> List[str]:
        keys: List[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        return keys or ["epoch"]

    def append(self, row: Dict[str, Any]) -> None:
        """Add one epoch's metrics and refresh the files and the plot."""
        self.rows.append(dict(row))
        self._rewrite()
        self.plot()

    def plot(self) -> Optional[str]:
        """Loss, accuracy and learning-rate curves as PNG (``None`` without matplotlib)."""
        return save_figure(self.png_path, self._draw, grid=(1, 3), figsize=(15, 4), dpi=90)

    def _draw(self, axes) -> None:
        epochs = [r["epoch"] for r in self.rows]
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            pts = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
            if pts:
                axes[0].plot(*zip(*pts), marker="o", label=label)
        axes[0].set_title("loss")
        for key, label in (("val_top1", "top-1"), ("val_top5", "top-5"), ("train_top1", "train top-1")):
            pts = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
            if pts:
                axes[1].plot(*zip(*pts), marker="o", label=label)
        axes[1].set_title("validation accuracy (%)")
        if any("lr" in r for r in self.rows):
            axes[2].plot(epochs, [r.get("lr") for r in self.rows], marker="o")
        axes[2].set_title("learning rate (end of epoch)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
