"""Platform-aware neural architecture search (MNAS) on MindSpore.

    python search.py -c configs/nas/demo_search.yaml                 # run, or resume after a crash / kill
    python search.py -c configs/nas/demo_search.yaml --restart       # discard the saved state
    python search.py -c configs/nas/demo_search.yaml --calibrate_lut 40 --validate_lut 50   # latency model check

Candidates from the factorized hierarchical search space are trained briefly on the proxy task (or, with
``evaluation: supernet``, scored with the weights of one supernet trained once on it), timed on this machine,
and rewarded with ACC x (LAT/T)^w or ACC + beta |LAT/T - 1|; reinforcement learning, random search and
regularized evolution take turns at the same budget. Outputs in ``output_dir``: ``candidates.csv``, ``pareto.png``,
``reward_curve.png``, ``top<k>.json`` (load with ``create_model("mnasnet_arch", arch="top1.json")``, or
train with ``python train.py -c <recipe> --model mnasnet_arch --arch top1.json``), ``summary.json``.
"""

import argparse
import collections.abc
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from typing import Any, Dict, List, Optional

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import numpy as np

import mindspore as ms

from config import ConfigError, read_yaml
from mindcv.errors import InvalidArgumentError
from mindcv.nas.proxy import ProxyConfig
from mindcv.nas.reward import REWARD_KINDS
from mindcv.nas.runner import (
    EVALUATIONS,
    LatencyConfig,
    RewardConfig,
    SearchConfig,
    calibrate_lut,
    run_search,
    validate_lut,
)
from mindcv.nas.search_space import SearchSpace
from mindcv.nas.strategies import STRATEGIES, check_strategy_settings, create_strategy
from mindcv.nas.supernet_proxy import SupernetConfig
from mindcv.utils.cli import call_cli
from mindcv.utils.logger import ConsoleHandler

SECTIONS = {"proxy": ProxyConfig, "latency": LatencyConfig, "reward": RewardConfig, "supernet": SupernetConfig}

