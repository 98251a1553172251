"""The embedded demo dataset: generated on first use, no download, real JPEGs in ImageFolder layout.

Ten visually distinct classes (shapes and textures) with random colours, position, scale, rotation and
noise. It is generated deterministically from a seed, written once into the cache (atomically, under a
lock, so concurrent ranks share one copy) and then read through the normal ImageFolder path, which
exercises the whole decode pipeline. It is small enough for a MnasNet to learn it far above chance in a
few CPU minutes: the README's quick start trains on it.
"""

import fcntl
import os
import shutil
import tempfile
import time
from typing import Dict, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..io.download import get_cache_dir
from ._opencv import cv2

__all__ = ["DEMO_CLASSES", "DEMO_SIZES", "DEMO_VERSION", "ensure_demo_dataset", "render_demo_image"]

DEMO_VERSION = "v1"
DEMO_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "diagonal_stripes",
    "dots",
)
_SPLITS = {"train": (120, 0), "val": (40, 1)}  # images per class, seed offset (the default size)
_SIZE = 72
# Named sizes for create_dataset: the small set trains in CPU minutes; the large one holds out 1,500 images at a
# 25% hold-out for the NAS proxy (the small set's 300 alone carry ~2.5 points of binomial noise).
DEMO_SIZES = {"demo": 120, "demo_large": 600}


def _colors(rng: np.random.Generator):
    bg = rng.integers(0, 256, 3)
    fg = rng.integers(0, 256, 3)
    while np.abs(fg - bg).sum() < 180:  # keep the pattern visible
        fg = rng.integers(0, 256, 3)
    return tuple(int(c) for c in bg), tuple(int(c) for c in fg)


def render_demo_image(cls: str, rng: np.random.Generator, size: int = _SIZE) -> np.ndarray:
    """Draw one RGB uint8 image of class ``cls``."""
    bg, fg = _colors(rng)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
    r = int(rng.integers(size // 6, size // 3))
    thick = int(rng.integers(2, 5))
    period = int(rng.integers(6, 13))
    yy, xx = np.mgrid[0:size, 0:size]
    if cls == "circle":
        cv2.circle(img, (cx, cy), r, fg, -1)
    elif cls == "ring":
        cv2.circle(img, (cx, cy), r, fg, thick + 1)
    elif cls in ("square", "triangle", "cross"):
        angle = rng.uniform(0, np.pi / 2)
        if cls == "square":
            pts = [(r * np.cos(angle + k * np.pi / 2), r * np.sin(angle + k * np.pi / 2)) for k in range(4)]
            cv2.fillPoly(img, [np.array([(cx + x, cy + y) for x, y in pts], np.int32)], fg)
        elif cls == "triangle":
            pts = [(r * np.cos(angle + k * 2 * np.pi / 3), r * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
            cv2.fillPoly(img, [np.array([(cx + x, cy + y) for x, y in pts], np.int32)], fg)
        else:
            for k in range(2):
                dx, dy = r * np.cos(angle + k * np.pi / 2), r * np.sin(angle + k * np.pi / 2)
                cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), fg, thick + 1)
    else:
        if cls == "horizontal_stripes":
            mask = (yy // (period // 2)) % 2 == 0
        elif cls == "vertical_stripes":
            mask = (xx // (period // 2)) % 2 == 0
        elif cls == "diagonal_stripes":
            mask = ((xx + yy) // (period // 2)) % 2 == 0
        elif cls == "checkerboard":
            mask = ((xx // period) + (yy // period)) % 2 == 0
        elif cls == "dots":
            mask = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 4) ** 2
        else:
            raise InvalidArgumentError(f"unknown demo class '{cls}'")
        img[mask] = fg
    noise = rng.normal(0, rng.uniform(4, 20), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _split_sizes(train_per_class: int) -> Dict[str, Tuple[int, int]]:
    """Images per class and seed offset of each split; validation is a third of training, as in the default."""
    return {"train": (train_per_class, 0), "val": (max(train_per_class // 3, 1), 1)}


def _generate(folder: str, seed: int, train_per_class: int) -> None:
    for split, (per_class, offset) in _split_sizes(train_per_class).items():
        for label, cls in enumerate(DEMO_CLASSES):
            rng = np.random.default_rng([seed, offset, label])
            out = os.path.join(folder, split, cls)
            os.makedirs(out)
            for i in range(per_class):
                img = render_demo_image(cls, rng)
                quality = int(rng.integers(75, 96))
                cv2.imwrite(
                    os.path.join(out, f"{cls}_{i:04d}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]
                )


def ensure_demo_dataset(root: str = None, seed: int = 0, train_per_class: int = 120) -> Dict[str, object]:
    """Generate the demo dataset once (if needed) and return its location.

    Args:
        root: parent folder (default: ``<cache>/datasets``).
        seed: generation seed (a different seed gives a different dataset folder).
        train_per_class: training images per class (validation gets a third as many). Each class's images are
            drawn from one seeded stream, so a larger set starts with the images of every smaller one.

    Returns:
        ``{"root": <folder with train/ and val/>, "generated": bool, "seconds": float, "num_images": int}``.
    """
    if isinstance(train_per_class, bool) or not isinstance(train_per_class, int) or train_per_class < 1:
        raise InvalidArgumentError(f"demo train_per_class must be a whole number >= 1, got {train_per_class!r}")
    parent = root or os.path.join(get_cache_dir(), "datasets")
    os.makedirs(parent, exist_ok=True)
    size_tag = "" if train_per_class == _SPLITS["train"][0] else f"-n{train_per_class}"
    folder = os.path.join(parent, f"demo-{DEMO_VERSION}-seed{seed}{size_tag}")
    start = time.perf_counter()
    generated = False
    with open(folder + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(folder):
            tmp = tempfile.mkdtemp(prefix=".demo-", dir=parent)
            try:
                _generate(tmp, seed, train_per_class)
                os.replace(tmp, folder)
                generated = True
            finally:
                if os.path.exists(tmp):
                    shutil.rmtree(tmp)
    num_images = sum(n for n, _ in _split_sizes(train_per_class).values()) * len(DEMO_CLASSES)
    return {"root": folder, "generated": generated, "seconds": time.perf_counter() - start, "num_images": num_images}
