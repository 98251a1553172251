"""Train a model: ``python train.py -c configs/mnasnet/<recipe>.yaml [--option value ...]``.

Reads top to bottom: runtime -> data -> model -> loss -> schedule -> optimizer -> train step -> resume
-> epoch loop (in ``mindcv.engine``). Every epoch writes a checkpoint (best + latest K, atomically),
a metrics row (CSV / JSON lines) and a PNG of the curves into ``--ckpt_save_dir``.
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import numpy as np

import mindspore as ms
import mindspore.dataset as ds

from config import ConfigError, architecture_kwargs, parse_args, save_args
from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.engine import (
    EpochResult,
    EvalStep,
    NonFiniteLossError,
    average_bn_statistics,
    describe_non_finite,
    evaluate,
    restore_training_state,
    train_one_epoch,
    training_state,
)
from mindcv.io.finite import find_non_finite
from mindcv.loss import create_loss
from mindcv.models import create_model
from mindcv.models.checkpoint import model_metadata
from mindcv.models.layers import noise_width, takes_noise
from mindcv.optim import create_optimizer
from mindcv.runtime import environment_line, init_runtime
from mindcv.scheduler import create_scheduler
from mindcv.utils.bn_settling import BatchNormSettling
from mindcv.utils.checkpoint_manager import CheckpointManager
from mindcv.utils.cli import run_cli
from mindcv.utils.ema import EMA
from mindcv.utils.logger import set_logger
from mindcv.utils.metrics_log import MetricsLog
from mindcv.utils.random import set_seed
from mindcv.utils.run_dir import claim_run_dir
from mindcv.utils.train_step import NetWithLoss, TrainStep, make_accumulation_cells
from mindcv.version import __version__

logger = logging.getLogger("mindcv.train")


def eval_transform_kwargs(args) -> dict:
    """The evaluation preprocessing, recorded in checkpoints so validate.py reproduces it exactly."""
    kwargs = dict(image_resize=args.image_resize, crop_pct=args.crop_pct, interpolation=args.interpolation)
    if args.mean:
        kwargs["mean"] = list(args.mean)
    if args.std:
        kwargs["std"] = list(args.std)
    return kwargs


def check_unsupported(args) -> None:
    if args.aug_splits:
        raise ConfigError("aug_splits (AugMix/JSD splits) is not supported; set it to 0")
    if args.layer_decay is not None:
        raise ConfigError("layer_decay is not supported; remove it from the recipe")
    if args.amp_cast_list is not None:
        raise ConfigError("amp_cast_list is not supported; use amp_level O1/O2/O3")
    if args.ckpt_save_policy == "top_k" and not args.val_while_train:
        raise ConfigError("ckpt_save_policy top_k ranks checkpoints by validation accuracy: set val_while_train True")


def run_file_names(model: str) -> list:
    """Regular expressions of the names of the files a run writes (what ``--overwrite`` replaces)."""
    prefix = re.escape(model)
    return [
        rf"{prefix}-\d+_\d+\.ckpt",
        rf"{prefix}_best\.ckpt",
        r"metrics\.(csv|jsonl|png)",
        r"unreadable_(train|val)_images\.tsv",
        r"config\.yaml",
    ]


def cpu_precision(args) -> None:
    """Keep CPU training in fp32: MindSpore's CPU fp16 kernels are slower than fp32 and overflow."""
    if args.device_target == "CPU" and args.amp_level != "O0":
        logger.warning(
            "amp_level %s requested on the CPU: training in fp32 (O0) instead. MindSpore 2.10's CPU fp16 "
            "kernels are slower than fp32 and overflow without an accelerator's loss-scaling support, "
            "which turned whole runs into NaN weights",
            args.amp_level,
        )
        args.amp_level = "O0"


