"""Lazy loading of the optional CUDA extension and choice of implementation.

Nothing here compiles at import time. The extension (``ops.cpp`` plus the two
``.cu`` files in this folder) is built with ``torch.utils.cpp_extension.load``
the first time a CUDA kernel is actually wanted, and the result is cached for
the rest of the process. If the build fails, a single warning is emitted and
every later call uses the native (pure PyTorch) implementation.

Setting the environment variable ``STYLEGAN2_NATIVE_OPS=1`` forces the native
implementation everywhere, whatever ``impl`` is passed.
"""

import os
import threading
import warnings

import torch

EXT_NAME = "stylegan2_ops_ext"
NATIVE_ENV = "STYLEGAN2_NATIVE_OPS"
IMPLS = ("auto", "native", "cuda")

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ("ops.cpp", "upfirdn2d_kernel.cu", "fused_bias_act_kernel.cu")

_lock = threading.Lock()
_build_attempted = False
_module = None


def native_forced():
    """Return True when ``STYLEGAN2_NATIVE_OPS`` asks for the native path.

    Returns:
        bool: True for any value other than empty, ``0``, ``false`` or ``no``.
    """
    value = os.environ.get(NATIVE_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no")


def _build_dir():
    """Return a writable build folder (``op/build/<name>``), or None for torch's default."""
    path = os.path.join(_HERE, "build", EXT_NAME)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _build(verbose=False, build_directory=None):
    """Compile and import the extension. Raises on any failure.

    Args:
        verbose (bool): forwarded to ``torch.utils.cpp_extension.load``.
        build_directory (str or None): where to build; default ``op/build/``.

    Returns:
        module: the compiled extension.
    """
    from torch.utils.cpp_extension import load  # deferred: importing op stays cheap

    return load(
        name=EXT_NAME,
        sources=[os.path.join(_HERE, src) for src in _SOURCES],
        build_directory=build_directory or _build_dir(),
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=verbose,
    )


def get_extension():
    """Return the compiled extension, building it on the first call.

    Returns:
        module or None: the extension, or None when the build failed (a warning
        is emitted once; the failure is cached so no rebuild is attempted).
    """
    global _build_attempted, _module
    if _build_attempted:
        return _module
    with _lock:
        if not _build_attempted:
            try:
                _module = _build()
            except Exception as exc:  # compiler missing, nvcc error, ...
                _module = None
                warnings.warn(
                    f"op: could not build the CUDA extension ({type(exc).__name__}: {exc}); "
                    "falling back to the native PyTorch implementation.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _build_attempted = True
    return _module


def extension():
    """Return the compiled extension or raise RuntimeError if it is unavailable."""
    module = get_extension()
    if module is None:
        raise RuntimeError("op: the CUDA extension is not available (its build failed)")
    return module


def select_impl(impl, device):
    """Decide which implementation runs for a tensor on ``device``.

    Args:
        impl (str): ``"auto"``, ``"native"`` or ``"cuda"``.
        device (torch.device): device of the input tensor.

    Returns:
        str: ``"cuda"`` or ``"native"``.

    Raises:
        ValueError: unknown ``impl``, or ``impl="cuda"`` for a non-CUDA tensor.
        RuntimeError: ``impl="cuda"`` but the extension could not be built.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "native" or native_forced():
        return "native"
    is_cuda = torch.device(device).type == "cuda"
    if impl == "cuda":
        if not is_cuda:
            raise ValueError('impl="cuda" needs a CUDA tensor')
        extension()
        return "cuda"
    return "cuda" if is_cuda and get_extension() is not None else "native"
