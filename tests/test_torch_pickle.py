"""The torch-free reader of torch.save files (zip and legacy formats), including crafted and malicious files.

The files are assembled by hand (no torch) with the helpers of ``test_fuzz_checkpoint.py``; each test
below is one exact case of the adversarial review, deterministic. The random mutations are in that file.
"""

import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest
from test_fuzz_checkpoint import (
    LEGACY_MAGIC,
    OD,
    SYS_INFO,
    Call,
    G,
    asm,
    legacy_pickles,
    legacy_pid,
    payloads,
    pickle_ops,
    pickled,
    read_fixture,
    rezip,
    tensor,
    torch_legacy,
    torch_zip,
    zip_members,
    zip_pid,
)

from mindcv.io.torch_pickle import TorchFileError, load_torch_file


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_every_dtype_and_layout(fixtures_dir, fmt):
    state = load_torch_file(os.path.join(fixtures_dir, f"torch_tensors_{fmt}.pt"))
    expected = np.load(os.path.join(fixtures_dir, "torch_tensors_expected.npz"))
    assert list(state) == list(expected.files)
    for key in expected.files:
        got = state[key]
        if key == "bfloat16":
            got = got.astype(np.float32)
        assert got.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)


def test_refuses_arbitrary_objects(fixtures_dir):
    with pytest.raises(TorchFileError, match="refusing to unpickle 'torch.nn.modules.activation.ReLU'"):
        load_torch_file(os.path.join(fixtures_dir, "torch_unsafe_object.pt"))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file_is_a_clear_error(fixtures_dir, tmp_path, fmt):
    src = os.path.join(fixtures_dir, f"torch_tensors_{fmt}.pt")
    dst = tmp_path / "cut.pt"
    data = open(src, "rb").read()
    dst.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TorchFileError, match="cut.pt"):
        load_torch_file(str(dst))


def test_not_a_torch_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(TorchFileError, match="junk.pth"):
        load_torch_file(str(junk))


# ---------------------------------------------------------------------------------------------------
# code execution
def _write(tmp_path, data: bytes, name: str = "crafted.pth") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _payload(marker, name: str) -> bytes:
    return dict(payloads(str(marker)))[name]


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4], ids=["magic", "protocol", "sys_info", "object", "storage_keys"])
@pytest.mark.parametrize("payload", ["GLOBAL os.system REDUCE", "STACK_GLOBAL posix.system REDUCE", "INST os.system"])
def test_a_payload_in_any_legacy_pickle_never_runs(tmp_path, which, payload):
    """The legacy header objects were unpickled with the unrestricted pickle.load: code ran before any check."""
    data = read_fixture("torch_tensors_legacy.pt")
    marker = tmp_path / "PWNED"
    start, end = legacy_pickles(data)[which]
    pkl = data[start:end]
    crafted = data[:start] + pkl[:2] + _payload(marker, payload) + pkl[2:] + data[end:]  # after PROTO
    with pytest.raises(TorchFileError, match="crafted.pth"):
        load_torch_file(_write(tmp_path, crafted))
    assert not marker.exists()


def test_a_plain_pickle_with_a_payload_is_refused_before_anything_runs(tmp_path):
    """Not a torch file at all: the magic number must not be read with pickle.load."""
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{marker}'",)

    for protocol in (2, 4, 5):
        with pytest.raises(TorchFileError, match="refusing to unpickle 'posix.system'|opcode GLOBAL|STACK_GLOBAL"):
            load_torch_file(_write(tmp_path, pickle.dumps(Evil(), protocol=protocol)))
        assert not marker.exists()


