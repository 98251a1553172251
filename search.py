"""Platform-aware neural architecture search (MNAS) on MindSpore.

    python search.py -c configs/nas/demo_search.yaml                 # run, or resume after a crash / kill
    python search.py -c configs/nas/demo_search.yaml --restart       # discard the saved state
    python search.py -c configs/nas/demo_search.yaml --validate_lut 20   # lookup table vs measured latency

Candidates from the factorized hierarchical search space are trained briefly on the proxy task, timed on
this machine, and rewarded with ACC x (LAT/T)^w; reinforcement learning, random search and regularized
evolution take turns at the same budget. Outputs in ``output_dir``: ``candidates.csv``, ``pareto.png``,
``reward_curve.png``, ``top<k>.json`` (load with ``create_model("mnasnet_arch", arch="top1.json")``, or
train with ``python train.py -c <recipe> --model mnasnet_arch --arch top1.json``), ``summary.json``.
"""

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any, Dict

import yaml

import mindspore as ms

from mindcv.nas.proxy import ProxyConfig
from mindcv.nas.runner import LatencyConfig, RewardConfig, SearchConfig, run_search, validate_lut

SECTIONS = {"proxy": ProxyConfig, "latency": LatencyConfig, "reward": RewardConfig}


def _build(cls, values: Dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ValueError(f"'{where}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in '{where}'; valid: {sorted(fields)}")
    return values


def load_config(path: str, overrides: Dict[str, Any]) -> SearchConfig:
    """Read a search YAML strictly: unknown keys and wrong sections are errors that name the key."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ValueError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file '{path}' is not valid YAML: {err}") from None
    _build(SearchConfig, raw, path)
    kwargs = dict(raw)
    for section, cls in SECTIONS.items():
        kwargs[section] = cls(**_build(cls, raw.get(section) or {}, f"{path}: {section}"))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return SearchConfig(**kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="search YAML (see configs/nas/)")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--budget", type=int, default=None, help="candidates per strategy")
    parser.add_argument("--restart", action="store_true", help="discard a saved search state and start over")
    parser.add_argument("--validate_lut", type=int, default=0, metavar="N", help="compare LUT and measured latency")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ms.set_device("CPU")
    try:
        cfg = load_config(args.config, {"output_dir": args.output_dir, "budget": args.budget})
        if args.validate_lut:
            report = validate_lut(cfg, args.validate_lut, progress=not args.no_progress)
            print(
                f"lookup table vs measured on {report['num_archs']} random architectures: "
                f"MAPE {report['mape_percent']:.1f}% "
                f"(calibrated on B1: {report['mape_percent_calibrated_on_b1']:.1f}%), "
                f"Spearman {report['spearman']:.3f}; wrote {cfg.output_dir}/lut_report.json"
            )
            return 0
        summary = run_search(cfg, restart=args.restart, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"search.py: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("target_ms", "strategies", "top", "beats_b1")}, indent=1))
    print(f"outputs in {cfg.output_dir}: candidates.csv, summary.json, top*.json, pareto.png, reward_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
