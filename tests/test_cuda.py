"""CUDA and Triton kernels on CUDA tensors against backend="reference" (skipped without a
GPU); the CUDA kernels' logic on CPU through their emulation build; and the nvcc compile
check of csrc/cuda (skipped without nvcc).

The emulation (csrc/cuda/emulation) compiles the very .cu sources with the host compiler
against stand-in CUDA headers (blocks in turn, a block's threads as real threads), so the
index arithmetic, window geometry, top-k lists and shared-memory tiling are checked here on
any machine with g++; the GPU-only parts (the real launch, __ldg, fast-math) are checked by
the GPU tests below.
"""
import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import densecorr
from densecorr import backends
from densecorr.geometry import window_offsets

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")

from conftest import TOLERANCE  # noqa: E402  (the one tolerance table)

TOL = {dtype: dict(atol=atol, rtol=rtol) for dtype, (atol, rtol) in TOLERANCE.items()}


def _close(name, got, want, dtype):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype], msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- emulation


class _Window(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("B", "T", "H", "W", "D", "C")] + [
        (n, ctypes.c_int) for n in ("radius", "dilation", "boundary", "P")
    ] + [(n, ctypes.c_void_p) for n in ("wy", "wx", "g2p")]


_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_BOUNDARIES = {"mask": 0, "zero": 1, "clamp": 2}


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


