"""Backend registry and choice: which implementation runs a kernel op for given tensors.

Backends, fastest first: "cuda" (C++ CUDA in densecorr._C), "triton" (densecorr/triton),
"cpu" (C++ in densecorr._C), "reference" (pure PyTorch, densecorr/reference.py).

The C++ backends need no registration here: a kernel op `densecorr_ext::<name>` with a
kernel for the CPU (CUDA) dispatch key *is* the cpu (cuda) implementation. Python backends
register with `@register_kernel(name, backend)`.

The choice: an explicit backend (the ops' `backend=` argument, else the DENSECORR_BACKEND
environment variable) is used if it can run the call, else an error says why; "auto" takes
the first backend in PREFERENCE that can, and when none can, the error lists every reason.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from densecorr import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "DENSECORR_BACKEND"

# Preference for "auto", by device type. CPU tensors never reach Triton automatically
# (the interpreter is for tests); they can ask for it explicitly.
PREFERENCE = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
# Per-kernel overrides of the CUDA order, where measurement says Triton is faster.
CUDA_PREFERENCE: dict[str, tuple[str, ...]] = {}

_PYTHON_KERNELS: dict[str, dict[str, Callable]] = {}  # kernel name -> backend -> function
_TRITON_STATE: dict[str, str | None] = {}


def register_kernel(name: str, backend: str):
    """Register `fn` as `backend`'s implementation of kernel op `name` (e.g. "local_copy_fwd")."""
    if backend not in ("reference", "triton"):
        raise ValueError(f"only Python backends register here, not {backend!r}")

    def wrap(fn):
        _PYTHON_KERNELS.setdefault(name, {})[backend] = fn
        return fn

    return wrap


def _triton_problem() -> str | None:
    """None when the Triton backend is importable and registered, else why not."""
    if "error" not in _TRITON_STATE:
        try:
            import triton  # noqa: F401

            import densecorr.triton  # noqa: F401  (registers the Triton kernels)

            _TRITON_STATE["error"] = None
        except ImportError as exc:
            _TRITON_STATE["error"] = f"triton is not installed ({exc})"
    return _TRITON_STATE["error"]


def refusal(backend: str, name: str, tensors: Sequence[torch.Tensor], explicit: bool) -> str | None:
    """Why `backend` cannot run kernel `name` on `tensors`, or None if it can."""
    device = tensors[0].device.type
    dtype = tensors[0].dtype
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        key = backend.upper()
        if device != backend:
            return f"tensors are on {device}, the {backend} backend needs {backend} tensors"
        if _ext._C is None:
            return f"the extension densecorr._C is not built ({_ext.EXTENSION_ERROR})"
        if not _ext.has_kernel(name, key):
            return f"densecorr._C has no {key} kernel for {name} (built without it)"
        if backend == "cpu" and dtype not in (torch.float32, torch.float64):
            return f"the cpu kernels take float32/float64, not {dtype}"
        return None
    if backend == "triton":
        problem = _triton_problem()
        if problem:
            return problem
        if name not in _PYTHON_KERNELS or "triton" not in _PYTHON_KERNELS[name]:
            return f"no Triton kernel for {name}"
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"the triton kernels take float32/float16/bfloat16, not {dtype}"
        if device == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return "CPU tensors need TRITON_INTERPRET=1 for the Triton backend"
            if not explicit:
                return "CPU tensors use Triton only when asked for explicitly"
        elif device != "cuda":
            return f"Triton runs on cuda tensors, not {device}"
        return None
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")


def choose(name: str, tensors: Sequence[torch.Tensor], requested: str = "auto") -> str:
    """The backend that runs kernel `name` (e.g. "global_attention_fwd") on `tensors`."""
    if requested in (None, "", "auto"):
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; choose one of {BACKENDS} or 'auto'")
        why = refusal(requested, name, tensors, explicit=True)
        if why:
            raise RuntimeError(f"densecorr: backend {requested!r} cannot run {name}: {why}")
        return requested
    device = tensors[0].device.type
    order = PREFERENCE.get(device, ("reference",))
    if device == "cuda":
        order = CUDA_PREFERENCE.get(name, order)
    reasons = []
    for backend in order:
        why = refusal(backend, name, tensors, explicit=False)
        if why is None:
            return backend
        reasons.append(f"{backend}: {why}")
    raise RuntimeError(f"densecorr: no backend can run {name}: " + "; ".join(reasons))


def kernel(name: str, backend: str) -> Callable:
    """The function implementing kernel op `name` in `backend` (already chosen)."""
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.densecorr_ext, name)
    if backend == "triton":
        _triton_problem()
    return _PYTHON_KERNELS[name][backend]


def run(name: str, requested: str, *args):
    """Choose a backend for kernel `name` from its tensor arguments and run it."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return kernel(name, choose(name, tensors, requested))(*args)


def available(name: str, device: str | torch.device = "cpu", dtype=torch.float32) -> dict[str, str | None]:
    """For each backend, None if it can run kernel `name` on such tensors, else why not."""
    probe = [torch.empty(0, device=device, dtype=dtype)]
    return {b: refusal(b, name, probe, explicit=True) for b in BACKENDS}
