"""``create_transforms``: the recipe's augmentations as MindSpore C++ vision ops (no Python in the hot path).

Every list starts with a decode step, :class:`DecodeImage`, as upstream mindcv's lists start with ``vision.Decode()``
(evaluation) or ``vision.RandomCropDecodeResize`` (training), so that code which removes or replaces the first
element (upstream's ``infer.py`` does ``transform_list.pop(0)``) removes the decode step and nothing else. Our
datasets decode in the source (so an unreadable file is reported by path and skipped, see ``create_dataset``), so
``create_loader`` drops that step from the pipeline: it costs nothing there.
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

import mindspore.dataset.transforms as T
import mindspore.dataset.vision as vision
from mindspore.dataset.vision import Inter

from ..errors import InvalidArgumentError
from . import auto_augment as python_policies
from .constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .image_folder import UnreadableImageError, decode_bytes, resolve_max_image_pixels

__all__ = [
    "create_transforms",
    "DecodeImage",
    "parse_auto_augment",
    "AUTO_AUGMENT_POLICIES",
    "INTERPOLATIONS",
]

CIFAR_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)
MNIST_MEAN = (0.1307 * 255,)
MNIST_STD = (0.3081 * 255,)

INTERPOLATIONS = {
    "nearest": Inter.NEAREST,
    "bilinear": Inter.BILINEAR,
    "bicubic": Inter.BICUBIC,
    "area": Inter.AREA,
    "pilcubic": Inter.PILCUBIC,
    # MindSpore's aliases, which upstream accepts too (it looks names up as ``Inter.<NAME>``)
    "linear": Inter.LINEAR,
    "cubic": Inter.CUBIC,
}
AUTO_AUGMENT_POLICIES = (
    "randaug[-m<magnitude 0..10>][-n<ops>][-mstd<std>][-mmax<max>][-inc1]  e.g. randaug-m9-mstd0.5",
    "autoaug / autoaugr  (AutoAugment, ImageNet policy)",
    "trivialaugwide  (TrivialAugment-Wide)",
    "3a[-mstd<std>]  (DeiT III's 3-Augment: solarize, desaturate or blur; Python op)",
    "augmix[-m<severity>][-w<width>][-d<depth>][-a<alpha>]  e.g. augmix-m3-w3 (AugMix; Python op)",
)
_RANDAUG_BINS = 31  # MindSpore/torchvision magnitude bins; timm magnitudes are on a 0..10 scale


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as the RGB uint8 ``(H, W, 3)`` array our decoder produces (grayscale, palette, CMYK -> RGB)."""
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


class DecodeImage:
    """The decode step at the head of every :func:`create_transforms` list.

    In a pipeline of :func:`create_dataset` images it has nothing to do (the source has decoded them, reporting
    unreadable files by path), and :func:`~mindcv.data.create_loader` removes it. Called on its own it accepts
    what code written for upstream mindcv feeds a transform list:

    * an already decoded image (a 2-D or 3-D array) is returned unchanged;
    * a PIL image becomes an RGB uint8 ``(H, W, 3)`` array;
    * encoded bytes (``bytes`` or a 1-D uint8 array, as ``mindspore.dataset.ImageFolderDataset`` yields) are
      decoded by the package's decoder: any format OpenCV reads, grayscale/CMYK/16-bit/alpha to RGB uint8, and
      an image whose header claims more than ``max_image_pixels`` pixels is refused without being decoded.

    Args:
        max_image_pixels: pixel limit for encoded input (default ``mindcv.data.image_folder.MAX_IMAGE_PIXELS``).

    Raises:
        UnreadableImageError: (on call) encoded bytes that cannot be decoded; the message gives the reason. A
            pipeline cannot skip a row from inside a map, which is why our datasets decode in the source.
        TypeError: (on call) input that is neither an image nor encoded bytes.
    """

    def __init__(self, max_image_pixels: Optional[int] = None) -> None:
        self.max_image_pixels = resolve_max_image_pixels(max_image_pixels)

    def __call__(self, img: Any) -> np.ndarray:
        if isinstance(img, Image.Image):
            return _pil_to_array(img)
        if isinstance(img, (bytes, bytearray, memoryview)):
            raw = bytes(img)
        elif isinstance(img, np.ndarray) and img.ndim == 1 and img.dtype == np.uint8:
            raw = img.tobytes()
        elif isinstance(img, np.ndarray) and img.ndim in (2, 3) and img.size:
            return img  # already decoded (our datasets, CIFAR/MNIST arrays)
        else:
            shape = f" of shape {img.shape} and dtype {img.dtype}" if isinstance(img, np.ndarray) else ""
            raise TypeError(
                f"DecodeImage expects encoded image bytes, a decoded (H, W[, C]) image array or a PIL image, "
                f"got {type(img).__name__}{shape}"
            )
        image, reason = decode_bytes(raw, self.max_image_pixels)
        if image is None:
            raise UnreadableImageError(f"<{len(raw)} bytes of encoded image>", reason)
        return image

    def __repr__(self) -> str:
        return f"DecodeImage(max_image_pixels={self.max_image_pixels})"


