"""The affinity operations a model calls: densecorr's ops, or the naive textbook computation.

Every model does its attention through one `Affinity` object (`model.ops`), built from its
config: `affinity="densecorr"` calls the public densecorr ops with the config's `backend`
(None = automatic choice); `affinity="naive"` runs what research code usually writes --
`bmm` + `softmax` + `bmm` for global attention, `F.unfold` windows + `softmax` for local
attention -- materialising the full affinity. Both compute the same function, so a model's
loss and gradients agree between them to rounding (tests/test_models.py checks it) and the
benchmark harness can compare their time and memory on the same model.

The naive functions follow densecorr's conventions (DESIGN section 2): scale multiplies the
logits; local windows are ordered references-outer, then row-major offsets; boundary "mask"
excludes outside positions from the softmax, "zero" gives them logit 0 and value 0. They
support square windows and the "mask"/"zero" boundaries, which is what the models use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("densecorr", "naive")


# ----------------------------------------------------------------------------- naive ops
def naive_global_affinity(q: torch.Tensor, k: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax over keys of scale * q k^T. q: (B, N, D), k: (B, M, D) -> (B, N, M)."""
    return torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)


def naive_global_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, topk: int | None = None
) -> torch.Tensor:
    """q: (B, N, D), k: (B, M, D), v: (B, M, C) -> (B, N, C), through the (B, N, M) matrix."""
    logits = torch.bmm(q, k.transpose(1, 2)) * scale
    if topk is not None:
        top = logits.topk(topk, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.bmm(torch.softmax(logits, dim=-1), v)


def _as_refs(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 4:
        return x.unsqueeze(1)
    if x.dim() == 5:
        return x
    raise ValueError(f"{name} must be (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}")


def _windows(x: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, P, H, W): each pixel's (2r+1)^2 window, zero outside the image."""
    b, c, h, w = x.shape
    size = 2 * radius + 1
    cols = F.unfold(x, size, dilation=dilation, padding=radius * dilation)
    return cols.view(b, c, size * size, h, w)


def _check_naive(boundary: str, window: str) -> None:
    if boundary not in ("mask", "zero"):
        raise ValueError(f"the naive local ops support boundary 'mask' or 'zero', got {boundary!r}")
    if window != "square":
        raise ValueError(f"the naive local ops support window='square', got {window!r}")


def naive_local_affinity(
    q: torch.Tensor,
    k: torch.Tensor,
    radius: int,
    dilation: int = 1,
    scale: float = 1.0,
    normalize: bool = True,
    boundary: str = "mask",
    window: str = "square",
) -> torch.Tensor:
    """q: (B, D, H, W), k: (B, [T,] D, H, W) -> (B, T*P, H, W) window logits (softmax if normalize)."""
    _check_naive(boundary, window)
    k = _as_refs(k, "k")
    h, w = q.shape[-2:]
    logits = [(q.unsqueeze(2) * _windows(k[:, t], radius, dilation)).sum(1) * scale for t in range(k.shape[1])]
    logits = torch.cat(logits, dim=1)
    if boundary == "mask":
        inside = _windows(q.new_ones(1, 1, h, w), radius, dilation)[:, 0] > 0  # (1, P, H, W)
        logits = logits.masked_fill(~inside.repeat(1, k.shape[1], 1, 1), float("-inf"))
    return torch.softmax(logits, dim=1) if normalize else logits


def naive_local_copy(
    attn: torch.Tensor,
    v: torch.Tensor,
    radius: int,
    dilation: int = 1,
    boundary: str = "mask",
    window: str = "square",
) -> torch.Tensor:
    """attn: (B, T*P, H, W), v: (B, [T,] C, H, W) -> (B, C, H, W) = sum over windows attn * v."""
    _check_naive(boundary, window)
    v = _as_refs(v, "v")
    p = (2 * radius + 1) ** 2
    out = 0
    for t in range(v.shape[1]):
        cols = _windows(v[:, t], radius, dilation)  # (B, C, P, H, W); zero outside the image
        out = out + (attn[:, t * p : (t + 1) * p].unsqueeze(1) * cols).sum(2)
    return out


def naive_local_attention(
    q, k, v, radius, dilation=1, scale=1.0, boundary="mask", window="square", topk=None
) -> torch.Tensor:
    """q: (B, D, H, W), k: (B, [T,] D, H, W), v: (B, [T,] C, H, W) -> (B, C, H, W)."""
    attn = naive_local_affinity(q, k, radius, dilation, scale, False, boundary, window)
    if topk is not None:
        top = attn.topk(topk, dim=1).indices
        keep = torch.zeros_like(attn, dtype=torch.bool).scatter_(1, top, True)
        attn = attn.masked_fill(~keep, float("-inf"))
    return naive_local_copy(torch.softmax(attn, dim=1), v, radius, dilation, boundary, window)


def cell_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(H * W, 2) the (x, y) of each cell of an H x W map in row-major order, in cell units."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=like.dtype, device=like.device),
        torch.arange(w, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def naive_project_coords(q: torch.Tensor, k: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """q: (B, N, D) or (B, D, Hq, Wq); k: (B, D, H, W) -> (B, N, 2) expected (x, y) in k's cells."""
    if q.dim() == 4:
        q = q.flatten(2).transpose(1, 2)
    h, w = k.shape[-2:]
    attn = naive_global_affinity(q, k.flatten(2).transpose(1, 2), scale)
    return attn @ cell_grid(h, w, k)


# ----------------------------------------------------------------------------- the switch
class Affinity:
    """The affinity ops of one model: `mode` "densecorr" (with `backend`) or "naive".

    Methods have the signatures of the densecorr ops (without `backend`, which is fixed here).
    """

    def __init__(self, mode: str = "densecorr", backend: str | None = None):
        if mode not in MODES:
            raise ValueError(f"affinity must be one of {MODES}, got {mode!r}")
        if mode == "naive" and backend not in (None, "auto"):
            raise ValueError(f"backend={backend!r} applies to affinity='densecorr' only, not 'naive'")
        self.mode = mode
        self.backend = backend

    def __repr__(self) -> str:
        return f"Affinity(mode={self.mode!r}, backend={self.backend!r})"

    def global_attention(self, q, k, v, scale=1.0, topk=None):
        """q: (B, N, D), k: (B, M, D), v: (B, M, C) -> (B, N, C)."""
        if self.mode == "naive":
            return naive_global_attention(q, k, v, scale, topk)
        import densecorr

        return densecorr.global_attention(q, k, v, scale=scale, topk=topk, backend=self.backend)

    def global_affinity(self, q, k, scale=1.0):
        """q: (B, N, D), k: (B, M, D) -> (B, N, M), softmax over the M keys."""
        if self.mode == "naive":
            return naive_global_affinity(q, k, scale)
        import densecorr

        return densecorr.global_affinity(q, k, scale=scale)

    def local_affinity(self, q, k, radius, dilation=1, scale=1.0, normalize=True, boundary="mask", window="square"):
        """q: (B, D, H, W), k: (B, [T,] D, H, W) -> (B, T*P, H, W)."""
        if self.mode == "naive":
            return naive_local_affinity(q, k, radius, dilation, scale, normalize, boundary, window)
        import densecorr

        return densecorr.local_affinity(
            q, k, radius, dilation=dilation, scale=scale, normalize=normalize,
            boundary=boundary, window=window, backend=self.backend,
        )

    def local_copy(self, attn, v, radius, dilation=1, boundary="mask", window="square"):
        """attn: (B, T*P, H, W), v: (B, [T,] C, H, W) -> (B, C, H, W)."""
        if self.mode == "naive":
            return naive_local_copy(attn, v, radius, dilation, boundary, window)
        import densecorr

        return densecorr.local_copy(
            attn, v, radius, dilation=dilation, boundary=boundary, window=window, backend=self.backend
        )

    def local_attention(self, q, k, v, radius, dilation=1, scale=1.0, boundary="mask", window="square", topk=None):
        """q: (B, D, H, W), k: (B, [T,] D, H, W), v: (B, [T,] C, H, W) -> (B, C, H, W)."""
        if self.mode == "naive":
            return naive_local_attention(q, k, v, radius, dilation, scale, boundary, window, topk)
        import densecorr

        return densecorr.local_attention(
            q, k, v, radius, dilation=dilation, scale=scale, boundary=boundary,
            window=window, topk=topk, backend=self.backend,
        )

    def project_coords(self, q, k, scale=1.0):
        """q: (B, N, D) or (B, D, Hq, Wq), k: (B, D, H, W) -> (B, N, 2) (x, y) in k's cells."""
        if self.mode == "naive":
            return naive_project_coords(q, k, scale)
        import densecorr

        return densecorr.project_coords(q, k, scale=scale, backend=self.backend)

    def bbox_from_coords(self, coords, weights=None):
        """coords: (B, N, 2) -> centre (B, 2), size (B, 2) (2 x mean absolute deviation).

        Not an affinity: both modes use densecorr's op (it materialises nothing).
        """
        import densecorr

        return densecorr.bbox_from_coords(coords, weights)