def main(args) -> int:
    check_unsupported(args)
    runtime = init_runtime(args.device_target, args.mode, args.distribute)
    _run_lock = claim_output_dir(args, runtime)  # one run per output folder, held until the process ends
    set_logger("mindcv", output_dir=args.ckpt_save_dir, rank=runtime.rank)
    cpu_precision(args)

    data = build_data(args, runtime)
    set_seed(args.seed)  # the one seeding point: initial weights depend on nothing but the seed, on every rank
    model = build_model(args, data.num_classes)
    run = build_training(args, model, data)
    start_epoch, global_step = resume_run(args, run) if args.resume else (0, 0)
    if runtime.is_main:
        save_args(args, os.path.join(args.ckpt_save_dir, "config.yaml"))
        log_setup(args, runtime, data, run)

    epoch_end = EpochEnd(args, runtime, data, run, resumed_at=start_epoch if args.resume else 0, start_step=global_step)
    for epoch in range(start_epoch, args.epoch_size):
        select_epoch_data(data.train_set, args.seed, epoch)
        try:
            result = train_one_epoch(
                run.step,
                data.train_loader,
                epoch,
                args.epoch_size,
                global_step,
                run.lr_schedule,
                args.seed,
                rank=runtime.rank,
                group_size=runtime.group_size,
                ema=run.ema,
                noise_width=noise_width(model),
                log_interval=args.log_interval,
                progress=args.progress and runtime.is_main,
                accumulation_cells=run.accumulation_cells,
            )
        except NonFiniteLossError as err:
            return stop_diverged(str(err), run.manager)
        global_step += run.steps_per_epoch
        if not epoch_end(epoch, global_step, result):
            return 1
    if runtime.is_main:
        epoch_end.log_finished()
    return 0


def claim_output_dir(args, runtime):
    """Lock ``ckpt_save_dir`` for this run (main process only); returns the lock, held while referenced."""
    if not runtime.is_main:
        return None
    return claim_run_dir(
        args.ckpt_save_dir,
        resume_from=args.ckpt_path if args.resume else None,
        overwrite=args.overwrite,
        ours=run_file_names(args.model),
    )


@dataclass
class Data:
    """The training data, the optional validation loader and the number of classes."""

    train_set: Any
    train_loader: Any
    val_loader: Optional[Any]
    num_classes: int


def build_data(args, runtime) -> Data:
    """Datasets and loaders; rank r of N reads micro-batch r of every global batch."""
    common = dict(num_shards=runtime.num_shards, shard_id=runtime.shard_id, num_parallel_workers=1, seed=args.seed)
    train_set = create_dataset(
        args.dataset,
        root=args.data_dir,
        split=args.train_split,
        shuffle=args.shuffle,
        num_samples=args.num_samples,
        download=args.dataset_download,
        num_aug_repeats=args.aug_repeats,
        strict=args.strict_data,
        is_training=True,
        block_size=args.batch_size,
        unreadable_log=os.path.join(args.ckpt_save_dir, "unreadable_train_images.tsv"),
        **common,
    )
    num_classes = args.num_classes or train_set.num_classes()
    mixing = args.mixup > 0 or args.cutmix > 0
    train_tf = create_transforms(
        args.dataset,
        args.image_resize,
        is_training=True,
        auto_augment=args.auto_augment,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        interpolation=args.interpolation,
        mean=args.mean,
        std=args.std,
        re_prob=args.re_prob,
        re_scale=args.re_scale,
        re_ratio=args.re_ratio,
        re_value=args.re_value if args.re_value == "random" else float(args.re_value),
        re_max_attempts=args.re_max_attempts,
    )
    train_loader = create_loader(
        train_set,
        args.batch_size,
        drop_remainder=args.drop_remainder,
        is_training=True,
        mixup=args.mixup,
        cutmix=args.cutmix,
        cutmix_prob=args.cutmix_prob,
        num_classes=num_classes,
        transform=train_tf,
        num_parallel_workers=args.num_parallel_workers,
        label_smoothing=args.label_smoothing if mixing else 0.0,
    )
    if not args.val_while_train:
        return Data(train_set, train_loader, None, num_classes)
    val_set = create_dataset(
        args.dataset,
        root=args.data_dir,
        split=args.val_split,
        shuffle=args.eval_shuffle,  # metrics do not depend on the order: every sample is scored exactly once
        is_training=False,
        unreadable_log=os.path.join(args.ckpt_save_dir, "unreadable_val_images.tsv"),
        **common,
    )
    split_dirs = [os.path.realpath(os.path.join(str(val_set.root), s)) for s in (args.train_split, args.val_split)]
    if split_dirs[0] == split_dirs[1] and os.path.isdir(split_dirs[0]):
        raise ConfigError(
            f"val_split '{args.val_split}' and train_split '{args.train_split}' are the same folder "
            f"'{split_dirs[0]}': validation would score the training images"
        )
    val_loader = create_loader(
        val_set,
        args.batch_size,
        transform=create_transforms(args.dataset, is_training=False, **eval_transform_kwargs(args)),
        num_parallel_workers=args.num_parallel_workers,
    )
    return Data(train_set, train_loader, val_loader, num_classes)


