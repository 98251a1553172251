"""Configuration of train.py / validate.py: argparse defaults <- YAML recipe (``-c``) <- command line.

Upstream mindcv option names and YAML keys are kept. Unlike upstream, every YAML value is converted
and checked against the option's type and choices (``1e-5`` is a float, ``batch_size: 1.5`` is an
error), unknown YAML keys are rejected by name, and bool / list / tuple options work on the command line
(``--ema true``, ``--scale 0.08 1.0``).
"""

import argparse
import difflib
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from mindcv.errors import InvalidArgumentError, MindcvError
from mindcv.io.atomic import atomic_write

__all__ = [
    "create_parser",
    "parse_args",
    "save_args",
    "str2bool",
    "ConfigError",
    "_check_cfgs_in_parser",
    "architecture_kwargs",
    "explicit_keys",
    "check_args",
    "read_yaml",
    "UniqueKeySafeLoader",
]


_FLOAT32_MAX = 3.4028234663852886e38
_logger = logging.getLogger("mindcv.config")


class ConfigError(MindcvError, ValueError):
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
    convert.kind = kind  # the checks after parsing find float options through it
    return convert


class _ArgumentParser(argparse.ArgumentParser):
    """``allow_abbrev=False`` (``--crop`` is not taken for ``--crop_pct``: the explicit-key detection of
    validate.py and the parser must agree) and a "did you mean" for unrecognized options."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            options = sorted({o for a in self._actions for o in a.option_strings if o.startswith("--")})
            hints = []
            for token in message.split(":", 1)[1].split():
                name = token.split("=", 1)[0]
                if not name.startswith("--") or name in options:
                    continue
                close = [o for o in options if o.startswith(name)] or difflib.get_close_matches(name, options, n=3)
                if close:
                    hints.append(f"{name}: did you mean {' or '.join(close[:3])}?")
            if hints:
                message += " (" + "; ".join(hints) + " options must be spelled out in full)"
        # one line, not the 60-line usage block: the user needs what was wrong and where the list is
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag(group, name: str, default: bool, help_text: str) -> None:
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help_text)


def create_parser() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``(config_parser, parser)``: the first reads only ``-c/--config``, the second every option."""
    parser_config = _ArgumentParser(description="Config", add_help=False, allow_abbrev=False)
    parser_config.add_argument(
        "-c", "--config", type=str, default="", help="YAML recipe; its values become the defaults"
    )
    parser = _ArgumentParser(
        description="mindcv MnasNet training / validation", parents=[parser_config], allow_abbrev=False
    )

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
        "--interpolation",
        type=str,
        default="bilinear",
        choices=["bilinear", "bicubic", "nearest", "area", "pilcubic", "linear", "cubic"],
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
    g.add_argument(
        "--ckpt_save_dir", type=str, default="./outputs/train", help="output folder of the run (one run per folder)"
    )
    _flag(g, "--overwrite", False, "start a new run in a folder holding another run's checkpoints (they are deleted)")
    g.add_argument("--ckpt_save_interval", type=int, default=1)
    g.add_argument("--ckpt_save_policy", type=_none_or(str), default="latest_k", choices=[None, "latest_k", "top_k"])
    g.add_argument("--epoch_size", type=int, default=90, help="number of epochs")
    _flag(
        g,
        "--dataset_sink_mode",
        False,
        "upstream's data sinking, kept for its recipes: not used, the loop feeds one batch per step itself "
        "(True logs a warning; results are the same)",
    )
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
        "--eps",
        type=_none_or(float),
        default=None,
        help="optimizer epsilon (default: upstream's: RMSProp 1e-10, Adam/AdamW 1e-8; the MnasNet recipes set 1e-3)",
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
    g.add_argument(
        "--loss",
        type=str,
        default="CE",
        choices=["CE", "BCE", "ce", "bce", "asl_single_label"],
        help="asl_multi_label (multi-hot targets) and jsd (AugMix's 3 views) need data train.py does not produce",
    )
    g.add_argument("--label_smoothing", type=float, default=0.0)
    g.add_argument("--aux_factor", type=float, default=0.0)
    g.add_argument("--reduction", type=str, default="mean", choices=["mean", "sum"])

    g = parser.add_argument_group("AMP")
    g.add_argument("--amp_level", type=str, default="O0", choices=["O0", "O1", "O2", "O3"])
    g.add_argument(
        "--val_amp_level",
        type=str,
        default="O0",
        choices=["O0", "O1", "O2", "O3"],
        help="mixed precision of validation (validate.py and val_while_train) on GPU/Ascend; must be O0 on the CPU "
        "(fp32) and with onnxruntime",
    )
    g.add_argument("--amp_cast_list", type=_none_or(str), default=None, help="not supported (must be unset)")
    g.add_argument("--loss_scale_type", type=str, default="fixed", choices=["fixed", "dynamic", "auto"])
    g.add_argument("--loss_scale", type=float, default=1.0)
    _flag(g, "--drop_overflow_update", False, "skip updates whose gradients overflowed")
    _flag(g, "--eval_shuffle", False, "shuffle the validation set, seeded by --seed (the metrics do not change)")

    g = parser.add_argument_group("Output")
    g.add_argument(
        "--result_file", type=_none_or(str), default=None, help="validate.py: also write the JSON result here"
    )
    _flag(g, "--random_weights", False, "validate.py: evaluate a model without weights on purpose")
    g.add_argument(
        "--backend",
        type=str,
        default="mindspore",
        choices=["mindspore", "onnxruntime"],
        help="validate.py: onnxruntime scores the deployed graph (the checked, BN-folded ONNX export)",
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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key: Any, line: int, first_line: int, mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r} at line {line} (first at line {first_line})", mark)
        self.key, self.line, self.first_line = key, line, first_line


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping (PyYAML silently keeps the last).

    Keys brought in by a merge (``<<: *anchor``) may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, line, first, key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_error_text(err: yaml.YAMLError) -> str:
    """One line: PyYAML's messages span several lines and quote the input."""
    mark = getattr(err, "problem_mark", None)
    if isinstance(err, yaml.MarkedYAMLError) and mark is not None:
        text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
        if err.context:
            where = f" at line {err.context_mark.line + 1}" if err.context_mark is not None else ""
            text += f" ({err.context}{where})"
        return text
    return " ".join(str(err).split())


