"""Triton kernels for local (windowed) attention over T references with one joint softmax.

Layouts (contiguous): q (B, D, H, W), k (B, T, D, H, W), v (B, T, C, H, W); out (B, C, H, W)
in the input dtype, lse (B, H, W) float32, idx (B, H, W, topk) int64 window positions t*P + p.
Pixel j = y*W + x; k[b, t, d, j] is at ((b*T + t)*D + d)*H*W + j (q, v, out likewise).

The window is a table of P grid cells (ky, kx) in [0, 2r] (row-major, circle cells only for
window="circle"), read by the kernels; the key of query (y, x) at cell (ky, kx) is
  mask/zero: (y + (ky - r)*dil, x + (kx - r)*dil), outside the image excluded (mask) or
             logit 0, value 0 (zero);
  clamp:     (sy + ky*dil, sx + kx*dil), sy the NATTEN window start (per dilation residue
             sub-grid, the window shifted to stay inside the image).
Kernels hold (BLOCK_Q pixels x BLOCK_P window cells x padded D or C) register tiles:
elementwise products and reductions (a gather per window cell leaves no tile for tl.dot).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from densecorr import geometry
from densecorr.backends import register_kernel
from densecorr.triton._common import (
    KEY_MIN, check_dtype, device_context, floor_pow2, merge_topk, pack_keys, pow2, unpack_keys,
)

BOUNDARIES = {name: code for code, name in enumerate(geometry.BOUNDARIES)}  # mask 0, zero 1, clamp 2
assert BOUNDARIES == {"mask": 0, "zero": 1, "clamp": 2}  # the kernels' BOUNDARY codes
_TABLES: dict = {}


def window_cells(radius: int, window: str, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(wy, wx): int32 (P,) grid cells of the window in window order; grid_to_p: int32
    ((2r+1)^2,) the position index p of each grid cell, -1 outside a circle window
    (densecorr.geometry.window_tables, cached per device)."""
    if window not in geometry.WINDOWS:
        raise RuntimeError(f"local attention: window must be one of {geometry.WINDOWS}, not {window!r}")
    key = (radius, window, str(device))
    if key not in _TABLES:
        _TABLES[key] = geometry.window_tables(radius, window, device)
    return _TABLES[key]


def boundary_code(boundary: str, radius: int, dilation: int, H: int, W: int) -> int:
    if boundary not in BOUNDARIES:
        raise RuntimeError(f"local attention: boundary must be one of {tuple(BOUNDARIES)}, "
                           f"not {boundary!r}")
    if boundary == "clamp" and not geometry.clamp_fits(H, W, radius, dilation):
        raise RuntimeError(f"local attention: boundary='clamp' needs H, W >= (2*radius+1)*dilation "
                           f"= {(2 * radius + 1) * dilation}, got H={H}, W={W}")
    return BOUNDARIES[boundary]


