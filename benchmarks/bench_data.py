"""Input-pipeline throughput: mindcv's pipeline vs a plain PIL + numpy loop, measured in one run.

    python benchmarks/bench_data.py [--images 512] [--epochs 3]

Generates 256x256 JPEGs (5 class folders) in a temporary directory, then measures images/s of
  * the training pipeline (decode, RandomResizedCrop 224, flip, normalize, CHW, batch 32),
  * the evaluation pipeline (decode, resize 256, centre crop 224, normalize, CHW, batch 32),
with 1 and 2 workers, and the same work done by a plain PIL + numpy loop. Prints the ratios.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

import mindspore as ms

from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mindcv.runtime import environment_line

MEAN = np.array(IMAGENET_DEFAULT_MEAN, np.float32)
STD = np.array(IMAGENET_DEFAULT_STD, np.float32)


def make_images(root: str, count: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(count):
        cls = f"class_{i % 5}"
        os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
        base = rng.integers(0, 255, (1, 1, 3))
        img = base + 40 * np.sin(xx / (5 + i % 5))[..., None] + rng.normal(0, 20, (256, 256, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
            os.path.join(root, "train", cls, f"{i}.jpg"), quality=90
        )


def pil_loop(files, training: bool) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for path in files:
        im = Image.open(path).convert("RGB")
        if training:
            w, h = im.size
            area = rng.uniform(0.08, 1.0) * w * h
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(min(w, np.sqrt(area * ratio))), int(min(h, np.sqrt(area / ratio)))
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            im = im.resize((224, 224), Image.BILINEAR, box=(x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            im = im.resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
        arr = ((np.asarray(im, np.float32) - MEAN) / STD).transpose(2, 0, 1)
        assert arr.shape == (3, 224, 224)
    return len(files) / (time.perf_counter() - start)


def mindcv_pipeline(root: str, training: bool, workers: int, epochs: int) -> float:
    dataset = create_dataset("imagefolder", root=root, split="train", num_parallel_workers=1, is_training=training)
    # the same work as the PIL loop: no colour jitter
    transform = create_transforms("imagenet", 224, is_training=training, color_jitter=0.0)
    loader = create_loader(dataset, 32, is_training=training, transform=transform, num_parallel_workers=workers)
    iterator = loader.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    rate = 0.0
    for _ in range(epochs):  # the first epoch warms up; report the last
        start, n = time.perf_counter(), 0
        for images, _labels in iterator:
            n += images.shape[0]
        rate = n / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    ms.set_device("CPU")
    with tempfile.TemporaryDirectory() as root:
        make_images(root, args.images)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "train")) for f in fs)
        print(f"{len(files)} JPEGs of 256x256, batch 32, {os.cpu_count()} CPUs")
        print(f"  host: {environment_line()}")
        for training in (True, False):
            kind = "train" if training else "eval "
            pil = pil_loop(files, training)
            rates = {w: mindcv_pipeline(root, training, w, args.epochs) for w in (1, 2)}
            print(
                f"{kind}: PIL loop {pil:6.0f} img/s | mindcv 1 worker {rates[1]:6.0f} img/s ({rates[1] / pil:.2f}x) | "
                f"2 workers {rates[2]:6.0f} img/s ({rates[2] / pil:.2f}x)"
            )


if __name__ == "__main__":
    main()
