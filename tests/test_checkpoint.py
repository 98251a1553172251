"""Reading, converting, strictly loading and atomically writing weights."""

import glob
import json
import os

import numpy as np
import pytest
from conftest import one_mode_quick, random_images

import mindspore as ms

from mindcv.io import checkpoint as checkpoint_module
from mindcv.models import (
    CheckpointError,
    CheckpointMismatchError,
    NonFiniteWeightsError,
    create_model,
    find_non_finite,
    load_model_checkpoint,
    save_checkpoint,
)
from mindcv.models.checkpoint import convert_state_dict, detect_layout, read_checkpoint
from mindcv.models.model_factory import read_converted

_NAMES = {"tv:0.5": "mnasnet_050", "timm:mnasnet_small": "mnasnet_small", "upstream:mnasnet_050": "mnasnet_050"}


def _references(fixtures_dir):
    return sorted(glob.glob(os.path.join(fixtures_dir, "*_reference.json")))


def _run_reference(reference_json):
    with open(reference_json) as f:
        meta = json.load(f)
    ref = np.load(reference_json.replace("_reference.json", "_reference.npz"))
    x = np.random.default_rng(int(ref["input_seed"])).standard_normal(
        (int(ref["batch"]), 3, int(ref["size"]), int(ref["size"]))
    )
    weights = os.path.join(os.path.dirname(reference_json), meta["weights"])
    model = create_model(_NAMES[meta["source"]], num_classes=meta["num_classes"], checkpoint_path=weights)
    model.set_train(False)
    return model, model(ms.Tensor(x.astype(np.float32))).asnumpy(), ref["logits"], weights


def test_fixtures_cover_all_three_foreign_layouts(fixtures_dir):
    sources = {json.load(open(p))["source"] for p in _references(fixtures_dir)}
    assert sources == set(_NAMES)


# quick loop: the upstream layout in PyNative mode (each source and mode: plain pytest)
@pytest.mark.parametrize(
    "source", [pytest.param(s, marks=() if s == "upstream:mnasnet_050" else pytest.mark.slow) for s in sorted(_NAMES)]
)
@one_mode_quick()
def test_conversion_matches_source_framework(fixtures_dir, mode, source):
    """Converted weights reproduce the logits the source framework computed (max abs < 1e-4)."""
    stem = {"tv:0.5": "torchvision_mnasnet0.5", "timm:mnasnet_small": "timm_mnasnet_small"}.get(
        source, "mindcv_upstream_mnasnet_050"
    )
    model, out, expected, _ = _run_reference(os.path.join(fixtures_dir, stem + "_reference.json"))
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(expected).max() > 0.1  # the comparison is not trivially between near-zero logits
    expected_eps = 1e-3 if source.startswith("upstream") else 1e-5
    assert model.bn_eps == expected_eps


def test_layout_detection(fixtures_dir):
    layouts = {}
    for reference_json in _references(fixtures_dir):
        meta = json.load(open(reference_json))
        tensors, _ = read_checkpoint(os.path.join(fixtures_dir, meta["weights"]))
        layouts[meta["source"]] = detect_layout(tensors)
    assert layouts == {"tv:0.5": "torchvision", "timm:mnasnet_small": "timm", "upstream:mnasnet_050": "mindcv_upstream"}
    with pytest.raises(CheckpointError, match="unrecognised state-dict layout.*supported layouts"):
        detect_layout(["fc.weight", "fc.bias"])


def test_torchvision_names_map_to_every_parameter(fixtures_dir):
    tensors, _ = read_checkpoint(os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors"))
    native = convert_state_dict(tensors)
    model = create_model("mnasnet_050", num_classes=10)
    assert set(native) == {path for path, _ in model.parameters_and_names()}  # converted names are the cells' paths
    assert not any("num_batches_tracked" in k for k in native)


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
@pytest.mark.slow
def test_native_round_trip_keeps_weights_and_bn_eps(fixtures_dir, tmp_path, ext):
    model, out, _, _ = _run_reference(os.path.join(fixtures_dir, "torchvision_mnasnet0.5_reference.json"))
    path = save_checkpoint(model, str(tmp_path / f"converted{ext}"))
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o400)  # not left read-only
    tensors, meta = read_checkpoint(path)
    # mnasnet_050 names its parameters as upstream does, so the names alone look like upstream's file; the record
    # of the BatchNorm epsilon (1e-5 here, not upstream's 1e-3) marks it as ours and is used
    assert detect_layout(tensors) == "mindcv_upstream" and "features.0.weight" in tensors
    assert read_converted(path)[1:] == ("mindcv", 1e-5)
    assert meta["bn_eps"] == 1e-5 and meta["arch"].startswith("ds_r1_k3_s1_c16_noskip|")
    reloaded = create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    assert reloaded.bn_eps == 1e-5  # taken from the file, so outputs keep matching the source
    reloaded.set_train(False)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(ms.Tensor(x)).asnumpy(), out)


