"""MnasNet-B1's parameters carry upstream mindcv's names (issue 16, item 4).

Upstream's fine-tuning guide freezes ``features.0``-``features.6`` and gives ``features.13``-``features.15`` their
own learning rates by filtering ``param.name``. The ``mnasnet_0xx`` models name their parameters as upstream's
``Mnasnet`` does, so those snippets select the same layers here; the reference for the names is a file written by
upstream mindcv itself (``tests/fixtures/mindcv_upstream_mnasnet_050.ckpt``), not this package's own mapping.
"""

import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindcv.errors import InvalidArgumentError
from mindcv.models import create_model
from mindcv.models.checkpoint import read_checkpoint
from mindcv.models.mnasnet import ARCH_DEFS, Mnasnet, upstream_parameter_names
from mindcv.optim import create_optimizer
from mindcv.optim.optim_factory import load_optimizer_state
from mindcv.utils.ema import EMA

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
UPSTREAM_FILE = os.path.join(FIXTURES, "mindcv_upstream_mnasnet_050.ckpt")


def _upstream_weights():
    tensors, _ = read_checkpoint(UPSTREAM_FILE)
    return {k: v for k, v in tensors.items() if k.startswith(("features.", "classifier."))}


def test_names_and_shapes_are_those_of_a_file_upstream_wrote():
    model = create_model("mnasnet_050", num_classes=10)
    ours = {p.name: tuple(p.shape) for p in model.get_parameters()}
    theirs = {k: tuple(v.shape) for k, v in _upstream_weights().items()}
    assert ours == theirs
    assert {p.name for p in Mnasnet(0.5, num_classes=10).get_parameters()} == set(theirs)


def test_mindsporess_own_loader_takes_an_upstream_file_without_renaming():
    """Upstream users load their files with ``load_param_into_net``; every parameter is found, and the model
    computes what this package's converting loader gives."""
    plain = create_model("mnasnet_050", num_classes=10)
    not_loaded, _ = ms.load_param_into_net(plain, ms.load_checkpoint(UPSTREAM_FILE))
    assert not_loaded == []
    converted = create_model("mnasnet_050", num_classes=10, checkpoint_path=UPSTREAM_FILE)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    plain.set_train(False)
    converted.set_train(False)
    np.testing.assert_array_equal(plain(x).asnumpy(), converted(x).asnumpy())


def test_the_tutorials_freezing_loop_freezes_upstreams_layers_and_they_stay_put():
    model = create_model("mnasnet_050", num_classes=4)
    freeze_layer = ["features." + str(i) for i in range(7)]  # upstream's guide, verbatim
    for param in model.trainable_params():
        for layer in freeze_layer:
            if layer in param.name:
                param.requires_grad = False
    frozen = {p.name for p in model.get_parameters() if not p.requires_grad and "moving" not in p.name}
    # the substring test also catches features.1x (upstream's snippet does the same on upstream's model)
    expected = {
        name for name in _upstream_weights() if "moving" not in name and any(layer in name for layer in freeze_layer)
    }
    assert frozen == expected
    assert {"features.0.weight", "features.3.weight", "features.6.weight", "features.12.layers.3.weight"} <= frozen
    assert "features.8.layers.0.weight" not in frozen and "classifier.weight" not in frozen
    # and they are frozen in fact: a training step leaves them unchanged and moves the rest
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params() + [model.conv_stem.weight]}
    optimizer = create_optimizer(model.trainable_params(), "momentum", lr=0.1)
    loss_fn = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    step = ms.nn.TrainOneStepCell(ms.nn.WithLossCell(model, loss_fn), optimizer)
    step.set_train()
    rng = np.random.default_rng(1)
    step(Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32)), Tensor(np.arange(4).astype(np.int32)))
    assert np.array_equal(model.conv_stem.weight.asnumpy(), before["features.0.weight"])
    assert not np.array_equal(model.classifier.weight.asnumpy(), before["classifier.weight"])


