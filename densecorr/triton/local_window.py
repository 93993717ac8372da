"""Triton kernels for local_affinity (window logits / joint softmax, materialised) and
local_copy (window-weighted sum of values), forward and backward.

Layouts (contiguous): q (B, D, H, W), k (B, T, D, H, W), v (B, T, C, H, W),
attn (B, T*P, H, W) with attn[b, t*P + p, j] at (b*T*P + t*P + p)*H*W + j; out (B, C, H, W).
Window geometry and boundary rules as in local_attention.py (shared helpers).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from densecorr.backends import register_kernel
from densecorr.triton._common import check_dtype, device_context, floor_pow2, pow2
from densecorr.triton.local_attention import (
    _BLOCK_Q, _clamp_start, _key_cells, _tile_p, boundary_code, window_cells,
)


@triton.jit
def _affinity_fwd_kernel(Q, K, ATTN, WY, WX, T, P, H, W, D, r, dil, scale,
                         BOUNDARY: tl.constexpr, NORMALIZE: tl.constexpr, ROUNDS: tl.constexpr,
                         BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): the T*P window logits of BLOCK_Q pixels (-inf outside
    for mask, 0 for zero); with NORMALIZE a first pass finds each pixel's max and sum and a
    second recomputes the logits and writes their joint softmax."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    d3 = offs_d[None, None, :]
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    for rnd in tl.static_range(ROUNDS):  # 2 with NORMALIZE, else 1
        for t in range(T):
            kbase = K + (b * T + t) * D * HW
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + tl.arange(0, BLOCK_P)
                mask_p = offs_p < P
                ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
                kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
                yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
                load_ok = inside & mask_p[None, :] & mask_q[:, None]
                pos = tl.where(load_ok, yy * W + xx, 0)[:, :, None]
                kg = tl.load(kbase + d3 * HW + pos, mask=load_ok[:, :, None] & (d3 < D), other=0.0)
                s = tl.sum(q[:, None, :] * kg.to(tl.float32), 2) * scale
                if BOUNDARY == 0:
                    s = tl.where(inside, s, float("-inf"))
                if NORMALIZE and rnd == 0:
                    m_new = tl.maximum(m_i, tl.max(tl.where(mask_p[None, :], s, float("-inf")), 1))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    e = tl.where(mask_p[None, :], tl.exp(s - m_safe[:, None]), 0.0)
                    l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(e, 1)
                    m_i = m_new
                else:
                    if NORMALIZE:
                        s = tl.exp(s - m_i[:, None]) / l_i[:, None]
                    ptr = ATTN + (b * T * P + t * P + offs_p[None, :]) * HW + offs_q[:, None]
                    tl.store(ptr, s.to(ATTN.dtype.element_ty), mask=mask_p[None, :] & mask_q[:, None])
        if NORMALIZE and rnd == 0:
            # Padded pixels admit no cell: keep their (unstored) values finite.
            m_i = tl.where(mask_q, m_i, 0.0)
            l_i = tl.where(mask_q, l_i, 1.0)


@triton.jit
def _affinity_bwd_dq_kernel(G, Q, K, ATTN, DQ, DELTA, WY, WX, T, P, H, W, D, r, dil, scale,
                            BOUNDARY: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_Q: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): delta = sum g*attn (NORMALIZE; stored (B, H*W) float32),
    dlogit = attn (g - delta) or g, dq = scale sum dlogit k over the admitted cells."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    TP = T * P
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    d3 = offs_d[None, None, :]
    delta = tl.zeros((BLOCK_Q,), tl.float32)
    if NORMALIZE:
        for tp0 in range(0, TP, BLOCK_P):
            offs_tp = tp0 + tl.arange(0, BLOCK_P)
            ok = (offs_tp[None, :] < TP) & mask_q[:, None]
            ptr = (b * TP + offs_tp[None, :]) * HW + offs_q[:, None]
            g = tl.load(G + ptr, mask=ok, other=0.0).to(tl.float32)
            a = tl.load(ATTN + ptr, mask=ok, other=0.0).to(tl.float32)
            delta += tl.sum(g * a, 1)
    tl.store(DELTA + b * HW + offs_q, delta, mask=mask_q)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for t in range(T):
        kbase = K + (b * T + t) * D * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
            # Outside cells have a constant logit (excluded, or 0): no gradient.
            load_ok = inside & mask_p[None, :] & mask_q[:, None]
            ptr = (b * TP + t * P + offs_p[None, :]) * HW + offs_q[:, None]
            g = tl.load(G + ptr, mask=load_ok, other=0.0).to(tl.float32)
            if NORMALIZE:
                a = tl.load(ATTN + ptr, mask=load_ok, other=0.0).to(tl.float32)
                dl = a * (g - delta[:, None])
            else:
                dl = g
            pos = tl.where(load_ok, yy * W + xx, 0)[:, :, None]
            kg = tl.load(kbase + d3 * HW + pos, mask=load_ok[:, :, None] & (d3 < D), other=0.0)
            dq += tl.sum(dl[:, :, None] * kg.to(tl.float32), 1)
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
             (dq * scale).to(DQ.dtype.element_ty), mask=mask_q[:, None] & (offs_d[None, :] < D))


@triton.jit
def _inverse_cells(iy, ix, offs_j, mask_i, G2P, H, W, r, dil, CR, BOUNDARY: tl.constexpr):
    """Queries j = i - (cy, cx)*dil (candidates offs_j of a (2CR+1)^2 grid) whose window
    holds key (iy, ix): (jpos, p, ok) with p the key's position in j's window."""
    KS = 2 * r + 1
    NCS = 2 * CR + 1
    cy = (offs_j // NCS - CR)[None, :]
    cx = (offs_j % NCS - CR)[None, :]
    jy = iy - cy * dil
    jx = ix - cx * dil
    ok = (offs_j < NCS * NCS)[None, :] & mask_i[:, None]
    ok = ok & (jy >= 0) & (jy < H) & (jx >= 0) & (jx < W)
    if BOUNDARY == 2:
        ky = (iy - _clamp_start(jy, H, r, dil)) // dil
        kx = (ix - _clamp_start(jx, W, r, dil)) // dil
    else:
        ky = cy + r
        kx = cx + r
    ok = ok & (ky >= 0) & (ky < KS) & (kx >= 0) & (kx < KS)
    p = tl.load(G2P + tl.where(ok, ky * KS + kx, 0), mask=ok, other=-1)
    ok = ok & (p >= 0)
    return tl.where(ok, jy * W + jx, 0), tl.where(ok, p, 0), ok


@triton.jit
def _affinity_bwd_dk_kernel(G, Q, ATTN, DELTA, DK, G2P, T, P, H, W, D, r, dil, scale, CR,
                            BOUNDARY: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_I: tl.constexpr,
                            BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_I), B*T): dk of BLOCK_I key pixels of one reference, gathered
    over the queries whose window holds them (no atomics): dk = scale sum dlogit_j q_j."""
    pid = tl.program_id(0)
    bt = tl.program_id(1).to(tl.int64)
    b = bt // T
    t = bt % T
    HW = H * W
    NC = (2 * CR + 1) * (2 * CR + 1)
    offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < HW
    iy = (offs_i // W)[:, None]
    ix = (offs_i % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    d3 = offs_d[None, None, :]
    dk = tl.zeros((BLOCK_I, BLOCK_D), tl.float32)
    for c0 in range(0, NC, BLOCK_J):
        jpos, p, ok = _inverse_cells(iy, ix, c0 + tl.arange(0, BLOCK_J), mask_i, G2P, H, W, r, dil,
                                     CR, BOUNDARY)
        ptr = (b * T * P + t * P + p) * HW + jpos
        dl = tl.load(G + ptr, mask=ok, other=0.0).to(tl.float32)
        if NORMALIZE:
            a = tl.load(ATTN + ptr, mask=ok, other=0.0).to(tl.float32)
            dl = a * (dl - tl.load(DELTA + b * HW + jpos, mask=ok, other=0.0))
        qg = tl.load(Q + b * D * HW + d3 * HW + jpos[:, :, None], mask=ok[:, :, None] & (d3 < D),
                     other=0.0).to(tl.float32)
        dk += tl.sum(dl[:, :, None] * qg, 1)
    tl.store(DK + bt * D * HW + offs_d[None, :] * HW + offs_i[:, None],
             (dk * scale).to(DK.dtype.element_ty), mask=mask_i[:, None] & (offs_d[None, :] < D))


@triton.jit
def _copy_fwd_kernel(ATTN, V, O, WY, WX, T, P, H, W, C, r, dil,
                     BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): out = sum over window cells inside the image of attn v."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_c = tl.arange(0, BLOCK_C)
    c3 = offs_c[None, None, :]
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    for t in range(T):
        vbase = V + (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
            load_ok = inside & mask_p[None, :] & mask_q[:, None]
            a = tl.load(ATTN + (b * T * P + t * P + offs_p[None, :]) * HW + offs_q[:, None],
                        mask=load_ok, other=0.0).to(tl.float32)
            pos = tl.where(load_ok, yy * W + xx, 0)[:, :, None]
            vg = tl.load(vbase + c3 * HW + pos, mask=load_ok[:, :, None] & (c3 < C), other=0.0)
            acc += tl.sum(a[:, :, None] * vg.to(tl.float32), 1)
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], acc.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))


