"""The compiled training step: forward, backward, loss scaling, all-reduce, clipping, update.

One cell serves every configuration so that GRAPH and PYNATIVE mode run the same code:

* static loss scaling (``loss_scale``), optionally skipping updates whose gradients overflowed
  (``drop_overflow_update``);
* dynamic loss scaling (``dynamic_loss_scale``): the scale halves on overflow and doubles after
  ``scale_window`` clean steps. MindSpore's own ``DynamicLossScaleUpdateCell`` needs the NPU float-status
  kernel that the CPU lacks; this implementation uses ``all_finite`` and works on every device;
* gradient clipping by global norm, applied *after* the all-reduce (upstream mindcv clipped each
  device's gradients before averaging);
* gradient accumulation: :func:`make_accumulation_cells` gives a cell adding micro-batch gradients into buffers
  and a cell performing the update (two compiled graphs, no control flow);
* an optional EMA of the weights (:class:`mindcv.utils.ema.EMA`) updated after every applied update.

Upstream mindcv's signature (``TrainStep(network, optimizer, scale_sense, ema=..., ema_decay=..., clip_grad=...,
clip_value=..., gradient_accumulation_steps=...)``) is accepted by the same class, and the step takes any number of
inputs (``(images, labels)`` from ``mindspore.Model``, ``(images, labels, noise)`` from :mod:`mindcv.engine`).
:class:`ModelTrainStep` lets ``mindspore.Model`` drive the accumulation cells.
"""

import math
from typing import Optional, Tuple, Union

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import all_finite
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_gradients_mean, _get_parallel_mode

from ..errors import InvalidArgumentError
from .ema import EMA

__all__ = ["NetWithLoss", "TrainStep", "GradientAccumulation", "ModelTrainStep", "make_accumulation_cells"]

_scale_grad = ops.MultitypeFuncGraph("scale_grad")


@_scale_grad.register("Tensor", "Tensor")
def _scale(scale, grad):
    return grad * scale.astype(grad.dtype)


_accumulate = ops.MultitypeFuncGraph("accumulate")


@_accumulate.register("Tensor", "Tensor")
def _add(buffer, grad):
    return ops.assign_add(buffer, grad.astype(buffer.dtype))


_zero = ops.MultitypeFuncGraph("zero")


@_zero.register("Tensor")
def _zero_buffer(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))


