import os

import numpy as np
import pytest

import mindspore as ms

ms.set_device("CPU")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


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


def random_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32))
