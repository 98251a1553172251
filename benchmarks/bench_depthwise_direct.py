"""Direct depthwise-convolution kernels (AOT custom operators) against MindSpore's own, on MnasNet's layers.

    python benchmarks/bench_depthwise_direct.py --batch 32 --out benchmarks/results/depthwise_direct.md

Compiles ``benchmarks/depthwise_direct.cc`` with g++ (``-O3 -march=native -fopenmp``) into a temporary
folder, wraps it in ``ops.Custom(func_type="aot")`` with a bprop made of the two gradient kernels, checks
that forward, input gradient and weight gradient agree with ``nn.Conv2d(group=C)`` (relative error), and
times both, forward and forward+backward, in GRAPH mode at the given batch on the stride-1 depthwise
layers of mnasnet_100. The kernels are not used by the package; this measures whether they would pay.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import write_report  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Parameter, ParameterTuple, nn, ops  # noqa: E402

from mindcv.utils.cpu_isa import environment_line  # noqa: E402  (chooses the CPU kernels first)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depthwise_direct.cc")
# (channels, kernel, resolution) of mnasnet_100's stride-1 depthwise layers at 224 px (one of each kind)
LAYERS = [(48, 3, 112), (72, 3, 56), (120, 5, 28), (240, 5, 28), (480, 3, 14), (576, 3, 14), (1152, 3, 7)]


def build(folder: str) -> str:
    if shutil.which("g++") is None:
        raise SystemExit("g++ is needed to build the kernels (Debian: apt-get install g++)")
    library = os.path.join(folder, "depthwise_direct.so")
    cmd = ["g++", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", library, SOURCE]
    subprocess.run(cmd, check=True)
    return library


def custom_depthwise(library: str):
    grad_input = ops.Custom(
        f"{library}:DwBwdInput", out_shape=lambda g, w: g, out_dtype=lambda g, w: g, func_type="aot"
    )
    grad_weight = ops.Custom(
        f"{library}:DwBwdFilter", out_shape=lambda x, g, w: w, out_dtype=lambda x, g, w: w, func_type="aot"
    )

    def bprop(x, w, out, dout):
        return grad_input(dout, w), grad_weight(x, dout, w)

    return ops.Custom(
        f"{library}:DwFwd", out_shape=lambda x, w: x, out_dtype=lambda x, w: x, func_type="aot", bprop=bprop
    )


class DirectDepthwise(nn.Cell):
    def __init__(self, op, weight: np.ndarray) -> None:
        super().__init__()
        self.op = op
        self.weight = Parameter(ms.Tensor(weight))

    def construct(self, x):
        return self.op(x, self.weight)


class SquaredLoss(nn.Cell):
    def __init__(self, conv: nn.Cell) -> None:
        super().__init__()
        self.conv = conv

    def construct(self, x):
        y = self.conv(x)
        return (y * y).sum()


class Gradients(nn.Cell):
    def __init__(self, loss: nn.Cell) -> None:
        super().__init__()
        self.loss = loss
        self.weights = ParameterTuple(loss.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x):
        return self.grad(self.loss, self.weights)(x)


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
    parser.add_argument("--out", default="benchmarks/results/depthwise_direct.md")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        op = custom_depthwise(build(folder))
        lines = [
            f"Depthwise convolutions of mnasnet_100 (stride 1), batch {args.batch}, fp32, GRAPH mode; median ms of "
            f"{args.repeats} calls; error = max |difference| / max |MindSpore's value|.",
            "",
            f"Host: {environment_line()}",
            "",
            "| channels, kernel, size | MindSpore fwd | direct fwd | speed-up | MindSpore fwd+grads | direct fwd+grads "
            "| speed-up | error out / dx / dw |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        totals = [0.0, 0.0, 0.0, 0.0]
        for channels, kernel, size in LAYERS:
            print(f"C{channels} k{kernel} {size}px", flush=True)
            x = ms.Tensor(rng.standard_normal((args.batch, channels, size, size)).astype(np.float32))
            builtin = nn.Conv2d(channels, channels, kernel, pad_mode="same", group=channels, has_bias=False)
            direct = DirectDepthwise(op, builtin.weight.value().asnumpy())
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
                f"| {channels}, {kernel}x{kernel}, {size} | {times[0]:.1f} | {times[1]:.1f} "
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
