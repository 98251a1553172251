"""Upstream mindcv's user-visible behaviour: decode-led transform lists, MixUp at batch 1, truncated warmup,
and the factories' defaults."""

import inspect
import io
import logging

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision
from mindspore.dataset.vision import Inter

from mindcv.data import create_dataset, create_loader, create_transforms
from mindcv.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mindcv.data.image_folder import UnreadableImageError, decode_image
from mindcv.data.transforms_factory import DecodeImage
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler
from mindcv.utils.logger import ConsoleHandler, set_logger

MEAN, STD = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like image (smooth gradients plus texture), so that resampling differences would show."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, (1, 1, 3))
    img = base + 60 * np.sin(xx / 7.0)[..., None] + 40 * np.cos(yy / 5.0)[..., None] + rng.normal(0, 15, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture
def png_folder(tmp_path):
    """root/val/{a,b}/ with one lossless PNG each (70x90 and 90x70): every decoder gives the same pixels."""
    rng = np.random.default_rng(0)
    for cls, (h, w) in (("a", (70, 90)), ("b", (90, 70))):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(_smooth_image(rng, h, w)).save(tmp_path / "val" / cls / "0.png")
    return tmp_path


def _rows(loader):
    return list(loader.create_tuple_iterator(num_epochs=1, output_numpy=True))


def _eval_batch(root, transform, **kwargs):
    """The two images of ``png_folder`` through create_dataset + create_loader (validate.py's path)."""
    dataset = create_dataset("imagenet", root=str(root), split="val", shuffle=False, is_training=False, **kwargs)
    ((images, labels),) = _rows(create_loader(dataset, 2, transform=transform))
    assert list(labels) == [0, 1]
    return images


# ------------------------------------------------------------------ decode-led transform lists
def test_every_create_transforms_list_starts_with_the_decode_step():
    lists = [
        create_transforms("imagenet", 32),
        create_transforms("imagenet", 32, is_training=True),
        create_transforms("", (32, 48), is_training=True),
        create_transforms("cifar10", 32),
        create_transforms("cifar10", 32, is_training=True),
        create_transforms("mnist", 28, is_training=True),
        create_transforms("imagenet", 32, is_training=True, separate=True)[0],
    ]
    for ops in lists:
        assert isinstance(ops[0], DecodeImage) and not any(isinstance(op, DecodeImage) for op in ops[1:])
    # the op after it is the geometric one upstream's pop(0) must keep
    assert isinstance(create_transforms("imagenet", 32)[1], vision.Resize)


def test_upstream_infer_flow_gives_the_evaluation_pipelines_tensor(png_folder):
    expected = _eval_batch(png_folder, create_transforms("imagenet", 32))
    for k, cls in enumerate("ab"):
        # upstream infer.py: create_transforms, pop(0) to drop the Decode, apply the rest to a PIL image
        transform_list = create_transforms(dataset_name="imagenet", image_resize=32, is_training=False)
        assert isinstance(transform_list.pop(0), DecodeImage)
        img = Image.open(png_folder / "val" / cls / "0.png").convert("RGB")
        for transform in transform_list:
            img = transform(img)
        assert img.shape == (3, 32, 32) and img.dtype == np.float32
        np.testing.assert_allclose(img, expected[k], rtol=0, atol=1e-5)
        # without the pop the decode step passes the PIL image on: the same tensor again
        out = Image.open(png_folder / "val" / cls / "0.png")
        for transform in create_transforms("imagenet", 32):
            out = transform(out)
        np.testing.assert_allclose(out, expected[k], rtol=0, atol=1e-5)
    # a JPEG: PIL and our decoder (infer.py's Classifier: decode_image, then the whole list) agree as well
    jpeg = png_folder / "photo.jpg"
    Image.fromarray(_smooth_image(np.random.default_rng(3), 120, 160)).save(jpeg, quality=90)
    transform_list = create_transforms("imagenet", 32)
    transform_list.pop(0)
    upstream = Image.open(jpeg).convert("RGB")
    for transform in transform_list:
        upstream = transform(upstream)
    ours = decode_image(str(jpeg))[0]
    for transform in create_transforms("imagenet", 32):
        ours = transform(ours)
    np.testing.assert_allclose(upstream, ours, rtol=0, atol=1e-5)


def test_decode_step_decodes_bytes_and_passes_decoded_images(png_folder):
    raw = (png_folder / "val" / "a" / "0.png").read_bytes()
    pixels = np.asarray(Image.open(png_folder / "val" / "a" / "0.png").convert("RGB"))
    decode = DecodeImage()
    np.testing.assert_array_equal(decode(raw), pixels)
    np.testing.assert_array_equal(decode(np.frombuffer(raw, np.uint8)), pixels)  # ImageFolderDataset's bytes
    assert decode(pixels) is pixels
    gray = Image.open(png_folder / "val" / "a" / "0.png").convert("L")
    np.testing.assert_array_equal(decode(gray), np.asarray(gray.convert("RGB")))  # RGB, as decoded files are
    with pytest.raises(UnreadableImageError, match="unreadable image '<12 bytes of encoded image>'"):
        decode(b"not an image")
    with pytest.raises(UnreadableImageError, match="above the limit of 100"):
        DecodeImage(max_image_pixels=100)(raw)
    with pytest.raises(TypeError, match="DecodeImage expects encoded image bytes.*got str"):
        decode("0.png")


@pytest.mark.parametrize("style", ["Decode()", "Decode(to_pil=True)", "RandomCropDecodeResize", "Compose"])
def test_a_user_list_starting_with_a_mindspore_decode_works_on_our_datasets(png_folder, style):
    if style == "Compose":  # the same list wrapped in one Compose op
        user = [T.Compose([vision.Decode(), vision.Resize(36), vision.CenterCrop(32), vision.Normalize(MEAN, STD)])]
        user.append(vision.HWC2CHW())
    elif style == "Decode()":
        user = [
            vision.Decode(),
            vision.Resize(36),
            vision.CenterCrop(32),
            vision.Normalize(MEAN, STD),
            vision.HWC2CHW(),
        ]
    elif style == "Decode(to_pil=True)":  # a PIL chain: Resize and CenterCrop run their PIL implementation
        user = [vision.Decode(to_pil=True), vision.Resize(36), vision.CenterCrop(32), vision.ToTensor()]
    else:  # scale and ratio 1 cannot fit these non-square images: the op's fallback, a centre crop, is deterministic
        user = [
            vision.RandomCropDecodeResize(32, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
            vision.Normalize(MEAN, STD),
            vision.HWC2CHW(),
        ]
    ours = _eval_batch(png_folder, user)
    # the same list on MindSpore's own ImageFolderDataset (encoded bytes), i.e. what it does under upstream mindcv
    reference = ds.ImageFolderDataset(str(png_folder / "val"), shuffle=False, decode=False)
    reference = reference.map(operations=user, input_columns="image").batch(2)
    ((theirs, _),) = _rows(reference)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    if style == "Decode()":  # and it is the batch of our own list
        np.testing.assert_allclose(ours, _eval_batch(png_folder, create_transforms("imagenet", 32)), atol=1e-6)


def test_decode_led_list_still_reports_unreadable_files_by_path_and_skips_them(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_smooth_image(rng, 40, 40)).save(tmp_path / "train" / "a" / f"{i}.jpg")
    bad = tmp_path / "train" / "a" / "1_truncated.jpg"
    bad.write_bytes((tmp_path / "train" / "a" / "0.jpg").read_bytes()[:60])
    dataset = create_dataset("imagenet", root=str(tmp_path), split="train", shuffle=False)
    user = [vision.Decode(), vision.Resize(24), vision.CenterCrop(24), vision.Normalize(MEAN, STD), vision.HWC2CHW()]
    rows = _rows(create_loader(dataset, 1, transform=user))
    assert len(rows) == 4 and all(images.shape == (1, 3, 24, 24) for images, _ in rows)  # replaced, not fatal
    reported = dataset.unreadable.entries()
    assert [path for path, _ in reported] == [str(bad)] and "truncated JPEG" in reported[0][1]


def test_lists_for_encoded_sources_keep_their_decode_step(png_folder):
    """A source other than create_dataset (here encoded bytes) keeps the decode step: it has work to do."""
    source = ds.ImageFolderDataset(str(png_folder / "val"), shuffle=False, decode=False)
    ((images, labels),) = _rows(create_loader(source, 2, transform=create_transforms("imagenet", 32)))
    assert list(labels) == [0, 1]
    np.testing.assert_allclose(images, _eval_batch(png_folder, create_transforms("imagenet", 32)), atol=1e-6)


# ------------------------------------------------------------------ MixUp / CutMix at batch size 1
@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_and_cutmix_accept_batch_size_1(png_folder, caplog, monkeypatch, mixup, cutmix):
    monkeypatch.setattr(logging.getLogger("mindcv"), "propagate", True)  # train tests may have set_logger'd it
    transform = create_transforms("imagenet", 32)  # deterministic, so the mixed batch can be compared

    def dataset():
        return create_dataset("imagenet", root=str(png_folder), split="val", shuffle=False, is_training=False)

    plain = _rows(create_loader(dataset(), 1, transform=transform))
    with caplog.at_level(logging.WARNING):
        mixed = create_loader(
            dataset(),
            1,
            is_training=True,
            mixup=mixup,
            cutmix=cutmix,
            cutmix_prob=1.0,
            num_classes=3,
            transform=transform,
        )
    assert "batch_size=1 mix each image with itself" in caplog.text
    rows = _rows(mixed)
    assert len(rows) == 2
    for (images, labels), (plain_images, plain_labels) in zip(rows, plain):
        np.testing.assert_allclose(images, plain_images, atol=1e-4)  # mixed with itself: unchanged
        expected = np.zeros((1, 3), np.float32)
        expected[0, int(plain_labels[0])] = 1.0
        assert labels.dtype == np.float32
        np.testing.assert_allclose(labels, expected, atol=1e-6)  # the soft-target format of any batch size


# ------------------------------------------------------------------ warmup >= epochs: truncated
def test_a_warmup_longer_than_the_run_is_truncated_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("mindcv"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        lrs = create_scheduler(2, "cosine_decay", lr=0.1, warmup_epochs=4, warmup_factor=0.2, num_epochs=3)
    # by hand: per step k of 2 x 4 warmup steps, 0.1 * (0.2 + 0.8 * k / 8); the run stops after 3 epochs
    assert lrs == pytest.approx([0.1 * (0.2 + 0.8 * k / 8) for k in range(6)])
    assert "warmup_epochs (4) >= num_epochs (3): the warmup is truncated at epoch 3" in caplog.text
    assert "rises to 0.07 (0.7 x lr)" in caplog.text and "'cosine_decay' phase never starts" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stair = create_scheduler(3, "constant", lr=1.0, warmup_epochs=2, num_epochs=2, lr_epoch_stair=True)
    assert stair == pytest.approx([0.0] * 3 + [0.5] * 3)  # per-epoch warmup from 0: epochs 0 and 1 of 2
    assert "only rises to 0.5 (0.5 x lr)" in caplog.text
    assert create_scheduler(2, "constant", lr=1.0, warmup_epochs=2.0, num_epochs=3) == create_scheduler(
        2, "constant", lr=1.0, warmup_epochs=2, num_epochs=3
    )
    for bad in (1.5, -1, True):
        with pytest.raises(ValueError, match=rf"warmup_epochs must be a whole number of epochs >= 0, got {bad!r}"):
            create_scheduler(2, "constant", lr=1.0, warmup_epochs=bad, num_epochs=3)


def test_polynomial_decay_spans_the_epochs_after_the_warmup():
    lrs = create_scheduler(2, "polynomial_decay", lr=1.0, warmup_epochs=1, decay_rate=2.0, decay_epochs=1, num_epochs=5)
    # upstream: lr * (1 - t / main_epochs) ** power over the 4 epochs after the warmup (decay_epochs plays no part)
    assert lrs[2:] == pytest.approx([(1 - k / 8) ** 2 for k in range(8)])


# ------------------------------------------------------------------ defaults
UPSTREAM_DEFAULTS = {  # upstream mindcv's signatures (parameter: default), in order
    create_dataset: dict(
        name="", root=None, split="train", shuffle=True, num_samples=None, num_shards=None, shard_id=None,
        num_parallel_workers=None, download=False, num_aug_repeats=0,
    ),
    create_transforms: dict(dataset_name="", image_resize=224, is_training=False, auto_augment=None, separate=False),
    create_loader: dict(
        dataset=inspect.Parameter.empty, batch_size=inspect.Parameter.empty, drop_remainder=False, is_training=False,
        mixup=0.0, cutmix=0.0, cutmix_prob=0.0, num_classes=1000, transform=None, target_transform=None,
        num_parallel_workers=None, python_multiprocessing=False, separate=False,
    ),
    create_loss: dict(name="CE", weight=None, reduction="mean", label_smoothing=0.0, aux_factor=0.0),
    create_optimizer: dict(
        model_or_params=inspect.Parameter.empty, opt="adam", lr=1e-3, weight_decay=0, momentum=0.9, nesterov=False,
        weight_decay_filter="disable", layer_decay=None, loss_scale=1.0, schedule_decay=4e-3, checkpoint_path="",
        eps=None,  # upstream 1e-10, used by RMSProp only: None gives exactly that (see the test below)
    ),
    create_scheduler: dict(
        steps_per_epoch=inspect.Parameter.empty, scheduler="constant", lr=0.01, min_lr=1e-6, warmup_epochs=3,
        warmup_factor=0.0, decay_epochs=10, decay_rate=0.9, milestones=None, num_epochs=200, num_cycles=1,
        cycle_decay=1.0, lr_epoch_stair=False,
    ),
    set_logger: dict(name=None, output_dir=None, rank=0, log_level=logging.INFO, color=True),
}  # fmt: skip


@pytest.mark.parametrize("fn", list(UPSTREAM_DEFAULTS), ids=lambda fn: fn.__name__)
def test_factories_have_upstreams_parameters_and_defaults(fn):
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    upstream = UPSTREAM_DEFAULTS[fn]
    assert [p.name for p in params[: len(upstream)]] == list(upstream)
    assert {p.name: p.default for p in params[: len(upstream)]} == upstream
    assert all(p.default is not p.empty for p in params[len(upstream) :])  # our additions are optional


def _eps(optimizer) -> float:
    value = optimizer.epsilon if hasattr(optimizer, "epsilon") else optimizer.eps
    return float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value).reshape(-1)[0])


def test_optimizer_epsilons_are_upstreams():
    from mindspore import nn

    net = nn.Dense(3, 2)
    assert _eps(create_optimizer(net, "rmsprop")) == pytest.approx(1e-10)
    assert _eps(create_optimizer(net, "adam")) == pytest.approx(1e-8)
    assert _eps(create_optimizer(net, "rmsprop", eps=1e-3)) == pytest.approx(1e-3)  # the recipes' value
    assert _eps(create_optimizer(net, "adamw", eps=1e-6)) == pytest.approx(1e-6)  # upstream would ignore it
    assert isinstance(create_optimizer(net, "sgd", layer_decay=None), nn.SGD)  # upstream's train.py passes it
    with pytest.raises(ValueError, match="layer_decay=0.75 is not supported"):
        create_optimizer(net, "sgd", layer_decay=0.75)


def test_transform_defaults_follow_upstream():
    train = create_transforms("imagenet", 32, is_training=True)
    assert not any(isinstance(op, vision.RandomColorAdjust) for op in train)  # upstream: color_jitter=None
    assert any(isinstance(op, vision.RandomColorAdjust) for op in create_transforms("", 32, True, color_jitter=0.4))
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for ops in (create_transforms("imagenet", (32, 48), is_training=True), create_transforms("imagenet", (32, 48))):
        out = img
        for op in ops:
            out = op(out)
        assert out.shape == (3, 32, 48)
    for name, inter in (("linear", Inter.BILINEAR), ("cubic", Inter.BICUBIC)):  # MindSpore's aliases, as upstream
        assert create_transforms("imagenet", 32, interpolation=name)[1].interpolation == inter
    with pytest.raises(ValueError, match=r"image_resize must be an integer or \(height, width\), got \(1, 2, 3\)"):
        create_transforms("imagenet", (1, 2, 3))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_set_logger_colours_a_terminal_only_and_needs_no_extra_package(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    logger = set_logger("mindcv.test_colour", output_dir=str(tmp_path))  # color=True by default, as upstream
    try:
        console = next(h for h in logger.handlers if isinstance(h, ConsoleHandler))
        assert console.color
        for stream, coloured in ((_Terminal(), True), (io.StringIO(), False)):
            monkeypatch.setattr("sys.stdout", stream)
            logger.warning("careful")
            assert ("\033[33mWARNING\033[0m - careful" in stream.getvalue()) is coloured
            assert "WARNING - careful" in stream.getvalue().replace("\033[33m", "").replace("\033[0m", "")
        monkeypatch.setenv("NO_COLOR", "1")
        terminal = _Terminal()
        monkeypatch.setattr("sys.stdout", terminal)
        logger.info("plain")
        assert "\033[" not in terminal.getvalue() and "INFO - plain" in terminal.getvalue()
        text = (tmp_path / "train.log").read_text()
        assert "\033[" not in text and text.count("WARNING - careful") == 2  # the file never gets colours
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def test_set_logger_without_a_name_configures_the_root_logger_keeping_foreign_handlers(monkeypatch):
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    level = root.level
    try:
        assert set_logger(color=False) is root
        assert set_logger(color=False) is root  # again: replaces its own handler, keeps the others
        ours = [h for h in root.handlers if getattr(h, "_mindcv_set_logger", False)]
        assert len(ours) == 1 and isinstance(ours[0], ConsoleHandler) and foreign in root.handlers
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_mindcv_set_logger", False)] + [foreign]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_a_parameter_group_that_selects_nothing_fails_loudly():
    """Upstream's fine-tuning guide filters ``features.13`` into a learning-rate group. MnasNet-B1 carries those
    names (tests/test_upstream_param_names.py); a model that does not (A1: ``blocks.S.B``) would get empty
    groups: an error naming the group and the names there are, never an optimizer that ignores the groups."""
    from mindcv.errors import InvalidArgumentError
    from mindcv.models import create_model

    network = create_model("semnasnet_100", num_classes=4)
    params = network.trainable_params()
    lr = [0.01] * 4
    groups = [
        {"params": [p for p in params if "features.13" in p.name], "lr": [v * 1.05 for v in lr]},
        {"params": [p for p in params if ".".join(p.name.split(".")[:2]) != "features.13"], "lr": lr},
        {"order_params": params},
    ]
    with pytest.raises(
        InvalidArgumentError, match=r"parameter group 0 selects no parameters.*blocks\.0.*Only MnasNet-B1"
    ):
        create_optimizer(groups, "momentum", lr=lr)
    # groups written for the model's names work, and the classifier group gets its own rate
    groups = [
        {"params": [p for p in params if "classifier" in p.name], "lr": 0.02},
        {"params": [p for p in params if "classifier" not in p.name], "lr": 0.01},
        {"order_params": params},
    ]
    optimizer = create_optimizer(groups, "momentum", lr=0.01)
    assert len(optimizer.parameters) == len(params)
