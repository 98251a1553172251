"""Adversarial tests of the direct depthwise kernels (mindcv/kernels): input chosen to break their promises.

Promises attacked (mindcv/kernels/depthwise.py, README "Direct depthwise kernels"): DepthwiseConv2d is an
nn.Conv2d with the same parameters and results; use_direct_depthwise switches the kernels; anything missing falls
back with one warning; the cache survives bad compilers, odd folders and killed builds; export holds no custom op.
"""

import copy
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import one_mode_quick

import mindspore as ms
from mindspore import nn, ops

from mindcv.errors import InvalidArgumentError
from mindcv.kernels import DepthwiseConv2d
from mindcv.kernels import depthwise as dw
from mindcv.kernels import depthwise_kernel_status, use_direct_depthwise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_conv(channels, kernel, stride=1, bias=False):
    return nn.Conv2d(
        channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels, has_bias=bias
    )


def twins(channels, kernel, stride=1, bias=False, seed=0):
    direct, reference = DepthwiseConv2d(channels, kernel, stride, has_bias=bias), reference_conv(
        channels, kernel, stride, bias
    )
    rng = np.random.default_rng(seed)
    for ours, theirs in zip(direct.get_parameters(), reference.get_parameters()):
        value = rng.standard_normal(ours.shape).astype(np.float32)
        ours.set_data(ms.Tensor(value))
        theirs.set_data(ms.Tensor(value.copy()))
    return direct, reference


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


def value_and_grads(cell, x):
    loss = lambda x: (cell(x) * cell(x)).sum()  # noqa: E731
    _, (dx, dparams) = ms.value_and_grad(loss, grad_position=0, weights=cell.trainable_params())(x)
    return [cell(x).asnumpy(), dx.asnumpy()] + [g.asnumpy() for g in dparams]


class Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return (self.net(x) ** 2).sum()


