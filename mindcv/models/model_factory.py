"""``create_model`` and the one generic builder every registered variant goes through."""

import inspect
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from mindspore import nn

from ..errors import InvalidArgumentError, UnknownModelError
from ..io.download import download_cached, get_default_download_root
from .checkpoint import (
    CheckpointError,
    convert_state_dict,
    detect_layout,
    load_state_dict_into,
    read_checkpoint,
    source_bn_eps,
)
from .features import FeatureExtractWrapper
from .pretrained import PretrainedCfg
from .registry import (
    is_model,
    model_entrypoint,
    registered_pretrained_cfg,
    select_pretrained_tag,
    unknown_model_message,
)

__all__ = [
    "create_model",
    "build_model_with_cfg",
    "load_model_checkpoint",
    "load_pretrained",
    "get_checkpoint_download_root",
    "split_model_name_tag",
    "checkpoint_num_classes",
    "read_converted",
    "read_converted_with_metadata",
    "classifier_classes",
    "weights_num_classes",
]

_logger = logging.getLogger(__name__)


def split_model_name_tag(model_name: str) -> Tuple[str, str]:
    """``"mnasnet_100.tv_in1k"`` -> ``("mnasnet_100", "tv_in1k")``; no tag gives ``""``."""
    name, _, tag = model_name.partition(".")
    return name, tag


