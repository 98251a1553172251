"""Weight files: reading ``.ckpt``, ``.safetensors`` and PyTorch files into numpy arrays, and writing them.

Nothing here knows a model architecture: recognising a state-dict layout, renaming it and loading it into a
model is :mod:`mindcv.models.checkpoint`, which re-exports the names defined here.

Guarantees of :func:`read_checkpoint`, the one function every loader goes through (``create_model``,
``train.py --resume``, ``validate.py``, ``infer.py``, ``export.py``, ``mindcv-convert``), for any file,
crafted ones included:

* No code from the file runs. PyTorch files are read by :mod:`mindcv.io.torch_pickle`, whose
  restricted unpickler is the only unpickling in the package (its docstring lists what it checks).
  ``.ckpt`` and ``.safetensors`` files are not pickles.
* Every failure of any reader is a :class:`CheckpointError` naming the file. That includes a missing,
  empty, truncated, corrupted or crafted file, and errors such as MemoryError, RecursionError,
  OverflowError, UnicodeDecodeError, zipfile, struct or protobuf errors, and a ``mindcv_meta`` entry
  that is not a JSON object. There is no interpreter crash and no hang.
* ``.ckpt`` files are parsed here with MindSpore's own protobuf schema and decoded with numpy. They are
  *not* handed to ``mindspore.load_checkpoint``: given an element whose ``tensor_content`` is longer
  than its ``dims`` imply, MindSpore 2.10's ``Tensor_.convert_bytes_to_tensor`` copies all of it into
  the smaller buffer (a heap overflow that aborts the interpreter). Given a shorter one, it silently
  zero-fills the rest. Here every element must have a known type, dims >= 0, and exactly
  ``prod(dims) * itemsize`` bytes (summed over the chunks MindSpore splits large tensors into), and a
  ``crc_num`` trailer, when present, must match.
* ``.safetensors`` headers are validated before the library reads them: JSON object, known dtypes,
  shapes of ints >= 0, offsets inside the file whose span matches shape x dtype size, no overlaps.
* Tensor names are strings.

:func:`save_checkpoint` writes atomically (:func:`mindcv.io.atomic.atomic_path`).
"""

import binascii
import json
import os
import struct
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from ..errors import MindcvError
from .atomic import atomic_path
from .finite import find_non_finite
from .torch_pickle import TorchFileError, load_torch_file

__all__ = [
    "CheckpointError",
    "NonFiniteWeightsError",
    "NATIVE_EXTENSIONS",
    "META_KEY",
    "find_non_finite",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "cell_metadata",
    "model_state_dict",
    "numpy_dtype",
]

META_KEY = "mindcv_meta"  # JSON string stored with every checkpoint this package writes
_TORCH_EXTS = (".pth", ".pt", ".bin", ".tar")
_SUPPORTED_EXTS = (".ckpt", ".safetensors") + _TORCH_EXTS


