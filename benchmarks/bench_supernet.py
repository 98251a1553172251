"""What a candidate costs: supernet scoring vs stand-alone proxy training, measured side by side in one run.

    python benchmarks/bench_supernet.py [--candidates 10] [--image_size 48] [--width_mult 0.5]

Prints the supernet's compile time and training step time (graph mode, the whole space, batch 32), the
median time to score one candidate (extract its model, recalibrate BN on 256 images, evaluate 300 held-out
images), and the time of one stand-alone proxy training epoch of MnasNet-B1 in the same process, so the ratio
is not skewed by the machine's load changing between runs.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--width_mult", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    ms.set_device("CPU")
    from mindcv.loss import create_loss
    from mindcv.models.arch import format_arch_string
    from mindcv.models.mnasnet import ARCH_DEFS
    from mindcv.nas.proxy import ProxyConfig, ProxyTask
    from mindcv.nas.search_space import SearchSpace
    from mindcv.nas.supernet import SuperNet
    from mindcv.optim import create_optimizer
    from mindcv.utils.train_step import NetWithLoss, TrainStep

    proxy = ProxyTask(ProxyConfig(image_size=args.image_size, width_mult=args.width_mult, epochs=1, batch_size=32))
    space = SearchSpace()
    ms.set_context(mode=ms.GRAPH_MODE)
    net = SuperNet(space, proxy.num_classes, width_mult=args.width_mult, bn_momentum=0.9)
    step = TrainStep(NetWithLoss(net, create_loss("CE")), create_optimizer(net, "adamw", lr=0.002))
    x = ms.Tensor(proxy.train_x[:32])
    y = ms.Tensor(proxy.train_y[:32])
    noise = ms.Tensor(np.zeros((32, 1), np.float32))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    step.set_train(True)
    step(x, y, noise)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        net.set_arch(space.sample(rng))
        start = time.perf_counter()
        step(x, y, noise)[0].asnumpy()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    steps_per_epoch = len(proxy.train_y) // 32

    from mindcv.nas.supernet_proxy import SupernetConfig, SupernetProxy

    scorer = SupernetProxy(proxy, space, SupernetConfig(epochs=1), "/tmp")
    scorer.net = net
    scorer.trained = True
    scores = [scorer.score(space.sample(rng))["train_seconds"] for _ in range(args.candidates)]
    b1 = format_arch_string(ARCH_DEFS["b1"])
    ms.set_context(mode=ms.GRAPH_MODE)
    standalone = {}
    for epochs in (1, 2):  # the difference is one epoch; the rest is building, compiling and scoring
        start = time.perf_counter()
        proxy.evaluate(b1, epochs=epochs)
        standalone[epochs] = time.perf_counter() - start
    per_epoch = standalone[2] - standalone[1]
    six_epochs = standalone[1] + 5 * per_epoch
    print(f"proxy: {proxy.describe()}")
    print(
        f"supernet: compile {compile_s:.1f} s, train step {step_s:.3f} s (median of {args.steps}), "
        f"{steps_per_epoch} steps/epoch = {step_s * steps_per_epoch:.1f} s/epoch"
    )
    print(
        f"scoring one candidate: median {np.median(scores):.2f} s (min {min(scores):.2f}, max {max(scores):.2f}) "
        f"over {args.candidates}"
    )
    print(
        f"stand-alone B1 on the proxy: 1 epoch {standalone[1]:.1f} s, 2 epochs {standalone[2]:.1f} s (building, "
        f"compiling and scoring included) -> a 6-epoch candidate ~{six_epochs:.0f} s; scoring with the supernet is "
        f"{six_epochs / np.median(scores):.0f}x cheaper per candidate"
    )


if __name__ == "__main__":
    main()
