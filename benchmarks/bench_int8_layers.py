"""Where INT8 gains and loses time, layer by layer, in onnxruntime.

    python benchmarks/bench_int8_layers.py --ckpt_path outputs/quickstart/mnasnet_050_best.ckpt
    python benchmarks/bench_int8_layers.py --model mnasnet_100 --image_size 224

Exports the model to fp32 ONNX, quantizes it as ``export.py --quantize int8`` does (calibrated on random
images: ranges change the numbers, not the kernels' speed), profiles both graphs with onnxruntime's profiler and
prints every convolution's median kernel time in fp32 and INT8 side by side, grouped by role (stem, depthwise,
pointwise, head). Then it times whole graphs interleaved in one run: fp32, all-INT8, and INT8 with the stem
left in fp32. Written for issue 14: on a 64 px model the pointwise convolutions gain 2-2.7x while the depthwise
ones and the 3-channel stem lose, which caps the whole-graph speed-up.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindcv.deploy import export_model, make_onnx_batch_dynamic  # noqa: E402
from mindcv.deploy.quantize import quantize_int8  # noqa: E402
from mindcv.models import create_model  # noqa: E402
from mindcv.models.fuse import fuse_bn  # noqa: E402
from mindcv.models.loading import load_model  # noqa: E402


def _session(path: str, threads: int, profile_prefix: str = ""):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def conv_kernel_times(
    path: str, batch: np.ndarray, runs: int, threads: int, work: str
) -> List[Tuple[str, float, list]]:
    """(op type, median kernel microseconds, input shapes) of each convolution, in execution order."""
    session = _session(path, threads, os.path.join(work, os.path.basename(path)))
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: batch})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    order: List[str] = []
    times: Dict[str, List[float]] = {}
    info: Dict[str, Tuple[str, list]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        if op not in ("Conv", "QLinearConv"):
            continue
        node = event["name"][: -len("_kernel_time")]
        if node not in times:
            order.append(node)
            times[node] = []
            shapes = [list(s.values())[0] for s in event["args"].get("input_type_shape", [])]
            info[node] = (op, shapes)
        times[node].append(event["dur"])
    return [(info[n][0], statistics.median(times[n]), info[n][1]) for n in order]


def role(index: int, count: int, input_shape: list, weight_shape: list) -> str:
    if index == 0:
        return "stem"
    if index == count - 1:
        return "head"
    if weight_shape[1] == 1 and weight_shape[0] > 1 and input_shape[1] == weight_shape[0]:
        return "depthwise"
    return "pointwise" if weight_shape[2:] == [1, 1] else "dense"


def interleaved(paths: Dict[str, str], batch: np.ndarray, rounds: int, threads: int) -> Dict[str, float]:
    """Median images per second of each graph, timed in alternating rounds."""
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    seconds: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            name = session.get_inputs()[0].name
            for _ in range(3):
                session.run(None, {name: batch})
            start = time.perf_counter()
            for _ in range(20):
                session.run(None, {name: batch})
            seconds[key].append((time.perf_counter() - start) / 20)
    return {k: len(batch) / statistics.median(v) for k, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default="", help="a checkpoint (model and image size are read from it)")
    parser.add_argument("--model", default="mnasnet_050", help="without --ckpt_path: a registered model")
    parser.add_argument("--image_size", type=int, default=64, help="without --ckpt_path: input size")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="profiled runs per graph")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = parser.parse_args()

    if args.ckpt_path:
        loaded = load_model(checkpoint_path=args.ckpt_path)
        network, image_size = loaded.fused_copy(), loaded.image_size
        label = f"{args.ckpt_path} ({image_size} px)"
    else:
        network, image_size = create_model(args.model), args.image_size
        fuse_bn(network)
        label = f"{args.model} ({image_size} px, random weights)"
    network.set_train(False)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((args.batch_size, 3, image_size, image_size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as work:
        fp32 = export_model(network, os.path.join(work, "fp32"), "ONNX", image_size, batch_size=1)
        make_onnx_batch_dynamic(fp32)
        calibration = rng.standard_normal((32, 3, image_size, image_size)).astype(np.float32)
        int8 = os.path.join(work, "int8.onnx")
        quantize_int8(fp32, int8, calibration)
        int8_stem = os.path.join(work, "int8_stem_fp32.onnx")
        quantize_int8(fp32, int8_stem, calibration, keep_fp32=("stem",))

        a = conv_kernel_times(fp32, batch, args.runs, args.threads, work)
        b = conv_kernel_times(int8, batch, args.runs, args.threads, work)
        if len(a) != len(b) or any(op != "QLinearConv" for op, _, _ in b):
            raise SystemExit(f"the INT8 graph's convolutions do not pair with the fp32 graph's ({len(a)} vs {len(b)})")
        print(f"{label}, batch {args.batch_size}, {args.threads} threads; median kernel time per convolution (us)")
        print(f"{'#':>3} {'role':10} {'input':>18} {'weight':>18} {'fp32':>8} {'int8':>8} {'fp32/int8':>9}")
        totals: Dict[str, List[float]] = {}
        for i, ((_, t32, shapes), (_, t8, _)) in enumerate(zip(a, b)):
            kind = role(i, len(a), shapes[0], shapes[1])
            totals.setdefault(kind, [0.0, 0.0])
            totals[kind][0] += t32
            totals[kind][1] += t8
            print(f"{i:>3} {kind:10} {str(shapes[0]):>18} {str(shapes[1]):>18} {t32:8.1f} {t8:8.1f} {t32 / t8:8.2f}x")
        print("\nby role: fp32 us, int8 us, fp32/int8")
        for kind, (t32, t8) in totals.items():
            print(f"  {kind:10} {t32:8.0f} {t8:8.0f} {t32 / t8:6.2f}x")
        all32, all8 = sum(t for t, _ in totals.values()), sum(t for _, t in totals.values())
        print(f"  {'all convs':10} {all32:8.0f} {all8:8.0f} {all32 / all8:6.2f}x")

        speed = interleaved(
            {"fp32": fp32, "int8": int8, "int8, stem fp32": int8_stem}, batch, args.rounds, args.threads
        )
        print(f"\nwhole graph, interleaved ({args.rounds} rounds, medians):")
        for key, value in speed.items():
            print(f"  {key:16} {value:8.0f} img/s  {value / speed['fp32']:.2f}x fp32")


if __name__ == "__main__":
    main()
