"""Compute kernels of our own, used where MindSpore's are slow (built at first use, checked, with a fallback)."""

from .depthwise import (
    DepthwiseConv2d,
    DirectDepthwiseUnavailableError,
    KernelStatus,
    depthwise_kernel_status,
    direct_depthwise_supported,
    set_kernel_threads,
    standard_depthwise,
    use_direct_depthwise,
)

__all__ = [
    "DepthwiseConv2d",
    "DirectDepthwiseUnavailableError",
    "KernelStatus",
    "depthwise_kernel_status",
    "direct_depthwise_supported",
    "set_kernel_threads",
    "standard_depthwise",
    "use_direct_depthwise",
]
