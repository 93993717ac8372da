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


# ----------------------------------------------------------------------------- top-k pre-filter
# The top-k forward's int16 pre-filter (csrc/cpu/topk_prefilter.h) must give exactly what the
# plain path gives: DENSECORR_TOPK_PREFILTER=on forces it wherever it can run, =off never.

needs_avx2 = pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX"),
                                reason="the pre-filter exists in the AVX2 / AVX-512 variants only")


def _topk_fwd(monkeypatch, mode, q, k, v, scale, topk):
    monkeypatch.setenv("DENSECORR_TOPK_PREFILTER", mode)
    with torch.no_grad():
        return torch.ops.densecorr_ext.global_attention_fwd(q, k, v, scale, topk)


def _assert_prefilter_exact(monkeypatch, q, k, v, scale, topk):
    """The pre-filtered forward equals the plain one bit for bit (out, lse, idx)."""
    plain = _topk_fwd(monkeypatch, "off", q, k, v, scale, topk)
    pre = _topk_fwd(monkeypatch, "on", q, k, v, scale, topk)
    for name, a, b in zip(("out", "lse", "idx"), pre, plain):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, atol=0, rtol=0, equal_nan=True)), name
    return plain


def _unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def _awkward_topk_cases():
    g = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=g)
    unit = lambda *s: torch.nn.functional.normalize(rnd(*s), dim=-1)
    cases = {}
    # Near-ties: copies of one key perturbed by 1e-5 relative (below the int16 resolution).
    k = unit(1, 300, 64)
    k[0, 100:160] = k[0, 7] * (1 + 1e-5 * rnd(60, 64))
    q = unit(1, 40, 64)
    q[0, :20] = k[0, 7]
    cases["near_ties"] = (q, k, rnd(1, 300, 3), 14.3, 10)
    # Exact duplicates: the tie goes to the smaller index, as torch.topk.
    k = unit(1, 200, 32)
    k[0, 50:120] = k[0, 3]
    q = unit(1, 30, 32)
    q[0, :15] = k[0, 3]
    cases["duplicates"] = (q, k, rnd(1, 200, 2), 5.0, 12)
    # Keys that differ only in their last bits.
    k = unit(1, 150, 48)
    base = k[0, 11].clone()
    for j in range(40, 80):
        k[0, j] = torch.nextafter(base, base + (1.0 if j % 2 else -1.0)) if j % 3 else base
    q = unit(1, 25, 48)
    q[0, :12] = base
    cases["last_bits"] = (q, k, rnd(1, 150, 4), 20.0, 7)
    # Large-norm outliers among the keys (a wide bound for their queries), negative scale.
    k = unit(2, 257, 40)
    k[:, ::37] *= 1e3
    cases["outliers_negative_scale"] = (unit(2, 33, 40), k, rnd(2, 257, 5), -0.9, 6)
    # Odd D, M not a multiple of the key panel, few queries (a partial query tile).
    cases["odd_D"] = (unit(1, 5, 33), unit(1, 1001, 33), rnd(1, 1001, 3), 10.0, 9)
    cases["D1"] = (rnd(1, 17, 1), rnd(1, 70, 1), rnd(1, 70, 2), 1.0, 4)
    # topk = M; and zero query / key rows (all logits of a zero query tie).
    cases["topk_all"] = (unit(1, 13, 16), unit(1, 77, 16), rnd(1, 77, 3), 3.0, 77)
    q, k = unit(1, 20, 24), unit(1, 90, 24)
    q[0, 3] = 0
    k[0, 10:15] = 0
    cases["zero_rows"] = (q, k, rnd(1, 90, 2), 4.0, 5)
    # Zero queries over many keys: every logit ties at 0, the row's candidates overflow and it
    # is computed over all keys.
    q = unit(1, 10, 64)
    q[0, 2] = 0
    q[0, 5] = 0
    cases["zero_rows_overflow"] = (q, unit(1, 3000, 64), rnd(1, 3000, 3), 6.0, 3)
    # Logits of magnitude ~1e4 and tiny ones in one batch.
    q = 60.0 * rnd(1, 24, 8)
    q[0, :5] *= 1e-6
    cases["large_small"] = (q, 60.0 * rnd(1, 64, 8), rnd(1, 64, 3), 1.0, 5)
    return cases


