"""Helper for bench_inference.py: torchvision mnasnet eager inference img/s (run with a Python that has torch)."""

import json
import statistics
import sys
import time

import torch
import torchvision


def main() -> None:
    alpha, batch, size, repeats = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    model = torchvision.models.MNASNet(alpha).eval()
    x = torch.randn(batch, 3, size, size)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"img_per_s": batch / statistics.median(times), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
