"""Architecture as data: the block-string grammar used by every MnasNet variant.

A network is a list of stages; each stage is one block string (or a list of them), e.g.
``ir_r3_k5_s2_e6_c80_se0.25`` = three inverted-residual blocks, 5x5 depthwise kernel, stride 2 on the
first block, expansion 6, 80 output channels (before width scaling), squeeze-excitation of 0.25 x the
block *input* channels.

Grammar (tokens are separated by ``_``, the leading token is the block type, the others may come in any
order):

========  ===========================================================================
``cn``    regular convolution: conv kxk -> BN -> ReLU [-> SE]
``ds``    depthwise-separable: dw kxk -> BN -> ReLU [-> SE] -> pw 1x1 -> BN
``ir``    inverted residual (MBConv): pw 1x1 -> BN -> ReLU -> dw kxk -> BN -> ReLU [-> SE] -> pw 1x1 -> BN
``r<n>``  number of repeats in the stage (default 1)
``k<n>``  kernel size (odd)
``s<n>``  stride of the first block of the stage (1 or 2)
``e<x>``  expansion ratio (``ir`` only; ignored by ``ds``/``cn`` as in timm)
``c<n>``  output channels before width scaling
``se<x>`` squeeze-excitation ratio relative to the block input channels (0 disables)
``noskip``  never add the identity residual
``skip``    the default: add the residual whenever stride is 1 and channels match
========  ===========================================================================

This covers the whole factorized hierarchical search space of the MnasNet paper (conv / dwsep /
MBConv e3|e6, kernel 3|5, SE 0|0.25, skip|no-skip, any channels and repeats), so architecture-search
candidates and the zoo share one builder.
"""

import math
import re
from dataclasses import dataclass, replace
from typing import List, Sequence, Tuple, Union

from ..errors import InvalidArgumentError

__all__ = [
    "BlockArgs",
    "BLOCK_TYPES",
    "decode_block_str",
    "encode_block_str",
    "decode_arch_def",
    "encode_arch_def",
    "parse_arch_string",
    "format_arch_string",
    "round_channels",
    "make_divisible",
]

BLOCK_TYPES = ("cn", "ds", "ir")
_TOKEN_RE = re.compile(r"^(se|noskip|skip|r|k|s|e|c)(.*)$")
_VALID_TOKENS = "r<int>, k<int>, s<int>, e<float>, c<int>, se<float>, skip, noskip"


@dataclass(frozen=True)
class BlockArgs:
    """One block of a stage, fully resolved except for width scaling.

    Args:
        block_type: ``"cn"``, ``"ds"`` or ``"ir"``.
        kernel_size: spatial kernel of the (depthwise) convolution.
        stride: stride of this block (only the first block of a stage may have stride 2).
        out_chs: output channels before width scaling.
        exp_ratio: expansion ratio of an inverted residual (1.0 for ``ds``/``cn``).
        se_ratio: squeeze-excitation width relative to the block input channels (0 = no SE).
        noskip: never add the identity residual.
    """

    block_type: str
    kernel_size: int
    stride: int
    out_chs: int
    exp_ratio: float = 1.0
    se_ratio: float = 0.0
    noskip: bool = False


def _number(text: str, token: str, block_str: str, kind=int) -> Union[int, float]:
    try:
        value = kind(text)
    except ValueError:
        raise InvalidArgumentError(
            f"block string '{block_str}': token '{token}' needs a {kind.__name__} value"
        ) from None
    if value < 0:
        raise InvalidArgumentError(f"block string '{block_str}': token '{token}' must not be negative")
    return value


def decode_block_str(block_str: str) -> Tuple[BlockArgs, int]:
    """Decode one block string into its :class:`BlockArgs` and repeat count.

    Args:
        block_str: e.g. ``"ir_r3_k5_s2_e6_c80_se0.25"``.

    Returns:
        ``(args, repeats)``.

    Raises:
        ValueError: unknown block type or token, missing kernel/channels, or an invalid value.
    """
    if not isinstance(block_str, str) or not block_str:
        raise InvalidArgumentError(f"block string must be a non-empty str, got {block_str!r}")
    tokens = block_str.split("_")
    block_type = tokens[0]
    if block_type not in BLOCK_TYPES:
        raise InvalidArgumentError(
            f"block string '{block_str}': unknown block type '{block_type}'; valid: {', '.join(BLOCK_TYPES)}"
        )
    opts = {"r": 1, "s": 1, "e": 1.0, "se": 0.0}
    noskip = False
    for tok in tokens[1:]:
        m = _TOKEN_RE.match(tok)
        if not m or (m.group(1) in ("skip", "noskip") and m.group(2)):
            raise InvalidArgumentError(
                f"block string '{block_str}': unknown token '{tok}'; valid tokens: {_VALID_TOKENS}"
            )
        key, value = m.group(1), m.group(2)
        if key == "noskip":
            noskip = True
        elif key == "skip":
            noskip = False
        elif key in ("e", "se"):
            opts[key] = _number(value, tok, block_str, float)
        else:
            opts[key] = _number(value, tok, block_str, int)
    for required in ("k", "c"):
        if required not in opts:
            raise InvalidArgumentError(f"block string '{block_str}': missing '{required}<int>' token")
    if opts["k"] % 2 == 0 or opts["k"] < 1:
        raise InvalidArgumentError(f"block string '{block_str}': kernel size must be odd and >= 1, got {opts['k']}")
    if opts["s"] not in (1, 2):
        raise InvalidArgumentError(f"block string '{block_str}': stride must be 1 or 2, got {opts['s']}")
    if opts["r"] < 1 or opts["c"] < 1:
        raise InvalidArgumentError(f"block string '{block_str}': repeats and channels must be >= 1")
    if block_type == "ir" and opts["e"] <= 0:
        raise InvalidArgumentError(f"block string '{block_str}': expansion ratio must be > 0")
    if opts["se"] >= 1.0 + 1e-9:
        raise InvalidArgumentError(f"block string '{block_str}': SE ratio must be in [0, 1], got {opts['se']}")
    args = BlockArgs(
        block_type=block_type,
        kernel_size=opts["k"],
        stride=opts["s"],
        out_chs=opts["c"],
        exp_ratio=float(opts["e"]) if block_type == "ir" else 1.0,
        se_ratio=float(opts["se"]),
        noskip=noskip,
    )
    return args, opts["r"]


