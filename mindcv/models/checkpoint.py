"""Reading, converting, checking and writing model weights.

Reads MindSpore ``.ckpt``, ``.safetensors`` and PyTorch ``.pth``/``.pt``/``.bin`` files (the latter
without needing torch), recognises the state-dict layout (this package, upstream mindcv, torchvision,
timm), renames it to this package's parameter names, and loads it with a strict check that reports
every missing key, unexpected key and shape mismatch in one error. MindSpore's own
``load_param_into_net(strict_load=True)`` only *returns* such lists.

Guarantees of :func:`read_checkpoint`, the one function every loader goes through (``create_model``,
``train.py --resume``, ``validate.py``, ``infer.py``, ``export.py``, ``mindcv-convert``), for any file,
crafted ones included:

* No code from the file runs. PyTorch files are read by :mod:`mindcv.utils.torch_pickle`, whose
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

:func:`load_state_dict_into` (used by ``create_model(checkpoint_path=...)``, :func:`load_model_checkpoint`,
pretrained weights and ``train.py --resume``) additionally refuses, with :class:`NonFiniteWeightsError`,
any floating-point tensor it is about to load that holds NaN or Inf. MindSpore's CPU ReLU maps NaN to 0,
so a network with NaN weights can still produce finite, wrong, logits.
"""

import binascii
import json
import logging
import os
import re
import struct
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from ..errors import MindcvError
from ..utils.finite import find_non_finite
from ..utils.torch_pickle import TorchFileError, load_torch_file
from .arch import format_arch_string
from .pretrained import CHECKPOINT_LAYOUTS, MINDCV_BN_EPS, TORCH_BN_EPS

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteWeightsError",
    "find_non_finite",
    "read_checkpoint",
    "read_checkpoint_metadata",
    "model_metadata",
    "detect_layout",
    "convert_state_dict",
    "source_bn_eps",
    "load_state_dict_into",
    "save_checkpoint",
    "model_state_dict",
    "META_KEY",
]

_logger = logging.getLogger(__name__)

META_KEY = "mindcv_meta"  # JSON string stored with every checkpoint this package writes
_TORCH_EXTS = (".pth", ".pt", ".bin", ".tar")
_SUPPORTED_EXTS = (".ckpt", ".safetensors") + _TORCH_EXTS


class CheckpointError(MindcvError, ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """Missing keys, unexpected keys or shape mismatches between a checkpoint and a model."""

    def __init__(self, source: str, missing: List[str], unexpected: List[str], mismatched: List[str]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"checkpoint '{source}' does not fit the model:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        parts.append("  (wrong architecture or width? pass the model the checkpoint was trained with)")
        super().__init__("\n".join(parts))


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


def _ckpt_dtype(name: str) -> Any:
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
    dtype = _ckpt_dtype(type_name)
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
# layouts
def detect_layout(keys: Iterable[str]) -> str:
    """Recognise which implementation wrote a state dict.

    Args:
        keys: the parameter names (an ``ema.`` or ``module.`` prefix is ignored).

    Returns:
        One of ``"mindcv"`` (this package), ``"mindcv_upstream"`` (mindspore-lab/mindcv's
        ``Mnasnet``), ``"torchvision"`` (``torchvision.models.MNASNet``) or ``"timm"``.

    Raises:
        CheckpointError: the layout is none of these.
    """
    keys = {_strip_prefixes(k) for k in keys}
    if "conv_stem.weight" in keys:
        if "bn1.moving_mean" in keys or "bn1.gamma" in keys:
            return "mindcv"
        if "bn1.running_mean" in keys or "bn1.weight" in keys:
            return "timm"
    if "layers.0.weight" in keys and any(k.startswith("layers.8.0.layers.") for k in keys):
        return "torchvision"
    if "features.0.weight" in keys and any(re.match(r"features\.8\.layers\.", k) for k in keys):
        return "mindcv_upstream"
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        f"unrecognised state-dict layout (first keys: {sample}); supported layouts: {', '.join(CHECKPOINT_LAYOUTS)}"
    )


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:  # wrappers nest in any order: 'network.module.x', 'module.module.x'
        stripped = False
        for prefix in ("module.", "network.", "_backbone."):
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def source_bn_eps(layout: str, meta: Optional[Dict[str, Any]] = None) -> Optional[float]:
    """BatchNorm epsilon the weights of a layout were trained with (``None`` if unknown).

    Args:
        layout: a layout name.
        meta: metadata read with the checkpoint; files written by this package record ``bn_eps``.

    Returns:
        The epsilon to build the model with, so converted outputs match the source framework.
    """
    if layout in ("torchvision", "timm"):
        return TORCH_BN_EPS
    if layout == "mindcv_upstream":
        return MINDCV_BN_EPS
    if meta and meta.get("bn_eps") is not None:
        eps = meta["bn_eps"]
        # the model computes in float32: 1e-320 is positive here and 0 there
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < float(np.float32(eps)) < 1.0:
            raise CheckpointError(f"the checkpoint's recorded bn_eps {eps!r} is not a number in (0, 1)")
        return float(eps)
    return None


_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_TV_BLOCK = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}
_SEP_CONV = {
    "0": "conv_stem",
    "1": "bn1",
    "3": "blocks.0.0.conv_dw",
    "4": "blocks.0.0.bn1",
    "6": "blocks.0.0.conv_pw",
    "7": "blocks.0.0.bn2",
}
_B1_STAGE_REPEATS = (3, 3, 3, 2, 4, 1)  # upstream mindcv only implements MnasNet-B1


