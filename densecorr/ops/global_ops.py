"""Global affinity ops: global_attention, global_affinity, project_coords, bbox_from_coords.

Each public function validates its arguments, then calls a custom op
(torch.ops.densecorr.*) whose implementation picks the backend at run time, so that
torch.compile sees one opaque op with a fake kernel and an autograd formula whatever the
backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from densecorr import backends, reference
from densecorr.ops._validate import Checker, check_saved


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of saved softmax statistics (lse): float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- global_attention


@torch.library.custom_op("densecorr::global_attention_fwd", mutates_args=())
def _global_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, topk: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return backends.run("global_attention_fwd", backend, q, k, v, scale, topk)


@_global_attention_fwd.register_fake
def _(q, k, v, scale, topk, backend):
    B, N, _ = q.shape
    return (
        q.new_empty(B, N, v.shape[2]),
        q.new_empty(B, N, dtype=stats_dtype(q.dtype)),
        q.new_empty(B, N, topk, dtype=torch.int64),
    )


@torch.library.custom_op("densecorr::global_attention_bwd", mutates_args=())
def _global_attention_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, idx: Tensor, scale: float, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    B, N, D = q.shape
    M, C = k.shape[1], v.shape[2]
    check_saved(
        "global_attention_bwd",
        dict(k=(k, (B, M, D), q.dtype), v=(v, (B, M, C), q.dtype), grad_out=(grad_out, (B, N, C), None),
             out=(out, (B, N, C), None), lse=(lse, (B, N), stats_dtype(q.dtype)),
             idx=(idx, (B, N, idx.shape[-1] if idx.dim() == 3 else -1), torch.int64)),
        idx, M, "key",
    )
    return backends.run("global_attention_bwd", backend, grad_out, q, k, v, out, lse, idx, scale)


@_global_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, idx, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _global_attention_setup(ctx, inputs, output):
    q, k, v, scale, _, backend = inputs
    out, lse, idx = output
    ctx.save_for_backward(q, k, v, out, lse, idx)
    ctx.scale, ctx.backend = scale, backend
    ctx.mark_non_differentiable(lse, idx)


def _global_attention_backward(ctx, grad_out, _grad_lse, _grad_idx):
    q, k, v, out, lse, idx = ctx.saved_tensors
    dq, dk, dv = _global_attention_bwd(grad_out.contiguous(), q, k, v, out, lse, idx, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None


_global_attention_fwd.register_autograd(_global_attention_backward, setup_context=_global_attention_setup)


def global_attention(q: Tensor, k: Tensor, v: Tensor, scale: float = 1.0, topk: Optional[int] = None, *,
                     return_indices: bool = False, backend: Optional[str] = None):
    """Softmax attention over all keys without materialising the N x M affinity.

    out_j = sum_i softmax_i(scale * q_j . k_i) v_i

    Args:
        q: (B, N, D) queries. k: (B, M, D) keys. v: (B, M, C) values, any C >= 1.
        scale: multiplies the logits (1 / temperature).
        topk: if given, only each query's topk largest logits enter its softmax.
        return_indices: also return the kept keys (needs topk): int64 (B, N, topk), the key
            indices of each query's topk largest logits, in no particular order (ties broken
            by the backend). Not differentiable.
        backend: "cpu", "cuda", "triton", "reference" or None/"auto" (see densecorr.backends).
    Returns:
        (B, N, C), differentiable in q, k and v; with return_indices, (out, indices).
    """
    c = Checker("global_attention")
    c.tensor("q", q, {3: "(B, N, D)"})
    c.tensor("k", k, {3: "(B, M, D)"})
    c.tensor("v", v, {3: "(B, M, C)"})
    c.same(q=q, k=k, v=v)
    c.dim_match("batch sizes", q=("q", q.shape, 0), k=("k", k.shape, 0), v=("v", v.shape, 0))
    c.dim_match("feature dims D", q=("q", q.shape, 2), k=("k", k.shape, 2))
    c.dim_match("key counts M", k=("k", k.shape, 1), v=("v", v.shape, 1))
    topk = c.topk(topk, k.shape[1], "keys M")
    if return_indices and not topk:
        c.fail("return_indices=True needs topk (the indices are those of the kept top-k keys)")
    out, _, idx = _global_attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), c.scale(scale), topk, c.backend(backend))
    return (out, idx) if return_indices else out


# --------------------------------------------------------------------------- global_affinity


@torch.library.custom_op("densecorr::global_affinity", mutates_args=())
def _global_affinity(q: Tensor, k: Tensor, scale: float) -> Tensor:
    return reference.global_affinity(q, k, scale)


@_global_affinity.register_fake
def _(q, k, scale):
    return q.new_empty(q.shape[0], q.shape[1], k.shape[1])


@torch.library.custom_op("densecorr::global_affinity_bwd", mutates_args=())
def _global_affinity_bwd(grad: Tensor, q: Tensor, k: Tensor, attn: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    ds = attn * (grad - (grad * attn).sum(-1, keepdim=True))  # softmax backward
    return scale * torch.bmm(ds, k), scale * torch.bmm(ds.transpose(1, 2), q)


@_global_affinity_bwd.register_fake
def _(grad, q, k, attn, scale):
    return torch.empty_like(q), torch.empty_like(k)


def _global_affinity_setup(ctx, inputs, output):
    q, k, scale = inputs
    ctx.save_for_backward(q, k, output)
    ctx.scale = scale


def _global_affinity_backward(ctx, grad):
    q, k, attn = ctx.saved_tensors
    dq, dk = _global_affinity_bwd(grad.contiguous(), q, k, attn, ctx.scale)
    return dq, dk, None


_global_affinity.register_autograd(_global_affinity_backward, setup_context=_global_affinity_setup)


def global_affinity(q: Tensor, k: Tensor, scale: float = 1.0) -> Tensor:
    """The materialised softmax affinity, for problems small enough to need the matrix.

    Args: q (B, N, D), k (B, M, D). Returns (B, N, M): row j is softmax_i(scale * q_j . k_i).
    """
    c = Checker("global_affinity")
    c.tensor("q", q, {3: "(B, N, D)"})
    c.tensor("k", k, {3: "(B, M, D)"})
    c.same(q=q, k=k)
    c.dim_match("batch sizes", q=("q", q.shape, 0), k=("k", k.shape, 0))
    c.dim_match("feature dims D", q=("q", q.shape, 2), k=("k", k.shape, 2))
    return _global_affinity(q.contiguous(), k.contiguous(), c.scale(scale))


# --------------------------------------------------------------------------- project_coords


@torch.library.custom_op("densecorr::project_coords_fwd", mutates_args=())
def _project_coords_fwd(q: Tensor, k: Tensor, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    return backends.run("project_coords_fwd", backend, q, k, scale)


@_project_coords_fwd.register_fake
def _(q, k, scale, backend):
    B, N, _ = q.shape
    return q.new_empty(B, N, 2), q.new_empty(B, N, dtype=stats_dtype(q.dtype))


@torch.library.custom_op("densecorr::project_coords_bwd", mutates_args=())
def _project_coords_bwd(grad: Tensor, q: Tensor, k: Tensor, coords: Tensor, lse: Tensor, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    B, N, D = q.shape
    check_saved(
        "project_coords_bwd",
        dict(k=(k, (B, D) + tuple(k.shape[2:]) if k.dim() == 4 else (B, D, -1, -1), q.dtype),
             grad=(grad, (B, N, 2), None), coords=(coords, (B, N, 2), None), lse=(lse, (B, N), stats_dtype(q.dtype))),
    )
    return backends.run("project_coords_bwd", backend, grad, q, k, coords, lse, scale)


@_project_coords_bwd.register_fake
def _(grad, q, k, coords, lse, scale, backend):
    return torch.empty_like(q), torch.empty_like(k)


def _project_coords_setup(ctx, inputs, output):
    q, k, scale, backend = inputs
    coords, lse = output
    ctx.save_for_backward(q, k, coords, lse)
    ctx.scale, ctx.backend = scale, backend
    ctx.mark_non_differentiable(lse)


def _project_coords_backward(ctx, grad, _grad_lse):
    q, k, coords, lse = ctx.saved_tensors
    dq, dk = _project_coords_bwd(grad.contiguous(), q, k, coords, lse, ctx.scale, ctx.backend)
    return dq, dk, None, None


_project_coords_fwd.register_autograd(_project_coords_backward, setup_context=_project_coords_setup)


def project_coords(q: Tensor, k: Tensor, scale: float = 1.0, *, backend: Optional[str] = None) -> Tensor:
    """Expected key-map position of each query (UVC): sum_i softmax_i(scale q_j . k_i) (x_i, y_i).

    Args:
        q: (B, N, D) tokens, or an image (B, D, Hq, Wq) read row-major as N = Hq*Wq tokens.
        k: (B, D, H, W) key map; its cell grid is generated in the kernel.
    Returns:
        (B, N, 2) as (x, y) in key-map cells, x in [0, W-1], y in [0, H-1].
    """
    c = Checker("project_coords")
    c.tensor("q", q, {3: "(B, N, D)", 4: "(B, D, Hq, Wq)"})
    c.tensor("k", k, {4: "(B, D, H, W)"})
    c.same(q=q, k=k)
    qd = 2 if q.dim() == 3 else 1
    c.dim_match("batch sizes", q=("q", q.shape, 0), k=("k", k.shape, 0))
    c.dim_match("feature dims D", q=("q", q.shape, qd), k=("k", k.shape, 1))
    tokens = q if q.dim() == 3 else q.flatten(2).transpose(1, 2)
    coords, _ = _project_coords_fwd(tokens.contiguous(), k.contiguous(), c.scale(scale), c.backend(backend))
    return coords


# --------------------------------------------------------------------------- bbox_from_coords


@torch.library.custom_op("densecorr::bbox_from_coords", mutates_args=())
def _bbox_from_coords(coords: Tensor, weights: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return reference.bbox_from_coords(coords, weights)


@_bbox_from_coords.register_fake
def _(coords, weights):
    B = coords.shape[0]
    return coords.new_empty(B, 2), coords.new_empty(B, 2)


@torch.library.custom_op("densecorr::bbox_from_coords_bwd", mutates_args=())
def _bbox_from_coords_bwd(grad_centre: Tensor, grad_size: Tensor, coords: Tensor, weights: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    dcoords, dweights = reference.bbox_from_coords_bwd(grad_centre, grad_size, coords, weights)
    return dcoords, (dweights if weights is not None else coords.new_empty(0))


@_bbox_from_coords_bwd.register_fake
def _(grad_centre, grad_size, coords, weights):
    return torch.empty_like(coords), (torch.empty_like(weights) if weights is not None else coords.new_empty(0))


def _bbox_setup(ctx, inputs, output):
    coords, weights = inputs
    ctx.has_weights = weights is not None
    ctx.save_for_backward(coords, weights if weights is not None else coords.new_empty(0))


def _bbox_backward(ctx, grad_centre, grad_size):
    coords, weights = ctx.saved_tensors
    dcoords, dweights = _bbox_from_coords_bwd(grad_centre, grad_size, coords, weights if ctx.has_weights else None)
    return dcoords, (dweights if ctx.has_weights else None)


_bbox_from_coords.register_autograd(_bbox_backward, setup_context=_bbox_setup)


def bbox_from_coords(coords: Tensor, weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Box of a point set (UVC): centre = (weighted) mean, size = 2 x mean absolute deviation.

    Args: coords (B, N, 2); weights (B, N) non-negative (e.g. a soft mask), or None.
    Returns: centre (B, 2), size (B, 2), in the units of coords.
    """
    c = Checker("bbox_from_coords")
    c.tensor("coords", coords, {3: "(B, N, 2)"})
    if coords.shape[2] != 2:
        c.fail(f"coords must be (B, N, 2), got shape {tuple(coords.shape)}")
    if weights is not None:
        c.tensor("weights", weights, {2: "(B, N)"})
        c.same(coords=coords, weights=weights)
        if tuple(weights.shape) != tuple(coords.shape[:2]):
            c.fail(f"weights must be (B, N) = {tuple(coords.shape[:2])}, got shape {tuple(weights.shape)}")
        weights = weights.contiguous()
    return _bbox_from_coords(coords.contiguous(), weights)
