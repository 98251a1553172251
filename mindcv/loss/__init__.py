"""Losses for hard labels and soft (MixUp/CutMix) targets."""

from .loss_factory import LOSSES, BinaryCrossEntropySmooth, CrossEntropySmooth, create_loss

__all__ = ["create_loss", "LOSSES", "CrossEntropySmooth", "BinaryCrossEntropySmooth"]