@triton.jit
def _copy_bwd_dattn_kernel(G, V, DATTN, WY, WX, T, P, H, W, C, r, dil,
                           BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): dattn = grad . v at each window cell (0 outside)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_c = tl.arange(0, BLOCK_C)
    c3 = offs_c[None, None, :]
    g = tl.load(G + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    for t in range(T):
        vbase = V + (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
            load_ok = inside & mask_p[None, :] & mask_q[:, None]
            pos = tl.where(load_ok, yy * W + xx, 0)[:, :, None]
            vg = tl.load(vbase + c3 * HW + pos, mask=load_ok[:, :, None] & (c3 < C), other=0.0)
            da = tl.sum(g[:, None, :] * vg.to(tl.float32), 2)
            tl.store(DATTN + (b * T * P + t * P + offs_p[None, :]) * HW + offs_q[:, None],
                     da.to(DATTN.dtype.element_ty), mask=mask_p[None, :] & mask_q[:, None])


@triton.jit
def _copy_bwd_dv_kernel(G, ATTN, DV, G2P, T, P, H, W, C, r, dil, CR,
                        BOUNDARY: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_I), B*T): dv of BLOCK_I key pixels of one reference, gathered
    over the queries whose window holds them: dv = sum attn_j grad_j."""
    pid = tl.program_id(0)
    bt = tl.program_id(1).to(tl.int64)
    b = bt // T
    t = bt % T
    HW = H * W
    NC = (2 * CR + 1) * (2 * CR + 1)
    offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < HW
    iy = (offs_i // W)[:, None]
    ix = (offs_i % W)[:, None]
    offs_c = tl.arange(0, BLOCK_C)
    c3 = offs_c[None, None, :]
    dv = tl.zeros((BLOCK_I, BLOCK_C), tl.float32)
    for c0 in range(0, NC, BLOCK_J):
        jpos, p, ok = _inverse_cells(iy, ix, c0 + tl.arange(0, BLOCK_J), mask_i, G2P, H, W, r, dil,
                                     CR, BOUNDARY)
        a = tl.load(ATTN + (b * T * P + t * P + p) * HW + jpos, mask=ok, other=0.0).to(tl.float32)
        gg = tl.load(G + b * C * HW + c3 * HW + jpos[:, :, None], mask=ok[:, :, None] & (c3 < C),
                     other=0.0).to(tl.float32)
        dv += tl.sum(a[:, :, None] * gg, 1)
    tl.store(DV + bt * C * HW + offs_c[None, :] * HW + offs_i[:, None], dv.to(DV.dtype.element_ty),
             mask=mask_i[:, None] & (offs_c[None, :] < C))


def _geometry(radius, dilation, boundary, window, H, W, device):
    code = boundary_code(boundary, int(radius), int(dilation), H, W)
    wy, wx, g2p = window_cells(int(radius), window, device)
    reach = 2 * int(radius) if code == 2 else int(radius)
    return code, wy, wx, g2p, reach


@register_kernel("local_affinity_fwd", "triton")
def local_affinity_fwd(q, k, radius: int, dilation: int, scale: float, normalize: bool,
                       boundary: str, window: str):
    """Triton local_affinity: (B, T*P, H, W) logits or their joint softmax, input dtype."""
    check_dtype("local_affinity_fwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    B, D, H, W = q.shape
    T = k.shape[1]
    code, wy, wx, _, _ = _geometry(radius, dilation, boundary, window, H, W, q.device)
    P = wy.numel()
    attn = torch.empty((B, T * P, H, W), device=q.device, dtype=q.dtype)
    bd = pow2(D, 2)
    with device_context(q):
        _affinity_fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            q, k, attn, wy, wx, T, P, H, W, D, int(radius), int(dilation), float(scale),
            BOUNDARY=code, NORMALIZE=bool(normalize), ROUNDS=2 if normalize else 1, BLOCK_Q=_BLOCK_Q,
            BLOCK_P=_tile_p(bd), BLOCK_D=bd, num_warps=4)
    return attn


@register_kernel("local_affinity_bwd", "triton")
def local_affinity_bwd(grad_attn, q, k, attn, radius: int, dilation: int, scale: float,
                       normalize: bool, boundary: str, window: str):
    """Triton local_affinity backward: (grad_q, grad_k)."""
    check_dtype("local_affinity_bwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    grad_attn, attn = grad_attn.to(q.dtype).contiguous(), attn.to(q.dtype).contiguous()
    B, D, H, W = q.shape
    T = k.shape[1]
    code, wy, wx, g2p, reach = _geometry(radius, dilation, boundary, window, H, W, q.device)
    P = wy.numel()
    bd = pow2(D, 2)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    delta = torch.empty((B, H * W), device=q.device, dtype=torch.float32)
    args = (T, P, H, W, D, int(radius), int(dilation), float(scale))
    with device_context(q):
        _affinity_bwd_dq_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            grad_attn, q, k, attn, dq, delta, wy, wx, *args, BOUNDARY=code,
            NORMALIZE=bool(normalize), BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile_p(bd), BLOCK_D=bd,
            num_warps=4)
        _affinity_bwd_dk_kernel[(triton.cdiv(H * W, _BLOCK_Q), B * T)](
            grad_attn, q, attn, delta, dk, g2p, *args, reach, BOUNDARY=code,
            NORMALIZE=bool(normalize), BLOCK_I=_BLOCK_Q, BLOCK_J=_tile_p(bd), BLOCK_D=bd,
            num_warps=4)
    return dq, dk


@register_kernel("local_copy_fwd", "triton")
def local_copy_fwd(attn, v, radius: int, dilation: int, boundary: str, window: str):
    """Triton local_copy: (B, C, H, W) in v's dtype."""
    check_dtype("local_copy_fwd", v)
    v = v.contiguous()
    attn = attn.to(v.dtype).contiguous()
    B, T, C, H, W = v.shape
    code, wy, wx, _, _ = _geometry(radius, dilation, boundary, window, H, W, v.device)
    P = wy.numel()
    out = torch.empty((B, C, H, W), device=v.device, dtype=v.dtype)
    bc = pow2(C, 2)
    with device_context(v):
        _copy_fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            attn, v, out, wy, wx, T, P, H, W, C, int(radius), int(dilation), BOUNDARY=code,
            BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile_p(bc), BLOCK_C=bc, num_warps=4)
    return out


