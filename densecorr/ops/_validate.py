"""Argument checks shared by the public ops: every message names the op, the argument and
the shapes involved, so that a user can fix the call without reading our source."""
from __future__ import annotations

import math
import numbers

import torch

from densecorr.backends import BACKENDS
from densecorr.geometry import BOUNDARIES, WINDOWS  # noqa: F401  (re-exported)

# Under torch.compile(dynamic=True) (or mark_dynamic) sizes and Python scalars arrive as
# torch.SymInt / torch.SymFloat: the checks accept them and compare them symbolically
# (a guard), never forcing them to a static value.
_INTS = (numbers.Integral, torch.SymInt)
_REALS = (numbers.Real, torch.SymInt, torch.SymFloat)


class Checker:
    """Checks for one call of op `op`; raises ValueError (bad values) or TypeError."""

    def __init__(self, op: str):
        self.op = op

    def fail(self, message: str, error=ValueError):
        raise error(f"densecorr.{self.op}: {message}")

    def tensor(self, name: str, t, layouts: dict[int, str]) -> torch.Tensor:
        """`t` is a non-empty floating tensor whose rank is a key of `layouts` (rank -> '(B, N, D)')."""
        expected = " or ".join(f"{n}-D {shape}" for n, shape in layouts.items())
        if not isinstance(t, torch.Tensor):
            self.fail(f"{name} must be a torch.Tensor ({expected}), got {type(t).__name__}", TypeError)
        if t.dim() not in layouts:
            self.fail(f"{name} must be {expected}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            self.fail(f"{name} must be a floating-point tensor, got {t.dtype}", TypeError)
        if t.numel() == 0:
            self.fail(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be >= 1")
        return t

    def same(self, **tensors: torch.Tensor):
        """All tensors on one device with one dtype."""
        items = list(tensors.items())
        name0, t0 = items[0]
        for name, t in items[1:]:
            if t.device != t0.device:
                self.fail(f"{name} is on {t.device} but {name0} is on {t0.device}; put them on one device")
            if t.dtype != t0.dtype:
                self.fail(f"{name} is {t.dtype} but {name0} is {t0.dtype}; use one dtype", TypeError)

    def dim_match(self, what: str, **sizes: tuple[str, tuple, int]):
        """sizes: label -> (tensor name, shape, dim index); all must be equal."""
        values = {label: shape[dim] for label, (_, shape, dim) in sizes.items()}
        first = next(iter(values.values()))
        if any(v != first for v in values.values()):  # no set(): hashing a SymInt specialises it
            desc = ", ".join(f"{label}={values[label]} ({n} shape {tuple(s)})" for label, (n, s, _) in sizes.items())
            self.fail(f"mismatched {what}: {desc}")

    def scale(self, value) -> float:
        if isinstance(value, bool) or not isinstance(value, _REALS):
            self.fail(f"scale must be a real number, got {type(value).__name__}", TypeError)
        if not (-math.inf < value < math.inf):  # not math.isfinite: traceable for a SymFloat too
            self.fail(f"scale must be finite, got {value}")
        return float(value) if isinstance(value, (int, numbers.Integral)) else value

    def integer(self, name: str, value, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, _INTS):
            self.fail(f"{name} must be an int, got {type(value).__name__}", TypeError)
        if value < minimum:
            self.fail(f"{name} must be >= {minimum}, got {value}")
        return value if isinstance(value, (int, torch.SymInt)) else int(value)

    def topk(self, value, n_keys: int, what: str) -> int:
        """0 for None (all keys), else 1 <= topk <= n_keys."""
        if value is None:
            return 0
        value = self.integer("topk", value, 1)
        if value > n_keys:
            self.fail(f"topk={value} exceeds the number of {what} ({n_keys})")
        return value

    def choice(self, name: str, value, options: tuple[str, ...]) -> str:
        if value not in options:
            self.fail(f"{name} must be one of {options}, got {value!r}")
        return value

    def offset(self, offset, like: torch.Tensor, B, T, H, W, boundary: str) -> torch.Tensor:
        """A window offset (B, T, 2, H, W) (or (B, 2, H, W) when T == 1): floating, on like's
        device, not requiring grad, boundary "mask"/"zero". Returns it as (B, T, 2, H, W) in the
        kernels' dtype (float64 for float64 inputs, else float32), contiguous. Finiteness is
        checked by the kernel ops (check_offset), so that compiled graphs check it too."""
        if boundary == "clamp":
            self.fail('boundary="clamp" cannot take an offset (a shifted window has no clamped placement); '
                      'use boundary="mask" or "zero"')
        layouts = {5: "(B, T, 2, H, W)", 4: "(B, 2, H, W)"} if T == 1 else {5: "(B, T, 2, H, W)"}
        self.tensor("offset", offset, layouts)
        if offset.device != like.device:
            self.fail(f"offset is on {offset.device} but the inputs are on {like.device}; put them on one device")
        if offset.requires_grad:
            self.fail("offsets are not differentiable; pass offset.detach()")
        off5 = offset.unsqueeze(1) if offset.dim() == 4 else offset
        expected = (B, T, 2, H, W)
        if any(a != b for a, b in zip(off5.shape, expected)):
            self.fail(f"offset must be (B, T, 2, H, W) = {expected} (channel 0 dy, 1 dx, in pixels), "
                      f"got shape {tuple(offset.shape)}")
        return off5.to(offset_dtype(like.dtype)).contiguous()

    def backend(self, value) -> str:
        if value is None:
            return "auto"
        if value != "auto" and value not in BACKENDS:
            self.fail(f"backend must be one of {BACKENDS} or 'auto', got {value!r}")
        return value


def check_saved(op: str, expected: dict, idx=None, bound=None, what: str = "") -> None:
    """Checks on the tensors a registered backward op receives (torch.ops.densecorr.*_bwd
    are public: callable with any tensors, so the kernels never see ones that would make
    them read out of bounds). expected: name -> (tensor, shape tuple, dtype or None);
    idx: int64 indices that must lie in [0, bound)."""
    for name, (t, shape, dtype) in expected.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"densecorr.{op}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"densecorr.{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if dtype is not None and t.dtype != dtype:
            raise TypeError(f"densecorr.{op}: {name} is {t.dtype}, expected {dtype}")
    if idx is not None and idx.numel():
        lo, hi = (int(x) for x in torch.aminmax(idx))
        if lo < 0 or hi >= bound:
            raise ValueError(
                f"densecorr.{op}: idx holds {what} indices in [{lo}, {hi}], outside [0, {bound}) "
                "(pass the idx that the forward op returned)"
            )


def offset_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the local_offset_* kernels take their offsets in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_offset(op: str, offset, shape: tuple, like: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    """Checks on the offset a local_offset_* kernel op receives (they are public, see
    check_saved): shape, dtype, device, finite values. Returns it clamped to
    +-(max(H, W) + radius*dilation + 2) pixels, which changes no result (a point that far
    out is outside for every window position) and keeps every kernel's integer arithmetic
    in range."""
    if not isinstance(offset, torch.Tensor):
        raise TypeError(f"densecorr.{op}: offset must be a tensor, got {type(offset).__name__}")
    if tuple(offset.shape) != tuple(shape):
        raise ValueError(f"densecorr.{op}: offset has shape {tuple(offset.shape)}, expected {tuple(shape)}")
    if offset.dtype != offset_dtype(like.dtype):
        raise TypeError(f"densecorr.{op}: offset is {offset.dtype}, expected {offset_dtype(like.dtype)} for "
                        f"{like.dtype} inputs")
    if offset.device != like.device:
        raise ValueError(f"densecorr.{op}: offset is on {offset.device} but the inputs are on {like.device}")
    if offset.numel() and not bool(torch.isfinite(offset).all()):
        raise ValueError(f"densecorr.{op}: offset holds non-finite values (NaN or inf); offsets must be finite pixels")
    bound = max(shape[-2], shape[-1]) + radius * dilation + 2
    return offset.clamp(-bound, bound).contiguous()
