"""Upstream mindcv's ``auto_mixed_precision(network, amp_level, amp_cast_list)`` on MindSpore's own amp functions.

Upstream ``eval()``-ed ``amp_cast_list`` (a string such as ``"[nn.Conv2d]"``); here the string is parsed as a list
of names looked up in ``mindspore.nn`` only, so nothing a config file holds is ever executed.
"""

import inspect
import re
from typing import Optional, Sequence, Tuple, Type, Union

from mindspore import amp, nn

__all__ = ["AMP_LEVELS", "auto_mixed_precision", "parse_amp_cast_list"]

AMP_LEVELS = ("O0", "O1", "O2", "O3", "auto")

_NAME = re.compile(r"^(?:(?:mindspore\.)?nn\.)?([A-Za-z_][A-Za-z0-9_]*)$")


def _cell_class(name: str, source: str) -> Type[nn.Cell]:
    match = _NAME.match(name)
    cls = getattr(nn, match.group(1), None) if match else None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Cell)):
        raise ValueError(
            f"amp_cast_list: '{name}' in {source!r} is not a cell class of mindspore.nn "
            "(valid: names such as nn.Conv2d, Dense, mindspore.nn.BatchNorm2d)"
        )
    return cls


def parse_amp_cast_list(amp_cast_list: Union[None, str, Sequence[Type[nn.Cell]]]) -> Optional[Tuple[type, ...]]:
    """The cell classes of an ``amp_cast_list``, without evaluating anything.

    Args:
        amp_cast_list: ``None``; a sequence of ``nn.Cell`` subclasses; or a string of comma-separated
            ``mindspore.nn`` class names, optionally in brackets and prefixed ``nn.`` / ``mindspore.nn.``
            (``"[nn.Conv2d, nn.Dense]"``, upstream's config format).

    Returns:
        The classes as a tuple (``None`` for ``None`` or an empty string).

    Raises:
        ValueError: a name that is not a cell class of ``mindspore.nn``, or an empty list.
        TypeError: anything else than the forms above.
    """
    if amp_cast_list is None:
        return None
    if isinstance(amp_cast_list, str):
        text = amp_cast_list.strip()
        if text.startswith(("[", "(")) and text.endswith(("]", ")")):
            text = text[1:-1]
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            return None
        return tuple(_cell_class(n, amp_cast_list) for n in names)
    if isinstance(amp_cast_list, (list, tuple)):
        if not amp_cast_list:
            raise ValueError("amp_cast_list is empty; pass None for the default lists")
        for item in amp_cast_list:
            if not (inspect.isclass(item) and issubclass(item, nn.Cell)):
                raise TypeError(f"amp_cast_list must hold nn.Cell subclasses, got {item!r}")
        return tuple(amp_cast_list)
    raise TypeError(
        "amp_cast_list must be None, a list of nn.Cell subclasses or a string of mindspore.nn names, "
        f"got {type(amp_cast_list).__name__}"
    )


def auto_mixed_precision(
    network: nn.Cell, amp_level: str = "O0", amp_cast_list: Union[None, str, Sequence[Type[nn.Cell]]] = None
) -> nn.Cell:
    """Run ``network`` in mixed precision; returns the network to train (MindSpore builds a new cell).

    Unlike upstream, which changed the network in place and returned nothing, use the returned cell: MindSpore 2.10's
    amp functions return a rewritten network (it shares the parameters of ``network``).

    Args:
        network: the model.
        amp_level: ``"O0"`` unchanged; ``"O1"`` the cells of the white list in float16; ``"O2"`` everything in
            float16 except the black list (BatchNorm, LayerNorm...); ``"O3"`` everything in float16; ``"auto"``
            MindSpore's operator-level lists.
        amp_cast_list: replaces the white list (O1) or the black list (O2); see :func:`parse_amp_cast_list`.
            Ignored (as upstream) by O0 and O3.

    Returns:
        The network to train and evaluate.

    Raises:
        ValueError: an unknown ``amp_level`` or a bad ``amp_cast_list``.
    """
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {', '.join(AMP_LEVELS)}, got {amp_level!r}")
    cast = parse_amp_cast_list(amp_cast_list)
    if amp_level == "O0":
        return network
    if cast is not None and amp_level == "O1":
        return amp.custom_mixed_precision(network, white_list=list(cast))
    if cast is not None and amp_level == "O2":
        return amp.custom_mixed_precision(network, black_list=list(cast))
    return amp.auto_mixed_precision(network, amp_level)