@pytest.mark.slow
def test_fine_tuning_adapts_classifier_and_input_channels(fixtures_dir):
    weights = os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors")
    tensors, _ = read_checkpoint(weights)
    model = create_model("mnasnet_050", num_classes=3, in_channels=1, checkpoint_path=weights)
    params = {k: p.asnumpy() for k, p in model.parameters_and_names()}
    assert params["classifier.weight"].shape == (3, 1280)
    np.testing.assert_allclose(
        params["conv_stem.weight"], tensors["layers.0.weight"].astype(np.float32).sum(1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_array_equal(
        params["blocks.1.0.conv_dw.weight"], tensors["layers.8.0.layers.3.weight"].astype(np.float32)
    )
    model.set_train(False)
    assert model(random_images(1, 64, channels=1)).shape == (1, 3)


@pytest.mark.slow
def test_wrong_architecture_lists_every_problem(fixtures_dir):
    weights = os.path.join(fixtures_dir, "torchvision_mnasnet0.5.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        create_model("mnasnet_100", num_classes=10, checkpoint_path=weights)
    message = str(err.value)
    assert "torchvision_mnasnet0.5.safetensors" in message and "shape mismatches" in message
    assert "conv_stem.weight (checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3))" in message
    with pytest.raises(CheckpointMismatchError, match="missing keys: .*se.conv_reduce"):
        create_model("semnasnet_050", num_classes=10, checkpoint_path=weights)


@pytest.mark.slow
def test_missing_and_unexpected_keys_are_reported(tmp_path):
    model = create_model("mnasnet_050", num_classes=10)
    tensors = {k: p.asnumpy() for k, p in model.parameters_and_names()}
    tensors.pop("blocks.2.1.bn2.gamma")
    tensors["blocks.9.0.conv.weight"] = np.zeros((1,), np.float32)
    path = save_checkpoint(tensors, str(tmp_path / "edited.ckpt"))
    with pytest.raises(CheckpointMismatchError) as err:
        create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    assert err.value.missing == ["blocks.2.1.bn2.gamma"] and err.value.unexpected == ["blocks.9.0.conv.weight"]


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors", ".pth"])
def test_truncated_and_garbage_files_name_the_file(tmp_path, ext, fixtures_dir):
    src = {
        ".ckpt": "mindcv_upstream_mnasnet_050.ckpt",
        ".safetensors": "timm_mnasnet_small.safetensors",
        ".pth": "torch_tensors_zip.pt",
    }[ext]
    data = open(os.path.join(fixtures_dir, src), "rb").read()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cut{ext}"):
        create_model("mnasnet_050", checkpoint_path=str(cut))
    garbage = tmp_path / f"garbage{ext}"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CheckpointError, match=f"garbage{ext}"):
        create_model("mnasnet_050", checkpoint_path=str(garbage))


def test_missing_empty_and_unsupported_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "nope.ckpt"))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "empty.ckpt"))
    (tmp_path / "w.h5").write_bytes(b"123")
    with pytest.raises(CheckpointError, match=r"unsupported extension '.h5'; valid: .ckpt, .safetensors"):
        create_model("mnasnet_050", checkpoint_path=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match="checkpoint_path is empty"):
        load_model_checkpoint(create_model("mnasnet_050"), "")
    with pytest.raises(ValueError, match="either pretrained=True or checkpoint_path"):
        create_model("mnasnet_050", pretrained=True, checkpoint_path="x.ckpt")


