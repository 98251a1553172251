import os
import shutil
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

ms.set_device("CPU")
# One build of the direct depthwise kernels for the whole run, subprocesses included (each test has its own
# MINDCV_HOME); tests of the kernel cache itself point MINDCV_KERNEL_CACHE elsewhere. Under pytest-xdist every
# worker has its own (a test that damages the cache on purpose must not break the other worker's run).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER:
    os.environ["MINDCV_KERNEL_CACHE"] = tempfile.mkdtemp(prefix=f"mindcv-kernels-{_XDIST_WORKER}-")
_KERNEL_CACHE = os.environ.setdefault("MINDCV_KERNEL_CACHE", tempfile.mkdtemp(prefix="mindcv-kernels-"))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def fresh_status(tmp_path, monkeypatch):
    """The direct depthwise kernels' status decided again, with a kernel cache of this test's own; the session's
    status comes back after."""
    from mindcv.kernels import depthwise as dw

    monkeypatch.setenv("MINDCV_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv(dw.ENV_SWITCH, raising=False)
    saved = dw._status
    dw._reset_for_tests()
    yield tmp_path / "kernels"
    dw._status = saved


@pytest.fixture
def fixtures_dir() -> str:
    return FIXTURES


@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def mode(request):
    """Run a test once per execution mode and restore PyNative (the MindSpore default) afterwards."""
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


def one_mode_quick(quick: int = ms.PYNATIVE_MODE):
    """Parametrize the ``mode`` fixture (graph, pynative) with the other mode marked slow: ``-m "not slow"`` runs a
    test in one execution mode, plain ``pytest`` in both. Put it right above the ``def``: the ids stay
    ``graph-...`` / ``pynative-...``."""
    return pytest.mark.parametrize(
        "mode",
        [
            pytest.param(value, id=name, marks=() if value == quick else pytest.mark.slow)
            for value, name in ((ms.GRAPH_MODE, "graph"), (ms.PYNATIVE_MODE, "pynative"))
        ],
        indirect=True,
    )


@pytest.fixture(autouse=True)
def _isolated_cache_and_seed(tmp_path, monkeypatch):
    """Never touch the user's weight cache from a test; make weight initialisation reproducible."""
    monkeypatch.setenv("MINDCV_HOME", str(tmp_path / "mindcv_cache"))
    ms.set_seed(0)
    np.random.seed(0)


def calibrate_bn(model, seed: int = 0):
    """Non-trivial BN statistics, some variances tiny: fresh ones make folding an identity and hide a wrong eps."""
    rng = np.random.default_rng(seed)
    for p in model.get_parameters():
        if "moving_mean" in p.name or "beta" in p.name:
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
        elif "moving_variance" in p.name:
            p.set_data(ms.Tensor(rng.uniform(1e-4, 2.0, p.shape).astype(np.float32)))
        elif "gamma" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    return model


def random_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32))


# train.py's options for a test run on a tiny ImageFolder (``tiny_data``-like): mnasnet_050 at 32 px, a short
# cosine schedule, one loader worker, no progress bar, dropout on and colour jitter off.
TRAIN_OPTIONS = {
    "dataset": "tiny",
    "model": "mnasnet_050",
    "mode": 0,
    "device_target": "CPU",
    "image_resize": 32,
    "batch_size": 8,
    "epoch_size": 2,
    "opt": "adamw",
    "lr": 0.003,
    "warmup_epochs": 0,
    "scheduler": "cosine_decay",
    "decay_epochs": None,  # None here: the epoch_size
    "num_parallel_workers": 1,
    "progress": False,
    "log_interval": 0,
    "crop_pct": 1.0,
    "bn_momentum": 0.9,
    "drop_rate": 0.2,
    "color_jitter": 0,
    "seed": 7,
}


def train_argv(data_dir: str, ckpt_save_dir: str, *extra: str, **options) -> list:
    """train.py's command line (without the script) for a test run: ``TRAIN_OPTIONS`` with ``--data_dir`` and
    ``--ckpt_save_dir``.

    ``options`` replace defaults or add options (``scale=(1.0, 1.0)`` gives ``--scale 1.0 1.0``; ``None`` leaves the
    option out); ``decay_epochs`` follows ``epoch_size`` unless given. ``extra`` tokens are appended as they are
    (argparse keeps the last value of an option given twice).
    """
    values = {**TRAIN_OPTIONS, **options}
    if values["decay_epochs"] is None and "decay_epochs" not in options:
        values["decay_epochs"] = values["epoch_size"]
    values = {"data_dir": data_dir, **values, "ckpt_save_dir": ckpt_save_dir}
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        argv.extend(str(v) for v in (value if isinstance(value, (tuple, list)) else [value]))
    return [*argv, *extra]


def run_main(script: str, argv) -> SimpleNamespace:
    """``python <script> <argv>`` (train.py or validate.py) called in this process: its ``main`` on the parsed
    command line, errors turned into an exit code as its ``cli`` does (``mindcv.utils.cli.call_cli``).

    For tests where the process boundary is not the point. Returns ``returncode``, ``stdout``, ``stderr`` like
    ``subprocess.run(..., text=True)``; MindSpore's mode, the ``mindcv`` logger and output capture are restored.
    """
    import contextlib
    import importlib
    import io
    import logging

    import config
    from mindcv.utils.cli import call_cli

    module = importlib.import_module(script[: -len(".py")])
    argv = [str(a) for a in argv]
    if script == "validate.py":
        body = lambda: module.main(config.parse_args(argv), config.explicit_keys(argv))  # noqa: E731
    else:
        body = lambda: module.main(config.parse_args(argv))  # noqa: E731
    logger = logging.getLogger("mindcv")
    saved = (list(logger.handlers), logger.level, logger.propagate, ms.get_context("mode"))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = call_cli(script, body, logger=module.logger if script == "train.py" else None)  # as their cli
    finally:
        for handler in list(logger.handlers):
            if handler not in saved[0]:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        ms.set_context(mode=saved[3])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 classes of coloured squares/stripes/circles, 16 train + 6 val images each, 36x36 JPEGs."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:36, 0:36]
    for split, n in (("train", 16), ("val", 7)):
        for cls in ("blocks", "circles", "stripes"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.full((36, 36, 3), rng.integers(0, 80, 3), np.uint8)
                if cls == "blocks":
                    img[8:28, 8:28] = 220
                elif cls == "circles":
                    img[(yy - 18) ** 2 + (xx - 18) ** 2 < 100] = 220
                else:
                    img[(xx // 3) % 2 == 0] = 220
                img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=92)
    return str(root)


def pytest_sessionfinish(session, exitstatus):
    if os.path.basename(_KERNEL_CACHE).startswith("mindcv-kernels-"):
        shutil.rmtree(_KERNEL_CACHE, ignore_errors=True)
