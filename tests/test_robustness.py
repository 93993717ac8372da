"""Robustness of the ops layer (issue 14), each test failing on the code before it:
torch.compile with dynamic shapes; the public backward ops reject bad saved indices;
image-boundary masks in integers at widths beyond 2**24; bounded memory when the radius
is far larger than the image; autocast; window geometry in one place."""
import os
import subprocess
import sys

import pytest
import torch

import densecorr
from densecorr import backends, geometry

import textbook
from conftest import REPO, assert_close

HAS_CPU = backends.refusal("cpu", "global_attention_fwd", [torch.empty(1)], True) is None
CPU_BACKENDS = ["reference"] + (["cpu"] if HAS_CPU else [])
F64 = torch.float64


def rand(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


# --------------------------------------------------------------------------- torch.compile(dynamic=True)


def _global_calls(backend):
    return [
        ("global_attention", lambda q, k, v, s: densecorr.global_attention(q, k, v, s, backend=backend)),
        ("global_attention_topk", lambda q, k, v, s: densecorr.global_attention(q, k, v, s, topk=3, backend=backend)),
        ("global_affinity", lambda q, k, v, s: densecorr.global_affinity(q, k, s)),
        ("bbox_from_coords", lambda q, k, v, s: densecorr.bbox_from_coords(torch.stack([q[..., 0], q[..., 1]], -1) * s)[1]),
    ]


def _local_calls(backend):
    return [
        ("local_attention", lambda q, k, v, r, s: densecorr.local_attention(q, k, v, r, scale=s, backend=backend)),
        ("local_attention_circle_topk", lambda q, k, v, r, s: densecorr.local_attention(
            q, k, v, r, scale=s, window="circle", topk=2, boundary="zero", backend=backend)),
        ("local_attention_clamp", lambda q, k, v, r, s: densecorr.local_attention(
            q, k, v, r, scale=s, boundary="clamp", backend=backend)),
        ("local_affinity", lambda q, k, v, r, s: densecorr.local_affinity(q, k, r, scale=s, backend=backend)),
        ("local_copy", lambda q, k, v, r, s: densecorr.local_copy(
            densecorr.local_affinity(q, k, r, scale=s, backend=backend), v, r, backend=backend)),
        ("project_coords", lambda q, k, v, r, s: densecorr.project_coords(q, k, s, backend=backend)),
    ]


@pytest.mark.parametrize("backend,mode", [(b, "dynamic") for b in CPU_BACKENDS] + [(CPU_BACKENDS[-1], "mark_dynamic")])
def test_compile_dynamic_shapes_every_op(backend, mode):
    """Every op under torch.compile(fullgraph=True) with dynamic sizes (and Python scalars
    traced symbolically): two shapes, one compiled graph each time, forward and backward equal
    to eager."""
    sizes = [((1, 6, 3), (1, 9, 3), (1, 9, 2)), ((2, 8, 3), (2, 11, 3), (2, 11, 2))]
    images = [(1, 3, 6, 7), (2, 3, 8, 9)]
    calls = [(n, f, False) for n, f in _global_calls(backend)] + [(n, f, True) for n, f in _local_calls(backend)]
    for name, fn, local in calls:
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, dynamic=(mode == "dynamic"))
        for i, (qs, ks, vs) in enumerate(sizes):
            if local:
                shape = images[i]
                q, k, v = rand(*shape), rand(shape[0], 2, *shape[1:]), rand(shape[0], 2, 2, *shape[2:])
                if name == "project_coords":
                    q, k = rand(shape[0], 5 + i, shape[1]), rand(*shape)
                args = (q, k, v, 1 + i, 0.5 + i)
            else:
                q, k, v = rand(*qs), rand(*ks), rand(*vs)
                args = (q, k, v, 0.5 + i)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if mode == "mark_dynamic":
                for t in tensors:
                    for d in range(t.dim()):
                        torch._dynamo.mark_dynamic(t, d)
            got, want = compiled(*args), fn(*args)
            assert_close(got, want)
            g = torch.randn_like(want)
            used = [t for t in tensors if t.grad_fn is None]
            assert_close(torch.autograd.grad(got, used, g, allow_unused=True, materialize_grads=True),
                         torch.autograd.grad(want, used, g, allow_unused=True, materialize_grads=True))