def test_the_tutorials_learning_rate_groups_select_one_block_each():
    model = create_model("mnasnet_050", num_classes=4)
    params = model.trainable_params()
    lr = [0.01] * 3
    groups = [
        {"params": list(filter(lambda x: "features.13" in x.name, params)), "lr": [i * 1.05 for i in lr]},
        {"params": list(filter(lambda x: "features.14" in x.name, params)), "lr": [i * 1.1 for i in lr]},
        {"params": list(filter(lambda x: "features.15" in x.name, params)), "lr": [i * 1.15 for i in lr]},
        {
            "params": list(
                filter(
                    lambda x: ".".join(x.name.split(".")[:2]) not in ["features.13", "features.14", "features.15"],
                    params,
                )
            ),
            "lr": lr,
        },
        {"order_params": params},
    ]
    # an inverted residual: expansion, depthwise and projection convs, each with a BatchNorm's gamma and beta
    assert [len(g["params"]) for g in groups[:3]] == [9, 9, 9]
    assert len(groups[3]["params"]) == len(params) - 27
    # features.8-10 are stage 1's three blocks, features.11-13 stage 2's: features.13 is blocks.2.2
    assert {p.name for p in groups[0]["params"]} == {p.name for p in model.blocks[2][2].trainable_params()}
    optimizer = create_optimizer(groups, "momentum", lr=lr)
    assert len(optimizer.parameters) == len(params)


def test_state_written_before_the_rename_still_resumes():
    """Optimizer moments and EMA copies of files written before are named after the cells (conv_stem.weight)."""
    model = create_model("mnasnet_050", num_classes=3)
    path_of = {p.name: path for path, p in model.parameters_and_names()}
    optimizer = create_optimizer(model, "adamw", lr=0.01)
    legacy = {}
    for p in optimizer.get_parameters():
        slot, _, rest = p.name.partition(".")
        key = f"{slot}.{path_of[rest]}" if rest in path_of else p.name
        legacy[f"optimizer.{key}"] = np.full(p.shape, 0.5, np.float32) if p.shape else p.asnumpy()
    assert "optimizer.adam_m.conv_stem.weight" in legacy and "optimizer.adam_m.features.0.weight" not in legacy
    load_optimizer_state(optimizer, legacy, "legacy.ckpt")
    moment = {p.name: p for p in optimizer.get_parameters()}["adam_m.features.0.weight"]
    assert np.all(moment.asnumpy() == 0.5)

    ema = EMA(model, 0.9)
    state = {(f"ema.{path_of[k[4:]]}" if k[4:] in path_of else k): v + 1.0 for k, v in ema.state_dict().items()}
    assert "ema.blocks.1.0.conv_dw.weight" in state
    ema.load_state_dict(state)
    np.testing.assert_array_equal(
        ema.state_dict()["ema.features.8.layers.3.weight"], state["ema.blocks.1.0.conv_dw.weight"]
    )


def test_the_names_follow_the_architecture_and_only_b1s_pattern_takes_them():
    wide = create_model("mnasnet_arch", arch="b1", width_mult=1.4, num_classes=5, param_layout="features")
    assert {p.name for p in wide.get_parameters()} == {
        p.name for p in create_model("mnasnet_140", num_classes=5).get_parameters()
    }
    shorter = "ds_r1_k3_s1_c16_noskip|ir_r2_k3_s2_e3_c24|ir_r1_k5_s2_e6_c40"
    names = upstream_parameter_names(create_model("mnasnet_arch", arch=shorter, num_classes=2))
    assert names["blocks.2.0.conv_pwl.weight"] == "features.10.layers.6.weight"
    assert names["conv_head.weight"] == "features.11.weight" and names["bn2.gamma"] == "features.12.gamma"
    for arch in ("a1", "small"):
        with pytest.raises(InvalidArgumentError, match="does not have B1's pattern"):
            create_model("mnasnet_arch", arch=arch, num_classes=2, param_layout="features")
    with pytest.raises(InvalidArgumentError, match="unknown param_layout 'upstream'; valid: blocks, features"):
        create_model("mnasnet_050", param_layout="upstream")
    assert create_model("semnasnet_100").param_layout == "blocks"
    assert ARCH_DEFS["b1"]  # the registered B1 widths all use the features names
    for name in ("mnasnet_050", "mnasnet_075", "mnasnet_100", "mnasnet_130", "mnasnet_140"):
        assert create_model(name, num_classes=2).trainable_params()[0].name == "features.0.weight"


