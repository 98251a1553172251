"""Upstream mindcv's mindspore.Model training API (issue 16): create_trainer, StateMonitor, TrainStep's upstream
signature, get_metrics, auto_mixed_precision; the calls upstream's train.py and examples/finetune/finetune.py make."""

import glob
import logging
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from mindcv.io.checkpoint import read_checkpoint, read_checkpoint_metadata, save_checkpoint
from mindcv.loss import create_loss
from mindcv.models import create_model
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler
from mindcv.utils import (
    AllReduceSum,
    GradientAccumulation,
    StateMonitor,
    TrainStep,
    ValCallback,
    auto_mixed_precision,
    create_trainer,
    get_metrics,
    get_resume_epoch,
    require_customized_train_step,
)
from mindcv.utils.amp import parse_amp_cast_list


class SmallNet(nn.Cell):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, has_bias=True, pad_mode="valid")
        self.fc = nn.Dense(4, num_classes)

    def construct(self, x):
        return self.fc(self.conv(x).mean(axis=(2, 3)))


def _images(n: int, size: int = 8, seed: int = 0):
    """Learnable two-class images: class 1 is brighter by 1.0 (batches of a fixed order)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int32)
    images = rng.standard_normal((n, 3, size, size)) * 0.5 + labels[:, None, None, None]
    return images.astype(np.float32), labels


def _loader(n: int, batch: int, size: int = 8, seed: int = 0):
    images, labels = _images(n, size, seed)
    data = ms.dataset.NumpySlicesDataset({"image": images, "label": labels}, shuffle=False)
    return data.batch(batch, drop_remainder=True)


def _trainer(net, lr=0.1, opt="sgd", optimizer_loss_scale=1.0, **kwargs):
    optimizer = create_optimizer(net, opt, lr=lr, loss_scale=optimizer_loss_scale)
    options = dict(amp_level="O0", amp_cast_list=None, loss_scale_type="fixed")
    options.update(kwargs)
    return create_trainer(net, create_loss("CE"), optimizer, get_metrics(2), **options), optimizer


def _weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def _twin(net):
    other = SmallNet()
    for p in other.get_parameters():
        p.set_data(Tensor(dict(net.parameters_and_names())[p.name].asnumpy().copy()))
    return other


def _rows(path):
    with open(path, encoding="utf-8") as fp:
        return [line.split() for line in fp.read().splitlines()]


# -- upstream train.py / finetune.py flow --------------------------------------------------------------------
TINY = dict(arch="ds_r1_k3_s1_c8_noskip|ir_r1_k3_s2_e3_c16", stem_size=8, num_features=32)  # 2.2k parameters


def test_train_py_flow_trains_saves_and_resumes(tmp_path, caplog):
    """The calls of upstream's train.py (and finetune.py) with a tiny MnasNet: 2 epochs, then a resume for a third."""
    ckpt_dir = str(tmp_path / "ckpt")
    loader, val = _loader(16, 8, size=32), _loader(8, 8, size=32, seed=1)
    batches = loader.get_dataset_size()

    def build(ckpt_path="", optim_path=""):
        ms.set_seed(0)
        network = create_model("mnasnet_arch", num_classes=2, checkpoint_path=ckpt_path, **TINY)
        lr = create_scheduler(batches, "cosine_decay", lr=0.002, warmup_epochs=0, num_epochs=3)
        # rmsprop (MnasNet's): momentum/adam state holds 0-d tensors that read back as (1,) (see the report)
        optimizer = create_optimizer(network, "rmsprop", lr=lr, checkpoint_path=optim_path)
        metrics = get_metrics(2)
        trainer = create_trainer(network, create_loss("CE"), optimizer, metrics, "O0", None, "fixed", 1.0)
        return network, optimizer, metrics, trainer

    network, optimizer, metrics, trainer = build()
    state_cb = StateMonitor(
        trainer,
        model_name="mnasnet_arch",
        dataset_val=val,
        metric_name=list(metrics.keys()),
        ckpt_save_dir=ckpt_dir,
        summary_dir=str(tmp_path / "summary"),
        log_interval=1,
    )
    with caplog.at_level(logging.INFO, logger="mindcv.utils.callbacks"):
        trainer.train(2, loader, callbacks=[state_cb], dataset_sink_mode=True)
    assert "Epoch: [2/2], batch: [2/2]" in caplog.text and "Validation Top_1_Accuracy" in caplog.text
    # 4 batches at the default bn_momentum 0.99: validation used starting statistics, and the log says so (at the
    # first validation and again at the end), instead of leaving a chance-level accuracy unexplained
    assert "BatchNorm statistics have not settled: after 2 training batches" in caplog.text
    assert "BatchNorm statistics have not settled: after 4 training batches" in caplog.text
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ckpt_dir, "*.ckpt")))
    assert files == [
        "mnasnet_arch-1_2.ckpt",
        "mnasnet_arch-2_2.ckpt",
        "mnasnet_arch_best.ckpt",
        "optim_mnasnet_arch.ckpt",
    ]
    rows = _rows(os.path.join(ckpt_dir, "result.log"))
    assert rows[0][:3] == ["Epoch", "TrainLoss", "Top_1_Accuracy"] and [r[0] for r in rows[1:]] == ["1", "2"]
    tensors, meta = read_checkpoint(os.path.join(ckpt_dir, "mnasnet_arch-2_2.ckpt"))
    np.testing.assert_array_equal(tensors["classifier.weight"], network.classifier.weight.asnumpy())
    assert meta["epoch"] == 2 and meta["global_step"] == 4 and meta["num_classes"] == 2
    assert int(read_checkpoint(os.path.join(ckpt_dir, "optim_mnasnet_arch.ckpt"))[0]["global_step"][0]) == 4
    # the saved model evaluates to the accuracy the log reported for epoch 2
    reloaded = create_model(
        "mnasnet_arch", num_classes=2, checkpoint_path=os.path.join(ckpt_dir, "mnasnet_arch-2_2.ckpt"), **TINY
    )
    logits = reloaded(Tensor(_images(8, 32, seed=1)[0])).asnumpy()
    accuracy = float((logits.argmax(1) == _images(8, 32, seed=1)[1]).mean())
    assert f"{accuracy:.4%}" == rows[2][2]

    # resume as upstream: model weights + optim_<model>.ckpt, last_epoch from the checkpoint (not its file name)
    ckpt = os.path.join(ckpt_dir, "mnasnet_arch-2_2.ckpt")
    _, optimizer, metrics, trainer = build(ckpt, os.path.join(ckpt_dir, "optim_mnasnet_arch.ckpt"))
    assert get_resume_epoch(ckpt) == 2 and int(optimizer.global_step.asnumpy()[0]) == 4
    state_cb = StateMonitor(
        trainer,
        model_name="mnasnet_arch",
        last_epoch=get_resume_epoch(ckpt),
        dataset_val=_loader(8, 8, size=32, seed=1),
        metric_name=list(metrics.keys()),
        ckpt_save_dir=ckpt_dir,
        ckpt_save_interval=5,  # the last epoch of the run is saved anyway
        summary_dir=str(tmp_path / "summary"),
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mindcv.utils.callbacks"):
        # the epoch count is the run's total, as the LR schedule built for it: 1 epoch is left, then the run stops
        trainer.train(3, _loader(16, 8, size=32), callbacks=[state_cb], dataset_sink_mode=False)
    assert "Epoch: [3/3], batch: [2/2]" in caplog.text
    assert [r[0] for r in _rows(os.path.join(ckpt_dir, "result.log"))[1:]] == ["1", "2", "3"]  # appended, not wiped
    assert "Epoch: [4/" not in caplog.text and int(optimizer.global_step.asnumpy()[0]) == 6
    with pytest.raises(ValueError, match="resuming after epoch 3 but the run has 3 epochs"):
        trainer.train(
            3,
            _loader(16, 8, size=32),
            callbacks=[StateMonitor(trainer, last_epoch=3, ckpt_save_dir=ckpt_dir, summary_dir=ckpt_dir)],
        )
    assert read_checkpoint_metadata(os.path.join(ckpt_dir, "mnasnet_arch-3_2.ckpt"))["global_step"] == 6


def test_training_learns_and_state_monitor_keeps_the_best(tmp_path):
    ms.set_seed(0)
    net = SmallNet()
    trainer, _ = _trainer(net, lr=0.5)
    state_cb = StateMonitor(
        trainer,
        model_name="small",
        dataset_val=_loader(16, 8, seed=1),
        metric_name=["Top_1_Accuracy"],
        ckpt_save_dir=str(tmp_path),
        ckpt_save_policy="latest_k",
        ckpt_keep_max=2,
        summary_dir=str(tmp_path / "summary"),
    )
    trainer.train(4, _loader(32, 8), callbacks=[state_cb, ValCallback(log_interval=1)], dataset_sink_mode=False)
    rows = _rows(str(tmp_path / "result.log"))[1:]
    losses = [float(r[1]) for r in rows]
    accuracies = [float(r[2].rstrip("%")) for r in rows]
    assert losses[-1] < losses[0] and max(accuracies) >= 87.5, rows  # chance is 50%
    assert sorted(os.listdir(tmp_path)) == [
        "optim_small.ckpt",
        "result.log",
        "small-3_4.ckpt",
        "small-4_4.ckpt",
        "small_best.ckpt",
        "summary",
    ]  # latest_k kept 2
    best = read_checkpoint_metadata(str(tmp_path / "small_best.ckpt"))
    assert best["best_metric"] == pytest.approx(max(accuracies), abs=1e-3)
    assert best["epoch"] == 1 + accuracies.index(max(accuracies))
    assert trainer.eval(_loader(16, 8, seed=1), callbacks=[ValCallback(1)], dataset_sink_mode=False)[
        "Top_1_Accuracy"
    ] == pytest.approx(accuracies[-1] / 100, abs=1e-6)


# -- options honoured (numbers against a hand computation) -----------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        dict(loss_scale=1024.0),  # fixed scale, the step unscales
        dict(loss_scale=1024.0, optimizer_loss_scale=1024.0),  # upstream train.py: the optimizer divides instead
        dict(loss_scale=64.0, loss_scale_type="dynamic", drop_overflow_update=True),
    ],
    ids=["fixed", "fixed-optimizer-scale", "dynamic"],
)
def test_loss_scale_does_not_change_the_update(options):
    ms.set_seed(0)
    net = SmallNet()
    reference = _twin(net)
    trainer, _ = _trainer(net, **options)
    plain, _ = _trainer(reference)
    x, y = (Tensor(a) for a in _images(8))
    trainer.train_network(x, y)
    plain.train_network(x, y)
    for name, value in _weights(net).items():
        np.testing.assert_allclose(value, _weights(reference)[name], rtol=1e-5, atol=1e-7)


