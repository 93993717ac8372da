"""local_affinity / local_copy / local_attention with a per-query, per-reference window
offset (issue 12; docs/design.md, "The ops"), on every backend that has the kernels.

The oracle here re-encodes the semantics independently of densecorr (no geometry tables,
no reference kernels): for each reference t and window offset (py, px) it samples k and v
with F.grid_sample (align_corners=True, zeros padding) at the pixel points
(y + dy + py*dil, x + dx + px*dil), in float64, with explicit loops. Its autograd gives the
expected gradients.

Backends: "reference" always; "cpu", "triton" (CPU tensors under TRITON_INTERPRET=1 when
there is no GPU, CUDA tensors otherwise) and "cuda" when they can run the local_offset_*
kernels, else the test skips saying why. A backend that claims a kernel is held to it.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import cases
from conftest import TOLERANCE, close

GPU = torch.cuda.is_available()
# Triton decides interpreter vs compiler when it is imported (see tests/test_triton.py): without
# a GPU, import it interpreted here, then restore the environment for the other modules.
_TRITON_COMPILED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not GPU and not _TRITON_COMPILED:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import densecorr.triton  # noqa: F401  (decorates the kernels: interpreted)
    except ImportError:
        pass
    finally:
        if _saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _saved

import densecorr  # noqa: E402
from densecorr import backends  # noqa: E402

F64 = torch.float64
REF = "reference"
BACKENDS = ["reference", "cpu", "triton", "cuda"]
KERNELS = {
    "attention": "local_offset_attention_fwd",
    "affinity": "local_offset_affinity_fwd",
    "logits": "local_offset_affinity_fwd",
    "copy": "local_offset_copy_fwd",
}


def _device(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and GPU) else "cpu"


@pytest.fixture
def backend_env(monkeypatch):
    """Sets TRITON_INTERPRET=1 for Triton on CPU tensors (the registry lets them through only then)."""
    def need(backend, kernel, dtype=torch.float32):
        if backend == "cuda" and not GPU:
            pytest.skip("cuda: no GPU on this machine")
        if backend == "triton" and not GPU:
            if _TRITON_COMPILED:
                pytest.skip("triton: imported in compiled mode before this module, no GPU to run it")
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        probe = torch.empty(1, device=_device(backend), dtype=dtype)
        try:
            why = backends.refusal(backend, kernel, [probe], True)
        except RuntimeError as exc:  # the built extension does not define the kernel op at all
            why = f"the extension has no op for {kernel} ({exc})"
        if why:
            pytest.skip(f"{backend} cannot run {kernel} in {dtype}: {why}")
        return _device(backend)
    return need


# --------------------------------------------------------------------------- the oracle


def _window(radius, window):
    """(py, px) of one reference's window, row-major; circle: py^2 + px^2 <= r^2."""
    return [(py, px) for py in range(-radius, radius + 1) for px in range(-radius, radius + 1)
            if window == "square" or py * py + px * px <= radius * radius]


def _sample(img, Y, X):
    """img (B, E, H, W) at pixel points Y, X (B, H, W): bilinear, 0 outside. One zero row and
    column are appended so that align_corners=True normalisation works for H or W = 1 (the
    appended pixels read as the zero padding they stand for)."""
    B, E, H, W = img.shape
    padded = F.pad(img, (0, 1, 0, 1))
    grid = torch.stack([2 * X / W - 1, 2 * Y / H - 1], -1)  # padded size (H+1, W+1): /(size-1)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _positions(q, k, v, offset, radius, dilation, scale, boundary, window):
    """Oracle logits (B, T*P, H, W), sampled values (B, T*P, C, H, W) (or None) and inside
    (B, T*P, H, W). q (B,D,H,W), k (B,T,D,H,W), v (B,T,C,H,W) or None, offset (B,T,2,H,W)."""
    B, T, _, H, W = k.shape
    ys = torch.arange(H, dtype=F64).view(1, H, 1)
    xs = torch.arange(W, dtype=F64).view(1, 1, W)
    logits, values, insides = [], [], []
    for t in range(T):
        for py, px in _window(radius, window):
            Y = ys + offset[:, t, 0] + py * dilation
            X = xs + offset[:, t, 1] + px * dilation
            inside = (Y >= 0) & (Y <= H - 1) & (X >= 0) & (X <= W - 1)
            keep = inside if boundary == "mask" else torch.ones_like(inside)
            logit = scale * (q * _sample(k[:, t], Y, X)).sum(1) if q is not None else None
            logits.append(logit.masked_fill(~keep, float("-inf")) if logit is not None else None)
            if v is not None:
                values.append(_sample(v[:, t], Y, X) * keep[:, None])
            insides.append(inside)
    logits = torch.stack(logits, 1) if q is not None else None
    return logits, (torch.stack(values, 1) if v is not None else None), torch.stack(insides, 1)


