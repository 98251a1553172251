"""A weight-sharing supernet over the MNAS search space (the TuNAS / once-for-all line of work).

Every candidate of a :class:`~mindcv.nas.search_space.SearchSpace` is a path through one network whose
weights it shares with all others:

* **kernel**: one 5x5 kernel per convolution; a 3x3 choice uses its centre (the border is multiplied by 0,
  which with padding 2 is exactly a 3x3 convolution with padding 1).
* **width, expansion, SE size**: the first channels of the widest tensors; the rest are multiplied by 0 after
  every BatchNorm, so they never reach the next layer (BatchNorm works per channel, so the kept channels are
  normalised exactly as in the stand-alone network, in training and in evaluation).
* **depth**: a block holds ``repeats + max(depth)`` layers; the ones beyond the chosen depth are gated out
  (``g * layer(x) + (1 - g) * x``), squeeze-excitation and the residual are gated the same way.
* **op type**: ``cn``, ``ds`` and ``ir`` cannot share weights, so each layer has the three as separate paths
  mixed by a one-hot vector (``ir3`` and ``ir6`` share the inverted-residual path).

The architecture is a set of non-trainable parameters (masks and one-hots) written by :meth:`SuperNet.set_arch`:
the compiled graph is an input to it, so sampling another architecture never recompiles.
:meth:`SuperNet.extract` copies the chosen weights into a stand-alone ``mnasnet_arch`` model that computes the
same outputs (tested), so a candidate found on the supernet is retrained or fine-tuned like any model.

Cost: every call runs the three op paths of every layer at the widest setting, a few times the work of one
candidate. (Switching paths by control flow is not an option: in MindSpore 2.10's graph mode, a parameter
written from Python (``set_data``, ``assign_value``) is not seen inside a branch taken on a tensor condition:
the branch keeps the value it was compiled with, checked on a one-parameter cell.) So the supernet serves
training, where one compiled graph must take every candidate, and a candidate is scored through
:meth:`SuperNet.extract`, whose model computes only its own path.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common import initializer as init

from ..errors import InvalidArgumentError
from ..kernels.depthwise import DepthwiseConv2d
from ..models.arch import make_divisible, round_channels, se_channels
from ..models.layers import Dropout, NoiseLayout, create_classifier, make_norm_layer
from .search_space import Decisions, SearchSpace

__all__ = ["SuperNet", "recalibrate_bn"]

_PATHS = ("cn", "ds", "ir")
_EXPANSION = {"ir3": 3, "ir6": 6}


def _arch_input(shape: Tuple[int, ...], name: str) -> Parameter:
    """A non-trainable parameter holding part of the architecture (set by ``set_arch``, not by the optimizer)."""
    return Parameter(Tensor(np.ones(shape, np.float32)), name=name, requires_grad=False)


def _prefix(size: int, keep: int) -> np.ndarray:
    mask = np.zeros((1, size, 1, 1), np.float32)
    mask[:, :keep] = 1.0
    return mask


def _kernel_mask(size: int, kernel: int) -> np.ndarray:
    mask = np.zeros((1, 1, size, size), np.float32)
    lo = (size - kernel) // 2
    mask[..., lo : lo + kernel, lo : lo + kernel] = 1.0
    return mask


class _KernelConv(nn.Cell):
    """A convolution whose square kernel is multiplied by a mask (a smaller centred kernel shares its weights)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int) -> None:
        super().__init__()
        shape = (out_chs, in_chs, kernel, kernel)
        he_normal = init.HeNormal(mode="fan_out", nonlinearity="relu")
        self.weight = Parameter(init.initializer(he_normal, shape), name="weight")
        self.stride, self.padding = stride, kernel // 2

    def construct(self, x: Tensor, kernel_mask: Tensor) -> Tensor:
        return ops.conv2d(x, self.weight * kernel_mask, None, self.stride, "pad", self.padding, 1, 1)


