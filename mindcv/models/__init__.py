"""Model zoo: MnasNet-B1 / A1 / small built from one architecture-as-data builder."""

from . import arch, checkpoint, features, helpers, layers, loading, mnasnet, model_factory, registry
from .arch import (
    decode_arch_def,
    decode_block_str,
    encode_block_str,
    format_arch_string,
    make_divisible,
    parse_arch_string,
)
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    NonFiniteWeightsError,
    find_non_finite,
    read_checkpoint,
    save_checkpoint,
)
from .features import FeatureExtractWrapper
from .helpers import ConfigDict, auto_map
from .loading import LoadedModel, load_model
from .mnasnet import *  # the entrypoints (one per VARIANTS entry, and mnasnet_arch)
from .mnasnet import ARCH_DEFS, MnasNet, Mnasnet
from .model_factory import (
    build_model_with_cfg,
    create_model,
    get_checkpoint_download_root,
    load_model_checkpoint,
    load_pretrained,
)
from .pretrained import PretrainedCfg
from .registry import (
    PretrainedCfgDict,
    get_pretrained_cfg,
    get_pretrained_cfg_value,
    has_pretrained_cfg_key,
    is_model,
    is_model_in_modules,
    is_model_pretrained,
    list_models,
    list_modules,
    list_pretrained_tags,
    model_entrypoint,
    register_model,
)

__all__ = [
    "create_model",
    "load_model",
    "LoadedModel",
    "build_model_with_cfg",
    "load_model_checkpoint",
    "load_pretrained",
    "get_checkpoint_download_root",
    "ConfigDict",
    "auto_map",
    "list_models",
    "list_modules",
    "list_pretrained_tags",
    "is_model",
    "is_model_in_modules",
    "is_model_pretrained",
    "model_entrypoint",
    "register_model",
    "get_pretrained_cfg",
    "get_pretrained_cfg_value",
    "has_pretrained_cfg_key",
    "MnasNet",
    "Mnasnet",
    "PretrainedCfgDict",
    "ARCH_DEFS",
    "PretrainedCfg",
    "FeatureExtractWrapper",
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteWeightsError",
    "find_non_finite",
    "read_checkpoint",
    "save_checkpoint",
    "decode_arch_def",
    "decode_block_str",
    "encode_block_str",
    "parse_arch_string",
    "format_arch_string",
    "make_divisible",
]
__all__ += [name for name in mnasnet.__all__ if name not in __all__]  # the entrypoints
