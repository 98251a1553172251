"""``create_loss``: the classification losses by name, with upstream mindcv's names and arguments."""

from typing import Optional

from mindspore import Tensor, nn

from ..errors import InvalidArgumentError
from .asymmetric import AsymmetricLossMultilabel, AsymmetricLossSingleLabel
from .cross_entropy import BinaryCrossEntropySmooth, CrossEntropySmooth
from .jsd import JSDCrossEntropy

__all__ = ["create_loss", "LOSSES", "CrossEntropySmooth", "BinaryCrossEntropySmooth"]

LOSSES = ("ce", "bce", "asl_single_label", "asl_multi_label", "jsd")


def create_loss(
    name: str = "CE",
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    aux_factor: float = 0.0,
) -> nn.Cell:
    """Create a classification loss.

    Args:
        name: case-insensitive: ``"CE"`` (cross-entropy, hard or soft targets), ``"BCE"`` (binary cross-entropy),
            ``"asl_single_label"`` (:class:`AsymmetricLossSingleLabel` with ``label_smoothing``),
            ``"asl_multi_label"`` (:class:`AsymmetricLossMultilabel`, summed; the other arguments do not apply to
            it, as upstream), ``"jsd"`` (:class:`JSDCrossEntropy`, AugMix's 3-split loss).
        weight: per-class weights.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: smoothing of hard labels (soft targets from MixUp/CutMix carry their own).
        aux_factor: weight of auxiliary logits when the model returns a tuple.

    Returns:
        The loss cell ``loss(logits, labels)``.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or an invalid argument.
    """
    key = name.lower()
    if key not in LOSSES:
        valid = ", ".join(n.upper() if len(n) <= 3 else n for n in LOSSES)  # as the CLI spells them
        raise InvalidArgumentError(f"unknown loss '{name}'; valid: {valid} (case-insensitive)")
    if reduction not in ("mean", "sum", "none"):
        raise InvalidArgumentError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise InvalidArgumentError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if key == "ce":
        return CrossEntropySmooth(label_smoothing, aux_factor, reduction, weight)
    if key == "bce":
        return BinaryCrossEntropySmooth(label_smoothing, aux_factor, reduction, weight)
    if key == "asl_single_label":
        return AsymmetricLossSingleLabel(reduction=reduction, smoothing=label_smoothing)
    if key == "asl_multi_label":
        return AsymmetricLossMultilabel()
    return JSDCrossEntropy(smoothing=label_smoothing, weight=weight, reduction=reduction, aux_factor=aux_factor)
