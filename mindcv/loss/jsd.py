"""Jensen-Shannon divergence + cross-entropy, Hendrycks et al., "AugMix" (ICLR 2020, arXiv:1912.02781)."""

from typing import Optional

from mindspore import Tensor, ops

from ..errors import InvalidArgumentError
from .cross_entropy import CrossEntropySmooth

__all__ = ["JSDCrossEntropy"]


class JSDCrossEntropy(CrossEntropySmooth):
    """AugMix's loss for a batch made of ``num_splits`` views of the same images (clean, aug1, aug2, ...).

    In training mode (``set_train(True)``, as a training step sets it) the logits ``(num_splits * N, C)`` are
    split into the views; the loss is the cross-entropy of the first (clean) view against ``labels[:N]`` plus
    ``alpha`` times the Jensen-Shannon divergence of the views' softmax distributions,
    ``JS = mean_i KL(p_i || M)`` with ``M = mean_i p_i`` (clipped to [1e-7, 1]) and the KL averaged over the
    batch. In evaluation mode it is the plain (label-smoothed) cross-entropy, as upstream.

    Args:
        num_splits: number of views in the batch (upstream's loader makes 3).
        alpha: weight of the JS term.
        smoothing: label smoothing of the cross-entropy.
        weight: per-class weights of the cross-entropy.
        reduction: reduction of the cross-entropy.
        aux_factor: weight of auxiliary logits when the model returns a tuple.
    """

    def __init__(
        self,
        num_splits: int = 3,
        alpha: float = 12,
        smoothing: float = 0.1,
        weight: Optional[Tensor] = None,
        reduction: str = "mean",
        aux_factor: float = 0.0,
    ) -> None:
        super().__init__(smoothing, aux_factor, reduction, weight)
        if num_splits < 1:
            raise InvalidArgumentError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits
        self.alpha = alpha

    def _one(self, logits: Tensor, labels: Tensor) -> Tensor:
        if not self.training:
            return super()._one(logits, labels)
        split_size = logits.shape[0] // self.num_splits
        if split_size * self.num_splits != logits.shape[0]:
            raise ValueError(
                f"JSDCrossEntropy: a batch of {logits.shape[0]} logits cannot be split into {self.num_splits} "
                "equal views (clean + augmented copies of the same images)"
            )
        loss = super()._one(logits[:split_size], labels[:split_size])
        probs = [ops.softmax(logits[i * split_size : (i + 1) * split_size], axis=1) for i in range(self.num_splits)]
        log_mixture = ops.log(ops.clamp(ops.stack(probs).mean(axis=0), 1e-7, 1.0))
        for p in probs:
            # KL(p || M), averaged over the batch ("batchmean")
            kl = (p * (ops.log(ops.clamp(p, min=1e-30)) - log_mixture)).sum() / split_size
            loss = loss + self.alpha * kl / self.num_splits
        return loss