class _ArrayInput:
    """Runs the C++ implementation on a PIL image too (converted to an array first), as in the pipeline.

    MindSpore's geometric ops switch to a PIL implementation when given a PIL image, whose resampling differs
    from the C++ one. Upstream's ``infer.py`` pops the decode step and feeds a PIL image to the op after it, so
    that op (the first one after :class:`DecodeImage` in our lists) converts the image instead: the result is
    then the tensor the evaluation pipeline computes.
    """

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and isinstance(inputs[0], Image.Image):
            inputs = (_pil_to_array(inputs[0]),)
        return super().__call__(*inputs)


class _Resize(_ArrayInput, vision.Resize):
    """``vision.Resize`` that accepts a PIL image without changing its algorithm."""


class _RandomResizedCrop(_ArrayInput, vision.RandomResizedCrop):
    """``vision.RandomResizedCrop`` that accepts a PIL image without changing its algorithm."""


class _RandomCrop(_ArrayInput, vision.RandomCrop):
    """``vision.RandomCrop`` that accepts a PIL image without changing its algorithm."""


def _interpolation(name: str) -> Inter:
    try:
        return INTERPOLATIONS[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown interpolation '{name}'; valid: {', '.join(INTERPOLATIONS)}") from None


def _bad_policy(policy: str, why: str) -> ValueError:
    return ValueError(
        f"invalid auto_augment policy '{policy}' ({why}); valid policies:\n  " + "\n  ".join(AUTO_AUGMENT_POLICIES)
    )


def _independent_policy(policy: str, fill: Sequence[int]) -> Any:
    """The Python implementation of ``policy``, for the two augmented views of AugMix/JSD splits.

    With a dataset seed set (as every training script sets it), MindSpore seeds every C++ random op identically,
    so the same C++ policy mapped on two columns gives the two "augmented" views the same augmentation. The
    Python policies draw from Python's generator, which advances from one view to the next.
    """
    parts = policy.lower().split("-")
    name = parts[0]
    hparams = {"img_mean": tuple(fill)}
    if name.startswith("randaug"):
        if not any(p.startswith("inc") for p in parts[1:]):
            policy += "-inc1"  # the C++ RandAugment's family (torchvision's): posterize/solarize grow with magnitude
        return python_policies.rand_augment_transform(policy, hparams)
    if name in ("trivialaugwide", "trivialaugment"):
        return python_policies.trivial_augment_wide_transform("-".join(["trivialaugwide", *parts[1:]]), hparams)
    if name.startswith("augmix"):
        return python_policies.augment_and_mix_transform(policy, hparams)
    if name in ("autoaug", "autoaugr", "autoaugment", "3a"):
        return python_policies.auto_augment_transform(policy.replace("autoaugment", "autoaug"), hparams)
    parse_auto_augment(policy)  # raises the listing of valid policies
    raise InvalidArgumentError(f"auto_augment policy '{policy}' has no Python implementation for separate=True")


def parse_auto_augment(
    policy: str, interpolation: Inter = Inter.BILINEAR, fill: Sequence[int] = (124, 116, 104)
) -> Any:
    """Turn a timm-style policy string into a MindSpore augmentation op.

    ``randaug-m9-mstd0.5`` is RandAugment with 2 ops of magnitude 9/10 and, as in timm, a magnitude that
    varies per image (Gaussian, std 0.5, clipped to [0, mmax]); MindSpore's RandAugment has no magnitude
    noise, so it is realised as a uniform choice among RandAugment ops at 16 quantiles of that Gaussian.
    MindSpore's operation set is torchvision's, whose posterize/solarize strengths grow with magnitude
    (timm's ``inc1``).

    Args:
        policy: the policy string.
        interpolation: interpolation of the geometric ops.
        fill: fill value of the geometric ops (the ImageNet mean by default, as in timm).

    Returns:
        A MindSpore transform.

    Raises:
        ValueError: unknown policy or option; the message lists the valid ones.
    """
    parts = policy.lower().split("-")
    fill = tuple(int(v) for v in fill)
    if parts[0] in ("autoaug", "autoaugr", "autoaugment"):
        if len(parts) > 1:
            raise _bad_policy(policy, "autoaug takes no options")
        return vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, interpolation, fill)
    if parts[0] in ("trivialaugwide", "trivialaugment"):
        if len(parts) > 1:
            raise _bad_policy(policy, "trivialaugwide takes no options")
        return vision.TrivialAugmentWide(_RANDAUG_BINS, interpolation, fill)
    if parts[0] in ("3a", "augmix"):
        # no MindSpore op for these: the Python transforms of auto_augment.py, run in the map workers
        from .auto_augment import augment_and_mix_transform, auto_augment_transform

        hparams = {"img_mean": fill, "interpolation": interpolation}
        build = auto_augment_transform if parts[0] == "3a" else augment_and_mix_transform
        try:
            return build(policy.lower(), hparams)
        except ValueError as err:
            raise _bad_policy(policy, str(err)) from None
    if parts[0] != "randaug":
        raise _bad_policy(policy, f"unknown policy '{parts[0]}'")
    opts = {"m": 9.0, "n": 2, "mstd": 0.0, "mmax": 10.0, "inc": 1}
    for part in parts[1:]:
        key = next((k for k in ("mstd", "mmax", "inc", "m", "n") if part.startswith(k)), None)
        if key is None:
            raise _bad_policy(policy, f"unknown option '{part}'")
        try:
            opts[key] = float(part[len(key) :])
        except ValueError:
            raise _bad_policy(policy, f"option '{part}' needs a number") from None
    if not 0 <= opts["m"] <= opts["mmax"] or opts["n"] < 1 or opts["mstd"] < 0:
        raise _bad_policy(policy, "need 0 <= m <= mmax, n >= 1, mstd >= 0")
    if opts["inc"] != 1:
        raise _bad_policy(policy, "only the increasing-severity op set (inc1) exists in MindSpore")

    def op(m: float) -> Any:
        level = int(round(min(max(m, 0.0), opts["mmax"]) / 10.0 * (_RANDAUG_BINS - 1)))
        return vision.RandAugment(int(opts["n"]), level, _RANDAUG_BINS, interpolation, fill)

    if opts["mstd"] == 0:
        return op(opts["m"])
    quantiles = (np.arange(16) + 0.5) / 16
    from statistics import NormalDist

    magnitudes = [NormalDist(opts["m"], opts["mstd"]).inv_cdf(q) for q in quantiles]
    return T.RandomChoice([op(m) for m in magnitudes])


