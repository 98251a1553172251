"""Adversarial tests of the deployment feature: load_model, export_checked, the cached onnxruntime backend,
INT8 quantization and the export/infer CLIs, each against the input chosen to break one of its promises.

Every test asserts the CORRECT behaviour: a failing test documents a defect (its docstring says which).
"""

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import calibrate_bn
from PIL import Image

import mindspore as ms
from mindspore import nn

from export import main as export_main
from infer import main as infer_main
from mindcv.deploy import ExportError, OnnxEvalStep, OnnxRuntimeModel, cached_onnx_export, export_checked
from mindcv.deploy.quantize import quantize_int8
from mindcv.engine import EvalStep
from mindcv.errors import InvalidArgumentError, MindcvError
from mindcv.io.atomic import TMP_PREFIX
from mindcv.models import CheckpointError, create_model, load_model, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
CLASSES = ["a", "b", "c", "d"]
# a small searched architecture (as in test_deploy.py) with a non-default stem and head
ARCH = (
    "ds_r1_k3_s1_c16_noskip|ir_r2_k5_s2_e3_c24|ir_r2_k3_s2_e6_c40_se0.25|ir_r1_k5_s2_e3_c80|"
    "ir_r1_k3_s1_e6_c96|ir_r1_k5_s2_e6_c160|ir_r1_k3_s1_e6_c320"
)
BASE_META = {"class_names": CLASSES, "eval_transform": {"image_resize": SIZE, "crop_pct": 1.0}}


def _searched_model(seed):
    model = create_model("mnasnet_arch", arch=ARCH, width_mult=0.5, stem_size=24, num_features=640, num_classes=4)
    return calibrate_bn(model, seed)


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _temporaries(folder):
    return [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]


def _cli(main, argv, capsys):
    """(exit code, stderr lines without MindSpore's log lines); an escaped exception is returned, not raised."""
    try:
        code = main(argv)
    except BaseException as err:  # noqa: BLE001  (SystemExit from argparse included)
        code = err
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "WARNING" not in line]
    return code, err_lines


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder of this module's shared files, with MINDCV_HOME inside it while module fixtures run."""
    root = tmp_path_factory.mktemp("deploy_attack")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINDCV_HOME", str(root / "home"))
        yield root


@pytest.fixture(scope="module")
def model(workdir):
    return _searched_model(seed=3)


@pytest.fixture(scope="module")
def ckpt(workdir, model):
    """A train.py-like checkpoint of a searched architecture: 4 classes a..d, 32 px evaluation transform."""
    return save_checkpoint(model, str(workdir / "ckpt" / "searched.ckpt"), BASE_META)


@pytest.fixture(scope="module")
def crafted(workdir, model):
    """``crafted(name, **meta)``: the same weights with crafted metadata (merged into BASE_META)."""

    def make(name, **meta):
        return save_checkpoint(model, str(workdir / "crafted" / f"{name}.ckpt"), {**BASE_META, **meta})

    return make


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_model(None, ckpt)


@pytest.fixture(scope="module")
def fp32_onnx(workdir, loaded):
    return export_checked(loaded, str(workdir / "fp32" / "model"), "ONNX").path


@pytest.fixture(scope="module")
def image_folder(workdir):
    """<class>/<images>: classes a..d (the model's), 3 PNGs each of 32-40 px."""
    root = workdir / "images"
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            size = SIZE + 4 * i
            image = np.full((size, size, 3), 50 * c, np.uint8) + rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return str(root)


def _private_ckpt(tmp_path, ckpt):
    """A copy of the checkpoint in a folder of its own (its ONNX cache goes there)."""
    path = tmp_path / "own" / "model.ckpt"
    path.parent.mkdir()
    shutil.copy(ckpt, path)
    return str(path)