def read_yaml(path: str, what: str = "config file") -> Any:
    """Read a YAML file strictly: UTF-8 only, no duplicate keys, every error a one-line :class:`ConfigError`.

    Args:
        path: the file.
        what: how the messages call it.

    Raises:
        ConfigError: missing or unreadable file, bytes that are not UTF-8 (with the byte offset), invalid YAML
            (with line and column), a key repeated in one mapping (with both lines).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what} '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(f"{what} '{path}' cannot be read: {err.strerror or err}") from None
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark is allowed
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + skip
        raise ConfigError(
            f"{what} '{path}' is not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} "
            f"({err.reason}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=UniqueKeySafeLoader)
    except DuplicateKeyError as err:
        raise ConfigError(
            f"{what} '{path}': key {err.key!r} is given twice (line {err.first_line} and line {err.line}); " "keep one"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {_yaml_error_text(err)}") from None
    except RecursionError:
        raise ConfigError(f"{what} '{path}' is nested too deeply") from None


def load_yaml(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read, check and convert a YAML recipe."""
    cfg = read_yaml(path)
    if cfg is None:
        cfg = {}
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


# -- checks of the final values (YAML and command line alike) ------------------------------------------------------
def _each(pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A predicate on every element of a list option (or on a single value)."""
    return lambda v: all(x is None or pred(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


def _ordered_positive(v) -> bool:
    return len(v) == 2 and 0 < v[0] <= v[1]


# option -> (valid?, what is valid); ``None`` values (unset optional options) are not checked
_RANGES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    **{
        key: (lambda v: v >= 1, "an integer >= 1")
        for key in (
            "batch_size",
            "epoch_size",
            "num_parallel_workers",
            "val_interval",
            "ckpt_save_interval",
            "keep_checkpoint_max",
            "gradient_accumulation_steps",
            "image_resize",
            "num_samples",
            "num_classes",
            "in_channels",
            "num_cycles",
        )
    },
    "log_interval": (lambda v: v >= 0, "an integer >= 0 (0: no log lines)"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "aug_repeats": (lambda v: v >= 0, "an integer >= 0"),
    **{
        key: (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")
        for key in ("hflip", "vflip", "re_prob", "cutmix_prob")
    },
    "label_smoothing": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "crop_pct": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "loss_scale": (lambda v: v > 0, "> 0"),
    "clip_value": (lambda v: v > 0, "> 0"),
    "ema_decay": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "bn_momentum": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (MindSpore convention, e.g. 0.99)"),
    "drop_rate": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "drop_path_rate": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, "an integer >= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v >= 0, "a finite number >= 0"),
    "min_lr": (lambda v: v >= 0, "a finite number >= 0"),
    "warmup_factor": (lambda v: v >= 0, "a finite number >= 0"),
    "decay_epochs": (lambda v: v > 0, "> 0"),
    "mixup": (lambda v: v >= 0, ">= 0 (0: off)"),
    "cutmix": (lambda v: v >= 0, ">= 0 (0: off)"),
    "eps": (lambda v: v > 0, "> 0"),
    "bn_eps": (lambda v: v > 0, "> 0"),
    "width_mult": (lambda v: v > 0, "> 0"),
    "scale": (_ordered_positive, "two numbers 0 < min <= max"),
    "ratio": (_ordered_positive, "two numbers 0 < min <= max"),
    "re_scale": (_ordered_positive, "two numbers 0 < min <= max"),
    "re_ratio": (_ordered_positive, "two numbers 0 < min <= max"),
    "color_jitter": (_each(lambda x: x >= 0), "numbers >= 0"),
    "std": (_each(lambda x: x > 0), "numbers > 0"),
    "multi_step_decay_milestones": (_each(lambda x: x >= 0), "epochs >= 0"),
}


def _float_kind(action: argparse.Action) -> bool:
    return action.type is float or getattr(action.type, "kind", None) is float


def check_args(args: argparse.Namespace, sources: Optional[Dict[str, str]] = None) -> None:
    """Check the final values of the options (after YAML and command line are merged).

    Every float option must be finite; the options of :data:`_RANGES` must lie in their range; ``model``
    must be a registered model; ``val_amp_level`` must be O0 on the CPU and with onnxruntime. Upstream's
    ``dataset_sink_mode: True`` is accepted (its recipes set it) with one warning that it is not used.

    Args:
        args: the parsed options.
        sources: option -> where its value came from (a YAML path or ``command line``), for the messages.

    Raises:
        ConfigError: naming the option, its value, where it was set and what is valid.
    """
    sources = sources or {}

    def fail(key: str, value: Any, valid: str) -> None:
        where = sources.get(key, "default")
        raise ConfigError(f"{where}: '{key}' must be {valid}, got {value!r}")

    _, parser = create_parser()
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value is None or not _float_kind(action):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        # the network computes in float32: 1e300 is finite here and infinite there
        if any(v is not None and not (math.isfinite(v) and abs(v) <= _FLOAT32_MAX) for v in values):
            fail(
                action.dest,
                value,
                f"a finite number of magnitude <= {_FLOAT32_MAX:.4g} (float32)"
                + (" (or a list of them)" if action.nargs else ""),
            )
    for key, (valid, text) in _RANGES.items():
        value = getattr(args, key, None)
        if value is not None and not valid(value):
            fail(key, value, text)
    if args.val_amp_level != "O0":
        where = sources.get("val_amp_level", "default")
        if args.device_target == "CPU":
            raise ConfigError(
                f"{where}: 'val_amp_level' must be O0 on the CPU, got {args.val_amp_level!r}: the CPU validates in "
                "fp32 as it trains (MindSpore 2.10's CPU fp16 kernels are slower than fp32 and overflow); "
                "O1/O2/O3 apply on GPU/Ascend"
            )
        if args.backend == "onnxruntime":
            raise ConfigError(
                f"{where}: 'val_amp_level' must be O0 with backend onnxruntime, got {args.val_amp_level!r}: "
                "the exported graph computes in float32"
            )
    if args.dataset_sink_mode:
        _logger.warning(
            "%s: dataset_sink_mode True is not used: mindcv's loop feeds one batch per step itself, so sinking would "
            "change only the speed, not the results; set it to False (or remove it) to silence this warning",
            sources.get("dataset_sink_mode", "default"),
        )
    _check_model(args.model, sources.get("model", "default"))


def _check_model(model: str, where: str) -> None:
    """``model`` (optionally ``name.tag``) must be registered (imports mindcv, hence MindSpore)."""
    from mindcv.models.model_factory import split_model_name_tag
    from mindcv.models.registry import get_pretrained_cfg, is_model, list_models

    name, tag = split_model_name_tag(model)
    if not is_model(name):
        close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{where}: 'model' must be a registered model name, got {model!r}{hint} "
            f'(list them with mindcv.list_models(): python -c "import mindcv; print(mindcv.list_models())")'
        )
    if tag:
        try:
            get_pretrained_cfg(name, tag)
        except InvalidArgumentError as err:
            raise ConfigError(f"{where}: 'model' {model!r}: {err}") from None


# -- parsing -------------------------------------------------------------------------------------------------------
_UNSET = object()  # default of every option when finding the options given on the command line


def _command_line_keys(remaining: Sequence[str]) -> List[str]:
    """Options that the command line sets, as argparse itself matched them (``--key value``, ``--key=value``,
    a bare ``--flag``): parse with every default replaced by a sentinel and keep what is not the sentinel."""
    _, parser = create_parser()
    parser.set_defaults(**{a.dest: _UNSET for a in parser._actions if a.default is not argparse.SUPPRESS})
    parsed = parser.parse_args(list(remaining))
    return [k for k, v in vars(parsed).items() if v is not _UNSET and k != "config"]


def _parse(args: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Dict[str, str]]:
    """The merged options and, for every explicitly set option, its source (YAML path or ``command line``)."""
    parser_config, parser = create_parser()
    known, remaining = parser_config.parse_known_args(args)
    sources: Dict[str, str] = {}
    if known.config:
        cfg = load_yaml(known.config, parser)
        parser.set_defaults(**cfg)
        parser.set_defaults(config=known.config)
        sources.update((k, known.config) for k in cfg)
    parsed = parser.parse_args(remaining)
    if isinstance(parsed.color_jitter, list) and len(parsed.color_jitter) == 1:
        parsed.color_jitter = parsed.color_jitter[0]
    parsed.resume = bool(parsed.resume or parsed.resume_opt)
    sources.update((k, "command line") for k in _command_line_keys(remaining))
    return parsed, sources


def parse_args(args: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``args`` (default: ``sys.argv``): code defaults, then the ``-c`` YAML, then the command line.

    The final values are checked (:func:`check_args`), whether they came from the YAML or the command line.

    Raises:
        ConfigError: an unreadable or invalid YAML (not UTF-8, duplicate or unknown key, wrong type, bad
            choice), or a final value out of its range, not finite, or an unknown model.
        SystemExit: argparse's error on the command line itself (unknown or abbreviated option, bad value).
    """
    parsed, sources = _parse(args)
    check_args(parsed, sources)
    return parsed


def save_args(args: argparse.Namespace, filepath: str, rank: Optional[int] = 0) -> None:
    """Write the effective configuration as YAML (on rank 0, or when not distributed)."""
    if rank not in (0, None):
        return
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())}
    with atomic_write(filepath) as f:
        yaml.safe_dump(values, f, default_flow_style=False, sort_keys=True)


