"""Exponential moving average of the weights (and BN statistics), updated by a compiled cell."""

from typing import Dict

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

__all__ = ["EMA"]

_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _update(decay, ema, weight):
    return ops.assign(ema, ema * decay + weight.astype(ema.dtype) * (1.0 - decay))


class EMA(nn.Cell):
    """``ema = d * ema + (1 - d) * w`` after every optimizer step, for every parameter of the model.

    The decay follows TensorFlow's ``ExponentialMovingAverage(num_updates)`` used by the MnasNet
    reference: ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not
    dominated by the random initialisation. Create it after the model is built (and its weights
    loaded), before training; evaluate with :meth:`copy_to`.

    Args:
        model: the model whose parameters are averaged.
        decay: the final decay (e.g. 0.9999).
    """

    def __init__(self, model: nn.Cell, decay: float = 0.9999) -> None:
        super().__init__(auto_prefix=False)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.weights = ms.ParameterTuple(list(model.get_parameters()))
        self.ema_weights = self.weights.clone(prefix="ema", init="same")
        self.updates = Parameter(Tensor(0, ms.int32), name="ema.updates", requires_grad=False)
        self.hyper_map = ops.HyperMap()
        # files written before MnasNet-B1 took upstream's parameter names call its EMA copies after the cells
        self._legacy_names = {
            f"ema.{p.name}": f"ema.{path}" for path, p in model.parameters_and_names() if path != p.name
        }

    def construct(self) -> Tensor:
        n = self.updates.astype(ms.float32)
        decay = ops.minimum(Tensor(self.decay, ms.float32), (1.0 + n) / (10.0 + n))
        ops.assign_add(self.updates, Tensor(1, ms.int32))
        return ops.depend(decay, self.hyper_map(ops.partial(_ema_update, decay), self.ema_weights, self.weights))

    def state_dict(self) -> Dict[str, np.ndarray]:
        """EMA tensors named ``ema.<parameter>`` plus ``ema.updates``."""
        state = {p.name: p.asnumpy() for p in self.ema_weights}
        state["ema.updates"] = self.updates.asnumpy()
        return state

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` output; a missing entry (KeyError) or a wrong shape (ValueError) is an
        error naming it, raised before anything is changed."""
        state = dict(state)
        for p in self.ema_weights:  # written before MnasNet-B1 took upstream's names: named after the cells
            legacy = self._legacy_names.get(p.name)
            if p.name not in state and legacy in state:
                state[p.name] = state[legacy]
        for p in list(self.ema_weights) + [self.updates]:
            if p.name not in state:
                raise KeyError(f"checkpoint has no EMA state '{p.name}' (was it trained with --ema?)")
            if tuple(np.shape(state[p.name])) != tuple(p.shape):
                raise ValueError(
                    f"EMA state '{p.name}' has shape {np.shape(state[p.name])}, the model {tuple(p.shape)}"
                )
        for p in list(self.ema_weights) + [self.updates]:
            p.set_data(Tensor(state[p.name], p.dtype))

    def copy_to(self, model: nn.Cell) -> None:
        """Write the averaged weights into ``model`` (e.g. a separate evaluation copy)."""
        ema = {p.name[len("ema.") :]: p for p in self.ema_weights}
        for p in model.get_parameters():
            p.set_data(ema[p.name].value().copy())
