"""zlai0/CorrFlow benchmark.py + models/colorizer.py (R = 6, D = 4, C = 16).

Rules (docs/protocols.md, "corrflow"):
- Frame i+1 is propagated from frame i only (benchmark.py:70-82).
- Raw features (no L2 normalisation, no temperature): spatial_correlation_sampler with
  patch 13 = square |dy|, |dx| <= 6, zero outside the image (colorizer.py:15-20, 35);
  every logit that is exactly 0 (the padding) is set to -1e10 (colorizer.py:38), softmax over
  the 169 window positions (39-40); labels unfolded from the replicate-padded label map (33, 43).
- Labels enter as an id mask at full resolution: F.interpolate(ids.float(), 1/4, bilinear) --
  the ids are interpolated as numbers -- then .long() (truncation) and one-hot
  (colorizer.py:22-27). The first frame's annotation goes through the same (benchmark.py:73-74).
- Fed back hard at full resolution: the grid labels are upsampled bilinearly to the frame,
  argmax'd to an id mask (benchmark.py:83-84), which is the next frame's reference label
  (benchmark.py:75-76) and goes through the 1/4 interpolation again.
- Output: that full-resolution argmax (benchmark.py:83-84). Frames are cropped to multiples of 8
  on the right/bottom (functional/feeder/dataset/DavisLoader.py:27-42) and the saved masks
  padded by 3 columns on each side (benchmark.py:107, 113, 118).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import INF, argmax_margin, bilinear, one_hot_ids

SETTINGS = dict(radius=6, down=4)


def ids_to_grid(ids: torch.Tensor, channels: int, down: int = 4):
    """Colorizer.prep: id mask (H, W) -> one-hot (channels, H/down, W/down) of the truncated
    bilinear interpolation of the ids as numbers. Also returns how close a value came to an
    integer boundary from below (a truncation near-tie)."""
    x = F.interpolate(ids.double()[None, None], scale_factor=1 / down, mode="bilinear", align_corners=False)[0, 0]
    frac = x - torch.floor(x)
    margin = float((1 - frac[frac > 0]).min()) if (frac > 0).any() else INF
    return one_hot_ids(x.long(), channels), margin


def first_labels(ids: torch.Tensor, channels: int, down: int = 4) -> torch.Tensor:
    return ids_to_grid(ids, channels, down)[0]


def _step(fr: torch.Tensor, ft: torch.Tensor, lab: torch.Tensor, radius: int) -> torch.Tensor:
    """fr, ft (D, h, w) reference / target features, lab (K, h, w) -> (K, h, w)."""
    D, h, w = ft.shape
    P = 2 * radius + 1
    fpad = F.pad(fr.double(), (radius,) * 4)  # zero padding: out-of-image correlation is 0
    lpad = F.pad(lab.double()[None], (radius,) * 4, mode="replicate")[0]
    corr, vals = [], []
    for dy in range(P):
        for dx in range(P):
            corr.append((ft.double() * fpad[:, dy:dy + h, dx:dx + w]).sum(0))
            vals.append(lpad[:, dy:dy + h, dx:dx + w])
    corr = torch.stack(corr)  # (P*P, h, w)
    corr = torch.where(corr == 0, torch.full_like(corr, -1e10), corr)
    wts = torch.softmax(corr, dim=0)
    return (wts[None] * torch.stack(vals, 1)).sum(1)


def propagate(feats: torch.Tensor, labels0: torch.Tensor, radius: int = 6, down: int = 4):
    """labels0: the first frame's grid one-hot (first_labels of its mask). Frame size = grid * down."""
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    lab = labels0.double()
    out, margin = [], INF
    for t in range(1, T):
        pred = _step(feats[t - 1], feats[t], lab, radius)
        out.append(pred)
        up = bilinear(pred, (h * down, w * down))
        margin = min(margin, argmax_margin(up))
        lab, m = ids_to_grid(up.argmax(0), K, down)
        margin = min(margin, m)
    return torch.stack(out), margin


def masks(labels: torch.Tensor, size: tuple[int, int]):
    up = bilinear(labels, size)
    return up.argmax(0), up, argmax_margin(up)