def parser_defaults() -> Dict[str, Any]:
    """The code defaults of every option (used to tell explicit settings from defaults)."""
    _, parser = create_parser()
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def explicit_keys(args: Optional[Sequence[str]] = None) -> List[str]:
    """Options set by the YAML recipe or the command line (not left at their code default).

    Derived from the parsers themselves, not by scanning tokens: YAML keys as loaded, command-line options as
    argparse matched them (``--key value``, ``--key=value``, bare flags; abbreviations are rejected).
    """
    _, sources = _parse(args)
    return list(sources)


def architecture_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``arch`` / ``width_mult`` for ``create_model`` when train.py builds a model from the options.

    Only ``mnasnet_arch`` takes them (the zoo variants fix their architecture and width). Models built from
    weights get theirs from :func:`mindcv.models.loading.load_model`.
    """
    if args.model != "mnasnet_arch":
        if args.arch is not None or args.width_mult is not None:
            raise ConfigError(f"arch / width_mult apply to model 'mnasnet_arch' only, not '{args.model}'")
        return {}
    if not args.arch:
        raise ConfigError("model 'mnasnet_arch' needs --arch (an architecture string or a search.py top-k file)")
    kwargs: Dict[str, Any] = {"arch": args.arch}
    if args.width_mult is not None:
        kwargs["width_mult"] = args.width_mult
    return kwargs