def _check_size(image_resize: Union[int, Sequence[int]]) -> Union[int, Tuple[int, int]]:
    """``image_resize`` as an int, or an ``(h, w)`` tuple as upstream accepts."""
    size = tuple(image_resize) if isinstance(image_resize, (list, tuple)) else (image_resize,)
    if len(size) not in (1, 2) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
        raise InvalidArgumentError(f"image_resize must be an integer or (height, width), got {image_resize!r}")
    if min(size) < 1:
        raise InvalidArgumentError(f"image_resize must be >= 1, got {image_resize!r}")
    return int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))


def _as_tuple(value: Union[float, Sequence[float]], n: int = 2) -> Tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * n


def _color_jitter(color_jitter: Union[float, Sequence[float]]) -> Any:
    values = [float(v) for v in color_jitter] if isinstance(color_jitter, (list, tuple)) else [float(color_jitter)] * 3
    if len(values) not in (3, 4) or min(values) < 0:
        raise InvalidArgumentError(f"color_jitter must be a number or 3/4 non-negative numbers, got {color_jitter}")
    b, c, s = values[:3]
    kwargs = dict(
        brightness=(max(0.0, 1 - b), 1 + b), contrast=(max(0.0, 1 - c), 1 + c), saturation=(max(0.0, 1 - s), 1 + s)
    )
    if len(values) == 4:
        kwargs["hue"] = (-values[3], values[3])
    return vision.RandomColorAdjust(**kwargs)


