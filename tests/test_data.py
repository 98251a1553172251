"""Datasets, transforms and loaders on generated files in the real formats (no network)."""

import gzip
import hashlib
import http.server
import io
import logging
import os
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

import mindspore as ms
import mindspore.dataset.vision as vision
from mindspore import Tensor, nn

from mindcv.data import (
    ShardSampler,
    UnreadableFiles,
    UnreadableImageError,
    create_dataset,
    create_loader,
    create_transforms,
    ensure_demo_dataset,
    list_datasets,
    standard_datasets,
)
from mindcv.data.transforms_factory import DecodeImage
from mindcv.io.download import DownloadError
from mindcv.loss import JSDCrossEntropy
from mindcv.utils import TrainStep


def _rows(dataset, epochs=1):
    it = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    return [tuple(col for col in row) for row in it]


@pytest.fixture
def image_folder(tmp_path):
    """root/{train,val}/{ant,bee,cat}/ with JPEGs and PNGs of different sizes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("cat", "ant", "bee"):  # created unsorted on purpose
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                img.save(folder / (f"{i}.png" if i == 0 else f"{i}.jpg"))
    return tmp_path


def test_image_folder_classes_shapes_and_labels(image_folder):
    train = create_dataset("imagenet", root=str(image_folder), split="train", shuffle=False)
    assert train.class_names == ["ant", "bee", "cat"] and train.num_classes() == 3
    rows = _rows(train)
    assert len(rows) == 18 and train.get_dataset_size() == 18
    assert [int(r[1]) for r in rows] == [0] * 6 + [1] * 6 + [2] * 6
    assert all(r[0].dtype == np.uint8 and r[0].ndim == 3 and r[0].shape[2] == 3 for r in rows)
    loader = create_loader(
        train, 4, drop_remainder=True, is_training=True, transform=create_transforms("imagenet", 32, is_training=True)
    )
    batches = _rows(loader)
    assert len(batches) == 4
    images, labels = batches[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
    val = create_loader(
        create_dataset("imagenet", root=str(image_folder), split="val"), 4, transform=create_transforms("imagenet", 32)
    )
    assert sum(len(b[1]) for b in _rows(val)) == 9  # the last partial batch is kept


def test_an_upstream_worker_count_above_the_cpus_is_lowered_with_a_warning(image_folder, caplog, monkeypatch):
    # upstream's recipes ask for 8 workers; MindSpore itself rejects more workers than CPUs
    monkeypatch.setattr(logging.getLogger("mindcv"), "propagate", True)  # set_logger elsewhere may have cut it
    asked = (os.cpu_count() or 1) + 6
    for bad in (2.5, True, "2"):
        with pytest.raises(ValueError, match=r"num_parallel_workers must be an integer >= 1 \(or None for 1\), got"):
            create_dataset("imagenet", root=str(image_folder), num_parallel_workers=bad)
    with caplog.at_level(logging.WARNING):
        dataset = create_dataset("imagenet", root=str(image_folder), num_parallel_workers=asked)
    assert f"num_parallel_workers={asked} exceeds this machine's" in caplog.text
    assert sum(1 for _ in dataset.create_tuple_iterator()) == dataset.get_dataset_size() > 0


def test_structural_errors_are_immediate_and_explicit(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="dataset root '.*nowhere' does not exist"):
        create_dataset("imagenet", root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"split folder '.*test' does not exist; folders in .*: train, val"):
        create_dataset("imagenet", root=str(image_folder), split="test")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no class folders"):
        create_dataset("imagenet", root=str(tmp_path / "flat"))
    (image_folder / "train" / "empty_class").mkdir()
    with pytest.raises(ValueError, match="class folder '.*empty_class' contains no images"):
        create_dataset("imagenet", root=str(image_folder))
    with pytest.raises(ValueError, match="cannot be downloaded"):
        create_dataset("imagenet", root=str(image_folder), download=True)
    with pytest.raises(ValueError, match="num_parallel_workers must be >= 1, got 0"):
        create_dataset("imagenet", root=str(image_folder), num_parallel_workers=0)
    with pytest.raises(TypeError, match="unexpected argument.*bogus"):
        create_dataset("imagenet", root=str(image_folder), bogus=1)


@pytest.fixture
def messy_folder(tmp_path):
    """The kinds of files ImageNet really contains, next to good ones."""
    rng = np.random.default_rng(1)
    good = tmp_path / "train" / "good"
    odd = tmp_path / "train" / "odd"
    good.mkdir(parents=True)
    odd.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(odd / "gray.jpg")
    Image.new("CMYK", (32, 32), (10, 200, 30, 5)).save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)).save(odd / "png_in_disguise.JPEG", format="PNG")
    data = (good / "0.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (odd / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(300) + b"\xff\xd9")
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "notes.txt").write_text("not an image")
    return tmp_path


def test_unreadable_files_are_reported_and_skipped(messy_folder):
    train = create_dataset("imagenet", root=str(messy_folder), shuffle=False)
    rows = _rows(train)
    assert len(rows) == 10  # every index yields a sample; unreadable ones are replaced by readable ones
    assert all(r[0].shape[2] == 3 for r in rows)  # grayscale, CMYK and RGBA-PNG come out as RGB
    reasons = dict(train.unreadable.entries())
    names = {os.path.basename(p): r for p, r in reasons.items()}
    assert set(names) == {"truncated.jpg", "garbage.jpg", "empty.jpg", "notes.txt"}
    assert names["truncated.jpg"].startswith("truncated JPEG") and names["empty.jpg"] == "empty file"
    assert names["garbage.jpg"].startswith("decoder failed") and "not an image file" in names["notes.txt"]
    assert train.unreadable.count() == 4


def test_unreadable_files_in_evaluation_are_excluded_not_duplicated(messy_folder):
    val = create_dataset("imagenet", root=str(messy_folder), split="train", is_training=False, shuffle=False)
    labels = [int(r[1]) for r in _rows(val)]
    assert labels.count(-1) == 3  # the three undecodable images are marked for the metrics to ignore
    assert len(labels) == 10


def test_strict_mode_fails_fast_with_the_path(messy_folder):
    strict = create_dataset("imagenet", root=str(messy_folder), strict=True, shuffle=False)
    with pytest.raises(RuntimeError, match=r"unreadable image '.*(truncated|garbage|empty)\.jpg'"):
        _rows(strict)
    from mindcv.data.image_folder import ImageFileSource

    source = ImageFileSource([(str(messy_folder / "train" / "odd" / "empty.jpg"), 0)], None, strict=True)
    with pytest.raises(UnreadableImageError, match="empty file"):
        source[0]


def _write_cifar(path, n, label_bytes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10 if label_bytes == 1 else 100, (n, label_bytes), dtype=np.uint8)
    pixels = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
    path.write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return labels[:, -1], pixels.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_binary_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = [_write_cifar(folder / f"data_batch_{i}.bin", 7, 1, i) for i in range(1, 6)]
    test_labels, test_images = _write_cifar(folder / "test_batch.bin", 5, 1, 9)
    train = create_dataset("cifar10", root=str(tmp_path), split="train", shuffle=False)
    assert train.num_classes() == 10 and train.class_names[0] == "airplane"
    rows = _rows(train)
    assert len(rows) == 35
    np.testing.assert_array_equal(rows[7][0], expected[1][1][0])
    assert [int(r[1]) for r in rows[:7]] == expected[0][0].tolist()
    test = _rows(create_dataset("cifar10", root=str(tmp_path), split="test", shuffle=False))
    np.testing.assert_array_equal(np.stack([r[0] for r in test]), test_images)
    loader = create_loader(
        create_dataset("cifar10", root=str(tmp_path)),
        5,
        is_training=True,
        transform=create_transforms("cifar10", 32, is_training=True),
    )
    assert _rows(loader)[0][0].shape == (5, 3, 32, 32)
    (folder / "test_batch.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(ValueError, match="test_batch.bin' is not a CIFAR binary file"):
        create_dataset("cifar10", root=str(tmp_path), split="test")
    with pytest.raises(ValueError, match="has no split 'holdout'"):
        create_dataset("cifar10", root=str(tmp_path), split="holdout")


def test_cifar100_uses_fine_labels(tmp_path):
    fine, _ = _write_cifar(tmp_path / "train.bin", 6, 2, 3)
    _write_cifar(tmp_path / "test.bin", 2, 2, 4)
    rows = _rows(create_dataset("cifar100", root=str(tmp_path), shuffle=False))
    assert [int(r[1]) for r in rows] == fine.tolist()
    with pytest.raises(FileNotFoundError, match="download=True"):
        create_dataset("cifar100", root=str(tmp_path / "missing"))


def _idx(array, dims):
    header = bytes([0, 0, 0x08, dims]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_idx_format(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (9, 28, 28))
    labels = rng.integers(0, 10, 9)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 3)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels, 1))
    rows = _rows(create_dataset(name, root=str(tmp_path), shuffle=False))
    assert len(rows) == 9 and rows[0][0].shape == (28, 28, 1)
    np.testing.assert_array_equal(rows[3][0][..., 0], images[3])
    assert [int(r[1]) for r in rows] == labels.tolist()
    loader = create_loader(
        create_dataset(name, root=str(tmp_path)), 3, transform=create_transforms(name, 32, is_training=True)
    )
    assert _rows(loader)[0][0].shape == (3, 1, 32, 32)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels, 1)[:-3])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte' is truncated"):
        create_dataset(name, root=str(tmp_path))


@pytest.mark.slow
def test_download_checks_md5_and_reports_offline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    serve = tmp_path / "serve"
    serve.mkdir()
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(_idx(rng.integers(0, 255, (4, 28, 28)), 3)),
        "train-labels-idx1-ubyte.gz": gzip.compress(_idx(rng.integers(0, 10, 4), 1)),
    }
    for fname, data in files.items():
        (serve / fname).write_bytes(data)
    handler_cls = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler_cls(*a, directory=str(serve)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    good = tuple((base + f, hashlib.md5(d).hexdigest()) for f, d in files.items())
    spec = standard_datasets.DATASET_SPECS["mnist"]
    try:
        monkeypatch.setitem(standard_datasets.DATASET_SPECS, "mnist", spec.__class__(**{**spec.__dict__, "urls": good}))
        dataset = create_dataset("mnist", root=str(tmp_path / "mnist"), download=True)
        assert dataset.get_dataset_size() == 4
        bad = ((good[0][0], "0" * 32),)
        monkeypatch.setitem(standard_datasets.DATASET_SPECS, "mnist", spec.__class__(**{**spec.__dict__, "urls": bad}))
        with pytest.raises(DownloadError, match="is not the published 0000"):
            create_dataset("mnist", root=str(tmp_path / "other"), download=True)
        offline = (("http://127.0.0.1:9/train-images-idx3-ubyte.gz", "0" * 32),)
        monkeypatch.setitem(
            standard_datasets.DATASET_SPECS, "mnist", spec.__class__(**{**spec.__dict__, "urls": offline})
        )
        with pytest.raises(DownloadError, match="No network access"):
            create_dataset("mnist", root=str(tmp_path / "third"), download=True)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_a_hostile_dataset_archive_is_refused_and_writes_nothing_outside(tmp_path, monkeypatch):
    """A CIFAR archive whose member is '/abs/…' or '../…' (tarfile.extractall writes both) is refused whole."""
    import io
    import tarfile

    from mindcv.io.download import UnsafeArchiveError

    serve, root = tmp_path / "serve", tmp_path / "data" / "cifar10"
    serve.mkdir()
    outside = tmp_path / "escaped.bin"
    for name, member in (("abs.tar.gz", str(outside)), ("dots.tar.gz", "../../escaped.bin")):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        (serve / name).write_bytes(buffer.getvalue())
    handler_cls = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler_cls(*a, directory=str(serve)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    spec = standard_datasets.DATASET_SPECS["cifar10"]
    try:
        for name in ("abs.tar.gz", "dots.tar.gz"):
            urls = ((base + name, hashlib.md5((serve / name).read_bytes()).hexdigest()),)
            monkeypatch.setitem(
                standard_datasets.DATASET_SPECS, "cifar10", spec.__class__(**{**spec.__dict__, "urls": urls})
            )
            with pytest.raises(UnsafeArchiveError, match=name):
                standard_datasets.download_standard_dataset("cifar10", str(root))
            assert not outside.exists() and not (tmp_path / "data" / "escaped.bin").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one(image_folder):
    transform = create_transforms("imagenet", 32, is_training=True)
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        loader = create_loader(
            create_dataset("imagenet", root=str(image_folder)),
            6,
            drop_remainder=True,
            is_training=True,
            mixup=mixup,
            cutmix=cutmix,
            cutmix_prob=1.0,
            num_classes=3,
            transform=transform,
            label_smoothing=0.1,
        )
        for _images, labels in _rows(loader):
            assert labels.shape == (6, 3) and labels.dtype == np.float32
            np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
            assert labels.min() >= 0.1 / 3 - 1e-6  # smoothing is folded in
        assert not np.all(
            np.isin(np.round(_rows(loader)[0][1], 4), np.round([0.1 / 3, 1 - 0.2 / 3], 4))
        )  # really mixed


def test_train_shards_cover_everything_with_equal_lengths():
    shards = [ShardSampler(11, 3, r, shuffle=True, seed=5, pad=True) for r in range(3)]
    parts = [s.indices() for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(sum(parts, [])) == set(range(11))


@pytest.mark.parametrize("total, shards, block", [(1200, 2, 16), (11, 3, 2), (8, 2, 4)])
def test_block_shards_have_equal_lengths_and_cover_everything(total, shards, block):
    parts = [ShardSampler(total, shards, r, seed=1, block_size=block).indices() for r in range(shards)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) >= -(-total // shards)
    assert len(parts[0]) % block == 0
    assert set(sum(parts, [])) == set(range(total))
    order = ShardSampler(total, seed=1).indices()  # one process: micro-batch m of step s is block s * shards + m
    assert parts[1][:block] == order[block : 2 * block]


def test_eval_shards_are_an_exact_partition(image_folder):
    full = sorted(
        int(r[1]) * 100 + i
        for i, r in enumerate(
            _rows(create_dataset("imagenet", root=str(image_folder), split="train", shuffle=False, is_training=False))
        )
    )
    pieces = []
    for rank in range(4):
        shard = create_dataset(
            "imagenet",
            root=str(image_folder),
            split="train",
            shuffle=False,
            num_shards=4,
            shard_id=rank,
            is_training=False,
        )
        pieces.append(shard.shard_sampler.indices())
    flat = sorted(sum(pieces, []))
    assert flat == list(range(18)) and len(full) == 18  # every sample exactly once, no padding duplicates
    assert [len(p) for p in pieces] == [5, 5, 4, 4]


def test_seeded_order_is_deterministic_per_epoch():
    a, b = ShardSampler(50, seed=3), ShardSampler(50, seed=3)
    assert a.indices() == b.indices()
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first and sorted(a.indices()) == list(range(50))
    b.set_epoch(1)
    assert a.indices() == b.indices()
    assert ShardSampler(50, seed=4).indices() != first
    assert ShardSampler(10, shuffle=False).indices() == list(range(10))


def test_repeated_augmentation_puts_copies_in_a_batch(image_folder):
    train = create_dataset("imagenet", root=str(image_folder), num_aug_repeats=3)
    indices = train.shard_sampler.indices()
    assert len(indices) == 18 and all(indices[i] == indices[i + 1] == indices[i + 2] for i in range(0, 18, 3))


def test_num_samples_limits_the_epoch(image_folder):
    assert create_dataset("imagenet", root=str(image_folder), num_samples=5).get_dataset_size() == 5


@pytest.mark.parametrize(
    "policy",
    [
        "randaug-m9-mstd0.5",
        "randaug-m7-n3",
        "randaug-m9-mstd0.5-inc1",
        "autoaug",
        "autoaugr",
        "trivialaugwide",
        "3a",
        "augmix",
        "augmix-m5-w4-d2",
    ],
)
def test_auto_augment_policies_run(policy):
    ops = create_transforms("imagenet", 48, is_training=True, auto_augment=policy, re_prob=0.5)
    img = np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    for op in ops:
        img = op(img)
    assert img.shape == (3, 48, 48) and img.dtype == np.float32


@pytest.mark.parametrize(
    "policy, needle",
    [
        ("randaug-x3", "unknown option 'x3'"),
        ("augmax", "unknown policy 'augmax'"),
        ("randaug-inc0", "inc1"),
        ("augmix-q1", "bad section 'q1'"),
        ("3a-m5", "bad section 'm5'"),
    ],
)
def test_unknown_policy_lists_the_valid_ones(policy, needle):
    with pytest.raises(ValueError, match=needle) as err:
        create_transforms("imagenet", 224, is_training=True, auto_augment=policy)
    assert "randaug[-m<magnitude" in str(err.value) and "trivialaugwide" in str(err.value)


@pytest.mark.parametrize("policy", ["3a", "augmix-m3-w2"])
def test_python_policies_run_in_the_loader(image_folder, policy):
    """3a and AugMix have no MindSpore op: create_transforms gives Python ops, which run in the map workers."""
    train = create_dataset("imagenet", root=str(image_folder))
    ops = create_transforms("imagenet", 32, is_training=True, auto_augment=policy)
    loader = create_loader(train, batch_size=4, is_training=True, transform=ops, num_parallel_workers=1)
    images, labels = next(loader.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32 and np.isfinite(images).all()
    assert labels.shape == (4,)


def test_random_erasing_erases_a_rectangle_in_all_channels():
    ops = create_transforms("imagenet", 32, is_training=True, re_prob=1.0, re_value=0, color_jitter=0, hflip=0)
    img = np.full((40, 40, 3), 200, np.uint8)
    for op in ops:
        img = op(img)
    erased = img == 0
    assert erased.any() and (erased[0] == erased[1]).all() and (erased[1] == erased[2]).all()
    rows, cols = np.where(erased[0])
    assert erased[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle


def test_eval_transform_follows_crop_pct_and_interpolation():
    ops = create_transforms("imagenet", 224, crop_pct=0.875, interpolation="bicubic")
    assert isinstance(ops[0], DecodeImage)  # the decode step leads every list, as upstream's Decode
    assert isinstance(ops[1], vision.Resize) and isinstance(ops[2], vision.CenterCrop)
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    resized = ops[1](img)
    assert min(resized.shape[:2]) == 256
    out = img
    for op in ops:
        out = op(out)
    assert out.shape == (3, 224, 224)
    with pytest.raises(ValueError, match="unknown interpolation 'lanczos'; valid: nearest, bilinear, bicubic"):
        create_transforms("imagenet", 224, interpolation="lanczos")


def test_demo_dataset_is_generated_once_and_learnable_shaped(tmp_path):
    info = ensure_demo_dataset(str(tmp_path))
    again = ensure_demo_dataset(str(tmp_path))
    assert info["generated"] and not again["generated"] and info["root"] == again["root"]
    train = create_dataset("demo", root=str(tmp_path))
    val = create_dataset("demo", root=str(tmp_path), split="val")
    assert train.num_classes() == 10 and train.get_dataset_size() == 1200 and val.get_dataset_size() == 400
    jpgs = [f for _, _, fs in os.walk(info["root"]) for f in fs]
    assert len(jpgs) == 1600 and all(f.endswith(".jpg") for f in jpgs)
    first = open(os.path.join(info["root"], "train", "circle", "circle_0000.jpg"), "rb").read()
    other = ensure_demo_dataset(str(tmp_path / "second"))
    assert (
        open(os.path.join(other["root"], "train", "circle", "circle_0000.jpg"), "rb").read() == first
    )  # deterministic
    assert "demo" in list_datasets()


def test_demo_dataset_sizes_extend_the_small_set_and_refuse_bad_sizes(tmp_path):
    small = ensure_demo_dataset(str(tmp_path))
    larger = ensure_demo_dataset(str(tmp_path), train_per_class=150)
    assert larger["root"] != small["root"] and larger["num_images"] == 10 * (150 + 50)
    for split, count in (("train", 120), ("val", 40)):  # one seeded stream per class: the small set is a prefix
        for i in (0, count - 1):
            name = os.path.join(split, "ring", f"ring_{i:04d}.jpg")
            assert (
                open(os.path.join(small["root"], name), "rb").read()
                == open(os.path.join(larger["root"], name), "rb").read()
            )
    assert len(os.listdir(os.path.join(larger["root"], "val", "ring"))) == 50
    assert {"demo", "demo_large"} <= set(list_datasets())
    for bad in (0, -3, 2.5, True, "600"):
        with pytest.raises(ValueError, match="train_per_class must be a whole number >= 1"):
            ensure_demo_dataset(str(tmp_path), train_per_class=bad)
    with pytest.raises(ValueError, match=r"'demo_larg' is read as an ImageFolder tree .* no root: .*demo, demo_large"):
        create_dataset("demo_larg")  # a typo is not silently a folder dataset
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".demo-")]


def test_loader_reduces_workers_to_the_cpu_count(image_folder, caplog):
    loader = create_loader(
        create_dataset("imagenet", root=str(image_folder)),
        6,
        transform=create_transforms("imagenet", 32),
        num_parallel_workers=64,
    )
    assert sum(len(b[1]) for b in _rows(loader)) == 18
    assert any("exceeds this machine's" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------
# hardening: symbolic links, decompression bombs, decoder errors, where reports go


def _img(path, h=12, w=12, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _labelled(samples, split):
    """``{relative path: label}``, asserting that no path appears twice."""
    rel = [(os.path.relpath(p, split), label) for p, label in samples]
    assert len({p for p, _ in rel}) == len(rel), f"duplicate samples: {rel}"
    return dict(rel)


def _reported(unreadable):
    return {p: r for p, r in unreadable.entries()}


@pytest.fixture
def two_classes(tmp_path):
    """root/train/{a,b}/ with 3 images each (a also has sub/s.jpg)."""
    split = tmp_path / "root" / "train"
    for cls in ("a", "b"):
        for i in range(3):
            _img(split / cls / f"{i}.jpg", seed=i)
    _img(split / "a" / "sub" / "s.jpg")
    return split


@pytest.mark.timeout(120)  # a walk that follows the loops never ends: pytest-timeout fails it, naming the test
def test_symlink_to_an_ancestor_neither_loops_nor_relabels(two_classes):
    split = two_classes
    (split / "a" / "up").symlink_to(split)  # the split root: would put b's images under a, forever
    (split / "a" / "sub" / "loop").symlink_to(split / "a")  # its own class folder
    (split / "a" / "sub" / "self").symlink_to(split / "a" / "sub")  # its own parent
    (split / "a" / "root").symlink_to(split.parent)  # the dataset root, above the split
    train = create_dataset("imagenet", root=str(split.parent), shuffle=False)
    rows = _rows(train)
    assert train.get_dataset_size() == 7 and [int(r[1]) for r in rows] == [0] * 4 + [1] * 3
    from mindcv.data.image_folder import find_classes, make_samples

    labels = _labelled(make_samples(str(split), find_classes(str(split))[1]), split)
    expected = {"a/0.jpg": 0, "a/1.jpg": 0, "a/2.jpg": 0, "a/sub/s.jpg": 0, "b/0.jpg": 1, "b/1.jpg": 1, "b/2.jpg": 1}
    assert labels == expected
    reasons = _reported(train.unreadable)
    for link in ("a/up", "a/root"):
        assert "contains the whole split folder" in reasons[str(split / link)]
    for link in ("a/sub/loop", "a/sub/self"):
        assert "(a loop)" in reasons[str(split / link)]


def test_symlinks_to_another_class_are_refused_and_named(two_classes):
    split = two_classes
    (split / "a" / "to_b").symlink_to(split / "b")  # a sibling class folder
    (split / "b" / "deep").mkdir()
    _img(split / "b" / "deep" / "d.jpg")
    (split / "a" / "into_b").symlink_to(split / "b" / "deep")  # a folder inside a sibling class
    (split / "a" / "b0.jpg").symlink_to(split / "b" / "0.jpg")  # a file of a sibling class
    unreadable = UnreadableFiles()
    from mindcv.data.image_folder import find_classes, make_samples

    labels = _labelled(make_samples(str(split), find_classes(str(split))[1], report=unreadable), split)
    assert {p for p, label in labels.items() if label == 0} == {"a/0.jpg", "a/1.jpg", "a/2.jpg", "a/sub/s.jpg"}
    assert {p for p, label in labels.items() if label == 1} == {"b/0.jpg", "b/1.jpg", "b/2.jpg", "b/deep/d.jpg"}
    reasons = _reported(unreadable)
    for link in ("a/to_b", "a/into_b", "a/b0.jpg"):
        assert "symbolic link into class 'b'" in reasons[str(split / link)], reasons
    # the same when the link is in the later class (b -> a): the order of classes does not matter
    (split / "b" / "to_a").symlink_to(split / "a")
    labels = _labelled(make_samples(str(split), find_classes(str(split))[1]), split)
    assert sum(label == 1 for label in labels.values()) == 4 and sum(label == 0 for label in labels.values()) == 4


def test_two_class_folders_that_are_one_real_folder_are_an_error(tmp_path):
    store = tmp_path / "store"
    for i in range(2):
        _img(store / "same" / f"{i}.jpg")
    split = tmp_path / "root" / "train"
    split.mkdir(parents=True)
    (split / "x").symlink_to(store / "same")
    (split / "y").symlink_to(store / "same")
    with pytest.raises(ValueError, match=r"class folders 'x' and 'y' .* are the same folder .*two labels"):
        create_dataset("imagenet", root=str(split.parent))
    (split / "y").unlink()
    (split / "y").symlink_to(store / "same" / "..")  # contains the other class folder
    _img(store / "other.jpg")
    with pytest.raises(ValueError, match=r"class folder 'x' .* lies inside class folder 'y'"):
        create_dataset("imagenet", root=str(split.parent))
    (split / "y").unlink()
    (split / "y").symlink_to(split.parent)  # contains the split itself
    with pytest.raises(ValueError, match=r"class folder '.*y' links to .*which contains the split folder itself"):
        create_dataset("imagenet", root=str(split.parent))


def test_files_reachable_from_two_classes_are_excluded_from_both(two_classes, tmp_path):
    split = two_classes
    store = tmp_path / "store"
    for i in range(2):
        _img(store / "shared" / f"{i}.jpg")
        _img(store / "shared" / "inner" / f"{i}.jpg")
    _img(store / "one.jpg")
    (split / "a" / "shared").symlink_to(store / "shared")
    (split / "b" / "shared_inner").symlink_to(store / "shared" / "inner")  # inside the folder a reaches
    (split / "a" / "one.jpg").symlink_to(store / "one.jpg")
    (split / "b" / "uno.jpg").symlink_to(store / "one.jpg")
    unreadable = UnreadableFiles()
    from mindcv.data.image_folder import find_classes, make_samples

    labels = _labelled(make_samples(str(split), find_classes(str(split))[1], report=unreadable), split)
    assert labels == {
        "a/0.jpg": 0, "a/1.jpg": 0, "a/2.jpg": 0, "a/shared/0.jpg": 0, "a/shared/1.jpg": 0, "a/sub/s.jpg": 0,
        "b/0.jpg": 1, "b/1.jpg": 1, "b/2.jpg": 1,
    }  # fmt: skip
    reasons = _reported(unreadable)
    assert "also reached from class 'a'" in reasons[str(split / "b" / "shared_inner")]
    assert "excluded" in reasons[str(split / "a" / "shared" / "inner" / "0.jpg")]
    assert "ambiguous label" in reasons[str(split / "b" / "uno.jpg")]
    assert "ambiguous label" in reasons[str(split / "a" / "one.jpg")]


def test_symlinks_outside_the_split_work_and_duplicates_count_once(two_classes, tmp_path):
    split = two_classes
    store = tmp_path / "store"
    for i in range(3):
        _img(store / "c" / f"{i}.png", seed=10 + i)
    for i in range(2):
        _img(store / "more" / f"{i}.jpg")
    _img(store / "x.jpg")
    (split / "c").symlink_to(store / "c")  # a class folder assembled from a shared store
    (split / "b" / "x.jpg").symlink_to(store / "x.jpg")  # a file link
    (split / "b" / "more").symlink_to(store / "more")  # a folder link
    (split / "b" / "more_again").symlink_to(store / "more")  # the same folder twice: once
    (split / "b" / "x_again.jpg").symlink_to(store / "x.jpg")  # the same file twice: once
    (split / "b" / "more_x.jpg").symlink_to(store / "more" / "0.jpg")  # a file of a followed folder: once
    (split / "a" / "dup.jpg").symlink_to(split / "a" / "0.jpg")  # a file of the same class: once
    (split / "a" / "alias").symlink_to(split / "a" / "sub")  # a folder of the same class: once
    train = create_dataset("imagenet", root=str(split.parent), shuffle=False)
    assert train.class_names == ["a", "b", "c"]
    from mindcv.data.image_folder import find_classes, make_samples

    samples = make_samples(str(split), find_classes(str(split))[1])
    assert samples == make_samples(str(split), find_classes(str(split))[1])  # deterministic
    labels = _labelled(samples, split)
    assert labels == {
        "a/0.jpg": 0, "a/1.jpg": 0, "a/2.jpg": 0, "a/sub/s.jpg": 0,
        "b/0.jpg": 1, "b/1.jpg": 1, "b/2.jpg": 1, "b/more/0.jpg": 1, "b/more/1.jpg": 1, "b/x.jpg": 1,
        "c/0.png": 2, "c/1.png": 2, "c/2.png": 2,
    }  # fmt: skip
    assert [p for p, _ in samples] == sorted((p for p, _ in samples), key=lambda p: (os.path.dirname(p), p))
    rows = _rows(train)
    assert len(rows) == 13 and [int(r[1]) for r in rows] == [0] * 4 + [1] * 6 + [2] * 3
    reasons = _reported(train.unreadable)
    assert set(reasons) == {
        str(split / p) for p in ("a/dup.jpg", "a/alias", "b/more_again", "b/x_again.jpg", "b/more_x.jpg")
    }
    assert "already included" in reasons[str(split / "b" / "more_again")]


@pytest.mark.timeout(120)  # opening the FIFO would block forever: pytest-timeout fails it, naming the test
def test_broken_links_fifos_and_link_loops_are_reported_not_fatal(two_classes):
    split = two_classes
    (split / "a" / "gone.jpg").symlink_to(split / "a" / "missing.jpg")
    (split / "a" / "knot").symlink_to(split / "a" / "knot")  # ELOOP
    (split / "loop_class").symlink_to(split / "loop_class")  # not a class folder
    os.mkfifo(split / "a" / "pipe.jpg")
    train = create_dataset("imagenet", root=str(split.parent), shuffle=False)
    assert train.class_names == ["a", "b"] and len(_rows(train)) == 7
    reasons = _reported(train.unreadable)
    assert "broken symbolic link" in reasons[str(split / "a" / "gone.jpg")]
    assert "broken symbolic link" in reasons[str(split / "a" / "knot")]
    assert "not a regular file" in reasons[str(split / "a" / "pipe.jpg")]
    from mindcv.data.image_folder import decode_image

    assert decode_image(str(split / "a" / "pipe.jpg")) == (None, "not a regular file")  # does not block


def _png(width, height, idat=b"\x00" * 16):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


@pytest.fixture
def decode_calls(monkeypatch):
    """Every buffer handed to cv2.imdecode, as bytes."""
    from mindcv.data.image_folder import cv2

    calls = []
    real = cv2.imdecode

    def spy(buf, flags):
        calls.append(bytes(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


def test_decompression_bombs_are_reported_by_path_and_never_decoded(tmp_path, decode_calls):
    split = tmp_path / "train"
    for i in range(3):
        _img(split / "ok" / f"{i}.jpg", seed=i)
    bomb = split / "ok" / "bomb.png"
    bomb.write_bytes(_png(100_000, 100_000))  # a 100-byte file claiming 10 gigapixels
    assert bomb.stat().st_size < 200
    train = create_dataset("imagenet", root=str(tmp_path), shuffle=False)
    rows = _rows(train)
    assert len(rows) == 4 and all(r[0].shape == (12, 12, 3) for r in rows)  # replaced, the pipeline goes on
    reason = _reported(train.unreadable)[str(bomb)]
    assert reason == (
        "image is 100000×100000 = 10000000000 pixels, above the limit of 89478485; raise max_image_pixels to read it"
    )
    assert bomb.read_bytes() not in decode_calls
    val = create_dataset("imagenet", root=str(tmp_path), is_training=False, shuffle=False)
    assert [int(r[1]) for r in _rows(val)].count(-1) == 1
    strict = create_dataset("imagenet", root=str(tmp_path), strict=True, shuffle=False)
    with pytest.raises(RuntimeError, match=r"unreadable image '.*bomb\.png': image is 100000×100000"):
        _rows(strict)


def test_a_real_image_above_a_lowered_limit_is_skipped(tmp_path, decode_calls):
    split = tmp_path / "train"
    _img(split / "c" / "small.png", 20, 20)  # 400 pixels
    big = _img(split / "c" / "big.png", 30, 40)  # 1200 pixels
    train = create_dataset("imagenet", root=str(tmp_path), shuffle=False, max_image_pixels=1000)
    rows = _rows(train)
    assert len(rows) == 2 and all(r[0].shape == (20, 20, 3) for r in rows)
    assert _reported(train.unreadable) == {
        str(big): "image is 40×30 = 1200 pixels, above the limit of 1000; raise max_image_pixels to read it"
    }
    assert big.read_bytes() not in decode_calls
    assert len(_rows(create_dataset("imagenet", root=str(tmp_path), max_image_pixels=1200))) == 2
    with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
        create_dataset("imagenet", root=str(tmp_path), max_image_pixels=0)


def test_a_link_into_another_split_never_relabels_its_images(tmp_path):
    """val/a/to_train -> train (or -> train/b) would label train's images 'a' and leak them into validation."""
    from mindcv.data.image_folder import make_samples

    for split in ("train", "val"):
        for cls in ("a", "b"):
            _img(tmp_path / split / cls / f"{split}_{cls}.png")
    (tmp_path / "val" / "a" / "to_train").symlink_to(tmp_path / "train")
    (tmp_path / "val" / "a" / "to_train_b").symlink_to(tmp_path / "train" / "b")
    (tmp_path / "val" / "b" / "to_train_b").symlink_to(tmp_path / "train" / "b")  # same class: label stays right
    store = tmp_path / "store"  # a shared store beside the splits is not a split: links into it still work
    _img(store / "extra.png")
    (tmp_path / "val" / "a" / "from_store").symlink_to(store)
    report = UnreadableFiles()
    samples = make_samples(str(tmp_path / "val"), {"a": 0, "b": 1}, report=report)
    labelled = {os.path.basename(p): label for p, label in samples}
    assert labelled == {"val_a.png": 0, "extra.png": 0, "val_b.png": 1, "train_b.png": 1}
    reasons = _reported(report)
    assert "into the whole of split" in reasons[str(tmp_path / "val" / "a" / "to_train")]
    assert "into class 'b' of split" in reasons[str(tmp_path / "val" / "a" / "to_train_b")]


