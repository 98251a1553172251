"""The weight-sharing supernet: a candidate selected in it computes what a stand-alone model holding the same
weights computes, in training (batch statistics) and evaluation, in both execution modes; selecting another
candidate changes only masks; BN recalibration leaves the candidate's own statistics."""

import numpy as np
import pytest
from conftest import calibrate_bn

import mindspore as ms
from mindspore import Tensor

from mindcv.errors import InvalidArgumentError
from mindcv.models.mnasnet import ARCH_DEFS
from mindcv.nas.search_space import SearchSpace
from mindcv.nas.supernet import SuperNet, recalibrate_bn

SETTINGS = dict(num_classes=5, width_mult=0.5, num_features=64, bn_eps=1e-3, bn_momentum=0.9)
# every kind of decision, in 3 blocks (the full space's supernet takes ~5 s a call in PyNative): a stride-1 first
# block whose widest choice equals the stem (so the residual of a first layer is exercised), 1-3 layers per block
SMALL = dict(channels=(16, 24, 40), repeats=(1, 2, 2), strides=(1, 2, 2))


def _images(n=8, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def _relative_gap(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _build(space, seed=1):
    ms.set_seed(seed)
    net = SuperNet(space, **SETTINGS)
    calibrate_bn(net, seed=3)  # non-trivial statistics everywhere, so a misplaced slice shows
    return net


@pytest.fixture(scope="module")
def small():
    return _build(SearchSpace(**SMALL))


def _check_equal(net, decisions, training_modes=(False, True), size=32):
    net.set_arch(decisions)
    model = net.extract(decisions)
    assert model.arch_def == net.space.decode(decisions)
    x = Tensor(_images(size=size))
    for training in training_modes:
        net.set_train(training)
        model.set_train(training)
        gap = _relative_gap(net(x).asnumpy(), model(x).asnumpy())
        assert gap < 1e-4, f"{net.space.arch_string(decisions)} ({'train' if training else 'eval'}): gap {gap:.2e}"
    net.set_train(False)


def test_sampled_candidates_equal_the_stand_alone_models_holding_their_weights(small):
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(3):
        decisions = small.space.sample(rng)
        seen.update(small.space.block_choice(decisions, b)["op"] for b in range(3))
        _check_equal(small, decisions)
    # the widest and the narrowest corner of every decision, too
    sizes = small.space.num_choices
    _check_equal(small, [n - 1 for n in sizes])
    _check_equal(small, [0] * len(sizes))
    assert len(seen) >= 3, f"the draws should cover most op types, got {seen}"


def test_a_first_layer_residual_between_blocks_is_the_stand_alone_models():
    """Block 0 (stride 1) at width x1.25 has the stem's 16 channels at width 0.5: its first layer adds the input."""
    space = SearchSpace(**SMALL)
    net = _build(space)
    decisions = space.sample(np.random.default_rng(0))
    names = [name for name, _ in space.options]
    decisions[names.index("width")] = space.options[names.index("width")][1].index(1.25)
    decisions[names.index("skip")] = 0
    net.set_arch(decisions)
    assert float(net.blocks[0][0].skip_gate.asnumpy()[0]) == 1.0
    _check_equal(net, decisions)
    decisions[names.index("skip")] = 1  # noskip
    net.set_arch(decisions)
    assert float(net.blocks[0][0].skip_gate.asnumpy()[0]) == 0.0


@pytest.mark.slow
def test_mnasnet_b1_and_a1_inside_the_full_supernet_equal_the_zoo_architectures():
    net = _build(SearchSpace())
    for name in ("b1", "a1"):
        decisions = net.space.encode(ARCH_DEFS[name])
        assert decisions is not None, f"{name} is a point of the default space"
        _check_equal(net, decisions, training_modes=(False,))


def test_graph_mode_takes_new_candidates_without_rebuilding(small):
    """In GRAPH mode the architecture is an input: switching candidates between calls of the same compiled
    network gives each candidate's own outputs."""
    rng = np.random.default_rng(11)
    first, second = small.space.sample(rng), small.space.sample(rng)
    x = Tensor(_images(seed=1))
    small.set_train(False)
    expected = {}
    for name, decisions in (("first", first), ("second", second)):
        small.set_arch(decisions)
        expected[name] = small.extract(decisions)(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for name, decisions in (("first", first), ("second", second), ("first", first)):
            small.set_arch(decisions)
            assert _relative_gap(small(x).asnumpy(), expected[name]) < 1e-4, name
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert _relative_gap(expected["first"], expected["second"]) > 1e-2, "two candidates, two functions"


def test_recalibration_leaves_the_batch_statistics(small):
    """After recalibration on a batch, evaluation on that batch equals training mode on it (BN in training
    normalises by the batch's statistics), up to the unbiased-variance factor n/(n-1) of the moving variance."""
    decisions = small.space.sample(np.random.default_rng(3))
    small.set_arch(decisions)
    batch = _images(n=64, seed=2)
    calibrate_bn(small, seed=9)  # statistics of "other candidates"
    small.set_train(True)
    train_out = small(Tensor(batch)).asnumpy()
    small.set_train(False)
    assert _relative_gap(small(Tensor(batch)).asnumpy(), train_out) > 0.05, "stale statistics change the outputs"
    recalibrate_bn(small, batch)
    assert not small.training
    assert _relative_gap(small(Tensor(batch)).asnumpy(), train_out) < 0.02
    variance = small.bn1.moving_variance.asnumpy()
    assert np.all(np.isfinite(variance)) and variance.min() > 0


def test_invalid_decisions_are_refused_naming_the_expected_size(small):
    with pytest.raises(InvalidArgumentError, match="decision vector must have 18 entries"):
        small.set_arch([0] * 17)
    with pytest.raises(InvalidArgumentError, match=r"entry i in \[0, n_i\)"):
        small.set_arch([9] * 18)


def test_a_restricted_space_still_matches_its_stand_alone_models():
    space = SearchSpace(**SMALL, choices={"op": ["ir3", "ir6"], "kernel": [3], "width": [1.0], "depth": [0]})
    net = _build(space)
    assert net.blocks[0][0].kernel_mask.shape == (1, 1, 3, 3), "3x3 kernels only: no 5x5 weights"
    for seed in range(2):
        _check_equal(net, space.sample(np.random.default_rng(seed)))


def _proxy(tiny_data):
    from mindcv.nas.proxy import ProxyConfig, ProxyTask

    config = ProxyConfig(
        dataset="tiny",
        data_dir=tiny_data,
        image_size=32,
        batch_size=12,
        holdout=0.25,
        lr=0.003,
        warmup_epochs=0,
        mode="pynative",
    )
    return ProxyTask(config)


@pytest.mark.slow
def test_supernet_training_resumes_after_a_kill_to_identical_weights_and_scores_candidates(
    tiny_data, tmp_path, monkeypatch
):
    """Uniform single-path training through the engine's loop; a run killed after its first epoch resumes from the
    checkpoint to the same weights as an uninterrupted run; scores are accuracies of the extracted candidates."""
    import mindcv.nas.supernet_proxy as sp
    from mindcv.nas.supernet_proxy import SupernetConfig, SupernetProxy

    space = SearchSpace(channels=(16, 24), repeats=(1, 1), strides=(1, 2))  # small graphs: 3 compilations here
    proxy, config = _proxy(tiny_data), SupernetConfig(epochs=2, recalibration_images=24)
    whole = SupernetProxy(proxy, space, config, str(tmp_path / "whole"))
    report = whole.train(progress=False)
    assert report["epochs"] == 2 and np.isfinite(report["loss"])

    real_loop, calls = sp.train_one_epoch, []

    def killed_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_loop(*args, **kwargs)

    monkeypatch.setattr(sp, "train_one_epoch", killed_in_the_second_epoch)
    killed = SupernetProxy(proxy, space, config, str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    monkeypatch.setattr(sp, "train_one_epoch", real_loop)
    resumed = SupernetProxy(proxy, space, config, str(tmp_path / "killed"))
    resumed.train(progress=False)
    finished = dict(whole.net.parameters_and_names())
    for name, param in resumed.net.parameters_and_names():
        if param.requires_grad:
            np.testing.assert_array_equal(param.asnumpy(), finished[name].asnumpy(), err_msg=name)

    decisions = space.sample(np.random.default_rng(0))
    first, again = whole.score(decisions), resumed.score(decisions)
    assert 0.0 <= first["accuracy"] <= 100.0 and first["accuracy"] == again["accuracy"]
    assert first["params"] == sum(p.size for p in whole.net.extract(decisions).trainable_params())

    # a checkpoint of other settings is refused, not silently continued
    other = SupernetProxy(proxy, space, SupernetConfig(epochs=3, recalibration_images=24), str(tmp_path / "whole"))
    with pytest.raises(Exception, match="supernet of other settings"):
        other.train(progress=False)


def test_scoring_an_untrained_supernet_is_refused(tiny_data, tmp_path):
    from mindcv.nas.supernet_proxy import SupernetConfig, SupernetProxy

    proxy = SupernetProxy(_proxy(tiny_data), SearchSpace(**SMALL), SupernetConfig(epochs=1), str(tmp_path))
    with pytest.raises(InvalidArgumentError, match="train\\(\\) the supernet"):
        proxy.score(proxy.space.sample(np.random.default_rng(0)))
    with pytest.raises(InvalidArgumentError, match="supernet.epochs must be >= 1"):
        SupernetProxy(proxy.proxy, proxy.space, SupernetConfig(epochs=0), str(tmp_path))


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_a_training_step_gives_the_shared_weights_the_stand_alone_models_gradients(small, draw):
    """Weight sharing in training, not only in the forward pass: the supernet's gradient of a candidate's loss,
    restricted to the weights the candidate uses, equals its stand-alone model's, and every weight it does not use
    gets none (so single-path training trains exactly the sampled network)."""
    from mindcv.nas.supernet import _fit

    decisions = small.space.sample(np.random.default_rng(100 + draw))
    small.set_arch(decisions)
    model = small.extract(decisions)
    x, y = Tensor(_images(n=8, seed=draw)), Tensor(np.arange(8) % SETTINGS["num_classes"], ms.int32)
    loss_fn = ms.nn.CrossEntropyLoss()

    def gradients(net):
        net.set_train(True)
        params = net.trainable_params()
        grads = ms.grad(lambda a, b: loss_fn(net(a), b), grad_position=None, weights=params)(x, y)
        return {p.name: g.asnumpy() for p, g in zip(params, grads)}

    try:
        names = {p.name: path for path, p in small.parameters_and_names()}
        shared = {names[k]: v for k, v in gradients(small).items()}
        alone_names = {p.name: path for path, p in model.parameters_and_names()}
        alone = {alone_names[k]: v for k, v in gradients(model).items()}
    finally:
        small.set_train(False)
    used = set()
    for path, grad in alone.items():
        target = small._shared_path(path, decisions)
        used.add(target)
        part = _fit(shared[target], grad.shape)
        # a beta ahead of a training-mode BatchNorm gets a gradient of ~0 (1e-8): float noise, hence the 1e-6
        assert np.abs(part - grad).max() <= 1e-3 * np.abs(grad).max() + 1e-6, f"{path} -> {target}"
    for path, grad in shared.items():  # the paths the candidate does not take learn nothing from its step
        if path not in used:
            assert not np.any(grad), path