class CheckpointError(MindcvError, ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


class NonFiniteWeightsError(CheckpointError):
    """Floating-point weights holding NaN or Inf (refused at load: a NaN network can output finite logits)."""

    def __init__(self, source: str, tensors: List[Tuple[str, int]]) -> None:
        self.source, self.tensors = source, list(tensors)
        shown = ", ".join(f"{name} ({count} non-finite values)" for name, count in self.tensors[:5])
        more = f", ... ({len(self.tensors) - 5} more)" if len(self.tensors) > 5 else ""
        super().__init__(
            f"checkpoint '{source}' holds NaN/Inf weights in {len(self.tensors)} tensor(s): {shown}{more}; "
            "refusing to load them (the training run that wrote it diverged?)"
        )

    def __reduce__(self):
        return type(self), (self.source, self.tensors)


# ---------------------------------------------------------------------------------------------------
# reading
def read_checkpoint(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Read a weight file into numpy arrays.

    Args:
        path: a ``.ckpt``, ``.safetensors``, ``.pth``, ``.pt``, ``.bin`` or ``.tar`` file.

    Returns:
        ``(tensors, metadata)``: the arrays by name, and the non-tensor entries (for files written by
        this package, the decoded ``mindcv_meta`` JSON is merged into the metadata).

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupted, crafted or of an unknown kind;
            whatever went wrong in whichever reader, this is the only exception type, and it names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path '{path}' is not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file '{path}' is empty")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _SUPPORTED_EXTS:
        raise CheckpointError(
            f"checkpoint '{path}' has an unsupported extension '{ext}'; valid: {', '.join(_SUPPORTED_EXTS)}"
        )
    try:
        if ext == ".ckpt":
            tensors, meta = _read_ms_ckpt(path)
        elif ext == ".safetensors":
            tensors, meta = _read_safetensors(path)
        else:
            tensors, meta = _read_torch(path)
        if not tensors:
            raise CheckpointError(f"checkpoint '{path}' contains no tensors")
        if META_KEY in meta:
            meta.update(_decode_meta(path, meta.pop(META_KEY)))
    except CheckpointError as err:
        if path in str(err):
            raise
        raise CheckpointError(f"cannot read checkpoint '{path}': {err}") from err
    except TorchFileError as err:  # it names the file and the record
        raise CheckpointError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - whatever a crafted file triggers in any reader is one error type
        raise CheckpointError(
            f"cannot read checkpoint '{path}' (truncated or corrupted?): {type(err).__name__}: {_clip(str(err))}"
        ) from err
    return tensors, meta


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _decode_meta(path: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, str):
        raise CheckpointError(f"checkpoint '{path}': '{META_KEY}' is a {type(value).__name__}, not a JSON string")
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"checkpoint '{path}': '{META_KEY}' is not valid JSON ({_clip(str(err))})") from None
    if not isinstance(decoded, dict):
        raise CheckpointError(f"checkpoint '{path}': '{META_KEY}' is a JSON {type(decoded).__name__}, not an object")
    problem = _metadata_problem(decoded)
    if problem:
        raise CheckpointError(f"checkpoint '{path}': invalid metadata: {problem}")
    return decoded


def _is_int(value: Any, low: int = 1) -> bool:
    return type(value) is int and value >= low


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and np.isfinite(value)


# what the readers of this package's metadata (validate.py, infer.py, export.py, create_model) rely on
_MAX_IMAGE_SIDE = 8192  # a recorded size beyond this is a crafted file, not a model input
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "pilcubic")
_EVAL_TRANSFORM_CHECKS = {
    "image_resize": (lambda v: _is_int(v) and v <= _MAX_IMAGE_SIDE, f"an integer in [1, {_MAX_IMAGE_SIDE}]"),
    "resize_size": (lambda v: _is_int(v) and v <= _MAX_IMAGE_SIDE, f"an integer in [1, {_MAX_IMAGE_SIDE}]"),
    "crop_pct": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "interpolation": (lambda v: v in _INTERPOLATIONS, f"one of {', '.join(_INTERPOLATIONS)}"),
    "mean": (lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_number(x) for x in v), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_number(x) and x > 0 for x in v), "numbers > 0"),
}
_METADATA_CHECKS = {
    "num_classes": (_is_int, "an integer >= 1"),
    "class_names": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v),
        "a list of distinct strings",
    ),
    "width_mult": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "stem_size": (_is_int, "an integer >= 1"),
    "num_features": (_is_int, "an integer >= 1"),
    "in_channels": (_is_int, "an integer >= 1"),
    "model": (lambda v: isinstance(v, str) and "." not in v, "a model name without a weights tag"),
    "arch": (lambda v: isinstance(v, str), "a string"),
}


def _metadata_problem(meta: Dict[str, Any]) -> Optional[str]:
    """Why this package's metadata cannot be used as it is (a crafted or damaged file), or None."""
    for key, (valid, text) in _METADATA_CHECKS.items():
        if meta.get(key) is not None and not valid(meta[key]):
            return f"'{key}' must be {text}, got {_clip(repr(meta[key]))}"
    transform = meta.get("eval_transform")
    if transform is None:
        return None
    if not isinstance(transform, dict):
        return f"'eval_transform' must be an object, got {_clip(repr(transform))}"
    for key, value in transform.items():
        if key not in _EVAL_TRANSFORM_CHECKS:
            return f"unknown 'eval_transform' entry '{_clip(str(key))}' (valid: {', '.join(_EVAL_TRANSFORM_CHECKS)})"
        valid, text = _EVAL_TRANSFORM_CHECKS[key]
        if value is not None and not valid(value):
            return f"'eval_transform.{key}' must be {text}, got {_clip(repr(value))}"
    mean, std = transform.get("mean"), transform.get("std")
    if mean is not None and std is not None and len(mean) != len(std):
        return f"'eval_transform' has {len(mean)} mean values but {len(std)} std values"
    return None


