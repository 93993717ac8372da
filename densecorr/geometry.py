"""Window geometry of the local ops: the one copy (docs/design.md, "The ops").

Everything that says which key pixel a window position of a query pixel names lives here,
and ops, reference, Triton and tests import it:

- the window grid of radius r is (2r+1) x (2r+1) cells (i, j), i, j in [0, 2r], offset
  (dy, dx) = (i - r, j - r); `window="circle"` keeps the cells with dy^2 + dx^2 <= r^2
  (`in_window`, the one membership rule);
- window order: positions p run over the kept cells row-major (`window_offsets`), P of
  them per reference (`window_size`); with T references the position index is t*P + p;
- the key of query coordinate y at cell i along one axis (`axis_index`): y + (i - r)*dil
  for boundary "mask"/"zero" (outside [0, n) when out of the image), and for "clamp" the
  NATTEN rule (`clamp_start`): on y's dilation sub-grid, the window of 2r+1 cells centred
  on y shifted to stay inside the image (an axis shorter than (2r+1)*dil is an error).

All index arithmetic is in integers (never float: a float32 column index is inexact beyond
2**24).

`effective_window` gives, for an image and a window far larger than it, a smaller window
with the same in-image positions in the same order, so that the fused ops' work and memory
stay bounded by the image instead of the radius.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

BOUNDARIES = ("mask", "zero", "clamp")
WINDOWS = ("square", "circle")


def in_window(dy: int, dx: int, radius: int, window: str) -> bool:
    """Whether offset (dy, dx), |dy|, |dx| <= radius, belongs to the window."""
    return window == "square" or dy * dy + dx * dx <= radius * radius


def row_half_width(dy: int, radius: int, window: str) -> int:
    """The largest |dx| kept in window row dy (|dy| <= radius)."""
    if window == "square":
        return radius
    return math.isqrt(radius * radius - dy * dy)


@lru_cache(maxsize=64)
def window_offsets(radius: int, window: str) -> tuple[tuple[int, int], ...]:
    """The (i, j) window-grid cells (0..2r each) kept by the window, in window order."""
    side = range(2 * radius + 1)
    return tuple((i, j) for i in side for j in side if in_window(i - radius, j - radius, radius, window))


def _circle_sizes(n: int) -> tuple[int, ...]:
    """P of the circle windows of radius 0..n-1 (integer square roots, vectorised)."""
    r = torch.arange(n, dtype=torch.int64)[:, None]
    dy = torch.arange(-(n - 1), n, dtype=torch.int64)[None, :]
    rest = r * r - dy * dy
    half = torch.sqrt(rest.clamp(min=0).double()).floor().long()
    half = half - (half * half > rest).long() + ((half + 1) * (half + 1) <= rest).long()  # exact isqrt
    return tuple(int(x) for x in torch.where(rest >= 0, 2 * half + 1, 0).sum(1))


# A table, so that torch.compile can look up P for a symbolic radius (specialising on it).
_CIRCLE_SIZES = _circle_sizes(257)


def window_size(radius, window: str):
    """P, the number of positions in one reference's window. Closed form for "square" (a
    symbolic radius under torch.compile(dynamic=True) stays symbolic), a table lookup for
    "circle" (which specialises on the radius)."""
    if window == "square":
        return (2 * radius + 1) ** 2
    if radius < len(_CIRCLE_SIZES):
        return _CIRCLE_SIZES[radius]
    radius = int(radius)
    return sum(2 * row_half_width(dy, radius, window) + 1 for dy in range(-radius, radius + 1))


def window_tables(radius: int, window: str, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(wy, wx, grid_to_p): int32 (P,) grid cells of the window in window order, and int32
    ((2r+1)^2,) the position p of each grid cell (-1 where the window does not keep it)."""
    cells = torch.tensor(window_offsets(radius, window), dtype=torch.int32).reshape(-1, 2)
    size = 2 * radius + 1
    grid_to_p = torch.full((size * size,), -1, dtype=torch.int32)
    grid_to_p[(cells[:, 0] * size + cells[:, 1]).long()] = torch.arange(cells.shape[0], dtype=torch.int32)
    return cells[:, 0].contiguous().to(device), cells[:, 1].contiguous().to(device), grid_to_p.to(device)


