"""Local (windowed) affinity ops: local_affinity, local_copy, local_attention.

Window of query pixel (y, x): positions (y + dy*dilation, x + dx*dilation), |dy|, |dx| <=
radius (square) or dy^2 + dx^2 <= radius^2 (circle), P per reference; with T references
the position index is t*P + p (references outer, offsets row-major). See DESIGN section 2
for the boundary modes; densecorr/geometry.py holds the one definition of all of it.

With `offset=` (B, T, 2, H, W) the window of pixel (y, x) in reference t is centred on
(y + dy, x + dx) and keys/values are sampled bilinearly (the densecorr::local_offset_* ops;
docs/design.md, "The ops").

Windows far larger than the image run on an equivalent smaller window (same result, work
and memory bounded by the image; see "windows larger than the image" below). The backward
ops (torch.ops.densecorr.*_bwd) check the shapes of their saved tensors and the range of
saved indices before any kernel reads them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from densecorr import backends, geometry
from densecorr.geometry import BOUNDARIES, WINDOWS, window_size
from densecorr.ops._validate import Checker, check_offset, check_saved
from densecorr.ops.global_ops import stats_dtype

# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("densecorr::local_affinity_fwd", mutates_args=())
def _local_affinity_fwd(
    q: Tensor, k: Tensor, radius: int, dilation: int, scale: float, normalize: bool, boundary: str, window: str, backend: str
) -> Tensor:
    return backends.run("local_affinity_fwd", backend, q, k, radius, dilation, scale, normalize, boundary, window)


@_local_affinity_fwd.register_fake
def _(q, k, radius, dilation, scale, normalize, boundary, window, backend):
    B, _, H, W = q.shape
    return q.new_empty(B, k.shape[1] * window_size(radius, window), H, W)


@torch.library.custom_op("densecorr::local_affinity_bwd", mutates_args=())
def _local_affinity_bwd(
    grad: Tensor, q: Tensor, k: Tensor, attn: Tensor, radius: int, dilation: int, scale: float, normalize: bool,
    boundary: str, window: str, backend: str,
) -> tuple[Tensor, Tensor]:
    B, D, H, W = q.shape
    T = k.shape[1]
    attn_shape = (B, T * window_size(radius, window), H, W)
    check_saved(
        "local_affinity_bwd",
        dict(k=(k, (B, T, D, H, W), q.dtype), grad=(grad, attn_shape, None), attn=(attn, attn_shape, None)),
    )
    return backends.run("local_affinity_bwd", backend, grad, q, k, attn, radius, dilation, scale, normalize, boundary, window)


@_local_affinity_bwd.register_fake
def _(grad, q, k, attn, radius, dilation, scale, normalize, boundary, window, backend):
    return torch.empty_like(q), torch.empty_like(k)


def _local_affinity_setup(ctx, inputs, output):
    q, k, *ctx.args = inputs
    ctx.save_for_backward(q, k, output)


def _local_affinity_backward(ctx, grad):
    q, k, attn = ctx.saved_tensors
    dq, dk = _local_affinity_bwd(grad.contiguous(), q, k, attn, *ctx.args)
    return (dq, dk) + (None,) * len(ctx.args)


_local_affinity_fwd.register_autograd(_local_affinity_backward, setup_context=_local_affinity_setup)


@torch.library.custom_op("densecorr::local_copy_fwd", mutates_args=())
def _local_copy_fwd(attn: Tensor, v: Tensor, radius: int, dilation: int, boundary: str, window: str, backend: str) -> Tensor:
    return backends.run("local_copy_fwd", backend, attn, v, radius, dilation, boundary, window)


@_local_copy_fwd.register_fake
def _(attn, v, radius, dilation, boundary, window, backend):
    B, _, H, W = attn.shape
    return attn.new_empty(B, v.shape[2], H, W)


@torch.library.custom_op("densecorr::local_copy_bwd", mutates_args=())
def _local_copy_bwd(
    grad: Tensor, attn: Tensor, v: Tensor, radius: int, dilation: int, boundary: str, window: str, backend: str
) -> tuple[Tensor, Tensor]:
    B, T, C, H, W = v.shape
    check_saved(
        "local_copy_bwd",
        dict(attn=(attn, (B, T * window_size(radius, window), H, W), v.dtype), grad=(grad, (B, C, H, W), None)),
    )
    return backends.run("local_copy_bwd", backend, grad, attn, v, radius, dilation, boundary, window)


@_local_copy_bwd.register_fake
def _(grad, attn, v, radius, dilation, boundary, window, backend):
    return torch.empty_like(attn), torch.empty_like(v)


def _local_copy_setup(ctx, inputs, output):
    attn, v, *ctx.args = inputs
    ctx.save_for_backward(attn, v)


def _local_copy_backward(ctx, grad):
    attn, v = ctx.saved_tensors
    dattn, dv = _local_copy_bwd(grad.contiguous(), attn, v, *ctx.args)
    return (dattn, dv) + (None,) * len(ctx.args)


_local_copy_fwd.register_autograd(_local_copy_backward, setup_context=_local_copy_setup)


@torch.library.custom_op("densecorr::local_attention_fwd", mutates_args=())
def _local_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, radius: int, dilation: int, scale: float, boundary: str, window: str, topk: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return backends.run("local_attention_fwd", backend, q, k, v, radius, dilation, scale, boundary, window, topk)


@_local_attention_fwd.register_fake
def _(q, k, v, radius, dilation, scale, boundary, window, topk, backend):
    B, _, H, W = q.shape
    return (
        q.new_empty(B, v.shape[2], H, W),
        q.new_empty(B, H, W, dtype=stats_dtype(q.dtype)),
        q.new_empty(B, H, W, topk, dtype=torch.int64),
    )


@torch.library.custom_op("densecorr::local_attention_bwd", mutates_args=())
def _local_attention_bwd(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, idx: Tensor, radius: int, dilation: int,
    scale: float, boundary: str, window: str, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    B, D, H, W = q.shape
    T, C = k.shape[1], v.shape[2]
    check_saved(
        "local_attention_bwd",
        dict(k=(k, (B, T, D, H, W), q.dtype), v=(v, (B, T, C, H, W), q.dtype), grad=(grad, (B, C, H, W), None),
             out=(out, (B, C, H, W), None), lse=(lse, (B, H, W), stats_dtype(q.dtype)),
             idx=(idx, (B, H, W, idx.shape[-1] if idx.dim() == 4 else -1), torch.int64)),
        idx, T * window_size(radius, window), "window position",
    )
    return backends.run(
        "local_attention_bwd", backend, grad, q, k, v, out, lse, idx, radius, dilation, scale, boundary, window
    )


@_local_attention_bwd.register_fake
def _(grad, q, k, v, out, lse, idx, radius, dilation, scale, boundary, window, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _local_attention_setup(ctx, inputs, output):
    q, k, v, radius, dilation, scale, boundary, window, _topk, backend = inputs
    out, lse, idx = output
    ctx.save_for_backward(q, k, v, out, lse, idx)
    ctx.args = (radius, dilation, scale, boundary, window, backend)
    ctx.mark_non_differentiable(lse, idx)


def _local_attention_backward(ctx, grad, _grad_lse, _grad_idx):
    q, k, v, out, lse, idx = ctx.saved_tensors
    dq, dk, dv = _local_attention_bwd(grad.contiguous(), q, k, v, out, lse, idx, *ctx.args)
    return (dq, dk, dv) + (None,) * 7


_local_attention_fwd.register_autograd(_local_attention_backward, setup_context=_local_attention_setup)



# --------------------------------------------------------------------------- custom ops: offset windows
#
# The local_offset_* ops take a per-query, per-reference window offset (B, T, 2, H, W)
# (dy, dx in pixels; float32, float64 for float64 inputs): the window of query pixel (y, x)
# in reference t is centred on (y + dy, x + dx) and keys/values are sampled bilinearly
# (docs/design.md, "The ops"). The offset is not differentiable. Each op checks its offset
# (check_offset: shape, dtype, device, finite) and clamps it to a range that changes no
# result, so that no kernel sees values its integer arithmetic cannot hold.


@torch.library.custom_op("densecorr::local_offset_affinity_fwd", mutates_args=())
def _local_offset_affinity_fwd(
    q: Tensor, k: Tensor, offset: Tensor, radius: int, dilation: int, scale: float, normalize: bool, boundary: str,
    window: str, backend: str,
) -> Tensor:
    B, _, H, W = q.shape
    offset = check_offset("local_affinity", offset, (B, k.shape[1], 2, H, W), q, radius, dilation)
    return backends.run(
        "local_offset_affinity_fwd", backend, q, k, offset, radius, dilation, scale, normalize, boundary, window
    )


@_local_offset_affinity_fwd.register_fake
def _(q, k, offset, radius, dilation, scale, normalize, boundary, window, backend):
    B, _, H, W = q.shape
    return q.new_empty(B, k.shape[1] * window_size(radius, window), H, W)


@torch.library.custom_op("densecorr::local_offset_affinity_bwd", mutates_args=())
def _local_offset_affinity_bwd(
    grad: Tensor, q: Tensor, k: Tensor, offset: Tensor, attn: Tensor, radius: int, dilation: int, scale: float,
    normalize: bool, boundary: str, window: str, backend: str,
) -> tuple[Tensor, Tensor]:
    B, D, H, W = q.shape
    T = k.shape[1]
    attn_shape = (B, T * window_size(radius, window), H, W)
    check_saved(
        "local_offset_affinity_bwd",
        dict(k=(k, (B, T, D, H, W), q.dtype), grad=(grad, attn_shape, None), attn=(attn, attn_shape, None)),
    )
    offset = check_offset("local_offset_affinity_bwd", offset, (B, T, 2, H, W), q, radius, dilation)
    return backends.run(
        "local_offset_affinity_bwd", backend, grad, q, k, offset, attn, radius, dilation, scale, normalize, boundary,
        window,
    )


@_local_offset_affinity_bwd.register_fake
def _(grad, q, k, offset, attn, radius, dilation, scale, normalize, boundary, window, backend):
    return torch.empty_like(q), torch.empty_like(k)


def _local_offset_affinity_setup(ctx, inputs, output):
    q, k, offset, *ctx.args = inputs
    ctx.save_for_backward(q, k, offset, output)


def _local_offset_affinity_backward(ctx, grad):
    q, k, offset, attn = ctx.saved_tensors
    dq, dk = _local_offset_affinity_bwd(grad.contiguous(), q, k, offset, attn, *ctx.args)
    return (dq, dk, None) + (None,) * len(ctx.args)


_local_offset_affinity_fwd.register_autograd(_local_offset_affinity_backward, setup_context=_local_offset_affinity_setup)


@torch.library.custom_op("densecorr::local_offset_copy_fwd", mutates_args=())
def _local_offset_copy_fwd(
    attn: Tensor, v: Tensor, offset: Tensor, radius: int, dilation: int, boundary: str, window: str, backend: str
) -> Tensor:
    B, T, _, H, W = v.shape
    offset = check_offset("local_copy", offset, (B, T, 2, H, W), v, radius, dilation)
    return backends.run("local_offset_copy_fwd", backend, attn, v, offset, radius, dilation, boundary, window)


@_local_offset_copy_fwd.register_fake
def _(attn, v, offset, radius, dilation, boundary, window, backend):
    B, _, H, W = attn.shape
    return attn.new_empty(B, v.shape[2], H, W)


@torch.library.custom_op("densecorr::local_offset_copy_bwd", mutates_args=())
def _local_offset_copy_bwd(
    grad: Tensor, attn: Tensor, v: Tensor, offset: Tensor, radius: int, dilation: int, boundary: str, window: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    B, T, C, H, W = v.shape
    check_saved(
        "local_offset_copy_bwd",
        dict(attn=(attn, (B, T * window_size(radius, window), H, W), v.dtype), grad=(grad, (B, C, H, W), None)),
    )
    offset = check_offset("local_offset_copy_bwd", offset, (B, T, 2, H, W), v, radius, dilation)
    return backends.run("local_offset_copy_bwd", backend, grad, attn, v, offset, radius, dilation, boundary, window)


@_local_offset_copy_bwd.register_fake
def _(grad, attn, v, offset, radius, dilation, boundary, window, backend):
    return torch.empty_like(attn), torch.empty_like(v)


def _local_offset_copy_setup(ctx, inputs, output):
    attn, v, offset, *ctx.args = inputs
    ctx.save_for_backward(attn, v, offset)


def _local_offset_copy_backward(ctx, grad):
    attn, v, offset = ctx.saved_tensors
    dattn, dv = _local_offset_copy_bwd(grad.contiguous(), attn, v, offset, *ctx.args)
    return (dattn, dv, None) + (None,) * len(ctx.args)


_local_offset_copy_fwd.register_autograd(_local_offset_copy_backward, setup_context=_local_offset_copy_setup)


@torch.library.custom_op("densecorr::local_offset_attention_fwd", mutates_args=())
def _local_offset_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, offset: Tensor, radius: int, dilation: int, scale: float, boundary: str,
    window: str, topk: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    B, _, H, W = q.shape
    offset = check_offset("local_attention", offset, (B, k.shape[1], 2, H, W), q, radius, dilation)
    return backends.run(
        "local_offset_attention_fwd", backend, q, k, v, offset, radius, dilation, scale, boundary, window, topk
    )


@_local_offset_attention_fwd.register_fake
def _(q, k, v, offset, radius, dilation, scale, boundary, window, topk, backend):
    B, _, H, W = q.shape
    return (
        q.new_empty(B, v.shape[2], H, W),
        q.new_empty(B, H, W, dtype=stats_dtype(q.dtype)),
        q.new_empty(B, H, W, topk, dtype=torch.int64),
    )


@torch.library.custom_op("densecorr::local_offset_attention_bwd", mutates_args=())
def _local_offset_attention_bwd(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, offset: Tensor, out: Tensor, lse: Tensor, idx: Tensor, radius: int,
    dilation: int, scale: float, boundary: str, window: str, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    B, D, H, W = q.shape
    T, C = k.shape[1], v.shape[2]
    check_saved(
        "local_offset_attention_bwd",
        dict(k=(k, (B, T, D, H, W), q.dtype), v=(v, (B, T, C, H, W), q.dtype), grad=(grad, (B, C, H, W), None),
             out=(out, (B, C, H, W), None), lse=(lse, (B, H, W), stats_dtype(q.dtype)),
             idx=(idx, (B, H, W, idx.shape[-1] if idx.dim() == 4 else -1), torch.int64)),
        idx, T * window_size(radius, window), "window position",
    )
    offset = check_offset("local_offset_attention_bwd", offset, (B, T, 2, H, W), q, radius, dilation)
    return backends.run(
        "local_offset_attention_bwd", backend, grad, q, k, v, offset, out, lse, idx, radius, dilation, scale, boundary,
        window,
    )


@_local_offset_attention_bwd.register_fake
def _(grad, q, k, v, offset, out, lse, idx, radius, dilation, scale, boundary, window, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _local_offset_attention_setup(ctx, inputs, output):
    q, k, v, offset, radius, dilation, scale, boundary, window, _topk, backend = inputs
    out, lse, idx = output
    ctx.save_for_backward(q, k, v, offset, out, lse, idx)
    ctx.args = (radius, dilation, scale, boundary, window, backend)
    ctx.mark_non_differentiable(lse, idx)


def _local_offset_attention_backward(ctx, grad, _grad_lse, _grad_idx):
    q, k, v, offset, out, lse, idx = ctx.saved_tensors
    dq, dk, dv = _local_offset_attention_bwd(grad.contiguous(), q, k, v, offset, out, lse, idx, *ctx.args)
    return (dq, dk, dv, None) + (None,) * 7


_local_offset_attention_fwd.register_autograd(
    _local_offset_attention_backward, setup_context=_local_offset_attention_setup
)


# --------------------------------------------------------------------------- windows larger than the image
#
# A window that reaches further than the image (radius*dilation >= H or W) has positions
# that are outside the image for every pixel. The public functions then run the kernels on
# geometry.effective_window (same in-image positions, same order), so that work and memory
# follow the image, not the radius, with the same result:
# - "mask": dropped positions are excluded anyway (top-k: at most T*P' positions remain);
# - "zero": each dropped position is a logit-0, value-0 term in every pixel's softmax. The
#   n0 = T*(P - P') missing terms come back through one extra reference with k = 0, v = 0
#   and an extra feature channel: q gets c_j = log(m_j) / scale, the extra reference's k
#   gets 1 there (the real references 0), so each of its n_in(j) in-image positions has
#   logit log(m_j) and its P' - n_in(j) out-of-image positions logit 0: in total
#   n_in(j) m_j + P' - n_in(j) = n0 terms of exp(0) when m_j = (n0 - P' + n_in(j)) / n_in(j).
#   With top-k the window keeps at least topk out-of-image positions per pixel instead
#   (any logit-0, value-0 position is as good as another).
# Under torch.compile the full window is used (same result; the reduction is eager-only).
# local_affinity's output has T*P channels: it is computed on the smaller window and
# placed into the full output, and refused when that output alone would exceed
# MAX_AFFINITY_ELEMENTS while the window reaches beyond the image.

MAX_AFFINITY_ELEMENTS = 1 << 31


def _smaller_window(H, W, radius, dilation, boundary, window, T, topk=0):
    """geometry.Window to run instead of (radius, window), or None (no smaller one applies)."""
    if boundary == "clamp" or torch.compiler.is_compiling():
        return None
    small = geometry.effective_window(H, W, radius, dilation, window)
    if small == (radius, window):
        return None
    if boundary == "zero" and topk:
        n_max = int(geometry.inside_counts(H, W, small.radius, dilation, small.window).max())
        r = small.radius
        while T * (window_size(r, small.window) - n_max) < topk:  # too few logit-0 positions
            r += 1
            if r >= radius or (small.window == "square" and window == "circle" and 2 * r * r > radius * radius):
                return None
        small = geometry.Window(r, small.window)
    return small


def _zero_padding_reference(q, k5, v5, radius, dilation, scale, window, small):
    """Inputs (q', k', v', scale') for `small` that give boundary="zero" the softmax of the
    full window (radius, window): see the comment above. None when m_j > 0 is impossible."""
    B, D, H, W = q.shape
    T = k5.shape[1]
    P, Ps = window_size(radius, window), window_size(small.radius, small.window)
    n_in = geometry.inside_counts(H, W, small.radius, dilation, small.window).to(torch.float64)
    extra = T * (P - Ps) - Ps + n_in
    if extra.min() <= 0:
        return None
    work = torch.float64 if q.dtype == torch.float64 else torch.float32  # c_j needs full precision
    if scale == 0:  # every logit is 0: same softmax with q = k = 0 and scale 1 (zero gradients)
        q, k5, scale = q * 0, k5 * 0, 1.0
    c = (torch.log(extra / n_in) / scale).to(device=q.device, dtype=work)
    zeros = lambda *shape: torch.zeros(*shape, device=q.device, dtype=work)  # noqa: E731
    q2 = torch.cat([q.to(work), c.expand(B, 1, H, W)], 1)
    k_real = torch.cat([k5.to(work), zeros(B, T, 1, H, W)], 2)
    k_extra = torch.cat([zeros(B, 1, D, H, W), torch.ones(B, 1, 1, H, W, device=q.device, dtype=work)], 2)
    v2 = torch.cat([v5.to(work), zeros(B, 1, v5.shape[2], H, W)], 1)
    return q2.contiguous(), torch.cat([k_real, k_extra], 1).contiguous(), v2.contiguous(), scale


# --------------------------------------------------------------------------- public functions


def _references(c: Checker, name: str, t: Tensor, what: str) -> Tensor:
    """(B, E, H, W) or (B, T, E, H, W) -> (B, T, E, H, W)."""
    c.tensor(name, t, {4: f"(B, {what}, H, W)", 5: f"(B, T, {what}, H, W)"})
    return t.unsqueeze(1) if t.dim() == 4 else t


def _window_args(c: Checker, H: int, W: int, radius, dilation, boundary, window):
    radius = c.integer("radius", radius, 0)
    dilation = c.integer("dilation", dilation, 1)
    c.choice("boundary", boundary, BOUNDARIES)
    c.choice("window", window, WINDOWS)
    extent = (2 * radius + 1) * dilation
    if boundary == "clamp" and (H < extent or W < extent):
        c.fail(
            f'boundary="clamp" needs an image at least (2*radius+1)*dilation = {extent} pixels on each side, '
            f"got H={H}, W={W} (radius={radius}, dilation={dilation}); use a smaller window or another boundary"
        )
    return radius, dilation


def _check_query_refs(c: Checker, q: Tensor, refs: dict[str, Tensor]):
    """q (B, D, H, W) and references (B, T, E, H, W): same device/dtype, B, H, W and T."""
    c.same(q=q, **refs)
    for dim, what in ((0, "batch sizes"), (-2, "heights H"), (-1, "widths W")):
        c.dim_match(what, q=("q", q.shape, dim), **{n: (n, t.shape, dim) for n, t in refs.items()})
    if len(refs) > 1:
        c.dim_match("reference counts T", **{n: (n, t.shape, 1) for n, t in refs.items()})


def local_affinity(
    q: Tensor, k: Tensor, radius: int, dilation: int = 1, scale: float = 1.0, normalize: bool = True,
    boundary: str = "mask", window: str = "square", *, offset: Optional[Tensor] = None, backend: Optional[str] = None,
) -> Tensor:
    """Windowed logits between each query pixel and its window in each reference.

    Args:
        q: (B, D, H, W). k: (B, D, H, W) or T references (B, T, D, H, W).
        normalize: softmax jointly over all T*P positions; else the raw scaled logits
            (-inf at excluded positions when boundary="mask"). normalize=False with
            boundary="zero" is a drop-in for spatial_correlation_sampler.
        offset: optional (B, T, 2, H, W) (or (B, 2, H, W) when T == 1) window offset (dy, dx)
            in pixels per query pixel and reference, fractional offsets sampling k
            bilinearly; boundary "mask" or "zero"; not differentiable (see docs/design.md).
    Returns:
        (B, T*P, H, W), position index t*P + p. Refused (ValueError) when the window
        reaches beyond the image and the output would exceed MAX_AFFINITY_ELEMENTS.
    """
    c = Checker("local_affinity")
    c.tensor("q", q, {4: "(B, D, H, W)"})
    k5 = _references(c, "k", k, "D")
    _check_query_refs(c, q, {"k": k5})
    c.dim_match("feature dims D", q=("q", q.shape, 1), k=("k", k5.shape, 2))
    radius, dilation = _window_args(c, q.shape[2], q.shape[3], radius, dilation, boundary, window)
    scale, backend, normalize = c.scale(scale), c.backend(backend), bool(normalize)
    q, k5 = q.contiguous(), k5.contiguous()
    B, T, _, H, W = k5.shape
    if offset is not None:  # no smaller window: an offset can move any position into the image
        offset = c.offset(offset, q, B, T, H, W, boundary)
        return _local_offset_affinity_fwd(q, k5, offset, radius, dilation, scale, normalize, boundary, window, backend)
    small = _smaller_window(H, W, radius, dilation, boundary, window, T)
    if small is None:
        return _local_affinity_fwd(q, k5, radius, dilation, scale, normalize, boundary, window, backend)
    P = window_size(radius, window)
    if B * T * P * H * W > MAX_AFFINITY_ELEMENTS:
        c.fail(
            f"the output (B, T*P, H, W) = {(B, T * P, H, W)} would have {B * T * P * H * W} elements, and a "
            f"{window} window of radius {radius} (dilation {dilation}) reaches beyond the {H}x{W} image: only "
            f"the positions of a {small.window} window of radius {small.radius} can fall inside it; "
            "use that window (the other positions are constant)"
        )
    kept = geometry.positions_kept(radius, window, small).to(q.device)
    mask = boundary == "mask"
    # Normalised "zero": logits first, then the softmax over all T*P positions (logit 0 outside).
    part = _local_affinity_fwd(q, k5, small.radius, dilation, scale, normalize and mask, boundary, small.window, backend)
    part = part.view(B, T, kept.numel(), H, W)
    if normalize and not mask:
        work = part.float() if part.dtype in (torch.float16, torch.bfloat16) else part
        n0 = torch.tensor(float(T * (P - kept.numel())), dtype=work.dtype, device=q.device).log()
        lse = torch.logaddexp(torch.logsumexp(work.flatten(1, 2), 1), n0)[:, None, None]  # (B, 1, 1, H, W)
        part, fill = torch.exp(work - lse).to(q.dtype), torch.exp(-lse).to(q.dtype)
        full = fill.expand(B, T, P, H, W).clone()
    else:
        fill = 0.0 if normalize or not mask else float("-inf")
        full = torch.full((B, T, P, H, W), fill, dtype=q.dtype, device=q.device)
    full.index_copy_(2, kept, part)
    return full.view(B, T * P, H, W)


def local_copy(
    attn: Tensor, v: Tensor, radius: int, dilation: int = 1, boundary: str = "mask", window: str = "square", *,
    offset: Optional[Tensor] = None, backend: Optional[str] = None,
) -> Tensor:
    """Restricted-window copying: out_j = sum_{i in window(j)} attn_{j,i} v_i.

    Args:
        attn: (B, T*P, H, W) weights in window order (e.g. from local_affinity).
        v: (B, C, H, W) or T references (B, T, C, H, W). Positions outside the image
            contribute nothing ("mask", "zero"); "clamp" shifts the window inside.
        offset: optional window offset, as in local_affinity (v sampled bilinearly).
    Returns:
        (B, C, H, W).
    """
    c = Checker("local_copy")
    c.tensor("attn", attn, {4: "(B, T*P, H, W)"})
    v5 = _references(c, "v", v, "C")
    c.same(attn=attn, v=v5)
    for dim, what in ((0, "batch sizes"), (-2, "heights H"), (-1, "widths W")):
        c.dim_match(what, attn=("attn", attn.shape, dim), v=("v", v5.shape, dim))
    radius, dilation = _window_args(c, attn.shape[2], attn.shape[3], radius, dilation, boundary, window)
    positions = v5.shape[1] * window_size(radius, window)
    if attn.shape[1] != positions:
        c.fail(
            f"attn has {attn.shape[1]} window positions (shape {tuple(attn.shape)}) but T={v5.shape[1]} references "
            f"with a {window} window of radius {radius} have T*P = {positions}"
        )
    B, T, _, H, W = v5.shape
    if offset is not None:
        offset = c.offset(offset, v5, B, T, H, W, boundary)
        return _local_offset_copy_fwd(
            attn.contiguous(), v5.contiguous(), offset, radius, dilation, boundary, window, c.backend(backend)
        )
    small = _smaller_window(H, W, radius, dilation, boundary, window, T)
    if small is not None:  # dropped positions are outside the image: they copy nothing
        kept = geometry.positions_kept(radius, window, small).to(attn.device)
        attn = attn.view(B, T, -1, H, W).index_select(2, kept).reshape(B, T * kept.numel(), H, W)
        radius, window = small
    return _local_copy_fwd(attn.contiguous(), v5.contiguous(), radius, dilation, boundary, window, c.backend(backend))


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, radius: int, dilation: int = 1, scale: float = 1.0, boundary: str = "mask",
    window: str = "square", topk: Optional[int] = None, *, offset: Optional[Tensor] = None, return_indices: bool = False,
    backend: Optional[str] = None,
):
    """Fused local_affinity + local_copy: never stores the (T*P, H, W) volume.

    out_j = sum_{i in windows(j)} softmax_i(scale * q_j . k_i) v_i, one joint softmax over
    the windows of all T references (MAST's memory); with topk, only the topk largest
    logits of each pixel enter it.

    Args:
        q: (B, D, H, W). k: (B, D, H, W) or (B, T, D, H, W). v: (B, C, H, W) or (B, T, C, H, W).
        return_indices: also return the kept positions (needs topk): int64 (B, H, W, topk),
            window positions t*P + p of the given (radius, window) (also when a smaller
            equivalent window ran), in no particular order. With boundary "mask" a pixel whose
            windows hold fewer than topk positions inside the image also names positions
            outside it (weight 0). Not differentiable.
        offset: optional window offset, as in local_affinity (k and v sampled bilinearly);
            with boundary "mask" a pixel whose shifted windows hold no position inside the
            image gets output 0.
    Returns:
        (B, C, H, W), differentiable in q, k and v; with return_indices, (out, indices).
    """
    c = Checker("local_attention")
    c.tensor("q", q, {4: "(B, D, H, W)"})
    k5 = _references(c, "k", k, "D")
    v5 = _references(c, "v", v, "C")
    _check_query_refs(c, q, {"k": k5, "v": v5})
    c.dim_match("feature dims D", q=("q", q.shape, 1), k=("k", k5.shape, 2))
    radius, dilation = _window_args(c, q.shape[2], q.shape[3], radius, dilation, boundary, window)
    T = k5.shape[1]
    topk = c.topk(topk, T * window_size(radius, window), "window positions T*P")
    if return_indices and not topk:
        c.fail("return_indices=True needs topk (the indices are those of the kept top-k positions)")
    scale, backend = c.scale(scale), c.backend(backend)
    q, k5, v5 = q.contiguous(), k5.contiguous(), v5.contiguous()
    if offset is not None:
        offset = c.offset(offset, q, q.shape[0], T, q.shape[2], q.shape[3], boundary)
        out, _, idx = _local_offset_attention_fwd(
            q, k5, v5, offset, radius, dilation, scale, boundary, window, topk, backend
        )
        return (out, idx) if return_indices else out
    small = _smaller_window(q.shape[2], q.shape[3], radius, dilation, boundary, window, T, topk)
    if small is not None and boundary == "zero" and not topk:
        padded = _zero_padding_reference(q, k5, v5, radius, dilation, scale, window, small)
        if padded is not None:
            q2, k2, v2, scale2 = padded
            out, _, _ = _local_attention_fwd(q2, k2, v2, small.radius, dilation, scale2, boundary, small.window, 0, backend)
            return out.to(q.dtype)
        small = None
    given = geometry.Window(radius, window)
    if small is not None:
        radius, window = small
        topk_run = min(topk, T * window_size(radius, window))
    else:
        topk_run = topk
    out, _, idx = _local_attention_fwd(q, k5, v5, radius, dilation, scale, boundary, window, topk_run, backend)
    if not return_indices:
        return out
    if small is not None:
        idx = _positions_in(idx, small, given)
        if topk_run < topk:  # fewer positions than topk exist: the rest are outside the image
            idx = torch.cat([idx, _outside_positions(given, T, topk - topk_run, idx)], -1)
    return out, idx


def _positions_in(idx: Tensor, small, given) -> Tensor:
    """Window positions t*Ps + p of the window `small` -> t*P + p' of the window `given`
    (which holds every offset of `small`)."""
    Ps, P = window_size(small.radius, small.window), window_size(given.radius, given.window)
    side = 2 * given.radius + 1
    lut = torch.full((side * side,), -1, dtype=torch.int64)
    for p, (i, j) in enumerate(geometry.window_offsets(given.radius, given.window)):
        lut[i * side + j] = p
    cells = torch.tensor(geometry.window_offsets(small.radius, small.window), dtype=torch.int64).reshape(-1, 2) + (given.radius - small.radius)
    remap = lut[cells[:, 0] * side + cells[:, 1]].to(idx.device)
    return (idx // Ps) * P + remap[idx % Ps]


def _outside_positions(given, T: int, n: int, idx: Tensor) -> Tensor:
    """n positions of `given` never inside the image for any pixel (those the smaller window
    dropped), broadcast to idx's leading shape."""
    P = window_size(given.radius, given.window)
    taken = torch.zeros(T * P, dtype=torch.bool, device=idx.device)
    taken[idx.flatten().unique()] = True
    free = torch.nonzero(~taken).flatten()[:n]
    return free.expand(*idx.shape[:-1], n)
