"""Metadata of published weights: where they are, how they were made, and how to evaluate them.

The metadata lives in code next to the model (torchvision-style ``meta``) so that the README tables,
``validate.py``'s evaluation transform and the download check cannot drift apart.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..data.constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["PretrainedCfg", "CHECKPOINT_LAYOUTS", "TORCH_BN_EPS", "MINDCV_BN_EPS"]

# Layouts the checkpoint loader understands (see mindcv.models.checkpoint).
CHECKPOINT_LAYOUTS = ("mindcv", "mindcv_upstream", "torchvision", "timm")
TORCH_BN_EPS = 1e-5  # PyTorch default, used by torchvision and timm MnasNets
MINDCV_BN_EPS = 1e-3  # TF reference and upstream mindcv


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of published weights for one architecture.

    Args:
        url: download address ('' for an untrained architecture).
        hash_prefix: leading hex digits of the file's sha256, as published in its file name.
        sha256: the full sha256 when it is known (takes precedence over ``hash_prefix``).
        layout: state-dict layout of the file, one of ``CHECKPOINT_LAYOUTS``.
        bn_eps: BatchNorm epsilon the weights were trained with; the model is built with it.
        num_classes: classifier size of the weights.
        top1, top5: published ImageNet-1k accuracy (%), with the evaluation transform below.
        num_params: trainable parameter count of the architecture at ``num_classes``.
        recipe: where the training recipe is documented.
        input_size, crop_pct, resize_size, interpolation, mean, std: the evaluation transform
            (``resize_size`` overrides ``input_size / crop_pct`` when set; mean/std on the 0-255 scale).
        first_conv, classifier: parameter-name prefixes adapted when ``in_channels``/``num_classes`` change.
        license: license of the weights.
    """

    url: str = ""
    hash_prefix: str = ""
    sha256: str = ""
    layout: str = "mindcv"
    bn_eps: float = MINDCV_BN_EPS
    num_classes: int = 1000
    top1: Optional[float] = None
    top5: Optional[float] = None
    num_params: Optional[int] = None
    recipe: str = ""
    input_size: Tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = DEFAULT_CROP_PCT
    resize_size: Optional[int] = None
    interpolation: str = "bilinear"
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD
    first_conv: str = "conv_stem"
    classifier: str = "classifier"
    license: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        return bool(self.url)

    @property
    def eval_resize(self) -> int:
        """Shorter-side resize of the evaluation transform."""
        return self.resize_size or int(self.input_size[-1] / self.crop_pct)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    # dict-style access keeps upstream code such as ``default_cfg["url"]`` working
    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)
