"""The one way from weights to a usable model: :func:`load_model`.

validate.py, infer.py, export.py, :class:`mindcv.inference.Classifier`, the ONNX Runtime backend and the
examples all call it, so the architecture, width, class count, BatchNorm epsilon, class names and
evaluation transform of a checkpoint are derived in one place. A rebuilt copy (BatchNorm folding, export)
comes from :meth:`LoadedModel.rebuild`, which uses the loaded model's own settings.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from mindspore import nn

from ..errors import InvalidArgumentError
from .arch import format_arch_string
from .checkpoint import NATIVE_EXTENSIONS, CheckpointError, load_state_dict_into, read_checkpoint_metadata
from .fuse import fuse_bn
from .mnasnet import load_arch
from .model_factory import create_model, read_converted_with_metadata, split_model_name_tag, weights_num_classes
from .registry import get_pretrained_cfg, is_model, list_models

_logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "imagenet_class_names", "infer_model_name"]

_IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "imagenet_classes.txt")


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    with open(_IMAGENET_CLASSES) as f:
        return [line.rstrip("\n") for line in f]


@dataclass
class LoadedModel:
    """A model in inference mode plus everything needed to use it as its weights were meant to be used.

    Attributes:
        model: the network (``set_train(False)``).
        model_name: the registered name it was built as (without a weights tag).
        build_kwargs: the keyword arguments of ``create_model`` that rebuild the same architecture.
        num_classes: classifier outputs.
        class_names: one label per class.
        eval_transform: evaluation preprocessing recorded with the weights (``create_transforms`` keywords;
            empty: the defaults, 224 px ImageNet preprocessing).
        source: the checkpoint path, ``"pretrained:<name>"`` or ``""`` (random weights).
        layout: the weights' layout (``mindcv``, ``torchvision``, ``timm``, ``mindcv_upstream``) or ``""``.
        ema: the EMA copy of the checkpoint was loaded.
        metadata: what a checkpoint written by this package records (``{}`` for other files).
        dataset: the dataset the evaluation transform belongs to (``create_transforms`` name: ``imagenet``
            style for image folders, small-image preprocessing for ``cifar10``/``mnist``...).
    """

    model: nn.Cell
    model_name: str
    build_kwargs: Dict[str, Any]
    num_classes: int
    class_names: List[str]
    eval_transform: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    layout: str = ""
    ema: bool = False
    metadata: Dict[str, Any] = field(default_factory=dict)
    dataset: str = "imagenet"

    @property
    def bn_eps(self) -> float:
        """The BatchNorm epsilon the weights were trained with (and the model computes with)."""
        return self.model.bn_eps

    @property
    def arch(self) -> str:
        """The canonical architecture string of the model."""
        return format_arch_string(self.model.arch_def)

    @property
    def image_size(self) -> int:
        """The input size of the evaluation transform."""
        return int(self.eval_transform.get("image_resize") or 224)

    def rebuild(self, copy_weights: bool = True) -> nn.Cell:
        """A second instance of the same architecture and settings (BN eps included), in inference mode.

        Args:
            copy_weights: give it a copy of the loaded weights (otherwise it keeps fresh ones).

        Returns:
            The new model; changing it never changes :attr:`model`.
        """
        twin = create_model(self.model_name, **self.build_kwargs)
        twin.set_train(False)
        if copy_weights:
            source = {p.name: p for p in self.model.get_parameters()}
            target = {p.name: p for p in twin.get_parameters()}
            differ = sorted(set(source) ^ set(target)) + [
                n for n in target if n in source and source[n].shape != target[n].shape
            ]
            if differ:  # the same settings must give the same parameters: a bug if not
                raise RuntimeError(f"rebuilt {self.model_name} does not match the loaded model: {differ[:5]}")
            for name, param in target.items():
                param.set_data(source[name].value().copy())
        return twin

    def fused_copy(self) -> nn.Cell:
        """A rebuilt copy with every BatchNorm folded into its convolution, for export and deployment.

        The copy computes with this model's own BN epsilon, so folding changes outputs by fp32 round-off only.
        """
        twin = self.rebuild()
        fuse_bn(twin)
        return twin


def infer_model_name(state_dict: Dict[str, Any], candidates: Optional[List[str]] = None) -> str:
    """The registered model whose parameter names and shapes equal those of a (native-named) state dict.

    Args:
        state_dict: arrays named like this package's models (see ``convert_state_dict``).
        candidates: models to try (default: all registered but ``mnasnet_arch``).

    Returns:
        The model name.

    Raises:
        CheckpointError: no registered architecture (or more than one) fits.
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    weight = state_dict.get("classifier.weight")
    num_classes = 0 if weight is None else int(weight.shape[0])
    matches = []
    for name in candidates or [m for m in list_models() if m != "mnasnet_arch"]:
        model = create_model(name, num_classes=num_classes)
        if {path: tuple(p.shape) for path, p in model.parameters_and_names()} == shapes:
            matches.append(name)
    if len(matches) != 1:
        what = "no registered architecture" if not matches else f"several architectures ({', '.join(matches)})"
        raise CheckpointError(f"{what} fit(s) these weights; pass the model name explicitly")
    return matches[0]


