"""Every op x every CPU backend x every dtype, from the one case table (tests/cases.py) and
the one tolerance table (conftest.TOLERANCE), against the textbook formulas in float64 on
the same (rounded) inputs.

float64/float32: within TOLERANCE. float16/bfloat16 (cpu: float32 kernels around which the
backend converts; reference: float32 accumulation): flash-attention's rule, the error of
the output and of every input gradient at most HALF_RULE times that of plain PyTorch (the
textbook formulas run in that dtype).
"""
import pytest
import torch

import densecorr
from densecorr import backends

import cases
import textbook
from conftest import HALF_RULE, TOLERANCE, close

BACKENDS = [
    pytest.param("reference"),
    pytest.param("cpu", marks=pytest.mark.skipif(
        backends.refusal("cpu", "global_attention_fwd", [torch.empty(1)], True) is not None,
        reason="no cpu kernels")),
]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
HALF = (torch.float16, torch.bfloat16)


def _k5(t):
    return t if t.dim() == 5 else t.unsqueeze(1)


def _global(c):
    shapes = [(c.B, c.N, c.D), (c.B, c.M, c.D), (c.B, c.M, c.C)]
    ours = lambda q, k, v, backend: densecorr.global_attention(q, k, v, 0.8, c.topk, backend=backend)
    plain = lambda q, k, v: textbook.global_attention(q, k, v, 0.8, c.topk or 0)
    return shapes, ours, plain


