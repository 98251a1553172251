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


# -- hardening: abbreviations, explicit keys, duplicate keys, encodings, models, ranges, non-finite numbers --------


def test_abbreviated_options_are_rejected_with_the_full_name(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--crop", "0.95"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --crop 0.95" in err and "--crop_pct" in err
    assert len(err.strip().splitlines()) == 1  # one line, not argparse's usage block
    with pytest.raises(SystemExit):
        parse_args(["--conf", "x.yaml"])  # not taken for -c/--config either
    for parser in create_parser():
        assert parser.allow_abbrev is False
    assert parse_args(["--crop_pct=0.95"]).crop_pct == 0.95


def test_explicit_keys_follow_the_parser(tmp_path):
    from config import explicit_keys

    recipe = _yaml(tmp_path, "batch_size: 64\nmodel: mnasnet_075\n")
    keys = explicit_keys(["-c", recipe, "--crop_pct=0.95", "--ema", "--lr", "0.1", "--scale", "0.2", "1.0"])
    assert sorted(keys) == ["batch_size", "crop_pct", "ema", "lr", "model", "scale"]
    assert explicit_keys(["--crop_pct", "0.875"]) == ["crop_pct"]  # equal to the default, still explicit
    assert explicit_keys([]) == [] and "config" not in explicit_keys(["-c", recipe])
    with pytest.raises(SystemExit):
        explicit_keys(["--crop", "0.95"])


def test_validate_keeps_an_explicit_crop_pct_over_the_checkpoint():
    from config import explicit_keys
    from validate import resolve_eval_transform

    argv = ["--crop_pct=0.95"]
    resolved = resolve_eval_transform(parse_args(argv), explicit_keys(argv), {"eval_transform": {"crop_pct": 0.5}})
    assert resolved["crop_pct"] == 0.95


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lr: 0.1\nbatch_size: 4\nlr: 0.2\n", r"key 'lr' is given twice \(line 1 and line 3\)"),
        ("scale: [0.1, 1.0]\nema: true\nema: false\n", r"key 'ema' is given twice \(line 2 and line 3\)"),
    ],
)
def test_duplicate_yaml_keys_are_rejected_naming_key_and_lines(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_args(["-c", _yaml(tmp_path, text)])


def test_yaml_merge_keys_may_still_be_overridden():
    from config import UniqueKeySafeLoader

    data = yaml.load("base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 3\n", Loader=UniqueKeySafeLoader)
    assert data["child"] == {"x": 1, "y": 3}
    with pytest.raises(yaml.YAMLError, match="duplicate key 'x'"):
        yaml.load("a:\n  x: 1\n  x: 2\n", Loader=UniqueKeySafeLoader)  # nested mappings too


def test_non_utf8_yaml_names_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"\xff\xfe lr: 1")
    with pytest.raises(ConfigError, match=r"latin1\.yaml' is not UTF-8 text: byte 0xff at byte offset 0"):
        parse_args(["-c", str(path)])
    path.write_bytes("model: mnasnet_100\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="byte 0xe9 at byte offset 24"):
        parse_args(["-c", str(path)])
    path.write_bytes(b"\xef\xbb\xbflr: 0.5\n")  # a UTF-8 byte order mark is fine
    assert parse_args(["-c", str(path)]).lr == 0.5


@pytest.mark.parametrize("source", ["yaml", "cli"])
def test_unknown_model_is_rejected_with_close_matches(tmp_path, source):
    argv = ["-c", _yaml(tmp_path, "model: mnasnet_10\n")] if source == "yaml" else ["--model", "mnasnet_10"]
    with pytest.raises(ConfigError) as exc:
        parse_args(argv)
    message = str(exc.value)
    assert "'model'" in message and "'mnasnet_10'" in message and "did you mean" in message
    assert "'mnasnet_100'" in message and "mindcv.list_models()" in message
    with pytest.raises(
        ConfigError, match="'model' 'mnasnet_100.nope': model 'mnasnet_100' has no weights tagged 'nope'"
    ):
        parse_args(["--model", "mnasnet_100.nope"])


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("batch_size", 0, "'batch_size' must be an integer >= 1, got 0"),
        ("epoch_size", 0, "'epoch_size' must be an integer >= 1"),
        ("num_parallel_workers", 0, "'num_parallel_workers' must be an integer >= 1"),
        ("val_interval", 0, "'val_interval' must be an integer >= 1"),
        ("ckpt_save_interval", 0, "'ckpt_save_interval' must be an integer >= 1"),
        ("keep_checkpoint_max", 0, "'keep_checkpoint_max' must be an integer >= 1"),
        ("gradient_accumulation_steps", 0, "'gradient_accumulation_steps' must be an integer >= 1"),
        ("image_resize", 0, "'image_resize' must be an integer >= 1"),
        ("log_interval", -1, "'log_interval' must be an integer >= 0"),
        ("hflip", 1.5, r"'hflip' must be a probability in \[0, 1\], got 1.5"),
        ("vflip", -0.1, r"'vflip' must be a probability in \[0, 1\]"),
        ("re_prob", 2, r"'re_prob' must be a probability in \[0, 1\]"),
        ("cutmix_prob", 1.01, r"'cutmix_prob' must be a probability in \[0, 1\]"),
        ("label_smoothing", 1.0, r"'label_smoothing' must be in \[0, 1\), got 1.0"),
        ("crop_pct", 0, r"'crop_pct' must be in \(0, 1\], got 0.0"),
        ("crop_pct", 1.2, r"'crop_pct' must be in \(0, 1\]"),
        ("loss_scale", 0, "'loss_scale' must be > 0"),
        ("clip_value", -1, "'clip_value' must be > 0"),
        ("ema_decay", 1.5, r"'ema_decay' must be in \[0, 1\]"),
        ("warmup_epochs", -1, "'warmup_epochs' must be an integer >= 0"),
        ("weight_decay", -1e-4, "'weight_decay' must be >= 0"),
        ("momentum", -0.9, "'momentum' must be >= 0"),
        ("lr", -1, "'lr' must be a finite number >= 0, got -1.0"),
        ("min_lr", -1e-6, "'min_lr' must be a finite number >= 0"),
        ("warmup_factor", -0.1, "'warmup_factor' must be a finite number >= 0"),
        ("scale", "[0.9, 0.1]", "'scale' must be two numbers 0 < min <= max"),
    ],
)
@pytest.mark.parametrize("source", ["yaml", "cli"])
def test_out_of_range_values_are_rejected_naming_the_option(tmp_path, key, value, needle, source):
    if source == "yaml":
        argv, where = ["-c", _yaml(tmp_path, f"{key}: {value}\n")], "r.yaml"
    else:
        values = yaml.safe_load(str(value))
        if isinstance(values, list):
            argv = [f"--{key}", *map(str, values)]
        else:
            argv = [f"--{key}={values}"]  # "--min_lr -1e-06" would read as an option to argparse
        where = "command line"
    with pytest.raises(ConfigError, match=needle) as exc:
        parse_args(argv)
    assert where in str(exc.value)


