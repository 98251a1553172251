"""Whether BatchNorm's moving statistics have left their starting values behind (a run-time check of training)."""

from typing import List, Optional, Tuple

import numpy as np

from mindspore import nn

__all__ = ["BatchNormSettling"]


class BatchNormSettling:
    """Tells when evaluation would still normalize with BatchNorm statistics from the start of training.

    Evaluation uses the moving averages. With MindSpore momentum ``m``, after ``n`` training batches a share
    ``m ** n`` of each moving variance is still its starting value (1.0 for a new model). Where a layer's true
    variance is small (depthwise outputs train to ~1e-3), even 2% of 1.0 outweighs it, every such layer shrinks
    its output in evaluation, and the shrinking compounds: a run can learn (its training loss falls) and still
    validate at chance. That happens with the ImageNet recipe's ``bn_momentum`` 0.99 on a dataset of a few dozen
    batches an epoch. Checking costs one copy of the moving variances.

    Args:
        network: the model being trained, before its first training batch (or at resume).
    """

    def __init__(self, network: nn.Cell) -> None:
        norms = [(name, cell) for name, cell in network.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
        # name the layers as the model does, without the wrappers' prefix ("step.network.network.blocks...")
        parts = [name.split(".") for name, _ in norms]
        common = 0
        while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        self._layers = [
            (_layer_name(full, ".".join(p[common:]), cell), cell, cell.moving_variance.asnumpy().astype(np.float64))
            for p, (full, cell) in zip(parts, norms)
        ]

    def stale_layers(self, batches: int, tolerance: float = 2.0) -> List[Tuple[str, float, int]]:
        """Layers whose moving variance is off from what training has measured, because it is still the start.

        After ``n`` batches at momentum ``m`` the moving variance is ``m^n * start + (1 - m^n) * measured``, where
        ``measured`` is the weighted mean of the batch variances seen; both are known, so ``measured`` is too. A
        layer is reported when, in the median over its channels, the moving variance is more than ``tolerance``
        times above or below ``measured``. Fine-tuning from statistics that already fit the data is not reported.

        Args:
            batches: training batches run since construction.
            tolerance: the factor between moving and measured variance above which a layer is reported.

        Returns:
            ``(layer name, factor, batches needed)`` triples, the most distorted first: moving over measured
            variance (median over channels), and the batches after which the factor would be within
            ``tolerance`` at this momentum if the batch variances stay as they have been.
        """
        if batches < 1:
            return []
        stale = []
        for name, cell, start in self._layers:
            momentum = 1.0 - float(cell.momentum)  # nn.BatchNorm2d stores 1 - momentum (the new batch's weight)
            if not 0.0 < momentum < 1.0:
                continue  # 0: the last batch's statistics; 1: statistics that never move, by the user's choice
            keep = momentum**batches
            current = cell.moving_variance.asnumpy().astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                measured = (current - keep * start) / (1.0 - keep)
                factor = np.nan_to_num(current / measured, nan=np.inf, posinf=np.inf, neginf=np.inf)
                factor[measured <= 0] = np.inf  # moving values the batches cannot explain: as wrong as it gets
                ratio = float(np.median(factor))
                start_over_measured = float(np.median(np.nan_to_num(start / measured, nan=np.inf)))
            if ratio > tolerance or ratio < 1.0 / tolerance:
                # factor(n) = 1 + m^n * (start / measured - 1): solve for the n where it reaches the tolerance
                gap = start_over_measured - 1.0
                bound = (tolerance - 1.0) / gap if gap > 0 else (1.0 - 1.0 / tolerance) / -gap if gap < 0 else 1.0
                needed = int(np.ceil(np.log(bound) / np.log(momentum))) if 0.0 < bound < 1.0 else batches + 1
                stale.append((name, ratio, max(needed, batches + 1)))
        return sorted(stale, key=lambda item: -abs(np.log(item[1])) if np.isfinite(item[1]) else -np.inf)

    def warning(self, batches: int) -> Optional[str]:
        """A message naming the most distorted layer when some are stale (see :meth:`stale_layers`), else None."""
        stale = self.stale_layers(batches)
        if not stale:
            return None
        name, factor, _ = stale[0]
        needed = max(n for _, _, n in stale)
        momentum = 1.0 - float(dict((n, c) for n, c, _ in self._layers)[name].momentum)
        return (
            f"BatchNorm statistics have not settled: after {batches} training batches, {len(stale)} of "
            f"{len(self._layers)} BatchNorm layers still hold mostly their starting moving variance, more than 2x "
            f"off the batch variances measured since ({name}: {factor:.3g}x, bn_momentum {momentum:g}). Evaluation "
            "normalizes with these values, so validation can sit near chance while the training loss falls. At "
            f"this momentum they settle after about {needed} batches: train longer or lower bn_momentum."
        )


def _layer_name(cell_path: str, short_path: str, cell: nn.BatchNorm2d) -> str:
    """The name users see in the model's parameters: a model that renames them (MnasNet-B1 carries upstream's
    ``features.N`` names over its ``blocks`` cells) is named by its parameters, any other by its cell path."""
    param_prefix = cell.moving_variance.name.rsplit(".", 1)[0] if "." in cell.moving_variance.name else ""
    if param_prefix and not ("." + cell_path).endswith("." + param_prefix):
        return param_prefix
    return short_path
