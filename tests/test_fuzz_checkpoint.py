"""Fuzzing every weight reader with thousands of crafted and mutated files, read in child processes.

Readers covered:
* the torch-free ``.pth`` reader, ``mindcv/io/torch_pickle.py``, in its zip and legacy formats.
  It is loaded standalone in a child without MindSpore, so its error type is ``TorchFileError``;
* ``.safetensors``, ``.ckpt`` and a sample of the torch cases, all through
  ``mindcv.models.checkpoint.read_checkpoint`` (error type ``CheckpointError``) in a MindSpore child.

Inputs are the committed fixtures in ``tests/fixtures/``, mutated with a fixed seed. The mutations
include:
* truncations, bit flips and byte replacements;
* deleted, duplicated, swapped, moved or replaced pickle opcodes;
* inserted payloads (GLOBAL/STACK_GLOBAL/REDUCE/BUILD/INST/OBJ/NEWOBJ/EXT naming ``os.system``,
  ``posix.system``, ``builtins.eval``/``exec``, ``subprocess.Popen``, ``getattr``/``__import__``)
  that would create a marker file;
* crafted tensor records: negative or huge offsets, negative or zero strides with huge shapes, shapes
  and strides of different lengths, wrong storage types, bad persistent ids, huge legacy ``numel``,
  bad views;
* crafted safetensors headers and crafted ``.ckpt`` protobuf elements (dims/content/type mismatches,
  chunks, duplicate tags, map tensors, CRC trailers).

The only allowed outcomes per case are:
* the reader's error type, where the error chain holds no MemoryError or SystemError; or
* a load equal to an independent decoding of the same bytes. For torch and safetensors files that
  decoding is written in this file. For ``.ckpt`` it is MindSpore's own ``load_checkpoint``, called
  only on files the reader accepted. So an unmodified fixture, or a harmless mutation, loads exactly
  as before, and a change inside raw tensor data loads as exactly that change.

Anything else fails the test: a signal (crash), a hang (per-case watchdog), a MemoryError, another
exception type, or the payload's marker file.

Cases run in batches in two concurrent child processes, each under an RLIMIT_AS of its size after
imports plus 2 GiB. Only the child that reads ``.ckpt``/``.safetensors`` imports MindSpore. The
helpers in the first half of this file (pickle assembler, torch file writers, payloads) are also used
by the targeted tests in ``test_torch_pickle.py``.
"""

import faulthandler
import io
import json
import os
import pickle
import pickletools
import random
import resource
import struct
import subprocess
import sys
import time
import traceback
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # thousands of mutated files read in child processes; the readers' own tests are quick

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures")
SEED = 20240607
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CASE_TIMEOUT = 30  # seconds one case may take before the child is declared hung
CHILD_TIMEOUT = 400
MEMORY_HEADROOM = 2 << 30  # RLIMIT_AS = the child's size after imports + 2 GiB


# ---------------------------------------------------------------------------------------------------
# a tiny protocol-2 pickle assembler (torch.save's own protocol), so no torch is needed
class G:
    """A GLOBAL reference ``module.name``."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call:
    """``func(*args)`` through REDUCE."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args