@pytest.mark.parametrize(
    "text", ["lr: .nan", "lr: nan", "lr: .inf", "lr: -.inf", "min_lr: .nan", "warmup_factor: .inf"]
)
def test_non_finite_learning_rates_are_rejected(tmp_path, text):
    with pytest.raises(ConfigError, match=r"must be a finite number"):
        parse_args(["-c", _yaml(tmp_path, text + "\n")])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_non_finite_or_negative_lr_on_the_command_line(value):
    with pytest.raises(ConfigError, match=f"command line: 'lr' must be a finite number.*got {value}"):
        parse_args([f"--lr={value}"])


def test_every_float_option_must_be_finite(tmp_path):
    _, parser = create_parser()
    floats = [a.dest for a in parser._actions if a.type is float or getattr(a.type, "kind", None) is float]
    assert {"lr", "decay_rate", "aux_factor", "cycle_decay", "mean", "color_jitter", "bn_eps"} <= set(floats)
    for key in floats:
        action = next(a for a in parser._actions if a.dest == key)
        value = "[.nan, 1.0]" if action.nargs == 2 else ("[.inf]" if action.nargs == "+" else ".inf")
        with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
            parse_args(["-c", _yaml(tmp_path, f"{key}: {value}\n")])


def test_a_value_finite_in_float64_but_not_in_float32_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' must be a finite number of magnitude <= 3.403e\+38 \(float32\)"):
        parse_args(["-c", _yaml(tmp_path, "lr: 1e300\n")])


def test_a_huge_but_finite_lr_is_accepted(tmp_path):
    assert parse_args(["-c", _yaml(tmp_path, "lr: 1e8\n")]).lr == 1e8  # divergence is handled in training
    assert parse_args(["--lr", "1e8"]).lr == 1e8
    assert parse_args(["--lr", "0"]).lr == 0.0


def test_yaml_errors_are_one_line(tmp_path):
    for text in ("lr: [\n", "a: b: c\n", "lr: 0.1\nlr: 0.2\n", "x: !!python/object:os.system ls\n"):
        with pytest.raises(ConfigError) as exc:
            parse_args(["-c", _yaml(tmp_path, text)])
        assert "\n" not in str(exc.value)


# -- upstream options: each works, is refused naming what is valid, or (sink mode) warns that it is not used -------


