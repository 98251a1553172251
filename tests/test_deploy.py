"""One way from weights to a model (load_model), exact export of every weight source, the onnxruntime backend
and INT8 quantization: each promise against the input chosen to break it."""

import json
import os

import numpy as np
import onnx
import pytest
from conftest import calibrate_bn
from PIL import Image

import mindspore as ms

from export import main as export_main
from infer import main as infer_main
from mindcv.deploy import ExportError, OnnxRuntimeModel, cached_onnx_export, export_checked, run_exported
from mindcv.errors import InvalidArgumentError
from mindcv.inference import Classifier, collect_images
from mindcv.models import CheckpointError, create_model, load_model, save_checkpoint
from mindcv.models.fuse import fuse_bn

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# (fixture stem, weights file, model): the torchvision and timm files the issue names
SOURCES = [
    ("torchvision_mnasnet0.5", "torchvision_mnasnet0.5.safetensors", "mnasnet_050"),
    ("timm_mnasnet_small", "timm_mnasnet_small.safetensors", "mnasnet_small"),
]
# a searched architecture with a non-default stem and head: what a checkpoint must carry to be rebuilt
SEARCHED = {
    "arch": "ds_r1_k3_s1_c16_noskip|ir_r2_k5_s2_e3_c24|ir_r2_k3_s2_e6_c40_se0.25|ir_r1_k5_s2_e3_c80|"
    "ir_r1_k3_s1_e6_c96|ir_r1_k5_s2_e6_c160|ir_r1_k3_s1_e6_c320",
    "width_mult": 0.5,
    "stem_size": 24,
    "num_features": 640,
}