# --------------------------------------------------------------------------- backward ops and saved indices


_BAD_INDEX_SCRIPT = r"""
import sys, torch, densecorr
backend, which = sys.argv[1], sys.argv[2]
ops = torch.ops.densecorr
if which == "global":
    q, k, v = torch.randn(1, 6, 3), torch.randn(1, 9, 3), torch.randn(1, 9, 2)
    out, lse, idx = ops.global_attention_fwd(q, k, v, 1.0, 3, backend)
    for bad in (10**9, -5, 9):
        i = idx.clone(); i[0, 0, 0] = bad
        try:
            ops.global_attention_bwd(torch.ones_like(out), q, k, v, out, lse, i, 1.0, backend)
            print("accepted", bad)
        except ValueError as e:
            assert "idx" in str(e) and "outside [0, 9)" in str(e), e
    try:
        ops.global_attention_bwd(torch.ones_like(out), q, k, v, out, lse[:, :3], idx, 1.0, backend)
        print("accepted short lse")
    except ValueError as e:
        assert "lse has shape" in str(e), e
else:
    q = torch.randn(1, 2, 4, 5); k = torch.randn(1, 2, 2, 4, 5); v = torch.randn(1, 2, 3, 4, 5)
    out, lse, idx = ops.local_attention_fwd(q, k, v, 1, 1, 1.0, "mask", "square", 4, backend)
    for bad in (10**9, -1, 18):
        i = idx.clone(); i[0, 3, 4, 0] = bad
        try:
            ops.local_attention_bwd(torch.ones_like(out), q, k, v, out, lse, i, 1, 1, 1.0, "mask", "square", backend)
            print("accepted", bad)
        except ValueError as e:
            assert "idx" in str(e) and "outside [0, 18)" in str(e), e
    attn = ops.local_affinity_fwd(q, k, 1, 1, 1.0, True, "mask", "square", backend)
    for call in (lambda: ops.local_affinity_bwd(attn[:, :5], q, k, attn[:, :5], 1, 1, 1.0, True, "mask", "square", backend),
                 lambda: ops.local_copy_bwd(torch.ones(1, 3, 4, 5), attn[:, :5], v, 1, 1, "mask", "square", backend)):
        try:
            call(); print("accepted short attn")
        except ValueError as e:
            assert "attn has shape" in str(e) or "grad has shape" in str(e), e
print("done")
"""


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("which", ["global", "local"])
def test_backward_ops_reject_bad_saved_tensors(backend, which):
    """torch.ops.densecorr.*_bwd are public: out-of-range indices and wrong-shaped saved
    tensors raise a ValueError naming them (the cpu kernels segfaulted on them). In a
    subprocess: a crash must fail this test, not end the run."""
    run = subprocess.run([sys.executable, "-c", _BAD_INDEX_SCRIPT, backend, which], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    assert run.stdout.strip() == "done", run.stdout


_EXT_BAD_INDEX_SCRIPT = r"""
import torch, densecorr
from densecorr import _ext
assert _ext.load()
ext = torch.ops.densecorr_ext
q, k, v = torch.randn(1, 6, 3), torch.randn(1, 9, 3), torch.randn(1, 9, 2)
out, lse, idx = ext.global_attention_fwd(q, k, v, 1.0, 3)
for bad in (10**9, -5, 9):
    i = idx.clone(); i[0, 0, 0] = bad
    try:
        ext.global_attention_bwd(torch.ones_like(out), q, k, v, out, lse, i, 1.0); print("accepted", bad)
    except RuntimeError as e:
        assert "outside the keys M = [0, 9)" in str(e), e
q = torch.randn(1, 2, 4, 5); k = torch.randn(1, 2, 2, 4, 5); v = torch.randn(1, 2, 3, 4, 5)
for name in ("local_attention", "local_offset_attention"):
    extra = (torch.zeros(1, 2, 2, 4, 5),) if "offset" in name else ()
    out, lse, idx = getattr(ext, name + "_fwd")(q, k, v, *extra, 1, 1, 1.0, "mask", "square", 4)
    for bad in (10**9, -1, 18):
        i = idx.clone(); i[0, 3, 4, 0] = bad
        try:
            getattr(ext, name + "_bwd")(torch.ones_like(out), q, k, v, *extra, out, lse, i, 1, 1, 1.0, "mask", "square")
            print("accepted", name, bad)
        except RuntimeError as e:
            assert "outside the window positions T*P = [0, 18)" in str(e), e
print("done")
"""


@pytest.mark.skipif(not HAS_CPU, reason="the C++ extension is not built")
def test_extension_backward_ops_check_their_indices():
    """torch.ops.densecorr_ext.*_bwd (the C++ kernels, registered too) check saved top-k
    indices themselves: out of range is a RuntimeError naming the range (the global one
    segfaulted, the local one read stray memory). In a subprocess, so a crash fails the test."""
    run = subprocess.run([sys.executable, "-c", _EXT_BAD_INDEX_SCRIPT], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    assert run.stdout.strip() == "done", run.stdout


# --------------------------------------------------------------------------- integer image-boundary masks


def _wide_row_case():
    W = 2**24 + 8  # float32 cannot count columns exactly here
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 1, W, generator=g) for _ in range(3))
    x = W - 1  # last pixel: window columns x-1, x (x+1 is outside)
    s = q[0, 0, 0, x] * k[0, 0, 0, x - 1 : x + 1].double()
    expected = (torch.softmax(s, 0) * v[0, 0, 0, x - 1 : x + 1].double()).sum()
    return q, k, v, expected