def _class_names(given: Optional[Sequence[str]], recorded: Any, num_classes: int, source: str) -> List[str]:
    if given is not None:
        names = [str(n) for n in given]
        if len(names) != num_classes:
            raise InvalidArgumentError(f"{len(names)} class names given for a {num_classes}-class classifier")
        if len(set(names)) != len(names):
            raise InvalidArgumentError("the class names given are not distinct: labels would be ambiguous")
        return names
    if recorded:
        if len(recorded) != num_classes:
            raise CheckpointError(
                f"'{source}' records {len(recorded)} class names for a {num_classes}-class classifier"
            )
        return list(recorded)
    if num_classes == 1000:
        return imagenet_class_names()
    return [str(i) for i in range(num_classes)]


def _published_transform(model_name: str) -> Dict[str, Any]:
    name, tag = split_model_name_tag(model_name)
    cfg = get_pretrained_cfg(name, tag or None)
    if not cfg:
        return {}
    return dict(
        image_resize=cfg.input_size[-1],
        interpolation=cfg.interpolation,
        resize_size=cfg.eval_resize,
        mean=list(cfg.mean),
        std=list(cfg.std),
    )


def _canonical(arch: str) -> Optional[str]:
    """The canonical string of an architecture given as a string, a name or a file (None if unreadable)."""
    try:
        return format_arch_string(load_arch(arch)[0])
    except (ValueError, OSError):
        return None


def _published_layout(model_name: str) -> str:
    name, tag = split_model_name_tag(model_name)
    cfg = get_pretrained_cfg(name, tag or None)
    return str(cfg.get("layout") or "mindcv") if cfg else "mindcv"


def _architecture(
    name: str, arch: Optional[str], width_mult: Optional[float], meta: Dict[str, Any], source: str
) -> Dict[str, Any]:
    """``arch`` / ``width_mult`` for ``mnasnet_arch``: given ones, else the checkpoint's record."""
    if name != "mnasnet_arch":
        if arch is not None or width_mult is not None:
            raise InvalidArgumentError(f"arch / width_mult apply to model 'mnasnet_arch' only, not '{name}'")
        return {}
    arch = arch or meta.get("arch")
    if not arch:
        where = f"'{source}' records none" if source else "no checkpoint records one"
        raise InvalidArgumentError(
            f"model 'mnasnet_arch' needs an architecture (an architecture string or a search.py top-k file): {where}"
        )
    kwargs: Dict[str, Any] = {"arch": arch}
    # a recorded width belongs to the recorded architecture; a given architecture file brings its own
    recorded = meta.get("arch") is not None and (arch == meta["arch"] or _canonical(arch) == meta["arch"])
    width = width_mult if width_mult is not None else (meta.get("width_mult") if recorded else None)
    if width is not None:
        kwargs["width_mult"] = width
    if recorded:
        kwargs.update({k: meta[k] for k in ("stem_size", "num_features") if meta.get(k) is not None})
    return kwargs


