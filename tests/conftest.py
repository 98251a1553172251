import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

ms.set_device("CPU")
# One build of the direct depthwise kernels for the whole run, subprocesses included (each test has its own
# MINDCV_HOME); tests of the kernel cache itself point MINDCV_KERNEL_CACHE elsewhere.
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