class Emulated:
    """csrc/cuda/ops.cpp's glue, in Python, over the CPU emulation of the kernels: same
    kernel op signatures, CPU tensors."""

    def __init__(self, lib):
        self.lib = lib
        self._keep = []  # the window tables of the last call, alive while it runs

    def _call(self, fn, *args):
        fn.restype = ctypes.c_char_p
        err = fn(*args)
        assert err is None, err

    def _window(self, B, T, D, H, W, C, radius, dilation, boundary, window):
        cells = window_offsets(radius, window)
        side = 2 * radius + 1
        wy = torch.tensor([c[0] for c in cells], dtype=torch.int32)
        wx = torch.tensor([c[1] for c in cells], dtype=torch.int32)
        g2p = torch.full((side * side,), -1, dtype=torch.int32)
        for p, (i, j) in enumerate(cells):
            g2p[i * side + j] = p
        self._keep = [wy, wx, g2p]
        w = _Window(B, T, H, W, D, C, radius, dilation, _BOUNDARIES[boundary], len(cells),
                    wy.data_ptr(), wx.data_ptr(), g2p.data_ptr())
        return w, len(cells)

    @staticmethod
    def _acc(t):
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def local_attention_fwd(self, q, k, v, radius, dilation, scale, boundary, window, topk):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, D, H, W = q.shape
        T, C = k.shape[1], v.shape[2]
        w, P = self._window(B, T, D, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(q)
        out, lse = torch.empty(B, C, H, W, dtype=acc), torch.empty(B, H, W, dtype=acc)
        idx = torch.empty(B, H, W, topk, dtype=torch.int64)
        topv = torch.empty(B, H, W, topk, dtype=acc)
        self._call(self.lib.emu_local_attention_fwd, _DTYPES[q.dtype], ctypes.byref(w), _ptr(q), _ptr(k), _ptr(v),
                   ctypes.c_double(scale), ctypes.c_int64(topk), _ptr(out), _ptr(lse),
                   ctypes.c_void_p(idx.data_ptr()), _ptr(topv))
        return out.to(q.dtype), lse, idx

    def local_attention_bwd(self, grad, q, k, v, out, lse, idx, radius, dilation, scale, boundary, window):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        grad, out = grad.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
        B, D, H, W = q.shape
        T, C = k.shape[1], v.shape[2]
        w, _ = self._window(B, T, D, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(q)
        lse, idx = lse.to(acc).contiguous(), idx.contiguous()
        dq, dk, dv = (torch.zeros(t.shape, dtype=acc) for t in (q, k, v))
        delta = torch.empty(B, H * W, dtype=acc)
        self._call(self.lib.emu_local_attention_bwd, _DTYPES[q.dtype], ctypes.byref(w), _ptr(grad), _ptr(q), _ptr(k),
                   _ptr(v), _ptr(out), _ptr(lse), ctypes.c_void_p(idx.data_ptr()), ctypes.c_int64(idx.shape[-1]),
                   ctypes.c_double(scale), _ptr(dq), _ptr(dk), _ptr(dv), _ptr(delta))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    def local_affinity_fwd(self, q, k, radius, dilation, scale, normalize, boundary, window):
        q, k = q.contiguous(), k.contiguous()
        B, D, H, W = q.shape
        T = k.shape[1]
        w, P = self._window(B, T, D, H, W, 0, radius, dilation, boundary, window)
        attn = torch.empty(B, T * P, H, W, dtype=self._acc(q))
        self._call(self.lib.emu_local_affinity_fwd, _DTYPES[q.dtype], ctypes.byref(w), _ptr(q), _ptr(k),
                   ctypes.c_double(scale), ctypes.c_int(int(normalize)), _ptr(attn))
        return attn.to(q.dtype)

    def local_affinity_bwd(self, grad, q, k, attn, radius, dilation, scale, normalize, boundary, window):
        q, k = q.contiguous(), k.contiguous()
        grad, attn = grad.to(q.dtype).contiguous(), attn.to(q.dtype).contiguous()
        B, D, H, W = q.shape
        T = k.shape[1]
        w, _ = self._window(B, T, D, H, W, 0, radius, dilation, boundary, window)
        acc = self._acc(q)
        dq, dk = torch.zeros(q.shape, dtype=acc), torch.zeros(k.shape, dtype=acc)
        delta = torch.empty(B, H * W, dtype=acc)
        self._call(self.lib.emu_local_affinity_bwd, _DTYPES[q.dtype], ctypes.byref(w), _ptr(grad), _ptr(q), _ptr(k),
                   _ptr(attn), ctypes.c_double(scale), ctypes.c_int(int(normalize)), _ptr(dq), _ptr(dk), _ptr(delta))
        return dq.to(q.dtype), dk.to(k.dtype)

    def local_copy_fwd(self, attn, v, radius, dilation, boundary, window):
        v = v.contiguous()
        attn = attn.to(v.dtype).contiguous()
        B, T, C, H, W = v.shape
        w, _ = self._window(B, T, 0, H, W, C, radius, dilation, boundary, window)
        out = torch.empty(B, C, H, W, dtype=self._acc(v))
        self._call(self.lib.emu_local_copy_fwd, _DTYPES[v.dtype], ctypes.byref(w), _ptr(attn), _ptr(v), _ptr(out))
        return out.to(v.dtype)

    def local_copy_bwd(self, grad, attn, v, radius, dilation, boundary, window):
        v = v.contiguous()
        grad, attn = grad.to(v.dtype).contiguous(), attn.to(v.dtype).contiguous()
        B, T, C, H, W = v.shape
        w, _ = self._window(B, T, 0, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(v)
        dattn, dv = torch.empty(attn.shape, dtype=acc), torch.empty(v.shape, dtype=acc)
        self._call(self.lib.emu_local_copy_bwd, _DTYPES[v.dtype], ctypes.byref(w), _ptr(grad), _ptr(attn), _ptr(v),
                   _ptr(dattn), _ptr(dv))
        return dattn.to(attn.dtype), dv.to(v.dtype)

    def project_coords_fwd(self, q, k, scale):
        q, k = q.contiguous(), k.contiguous()
        B, N, D = q.shape
        H, W = k.shape[2:]
        acc = self._acc(q)
        coords, lse = torch.empty(B, N, 2, dtype=acc), torch.empty(B, N, dtype=acc)
        self._call(self.lib.emu_project_coords_fwd, _DTYPES[q.dtype], *map(ctypes.c_int64, (B, N, H, W, D)),
                   _ptr(q), _ptr(k), ctypes.c_double(scale), _ptr(coords), _ptr(lse))
        return coords.to(q.dtype), lse

    def project_coords_bwd(self, grad, q, k, coords, lse, scale):
        q, k = q.contiguous(), k.contiguous()
        grad, coords = grad.to(q.dtype).contiguous(), coords.to(q.dtype).contiguous()
        B, N, D = q.shape
        H, W = k.shape[2:]
        acc = self._acc(q)
        lse = lse.to(acc).contiguous()
        dq, dk = torch.zeros(q.shape, dtype=acc), torch.zeros(k.shape, dtype=acc)
        self._call(self.lib.emu_project_coords_bwd, _DTYPES[q.dtype], *map(ctypes.c_int64, (B, N, H, W, D)),
                   _ptr(grad), _ptr(q), _ptr(k), _ptr(coords), _ptr(lse), ctypes.c_double(scale), _ptr(dq), _ptr(dk))
        return dq.to(q.dtype), dk.to(k.dtype)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no host C++ compiler ({cxx}) to build the CUDA kernels' CPU emulation")
    lib = tmp_path_factory.mktemp("cuda_emulation") / "libdensecorr_cuda_emu.so"
    src = ROOT / "csrc" / "cuda" / "emulation"
    run = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-I{src / 'include'}",
                          f"-I{ROOT / 'csrc' / 'cuda'}", str(src / "emulate.cpp"), "-o", str(lib)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return Emulated(ctypes.CDLL(str(lib)))


def _ref(name):
    return backends.kernel(name, "reference")


def _local_inputs(B, D, H, W, T, C, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, H, W, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, T, D, H, W, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, T, C, H, W, generator=g, dtype=torch.float64).to(dtype))


EMU_LOCAL = [  # B, D, H, W, T, C, radius, dilation, boundary, window, topk
    (1, 3, 5, 6, 1, 2, 1, 1, "mask", "square", 0),
    (2, 2, 6, 5, 2, 3, 1, 2, "zero", "square", 0),
    (1, 4, 10, 11, 2, 9, 2, 2, "clamp", "square", 0),
    (1, 2, 7, 6, 2, 2, 2, 1, "mask", "circle", 0),
    (1, 3, 7, 8, 3, 1, 2, 1, "clamp", "circle", 0),
    (1, 2, 5, 5, 1, 2, 0, 1, "zero", "square", 0),
    (1, 3, 6, 7, 2, 2, 1, 1, "mask", "square", 5),
    (1, 2, 6, 6, 2, 3, 1, 2, "clamp", "circle", 7),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,H,W,T,C,radius,dilation,boundary,window,topk", EMU_LOCAL)
def test_emulated_local_attention(emulated, dtype, B, D, H, W, T, C, radius, dilation, boundary, window, topk):
    q, k, v = _local_inputs(B, D, H, W, T, C, H * W + T, dtype)
    args = (radius, dilation, 0.8, boundary, window)
    out, lse, idx = emulated.local_attention_fwd(q, k, v, *args, topk)
    r_out, r_lse, r_idx = _ref("local_attention_fwd")(q.double(), k.double(), v.double(), *args, topk)
    _close("out", out, r_out, dtype)
    _close("lse", lse, r_lse, dtype)
    if topk and boundary != "mask":  # mask: corner pixels have -inf ties, any order is right
        assert torch.equal(idx, r_idx)
    grad = torch.randn(r_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = emulated.local_attention_bwd(grad.to(dtype), q, k, v, out, lse, idx, *args)
    want = _ref("local_attention_bwd")(grad, q.double(), k.double(), v.double(), r_out, r_lse, idx, *args)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        _close(name, a, b, dtype)


@st.composite
def local_geometry(draw):
    """A random local-attention call: shapes, radius, dilation, boundary, window, topk."""
    radius, dilation = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    boundary, window = draw(st.sampled_from(["mask", "zero", "clamp"])), draw(st.sampled_from(["square", "circle"]))
    low = (2 * radius + 1) * dilation if boundary == "clamp" else 1
    H, W = draw(st.integers(low, low + 6)), draw(st.integers(low, low + 6))
    T, D, C = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 10))
    P = len(window_offsets(radius, window))
    topk = draw(st.sampled_from([0, 0, 1, min(3, T * P), T * P]))
    return 1, D, H, W, T, C, radius, dilation, boundary, window, topk


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=local_geometry())
def test_emulated_local_attention_fuzz(emulated, case):
    B, D, H, W, T, C, radius, dilation, boundary, window, topk = case
    q, k, v = _local_inputs(B, D, H, W, T, C, 7, torch.float64)
    args = (radius, dilation, 1.3, boundary, window)
    out, lse, idx = emulated.local_attention_fwd(q, k, v, *args, topk)
    r_out, r_lse, r_idx = _ref("local_attention_fwd")(q, k, v, *args, topk)
    _close("out", out, r_out, torch.float64)
    _close("lse", lse, r_lse, torch.float64)
    grad = torch.randn(r_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = emulated.local_attention_bwd(grad, q, k, v, out, lse, idx, *args)
    want = _ref("local_attention_bwd")(grad, q, k, v, r_out, r_lse, idx, *args)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        _close(name, a, b, torch.float64)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("B,D,H,W,T,C,radius,dilation,boundary,window,topk", EMU_LOCAL[:5])
def test_emulated_local_affinity_and_copy(emulated, normalize, B, D, H, W, T, C, radius, dilation, boundary, window,
                                          topk):
    dtype = torch.float64
    q, k, v = _local_inputs(B, D, H, W, T, C, H + W, dtype)
    geo = (radius, dilation, boundary, window)
    attn = emulated.local_affinity_fwd(q, k, radius, dilation, 0.7, normalize, boundary, window)
    r_attn = _ref("local_affinity_fwd")(q, k, radius, dilation, 0.7, normalize, boundary, window)
    _close("attn", attn, r_attn, dtype)
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(r_attn.shape, dtype=dtype, generator=g)
    got = emulated.local_affinity_bwd(grad, q, k, attn, radius, dilation, 0.7, normalize, boundary, window)
    want = _ref("local_affinity_bwd")(grad, q, k, r_attn, radius, dilation, 0.7, normalize, boundary, window)
    for name, a, b in zip(("dq", "dk"), got, want):
        _close(name, a, b, dtype)
    weights = torch.rand(r_attn.shape, dtype=dtype, generator=g)  # any weights, not only softmax
    _close("copy", emulated.local_copy_fwd(weights, v, *geo), _ref("local_copy_fwd")(weights, v, *geo), dtype)
    gout = torch.randn(B, C, H, W, dtype=dtype, generator=g)
    got = emulated.local_copy_bwd(gout, weights, v, *geo)
    want = _ref("local_copy_bwd")(gout, weights, v, *geo)
    for name, a, b in zip(("dattn", "dv"), got, want):
        _close(name, a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N,D,H,W", [(1, 5, 3, 3, 4), (2, 130, 33, 5, 9), (1, 1, 1, 1, 1)])
def test_emulated_project_coords(emulated, dtype, B, N, D, H, W):
    g = torch.Generator().manual_seed(N + D)
    q = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, D, H, W, generator=g, dtype=torch.float64).to(dtype)
    coords, lse = emulated.project_coords_fwd(q, k, 0.6)
    r_coords, r_lse = _ref("project_coords_fwd")(q.double(), k.double(), 0.6)
    _close("coords", coords, r_coords, dtype)
    _close("lse", lse, r_lse, dtype)
    grad = torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    got = emulated.project_coords_bwd(grad.to(dtype), q, k, coords, lse, 0.6)
    want = _ref("project_coords_bwd")(grad, q.double(), k.double(), r_coords, r_lse, 0.6)
    for name, a, b in zip(("dq", "dk"), got, want):
        _close(name, a, b, dtype)


# --------------------------------------------------------------------------- GPU


def _backend_or_skip(backend, name, dtype):
    """Skip when the backend is absent from this build (extension without CUDA, no triton);
    any other refusal (a dtype, a device) is a failure."""
    why = backends.refusal(backend, name, [torch.empty(1, device="cuda", dtype=dtype)], explicit=True)
    if why and any(s in why for s in ("not built", "built without", "not installed", "no Triton kernel")):
        pytest.skip(f"{backend}: {why}")
    assert why is None, why


def _gpu_compare(op, inputs, dtype, backend, **kwargs):
    """op forward + backward on CUDA tensors with `backend` in dtype, against the reference
    backend in float64 on the same values; outputs and every input gradient."""
    got_in = [t.to("cuda", dtype).requires_grad_() for t in inputs]
    ref_in = [t.to("cuda", dtype).double().requires_grad_() for t in inputs]
    got = op(*got_in, **kwargs, backend=backend)
    want = op(*ref_in, **kwargs, backend="reference")
    assert got.dtype == dtype and got.device.type == "cuda"
    _close("output", got, want, dtype)
    grad = torch.randn(want.shape, dtype=torch.float64, device="cuda")
    got_g = torch.autograd.grad(got, got_in, grad.to(dtype))
    want_g = torch.autograd.grad(want, ref_in, grad)
    for i, (a, b) in enumerate(zip(got_g, want_g)):
        _close(f"grad of input {i}", a, b, dtype)


def _dtype_matrix(cases, low_precision):
    """(dtype, *case): every case in float32, the cases at indices `low_precision` also in
    float16 and bfloat16 (each dtype and shape compiles its own Triton kernels: minutes)."""
    out = [(torch.float32, *c) for c in cases]
    for i in low_precision:
        out += [(torch.float16, *cases[i]), (torch.bfloat16, *cases[i])]
    return out


GPU_GLOBAL = [  # B, N, M, D, C, topk: odd sizes, tl.dot padding, wide D, top-k
    (1, 1, 1, 1, 1, None), (2, 70, 33, 20, 3, None), (1, 300, 517, 64, 2, None), (1, 129, 200, 128, 7, None),
    (1, 64, 90, 256, 3, None), (2, 37, 100, 17, 2, 10), (1, 200, 700, 64, 3, 5), (1, 50, 64, 32, 16, 64),
]


@needs_gpu
@pytest.mark.parametrize("dtype,B,N,M,D,C,topk", _dtype_matrix(GPU_GLOBAL, (2, 3, 6)))
def test_gpu_global_attention_triton(dtype, B, N, M, D, C, topk):
    _backend_or_skip("triton", "global_attention_fwd", dtype)
    q, k, v = torch.randn(B, N, D), torch.randn(B, M, D), torch.randn(B, M, C)
    _gpu_compare(densecorr.global_attention, (q, k, v), dtype, "triton", scale=D ** -0.5, topk=topk)


@needs_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,B,N,D,H,W", _dtype_matrix(
    [(1, 1, 1, 1, 1), (2, 70, 20, 5, 17), (1, 300, 64, 24, 31), (1, 40, 256, 8, 8)], (2,)))
