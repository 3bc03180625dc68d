"""Tests for op/: upfirdn2d and fused_leaky_relu (native path, dispatch, CUDA parity)."""

import importlib
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import op
from op import _ext

# Submodules by name: ``op.upfirdn2d`` the attribute is the function, not the module.
fa = importlib.import_module("op.fused_act")
ufd = importlib.import_module("op.upfirdn2d")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- helpers


def blur_kernel(scale=1.0):
    """StyleGAN's make_kernel([1, 3, 3, 1]) (normalised outer product), times ``scale``."""
    k = np.array([1.0, 3.0, 3.0, 1.0])
    k2 = np.outer(k, k)
    return torch.tensor(k2 / k2.sum() * scale)


def random_kernel(kh=3, kw=4, seed=1):
    """A non-symmetric, non-separable kernel, to catch flip and axis mistakes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(kh, kw, generator=g, dtype=torch.float64)


def reference_upfirdn2d(x, k, up, down, pad):
    """Naive float64 upfirdn2d with explicit loops, written from the definition.

    zero insertion -> pad/crop -> direct convolution sum -> decimation.
    """
    x = np.asarray(x, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    ux, uy = (up, up) if isinstance(up, int) else up
    dx, dy = (down, down) if isinstance(down, int) else down
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    kh, kw = k.shape

    # 1. zero insertion: sample m lands on m * up, followed by up - 1 zeros.
    uh, uw = h * uy, w * ux
    u = np.zeros((n, c, uh, uw))
    for i in range(h):
        for j in range(w):
            u[:, :, i * uy, j * ux] = x[:, :, i, j]

    # 2. pad (positive) or crop (negative) each side.
    ph, pw = uh + py0 + py1, uw + px0 + px1
    v = np.zeros((n, c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            si, sj = i - py0, j - px0
            if 0 <= si < uh and 0 <= sj < uw:
                v[:, :, i, j] = u[:, :, si, sj]

    # 3. true convolution, valid part: y[i, j] = sum_ab v[i + kh-1-a, j + kw-1-b] k[a, b].
    fh, fw = ph - kh + 1, pw - kw + 1
    y = np.zeros((n, c, fh, fw))
    for i in range(fh):
        for j in range(fw):
            acc = np.zeros((n, c))
            for a in range(kh):
                for b in range(kw):
                    acc += v[:, :, i + kh - 1 - a, j + kw - 1 - b] * k[a, b]
            y[:, :, i, j] = acc

    # 4. decimation: keep every down-th sample, starting with the first.
    return y[:, :, ::dy, ::dx]


def reference_fused_leaky_relu(x, bias, slope, scale):
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(x >= 0, x, x * slope) * scale


class FakeExtension:
    """Stands in for the compiled extension on CPU (same call signatures).

    It lets the CUDA autograd Functions (adjoint pads, double backward) be
    checked without a GPU; the kernels themselves are tested only on CUDA.
    """

    @staticmethod
    def upfirdn2d(x, k, ux, uy, dx, dy, px0, px1, py0, py1):
        return ufd._native(x, k, ux, uy, dx, dy, px0, px1, py0, py1)

    @staticmethod
    def fused_bias_act(x, bias, slope, scale):
        return fa.fused_leaky_relu_native(x, bias if bias.numel() else None, slope, scale)

    @staticmethod
    def bias_act_grad(grad, ref, slope, scale):
        return grad * torch.where(ref > 0, scale, slope * scale).to(grad.dtype)


@pytest.fixture
def fake_ext(monkeypatch):
    monkeypatch.setattr(_ext, "extension", lambda: FakeExtension)


# up, down, pad, kernel name, input (h, w)
UPFIRDN_CASES = [
    (1, 1, (1, 1), "blur", (8, 8)),  # G blur after a transposed conv
    (1, 1, (2, 2), "blur", (8, 8)),  # D blur before a strided conv
    (2, 1, (2, 1), "blur4", (5, 5)),  # Upsample
    (1, 2, (1, 1), "blur", (8, 8)),  # Downsample
    (2, 1, (1, 1), "blur4", (5, 7)),
    (2, 2, (1, 2), "blur4", (6, 5)),
    (1, 2, (0, 1), "rand", (7, 9)),
    (1, 1, (0, 0), "rand", (6, 8)),
    (2, 1, (2, 1), "rand", (5, 6)),
    (2, 2, (3, 0), "rand", (5, 4)),
    (1, 1, (-1, 2, 1, -2), "rand", (9, 7)),  # negative pads crop
    (2, 1, (-2, 1, 2, -1), "rand", (6, 5)),
    (1, 2, (2, -1, -1, 3), "rand", (8, 9)),
    (2, 2, (-1, -1, 0, 2), "blur4", (7, 6)),
    (2, 1, (5, 0), "rand", (4, 5)),  # pad > kernel: generic zero-insertion path
    (3, 1, (1, 3), "rand", (4, 3)),
    (1, 3, (1, 2), "rand", (10, 8)),
    ((2, 1), (1, 2), (1, 2, 0, 1), "rand", (6, 7)),  # per-axis factors
    ((1, 2), (2, 1), (-1, 2, 3, 0), "rand", (5, 8)),
    ((1, 2), 1, (1, 1, 2, 1), "blur4", (4, 6)),
]


def make_kernel(name):
    return {"blur": blur_kernel(), "blur4": blur_kernel(4.0), "rand": random_kernel()}[name]


# --------------------------------------------------------------------------- upfirdn2d native


@pytest.mark.parametrize("up,down,pad,kname,hw", UPFIRDN_CASES)
def test_upfirdn2d_native_matches_reference(up, down, pad, kname, hw):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    k = make_kernel(kname)
    expected = reference_upfirdn2d(x.numpy(), k.numpy(), up, down, pad)
    out = op.upfirdn2d(x, k, up=up, down=down, pad=pad, impl="native")
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)

    # float32 input with a float64 kernel buffer: the kernel follows the input.
    out32 = op.upfirdn2d(x.float(), k, up=up, down=down, pad=pad)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_upfirdn2d_output_size_formula():
    x = torch.randn(1, 2, 11, 6)
    k = random_kernel(3, 4).float()
    for up, down, pad in [(2, 2, (1, 2)), (1, 3, (0, 0)), (3, 2, (-1, 2))]:
        out = op.upfirdn2d(x, k, up=up, down=down, pad=pad)
        assert out.shape[2] == (11 * up + sum(pad) - 3 + down) // down
        assert out.shape[3] == (6 * up + sum(pad) - 4 + down) // down


def test_upfirdn2d_bad_arguments():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError):
        op.upfirdn2d(x, blur_kernel().float(), pad=(1, 2, 3))
    with pytest.raises(ValueError):
        op.upfirdn2d(x, blur_kernel().float(), pad=(-4, -4))
    with pytest.raises(ValueError):
        op.upfirdn2d(x, blur_kernel().float(), up=0)


GRAD_CASES = [
    (1, 1, (1, 1)),
    (2, 1, (2, 1)),
    (1, 2, (1, 2)),
    (2, 2, (-1, 2, 3, 0)),
    ((2, 1), (1, 2), (0, 1, 2, -1)),
    (2, 1, (5, 0)),
]


@pytest.mark.parametrize("up,down,pad", GRAD_CASES)
def test_upfirdn2d_native_gradcheck(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    k = random_kernel().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, k: op.upfirdn2d(x, k, up, down, pad, impl="native"), (x, k))


def test_upfirdn2d_native_gradgradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    k = random_kernel()
    assert torch.autograd.gradgradcheck(lambda x: op.upfirdn2d(x, k, 2, 1, (2, 1), impl="native"), (x,))
    assert torch.autograd.gradgradcheck(lambda x: op.upfirdn2d(x, k, 1, 2, (1, 1), impl="native"), (x,))


@pytest.mark.parametrize("up,down,pad", GRAD_CASES)
def test_upfirdn2d_cuda_function_logic(fake_ext, up, down, pad):
    """The CUDA autograd Function (adjoint pads, recursion) against native, via a fake extension."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    k = random_kernel()
    args = ufd._parse(x, k, up, down, pad)

    def f(x):
        return ufd._UpFirDn2dCuda.apply(x, k, args[0:2], args[2:4], args[4:8])

    torch.testing.assert_close(f(x), op.upfirdn2d(x, k, up, down, pad, impl="native"))
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


