"""Data-parallel training and evaluation with 2 processes on this machine (msrun and mpirun-style launch)."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import train_argv
from PIL import Image

from mindcv.models.checkpoint import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_BIN = os.path.dirname(sys.executable)
# every test launches training or validation processes (msrun, mpirun-style, the launcher): minutes on 2 cores
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msrun(script: str, log_dir: str, args) -> list:
    """An msrun command line starting 2 local workers of ``script`` on a free port."""
    return [
        os.path.join(PY_BIN, "msrun"),
        "--worker_num",
        "2",
        "--local_worker_num",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "--log_dir",
        log_dir,
        "--join",
        "True",
        script,
        *args,
    ]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "OMPI_"))}
    env["PATH"] = PY_BIN + os.pathsep + env.get("PATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 classes x 16 train / 7 val square JPEGs (odd val count: shards of unequal size)."""
    root = tmp_path_factory.mktemp("dp_data")
    rng = np.random.default_rng(1)
    for split, n in (("train", 16), ("val", 7)):
        for c, cls in enumerate(("a", "b", "c")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(60 + 70 * c, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.jpg", quality=95)
    return str(root)


def _train_args(data, out, extra=()):
    # no random augmentation (each rank's augmentation stream differs from a single process's), dropout on:
    # its noise is indexed by micro-batch, so it matches across launch styles; every caller sets the batch size
    return train_argv(
        data,
        out,
        *extra,
        mode=0,
        batch_size=None,
        lr=0.0005,
        seed=3,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip=0,
    )


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same 2 epochs trained three ways: msrun x2 ranks, mpirun-style x2 ranks, 1 process accumulating 2."""
    base = tmp_path_factory.mktemp("dp_runs")
    out = {k: str(base / k) for k in ("msrun", "mpirun", "single")}
    logs = str(base / "msrun_logs")
    msrun = subprocess.run(
        _msrun(
            "train.py",
            logs,
            [
                *_train_args(
                    data, out["msrun"], ("--distribute", "True", "--batch_size", "4", "--val_while_train", "True")
                )
            ],
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    # what `mpirun -n 2 python train.py --distribute True` gives each process (Open MPI's variables)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                *_train_args(data, out["mpirun"], ("--distribute", "True", "--batch_size", "4")),
            ],
            cwd=REPO,
            env=_env(OMPI_COMM_WORLD_RANK=r, OMPI_COMM_WORLD_SIZE=2, OMPI_COMM_WORLD_LOCAL_SIZE=2, MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    mpi_out = [p.communicate(timeout=600)[0] for p in procs]
    single = subprocess.run(
        [
            sys.executable,
            "train.py",
            *_train_args(data, out["single"], ("--batch_size", "4", "--gradient_accumulation_steps", "2")),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return dict(out=out, logs=logs, msrun=msrun, mpi=(procs, mpi_out), single=single)


def _trainable(path):
    tensors, meta = read_checkpoint(path)
    # BN moving statistics are per-rank state in data parallelism (each rank normalises its own batch)
    return {
        k: v
        for k, v in tensors.items()
        if not k.startswith(("optimizer.", "ema.", "train_step.")) and "moving_" not in k
    }, meta


def test_two_process_training_equals_one_process_with_the_same_global_batch(runs):
    assert runs["msrun"].returncode == 0, runs["msrun"].stdout[-3000:]
    assert all(p.returncode == 0 for p in runs["mpi"][0]), runs["mpi"][1][0][-3000:]
    assert runs["single"].returncode == 0, runs["single"].stderr[-3000:]
    ref, ref_meta = _trainable(os.path.join(runs["out"]["single"], "mnasnet_050-2_12.ckpt"))
    for style in ("msrun", "mpirun"):
        got, meta = _trainable(os.path.join(runs["out"][style], "mnasnet_050-2_12.ckpt"))
        assert meta["global_step"] == ref_meta["global_step"] == 12
        assert set(got) == set(ref)
        worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
        assert worst < 1e-4, f"{style}: max |w_dp - w_single| = {worst}"
    # the log states the global batch
    log = open(os.path.join(runs["out"]["msrun"], "train.log")).read()
    assert "global batch 8 = 4 per device x 2 device(s)" in log


def _validate_args(data, ckpt, batch_size):
    return [
        "--dataset",
        "tiny",
        "--data_dir",
        data,
        "--model",
        "mnasnet_050",
        "--ckpt_path",
        ckpt,
        "--batch_size",
        str(batch_size),
        "--progress",
        "False",
        "--num_parallel_workers",
        "1",
    ]


def test_two_process_evaluation_equals_single_process_exactly(runs, data, tmp_path):
    args = _validate_args(data, os.path.join(runs["out"]["single"], "mnasnet_050-2_12.ckpt"), 4)
    single = subprocess.run(
        [sys.executable, "validate.py", *args, "--result_file", str(tmp_path / "single.json")],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    dist = subprocess.run(
        _msrun(
            "validate.py",
            str(tmp_path / "logs"),
            [*args, "--distribute", "True", "--result_file", str(tmp_path / "dist.json")],
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dist.returncode == 0, dist.stdout[-3000:]
    a, b = json.load(open(tmp_path / "single.json")), json.load(open(tmp_path / "dist.json"))
    assert a["num_samples"] == b["num_samples"] == 21  # 11 + 10 across the shards, no padding duplicates
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


def test_train_time_evaluation_equals_validate_on_the_saved_checkpoint_after_two_ranks(runs, data, tmp_path):
    """Each rank's BN statistics drift apart; they are averaged before evaluating and saving, so the
    2-rank run evaluates exactly the model rank 0 saves."""
    assert runs["msrun"].returncode == 0, runs["msrun"].stdout[-3000:]
    out = runs["out"]["msrun"]
    logged = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][-1]
    assert logged["epoch"] == 2 and logged["val_samples"] == 21
    result = tmp_path / "standalone.json"
    standalone = subprocess.run(
        [
            sys.executable,
            "validate.py",
            *_validate_args(data, os.path.join(out, "mnasnet_050-2_12.ckpt"), 5),
            "--result_file",
            str(result),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert standalone.returncode == 0, standalone.stderr[-2000:]
    got = json.loads(result.read_text())
    assert got["num_samples"] == 21
    assert got["top1"] == logged["val_top1"] and got["top5"] == logged["val_top5"]
    assert got["loss"] == pytest.approx(logged["val_loss"], rel=1e-6)


def test_resume_a_two_process_run_on_one_process(runs, data):
    out = runs["out"]["msrun"]
    first = os.path.join(out, "mnasnet_050-1_6.ckpt")
    resumed = subprocess.run(
        [
            sys.executable,
            "train.py",
            *_train_args(
                data,
                out,
                (
                    "--batch_size",
                    "8",
                    "--ckpt_path",
                    first,
                    "--resume",
                    "True",
                    "--epoch_size",
                    "3",
                    "--decay_epochs",
                    "3",
                ),
            ),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    tensors, meta = read_checkpoint(os.path.join(out, "mnasnet_050-3_18.ckpt"))
    assert meta["epoch"] == 3 and meta["global_step"] == 18  # 6 steps per epoch on either device count
    assert all(np.isfinite(v).all() for v in tensors.values() if v.dtype.kind == "f")


def _pid_writing(log: str):
    """The process whose stdout is ``log`` (msrun's worker of that log): MindSpore's log at ERROR (the launcher's
    default) leaves no line carrying the pid in it."""
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/fd/1") == log:
                return int(entry)
        except OSError:
            continue
    return None


def test_a_killed_worker_fails_the_job_quickly_naming_its_rank(data, tmp_path):
    port = _free_port()
    log_dir = str(tmp_path / "logs")
    out = str(tmp_path / "out")
    launcher = subprocess.Popen(
        [
            "bash",
            "scripts/run_distributed_cpu.sh",
            "2",
            os.path.join(REPO, "configs", "mnasnet", "quickstart_demo_cpu.yaml"),
            *_train_args(data, out, ("--epoch_size", "200", "--decay_epochs", "200", "--batch_size", "4")),
        ],
        cwd=REPO,
        env={k: v for k, v in _env(MASTER_PORT=port, LOG_DIR=log_dir, GRACE=3).items() if k != "GLOG_v"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    pid = None
    while time.time() < deadline and pid is None:
        time.sleep(0.5)
        ckpts = os.listdir(out) if os.path.isdir(out) else []
        log = os.path.join(log_dir, "worker_1.log")
        if any(c.startswith("mnasnet_050-1_") for c in ckpts) and os.path.exists(log):
            pid = _pid_writing(log)
    assert pid, "the job did not start"
    os.kill(pid, 9)
    # the launcher stops the surviving rank GRACE (3) s after the death (SIGTERM, then SIGKILL 10 s later) instead
    # of letting it wait in a collective for MindSpore's heartbeat timeout (200 s) or train on for 200 epochs
    try:
        output, _ = launcher.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        launcher.kill()
        output, _ = launcher.communicate()
        pytest.fail(f"the job still ran 120 s after rank 1 was killed: the launcher did not stop it\n{output[-3000:]}")
    assert launcher.returncode != 0
    assert f"job FAILED: rank 1 (pid {pid}) killed by signal SIGKILL" in output
    # MindSpore's log is at ERROR by default: its ~30 warnings per 2-rank run would bury the failure
    assert "[WARNING]" not in output


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = subprocess.run(
            [
                "bash",
                "scripts/run_distributed_cpu.sh",
                "2",
                os.path.join(REPO, "configs", "mnasnet", "quickstart_demo_cpu.yaml"),
            ],
            cwd=REPO,
            env=_env(MASTER_PORT=port, LOG_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode != 0 and f"port {port} is already in use" in run.stderr
