"""Labels on the feature grid: id masks <-> one-hot channels, keypoints <-> heat maps.

The first frame's id mask becomes one-hot channels at full resolution *before* it is
area-averaged to the feature grid (ids are never interpolated as numbers); predictions are
upsampled bilinearly to the frame size, then argmax. Keypoints become Gaussian heat maps (one
channel per joint, on the feature grid); a joint's prediction is the argmax of its upsampled
map. See docs/design.md ("Evaluation protocols").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from densecorr.data.io import DataError


def one_hot(mask: np.ndarray | torch.Tensor, ids: Sequence[int], unlisted: str = "background") -> torch.Tensor:
    """Id mask (H, W) -> float (K, H, W), channel 0 = background, channel c = ids[c - 1].

    unlisted: pixels whose id is not in `ids` count as "background", or are in "none" of the
    channels (all zero: TimeCycle's pixels of a label it dropped)."""
    if unlisted not in ("background", "none"):
        raise DataError(f"unlisted must be 'background' or 'none', got {unlisted!r}")
    m = torch.as_tensor(np.asarray(mask).astype(np.int64, copy=False))
    out = torch.zeros(len(ids) + 1, *m.shape)
    out[0] = 1 if unlisted == "background" else (m == 0).float()
    for c, i in enumerate(ids, start=1):
        sel = m == i
        out[c][sel] = 1
        out[0][sel] = 0
    return out


def heatmaps(xy: np.ndarray, frame_size: tuple[int, int], grid: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """Gaussian heat maps (J, h, w) on the feature grid for keypoints `xy` (J, 2) in frame pixels.

    Args:
        xy: (x, y) in pixels of a frame of `frame_size` (H, W), pixel centres at integers.
        grid: (h, w), the feature grid covering the frame.
        sigma: standard deviation in feature cells.
    """
    H, W = frame_size
    h, w = grid
    xy = torch.as_tensor(np.asarray(xy), dtype=torch.float32)
    u = (xy[:, 0] + 0.5) * w / W - 0.5  # feature-cell coordinates of the keypoints
    v = (xy[:, 1] + 0.5) * h / H - 0.5
    gx = torch.arange(w, dtype=torch.float32)
    gy = torch.arange(h, dtype=torch.float32)
    d2 = (gy[None, :, None] - v[:, None, None]) ** 2 + (gx[None, None, :] - u[:, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def to_grid(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Full-resolution label channels (K, H, W) -> their area averages on the feature grid (K, h, w)."""
    return F.interpolate(labels[None], size=grid, mode="area")[0]


def upsample(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label channels (K, h, w) -> (K, H, W), bilinear (align_corners=False)."""
    return F.interpolate(labels[None].float(), size=size, mode="bilinear", align_corners=False)[0]


FIRST_RULES = ("area", "bilinear", "nearest", "ids_bilinear", "subsample")
OUTPUT_RULES = ("bilinear", "minmax")
LABEL_SETS = ("all", "timecycle")


def label_channels(mask: np.ndarray, ids: Sequence[int], rule: str = "all") -> list[int]:
    """The object ids (of `ids`) that get a label channel, in channel order (channel 0, the
    background, is not listed).

    rule:
        "all": every id of `ids`, in the given order.
        "timecycle": TimeCycle's label set (test_davis.py:287-318): the ids in order of first
            appearance in the mask (row-major), each kept only when it has more than 10 pixels
            besides its first one; the pixels of a dropped id then belong to no channel (see
            `first_labels`), so a tiny object is not tracked at all.
    """
    if rule == "all":
        return list(ids)
    if rule != "timecycle":
        raise DataError(f"unknown label set {rule!r}; choose one of {', '.join(LABEL_SETS)}")
    values, first, counts = np.unique(np.asarray(mask).ravel(), return_index=True, return_counts=True)
    seen = {int(v): (int(i), int(c) - 1) for v, i, c in zip(values, first, counts)}  # the first pixel is not counted
    present = [i for i in ids if i in seen]
    return [i for i in sorted(present, key=lambda i: seen[i][0]) if seen[i][1] > 10]


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel of a PIL NEAREST resize from n_in to n_out pixels:
    floor((x + 0.5) * n_in / n_out)."""
    return torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out).long().clamp_(0, n_in - 1)


def first_labels(mask: np.ndarray, ids: Sequence[int], grid: tuple[int, int], protocol) -> tuple[list[int], torch.Tensor]:
    """The first frame's id mask (H, W) with object ids `ids` -> (the ids of channels 1.., their
    label channels (K, h, w) on the feature grid) under `protocol`'s label set and `first` rule."""
    channels = label_channels(mask, ids, protocol.label_set)
    unlisted = "none" if protocol.label_set == "timecycle" else "background"
    return channels, first_grid_labels(mask, channels, grid, protocol.first, unlisted)


def first_grid_labels(mask: np.ndarray, ids: Sequence[int], grid: tuple[int, int], rule: str = "area", unlisted: str = "background") -> torch.Tensor:
    """The first frame's id mask (H, W) -> label channels (len(ids) + 1, h, w) on the feature grid.

    unlisted: where the pixels of ids not in `ids` go (`one_hot`; the "ids_bilinear" rule
    counts them as background).

    rule:
        "area": one-hot at full resolution, then the area average of each cell.
        "bilinear": one-hot at full resolution, then bilinear without antialiasing (half-pixel
            centres: at stride 8, the mean of the 2x2 pixels at each cell's centre; cv2
            INTER_LINEAR, videowalk and TimeCycle).
        "nearest": the id at pixel floor((x + 0.5) * W / w) of each cell, one-hot (PIL NEAREST,
            DINO and UVC).
        "subsample": the id at the top-left pixel floor(x * W / w) of each cell, one-hot (MAST's
            `[::4, ::4]`).
        "ids_bilinear": the channel numbers (0 background, c for ids[c - 1]) interpolated
            bilinearly *as numbers*, truncated, one-hot (CorrFlow's `prep`: between objects 1 and
            3 this yields object 2; DAVIS ids 1..K are their own channel numbers).
    """
    if rule == "area":
        return to_grid(one_hot(mask, ids, unlisted), grid)
    if rule == "bilinear":
        return F.interpolate(one_hot(mask, ids, unlisted)[None], size=grid, mode="bilinear", align_corners=False, antialias=False)[0]
    if rule == "nearest":
        m = np.asarray(mask)
        small = m[nearest_index(m.shape[0], grid[0]).numpy()][:, nearest_index(m.shape[1], grid[1]).numpy()]
        return one_hot(small, ids, unlisted)
    if rule == "subsample":
        m = np.asarray(mask)
        rows = (np.arange(grid[0]) * m.shape[0]) // grid[0]
        cols = (np.arange(grid[1]) * m.shape[1]) // grid[1]
        return one_hot(m[rows][:, cols], ids, unlisted)
    if rule == "ids_bilinear":
        m = np.asarray(mask).astype(np.int64, copy=False)
        index = np.zeros(m.shape, np.float64)  # channel numbers: 0 background, c for ids[c - 1]
        for c, i in enumerate(ids, start=1):
            index[m == i] = c
        small = F.interpolate(torch.from_numpy(index)[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
        channels = small.long().clamp_(0, len(ids))  # truncated, as CorrFlow's .long()
        return F.one_hot(channels, len(ids) + 1).permute(2, 0, 1).float()
    raise DataError(f"unknown first-label rule {rule!r}; choose one of {', '.join(FIRST_RULES)}")


def mask_dtype(ids: Sequence[int]) -> np.dtype:
    """The narrowest mask dtype that holds every id: uint8 up to 255, else uint16 (up to 65535)."""
    top = max(ids, default=0)
    if top > 65535:
        raise DataError(f"object id {top} is too large: masks hold ids up to 65535")
    return np.dtype(np.uint8) if top <= 255 else np.dtype(np.uint16)


def labels_to_mask(labels: torch.Tensor, ids: Sequence[int], size: tuple[int, int], rule: str = "bilinear", stride: int | None = None) -> np.ndarray:
    """Soft labels (K, h, w) (channel 0 background) -> id mask (H, W), mapped to ids. uint8 when
    every id is <= 255, else uint16 (ids are kept, never wrapped).

    rule:
        "bilinear": upsample bilinearly to (H, W), argmax.
        "minmax": upsample bilinearly by `stride` (to (h * stride, w * stride)), min-max
            normalise each channel whose maximum is positive ((x - min) / max(x - min)), argmax,
            then PIL NEAREST to (H, W) (DINO's and UVC's output).
    """
    dtype = mask_dtype(ids)
    lut = np.asarray([0] + list(ids), dtype=dtype)
    if rule == "bilinear":
        return lut[upsample(labels, size).argmax(0).numpy()]
    if rule != "minmax":
        raise DataError(f"unknown output rule {rule!r}; choose one of {', '.join(OUTPUT_RULES)}")
    h, w = labels.shape[-2:]
    up = upsample(labels, (h * stride, w * stride))
    low = up.flatten(1).min(1).values[:, None, None]
    high = up.flatten(1).max(1).values[:, None, None]
    span = (up - low).flatten(1).max(1).values[:, None, None]
    normed = torch.where(high > 0, (up - low) / span, up)
    seg = normed.argmax(0)
    seg = seg[nearest_index(seg.shape[0], size[0])][:, nearest_index(seg.shape[1], size[1])]
    return lut[seg.numpy()]


def heatmap_peaks(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Heat maps (J, h, w) -> (J, 2) (x, y) pixel positions of each upsampled map's maximum."""
    up = upsample(maps, size)
    flat = up.flatten(1).argmax(1)
    W = size[1]
    return torch.stack([flat % W, flat // W], 1).double().numpy()


def check_first_mask(mask: np.ndarray, frame_size: tuple[int, int] | None = None) -> list[int]:
    """The object ids of a first-frame mask; DataError if it is empty or not of `frame_size` (H, W)."""
    from densecorr.data.davis import object_ids

    if frame_size is not None and tuple(mask.shape) != tuple(frame_size[:2]):
        raise DataError(f"the first-frame mask is {mask.shape[1]}x{mask.shape[0]} but the frames are {frame_size[1]}x{frame_size[0]}; give a mask of the frames' size")
    ids = object_ids(mask)
    if not ids:
        raise DataError("the first-frame mask is empty (all background): mark at least one object (pixel value = object id)")
    return ids


__all__ = ["FIRST_RULES", "OUTPUT_RULES", "LABEL_SETS", "label_channels", "first_labels", "nearest_index", "first_grid_labels", "one_hot", "heatmaps", "to_grid", "upsample", "mask_dtype", "labels_to_mask", "heatmap_peaks", "check_first_mask"]
