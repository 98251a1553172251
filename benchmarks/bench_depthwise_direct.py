"""Direct depthwise-convolution kernels (AOT custom operators) against MindSpore's own, on MnasNet's layers.

    python benchmarks/bench_depthwise_direct.py --batch 32 --out benchmarks/results/depthwise_direct.md

Times the package's direct kernels (``mindcv.kernels.DepthwiseConv2d``, built from
``mindcv/kernels/depthwise_direct.cc`` at first use) against ``nn.Conv2d(group=C)``, after checking that
forward, input gradient and weight gradient agree (relative error), forward and forward+backward, in GRAPH
mode at the given batch on every distinct depthwise layer of the model (stride 1 and 2, symmetric padding
k//2 as the zoo's layers). Stops if the direct kernels are not available here.
"""

import argparse
import os
import statistics
import sys
import time
from typing import List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import write_report  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import nn  # noqa: E402

from mindcv.kernels import DepthwiseConv2d, depthwise_kernel_status  # noqa: E402
from mindcv.runtime import environment_line  # noqa: E402  (chooses the CPU kernels first)
from mindcv.utils._cpu_isa_probe import _Backward as Gradients  # noqa: E402  (input and weight gradients)


def depthwise_layers(model_name: str, size: int) -> List[Tuple[int, int, int, int]]:
    """(channels, kernel, stride, input size) of each distinct depthwise convolution of the model, in order."""
    from mindcv.models import create_model

    found, resolution = [], size
    for _, cell in create_model(model_name).cells_and_names():
        if not isinstance(cell, nn.Conv2d):
            continue
        stride, kernel = cell.stride[-1], cell.kernel_size[0]
        if cell.group == cell.in_channels == cell.out_channels and kernel > 1:
            layer = (cell.in_channels, kernel, stride, resolution)
            if layer not in found:
                found.append(layer)
        resolution = (resolution - 1) // stride + 1  # symmetric padding k//2: ceil(size / stride)
    return found


class SquaredLoss(nn.Cell):
    def __init__(self, conv: nn.Cell) -> None:
        super().__init__()
        self.conv = conv

    def construct(self, x):
        y = self.conv(x)
        return (y * y).sum()


def median_ms(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="mnasnet_100")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="benchmarks/results/depthwise_direct.md")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    status = depthwise_kernel_status()
    if status.library is None:
        raise SystemExit(f"the direct depthwise kernels are not available here: {status.reason}")
    lines = [
        f"Every distinct depthwise convolution of {args.model} at {args.size} px, batch {args.batch}, fp32, "
        f"GRAPH mode; median ms of {args.repeats} calls; error = max |difference| / max |MindSpore's value|.",
        "",
        f"Host: {environment_line()}",
        "",
        "| channels, kernel, stride, input size | MindSpore fwd | direct fwd | speed-up | MindSpore fwd+grads "
        "| direct fwd+grads | speed-up | error out / dx / dw |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    totals = [0.0, 0.0, 0.0, 0.0]
    for channels, kernel, stride, size in depthwise_layers(args.model, args.size):
        print(f"C{channels} k{kernel} s{stride} {size}px", flush=True)
        x = ms.Tensor(rng.standard_normal((args.batch, channels, size, size)).astype(np.float32))
        builtin = nn.Conv2d(
            channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels, has_bias=False
        )
        direct = DepthwiseConv2d(channels, kernel, stride)
        direct.weight.set_data(builtin.weight.value())
        ours, theirs = Gradients(SquaredLoss(direct)), Gradients(SquaredLoss(builtin))
        g_ours, g_theirs = ours(x), theirs(x)
        errors = [
            relative_error(direct(x).asnumpy(), builtin(x).asnumpy()),
            relative_error(g_ours[0][0].asnumpy(), g_theirs[0][0].asnumpy()),
            relative_error(g_ours[1][0].asnumpy(), g_theirs[1][0].asnumpy()),
        ]
        calls = [
            lambda b=builtin, x=x: b(x).asnumpy(),
            lambda d=direct, x=x: d(x).asnumpy(),
            lambda g=theirs, x=x: g(x)[1][0].asnumpy(),
            lambda g=ours, x=x: g(x)[1][0].asnumpy(),
        ]
        times = [median_ms(call, args.repeats) for call in calls]
        totals = [t + v for t, v in zip(totals, times)]
        lines.append(
            f"| {channels}, {kernel}x{kernel}, /{stride}, {size} | {times[0]:.1f} | {times[1]:.1f} "
            f"| {times[0] / times[1]:.2f}x | {times[2]:.1f} | {times[3]:.1f} | {times[2] / times[3]:.2f}x | "
            + " / ".join(f"{e:.1e}" for e in errors)
            + " |"
        )
    lines.append(
        f"| all | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f}x | {totals[2]:.1f} "
        f"| {totals[3]:.1f} | {totals[2] / totals[3]:.2f}x | |"
    )
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
