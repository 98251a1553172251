"""Upstream mindcv's ``mindcv.models.helpers``: the names its model files and users import from there.

The loading functions live in :mod:`mindcv.models.model_factory` and ``make_divisible`` in
:mod:`mindcv.models.arch`; they are re-exported here under upstream's module path. Differences from upstream,
each a fix of one of its defects:

* :func:`load_model_checkpoint` raises on a missing or empty path (upstream silently does nothing) and reads
  any supported layout;
* :func:`load_pretrained` raises when the cfg has no URL (upstream warns and leaves the model untrained), and
  its download is verified and shared safely between processes;
* :func:`auto_map` hands each checkpoint entry to one parameter at most, raises a :class:`CheckpointError`
  naming the parameter that has no match, and logs instead of printing.
"""

import collections.abc
import difflib
import logging
from typing import Any, Callable, Dict, List, Mapping

from mindspore import nn

from ..errors import InvalidArgumentError
from .arch import make_divisible
from .checkpoint import CheckpointError
from .model_factory import build_model_with_cfg, get_checkpoint_download_root, load_model_checkpoint, load_pretrained

__all__ = [
    "ConfigDict",
    "auto_map",
    "build_model_with_cfg",
    "get_checkpoint_download_root",
    "load_model_checkpoint",
    "load_pretrained",
    "make_divisible",
]

_logger = logging.getLogger(__name__)


def _ntuple(n: int) -> Callable[[Any], Any]:
    """Upstream's helper: ``_ntuple(2)(3) == (3, 3)``; an iterable (not a string) is returned as it is."""

    def parse(x: Any) -> Any:
        if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
            return x
        return tuple([x] * n)

    return parse


class ConfigDict(dict):
    """A dict whose keys also read and write as attributes: ``cfg.lr`` is ``cfg["lr"]``.

    As upstream, reading a missing attribute gives ``None`` (``dict.get``), so ``cfg.optional_key or default``
    works; names of dict methods (``cfg.items``) stay methods.
    """

    __getattr__ = dict.get
    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__


def auto_map(model: nn.Cell, param_dict: Mapping[str, Any], cutoff: float = 0.6) -> Dict[str, Any]:
    """Rename checkpoint entries whose names differ slightly from the model's (upstream's ``auto_mapping``).

    Every model parameter missing from ``param_dict`` takes the entry with the most similar name
    (``difflib``, similarity at least ``cutoff``) among the entries no other parameter matches exactly or has
    taken already. ``create_model`` and :func:`load_model_checkpoint` do not need this: they detect the
    checkpoint's layout and rename it exactly.

    Args:
        model: the model whose parameter names are the targets.
        param_dict: checkpoint entries by name (values are passed through untouched).
        cutoff: minimum similarity in [0, 1].

    Returns:
        A new dict: ``param_dict`` with the matched entries renamed; the mapping is logged.

    Raises:
        CheckpointError: a model parameter has no entry similar enough (the message names it).
    """
    if not 0.0 <= cutoff <= 1.0:
        raise InvalidArgumentError(f"cutoff must be in [0, 1], got {cutoff}")
    updated = dict(param_dict)
    names = [p.name for p in model.get_parameters()]
    free: List[str] = [k for k in updated if k not in names]  # entries not already matched exactly
    for name in names:
        if name in updated:
            continue
        close = difflib.get_close_matches(name, free, n=1, cutoff=cutoff)
        if not close:
            raise CheckpointError(
                f"auto_map: no checkpoint entry resembles the model parameter '{name}' "
                f"(similarity >= {cutoff}); checkpoint entries: {', '.join(list(param_dict)[:8])}..."
            )
        updated[name] = updated.pop(close[0])
        free.remove(close[0])  # one entry feeds one parameter (upstream could hand the same entry out twice)
        _logger.warning("auto_map: loading model parameter '%s' from checkpoint entry '%s'", name, close[0])
    return updated
