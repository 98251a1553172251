"""AutoAugment, RandAugment, TrivialAugment-Wide and AugMix as Python transforms: upstream mindcv's API.

Papers: AutoAugment (Cubuk et al., arXiv:1805.09501), RandAugment (arXiv:1909.13719), TrivialAugment
(Mueller & Hutter, arXiv:2103.10158), AugMix (Hendrycks et al., arXiv:1912.02781). The operations and their
magnitude scales follow timm's ``auto_augment.py``, which upstream mindcv adapted.

Each transform takes one decoded image, a PIL image or an ``(H, W)`` / ``(H, W, 1|3)`` uint8 array, and
returns the same kind, shape and dtype. Random choices come from Python's ``random`` and NumPy's global
generator (as upstream), so seeding both (``random.seed``, ``np.random.seed``; ``mindcv.utils.set_seed`` does)
makes them reproducible. They are Python callables: in a ``mindspore.dataset`` pipeline they run in the Python
workers, which is slow; ``create_transforms(auto_augment=...)`` builds MindSpore's C++ ops instead for the
policies MindSpore has (see :func:`mindcv.data.transforms_factory.parse_auto_augment`).

Config strings (sections after the policy name, dash-separated, in any order):

* ``randaug[-m<magnitude>][-n<ops>][-w0][-mstd<std>][-mmax<max>][-inc<0|1>]``: default ``m`` 10, ``n`` 2,
  ``mstd`` 0.5 (``> 100``: uniform in [0, m]), ``mmax`` 10; ``w0`` picks ops with timm's weights; ``inc1``
  uses the ops whose severity grows with the magnitude.
* ``autoaug`` / ``autoaugr`` / ``3a`` ``[-mstd<std>]``: the ImageNet policy with posterize as in the paper,
  the same with increasing posterize, or timm's 3-op policy (solarize, desaturate, blur).
* ``trivialaugwide[-m<max magnitude>]``: default 31.
* ``augmix[-m<severity>][-w<width>][-d<depth>][-a<alpha>]``: default ``m3-w3-d-1-a1`` (depth -1: 1 to 3).

Differences from upstream, each a fix: a config string's ``mstd`` is honoured (upstream's default of 0.5
overrode it), ``inc0`` means off (upstream read any ``inc`` as on), posterize keeps ``bits`` bits as the
policies intend, TrivialAugment translates in both directions, AugMix returns uint8 images of the input's
kind (upstream returned floats, and failed on PIL images), and a bad string raises ``ValueError`` naming the
section and the valid ones (upstream: ``assert``).
"""

import random
import re
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = [
    "AugmentOp",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "AugMixAugment",
    "auto_augment_policy",
    "auto_augment_transform",
    "rand_augment_ops",
    "rand_augment_transform",
    "trivial_augment_wide_ops",
    "trivial_augment_wide_transform",
    "augmix_ops",
    "augment_and_mix_transform",
]

_LEVEL_DENOM = 10.0  # magnitudes are on a 0..10 scale (TrivialAugment: 0..magnitude_max)
_FILL = (128, 128, 128)
_HPARAMS_DEFAULT: Dict[str, Any] = {"img_mean": _FILL}
_RANDOM_INTERPOLATION = ("bilinear", "bicubic")  # one drawn per call when hparams give none (timm)
# MindSpore's Inter names (and strings) -> the PIL filters an affine transform supports
_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "linear": Image.BILINEAR,
    "area": Image.BILINEAR,
    "antialias": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "cubic": Image.BICUBIC,
    "pilcubic": Image.BICUBIC,
}

Image_ = Union[Image.Image, np.ndarray]


# ------------------------------------------------------------------------------------------- images


def _to_pil(img: Image_) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        if img.ndim == 2:
            return Image.fromarray(img)
        if img.ndim == 3 and img.shape[2] in (1, 3):
            return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    shape = f" of shape {img.shape} and dtype {img.dtype}" if isinstance(img, np.ndarray) else ""
    raise TypeError(
        f"auto-augment transforms take a decoded image: a PIL image or a uint8 (H, W) / (H, W, 1) / (H, W, 3) "
        f"array, got {type(img).__name__}{shape}"
    )


