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
from conftest import run_main, train_argv

from mindcv.models.checkpoint import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _common(data, out, mode, epochs=2, extra=()):
    return train_argv(data, out, *extra, mode=mode, epoch_size=epochs)


def _run(script, args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _last_val(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return rows[-1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [0, 1], ids=["graph", "pynative"])
def test_train_then_validate_agree(tiny_data, tmp_path, mode):
    out = str(tmp_path / "run")
    train = run_main(
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
    val = run_main(
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    match = re.search(r"(loss is (?:nan|inf|-inf)|gradients are not finite) at epoch (\d+), step (\d+)", text)
    assert match, text[-2000:]
    assert "Stopping without writing a checkpoint (last good: " in text
    bad_epoch = int(match.group(2))
    assert bad_epoch >= 2
    for epoch in range(1, bad_epoch):  # every earlier checkpoint is complete and finite
        tensors, meta = read_checkpoint(os.path.join(out, f"mnasnet_050-{epoch}_{6 * epoch}.ckpt"))
        assert meta["epoch"] == epoch
    assert not os.path.exists(os.path.join(out, f"mnasnet_050-{bad_epoch}_{6 * bad_epoch}.ckpt"))
    first, _ = read_checkpoint(os.path.join(out, "mnasnet_050-1_6.ckpt"))
    assert all(np.isfinite(v).all() for v in first.values() if v.dtype.kind == "f")


@pytest.mark.slow
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


def _all_checkpoints_finite(folder):
    names = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))
    for name in names:
        tensors, _ = read_checkpoint(os.path.join(folder, name))
        bad = [k for k, v in tensors.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        assert not bad, f"{name} holds non-finite {bad[:3]}"
    return names


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_parameter_and_never_saves_nan(tiny_data, tmp_path):
    """lr 1e8: the loss may stay finite (the CPU ReLU maps NaN to 0), the weights do not."""
    out = str(tmp_path / "diverge")
    run = _run(
        "train.py",
        _common(tiny_data, out, 0, epochs=2, extra=("--opt", "sgd", "--lr", "1e8", "--val_while_train", "True")),
    )
    text = run.stdout + run.stderr
    assert run.returncode == 1, text[-2000:]
    assert "training diverged" in text
    assert re.search(r"first non-finite parameter: [\w.]+ \(\d+ values\)", text), text[-2000:]
    assert re.search(r"(loss is (nan|inf)|gradients are not finite|weights are not finite) ", text)
    _all_checkpoints_finite(out)


@pytest.mark.slow
def test_fp16_amp_on_the_cpu_trains_in_fp32_and_says_so(tiny_data, tmp_path):
    out = str(tmp_path / "amp")
    run = run_main(
        "train.py",
        _common(
            tiny_data, out, 0, epochs=1, extra=("--amp_level", "O3", "--loss_scale_type", "dynamic", "--lr", "0.003")
        ),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "amp_level O3 requested on the CPU: training in fp32 (O0) instead" in run.stdout
    assert _all_checkpoints_finite(out) == ["mnasnet_050-1_6.ckpt"]


@pytest.mark.slow
def test_a_full_disk_while_saving_ends_the_run_with_one_line_and_keeps_the_metrics_row(tiny_data, tmp_path):
    """RLIMIT_FSIZE makes every write past 4 MB fail (EFBIG) like a full disk: the checkpoint fails, small files not."""
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    out = str(tmp_path / "full")
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), *_common(tiny_data, out, 0, epochs=2)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        preexec_fn=limit_file_size,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"train\.py: cannot write '.*mnasnet_050-1_6\.ckpt': File too large \([\d.]+ MiB free on .*\)", last
    ), last
    assert "Traceback" not in run.stderr
    assert [n for n in os.listdir(out) if n.endswith(".ckpt") or n.startswith(".tmp")] == []
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1]


@pytest.mark.slow
def test_one_run_per_output_folder(tiny_data, tmp_path):
    from mindcv.utils.run_dir import claim_run_dir

    out = tmp_path / "busy"
    lock = claim_run_dir(str(out), resume_from=None, overwrite=False)
    try:
        run = _run("train.py", _common(tiny_data, str(out), 0, epochs=1))
    finally:
        lock.release()
    assert run.returncode == 2 and f"is in use by another run (pid {os.getpid()} on" in run.stderr
    (out / "mnasnet_050-1_6.ckpt").write_bytes(b"an earlier run's checkpoint")
    (out / "metrics.csv").write_text("epoch\n1\n")
    run = _run("train.py", _common(tiny_data, str(out), 0, epochs=1))
    assert run.returncode == 2 and "holds another run" in run.stderr and "--overwrite True" in run.stderr
    assert (out / "mnasnet_050-1_6.ckpt").read_bytes() == b"an earlier run's checkpoint"
    assert (out / "metrics.csv").read_text() == "epoch\n1\n"


def _validate_args(data, *extra):
    return ["--dataset", "tiny", "--data_dir", data, "--model", "mnasnet_050", "--progress", "False", *extra]


@pytest.mark.slow
def test_validate_refuses_random_weights_and_a_random_head(tiny_data, tmp_path):
    run = _run("validate.py", _validate_args(tiny_data))
    assert run.returncode == 2 and "no weights to evaluate" in run.stderr and "--random_weights" in run.stderr
    from mindcv.models import create_model
    from mindcv.models.checkpoint import save_checkpoint

    ckpt = str(tmp_path / "three_classes.ckpt")
    save_checkpoint(create_model("mnasnet_050", num_classes=3), ckpt)
    run = _run("validate.py", _validate_args(tiny_data, "--ckpt_path", ckpt, "--num_classes", "1000"))
    assert run.returncode == 2
    assert "has a 3-class classifier but 1000 classes were asked for" in run.stderr
    result = tmp_path / "random.json"
    run = _run("validate.py", _validate_args(tiny_data, "--random_weights", "True", "--result_file", str(result)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(result.read_text())["num_samples"] == 21


# quick loop: train.py as a user runs it, up to its data checks (3 s); the runs above train for real
def test_a_validation_split_that_is_the_training_split_is_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(os.path.join(tiny_data, "train"))
    (data / "val").symlink_to("train")
    args = _common(str(data), str(tmp_path / "out"), 0, epochs=1, extra=("--val_while_train", "True"))
    run = _run("train.py", args)
    assert run.returncode == 2 and "are the same folder" in run.stderr and "Traceback" not in run.stderr
