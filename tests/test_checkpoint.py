"""Reading, converting, strictly loading and atomically writing weights."""

import glob
import json
import os

import numpy as np
import pytest
from conftest import random_images

import mindspore as ms

from mindcv.models import CheckpointError, CheckpointMismatchError, create_model, load_model_checkpoint, save_checkpoint
from mindcv.models.checkpoint import convert_state_dict, detect_layout, read_checkpoint

_NAMES = {"tv:0.5": "mnasnet_050", "timm:mnasnet_small": "mnasnet_small", "upstream:mnasnet_050": "mnasnet_050"}


def _references(fixtures_dir):
    return sorted(glob.glob(os.path.join(fixtures_dir, "*_reference.json")))


def _run_reference(reference_json):
    with open(reference_json) as f:
        meta = json.load(f)
    ref = np.load(reference_json.replace("_reference.json", "_reference.npz"))
    x = np.random.default_rng(int(ref["input_seed"])).standard_normal(
        (int(ref["batch"]), 3, int(ref["size"]), int(ref["size"]))
    )
    weights = os.path.join(os.path.dirname(reference_json), meta["weights"])
    model = create_model(_NAMES[meta["source"]], num_classes=meta["num_classes"], checkpoint_path=weights)
    model.set_train(False)
    return model, model(ms.Tensor(x.astype(np.float32))).asnumpy(), ref["logits"], weights


def test_fixtures_cover_all_three_foreign_layouts(fixtures_dir):
    sources = {json.load(open(p))["source"] for p in _references(fixtures_dir)}
    assert sources == set(_NAMES)


@pytest.mark.parametrize("source", sorted(_NAMES))
def test_conversion_matches_source_framework(fixtures_dir, mode, source):
    """Converted weights reproduce the logits the source framework computed (max abs < 1e-4)."""
    stem = {"tv:0.5": "torchvision_mnasnet0.5", "timm:mnasnet_small": "timm_mnasnet_small"}.get(
        source, "mindcv_upstream_mnasnet_050"
    )
    model, out, expected, _ = _run_reference(os.path.join(fixtures_dir, stem + "_reference.json"))
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(expected).max() > 0.1  # the comparison is not trivially between near-zero logits
    expected_eps = 1e-3 if source.startswith("upstream") else 1e-5
    assert model.bn_eps == expected_eps


def test_layout_detection(fixtures_dir):
    layouts = {}
    for reference_json in _references(fixtures_dir):
        meta = json.load(open(reference_json))
        tensors, _ = read_checkpoint(os.path.join(fixtures_dir, meta["weights"]))
        layouts[meta["source"]] = detect_layout(tensors)
    assert layouts == {"tv:0.5": "torchvision", "timm:mnasnet_small": "timm", "upstream:mnasnet_050": "mindcv_upstream"}
    with pytest.raises(CheckpointError, match="unrecognised state-dict layout.*supported layouts"):
        detect_layout(["fc.weight", "fc.bias"])


def test_torchvision_names_map_to_every_parameter(fixtures_dir):
    tensors, _ = read_checkpoint(os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors"))
    native = convert_state_dict(tensors)
    model = create_model("mnasnet_050", num_classes=10)
    assert set(native) == {p.name for p in model.get_parameters()}
    assert not any("num_batches_tracked" in k for k in native)


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
def test_native_round_trip_keeps_weights_and_bn_eps(fixtures_dir, tmp_path, ext):
    model, out, _, _ = _run_reference(os.path.join(fixtures_dir, "torchvision_mnasnet0.5_reference.json"))
    path = save_checkpoint(model, str(tmp_path / f"converted{ext}"))
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o400)  # not left read-only
    tensors, meta = read_checkpoint(path)
    assert detect_layout(tensors) == "mindcv"
    assert meta["bn_eps"] == 1e-5 and meta["arch"].startswith("ds_r1_k3_s1_c16_noskip|")
    reloaded = create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    assert reloaded.bn_eps == 1e-5  # taken from the file, so outputs keep matching the source
    reloaded.set_train(False)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(ms.Tensor(x)).asnumpy(), out)


