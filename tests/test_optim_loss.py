"""Loss and optimizer factories, and the train step's scaling, clipping, accumulation and EMA."""

import numpy as np
import pytest
from conftest import one_mode_quick

import mindspore as ms
from mindspore import Tensor, nn

from mindcv.loss import create_loss
from mindcv.optim import create_optimizer, list_optimizers
from mindcv.utils.ema import EMA
from mindcv.utils.train_step import NetWithLoss, TrainStep, make_accumulation_cells


class SmallNet(nn.Cell):
    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, has_bias=True, pad_mode="valid")
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.fc = nn.Dense(6, 3)

    def construct(self, x):
        return self.fc(self.bn(self.conv(x)).mean(axis=(2, 3)))


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return Tensor(rng.standard_normal((n, 1, 8, 8)).astype(np.float32)), Tensor((np.arange(n) % 3).astype(np.int32))


# quick loop: the two optimizers of this package's own (lamb.py, lion.py) in GRAPH mode, their cheapest
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in ("lamb", "lion") else pytest.mark.slow) for n in list_optimizers()]
)
@one_mode_quick(ms.GRAPH_MODE)
def test_every_optimizer_decreases_the_loss_in_both_modes(name, mode):
    ms.set_seed(0)
    net = SmallNet()
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.1}.get(name, 0.01)
    opt = create_optimizer(net, name.upper(), lr=lr, weight_decay=1e-4, weight_decay_filter="norm_and_bias")
    step = nn.TrainOneStepCell(nn.WithLossCell(net, create_loss("CE")), opt)
    x, y = _data()
    losses = [float(step(x, y).asnumpy()) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.02 and losses[-1] < min(losses[:5]), losses


@pytest.mark.parametrize(
    "name, kwargs", [("CE", {}), ("CE", {"label_smoothing": 0.1}), ("BCE", {}), ("BCE", {"label_smoothing": 0.1})]
)
@pytest.mark.slow
def test_every_loss_decreases(name, kwargs):
    ms.set_seed(0)
    net = SmallNet()
    step = nn.TrainOneStepCell(
        nn.WithLossCell(net, create_loss(name, **kwargs)), create_optimizer(net, "adam", lr=0.01)
    )
    x, y = _data()
    losses = [float(step(x, y).asnumpy()) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.02 and losses[-1] < min(losses[:5]), losses


def test_cross_entropy_numerics():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    labels = np.array([0, 2], np.int32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    hard = -logp[np.arange(2), labels].mean()
    s = 0.1
    smooth = -(((1 - s) * np.eye(3)[labels] + s / 3) * logp).sum(1).mean()
    assert float(create_loss("ce")(Tensor(logits), Tensor(labels)).asnumpy()) == pytest.approx(hard, rel=1e-6)
    assert float(create_loss("CE", label_smoothing=s)(Tensor(logits), Tensor(labels)).asnumpy()) == pytest.approx(
        smooth, rel=1e-6
    )
    soft = Tensor(np.eye(3, dtype=np.float32)[labels])  # one-hot soft targets equal hard labels
    assert float(create_loss("CE")(Tensor(logits), soft).asnumpy()) == pytest.approx(hard, rel=1e-6)
    ignored = Tensor(np.array([0, -1], np.int32))  # -1 = unreadable image: ignored
    assert float(create_loss("CE")(Tensor(logits), ignored).asnumpy()) == pytest.approx(-logp[0, 0], rel=1e-6)
    aux = float(create_loss("CE", aux_factor=0.5)((Tensor(logits), Tensor(logits)), Tensor(labels)).asnumpy())
    assert aux == pytest.approx(1.5 * hard, rel=1e-6)
    bce = -(
        np.eye(3)[labels] * np.log(1 / (1 + np.exp(-logits)))
        + (1 - np.eye(3)[labels]) * np.log(1 - 1 / (1 + np.exp(-logits)))
    ).mean()
    assert float(create_loss("BCE")(Tensor(logits), Tensor(labels)).asnumpy()) == pytest.approx(bce, rel=1e-5)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'focal'; valid: CE, BCE"):
        create_loss("focal")
    with pytest.raises(
        ValueError, match="unknown optimizer 'adamx'; valid: adagrad, adam, adamw, lamb, lion, momentum"
    ):
        create_optimizer(SmallNet(), "adamx")
    with pytest.raises(ValueError, match="unknown weight_decay_filter 'bn'; valid: disable, auto, norm_and_bias"):
        create_optimizer(SmallNet(), "sgd", weight_decay_filter="bn")


def test_schedule_decay_default_is_accepted_and_any_other_value_is_refused():
    """Upstream's NAdam option: there is no NAdam here, so only the no-op default may be passed."""
    opt = create_optimizer(SmallNet(), "adam", lr=0.01, schedule_decay=4e-3)  # as upstream code passes it
    assert isinstance(opt, nn.Adam)
    with pytest.raises(ValueError, match=r"schedule_decay=0\.01 sets NAdam's momentum schedule, but NAdam is not "):
        create_optimizer(SmallNet(), "adam", lr=0.01, schedule_decay=0.01)
    with pytest.raises(ValueError, match="leave schedule_decay at its default 0.004"):
        create_optimizer(SmallNet(), "rmsprop", schedule_decay=0.0)
    with pytest.raises(ValueError, match="unknown optimizer 'nadam'"):
        create_optimizer(SmallNet(), "nadam")


def test_weight_decay_filter_is_decided_by_rank():
    net = SmallNet()
    opt = create_optimizer(net, "momentum", weight_decay=0.1, weight_decay_filter="norm_and_bias")
    decay = {p.name: float(wd) for p, wd in zip(opt.parameters, opt.group_weight_decay)}
    assert decay == {
        "conv.weight": 0.1,
        "fc.weight": 0.1,
        "conv.bias": 0.0,
        "bn.gamma": 0.0,
        "bn.beta": 0.0,
        "fc.bias": 0.0,
    }
    everything = create_optimizer(net, "momentum", weight_decay=0.1, weight_decay_filter="disable")
    assert all(float(wd) == pytest.approx(0.1) for wd in everything.group_weight_decay)
    assert [p.name for p in everything.parameters] == [p.name for p in net.trainable_params()]


def test_rmsprop_uses_upstream_epsilon_by_default():
    opt = create_optimizer(SmallNet(), "rmsprop", lr=0.1)
    assert opt.epsilon == pytest.approx(1e-10)  # upstream mindcv's eps default
    assert create_optimizer(SmallNet(), "rmsprop", eps=1e-3).epsilon == pytest.approx(1e-3)  # the recipes' value


@pytest.mark.parametrize("opt_name", ["adamw", "momentum", "adam", "rmsprop"])
def test_optimizer_state_round_trip(tmp_path, opt_name):
    # momentum and adam hold 0-d state (the momentum, beta powers): the file keeps it 0-d, and a file from before
    # that fix (scalars stored as (1,)) still restores
    from mindcv.io.checkpoint import read_checkpoint
    from mindcv.models.checkpoint import save_checkpoint

    net = SmallNet()
    opt = create_optimizer(net, opt_name, lr=[0.1, 0.05, 0.01])
    step = nn.TrainOneStepCell(nn.WithLossCell(net, create_loss("CE")), opt)
    step(*_data())
    path = save_checkpoint(
        {f"optimizer.{p.name}": p.asnumpy() for p in opt.get_parameters()}, str(tmp_path / "opt.ckpt")
    )
    state = {p.name: p.asnumpy() for p in opt.get_parameters()}
    saved = read_checkpoint(path)[0]
    assert all(np.shape(saved[f"optimizer.{k}"]) == v.shape for k, v in state.items())
    legacy = save_checkpoint(
        {k: np.reshape(v, (1,)) if np.ndim(v) == 0 else v for k, v in saved.items()}, str(tmp_path / "legacy.ckpt")
    )
    for source in (path, legacy):
        fresh = create_optimizer(SmallNet(), opt_name, lr=[0.1, 0.05, 0.01], checkpoint_path=source)
        assert int(fresh.global_step.asnumpy()) == 1
        restored = {p.name: p.asnumpy() for p in fresh.get_parameters()}
        assert len(state) > 5 and all(
            np.array_equal(state[k], restored[k]) and state[k].shape == restored[k].shape
            for k in state
            if not k.startswith("learning_rate")
        )


def _step(net, **kwargs):
    return TrainStep(
        NetWithLoss(net, create_loss("CE"), use_noise=False), create_optimizer(net, "sgd", lr=0.1), **kwargs
    )


def _noise(n):
    return Tensor(np.zeros((n, 1), np.float32))


@one_mode_quick()
def test_gradient_accumulation_equals_the_large_batch(mode):
    x, y = _data(8)
    ms.set_seed(0)
    big = SmallNet(bn=False)
    init = {p.name: p.asnumpy().copy() for p in big.get_parameters()}  # asnumpy() may alias the parameter's memory
    _step(big)(x, y, _noise(8))
    small = SmallNet(bn=False)
    for p in small.get_parameters():
        p.set_data(Tensor(init[p.name]))
    accumulate, apply = make_accumulation_cells(_step(small, accumulation_steps=2))
    accumulate(x[:4], y[:4], _noise(4))
    accumulate(x[4:], y[4:], _noise(4))
    apply()
    for a, b in zip(big.get_parameters(), small.get_parameters()):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-6)


@one_mode_quick()
def test_clipping_bounds_the_update(mode):
    ms.set_seed(0)
    net = SmallNet(bn=False)
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    _step(net, clip_grad=True, clip_value=0.01)(*_data(), _noise(8))
    change = np.sqrt(sum(((p.asnumpy() - b) ** 2).sum() for p, b in zip(net.trainable_params(), before)))
    assert change == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr x clipped global norm


@one_mode_quick()
def test_overflow_skips_the_update_and_dynamic_scale_halves(mode):
    ms.set_seed(0)
    net = SmallNet(bn=False)
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    step = _step(net, loss_scale=1024.0, dynamic_loss_scale=True, scale_window=2)
    x, y = _data()
    loss, finite, scale = step(x * 1e38, y, _noise(8))  # activations overflow: the gradients are not finite
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 512.0
    assert all(np.array_equal(p.asnumpy(), b) for p, b in zip(net.trainable_params(), before))
    fixed = _step(SmallNet(bn=False), loss_scale=1024.0, dynamic_loss_scale=True, scale_window=2)
    scales = [float(fixed(*_data(), _noise(8))[2].asnumpy()) for _ in range(4)]
    assert scales == [1024.0, 2048.0, 2048.0, 4096.0]  # doubles after every 2 clean steps


def test_ema_follows_tf_num_updates_rule():
    net = SmallNet(bn=False)
    ema = EMA(net, decay=0.99)
    w0 = net.fc.weight.asnumpy().copy()
    net.fc.weight.set_data(Tensor(w0 + 1.0))
    ema()  # decay = min(0.99, 1/10) = 0.1
    np.testing.assert_allclose(ema.ema_weights[2].asnumpy(), 0.1 * w0 + 0.9 * (w0 + 1.0), rtol=1e-6)
    target = SmallNet(bn=False)
    ema.copy_to(target)
    np.testing.assert_allclose(target.fc.weight.asnumpy(), ema.ema_weights[2].asnumpy())
