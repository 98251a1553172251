"""Finding NaN / Inf in weights.

MindSpore's CPU ReLU maps NaN to 0, so finite logits or a finite loss do not prove finite weights;
every place that trusts weights (loading, saving, the end of a training epoch) checks the tensors.
"""

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["find_non_finite"]


_EXTENDED_FLOATS = ("bfloat16", "float8", "float6", "float4")  # numpy extension dtypes (kind 'V')


def find_non_finite(tensors: Dict[str, np.ndarray]) -> List[Tuple[str, int]]:
    """Floating-point tensors holding NaN or Inf.

    Args:
        tensors: arrays by name.

    Returns:
        ``(name, number of non-finite values)`` for each offending tensor, in the order given; only
        floating dtypes are looked at (float16/32/64 and bfloat16 / float8), integers and bools never count.
    """
    bad = []
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            if not array.dtype.name.startswith(_EXTENDED_FLOATS):
                continue
            array = array.astype(np.float32)
        count = array.size - int(np.count_nonzero(np.isfinite(array)))
        if count:
            bad.append((name, count))
    return bad