# MindSpore .ckpt element types (mindspore.train.serialization.tensor_to_ms_type) -> numpy; 'str' holds strings
_CKPT_DTYPES = {
    "Int8": np.int8,
    "UInt8": np.uint8,
    "Int16": np.int16,
    "UInt16": np.uint16,
    "Int32": np.int32,
    "UInt32": np.uint32,
    "Int64": np.int64,
    "UInt64": np.uint64,
    "Float16": np.float16,
    "Float32": np.float32,
    "Float64": np.float64,
    "Bool": np.bool_,
}
_MAX_ELEMENTS = 2**31
_MAX_NDIM = 32
_MAX_PARAMETER_NAME = 1024  # mindspore.Parameter refuses longer names


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a MindSpore type name (``"Float32"``, ``"BFloat16"``: ``.ckpt`` element types and
    ``str(parameter.dtype)``).

    Args:
        name: the MindSpore type name.

    Returns:
        The dtype (MindSpore's numpy ``bfloat16`` extension type for ``"BFloat16"``).

    Raises:
        CheckpointError: a type weights are never stored in.
    """
    if name == "BFloat16":
        from mindspore.common.np_dtype import bfloat16  # the dtype MindSpore's asnumpy() returns

        return np.dtype(bfloat16)
    if name not in _CKPT_DTYPES:
        raise CheckpointError(f"unsupported tensor type {_clip(repr(name), 40)}")
    return np.dtype(_CKPT_DTYPES[name])


def _read_ms_ckpt(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Parse a MindSpore .ckpt with MindSpore's protobuf schema; validate every element; decode with numpy.

    Decodes exactly like ``mindspore.load_checkpoint`` for valid files (consecutive elements of one tag are
    the chunks of one tensor; dims ``[0]`` is a scalar; type ``str`` is a UTF-32 string), but never hands
    MindSpore an element whose byte count disagrees with its dims (see the module docstring).
    """
    from mindspore.train.checkpoint_pb2 import Checkpoint

    with open(path, "rb") as f:
        content = f.read()
    if content[-17:-10] == b"crc_num":  # written by save_checkpoint(crc_check=True)
        expected_crc = int.from_bytes(content[-10:], byteorder="big")
        content = content[:-17]
        if binascii.crc32(content) != expected_crc:
            raise CheckpointError(f"checkpoint '{path}' fails its CRC check (corrupted)")
    proto = Checkpoint()
    proto.ParseFromString(content)
    elements = list(proto.value)
    tensors: Dict[str, np.ndarray] = {}
    meta: Dict[str, Any] = {}
    start = 0
    while start < len(elements):
        tag = elements[start].tag
        stop = start + 1
        while stop < len(elements) and elements[stop].tag == tag:
            stop += 1
        if tag in tensors or tag in meta:
            raise CheckpointError(f"checkpoint '{path}': '{_clip(tag, 80)}' appears twice")
        try:
            value = _decode_ckpt_value(elements[start:stop])
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint '{path}': element '{_clip(tag, 80)}': {err}") from None
        if isinstance(value, str):
            meta[tag] = value
        elif 0 < len(tag.strip()) <= _MAX_PARAMETER_NAME:
            tensors[tag] = value
        else:
            raise CheckpointError(f"checkpoint '{path}': a tensor name of {len(tag)} characters (1 to 1024 allowed)")
        start = stop
    return tensors, meta


def _decode_ckpt_value(chunks: List[Any]) -> Any:
    if any(chunk.WhichOneof("value") != "tensor" for chunk in chunks):
        raise CheckpointError("not a plain tensor (map parameters are not supported)")
    kinds = {(chunk.tensor.tensor_type, tuple(chunk.tensor.dims)) for chunk in chunks}
    if len(kinds) != 1:
        raise CheckpointError(f"its {len(chunks)} chunks disagree on type or dims")
    type_name, dims = kinds.pop()
    data = b"".join(chunk.tensor.tensor_content for chunk in chunks)
    if type_name == "str":
        if len(chunks) != 1 or not data or len(data) % 4:
            raise CheckpointError(f"a string record of {len(data)} bytes (not a UTF-32 string)")
        return str(np.frombuffer(data, "U" + str(len(data) // 4))[0])
    dtype = numpy_dtype(type_name)
    if len(dims) > _MAX_NDIM or any(d < 0 for d in dims):
        raise CheckpointError(f"invalid dims {_clip(str(list(dims)), 80)}")
    shape = () if dims == (0,) else dims  # MindSpore's convention for a scalar
    numel = 1
    for d in shape:
        numel *= d
    if numel > _MAX_ELEMENTS:
        raise CheckpointError(f"dims {list(dims)} have {numel} elements, more than {_MAX_ELEMENTS}")
    if len(data) != numel * dtype.itemsize:
        raise CheckpointError(
            f"holds {len(data)} bytes but dims {list(dims)} of {type_name} need {numel * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


_SAFETENSORS_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _check_safetensors_header(path: str) -> None:
    """Validate a .safetensors header (sizes, dtypes, shapes, offsets) before the library reads the file."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError("shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_SAFETENSORS_MAX_HEADER, file_size - 8):
            raise CheckpointError(f"header length {header_len} exceeds the file ({file_size} bytes)")
        header = json.loads(f.read(header_len).decode("utf-8"))
    if not isinstance(header, dict):
        raise CheckpointError("the header is not a JSON object")
    data_size = file_size - 8 - header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError("__metadata__ is not a map of strings")
            continue
        where = f"tensor '{_clip(name, 80)}'"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: entry is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _SAFETENSORS_SIZES:
            raise CheckpointError(f"{where}: unsupported dtype {_clip(repr(dtype), 40)}")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape {_clip(repr(shape), 80)} is not a list of integers >= 0")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise CheckpointError(f"{where}: data offsets {_clip(repr(offsets), 80)} lie outside the file")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _SAFETENSORS_SIZES[dtype]:
            raise CheckpointError(
                f"{where}: {offsets[1] - offsets[0]} bytes do not hold shape {shape} of {dtype} "
                f"({numel * _SAFETENSORS_SIZES[dtype]} bytes)"
            )
        spans.append((offsets[0], offsets[1], where))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{first} and {second} overlap")


def _read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    from safetensors import safe_open

    _check_safetensors_header(path)
    tensors = {}
    with safe_open(path, framework="np") as f:
        meta = dict(f.metadata() or {})
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
    return tensors, meta


def _read_torch(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    obj = load_torch_file(path)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    bad_names = [k for k in tensors if not isinstance(k, str)]
    if bad_names:
        raise CheckpointError(f"'{path}': tensor names must be strings, got {_clip(repr(bad_names[:3]), 80)}")
    meta = {k: v for k, v in obj.items() if not isinstance(v, np.ndarray)}
    return tensors, meta


NATIVE_EXTENSIONS = (".ckpt", ".safetensors")  # the formats this package writes, with its metadata


def read_checkpoint_metadata(path: str) -> Dict[str, Any]:
    """Metadata stored with a checkpoint written by this package (``{}`` for foreign or PyTorch files)."""
    if not path or not path.endswith(NATIVE_EXTENSIONS):
        return {}
    return read_checkpoint(path)[1]


# ---------------------------------------------------------------------------------------------------
# writing
def model_state_dict(model: nn.Cell) -> Dict[str, np.ndarray]:
    """All parameters of a model (BN moving statistics included) as numpy arrays.

    Args:
        model: any cell.

    Returns:
        The arrays by parameter name.
    """
    return {p.name: p.asnumpy() for p in model.get_parameters()}


def cell_metadata(cell: nn.Cell) -> Dict[str, Any]:
    """What a model says rebuilds it (its ``checkpoint_metadata()``; ``{}`` for a cell without one).

    The protocol keeps this file-format layer free of model code: a model class describes itself.
    """
    describe = getattr(cell, "checkpoint_metadata", None)
    return dict(describe()) if callable(describe) else {}


def save_checkpoint(
    model_or_params: Any,
    path: str,
    metadata: Optional[Dict[str, Any]] = None,
    extra_tensors: Optional[Dict[str, np.ndarray]] = None,
) -> str:
    """Write weights atomically (a crash never leaves a half-written file at ``path``).

    Args:
        model_or_params: an ``nn.Cell`` or a dict of arrays by name.
        path: ``*.ckpt`` (MindSpore) or ``*.safetensors``.
        metadata: JSON-serialisable facts stored with the weights (e.g. ``bn_eps``, ``arch``, class names).
        extra_tensors: more arrays to store (e.g. optimizer state).

    A cell that describes itself (:func:`cell_metadata`) has that description stored too, under ``metadata``.

    Returns:
        ``path``.

    Raises:
        CheckpointError: ``path`` has another extension.
        AtomicWriteError: the file could not be written (full disk, read-only folder); ``path`` is unchanged.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in NATIVE_EXTENSIONS:
        raise CheckpointError(f"can only write .ckpt or .safetensors files, got '{path}'")
    tensors = model_state_dict(model_or_params) if isinstance(model_or_params, nn.Cell) else dict(model_or_params)
    tensors.update(extra_tensors or {})
    if isinstance(model_or_params, nn.Cell):
        metadata = {**cell_metadata(model_or_params), **(metadata or {})}
    meta_json = json.dumps(metadata or {})
    with atomic_path(path) as tmp:
        try:
            if ext == ".ckpt":
                # np.require, not np.ascontiguousarray: the latter turns 0-d state (momentum, beta powers) into (1,)
                items = [{"name": k, "data": Tensor(np.require(v, requirements="C"))} for k, v in tensors.items()]
                ms.save_checkpoint(items, tmp, append_dict={META_KEY: meta_json})
            else:
                from safetensors.numpy import save_file

                contiguous = {k: np.require(v, requirements="C") for k, v in tensors.items()}
                save_file(contiguous, tmp, metadata={META_KEY: meta_json})
        finally:
            # MindSpore writes '<name>.tmp' first and leaves it behind when the write fails (e.g. a full disk)
            leftover = os.path.splitext(tmp)[0] + ".tmp"
            if os.path.exists(leftover):
                os.remove(leftover)
    return path