def _project(c):
    shapes = [(c.B, c.N, c.D), (c.B, c.D, max(1, c.M // 5), 5)]
    ours = lambda q, k, backend: densecorr.project_coords(q, k, 0.7, backend=backend)
    return shapes, ours, lambda q, k: textbook.project_coords(q, k, 0.7)


def _refs(c, E):
    return (c.B, c.T, E, c.H, c.W) if c.T > 1 else (c.B, E, c.H, c.W)


def _geo(c):
    return dict(radius=c.radius, dilation=c.dilation, boundary=c.boundary, window=c.window)


def _local_attention(c):
    shapes = [(c.B, c.D, c.H, c.W), _refs(c, c.D), _refs(c, c.C)]
    ours = lambda q, k, v, backend: densecorr.local_attention(q, k, v, scale=0.9, topk=c.topk, backend=backend, **_geo(c))
    plain = lambda q, k, v: textbook.local_attention(q, _k5(k), _k5(v), c.radius, c.dilation, 0.9, c.boundary,
                                                     c.window, c.topk or 0)
    return shapes, ours, plain


def _local_affinity(normalize):
    def build(c):
        shapes = [(c.B, c.D, c.H, c.W), _refs(c, c.D)]
        ours = lambda q, k, backend: densecorr.local_affinity(q, k, scale=0.7, normalize=normalize, backend=backend,
                                                              **_geo(c))
        plain = lambda q, k: textbook.local_affinity(q, _k5(k), c.radius, c.dilation, 0.7, normalize, c.boundary,
                                                     c.window)
        return shapes, ours, plain
    return build


def _local_copy(c):
    P = densecorr.geometry.window_size(c.radius, c.window)
    shapes = [(c.B, c.T * P, c.H, c.W), _refs(c, c.C)]
    ours = lambda a, v, backend: densecorr.local_copy(a, v, backend=backend, **_geo(c))
    plain = lambda a, v: textbook.local_copy(a, _k5(v), c.radius, c.dilation, c.boundary, c.window)
    return shapes, ours, plain


OPS = (
    [pytest.param(_global, c, id=f"global_attention-{i}") for i, c in zip(cases.GLOBAL_IDS, cases.GLOBAL)]
    + [pytest.param(_project, c, id=f"project_coords-{i}") for i, c in zip(cases.GLOBAL_IDS, cases.GLOBAL)]
    + [pytest.param(_local_attention, c, id=f"local_attention-{i}") for i, c in zip(cases.LOCAL_IDS, cases.LOCAL)]
    + [pytest.param(_local_affinity(n), c, id=f"local_affinity-{'softmax' if n else 'logits'}-{i}")
       for n in (True, False) for i, c in zip(cases.WINDOW_IDS, cases.WINDOW)]
    + [pytest.param(_local_copy, c, id=f"local_copy-{i}") for i, c in zip(cases.WINDOW_IDS, cases.WINDOW)]
)


def _inputs(shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return [x.to(dtype).double() for x in xs]  # values representable in dtype


def _forward_backward(fn, xs, dtype, cotangent_seed):
    leaves = [x.to(dtype).requires_grad_() for x in xs]
    out = fn(*leaves)
    finite = torch.isfinite(out)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(cotangent_seed), dtype=torch.float64)
    g = (g * finite).to(dtype)  # excluded (-inf) logits carry no gradient
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    grads = [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]
    return [out.detach().double()] + [d.double() for d in grads], finite


def _error(got, want, finite):
    return max(((a - b)[finite if a.shape == finite.shape else ...]).abs().max().item() if a.numel() else 0.0
               for a, b in zip(got, want))


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).replace("torch.", "") for d in DTYPES])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build,case", OPS)
def test_op_matches_textbook(build, case, backend, dtype):
    shapes, ours, plain = build(case)
    xs = _inputs(shapes, dtype, seed=len(str(case)))
    got, finite = _forward_backward(lambda *a: ours(*a, backend=backend), xs, dtype, 7)
    want, want_finite = _forward_backward(plain, xs, torch.float64, 7)
    assert torch.equal(finite, want_finite), "excluded positions differ"
    got[0], want[0] = got[0].masked_fill(~finite, 0), want[0].masked_fill(~finite, 0)
    assert got[0].dtype == torch.float64
    if dtype not in HALF:
        for i, (a, b) in enumerate(zip(got, want)):
            close("output" if i == 0 else f"grad of input {i - 1}", a, b, dtype)
        return
    pt, _ = _forward_backward(plain, xs, dtype, 7)
    pt[0] = pt[0].masked_fill(~finite, 0)
    for i, (a, b, p) in enumerate(zip(got, want, pt)):
        name = "output" if i == 0 else f"grad of input {i - 1}"
        ours_err = (a - b).abs().max().item() if a.numel() else 0.0
        plain_err = (p - b).abs().max().item() if a.numel() else 0.0
        # floor: an ulp of the largest value (at least of 0.01: a gradient that is exactly 0
        # in float64, e.g. through a softmax over one position, is float32 round-off here)
        floor = torch.finfo(dtype).eps * max(b.abs().max().item() if b.numel() else 0.0, 1e-2)
        assert ours_err <= HALF_RULE * plain_err + floor, (
            f"{name}: {backend} error {ours_err:.3g} > {HALF_RULE} x plain PyTorch {dtype} error {plain_err:.3g}"
        )
        atol, rtol = TOLERANCE[dtype]
        torch.testing.assert_close(a, b, atol=atol * max(1.0, b.abs().max().item()), rtol=rtol)


def test_half_outputs_keep_dtype_and_stats_float32():
    """bfloat16 in, bfloat16 out on the cpu backend; the saved lse is float32 (fake kernel's dtype)."""
    if backends.refusal("cpu", "global_attention_fwd", [torch.empty(1, dtype=torch.bfloat16)], True):
        pytest.skip("no cpu kernels")
    q, k, v = (torch.randn(2, n, 8, dtype=torch.bfloat16) for n in (5, 7, 7))
    out, lse, idx = torch.ops.densecorr.global_attention_fwd(q, k, v, 1.0, 3, "cpu")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and idx.dtype == torch.int64
    ql = torch.randn(2, 4, 5, 6, dtype=torch.float16)
    out, lse, idx = torch.ops.densecorr.local_attention_fwd(ql, ql[:, None], ql[:, None], 1, 1, 1.0, "mask", "square", 2, "cpu")
    assert out.dtype == torch.float16 and lse.dtype == torch.float32 and idx.shape == (2, 5, 6, 2)
    torch.library.opcheck(torch.ops.densecorr.global_attention_fwd, (q.requires_grad_(), k, v, 1.0, 0, "cpu"))
