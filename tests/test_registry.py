"""The registry and factory API that upstream mindcv code relies on."""

import subprocess
import sys

import pytest

import mindcv
from mindcv.models import (
    create_model,
    get_pretrained_cfg_value,
    has_pretrained_cfg_key,
    is_model_in_modules,
    is_model_pretrained,
    list_models,
    list_modules,
    model_entrypoint,
    register_model,
)


def test_top_level_exports():
    for name in (
        "create_model",
        "list_models",
        "list_modules",
        "is_model_in_modules",
        "model_entrypoint",
        "is_model_pretrained",
    ):
        assert getattr(mindcv, name) is getattr(mindcv.models, name)
    assert mindcv.mnasnet_100 is model_entrypoint("mnasnet_100")
    # upstream mindcv exposes every factory and the common utilities at the top level too
    for name in (
        "create_dataset",
        "create_transforms",
        "create_loader",
        "create_loss",
        "create_optimizer",
        "create_scheduler",
        "CheckpointManager",
        "set_seed",
        "DownLoad",
        "get_dataset_download_root",
    ):
        assert hasattr(mindcv, name) and name in mindcv.__all__, name
    from mindcv.scheduler import dynamic_lr

    assert callable(dynamic_lr.cosine_decay_lr)


def test_listing_and_filters():
    assert list_modules() == ["mnasnet"]
    assert list_models("semnasnet*") == ["semnasnet_050", "semnasnet_075", "semnasnet_100", "semnasnet_140"]
    assert list_models(["mnasnet_1*"], exclude_filters="*_140") == ["mnasnet_100", "mnasnet_130"]
    assert list_models(module="mnasnet") == list_models()
    assert list_models(pretrained=True) == [
        "mnasnet_050",
        "mnasnet_075",
        "mnasnet_100",
        "mnasnet_130",
        "mnasnet_140",
        "mnasnet_small",
        "semnasnet_075",
        "semnasnet_100",
    ]
    for name in list_models():
        assert is_model_in_modules(name, ["mnasnet"])
    with pytest.raises(TypeError):
        is_model_in_modules("mnasnet_100", "mnasnet")


def test_pretrained_cfg_queries():
    assert is_model_pretrained("mnasnet_100") and not is_model_pretrained("semnasnet_050")
    assert get_pretrained_cfg_value("mnasnet_100", "url").endswith("mnasnet_100-1bcf43f8.ckpt")
    assert has_pretrained_cfg_key("mnasnet_100", "top1") and not has_pretrained_cfg_key("semnasnet_050", "top1")


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(
        RuntimeError, match=r"Unknown model 'mnasnet_10'\. Did you mean .*'mnasnet_100'.*Available models: mnasnet_050"
    ):
        create_model("mnasnet_10")
    with pytest.raises(RuntimeError, match="Unknown model 'resnet50'"):
        model_entrypoint("resnet50")


def test_duplicate_registration_is_an_error():
    def mnasnet_100(**kwargs):  # same name as a zoo model
        return None

    mnasnet_100.__module__ = "mindcv.models.mnasnet"
    with pytest.raises(ValueError, match="model 'mnasnet_100' is already registered"):
        register_model(mnasnet_100)


def test_upstream_entrypoint_signature():
    model = model_entrypoint("mnasnet_050")(pretrained=False, num_classes=10, in_channels=3)
    assert model.num_classes == 10


def test_convert_cli(fixtures_dir, tmp_path):
    dst = tmp_path / "tv050.ckpt"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mindcv.tools.convert_weights",
            f"{fixtures_dir}/torchvision_mnasnet0.5.safetensors",
            str(dst),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "torchvision layout" in run.stdout and "model mnasnet_050" in run.stdout and "BN eps 1e-05" in run.stdout
    model = create_model("mnasnet_050", num_classes=10, checkpoint_path=str(dst))
    assert model.bn_eps == 1e-5
    bad = subprocess.run(
        [sys.executable, "-m", "mindcv.tools.convert_weights", str(tmp_path / "missing.pth"), str(tmp_path / "x.ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "missing.pth' does not exist" in bad.stderr


@pytest.mark.slow
def test_a_weights_tag_is_checked_in_one_place_with_one_message(monkeypatch):
    """create_model, build_model_with_cfg and get_pretrained_cfg all go through select_pretrained_tag."""
    from mindcv.errors import InvalidArgumentError
    from mindcv.models import build_model_with_cfg, get_pretrained_cfg, registry
    from mindcv.models.mnasnet import MnasNet, pretrained_tags

    message = "model 'mnasnet_100' has no weights tagged 'nope'; available tags: mindcv_in1k, tv_in1k, timm_in1k"
    attempts = [
        lambda: create_model("mnasnet_100.nope"),
        lambda: build_model_with_cfg(MnasNet, "mnasnet_100", False, pretrained_tags["mnasnet_100"], "nope"),
        lambda: get_pretrained_cfg("mnasnet_100", "nope"),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidArgumentError) as exc:
            attempt()
        assert str(exc.value) == message
    calls = []
    real = registry.select_pretrained_tag
    monkeypatch.setattr(registry, "select_pretrained_tag", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr("mindcv.models.model_factory.select_pretrained_tag", registry.select_pretrained_tag)
    assert create_model("mnasnet_100.tv_in1k", num_classes=3).pretrained_cfg.layout == "torchvision"
    assert calls == ["tv_in1k"]  # checked once, not once per layer of the factory