@triton.jit
def _clamp_start(i, L, r, dil):
    """NATTEN window start of index i in a length-L axis: on i's dilation sub-grid
    (i % dil, i % dil + dil, ...), the window of 2r+1 cells centred on i shifted inside."""
    res = i % dil
    n_sub = (L - res + dil - 1) // dil
    start = tl.minimum(tl.maximum(i // dil - r, 0), n_sub - (2 * r + 1))
    return start * dil + res


@triton.jit
def _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY: tl.constexpr):
    """Key (yy, xx) of query (y, x) at window cell (ky, kx) (broadcasting) and whether it is
    inside the image."""
    if BOUNDARY == 2:
        yy = _clamp_start(y, H, r, dil) + ky * dil
        xx = _clamp_start(x, W, r, dil) + kx * dil
    else:
        yy = y + (ky - r) * dil
        xx = x + (kx - r) * dil
    inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    return yy, xx, inside


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, WY, WX, T, P, H, W, D, C, r, dil, scale,
                BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): one program computes out and lse of BLOCK_Q pixels,
    streaming the T*P window positions in tiles of BLOCK_P with an online softmax."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d3 = offs_d[None, None, :]
    c3 = offs_c[None, None, :]
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    for t in range(T):
        kbase = K + (b * T + t) * D * HW
        vbase = V + (b * T + t) * C * HW
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
            # zero: outside cells keep logit 0 (k loaded as 0) and join the softmax.
            if BOUNDARY == 1:
                part = mask_p[None, :] & (offs_q[:, None] >= 0)
            else:
                part = inside & mask_p[None, :]
            s = tl.where(part, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A tile with no admissible cell for a row leaves m at -inf: avoid -inf - -inf.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pexp = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pexp, 1)
            vg = tl.load(vbase + c3 * HW + pos, mask=load_ok[:, :, None] & (c3 < C), other=0.0)
            acc = acc * alpha[:, None] + tl.sum(pexp[:, :, None] * vg.to(tl.float32), 1)
            m_i = m_new
    # Padded pixels (beyond H*W) admit no cell: keep their (unstored) values finite.
    l_i = tl.where(mask_q, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], out.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))
    tl.store(LSE + b * HW + offs_q, m_i + tl.log(l_i), mask=mask_q)


