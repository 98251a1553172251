"""Datasets, transforms and loaders on generated files in the real formats (no network)."""

import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset.vision as vision

from mindcv.data import (
    ShardSampler,
    UnreadableImageError,
    create_dataset,
    create_loader,
    create_transforms,
    ensure_demo_dataset,
    list_datasets,
    standard_datasets,
)
from mindcv.utils.download import DownloadError


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
    with pytest.raises(ValueError, match="num_parallel_workers must be between 1 and"):
        create_dataset("imagenet", root=str(image_folder), num_parallel_workers=64)
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
    ["randaug-m9-mstd0.5", "randaug-m7-n3", "randaug-m9-mstd0.5-inc1", "autoaug", "autoaugr", "trivialaugwide"],
)
def test_auto_augment_policies_run(policy):
    ops = create_transforms("imagenet", 48, is_training=True, auto_augment=policy, re_prob=0.5)
    img = np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    for op in ops:
        img = op(img)
    assert img.shape == (3, 48, 48) and img.dtype == np.float32


@pytest.mark.parametrize(
    "policy, needle",
    [("randaug-x3", "unknown option 'x3'"), ("augmix", "unknown policy 'augmix'"), ("randaug-inc0", "inc1")],
)
def test_unknown_policy_lists_the_valid_ones(policy, needle):
    with pytest.raises(ValueError, match=needle) as err:
        create_transforms("imagenet", 224, is_training=True, auto_augment=policy)
    assert "randaug[-m<magnitude" in str(err.value) and "trivialaugwide" in str(err.value)


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
    assert isinstance(ops[0], vision.Resize) and isinstance(ops[1], vision.CenterCrop)
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    resized = ops[0](img)
    assert min(resized.shape[:2]) == 256
    out = img
    for op in ops:
        out = op(out)
    assert out.shape == (3, 224, 224)
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'; valid: nearest, bilinear, bicubic"):
        create_transforms("imagenet", 224, interpolation="cubic")


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


def test_loader_reduces_workers_to_the_cpu_count(image_folder, caplog):
    loader = create_loader(
        create_dataset("imagenet", root=str(image_folder)),
        6,
        transform=create_transforms("imagenet", 32),
        num_parallel_workers=64,
    )
    assert sum(len(b[1]) for b in _rows(loader)) == 18
    assert any("exceeds this machine's" in r.message for r in caplog.records)
