"""Providers: the implementations compared, each a function of the case's inputs.

Every provider computes the case's attention from q, k, v (layouts in cases.py) and returns
(B, N, C) (global) or (B, C, H, W) (local). A provider that cannot run a case says why
(`unavailable`), one without a backward says why (`no_backward`); the harness prints the
reason and skips it. `boundary` is the local boundary rule a provider computes when it is
not the case's (Flex Attention and NATTEN cannot express zero padding).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from densecorr.bench.cases import Case


@dataclass
class Provider:
    name: str
    kinds: tuple[str, ...]  # case kinds it implements: "global", "topk", "local"
    about: str
    build: Callable[[Case, torch.device], Callable]  # -> fn(q, k, v) -> out (fn.note: setup note)
    check: Callable[[Case, torch.device], str | None] = lambda case, device: None
    no_backward: Callable[[Case, torch.device], str | None] = lambda case, device: None
    boundary: Callable[[Case], str] = lambda case: case.boundary
    compiled: bool = False  # compiles per shape on first call: warm up on the real shape
    notes: list[str] = field(default_factory=list)

    def unavailable(self, case: Case, device: torch.device) -> str | None:
        kind = case_kind(case)
        if kind not in self.kinds:
            return f"does not implement {kind} cases"
        return self.check(case, device)


def case_kind(case: Case) -> str:
    return "topk" if case.kind == "global" and case.topk else case.kind


def _import_problem(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # ImportError, or a broken build raising something else
        return f"{module} is not importable ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------- densecorr


def _densecorr_global(backend):
    def build(case, device):
        import densecorr

        def fn(q, k, v):
            return densecorr.global_attention(q, k, v, scale=case.scale, topk=case.topk, backend=backend)

        return fn

    return build


def _densecorr_local(backend):
    def build(case, device):
        import densecorr

        def fn(q, k, v):
            if case.T == 1:  # the single-reference layout, as a user would call it
                k, v = k[:, 0], v[:, 0]
            return densecorr.local_attention(
                q, k, v, case.radius, dilation=case.dilation, scale=case.scale,
                boundary=case.boundary, backend=backend,
            )

        return fn

    return build


def _densecorr(backend):
    g, loc = _densecorr_global(backend), _densecorr_local(backend)
    return lambda case, device: (g if case.kind == "global" else loc)(case, device)


def _densecorr_two_step(case, device):
    import densecorr

    def fn(q, k, v):
        if case.T == 1:
            k, v = k[:, 0], v[:, 0]
        attn = densecorr.local_affinity(
            q, k, case.radius, dilation=case.dilation, scale=case.scale, boundary=case.boundary
        )
        return densecorr.local_copy(attn, v, case.radius, dilation=case.dilation, boundary=case.boundary)

    return fn


def _densecorr_check(case, device):
    problem = _import_problem("densecorr")
    if problem:
        return problem
    import densecorr

    name = "global_attention" if case.kind == "global" else "local_attention"
    if not hasattr(densecorr, name):
        return f"densecorr has no {name} (ops not built into this checkout yet)"
    return None


# ---------------------------------------------------------------------------- naive global


def naive_global(case, device):
    """What training code writes: materialise the (N, M) logits, softmax, bmm."""

    def fn(q, k, v):
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * case.scale, dim=-1)
        return torch.bmm(attn, v)

    return fn


def naive_topk(case, device):
    """The CRW/UVC evaluation code: materialise the logits, keep the top k, softmax, gather."""

    def fn(q, k, v):
        logits = torch.bmm(q, k.transpose(1, 2)) * case.scale
        vals, idx = logits.topk(case.topk, dim=-1)  # (B, N, k)
        w = torch.softmax(vals, dim=-1)
        B, N, kk = idx.shape
        picked = v.gather(1, idx.reshape(B, N * kk, 1).expand(-1, -1, v.shape[-1])).view(B, N, kk, -1)
        return torch.einsum("bnk,bnkc->bnc", w, picked)

    return fn


def sdpa_padded(case, device):
    """scaled_dot_product_attention with V zero-padded to D (its kernels need equal widths on
    CPU), the output cut back to C channels. Inputs as (B, heads=1, N, D): with 3-D inputs the
    CPU dispatch falls back to the math path, which materialises N x M."""

    def fn(q, k, v):
        D, C = q.shape[-1], v.shape[-1]
        if C < D:
            v = F.pad(v, (0, D - C))
        elif C > D:  # zero channels leave the logits unchanged
            q, k = F.pad(q, (0, C - D)), F.pad(k, (0, C - D))
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=case.scale)
        return out[:, 0, :, :C]

    return fn


# ---------------------------------------------------------------------------- naive local


def _unfold(x, case):
    """(B, C, H, W) -> (B, C, P, H, W): each pixel's window, zero outside the image."""
    K = 2 * case.radius + 1
    B, C, H, W = x.shape
    cols = F.unfold(x, K, dilation=case.dilation, padding=case.radius * case.dilation)
    return cols.view(B, C, K * K, H, W)