def test_gpu_project_coords(backend, dtype, B, N, D, H, W):
    _backend_or_skip(backend, "project_coords_fwd", dtype)
    q, k = torch.randn(B, N, D), torch.randn(B, D, H, W)
    _gpu_compare(densecorr.project_coords, (q, k), dtype, backend, scale=D ** -0.5)


GPU_LOCAL = [  # B, D, H, W, T, C, radius, dilation, boundary, window, topk
    (1, 1, 4, 5, 1, 1, 1, 1, "mask", "square", None),
    (2, 16, 13, 17, 2, 3, 2, 1, "zero", "square", None),
    (1, 64, 20, 23, 3, 7, 3, 2, "clamp", "square", None),
    (1, 32, 19, 21, 2, 2, 4, 1, "mask", "circle", None),
    (1, 8, 9, 9, 1, 20, 0, 1, "mask", "square", None),
    (1, 16, 16, 16, 3, 7, 3, 1, "mask", "circle", 10),
    (1, 16, 15, 14, 2, 3, 2, 1, "zero", "square", 5),
    (1, 8, 12, 12, 2, 2, 1, 2, "clamp", "circle", 17),
]


@needs_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,B,D,H,W,T,C,radius,dilation,boundary,window,topk", _dtype_matrix(GPU_LOCAL, (2, 5)))
def test_gpu_local_attention(backend, dtype, B, D, H, W, T, C, radius, dilation, boundary, window, topk):
    _backend_or_skip(backend, "local_attention_fwd", dtype)
    q, k, v = _local_inputs(B, D, H, W, T, C, H * W, torch.float32)
    _gpu_compare(densecorr.local_attention, (q, k, v), dtype, backend, radius=radius, dilation=dilation,
                 scale=D ** -0.5, boundary=boundary, window=window, topk=topk)