@pytest.mark.slow
def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = create_model("mnasnet_050", num_classes=10)
    path = save_checkpoint(model, str(tmp_path / "best.ckpt"))
    before = open(path, "rb").read()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(create_model("mnasnet_050", num_classes=10), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["best.ckpt"]  # no temporary file left behind


@pytest.mark.slow
def test_ema_weights_are_selectable(tmp_path):
    model = create_model("mnasnet_050", num_classes=10)
    online = {k: p.asnumpy() for k, p in model.parameters_and_names()}
    ema = {f"ema.{k}": v + 1.0 for k, v in online.items()}
    path = save_checkpoint({**online, **ema}, str(tmp_path / "with_ema.ckpt"))
    a = create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    b = create_model("mnasnet_050", num_classes=10, checkpoint_path=path, ema=True)
    pa = {k: p.asnumpy() for k, p in a.parameters_and_names()}
    pb = {k: p.asnumpy() for k, p in b.parameters_and_names()}
    np.testing.assert_array_equal(pa["conv_stem.weight"], online["conv_stem.weight"])
    np.testing.assert_array_equal(pb["conv_stem.weight"], online["conv_stem.weight"] + 1.0)
    with pytest.raises(CheckpointError, match="no 'ema.' parameters"):
        create_model(
            "mnasnet_050",
            num_classes=10,
            checkpoint_path=save_checkpoint(online, str(tmp_path / "plain.ckpt")),
            ema=True,
        )


# ---------------------------------------------------------------------------------------------------
# hardening: every reader failure is a CheckpointError naming the file; crafted files never run code,
# crash the interpreter or load silently wrong values; NaN/Inf weights are refused at load


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        OverflowError("int too large"),
        IndexError("index out of range"),
        AttributeError("no attribute"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        RecursionError("maximum recursion depth exceeded"),
        TypeError("not callable"),
        __import__("zipfile").BadZipFile("bad zip"),
        __import__("struct").error("unpack requires a buffer"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("ext", [".ckpt", ".safetensors", ".pth"])
def test_any_reader_failure_is_a_checkpoint_error_naming_the_file(tmp_path, monkeypatch, error, ext):
    reader = {".ckpt": "_read_ms_ckpt", ".safetensors": "_read_safetensors", ".pth": "load_torch_file"}[ext]

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint_module, reader, fail)
    path = tmp_path / f"weights{ext}"
    path.write_bytes(b"x" * 64)
    with pytest.raises(CheckpointError, match=f"weights{ext}.*{type(error).__name__}") as err:
        read_checkpoint(str(path))
    assert err.value.__cause__ is error


@pytest.mark.parametrize("meta", ["{not json", "[1, 2]", '"a string"', "[" * 100000 + "]" * 100000])
@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
def test_a_bad_mindcv_meta_is_a_checkpoint_error(tmp_path, ext, meta):
    path = str(tmp_path / f"meta{ext}")
    tensors = {"w": np.ones(2, np.float32)}
    if ext == ".ckpt":
        ms.save_checkpoint([{"name": "w", "data": ms.Tensor(tensors["w"])}], path, append_dict={"mindcv_meta": meta})
    else:
        from safetensors.numpy import save_file

        save_file(tensors, path, metadata={"mindcv_meta": meta})
    with pytest.raises(CheckpointError, match=f"meta{ext}.*'mindcv_meta' is (not valid JSON|a JSON (list|str))"):
        read_checkpoint(path)


def _ckpt_bytes(values):
    from mindspore.train.checkpoint_pb2 import Checkpoint

    proto = Checkpoint()
    for tag, dims, type_name, content in values:
        value = proto.value.add()
        value.tag = tag
        value.tensor.dims.extend(dims)
        value.tensor.tensor_type = type_name
        value.tensor.tensor_content = content
    return proto.SerializeToString()


@pytest.mark.parametrize(
    "dims, content, problem",
    [
        ([3], np.arange(100, dtype=np.float32).tobytes(), "holds 400 bytes but dims \\[3\\] of Float32 need 12"),
        ([100], np.arange(3, dtype=np.float32).tobytes(), "holds 12 bytes but dims \\[100\\] of Float32 need 400"),
        ([-1], b"\0" * 4, "invalid dims"),
        ([2**40, 2**40], b"", "dims .* elements, more than"),
    ],
    ids=["content longer than dims", "content shorter than dims", "negative dims", "huge dims"],
)
def test_a_ckpt_whose_bytes_disagree_with_its_dims_is_refused(tmp_path, dims, content, problem):
    """MindSpore 2.10's load_checkpoint copies every byte into a buffer sized by dims (heap overflow, abort) or
    zero-fills the rest; read_checkpoint checks each element first and never hands such a file to MindSpore."""
    path = tmp_path / "crafted.ckpt"
    path.write_bytes(_ckpt_bytes([("w", dims, "Float32", content)]))
    with pytest.raises(CheckpointError, match=f"crafted.ckpt.*element 'w': {problem}"):
        read_checkpoint(str(path))


def test_ckpt_reading_matches_mindspore_for_every_dtype_chunks_and_crc(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u8": np.arange(6, dtype=np.uint8),
        "i16": np.arange(4, dtype=np.int16),
        "u16": np.arange(3, dtype=np.uint16),
        "i32": np.arange(4, dtype=np.int32),
        "i64": np.int64(9),
        "b": np.array([True, False]),
        "s": np.float32(1.5),
    }
    items = [{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()]
    items.append({"name": "bf16", "data": ms.Tensor(np.array([1.5, -2.0], np.float32), ms.bfloat16)})
    plain, with_crc = str(tmp_path / "all.ckpt"), str(tmp_path / "crc.ckpt")
    ms.save_checkpoint(items, plain, append_dict={"mindcv_meta": '{"x": "\\u00e9"}'})
    ms.save_checkpoint(items, with_crc, crc_check=True)
    # a tensor split into chunks, as MindSpore writes tensors above 512 MB
    data = np.arange(10, dtype=np.float32)
    chunked = str(tmp_path / "chunked.ckpt")
    with open(chunked, "wb") as f:
        f.write(
            _ckpt_bytes([("c", [2, 5], "Float32", data[:4].tobytes()), ("c", [2, 5], "Float32", data[4:].tobytes())])
        )
    for path in (
        plain,
        with_crc,
        chunked,
        os.path.join(os.path.dirname(__file__), "fixtures", "mindcv_upstream_mnasnet_050.ckpt"),
    ):
        ours, meta = read_checkpoint(path)
        theirs = {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if not isinstance(v, str)}
        assert list(ours) == list(theirs), path
        for k in ours:
            assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, (path, k)
            assert ours[k].tobytes() == theirs[k].tobytes() and ours[k].flags.writeable, (path, k)
    assert read_checkpoint(plain)[1] == {"x": "é"}
    bad_crc = bytearray(open(with_crc, "rb").read())
    bad_crc[-1] ^= 1
    (tmp_path / "bad_crc.ckpt").write_bytes(bytes(bad_crc))
    with pytest.raises(CheckpointError, match="bad_crc.ckpt' fails its CRC check"):
        read_checkpoint(str(tmp_path / "bad_crc.ckpt"))


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda h: h["a"].update(data_offsets=[0, 2**62]), "tensor 'a': data offsets .* lie outside the file"),
        (lambda h: h["b"].update(data_offsets=[0, 8]), "overlap"),
        (lambda h: h["a"].update(dtype="F64"), "tensor 'a': 24 bytes do not hold shape \\[2, 3\\] of F64"),
        (lambda h: h["a"].update(shape=[2**40, 0]), "tensor 'a': 24 bytes do not hold"),
        (lambda h: h["a"].update(dtype="X9"), "unsupported dtype"),
        (lambda h: h.update(__metadata__={"m": 3}), "__metadata__ is not a map of strings"),
    ],
    ids=["huge offset", "overlapping", "wrong dtype size", "zero dim huge shape", "unknown dtype", "bad metadata"],
)
def test_crafted_safetensors_headers_are_refused(tmp_path, edit, problem):
    import struct

    from safetensors.numpy import save_file

    path = str(tmp_path / "crafted.safetensors")
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float16)}, path)
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    head = json.dumps(header).encode()
    (tmp_path / "crafted.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n :])
    with pytest.raises(CheckpointError, match=f"crafted.safetensors.*{problem}"):
        read_checkpoint(path)


def test_a_torch_file_with_a_payload_never_runs_through_create_model(tmp_path):
    """create_model(checkpoint_path=...) is how train.py / validate.py / infer.py / mindcv-convert read weights."""
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{marker}'",)

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError, match="evil.pth"):
        create_model("mnasnet_050", checkpoint_path=str(path))
    assert not marker.exists()


