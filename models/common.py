"""Small pieces several models share: input normalisation, augmentations, resampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ImageNet statistics: the usual input normalisation of ResNets on RGB.
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)


def normalise_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """RGB (..., 3, H, W) in [0, 1] -> zero-mean, unit-variance channels (ImageNet statistics)."""
    mean = rgb.new_tensor(_RGB_MEAN).view(3, 1, 1)
    std = rgb.new_tensor(_RGB_STD).view(3, 1, 1)
    return (rgb - mean) / std


def area_downsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H / stride, W / stride), the mean over each stride x stride cell."""
    return x if stride == 1 else F.avg_pool2d(x, stride, stride, ceil_mode=True)


def channel_dropout(x: torch.Tensor, p: float, max_drop: int = 2) -> torch.Tensor:
    """Zero 1..max_drop random channels of each image (or clip) with probability p, rescale the rest.

    x: (B, C, H, W) images, or (B, T, C, H, W) clips whose T frames lose the same channels (as
    CorrFlow's `dropout2d`: "drop same layers for all images"). A dropped image keeps C - n
    channels, multiplied by C / (C - n) so the input's overall magnitude is unchanged
    (CorrFlow's information bottleneck; MAST uses n = 1).
    """
    if x.dim() not in (4, 5):
        raise ValueError(f"channel_dropout takes (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}")
    b, c = x.shape[0], x.shape[-3]
    if not 1 <= max_drop < c:
        raise ValueError(f"max_drop must be in [1, {c - 1}] for {c} channels, got {max_drop}")
    apply = torch.rand(b, device=x.device) < p
    n = torch.randint(1, max_drop + 1, (b,), device=x.device) * apply
    # Rank channels by random keys; the n lowest-ranked are dropped.
    ranks = torch.rand(b, c, device=x.device).argsort(1).argsort(1)
    keep = (ranks >= n.unsqueeze(1)).to(x.dtype)
    gain = c / (c - n).to(x.dtype)
    scale = (keep * gain.unsqueeze(1)).view(b, *(1,) * (x.dim() - 4), c, 1, 1)
    return x * scale


def brightness_contrast_jitter(rgb: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """Random brightness (additive, +-brightness) and contrast (x [1-c, 1+c] about the mean).

    rgb: (B, 3, H, W) in [0, 1] -> same, clamped to [0, 1]; one draw per image.
    """
    b = rgb.shape[0]
    shift = (torch.rand(b, 1, 1, 1, device=rgb.device, dtype=rgb.dtype) * 2 - 1) * brightness
    gain = 1 + (torch.rand(b, 1, 1, 1, device=rgb.device, dtype=rgb.dtype) * 2 - 1) * contrast
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    return ((rgb - mean) * gain + mean + shift).clamp(0.0, 1.0)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """Image layout (B, C, H, W) -> token layout (B, H*W, C), row-major."""
    return x.flatten(2).transpose(1, 2)


def image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Token layout (B, H*W, C) -> image layout (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