def _like(result: Image.Image, original: Image_) -> Image_:
    """``result`` in the form of ``original`` (PIL stays PIL; an array keeps its shape and dtype)."""
    if isinstance(original, Image.Image):
        return result
    return np.asarray(result, dtype=np.uint8).reshape(original.shape)


def _apply(img: Image_, fn: Callable[[Image.Image], Image.Image]) -> Image_:
    return _like(fn(_to_pil(img)), img)


def _resample(value: Any) -> int:
    """A PIL filter from a name, a MindSpore ``Inter``, a PIL filter, or a list of them (one drawn)."""
    if isinstance(value, (list, tuple)):
        value = random.choice(value)
    if isinstance(value, int) and not hasattr(value, "name"):
        return value  # already a PIL filter
    name = str(getattr(value, "name", value)).lower()
    if name not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {value!r}; valid: {', '.join(_RESAMPLE)}")
    return _RESAMPLE[name]


def _fill(img: Image.Image, fill: Sequence[int]) -> Union[int, Tuple[int, ...]]:
    fill = tuple(int(round(v)) for v in fill)
    return fill[0] if img.mode in ("L", "P") else fill


# ------------------------------------------------------------------------------------------- operations


def _affine(img: Image.Image, matrix: Tuple[float, ...], resample: Any, fill_value: Sequence[int]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=_resample(resample), fillcolor=_fill(img, fill_value))


def shear_x(img: Image.Image, factor: float, **kwargs: Any) -> Image.Image:
    return _affine(img, (1, factor, 0, 0, 1, 0), **kwargs)


def shear_y(img: Image.Image, factor: float, **kwargs: Any) -> Image.Image:
    return _affine(img, (1, 0, 0, factor, 1, 0), **kwargs)


def translate_x_rel(img: Image.Image, pct: float, **kwargs: Any) -> Image.Image:
    return _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), **kwargs)


def translate_y_rel(img: Image.Image, pct: float, **kwargs: Any) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), **kwargs)


def rotate(img: Image.Image, degrees: float, resample: Any, fill_value: Sequence[int]) -> Image.Image:
    return img.rotate(degrees, resample=_resample(resample), fillcolor=_fill(img, fill_value))


def auto_contrast(img: Image.Image, **_: Any) -> Image.Image:
    return ImageOps.autocontrast(img)


def invert(img: Image.Image, **_: Any) -> Image.Image:
    return ImageOps.invert(img)


def equalize(img: Image.Image, **_: Any) -> Image.Image:
    return ImageOps.equalize(img)


def solarize(img: Image.Image, thresh: int, **_: Any) -> Image.Image:
    return ImageOps.solarize(img, thresh)


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # keeping no bit leaves 0 everywhere; Pillow refuses bits=0
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, int(bits_to_keep))


def _enhance(kind: Callable[[Image.Image], Any]) -> Callable[..., Image.Image]:
    def op(img: Image.Image, factor: float, **_: Any) -> Image.Image:
        return kind(img).enhance(factor)

    return op


color = _enhance(ImageEnhance.Color)
contrast = _enhance(ImageEnhance.Contrast)
brightness = _enhance(ImageEnhance.Brightness)
sharpness = _enhance(ImageEnhance.Sharpness)


def desaturate(img: Image.Image, factor: float, **_: Any) -> Image.Image:
    return ImageEnhance.Color(img).enhance(min(1.0, max(0.0, 1.0 - factor)))


def gaussian_blur_rand(img: Image.Image, factor: float, **_: Any) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0 * factor)))


# ------------------------------------------------------------------------------------------ magnitudes


