"""The direct depthwise kernels (mindcv/kernels): same results as nn.Conv2d, and a cache that survives bad input.

Numbers are checked against MindSpore's own depthwise convolution (forward, input gradient, weight gradient) on
every stride, odd and even sizes, non-square inputs, batch 1 and a single row; the cache is attacked with a
missing compiler, a failing compiler, truncated, overwritten and wrong libraries, a library that crashes, an
unusable folder and two processes building at once.
"""

import ctypes
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import one_mode_quick

import mindspore as ms
from mindspore import nn

from mindcv.errors import InvalidArgumentError
from mindcv.kernels import (
    DepthwiseConv2d,
    DirectDepthwiseUnavailableError,
)
from mindcv.kernels import depthwise as dw
from mindcv.kernels import depthwise_kernel_status, set_kernel_threads, standard_depthwise, use_direct_depthwise
from mindcv.models import create_model
from mindcv.models.layers import create_conv2d

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_conv(channels: int, kernel: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(
        channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels, has_bias=bias
    )


def value_and_grads(cell: nn.Cell, x: ms.Tensor):
    loss = lambda x: (cell(x) * cell(x)).sum()  # noqa: E731  (a loss whose gradient flows through both calls)
    params = cell.trainable_params()
    out, (dx, dparams) = ms.value_and_grad(loss, grad_position=0, weights=params)(x)
    return cell(x).asnumpy(), dx.asnumpy(), [g.asnumpy() for g in dparams]


class SquaredMean(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__()
        self.model = model

    def construct(self, x):
        return self.model(x).square().mean()


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ------------------------------------------------------------------------------------------------ the numbers
def test_the_session_uses_the_direct_kernels():
    """Everything below would pass trivially with MindSpore's kernels; make sure the direct ones are built here."""
    status = depthwise_kernel_status()
    assert status.name == "direct", status.reason
    assert os.path.isfile(status.library) and os.path.isfile(status.library + ".checked")
    assert DepthwiseConv2d(4, 3).direct


@pytest.mark.parametrize(
    "shape, kernel, stride, bias",
    [
        ((2, 8, 9, 7), 3, 1, False),
        ((2, 8, 9, 7), 3, 2, False),
        ((1, 4, 10, 11), 5, 2, True),
        ((1, 4, 10, 11), 5, 1, False),
        ((3, 2, 1, 5), 7, 2, False),  # a single row at stride 2
        ((1, 3, 2, 2), 5, 1, False),  # a kernel larger than the image
        ((1, 2, 12, 12), 11, 2, False),  # the largest kernel
        ((4, 16, 14, 14), 3, 1, True),
    ],
)
@one_mode_quick()
def test_same_results_and_gradients_as_mindspore(mode, shape, kernel, stride, bias):
    channels = shape[1]
    direct = DepthwiseConv2d(channels, kernel, stride, has_bias=bias)
    reference = reference_conv(channels, kernel, stride, bias)
    rng = np.random.default_rng(1)
    for ours, theirs in zip(direct.get_parameters(), reference.get_parameters()):
        assert ours.shape == theirs.shape
        theirs.set_data(ms.Tensor(rng.standard_normal(ours.shape).astype(np.float32)))
        ours.set_data(theirs.value())
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    got, want = value_and_grads(direct, x), value_and_grads(reference, x)
    assert got[0].shape == want[0].shape
    assert relative(got[0], want[0]) < 1e-5
    assert relative(got[1], want[1]) < 1e-5
    for g_ours, g_theirs in zip(got[2], want[2]):
        assert relative(g_ours, g_theirs) < 1e-5


@one_mode_quick()
def test_nan_in_weights_reaches_the_output(mode):
    """A NaN weight must show up in the output, not be hidden by the kernel."""
    cell = DepthwiseConv2d(3, 3)
    weights = np.ones((3, 1, 3, 3), np.float32)
    weights[1, 0, 1, 1] = np.nan
    cell.weight.set_data(ms.Tensor(weights))
    out = cell(ms.Tensor(np.ones((1, 3, 5, 5), np.float32))).asnumpy()
    assert np.isnan(out[0, 1]).all() and np.isfinite(out[0, [0, 2]]).all()


def test_float16_input_uses_mindspore_convolution():
    cell = DepthwiseConv2d(2, 3).to_float(ms.float16)
    reference = reference_conv(2, 3, 1, False).to_float(ms.float16)
    reference.weight.set_data(cell.weight.value())
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float16))
    np.testing.assert_allclose(cell(x).asnumpy(), reference(x).asnumpy(), rtol=1e-3, atol=1e-3)


