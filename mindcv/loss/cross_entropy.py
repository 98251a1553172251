"""Cross-entropy (hard or soft targets) and binary cross-entropy with label smoothing and auxiliary logits."""

from typing import Optional, Tuple, Union

from mindspore import Tensor, nn, ops

__all__ = ["CrossEntropySmooth", "BinaryCrossEntropySmooth"]


class _ClassificationLoss(nn.Cell):
    """Shared handling of auxiliary logits: a tuple ``(main, aux...)`` adds ``aux_factor`` x each aux loss."""

    def __init__(
        self, smoothing: float = 0.0, aux_factor: float = 0.0, reduction: str = "mean", weight: Optional[Tensor] = None
    ) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.aux_factor = aux_factor
        self.reduction = reduction
        self.weight = weight

    def _one(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def construct(self, logits: Union[Tensor, Tuple[Tensor, ...]], labels: Tensor) -> Tensor:
        if isinstance(logits, (tuple, list)):
            loss = self._one(logits[0], labels)
            for aux in logits[1:]:
                loss = loss + self.aux_factor * self._one(aux, labels)
            return loss
        return self._one(logits, labels)


class CrossEntropySmooth(_ClassificationLoss):
    """Cross-entropy with label smoothing for int labels ``(N,)`` or soft targets ``(N, C)``.

    Int labels of -1 (unreadable evaluation images) are ignored. A tuple of logits ``(main, aux...)``
    adds ``aux_factor`` times the auxiliary losses.

    Args:
        smoothing: label smoothing (mass spread uniformly over the classes).
        aux_factor: weight of auxiliary logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: per-class weights ``(C,)``.
    """

    def _one(self, logits: Tensor, labels: Tensor) -> Tensor:
        if labels.ndim == logits.ndim:  # soft targets (already smoothed by the loader, if at all)
            loss = -(labels * ops.log_softmax(logits, axis=-1)).sum(axis=-1)
            if self.reduction == "mean":
                return loss.mean()
            return loss.sum() if self.reduction == "sum" else loss
        return ops.cross_entropy(
            logits,
            labels,
            weight=self.weight,
            ignore_index=-1,
            reduction=self.reduction,
            label_smoothing=self.smoothing,
        )


class BinaryCrossEntropySmooth(_ClassificationLoss):
    """Binary cross-entropy over one-hot (or soft) targets; int labels are one-hot encoded first.

    Args:
        smoothing: targets become ``y * (1 - s) + s / C``.
        aux_factor: weight of auxiliary logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: per-class weights ``(C,)``.
        pos_weight: weight of positive examples per class.
    """

    def __init__(
        self,
        smoothing: float = 0.0,
        aux_factor: float = 0.0,
        reduction: str = "mean",
        weight: Optional[Tensor] = None,
        pos_weight: Optional[Tensor] = None,
    ) -> None:
        super().__init__(smoothing, aux_factor, reduction, weight)
        self.pos_weight = pos_weight

    def _one(self, logits: Tensor, labels: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        if labels.ndim != logits.ndim:
            labels = ops.one_hot(
                labels.astype("int32"), num_classes, Tensor(1.0, logits.dtype), Tensor(0.0, logits.dtype)
            )
        labels = labels.astype(logits.dtype)
        if self.smoothing > 0:
            labels = labels * (1.0 - self.smoothing) + self.smoothing / num_classes
        return ops.binary_cross_entropy_with_logits(
            logits, labels, weight=self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
