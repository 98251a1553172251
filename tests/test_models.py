"""Registry-driven model tests: every registered model gets these automatically."""

import numpy as np
import pytest
from conftest import random_images

import mindspore as ms
from mindspore import nn

from mindcv.models import create_model, list_models
from mindcv.models.mnasnet import VARIANTS
from mindcv.utils.model_stats import count_macs

MODELS = [m for m in list_models() if m != "mnasnet_arch"]  # the zoo; mnasnet_arch builds any arch
# one width per architecture (B1, A1, small): widths change channel counts only, not the code a mode runs
MODE_FAMILIES = ["mnasnet_075", "semnasnet_050", "mnasnet_small"]
SMALL = 64  # input size: enough for the five stride-2 stages, cheap on a 2-core CPU


def one_model_quick(names, quick="mnasnet_050"):
    """``names`` as parameters, all but ``quick`` marked slow: ``-m "not slow"`` checks one model, pytest every one."""
    return [pytest.param(name, marks=() if name == quick else pytest.mark.slow) for name in names]


def trainable_count(model: nn.Cell) -> int:
    return int(sum(np.prod(p.shape) for p in model.trainable_params()))


def test_zoo_is_the_variant_table():
    # every entry of the one table is registered, importable and documented; nothing else is in the zoo
    import mindcv
    import mindcv.models

    assert set(MODELS) == set(VARIANTS) and "mnasnet_arch" in list_models()
    for name, variant in VARIANTS.items():
        for namespace in (mindcv, mindcv.models):
            assert getattr(namespace, name).__doc__ == variant.doc
        assert name in mindcv.models.__all__
    assert "mnasnet_arch" in mindcv.models.__all__ and hasattr(mindcv, "mnasnet_arch")
    widths = {name: VARIANTS[name].width_mult for name in VARIANTS if VARIANTS[name].arch == "b1"}
    assert sorted(widths.values()) == [0.5, 0.75, 1.0, 1.3, 1.4]  # the widths the README promises


@pytest.mark.slow
def test_a_new_table_entry_is_a_model(monkeypatch):
    from copy import deepcopy
    from dataclasses import replace

    from mindcv.models import mnasnet, registry

    for table in ("_model_entrypoints", "_model_to_module", "_module_to_models", "_model_pretrained_tags"):
        monkeypatch.setattr(registry, table, deepcopy(getattr(registry, table)))  # leave the real registry alone
    monkeypatch.setattr(mnasnet, "__all__", list(mnasnet.__all__))
    entry = replace(VARIANTS["mnasnet_050"], width_mult=0.25, weights={}, doc="MnasNet-B1 x0.25.")
    fn = mnasnet._register_variant("mnasnet_025", entry)
    assert fn.__name__ == "mnasnet_025" and "mnasnet_025" in list_models()
    small, half = create_model("mnasnet_025", num_classes=10), create_model("mnasnet_050", num_classes=10)
    assert 0 < trainable_count(small) < trainable_count(half)


@pytest.mark.parametrize("name", one_model_quick(MODELS))
def test_exact_parameter_count(name):
    model = create_model(name)
    assert trainable_count(model) == VARIANTS[name].num_params
    assert model.pretrained_cfg.num_params == VARIANTS[name].num_params


@pytest.mark.parametrize("name", one_model_quick(MODELS))
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = create_model(name, num_classes=7, drop_rate=0.0)
    model.set_train(True)
    x, y = random_images(4, SMALL), ms.Tensor(np.array([1, 5, 0, 6], np.int32))
    loss_fn = nn.CrossEntropyLoss()

    def forward(a, b):
        return loss_fn(model(a), b)

    params = model.trainable_params()
    loss, grads = ms.value_and_grad(forward, None, params)(x, y)
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(params)
    dead = [
        p.name for p, g in zip(params, grads) if not np.any(g.asnumpy() != 0) or not np.all(np.isfinite(g.asnumpy()))
    ]
    assert dead == []


