"""BatchNormSettling: the warning that explains a run validating at chance while it learns (issue 16).

Evaluation normalizes with BatchNorm's moving averages. Started at variance 1.0 and updated with momentum 0.99,
they still carry most of that 1.0 after a few hundred batches, which outweighs the small variances depthwise
layers train to; every such layer then shrinks its output in evaluation. The tests drive one BatchNorm layer with
inputs of known variance, so the share of the starting value is known exactly.
"""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from mindcv.utils.bn_settling import BatchNormSettling

CHANNELS = 8
TRUE_VARIANCE = 0.003**2 * 64  # the variance of the inputs below (what a depthwise layer trains to: ~1e-3)


class OneNorm(nn.Cell):
    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(CHANNELS, momentum=momentum)

    def construct(self, x):
        return self.bn(x)


@pytest.fixture(autouse=True)
def _pynative():
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=mode)


def _train(net: nn.Cell, batches: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    net.set_train(True)
    for _ in range(batches):
        x = rng.standard_normal((16, CHANNELS, 8, 8)) * np.sqrt(TRUE_VARIANCE) + 0.5
        net(Tensor(x.astype(np.float32)))


def test_a_new_layer_at_momentum_099_is_stale_and_the_warning_says_how_long_it_takes():
    net = OneNorm(0.99)
    watch = BatchNormSettling(net)
    _train(net, 37)  # one epoch of the demo dataset at batch 32
    stale = watch.stale_layers(37)
    assert [name for name, _, _ in stale] == ["bn"]
    _, factor, needed = stale[0]
    # the moving variance is 0.99^37 * 1.0 + (1 - 0.99^37) * v against v measured: ~1,200x too large
    keep = 0.99**37
    assert factor == pytest.approx((keep + (1 - keep) * TRUE_VARIANCE) / TRUE_VARIANCE, rel=0.05)
    # within 2x once 0.99^n * (1 / v - 1) <= 1: n = log(v / (1 - v)) / log(0.99) = 742
    assert needed == pytest.approx(np.log(TRUE_VARIANCE / (1 - TRUE_VARIANCE)) / np.log(0.99), abs=15)
    message = watch.warning(37)
    assert "after 37 training batches, 1 of 1 BatchNorm layers" in message
    assert f"(bn: {factor:.3g}x, bn_momentum 0.99)" in message and f"about {needed} batches" in message


def test_the_predicted_number_of_batches_is_when_the_warning_stops():
    net = OneNorm(0.9)
    watch = BatchNormSettling(net)
    _train(net, 20)
    ((_, _, needed),) = watch.stale_layers(20)
    _train(net, needed - 21, seed=1)
    assert watch.stale_layers(needed - 1), "one batch before the predicted count the layer is still stale"
    _train(net, 2, seed=2)
    assert watch.stale_layers(needed + 1) == [] and watch.warning(needed + 1) is None


def test_statistics_that_already_fit_are_not_reported_however_few_the_batches():
    """Fine-tuning from weights whose statistics match the data: mostly starting values, but right ones."""
    net = OneNorm(0.99)
    net.bn.moving_variance.set_data(Tensor(np.full(CHANNELS, TRUE_VARIANCE, np.float32)))
    net.bn.moving_mean.set_data(Tensor(np.full(CHANNELS, 0.5, np.float32)))
    watch = BatchNormSettling(net)
    _train(net, 5)
    assert watch.stale_layers(5) == []


def test_statistics_started_far_below_the_data_are_reported_too():
    net = OneNorm(0.99)
    net.bn.moving_variance.set_data(Tensor(np.full(CHANNELS, TRUE_VARIANCE / 100, np.float32)))
    watch = BatchNormSettling(net)
    _train(net, 3)
    ((name, factor, needed),) = watch.stale_layers(3)
    # 0.97 * v / 100 + 0.03 * v: the evaluation variance is 25x too small, the outputs 5x too large
    assert name == "bn" and factor == pytest.approx(0.97 / 100 + 0.03, rel=0.05) and needed > 3


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_0_or_1_and_no_batches_report_nothing(momentum):
    net = OneNorm(momentum)
    watch = BatchNormSettling(net)
    _train(net, 2)
    assert watch.stale_layers(2) == []
    assert BatchNormSettling(OneNorm(0.99)).stale_layers(0) == []


def test_a_network_without_batchnorm_reports_nothing():
    assert BatchNormSettling(nn.Dense(3, 2)).warning(10) is None


def test_layers_are_named_as_in_the_model_not_after_its_wrappers():
    class Wrapper(nn.Cell):
        def __init__(self, network):
            super().__init__()
            self.network = network

    inner = nn.SequentialCell([nn.BatchNorm2d(CHANNELS), nn.BatchNorm2d(CHANNELS)])
    watch = BatchNormSettling(Wrapper(Wrapper(inner)))
    _train(inner, 3)
    # the second layer sees normalized inputs (variance ~1, its starting value): settled from the first batch
    assert [name for name, _, _ in watch.stale_layers(3)] == ["0"]


def test_a_model_with_upstreams_parameter_names_is_named_by_them():
    # MnasNet-B1 keeps upstream's features.N parameter names over its blocks.i.j cells: name what users filter on
    from mindcv.models import create_model

    net = create_model("mnasnet_050", num_classes=10)
    variances = {p.name for p in net.get_parameters() if p.name.endswith("moving_variance")}
    watch = BatchNormSettling(net)
    names = [name for name, _, _ in watch._layers]
    assert len(names) == len(variances) and {f"{n}.moving_variance" for n in names} == variances
    assert all(n.startswith("features.") for n in names)
