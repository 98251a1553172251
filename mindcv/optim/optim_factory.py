"""``create_optimizer``: optimizers by name, with a weight-decay filter decided by parameter rank."""

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

import mindspore as ms
from mindspore import Parameter, nn

from ..errors import InvalidArgumentError
from ..io.checkpoint import CheckpointError, read_checkpoint
from ..models.checkpoint import legacy_state_name
from .lamb import Lamb
from .lion import Lion

__all__ = [
    "create_optimizer",
    "OptimInfo",
    "OPTIMIZERS",
    "list_optimizers",
    "WEIGHT_DECAY_FILTERS",
    "param_groups_weight_decay",
]

_logger = logging.getLogger(__name__)
WEIGHT_DECAY_FILTERS = ("disable", "auto", "norm_and_bias")
_NADAM_SCHEDULE_DECAY = 4e-3  # upstream's default; the only value accepted, as there is no NAdam


@dataclass(frozen=True)
class OptimInfo:
    """How to build one optimizer: its factory and the recommended epsilon (``None`` if it has none)."""

    name: str
    build: Callable[..., nn.Optimizer]
    default_eps: Optional[float] = None
    supports_loss_scale: bool = True
    description: str = ""


class AdamW(nn.AdamWeightDecay):
    """MindSpore's AdamWeightDecay (decoupled decay) plus a ``loss_scale`` that divides the gradients."""

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, loss_scale=1.0):
        super().__init__(params, learning_rate, beta1, beta2, eps, weight_decay)
        if loss_scale <= 0:
            raise InvalidArgumentError(f"loss_scale must be > 0, got {loss_scale}")
        self.loss_scale = float(loss_scale)
        self.need_scale = loss_scale != 1.0
        self.reciprocal_scale = ms.Tensor(1.0 / loss_scale, ms.float32)

    def construct(self, gradients):
        return super().construct(self.scale_grad(gradients))


def _sgd(params, lr, momentum, nesterov, eps, loss_scale, **kw):
    return nn.SGD(params, learning_rate=lr, momentum=momentum, nesterov=nesterov, loss_scale=loss_scale, **kw)


def _momentum(params, lr, momentum, nesterov, eps, loss_scale, **kw):
    return nn.Momentum(params, learning_rate=lr, momentum=momentum, use_nesterov=nesterov, loss_scale=loss_scale, **kw)


def _nesterov(params, lr, momentum, nesterov, eps, loss_scale, **kw):
    return nn.Momentum(params, learning_rate=lr, momentum=momentum, use_nesterov=True, loss_scale=loss_scale, **kw)


def _rmsprop(params, lr, momentum, nesterov, eps, loss_scale, decay=0.9, **kw):
    # TF semantics (eps inside the square root, accumulator initialised to 1): the MnasNet recipes set eps 1e-3
    return nn.RMSProp(
        params, learning_rate=lr, decay=decay, momentum=momentum, epsilon=eps, loss_scale=loss_scale, **kw
    )


def _adam(params, lr, momentum, nesterov, eps, loss_scale, beta1=0.9, beta2=0.999, **kw):
    return nn.Adam(
        params, learning_rate=lr, beta1=beta1, beta2=beta2, eps=eps, use_nesterov=nesterov, loss_scale=loss_scale, **kw
    )


def _adamw(params, lr, momentum, nesterov, eps, loss_scale, beta1=0.9, beta2=0.999, **kw):
    return AdamW(params, learning_rate=lr, beta1=beta1, beta2=beta2, eps=eps, loss_scale=loss_scale, **kw)


def _lamb(params, lr, momentum, nesterov, eps, loss_scale, beta1=0.9, beta2=0.999, **kw):
    if loss_scale != 1.0:
        raise InvalidArgumentError("lamb does not support loss_scale != 1 (scale the loss in the train step instead)")
    return Lamb(params, learning_rate=lr, beta1=beta1, beta2=beta2, eps=eps, **kw)


def _lion(params, lr, momentum, nesterov, eps, loss_scale, beta1=0.9, beta2=0.99, **kw):
    return Lion(params, learning_rate=lr, beta1=beta1, beta2=beta2, loss_scale=loss_scale, **kw)


def _adagrad(params, lr, momentum, nesterov, eps, loss_scale, **kw):
    return nn.Adagrad(params, learning_rate=lr, loss_scale=loss_scale, **kw)


