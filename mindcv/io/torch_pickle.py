"""Read PyTorch ``torch.save`` files into numpy arrays without importing torch, safely.

Both serialisations are supported: the zip container (torch >= 1.6) and the legacy stream (older
checkpoints, such as torchvision's 2019 MnasNet weights). What is guaranteed for *any* input file,
crafted ones included:

* **No code runs.** This module is the only place in the package that unpickles, and every pickle
  of a file goes through the one restricted unpickler :class:`_RestrictedUnpickler`. That covers the
  zip format's ``data.pkl``, and all five pickles of the legacy format: magic number, protocol
  version, system info, the object itself, and the storage-key list. Its ``find_class`` resolves only
  ``collections.OrderedDict``, the ``torch._utils`` tensor/parameter rebuild functions and the
  ``torch.*Storage`` type names. The rebuild functions and storage types are replaced by local inert
  stand-ins that only record their arguments. The legacy header pickles may name no global at all.
  Any other global is refused by name, before anything is called.
* **Each pickle stream is scanned opcode by opcode before it is unpickled.** The scan uses
  ``pickletools.genops``, which only parses. Every declared length must fit in the stream, memo
  indices must be small, the stream must stay under 32 MiB, and opcodes ``torch.save``
  never writes are refused: INST/OBJ/NEWOBJ/NEWOBJ_EX, the EXT* extension registry, out-of-band
  buffers and BYTEARRAY8. The header pickles may not contain GLOBAL/STACK_GLOBAL/REDUCE/BUILD or
  persistent ids either. So the C unpickler is never asked to allocate memory from a bogus size. The
  objects the unpickler hands to the pickle refuse BUILD (``__setstate__``), so a pickle cannot rewrite
  a storage or tensor record after it was made.
* **Every storage reference (persistent id) is validated**: its shape (a 5-tuple in the zip format, a
  6-tuple in the legacy one), the ``'storage'`` tag, a known storage type, a key string of letters,
  digits and ``_.:-``, a location string, a non-negative integer element count (at most
  2**31), and, for legacy views, the view key, offset and size. One key must always be
  declared with the same type and size. In the zip format the record ``data/<key>`` must exist, hold
  exactly ``numel * itemsize`` bytes (stored or deflated, not encrypted) and lie inside the archive.
  In the legacy format the key list must be a list of distinct declared key strings. Each storage's
  element count is read from the file and must be non-negative, equal the declared count and fit in
  the bytes that remain before anything is read. No bytes may follow the last storage.
* **Every tensor record is validated against its storage before any view of it is made**:
    * the storage is a storage reference;
    * the offset is an int >= 0;
    * the shape and the strides are tuples of ints >= 0 of the same length (at most 32 dimensions);
    * the element count is at most 2**31;
    * the furthest element, ``offset + sum((size - 1) * stride)``, lies inside the storage;
    * a tensor that repeats elements (zero or overlapping strides) has at most
      2**24 elements.

  The bytes materialised for the whole file may not exceed 8 times the storage bytes
  (at least 256 MiB), so a zero stride over a huge shape, or many records aliasing one
  storage, is refused before anything is allocated.
* **The result holds only plain data**: dicts/OrderedDicts, lists, tuples, sets, numpy arrays, str,
  bytes, int, float, complex, bool and None. Nesting is at most 32 levels, so cycles are
  refused, and shared sub-objects are converted once.
* **Every failure is a** :class:`TorchFileError` **(a** ``ValueError`` **)** naming the file and,
  where one applies, the record: the key path in the saved object and the storage key. No other
  exception type escapes, whether MemoryError, RecursionError, OverflowError, UnicodeDecodeError,
  zipfile or struct errors. There is no interpreter crash and no hang;
  ``tests/test_fuzz_checkpoint.py`` checks all of this on thousands of crafted files in child processes.

* **A key set twice** in an ``OrderedDict`` (how ``torch.save`` writes state dicts) is refused. In a
  plain ``dict`` built by the ``EMPTY_DICT``/``SETITEMS`` opcodes, Python's C unpickler keeps the last
  value without any hook, so such a duplicate cannot be seen (a known limit; the pure-Python unpickler
  would see it but is more permissive elsewhere).

bfloat16 tensors are returned as float32. A big-endian file (zip ``byteorder`` record, or legacy
``little_endian=False``) is read correctly.
"""

