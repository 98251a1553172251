"""Export a model to MindIR or ONNX (optionally INT8), checked against the in-framework model.

    python export.py --ckpt_path outputs/quickstart/mnasnet_050_best.ckpt --format ONNX  # outputs/export/<model>.onnx
    python export.py --ckpt_path tests/fixtures/torchvision_mnasnet0.5.safetensors --format MINDIR  # torchvision layout
    python export.py --ckpt_path ckpt.ckpt --format MINDIR --file_name deploy/mnasnet_100   # deploy/mnasnet_100.mindir
    python export.py --ckpt_path outputs/quickstart/mnasnet_050_best.ckpt --format ONNX --quantize int8 \\
        --calib_data ~/.cache/mindcv/datasets/demo-v1-seed0/train --val_data ~/.cache/mindcv/datasets/demo-v1-seed0/val

Weights of any format mindcv reads (its own checkpoints, torchvision, timm, upstream mindcv, a search
result trained with ``--model mnasnet_arch``) are loaded with ``mindcv.models.load_model``: the model name,
architecture, class count and BN epsilon come from the file when it records them. BatchNorm is folded into
the convolutions of a copy built with the model's own settings (``--no_fuse_bn`` keeps it). The input size
defaults to the checkpoint's evaluation transform. The batch dimension is dynamic by default
(``--batch_size -1``; MindSpore 2.10 traces ONNX at batch 1 and the dimension is made symbolic with the
``onnx`` package). Before the file is published, batches run through it (MindIR reloaded by MindSpore, ONNX
in onnxruntime) and are compared with the unfused model; a relative difference above ``--tolerance`` fails
the command and leaves no file.

``--quantize int8`` also writes ``<file_name>.int8.onnx``: static post-training quantization with
onnxruntime (QDQ, per-channel int8 weights, uint8 activations), calibrated on ``--calib_images`` images of
``--calib_data`` through the model's evaluation transform. With ``--val_data`` (``<class>/<images>``
folders named as the model's classes) it prints fp32 and INT8 top-1 and their throughput measured side by
side in one run.
"""

import argparse
import json
import os
import sys

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import numpy as np

import mindspore as ms

from mindcv.data.image_folder import find_classes
from mindcv.deploy import EXPORT_FORMATS, OnnxRuntimeModel, export_checked
from mindcv.deploy.export import check_exported, export_model, make_onnx_batch_dynamic, run_exported  # noqa: F401
from mindcv.deploy.quantize import CALIBRATION_METHODS, KEEP_FP32_CHOICES, quantize_int8, select_calibration_files
from mindcv.errors import InvalidArgumentError
from mindcv.inference import Classifier, collect_images
from mindcv.io.atomic import atomic_write
from mindcv.models.loading import load_model
from mindcv.utils.cli import call_cli

__all__ = ["main", "export_model", "make_onnx_batch_dynamic", "run_exported", "check_exported"]

EXPORT_DIR = os.path.join("outputs", "export")  # where files go without --file_name (relative to where it runs)