def test_a_thin_image_that_would_explode_when_resized_is_skipped(tmp_path, decode_calls):
    """1x80000 passes the pixel limit, but an evaluation resize of its short side to 256 needs ~15 GB."""
    split = tmp_path / "val"
    _img(split / "c" / "ok.png", 20, 20)
    thin = split / "c" / "thin.png"
    thin.write_bytes(_png(80_000, 1))
    val = create_dataset("imagenet", root=str(tmp_path), split="val", is_training=False, shuffle=False)
    assert [int(r[1]) for r in _rows(val)] == [0, -1]  # the readable image is evaluated, the thin one excluded
    assert _reported(val.unreadable)[str(thin)] == (
        "image is 80000×1 (aspect ratio 80000:1): resizing its short side to 512 pixels would make "
        "20971520000 pixels, above the limit of 89478485; raise max_image_pixels to read it"
    )
    assert thin.read_bytes() not in decode_calls
    wide = split / "c" / "wide.png"
    _img(wide, 10, 300)  # a 30:1 panorama is fine
    assert str(wide) not in _reported(
        create_dataset("imagenet", root=str(tmp_path), split="val", is_training=False, shuffle=False).unreadable
    )


@pytest.mark.slow
def test_opencv_limit_is_set_before_cv2_is_imported(tmp_path):
    """OPENCV_IO_MAX_IMAGE_PIXELS only works before ``import cv2``: mindcv.data sets it, and honours a lower one."""
    img = _img(tmp_path / "i.png", 40, 40)
    code = (
        "import os, sys\n"
        "from mindcv.data import image_folder as f, _opencv\n"
        "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'], _opencv.OPENCV_MAX_IMAGE_PIXELS)\n"
        "print(f.decode_image(sys.argv[1])[1])\n"
        "import numpy as np\n"
        "try:\n"
        "    f.cv2.imdecode(np.fromfile(sys.argv[1], np.uint8), 1); print('cv2 decoded')\n"
        "except f.cv2.error:\n"
        "    print('cv2 refused')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_IO_MAX_IMAGE")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code, str(img)], env=env, cwd=root, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [f"{2**30} {2**30}", "None", "cv2 decoded"]
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = "1000"
    out = subprocess.run(
        [sys.executable, "-c", code, str(img)], env=env, cwd=root, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "1000 1000" and out[2] == "cv2 refused"  # the variable reached OpenCV
    assert out[1].startswith("image is 40×40 = 1600 pixels, above OpenCV's limits (1000 pixels")  # never called


@pytest.mark.parametrize(
    "error", [lambda: cv2_error("imdecode_: boom"), lambda: MemoryError()], ids=["cv2.error", "MemoryError"]
)
def test_decoder_exceptions_are_per_file_unreadable(tmp_path, monkeypatch, error):
    from mindcv.data.image_folder import ImageFileSource, cv2

    split = tmp_path / "train"
    for i in range(3):
        _img(split / "c" / f"{i}.jpg", seed=i)
    poison = (split / "c" / "1.jpg").read_bytes()
    real = cv2.imdecode

    def imdecode(buf, flags):
        if bytes(buf) == poison:
            raise error()
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    train = create_dataset("imagenet", root=str(tmp_path), shuffle=False)
    assert len(_rows(train)) == 3
    reason = _reported(train.unreadable)[str(split / "c" / "1.jpg")]
    assert reason.startswith("decoder failed") or reason.startswith("out of memory")
    val = create_dataset("imagenet", root=str(tmp_path), shuffle=False, is_training=False)
    assert [int(r[1]) for r in _rows(val)] == [0, -1, 0]
    source = ImageFileSource([(str(split / "c" / "1.jpg"), 0)], strict=True)
    with pytest.raises(UnreadableImageError, match=r"unreadable image '.*1\.jpg'"):
        source[0]


def cv2_error(message):
    from mindcv.data.image_folder import cv2

    return cv2.error(message)


@pytest.mark.parametrize(
    "decoded, expected",
    [
        (np.full((5, 7, 4), 40000, np.uint16), (5, 7, 3)),  # 16-bit with alpha
        (np.zeros((5, 7, 1), np.uint8), (5, 7, 3)),  # one channel
        (np.zeros((5, 7), np.uint8), (5, 7, 3)),  # 2-D gray
        (np.ones((5, 7, 3), np.float32), (5, 7, 3)),  # float
        (np.zeros((0, 7, 3), np.uint8), "empty or malformed"),  # zero-sized
        (np.zeros((5, 7, 5), np.uint8), "unsupported number of channels (5)"),
        (np.zeros((5, 7, 3), np.int32), "unsupported pixel type int32"),
    ],
    ids=["uint16-bgra", "hw1", "hw", "float", "zero", "5-channels", "int32"],
)
def test_odd_decoder_outputs_become_rgb_uint8_or_unreadable(tmp_path, monkeypatch, decoded, expected):
    from mindcv.data.image_folder import cv2, decode_image

    path = _img(tmp_path / "i.png", 5, 7)
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: decoded)
    img, reason = decode_image(str(path))
    if isinstance(expected, tuple):
        assert reason is None and img.shape == expected and img.dtype == np.uint8
    else:
        assert img is None and expected in reason


