"""Classify images: ``python infer.py --model mnasnet_100 --ckpt_path x.ckpt image.jpg folder/ ...``.

Prints the top-k classes of each image and writes one JSON record per image
(``{"class_ids", "scores", "file_name", "label_names"}``) to ``--output`` (default ``predictions.json``).
Unreadable files are reported by path and do not stop the others. Label names come from the checkpoint
(custom datasets) or the bundled ImageNet-1k names.
"""

import argparse
import json
import logging
import sys

import mindspore as ms

from mindcv.inference import Classifier, collect_images
from mindcv.models import CheckpointError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--ckpt_path", default="", help="weights (any format create_model reads)")
    parser.add_argument("--pretrained", action="store_true", help="use the published weights")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--output", default="predictions.json", help="JSON file of all records")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    ms.set_device(args.device_target)
    try:
        files = collect_images(args.inputs)
        classifier = Classifier(args.model, args.ckpt_path, args.pretrained, args.topk, args.batch_size)
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as err:
        print(f"infer.py: {err}", file=sys.stderr)
        return 2
    if not files:
        print("infer.py: no images found in the inputs", file=sys.stderr)
        return 2
    records = classifier.predict(files)
    for r in records:
        if "error" in r:
            print(f"{r['file_name']}: UNREADABLE ({r['error']})")
        else:
            best = ", ".join(f"{n} {s:.3f}" for n, s in zip(r["label_names"], r["scores"]))
            print(f"{r['file_name']}: {best}")
    with open(args.output, "w") as f:
        json.dump(records, f, indent=1)
    failed = sum("error" in r for r in records)
    print(f"{len(records) - failed} classified, {failed} unreadable; records in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
