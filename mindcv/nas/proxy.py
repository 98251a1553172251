"""The proxy task: train a candidate briefly and score it on a held-out split.

The data comes from any :func:`~mindcv.data.create_dataset` source, decoded once at the proxy
resolution into memory (every candidate sees exactly the same images), and a fixed fraction of the
training split is held out for scoring (the analogue of the paper's 50K ImageNet hold-out). Training is
deterministic per (architecture, seed): weights, data order, augmentation and dropout all derive from the
seed, so a candidate's score is reproducible and can be cached by its canonical architecture string.
"""

import logging
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

import mindspore as ms

from ..data import ArrayLoader, create_dataset, create_loader, create_transforms
from ..data.arrays import pad_crop_flip
from ..engine import EvalStep, NonFiniteLossError, evaluate, train_one_epoch
from ..errors import InvalidArgumentError
from ..loss import create_loss
from ..models.layers import noise_width
from ..models.loading import load_model
from ..optim import create_optimizer
from ..scheduler import create_scheduler
from ..utils.context import execution_mode
from ..utils.random import set_seed
from ..utils.train_step import NetWithLoss, TrainStep

__all__ = ["ProxyTask", "ProxyConfig", "load_arrays"]

_logger = logging.getLogger(__name__)

# Part of a search's fingerprint: raise it whenever a candidate's training or scoring changes, so that a
# resumed search never mixes scores of the old procedure with new ones (2: through mindcv.engine; 3: the
# classifier initialised over fan_in, not the class count).
PROXY_PROCEDURE = 3


@dataclass
class ProxyConfig:
    """Settings of the proxy task (the same for every candidate).

    Args:
        dataset: ``create_dataset`` name (``demo`` by default: generated, no download).
        data_dir: dataset root (default: the dataset's cache folder).
        image_size: proxy training resolution.
        holdout: fraction of the training split held out for scoring (0: score on ``val_split``).
        val_split: split scored when ``holdout`` is 0.
        num_samples: use only this many training images (0: all), e.g. for smoke tests.
        epochs: training epochs per candidate.
        batch_size: batch size.
        opt: optimizer name for :func:`~mindcv.optim.create_optimizer` (momentum 0.9 where it applies).
        lr: peak learning rate (linear warm-up, then cosine decay).
        warmup_epochs: warm-up length in whole epochs (smaller than ``epochs``).
        weight_decay: weight decay (not applied to BN and biases).
        label_smoothing: cross-entropy label smoothing.
        width_mult: width multiplier of every candidate (and of the reference networks).
        drop_rate: classifier dropout.
        bn_momentum: BatchNorm momentum (MindSpore convention; short training wants fast statistics).
        seed: training seed (weights, data order, augmentation, dropout).
        mode: ``graph`` (compiled: fastest for real proxies) or ``pynative`` (no compilation per candidate,
            which dominates when a proxy trains only a few steps, as in smoke tests).
    """

    dataset: str = "demo"
    data_dir: Optional[str] = None
    image_size: int = 64
    holdout: float = 0.25
    val_split: str = "val"
    num_samples: int = 0
    epochs: int = 3
    batch_size: int = 64
    opt: str = "adamw"
    lr: float = 0.004
    warmup_epochs: int = 0
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    width_mult: float = 0.5
    drop_rate: float = 0.1
    bn_momentum: float = 0.9
    seed: int = 0
    mode: str = "graph"


def load_arrays(name: str, root: Optional[str], split: str, image_size: int, limit: int = 0) -> Tuple[np.ndarray, ...]:
    """Decode a dataset split once with the evaluation preprocessing: ``(images NCHW float32, labels int32)``."""
    dataset = create_dataset(name, root=root, split=split, shuffle=False, download=False)
    num_classes = dataset.num_classes()
    loader = create_loader(dataset, 100, transform=create_transforms(name, image_resize=image_size, crop_pct=1.0))
    images, labels = [], []
    for x, y in loader.create_tuple_iterator(num_epochs=1, output_numpy=True):
        images.append(x)
        labels.append(y)
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
    if limit and limit < len(labels):
        # a fixed random subset: the files are sorted by class, so a prefix would hold only the first classes
        keep = np.sort(np.random.default_rng(54321).permutation(len(labels))[:limit])
        images, labels = images[keep], labels[keep]
    return images.astype(np.float32), labels, num_classes


