"""Fold BatchNorm into the preceding convolution for inference (fewer ops, same outputs)."""

from typing import List, Tuple

import numpy as np

from mindspore import Tensor, nn

from ..kernels import DepthwiseConv2d
from .layers import ConvBnAct, DepthwiseSeparableConv, InvertedResidual

__all__ = ["fuse_bn", "CONV_BN_PAIRS"]

# (conv attribute, BN attribute) pairs of each cell type, in forward order
CONV_BN_PAIRS = {
    ConvBnAct: [("conv", "bn1")],
    DepthwiseSeparableConv: [("conv_dw", "bn1"), ("conv_pw", "bn2")],
    InvertedResidual: [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
}
_MODEL_PAIRS = [("conv_stem", "bn1"), ("conv_head", "bn2")]


def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    w = conv.weight.asnumpy().astype(np.float64)
    b = conv.bias.asnumpy().astype(np.float64) if conv.bias is not None else np.zeros(w.shape[0])
    scale = bn.gamma.asnumpy() / np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps)
    if isinstance(conv, DepthwiseConv2d):  # keeps its kernels (and its switch: see mindcv.kernels)
        fused = DepthwiseConv2d(conv.in_channels, conv.kernel_size[0], stride=conv.stride[-1], has_bias=True)
        fused.direct = conv.direct
    else:
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            pad_mode=conv.pad_mode,
            padding=conv.padding,
            dilation=conv.dilation,
            group=conv.group,
            has_bias=True,
        )
    fused.weight.set_data(Tensor((w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)))
    fused.bias.set_data(Tensor(((b - bn.moving_mean.asnumpy()) * scale + bn.beta.asnumpy()).astype(np.float32)))
    return fused


def _fuse_pairs(cell: nn.Cell, pairs: List[Tuple[str, str]]) -> int:
    count = 0
    for conv_name, bn_name in pairs:
        conv, bn = getattr(cell, conv_name, None), getattr(cell, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            weight_name = conv.weight.name
            fused = _fused_conv(conv, bn)
            setattr(cell, conv_name, fused)
            # a cell attached after construction gets only its attribute name as prefix; export needs unique names
            fused.weight.name = weight_name
            fused.bias.name = weight_name[: -len("weight")] + "bias"
            setattr(cell, bn_name, nn.Identity())
            count += 1
    return count


def fuse_bn(model: nn.Cell) -> int:
    """Fold every conv + BN pair of a MnasNet **in place** (inference only: the result cannot be trained).

    Call it before the model's first forward in GRAPH mode: MindSpore reuses a cell's compiled graph, so a
    model already run in GRAPH mode would keep computing the unfused graph.

    Args:
        model: a :class:`~mindcv.models.mnasnet.MnasNet`.

    Returns:
        The number of folded pairs.
    """
    model.set_train(False)
    count = _fuse_pairs(model, _MODEL_PAIRS)
    for _, cell in list(model.cells_and_names()):
        for cls, pairs in CONV_BN_PAIRS.items():
            if type(cell) is cls:
                count += _fuse_pairs(cell, pairs)
    return count
