"""infer.py / mindcv.inference on a folder with a readable and an unreadable image."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from infer import main as infer_main
from mindcv.inference import Classifier, imagenet_class_names
from mindcv.models import create_model, save_checkpoint


@pytest.mark.slow
def test_infer_folder_with_checkpoint_class_names(tmp_path, capsys):
    model = create_model("mnasnet_050", num_classes=3)
    ckpt = save_checkpoint(
        model,
        str(tmp_path / "m.ckpt"),
        {"class_names": ["ant", "bee", "cat"], "eval_transform": {"image_resize": 32, "crop_pct": 1.0}},
    )
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
    out = tmp_path / "pred.json"
    assert (
        infer_main(
            [
                str(images),
                "--model",
                "mnasnet_050",
                "--ckpt_path",
                ckpt,
                "--topk",
                "2",
                "--batch_size",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    records = json.load(open(out))
    assert len(records) == 4
    bad = [r for r in records if "error" in r]
    assert len(bad) == 1 and bad[0]["file_name"].endswith("broken.jpg")
    for r in (r for r in records if "error" not in r):
        assert set(r) == {"file_name", "class_ids", "scores", "label_names"}
        assert len(r["class_ids"]) == 2 and r["scores"][0] >= r["scores"][1] and sum(r["scores"]) <= 1.0 + 1e-6
        assert r["label_names"] == [["ant", "bee", "cat"][c] for c in r["class_ids"]]
    assert "3 classified, 1 unreadable" in capsys.readouterr().out


def test_records_default_to_outputs_infer_not_the_current_folder(tmp_path, monkeypatch, capsys):
    model = create_model("mnasnet_050", num_classes=2)
    ckpt = save_checkpoint(
        model, str(tmp_path / "m.ckpt"), {"class_names": ["ant", "bee"], "eval_transform": {"image_resize": 32}}
    )
    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(work / "images" / "a.jpg")
    (work / "images" / "broken.jpg").write_bytes(b"not an image")
    monkeypatch.chdir(work)
    assert infer_main(["images", "--ckpt_path", ckpt]) == 0
    assert sorted(os.listdir(work)) == ["images", "outputs"]
    records = json.loads((work / "outputs" / "infer" / "predictions.json").read_text())
    assert len(records) == 2
    report = (work / "outputs" / "infer" / "predictions.unreadable.tsv").read_text()
    assert len(report.splitlines()) == 1 and report.split("\t")[0].endswith("broken.jpg")
    assert f"records in {os.path.join('outputs', 'infer', 'predictions.json')}" in capsys.readouterr().out


def test_infer_errors_and_bundled_names(tmp_path, capsys):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench"
    assert infer_main([str(tmp_path / "missing.jpg"), "--model", "mnasnet_050"]) == 2
    assert "missing.jpg' does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert infer_main([str(empty), "--model", "mnasnet_050"]) == 2
    assert "no images found" in capsys.readouterr().err
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert infer_main([str(image), "--model", "mnasnet_050"]) == 2
    assert "infer.py: no weights: pass --ckpt_path" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # no abbreviations: --ckpt is not taken for --ckpt_path
        infer_main([str(image), "--model", "mnasnet_050", "--ckpt", "x.ckpt"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --ckpt" in capsys.readouterr().err


def _png_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def model_ckpt(tmp_path):
    model = create_model("mnasnet_050", num_classes=2)
    meta = {"class_names": ["ant", "bee"], "eval_transform": {"image_resize": 32, "crop_pct": 1.0}}
    return save_checkpoint(model, str(tmp_path / "m.ckpt"), meta)


@pytest.mark.slow
def test_infer_reports_bombs_big_images_and_decoder_errors_next_to_its_output(tmp_path, capsys, model_ckpt):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / "small.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(images / "big.png")  # 1200 pixels
    (images / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
    out = tmp_path / "results" / "pred.json"
    out.parent.mkdir()
    argv = [str(images), "--model", "mnasnet_050", "--ckpt_path", model_ckpt, "--output", str(out)]
    assert infer_main(argv + ["--max_image_pixels", "1000"]) == 0
    errors = {os.path.basename(r["file_name"]): r.get("error") for r in json.load(open(out))}
    assert errors["small.png"] is None
    assert errors["big.png"] == (
        "image is 40×30 = 1200 pixels, above the limit of 1000; raise max_image_pixels to read it"
    )
    assert errors["bomb.png"].startswith("image is 100000×100000 = 10000000000 pixels, above the limit of 1000")
    assert errors["broken.jpg"].startswith("truncated JPEG")
    report = tmp_path / "results" / "pred.unreadable.tsv"
    printed = capsys.readouterr().out
    assert "1 classified, 3 unreadable" in printed and str(report) in printed
    lines = dict(line.split("\t", 1) for line in report.read_text().splitlines())
    assert set(lines) == {str(images / n) for n in ("big.png", "bomb.png", "broken.jpg")}
    # the default limit reads big.png; a rerun replaces the report instead of appending to it
    (images / "bomb.png").unlink()
    (images / "broken.jpg").unlink()
    assert infer_main(argv) == 0
    assert all("error" not in r for r in json.load(open(out))) and not report.exists()
    with pytest.raises(SystemExit):
        infer_main(argv + ["--max_image_pixels", "0"])


@pytest.mark.slow
def test_classifier_turns_any_per_file_failure_into_an_error_record(tmp_path, monkeypatch, model_ckpt):
    from mindcv.data.image_folder import UnreadableFiles, cv2

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    poison = {(images / "1.png").read_bytes(): cv2.error("boom"), (images / "2.png").read_bytes(): MemoryError()}
    real = cv2.imdecode

    def imdecode(buf, flags):
        if bytes(buf) in poison:
            raise poison[bytes(buf)]
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    classifier = Classifier("mnasnet_050", model_ckpt, topk=1, batch_size=2, max_image_pixels=10_000)

    def failing_op(image):  # the second decoded image (3.png) breaks the preprocessing
        failing_op.calls += 1
        if failing_op.calls == 2:
            raise RuntimeError("resize failed")
        return image

    failing_op.calls = 0
    monkeypatch.setattr(classifier, "ops", [failing_op] + list(classifier.ops))
    report = UnreadableFiles()
    records = classifier.predict([str(images / f"{i}.png") for i in range(4)], report=report)
    errors = [r.get("error") for r in records]
    assert errors[0] is None and errors[1].startswith("decoder failed") and errors[2].startswith("out of memory")
    assert errors[3] == "preprocessing failed (RuntimeError: resize failed)"
    assert records[0]["label_names"][0] in ("ant", "bee")
    assert [p for p, _ in report.entries()] == [str(images / f"{i}.png") for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
        Classifier("mnasnet_050", model_ckpt, max_image_pixels=-1)


@pytest.mark.slow
def test_weights_without_metadata_keep_their_own_classifier(tmp_path):
    """A foreign 3-class file (no mindcv metadata) used to get a random 1000-class head and exit 0."""
    from safetensors.numpy import save_file

    from mindcv.models.checkpoint import model_state_dict

    path = str(tmp_path / "three.safetensors")
    save_file(model_state_dict(create_model("mnasnet_050", num_classes=3)), path)
    classifier = Classifier("mnasnet_050", path, topk=2)
    assert classifier.model.num_classes == 3 and classifier.class_names == ["0", "1", "2"]
    image = tmp_path / "one.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(image)
    (record,) = classifier.predict([str(image)])
    assert set(record["class_ids"]) <= {0, 1, 2}
    from export import main as export_main

    assert export_main(["--model", "mnasnet_050", "--ckpt_path", path, "--num_classes", "1000"]) == 2
    with pytest.raises(SystemExit):
        infer_main([str(image), "--model", "mnasnet_050", "--ckpt_path", path, "--topk", "0"])
