"""Training throughput with 1 and 2 data-parallel workers on this machine, measured in one run.

    python benchmarks/bench_distributed.py [--model mnasnet_050] [--size 64] [--batch 32] [--epochs 3]

Trains on the demo dataset: once as a single process (global batch = batch) and once with 2 msrun
workers (batch per worker = batch / 2, same global batch, one op thread per worker), and prints the
steady-state images/s of each (the first epoch, which includes graph compilation, is excluded).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mindcv.runtime import environment_line  # noqa: E402  (chooses the CPU kernels the ranks inherit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _throughput(out_dir: str, workers: int) -> float:
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    steady = rows[1:] or rows
    # img/s in the log is per worker (each processes its shard)
    return workers * sum(r["img_per_s"] for r in steady) / len(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnasnet_050")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    common = [
        "-c",
        os.path.join(REPO, "configs", "mnasnet", "quickstart_demo_cpu.yaml"),
        "--model",
        args.model,
        "--image_resize",
        str(args.size),
        "--epoch_size",
        str(args.epochs),
        "--decay_epochs",
        str(args.epochs),
        "--warmup_epochs",
        "0",
        "--val_while_train",
        "False",
        "--progress",
        "False",
        "--num_parallel_workers",
        "1",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = os.path.join(tmp, "single")
        subprocess.run(
            [sys.executable, "train.py", *common, "--batch_size", str(args.batch), "--ckpt_save_dir", single],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        results[1] = _throughput(single, 1)
        dual = os.path.join(tmp, "dual")
        subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "msrun"),
                "--worker_num",
                "2",
                "--local_worker_num",
                "2",
                "--master_port",
                str(_free_port()),
                "--log_dir",
                os.path.join(tmp, "logs"),
                "--join",
                "True",
                "train.py",
                *common,
                "--distribute",
                "True",
                "--batch_size",
                str(args.batch // 2),
                "--ckpt_save_dir",
                dual,
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        results[2] = _throughput(dual, 2)
    print(f"{args.model} at {args.size}x{args.size}, global batch {args.batch}, {os.cpu_count()} CPUs")
    print(f"  host: {environment_line()} (each rank sets its own op threads)")
    print(f"  1 worker : {results[1]:7.1f} img/s")
    print(f"  2 workers: {results[2]:7.1f} img/s  ({results[2] / results[1]:.2f}x)")


if __name__ == "__main__":
    main()