def test_find_non_finite_counts_floating_tensors_only():
    tensors = {
        "ok": np.ones(3, np.float32),
        "nan_inf": np.array([1.0, np.nan, np.inf, -np.inf], np.float32),
        "ints": np.array([7, -1], np.int64),
        "half": np.array([np.nan], np.float16),
        "bf16": ms.Tensor(np.array([np.inf, 1.0], np.float32), ms.bfloat16).asnumpy(),
        "flags": np.array([True, False]),
    }
    assert find_non_finite(tensors) == [("nan_inf", 3), ("half", 1), ("bf16", 1)]
    assert find_non_finite({}) == []


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
@pytest.mark.slow
def test_non_finite_weights_are_refused_at_load(tmp_path, ext):
    """MindSpore's CPU ReLU maps NaN to 0: a NaN network can still output finite logits, so refuse at load."""
    model = create_model("mnasnet_050", num_classes=10)
    tensors = model_state = {k: p.asnumpy() for k, p in model.parameters_and_names()}
    tensors["blocks.2.1.conv_dw.weight"] = tensors["blocks.2.1.conv_dw.weight"].copy()
    tensors["blocks.2.1.conv_dw.weight"][0, 0, 0, 0] = np.nan
    path = save_checkpoint(tensors, str(tmp_path / f"nan{ext}"))
    with pytest.raises(
        NonFiniteWeightsError, match=f"nan{ext}.*blocks.2.1.conv_dw.weight \\(1 non-finite values\\)"
    ) as err:
        create_model("mnasnet_050", num_classes=10, checkpoint_path=path)
    assert err.value.tensors == [("blocks.2.1.conv_dw.weight", 1)]
    assert isinstance(err.value, CheckpointError)
    model_state["classifier.bias"] = np.full_like(model_state["classifier.bias"], np.inf)
    with pytest.raises(
        NonFiniteWeightsError, match="2 tensor\\(s\\): blocks.2.1.conv_dw.weight .*, classifier.bias \\(10"
    ):
        load_model_checkpoint(model, save_checkpoint(model_state, str(tmp_path / f"inf{ext}")))
    # the model is left as it was
    np.testing.assert_array_equal(
        model.classifier.bias.asnumpy(), create_model("mnasnet_050", num_classes=10).classifier.bias.asnumpy()
    )


