"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms") for MindSpore."""

from typing import Sequence, Union

from mindspore import Parameter, Tensor, nn, ops
from mindspore.nn.optim.optimizer import opt_init_args_register

__all__ = ["Lion"]

_lion_update = ops.MultitypeFuncGraph("lion_update")


@_lion_update.register("Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _update(beta1, beta2, lr, weight_decay, param, moment, grad):
    grad = grad.astype(param.dtype)
    direction = ops.sign(beta1 * moment + (1.0 - beta1) * grad)
    new_param = param - lr * (direction + weight_decay * param)  # decoupled weight decay
    ops.assign(param, new_param)
    ops.assign(moment, beta2 * moment + (1.0 - beta2) * grad)
    return new_param


class Lion(nn.Optimizer):
    """Lion: sign of an interpolated momentum, decoupled weight decay.

    Args:
        params: parameters or MindSpore parameter groups (``{"params", "weight_decay"}`` dicts).
        learning_rate: a float or a per-step list.
        beta1: interpolation factor of the update direction.
        beta2: momentum decay.
        weight_decay: decoupled weight decay (per group when groups are given).
        loss_scale: gradients are divided by it.
    """

    @opt_init_args_register
    def __init__(
        self,
        params: Union[Sequence[Parameter], Sequence[dict]],
        learning_rate: Union[float, Sequence[float]] = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.99,
        weight_decay: float = 0.0,
        loss_scale: float = 1.0,
    ) -> None:
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.moments = self._parameters.clone(prefix="lion_m", init="zeros")
        if self.is_group:
            self.decoupled_wd = tuple(Tensor(float(wd)) for wd in self.group_weight_decay)
        else:
            self.decoupled_wd = tuple(Tensor(float(weight_decay)) for _ in self._parameters)

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        if self.is_group_lr:
            return self.hyper_map(
                ops.partial(_lion_update, self.beta1, self.beta2),
                lr,
                self.decoupled_wd,
                self._parameters,
                self.moments,
                gradients,
            )
        return self.hyper_map(
            ops.partial(_lion_update, self.beta1, self.beta2, lr),
            self.decoupled_wd,
            self._parameters,
            self.moments,
            gradients,
        )
