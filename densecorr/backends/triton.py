"""The "triton" backend's declaration: GPU kernels in densecorr/triton, imported on first
use (importing triton is slow, and it may be absent); CPU tensors run them under the
Triton interpreter (TRITON_INTERPRET=1), only when asked for explicitly (tests)."""
from __future__ import annotations

import os

import torch

from densecorr.backends import Backend, python_kernel, register_backend

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # float32 accumulation
_STATE: dict[str, str | None] = {}


def _problem() -> str | None:
    """None when triton is importable and densecorr.triton (the kernels) is loaded, else why not."""
    if "error" not in _STATE:
        try:
            import triton  # noqa: F401

            import densecorr.triton  # noqa: F401  (registers the Triton kernels)

            _STATE["error"] = None
        except ImportError as exc:
            _STATE["error"] = f"triton is not installed ({exc})"
    return _STATE["error"]


def _limits(name, tensors, explicit) -> str | None:
    if tensors[0].device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need TRITON_INTERPRET=1 for the Triton backend"
        if not explicit:
            return "CPU tensors use Triton only when asked for explicitly"
    return None


register_backend(Backend("triton", ("cuda", "cpu"), DTYPES, _problem, python_kernel("triton"), _limits))
