"""config.py: defaults <- YAML <- command line, strict keys and types."""

import glob
import os

import pytest
import yaml

from config import ConfigError, _check_cfgs_in_parser, create_parser, parse_args, save_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yaml(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_precedence_defaults_yaml_cli(tmp_path):
    recipe = _yaml(tmp_path, "lr: 0.5\nbatch_size: 64\nmodel: mnasnet_075\n")
    args = parse_args(["-c", recipe, "--lr", "0.25"])
    assert args.lr == 0.25 and args.batch_size == 64 and args.model == "mnasnet_075"
    assert args.momentum == 0.9  # code default
    assert parse_args([]).lr == 0.001


def test_yaml_scientific_notation_and_types(tmp_path):
    args = parse_args(
        ["-c", _yaml(tmp_path, "weight_decay: 1e-5\nmin_lr: 1e-10\neps: 1e-3\nscale: [0.5, 1.0]\nema: yes\n")]
    )
    assert args.weight_decay == 1e-5 and isinstance(args.weight_decay, float)
    assert args.min_lr == 1e-10 and args.eps == 1e-3 and args.scale == [0.5, 1.0] and args.ema is True


@pytest.mark.parametrize(
    "text, needle",
    [
        ("valid: 1\n", "unknown option 'valid'"),
        ("batch_size: 1.5\n", "'batch_size' must be an integer"),
        ("lr: fast\n", "'lr' expects float"),
        ("opt: [adam]\n", "'opt' takes a single value"),
        ("scale: [0.1]\n", "'scale' needs 2 values"),
        ("mode: 3\n", "'mode' must be one of 0, 1"),
        ("ema: maybe\n", "'ema' expects"),
        ("lr: true\n", "'lr' must be a number"),
        ("- a\n- b\n", "must be a mapping"),
        ("lr: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_rejected_naming_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_args(["-c", _yaml(tmp_path, text)])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["-c", str(tmp_path / "nope.yaml")])


def test_upstream_key_check_message():
    _, parser = create_parser()
    _check_cfgs_in_parser({"mode": 0, "dataset": "imagenet"}, parser)
    with pytest.raises(KeyError, match="valid does not exist in ArgumentParser!"):
        _check_cfgs_in_parser({"valid": 1}, parser)


def test_cli_bool_list_tuple_options():
    args = parse_args(
        [
            "--ema",
            "true",
            "--val_while_train",
            "--scale",
            "0.2",
            "1.0",
            "--multi_step_decay_milestones",
            "3",
            "6",
            "--drop_overflow_update",
            "false",
            "--mean",
            "1",
            "2",
            "3",
            "--color_jitter",
            "0.1",
            "0.2",
            "0.3",
        ]
    )
    assert args.ema is True and args.val_while_train is True and args.drop_overflow_update is False
    assert args.scale == [0.2, 1.0] and args.multi_step_decay_milestones == [3, 6] and args.mean == [1.0, 2.0, 3.0]
    assert args.color_jitter == [0.1, 0.2, 0.3] and parse_args(["--color_jitter", "0.3"]).color_jitter == 0.3
    with pytest.raises(SystemExit):
        parse_args(["--ema", "perhaps"])


def test_effective_config_is_saved(tmp_path):
    args = parse_args(["--lr", "0.3", "--scale", "0.4", "1.0"])
    save_args(args, str(tmp_path / "out" / "config.yaml"), rank=None)  # standalone runs save too (upstream did not)
    saved = yaml.safe_load(open(tmp_path / "out" / "config.yaml"))
    assert saved["lr"] == 0.3 and saved["scale"] == [0.4, 1.0]
    reparsed = parse_args(["-c", str(tmp_path / "out" / "config.yaml")])
    assert reparsed.lr == 0.3 and reparsed.scale == [0.4, 1.0]
    save_args(args, str(tmp_path / "rank1.yaml"), rank=1)
    assert not os.path.exists(tmp_path / "rank1.yaml")


def test_every_shipped_recipe_parses_and_names_a_model():
    from mindcv.models import is_model

    recipes = sorted(glob.glob(os.path.join(REPO, "configs", "mnasnet", "*.yaml")))
    assert len(recipes) >= 16
    for recipe in recipes:
        args = parse_args(["-c", recipe])
        assert is_model(args.model), recipe
        assert args.device_target in ("CPU", "GPU", "Ascend") and args.mode in (0, 1), recipe
        raw = yaml.safe_load(open(recipe))
        assert "device_target" in raw and "mode" in raw, f"{recipe} must set device_target and mode"


def test_every_shipped_search_config_parses():
    from search import load_config

    configs = sorted(glob.glob(os.path.join(REPO, "configs", "nas", "*.yaml")))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path, {})
        assert cfg.budget >= 1 and cfg.strategies and cfg.latency.mode in ("measured", "lut"), path
