"""Evaluate a model: ``python validate.py -c <recipe>.yaml --data_dir <imagenet> --ckpt_path <ckpt>``.

``--ckpt_path`` takes a checkpoint written by train.py (its recorded class count and evaluation
transform are used unless the recipe or command line set them) or any weight file ``create_model``
converts (torchvision, timm, upstream mindcv); ``--pretrained`` evaluates the published weights with
their own evaluation transform. Prints a human summary and, last, one JSON line (also written to
``--result_file``). The numbers equal those train.py logged for the same checkpoint.
"""

import json
import logging
import os
import sys

from config import ConfigError, architecture_kwargs, explicit_keys, parse_args
from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.engine import evaluate
from mindcv.models import create_model, get_pretrained_cfg
from mindcv.models.checkpoint import read_checkpoint_metadata
from mindcv.models.model_factory import split_model_name_tag, weights_num_classes
from mindcv.utils.cli import run_cli
from mindcv.utils.logger import set_logger
from mindcv.utils.runtime import init_runtime

logger = logging.getLogger("mindcv.validate")
_TRANSFORM_KEYS = ("image_resize", "crop_pct", "interpolation", "mean", "std")


def resolve_eval_transform(args, explicit, meta: dict) -> dict:
    """Evaluation transform: recipe/command line > checkpoint record > published weights' cfg > defaults."""
    resolved = {k: getattr(args, k) for k in _TRANSFORM_KEYS if getattr(args, k) is not None}
    recorded = dict(meta.get("eval_transform") or {})
    if not recorded and args.pretrained:
        name, tag = split_model_name_tag(args.model)
        cfg = get_pretrained_cfg(name, tag or None)
        if cfg:
            recorded = dict(
                image_resize=cfg.input_size[-1], interpolation=cfg.interpolation, mean=list(cfg.mean), std=list(cfg.std)
            )
            recorded["resize_size"] = cfg.eval_resize
    for key, value in recorded.items():
        if key not in explicit:
            resolved[key] = value
    if {"crop_pct", "image_resize"} & set(explicit):
        resolved.pop("resize_size", None)  # an explicit size or crop fraction replaces the published resize
    return resolved


def main(args, explicit) -> dict:
    runtime = init_runtime(args.device_target, args.mode, args.distribute, require_launcher=False)
    set_logger("mindcv", rank=runtime.rank)
    if args.pretrained and args.ckpt_path:
        raise ConfigError("pass either --pretrained or --ckpt_path, not both")
    if not (args.pretrained or args.ckpt_path or args.random_weights):
        raise ConfigError(
            "no weights to evaluate: pass --ckpt_path <weight file> or --pretrained True "
            "(--random_weights True evaluates an untrained model on purpose)"
        )
    meta = read_checkpoint_metadata(args.ckpt_path)
    if meta.get("model") and split_model_name_tag(args.model)[0] != meta["model"]:
        raise ConfigError(
            f"checkpoint '{args.ckpt_path}' was trained as '{meta['model']}', not '{args.model}': "
            f"pass --model {meta['model']}"
        )
    if args.ema and meta and not meta.get("ema"):
        raise ConfigError(f"--ema was given but '{args.ckpt_path}' holds no EMA weights (train with --ema True)")

    dataset = create_dataset(
        args.dataset,
        root=args.data_dir,
        split=args.val_split,
        shuffle=False,
        download=args.dataset_download,
        num_shards=runtime.num_shards,
        shard_id=runtime.shard_id,
        is_training=False,
        strict=args.strict_data,
    )
    num_classes = (
        weights_num_classes(args.model, args.ckpt_path, args.pretrained, args.ema, args.num_classes)
        or dataset.num_classes()
    )
    if meta.get("class_names") and meta["class_names"] != dataset.class_names:
        logger.warning(
            "class folders of '%s' differ from those the checkpoint was trained on; labels may not match", dataset.root
        )
    transform_kwargs = resolve_eval_transform(args, explicit, meta)
    loader = create_loader(
        dataset,
        args.batch_size,
        drop_remainder=False,
        transform=create_transforms(args.dataset, is_training=False, **transform_kwargs),
        num_parallel_workers=args.num_parallel_workers,
    )
    model = create_model(
        args.model,
        num_classes=num_classes,
        in_channels=args.in_channels,
        pretrained=args.pretrained,
        checkpoint_path=args.ckpt_path,
        ema=args.ema,
        bn_eps=args.bn_eps,
        **architecture_kwargs(args, meta),
    )
    logger.info(
        "validating %s (%s) on %s/%s: %d images, %d batches, transform %s",
        args.model,
        args.ckpt_path or ("pretrained" if args.pretrained else "random weights"),
        args.dataset,
        args.val_split,
        dataset.get_dataset_size(),
        loader.get_dataset_size(),
        transform_kwargs,
    )
    result = evaluate(model, loader, num_classes, runtime.sum_across_ranks(), args.progress and runtime.is_main)
    unreadable = dataset.unreadable.count()
    result.update(
        model=args.model,
        checkpoint=args.ckpt_path or ("pretrained" if args.pretrained else ""),
        ema=bool(args.ema),
        dataset=args.dataset,
        split=args.val_split,
        unreadable_images=unreadable,
    )
    if runtime.is_main:
        print(
            f"{args.model}: top-1 {result['top1']:.4f}%  top-5 {result['top5']:.4f}%  loss {result['loss']:.6f}  "
            f"on {result['num_samples']} images" + (f" ({unreadable} unreadable skipped)" if unreadable else "")
        )
        line = json.dumps(result, sort_keys=True)
        print(line)
        if args.result_file:
            os.makedirs(os.path.dirname(os.path.abspath(args.result_file)), exist_ok=True)
            with open(args.result_file, "w") as f:
                f.write(line + "\n")
    return result


def cli() -> int:
    main(parse_args(), explicit_keys(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    run_cli("validate.py", cli)
