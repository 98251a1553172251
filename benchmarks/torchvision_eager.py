"""Helper for the benchmarks, run with a Python that has torch + torchvision (mindcv's own env need not).

    python torchvision_eager.py --alpha 1.0 --what infer --batch 32 --size 224 --repeats 5
    python torchvision_eager.py --alpha 1.0 --what train --batch 32 --size 224 --repeats 4
    python torchvision_eager.py --alpha 1.0 --what onnx --size 224 --onnx_path tv.onnx

Prints one JSON line: img/s (and batch latency median/p90) for eager inference or a training step
(SGD, cross-entropy), or the path of torchvision's ONNX export (dynamic batch, as torch.onnx exports it).
"""

import argparse
import json
import statistics
import time

import torch
import torchvision


def _timed(fn, repeats: int) -> list:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--what", choices=["infer", "train", "onnx"], default="infer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--onnx_path", default="torchvision_mnasnet.onnx")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.MNASNet(args.alpha)
    x = torch.randn(args.batch, 3, args.size, args.size)
    result = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads()}
    if args.what == "onnx":
        model.eval()
        torch.onnx.export(
            model,
            x[:1],
            args.onnx_path,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
        result["onnx_path"] = args.onnx_path
    elif args.what == "infer":
        model.eval()
        with torch.inference_mode():
            times = _timed(lambda: model(x), args.repeats)
        result.update(median_s=statistics.median(times), p90_s=sorted(times)[int(0.9 * (len(times) - 1))])
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        y = torch.randint(0, 1000, (args.batch,))

        def step():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        times = _timed(step, args.repeats)
        result.update(median_s=statistics.median(times))
    if "median_s" in result:
        result["img_per_s"] = args.batch / result["median_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