def test_dynamic_loss_scale_drops_overflow_and_halves_on_cpu():
    ms.set_seed(0)
    net = SmallNet()
    trainer, optimizer = _trainer(net, loss_scale=1024.0, loss_scale_type="dynamic", drop_overflow_update=True)
    before = _weights(net)
    x, y = _images(8)
    loss, finite, scale = trainer.train_network(Tensor(x * 1e38), Tensor(y))
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 512.0
    assert all(np.array_equal(v, before[k]) for k, v in _weights(net).items())
    assert int(optimizer.global_step.asnumpy()[0]) == 0


def test_clipping_bounds_the_update():
    ms.set_seed(0)
    net = SmallNet()
    trainer, _ = _trainer(net, lr=0.1, clip_grad=True, clip_value=0.01)
    before = _weights(net)
    trainer.train_network(*(Tensor(a) for a in _images(8)))
    change = np.sqrt(sum(((v - before[k]) ** 2).sum() for k, v in _weights(net).items()))
    assert change == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr x clipped global norm


def test_accumulation_updates_every_nth_batch_with_the_mean_gradient():
    ms.set_seed(0)
    net = SmallNet()
    reference = _twin(net)
    trainer, optimizer = _trainer(net, gradient_accumulation_steps=2)
    plain, _ = _trainer(reference)
    x, y = _images(8)
    before = _weights(net)
    trainer.train_network(Tensor(x[:4]), Tensor(y[:4]))
    assert all(np.array_equal(v, before[k]) for k, v in _weights(net).items())
    assert int(optimizer.global_step.asnumpy()[0]) == 1  # the LR schedule counts micro-batches, as upstream
    trainer.train_network(Tensor(x[4:]), Tensor(y[4:]))
    plain.train_network(Tensor(x), Tensor(y))  # one step on the whole batch: the same mean gradient
    for name, value in _weights(net).items():
        np.testing.assert_allclose(value, _weights(reference)[name], rtol=1e-5, atol=1e-6)
    assert int(optimizer.global_step.asnumpy()[0]) == 2
    trainer.train_network(Tensor(x[:4]), Tensor(y[:4]))
    trainer.train_network(Tensor(x[4:]), Tensor(y[4:]))
    assert int(optimizer.global_step.asnumpy()[0]) == 4


