"""Times representative convolutions under the oneDNN instruction set of this process (see cpu_isa.py).

Run as a script by :func:`mindcv.utils.cpu_isa.measure_cpu_isa`, one process per candidate cap (oneDNN fixes
the level at its first primitive); it imports MindSpore only, not the mindcv package. Prints one line,
``MINDCV_CPU_ISA_RESULT {json}``: the median milliseconds per convolution and direction (``ops_ms``) and the
level oneDNN ran them with (``effective``, its ``dnnl_cpu_isa_t`` value).
"""

import ctypes
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict

import numpy as np

import mindspore as ms
from mindspore import ParameterTuple, nn, ops

# (name, batch, in channels, out channels, kernel, groups, size): the convolutions MnasNet spends its time in
SHAPES = [
    ("dense3x3", 2, 96, 96, 3, 1, 28),
    ("depthwise3x3", 2, 144, 144, 3, 144, 56),
    ("depthwise5x5", 2, 240, 240, 5, 240, 28),
    ("pointwise", 2, 96, 24, 1, 1, 56),
]


class _Loss(nn.Cell):
    def __init__(self, conv: nn.Cell) -> None:
        super().__init__()
        self.conv = conv

    def construct(self, x):
        return self.conv(x).sum()


class _Backward(nn.Cell):
    """Gradients with respect to the input and the weights (the two backward kernels training runs)."""

    def __init__(self, loss: nn.Cell) -> None:
        super().__init__()
        self.loss = loss
        self.weights = ParameterTuple(loss.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x):
        return self.grad(self.loss, self.weights)(x)


def _median_ms(step: Callable[[], object], budget_s: float) -> float:
    step()  # compilation and kernel creation
    times, start = [], time.perf_counter()
    while not times or (time.perf_counter() - start < budget_s and len(times) < 7):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def measure(budget_s: float) -> Dict[str, float]:
    """Median ms of each convolution's forward and backward pass in GRAPH mode (how training runs them)."""
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)  # PYNATIVE has slow paths of its own that would hide the kernels
    rng = np.random.default_rng(0)
    result = {}
    for name, n, cin, cout, k, groups, size in SHAPES:
        conv = nn.Conv2d(cin, cout, k, pad_mode="same", group=groups, has_bias=False)
        backward = _Backward(_Loss(conv))
        x = ms.Tensor(rng.standard_normal((n, cin, size, size)).astype(np.float32))
        result[f"{name} fwd"] = _median_ms(lambda c=conv, x=x: c(x).asnumpy(), budget_s)
        result[f"{name} bwd"] = _median_ms(lambda b=backward, x=x: b(x)[0][0].asnumpy(), budget_s)
    return result


def effective_level() -> int:
    lib = ctypes.CDLL(os.path.join(os.path.dirname(ms.__file__), "lib", "libdnnl.so.3"))
    return int(lib.dnnl_get_effective_cpu_isa())


if __name__ == "__main__":
    ops_ms = measure(float(sys.argv[1]))
    print("MINDCV_CPU_ISA_RESULT " + json.dumps({"ops_ms": ops_ms, "effective": effective_level()}), flush=True)
