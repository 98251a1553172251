"""Model size and cost: trainable parameters and multiply-accumulates (MACs) of one forward pass."""

from typing import Dict

import numpy as np

import mindspore as ms
from mindspore import nn

from .context import execution_mode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Cell) -> int:
    """Number of trainable parameters (the torchvision/timm convention: BN moving statistics excluded)."""
    return int(sum(np.prod(p.shape) for p in model.trainable_params()))


def count_macs(model: nn.Cell, image_size: int = 224, in_channels: int = 3) -> int:
    """Multiply-accumulates of convolutions and dense layers for one image (the usual "FLOPs" of model tables).

    Runs one forward pass in PyNative mode with forward hooks (hooks do not fire in graph mode) and restores
    the previous execution mode afterwards.

    Args:
        model: the network.
        image_size: input height and width.
        in_channels: input channels.

    Returns:
        MACs per image (BN, activations, pooling and additions are not counted, as in torchvision's ``_ops``).
    """
    totals: Dict[str, int] = {"macs": 0}

    def conv_hook(cell: nn.Conv2d, _inputs, output) -> None:
        kh, kw = cell.kernel_size
        per_output = kh * kw * cell.in_channels // cell.group
        totals["macs"] += int(np.prod(output.shape[1:])) * per_output

    def dense_hook(cell: nn.Dense, _inputs, output) -> None:
        totals["macs"] += int(np.prod(output.shape[1:])) * cell.in_channels

    was_training = model.training
    handles = []
    try:
        for _, cell in model.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                handles.append(cell.register_forward_hook(conv_hook))
            elif isinstance(cell, nn.Dense):
                handles.append(cell.register_forward_hook(dense_hook))
        model.set_train(False)
        with execution_mode(ms.PYNATIVE_MODE):  # forward hooks run in PyNative only
            model(ms.Tensor(np.zeros((1, in_channels, image_size, image_size), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        model.set_train(was_training)
    return totals["macs"]