def _imagenet_train(
    image_resize: Union[int, Tuple[int, int]],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (0.75, 1.333),
    hflip: float = 0.5,
    vflip: float = 0.0,
    color_jitter: Optional[Union[float, Sequence[float]]] = None,
    interpolation: str = "bilinear",
    auto_augment: Optional[str] = None,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    re_prob: float = 0.0,
    re_scale: Sequence[float] = (0.02, 0.33),
    re_ratio: Sequence[float] = (0.3, 3.3),
    re_value: Union[float, str] = 0,
    re_max_attempts: int = 10,
    **unused: Any,
) -> Tuple[List[Any], List[Any], List[Any]]:
    inter = _interpolation(interpolation)
    primary = [
        DecodeImage(),
        _RandomResizedCrop(image_resize, scale=_as_tuple(scale), ratio=_as_tuple(ratio), interpolation=inter),
    ]
    if hflip > 0:
        primary.append(vision.RandomHorizontalFlip(prob=hflip))
    if vflip > 0:
        primary.append(vision.RandomVerticalFlip(prob=vflip))
    secondary = []
    if auto_augment:
        secondary.append(parse_auto_augment(auto_augment, inter, tuple(int(round(m)) for m in mean)))
    elif color_jitter:
        secondary.append(_color_jitter(color_jitter))
    final = [vision.Normalize(mean=list(mean), std=list(std)), vision.HWC2CHW()]
    if re_prob > 0:
        value = "random" if re_value in ("random", "pixel") else re_value
        final.append(
            vision.RandomErasing(
                prob=re_prob,
                scale=_as_tuple(re_scale),
                ratio=_as_tuple(re_ratio),
                value=value,
                max_attempts=re_max_attempts,
            )
        )
    return primary, secondary, final


def _imagenet_eval(
    image_resize: Union[int, Tuple[int, int]],
    crop_pct: float = DEFAULT_CROP_PCT,
    resize_size: Optional[int] = None,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    **unused: Any,
) -> List[Any]:
    if not 0 < crop_pct <= 1:
        raise InvalidArgumentError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if resize_size:
        resize = resize_size
    elif isinstance(image_resize, tuple) and image_resize[0] != image_resize[1]:
        resize = tuple(int(v / crop_pct) for v in image_resize)  # (h, w): both sides, as upstream
    else:  # the short side, keeping the aspect ratio
        resize = int((image_resize[0] if isinstance(image_resize, tuple) else image_resize) / crop_pct)
    return [
        DecodeImage(),
        _Resize(resize, interpolation=_interpolation(interpolation)),
        vision.CenterCrop(image_resize),
        vision.Normalize(mean=list(mean), std=list(std)),
        vision.HWC2CHW(),
    ]


