"""Backend registry and choice: which implementation runs a kernel op for given tensors.

This module imports no backend. Each backend declares what it can run (a `Backend`: the
devices and dtypes it takes, whether it is usable here, its kernels, any further limits)
and registers itself with `register_backend`:
- "cpu" and "cuda": the C++ kernels of densecorr._C (densecorr/backends/extension.py);
- "triton": densecorr/triton, loaded on first use (densecorr/backends/triton.py);
- "reference": pure PyTorch (densecorr/reference.py).
Python kernels register with `@register_kernel(name, backend)`.

The choice: an explicit backend (the ops' `backend=` argument, else the DENSECORR_BACKEND
environment variable) is used if it can run the call, else an error says why; "auto" takes
the first backend in PREFERENCE that can, and when none can, the error lists every reason.
Kernels run with autocast disabled: they compute in their inputs' dtype (float32
accumulation for float16/bfloat16), whatever autocast context the caller is in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")  # every backend name, fastest first
ENV_VAR = "DENSECORR_BACKEND"

# Preference for "auto", by device type. CPU tensors never reach Triton automatically
# (the interpreter is for tests); they can ask for it explicitly.
PREFERENCE = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
# Per-kernel overrides of the CUDA order, where measurement says Triton is faster.
CUDA_PREFERENCE: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class Backend:
    """What one backend can run.

    devices: tensor device types it takes (None: any). dtypes: the dtypes it takes.
    problem(): None when usable on this machine, else why not (not built, not installed);
        may load the backend's kernels.
    kernel(name): the function implementing kernel op `name`, or None if it has none.
    limits(name, tensors, explicit): None, or why it refuses this particular call.
    """

    name: str
    devices: Optional[tuple[str, ...]]
    dtypes: tuple[torch.dtype, ...]
    problem: Callable[[], Optional[str]]
    kernel: Callable[[str], Optional[Callable]]
    limits: Optional[Callable[[str, Sequence[torch.Tensor], bool], Optional[str]]] = None


_BACKENDS: dict[str, Backend] = {}
_PYTHON_KERNELS: dict[str, dict[str, Callable]] = {}  # kernel name -> backend -> function


def register_backend(spec: Backend) -> Backend:
    if spec.name not in BACKENDS:
        raise ValueError(f"unknown backend name {spec.name!r}; add it to densecorr.backends.BACKENDS")
    _BACKENDS[spec.name] = spec
    return spec


def register_kernel(name: str, backend: str):
    """Register `fn` as Python backend `backend`'s implementation of kernel op `name`."""

    def wrap(fn):
        _PYTHON_KERNELS.setdefault(name, {})[backend] = fn
        return fn

    return wrap


def python_kernel(backend: str) -> Callable[[str], Optional[Callable]]:
    """A `Backend.kernel` for a backend whose kernels register with register_kernel."""
    return lambda name: _PYTHON_KERNELS.get(name, {}).get(backend)


def spec(backend: str) -> Backend:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    if backend not in _BACKENDS:
        raise RuntimeError(f"densecorr: backend {backend!r} is not registered (its module was not imported)")
    return _BACKENDS[backend]


def _dtype_names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def refusal(backend: str, name: str, tensors: Sequence[torch.Tensor], explicit: bool) -> str | None:
    """Why `backend` cannot run kernel `name` on `tensors`, or None if it can."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    if backend not in _BACKENDS:
        return "not registered (its module was not imported)"
    s = _BACKENDS[backend]
    device, dtype = tensors[0].device.type, tensors[0].dtype
    if s.devices is not None and device not in s.devices:
        return f"tensors are on {device}, the {backend} backend needs {' or '.join(s.devices)} tensors"
    problem = s.problem()
    if problem:
        return problem
    if s.kernel(name) is None:
        return f"the {backend} backend has no kernel for {name}"
    if dtype not in s.dtypes:
        return f"the {backend} kernels take {_dtype_names(s.dtypes)}, not {dtype}"
    return s.limits(name, tensors, explicit) if s.limits else None


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
    s = spec(backend)
    s.problem()  # loads lazily loaded kernels
    fn = s.kernel(name)
    if fn is None:
        raise RuntimeError(f"densecorr: the {backend} backend has no kernel for {name}")
    return fn


def run(name: str, requested: str, *args):
    """Choose a backend for kernel `name` from its tensor arguments and run it (autocast
    off). Outputs are contiguous, as the ops' fake kernels say (compiled graphs check it)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    fn = kernel(name, choose(name, tensors, requested))
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            out = fn(*args)
    else:
        out = fn(*args)
    if isinstance(out, torch.Tensor):
        return out.contiguous()
    return tuple(o.contiguous() for o in out)


def available(name: str, device: str | torch.device = "cpu", dtype=torch.float32) -> dict[str, str | None]:
    """For each backend, None if it can run kernel `name` on such tensors, else why not."""
    probe = [torch.empty(0, device=device, dtype=dtype)]
    return {b: refusal(b, name, probe, explicit=True) for b in BACKENDS}
