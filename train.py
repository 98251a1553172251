"""Train a model: ``python train.py -c configs/mnasnet/<recipe>.yaml [--option value ...]``.

Reads top to bottom: runtime -> data -> model -> loss -> schedule -> optimizer -> train step -> resume
-> epoch loop (in ``mindcv.engine``). Every epoch writes a checkpoint (best + latest K, atomically),
a metrics row (CSV / JSON lines) and a PNG of the curves into ``--ckpt_save_dir``.
"""

import logging
import math
import os
import re

import numpy as np

import mindspore as ms
import mindspore.dataset as ds

from config import ConfigError, architecture_kwargs, parse_args, save_args
from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.engine import (
    EvalStep,
    NonFiniteLossError,
    average_bn_statistics,
    describe_non_finite,
    evaluate,
    train_one_epoch,
)
from mindcv.loss import create_loss
from mindcv.models import CheckpointError, create_model
from mindcv.models.checkpoint import NonFiniteWeightsError, model_metadata, read_checkpoint
from mindcv.optim import create_optimizer
from mindcv.optim.optim_factory import load_optimizer_state
from mindcv.scheduler import create_scheduler
from mindcv.utils.checkpoint_manager import CheckpointManager
from mindcv.utils.cli import run_cli
from mindcv.utils.cpu_isa import environment_line
from mindcv.utils.ema import EMA
from mindcv.utils.finite import find_non_finite
from mindcv.utils.logger import set_logger
from mindcv.utils.metrics_log import MetricsLog
from mindcv.utils.random import set_seed
from mindcv.utils.run_dir import claim_run_dir
from mindcv.utils.runtime import init_runtime
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
    if runtime.is_main:  # one run per output folder; held until the process ends
        _run_lock = claim_run_dir(
            args.ckpt_save_dir,
            resume_from=args.ckpt_path if args.resume else None,
            overwrite=args.overwrite,
            ours=run_file_names(args.model),
        )
    set_seed(args.seed)  # the same seed on every rank: identical initial weights
    set_logger("mindcv", output_dir=args.ckpt_save_dir, rank=runtime.rank)
    cpu_precision(args)
    progress = args.progress and runtime.is_main

    # data
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
        block_size=args.batch_size,  # rank r trains on micro-batch r of each global batch
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
    val_loader = None
    if args.val_while_train:
        val_set = create_dataset(
            args.dataset,
            root=args.data_dir,
            split=args.val_split,
            shuffle=False,
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

    # model, loss, schedule, optimizer, train step
    set_seed(args.seed)  # initial weights depend on nothing but the seed (identical on every rank and launcher)
    arch_kwargs = architecture_kwargs(args)
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
        **arch_kwargs,
    )
    if args.amp_level != "O0":
        if args.device_target == "CPU":
            logger.warning(
                "amp_level %s on the CPU computes in fp32 with extra casts: expect it to be slower", args.amp_level
            )
        ms.amp.auto_mixed_precision(model, args.amp_level)
    loss_fn = create_loss(
        args.loss,
        reduction=args.reduction,
        label_smoothing=0.0 if mixing else args.label_smoothing,
        aux_factor=args.aux_factor,
    )
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = train_loader.get_dataset_size() // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(
            f"an epoch has {train_loader.get_dataset_size()} batches, "
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
    step = TrainStep(
        NetWithLoss(model, loss_fn, use_noise=hasattr(model, "noise_width")),
        optimizer,
        loss_scale=args.loss_scale,
        dynamic_loss_scale=dynamic,
        drop_overflow_update=args.drop_overflow_update,
        clip_grad=args.clip_grad,
        clip_value=args.clip_value,
        accumulation_steps=accumulation,
    )
    accumulation_cells = make_accumulation_cells(step)
    ema = EMA(model, args.ema_decay) if args.ema else None
    eval_model = model
    if ema is not None and val_loader is not None:
        eval_model = create_model(
            args.model,
            num_classes=num_classes,
            in_channels=args.in_channels,
            bn_eps=model.bn_eps,
            bn_momentum=args.bn_momentum,
            **arch_kwargs,
        )
    eval_step = EvalStep(eval_model, topk=min(5, num_classes)) if val_loader is not None else None

    # resume
    start_epoch, global_step, manager_best = 0, 0, None
    if args.resume:
        start_epoch, global_step, manager_best = resume(args.ckpt_path, model, optimizer, ema, step)
        if global_step != start_epoch * steps_per_epoch:
            # resumed with another number of devices / batch: continue the schedule at the epoch boundary
            logger.info(
                "steps per epoch changed (%d steps after %d epochs); continuing the schedule at step %d",
                global_step,
                start_epoch,
                start_epoch * steps_per_epoch,
            )
            global_step = start_epoch * steps_per_epoch
            optimizer.global_step.set_data(ms.Tensor([global_step], optimizer.global_step.dtype))
        logger.info("resumed from %s: %d epochs, %d steps done", args.ckpt_path, start_epoch, global_step)
    manager = CheckpointManager(args.ckpt_save_policy, args.keep_checkpoint_max, args.ckpt_save_dir, args.model)
    manager.best_metric = manager_best
    metrics = (
        MetricsLog(args.ckpt_save_dir, resume_epoch=start_epoch if args.resume else 0) if runtime.is_main else None
    )

    global_batch = args.batch_size * runtime.group_size * accumulation
    if runtime.is_main:
        save_args(args, os.path.join(args.ckpt_save_dir, "config.yaml"))
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
        logger.info(
            "data: %s (%d classes) %d train samples/epoch per device, %d batches%s",
            args.dataset,
            num_classes,
            train_set.get_dataset_size(),
            train_loader.get_dataset_size(),
            f", validation {val_loader.get_dataset_size()} batches" if val_loader else "",
        )
        logger.info(
            "model: %s, %d trainable parameters | optimizer %s, peak lr %g, %s schedule, %d epochs",
            args.model,
            sum(p.size for p in model.trainable_params()),
            args.opt,
            args.lr,
            args.scheduler,
            args.epoch_size,
        )
        logger.info(
            "global batch %d = %d per device x %d device(s) x %d accumulation; lr is NOT rescaled automatically: "
            "keep the recipe's global batch or scale lr linearly (lr x new/old global batch)",
            global_batch,
            args.batch_size,
            runtime.group_size,
            accumulation,
        )

    meta_base = {
        **model_metadata(model),  # everything load_model needs to rebuild the architecture
        "model": args.model,
        "num_classes": num_classes,
        "class_names": train_set.class_names,
        "dataset": args.dataset,
        "eval_transform": eval_transform_kwargs(args),
        "seed": args.seed,
        "mindcv_version": __version__,
    }
    for epoch in range(start_epoch, args.epoch_size):
        train_loader.shard_sampler.set_epoch(epoch)
        ds.config.set_seed(args.seed * 1000 + epoch)  # augmentation stream of this epoch, identical after a resume
        try:
            result = train_one_epoch(
                step,
                train_loader,
                epoch,
                args.epoch_size,
                global_step,
                lr_schedule,
                args.seed,
                rank=runtime.rank,
                group_size=runtime.group_size,
                ema=ema,
                noise_width=getattr(model, "noise_width", 0),
                log_interval=args.log_interval,
                progress=progress,
                accumulation_cells=accumulation_cells,
            )
        except NonFiniteLossError as err:
            return stop_diverged(str(err), manager)
        global_step += steps_per_epoch
        if runtime.distributed:
            average_bn_statistics(model, runtime.sum_across_ranks(), runtime.group_size)
            if ema is not None:
                average_bn_statistics(ema, runtime.sum_across_ranks(), runtime.group_size)
        state = training_state(model, optimizer, ema, step)
        if find_non_finite(state):
            return stop_diverged(
                f"weights are not finite after epoch {epoch + 1}; {describe_non_finite(state)}", manager
            )
        unreadable = train_set.unreadable.count()
        row = {
            "epoch": epoch + 1,
            "train_loss": result.loss,
            "lr": result.lr,
            "img_per_s": result.images_per_second,
            "epoch_seconds": result.seconds,
        }
        metric = None
        if val_loader is not None and ((epoch + 1) % args.val_interval == 0 or epoch + 1 == args.epoch_size):
            if ema is not None:
                ema.copy_to(eval_model)
            val = evaluate(
                eval_model, val_loader, num_classes, runtime.sum_across_ranks(), progress, eval_step=eval_step
            )
            metric = val["top1"]
            row.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"], val_samples=val["num_samples"])
            model.set_train(True)
        if runtime.is_main:
            logger.info(
                "epoch %d/%d: loss %.4f, lr %.6f, %.1f img/s, %.1f s%s%s%s",
                epoch + 1,
                args.epoch_size,
                result.loss,
                result.lr,
                result.images_per_second,
                result.seconds,
                (
                    f" | val top-1 {row['val_top1']:.4f}% top-5 {row['val_top5']:.4f}% loss {row['val_loss']:.4f}"
                    if metric is not None
                    else ""
                ),
                (
                    f" | {unreadable} unreadable image(s) skipped, see {train_set.unreadable.log_path}"
                    if unreadable
                    else ""
                ),
                (
                    f" | {result.skipped_steps} update(s) skipped: non-finite gradients "
                    f"(loss scale now {float(step.loss_scale.asnumpy()):g})"
                    if result.skipped_steps
                    else ""
                ),
            )
            metrics.append(row)  # before the checkpoints: a kill while saving never loses a finished epoch's row
            meta = {
                **meta_base,
                "epoch": epoch + 1,
                "global_step": global_step,
                "loss_scale": float(step.loss_scale.asnumpy()),
                "ema": ema is not None,
                "val_top1": metric,
                "best_metric": max((m for m in (manager.best_metric, metric) if m is not None), default=None),
            }
            if (epoch + 1) % args.ckpt_save_interval == 0 or epoch + 1 == args.epoch_size:
                written = manager.save(state, epoch + 1, global_step, meta, metric)
            else:
                written = manager.save_best(state, meta, metric)
            if written:
                logger.info("saved %s", ", ".join(written))
    if runtime.is_main:
        best = (
            f", best val top-1 {manager.best_metric:.4f}% ({manager.best_path})"
            if manager.best_metric is not None
            else ""
        )
        logger.info("finished training%s; metrics: %s", best, metrics.csv_path)
    return 0


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


def training_state(model, optimizer, ema, step) -> dict:
    """Everything needed to resume exactly: weights, optimizer state (incl. its step), EMA, loss-scale state."""
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


def resume(path: str, model, optimizer, ema, step):
    """Restore a :func:`training_state` checkpoint; returns (epochs done, global step, best metric)."""
    from mindcv.models.checkpoint import load_state_dict_into

    if not path:
        raise ConfigError("--resume needs --ckpt_path <a checkpoint written by train.py>")
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
    return epoch, global_step, meta.get("best_metric")


def cli() -> int:
    return main(parse_args())


if __name__ == "__main__":
    run_cli("train.py", cli, logger=logger)