# ====================================================================================== defects
# -------------------------------------------------------------------------- export file permissions
_UNPRIVILEGED = textwrap.dedent("""
    import contextlib, io, json, os, sys
    sys.path.insert(0, os.getcwd())
    import mindspore as ms
    ms.set_device("CPU")
    from export import main as export_main
    from mindcv.deploy import cached_onnx_export
    from mindcv.models import load_model

    ckpt, out, readonly, result = sys.argv[1:5]

    def cli(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = export_main(argv)
            except BaseException as e:  # noqa
                code = repr(e)
        return [code, [l for l in err.getvalue().splitlines() if l.strip() and "WARNING" not in l]]

    res = {"dynamic_onnx": cli(["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", os.path.join(out, "dyn")])}
    ro_name = os.path.join(readonly, "x")
    res["readonly_mindir"] = cli(["--ckpt_path", ckpt, "--format", "MINDIR", "--file_name", ro_name])
    try:
        res["cached"] = cached_onnx_export(load_model(None, ckpt))
    except BaseException as e:  # noqa
        res["cached"] = "ERROR " + repr(e)
    with open(result, "w") as f:
        json.dump(res, f)
    """)


@pytest.fixture(scope="module")
def unprivileged_run(workdir, ckpt):
    """export.py and cached_onnx_export run as a user without root's file-permission override.

    Root (as in this container) writes even read-only files; every real user does not. ``setpriv`` drops
    CAP_DAC_OVERRIDE so file modes apply again. The checkpoint sits in a read-only folder.
    """
    assert os.geteuid() != 0 or shutil.which("setpriv"), "root without setpriv (util-linux): cannot drop privileges"
    root = workdir / "unprivileged"
    readonly = root / "readonly"
    readonly.mkdir(parents=True)
    (root / "out").mkdir()
    shutil.copy(ckpt, readonly / "model.ckpt")
    script = root / "run.py"
    script.write_text(_UNPRIVILEGED)
    os.chmod(readonly, 0o555)
    result = root / "result.json"
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    args = [str(readonly / "model.ckpt"), str(root / "out"), str(readonly), str(result)]
    env = dict(os.environ, MINDCV_HOME=str(root / "home"))
    proc = subprocess.run(
        prefix + [sys.executable, str(script)] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    os.chmod(readonly, 0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text()), root


@pytest.mark.slow
def test_unprivileged_user_can_export_onnx_with_a_dynamic_batch(unprivileged_run):
    """DEFECT: for any non-root user the default ONNX export (dynamic batch) fails with 'Permission denied'.

    MindSpore's export leaves the temporary file mode 0400 (mindspore/train/serialization.py _save_onnx:
    chmod S_IRUSR); mindcv/deploy/export.py make_onnx_batch_dynamic then onnx.save()s over that read-only file.
    """
    res, root = unprivileged_run
    code, err = res["dynamic_onnx"]
    assert code == 0, err
    assert os.path.isfile(root / "out" / "dyn.onnx")
    assert not _temporaries(root / "out")


@pytest.mark.slow
def test_unprivileged_onnx_cache_falls_back_from_a_readonly_checkpoint_folder(unprivileged_run):
    """DEFECT (same cause): with the checkpoint in a read-only folder the cache must fall back to
    $MINDCV_HOME/onnx; instead both locations fail ('cannot write the ONNX graph anywhere')."""
    res, root = unprivileged_run
    assert not res["cached"].startswith("ERROR"), res["cached"]
    assert res["cached"].startswith(str(root / "home")) and os.path.isfile(res["cached"] + ".json")


@pytest.mark.slow
def test_unprivileged_export_into_a_readonly_folder_is_a_one_line_user_error(unprivileged_run):
    """HOLDS: --file_name in a read-only folder: exit 2, one line, no file."""
    res, root = unprivileged_run
    code, err = res["readonly_mindir"]
    assert code == 2 and len(err) == 1 and "Permission denied" in err[0], (code, err)
    assert os.listdir(root / "readonly") == ["model.ckpt"]


@pytest.mark.parametrize("fmt", ["ONNX", "MINDIR"])
@pytest.mark.slow
def test_published_export_is_readable_as_the_umask_allows(tmp_path, loaded, fmt):
    """DEFECT: the published file keeps MindSpore's mode 0400 (owner read-only): another account (a serving
    process) cannot read it, unlike every other file this package writes (atomic_write and save_checkpoint
    chmod to 0666 & ~umask). Cause: mindcv/deploy/export.py export_checked os.replace()s MindSpore's file as is."""
    path = export_checked(loaded, str(tmp_path / "m"), fmt).path
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, oct(os.stat(path).st_mode)


# -------------------------------------------------------------------------- export_checked
def test_export_checked_never_publishes_an_unchecked_graph(tmp_path, monkeypatch, loaded):
    """DEFECT: check_batches=() runs no check at all (worst_relative of no batches is 0) and publishes a graph
    that is 50% off. Cause: mindcv/deploy/export.py export_checked, `for batch in check_batches` / worst_relative
    default 0. An empty (or non-positive) check list must be refused, nothing published."""
    import mindcv.deploy.export as export_module

    real = export_module.run_exported
    monkeypatch.setattr(export_module, "run_exported", lambda path, x: real(path, x) * 1.5)
    with pytest.raises((ExportError, InvalidArgumentError)):
        export_checked(loaded, str(tmp_path / "unchecked"), "ONNX", check_batches=())
    assert not (tmp_path / "unchecked.onnx").exists()
    with pytest.raises(InvalidArgumentError):  # today: a bare numpy ValueError ("zero-size array")
        export_checked(loaded, str(tmp_path / "zero"), "ONNX", check_batches=(0,))
    assert sorted(os.listdir(tmp_path)) == []


def _full_disk_at(monkeypatch, suffix):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.slow
def test_export_cli_on_a_full_disk_keeps_the_old_file_and_fails_in_one_line(tmp_path, monkeypatch, capsys, ckpt):
    """DEFECT: a full disk when publishing (os.replace -> ENOSPC) escapes export.py as a raw OSError traceback.
    The old file and the folder are left clean (that part holds), but mindcv/utils/cli.py promises exit 1 with
    one line for a full disk (RunFailedError/AtomicWriteError): export_checked (mindcv/deploy/export.py) does not
    turn write errors into AtomicWriteError as atomic_write does."""
    (tmp_path / "keep.onnx").write_bytes(b"the user's earlier export")
    _full_disk_at(monkeypatch, "keep.onnx")
    code, err = _cli(
        export_main, ["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "keep")], capsys
    )
    assert (tmp_path / "keep.onnx").read_bytes() == b"the user's earlier export"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx"]
    assert code == 1 and len(err) == 1 and "keep.onnx" in err[0], (code, err)


def test_export_cli_full_disk_while_writing_leaves_nothing_behind(tmp_path, monkeypatch, capsys, ckpt):
    """DEFECT (same cause): the disk fills while the graph is being written (half a file on disk): no half file,
    no temporary (holds), but exit 1 with one line, not a traceback (fails)."""
    import mindcv.deploy.export as export_module

    def half_written(model, file_name, fmt, *args, **kwargs):
        with open(file_name + ".onnx", "wb") as f:
            f.write(b"\x08\x07" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", file_name + ".onnx")

    monkeypatch.setattr(export_module, "export_model", half_written)
    code, err = _cli(export_main, ["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "m")], capsys)
    assert os.listdir(tmp_path) == []
    assert code == 1 and len(err) == 1, (code, err)


# -------------------------------------------------------------------------- the ONNX cache
@pytest.mark.slow
def test_cached_graph_is_not_trusted_on_the_key_alone(tmp_path, ckpt):
    """DEFECT (trust model): the cached .onnx replaced by a valid ONNX of ANOTHER model (same interface) plus a
    record whose sha256 is updated to match is used as is: predictions then come from other weights (relative
    difference ~2). _valid_record (mindcv/deploy/onnxruntime_backend.py) trusts a record that sits beside the file
    it vouches for, so it only guards against accidental damage. A cache hit should be re-verified against the
    in-framework model (one small batch), as export_checked does before publishing."""
    own = _private_ckpt(tmp_path, ckpt)
    loaded = load_model(None, own)
    path = cached_onnx_export(loaded)
    other = load_model(
        "mnasnet_arch", save_checkpoint(_searched_model(seed=11), str(tmp_path / "other.ckpt"), BASE_META)
    )
    shutil.copy(export_checked(other, str(tmp_path / "other"), "ONNX").path, path)
    with open(path + ".json") as f:
        record = json.load(f)
    record["onnx_sha256"] = _sha(path)
    with open(path + ".json", "w") as f:
        json.dump(record, f)
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    served = OnnxRuntimeModel(cached_onnx_export(loaded))(x)
    assert _relative(served, loaded.model(ms.Tensor(x)).asnumpy()) < 1e-4


@pytest.mark.slow
def test_cached_graph_is_not_reused_under_a_stricter_tolerance(tmp_path, ckpt):
    """DEFECT: the tolerance is not part of the cache: a graph checked at 1e-4 (recorded difference ~6e-7) is
    returned for tolerance=0.0 without any check (cached_onnx_export looks up by key only; the record's
    max_relative_difference is never compared). A stricter tolerance must re-check (here: raise ExportError)."""
    loaded = load_model(None, _private_ckpt(tmp_path, ckpt))
    path = cached_onnx_export(loaded, tolerance=1e-4)
    with open(path + ".json") as f:
        recorded = json.load(f)["max_relative_difference"]
    assert recorded > 0
    with pytest.raises(ExportError):
        cached_onnx_export(loaded, tolerance=recorded / 10)


# -------------------------------------------------------------------------- export.py arguments
def test_export_cli_report_without_val_data_is_refused(tmp_path, capsys, ckpt, image_folder):
    """DEFECT: --report without --val_data exits 0 and writes no report (export.py writes it only inside
    `if args.val_data:`; _check_arguments never ties --report to --val_data). Must be exit 2, nothing written."""
    report = tmp_path / "report.json"
    argv = ["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "q"), "--quantize", "int8"]
    argv += ["--calib_data", image_folder, "--calib_images", "2", "--report", str(report)]
    code, err = _cli(export_main, argv, capsys)
    assert code == 2 and len(err) == 1 and "--report" in err[0], (code, err)
    assert not report.exists()


def test_export_cli_val_data_of_other_classes_is_refused_before_writing(tmp_path, capsys, ckpt, image_folder):
    """DEFECT (late validation): --val_data whose class folders are not the model's is reported (exit 2) only
    after the fp32 and INT8 files were written, so a failed command leaves q.onnx and q.int8.onnx behind.
    The class folders are known before exporting; the same holds for --image_size differing from the
    transform's size with --quantize (checked in export.py only after export_checked)."""
    val = tmp_path / "val"
    for name in ("a", "zz"):
        (val / name).mkdir(parents=True)
        shutil.copy(os.path.join(image_folder, "a", "0.png"), val / name / "0.png")
    argv = ["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "q"), "--quantize", "int8"]
    argv += ["--calib_data", image_folder, "--calib_images", "2", "--val_data", str(val), "--speed_rounds", "1"]
    code, err = _cli(export_main, argv, capsys)
    assert code == 2 and len(err) == 1 and "zz" in err[0], (code, err)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".onnx")]


# -------------------------------------------------------------------------- crafted checkpoint metadata
def test_load_model_refuses_an_absurd_recorded_image_size(crafted, capsys, image_folder):
    """DEFECT: eval_transform.image_resize = 10**9 (or resize_size) is accepted (checkpoint.py
    _EVAL_TRANSFORM_CHECKS has no upper bound): load_model reports image_size 1e9, export.py would trace a
    1e9 x 1e9 graph, and infer.py dies with a MindSpore ValueError traceback (exit 1)."""
    path = crafted("huge", eval_transform={"image_resize": 10**9})
    with pytest.raises(CheckpointError):
        load_model(None, path)
    with pytest.raises(CheckpointError):
        load_model(None, crafted("huge_resize", eval_transform={"image_resize": SIZE, "resize_size": 10**9}))
    code, err = _cli(
        infer_main, [os.path.join(image_folder, "a"), "--ckpt_path", path, "--output", path + ".json"], capsys
    )
    assert code == 2 and len(err) == 1, (code, err[-2:])


@pytest.mark.parametrize(
    "transform",
    [
        {"image_resize": SIZE, "mean": [0.5], "std": [0.5, 0.5]},
        {"image_resize": SIZE, "interpolation": "nonsense"},
    ],
    ids=["mean_std_lengths", "interpolation"],
)
def test_recorded_transform_that_cannot_be_built_is_a_checkpoint_error(crafted, capsys, image_folder, transform):
    """DEFECT: a recorded eval_transform whose mean/std lengths differ or whose interpolation is unknown passes
    the metadata check (checkpoint.py _EVAL_TRANSFORM_CHECKS checks types only), and infer.py then dies in
    create_transforms with a ValueError traceback (exit 1). Must be a CheckpointError / exit 2, one line."""
    path = crafted("transform", eval_transform=transform)
    with pytest.raises(CheckpointError):
        load_model(None, path)
    code, err = _cli(
        infer_main, [os.path.join(image_folder, "a"), "--ckpt_path", path, "--output", path + ".json"], capsys
    )
    assert code == 2 and len(err) == 1, (code, err[-2:])


def test_recorded_in_channels_contradicting_the_weights_is_refused(crafted):
    """DEFECT: a record of in_channels=1 over 3-channel stem weights is not refused: load_model builds a
    1-channel model and create_model's load_state_dict_into(adapt=True) silently sums the RGB kernels
    (mindcv/models/loading.py build_kwargs 'in_channels' from the record). The record contradicts the weights:
    CheckpointError, as for a contradicting architecture or width."""
    with pytest.raises(CheckpointError):
        load_model(None, crafted("gray", in_channels=1))


def test_recorded_duplicate_class_names_are_refused(crafted):
    """DEFECT: class_names ['a','a','b','c'] are accepted; class id -> name is then ambiguous, and export.py
    --val_data (compare.labelled_images: {name: i}) silently scores folder 'a' against class 1 instead of 0."""
    with pytest.raises(CheckpointError):
        load_model(None, crafted("dups", class_names=["a", "a", "b", "c"]))


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), 1e-300], ids=["nan", "inf", "zero_in_float32"])
def test_load_model_refuses_a_bn_eps_the_model_cannot_compute_with(ckpt, eps):
    """DEFECT: load_model(bn_eps=nan/inf/1e-300) builds the model (layers.make_norm_layer checks only `eps <= 0`,
    which NaN passes), giving NaN / wrong logits with no error; the recorded bn_eps is held to (0, 1) in float32
    (checkpoint.source_bn_eps), the argument is not."""
    with pytest.raises(InvalidArgumentError):
        load_model(None, ckpt, bn_eps=eps)


def test_recorded_model_name_with_a_tag_gives_advice_that_works(crafted):
    """DEFECT (minor): a record 'model': 'mnasnet_arch.foo' makes load_model(None) fail with 'pass --model
    mnasnet_arch.foo', and following that advice fails with the same message (loading.py compares the split
    name with the unsplit record). The record must be refused as invalid metadata (CheckpointError) or the advice
    must work."""
    path = crafted("tagged", model="mnasnet_arch.foo")
    for name in (None, "mnasnet_arch.foo"):
        with pytest.raises(MindcvError) as info:
            load_model(name, path)
        assert isinstance(info.value, CheckpointError), f"{type(info.value).__name__}: {info.value}"


# -------------------------------------------------------------------------- quantize_int8 arguments
@pytest.mark.parametrize("batch_size", [0, -1])
def test_quantize_refuses_a_batch_size_that_never_advances(tmp_path, fp32_onnx, batch_size):
    """DEFECT: batch_size <= 0 is not validated. With method='minmax' the calibration reader returns empty
    (or shrinking) slices and never reaches the end: quantize_int8 loops forever (the progress callback below
    aborts it after 50 calls). With 'percentile' the final run check runs on calibration[:0], an empty batch, so
    the 'finite logits' promise is checked on nothing. Must raise InvalidArgumentError."""
    calls = []

    def guard(done):
        calls.append(done)
        if len(calls) > 50:
            raise RuntimeError("the calibration reader never ends")

    calibration = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(MindcvError) as info:
        quantize_int8(
            fp32_onnx, str(tmp_path / "q.onnx"), calibration, method="minmax", batch_size=batch_size, progress=guard
        )
    assert isinstance(info.value, InvalidArgumentError), f"{type(info.value).__name__}: {info.value}"
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_refuses_calibration_that_overflows_float32(tmp_path, fp32_onnx):
    """DEFECT (minor): float64 calibration holding 1e300 passes the finiteness check, which runs BEFORE the
    cast to float32 (quantize.py: isfinite, then astype(float32) -> inf); the quantizer then fails with
    'AssertionError: scale issue' / 'range [-inf, inf] is not finite' instead of the clear InvalidArgumentError."""
    calibration = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE))
    calibration[0, 0, 0, 0] = 1e300
    with pytest.raises(MindcvError) as info:
        quantize_int8(fp32_onnx, str(tmp_path / "q.onnx"), calibration, method="minmax")
    assert isinstance(info.value, InvalidArgumentError), f"{type(info.value).__name__}: {info.value}"
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("content", [b"garbage" * 100, None], ids=["garbage", "truncated"])
def test_quantize_a_damaged_fp32_graph_is_a_clear_error(tmp_path, fp32_onnx, content):
    """DEFECT (minor): a corrupted or truncated fp32 ONNX path raises google.protobuf DecodeError
    ('Wrong wire type in tag', 'Truncated message') from the unguarded onnx.load in quantize_int8; it should be
    an ExportError naming the file (MindcvError, so a CLI prints one line)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content if content is not None else open(fp32_onnx, "rb").read()[:400000])
    calibration = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(MindcvError, match="bad.onnx"):
        quantize_int8(str(bad), str(tmp_path / "q.onnx"), calibration)
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]


# ====================================================================================== attacks that held
@pytest.mark.slow
def test_damaged_or_redirected_cache_records_are_never_trusted(tmp_path, ckpt):
    """HOLDS: a record that is not JSON, a JSON list / null / string, a record with the right key but a truncated
    graph, a graph symlinked to another file, a record symlinked to a foreign file: each is exported again, the
    symlink targets are never written through, and the served graph reproduces the model."""
    loaded = load_model(None, _private_ckpt(tmp_path, ckpt))
    path = cached_onnx_export(loaded)
    record = path + ".json"
    good_graph = open(path, "rb").read()
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"someone else's file")

    def damage_record(text):
        def do():
            with open(record, "w") as f:
                f.write(text)

        return do

    def truncate():
        with open(path, "wb") as f:
            f.write(good_graph[: len(good_graph) // 2])

    def graph_symlink():
        os.remove(path)
        os.symlink(victim, path)

    def record_symlink():
        os.remove(record)
        os.symlink(victim, record)

    cases = [damage_record("not json"), damage_record("[1, 2]"), damage_record("null"), damage_record('"key"')]
    cases += [damage_record('{"key": 5, "onnx_sha256": []}'), truncate, graph_symlink, record_symlink]
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    expected = loaded.model(ms.Tensor(x)).asnumpy()
    for damage in cases:
        damage()
        assert cached_onnx_export(loaded) == path
        assert not os.path.islink(path) and not os.path.islink(record), damage
        with open(record) as f:
            assert json.load(f)["onnx_sha256"] == _sha(path), damage
        assert _relative(OnnxRuntimeModel(path)(x), expected) < 1e-4, damage
    assert victim.read_bytes() == b"someone else's file"
    assert not _temporaries(os.path.dirname(path))


@pytest.mark.slow
def test_changed_weights_never_reuse_a_stale_graph(tmp_path, ckpt):
    """HOLDS: the same file name with other weights (and the EMA-free reload of the same weights) keys the cache
    by content: a new graph for new weights, the old one for the same weights."""
    own = _private_ckpt(tmp_path, ckpt)
    first = cached_onnx_export(load_model(None, own))
    assert cached_onnx_export(load_model(None, own)) == first
    save_checkpoint(_searched_model(seed=21), own, BASE_META)
    changed = load_model(None, own)
    second = cached_onnx_export(changed)
    assert second != first
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    assert _relative(OnnxRuntimeModel(second)(x), changed.model(ms.Tensor(x)).asnumpy()) < 1e-4


_CONCURRENT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, os.getcwd())
    import mindspore as ms
    ms.set_device("CPU")
    from mindcv.deploy import cached_onnx_export
    from mindcv.models import load_model

    ckpt, go, ready = sys.argv[1:4]
    loaded = load_model(None, ckpt)
    open(ready, "w").close()
    deadline = time.time() + 300
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.002)
    print("CACHED", cached_onnx_export(loaded))
    """)


