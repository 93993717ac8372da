"""Triton kernels for global attention: flash-style forward and backward, and streamed top-k.

Layouts (contiguous): q (B, N, D), k (B, M, D), v (B, M, C); out (B, N, C) in the input
dtype; lse (B, N) float32 (log-sum-exp of the scaled logits that entered the softmax);
idx (B, N, topk) int64. D and C are padded to powers of two (>= 16) inside the kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from densecorr.backends import register_kernel
from densecorr.triton._common import (
    KEY_MIN, check_dtype, device_context, dot_precision, floor_pow2, merge_topk, pack_keys,
    pow2, unpack_keys,
)


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, N, M, D, C, scale,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): one program computes out and lse of BLOCK_N queries of one
    batch, streaming the M keys in blocks of BLOCK_M with an online softmax.
    Strides: q[b, n, d] at b*N*D + n*D + d; k, v, out likewise; lse[b, n] at b*N + n."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        kt = tl.load(K + b * M * D + offs_m[None, :] * D + offs_d[:, None],
                     mask=mask_m[None, :] & (offs_d[:, None] < D), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        s = tl.where(mask_m[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * M * C + offs_m[:, None] * C + offs_c[None, :],
                    mask=mask_m[:, None] & (offs_c[None, :] < C), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + b * N * C + offs_n[:, None] * C + offs_c[None, :], out.to(O.dtype.element_ty),
             mask=mask_n[:, None] & (offs_c[None, :] < C))
    tl.store(LSE + b * N + offs_n, m_i + tl.log(l_i), mask=mask_n)


@triton.jit
def _topk_fwd_kernel(Q, K, V, O, LSE, IDX, N, M, D, C, scale,
                     TOPK, KP: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                     PRECISION: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): one program streams the keys for BLOCK_N queries keeping
    the KP (power of two >= TOPK) largest logits as packed (logit, index) keys, then takes
    the softmax over the TOPK largest and gathers their values.
    Strides as _fwd_kernel; idx[b, n, j] at (b*N + n)*TOPK + j, sorted by logit descending."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    buf = tl.full((BLOCK_N, KP), KEY_MIN, tl.int64)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        kt = tl.load(K + b * M * D + offs_m[None, :] * D + offs_d[:, None],
                     mask=mask_m[None, :] & (offs_d[:, None] < D), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        keys = tl.where(mask_m[None, :], pack_keys(s, offs_m[None, :]), KEY_MIN)
        # Merge only when some candidate beats a row's current KP-th key (rare late on).
        beats = tl.max(keys, 1) > tl.min(buf, 1)
        if tl.max(beats.to(tl.int32), 0) > 0:
            buf = merge_topk(buf, keys, KP)
    val, idx = unpack_keys(buf)
    cols = tl.arange(0, KP)
    keep = (cols[None, :] < TOPK) & mask_n[:, None]
    # Padded query rows have q = 0, finite logits: masking by column alone keeps them NaN-free.
    val = tl.where(cols[None, :] < TOPK, val, float("-inf"))
    m = tl.max(val, 1)
    p = tl.exp(val - m[:, None])
    l_i = tl.sum(p, 1)
    p = p / l_i[:, None]
    idx = tl.where(keep, idx, 0)
    vg = tl.load(V + b * M * C + idx[:, :, None] * C + offs_c[None, None, :],
                 mask=keep[:, :, None] & (offs_c[None, None, :] < C), other=0.0)
    out = tl.sum(p[:, :, None] * vg.to(tl.float32), 1)
    tl.store(O + b * N * C + offs_n[:, None] * C + offs_c[None, :], out.to(O.dtype.element_ty),
             mask=mask_n[:, None] & (offs_c[None, :] < C))
    tl.store(LSE + b * N + offs_n, m + tl.log(l_i), mask=mask_n)
    tl.store(IDX + (b * N + offs_n[:, None]) * TOPK + cols[None, :], idx, mask=keep)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, N, M, D, C, scale,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (cdiv(M, BLOCK_M), B): one program computes dk, dv of BLOCK_M keys, streaming the
    N queries: p = exp(s*q.k - lse), dv = sum_j p dO_j, dk = s sum_j p (dO_j.v - delta_j) q_j.
    delta (B, N) = rowsum(dO * out), float32. Strides as _fwd_kernel."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    k = tl.load(K + b * M * D + offs_m[:, None] * D + offs_d[None, :],
                mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)
    v = tl.load(V + b * M * C + offs_m[:, None] * C + offs_c[None, :],
                mask=mask_m[:, None] & (offs_c[None, :] < C), other=0.0)
    dk = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                    mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
        do = tl.load(DO + b * N * C + offs_n[:, None] * C + offs_c[None, :],
                     mask=mask_n[:, None] & (offs_c[None, :] < C), other=0.0)
        # Padded queries get lse = +inf, hence probability 0.
        lse = tl.load(LSE + b * N + offs_n, mask=mask_n, other=float("inf"))
        delta = tl.load(DELTA + b * N + offs_n, mask=mask_n, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale
        pt = tl.exp(st - lse[None, :])
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * scale
    tl.store(DK + b * M * D + offs_m[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=mask_m[:, None] & (offs_d[None, :] < D))
    tl.store(DV + b * M * C + offs_m[:, None] * C + offs_c[None, :], dv.to(DV.dtype.element_ty),
             mask=mask_m[:, None] & (offs_c[None, :] < C))


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, N, M, D, C, scale,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): one program computes dq of BLOCK_N queries, streaming the
    keys: dq = s sum_i p_i (dO.v_i - delta) k_i. Strides as _fwd_kernel."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + b * N * C + offs_n[:, None] * C + offs_c[None, :],
                 mask=mask_n[:, None] & (offs_c[None, :] < C), other=0.0)
    lse = tl.load(LSE + b * N + offs_n, mask=mask_n, other=0.0)
    delta = tl.load(DELTA + b * N + offs_n, mask=mask_n, other=0.0)
    dq = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        k = tl.load(K + b * M * D + offs_m[:, None] * D + offs_d[None, :],
                    mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)
        v = tl.load(V + b * M * C + offs_m[:, None] * C + offs_c[None, :],
                    mask=mask_m[:, None] & (offs_c[None, :] < C), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        p = tl.where(mask_m[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + b * N * D + offs_n[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=mask_n[:, None] & (offs_d[None, :] < D))


@triton.jit
def _topk_bwd_kernel(Q, K, V, DO, LSE, DELTA, IDX, DQ, DK32, DV32, N, M, D, C, scale,
                     TOPK, KP: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): one program takes BLOCK_N queries and their TOPK selected
    keys (gathered through idx), writes dq and atomically adds into float32 dk, dv buffers
    (B, M, D), (B, M, C). Strides as _topk_fwd_kernel."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    cols = tl.arange(0, KP)
    mask_n = offs_n < N
    keep = mask_n[:, None] & (cols[None, :] < TOPK)
    idx = tl.load(IDX + (b * N + offs_n[:, None]) * TOPK + cols[None, :], mask=keep, other=0)
    md = keep[:, :, None] & (offs_d[None, None, :] < D)
    mc = keep[:, :, None] & (offs_c[None, None, :] < C)
    kg = tl.load(K + b * M * D + idx[:, :, None] * D + offs_d[None, None, :], mask=md,
                 other=0.0).to(tl.float32)
    vg = tl.load(V + b * M * C + idx[:, :, None] * C + offs_c[None, None, :], mask=mc,
                 other=0.0).to(tl.float32)
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    do = tl.load(DO + b * N * C + offs_n[:, None] * C + offs_c[None, :],
                 mask=mask_n[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * N + offs_n, mask=mask_n, other=0.0)
    delta = tl.load(DELTA + b * N + offs_n, mask=mask_n, other=0.0)
    s = tl.sum(q[:, None, :] * kg, 2) * scale
    p = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.sum(do[:, None, :] * vg, 2)
    ds = p * (dp - delta[:, None])
    dq = tl.sum(ds[:, :, None] * kg, 1) * scale
    tl.store(DQ + b * N * D + offs_n[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=mask_n[:, None] & (offs_d[None, :] < D))
    tl.atomic_add(DK32 + b * M * D + idx[:, :, None] * D + offs_d[None, None, :],
                  (ds * scale)[:, :, None] * q[:, None, :], mask=md)
    tl.atomic_add(DV32 + b * M * C + idx[:, :, None] * C + offs_c[None, None, :],
                  p[:, :, None] * do[:, None, :], mask=mc)


def _blocks(D: int, C: int):
    """Fixed tile sizes (held rows, streamed rows, BLOCK_D, BLOCK_C): widths padded to >= 16
    (tl.dot's minimum K and N); the streamed tiles (two per loop step: k and v, or q and dO)
    kept to <= 32 KiB per pipeline stage in float32, with num_stages=2."""
    bd, bc = pow2(D, 16), pow2(C, 16)
    width = max(bd, bc)
    if width <= 64:
        return 64, 64, bd, bc
    if width <= 128:
        return 64, 32, bd, bc
    if width <= 256:
        return 32, 16, bd, bc
    return 16, 16, bd, bc


def _topk_rows(kp: int, width: int, budget: int = 8192) -> int:
    """Rows per program for the gather kernels: BLOCK_N * KP * width elements <= budget."""
    return max(2, min(64, floor_pow2(budget // (kp * width))))


@register_kernel("global_attention_fwd", "triton")
def global_attention_fwd(q, k, v, scale: float, topk: int):
    """Triton global attention: (out (B, N, C), lse (B, N) float32, idx (B, N, topk) int64)."""
    check_dtype("global_attention_fwd", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, N, D = q.shape
    M, C = k.shape[1], v.shape[2]
    topk = int(topk)
    if topk < 0 or topk > M:
        raise RuntimeError(f"global_attention_fwd: topk={topk} must be in [0, M={M}]")
    out = torch.empty((B, N, C), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, N), device=q.device, dtype=torch.float32)
    idx = torch.empty((B, N, topk), device=q.device, dtype=torch.int64)
    held, streamed, bd, bc = _blocks(D, C)
    block_n, block_m = held, streamed
    prec = dot_precision(q.dtype)
    with device_context(q):
        if topk == 0:
            grid = (triton.cdiv(N, block_n), B)
            _fwd_kernel[grid](q, k, v, out, lse, N, M, D, C, float(scale),
                              BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=bd, BLOCK_C=bc,
                              PRECISION=prec, num_warps=4, num_stages=2)
        else:
            kp = pow2(topk)
            # The key tile must hold >= KP candidates; the final gather is (BLOCK_N, KP, C).
            block_m = max(block_m, kp)
            block_n = min(block_n, _topk_rows(kp, bc, budget=16384), 32)
            block_n = max(block_n, 16)  # tl.dot needs M >= 16
            grid = (triton.cdiv(N, block_n), B)
            _topk_fwd_kernel[grid](q, k, v, out, lse, idx, N, M, D, C, float(scale),
                                   TOPK=topk, KP=kp, BLOCK_N=block_n, BLOCK_M=block_m,
                                   BLOCK_D=bd, BLOCK_C=bc, PRECISION=prec, num_warps=4,
                                   num_stages=2)
    return out, lse, idx


@register_kernel("global_attention_bwd", "triton")
def global_attention_bwd(grad_out, q, k, v, out, lse, idx, scale: float):
    """Triton global attention backward: (grad_q, grad_k, grad_v) in the input dtype."""
    check_dtype("global_attention_bwd", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    grad_out = grad_out.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    B, N, D = q.shape
    M, C = k.shape[1], v.shape[2]
    topk = idx.shape[-1]
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    held, streamed, bd, bc = _blocks(D, C)
    prec = dot_precision(q.dtype)
    dq = torch.empty_like(q)
    with device_context(q):
        if topk == 0:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            # dk, dv: keys held, queries streamed; dq: queries held, keys streamed.
            _bwd_dkdv_kernel[(triton.cdiv(M, held), B)](
                q, k, v, grad_out, lse, delta, dk, dv, N, M, D, C, float(scale),
                BLOCK_N=streamed, BLOCK_M=held, BLOCK_D=bd, BLOCK_C=bc, PRECISION=prec,
                num_warps=4, num_stages=2)
            _bwd_dq_kernel[(triton.cdiv(N, held), B)](
                q, k, v, grad_out, lse, delta, dq, N, M, D, C, float(scale),
                BLOCK_N=held, BLOCK_M=streamed, BLOCK_D=bd, BLOCK_C=bc, PRECISION=prec,
                num_warps=4, num_stages=2)
            return dq, dk, dv
        kp = pow2(topk)
        rows = _topk_rows(kp, max(bd, bc))
        dk32 = torch.zeros((B, M, D), device=q.device, dtype=torch.float32)
        dv32 = torch.zeros((B, M, C), device=q.device, dtype=torch.float32)
        _topk_bwd_kernel[(triton.cdiv(N, rows), B)](
            q, k, v, grad_out, lse, delta, idx.contiguous(), dq, dk32, dv32, N, M, D, C,
            float(scale), TOPK=topk, KP=kp, BLOCK_N=rows, BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)