def test_a_trojaned_copy_of_a_real_file_is_refused(tmp_path):
    """A real file with a payload added to a header object still held the right weights: it used to load."""
    data = read_fixture("torch_tensors_legacy.pt")
    marker = tmp_path / "PWNED"
    (m0, m1), _protocol, (s0, s1) = legacy_pickles(data)[:3]
    # prepended: the magic-number pickle runs a payload, pops it, then returns the real magic number
    prepended = data[:2] + _payload(marker, "STACK_GLOBAL os.system REDUCE") + data[2:]
    # appended: the system-info dict gets one more entry whose value is the payload's result
    sys_info = data[s0:s1]
    extra = asm("pwn") + _payload(marker, "GLOBAL os.system REDUCE")[:-1] + b"s"  # SETITEM instead of POP
    appended = data[:s0] + sys_info[:-1] + extra + sys_info[-1:] + data[s1:]
    for crafted in (prepended, appended):
        with pytest.raises(TorchFileError, match="crafted.pth.*(GLOBAL|STACK_GLOBAL|REDUCE)"):
            load_torch_file(_write(tmp_path, crafted))
        assert not marker.exists()
    # the zip format too: a payload at the start of data.pkl, bypassing the GLOBAL scan with STACK_GLOBAL
    members = zip_members(read_fixture("torch_tensors_zip.pt"))
    pkl_name, pkl = members[0]
    members[0] = (pkl_name, pkl[:2] + _payload(marker, "STACK_GLOBAL subprocess.Popen NEWOBJ") + pkl[2:])
    with pytest.raises(TorchFileError, match="NEWOBJ"):
        load_torch_file(_write(tmp_path, rezip(members)))
    members[0] = (pkl_name, pkl[:2] + _payload(marker, "STACK_GLOBAL builtins.exec REDUCE") + pkl[2:])
    with pytest.raises(TorchFileError, match="refusing to unpickle 'builtins.exec'"):
        load_torch_file(_write(tmp_path, rezip(members)))
    assert not marker.exists()


def test_the_unpickled_objects_refuse_build(tmp_path):
    """BUILD could otherwise rewrite a storage type's item size or a tensor record after its checks."""
    build = asm(G("torch", "FloatStorage")) + asm({"itemsize": 0}) + b"b0"
    obj = pickled(OD([("w", tensor(zip_pid("FloatStorage", "0", 4), 0, (4,), (1,)))]))
    with pytest.raises(TorchFileError, match="set the state of a StorageType"):
        load_torch_file(_write(tmp_path, torch_zip(obj[:2] + build + obj[2:], {"0": bytes(16)})))


def test_header_pickles_may_not_reference_anything(tmp_path):
    data = read_fixture("torch_tensors_legacy.pt")
    crafted = pickled(Call(G("collections", "OrderedDict"))) + data[legacy_pickles(data)[0][1] :]
    with pytest.raises(TorchFileError, match="magic number pickle holds opcode GLOBAL"):
        load_torch_file(_write(tmp_path, crafted))


# ---------------------------------------------------------------------------------------------------
# tensor records checked against their storage
def _zip_with(record, storage=bytes(96), key="0") -> bytes:
    return torch_zip(pickled(OD([("layer.weight", record)])), {key: storage})


def test_a_negative_stride_is_refused(tmp_path):
    """It used to reach numpy's as_strided and kill the interpreter (SIGSEGV)."""
    record = tensor(zip_pid("FloatStorage", "0", 24), 23, (4, 6), (-6, -1))
    with pytest.raises(TorchFileError, match=r"crafted.pth.*'layer.weight' \(storage '0'\): strides .* >= 0"):
        load_torch_file(_write(tmp_path, _zip_with(record)))


def test_a_negative_offset_is_refused(tmp_path):
    """It used to return the wrong values silently (numpy slicing from the end)."""
    record = tensor(zip_pid("FloatStorage", "0", 24), -6, (6,), (1,))
    with pytest.raises(TorchFileError, match=r"'layer.weight' \(storage '0'\): storage offset -6 is not an integer"):
        load_torch_file(_write(tmp_path, _zip_with(record)))


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20), (2**31, 1)])
def test_a_zero_stride_over_a_huge_shape_is_refused_before_allocating(tmp_path, shape):
    """It used to raise MemoryError (or take all memory) instead of a checkpoint error."""
    record = tensor(zip_pid("FloatStorage", "0", 24), 0, shape, (0,) * len(shape))
    path = _write(tmp_path, _zip_with(record))
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match="'layer.weight'.*(more than|repeats)"):
            load_torch_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20


