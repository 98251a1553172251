"""Classify images: ``python infer.py --model mnasnet_100 --ckpt_path x.ckpt image.jpg folder/ ...``.

``--backend onnxruntime`` runs the checked, BN-folded ONNX export of the same weights (exported on first
use, cached next to the checkpoint) with the same preprocessing and label names.

Prints the top-k classes of each image and writes one JSON record per image
(``{"class_ids", "scores", "file_name", "label_names"}``) to ``--output`` (default
``outputs/infer/predictions.json``).
Unreadable files (corrupt, not an image, or above ``--max_image_pixels``, which are never decoded) get an
``"error"`` record instead, do not stop the others, and are listed as ``<path>\t<reason>`` lines in
``--unreadable_log`` (default: ``<output without extension>.unreadable.tsv`` next to the records; written
only when there is something to report, replacing the report of an earlier run). Label names come from the
checkpoint (custom datasets) or the bundled ImageNet-1k names.
"""

import argparse
import json
import logging
import os
import sys

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import mindspore as ms

from mindcv.data.image_folder import MAX_IMAGE_PIXELS, UnreadableFiles
from mindcv.deploy import BACKENDS
from mindcv.errors import InvalidArgumentError
from mindcv.inference import Classifier, collect_images
from mindcv.io.atomic import atomic_write
from mindcv.utils.cli import call_cli
from mindcv.utils.logger import ConsoleHandler

DEFAULT_OUTPUT = os.path.join("outputs", "infer", "predictions.json")  # relative to where infer.py runs


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def unreadable_report_path(output: str) -> str:
    """Default unreadable-file report of ``--output`` (``predictions.json`` -> ``predictions.unreadable.tsv``)."""
    return os.path.splitext(output)[0] + ".unreadable.tsv"


def main(argv=None) -> int:
    """Classify as the command line says; user errors print one line and return 2."""
    return call_cli("infer.py", _infer, argv)


def _infer(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--model", default=None, help="registered model name (default: the checkpoint's record)")
    parser.add_argument("--arch", default=None, help="mnasnet_arch only: architecture (default: the checkpoint's)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument(
        "--backend",
        default="mindspore",
        choices=BACKENDS,
        help="onnxruntime: the checked, BN-folded ONNX export of the same weights (cached next to the checkpoint)",
    )
    parser.add_argument("--ckpt_path", default="", help="weights (any format create_model reads)")
    parser.add_argument("--pretrained", action="store_true", help="use the published weights")
    parser.add_argument("--topk", type=_positive_int, default=5)
    parser.add_argument("--batch_size", type=_positive_int, default=16)
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON file of all records (default %(default)s)")
    parser.add_argument(
        "--unreadable_log",
        default=None,
        help="TSV report of unreadable files (default: <output without extension>.unreadable.tsv)",
    )
    parser.add_argument(
        "--max_image_pixels",
        type=_positive_int,
        default=MAX_IMAGE_PIXELS,
        help="images whose header claims more pixels are reported, never decoded (default %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", handlers=[ConsoleHandler()])
    ms.set_device(args.device_target)
    files = collect_images(args.inputs)
    if not files:
        raise InvalidArgumentError(f"no images found in {', '.join(args.inputs)}")
    if not (args.ckpt_path or args.pretrained):  # a random network's "predictions" are not a result
        raise InvalidArgumentError("no weights: pass --ckpt_path <weight file> or --pretrained")
    classifier = Classifier(
        args.model,
        args.ckpt_path,
        args.pretrained,
        args.topk,
        args.batch_size,
        max_image_pixels=args.max_image_pixels,
        backend=args.backend,
        arch=args.arch,
        ema=args.ema,
    )
    report_path = args.unreadable_log or unreadable_report_path(args.output)
    report = UnreadableFiles(report_path, overwrite=True)  # a stale report of an earlier run must not remain
    records = classifier.predict(files, report=report)
    for r in records:
        if "error" in r:
            print(f"{r['file_name']}: UNREADABLE ({r['error']})")
        else:
            best = ", ".join(f"{n} {s:.3f}" for n, s in zip(r["label_names"], r["scores"]))
            print(f"{r['file_name']}: {best}")
    with atomic_write(args.output) as f:
        json.dump(records, f, indent=1)
    failed = sum("error" in r for r in records)
    print(
        f"{len(records) - failed} classified, {failed} unreadable; records in {args.output}"
        + (f", unreadable files listed in {report_path}" if failed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
