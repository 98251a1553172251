"""export.py: MindIR with a dynamic batch reproduces the model; ONNX export writes a file."""

import os

import numpy as np

import mindspore as ms
from mindspore import nn

from export import check_exported, export_model, main
from mindcv.models import create_model


def test_mindir_dynamic_batch_matches_the_model(tmp_path):
    model = create_model("mnasnet_050", num_classes=7)
    path = export_model(model, str(tmp_path / "m"), "MINDIR", image_size=64)
    assert path.endswith(".mindir") and os.path.getsize(path) > 1_000_000
    graph = nn.GraphCell(ms.load(path))
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        assert np.abs(graph(ms.Tensor(x)).asnumpy() - model(ms.Tensor(x)).asnumpy()).max() < 1e-5
    assert check_exported(model, path, 64) < 1e-5


def test_cli_exports_and_checks(tmp_path, capsys):
    assert (
        main(["--model", "mnasnet_050", "--num_classes", "5", "--image_size", "64", "--file_name", str(tmp_path / "x")])
        == 0
    )
    assert "max |diff| =" in capsys.readouterr().out
    assert main(["--model", "mnasnet_050", "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 2
    code = main(
        [
            "--model",
            "mnasnet_050",
            "--num_classes",
            "5",
            "--image_size",
            "64",
            "--format",
            "ONNX",
            "--file_name",
            str(tmp_path / "y"),
        ]
    )
    assert code == 0 and os.path.getsize(tmp_path / "y.onnx") > 1_000_000
    assert "cannot export ONNX with a dynamic batch" in capsys.readouterr().out