def _native_safetensors(path, mutate, metadata=None):
    from safetensors.numpy import save_file

    from mindcv.models.checkpoint import model_state_dict

    # named after the cells (param_layout="blocks"), as this package wrote mnasnet_050 before it took upstream's names:
    # those files load into today's mnasnet_050 too
    state = model_state_dict(create_model("mnasnet_050", num_classes=3, param_layout="blocks"))
    mutate(state)
    save_file(state, str(path), metadata=metadata)
    return str(path)


@pytest.mark.slow
def test_a_float64_value_that_overflows_float32_is_refused(tmp_path):
    """1e300 is finite in the file and infinite in the float32 model: it is checked after the cast."""

    def overflow(state):
        state["conv_stem.weight"] = state["conv_stem.weight"].astype(np.float64)
        state["conv_stem.weight"].flat[0] = 1e300

    path = _native_safetensors(tmp_path / "f64.safetensors", overflow)
    with pytest.raises(NonFiniteWeightsError, match=r"conv_stem\.weight \(1 non-finite values\)"):
        create_model("mnasnet_050", num_classes=3, checkpoint_path=path)


@pytest.mark.parametrize("prefix", ["module.", "network.module.", "module.module.", "_backbone.network."])
def test_a_key_with_and_without_a_wrapper_prefix_is_refused(tmp_path, prefix):
    def both(state):
        state[prefix + "conv_stem.weight"] = state["conv_stem.weight"] + 5.0

    path = _native_safetensors(tmp_path / "both.safetensors", both)
    with pytest.raises(CheckpointError, match=r"both.safetensors: the checkpoint holds 'conv_stem.weight' twice"):
        create_model("mnasnet_050", num_classes=3, checkpoint_path=path)


@pytest.mark.parametrize("shape", [(0, 1280), (3,)])
def test_a_classifier_that_is_not_one_is_refused_not_replaced(tmp_path, shape):
    """A (0, 1280) or 1-D classifier used to make infer/validate/export swap in a random head, exit 0."""
    from mindcv.models.model_factory import weights_num_classes

    def broken(state):
        state["classifier.weight"] = np.zeros(shape, np.float32)
        state["classifier.bias"] = np.zeros(shape[:1], np.float32)

    path = _native_safetensors(tmp_path / "head.safetensors", broken)
    with pytest.raises(CheckpointError, match=r"classifier.weight has shape"):
        weights_num_classes("mnasnet_050", path)


