"""Launch train.py / validate.py as a data-parallel job and report failures by rank.

Used by the ``run_*.sh`` scripts next to it:

    python scripts/launch.py --launcher msrun  --device CPU    NUM_WORKERS CONFIG [options ...]
    python scripts/launch.py --launcher mpirun --device GPU    NUM_WORKERS CONFIG [options ...]
    python scripts/launch.py --launcher none                   CONFIG [options ...]

Workers are started with this interpreter's environment (its ``bin`` goes first on PATH, since msrun
starts ``python`` from PATH) and MindSpore's log at ERROR (``GLOG_v=3``; set ``GLOG_v`` yourself for more).
Per-rank logs go to ``$LOG_DIR`` (default ``outputs/msrun_log``, ``outputs/mpirun_log`` or
``outputs/standalone_log``). The exit status is non-zero when any worker fails; the failing rank, the end
of its log and its first error line are printed. A worker that dies makes the others
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
from typing import Dict, List, Optional, Tuple

# MindSpore's log: errors only, for the workers (``_env``) and for this process, which imports mindcv and with it
# MindSpore below; a GLOG_v the user set wins. Only when run as a script: the tests import this file.
if __name__ == "__main__":
    os.environ.setdefault("GLOG_v", "3")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindcv.runtime import port_in_use  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("GLOG_v", "3")  # ~30 MindSpore warnings per 2-rank run would bury a rank's error
    return env


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            content = [line for line in f.read().splitlines() if "[WARNING]" not in line and "[INFO]" not in line]
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


_WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
_NOISE = re.compile(r"^\[(WARNING|INFO|DEBUG)\] ")  # MindSpore's log lines below ERROR
_ERROR_LINE = re.compile(
    r"^\[(ERROR|CRITICAL|EXCEPTION)\] "  # MindSpore (C++ and Python)
    r"|^\[[^\]]*\] \S+ (ERROR|CRITICAL) - "  # mindcv's logger (mindcv/utils/logger.py)
    r"|^[\w.-]+\.py: \S"  # a mindcv CLI's one-line error ("train.py: --lr must be > 0")
    r"|^Fatal Python error: "
)
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def _traceback_error(lines: List[str], start: int) -> Optional[str]:
    """The exception line ending the traceback that starts at ``lines[start]`` (of a chain: the last one)."""
    error = None
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line[:1].isspace() or line.startswith(("Traceback (most recent call last)", *_CHAINED)):
            continue  # frames, source lines, carets, the chain's separators
        error = line.strip()
        following = next((other for other in lines[i + 1 :] if other.strip()), "")
        if not following.startswith(_CHAINED):
            return error
    return error


def first_error_line(text: str) -> Optional[str]:
    """The first real error in a worker's log: a MindSpore or mindcv ERROR line, a CLI's one-line error, or the
    exception that ended a Python traceback (for a chain, the one that propagated), whichever comes first.

    MindSpore's WARNING/INFO lines are never errors; ``None`` when there is no error line (a killed worker).
    """
    lines = [line for line in text.splitlines() if not _NOISE.match(line)]
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            error = _traceback_error(lines, i)
            if error:
                return error
        elif _ERROR_LINE.match(line):
            return line.strip()
    return None


def _log_error(path: str) -> Optional[str]:
    try:
        with open(path, errors="replace") as f:
            return first_error_line(f.read())
    except OSError:
        return None


def _rank_logs(log_dir: str) -> List[Tuple[int, str]]:
    """``(rank, log file)`` of every worker log in ``log_dir``: msrun's ``worker_<rank>.log`` or Open MPI's
    ``<job>/rank.<rank>/stdout``, by rank."""
    found = []
    for path in glob.glob(os.path.join(log_dir, "worker_*.log")) + glob.glob(
        os.path.join(log_dir, "*", "rank.*", "stdout")
    ):
        match = re.search(r"worker_(\d+)\.log$|rank\.(\d+)", path)
        found.append((int(match.group(1) or match.group(2)), path))
    return sorted(found)


def _worker_logs_by_pid(parent: int) -> Dict[int, str]:
    """``{pid: log file}`` of the children of ``parent`` writing to a ``worker_<rank>.log`` (msrun's; Linux /proc).

    With MindSpore's log at ERROR a worker's log may hold no line carrying its pid, so the launcher records
    which process writes which log while they run.
    """
    found: Dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:  # field 4, after the command name
                continue
            target = os.readlink(f"/proc/{entry}/fd/1")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if re.search(r"worker_\d+\.log$", target):
            found[int(entry)] = target
    return found


def _rank_of_pid(log_dir: str, pid: int, logs_by_pid: Optional[Dict[int, str]] = None) -> Optional[int]:
    """msrun names dead workers by pid: the log the launcher saw the pid write to names the rank; else the pid in
    MindSpore's log prefix (when its log level lets such lines through)."""
    match = re.search(r"worker_(\d+)\.log$", (logs_by_pid or {}).get(pid, ""))
    if match:
        return int(match.group(1))
    needle = f"({pid},"
    for path in glob.glob(os.path.join(log_dir, "worker_*.log")):
        with open(path, errors="replace") as f:
            if needle in f.read():
                return int(re.search(r"worker_(\d+)\.log", path).group(1))
    return None


def failure_report(log_dir: str, failures: List[str], code: int) -> str:
    """What the launcher prints when the job failed, ending with one line that names the failed rank(s) and the
    first real error line of each failed rank's log.

    Args:
        log_dir: the per-rank logs.
        failures: ``"rank <r> (pid <p>) <how it ended>"`` (or ``"worker pid <p> ..."``) per failed worker, as
            msrun reported them; empty when the launcher named none (mpirun, or msrun itself failed).
        code: the launcher's exit status.
    """
    lines, reasons = [], []
    for failure in failures:
        rank = re.match(r"rank (\d+)", failure)
        error = None
        if rank:
            path = os.path.join(log_dir, f"worker_{rank.group(1)}.log")
            lines.append(f"launch: end of {path}:\n{_tail(path)}")
            error = _log_error(path)
        reasons.append(f"{failure}: {error}" if error else failure)
    if not failures:  # no rank named: the first error line of every rank that has one, by rank
        reasons.append(f"launcher exit code {code}")
        for rank, path in _rank_logs(log_dir):
            error = _log_error(path)
            if error:
                lines.append(f"launch: rank {rank} ({path}): {error}")
    lines.append(f"launch: job FAILED: {'; '.join(reasons)}. Per-rank logs: {log_dir}")
    return "\n".join(lines)


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


def run(
    cmd: List[str], log_dir: Optional[str], grace: float, watch_msrun: bool, local_workers: int = 0
) -> Tuple[int, List[str]]:
    """Run the launcher, echoing its output; stop the job ``grace`` s after a worker dies.

    ``local_workers``: msrun's workers on this node, whose log files are looked up by pid while they start.
    Returns the exit status and a description of each failed rank.
    """
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    failures: List[str] = []
    first_failure: List[float] = []
    logs_by_pid: Dict[int, str] = {}
    look_until = time.time() + float(os.environ.get("CLUSTER_TIMEOUT", "120")) + 60  # workers start before that

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            match = _WORKER_EXIT.search(line) if watch_msrun else None
            if match:
                pid, code = int(match.group(1)), int(match.group(2))
                rank = _rank_of_pid(log_dir, pid, logs_by_pid) if log_dir else None
                who = f"rank {rank}" if rank is not None else f"worker pid {pid}"
                failures.append(f"{who} (pid {pid}) {_describe(code)}")
                first_failure.append(time.time())
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        time.sleep(0.2)
        if watch_msrun and len(logs_by_pid) < local_workers and time.time() < look_until:
            logs_by_pid.update(_worker_logs_by_pid(proc.pid))  # until every worker is known
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
    default_logs = os.path.join("outputs", f"{'standalone' if args.launcher == 'none' else args.launcher}_log")
    args.log_dir = os.path.abspath(os.environ.get("LOG_DIR", default_logs))  # relative to where you run it
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
    local_workers = args.num_workers if args.launcher == "msrun" else 0
    code, failures = run(cmd, args.log_dir, grace, watch_msrun=args.launcher == "msrun", local_workers=local_workers)
    if code != 0:
        print(failure_report(args.log_dir, failures, code), file=sys.stderr)
        return 1
    print("launch: all workers finished successfully", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
