"""Where a training step's time goes, per operator, from MindSpore's own profiler.

    python benchmarks/profile_train_step.py --model mnasnet_100 --batch 32 --steps 3 \
        --out benchmarks/results/profile_train_step.md

Builds the same compiled ``TrainStep`` as train.py (bench_train.build_train_step), runs one step to compile,
then profiles ``--steps`` steps with ``mindspore.Profiler`` and reads its CPU operator records. Prints and
writes: the step's wall time (profiled and unprofiled), the time per operator type per step, and the
convolutions split by kind (dense / depthwise / pointwise) and direction (forward, gradient of the input,
gradient of the weights), with the host line (CPU, ISA flags, oneDNN level, threads).
"""

import argparse
import glob
import os
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import mindspore as ms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train import build_train_step  # noqa: E402
from report import write_report  # noqa: E402

from mindcv.runtime import environment_line  # noqa: E402

CONV_DIRECTIONS = {
    "Conv2D": "forward",
    "Conv2DBackpropInput": "input gradient",
    "Conv2DBackpropFilter": "weight gradient",
}


def read_op_records(folder: str) -> List[Tuple[str, float, str]]:
    """Every operator call of the profiled steps, in execution order: (full op name, ms, input shapes)."""
    timestamps = glob.glob(os.path.join(folder, "**", "cpu_op_execute_timestamp_*.txt"), recursive=True)
    framework = glob.glob(os.path.join(folder, "**", "cpu_framework_*.txt"), recursive=True)
    if not timestamps:
        raise SystemExit(f"the profiler wrote no CPU operator records under {folder}")
    records = []
    with open(timestamps[0]) as f:
        for line in f:
            parts = line.strip().split(";")
            if len(parts) < 3:
                continue
            for record in parts[2].split():
                fields = record.split(",")
                if len(fields) >= 2:
                    records.append((int(fields[0]), parts[0], float(fields[1])))
    records.sort()
    # the framework file lists the calls' input shapes in execution order, with non-unique op names
    shapes = []
    if framework:
        with open(framework[0]) as f:
            shapes = [line.strip().split(";") for line in f if line.count(";") >= 3]
    matched = len(shapes) == len(records) and all(
        full.rsplit("/", 1)[-1].rsplit("-op", 1)[0] == fields[0] for (_, full, _), fields in zip(records, shapes)
    )
    return [
        (full, ms_, ";".join(p for p in shapes[i][3:] if p) if matched else "")
        for i, (_, full, ms_) in enumerate(records)
    ]


def conv_cell(full_name: str) -> str:
    """The Conv2d cell an operator belongs to (forward and gradient ops of one layer give the same path)."""
    parts = full_name.removeprefix("Gradients/").split("/")
    last = max((i for i, part in enumerate(parts) if part.endswith("-Conv2d")), default=len(parts) - 1)
    return "/".join(parts[: last + 1])


def kernel_of(shape_text: str) -> str:
    """``KxK`` from a forward convolution's weight shape (its second input), or ``""``."""
    fields = dict(part.split(":", 1) for part in shape_text.split(";") if ":" in part)
    try:
        dims = [int(v) for v in fields.get("input_2", "").strip("[]").split(",")]
    except ValueError:
        return ""
    return f"{dims[2]}x{dims[3]}" if len(dims) == 4 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=["GRAPH", "PYNATIVE"], default="GRAPH")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/profile_train_step.md")
    args = parser.parse_args()

    mode = ms.GRAPH_MODE if args.mode == "GRAPH" else ms.PYNATIVE_MODE
    step = build_train_step(args.model, mode, args.batch, args.size)
    step()  # compile
    plain = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as folder:
        profiler = ms.Profiler(output_path=folder)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        profiled_s = (time.perf_counter() - t0) / args.steps
        profiler.stop()
        profiler.analyse()
        records = read_op_records(folder)

    per_type: Dict[str, float] = defaultdict(float)
    per_type_calls: Dict[str, int] = defaultdict(int)
    conv_split: Dict[Tuple[str, str], float] = defaultdict(float)
    kernels = {conv_cell(name): kernel_of(shapes) for name, _, shapes in records if "/Conv2D-op" in name}
    for full_name, call_ms, _ in records:
        op_type = full_name.rsplit("/", 1)[-1].rsplit("-op", 1)[0]
        per_type[op_type] += call_ms / args.steps
        per_type_calls[op_type] += 1
        if op_type in CONV_DIRECTIONS:
            cell = conv_cell(full_name)
            role = cell.rsplit("/", 1)[-1].removesuffix("-Conv2d")
            kind = f"{role} {kernels.get(cell, '')}".strip()
            conv_split[(kind, CONV_DIRECTIONS[op_type])] += call_ms / args.steps
    per_type_calls = {k: v // args.steps for k, v in per_type_calls.items()}
    op_ms = sum(per_type.values())
    step_ms = min(plain) * 1000.0
    lines = [
        f"# {args.model} training step, {args.mode}, batch {args.batch}, {args.size}x{args.size}, fp32, RMSProp",
        "",
        f"Host: {environment_line()}",
        "",
        f"Step wall time: {step_ms:.0f} ms unprofiled (best of {args.steps}), {profiled_s * 1000:.0f} ms profiled; "
        f"operators account for {op_ms:.0f} ms per step ({op_ms / (profiled_s * 1000):.0%} of the profiled step). "
        f"{args.batch / (step_ms / 1000):.1f} img/s.",
        "",
        "| operator type | calls / step | ms / step | share of operator time |",
        "|---|---:|---:|---:|",
    ]
    ranked = sorted(per_type.items(), key=lambda kv: -kv[1])
    for op_type, ms_per_step in ranked[: args.top]:
        lines.append(f"| {op_type} | {per_type_calls[op_type]} | {ms_per_step:.1f} | {ms_per_step / op_ms:.1%} |")
    rest = sum(v for _, v in ranked[args.top :])
    if rest:
        lines.append(f"| ({len(ranked) - args.top} other types) | | {rest:.1f} | {rest / op_ms:.1%} |")
    if any("-Conv2d/" in name for name, _, _ in records):
        lines += [
            "",
            "Convolutions by layer role (cell name: conv_dw depthwise, conv_pw / conv_pwl pointwise) and direction:",
            "",
            "| layer | direction | ms / step | share |",
            "|---|---|---:|---:|",
        ]
        for (kind, direction), ms_per_step in sorted(conv_split.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {kind} | {direction} | {ms_per_step:.1f} | {ms_per_step / op_ms:.1%} |")
    else:
        lines += ["", "(The operator records of this mode carry no layer names; the GRAPH profile splits by layer.)"]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
