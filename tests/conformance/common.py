"""Small building blocks shared by the reference encodings (dense, float64, no densecorr)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

INF = float("inf")


def l2n(x: torch.Tensor, dim: int) -> torch.Tensor:
    """F.normalize(x, dim=dim) (eps 1e-12), the normalisation every L2-normalising reference uses."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each flat (row-major) cell of an h x w grid: (N,), (N,)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return yy.flatten(), xx.flatten()


def window(h: int, w: int, radius: float, shape: str) -> torch.Tensor:
    """allowed[j, i]: key cell i is in query cell j's window (N, N) bool.

    shape "square": |dy| <= r and |dx| <= r (DINO restrict_neighborhood, MAST/CorrFlow patches);
    "circle_strict": sqrt(dy^2 + dx^2) < r (videowalk MaskedAttention.make: D < radius);
    "circle": dy^2 + dx^2 <= r^2 (densecorr's circle, for comparison only)."""
    yy, xx = coords(h, w)
    dy = (yy[None, :] - yy[:, None]).double()
    dx = (xx[None, :] - xx[:, None]).double()
    if shape == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    if shape == "circle_strict":
        return (dy**2 + dx**2).sqrt() < radius
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    raise ValueError(shape)


def _linear_taps(n_in: int, n_out: int):
    """cv2 INTER_LINEAR's source taps along one axis (the coefficient table of
    opencv imgproc/src/resize.cpp, float images): fx = (dst + 0.5) * in / out - 0.5, sx = floor(fx), weights (1 - (fx - sx), fx - sx)
    on pixels sx, sx + 1; sx < 0 -> (0, weight 1); sx >= in - 1 -> (in - 1, weight 1)."""
    fx = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    sx = torch.floor(fx)
    a = fx - sx
    low = sx < 0
    high = sx >= n_in - 1
    a = torch.where(low | high, torch.zeros_like(a), a)
    sx = torch.where(low, torch.zeros_like(sx), torch.where(high, torch.full_like(sx, n_in - 1), sx)).long()
    return sx, (sx + 1).clamp_max(n_in - 1), 1 - a, a


def bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) -> (K, H, W): cv2.resize(INTER_LINEAR) on float images, written out from its
    rule: half-pixel centres (src = (dst + 0.5) * in / out - 0.5), the border replicated, no
    antialiasing (a downscale reads 2 pixels per axis whatever the factor), separable (rows,
    then columns). cv2 switches to INTER_AREA only for an exact 2x downscale, where both are the
    2x2 mean. This is also torch's F.interpolate(bilinear, align_corners=False)
    (test_common_bilinear_is_cv2_linear)."""
    x = x.double()
    y0, y1, wy0, wy1 = _linear_taps(x.shape[-2], size[0])
    x0, x1, wx0, wx1 = _linear_taps(x.shape[-1], size[1])
    rows = x[..., y0, :] * wy0[:, None] + x[..., y1, :] * wy1[:, None]
    return rows[..., x0] * wx0 + rows[..., x1] * wx1


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel of PIL's NEAREST resize (also scipy.misc.imresize
    'nearest', which calls PIL): floor((x + 0.5) * n_in / n_out)."""
    return torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out).long().clamp_(0, n_in - 1)


def pil_nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Id map (H, W) -> (h, w) by PIL NEAREST."""
    H, W = ids.shape
    return ids[nearest_index(H, size[0])][:, nearest_index(W, size[1])]


def one_hot_ids(ids: torch.Tensor, channels: int) -> torch.Tensor:
    """Integer map (h, w) -> float64 (channels, h, w), channel c = (ids == c)."""
    return F.one_hot(ids.long(), channels).permute(2, 0, 1).double()


def min_max(x: torch.Tensor) -> torch.Tensor:
    """UVC/DINO norm_mask: each channel c with max > 0 becomes (x_c - min) / max(x_c - min)."""
    out = x.clone()
    for c in range(x.shape[0]):
        if out[c].max() > 0:
            m = out[c] - out[c].min()
            out[c] = m / m.max()
    return out


def argmax_margin(x: torch.Tensor, dim: int = 0) -> float:
    """Smallest gap between the largest and second largest value along `dim` (inf if one channel)."""
    if x.shape[dim] < 2:
        return INF
    top = x.topk(2, dim=dim).values
    return float((top.select(dim, 0) - top.select(dim, 1)).min())


def topk_margin(logits: torch.Tensor, k: int, dim: int) -> float:
    """Smallest gap between the k-th and (k+1)-th largest finite logits along `dim`
    (how far the data is from a top-k tie)."""
    n = logits.shape[dim]
    if k >= n:
        return INF
    top = logits.topk(k + 1, dim=dim).values
    gap = top.select(dim, k - 1) - top.select(dim, k)
    gap = gap[torch.isfinite(gap)]
    return float(gap.min()) if gap.numel() else INF


def consecutive_margin(logits: torch.Tensor, k: int, dim: int) -> float:
    """Smallest gap between consecutive values among the k+1 largest along `dim`: where copies
    of one reference make ties harmless, the top-k boundary may fall after any of the k largest
    distinct values (pass the logits without the copies)."""
    n = logits.shape[dim]
    top = logits.topk(min(k + 1, n), dim=dim).values
    gap = (top.narrow(dim, 0, top.shape[dim] - 1) - top.narrow(dim, 1, top.shape[dim] - 1))
    gap = gap[torch.isfinite(gap)]
    return float(gap.min()) if gap.numel() else INF


def sample_bilinear_zeros(img: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of img (C, h, w) at continuous pixel positions px, py (any equal shapes S),
    taps outside the image reading 0 (grid_sample padding_mode="zeros"). Returns (C, *S)."""
    C, h, w = img.shape
    x0 = torch.floor(px)
    y0 = torch.floor(py)
    fx = px - x0
    fy = py - y0
    out = torch.zeros((C,) + tuple(px.shape), dtype=torch.float64)
    flat = img.double().reshape(C, -1)
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            xi = (x0 + ox).long()
            yi = (y0 + oy).long()
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(-1)
            vals = flat[:, idx].reshape((C,) + tuple(px.shape))
            out += vals * (wy * wx * ok)[None]
    return out


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x.double(), dim=dim)


SQRT512 = math.sqrt(512.0)