# key -> (valid?, what is valid), per section ("" is the top level); checked after the types
_RANGES = {
    "": {
        "budget": (lambda v: v >= 1, ">= 1 (candidates per strategy)"),
        "top_k": (lambda v: v >= 0, ">= 0"),
        "seed": (lambda v: v >= 0, ">= 0"),
        "confirm_seeds": (lambda v: all(s >= 0 for s in v), "a list of seeds >= 0"),
        "evaluation": (lambda v: v in EVALUATIONS, f"one of {list(EVALUATIONS)}"),
    },
    "proxy": {
        "image_size": (lambda v: v >= 8, ">= 8"),
        "holdout": (lambda v: 0 <= v < 1, "in [0, 1) (0: score on val_split)"),
        "num_samples": (lambda v: v >= 0, ">= 0 (0: all)"),
        "epochs": (lambda v: v >= 1, ">= 1"),
        "batch_size": (lambda v: v >= 1, ">= 1"),
        "lr": (lambda v: v >= 0, ">= 0"),
        "warmup_epochs": (lambda v: v >= 0, ">= 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "width_mult": (lambda v: v > 0, "> 0"),
        "drop_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "bn_momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "seed": (lambda v: v >= 0, ">= 0"),
        "mode": (lambda v: v in ("graph", "pynative"), "'graph' or 'pynative'"),
    },
    "latency": {
        "mode": (lambda v: v in ("measured", "lut"), "'measured' or 'lut'"),
        "resolution": (lambda v: v >= 8, ">= 8"),
        "threads": (lambda v: v >= 0, ">= 0 (0: MindSpore's default)"),
        "warmup": (lambda v: v >= 0, ">= 0"),
        "repeats": (lambda v: v >= 1, ">= 1"),
        "target_ms": (lambda v: v is None or v > 0, "> 0 or null (the latency of MnasNet-B1)"),
        "calibration_archs": (lambda v: v == 0 or v >= 8, "0 (no calibration) or >= 8 architectures"),
    },
    "reward": {"constraint": (lambda v: v in REWARD_KINDS, f"one of {list(REWARD_KINDS)}")},
    "supernet": {
        "epochs": (lambda v: v >= 1, ">= 1"),
        "recalibration_images": (lambda v: v >= 2, ">= 2 (BatchNorm needs a batch)"),
        "file": (
            lambda v: v.endswith((".ckpt", ".safetensors")) and os.path.basename(v) == v,
            "a .ckpt or .safetensors file name",
        ),
    },
}


_PLURALS = {int: "integers", float: "finite numbers", str: "strings"}


def _type_error(value: Any, hint: Any) -> str:
    """What is wrong with ``value`` for the annotation ``hint`` ("" if it fits)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return ""
        return _type_error(value, next(a for a in args if a is not type(None)))
    if hint is Any:
        return ""
    if hint is bool:
        return "" if isinstance(value, bool) else "true or false"
    if hint is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        return "" if math.isfinite(value) else "a finite number"
    if hint is str:
        return "" if isinstance(value, str) else "a string"
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            return "a list"
        if any(_type_error(v, args[0]) for v in value):
            return f"a list of {_PLURALS.get(args[0], 'values')}"
        return ""
    if origin is dict:
        if not isinstance(value, dict):
            return "a mapping"
        if not all(isinstance(k, str) for k in value):
            return "a mapping with string keys"
        return ""
    return ""


def _build(cls, values: Any, path: str, section: str = "") -> Dict[str, Any]:
    """Check a mapping against the dataclass ``cls``: known keys, value types, ranges (``section``: its key)."""
    name = f"'{section}'" if section else "the top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {name} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in {name}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    prefix = f"{section}." if section else ""
    for key, value in values.items():
        if key in SECTIONS and not section:
            continue
        problem = _type_error(value, hints[key])
        if problem:
            raise ConfigError(f"{path}: '{prefix}{key}' must be {problem}, got {value!r}")
        check = _RANGES.get(section, {}).get(key)
        if check is not None and value is not None and not check[0](value):
            raise ConfigError(f"{path}: '{prefix}{key}' must be {check[1]}, got {value!r}")
    return values


def _check_space_and_strategies(cfg: SearchConfig, where: str) -> None:
    """Build the search space and every strategy once, so that a bad setting fails now, naming its key."""
    unknown = sorted(set(cfg.strategies) - set(STRATEGIES), key=str)
    if unknown or not cfg.strategies:
        raise ConfigError(f"{where}: 'strategies' must name some of {sorted(STRATEGIES)}, got {sorted(cfg.strategies)}")
    _build(SearchSpace, cfg.space, where, "space")
    # the types are checked above: what the constructors still reject is a user error (InvalidArgumentError);
    # anything else they raise is a bug and keeps its traceback
    try:
        space = SearchSpace(**cfg.space)
        for decisions in ([0] * len(space.num_choices), [n - 1 for n in space.num_choices]):
            space.arch_string(decisions)
        space.sample(np.random.default_rng(0))
    except InvalidArgumentError as err:
        raise ConfigError(f"{where}: 'space' is invalid: {' '.join(str(err).split())}") from None
    for name, kwargs in cfg.strategies.items():
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: 'strategies.{name}' must be a mapping of settings, got {kwargs!r}")
        try:
            check_strategy_settings(name, kwargs or {})
        except InvalidArgumentError as err:
            raise ConfigError(f"{where}: 'strategies.{name}' is invalid: {' '.join(str(err).split())}") from None
        hints = typing.get_type_hints(STRATEGIES[name].__init__)
        for key, value in (kwargs or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: 'strategies.{name}.{key}' must be a finite number, got {value!r}")
            problem = _type_error(value, hints[key])
            if problem:
                raise ConfigError(f"{where}: 'strategies.{name}.{key}' must be {problem}, got {value!r}")
        try:
            create_strategy(name, space, seed=0, **(kwargs or {}))
        except InvalidArgumentError as err:
            raise ConfigError(f"{where}: 'strategies.{name}' is invalid: {' '.join(str(err).split())}") from None


def load_config(path: str, overrides: Dict[str, Any], proxy_overrides: Optional[Dict[str, Any]] = None) -> SearchConfig:
    """Read a search YAML strictly: unknown keys and wrong sections are errors that name the key.

    Also rejected, each as one line (:class:`~config.ConfigError`, a ValueError): a file that is missing or not
    UTF-8 (with the byte offset), invalid YAML, a key given twice (with both lines), a value of the wrong type,
    out of range or not finite, an invalid search space or strategy setting.
    """
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    _build(SearchConfig, raw, path)
    kwargs = dict(raw)
    for section, cls in SECTIONS.items():
        values = raw.get(section)
        values = {} if values is None else values
        if section == "proxy" and isinstance(values, dict):  # anything else is reported by _build
            values = {**values, **{k: v for k, v in (proxy_overrides or {}).items() if v is not None}}
        kwargs[section] = cls(**_build(cls, values, path, section))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    _build(SearchConfig, {k: v for k, v in kwargs.items() if k not in SECTIONS}, path)
    cfg = SearchConfig(**kwargs)
    if cfg.proxy.warmup_epochs >= cfg.proxy.epochs:
        raise ConfigError(
            f"{path}: 'proxy.warmup_epochs' ({cfg.proxy.warmup_epochs}) must be smaller than 'proxy.epochs' "
            f"({cfg.proxy.epochs})"
        )
    try:
        cfg.reward.function()
    except InvalidArgumentError as err:
        raise ConfigError(f"{path}: 'reward' is invalid: {err}") from None
    _check_space_and_strategies(cfg, path)
    return cfg


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``search.py`` with ``argv``; returns the exit code.

    User errors (a bad or missing config, a corrupted state file: :class:`~mindcv.errors.MindcvError` and path
    errors) print one line and return 2; any other exception is a bug and propagates with its traceback.
    """
    return call_cli("search.py", _search, argv)


def _search(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("-c", "--config", required=True, help="search YAML (see configs/nas/)")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--budget", type=int, default=None, help="candidates per strategy")
    parser.add_argument("--dataset", default=None, help="proxy dataset (overrides proxy.dataset)")
    parser.add_argument("--data_dir", default=None, help="proxy dataset root (overrides proxy.data_dir)")
    parser.add_argument("--restart", action="store_true", help="discard a saved search state and start over")
    parser.add_argument(
        "--calibrate_lut",
        type=int,
        default=0,
        metavar="N",
        help="fit the lookup table to whole-network latencies of N random architectures (>= 40 recommended)",
    )
    parser.add_argument(
        "--validate_lut", type=int, default=0, metavar="N", help="LUT vs measured latency on N held-out architectures"
    )
    parser.add_argument(
        "--gate",
        type=int,
        nargs="?",
        const=20,
        default=0,
        metavar="N",
        help="judge the proxy: N random architectures (20) + B1 and A1 trained stand-alone on 2 seeds",
    )
    parser.add_argument(
        "--validate_supernet",
        type=int,
        default=0,
        metavar="N",
        help="Kendall tau of the supernet's estimates against stand-alone training on N held-out architectures",
    )
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=[ConsoleHandler()])
    ms.set_device("CPU")
    cfg = load_config(
        args.config,
        {"output_dir": args.output_dir, "budget": args.budget},
        {"dataset": args.dataset, "data_dir": args.data_dir},
    )
    if args.calibrate_lut:
        c = calibrate_lut(cfg, args.calibrate_lut, progress=not args.no_progress)
        cal = c["calibration"]
        loo = cal["loo_mape_percent"][cal["form"]]
        print(
            f"lookup table calibrated on {cal['num_archs']} architectures: {cal['form']} form "
            f"(leave-one-out MAPE {loo:.1f}%; raw table {c['raw_mape_percent']:.1f}%), "
            f"B1 re-timed {len(c['drift']['b1_times_ms'])}x: range {c['drift']['b1_range_percent']:.1f}%; "
            f"stored in {cfg.output_dir}/latency_lut.json, report lut_calibration.json"
        )
    if args.validate_lut:
        r = validate_lut(cfg, args.validate_lut, progress=not args.no_progress)
        t = r["targets"]
        print(
            f"lookup table ({'calibrated' if r['calibrated'] else 'NOT calibrated'}) vs measured on {r['num_archs']} "
            f"held-out architectures: MAPE {r['mape_percent']:.1f}% (target <= {t['mape_percent_max']}), "
            f"{r['within_10_percent']:.0f}% within +-10% (target >= {t['within_10_percent_min']}), Kendall tau "
            f"{r['kendall_tau']:.3f} (target >= {t['kendall_tau_min']}); raw table: MAPE "
            f"{r['raw_mape_percent']:.1f}%, tau {r['raw_kendall_tau']:.3f}; without the drift correction MAPE "
            f"{r['uncorrected']['mape_percent']:.1f}%; "
            f"B1 range {r['drift']['b1_range_percent']:.1f}%: "
            f"{'PASSED' if r['passed'] else 'FAILED'} ({cfg.output_dir}/lut_report.json)"
        )
    if args.calibrate_lut or args.validate_lut:
        return 0
    if args.gate or args.validate_supernet:
        return _check_accuracy_estimates(cfg, args)
    summary = run_search(cfg, restart=args.restart, progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("target_ms", "strategies", "top", "beats_b1")}, indent=1))
    print(f"outputs in {cfg.output_dir}: candidates.csv, summary.json, top*.json, pareto.png, reward_curve.png")
    return 0


