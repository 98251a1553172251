"""Write a checkpoint and reference logits with *upstream* mindspore-lab/mindcv's MnasNet.

Run it with upstream mindcv importable instead of this package, e.g. after
``pip download --no-deps mindcv==0.3.0`` and unzipping the wheel into DIR:

    PYTHONPATH=DIR python scripts/upstream_mindcv_reference.py --out tests/fixtures --model mnasnet_050 \
        --num-classes 10 --size 64 --half

``verify_conversion.py`` then loads the checkpoint into this package's model and compares logits.
"""

import argparse
import json
import os

import numpy as np

import mindspore as ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="mnasnet_050")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--half", action="store_true", help="store weights as float16 (small fixtures)")
    args = parser.parse_args()
    ms.set_device("CPU")
    import mindcv

    if not hasattr(mindcv.models, "mnasnet") or not hasattr(mindcv.models.mnasnet, "Mnasnet"):
        raise SystemExit("this needs upstream mindcv (class Mnasnet) on PYTHONPATH, not this package")
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    net = mindcv.create_model(args.model, num_classes=args.num_classes)
    # calibrate BN statistics on random images so that activations and logits have a trained scale
    for p in net.get_parameters():
        if p.name.endswith(".gamma"):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif p.name.endswith(".beta"):
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        elif p.name == "classifier.weight":
            p.set_data(ms.Tensor(rng.normal(0, 0.05, p.shape).astype(np.float32)))
    for cell in net.cells_and_names():
        if isinstance(cell[1], ms.nn.BatchNorm2d):
            cell[1].momentum = 0.0  # moving stats become the last calibration batch's statistics
    net.set_train(True)
    net(ms.Tensor(rng.standard_normal((16, 3, args.size, args.size)).astype(np.float32)))
    if args.half:
        for p in net.get_parameters():
            p.set_data(ms.Tensor(p.asnumpy().astype(np.float16).astype(np.float32)))
    net.set_train(False)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    logits = net(ms.Tensor(x)).asnumpy()
    stem = f"mindcv_upstream_{args.model}"
    path = os.path.join(args.out, stem + ".ckpt")
    dtype = np.float16 if args.half else np.float32
    ms.save_checkpoint(
        [{"name": p.name, "data": ms.Tensor(p.asnumpy().astype(dtype))} for p in net.get_parameters()], path
    )
    np.savez(
        os.path.join(args.out, stem + "_reference.npz"), logits=logits, input_seed=0, size=args.size, batch=args.batch
    )
    width = {
        "mnasnet_050": "0.5",
        "mnasnet_075": "0.75",
        "mnasnet_100": "1.0",
        "mnasnet_130": "1.3",
        "mnasnet_140": "1.4",
    }
    meta = {
        "source": f"upstream:{args.model}",
        "weights": os.path.basename(path),
        "num_classes": args.num_classes,
        "mindcv": getattr(mindcv, "__version__", "?"),
        "width": width[args.model],
    }
    with open(os.path.join(args.out, stem + "_reference.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"upstream {args.model}: wrote {path}, logits {logits.shape}, max |logit| {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
