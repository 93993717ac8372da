"""Liusifei/UVC test.py (defaults: pre_num 7, topk 5, temp 1; README: `python test.py -d DAVIS -s 480`).

Rules (docs/protocols.md, "uvc"):
- Each reference is propagated on its own: frame 0 (ground truth) and each of the queue of the
  pre_num previous predictions (frames 1.. only), test.py:87, 102-111.
- Per reference: raw (not L2-normalised) features, aff = k^T q (libs/model.py:15-21, 216),
  softmax over the reference's positions of aff * temp with temp = 1 (model.py:188, 217);
  transform_topk keeps the k largest softmax weights per query and zeroes the rest WITHOUT
  renormalising (libs/test_utils.py:30-36).
- The per-reference predictions are averaged: (sum) / (1 + len(queue)) (test.py:111); the
  average is fed back soft (test.py:120-122).
- First labels: scipy.misc.imresize(..., "nearest") (PIL NEAREST) of the id mask to the
  feature grid, one-hot with max id + 1 channels (libs/test_utils.py:94-121).
- Output: bilinear x8 (test.py:125; torch 1.1, align_corners False), per-channel min-max
  norm_mask (libs/utils.py:110-122), argmax, nearest resize to the original size (test.py:126-133).
"""
from __future__ import annotations

import torch

from .common import INF, argmax_margin, bilinear, min_max, nearest_index, one_hot_ids, pil_nearest, topk_margin

SETTINGS = dict(pre_num=7, topk=5, temp=1.0)


def context(t: int, pre_num: int = 7) -> list[int]:
    return [0] + list(range(max(1, t - pre_num), t))


def first_labels(ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    small = pil_nearest(ids, grid)
    return one_hot_ids(small, int(small.max()) + 1)


def _forward(k: torch.Tensor, q: torch.Tensor, seg: torch.Tensor, topk: int, temp: float):
    """One reference: k (D, N), q (D, N), seg (K, N) -> (K, N), margin."""
    aff = k.T @ q  # (keys, queries)
    margin = topk_margin(aff * temp, topk, 0)
    aff = torch.softmax(aff * temp, dim=0)
    kth = aff.topk(topk, dim=0).values.min(0).values
    aff = torch.where(kth[None] > aff, torch.zeros_like(aff), aff)
    return seg @ aff, margin


def propagate(feats: torch.Tensor, labels0: torch.Tensor, pre_num: int = 7, topk: int = 5, temp: float = 1.0):
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    N = h * w
    f = feats.double().reshape(T, D, N)
    seg0 = labels0.double().reshape(K, N)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    out, margin = [], INF
    for t in range(1, T):
        q = f[t]
        acc, m = _forward(f[0], q, seg0, topk, temp)
        margin = min(margin, m)
        for fi, si in queue:
            est, m = _forward(fi, q, si, topk, temp)
            margin = min(margin, m)
            acc = acc + est
        avg = acc / (1 + len(queue))
        if len(queue) == pre_num:
            queue.pop(0)
        queue.append((q, avg))
        out.append(avg.reshape(K, h, w))
    return torch.stack(out), margin


def masks(labels: torch.Tensor, size: tuple[int, int], stride: int = 8):
    K, h, w = labels.shape
    up = min_max(bilinear(labels, (h * stride, w * stride)))
    seg = up.argmax(0)
    return seg[nearest_index(seg.shape[0], size[0])][:, nearest_index(seg.shape[1], size[1])], up, argmax_margin(up)
