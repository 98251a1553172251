"""Building blocks of the MnasNet family, with injected norm / activation / padding.

Blocks never hard-code BatchNorm constants or padding: the model passes a ``norm_layer`` factory and a
``pad_type`` so that TF-style ('same') and PyTorch-style ('symmetric') graphs, and the MindSpore vs
PyTorch BN-momentum conventions, are one model-level setting instead of forks of the blocks.
"""

from functools import partial
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from mindspore import Tensor, nn, ops
from mindspore.common import initializer as init

from ..errors import InvalidArgumentError
from ..kernels.depthwise import DepthwiseConv2d, direct_depthwise_supported
from .arch import se_channels

__all__ = [
    "PAD_TYPES",
    "create_conv2d",
    "create_classifier",
    "bn_momentum_from_torch",
    "make_norm_layer",
    "Dropout",
    "DropPath",
    "NoiseLayout",
    "noise_width",
    "takes_noise",
    "SqueezeExcite",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "BLOCK_CLASSES",
]

PAD_TYPES = ("symmetric", "same")


def create_classifier(num_features: int, num_classes: int) -> nn.Dense:
    """The final linear layer, freshly initialised: uniform in +-sqrt(3 / num_features), bias 0.

    torchvision's MnasNet draws it He-uniform over fan_out, i.e. the class count: right for ImageNet's 1,000
    classes (+-0.055), but with 10 classes the bound is 10x larger and a new network starts with logits of sd ~5
    and a loss of ~10 instead of ln 10 = 2.3 (measured), which makes short trainings slow and seed-dependent.
    Over fan_in the bound is the same whatever the class count (+-0.048 for 1,280 features: ImageNet's scale).

    Args:
        num_features: inputs.
        num_classes: outputs.

    Returns:
        The ``nn.Dense`` layer.
    """
    dense = nn.Dense(num_features, num_classes)
    dense.weight.set_data(init.initializer(init.HeUniform(mode="fan_in", nonlinearity="sigmoid"), dense.weight.shape))
    dense.bias.set_data(init.initializer("zeros", dense.bias.shape))
    return dense


