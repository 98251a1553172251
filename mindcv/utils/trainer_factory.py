"""Upstream mindcv's ``create_trainer``: a ``mindspore.Model`` that trains with this package's :class:`TrainStep`.

Upstream built MindSpore's own train cell unless EMA, clipping, accumulation or a cast list asked for its custom
step, and refused a dynamic loss scale (or dropping overflowing updates) on the CPU. Here every configuration trains
with :class:`mindcv.utils.train_step.TrainStep` (clipping after the all-reduce, an all-finite overflow check and a
dynamic scale that work on every device, accumulation without graph control flow, :class:`mindcv.utils.ema.EMA`).
"""

import logging
from typing import Dict, Sequence, Type, Union

from mindspore import nn
from mindspore.train import Model

from .amp import auto_mixed_precision
from .train_step import ModelTrainStep, NetWithLoss, TrainStep

__all__ = ["get_metrics", "require_customized_train_step", "create_trainer", "LOSS_SCALE_TYPES"]

_logger = logging.getLogger(__name__)

LOSS_SCALE_TYPES = ("fixed", "dynamic", "auto")


def get_metrics(num_classes: int) -> Dict[str, nn.Metric]:
    """``Top_1_Accuracy`` (and ``Top_5_Accuracy`` when there are at least 5 classes) for ``mindspore.Model``.

    Args:
        num_classes: the number of classes (>= 1).

    Returns:
        Metric objects by name, in the order StateMonitor's ``metric_name`` lists them.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    metrics = {"Top_1_Accuracy": nn.Top1CategoricalAccuracy()}
    if num_classes >= 5:
        metrics["Top_5_Accuracy"] = nn.Top5CategoricalAccuracy()
    return metrics


def require_customized_train_step(
    ema: bool = False,
    clip_grad: bool = False,
    gradient_accumulation_steps: int = 1,
    amp_cast_list: Union[None, str, Sequence[Type[nn.Cell]]] = None,
) -> bool:
    """Whether upstream mindcv would need its custom train step for these options (EMA, clipping, accumulation or
    a cast list). Kept for upstream scripts; :func:`create_trainer` uses this package's step in every case.

    Returns:
        True when any of the options is on.
    """
    return bool(ema or clip_grad or gradient_accumulation_steps > 1 or amp_cast_list)


def create_trainer(
    network: nn.Cell,
    loss: nn.Cell,
    optimizer: nn.Optimizer,
    metrics: Union[dict, set, None],
    amp_level: str,
    amp_cast_list: Union[None, str, Sequence[Type[nn.Cell]]],
    loss_scale_type: str,
    loss_scale: float = 1.0,
    drop_overflow_update: bool = False,
    ema: bool = False,
    ema_decay: float = 0.9999,
    clip_grad: bool = False,
    clip_value: float = 15.0,
    gradient_accumulation_steps: int = 1,
) -> Model:
    """A ``mindspore.Model`` training ``network`` with :class:`TrainStep` and evaluating it with ``metrics``.

    Args:
        network: the model (as returned by ``create_model``).
        loss: the loss cell, ``loss(logits, labels)``.
        optimizer: the optimizer over ``network``'s parameters (any ``loss_scale``: the step unscales the
            gradients and hands an optimizer that divides by its own scale the gradients times that scale).
        metrics: ``get_metrics(num_classes)`` or any metrics ``mindspore.Model`` accepts.
        amp_level: ``"O0"``, ``"O1"``, ``"O2"``, ``"O3"`` or ``"auto"`` (see :func:`auto_mixed_precision`).
        amp_cast_list: cell classes (or a string of ``mindspore.nn`` names) replacing the amp white/black list.
        loss_scale_type: ``"fixed"``; ``"dynamic"`` (needs ``drop_overflow_update``); ``"auto"`` (dynamic for amp
            levels O2/O3/auto, none for O0/O1).
        loss_scale: the fixed or initial loss scale (>= 1).
        drop_overflow_update: skip updates whose gradients are not finite.
        ema: keep an EMA of the weights (``ema.<name>`` parameters of the train network).
        ema_decay: the EMA's final decay.
        clip_grad: clip the global gradient norm (after the all-reduce).
        clip_value: the maximum norm.
        gradient_accumulation_steps: micro-batches per update (>= 1).

    Returns:
        The model; ``model.train_network`` is a :class:`~mindcv.utils.train_step.ModelTrainStep` whose ``step`` is
        the :class:`TrainStep`, and evaluation runs ``nn.WithEvalCell`` (``eval_indexes=[0, 1, 2]``).

    Raises:
        ValueError: ``loss_scale`` < 1, a dynamic scale without ``drop_overflow_update``, accumulation < 1, an
            unknown ``loss_scale_type`` or ``amp_level``, or a bad ``amp_cast_list``.
    """
    if loss_scale < 1.0:
        raise ValueError(f"loss_scale must be >= 1.0, got {loss_scale}")
    scale_type = str(loss_scale_type).lower()
    if scale_type not in LOSS_SCALE_TYPES:
        raise ValueError(f"loss_scale_type must be one of {', '.join(LOSS_SCALE_TYPES)}, got {loss_scale_type!r}")
    if scale_type == "dynamic" and not drop_overflow_update:
        raise ValueError(
            "loss_scale_type 'dynamic' always drops updates whose gradients overflow: set drop_overflow_update=True"
        )
    if isinstance(gradient_accumulation_steps, bool) or gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    dynamic = scale_type == "dynamic" or (scale_type == "auto" and amp_level in ("O2", "O3", "auto"))
    if scale_type == "auto":
        _logger.info("loss_scale_type 'auto': %s", "dynamic loss scale" if dynamic else "no loss scale")
        loss_scale = loss_scale if dynamic else 1.0
    train_net = auto_mixed_precision(network, amp_level, amp_cast_list)
    step = TrainStep(
        NetWithLoss(train_net, loss, use_noise=False),
        optimizer,
        loss_scale=loss_scale,
        dynamic_loss_scale=dynamic,
        drop_overflow_update=drop_overflow_update or dynamic,
        clip_grad=clip_grad,
        clip_value=clip_value,
        accumulation_steps=gradient_accumulation_steps,
        ema=ema,
        ema_decay=ema_decay,
    )
    train_step = ModelTrainStep(step).set_train()
    eval_network = nn.WithEvalCell(train_net, loss, amp_level != "O0")
    return Model(train_step, eval_network=eval_network, metrics=metrics, eval_indexes=[0, 1, 2])