def test_a_small_broadcast_tensor_still_loads(tmp_path):
    """Zero strides are legal (an expanded tensor); only a huge repetition is refused."""
    record = tensor(zip_pid("FloatStorage", "0", 4), 0, (3, 4), (0, 1))
    state = load_torch_file(_write(tmp_path, _zip_with(record, np.arange(4, dtype="<f4").tobytes())))
    np.testing.assert_array_equal(state["layer.weight"], np.tile(np.arange(4, dtype=np.float32), (3, 1)))


@pytest.mark.parametrize(
    "offset, shape, stride, problem",
    [
        (20, (2, 3), (3, 1), "reach element 25 of a storage of 24"),
        (0, (2, 3), (3,), "differ in length"),
        (0, (2, -3), (3, 1), "shape .* integers >= 0"),
        (0, (2.0, 3), (3, 1), "shape .* integers >= 0"),
        (True, (2, 3), (3, 1), "storage offset True"),
        (0, [1] * 40, [1] * 40, "40 dimensions"),
        (25, (0,), (1,), "past the end"),
    ],
)
def test_out_of_range_records_name_the_tensor(tmp_path, offset, shape, stride, problem):
    record = tensor(zip_pid("FloatStorage", "0", 24), offset, shape, stride)
    with pytest.raises(TorchFileError, match=f"'layer.weight' \\(storage '0'\\).*{problem}"):
        load_torch_file(_write(tmp_path, _zip_with(record)))


@pytest.mark.parametrize(
    "pid, problem",
    [
        (zip_pid("FloatStorage", "0", 25), "holds 96 bytes, 100 were declared"),
        (zip_pid("FloatStorage", "0", -1), "element count -1"),
        (zip_pid("FloatStorage", "../0", 24), "storage key '../0' is not a valid string"),
        (zip_pid("FloatStorage", 0, 24), "storage key 0"),
        (zip_pid("UntypedStorage", "0", 24), "refusing to unpickle 'torch.UntypedStorage'"),
        (("storage", G("torch", "FloatStorage"), "0", "cpu"), "not a 5-tuple"),
        (("module", G("torch", "FloatStorage"), "0", "cpu", 24), "unsupported persistent id tag 'module'"),
        (zip_pid("FloatStorage", "1", 24), "no record 'archive/data/1'"),
    ],
)
def test_persistent_ids_are_validated(tmp_path, pid, problem):
    with pytest.raises(TorchFileError, match=problem):
        load_torch_file(_write(tmp_path, _zip_with(tensor(pid, 0, (2,), (1,)))))


@pytest.mark.slow
def test_tensors_aliasing_one_storage_cannot_blow_up_memory(tmp_path):
    pid = zip_pid("FloatStorage", "0", 2**20)
    records = [(f"t{i}", tensor(pid, 0, (2**20,), (1,))) for i in range(200)]  # 200 x 4 MiB from one 4 MiB storage
    data = torch_zip(pickled(OD(records)), {"0": bytes(4 * 2**20)})
    with pytest.raises(TorchFileError, match="far more memory than its storages"):
        load_torch_file(_write(tmp_path, data))


# ---------------------------------------------------------------------------------------------------
# the legacy format's storages
def _legacy(records, storages, **kwargs) -> bytes:
    return torch_legacy(pickled(OD(records)), storages, **kwargs)