class ProxyTask:
    """Train-and-score of candidates on one fixed in-memory dataset.

    Args:
        config: the proxy settings.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        images, labels, self.num_classes = load_arrays(
            config.dataset, config.data_dir, "train", config.image_size, config.num_samples
        )
        if config.holdout > 0:
            order = np.random.default_rng(12345).permutation(len(labels))  # fixed, independent of the seed
            cut = int(round(len(labels) * config.holdout))
            held, kept = order[:cut], order[cut:]
            self.train_x, self.train_y = images[kept], labels[kept]
            self.val_x, self.val_y = images[held], labels[held]
        else:
            self.train_x, self.train_y = images, labels
            self.val_x, self.val_y, _ = load_arrays(
                config.dataset, config.data_dir, config.val_split, config.image_size
            )
        if config.warmup_epochs >= config.epochs:
            raise InvalidArgumentError(
                f"proxy.warmup_epochs ({config.warmup_epochs}) must be smaller than proxy.epochs ({config.epochs})"
            )
        if len(self.train_y) < config.batch_size or len(self.val_y) == 0:
            raise InvalidArgumentError(
                f"proxy data too small: {len(self.train_y)} training / {len(self.val_y)} held-out images "
                f"for batch size {config.batch_size}"
            )

    def describe(self) -> str:
        c = self.config
        return (
            f"proxy: {c.dataset} at {c.image_size}px, {len(self.train_y)} train / {len(self.val_y)} held-out images, "
            f"{self.num_classes} classes, {c.epochs} epochs x batch {c.batch_size}, width x{c.width_mult}"
        )

    def evaluate(self, arch: str, seed: Optional[int] = None, epochs: Optional[int] = None) -> Dict[str, float]:
        """Train ``arch`` from scratch and score it on the held-out images.

        Training and scoring run through :mod:`mindcv.engine` (the loops ``train.py`` and ``validate.py`` use),
        with the factories' optimizer and cosine schedule. A candidate whose training diverges is scored
        0% with a NaN loss, and a warning names it and the first non-finite parameter.

        Args:
            arch: ``|``-joined architecture string.
            seed: training seed (default: the config's).
            epochs: training epochs (default: the config's).

        Returns:
            ``{"accuracy"`` (top-1 %), ``"loss"`` (final epoch's mean training loss), ``"params"``,
            ``"train_seconds"}``.
        """
        c = self.config
        with execution_mode(ms.PYNATIVE_MODE if c.mode == "pynative" else ms.GRAPH_MODE):
            return self._train_and_score(arch, c.seed if seed is None else seed, c.epochs if epochs is None else epochs)

    def _train_and_score(self, arch: str, seed: int, epochs: int) -> Dict[str, float]:
        c = self.config
        start = time.perf_counter()
        set_seed(seed)
        model = load_model(  # the one way to a model, as validate/infer/export build the retrained result
            "mnasnet_arch",
            arch=arch,
            num_classes=self.num_classes,
            width_mult=c.width_mult,
            drop_rate=c.drop_rate,
            bn_momentum=c.bn_momentum,
        ).model
        train_loader = ArrayLoader(
            self.train_x,
            self.train_y,
            c.batch_size,
            shuffle=True,
            drop_remainder=True,
            transform=pad_crop_flip,
            seed=seed,
        )
        steps_per_epoch = train_loader.get_dataset_size()
        schedule = create_scheduler(
            steps_per_epoch,
            "cosine_decay",
            lr=c.lr,
            min_lr=c.lr * 0.01,
            warmup_epochs=c.warmup_epochs,
            warmup_factor=1.0 / max(c.warmup_epochs * steps_per_epoch, 1),  # the first step already learns
            decay_epochs=epochs - c.warmup_epochs,
            num_epochs=epochs,
        )
        optimizer = create_optimizer(
            model, c.opt, lr=schedule, weight_decay=c.weight_decay, weight_decay_filter="norm_and_bias"
        )
        step = TrainStep(NetWithLoss(model, create_loss("CE", label_smoothing=c.label_smoothing)), optimizer)
        try:
            for epoch in range(epochs):
                train_loader.set_epoch(epoch)
                result = train_one_epoch(
                    step,
                    train_loader,
                    epoch,
                    epochs,
                    epoch * steps_per_epoch,
                    schedule,
                    seed,
                    noise_width=noise_width(model),
                    log_interval=0,
                    progress=False,
                )
        except NonFiniteLossError as err:
            _logger.warning("candidate diverged, scored 0%%: %s (%s)", arch, err)
            return {"accuracy": 0.0, "loss": float("nan"), "params": _params(model), "train_seconds": 0.0}
        held_out = ArrayLoader(self.val_x, self.val_y, 200)
        scores = evaluate(model, held_out, self.num_classes, progress=False, eval_step=EvalStep(model, topk=1))
        return {
            "accuracy": scores["top1"],
            "loss": result.loss,
            "params": _params(model),
            "train_seconds": time.perf_counter() - start,
        }


def _params(model) -> int:
    return int(sum(p.size for p in model.trainable_params()))