@needs_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype,B,D,H,W,T,C,radius,dilation,boundary,window,topk", _dtype_matrix(GPU_LOCAL[:5], (2,)))
def test_gpu_local_affinity_and_copy(backend, normalize, dtype, B, D, H, W, T, C, radius, dilation, boundary, window,
                                     topk):
    _backend_or_skip(backend, "local_affinity_fwd", dtype)
    q, k, v = _local_inputs(B, D, H, W, T, C, H + W, torch.float32)
    geo = dict(radius=radius, dilation=dilation, boundary=boundary, window=window)
    if normalize or boundary != "mask":  # unnormalised masked logits are -inf: no gradient check
        _gpu_compare(densecorr.local_affinity, (q, k), dtype, backend, scale=D ** -0.5, normalize=normalize, **geo)
    attn = densecorr.local_affinity(q, k, scale=D ** -0.5, **geo, backend="reference")
    _gpu_compare(densecorr.local_copy, (attn, v), dtype, backend, **geo)


@needs_gpu
def test_gpu_cuda_float64_local_attention():
    _backend_or_skip("cuda", "local_attention_fwd", torch.float64)
    q, k, v = _local_inputs(1, 5, 9, 10, 2, 3, 0, torch.float64)
    _gpu_compare(densecorr.local_attention, (q, k, v), torch.float64, "cuda", radius=2, boundary="zero")