def test_a_legacy_numel_larger_than_the_file_is_refused_before_reading(tmp_path):
    record = tensor(legacy_pid("FloatStorage", "7", 4), 0, (4,), (1,))
    data = bytearray(_legacy([("w", record)], [("7", 4, bytes(16))]))
    data[-24:-16] = struct.pack("<q", 2**60)  # the element count written before the storage bytes
    with pytest.raises(TorchFileError, match="storage '7': element count 1152921504606846976 does not fit"):
        load_torch_file(_write(tmp_path, bytes(data), "legacy.pt"))
    data[-24:-16] = struct.pack("<q", -5)
    with pytest.raises(TorchFileError, match="storage '7': element count -5"):
        load_torch_file(_write(tmp_path, bytes(data), "legacy.pt"))
    huge = tensor(legacy_pid("FloatStorage", "7", 2**20), 0, (4,), (1,))  # declared: 4 MiB in a tiny file
    with pytest.raises(TorchFileError, match="do not fit in a"):
        load_torch_file(_write(tmp_path, _legacy([("w", huge)], [("7", 4, bytes(16))]), "legacy.pt"))


def test_legacy_views_are_checked_and_read(tmp_path):
    values = np.arange(10, dtype="<f4")
    good = tensor(legacy_pid("FloatStorage", "1", 10, ("v", 4, 3)), 1, (2,), (1,))
    state = load_torch_file(_write(tmp_path, _legacy([("w", good)], [("1", 10, values.tobytes())]), "legacy.pt"))
    np.testing.assert_array_equal(state["w"], [5.0, 6.0])
    outside = tensor(legacy_pid("FloatStorage", "1", 10, ("v", 8, 3)), 0, (2,), (1,))
    with pytest.raises(TorchFileError, match=r"view 'v' \(offset 8, size 3\) lies outside storage '1'"):
        load_torch_file(_write(tmp_path, _legacy([("w", outside)], [("1", 10, values.tobytes())]), "legacy.pt"))
    past_view = tensor(legacy_pid("FloatStorage", "1", 10, ("v", 4, 3)), 2, (2,), (1,))
    with pytest.raises(TorchFileError, match="reach element 3 of a storage of 3"):
        load_torch_file(_write(tmp_path, _legacy([("w", past_view)], [("1", 10, values.tobytes())]), "legacy.pt"))


@pytest.mark.parametrize(
    "keys, problem",
    [
        ([7], "not a list of strings"),
        ("7", "not a list of strings"),
        (["7", "7"], "names a storage twice"),
        (["8"], "which no tensor uses"),
        ([], "storage '7' has no data in the file"),
    ],
)
def test_the_legacy_storage_key_list_is_validated(tmp_path, keys, problem):
    record = tensor(legacy_pid("FloatStorage", "7", 4), 0, (4,), (1,))
    storages = [("7", 4, bytes(16))] if keys and keys[0] == "7" else []
    with pytest.raises(TorchFileError, match=problem):
        load_torch_file(_write(tmp_path, _legacy([("w", record)], storages, keys=keys), "legacy.pt"))


def test_big_endian_files_are_read_correctly(tmp_path):
    values = np.arange(6, dtype=">f4")
    record = tensor(legacy_pid("FloatStorage", "1", 6), 0, (2, 3), (3, 1))
    obj = pickled(OD([("w", record)]))
    data = pickled(LEGACY_MAGIC) + pickled(1001) + pickled(dict(SYS_INFO, little_endian=False)) + obj + pickled(["1"])
    data += struct.pack(">q", 6) + values.tobytes()
    state = load_torch_file(_write(tmp_path, data, "legacy.pt"))
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert state["w"].dtype == np.float32 and state["w"].dtype.isnative


# ---------------------------------------------------------------------------------------------------
# resources and structure
def test_a_huge_memo_index_is_refused_without_allocating(tmp_path):
    """The C unpickler would size its memo table from the index (LONG_BINPUT 2**32-1: tens of GB)."""
    obj = b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"0" + pickled(OD([]))[2:]
    with pytest.raises(TorchFileError, match="memoizes at index 4294967280"):
        load_torch_file(_write(tmp_path, torch_zip(obj, {})))


