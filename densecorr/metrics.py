"""Evaluation metrics: DAVIS region (J) and boundary (F) measures, their statistics, and PCK.

J and F follow the official DAVIS evaluation (davis2017-evaluation, `metrics.py`):
- J = |pred & gt| / |pred | gt|, 1 when both are empty.
- F: boundaries are extracted with the DAVIS `seg2bmap` rule (a pixel is on the boundary when
  it differs from its right, lower or lower-right neighbour; last row/column handled as
  there); each boundary is dilated by a disk of radius `ceil(0.008 * image diagonal)` pixels
  (or `bound_th` pixels when `bound_th >= 1`); precision = fraction of predicted boundary
  pixels within the dilated ground-truth boundary, recall the converse, F = 2PR / (P + R).
  Empty boundaries: both empty F = 1; one empty F = 0.
- Statistics per object over frames: mean, recall (fraction of frames > 0.5) and decay
  (mean of the first quarter of frames minus mean of the last quarter, DAVIS binning).
  Which frames are scored is the caller's choice (densecorr.evaluation scores those of the
  official semi-supervised evaluation: every annotated frame but the first and the last).
PCK: fraction of visible joints predicted within alpha x max(bbox width, bbox height) of the
ground truth, the box being that of the frame's visible ground-truth joints.

Everything here is numpy on (H, W) masks; no dependency beyond numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BOUNDARY_THRESHOLD = 0.008  # DAVIS: fraction of the image diagonal


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J of two binary masks (H, W); 1.0 when both are empty."""
    pred, gt = _binary_pair(pred, gt)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """The DAVIS boundary map (H, W) bool of a binary mask (the official `seg2bmap`, same size).

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour;
    in the last row only the east neighbour counts, in the last column only the south one,
    and the bottom-right pixel never does.
    """
    seg = np.asarray(mask).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """The dilation radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def dilate_disk(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of `b` (H, W) by the disk {dy^2 + dx^2 <= radius^2} (skimage `disk`).

    Exact and O(radius * H * W): the disk is the union of horizontal segments of half-width
    floor(sqrt(r^2 - dy^2)) at each row offset dy; each segment's dilation is a windowed sum
    along x (a cumulative sum), then shifted by dy.
    """
    b = np.asarray(b, dtype=bool)
    if radius <= 0 or not b.any():
        return b.copy()
    h, w = b.shape
    # Only the bounding box of the set pixels, grown by the radius, can change.
    ys, xs = np.nonzero(b.any(1))[0], np.nonzero(b.any(0))[0]
    y0, y1 = max(ys[0] - radius, 0), min(ys[-1] + radius + 1, h)
    x0, x1 = max(xs[0] - radius, 0), min(xs[-1] + radius + 1, w)
    crop = b[y0:y1, x0:x1]
    ch, cw = crop.shape
    # csum[y, radius + x] = number of set pixels in row y at columns < x (zero-padded left,
    # edge-padded right), so that every window sum below is a plain slice.
    csum = np.zeros((ch, cw + 2 * radius + 2), dtype=np.int32)
    np.cumsum(crop, axis=1, out=csum[:, radius + 1 : radius + 1 + cw])
    csum[:, radius + 1 + cw :] = csum[:, radius + cw : radius + cw + 1]
    res = np.zeros_like(crop)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        # any set pixel within columns [x - half, x + half] of the same row
        row_dil = csum[:, radius + half + 1 : radius + half + 1 + cw] > csum[:, radius - half : radius - half + cw]
        # res[y] |= row_dil[y + dy]  (a pixel at row y + dy reaches row y)
        if dy >= 0:
            res[: ch - dy] |= row_dil[dy:]
        else:
            res[-dy:] |= row_dil[: ch + dy]
    out = np.zeros_like(b)
    out[y0:y1, x0:x1] = res
    return out


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """Boundary F-measure of two binary masks (H, W), DAVIS definition (see module docstring)."""
    pred, gt = _binary_pair(pred, gt)
    radius = boundary_radius(pred.shape, bound_th)
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0
    precision = float((fg_b & dilate_disk(gt_b, radius)).sum()) / n_fg
    recall = float((gt_b & dilate_disk(fg_b, radius)).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values) -> dict:
    """DAVIS per-object statistics of per-frame scores: {"mean", "recall", "decay"} (NaNs ignored)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    recall = float(np.nanmean(v > 0.5))
    n_bins = 4
    ids = (np.round(np.linspace(1, len(v), n_bins + 1) + 1e-10) - 1).astype(int)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(n_bins)]
    with np.errstate(all="ignore"):
        first = np.nanmean(bins[0]) if np.isfinite(bins[0]).any() else np.nan
        last = np.nanmean(bins[3]) if np.isfinite(bins[3]).any() else np.nan
    return {"mean": mean, "recall": recall, "decay": float(first - last)}


@dataclass
class SequenceScores:
    """Per-frame J and F of each object of one sequence, for the frames `add`ed, in order
    (densecorr.evaluation adds the officially scored ones: not the first, not the last).

    `j[obj]`, `f[obj]`: lists of per-frame scores for object id `obj`.
    """

    name: str
    objects: list
    j: dict = field(default_factory=dict)
    f: dict = field(default_factory=dict)
    frames: list = field(default_factory=list)

    def add(self, frame: str, pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> None:
        """Score one frame: `pred`, `gt` are id masks (H, W) of the same size."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} of frame {frame} differ in size")
        self.frames.append(frame)
        for obj in self.objects:
            p, g = pred == obj, gt == obj
            self.j.setdefault(obj, []).append(iou(p, g))
            self.f.setdefault(obj, []).append(boundary_f(p, g, bound_th))

    def summary(self) -> dict:
        """{"J": {mean, recall, decay}, "F": {...}, "J&F": mean} averaged over objects."""
        js = [statistics(self.j.get(o, [])) for o in self.objects]
        fs = [statistics(self.f.get(o, [])) for o in self.objects]
        out = {"sequence": self.name, "objects": len(self.objects), "frames": len(self.frames)}
        for key, stats in (("J", js), ("F", fs)):
            for stat in ("mean", "recall", "decay"):
                out[f"{key}_{stat}"] = _nanmean([s[stat] for s in stats])
        out["J&F"] = (out["J_mean"] + out["F_mean"]) / 2
        return out