def _check_accuracy_estimates(cfg: SearchConfig, args) -> int:
    """``--gate`` and ``--validate_supernet``: the measurements that say whether a search means anything."""
    from mindcv.nas.fidelity import proxy_gate, supernet_fidelity
    from mindcv.nas.proxy import ProxyTask
    from mindcv.nas.supernet_proxy import SupernetProxy

    os.makedirs(cfg.output_dir, exist_ok=True)
    proxy, space, progress = ProxyTask(cfg.proxy), SearchSpace(**cfg.space), not args.no_progress
    if args.gate:
        g = proxy_gate(proxy, space, cfg.output_dir, num_archs=args.gate, progress=progress)
        print(
            f"proxy gate on {g['num_archs']} architectures x seeds {g['seeds']}: seed sd {g['seed_sd']:.2f} points "
            f"(target <= {g['targets']['seed_sd_max']}), spread sd {g['spread_sd']:.2f} "
            f"({g['spread_ratio']:.1f}x the seed sd, target >= {g['targets']['spread_ratio_min']}x), "
            f"Spearman(accuracy, depth) {g['depth_spearman']:.2f} (target |.| < {g['targets']['depth_spearman_max']}), "
            f"A1 - B1 {g['a1_minus_b1']:+.2f} points: {'PASSED' if g['passed'] else 'FAILED'} "
            f"({cfg.output_dir}/gate_report.json)"
        )
    if args.validate_supernet:
        supernet = SupernetProxy(proxy, space, cfg.supernet, cfg.output_dir)
        supernet.train(progress=progress)
        f = supernet_fidelity(
            supernet, proxy, space, cfg.output_dir, num_archs=args.validate_supernet, progress=progress
        )
        print(
            f"supernet vs stand-alone on {f['num_archs']} architectures: Kendall tau {f['kendall_tau']:.3f} "
            f"(random ones only: {f['kendall_tau_random_only']:.3f}), Spearman {f['spearman']:.3f}; "
            f"{f['score_seconds_median']:.2f} s per candidate ({cfg.output_dir}/supernet_fidelity.json)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
