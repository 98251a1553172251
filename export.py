"""Export a model to MindIR or ONNX and check the exported graph against the in-framework model.

    python export.py --model mnasnet_100 --ckpt_path ckpt.ckpt --format MINDIR --file_name mnasnet_100
    python export.py --model mnasnet_100 --pretrained --format ONNX --image_size 224

The batch dimension is dynamic by default (``--batch_size -1``) for MindIR; MindSpore 2.10 cannot
export ONNX with dynamic shapes, so ONNX uses a fixed batch (1 unless ``--batch_size`` is given).
After exporting, a random batch is run through the reloaded MindIR (MindSpore) or the ONNX file
(onnxruntime, when installed: ``pip install mindcv[onnx]``) and the max-abs difference to the model's
output is printed; a difference above ``--tolerance`` makes the command fail.
"""

import argparse
import os
import sys

import numpy as np

import mindspore as ms
from mindspore import nn

from mindcv.models import CheckpointError, create_model
from mindcv.models.checkpoint import read_checkpoint_metadata


def export_model(
    model: nn.Cell, file_name: str, fmt: str, image_size: int, batch_size: int = -1, in_channels: int = 3
) -> str:
    """Export ``model`` (inference mode) and return the written path."""
    model.set_train(False)
    batch = None if batch_size < 0 else batch_size
    spec = ms.Tensor(shape=[batch, in_channels, image_size, image_size], dtype=ms.float32)
    ms.export(model, spec, file_name=file_name, file_format=fmt)
    return f"{file_name}.{'mindir' if fmt == 'MINDIR' else 'onnx'}"


def check_exported(model: nn.Cell, path: str, image_size: int, batch: int = 3, in_channels: int = 3) -> float:
    """Max-abs difference between the exported graph and ``model`` on a random batch."""
    x = np.random.default_rng(0).standard_normal((batch, in_channels, image_size, image_size)).astype(np.float32)
    expected = model(ms.Tensor(x)).asnumpy()
    if path.endswith(".mindir"):
        got = nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(got - expected).max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ckpt_path", default="")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint, else 1000")
    parser.add_argument("--format", default="MINDIR", choices=["MINDIR", "ONNX"])
    parser.add_argument("--file_name", default=None, help="output path without extension (default: the model name)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=-1, help="-1: dynamic batch dimension")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    ms.set_device("CPU")
    try:
        meta = read_checkpoint_metadata(args.ckpt_path)
        num_classes = args.num_classes or int(meta.get("num_classes") or 1000)
        model = create_model(
            args.model, num_classes=num_classes, pretrained=args.pretrained, checkpoint_path=args.ckpt_path
        )
    except (CheckpointError, ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"export.py: {err}", file=sys.stderr)
        return 2
    batch_size = args.batch_size
    if args.format == "ONNX" and batch_size < 0:
        # MindSpore 2.10 refuses dynamic shapes in ONNX export ("not support dynamic shape mode")
        print("note: MindSpore 2.10 cannot export ONNX with a dynamic batch; exporting batch 1 (use --batch_size)")
        batch_size = 1
    path = export_model(model, args.file_name or args.model, args.format, args.image_size, batch_size)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    try:
        diff = check_exported(model, path, args.image_size, batch=batch_size if batch_size > 0 else 3)
    except ImportError:
        print("onnxruntime is not installed (pip install mindcv[onnx]): the ONNX file was not checked")
        return 0
    print(f"exported vs in-framework output: max |diff| = {diff:.3e}")
    if diff > args.tolerance:
        print(f"export.py: difference above tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