def _check_against_record(model: nn.Cell, meta: Dict[str, Any], source: str) -> None:
    """A native checkpoint's recorded architecture and width must be what was built from it."""
    recorded = meta.get("arch")
    if recorded and format_arch_string(model.arch_def) != recorded:
        raise CheckpointError(
            f"'{source}' was trained with architecture '{recorded}', but the model built has "
            f"'{format_arch_string(model.arch_def)}': pass the model (or --arch) it was trained as"
        )
    width = meta.get("width_mult")
    if width is not None and abs(float(width) - float(model.width_mult)) > 1e-9:
        raise CheckpointError(
            f"'{source}' was trained with width multiplier {width}, the model built has {model.width_mult} "
            "(leave out --arch to use the recorded architecture)"
        )
    classes = meta.get("num_classes")
    if classes is not None and classes != model.num_classes:
        raise CheckpointError(f"'{source}' records {classes} classes but its classifier has {model.num_classes}")


def load_model(
    model_name: Optional[str] = None,
    checkpoint_path: str = "",
    pretrained: bool = False,
    *,
    ema: bool = False,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    arch: Optional[str] = None,
    width_mult: Optional[float] = None,
    bn_eps: Optional[float] = None,
    class_names: Optional[Sequence[str]] = None,
    default_num_classes: int = 1000,
    **model_kwargs: Any,
) -> LoadedModel:
    """Build a model from weights of any format this package reads, with what it needs to be used.

    Args:
        model_name: registered name (optionally with a weights tag). ``None``: the name a checkpoint written
            by this package records, or for a foreign file (torchvision, timm, upstream mindcv) the zoo model
            whose parameter names and shapes it has.
        checkpoint_path: a weight file: this package's ``.ckpt``/``.safetensors`` (train.py, search
            retraining), torchvision, timm or upstream mindcv weights.
        pretrained: the published weights of ``model_name`` instead.
        ema: the EMA copy of ``checkpoint_path``.
        num_classes: the class count asked for; an error if the weights' classifier has another.
        in_channels: input channels (default: recorded, else 3).
        arch: for ``mnasnet_arch``: an architecture string, a name of ``ARCH_DEFS`` or a search.py top-k
            file (default: the one the checkpoint records).
        width_mult: for ``mnasnet_arch``: the width multiplier (default: recorded).
        bn_eps: BatchNorm epsilon (default: the one the weights were trained with).
        class_names: label names (default: recorded, ImageNet's for 1000 classes, else the class ids).
        default_num_classes: class count without weights and without ``num_classes``.
        **model_kwargs: further ``create_model`` arguments (``drop_rate`` ...; ``None`` means default).

    Returns:
        A :class:`LoadedModel` whose model is in inference mode.

    Raises:
        CheckpointError: unreadable weights, weights that do not fit, or a record that contradicts them.
        InvalidArgumentError: contradicting arguments (the message says which and what is valid).
    """
    if checkpoint_path and pretrained:
        raise InvalidArgumentError("pass either pretrained=True or a checkpoint path, not both")
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise CheckpointError(f"checkpoint '{checkpoint_path}' does not exist or is not a file")
    if ema and not checkpoint_path:
        raise InvalidArgumentError("ema=True (--ema) selects the EMA copy of a checkpoint: pass a checkpoint path")
    if ema and checkpoint_path.endswith(NATIVE_EXTENSIONS):  # say why before the weights' own error
        recorded = read_checkpoint_metadata(checkpoint_path)
        if recorded and not recorded.get("ema"):
            raise InvalidArgumentError(
                f"--ema was given but '{checkpoint_path}' holds no EMA weights (train with --ema True)"
            )
    state_dict, layout, source_eps, meta = None, "", None, {}
    if checkpoint_path:  # read once: the record, the converted weights and the BN eps they were trained with
        state_dict, layout, source_eps, meta = read_converted_with_metadata(checkpoint_path, ema)
        meta = meta if checkpoint_path.endswith(NATIVE_EXTENSIONS) else {}  # a .pth's extra entries are not ours
    recorded_name = meta.get("model")
    if not model_name:
        if recorded_name:
            model_name = recorded_name
        elif checkpoint_path:  # a foreign file: the zoo model whose parameter shapes it has
            try:
                model_name = infer_model_name(state_dict)
            except CheckpointError as err:
                raise CheckpointError(f"'{checkpoint_path}' records no model name and {err}") from None
        else:
            raise InvalidArgumentError("name the model (e.g. mnasnet_100): no checkpoint is given")
    name = split_model_name_tag(model_name)[0]
    if recorded_name and not is_model(recorded_name):
        raise CheckpointError(f"'{checkpoint_path}' records model '{recorded_name}', which is not a registered model")
    if recorded_name and name != recorded_name:
        raise InvalidArgumentError(
            f"checkpoint '{checkpoint_path}' was trained as '{recorded_name}', not '{name}': "
            f"pass --model {recorded_name}"
        )
    if not ema and meta.get("ema"):
        _logger.warning(
            "'%s' also holds EMA weights (the ones train.py validated with --ema True); they are used only when "
            "asked for (--ema / ema=True)",
            checkpoint_path,
        )

    classes = weights_num_classes(model_name, checkpoint_path, pretrained, ema, num_classes, state_dict=state_dict)
    if classes is None:
        classes = len(class_names) if class_names is not None else default_num_classes
    weights_in_channels = None
    if state_dict is not None:
        stem = state_dict.get("conv_stem.weight")
        weights_in_channels = int(stem.shape[1]) if stem is not None and stem.ndim == 4 else None
    for what, value in (("recorded", meta.get("in_channels")), ("asked for", in_channels)):
        if value is not None and weights_in_channels is not None and value != weights_in_channels:
            raise (CheckpointError if what == "recorded" else InvalidArgumentError)(
                f"'{checkpoint_path}' has a {weights_in_channels}-channel stem but {value} input channels are "
                f"{what}: load_model uses weights as they are (create_model adapts the stem for fine-tuning)"
            )
    build_kwargs = {
        "num_classes": classes,
        "in_channels": in_channels or weights_in_channels or meta.get("in_channels") or 3,
        **_architecture(name, arch, width_mult, meta, checkpoint_path),
        **{k: v for k, v in model_kwargs.items() if v is not None},
    }
    if bn_eps is not None or source_eps is not None:
        build_kwargs["bn_eps"] = bn_eps if bn_eps is not None else source_eps
    model = create_model(model_name, pretrained=pretrained, **build_kwargs)
    if state_dict is not None:
        load_state_dict_into(model, state_dict, source=checkpoint_path)
    model.set_train(False)
    if meta:
        _check_against_record(model, meta, checkpoint_path)
    # what a rebuild needs: the settings the weights decided (eps, width) become explicit
    build_kwargs.update(bn_eps=model.bn_eps)
    if name == "mnasnet_arch":
        build_kwargs.update(
            arch=format_arch_string(model.arch_def),
            width_mult=model.width_mult,
            stem_size=model.stem_size,
            num_features=model.num_features,
        )
    transform = dict(meta.get("eval_transform") or {})
    if not transform and pretrained:
        transform = _published_transform(model_name)
    source = checkpoint_path or (f"pretrained:{model_name}" if pretrained else "")
    return LoadedModel(
        model=model,
        model_name=name,
        build_kwargs=build_kwargs,
        num_classes=classes,
        class_names=_class_names(class_names, meta.get("class_names"), classes, source),
        eval_transform=transform,
        source=source,
        layout=layout or (_published_layout(model_name) if pretrained else ""),
        ema=ema,
        metadata=meta,
        dataset=str(meta.get("dataset") or "imagenet"),
    )
