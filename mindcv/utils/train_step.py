"""The compiled training step: forward, backward, loss scaling, all-reduce, clipping, update.

One cell serves every configuration so that GRAPH and PYNATIVE mode run the same code:

* static loss scaling (``loss_scale``), optionally skipping updates whose gradients overflowed
  (``drop_overflow_update``);
* dynamic loss scaling (``dynamic_loss_scale``): the scale halves on overflow and doubles after
  ``scale_window`` clean steps. MindSpore's own ``DynamicLossScaleUpdateCell`` needs the NPU float-status
  kernel that the CPU lacks; this implementation uses ``all_finite`` and works on every device;
* gradient clipping by global norm, applied *after* the all-reduce (upstream mindcv clipped each
  device's gradients before averaging);
* gradient accumulation: :meth:`TrainStep.accumulate` adds micro-batch gradients into buffers and
  :meth:`TrainStep.apply_accumulated` performs the update (two compiled graphs, no control flow).
"""

from typing import Optional

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import all_finite
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_gradients_mean, _get_parallel_mode

__all__ = ["NetWithLoss", "TrainStep"]

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

    Args:
        network: the model.
        loss_fn: the loss cell.
        use_noise: pass the noise to the model (models without a ``noise`` input ignore it otherwise).
    """

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell, use_noise: bool = True) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.use_noise = use_noise

    def construct(self, images: Tensor, labels: Tensor, noise: Tensor) -> Tensor:
        logits = self.network(images, noise) if self.use_noise else self.network(images)
        return self.loss_fn(logits.astype(ms.float32), labels)


class TrainStep(nn.Cell):
    """One optimizer step (or one accumulation micro-step) of ``net_with_loss``.

    Args:
        net_with_loss: ``(images, labels, noise) -> loss`` (see :class:`NetWithLoss`).
        optimizer: the optimizer (created with ``loss_scale=1``: this cell unscales the gradients).
        loss_scale: initial (dynamic) or fixed loss scale.
        dynamic_loss_scale: adapt the scale (halve on overflow, double after ``scale_window`` good steps).
        drop_overflow_update: skip the update when gradients are not finite (always on when dynamic).
        scale_window: clean steps before the dynamic scale doubles.
        clip_grad: clip the global gradient norm to ``clip_value``.
        clip_value: maximum global norm.
        accumulation_steps: micro-batches per update; > 1 enables :meth:`accumulate` /
            :meth:`apply_accumulated` (``construct`` then is not used).

    Calling the cell returns ``(loss, grads_finite, loss_scale)``.
    """

    def __init__(
        self,
        net_with_loss: nn.Cell,
        optimizer: nn.Optimizer,
        loss_scale: float = 1.0,
        dynamic_loss_scale: bool = False,
        drop_overflow_update: bool = False,
        scale_window: int = 2000,
        clip_grad: bool = False,
        clip_value: float = 15.0,
        accumulation_steps: int = 1,
    ) -> None:
        super().__init__(auto_prefix=False)
        if loss_scale <= 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        if accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accumulation_steps}")
        self.network = net_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.dynamic = bool(dynamic_loss_scale)
        self.drop_overflow = bool(drop_overflow_update) or self.dynamic
        self.scale_window = int(scale_window)
        self.loss_scale = Parameter(Tensor(float(loss_scale), ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.clip_grad = bool(clip_grad)
        self.clip_value = float(clip_value)
        self.accumulation_steps = int(accumulation_steps)
        if self.accumulation_steps > 1:
            self.accumulated = self.weights.clone(prefix="accumulated", init="zeros")
        parallel = _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL)
        self.distributed = parallel and _get_device_num() > 1
        if self.distributed:
            self.reducer = nn.DistributedGradReducer(self.weights, _get_gradients_mean(), _get_device_num())

    # -- pieces shared by the fused and the accumulated path ------------------------------------------
    def _scaled_grads(self, images: Tensor, labels: Tensor, noise: Tensor):
        loss = self.network(images, labels, noise)
        sens = ops.ones_like(loss) * self.loss_scale.astype(loss.dtype)
        grads = self.grad(self.network, self.weights)(images, labels, noise, sens)
        return loss, grads

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
                self.optimizer(grads)
        else:
            self.optimizer(grads)
        if self.dynamic:
            self._update_scale(finite)
        return finite

    def _update_scale(self, finite: Tensor) -> None:
        if finite:
            good = self.good_steps + 1
            if good >= self.scale_window:
                ops.assign(self.loss_scale, self.loss_scale * 2.0)
                good = good * 0
            ops.assign(self.good_steps, good)
        else:
            ops.assign(self.loss_scale, ops.maximum(self.loss_scale / 2.0, Tensor(1.0, ms.float32)))
            ops.assign(self.good_steps, self.good_steps * 0)

    # -- fused step ---------------------------------------------------------------------------------------
    def construct(self, images: Tensor, labels: Tensor, noise: Tensor):
        loss, grads = self._scaled_grads(images, labels, noise)
        finite = self._finish(grads, Tensor(1.0, ms.float32))
        return loss, finite, self.loss_scale.value()


class _AccumulateStep(nn.Cell):
    """Micro-step: add this batch's (scaled) gradients to the buffers."""

    def __init__(self, step: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.step = step

    def construct(self, images: Tensor, labels: Tensor, noise: Tensor) -> Tensor:
        loss, grads = self.step._scaled_grads(images, labels, noise)
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
