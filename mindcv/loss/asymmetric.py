"""Asymmetric losses (ASL), Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021.

ASL down-weights easy negatives with a larger focusing exponent for negatives (``gamma_neg``) than for
positives (``gamma_pos``); the multi-label form also shifts the negatives' probability down by ``clip``
(probability margin), so very easy negatives contribute nothing. Same classes, arguments and defaults as
upstream mindcv (``mindcv/loss/asymmetric.py``).
"""

from mindspore import Tensor, nn, ops

from ..errors import InvalidArgumentError

__all__ = ["AsymmetricLossMultilabel", "AsymmetricLossSingleLabel"]


def _check_gammas(gamma_pos: float, gamma_neg: float) -> None:
    if gamma_pos < 0 or gamma_neg < 0:
        raise InvalidArgumentError(f"gamma_pos and gamma_neg must be >= 0, got {gamma_pos}, {gamma_neg}")


class AsymmetricLossMultilabel(nn.Cell):
    """ASL for multi-label targets: ``-sum(y log(p) (1-p)^gp + (1-y) log(1-p_m) p_m^gn)``, ``p_m = max(p - clip, 0)``.

    Args:
        gamma_neg: focusing exponent of the negatives.
        gamma_pos: focusing exponent of the positives.
        clip: probability margin subtracted from the negatives' probability (0 disables it).
        eps: lower bound inside the logarithms.

    Inputs:
        logits ``(N, C)`` and labels ``(N, C)`` (0/1, any numeric dtype).

    Returns:
        The summed loss (a scalar), as upstream and the paper's reference code.
    """

    def __init__(self, gamma_neg: float = 4, gamma_pos: float = 1, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        _check_gammas(gamma_pos, gamma_neg)
        if not 0.0 <= clip < 1.0:
            raise InvalidArgumentError(f"clip must be in [0, 1), got {clip}")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps

    def construct(self, logits: Tensor, labels: Tensor) -> Tensor:
        labels = labels.astype(logits.dtype)
        xs_pos = ops.sigmoid(logits)
        xs_neg = 1.0 - xs_pos
        if self.clip > 0:
            xs_neg = ops.clamp(xs_neg + self.clip, max=1.0)
        loss = labels * ops.log(ops.clamp(xs_pos, min=self.eps)) + (1.0 - labels) * ops.log(
            ops.clamp(xs_neg, min=self.eps)
        )
        # focusing weight (1 - pt)^gamma; with gamma 0 it is 1, so it is applied unconditionally (upstream skips it
        # unless both gammas are > 0, which silently drops the paper's recommended gamma_pos=0 setting)
        pt = xs_pos * labels + xs_neg * (1.0 - labels)
        gamma = self.gamma_pos * labels + self.gamma_neg * (1.0 - labels)
        loss = loss * ops.pow(1.0 - pt, gamma)
        return -loss.sum()


class AsymmetricLossSingleLabel(nn.Cell):
    """ASL for single-label (class index) targets, with label smoothing.

    ``-sum_c t_c log(p_c) w_c`` with ``w = (1 - p)^gamma_pos`` for the true class and ``p^gamma_neg`` for the
    others, ``t`` the one-hot target smoothed to ``t (1 - s) + s / C``.

    Args:
        gamma_pos: focusing exponent of the true class.
        gamma_neg: focusing exponent of the other classes.
        eps: kept for upstream's signature; unused there too (``smoothing`` is the label smoothing).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for per-sample losses.
        smoothing: label smoothing ``s``.

    Inputs:
        logits ``(N, C)`` and int labels ``(N,)``.
    """

    def __init__(
        self,
        gamma_pos: float = 1,
        gamma_neg: float = 4,
        eps: float = 0.1,
        reduction: str = "mean",
        smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        _check_gammas(gamma_pos, gamma_neg)
        if reduction not in ("mean", "sum", "none"):
            raise InvalidArgumentError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not 0.0 <= smoothing < 1.0:
            raise InvalidArgumentError(f"smoothing must be in [0, 1), got {smoothing}")
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.eps = eps
        self.reduction = reduction
        self.smoothing = smoothing

    def construct(self, logits: Tensor, labels: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        log_preds = ops.log_softmax(logits, axis=-1)
        targets = ops.one_hot(labels.astype("int32"), num_classes, Tensor(1.0, logits.dtype), Tensor(0.0, logits.dtype))
        anti_targets = 1.0 - targets
        probs = ops.exp(log_preds)
        # 1 - p for the true class, p for the others
        base = 1.0 - probs * targets - (1.0 - probs) * anti_targets
        weight = ops.pow(base, self.gamma_pos * targets + self.gamma_neg * anti_targets)
        targets = targets * (1.0 - self.smoothing) + self.smoothing / num_classes
        loss = -(targets * log_preds * weight).sum(axis=-1)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss
