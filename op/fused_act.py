"""Bias + leaky ReLU + scale, as used after every StyleGAN2 convolution.

``fused_leaky_relu(x, b) = leaky_relu(x + b, negative_slope) * scale`` with the
bias broadcast along dimension 1. Unlike some reference fallbacks, the native
path honours ``negative_slope``.
"""

import torch
from torch import nn
from torch.autograd import Function
from torch.nn import functional as F

from . import _ext


def _bias_view(bias, input):
    """Reshape a ``[C]`` bias so that it broadcasts along dimension 1 of ``input``."""
    return bias.view(1, bias.shape[0], *([1] * (input.dim() - 2)))


def _check(input, bias):
    if input.dim() < 2:
        raise ValueError(f"input must have at least 2 dims [N, C, ...], got shape {tuple(input.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != input.shape[1]):
        raise ValueError(f"bias must have shape [{input.shape[1]}], got {tuple(bias.shape)}")


def fused_leaky_relu_native(input, bias=None, negative_slope=0.2, scale=2**0.5):
    """Pure-PyTorch bias + leaky ReLU + scale (differentiable to any order).

    Args:
        input (Tensor): ``[N, C, ...]``.
        bias (Tensor or None): ``[C]``, added along dimension 1.
        negative_slope (float): slope for negative inputs.
        scale (float): factor applied after the activation.

    Returns:
        Tensor: same shape as ``input``.
    """
    _check(input, bias)
    if bias is not None:
        input = input + _bias_view(bias.to(input.dtype), input)
    out = F.leaky_relu(input, negative_slope)
    # leaky_relu saves its input, not its output, so scaling in place is safe.
    return out.mul_(scale) if scale != 1 else out


class _BiasActGradCuda(Function):
    """``grad * (ref > 0 ? scale : negative_slope * scale)``, elementwise.

    This is the input gradient of the fused op. It is linear in ``grad`` with a
    diagonal (self-adjoint) matrix, so its own backward is the same Function
    applied to the incoming gradient; the derivative in ``ref`` is zero almost
    everywhere (the mask is piecewise constant), hence None.
    """

    @staticmethod
    def forward(ctx, grad, ref, negative_slope, scale):
        ctx.save_for_backward(ref)
        ctx.negative_slope, ctx.scale = negative_slope, scale
        return _ext.extension().bias_act_grad(grad.contiguous(), ref.contiguous(), negative_slope, scale)

    @staticmethod
    def backward(ctx, gradgrad):
        (ref,) = ctx.saved_tensors
        return _BiasActGradCuda.apply(gradgrad, ref, ctx.negative_slope, ctx.scale), None, None, None


class _FusedLeakyReLUCuda(Function):
    """Bias + leaky ReLU + scale through the CUDA kernel.

    For ``negative_slope > 0`` and ``scale > 0`` the sign of the output equals
    the sign of ``input + bias``, so the backward reads the mask from the saved
    output (no extra memory). Otherwise ``input + bias`` itself is saved.
    """

    @staticmethod
    def forward(ctx, input, bias, negative_slope, scale):
        empty = input.new_empty(0)
        out = _ext.extension().fused_bias_act(
            input, empty if bias is None else bias.contiguous(), negative_slope, scale
        )
        if negative_slope > 0 and scale > 0:
            ref = out
        else:
            ref = input if bias is None else input + _bias_view(bias, input)
        ctx.save_for_backward(ref)
        ctx.negative_slope, ctx.scale = negative_slope, scale
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (ref,) = ctx.saved_tensors
        grad_input = _BiasActGradCuda.apply(grad_output, ref, ctx.negative_slope, ctx.scale)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_input.sum([0] + list(range(2, grad_input.dim())))
        return grad_input, grad_bias, None, None


def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=2**0.5, impl="auto"):
    """``leaky_relu(input + bias, negative_slope) * scale``, bias along dimension 1.

    Args:
        input (Tensor): ``[N, C, ...]`` (2-D for linear layers, 4-D for convs).
        bias (Tensor or None): ``[C]``.
        negative_slope (float): slope for negative inputs.
        scale (float): factor applied after the activation (default sqrt(2)).
        impl (str): ``"auto"`` (CUDA kernel for CUDA tensors when it builds,
            native otherwise), ``"native"``, or ``"cuda"`` (required).
            ``STYLEGAN2_NATIVE_OPS=1`` forces native.

    Returns:
        Tensor: same shape as ``input``.
    """
    _check(input, bias)
    if _ext.select_impl(impl, input.device) == "cuda":
        if bias is not None:
            bias = bias.to(input.dtype)
        return _FusedLeakyReLUCuda.apply(input.contiguous(), bias, float(negative_slope), float(scale))
    return fused_leaky_relu_native(input, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Module form of :func:`fused_leaky_relu` with a learnable ``[channel]`` bias.

    Args:
        channel (int): number of channels (size of dimension 1).
        bias (bool): learn a bias (initialised to zero) named ``bias``.
        negative_slope (float): slope for negative inputs.
        scale (float): factor applied after the activation.
    """

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2**0.5):
        super().__init__()
        if bias:
            self.bias = nn.Parameter(torch.zeros(channel))
        else:
            self.register_parameter("bias", None)
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input):
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)

    def extra_repr(self):
        channel = None if self.bias is None else self.bias.shape[0]
        return f"channel={channel}, negative_slope={self.negative_slope}, scale={self.scale:.4g}"