@pytest.mark.slow
def test_two_processes_exporting_the_same_cache_at_once(tmp_path, ckpt):
    """HOLDS: two processes start cached_onnx_export on the same checkpoint at the same instant: both return the
    same path, the record matches the file, no temporary is left, and the graph reproduces the model."""
    own = _private_ckpt(tmp_path, ckpt)
    script = tmp_path / "race_cache.py"  # not concurrent.py: that would shadow the stdlib package
    script.write_text(_CONCURRENT)
    go = tmp_path / "go"
    env = dict(os.environ, MINDCV_HOME=str(tmp_path / "home"))
    procs = []
    for i in range(2):
        args = [sys.executable, str(script), own, str(go), str(tmp_path / f"ready{i}")]
        procs.append(
            subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    deadline = time.time() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    errors = ["\n".join(ln for ln in o[1].splitlines() if "WARNING" not in ln)[-3000:] for o in outputs]
    assert all(p.returncode == 0 for p in procs), ([p.returncode for p in procs], errors)
    paths = {line.split(" ", 1)[1] for out, _ in outputs for line in out.splitlines() if line.startswith("CACHED ")}
    assert len(paths) == 1
    path = paths.pop()
    assert os.path.dirname(path) == os.path.dirname(own)
    with open(path + ".json") as f:
        assert json.load(f)["onnx_sha256"] == _sha(path)
    assert not _temporaries(os.path.dirname(own))
    loaded = load_model(None, own)
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    assert _relative(OnnxRuntimeModel(path)(x), loaded.model(ms.Tensor(x)).asnumpy()) < 1e-4


def test_graph_refuses_images_of_another_size(fp32_onnx):
    """HOLDS: a 32 px graph given 40 px images raises ExportError naming both sizes (no silent resize)."""
    runtime = OnnxRuntimeModel(fp32_onnx)
    with pytest.raises(ExportError, match="32x32"):
        runtime(np.zeros((1, 3, 40, 40), np.float32))


class _Identity(nn.Cell):
    def construct(self, x):
        return x


def test_onnx_eval_step_matches_eval_step_on_ties_and_ignored_labels():
    """HOLDS: OnnxEvalStep and mindcv.engine.EvalStep give the same four sums on rows of tied logits, labels
    of -1, an all-ignored batch and large logits (ties break to the lower class id in both)."""
    logits = np.array(
        [[1] * 7, [0, 2, 2, 2, 2, 2, 2], [3, 3, 0, 0, 0, 0, 0], [5, 4, 3, 2, 1, 0, -1], [0] * 7, [1, 2, 3, 4, 5, 6, 7]],
        np.float32,
    )
    labels = np.array([6, 6, 1, -1, 5, 0], np.int32)
    for x, y in [
        (logits, labels),
        (logits * 1e4, labels),
        (logits, -np.ones(6, np.int32)),
        (logits, labels[::-1].copy()),
    ]:
        ms_sums = [float(v.asnumpy()) for v in EvalStep(_Identity(), topk=5)(ms.Tensor(x), ms.Tensor(y))]
        ort_sums = [float(v) for v in OnnxEvalStep(lambda images: images, topk=5)(x, y)]
        assert ms_sums[1:] == ort_sums[1:], (ms_sums, ort_sums)
        assert abs(ms_sums[0] - ort_sums[0]) <= 1e-6 * max(1.0, abs(ms_sums[0])), (ms_sums, ort_sums)


def test_quantize_failure_keeps_the_old_file_and_leaves_no_temporaries(tmp_path, fp32_onnx):
    """HOLDS: NaN calibration, wrong rank, and a calibration set of another image size (40 px for a 32 px graph)
    are refused; an existing INT8 file under the name is untouched and no .tmp-* folder remains."""
    out = tmp_path / "q.int8.onnx"
    out.write_bytes(b"earlier int8 graph")
    good = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        quantize_int8(fp32_onnx, str(out), nan)
    with pytest.raises(InvalidArgumentError, match="N, C, H, W"):
        quantize_int8(fp32_onnx, str(out), good[0])
    with pytest.raises(ExportError):
        quantize_int8(fp32_onnx, str(out), np.zeros((2, 3, 40, 40), np.float32))
    assert out.read_bytes() == b"earlier int8 graph"
    assert sorted(os.listdir(tmp_path)) == ["q.int8.onnx"]


@pytest.mark.slow
def test_load_model_refuses_unusable_inputs(tmp_path, ckpt, crafted, capsys, image_folder):
    """HOLDS: a directory or a symlink loop as checkpoint, EMA asked of a file without EMA (native and
    torchvision), a recorded architecture spelled differently, a recorded name of another model, a recorded
    width that differs, non-string class names and a wrong count: each a clear error, exit 2 in infer.py."""
    loop_a, loop_b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    for bad in (str(tmp_path), str(loop_a)):
        with pytest.raises(CheckpointError, match="does not exist or is not a file"):
            load_model(None, bad)
        code, err = _cli(infer_main, [image_folder, "--ckpt_path", bad, "--output", str(tmp_path / "p.json")], capsys)
        assert code == 2 and len(err) == 1, (code, err)
    with pytest.raises(InvalidArgumentError, match="holds no EMA"):
        load_model(None, ckpt, ema=True)
    with pytest.raises(CheckpointError, match="no 'ema.' parameters"):
        load_model(None, crafted("ema_claim", ema=True), ema=True)
    with pytest.raises(CheckpointError, match="no 'ema.' parameters"):
        load_model(
            "mnasnet_050", os.path.join(REPO, "tests", "fixtures", "torchvision_mnasnet0.5.safetensors"), ema=True
        )
    with pytest.raises(CheckpointError, match="trained with architecture"):
        load_model(None, crafted("spaced", arch=ARCH.replace("|", " | ")))
    with pytest.raises(CheckpointError):
        load_model(None, crafted("other", model="mnasnet_050"))
    with pytest.raises(CheckpointError):
        load_model(None, crafted("width", width_mult=1.0))
    with pytest.raises(CheckpointError):
        load_model(None, crafted("few_names", class_names=["a", "b"]))
    with pytest.raises(CheckpointError, match="list of distinct strings"):
        load_model(None, crafted("non_string_names", class_names=[1, 2, 3, 4]))


def test_export_cli_calibration_counts(tmp_path, capsys, ckpt, image_folder):
    """HOLDS: --calib_images 0 / -3 exit 2 in one line before anything is written."""
    base = ["--ckpt_path", ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "q"), "--quantize", "int8"]
    for count in ("0", "-3"):
        code, err = _cli(export_main, base + ["--calib_data", image_folder, "--calib_images", count], capsys)
        assert code == 2 and len(err) == 1 and "--calib_images" in err[0], (code, err)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_export_cli_creates_a_missing_output_folder(tmp_path, capsys, ckpt):
    """HOLDS: --file_name in a folder that does not exist yet: created, file published, no temporaries."""
    target = tmp_path / "new" / "sub" / "m"
    code, err = _cli(export_main, ["--ckpt_path", ckpt, "--format", "MINDIR", "--file_name", str(target)], capsys)
    assert code == 0, err
    assert os.listdir(target.parent) == ["m.mindir"]