@register_kernel("local_copy_bwd", "triton")
def local_copy_bwd(grad_out, attn, v, radius: int, dilation: int, boundary: str, window: str):
    """Triton local_copy backward: (grad_attn, grad_v)."""
    check_dtype("local_copy_bwd", v)
    v = v.contiguous()
    grad_out, attn_c = grad_out.to(v.dtype).contiguous(), attn.to(v.dtype).contiguous()
    B, T, C, H, W = v.shape
    code, wy, wx, g2p, reach = _geometry(radius, dilation, boundary, window, H, W, v.device)
    P = wy.numel()
    bc = pow2(C, 2)
    dattn = torch.empty((B, T * P, H, W), device=v.device, dtype=attn.dtype)
    dv = torch.empty_like(v)
    with device_context(v):
        _copy_bwd_dattn_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            grad_out, v, dattn, wy, wx, T, P, H, W, C, int(radius), int(dilation), BOUNDARY=code,
            BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile_p(bc), BLOCK_C=bc, num_warps=4)
        _copy_bwd_dv_kernel[(triton.cdiv(H * W, _BLOCK_Q), B * T)](
            grad_out, attn_c, dv, g2p, T, P, H, W, C, int(radius), int(dilation), reach,
            BOUNDARY=code, BLOCK_I=_BLOCK_Q, BLOCK_J=_tile_p(bc), BLOCK_C=bc, num_warps=4)
    return dattn, dv
