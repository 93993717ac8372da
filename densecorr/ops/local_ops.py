"""Local (windowed) affinity ops: local_affinity, local_copy, local_attention.

Window of query pixel (y, x): positions (y + dy*dilation, x + dx*dilation), |dy|, |dx| <=
radius (square) or dy^2 + dx^2 <= radius^2 (circle), P per reference; with T references
the position index is t*P + p (references outer, offsets row-major). See DESIGN section 2
for the boundary modes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from densecorr import backends, geometry
from densecorr.geometry import BOUNDARIES, WINDOWS, window_size
from densecorr.ops._validate import Checker
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
    boundary: str = "mask", window: str = "square", *, backend: Optional[str] = None,
) -> Tensor:
    """Windowed logits between each query pixel and its window in each reference.

    Args:
        q: (B, D, H, W). k: (B, D, H, W) or T references (B, T, D, H, W).
        normalize: softmax jointly over all T*P positions; else the raw scaled logits
            (-inf at excluded positions when boundary="mask"). normalize=False with
            boundary="zero" is a drop-in for spatial_correlation_sampler.
    Returns:
        (B, T*P, H, W), position index t*P + p.
    """
    c = Checker("local_affinity")
    c.tensor("q", q, {4: "(B, D, H, W)"})
    k5 = _references(c, "k", k, "D")
    _check_query_refs(c, q, {"k": k5})
    c.dim_match("feature dims D", q=("q", q.shape, 1), k=("k", k5.shape, 2))
    radius, dilation = _window_args(c, q.shape[2], q.shape[3], radius, dilation, boundary, window)
    return _local_affinity_fwd(
        q.contiguous(), k5.contiguous(), radius, dilation, c.scale(scale), bool(normalize), boundary, window,
        c.backend(backend),
    )


def local_copy(
    attn: Tensor, v: Tensor, radius: int, dilation: int = 1, boundary: str = "mask", window: str = "square", *,
    backend: Optional[str] = None,
) -> Tensor:
    """Restricted-window copying: out_j = sum_{i in window(j)} attn_{j,i} v_i.

    Args:
        attn: (B, T*P, H, W) weights in window order (e.g. from local_affinity).
        v: (B, C, H, W) or T references (B, T, C, H, W). Positions outside the image
            contribute nothing ("mask", "zero"); "clamp" shifts the window inside.
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
    return _local_copy_fwd(attn.contiguous(), v5.contiguous(), radius, dilation, boundary, window, c.backend(backend))


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, radius: int, dilation: int = 1, scale: float = 1.0, boundary: str = "mask",
    window: str = "square", topk: Optional[int] = None, *, backend: Optional[str] = None,
) -> Tensor:
    """Fused local_affinity + local_copy: never stores the (T*P, H, W) volume.

    out_j = sum_{i in windows(j)} softmax_i(scale * q_j . k_i) v_i, one joint softmax over
    the windows of all T references (MAST's memory); with topk, only the topk largest
    logits of each pixel enter it.

    Args:
        q: (B, D, H, W). k: (B, D, H, W) or (B, T, D, H, W). v: (B, C, H, W) or (B, T, C, H, W).
    Returns:
        (B, C, H, W), differentiable in q, k and v.
    """
    c = Checker("local_attention")
    c.tensor("q", q, {4: "(B, D, H, W)"})
    k5 = _references(c, "k", k, "D")
    v5 = _references(c, "v", v, "C")
    _check_query_refs(c, q, {"k": k5, "v": v5})
    c.dim_match("feature dims D", q=("q", q.shape, 1), k=("k", k5.shape, 2))
    radius, dilation = _window_args(c, q.shape[2], q.shape[3], radius, dilation, boundary, window)
    topk = c.topk(topk, k5.shape[1] * window_size(radius, window), "window positions T*P")
    out, _, _ = _local_attention_fwd(
        q.contiguous(), k5.contiguous(), v5.contiguous(), radius, dilation, c.scale(scale), boundary, window, topk,
        c.backend(backend),
    )
    return out