@pytest.mark.parametrize(
    "obj",
    [b"\x80\x02" + b"]" * 100 + b"a" * 99 + b".", b"\x80\x02]q\x00h\x00a."],
    ids=["deep", "a list containing itself"],
)
def test_deep_or_cyclic_objects_are_a_clear_error(tmp_path, obj):
    with pytest.raises(TorchFileError, match="nested more than 32 levels"):
        load_torch_file(_write(tmp_path, torch_zip(obj, {})))


def test_tensors_hidden_in_sets_or_dict_keys_are_refused(tmp_path):
    record = asm(tensor(zip_pid("FloatStorage", "0", 4), 0, (1,), (1,)))
    for obj in (b"\x80\x04\x8f(" + record + b"\x90.", b"\x80\x02}(" + record + b"K\x01u."):  # EMPTY_SET / dict key
        with pytest.raises(TorchFileError, match="dict key or set element of type _TensorRecord"):
            load_torch_file(_write(tmp_path, torch_zip(obj, {"0": bytes(16)})))


def test_the_pickle_scan_matches_every_opcode_boundary():
    """The helper the fuzz test uses to cut pickles into opcodes covers the whole stream."""
    data = read_fixture("torch_tensors_legacy.pt")
    spans, end = pickle_ops(data)
    assert spans[0][0] == 0 and spans[-1][1] == end and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_what_the_real_pickler_writes_loads_at_every_protocol(tmp_path, monkeypatch, fmt, protocol):
    """torch.save's structure written by Python's own Pickler (FRAME, MEMOIZE, STACK_GLOBAL at protocol 4+,
    a state dict's ``_metadata`` set by BUILD, tensors sharing a storage), with stand-ins for torch's names."""
    import io
    import sys
    import types
    from collections import OrderedDict

    torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    torch_module.FloatStorage, torch_module._utils = FloatStorage, utils_module
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)

    class Storage:
        def __init__(self, key, values):
            self.key, self.values = key, np.asarray(values, dtype="<f4")

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, OrderedDict())

        def __reduce_ex__(self, protocol):
            return _rebuild_tensor_v2, self.args

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                pid = ("storage", FloatStorage, obj.key, "cpu", obj.values.size)
                return pid + (None,) if fmt == "legacy" else pid
            return None

    shared, bias = Storage("140", np.arange(6)), Storage("141", [0.5, -0.5])
    state = OrderedDict(
        [
            ("w", Tensor(shared, 0, (2, 3), (3, 1))),
            ("w_t", Tensor(shared, 0, (3, 2), (1, 3))),
            ("b", Tensor(bias, 1, (1,), (1,))),
        ]
    )
    state._metadata = OrderedDict([("", {"version": 1})])
    stream = io.BytesIO()
    TorchPickler(stream, protocol=protocol).dump(state)
    if fmt == "zip":
        data = torch_zip(stream.getvalue(), {s.key: s.values.tobytes() for s in (shared, bias)})
    else:
        data = b"".join(pickle.dumps(x, protocol=protocol) for x in (LEGACY_MAGIC, 1001, SYS_INFO))
        data += stream.getvalue() + pickle.dumps(["140", "141"], protocol=protocol)
        data += b"".join(struct.pack("<q", s.values.size) + s.values.tobytes() for s in (shared, bias))
    loaded = load_torch_file(_write(tmp_path, data))
    assert list(loaded) == ["w", "w_t", "b"]
    np.testing.assert_array_equal(loaded["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(loaded["w_t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    np.testing.assert_array_equal(loaded["b"], [-0.5])


def test_a_state_dict_key_set_twice_is_refused(tmp_path):
    """The second value used to win silently: which tensor a layer gets must not depend on pickle order."""
    first = tensor(zip_pid("FloatStorage", "0", 6), 0, (6,), (1,))
    second = tensor(zip_pid("FloatStorage", "1", 6), 0, (6,), (1,))
    data = torch_zip(pickled(OD([("layer.weight", first), ("layer.weight", second)])), {"0": bytes(24), "1": bytes(24)})
    with pytest.raises(TorchFileError, match=r"crafted.pth.*sets key 'layer.weight' twice"):
        load_torch_file(_write(tmp_path, data))