def _tiff(width, height, big_endian=False):
    bo = ">" if big_endian else "<"
    entries = [(256, 4, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 7 + 4)]
    entries.append((277, 3, 1))
    ifd = struct.pack(bo + "H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack(bo + "HHI", tag, kind, 1)
        ifd += struct.pack(bo + "HH", value, 0) if kind == 3 else struct.pack(bo + "I", value)
    head = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(bo + "I", 8)
    return head + ifd + struct.pack(bo + "I", 0) + b"\x00" * min(width * height, 4096)


def test_header_sizes_of_every_format_match_the_decoded_image(tmp_path):
    from mindcv.data.image_folder import decode_bytes, image_size

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (23, 37, 3), dtype=np.uint8)
    gray16 = rgb[..., 0].astype(np.uint16) * 257
    rgba = np.dstack([rgb, rgb[..., :1]])
    cases = [
        (Image.fromarray(rgb), "JPEG", {}),
        (Image.fromarray(rgb), "JPEG", {"progressive": True, "icc_profile": b"\x00" * 70000}),  # SOF after 70 kB
        (Image.new("CMYK", (37, 23), (1, 2, 3, 4)), "JPEG", {}),
        (Image.fromarray(rgb), "PNG", {}),
        (Image.fromarray(gray16), "PNG", {}),
        (Image.fromarray(rgba), "PNG", {}),
        (Image.fromarray(rgb).convert("P"), "PNG", {}),
        (Image.fromarray(rgb), "BMP", {}),
        (Image.fromarray(rgb), "PPM", {}),
        (Image.fromarray(rgb[..., 0]), "PPM", {}),
        (Image.fromarray(rgb), "TIFF", {}),
        (Image.fromarray(gray16), "TIFF", {"compression": "tiff_lzw"}),
        (Image.fromarray(rgb), "WEBP", {}),
        (Image.fromarray(rgb), "WEBP", {"lossless": True}),
        (Image.fromarray(rgba), "WEBP", {}),
    ]
    for image, fmt, options in cases:
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        raw = buf.getvalue()
        assert image_size(raw) == (37, 23), (fmt, options)
        img, reason = decode_bytes(raw)
        assert reason is None and img.shape == (23, 37, 3) and img.dtype == np.uint8, (fmt, options, reason)
    assert image_size(_tiff(37, 23, big_endian=True)) == (37, 23) == image_size(_tiff(37, 23))
    assert image_size(b"P6\n# a comment\n  37\t23 255\n") == (37, 23)
    assert image_size(_png(37, 23)[:20]) is None  # cut short
    assert image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # no frame header
    img, reason = decode_bytes(_tiff(70000, 60000))  # a TIFF bomb
    assert img is None and reason.startswith("image is 70000×60000 = 4200000000 pixels, above the limit")
    assert decode_bytes(_png(0, 5)) == (None, "zero-sized image (0×5 in its header)")


