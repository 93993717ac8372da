"""Triton kernels on CPU tensors under the Triton interpreter, against backend="reference".

Triton picks interpreter or compiler when a function is decorated (its own library at
`import triton`, ours at `import densecorr.triton`), so this module sets TRITON_INTERPRET=1
around those imports at collection (before any test runs), then restores the environment
so that other modules' tests see the machine as it is; an autouse fixture sets it again
during each test here (the backend registry lets CPU tensors reach Triton only then).
If triton was already imported in compiled mode, the comparisons run in a subprocess
instead (test_in_interpreter_subprocess). With a GPU the Triton kernels are tested on CUDA
tensors by tests/test_cuda.py, and this module skips.

The interpreter does not check the GPU compiler's rules (tl.dot sizes, layouts) and is
unreliable in bfloat16; float32 and float16 are compared here, bfloat16 on the GPU only.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cases
from conftest import close

if torch.cuda.is_available():
    pytest.skip("GPU present: the Triton kernels are tested on CUDA in tests/test_cuda.py",
                allow_module_level=True)
_COMPILED_TRITON = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
_SAVED_ENV = os.environ.get("TRITON_INTERPRET")
if not _COMPILED_TRITON:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    import densecorr  # noqa: E402
    import densecorr.triton  # noqa: E402, F401  (decorates the kernels: interpreted)
    from densecorr import backends  # noqa: E402
finally:
    if _SAVED_ENV is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _SAVED_ENV


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# Set when triton was imported in compiled mode before this module: the tests below then run
# in a subprocess started with TRITON_INTERPRET=1.
interpreted = pytest.mark.skipif(_COMPILED_TRITON, reason="run by test_in_interpreter_subprocess")


@pytest.mark.skipif(not _COMPILED_TRITON, reason="triton runs interpreted in this process")
def test_in_interpreter_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


_close = close  # conftest's: the one tolerance table


def _leaves(*tensors, dtype=torch.float32):
    return [t.to(dtype).requires_grad_() for t in tensors]


def _compare(op, inputs, dtype, **kwargs):
    """Run op forward + backward with backend triton (inputs in dtype) and reference (float64
    of the same values); compare outputs and every input gradient."""
    got_in = _leaves(*inputs, dtype=dtype)
    ref_in = _leaves(*[t.to(dtype) for t in inputs], dtype=torch.float64)
    got = op(*got_in, **kwargs, backend="triton")
    want = op(*ref_in, **kwargs, backend="reference")
    assert got.dtype == dtype
    _close("output", got, want, dtype)
    grad = torch.randn(want.shape, dtype=torch.float64)
    got_g = torch.autograd.grad(got, got_in, grad.to(dtype))
    want_g = torch.autograd.grad(want, ref_in, grad)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        _close(f"grad of input {i}", g, w, dtype)


@interpreted
def test_triton_backend_available_on_cpu_only_explicitly():
    probe = [torch.empty(1)]
    assert backends.refusal("triton", "global_attention_fwd", probe, explicit=True) is None
    assert "explicitly" in backends.refusal("triton", "global_attention_fwd", probe, explicit=False)
    assert backends.choose("local_attention_fwd", probe, "triton") == "triton"


# --------------------------------------------------------------------------- global


@interpreted
@pytest.mark.parametrize("B,N,M,D,C,topk", cases.GLOBAL, ids=cases.GLOBAL_IDS)
def test_global_attention(B, N, M, D, C, topk):
    g = torch.Generator().manual_seed(N * M + D)
    q, k, v = (torch.randn(B, n, d, generator=g) for n, d in ((N, D), (M, D), (M, C)))
    _compare(densecorr.global_attention, (q, k, v), torch.float32, scale=0.8, topk=topk)


@interpreted
def test_global_attention_kernel_stats_and_indices():
    """lse float32 and idx int64 equal to the reference's (distinct logits, no ties)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 21, 6, generator=g), torch.randn(2, 50, 6, generator=g), torch.randn(2, 50, 3, generator=g)
    for topk in (0, 7):
        out, lse, idx = backends.kernel("global_attention_fwd", "triton")(q, k, v, 1.3, topk)
        r_out, r_lse, r_idx = backends.kernel("global_attention_fwd", "reference")(q.double(), k.double(), v.double(), 1.3, topk)
        assert lse.dtype == torch.float32 and idx.dtype == torch.int64 and idx.shape == (2, 21, topk)
        _close("lse", lse, r_lse, torch.float32)
        assert torch.equal(idx, r_idx)


@interpreted
def test_global_attention_float16():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 20, 16, generator=g), torch.randn(1, 40, 16, generator=g), torch.randn(1, 40, 3, generator=g)
    _compare(densecorr.global_attention, (q, k, v), torch.float16, scale=0.25)
    _compare(densecorr.global_attention, (q, k, v), torch.float16, scale=0.25, topk=5)


@interpreted
def test_global_attention_noncontiguous():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 8, 12, generator=g).transpose(1, 2)  # (1, 12, 8) non-contiguous
    k = torch.randn(1, 8, 9, generator=g).transpose(1, 2)
    v = torch.randn(1, 3, 9, generator=g).transpose(1, 2)
    got = densecorr.global_attention(q, k, v, backend="triton")
    want = densecorr.global_attention(q.double(), k.double(), v.double(), backend="reference")
    _close("output", got, want, torch.float32)