def test_fine_tuning_adapts_classifier_and_input_channels(fixtures_dir):
    weights = os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors")
    tensors, _ = read_checkpoint(weights)
    model = create_model("mnasnet_050", num_classes=3, in_channels=1, checkpoint_path=weights)
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    assert params["classifier.weight"].shape == (3, 1280)
    np.testing.assert_allclose(
        params["conv_stem.weight"], tensors["layers.0.weight"].astype(np.float32).sum(1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_array_equal(
        params["blocks.1.0.conv_dw.weight"], tensors["layers.8.0.layers.3.weight"].astype(np.float32)
    )
    model.set_train(False)
    assert model(random_images(1, 64, channels=1)).shape == (1, 3)


def test_wrong_architecture_lists_every_problem(fixtures_dir):
    weights = os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        create_model("mnasnet_100", num_classes=10, checkpoint_path=weights)
    message = str(err.value)
    assert "torchvision_mnasnet0.5.safetensors" in message and "shape mismatches" in message
    assert "conv_stem.weight (checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3))" in message
    with pytest.raises(CheckpointMismatchError, match="missing keys: .*se.conv_reduce"):
        create_model("semnasnet_050", num_classes=10, checkpoint_path=weights)


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    model = create_model("mnasnet_050", num_classes=10)
    tensors = {p.name: p.asnumpy() for p in model.get_parameters()}
    tensors.pop("blocks.2.1.bn2.gamma")
    tensors["blocks.9.0.conv.weight"] = np.zeros((1,), np.float32)
    path = save_checkpoint(tensors, str(tmp_path / "edited.ckpt"))
    with pytest.raises(CheckpointMismatchError) as err:
        create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    assert err.value.missing == ["blocks.2.1.bn2.gamma"] and err.value.unexpected == ["blocks.9.0.conv.weight"]


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors", ".pth"])
def test_truncated_and_garbage_files_name_the_file(tmp_path, ext, fixtures_dir):
    src = {
        ".ckpt": "mindcv_upstream_mnasnet_050.ckpt",
        ".safetensors": "timm_mnasnet_small.safetensors",
        ".pth": "torch_tensors_zip.pt",
    }[ext]
    data = open(os.path.join(fixtures_dir, src), "rb").read()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cut{ext}"):
        create_model("mnasnet_050", checkpoint_path=str(cut))
    garbage = tmp_path / f"garbage{ext}"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CheckpointError, match=f"garbage{ext}"):
        create_model("mnasnet_050", checkpoint_path=str(garbage))


def test_missing_empty_and_unsupported_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "nope.ckpt"))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "empty.ckpt"))
    (tmp_path / "w.h5").write_bytes(b"123")
    with pytest.raises(CheckpointError, match=r"unsupported extension '.h5'; valid: .ckpt, .safetensors"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match="checkpoint_path is empty"):
        load_model_checkpoint(create_model("mnasnet_050"), "")
    with pytest.raises(ValueError, match="either pretrained=True or checkpoint_path"):
        create_model("mnasnet_050", pretrained=True, checkpoint_path="x.ckpt")


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = create_model("mnasnet_050", num_classes=10)
    path = save_checkpoint(model, str(tmp_path / "best.ckpt"))
    before = open(path, "rb").read()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(create_model("mnasnet_050", num_classes=10), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["best.ckpt"]  # no temporary file left behind


def test_ema_weights_are_selectable(tmp_path):
    model = create_model("mnasnet_050", num_classes=10)
    online = {p.name: p.asnumpy() for p in model.get_parameters()}
    ema = {f"ema.{k}": v + 1.0 for k, v in online.items()}
    path = save_checkpoint({**online, **ema}, str(tmp_path / "with_ema.ckpt"))
    a = create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    b = create_model("mnasnet_050", num_classes=10, checkpoint_path=path, ema=True)
    pa = {p.name: p.asnumpy() for p in a.get_parameters()}
    pb = {p.name: p.asnumpy() for p in b.get_parameters()}
    np.testing.assert_array_equal(pa["conv_stem.weight"], online["conv_stem.weight"])
    np.testing.assert_array_equal(pb["conv_stem.weight"], online["conv_stem.weight"] + 1.0)
    with pytest.raises(CheckpointError, match="no 'ema.' parameters"):
        create_model(
            "mnasnet_050",
            num_classes=10,
            checkpoint_path=save_checkpoint(online, str(tmp_path / "plain.ckpt")),
            ema=True,
        )
