"""Every registered model side by side: size, cost, inference latency/throughput and training-step throughput.

    python benchmarks/bench_models.py --torch-python /path/to/python-with-torchvision --out benchmarks/results/models.md

Per model: trainable parameters, MACs (224x224), batch-1 latency (median and p90) and batch-32 throughput
for inference in GRAPH and PYNATIVE mode (BatchNorm folded, as deployed), in onnxruntime on our ONNX export
and on its INT8 quantization (when onnxruntime and onnx are installed; fp32 and INT8 timed interleaved),
and training-step throughput at batch 32 (RMSProp, fp32) in both modes. With ``--torch-python`` the widths
torchvision ships are measured in the same run with torchvision in eager mode and its own ONNX export in
onnxruntime, and the ratios are printed. The machine is shared and
noisy; compare ratios from one run, not absolute numbers across runs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import mindspore as ms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train import build_train_step  # noqa: E402
from report import write_report  # noqa: E402

from mindcv.deploy import export_model, make_onnx_batch_dynamic  # noqa: E402
from mindcv.deploy.quantize import quantize_int8  # noqa: E402
from mindcv.models import create_model, list_models  # noqa: E402
from mindcv.models.fuse import fuse_bn  # noqa: E402
from mindcv.nas.latency import time_calls  # noqa: E402
from mindcv.runtime import environment_line  # noqa: E402
from mindcv.utils.model_stats import count_macs, count_params  # noqa: E402

TORCHVISION_WIDTHS = {"mnasnet_050": 0.5, "mnasnet_075": 0.75, "mnasnet_100": 1.0, "mnasnet_130": 1.3}
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_eager.py")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median and p90 wall time (s) of ``fn`` after ``warmup`` untimed calls (compilation happens there)."""
    r = time_calls(fn, warmup, repeats)
    return {"median_s": r["median_ms"] / 1000.0, "p90_s": r["p90_ms"] / 1000.0}


def inference(name: str, mode: int, size: int, batch: int, repeats: int) -> Dict[str, float]:
    ms.set_context(mode=mode)
    model = create_model(name)
    fuse_bn(model)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    return timed(lambda: model(x).asnumpy(), repeats)


def training(name: str, mode: int, size: int, batch: int, repeats: int) -> Dict[str, float]:
    return timed(build_train_step(name, mode, batch, size), repeats)


def onnx_sessions_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(name: str, size: int, directory: str) -> str:
    ms.set_context(mode=ms.GRAPH_MODE)
    model = create_model(name)
    fuse_bn(model)
    path = export_model(model, os.path.join(directory, name), "ONNX", size, batch_size=1)
    if not make_onnx_batch_dynamic(path):
        raise RuntimeError("the onnx package is needed for a dynamic-batch ONNX export")
    return path


def quantize_onnx(path: str, size: int) -> str:
    """INT8 (QDQ, per-channel) copy of an exported graph. Calibrated on random images: the speed of int8
    kernels does not depend on the ranges (accuracy is measured by ``export.py --quantize int8 --val_data``)."""
    calibration = np.random.default_rng(1).standard_normal((16, 3, size, size)).astype(np.float32)
    return quantize_int8(path, path[: -len(".onnx")] + ".int8.onnx", calibration).path


def onnxruntime_side_by_side(paths: Dict[str, str], size: int, batches: List[int], repeats: int) -> Dict[str, dict]:
    """Time several ONNX files in onnxruntime with the calls interleaved, so machine noise hits all alike."""
    import onnxruntime as ort

    sessions = {key: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for key, p in paths.items()}
    results: Dict[str, dict] = {key: {} for key in paths}
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        feeds = {key: {s.get_inputs()[0].name: x} for key, s in sessions.items()}
        times: Dict[str, list] = {key: [] for key in paths}
        for key, session in sessions.items():
            session.run(None, feeds[key])
        for _ in range(repeats):
            for key, session in sessions.items():
                t0 = time.perf_counter()
                session.run(None, feeds[key])
                times[key].append(time.perf_counter() - t0)
        for key in paths:
            ordered = sorted(times[key])
            results[key][batch] = {
                "median_s": statistics.median(ordered),
                "p90_s": ordered[int(round(0.9 * (len(ordered) - 1)))],
            }
    return results