def _small_images(
    dataset_name: str,
    image_resize: Union[int, Tuple[int, int]],
    is_training: bool,
    auto_augment: Optional[str],
    **kwargs: Any,
) -> List[Any]:
    mnist = dataset_name in ("mnist", "fashion_mnist")
    native = 28 if mnist else 32
    mean = kwargs.get("mean") or (MNIST_MEAN if mnist else CIFAR_MEAN)
    std = kwargs.get("std") or (MNIST_STD if mnist else CIFAR_STD)
    ops: List[Any] = [DecodeImage()]
    if is_training:
        ops.append(_RandomCrop(native, padding=2 if mnist else 4))
        if not mnist and kwargs.get("hflip", 0.5) > 0:
            ops.append(vision.RandomHorizontalFlip(prob=kwargs.get("hflip", 0.5)))
        if auto_augment:
            if mnist:
                raise InvalidArgumentError("auto_augment is for colour images; it is not available for MNIST")
            ops.append(
                parse_auto_augment(
                    auto_augment, _interpolation(kwargs.get("interpolation", "bilinear")), tuple(int(m) for m in mean)
                )
            )
    if image_resize != native:
        ops.append(_Resize(image_resize, interpolation=_interpolation(kwargs.get("interpolation", "bilinear"))))
    ops += [vision.Normalize(mean=list(mean), std=list(std)), vision.HWC2CHW()]
    if is_training and kwargs.get("re_prob", 0) > 0:
        ops.append(vision.RandomErasing(prob=kwargs["re_prob"]))
    return ops


def create_transforms(
    dataset_name: str = "",
    image_resize: Union[int, Sequence[int]] = 224,
    is_training: bool = False,
    auto_augment: Optional[str] = None,
    separate: bool = False,
    **kwargs: Any,
) -> Union[List[Any], Tuple[List[Any], List[Any], List[Any]]]:
    """The augmentation (training) or preprocessing (evaluation) ops of a dataset.

    Args:
        dataset_name: ``imagenet``/``""``/``demo``/any ImageFolder name, or ``cifar10``, ``cifar100``,
            ``mnist``, ``fashion_mnist`` (small-image variants).
        image_resize: output size: an int (square), or ``(height, width)``.
        is_training: training augmentation instead of evaluation preprocessing.
        auto_augment: a policy string (see :data:`AUTO_AUGMENT_POLICIES`); replaces colour jitter.
        separate: return ``(primary, secondary, final)`` lists (training, ImageNet-style only).
        **kwargs: ``scale``, ``ratio``, ``hflip``, ``vflip``, ``color_jitter`` (ImageNet-style training; default
            None = no colour jitter, as upstream; ``train.py``'s option defaults to 0.4), ``interpolation``,
            ``mean``, ``std`` (0-255 scale), ``re_prob``, ``re_scale``, ``re_ratio``, ``re_value``
            (a number, or ``"random"``/``"pixel"`` for per-pixel noise), ``re_max_attempts``,
            ``crop_pct``, ``resize_size`` (evaluation resize, overrides ``image_resize / crop_pct``).

    Returns:
        A list of ops whose first element is the decode step :class:`DecodeImage` (with ``separate``: three lists,
        the first starting with it). Applied in order, the list maps a decoded image, a PIL image or encoded
        bytes to a CHW float32 array; with the first element removed (upstream's ``infer.py``), a decoded or
        PIL image.
    """
    name = (dataset_name or "").lower()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    image_resize = _check_size(image_resize)
    if name in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        if separate:
            raise InvalidArgumentError(
                f"separate=True (augmentation splits) is only available for ImageNet-style datasets, not {name}"
            )
        return _small_images(name, image_resize, is_training, auto_augment, **kwargs)
    if not is_training:
        return _imagenet_eval(image_resize, **kwargs)
    primary, secondary, final = _imagenet_train(image_resize, auto_augment=auto_augment, **kwargs)
    if separate:
        if auto_augment:
            secondary = [
                _independent_policy(
                    auto_augment, tuple(int(round(m)) for m in kwargs.get("mean", IMAGENET_DEFAULT_MEAN))
                )
            ]
        return primary, secondary, final
    return primary + secondary + final
