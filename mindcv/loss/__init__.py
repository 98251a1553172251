"""Losses for hard labels and soft (MixUp/CutMix) targets, the asymmetric losses and AugMix's JSD loss."""

from .asymmetric import AsymmetricLossMultilabel, AsymmetricLossSingleLabel
from .jsd import JSDCrossEntropy
from .loss_factory import LOSSES, BinaryCrossEntropySmooth, CrossEntropySmooth, create_loss

__all__ = [
    "create_loss",
    "LOSSES",
    "CrossEntropySmooth",
    "BinaryCrossEntropySmooth",
    "AsymmetricLossSingleLabel",
    "AsymmetricLossMultilabel",
    "JSDCrossEntropy",
]