def _reference(stem):
    ref = np.load(os.path.join(FIXTURES, stem + "_reference.npz"))
    shape = (int(ref["batch"]), 3, int(ref["size"]), int(ref["size"]))
    x = np.random.default_rng(int(ref["input_seed"])).standard_normal(shape).astype(np.float32)
    return x, ref["logits"], int(ref["size"])


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def searched_ckpt(tmp_path_factory):
    """A checkpoint of a search result as train.py writes it (model 'mnasnet_arch', its architecture record)."""
    folder = tmp_path_factory.mktemp("searched")
    top1 = folder / "top1.json"
    top1.write_text(json.dumps(SEARCHED))
    model = calibrate_bn(create_model("mnasnet_arch", arch=str(top1), num_classes=4), seed=3)
    meta = {"class_names": ["a", "b", "c", "d"], "eval_transform": {"image_resize": 48, "crop_pct": 1.0}}
    path = save_checkpoint(model, str(folder / "searched.ckpt"), meta)
    os.remove(top1)  # the checkpoint alone must be enough
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """<class>/<images> with 4 classes a..d, 6 images each (48 px and larger, JPEG and PNG)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for c, name in enumerate("abcd"):
        (root / name).mkdir()
        for i in range(6):
            size = 48 + 8 * i
            image = np.full((size, size, 3), 40 * c, np.uint8) + rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return str(root)


# ------------------------------------------------------------------ exactness of every weight source
@pytest.mark.parametrize("fmt", ["ONNX", "MINDIR"])
@pytest.mark.parametrize("stem,weights,model", SOURCES, ids=["torchvision", "timm"])
@pytest.mark.slow
def test_export_reproduces_the_source_framework_logits(tmp_path, capsys, stem, weights, model, fmt):
    """export.py on converted weights, BN folded, run by onnxruntime / MindSpore's MindIR loader, gives the
    logits the source framework recorded (1e-4 of the largest logit)."""
    x, expected, size = _reference(stem)
    out = str(tmp_path / "m")
    args = ["--model", model, "--ckpt_path", os.path.join(FIXTURES, weights), "--format", fmt, "--file_name", out]
    assert export_main(args + ["--image_size", str(size)]) == 0
    printed = capsys.readouterr().out
    assert "BN eps 1e-05" in printed and "folded" in printed
    path = out + (".onnx" if fmt == "ONNX" else ".mindir")
    if fmt == "ONNX":
        assert "BatchNormalization" not in {n.op_type for n in onnx.load(path).graph.node}
    assert _relative(run_exported(path, x), expected) < 1e-4


@pytest.mark.slow
def test_folding_with_the_default_epsilon_would_fail_this_check(tmp_path):
    """The test above can fail: folding torchvision weights with eps 1e-3 (the old export.py) misses by far more."""
    stem, weights, model = SOURCES[0]
    x, expected, size = _reference(stem)
    loaded = load_model(model, os.path.join(FIXTURES, weights))
    wrong = create_model(model, num_classes=loaded.num_classes)  # eps 1e-3
    for name, param in {p.name: p for p in wrong.get_parameters()}.items():
        param.set_data(dict((p.name, p) for p in loaded.model.get_parameters())[name].value().copy())
    wrong.set_train(False)
    fuse_bn(wrong)
    assert _relative(wrong(ms.Tensor(x)).asnumpy(), expected) > 1e-4
    right = loaded.fused_copy()
    assert _relative(right(ms.Tensor(x)).asnumpy(), expected) < 1e-4


@pytest.mark.parametrize("fmt", ["ONNX", "MINDIR"])
@pytest.mark.slow
def test_search_result_checkpoint_exports_exactly_without_naming_the_architecture(tmp_path, searched_ckpt, fmt):
    loaded = load_model(None, searched_ckpt)
    assert loaded.model_name == "mnasnet_arch" and loaded.model.stem_size == 24 and loaded.model.num_features == 640
    assert loaded.class_names == ["a", "b", "c", "d"] and loaded.image_size == 48
    out = str(tmp_path / "arch")
    assert export_main(["--ckpt_path", searched_ckpt, "--format", fmt, "--file_name", out]) == 0
    x = np.random.default_rng(5).standard_normal((2, 3, 48, 48)).astype(np.float32)
    expected = loaded.model(ms.Tensor(x)).asnumpy()
    assert np.abs(expected).max() > 0.1
    assert _relative(run_exported(out + (".onnx" if fmt == "ONNX" else ".mindir"), x), expected) < 1e-4


# ------------------------------------------------------------------ load_model against contradicting input
@pytest.mark.slow
def test_load_model_refuses_contradictions(tmp_path, searched_ckpt):
    with pytest.raises(InvalidArgumentError, match="was trained as 'mnasnet_arch', not 'mnasnet_050'"):
        load_model("mnasnet_050", searched_ckpt)
    # a foreign file records no name: the zoo model with its parameter shapes is found, or a clear error
    assert load_model(None, os.path.join(FIXTURES, "torchvision_mnasnet0.5.safetensors")).model_name == "mnasnet_050"
    from safetensors.numpy import save_file

    from mindcv.models.checkpoint import model_state_dict

    odd = model_state_dict(create_model("mnasnet_arch", arch="b1", stem_size=8, num_classes=3))
    save_file(odd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="records no model name and no registered architecture fit"):
        load_model(None, str(tmp_path / "odd.safetensors"))
    with pytest.raises(InvalidArgumentError, match="10 classes were asked"):
        load_model("mnasnet_arch", searched_ckpt, num_classes=10)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("mnasnet_050", str(tmp_path / "missing.ckpt"))
    with pytest.raises(InvalidArgumentError, match="apply to model 'mnasnet_arch' only"):
        load_model("mnasnet_050", os.path.join(FIXTURES, "torchvision_mnasnet0.5.safetensors"), arch="b1")
    # a record that contradicts the weights it holds: 3 names for a 4-class classifier
    model = create_model("mnasnet_050", num_classes=4)
    bad = save_checkpoint(model, str(tmp_path / "names.ckpt"), {"class_names": ["x", "y", "z"]})
    with pytest.raises(CheckpointError, match="3 class names for a 4-class classifier"):
        load_model(None, bad)
    # a recorded architecture that is not the one built (a crafted or mislabelled file)
    other = save_checkpoint(model, str(tmp_path / "arch.ckpt"), {"arch": SEARCHED["arch"]})
    with pytest.raises(
        CheckpointError, match="16 inverted-residual blocks .* recorded with it has 8: the record contra"
    ):
        load_model(None, other)


@pytest.mark.slow
def test_rebuild_is_independent_and_keeps_the_settings(searched_ckpt):
    loaded = load_model(None, searched_ckpt)
    twin = loaded.rebuild()
    assert twin.bn_eps == loaded.bn_eps and twin.stem_size == 24
    first = next(iter(twin.get_parameters()))
    before = next(iter(loaded.model.get_parameters())).asnumpy().copy()
    first.set_data(ms.Tensor(np.zeros(first.shape, np.float32)))
    assert np.array_equal(next(iter(loaded.model.get_parameters())).asnumpy(), before)


# ------------------------------------------------------------------ export publishes only checked files
@pytest.mark.slow
def test_failed_check_publishes_nothing_and_keeps_the_old_file(tmp_path, monkeypatch, searched_ckpt):
    loaded = load_model(None, searched_ckpt)
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"the user's earlier export")
    import mindcv.deploy.export as export_module

    real = export_module.run_exported
    monkeypatch.setattr(export_module, "run_exported", lambda path, x: real(path, x) * 1.01)  # a drifting graph
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export_checked(loaded, str(tmp_path / "keep"), "ONNX")
    assert target.read_bytes() == b"the user's earlier export"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx"]  # no temporary left behind
    monkeypatch.setattr(export_module, "run_exported", lambda path, x: real(path, x) * np.nan)
    with pytest.raises(ExportError, match="does not reproduce"):  # NaN never passes a "<=" check
        export_checked(loaded, str(tmp_path / "nan"), "MINDIR")
    assert not (tmp_path / "nan.mindir").exists()


def test_export_cli_rejects_wrong_but_plausible_arguments(tmp_path, capsys, searched_ckpt, image_folder):
    base = ["--ckpt_path", searched_ckpt, "--file_name", str(tmp_path / "x")]
    cases = [
        (["--format", "MINDIR", "--quantize", "int8", "--calib_data", image_folder], "needs --format ONNX"),
        (["--format", "ONNX", "--quantize", "int8"], "needs --calib_data"),
        (["--format", "ONNX", "--quantize", "int8", "--calib_data", str(tmp_path / "none")], "is not a folder"),
        (["--format", "ONNX", "--val_data", image_folder], "apply to --quantize int8 only"),
        (["--format", "ONNX", "--tolerance", "-1"], "tolerance must be"),
        (["--format", "ONNX", "--batch_size", "0"], "--batch_size >= 1 or -1"),
    ]
    for extra, message in cases:
        assert export_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert export_main(["--model", "mnasnet_050", "--format", "ONNX"]) == 2
    assert "no weights" in capsys.readouterr().err
    assert not any(name.startswith("x.") for name in os.listdir(tmp_path))


# ------------------------------------------------------------------ the onnxruntime backend
@pytest.mark.slow
def test_onnxruntime_backend_agrees_and_caches_by_weights(tmp_path, searched_ckpt, image_folder, caplog):
    ckpt = str(tmp_path / "model.ckpt")
    with open(searched_ckpt, "rb") as src, open(ckpt, "wb") as dst:
        dst.write(src.read())
    files = collect_images([image_folder])
    on_ms = Classifier(ckpt_path=ckpt, topk=3).predict(files)
    on_ort = Classifier(ckpt_path=ckpt, topk=3, backend="onnxruntime")
    cached = [f for f in os.listdir(tmp_path) if f.endswith(".onnx")]
    assert len(cached) == 1 and cached[0].startswith("model.ckpt.")
    for a, b in zip(on_ms, on_ort.predict(files)):
        assert a["class_ids"] == b["class_ids"] and a["label_names"] == b["label_names"]
        assert np.allclose(a["scores"], b["scores"], atol=1e-5)
    path = os.path.join(tmp_path, cached[0])
    mtime = os.stat(path).st_mtime_ns
    assert cached_onnx_export(on_ort.loaded) == path and os.stat(path).st_mtime_ns == mtime  # reused

    # a cached graph changed after it was written is not trusted: exported again, with a warning
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\x00" * 64)
    caplog.clear()
    assert cached_onnx_export(on_ort.loaded) == path
    assert "does not match its record" in caplog.text
    assert (
        Classifier(ckpt_path=ckpt, topk=3, backend="onnxruntime").predict(files[:4])[0]["class_ids"]
        == on_ms[0]["class_ids"]
    )

    # other weights in the same file name get another graph, never the stale one
    model = calibrate_bn(load_model(None, ckpt).rebuild(), seed=9)
    save_checkpoint(model, ckpt, {"model": "mnasnet_arch", "class_names": list("abcd")})
    changed = load_model(None, ckpt)
    assert cached_onnx_export(changed, 48) != path
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    assert _relative(OnnxRuntimeModel.from_loaded(changed, 48)(x), changed.model(ms.Tensor(x)).asnumpy()) < 1e-4


@pytest.mark.slow
def test_onnxruntime_cache_falls_back_when_writing_next_to_the_checkpoint_fails(tmp_path, monkeypatch, searched_ckpt):
    import mindcv.deploy.onnxruntime_backend as backend

    real = backend._export_into

    def refuse_next_to_checkpoint(loaded, stem, *args):
        if stem.startswith(os.path.dirname(searched_ckpt)):
            raise PermissionError(13, "Permission denied", stem)
        return real(loaded, stem, *args)

    monkeypatch.setattr(backend, "_export_into", refuse_next_to_checkpoint)
    path = cached_onnx_export(load_model(None, searched_ckpt))
    assert path.startswith(os.environ["MINDCV_HOME"]) and os.path.isfile(path + ".json")


@pytest.mark.slow
def test_infer_on_onnxruntime_matches_mindspore(tmp_path, capsys, searched_ckpt, image_folder):
    out = {}
    for backend in ("mindspore", "onnxruntime"):
        target = str(tmp_path / f"{backend}.json")
        assert infer_main([image_folder, "--ckpt_path", searched_ckpt, "--backend", backend, "--output", target]) == 0
        out[backend] = json.load(open(target))
    assert [r["class_ids"] for r in out["mindspore"]] == [r["class_ids"] for r in out["onnxruntime"]]

    # validate.py --backend onnxruntime against MindSpore (unreadable images, another size):
    # tests/test_deploy_attack.py::test_validate_onnxruntime_matches_mindspore_with_unreadable_images_and_another_size


# ------------------------------------------------------------------ INT8
@pytest.mark.slow
def test_int8_export_reports_accuracy_and_speed_and_keeps_chosen_layers(tmp_path, capsys, searched_ckpt, image_folder):
    report = tmp_path / "report.json"
    args = ["--ckpt_path", searched_ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "q"), "--quantize", "int8"]
    args += ["--calib_data", image_folder, "--calib_images", "8", "--val_data", image_folder, "--report", str(report)]
    args += ["--speed_rounds", "1"]
    assert export_main(args) == 0
    printed = capsys.readouterr().out
    assert "calibrating on 8 images" in printed and "top-1 fp32" in printed
    graph = onnx.load(str(tmp_path / "q.int8.onnx")).graph
    kinds = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= kinds
    result = json.load(open(report))
    assert result["images"] == 24 and 0 <= result["top1_int8"] <= 100 and result["int8_images_per_second"] > 0
    assert abs(result["speedup"] - result["int8_images_per_second"] / result["fp32_images_per_second"]) < 1e-9
    # INT8 stays close to fp32 on the images it was calibrated for
    fp32 = OnnxRuntimeModel(str(tmp_path / "q.onnx"))
    int8 = OnnxRuntimeModel(str(tmp_path / "q.int8.onnx"))
    classifier = Classifier(ckpt_path=searched_ckpt)
    batch = np.stack([classifier.preprocess(f)[0] for f in collect_images([image_folder])[:8]])
    assert np.corrcoef(fp32(batch).ravel(), int8(batch).ravel())[0, 1] > 0.95

    # depthwise convolutions kept in fp32: their weights are not quantized
    assert export_main(args[:-6] + ["--keep_fp32", "depthwise", "--file_name", str(tmp_path / "dw")]) == 0
    kept = onnx.load(str(tmp_path / "dw.int8.onnx")).graph
    depthwise = [
        n for n in kept.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    quantized_weights = {n.output[0] for n in kept.node if n.op_type == "DequantizeLinear"}
    assert depthwise and not any(n.input[1] in quantized_weights for n in depthwise)


@pytest.mark.slow
def test_int8_refuses_unusable_calibration_data(tmp_path, capsys, searched_ckpt):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff\x00 not a jpeg")
    (broken / "b.png").write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--ckpt_path", searched_ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "q"), "--quantize", "int8"]
    assert export_main(base + ["--calib_data", str(broken)]) == 2
    assert "none of the chosen images is readable" in capsys.readouterr().err
    assert export_main(base + ["--calib_data", str(empty)]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "q.int8.onnx").exists()
    with pytest.raises(SystemExit):
        export_main(base + ["--calib_data", str(broken), "--keep_fp32", "convs"])
    assert "unknown layer kind" in capsys.readouterr().err


# ------------------------------------------------------------------ found by a review
@pytest.mark.slow
def test_review_findings_stay_fixed(tmp_path, capsys, searched_ckpt, image_folder):
    from mindcv.data import create_transforms
    from mindcv.deploy import OnnxEvalStep

    # a recorded dataset decides the preprocessing (CIFAR-style: no ImageNet resize and crop)
    model = create_model("mnasnet_050", num_classes=4)
    meta = {"dataset": "cifar10", "eval_transform": {"image_resize": 32}, "class_names": list("abcd")}
    cifar = save_checkpoint(model, str(tmp_path / "cifar.ckpt"), meta)
    classifier = Classifier(ckpt_path=cifar)
    image_path = collect_images([image_folder])[0]
    expected = np.asarray(Image.open(image_path).convert("RGB"))
    for op in create_transforms("cifar10", image_resize=32, is_training=False):
        expected = op(expected)
    assert classifier.loaded.dataset == "cifar10"
    assert np.allclose(classifier.preprocess(image_path)[0], expected, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="not both"):
        Classifier("mnasnet_050", loaded=classifier.loaded)

    # an architecture given by name keeps the recorded width; a recorded class count must match the classifier
    b1 = create_model("mnasnet_arch", arch="b1", width_mult=0.5, num_classes=4)
    path = save_checkpoint(b1, str(tmp_path / "b1.ckpt"))
    assert load_model("mnasnet_arch", path, arch="b1").model.width_mult == 0.5
    lying = save_checkpoint(b1, str(tmp_path / "lying.ckpt"), {"num_classes": 7})
    with pytest.raises(CheckpointError, match="records 7 classes but its classifier has 4"):
        load_model(None, lying)
    with pytest.raises(InvalidArgumentError, match="pass a checkpoint path"):
        load_model("mnasnet_050", ema=True)

    # options that would be ignored or fail after writing are refused first
    base = ["--ckpt_path", searched_ckpt, "--format", "ONNX", "--file_name", str(tmp_path / "r")]
    for extra, message in [
        (["--calib_images", "10"], "--calib_images apply to --quantize int8 only"),
        (["--quantize", "int8", "--calib_data", image_folder, "--batch_size", "4"], "dynamic batch dimension"),
        (["--quantize", "int8", "--calib_data", image_folder, "--speed_rounds", "2"], "--speed_rounds times"),
    ]:
        assert export_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not any(name.startswith("r.") for name in os.listdir(tmp_path))

    # labels the classifier cannot output are an error, not a score
    graph = OnnxRuntimeModel(cached_onnx_export(load_model(None, searched_ckpt)))
    x = np.zeros((2, 3, 48, 48), np.float32)
    with pytest.raises(InvalidArgumentError, match="label 9 is out of range for a 4-class model"):
        OnnxEvalStep(graph)(x, np.array([0, 9]))


def test_side_by_side_helpers_label_folders_by_the_models_classes(image_folder):
    """compare.py (export.py --val_data's report): folders get the model's class ids (not their sorted positions),
    unreadable files are listed, top-1 counts argmax hits over batches, throughput covers every runner."""
    from mindcv.deploy.compare import labelled_images, throughput_side_by_side, top1
    from mindcv.errors import InvalidArgumentError

    def preprocess(path):  # the image's folder as its one pixel; the first image of each folder unreadable
        if os.path.basename(path).startswith("0."):
            return None, "broken"
        return np.full((1, 2, 2), "abcd".index(os.path.basename(os.path.dirname(path))), np.float32), None

    names = ["d", "c", "b", "a", "e"]  # the model's classes: folder 'a' is class 3
    data = labelled_images(image_folder, names, preprocess, progress=False)
    folders = data.images[:, 0, 0, 0].astype(int)
    assert len(data.labels) == 20 and data.labels.tolist() == [3 - f for f in folders]
    assert sorted(os.path.basename(os.path.dirname(p)) for p, _ in data.unreadable) == ["a", "b", "c", "d"]
    with pytest.raises(InvalidArgumentError, match=r"class folder\(s\) \['d'\] .* are not classes of the model"):
        labelled_images(image_folder, ["a", "b", "c"], preprocess, progress=False)

    def perfect(batch):
        return np.eye(5)[3 - batch[:, 0, 0, 0].astype(int)]

    assert top1(perfect, data, batch_size=7) == 100.0
    assert top1(lambda batch: np.tile(np.eye(5)[0], (len(batch), 1)), data, batch_size=7) == 25.0  # folder 'd'
    rates = throughput_side_by_side({"a": perfect, "b": perfect}, data.images[:4], rounds=2, min_seconds=0.01)
    assert set(rates) == {"a", "b"} and all(rate > 0 for rate in rates.values())
    with pytest.raises(InvalidArgumentError, match="rounds must be >= 1"):
        throughput_side_by_side({"a": perfect}, data.images[:4], rounds=0)


def test_validate_refuses_a_dataset_with_more_classes_than_the_classifier(tmp_path, image_folder):
    from config import ConfigError, explicit_keys, parse_args
    from validate import main as validate_main

    two = save_checkpoint(create_model("mnasnet_050", num_classes=2), str(tmp_path / "two.ckpt"))
    argv = ["--dataset", "imagefolder", "--data_dir", os.path.dirname(image_folder), "--val_split"]
    argv += [os.path.basename(image_folder), "--model", "mnasnet_050", "--ckpt_path", two, "--progress", "False"]
    try:
        with pytest.raises(ConfigError, match="has 4 classes but the weights' classifier has 2"):
            validate_main(parse_args(argv), explicit_keys(argv))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
