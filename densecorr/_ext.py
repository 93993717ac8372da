"""Loading of the compiled extension densecorr._C (optional: without it, ops use `reference`)."""
import os
import warnings

import torch

try:  # importing registers the kernel ops under torch.ops.densecorr_ext
    if os.environ.get("DENSECORR_DISABLE_EXTENSION") == "1":  # to test the pure-Python path
        raise ImportError("disabled by DENSECORR_DISABLE_EXTENSION=1")
    from densecorr import _C  # noqa: F401

    EXTENSION_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    import importlib.util

    _C = None
    EXTENSION_ERROR = str(exc)
    if "DENSECORR_DISABLE_EXTENSION" not in EXTENSION_ERROR and importlib.util.find_spec("densecorr._C") is None:
        EXTENSION_ERROR = "not built"
    warnings.warn(
        "densecorr: the compiled extension densecorr._C is not available "
        f"({EXTENSION_ERROR}); every op runs through the pure-PyTorch 'reference' backend. "
        "Build it with `pip install --no-build-isolation -e .` for the fast CPU/CUDA kernels.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether densecorr_ext::<op_name> has a kernel registered for `dispatch_key`."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"densecorr_ext::{op_name}", dispatch_key)


def build_info() -> dict:
    """What the installed build contains (extension present, CUDA, OpenMP, CPU capability)."""
    info = {"extension": _C is not None, "torch": torch.__version__}
    if _C is None:
        info["extension_error"] = EXTENSION_ERROR
    else:
        info.update(_C.build_info())
    return info