def test_graph_mode_trains_like_pynative():
    """Upstream's train.py runs in GRAPH mode: every option at once gives PyNative's weights and EMA there."""
    results = []
    try:
        for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
            ms.set_context(mode=mode)
            ms.set_seed(0)
            net = SmallNet()
            options = dict(ema=True, ema_decay=0.9, clip_grad=True, clip_value=0.5, gradient_accumulation_steps=2)
            trainer, optimizer = _trainer(
                net, loss_scale=64.0, loss_scale_type="dynamic", drop_overflow_update=True, **options
            )
            trainer.train(2, _loader(16, 8), dataset_sink_mode=True)
            step = trainer.train_network.step
            ema = {p.name: p.asnumpy().copy() for p in step.get_parameters() if p.name.startswith("ema.")}
            results.append((_weights(net), ema, int(optimizer.global_step.asnumpy()[0])))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    (weights, ema, steps), (graph_weights, graph_ema, graph_steps) = results
    assert steps == graph_steps == 4 and float(ema["ema.updates"]) == 2.0
    for name, value in {**weights, **ema}.items():
        np.testing.assert_allclose(value, {**graph_weights, **graph_ema}[name], rtol=1e-4, atol=1e-6)


def test_ema_is_updated_saved_and_used_for_validation(tmp_path):
    ms.set_seed(0)
    net = SmallNet()
    trainer, _ = _trainer(net, ema=True, ema_decay=0.5)
    w0 = net.fc.weight.asnumpy().copy()
    trainer.train_network(*(Tensor(a) for a in _images(8)))
    step = trainer.train_network.step
    ema = {p.name: p.asnumpy() for p in step.get_parameters() if p.name.startswith("ema.")}
    # first update: decay = min(0.5, (1 + 0) / (10 + 0)) = 0.1
    np.testing.assert_allclose(ema["ema.fc.weight"], 0.1 * w0 + 0.9 * net.fc.weight.asnumpy(), rtol=1e-6)
    # validation with model_ema evaluates the EMA weights and gives the online weights back: zero EMA weights
    # predict class 0 for every image, right on the quarter of the val images that are class 0
    for p in step.ema_updater.ema_weights:
        p.set_data(Tensor(np.zeros(p.shape, np.float32)))
    online = _weights(net)
    labels = np.array([0, 1, 1, 1] * 2, np.int32)
    val = ms.dataset.NumpySlicesDataset({"image": _images(8)[0], "label": labels}, shuffle=False).batch(8)
    monitor = StateMonitor(
        trainer,
        model_ema=True,
        dataset_val=val,
        metric_name=["Top_1_Accuracy"],
        ckpt_save_dir=str(tmp_path),
        summary_dir=str(tmp_path),
    )
    assert monitor.apply_eval(None)[0] == pytest.approx(0.25)
    assert all(np.array_equal(v, online[k]) for k, v in _weights(net).items())
    trainer.train(1, _loader(8, 8), callbacks=[monitor], dataset_sink_mode=False)
    saved = read_checkpoint(str(tmp_path / "-1_1.ckpt"))[0]
    assert "ema.fc.weight" in saved and "ema.updates" in saved and "fc.weight" in saved


