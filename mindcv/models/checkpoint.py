"""Model-aware weights: state-dict layouts, conversion, strict loading into a model, architecture metadata.

Files are read and written by :mod:`mindcv.io.checkpoint` (its docstring lists what :func:`read_checkpoint`
guarantees for crafted files); its public names are re-exported here. This module recognises the state-dict
layout (this package, upstream mindcv, torchvision, timm), renames it to this package's parameter names, and
loads it with a strict check that reports every missing key, unexpected key and shape mismatch in one error.
MindSpore's own ``load_param_into_net(strict_load=True)`` only *returns* such lists.

:func:`load_state_dict_into` (used by ``create_model(checkpoint_path=...)``, :func:`load_model_checkpoint`,
pretrained weights and ``train.py --resume``) additionally refuses, with :class:`NonFiniteWeightsError`,
any floating-point tensor it is about to load that holds NaN or Inf. MindSpore's CPU ReLU maps NaN to 0,
so a network with NaN weights can still produce finite, wrong, logits.
"""

import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from mindspore import Tensor, nn

from ..io.checkpoint import (
    META_KEY,
    NATIVE_EXTENSIONS,
    CheckpointError,
    NonFiniteWeightsError,
    cell_metadata,
    find_non_finite,
    model_state_dict,
    numpy_dtype,
    read_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from .pretrained import CHECKPOINT_LAYOUTS, MINDCV_BN_EPS, TORCH_BN_EPS

# What rebuilds a model from a checkpoint (upstream-style name; the model describes itself)
model_metadata = cell_metadata

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteWeightsError",
    "NATIVE_EXTENSIONS",
    "find_non_finite",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "model_metadata",
    "detect_layout",
    "convert_state_dict",
    "source_bn_eps",
    "load_state_dict_into",
    "save_checkpoint",
    "model_state_dict",
    "META_KEY",
]

_logger = logging.getLogger(__name__)


class CheckpointMismatchError(CheckpointError):
    """Missing keys, unexpected keys or shape mismatches between a checkpoint and a model."""

    def __init__(self, source: str, missing: List[str], unexpected: List[str], mismatched: List[str]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"checkpoint '{source}' does not fit the model:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        parts.append("  (wrong architecture or width? pass the model the checkpoint was trained with)")
        super().__init__("\n".join(parts))


# ---------------------------------------------------------------------------------------------------
# layouts
def detect_layout(keys: Iterable[str]) -> str:
    """Recognise which implementation wrote a state dict.

    Args:
        keys: the parameter names (an ``ema.`` or ``module.`` prefix is ignored).

    Returns:
        One of ``"mindcv"`` (this package), ``"mindcv_upstream"`` (mindspore-lab/mindcv's
        ``Mnasnet``), ``"torchvision"`` (``torchvision.models.MNASNet``) or ``"timm"``.

    Raises:
        CheckpointError: the layout is none of these.
    """
    keys = {_strip_prefixes(k) for k in keys}
    if "conv_stem.weight" in keys:
        if "bn1.moving_mean" in keys or "bn1.gamma" in keys:
            return "mindcv"
        if "bn1.running_mean" in keys or "bn1.weight" in keys:
            return "timm"
    if "layers.0.weight" in keys and any(k.startswith("layers.8.0.layers.") for k in keys):
        return "torchvision"
    if "features.0.weight" in keys and any(re.match(r"features\.8\.layers\.", k) for k in keys):
        return "mindcv_upstream"
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        f"unrecognised state-dict layout (first keys: {sample}); supported layouts: {', '.join(CHECKPOINT_LAYOUTS)}"
    )


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:  # wrappers nest in any order: 'network.module.x', 'module.module.x'
        stripped = False
        for prefix in ("module.", "network.", "_backbone."):
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def source_bn_eps(layout: str, meta: Optional[Dict[str, Any]] = None) -> Optional[float]:
    """BatchNorm epsilon the weights of a layout were trained with (``None`` if unknown).

    Args:
        layout: a layout name.
        meta: metadata read with the checkpoint; files written by this package record ``bn_eps``.

    Returns:
        The epsilon to build the model with, so converted outputs match the source framework.
    """
    if layout in ("torchvision", "timm"):
        return TORCH_BN_EPS
    if layout == "mindcv_upstream":
        return MINDCV_BN_EPS
    if meta and meta.get("bn_eps") is not None:
        eps = meta["bn_eps"]
        # the model computes in float32: 1e-320 is positive here and 0 there
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < float(np.float32(eps)) < 1.0:
            raise CheckpointError(f"the checkpoint's recorded bn_eps {eps!r} is not a number in (0, 1)")
        return float(eps)
    return None


_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_TV_BLOCK = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}
_SEP_CONV = {
    "0": "conv_stem",
    "1": "bn1",
    "3": "blocks.0.0.conv_dw",
    "4": "blocks.0.0.bn1",
    "6": "blocks.0.0.conv_pw",
    "7": "blocks.0.0.bn2",
}
_B1_STAGE_REPEATS = (3, 3, 3, 2, 4, 1)  # upstream mindcv only implements MnasNet-B1