def build_model(args, num_classes: int):
    """The model of the options, with its pretrained or ``--ckpt_path`` weights (none when resuming)."""
    model = create_model(
        args.model,
        num_classes=num_classes,
        in_channels=args.in_channels,
        drop_rate=args.drop_rate,
        drop_path_rate=args.drop_path_rate,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        pretrained=args.pretrained,
        checkpoint_path="" if args.resume else args.ckpt_path,
        **architecture_kwargs(args),
    )
    return model


def build_eval_twin(args, model):
    """An architecture twin of ``model`` (same BN eps, whatever the weights chose) to evaluate EMA weights in."""
    return create_model(
        args.model,
        num_classes=model.num_classes,
        in_channels=args.in_channels,
        bn_eps=model.bn_eps,
        bn_momentum=args.bn_momentum,
        **architecture_kwargs(args),
    )


@dataclass
class Run:
    """Everything the epoch loop drives: model, schedule, optimizer, train step, EMA, evaluator, checkpoints."""

    model: Any
    lr_schedule: List[float]
    optimizer: Any
    step: TrainStep
    accumulation_cells: Any
    ema: Optional[EMA]
    eval_net: Any  # holds the weights validation scores: the model itself, or its twin
    eval_model: Any  # what validation runs: eval_net, or its mixed-precision wrapper
    eval_step: Optional[EvalStep]
    steps_per_epoch: int
    manager: CheckpointManager