def test_reports_stay_in_memory_without_a_log_path(messy_folder, tmp_path, monkeypatch):
    import tempfile

    system_tmp = tempfile.gettempdir()
    before = set(os.listdir(system_tmp))
    isolated = tmp_path / "system_tmp"
    isolated.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(isolated))
    for split_kwargs in ({}, {"is_training": False}):
        dataset = create_dataset("imagenet", root=str(messy_folder), shuffle=False, **split_kwargs)
        _rows(dataset)
        assert dataset.unreadable.log_path is None and dataset.unreadable.count() == 4
    assert os.listdir(isolated) == []
    new = set(os.listdir(system_tmp)) - before
    assert not [n for n in new if "mindcv" in n or "unreadable" in n]


def test_the_log_file_is_created_lazily_at_the_given_path(tmp_path):
    split = tmp_path / "data" / "train"
    for i in range(2):
        _img(split / "c" / f"{i}.jpg", seed=i)
    log = tmp_path / "run" / "unreadable_images.tsv"
    dataset = create_dataset("imagenet", root=str(split.parent), unreadable_log=str(log), shuffle=False)
    _rows(dataset)
    assert not log.exists() and not log.parent.exists()  # nothing to report: no file, no folder
    (split / "c" / "bad\tname.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
    dataset = create_dataset("imagenet", root=str(split.parent), unreadable_log=str(log), shuffle=False)
    assert not log.exists()
    _rows(dataset)
    assert log.read_text().startswith(str(split / "c" / "bad\\tname.jpg") + "\ttruncated JPEG")
    assert dataset.unreadable.entries()[0][0] == str(split / "c" / "bad\tname.jpg") and dataset.unreadable.count() == 1
    again = create_dataset("imagenet", root=str(split.parent), unreadable_log=str(log), shuffle=False)
    assert again.unreadable.count() == 0  # earlier runs' lines stay in the file but are not this run's
    with pytest.raises(ValueError, match="is a folder"):
        create_dataset("imagenet", root=str(split.parent), unreadable_log=str(tmp_path))


def test_unreadable_files_is_thread_safe_picklable_and_survives_a_bad_log(tmp_path):
    import pickle

    memory = UnreadableFiles()

    def worker(k):
        for i in range(200):
            memory.record(f"f{k}_{i}", "r")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert memory.count() == 1600
    clone = pickle.loads(pickle.dumps(UnreadableFiles(str(tmp_path / "log.tsv"))))
    clone.record("x", "why")
    assert clone.entries() == [("x", "why")]
    blocked = tmp_path / "file"
    blocked.write_text("")
    broken = UnreadableFiles(str(blocked / "log.tsv"))  # its folder cannot be created
    broken.record("y", "why")
    assert broken.entries() == [("y", "why")]
    stale = tmp_path / "stale.tsv"
    stale.write_text("old\tline\n")
    assert UnreadableFiles(str(stale), overwrite=True).entries() == [] and not stale.exists()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two worker processes")
def test_worker_processes_report_through_the_log_file(tmp_path, caplog):
    split = tmp_path / "train"
    for i in range(4):
        _img(split / "c" / f"{i}.jpg", seed=i)
    (split / "c" / "bad.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
    log = tmp_path / "out" / "unreadable_images.tsv"
    kwargs = dict(shuffle=False, num_parallel_workers=2, python_multiprocessing=True)
    dataset = create_dataset("imagenet", root=str(tmp_path), unreadable_log=str(log), **kwargs)
    assert len(_rows(dataset)) == 5 and dataset.unreadable.count() == 1 and log.exists()
    create_dataset("imagenet", root=str(tmp_path), **kwargs)
    assert any("pass unreadable_log" in r.message for r in caplog.records)


def test_array_loader_batches_orders_by_seed_and_epoch_and_augments_in_place():
    """The search's in-memory loader (mindcv.data.arrays): batches like a dataset loader, one permutation per
    (seed, epoch), pad_crop_flip keeps shapes and only moves pixels."""
    from mindcv.data import ArrayLoader
    from mindcv.data.arrays import pad_crop_flip
    from mindcv.errors import InvalidArgumentError

    images = np.arange(10 * 1 * 6 * 6, dtype=np.float32).reshape(10, 1, 6, 6)
    labels = np.arange(10, dtype=np.int32)
    plain = ArrayLoader(images, labels, 4)
    batches = list(plain.create_tuple_iterator(output_numpy=True))
    assert plain.get_dataset_size() == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b[1] for b in batches]).tolist() == list(range(10))
    assert ArrayLoader(images, labels, 4, drop_remainder=True).get_dataset_size() == 2

    def order(loader, epoch):
        loader.set_epoch(epoch)
        return np.concatenate([b[1].asnumpy() for b in loader.create_tuple_iterator()]).tolist()

    shuffled = ArrayLoader(images, labels, 4, shuffle=True, seed=3)
    first = order(shuffled, 0)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert order(shuffled, 0) == first and order(shuffled, 1) != first
    assert order(ArrayLoader(images, labels, 4, shuffle=True, seed=3), 0) == first

    augmented = pad_crop_flip(images, np.random.default_rng(0), pad=2)
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    assert not np.array_equal(augmented, images) and set(np.unique(augmented)) <= set(np.unique(images))
    with_transform = ArrayLoader(images, labels, 10, transform=pad_crop_flip, seed=1)
    again = ArrayLoader(images, labels, 10, transform=pad_crop_flip, seed=1)
    x1 = next(with_transform.create_tuple_iterator(output_numpy=True))[0]
    assert np.array_equal(x1, next(again.create_tuple_iterator(output_numpy=True))[0])  # same (seed, epoch)

    with pytest.raises(InvalidArgumentError, match="10 images but 9 labels"):
        ArrayLoader(images, labels[:9], 4)
    with pytest.raises(InvalidArgumentError, match="batch_size must be >= 1"):
        ArrayLoader(images, labels, 0)
    with pytest.raises(InvalidArgumentError, match="one epoch at a time"):
        next(plain.create_tuple_iterator(num_epochs=2))