class PersId:
    """A BINPERSID persistent id."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class OD:
    """An ``OrderedDict`` built like torch does: REDUCE then SETITEMS."""

    def __init__(self, items: List[Tuple[Any, Any]]) -> None:
        self.items = items


class Raw:
    """Opcode bytes inserted verbatim."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def asm(obj: Any) -> bytes:
    if isinstance(obj, Raw):
        return obj.data
    if obj is None:
        return b"N"
    if obj is True:
        return b"\x88"
    if obj is False:
        return b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        if -(2**31) <= obj < 2**31:
            return b"J" + struct.pack("<i", obj)
        enc = pickle.encode_long(obj)
        return b"\x8a" + bytes([len(enc)]) + enc
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        enc = obj.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(enc)) + enc
    if isinstance(obj, bytes):
        return b"C" + bytes([len(obj)]) + obj if len(obj) < 256 else b"B" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, tuple):
        return b"(" + b"".join(asm(x) for x in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(asm(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(asm(k) + asm(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, G):
        return b"c" + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        return asm(obj.func) + asm(tuple(obj.args)) + b"R"
    if isinstance(obj, PersId):
        return asm(obj.pid) + b"Q"
    if isinstance(obj, OD):
        return (
            asm(Call(G("collections", "OrderedDict"))) + b"(" + b"".join(asm(k) + asm(v) for k, v in obj.items) + b"u"
        )
    raise TypeError(type(obj))


def pickled(obj: Any) -> bytes:
    return b"\x80\x02" + asm(obj) + b"."


def tensor(pid: Any, offset: Any, size: Any, stride: Any, fn: str = "_rebuild_tensor_v2") -> Call:
    """A ``torch._utils._rebuild_tensor_v2`` record."""
    return Call(G("torch._utils", fn), PersId(pid), offset, size, stride, False, Call(G("collections", "OrderedDict")))


def zip_pid(storage_type: str, key: Any, numel: Any, location: Any = "cpu", module: str = "torch") -> tuple:
    return ("storage", G(module, storage_type), key, location, numel)


def legacy_pid(storage_type: str, key: Any, numel: Any, view: Any = None, module: str = "torch") -> tuple:
    return ("storage", G(module, storage_type), key, "cpu", numel, view)


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


def rezip(members: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members:
            zf.writestr(_zip_info(name), data)
    return out.getvalue()


def torch_zip(data_pkl: bytes, storages: Dict[str, bytes], prefix: str = "archive") -> bytes:
    """A zip-format torch.save file from a data.pkl and raw storage bytes by key."""
    members = [(f"{prefix}/data.pkl", data_pkl), (f"{prefix}/byteorder", b"little")]
    members += [(f"{prefix}/data/{key}", raw) for key, raw in storages.items()]
    return rezip(members + [(f"{prefix}/version", b"3\n")])


SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def torch_legacy(
    obj_pkl: bytes, storages: List[Tuple[str, int, bytes]], keys: Optional[list] = None, sys_info: Any = None
) -> bytes:
    """A legacy-format torch.save file: 5 pickles, then (int64 numel, bytes) per storage key."""
    out = pickled(LEGACY_MAGIC) + pickled(1001) + pickled(SYS_INFO if sys_info is None else sys_info)
    out += obj_pkl + pickled([k for k, _, _ in storages] if keys is None else keys)
    for _key, numel, raw in storages:
        out += struct.pack("<q", numel) + raw
    return out


def read_fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def zip_members(data: bytes) -> List[Tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def pickle_ops(data: bytes, start: int = 0) -> Tuple[List[Tuple[int, int, str]], int]:
    """Byte spans ``(start, end, opcode name)`` of the pickle at ``data[start:]`` and the offset after STOP."""
    stream = io.BytesIO(data)
    stream.seek(start)
    spans: List[Tuple[int, int, str]] = []
    for opcode, _arg, pos in pickletools.genops(stream):
        if spans:
            spans[-1] = (spans[-1][0], pos, spans[-1][2])
        spans.append((pos, -1, opcode.name))
        if opcode.name == "STOP":
            break
    spans[-1] = (spans[-1][0], stream.tell(), "STOP")
    return spans, stream.tell()


def legacy_pickles(data: bytes) -> List[Tuple[int, int]]:
    """The (start, end) of the 5 pickles of a legacy torch file."""
    out, pos = [], 0
    for _ in range(5):
        _spans, end = pickle_ops(data, pos)
        out.append((pos, end))
        pos = end
    return out


def payloads(marker: str) -> List[Tuple[str, bytes]]:
    """Stack-neutral opcode sequences that would create ``marker`` if executed (each ends with POP)."""
    cmd = f"touch '{marker}'"
    code = f"open({marker!r}, 'w').close()"
    touch = ["touch", marker]
    return [
        ("GLOBAL os.system REDUCE", asm(Call(G("os", "system"), cmd)) + b"0"),
        ("GLOBAL posix.system REDUCE", asm(Call(G("posix", "system"), cmd)) + b"0"),
        ("GLOBAL builtins.eval REDUCE", asm(Call(G("builtins", "eval"), code)) + b"0"),
        ("GLOBAL __builtin__.eval REDUCE", asm(Call(G("__builtin__", "eval"), code)) + b"0"),
        ("GLOBAL builtins.exec REDUCE", asm(Call(G("builtins", "exec"), code)) + b"0"),
        ("GLOBAL subprocess.Popen REDUCE", asm(Call(G("subprocess", "Popen"), touch)) + b"0"),
        ("STACK_GLOBAL os.system REDUCE", asm("os") + asm("system") + b"\x93" + asm((cmd,)) + b"R0"),
        ("STACK_GLOBAL posix.system REDUCE", asm("posix") + asm("system") + b"\x93" + asm((cmd,)) + b"R0"),
        ("STACK_GLOBAL builtins.exec REDUCE", asm("builtins") + asm("exec") + b"\x93" + asm((code,)) + b"R0"),
        ("STACK_GLOBAL subprocess.Popen NEWOBJ", asm("subprocess") + asm("Popen") + b"\x93" + asm((touch,)) + b"\x810"),
        ("INST os.system", b"(" + asm(cmd) + b"ios\nsystem\n0"),
        ("OBJ os.system", b"(" + asm(G("os", "system")) + asm(cmd) + b"o0"),
        ("OBJ STACK_GLOBAL posix.system", b"(" + asm("posix") + asm("system") + b"\x93" + asm(cmd) + b"o0"),
        ("NEWOBJ subprocess.Popen", asm(G("subprocess", "Popen")) + asm((touch,)) + b"\x810"),
        ("NEWOBJ_EX subprocess.Popen", asm(G("subprocess", "Popen")) + asm((touch,)) + asm({}) + b"\x920"),
        (
            "getattr(__import__('os'), 'system')",
            asm(Call(Call(G("builtins", "getattr"), Call(G("builtins", "__import__"), "os"), "system"), cmd)) + b"0",
        ),
        ("EXT1 (copyreg registry)", b"\x82\x01" + asm((cmd,)) + b"R0"),
        ("BUILD on OrderedDict class", asm(G("collections", "OrderedDict")) + asm((None, {"__init__": 1})) + b"b0"),
        (
            "BUILD on a storage type",
            asm(G("torch", "FloatStorage")) + asm({"itemsize": 0, "dtype_code": "O"}) + b"b0",
        ),
        (
            "OrderedDict REDUCE with a payload argument",
            asm(Call(G("collections", "OrderedDict"), Call(G("os", "system"), cmd))) + b"0",
        ),
        ("PERSID payload", asm(Call(G("os", "system"), cmd)) + b"Q0"),
    ]


# ---------------------------------------------------------------------------------------------------
# independent reference decoding (the oracle for files the reader accepts)
class RefInvalid(Exception):
    """The reference decoder finds the file invalid."""


_REF_TYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _RefStorage:
    def __init__(self, type_name: str) -> None:
        self.type_name, self.values, self.view = type_name, None, None


class _RefTensor:
    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _RefUnpickler(pickle.Unpickler):
    """Reference only, run on files the real reader accepted; resolves the torch names to markers."""

    def __init__(self, stream: Any, persistent_load: Callable) -> None:
        super().__init__(stream, encoding="utf-8")
        self._pl = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda storage, offset, size, stride, *rest: _RefTensor(storage, offset, size, stride)
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *rest: data
        if module in ("torch", "torch.storage") and name in _REF_TYPES:
            return ("storage type", name)
        raise RefInvalid(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return self._pl(pid)


def _ref_decode(raw: Any, type_name: str, order: str) -> np.ndarray:
    if _REF_TYPES[type_name] == "bf16":
        return (np.frombuffer(raw, dtype=order + "u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(_REF_TYPES[type_name]).newbyteorder(order))


def _ref_tensor(t: _RefTensor) -> np.ndarray:
    values = t.storage.values
    if values is None:
        raise RefInvalid("storage without data")
    size, stride, offset = tuple(t.size), tuple(t.stride), t.offset
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise RefInvalid("bad geometry")
    dtype = values.dtype.newbyteorder("=")
    if 0 in size:
        return np.empty(size, dtype=dtype)
    if offset + sum((s - 1) * st for s, st in zip(size, stride)) >= len(values):
        raise RefInvalid("out of bounds")
    index = np.full((1,) * len(size), offset, dtype=np.int64)
    for dim, (s, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[dim] = s
        index = index + np.arange(s, dtype=np.int64).reshape(shape) * st
    return np.asarray(values[index]).astype(dtype)  # a 0-d index gives a numpy scalar


def _ref_tree(obj: Any) -> Any:
    if isinstance(obj, _RefTensor):
        return _ref_tensor(obj)
    if isinstance(obj, dict):
        return OrderedDict((k, _ref_tree(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_ref_tree(v) for v in obj)
    return obj


def reference_torch(data: bytes) -> Any:
    """Decode a torch.save file the simple way (no validation beyond what decoding needs)."""
    try:
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
                pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")][0]
                prefix = pkl[: -len("data.pkl")]
                order = "<"
                if prefix + "byteorder" in names:
                    order = "<" if zf.read(prefix + "byteorder") == b"little" else ">"
                storages: Dict[str, _RefStorage] = {}

                def pl(pid: Any) -> _RefStorage:
                    key = pid[2]
                    if key not in storages:
                        storages[key] = _RefStorage(pid[1][1])
                        storages[key].values = _ref_decode(zf.read(prefix + "data/" + key), pid[1][1], order)
                    return storages[key]

                return _ref_tree(_RefUnpickler(io.BytesIO(zf.read(pkl)), pl).load())
        stream = io.BytesIO(data)
        load = lambda pl=None: _RefUnpickler(stream, pl).load()  # noqa: E731
        if load() != LEGACY_MAGIC or load() != 1001:
            raise RefInvalid("magic")
        sys_info = load()
        order = "<" if sys_info.get("little_endian", True) else ">"
        roots: Dict[str, _RefStorage] = {}
        views: List[Tuple[_RefStorage, _RefStorage, int, int]] = []

        def pl_legacy(pid: Any) -> _RefStorage:
            root = roots.setdefault(pid[2], _RefStorage(pid[1][1]))
            if pid[5] is None:
                return root
            view = _RefStorage(pid[1][1])
            views.append((view, root, pid[5][1], pid[5][2]))
            return view

        obj = load(pl_legacy)
        for key in load():
            (numel,) = struct.unpack(order + "q", stream.read(8))
            itemsize = (
                2 if _REF_TYPES[roots[key].type_name] == "bf16" else np.dtype(_REF_TYPES[roots[key].type_name]).itemsize
            )
            raw = stream.read(numel * itemsize)
            if numel < 0 or len(raw) != numel * itemsize:
                raise RefInvalid("short storage")
            roots[key].values = _ref_decode(raw, roots[key].type_name, order)
        for view, root, offset, size in views:
            view.values = root.values[offset : offset + size]
        return _ref_tree(obj)
    except RefInvalid:
        raise
    except Exception as err:  # noqa: BLE001
        raise RefInvalid(f"{type(err).__name__}: {err}") from None


_ST_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4"}
_ST_DTYPES.update({"U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"})


def reference_safetensors(data: bytes) -> Dict[str, np.ndarray]:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = data[8 + n :]
        out = {}
        for name, info in sorted(
            header.items(), key=lambda kv: kv[1]["data_offsets"] if kv[0] != "__metadata__" else [-1]
        ):
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if end > len(body):
                raise RefInvalid("past the end")
            out[name] = np.frombuffer(body[begin:end], dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
        return out
    except RefInvalid:
        raise
    except Exception as err:  # noqa: BLE001
        raise RefInvalid(f"{type(err).__name__}: {err}") from None


def same(a: Any, b: Any) -> bool:
    """Exact equality of decoded trees (arrays by dtype, shape and bytes; dicts in order)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------------------
# mutations
OPCODE_BYTES = sorted({op.code.encode("latin-1") for op in pickletools.opcodes}) + [b"\x00", b"\xff", b"\x7f"]
INTERESTING_INTS = [0, 1, 2, 3, 5, 6, 23, 24, 25, 53, 54, 55, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63]
INTERESTING_INTS += [2**64, -1, -2, -24, -(2**31), -(2**63)]
ODD_VALUES = [True, False, None, 1.5, float("nan"), "3", b"3", (), (1,), [2], {"a": 1}]


def flip_bits(data: bytes, rng: random.Random, lo: int = 0, hi: Optional[int] = None, flips: int = 0) -> bytes:
    buf = bytearray(data)
    hi = len(buf) if hi is None else hi
    for _ in range(flips or rng.choice([1, 1, 1, 2, 3, 8])):
        pos = rng.randrange(lo, hi)
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def replace_bytes(data: bytes, rng: random.Random, lo: int = 0, hi: Optional[int] = None) -> bytes:
    buf = bytearray(data)
    hi = len(buf) if hi is None else hi
    for _ in range(rng.choice([1, 1, 2, 4])):
        pos = rng.randrange(lo, hi)
        buf[pos] = ord(rng.choice(OPCODE_BYTES)) if rng.random() < 0.7 else rng.randrange(256)
    return bytes(buf)


def mutate_pickle(pkl: bytes, rng: random.Random, marker: str, header: bool = False) -> bytes:
    """One structural mutation of a pickle stream (at opcode granularity when it can)."""
    ops, _end = pickle_ops(pkl)
    chunks = [pkl[s:e] for s, e, _ in ops]
    i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
    kind = rng.choice(["delete", "duplicate", "swap", "move", "replace", "payload", "payload", "opcode", "truncate"])
    if kind == "delete" and len(chunks) > 1:
        del chunks[i]
    elif kind == "duplicate":
        chunks.insert(i, chunks[i])
    elif kind == "swap":
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif kind == "move":
        chunks.insert(j, chunks.pop(i))
    elif kind == "replace":
        chunks[i] = chunks[j]
    elif kind == "payload":
        chunks.insert(max(i, 1), rng.choice(payloads(marker))[1])
    elif kind == "opcode":
        chunks.insert(max(i, 1), rng.choice(OPCODE_BYTES) + asm(rng.choice(INTERESTING_INTS)) * rng.randrange(2))
    else:
        return pkl[: ops[i][0] + rng.randrange(max(1, ops[i][1] - ops[i][0]))]
    return b"".join(chunks)


def _rand_int(rng: random.Random, small: int = 30) -> Any:
    r = rng.random()
    if r < 0.6:
        return rng.randrange(small)
    if r < 0.93:
        return rng.choice(INTERESTING_INTS)
    return rng.choice(ODD_VALUES)


def _rand_dims(rng: random.Random, length: int) -> Any:
    dims = tuple(_rand_int(rng, 5) for _ in range(length))
    return list(dims) if rng.random() < 0.05 else dims


_GOOD_TYPES = ["FloatStorage"] * 6 + list(_REF_TYPES)
_BAD_TYPES = [
    ("torch", "UntypedStorage"),
    ("torch", "FloatTensor"),
    ("torch", "Storage"),
    ("torch.cuda", "FloatStorage"),
]
_BAD_TYPES += [("os", "system"), ("torch", ""), ("builtins", "bytearray")]


def _storage_bytes(type_name: str, numel: int) -> bytes:
    code = _REF_TYPES[type_name]
    if code == "bf16":
        return (np.arange(numel, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    if code == "?":
        return (np.arange(numel) % 3 == 0).tobytes()
    return (np.arange(numel) * 3 - 7).astype(np.dtype(code).newbyteorder("<")).tobytes()


def crafted_torch(rng: random.Random, legacy: bool) -> bytes:
    """A torch file of random, mostly out-of-range, tensor records (storages hold known values)."""
    storages = []
    for k in range(rng.randint(1, 3)):
        type_name = rng.choice(_GOOD_TYPES)
        actual = rng.randrange(0, 60)
        declared = actual if rng.random() < 0.7 else _rand_int(rng, 70)
        key = str(k) if rng.random() < 0.9 else rng.choice(["../0", "", "a" * 300, 0, None, "0"])
        storages.append((type_name, key, declared, actual))
    records = []
    for n in range(rng.randint(1, 4)):
        type_name, key, declared, _actual = rng.choice(storages)
        module, storage_type = "torch", type_name
        if rng.random() < 0.05:
            module, storage_type = rng.choice(_BAD_TYPES)
        if legacy:
            view = None
            if rng.random() < 0.2:
                view = (rng.choice(["v0", "v1", 3]), _rand_int(rng, 20), _rand_int(rng, 20))
            pid: Any = legacy_pid(storage_type, key, declared, view, module=module)
        else:
            pid = zip_pid(storage_type, key, declared, module=module)
        if rng.random() < 0.05:
            pid = rng.choice([pid[:-1], pid + (0,), list(pid), ("module",) + pid[1:], "storage"])
        ndim = rng.choice([0, 1, 1, 2, 2, 3, 4, 33])
        size = _rand_dims(rng, ndim)
        stride = _rand_dims(rng, ndim if rng.random() < 0.9 else rng.randrange(5))
        offset = _rand_int(rng)
        fn = "_rebuild_tensor_v2" if rng.random() < 0.95 else "_rebuild_tensor"
        record = tensor(pid, offset, size, stride, fn)
        if rng.random() < 0.1:
            record = Call(G("torch._utils", "_rebuild_parameter"), record, True, Call(G("collections", "OrderedDict")))
        records.append((f"t{n}", record))
    obj_pkl = pickled(OD(records))
    if legacy:
        keys = [k for _t, k, _d, _a in storages]
        entries = [(k if isinstance(k, str) else str(k), a, _storage_bytes(t, a)) for t, k, _d, a in storages]
        if rng.random() < 0.1:
            entries = entries[: rng.randrange(len(entries) + 1)]
        out = torch_legacy(obj_pkl, entries, keys=keys if rng.random() < 0.95 else keys + ["zz"])
        if rng.random() < 0.1:  # a lying or huge numel in the data section
            start = len(out) - sum(8 + len(raw) for _k, _n, raw in entries)
            if entries:
                out = out[:start] + struct.pack("<q", rng.choice(INTERESTING_INTS) % 2**63) + out[start + 8 :]
        return out
    return torch_zip(obj_pkl, {str(k): _storage_bytes(t, a) for t, k, _d, a in storages})


# ---------------------------------------------------------------------------------------------------
# the case lists: kind -> [(class name, count, generator(rng, marker) -> bytes)]
def _fixture_cases() -> Dict[str, List[Tuple[str, int, Callable[[random.Random, str], bytes]]]]:
    zip_data = read_fixture("torch_tensors_zip.pt")
    members = zip_members(zip_data)
    pkl_index = [i for i, (name, _) in enumerate(members) if name.endswith("data.pkl")][0]
    storage_index = [i for i, (name, _) in enumerate(members) if "/data/" in name]
    legacy = read_fixture("torch_tensors_legacy.pt")
    spans = legacy_pickles(legacy)
    data_start = spans[-1][1]

    def zip_with_pickle(pkl: bytes) -> bytes:
        return rezip(members[:pkl_index] + [(members[pkl_index][0], pkl)] + members[pkl_index + 1 :])

    def zip_storage(rng: random.Random, _m: str) -> bytes:
        out = list(members)
        i = rng.choice(storage_index)
        name, raw = out[i]
        op = rng.choice(["flip", "cut", "grow"])
        raw = (
            flip_bits(raw, rng)
            if op == "flip" and raw
            else raw[:-1] if op == "cut" else raw + b"\0" * rng.choice([1, 4, 8])
        )
        out[i] = (name, raw)
        return rezip(out)

    def legacy_pickle(rng: random.Random, marker: str) -> bytes:
        k = rng.randrange(5)
        start, end = spans[k]
        return legacy[:start] + mutate_pickle(legacy[start:end], rng, marker) + legacy[end:]

    def legacy_numel(rng: random.Random, _m: str) -> bytes:
        # the first storage's int64 element count
        value = rng.choice(INTERESTING_INTS + [rng.randrange(100)]) % 2**64
        return legacy[:data_start] + struct.pack("<Q", value) + legacy[data_start + 8 :]

    def truncations(data: bytes, count: int) -> Callable[[random.Random, str], bytes]:
        return lambda rng, _m: data[: rng.randrange(len(data))]

    return {
        "torch_zip": [
            ("file truncation", 80, truncations(zip_data, 80)),
            ("file bit flips", 200, lambda rng, _m: flip_bits(zip_data, rng)),
            ("file byte replacements", 100, lambda rng, _m: replace_bytes(zip_data, rng)),
            (
                "data.pkl bit flips",
                400,
                lambda rng, _m: zip_with_pickle(flip_bits(members[pkl_index][1], rng)),
            ),
            (
                "data.pkl byte replacements",
                350,
                lambda rng, _m: zip_with_pickle(replace_bytes(members[pkl_index][1], rng)),
            ),
            (
                "data.pkl opcode mutations and payloads",
                700,
                lambda rng, m: zip_with_pickle(mutate_pickle(members[pkl_index][1], rng, m)),
            ),
            ("storage records changed", 120, zip_storage),
            ("crafted tensor records", 500, lambda rng, _m: crafted_torch(rng, legacy=False)),
        ],
        "torch_legacy": [
            ("file truncation", 100, truncations(legacy, 100)),
            ("file bit flips", 450, lambda rng, _m: flip_bits(legacy, rng)),
            ("file byte replacements", 300, lambda rng, _m: replace_bytes(legacy, rng)),
            ("opcode mutations and payloads in the 5 pickles", 700, legacy_pickle),
            ("storage element counts", 60, legacy_numel),
            ("crafted tensor records", 500, lambda rng, _m: crafted_torch(rng, legacy=True)),
        ],
    }


def _mini_safetensors(data: bytes, count: int) -> bytes:
    """The first ``count`` tensors of a safetensors fixture, re-serialised consistently."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:count]
    new, chunks, pos = {"__metadata__": {"source": "fuzz"}}, [], 0
    for name in names:
        begin, end = header[name]["data_offsets"]
        new[name] = {
            "dtype": header[name]["dtype"],
            "shape": header[name]["shape"],
            "data_offsets": [pos, pos + end - begin],
        }
        chunks.append(body[begin:end])
        pos += end - begin
    head = json.dumps(new).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _header_edit(data: bytes, rng: random.Random) -> bytes:
    """A JSON-level edit of a safetensors header: huge/overlapping offsets, wrong dtypes/shapes, bad metadata."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    info = header[name]
    field = rng.choice(["offsets", "offsets", "dtype", "shape", "shape", "metadata", "entry", "overlap"])
    if field == "offsets":
        info["data_offsets"][rng.randrange(2)] = rng.choice(
            INTERESTING_INTS + ODD_VALUES[:5] + [len(body), len(body) + 1]
        )
    elif field == "dtype":
        info["dtype"] = rng.choice(
            ["F32", "F16", "F64", "BF16", "I64", "I8", "U8", "BOOL", "F8_E4M3", "F4", "X", 3, None]
        )
    elif field == "shape":
        info["shape"] = [rng.choice(INTERESTING_INTS + ODD_VALUES[:5]) for _ in range(rng.randrange(4))]
        if rng.random() < 0.1:
            info["shape"] = [1] * 40
    elif field == "metadata":
        header["__metadata__"] = rng.choice(
            [{"a": 1}, ["x"], "x", {"mindcv_meta": "{bad"}, {"mindcv_meta": "[1]"}, None]
        )
    elif field == "entry":
        header[name] = rng.choice([None, [], "x", {"dtype": "F16"}, dict(info, extra=1)])
    else:
        other = header[rng.choice(names)]
        info["data_offsets"] = list(other["data_offsets"])
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def _ckpt_cases(marker: str) -> List[Tuple[str, int, Callable[[random.Random, str], bytes]]]:
    from mindspore.train.checkpoint_pb2 import Checkpoint

    full = read_fixture("mindcv_upstream_mnasnet_050.ckpt")
    proto = Checkpoint()
    proto.ParseFromString(full)
    mini_values = list(proto.value)[:30]
    mini = b"".join(Checkpoint(value=[v]).SerializeToString() for v in mini_values)
    types = ["Float32", "Float16", "Float64", "Int8", "UInt8", "Int16", "Int32", "Int64", "UInt64", "Bool"]
    types += ["BFloat16", "str", "Int4", "float32", "", "Float16\x00"]

    def crafted(rng: random.Random, _m: str) -> bytes:
        msg = Checkpoint()
        msg.value.extend(mini_values)
        values = msg.value
        i = rng.randrange(len(values))
        v = values[i]
        op = rng.choice(["dims", "dims", "content", "content", "type", "tag", "map", "chunks", "crc", "append"])
        dims = list(v.tensor.dims)
        if op == "dims":
            numel = int(np.prod(dims)) if dims else 1
            choice = rng.choice(
                [
                    [],
                    [0],
                    [1],
                    [numel - 1],
                    [numel + 1],
                    [-1],
                    [2**31],
                    [2**40, 0],
                    [0, 5],
                    dims[::-1],
                    dims + [1],
                    dims[:-1],
                    [numel // 2, 2],
                    [-numel],
                    [numel, -1, -1],
                    [1] * 40,
                    [2**62, 4],
                ]
            )
            v.tensor.ClearField("dims")
            v.tensor.dims.extend(choice)
        elif op == "content":
            data = v.tensor.tensor_content
            k = rng.choice([1, 2, 4, 8, len(data) // 2, len(data)])
            v.tensor.tensor_content = rng.choice([data[:-k], data + b"\x01" * k, b"", data * 2])
        elif op == "type":
            v.tensor.tensor_type = rng.choice(types)
        elif op == "tag":
            v.tag = rng.choice([values[rng.randrange(len(values))].tag, "", "x" * 5000, "mindcv_meta", "é"])
        elif op == "map":
            t = v.maptensor.tensor.add()
            t.dims.extend([2])
            t.tensor_type = "Float32"
            t.tensor_content = b"\0" * 8
        elif op == "chunks":  # a large tensor is stored as several elements of the same tag and dims
            data = v.tensor.tensor_content
            cut = rng.randrange(len(data) + 1)
            second = Checkpoint.Value()
            second.CopyFrom(v)
            v.tensor.tensor_content, second.tensor.tensor_content = data[:cut], data[cut:]
            if rng.random() < 0.3:
                second.tensor.dims.append(1)
            if rng.random() < 0.2:
                second.tensor.tensor_type = "Float32"
            values.insert(i + 1, second)
        raw = msg.SerializeToString()
        if op == "crc":
            import binascii

            crc = binascii.crc32(raw) ^ (0 if rng.random() < 0.5 else 1 << rng.randrange(32))
            raw += b"crc_num" + crc.to_bytes(10, byteorder="big")
        elif op == "append":
            raw += rng.choice([b"\x00", b"\x0a\x05", b"\x0a\x80\x80\x80\x80\x10", b"\xff" * 9])
        return raw

    return [
        ("truncation of the full fixture", 12, lambda rng, _m: full[: rng.randrange(len(full))]),
        ("truncation", 120, lambda rng, _m: mini[: rng.randrange(len(mini))]),
        ("bit flips", 400, lambda rng, _m: flip_bits(mini, rng)),
        ("byte replacements", 150, lambda rng, _m: replace_bytes(mini, rng)),
        ("crafted protobuf elements", 450, crafted),
        ("unmodified full fixture", 1, lambda rng, _m: full),
    ]


def _safetensors_cases() -> List[Tuple[str, int, Callable[[random.Random, str], bytes]]]:
    full = read_fixture("timm_mnasnet_small.safetensors")
    mini = _mini_safetensors(full, 12)
    (n,) = struct.unpack("<Q", mini[:8])
    return [
        ("truncation of the full fixture", 12, lambda rng, _m: full[: rng.randrange(len(full))]),
        ("truncation", 80, lambda rng, _m: mini[: rng.randrange(len(mini))]),
        ("header bit flips", 300, lambda rng, _m: flip_bits(mini, rng, 0, 8 + n)),
        ("header byte replacements", 150, lambda rng, _m: replace_bytes(mini, rng, 0, 8 + n)),
        ("data bit flips", 60, lambda rng, _m: flip_bits(mini, rng, 8 + n)),
        ("crafted headers", 400, lambda rng, _m: _header_edit(mini, rng)),
        ("unmodified full fixture", 1, lambda rng, _m: full),
    ]


def case_lists(group: str, marker: str) -> List[Tuple[str, str, int, Callable]]:
    """Flat ``(kind, class, index, generator)`` list of a child group ('torch' or 'mindspore')."""
    if group == "torch":
        kinds = _fixture_cases()
    else:
        torch_kinds = _fixture_cases()
        sample = [
            (name, max(1, count // 25), gen)
            for name, count, gen in torch_kinds["torch_zip"] + torch_kinds["torch_legacy"]
        ]
        kinds = {"safetensors": _safetensors_cases(), "ckpt": _ckpt_cases(marker), "torch via read_checkpoint": sample}
    return [
        (kind, name, i, gen) for kind, classes in kinds.items() for name, count, gen in classes for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------------
# the child
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _chain(err: BaseException) -> List[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _load_standalone_torch_reader() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mindcv_torch_pickle_standalone", os.path.join(REPO, "mindcv", "io", "torch_pickle.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_main(group: str, first: int, out_path: str, workdir: str) -> None:
    marker = os.path.join(workdir, "PAYLOAD_RAN")
    cases = case_lists(group, marker)
    if group == "torch":
        reader = _load_standalone_torch_reader()
        allowed_error: Any = reader.TorchFileError
        ms_load = None
    else:
        sys.path.insert(0, REPO)
        import mindspore as ms

        from mindcv.models.checkpoint import CheckpointError, read_checkpoint

        allowed_error = CheckpointError
        ms_load = ms.load_checkpoint
    limit = _vm_size() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    exts = {"torch_zip": ".pth", "torch_legacy": ".pt", "safetensors": ".safetensors", "ckpt": ".ckpt"}
    with open(out_path, "a") as out:
        out.write(json.dumps({"rlimit_as": limit}) + "\n")
        for index in range(first, len(cases)):
            kind, name, i, gen = cases[index]
            out.write(json.dumps({"start": index}) + "\n")
            out.flush()
            faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
            rng = random.Random(f"{SEED}:{kind}:{name}:{i}")
            data = gen(rng, marker)
            path = os.path.join(workdir, "case" + exts.get(kind, ".pth"))
            with open(path, "wb") as f:
                f.write(data)
            result = {"index": index, "kind": kind, "class": name}
            try:
                if group == "torch":
                    loaded = reader.load_torch_file(path)
                else:
                    loaded = read_checkpoint(path)
                result["outcome"] = "loaded"
            except allowed_error as err:
                causes = [type(e).__name__ for e in _chain(err)]
                bad = [c for c in causes if c in ("MemoryError", "SystemError")]
                result["outcome"] = "FAIL " + bad[0] if bad else "refused"
                result["detail"] = str(err)[:300]
            except BaseException as err:  # noqa: BLE001 - the point: no other exception type may escape
                result["outcome"] = f"FAIL {type(err).__name__}"
                result["detail"] = "".join(traceback.format_exception(err))[-1500:]
            if result["outcome"] == "loaded":
                result.update(_check_load(kind, data, path, loaded, ms_load))
            if os.path.exists(marker):
                result["outcome"] = "FAIL payload ran (marker file written)"
                os.remove(marker)
            faulthandler.cancel_dump_traceback_later()
            out.write(json.dumps(result) + "\n")
            out.flush()
        time.sleep(0.5)  # a payload run through subprocess.Popen would write its marker asynchronously
        if os.path.exists(marker):
            out.write(json.dumps({"index": -1, "kind": "any", "class": "late", "outcome": "FAIL payload ran"}) + "\n")
        out.write(json.dumps({"finished": len(cases)}) + "\n")


def _check_load(kind: str, data: bytes, path: str, loaded: Any, ms_load: Optional[Callable]) -> Dict[str, str]:
    """A load is only allowed when it agrees with an independent decoding of the same bytes."""
    try:
        if kind in ("torch_zip", "torch_legacy"):
            return (
                {"outcome": "loaded, agrees"} if same(loaded, reference_torch(data)) else {"outcome": "FAIL disagrees"}
            )
        if kind == "torch via read_checkpoint":
            return {"outcome": "loaded"}  # the values are checked in the torch child
        tensors, _meta = loaded
        if kind == "safetensors":  # the library lists tensors by name, the header by offset
            expected = reference_safetensors(data)
            tensors, expected = dict(sorted(tensors.items())), dict(sorted(expected.items()))
        else:  # the reader accepted it, so its sizes are consistent: safe to hand to MindSpore
            try:
                expected = {k: v.asnumpy() for k, v in ms_load(path).items() if not isinstance(v, str)}
            except Exception as err:  # noqa: BLE001
                raise RefInvalid(f"mindspore.load_checkpoint: {type(err).__name__}: {str(err)[:200]}") from None
        return {"outcome": "loaded, agrees"} if same(tensors, expected) else {"outcome": "FAIL disagrees"}
    except RefInvalid as err:
        return {"outcome": "FAIL loaded a file the reference decoding rejects", "detail": str(err)[:300]}


# ---------------------------------------------------------------------------------------------------
# the test
def _run_group(group: str, workdir: str) -> Tuple[List[dict], List[str], dict]:
    """Run a group's cases in a child, restarting after a crash or hang; return results, failures, info."""
    os.makedirs(workdir, exist_ok=True)
    out_path = os.path.join(workdir, "results.jsonl")
    results, failures, info, first = [], [], {}, 0
    for _attempt in range(6):
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), group, str(first), out_path, workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
        )
        try:
            _, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        with open(out_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        os.remove(out_path)
        started = None
        for line in lines:
            if "rlimit_as" in line:
                info["rlimit_as"] = line["rlimit_as"]
            elif "start" in line:
                started = line["start"]
            elif "index" in line:
                results.append(line)
                started = None
            elif "finished" in line:
                info["cases"] = line["finished"]
        if any("finished" in line for line in lines):
            return results, failures, info
        tail = stderr.decode(errors="replace")[-1500:]
        if started is None:
            failures.append(f"{group} child died before its first case (exit {proc.returncode}): {tail}")
            return results, failures, info
        how = "hung" if "Timeout" in tail else f"crashed (exit {proc.returncode}, a negative value is a signal)"
        failures.append(f"{group} case {started} {how}: {tail}")
        first = started + 1
    failures.append(f"{group}: too many crashes, gave up")
    return results, failures, info


def test_fuzz_every_weight_reader(tmp_path):
    import concurrent.futures

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {g: pool.submit(_run_group, g, str(tmp_path / g)) for g in ("mindspore", "torch")}
        runs = {g: f.result() for g, f in futures.items()}
    elapsed = time.time() - start
    failures = [f for _results, fails, _info in runs.values() for f in fails]
    summary: Dict[str, Dict[str, int]] = {}
    for results, _fails, _info in runs.values():
        for r in results:
            outcome = "loaded" if r["outcome"].startswith("loaded") else r["outcome"]
            summary.setdefault(r["kind"], {}).setdefault(outcome, 0)
            summary[r["kind"]][outcome] += 1
            if r["outcome"].startswith("FAIL"):
                failures.append(f"{r['kind']} / {r['class']} case {r['index']}: {r['outcome']}: {r.get('detail', '')}")
    total = sum(sum(v.values()) for v in summary.values())
    print(f"\nfuzzed {total} cases in {elapsed:.1f} s (2 child processes, RLIMIT_AS = size after imports + 2 GiB)")
    for kind, counts in summary.items():
        print(
            f"  {kind:28s} {sum(counts.values()):5d} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:30])
    assert total >= 5000, summary
    for kind in ("torch_zip", "torch_legacy", "safetensors", "ckpt"):
        assert summary[kind].get("refused", 0) > 50 and summary[kind].get("loaded", 0) > 5, (kind, summary[kind])


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