def build_training(args, model, data: Data) -> Run:
    """Loss, learning-rate schedule, optimizer, train step, EMA and evaluator of ``model``."""
    mixing = args.mixup > 0 or args.cutmix > 0
    loss_fn = create_loss(
        args.loss,
        reduction=args.reduction,
        label_smoothing=0.0 if mixing else args.label_smoothing,
        aux_factor=args.aux_factor,
    )
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = data.train_loader.get_dataset_size() // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(
            f"an epoch has {data.train_loader.get_dataset_size()} batches, "
            f"fewer than gradient_accumulation_steps={accumulation}"
        )
    lr_schedule = create_scheduler(
        steps_per_epoch,
        args.scheduler,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        warmup_factor=args.warmup_factor,
        decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate,
        milestones=args.multi_step_decay_milestones,
        num_epochs=args.epoch_size,
        num_cycles=args.num_cycles,
        cycle_decay=args.cycle_decay,
        lr_epoch_stair=args.lr_epoch_stair,
    )
    optimizer = create_optimizer(
        model,
        args.opt,
        lr=lr_schedule,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        nesterov=args.use_nesterov,
        weight_decay_filter=args.weight_decay_filter,
        loss_scale=1.0,
        eps=args.eps,
    )
    dynamic = args.loss_scale_type == "dynamic" or (args.loss_scale_type == "auto" and args.amp_level != "O0")
    # MindSpore 2.10 returns a new cell (a rewritten network for O1, an fp32-output wrapper for O2/O3): train
    # that one, and keep `model` (which owns the parameters) for attributes, metadata and checkpoints
    train_net = model if args.amp_level == "O0" else ms.amp.auto_mixed_precision(model, args.amp_level)
    step = TrainStep(
        NetWithLoss(train_net, loss_fn, use_noise=takes_noise(model)),
        optimizer,
        loss_scale=args.loss_scale,
        dynamic_loss_scale=dynamic,
        drop_overflow_update=args.drop_overflow_update,
        clip_grad=args.clip_grad,
        clip_value=args.clip_value,
        accumulation_steps=accumulation,
    )
    ema = EMA(model, args.ema_decay) if args.ema else None
    # EMA weights, or another precision, are evaluated in a twin of the model, so training never sees them
    separate = data.val_loader is not None and (ema is not None or args.val_amp_level != args.amp_level)
    eval_net = build_eval_twin(args, model) if separate else train_net
    eval_model = eval_net
    if separate and args.val_amp_level != "O0":
        eval_model = ms.amp.auto_mixed_precision(eval_net, args.val_amp_level)
    eval_step = EvalStep(eval_model, topk=min(5, data.num_classes)) if data.val_loader is not None else None
    manager = CheckpointManager(args.ckpt_save_policy, args.keep_checkpoint_max, args.ckpt_save_dir, args.model)
    return Run(
        model,
        lr_schedule,
        optimizer,
        step,
        make_accumulation_cells(step),
        ema,
        model if eval_net is train_net else eval_net,
        eval_model,
        eval_step,
        steps_per_epoch,
        manager,
    )


def resume_run(args, run: Run) -> Tuple[int, int]:
    """Restore ``--ckpt_path`` into ``run``; returns (epochs done, optimizer steps done)."""
    start_epoch, global_step, run.manager.best_metric = resume(
        args.ckpt_path, run.model, run.optimizer, run.ema, run.step
    )
    if global_step != start_epoch * run.steps_per_epoch:
        # resumed with another number of devices / batch: continue the schedule at the epoch boundary
        logger.info(
            "steps per epoch changed (%d steps after %d epochs); continuing the schedule at step %d",
            global_step,
            start_epoch,
            start_epoch * run.steps_per_epoch,
        )
        global_step = start_epoch * run.steps_per_epoch
        run.optimizer.global_step.set_data(ms.Tensor([global_step], run.optimizer.global_step.dtype))
    logger.info("resumed from %s: %d epochs, %d steps done", args.ckpt_path, start_epoch, global_step)
    return start_epoch, global_step


def log_setup(args, runtime, data: Data, run: Run) -> None:
    """What runs: versions, device, data, model, optimizer and the global batch."""
    logger.info(
        "mindcv %s | MindSpore %s | %s %s mode | %d device(s)",
        __version__,
        ms.__version__,
        args.device_target,
        "GRAPH" if args.mode == 0 else "PYNATIVE",
        runtime.group_size,
    )
    if args.device_target == "CPU":
        logger.info("CPU kernels: %s", environment_line())
    validation = f", validation {data.val_loader.get_dataset_size()} batches" if data.val_loader else ""
    logger.info(
        "data: %s (%d classes) %d train samples/epoch per device, %d batches%s",
        args.dataset,
        data.num_classes,
        data.train_set.get_dataset_size(),
        data.train_loader.get_dataset_size(),
        validation,
    )
    logger.info(
        "model: %s, %d trainable parameters | optimizer %s, peak lr %g, %s schedule, %d epochs",
        args.model,
        sum(p.size for p in run.model.trainable_params()),
        args.opt,
        args.lr,
        args.scheduler,
        args.epoch_size,
    )
    accumulation = args.gradient_accumulation_steps
    logger.info(
        "global batch %d = %d per device x %d device(s) x %d accumulation; lr is NOT rescaled automatically: "
        "keep the recipe's global batch or scale lr linearly (lr x new/old global batch)",
        args.batch_size * runtime.group_size * accumulation,
        args.batch_size,
        runtime.group_size,
        accumulation,
    )


