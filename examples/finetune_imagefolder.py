"""Fine-tune a pretrained MnasNet on your own ImageFolder dataset.

    python examples/finetune_imagefolder.py --ckpt_path tests/fixtures/torchvision_mnasnet0.5.safetensors
    python examples/finetune_imagefolder.py --ckpt_path outputs/quickstart/mnasnet_050_best.ckpt  # after quick start
    python examples/finetune_imagefolder.py --pretrained --model mnasnet_100  # published weights (download)
    python examples/finetune_imagefolder.py --data_dir /path/to/folder --ckpt_path mnasnet0.5.pth --epochs 5

``--data_dir`` holds ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``; without it the generated demo dataset
is used. ``--ckpt_path`` takes any weights mindcv reads (a mindcv .ckpt, a torchvision/timm .pth or
.safetensors, an upstream mindcv .ckpt): the backbone is loaded and the classifier is created fresh for
your classes (``tests/fixtures/torchvision_mnasnet0.5.safetensors`` is a torchvision-layout MNASNet(0.5),
randomly initialised, committed for the tests: it runs anywhere, but only real weights fine-tune well).
``--freeze_backbone`` trains the classifier only (a linear probe; fastest, needs least data). The result,
``outputs/examples/finetuned.ckpt`` by default, is a checkpoint that ``infer.py``, ``validate.py`` and the
other examples read with its class names and preprocessing.
"""

import argparse
import os

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

from example_weights import FINETUNED  # noqa: E402  (what the other examples read by default)

import mindspore as ms
from mindspore import nn

from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.data.demo import ensure_demo_dataset
from mindcv.engine import evaluate, train_one_epoch
from mindcv.loss import create_loss
from mindcv.models import create_model
from mindcv.models.checkpoint import save_checkpoint
from mindcv.models.layers import noise_width
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler
from mindcv.utils.train_step import NetWithLoss, TrainStep


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="", help="ImageFolder root with train/ and val/ (default: demo data)")
    parser.add_argument("--model", default="mnasnet_050")
    parser.add_argument("--ckpt_path", default="", help="pretrained weights to start from")
    parser.add_argument("--pretrained", action="store_true", help="start from the published weights")
    parser.add_argument("--freeze_backbone", action="store_true", help="train the classifier only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument(
        "--bn_momentum",
        type=float,
        default=0.9,
        help="BatchNorm average (MindSpore convention); a few epochs need a faster one than ImageNet's 0.99, or "
        "evaluation normalises with statistics the new data never produced",
    )
    parser.add_argument("--output", default=FINETUNED, help="the fine-tuned checkpoint (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if not (args.ckpt_path or args.pretrained):
        parser.exit(
            2,
            f"{parser.prog}: no weights to fine-tune: pass --ckpt_path <weights> (e.g. "
            "tests/fixtures/torchvision_mnasnet0.5.safetensors, or outputs/quickstart/mnasnet_050_best.ckpt after "
            "the quick start) or --pretrained (downloads the published weights)\n",
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(args.seed)
    data_dir = args.data_dir or ensure_demo_dataset()["root"]

    # data: training augmentation and the matching evaluation preprocessing
    train_set = create_dataset("imagefolder", root=data_dir, split="train", seed=args.seed, block_size=args.batch_size)
    val_set = create_dataset("imagefolder", root=data_dir, split="val", shuffle=False)
    num_classes = train_set.num_classes()
    eval_transform = dict(image_resize=args.image_size)
    train_loader = create_loader(
        train_set,
        args.batch_size,
        drop_remainder=True,
        is_training=True,
        num_classes=num_classes,
        # colour jitter 0.4 as train.py's default (create_transforms' own default is upstream's: none)
        transform=create_transforms("imagefolder", image_resize=args.image_size, is_training=True, color_jitter=0.4),
    )
    val_loader = create_loader(
        val_set, args.batch_size, num_classes=num_classes, transform=create_transforms("imagefolder", **eval_transform)
    )

    # model: pretrained backbone, new classifier for this dataset's classes
    model = create_model(
        args.model,
        num_classes=num_classes,
        pretrained=args.pretrained,
        checkpoint_path=args.ckpt_path,
        bn_momentum=args.bn_momentum,
    )
    if args.freeze_backbone:
        for param in model.get_parameters():
            param.requires_grad = param.name.startswith("classifier.")
        # a frozen backbone keeps its BatchNorm statistics too: normalise with the pretrained moving averages
        for _, cell in model.cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.use_batch_statistics = False
    trainable = model.trainable_params()
    print(f"{args.model}: {num_classes} classes, training {sum(p.size for p in trainable):,} parameters")

    steps_per_epoch = train_loader.get_dataset_size()
    lr_schedule = create_scheduler(
        steps_per_epoch,
        "cosine_decay",
        lr=args.lr,
        min_lr=args.lr / 100,
        warmup_epochs=0,
        decay_epochs=args.epochs,
        num_epochs=args.epochs,
    )
    optimizer = create_optimizer(trainable, "adamw", lr=lr_schedule, weight_decay=0.01)
    step = TrainStep(NetWithLoss(model, create_loss("CE", label_smoothing=0.1)), optimizer)

    metrics = {}
    for epoch in range(args.epochs):
        train_set.shard_sampler.set_epoch(epoch)
        result = train_one_epoch(
            step,
            train_loader,
            epoch,
            args.epochs,
            epoch * steps_per_epoch,
            lr_schedule,
            seed=args.seed,
            noise_width=noise_width(model),
            progress=args.progress,
        )
        metrics = evaluate(model, val_loader, num_classes, progress=False)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {result.loss:.3f}, val top-1 {metrics['top1']:.2f}%")

    # the class names and preprocessing travel with the weights, so inference needs nothing else
    save_checkpoint(
        model,
        args.output,
        metadata={
            "model": args.model,
            "num_classes": num_classes,
            "class_names": train_set.class_names,
            "eval_transform": eval_transform,
        },
    )
    print(f"saved {args.output}")
    return metrics


if __name__ == "__main__":
    main()
