"""Classify every image in a folder and write the predictions as JSON.

    python examples/infer_folder.py --model mnasnet_050 --ckpt_path finetuned.ckpt --folder photos/ --out preds.json
    python examples/infer_folder.py --model mnasnet_100 --pretrained --folder photos/   # ImageNet labels

A checkpoint written by train.py or examples/finetune_imagefolder.py brings its own class names and
preprocessing; published weights use the ImageNet-1k names. Unreadable files are reported and skipped.
"""

import argparse
import json
from collections import Counter

import mindspore as ms

from mindcv.inference import Classifier, collect_images


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_050")
    parser.add_argument("--ckpt_path", default="")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--out", default="predictions.json")
    args = parser.parse_args(argv)
    ms.set_device("CPU")

    classifier = Classifier(args.model, ckpt_path=args.ckpt_path, pretrained=args.pretrained, topk=args.topk)
    records = classifier.predict(collect_images([args.folder]))
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
