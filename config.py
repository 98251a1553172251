"""Configuration of train.py / validate.py: argparse defaults <- YAML recipe (``-c``) <- command line.

Upstream mindcv option names and YAML keys are kept. Unlike upstream, every YAML value is converted
and checked against the option's type and choices (``1e-5`` is a float, ``batch_size: 1.5`` is an
error), unknown YAML keys are rejected by name, and bool / list / tuple options work on the command line
(``--ema true``, ``--scale 0.08 1.0``).
"""

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "create_parser",
    "parse_args",
    "save_args",
    "str2bool",
    "ConfigError",
    "_check_cfgs_in_parser",
    "architecture_kwargs",
]


class ConfigError(ValueError):
    """A recipe or command line is invalid (the message names the key and what is expected)."""


def str2bool(value: Any) -> bool:
    """``true/yes/1/on`` -> True, ``false/no/0/off`` -> False (case-insensitive)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on", "y", "t"):
        return True
    if text in ("false", "no", "0", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _none_or(kind):
    def convert(value):
        if value is None or str(value).lower() in ("none", "null", ""):
            return None
        return kind(value)

    convert.__name__ = f"optional {kind.__name__}"
    return convert


def _flag(group, name: str, default: bool, help_text: str) -> None:
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help_text)


def create_parser() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``(config_parser, parser)``: the first reads only ``-c/--config``, the second every option."""
    parser_config = argparse.ArgumentParser(description="Config", add_help=False)
    parser_config.add_argument(
        "-c", "--config", type=str, default="", help="YAML recipe; its values become the defaults"
    )
    parser = argparse.ArgumentParser(description="mindcv MnasNet training / validation", parents=[parser_config])

    g = parser.add_argument_group("System")
    g.add_argument("--mode", type=int, default=0, choices=[0, 1], help="0: GRAPH_MODE, 1: PYNATIVE_MODE")
    g.add_argument(
        "--device_target", type=str, default="CPU", choices=["CPU", "GPU", "Ascend"], help="device to run on"
    )
    _flag(g, "--distribute", False, "data-parallel training over all launched processes (msrun / mpirun)")
    _flag(g, "--val_while_train", False, "validate every val_interval epochs")
    g.add_argument("--val_interval", type=int, default=1, help="epochs between validations")
    g.add_argument("--log_interval", type=int, default=100, help="steps between log lines")
    g.add_argument("--seed", type=int, default=42, help="seed of initialisation, data order, augmentation and dropout")
    _flag(g, "--progress", True, "show progress bars")

    g = parser.add_argument_group("Dataset")
    g.add_argument(
        "--dataset",
        type=str,
        default="imagenet",
        help="imagenet / any ImageFolder name, cifar10, cifar100, mnist, fashion_mnist, demo",
    )
    g.add_argument(
        "--data_dir", type=_none_or(str), default=None, help="dataset root (default: the dataset's cache folder)"
    )
    g.add_argument("--train_split", type=str, default="train")
    g.add_argument("--val_split", type=str, default="val")
    _flag(g, "--dataset_download", False, "download CIFAR / MNIST if absent")
    g.add_argument("--num_parallel_workers", type=int, default=2, help="augmentation workers (at most the CPU count)")
    _flag(g, "--shuffle", True, "shuffle the training data")
    g.add_argument("--num_samples", type=_none_or(int), default=None, help="use only this many samples per epoch")
    g.add_argument("--batch_size", type=int, default=128, help="batch size per device")
    _flag(g, "--drop_remainder", True, "drop the last incomplete training batch")
    _flag(g, "--strict_data", False, "fail on the first unreadable image instead of skipping it")

    g = parser.add_argument_group("Augmentation")
    g.add_argument("--image_resize", type=int, default=224, help="training crop / evaluation size")
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="RandomResizedCrop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=(0.75, 1.333), help="RandomResizedCrop aspect range")
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--vflip", type=float, default=0.0)
    g.add_argument(
        "--color_jitter", type=_none_or(float), nargs="+", default=0.4, help="brightness/contrast/saturation[/hue]"
    )
    g.add_argument(
        "--interpolation", type=str, default="bilinear", choices=["bilinear", "bicubic", "nearest", "area", "pilcubic"]
    )
    g.add_argument(
        "--auto_augment", type=_none_or(str), default=None, help="e.g. randaug-m9-mstd0.5, autoaug, trivialaugwide"
    )
    g.add_argument("--aug_splits", type=int, default=0, help="augmentation splits (not supported; must be 0)")
    g.add_argument("--re_prob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--re_scale", type=float, nargs=2, default=(0.02, 0.33))
    g.add_argument("--re_ratio", type=float, nargs=2, default=(0.3, 3.3))
    g.add_argument("--re_value", type=str, default="0", help="erasing value: a number or 'random'")
    g.add_argument("--re_max_attempts", type=int, default=10)
    g.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean (0-255 scale)")
    g.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (0-255 scale)")
    g.add_argument(
        "--crop_pct", type=float, default=0.875, help="evaluation: resize to image_resize / crop_pct, centre crop"
    )
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--cutmix_prob", type=float, default=1.0)
    g.add_argument("--aug_repeats", type=int, default=0, help="repeated augmentation factor")

    g = parser.add_argument_group("Model")
    g.add_argument("--model", type=str, default="mnasnet_100", help="registered model name")
    g.add_argument(
        "--arch",
        type=_none_or(str),
        default=None,
        help="for model mnasnet_arch: an architecture string or file (e.g. search.py's top1.json)",
    )
    g.add_argument("--width_mult", type=_none_or(float), default=None, help="for model mnasnet_arch")
    g.add_argument("--num_classes", type=_none_or(int), default=None, help="default: from the dataset")
    g.add_argument("--in_channels", type=int, default=3)
    g.add_argument("--drop_rate", type=_none_or(float), default=None, help="default: the model's (0.2)")
    g.add_argument("--drop_path_rate", type=_none_or(float), default=None)
    g.add_argument(
        "--bn_momentum", type=_none_or(float), default=None, help="MindSpore convention (0.99 = PyTorch 0.01)"
    )
    g.add_argument("--bn_eps", type=_none_or(float), default=None)
    _flag(g, "--pretrained", False, "start from the published weights")
    g.add_argument("--ckpt_path", type=str, default="", help="weights to start from, or the checkpoint to resume")
    _flag(g, "--resume", False, "resume training from --ckpt_path (weights, optimizer, EMA, epoch, step)")
    _flag(g, "--resume_opt", False, "upstream name of --resume")
    g.add_argument("--keep_checkpoint_max", type=int, default=10)
    g.add_argument("--ckpt_save_dir", type=str, default="./ckpt")
    g.add_argument("--ckpt_save_interval", type=int, default=1)
    g.add_argument("--ckpt_save_policy", type=_none_or(str), default="latest_k", choices=[None, "latest_k", "top_k"])
    g.add_argument("--epoch_size", type=int, default=90, help="number of epochs")
    _flag(g, "--dataset_sink_mode", False, "accepted for upstream recipes; the loop feeds batches itself")
    _flag(g, "--ema", False, "keep an EMA of the weights and validate with it")
    g.add_argument("--ema_decay", type=float, default=0.9999)
    _flag(g, "--clip_grad", False, "clip the global gradient norm")
    g.add_argument("--clip_value", type=float, default=15.0)
    g.add_argument("--layer_decay", type=_none_or(float), default=None, help="not supported (must be unset)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)

    g = parser.add_argument_group("Optimizer")
    g.add_argument(
        "--opt", type=str, default="adam", help="sgd, momentum, nesterov, rmsprop, adam, adamw, lamb, lion, adagrad"
    )
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=1e-6)
    _flag(g, "--use_nesterov", False, "Nesterov momentum")
    g.add_argument("--weight_decay_filter", type=str, default="disable", choices=["disable", "auto", "norm_and_bias"])
    g.add_argument(
        "--eps", type=_none_or(float), default=None, help="optimizer epsilon (default: the optimizer's; RMSProp 1e-3)"
    )

    g = parser.add_argument_group("Scheduler")
    g.add_argument("--scheduler", type=str, default="cosine_decay")
    g.add_argument("--lr", type=float, default=0.001)
    g.add_argument("--min_lr", type=float, default=1e-6)
    g.add_argument("--warmup_epochs", type=int, default=3)
    g.add_argument("--warmup_factor", type=float, default=0.0)
    g.add_argument("--decay_epochs", type=float, default=100)
    g.add_argument("--decay_rate", type=float, default=0.9)
    g.add_argument("--multi_step_decay_milestones", type=int, nargs="+", default=[30, 60, 90])
    _flag(g, "--lr_epoch_stair", False, "change the learning rate once per epoch")
    g.add_argument("--num_cycles", type=int, default=1)
    g.add_argument("--cycle_decay", type=float, default=1.0)

    g = parser.add_argument_group("Loss")
    g.add_argument("--loss", type=str, default="CE", choices=["CE", "BCE", "ce", "bce"])
    g.add_argument("--label_smoothing", type=float, default=0.0)
    g.add_argument("--aux_factor", type=float, default=0.0)
    g.add_argument("--reduction", type=str, default="mean", choices=["mean", "sum"])

    g = parser.add_argument_group("AMP")
    g.add_argument("--amp_level", type=str, default="O0", choices=["O0", "O1", "O2", "O3"])
    g.add_argument("--val_amp_level", type=str, default="O0", choices=["O0", "O1", "O2", "O3"])
    g.add_argument("--amp_cast_list", type=_none_or(str), default=None, help="not supported (must be unset)")
    g.add_argument("--loss_scale_type", type=str, default="fixed", choices=["fixed", "dynamic", "auto"])
    g.add_argument("--loss_scale", type=float, default=1.0)
    _flag(g, "--drop_overflow_update", False, "skip updates whose gradients overflowed")
    _flag(g, "--eval_shuffle", False, "shuffle the validation set (metrics do not depend on it)")

    g = parser.add_argument_group("Output")
    g.add_argument(
        "--result_file", type=_none_or(str), default=None, help="validate.py: also write the JSON result here"
    )
    return parser_config, parser