class _MaskedDepthwise(DepthwiseConv2d):
    """A depthwise convolution with a kernel mask, on the direct CPU kernels where they are available (MindSpore's
    grouped convolution makes the inverted-residual path several times slower)."""

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__(channels, kernel, stride)
        self.weight.set_data(init.initializer(init.HeNormal(mode="fan_out", nonlinearity="relu"), self.weight.shape))

    def construct(self, x: Tensor, kernel_mask: Tensor) -> Tensor:
        weight = self.weight * kernel_mask
        if self.direct:
            return self.direct_conv(x, weight)
        return self.conv2d(x, weight)


def _pointwise(in_chs: int, out_chs: int, bias: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(in_chs, out_chs, 1, has_bias=bias, pad_mode="valid")
    conv.weight.set_data(init.initializer(init.HeNormal(mode="fan_out", nonlinearity="relu"), conv.weight.shape))
    if bias:
        conv.bias.set_data(init.initializer("zeros", conv.bias.shape))
    return conv


class _GatedSE(nn.Cell):
    """Squeeze-excitation with a masked reduction width and an on/off gate (off: identity)."""

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.conv_reduce = _pointwise(chs, rd_chs, bias=True)
        self.act = nn.ReLU()
        self.conv_expand = _pointwise(rd_chs, chs, bias=True)
        self.sigmoid = nn.Sigmoid()

    def construct(self, x: Tensor, rd_mask: Tensor, gate: Tensor) -> Tensor:
        s = x.mean(axis=(2, 3), keep_dims=True)
        s = self.sigmoid(self.conv_expand(self.act(self.conv_reduce(s)) * rd_mask))
        return x * (gate * s + (1.0 - gate))


class _ConvPath(nn.Cell):
    """``cn``: conv kxk -> BN -> act [-> SE] (the names of :class:`~mindcv.models.layers.ConvBnAct`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, rd_chs: int, norm_layer) -> None:
        super().__init__()
        self.conv = _KernelConv(in_chs, out_chs, kernel, stride)
        self.bn1 = norm_layer(out_chs)
        self.act1 = nn.ReLU()
        self.se = _GatedSE(out_chs, rd_chs)

    def construct(self, x, kernel_mask, in_mask, mid_mask, out_mask, rd_mask, se_gate):
        out = self.act1(self.bn1(self.conv(x, kernel_mask)) * out_mask)
        return self.se(out, rd_mask, se_gate)


class _SeparablePath(nn.Cell):
    """``ds``: dw kxk -> BN -> act [-> SE] -> pw -> BN (the names of ``DepthwiseSeparableConv``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, rd_chs: int, norm_layer) -> None:
        super().__init__()
        self.conv_dw = _MaskedDepthwise(in_chs, kernel, stride)
        self.bn1 = norm_layer(in_chs)
        self.act1 = nn.ReLU()
        self.se = _GatedSE(in_chs, rd_chs)
        self.conv_pw = _pointwise(in_chs, out_chs)
        self.bn2 = norm_layer(out_chs)

    def construct(self, x, kernel_mask, in_mask, mid_mask, out_mask, rd_mask, se_gate):
        out = self.act1(self.bn1(self.conv_dw(x, kernel_mask)) * in_mask)
        out = self.se(out, rd_mask, se_gate)
        return self.bn2(self.conv_pw(out)) * out_mask


class _InvertedPath(nn.Cell):
    """``ir``: pw -> BN -> act -> dw -> BN -> act [-> SE] -> pw -> BN (the names of ``InvertedResidual``)."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, kernel: int, stride: int, rd_chs: int, norm_layer):
        super().__init__()
        self.conv_pw = _pointwise(in_chs, mid_chs)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = nn.ReLU()
        self.conv_dw = _MaskedDepthwise(mid_chs, kernel, stride)
        self.bn2 = norm_layer(mid_chs)
        self.act2 = nn.ReLU()
        self.se = _GatedSE(mid_chs, rd_chs)
        self.conv_pwl = _pointwise(mid_chs, out_chs)
        self.bn3 = norm_layer(out_chs)

    def construct(self, x, kernel_mask, in_mask, mid_mask, out_mask, rd_mask, se_gate):
        out = self.act1(self.bn1(self.conv_pw(x)) * mid_mask)
        out = self.act2(self.bn2(self.conv_dw(out, kernel_mask)) * mid_mask)
        out = self.se(out, rd_mask, se_gate)
        return self.bn3(self.conv_pwl(out)) * out_mask


class _SuperLayer(nn.Cell):
    """One layer position of a block: the op paths the space offers, mixed by the architecture's one-hot."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        kernel: int,
        paths: Sequence[str],
        max_expansion: int,
        depth_gated: bool,
        norm_layer,
    ) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.mid_chs = int(round(in_chs * max_expansion))
        self.rd_chs = se_channels(in_chs, 0.25)
        self.paths = tuple(paths)
        self.has_cn, self.has_ds, self.has_ir = ("cn" in paths), ("ds" in paths), ("ir" in paths)
        if self.has_cn:
            self.cn = _ConvPath(in_chs, out_chs, kernel, stride, self.rd_chs, norm_layer)
        if self.has_ds:
            self.ds = _SeparablePath(in_chs, out_chs, kernel, stride, self.rd_chs, norm_layer)
        if self.has_ir:
            self.ir = _InvertedPath(in_chs, self.mid_chs, out_chs, kernel, stride, self.rd_chs, norm_layer)
        self.can_skip = stride == 1
        self.depth_gated = depth_gated
        self.kernel_mask = _arch_input((1, 1, kernel, kernel), "kernel_mask")
        self.in_mask = _arch_input((1, in_chs, 1, 1), "in_mask")
        self.mid_mask = _arch_input((1, self.mid_chs, 1, 1), "mid_mask")
        self.out_mask = _arch_input((1, out_chs, 1, 1), "out_mask")
        self.rd_mask = _arch_input((1, self.rd_chs, 1, 1), "rd_mask")
        self.op = _arch_input((len(self.paths),), "op")
        self.se_gate = _arch_input((1,), "se_gate")
        self.skip_gate = _arch_input((1,), "skip_gate")
        self.depth_gate = _arch_input((1,), "depth_gate")

    def _shortcut(self, x: Tensor) -> Tensor:
        """The input with the output's channel count (where the space lets the two widths differ, the chosen
        ones are equal whenever the residual is on, so only zero channels are cut or added)."""
        if self.in_chs == self.out_chs:
            return x
        if self.in_chs > self.out_chs:
            return x[:, : self.out_chs]
        zeros = ops.zeros((x.shape[0], self.out_chs - self.in_chs, x.shape[2], x.shape[3]), x.dtype)
        return ops.concat((x, zeros), 1)

    def construct(self, x: Tensor) -> Tensor:
        args = (x, self.kernel_mask, self.in_mask, self.mid_mask, self.out_mask, self.rd_mask, self.se_gate)
        out = None
        i = 0
        if self.has_cn:
            out = self.op[i] * self.cn(*args)
            i += 1
        if self.has_ds:
            branch = self.op[i] * self.ds(*args)
            out = branch if out is None else out + branch
            i += 1
        if self.has_ir:
            branch = self.op[i] * self.ir(*args)
            out = branch if out is None else out + branch
        if self.can_skip:
            shortcut = self._shortcut(x)
            out = out + self.skip_gate * shortcut
            if self.depth_gated:
                out = self.depth_gate * out + (1.0 - self.depth_gate) * shortcut
        return out