# -- TrainStep's upstream signature ------------------------------------------------------------------------------
def test_upstream_train_step_signature():
    net = SmallNet()
    opt = nn.SGD(net.trainable_params(), learning_rate=0.1)
    with_loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = TrainStep(with_loss, opt, scale_sense=Tensor(8.0), ema=True, ema_decay=0.9, clip_grad=True)
    assert float(step.loss_scale.asnumpy()) == 8.0 and step.ema and step.clip_grad and not step.drop_overflow
    x, y = (Tensor(a) for a in _images(8))
    loss, finite, scale = step(x, y)
    assert np.isfinite(float(loss.asnumpy())) and bool(finite.asnumpy())
    update_cell = nn.DynamicLossScaleUpdateCell(loss_scale_value=256.0, scale_factor=4, scale_window=5)
    dynamic = TrainStep(network=with_loss, optimizer=opt, scale_sense=update_cell, gradient_accumulation_steps=3)
    assert (dynamic.dynamic, dynamic.drop_overflow, dynamic.scale_window, dynamic.scale_factor) == (True, True, 5, 4.0)
    assert dynamic.accumulation_steps == 3 and float(dynamic.loss_scale.asnumpy()) == 256.0
    fixed = TrainStep(with_loss, opt, nn.FixedLossScaleUpdateCell(128.0))
    assert fixed.drop_overflow and not fixed.dynamic
    with pytest.raises(TypeError, match="scale_sense must be .* got str"):
        TrainStep(with_loss, opt, scale_sense="1024")
    with pytest.raises(ValueError, match="either as net_with_loss or as network"):
        TrainStep(with_loss, opt, network=with_loss)
    with pytest.raises(ValueError, match="loss_scale must be a finite number > 0, got -1.0"):
        TrainStep(with_loss, opt, scale_sense=-1.0)
    with pytest.raises(ValueError, match="disagree"):
        TrainStep(with_loss, opt, accumulation_steps=2, gradient_accumulation_steps=4)
    # upstream's positional order: (network, optimizer, scale_sense, ema, ema_decay, clip_grad, clip_value,
    # gradient_accumulation_steps); an earlier order here read the 4th as a dynamic loss scale, silently
    positional = TrainStep(with_loss, opt, 1.0, True, 0.9, True, 1.0, 2)
    assert (positional.ema, positional.ema_decay, positional.clip_grad, positional.clip_value) == (True, 0.9, True, 1.0)
    assert positional.accumulation_steps == 2 and not positional.dynamic and not positional.drop_overflow
    with pytest.raises(TypeError, match="positional argument"):
        TrainStep(with_loss, opt, 1.0, True, 0.9, True, 1.0, 2, True)  # this package's options are keyword-only