def torchvision_run(python: str, alpha: float, what: str, size: int, batch: int, repeats: int, **extra) -> dict:
    cmd = [python, HELPER, "--alpha", str(alpha), "--what", what, "--size", str(size), "--batch", str(batch)]
    cmd += ["--repeats", str(repeats)] + [f"--{k}={v}" for k, v in extra.items()]
    cmd += ["--threads", str(ms.get_context("runtime_num_threads"))]  # the same thread count on both sides
    # MindSpore sets OMP_NUM_THREADS=1 in the C environment once it has run; without an explicit env the
    # child would inherit it (torch at 1 thread). Python's os.environ does not carry it.
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def check_torch_python(python: str) -> bool:
    """Fail before measuring anything if ``python`` lacks torch/torchvision; tell whether it can export ONNX."""
    code = "import importlib.util, torch, torchvision; print(importlib.util.find_spec('onnx') is not None)"
    try:
        run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SystemExit(f"--torch-python {python}: cannot run it ({err})") from None
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"--torch-python {python}: torch and torchvision do not import there ({tail[0]})")
    has_onnx = run.stdout.strip().endswith("True")
    if not has_onnx:
        print(f"note: {python} has no onnx package, so torchvision's ONNX export is not measured", flush=True)
    return has_onnx


def fmt_latency(r: Optional[dict]) -> str:
    return "–" if r is None else f"{r['median_s'] * 1000:.1f} / {r['p90_s'] * 1000:.1f}"


def fmt_rate(r: Optional[dict], batch: int) -> str:
    return "–" if r is None else f"{batch / r['median_s']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=4, help="timed batch-32 calls / training steps")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-pynative", action="store_true")
    parser.add_argument("--torch-python", default="", help="a Python with torch + torchvision for the comparison")
    parser.add_argument("--out", default="benchmarks/results/models.md")
    args = parser.parse_args()
    torch_has_onnx = check_torch_python(args.torch_python) if args.torch_python else False
    ms.set_device("CPU")
    names = args.models or [m for m in list_models() if m != "mnasnet_arch"]
    modes = [("GRAPH", ms.GRAPH_MODE)] + ([] if args.no_pynative else [("PYNATIVE", ms.PYNATIVE_MODE)])
    with_onnx = onnx_sessions_available()
    tmp = tempfile.mkdtemp(prefix="bench_models_")
    rows: Dict[str, dict] = {}
    for index, name in enumerate(names):
        print(f"[{index + 1}/{len(names)}] {name}", flush=True)
        model = create_model(name)
        row = {"params": count_params(model), "macs": count_macs(model, args.size)}
        for mode_name, mode in modes:
            row[f"{mode_name}_b1"] = inference(name, mode, args.size, 1, args.latency_repeats)
            row[f"{mode_name}_bN"] = inference(name, mode, args.size, args.batch, args.repeats)
            if not args.no_train:
                row[f"{mode_name}_train"] = training(name, mode, args.size, args.batch, args.repeats)
        if with_onnx:
            path = export_onnx(name, args.size, tmp)
            paths = {"ours": path, "int8": quantize_onnx(path, args.size)}
            ort_times = onnxruntime_side_by_side(paths, args.size, [1, args.batch], args.latency_repeats)
            row["ORT_b1"], row["ORT_bN"] = ort_times["ours"][1], ort_times["ours"][args.batch]
            row["INT8_b1"], row["INT8_bN"] = ort_times["int8"][1], ort_times["int8"][args.batch]
        rows[name] = row

    host = environment_line()
    lines = [
        f"Host: {host}; fp32, {args.size}x{args.size}, BatchNorm folded for inference; latency = batch 1 "
        f"median / p90 in ms; throughput in img/s at batch {args.batch}; training = one RMSProp step at "
        f"batch {args.batch}.",
        "",
        "| model | params | MACs | latency GRAPH | latency PYNATIVE | latency ORT | latency ORT INT8 | img/s GRAPH "
        "| img/s PYNATIVE | img/s ORT | img/s ORT INT8 | INT8 / fp32 ORT | train img/s GRAPH | train img/s PYNATIVE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.1f}M | {fmt_latency(r.get('GRAPH_b1'))} "
            f"| {fmt_latency(r.get('PYNATIVE_b1'))} | {fmt_latency(r.get('ORT_b1'))} | {fmt_latency(r.get('INT8_b1'))} "
            f"| {fmt_rate(r.get('GRAPH_bN'), args.batch)} | {fmt_rate(r.get('PYNATIVE_bN'), args.batch)} "
            f"| {fmt_rate(r.get('ORT_bN'), args.batch)} | {fmt_rate(r.get('INT8_bN'), args.batch)} "
            f"| {ratio(r.get('INT8_bN'), r.get('ORT_bN'))} | {fmt_rate(r.get('GRAPH_train'), args.batch)} "
            f"| {fmt_rate(r.get('PYNATIVE_train'), args.batch)} |"
        )

    write_report(args.out, lines)  # kept even if the comparison below fails
    if args.torch_python:
        lines += torchvision_comparison(args, rows, with_onnx and torch_has_onnx, tmp)
        write_report(args.out, lines)


