"""The C++ CPU backend (csrc/cpu) against the reference backend, through the public ops.

Every kernel, forward and backward, over a hypothesis shape fuzz (N=1, C=1/2, odd sizes,
radius 0, dilation 2/3, T=1..3 references, every boundary, circle windows, topk=1 and
topk=all); float64 gradcheck of the cpu backend; logits of magnitude 1e4; run-to-run
determinism; the baseline (non-AVX2) variant of the kernels.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import densecorr
from densecorr import _ext, geometry

from conftest import assert_close

if not _ext.has_kernel("global_attention_fwd", "CPU"):
    why = f"not built: {_ext.EXTENSION_ERROR}" if _ext._C is None else "built without csrc/cpu"
    pytest.skip(f"densecorr._C has no CPU kernels ({why})", allow_module_level=True)

FUZZ = settings(deadline=None, max_examples=50, derandomize=True)


def _leaves(*shapes, dtype, scale=1.0):
    return [(scale * torch.randn(*s, dtype=dtype)).requires_grad_() for s in shapes]


def _run(fn, inputs, backend, grad_seed=1):
    """Output and input gradients of fn(*inputs, backend=backend) for a fixed random cotangent."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*xs, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, xs, g, allow_unused=True)
    return out.detach(), [torch.zeros_like(x) if d is None else d for x, d in zip(xs, grads)]


def _agree(fn, inputs, dtype):
    out, grads = _run(fn, inputs, "cpu")
    ref_out, ref_grads = _run(fn, inputs, "reference")
    assert torch.isfinite(out).all()
    assert_close(out, ref_out, dtype)
    assert_close(grads, ref_grads, dtype)


# ----------------------------------------------------------------------------- global


