"""MindSpore implementation of `MnasNet`.

Refer to "MnasNet: Platform-Aware Neural Architecture Search for Mobile", Tan et al., CVPR 2019.

Every variant (B1 at any width, A1 with squeeze-excitation, small, and any architecture of the paper's
search space) is the same :class:`MnasNet` class built from a stage table of block strings
(see :mod:`mindcv.models.arch`). The registered entrypoints only pick a table, a width and the
published weights.
"""

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

from mindspore import Tensor, nn
from mindspore.common import initializer as init

from ..errors import InvalidArgumentError
from .arch import (
    ArchDef,
    BlockArgs,
    decode_arch_def,
    encode_arch_def,
    format_arch_string,
    parse_arch_string,
    round_channels,
)
from .layers import BLOCK_CLASSES, Dropout, NoiseLayout, create_classifier, create_conv2d, make_norm_layer
from .model_factory import build_model_with_cfg
from .pretrained import MINDCV_BN_EPS, TORCH_BN_EPS, PretrainedCfg
from .registry import register_model

__all__ = [
    "MnasNet",
    "Mnasnet",
    "ARCH_DEFS",
    "VARIANTS",
    "Variant",
    "build_mnasnet",
    "load_arch",
    "PARAM_LAYOUTS",
    "upstream_parameter_names",
]

# Stage tables (timm notation; TF mnasnet_models.py / timm _gen_mnasnet_* / torchvision MNASNet).
ARCH_DEFS: Dict[str, List[str]] = {
    "b1": [
        "ds_r1_k3_s1_c16_noskip",
        "ir_r3_k3_s2_e3_c24",
        "ir_r3_k5_s2_e3_c40",
        "ir_r3_k5_s2_e6_c80",
        "ir_r2_k3_s1_e6_c96",
        "ir_r4_k5_s2_e6_c192",
        "ir_r1_k3_s1_e6_c320_noskip",
    ],
    "a1": [
        "ds_r1_k3_s1_e1_c16_noskip",
        "ir_r2_k3_s2_e6_c24",
        "ir_r3_k5_s2_e3_c40_se0.25",
        "ir_r4_k3_s2_e6_c80",
        "ir_r2_k3_s1_e6_c112_se0.25",
        "ir_r3_k5_s2_e6_c160_se0.25",
        "ir_r1_k3_s1_e6_c320",
    ],
    "small": [
        "ds_r1_k3_s1_c8",
        "ir_r1_k3_s2_e3_c16",
        "ir_r2_k3_s2_e6_c16",
        "ir_r4_k5_s2_e6_c32_se0.25",
        "ir_r3_k3_s1_e6_c32_se0.25",
        "ir_r3_k5_s2_e6_c88_se0.25",
        "ir_r1_k3_s1_e6_c144",
    ],
}


