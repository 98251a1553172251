"""Upstream mindcv's public names that user code imports: each one does its job (loopback HTTP only, no network)."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import random
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import mindspore as ms
from mindspore import Tensor

import mindcv
from mindcv.data import auto_augment as aa
from mindcv.data import standard_datasets
from mindcv.data.dataset_download import Cifar10Download, Cifar100Download, MnistDownload
from mindcv.errors import InvalidArgumentError
from mindcv.io.download import DownLoad, DownloadError, UnsafeArchiveError, set_default_download_root
from mindcv.loss import AsymmetricLossMultilabel, AsymmetricLossSingleLabel, JSDCrossEntropy, create_loss
from mindcv.models import create_model, get_pretrained_cfg, registry
from mindcv.models.checkpoint import CheckpointError
from mindcv.models.helpers import (
    ConfigDict,
    _ntuple,
    auto_map,
    build_model_with_cfg,
    get_checkpoint_download_root,
    load_model_checkpoint,
    load_pretrained,
    make_divisible,
)
from mindcv.models.mnasnet import VARIANTS, MnasNet, Mnasnet

UPSTREAM_CKPT = "mindcv_upstream_mnasnet_050.ckpt"

# ------------------------------------------------------------------------------------------------------
# Losses against NumPy written from the papers' definitions.


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _asl_single(logits, labels, smoothing, gamma_pos=1.0, gamma_neg=4.0):
    """Per-sample single-label ASL: focusing (1-p)^gp on the true class, p^gn on the others, smoothed targets."""
    logp = _log_softmax(logits)
    p = np.exp(logp)
    onehot = np.eye(logits.shape[1])[labels]
    weight = np.where(onehot == 1, (1 - p) ** gamma_pos, p**gamma_neg)
    target = onehot * (1 - smoothing) + smoothing / logits.shape[1]
    return -(target * logp * weight).sum(1)


def _asl_multi(logits, y, gamma_neg=4.0, gamma_pos=1.0, clip=0.05):
    """Summed multi-label ASL with the probability margin ``clip`` on the negatives."""
    p = 1 / (1 + np.exp(-logits))
    p_m = np.maximum(p - clip, 0)  # shifted negative probability
    pos = y * np.log(p) * (1 - p) ** gamma_pos
    neg = (1 - y) * np.log(np.maximum(1 - p_m, 1e-8)) * p_m**gamma_neg
    return -(pos + neg).sum()


LOGITS = np.random.default_rng(1).normal(0, 2, (6, 5)).astype(np.float32)
LABELS = np.array([0, 4, 2, 2, 1, 3], np.int32)


def _value(loss, logits, labels):
    return loss(Tensor(logits), Tensor(labels)).asnumpy()


def test_asymmetric_losses_match_numpy_and_upstreams_pinned_values():
    for smoothing in (0.0, 0.1):
        ref = _asl_single(LOGITS.astype(np.float64), LABELS, smoothing)
        loss = create_loss("ASL_single_label", label_smoothing=smoothing)
        assert isinstance(loss, AsymmetricLossSingleLabel)
        assert float(_value(loss, LOGITS, LABELS)) == pytest.approx(ref.mean(), rel=1e-5)
    none = create_loss("asl_single_label", reduction="none", label_smoothing=0.1)
    np.testing.assert_allclose(_value(none, LOGITS, LABELS), _asl_single(LOGITS.astype(np.float64), LABELS, 0.1), 1e-5)
    # the paper's recommended gamma_pos=0 keeps the negatives' focusing (upstream dropped both weights then)
    y = (np.random.default_rng(2).random(LOGITS.shape) > 0.6).astype(np.float32)
    gp0 = AsymmetricLossMultilabel(gamma_neg=4, gamma_pos=0)
    assert float(_value(gp0, LOGITS, y)) == pytest.approx(_asl_multi(LOGITS.astype(np.float64), y, gamma_pos=0), 1e-5)
    multi = create_loss("asl_multi_label", label_smoothing=0.1)  # smoothing does not apply, as upstream
    assert float(_value(multi, LOGITS, y)) == pytest.approx(_asl_multi(LOGITS.astype(np.float64), y), rel=1e-5)
    # the constants of upstream's tests/modules/test_loss.py, at its tolerance (np.allclose: rtol 1e-5)
    pinned = np.array(
        [[0.38317937, 0.82873726, 0.8164871, 0.6443424], [0.77863216, 0.17288171, 0.69345415, 0.26514006]]
        + [[0.14249292, 0.38524792, 0.97271717, 0.90531427]],
        np.float32,
    )
    single = create_loss("asl_single_label", label_smoothing=0.1)
    assert float(_value(single, pinned, np.array([1, 1, 1], np.int32))) == pytest.approx(1.1247127, rel=1e-5)
    assert float(_value(single, np.zeros((3, 5), np.float32), np.zeros(3, np.int32))) == pytest.approx(1.1847522, 1e-5)
    multi_labels = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], np.int32)
    assert float(_value(multi, pinned, multi_labels)) == pytest.approx(1.8657642, rel=1e-5)
    assert float(_value(multi, np.zeros((3, 5), np.float32), np.zeros((3, 5), np.int32))) == pytest.approx(
        0.3677258, rel=1e-5
    )
    with pytest.raises(ValueError, match="gamma_pos and gamma_neg must be >= 0, got -1, 4"):
        AsymmetricLossSingleLabel(gamma_pos=-1)
    with pytest.raises(ValueError, match="clip must be in"):
        AsymmetricLossMultilabel(clip=1.5)


def _jsd_reference(logits, labels, splits, alpha, smoothing):
    n = logits.shape[0] // splits
    logp = _log_softmax(logits[:n])
    target = np.eye(logits.shape[1])[labels[:n]] * (1 - smoothing) + smoothing / logits.shape[1]
    ce = -(target * logp).sum(1).mean()
    probs = [np.exp(_log_softmax(logits[i * n : (i + 1) * n])) for i in range(splits)]
    log_m = np.log(np.clip(np.mean(probs, axis=0), 1e-7, 1))
    js = np.mean([(p * (np.log(p) - log_m)).sum() / n for p in probs])  # mean_i KL(p_i || M), batch-averaged
    return ce + alpha * js


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def test_jsd_loss_is_clean_ce_plus_js_divergence_in_training_and_plain_ce_in_eval(mode):
    ms.set_context(mode=mode)
    try:
        logits = np.random.default_rng(3).normal(0, 1.5, (6, 4)).astype(np.float32)
        labels = np.array([1, 3, 1, 3, 1, 3], np.int32)  # upstream's loader repeats the labels per split
        loss = create_loss("jsd", label_smoothing=0.1)
        assert isinstance(loss, JSDCrossEntropy) and (loss.num_splits, loss.alpha) == (3, 12)
        loss.set_train(True)
        expected = _jsd_reference(logits.astype(np.float64), labels, 3, 12, 0.1)
        assert float(_value(loss, logits, labels)) == pytest.approx(expected, rel=1e-5)
        loss.set_train(False)  # evaluation: cross-entropy over the whole batch
        target = np.eye(4)[labels] * 0.9 + 0.1 / 4
        plain_ce = -(target * _log_softmax(logits.astype(np.float64))).sum(1).mean()
        assert float(_value(loss, logits, labels)) == pytest.approx(plain_ce, rel=1e-5)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    bad = JSDCrossEntropy(num_splits=4)
    bad.set_train(True)
    with pytest.raises(ValueError, match="6 logits cannot be split into 4 equal views"):
        bad(Tensor(logits), Tensor(labels))


def test_create_loss_names_the_upstream_losses():
    with pytest.raises(
        ValueError, match="unknown loss 'focal'; valid: CE, BCE, asl_single_label, asl_multi_label, JSD"
    ):
        create_loss("focal")
    assert create_loss("Asl_Multi_Label").gamma_neg == 4 and isinstance(
        create_loss("JSD", reduction="sum"), JSDCrossEntropy
    )
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'max'"):
        create_loss("asl_single_label", reduction="max")
    for name in ("AsymmetricLossSingleLabel", "AsymmetricLossMultilabel", "JSDCrossEntropy"):  # upstream's paths
        assert name in mindcv.loss.__all__ and getattr(mindcv, name) is getattr(mindcv.loss, name)


# ------------------------------------------------------------------------------------------------------
# Auto-augment: upstream's config strings and classes on decoded images.

IMAGE = (np.random.default_rng(4).random((24, 28, 3)) * 255).astype(np.uint8)
CONFIGS = [
    ("randaug-m9-mstd0.5-inc1", aa.rand_augment_transform, aa.RandAugment),
    ("randaug-m7-n3-w0", aa.rand_augment_transform, aa.RandAugment),
    ("autoaug", aa.auto_augment_transform, aa.AutoAugment),
    ("autoaugr-mstd0", aa.auto_augment_transform, aa.AutoAugment),
    ("3a", aa.auto_augment_transform, aa.AutoAugment),
    ("trivialaugwide", aa.trivial_augment_wide_transform, aa.TrivialAugmentWide),
    ("augmix-m3-w3-d-1", aa.augment_and_mix_transform, aa.AugMixAugment),
]


def _seeded(transform, img, seed):
    random.seed(seed)
    np.random.seed(seed)
    return transform(img)


@pytest.mark.parametrize("config, factory, cls", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_auto_augment_configs_are_reproducible_and_keep_the_image_form(config, factory, cls):
    hparams = {"img_mean": (124, 116, 104), "interpolation": "bicubic"}
    transform = factory(config, hparams)
    assert isinstance(transform, cls) and hparams == {"img_mean": (124, 116, 104), "interpolation": "bicubic"}
    outs = [_seeded(transform, IMAGE, seed) for seed in range(6)]
    for out in outs:
        assert out.shape == IMAGE.shape and out.dtype == np.uint8
    assert np.array_equal(_seeded(transform, IMAGE, 2), outs[2])  # same seed, same image
    assert sum(not np.array_equal(o, IMAGE) for o in outs) >= 3  # it does augment
    assert len({o.tobytes() for o in outs}) >= 3  # and differently per seed
    pil = _seeded(transform, Image.fromarray(IMAGE), 2)  # PIL in, PIL out, the same pixels
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), outs[2])
    gray = _seeded(transform, IMAGE[:, :, :1], 1)
    assert gray.shape == (24, 28, 1) and gray.dtype == np.uint8


def test_augment_ops_compute_what_their_names_say():
    img = IMAGE
    assert np.array_equal(aa.AugmentOp("Invert", prob=1.0)(img), 255 - img)
    # solarize at magnitude 5: threshold int(5 / 10 * 255) = 127; pixels >= it are inverted
    assert np.array_equal(aa.AugmentOp("Solarize", 1.0, 5)(img), np.where(img >= 127, 255 - img, img))
    # PosterizeOriginal at magnitude 0 keeps 4 bits (the paper's range is 4..8 bits)
    assert np.array_equal(aa.AugmentOp("PosterizeOriginal", 1.0, 0)(img), img & 0xF0)
    assert np.array_equal(aa.AugmentOp("Posterize", 1.0, 5)(img), img & 0xC0)  # int(5 / 10 * 4) = 2 bits
    # TranslateX at magnitude 10 moves by 0.45 * width (either way): a constant-filled band of 12 or 13 columns
    random.seed(0)
    moved = aa.AugmentOp("TranslateX", 1.0, 10, {"img_mean": (1, 2, 3), "interpolation": "nearest"})(img)
    filled = np.all(moved == np.array([1, 2, 3], np.uint8), axis=(0, 2))
    assert filled.sum() in (12, 13) and (filled[:12].all() or filled[-12:].all())
    assert np.array_equal(aa.AugmentOp("Rotate", 0.0, 10)(img), img)  # prob 0: untouched


def test_auto_augment_strings_and_inputs_are_checked():
    # upstream ignored a string's mstd (its default 0.5 won) and read "inc0" as on
    ra = aa.rand_augment_transform("randaug-m9-mstd1.5-inc0")
    assert ra.ops[0].magnitude_std == 1.5 and ra.ops[4].name == "Posterize" and len(ra.ops) == 14
    assert aa.rand_augment_transform("randaug-mstd101").ops[0].magnitude_std == float("inf")
    augmix = aa.augment_and_mix_transform("augmix-m5-w4-d2-a0.5")
    assert (augmix.width, augmix.depth, augmix.alpha, augmix.ops[0].magnitude) == (4, 2, 0.5, 5)
    for bad, message in [
        ("randaug-x3", "bad section 'x3'; valid sections for randaug: m<number>, n<number>, w<number>"),
        ("randaug-m", "bad section 'm'"),
        ("randaug-w1", "the only op-weight set is w0"),
        ("autoaug-policyv0", "bad section 'policyv0'; valid sections for autoaug: mstd<number>"),
        ("augmix-d0", "'d' must be an integer >= 1, got 0"),
        ("rand-m9", "the policy must be one of randaug"),
    ]:
        factory = {"r": aa.rand_augment_transform, "a": aa.auto_augment_transform}[bad[0]]
        if bad.startswith("augmix"):
            factory = aa.augment_and_mix_transform
        with pytest.raises(ValueError, match=message):
            factory(bad)
    with pytest.raises(ValueError, match="unknown augmentation operation 'Blur'; valid: AutoContrast"):
        aa.AugmentOp("Blur")
    with pytest.raises(TypeError, match=r"uint8 .* got ndarray of shape \(4, 4, 3\) and dtype float32"):
        ra(np.zeros((4, 4, 3), np.float32))


def test_auto_augment_runs_as_a_python_map_in_a_dataset_pipeline():
    import mindspore.dataset as ds

    data = ds.NumpySlicesDataset({"image": np.stack([IMAGE, IMAGE[::-1]])}, shuffle=False)
    data = data.map(aa.rand_augment_transform("randaug-m9-n2", {}), input_columns="image")
    images = [row["image"] for row in data.create_dict_iterator(num_epochs=1, output_numpy=True)]
    assert [(i.shape, i.dtype) for i in images] == [(IMAGE.shape, np.uint8)] * 2


# ------------------------------------------------------------------------------------------------------
# Downloads and archives on the package's machinery, from a loopback server.


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def served(tmp_path):
    """(folder served, base URL, list of requested paths) of a loopback HTTP server."""
    folder = tmp_path / "served"
    folder.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    httpd.shutdown()
    httpd.server_close()


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _tar(path, members):
    """members: (name, bytes) files or (name, "->target") symbolic links."""
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if isinstance(payload, str):
                info.type, info.linkname = tarfile.SYMTYPE, payload[2:]
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


def _cifar10_records(labels):
    rng = np.random.default_rng(5)
    return b"".join(bytes([label]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for label in labels)


def _serve_cifar10(monkeypatch, folder, base, members, md5=None):
    archive = _tar(folder / "cifar-10-binary.tar.gz", members)
    spec = dataclasses.replace(
        standard_datasets.DATASET_SPECS["cifar10"], urls=((base + "cifar-10-binary.tar.gz", md5 or _md5(archive)),)
    )
    monkeypatch.setitem(standard_datasets.DATASET_SPECS, "cifar10", spec)


CIFAR10_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]


def test_cifar10_download_fetches_once_extracts_and_reads(served, tmp_path, monkeypatch):
    folder, base, hits = served
    members = [
        (f"cifar-10-batches-bin/{f}", _cifar10_records([3, 7]) if f.endswith(".bin") else b"cat\n")
        for f in CIFAR10_FILES
    ]
    _serve_cifar10(monkeypatch, folder, base, members)
    down = Cifar10Download(str(tmp_path / "c10"))
    assert isinstance(down, DownLoad) and down.path == str(tmp_path / "c10" / "cifar-10-batches-bin")
    assert down.url == (base + "cifar-10-binary.tar.gz", _md5(folder / "cifar-10-binary.tar.gz"))
    down.download()
    assert sorted(os.listdir(down.path)) == sorted(CIFAR10_FILES) and down.resources == CIFAR10_FILES
    images, labels, _ = standard_datasets.load_standard_dataset("cifar10", down.root, "test")
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [3, 7]
    down.download()  # complete: nothing fetched again
    assert hits == ["/cifar-10-binary.tar.gz"]


def test_dataset_download_refuses_a_wrong_md5_a_corrupt_archive_and_a_hostile_one(served, tmp_path, monkeypatch):
    folder, base, _ = served
    good = [(f"cifar-10-batches-bin/{f}", b"x") for f in CIFAR10_FILES]
    _serve_cifar10(monkeypatch, folder, base, good, md5="0" * 32)
    with pytest.raises(
        DownloadError, match="MD5 [0-9a-f]{32} is not the published 0{32}; the corrupted file was removed"
    ):
        Cifar10Download(str(tmp_path / "a")).download()
    assert not os.path.exists(tmp_path / "a" / "cifar-10-batches-bin")
    # an archive whose published md5 matches but which is truncated
    archive = _tar(folder / "full.tar.gz", good)
    (folder / "cifar-10-binary.tar.gz").write_bytes(open(archive, "rb").read()[:40])
    spec = standard_datasets.DATASET_SPECS["cifar10"]
    monkeypatch.setitem(
        standard_datasets.DATASET_SPECS,
        "cifar10",
        dataclasses.replace(spec, urls=((base + "cifar-10-binary.tar.gz", _md5(folder / "cifar-10-binary.tar.gz")),)),
    )
    with pytest.raises(DownloadError, match="cannot read archive .*truncated or corrupt"):
        Cifar10Download(str(tmp_path / "b")).download()
    assert not os.path.exists(tmp_path / "b" / "cifar-10-batches-bin")
    # path traversal inside the dataset archive: refused, nothing lands outside root (or inside)
    _serve_cifar10(monkeypatch, folder, base, good + [("../../escaped.txt", b"pwned")])
    with pytest.raises(UnsafeArchiveError, match=r"member '\.\./\.\./escaped\.txt' has a '\.\.' component"):
        Cifar10Download(str(tmp_path / "c" / "root")).download()
    assert not os.path.exists(tmp_path / "escaped.txt") and not os.path.exists(
        tmp_path / "c" / "root" / "cifar-10-batches-bin"
    )


def test_mnist_download_decompresses_the_four_files(served, tmp_path, monkeypatch):
    folder, base, _ = served
    spec = standard_datasets.DATASET_SPECS["mnist"]
    urls = []
    payloads = {}
    for url, _ in spec.urls:
        name = url.rsplit("/", 1)[1]
        images = "images" in name
        raw = (
            b"\x00\x00\x08\x03"
            + (2).to_bytes(4, "big")
            + (28).to_bytes(4, "big") * 2
            + bytes(range(256)) * 6
            + bytes(32)
            if images
            else b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + bytes([4, 9])
        )
        (folder / name).write_bytes(gzip.compress(raw))
        payloads[name[:-3]] = raw
        urls.append((base + name, _md5(folder / name)))
    monkeypatch.setitem(standard_datasets.DATASET_SPECS, "mnist", dataclasses.replace(spec, urls=tuple(urls)))
    down = MnistDownload(str(tmp_path / "mnist"))
    assert (
        down.path == down.root
        and down.url_path == base
        and [r[0] for r in down.resources] == [u.rsplit("/", 1)[1] for u, _ in urls]
    )
    down.download()
    for name, raw in payloads.items():  # MindSpore's MnistDataset reads the decompressed files from root
        assert open(os.path.join(down.root, name), "rb").read() == raw
    images, labels, _ = standard_datasets.load_standard_dataset("mnist", down.root, "test")
    assert images.shape == (2, 28, 28, 1) and labels.tolist() == [4, 9]
    assert Cifar100Download(str(tmp_path / "c100")).path.endswith("cifar-100-binary")


def test_download_helpers_check_md5_and_refuse_hostile_archives(served, tmp_path):
    folder, base, _ = served
    (folder / "blob.bin").write_bytes(b"payload" * 100)
    md5 = hashlib.md5(b"payload" * 100).hexdigest()
    down = DownLoad(progress=False)
    assert DownLoad.calculate_md5(str(folder / "blob.bin")) == md5 and down.check_md5(str(folder / "blob.bin"), md5)
    assert not down.check_md5(str(folder / "blob.bin"), "0" * 32) and not down.check_md5(str(folder / "blob.bin"))
    down.download_file(base + "blob.bin", str(tmp_path / "dl" / "b.bin"))
    assert _md5(tmp_path / "dl" / "b.bin") == md5
    with pytest.raises(DownloadError, match="md5 [0-9a-f]{32} does not match the published f{32}"):
        down.download_url(base + "blob.bin", str(tmp_path / "wrong"), md5="f" * 32)
    assert not os.path.exists(tmp_path / "wrong" / "blob.bin")
    target = tmp_path / "out"
    hostile = {
        "dotdot.tar.gz": (lambda p: _tar(p, [("ok.txt", b"ok"), ("../evil.txt", b"x")]), "'..' component"),
        "absolute.tar.gz": (lambda p: _tar(p, [(str(tmp_path / "abs.txt"), b"x")]), "absolute path"),
        "link.tar.gz": (lambda p: _tar(p, [("l", "->" + str(tmp_path)), ("l/evil.txt", b"x")]), "points outside"),
    }
    for name, (make, why) in hostile.items():
        archive = make(folder / name)
        with pytest.raises(UnsafeArchiveError, match=why):
            down.extract_archive(archive, str(target))
        with pytest.raises(UnsafeArchiveError, match=why):
            DownLoad.extract_tar(archive, str(target), compression=".gz")
    with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match="'..' component"):
        DownLoad.extract_zip(str(folder / "evil.zip"), str(target))
    assert not target.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs.txt").exists()
    with zipfile.ZipFile(folder / "good.zip", "w") as zf:
        zf.writestr("pkg/a.txt", b"a")
    assert down.extract_archive(str(folder / "good.zip"), str(target)) == str(target)
    assert (target / "pkg" / "a.txt").read_bytes() == b"a"


# ------------------------------------------------------------------------------------------------------
# mindcv.models.helpers, Mnasnet, get_pretrained_cfg, build_model_with_cfg.


def test_config_dict_and_auto_map():
    assert _ntuple(2)(3) == (3, 3) and _ntuple(3)("ab") == ("ab",) * 3 and _ntuple(2)([1, 5]) == [1, 5]
    cfg = ConfigDict(lr=0.1)
    cfg.epochs = 3
    assert cfg["epochs"] == 3 and cfg.lr == 0.1 and cfg.missing is None
    del cfg.lr
    assert dict(cfg) == {"epochs": 3}
    model = MnasNet("ds_r1_k3_s1_c16_noskip|ir_r1_k3_s2_e3_c24", num_classes=3, width_mult=0.5)
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    renamed = {("old_" + k if k.startswith("classifier") else k): v for k, v in params.items()}
    mapped = auto_map(model, renamed)
    assert set(mapped) == set(params) and all(np.array_equal(mapped[k], params[k]) for k in params)
    with pytest.raises(CheckpointError, match="no checkpoint entry resembles the model parameter 'classifier.weight'"):
        auto_map(model, {k: v for k, v in params.items() if not k.startswith("classifier")})
    assert make_divisible(0.5 * 24) == 16 and make_divisible(0.75 * 40) == 32


def test_mnasnet_class_builds_b1_at_width_alpha():
    upstream = Mnasnet(0.5, num_classes=1000)
    zoo = create_model("mnasnet_050")
    shapes = {p.name: p.shape for p in upstream.trainable_params()}
    assert shapes == {p.name: p.shape for p in zoo.trainable_params()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == VARIANTS["mnasnet_050"].num_params == 2_218_512
    small = Mnasnet(0.75, in_channels=1, num_classes=7, drop_rate=0.0)
    small.set_train(False)
    assert small(Tensor(np.zeros((1, 1, 32, 32), np.float32))).shape == (1, 7) and small.drop_rate == 0.0
    assert mindcv.models.Mnasnet is Mnasnet and isinstance(upstream, MnasNet)


def test_get_pretrained_cfg_is_a_fresh_dict_that_still_reads_like_the_cfg():
    cfg = get_pretrained_cfg("mnasnet_100")
    assert isinstance(cfg, dict) and cfg["url"] == cfg.url and cfg.url.endswith("mnasnet_100-1bcf43f8.ckpt")
    assert cfg.eval_resize == 256 and cfg.has_weights and "classifier" in cfg and cfg.to_dict() == dict(cfg)
    cfg["url"] = ""
    cfg.num_classes = 5
    assert (
        get_pretrained_cfg("mnasnet_100").url and registry.registered_pretrained_cfg("mnasnet_100").num_classes == 1000
    )
    moved = dataclasses.replace(get_pretrained_cfg("mnasnet_050"), url="file:///x.ckpt")
    assert moved.url == "file:///x.ckpt" and moved.layout == "mindcv_upstream"
    assert (
        get_pretrained_cfg("mnasnet_100", "tv_in1k").layout == "torchvision"
        and get_pretrained_cfg("mnasnet_arch") == {}
    )
    with pytest.raises(AttributeError, match="pretrained cfg has no field 'nope'"):
        _ = cfg.nope


def test_build_model_with_cfg_upstream_form_loads_upstream_weights(served, fixtures_dir, tmp_path):
    folder, base, hits = served
    with open(os.path.join(fixtures_dir, UPSTREAM_CKPT), "rb") as src:
        (folder / UPSTREAM_CKPT).write_bytes(src.read())
    # upstream's own cfg dict for its Mnasnet: first conv 'features.0', no hash, layout left to detection
    default_cfg = {
        "url": base + UPSTREAM_CKPT,
        "num_classes": 10,
        "first_conv": "features.0",
        "classifier": "classifier",
    }
    set_default_download_root(str(tmp_path / "root"))
    try:
        assert get_checkpoint_download_root() == str(tmp_path / "root" / "checkpoints")
        model = build_model_with_cfg(Mnasnet, True, default_cfg, alpha=0.5, num_classes=10)
        assert os.path.isfile(tmp_path / "root" / "checkpoints" / UPSTREAM_CKPT)
        gray = build_model_with_cfg(
            Mnasnet, pretrained=True, default_cfg=default_cfg, alpha=0.5, num_classes=10, in_channels=1
        )
    finally:
        set_default_download_root(None)
    assert hits == ["/" + UPSTREAM_CKPT]  # the second model reused the download
    ref = np.load(os.path.join(fixtures_dir, "mindcv_upstream_mnasnet_050_reference.npz"))
    x = np.random.default_rng(int(ref["input_seed"])).standard_normal(
        (int(ref["batch"]), 3, int(ref["size"]), int(ref["size"]))
    )
    model.set_train(False)
    assert np.abs(model(Tensor(x.astype(np.float32))).asnumpy() - ref["logits"]).max() < 1e-4
    np.testing.assert_allclose(
        gray.conv_stem.weight.asnumpy(), model.conv_stem.weight.asnumpy().sum(axis=1, keepdims=True), rtol=1e-6
    )
    features = build_model_with_cfg(Mnasnet, False, None, features_only=True, out_indices=[1, 3], alpha=0.5)
    outs = features(Tensor(np.zeros((1, 3, 64, 64), np.float32)))
    info = Mnasnet(0.5).feature_info  # strides 4 and 16 of a 64-pixel input
    assert [tuple(o.shape) for o in outs] == [(1, info[1]["chs"], 16, 16), (1, info[3]["chs"], 4, 4)]
    ours = build_model_with_cfg(
        MnasNet, "mnasnet_050", False, arch_def="ds_r1_k3_s1_c16_noskip|ir_r1_k3_s2_e3_c24", num_classes=2
    )
    assert ours.pretrained_cfg is registry.registered_pretrained_cfg("mnasnet_050")
    with pytest.raises(InvalidArgumentError, match="Mnasnet: no published weights for this variant"):
        build_model_with_cfg(Mnasnet, True, {"url": ""}, alpha=0.5)
    with pytest.raises(InvalidArgumentError, match="checkpoint_path is empty"):
        load_model_checkpoint(model, "")
    with pytest.raises(CheckpointError, match="does not exist|No such file|not found"):
        load_model_checkpoint(model, str(tmp_path / "missing.ckpt"))
    with pytest.raises(InvalidArgumentError, match="no published weights"):
        load_pretrained(model, {})
