"""Classify every image in a folder and write the predictions as JSON.

    python examples/infer_folder.py         # outputs/examples/finetuned.ckpt on the demo dataset's val images
    python examples/infer_folder.py --ckpt_path weights.ckpt --folder photos/ --out preds.json
    python examples/infer_folder.py --model mnasnet_100 --pretrained --folder photos/   # ImageNet labels

A checkpoint written by train.py or examples/finetune_imagefolder.py brings its own class names and
preprocessing; published weights use the ImageNet-1k names. Unreadable files are reported and skipped.
"""

import argparse
import json
import os
from collections import Counter

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

from example_weights import FINETUNED, default_weights  # noqa: E402  (a sibling script module)

import mindspore as ms

from mindcv.data.demo import ensure_demo_dataset
from mindcv.inference import Classifier, collect_images

PREDICTIONS = os.path.join("outputs", "examples", "predictions.json")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the checkpoint's record")
    parser.add_argument("--ckpt_path", default=None, help=f"weights (default {FINETUNED}, unless --pretrained)")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--folder", default=None, help="images to classify (default: the demo dataset's val split)")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--out", default=PREDICTIONS, help="the records (default %(default)s)")
    args = parser.parse_args(argv)
    args.ckpt_path = default_weights(parser, args.ckpt_path, args.pretrained)
    return args


def main(argv=None) -> list:
    args = parse_args(argv)
    folder = args.folder or os.path.join(ensure_demo_dataset()["root"], "val")
    ms.set_device("CPU")

    classifier = Classifier(args.model, ckpt_path=args.ckpt_path, pretrained=args.pretrained, topk=args.topk)
    records = classifier.predict(collect_images([folder]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(records, f, indent=1)

    classified = [r for r in records if "error" in r or r.get("label_names")]
    failed = [r["file_name"] for r in records if "error" in r]
    top1 = Counter(r["label_names"][0] for r in classified if "error" not in r)
    print(f"{len(records) - len(failed)} images classified, {len(failed)} unreadable; wrote {args.out}")
    for name, count in top1.most_common(5):
        print(f"  {name}: {count}")
    for path in failed:
        print(f"  unreadable: {path}")
    return records


if __name__ == "__main__":
    main()
