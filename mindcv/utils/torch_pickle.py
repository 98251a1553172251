"""Read PyTorch ``torch.save`` files into numpy arrays without importing torch.

Both serialisations are supported: the zip container (torch >= 1.6) and the legacy stream (older
checkpoints, such as torchvision's 2019 MnasNet weights). Unpickling is restricted to containers,
tensors and storages, so a weight file cannot run code: any other global is refused with its name.
"""

import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["TorchFileError", "load_torch_file"]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class TorchFileError(ValueError):
    """The file is not a readable ``torch.save`` file, or holds objects other than tensors."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A flat typed buffer, filled lazily from the file."""

    def __init__(self, storage_type: _StorageType, reader: Callable[[], bytes]) -> None:
        self.storage_type = storage_type
        self._reader = reader
        self._array = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self._reader()
            if self.storage_type.dtype == "bfloat16":
                as_u32 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                self._array = as_u32.view(np.float32)
            else:
                self._array = np.frombuffer(raw, dtype=np.dtype(self.storage_type.dtype).newbyteorder("<"))
        return self._array


class _LazyTensor:
    """A tensor whose storage bytes may come later in the stream (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        flat = self.storage.array
        if not self.size:
            return np.array(flat[self.offset])
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if min(self.size) > 0 and needed > flat.size:
            raise TorchFileError(
                f"tensor of shape {self.size} reads past its storage ({flat.size} elements): truncated file?"
            )
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor(
    storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *unused
) -> _LazyTensor:
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: _LazyTensor, *unused) -> _LazyTensor:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, persistent_load: Callable) -> None:
        super().__init__(file)
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(
            f"refusing to unpickle '{module}.{name}': only tensors and containers are allowed in weight files"
        )

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent_load(pid)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TorchFileError(f"'{path}' is a zip file without data.pkl: not a torch.save file")
        root = pkl[0][: -len("data.pkl")]
        storages: Dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            if not isinstance(pid, tuple) or pid[0] != "storage":
                raise TorchFileError(f"unsupported persistent id {pid!r} in '{path}'")
            storage_type, key = pid[1], str(pid[2])
            if not isinstance(storage_type, _StorageType):
                raise TorchFileError(f"unsupported storage type {storage_type!r} in '{path}'")
            if key not in storages:
                member = f"{root}data/{key}"
                storages[key] = _Storage(storage_type, lambda m=member: zf.read(m))
            return storages[key]

        with zf.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(f, persistent_load).load()
        return _materialise(obj)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != _LEGACY_MAGIC:
            raise TorchFileError(f"'{path}' is neither a zip nor a legacy torch.save file")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        roots: Dict[str, _Storage] = {}
        views = []

        def persistent_load(pid: Any) -> Any:
            if not isinstance(pid, tuple) or pid[0] != "storage":
                raise TorchFileError(f"unsupported persistent id {pid[0]!r} in '{path}'")
            storage_type, key, _location, _numel, view = pid[1], str(pid[2]), pid[3], pid[4], pid[5]
            if key not in roots:
                roots[key] = _Storage(storage_type, lambda: b"")
            if view is None:
                return roots[key]
            view_key, offset, size = view
            sub = _Storage(storage_type, lambda: b"")
            views.append((sub, key, offset, size))
            return sub

        obj = _RestrictedUnpickler(f, persistent_load).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storage = roots[str(key)]
            raw = f.read(numel * storage.storage_type.itemsize)
            if len(raw) != numel * storage.storage_type.itemsize:
                raise TorchFileError(f"'{path}' is truncated (storage {key} is short)")
            storage._reader = lambda r=raw: r
        for sub, key, offset, size in views:
            sub._array = roots[key].array[offset : offset + size]
        return _materialise(obj)


def _materialise(obj: Any) -> Any:
    """Turn the unpickled tree into plain dicts/lists of numpy arrays."""
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    return obj


def load_torch_file(path: str) -> Any:
    """Load a ``torch.save`` file; tensors become numpy arrays.

    Args:
        path: the file.

    Returns:
        The saved object (typically an ``OrderedDict`` state dict).

    Raises:
        TorchFileError: not a torch file, truncated, or holding non-tensor objects.
    """
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError, TypeError, ValueError) as err:
        raise TorchFileError(f"cannot read torch file '{path}' (truncated or corrupted?): {err}") from err