def test_gradient_accumulation_cell_applies_every_nth_call():
    net = SmallNet()
    opt = nn.SGD(net.trainable_params(), learning_rate=0.1)
    acc = GradientAccumulation(2, opt, nn.Identity())
    grads = tuple(Tensor(np.ones(p.shape, np.float32)) for p in opt.parameters)
    before = _weights(net)
    acc(Tensor(1.0), grads)
    assert all(np.array_equal(v, before[k]) for k, v in _weights(net).items())
    acc(Tensor(1.0), grads)
    for name, value in _weights(net).items():
        np.testing.assert_allclose(value, before[name] - 0.1, rtol=1e-6)  # mean gradient of ones
    assert int(opt.global_step.asnumpy()[0]) == 2
    with pytest.raises(ValueError, match="max_accumulation_step must be >= 1, got 0"):
        GradientAccumulation(0, opt, nn.Identity())


# -- factories, amp, argument errors ------------------------------------------------------------------------------
def test_get_metrics_and_require_customized_train_step():
    assert list(get_metrics(2)) == ["Top_1_Accuracy"]
    assert list(get_metrics(5)) == ["Top_1_Accuracy", "Top_5_Accuracy"]
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        get_metrics(0)
    assert not require_customized_train_step(False, False, 1, None)
    assert require_customized_train_step(ema=True) and require_customized_train_step(gradient_accumulation_steps=2)
    assert require_customized_train_step(amp_cast_list="[nn.Conv2d]")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_scale=0.5), "loss_scale must be >= 1.0, got 0.5"),
        (dict(loss_scale_type="dynamic"), "set drop_overflow_update=True"),
        (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be >= 1, got 0"),
        (dict(loss_scale_type="static"), "loss_scale_type must be one of fixed, dynamic, auto, got 'static'"),
        (dict(amp_level="O4"), "amp_level must be one of O0, O1, O2, O3, auto, got 'O4'"),
        (dict(amp_level="O1", amp_cast_list="[nn.Conv2d, os.system]"), "'os.system' .* is not a cell class"),
    ],
)
def test_create_trainer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _trainer(SmallNet(), **kwargs)


