"""export.py: BN-folded MindIR and ONNX graphs with a dynamic batch reproduce the unfused model."""

import logging
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mindspore as ms
from mindspore import nn

from export import check_exported, export_model, main, make_onnx_batch_dynamic
from mindcv.deploy.export import ONNX_DEPRECATION_MESSAGE, _without_onnx_deprecation_warning
from mindcv.models import create_model
from mindcv.models.checkpoint import save_checkpoint
from mindcv.models.fuse import fuse_bn

# whole-model exports and export.py in a process of its own, ~30 s each; the quick loop exports through
# test_deploy_attack.py (fp32_onnx) and runs export.py's checks in test_deploy*.py
pytestmark = pytest.mark.slow


def calibrated(name: str, num_classes: int):
    """A model with non-trivial BN statistics (fresh ones make folding an identity) and its fused twin."""
    model = create_model(name, num_classes=num_classes)
    rng = np.random.default_rng(0)
    for p in model.get_parameters():
        if "moving_mean" in p.name or "beta" in p.name:
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        elif "moving_variance" in p.name or "gamma" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    twin = create_model(name, num_classes=num_classes)
    ms.load_param_into_net(twin, {p.name: ms.Parameter(p.value().copy(), name=p.name) for p in model.get_parameters()})
    model.set_train(False)
    return model, twin


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_bn_folded_mindir_with_dynamic_batch_matches_the_unfused_model(tmp_path):
    reference, fused = calibrated("mnasnet_050", 7)
    assert fuse_bn(fused) == 52
    path = export_model(fused, str(tmp_path / "m"), "MINDIR", image_size=64)
    assert path.endswith(".mindir") and os.path.getsize(path) > 1_000_000
    graph = nn.GraphCell(ms.load(path))
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        expected = reference(ms.Tensor(x)).asnumpy()
        assert np.abs(expected).max() > 1e-3
        assert relative_error(graph(ms.Tensor(x)).asnumpy(), expected) < 1e-5
    assert check_exported(fused, path, 64, reference=reference) < 1e-4


def test_onnx_export_has_no_batchnorm_and_a_dynamic_batch(tmp_path):
    reference, fused = calibrated("mnasnet_small", 5)
    fuse_bn(fused)
    path = export_model(fused, str(tmp_path / "s"), "ONNX", image_size=64, batch_size=1)
    assert make_onnx_batch_dynamic(path)
    graph = onnx.load(path).graph
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert got.shape == (batch, 5)
        assert relative_error(got, reference(ms.Tensor(x)).asnumpy()) < 1e-5


def test_cli_exports_checks_and_rejects_bad_input(tmp_path, capsys):
    reference, _ = calibrated("mnasnet_050", 5)
    ckpt = str(tmp_path / "w.ckpt")
    save_checkpoint(reference, ckpt, metadata={"num_classes": 5})
    for fmt, ext in (("ONNX", "onnx"),):  # MindIR through the CLI: tests/test_deploy.py
        args = ["--model", "mnasnet_050", "--ckpt_path", ckpt, "--image_size", "64", "--format", fmt]
        assert main(args + ["--file_name", str(tmp_path / "out" / fmt)]) == 0
        out = capsys.readouterr().out
        assert "folded 52 BatchNorm layers" in out and os.path.getsize(tmp_path / "out" / f"{fmt}.{ext}") > 1_000_000
        # both batch sizes were checked against the unfused model
        assert "batch 1: exported vs in-framework output" in out and "batch 3: exported" in out
    assert main(["--model", "mnasnet_050", "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_onnx_export_drops_mindspores_deprecation_warning_and_nothing_else(tmp_path):
    from mindspore import log as ms_log

    logger = ms_log._get_logger()
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)  # MindSpore's default, whatever GLOG_v this test process has
    try:
        _, fused = calibrated("mnasnet_small", 3)
        export_model(fused, str(tmp_path / "s"), "ONNX", image_size=32, batch_size=1)
        assert not [m for m in records.messages if ONNX_DEPRECATION_MESSAGE in m]
        with _without_onnx_deprecation_warning():  # exactly that message: other warnings still get through
            ms_log.warning("another MindSpore warning")
            ms_log.warning(ONNX_DEPRECATION_MESSAGE + ", please use mindspore.onnx.export()")
        ms_log.warning(ONNX_DEPRECATION_MESSAGE + " (outside the export: not ours to drop)")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert records.messages == [
        "another MindSpore warning",
        ONNX_DEPRECATION_MESSAGE + " (outside the export: not ours to drop)",
    ]


def test_cli_writes_into_outputs_export_and_prints_no_mindspore_warning(tmp_path, fixtures_dir):
    """As a user runs it: another folder, GLOG_v unset; torchvision-layout weights, model name from their shapes."""
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    weights = os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors")
    export_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export.py")
    work = tmp_path / "work"  # (tmp_path also holds this test's MINDCV_HOME)
    work.mkdir()
    run = subprocess.run(
        [sys.executable, export_py, "--ckpt_path", weights, "--format", "ONNX", "--image_size", "32"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = work / "outputs" / "export" / "mnasnet_050.onnx"
    assert written.is_file() and f"wrote {os.path.join('outputs', 'export', 'mnasnet_050.onnx')}" in run.stdout
    assert sorted(os.listdir(work)) == ["outputs"]  # nothing else in the folder it ran in
    assert "[WARNING]" not in run.stdout + run.stderr and "will be deleted" not in run.stderr
