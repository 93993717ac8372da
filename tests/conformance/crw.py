"""ajabri/videowalk (CRW) label propagation, README settings
`--topk 10 --videoLen 20 --radius 12 --temperature 0.05 --cropSize -1` (long-mem [0], no norm_mask).

Rules (docs/protocols.md, "crw"):
- The video is padded with `videoLen` copies of frame 0 in front (data/vos.py:148-149); frame t
  (real index) is propagated from the long-memory frame 0 (global, unmasked) plus the padded
  frames t .. t+videoLen-1, i.e. the real frames t-20 .. t-1 with negative ones clamped to 0
  (utils/test_utils.py:123-138). Every copy carries frame 0's labels (test.py:131, 144-148).
- L2-normalised features (test.py:85-86); logits q.k, -1e10 added outside the radius mask
  (strict: sqrt(dy^2+dx^2) < radius, utils/__init__.py:355-356) on the non-long-memory
  references, then divided by the temperature; top-k jointly over all references' positions,
  softmax over the k kept logits (utils/test_utils.py:153-161).
- Predictions are fed back soft, unnormalised (test.py:140-145; --norm_mask off).
- First labels: one-hot at full resolution, cv2.resize INTER_LINEAR to ceil(H/8) x ceil(W/8)
  (data/vos.py:245, 256, 262); output: cv2.resize INTER_LINEAR to the frame, argmax
  (utils/test_utils.py:90-93).
"""
from __future__ import annotations

import torch

from .common import INF, argmax_margin, bilinear, consecutive_margin, l2n, window

SETTINGS = dict(n_context=20, radius=12.0, topk=10, temperature=0.05)


def context(t: int, n_context: int = 20, pad_with_first: bool = True) -> list[int]:
    """Real frame indices of frame t's references: [long memory 0] + the n_context previous
    frames, frames before 0 being copies of frame 0 (so for t <= 20 frame 0 is also a local
    reference 21 - t times). `pad_with_first=False`: the previous frames that exist only
    (frame 0 then once more as a local reference while t <= 20), an alternative, not videowalk."""
    if not pad_with_first:
        return [0] + list(range(max(0, t - n_context), t))
    return [0] + [max(0, t - n_context + i) for i in range(n_context)]


def first_labels(onehot: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One-hot channels at full resolution (K, H, W) -> (K, h, w): cv2 INTER_LINEAR (bilinear
    without antialiasing: at stride 8 each cell is the mean of the 2x2 pixels at its centre)."""
    return bilinear(onehot, grid)


def propagate(feats: torch.Tensor, labels0: torch.Tensor, n_context: int = 20, radius: float = 12.0, topk: int = 10,
              temperature: float = 0.05, window_shape: str = "circle_strict", pad_with_first: bool = True):
    """(T, D, h, w) features, (K, h, w) frame-0 labels -> ((T-1, K, h, w) labels of frames 1.., margin)."""
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    N = h * w
    f = l2n(feats.double(), 1).reshape(T, D, N)
    penalty = torch.where(window(h, w, radius, window_shape), 0.0, -1e10).double()  # [query, key]
    labels = {0: labels0.double().reshape(K, N)}
    out, margin = [], INF
    for t in range(1, T):
        refs = context(t, n_context, pad_with_first)
        q = f[t]
        blocks = []
        for r, i in enumerate(refs):
            a = f[i].T @ q  # (keys, queries)
            if r >= 1:  # every reference after the long memory gets the radius mask
                a = a + penalty.T
            blocks.append(a)
        A = torch.cat(blocks, 0) / temperature  # (R*N, N)
        # copies of frame 0 tie exactly with the global frame 0 (same logit, same label): harmless
        distinct = torch.cat([blocks[0]] + [b for b, i in zip(blocks[1:], refs[1:]) if i != 0], 0) / temperature
        margin = min(margin, consecutive_margin(distinct, topk, 0))
        vals, idx = A.topk(topk, dim=0)
        wts = torch.softmax(vals, dim=0)
        ctx = torch.cat([labels[i] for i in refs], 1)  # (K, R*N)
        pred = (ctx[:, idx] * wts[None]).sum(1)  # (K, N)
        labels[t] = pred
        out.append(pred.reshape(K, h, w))
    return torch.stack(out), margin


def masks(labels: torch.Tensor, size: tuple[int, int]):
    """Grid labels (K, h, w) -> (id channel index map (H, W), the scores argmaxed, their margin)."""
    up = bilinear(labels, size)
    return up.argmax(0), up, argmax_margin(up)