def overall(sequences: list[SequenceScores]) -> dict:
    """The DAVIS overall row: statistics averaged over all objects of all sequences."""
    per_object = {"J": [], "F": []}
    for seq in sequences:
        for o in seq.objects:
            per_object["J"].append(statistics(seq.j.get(o, [])))
            per_object["F"].append(statistics(seq.f.get(o, [])))
    out = {"sequence": "mean", "objects": sum(len(s.objects) for s in sequences), "frames": sum(len(s.frames) for s in sequences)}
    for key in ("J", "F"):
        for stat in ("mean", "recall", "decay"):
            out[f"{key}_{stat}"] = _nanmean([s[stat] for s in per_object[key]])
    out["J&F"] = (out["J_mean"] + out["F_mean"]) / 2
    return out


def pck(pred_xy: np.ndarray, gt_xy: np.ndarray, visible: np.ndarray, alpha: float, size: float | None = None) -> tuple[int, int]:
    """(correct, total) joints: visible joints with ||pred - gt|| <= alpha * size.

    Args:
        pred_xy, gt_xy: (J, 2) pixel coordinates (x, y).
        visible: (J,) bool, the joints that count.
        alpha: e.g. 0.1 or 0.2.
        size: the reference length; default max(width, height) of the box around the visible
            ground-truth joints.
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    gt_xy = np.asarray(gt_xy, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if pred_xy.shape != gt_xy.shape or pred_xy.ndim != 2 or pred_xy.shape[1] != 2 or visible.shape != pred_xy.shape[:1]:
        raise ValueError(f"pck needs pred_xy, gt_xy (J, 2) and visible (J,), got {pred_xy.shape}, {gt_xy.shape}, {visible.shape}")
    n = int(visible.sum())
    if n == 0:
        return 0, 0
    if size is None:
        pts = gt_xy[visible]
        size = float((pts.max(0) - pts.min(0)).max())
    dist = np.linalg.norm(pred_xy[visible] - gt_xy[visible], axis=1)
    return int((dist <= alpha * size).sum()), n


def _binary_pair(pred, gt):
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be (H, W) masks of the same size, got {pred.shape} and {gt.shape}")
    return pred, gt


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).any():
        return float("nan")
    return float(np.nanmean(v))


__all__ = ["iou", "boundary_f", "seg2bmap", "dilate_disk", "boundary_radius", "statistics", "SequenceScores", "overall", "pck"]
