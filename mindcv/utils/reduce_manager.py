"""``AllReduceSum``: sum a tensor over all devices (every device gets the result), as upstream mindcv."""

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops import ReduceOp

__all__ = ["AllReduceSum"]

_HALF = 65536  # 2**16: an int32 splits into two halves whose sums over <= 256 devices are exact in float32


class AllReduceSum(nn.Cell):
    """Sum of ``x`` over the devices of the default communication group (needs ``mindspore.communication.init()``).

    Floating-point tensors are reduced as they are. MindSpore's CPU AllReduce accepts only float32/float16, and
    upstream's scripts reduce int32 sample counts, so an integer tensor is split into its high and low 16 bits,
    each half summed in float32 (exact for int32 values on up to 256 devices) and recombined in its own dtype.
    """

    def __init__(self) -> None:
        super().__init__()
        self.allreduce_sum = ops.AllReduce(ReduceOp.SUM)

    def construct(self, x: Tensor) -> Tensor:
        if x.dtype == ms.float32 or x.dtype == ms.float16:
            return self.allreduce_sum(x)
        wide = x.astype(ms.int64)
        high = ops.floor_divide(wide, _HALF)
        low = wide - high * _HALF
        high_sum = ops.round(self.allreduce_sum(high.astype(ms.float32))).astype(ms.int64)
        low_sum = ops.round(self.allreduce_sum(low.astype(ms.float32))).astype(ms.int64)
        return (high_sum * _HALF + low_sum).astype(x.dtype)
