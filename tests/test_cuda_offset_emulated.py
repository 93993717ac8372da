"""The CUDA kernels of the local ops with window offsets (csrc/cuda/local_offset.cu), run on
CPU through the emulation build (csrc/cuda/emulation/emulate_offset.cpp; see tests/test_cuda.py
for the approach), against the reference backend's local_offset_* kernels: forward and
backward, float64 and float32, mask and zero, top-k, windows moved out of the image. The real
launch (atomics on a GPU, __ldg, fast-math) is checked by tests/test_offset_window.py on a GPU.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import close
from densecorr import backends
from densecorr.geometry import window_offsets
from test_cuda import _BOUNDARIES, _DTYPES, _Window, _ptr

ROOT = Path(__file__).resolve().parents[1]


class EmulatedOffset:
    """csrc/cuda/ops.cpp's glue of the local_offset_* ops, in Python, over the emulation."""

    def __init__(self, lib):
        self.lib = lib
        self._keep = []

    def _call(self, name, *args):
        fn = getattr(self.lib, name)
        fn.restype = ctypes.c_char_p
        err = fn(*args)
        assert err is None, err

    def _window(self, B, T, D, H, W, C, radius, dilation, boundary, window):
        cells = window_offsets(radius, window)
        wy = torch.tensor([c[0] for c in cells], dtype=torch.int32)
        wx = torch.tensor([c[1] for c in cells], dtype=torch.int32)
        g2p = torch.full(((2 * radius + 1) ** 2,), -1, dtype=torch.int32)  # unused by these kernels
        self._keep = [wy, wx, g2p]
        return _Window(B, T, H, W, D, C, radius, dilation, _BOUNDARIES[boundary], len(cells),
                       wy.data_ptr(), wx.data_ptr(), g2p.data_ptr()), len(cells)

    @staticmethod
    def _acc(t):
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def attention_fwd(self, q, k, v, off, radius, dilation, scale, boundary, window, topk):
        B, D, H, W = q.shape
        T, C = k.shape[1], v.shape[2]
        w, _ = self._window(B, T, D, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(q)
        off = off.to(acc).contiguous()
        out, lse = torch.empty(B, C, H, W, dtype=acc), torch.empty(B, H, W, dtype=acc)
        idx, topv = torch.empty(B, H, W, topk, dtype=torch.int64), torch.empty(B, H, W, topk, dtype=acc)
        self._call("emu_local_offset_attention_fwd", _DTYPES[q.dtype], ctypes.byref(w), _ptr(q), _ptr(k), _ptr(v),
                   _ptr(off), ctypes.c_double(scale), ctypes.c_int64(topk), _ptr(out), _ptr(lse), _ptr(idx),
                   _ptr(topv))
        return out.to(q.dtype), lse, idx

    def attention_bwd(self, grad, q, k, v, off, out, lse, idx, radius, dilation, scale, boundary, window):
        B, D, H, W = q.shape
        T, C = k.shape[1], v.shape[2]
        w, _ = self._window(B, T, D, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(q)
        off, lse, idx = off.to(acc).contiguous(), lse.to(acc).contiguous(), idx.contiguous()
        grad, out = grad.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
        dq, dk, dv = (torch.zeros(t.shape, dtype=acc) for t in (q, k, v))
        self._call("emu_local_offset_attention_bwd", _DTYPES[q.dtype], ctypes.byref(w), _ptr(grad), _ptr(q),
                   _ptr(k), _ptr(v), _ptr(off), _ptr(out), _ptr(lse), _ptr(idx), ctypes.c_int64(idx.shape[-1]),
                   ctypes.c_double(scale), _ptr(dq), _ptr(dk), _ptr(dv))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    def affinity_fwd(self, q, k, off, radius, dilation, scale, normalize, boundary, window):
        B, D, H, W = q.shape
        T = k.shape[1]
        w, P = self._window(B, T, D, H, W, 0, radius, dilation, boundary, window)
        acc = self._acc(q)
        off = off.to(acc).contiguous()
        attn = torch.empty(B, T * P, H, W, dtype=acc)
        self._call("emu_local_offset_affinity_fwd", _DTYPES[q.dtype], ctypes.byref(w), _ptr(q), _ptr(k), _ptr(off),
                   ctypes.c_double(scale), ctypes.c_int(int(normalize)), _ptr(attn))
        return attn.to(q.dtype)

    def affinity_bwd(self, grad, q, k, off, attn, radius, dilation, scale, normalize, boundary, window):
        B, D, H, W = q.shape
        T = k.shape[1]
        w, _ = self._window(B, T, D, H, W, 0, radius, dilation, boundary, window)
        acc = self._acc(q)
        off = off.to(acc).contiguous()
        grad, attn = grad.to(q.dtype).contiguous(), attn.to(q.dtype).contiguous()
        dq, dk = torch.zeros(q.shape, dtype=acc), torch.zeros(k.shape, dtype=acc)
        self._call("emu_local_offset_affinity_bwd", _DTYPES[q.dtype], ctypes.byref(w), _ptr(grad), _ptr(q), _ptr(k),
                   _ptr(off), _ptr(attn), ctypes.c_double(scale), ctypes.c_int(int(normalize)), _ptr(dq), _ptr(dk))
        return dq.to(q.dtype), dk.to(k.dtype)

    def copy_fwd(self, attn, v, off, radius, dilation, boundary, window):
        B, T, C, H, W = v.shape
        w, _ = self._window(B, T, 0, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(v)
        off, attn = off.to(acc).contiguous(), attn.to(v.dtype).contiguous()
        out = torch.empty(B, C, H, W, dtype=acc)
        self._call("emu_local_offset_copy_fwd", _DTYPES[v.dtype], ctypes.byref(w), _ptr(attn), _ptr(v), _ptr(off),
                   _ptr(out))
        return out.to(v.dtype)

    def copy_bwd(self, grad, attn, v, off, radius, dilation, boundary, window):
        B, T, C, H, W = v.shape
        w, _ = self._window(B, T, 0, H, W, C, radius, dilation, boundary, window)
        acc = self._acc(v)
        off = off.to(acc).contiguous()
        grad, attn = grad.to(v.dtype).contiguous(), attn.to(v.dtype).contiguous()
        dattn, dv = torch.empty(attn.shape, dtype=acc), torch.zeros(v.shape, dtype=acc)
        self._call("emu_local_offset_copy_bwd", _DTYPES[v.dtype], ctypes.byref(w), _ptr(grad), _ptr(attn), _ptr(v),
                   _ptr(off), _ptr(dattn), _ptr(dv))
        return dattn.to(attn.dtype), dv.to(v.dtype)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no host C++ compiler ({cxx}) to build the CUDA kernels' CPU emulation")
    lib = tmp_path_factory.mktemp("cuda_offset_emulation") / "libdensecorr_cuda_offset_emu.so"
    src = ROOT / "csrc" / "cuda" / "emulation"
    run = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-I{src / 'include'}",
                          f"-I{ROOT / 'csrc' / 'cuda'}", str(src / "emulate_offset.cpp"), "-o", str(lib)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return EmulatedOffset(ctypes.CDLL(str(lib)))


def _ref(name):
    return backends.kernel(f"local_offset_{name}", "reference")


CASES = [  # B, D, H, W, T, C, radius, dilation, boundary, window, topk, offsets
    (1, 3, 5, 6, 1, 2, 1, 1, "mask", "square", 0, "frac"),
    (2, 2, 4, 5, 2, 3, 1, 2, "zero", "square", 0, "frac"),
    (1, 2, 5, 4, 2, 2, 2, 1, "mask", "circle", 0, "int"),
    (1, 1, 4, 3, 2, 9, 1, 2, "mask", "square", 0, "frac"),  # C > kChunk, D = 1
    (1, 2, 4, 4, 1, 2, 1, 1, "mask", "square", 0, "out"),  # some windows wholly outside
    (1, 3, 4, 5, 2, 2, 1, 1, "mask", "square", 5, "frac"),
    (1, 2, 1, 5, 2, 10, 1, 1, "zero", "circle", 4, "frac"),  # H = 1, top-k, C > kChunk
    (2, 3, 5, 1, 1, 1, 0, 1, "mask", "square", 1, "out"),  # W = 1, radius 0
]


def _inputs(B, D, H, W, T, C, kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, D, H, W, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, C, H, W, generator=g, dtype=torch.float64)
    if kind == "int":
        off = torch.randint(-2, 3, (B, T, 2, H, W), generator=g).double()
    else:  # fractions kept 0.1 away from whole pixels (bilinear is smooth there)
        off = torch.rand(B, T, 2, H, W, generator=g, dtype=torch.float64) * 3 - 1.5
        off = torch.where((off - off.round()).abs() < 0.1, off + 0.25, off)
        if kind == "out":
            off[:, :, 0, :2] += H + 2
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return q.to(dtype), k.to(dtype), v.to(dtype), off.to(acc)


def _close_inf(name, got, want, dtype):
    """Equal where infinite (-inf: excluded), close elsewhere."""
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{name}: infinite entries differ"
    fin = ~torch.isinf(want)
    close(name, got[fin], want[fin], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,H,W,T,C,radius,dilation,boundary,window,topk,kind", CASES)
def test_emulated_offset_attention(emulated, dtype, B, D, H, W, T, C, radius, dilation, boundary, window, topk, kind):
    q, k, v, off = _inputs(B, D, H, W, T, C, kind, dtype, H * W + T)
    qd, kd, vd, offd = q.double(), k.double(), v.double(), off.double()
    args = (radius, dilation, 0.8, boundary, window)
    out, lse, idx = emulated.attention_fwd(q, k, v, off, *args, topk)
    r_out, r_lse, r_idx = _ref("attention_fwd")(qd, kd, vd, offd, *args, topk)
    close("out", out, r_out, dtype)
    _close_inf("lse", lse, r_lse, dtype)
    if kind == "out":
        assert torch.isinf(r_lse).any()  # the case exercises pixels with nothing admitted
    if topk:  # the same selected logits (ties in any order)
        logits = _ref("affinity_fwd")(qd, kd, offd, radius, dilation, 0.8, False, boundary, window)
        pick = lambda i: logits.permute(0, 2, 3, 1).gather(3, i).sort(-1).values  # noqa: E731
        _close_inf("selected logits", pick(idx), pick(r_idx), dtype)
    grad = torch.randn(r_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = emulated.attention_bwd(grad.to(dtype), q, k, v, off, out, lse, idx, *args)
    # On the emulation's selection (ties may pick other, equivalent positions).
    want = _ref("attention_bwd")(grad, qd, kd, vd, offd, r_out, r_lse, idx, *args)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        close(name, a, b, dtype)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("B,D,H,W,T,C,radius,dilation,boundary,window,topk,kind", CASES[:5])
def test_emulated_offset_affinity_and_copy(emulated, normalize, B, D, H, W, T, C, radius, dilation, boundary, window,
                                           topk, kind):
    dtype = torch.float64
    q, k, v, off = _inputs(B, D, H, W, T, C, kind, dtype, H + W)
    geo = (radius, dilation, boundary, window)
    attn = emulated.affinity_fwd(q, k, off, radius, dilation, 0.7, normalize, boundary, window)
    r_attn = _ref("affinity_fwd")(q, k, off, radius, dilation, 0.7, normalize, boundary, window)
    _close_inf("attn", attn, r_attn, dtype)
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(r_attn.shape, dtype=dtype, generator=g)
    got = emulated.affinity_bwd(grad, q, k, off, attn, radius, dilation, 0.7, normalize, boundary, window)
    want = _ref("affinity_bwd")(grad, q, k, off, r_attn, radius, dilation, 0.7, normalize, boundary, window)
    for name, a, b in zip(("dq", "dk"), got, want):
        close(name, a, b, dtype)
    weights = torch.rand(r_attn.shape, dtype=dtype, generator=g)  # any weights, not only softmax
    close("copy", emulated.copy_fwd(weights, v, off, *geo), _ref("copy_fwd")(weights, v, off, *geo), dtype)
    gout = torch.randn(B, C, H, W, dtype=dtype, generator=g)
    got = emulated.copy_bwd(gout, weights, v, off, *geo)
    want = _ref("copy_bwd")(gout, weights, v, off, *geo)
    for name, a, b in zip(("dattn", "dv"), got, want):
        close(name, a, b, dtype)
