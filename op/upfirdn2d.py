"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2-D images.

For each axis the operation is, in this order:

1. upsample by zero insertion: sample ``m`` goes to position ``m * up`` and
   ``up - 1`` zeros follow it (length ``in * up``);
2. pad with ``p0`` zeros in front and ``p1`` at the back (a negative pad crops);
3. convolve with the FIR kernel (a true convolution, i.e. a correlation with the
   flipped kernel), keeping only the fully overlapping ("valid") positions;
4. keep every ``down``-th sample, starting with the first.

So ``out = (in * up + p0 + p1 - k + down) // down`` per axis. Every channel is
filtered with the same 2-D kernel.

The native path below is the specification and the CPU default. It is written
with depthwise (``groups=C``) convolutions, which on StyleGAN2 shapes are far
cheaper than filtering a ``[N*C, 1, H, W]`` reshaped batch. Splitting a rank-1
kernel into two 1-D passes was measured as well and was not faster on CPU, so
it is not used.
"""

import numbers

import torch
from torch.autograd import Function
from torch.nn import functional as F

from . import _ext


def _pair(value, name):
    """Turn an int or an (x, y) pair into a tuple of two positive ints."""
    if isinstance(value, numbers.Integral):
        pair = (int(value), int(value))
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or an (x, y) pair, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair


def _parse(input, kernel, up, down, pad):
    """Validate the arguments and return them in flat form.

    Returns:
        tuple: ``(up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)``.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if kernel.dim() != 2:
        raise ValueError(f"kernel must be 2-D, got shape {tuple(kernel.shape)}")
    up_x, up_y = _pair(up, "up")
    down_x, down_y = _pair(down, "down")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    elif len(pad) != 4:
        raise ValueError(f"pad must have 2 or 4 entries, got {pad!r}")
    args = (up_x, up_y, down_x, down_y) + pad
    h, w = input.shape[2:]
    kh, kw = kernel.shape
    out_h, out_w = _out_size(h, w, kh, kw, *args)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d would produce an empty output ({out_h}x{out_w})")
    return args


def _out_size(h, w, kh, kw, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
    """Output height and width of upfirdn2d."""
    out_h = (h * up_y + pad_y0 + pad_y1 - kh + down_y) // down_y
    out_w = (w * up_x + pad_x0 + pad_x1 - kw + down_x) // down_x
    return out_h, out_w


def _depthwise(kernel, channels):
    """Repeat a [kh, kw] kernel into a depthwise weight of shape [C, 1, kh, kw]."""
    return kernel[None, None].expand(channels, 1, *kernel.shape).contiguous()


def _fir_pad_down(x, kernel, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
    """upfirdn2d with ``up == 1``: one depthwise strided ``conv2d``.

    ``conv2d`` is a correlation, so correlating with the flipped kernel is the
    required convolution; its stride keeps exactly every ``down``-th valid
    position starting at the first one, which is the decimation step.
    """
    weight = _depthwise(torch.flip(kernel, [0, 1]), x.shape[1])
    if pad_x0 == pad_x1 >= 0 and pad_y0 == pad_y1 >= 0:
        # Symmetric padding is done inside conv2d (no padded copy).
        return F.conv2d(x, weight, stride=(down_y, down_x), padding=(pad_y0, pad_x0), groups=x.shape[1])
    # Asymmetric or negative: F.pad zero-pads positive entries and crops negative ones.
    x = F.pad(x, [pad_x0, pad_x1, pad_y0, pad_y1])
    return F.conv2d(x, weight, stride=(down_y, down_x), groups=x.shape[1])


def _transpose_params(up, k, pad0, pad1):
    """Padding and output_padding that make ``conv_transpose`` match one axis.

    A stride-``up`` transposed convolution writes ``x[m] * kernel[r]`` to
    position ``m * up + r``: this is zero insertion followed by a full
    convolution with the (unflipped) kernel. The valid part of upfirdn2d's
    convolution starts ``k - 1 - pad0`` positions into that full result and is
    ``in * up + pad0 + pad1 - k + 1`` long; ``padding`` trims the front (and
    the back by as much), ``output_padding`` gives back what the back needs.

    Returns:
        tuple or None: ``(padding, output_padding)``, or None when they fall
        outside what ``conv_transpose2d`` accepts (``padding >= 0`` and
        ``0 <= output_padding < up``).
    """
    padding = k - 1 - pad0
    output_padding = pad1 - pad0 + up - 1
    if padding < 0 or not 0 <= output_padding < up:
        return None
    return padding, output_padding


def _zero_insert(x, up_x, up_y):
    """Put ``up - 1`` zeros after every sample along each axis (functional, autograd-safe)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])
    return x.reshape(n, c, h * up_y, w * up_x)


def upfirdn2d_native(input, kernel, up=1, down=1, pad=(0, 0)):
    """Pure-PyTorch upfirdn2d (any device, any float dtype, any order of derivatives).

    Args:
        input (Tensor): ``[N, C, H, W]``.
        kernel (Tensor): ``[kh, kw]`` FIR kernel, shared by all channels.
        up (int or (int, int)): upsampling factor, or ``(up_x, up_y)``.
        down (int or (int, int)): downsampling factor, or ``(down_x, down_y)``.
        pad (tuple): ``(p0, p1)`` for both axes, or ``(pad_x0, pad_x1, pad_y0, pad_y1)``;
            negative entries crop.

    Returns:
        Tensor: ``[N, C, out_h, out_w]`` with ``out = (in * up + p0 + p1 - k + down) // down``.
    """
    args = _parse(input, kernel, up, down, pad)
    return _native(input, kernel, *args)


def _native(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
    """Native upfirdn2d on already validated, flattened arguments."""
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    if up_x == 1 and up_y == 1:
        return _fir_pad_down(x, kernel, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)

    kh, kw = kernel.shape
    ty = _transpose_params(up_y, kh, pad_y0, pad_y1)
    tx = _transpose_params(up_x, kw, pad_x0, pad_x1)
    if ty is not None and tx is not None:
        # Zero insertion + convolution in one depthwise transposed convolution
        # (see _transpose_params); decimation, if any, is a strided slice.
        out = F.conv_transpose2d(
            x,
            _depthwise(kernel, x.shape[1]),
            stride=(up_y, up_x),
            padding=(ty[0], tx[0]),
            output_padding=(ty[1], tx[1]),
            groups=x.shape[1],
        )
        if down_x > 1 or down_y > 1:
            out = out[:, :, ::down_y, ::down_x]
        return out

    # General fallback (e.g. pads larger than the kernel): explicit zero
    # insertion, then the up == 1 path.
    x = _zero_insert(x, up_x, up_y)
    return _fir_pad_down(x, kernel, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)


class _UpFirDn2dCuda(Function):
    """upfirdn2d through the CUDA kernel, differentiable to any order in ``input``.

    The map ``input -> output`` is linear, and its adjoint is again an
    upfirdn2d: with the kernel flipped, ``up`` and ``down`` swapped and the
    front pad ``k - 1 - pad0``; the back pad is chosen so that the result has
    exactly the input's size. The backward therefore applies this same Function
    with the adjoint's parameters, and so on for higher derivatives. No gradient
    is returned for the kernel (the FIR kernels of StyleGAN2 are fixed buffers).
    """

    @staticmethod
    def forward(ctx, input, kernel, up, down, pad):
        up_x, up_y = up
        down_x, down_y = down
        pad_x0, pad_x1, pad_y0, pad_y1 = pad
        ext = _ext.extension()
        out = ext.upfirdn2d(
            input.contiguous(), kernel.contiguous(), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1
        )
        ctx.save_for_backward(kernel)
        ctx.up, ctx.down, ctx.pad = up, down, pad
        ctx.in_hw = tuple(input.shape[2:])
        ctx.out_hw = tuple(out.shape[2:])
        return out

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (kernel,) = ctx.saved_tensors
        kh, kw = kernel.shape
        up_x, up_y = ctx.up
        down_x, down_y = ctx.down
        pad_x0, _, pad_y0, _ = ctx.pad
        in_h, in_w = ctx.in_hw
        out_h, out_w = ctx.out_hw
        # Adjoint pads: front k - 1 - p0; back makes (out * down + p0' + p1' - k + up) // up == in.
        grad_pad = (
            kw - 1 - pad_x0,
            in_w * up_x - out_w * down_x + pad_x0 - up_x + 1,
            kh - 1 - pad_y0,
            in_h * up_y - out_h * down_y + pad_y0 - up_y + 1,
        )
        grad_input = _UpFirDn2dCuda.apply(grad_output, torch.flip(kernel, [0, 1]), ctx.down, ctx.up, grad_pad)
        return grad_input, None, None, None, None


def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0), impl="auto"):
    """Upsample (zero insertion), pad, FIR-filter and downsample ``input``.

    Args:
        input (Tensor): ``[N, C, H, W]``.
        kernel (Tensor): ``[kh, kw]`` FIR kernel, applied to every channel as a
            true convolution.
        up (int or (int, int)): upsampling factor, or ``(up_x, up_y)``.
        down (int or (int, int)): downsampling factor, or ``(down_x, down_y)``.
        pad (tuple): ``(p0, p1)`` for both axes, or ``(pad_x0, pad_x1, pad_y0, pad_y1)``;
            negative entries crop.
        impl (str): ``"auto"`` (CUDA kernel for CUDA tensors when it builds,
            native otherwise), ``"native"``, or ``"cuda"`` (required).
            ``STYLEGAN2_NATIVE_OPS=1`` forces native.

    Returns:
        Tensor: ``[N, C, out_h, out_w]`` with ``out = (in * up + p0 + p1 - k + down) // down``.
    """
    args = _parse(input, kernel, up, down, pad)
    use = _ext.select_impl(impl, input.device)
    # The CUDA Function gives no kernel gradient: keep a trainable kernel on
    # the native path unless the kernel was explicitly requested.
    if use == "cuda" and not (impl == "auto" and kernel.requires_grad):
        kernel = kernel.to(device=input.device, dtype=input.dtype)
        return _UpFirDn2dCuda.apply(input, kernel, args[0:2], args[2:4], args[4:8])
    return _native(input, kernel, *args)
