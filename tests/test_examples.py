"""The examples run as written against the demo dataset: fine-tune, feature extraction, inference on a folder."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from mindcv.data.demo import DEMO_CLASSES, ensure_demo_dataset
from mindcv.models.checkpoint import read_checkpoint, read_checkpoint_metadata

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> str:
    return ensure_demo_dataset(str(tmp_path_factory.mktemp("demo")))["root"]


@pytest.fixture(scope="module")
def finetuned(demo_root, tmp_path_factory) -> str:
    """examples/finetune_imagefolder.py from the torchvision-format fixture weights, backbone frozen."""
    out = str(tmp_path_factory.mktemp("finetune") / "finetuned.ckpt")
    source = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_mnasnet0.5.safetensors")
    metrics = load_example("finetune_imagefolder").main(
        ["--data_dir", demo_root, "--ckpt_path", source, "--freeze_backbone", "--epochs", "1"]
        + ["--image_size", "64", "--output", out, "--no_progress"]
    )
    assert metrics["num_samples"] == 400 and 0.0 <= metrics["top1"] <= 100.0
    return out


def test_finetune_keeps_the_frozen_backbone_and_records_the_classes(finetuned):
    from mindcv.models import create_model

    meta = read_checkpoint_metadata(finetuned)
    assert meta["class_names"] == sorted(DEMO_CLASSES) and meta["num_classes"] == len(DEMO_CLASSES)
    tuned = read_checkpoint(finetuned)[0]
    source = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_mnasnet0.5.safetensors")
    start = create_model("mnasnet_050", num_classes=len(DEMO_CLASSES), checkpoint_path=source)
    start_params = {p.name: p.asnumpy().copy() for p in start.get_parameters()}
    backbone = [n for n in start_params if not n.startswith("classifier.")]
    assert len(backbone) > 100
    for name in backbone:
        np.testing.assert_array_equal(np.asarray(tuned[name]), start_params[name], err_msg=name)
    assert np.abs(np.asarray(tuned["classifier.weight"]) - start_params["classifier.weight"]).max() > 1e-4


def test_infer_folder_labels_every_image_and_reports_unreadable_files(finetuned, demo_root, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    class_dir = os.path.join(demo_root, "val", sorted(DEMO_CLASSES)[0])
    for name in sorted(os.listdir(class_dir))[:5]:
        shutil.copy(os.path.join(class_dir, name), folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "preds.json"
    records = load_example("infer_folder").main(
        ["--ckpt_path", finetuned, "--folder", str(folder), "--out", str(out), "--topk", "3"]
    )
    saved = json.loads(out.read_text())
    assert saved == records and len(saved) == 6
    broken = [r for r in saved if r["file_name"].endswith("broken.jpg")]
    assert len(broken) == 1 and "error" in broken[0]
    for record in saved:
        if record is broken[0]:
            continue
        assert set(record) == {"file_name", "class_ids", "scores", "label_names"}
        assert len(record["class_ids"]) == 3 and record["scores"] == sorted(record["scores"], reverse=True)
        assert [sorted(DEMO_CLASSES)[i] for i in record["class_ids"]] == record["label_names"]


def test_feature_extraction_maps_embeddings_and_downstream_classifier(finetuned, demo_root):
    result = load_example("feature_extraction").main(
        ["--ckpt_path", finetuned, "--data_dir", demo_root, "--image_size", "64"]
    )
    assert result["feature_shapes"] == [(1, 8, 32, 32), (1, 16, 16, 16), (1, 24, 8, 8), (1, 48, 4, 4), (1, 160, 2, 2)]
    assert result["embedding_dim"] == 1280 and 0.0 <= result["accuracy"] <= 100.0


def test_nearest_class_mean_separates_separable_embeddings():
    module = load_example("feature_extraction")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 5
    train_y = np.repeat(np.arange(4), 20)
    test_y = np.repeat(np.arange(4), 5)
    train_x = centres[train_y] + rng.standard_normal((80, 16)) * 0.3
    test_x = centres[test_y] + rng.standard_normal((20, 16)) * 0.3
    np.testing.assert_array_equal(module.nearest_class_mean(train_x, train_y, test_x), test_y)