def _rename_torch_bn(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """weight/bias/running_* of every BatchNorm (a module with running_mean) -> MindSpore names."""
    bn_modules = {k[: -len(".running_mean")] for k in sd if k.endswith(".running_mean")}
    out = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if module in bn_modules and leaf in _TORCH_BN:
            leaf = _TORCH_BN[leaf]
        out[f"{module}.{leaf}"] = value
    return out


def _torchvision_name(key: str, head_idx: int) -> str:
    parts = key.split(".")
    if parts[0] == "classifier":
        return "classifier." + parts[-1]
    idx = int(parts[1])
    if idx < 8:
        return f"{_SEP_CONV[parts[1]]}.{parts[-1]}"
    if idx == head_idx:
        return "conv_head." + parts[-1]
    if idx == head_idx + 1:
        return "bn2." + parts[-1]
    # layers.{8+s}.{b}.layers.{j}.leaf
    return f"blocks.{idx - 7}.{parts[2]}.{_TV_BLOCK[parts[4]]}.{parts[-1]}"


def _upstream_name(key: str, n_blocks: int) -> str:
    parts = key.split(".")
    if parts[0] == "classifier":
        return key
    idx = int(parts[1])
    if idx < 8:
        return f"{_SEP_CONV[parts[1]]}.{parts[-1]}"
    if idx == 8 + n_blocks:
        return "conv_head." + parts[-1]
    if idx == 9 + n_blocks:
        return "bn2." + parts[-1]
    flat = idx - 8
    for stage, repeats in enumerate(_B1_STAGE_REPEATS):
        if flat < repeats:
            return f"blocks.{stage + 1}.{flat}.{_TV_BLOCK[parts[3]]}.{parts[-1]}"
        flat -= repeats
    raise CheckpointError(f"upstream mindcv key '{key}' is outside MnasNet-B1's 16 blocks")


def convert_state_dict(
    state_dict: Dict[str, np.ndarray], layout: Optional[str] = None, ema: bool = False
) -> Dict[str, np.ndarray]:
    """Rename a state dict of any supported layout to this package's parameter names.

    Args:
        state_dict: arrays by name.
        layout: the source layout; detected when ``None``.
        ema: take the EMA copy (``ema.``-prefixed names, as mindcv's TrainStep saves them).

    Returns:
        Arrays by native parameter name (optimizer state and other extras dropped).
    """
    if ema:
        ema_sd = {k[len("ema.") :]: v for k, v in state_dict.items() if k.startswith("ema.")}
        if not ema_sd:
            raise CheckpointError("ema=True but the checkpoint holds no 'ema.' parameters")
        state_dict = ema_sd
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("ema.")}
    stripped: Dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = _strip_prefixes(key)
        if name in stripped:  # 'module.x' and 'x' both present: which one is meant is unknowable
            raise CheckpointError(f"the checkpoint holds '{name}' twice (with and without a wrapper prefix)")
        stripped[name] = value
    state_dict = stripped
    layout = layout or detect_layout(state_dict)
    if layout not in CHECKPOINT_LAYOUTS:
        raise CheckpointError(f"unknown checkpoint layout '{layout}'; valid: {', '.join(CHECKPOINT_LAYOUTS)}")
    if layout == "mindcv":
        return {k: v for k, v in state_dict.items() if _is_model_key(k)}
    if layout == "timm":
        return _rename_torch_bn(state_dict)
    if layout == "torchvision":
        sd = _rename_torch_bn(state_dict)
        head_idx = max(int(k.split(".")[1]) for k in sd if k.startswith("layers.")) - 1
        return {_torchvision_name(k, head_idx): v for k, v in sd.items()}
    # upstream mindcv: the file may also hold optimizer moments, global_step, learning_rate ...
    sd = {k: v for k, v in state_dict.items() if k.startswith(("features.", "classifier."))}
    n_blocks = len({k.split(".")[1] for k in sd if ".layers." in k})
    if n_blocks != sum(_B1_STAGE_REPEATS):
        raise CheckpointError(f"upstream mindcv checkpoint has {n_blocks} inverted-residual blocks, MnasNet-B1 has 16")
    return {_upstream_name(k, n_blocks): v for k, v in sd.items()}


_MODEL_KEY_RE = re.compile(r"^(conv_stem|bn1|blocks|conv_head|bn2|classifier)\.")


def _is_model_key(key: str) -> bool:
    return bool(_MODEL_KEY_RE.match(key))


# ---------------------------------------------------------------------------------------------------
# loading into a model
def model_state_dict(model: nn.Cell) -> Dict[str, np.ndarray]:
    """All parameters of a model (BN moving statistics included) as numpy arrays."""
    return {p.name: p.asnumpy() for p in model.get_parameters()}