def _rename_torch_bn(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """weight/bias/running_* of every BatchNorm (a module with running_mean) -> MindSpore names."""
    bn_modules = {k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")}
    out = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if module in bn_modules and leaf in _TORCH_BN:
            leaf = _TORCH_BN[leaf]
        out[f"{module}.{leaf}"] = value
    return out


def _torchvision_name(key: str, head_idx: int) -> str:
    parts = key.split(".")
    if parts[0] == "classifier":
        return "classifier." + parts[-1]
    idx = int(parts[1])
    if idx < 8:
        return f"{_SEP_CONV[parts[1]]}.{parts[-1]}"
    if idx == head_idx:
        return "conv_head." + parts[-1]
    if idx == head_idx + 1:
        return "bn2." + parts[-1]
    # layers.{8+s}.{b}.layers.{j}.leaf
    return f"blocks.{idx - 7}.{parts[2]}.{_TV_BLOCK[parts[4]]}.{parts[-1]}"


def _upstream_name(key: str, n_blocks: int, stage_repeats: Sequence[int] = _B1_STAGE_REPEATS) -> str:
    parts = key.split(".")
    if parts[0] == "classifier":
        return key
    idx = int(parts[1])
    if idx < 8:
        return f"{_SEP_CONV[parts[1]]}.{parts[-1]}"
    if idx == 8 + n_blocks:
        return "conv_head." + parts[-1]
    if idx == 9 + n_blocks:
        return "bn2." + parts[-1]
    flat = idx - 8
    for stage, repeats in enumerate(stage_repeats):
        if flat < repeats:
            return f"blocks.{stage + 1}.{flat}.{_TV_BLOCK[parts[3]]}.{parts[-1]}"
        flat -= repeats
    raise CheckpointError(f"upstream mindcv key '{key}' is outside MnasNet-B1's 16 blocks")


def legacy_state_name(name: str) -> Optional[str]:
    """The name a state entry had before MnasNet-B1 took upstream's parameter names, or None if it did not change.

    Optimizer moments and EMA copies are named after their parameter (``adam_m.features.0.weight``,
    ``ema.features.0.weight``); files written before name them after the cell (``adam_m.conv_stem.weight``).

    Args:
        name: a state name whose last part is a MnasNet-B1 parameter's upstream name.

    Returns:
        The same name with the parameter part in cell-path form, or None.
    """
    match = re.search(r"(^|\.)(features\.\d+\..*)$", name)
    if match is None:
        return None
    try:
        old = _upstream_name(match.group(2), sum(_B1_STAGE_REPEATS))
    except (CheckpointError, KeyError, ValueError, IndexError):
        return None
    return name[: match.start(2)] + old


def convert_state_dict(
    state_dict: Dict[str, np.ndarray],
    layout: Optional[str] = None,
    ema: bool = False,
    stage_repeats: Optional[Sequence[int]] = None,
) -> Dict[str, np.ndarray]:
    """Rename a state dict of any supported layout to this package's parameter names.

    Args:
        state_dict: arrays by name.
        layout: the source layout; detected when ``None``.
        ema: take the EMA copy (``ema.``-prefixed names, as mindcv's TrainStep saves them).
        stage_repeats: for ``features.N`` names: the blocks of each inverted-residual stage (default
            MnasNet-B1's 3, 3, 3, 2, 4, 1; a file this package wrote from another architecture records its own).

    Returns:
        Arrays by native parameter name (optimizer state and other extras dropped).
    """
    if ema:
        ema_sd = {k[len("ema.") :]: v for k, v in state_dict.items() if k.startswith("ema.")}
        if not ema_sd:
            raise CheckpointError("ema=True but the checkpoint holds no 'ema.' parameters")
        state_dict = ema_sd
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("ema.")}
    stripped: Dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = _strip_prefixes(key)
        if name in stripped:  # 'module.x' and 'x' both present: which one is meant is unknowable
            raise CheckpointError(f"the checkpoint holds '{name}' twice (with and without a wrapper prefix)")
        stripped[name] = value
    state_dict = stripped
    layout = layout or detect_layout(state_dict)
    if layout not in CHECKPOINT_LAYOUTS:
        raise CheckpointError(f"unknown checkpoint layout '{layout}'; valid: {', '.join(CHECKPOINT_LAYOUTS)}")
    if layout == "mindcv":
        both = sorted(k for k in state_dict if k.startswith("features."))[:3]
        if both:  # which copy is meant is unknowable: never pick one silently
            raise CheckpointError(
                f"the checkpoint holds parameters under both namings (conv_stem.weight ... and {', '.join(both)} ...)"
            )
        return {k: v for k, v in state_dict.items() if _is_model_key(k)}
    if layout == "timm":
        return _rename_torch_bn(state_dict)
    if layout == "torchvision":
        sd = _rename_torch_bn(state_dict)
        head_idx = max(int(k.split(".")[1]) for k in sd if k.startswith("layers.")) - 1
        return {_torchvision_name(k, head_idx): v for k, v in sd.items()}
    # upstream mindcv: the file may also hold optimizer moments, global_step, learning_rate ...
    sd = {k: v for k, v in state_dict.items() if k.startswith(("features.", "classifier."))}
    repeats = tuple(stage_repeats) if stage_repeats is not None else _B1_STAGE_REPEATS
    n_blocks = len({k.split(".")[1] for k in sd if ".layers." in k})
    if n_blocks != sum(repeats):
        raise CheckpointError(
            f"the checkpoint has {n_blocks} inverted-residual blocks under features.N names, but "
            + (
                f"MnasNet-B1 (assumed: the file records no architecture) has {sum(repeats)}"
                if stage_repeats is None
                else f"the architecture recorded with it has {sum(repeats)}: the record contradicts the weights"
            )
        )
    return {_upstream_name(k, n_blocks, repeats): v for k, v in sd.items()}


_MODEL_KEY_RE = re.compile(r"^(conv_stem|bn1|blocks|conv_head|bn2|classifier)\.")


def _is_model_key(key: str) -> bool:
    return bool(_MODEL_KEY_RE.match(key))


# ---------------------------------------------------------------------------------------------------
# loading into a model
def _adapt_input_conv(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt a first-conv kernel trained on 3 channels to ``in_channels`` (timm's rule)."""
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    repeats = int(np.ceil(in_channels / weight.shape[1]))
    adapted = np.tile(weight, (1, repeats, 1, 1))[:, :in_channels]
    return adapted * (weight.shape[1] / float(in_channels))


def load_state_dict_into(
    model: nn.Cell,
    state_dict: Dict[str, np.ndarray],
    source: str = "<state dict>",
    first_conv: str = "conv_stem",
    classifier: str = "classifier",
    adapt: bool = True,
) -> None:
    """Copy native-named arrays into a model, strictly.

    Args:
        model: the target model.
        state_dict: arrays named by the model's cell paths (see :func:`convert_state_dict`) or by its
            parameters' names (the same unless the model uses upstream's ``features.N`` names).
        source: a name for the checkpoint in error messages.
        first_conv: prefix of the first convolution, adapted when the input channels differ.
        classifier: prefix of the classifier, re-initialised when the class count differs.
        adapt: allow those two adaptations (fine-tuning); when False any difference is an error.

    Raises:
        CheckpointMismatchError: missing keys, unexpected keys or shape mismatches, all listed.
        NonFiniteWeightsError: a floating-point tensor about to be loaded holds NaN or Inf (the first few
            are named with their count of non-finite values); the model is left unchanged.
    """
    # matched by cell path (conv_stem.weight), the names convert_state_dict gives; a state dict named after the
    # parameters themselves (train.py's, for a model with upstream's features.N names) is translated to them
    source_paths = getattr(model, "source_param_paths", None)  # a feature extractor: the paths in its model
    params = {source_paths[p.name] if source_paths else path: p for path, p in model.parameters_and_names()}
    path_of = {p.name: path for path, p in params.items()}
    state_dict = {k if k in params else path_of.get(k, k): v for k, v in state_dict.items()}
    if adapt:
        head_keys = [k for k in state_dict if k.startswith(classifier + ".")]
        model_head = [k for k in params if k.startswith(classifier + ".")]
        if head_keys and (
            not model_head or any(state_dict[k].shape != params[k].shape for k in head_keys if k in params)
        ):
            old = state_dict[head_keys[0]].shape[0]
            _logger.info(
                "%s: classifier has %d classes, the model %s; keeping the model's fresh classifier",
                source,
                old,
                getattr(model, "num_classes", "?"),
            )
            for k in head_keys:
                state_dict.pop(k)
            for k in model_head:
                state_dict[k] = params[k].asnumpy()
        stem = first_conv + ".weight"
        if stem in state_dict and stem in params and state_dict[stem].shape != params[stem].shape:
            want, have = params[stem].shape, state_dict[stem].shape
            if want[0] == have[0] and want[2:] == have[2:]:
                _logger.info("%s: adapting %s from %d to %d input channels", source, stem, have[1], want[1])
                state_dict[stem] = _adapt_input_conv(state_dict[stem].astype(np.float32), want[1])
    # listed in model order, so the first entries shown are the ones nearest the input
    missing = [k for k in params if k not in state_dict]
    unexpected = sorted(set(state_dict) - set(params))
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(params[k].shape)})"
        for k in params
        if k in state_dict and tuple(state_dict[k].shape) != tuple(params[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    # cast first, then check: a float64 1e300 is finite until it becomes the model's float32
    with np.errstate(over="ignore", invalid="ignore"):
        cast = {
            name: np.ascontiguousarray(state_dict[name], dtype=numpy_dtype(str(param.dtype)))
            for name, param in params.items()
        }
    non_finite = find_non_finite(cast)
    if non_finite:
        raise NonFiniteWeightsError(source, non_finite)
    for name, param in params.items():
        param.set_data(Tensor(cast[name], param.dtype))