def test_set_seed_repeats_every_generator_and_offsets_by_rank():
    """train.py's one seeding point: Python, NumPy, MindSpore's weight initialisation and the data pipeline."""
    import random

    import mindspore.dataset as ds
    from mindspore import nn

    from mindcv.utils.random import set_seed

    def draws():
        return random.random(), float(np.random.rand()), nn.Dense(4, 3).weight.asnumpy().copy(), ds.config.get_seed()

    saved = random.getstate(), ds.config.get_seed()
    try:
        set_seed(5)
        first = draws()
        set_seed(5)
        again = draws()
        set_seed(5, rank=1)
        other_rank = draws()
    finally:  # the rest of the session keeps its generators (NumPy's and MindSpore's are seeded per test)
        random.setstate(saved[0])
        ds.config.set_seed(saved[1])
    assert first[:2] == again[:2] and np.array_equal(first[2], again[2]) and first[3] == again[3] == 5
    assert other_rank[:2] != first[:2] and not np.array_equal(other_rank[2], first[2]) and other_rank[3] == 6


def test_augmentation_splits_give_upstreams_three_view_batches_that_train_with_jsd(image_folder):
    """Upstream's AugMix/JSD loader (``separate=True``): clean, aug1, aug2 views of the same images in one batch."""

    def dataset():
        return create_dataset("imagenet", root=str(image_folder), shuffle=False)

    plain = create_transforms("imagenet", 32, is_training=True, separate=True, hflip=0.0)
    rows = _rows(create_loader(dataset(), 4, drop_remainder=True, is_training=True, transform=plain, separate=True))
    assert len(rows) == 4  # 18 images, batches of 4, remainder dropped
    for images, labels in rows:
        assert images.shape == (12, 3, 32, 32) and images.dtype == np.float32
        assert labels.dtype == np.int32 and labels[:4].tolist() == labels[4:8].tolist() == labels[8:].tolist()
        # no secondary ops: the three views are the same crop of each image, so the layout is clean|aug1|aug2
        np.testing.assert_array_equal(images[:4], images[4:8])
        np.testing.assert_array_equal(images[:4], images[8:])

    previous_seed = ms.dataset.config.get_seed()
    ms.dataset.config.set_seed(0)  # as training scripts do: MindSpore then seeds its C++ random ops at every call
    try:
        for policy, extra in (("randaug-m9-n3", {}), (None, {"color_jitter": 0.4}), ("augmix", {})):
            triple = create_transforms("imagenet", 32, is_training=True, separate=True, auto_augment=policy, **extra)
            for batch in (6, 1):  # a batch of one has no other image to hide identical views behind
                rows = _rows(
                    create_loader(
                        dataset(), batch, drop_remainder=True, is_training=True, transform=triple, separate=True
                    )
                )
                differ = [not np.array_equal(im[batch : 2 * batch], im[2 * batch :]) for im, _ in rows]
                assert sum(differ) >= 0.8 * len(rows), (policy, extra, batch, differ)
        images, labels = _rows(
            create_loader(dataset(), 6, drop_remainder=True, is_training=True, transform=triple, separate=True)
        )[0]
        # MindSpore's C++-only RandAugment would give both augmented views the same draws: refused, naming it
        cpp = create_transforms("imagenet", 32, is_training=True, auto_augment="randaug-m9-n3")
        with pytest.raises(ValueError, match=r"separate=True: RandAugment in the augmentation \(secondary\) ops"):
            create_loader(dataset(), 6, is_training=True, transform=(cpp[:3], [cpp[3]], cpp[4:]), separate=True)
    finally:
        ms.dataset.config.set_seed(previous_seed)

    ms.set_seed(0)
    net = nn.SequentialCell(
        nn.Conv2d(3, 4, 3, stride=4, has_bias=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dense(4, 3)
    )
    step = TrainStep(nn.WithLossCell(net, JSDCrossEntropy()), nn.Momentum(net.trainable_params(), 0.05, 0.9))
    step.set_train()
    losses = [float(step(Tensor(images), Tensor(labels))[0].asnumpy()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_augmentation_splits_refuse_what_they_cannot_do(image_folder):
    dataset = create_dataset("imagenet", root=str(image_folder))
    triple = create_transforms("imagenet", 32, is_training=True, separate=True)
    with pytest.raises(ValueError, match="cannot be combined with MixUp/CutMix"):
        create_loader(dataset, 4, is_training=True, transform=triple, separate=True, mixup=0.2)
    with pytest.raises(ValueError, match="for training loaders: set is_training=True"):
        create_loader(dataset, 4, is_training=False, transform=triple, separate=True)
    with pytest.raises(ValueError, match=r"needs transform=\(primary, secondary, final\).*got list"):
        create_loader(dataset, 4, is_training=True, transform=create_transforms("imagenet", 32), separate=True)