def _check_wide_row(backend):
    q, k, v, expected = _wide_row_case()
    out = densecorr.local_attention(q, k, v, 1, backend=backend)
    assert not torch.isnan(out).any()
    assert abs(out[0, 0, 0, -1].item() - expected.item()) < 1e-5
    logits = densecorr.local_affinity(q, k, 1, normalize=False, backend=backend)
    # row offsets -1, +1 are outside (H = 1); in the middle row: columns x-1, x inside, x+1 outside
    assert torch.isfinite(logits[0, 3:6, 0, -1]).tolist() == [True, True, False]
    assert torch.isfinite(logits[0, 3:6, 0, 0]).tolist() == [False, True, True]
    assert torch.isfinite(logits[0, 3:6, 0, -9]).all()


def test_boundary_mask_in_integers_reference():
    """Width 2**24 + 8, float32: the last columns are masked exactly (reference: integer tables)."""
    _check_wide_row("reference")


@pytest.mark.skipif(not HAS_CPU, reason="no cpu kernels")
def test_boundary_mask_in_integers_cpu():
    _check_wide_row("cpu")


# --------------------------------------------------------------------------- radius far larger than the image


_BIG_RADIUS_SCRIPT = r"""
import resource, sys, time, torch, densecorr
backend, op, radius, boundary, window, topk = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]) or None
torch.manual_seed(0)
q = torch.randn(1, 4, 8, 8, requires_grad=True); k = torch.randn(1, 4, 8, 8, requires_grad=True)
v = torch.randn(1, 2, 8, 8, requires_grad=True)
def call(r):
    if op == "attention":
        return densecorr.local_attention(q, k, v, r, boundary=boundary, window=window, topk=topk, backend=backend)
    P = densecorr.geometry.window_size(r, window)
    return densecorr.local_copy(torch.full((1, P, 8, 8), 1.0 / P, requires_grad=True), v, r, boundary=boundary, window=window, backend=backend)
call(2).sum().backward()  # warm up (first-use loading)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
out = call(radius)
out.sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, time.time() - t)
"""


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("radius,boundary,window,topk", [
    (6000, "mask", "square", 0), (6000, "zero", "circle", 0), (6000, "zero", "square", 10), (300, "mask", "circle", 5),
])
def test_huge_radius_memory_and_time_bounded(backend, radius, boundary, window, topk):
    """local_attention with radius 6000 (or 300) on an 8x8 image: forward + backward in well
    under 64 MiB of extra peak RSS and a few seconds (before: 3.2 GB, minutes). Subprocess."""
    if backend == "reference" and radius > 300:
        radius = 300  # before: minutes
    run = subprocess.run(
        [sys.executable, "-c", _BIG_RADIUS_SCRIPT, backend, "attention", str(radius), boundary, window, str(topk)],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    extra_mib, seconds = (float(x) for x in run.stdout.split()[-2:])
    assert extra_mib < 64, f"peak RSS grew by {extra_mib:.0f} MiB"
    assert seconds < 20, f"took {seconds:.1f} s"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("boundary", ["mask", "zero"])
@pytest.mark.parametrize("window", ["square", "circle"])
@pytest.mark.parametrize("topk", [None, 1, 7, 40])
def test_huge_radius_exact(backend, boundary, window, topk):
    """A window far larger than the image gives exactly the textbook result of the full window,
    forward and backward (the zero boundary's out-of-image positions still count in the
    softmax), for local_attention, local_affinity and local_copy."""
    H, W, r, dil, T = 3, 4, 7, 1, 2
    q, k, v = rand(1, 3, H, W), rand(1, T, 3, H, W), rand(1, T, 2, H, W)
    args = (r, dil, 0.7, boundary, window)
    out = densecorr.local_attention(q, k, v, *args, topk=topk, backend=backend)
    want = textbook.local_attention(q, k, v, *args, topk=topk or 0)
    assert_close(out, want)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g))
    if topk is None:
        for normalize in (True, False):
            a = densecorr.local_affinity(q, k, r, dil, 0.7, normalize, boundary, window, backend=backend)
            e = textbook.local_affinity(q, k, r, dil, 0.7, normalize, boundary, window)
            fin = torch.isfinite(e)
            assert torch.equal(fin, torch.isfinite(a))
            assert_close(a[fin], e[fin])
            gg = torch.randn_like(a) * fin
            assert_close(torch.autograd.grad(a, (q, k), gg), torch.autograd.grad(e.masked_fill(~fin, 0), (q, k), gg))
        attn = torch.rand(1, T * geometry.window_size(r, window), H, W, dtype=F64, requires_grad=True)
        o = densecorr.local_copy(attn, v, r, dil, boundary, window, backend=backend)
        e = textbook.local_copy(attn, v, r, dil, boundary, window)
        assert_close(o, e)
        g = torch.randn_like(o)
        assert_close(torch.autograd.grad(o, (attn, v), g), torch.autograd.grad(e, (attn, v), g))