@pytest.mark.parametrize(
    "arch",
    [
        "ds_r1_k3_s1_c16_noskip|ir_r2_k3_s2_e3_c24|ir_r1_k5_s2_e6_c40",  # fewer blocks than B1
        # B1's 16 blocks split differently (4, 2, 3, 2, 4, 1): B1's stage table would put them in the wrong cells
        "ds_r1_k3_s1_c16_noskip|ir_r4_k3_s2_e3_c24|ir_r2_k5_s2_e3_c40|ir_r3_k5_s2_e6_c80|ir_r2_k3_s1_e6_c96"
        "|ir_r4_k5_s2_e6_c192|ir_r1_k3_s1_e6_c320",
    ],
)
def test_a_features_named_file_of_another_architecture_loads_into_the_right_cells(tmp_path, arch):
    from mindcv.models import save_checkpoint

    model = create_model("mnasnet_arch", arch=arch, num_classes=3, param_layout="features")
    for i, p in enumerate(model.get_parameters()):  # every tensor distinct, so a misplaced one is seen
        p.set_data(Tensor(np.full(p.shape, 0.01 * (i + 1), np.float32)))
    path = save_checkpoint(model, str(tmp_path / "arch.safetensors"))
    for layout in ("features", "blocks"):
        again = create_model("mnasnet_arch", arch=arch, num_classes=3, param_layout=layout, checkpoint_path=path)
        expected = dict(model.parameters_and_names())
        for cell_path, p in again.parameters_and_names():
            np.testing.assert_array_equal(p.asnumpy(), expected[cell_path].asnumpy(), err_msg=cell_path)


def test_a_file_holding_both_namings_is_refused(tmp_path):
    from mindcv.models import CheckpointError, save_checkpoint

    blocks = create_model("mnasnet_050", num_classes=3, param_layout="blocks")
    features = create_model("mnasnet_050", num_classes=3)
    both = {p.name: p.asnumpy() for p in blocks.get_parameters()}
    both.update({p.name: p.asnumpy() + 1.0 for p in features.get_parameters()})
    path = save_checkpoint(both, str(tmp_path / "both.ckpt"))
    with pytest.raises(CheckpointError, match="both namings"):
        create_model("mnasnet_050", num_classes=3, checkpoint_path=path)


def test_a_features_named_file_without_a_record_and_not_b1s_block_count_is_refused(tmp_path):
    """Upstream files record no architecture, so B1's stage table is assumed; weights with another block count
    (a bare state dict of a searched model, say) are refused naming both counts, not loaded into the wrong cells."""
    from mindcv.models import CheckpointError, save_checkpoint

    model = create_model(
        "mnasnet_arch", arch="ds_r1_k3_s1_c16_noskip|ir_r2_k3_s2_e3_c24", num_classes=3, param_layout="features"
    )
    bare = {p.name: p.asnumpy() for p in model.get_parameters()}  # names only: no model name, no architecture
    assert "features.9.layers.0.weight" in bare and "features.10.layers.0.weight" not in bare
    path = save_checkpoint(bare, str(tmp_path / "bare.ckpt"))
    with pytest.raises(CheckpointError, match=r"bare\.ckpt.* has 2 inverted-residual .* MnasNet-B1 \(assumed.* has 16"):
        create_model("mnasnet_050", num_classes=3, checkpoint_path=path)
