"""Model registry: entrypoints, the module that defines them, and their published weights.

Compatible with upstream mindcv's ``registry.py`` (same functions and signatures), but registering a
name twice is an error instead of a silent overwrite, and unknown names get a "did you mean" hint.
"""

import copy
import difflib
import fnmatch
import sys
from collections import defaultdict
from dataclasses import asdict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Union

from ..errors import InvalidArgumentError, UnknownModelError
from .pretrained import PretrainedCfg

__all__ = [
    "register_model",
    "list_models",
    "list_modules",
    "is_model",
    "model_entrypoint",
    "is_model_in_modules",
    "is_model_pretrained",
    "get_pretrained_cfg",
    "registered_pretrained_cfg",
    "PretrainedCfgDict",
    "get_pretrained_cfg_value",
    "has_pretrained_cfg_key",
    "list_pretrained_tags",
    "select_pretrained_tag",
    "unknown_model_message",
]

_model_entrypoints: Dict[str, Callable] = {}
_model_to_module: Dict[str, str] = {}
_module_to_models: Dict[str, Set[str]] = defaultdict(set)
_model_has_pretrained: Set[str] = set()
_model_pretrained_cfgs: Dict[str, Any] = {}
_model_pretrained_tags: Dict[str, Dict[str, Any]] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator registering a model entrypoint under its function name.

    The defining module may provide ``default_cfgs[name]`` (the default weights) and
    ``pretrained_tags[name]`` (every published set of weights, keyed by tag).

    Args:
        fn: the entrypoint ``fn(pretrained=False, num_classes=1000, in_channels=3, **kwargs)``.

    Returns:
        ``fn`` unchanged.

    Raises:
        ValueError: a model of the same name is already registered.
    """
    mod = sys.modules[fn.__module__]
    module_name = fn.__module__.split(".")[-1]
    model_name = fn.__name__
    if model_name in _model_entrypoints:
        raise InvalidArgumentError(
            f"model '{model_name}' is already registered (by module '{_model_to_module[model_name]}'); "
            "choose another function name"
        )
    if hasattr(mod, "__all__"):
        if model_name not in mod.__all__:
            mod.__all__.append(model_name)
    else:
        mod.__all__ = [model_name]
    _model_entrypoints[model_name] = fn
    _model_to_module[model_name] = module_name
    _module_to_models[module_name].add(model_name)
    cfg = getattr(mod, "default_cfgs", {}).get(model_name)
    if cfg is not None:
        _model_pretrained_cfgs[model_name] = cfg
        if cfg.get("url"):
            _model_has_pretrained.add(model_name)
    _model_pretrained_tags[model_name] = dict(getattr(mod, "pretrained_tags", {}).get(model_name, {}))
    return fn


def _as_list(value: Union[str, Iterable[str], None]) -> List[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def list_models(
    filter: Union[str, List[str]] = "",
    module: str = "",
    pretrained: bool = False,
    exclude_filters: Union[str, List[str]] = "",
) -> List[str]:
    """Sorted names of registered models.

    Args:
        filter: fnmatch pattern(s) to include, e.g. ``"semnasnet*"``.
        module: only models defined in this module (e.g. ``"mnasnet"``).
        pretrained: only models with published weights.
        exclude_filters: fnmatch pattern(s) to exclude.

    Returns:
        The matching model names.
    """
    models = set(_module_to_models[module]) if module else set(_model_entrypoints)
    include = _as_list(filter)
    if include:
        models = {m for m in models if any(fnmatch.fnmatch(m, f) for f in include)}
    for pattern in _as_list(exclude_filters):
        models = {m for m in models if not fnmatch.fnmatch(m, pattern)}
    if pretrained:
        models &= _model_has_pretrained
    return sorted(models)


def list_modules() -> List[str]:
    """Sorted names of the modules that registered models."""
    return sorted(_module_to_models)


def is_model(model_name: str) -> bool:
    """Whether ``model_name`` is registered."""
    return model_name in _model_entrypoints


def unknown_model_message(model_name: str) -> str:
    """An error message for an unknown model that names close matches and the valid names."""
    close = difflib.get_close_matches(model_name, list(_model_entrypoints), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown model '{model_name}'.{hint} Available models: {', '.join(list_models())}"


def model_entrypoint(model_name: str) -> Callable:
    """The entrypoint function of a registered model.

    Raises:
        RuntimeError: the model is not registered (the message lists the valid names).
    """
    if model_name not in _model_entrypoints:
        raise UnknownModelError(unknown_model_message(model_name))
    return _model_entrypoints[model_name]


def is_model_in_modules(model_name: str, module_names: Union[List[str], tuple, set]) -> bool:
    """Whether a model is defined by one of ``module_names``."""
    if not isinstance(module_names, (list, tuple, set)):
        raise TypeError(f"module_names must be a list, tuple or set, got {type(module_names).__name__}")
    return any(model_name in _module_to_models[n] for n in module_names)


def is_model_pretrained(model_name: str) -> bool:
    """Whether a model has published weights."""
    return model_name in _model_has_pretrained


def select_pretrained_tag(model_name: str, tags: Mapping[str, Any], tag: str) -> Any:
    """The cfg of the published weights ``tag`` among ``tags``: the one place a weights tag is checked.

    Args:
        model_name: the model, for the message.
        tags: its published weights by tag.
        tag: the requested tag.

    Raises:
        InvalidArgumentError: ``tag`` is not one of ``tags`` (the message lists them).
    """
    if tag not in tags:
        raise InvalidArgumentError(
            f"model '{model_name}' has no weights tagged '{tag}'; available tags: {', '.join(tags) or 'none'}"
        )
    return tags[tag]


class PretrainedCfgDict(dict):
    """A model's pretrained cfg as upstream mindcv returns it (a ``dict``, a copy the caller may change) that
    also reads like :class:`~mindcv.models.pretrained.PretrainedCfg`: ``cfg["url"]`` and ``cfg.url``,
    ``cfg.eval_resize``, ``dataclasses.replace(cfg, url=...)``.

    Upstream code iterates it, mutates it and passes it to ``load_pretrained`` / ``build_model_with_cfg``; our
    code reads its fields as attributes. A missing key is a ``KeyError`` (``cfg[k]``) or ``AttributeError``
    (``cfg.k``).
    """

    # PretrainedCfg's field table: dataclasses.replace / asdict / fields accept this dict as they accepted the
    # PretrainedCfg that get_pretrained_cfg returned before, and its derived properties below read the same fields
    __dataclass_fields__ = PretrainedCfg.__dataclass_fields__
    eval_resize = PretrainedCfg.eval_resize
    has_weights = PretrainedCfg.has_weights
    to_dict = PretrainedCfg.to_dict

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"pretrained cfg has no field '{key}'; fields: {', '.join(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def registered_pretrained_cfg(model_name: str, tag: Optional[str] = None) -> Any:
    """The registry's own cfg object of a model's default (or ``tag``) weights, not a copy; ``{}`` when none.

    Models built by :func:`~mindcv.models.model_factory.build_model_with_cfg` carry this object as
    ``model.pretrained_cfg``. Callers must not change it; :func:`get_pretrained_cfg` gives a copy.

    Raises:
        InvalidArgumentError: ``tag`` is not a published tag of the model (see :func:`select_pretrained_tag`).
    """
    if tag:
        return select_pretrained_tag(model_name, _model_pretrained_tags.get(model_name, {}), tag)
    return _model_pretrained_cfgs.get(model_name, {})


def get_pretrained_cfg(model_name: str, tag: Optional[str] = None) -> PretrainedCfgDict:
    """A copy of the default (or the ``tag``) pretrained cfg of a model, as a dict; ``{}`` when it has none.

    As upstream mindcv, the result is a fresh ``dict`` (changing it changes nothing in the registry); it is a
    :class:`PretrainedCfgDict`, so its fields also read as attributes (``cfg.url``, ``cfg.eval_resize``).

    Args:
        model_name: a registered name.
        tag: a published weights tag (see :func:`list_pretrained_tags`); the default weights when empty.

    Returns:
        The cfg's fields by name (an empty dict for a model without a cfg).

    Raises:
        InvalidArgumentError: ``tag`` is not a published tag of the model (see :func:`select_pretrained_tag`).
    """
    cfg = registered_pretrained_cfg(model_name, tag)
    # asdict copies deeply, as upstream's deepcopy; a plain dict cfg (a module written for upstream) is copied
    fields = copy.deepcopy(dict(cfg)) if isinstance(cfg, dict) else asdict(cfg)
    return PretrainedCfgDict(fields)


def list_pretrained_tags(model_name: str) -> List[str]:
    """Tags of the published weights of a model, default first."""
    return list(_model_pretrained_tags.get(model_name, {}))


def get_pretrained_cfg_value(model_name: str, cfg_key: str) -> Any:
    """One field of a model's default pretrained cfg (``None`` if absent)."""
    return registered_pretrained_cfg(model_name).get(cfg_key, None) if model_name in _model_pretrained_cfgs else None


def has_pretrained_cfg_key(model_name: str, cfg_key: str) -> bool:
    """Whether a model's default pretrained cfg has ``cfg_key``."""
    cfg = _model_pretrained_cfgs.get(model_name)
    return cfg is not None and cfg.get(cfg_key, None) is not None
