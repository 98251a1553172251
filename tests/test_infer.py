"""infer.py / mindcv.inference on a folder with a readable and an unreadable image."""

import json

import numpy as np
from PIL import Image

from infer import main as infer_main
from mindcv.inference import imagenet_class_names
from mindcv.models import create_model, save_checkpoint


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


def test_infer_errors_and_bundled_names(tmp_path, capsys):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench"
    assert infer_main([str(tmp_path / "missing.jpg"), "--model", "mnasnet_050"]) == 2
    assert "missing.jpg' does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert infer_main([str(empty), "--model", "mnasnet_050"]) == 2
    assert "no images found" in capsys.readouterr().err