class InputGrad(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation()

    def construct(self, x):
        return self.grad(self.net)(x)


class Times1(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net(x) * 1.0


def fake_compiler(path, body):
    path.write_bytes(b"#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture(autouse=True)
def _no_rank_folder():
    yield
    import shutil

    shutil.rmtree(os.path.join(REPO, "rank_0"), ignore_errors=True)


# ------------------------------------------------------------------------------------ numbers that hold
SHAPES = [
    # (N, C, H, W, kernel, stride)
    (1, 3, 1, 1, 3, 2),
    (2, 2, 1, 2, 9, 1),
    (1, 2, 2, 1, 11, 2),
    (1, 3, 3, 2, 9, 2),
    (2, 1, 1, 13, 5, 2),
    (1, 2, 13, 1, 7, 1),
    (1, 3, 8, 10, 9, 2),
    (1, 2, 11, 11, 11, 1),
    (1, 1024, 3, 3, 3, 2),
    (2, 64, 1, 1, 9, 2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_unusual_shapes_match_nn_conv2d(shape):
    """H or W of 1-3, images smaller than the kernel, kernels 9 and 11, 1024 channels: forward and both grads."""
    n, c, h, w, k, s = shape
    direct, reference = twins(c, k, s)
    assert direct.direct
    x = ms.Tensor(np.random.default_rng(1).standard_normal((n, c, h, w)).astype(np.float32))
    got, want = value_and_grads(direct, x), value_and_grads(reference, x)
    for ours, theirs in zip(got, want):
        assert ours.shape == theirs.shape
        assert relative(ours, theirs) < 1e-5


@pytest.mark.parametrize("shape", [(1, 3, 1, 2, 11, 2), (2, 8, 7, 6, 9, 2)], ids=["1x2-k11-s2", "7x6-k9-s2"])
@one_mode_quick()
def test_unusual_shapes_match_in_graph_mode(mode, shape):
    n, c, h, w, k, s = shape
    direct, reference = twins(c, k, s)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((n, c, h, w)).astype(np.float32))
    for ours, theirs in zip(
        (Times1(direct)(x), InputGrad(Loss(direct))(x)), (Times1(reference)(x), InputGrad(Loss(reference))(x))
    ):
        assert relative(ours.asnumpy(), theirs.asnumpy()) < 1e-5


def test_non_contiguous_views_are_read_correctly():
    """PyNative views (transpose, permute, strided and channel slices, broadcast) reach the kernel as real data."""
    direct, reference = twins(4, 3)
    rng = np.random.default_rng(3)
    base = ms.Tensor(rng.standard_normal((1, 4, 6, 9)).astype(np.float32))
    views = [
        base.transpose(0, 1, 3, 2),
        base[:, :, :, ::2],
        ms.Tensor(rng.standard_normal((1, 8, 6, 6)).astype(np.float32))[:, 2:6],
        ms.Tensor(rng.standard_normal((1, 6, 6, 4)).astype(np.float32)).permute(0, 3, 1, 2),
        ms.Tensor(rng.standard_normal((1, 4, 1, 6)).astype(np.float32)).broadcast_to((2, 4, 5, 6)),
    ]
    for x in views:
        assert relative(direct(x).asnumpy(), reference(x).asnumpy()) == 0.0


def test_nan_and_inf_in_the_input_propagate_like_mindspore():
    direct, reference = twins(3, 5)
    x = np.random.default_rng(4).standard_normal((1, 3, 9, 9)).astype(np.float32)
    x[0, 0, 4, 4], x[0, 1, 0, 0], x[0, 2, 8, 3] = np.nan, np.inf, -np.inf
    got, want = direct(ms.Tensor(x)).asnumpy(), reference(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    finite = np.isfinite(want)
    assert finite.any() and relative(got[finite], want[finite]) < 1e-5


def test_large_image_weight_gradient_accumulates_accurately():
    """One 512x512 all-positive channel: 262144 terms summed per weight in float32."""
    direct, reference = twins(1, 3)
    x = ms.Tensor(np.random.default_rng(5).random((1, 1, 512, 512)).astype(np.float32))
    grad = lambda cell: ms.grad(lambda x: cell(x).sum(), None, cell.trainable_params())(x)[0].asnumpy()  # noqa
    assert relative(grad(direct), grad(reference)) < 1e-5


@pytest.mark.slow
def test_a_few_training_steps_give_the_same_parameters():
    def net():
        return nn.SequentialCell(
            [DepthwiseConv2d(4, 3), nn.ReLU(), DepthwiseConv2d(4, 5, 2), nn.ReLU(), DepthwiseConv2d(4, 7, 2)]
        )

    direct, standard = net(), net()
    ms.load_param_into_net(standard, {p.name: ms.Parameter(p.value().copy(), p.name) for p in direct.get_parameters()})
    use_direct_depthwise(standard, False)
    rng = np.random.default_rng(6)
    batches = [ms.Tensor(rng.standard_normal((2, 4, 15, 13)).astype(np.float32)) for _ in range(3)]
    for model in (direct, standard):
        step = nn.TrainOneStepCell(Loss(model), nn.SGD(model.trainable_params(), learning_rate=1e-3, momentum=0.9))
        for x in batches:
            step(x)
    for ours, theirs in zip(direct.get_parameters(), standard.get_parameters()):
        assert relative(ours.asnumpy(), theirs.asnumpy()) < 1e-4, ours.name


def test_checkpoint_loads_into_plain_nn_conv2d(tmp_path):
    direct = nn.SequentialCell([DepthwiseConv2d(4, 3, has_bias=True), DepthwiseConv2d(4, 5, 2)])
    plain = nn.SequentialCell([reference_conv(4, 3, bias=True), reference_conv(4, 5, 2)])
    ms.save_checkpoint(direct, str(tmp_path / "d.ckpt"))
    not_loaded, unused = ms.load_param_into_net(plain, ms.load_checkpoint(str(tmp_path / "d.ckpt")), strict_load=True)
    assert not not_loaded and not unused
    x = ms.Tensor(np.random.default_rng(7).standard_normal((1, 4, 9, 9)).astype(np.float32))
    assert relative(direct(x).asnumpy(), plain(x).asnumpy()) < 1e-6


@pytest.mark.slow
def test_export_after_a_graph_run_holds_no_custom_op(tmp_path):
    """A model already compiled with the direct kernels in GRAPH mode is exported with MindSpore's convolution."""
    from export import export_model

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        direct, reference = twins(8, 5)
        model = Times1(direct)
        x = ms.Tensor(np.random.default_rng(8).standard_normal((2, 8, 12, 12)).astype(np.float32))
        model(x)
        path = export_model(model, str(tmp_path / "m"), "MINDIR", 12, batch_size=2, in_channels=8)
        data = open(path, "rb").read()
        assert b"depthwise_direct" not in data and b"Custom" not in data
        got = nn.GraphCell(ms.load(path))(x).asnumpy()
        assert relative(got, Times1(reference)(x).asnumpy()) < 1e-6
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


# ------------------------------------------------------------------------------------ the switch and the cache
@pytest.mark.parametrize("value", [" ON ", "Yes", "TRUE", "auto", ""])
@pytest.mark.slow
def test_switch_spellings(fresh_status, monkeypatch, value):
    monkeypatch.setenv(dw.ENV_SWITCH, value)
    assert depthwise_kernel_status().name == "direct"


def test_kernel_cache_pointing_at_a_file_falls_back(fresh_status, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MINDCV_KERNEL_CACHE", str(blocker))
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert depthwise_kernel_status().library is None
    assert not DepthwiseConv2d(2, 3).direct


@pytest.mark.slow
def test_a_symlinked_cache_folder_works(fresh_status, monkeypatch, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    monkeypatch.setenv("MINDCV_KERNEL_CACHE", str(tmp_path / "link"))
    assert depthwise_kernel_status().name == "direct"
    direct, reference = twins(3, 3)
    x = ms.Tensor(np.ones((1, 3, 5, 5), np.float32))
    assert relative(direct(x).asnumpy(), reference(x).asnumpy()) < 1e-6


@pytest.mark.slow
@pytest.mark.timeout(120)  # the fake compiler sleeps 30 s per call: without the build timeout this would not end
def test_a_compiler_that_hangs_times_out_and_leaves_nothing(fresh_status, monkeypatch, tmp_path):
    cxx = fake_compiler(tmp_path / "hang", b'if [ "$1" = --version ]; then echo hang 1; exit 0; fi\nexec sleep 30\n')
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setattr(dw, "BUILD_TIMEOUT_S", 1.0)
    with pytest.warns(RuntimeWarning, match="did not finish within 1 s"):
        assert depthwise_kernel_status().library is None
    assert [p.name for p in fresh_status.iterdir() if not p.name.endswith(".lock")] == []


def test_a_compiler_printing_non_utf8_bytes_falls_back(fresh_status, monkeypatch, tmp_path):
    """A compiler whose messages are not UTF-8 (e.g. a Latin-1 locale) must give a fallback, not a crash.

    Fixed: subprocess.run(..., text=True) raises UnicodeDecodeError, which nothing catches: building a layer
    (and so create_model) dies with UnicodeDecodeError instead of falling back with a warning.
    """
    cxx = fake_compiler(
        tmp_path / "latin1-g++",
        b'if [ "$1" = --version ]; then printf "g++ (Debian) 12\\n"; exit 0; fi\n'
        b'printf "Fehler: Speicher ersch\\366pft\\n" >&2\nexit 1\n',
    )
    monkeypatch.setenv("CXX", cxx)
    with pytest.warns(RuntimeWarning, match="failed to build"):
        assert depthwise_kernel_status().library is None


def test_a_compiler_whose_version_is_not_utf8_falls_back(fresh_status, monkeypatch, tmp_path):
    """Fixed (same cause): ``--version`` output that is not UTF-8 crashes library_path()."""
    cxx = fake_compiler(tmp_path / "weird-g++", b'printf "\\377\\376 c++\\n"; exit 1\n')
    monkeypatch.setenv("CXX", cxx)
    with pytest.warns(RuntimeWarning):
        assert depthwise_kernel_status().library is None


@pytest.mark.slow
def test_a_relative_cache_folder_survives_a_chdir(fresh_status, monkeypatch, tmp_path):
    """Fixed: MINDCV_KERNEL_CACHE=relkernels stores a relative library path in the custom ops; after a chdir the
    first forward fails with "couldn't find the AOT binary file: relkernels/depthwise_direct-....so"."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("MINDCV_KERNEL_CACHE", "relkernels")
    direct, reference = twins(3, 3, 2)
    assert direct.direct
    monkeypatch.chdir(tmp_path / "b")
    x = ms.Tensor(np.ones((1, 3, 6, 6), np.float32))
    assert relative(direct(x).asnumpy(), reference(x).asnumpy()) < 1e-6


def test_a_cache_folder_with_a_colon_works_or_falls_back(fresh_status, monkeypatch, tmp_path):
    """Fixed: the status says "direct" (built and checked), but MindSpore splits 'path:function' at the first
    colon, so the first forward fails with "couldn't find the AOT binary file: .../a"."""
    monkeypatch.setenv("MINDCV_KERNEL_CACHE", str(tmp_path / "a:b" / "kernels"))
    direct, reference = twins(3, 3)
    x = ms.Tensor(np.ones((1, 3, 6, 6), np.float32))
    assert relative(direct(x).asnumpy(), reference(x).asnumpy()) < 1e-6


@pytest.mark.slow
def test_an_aot_white_list_elsewhere_falls_back(fresh_status, monkeypatch, tmp_path):
    """Fixed: with MS_CUSTOM_AOT_WHITE_LIST (MindSpore's allowed folder for AOT libraries) set to another folder,
    building a layer raises TypeError "the legal path for the file is ..." instead of falling back."""
    monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(tmp_path / "my-own-ops"))
    direct, reference = twins(3, 3)
    x = ms.Tensor(np.ones((1, 3, 6, 6), np.float32))
    assert relative(direct(x).asnumpy(), reference(x).asnumpy()) < 1e-6


@pytest.mark.slow
def test_a_killed_build_leaves_no_temporaries_for_ever(fresh_status, tmp_path):
    """Fixed (minor): a process killed while compiling leaves .tmp-*.so in the cache; the next build (which holds
    the lock) never removes it (mindcv.io.atomic.remove_stale_temporaries exists but is not called)."""
    cxx = fake_compiler(tmp_path / "slow", b'if [ "$1" = --version ]; then echo slow 1; exit 0; fi\nexec sleep 30\n')
    script = textwrap.dedent("""
        import mindspore as ms
        ms.set_device("CPU")
        from mindcv.kernels import depthwise_kernel_status
        depthwise_kernel_status()
        """)
    env = dict(os.environ, MINDCV_KERNEL_CACHE=str(fresh_status), PYTHONPATH=REPO, CXX=cxx)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        fresh_status.is_dir() and any(p.name.startswith(".tmp-") for p in fresh_status.iterdir())
    ):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(p.name.startswith(".tmp-") for p in fresh_status.iterdir()), "the build never started"
    assert depthwise_kernel_status().name == "direct"  # the real compiler now
    leftovers = [p.name for p in fresh_status.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


# ------------------------------------------------------------------------------------ drop-in promises
def test_a_model_can_be_deep_copied():
    """Fixed: copy.deepcopy of a DepthwiseConv2d (and so of every MnasNet) raises
    "Custom.__init__() got an unexpected keyword argument 'name'"; nn.Conv2d deep-copies fine."""
    copy.deepcopy(reference_conv(4, 3))  # the cell it claims to be
    direct, reference = twins(4, 3)
    clone = copy.deepcopy(direct)
    x = ms.Tensor(np.random.default_rng(9).standard_normal((1, 4, 7, 7)).astype(np.float32))
    assert clone.direct and relative(clone(x).asnumpy(), reference(x).asnumpy()) < 1e-6


@pytest.mark.slow
def test_switching_kernels_after_a_graph_run_is_refused_not_ignored():
    """In GRAPH mode MindSpore reuses the compiled graph, so a switch after the first call would be silently
    ignored (it once returned 0 "layers that run the direct kernels now" while they kept running): it is refused
    with a clear error, and the compiled graph keeps computing what it computed. Told apart bitwise: the input
    gradients of the two kernels differ in the last bits on this input (checked below)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        x = ms.Tensor(np.random.default_rng(10).standard_normal((2, 8, 17, 17)).astype(np.float32))
        direct, reference = twins(8, 5)
        want_ms = InputGrad(Loss(reference))(x).asnumpy()
        fresh, _ = twins(8, 5)
        want_direct = InputGrad(Loss(fresh))(x).asnumpy()
        assert not np.array_equal(want_ms, want_direct)  # the two kernels are told apart
        net = InputGrad(Loss(direct))
        np.testing.assert_array_equal(net(x).asnumpy(), want_direct)
        with pytest.raises(InvalidArgumentError, match="already run in GRAPH mode.*create the model again"):
            use_direct_depthwise(net, False)
        np.testing.assert_array_equal(net(x).asnumpy(), want_direct)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("spec", [[None, 4, 9, 9], [None, 4, None, None]], ids=["dynamic-batch", "dynamic-hw"])
@pytest.mark.slow
def test_dynamic_shapes_in_graph_mode_like_nn_conv2d(spec):
    """Fixed: with set_inputs() dynamic shapes nn.Conv2d works; DepthwiseConv2d fails with the framework error
    "The pointer[value] is null" (even for a dynamic batch only)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        direct, reference = twins(4, 3, 2)
        ours, theirs = Times1(direct), Times1(reference)
        for net in (ours, theirs):
            net.set_inputs(ms.Tensor(shape=spec, dtype=ms.float32))
        x = ms.Tensor(np.random.default_rng(11).standard_normal((3, 4, 9, 9)).astype(np.float32))
        want = theirs(x).asnumpy()
        assert relative(ours(x).asnumpy(), want) < 1e-6
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("shape", [(1, 5, 6, 6), (4, 6, 6)], ids=["wrong-channels", "3d"])
@pytest.mark.slow
def test_wrong_input_gives_the_same_error_as_nn_conv2d(shape):
    """A wrong channel count or a 3-D input once gave "Return value from CPU AOT kernel(...)'s function(DwFwdS1)
    is 1" and a bare IndexError; such input now goes to MindSpore's convolution, which reports it as for nn.Conv2d."""
    direct, reference = twins(4, 3)
    x = ms.Tensor(np.ones(shape, np.float32))
    with pytest.raises((ValueError, RuntimeError)) as theirs:
        reference(x)
    with pytest.raises(type(theirs.value)) as ours:
        direct(x)
    assert "AOT" not in str(ours.value) and "DwFwd" not in str(ours.value)
