"""BatchNorm folding keeps every model's inference output."""

import numpy as np
import pytest
from conftest import random_images

import mindspore as ms

from mindcv.models import create_model, list_models
from mindcv.models.fuse import fuse_bn

pytestmark = pytest.mark.slow  # whole models in both modes; fuse_bn runs in the quick loop through export_checked


@pytest.mark.parametrize("name", ["mnasnet_050", "semnasnet_050", "mnasnet_small"])
def test_folded_model_matches(name, mode):
    rng = np.random.default_rng(0)
    model = create_model(name, num_classes=10)
    for p in model.get_parameters():  # non-trivial statistics
        if "moving_mean" in p.name:
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        elif "moving_variance" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    state = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    model.set_train(False)
    x = random_images(2, 64)
    reference = create_model(name, num_classes=10)
    for p in reference.get_parameters():
        p.set_data(ms.Tensor(state[p.name]))
    reference.set_train(False)
    expected = reference(x).asnumpy()
    pairs = fuse_bn(model)  # before the model's first forward (GRAPH mode caches compiled graphs)
    assert pairs > 40 and not any("moving_" in p.name for p in model.get_parameters())
    assert np.abs(model(x).asnumpy() - expected).max() < 1e-4
    assert name in list_models()
