"""Triton kernels for the local ops with a per-query, per-reference window offset:
local_offset_{affinity,copy,attention}_{fwd,bwd} (the `offset=` of the local ops).

Layouts (contiguous) as in local_attention.py / local_window.py, plus offset (B, T, 2, H, W)
float32: offset[b, t, 0, j] = dy, offset[b, t, 1, j] = dx at ((b*T + t)*2 + c)*H*W + j.
Query (y, x), reference t, window cell (ky, kx): the sample point is
  (Y, X) = (y + dy + (ky - r)*dil, x + dx + (kx - r)*dil)
and keys / values there are bilinear in the 4 pixels around it; a tap outside the image
reads 0 (F.grid_sample(align_corners=True, padding_mode="zeros") in pixel units).
Window cells are whole pixels apart, so floor and fraction are those of the offset:
Y = (y + floor(dy) + (ky - r)*dil) + fy with fy = dy - floor(dy), and the 4 tap weights
depend on (query, t) only. Boundaries: "mask" (code 0) excludes a position whose point lies
outside [0, H-1] x [0, W-1]; "zero" (code 1) keeps every position (a point entirely outside
has logit 0 and value 0); "clamp" is refused.
Key-side gradients (dk, dv) are scattered with float32 atomics into the 4 taps: offsets make
the inverse window irregular, so the gather of local_window.py does not apply.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from densecorr.backends import register_kernel
from densecorr.triton._common import (
    KEY_MIN, check_dtype, device_context, floor_pow2, merge_topk, pack_keys, pow2, unpack_keys,
)
from densecorr.triton.local_attention import _BLOCK_Q, _BUDGET, _tile_p, window_cells

BOUNDARIES = {"mask": 0, "zero": 1}  # the kernels' BOUNDARY codes (as in local_attention.py)
# Offsets are clamped to +-2^29 pixels before the int32 floor: any such point is far outside.
_FAR = tl.constexpr(536870912.0)


@triton.jit
def _offset_parts(OFF, row, HW, offs_q, mask):
    """Integer parts (int32) and fractions (float32) of (dy, dx) at OFF + row*HW + offs_q,
    row = (b*T + t)*2 (broadcasting)."""
    base = OFF + row * HW + offs_q
    dy = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    dx = tl.load(base + HW, mask=mask, other=0.0).to(tl.float32)
    fly = tl.minimum(tl.maximum(tl.floor(dy), -_FAR), _FAR)
    flx = tl.minimum(tl.maximum(tl.floor(dx), -_FAR), _FAR)
    return fly.to(tl.int32), flx.to(tl.int32), dy - fly, dx - flx


@triton.jit
def _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil):
    """Top-left taps (yy, xx) of the sample points of queries (y, x) at window cells
    (ky, kx) (broadcasting), and whether each point lies in [0, H-1] x [0, W-1]."""
    yy = y + iy + (ky - r) * dil
    xx = x + ix + (kx - r) * dil
    # In integers (as the reference): Y = yy + fy <= H-1 iff yy + (fy > 0) <= H-1.
    inside = (yy >= 0) & (yy + (fy > 0).to(tl.int32) <= H - 1)
    inside = inside & (xx >= 0) & (xx + (fx > 0).to(tl.int32) <= W - 1)
    return yy, xx, inside


@triton.jit
def _tap(X, row, ty, tx, w, ok, H, W, HW, n3, nm):
    """w * X at pixel (ty, tx) of the planes at row (broadcast (R, S) -> (R, S, BLOCK_N)),
    0 outside the image, where not ok or where the weight is 0."""
    hit = ok & (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W) & (w != 0.0)
    pos = row + tl.where(hit, ty * W + tx, 0)
    val = tl.load(X + pos[:, :, None] + n3 * HW, mask=hit[:, :, None] & nm, other=0.0)
    return val.to(tl.float32) * w[:, :, None]


@triton.jit
def _sample(X, row, yy, xx, fy, fx, ok, H, W, HW, offs_n, N):
    """Bilinear samples (R, S, BLOCK_N) float32 of the N planes at X + row (row: the element
    offset of plane 0, broadcastable to (R, S)) at the points with top-left taps (yy, xx)
    and fractions (fy, fx); 0 where not ok."""
    n3 = offs_n[None, None, :]
    nm = n3 < N
    acc = _tap(X, row, yy, xx, (1.0 - fy) * (1.0 - fx), ok, H, W, HW, n3, nm)
    acc += _tap(X, row, yy, xx + 1, (1.0 - fy) * fx, ok, H, W, HW, n3, nm)
    acc += _tap(X, row, yy + 1, xx, fy * (1.0 - fx), ok, H, W, HW, n3, nm)
    acc += _tap(X, row, yy + 1, xx + 1, fy * fx, ok, H, W, HW, n3, nm)
    return acc


@triton.jit
def _scatter_tap(X, row, ty, tx, w, ok, vals, H, W, HW, n3, nm):
    hit = ok & (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W) & (w != 0.0)
    pos = row + tl.where(hit, ty * W + tx, 0)
    tl.atomic_add(X + pos[:, :, None] + n3 * HW, vals * w[:, :, None], mask=hit[:, :, None] & nm)


@triton.jit
def _scatter(X, row, yy, xx, fy, fx, ok, vals, H, W, HW, offs_n, N):
    """Adjoint of _sample: atomically adds vals (R, S, BLOCK_N) float32, bilinearly spread
    over the 4 taps, into the float32 planes at X + row."""
    n3 = offs_n[None, None, :]
    nm = n3 < N
    _scatter_tap(X, row, yy, xx, (1.0 - fy) * (1.0 - fx), ok, vals, H, W, HW, n3, nm)
    _scatter_tap(X, row, yy, xx + 1, (1.0 - fy) * fx, ok, vals, H, W, HW, n3, nm)
    _scatter_tap(X, row, yy + 1, xx, fy * (1.0 - fx), ok, vals, H, W, HW, n3, nm)
    _scatter_tap(X, row, yy + 1, xx + 1, fy * fx, ok, vals, H, W, HW, n3, nm)


@triton.jit
def _admitted(inside, mask_p, mask_q, BOUNDARY: tl.constexpr):
    """(BLOCK_Q, BLOCK_P) positions that enter the softmax / sum: inside (mask) or all (zero)."""
    ok = mask_p[None, :] & mask_q[:, None]
    if BOUNDARY == 0:
        ok = ok & inside
    return ok


@triton.jit
def _attention_fwd_kernel(Q, K, V, OFF, O, LSE, WY, WX, T, P, H, W, D, C, r, dil, scale,
                          BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): out and lse of BLOCK_Q pixels, streaming the T*P
    positions in tiles of BLOCK_P with an online softmax. A pixel with no admitted position
    (mask) gets out 0, lse -inf."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        krow = (b * T + t) * D * HW
        vrow = (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
            s = tl.where(ok, tl.sum(q[:, None, :] * ks, 2) * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A tile with no admitted position for a row leaves m at -inf: avoid -inf - -inf.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pexp = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pexp, 1)
            vs = _sample(V, vrow, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
            acc = acc * alpha[:, None] + tl.sum(pexp[:, :, None] * vs, 1)
            m_i = m_new
    some = l_i > 0
    out = acc / tl.where(some, l_i, 1.0)[:, None]
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], out.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))
    lse = tl.where(some, m_i + tl.log(tl.where(some, l_i, 1.0)), float("-inf"))
    tl.store(LSE + b * HW + offs_q, lse, mask=mask_q)


@triton.jit
def _selected(idx, keep, OFF, WY, WX, b, offs_q, y, x, T, P, H, W, HW, r, dil,
              BOUNDARY: tl.constexpr):
    """The selected positions idx (BLOCK_Q, KP) (t*P + p; used where keep) of BLOCK_Q pixels:
    (reference t, taps yy, xx, fractions fy, fx, admitted ok), each (BLOCK_Q, KP)."""
    tsel = idx // P
    psel = idx - tsel * P
    ky = tl.load(WY + psel, mask=keep, other=0)
    kx = tl.load(WX + psel, mask=keep, other=0)
    iy, ix, fy, fx = _offset_parts(OFF, (b * T + tsel) * 2, HW, offs_q[:, None], keep)
    yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
    ok = keep
    if BOUNDARY == 0:
        ok = ok & inside
    return tsel, yy, xx, fy, fx, ok


@triton.jit
def _attention_topk_fwd_kernel(Q, K, V, OFF, O, LSE, IDX, WY, WX, T, P, H, W, D, C, r, dil, scale,
                               BOUNDARY: tl.constexpr, TOPK, KP: tl.constexpr,
                               BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): streams the T*P logits of BLOCK_Q pixels keeping the KP
    (power of two >= TOPK, <= BLOCK_P) largest as packed (logit, position) keys; then the
    softmax over the TOPK largest and the bilinear gather of their values. Excluded
    positions (mask) are candidates with logit -inf, as in a top-k over the logit volume."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    buf = tl.full((BLOCK_Q, KP), KEY_MIN, tl.int64)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        krow = (b * T + t) * D * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
            s = tl.sum(q[:, None, :] * ks, 2) * scale
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
    m = tl.where(m == float("-inf"), 0.0, m)  # padded pixels, or nothing admitted (mask)
    pexp = tl.exp(val - m[:, None])
    l_i = tl.sum(pexp, 1)
    some = l_i > 0
    l_safe = tl.where(some, l_i, 1.0)
    idx = tl.where(keep, idx, 0)
    tl.store(IDX + (b * HW + offs_q[:, None]) * TOPK + cols[None, :], idx, mask=keep)
    tsel, yy, xx, fy, fx, ok = _selected(idx, keep, OFF, WY, WX, b, offs_q, y, x, T, P, H, W, HW,
                                         r, dil, BOUNDARY)
    vs = _sample(V, (b * T + tsel) * C * HW, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
    out = tl.sum((pexp / l_safe[:, None])[:, :, None] * vs, 1)
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], out.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))
    tl.store(LSE + b * HW + offs_q, tl.where(some, m + tl.log(l_safe), float("-inf")), mask=mask_q)


@triton.jit
def _attention_bwd_kernel(Q, K, V, OFF, DO, LSE, DELTA, DQ, DK32, DV32, WY, WX, T, P, H, W, D, C,
                          r, dil, scale, BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): recomputes the window logits of BLOCK_Q pixels:
    p = exp(s - lse), ds = p (dO.v - delta); writes dq = scale sum ds k and atomically adds
    scale ds q into dk and p dO into dv (float32, (B, T, D|C, H, W)) at the 4 taps."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    do = tl.load(DO + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                 mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * HW + offs_q, mask=mask_q, other=0.0)
    delta = tl.load(DELTA + b * HW + offs_q, mask=mask_q, other=0.0)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        krow = (b * T + t) * D * HW
        vrow = (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
            vs = _sample(V, vrow, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
            s = tl.sum(q[:, None, :] * ks, 2) * scale
            p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
            ds = p * (tl.sum(do[:, None, :] * vs, 2) - delta[:, None])
            dq += tl.sum(ds[:, :, None] * ks, 1)
            _scatter(DK32, krow, yy, xx, fy, fx, ok, (ds * scale)[:, :, None] * q[:, None, :],
                     H, W, HW, offs_d, D)
            _scatter(DV32, vrow, yy, xx, fy, fx, ok, p[:, :, None] * do[:, None, :], H, W, HW,
                     offs_c, C)
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
             (dq * scale).to(DQ.dtype.element_ty), mask=mask_q[:, None] & (offs_d[None, :] < D))


@triton.jit
def _attention_topk_bwd_kernel(Q, K, V, OFF, DO, LSE, DELTA, IDX, DQ, DK32, DV32, WY, WX, T, P, H,
                               W, D, C, r, dil, scale, BOUNDARY: tl.constexpr, TOPK,
                               KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): as _attention_bwd_kernel over the TOPK positions of idx."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    cols = tl.arange(0, KP)
    keep = mask_q[:, None] & (cols[None, :] < TOPK)
    idx = tl.load(IDX + (b * HW + offs_q[:, None]) * TOPK + cols[None, :], mask=keep, other=0)
    tsel, yy, xx, fy, fx, ok = _selected(idx, keep, OFF, WY, WX, b, offs_q, y, x, T, P, H, W, HW,
                                         r, dil, BOUNDARY)
    krow = (b * T + tsel) * D * HW
    vrow = (b * T + tsel) * C * HW
    ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
    vs = _sample(V, vrow, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    do = tl.load(DO + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                 mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    lse = tl.load(LSE + b * HW + offs_q, mask=mask_q, other=0.0)
    delta = tl.load(DELTA + b * HW + offs_q, mask=mask_q, other=0.0)
    s = tl.sum(q[:, None, :] * ks, 2) * scale
    p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
    ds = p * (tl.sum(do[:, None, :] * vs, 2) - delta[:, None])
    dq = tl.sum(ds[:, :, None] * ks, 1) * scale
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None], dq.to(DQ.dtype.element_ty),
             mask=mask_q[:, None] & (offs_d[None, :] < D))
    _scatter(DK32, krow, yy, xx, fy, fx, ok, (ds * scale)[:, :, None] * q[:, None, :], H, W, HW,
             offs_d, D)
    _scatter(DV32, vrow, yy, xx, fy, fx, ok, p[:, :, None] * do[:, None, :], H, W, HW, offs_c, C)


@triton.jit
def _affinity_fwd_kernel(Q, K, OFF, ATTN, WY, WX, T, P, H, W, D, r, dil, scale,
                         BOUNDARY: tl.constexpr, NORMALIZE: tl.constexpr, ROUNDS: tl.constexpr,
                         BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): the T*P logits of BLOCK_Q pixels (-inf at excluded
    positions for mask); with NORMALIZE a first pass finds each pixel's max and sum and a
    second recomputes the logits and writes their joint softmax (0 where nothing is admitted)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    for rnd in tl.static_range(ROUNDS):  # 2 with NORMALIZE, else 1
        for t in range(T):
            iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
            krow = (b * T + t) * D * HW
            for p0 in range(0, P, BLOCK_P):
                offs_p = p0 + tl.arange(0, BLOCK_P)
                mask_p = offs_p < P
                ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
                kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
                yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
                ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
                ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
                s = tl.where(ok, tl.sum(q[:, None, :] * ks, 2) * scale, float("-inf"))
                if NORMALIZE and rnd == 0:
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
                    m_i = m_new
                else:
                    if NORMALIZE:
                        s = tl.exp(s - m_i[:, None]) / l_i[:, None]
                    ptr = ATTN + (b * T * P + t * P + offs_p[None, :]) * HW + offs_q[:, None]
                    tl.store(ptr, s.to(ATTN.dtype.element_ty), mask=mask_p[None, :] & mask_q[:, None])
        if NORMALIZE and rnd == 0:
            # Nothing admitted (mask; padded pixels): exp(-inf - 0) / 1 writes 0.
            some = l_i > 0
            m_i = tl.where(some, m_i, 0.0)
            l_i = tl.where(some, l_i, 1.0)


@triton.jit
def _affinity_bwd_kernel(G, Q, K, OFF, ATTN, DQ, DK32, WY, WX, T, P, H, W, D, r, dil, scale,
                         BOUNDARY: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_Q: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): delta = sum g*attn (NORMALIZE), dlogit = attn (g - delta)
    or g at the admitted positions; writes dq = scale sum dlogit k and atomically adds
    scale dlogit q into float32 dk at the 4 taps."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    TP = T * P
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * D * HW + offs_d[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    delta = tl.zeros((BLOCK_Q,), tl.float32)
    if NORMALIZE:
        for tp0 in range(0, TP, BLOCK_P):
            offs_tp = tp0 + tl.arange(0, BLOCK_P)
            okp = (offs_tp[None, :] < TP) & mask_q[:, None]
            ptr = (b * TP + offs_tp[None, :]) * HW + offs_q[:, None]
            g = tl.load(G + ptr, mask=okp, other=0.0).to(tl.float32)
            a = tl.load(ATTN + ptr, mask=okp, other=0.0).to(tl.float32)
            delta += tl.sum(g * a, 1)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        krow = (b * T + t) * D * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            # Excluded positions have a constant logit (-inf): no gradient.
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            ptr = (b * TP + t * P + offs_p[None, :]) * HW + offs_q[:, None]
            dl = tl.load(G + ptr, mask=ok, other=0.0).to(tl.float32)
            if NORMALIZE:
                a = tl.load(ATTN + ptr, mask=ok, other=0.0).to(tl.float32)
                dl = a * (dl - delta[:, None])
            dl = dl * scale
            ks = _sample(K, krow, yy, xx, fy, fx, ok, H, W, HW, offs_d, D)
            dq += tl.sum(dl[:, :, None] * ks, 1)
            _scatter(DK32, krow, yy, xx, fy, fx, ok, dl[:, :, None] * q[:, None, :], H, W, HW,
                     offs_d, D)
    tl.store(DQ + b * D * HW + offs_d[None, :] * HW + offs_q[:, None], dq.to(DQ.dtype.element_ty),
             mask=mask_q[:, None] & (offs_d[None, :] < D))


@triton.jit
def _copy_fwd_kernel(ATTN, V, OFF, O, WY, WX, T, P, H, W, C, r, dil,
                     BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): out = sum over the admitted positions of attn v(sampled)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        vrow = (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            a = tl.load(ATTN + (b * T * P + t * P + offs_p[None, :]) * HW + offs_q[:, None],
                        mask=ok, other=0.0).to(tl.float32)
            vs = _sample(V, vrow, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
            acc += tl.sum(a[:, :, None] * vs, 1)
    tl.store(O + b * C * HW + offs_c[None, :] * HW + offs_q[:, None], acc.to(O.dtype.element_ty),
             mask=mask_q[:, None] & (offs_c[None, :] < C))


@triton.jit
def _copy_bwd_kernel(G, ATTN, V, OFF, DATTN, DV32, WY, WX, T, P, H, W, C, r, dil,
                     BOUNDARY: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Grid (cdiv(H*W, BLOCK_Q), B): dattn = g . v(sampled) at each position (0 where
    excluded); atomically adds attn g into float32 dv at the 4 taps."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    HW = H * W
    TP = T * P
    offs_q = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < HW
    y = (offs_q // W)[:, None]
    x = (offs_q % W)[:, None]
    offs_c = tl.arange(0, BLOCK_C)
    g = tl.load(G + b * C * HW + offs_c[None, :] * HW + offs_q[:, None],
                mask=mask_q[:, None] & (offs_c[None, :] < C), other=0.0).to(tl.float32)
    for t in range(T):
        iy, ix, fy, fx = _offset_parts(OFF, (b * T + t) * 2, HW, offs_q[:, None], mask_q[:, None])
        vrow = (b * T + t) * C * HW
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            ky = tl.load(WY + offs_p, mask=mask_p, other=0)[None, :]
            kx = tl.load(WX + offs_p, mask=mask_p, other=0)[None, :]
            yy, xx, inside = _points(y, x, iy, ix, fy, fx, ky, kx, H, W, r, dil)
            ok = _admitted(inside, mask_p, mask_q, BOUNDARY)
            ptr = (b * TP + t * P + offs_p[None, :]) * HW + offs_q[:, None]
            vs = _sample(V, vrow, yy, xx, fy, fx, ok, H, W, HW, offs_c, C)
            tl.store(DATTN + ptr, tl.sum(g[:, None, :] * vs, 2).to(DATTN.dtype.element_ty),
                     mask=mask_p[None, :] & mask_q[:, None])
            a = tl.load(ATTN + ptr, mask=ok, other=0.0).to(tl.float32)
            _scatter(DV32, vrow, yy, xx, fy, fx, ok, a[:, :, None] * g[:, None, :], H, W, HW,
                     offs_c, C)


# --------------------------------------------------------------------------- wrappers


def _code(boundary: str) -> int:
    if boundary not in BOUNDARIES:
        raise RuntimeError(f"local offset ops: boundary must be one of {tuple(BOUNDARIES)} "
                           f"with an offset, not {boundary!r}")
    return BOUNDARIES[boundary]


def _offsets(offset: torch.Tensor, B: int, T: int, H: int, W: int) -> torch.Tensor:
    if tuple(offset.shape) != (B, T, 2, H, W):
        raise RuntimeError(f"local offset ops: offset must have shape (B, T, 2, H, W) = "
                           f"{(B, T, 2, H, W)}, got {tuple(offset.shape)}")
    return offset.to(torch.float32).contiguous()


def _geometry(offset, B, T, H, W, radius, boundary, window, device):
    code = _code(boundary)
    wy, wx, _ = window_cells(int(radius), window, device)
    return _offsets(offset, B, T, H, W), code, wy, wx, wy.numel()


def _tile(width: int, block_q: int = _BLOCK_Q) -> int:
    # Half the plain kernels' tile: a bilinear sample holds an accumulator beside each tap.
    return max(2, _tile_p(width, block_q) // 2)


@register_kernel("local_offset_affinity_fwd", "triton")
def local_offset_affinity_fwd(q, k, offset, radius: int, dilation: int, scale: float,
                              normalize: bool, boundary: str, window: str):
    """Triton local_affinity with offsets: (B, T*P, H, W) logits or joint softmax."""
    check_dtype("local_offset_affinity_fwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    B, D, H, W = q.shape
    T = k.shape[1]
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, q.device)
    attn = torch.empty((B, T * P, H, W), device=q.device, dtype=q.dtype)
    bd = pow2(D, 2)
    with device_context(q):
        _affinity_fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            q, k, offset, attn, wy, wx, T, P, H, W, D, int(radius), int(dilation), float(scale),
            BOUNDARY=code, NORMALIZE=bool(normalize), ROUNDS=2 if normalize else 1,
            BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile(bd), BLOCK_D=bd, num_warps=4)
    return attn


@register_kernel("local_offset_affinity_bwd", "triton")
def local_offset_affinity_bwd(grad_attn, q, k, offset, attn, radius: int, dilation: int,
                              scale: float, normalize: bool, boundary: str, window: str):
    """Triton local_affinity backward with offsets: (grad_q, grad_k)."""
    check_dtype("local_offset_affinity_bwd", q, k)
    q, k = q.contiguous(), k.contiguous()
    grad_attn, attn = grad_attn.to(q.dtype).contiguous(), attn.to(q.dtype).contiguous()
    B, D, H, W = q.shape
    T = k.shape[1]
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, q.device)
    bd = pow2(D, 2)
    dq = torch.empty_like(q)
    dk32 = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    with device_context(q):
        _affinity_bwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            grad_attn, q, k, offset, attn, dq, dk32, wy, wx, T, P, H, W, D, int(radius),
            int(dilation), float(scale), BOUNDARY=code, NORMALIZE=bool(normalize),
            BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile(bd), BLOCK_D=bd, num_warps=4)
    return dq, dk32.to(k.dtype)


@register_kernel("local_offset_copy_fwd", "triton")
def local_offset_copy_fwd(attn, v, offset, radius: int, dilation: int, boundary: str, window: str):
    """Triton local_copy with offsets: (B, C, H, W) in v's dtype."""
    check_dtype("local_offset_copy_fwd", v)
    v = v.contiguous()
    attn = attn.to(v.dtype).contiguous()
    B, T, C, H, W = v.shape
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, v.device)
    out = torch.empty((B, C, H, W), device=v.device, dtype=v.dtype)
    bc = pow2(C, 2)
    with device_context(v):
        _copy_fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            attn, v, offset, out, wy, wx, T, P, H, W, C, int(radius), int(dilation),
            BOUNDARY=code, BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile(bc), BLOCK_C=bc, num_warps=4)
    return out


