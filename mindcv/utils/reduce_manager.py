"""``AllReduceSum``: sum a tensor over all devices (every device gets the result), as upstream mindcv."""

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops import ReduceOp

__all__ = ["AllReduceSum"]

_CHUNK = 65536  # 2**16: the sum of 16-bit chunks over <= 256 devices is exact in float32
_PLACES = (1, 2**16, 2**32, 2**48)
_INTEGERS = (ms.int8, ms.int16, ms.int32, ms.int64, ms.uint8, ms.uint16, ms.uint32, ms.uint64)


class AllReduceSum(nn.Cell):
    """Sum of ``x`` over the devices of the default communication group (needs ``mindspore.communication.init()``).

    MindSpore's CPU AllReduce accepts only float32/float16, and upstream's scripts reduce int32 sample counts, so
    other dtypes are sent as float32 pieces whose sums are exact, and the result comes back in ``x``'s dtype:

    * float32 / float16: reduced as they are;
    * float64: summed in float32 (about 1e-7 relative precision), returned as float64;
    * integers: 16-bit chunks (2 for 32-bit types, 4 for 64-bit ones), exact on up to 256 devices; the sum wraps
      at the dtype's range as an integer AllReduce would;
    * bool: refused (a sum of booleans has no boolean result; cast to int32 to count).

    Raises:
        TypeError: a bool or other unsupported dtype.
    """

    def __init__(self) -> None:
        super().__init__()
        self.allreduce_sum = ops.AllReduce(ReduceOp.SUM)

    def _sum_float32(self, x: Tensor) -> Tensor:
        return self.allreduce_sum(x.astype(ms.float32))

    def construct(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if dtype == ms.float32 or dtype == ms.float16:
            return self.allreduce_sum(x)
        if dtype == ms.float64:
            return self._sum_float32(x).astype(ms.float64)
        if dtype in _INTEGERS:
            rest = x.astype(ms.int64)
            total = ops.zeros_like(rest)
            places = _PLACES if dtype in (ms.int64, ms.uint64) else _PLACES[:2]
            for place in places:
                chunk = rest - ops.floor_divide(rest, _CHUNK) * _CHUNK  # in [0, 2**16): floor division keeps it >= 0
                rest = ops.floor_divide(rest, _CHUNK)
                total = total + ops.round(self._sum_float32(chunk)).astype(ms.int64) * place
            return total.astype(dtype)
        raise TypeError(  # graph mode raises only Python's built-in exception types
            f"AllReduceSum cannot sum a {dtype} tensor: pass float32/float16/float64 or an integer type "
            "(cast a bool mask to int32 to count it)"
        )
