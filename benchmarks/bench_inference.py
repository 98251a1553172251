"""Inference speed of a zoo model: graph-mode compile time and images/s, GRAPH vs PYNATIVE side by side.

    python benchmarks/bench_inference.py --model mnasnet_100 --batch 32 --size 224

The machine is shared and noisy: modes are measured in one run, interleaved, and the ratio is printed.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np

import mindspore as ms

from mindcv.models import create_model
from mindcv.models.fuse import fuse_bn
from mindcv.runtime import environment_line


def measure(model_name: str, mode: int, batch: int, size: int, repeats: int, fused: bool = False) -> dict:
    ms.set_context(mode=mode)
    model = create_model(model_name)
    model.set_train(False)
    if fused:
        fuse_bn(model)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    t0 = time.perf_counter()
    model(x).asnumpy()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x).asnumpy()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"first_call_s": first, "median_s": median, "img_per_s": batch / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch-python", default="", help="a Python with torch+torchvision: adds torchvision eager")
    args = parser.parse_args()
    ms.set_device("CPU")
    graph = measure(args.model, ms.GRAPH_MODE, args.batch, args.size, args.repeats)
    pynative = measure(args.model, ms.PYNATIVE_MODE, args.batch, args.size, args.repeats)
    fused = measure(args.model, ms.GRAPH_MODE, args.batch, args.size, args.repeats, fused=True)
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, fp32, CPU")
    print(f"  host: {environment_line()}")
    for name, r in (("GRAPH", graph), ("PYNATIVE", pynative), ("GRAPH+BN-fold", fused)):
        print(
            f"  {name:13s} first call {r['first_call_s']:.2f} s, "
            f"steady {r['median_s'] * 1000:.0f} ms/batch = {r['img_per_s']:.1f} img/s"
        )
    print(f"  graph compile (first call minus a steady call): {graph['first_call_s'] - graph['median_s']:.2f} s")
    print(f"  GRAPH / PYNATIVE throughput: {graph['img_per_s'] / pynative['img_per_s']:.2f}x")
    print(f"  BN folding speed-up in GRAPH mode: {fused['img_per_s'] / graph['img_per_s']:.2f}x")
    if args.torch_python:
        alpha = {"mnasnet_050": 0.5, "mnasnet_075": 0.75, "mnasnet_100": 1.0, "mnasnet_130": 1.3}[args.model]
        helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_eager.py")
        run = subprocess.run(
            [args.torch_python, helper, "--alpha", str(alpha), "--batch", str(args.batch), "--size", str(args.size)]
            + ["--repeats", str(args.repeats), "--threads", str(ms.get_context("runtime_num_threads"))],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),  # not MindSpore's C-level OMP_NUM_THREADS=1 (see bench_models.torchvision_run)
        )
        tv = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"  torchvision eager (torch {tv['torch']}, {tv.get('threads', '?')} threads): {tv['img_per_s']:.1f} img/s"
        )
        print(f"  mindcv GRAPH+BN-fold / torchvision eager: {fused['img_per_s'] / tv['img_per_s']:.2f}x")


if __name__ == "__main__":
    main()
