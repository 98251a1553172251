"""The examples run as written against the demo dataset: fine-tune, feature extraction, inference on a folder."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import sys

import numpy as np
import pytest
import yaml

from mindcv.data.demo import DEMO_CLASSES, ensure_demo_dataset
from mindcv.models.checkpoint import read_checkpoint, read_checkpoint_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def load_example(name: str):
    if EXAMPLES not in sys.path:  # where a script's own folder is when it runs: its sibling modules import
        sys.path.insert(0, EXAMPLES)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _readme_blocks(section: str = "") -> list:
    """The bash/python code blocks of README.md (of one ``## section`` when given)."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    if section:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|python)?\n(.*?)```", text, re.S)


def test_readme_example_commands_run_as_written_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    """Every ``python examples/...`` line of the README, in order, from a clone's root: its inputs exist or an
    earlier line makes them, and no argument is a placeholder."""
    commands = [
        shlex.split(line, comments=True)
        for block in _readme_blocks("Examples")
        for line in block.splitlines()
        if line.startswith("python examples/")
    ]
    assert [c[1] for c in commands] == [
        "examples/finetune_imagefolder.py",
        "examples/feature_extraction.py",
        "examples/infer_folder.py",
    ]
    os.symlink(os.path.join(REPO, "tests"), tmp_path / "tests")  # a clone's root: the committed files, no outputs
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as missing:
        load_example("finetune_imagefolder").parse_args([])
    assert missing.value.code == 2 and "no weights to fine-tune: pass --ckpt_path" in capsys.readouterr().err
    finetune = load_example("finetune_imagefolder").parse_args(commands[0][2:])
    assert os.path.isfile(finetune.ckpt_path) and not finetune.data_dir  # demo data: made on first use
    for name, argv in ((c[1][len("examples/") : -3], c[2:]) for c in commands[1:]):
        with pytest.raises(SystemExit) as missing:  # before the fine-tuning: one line saying what to pass
            load_example(name).parse_args(argv)
        assert missing.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "run examples/finetune_imagefolder.py first" in err
    os.makedirs(os.path.dirname(finetune.output))
    open(finetune.output, "wb").close()  # what the first command writes
    for name, argv in ((c[1][len("examples/") : -3], c[2:]) for c in commands[1:]):
        args = load_example(name).parse_args(argv)
        assert args.ckpt_path == finetune.output == os.path.join("outputs", "examples", "finetuned.ckpt")
    assert load_example("infer_folder").parse_args([]).folder is None  # the demo dataset's val split


def test_readme_names_only_files_a_clone_has_or_a_readme_command_writes():
    """Weight files, recipes and results in README code blocks: committed, or written by a command it shows."""
    quickstart = yaml.safe_load(open(os.path.join(REPO, "configs", "mnasnet", "quickstart_demo_cpu.yaml")))
    search = yaml.safe_load(open(os.path.join(REPO, "configs", "nas", "demo_search.yaml")))
    blocks = _readme_blocks()
    written = [os.path.normpath(quickstart["ckpt_save_dir"]), os.path.normpath(search["output_dir"])]
    written += [os.path.join("outputs", "examples", "finetuned.ckpt"), os.path.join("outputs", "examples")]
    lines = [line for block in blocks for line in block.splitlines()]
    converted = [shlex.split(line, comments=True) for line in lines if "mindcv-convert " in line]
    written += [argv[2] for argv in converted]  # mindcv-convert SRC DST
    names = {
        token
        for block in blocks
        for token in re.findall(r"[\w./~-]+\.(?:pth|pt|bin|safetensors|ckpt|onnx|mindir|json|yaml)\b", block)
    }
    assert any(n.endswith(".pth") or n.endswith(".safetensors") for n in names) and len(names) > 10
    missing = [
        n
        for n in sorted(names)
        if not os.path.isfile(os.path.join(REPO, n)) and not any(n == w or n.startswith(w + os.sep) for w in written)
    ]
    assert not missing, f"README names files a fresh clone does not have and no README command writes: {missing}"


@pytest.mark.slow
def test_example_outputs_default_to_outputs_examples(finetuned, tmp_path, monkeypatch):
    """infer_folder.py with no arguments: the fine-tuned checkpoint on the demo val split, records in outputs/."""
    work = tmp_path / "work"  # (tmp_path also holds this test's MINDCV_HOME)
    os.makedirs(work / "outputs" / "examples")
    shutil.copy(finetuned, work / "outputs" / "examples" / "finetuned.ckpt")
    monkeypatch.chdir(work)
    records = load_example("infer_folder").main([])
    saved = json.loads((work / "outputs" / "examples" / "predictions.json").read_text())
    assert saved == records and len(records) == 400 and not any("error" in r for r in records)
    assert sorted(os.listdir(work)) == ["outputs"]


@pytest.mark.slow
@pytest.mark.slow
def test_finetuning_converted_weights_learns_well_above_chance(demo_root, tmp_path):
    # the committed torchvision-layout weights are random: what is tested is that fine-tuning learns at all (with
    # ImageNet's BN momentum 0.99 the moving statistics stayed the file's, and validation stuck at 10.00%)
    source = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_mnasnet0.5.safetensors")
    metrics = load_example("finetune_imagefolder").main(
        ["--data_dir", demo_root, "--ckpt_path", source, "--epochs", "2", "--image_size", "64"]
        + ["--output", str(tmp_path / "tuned.ckpt"), "--no_progress"]
    )
    chance = 100.0 / len(DEMO_CLASSES)
    # 5 points is over 3 standard errors of a 400-image score at 10%; seed 0 measured 17.75% (27.50% seed 1)
    assert metrics["num_samples"] == 400 and metrics["top1"] >= chance + 5, metrics