class _Records(__import__("logging").Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def config_warnings():
    import logging

    handler = _Records()
    logger = logging.getLogger("mindcv.config")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_upstream_recipe_with_dataset_sink_mode_true_parses_and_warns_once(tmp_path, config_warnings):
    """Upstream's MnasNet recipes set ``dataset_sink_mode: True``: accepted verbatim, one warning that it is unused."""
    upstream = (
        "mode: 0\ndistribute: False\nnum_parallel_workers: 2\ndataset: 'imagenet'\ndata_dir: '/path/to/imagenet'\n"
        "shuffle: True\ndataset_download: False\nbatch_size: 256\ndrop_remainder: True\nimage_resize: 224\n"
        "scale: [0.08, 1.0]\nratio: [0.75, 1.333]\nhflip: 0.5\ninterpolation: 'bilinear'\ncrop_pct: 0.875\n"
        "model: 'mnasnet_075'\nnum_classes: 1000\npretrained: False\nckpt_path: ''\nkeep_checkpoint_max: 10\n"
        "ckpt_save_dir: './ckpt'\nepoch_size: 350\ndataset_sink_mode: True\namp_level: 'O0'\nloss: 'CE'\n"
        "label_smoothing: 0.1\nscheduler: 'cosine_decay'\nmin_lr: 1e-10\nlr: 0.016\nwarmup_epochs: 5\n"
        "decay_epochs: 345\nopt: 'rmsprop'\nmomentum: 0.9\nweight_decay: 1e-5\nloss_scale: 256\n"
        "use_nesterov: False\neps: 1e-3\n"
    )
    recipe = _yaml(tmp_path, upstream, "mnasnet_0.75_ascend.yaml")
    args = parse_args(["-c", recipe])
    assert args.dataset_sink_mode is True and args.model == "mnasnet_075"
    assert len(config_warnings) == 1
    assert config_warnings[0].startswith(f"{recipe}: dataset_sink_mode True is not used")
    parse_args(["-c", recipe, "--dataset_sink_mode", "False"])  # the no-op value: silent
    parse_args([])
    assert len(config_warnings) == 1
    parse_args(["--dataset_sink_mode"])
    assert config_warnings[-1].startswith("command line: dataset_sink_mode True is not used")


@pytest.mark.parametrize("source", ["yaml", "cli"])
def test_val_amp_level_other_than_o0_is_refused_on_the_cpu_and_with_onnxruntime(tmp_path, source):
    argv = ["-c", _yaml(tmp_path, "val_amp_level: O2\n")] if source == "yaml" else ["--val_amp_level", "O2"]
    where = str(tmp_path / "r.yaml") if source == "yaml" else "command line"
    with pytest.raises(ConfigError) as exc:
        parse_args(argv)  # device_target defaults to CPU
    assert str(exc.value).startswith(f"{where}: 'val_amp_level' must be O0 on the CPU, got 'O2'")
    assert parse_args(argv + ["--device_target", "GPU"]).val_amp_level == "O2"
    with pytest.raises(ConfigError, match="'val_amp_level' must be O0 with backend onnxruntime, got 'O2'"):
        parse_args(argv + ["--device_target", "GPU", "--backend", "onnxruntime"])
    assert parse_args(["--val_amp_level", "O0"]).val_amp_level == "O0"


@pytest.mark.slow
def test_validate_honours_eval_shuffle_and_val_amp_level(tiny_data, tmp_path, monkeypatch):
    """Shuffling changes the order the validation images are read in, not the metrics; a val_amp_level
    (allowed on GPU/Ascend) is applied to the evaluated network."""
    import validate
    from config import explicit_keys
    from mindcv.models import create_model
    from mindcv.models.checkpoint import save_checkpoint

    ckpt = str(tmp_path / "three_classes.ckpt")
    save_checkpoint(create_model("mnasnet_050", num_classes=3), ckpt)
    orders, amp_calls = [], []
    real_create_dataset = validate.create_dataset

    def recording_create_dataset(*args, **kwargs):
        dataset = real_create_dataset(*args, **kwargs)
        orders.append(dataset.shard_sampler.indices())
        return dataset

    monkeypatch.setattr(validate, "create_dataset", recording_create_dataset)
    monkeypatch.setattr(validate.ms.amp, "auto_mixed_precision", lambda net, level: amp_calls.append(level) or net)
    base = ["--dataset", "tiny", "--data_dir", tiny_data, "--model", "mnasnet_050", "--ckpt_path", ckpt]
    base += ["--mode", "1", "--image_resize", "32", "--crop_pct", "1.0", "--batch_size", "4", "--progress", "False"]
    results = []
    for extra in ([], ["--eval_shuffle", "True"]):
        argv = base + extra
        args = parse_args(argv)
        if extra:
            args.val_amp_level = "O2"  # what a GPU run may ask for (config.py refuses it on this CPU)
        results.append(validate.main(args, explicit_keys(argv)))
    assert orders[0] == list(range(21)) and orders[1] != orders[0] and sorted(orders[1]) == orders[0]
    assert amp_calls == ["O2"]
    plain, shuffled = results
    assert (plain["top1"], plain["top5"], plain["num_samples"]) == (shuffled["top1"], shuffled["top5"], 21)
    assert shuffled["loss"] == pytest.approx(plain["loss"], rel=1e-5)
