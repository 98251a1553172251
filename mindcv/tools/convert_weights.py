"""Convert torchvision / timm / upstream-mindcv MnasNet weights into a MindSpore checkpoint.

    mindcv-convert mnasnet1.0_top1_73.512-f206786ef8.pth mnasnet_100_tv.ckpt
    python -m mindcv.tools.convert_weights mnasnet_a1-d9418771.pth semnasnet_100.safetensors --model semnasnet_100

The source layout is detected; the architecture is inferred from the tensor shapes unless ``--model``
is given. The result records the BatchNorm epsilon the weights were trained with, so
``create_model(name, checkpoint_path=<result>)`` reproduces the source framework's outputs.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

import numpy as np

import mindspore as ms

from ..models.checkpoint import CheckpointError, model_state_dict, read_checkpoint, save_checkpoint
from ..models.loading import infer_model_name, load_model
from ..utils.cli import call_cli
from ..utils.logger import ConsoleHandler

__all__ = ["infer_model_name", "convert_file", "main"]


def convert_file(src: str, dst: str, model_name: Optional[str] = None, ema: bool = False) -> Dict[str, object]:
    """Convert ``src`` (any supported layout/format) to ``dst`` (``.ckpt`` or ``.safetensors``).

    Args:
        src: the source weight file.
        dst: the output file; its extension picks the format.
        model_name: the architecture; inferred from the shapes when omitted.
        ema: convert the EMA copy of the weights.

    Returns:
        A summary: model, source layout, number of tensors, BN eps, destination.
    """
    loaded = load_model(model_name, src, ema=ema)
    model, model_name, layout = loaded.model, loaded.model_name, loaded.layout
    save_checkpoint(
        model, dst, metadata={"model": model_name, "source_layout": layout, "source_file": os.path.basename(src)}
    )
    # read the result back: every tensor must round-trip exactly
    written, _ = read_checkpoint(dst)
    reference = model_state_dict(model)
    bad = [k for k in reference if k not in written or not np.array_equal(written[k], reference[k])]
    if bad:
        raise CheckpointError(f"verification of {dst} failed for {len(bad)} tensors, e.g. {bad[:3]}")
    return {"model": model_name, "layout": layout, "tensors": len(written), "bn_eps": model.bn_eps, "dst": dst}


def main(argv: Optional[List[str]] = None) -> int:
    """``mindcv-convert SRC DST [--model NAME] [--ema]``; user errors print one line and return 2."""
    return call_cli("mindcv-convert", _convert_cli, argv)


def _convert_cli(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mindcv-convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("src", help="source weights (.pth/.pt/.bin/.safetensors/.ckpt)")
    parser.add_argument("dst", help="output file (.ckpt or .safetensors)")
    parser.add_argument("--model", default=None, help="registered model name (inferred when omitted)")
    parser.add_argument("--ema", action="store_true", help="convert the EMA weights (ema.* parameters)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[ConsoleHandler()])
    ms.set_device("CPU")
    summary = convert_file(args.src, args.dst, args.model, args.ema)
    print(
        f"converted {args.src} ({summary['layout']} layout) -> {summary['dst']}: model {summary['model']}, "
        f"{summary['tensors']} tensors, BN eps {summary['bn_eps']:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