@pytest.mark.slow
def test_validate_onnxruntime_matches_mindspore_with_unreadable_images_and_another_size(tmp_path, ckpt, image_folder):
    """HOLDS: validate.py on both backends, with an unreadable image in the split (label -1 in the batches) and
    --image_resize 40 overriding the checkpoint's 32: same sample count, top-1, top-5 and loss."""
    from config import explicit_keys, parse_args
    from validate import main as validate_main

    split = tmp_path / "data" / "val"
    shutil.copytree(image_folder, split)
    (split / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    own = _private_ckpt(tmp_path, ckpt)  # the ONNX cache goes next to it
    results = {}
    for backend in ("mindspore", "onnxruntime"):
        argv = [
            "--dataset",
            "imagefolder",
            "--data_dir",
            str(split.parent),
            "--val_split",
            "val",
            "--model",
            "mnasnet_arch",
        ]
        argv += ["--ckpt_path", own, "--batch_size", "5"]
        argv += ["--backend", backend, "--progress", "False", "--num_parallel_workers", "1", "--image_resize", "40"]
        try:
            results[backend] = validate_main(parse_args(argv), explicit_keys(argv))
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)  # validate.py sets GRAPH mode; later tests expect the default
    ms_result, ort_result = results["mindspore"], results["onnxruntime"]
    assert ort_result["backend"] == "onnxruntime" and ms_result["backend"] == "mindspore"
    assert ms_result["num_samples"] == ort_result["num_samples"] == 12
    assert ms_result["unreadable_images"] == ort_result["unreadable_images"] == 1
    assert ms_result["top1"] == ort_result["top1"] and ms_result["top5"] == ort_result["top5"]
    assert abs(ms_result["loss"] - ort_result["loss"]) < 1e-4