def _softmax(logits):
    """Softmax over positions; a pixel with every position excluded gets weights 0."""
    empty = torch.isneginf(logits).all(1, keepdim=True)
    return torch.softmax(logits.masked_fill(empty, 0.0), 1) * ~empty


def oracle_attention(q, k, v, offset, radius, dilation, scale, boundary, window, topk):
    logits, values, _ = _positions(q, k, v, offset, radius, dilation, scale, boundary, window)
    if topk:  # exactly topk positions (tied logit-0 positions outside the image are interchangeable)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(topk, 1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return (_softmax(logits)[:, :, None] * values).sum(1), logits


def oracle_affinity(q, k, offset, radius, dilation, scale, normalize, boundary, window):
    logits, _, _ = _positions(q, k, None, offset, radius, dilation, scale, boundary, window)
    return _softmax(logits) if normalize else logits


def oracle_copy(attn, v, offset, radius, dilation, boundary, window):
    _, values, _ = _positions(None, v, v, offset, radius, dilation, 1.0, boundary, window)
    return (attn[:, :, None] * values).sum(1)


# --------------------------------------------------------------------------- inputs


def _offsets(c, kind="fractional", seed=0, dtype=F64):
    """(B, T, 2, H, W) offsets reaching up to 2 pixels beyond the window: "integer", or
    "fractional" with fractions in [0.2, 0.8] (away from the kinks of bilinear sampling and
    from the mask's boundary), rounded to float32 so every backend sees the same points."""
    g = torch.Generator().manual_seed(seed)
    span = c.radius * c.dilation + 2
    whole = torch.randint(-span, span + 1, (c.B, c.T, 2, c.H, c.W), generator=g).to(F64)
    if kind == "integer":
        return whole.to(dtype)
    frac = 0.2 + 0.6 * torch.rand(whole.shape, generator=g, dtype=F64)
    return (whole + frac).float().to(dtype)