def test_the_factory_builds_direct_layers_only_where_they_compute_the_same():
    depthwise = create_conv2d(8, 8, 5, stride=2, groups=8)
    assert isinstance(depthwise, DepthwiseConv2d) and isinstance(depthwise, nn.Conv2d)
    assert type(create_conv2d(8, 8, 3, groups=8, pad_type="same")) is nn.Conv2d  # TF padding: not the kernels'
    assert type(create_conv2d(8, 16, 3)) is nn.Conv2d
    assert type(create_conv2d(8, 8, 1, groups=8)) is nn.Conv2d
    assert type(create_conv2d(8, 8, 3, stride=3, groups=8)) is nn.Conv2d
    assert type(create_conv2d(8, 8, 4, groups=8)) is nn.Conv2d
    with pytest.raises(InvalidArgumentError, match="odd kernels"):
        DepthwiseConv2d(8, 4)
    with pytest.raises(InvalidArgumentError, match="stride 1 or 2"):
        DepthwiseConv2d(8, 3, stride=3)


@pytest.mark.slow
def test_a_model_trains_the_same_with_either_kernel():
    """mnasnet_050 in GRAPH mode: outputs and every parameter's gradient agree with MindSpore's kernels."""
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        direct, standard = (create_model("mnasnet_050", num_classes=10, drop_rate=0.0) for _ in range(2))
        layers = sum(isinstance(cell, DepthwiseConv2d) for _, cell in direct.cells_and_names())
        assert layers == 17 and use_direct_depthwise(direct, True) == layers
        assert use_direct_depthwise(standard, False) == 0
        ms.load_param_into_net(standard, {p.name: p for p in direct.get_parameters()}, strict_load=True)
        names = [p.name for p in direct.get_parameters()]
        assert names == [p.name for p in standard.get_parameters()]  # checkpoints are interchangeable
        assert "features.8.layers.3.weight" in names
        x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
        results = []
        for model in (direct, standard):
            model.set_train(True)
            loss, grads = ms.value_and_grad(SquaredMean(model), None, model.trainable_params())(x)
            results.append((float(loss.asnumpy()), [g.asnumpy() for g in grads]))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-4)
        # some gradients (BN scales right before another BN) are float noise around 0: compare on the global scale
        scale = max(np.abs(g).max() for g in results[1][1])
        for name, ours, theirs in zip(names, results[0][1], results[1][1]):
            assert np.abs(ours - theirs).max() <= 1e-3 * scale, name
        assert (
            relative(
                results[0][1][names.index("features.8.layers.3.weight")],
                results[1][1][names.index("features.8.layers.3.weight")],
            )
            < 1e-3
        )
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.slow
def test_export_never_contains_the_kernels(tmp_path):
    onnx = pytest.importorskip("onnx")
    from export import export_model

    model = create_model("mnasnet_small", num_classes=5)
    assert use_direct_depthwise(model, True) > 0
    path = export_model(model, str(tmp_path / "m"), "ONNX", 32, batch_size=1)
    kinds = {node.op_type for node in onnx.load(path).graph.node}
    assert "Conv" in kinds and not any("Custom" in kind or "Dw" in kind for kind in kinds), kinds
    assert all(cell.direct for _, cell in model.cells_and_names() if isinstance(cell, DepthwiseConv2d))
    with standard_depthwise(model):
        assert not any(cell.direct for _, cell in model.cells_and_names() if isinstance(cell, DepthwiseConv2d))
    assert any(cell.direct for _, cell in model.cells_and_names() if isinstance(cell, DepthwiseConv2d))


def test_thread_count_reaches_the_library():
    library = ctypes.CDLL(depthwise_kernel_status().library)
    try:
        set_kernel_threads(1)
        assert library.DwThreads() == 1
        set_kernel_threads(0)
        assert library.DwThreads() == os.cpu_count()
    finally:
        set_kernel_threads(0)
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        set_kernel_threads(-1)


# ------------------------------------------------------------------------------------------------- the cache
def test_no_compiler_falls_back_loudly_and_computes_the_same(fresh_status, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*'no-such-compiler-xyz'.*apt-get install g\\+\\+"):
        status = depthwise_kernel_status()
    assert status.library is None and status.name == "mindspore"
    cell = DepthwiseConv2d(3, 3, 2)
    assert not cell.direct
    reference = reference_conv(3, 3, 2, False)
    reference.weight.set_data(cell.weight.value())
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 7, 7)).astype(np.float32))
    np.testing.assert_array_equal(cell(x).asnumpy(), reference(x).asnumpy())
    assert use_direct_depthwise(cell, True) == 0  # nothing to switch on


