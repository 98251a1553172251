"""Side-by-side measurements of deployed graphs: top-1 on a labelled folder, throughput in one run."""

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..data.image_folder import collect_images, find_classes
from ..errors import InvalidArgumentError
from ..io.progress import progress_bar

__all__ = ["LabelledImages", "labelled_images", "top1", "throughput_side_by_side"]


@dataclass
class LabelledImages:
    """Preprocessed images of a ``<class>/<images>`` folder with the model's class ids as labels."""

    images: np.ndarray
    labels: np.ndarray
    unreadable: List[Tuple[str, str]]


def labelled_images(
    folder: str, class_names: Sequence[str], preprocess: Callable, progress: bool = True
) -> LabelledImages:
    """Read every image of an ImageFolder split whose class folders are named as the model's classes.

    Args:
        folder: ``<folder>/<class name>/<images>``.
        class_names: the model's class names, in class-id order.
        preprocess: ``path -> (array, None) | (None, reason)`` (:meth:`mindcv.inference.Classifier.preprocess`).
        progress: show a progress bar.

    Returns:
        The images, their class ids, and the unreadable files with reasons.

    Raises:
        InvalidArgumentError: a class folder the model does not know, or no readable image.
    """
    classes, _ = find_classes(folder)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise InvalidArgumentError(
            f"class folder(s) {unknown[:5]} of '{folder}' are not classes of the model "
            f"(it knows {list(class_names)[:10]}{' ...' if len(class_names) > 10 else ''})"
        )
    images, labels, unreadable = [], [], []
    files = [(path, index[c]) for c in classes for path in collect_images([os.path.join(folder, c)])]
    for path, label in progress_bar(files, desc=f"reading {folder}", disable=not progress, leave=False):
        image, reason = preprocess(path)
        if image is None:
            unreadable.append((path, reason))
            continue
        images.append(image)
        labels.append(label)
    if not images:
        raise InvalidArgumentError(f"'{folder}' has no readable images")
    return LabelledImages(np.stack(images), np.asarray(labels, np.int64), unreadable)


def top1(logits_fn: Callable[[np.ndarray], np.ndarray], data: LabelledImages, batch_size: int = 32) -> float:
    """Top-1 accuracy (%) of ``logits_fn`` on ``data``."""
    hits = 0
    for start in range(0, len(data.labels), batch_size):
        logits = logits_fn(data.images[start : start + batch_size])
        hits += int((np.argmax(logits, axis=1) == data.labels[start : start + batch_size]).sum())
    return 100.0 * hits / len(data.labels)


def throughput_side_by_side(
    runners: Dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int = 5, min_seconds: float = 1.0
) -> Dict[str, float]:
    """Median images/s of each runner on the same batch, measured in interleaved rounds (a noisy machine
    slows all of them alike).

    Args:
        runners: name -> function of a batch.
        batch: the input batch.
        rounds: interleaved rounds; the median is reported.
        min_seconds: each runner's share of a round lasts at least this long.
    """
    if rounds < 1:
        raise InvalidArgumentError(f"rounds must be >= 1, got {rounds}")
    for run in runners.values():  # warm-up: first calls allocate and plan
        run(batch)
        run(batch)
    rates: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            count, start = 0, time.perf_counter()
            while True:
                run(batch)
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            rates[name].append(count * len(batch) / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}