class SuperNet(nn.Cell):
    """Every architecture of a search space in one network with shared weights.

    Args:
        space: the search space.
        num_classes: classifier outputs.
        width_mult: width multiplier applied on top of each block's width choice (as ``MnasNet`` does).
        stem_size: stem channels before width scaling.
        num_features: head channels.
        drop_rate: dropout before the classifier.
        bn_momentum: BatchNorm momentum (MindSpore convention).
        bn_eps: BatchNorm epsilon.
        in_channels: image channels.
    """

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        width_mult: float = 1.0,
        stem_size: int = 32,
        num_features: int = 1280,
        drop_rate: float = 0.0,
        bn_momentum: float = 0.99,
        bn_eps: float = 1e-3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise InvalidArgumentError(f"num_classes must be >= 1, got {num_classes}")
        self.space = space
        self.model_kwargs = dict(
            num_classes=num_classes,
            width_mult=width_mult,
            stem_size=stem_size,
            num_features=num_features,
            drop_rate=drop_rate,
            bn_momentum=bn_momentum,
            bn_eps=bn_eps,
            in_channels=in_channels,
        )
        options = dict(space.options)
        ops_offered = options["op"]
        paths = [p for p in _PATHS if any(op.startswith(p) for op in ops_offered)]
        max_expansion = max([_EXPANSION[op] for op in ops_offered if op in _EXPANSION] or [1])
        self.kernel = max(options["kernel"])
        norm_layer = make_norm_layer(bn_momentum, bn_eps)
        self.stem_chs = round_channels(stem_size, width_mult)
        self.conv_stem = _KernelConv(in_channels, self.stem_chs, 3, 2)
        self.bn1 = norm_layer(self.stem_chs)
        self.act1 = nn.ReLU()
        blocks, in_chs = [], self.stem_chs
        for b in range(space.num_blocks):
            out_chs = max(self._channels(b, w) for w in options["width"])
            depth = max(1, space.repeats[b] + max(options["depth"]))
            layers = []
            for layer in range(depth):
                stride = space.strides[b] if layer == 0 else 1
                layers.append(
                    _SuperLayer(in_chs, out_chs, stride, self.kernel, paths, max_expansion, layer > 0, norm_layer)
                )
                in_chs = out_chs
            blocks.append(nn.CellList(layers))
        self.blocks = nn.CellList(blocks)
        self.conv_head = _pointwise(in_chs, num_features)
        self.bn2 = norm_layer(num_features)
        self.act2 = nn.ReLU()
        self.dropout = Dropout(drop_rate, features=num_features)
        self.classifier = create_classifier(num_features, num_classes)
        self.noise_layout = NoiseLayout(self)
        self.arch: Optional[Decisions] = None
        self.set_arch(space.sample(np.random.default_rng(0)))

    def _channels(self, block: int, width: float) -> int:
        return round_channels(make_divisible(self.space.channels[block] * width, 8), self.model_kwargs["width_mult"])

    @property
    def noise_width(self) -> int:
        return self.noise_layout.width

    # -- the architecture as an input ----------------------------------------------------------------
    def set_arch(self, decisions: Decisions) -> None:
        """Select the candidate ``decisions`` (a decision vector of the space): writes masks and gates only.

        Args:
            decisions: the candidate.
        """
        self.space.validate(decisions)
        in_chs = self.stem_chs
        for b, layers in enumerate(self.blocks):
            choice = self.space.block_choice(decisions, b)
            out_chs = self._channels(b, choice["width"])
            repeats = max(1, self.space.repeats[b] + choice["depth"])
            op = choice["op"]
            for i, layer in enumerate(layers):
                layer_in = in_chs if i == 0 else out_chs
                expansion = _EXPANSION.get(op, 1)
                layer.kernel_mask.set_data(Tensor(_kernel_mask(layer.kernel_mask.shape[-1], choice["kernel"])))
                layer.in_mask.set_data(Tensor(_prefix(layer.in_chs, layer_in)))
                layer.mid_mask.set_data(Tensor(_prefix(layer.mid_chs, int(round(layer_in * expansion)))))
                layer.out_mask.set_data(Tensor(_prefix(layer.out_chs, out_chs)))
                layer.rd_mask.set_data(Tensor(_prefix(layer.rd_chs, se_channels(layer_in, 0.25))))
                one_hot = np.zeros(len(layer.paths), np.float32)
                one_hot[layer.paths.index(op[:2])] = 1.0
                layer.op.set_data(Tensor(one_hot))
                layer.se_gate.set_data(Tensor(np.array([float(choice["se"] > 0)], np.float32)))
                skip = layer.stride == 1 and layer_in == out_chs and choice["skip"] == "skip"
                layer.skip_gate.set_data(Tensor(np.array([float(skip)], np.float32)))
                layer.depth_gate.set_data(Tensor(np.array([float(i < repeats)], np.float32)))
            in_chs = out_chs
        self.arch = list(decisions)

    # -- forward -----------------------------------------------------------------------------------
    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        x = self.act1(self.bn1(self.conv_stem(x, 1.0)))
        for layers in self.blocks:
            for layer in layers:
                x = layer(x)
        x = self.act2(self.bn2(self.conv_head(x)))
        x = self.dropout(x.mean(axis=(2, 3)), noise)
        return self.classifier(x)

    # -- a candidate as a stand-alone model ------------------------------------------------------------
    def extract(self, decisions: Decisions) -> nn.Cell:
        """A stand-alone ``mnasnet_arch`` model of the candidate holding the supernet's weights for it (its
        BatchNorm statistics included): same outputs as the supernet with ``set_arch(decisions)``.

        Args:
            decisions: the candidate.

        Returns:
            The model (``create_model("mnasnet_arch", arch=...)`` with this supernet's settings).
        """
        from ..models import create_model

        model = create_model("mnasnet_arch", arch=self.space.arch_string(decisions), **self.model_kwargs)
        shared = dict(self.parameters_and_names())
        for path, param in model.parameters_and_names():
            param.set_data(Tensor(_fit(shared[self._shared_path(path, decisions)].asnumpy(), param.shape)))
        return model

    def _shared_path(self, path: str, decisions: Decisions) -> str:
        parts = path.split(".")
        if parts[0] != "blocks":
            return path
        op = self.space.block_choice(decisions, int(parts[1]))["op"][:2]
        return ".".join(parts[:3] + [op] + parts[3:])