def test_huge_radius_scale_zero_and_affinity_refusal():
    q, k, v = rand(1, 3, 3, 4), rand(1, 3, 3, 4), rand(1, 2, 3, 4)
    out = densecorr.local_attention(q, k, v, 9, scale=0.0, boundary="zero", backend="reference")
    assert_close(out, textbook.local_attention(q, k[:, None], v[:, None], 9, 1, 0.0, "zero", "square"))
    g = torch.autograd.grad(out.sum(), (q, k))
    assert all(torch.equal(x, torch.zeros_like(x)) for x in g)
    big = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="reaches beyond the 8x8 image"):
        densecorr.local_affinity(big, big, 6000)  # 36 GB of constant output: refused, not allocated


# --------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_bfloat16_keeps_float32_results(backend):
    """Under torch.autocast("cpu", bfloat16) the ops take float32 inputs as float32 and compute
    them in float32 on every backend (before: the reference backend's matmuls ran in bfloat16,
    0.045 max error where cpu was at 1e-6); bfloat16 inputs give bfloat16 outputs."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 300, 32, generator=g), torch.randn(2, 400, 32, generator=g), torch.randn(2, 400, 3, generator=g)
    ql, kl, vl = torch.randn(1, 8, 9, 10, generator=g), torch.randn(1, 8, 9, 10, generator=g), torch.randn(1, 3, 9, 10, generator=g)
    want = textbook.global_attention(q.double(), k.double(), v.double(), 0.3)
    want_l = textbook.local_attention(ql.double(), kl.double()[:, None], vl.double()[:, None], 2, 1, 0.5, "mask", "square")
    with torch.autocast("cpu", torch.bfloat16):
        out = densecorr.global_attention(q, k, v, 0.3, backend=backend)
        out_l = densecorr.local_attention(ql, kl, vl, 2, scale=0.5, backend=backend)
        half = densecorr.global_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.3, backend=backend)
    assert out.dtype == torch.float32 and out_l.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert (out.double() - want).abs().max() < 1e-5
    assert (out_l.double() - want_l).abs().max() < 1e-5


# --------------------------------------------------------------------------- geometry: one definition


def test_geometry_one_membership_rule_and_kernels_agree():
    """geometry's window order / P / circle rule, the half-width form and every backend's P agree."""
    for r in range(0, 30):
        for window in ("square", "circle"):
            offsets = geometry.window_offsets(r, window)
            assert len(offsets) == geometry.window_size(r, window)
            assert list(offsets) == sorted(offsets)
            for dy in range(-r, r + 1):
                kept = [j - r for i, j in offsets if i - r == dy]
                half = geometry.row_half_width(dy, r, window)
                assert kept == list(range(-half, half + 1))
    wy, wx, g2p = geometry.window_tables(3, "circle")
    assert [(int(a), int(b)) for a, b in zip(wy, wx)] == list(geometry.window_offsets(3, "circle"))
    assert int((g2p >= 0).sum()) == geometry.window_size(3, "circle")
    q = torch.randn(1, 2, 9, 9)
    for backend in CPU_BACKENDS:
        for r in (0, 2, 4):
            a = densecorr.local_affinity(q, q, r, window="circle", backend=backend)
            assert a.shape[1] == geometry.window_size(r, "circle")
    # clamp rule, against the textbook's independent list-based version
    for n, r, dil in ((9, 1, 2), (10, 2, 1), (13, 1, 3)):
        idx, valid = geometry.axis_index(n, r, dil, "clamp")
        assert valid.all()
        for y in range(n):
            assert idx[:, y].tolist() == textbook.axis_cells(n, y, r, dil, "clamp")


def test_registry_imports_no_backend():
    """densecorr/backends/__init__.py (the registry), loaded on its own, imports no densecorr
    module (no backend, no extension, no triton); the backends declare devices and dtypes
    themselves, and Triton's kernels check the declaration's dtype tuple, not a copy."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('registry_alone', 'densecorr/backends/__init__.py')\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['registry_alone'] = m; spec.loader.exec_module(m)\n"
        "bad = [n for n in sys.modules if n.startswith(('densecorr', 'triton'))]\n"
        "assert not bad, bad\n"
        "import torch, densecorr\n"
        "from densecorr import backends\n"
        "assert 'triton' not in sys.modules, 'importing densecorr imported triton'\n"
        "assert torch.bfloat16 in backends.spec('cpu').dtypes and torch.float64 in backends.spec('reference').dtypes\n"
        "assert torch.float64 not in backends.spec('triton').dtypes\n"
        "if importlib.util.find_spec('triton'):\n"
        "    from densecorr.triton import _common\n"
        "    assert _common.FLOAT_DTYPES is backends.spec('triton').dtypes\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
