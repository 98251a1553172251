"""Score candidates with one trained supernet instead of training each: the cheap accuracy estimate.

The supernet is trained once on the proxy task's training images through :func:`mindcv.engine.train_one_epoch`
(the loop ``train.py`` uses), each step on one architecture drawn uniformly from the space (single-path
sampling). The draw is a function of (seed, step), so a resumed training continues the same sequence; the
checkpoint after every epoch is a ``train.py`` training state (weights, optimizer, loss scale) and is refused
when it belongs to other settings. A candidate is then scored by selecting it, recalibrating BatchNorm on a
fixed batch of training images, and evaluating the held-out images.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

import mindspore as ms

from ..data import ArrayLoader
from ..data.arrays import pad_crop_flip
from ..engine import EvalStep, evaluate, restore_training_state, train_one_epoch, training_state
from ..errors import InvalidArgumentError
from ..io.checkpoint import read_checkpoint_metadata
from ..loss import create_loss
from ..models import CheckpointError, save_checkpoint
from ..optim import create_optimizer
from ..scheduler import create_scheduler
from ..utils.context import execution_mode
from ..utils.random import set_seed
from ..utils.train_step import NetWithLoss, TrainStep
from .proxy import ProxyTask
from .search_space import Decisions, SearchSpace
from .supernet import SuperNet, recalibrate_bn

__all__ = ["SupernetConfig", "SupernetProxy"]

_logger = logging.getLogger(__name__)

# part of the supernet checkpoint's fingerprint: raise it when training or scoring changes
SUPERNET_PROCEDURE = 2


@dataclass
class SupernetConfig:
    """Supernet training and scoring (optimizer, learning rate, batch, augmentation: the proxy's).

    Args:
        epochs: training epochs of the supernet (each step trains one uniformly drawn candidate).
        recalibration_images: training images whose statistics replace BatchNorm's before a candidate is scored.
        file: checkpoint name in the search's output folder.
    """

    epochs: int = 30
    recalibration_images: int = 256
    file: str = "supernet.ckpt"


class SupernetProxy:
    """Train (or resume) the supernet of a space on a proxy task's data, then score candidates with it.

    Args:
        proxy: the proxy task (its data, training settings and width).
        space: the search space.
        config: supernet settings.
        output_dir: folder of the supernet checkpoint.
    """

    def __init__(self, proxy: ProxyTask, space: SearchSpace, config: SupernetConfig, output_dir: str) -> None:
        if config.epochs < 1:
            raise InvalidArgumentError(f"supernet.epochs must be >= 1, got {config.epochs}")
        if not 1 < config.recalibration_images:
            raise InvalidArgumentError(
                "supernet.recalibration_images must be > 1 (BatchNorm needs a batch), "
                f"got {config.recalibration_images}"
            )
        self.proxy, self.space, self.config = proxy, space, config
        self.path = os.path.join(output_dir, config.file)
        c = proxy.config
        self.net = SuperNet(
            space,
            proxy.num_classes,
            width_mult=c.width_mult,
            drop_rate=c.drop_rate,
            bn_momentum=c.bn_momentum,
        )
        pick = np.random.default_rng(24680).permutation(len(proxy.train_y))[: config.recalibration_images]
        self.calibration_batch = proxy.train_x[np.sort(pick)]
        self.trained = False

    def fingerprint(self) -> str:
        relevant = {
            "proxy": asdict(self.proxy.config),
            "supernet": {k: v for k, v in asdict(self.config).items() if k != "file"},
            "space": {"channels": list(self.space.channels), "repeats": list(self.space.repeats)},
            "options": [[name, list(values)] for name, values in self.space.options],
            "procedure": SUPERNET_PROCEDURE,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- training ----------------------------------------------------------------------------------------
    def train(self, progress: bool = True) -> Dict[str, float]:
        """Train the supernet, resuming from its checkpoint; a finished one is only loaded.

        Returns:
            ``{"epochs": done, "seconds": spent in this call, "loss": last epoch's mean}``.
        """
        c = self.proxy.config
        mode = ms.PYNATIVE_MODE if c.mode == "pynative" else ms.GRAPH_MODE
        with execution_mode(mode):
            return self._train(c, progress)

    def _train(self, c, progress: bool) -> Dict[str, float]:
        start = time.perf_counter()
        set_seed(c.seed)
        loader = ArrayLoader(
            self.proxy.train_x,
            self.proxy.train_y,
            c.batch_size,
            shuffle=True,
            drop_remainder=True,
            transform=pad_crop_flip,
            seed=c.seed,
        )
        steps = loader.get_dataset_size()
        epochs = self.config.epochs
        warmup = min(c.warmup_epochs, epochs - 1)
        schedule = create_scheduler(
            steps,
            "cosine_decay",
            lr=c.lr,
            min_lr=c.lr * 0.01,
            warmup_epochs=warmup,
            warmup_factor=1.0 / max(warmup * steps, 1),
            decay_epochs=epochs - warmup,
            num_epochs=epochs,
        )
        optimizer = create_optimizer(
            self.net, c.opt, lr=schedule, weight_decay=c.weight_decay, weight_decay_filter="norm_and_bias"
        )
        step = TrainStep(NetWithLoss(self.net, create_loss("CE", label_smoothing=c.label_smoothing)), optimizer)
        done, loss = 0, float("nan")
        if os.path.exists(self.path):
            done = self._resume(optimizer, step)
        space, net, seed = self.space, self.net, c.seed

        def sample_candidate(index: int) -> None:
            net.set_arch(space.sample(np.random.default_rng([seed, 7919, index])))

        for epoch in range(done, epochs):
            loader.set_epoch(epoch)
            result = train_one_epoch(
                step,
                loader,
                epoch,
                epochs,
                epoch * steps,
                schedule,
                seed,
                noise_width=net.noise_width,
                log_interval=0,
                progress=progress,
                before_step=sample_candidate,
            )
            loss = result.loss
            meta = {"epoch": epoch + 1, "global_step": (epoch + 1) * steps, "supernet": self.fingerprint()}
            save_checkpoint(training_state(net, optimizer, None, step), self.path, meta)
            _logger.info("supernet epoch %d/%d: loss %.4f (%s)", epoch + 1, epochs, loss, self.path)
        self.trained = True
        return {"epochs": epochs, "seconds": time.perf_counter() - start, "loss": loss}

    def _resume(self, optimizer, step) -> int:
        meta = read_checkpoint_metadata(self.path)
        if meta.get("supernet") != self.fingerprint():
            raise CheckpointError(
                f"'{self.path}' is a supernet of other settings (or not a supernet checkpoint); "
                "delete it, or use another output_dir"
            )
        epoch, _, _ = restore_training_state(self.path, self.net, optimizer, None, step)
        if epoch > self.config.epochs:
            raise CheckpointError(f"'{self.path}' has {epoch} epochs, more than supernet.epochs ({self.config.epochs})")
        _logger.info("supernet: resuming after epoch %d of %d from %s", epoch, self.config.epochs, self.path)
        return epoch

    # -- scoring ---------------------------------------------------------------------------------------------
    def score(self, decisions: Decisions) -> Dict[str, float]:
        """Held-out top-1 of a candidate with the shared weights and its own BatchNorm statistics.

        The candidate's stand-alone model is extracted (the same function as the supernet with the candidate
        selected, but computing only its own path) and run in PyNative mode, which needs no compilation for a
        new architecture.

        Args:
            decisions: the candidate.

        Returns:
            ``{"accuracy", "loss"`` (NaN: nothing is trained), ``"params"`` (of the stand-alone model),
            ``"train_seconds"}`` (the scoring time).
        """
        if not self.trained:
            raise InvalidArgumentError("train() the supernet before scoring candidates with it")
        start = time.perf_counter()
        with execution_mode(ms.PYNATIVE_MODE):
            model = self.net.extract(decisions)
            recalibrate_bn(model, self.calibration_batch)
            held_out = ArrayLoader(self.proxy.val_x, self.proxy.val_y, 300)
            step = EvalStep(model, topk=1)
            scores = evaluate(model, held_out, self.proxy.num_classes, progress=False, eval_step=step)
        return {
            "accuracy": scores["top1"],
            "loss": float("nan"),
            "params": int(sum(p.size for p in model.trainable_params())),
            "train_seconds": time.perf_counter() - start,
        }