def test_amp_cast_list_is_parsed_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    with pytest.raises(ValueError, match="is not a cell class of mindspore.nn"):
        parse_amp_cast_list(f"[__import__('pathlib').Path({str(marker)!r}).touch()]")
    assert not marker.exists()
    assert parse_amp_cast_list("[nn.Conv2d, mindspore.nn.Dense]") == (nn.Conv2d, nn.Dense)
    assert parse_amp_cast_list("BatchNorm2d") == (nn.BatchNorm2d,) and parse_amp_cast_list("") is None
    assert parse_amp_cast_list([nn.Dense]) == (nn.Dense,)
    with pytest.raises(ValueError, match="'nn.Tensor' in '\\[nn.Tensor\\]' is not a cell class"):
        parse_amp_cast_list("[nn.Tensor]")
    with pytest.raises(TypeError, match="must hold nn.Cell subclasses, got 3"):
        parse_amp_cast_list([3])
    with pytest.raises(TypeError, match="got dict"):
        parse_amp_cast_list({"a": nn.Dense})
    net = SmallNet()
    assert auto_mixed_precision(net, "O0") is net
    x = Tensor(_images(2)[0])
    o1 = auto_mixed_precision(SmallNet(), "O1", "[nn.Dense]")
    assert o1(x).dtype == ms.float32  # the fp16 cells hand float32 back
    trainer, _ = _trainer(SmallNet(), amp_level="O2", amp_cast_list=[nn.Conv2d])
    loss = trainer.train_network(x, Tensor(_images(2)[1]))[0]
    assert loss.dtype == ms.float32 and np.isfinite(float(loss.asnumpy()))


def test_state_monitor_rejects_bad_arguments(tmp_path):
    trainer, _ = _trainer(SmallNet())
    with pytest.raises(ValueError, match="'top_k' ranks checkpoints by validation: pass dataset_val"):
        StateMonitor(trainer, ckpt_save_policy="top_k", ckpt_save_dir=str(tmp_path))
    with pytest.raises(ValueError, match="val_interval must be an integer >= 1, got 0"):
        StateMonitor(trainer, val_interval=0, ckpt_save_dir=str(tmp_path))
    with pytest.raises(ValueError, match="last_epoch must be an integer >= 0, got -1"):
        StateMonitor(trainer, last_epoch=-1, ckpt_save_dir=str(tmp_path))
    with pytest.raises(ValueError, match="model_ema=True but the train step keeps no EMA"):
        StateMonitor(trainer, model_ema=True, ckpt_save_dir=str(tmp_path))
    with pytest.raises(ValueError, match="ckpt_save_policy must be one of"):
        StateMonitor(trainer, ckpt_save_policy="best", ckpt_save_dir=str(tmp_path))
    with pytest.raises(
        ValueError, match="metric_name has 2 names .* computes 1 metrics"
    ):  # at once, not after an epoch
        StateMonitor(
            trainer,
            dataset_val=_loader(8, 8),
            metric_name=("Top_1_Accuracy", "Top_5_Accuracy"),
            ckpt_save_dir=str(tmp_path),
        )
    monitor = StateMonitor(trainer, dataset_val=_loader(8, 8), ckpt_save_dir=str(tmp_path))
    trainer._metric_fns["extra"] = trainer._metric_fns[next(iter(trainer._metric_fns))]  # a model changed later
    with pytest.raises(ValueError, match="metric_name has 1 names .* computes 2 metrics"):
        monitor.apply_eval(None)