def _fmt_float(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def encode_block_str(args: BlockArgs, repeats: int = 1) -> str:
    """Inverse of :func:`decode_block_str`; gives the canonical spelling (fixed token order).

    Args:
        args: the block.
        repeats: repeat count of the stage.

    Returns:
        The canonical block string.
    """
    parts = [args.block_type, f"r{repeats}", f"k{args.kernel_size}", f"s{args.stride}"]
    if args.block_type == "ir":
        parts.append(f"e{_fmt_float(args.exp_ratio)}")
    parts.append(f"c{args.out_chs}")
    if args.se_ratio > 0:
        parts.append(f"se{_fmt_float(args.se_ratio)}")
    if args.noskip:
        parts.append("noskip")
    return "_".join(parts)


ArchDef = Sequence[Union[str, Sequence[str]]]


def decode_arch_def(arch_def: ArchDef) -> List[List[BlockArgs]]:
    """Expand a stage table into one :class:`BlockArgs` per block.

    Args:
        arch_def: a list of stages, each a block string or a list of block strings.

    Returns:
        A list of stages, each a list of per-block args. Only the first block of each block string
        keeps its stride; the repeats get stride 1.
    """
    if isinstance(arch_def, str):
        raise TypeError("arch_def must be a list of stages; use parse_arch_string() for a '|'-joined string")
    if len(arch_def) == 0:
        raise InvalidArgumentError("arch_def must contain at least one stage")
    stages = []
    for stage in arch_def:
        stage_strs = [stage] if isinstance(stage, str) else list(stage)
        blocks = []
        for block_str in stage_strs:
            args, repeats = decode_block_str(block_str)
            blocks.append(args)
            blocks.extend(replace(args, stride=1) for _ in range(repeats - 1))
        stages.append(blocks)
    return stages


def encode_arch_def(stages: Sequence[Sequence[BlockArgs]]) -> List[str]:
    """Canonical block strings of decoded stages (runs of identical blocks are merged into ``r<n>``).

    Args:
        stages: the output of :func:`decode_arch_def`.

    Returns:
        One entry per stage: a block string, or a list of block strings for a stage that mixes block
        kinds. :func:`decode_arch_def` turns the result back into the same blocks.
    """
    out = []
    for blocks in stages:
        strs = []
        i = 0
        while i < len(blocks):
            first = blocks[i]
            j = i + 1
            while j < len(blocks) and blocks[j] == replace(first, stride=1):
                j += 1
            strs.append(encode_block_str(first, j - i))
            i = j
        out.append(strs[0] if len(strs) == 1 else strs)
    return out


def parse_arch_string(arch: str) -> List[Union[str, List[str]]]:
    """Parse an architecture string: stages joined by ``|``, block strings within a stage by ``,``.

    Args:
        arch: e.g. ``"ds_r1_k3_s1_c16_noskip|ir_r3_k3_s2_e3_c24|..."``.

    Returns:
        The stage table; every block string is validated by :func:`decode_block_str`.
    """
    stages: List[Union[str, List[str]]] = []
    for stage in arch.split("|"):
        strs = [s.strip() for s in stage.split(",") if s.strip()]
        if not strs:
            raise InvalidArgumentError(f"architecture string {arch!r} has an empty stage")
        for s in strs:
            decode_block_str(s)
        stages.append(strs[0] if len(strs) == 1 else strs)
    return stages


def format_arch_string(arch_def: ArchDef) -> str:
    """Inverse of :func:`parse_arch_string`."""
    return "|".join(s if isinstance(s, str) else ",".join(s) for s in arch_def)


def make_divisible(v: float, divisor: int = 8, min_value: int = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without dropping more than 10% below it.

    This is torchvision's ``_round_to_multiple_of``, TF's ``round_filters`` and timm's
    ``make_divisible``: all MnasNet implementations compute the same widths with it.

    Args:
        v: the target value.
        divisor: the multiple to round to.
        min_value: lower bound (defaults to ``divisor``).
        round_limit: add one ``divisor`` when rounding fell below ``round_limit * v``.

    Returns:
        The rounded channel count.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return int(new_v)


def round_channels(channels: int, multiplier: float = 1.0, divisor: int = 8) -> int:
    """Scale a channel count by the width multiplier (identity for multiplier 1.0 on multiples of 8).

    Args:
        channels: channels before width scaling.
        multiplier: the width multiplier (``alpha``).
        divisor: channel granularity.

    Returns:
        The scaled channel count.
    """
    if not multiplier:
        return channels
    return make_divisible(channels * multiplier, divisor)


def se_channels(in_chs: int, se_ratio: float) -> int:
    """Reduced width of a squeeze-excitation: computed from the block *input* channels (TF, timm)."""
    return max(1, int(math.floor(in_chs * se_ratio + 1e-9)))