def create_model(
    model_name: str,
    num_classes: int = 1000,
    pretrained: bool = False,
    in_channels: int = 3,
    checkpoint_path: str = "",
    ema: bool = False,
    auto_mapping: bool = False,
    **kwargs: Any,
) -> nn.Cell:
    """Create a registered model, optionally with weights.

    Args:
        model_name: a registered name (see :func:`~mindcv.models.registry.list_models`), optionally
            with a weights tag: ``"mnasnet_100.tv_in1k"``.
        num_classes: classifier outputs; weights with another class count keep a fresh classifier.
        pretrained: download (once, into the cache) and load the published weights.
        in_channels: input channels; pretrained first convolutions are adapted to it.
        checkpoint_path: a local weight file in any supported layout (this package, upstream mindcv,
            torchvision, timm; ``.ckpt``, ``.safetensors``, ``.pth``); the layout is detected.
        ema: load the EMA copy of the weights from ``checkpoint_path``.
        auto_mapping: upstream's switch for renaming a checkpoint's parameters to the model's (by string
            similarity). Accepted either way because that renaming always happens here, exactly rather than
            guessed: the file's layout (this package, upstream mindcv, torchvision, timm) is detected and mapped
            name by name, so ``True`` loads what upstream's mapping was meant to load; a file of no known layout
            is a :class:`CheckpointError` with either value, never a best guess.
        **kwargs: model arguments (``drop_rate``, ``drop_path_rate``, ``bn_momentum``, ``bn_eps``,
            ``features_only``, ``out_indices`` ...); ``None`` values mean "model default".

    Returns:
        The model, in training mode (call ``set_train(False)`` for inference).

    Raises:
        RuntimeError: unknown model name (the message lists the valid ones).
        ValueError: ``pretrained`` together with ``checkpoint_path``, or an invalid argument.
        TypeError: an argument the model does not accept.
        CheckpointError: an unreadable checkpoint or one that does not fit the architecture.
    """
    if checkpoint_path and pretrained:
        raise InvalidArgumentError("pass either pretrained=True or checkpoint_path, not both")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    name, tag = split_model_name_tag(model_name)
    if not is_model(name):
        raise UnknownModelError(unknown_model_message(model_name))
    if tag:
        kwargs["pretrained_tag"] = tag
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))

    state_dict = None
    if checkpoint_path:
        state_dict, _, bn_eps = read_converted(checkpoint_path, ema)
        if bn_eps is not None:
            kwargs.setdefault("bn_eps", bn_eps)
    model = model_entrypoint(name)(pretrained=pretrained, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if state_dict is not None:
        load_state_dict_into(model, state_dict, source=checkpoint_path)
    if features_only:
        model = FeatureExtractWrapper(model, out_indices)
    return model


def read_converted(path: str, ema: bool = False) -> Tuple[Dict[str, Any], str, Optional[float]]:
    """Read a weight file of any supported layout and rename it to this package's parameter names.

    Args:
        path: the weight file.
        ema: take the EMA copy.

    Returns:
        ``(state_dict, source layout, BN eps the weights were trained with or None)``.

    Raises:
        CheckpointError: unreadable, of no known layout, or with invalid metadata (the message names the file).
    """
    state_dict, layout, bn_eps, _ = read_converted_with_metadata(path, ema)
    return state_dict, layout, bn_eps


def _recorded_stage_repeats(meta: Dict[str, Any]) -> Optional[Tuple[int, ...]]:
    """Blocks per inverted-residual stage of the architecture a file records (None when it records none)."""
    arch = meta.get("arch")
    if not isinstance(arch, str):
        return None
    from .arch import decode_arch_def, parse_arch_string

    try:
        stages = decode_arch_def(parse_arch_string(arch))
    except Exception as err:  # noqa: BLE001  (the grammar raises several kinds)
        raise CheckpointError(f"the recorded architecture '{arch}' does not parse: {err}") from None
    return tuple(len(stage) for stage in stages[1:])


def read_converted_with_metadata(
    path: str, ema: bool = False
) -> Tuple[Dict[str, Any], str, Optional[float], Dict[str, Any]]:
    """:func:`read_converted` plus the metadata stored with the file, from one read of it."""
    tensors, meta = read_checkpoint(path)
    try:
        layout = detect_layout(k[len("ema.") :] if k.startswith("ema.") else k for k in tensors)
        ours = layout == "mindcv_upstream" and meta.get("bn_eps") is not None
        # written by this package from a model named as upstream's (param_layout="features", the mnasnet_0xx
        # models): the same names, but its own record of the BatchNorm epsilon (not upstream's 1e-3) and of
        # the architecture, whose stages place features.N in the cells (B1's unless it says otherwise)
        repeats = _recorded_stage_repeats(meta) if ours else None
        state_dict = convert_state_dict(tensors, layout, ema=ema, stage_repeats=repeats)
        if ours:
            layout = "mindcv"
        bn_eps = source_bn_eps(layout, meta)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    _logger.info("%s: %s layout", path, layout)
    return state_dict, layout, bn_eps, meta


def checkpoint_num_classes(path: str, ema: bool = False) -> Optional[int]:
    """How many classes the classifier stored in a weight file of any supported layout has.

    Args:
        path: the weight file.
        ema: look at the EMA copy.

    Returns:
        The class count, or ``None`` when the file holds no classifier (a headless backbone).
    """
    return classifier_classes(read_converted(path, ema)[0], path)


def classifier_classes(state_dict: Dict[str, Any], path: str) -> Optional[int]:
    """The class count of a converted state dict's classifier (``None``: headless); ``path`` names it in errors."""
    weight = state_dict.get("classifier.weight")
    if weight is None:
        return None
    if weight.ndim != 2 or weight.shape[0] < 1:
        raise CheckpointError(
            f"'{path}': classifier.weight has shape {tuple(weight.shape)}, not (classes >= 1, features)"
        )
    return int(weight.shape[0])


def weights_num_classes(
    model_name: str,
    checkpoint_path: str = "",
    pretrained: bool = False,
    ema: bool = False,
    requested: Optional[int] = None,
    state_dict: Optional[Dict[str, Any]] = None,
) -> Optional[int]:
    """The class count a model must be built with to use the classifier stored in its weights.

    Evaluating or exporting with another count would silently swap in a random classifier.

    Args:
        model_name: the model (with an optional weights tag) for ``pretrained``.
        checkpoint_path: a weight file of any supported layout.
        pretrained: the published weights of ``model_name``.
        ema: look at the EMA copy of ``checkpoint_path``.
        requested: the count the user asked for (``None``: not asked).
        state_dict: ``checkpoint_path`` already read and converted (saves reading it again).

    Returns:
        The weights' class count, or ``requested`` when there are no weights.

    Raises:
        CheckpointError: the weights hold no classifier.
        InvalidArgumentError: ``requested`` differs from the weights' classifier.
    """
    if checkpoint_path:
        stored = (
            classifier_classes(state_dict, checkpoint_path)
            if state_dict is not None
            else checkpoint_num_classes(checkpoint_path, ema=ema)
        )
        source = f"checkpoint '{checkpoint_path}'"
    elif pretrained:
        name, tag = split_model_name_tag(model_name)
        cfg = registered_pretrained_cfg(name, tag or None)
        stored, source = (cfg.num_classes if cfg else None), f"the published weights of '{model_name}'"
    else:
        return requested
    if stored is None:
        raise CheckpointError(f"{source} holds no classifier: it cannot be used as a classifier")
    if requested is not None and stored != requested:
        raise InvalidArgumentError(
            f"{source} has a {stored}-class classifier but {requested} classes were asked for: that would use "
            f"a random classifier. Ask for {stored} classes (or none)"
        )
    return stored


def load_model_checkpoint(
    model: nn.Cell, checkpoint_path: str = "", ema: bool = False, auto_mapping: bool = False
) -> None:
    """Load a weight file of any supported layout into an existing model (upstream-compatible name).

    Unlike upstream, a missing file is an error, not a silent no-op.

    Args:
        model: the model.
        checkpoint_path: the weight file.
        ema: load the EMA copy.
        auto_mapping: accepted for upstream compatibility, with no effect because it is always satisfied: the
            layout is detected and renamed exactly (see :func:`create_model`).
    """
    if not checkpoint_path:
        raise InvalidArgumentError("checkpoint_path is empty")
    state_dict, _, bn_eps = read_converted(checkpoint_path, ema)
    if bn_eps is not None and getattr(model, "bn_eps", bn_eps) != bn_eps:
        _logger.warning(
            "%s was trained with BN eps %g but the model uses %g; outputs will drift slightly. "
            "Build it with create_model(..., checkpoint_path=...) to match.",
            checkpoint_path,
            bn_eps,
            model.bn_eps,
        )
    load_state_dict_into(model, state_dict, source=checkpoint_path)


def get_checkpoint_download_root() -> str:
    """Folder published weights are downloaded to: ``<download root>/checkpoints``.

    The download root is ``$MINDCV_HOME`` or ``~/.cache/mindcv``, or what
    :func:`~mindcv.io.download.set_default_download_root` set (upstream's ``~/.mindspore/models``).
    """
    return os.path.join(get_default_download_root(), "checkpoints")


def _param_prefix(model: nn.Cell, name: str, fallback: str) -> str:
    """The cell path of the layer ``name`` names, else ``fallback``.

    ``name`` may be a cell path (``conv_stem``) or a parameter-name prefix: a cfg written for upstream's
    ``Mnasnet`` (and the ``mnasnet_0xx`` cfgs) name the first conv ``features.0``, the name its parameters carry;
    the weights are matched by cell path on loading.
    """
    for path, param in model.parameters_and_names():
        if path.startswith(name + "."):
            return name
        leaf = param.name[len(name) + 1 :]
        if param.name.startswith(name + ".") and "." not in leaf and path.endswith("." + leaf):
            return path[: -len(leaf) - 1]
    return fallback


def load_pretrained(
    model: nn.Cell,
    default_cfg: Mapping[str, Any],
    num_classes: int = 1000,
    in_channels: int = 3,
    filter_fn: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
) -> None:
    """Download (once) and load published weights, adapting classifier and first conv as needed.

    Upstream mindcv's function and signature. Unlike upstream, a cfg without a URL is an error (upstream
    logs a warning and leaves the model untrained), the download is verified and shared safely between
    processes, any ``in_channels`` is adapted (upstream: 1 or 3), and every weight must fit the model.

    Args:
        model: the model, built with ``default_cfg``'s ``bn_eps``.
        default_cfg: the weights' metadata: a :class:`PretrainedCfg` or a dict with at least ``url``
            (optional: ``sha256``/``hash_prefix``, ``layout`` (detected when absent), ``first_conv``,
            ``classifier``).
        num_classes: the model's classes (a different count keeps the fresh classifier).
        in_channels: the model's input channels (the first conv is adapted).
        filter_fn: optional ``fn(state_dict) -> state_dict`` applied after conversion.

    Raises:
        InvalidArgumentError: the cfg has no URL.
        DownloadError: the download failed or does not match its hash.
        CheckpointError: the weights do not fit the model.
    """
    if not default_cfg.get("url"):
        raise InvalidArgumentError(
            f"{type(model).__name__}: no published weights for this variant (pretrained=True is not available)"
        )
    path = download_cached(
        default_cfg["url"],
        sha256=default_cfg.get("sha256", ""),
        hash_prefix=default_cfg.get("hash_prefix", ""),
        subdir="",
        cache_dir=get_checkpoint_download_root(),
    )
    tensors, _ = read_checkpoint(path)
    state_dict = convert_state_dict(tensors, default_cfg.get("layout"))
    if filter_fn is not None:
        state_dict = filter_fn(state_dict)
    load_state_dict_into(
        model,
        state_dict,
        source=os.path.basename(path),
        first_conv=_param_prefix(model, default_cfg.get("first_conv") or "conv_stem", "conv_stem"),
        classifier=_param_prefix(model, default_cfg.get("classifier") or "classifier", "classifier"),
    )


def build_model_with_cfg(model_cls: Callable[..., nn.Cell], *args: Any, **kwargs: Any) -> nn.Cell:
    """Build ``model_cls(**kwargs)``, optionally with its published weights; two call forms.

    * This package's form, ``build_model_with_cfg(model_cls, variant, pretrained, tags=None, pretrained_tag="",
      **kwargs)``, used by every registered entrypoint: the weights metadata is looked up by ``variant``
      (see :func:`_build_registered`).
    * Upstream mindcv's form, ``build_model_with_cfg(model_cls, pretrained, default_cfg, features_only=False,
      out_indices=[0, 1, 2, 3, 4], **kwargs)``: the weights are described by ``default_cfg`` (see
      :func:`_build_with_cfg`).

    The form is told by the second argument: a model name (``str``, or ``variant=``) is ours, anything else
    (``pretrained``, a bool) is upstream's.

    Args:
        model_cls: the model class (or any callable returning a Cell).
        *args: the positional arguments of either form.
        **kwargs: the keyword arguments of either form; the rest go to ``model_cls``.

    Returns:
        The model (a :class:`FeatureExtractWrapper` with ``features_only=True``).
    """
    if (args and isinstance(args[0], str)) or "variant" in kwargs:
        return _build_registered(model_cls, *args, **kwargs)
    return _build_with_cfg(model_cls, *args, **kwargs)


def _build_with_cfg(
    model_cls: Callable[..., nn.Cell],
    pretrained: bool,
    default_cfg: Optional[Mapping[str, Any]] = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    **kwargs: Any,
) -> nn.Cell:
    """Upstream's form: ``model_cls(**kwargs)``, :func:`load_pretrained` with ``default_cfg`` if ``pretrained``,
    then a feature extractor if ``features_only``."""
    cfg = default_cfg if default_cfg is not None else {}
    if pretrained and "bn_eps" in cfg and "bn_eps" in inspect.signature(model_cls).parameters:
        kwargs.setdefault("bn_eps", cfg["bn_eps"])  # the epsilon the weights were trained with
    model = model_cls(**kwargs)
    if pretrained:
        load_pretrained(model, cfg, kwargs.get("num_classes", 1000), kwargs.get("in_channels", 3))
    if features_only:
        if not hasattr(model, "feature_info"):
            name = getattr(model_cls, "__name__", model_cls)
            raise InvalidArgumentError(f"features_only=True needs a model with a feature_info list; {name} has none")
        model = FeatureExtractWrapper(model, out_indices)
    return model


def _build_registered(
    model_cls: type,
    variant: str,
    pretrained: bool,
    tags: Optional[Dict[str, PretrainedCfg]] = None,
    pretrained_tag: str = "",
    **kwargs: Any,
) -> nn.Cell:
    """Build ``model_cls(**kwargs)``, attach its weights metadata, and load the weights if asked.

    Args:
        model_cls: the model class.
        variant: registered name (for messages and metadata lookup).
        pretrained: load the default (or ``pretrained_tag``) weights.
        tags: the variant's published weights by tag.
        pretrained_tag: which published weights to use.
        **kwargs: constructor arguments; unknown ones raise a ``TypeError`` listing the valid ones.

    Returns:
        The model, with ``model.pretrained_cfg`` set.
    """
    tags = tags or {}
    if pretrained_tag:
        cfg = select_pretrained_tag(variant, tags, pretrained_tag)
    else:
        cfg = registered_pretrained_cfg(variant) or PretrainedCfg()
    accepted = set(inspect.signature(model_cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        valid = sorted(accepted - {"arch_def"}) + ["features_only", "out_indices", "pretrained_tag"]
        raise TypeError(f"{variant}() got unexpected argument(s) {', '.join(unknown)}; accepted: {', '.join(valid)}")
    if pretrained:
        if not cfg.get("url"):
            available = [t for t, c in tags.items() if c.url]
            which = f" for tag '{pretrained_tag}'" if pretrained_tag else ""
            raise InvalidArgumentError(
                f"'{variant}' has no published weights{which}; tags with weights: {', '.join(available) or 'none'}"
            )
        kwargs.setdefault("bn_eps", cfg.bn_eps)
    model = model_cls(**kwargs)
    model.model_name = variant  # recorded in checkpoints, so load_model needs no name for them
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    if pretrained:
        load_pretrained(
            model, cfg, num_classes=kwargs.get("num_classes", 1000), in_channels=kwargs.get("in_channels", 3)
        )
    return model