def torchvision_comparison(args, rows: Dict[str, dict], with_onnx: bool, tmp: str) -> List[str]:
    lines = [
        "",
        f"Side by side with torchvision (same run; eager PyTorch; onnxruntime runs both ONNX exports interleaved), "
        f"batch {args.batch} img/s:",
        "",
        "| model | mindcv GRAPH | torchvision eager | ratio | mindcv ONNX in ORT | torchvision ONNX in ORT | ratio "
        "| mindcv INT8 ONNX in ORT | ratio to torchvision ONNX | mindcv train GRAPH | torchvision train eager "
        "| ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, alpha in TORCHVISION_WIDTHS.items():
        if name not in rows:
            continue
        print(f"torchvision MNASNet({alpha})", flush=True)
        # ours is measured again right beside theirs, so both numbers see the same machine load
        r = {"GRAPH_bN": inference(name, ms.GRAPH_MODE, args.size, args.batch, args.repeats)}
        tv_infer = torchvision_run(args.torch_python, alpha, "infer", args.size, args.batch, args.repeats)
        tv_train = None
        if not args.no_train:
            r["GRAPH_train"] = training(name, ms.GRAPH_MODE, args.size, args.batch, args.repeats)
            tv_train = torchvision_run(args.torch_python, alpha, "train", args.size, args.batch, args.repeats)
        ours_ort = tv_ort = int8_ort = None
        if with_onnx:
            tv_path = os.path.join(tmp, f"torchvision_{alpha}.onnx")
            torchvision_run(args.torch_python, alpha, "onnx", args.size, 1, 1, onnx_path=tv_path)
            paths = {"ours": os.path.join(tmp, f"{name}.onnx"), "int8": os.path.join(tmp, f"{name}.int8.onnx")}
            paths["tv"] = tv_path
            both = onnxruntime_side_by_side(paths, args.size, [args.batch], args.repeats)
            ours_ort, tv_ort, int8_ort = both["ours"][args.batch], both["tv"][args.batch], both["int8"][args.batch]
        version = f"torch {tv_infer['torch']}, {tv_infer.get('threads', '?')} threads"
        lines.append(
            f"| {name} vs MNASNet({alpha}), {version} "
            f"| {fmt_rate(r['GRAPH_bN'], args.batch)} | {fmt_rate(tv_infer, args.batch)} "
            f"| {ratio(r['GRAPH_bN'], tv_infer)} | {fmt_rate(ours_ort, args.batch)} | {fmt_rate(tv_ort, args.batch)} "
            f"| {ratio(ours_ort, tv_ort)} | {fmt_rate(int8_ort, args.batch)} | {ratio(int8_ort, tv_ort)} "
            f"| {fmt_rate(r.get('GRAPH_train'), args.batch)} "
            f"| {fmt_rate(tv_train, args.batch)} | {ratio(r.get('GRAPH_train'), tv_train)} |"
        )
    return lines


def ratio(ours: Optional[dict], theirs: Optional[dict]) -> str:
    if ours is None or theirs is None:
        return "–"
    return f"{theirs['median_s'] / ours['median_s']:.2f}x"


if __name__ == "__main__":
    main()