# --------------------------------------------------------------------------- fused_leaky_relu


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5), (2, 3, 7)])
@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (0.0, 1.0), (0.5, 0.7), (-0.1, 2.0), (1.0, 1.0)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_formula(shape, slope, scale, with_bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    bias = torch.randn(shape[1], dtype=torch.float64) if with_bias else None
    out = op.fused_leaky_relu(x, bias, negative_slope=slope, scale=scale)
    torch.testing.assert_close(out, reference_fused_leaky_relu(x, bias, slope, scale))


def test_fused_leaky_relu_honours_negative_slope():
    x = torch.full((1, 1), -1.0)
    assert op.fused_leaky_relu(x, None, negative_slope=0.5, scale=1.0).item() == pytest.approx(-0.5)
    assert op.fused_leaky_relu(x, None, negative_slope=0.0, scale=1.0).item() == 0.0


def test_fused_leaky_relu_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    f = lambda x, b: op.fused_leaky_relu(x, b, 0.2, math.sqrt(2), impl="native")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (0.0, 1.0), (-0.3, 1.5), (0.2, -1.0)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_cuda_function_logic(fake_ext, slope, scale, with_bias):
    """The CUDA autograd Functions (mask from output, double backward) via a fake extension."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = (x, b) if with_bias else (x,)

    def f(x, b=None):
        return fa._FusedLeakyReLUCuda.apply(x, b, slope, scale)

    torch.testing.assert_close(f(*inputs), reference_fused_leaky_relu(x, b, slope, scale))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_fused_leaky_relu_module():
    m = op.FusedLeakyReLU(3)
    assert list(dict(m.named_parameters())) == ["bias"]
    assert m.bias.shape == (3,)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), reference_fused_leaky_relu(x, m.bias.detach(), 0.2, 2**0.5))
    seq = torch.nn.Sequential()
    seq.activate = op.FusedLeakyReLU(4)
    assert list(seq.state_dict()) == ["activate.bias"]
    nobias = op.FusedLeakyReLU(3, bias=False, negative_slope=0.1, scale=1.0)
    assert nobias.bias is None and len(list(nobias.parameters())) == 0
    torch.testing.assert_close(nobias(x), F.leaky_relu(x, 0.1))


# --------------------------------------------------------------------------- dispatch / build


def test_public_api():
    assert sorted(op.__all__) == ["FusedLeakyReLU", "fused_leaky_relu", "upfirdn2d"]


def test_import_does_not_build():
    """A fresh interpreter: import op and run CPU ops without any build or cpp_extension import."""
    code = (
        "import sys, torch\n"
        "preloaded = 'torch.utils.cpp_extension' in sys.modules\n"
        "import op\n"
        "from op import _ext\n"
        "x = torch.randn(1, 2, 4, 4)\n"
        "op.upfirdn2d(x, torch.ones(2, 2), up=2, pad=(1, 0))\n"
        "op.fused_leaky_relu(x, torch.zeros(2))\n"
        "assert not _ext._build_attempted and _ext._module is None\n"
        "assert preloaded or 'torch.utils.cpp_extension' not in sys.modules\n"
        "assert _ext.EXT_NAME not in sys.modules\n"
        "print('ok')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_cpu_calls_never_build(monkeypatch):
    def boom():
        raise AssertionError("extension requested for a CPU tensor")

    monkeypatch.setattr(_ext, "get_extension", boom)
    monkeypatch.setattr(_ext, "extension", boom)
    x = torch.randn(1, 2, 4, 4)
    op.upfirdn2d(x, torch.ones(3, 3), pad=(1, 1))
    op.fused_leaky_relu(x, torch.zeros(2))


def test_select_impl(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(_ext.NATIVE_ENV, raising=False)
    monkeypatch.setattr(_ext, "get_extension", lambda: FakeExtension)
    monkeypatch.setattr(_ext, "extension", lambda: FakeExtension)
    assert _ext.select_impl("auto", cuda) == "cuda"
    assert _ext.select_impl("auto", cpu) == "native"
    assert _ext.select_impl("native", cuda) == "native"
    assert _ext.select_impl("cuda", cuda) == "cuda"
    with pytest.raises(ValueError):
        _ext.select_impl("cuda", cpu)
    with pytest.raises(ValueError):
        _ext.select_impl("triton", cpu)

    monkeypatch.setenv(_ext.NATIVE_ENV, "1")
    for impl in ("auto", "cuda", "native"):
        assert _ext.select_impl(impl, cuda) == "native"
    monkeypatch.setenv(_ext.NATIVE_ENV, "0")
    assert _ext.select_impl("auto", cuda) == "cuda"


def test_failed_build_warns_once_then_native(monkeypatch):
    calls = []

    def failing_build(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.delenv(_ext.NATIVE_ENV, raising=False)
    monkeypatch.setattr(_ext, "_build", failing_build)
    monkeypatch.setattr(_ext, "_build_attempted", False)
    monkeypatch.setattr(_ext, "_module", None)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="native"):
        assert _ext.select_impl("auto", cuda) == "native"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ext.select_impl("auto", cuda) == "native"
        with pytest.raises(RuntimeError):
            _ext.select_impl("cuda", cuda)
    assert len(calls) == 1


# --------------------------------------------------------------------------- CUDA parity

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize(
    "up,down,pad,kname,shape",
    [
        (1, 1, (1, 1), "blur4", (4, 16, 9, 9)),
        (2, 1, (2, 1), "blur4", (4, 3, 8, 8)),
        (1, 2, (1, 1), "blur", (4, 16, 16, 16)),
        (1, 1, (2, 2), "blur", (2, 8, 16, 16)),
        (2, 2, (-1, 2, 3, 0), "rand", (2, 5, 7, 9)),
        ((2, 1), (1, 2), (1, 2, 0, 1), "rand", (2, 4, 6, 7)),
        (3, 2, (5, 1), "rand", (1, 3, 5, 4)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_cuda_matches_native(up, down, pad, kname, shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)
    k = make_kernel(kname).to("cuda", dtype)
    out_c = op.upfirdn2d(x, k, up, down, pad, impl="cuda")
    out_n = op.upfirdn2d(x, k, up, down, pad, impl="native")
    torch.testing.assert_close(out_c, out_n)
    g = torch.randn_like(out_n, requires_grad=True)  # the double backward differentiates w.r.t. g
    (gc,) = torch.autograd.grad(out_c, x, g, create_graph=True)
    (gn,) = torch.autograd.grad(out_n, x, g, create_graph=True)
    torch.testing.assert_close(gc, gn)
    h = torch.randn_like(gn)
    torch.testing.assert_close(torch.autograd.grad(gc, g, h)[0], torch.autograd.grad(gn, g, h)[0])


@cuda_only
def test_upfirdn2d_cuda_gradgradcheck():
    x = torch.randn(1, 2, 4, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    k = random_kernel().cuda()
    f = lambda x: op.upfirdn2d(x, k, 2, 1, (2, 1), impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@cuda_only
def test_upfirdn2d_cuda_half():
    x = torch.randn(2, 4, 8, 8, device="cuda", dtype=torch.float16)
    k = blur_kernel(4.0).cuda()
    torch.testing.assert_close(
        op.upfirdn2d(x, k, 2, 1, (2, 1), impl="cuda").float(),
        op.upfirdn2d(x.float(), k, 2, 1, (2, 1), impl="native"),
        rtol=1e-2,
        atol=1e-2,
    )


@cuda_only
@pytest.mark.parametrize("shape", [(8, 32), (4, 16, 8, 8)])
@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (0.0, 1.0), (-0.3, 1.5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_cuda_matches_native(shape, slope, scale, with_bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    b = torch.randn(shape[1], device="cuda", requires_grad=True) if with_bias else None
    inputs = (x, b) if with_bias else (x,)
    out_c = op.fused_leaky_relu(x, b, slope, scale, impl="cuda")
    out_n = op.fused_leaky_relu(x, b, slope, scale, impl="native")
    torch.testing.assert_close(out_c, out_n)
    g = torch.randn_like(out_n, requires_grad=True)  # the double backward differentiates w.r.t. g
    grads_c = torch.autograd.grad(out_c, inputs, g, create_graph=True)
    grads_n = torch.autograd.grad(out_n, inputs, g, create_graph=True)
    for a, b_ in zip(grads_c, grads_n):
        torch.testing.assert_close(a, b_)
    # double backward, as in R1: d/dg of sum(grad_x ** 2)
    (ggc,) = torch.autograd.grad(grads_c[0].pow(2).sum(), g)
    (ggn,) = torch.autograd.grad(grads_n[0].pow(2).sum(), g)
    torch.testing.assert_close(ggc, ggn)


@cuda_only
def test_fused_leaky_relu_cuda_gradgradcheck():
    x = torch.randn(2, 3, 4, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)
    f = lambda x, b: op.fused_leaky_relu(x, b, 0.2, math.sqrt(2), impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


@cuda_only
def test_auto_uses_cuda_kernel_on_cuda(monkeypatch):
    monkeypatch.delenv(_ext.NATIVE_ENV, raising=False)
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert _ext.select_impl("auto", x.device) == "cuda"
    torch.testing.assert_close(
        op.upfirdn2d(x, blur_kernel().cuda(), pad=(1, 2)),
        op.upfirdn2d(x, blur_kernel().cuda(), pad=(1, 2), impl="native"),
    )