class NetWithLoss(nn.Cell):
    """``loss(model(images, noise), labels)``; ``noise`` drives dropout (see ``mindcv.models.layers.Dropout``).

    The logits are cast to float32 before the loss, so a model run in float16 (amp level O2/O3) gets a float32 loss.

    Args:
        network: the model.
        loss_fn: the loss cell.
        use_noise: pass the noise to the model (models without a ``noise`` input ignore it otherwise). Called
            without ``noise`` (as ``mindspore.Model`` does), the model runs its own dropout.
    """

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell, use_noise: bool = True) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.use_noise = use_noise

    def construct(self, images: Tensor, labels: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        if noise is None or not self.use_noise:
            logits = self.network(images)
        else:
            logits = self.network(images, noise)
        return self.loss_fn(logits.astype(ms.float32), labels)


def _scale_from_sense(scale_sense) -> Tuple[float, bool, bool, Optional[int], Optional[float]]:
    """Upstream's ``scale_sense`` as ``(scale, dynamic, drop_overflow_update, scale_window, scale_factor)``.

    Accepted: a positive number or scalar Tensor (a fixed scale, no overflow check, as upstream),
    ``nn.FixedLossScaleUpdateCell`` (fixed scale, overflowing updates dropped) or ``nn.DynamicLossScaleUpdateCell``
    (dynamic scale; its window and factor are kept). The update cell itself is not run: MindSpore's needs the NPU
    float-status kernel, so this step's all-finite check and scale update are used on every device.
    """
    if isinstance(scale_sense, nn.DynamicLossScaleUpdateCell):
        window = int(np.asarray(scale_sense.scale_window.asnumpy()))
        factor = float(np.asarray(scale_sense.scale_factor.asnumpy()))
        return float(scale_sense.get_loss_scale()), True, True, window, factor
    if isinstance(scale_sense, nn.FixedLossScaleUpdateCell):
        return float(scale_sense.get_loss_scale()), False, True, None, None
    if isinstance(scale_sense, Tensor):
        if scale_sense.size != 1:
            raise InvalidArgumentError(f"scale_sense must be a scalar Tensor, got shape {tuple(scale_sense.shape)}")
        return float(np.asarray(scale_sense.asnumpy()).reshape(())), False, False, None, None
    if isinstance(scale_sense, (int, float)) and not isinstance(scale_sense, bool):
        return float(scale_sense), False, False, None, None
    raise TypeError(
        "scale_sense must be a positive number, a scalar Tensor, nn.FixedLossScaleUpdateCell or "
        f"nn.DynamicLossScaleUpdateCell, got {type(scale_sense).__name__}"
    )


class TrainStep(nn.Cell):
    """One optimizer step (or one accumulation micro-step) of ``net_with_loss``.

    The positional arguments are upstream mindcv's, in upstream's order: ``TrainStep(network, optimizer,
    scale_sense=1.0, ema=False, ema_decay=0.9999, clip_grad=False, clip_value=15.0, gradient_accumulation_steps=1)``
    (the third may be named ``loss_scale`` or ``scale_sense``). This package's own options are keyword-only:
    ``dynamic_loss_scale``, ``drop_overflow_update``, ``scale_window``, ``accumulation_steps``, ``scale_factor``.

    Fixed against upstream: clipping acts on the all-reduced (global) gradients; a dynamic loss scale works on the
    CPU; the EMA is :class:`mindcv.utils.ema.EMA` (decay ``min(ema_decay, (1 + n) / (10 + n))``, upstream
    ``ema_decay * (1 - exp(-n / 2000))``), updated only after an applied update.

    Args:
        net_with_loss: ``(*inputs) -> loss``, e.g. :class:`NetWithLoss` called with ``(images, labels, noise)``
            or ``nn.WithLossCell`` called with ``(images, labels)``.
        optimizer: the optimizer. This cell unscales the gradients; an optimizer created with ``loss_scale=L``
            (which divides its gradients by L) is handed them multiplied by L.
        loss_scale: initial (dynamic) or fixed loss scale; also accepts what ``scale_sense`` accepts.
        dynamic_loss_scale: adapt the scale (divide by ``scale_factor`` on overflow, multiply after
            ``scale_window`` good steps).
        drop_overflow_update: skip the update when gradients are not finite (always on when dynamic).
        scale_window: clean steps before the dynamic scale grows.
        clip_grad: clip the global gradient norm to ``clip_value``.
        clip_value: maximum global norm.
        accumulation_steps: micro-batches per update; > 1 enables :func:`make_accumulation_cells`
            (``construct`` then is not used).
        network: upstream's name for ``net_with_loss``.
        scale_sense: upstream's loss scale: a number or scalar Tensor (fixed, no overflow check),
            ``nn.FixedLossScaleUpdateCell`` (fixed, overflowing updates dropped) or ``nn.DynamicLossScaleUpdateCell``
            (dynamic, with its window and factor).
        ema: keep an exponential moving average of all parameters (``ema.<name>``, saved with the step's
            parameters); updated after every applied update.
        ema_decay: the EMA's final decay.
        gradient_accumulation_steps: upstream's name for ``accumulation_steps``.
        scale_factor: growth / shrink factor of the dynamic scale.

    Calling the cell returns ``(loss, grads_finite, loss_scale)``.

    Raises:
        ValueError: a non-positive scale, accumulation below 1, a bad ``ema_decay``, an argument given under both
            of its names, or a missing network / optimizer.
        TypeError: ``scale_sense`` of an unsupported type.
    """

    def __init__(
        self,
        net_with_loss: Optional[nn.Cell] = None,
        optimizer: Optional[nn.Optimizer] = None,
        loss_scale: Union[float, Tensor, nn.Cell] = 1.0,
        ema: bool = False,
        ema_decay: float = 0.9999,
        clip_grad: bool = False,
        clip_value: float = 15.0,
        gradient_accumulation_steps: Optional[int] = None,
        *,
        dynamic_loss_scale: bool = False,
        drop_overflow_update: bool = False,
        scale_window: int = 2000,
        accumulation_steps: int = 1,
        network: Optional[nn.Cell] = None,
        scale_sense: Union[float, Tensor, nn.Cell, None] = None,
        scale_factor: float = 2.0,
    ) -> None:
        super().__init__(auto_prefix=False)
        if network is not None:
            if net_with_loss is not None:
                raise InvalidArgumentError("pass the network either as net_with_loss or as network, not both")
            net_with_loss = network
        if net_with_loss is None or optimizer is None:
            raise InvalidArgumentError("TrainStep needs a network with loss and an optimizer")
        if scale_sense is not None:
            if not isinstance(loss_scale, (int, float)) or loss_scale != 1.0 or dynamic_loss_scale:
                raise InvalidArgumentError("pass the loss scale either as loss_scale or as scale_sense, not both")
            loss_scale = scale_sense
        scale, dynamic, drop, window, factor = _scale_from_sense(loss_scale)
        dynamic = dynamic or bool(dynamic_loss_scale)
        drop_overflow_update = bool(drop_overflow_update) or drop
        scale_window = window if window is not None else scale_window
        scale_factor = factor if factor is not None else scale_factor
        if gradient_accumulation_steps is not None:
            if accumulation_steps != 1 and accumulation_steps != gradient_accumulation_steps:
                raise InvalidArgumentError(
                    f"accumulation_steps={accumulation_steps} and gradient_accumulation_steps="
                    f"{gradient_accumulation_steps} disagree; pass one of them"
                )
            accumulation_steps = gradient_accumulation_steps
        if not math.isfinite(scale) or scale <= 0:
            raise InvalidArgumentError(f"loss_scale must be a finite number > 0, got {scale}")
        if (
            isinstance(accumulation_steps, bool)
            or int(accumulation_steps) != accumulation_steps
            or accumulation_steps < 1
        ):
            raise InvalidArgumentError(f"gradient_accumulation_steps must be an integer >= 1, got {accumulation_steps}")
        if dynamic and (scale_factor <= 1.0 or scale_window < 1):
            raise InvalidArgumentError(
                f"a dynamic loss scale needs scale_factor > 1 and scale_window >= 1, got {scale_factor}, {scale_window}"
            )
        self.network = net_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.dynamic = bool(dynamic)
        self.drop_overflow = bool(drop_overflow_update) or self.dynamic
        self.scale_window = int(scale_window)
        self.scale_factor = float(scale_factor)
        self.loss_scale = Parameter(Tensor(scale, ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.clip_grad = bool(clip_grad)
        self.clip_value = float(clip_value)
        # an optimizer created with loss_scale=L (upstream's train.py does so for a fixed scale) divides what it gets
        # by L: it is handed the true (unscaled, clipped) gradients times L
        self.optimizer_scale = float(getattr(optimizer, "loss_scale", 1.0))
        self.accumulation_steps = int(accumulation_steps)
        if self.accumulation_steps > 1:
            self.accumulated = self.weights.clone(prefix="accumulated", init="zeros")
        # upstream's attribute names: `ema` is the flag, the averaged weights are `ema.<name>` parameters
        self.ema = bool(ema)
        self.ema_decay = float(ema_decay)
        if self.ema:
            self.ema_updater = EMA(self.network, self.ema_decay)
        parallel = _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL)
        self.distributed = parallel and _get_device_num() > 1
        if self.distributed:
            self.reducer = nn.DistributedGradReducer(self.weights, _get_gradients_mean(), _get_device_num())

    # -- pieces shared by the fused and the accumulated path ------------------------------------------
    def _scaled_grads(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.ones_like(loss) * self.loss_scale.astype(loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        return loss, grads

    def _apply(self, grads) -> None:
        if self.optimizer_scale != 1.0:
            grads = self.hyper_map(ops.partial(_scale_grad, Tensor(self.optimizer_scale, ms.float32)), grads)
        self.optimizer(grads)
        if self.ema:
            self.ema_updater()

    def _finish(self, grads, divisor: Tensor):
        """All-reduce, unscale, check, clip and apply; returns whether the gradients were finite."""
        if self.distributed:
            grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(_scale_grad, 1.0 / (self.loss_scale * divisor)), grads)
        finite = all_finite(grads)
        if self.clip_grad:
            grads = ops.clip_by_global_norm(grads, self.clip_value)
        if self.drop_overflow:
            if finite:
                self._apply(grads)
        else:
            self._apply(grads)
        if self.dynamic:
            self._update_scale(finite)
        return finite

    def _update_scale(self, finite: Tensor) -> None:
        if finite:
            good = self.good_steps + 1
            if good >= self.scale_window:
                ops.assign(self.loss_scale, self.loss_scale * self.scale_factor)
                good = good * 0
            ops.assign(self.good_steps, good)
        else:
            ops.assign(self.loss_scale, ops.maximum(self.loss_scale / self.scale_factor, Tensor(1.0, ms.float32)))
            ops.assign(self.good_steps, self.good_steps * 0)

    # -- fused step ---------------------------------------------------------------------------------------
    def construct(self, *inputs):
        loss, grads = self._scaled_grads(*inputs)
        finite = self._finish(grads, Tensor(1.0, ms.float32))
        return loss, finite, self.loss_scale.value()


class _AccumulateStep(nn.Cell):
    """Micro-step: add this batch's (scaled) gradients to the buffers."""

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, *inputs) -> Tensor:
        loss, grads = self.step._scaled_grads(*inputs)
        loss = ops.depend(loss, self.step.hyper_map(_accumulate, self.step.accumulated, grads))
        return loss


class _ApplyAccumulated(nn.Cell):
    """Update with the mean of the accumulated gradients, then clear the buffers."""

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self):
        divisor = Tensor(float(self.step.accumulation_steps), ms.float32)
        grads = self.step.hyper_map(ops.partial(_scale_grad, Tensor(1.0, ms.float32)), self.step.accumulated)
        finite = self.step._finish(grads, divisor)
        finite = ops.depend(finite, self.step.hyper_map(_zero, self.step.accumulated))
        return finite, self.step.loss_scale.value()


def make_accumulation_cells(step: TrainStep) -> Optional[tuple]:
    """``(accumulate, apply)`` cells for a step with ``accumulation_steps > 1`` (else ``None``)."""
    if step.accumulation_steps == 1:
        return None
    return _AccumulateStep(step), _ApplyAccumulated(step)


class ModelTrainStep(nn.Cell):
    """A :class:`TrainStep` as ``mindspore.Model``'s train network: one call per batch, ``(images, labels)``.

    Without accumulation the call is the fused step. With ``accumulation_steps = N`` every call adds the batch's
    gradients and every N-th call also applies their mean: the choice is made in Python between the two compiled
    cells of :func:`make_accumulation_cells`, so neither graph holds control flow (GRAPH and PYNATIVE run the same
    code). As upstream mindcv, the optimizer's ``global_step`` advances on every micro-batch, so a learning-rate
    schedule built per batch (``create_scheduler(steps_per_epoch=loader size)``) keeps its length.

    Args:
        step: the train step.

    Calling returns ``(loss, grads_finite, loss_scale)``; on a micro-batch without update ``grads_finite`` is True.
    """

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.step = step
        self.network = step.network
        self.optimizer = step.optimizer
        cells = make_accumulation_cells(step)
        self.accumulation_steps = step.accumulation_steps
        if cells is not None:
            self.accumulate_cell, self.apply_cell = cells
        self.micro = 0

    def __call__(self, *inputs):
        if self.accumulation_steps == 1:
            return self.step(*inputs)
        loss = self.accumulate_cell(*inputs)
        self.micro += 1
        if self.micro < self.accumulation_steps:
            # upstream calls optimizer.get_lr() here: the schedule counts micro-batches
            ops.assign_add(self.optimizer.global_step, Tensor([1], ms.int32))
            return loss, Tensor(True), self.step.loss_scale.value()
        self.micro = 0
        finite, scale = self.apply_cell()
        return loss, finite, scale

    def construct(self, *inputs):
        return self.step(*inputs)


_accumulate_mean = ops.MultitypeFuncGraph("accumulate_mean")


@_accumulate_mean.register("Tensor", "Tensor", "Tensor")
def _add_mean(steps, buffer, grad):
    return ops.assign_add(buffer, grad.astype(buffer.dtype) / steps.astype(buffer.dtype))


class GradientAccumulation(nn.Cell):
    """Upstream mindcv's accumulator for a hand-written train step: ``loss = acc(loss, grads)``.

    Every call adds ``grads / max_accumulation_step`` to buffers; every ``max_accumulation_step``-th call reduces
    the buffers with ``grad_reducer``, applies them with ``optimizer`` and clears them; the other calls advance the
    optimizer's ``global_step`` (the learning-rate schedule counts micro-batches), as upstream meant.
    :class:`TrainStep` does not use this cell (it accumulates with :func:`make_accumulation_cells`, which also
    handles loss scaling and clipping); it exists for code written against upstream's API.

    Args:
        max_accumulation_step: micro-batches per update (>= 1).
        optimizer: the optimizer.
        grad_reducer: the cross-device reducer (``nn.DistributedGradReducer``, or ``ops.identity`` /
            ``nn.Identity()`` on one device).
    """

    def __init__(self, max_accumulation_step: int, optimizer: nn.Optimizer, grad_reducer) -> None:
        super().__init__(auto_prefix=False)
        if isinstance(max_accumulation_step, bool) or not isinstance(max_accumulation_step, int):
            raise InvalidArgumentError(f"max_accumulation_step must be an integer, got {max_accumulation_step!r}")
        if max_accumulation_step < 1:
            raise InvalidArgumentError(f"max_accumulation_step must be >= 1, got {max_accumulation_step}")
        self.optimizer = optimizer
        self.grad_reducer = grad_reducer
        self.hyper_map = ops.HyperMap()
        self._max_accumulation_step = max_accumulation_step
        self._steps = Tensor(float(max_accumulation_step), ms.float32)
        self._grad_accumulation = optimizer.parameters.clone(prefix="grad_accumulation", init="zeros")
        self._accumulation_step = Parameter(Tensor(0, ms.int32), name="accumulation_step", requires_grad=False)

    def construct(self, loss: Tensor, grads) -> Tensor:
        loss = ops.depend(
            loss, self.hyper_map(ops.partial(_accumulate_mean, self._steps), self._grad_accumulation, grads)
        )
        ops.assign_add(self._accumulation_step, Tensor(1, ms.int32))
        if self._accumulation_step >= self._max_accumulation_step:
            loss = ops.depend(loss, self.optimizer(self.grad_reducer(self._grad_accumulation)))
            loss = ops.depend(loss, self.hyper_map(_zero, self._grad_accumulation))
            ops.assign(self._accumulation_step, Tensor(0, ms.int32))
        else:
            # upstream called optimizer.get_lr(), which advanced global_step in older MindSpore; 2.10's does not
            loss = ops.depend(loss, ops.assign_add(self.optimizer.global_step, Tensor([1], ms.int32)))
        return loss