_AWKWARD = _awkward_topk_cases()
_TIED = {"near_ties", "duplicates", "last_bits", "zero_rows", "zero_rows_overflow"}


@needs_avx2
@pytest.mark.parametrize("name", sorted(_AWKWARD))
def test_topk_prefilter_exact_on_awkward_inputs(monkeypatch, name):
    q, k, v, scale, topk = _AWKWARD[name]
    out, lse, idx = _assert_prefilter_exact(monkeypatch, q, k, v, scale, topk)
    if name not in _TIED:  # (with ties, float64 may keep other keys, and torch.topk breaks them its own way)
        ref = densecorr.global_attention(q.double(), k.double(), v.double(), scale, topk, backend="reference")
        assert_close(out, ref, torch.float32)


@needs_avx2
def test_topk_prefilter_margin_is_needed(monkeypatch):
    """Near-tied keys whose int16 approximate logits rank differently from their exact ones:
    a pre-filter keeping only the approximate top-k (margin 0) would return other keys than
    the plain path. The kernel returns the plain path's."""
    g = torch.Generator().manual_seed(0)
    D, M, topk, scale = 64, 400, 10, 10.0
    k = torch.nn.functional.normalize(torch.randn(1, M, D, generator=g), dim=-1)
    k[0, 200:260] = k[0, 5] * (1 + 1e-4 * torch.randn(60, D, generator=g))
    q = k[:, 5:6].expand(1, 8, D) + 1e-3 * torch.randn(1, 8, D, generator=g)
    # The quantisation of topk_prefilter.h: per row step max|x| / qmax, qmax the largest with
    # ceil(D/2) * 2 * qmax^2 < 2^31 (rounding ties aside).
    qmax = int(((2**31 - 1) / (D + D % 2)) ** 0.5)

    def quant(x):
        step = x.abs().amax(-1, keepdim=True) / qmax
        return (x / step).round() * step

    approx = torch.einsum("bnd,bmd->bnm", quant(scale * q).double(), quant(k).double())
    margin0 = approx.topk(topk, -1).indices.sort(-1).values
    out, lse, idx = _assert_prefilter_exact(monkeypatch, q, k, torch.randn(1, M, 3, generator=g), scale, topk)
    assert (idx.sort(-1).values != margin0).any(-1).all(), "every row must defeat a margin-0 filter"


@needs_avx2
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["q", "k"])
def test_topk_prefilter_falls_back_on_non_finite_input(monkeypatch, bad, where):
    q, k, v = _unit(1, 20, 32), _unit(1, 300, 32), torch.randn(1, 300, 3)
    (q if where == "q" else k)[0, 4, 7] = bad
    _assert_prefilter_exact(monkeypatch, q, k, v, 2.0, 5)


@needs_avx2
def test_topk_prefilter_auto_and_base_variant(monkeypatch):
    """The default (auto) choice at a shape where the pre-filter runs, and the baseline SIMD
    variant (no pre-filter: DENSECORR_TOPK_PREFILTER=on falls back), equal the plain path."""
    q, k, v = _unit(1, 70, 64), _unit(1, 8200, 64), torch.randn(1, 8200, 3)
    plain = _topk_fwd(monkeypatch, "off", q, k, v, 14.0, 10)
    auto = _topk_fwd(monkeypatch, "auto", q, k, v, 14.0, 10)
    assert all(torch.equal(a, b) for a, b in zip(auto, plain))
    monkeypatch.setenv("DENSECORR_CPU_SIMD", "base")
    q, k, v = _unit(2, 30, 20), _unit(2, 111, 20), torch.randn(2, 111, 2)
    _assert_prefilter_exact(monkeypatch, q, k, v, 1.5, 3)


@needs_avx2
@FUZZ
@given(B=st.integers(1, 2), N=st.integers(1, 30), M=st.integers(1, 300), D=st.integers(1, 70),
       C=st.sampled_from([1, 3, 8]), topk=st.sampled_from([1, 2, 5, 16, "all"]),
       scale=st.sampled_from([0.3, 8.0, -2.0]))
def test_topk_prefilter_exact_fuzz(B, N, M, D, C, topk, scale):
    topk = M if topk == "all" else min(topk, M)
    q, k, v = torch.randn(B, N, D), torch.randn(B, M, D), torch.randn(B, M, C)
    with pytest.MonkeyPatch.context() as mp:
        _assert_prefilter_exact(mp, q, k, v, scale, topk)
