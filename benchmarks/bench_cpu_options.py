"""MindSpore CPU settings side by side: instruction-set caps, jit levels, thread counts.

    python benchmarks/bench_cpu_options.py --model mnasnet_100 --batch 32 --rounds 2 \
        --out benchmarks/results/cpu_options.md

Each setting runs in its own process (oneDNN fixes its instruction set, and MindSpore its thread count, once
per process) measuring GRAPH inference (BatchNorm folded) and a GRAPH training step (RMSProp) at the same
batch. The settings run in turn, ``--rounds`` times in rotated order, and each setting's median is compared
with "as shipped" (what ``import mindcv`` chooses) and with MindSpore's own default (``MINDCV_AUTO_CPU_ISA=0``),
so machine noise hits all of them alike. Settings:

* ``as shipped``: mindcv's measured instruction-set choice, MindSpore's default jit level and threads;
* ``MindSpore default``: no instruction-set cap (the selection turned off);
* ``cap X``: ``ONEDNN_MAX_CPU_ISA=X`` for AVX2 and every lower level worth trying on this CPU;
* ``jit O1`` / ``jit O2``: ``set_context(jit_config={"jit_level": ...})`` (O1 adds graph-kernel fusion);
* ``1 thread``: ``ms.device_context.cpu.op_tuning.threads_num(1)``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def settings() -> Dict[str, dict]:
    from mindcv.utils.cpu_isa import candidate_caps

    found = {
        "as shipped": {},
        "MindSpore default": {"env": {"MINDCV_AUTO_CPU_ISA": "0"}},
    }
    for cap in list(dict.fromkeys(candidate_caps() + ["AVX2"])):
        found[f"cap {cap}"] = {"env": {"ONEDNN_MAX_CPU_ISA": cap}}
    found["jit O1"] = {"jit_level": "O1"}
    found["jit O2"] = {"jit_level": "O2"}
    found["1 thread"] = {"threads": 1}
    return found


def child(setting: dict, model_name: str, batch: int, size: int, repeats: int) -> dict:
    """Runs in the child process: apply ``setting`` and time inference and a training step."""
    import numpy as np
    from bench_train import build_train_step

    import mindspore as ms

    from mindcv.models import create_model
    from mindcv.models.fuse import fuse_bn
    from mindcv.utils.cpu_isa import cpu_isa_summary

    ms.set_device("CPU")
    if "jit_level" in setting:
        ms.set_context(jit_config={"jit_level": setting["jit_level"]})
    if "threads" in setting:
        ms.device_context.cpu.op_tuning.threads_num(setting["threads"])
    ms.set_context(mode=ms.GRAPH_MODE)
    model = create_model(model_name)
    fuse_bn(model)
    model.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))

    def best_of(fn) -> float:
        fn()  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    infer_s = best_of(lambda: model(x).asnumpy())
    train_s = best_of(build_train_step(model_name, ms.GRAPH_MODE, batch, size))
    return {"infer_img_s": batch / infer_s, "train_img_s": batch / train_s, "isa": cpu_isa_summary()}


def run_setting(name: str, setting: dict, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env.pop("MINDCV_CPU_ISA_CHOSEN", None)
    env.update(setting.get("env", {}), GLOG_v="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(setting), "--model", args.model]
    cmd += ["--batch", str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"setting '{name}' failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="names of the settings to run (default: all)")
    parser.add_argument("--out", default="benchmarks/results/cpu_options.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = child(json.loads(args.child), args.model, args.batch, args.size, args.repeats)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from report import write_report

    from mindcv.runtime import environment_line

    chosen = settings()
    if args.only:
        unknown = [n for n in args.only if n not in chosen]
        if unknown:
            raise SystemExit(f"unknown setting(s) {unknown}; valid: {list(chosen)}")
        chosen = {n: chosen[n] for n in chosen if n in args.only or n in ("as shipped", "MindSpore default")}
    names = list(chosen)
    runs: Dict[str, List[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate so no setting always runs first
        for name in order:
            print(f"round {r + 1}/{args.rounds}: {name}", flush=True)
            runs[name].append(run_setting(name, chosen[name], args))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    base, stock = "as shipped", "MindSpore default"
    lines = [
        f"{args.model}, batch {args.batch}, {args.size}x{args.size}, fp32, GRAPH mode; median img/s of {args.rounds} "
        f"rounds (each {args.repeats} timed calls), every setting in its own process.",
        "",
        f"Host: {environment_line()}",
        "",
        "| setting | oneDNN level | inference img/s (min-max) | vs shipped | vs MindSpore default "
        "| train img/s (min-max) | vs shipped | vs MindSpore default |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        row = [name, runs[name][0]["isa"]["cpu_isa_effective"]]
        for key in ("infer_img_s", "train_img_s"):
            value = median(name, key)
            low, high = min(run[key] for run in runs[name]), max(run[key] for run in runs[name])
            row += [
                f"{value:.1f} ({low:.1f}-{high:.1f})",
                f"{value / median(base, key):.2f}x",
                f"{value / median(stock, key):.2f}x",
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Settings that are the same on this CPU (for example a cap at the level oneDNN already uses) show the "
        "run-to-run noise; a difference smaller than that is not a finding.",
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