@interpreted
def test_triton_rejects_float64_with_reason():
    x = torch.randn(1, 3, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64"):
        densecorr.global_attention(x, x, x, backend="triton")


# --------------------------------------------------------------------------- project_coords


@interpreted
@pytest.mark.parametrize("B,N,D,H,W", [(1, 1, 1, 1, 1), (1, 5, 3, 3, 4), (2, 70, 20, 5, 17)])
def test_project_coords(B, N, D, H, W):
    g = torch.Generator().manual_seed(B + N + H)
    q, k = torch.randn(B, N, D, generator=g), torch.randn(B, D, H, W, generator=g)
    _compare(densecorr.project_coords, (q, k), torch.float32, scale=0.7)


# --------------------------------------------------------------------------- local


@interpreted
@pytest.mark.parametrize("B,T,D,C,H,W,radius,dilation,boundary,window,topk", cases.LOCAL, ids=cases.LOCAL_IDS)
def test_local_attention(B, T, D, C, H, W, radius, dilation, boundary, window, topk):
    g = torch.Generator().manual_seed(H * W + T)
    q = torch.randn(B, D, H, W, generator=g)
    k = torch.randn(B, T, D, H, W, generator=g)
    v = torch.randn(B, T, C, H, W, generator=g)
    if T == 1:  # also the single-reference layout (B, D, H, W)
        k, v = k[:, 0], v[:, 0]
    _compare(densecorr.local_attention, (q, k, v), torch.float32, radius=radius, dilation=dilation,
             scale=0.9, boundary=boundary, window=window, topk=topk)


@interpreted
def test_local_attention_kernel_stats_and_indices():
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(1, 3, 6, 5, generator=g), torch.randn(1, 2, 3, 6, 5, generator=g), torch.randn(1, 2, 2, 6, 5, generator=g)
    for boundary in ("mask", "clamp"):
        args = (1, 1, 1.1, boundary, "square", 6)
        out, lse, idx = backends.kernel("local_attention_fwd", "triton")(q, k, v, *args)
        r_out, r_lse, r_idx = backends.kernel("local_attention_fwd", "reference")(q.double(), k.double(), v.double(), *args)
        assert lse.dtype == torch.float32 and idx.dtype == torch.int64 and idx.shape == (1, 6, 5, 6)
        _close("lse", lse, r_lse, torch.float32)
        # Corner pixels (mask) have fewer than 6 finite logits: -inf ties, any order is fine.
        finite = torch.isfinite(torch.gather(
            backends.kernel("local_affinity_fwd", "reference")(q, k, 1, 1, 1.1, False, boundary, "square")
            .permute(0, 2, 3, 1), -1, r_idx))
        assert torch.equal(idx[finite], r_idx[finite])


@interpreted
def test_local_attention_float16():
    g = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(1, 8, 6, 7, generator=g), torch.randn(1, 2, 8, 6, 7, generator=g), torch.randn(1, 2, 3, 6, 7, generator=g)
    _compare(densecorr.local_attention, (q, k, v), torch.float16, radius=1, scale=0.5)


@interpreted
def test_local_attention_clamp_too_small_is_an_error():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises((RuntimeError, ValueError), match="clamp"):
        densecorr.local_attention(x, x, x, radius=2, boundary="clamp", backend="triton")


@interpreted
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("B,T,D,C,H,W,radius,dilation,boundary,window,topk", cases.WINDOW, ids=cases.WINDOW_IDS)
def test_local_affinity_and_copy(normalize, B, T, D, C, H, W, radius, dilation, boundary, window, topk):
    g = torch.Generator().manual_seed(H + W + T)
    q = torch.randn(B, D, H, W, generator=g)
    k = torch.randn(B, T, D, H, W, generator=g)
    v = torch.randn(B, T, C, H, W, generator=g)
    geo = dict(radius=radius, dilation=dilation, boundary=boundary, window=window)
    _compare(densecorr.local_affinity, (q, k), torch.float32, scale=0.7, normalize=normalize, **geo)
    if normalize:  # local_copy takes any weights; the softmax is the usual one
        attn = densecorr.local_affinity(q, k, scale=0.7, **geo, backend="reference")
        _compare(densecorr.local_copy, (attn, v), torch.float32, **geo)


@st.composite
def local_geometry(draw):
    """A random local-attention call: shapes, radius, dilation, boundary, window, topk."""
    radius, dilation = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    boundary, window = draw(st.sampled_from(["mask", "zero", "clamp"])), draw(st.sampled_from(["square", "circle"]))
    low = (2 * radius + 1) * dilation if boundary == "clamp" else 1
    H, W = draw(st.integers(low, low + 4)), draw(st.integers(low, low + 4))
    T, D, C = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    P = densecorr.geometry.window_size(radius, window)
    topk = draw(st.sampled_from([None, None, 1, min(3, T * P), T * P]))
    return D, H, W, T, C, radius, dilation, boundary, window, topk


@interpreted
@settings(max_examples=6, deadline=None)
@given(case=local_geometry())
def test_local_attention_fuzz(case):
    D, H, W, T, C, radius, dilation, boundary, window, topk = case
    g = torch.Generator().manual_seed(11)
    q, k, v = torch.randn(1, D, H, W, generator=g), torch.randn(1, T, D, H, W, generator=g), torch.randn(1, T, C, H, W, generator=g)
    _compare(densecorr.local_attention, (q, k, v), torch.float32, radius=radius, dilation=dilation, scale=1.2,
             boundary=boundary, window=window, topk=topk)


def test_kernels_compile_for_sm90():
    """The GPU compiler (Triton -> PTX -> cubin with triton's own ptxas; no GPU needed)
    accepts the forward kernels in the configurations the wrappers launch, within sm_90's
    shared memory. `python -m densecorr.triton.compile_check` compiles every kernel and
    configuration (minutes); this keeps to the first configuration of the forward kernels."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "densecorr.triton.compile_check", "--quick", "--first",
                          "--only", "_fwd_kernel,_topk_fwd_kernel", "--jobs", "2"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "0 failed" in run.stdout