@pytest.mark.parametrize("name", one_model_quick(MODELS))
def test_interface(name):
    model = create_model(name, num_classes=11)
    model.set_train(False)
    x = random_images(2, SMALL)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, SMALL // 32, SMALL // 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model(x).shape == (2, 11)
    assert isinstance(model.get_classifier(), nn.Dense)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4) and model.num_classes == 4
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert 0 <= model.drop_rate < 1 and model.drop_path_rate == 0.0


@pytest.mark.parametrize("name", one_model_quick(MODELS, quick="mnasnet_small"))
def test_feature_extraction(name):
    model = create_model(name, features_only=True)
    model.set_train(False)
    outs = model(random_images(1, SMALL))
    assert len(outs) == 5
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]
    for out, chs, red in zip(outs, model.out_channels, model.reductions):
        assert out.shape == (1, chs, SMALL // red, SMALL // red)
    # no head parameters in a backbone, and the parameter names are the full model's
    names = {p.name for p in model.get_parameters()}
    assert not any(n.startswith(("classifier", "conv_head", "bn2.")) for n in names)
    assert names < {p.name for p in create_model(name).get_parameters()}


@pytest.mark.slow
def test_feature_extraction_out_indices():
    model = create_model("mnasnet_050", features_only=True, out_indices=(1, 3))
    model.set_train(False)
    outs = model(random_images(1, SMALL))
    assert [o.shape[1] for o in outs] == model.out_channels == [16, 48]
    with pytest.raises(ValueError, match="out_indices"):
        create_model("mnasnet_050", features_only=True, out_indices=(7,))


@pytest.mark.slow
def test_bn_settings_are_model_level():
    model = create_model("semnasnet_050", bn_momentum=0.9, bn_eps=1e-5)
    bns = [c for _, c in model.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    assert len(bns) > 40
    # nn.BatchNorm2d stores 1 - momentum internally (the PyTorch convention)
    assert {(round(1 - b.momentum, 6), b.eps) for b in bns} == {(0.9, 1e-5)}
    default = [c for _, c in create_model("mnasnet_050").cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    assert {(round(1 - b.momentum, 6), b.eps) for b in default} == {(0.99, 1e-3)}


def test_bn_momentum_conversion_from_torch():
    from mindcv.models.layers import bn_momentum_from_torch

    assert bn_momentum_from_torch(0.0003) == pytest.approx(0.9997)


@pytest.mark.slow
def test_drop_path_rates_increase_linearly():
    model = create_model("mnasnet_100", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for stage in model.blocks for b in stage if b.has_skip]
    assert rates == sorted(rates) and 0 < rates[0] < rates[-1] <= 0.2
    model.set_train(False)  # identity at inference
    x = random_images(1, SMALL)
    ref = create_model("mnasnet_100")
    ms.load_param_into_net(ref, {p.name: p for p in model.get_parameters()})
    ref.set_train(False)
    np.testing.assert_allclose(model(x).asnumpy(), ref(x).asnumpy(), atol=1e-6)


@pytest.mark.slow
def test_torchvision_graph_structure():
    """B1 blocks match torchvision: 16 inverted residuals, residuals where torchvision has them."""
    model = create_model("mnasnet_100")
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == 17  # the stem separable conv + 16 inverted residuals
    assert [b.has_skip for b in blocks[1:]] == [False, True, True] * 3 + [False, True] + [False, True, True, True] + [
        False
    ]
    assert sum(1 for _ in create_model("semnasnet_100").blocks[1:] for _ in _) == 15


def test_unknown_kwarg_lists_valid_ones():
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) dropout.*accepted:.*drop_rate"):
        create_model("mnasnet_050", dropout=0.1)


@pytest.mark.slow
def test_none_kwargs_mean_model_default():
    model = create_model("mnasnet_050", drop_rate=None, drop_path_rate=None)
    assert model.drop_rate == 0.2 and model.drop_path_rate == 0.0
    assert create_model("mnasnet_small").drop_rate == 0.0


@pytest.mark.parametrize("name", MODE_FAMILIES)
@pytest.mark.slow
def test_graph_and_pynative_agree(name):
    """Inference and one SGD training step give the same numbers in both execution modes."""
    x, y = random_images(2, SMALL, seed=3), ms.Tensor(np.array([0, 3], np.int32))
    base = create_model(name, num_classes=5, drop_rate=0.0)
    init = {p.name: p.asnumpy() for p in base.get_parameters()}
    results = {}
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        ms.set_context(mode=mode)
        try:
            model = create_model(name, num_classes=5, drop_rate=0.0)
            for p in model.get_parameters():
                p.set_data(ms.Tensor(init[p.name]))
            model.set_train(False)
            logits = model(x).asnumpy()
            model.set_train(True)
            opt = nn.SGD(model.trainable_params(), learning_rate=0.1)
            step = nn.TrainOneStepCell(nn.WithLossCell(model, nn.CrossEntropyLoss()), opt)
            loss = step(x, y).asnumpy()
            after = {p.name: p.asnumpy() for p in model.get_parameters()}
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)
        results[mode] = (logits, loss, after)
    (l1, loss1, w1), (l2, loss2, w2) = results[ms.PYNATIVE_MODE], results[ms.GRAPH_MODE]
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(loss1, loss2, atol=1e-5)
    worst = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    assert worst < 1e-5
    assert any(not np.array_equal(w1[k], init[k]) for k in w1)  # the step really trained


@pytest.mark.parametrize(
    "arch",
    [
        # every op of the MnasNet search space: regular conv, dw-separable, MBConv e3/e6; k3/k5; SE; skip/noskip;
        # channels that are not multiples of 8 and arbitrary repeat counts
        "cn_r2_k3_s1_c20_se0.25|ds_r1_k5_s2_c24|ir_r3_k3_s2_e3_c36_noskip|ir_r1_k5_s1_e6_c36_se0.25|cn_r1_k5_s2_c48",
        "ds_r1_k3_s1_c16_noskip|ir_r1_k5_s2_e6_c24_se0.25,ir_r2_k3_s1_e3_c24|cn_r4_k3_s2_c40_noskip",
    ],
)
@pytest.mark.slow
def test_search_space_architectures_build_and_train(arch):
    from mindcv.models import MnasNet

    model = MnasNet(arch, num_classes=3, width_mult=1.0)
    blocks = [b for stage in model.blocks for b in stage]
    assert [type(b).__name__ for b in blocks][:2] in (
        ["ConvBnAct", "ConvBnAct"],
        ["DepthwiseSeparableConv", "InvertedResidual"],
    )
    model.set_train(True)
    x, y = random_images(2, 32), ms.Tensor(np.array([0, 2], np.int32))
    loss_fn = nn.CrossEntropyLoss()

    def forward(a, b):
        return loss_fn(model(a), b)

    loss, grads = ms.value_and_grad(forward, None, model.trainable_params())(x, y)
    assert np.isfinite(loss.asnumpy()) and len(grads) == len(model.trainable_params())
    assert model.arch_def == [s if "," not in s else s.split(",") for s in arch.split("|")]


@pytest.mark.parametrize(
    "name, mega_macs",
    # computed from the layer tables in the reference (torchvision's published _ops for B1 0.5 / 1.0)
    [
        ("mnasnet_050", 104.5),
        pytest.param("mnasnet_100", 314.4, marks=pytest.mark.slow),
        pytest.param("semnasnet_100", 311.6, marks=pytest.mark.slow),
        pytest.param("mnasnet_small", 68.3, marks=pytest.mark.slow),
    ],
)
def test_macs_match_the_published_layer_table_counts(name, mega_macs):
    model = create_model(name)
    ms.set_context(mode=ms.GRAPH_MODE)  # counting runs in PyNative (hooks) and gives the caller's mode back
    try:
        assert round(count_macs(model, 224) / 1e6, 1) == mega_macs
        assert ms.get_context("mode") == ms.GRAPH_MODE
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.slow
def test_noise_layout_gives_each_stochastic_layer_its_own_columns():
    from mindcv.models.layers import noise_width

    model = create_model("mnasnet_050", num_classes=5, drop_rate=0.3, drop_path_rate=0.3)
    layout = model.noise_layout
    spans = sorted(layout.owners.values())
    assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == layout.width
    assert all(a[0] + a[1] == b[0] for a, b in zip(spans, spans[1:]))  # disjoint, no gaps
    dropping = [b for stage in model.blocks for b in stage if b.has_skip and b.drop_path_prob > 0]
    assert layout.width == model.num_features + len(dropping) == noise_width(model) == model.noise_width
    assert noise_width(create_model("mnasnet_050", drop_rate=0.0)) == 0  # nothing stochastic: no noise drawn

    model.set_train(True)
    x = random_images(2, SMALL)
    keep_all = np.ones((2, layout.width), np.float32)
    base = model(x, ms.Tensor(keep_all)).asnumpy()
    for name, (start, columns) in layout.owners.items():
        noise = keep_all.copy()
        noise[:, start : start + columns] = 0.0  # only this layer drops
        assert not np.allclose(model(x, ms.Tensor(noise)).asnumpy(), base), name
    unread = np.concatenate([keep_all, np.zeros((2, 5), np.float32)], axis=1)
    np.testing.assert_array_equal(model(x, ms.Tensor(unread)).asnumpy(), base)  # columns past the layout


def test_noise_layout_rejects_a_dropout_without_columns():
    from mindcv.models.layers import Dropout, NoiseLayout

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.drop = Dropout(0.5)  # element-wise, but no `features`: its columns are unknown

    with pytest.raises(ValueError, match=r"dropout 'drop' of Net has no noise columns: give element-wise Dropout"):
        NoiseLayout(Net())


def test_a_zoo_name_fixes_its_width():
    with pytest.raises(ValueError, match=r"mnasnet_050 is B1 at width 0.5, got width_mult=1.0: for another width use"):
        create_model("mnasnet_050", width_mult=1.0)
    assert create_model("mnasnet_050", width_mult=0.5, num_classes=3).width_mult == 0.5  # the same width is fine
    assert create_model("mnasnet_small", width_mult=0.75, num_classes=3).width_mult == 0.75  # TF's depth_multiplier


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_a_new_network_starts_near_chance_loss_whatever_the_class_count(num_classes):
    """torchvision's classifier init scales with 1/num_classes: with 10 classes a new MnasNet started at a loss of
    ~10 (logits sd ~6), which made short proxy trainings slow and seed-dependent. Checked for the model, its
    reset classifier and the search's supernet, on the batch statistics a training step sees."""
    from mindcv.nas.search_space import SearchSpace
    from mindcv.nas.supernet import SuperNet

    images = random_images(16, SMALL)
    labels = ms.Tensor(np.arange(16) % num_classes, ms.int32)
    reset = create_model("mnasnet_050", num_classes=3)
    reset.reset_classifier(num_classes)
    networks = {
        "model": create_model("mnasnet_050", num_classes=num_classes),
        "reset_classifier": reset,
        "supernet": SuperNet(SearchSpace(), num_classes, width_mult=0.5),
    }
    for name, net in networks.items():
        net.set_train(True)
        logits = net(images)
        loss = float(nn.CrossEntropyLoss()(logits, labels).asnumpy())
        assert float(logits.std().asnumpy()) < 1.0, name
        assert abs(loss - np.log(num_classes)) < 1.0, (name, loss)
        bound = np.sqrt(3.0 / net.classifier.weight.shape[1])  # the same scale whatever the class count
        weights = net.classifier.weight.asnumpy()
        assert np.abs(weights).max() <= bound and np.abs(weights).max() > 0.9 * bound, name
