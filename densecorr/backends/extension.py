"""The C++ backends "cpu" and "cuda": the kernel ops densecorr_ext::<name> of densecorr._C.

A kernel op with a kernel for the CPU (CUDA) dispatch key *is* the cpu (cuda)
implementation. The CPU kernels compute in float32/float64; float16 and bfloat16 inputs
are converted to float32 around them, one batch element at a time (so the extra memory is
one element's float32 copy), and the results converted back (softmax statistics stay
float32, as for every half-precision backend): float32 accumulation, one rounding at the
end.
"""
from __future__ import annotations

import torch

from densecorr import _ext
from densecorr.backends import Backend, register_backend

HALF = (torch.float16, torch.bfloat16)
CPU_NATIVE = (torch.float32, torch.float64)  # what the C++ CPU kernels take
CPU_DTYPES = CPU_NATIVE + HALF
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Outputs that are softmax statistics (kept float32 for half-precision inputs).
_STATS_OUTPUTS = {"global_attention_fwd": (1,), "project_coords_fwd": (1,), "local_attention_fwd": (1,),
                  "local_offset_attention_fwd": (1,)}


def _problem() -> str | None:
    return None if _ext._C is not None else f"the extension densecorr._C is not built ({_ext.EXTENSION_ERROR})"


def _has_kernel(name: str, key: str) -> bool:
    try:
        return _ext.has_kernel(name, key)
    except RuntimeError:  # an op this build of the extension does not define (an older build)
        return False


def _lookup(key: str):
    def kernel(name: str):
        if _ext._C is not None and not _has_kernel(name, key):
            return None
        if key == "CPU":
            return _cpu_kernel(name)
        return lambda *args: getattr(torch.ops.densecorr_ext, name)(*args)

    return kernel


def _cpu_kernel(name: str):
    def run(*args):
        op = getattr(torch.ops.densecorr_ext, name)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        half = next((t.dtype for t in tensors if t.dtype in HALF), None)
        if half is None:
            return op(*args)
        return _upcast_by_batch(name, op, half, args)

    return run


# Backward ops whose saved forward output (argument 4) enters the softmax correction
# delta = dout . out: for half-precision inputs it is recomputed in float32 (the rounded
# output would cost the gradients their float32 accuracy), at the price of one forward.
_RECOMPUTE_OUT = {
    "global_attention_bwd": lambda a: torch.ops.densecorr_ext.global_attention_fwd(a[1], a[2], a[3], a[7], a[6].shape[-1])[0],
    "project_coords_bwd": lambda a: torch.ops.densecorr_ext.project_coords_fwd(a[1], a[2], a[5])[0],
    "local_attention_bwd": lambda a: torch.ops.densecorr_ext.local_attention_fwd(
        a[1], a[2], a[3], a[7], a[8], a[9], a[10], a[11], a[6].shape[-1])[0],
    "local_offset_attention_bwd": lambda a: torch.ops.densecorr_ext.local_offset_attention_fwd(
        a[1], a[2], a[3], a[4], a[8], a[9], a[10], a[11], a[12], a[7].shape[-1])[0],
}
_OUT_ARG = {"global_attention_bwd": 4, "project_coords_bwd": 3, "local_attention_bwd": 4,
            "local_offset_attention_bwd": 5}


def _upcast_by_batch(name, op, dtype, args):
    """op on float32 copies of `args`' half-precision tensors, one batch element at a time
    (every kernel op's tensors have the batch as dim 0, and batch elements are independent)."""
    B = next(a.shape[0] for a in args if isinstance(a, torch.Tensor))
    stats = _STATS_OUTPUTS.get(name, ())
    parts = []
    for b in range(B):
        sliced = [
            (a[b : b + 1].float() if a.dtype in HALF else a[b : b + 1]) if isinstance(a, torch.Tensor) else a
            for a in args
        ]
        if name in _RECOMPUTE_OUT:
            sliced[_OUT_ARG[name]] = _RECOMPUTE_OUT[name](sliced)
        out = op(*sliced)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        parts.append([o if (i in stats or not o.is_floating_point()) else o.to(dtype) for i, o in enumerate(outs)])
    results = tuple(torch.cat([p[i] for p in parts]) if B > 1 else parts[0][i] for i in range(len(parts[0])))
    return results if isinstance(out, (tuple, list)) else results[0]


register_backend(Backend("cpu", ("cpu",), CPU_DTYPES, _problem, _lookup("CPU")))
register_backend(Backend("cuda", ("cuda",), CUDA_DTYPES, _problem, _lookup("CUDA")))
