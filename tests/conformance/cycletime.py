"""xiaolonw/TimeCycle test_davis.py (run_test.sh: --cropSize 320 --topk_vis 5; videoLen 8).

Rules (docs/protocols.md, "cycletime"):
- The video is padded with videoLen = 8 copies of frame 0 (models/dataset/davis_test.py:83-89);
  padded target iter + 8 (real frame iter, iter = 0, 1, ...) is propagated from padded frame 0
  and padded iter+1 .. iter+7 (test_davis.py:411-416, 432-434), i.e. real frames
  [0] + (iter-7 .. iter-1 clamped to 0). Labels: padded 0..7 carry frame 0's ground truth;
  each target's (normalised) prediction overwrites its slot (test_davis.py:482-484, 499), so
  real frame 0 is predicted too (from 8 copies of itself) and its slot (padded 8) then holds
  that prediction, not the ground truth.
- Per reference: L2-normalised features (model_test.py:138, 149), logits q.k * sqrt(512)
  (model_test.py:111: divided by 512**-0.5), softmax over that reference's positions
  (model_test.py:113-114); top-5 per reference (np.argpartition, test_davis.py:455-456),
  weights = those softmax probabilities, not renormalised (test_davis.py:486); summed over the
  8 references and divided by 8 (test_davis.py:491).
- Each channel min-max normalised, (x - min) / max (test_davis.py:493-496), and fed back so.
  (The row/column swaps of test_davis.py:459-463 and model_test.py:102 cancel: labels are read
  at the right cells; the script only runs square 320x320 inputs.)
- First labels: one-hot of the labels present with more than 10 counted pixels, in order of
  first appearance (test_davis.py:287-318), cv2 INTER_LINEAR to 40x40 (test_davis.py:338).
- Output: cv2 INTER_LINEAR to 320x320, argmax, mapped to the label set's colours
  (test_davis.py:502-507). (The final INTER_NEAREST resize to the original size,
  preprocess/convert_davis.py:87, is the identity here: the frames are not squashed.)
"""
from __future__ import annotations

import math

import torch

from .common import INF, argmax_margin, bilinear, l2n, topk_margin

SETTINGS = dict(video_len=8, topk=5, scale=math.sqrt(512.0))


def context(r: int, video_len: int = 8) -> list[int]:
    """Padded indices of the references of real frame r (padded target r + video_len)."""
    return [0] + list(range(r + 1, r + video_len))


def label_set(ids: torch.Tensor) -> list[int]:
    """Ids kept as label channels, in TimeCycle's order: background first, then the others in
    order of first appearance (row-major); an entry counts its pixels after the first sighting
    (background from its first pixel) and is kept when the count exceeds 10."""
    flat = ids.flatten().tolist()
    order, counts = [0], {0: 0}
    for v in flat:
        if v in counts:
            counts[v] += 1
        else:
            order.append(v)
            counts[v] = 0
    return [v for v in order if counts[v] > 10]


def first_labels(ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    keep = label_set(ids)
    onehot = torch.stack([(ids == v).double() for v in keep])
    return bilinear(onehot, grid)


def propagate(feats: torch.Tensor, labels0: torch.Tensor, video_len: int = 8, topk: int = 5, scale: float = math.sqrt(512.0), with_frame0: bool = False):
    """Returns the normalised label maps of real frames 1..T-1 (and of frame 0 first if `with_frame0`)."""
    T, D, h, w = feats.shape
    K = labels0.shape[0]
    N = h * w
    f = l2n(feats.double(), 1).reshape(T, D, N)
    store = {p: labels0.double().reshape(K, N) for p in range(video_len)}
    out, margin = [], INF
    for r in range(T):
        q = f[r]
        acc = torch.zeros(K, N, dtype=torch.float64)
        for p in context(r, video_len):
            k = f[max(0, p - video_len)]
            logits = scale * (k.T @ q)  # (keys, queries)
            margin = min(margin, topk_margin(logits, topk, 0))
            prob = torch.softmax(logits, dim=0)
            vals, idx = prob.topk(topk, dim=0)
            acc += (store[p][:, idx] * vals[None]).sum(1)
        pred = acc / video_len
        pred = pred - pred.min(1, keepdim=True).values
        pred = pred / pred.max(1, keepdim=True).values
        store[r + video_len] = pred
        out.append(pred.reshape(K, h, w))
    out = torch.stack(out)
    return (out if with_frame0 else out[1:]), margin


def masks(labels: torch.Tensor, size: tuple[int, int], keep: list[int]):
    """Grid labels over the label set `keep` (label_set of the first mask) -> (ids (H, W): the
    label of the argmax channel, as `np.array(lbl_set)[np.argmax(...)]`, test_davis.py:502-507;
    the scores; their margin)."""
    up = bilinear(labels, size)
    return torch.tensor(keep)[up.argmax(0)], up, argmax_margin(up)
