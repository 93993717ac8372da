"""facebookresearch/dino eval_video_segmentation.py (defaults: n_last_frames 7,
size_mask_neighborhood 12, topk 5, temperature 0.1 hard-coded, patch_size 16).

Rules (docs/protocols.md, "dino"):
- References of frame t: frame 0 (first_seg, ground truth) + a queue of the n_last_frames
  previous predicted frames, frames 1.. only (eval_video_segmentation.py:46, 61-62, 66-71).
- Features L2-normalised (125-126); aff = exp(q.k / 0.1) (129); multiplied by the square
  neighbourhood mask |dy|, |dx| <= 12 on every reference including frame 0 (85-99, 131-135);
  top-k jointly over all references' positions: entries below the k-th largest set to 0, the
  rest divided by their sum (137-142); labels = segs @ aff (144-149).
- Fed back soft, before upsampling (70-71).
- First labels: PIL NEAREST resize of the id mask to (w/16, h/16), then one-hot with max id + 1
  channels (read_seg 224-241, to_one_hot 176-188).
- Output: bilinear x patch_size (align_corners False) (74), per-channel min-max norm_mask
  (75, 102-110), argmax (76), PIL NEAREST to the original size (80).
"""
from __future__ import annotations

import torch

from .common import INF, argmax_margin, bilinear, l2n, min_max, nearest_index, one_hot_ids, pil_nearest, topk_margin, window

SETTINGS = dict(n_last_frames=7, radius=12, topk=5, temperature=0.1)


def context(t: int, n_last_frames: int = 7) -> list[int]:
    """Frame t's references: [0] + the queue (frames max(1, t - n_last_frames) .. t-1)."""
    return [0] + list(range(max(1, t - n_last_frames), t))


def first_labels(ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Id mask (H, W) -> one-hot (max id + 1, h, w) of its PIL-NEAREST resize."""
    small = pil_nearest(ids, grid)
    return one_hot_ids(small, int(small.max()) + 1)


def propagate(feats: torch.Tensor, labels0: torch.Tensor, n_last_frames: int = 7, radius: int = 12, topk: int = 5, temperature: float = 0.1):
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    N = h * w
    f = l2n(feats.double(), 1).reshape(T, D, N)
    allowed = window(h, w, radius, "square") if radius > 0 else torch.ones(N, N, dtype=torch.bool)  # [query, key]
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    out, margin = [], INF
    for t in range(1, T):
        srcs = [f[0]] + [p[0] for p in queue]
        segs = [labels0.double().reshape(K, N)] + [p[1] for p in queue]
        q = f[t]
        logits = torch.stack([q.T @ s for s in srcs]) / temperature  # (ctx, queries, keys)
        margin = min(margin, topk_margin(logits.masked_fill(~allowed[None], -INF).transpose(2, 1).reshape(-1, N), topk, 0))
        aff = torch.exp(logits) * allowed[None]  # outside the neighbourhood: exactly 0
        aff = aff.transpose(2, 1).reshape(-1, N)  # (ctx * keys, queries)
        kth = aff.topk(topk, dim=0).values.min(0).values
        aff = torch.where(aff < kth[None], torch.zeros_like(aff), aff)
        aff = aff / aff.sum(0, keepdim=True)
        pred = torch.cat(segs, 1) @ aff  # (K, N)
        if len(queue) == n_last_frames:
            queue.pop(0)
        queue.append((q, pred))
        out.append(pred.reshape(K, h, w))
    return torch.stack(out), margin


def masks(labels: torch.Tensor, patch: int, size: tuple[int, int]):
    """Grid labels -> (ids (H, W) at the original size, scores at the upsampled size, margin)."""
    K, h, w = labels.shape
    up = min_max(bilinear(labels, (h * patch, w * patch)))
    seg = up.argmax(0)
    return seg[nearest_index(seg.shape[0], size[0])][:, nearest_index(seg.shape[1], size[1])], up, argmax_margin(up)