def _fit(shared: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The part of a shared tensor a smaller one uses: leading channels, centred kernel window."""
    index = []
    for axis, (have, want) in enumerate(zip(shared.shape, shape)):
        if have < want:
            raise InvalidArgumentError(f"supernet tensor of shape {shared.shape} cannot hold shape {tuple(shape)}")
        start = (have - want) // 2 if shared.ndim == 4 and axis >= 2 else 0
        index.append(slice(start, start + want))
    return np.ascontiguousarray(shared[tuple(index)])


def recalibrate_bn(network: nn.Cell, images: np.ndarray) -> None:
    """Replace every BatchNorm's moving statistics with those of one batch (the candidate's own statistics:
    shared statistics are a mixture over all candidates and ruin their accuracy).

    One forward pass in training mode starting from zero statistics leaves ``(1 - momentum) * batch_stat``;
    dividing by ``1 - momentum`` gives the batch statistic exactly, without recompiling for another momentum.

    Args:
        network: the network (its BatchNorm cells are ``nn.BatchNorm2d``).
        images: one batch, ``(N, C, H, W)`` float32 (a few hundred images).
    """
    norms = [cell for _, cell in network.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    for bn in norms:
        bn.moving_mean.set_data(ops.zeros_like(bn.moving_mean))
        bn.moving_variance.set_data(ops.zeros_like(bn.moving_variance))
    was_training = network.training
    network.set_train(True)
    network(Tensor(images, ms.float32))
    network.set_train(was_training)
    for bn in norms:
        keep = float(bn.momentum)  # nn.BatchNorm2d stores 1 - momentum: the weight of the batch statistic
        if keep <= 0:
            raise InvalidArgumentError("BatchNorm recalibration needs bn_momentum < 1")
        bn.moving_mean.set_data(bn.moving_mean / keep)
        bn.moving_variance.set_data(bn.moving_variance / keep)