def test_distributed_validation_weights_each_rank_by_its_samples(tmp_path):
    """Upstream averaged the per-rank accuracies; here rank 0 (8 samples) and a rank with 24 samples, all wrong,
    give the accuracy over all 32 samples."""
    ms.set_seed(0)
    trainer, _ = _trainer(SmallNet())
    val = _loader(8, 8)
    monitor = StateMonitor(trainer, dataset_val=val, metric_name=["Top_1_Accuracy"], ckpt_save_dir=str(tmp_path))
    alone = monitor.apply_eval(None)[0]
    assert alone > 0
    monitor.device_num = 2
    monitor.all_reduce = lambda local: local + Tensor(np.array([0.0, 24.0], np.float32))  # the other rank's sums
    assert monitor.apply_eval(None)[0] == pytest.approx(alone * 8 / 32)
    with pytest.raises(ValueError, match="log_interval must be an integer >= 1"):
        ValCallback(log_interval=0)


class _ThreeRanks(nn.Cell):
    """Stands in for the AllReduce of 3 ranks holding the same tensor; like the CPU kernel, only takes floats."""

    def construct(self, x):
        if x.dtype != ms.float32 and x.dtype != ms.float16:
            raise TypeError("Select CPU operator[AllReduce] fail! Unsupported data type!")
        return x * 3


def test_all_reduce_sum_sums_int32_counts_exactly_through_a_float_only_reduce(mode):
    # upstream's train.py reduces int32 sample counts; MindSpore's CPU AllReduce rejects int32 (found running
    # upstream's train.py under msrun with 2 ranks). Values beyond float32's 2**24 must still come back exact.
    counts = np.array([1281167, 123456789, -600000000, 7, 0, -1], np.int32)
    reduce = AllReduceSum()
    reduce.allreduce_sum = _ThreeRanks()
    summed = reduce(Tensor(counts))
    assert summed.dtype == ms.int32
    np.testing.assert_array_equal(summed.asnumpy(), 3 * counts.astype(np.int64))
    floats = reduce(Tensor(np.array([0.5, 2.0], np.float32)))
    assert floats.dtype == ms.float32 and floats.asnumpy().tolist() == [1.5, 6.0]
    # float64 (numpy's default: a per-rank accuracy of 0.76) is summed, not truncated; int64 beyond 2**40 is exact
    wide = np.array([0.76, 1.5, 1e-9, 123456.789], np.float64)
    summed_wide = reduce(Tensor(wide))
    assert summed_wide.dtype == ms.float64
    np.testing.assert_allclose(summed_wide.asnumpy(), 3 * wide, rtol=1e-6)
    big = np.array([2**40 + 3, -(2**50) - 7, 5], np.int64)
    np.testing.assert_array_equal(reduce(Tensor(big)).asnumpy(), 3 * big)
    with pytest.raises(TypeError, match="cannot sum a Bool tensor.*cast a bool mask to int32"):
        reduce(Tensor(np.array([True, False])))


def test_get_resume_epoch_reads_the_checkpoint_not_its_name(tmp_path):
    weights = {"fc.weight": np.zeros((2, 4), np.float32)}
    renamed = str(tmp_path / "finetuned.ckpt")
    save_checkpoint(weights, renamed, {"epoch": 7})
    assert get_resume_epoch(renamed) == 7  # upstream's name parsing crashed on this file
    named = str(tmp_path / "mnasnet_arch-12_100.ckpt")
    save_checkpoint(weights, named, {})
    assert get_resume_epoch(named) == 12
    anonymous = str(tmp_path / "mnasnet_050-7d8bf4db.ckpt")  # a pretrained file name: no epoch in it
    save_checkpoint(weights, anonymous, {})
    with pytest.raises(ValueError, match="cannot tell which epoch .*mnasnet_050-7d8bf4db.ckpt"):
        get_resume_epoch(anonymous)
    optimizer = nn.SGD(SmallNet().trainable_params(), learning_rate=0.1)
    optimizer.global_step.set_data(Tensor([25], ms.int32))
    assert get_resume_epoch(anonymous, optimizer, steps_per_epoch=10) == 2
    with pytest.raises(FileNotFoundError, match="not found: .*missing.ckpt"):
        get_resume_epoch(str(tmp_path / "missing.ckpt"))
