"""The training and evaluation loops used by ``train.py`` and ``validate.py``."""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .errors import RunFailedError
from .io.finite import find_non_finite
from .io.progress import progress_bar
from .models.checkpoint import CheckpointError, NonFiniteWeightsError, load_state_dict_into, read_checkpoint
from .optim.optim_factory import load_optimizer_state
from .utils.ema import EMA
from .utils.train_step import TrainStep

__all__ = [
    "EvalStep",
    "evaluate",
    "train_one_epoch",
    "make_noise",
    "NonFiniteLossError",
    "EpochResult",
    "describe_non_finite",
    "average_bn_statistics",
    "training_state",
    "restore_training_state",
]

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RunFailedError):
    """Training diverged: the loss, the applied gradients or the weights became NaN or infinite."""


def describe_non_finite(tensors: Dict[str, np.ndarray]) -> str:
    """``"first non-finite parameter: <name> (<n> values)"``, or that all are finite.

    MindSpore's CPU ReLU maps NaN to 0, so a finite loss or finite logits do not prove finite weights:
    the parameters themselves are what must be checked.
    """
    bad = find_non_finite(tensors)
    if not bad:
        return "all parameters are still finite"
    name, count = bad[0]
    more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
    return f"first non-finite parameter: {name} ({count} values){more}"


def _parameters(cell: nn.Cell) -> Dict[str, np.ndarray]:
    return {p.name: p.asnumpy() for p in cell.get_parameters()}


def average_bn_statistics(model: nn.Cell, reduce_fn: Callable[[np.ndarray], np.ndarray], group_size: int) -> None:
    """Replace every BatchNorm moving mean/variance by its mean over the ranks.

    In data parallelism each rank normalises its own micro-batch, so the moving statistics drift
    apart; averaging them before evaluating and saving makes every rank hold, evaluate and save the
    same model, so train-time metrics equal validate.py's on the saved checkpoint.

    Args:
        model: the model (or an EMA copy: any cell whose parameters named ``*moving_*`` are BN statistics).
        reduce_fn: sums a float64 vector over ranks (``Runtime.sum_across_ranks()``).
        group_size: the number of ranks.
    """
    stats = [p for p in model.get_parameters() if "moving_" in p.name]
    if not stats:
        return
    flat = np.concatenate([p.asnumpy().astype(np.float64).ravel() for p in stats])
    mean = reduce_fn(flat) / group_size
    offset = 0
    for p in stats:
        size = int(np.prod(p.shape))
        p.set_data(Tensor(mean[offset : offset + size].reshape(p.shape), p.dtype))
        offset += size


def make_noise(seed: int, block: int, batch: int, width: int) -> Tensor:
    """Uniform [0, 1) dropout noise of one micro-batch, a pure function of (seed, micro-batch index).

    The index counts micro-batches across ranks and accumulation steps (``step * ranks * accumulation
    + rank * accumulation + micro``), so N ranks and one process accumulating N micro-batches draw the
    same noise for the same samples.
    """
    rng = np.random.default_rng([seed, block])
    return Tensor(rng.random((batch, width), dtype=np.float32))


class EvalStep(nn.Cell):
    """Per-batch sums for exact metrics: loss sum, top-1 hits, top-k hits, number of valid samples.

    Labels of -1 (unreadable images in evaluation) are ignored, so every rank counts only real samples
    and summing over ranks reproduces single-process metrics exactly.
    """

    def __init__(self, network: nn.Cell, topk: int = 5) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.topk = topk

    def construct(self, images: Tensor, labels: Tensor):
        logits = self.network(images).astype(ms.float32)
        valid = labels >= 0
        safe = ops.select(valid, labels, ops.zeros_like(labels))
        weight = valid.astype(ms.float32)
        loss = ops.cross_entropy(logits, safe, reduction="none")
        _, top = ops.topk(logits, self.topk)
        hits = top == safe.reshape((-1, 1))
        top1 = hits[:, 0].astype(ms.float32) * weight
        topk = hits.any(axis=1).astype(ms.float32) * weight
        return (loss * weight).sum(), top1.sum(), topk.sum(), weight.sum()


def _to_float(value) -> float:
    return float(value.asnumpy()) if hasattr(value, "asnumpy") else float(value)