import io
import pickle
import pickletools
import re
import reprlib
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

__all__ = ["TorchFileError", "load_torch_file"]

_MAX_ELEMENTS = 2**31  # per tensor and per storage (so a storage is at most 16 GiB)
_MAX_BROADCAST_ELEMENTS = 2**24  # a tensor whose strides repeat elements (e.g. an expanded one)
_AMPLIFICATION = 8  # materialised bytes <= _AMPLIFICATION * storage bytes in the file ...
_MIN_OUTPUT_BUDGET = 2**28  # ... or 256 MiB, whichever is larger
_MAX_PICKLE_BYTES = 32 * 2**20  # one pickle stream (a state dict of ~300k tensors needs ~30 MiB)
_MAX_NDIM = 32
_MAX_DEPTH = 32
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}
# opcodes torch.save never writes: object construction, the copyreg extension registry, out-of-band buffers
_REFUSED_OPCODES = frozenset(
    ["INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"]
)
# ... and, in the legacy header pickles (plain ints, strings, dicts, lists), nothing that calls or references
_HEADER_REFUSED_OPCODES = _REFUSED_OPCODES | {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PERSID", "BINPERSID"}
_MEMO_PUTS = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
_SCALARS = (str, bytes, int, float, complex, bool, type(None))

_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 80
_short_repr.maxlevel = 3


def _short(obj: Any) -> str:
    """A bounded repr of a value read from the file (never deep, never long)."""
    try:
        return _short_repr.repr(obj)
    except Exception:  # a repr of hostile data must not replace the real error
        return f"<{type(obj).__name__}>"


class TorchFileError(ValueError):
    """The file is not a readable ``torch.save`` file, is corrupted, or holds objects other than tensors."""


# ---------------------------------------------------------------------------------------------------
# inert objects handed to the pickle
class _Inert:
    """Base of every object the unpickler gives the pickle: BUILD cannot modify it."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise TorchFileError(f"the pickle tries to set the state of a {type(self).__name__.lstrip('_')} (BUILD)")

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _StorageType(_Inert):
    """Stand-in for ``torch.FloatStorage`` & co: only its name, numpy dtype and item size."""

    __slots__ = ("name", "dtype_code", "itemsize", "out_itemsize")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype_code = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype_code == "bfloat16" else np.dtype(self.dtype_code).itemsize
        self.out_itemsize = 4 if self.dtype_code == "bfloat16" else self.itemsize  # bfloat16 becomes float32

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def decode(self, raw: Any, byteorder: str) -> np.ndarray:
        if self.dtype_code == "bfloat16":
            return (np.frombuffer(raw, dtype=byteorder + "u2").astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype_code).newbyteorder(byteorder))


_STORAGE_TYPES = {name: _StorageType(name) for name in _STORAGE_DTYPES}


class _Storage(_Inert):
    """A flat typed buffer of a declared element count, read lazily from the file (or a view of one)."""

    __slots__ = ("storage_type", "key", "numel", "reader", "base", "_array")

    def __init__(
        self,
        storage_type: _StorageType,
        key: str,
        numel: int,
        reader: Optional[Callable[[], Any]] = None,
        base: Optional[Tuple["_Storage", int]] = None,
    ) -> None:
        self.storage_type, self.key, self.numel = storage_type, key, numel
        self.reader, self.base, self._array = reader, base, None

    def array(self, byteorder: str) -> np.ndarray:
        if self._array is None:
            if self.base is not None:  # a legacy view: its bounds were checked against the root's size
                root, offset = self.base
                self._array = root.array(byteorder)[offset : offset + self.numel]
                return self._array
            if self.reader is None:
                raise TorchFileError(f"storage '{self.key}' has no data in the file (not in the storage key list)")
            raw = self.reader()
            nbytes = self.numel * self.storage_type.itemsize
            if len(raw) != nbytes:
                raise TorchFileError(f"storage '{self.key}' holds {len(raw)} bytes, {nbytes} were declared")
            self._array = self.storage_type.decode(raw, byteorder)
        return self._array

    def __repr__(self) -> str:
        return f"<storage '{self.key}': {self.numel} x {self.storage_type.name}>"


class _TensorRecord(_Inert):
    """The arguments of one ``_rebuild_tensor(_v2)`` call, checked only when materialised."""

    __slots__ = ("args",)

    def __init__(self, args: Tuple[Any, ...]) -> None:
        self.args = args


class _Rebuild(_Inert):
    """Stand-in for an allowed ``torch._utils`` function: validates the argument count, records."""

    __slots__ = ("name", "min_args", "max_args", "parameter")

    def __init__(self, name: str, min_args: int, max_args: int, parameter: bool) -> None:
        self.name, self.min_args, self.max_args, self.parameter = name, min_args, max_args, parameter

    def __call__(self, *args: Any) -> _TensorRecord:
        if not self.min_args <= len(args) <= self.max_args:
            raise TorchFileError(f"{self.name} called with {len(args)} arguments")
        if not self.parameter:
            return _TensorRecord(args[:4])
        if type(args[0]) is not _TensorRecord:
            raise TorchFileError(f"{self.name} wraps a {type(args[0]).__name__}, not a tensor")
        return args[0]


class _UniqueKeyDict(OrderedDict):
    """``collections.OrderedDict`` of the file (a state dict): a key set twice would silently win."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self:
            raise TorchFileError(f"a dict of the file sets key {_short(key)} twice")
        super().__setitem__(key, value)


class _OrderedDictFactory(_Inert):
    """Stand-in for the ``collections.OrderedDict`` global: an inert callable (BUILD on a class would
    change the class for every later file) making dicts that refuse a key set twice."""

    def __call__(self, *args: Any) -> _UniqueKeyDict:
        return _UniqueKeyDict(*args)


_TENSOR_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDictFactory(),
    ("torch._utils", "_rebuild_tensor_v2"): _Rebuild("_rebuild_tensor_v2", 4, 7, False),
    ("torch._utils", "_rebuild_tensor"): _Rebuild("_rebuild_tensor", 4, 4, False),
    ("torch._utils", "_rebuild_parameter"): _Rebuild("_rebuild_parameter", 3, 3, True),
    ("torch._utils", "_rebuild_parameter_with_state"): _Rebuild("_rebuild_parameter_with_state", 4, 4, True),
}
for _name, _st in _STORAGE_TYPES.items():
    _TENSOR_GLOBALS[("torch", _name)] = _st
    _TENSOR_GLOBALS[("torch.storage", _name)] = _st