def clamp_start(y, n: int, radius: int, dilation: int):
    """NATTEN window start (a key coordinate) of coordinate y on an axis of length n: on
    y's dilation sub-grid, the 2r+1 cells centred on y shifted inside. Works on ints and
    integer tensors."""
    residue = y % dilation
    length = (n - residue + dilation - 1) // dilation  # size of y's sub-grid
    pos = y // dilation - radius
    if isinstance(pos, torch.Tensor):
        start = torch.minimum(pos.clamp(min=0), length - (2 * radius + 1))
    else:
        start = min(max(pos, 0), length - (2 * radius + 1))
    return residue + start * dilation


def axis_index(n: int, radius: int, dilation: int, boundary: str, device=None):
    """For an image axis of length n: (index (2r+1, n) int64, valid (2r+1, n) bool).

    index[i, y] is the key coordinate of window cell i for query coordinate y, clamped into
    [0, n) where it is outside the image (valid False); with "clamp" every cell is valid."""
    y = torch.arange(n, device=device)
    cells = torch.arange(2 * radius + 1, device=device)[:, None]
    if boundary == "clamp":
        index = clamp_start(y, n, radius, dilation) + cells * dilation
        return index, torch.ones_like(index, dtype=torch.bool)
    index = y + (cells - radius) * dilation
    valid = (index >= 0) & (index < n)
    return index.clamp(0, n - 1), valid


def clamp_fits(H: int, W: int, radius: int, dilation: int) -> bool:
    """Whether boundary="clamp" can place the window inside an H x W image."""
    extent = (2 * radius + 1) * dilation
    return H >= extent and W >= extent


def inside_counts(H: int, W: int, radius: int, dilation: int, window: str) -> torch.Tensor:
    """(H, W) int64: how many window positions of each pixel fall inside the image
    ("mask"/"zero" geometry), computed per window row (no (P, H, W) table)."""
    _, row_ok = axis_index(H, radius, dilation, "mask")  # (2r+1, H)
    x = torch.arange(W)
    counts = torch.zeros(2 * radius + 1, W, dtype=torch.int64)
    for i in range(2 * radius + 1):
        half = row_half_width(i - radius, radius, window)
        # columns x + dx*dil, |dx| <= half, inside [0, W): dx in [ceil(-x/dil), floor((W-1-x)/dil)]
        lo = torch.clamp(-(x // dilation), min=-half)
        hi = torch.clamp((W - 1 - x) // dilation, max=half)
        counts[i] = (hi - lo + 1).clamp(min=0)
    return (row_ok.long()[:, :, None] * counts[:, None, :]).sum(0)


class Window(NamedTuple):
    radius: int
    window: str


def effective_window(H: int, W: int, radius: int, dilation: int, window: str) -> Window:
    """The smallest window, among the given one, a square and a circle of smaller radius,
    whose positions are a subset of the given window's, in the same order, that still holds
    every position of it that can fall inside an H x W image ("mask"/"zero" geometry).

    Offsets with |dy|*dil > H-1 (or |dx|*dil > W-1) are outside the image for every pixel;
    a window reaching that far can drop them: with "mask" the result is unchanged, with
    "zero" each dropped position is a logit-0, value-0 term of every pixel's softmax."""
    ry, rx = (H - 1) // dilation, (W - 1) // dilation
    best = Window(radius, window)
    if max(ry, rx) >= radius:
        return best
    options = []
    square = max(ry, rx)
    if window == "square" or 2 * square * square <= radius * radius:
        options.append(Window(square, "square"))  # the full box of reachable offsets
    circle = math.isqrt(ry * ry + rx * rx)
    if circle * circle < ry * ry + rx * rx:
        circle += 1
    if window == "circle" and circle < radius:
        options.append(Window(circle, "circle"))
    for option in options:
        if window_size(option.radius, option.window) < window_size(best.radius, best.window):
            best = option
    return best


def positions_kept(radius: int, window: str, small: Window) -> torch.Tensor:
    """int64 (P_small,): the position p in window (radius, window) of each position of the
    smaller window `small` (same centre), in window order."""
    index = {cell: p for p, cell in enumerate(window_offsets(radius, window))}
    shift = radius - small.radius
    return torch.tensor([index[(i + shift, j + shift)] for i, j in window_offsets(small.radius, small.window)],
                        dtype=torch.int64)


__all__ = [
    "BOUNDARIES", "WINDOWS", "in_window", "row_half_width", "window_offsets", "window_size", "window_tables",
    "clamp_start", "axis_index", "clamp_fits", "inside_counts", "Window", "effective_window", "positions_kept",
]