class MnasNet(nn.Cell):
    r"""MnasNet built from a stage table of block strings.

    stem conv3x3/s2 -> BN -> ReLU -> stages -> conv1x1 to ``num_features`` -> BN -> ReLU -> global
    average pool -> dropout -> dense.

    Args:
        arch_def: stage table: a list of block strings (one per stage, or a list per stage) or a
            ``|``-joined string of them.
        num_classes: classifier outputs; 0 gives a backbone that returns pooled features.
        in_channels: input image channels.
        width_mult: width multiplier (``alpha``) applied to the stem and every stage, rounded to
            multiples of 8; the head width is never scaled (torchvision, TF, timm, mindcv agree).
        stem_size: stem channels before width scaling.
        num_features: channels of the final 1x1 conv (the embedding size).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate of the last block, linearly increasing from 0.
        bn_momentum: BatchNorm momentum in MindSpore's convention (0.99 = TF decay 0.99 = PyTorch 0.01).
        bn_eps: BatchNorm epsilon. 1e-3 for the TF / mindcv recipe; 1e-5 for weights trained in PyTorch.
        pad_type: ``"symmetric"`` (PyTorch-compatible) or ``"same"`` (TF-compatible).
        param_layout: how parameters are named. ``"blocks"``: after the cells (``conv_stem``,
            ``blocks.<stage>.<block>.conv_pw``, ``conv_head``), as timm does. ``"features"``: as upstream mindcv and
            torchvision name MnasNet-B1 (``features.0`` the stem, ``features.8`` the first inverted residual,
            ``features.8.layers.0`` its expansion conv), so code that filters upstream's names (freezing
            ``features.0``-``features.6``, learning-rate groups for ``features.13``) selects the same layers;
            the ``mnasnet_0xx`` models use it. Only for MnasNet-B1's block pattern (a first separable block
            without skip or SE, then inverted residuals without SE). Checkpoints of either naming load into
            both.
    """

    def __init__(
        self,
        arch_def: Union[ArchDef, str],
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stem_size: int = 32,
        num_features: int = 1280,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        bn_momentum: float = 0.99,
        bn_eps: float = MINDCV_BN_EPS,
        pad_type: str = "symmetric",
        param_layout: str = "blocks",
    ) -> None:
        super().__init__()
        if param_layout not in PARAM_LAYOUTS:
            raise InvalidArgumentError(f"unknown param_layout '{param_layout}'; valid: {', '.join(PARAM_LAYOUTS)}")
        if isinstance(arch_def, str):
            arch_def = parse_arch_string(arch_def)
        if num_classes < 0 or in_channels < 1:
            raise InvalidArgumentError(
                f"num_classes must be >= 0 and in_channels >= 1, got {num_classes}, {in_channels}"
            )
        if width_mult <= 0:
            raise InvalidArgumentError(f"width_mult must be > 0, got {width_mult}")
        if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
            raise InvalidArgumentError(
                f"drop_rate and drop_path_rate must be in [0, 1), got {drop_rate}, {drop_path_rate}"
            )
        stages = decode_arch_def(arch_def)
        self.arch_def = encode_arch_def(stages)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width_mult = width_mult
        self.stem_size = stem_size
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.bn_momentum = bn_momentum
        self.bn_eps = bn_eps
        self.pad_type = pad_type
        self.flatten_sequential = True  # lets FeatureExtractWrapper see the stages one by one
        norm_layer = make_norm_layer(bn_momentum, bn_eps)

        stem_chs = round_channels(stem_size, width_mult)
        self.conv_stem = create_conv2d(in_channels, stem_chs, 3, stride=2, pad_type=pad_type)
        self.bn1 = norm_layer(stem_chs)
        self.act1 = nn.ReLU()
        self.blocks, self.feature_info = _build_stages(
            stages, stem_chs, width_mult, drop_path_rate, norm_layer, pad_type
        )
        head_in = self.feature_info[-1]["chs"]
        self.conv_head = create_conv2d(head_in, num_features, 1, pad_type=pad_type)
        self.bn2 = norm_layer(num_features)
        self.act2 = nn.ReLU()
        self.dropout = Dropout(drop_rate, features=num_features)
        self.classifier = create_classifier(num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._initialize_weights()
        self.noise_layout = NoiseLayout(self)  # the dropout / drop-path columns of the training noise
        self.param_layout = param_layout
        if param_layout == "features":
            names = upstream_parameter_names(self)
            for path, param in self.parameters_and_names():
                param.name = names[path]

    # -- construction helpers -------------------------------------------------------------------
    def _initialize_weights(self) -> None:
        """torchvision's init: He-normal (fan_out, relu) convs, unit BN; the classifier: see ``create_classifier``."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.weight.set_data(
                    init.initializer(init.HeNormal(mode="fan_out", nonlinearity="relu"), cell.weight.shape)
                )
                if cell.bias is not None:
                    cell.bias.set_data(init.initializer("zeros", cell.bias.shape))

    # -- model interface ------------------------------------------------------------------------
    def get_classifier(self) -> nn.Cell:
        """The classifier cell (``nn.Identity`` when ``num_classes == 0``)."""
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (``0`` removes it).

        Args:
            num_classes: new number of classes.
        """
        if num_classes < 0:
            raise InvalidArgumentError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier = create_classifier(self.num_features, num_classes)
        else:
            self.classifier = nn.Identity()

    def checkpoint_metadata(self) -> Dict[str, Any]:
        """What rebuilds this architecture from a checkpoint (stored with the weights by ``save_checkpoint``).

        Returns:
            BN eps, classes, input channels, width, stem and head sizes, the architecture string, and the
            registered name when the model came from ``create_model``.
        """
        meta = {
            "bn_eps": self.bn_eps,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "width_mult": self.width_mult,
            "stem_size": self.stem_size,
            "num_features": self.num_features,
            "arch": format_arch_string(self.arch_def),
        }
        if isinstance(getattr(self, "model_name", None), str):
            meta["model"] = self.model_name
        return meta

    @property
    def noise_width(self) -> int:
        """Columns of the ``noise`` input (see :class:`~mindcv.models.layers.NoiseLayout`)."""
        return self.noise_layout.width

    def forward_features(self, x: Tensor, noise: Tensor = None) -> Tensor:
        """Stem, stages and head conv; returns the unpooled ``(N, num_features, H/32, W/32)`` map.

        Args:
            x: images ``(N, C, H, W)``.
            noise: optional ``(N, noise_width)`` uniform [0, 1) values driving dropout / drop-path in
                training (see :class:`~mindcv.models.layers.Dropout`); ``None`` uses MindSpore's RNG.
        """
        x = self.act1(self.bn1(self.conv_stem(x)))
        for stage in self.blocks:
            for block in stage:
                x = block(x, noise)
        x = self.act2(self.bn2(self.conv_head(x)))
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False, noise: Tensor = None) -> Tensor:
        """Global average pool -> dropout -> classifier; ``pre_logits`` stops before the classifier."""
        x = x.mean(axis=(2, 3))
        x = self.dropout(x, noise)
        if pre_logits:
            return x
        return self.classifier(x)

    def construct(self, x: Tensor, noise: Tensor = None) -> Tensor:
        x = self.forward_features(x, noise)
        x = self.forward_head(x, noise=noise)
        return x


