"""Which proxy settings make stand-alone accuracy low-noise: a few architectures x seeds per setting, side by side.

    python benchmarks/bench_proxy_sweep.py --archs b1,a1 --seeds 0,1 \
        --setting "dataset=demo,epochs=6,lr=0.002" --setting "dataset=demo_large,epochs=6,lr=0.004"

Each ``--setting`` overrides fields of ``configs/nas/quick.yaml``'s proxy (any :class:`ProxyConfig` field). For
every setting it prints each architecture's accuracy per seed, the pooled seed-to-seed sd, the spread of the
architecture means and the seconds per training, and appends one JSON line per setting to ``--out``. This is
the measurement behind the proxy passing (or not) ``search.py --gate``: it shows what a setting costs and how
much noise it leaves before a 45-training gate is spent on it.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

import mindspore as ms  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_setting(text: str, types: dict) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown proxy field '{key}'; valid: {', '.join(sorted(types))}")
        out[key] = types[key](value) if value.lower() not in ("none", "null") else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", required=True, help="comma-separated field=value overrides")
    parser.add_argument("--archs", default="b1,a1", help="b1, a1 and/or rand<N> (N random architectures)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=None, help="JSON-lines file the results are appended to")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    from mindcv.models.arch import format_arch_string
    from mindcv.models.mnasnet import ARCH_DEFS
    from mindcv.nas.fidelity import depth_of, random_archs
    from mindcv.nas.proxy import ProxyConfig, ProxyTask
    from mindcv.nas.search_space import SearchSpace

    base = yaml.safe_load(open(os.path.join(REPO, "configs", "nas", "quick.yaml")))["proxy"]
    types = {f.name: (str if f.default is None else type(f.default)) for f in fields(ProxyConfig)}
    seeds = [int(s) for s in args.seeds.split(",")]
    archs = []
    for name in args.archs.split(","):
        if name in ARCH_DEFS:
            archs.append((name, format_arch_string(ARCH_DEFS[name])))
        elif name.startswith("rand"):
            drawn = random_archs(SearchSpace(), int(name[4:]), 4321)
            archs += [(f"rand{i}", a) for i, a in enumerate(drawn)]
        else:
            raise SystemExit(f"unknown architecture '{name}': b1, a1 or rand<N>")
    for text in args.setting:
        config = ProxyConfig(**{**base, **parse_setting(text, types)})
        proxy = ProxyTask(config)
        print(proxy.describe(), flush=True)
        acc, secs = np.zeros((len(archs), len(seeds))), []
        for i, (name, arch) in enumerate(archs):
            for j, seed in enumerate(seeds):
                start = time.perf_counter()
                acc[i, j] = proxy.evaluate(arch, seed=seed)["accuracy"]
                secs.append(time.perf_counter() - start)
            print(f"  {name:8s} depth {depth_of(arch):2d}: " + " ".join(f"{a:5.1f}" for a in acc[i]), flush=True)
        seed_sd = float(np.sqrt(np.mean(acc.var(axis=1, ddof=1)))) if len(seeds) > 1 else float("nan")
        spread = float(acc.mean(axis=1).std(ddof=1)) if len(archs) > 1 else float("nan")
        row = {
            "setting": text,
            "config": asdict(config),
            "archs": [n for n, _ in archs],
            "seeds": seeds,
            "accuracy": acc.tolist(),
            "seed_sd": seed_sd,
            "spread_sd": spread,
            "seconds_per_training": float(np.median(secs)),
        }
        print(f"  seed sd {seed_sd:.2f}, spread sd {spread:.2f}, {np.median(secs):.0f} s per training", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
