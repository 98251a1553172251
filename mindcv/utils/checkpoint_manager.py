"""Keep the best checkpoint and the latest K, written atomically, found again after a restart."""

import glob
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mindspore import nn

from ..errors import RunFailedError
from ..models.checkpoint import save_checkpoint
from .atomic import describe_write_error
from .finite import find_non_finite

__all__ = ["CheckpointManager", "CheckpointSaveError"]

_logger = logging.getLogger(__name__)


class CheckpointSaveError(RunFailedError):
    """A checkpoint could not be written (disk full, permissions) or holds non-finite weights."""


def _write(tensors: Dict[str, np.ndarray], path: str, metadata: Dict[str, Any]) -> None:
    """Write one checkpoint; refuse NaN/Inf weights and turn I/O failures into one clear line."""
    bad = find_non_finite(tensors)
    if bad:
        shown = ", ".join(f"{name} ({count} values)" for name, count in bad[:3])
        raise CheckpointSaveError(f"refusing to write '{path}': non-finite weights in {shown}")
    try:
        save_checkpoint(tensors, path, metadata)
    except (OSError, RuntimeError) as err:
        raise CheckpointSaveError(describe_write_error(path, err)) from err


class CheckpointManager:
    """Rotating checkpoints ``<prefix>-<epoch>_<step>.ckpt`` plus ``<prefix>_best.ckpt``.

    Every file is written to a temporary name and renamed, so a crash never leaves a half-written
    checkpoint and never damages the previous ones; weights holding NaN or Inf are never written,
    rotated in or promoted to best (:class:`CheckpointSaveError`). Files from an earlier run of the same prefix are
    discovered at start, so ``latest_k`` keeps rotating correctly after a resume.

    Args:
        ckpt_save_policy: ``"latest_k"`` keeps the newest ``keep_max`` files; ``"top_k"`` keeps the best
            ``keep_max`` by metric (needs validation); ``None`` keeps everything.
        keep_max: how many rotating files to keep.
        save_dir: folder (created if needed).
        prefix: file-name prefix (the model name).
    """

    POLICIES = (None, "latest_k", "top_k")

    def __init__(
        self,
        ckpt_save_policy: Optional[str] = "latest_k",
        keep_max: int = 10,
        save_dir: str = "./ckpt",
        prefix: str = "model",
    ) -> None:
        if ckpt_save_policy not in self.POLICIES:
            raise ValueError(f"ckpt_save_policy must be one of latest_k, top_k or None, got {ckpt_save_policy!r}")
        if keep_max < 1:
            raise ValueError(f"keep_checkpoint_max must be >= 1, got {keep_max}")
        self.policy, self.keep_max, self.save_dir, self.prefix = ckpt_save_policy, keep_max, save_dir, prefix
        os.makedirs(save_dir, exist_ok=True)
        self.saved: List[Tuple[str, Optional[float]]] = [(p, None) for p in self._existing()]
        self.best_metric: Optional[float] = None

    def _existing(self) -> List[str]:
        pattern = re.compile(re.escape(self.prefix) + r"-(\d+)_(\d+)\.ckpt$")
        found = []
        for path in glob.glob(os.path.join(self.save_dir, f"{self.prefix}-*_*.ckpt")):
            m = pattern.search(os.path.basename(path))
            if m:
                found.append((int(m.group(1)), int(m.group(2)), path))
        return [p for _, _, p in sorted(found)]

    def path_for(self, epoch: int, step: int) -> str:
        return os.path.join(self.save_dir, f"{self.prefix}-{epoch}_{step}.ckpt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.save_dir, f"{self.prefix}_best.ckpt")

    def save(
        self,
        tensors: Dict[str, np.ndarray],
        epoch: int,
        step: int,
        metadata: Dict[str, Any],
        metric: Optional[float] = None,
    ) -> List[str]:
        """Write the epoch checkpoint (and the best one when ``metric`` improves); returns the files written."""
        written = []
        path = self.path_for(epoch, step)
        keep = True
        if self.policy == "top_k":
            if metric is None:
                raise ValueError("ckpt_save_policy 'top_k' needs a validation metric (enable val_while_train)")
            ranked = sorted([m for _, m in self.saved if m is not None], reverse=True)
            keep = len(ranked) < self.keep_max or metric > ranked[self.keep_max - 1]
        if keep:
            _write(tensors, path, metadata)
            self.saved = [(p, m) for p, m in self.saved if p != path] + [(path, metric)]
            written.append(path)
            self._rotate()
        return written + self.save_best(tensors, metadata, metric)

    def save_best(self, tensors: Dict[str, np.ndarray], metadata: Dict[str, Any], metric: Optional[float]) -> List[str]:
        """Write ``<prefix>_best.ckpt`` if ``metric`` beats the best so far; returns the files written."""
        if metric is None or (self.best_metric is not None and metric <= self.best_metric):
            return []
        _write(tensors, self.best_path, {**metadata, "best_metric": metric})
        self.best_metric = metric
        return [self.best_path]

    def _rotate(self) -> None:
        if self.policy is None or len(self.saved) <= self.keep_max:
            return
        if self.policy == "latest_k":
            drop = self.saved[: len(self.saved) - self.keep_max]
        else:
            ordered = sorted(self.saved, key=lambda pm: -1e30 if pm[1] is None else pm[1], reverse=True)
            drop = ordered[self.keep_max :]
        for path, _ in drop:
            if os.path.exists(path):
                os.remove(path)
        self.saved = [pm for pm in self.saved if pm not in drop]

    # upstream mindcv API
    def save_ckpoint(
        self, network: nn.Cell, num_ckpt: int = 10, metric: Optional[float] = None, save_path: str = ""
    ) -> Optional[List[str]]:
        """Upstream-compatible: save ``network`` to ``save_path`` under the policy; returns the kept files."""
        self.keep_max = num_ckpt
        tensors = {p.name: p.asnumpy() for p in network.get_parameters()}
        if self.policy == "top_k" and metric is None:
            raise ValueError("top_k needs a metric")
        _write(tensors, save_path, {})
        self.saved = [(p, m) for p, m in self.saved if p != save_path] + [(save_path, metric)]
        self._rotate()
        return None if self.policy is None else [p for p, _ in self.saved]
