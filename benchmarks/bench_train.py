"""Training-step throughput of a zoo model in GRAPH and PYNATIVE mode, measured side by side.

    python benchmarks/bench_train.py --model mnasnet_100 --batch 32 --size 224 --steps 6

Uses the same compiled ``TrainStep`` as train.py (RMSProp, fp32, dropout noise input). Prints the first
step (compile + run), the steady-state img/s and the GRAPH / PYNATIVE ratio.
"""

import argparse
import statistics
import time
from typing import Callable

import numpy as np

import mindspore as ms

from mindcv.kernels import use_direct_depthwise
from mindcv.loss import create_loss
from mindcv.models import create_model
from mindcv.optim import create_optimizer
from mindcv.runtime import environment_line
from mindcv.utils.train_step import NetWithLoss, TrainStep


def build_train_step(
    model_name: str, mode: int, batch: int, size: int, direct_depthwise: bool = True
) -> Callable[[], float]:
    """A closure running one optimizer step of ``model_name`` on a fixed random batch and returning the loss
    (``direct_depthwise=False``: with MindSpore's depthwise convolution instead of mindcv.kernels')."""
    ms.set_context(mode=mode)
    ms.set_seed(0)
    model = create_model(model_name)
    use_direct_depthwise(model, direct_depthwise)
    step = TrainStep(
        NetWithLoss(model, create_loss("CE", label_smoothing=0.1)), create_optimizer(model, "rmsprop", lr=0.01)
    )
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 1000, batch).astype(np.int32))
    noise = ms.Tensor(rng.random((batch, model.noise_width), dtype=np.float32))
    return lambda: float(step(x, y, noise)[0].asnumpy())


def measure(model_name: str, mode: int, batch: int, size: int, steps: int) -> dict:
    run_step = build_train_step(model_name, mode, batch, size)
    t0 = time.perf_counter()
    run_step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"first_s": first, "median_s": median, "img_per_s": batch / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    ms.set_device("CPU")
    graph = measure(args.model, ms.GRAPH_MODE, args.batch, args.size, args.steps)
    pynative = measure(args.model, ms.PYNATIVE_MODE, args.batch, args.size, args.steps)
    print(f"{args.model} training step, batch {args.batch}, {args.size}x{args.size}, fp32, RMSProp, CPU")
    print(f"  host: {environment_line()}")
    for name, r in (("GRAPH", graph), ("PYNATIVE", pynative)):
        steady = f"steady {r['median_s']:.2f} s/step = {r['img_per_s']:.1f} img/s"
        print(f"  {name:9s} first step {r['first_s']:.1f} s, {steady}")
    print(f"  graph compile (first step minus a steady step): {graph['first_s'] - graph['median_s']:.1f} s")
    print(f"  GRAPH / PYNATIVE throughput: {graph['img_per_s'] / pynative['img_per_s']:.2f}x")


if __name__ == "__main__":
    main()