@FUZZ
@given(
    B=st.integers(1, 2), N=st.integers(1, 40), M=st.integers(1, 150), D=st.integers(1, 20),
    C=st.sampled_from([1, 2, 3, 9, 17]), topk=st.sampled_from([None, 1, 3, "all"]),
    scale=st.sampled_from([0.3, 1.0, -0.7]), dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_global_attention_matches_reference(B, N, M, D, C, topk, scale, dtype):
    q, k, v = _leaves((B, N, D), (B, M, D), (B, M, C), dtype=dtype)
    topk = M if topk == "all" else (min(topk, M) if topk else None)
    _agree(lambda q, k, v, backend: densecorr.global_attention(q, k, v, scale, topk, backend=backend), (q, k, v), dtype)


@FUZZ
@given(
    B=st.integers(1, 2), N=st.integers(1, 30), H=st.integers(1, 9), W=st.integers(1, 13), D=st.integers(1, 12),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_project_coords_matches_reference(B, N, H, W, D, dtype):
    q, k = _leaves((B, N, D), (B, D, H, W), dtype=dtype)
    _agree(lambda q, k, backend: densecorr.project_coords(q, k, 0.8, backend=backend), (q, k), dtype)


# ----------------------------------------------------------------------------- local


@st.composite
def local_case(draw):
    boundary = draw(st.sampled_from(["mask", "zero", "clamp"]))
    radius, dilation = draw(st.integers(0, 2)), draw(st.sampled_from([1, 1, 2, 3]))
    low = (2 * radius + 1) * dilation if boundary == "clamp" else 1
    return dict(
        B=draw(st.integers(1, 2)), T=draw(st.integers(1, 3)), D=draw(st.integers(1, 6)),
        C=draw(st.sampled_from([1, 2, 3, 5])), H=draw(st.integers(low, low + 5)), W=draw(st.integers(low, low + 12)),
        radius=radius, dilation=dilation, boundary=boundary, window=draw(st.sampled_from(["square", "circle"])),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
    )


_window_size = geometry.window_size  # the one definition of P


@FUZZ
@given(case=local_case(), topk=st.sampled_from([None, 1, 2, "all"]))
def test_local_attention_matches_reference(case, topk):
    c = case
    q, k, v = _leaves(
        (c["B"], c["D"], c["H"], c["W"]), (c["B"], c["T"], c["D"], c["H"], c["W"]),
        (c["B"], c["T"], c["C"], c["H"], c["W"]), dtype=c["dtype"],
    )
    positions = c["T"] * _window_size(c["radius"], c["window"])
    topk = positions if topk == "all" else (min(topk, positions) if topk else None)
    win = dict(radius=c["radius"], dilation=c["dilation"], boundary=c["boundary"], window=c["window"])
    _agree(
        lambda q, k, v, backend: densecorr.local_attention(q, k, v, scale=0.9, topk=topk, backend=backend, **win),
        (q, k, v), c["dtype"],
    )


@FUZZ
@given(case=local_case(), normalize=st.booleans())
def test_local_affinity_matches_reference(case, normalize):
    c = case
    q, k = _leaves((c["B"], c["D"], c["H"], c["W"]), (c["B"], c["T"], c["D"], c["H"], c["W"]), dtype=c["dtype"])
    win = dict(radius=c["radius"], dilation=c["dilation"], boundary=c["boundary"], window=c["window"])
    fn = lambda q, k, backend: densecorr.local_affinity(q, k, scale=1.1, normalize=normalize, backend=backend, **win)
    out, grads = _run(fn, (q, k), "cpu")
    ref_out, ref_grads = _run(fn, (q, k), "reference")
    # boundary="mask" without normalisation gives -inf at excluded positions, in both.
    assert torch.equal(torch.isinf(out), torch.isinf(ref_out))
    finite = torch.isfinite(ref_out)
    assert_close(out[finite], ref_out[finite], c["dtype"])
    assert_close(grads, ref_grads, c["dtype"])


@FUZZ
@given(case=local_case())
def test_local_copy_matches_reference(case):
    c = case
    P = _window_size(c["radius"], c["window"])
    attn, v = _leaves(
        (c["B"], c["T"] * P, c["H"], c["W"]), (c["B"], c["T"], c["C"], c["H"], c["W"]), dtype=c["dtype"]
    )
    win = dict(radius=c["radius"], dilation=c["dilation"], boundary=c["boundary"], window=c["window"])
    _agree(lambda a, v, backend: densecorr.local_copy(a, v, backend=backend, **win), (attn, v), c["dtype"])


def test_local_attention_wide_rows_and_large_radius():
    """Many strips per row, windows wider than a strip, both edges: the vector paths."""
    for boundary in ("mask", "zero", "clamp"):
        q, k, v = _leaves((1, 8, 13, 37), (1, 2, 8, 13, 37), (1, 2, 3, 13, 37), dtype=torch.float64)
        fn = lambda q, k, v, backend: densecorr.local_attention(
            q, k, v, radius=4, dilation=1, scale=0.5, boundary=boundary, backend=backend
        )
        _agree(fn, (q, k, v), torch.float64)


# ----------------------------------------------------------------------------- gradcheck


def _gradcheck(fn, *shapes):
    xs = _leaves(*shapes, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: fn(*a), xs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("topk", [None, 2])
def test_gradcheck_global_attention(topk):
    _gradcheck(lambda q, k, v: densecorr.global_attention(q, k, v, 0.7, topk, backend="cpu"), (2, 3, 4), (2, 5, 4), (2, 5, 2))


def test_gradcheck_project_coords():
    _gradcheck(lambda q, k: densecorr.project_coords(q, k, 0.9, backend="cpu"), (1, 3, 4), (1, 4, 3, 2))


@pytest.mark.parametrize("boundary", ["mask", "zero", "clamp"])
@pytest.mark.parametrize("topk", [None, 3])
def test_gradcheck_local_attention(boundary, topk):
    _gradcheck(
        lambda q, k, v: densecorr.local_attention(q, k, v, 1, 1, 0.8, boundary, "square", topk, backend="cpu"),
        (1, 2, 4, 5), (1, 2, 2, 4, 5), (1, 2, 2, 4, 5),
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_local_affinity(normalize):
    def fn(q, k):
        out = densecorr.local_affinity(q, k, 1, 2, 0.8, normalize, "zero", "circle", backend="cpu")
        return out
    _gradcheck(fn, (1, 2, 4, 5), (1, 2, 4, 5))


def test_gradcheck_local_copy():
    _gradcheck(lambda a, v: densecorr.local_copy(a, v, 1, 1, "clamp", "square", backend="cpu"), (1, 9, 4, 5), (1, 2, 4, 5))


# ----------------------------------------------------------------------------- numerics


def test_large_logits_are_finite():
    """Logits of magnitude ~1e4 (softmax of a near one-hot): finite and equal to the reference."""
    q, k, v = _leaves((1, 20, 8), (1, 30, 8), (1, 30, 3), dtype=torch.float32)
    with torch.no_grad():
        q *= 60.0
        k *= 60.0
    for fn in (
        lambda q, k, v, backend: densecorr.global_attention(q, k, v, 1.0, backend=backend),
        lambda q, k, v, backend: densecorr.global_attention(q, k, v, 1.0, 4, backend=backend),
    ):
        out, grads = _run(fn, (q, k, v), "cpu")
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        assert_close(out, fn(q, k, v, "reference").detach())
    ql, kl, vl = _leaves((1, 8, 6, 7), (1, 2, 8, 6, 7), (1, 2, 3, 6, 7), dtype=torch.float32)
    with torch.no_grad():
        ql *= 40.0
        kl *= 40.0
    for boundary in ("mask", "zero", "clamp"):
        fn = lambda q, k, v, backend: densecorr.local_attention(q, k, v, 1, boundary=boundary, backend=backend)
        out, grads = _run(fn, (ql, kl, vl), "cpu")
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        assert_close(out, fn(ql, kl, vl, "reference").detach())


def test_deterministic():
    """Two runs, and runs on 1 or all threads, give bit-identical outputs and gradients (no
    atomics; reductions in a fixed order)."""
    q, k, v = _leaves((2, 300, 16), (2, 250, 16), (2, 250, 5), dtype=torch.float32)
    ql, kl, vl = _leaves((1, 8, 20, 23), (1, 2, 8, 20, 23), (1, 2, 4, 20, 23), dtype=torch.float32)
    cases = [
        (lambda q, k, v, backend: densecorr.global_attention(q, k, v, 0.3, backend=backend), (q, k, v)),
        (lambda q, k, v, backend: densecorr.global_attention(q, k, v, 0.3, 7, backend=backend), (q, k, v)),
        (lambda q, k, v, backend: densecorr.local_attention(q, k, v, 3, backend=backend), (ql, kl, vl)),
        (lambda q, k, v, backend: densecorr.local_attention(q, k, v, 2, topk=5, backend=backend), (ql, kl, vl)),
    ]
    threads = torch.get_num_threads()
    for fn, xs in cases:
        a, ga = _run(fn, xs, "cpu")
        b, gb = _run(fn, xs, "cpu")
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
        try:  # the work split does not depend on the thread count either
            torch.set_num_threads(1)
            c, gc = _run(fn, xs, "cpu")
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(a, c) and all(torch.equal(x, y) for x, y in zip(ga, gc))


def test_baseline_simd_variant(monkeypatch):
    """DENSECORR_CPU_SIMD=base selects the non-AVX2 build of the kernels: same results."""
    monkeypatch.setenv("DENSECORR_CPU_SIMD", "base")
    q, k, v = _leaves((1, 30, 9), (1, 41, 9), (1, 41, 3), dtype=torch.float32)
    _agree(lambda q, k, v, backend: densecorr.global_attention(q, k, v, 0.5, backend=backend), (q, k, v), torch.float32)
    ql, kl, vl = _leaves((1, 5, 10, 19), (1, 2, 5, 10, 19), (1, 2, 3, 10, 19), dtype=torch.float32)
    fn = lambda q, k, v, backend: densecorr.local_attention(q, k, v, 2, 2, boundary="clamp", backend=backend)
    _agree(fn, (ql, kl, vl), torch.float32)