def _adapt_input_conv(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt a first-conv kernel trained on 3 channels to ``in_channels`` (timm's rule)."""
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    repeats = int(np.ceil(in_channels / weight.shape[1]))
    adapted = np.tile(weight, (1, repeats, 1, 1))[:, :in_channels]
    return adapted * (weight.shape[1] / float(in_channels))


def load_state_dict_into(
    model: nn.Cell,
    state_dict: Dict[str, np.ndarray],
    source: str = "<state dict>",
    first_conv: str = "conv_stem",
    classifier: str = "classifier",
    adapt: bool = True,
) -> None:
    """Copy native-named arrays into a model, strictly.

    Args:
        model: the target model.
        state_dict: arrays named like ``model``'s parameters (see :func:`convert_state_dict`).
        source: a name for the checkpoint in error messages.
        first_conv: prefix of the first convolution, adapted when the input channels differ.
        classifier: prefix of the classifier, re-initialised when the class count differs.
        adapt: allow those two adaptations (fine-tuning); when False any difference is an error.

    Raises:
        CheckpointMismatchError: missing keys, unexpected keys or shape mismatches, all listed.
        NonFiniteWeightsError: a floating-point tensor about to be loaded holds NaN or Inf (the first few
            are named with their count of non-finite values); the model is left unchanged.
    """
    params = {p.name: p for p in model.get_parameters()}
    state_dict = dict(state_dict)
    if adapt:
        head_keys = [k for k in state_dict if k.startswith(classifier + ".")]
        model_head = [k for k in params if k.startswith(classifier + ".")]
        if head_keys and (
            not model_head or any(state_dict[k].shape != params[k].shape for k in head_keys if k in params)
        ):
            old = state_dict[head_keys[0]].shape[0]
            _logger.info(
                "%s: classifier has %d classes, the model %s; keeping the model's fresh classifier",
                source,
                old,
                getattr(model, "num_classes", "?"),
            )
            for k in head_keys:
                state_dict.pop(k)
            for k in model_head:
                state_dict[k] = params[k].asnumpy()
        stem = first_conv + ".weight"
        if stem in state_dict and stem in params and state_dict[stem].shape != params[stem].shape:
            want, have = params[stem].shape, state_dict[stem].shape
            if want[0] == have[0] and want[2:] == have[2:]:
                _logger.info("%s: adapting %s from %d to %d input channels", source, stem, have[1], want[1])
                state_dict[stem] = _adapt_input_conv(state_dict[stem].astype(np.float32), want[1])
    # listed in model order, so the first entries shown are the ones nearest the input
    missing = [k for k in params if k not in state_dict]
    unexpected = sorted(set(state_dict) - set(params))
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(params[k].shape)})"
        for k in params
        if k in state_dict and tuple(state_dict[k].shape) != tuple(params[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    # cast first, then check: a float64 1e300 is finite until it becomes the model's float32
    with np.errstate(over="ignore", invalid="ignore"):
        cast = {
            name: np.ascontiguousarray(state_dict[name], dtype=_ckpt_dtype(str(param.dtype)))
            for name, param in params.items()
        }
    non_finite = find_non_finite(cast)
    if non_finite:
        raise NonFiniteWeightsError(source, non_finite)
    for name, param in params.items():
        param.set_data(Tensor(cast[name], param.dtype))


# ---------------------------------------------------------------------------------------------------
# writing
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

    Returns:
        ``path``.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".ckpt", ".safetensors"):
        raise CheckpointError(f"can only write .ckpt or .safetensors files, got '{path}'")
    tensors = model_state_dict(model_or_params) if isinstance(model_or_params, nn.Cell) else dict(model_or_params)
    tensors.update(extra_tensors or {})
    if isinstance(model_or_params, nn.Cell):
        metadata = {**model_metadata(model_or_params), **(metadata or {})}
    meta_json = json.dumps(metadata or {})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=directory)
    os.close(fd)
    try:
        if ext == ".ckpt":
            items = [{"name": k, "data": Tensor(np.ascontiguousarray(v))} for k, v in tensors.items()]
            ms.save_checkpoint(items, tmp, append_dict={META_KEY: meta_json})
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata={META_KEY: meta_json})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and MindSpore) would leave the file owner-only / read-only
        os.replace(tmp, path)
    finally:
        # MindSpore writes '<name>.tmp' first and leaves it behind when the write fails (e.g. a full disk)
        for leftover in (tmp, os.path.splitext(tmp)[0] + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


def model_metadata(model: nn.Cell) -> Dict[str, Any]:
    """What rebuilds ``model``'s architecture from a checkpoint: BN eps, classes, channels, width, architecture."""
    meta = {}
    for attr in ("bn_eps", "num_classes", "in_channels", "width_mult", "stem_size", "num_features"):
        if hasattr(model, attr):
            meta[attr] = getattr(model, attr)
    if isinstance(getattr(model, "model_name", None), str):
        meta["model"] = model.model_name
    if hasattr(model, "arch_def"):
        meta["arch"] = format_arch_string(model.arch_def)
    return meta