def _gpu_opcheck_cases(backend):
    def r(*shape):
        return torch.randn(*shape, device="cuda").requires_grad_()

    q, k, v = r(2, 5, 3), r(2, 7, 3), r(2, 7, 2)
    ql, kl, vl = r(1, 3, 4, 5), r(1, 2, 3, 4, 5), r(1, 2, 2, 4, 5)
    attn = torch.rand(1, 2 * 9, 4, 5, device="cuda").requires_grad_()
    ops = torch.ops.densecorr
    cases = [
        (ops.project_coords_fwd, (q, r(2, 3, 4, 5), 0.5, backend)),
        (ops.local_affinity_fwd, (ql, kl, 1, 1, 0.5, True, "mask", "square", backend)),
        (ops.local_copy_fwd, (attn, vl, 1, 1, "mask", "square", backend)),
        (ops.local_attention_fwd, (ql, kl, vl, 1, 1, 0.5, "mask", "square", 0, backend)),
        (ops.local_attention_fwd, (ql, kl, vl, 1, 2, 0.5, "zero", "circle", 4, backend)),
    ]
    if backend == "triton":
        cases += [(ops.global_attention_fwd, (q, k, v, 0.5, 0, backend)),
                  (ops.global_attention_fwd, (q, k, v, 0.5, 3, backend))]
    return cases


