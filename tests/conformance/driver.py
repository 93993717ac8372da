"""Drive densecorr's propagation with given features: the one place that knows its API.

A `FixedFeatures` "model" (the embed()/stride protocol of densecorr.propagation) returns
precomputed features: frame t is the constant image of value t, and embed() looks t up. The
frames are exact multiples of the stride, so the Propagator does not resize them.
"""
from __future__ import annotations

import numpy as np
import torch


class FixedFeatures(torch.nn.Module):
    def __init__(self, feats: torch.Tensor, stride: int):
        super().__init__()
        self.feats = feats.float()
        self.stride = stride

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = int(round(float(x[0, 0, 0, 0]) * 255))
        return self.feats[t:t + 1].to(x.device)


def frames(T: int, h: int, w: int, stride: int) -> list[np.ndarray]:
    return [np.full((h * stride, w * stride, 3), t, np.uint8) for t in range(T)]


def propagator(protocol, feats: torch.Tensor, stride: int, **overrides):
    from densecorr.propagation import Propagator, get_protocol

    return Propagator(FixedFeatures(feats, stride), get_protocol(protocol, **overrides))


def labels(protocol, feats: torch.Tensor, labels0: torch.Tensor, stride: int, **overrides) -> torch.Tensor:
    """densecorr's label maps (T-1, K, h, w) of frames 1.. given features (T, D, h, w) and the
    first frame's grid labels (K, h, w)."""
    T, _, h, w = feats.shape
    prop = propagator(protocol, feats, stride, **overrides)
    out = [item[-1] for item in prop.run(frames(T, h, w, stride), lambda size, grid: labels0.float())]
    return torch.stack(out).double()


def masks(protocol, feats: torch.Tensor, first_mask: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """densecorr's output id masks of frames 1.. for a full-resolution first mask (H, W)."""
    from densecorr.propagation import propagate_mask

    T, _, h, w = feats.shape
    prop = propagator(protocol, feats, stride)
    return [torch.as_tensor(np.asarray(m).astype(np.int64)) for _, _, m in propagate_mask(prop, frames(T, h, w, stride), first_mask.numpy().astype(np.uint8))]


def first_labels(protocol, first_mask: torch.Tensor, ids: list[int], grid: tuple[int, int]) -> torch.Tensor:
    """How densecorr brings the first mask (H, W) to the feature grid under `protocol` (its
    label set and `first` rule, densecorr.propagation.first_labels)."""
    from densecorr.propagation import first_labels, get_protocol

    proto = get_protocol(protocol)  # an unknown protocol is an error here too
    return first_labels(first_mask.numpy(), ids, grid, proto)[1].double()