OPTIMIZERS: Dict[str, OptimInfo] = {
    info.name: info
    for info in (
        OptimInfo("sgd", _sgd, description="SGD with optional momentum"),
        OptimInfo("momentum", _momentum, description="heavy-ball momentum (nesterov=True for Nesterov)"),
        OptimInfo("nesterov", _nesterov, description="Nesterov momentum"),
        OptimInfo(
            "rmsprop", _rmsprop, 1e-10, description="TF-style RMSProp (decay 0.9), the MnasNet paper's optimizer"
        ),
        OptimInfo("adam", _adam, 1e-8),
        OptimInfo("adamw", _adamw, 1e-8, description="Adam with decoupled weight decay"),
        OptimInfo("lamb", _lamb, 1e-6, supports_loss_scale=False),
        OptimInfo("lion", _lion),
        OptimInfo("adagrad", _adagrad),
    )
}


def list_optimizers() -> List[str]:
    """Names accepted by :func:`create_optimizer`."""
    return sorted(OPTIMIZERS)


def param_groups_weight_decay(
    params: Sequence[Parameter], weight_decay: float, no_weight_decay: Sequence[str] = ()
) -> List[dict]:
    """Two groups: decayed parameters, and 1-D ones (BN gamma/beta, biases) plus named exceptions without decay.

    The decision is by rank, not by name, so it holds for any layer naming.
    """
    skip = set(no_weight_decay)
    decay, no_decay = [], []
    for p in params:
        (no_decay if len(p.shape) <= 1 or p.name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]] + [{"order_params": list(params)}]


def create_optimizer(
    model_or_params: Union[nn.Cell, Sequence[Parameter], Sequence[dict]],
    opt: str = "adam",
    lr: Union[float, Sequence[float]] = 1e-3,
    weight_decay: float = 0,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay_filter: str = "disable",
    layer_decay: Optional[float] = None,
    loss_scale: float = 1.0,
    schedule_decay: float = _NADAM_SCHEDULE_DECAY,
    checkpoint_path: str = "",
    eps: Optional[float] = None,
    **kwargs: Any,
) -> nn.Optimizer:
    """Create an optimizer.

    Args:
        model_or_params: a model (its trainable parameters; ``model.no_weight_decay()`` is honoured), a
            parameter list, or MindSpore parameter groups (passed through).
        opt: one of :func:`list_optimizers` (case-insensitive).
        lr: a float or a per-step list (see ``create_scheduler``).
        weight_decay: weight decay.
        momentum: momentum (sgd, momentum, nesterov, rmsprop).
        nesterov: Nesterov momentum (sgd, momentum, adam).
        weight_decay_filter: ``"disable"`` decays every parameter; ``"norm_and_bias"`` exempts 1-D
            parameters (BN gamma/beta, biases) by rank; ``"auto"`` leaves it to MindSpore's default
            (which exempts parameters named beta/gamma).
        layer_decay: upstream's layer-wise learning-rate decay. Only ``None`` is accepted: upstream groups layers
            with a model's ``group_matcher`` or classifier name, which MnasNet lacks, so there the option changes
            nothing; a value is an error rather than silently ignored.
        loss_scale: gradients are divided by it (static loss scaling).
        schedule_decay: upstream's NAdam momentum-schedule decay. NAdam is not one of the optimizers here, so
            only the default ``4e-3`` is accepted (upstream code passes it; it changes nothing); any other value
            is an error rather than silently ignored.
        checkpoint_path: restore optimizer state (moments, global step) from this checkpoint.
        eps: numerical epsilon of rmsprop, adam, adamw and lamb. ``None`` gives upstream mindcv's values: RMSProp
            1e-10 (upstream's ``eps`` default; the MnasNet recipes set 1e-3, as TF's MnasNet does), Adam/AdamW
            1e-8, Lamb 1e-6. Upstream passes ``eps`` to RMSProp only and silently ignores it for the others;
            here a given value is used by every optimizer that has an epsilon.
        **kwargs: optimizer-specific options (``decay`` for rmsprop, ``beta1``/``beta2`` ...).

    Returns:
        The optimizer.

    Raises:
        ValueError: unknown optimizer or filter (the message lists the valid ones), or invalid values.
    """
    if schedule_decay != _NADAM_SCHEDULE_DECAY:
        raise InvalidArgumentError(
            f"schedule_decay={schedule_decay!r} sets NAdam's momentum schedule, but NAdam is not available "
            f"(optimizers: {', '.join(list_optimizers())}); leave schedule_decay at its default {_NADAM_SCHEDULE_DECAY}"
        )
    if layer_decay is not None:
        raise InvalidArgumentError(
            f"layer_decay={layer_decay!r} is not supported: layer-wise learning-rate decay needs a model with layer "
            "groups (upstream's ViT-style models), and on MnasNet upstream's option changes nothing; leave it None"
        )
    name = opt.lower()
    if name not in OPTIMIZERS:
        raise InvalidArgumentError(f"unknown optimizer '{opt}'; valid: {', '.join(list_optimizers())}")
    if weight_decay_filter not in WEIGHT_DECAY_FILTERS:
        raise InvalidArgumentError(
            f"unknown weight_decay_filter '{weight_decay_filter}'; valid: {', '.join(WEIGHT_DECAY_FILTERS)}"
        )
    if loss_scale <= 0:
        raise InvalidArgumentError(f"loss_scale must be > 0, got {loss_scale}")
    info = OPTIMIZERS[name]
    no_wd: Sequence[str] = ()
    if isinstance(model_or_params, nn.Cell):
        if hasattr(model_or_params, "no_weight_decay"):
            no_wd = list(model_or_params.no_weight_decay())
        params = model_or_params.trainable_params()
    else:
        params = list(model_or_params)
    is_groups = bool(params) and isinstance(params[0], dict)
    if is_groups:
        _check_groups(params)
    if is_groups or weight_decay_filter == "auto":
        groups, optimizer_wd = params, weight_decay  # groups pass through; "auto": MindSpore's name filter
    elif weight_decay_filter == "disable":
        groups, optimizer_wd = [{"params": params, "weight_decay": weight_decay}, {"order_params": params}], 0.0
    else:
        groups, optimizer_wd = param_groups_weight_decay(params, weight_decay, no_wd), 0.0
    if eps is None:
        eps = info.default_eps
    lr_value = ms.Tensor(np.asarray(lr, np.float32)) if isinstance(lr, (list, tuple, np.ndarray)) else lr
    optimizer = info.build(groups, lr_value, momentum, nesterov, eps, loss_scale, weight_decay=optimizer_wd, **kwargs)
    if checkpoint_path:
        _restore_state(optimizer, checkpoint_path)
    return optimizer