def evaluate(
    network: Optional[nn.Cell],
    loader,
    num_classes: int,
    reduce_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    progress: bool = True,
    desc: str = "validate",
    eval_step: Optional[EvalStep] = None,
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a loader.

    Args:
        network: the model (set to inference mode here); may be ``None`` when ``eval_step`` is given.
        loader: batches of ``(images, int labels)``.
        num_classes: for top-k (k = min(5, num_classes)).
        reduce_fn: sums a ``float64`` vector over ranks in distributed evaluation.
        progress: show a progress bar.
        desc: progress-bar label.
        eval_step: a compiled :class:`EvalStep` of ``network`` to reuse (saves a graph compile per call), or
            any callable returning the same four sums (e.g. :class:`mindcv.deploy.OnnxEvalStep`).

    Returns:
        ``{"top1", "top5", "loss", "num_samples"}``.
    """
    if network is not None:
        network.set_train(False)
    step = eval_step or EvalStep(network, topk=min(5, num_classes))
    sums = np.zeros(4, np.float64)
    total = loader.get_dataset_size()
    for images, labels in progress_bar(
        loader.create_tuple_iterator(num_epochs=1), total=total, desc=desc, disable=not progress, leave=False
    ):
        sums += np.array([_to_float(v) for v in step(images, labels)], np.float64)
    if reduce_fn is not None:
        sums = reduce_fn(sums)
    count = sums[3]
    if count == 0:
        raise RunFailedError("evaluation saw no readable samples")
    return {
        "top1": 100.0 * sums[1] / count,
        "top5": 100.0 * sums[2] / count,
        "loss": sums[0] / count,
        "num_samples": int(count),
    }


@dataclass
class EpochResult:
    loss: float
    lr: float
    images_per_second: float
    seconds: float
    skipped_steps: int = 0
    losses: List[float] = field(default_factory=list)


def train_one_epoch(
    step: TrainStep,
    loader,
    epoch: int,
    num_epochs: int,
    global_step: int,
    lr_schedule: List[float],
    seed: int,
    rank: int = 0,
    group_size: int = 1,
    ema: Optional[EMA] = None,
    noise_width: int = 0,
    log_interval: int = 100,
    progress: bool = True,
    accumulation_cells=None,
    before_step: Optional[Callable[[int], None]] = None,
) -> EpochResult:
    """Run one epoch of optimizer steps.

    Args:
        step: the compiled train step.
        loader: batches of ``(images, labels)``; the caller selects the epoch's data order first.
        epoch: 0-based epoch (for display).
        num_epochs: total epochs (for display).
        global_step: optimizer steps done before this epoch (selects dropout noise and learning rate).
        lr_schedule: per-optimizer-step learning rates (for display).
        seed: run seed (dropout noise).
        rank: process rank (selects this rank's dropout noise, like its data).
        group_size: number of ranks.
        ema: EMA updated after every optimizer step.
        noise_width: columns of dropout noise the model consumes (0: the model has none).
        log_interval: log a line every this many steps (besides the progress bar).
        progress: show a progress bar (tqdm on a terminal, a line now and then in a file).
        accumulation_cells: ``make_accumulation_cells(step)`` output for gradient accumulation.
        before_step: called with the micro-batch's index (the same on every rank, counted over the whole run)
            before each forward pass; the supernet's training samples its architecture there.

    Returns:
        Mean loss, last learning rate, throughput, time and the number of updates skipped because
        their gradients were not finite (only with ``drop_overflow_update`` or dynamic loss scaling).

    Raises:
        NonFiniteLossError: the loss became NaN/Inf, or non-finite gradients were applied (without
            ``drop_overflow_update``); the message names the first non-finite parameter. The caller
            keeps the last good checkpoint.
    """
    step.set_train(True)
    accumulate = step.accumulation_steps if accumulation_cells is not None else 1
    batches = loader.get_dataset_size()
    losses: List[float] = []
    seen, skipped, micro = 0, 0, 0
    start = time.perf_counter()
    bar = progress_bar(
        total=batches, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress, dynamic_ncols=True, leave=False
    )
    for images, labels in loader.create_tuple_iterator(num_epochs=1):
        batch = images.shape[0]
        block = (global_step * group_size + rank) * accumulate + micro
        noise = make_noise(seed, block, batch, max(noise_width, 1))
        if before_step is not None:
            before_step(global_step * accumulate + micro)
        if accumulation_cells is None:
            loss, finite, _ = step(images, labels, noise)
            updated = True
        else:
            loss = accumulation_cells[0](images, labels, noise)
            micro += 1
            updated = micro == accumulate
            finite = Tensor(True)
            if updated:
                finite, _ = accumulation_cells[1]()
                micro = 0
        value = float(loss.asnumpy())
        if not math.isfinite(value):
            bar.close()
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch + 1}, step {global_step + 1}; "
                + describe_non_finite(_parameters(step.network))
            )
        losses.append(value)
        seen += batch
        if updated:
            if not bool(finite.asnumpy()):
                if not step.drop_overflow:
                    bar.close()
                    raise NonFiniteLossError(
                        f"gradients are not finite at epoch {epoch + 1}, step {global_step + 1}, and were applied "
                        f"(drop_overflow_update is False); " + describe_non_finite(_parameters(step.network))
                    )
                skipped += 1
            if ema is not None:
                ema()
            global_step += 1
        lr = lr_schedule[min(global_step, len(lr_schedule)) - 1] if global_step else lr_schedule[0]
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", img_s=f"{seen / elapsed:.1f}")
        bar.update(1)
        if log_interval and len(losses) % log_interval == 0:
            _logger.info(
                "epoch [%d/%d] step [%d/%d] loss %.5f lr %.6f %.1f img/s",
                epoch + 1,
                num_epochs,
                len(losses),
                batches,
                value,
                lr,
                seen / elapsed,
            )
    bar.close()
    seconds = time.perf_counter() - start
    if not losses:
        raise RunFailedError(
            "the training loader produced no batches (dataset smaller than one batch with drop_remainder?)"
        )
    return EpochResult(float(np.mean(losses)), lr, seen / seconds, seconds, skipped, losses)


def training_state(
    model: nn.Cell, optimizer: nn.Optimizer, ema: Optional[EMA], step: TrainStep
) -> Dict[str, np.ndarray]:
    """Everything needed to resume exactly: weights, optimizer state (incl. its step), EMA, loss-scale state.

    Args:
        model: the network.
        optimizer: its optimizer.
        ema: its EMA (or None).
        step: the train step (its loss-scale state).

    Returns:
        name -> array, for :func:`~mindcv.models.save_checkpoint` (with ``epoch`` and ``global_step`` metadata).
    """
    tensors = {p.name: p.asnumpy() for p in model.get_parameters()}
    tensors.update(
        {
            f"optimizer.{p.name}": p.asnumpy()
            for p in optimizer.get_parameters()
            if not p.name.startswith("learning_rate")
        }
    )
    tensors["train_step.loss_scale_good_steps"] = step.good_steps.asnumpy()
    if ema is not None:
        tensors.update(ema.state_dict())
    return tensors


def restore_training_state(
    path: str, model: nn.Cell, optimizer: nn.Optimizer, ema: Optional[EMA], step: TrainStep
) -> Tuple[int, int, Dict]:
    """Restore a :func:`training_state` checkpoint into the objects it was taken from.

    Args:
        path: the checkpoint.
        model: the network.
        optimizer: its optimizer.
        ema: its EMA (or None).
        step: the train step.

    Returns:
        (epochs done, optimizer steps done, the checkpoint's metadata).

    Raises:
        NonFiniteWeightsError: a weight, moment or EMA value is not finite.
        CheckpointError: the file is not a training checkpoint, or its metadata is invalid.
    """
    tensors, meta = read_checkpoint(path)
    # weights, EMA and optimizer moments alike, as the float32 they become (a float64 1e300 is inf there)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float32 = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in tensors.items()}
    non_finite = find_non_finite(as_float32)
    if non_finite:
        raise NonFiniteWeightsError(path, non_finite)
    if "epoch" not in meta or not any(k.startswith("optimizer.") for k in tensors):
        raise CheckpointError(
            f"'{path}' is not a training checkpoint of train.py (no optimizer state / epoch); "
            "to start from its weights use --ckpt_path without --resume"
        )
    epoch, global_step, loss_scale = meta.get("epoch"), meta.get("global_step"), meta.get("loss_scale", 1.0)
    counts_ok = all(type(v) is int and 0 <= v < 2**31 for v in (epoch, global_step))
    scale_ok = type(loss_scale) in (int, float) and math.isfinite(loss_scale) and loss_scale > 0
    if not (counts_ok and scale_ok):
        raise CheckpointError(
            f"'{path}': invalid training metadata (epoch {epoch!r}, global_step {global_step!r}, "
            f"loss_scale {loss_scale!r}): expected integers >= 0 and a finite loss scale > 0"
        )
    load_state_dict_into(
        model,
        {k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "ema.", "train_step."))},
        source=path,
        adapt=False,
    )
    load_optimizer_state(optimizer, {k: v for k, v in tensors.items() if k.startswith("optimizer.")}, path)
    if ema is not None:
        try:
            ema.load_state_dict(tensors)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"'{path}': {err.args[0]}") from None
    step.loss_scale.set_data(ms.Tensor(float(loss_scale), ms.float32))
    if "train_step.loss_scale_good_steps" in tensors:
        step.good_steps.set_data(ms.Tensor(tensors["train_step.loss_scale_good_steps"], ms.int32))
    return epoch, global_step, meta