def create_conv2d(
    in_chs: int,
    out_chs: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    pad_type="symmetric",
) -> nn.Conv2d:
    """A 2-D convolution with explicit padding semantics.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size.
        stride: stride.
        groups: convolution groups (``in_chs`` for depthwise).
        bias: add a bias.
        pad_type: ``"symmetric"`` pads ``k//2`` on every side (PyTorch/torchvision/timm, needed to load
            their weights exactly); ``"same"`` is TF's asymmetric padding (MindSpore's default).

    Returns:
        The ``nn.Conv2d`` cell: a :class:`~mindcv.kernels.DepthwiseConv2d` (an ``nn.Conv2d`` with the same
        parameters and results, faster on the CPU) for symmetric-padded depthwise convolutions.
    """
    if pad_type not in PAD_TYPES:
        raise InvalidArgumentError(f"pad_type must be one of {PAD_TYPES}, got {pad_type!r}")
    if pad_type == "symmetric" and direct_depthwise_supported(in_chs, out_chs, kernel_size, stride, groups):
        return DepthwiseConv2d(in_chs, kernel_size, stride=stride, has_bias=bias)
    if pad_type == "same":
        pad = dict(pad_mode="same")
    elif kernel_size == 1:
        pad = dict(pad_mode="valid")
    else:
        pad = dict(pad_mode="pad", padding=kernel_size // 2)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, group=groups, has_bias=bias, **pad)


def bn_momentum_from_torch(torch_momentum: float) -> float:
    """Convert a PyTorch BatchNorm momentum into MindSpore's convention.

    PyTorch updates ``running = (1 - m) * running + m * batch``; MindSpore updates
    ``moving = m * moving + (1 - m) * batch``. torchvision's MnasNet uses PyTorch 0.0003, i.e. 0.9997 here.

    Args:
        torch_momentum: the PyTorch value.

    Returns:
        The MindSpore value.
    """
    return 1.0 - torch_momentum


def make_norm_layer(momentum: float = 0.99, eps: float = 1e-3) -> Callable[[int], nn.Cell]:
    """A BatchNorm2d factory in MindSpore's momentum convention (see :func:`bn_momentum_from_torch`)."""
    if not 0.0 <= momentum <= 1.0:  # also false for NaN
        raise InvalidArgumentError(f"bn_momentum must be in [0, 1] (MindSpore convention), got {momentum}")
    # the model computes in float32: 1e-320 is positive here and 0 there; NaN and inf fail the comparison
    if isinstance(eps, bool) or not 0.0 < float(np.float32(eps)) < 1.0:
        raise InvalidArgumentError(f"bn_eps must be a number in (0, 1) that is positive in float32, got {eps}")
    return partial(nn.BatchNorm2d, momentum=momentum, eps=eps)


class Dropout(nn.Cell):
    """Dropout whose randomness can be supplied by the caller.

    With ``noise`` (an ``(N, width)`` matrix of uniform [0, 1) values, one row per sample) the layer reads its
    own columns, ``noise_start`` onwards (assigned by :class:`NoiseLayout`), and keeps the values where
    ``noise >= p``: the training loop draws the noise from a generator seeded by (seed, micro-batch), which
    makes dropout identical in GRAPH and PYNATIVE mode, across any number of ranks, and exactly reproducible
    after a resume (MindSpore's dropout kernels keep a hidden RNG state that cannot be saved). Without noise
    it is ``nn.Dropout``.

    Args:
        p: drop probability.
        per_sample: drop whole samples (stochastic depth, mask ``(N, 1, 1, 1)``, one column) instead of elements.
        features: elements per sample of the input (its noise columns); required for element-wise dropout
            with ``p > 0`` inside a model with a :class:`NoiseLayout`.
    """

    def __init__(self, p: float = 0.0, per_sample: bool = False, features: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InvalidArgumentError(f"drop probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.per_sample = per_sample
        self.noise_columns = 1 if per_sample else int(features)
        self.noise_start = 0
        self.dropout = nn.Dropout(p=self.p)

    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if noise is None:
            if self.per_sample:
                return x * self.dropout(ops.ones((x.shape[0], 1, 1, 1), x.dtype))
            return self.dropout(x)
        mine = noise[:, self.noise_start : self.noise_start + self.noise_columns]
        keep = (mine >= self.p).astype(x.dtype) / (1.0 - self.p)
        if self.per_sample:
            keep = keep.reshape((x.shape[0], 1, 1, 1))
        return x * keep


class DropPath(Dropout):
    """Stochastic depth: drops the residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__(drop_prob, per_sample=True)

    @property
    def drop_prob(self) -> float:
        return self.p


class NoiseLayout:
    """Which columns of the per-sample noise matrix each stochastic layer of a model reads.

    Built once, after the model's cells exist: every :class:`Dropout` (drop-path included) with ``p > 0``
    gets its own columns, in the order of ``cells_and_names``. A model declares ``self.noise_layout =
    NoiseLayout(self)`` at the end of its ``__init__`` and hands the whole noise matrix down its forward
    path; no layer or block counts columns, so a new stochastic layer needs no bookkeeping.

    Args:
        model: the built model.

    Attributes:
        width: columns of the noise matrix the model consumes (0: it has no active stochastic layer).
        owners: cell name -> (first column, number of columns).
    """

    def __init__(self, model: nn.Cell) -> None:
        self.width = 0
        self.owners: Dict[str, Tuple[int, int]] = {}
        for name, cell in model.cells_and_names():
            if not isinstance(cell, Dropout) or cell.p == 0.0:
                continue
            if cell.noise_columns < 1:
                raise InvalidArgumentError(
                    f"dropout '{name}' of {type(model).__name__} has no noise columns: "
                    "give element-wise Dropout its `features` (elements per sample)"
                )
            cell.noise_start = self.width
            self.owners[name] = (self.width, cell.noise_columns)
            self.width += cell.noise_columns


def noise_width(model: nn.Cell) -> int:
    """Columns of dropout noise ``model`` consumes (0 for a model without a :class:`NoiseLayout`)."""
    layout = getattr(model, "noise_layout", None)
    return layout.width if isinstance(layout, NoiseLayout) else 0


def takes_noise(model: nn.Cell) -> bool:
    """Whether ``model(images, noise)`` is its training call (it declares a :class:`NoiseLayout`)."""
    return isinstance(getattr(model, "noise_layout", None), NoiseLayout)


class SqueezeExcite(nn.Cell):
    """Squeeze-and-excitation: GAP -> 1x1 (bias) -> act -> 1x1 (bias) -> sigmoid -> scale."""

    def __init__(self, chs: int, rd_chs: int, act_layer: Callable[[], nn.Cell] = nn.ReLU) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, has_bias=True, pad_mode="valid")
        self.act = act_layer()
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, has_bias=True, pad_mode="valid")
        self.gate = nn.Sigmoid()

    def construct(self, x: Tensor) -> Tensor:
        s = x.mean(axis=(2, 3), keep_dims=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


class _Block(nn.Cell):
    """What the three block kinds share: their arguments, the residual, squeeze-excitation and drop-path.

    A block kind only builds its layers (``_build``) and chains them (``construct``).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise (or regular) kernel size.
        stride: stride of the spatial convolution.
        exp_ratio: expansion ratio of the inverted residual (``None``: 6); the other kinds have none.
        se_ratio: squeeze-excitation ratio of the input channels (0: none).
        noskip: no residual even where the shapes allow one.
        drop_path_rate: stochastic-depth probability of the residual branch.
        norm_layer: BatchNorm factory (channels -> cell).
        act_layer: activation factory.
        pad_type: ``"symmetric"`` (PyTorch) or ``"same"`` (TF).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        *,
        exp_ratio: Optional[float] = None,
        se_ratio: float = 0.0,
        noskip: bool = False,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Cell] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Cell] = nn.ReLU,
        pad_type: str = "symmetric",
    ) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.has_skip = stride == 1 and in_chs == out_chs and not noskip
        self.drop_path_prob = drop_path_rate if self.has_skip else 0.0
        self.drop_path = DropPath(self.drop_path_prob)
        self._build(in_chs, out_chs, kernel_size, stride, exp_ratio, se_ratio, norm_layer, act_layer, pad_type)

    def _build(self, in_chs, out_chs, kernel_size, stride, exp_ratio, se_ratio, norm_layer, act_layer, pad_type):
        raise NotImplementedError  # each block kind builds its own layers

    @staticmethod
    def _make_se(chs: int, in_chs: int, se_ratio: float, act_layer) -> nn.Cell:
        if se_ratio <= 0:
            return nn.Identity()
        return SqueezeExcite(chs, se_channels(in_chs, se_ratio), act_layer)

    def _residual(self, x: Tensor, shortcut: Tensor, noise: Tensor = None) -> Tensor:
        if self.has_skip:
            return self.drop_path(x, noise) + shortcut
        return x


