"""train.py and validate.py as a user runs them, on a tiny generated ImageFolder dataset."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mindcv.models.checkpoint import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _common(data, out, mode, epochs=2, extra=()):
    return [
        "--dataset",
        "tiny",
        "--data_dir",
        data,
        "--model",
        "mnasnet_050",
        "--mode",
        str(mode),
        "--device_target",
        "CPU",
        "--image_resize",
        "32",
        "--batch_size",
        "8",
        "--epoch_size",
        str(epochs),
        "--opt",
        "adamw",
        "--lr",
        "0.003",
        "--warmup_epochs",
        "0",
        "--scheduler",
        "cosine_decay",
        "--decay_epochs",
        str(epochs),
        "--ckpt_save_dir",
        out,
        "--num_parallel_workers",
        "1",
        "--progress",
        "False",
        "--log_interval",
        "0",
        "--crop_pct",
        "1.0",
        "--bn_momentum",
        "0.9",
        "--drop_rate",
        "0.2",
        "--color_jitter",
        "0",
        "--seed",
        "7",
        *extra,
    ]


def _run(script, args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _last_val(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return rows[-1]


@pytest.mark.parametrize("mode", [0, 1], ids=["graph", "pynative"])
def test_train_then_validate_agree(tiny_data, tmp_path, mode):
    out = str(tmp_path / "run")
    train = _run(
        "train.py",
        _common(tiny_data, out, mode, extra=("--val_while_train", "True", "--ema", "True", "--ema_decay", "0.9")),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    files = sorted(os.listdir(out))
    for expected in (
        "config.yaml",
        "metrics.csv",
        "metrics.jsonl",
        "metrics.png",
        "train.log",
        "mnasnet_050-2_12.ckpt",
        "mnasnet_050_best.ckpt",
    ):
        assert expected in files
    assert not any(f.startswith(".tmp") for f in files)
    logged = _last_val(out)
    assert logged["epoch"] == 2 and logged["val_samples"] == 21
    tensors, meta = read_checkpoint(os.path.join(out, "mnasnet_050-2_12.ckpt"))
    assert meta["epoch"] == 2 and meta["global_step"] == 12 and meta["class_names"] == ["blocks", "circles", "stripes"]
    assert any(k.startswith("optimizer.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    result = tmp_path / "result.json"
    val = _run(
        "validate.py",
        [
            "--dataset",
            "tiny",
            "--data_dir",
            tiny_data,
            "--model",
            "mnasnet_050",
            "--mode",
            str(mode),
            "--ckpt_path",
            os.path.join(out, "mnasnet_050-2_12.ckpt"),
            "--ema",
            "True",
            "--batch_size",
            "5",
            "--progress",
            "False",
            "--result_file",
            str(result),
        ],
    )
    assert val.returncode == 0, val.stderr[-3000:]
    printed = json.loads(val.stdout.strip().splitlines()[-1])
    assert printed == json.loads(result.read_text())
    # validate.py took image size, crop and classes from the checkpoint and reproduces train.py's numbers exactly
    assert printed["num_samples"] == 21
    assert printed["top1"] == pytest.approx(logged["val_top1"], abs=1e-9)
    assert printed["top5"] == pytest.approx(logged["val_top5"], abs=1e-9)
    assert printed["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)


def test_killed_run_resumes_to_identical_weights(tiny_data, tmp_path):
    """Kill -9 during epoch 2, resume from the epoch-1 checkpoint: the final weights equal an uninterrupted run."""
    full = str(tmp_path / "full")
    assert _run("train.py", _common(tiny_data, full, 0, epochs=3)).returncode == 0
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), *_common(tiny_data, killed, 0, epochs=3)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = os.path.join(killed, "mnasnet_050-1_6.ckpt")
    deadline = time.time() + 300
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first) and not os.path.exists(os.path.join(killed, "mnasnet_050-3_18.ckpt"))
    resumed = _run(
        "train.py", _common(tiny_data, killed, 0, epochs=3, extra=("--ckpt_path", first, "--resume", "True"))
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, meta_a = read_checkpoint(os.path.join(full, "mnasnet_050-3_18.ckpt"))
    b, meta_b = read_checkpoint(os.path.join(killed, "mnasnet_050-3_18.ckpt"))
    assert meta_a["global_step"] == meta_b["global_step"] == 18
    assert set(a) == set(b)
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst == 0.0, f"resumed weights differ by {worst}"
    rows = [json.loads(line) for line in open(os.path.join(killed, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    out = str(tmp_path / "nan")
    # epoch 1 trains normally; from epoch 2 the learning rate is multiplied by 1e30
    args = _common(
        tiny_data,
        out,
        0,
        epochs=3,
        extra=(
            "--scheduler",
            "multi_step_decay",
            "--multi_step_decay_milestones",
            "1",
            "--decay_rate",
            "1e30",
            "--opt",
            "sgd",
            "--lr",
            "0.1",
        ),
    )
    run = _run("train.py", args)
    text = run.stdout + run.stderr
    assert run.returncode == 1
    match = re.search(r"loss is (nan|inf|-inf) at epoch (\d+), step (\d+)", text)
    assert match, text[-2000:]
    assert "checkpoints are untouched" in text
    bad_epoch = int(match.group(2))
    assert bad_epoch >= 2
    for epoch in range(1, bad_epoch):  # every earlier checkpoint is complete and finite
        tensors, meta = read_checkpoint(os.path.join(out, f"mnasnet_050-{epoch}_{6 * epoch}.ckpt"))
        assert meta["epoch"] == epoch
    assert not os.path.exists(os.path.join(out, f"mnasnet_050-{bad_epoch}_{6 * bad_epoch}.ckpt"))
    first, _ = read_checkpoint(os.path.join(out, "mnasnet_050-1_6.ckpt"))
    assert all(np.isfinite(v).all() for v in first.values() if v.dtype.kind == "f")


def test_bad_command_lines_fail_with_a_message(tiny_data, tmp_path):
    run = _run("train.py", _common(tiny_data, str(tmp_path / "x"), 0, extra=("--opt", "adamx")))
    assert run.returncode != 0 and "unknown optimizer 'adamx'" in run.stderr
    run = _run(
        "train.py", _common(tiny_data, str(tmp_path / "x"), 0, extra=("--ckpt_path", str(tmp_path / "none.ckpt")))
    )
    assert run.returncode != 0 and "none.ckpt' does not exist" in run.stderr
    run = _run(
        "validate.py",
        [
            "--dataset",
            "tiny",
            "--data_dir",
            tiny_data,
            "--model",
            "mnasnet_100",
            "--ckpt_path",
            "x.ckpt",
            "--pretrained",
            "True",
        ],
    )
    assert run.returncode != 0 and "either --pretrained or --ckpt_path" in run.stderr
    run = _run(
        "train.py",
        [
            "-c",
            os.path.join(REPO, "configs", "mnasnet", "mnasnet0.75_gpu.yaml"),
            "--device_target",
            "CPU",
            "--data_dir",
            tiny_data,
        ],
    )
    assert run.returncode != 0 and "needs a launcher" in run.stderr
