"""Helpers shared by the Triton kernels: block-size rules, launch context, top-k keys.

GPU rules the interpreter does not check, followed everywhere here:
- every block size is a power of two; feature widths D and C are padded to a power of two
  (at least 16, so that each `tl.dot` has K, N >= 16) and masked;
- `tl.dot` takes fp16/bf16 tiles as they are (fp32 accumulation) and fp32 tiles in "ieee"
  precision unless torch allows TF32 (`torch.backends.cuda.matmul.allow_tf32`);
- fixed launch configurations (no autotuning), sized so that the register tiles stay small.

Top-k selection packs a float32 logit and its key index into one int64 whose integer order
is (logit, then lower index first): the same order as torch.topk with ties broken by
index. Sorting these keys with `tl.topk` keeps values and indices together.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.jit import constexpr_function

from densecorr.backends.triton import DTYPES as FLOAT_DTYPES  # the backend's declaration

# Smallest key: below every packed (logit, index), including logit -inf.
KEY_MIN = tl.constexpr(-(2**63))


def pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(triton.next_power_of_2(max(int(n), 1)), minimum)


def floor_pow2(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (max(int(n), 1).bit_length() - 1)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for float32 tiles (ignored by Triton for fp16/bf16)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def device_context(t: torch.Tensor):
    """Launch on t's GPU (multi-GPU safety); nothing to do for interpreter (CPU) tensors."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def check_dtype(name: str, *tensors: torch.Tensor) -> None:
    """The Triton kernels take float32, float16 and bfloat16 (float32 accumulation)."""
    dtype = tensors[0].dtype
    if dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"densecorr triton {name}: dtype {dtype} is not supported "
                           f"({', '.join(str(d).replace('torch.', '') for d in FLOAT_DTYPES)})")
    for t in tensors[1:]:
        if t.dtype != dtype:
            raise RuntimeError(f"densecorr triton {name}: mixed dtypes {dtype} and {t.dtype}")


@triton.jit
def pack_keys(val, idx):
    """int64 keys ordered like (val, -idx): val float32, idx int (0 <= idx < 2**31)."""
    bits = val.to(tl.int32, bitcast=True)
    # IEEE floats are sign-magnitude: flipping the magnitude bits of negatives makes the
    # signed integer order equal the float order.
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered.to(tl.int64) << 32) + (2147483647 - idx.to(tl.int64))


@triton.jit
def unpack_keys(key):
    """Inverse of pack_keys: (val float32, idx int64)."""
    hi = key >> 32
    low = key - (hi << 32)
    ordered = hi.to(tl.int32)
    bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.to(tl.float32, bitcast=True), 2147483647 - low


@constexpr_function
def _log2(n):
    return n.bit_length() - 1


@triton.jit
def _axis_indicator(n_dims: tl.constexpr, j: tl.constexpr):
    """0/1 along the j-th innermost axis of a (2, 2, ..., 2) hypercube."""
    return tl.reshape(tl.arange(0, 2), [1] * (n_dims - j - 1) + [2] + [1] * j)


@triton.jit
def _compare_swap(x, flip, i: tl.constexpr):
    """Bitonic compare-and-swap along the i-th innermost axis of hypercube x (int64 keys).
    The partner of each element is (pair sum) - element: a plain sum reduction, which the
    interpreter runs in numpy (Triton's own tl.sort uses xor_sum, element by element in
    Python there: minutes for one tile). Integer wrap-around cancels out."""
    n_dims: tl.constexpr = _log2(x.numel)
    y = tl.sum(x, n_dims - 1 - i, keep_dims=True) - x
    is_right = _axis_indicator(n_dims, i)
    return tl.where((x > y) != (flip ^ is_right).to(tl.int1), y, x)


@triton.jit
def _bitonic_stage(x, stage: tl.constexpr, order: tl.constexpr):
    """`stage` rounds of compare-and-swap; order 0 ascending, 1 descending, 2 alternating."""
    if order == 2:
        flip = _axis_indicator(_log2(x.numel), stage)
    else:
        flip = order
    for i in tl.static_range(stage):
        x = _compare_swap(x, flip, stage - 1 - i)
    return x


@triton.jit
def topk_keys(x, K: tl.constexpr):
    """The K largest int64 keys along the last axis of x (R, L), sorted descending; K and L
    powers of two, K <= L. Bitonic top-k (same algorithm as tl.topk)."""
    log_n: tl.constexpr = _log2(x.shape[1])
    log_k: tl.constexpr = _log2(K)
    n_dims: tl.constexpr = _log2(x.numel)
    if log_k == 0:
        out = tl.max(x, axis=1, keep_dims=True)
    else:
        h = tl.reshape(x, [2] * n_dims)
        for i in tl.static_range(1, log_k + 1):
            h = _bitonic_stage(h, i, 2 if i < log_n else 1)
        # Keep the larger half of each bitonic pair, then re-merge, until K remain.
        for i in tl.static_range(log_k + 1, log_n + 1):
            h = tl.max(h, axis=_log2(h.numel) - 1 - log_k)
            h = _bitonic_stage(h, log_k, 2 if i < log_n else 1)
        out = tl.reshape(h, (x.shape[0], K))
    return out


@triton.jit
def merge_topk(buf, cand, KP: tl.constexpr):
    """The KP largest keys of buf (R, KP, sorted descending) and cand (R, any power of two
    >= KP), sorted descending."""
    if cand.shape[1] > KP:
        cand = topk_keys(cand, KP)
    merged = tl.reshape(tl.join(buf, cand), (buf.shape[0], 2 * KP))
    return topk_keys(merged, KP)
