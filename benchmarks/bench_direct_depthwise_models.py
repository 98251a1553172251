"""Whole models with the direct depthwise kernels against MindSpore's, in one process, rounds interleaved.

    python benchmarks/bench_direct_depthwise_models.py --out benchmarks/results/direct_depthwise_models.md

For each model: BN-folded inference at batch 1 (latency) and batch 32, and an RMSProp training step at batch
32, all GRAPH mode fp32 224 px. Two instances with the same weights, one switched to MindSpore's depthwise
convolution (``mindcv.kernels.use_direct_depthwise``); every round times both, in alternating order, so that
the machine's drift hits both alike. Printed per case: the median time of each and the ratio's median and
range over the rounds (a ratio > 1 means the direct kernels are faster).
"""

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train import build_train_step  # noqa: E402
from report import write_report  # noqa: E402

import mindspore as ms  # noqa: E402

from mindcv.kernels import depthwise_kernel_status, use_direct_depthwise  # noqa: E402
from mindcv.models import create_model  # noqa: E402
from mindcv.models.fuse import fuse_bn  # noqa: E402
from mindcv.runtime import environment_line  # noqa: E402


def inference_call(model_name: str, direct: bool, batch: int, size: int) -> Callable[[], object]:
    ms.set_seed(0)
    model = create_model(model_name)
    fuse_bn(model)
    use_direct_depthwise(model, direct)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    return lambda: model(x).asnumpy()


def median_ms(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def compare(calls: Dict[str, Callable[[], object]], rounds: int, per_round: int) -> Dict[str, List[float]]:
    for fn in calls.values():
        fn()  # compile
        fn()
    times: Dict[str, List[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(median_ms(calls[name], per_round))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mnasnet_050", "mnasnet_100"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/direct_depthwise_models.md")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    status = depthwise_kernel_status()
    if status.library is None:
        raise SystemExit(f"the direct depthwise kernels are not available here: {status.reason}")
    lines = [
        f"GRAPH mode, fp32, {args.size} px; {args.rounds} interleaved rounds, each the median of several calls; "
        "ratio = MindSpore's time / direct time (> 1: the direct kernels are faster), median and range over rounds.",
        "",
        f"Host: {environment_line()}",
        "",
        "| model | case | MindSpore's depthwise ms | direct ms | ratio median | ratio range |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model_name in args.models:
        cases = {
            "inference batch 1 (BN folded)": (
                {d: inference_call(model_name, d, 1, args.size) for d in (False, True)},
                20,
            ),
            "inference batch 32 (BN folded)": (
                {d: inference_call(model_name, d, 32, args.size) for d in (False, True)},
                3,
            ),
            "training step batch 32": (
                {
                    d: build_train_step(model_name, ms.GRAPH_MODE, 32, args.size, direct_depthwise=d)
                    for d in (False, True)
                },
                2,
            ),
        }
        for case, (calls, per_round) in cases.items():
            print(f"{model_name}: {case}", flush=True)
            times = compare(calls, args.rounds, per_round)
            ratios = [m / d for m, d in zip(times[False], times[True])]
            standard, direct = statistics.median(times[False]), statistics.median(times[True])
            lines.append(
                f"| {model_name} | {case} | {standard:.1f} | {direct:.1f} "
                f"| {statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |"
            )
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