def test_required_kernels_that_cannot_be_built_are_an_error(fresh_status, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv(dw.ENV_SWITCH, "1")
    with pytest.raises(DirectDepthwiseUnavailableError, match="MINDCV_DIRECT_DEPTHWISE=1.*no C\\+\\+ compiler"):
        DepthwiseConv2d(3, 3)


@pytest.mark.parametrize("value", ["maybe", "2", "of"])
def test_a_mistyped_switch_is_an_error(fresh_status, monkeypatch, value):
    monkeypatch.setenv(dw.ENV_SWITCH, value)
    with pytest.raises(InvalidArgumentError, match=f"MINDCV_DIRECT_DEPTHWISE='{value}'.*0 \\(off\\), 1"):
        depthwise_kernel_status()


def test_switched_off_builds_nothing(fresh_status, monkeypatch):
    monkeypatch.setenv(dw.ENV_SWITCH, "0")
    status = depthwise_kernel_status()
    assert status.name == "mindspore" and "MINDCV_DIRECT_DEPTHWISE=0" in status.reason
    assert not fresh_status.exists()


def test_a_failing_compiler_leaves_nothing_behind(fresh_status, monkeypatch, tmp_path):
    fake = tmp_path / "bad-g++"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n'
        "echo 'error: out of memory' >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.warns(RuntimeWarning, match="failed to build.*out of memory"):
        assert depthwise_kernel_status().library is None
    assert [p.name for p in fresh_status.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_a_compiler_that_builds_wrong_kernels_is_caught(fresh_status, monkeypatch, tmp_path):
    """A library that loads but computes something else never gets used."""
    wrong = tmp_path / "wrong.cc"
    wrong.write_text(open(dw.SOURCE).read().replace("const int64_t P = g.K / 2,", "const int64_t P = g.K / 2 + 1,", 1))
    fake = tmp_path / "wrong-g++"
    # a "compiler" that builds the wrong source in place of the real one
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo wrong 1.0; exit 0; fi\n'
        f'args=""; for a in "$@"; do case "$a" in *depthwise_direct.cc) a="{wrong}";; esac; args="$args $a"; done\n'
        "exec g++ $args\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.warns(RuntimeWarning, match="library built by .* is wrong.*forward differs"):
        assert depthwise_kernel_status().library is None
    assert not any(p.suffix == ".so" for p in fresh_status.iterdir())


def _build_once(fresh_status) -> str:
    status = depthwise_kernel_status()
    assert status.library and status.library.startswith(str(fresh_status))
    dw._reset_for_tests()
    return status.library


def _replace(path: str, content: bytes) -> None:
    """Damage a file the way a disk or another program does: new bytes under the same name (this process has the
    old library mapped; writing into that file in place would crash any process using it, ours included)."""
    with open(path + ".new", "wb") as f:
        f.write(content)
    os.replace(path + ".new", path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "record"])
@pytest.mark.slow
def test_a_damaged_library_is_rebuilt_not_loaded(fresh_status, damage):
    library = _build_once(fresh_status)
    original = open(library, "rb").read()
    if damage == "truncate":
        _replace(library, original[: len(original) // 2])
    elif damage == "garbage":
        _replace(library, bytes(len(original)))
    elif damage == "empty":
        _replace(library, b"")
    else:
        _replace(library + ".checked", b"{not json")
    status = depthwise_kernel_status()
    assert status.library == library
    assert open(library, "rb").read() == original  # rebuilt byte for byte (same source, flags, compiler)


@pytest.mark.slow
def test_a_library_that_crashes_cannot_take_the_process_down(tmp_path):
    source = tmp_path / "crash.c"
    source.write_text("#include <stdlib.h>\nvoid DwSetThreads(int n) { abort(); }\n")
    library = tmp_path / "crash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    problem = dw._self_test(str(library))
    assert problem and "signal 6" in problem


@pytest.mark.slow
def test_a_library_swapped_after_its_check_is_checked_again(fresh_status, tmp_path):
    library = _build_once(fresh_status)
    source = tmp_path / "other.c"
    source.write_text("int DwThreads(void) { return 7; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "other.so"), str(source)], check=True)
    _replace(library, (tmp_path / "other.so").read_bytes())
    assert depthwise_kernel_status().library == library
    assert dw._recorded_check(library) and dw._self_test(library) is None  # the real library is back on disk


def test_an_unusable_cache_folder_falls_back(fresh_status, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINDCV_KERNEL_CACHE", str(blocker / "kernels"))
    with pytest.warns(RuntimeWarning, match="kernel cache .*a-file/kernels is unusable"):
        assert depthwise_kernel_status().library is None


@pytest.mark.slow
def test_two_processes_build_once(tmp_path):
    cache = tmp_path / "kernels"
    script = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        import mindspore as ms
        ms.set_device("CPU")
        from mindcv.kernels import depthwise_kernel_status
        print(depthwise_kernel_status().library)
        """)
    env = dict(os.environ, MINDCV_KERNEL_CACHE=str(cache), PYTHONPATH=REPO)
    env.pop(dw.ENV_SWITCH, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    libraries = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(libraries) == 1 and os.path.isfile(libraries.pop())
    builds = sum(err.count("building the direct depthwise kernels") for _, err in outputs)
    assert builds == 1, outputs


@pytest.mark.slow
def test_folding_batchnorm_keeps_the_direct_kernels(mode):
    from mindcv.models.fuse import fuse_bn

    model, reference = (create_model("mnasnet_small", num_classes=5) for _ in range(2))
    ms.load_param_into_net(reference, {p.name: p for p in model.get_parameters()}, strict_load=True)
    reference.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    expected = reference(x).asnumpy()
    assert fuse_bn(model) > 0
    fused = [cell for _, cell in model.cells_and_names() if isinstance(cell, DepthwiseConv2d)]
    assert fused and all(cell.direct and cell.has_bias for cell in fused)
    np.testing.assert_allclose(model(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_on_an_accelerator_mindspore_kernels_run_without_a_warning(fresh_status, monkeypatch, recwarn):
    real = ms.get_context
    monkeypatch.setattr(dw.ms, "get_context", lambda key: "GPU" if key == "device_target" else real(key))
    status = depthwise_kernel_status()
    assert status.library is None and "device target is GPU" in status.reason and not status.slower
    assert not [w for w in recwarn if "depthwise" in str(w.message)]
    monkeypatch.setenv(dw.ENV_SWITCH, "1")  # asked for explicitly: an error, not a silent fallback
    dw._reset_for_tests()
    with pytest.raises(DirectDepthwiseUnavailableError, match="device target is GPU"):
        depthwise_kernel_status()


@pytest.mark.slow
def test_a_hanging_compiler_is_timed_out(fresh_status, monkeypatch, tmp_path):
    fake = tmp_path / "slow-g++"
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo slow 1.0; exit 0; fi\nexec sleep 60\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setattr(dw, "BUILD_TIMEOUT_S", 1.0)
    with pytest.warns(RuntimeWarning, match="did not finish within 1 s"):
        assert depthwise_kernel_status().library is None
    assert not any(p.suffix == ".so" for p in fresh_status.iterdir())


@pytest.mark.slow
def test_a_mindir_export_never_contains_the_kernels(tmp_path):
    from export import export_model

    model = create_model("mnasnet_small", num_classes=5)
    assert use_direct_depthwise(model, True) > 0
    path = export_model(model, str(tmp_path / "m"), "MINDIR", 32, batch_size=1)
    content = open(path, "rb").read()
    assert b"Conv2D" in content and b"DwFwd" not in content and b"depthwise_direct" not in content


def _selftest_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dw_selftest", dw._SELFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_calls_and_a_forked_child_compute_correctly():
    """The kernels' thread pool runs one job at a time: concurrent callers (MindSpore may launch two kernels at
    once) and a forked child (whose copy of the pool has no threads) must still get exact results, not hang."""
    selftest = _selftest_module()
    library = selftest.Library(depthwise_kernel_status().library)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 16, 23, 19)).astype(np.float32)
    w = rng.standard_normal((16, 1, 5, 5)).astype(np.float32)
    expected = selftest.reference_forward(x, w, 2)
    results, errors = [], []

    def call():
        for _ in range(20):
            y = np.empty_like(expected, dtype=np.float32)
            if library.call("DwFwdS2", [x, w, y]) != 0:
                errors.append("refused")
            results.append(float(np.abs(y - expected).max()))

    workers = [threading.Thread(target=call) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors and len(results) == 80 and max(results) < 1e-4
    pid = os.fork()
    if pid == 0:  # the child: compute, report through the exit code, never return into pytest
        y = np.empty_like(expected, dtype=np.float32)
        ok = library.call("DwFwdS2", [x, w, y]) == 0 and float(np.abs(y - expected).max()) < 1e-4
        os._exit(0 if ok else 1)
    deadline = 60
    while deadline > 0:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
        deadline -= 0.1
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child hung in the kernel's thread pool")
    assert os.waitstatus_to_exitcode(status) == 0
