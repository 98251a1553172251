"""Output-folder safety: atomic writes, run locks, refusing non-finite or unwritable checkpoints."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindcv.io.atomic import AtomicWriteError, atomic_write, remove_stale_temporaries
from mindcv.io.finite import find_non_finite
from mindcv.models.checkpoint import read_checkpoint
from mindcv.utils.checkpoint_manager import CheckpointManager, CheckpointSaveError
from mindcv.utils.metrics_log import MetricsLog
from mindcv.utils.run_dir import RunDirError, claim_run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors(value=1.0):
    return {"conv_stem.weight": np.full((4, 3, 3, 3), value, np.float32), "step": np.array([3], np.int32)}


def test_find_non_finite_names_each_tensor_and_ignores_integers():
    tensors = {
        "a": np.ones(3, np.float32),
        "b": np.array([1.0, np.nan, np.inf], np.float32),
        "c": np.array([7], np.int64),
        "d": np.array([-np.inf], np.float16),
    }
    assert find_non_finite(tensors) == [("b", 2), ("d", 1)]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table.csv"]  # no temporary file left


def test_stale_temporaries_of_ours_and_mindspore_are_removed_and_nothing_else(tmp_path):
    ours = [".tmp-ab3_x9z0.ckpt", ".tmp-ab3_x9z0.tmp", ".tmp-q1w2e3r4.csv", ".tmp-zzzzzzzz"]
    users = ["keep.ckpt", ".hidden", ".tmp-mynotes", ".tmp-notes.txt", ".tmp-ABCDEFGH.csv"]
    for name in ours + users:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(users)


def test_manager_never_writes_rotates_in_or_promotes_non_finite_weights(tmp_path):
    manager = CheckpointManager("latest_k", 2, str(tmp_path), "m")
    assert manager.save(_tensors(), 1, 10, {"epoch": 1}, metric=50.0)
    poisoned = _tensors()
    poisoned["conv_stem.weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(CheckpointSaveError, match=r"non-finite weights in conv_stem.weight \(1 values\)"):
        manager.save(poisoned, 2, 20, {"epoch": 2}, metric=90.0)
    assert sorted(os.listdir(tmp_path)) == ["m-1_10.ckpt", "m_best.ckpt"]
    assert manager.best_metric == 50.0
    assert read_checkpoint(str(tmp_path / "m_best.ckpt"))[1]["epoch"] == 1
    with pytest.raises(CheckpointSaveError):
        manager.save_best(poisoned, {"epoch": 2}, 99.0)
    assert manager.best_metric == 50.0


def test_a_full_disk_is_one_line_naming_the_file_and_free_space_and_leaves_no_temporary(tmp_path, monkeypatch):
    import mindspore as ms

    manager = CheckpointManager("latest_k", 2, str(tmp_path), "m")
    manager.save(_tensors(), 1, 10, {"epoch": 1}, metric=50.0)
    real_save = ms.save_checkpoint

    def full_disk(items, path, **kwargs):
        with open(os.path.splitext(path)[0] + ".tmp", "wb") as f:  # MindSpore writes <name>.tmp, then renames
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointSaveError) as info:
        manager.save(_tensors(2.0), 2, 20, {"epoch": 2}, metric=60.0)
    message = str(info.value)
    assert "m-2_20.ckpt" in message and "No space left on device" in message and "MiB free" in message
    assert "\n" not in message
    monkeypatch.setattr(ms, "save_checkpoint", real_save)
    assert sorted(os.listdir(tmp_path)) == ["m-1_10.ckpt", "m_best.ckpt"]  # nothing partial, nothing lost
    assert manager.best_metric == 50.0 and [os.path.basename(p) for p, _ in manager.saved] == ["m-1_10.ckpt"]


def test_metrics_rows_survive_a_crash_during_the_rewrite(tmp_path, monkeypatch):
    log = MetricsLog(str(tmp_path))
    log.append({"epoch": 1, "train_loss": 1.0})
    import mindcv.utils.metrics_log as metrics_log

    def crash(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics_log.csv, "DictWriter", crash)
    with pytest.raises(AtomicWriteError, match=r"cannot write '.*metrics.csv': No space left on device \(.* free"):
        log.append({"epoch": 2, "train_loss": 0.5})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,train_loss", "1,1.0"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_a_second_run_in_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    lock = claim_run_dir(str(tmp_path), resume_from=None, overwrite=False)
    try:
        # another process (flock is per open file, so a child process is a real second run)
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from mindcv.utils.run_dir import claim_run_dir\n"
                f"claim_run_dir({str(tmp_path)!r}, resume_from=None, overwrite=True)",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert probe.returncode != 0
        assert "is in use by another run (pid %d on" % os.getpid() in probe.stderr
    finally:
        lock.release()
    claim_run_dir(str(tmp_path), resume_from=None, overwrite=False).release()  # free again


def test_a_new_run_over_a_finished_one_needs_overwrite_which_deletes_only_the_runs_files(tmp_path):
    import train

    run_files = ["m-1_5.ckpt", "m-2_10.ckpt", "m_best.ckpt", "metrics.csv", "metrics.jsonl", "config.yaml"]
    users = ["other-3_9.ckpt", "m-finetuned_v2.ckpt", "metrics.xlsx", "unreadable_mine.tsv", "notes.txt"]
    for name in run_files + users + [".tmp-deadbeef.ckpt"]:
        (tmp_path / name).write_text("x")
    with pytest.raises(RunDirError, match="holds another run .*--overwrite True"):
        claim_run_dir(str(tmp_path), resume_from=None, overwrite=False)
    assert (tmp_path / "m_best.ckpt").exists()  # refused: nothing touched
    # resuming another folder's checkpoint into this run's folder would rotate its checkpoints away
    elsewhere = tmp_path.parent / "elsewhere.ckpt"
    with pytest.raises(RunDirError, match="resuming another folder's checkpoint starts a new run here"):
        claim_run_dir(str(tmp_path), resume_from=str(elsewhere), overwrite=False)
    # resuming this folder's own checkpoint is what its files are for
    claim_run_dir(str(tmp_path), resume_from=str(tmp_path / "m-2_10.ckpt"), overwrite=False).release()
    assert not (tmp_path / ".tmp-deadbeef.ckpt").exists()  # a killed run's temporary is cleaned on resume
    claim_run_dir(str(tmp_path), resume_from=None, overwrite=True, ours=train.run_file_names("m")).release()
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == sorted(users)


def test_an_unusable_output_folder_is_one_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirError, match="'.*afile' exists but is not a folder"):
        claim_run_dir(str(tmp_path / "afile"), resume_from=None, overwrite=False)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):  # root ignores permission bits: use a file where a folder is needed
            target = str(tmp_path / "afile" / "sub")
        else:
            target = str(read_only / "run")
        with pytest.raises(RunDirError, match="cannot use output folder|not a folder"):
            claim_run_dir(target, resume_from=None, overwrite=False)
    finally:
        read_only.chmod(0o700)


def test_metrics_log_keeps_rows_as_json(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.append({"epoch": 1, "val_top1": 12.5})
    assert [json.loads(line) for line in open(tmp_path / "metrics.jsonl")] == [{"epoch": 1, "val_top1": 12.5}]


def test_resume_refuses_a_checkpoint_with_non_finite_optimizer_state(tmp_path):
    import train
    from mindcv.models.checkpoint import NonFiniteWeightsError, save_checkpoint

    path = str(tmp_path / "m-1_6.ckpt")
    tensors = _tensors()
    tensors["optimizer.moment1.conv_stem.weight"] = np.full((4, 3, 3, 3), np.inf, np.float32)
    save_checkpoint(tensors, path, {"epoch": 1, "global_step": 6})
    with pytest.raises(NonFiniteWeightsError, match=r"optimizer\.moment1\.conv_stem\.weight \(108 non-finite"):
        train.resume(path, model=None, optimizer=None, ema=None, step=None)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"optimizer.moment1.conv_stem.weight": np.full((4, 3, 3, 3), 1e300)}, "non-finite"),  # inf as float32
        ({"meta": {"epoch": "x", "global_step": 6}}, "invalid training metadata"),
        ({"meta": {"epoch": 1}}, "invalid training metadata"),
        ({"meta": {"epoch": -5, "global_step": 6}}, "invalid training metadata"),
        ({"meta": {"epoch": 1, "global_step": 6, "loss_scale": float("nan")}}, "invalid training metadata"),
        ({"meta": {"epoch": 1, "global_step": 6, "loss_scale": -1.0}}, "invalid training metadata"),
    ],
)
def test_resume_refuses_checkpoints_it_cannot_continue_exactly(tmp_path, change, problem):
    import train
    from mindcv.models.checkpoint import CheckpointError, save_checkpoint

    path = str(tmp_path / "m-1_6.ckpt")
    tensors = {**_tensors(), "optimizer.moment1.conv_stem.weight": np.zeros((4, 3, 3, 3), np.float32)}
    tensors.update({k: v for k, v in change.items() if k != "meta"})
    save_checkpoint(tensors, path, change.get("meta", {"epoch": 1, "global_step": 6}))
    with pytest.raises(CheckpointError, match=problem):
        train.resume(path, model=None, optimizer=None, ema=None, step=None)


def test_optimizer_and_ema_state_of_the_wrong_shape_is_refused_before_anything_changes():
    """It used to reach MindSpore's graph compiler and end in its traceback."""
    from mindcv.models import create_model
    from mindcv.models.checkpoint import CheckpointError
    from mindcv.optim import create_optimizer
    from mindcv.optim.optim_factory import load_optimizer_state
    from mindcv.utils.ema import EMA

    model = create_model("mnasnet_050", num_classes=3)
    optimizer = create_optimizer(model, "adamw", lr=0.01)
    state = {f"optimizer.{p.name}": p.asnumpy() for p in optimizer.get_parameters()}
    moment = "optimizer.adam_m.features.0.weight"  # mnasnet_050's stem, named as upstream's
    state[moment] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError, match=r"optimizer state of the wrong shape .*features.0.weight \(5,\)"):
        load_optimizer_state(optimizer, state, "x.ckpt")
    ema = EMA(model, 0.9)
    ema_state = ema.state_dict()
    before = ema_state["ema.features.0.weight"].copy()
    ema_state["ema.features.1.gamma"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"EMA state 'ema.features.1.gamma' has shape \(5,\)"):
        ema.load_state_dict({**ema_state, "ema.features.0.weight": before + 1})
    assert np.array_equal(ema.state_dict()["ema.features.0.weight"], before)  # nothing was changed
