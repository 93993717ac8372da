"""zlai0/MAST benchmark.py (--ref 0) + models/colorizer.py + models/deform_im2col_util.py
(test time: R = 12, D = 4, C = 7; long-term memory with ROI localisation).

Rules (docs/protocols.md, "mast"):
- References of frame t = i + 1: sorted({0, 5} that are <= i  U  {i, i-2, i-4} that are > 0)
  (benchmark.py:79-83), i.e. {0, 5} + {t-1, t-3, t-5}.
- Raw features, no temperature; short-term references: spatial_correlation_sampler patch 25
  (|dy|, |dx| <= 12), zero outside the image and NOT masked: those positions enter the softmax
  with logit 0 and label 0 (F.unfold zero padding) (colorizer.py:33-38, 90-93, 102).
- Long-term references (t - x > 15, dil_int; colorizer.py:59-64): a coarse search, softmax over
  the 25 x 25 positions dilated by d = min(4, (t - x) // 15 + 1) (zero logits outside),
  gives each query its expected offset (sum p * (dx, dy)) * d (colorizer.py:70-80); the fine
  25 x 25 window is then sampled around that offset by bilinear grid_sample, zero outside
  (colorizer.py:82-88, deform_im2col_util.py:24-45).
- One softmax jointly over all references' positions (colorizer.py:95-96); out = sum p * label.
- Labels: the full-resolution id mask subsampled [::4, ::4] and one-hot (colorizer.py:40-48);
  fed back hard at full resolution: bilinear to the frame, argmax (benchmark.py:101-106).
- Output: that argmax (benchmark.py:103-105).
Known bugs of the released code, reproduced only on request (`code_bugs=True`, or one each):
- `shared_offset`: the long-term references' labels are all sampled with `offset0`, the offset
  of the LAST long-term reference (colorizer.py:101, a leftover loop variable);
- `half_pixel`: deform_im2col normalises sampling positions with (size - 1) (align_corners=True convention,
  deform_im2col_util.py:14-22) but calls F.grid_sample with the default align_corners, False
  since torch 1.3 (deform_im2col_util.py:42): a position x is read at x * w / (w - 1) - 0.5.
The paper's rule (the default here) uses each reference's own offset and samples at x exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import INF, argmax_margin, bilinear, one_hot_ids, sample_bilinear_zeros

SETTINGS = dict(radius=12, down=4, dil_int=15, coarse_radius=12, max_dilation=4)


def ref_index(t: int) -> list[int]:
    i = t - 1
    refs = [x for x in (0, 5) if x <= i] + [x for x in range(i, i - 6, -2) if x > 0][::-1]
    return sorted(set(refs))


def dilation(t: int, x: int, dil_int: int = 15, max_dilation: int = 4) -> int | None:
    """The coarse-search dilation of reference x for frame t, or None for a short-term reference."""
    return min(max_dilation, (t - x) // dil_int + 1) if t - x > dil_int else None


def first_labels(ids: torch.Tensor, channels: int, down: int = 4) -> torch.Tensor:
    return one_hot_ids(ids[::down, ::down], channels)


def _window_positions(h: int, w: int, radius: int, step: float = 1.0):
    """Per window offset p (row-major dy, dx) and query cell: absolute (y, x) (P, h, w) each."""
    P = 2 * radius + 1
    off = torch.arange(P, dtype=torch.float64) - radius
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return yy[None] + step * dy.reshape(-1, 1, 1), xx[None] + step * dx.reshape(-1, 1, 1), dy.reshape(-1), dx.reshape(-1)


def _window_zero(img: torch.Tensor, radius: int, dilation: int = 1) -> torch.Tensor:
    """img (C, h, w) at each query cell's window positions (y + dilation * dy, x + dilation * dx),
    |dy|, |dx| <= radius, row-major, zero outside the image: (C, P, h, w)."""
    C, h, w = img.shape
    cols = F.unfold(img.double()[None], kernel_size=2 * radius + 1, dilation=dilation, padding=radius * dilation)
    return cols.reshape(C, (2 * radius + 1) ** 2, h, w)


def coarse_offset(q: torch.Tensor, k: torch.Tensor, d: int, radius: int = 12) -> torch.Tensor:
    """Expected (ox, oy) (2, h, w) in cells: softmax of q . k over the dilated window (zero logits outside)."""
    D, h, w = q.shape
    _, _, dy, dx = _window_positions(h, w, radius, d)
    corr = (q.double()[:, None] * _window_zero(k, radius, d)).sum(0)  # (P, h, w)
    p = torch.softmax(corr, dim=0)
    return torch.stack([(p * dx[:, None, None]).sum(0), (p * dy[:, None, None]).sum(0)]) * d


def _sample_window(img: torch.Tensor, offset: torch.Tensor, radius: int, half_pixel: bool) -> torch.Tensor:
    """img (C, h, w) sampled bilinearly (zeros outside) at cell + offset + window offset: (C, P, h, w)."""
    C, h, w = img.shape
    py, px, _, _ = _window_positions(h, w, radius)
    px = px + offset[0][None]
    py = py + offset[1][None]
    if half_pixel:  # grid_sample(align_corners=False) of a grid normalised by (size - 1)
        px = px * w / (w - 1) - 0.5
        py = py * h / (h - 1) - 0.5
    return sample_bilinear_zeros(img, px, py)


def step(q: torch.Tensor, refs: list[tuple[torch.Tensor, torch.Tensor, int | None]], radius: int = 12,
         shared_offset: bool = False, half_pixel: bool = False) -> torch.Tensor:
    """q (D, h, w); refs: (features (D, h, w), labels (K, h, w), coarse dilation or None), the
    long-term ones first as in the reference. Returns (K, h, w)."""
    D, h, w = q.shape
    qd = q.double()
    corrs, vals, offsets = [], [], []
    for k, lab, d in refs:
        if d is not None:
            off = coarse_offset(q, k, d)
            offsets.append(off)
            corrs.append((qd[:, None] * _sample_window(k, off, radius, half_pixel)).sum(0))
        else:
            corrs.append((qd[:, None] * _window_zero(k, radius)).sum(0))
    for (k, lab, d), n in zip(refs, range(len(refs))):
        if d is not None:
            off = offsets[-1] if shared_offset else offsets[n]
            vals.append(_sample_window(lab, off, radius, half_pixel))
        else:
            vals.append(_window_zero(lab, radius))
    p = torch.softmax(torch.cat(corrs, 0), dim=0)  # (R*P, h, w)
    return (p[None] * torch.cat(vals, 1)).sum(1)


def propagate(feats: torch.Tensor, labels0: torch.Tensor, radius: int = 12, down: int = 4, dil_int: int = 15,
              code_bugs: bool = False, shared_offset: bool | None = None, half_pixel: bool | None = None):
    """labels0: the first frame's grid one-hot. Frame size = grid * down. Hard feedback at full
    resolution. The paper's rule by default; `code_bugs` (or each bug alone) as released."""
    shared_offset = code_bugs if shared_offset is None else shared_offset
    half_pixel = code_bugs if half_pixel is None else half_pixel
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    labels = {0: labels0.double()}
    out, margin = [], INF
    for t in range(1, T):
        idx = ref_index(t)
        dil = [dilation(t, x, dil_int) for x in idx]
        assert all(d is not None for d in dil[: sum(d is not None for d in dil)]), "long-term references come first"
        pred = step(feats[t], [(feats[x], labels[x], d) for x, d in zip(idx, dil)], radius, shared_offset, half_pixel)
        out.append(pred)
        up = bilinear(pred, (h * down, w * down))
        margin = min(margin, argmax_margin(up))
        labels[t] = first_labels(up.argmax(0), K, down)
    return torch.stack(out), margin


def masks(labels: torch.Tensor, size: tuple[int, int]):
    up = bilinear(labels, size)
    return up.argmax(0), up, argmax_margin(up)

