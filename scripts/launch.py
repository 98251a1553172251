"""Launch train.py / validate.py as a data-parallel job and report failures by rank.

Used by the ``run_*.sh`` scripts next to it:

    python scripts/launch.py --launcher msrun  --device CPU    NUM_WORKERS CONFIG [options ...]
    python scripts/launch.py --launcher mpirun --device GPU    NUM_WORKERS CONFIG [options ...]
    python scripts/launch.py --launcher none                   CONFIG [options ...]

Workers are started with this interpreter's environment (its ``bin`` goes first on PATH, since msrun
starts ``python`` from PATH). Per-rank logs go to ``$LOG_DIR``. The exit status is non-zero when any
worker fails; the failing rank and the end of its log are printed. A worker that dies makes the others
wait in a collective, so the launcher watches msrun's output and stops the whole job once a rank has
failed (after ``GRACE`` seconds, default 5) instead of waiting for MindSpore's heartbeat timeout.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindcv.utils.runtime import port_in_use  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            content = [line for line in f.read().splitlines() if "[WARNING]" not in line and "[INFO]" not in line]
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


_WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")


def _rank_of_pid(log_dir: str, pid: int) -> Optional[int]:
    """msrun names dead workers by pid; the per-rank logs carry the pid in MindSpore's log prefix."""
    needle = f"({pid},"
    for path in glob.glob(os.path.join(log_dir, "worker_*.log")):
        with open(path, errors="replace") as f:
            if needle in f.read():
                return int(re.search(r"worker_(\d+)\.log", path).group(1))
    return None


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _msrun_command(args, config: str, rest: List[str]) -> List[str]:
    nnodes = int(os.environ.get("NNODES", "1"))
    msrun = shutil.which("msrun", path=_env()["PATH"])
    if msrun is None:
        sys.exit(
            "launch: msrun not found (it ships with MindSpore >= 2.3); is MindSpore installed in this environment?"
        )
    return [
        msrun,
        "--worker_num",
        str(args.num_workers * nnodes),
        "--local_worker_num",
        str(args.num_workers),
        "--master_addr",
        args.master_addr,
        "--master_port",
        str(args.master_port),
        "--node_rank",
        os.environ.get("NODE_RANK", "0"),
        "--log_dir",
        args.log_dir,
        "--join",
        "True",
        "--cluster_time_out",
        os.environ.get("CLUSTER_TIMEOUT", "120"),
        args.script,
        "-c",
        config,
        "--distribute",
        "True",
        "--device_target",
        args.device,
        *rest,
    ]


def _mpirun_command(args, config: str, rest: List[str]) -> List[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("launch: mpirun not found: install Open MPI (e.g. apt-get install openmpi-bin) or use msrun")
    cmd = [mpirun, "-n", str(args.num_workers), "--output-filename", args.log_dir, "--merge-stderr-to-stdout"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if os.environ.get("HOSTFILE"):
        cmd += ["--hostfile", os.environ["HOSTFILE"]]
    for var in ("MASTER_ADDR", "MASTER_PORT", "PATH", "PYTHONPATH"):
        if var in os.environ or var == "PATH":
            cmd += ["-x", var]
    return cmd + [
        sys.executable,
        args.script,
        "-c",
        config,
        "--distribute",
        "True",
        "--device_target",
        args.device,
        *rest,
    ]


def run(cmd: List[str], log_dir: Optional[str], grace: float, watch_msrun: bool) -> Tuple[int, List[str]]:
    """Run the launcher, echoing its output; stop the job ``grace`` s after a worker dies.

    Returns the exit status and a description of each failed rank.
    """
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    failures: List[str] = []
    first_failure: List[float] = []

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            match = _WORKER_EXIT.search(line) if watch_msrun else None
            if match:
                pid, code = int(match.group(1)), int(match.group(2))
                rank = _rank_of_pid(log_dir, pid) if log_dir else None
                who = f"rank {rank}" if rank is not None else f"worker pid {pid}"
                failures.append(f"{who} (pid {pid}) {_describe(code)}")
                first_failure.append(time.time())
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        time.sleep(0.2)
        if first_failure and time.time() - first_failure[0] > grace:
            # the surviving ranks wait in a collective until MindSpore's heartbeat timeout: end it now
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    reader.join(5)
    code = proc.returncode
    if failures and code == 0:
        code = 1
    return code, failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--launcher", choices=["msrun", "mpirun", "none"], required=True)
    parser.add_argument("--device", choices=["CPU", "GPU", "Ascend"], default="CPU")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="[NUM_WORKERS] CONFIG [options ...]")
    args = parser.parse_args()
    rest = list(args.args)
    if args.launcher != "none":
        if not rest or not rest[0].isdigit() or int(rest[0]) < 1:
            sys.exit(f"launch: the first argument must be the number of workers (>= 1), got {rest[:1]}")
        args.num_workers = int(rest.pop(0))
    if not rest or not os.path.isfile(rest[0]):
        sys.exit(f"launch: config file {rest[:1]} not found")
    config = os.path.abspath(rest.pop(0))
    args.script = os.environ.get("SCRIPT", "train.py")
    args.master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    args.master_port = int(os.environ.get("MASTER_PORT", "8118"))
    default_logs = {"msrun": "msrun_log", "mpirun": "mpirun_log", "none": "standalone_log"}[args.launcher]
    args.log_dir = os.path.abspath(os.environ.get("LOG_DIR", default_logs))
    os.makedirs(args.log_dir, exist_ok=True)
    grace = float(os.environ.get("GRACE", "5"))

    if args.launcher == "none":
        with open(os.path.join(args.log_dir, "standalone.log"), "w") as log:
            proc = subprocess.Popen(
                [sys.executable, args.script, "-c", config, "--distribute", "False", *rest],
                env=_env(),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
        return proc.wait()

    if args.launcher == "msrun":
        if os.environ.get("NODE_RANK", "0") == "0" and port_in_use("0.0.0.0", args.master_port):
            sys.exit(
                f"launch: port {args.master_port} is already in use (another job?); "
                "choose another with MASTER_PORT=<port>"
            )
        for old in glob.glob(os.path.join(args.log_dir, "worker_*.log")):
            os.remove(old)  # stale logs of an earlier job would mislead the pid -> rank lookup
        cmd = _msrun_command(args, config, rest)
    else:
        cmd = _mpirun_command(args, config, rest)
    print(f"launch: {' '.join(cmd)}\nlaunch: per-rank logs in {args.log_dir}", flush=True)
    code, failures = run(cmd, args.log_dir, grace, watch_msrun=args.launcher == "msrun")
    if code != 0:
        for failure in failures:
            rank = re.match(r"rank (\d+)", failure)
            if rank:
                path = os.path.join(args.log_dir, f"worker_{rank.group(1)}.log")
                print(f"launch: end of {path}:\n{_tail(path)}", file=sys.stderr)
        reason = "; ".join(failures) if failures else f"launcher exit code {code}"
        print(f"launch: job FAILED: {reason}. Per-rank logs: {args.log_dir}", file=sys.stderr)
        return 1
    print("launch: all workers finished successfully", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
