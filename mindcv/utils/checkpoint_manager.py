"""Keep the best checkpoint and the latest K, written atomically, found again after a restart."""

import glob
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from mindspore import nn

from ..errors import InvalidArgumentError, RunFailedError
from ..io.atomic import AtomicWriteError, describe_write_error
from ..io.checkpoint import cell_metadata, model_state_dict, save_checkpoint
from ..io.finite import find_non_finite

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
    except AtomicWriteError as err:  # already the one line naming the file and the free space
        raise CheckpointSaveError(str(err)) from err
    except (OSError, RuntimeError) as err:
        raise CheckpointSaveError(describe_write_error(path, err)) from err


class CheckpointManager:
    """Rotating checkpoints ``<prefix>-<epoch>_<step>.ckpt`` plus ``<prefix>_best.ckpt``.

    Every file is written to a temporary name and renamed, so a crash never leaves a half-written
    checkpoint and never damages the previous ones; weights holding NaN or Inf are never written,
    rotated in or promoted to best (:class:`CheckpointSaveError`). Files from an earlier run of the same prefix are
    discovered at start, so ``latest_k`` keeps rotating correctly after a resume. :meth:`save_ckpoint` is
    upstream mindcv's API (``CheckpointManager(ckpt_save_policy).save_ckpoint(network, num_ckpt, metric, path)``).

    Args:
        ckpt_save_policy: ``"latest_k"`` keeps the newest ``keep_max`` files; ``"top_k"`` keeps the best
            ``keep_max`` by metric (needs validation); ``None`` (upstream's default) keeps everything.
        keep_max: how many rotating files to keep.
        save_dir: folder (created when the first file is written).
        prefix: file-name prefix (the model name).
    """

    POLICIES = (None, "latest_k", "top_k")

    def __init__(
        self,
        ckpt_save_policy: Optional[str] = None,
        keep_max: int = 10,
        save_dir: str = "./ckpt",
        prefix: str = "model",
    ) -> None:
        if ckpt_save_policy not in self.POLICIES:
            raise InvalidArgumentError(
                f"ckpt_save_policy must be one of latest_k, top_k or None, got {ckpt_save_policy!r}"
            )
        if keep_max < 1:
            raise InvalidArgumentError(f"keep_checkpoint_max must be >= 1, got {keep_max}")
        self.policy, self.keep_max, self.save_dir, self.prefix = ckpt_save_policy, keep_max, save_dir, prefix
        self.saved: List[Tuple[str, Optional[float]]] = [(p, None) for p in self._existing()]
        self.best_metric: Optional[float] = None
        self._upstream_kept: List[Tuple[str, Optional[float]]] = []  # the files of save_ckpoint

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
                raise InvalidArgumentError(
                    "ckpt_save_policy 'top_k' needs a validation metric (enable val_while_train)"
                )
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

    # -- upstream mindcv API -------------------------------------------------------------------------------------
    def save_ckpoint(
        self, network: nn.Cell, num_ckpt: int = 10, metric: Any = None, save_path: str = ""
    ) -> Optional[Union[List[str], List[Tuple[str, float]]]]:
        """Save ``network`` to ``save_path`` under the policy, with upstream mindcv's semantics.

        ``None`` writes every file; ``"top_k"`` writes the file only while fewer than ``num_ckpt`` are kept or
        ``metric`` beats the worst kept one (which is then deleted); ``"latest_k"`` writes, then deletes the oldest
        files beyond ``num_ckpt``. Only files written by this method are managed (as upstream, files of an earlier
        run are not discovered; :meth:`save` keeps its own list). Unlike upstream, the write is atomic, a file is
        deleted only after the new one is written, and weights holding NaN or Inf are refused.

        Args:
            network: the model; all its parameters (BN statistics included) are written.
            num_ckpt: how many files ``top_k`` / ``latest_k`` keep (>= 1).
            metric: the checkpoint's score, higher is better (a number or a scalar Tensor); required by ``top_k``,
                ignored otherwise.
            save_path: the file to write (``.ckpt`` or ``.safetensors``).

        Returns:
            ``top_k``: the kept ``(path, metric)`` pairs, best first; ``latest_k``: the kept paths, oldest first;
            policy ``None``: ``None``.

        Raises:
            ValueError: ``top_k`` without a metric, or ``num_ckpt`` < 1.
            CheckpointSaveError: the file could not be written, or the weights are not finite.
        """
        if isinstance(num_ckpt, bool) or not isinstance(num_ckpt, int) or num_ckpt < 1:
            raise InvalidArgumentError(f"num_ckpt must be an integer >= 1, got {num_ckpt!r}")
        if self.policy == "top_k":
            if metric is None:
                raise InvalidArgumentError("ckpt_save_policy 'top_k' needs a metric, got None")
            score = float(np.asarray(metric.asnumpy() if hasattr(metric, "asnumpy") else metric))
            kept = self._upstream_kept
            if len(kept) >= num_ckpt and not score > kept[-1][1]:
                return list(kept)
            _write(model_state_dict(network), save_path, cell_metadata(network))
            for path, _ in kept[num_ckpt - 1 :]:
                if path != save_path and os.path.exists(path):
                    os.remove(path)
            kept = [(p, m) for p, m in kept[: num_ckpt - 1] if p != save_path] + [(save_path, score)]
            self._upstream_kept = sorted(kept, key=lambda pm: pm[1], reverse=True)
            _logger.info("Top-k checkpoints:\n%s", "\n".join(f"{p}\t{m}" for p, m in self._upstream_kept))
            return list(self._upstream_kept)
        if self.policy == "latest_k":
            # first: a failed save deletes nothing
            _write(model_state_dict(network), save_path, cell_metadata(network))
            kept = [pm for pm in self._upstream_kept if pm[0] != save_path]
            oldest = max(0, len(kept) - num_ckpt + 1)
            for path, _ in kept[:oldest]:
                if os.path.exists(path):
                    os.remove(path)
            self._upstream_kept = kept[oldest:] + [(save_path, None)]
            return [p for p, _ in self._upstream_kept]
        _write(model_state_dict(network), save_path, cell_metadata(network))
        return None