def _tensors(c, seed, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(dtype).to(device)  # noqa: E731
    P = len(_window(c.radius, c.window))
    q, k, v = mk(c.B, c.D, c.H, c.W), mk(c.B, c.T, c.D, c.H, c.W), mk(c.B, c.T, c.C, c.H, c.W)
    attn = torch.softmax(mk(c.B, c.T * P, c.H, c.W), 1)
    return q, k, v, attn


def _refs(x, c):
    """References as a user passes them: (B, E, H, W) when T == 1."""
    return x[:, 0] if c.T == 1 else x


def _geo(c):
    return dict(radius=c.radius, dilation=c.dilation, boundary=c.boundary, window=c.window)


def _run(op, c, q, k, v, attn, offset, backend):
    """Our op and the oracle's on the same inputs: (ours, oracle's, differentiable inputs)."""
    off_user = offset[:, 0] if c.T == 1 else offset  # (B, 2, H, W) when T == 1
    if op == "attention":
        ours = densecorr.local_attention(q, _refs(k, c), _refs(v, c), scale=0.8, topk=c.topk, offset=off_user,
                                         backend=backend, **_geo(c))
        want = lambda q, k, v: oracle_attention(q, k, v, offset.to(F64), c.radius, c.dilation, 0.8, c.boundary,  # noqa: E731
                                                c.window, c.topk or 0)[0]
        return ours, want, (q, k, v)
    if op in ("affinity", "logits"):
        normalize = op == "affinity"
        ours = densecorr.local_affinity(q, _refs(k, c), scale=0.7, normalize=normalize, offset=off_user,
                                        backend=backend, **_geo(c))
        want = lambda q, k: oracle_affinity(q, k, offset.to(F64), c.radius, c.dilation, 0.7, normalize,  # noqa: E731
                                            c.boundary, c.window)
        return ours, want, (q, k)
    ours = densecorr.local_copy(attn, _refs(v, c), offset=off_user, backend=backend, **_geo(c))
    want = lambda a, v: oracle_copy(a, v, offset.to(F64), c.radius, c.dilation, c.boundary, c.window)  # noqa: E731
    return ours, want, (attn, v)


OPS = ["attention", "affinity", "logits", "copy"]
CASES = [pytest.param(c, id=i) for c, i in zip(cases.OFFSET, cases.OFFSET_IDS)]


def _op_cases():
    for c, i in zip(cases.OFFSET, cases.OFFSET_IDS):
        for op in OPS:
            if op == "attention" or c.topk is None:
                yield pytest.param(op, c, id=f"{op}-{i}")


# --------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,c", list(_op_cases()))
@pytest.mark.parametrize("kind", ["fractional", "integer"])
def test_matches_oracle(op, c, backend, dtype, kind, backend_env):
    """Forward and gradients (q, k, v; attn for copy) against the float64 oracle."""
    device = backend_env(backend, KERNELS[op], dtype)
    seed = len(str(c)) + OPS.index(op)
    xs = _tensors(c, seed)
    offset = _offsets(c, kind, seed)
    leaves = [x.to(dtype).to(device).requires_grad_() for x in xs]
    ours, want_fn, inputs = _run(op, c, *leaves, offset.to(dtype).to(device), backend)
    assert ours.dtype == dtype and ours.device.type == device
    exact = [x.detach().to("cpu", F64).requires_grad_() for x in inputs]
    want = want_fn(*exact)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(ours).cpu(), finite), "excluded (-inf) positions differ"
    close("output", ours.detach().cpu().masked_fill(~finite, 0), want.detach().masked_fill(~finite, 0), dtype)
    g = (torch.randn(want.shape, generator=torch.Generator().manual_seed(7), dtype=F64) * finite).to(dtype).to(F64)
    got_grads = torch.autograd.grad(ours, inputs, g.to(dtype).to(device))
    want_grads = torch.autograd.grad(want.masked_fill(~finite, 0), exact, g)
    for n, (a, b) in enumerate(zip(got_grads, want_grads)):
        close(f"grad of input {n}", a.cpu(), b, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [cases.OFFSET[3], cases.OFFSET[10], cases.OFFSET[2]],
                         ids=[cases.OFFSET_IDS[3], cases.OFFSET_IDS[10], cases.OFFSET_IDS[2]])