def select_epoch_data(train_set, seed: int, epoch: int) -> None:
    """The data order and augmentation stream of ``epoch``: a function of (seed, epoch), the same after a resume."""
    train_set.shard_sampler.set_epoch(epoch)
    ds.config.set_seed(seed * 1000 + epoch)


class EpochEnd:
    """The work after each epoch: agree on BN statistics, check the weights, validate, log, record, save.

    Args:
        args: the run's options.
        runtime: devices and ranks.
        data: the loaders.
        run: what the loop trains.
        resumed_at: epochs already done when this process started (the metrics log drops later rows).
        start_step: optimizer steps already done when this process started.
    """

    def __init__(self, args, runtime, data: Data, run: Run, resumed_at: int, start_step: int = 0) -> None:
        self.args, self.runtime, self.data, self.run = args, runtime, data, run
        self.start_step, self.global_step = start_step, start_step
        self.bn_settling = BatchNormSettling(run.model)  # warns when validation would use unsettled statistics
        self.bn_warned = False
        self.metrics = MetricsLog(args.ckpt_save_dir, resume_epoch=resumed_at) if runtime.is_main else None
        self.meta_base = {
            **model_metadata(run.model),  # everything load_model needs to rebuild the architecture
            "model": args.model,
            "num_classes": data.num_classes,
            "class_names": data.train_set.class_names,
            "dataset": args.dataset,
            "eval_transform": eval_transform_kwargs(args),
            "seed": args.seed,
            "mindcv_version": __version__,
        }

    def __call__(self, epoch: int, global_step: int, result: EpochResult) -> bool:
        """Finish ``epoch`` (0-based); returns False when training must stop (the weights diverged)."""
        args, run = self.args, self.run
        if self.runtime.distributed:
            average_bn_statistics(run.model, self.runtime.sum_across_ranks(), self.runtime.group_size)
            if run.ema is not None:
                average_bn_statistics(run.ema, self.runtime.sum_across_ranks(), self.runtime.group_size)
        state = training_state(run.model, run.optimizer, run.ema, run.step)
        if find_non_finite(state):
            stop_diverged(f"weights are not finite after epoch {epoch + 1}; {describe_non_finite(state)}", run.manager)
            return False
        row = {
            "epoch": epoch + 1,
            "train_loss": result.loss,
            "lr": result.lr,
            "img_per_s": result.images_per_second,
            "epoch_seconds": result.seconds,
        }
        last = epoch + 1 == args.epoch_size
        self.global_step = global_step
        if self.data.val_loader is not None and ((epoch + 1) % args.val_interval == 0 or last):
            row.update(self.validate())
            if not self.bn_warned:
                self.bn_warned = self.warn_unsettled_bn()
        if self.runtime.is_main:
            logger.info(self.summary(row, result))
            self.metrics.append(row)  # before the checkpoints: a kill while saving never loses a finished epoch's row
            self.save(state, row, global_step, periodic=(epoch + 1) % args.ckpt_save_interval == 0 or last)
        return True

    def validate(self) -> Dict[str, float]:
        run = self.run
        if run.ema is not None:
            run.ema.copy_to(run.eval_net)
        elif run.eval_net is not run.model:  # a twin at another precision: the current weights
            weights = {p.name: p for p in run.model.get_parameters()}
            for p in run.eval_net.get_parameters():
                p.set_data(weights[p.name].value().copy())
        val = evaluate(
            run.eval_model,
            self.data.val_loader,
            self.data.num_classes,
            self.runtime.sum_across_ranks(),
            self.args.progress and self.runtime.is_main,
            eval_step=run.eval_step,
        )
        run.model.set_train(True)
        return dict(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"], val_samples=val["num_samples"])

    def warn_unsettled_bn(self) -> bool:
        """Log a warning when validation used BatchNorm statistics still mostly from the start; True if it did."""
        batches = (self.global_step - self.start_step) * self.args.gradient_accumulation_steps
        message = self.bn_settling.warning(batches)
        if message and self.runtime.is_main:
            logger.warning(message)
        return message is not None

    def summary(self, row: Dict[str, Any], result: EpochResult) -> str:
        """The epoch's log line: training figures, then validation, skipped images and skipped updates if any."""
        parts = [
            f"epoch {row['epoch']}/{self.args.epoch_size}: loss {result.loss:.4f}, lr {result.lr:.6f}, "
            f"{result.images_per_second:.1f} img/s, {result.seconds:.1f} s"
        ]
        if "val_top1" in row:
            parts.append(f"val top-1 {row['val_top1']:.4f}% top-5 {row['val_top5']:.4f}% loss {row['val_loss']:.4f}")
        unreadable = self.data.train_set.unreadable.count()
        if unreadable:
            parts.append(f"{unreadable} unreadable image(s) skipped, see {self.data.train_set.unreadable.log_path}")
        if result.skipped_steps:
            scale = float(self.run.step.loss_scale.asnumpy())
            parts.append(f"{result.skipped_steps} update(s) skipped: non-finite gradients (loss scale now {scale:g})")
        return " | ".join(parts)

    def save(self, state: Dict[str, np.ndarray], row: Dict[str, Any], global_step: int, periodic: bool) -> None:
        """Write the best checkpoint (and on a periodic epoch the latest), atomically, with what rebuilds the model."""
        manager, metric = self.run.manager, row.get("val_top1")
        meta = {
            **self.meta_base,
            "epoch": row["epoch"],
            "global_step": global_step,
            "loss_scale": float(self.run.step.loss_scale.asnumpy()),
            "ema": self.run.ema is not None,
            "val_top1": metric,
            "best_metric": max((m for m in (manager.best_metric, metric) if m is not None), default=None),
        }
        if periodic:
            written = manager.save(state, row["epoch"], global_step, meta, metric)
        else:
            written = manager.save_best(state, meta, metric)
        if written:
            logger.info("saved %s", ", ".join(written))

    def log_finished(self) -> None:
        manager = self.run.manager
        best = (
            f", best val top-1 {manager.best_metric:.4f}% ({manager.best_path})"
            if manager.best_metric is not None
            else ""
        )
        logger.info("finished training%s; metrics: %s", best, self.metrics.csv_path)
        if self.bn_warned and self.data.val_loader is not None:
            self.warn_unsettled_bn()  # still unsettled at the end: say so where the user reads the result


def stop_diverged(reason: str, manager: CheckpointManager) -> int:
    """Log why training stops on NaN/Inf and which checkpoint is the last good one; exit code 1."""
    last = manager.saved[-1][0] if manager.saved else "none written yet"
    logger.error(
        "training diverged: %s. Stopping without writing a checkpoint (last good: %s). "
        "Lower the learning rate, enable clip_grad, or check the data.",
        reason,
        last,
    )
    return 1


def resume(path: str, model, optimizer, ema, step):
    """Restore a :func:`~mindcv.engine.training_state` checkpoint; returns (epochs done, global step, best metric)."""
    if not path:
        raise ConfigError("--resume needs --ckpt_path <a checkpoint written by train.py>")
    epoch, global_step, meta = restore_training_state(path, model, optimizer, ema, step)
    return epoch, global_step, meta.get("best_metric")


def cli() -> int:
    return main(parse_args())


if __name__ == "__main__":
    run_cli("train.py", cli, logger=logger)
