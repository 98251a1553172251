"""Evaluate a model: ``python validate.py -c <recipe>.yaml --data_dir <imagenet> --ckpt_path <ckpt>``.

``--ckpt_path`` takes a checkpoint written by train.py (its recorded architecture, class count and
evaluation transform are used; a recipe or command line may change the transform, and a class count other
than the classifier's is refused) or any weight file mindcv reads (torchvision, timm, upstream mindcv),
through ``mindcv.models.load_model``; ``--pretrained`` evaluates the published weights with their own
evaluation transform. ``--backend onnxruntime`` scores the deployed graph (BN folded, exported, checked).
Prints a human summary and, last, one JSON line (also written to ``--result_file``). The numbers equal those
train.py logged for the same checkpoint.
"""

import json
import logging
import os
import sys

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import mindspore as ms

from config import ConfigError, explicit_keys, parse_args
from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.deploy import OnnxEvalStep, OnnxRuntimeModel
from mindcv.engine import evaluate
from mindcv.models.loading import load_model
from mindcv.runtime import init_runtime
from mindcv.utils.cli import run_cli
from mindcv.utils.logger import set_logger

logger = logging.getLogger("mindcv.validate")
_TRANSFORM_KEYS = ("image_resize", "crop_pct", "interpolation", "mean", "std")


def resolve_eval_transform(args, explicit, recorded: dict) -> dict:
    """Evaluation transform: recipe/command line > the weights' record (checkpoint or published cfg) > defaults."""
    resolved = {k: getattr(args, k) for k in _TRANSFORM_KEYS if getattr(args, k) is not None}
    for key, value in (recorded or {}).items():
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
    dataset = create_dataset(
        args.dataset,
        root=args.data_dir,
        split=args.val_split,
        shuffle=args.eval_shuffle,  # the metrics are sums over the samples: the order does not change them
        seed=args.seed,
        download=args.dataset_download,
        num_shards=runtime.num_shards,
        shard_id=runtime.shard_id,
        is_training=False,
        strict=args.strict_data,
    )
    loaded = load_model(
        args.model,
        args.ckpt_path,
        args.pretrained,
        ema=args.ema,
        num_classes=args.num_classes,
        in_channels=args.in_channels if "in_channels" in explicit else None,  # else: the weights' own
        arch=args.arch,
        width_mult=args.width_mult,
        bn_eps=args.bn_eps,
        default_num_classes=dataset.num_classes(),
    )
    num_classes = loaded.num_classes
    if dataset.num_classes() > num_classes:  # labels the classifier cannot output: a meaningless score
        raise ConfigError(
            f"'{dataset.root}' has {dataset.num_classes()} classes but the weights' classifier has {num_classes}: "
            "evaluate on the dataset the weights were trained for"
        )
    if loaded.metadata.get("class_names") and loaded.metadata["class_names"] != dataset.class_names:
        logger.warning(
            "class folders of '%s' differ from those the checkpoint was trained on; labels may not match", dataset.root
        )
    transform_kwargs = resolve_eval_transform(args, explicit, loaded.eval_transform)
    loader = create_loader(
        dataset,
        args.batch_size,
        drop_remainder=False,
        transform=create_transforms(args.dataset, is_training=False, **transform_kwargs),
        num_parallel_workers=args.num_parallel_workers,
    )
    model, eval_step = loaded.model, None
    if args.val_amp_level != "O0" and args.backend == "mindspore":  # O0 on the CPU and with onnxruntime (config.py)
        model = ms.amp.auto_mixed_precision(model, args.val_amp_level)
    if args.backend == "onnxruntime":  # the deployed graph: BN folded, exported, checked and cached
        image_size = int(transform_kwargs.get("image_resize") or 224)
        eval_step = OnnxEvalStep(OnnxRuntimeModel.from_loaded(loaded, image_size), topk=min(5, num_classes))
        model = None
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
    result = evaluate(
        model, loader, num_classes, runtime.sum_across_ranks(), args.progress and runtime.is_main, eval_step=eval_step
    )
    unreadable = dataset.unreadable.count()
    result.update(
        model=args.model,
        checkpoint=args.ckpt_path or ("pretrained" if args.pretrained else ""),
        ema=bool(args.ema),
        backend=args.backend,
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
