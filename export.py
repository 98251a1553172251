"""Export a model to MindIR or ONNX and check the exported graph against the in-framework model.

    python export.py --model mnasnet_100 --ckpt_path ckpt.ckpt --format MINDIR --file_name mnasnet_100
    python export.py --model mnasnet_100 --pretrained --format ONNX --image_size 224

BatchNorm is folded into the preceding convolutions before export (``--no_fuse_bn`` keeps it), so the
exported graph holds only conv (with bias), activation, add, pooling and the classifier. The batch
dimension is dynamic by default (``--batch_size -1``). MindSpore 2.10 itself cannot export ONNX with
dynamic shapes, so the ONNX graph is traced at batch 1 and its batch dimension is then made symbolic with
the ``onnx`` package (``pip install mindcv[onnx]``); without it the ONNX file keeps a fixed batch.
After exporting, a random batch is run through the reloaded MindIR (MindSpore) or the ONNX file
(onnxruntime, when installed) and compared with the unfused in-framework model; the max-abs and relative
differences are printed, and a relative difference above ``--tolerance`` makes the command fail.
"""

import argparse
import os
import sys
from typing import Optional

import numpy as np

import mindspore as ms
from mindspore import nn

from mindcv.errors import InvalidArgumentError
from mindcv.kernels import standard_depthwise
from mindcv.models import create_model
from mindcv.models.fuse import fuse_bn
from mindcv.models.model_factory import weights_num_classes
from mindcv.utils.cli import call_cli

ONNX_BATCH_NAME = "batch"


def export_model(
    model: nn.Cell, file_name: str, fmt: str, image_size: int, batch_size: int = -1, in_channels: int = 3
) -> str:
    """Export ``model`` (inference mode) as it is, with MindSpore's own depthwise convolution.

    Args:
        model: the network; call :func:`~mindcv.models.fuse.fuse_bn` on it first to fold BatchNorm.
        file_name: output path without extension.
        fmt: ``"MINDIR"`` or ``"ONNX"``.
        image_size: input height and width.
        batch_size: fixed batch size, or -1 for a dynamic batch (MindIR only; see :func:`make_onnx_batch_dynamic`).
        in_channels: input channels.

    Returns:
        The written path.
    """
    model.set_train(False)
    batch = None if batch_size < 0 else batch_size
    spec = ms.Tensor(shape=[batch, in_channels, image_size, image_size], dtype=ms.float32)
    with standard_depthwise(model):  # an exported file must run without this machine's kernel library
        ms.export(model, spec, file_name=file_name, file_format=fmt)
    return f"{file_name}.{'mindir' if fmt == 'MINDIR' else 'onnx'}"


def make_onnx_batch_dynamic(path: str) -> bool:
    """Turn the leading dimension of every graph input and output of an ONNX file into a symbolic ``batch``.

    MindSpore traces ONNX graphs with static shapes; MnasNet has no reshape that bakes the batch size in,
    so renaming the leading dimension is enough. Returns False when the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ImportError:
        return False
    graph_proto = onnx.load(path)
    for value in list(graph_proto.graph.input) + list(graph_proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH_NAME
    # intermediate shapes recorded at trace time would contradict other batch sizes
    del graph_proto.graph.value_info[:]
    onnx.save(graph_proto, path)
    return True


def run_exported(path: str, x: np.ndarray) -> np.ndarray:
    """Run an exported file: MindIR with MindSpore, ONNX with onnxruntime (ImportError when it is missing)."""
    if path.endswith(".mindir"):
        return nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def exported_difference(reference: nn.Cell, path: str, image_size: int, batch: int, in_channels: int = 3):
    """``(max-abs, relative)`` difference between the exported graph and ``reference`` on a random batch."""
    x = np.random.default_rng(batch).standard_normal((batch, in_channels, image_size, image_size)).astype(np.float32)
    expected = reference(ms.Tensor(x)).asnumpy()
    diff = float(np.abs(run_exported(path, x) - expected).max())
    return diff, diff / max(float(np.abs(expected).max()), 1e-30)


def check_exported(
    model: nn.Cell,
    path: str,
    image_size: int,
    batch: int = 3,
    in_channels: int = 3,
    reference: Optional[nn.Cell] = None,
) -> float:
    """Max-abs difference between the exported graph and ``reference`` (default: ``model``) on a random batch."""
    return exported_difference(reference or model, path, image_size, batch, in_channels)[0]


def _twin(model_name: str, source: nn.Cell, num_classes: int) -> nn.Cell:
    """A second instance of ``model_name`` holding ``source``'s weights (BN folding works in place)."""
    twin = create_model(model_name, num_classes=num_classes)
    values = {name: ms.Parameter(p.value().copy(), name=name) for name, p in source.parameters_and_names()}
    not_loaded, _ = ms.load_param_into_net(twin, values, strict_load=True)
    if not_loaded:
        raise RuntimeError(f"could not copy parameters into the export copy: {not_loaded[:5]}")
    return twin


def main(argv=None) -> int:
    """Export as the command line says; user errors print one line and return 2."""
    return call_cli("export.py", _export, argv)


def _export(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--ckpt_path", default="")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint, else 1000")
    parser.add_argument("--format", default="MINDIR", choices=["MINDIR", "ONNX"])
    parser.add_argument("--file_name", default=None, help="output path without extension (default: the model name)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=-1, help="-1: dynamic batch dimension")
    parser.add_argument("--no_fuse_bn", action="store_true", help="keep BatchNorm layers in the exported graph")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative difference")
    args = parser.parse_args(argv)
    ms.set_device("CPU")
    if args.image_size < 1 or args.batch_size == 0 or args.batch_size < -1:
        raise InvalidArgumentError(
            f"--image_size must be >= 1 and --batch_size >= 1 or -1 (dynamic), got {args.image_size}, {args.batch_size}"
        )
    num_classes = weights_num_classes(args.model, args.ckpt_path, args.pretrained, requested=args.num_classes) or 1000
    reference = create_model(
        args.model, num_classes=num_classes, pretrained=args.pretrained, checkpoint_path=args.ckpt_path
    )
    reference.set_train(False)
    model = reference
    if not args.no_fuse_bn:
        model = _twin(args.model, reference, num_classes)
        print(f"folded {fuse_bn(model)} BatchNorm layers into their convolutions")
    dynamic = args.batch_size < 0
    batch_size = args.batch_size
    if args.format == "ONNX" and dynamic:
        batch_size = 1  # MindSpore 2.10: "not support dynamic shape mode" for ONNX; the dimension is renamed below
    file_name = args.file_name or args.model
    if os.path.dirname(file_name):
        os.makedirs(os.path.dirname(file_name), exist_ok=True)
    path = export_model(model, file_name, args.format, args.image_size, batch_size)
    if args.format == "ONNX" and dynamic:
        if make_onnx_batch_dynamic(path):
            print("ONNX batch dimension made dynamic")
        else:
            dynamic = False
            print("note: the onnx package is not installed (pip install mindcv[onnx]): the ONNX batch stays fixed at 1")
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    try:
        worst = 0.0
        for batch in (1, 3) if dynamic else (batch_size,):
            diff, relative = exported_difference(reference, path, args.image_size, batch)
            worst = max(worst, relative)
            print(f"batch {batch}: exported vs in-framework output: max |diff| = {diff:.3e} (relative {relative:.2e})")
    except ImportError:
        print("onnxruntime is not installed (pip install mindcv[onnx]): the ONNX file was not checked")
        return 0
    if worst > args.tolerance:
        print(f"export.py: relative difference {worst:.2e} above tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