# ---------------------------------------------------------------------------------------------------
# the one restricted unpickler
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles one scanned stream, resolving only the given globals and persistent ids."""

    def __init__(
        self, data: bytes, what: str, allowed: Dict[Tuple[str, str], Any], persistent_load: Optional[Callable]
    ) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._what, self._allowed, self._persistent_load = what, allowed, persistent_load

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
        if found is None:
            raise TorchFileError(
                f"refusing to unpickle '{_short(module)[1:-1]}.{_short(name)[1:-1]}' in the {self._what}: "
                "only tensors and containers are allowed in weight files"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise TorchFileError(f"unexpected persistent id in the {self._what}")
        return self._persistent_load(pid)


def _scan_pickle(data: bytes, start: int, what: str, header: bool) -> int:
    """Parse (never execute) the pickle at ``data[start:]``; return the offset just past its STOP."""
    refused = _HEADER_REFUSED_OPCODES if header else _REFUSED_OPCODES
    stream = io.BytesIO(data)
    stream.seek(start)
    count = 0
    for opcode, arg, pos in pickletools.genops(stream):
        count += 1
        if pos - start > _MAX_PICKLE_BYTES:
            raise TorchFileError(f"the {what} pickle is longer than {_MAX_PICKLE_BYTES} bytes")
        name = opcode.name
        if name in refused:
            raise TorchFileError(f"the {what} pickle holds opcode {name} at byte {pos}, which torch.save never writes")
        if name in _MEMO_PUTS and arg > count:
            raise TorchFileError(f"the {what} pickle memoizes at index {arg} after only {count} opcodes (byte {pos})")
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            if (module, attr) not in _TENSOR_GLOBALS:
                raise TorchFileError(
                    f"refusing to unpickle '{_short(module)[1:-1]}.{_short(attr)[1:-1]}' in the {what}: "
                    "only tensors and containers are allowed in weight files"
                )
        if name == "STOP":
            return stream.tell()
    raise TorchFileError(f"the {what} pickle has no STOP opcode")  # genops raises first; kept for safety


def _unpickle(
    data: bytes,
    start: int,
    what: str,
    allowed: Optional[Dict[Tuple[str, str], Any]] = None,
    persistent_load: Optional[Callable] = None,
) -> Tuple[Any, int]:
    """Scan, then restricted-unpickle, the pickle at ``data[start:]``; return (object, end offset)."""
    end = _scan_pickle(data, start, what, header=allowed is None)
    return _RestrictedUnpickler(data[start:end], what, allowed or {}, persistent_load).load(), end


# ---------------------------------------------------------------------------------------------------
# persistent ids
def _check_text(value: Any, what: str, pattern: Optional["re.Pattern"] = None) -> str:
    if isinstance(value, bytes):  # files pickled by Python 2 may hold byte strings
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise TorchFileError(f"{what} {_short(value)} is not ASCII") from None
    if type(value) is not str or (pattern is not None and not pattern.fullmatch(value)) or len(value) > 128:
        raise TorchFileError(f"{what} {_short(value)} is not a valid string")
    return value


def _check_count(value: Any, what: str, limit: int = _MAX_ELEMENTS) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise TorchFileError(f"{what} {_short(value)} is not an integer in [0, {limit}]")
    return value


def _check_storage_pid(pid: Any, length: int) -> Tuple[_StorageType, str, int]:
    if type(pid) is not tuple or len(pid) != length:
        raise TorchFileError(f"persistent id {_short(pid)} is not a {length}-tuple ('storage', type, key, ...)")
    if _check_text(pid[0], "persistent id tag") != "storage":
        raise TorchFileError(f"unsupported persistent id tag {_short(pid[0])}")
    storage_type = pid[1]
    if type(storage_type) is not _StorageType:
        raise TorchFileError(f"persistent id {_short(pid)}: {_short(storage_type)} is not a storage type")
    key = _check_text(pid[2], "storage key", _KEY_RE)
    _check_text(pid[3], f"storage '{key}': location")
    numel = _check_count(pid[4], f"storage '{key}': element count")
    return storage_type, key, numel


def _same_storage(storages: Dict[str, _Storage], key: str, storage_type: _StorageType, numel: int) -> _Storage:
    known = storages[key]
    if known.storage_type is not storage_type or known.numel != numel:
        raise TorchFileError(
            f"storage '{key}' is declared as {known.numel} x {known.storage_type.name} and as {numel} x "
            f"{storage_type.name}"
        )
    return known


# ---------------------------------------------------------------------------------------------------
# the two containers
def _load_zip(zf: zipfile.ZipFile, archive_size: int) -> Tuple[Any, Dict[str, _Storage], str]:
    infos = {info.filename: info for info in zf.infolist()}
    pkl = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkl:
        raise TorchFileError("a zip file without data.pkl: not a torch.save file")
    root = pkl[0][: -len("data.pkl")]

    def checked(name: str, size: int, what: str) -> zipfile.ZipInfo:
        info = infos.get(name)
        if info is None:
            raise TorchFileError(f"{what}: the archive has no record '{name}'")
        if info.flag_bits & 0x1:
            raise TorchFileError(f"{what}: record '{name}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise TorchFileError(f"{what}: record '{name}' uses unsupported compression {info.compress_type}")
        if info.header_offset < 0 or info.header_offset + info.compress_size > archive_size:
            raise TorchFileError(f"{what}: record '{name}' lies outside the archive")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise TorchFileError(f"{what}: stored record '{name}' has inconsistent sizes")
        if size >= 0 and info.file_size != size:
            raise TorchFileError(f"{what}: record '{name}' holds {info.file_size} bytes, {size} were declared")
        return info

    info = checked(pkl[0], -1, "data.pkl")
    if info.file_size > _MAX_PICKLE_BYTES:
        raise TorchFileError(f"data.pkl is {info.file_size} bytes, more than {_MAX_PICKLE_BYTES}")
    byteorder = "<"
    if root + "byteorder" in infos:  # written by torch >= 2.1; older files are little-endian
        record = checked(root + "byteorder", -1, "byteorder")
        order = zf.read(record) if record.file_size <= 16 else b"?"
        if order not in (b"little", b"big"):
            raise TorchFileError(f"unknown byte order record {_short(order)}")
        byteorder = "<" if order == b"little" else ">"
    storages: Dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel = _check_storage_pid(pid, 5)
        if key in storages:
            return _same_storage(storages, key, storage_type, numel)
        member = checked(f"{root}data/{key}", numel * storage_type.itemsize, f"storage '{key}'")
        storages[key] = _Storage(storage_type, key, numel, lambda m=member: zf.read(m))
        return storages[key]

    data = zf.read(info)
    obj, end = _unpickle(data, 0, "data.pkl", _TENSOR_GLOBALS, persistent_load)
    if end != len(data):
        raise TorchFileError(f"data.pkl has {len(data) - end} bytes after its STOP opcode")
    return obj, storages, byteorder


def _load_legacy(data: bytes) -> Tuple[Any, Dict[str, _Storage], str]:
    magic, pos = _unpickle(data, 0, "magic number")
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise TorchFileError("not a torch.save file (neither a zip archive nor the legacy format's magic number)")
    protocol, pos = _unpickle(data, pos, "protocol version")
    if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"unsupported legacy protocol version {_short(protocol)}")
    sys_info, pos = _unpickle(data, pos, "system info")
    if type(sys_info) is not dict or not all(type(k) is str for k in sys_info):
        raise TorchFileError(f"the system info {_short(sys_info)} is not a dict of strings")
    little = sys_info.get("little_endian", True)
    if type(little) is not bool:
        raise TorchFileError(f"system info: little_endian is {_short(little)}, not a bool")
    byteorder = "<" if little else ">"
    roots: Dict[str, _Storage] = {}
    views: Dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage_type, key, numel = _check_storage_pid(pid, 6)
        if numel * storage_type.itemsize > len(data):
            raise TorchFileError(f"storage '{key}': {numel} elements do not fit in a {len(data)}-byte file")
        if key in roots:
            root = _same_storage(roots, key, storage_type, numel)
        else:
            root = roots[key] = _Storage(storage_type, key, numel, None)
        view = pid[5]
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise TorchFileError(f"storage '{key}': view {_short(view)} is not a (key, offset, size) tuple")
        view_key = _check_text(view[0], f"storage '{key}': view key", _KEY_RE)
        offset = _check_count(view[1], f"view '{view_key}' of storage '{key}': offset")
        size = _check_count(view[2], f"view '{view_key}' of storage '{key}': size")
        if offset + size > numel:
            raise TorchFileError(
                f"view '{view_key}' (offset {offset}, size {size}) lies outside storage '{key}' ({numel} elements)"
            )
        if view_key in views:
            known = views[view_key]
            if known.base != (root, offset) or known.numel != size:
                raise TorchFileError(f"view '{view_key}' is declared twice differently")
            return known
        views[view_key] = _Storage(storage_type, view_key, size, base=(root, offset))
        return views[view_key]

    obj, pos = _unpickle(data, pos, "object", _TENSOR_GLOBALS, persistent_load)
    keys, pos = _unpickle(data, pos, "storage key list")
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise TorchFileError(f"the storage key list {_short(keys)} is not a list of strings")
    if len(set(keys)) != len(keys):
        raise TorchFileError("the storage key list names a storage twice")
    for key in keys:
        storage = roots.get(key)
        if storage is None:
            raise TorchFileError(f"the storage key list names storage {_short(key)}, which no tensor uses")
        if len(data) - pos < 8:
            raise TorchFileError(f"storage '{key}': the file ends before its element count (truncated?)")
        (numel,) = struct.unpack_from(byteorder + "q", data, pos)
        pos += 8
        nbytes = numel * storage.storage_type.itemsize
        if numel < 0 or nbytes > len(data) - pos:
            raise TorchFileError(
                f"storage '{key}': element count {numel} does not fit in the {len(data) - pos} bytes left (truncated?)"
            )
        if numel != storage.numel:
            raise TorchFileError(f"storage '{key}': {numel} elements in the file, {storage.numel} declared")
        storage.reader = lambda start=pos, stop=pos + nbytes: memoryview(data)[start:stop]
        pos += nbytes
    if pos != len(data):
        raise TorchFileError(f"{len(data) - pos} unexpected bytes after the last storage")
    return obj, roots, byteorder


# ---------------------------------------------------------------------------------------------------
# materialising
def _int_tuple(value: Any, what: str) -> Tuple[int, ...]:
    if type(value) not in (tuple, list) or not all(type(v) is int and v >= 0 for v in value):
        raise TorchFileError(f"{what} {_short(value)} is not a tuple of integers >= 0")
    if len(value) > _MAX_NDIM:
        raise TorchFileError(f"{what} has {len(value)} dimensions, more than {_MAX_NDIM}")
    return tuple(value)


class _Materialiser:
    """Turns the unpickled tree into plain containers of numpy arrays, checking every tensor record."""

    def __init__(self, byteorder: str, budget: int) -> None:
        self.byteorder, self.budget = byteorder, budget
        self.done: Dict[int, Any] = {}
        self.keep: list = []  # the objects whose id() is a key of self.done stay alive

    def tensor(self, record: _TensorRecord, where: str) -> np.ndarray:
        storage, offset, size, stride = record.args
        if type(storage) is not _Storage:
            raise TorchFileError(f"tensor {where}: its storage is a {type(storage).__name__}, not a storage reference")
        where = f"tensor {where} (storage '{storage.key}')"
        if type(offset) is not int or offset < 0:
            raise TorchFileError(f"{where}: storage offset {_short(offset)} is not an integer >= 0")
        size = _int_tuple(size, f"{where}: shape")
        stride = _int_tuple(stride, f"{where}: strides")
        if len(size) != len(stride):
            raise TorchFileError(f"{where}: shape {size} and strides {stride} differ in length")
        numel = 1
        for s in size:
            numel *= s
        if numel > _MAX_ELEMENTS:
            raise TorchFileError(f"{where}: shape {size} has {numel} elements, more than {_MAX_ELEMENTS}")
        st = storage.storage_type
        if numel == 0:
            if offset > storage.numel:
                raise TorchFileError(f"{where}: offset {offset} is past the end of the storage ({storage.numel})")
            return np.empty(size, dtype=np.float32 if st.dtype_code == "bfloat16" else st.dtype_code)
        furthest = offset + sum((s - 1) * t for s, t in zip(size, stride))
        if furthest >= storage.numel:
            raise TorchFileError(
                f"{where}: shape {size}, strides {stride} and offset {offset} reach element {furthest} "
                f"of a storage of {storage.numel} elements"
            )
        if numel > furthest - offset + 1 and numel > _MAX_BROADCAST_ELEMENTS:
            raise TorchFileError(
                f"{where}: shape {size} with strides {stride} repeats {furthest - offset + 1} stored elements "
                f"into {numel}; at most {_MAX_BROADCAST_ELEMENTS} are allowed"
            )
        self.budget -= numel * st.out_itemsize
        if self.budget < 0:
            raise TorchFileError(f"{where}: the tensors of this file would take far more memory than its storages")
        flat = storage.array(self.byteorder)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset : furthest + 1], shape=size, strides=tuple(t * itemsize for t in stride), writeable=False
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))

    def run(self, root: Any) -> Any:
        return self._convert(root, (), 0)

    def _convert(self, obj: Any, path: Tuple[Any, ...], depth: int) -> Any:
        kind = type(obj)
        if kind in _SCALARS:
            return obj
        where = "'" + "/".join(_short(p)[1:-1] if isinstance(p, str) else _short(p) for p in path) + "'"
        where = where if path else "<root>"
        if depth > _MAX_DEPTH:
            raise TorchFileError(f"{where}: objects nested more than {_MAX_DEPTH} levels deep (a cycle?)")
        if id(obj) in self.done:
            return self.done[id(obj)]
        if kind is _TensorRecord:
            out: Any = self.tensor(obj, where)
        elif kind in (dict, OrderedDict, _UniqueKeyDict):
            out = OrderedDict()
            for key, value in obj.items():
                self._check_key(key, where)
                out[key] = self._convert(value, path + (key,), depth + 1)
        elif kind in (list, tuple):
            out = kind(self._convert(value, path + (i,), depth + 1) for i, value in enumerate(obj))
        elif kind in (set, frozenset):
            for value in obj:
                self._check_key(value, where)
            out = obj
        elif kind is _Storage:
            raise TorchFileError(f"{where}: a bare storage ('{obj.key}') is not supported, only tensors")
        else:
            raise TorchFileError(f"{where}: unexpected object of type {kind.__name__}")
        self.done[id(obj)] = out
        self.keep.append(obj)
        return out

    @staticmethod
    def _check_key(key: Any, where: str) -> None:
        if type(key) in _SCALARS:
            return
        if type(key) is tuple and all(type(k) in _SCALARS for k in key):
            return
        raise TorchFileError(f"{where}: a dict key or set element of type {type(key).__name__}")


def _storage_budget(storages: Dict[str, _Storage]) -> int:
    total = sum(s.numel * s.storage_type.out_itemsize for s in storages.values())
    return max(_AMPLIFICATION * total, _MIN_OUTPUT_BUDGET)


def load_torch_file(path: str) -> Any:
    """Load a ``torch.save`` file; tensors become numpy arrays (see the module docstring for the guarantees).

    Args:
        path: the file.

    Returns:
        The saved object (typically an ``OrderedDict`` state dict) made of plain containers, scalars
        and numpy arrays.

    Raises:
        TorchFileError: not a torch file, truncated, corrupted, crafted, or holding non-tensor objects;
            the message names the file and the offending record.
    """
    try:
        if zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                archive_size = f.seek(0, io.SEEK_END)
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    obj, storages, byteorder = _load_zip(zf, archive_size)
                    return _Materialiser(byteorder, _storage_budget(storages)).run(obj)
        with open(path, "rb") as f:
            data = f.read()
        obj, storages, byteorder = _load_legacy(data)
        return _Materialiser(byteorder, _storage_budget(storages)).run(obj)
    except TorchFileError as err:
        raise TorchFileError(f"cannot read torch file '{path}': {err}") from None
    except Exception as err:  # noqa: BLE001 - any failure of a crafted file becomes one error type
        raise TorchFileError(
            f"cannot read torch file '{path}' (truncated or corrupted?): {type(err).__name__}: {_short(str(err))[1:-1]}"
        ) from err
