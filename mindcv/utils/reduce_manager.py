"""``AllReduceSum``: sum a tensor over all devices (every device gets the result), as upstream mindcv."""

from mindspore import Tensor, nn, ops
from mindspore.ops import ReduceOp

__all__ = ["AllReduceSum"]


class AllReduceSum(nn.Cell):
    """Sum of ``x`` over the devices of the default communication group (needs ``mindspore.communication.init()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.allreduce_sum = ops.AllReduce(ReduceOp.SUM)

    def construct(self, x: Tensor) -> Tensor:
        return self.allreduce_sum(x)
