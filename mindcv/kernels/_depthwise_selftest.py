"""Check a built depthwise kernel library in a child process: ``python _depthwise_selftest.py LIBRARY``.

Run by :mod:`mindcv.kernels.depthwise` before a library is first used, in a child so that a library that
does not load, crashes or runs an instruction this CPU lacks cannot take the caller down. Imports only
numpy and ctypes. Exit 0 when forward, input gradient and weight gradient agree with a numpy reference
on every stride, on odd and even sizes, batch 1 and non-square inputs, and when the kernels refuse
inconsistent shapes; otherwise prints what disagreed and exits 1.
"""

import ctypes
import sys

import numpy as np


def reference_forward(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise convolution with symmetric padding k//2, in float64."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    p = k // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for kh in range(k):
        for kw in range(k):
            window = padded[:, :, kh : kh + stride * (ho - 1) + 1 : stride, kw : kw + stride * (wo - 1) + 1 : stride]
            out += window * w[None, :, 0, kh, kw, None, None]
    return out


class Library:
    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.DwSetThreads(2)

    def call(self, name: str, arrays) -> int:
        count = len(arrays)
        params = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
        ndims = (ctypes.c_int * count)(*[a.ndim for a in arrays])
        shape_arrays = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
        shapes = (ctypes.POINTER(ctypes.c_int64) * count)(
            *[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shape_arrays]
        )
        dtypes = (ctypes.c_char_p * count)(*[str(a.dtype).encode() for a in arrays])
        function = getattr(self.lib, name)
        function.restype = ctypes.c_int
        return function(count, params, ndims, shapes, dtypes, None, None)


def check(lib: Library, n: int, c: int, h: int, w: int, k: int, stride: int, rng) -> str:
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = rng.standard_normal((n, c, ho, wo)).astype(np.float32)
    y, dx, dw = np.empty_like(dy), np.empty_like(x), np.empty_like(weight)
    where = f"N{n} C{c} {h}x{w} k{k} stride {stride}"
    if lib.call(f"DwFwdS{stride}", [x, weight, y]) != 0:
        return f"forward refused {where}"
    if lib.call(f"DwBwdInputS{stride}", [x, dy, weight, dx]) != 0:
        return f"input gradient refused {where}"
    if lib.call(f"DwBwdFilterS{stride}", [x, dy, weight, dw]) != 0:
        return f"weight gradient refused {where}"
    expected = reference_forward(x, weight, stride)
    scale = max(np.abs(expected).max(), 1.0)
    if not np.all(np.abs(y - expected) <= 1e-4 * scale):
        return f"forward differs from the reference on {where}"
    # the convolution is linear in x and in w: <y, dy> = <x, dx> = <w, dw> exactly in exact arithmetic
    inner = float((expected * dy).sum())
    for name, value in (("input", float((x.astype(np.float64) * dx).sum())), ("weight", float((weight * dw).sum()))):
        if abs(value - inner) > 1e-3 * max(abs(inner), float(np.abs(expected * dy).sum()) * 1e-2, 1.0):
            return f"{name} gradient is not the transpose of the forward pass on {where} ({value} vs {inner})"
    # a dx that is zero where it must not be is caught by the inner product above; one shape mismatch must be refused
    bad = np.empty((n, c, ho + 1, wo), np.float32)
    if lib.call(f"DwFwdS{stride}", [x, weight, bad]) == 0:
        return f"forward accepted a wrong output shape on {where}"
    return ""


def main() -> int:
    lib = Library(sys.argv[1])
    rng = np.random.default_rng(0)
    for n, c, h, w, k in ((1, 3, 7, 5, 3), (2, 4, 8, 8, 5), (2, 2, 1, 6, 3), (1, 2, 9, 9, 7), (1, 1, 2, 2, 11)):
        for stride in (1, 2):
            problem = check(lib, n, c, h, w, k, stride, rng)
            if problem:
                print(problem)
                return 1
    x64 = np.zeros((1, 1, 4, 4))
    if lib.call("DwFwdS1", [x64, np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 4, 4), np.float32)]) == 0:
        print("forward accepted float64 input")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
