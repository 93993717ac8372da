"""Triton kernels for project_coords: the expected key-map (x, y) of each query.

Layouts (contiguous): q (B, N, D), k (B, D, H, W) (key i = y*W + x, so k[b, d, i] is at
(b*D + d)*H*W + i: the transposed token layout, read directly as the (D, M) tile of
q @ k^T); coords (B, N, 2) as (x, y) in the input dtype; lse (B, N) float32. The (x, y) of
key i is generated in the kernel (no grid tensor).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from densecorr.backends import register_kernel
from densecorr.triton._common import check_dtype, device_context, dot_precision, pow2


@triton.jit
def _fwd_kernel(Q, K, COORDS, LSE, N, M, W, D, scale,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): one program computes coords and lse of BLOCK_N queries,
    streaming the M = H*W keys with an online softmax over (x, y) accumulators."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    m_i = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_N,), tl.float32)
    acc_x = tl.zeros((BLOCK_N,), tl.float32)
    acc_y = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        kt = tl.load(K + b * D * M + offs_d[:, None] * M + offs_m[None, :],
                     mask=mask_m[None, :] & (offs_d[:, None] < D), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        s = tl.where(mask_m[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        gx = (offs_m % W).to(tl.float32)
        gy = (offs_m // W).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc_x = acc_x * alpha + tl.sum(p * gx[None, :], 1)
        acc_y = acc_y * alpha + tl.sum(p * gy[None, :], 1)
        m_i = m_new
    base = COORDS + (b * N + offs_n) * 2
    tl.store(base, (acc_x / l_i).to(COORDS.dtype.element_ty), mask=mask_n)
    tl.store(base + 1, (acc_y / l_i).to(COORDS.dtype.element_ty), mask=mask_n)
    tl.store(LSE + b * N + offs_n, m_i + tl.log(l_i), mask=mask_n)


@triton.jit
def _bwd_dq_kernel(Q, K, G, COORDS, LSE, DQ, N, M, W, D, scale,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), B): dq of BLOCK_N queries, streaming the keys:
    ds_i = p_i (g . l_i - g . coords), dq = s sum_i ds_i k_i. g = grad_coords (B, N, 2)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    gx = tl.load(G + (b * N + offs_n) * 2, mask=mask_n, other=0.0).to(tl.float32)
    gy = tl.load(G + (b * N + offs_n) * 2 + 1, mask=mask_n, other=0.0).to(tl.float32)
    cx = tl.load(COORDS + (b * N + offs_n) * 2, mask=mask_n, other=0.0).to(tl.float32)
    cy = tl.load(COORDS + (b * N + offs_n) * 2 + 1, mask=mask_n, other=0.0).to(tl.float32)
    delta = gx * cx + gy * cy
    lse = tl.load(LSE + b * N + offs_n, mask=mask_n, other=0.0)
    dq = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        kt = tl.load(K + b * D * M + offs_d[:, None] * M + offs_m[None, :],
                     mask=mask_m[None, :] & (offs_d[:, None] < D), other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        p = tl.where(mask_m[None, :], tl.exp(s - lse[:, None]), 0.0)
        lx = (offs_m % W).to(tl.float32)
        ly = (offs_m // W).to(tl.float32)
        ds = p * (gx[:, None] * lx[None, :] + gy[:, None] * ly[None, :] - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    tl.store(DQ + b * N * D + offs_n[:, None] * D + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=mask_n[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dk_kernel(Q, K, G, COORDS, LSE, DK, N, M, W, D, scale,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Grid (cdiv(M, BLOCK_M), B): dk of BLOCK_M keys (written in the (B, D, H, W) layout),
    streaming the queries: dk_i = s sum_j ds_ji q_j."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    k = tl.load(K + b * D * M + offs_d[None, :] * M + offs_m[:, None],
                mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)
    lx = (offs_m % W).to(tl.float32)
    ly = (offs_m // W).to(tl.float32)
    dk = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        q = tl.load(Q + b * N * D + offs_n[:, None] * D + offs_d[None, :],
                    mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
        gx = tl.load(G + (b * N + offs_n) * 2, mask=mask_n, other=0.0).to(tl.float32)
        gy = tl.load(G + (b * N + offs_n) * 2 + 1, mask=mask_n, other=0.0).to(tl.float32)
        cx = tl.load(COORDS + (b * N + offs_n) * 2, mask=mask_n, other=0.0).to(tl.float32)
        cy = tl.load(COORDS + (b * N + offs_n) * 2 + 1, mask=mask_n, other=0.0).to(tl.float32)
        lse = tl.load(LSE + b * N + offs_n, mask=mask_n, other=float("inf"))
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale
        pt = tl.exp(st - lse[None, :])
        dst = pt * (lx[:, None] * gx[None, :] + ly[:, None] * gy[None, :]
                    - (gx * cx + gy * cy)[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    tl.store(DK + b * D * M + offs_d[None, :] * M + offs_m[:, None],
             (dk * scale).to(DK.dtype.element_ty), mask=mask_m[:, None] & (offs_d[None, :] < D))


def _blocks(D: int):
    """(held rows, streamed rows, BLOCK_D), as global_attention._blocks (num_stages=2)."""
    bd = pow2(D, 16)
    if bd <= 64:
        return 64, 64, bd
    if bd <= 128:
        return 64, 32, bd
    return (32, 16, bd) if bd <= 256 else (16, 16, bd)


@register_kernel("project_coords_fwd", "triton")
def project_coords_fwd(q, k, scale: float):
    """Triton project_coords: (coords (B, N, 2), lse (B, N) float32)."""
    check_dtype("project_coords_fwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    B, N, D = q.shape
    H, W = k.shape[2], k.shape[3]
    coords = torch.empty((B, N, 2), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, N), device=q.device, dtype=torch.float32)
    held, streamed, bd = _blocks(D)
    with device_context(q):
        _fwd_kernel[(triton.cdiv(N, held), B)](
            q, k, coords, lse, N, H * W, W, D, float(scale), BLOCK_N=held, BLOCK_M=streamed,
            BLOCK_D=bd, PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2)
    return coords, lse


@register_kernel("project_coords_bwd", "triton")
def project_coords_bwd(grad_coords, q, k, coords, lse, scale: float):
    """Triton project_coords backward: (grad_q (B, N, D), grad_k (B, D, H, W))."""
    check_dtype("project_coords_bwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    grad_coords, coords = grad_coords.contiguous(), coords.contiguous()
    lse = lse.float().contiguous()
    B, N, D = q.shape
    H, W = k.shape[2], k.shape[3]
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    held, streamed, bd = _blocks(D)
    prec = dot_precision(q.dtype)
    with device_context(q):
        _bwd_dq_kernel[(triton.cdiv(N, held), B)](
            q, k, grad_coords, coords, lse, dq, N, H * W, W, D, float(scale),
            BLOCK_N=held, BLOCK_M=streamed, BLOCK_D=bd, PRECISION=prec, num_warps=4,
            num_stages=2)
        _bwd_dk_kernel[(triton.cdiv(H * W, held), B)](
            q, k, grad_coords, coords, lse, dk, N, H * W, W, D, float(scale),
            BLOCK_N=streamed, BLOCK_M=held, BLOCK_D=bd, PRECISION=prec, num_warps=4,
            num_stages=2)
    return dq, dk