class ConvBnAct(_Block):
    """Regular convolution block (``cn``): conv kxk -> BN -> act [-> SE], residual when shapes match."""

    def _build(self, in_chs, out_chs, kernel_size, stride, exp_ratio, se_ratio, norm_layer, act_layer, pad_type):
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride, pad_type=pad_type)
        self.bn1 = norm_layer(out_chs)
        self.act1 = act_layer()
        self.se = self._make_se(out_chs, in_chs, se_ratio, act_layer)

    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        out = self.se(self.act1(self.bn1(self.conv(x))))
        return self._residual(out, x, noise)


class DepthwiseSeparableConv(_Block):
    """Depthwise-separable block (``ds``): dw kxk -> BN -> act [-> SE] -> pw 1x1 -> BN (linear)."""

    def _build(self, in_chs, out_chs, kernel_size, stride, exp_ratio, se_ratio, norm_layer, act_layer, pad_type):
        self.conv_dw = create_conv2d(in_chs, in_chs, kernel_size, stride, groups=in_chs, pad_type=pad_type)
        self.bn1 = norm_layer(in_chs)
        self.act1 = act_layer()
        self.se = self._make_se(in_chs, in_chs, se_ratio, act_layer)
        self.conv_pw = create_conv2d(in_chs, out_chs, 1, pad_type=pad_type)
        self.bn2 = norm_layer(out_chs)

    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        out = self.se(self.act1(self.bn1(self.conv_dw(x))))
        out = self.bn2(self.conv_pw(out))
        return self._residual(out, x, noise)


class InvertedResidual(_Block):
    """Inverted residual / MBConv (``ir``): pw -> BN -> act -> dw -> BN -> act [-> SE] -> pw-linear -> BN."""

    def _build(self, in_chs, out_chs, kernel_size, stride, exp_ratio, se_ratio, norm_layer, act_layer, pad_type):
        # torchvision uses in*e without rounding; for integer ratios on multiples of 8 this equals timm.
        mid_chs = int(round(in_chs * (6.0 if exp_ratio is None else exp_ratio)))
        self.mid_chs = mid_chs
        self.conv_pw = create_conv2d(in_chs, mid_chs, 1, pad_type=pad_type)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = act_layer()
        self.conv_dw = create_conv2d(mid_chs, mid_chs, kernel_size, stride, groups=mid_chs, pad_type=pad_type)
        self.bn2 = norm_layer(mid_chs)
        self.act2 = act_layer()
        self.se = self._make_se(mid_chs, in_chs, se_ratio, act_layer)
        self.conv_pwl = create_conv2d(mid_chs, out_chs, 1, pad_type=pad_type)
        self.bn3 = norm_layer(out_chs)

    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.se(self.act2(self.bn2(self.conv_dw(out))))
        out = self.bn3(self.conv_pwl(out))
        return self._residual(out, x, noise)


BLOCK_CLASSES = {"cn": ConvBnAct, "ds": DepthwiseSeparableConv, "ir": InvertedResidual}