@register_kernel("local_offset_copy_bwd", "triton")
def local_offset_copy_bwd(grad_out, attn, v, offset, radius: int, dilation: int, boundary: str,
                          window: str):
    """Triton local_copy backward with offsets: (grad_attn, grad_v)."""
    check_dtype("local_offset_copy_bwd", v)
    v = v.contiguous()
    grad_out, attn_c = grad_out.to(v.dtype).contiguous(), attn.to(v.dtype).contiguous()
    B, T, C, H, W = v.shape
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, v.device)
    bc = pow2(C, 2)
    dattn = torch.empty((B, T * P, H, W), device=v.device, dtype=attn.dtype)
    dv32 = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
    with device_context(v):
        _copy_bwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
            grad_out, attn_c, v, offset, dattn, dv32, wy, wx, T, P, H, W, C, int(radius),
            int(dilation), BOUNDARY=code, BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile(bc), BLOCK_C=bc,
            num_warps=4)
    return dattn, dv32.to(v.dtype)


@register_kernel("local_offset_attention_fwd", "triton")
def local_offset_attention_fwd(q, k, v, offset, radius: int, dilation: int, scale: float,
                               boundary: str, window: str, topk: int):
    """Triton local attention with offsets: (out (B, C, H, W), lse (B, H, W) float32,
    idx (B, H, W, topk) int64)."""
    check_dtype("local_offset_attention_fwd", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, D, H, W = q.shape
    T, C = k.shape[1], v.shape[2]
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, q.device)
    topk = int(topk)
    if topk < 0 or topk > T * P:
        raise RuntimeError(f"local_offset_attention_fwd: topk={topk} must be in [0, T*P={T * P}]")
    out = torch.empty((B, C, H, W), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, W), device=q.device, dtype=torch.float32)
    idx = torch.empty((B, H, W, topk), device=q.device, dtype=torch.int64)
    bd, bc = pow2(D, 2), pow2(C, 2)
    width = max(bd, bc)
    args = (T, P, H, W, D, C, int(radius), int(dilation), float(scale))
    with device_context(q):
        if topk == 0:
            _attention_fwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
                q, k, v, offset, out, lse, wy, wx, *args, BOUNDARY=code, BLOCK_Q=_BLOCK_Q,
                BLOCK_P=_tile(width), BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
        else:
            kp = pow2(topk)
            block_p = max(kp, 16)
            block_q = max(2, min(_BLOCK_Q, floor_pow2(_BUDGET // (2 * block_p * width))))
            _attention_topk_fwd_kernel[(triton.cdiv(H * W, block_q), B)](
                q, k, v, offset, out, lse, idx, wy, wx, *args, BOUNDARY=code, TOPK=topk, KP=kp,
                BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_D=bd, BLOCK_C=bc, num_warps=4)
    return out, lse, idx


@register_kernel("local_offset_attention_bwd", "triton")
def local_offset_attention_bwd(grad_out, q, k, v, offset, out, lse, idx, radius: int,
                               dilation: int, scale: float, boundary: str, window: str):
    """Triton local attention backward with offsets: (grad_q, grad_k, grad_v)."""
    check_dtype("local_offset_attention_bwd", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, D, H, W = q.shape
    T, C = k.shape[1], v.shape[2]
    offset, code, wy, wx, P = _geometry(offset, B, T, H, W, radius, boundary, window, q.device)
    grad_out = grad_out.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    delta = (grad_out.float() * out.float()).sum(1).contiguous()
    topk = idx.shape[-1]
    bd, bc = pow2(D, 2), pow2(C, 2)
    width = max(bd, bc)
    dq = torch.empty_like(q)
    dk32 = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv32 = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
    args = (T, P, H, W, D, C, int(radius), int(dilation), float(scale))
    with device_context(q):
        if topk == 0:
            _attention_bwd_kernel[(triton.cdiv(H * W, _BLOCK_Q), B)](
                q, k, v, offset, grad_out, lse, delta, dq, dk32, dv32, wy, wx, *args,
                BOUNDARY=code, BLOCK_Q=_BLOCK_Q, BLOCK_P=_tile(width), BLOCK_D=bd, BLOCK_C=bc,
                num_warps=4)
        else:
            kp = pow2(topk)
            block_q = max(2, min(_BLOCK_Q, floor_pow2(_BUDGET // (2 * kp * width))))
            _attention_topk_bwd_kernel[(triton.cdiv(H * W, block_q), B)](
                q, k, v, offset, grad_out, lse, delta, idx.contiguous(), dq, dk32, dv32, wy, wx,
                *args, BOUNDARY=code, TOPK=topk, KP=kp, BLOCK_Q=block_q, BLOCK_D=bd, BLOCK_C=bc,
                num_warps=4)
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)