def _check_cfgs_in_parser(cfgs: Dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """Reject YAML keys that are not options (upstream's message, which tests pin)."""
    known = {action.dest for action in parser._actions}
    for key in cfgs:
        if key not in known:
            raise KeyError(f"{key} does not exist in ArgumentParser!")


def _convert(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """Convert a YAML value with the option's type; check nargs and choices."""
    kind = action.type
    multiple = action.nargs in ("+", "*") or isinstance(action.nargs, int)

    def one(v):
        if kind is None:
            return v
        if kind is int and isinstance(v, float) and not v.is_integer():
            raise ConfigError(f"{source}: '{key}' must be an integer, got {v!r}")
        if kind in (int, float) and isinstance(v, bool):
            raise ConfigError(f"{source}: '{key}' must be a number, got {v!r}")
        try:
            return kind(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            name = getattr(kind, "__name__", str(kind))
            raise ConfigError(f"{source}: '{key}' expects {name}, got {v!r} ({err})") from None

    if value is None:
        return None
    if multiple:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise ConfigError(f"{source}: '{key}' needs {action.nargs} values, got {value!r}")
        converted = [one(v) for v in values]
        if action.dest == "color_jitter" and len(converted) == 1:
            return converted[0]
        return converted
    if isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: '{key}' takes a single value, got a list {value!r}")
    converted = one(value)
    if action.choices is not None and converted not in action.choices:
        valid = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{source}: '{key}' must be one of {valid}, got {value!r}")
    return converted


def load_yaml(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read, check and convert a YAML recipe."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of option: value, got {type(cfg).__name__}")
    try:
        _check_cfgs_in_parser(cfg, parser)
    except KeyError as err:
        raise ConfigError(
            f"{path}: unknown option {err.args[0].split(' ')[0]!r} (not an option of train.py/validate.py)"
        ) from None
    actions = {a.dest: a for a in parser._actions}
    return {k: _convert(actions[k], k, v, path) for k, v in cfg.items()}


def parse_args(args: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``args`` (default: ``sys.argv``): code defaults, then the ``-c`` YAML, then the command line.

    Raises:
        ConfigError: an unreadable or invalid YAML (unknown key, wrong type, bad choice).
    """
    parser_config, parser = create_parser()
    known, remaining = parser_config.parse_known_args(args)
    if known.config:
        cfg = load_yaml(known.config, parser)
        parser.set_defaults(**cfg)
        parser.set_defaults(config=known.config)
    parsed = parser.parse_args(remaining)
    if isinstance(parsed.color_jitter, list) and len(parsed.color_jitter) == 1:
        parsed.color_jitter = parsed.color_jitter[0]
    parsed.resume = bool(parsed.resume or parsed.resume_opt)
    return parsed


def save_args(args: argparse.Namespace, filepath: str, rank: Optional[int] = 0) -> None:
    """Write the effective configuration as YAML (on rank 0, or when not distributed)."""
    if rank not in (0, None):
        return
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())}
    tmp = filepath + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(values, f, default_flow_style=False, sort_keys=True)
    os.replace(tmp, filepath)


def parser_defaults() -> Dict[str, Any]:
    """The code defaults of every option (used to tell explicit settings from defaults)."""
    _, parser = create_parser()
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def explicit_keys(args: Optional[Sequence[str]] = None) -> List[str]:
    """Options set by the YAML recipe or the command line (not left at their code default)."""
    parser_config, parser = create_parser()
    known, remaining = parser_config.parse_known_args(args)
    keys = list(load_yaml(known.config, parser)) if known.config else []
    for token in remaining:
        if token.startswith("--"):
            keys.append(token[2:].split("=", 1)[0])
    return keys


def architecture_kwargs(args: argparse.Namespace, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``arch`` / ``width_mult`` for ``create_model``: from the options, else from a checkpoint's metadata.

    Only ``mnasnet_arch`` takes them (the zoo variants fix their architecture and width).
    """
    meta = meta or {}
    if args.model != "mnasnet_arch":
        if args.arch is not None or args.width_mult is not None:
            raise ConfigError(f"arch / width_mult apply to model 'mnasnet_arch' only, not '{args.model}'")
        return {}
    arch = args.arch or meta.get("arch")
    if not arch:
        raise ConfigError("model 'mnasnet_arch' needs --arch (an architecture string or a search.py top-k file)")
    kwargs: Dict[str, Any] = {"arch": arch}
    width = args.width_mult if args.width_mult is not None else (meta.get("width_mult") if not args.arch else None)
    if width is not None:
        kwargs["width_mult"] = width
    return kwargs
