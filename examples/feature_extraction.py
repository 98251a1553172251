"""Use MnasNet as a feature extractor for a downstream task.

    python examples/feature_extraction.py         # outputs/examples/finetuned.ckpt (examples/finetune_imagefolder.py)
    python examples/feature_extraction.py --ckpt_path weights.ckpt --data_dir /path/to/folder
    python examples/feature_extraction.py --model mnasnet_100 --pretrained  # published weights (download)

Two kinds of features:

* multi-scale feature maps for dense tasks (detection, segmentation): ``create_model(..., features_only=True)``
  returns the stage outputs at strides 2, 4, 8, 16 and 32, with their channels in ``model.feature_info``;
* one embedding per image for retrieval or a small classifier: ``forward_features`` plus global pooling.

As a downstream task, the embeddings of the ``train`` split fit a nearest-class-mean classifier that is
scored on the ``val`` split (the demo dataset when ``--data_dir`` is not given).
"""

import argparse
import os

if __name__ == "__main__":  # MindSpore logs errors only, unless GLOG_v is set: read when mindspore is imported
    os.environ.setdefault("GLOG_v", "3")

import numpy as np
from example_weights import FINETUNED, default_weights  # noqa: E402  (a sibling script module)

import mindspore as ms

from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.data.demo import ensure_demo_dataset
from mindcv.models import FeatureExtractWrapper, load_model


def embed(model, loader) -> tuple:
    """Global-average-pooled final features (``num_features`` wide) and labels of a whole loader."""
    features, labels = [], []
    for images, y in loader.create_tuple_iterator(num_epochs=1):
        features.append(model.forward_features(images).mean(axis=(2, 3)).asnumpy())
        labels.append(y.asnumpy())
    return np.concatenate(features), np.concatenate(labels)


def nearest_class_mean(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Predict the class whose mean L2-normalised embedding is closest in cosine similarity."""

    def normalise(v):
        return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)

    classes = np.unique(train_y)
    means = normalise(np.stack([normalise(train_x)[train_y == c].mean(0) for c in classes]))
    return classes[np.argmax(normalise(test_x) @ means.T, axis=1)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the checkpoint's record")
    parser.add_argument("--ckpt_path", default=None, help=f"weights (default {FINETUNED}, unless --pretrained)")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--data_dir", default="", help="ImageFolder root with train/ and val/ (default: demo data)")
    parser.add_argument("--image_size", type=int, default=96)
    args = parser.parse_args(argv)
    args.ckpt_path = default_weights(parser, args.ckpt_path, args.pretrained)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    ms.set_device("CPU")
    data_dir = args.data_dir or ensure_demo_dataset()["root"]

    # the one way from weights to a model: architecture, classes and BN eps come with the weights
    loaded = load_model(args.model, args.ckpt_path, args.pretrained)

    # 1. feature maps of every stage, for a detection or segmentation head
    backbone = FeatureExtractWrapper(loaded.rebuild())
    backbone.set_train(False)
    x = ms.Tensor(np.zeros((1, 3, args.image_size, args.image_size), np.float32))
    maps = backbone(x)
    for info, fmap in zip(backbone.feature_info, maps):
        print(f"stride {info['reduction']:2d}: {info['chs']:4d} channels, map {tuple(fmap.shape)}")

    # 2. one embedding per image, then a nearest-class-mean classifier on top
    model = loaded.model
    transform = create_transforms("imagefolder", image_resize=args.image_size)
    loaders = {
        split: create_loader(
            create_dataset("imagefolder", root=data_dir, split=split, shuffle=False), 50, transform=transform
        )
        for split in ("train", "val")
    }
    train_x, train_y = embed(model, loaders["train"])
    val_x, val_y = embed(model, loaders["val"])
    accuracy = float((nearest_class_mean(train_x, train_y, val_x) == val_y).mean() * 100)
    print(f"embeddings: train {train_x.shape}, val {val_x.shape}")
    print(f"nearest-class-mean accuracy on val: {accuracy:.2f}% ({len(np.unique(train_y))} classes)")
    return {"feature_shapes": [tuple(m.shape) for m in maps], "embedding_dim": train_x.shape[1], "accuracy": accuracy}


if __name__ == "__main__":
    main()