def sampler_unfold(case, device):
    """MAST/CorrFlow: spatial_correlation_sampler for the logits (0 outside the image), one
    softmax over all references' windows, F.unfold of the values, multiply and sum."""
    from spatial_correlation_sampler import spatial_correlation_sample

    K = 2 * case.radius + 1

    def fn(q, k, v):
        B, T, _, H, W = k.shape
        corr = [
            spatial_correlation_sample(
                q, k[:, t], kernel_size=1, patch_size=K, stride=1, padding=0, dilation_patch=case.dilation
            ).view(B, K * K, H, W)
            for t in range(T)
        ]
        attn = torch.softmax(torch.cat(corr, 1) * case.scale, dim=1)  # (B, T*P, H, W)
        cols = torch.cat([_unfold(v[:, t], case) for t in range(T)], 2)  # (B, C, T*P, H, W)
        return (attn.unsqueeze(1) * cols).sum(2)

    return fn


def unfold_einsum(case, device):
    """F.unfold of keys and values with einsum contractions, one reference at a time for the
    keys (all at once would hold T unfolded key volumes)."""

    def fn(q, k, v):
        T = k.shape[1]
        logits = torch.cat(
            [torch.einsum("bdhw,bdphw->bphw", q, _unfold(k[:, t], case)) for t in range(T)], 1
        )
        attn = torch.softmax(logits * case.scale, dim=1)
        P = case.window
        out = 0
        for t in range(T):
            out = out + torch.einsum("bphw,bcphw->bchw", attn[:, t * P : (t + 1) * P], _unfold(v[:, t], case))
        return out

    return fn


# ---------------------------------------------------------------------------- Flex Attention


def _flex_check(case, device):
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError as exc:
        return f"torch {torch.__version__} has no Flex Attention ({exc})"
    return None


def _flex_no_backward(case, device):
    if torch.device(device).type == "cpu":
        return f"Flex Attention has no CPU backward (torch {torch.__version__})"
    return None