def _keep_fp32(text: str):
    kinds = [k for k in text.split(",") if k] if text not in ("", "none") else []
    unknown = sorted(set(kinds) - set(KEEP_FP32_CHOICES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown layer kind(s) {unknown}; valid: none or {','.join(KEEP_FP32_CHOICES)}"
        )
    return kinds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", default=None, help="registered model name (default: the checkpoint's record)")
    parser.add_argument("--ckpt_path", default="")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--arch", default=None, help="mnasnet_arch only: architecture (default: the checkpoint's)")
    parser.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights")
    parser.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint, else 1000")
    parser.add_argument("--format", default="MINDIR", choices=list(EXPORT_FORMATS))
    parser.add_argument(
        "--file_name", default=None, help="output path without extension (default: outputs/export/<model name>)"
    )
    parser.add_argument("--image_size", type=int, default=None, help="default: the checkpoint's eval size, else 224")
    parser.add_argument("--batch_size", type=int, default=-1, help="-1: dynamic batch dimension")
    parser.add_argument("--no_fuse_bn", action="store_true", help="keep BatchNorm layers in the exported graph")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative difference")
    quant = parser.add_argument_group("INT8 (ONNX only)")
    quant.add_argument("--quantize", default=None, choices=["int8"], help="also write <file_name>.int8.onnx")
    quant.add_argument("--calib_data", default=None, help="folder of calibration images (searched recursively)")
    quant.add_argument("--calib_images", type=int, default=None, help="calibration images drawn (default 200)")
    quant.add_argument(
        "--calib_method",
        default=None,
        choices=CALIBRATION_METHODS,
        help="default percentile: the smallest spread of the top-1 drop over calibration seeds (README, Deployment)",
    )
    quant.add_argument("--calib_seed", type=int, default=None, help="which images are drawn (default 0)")
    quant.add_argument(
        "--keep_fp32",
        type=_keep_fp32,
        default=[],
        help=f"layer kinds left in fp32: none or a comma list of {','.join(KEEP_FP32_CHOICES)}",
    )
    quant.add_argument("--val_data", default=None, help="<class>/<images> folder: report fp32 vs INT8 top-1 and speed")
    quant.add_argument("--report", default=None, help="write the fp32 vs INT8 comparison as JSON here")
    quant.add_argument("--speed_rounds", type=int, default=None, help="interleaved timing rounds (default 5)")
    return parser


def _check_arguments(args) -> None:
    if args.batch_size == 0 or args.batch_size < -1 or (args.image_size is not None and args.image_size < 1):
        raise InvalidArgumentError(
            f"--image_size must be >= 1 and --batch_size >= 1 or -1 (dynamic), got {args.image_size}, {args.batch_size}"
        )
    if not (args.ckpt_path or args.pretrained):  # exporting random weights is never what a user wants
        raise InvalidArgumentError("no weights: pass --ckpt_path <weight file> or --pretrained")
    quant_only = ("calib_data", "calib_images", "calib_method", "calib_seed", "keep_fp32", "val_data", "report")
    given = [f"--{k}" for k in quant_only + ("speed_rounds",) if getattr(args, k) not in (None, [])]
    if not args.quantize:
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} apply to --quantize int8 only")
        return
    if args.format != "ONNX":
        raise InvalidArgumentError("--quantize int8 needs --format ONNX")
    if args.batch_size != -1:  # calibration and the comparison feed batches of other sizes
        raise InvalidArgumentError("--quantize int8 needs the dynamic batch dimension: leave out --batch_size")
    if not args.calib_data:
        raise InvalidArgumentError("--quantize int8 needs --calib_data <folder of images> to calibrate on")
    if not os.path.isdir(args.calib_data):
        raise InvalidArgumentError(f"--calib_data '{args.calib_data}' is not a folder")
    if args.report and not args.val_data:
        raise InvalidArgumentError("--report writes the fp32 vs INT8 comparison on --val_data: pass --val_data")
    if args.speed_rounds is not None and not args.val_data:
        raise InvalidArgumentError("--speed_rounds times the fp32 vs INT8 comparison on --val_data: pass --val_data")
    if args.val_data and not os.path.isdir(args.val_data):
        raise InvalidArgumentError(f"--val_data '{args.val_data}' is not a folder")
    args.calib_images = 200 if args.calib_images is None else args.calib_images
    args.calib_method = args.calib_method or "percentile"
    args.calib_seed = 0 if args.calib_seed is None else args.calib_seed
    args.speed_rounds = 5 if args.speed_rounds is None else args.speed_rounds
    if args.calib_images < 1:
        raise InvalidArgumentError(f"--calib_images must be >= 1, got {args.calib_images}")
    if args.speed_rounds < 1:
        raise InvalidArgumentError(f"--speed_rounds must be >= 1, got {args.speed_rounds}")


def _check_before_writing(args, loaded) -> None:
    """What would make --quantize fail after the export: refused before any file is written."""
    if args.image_size is not None and args.image_size != loaded.image_size:
        raise InvalidArgumentError(
            f"--quantize calibrates on images the evaluation transform makes ({loaded.image_size}px), but "
            f"--image_size is {args.image_size}: leave out --image_size"
        )
    if args.val_data:
        classes, _ = find_classes(args.val_data)
        unknown = [c for c in classes if c not in set(loaded.class_names)]
        if unknown:
            raise InvalidArgumentError(
                f"class folder(s) {unknown[:5]} of --val_data '{args.val_data}' are not classes of the model "
                f"({', '.join(loaded.class_names[:10])}{' ...' if len(loaded.class_names) > 10 else ''})"
            )


def _calibration_batch(classifier: Classifier, folder: str, count: int, seed: int = 0) -> np.ndarray:
    files = collect_images([folder])
    if not files:
        raise InvalidArgumentError(f"--calib_data '{folder}' holds no images")
    images, skipped = [], 0
    for path in select_calibration_files(files, count, seed):
        image, reason = classifier.preprocess(path)
        if image is None:
            skipped += 1
            print(f"calibration: skipping unreadable '{path}': {reason}", file=sys.stderr)
            continue
        images.append(image)
    if not images:
        raise InvalidArgumentError(f"--calib_data '{folder}': none of the chosen images is readable")
    print(f"calibrating on {len(images)} images of {folder}" + (f" ({skipped} unreadable skipped)" if skipped else ""))
    return np.stack(images)


def _compare(classifier: Classifier, fp32_path: str, int8_path: str, val_data: str, rounds: int) -> dict:
    from mindcv.deploy.compare import labelled_images, throughput_side_by_side, top1

    data = labelled_images(val_data, classifier.class_names, classifier.preprocess)
    fp32, int8 = OnnxRuntimeModel(fp32_path), OnnxRuntimeModel(int8_path)
    report = {
        "val_data": val_data,
        "images": int(len(data.labels)),
        "unreadable": len(data.unreadable),
        "top1_fp32": top1(fp32, data),
        "top1_int8": top1(int8, data),
    }
    batch = data.images[:32] if len(data.images) >= 32 else np.resize(data.images, (32,) + data.images.shape[1:])
    speed = throughput_side_by_side({"fp32": fp32, "int8": int8}, batch, rounds=rounds)
    report.update(
        batch=32,
        fp32_images_per_second=speed["fp32"],
        int8_images_per_second=speed["int8"],
        speedup=speed["int8"] / speed["fp32"],
        top1_drop=report["top1_fp32"] - report["top1_int8"],
    )
    return report


def main(argv=None) -> int:
    """Export as the command line says; user errors print one line and return 2."""
    return call_cli("export.py", _export, argv)


def _export(argv=None) -> int:
    args = _parser().parse_args(argv)
    ms.set_device("CPU")
    _check_arguments(args)
    loaded = load_model(
        args.model, args.ckpt_path, args.pretrained, ema=args.ema, num_classes=args.num_classes, arch=args.arch
    )
    print(
        f"{loaded.model_name} from {loaded.source} ({loaded.layout} layout): {loaded.num_classes} classes, "
        f"BN eps {loaded.bn_eps:g}, input {args.image_size or loaded.image_size}px"
    )
    if args.quantize:
        _check_before_writing(args, loaded)
    file_name = args.file_name or os.path.join(EXPORT_DIR, loaded.model_name)
    result = export_checked(
        loaded,
        file_name,
        args.format,
        image_size=args.image_size,
        batch_size=args.batch_size,
        fuse=not args.no_fuse_bn,
        tolerance=args.tolerance,
    )
    if result.folded:
        print(f"folded {result.folded} BatchNorm layers into their convolutions")
    if result.dynamic_batch:
        print("batch dimension is dynamic")
    for batch, (diff, relative) in result.differences.items():
        print(f"batch {batch}: exported vs in-framework output: max |diff| = {diff:.3e} (relative {relative:.2e})")
    print(f"wrote {result.path} ({os.path.getsize(result.path) / 1e6:.1f} MB)")
    if args.quantize:
        classifier = Classifier(loaded=loaded)
        calibration = _calibration_batch(classifier, args.calib_data, args.calib_images, args.calib_seed)
        int8 = quantize_int8(
            result.path, file_name + ".int8.onnx", calibration, keep_fp32=args.keep_fp32, method=args.calib_method
        )
        kept = f", kept in fp32: {len(int8.kept_fp32)} nodes ({','.join(args.keep_fp32)})" if int8.kept_fp32 else ""
        print(f"wrote {int8.path} ({os.path.getsize(int8.path) / 1e6:.1f} MB, {args.calib_method} calibration{kept})")
        if args.val_data:
            report = _compare(classifier, result.path, int8.path, args.val_data, args.speed_rounds)
            report.update(
                keep_fp32=args.keep_fp32,
                calib_method=args.calib_method,
                calib_images=len(calibration),
                calib_seed=args.calib_seed,
            )
            print(
                f"on {report['images']} images of {args.val_data}: top-1 fp32 {report['top1_fp32']:.2f}%, "
                f"INT8 {report['top1_int8']:.2f}% (drop {report['top1_drop']:.2f} points); batch 32: "
                f"fp32 {report['fp32_images_per_second']:.0f} img/s, INT8 {report['int8_images_per_second']:.0f} "
                f"img/s ({report['speedup']:.2f}x, medians of interleaved rounds)"
            )
            if args.report:
                with atomic_write(args.report) as f:
                    json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