def _negate_half(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _scale(level: float, hparams: Dict[str, Any], ra_range: float, ta_range: float) -> float:
    """``level`` mapped to [0, ra_range] (RandAugment/AutoAugment) or [0, ta_range] (TrivialAugment-Wide)."""
    if hparams.get("trivialaugwide", False):
        return level / hparams.get("magnitude_max", 31) * ta_range
    return level / _LEVEL_DENOM * ra_range


def _rotate_level(level: float, hparams: Dict[str, Any]) -> Tuple[float]:
    return (_negate_half(_scale(level, hparams, 30.0, 135.0)),)


def _shear_level(level: float, hparams: Dict[str, Any]) -> Tuple[float]:
    return (_negate_half(_scale(level, hparams, 0.3, 0.99)),)


def _translate_level(level: float, hparams: Dict[str, Any]) -> Tuple[float]:
    default_pct = 0.15 if hparams.get("trivialaugwide", False) else 0.45
    return (_negate_half(_scale(level, hparams, 1.0, 1.0) * hparams.get("translate_pct", default_pct)),)


def _enhance_level(level: float, hparams: Dict[str, Any]) -> Tuple[float]:
    if hparams.get("trivialaugwide", False):
        return (_scale(level, hparams, 0.0, 1.99) + 0.01,)  # [0.01, 2.0]
    return (level / _LEVEL_DENOM * 1.8 + 0.1,)  # [0.1, 1.9]


def _enhance_increasing_level(level: float, hparams: Dict[str, Any]) -> Tuple[float]:
    # 1.0 changes nothing; the factor moves away from 1 (either way) as the level grows
    return (max(0.1, 1.0 + _negate_half(level / _LEVEL_DENOM * 0.9)),)


def _minmax_level(level: float, hparams: Dict[str, Any], min_val: float = 0.0, max_val: float = 1.0) -> Tuple[float]:
    return (max(min_val, min(max_val, min_val + (max_val - min_val) * level / _LEVEL_DENOM)),)


def _posterize_original_level(level: float, hparams: Dict[str, Any]) -> Tuple[int]:
    # bits kept: 4..8 (AutoAugment paper), TrivialAugment 2..8; severity decreases with the level
    if hparams.get("trivialaugwide", False):
        return (int(_scale(level, hparams, 0.0, 6.0)) + 2,)
    return (int(level / _LEVEL_DENOM * 4) + 4,)


def _posterize_level(level: float, hparams: Dict[str, Any]) -> Tuple[int]:
    if hparams.get("trivialaugwide", False):
        return _posterize_original_level(level, hparams)
    return (int(level / _LEVEL_DENOM * 4),)  # bits kept: 0..4


def _posterize_increasing_level(level: float, hparams: Dict[str, Any]) -> Tuple[int]:
    return (4 - _posterize_level(level, hparams)[0],)


def _solarize_level(level: float, hparams: Dict[str, Any]) -> Tuple[int]:
    return (int(_scale(level, hparams, 255.0, 255.0)),)  # threshold; severity decreases with the level


def _solarize_increasing_level(level: float, hparams: Dict[str, Any]) -> Tuple[int]:
    return (255 - _solarize_level(level, hparams)[0],)


# name -> (operation, level -> arguments)
_OPS: Dict[str, Tuple[Callable[..., Image.Image], Optional[Callable[..., tuple]]]] = {
    "AutoContrast": (auto_contrast, None),
    "Equalize": (equalize, None),
    "Invert": (invert, None),
    "Rotate": (rotate, _rotate_level),
    "Posterize": (posterize, _posterize_level),
    "PosterizeIncreasing": (posterize, _posterize_increasing_level),
    "PosterizeOriginal": (posterize, _posterize_original_level),
    "Solarize": (solarize, _solarize_level),
    "SolarizeIncreasing": (solarize, _solarize_increasing_level),
    "Color": (color, _enhance_level),
    "ColorIncreasing": (color, _enhance_increasing_level),
    "Contrast": (contrast, _enhance_level),
    "ContrastIncreasing": (contrast, _enhance_increasing_level),
    "Brightness": (brightness, _enhance_level),
    "BrightnessIncreasing": (brightness, _enhance_increasing_level),
    "Sharpness": (sharpness, _enhance_level),
    "SharpnessIncreasing": (sharpness, _enhance_increasing_level),
    "ShearX": (shear_x, _shear_level),
    "ShearY": (shear_y, _shear_level),
    "TranslateX": (translate_x_rel, _translate_level),
    "TranslateY": (translate_y_rel, _translate_level),
    "Desaturate": (desaturate, partial(_minmax_level, min_val=0.5, max_val=1.0)),
    "GaussianBlurRand": (gaussian_blur_rand, _minmax_level),
}
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


class AugmentOp:
    """One named operation applied with probability ``prob`` at ``magnitude`` (0..10; TrivialAugment 0..31).

    Args:
        name: one of the operation names (``"Rotate"``, ``"SolarizeIncreasing"``...).
        prob: probability of applying it.
        magnitude: its strength.
        hparams: ``img_mean`` (fill of the geometric ops), ``interpolation`` (a name, a MindSpore ``Inter``,
            or a list to draw from), ``magnitude_std`` (Gaussian noise on the magnitude per call; ``inf``:
            uniform in [0, magnitude]), ``magnitude_max`` (upper clip, default 10), ``translate_pct``.
    """

    def __init__(self, name: str, prob: float = 0.5, magnitude: float = 10, hparams: Optional[Dict] = None) -> None:
        if name not in _OPS:
            raise ValueError(f"unknown augmentation operation '{name}'; valid: {', '.join(_OPS)}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name}: prob must be in [0, 1], got {prob}")
        hparams = dict(hparams or _HPARAMS_DEFAULT)
        self.name = name
        self.aug_fn, self.level_fn = _OPS[name]
        self.prob = prob
        self.magnitude = magnitude
        self.hparams = hparams
        self.kwargs = (
            dict(
                fill_value=hparams.get("img_mean", _FILL), resample=hparams.get("interpolation", _RANDOM_INTERPOLATION)
            )
            if name in _GEOMETRIC
            else {}
        )
        self.magnitude_std = hparams.get("magnitude_std", 0)
        self.magnitude_max = hparams.get("magnitude_max", None)

    def __call__(self, img: Image_) -> Image_:
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        magnitude = self.magnitude
        if self.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        magnitude = max(0.0, min(magnitude, self.magnitude_max or _LEVEL_DENOM))
        args = self.level_fn(magnitude, self.hparams) if self.level_fn is not None else ()
        return _apply(img, lambda pil: self.aug_fn(pil, *args, **self.kwargs))

    def __repr__(self) -> str:
        return f"AugmentOp(name={self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


# -------------------------------------------------------------------------------------------- policies

# The ImageNet policy of the AutoAugment paper (Table 9), as 25 sub-policies of two (op, prob, magnitude).
_AA_IMAGENET = [
    [("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)],
    [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
    [("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)],
    [("Equalize", 0.4, 4), ("Rotate", 0.8, 8)],
    [("Solarize", 0.6, 3), ("Equalize", 0.6, 7)],
    [("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)],
    [("Rotate", 0.2, 3), ("Solarize", 0.6, 8)],
    [("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)],
    [("Rotate", 0.8, 8), ("Color", 0.4, 0)],
    [("Rotate", 0.4, 9), ("Equalize", 0.6, 2)],
    [("Equalize", 0.0, 7), ("Equalize", 0.8, 8)],
    [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
    [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
    [("Rotate", 0.8, 8), ("Color", 1.0, 2)],
    [("Color", 0.8, 8), ("Solarize", 0.8, 7)],
    [("Sharpness", 0.4, 7), ("Invert", 0.6, 8)],
    [("ShearX", 0.6, 5), ("Equalize", 1.0, 9)],
    [("Color", 0.4, 0), ("Equalize", 0.6, 3)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)],
    [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
    [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
]
_AA_POLICIES = {
    "autoaug": _AA_IMAGENET,
    "autoaugr": [[(n.replace("Original", "Increasing"), p, m) for n, p, m in sub] for sub in _AA_IMAGENET],
    "3a": [[("Solarize", 1.0, 5)], [("Desaturate", 1.0, 10)], [("GaussianBlurRand", 1.0, 10)]],
}


def auto_augment_policy(name: str = "autoaug", hparams: Optional[Dict] = None) -> List[List[AugmentOp]]:
    """The sub-policies of ``autoaug`` (paper), ``autoaugr`` (increasing posterize) or ``3a`` as op lists."""
    if name not in _AA_POLICIES:
        raise ValueError(f"unknown AutoAugment policy '{name}'; valid: {', '.join(_AA_POLICIES)}")
    hparams = hparams or _HPARAMS_DEFAULT
    return [[AugmentOp(*op, hparams=hparams) for op in sub] for sub in _AA_POLICIES[name]]


class AutoAugment:
    """Apply one sub-policy drawn uniformly from ``policy`` (a list of lists of :class:`AugmentOp`)."""

    def __init__(self, policy: List[List[AugmentOp]]) -> None:
        if not policy:
            raise ValueError("AutoAugment needs at least one sub-policy")
        self.policy = policy

    def __call__(self, img: Image_) -> Image_:
        sub_policy = random.choice(self.policy)

        def run(pil: Image.Image) -> Image.Image:
            for op in sub_policy:
                pil = op(pil)
            return pil

        return _apply(img, run)


_RAND_TRANSFORMS = [
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
]
_RAND_INCREASING_TRANSFORMS = [
    n + "Increasing" if n in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness") else n
    for n in _RAND_TRANSFORMS
]
# timm's experimental op weights for "w0" (roughly the paper's relative improvements)
_RAND_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3,
    "ShearX": 0.2,
    "ShearY": 0.2,
    "TranslateX": 0.1,
    "TranslateY": 0.1,
    "Color": 0.025,
    "Sharpness": 0.025,
    "AutoContrast": 0.025,
    "Solarize": 0.005,
    "Contrast": 0.005,
    "Brightness": 0.005,
    "Equalize": 0.005,
    "Posterize": 0.005,
    "Invert": 0,
}


def _choice_weights(transforms: Sequence[str]) -> np.ndarray:
    probs = np.array([_RAND_CHOICE_WEIGHTS_0[n.replace("Increasing", "")] for n in transforms], dtype=np.float64)
    return probs / probs.sum()


def rand_augment_ops(
    magnitude: float = 10, hparams: Optional[Dict] = None, transforms: Optional[Sequence[str]] = None
) -> List[AugmentOp]:
    """RandAugment's operations (each with probability 0.5) at ``magnitude``."""
    return _ops(0.5, magnitude, hparams, transforms)


def _ops(
    prob: float, magnitude: float, hparams: Optional[Dict], transforms: Optional[Sequence[str]]
) -> List[AugmentOp]:
    hparams = hparams or _HPARAMS_DEFAULT
    return [AugmentOp(name, prob=prob, magnitude=magnitude, hparams=hparams) for name in transforms or _RAND_TRANSFORMS]


class RandAugment:
    """Apply ``num_layers`` operations drawn from ``ops`` (with replacement, or by ``choice_weights`` without)."""

    def __init__(self, ops: List[AugmentOp], num_layers: int = 2, choice_weights: Optional[Sequence[float]] = None):
        if not ops or num_layers < 0:
            raise ValueError(f"RandAugment needs ops and num_layers >= 0, got {len(ops)} ops, {num_layers}")
        self.ops = ops
        self.num_layers = num_layers
        self.choice_weights = choice_weights

    def __call__(self, img: Image_) -> Image_:
        # indices rather than the ops: NumPy would try to make an array of the op objects
        picks = np.random.choice(
            len(self.ops), self.num_layers, replace=self.choice_weights is None, p=self.choice_weights
        )

        def run(pil: Image.Image) -> Image.Image:
            for i in picks:
                pil = self.ops[i](pil)
            return pil

        return _apply(img, run)


def trivial_augment_wide_ops(
    magnitude: float = 31, hparams: Optional[Dict] = None, transforms: Optional[Sequence[str]] = None
) -> List[AugmentOp]:
    """TrivialAugment-Wide's operations (always applied) at ``magnitude``."""
    return _ops(1.0, magnitude, hparams, transforms)


class TrivialAugmentWide:
    """Apply one operation drawn uniformly from ``ops``."""

    def __init__(self, ops: List[AugmentOp]) -> None:
        if not ops:
            raise ValueError("TrivialAugmentWide needs at least one op")
        self.ops = ops

    def __call__(self, img: Image_) -> Image_:
        return self.ops[np.random.choice(len(self.ops))](img)


_AUGMIX_TRANSFORMS = [
    "AutoContrast",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "Equalize",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
]


def augmix_ops(
    magnitude: float = 10, hparams: Optional[Dict] = None, transforms: Optional[Sequence[str]] = None
) -> List[AugmentOp]:
    """AugMix's operations (always applied) at ``magnitude``."""
    hparams = hparams or _HPARAMS_DEFAULT
    return [
        AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams) for name in transforms or _AUGMIX_TRANSFORMS
    ]


class AugMixAugment:
    """AugMix: ``width`` chains of ``depth`` random ops, mixed with Dirichlet(alpha) weights, then blended with
    the original by a Beta(alpha, alpha) factor.

    Args:
        ops: the operations to draw from.
        alpha: Dirichlet / Beta parameter.
        width: number of chains.
        depth: ops per chain; ``-1`` draws 1 to 3 per chain.
    """

    def __init__(self, ops: List[AugmentOp], alpha: float = 1.0, width: int = 3, depth: int = -1) -> None:
        if not ops or alpha <= 0 or width < 1 or (depth < 1 and depth != -1):
            raise ValueError(
                f"AugMix needs ops, alpha > 0, width >= 1 and depth >= 1 or -1, got {len(ops)} ops, alpha={alpha}, "
                f"width={width}, depth={depth}"
            )
        self.ops = ops
        self.alpha = alpha
        self.width = width
        self.depth = depth

    def __call__(self, img: Image_) -> Image_:
        pil = _to_pil(img)
        weights = np.float32(np.random.dirichlet([self.alpha] * self.width))
        m = np.float32(np.random.beta(self.alpha, self.alpha))
        original = np.asarray(pil, dtype=np.float32)
        mixed = np.zeros_like(original)
        for w in weights:
            depth = self.depth if self.depth > 0 else np.random.randint(1, 4)
            chain = pil
            for i in np.random.choice(len(self.ops), depth, replace=True):
                chain = self.ops[i](chain)
            mixed += w * np.asarray(chain, dtype=np.float32)
        mixed = np.clip(mixed, 0, 255).astype(np.uint8).astype(np.float32)
        out = np.clip(np.rint(original * (1 - m) + mixed * m), 0, 255).astype(np.uint8)
        return _like(Image.fromarray(out), img)


# ----------------------------------------------------------------------------------------- config strings

_SECTION = re.compile(r"-([a-z]+)(-?(?:\d+(?:\.\d*)?|\.\d+))?")


def _parse(configs: str, policies: Sequence[str], keys: Sequence[str]) -> Tuple[str, Dict[str, float]]:
    """``"randaug-m9-mstd0.5"`` -> ``("randaug", {"m": 9.0, "mstd": 0.5})``; a bad string raises ``ValueError``."""
    if not isinstance(configs, str):
        raise TypeError(f"the augmentation config must be a string, got {type(configs).__name__}")
    name, _, rest = configs.partition("-")
    if name not in policies:
        raise ValueError(f"augmentation config '{configs}': the policy must be one of {', '.join(policies)}")
    rest = "-" + rest if rest else ""
    sections: Dict[str, float] = {}
    pos = 0
    while pos < len(rest):
        match = _SECTION.match(rest, pos)
        if match is None or match.group(1) not in keys or match.group(2) is None:
            bad = rest[pos + 1 :].split("-")[0] or rest[pos:]
            raise ValueError(
                f"augmentation config '{configs}': bad section '{bad}'; valid sections for {name}: "
                + ", ".join(f"{k}<number>" for k in keys)
            )
        sections[match.group(1)] = float(match.group(2))
        pos = match.end()
    return name, sections


def _int(configs: str, key: str, value: float, minimum: int) -> int:
    if value != int(value) or value < minimum:
        raise ValueError(f"augmentation config '{configs}': '{key}' must be an integer >= {minimum}, got {value:g}")
    return int(value)


def rand_augment_transform(configs: str, hparams: Optional[Dict] = None) -> RandAugment:
    """RandAugment from a config string such as ``"randaug-m9-mstd0.5-inc1"`` (see the module docstring).

    Args:
        configs: the config string.
        hparams: see :class:`AugmentOp`; the string's ``mstd``/``mmax`` take precedence, then ``hparams``,
            then the default ``magnitude_std`` 0.5. Not modified.

    Returns:
        The transform.
    """
    _, s = _parse(configs, ("randaug",), ("m", "n", "w", "mstd", "mmax", "inc"))
    hparams = {"magnitude_std": 0.5, **(hparams or _HPARAMS_DEFAULT)}
    if "mstd" in s:
        hparams["magnitude_std"] = float("inf") if s["mstd"] > 100 else s["mstd"]
    if "mmax" in s:
        hparams["magnitude_max"] = _int(configs, "mmax", s["mmax"], 1)
    if hparams["magnitude_std"] < 0:
        raise ValueError(f"augmentation config '{configs}': mstd must be >= 0")
    transforms = _RAND_INCREASING_TRANSFORMS if _int(configs, "inc", s.get("inc", 0), 0) else _RAND_TRANSFORMS
    weights = None
    if "w" in s:
        if s["w"] != 0:
            raise ValueError(f"augmentation config '{configs}': the only op-weight set is w0")
        weights = _choice_weights(transforms)
    magnitude = s.get("m", _LEVEL_DENOM)
    ops = rand_augment_ops(magnitude=magnitude, hparams=hparams, transforms=transforms)
    return RandAugment(ops, _int(configs, "n", s.get("n", 2), 0), choice_weights=weights)


def auto_augment_transform(configs: str, hparams: Optional[Dict] = None) -> AutoAugment:
    """AutoAugment from ``"autoaug"``, ``"autoaugr"`` or ``"3a"``, optionally ``-mstd<std>`` (default 0.5).

    Args:
        configs: the config string.
        hparams: see :class:`AugmentOp` (not modified).

    Returns:
        The transform.
    """
    name, s = _parse(configs, tuple(_AA_POLICIES), ("mstd",))
    hparams = {"magnitude_std": 0.5, **(hparams or _HPARAMS_DEFAULT)}
    if "mstd" in s:
        hparams["magnitude_std"] = s["mstd"]
    return AutoAugment(auto_augment_policy(name, hparams))


def trivial_augment_wide_transform(configs: str, hparams: Optional[Dict] = None) -> TrivialAugmentWide:
    """TrivialAugment-Wide from ``"trivialaugwide"`` or ``"trivialaugwide-m<max>"`` (magnitudes uniform in
    [0, max], default 31).

    Args:
        configs: the config string.
        hparams: see :class:`AugmentOp` (not modified).

    Returns:
        The transform.
    """
    _, s = _parse(configs, ("trivialaugwide",), ("m",))
    magnitude = _int(configs, "m", s.get("m", 31), 1)
    hparams = {**(hparams or {}), "magnitude_max": magnitude, "magnitude_std": float("inf"), "trivialaugwide": True}
    return TrivialAugmentWide(trivial_augment_wide_ops(magnitude=magnitude, hparams=hparams))


def augment_and_mix_transform(configs: str, hparams: Optional[Dict] = None) -> AugMixAugment:
    """AugMix from ``"augmix[-m<severity>][-w<width>][-d<depth>][-a<alpha>]"`` (default ``m3-w3-d-1-a1``).

    Args:
        configs: the config string.
        hparams: see :class:`AugmentOp` (not modified); magnitudes are drawn uniformly in [0, severity].

    Returns:
        The transform.
    """
    _, s = _parse(configs, ("augmix",), ("m", "w", "d", "a"))
    depth = s.get("d", -1)
    if depth != -1:
        depth = _int(configs, "d", depth, 1)
    hparams = {**(hparams or {}), "magnitude_std": float("inf")}
    ops = augmix_ops(magnitude=s.get("m", 3), hparams=hparams)
    return AugMixAugment(ops, alpha=s.get("a", 1.0), width=_int(configs, "w", s.get("w", 3), 1), depth=int(depth))
