"""Fused ops for StyleGAN2: bias + leaky ReLU, and upfirdn2d.

Each op has a pure-PyTorch ("native") implementation, used on CPU and as the
fallback, and an optional CUDA kernel that is compiled lazily on the first CUDA
call (never at import). ``STYLEGAN2_NATIVE_OPS=1`` forces the native path.
"""

from .fused_act import FusedLeakyReLU, fused_leaky_relu
from .upfirdn2d import upfirdn2d

__all__ = ["FusedLeakyReLU", "fused_leaky_relu", "upfirdn2d"]