def test_topk_indices_name_the_largest_logits(c, backend, backend_env):
    device = backend_env(backend, "local_offset_attention_fwd")
    q, k, v, _ = _tensors(c, 3, torch.float32, device)
    offset = _offsets(c, "fractional", 3).float()
    _, idx = densecorr.local_attention(q, _refs(k, c), _refs(v, c), scale=0.8, topk=c.topk, offset=offset.to(device),
                                       return_indices=True, backend=backend, **_geo(c))
    assert idx.shape == (c.B, c.H, c.W, c.topk) and idx.dtype == torch.int64
    _, logits = oracle_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), offset.double(), c.radius,
                                 c.dilation, 0.8, c.boundary, c.window, 0)
    chosen = logits.gather(1, idx.cpu().permute(0, 3, 1, 2)).sort(1).values
    best = logits.topk(c.topk, 1).values.sort(1).values
    finite = torch.isfinite(best)
    assert torch.equal(torch.isfinite(chosen), finite)
    close("logits at the returned indices", chosen.masked_fill(~finite, 0), best.masked_fill(~finite, 0),
          torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_half_precision(op, backend, dtype, backend_env):
    """Half inputs: float32 accumulation (error within the half tolerance of the oracle on the
    rounded inputs), outputs in the input dtype."""
    c = cases.OFFSET[4] if op == "attention" else cases.OFFSET[1]
    device = backend_env(backend, KERNELS[op], dtype)
    xs = [x.to(dtype).to(F64) for x in _tensors(c, 11)]  # values representable in dtype
    offset = _offsets(c, "fractional", 11)
    leaves = [x.to(dtype).to(device).requires_grad_() for x in xs]
    ours, want_fn, inputs = _run(op, c, *leaves, offset.to(dtype).to(device), backend)
    assert ours.dtype == dtype
    exact = [x.detach().to("cpu", F64).requires_grad_() for x in inputs]
    want = want_fn(*exact)
    finite = torch.isfinite(want)
    atol, rtol = TOLERANCE[dtype]
    scale_of = lambda t: max(1.0, t.abs().max().item())  # noqa: E731
    torch.testing.assert_close(ours.detach().cpu().double().masked_fill(~finite, 0), want.detach().masked_fill(~finite, 0),
                               atol=atol * scale_of(want.masked_fill(~finite, 0)), rtol=rtol)
    g = (torch.randn(want.shape, generator=torch.Generator().manual_seed(5), dtype=F64) * finite).to(dtype).to(F64)
    for a, b in zip(torch.autograd.grad(ours, inputs, g.to(dtype).to(device)),
                    torch.autograd.grad(want.masked_fill(~finite, 0), exact, g)):
        assert a.dtype == dtype
        torch.testing.assert_close(a.cpu().double(), b, atol=atol * scale_of(b), rtol=rtol)


# --------------------------------------------------------------------------- exact relations


def _canvas(x, shifts, S, fill_outside=None):
    """References x (B, T, E, H, W) moved so that a plain window centred on canvas pixel
    (y+S, x+S) sees reference t's pixels around (y + sy_t, x + sx_t): (B, T, E', H+2S, W+2S),
    zero outside the image; with fill_outside, one more channel equal to fill_outside outside
    the image (0 inside)."""
    B, T, E, H, W = x.shape
    extra = 0 if fill_outside is None else 1
    out = torch.zeros(B, T, E + extra, H + 2 * S, W + 2 * S, dtype=x.dtype)
    if extra:
        out[:, :, E] = fill_outside
    for t, (sy, sx) in enumerate(shifts):
        out[:, t, :E, S - sy : S - sy + H, S - sx : S - sx + W] = x[:, t]
        if extra:
            out[:, t, E, S - sy : S - sy + H, S - sx : S - sx + W] = 0
    return out


@pytest.mark.parametrize("c", CASES)
def test_integer_offset_is_the_plain_op_on_shifted_windows(c):
    """A constant integer offset per reference = the plain op (boundary "zero") on references
    moved by it, on a canvas large enough for every window; "mask" is the same with a penalty
    channel that gives each position outside the image a logit of -7000 (weight exactly 0)."""
    q, k, v, attn = _tensors(c, 5)
    span = c.radius * c.dilation + 2
    g = torch.Generator().manual_seed(9)
    shifts = [tuple(int(s) for s in torch.randint(-span, span + 1, (2,), generator=g)) for _ in range(c.T)]
    offset = torch.tensor(shifts, dtype=F64).view(1, c.T, 2, 1, 1).expand(c.B, c.T, 2, c.H, c.W).contiguous()
    S = 2 * span
    mask = c.boundary == "mask"
    inner = (slice(None), slice(None), slice(S, S + c.H), slice(S, S + c.W))
    qc = torch.zeros(c.B, c.D + 1, c.H + 2 * S, c.W + 2 * S, dtype=F64)
    qc[:, : c.D, S : S + c.H, S : S + c.W] = q
    qc[:, c.D] = 1.0 if mask else 0.0  # picks the penalty channel
    kc = _canvas(k, shifts, S, -1e4 / 0.8)
    vc = _canvas(v, shifts, S)
    geo = dict(radius=c.radius, dilation=c.dilation, window=c.window)
    ours = densecorr.local_attention(q, k, v, scale=0.8, topk=c.topk, offset=offset, boundary=c.boundary,
                                     backend=REF, **geo)
    plain = densecorr.local_attention(qc, kc, vc, scale=0.8, topk=c.topk, boundary="zero", backend=REF, **geo)
    close("local_attention", ours, plain[inner], F64)
    if c.topk is None:
        ours = densecorr.local_affinity(q, k, scale=0.8, offset=offset, boundary=c.boundary, backend=REF, **geo)
        plain = densecorr.local_affinity(qc, kc, scale=0.8, boundary="zero", backend=REF, **geo)[inner]
        logits = densecorr.local_affinity(qc, kc, scale=0.8, normalize=False, boundary="zero", backend=REF, **geo)
        empty = (logits[inner] < -1000).all(1, keepdim=True)  # every position outside the image
        assert not mask or (ours.masked_select(empty) == 0).all()
        close("local_affinity", ours, plain.masked_fill(empty & mask, 0), F64)
        attn_c = torch.zeros(c.B, attn.shape[1], c.H + 2 * S, c.W + 2 * S, dtype=F64)
        attn_c[inner] = attn
        ours = densecorr.local_copy(attn, v, offset=offset, boundary=c.boundary, backend=REF, **geo)
        plain = densecorr.local_copy(attn_c, vc, boundary="zero", backend=REF, **geo)
        close("local_copy", ours, plain[inner], F64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", CASES)
def test_zero_offset_is_the_plain_op(c, backend, backend_env):
    device = backend_env(backend, "local_offset_attention_fwd")
    dtype = F64 if backend != "triton" else torch.float32
    q, k, v, attn = _tensors(c, 6, dtype, device)
    zero = torch.zeros(c.B, c.T, 2, c.H, c.W, dtype=dtype, device=device)
    kw = dict(backend=backend, **_geo(c))
    close("local_attention", densecorr.local_attention(q, k, v, topk=c.topk, offset=zero, **kw),
          densecorr.local_attention(q, k, v, topk=c.topk, backend=REF, **_geo(c)), dtype)
    if c.topk is None:
        for normalize in (True, False):
            a = densecorr.local_affinity(q, k, normalize=normalize, offset=zero, **kw)
            b = densecorr.local_affinity(q, k, normalize=normalize, backend=REF, **_geo(c))
            assert torch.equal(torch.isinf(a), torch.isinf(b))
            close("local_affinity", a.nan_to_num(0, 0, 0), b.nan_to_num(0, 0, 0), dtype)
        close("local_copy", densecorr.local_copy(attn, v, offset=zero, **kw),
              densecorr.local_copy(attn, v, backend=REF, **_geo(c)), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("boundary", ["mask", "zero"])
def test_windows_moved_out_of_the_image(boundary, backend, backend_env):
    """Pixels whose windows are moved entirely out of the image (offsets up to 1e30): "mask"
    gives output 0, lse -inf, zero weights and -inf logits; "zero" gives output 0 and a uniform
    softmax (every position has logit 0), lse = log(T*P). Other pixels are unaffected."""
    device = backend_env(backend, "local_offset_attention_fwd")
    dtype = F64 if backend != "triton" else torch.float32
    c = cases.LocalCase(1, 2, 3, 2, 5, 6, 1, 1, boundary, "square", None)
    q, k, v, _ = _tensors(c, 8, dtype, device)
    g = torch.Generator().manual_seed(8)  # |offset| < 1 elsewhere: every other window keeps a point inside
    offset = (torch.rand(c.B, c.T, 2, c.H, c.W, generator=g) * 1.6 - 0.8).to(dtype).to(device)
    far = torch.zeros(c.H, c.W, dtype=torch.bool)
    far[1, 2] = far[4, 5] = far[0, 0] = True
    offset[:, 0, 0, 1, 2], offset[:, 1, 1, 1, 2] = 1e30, -1e30
    offset[:, :, 0, 4, 5], offset[:, :, 1, 0, 0] = -50.5, 7.25
    out, lse, idx = torch.ops.densecorr.local_offset_attention_fwd(q, k, v, offset, 1, 1, 1.0, boundary, "square", 0,
                                                                    backend)
    assert idx.shape == (1, 5, 6, 0)
    want, _ = oracle_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), offset.cpu().double().clamp(-100, 100),
                               1, 1, 1.0, boundary, "square", 0)
    close("output", out.cpu(), want, dtype)
    assert (out.cpu()[0][:, far] == 0).all()
    expected_lse = float("-inf") if boundary == "mask" else float(torch.tensor(18.0).log())
    assert torch.allclose(lse.cpu()[0][far].double(), torch.tensor(expected_lse, dtype=F64).expand(3))
    assert torch.isfinite(lse.cpu()[0][~far]).all()
    attn = densecorr.local_affinity(q, k, 1, offset=offset, boundary=boundary, backend=backend)
    expected_attn = 0.0 if boundary == "mask" else 1 / 18
    assert torch.allclose(attn.cpu()[0][:, far].double(), torch.tensor(expected_attn, dtype=F64))
    logits = densecorr.local_affinity(q, k, 1, normalize=False, offset=offset, boundary=boundary, backend=backend)
    assert (logits.cpu()[0][:, far] == (float("-inf") if boundary == "mask" else 0.0)).all()
    # gradients stay finite (zero for the moved-out pixels' queries)
    qg = q.clone().requires_grad_()
    o = densecorr.local_attention(qg, k, v, 1, offset=offset, boundary=boundary, backend=backend)
    (dq,) = torch.autograd.grad(o, qg, torch.ones_like(o))
    assert torch.isfinite(dq).all() and (dq.cpu()[0][:, far] == 0).all()


# --------------------------------------------------------------------------- gradcheck, opcheck, compile


GRAD_CASES = [
    cases.LocalCase(1, 2, 2, 2, 4, 5, 1, 1, "mask", "square", None),
    cases.LocalCase(1, 2, 2, 1, 4, 5, 1, 2, "zero", "circle", 3),
    cases.LocalCase(1, 1, 3, 2, 3, 1, 1, 1, "mask", "square", 2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", GRAD_CASES, ids=[cases.local_id(c) for c in GRAD_CASES])
def test_gradcheck_float64(c, backend, backend_env):
    """Finite differences in float64, fractional offsets (bilinear sampling is smooth there)."""
    device = backend_env(backend, "local_offset_attention_fwd", F64)
    q, k, v, attn = (x.to(device).requires_grad_() for x in _tensors(c, 4))
    offset = _offsets(c, "fractional", 4).to(device)
    kw = dict(offset=offset, backend=backend, **_geo(c))
    assert torch.autograd.gradcheck(lambda a, b, d: densecorr.local_attention(a, b, d, scale=0.7, topk=c.topk, **kw),
                                    (q, k, v))
    if c.topk is None:
        for normalize in (True, False):
            assert torch.autograd.gradcheck(
                lambda a, b: densecorr.local_affinity(a, b, scale=0.7, normalize=normalize, **kw).nan_to_num(0, 0, 0),
                (q, k), fast_mode=True)
        assert torch.autograd.gradcheck(lambda a, b: densecorr.local_copy(a, b, **kw), (attn, v), fast_mode=True)


def _opcheck_cases(backend, device):
    c = cases.LocalCase(1, 2, 3, 2, 4, 5, 1, 1, "mask", "square", None)
    q, k, v, attn = (x.to(device).requires_grad_() for x in _tensors(c, 2))
    offset = _offsets(c, "fractional", 2).to(device)
    ops = torch.ops.densecorr
    with torch.no_grad():
        a = ops.local_offset_affinity_fwd(q, k, offset, 1, 1, 0.5, True, "mask", "square", backend)
        out, lse, idx = ops.local_offset_attention_fwd(q, k, v, offset, 1, 2, 0.5, "zero", "circle", 4, backend)
    g_out = torch.randn_like(out)
    qd, kd, vd, ad = (x.detach() for x in (q, k, v, attn))  # the bwd ops have no double backward
    return {
        "affinity_fwd": (ops.local_offset_affinity_fwd, (q, k, offset, 1, 1, 0.5, True, "mask", "square", backend)),
        "affinity_fwd_logits": (ops.local_offset_affinity_fwd, (q, k, offset, 1, 2, 0.5, False, "zero", "circle", backend)),
        "affinity_bwd": (ops.local_offset_affinity_bwd,
                         (torch.randn_like(a), qd, kd, offset, a, 1, 1, 0.5, True, "mask", "square", backend)),
        "copy_fwd": (ops.local_offset_copy_fwd, (attn, v, offset, 1, 1, "mask", "square", backend)),
        "copy_bwd": (ops.local_offset_copy_bwd, (g_out, ad, vd, offset, 1, 1, "zero", "square", backend)),
        "attention_fwd": (ops.local_offset_attention_fwd, (q, k, v, offset, 1, 1, 0.5, "mask", "square", 0, backend)),
        "attention_fwd_topk": (ops.local_offset_attention_fwd, (q, k, v, offset, 1, 2, 0.5, "zero", "circle", 4, backend)),
        "attention_bwd": (ops.local_offset_attention_bwd,
                          (g_out, qd, kd, vd, offset, out, lse, idx, 1, 2, 0.5, "zero", "circle", backend)),
    }


OPCHECK = ["affinity_fwd", "affinity_fwd_logits", "affinity_bwd", "copy_fwd", "copy_bwd", "attention_fwd",
           "attention_fwd_topk", "attention_bwd"]


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
@pytest.mark.parametrize("case", OPCHECK)
def test_opcheck(case, backend, backend_env):
    device = backend_env(backend, "local_offset_" + case.split("_")[0] + "_" + case.split("_")[1], F64)
    op, args = _opcheck_cases(backend, device)[case]
    torch.library.opcheck(op, args)


def test_torch_compile_dynamic():
    """The three public functions with offsets under torch.compile(dynamic=True, fullgraph=True),
    forward and backward, on two shapes (one graph for both)."""
    def f(q, k, v, offset):
        out = densecorr.local_attention(q, k, v, 1, scale=0.6, boundary="zero", topk=3, offset=offset, backend=REF)
        attn = densecorr.local_affinity(q, k, 1, scale=0.6, offset=offset, backend=REF)
        cp = densecorr.local_copy(attn, v, 1, offset=offset, backend=REF)
        return out.sum() + (cp * cp).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for H, W in ((4, 5), (6, 3)):
        c = cases.LocalCase(1, 2, 3, 2, H, W, 1, 1, "mask", "square", None)
        q, k, v, _ = (x.requires_grad_() for x in _tensors(c, H))
        offset = _offsets(c, "fractional", H)
        got, eager = compiled(q, k, v, offset), f(q, k, v, offset)
        close("compiled", got, eager, F64)
        for n, (a, b) in enumerate(zip(torch.autograd.grad(got, (q, k, v)), torch.autograd.grad(eager, (q, k, v)))):
            close(f"compiled grad {n}", a, b, F64)


# --------------------------------------------------------------------------- bad input

_q, _k, _v = torch.randn(1, 3, 4, 5), torch.randn(1, 2, 3, 4, 5), torch.randn(1, 2, 2, 4, 5)
_off = torch.zeros(1, 2, 2, 4, 5)
_nan = _off.clone()
_nan[0, 1, 0, 2, 3] = float("nan")
_inf = _off.clone()
_inf[0, 0, 1, 0, 0] = float("inf")
_attn = torch.rand(1, 18, 4, 5)
BAD = [
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off[:, :1]), ValueError, r"offset must be \(B, T, 2, H, W\)"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off[:, 0]), ValueError, r"offset must be 5-D"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off[..., :4]), ValueError, r"offset must be \(B, T, 2, H, W\) = \(1, 2, 2, 4, 5\)"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off[:, :, :1]), ValueError, "channel 0 dy, 1 dx"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off.long()), TypeError, "offset must be a floating-point"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off.to("meta")), ValueError, "offset is on meta"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off.clone().requires_grad_()), ValueError,
     r"offsets are not differentiable; pass offset.detach\(\)"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_off, boundary="clamp"), ValueError,
     'boundary="clamp" cannot take an offset'),
    (lambda: densecorr.local_affinity(_q, _k, 1, offset=_off, boundary="clamp"), ValueError, 'boundary="clamp" cannot'),
    (lambda: densecorr.local_copy(_attn, _v, 1, offset=_off, boundary="clamp"), ValueError, 'boundary="clamp" cannot'),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset=_nan), ValueError, "local_attention: offset holds non-finite"),
    (lambda: densecorr.local_affinity(_q, _k, 1, offset=_inf), ValueError, "local_affinity: offset holds non-finite"),
    (lambda: densecorr.local_copy(_attn, _v, 1, offset=_nan), ValueError, "local_copy: offset holds non-finite"),
    (lambda: densecorr.local_affinity(_q, _k, 1, offset=_off[:, :, :, :3]), ValueError, "offset must be"),
    (lambda: densecorr.local_copy(_attn, _v, 1, offset=torch.zeros(1, 2, 4, 5)), ValueError, "offset must be 5-D"),
    (lambda: densecorr.local_attention(_q, _k, _v, 1, offset="zero"), TypeError, "offset must be a torch.Tensor"),
    (lambda: torch.ops.densecorr.local_offset_attention_fwd(_q, _k, _v, _off.double(), 1, 1, 1.0, "mask", "square", 0,
                                                            REF), TypeError, "offset is torch.float64, expected torch.float32"),
    (lambda: torch.ops.densecorr.local_offset_copy_fwd(_attn, _v, _off[:, :1], 1, 1, "mask", "square", REF), ValueError,
     r"offset has shape \(1, 1, 2, 4, 5\), expected \(1, 2, 2, 4, 5\)"),
    (lambda: torch.ops.densecorr.local_offset_affinity_bwd(torch.rand(1, 18, 4, 5), _q, _k, _off, torch.rand(1, 9, 4, 5),
                                                           1, 1, 1.0, True, "mask", "square", REF), ValueError,
     r"attn has shape \(1, 9, 4, 5\), expected \(1, 18, 4, 5\)"),
    (lambda: torch.ops.densecorr.local_offset_attention_bwd(
        torch.rand(1, 2, 4, 5), _q, _k, _v, _off, torch.rand(1, 2, 4, 5), torch.rand(1, 4, 5),
        torch.full((1, 4, 5, 2), 18), 1, 1, 1.0, "mask", "square", REF), ValueError, r"idx holds window position indices in \[18, 18\]"),
    (lambda: torch.ops.densecorr.local_offset_copy_bwd(torch.rand(1, 2, 4, 5), _attn, _v, _nan, 1, 1, "mask", "square",
                                                       REF), ValueError, "local_offset_copy_bwd: offset holds non-finite"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_offset_input(case):
    call, error, message = BAD[case]
    with pytest.raises(error, match=message):
        call()


def test_t1_offset_layouts_agree():
    """T == 1: offset (B, 2, H, W) and (B, 1, 2, H, W), k as (B, D, H, W) or (B, 1, D, H, W)."""
    c = cases.OFFSET[1]
    q, k, v, _ = _tensors(c, 1)
    offset = _offsets(c, "fractional", 1)
    a = densecorr.local_attention(q, k[:, 0], v[:, 0], 1, offset=offset[:, 0], backend=REF)
    b = densecorr.local_attention(q, k, v, 1, offset=offset, backend=REF)
    close("T=1 layouts", a, b, F64)
    h = densecorr.local_attention(q.float(), k.float(), v.float(), 1, offset=offset.half(), backend=REF)
    want = densecorr.local_attention(q, k, v, 1, offset=offset.half().double(), backend=REF)
    close("float16 offset with float32 inputs", h, want, torch.float32)
