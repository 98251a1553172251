"""Write reference weights and logits from the *source* frameworks (run it where torch is installed).

For each requested model it builds the torchvision / timm network with random weights and randomised
BatchNorm statistics, saves the state dict, a fixed input and the eval-mode logits. ``verify_conversion.py``
then converts the saved weights with mindcv and compares logits. Nothing is downloaded.

    python scripts/conversion_reference.py --out /tmp/convref --models tv:0.5 tv:1.0 timm:mnasnet_100
    python scripts/conversion_reference.py --out tests/fixtures --models tv:0.5 timm:mnasnet_small \
        --num-classes 10 --size 64 --half --format safetensors     # the committed CI fixtures
"""

import argparse
import json
import os

import numpy as np
import torch


def build(spec: str, num_classes: int):
    kind, name = spec.split(":", 1)
    if kind == "tv":
        import torchvision

        return torchvision.models.MNASNet(float(name), num_classes=num_classes), f"torchvision_mnasnet{name}"
    if kind == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes), f"timm_{name}"
    raise SystemExit(f"unknown source '{kind}' in '{spec}': use tv:<alpha> or timm:<name>")


def randomise_bn(model: torch.nn.Module, gen: torch.Generator, size: int) -> None:
    """Random affine BN parameters, then running statistics calibrated on random images.

    Calibration keeps activations at a trained network's scale (O(1) logits): with raw random init
    (timm's TF-style init especially) logits reach the thousands and float32 round-off alone exceeds 1e-4.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        n = m.num_features
        m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
        m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, size, size, generator=gen))
    for m in bns:
        m.momentum = 0.1
    for m in model.modules():  # a trained classifier's scale; He-uniform at 10 classes gives logits ~30
        if isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.01, generator=gen)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--half", action="store_true", help="store weights as float16 (small fixtures)")
    parser.add_argument("--format", choices=["pth", "pth-legacy", "safetensors"], default="pth")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    for spec in args.models:
        model, stem = build(spec, args.num_classes)
        with torch.no_grad():
            randomise_bn(model, gen, args.size)
            if args.half:  # round-trip so both frameworks see exactly the stored values
                for t in list(model.parameters()) + list(model.buffers()):
                    if t.is_floating_point():
                        t.copy_(t.half().float())
            model.eval()
            logits = model(torch.from_numpy(x)).numpy()
        state = model.state_dict()
        if args.half:
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        if args.format == "safetensors":
            from safetensors.torch import save_file

            path = os.path.join(args.out, stem + ".safetensors")
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        else:
            path = os.path.join(args.out, stem + ".pth")
            torch.save(state, path, _use_new_zipfile_serialization=args.format == "pth")
        np.savez(
            os.path.join(args.out, stem + "_reference.npz"),
            logits=logits,
            input_seed=0,
            size=args.size,
            batch=args.batch,
        )
        meta = {
            "source": spec,
            "weights": os.path.basename(path),
            "num_classes": args.num_classes,
            "torch": torch.__version__,
        }
        with open(os.path.join(args.out, stem + "_reference.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(f"{spec}: wrote {path} and reference logits {logits.shape}")


if __name__ == "__main__":
    main()
