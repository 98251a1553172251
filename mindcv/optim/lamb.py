"""LAMB (You et al., 2020) written with plain tensor ops: MindSpore's ``nn.Lamb`` kernel has no CPU backend."""

from typing import Sequence, Union

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.nn.optim.optimizer import opt_init_args_register

__all__ = ["Lamb"]

_lamb_update = ops.MultitypeFuncGraph("lamb_update")


@_lamb_update.register(
    "Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor"
)
def _update(beta1, beta2, eps, lr, step, weight_decay, param, m, v, grad):
    grad = grad.astype(param.dtype)
    new_m = beta1 * m + (1.0 - beta1) * grad
    new_v = beta2 * v + (1.0 - beta2) * grad * grad
    m_hat = new_m / (1.0 - ops.pow(Tensor(beta1, ms.float32), step))
    v_hat = new_v / (1.0 - ops.pow(Tensor(beta2, ms.float32), step))
    update = m_hat / (ops.sqrt(v_hat) + eps) + weight_decay * param
    w_norm = ops.sqrt((param * param).sum())
    u_norm = ops.sqrt((update * update).sum())
    trust = ops.select((w_norm > 0) & (u_norm > 0), w_norm / (u_norm + 1e-12), ops.ones_like(w_norm))
    new_param = param - lr * trust * update
    ops.assign(m, new_m)
    ops.assign(v, new_v)
    ops.assign(param, new_param)
    return new_param


class Lamb(nn.Optimizer):
    """Layer-wise adaptive moments: Adam with decoupled decay, scaled per tensor by ``||w|| / ||update||``.

    Args:
        params: parameters or MindSpore parameter groups.
        learning_rate: a float or a per-step list.
        beta1, beta2: moment decays.
        eps: epsilon added to the root of the second moment.
        weight_decay: decoupled weight decay (per group when groups are given).
    """

    @opt_init_args_register
    def __init__(
        self,
        params: Union[Sequence[Parameter], Sequence[dict]],
        learning_rate: Union[float, Sequence[float]] = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, params, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.moments1 = self._parameters.clone(prefix="lamb_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="lamb_v", init="zeros")
        wds = self.group_weight_decay if self.is_group else [weight_decay] * len(self._parameters)
        self.decoupled_wd = tuple(Tensor(float(wd)) for wd in wds)

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        step = self.global_step.astype(ms.float32)
        if self.is_group_lr:
            return self.hyper_map(
                ops.partial(_lamb_update, self.beta1, self.beta2, self.eps),
                lr,
                (step,) * len(self._parameters),
                self.decoupled_wd,
                self._parameters,
                self.moments1,
                self.moments2,
                gradients,
            )
        return self.hyper_map(
            ops.partial(_lamb_update, self.beta1, self.beta2, self.eps, lr, step),
            self.decoupled_wd,
            self._parameters,
            self.moments1,
            self.moments2,
            gradients,
        )
