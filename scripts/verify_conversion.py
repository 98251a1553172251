"""Convert reference weights written by ``conversion_reference.py`` and compare logits with the source.

    python scripts/verify_conversion.py /tmp/convref [--mode graph|pynative] [--tolerance 1e-4]

Prints one line per model with the max-abs logit difference, and exits non-zero if any exceeds the
tolerance.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

import mindspore as ms

from mindcv.models import create_model

_TV_WIDTHS = {
    "0.5": "mnasnet_050",
    "0.75": "mnasnet_075",
    "1.0": "mnasnet_100",
    "1.3": "mnasnet_130",
    "1.4": "mnasnet_140",
}


def mindcv_name(source: str) -> str:
    """``tv:1.0`` -> ``mnasnet_100``; ``timm:semnasnet_100`` / ``upstream:mnasnet_050`` keep their name."""
    kind, name = source.split(":", 1)
    return _TV_WIDTHS[name] if kind == "tv" else name


def compare(reference_json: str, mode: int) -> float:
    """Max-abs difference between mindcv's and the source framework's eval logits."""
    folder = os.path.dirname(reference_json)
    with open(reference_json) as f:
        meta = json.load(f)
    ref = np.load(reference_json.replace("_reference.json", "_reference.npz"))
    size, batch = int(ref["size"]), int(ref["batch"])
    x = np.random.default_rng(int(ref["input_seed"])).standard_normal((batch, 3, size, size)).astype(np.float32)
    ms.set_context(mode=mode)
    model = create_model(
        mindcv_name(meta["source"]),
        num_classes=meta["num_classes"],
        checkpoint_path=os.path.join(folder, meta["weights"]),
    )
    model.set_train(False)
    out = model(ms.Tensor(x)).asnumpy()
    return float(np.abs(out - ref["logits"]).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("folder")
    parser.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    ms.set_device("CPU")
    mode = ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE
    worst = 0.0
    for reference_json in sorted(glob.glob(os.path.join(args.folder, "*_reference.json"))):
        with open(reference_json) as f:
            source = json.load(f)["source"]
        diff = compare(reference_json, mode)
        worst = max(worst, diff)
        status = "OK" if diff <= args.tolerance else "FAIL"
        print(f"{source:22s} -> {mindcv_name(source):14s} max|diff| = {diff:.3e}  {status}")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