@needs_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_opcheck(backend):
    """torch.library.opcheck of every custom op with the GPU backend doing the work."""
    _backend_or_skip(backend, "local_attention_fwd", torch.float32)
    for op, args in _gpu_opcheck_cases(backend):
        torch.library.opcheck(op, args)


@needs_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_torch_compile_fullgraph(backend):
    _backend_or_skip(backend, "local_attention_fwd", torch.float32)

    def r(*shape):
        return torch.randn(*shape, device="cuda").requires_grad_()

    ql, kl, vl = r(1, 8, 9, 10), r(1, 2, 8, 9, 10), r(1, 2, 3, 9, 10)
    q = r(1, 12, 8)

    def f(q, ql, kl, vl):
        loc = densecorr.local_attention(ql, kl, vl, 2, boundary="zero", window="circle", topk=5, backend=backend)
        cp = densecorr.local_copy(densecorr.local_affinity(ql, kl, 1, backend=backend), vl, 1, backend=backend)
        xy = densecorr.project_coords(q, ql, backend=backend)
        return loc.sum() + (cp * cp).sum() + xy.sum()

    args = (q, ql, kl, vl)
    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    eager = f(*args)
    got = compiled(*args)
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)
    for a, b in zip(torch.autograd.grad(got, args), torch.autograd.grad(eager, args)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- compile check


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc not found")
def test_cuda_sources_compile():
    """tools/check_cuda_compile.sh: every kernel .cu for sm_80 and sm_90, and the glue."""
    run = subprocess.run(["bash", str(ROOT / "tools" / "check_cuda_compile.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
