"""The op contract (docs/design.md, "The ops") through the reference backend: against textbook
formulas, gradients, torch.library registration, torch.compile, bad input, backends."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import densecorr
from densecorr import geometry, reference

from conftest import REPO, assert_close
import cases
import textbook

F64 = torch.float64
REF = "reference"


def rand(*shape, dtype=F64, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


# --------------------------------------------------------------------------- global ops

@pytest.mark.parametrize("B,N,M,D,C,topk", cases.GLOBAL, ids=cases.GLOBAL_IDS)
def test_global_attention_matches_textbook(B, N, M, D, C, topk):
    q, k, v = rand(B, N, D, grad=True), rand(B, M, D, grad=True), rand(B, M, C, grad=True)
    out = densecorr.global_attention(q, k, v, scale=0.7, topk=topk, backend=REF)
    expected = textbook.global_attention(q, k, v, 0.7, topk or 0)
    assert_close(out, expected)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g))


def test_global_attention_chunked_equals_unchunked(monkeypatch):
    q, k, v = rand(2, 37, 6, grad=True), rand(2, 23, 6, grad=True), rand(2, 23, 3, grad=True)
    for topk in (None, 5):
        full = densecorr.global_attention(q, k, v, 1.3, topk, backend=REF)
        grads = torch.autograd.grad(full.sum(), (q, k, v))
        with monkeypatch.context() as m:
            m.setattr(reference, "CHUNK_ELEMENTS", 50)  # ~2 queries per chunk
            chunked = densecorr.global_attention(q, k, v, 1.3, topk, backend=REF)
            chunked_grads = torch.autograd.grad(chunked.sum(), (q, k, v))
        assert_close(chunked, full)
        assert_close(chunked_grads, grads)


def test_global_attention_large_logits_finite():
    q, k, v = rand(1, 9, 4, dtype=torch.float32), rand(1, 12, 4, dtype=torch.float32), rand(1, 12, 2, dtype=torch.float32)
    q = q / q.norm(dim=-1, keepdim=True) * 100
    k = k / k.norm(dim=-1, keepdim=True) * 100  # logits up to +-1e4
    out = densecorr.global_attention(q, k, v, backend=REF)
    assert torch.isfinite(out).all()
    assert_close(out, textbook.global_attention(q.double(), k.double(), v.double(), 1.0).float(), torch.float32)


def test_global_affinity_matches_textbook():
    q, k = rand(2, 5, 3, grad=True), rand(2, 8, 3, grad=True)
    a = densecorr.global_affinity(q, k, 2.0)
    expected = torch.softmax(2.0 * q @ k.transpose(1, 2), -1)
    assert_close(a, expected)
    assert_close(a.sum(-1), torch.ones(2, 5, dtype=F64))
    g = torch.randn_like(a)
    assert_close(torch.autograd.grad(a, (q, k), g), torch.autograd.grad(expected, (q, k), g))


@pytest.mark.parametrize("query_image", [False, True])
def test_project_coords_matches_textbook(query_image):
    k = rand(2, 4, 5, 7, grad=True)
    q = rand(2, 4, 3, 2, grad=True) if query_image else rand(2, 6, 4, grad=True)
    out = densecorr.project_coords(q, k, 1.5, backend=REF)
    tokens = q.flatten(2).transpose(1, 2) if query_image else q
    expected = textbook.project_coords(tokens, k, 1.5)
    assert out.shape == (2, tokens.shape[1], 2)
    assert_close(out, expected)
    assert (out[..., 0] >= 0).all() and (out[..., 0] <= 6).all() and (out[..., 1] <= 4).all()
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k), g), torch.autograd.grad(expected, (q, k), g))


def test_project_coords_finds_a_peaked_match():
    # A query equal to one key, sharpened: the expected position is that key's cell.
    k = torch.nn.functional.normalize(rand(1, 16, 6, 9), dim=1)
    q = k[:, :, 4, 7].reshape(1, 1, 16)
    out = densecorr.project_coords(q, k, scale=200.0, backend=REF)
    assert_close(out, torch.tensor([[[7.0, 4.0]]], dtype=F64), torch.float16)


@pytest.mark.parametrize("weighted", [False, True])
def test_bbox_from_coords(weighted):
    coords = rand(3, 10, 2, grad=True)
    weights = torch.rand(3, 10, dtype=F64).requires_grad_() if weighted else None
    centre, size = densecorr.bbox_from_coords(coords, weights)
    ec, es = textbook.bbox(coords, weights)
    assert_close(centre, ec)
    assert_close(size, es)
    inputs = (coords, weights) if weighted else (coords,)
    g = (torch.randn_like(centre), torch.randn_like(size))
    assert_close(torch.autograd.grad((centre, size), inputs, g), torch.autograd.grad((ec, es), inputs, g))
    # hand-computed: points at x = 0, 2, 4 -> centre 2, mean |dev| 4/3, size 8/3
    pts = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]], dtype=F64)
    c, s = densecorr.bbox_from_coords(pts)
    assert_close(c, torch.tensor([[2.0, 1.0]], dtype=F64))
    assert_close(s, torch.tensor([[8.0 / 3.0, 0.0]], dtype=F64))


# --------------------------------------------------------------------------- local ops

def _local_inputs(B, T, D, C, H, W, grad=True):
    q = rand(B, D, H, W, grad=grad)
    k = rand(B, T, D, H, W, grad=grad) if T > 1 else rand(B, D, H, W, grad=grad)
    v = rand(B, T, C, H, W, grad=grad) if T > 1 else rand(B, C, H, W, grad=grad)
    return q, k, v


def _k5(t):
    return t if t.dim() == 5 else t.unsqueeze(1)


@pytest.mark.parametrize("B,T,D,C,H,W,radius,dilation,boundary,window,topk", cases.LOCAL, ids=cases.LOCAL_IDS)
def test_local_attention_matches_textbook(B, T, D, C, H, W, radius, dilation, boundary, window, topk):
    q, k, v = _local_inputs(B, T, D, C, H, W)
    args = (radius, dilation, 0.8, boundary, window)
    out = densecorr.local_attention(q, k, v, *args, topk=topk, backend=REF)
    expected = textbook.local_attention(q, _k5(k), _k5(v), *args, topk=topk or 0)
    assert out.shape == (B, C, H, W)
    assert_close(out, expected)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g))


@pytest.mark.parametrize("B,T,D,C,H,W,radius,dilation,boundary,window,topk", cases.LOCAL, ids=cases.LOCAL_IDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_local_affinity_and_copy_match_textbook(B, T, D, C, H, W, radius, dilation, boundary, window, topk, normalize):
    q, k, v = _local_inputs(B, T, D, C, H, W)
    attn = densecorr.local_affinity(q, k, radius, dilation, 0.8, normalize, boundary, window, backend=REF)
    expected = textbook.local_affinity(q, _k5(k), radius, dilation, 0.8, normalize, boundary, window)
    P = geometry.window_size(radius, window)
    assert attn.shape == (B, T * P, H, W)
    assert_close(attn, expected)
    finite = torch.isfinite(expected)
    g = torch.randn_like(attn) * finite
    grads = torch.autograd.grad(attn, (q, k), g)
    expected_grads = torch.autograd.grad(expected.masked_fill(~finite, 0), (q, k), g)
    assert_close(grads, expected_grads)
    weights = torch.softmax(rand(B, T * P, H, W), 1).requires_grad_()
    out = densecorr.local_copy(weights, v, radius, dilation, boundary, window, backend=REF)
    expected_out = textbook.local_copy(weights, _k5(v), radius, dilation, boundary, window)
    assert_close(out, expected_out)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (weights, v), g), torch.autograd.grad(expected_out, (weights, v), g))


def test_local_affinity_is_correlation_sampler_with_zero_boundary():
    # spatial_correlation_sampler(kernel_size=1, patch_size=2r+1, dilation_patch=d) with zero padding
    q, k, _ = _local_inputs(1, 1, 3, 1, 6, 7, grad=False)
    r, d = 2, 2
    corr = densecorr.local_affinity(q, k, r, d, normalize=False, boundary="zero", backend=REF)
    kp = torch.nn.functional.pad(k, (r * d,) * 4)
    for p, (dy, dx) in enumerate((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)):
        shifted = kp[:, :, r * d + dy * d : r * d + dy * d + 6, r * d + dx * d : r * d + dx * d + 7]
        assert_close(corr[:, p], (q * shifted).sum(1))


def test_clamp_window_stays_inside_and_matches_square_in_the_interior():
    q, k, v = _local_inputs(1, 1, 2, 1, 9, 9, grad=False)
    clamp = densecorr.local_affinity(q, k, 1, 2, normalize=False, boundary="clamp", backend=REF)
    mask = densecorr.local_affinity(q, k, 1, 2, normalize=False, boundary="mask", backend=REF)
    assert torch.isfinite(clamp).all()
    assert_close(clamp[..., 2:7, 2:7], mask[..., 2:7, 2:7])  # no shift where the window fits
    assert not torch.allclose(clamp[..., 0, 0], mask[..., 0, 0].nan_to_num(0, 0, 0))


def test_local_chunked_equals_unchunked(monkeypatch):
    q, k, v = _local_inputs(1, 2, 3, 2, 7, 6)
    for boundary in ("mask", "clamp"):
        args = (1, 2, 1.0, boundary, "circle") if boundary == "mask" else (1, 1, 1.0, boundary, "square")
        full = densecorr.local_attention(q, k, v, *args, topk=4, backend=REF)
        grads = torch.autograd.grad(full.sum(), (q, k, v))
        with monkeypatch.context() as m:
            m.setattr(reference, "CHUNK_ELEMENTS", 60)  # one row per chunk
            chunked = densecorr.local_attention(q, k, v, *args, topk=4, backend=REF)
            chunked_grads = torch.autograd.grad(chunked.sum(), (q, k, v))
        assert_close(chunked, full)
        assert_close(chunked_grads, grads)


def test_circle_window_order_and_size():
    offsets = geometry.window_offsets(2, "circle")
    assert len(offsets) == 13 and geometry.window_size(12, "circle") == 441
    assert list(offsets) == sorted(offsets)  # row-major
    assert (0, 2) in offsets and (0, 0) not in offsets


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2), T=st.integers(1, 3), D=st.integers(1, 4), C=st.integers(1, 3), H=st.integers(1, 7),
    W=st.integers(1, 7), radius=st.integers(0, 2), dilation=st.integers(1, 3),
    boundary=st.sampled_from(["mask", "zero", "clamp"]), window=st.sampled_from(["square", "circle"]),
    topk_frac=st.sampled_from([None, 0.0, 0.5, 1.0]),
)
def test_local_attention_fuzz(B, T, D, C, H, W, radius, dilation, boundary, window, topk_frac):
    if boundary == "clamp" and min(H, W) < (2 * radius + 1) * dilation:
        boundary = "mask"
    P = T * geometry.window_size(radius, window)
    topk = None if topk_frac is None else max(1, round(topk_frac * P))
    q, k, v = _local_inputs(B, T, D, C, H, W)
    args = (radius, dilation, 1.1, boundary, window)
    out = densecorr.local_attention(q, k, v, *args, topk=topk, backend=REF)
    expected = textbook.local_attention(q, _k5(k), _k5(v), *args, topk=topk or 0)
    assert_close(out, expected)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 20), M=st.integers(1, 20), D=st.integers(1, 6), C=st.integers(1, 4),
       topk_frac=st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_global_attention_fuzz(B, N, M, D, C, topk_frac):
    topk = None if topk_frac is None else max(1, round(topk_frac * M))
    q, k, v = rand(B, N, D, grad=True), rand(B, M, D, grad=True), rand(B, M, C, grad=True)
    out = densecorr.global_attention(q, k, v, 0.9, topk, backend=REF)
    expected = textbook.global_attention(q, k, v, 0.9, topk or 0)
    assert_close(out, expected)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g))


# --------------------------------------------------------------------------- gradcheck, opcheck, compile


def test_gradcheck_float64():
    q, k, v = rand(2, 4, 3, grad=True), rand(2, 6, 3, grad=True), rand(2, 6, 2, grad=True)
    for topk in (None, 2):
        assert torch.autograd.gradcheck(lambda a, b, c: densecorr.global_attention(a, b, c, 0.6, topk, backend=REF), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b: densecorr.global_affinity(a, b, 0.6), (q, k))
    kimg = rand(2, 3, 2, 3, grad=True)
    assert torch.autograd.gradcheck(lambda a, b: densecorr.project_coords(a, b, 0.6, backend=REF), (q, kimg))
    w = torch.rand(2, 6, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: densecorr.bbox_from_coords(a, b), (v, w))
    ql, kl, vl = _local_inputs(1, 2, 2, 2, 4, 5)
    for boundary, window, topk in (("mask", "square", None), ("zero", "circle", 3), ("clamp", "square", 5)):
        args = (1, 1, 0.7, boundary, window)
        assert torch.autograd.gradcheck(lambda a, b, c: densecorr.local_attention(a, b, c, *args, topk=topk, backend=REF), (ql, kl, vl))
        assert torch.autograd.gradcheck(
            lambda a, b: densecorr.local_affinity(a, b, 1, 1, 0.7, False, boundary, window, backend=REF).nan_to_num(0, 0, 0),
            (ql, kl),
            fast_mode=True,  # many outputs: check random projections of the Jacobian
        )
    attn = torch.rand(1, 18, 4, 5, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: densecorr.local_copy(a, b, 1, backend=REF), (attn, vl), fast_mode=True)


def _opcheck_cases():
    q, k, v = rand(2, 5, 3, grad=True), rand(2, 7, 3, grad=True), rand(2, 7, 2, grad=True)
    ql, kl, vl = rand(1, 3, 4, 5, grad=True), rand(1, 2, 3, 4, 5, grad=True), rand(1, 2, 2, 4, 5, grad=True)
    attn = torch.rand(1, 2 * 9, 4, 5, dtype=F64).requires_grad_()
    ops = torch.ops.densecorr
    return [
        (ops.global_attention_fwd, (q, k, v, 0.5, 0, REF)),
        (ops.global_attention_fwd, (q, k, v, 0.5, 3, REF)),
        (ops.global_affinity, (q, k, 0.5)),
        (ops.project_coords_fwd, (q, rand(2, 3, 4, 5, grad=True), 0.5, REF)),
        (ops.bbox_from_coords, (v, torch.rand(2, 7, dtype=F64, requires_grad=True))),
        (ops.bbox_from_coords, (v, None)),
        (ops.local_affinity_fwd, (ql, kl, 1, 1, 0.5, True, "mask", "square", REF)),
        (ops.local_affinity_fwd, (ql, kl, 1, 2, 0.5, False, "zero", "circle", REF)),
        (ops.local_copy_fwd, (attn, vl, 1, 1, "mask", "square", REF)),
        (ops.local_attention_fwd, (ql, kl, vl, 1, 1, 0.5, "mask", "square", 0, REF)),
        (ops.local_attention_fwd, (ql, kl, vl, 1, 2, 0.5, "zero", "circle", 4, REF)),
    ]


@pytest.mark.parametrize("case", range(11))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_forward_backward():
    q, k, v = rand(1, 6, 3, grad=True), rand(1, 9, 3, grad=True), rand(1, 9, 3, grad=True)
    ql, kl, vl = rand(1, 3, 5, 6, grad=True), rand(1, 2, 3, 5, 6, grad=True), rand(1, 2, 2, 5, 6, grad=True)

    def f(q, k, v, ql, kl, vl):
        g = densecorr.global_attention(q, k, v, 0.5, topk=4, backend=REF)
        c, s = densecorr.bbox_from_coords(densecorr.project_coords(q, ql, backend=REF))
        a = densecorr.global_affinity(q, k)
        loc = densecorr.local_attention(ql, kl, vl, 1, boundary="zero", window="circle", backend=REF)
        attn = densecorr.local_affinity(ql, kl, 1, backend=REF)
        cp = densecorr.local_copy(attn, vl, 1, backend=REF)
        return g.sum() + c.sum() + s.sum() + (a * a).sum() + loc.sum() + (cp * cp).sum()

    args = (q, k, v, ql, kl, vl)
    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    eager = f(*args)
    got = compiled(*args)
    assert_close(got, eager)
    assert_close(torch.autograd.grad(got, args), torch.autograd.grad(eager, args))


# --------------------------------------------------------------------------- bad input

q3, k3, v3 = torch.randn(2, 5, 4), torch.randn(2, 7, 4), torch.randn(2, 7, 3)
ql4, kl4, vl4 = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6), torch.randn(1, 2, 6, 6)
BAD = [
    (lambda: densecorr.global_attention(q3[0], k3, v3), ValueError, "q must be 3-D"),
    (lambda: densecorr.global_attention(q3, k3[:1], v3), ValueError, "batch sizes"),
    (lambda: densecorr.global_attention(q3, k3[..., :3], v3), ValueError, "feature dims D"),
    (lambda: densecorr.global_attention(q3, k3, v3[:, :6]), ValueError, "key counts M"),
    (lambda: densecorr.global_attention(q3, k3, v3.double()), TypeError, "v is torch.float64"),
    (lambda: densecorr.global_attention(q3, k3, v3, topk=0), ValueError, "topk must be >= 1"),
    (lambda: densecorr.global_attention(q3, k3, v3, topk=8), ValueError, "topk=8 exceeds"),
    (lambda: densecorr.global_attention(q3, k3, v3, scale=float("nan")), ValueError, "scale must be finite"),
    (lambda: densecorr.global_attention(q3, k3, v3, scale=float("inf")), ValueError, "scale must be finite"),
    (lambda: densecorr.global_attention(q3[:, :0], k3, v3), ValueError, "q is empty"),
    (lambda: densecorr.global_attention(q3.long(), k3, v3), TypeError, "q must be a floating-point"),
    (lambda: densecorr.global_attention(q3, k3, v3, backend="gpu"), ValueError, "backend must be one of"),
    (lambda: densecorr.global_attention(q3, k3, v3, backend="cuda"), RuntimeError, "cuda backend needs cuda tensors"),
    (lambda: densecorr.global_affinity(q3, k3[..., :2]), ValueError, "feature dims D"),
    (lambda: densecorr.project_coords(q3, k3), ValueError, "k must be 4-D"),
    (lambda: densecorr.bbox_from_coords(v3), ValueError, "coords must be (B, N, 2)"),
    (lambda: densecorr.bbox_from_coords(v3[..., :2], torch.rand(2, 6)), ValueError, "weights must be (B, N)"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, radius=-1), ValueError, "radius must be >= 0"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1.5), TypeError, "radius must be an int"),
    (lambda: densecorr.local_attention(ql4, kl4[..., :5], vl4, 1), ValueError, "widths W"),
    (lambda: densecorr.local_attention(ql4, kl4[:, :, :5], vl4, 1), ValueError, "heights H"),
    (lambda: densecorr.local_attention(ql4, kl4[:, :3], vl4, 1), ValueError, "feature dims D"),
    (lambda: densecorr.local_attention(ql4, torch.randn(1, 2, 4, 6, 6), torch.randn(1, 3, 2, 6, 6), 1), ValueError, "reference counts T"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1, boundary="wrap"), ValueError, "boundary must be one of"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1, window="diamond"), ValueError, "window must be one of"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 2, boundary="clamp", dilation=2), ValueError, 'boundary="clamp" needs'),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1, topk=10), ValueError, "topk=10 exceeds"),
    (lambda: densecorr.local_attention(ql4, kl4, vl4, 1, scale=float("nan")), ValueError, "scale must be finite"),
    (lambda: densecorr.local_copy(torch.rand(1, 8, 6, 6), vl4, 1), ValueError, "attn has 8 window positions"),
    (lambda: densecorr.local_affinity(ql4, torch.randn(1, 4, 6, 6, 1, 1), 1), ValueError, "k must be"),
    (lambda: densecorr.local_affinity(ql4, kl4.to(torch.float16), 1), TypeError, "k is torch.float16"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_names_the_argument(case):
    call, error, message = BAD[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# --------------------------------------------------------------------------- layout, backends, extension


def test_non_contiguous_inputs():
    q, k, v = rand(5, 2, 4).transpose(0, 1), rand(4, 7, 2)[..., :2].permute(2, 1, 0), rand(2, 3, 7).transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    assert_close(densecorr.global_attention(q, k, v, backend=REF), textbook.global_attention(q, k, v, 1.0))
    ql = rand(1, 6, 5, 3).permute(0, 3, 1, 2)
    kl = rand(1, 3, 12, 5)[:, :, ::2]
    vl = rand(1, 5, 6, 2).permute(0, 3, 2, 1)
    assert_close(
        densecorr.local_attention(ql, kl, vl, 1, backend=REF),
        textbook.local_attention(ql, kl[:, None], vl[:, None], 1, 1, 1.0, "mask", "square"),
    )


def test_backend_env_variable(monkeypatch):
    q, k, v = torch.randn(1, 3, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 1)
    monkeypatch.setenv("DENSECORR_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run global_attention_fwd"):
        densecorr.global_attention(q, k, v)
    monkeypatch.setenv("DENSECORR_BACKEND", "reference")
    assert_close(densecorr.global_attention(q, k, v), textbook.global_attention(q, k, v, 1.0))
    monkeypatch.setenv("DENSECORR_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        densecorr.global_attention(q, k, v)


def test_available_backends_explain_refusals():
    reasons = densecorr.available_backends("global_attention_fwd")
    assert reasons["reference"] is None
    assert "cuda" in reasons["cuda"]
    assert reasons["triton"]  # CPU tensors never reach Triton without TRITON_INTERPRET + an explicit request


def test_package_works_without_extension():
    """With the extension disabled: one clear warning, every op runs (reference)."""
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import densecorr\n"
        "msgs = [str(x.message) for x in w if 'densecorr' in str(x.message)]\n"
        "assert len(msgs) == 1 and 'reference' in msgs[0], msgs\n"
        "assert densecorr.build_info()['extension'] is False\n"
        "assert 'not built' in densecorr.available_backends('global_attention_fwd')['cpu'] or 'disabled' in densecorr.available_backends('global_attention_fwd')['cpu']\n"
        "q = torch.randn(1, 4, 3); k = torch.randn(1, 5, 3); v = torch.randn(1, 5, 2)\n"
        "assert densecorr.global_attention(q, k, v).shape == (1, 4, 2)\n"
        "qi = torch.randn(1, 3, 4, 4)\n"
        "assert densecorr.local_attention(qi, qi, qi, 1).shape == (1, 3, 4, 4)\n"
        "a = densecorr.local_affinity(qi, qi, 1); assert densecorr.local_copy(a, qi, 1).shape == (1, 3, 4, 4)\n"
        "assert densecorr.project_coords(q, qi).shape == (1, 4, 2)\n"
        "assert densecorr.bbox_from_coords(torch.rand(1, 4, 2))[0].shape == (1, 2)\n"
        "assert densecorr.global_affinity(q, k).shape == (1, 4, 5)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, DENSECORR_DISABLE_EXTENSION="1")
    env.pop("DENSECORR_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