@triton.jit
def _topk_fwd_kernel(Q, K, V, O, LSE, IDX, WY, WX, T, P, H, W, D, C, r, dil, scale,
                     BOUNDARY: tl.constexpr, TOPK, KP: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): one program streams the T*P window logits of BLOCK_Q
    pixels keeping the KP (power of two >= TOPK, <= BLOCK_P) largest as packed (logit,
    position) keys; then the softmax over the TOPK largest and a gather of their values.
    Cells outside the image are candidates with logit -inf (mask) or 0 (zero), as in a
    top-k over the full logit volume. idx[b, j, n] at (b*H*W + j)*TOPK + n."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d3 = offs_d[None, None, :]
    c3 = offs_c[None, None, :]
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    buf = tl.full((BLOCK_Q, KP), KEY_MIN, tl.int64)
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
            keys = tl.where(mask_p[None, :], pack_keys(s, t * P + offs_p[None, :]), KEY_MIN)
            beats = tl.max(keys, 1) > tl.min(buf, 1)
            if tl.max(beats.to(tl.int32), 0) > 0:
                buf = merge_topk(buf, keys, KP)
    val, idx = unpack_keys(buf)
    cols = tl.arange(0, KP)
    keep = (cols[None, :] < TOPK) & mask_q[:, None]
    val = tl.where(cols[None, :] < TOPK, val, float("-inf"))
    m = tl.max(val, 1)
    m = tl.where(mask_q, m, 0.0)  # padded pixels: all -inf
    pexp = tl.exp(val - m[:, None])
    l_i = tl.where(mask_q, tl.sum(pexp, 1), 1.0)
    idx = tl.where(keep, idx, 0)
    tsel = idx // P
    psel = idx - tsel * P
    ky = tl.load(WY + psel, mask=keep, other=0)
    kx = tl.load(WX + psel, mask=keep, other=0)
    yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
    load_ok = inside & keep
    pos = tl.where(load_ok, yy * W + xx, 0)
    vaddr = V + ((b * T + tsel) * C)[:, :, None] * HW + c3 * HW + pos[:, :, None]
    vg = tl.load(vaddr, mask=load_ok[:, :, None] & (c3 < C), other=0.0)
    out = tl.sum((pexp / l_i[:, None])[:, :, None] * vg.to(tl.float32), 1)
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], out.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))
    tl.store(LSE + b * HW + offs_q, m + tl.log(l_i), mask=mask_q)
    tl.store(IDX + (b * HW + offs_q[:, None]) * TOPK + cols[None, :], idx, mask=keep)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, WY, WX, T, P, H, W, D, C, r, dil, scale,
                   BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): dq of BLOCK_Q pixels, recomputing the window logits:
    p = exp(s q.k - lse), ds = p (dO.v - delta), dq = s sum ds k. delta (B, H, W) float32."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d3 = offs_d[None, None, :]
    c3 = offs_c[None, None, :]
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    do = tl.load(DO + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                 mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * HW + offs_q, mask=mask_q, other=0.0)
    delta = tl.load(DELTA + b * HW + offs_q, mask=mask_q, other=0.0)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for t in range(T):
        kbase = K + (b * T + t) * D * HW
        vbase = V + (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
            load_ok = inside & mask_p[None, :] & mask_q[:, None]
            pos = tl.where(load_ok, yy * W + xx, 0)[:, :, None]
            kg = tl.load(kbase + d3 * HW + pos, mask=load_ok[:, :, None] & (d3 < D),
                         other=0.0).to(tl.float32)
            vg = tl.load(vbase + c3 * HW + pos, mask=load_ok[:, :, None] & (c3 < C),
                         other=0.0).to(tl.float32)
            s = tl.sum(q[:, None, :] * kg, 2) * scale
            # Outside cells: excluded (mask) or constant logit 0 with k = 0 (zero); either way
            # they add nothing to dq.
            p = tl.where(load_ok, tl.exp(s - lse[:, None]), 0.0)
            dp = tl.sum(do[:, None, :] * vg, 2)
            ds = p * (dp - delta[:, None])
            dq += tl.sum(ds[:, :, None] * kg, 1)
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
             (dq * scale).to(DQ.dtype.element_ty), mask=mask_q[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, G2P, T, H, W, D, C, r, dil, scale, CR,
                     BOUNDARY: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_I), B*T): dk, dv of BLOCK_I key pixels of one reference, by
    gathering (no atomics) over the queries whose window holds them: the candidates
    j = i - (cy, cx)*dil for |cy|, |cx| <= CR (CR = r; 2r for clamp, whose shifted windows
    reach that far), in tiles of BLOCK_J. A candidate counts when its window cell
    (ky, kx) (from its window start) is in the window table: p = G2P[ky*(2r+1) + kx] >= 0."""
    pid = tl.program_id(0)
    bt = tl.program_id(1).to(tl.int64)
    b = bt // T
    HW = H * W
    KS = 2 * r + 1
    NCS = 2 * CR + 1
    offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < HW
    iy = (offs_i // W)[:, None]
    ix = (offs_i % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d3 = offs_d[None, None, :]
    c3 = offs_c[None, None, :]
    k = tl.load(K + bt * D * HW + offs_d[None, :] * HW + offs_i[:, None],
                mask=mask_i[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    v = tl.load(V + bt * C * HW + offs_c[None, :] * HW + offs_i[:, None],
                mask=mask_i[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    dk = tl.zeros((BLOCK_I, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_I, BLOCK_C), tl.float32)
    for c0 in range(0, NCS * NCS, BLOCK_J):
        offs_j = c0 + tl.arange(0, BLOCK_J)
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
        p_cell = tl.load(G2P + tl.where(ok, ky * KS + kx, 0), mask=ok, other=-1)
        ok = ok & (p_cell >= 0)
        jpos = tl.where(ok, jy * W + jx, 0)
        qg = tl.load(Q + b * D * HW + d3 * HW + jpos[:, :, None], mask=ok[:, :, None] & (d3 < D),
                     other=0.0).to(tl.float32)
        dog = tl.load(DO + b * C * HW + c3 * HW + jpos[:, :, None],
                      mask=ok[:, :, None] & (c3 < C), other=0.0).to(tl.float32)
        lse = tl.load(LSE + b * HW + jpos, mask=ok, other=0.0)
        delta = tl.load(DELTA + b * HW + jpos, mask=ok, other=0.0)
        s = tl.sum(qg * k[:, None, :], 2) * scale
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        dp = tl.sum(dog * v[:, None, :], 2)
        ds = p * (dp - delta)
        dk += tl.sum(ds[:, :, None] * qg, 1)
        dv += tl.sum(p[:, :, None] * dog, 1)
    tl.store(DK + bt * D * HW + offs_d[None, :] * HW + offs_i[:, None],
             (dk * scale).to(DK.dtype.element_ty), mask=mask_i[:, None] & (offs_d[None, :] < D))
    tl.store(DV + bt * C * HW + offs_c[None, :] * HW + offs_i[:, None], dv.to(DV.dtype.element_ty),
             mask=mask_i[:, None] & (offs_c[None, :] < C))


@triton.jit
def _topk_bwd_kernel(Q, K, V, DO, LSE, DELTA, IDX, DQ, DK32, DV32, WY, WX, T, P, H, W, D, C,
                     r, dil, scale, BOUNDARY: tl.constexpr, TOPK,
                     KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): BLOCK_Q pixels and their TOPK selected window positions
    (from idx): writes dq, atomically adds into float32 dk (B, T, D, H, W), dv (B, T, C, H, W)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d3 = offs_d[None, None, :]
    c3 = offs_c[None, None, :]
    cols = tl.arange(0, KP)
    keep = mask_q[:, None] & (cols[None, :] < TOPK)
    idx = tl.load(IDX + (b * HW + offs_q[:, None]) * TOPK + cols[None, :], mask=keep, other=0)
    tsel = idx // P
    psel = idx - tsel * P
    ky = tl.load(WY + psel, mask=keep, other=0)
    kx = tl.load(WX + psel, mask=keep, other=0)
    yy, xx, inside = _key_cells(y, x, ky, kx, H, W, r, dil, BOUNDARY)
    ok = inside & keep
    pos = tl.where(ok, yy * W + xx, 0)[:, :, None]
    kaddr = ((b * T + tsel) * D)[:, :, None] * HW + d3 * HW + pos
    vaddr = ((b * T + tsel) * C)[:, :, None] * HW + c3 * HW + pos
    md = ok[:, :, None] & (d3 < D)
    mc = ok[:, :, None] & (c3 < C)
    kg = tl.load(K + kaddr, mask=md, other=0.0).to(tl.float32)
    vg = tl.load(V + vaddr, mask=mc, other=0.0).to(tl.float32)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    do = tl.load(DO + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                 mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * HW + offs_q, mask=mask_q, other=0.0)
    delta = tl.load(DELTA + b * HW + offs_q, mask=mask_q, other=0.0)
    s = tl.sum(q[:, None, :] * kg, 2) * scale
    p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.sum(do[:, None, :] * vg, 2)
    ds = p * (dp - delta[:, None])
    dq = tl.sum(ds[:, :, None] * kg, 1) * scale
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None], dq.to(DQ.dtype.element_ty),
             mask=mask_q[:, None] & (offs_d[None, :] < D))
    tl.atomic_add(DK32 + kaddr, (ds * scale)[:, :, None] * q[:, None, :], mask=md)
    tl.atomic_add(DV32 + vaddr, p[:, :, None] * do[:, None, :], mask=mc)


_BLOCK_Q = 32
_BUDGET = 8192  # register-tile elements per program (BLOCK_Q * BLOCK_P * padded width)


def _tile_p(width: int, block_q: int = _BLOCK_Q, minimum: int = 2) -> int:
    return max(minimum, min(64, floor_pow2(_BUDGET // (block_q * width))))


def _prepare(q, k, v, radius, dilation, boundary, window):
    check_dtype("local_attention", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, D, H, W = q.shape
    T, C = k.shape[1], v.shape[2]
    code = boundary_code(boundary, int(radius), int(dilation), H, W)
    wy, wx, g2p = window_cells(int(radius), window, q.device)
    return q, k, v, (B, D, H, W, T, C), code, wy, wx, g2p


@register_kernel("local_attention_fwd", "triton")
def local_attention_fwd(q, k, v, radius: int, dilation: int, scale: float, boundary: str,
                        window: str, topk: int):
    """Triton local attention: (out (B, C, H, W), lse (B, H, W) float32,
    idx (B, H, W, topk) int64)."""
    q, k, v, (B, D, H, W, T, C), code, wy, wx, _ = _prepare(q, k, v, radius, dilation,
                                                            boundary, window)
    P = wy.numel()
    topk = int(topk)
    if topk < 0 or topk > T * P:
        raise RuntimeError(f"local_attention_fwd: topk={topk} must be in [0, T*P={T * P}]")
    out = torch.empty((B, C, H, W), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, W), device=q.device, dtype=torch.float32)
    idx = torch.empty((B, H, W, topk), device=q.device, dtype=torch.int64)
    bd, bc = pow2(D, 2), pow2(C, 2)
    width = max(bd, bc)
    args = (T, P, H, W, D, C, int(radius), int(dilation), float(scale))
    with device_context(q):
        if topk == 0:
            block_p = _tile_p(width)
            _fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
                q, k, v, out, lse, wy, wx, *args, BOUNDARY=code, BLOCK_Q=_BLOCK_Q,
                BLOCK_P=block_p, BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
        else:
            kp = pow2(topk)
            block_p = max(kp, 16)
            block_q = max(2, min(_BLOCK_Q, floor_pow2(_BUDGET // (block_p * width))))
            _topk_fwd_kernel[(triton.cdiv(H * W, block_q), B)](
                q, k, v, out, lse, idx, wy, wx, *args, BOUNDARY=code, TOPK=topk, KP=kp,
                BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
    return out, lse, idx


@register_kernel("local_attention_bwd", "triton")
def local_attention_bwd(grad_out, q, k, v, out, lse, idx, radius: int, dilation: int,
                        scale: float, boundary: str, window: str):
    """Triton local attention backward: (grad_q, grad_k, grad_v) in the input dtype."""
    q, k, v, (B, D, H, W, T, C), code, wy, wx, g2p = _prepare(q, k, v, radius, dilation,
                                                              boundary, window)
    P = wy.numel()
    grad_out = grad_out.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    delta = (grad_out.float() * out.float()).sum(1).contiguous()
    topk = idx.shape[-1]
    bd, bc = pow2(D, 2), pow2(C, 2)
    width = max(bd, bc)
    r, dil = int(radius), int(dilation)
    dq = torch.empty_like(q)
    with device_context(q):
        if topk == 0:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
            block_p = _tile_p(width)
            _bwd_dq_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
                q, k, v, grad_out, lse, delta, dq, wy, wx, T, P, H, W, D, C, r, dil,
                float(scale), BOUNDARY=code, BLOCK_Q=_BLOCK_Q, BLOCK_P=block_p, BLOCK_D=bd,
                BLOCK_C=bc, num_warps=4)
            cr = 2 * r if code == 2 else r
            _bwd_dkdv_kernel[(triton.cdiv(H * W, _BLOCK_Q), B * T)](
                q, k, v, grad_out, lse, delta, dk, dv, g2p, T, H, W, D, C, r, dil,
                float(scale), cr, BOUNDARY=code, BLOCK_I=_BLOCK_Q, BLOCK_J=block_p,
                BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
            return dq, dk, dv
        kp = pow2(topk)
        block_q = max(2, min(_BLOCK_Q, floor_pow2(_BUDGET // (kp * width))))
        dk32 = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
        dv32 = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
        _topk_bwd_kernel[(triton.cdiv(H * W, block_q), B)](
            q, k, v, grad_out, lse, delta, idx.contiguous(), dq, dk32, dv32, wy, wx, T, P, H, W,
            D, C, r, dil, float(scale), BOUNDARY=code, TOPK=topk, KP=kp, BLOCK_Q=block_q,
            BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)