def _check_groups(groups: Sequence[dict]) -> None:
    """Refuse a parameter group that selects nothing, naming it and the names there are to select from.

    Groups are usually built by filtering parameter names; a filter written for another model's names (upstream
    mindcv's ``features.N`` on MnasNet-A1, which this package names ``conv_stem``, ``blocks.S.B``...) selects
    nothing, and MindSpore's own error does not say which group or why.
    """
    everything = [p.name for g in groups if isinstance(g, dict) for p in g.get("order_params", g.get("params", []))]
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or "order_params" in group:
            continue
        if not list(group.get("params", [])):
            stems = sorted({".".join(n.split(".")[:2]) for n in everything})
            shown = ", ".join(stems[:12]) + (f" and {len(stems) - 12} more" if len(stems) > 12 else "")
            raise InvalidArgumentError(
                f"parameter group {index} selects no parameters (its filter matched no name). This model's names "
                f"start with: {shown}. Only MnasNet-B1 (mnasnet_050 ... mnasnet_140) carries upstream mindcv's "
                "features.N names; other models are named after their cells (conv_stem, blocks.S.B, conv_head)"
            )


def load_optimizer_state(optimizer: nn.Optimizer, tensors: Dict[str, Any], source: str = "<state>") -> None:
    """Copy saved optimizer state (moments, global step; names optionally prefixed ``optimizer.``) into ``optimizer``.

    Args:
        optimizer: the optimizer to restore.
        tensors: arrays by name, as :func:`mindcv.io.checkpoint.read_checkpoint` returns them.
        source: a name for the checkpoint in error messages.

    Raises:
        CheckpointError: a state tensor of the optimizer is missing (e.g. saved by another optimizer).
    """
    state = {k[len("optimizer.") :] if k.startswith("optimizer.") else k: v for k, v in tensors.items()}
    params = [p for p in optimizer.get_parameters() if not p.name.startswith("learning_rate")]
    for p in params:  # a file written before MnasNet-B1 took upstream's names names the moments after the cells
        legacy = legacy_state_name(p.name) if p.name not in state else None
        if legacy is not None and legacy in state:
            state[p.name] = state.pop(legacy)
    missing = [p.name for p in params if p.name not in state]
    if missing:
        raise CheckpointError(
            f"'{source}' has no optimizer state for {len(missing)} tensors, e.g. {missing[:3]} (different optimizer?)"
        )
    # files written before mindcv.io.checkpoint kept 0-d arrays hold scalar state (momentum, beta powers) as (1,)
    for p in params:
        if tuple(p.shape) == () and np.shape(state[p.name]) == (1,):
            state[p.name] = np.reshape(state[p.name], ())
    wrong = [
        f"{p.name} {tuple(state[p.name].shape)} vs {tuple(p.shape)}" for p in params if state[p.name].shape != p.shape
    ]
    if wrong:
        raise CheckpointError(
            f"'{source}': optimizer state of the wrong shape for {len(wrong)} tensors, e.g. {wrong[:3]}"
        )
    for p in params:
        p.set_data(ms.Tensor(state[p.name], p.dtype))


def _restore_state(optimizer: nn.Optimizer, path: str) -> None:
    load_optimizer_state(optimizer, read_checkpoint(path)[0], os.path.basename(path))