class Mnasnet(MnasNet):
    """Upstream mindcv's class: MnasNet-B1 (torchvision's MNASNet, no SE) at width ``alpha``.

    ``Mnasnet(alpha, in_channels=3, num_classes=1000, drop_rate=0.2)`` is ``MnasNet(ARCH_DEFS["b1"],
    width_mult=alpha, ...)`` with upstream's BatchNorm (momentum 0.99, eps 1e-3): the model the ``mnasnet_*``
    entrypoints build, with upstream's parameter names (``features.N``).

    Args:
        alpha: width multiplier.
        in_channels: input image channels.
        num_classes: classifier outputs.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, alpha: float, in_channels: int = 3, num_classes: int = 1000, drop_rate: float = 0.2) -> None:
        super().__init__(
            ARCH_DEFS["b1"],
            num_classes=num_classes,
            in_channels=in_channels,
            width_mult=alpha,
            drop_rate=drop_rate,
            param_layout="features",
        )


PARAM_LAYOUTS = ("blocks", "features")
_UPSTREAM_STEM = {  # torchvision / upstream mindcv: features.0-7 are the stem and the separable block, flattened
    "conv_stem": "features.0",
    "bn1": "features.1",
    "blocks.0.0.conv_dw": "features.3",
    "blocks.0.0.bn1": "features.4",
    "blocks.0.0.conv_pw": "features.6",
    "blocks.0.0.bn2": "features.7",
}
_UPSTREAM_INVERTED = {"conv_pw": "0", "bn1": "1", "conv_dw": "3", "bn2": "4", "conv_pwl": "6", "bn3": "7"}


def upstream_parameter_names(model: "MnasNet") -> Dict[str, str]:
    """Upstream mindcv's (and torchvision's) name for each parameter of a MnasNet-B1-patterned model.

    Args:
        model: a :class:`MnasNet` whose first block is a separable block without skip or SE and whose other
            blocks are inverted residuals without SE (MnasNet-B1 at any width, and architectures like it).

    Returns:
        ``{cell path: upstream name}`` for every parameter, e.g. ``blocks.1.0.conv_dw.weight`` ->
        ``features.8.layers.3.weight``.

    Raises:
        InvalidArgumentError: the model's blocks do not follow that pattern (upstream has no name for them).
    """
    from .layers import DepthwiseSeparableConv, InvertedResidual

    stages = list(model.blocks)
    first = stages[0][0] if stages and len(stages[0]) else None
    rest = [block for stage in stages for block in stage][1:]
    pattern = (
        isinstance(first, DepthwiseSeparableConv)
        and len(stages[0]) == 1
        and not first.has_skip
        and isinstance(first.se, nn.Identity)
        and all(isinstance(b, InvertedResidual) and isinstance(b.se, nn.Identity) for b in rest)
    )
    if not pattern:
        raise InvalidArgumentError(
            "param_layout='features' names parameters as upstream mindcv's MnasNet-B1 does; this architecture "
            f"({format_arch_string(model.arch_def)}) does not have B1's pattern (a first separable block without "
            "skip or SE, then inverted residuals without SE): use param_layout='blocks'"
        )
    prefixes = dict(_UPSTREAM_STEM)
    flat = 0
    for stage_idx in range(1, len(stages)):
        for block_idx in range(len(stages[stage_idx])):
            for cell, layer in _UPSTREAM_INVERTED.items():
                prefixes[f"blocks.{stage_idx}.{block_idx}.{cell}"] = f"features.{8 + flat}.layers.{layer}"
            flat += 1
    prefixes["conv_head"] = f"features.{8 + flat}"
    prefixes["bn2"] = f"features.{9 + flat}"
    prefixes["classifier"] = "classifier"
    names = {}
    for path, _ in model.parameters_and_names():
        cell, _, leaf = path.rpartition(".")
        names[path] = f"{prefixes[cell]}.{leaf}"
    return names


def _build_stages(
    stages: Sequence[Sequence[BlockArgs]],
    in_chs: int,
    width_mult: float,
    drop_path_rate: float,
    norm_layer: Callable[[int], nn.Cell],
    pad_type: str,
) -> Tuple[nn.SequentialCell, List[Dict[str, Any]]]:
    """The stateful stage builder: tracks input channels, stride and stochastic depth per block."""
    total_blocks = sum(len(s) for s in stages)
    block_idx = 0
    reduction = 2  # the stem has stride 2
    stage_cells, stage_info = [], []
    for stage_idx, blocks in enumerate(stages):
        cells = []
        for args in blocks:
            out_chs = round_channels(args.out_chs, width_mult)
            cls = BLOCK_CLASSES[args.block_type]
            cells.append(
                cls(
                    in_chs,
                    out_chs,
                    args.kernel_size,
                    stride=args.stride,
                    exp_ratio=args.exp_ratio,
                    se_ratio=args.se_ratio,
                    noskip=args.noskip,
                    drop_path_rate=drop_path_rate * block_idx / max(total_blocks - 1, 1),
                    norm_layer=norm_layer,
                    pad_type=pad_type,
                )
            )
            reduction *= args.stride
            in_chs = out_chs
            block_idx += 1
        stage_cells.append(nn.SequentialCell(cells))
        stage_info.append(dict(chs=in_chs, reduction=reduction, name=f"blocks.{stage_idx}", stage=stage_idx))
    # one feature point per resolution: the last stage before each stride change (timm convention)
    feature_info = [
        info
        for i, info in enumerate(stage_info)
        if i + 1 == len(stage_info) or stage_info[i + 1]["reduction"] != info["reduction"]
    ]
    return nn.SequentialCell(stage_cells), feature_info


# ---------------------------------------------------------------------------------------------------
# Published weights. Hash prefixes are the sha256 prefixes carried in the published file names.
_MINDCV_URL = "https://download.mindspore.cn/toolkits/mindcv/mnasnet/"
_TV_URL = "https://download.pytorch.org/models/"
_TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_MINDCV_RECIPE = "https://github.com/mindspore-lab/mindcv/tree/main/configs/mnasnet (8x Ascend 910, RMSProp)"


def _mindcv_cfg(file: str, top1: float, top5: float, **kwargs) -> PretrainedCfg:
    return PretrainedCfg(
        url=_MINDCV_URL + file,
        hash_prefix=file.rsplit("-", 1)[1].split(".")[0],
        layout="mindcv_upstream",
        bn_eps=MINDCV_BN_EPS,
        top1=top1,
        top5=top5,
        recipe=_MINDCV_RECIPE,
        license="apache-2.0",
        **kwargs,
    )


def _torch_cfg(url: str, layout: str, top1: float, top5: float, **kwargs) -> PretrainedCfg:
    return PretrainedCfg(
        url=url,
        hash_prefix=url.rsplit("-", 1)[1].split(".")[0],
        layout=layout,
        bn_eps=TORCH_BN_EPS,
        top1=top1,
        top5=top5,
        **kwargs,
    )


_TV_RECIPE_V1 = "https://github.com/1e100/mnasnet_trainer"
_TV_RECIPE_V2 = "https://github.com/pytorch/vision/pull/6019"
_TIMM_RECIPE = "timm: RMSProp (TF-style), see huggingface.co/timm"


@dataclass(frozen=True)
class Variant:
    """One registered model: everything that distinguishes it from the others.

    Args:
        arch: key of :data:`ARCH_DEFS`.
        width_mult: width multiplier.
        num_params: exact trainable parameters at 1000 classes (torchvision / timm; checked by the tests).
        doc: the entrypoint's docstring.
        weights: published weights by tag; the first is the default of ``pretrained=True``. Empty for an
            architecture nobody has published weights of.
        defaults: :class:`MnasNet` arguments that differ from its defaults (keyword arguments override them).
        width_fixed: the width is part of the name (its weights and parameter count): another is an error.
    """

    arch: str
    width_mult: float
    num_params: int
    doc: str
    weights: Dict[str, PretrainedCfg] = field(default_factory=dict)
    defaults: Dict[str, Any] = field(default_factory=dict)
    width_fixed: bool = True


def _tv(file: str, top1: float, top5: float, recipe: str, resize_size: int) -> PretrainedCfg:
    return _torch_cfg(
        _TV_URL + file, "torchvision", top1, top5, recipe=recipe, resize_size=resize_size, license="bsd-3-clause"
    )


def _timm(file: str, top1: float, top5: float, recipe: str = _TIMM_RECIPE) -> PretrainedCfg:
    return _torch_cfg(
        _TIMM_URL + file, "timm", top1, top5, recipe=recipe, interpolation="bicubic", license="apache-2.0"
    )


# The zoo. Adding a width or a published weight is one entry here; the entrypoints, the registry's
# metadata, the parameter counts and the registry-driven tests all derive from this table.
VARIANTS: Dict[str, Variant] = {
    "mnasnet_050": Variant(
        "b1",
        0.5,
        2_218_512,
        "MnasNet-B1 (torchvision's MNASNet, no SE) with width multiplier 0.5.",
        {
            "mindcv_in1k": _mindcv_cfg("mnasnet_050-7d8bf4db.ckpt", 68.07, 88.09, interpolation="bicubic"),
            "tv_in1k": _tv("mnasnet0.5_top1_67.823-3ffadce67e.pth", 67.734, 87.490, _TV_RECIPE_V1, 256),
        },
        defaults={"param_layout": "features"},  # upstream's names (features.N)
    ),
    "mnasnet_075": Variant(
        "b1",
        0.75,
        3_170_208,
        "MnasNet-B1 with width multiplier 0.75.",
        {
            "mindcv_in1k": _mindcv_cfg("mnasnet_075-465d366d.ckpt", 71.81, 90.53),
            "tv_in1k": _tv("mnasnet0_75-7090bc5f.pth", 71.180, 90.496, _TV_RECIPE_V2, 232),
        },
        defaults={"param_layout": "features"},  # upstream's names (features.N)
    ),
    "mnasnet_100": Variant(
        "b1",
        1.0,
        4_383_312,
        "MnasNet-B1 with width multiplier 1.0.",
        {
            "mindcv_in1k": _mindcv_cfg("mnasnet_100-1bcf43f8.ckpt", 74.28, 91.70),
            "tv_in1k": _tv("mnasnet1.0_top1_73.512-f206786ef8.pth", 73.456, 91.510, _TV_RECIPE_V1, 256),
            "timm_in1k": _timm("mnasnet_b1-74cb7081.pth", 74.672, 92.108),
        },
        defaults={"param_layout": "features"},  # upstream's names (features.N)
    ),
    "mnasnet_130": Variant(
        "b1",
        1.3,
        6_282_256,
        "MnasNet-B1 with width multiplier 1.3.",
        {
            "mindcv_in1k": _mindcv_cfg("mnasnet_130-a43a150a.ckpt", 75.65, 92.64, interpolation="bicubic"),
            "tv_in1k": _tv("mnasnet1_3-a4c69d6f.pth", 76.506, 93.522, _TV_RECIPE_V2, 232),
        },
        defaults={"param_layout": "features"},  # upstream's names (features.N)
    ),
    "mnasnet_140": Variant(
        "b1",
        1.4,
        7_115_728,
        "MnasNet-B1 with width multiplier 1.4.",
        {"mindcv_in1k": _mindcv_cfg("mnasnet_140-7e20bb30.ckpt", 76.01, 92.83)},
        defaults={"param_layout": "features"},  # upstream's names (features.N)
    ),
    "semnasnet_050": Variant("a1", 0.5, 2_082_006, "MnasNet-A1 (with squeeze-excitation) with width multiplier 0.5."),
    "semnasnet_075": Variant(
        "a1",
        0.75,
        2_912_278,
        "MnasNet-A1 with width multiplier 0.75.",
        {"timm_in1k": _timm("semnasnet_075-18710866.pth", 73.000, 91.124)},
    ),
    "semnasnet_100": Variant(
        "a1",
        1.0,
        3_887_038,
        "MnasNet-A1 with width multiplier 1.0.",
        {"timm_in1k": _timm("mnasnet_a1-d9418771.pth", 75.452, 92.608)},
    ),
    "semnasnet_140": Variant("a1", 1.4, 6_105_992, "MnasNet-A1 with width multiplier 1.4."),
    "mnasnet_small": Variant(
        "small",
        1.0,
        2_030_264,
        "MnasNet-small (TF reference): 8-channel stem, SE in the later stages, no dropout.",
        {"timm_in1k": _timm("mnasnet_small_lamb-aff75073.pth", 66.204, 86.470, recipe="timm: LAMB")},
        defaults={"drop_rate": 0.0, "stem_size": 8},
        width_fixed=False,  # as the TF reference's mnasnet_small(depth_multiplier)
    ),
}

# What the registry reads from the defining module (upstream mindcv's convention).
pretrained_tags: Dict[str, Dict[str, PretrainedCfg]] = {
    name: {
        tag: replace(
            cfg,
            num_params=variant.num_params,
            # the first conv as the model's parameters name it (upstream's cfgs say features.0 for B1 too)
            first_conv="features.0" if variant.defaults.get("param_layout") == "features" else cfg.first_conv,
        )
        for tag, cfg in (variant.weights or {"untrained": PretrainedCfg()}).items()
    }
    for name, variant in VARIANTS.items()
}
default_cfgs: Dict[str, PretrainedCfg] = {name: next(iter(tags.values())) for name, tags in pretrained_tags.items()}


def build_mnasnet(
    variant: str,
    arch: Union[str, ArchDef],
    pretrained: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    **kwargs: Any,
) -> nn.Cell:
    """Build a registered MnasNet variant through the shared model builder.

    Args:
        variant: registered name, used to look up its published weights.
        arch: a key of :data:`ARCH_DEFS` or a stage table.
        pretrained: load the default (or ``pretrained_tag``) weights.
        num_classes: classifier outputs.
        in_channels: input channels.
        **kwargs: :class:`MnasNet` arguments, plus ``pretrained_tag``, ``features_only`` and ``out_indices``.

    Returns:
        The model (or a feature extractor when ``features_only=True``).
    """
    arch_def = ARCH_DEFS[arch] if isinstance(arch, str) and arch in ARCH_DEFS else arch
    return build_model_with_cfg(
        MnasNet,
        variant,
        pretrained,
        tags=pretrained_tags.get(variant, {}),
        num_classes=num_classes,
        in_channels=in_channels,
        arch_def=arch_def,
        **kwargs,
    )


def _register_variant(name: str, variant: Variant) -> Callable[..., nn.Cell]:
    """The thin entrypoint ``name(pretrained=False, num_classes=1000, in_channels=3, **kwargs)`` of one variant."""

    def entrypoint(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> nn.Cell:
        if variant.width_fixed and kwargs.get("width_mult", variant.width_mult) != variant.width_mult:
            raise InvalidArgumentError(
                f"{name} is {variant.arch.upper()} at width {variant.width_mult}, got "
                f"width_mult={kwargs['width_mult']}: for another width use "
                f"mnasnet_arch(arch='{variant.arch}', width_mult=...)"
            )
        kwargs = {**variant.defaults, "width_mult": variant.width_mult, **kwargs}
        return build_mnasnet(name, variant.arch, pretrained, num_classes, in_channels, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = variant.doc
    return register_model(entrypoint)


for _name, _variant in VARIANTS.items():  # module attributes, as upstream's hand-written entrypoints were
    globals()[_name] = _register_variant(_name, _variant)  # register_model adds the name to __all__


ARCH_FILE_KEYS = ("arch", "width_mult", "stem_size", "num_features", "drop_rate")


def load_arch(arch: Union[str, ArchDef]) -> Tuple[ArchDef, Dict[str, Any]]:
    """Resolve an ``arch`` argument into a stage table and the model settings stored with it.

    Args:
        arch: a key of :data:`ARCH_DEFS` (``"b1"``, ``"a1"``, ``"small"``), a ``|``-joined architecture string,
            a list of block strings, or the path of an architecture file written by ``search.py`` (JSON with
            ``"arch"`` and optionally ``width_mult``, ``stem_size``, ``num_features``, ``drop_rate``) or a
            text file holding one architecture string.

    Returns:
        ``(stage table, settings)``; settings are empty unless they came from a file.
    """
    if not isinstance(arch, str):
        return list(arch), {}
    if arch in ARCH_DEFS:
        return ARCH_DEFS[arch], {}
    if os.path.isfile(arch):
        with open(arch) as f:
            text = f.read().strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise InvalidArgumentError(f"architecture file '{arch}' is not valid JSON: {err}") from err
            if "arch" not in spec:
                raise InvalidArgumentError(f"architecture file '{arch}' has no \"arch\" entry (keys: {sorted(spec)})")
            settings = {k: spec[k] for k in ARCH_FILE_KEYS[1:] if k in spec}
            return parse_arch_string(spec["arch"]), settings
        return parse_arch_string(text), {}
    if "_" not in arch:
        raise InvalidArgumentError(
            f"arch '{arch}' is neither a file, an architecture string nor one of {sorted(ARCH_DEFS)} "
            "(an architecture string looks like 'ds_r1_k3_s1_c16_noskip|ir_r3_k3_s2_e3_c24|...')"
        )
    return parse_arch_string(arch), {}


@register_model
def mnasnet_arch(
    pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, arch: Union[str, ArchDef] = "b1", **kwargs
) -> nn.Cell:
    """Any architecture of the block grammar, e.g. one found by ``search.py``.

    ``create_model("mnasnet_arch", arch="search_out/top1.json")`` or
    ``arch="ds_r1_k3_s1_c16_noskip|ir_r3_k3_s2_e3_c24|..."``; settings stored in an architecture file
    (width multiplier, stem size) are defaults that keyword arguments override.
    """
    arch_def, settings = load_arch(arch)
    return build_mnasnet("mnasnet_arch", arch_def, pretrained, num_classes, in_channels, **{**settings, **kwargs})
