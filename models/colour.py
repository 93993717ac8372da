"""Colour utilities shared by the models: RGB <-> CIE Lab, k-means, colour quantisation.

Conventions: RGB images are float tensors in [0, 1] with the channel dimension at -3,
i.e. (..., 3, H, W), sRGB with the D65 white point. Lab has L in [0, 100] and a, b roughly
in [-110, 110]. Networks get `normalise_lab(lab)`, which maps each channel to about [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754])
_DELTA = 6.0 / 29.0
# Per-channel scale and offset that map L in [0, 100], a/b in about [-110, 110] to ~[-1, 1].
_LAB_CENTRE = (50.0, 0.0, 0.0)
_LAB_SCALE = (50.0, 110.0, 110.0)


def _check_image(name: str, x: torch.Tensor) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name} must have 3 colour channels at dim -3, got shape {tuple(x.shape)}")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> CIE Lab (..., 3, H, W), L in [0, 100]. Differentiable."""
    _check_image("rgb", rgb)
    rgb = rgb.clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = _RGB_TO_XYZ.to(rgb)
    xyz = torch.einsum("ij,...jhw->...ihw", m, linear)
    xyz = xyz / _WHITE_D65.to(rgb).view(3, 1, 1)
    # The cube root has an infinite slope at 0: the linear branch covers small t, and the
    # clamp keeps the unused branch of torch.where finite (its gradient would be NaN).
    f = torch.where(
        xyz > _DELTA**3,
        xyz.clamp_min(_DELTA**3) ** (1.0 / 3.0),
        xyz / (3 * _DELTA**2) + 4.0 / 29.0,
    )
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (..., 3, H, W) -> sRGB (..., 3, H, W), clamped to [0, 1] (out-of-gamut colours clip)."""
    _check_image("lab", lab)
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = xyz * _WHITE_D65.to(lab).view(3, 1, 1)
    m_inv = torch.linalg.inv(_RGB_TO_XYZ.double()).to(lab)
    linear = torch.einsum("ij,...jhw->...ihw", m_inv, xyz).clamp(0.0, 1.0)
    rgb = torch.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055
    )
    return rgb.clamp(0.0, 1.0)


def normalise_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab (..., 3, H, W) -> each channel scaled to about [-1, 1] (network input and regression target)."""
    centre = lab.new_tensor(_LAB_CENTRE).view(3, 1, 1)
    scale = lab.new_tensor(_LAB_SCALE).view(3, 1, 1)
    return (lab - centre) / scale


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) -> the normalised Lab lightness (..., 1, H, W), in about [-1, 1]."""
    return normalise_lab(rgb_to_lab(rgb))[..., :1, :, :]


def kmeans(
    x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, tol: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, deterministic for a given `seed`.

    x: (N, C) points. Returns centroids (k, C) and the assignment (N,) int64. An empty
    cluster is re-seeded with the point farthest from its centroid.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (N, C), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    x = x.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[torch.randint(n, (1,), generator=gen).item()]
    dist2 = ((x - centroids[0]) ** 2).sum(1)
    for j in range(1, k):  # k-means++: sample proportionally to the squared distance
        probs = dist2 / dist2.sum() if dist2.sum() > 0 else torch.full_like(dist2, 1.0 / n)
        idx = torch.multinomial(probs.cpu(), 1, generator=gen).item()
        centroids[j] = x[idx]
        dist2 = torch.minimum(dist2, ((x - centroids[j]) ** 2).sum(1))
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        d = torch.cdist(x, centroids)
        dmin, assign = d.min(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        new = sums / counts.clamp_min(1).unsqueeze(1)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            far = dmin.argmax()
            new[j] = x[far]
            dmin[far] = 0
        shift = (new - centroids).pow(2).sum(1).max()
        centroids = new
        if shift <= tol:
            break
    assign = torch.cdist(x, centroids).argmin(1)
    return centroids, assign


def sample_ab(frames: torch.Tensor, pixels_per_frame: int = 4096, seed: int = 0) -> torch.Tensor:
    """Random a/b values of `frames` (..., 3, H, W) RGB in [0, 1]: (N * pixels_per_frame, 2)."""
    _check_image("frames", frames)
    ab = rgb_to_lab(frames.reshape(-1, *frames.shape[-3:]))[:, 1:]  # (N, 2, H, W)
    ab = ab.flatten(2).transpose(1, 2)  # (N, HW, 2)
    hw = ab.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = min(pixels_per_frame, hw)
    idx = torch.stack([torch.randperm(hw, generator=gen)[:count] for _ in range(ab.shape[0])])
    return torch.gather(ab, 1, idx.to(ab.device).unsqueeze(-1).expand(-1, -1, 2)).reshape(-1, 2)


def fit_colour_clusters(
    frames: torch.Tensor, k: int = 16, pixels_per_frame: int = 4096, iters: int = 50, seed: int = 0
) -> torch.Tensor:
    """k-means centroids (k, 2) of the Lab a/b values of `frames` (..., 3, H, W), RGB in [0, 1]."""
    return kmeans(sample_ab(frames, pixels_per_frame, seed), k, iters=iters, seed=seed)[0]


# Default a/b centroids (Lab units), used until a model's quantiser is fitted: the output of
# `fit_colour_clusters(frames, k=16, pixels_per_frame=4096, iters=100, seed=0)` on every 5th
# frame of each sequence of DAVIS-2016 train (shared/data/davis2016_train_256p: 389 frames,
# 256 x 455), sorted by angle around the grey axis (about 90 s on 2 CPU cores). Natural
# video is mostly desaturated, so most clusters sit near the grey axis.
DEFAULT_AB_CENTROIDS = torch.tensor(
    [
        [-15.5056, -16.5220],
        [-3.8400, -5.4492],
        [0.1759, -15.9524],
        [5.9331, -35.3266],
        [3.7840, -5.8045],
        [0.8772, -0.2905],
        [15.6559, 14.0468],
        [28.6065, 32.0976],
        [3.6412, 4.8317],
        [2.6369, 13.6267],
        [2.7444, 27.8968],
        [-18.2400, 46.1340],
        [-7.2751, 18.3211],
        [-13.5010, 32.3864],
        [-17.2197, 18.2370],
        [-6.3361, 6.0846],
    ]
)


class ColourQuantiser(nn.Module):
    """Maps Lab a/b to the nearest of k colour clusters (Vondrick et al. 2018 use k = 16).

    The centroids (k, 2) are a buffer, so a fitted quantiser checkpoints with its model.
    Until `fit` is called they are the fixed `DEFAULT_AB_CENTROIDS` fit (k = 16) or, for
    other k, the first k points of a 2-D grid over the a/b plane (documented, deterministic).
    """

    def __init__(self, k: int = 16):
        super().__init__()
        if k < 2:
            raise ValueError(f"k must be >= 2, got {k}")
        if k == DEFAULT_AB_CENTROIDS.shape[0]:
            init = DEFAULT_AB_CENTROIDS.clone()
        else:
            side = int(torch.ceil(torch.tensor(k**0.5)).item())
            grid = torch.linspace(-60.0, 60.0, side)
            init = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)[:k]
        self.k = k
        self.register_buffer("centroids", init.float())

    @torch.no_grad()
    def fit(self, frames: torch.Tensor, pixels_per_frame: int = 4096, iters: int = 50, seed: int = 0):
        """Fit the centroids to the a/b values of `frames` (..., 3, H, W), RGB in [0, 1]."""
        centroids = fit_colour_clusters(frames, self.k, pixels_per_frame, iters, seed)
        self.centroids.copy_(centroids.to(self.centroids))
        return self

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        """ab: (..., 2, H, W) Lab a/b -> cluster index (..., H, W) int64."""
        if ab.dim() < 3 or ab.shape[-3] != 2:
            raise ValueError(f"ab must be (..., 2, H, W), got shape {tuple(ab.shape)}")
        points = ab.movedim(-3, -1)  # (..., H, W, 2)
        d = ((points.unsqueeze(-2) - self.centroids.to(ab)) ** 2).sum(-1)  # (..., H, W, k)
        return d.argmin(-1)

    def one_hot(self, ab: torch.Tensor) -> torch.Tensor:
        """ab: (..., 2, H, W) -> one-hot cluster maps (..., k, H, W), dtype of `ab`."""
        return F.one_hot(self(ab), self.k).movedim(-1, -3).to(ab.dtype)