@pytest.mark.parametrize("eps", ["abc", [1], float("nan"), float("inf"), 0, -1e-3, 1.5, True, 1e-320])
@pytest.mark.slow
def test_a_recorded_bn_eps_that_is_not_an_epsilon_is_refused(tmp_path, eps):
    meta = {"mindcv_meta": json.dumps({"bn_eps": eps})}
    path = _native_safetensors(tmp_path / "eps.safetensors", lambda state: None, meta)
    with pytest.raises(CheckpointError, match=r"eps.safetensors: the checkpoint's recorded bn_eps .* not a number"):
        create_model("mnasnet_050", num_classes=3, checkpoint_path=path)


@pytest.mark.parametrize(
    "meta, problem",
    [
        ({"eval_transform": [1, 2]}, "'eval_transform' must be an object"),
        (
            {"eval_transform": {"image_resize": "big"}},
            r"'eval_transform.image_resize' must be an integer in \[1, 8192\]",
        ),
        ({"eval_transform": {"image_resize": -5}}, r"'eval_transform.image_resize' must be an integer in \[1, 8192\]"),
        ({"eval_transform": {"crop_pct": 7}}, r"'eval_transform.crop_pct' must be a number in \(0, 1\]"),
        ({"eval_transform": {"std": [0, 1, 1]}}, "'eval_transform.std' must be numbers > 0"),
        ({"eval_transform": {"rm_rf": 1}}, "unknown 'eval_transform' entry 'rm_rf'"),
        ({"num_classes": 0}, "'num_classes' must be an integer >= 1"),
        ({"class_names": "abc"}, "'class_names' must be a list of distinct strings"),
    ],
)
@pytest.mark.slow
def test_metadata_the_tools_rely_on_is_validated_at_read_time(tmp_path, meta, problem):
    """A crafted eval_transform used to end in a TypeError traceback in validate.py and infer.py."""
    path = _native_safetensors(tmp_path / "meta.safetensors", lambda state: None, {"mindcv_meta": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"meta.safetensors': invalid metadata: " + problem):
        read_checkpoint(path)


# -- CheckpointManager.save_ckpoint: upstream mindcv's API (its tests/modules/test_utils.py) --------------------------


def _tiny_net(seed: int = 0):
    from mindspore import nn

    ms.set_seed(seed)
    return nn.Dense(3, 2)


@pytest.mark.parametrize("policy", ["top_k", "latest_k"])
def test_save_ckpoint_as_upstreams_test_uses_it(tmp_path, monkeypatch, policy):
    """Upstream's test: three saves with num_ckpt=2 and a Tensor metric return a list of 2 kept checkpoints."""
    from mindcv.utils import CheckpointManager

    monkeypatch.chdir(tmp_path)
    manager = CheckpointManager(ckpt_save_policy=policy)
    net = _tiny_net()
    for t, acc in enumerate([0.25, 0.5, 0.75]):
        save_path = os.path.join("./" + f"network_{t + 1}.ckpt")
        kept = manager.save_ckpoint(net, num_ckpt=2, metric=ms.Tensor(acc, ms.float32), save_path=save_path)
    assert len(kept) == 2
    assert sorted(os.listdir(".")) == ["network_2.ckpt", "network_3.ckpt"]  # and no ./ckpt folder was created
    tensors, _ = read_checkpoint("network_3.ckpt")
    assert np.array_equal(tensors["weight"], net.weight.asnumpy())


def test_save_ckpoint_top_k_keeps_the_best_k_best_first(tmp_path):
    from mindcv.utils import CheckpointManager

    manager = CheckpointManager("top_k")
    net = _tiny_net()

    def save(name, metric):
        return manager.save_ckpoint(net, num_ckpt=2, metric=metric, save_path=str(tmp_path / name))

    assert save("a.ckpt", 0.5) == [(str(tmp_path / "a.ckpt"), 0.5)]
    assert save("b.ckpt", np.float32(0.7)) == [
        (str(tmp_path / "b.ckpt"), pytest.approx(0.7)),
        (str(tmp_path / "a.ckpt"), 0.5),
    ]
    # not better than the worst kept (a tie included): not written, nothing deleted
    assert [p for p, _ in save("c.ckpt", 0.5)] == [str(tmp_path / "b.ckpt"), str(tmp_path / "a.ckpt")]
    assert not (tmp_path / "c.ckpt").exists()
    # better than the worst: written, the worst deleted
    kept = save("d.ckpt", 0.9)
    assert [p for p, _ in kept] == [str(tmp_path / "d.ckpt"), str(tmp_path / "b.ckpt")]
    assert sorted(os.listdir(tmp_path)) == ["b.ckpt", "d.ckpt"]
    with pytest.raises(ValueError, match="'top_k' needs a metric"):
        manager.save_ckpoint(net, num_ckpt=2, save_path=str(tmp_path / "e.ckpt"))


def test_save_ckpoint_latest_k_and_none(tmp_path):
    from mindcv.utils import CheckpointManager

    latest = CheckpointManager("latest_k")
    net = _tiny_net()
    for i in range(4):
        kept = latest.save_ckpoint(net, num_ckpt=3, save_path=str(tmp_path / f"l{i}.ckpt"))
    assert kept == [str(tmp_path / f"l{i}.ckpt") for i in (1, 2, 3)]
    # saving to a kept path again replaces it instead of counting twice
    assert latest.save_ckpoint(net, num_ckpt=3, save_path=str(tmp_path / "l3.ckpt")) == kept
    assert sorted(os.listdir(tmp_path)) == ["l1.ckpt", "l2.ckpt", "l3.ckpt"]

    keep_all = CheckpointManager()  # upstream's default policy None: every file is kept, nothing returned
    for i in range(3):
        assert keep_all.save_ckpoint(net, num_ckpt=1, save_path=str(tmp_path / f"n{i}.ckpt")) is None
    assert all((tmp_path / f"n{i}.ckpt").exists() for i in range(3))
    with pytest.raises(ValueError, match="num_ckpt must be an integer >= 1, got 0"):
        latest.save_ckpoint(net, num_ckpt=0, save_path=str(tmp_path / "x.ckpt"))


def test_save_ckpoint_refuses_non_finite_weights_and_keeps_the_list(tmp_path):
    from mindcv.utils import CheckpointManager
    from mindcv.utils.checkpoint_manager import CheckpointSaveError

    manager = CheckpointManager("latest_k")
    net = _tiny_net()
    good = net.weight.asnumpy()
    manager.save_ckpoint(net, num_ckpt=1, save_path=str(tmp_path / "good.ckpt"))
    net.weight.set_data(ms.Tensor(np.full((2, 3), np.nan, np.float32)))
    with pytest.raises(CheckpointSaveError, match="non-finite weights in weight"):
        manager.save_ckpoint(net, num_ckpt=1, save_path=str(tmp_path / "bad.ckpt"))
    assert os.listdir(tmp_path) == ["good.ckpt"]  # the last good file is not rotated out by a failed save
    net.weight.set_data(ms.Tensor(good))
    assert manager.save_ckpoint(net, num_ckpt=1, save_path=str(tmp_path / "next.ckpt")) == [str(tmp_path / "next.ckpt")]
    assert os.listdir(tmp_path) == ["next.ckpt"]


# -- auto_mapping: upstream's fuzzy renaming is always satisfied by the exact layout mapping -----------------------


@pytest.mark.slow
def test_auto_mapping_true_loads_upstream_names_exactly_and_never_guesses(fixtures_dir, tmp_path):
    """The upstream file's names (``features.0.weight`` ...) differ from this package's; both values map them."""
    path = os.path.join(fixtures_dir, "mindcv_upstream_mnasnet_050.ckpt")
    tensors, _ = read_checkpoint(path)
    assert "features.0.weight" in tensors and "conv_stem.weight" not in tensors
    mapped = create_model("mnasnet_050", num_classes=10, checkpoint_path=path, auto_mapping=True)
    plain = create_model("mnasnet_050", num_classes=10, checkpoint_path=path, auto_mapping=False)
    into = create_model("mnasnet_050", num_classes=10)
    load_model_checkpoint(into, path, auto_mapping=True)
    expected = convert_state_dict(tensors, detect_layout(tensors))
    for model in (mapped, plain, into):
        params = {k: p.asnumpy() for k, p in model.parameters_and_names()}
        assert params.keys() == expected.keys()
        assert all(np.array_equal(params[k], expected[k]) for k in expected)

    renamed = {f"block{i}.w": v for i, v in enumerate(tensors.values())}  # what a similarity match would guess at
    guessed = str(tmp_path / "renamed.ckpt")
    save_checkpoint(renamed, guessed)
    with pytest.raises(CheckpointError, match="unrecognised state-dict layout"):
        create_model("mnasnet_050", num_classes=10, checkpoint_path=guessed, auto_mapping=True)