def window_block_mask(case: Case, mask_mod, device, block: int = 128):
    """The BlockMask of a local window over tokens (q: H*W, kv: T*H*W, row-major), built from
    block ranges: each query block's windows lie within image rows [y0 - r*dil, y1 + r*dil] of
    every reference, one contiguous run of kv blocks per reference. All blocks are partial
    (mask_mod decides inside them). create_block_mask would evaluate mask_mod on the whole
    L x T*L grid at once (26 GB at MAST's size) or compile it (a minute and a half)."""
    from torch.nn.attention.flex_attention import BlockMask

    H, W, T, reach = case.H, case.W, case.T, case.radius * case.dilation
    L = H * W
    nq, nkv = -(-L // block), -(-(T * L) // block)
    indices = torch.zeros(nq, nkv, dtype=torch.int32)
    counts = torch.zeros(nq, dtype=torch.int32)
    for qb in range(nq):
        y0 = max(0, (qb * block) // W - reach)
        y1 = min(H - 1, (min(L, (qb + 1) * block) - 1) // W + reach)
        kv = sorted({b for t in range(T) for b in range((t * L + y0 * W) // block, (t * L + (y1 + 1) * W - 1) // block + 1)})
        counts[qb] = len(kv)
        indices[qb, : len(kv)] = torch.tensor(kv, dtype=torch.int32)
    return BlockMask.from_kv_blocks(
        counts.view(1, 1, nq).to(device), indices.view(1, 1, nq, nkv).to(device),
        BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(L, T * L),
    )


def flex_window(case, device):
    """torch.compile'd flex_attention with a block-sparse window mask_mod over tokens
    (q: H*W tokens, k/v: T*H*W tokens). Positions outside the image do not exist for it, so
    it computes boundary="mask". The block mask is built here and the first call compiles:
    both are one-time costs, excluded from the timings (the harness reports the first call)."""
    from torch.nn.attention.flex_attention import flex_attention

    H, W, r, dil = case.H, case.W, case.radius, case.dilation
    L = H * W

    def window(b, h, q_idx, kv_idx):
        qy, qx = q_idx // W, q_idx % W
        kv = kv_idx % L
        dy, dx = kv // W - qy, kv % W - qx
        inside = (dy.abs() <= r * dil) & (dx.abs() <= r * dil)
        if dil > 1:
            inside = inside & (dy % dil == 0) & (dx % dil == 0)
        return inside

    t0 = time.perf_counter()
    block_mask = window_block_mask(case, window, device)
    mask_s = time.perf_counter() - t0
    compiled = torch.compile(flex_attention, dynamic=False)

    def fn(q, k, v):
        B, D = q.shape[:2]
        C = v.shape[2]
        qt = q.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, D)
        kt = k.permute(0, 1, 3, 4, 2).reshape(B, 1, case.T * L, D)
        vt = v.permute(0, 1, 3, 4, 2).reshape(B, 1, case.T * L, C)
        out = compiled(qt, kt, vt, block_mask=block_mask, scale=case.scale)  # (B, 1, L, C)
        return out[:, 0].transpose(1, 2).reshape(B, C, H, W)

    counts = block_mask.kv_num_blocks
    density = float(counts.sum()) / (counts.numel() * block_mask.kv_indices.shape[-1])
    fn.note = f"block mask: {100 * density:.0f}% of blocks visited, built in {mask_s:.1f} s"
    return fn


# ---------------------------------------------------------------------------- NATTEN (GPU)


def _natten_check(case, device):
    if torch.device(device).type != "cuda":
        return "NATTEN is compared on GPU only"
    if case.T != 1:
        return "NATTEN attends to one key map (T = 1)"
    return _import_problem("natten")


def natten_window(case, device):
    """NATTEN's 2-D neighbourhood attention (layout (B, H, W, heads, D)), V zero-padded to D;
    NATTEN shifts the window inside the image, i.e. boundary="clamp"."""
    import natten

    na2d = getattr(natten, "na2d", None) or natten.functional.na2d
    K = 2 * case.radius + 1

    def fn(q, k, v):
        D, C = q.shape[1], v.shape[2]
        qn = q.permute(0, 2, 3, 1).unsqueeze(3)  # (B, H, W, 1, D)
        kn = k[:, 0].permute(0, 2, 3, 1).unsqueeze(3)
        vn = F.pad(v[:, 0], (0, 0, 0, 0, 0, max(D - C, 0))).permute(0, 2, 3, 1).unsqueeze(3)
        out = na2d(qn, kn, vn, kernel_size=K, dilation=case.dilation, scale=case.scale)
        return out[:, :, :, 0, :C].permute(0, 3, 1, 2)

    return fn


# ---------------------------------------------------------------------------- registry

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider(
            "densecorr", ("global", "topk", "local"),
            "densecorr public ops (global_attention / local_attention), default backend",
            _densecorr(None), check=_densecorr_check,
        ),
        Provider(
            "densecorr[reference]", ("global", "topk", "local"),
            "densecorr public ops with backend='reference' (chunked pure PyTorch)",
            _densecorr("reference"), check=_densecorr_check,
        ),
        Provider(
            "densecorr[affinity+copy]", ("local",),
            "densecorr local_affinity then local_copy (the unfused pair; stores the window volume)",
            _densecorr_two_step, check=_densecorr_check,
        ),
        Provider("naive", ("global",), "bmm + softmax + bmm (materialises N x M)", naive_global),
        Provider(
            "naive-topk", ("topk",), "bmm, torch.topk, softmax over the k, gather of V (materialises N x M)",
            naive_topk,
        ),
        Provider(
            "sdpa", ("global",), "F.scaled_dot_product_attention with V zero-padded to D", sdpa_padded
        ),
        Provider(
            "sampler+unfold", ("local",),
            "spatial_correlation_sampler + softmax + F.unfold of V (MAST/CorrFlow)",
            sampler_unfold, check=lambda case, device: _import_problem("spatial_correlation_sampler"),
        ),
        Provider("unfold-einsum", ("local",), "F.unfold of K and V with einsum", unfold_einsum),
        Provider(
            "flex", ("local",),
            "torch.compile(flex_attention) with a window mask_mod (boundary='mask'; compile excluded)",
            flex_window, check=_flex_check, no_backward=_flex_no_backward,
            boundary=lambda case: "mask", compiled=True,
        ),
        Provider(
            "natten", ("local",), "NATTEN na2d, V zero-padded to D (boundary='clamp'; GPU only)",
            natten_window, check=_natten_check, boundary=lambda case: "clamp",
        ),
    ]
}
