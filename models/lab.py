"""The Lab-pixel baseline: a feature extractor that needs no training (named "lab" wherever a
model is chosen, e.g. `densecorr.models.load("lab")`, `densecorr track --model lab`)."""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .colour import normalise_lab, rgb_to_lab


class LabEmbedding(torch.nn.Module):
    """Each feature cell is the mean CIE Lab colour of its stride x stride pixels (channels
    scaled to about [-1, 1]). No parameters, no training.

    `similarity = "euclidean"`: colours are compared by their distance (lightness included), not
    by the cosine of their Lab vectors; the propagator honours it (densecorr.propagation).
    `logit_scale = 20`: the logit scale under protocols on raw features (uvc, corrflow, mast),
    whose own scale (1) suits only their models' feature magnitudes.

    embed(frames (B, 3, H, W) in [0, 1]) -> (B, 3, H // stride, W // stride).
    """

    def __init__(self, stride: int = 8):
        super().__init__()
        if isinstance(stride, bool) or not isinstance(stride, numbers.Integral):
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)

    similarity = "euclidean"
    # under raw-feature protocols (scale 1, tuned to their models' large feature norms) the
    # colours' squared distances are scaled by 20, as the L2 protocols' temperature 0.05 does
    logit_scale = 20.0

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        lab = normalise_lab(rgb_to_lab(frames))
        return F.avg_pool2d(lab, self.stride) if self.stride > 1 else lab

    forward = embed
