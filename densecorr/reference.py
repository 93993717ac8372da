"""Pure-PyTorch implementations of every kernel op: the test oracle, the fallback backend
("reference") and the benchmark baseline.

Each function has the signature and layouts of the kernel op of the same name
(csrc/densecorr.cpp). Work is chunked over queries (global) or query rows (local) so that
no intermediate holds more than about CHUNK_ELEMENTS elements per chunk: the
N x M affinity and the T*P x H x W window volume are never materialised whole (except
where they are the op's output: global_affinity, local_affinity).

Computation is in the inputs' dtype, except float16/bfloat16, which accumulate in float32.
"""
from __future__ import annotations

import torch

from densecorr.backends import Backend, python_kernel, register_backend, register_kernel
from densecorr.geometry import axis_index, window_offsets, window_size  # noqa: F401  (window_size: re-exported)

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
register_backend(Backend("reference", None, DTYPES, lambda: None, python_kernel("reference")))

# Elements (of the largest intermediate) per chunk; tests lower it to exercise chunking.
CHUNK_ELEMENTS = 1 << 22


def _acc(t: torch.Tensor) -> torch.Tensor:
    """`t` in the accumulation dtype (float32 for half precision)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _chunks(total: int, per_item: int):
    """Ranges over `total` items, each chunk with at most CHUNK_ELEMENTS // per_item items."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_item))
    for start in range(0, total, step):
        yield start, min(total, start + step)


# --------------------------------------------------------------------------- global


def _gather_keys(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, M, E), idx (B, n, k) -> (B, n, k, E): the rows of x named by idx."""
    B, n, k = idx.shape
    flat = torch.gather(x, 1, idx.reshape(B, n * k, 1).expand(B, n * k, x.shape[-1]))
    return flat.view(B, n, k, x.shape[-1])


@register_kernel("global_attention_fwd", "reference")
def global_attention_fwd(q, k, v, scale: float, topk: int):
    """q (B,N,D), k (B,M,D), v (B,M,C) -> out (B,N,C), lse (B,N), idx (B,N,topk) int64."""
    B, N, _ = q.shape
    M, C = k.shape[1], v.shape[2]
    qa, ka, va = _acc(q), _acc(k), _acc(v)
    out = torch.empty(B, N, C, dtype=qa.dtype, device=q.device)
    lse = torch.empty(B, N, dtype=qa.dtype, device=q.device)
    idx = torch.empty(B, N, topk, dtype=torch.int64, device=q.device)
    for s, e in _chunks(N, B * max(M, topk * (C + k.shape[2]))):
        logits = scale * torch.bmm(qa[:, s:e], ka.transpose(1, 2))
        if topk:
            vals, ind = logits.topk(topk, dim=-1)
            lse[:, s:e] = torch.logsumexp(vals, -1)
            p = torch.exp(vals - lse[:, s:e, None])
            out[:, s:e] = (p[..., None] * _gather_keys(va, ind)).sum(2)
            idx[:, s:e] = ind
        else:
            lse[:, s:e] = torch.logsumexp(logits, -1)
            out[:, s:e] = torch.bmm(torch.exp(logits - lse[:, s:e, None]), va)
    return out.to(q.dtype), lse, idx


@register_kernel("global_attention_bwd", "reference")
def global_attention_bwd(grad_out, q, k, v, out, lse, idx, scale: float):
    """Gradients (dq, dk, dv) of global_attention_fwd, recomputing the affinity by chunks."""
    B, N, D = q.shape
    M, C = k.shape[1], v.shape[2]
    topk = idx.shape[-1]
    qa, ka, va, go = _acc(q), _acc(k), _acc(v), _acc(grad_out)
    # delta (B, N) = sum_c dout * out, the softmax correction. A half-precision `out` is
    # rounded: then delta is recomputed from the float32 probabilities (sum_i p_i dout.v_i).
    exact_out = out.dtype not in (torch.float16, torch.bfloat16)
    delta = (go * _acc(out)).sum(-1) if exact_out else None
    dq = torch.empty_like(qa)
    dk = torch.zeros_like(ka)
    dv = torch.zeros_like(va)
    for s, e in _chunks(N, B * max(M, topk * (C + D))):
        qc, gc = qa[:, s:e], go[:, s:e]
        if topk:
            ind = idx[:, s:e]
            kg, vg = _gather_keys(ka, ind), _gather_keys(va, ind)  # (B, n, k, D|C)
            p = torch.exp(scale * (qc[:, :, None] * kg).sum(-1) - lse[:, s:e, None])
            dp = (gc[:, :, None] * vg).sum(-1)
            dl = delta[:, s:e, None] if exact_out else (p * dp).sum(-1, keepdim=True)
            ds = p * (dp - dl)
            dq[:, s:e] = scale * (ds[..., None] * kg).sum(2)
            flat = ind.reshape(B, -1, 1)
            dk.scatter_add_(1, flat.expand(-1, -1, D), (scale * ds[..., None] * qc[:, :, None]).reshape(B, -1, D))
            dv.scatter_add_(1, flat.expand(-1, -1, C), (p[..., None] * gc[:, :, None]).reshape(B, -1, C))
        else:
            p = torch.exp(scale * torch.bmm(qc, ka.transpose(1, 2)) - lse[:, s:e, None])
            dp = torch.bmm(gc, va.transpose(1, 2))
            dl = delta[:, s:e, None] if exact_out else (p * dp).sum(-1, keepdim=True)
            ds = p * (dp - dl)
            dq[:, s:e] = scale * torch.bmm(ds, ka)
            dk += scale * torch.bmm(ds.transpose(1, 2), qc)
            dv += torch.bmm(p.transpose(1, 2), gc)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def key_grid(H: int, W: int, dtype, device) -> torch.Tensor:
    """(H*W, 2) (x, y) of each key cell, row-major: the values project_coords averages."""
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=dtype, device=device), torch.arange(W, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def _image_to_tokens(k: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, H*W, D)."""
    return k.flatten(2).transpose(1, 2).contiguous()


@register_kernel("project_coords_fwd", "reference")
def project_coords_fwd(q, k, scale: float):
    """q (B,N,D), k (B,D,H,W) -> coords (B,N,2) as (x, y) in key cells, lse (B,N)."""
    B, D, H, W = k.shape
    grid = key_grid(H, W, _acc(q).dtype, q.device).expand(B, H * W, 2)
    coords, lse, _ = global_attention_fwd(q, _image_to_tokens(k), grid, scale, 0)
    return coords, lse


@register_kernel("project_coords_bwd", "reference")
def project_coords_bwd(grad_coords, q, k, coords, lse, scale: float):
    """Gradients (dq, dk) of project_coords_fwd."""
    B, D, H, W = k.shape
    grid = key_grid(H, W, _acc(q).dtype, q.device).expand(B, H * W, 2)
    empty = torch.empty(B, q.shape[1], 0, dtype=torch.int64, device=q.device)
    dq, dk, _ = global_attention_bwd(grad_coords, q, _image_to_tokens(k), grid, coords, lse, empty, scale)
    return dq, dk.transpose(1, 2).reshape(B, D, H, W).contiguous()


# --------------------------------------------------------------------------- local windows


class _Windows:
    """Window geometry of one local op call: per window row i, the columns j it keeps."""

    def __init__(self, H, W, radius, dilation, boundary, window, device):
        self.boundary = boundary
        self.rows, self.row_valid = axis_index(H, radius, dilation, boundary, device)
        self.cols, self.col_valid = axis_index(W, radius, dilation, boundary, device)
        by_row: dict[int, list[int]] = {}
        for i, j in window_offsets(radius, window):
            by_row.setdefault(i, []).append(j)
        # (i, tensor of j) in window order: positions p run over these rows, j within.
        self.groups = [(i, torch.tensor(js, device=device)) for i, js in sorted(by_row.items())]
        self.P = sum(len(js) for _, js in self.groups)

    def gather(self, x: torch.Tensor, i: int, js: torch.Tensor, y0: int, y1: int, t: int = 0):
        """x (B, E, H, W) -> (B, E, nj, y1-y0, W): x at window cells (i, js) of rows y0..y1,
        with zeros at invalid positions; and valid (nj, y1-y0, W). (t, the reference, is
        used by _OffsetWindows only.)"""
        rows = x[:, :, self.rows[i, y0:y1]]  # (B, E, h, W)
        g = rows[:, :, :, self.cols[js]].permute(0, 1, 3, 2, 4)  # (B, E, nj, h, W)
        valid = self.row_valid[i, y0:y1][None, :, None] & self.col_valid[js][:, None, :]
        if self.boundary != "clamp":
            g = g * valid
        return g, valid

    def scatter_add(self, target: torch.Tensor, vals: torch.Tensor, i: int, js: torch.Tensor, y0: int, y1: int,
                    t: int = 0):
        """Adjoint of gather: target (B, E, H, W) += vals (B, E, nj, y1-y0, W) at the window
        cells (i, js) of rows y0..y1 (vals must be zero at invalid positions)."""
        rows = self.rows[i, y0:y1][None, :, None].expand(len(js), -1, target.shape[-1])
        cols = self.cols[js][:, None, :].expand_as(rows)
        target.permute(2, 3, 0, 1).index_put_((rows, cols), vals.permute(2, 3, 4, 0, 1), accumulate=True)


def _local_logits(q, k, geo: _Windows, scale, y0, y1):
    """Scaled logits (B, T*P, y1-y0, W) for query rows y0..y1 and the valid mask.

    Invalid positions: logit 0 ("zero") or -inf ("mask")."""
    T = k.shape[1]
    qc = q[:, :, y0:y1, None].transpose(2, 3)  # (B, D, 1, h, W)
    logits, valids = [], []
    for t in range(T):
        for i, js in geo.groups:
            kg, valid = geo.gather(k[:, t], i, js, y0, y1, t)
            logits.append(scale * (qc * kg).sum(1))
            valids.append(valid.expand(q.shape[0], *valid.shape[-3:]))
    logits, valid = torch.cat(logits, 1), torch.cat(valids, 1)
    if geo.boundary == "mask":
        logits = logits.masked_fill(~valid, float("-inf"))
    return logits, valid


def _local_copy_rows(attn, v, geo: _Windows, y0, y1):
    """sum over window positions of attn (B, T*P, h, W) times v: (B, C, h, W)."""
    out, p0 = 0, 0
    for t in range(v.shape[1]):
        for i, js in geo.groups:
            vg, _ = geo.gather(v[:, t], i, js, y0, y1, t)
            out = out + (attn[:, None, p0 : p0 + len(js)] * vg).sum(2)
            p0 += len(js)
    return out


def _row_chunks(query, refs, geo, channels=None):
    """Row ranges such that one chunk's window volume (B, T*P, h, W) and gathered
    references (B, E, nj, h, W) stay bounded; refs is (B, T, E, H, W)."""
    B, _, H, W = query.shape
    T, E = refs.shape[1], channels or refs.shape[2]
    widest = max(len(js) for _, js in geo.groups)
    return _chunks(H, B * W * max(T * geo.P, E * widest))


def _geometry(H, W, radius, dilation, boundary, window, device):
    return _Windows(H, W, radius, dilation, boundary, window, device)


def _channel_mask(valid):
    """valid (nj, h, W) or, per batch element, (B, nj, h, W) -> broadcastable to (B, E, nj, h, W)."""
    return valid if valid.dim() == 3 else valid[:, None]


class _OffsetWindows:
    """Window geometry with a per-query, per-reference offset (the local_offset_* kernels):
    the window cell (i, j) of query pixel (y, x) in reference t is the point
    (y + oy + (i-r)*dil, x + ox + (j-r)*dil), sampled bilinearly from its 4 pixels (taps
    outside the image read 0). Same interface as _Windows (gather / scatter_add / groups / P).

    The point is split exactly into an integer part (y + (i-r)*dil + floor(oy)) and the
    fraction oy - floor(oy), so that the "mask" test (Y < 0 or Y > H-1) is exact integer
    logic: Y > H-1 iff row0 > H-1, or row0 == H-1 with a fraction > 0."""

    def __init__(self, offset, radius, dilation, boundary, window, dtype):
        B, T, _, H, W = offset.shape
        self.H, self.W, self.radius, self.dilation, self.boundary = H, W, radius, dilation, boundary
        bound = max(H, W) + radius * dilation + 2  # as the ops clamp (changes no result)
        off = offset.to(dtype).clamp(-bound, bound)
        whole = off.floor()
        self.frac = off - whole  # (B, T, 2, H, W), exact
        self.whole = whole.long()
        by_row: dict[int, list[int]] = {}
        for i, j in window_offsets(radius, window):
            by_row.setdefault(i, []).append(j)
        self.groups = [(i, torch.tensor(js, device=offset.device)) for i, js in sorted(by_row.items())]
        self.P = sum(len(js) for _, js in self.groups)
        self._cached = None

    def taps(self, i, js, y0, y1, t):
        """The 4 bilinear taps of the points of cells (i, js), query rows y0..y1, reference t:
        [(flat pixel index (B, nj*h*W) int64, weight (B, nj, h, W))], weights 0 for taps outside
        the image (and, with "mask", for points outside it); and valid (B, nj, h, W): the
        positions that enter the softmax (all with "zero"; those inside the image with "mask")."""
        key = (i, id(js), y0, y1, t)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        H, W, r, d = self.H, self.W, self.radius, self.dilation
        dev = js.device
        fy, fx = self.frac[:, t, 0, y0:y1][:, None], self.frac[:, t, 1, y0:y1][:, None]  # (B, 1, h, W)
        ys = torch.arange(y0, y1, device=dev)[None, None, :, None]
        xs = torch.arange(W, device=dev)[None, None, None, :]
        row0 = ys + (i - r) * d + self.whole[:, t, 0, y0:y1][:, None]  # (B, 1, h, W)
        col0 = xs + (js[None, :, None, None] - r) * d + self.whole[:, t, 1, y0:y1][:, None]  # (B, nj, h, W)
        row0, col0 = torch.broadcast_tensors(row0, col0)
        inside = (row0 >= 0) & (row0 + (fy > 0) <= H - 1) & (col0 >= 0) & (col0 + (fx > 0) <= W - 1)
        taps = []
        for dr, wr in ((0, 1 - fy), (1, fy)):
            for dc, wc in ((0, 1 - fx), (1, fx)):
                rr, cc = row0 + dr, col0 + dc
                ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
                if self.boundary == "mask":
                    ok = ok & inside
                index = (rr.clamp(0, H - 1) * W + cc.clamp(0, W - 1)).flatten(1)
                taps.append((index, wr * wc * ok))
        valid = inside if self.boundary == "mask" else torch.ones_like(inside)
        self._cached = (key, (taps, valid))
        return taps, valid

    def gather(self, x, i, js, y0, y1, t):
        """x (B, E, H, W) -> (B, E, nj, h, W) sampled at the points of cells (i, js); valid (B, nj, h, W)."""
        taps, valid = self.taps(i, js, y0, y1, t)
        B, E = x.shape[:2]
        flat = x.reshape(B, E, -1)
        out = 0
        for index, w in taps:
            g = flat.gather(2, index[:, None].expand(B, E, -1)).view(B, E, *w.shape[1:])
            out = out + w[:, None] * g
        return out, valid

    def scatter_add(self, target, vals, i, js, y0, y1, t):
        """Adjoint of gather: target (B, E, H, W) (a view with contiguous H, W) += the
        bilinear spread of vals (B, E, nj, h, W)."""
        taps, _ = self.taps(i, js, y0, y1, t)
        B, E = target.shape[:2]
        flat = target.view(B, E, -1)
        for index, w in taps:
            flat.scatter_add_(2, index[:, None].expand(B, E, -1), (w[:, None] * vals).reshape(B, E, -1))


def _softmax(logits):
    """Softmax over dim 1 and its logsumexp; a pixel all of whose positions are excluded
    (-inf) gets weights 0 and lse -inf (only possible with window offsets)."""
    lse = torch.logsumexp(logits, 1)
    p = torch.exp(logits - lse[:, None])
    return torch.where(torch.isneginf(lse)[:, None], 0.0, p), lse


def _affinity_fwd(q, k, geo, scale, normalize, out_dtype):
    qa, ka = _acc(q), _acc(k)
    B, _, H, W = q.shape
    out = torch.empty(B, k.shape[1] * geo.P, H, W, dtype=qa.dtype, device=q.device)
    for y0, y1 in _row_chunks(qa, ka, geo):
        logits, _ = _local_logits(qa, ka, geo, scale, y0, y1)
        out[:, :, y0:y1] = _softmax(logits)[0] if normalize else logits
    return out.to(out_dtype)


@register_kernel("local_affinity_fwd", "reference")
def local_affinity_fwd(q, k, radius: int, dilation: int, scale: float, normalize: bool, boundary: str, window: str):
    """q (B,D,H,W), k (B,T,D,H,W) -> (B, T*P, H, W) window logits or joint softmax."""
    B, D, H, W = q.shape
    geo = _geometry(H, W, radius, dilation, boundary, window, q.device)
    return _affinity_fwd(q, k, geo, scale, normalize, q.dtype)


def _logits_adjoint(dlogits, q, k, geo: _Windows, scale, y0, y1, dq, dk):
    """Accumulate into dq (B,D,H,W), dk (B,T,D,H,W) the gradients of _local_logits for rows
    y0..y1, given dlogits (B, T*P, h, W) (zero at excluded positions)."""
    qc = q[:, :, y0:y1, None].transpose(2, 3)  # (B, D, 1, h, W)
    p0 = 0
    for t in range(k.shape[1]):
        for i, js in geo.groups:
            d = scale * dlogits[:, None, p0 : p0 + len(js)]  # (B, 1, nj, h, W)
            kg, valid = geo.gather(k[:, t], i, js, y0, y1, t)
            dq[:, :, y0:y1] += (d * kg).sum(2)
            geo.scatter_add(dk[:, t], d * qc * _channel_mask(valid), i, js, y0, y1, t)
            p0 += len(js)


def _copy_adjoint(grad_rows, attn_rows, v, geo: _Windows, y0, y1, dv):
    """Gradient of _local_copy_rows w.r.t. attn, (B, T*P, h, W); accumulates dv (B,T,C,H,W)."""
    dattn = []
    g = grad_rows[:, :, None]  # (B, C, 1, h, W)
    p0 = 0
    for t in range(v.shape[1]):
        for i, js in geo.groups:
            vg, valid = geo.gather(v[:, t], i, js, y0, y1, t)
            a = attn_rows[:, None, p0 : p0 + len(js)]
            dattn.append((g * vg).sum(1))
            geo.scatter_add(dv[:, t], a * g * _channel_mask(valid), i, js, y0, y1, t)
            p0 += len(js)
    return torch.cat(dattn, 1)


def _softmax_adjoint(p, dp):
    """Gradient w.r.t. logits of p = softmax(logits, dim 1), given dL/dp."""
    return p * (dp - (p * dp).sum(1, keepdim=True))


def _affinity_bwd(grad_attn, q, k, attn, geo, scale, normalize):
    qa, ka, g, a = _acc(q), _acc(k), _acc(grad_attn), _acc(attn)
    dq, dk = torch.zeros_like(qa), torch.zeros_like(ka)
    for y0, y1 in _row_chunks(qa, ka, geo):
        gc, ac = g[:, :, y0:y1], a[:, :, y0:y1]
        # Excluded (-inf) outputs carry no gradient; softmax gives them p = 0 already.
        dlogits = _softmax_adjoint(ac, gc) if normalize else gc.masked_fill(torch.isinf(ac), 0)
        _logits_adjoint(dlogits, qa, ka, geo, scale, y0, y1, dq, dk)
    return dq.to(q.dtype), dk.to(k.dtype)


@register_kernel("local_affinity_bwd", "reference")
def local_affinity_bwd(grad_attn, q, k, attn, radius: int, dilation: int, scale: float, normalize: bool, boundary: str, window: str):
    """Gradients (dq, dk) of local_affinity_fwd."""
    B, D, H, W = q.shape
    geo = _geometry(H, W, radius, dilation, boundary, window, q.device)
    return _affinity_bwd(grad_attn, q, k, attn, geo, scale, normalize)


def _copy_fwd(attn, v, geo):
    B, _, H, W = attn.shape
    aa, va = _acc(attn), _acc(v)
    out = torch.empty(B, v.shape[2], H, W, dtype=aa.dtype, device=attn.device)
    for y0, y1 in _row_chunks(aa, va, geo):
        out[:, :, y0:y1] = _local_copy_rows(aa[:, :, y0:y1], va, geo, y0, y1)
    return out.to(attn.dtype)


@register_kernel("local_copy_fwd", "reference")
def local_copy_fwd(attn, v, radius: int, dilation: int, boundary: str, window: str):
    """attn (B,T*P,H,W), v (B,T,C,H,W) -> (B,C,H,W): out_j = sum_i attn_ji v_i."""
    B, _, H, W = attn.shape
    return _copy_fwd(attn, v, _geometry(H, W, radius, dilation, boundary, window, attn.device))


def _copy_bwd(grad_out, attn, v, geo):
    aa, va, g = _acc(attn), _acc(v), _acc(grad_out)
    dattn, dv = torch.empty_like(aa), torch.zeros_like(va)
    for y0, y1 in _row_chunks(aa, va, geo):
        dattn[:, :, y0:y1] = _copy_adjoint(g[:, :, y0:y1], aa[:, :, y0:y1], va, geo, y0, y1, dv)
    return dattn.to(attn.dtype), dv.to(v.dtype)


@register_kernel("local_copy_bwd", "reference")
def local_copy_bwd(grad_out, attn, v, radius: int, dilation: int, boundary: str, window: str):
    """Gradients (dattn, dv) of local_copy_fwd."""
    B, _, H, W = attn.shape
    return _copy_bwd(grad_out, attn, v, _geometry(H, W, radius, dilation, boundary, window, attn.device))


def _local_softmax(logits, idx_rows):
    """Joint softmax over dim 1, restricted to the positions idx_rows (B, h, W, topk) if any."""
    if idx_rows.shape[-1]:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx_rows.permute(0, 3, 1, 2), True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return _softmax(logits)


def _attention_fwd(q, k, v, geo, scale, topk):
    B, D, H, W = q.shape
    qa, ka, va = _acc(q), _acc(k), _acc(v)
    out = torch.empty(B, v.shape[2], H, W, dtype=qa.dtype, device=q.device)
    lse = torch.empty(B, H, W, dtype=qa.dtype, device=q.device)
    idx = torch.empty(B, H, W, topk, dtype=torch.int64, device=q.device)
    for y0, y1 in _row_chunks(qa, ka, geo, k.shape[2] + v.shape[2]):
        logits, _ = _local_logits(qa, ka, geo, scale, y0, y1)
        if topk:
            idx[:, y0:y1] = logits.topk(topk, dim=1).indices.permute(0, 2, 3, 1)
        p, lse[:, y0:y1] = _local_softmax(logits, idx[:, y0:y1])
        out[:, :, y0:y1] = _local_copy_rows(p, va, geo, y0, y1)
    return out.to(q.dtype), lse, idx


@register_kernel("local_attention_fwd", "reference")
def local_attention_fwd(q, k, v, radius: int, dilation: int, scale: float, boundary: str, window: str, topk: int):
    """q (B,D,H,W), k (B,T,D,H,W), v (B,T,C,H,W) -> out (B,C,H,W), lse (B,H,W), idx (B,H,W,topk)."""
    B, D, H, W = q.shape
    return _attention_fwd(q, k, v, _geometry(H, W, radius, dilation, boundary, window, q.device), scale, topk)


def _attention_bwd(grad_out, q, k, v, idx, geo, scale):
    qa, ka, va, g = _acc(q), _acc(k), _acc(v), _acc(grad_out)
    dq, dk, dv = torch.zeros_like(qa), torch.zeros_like(ka), torch.zeros_like(va)
    for y0, y1 in _row_chunks(qa, ka, geo, k.shape[2] + v.shape[2]):
        logits, _ = _local_logits(qa, ka, geo, scale, y0, y1)
        p, _ = _local_softmax(logits, idx[:, y0:y1])
        dp = _copy_adjoint(g[:, :, y0:y1], p, va, geo, y0, y1, dv)
        _logits_adjoint(_softmax_adjoint(p, dp), qa, ka, geo, scale, y0, y1, dq, dk)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@register_kernel("local_attention_bwd", "reference")
def local_attention_bwd(grad_out, q, k, v, out, lse, idx, radius: int, dilation: int, scale: float, boundary: str, window: str):
    """Gradients (dq, dk, dv) of local_attention_fwd, recomputing each row chunk's softmax."""
    B, D, H, W = q.shape
    return _attention_bwd(grad_out, q, k, v, idx, _geometry(H, W, radius, dilation, boundary, window, q.device), scale)


# --------------------------------------------------------------------------- local windows with offsets
#
# The same computations on _OffsetWindows: each position's keys and values are bilinear
# samples at the offset point (row chunks as above; per window row, 4 gathers per tap).


def _offsets(offset, radius, dilation, boundary, window, like):
    return _OffsetWindows(offset, radius, dilation, boundary, window, _acc(like).dtype)


@register_kernel("local_offset_affinity_fwd", "reference")
def local_offset_affinity_fwd(q, k, offset, radius: int, dilation: int, scale: float, normalize: bool, boundary: str,
                              window: str):
    """local_affinity_fwd with offset (B,T,2,H,W) -> (B, T*P, H, W)."""
    return _affinity_fwd(q, k, _offsets(offset, radius, dilation, boundary, window, q), scale, normalize, q.dtype)


@register_kernel("local_offset_affinity_bwd", "reference")
def local_offset_affinity_bwd(grad_attn, q, k, offset, attn, radius: int, dilation: int, scale: float, normalize: bool,
                              boundary: str, window: str):
    """Gradients (dq, dk) of local_offset_affinity_fwd."""
    geo = _offsets(offset, radius, dilation, boundary, window, q)
    return _affinity_bwd(grad_attn, q, k, attn, geo, scale, normalize)


@register_kernel("local_offset_copy_fwd", "reference")
def local_offset_copy_fwd(attn, v, offset, radius: int, dilation: int, boundary: str, window: str):
    """local_copy_fwd with offset -> (B, C, H, W)."""
    return _copy_fwd(attn, v, _offsets(offset, radius, dilation, boundary, window, v))


@register_kernel("local_offset_copy_bwd", "reference")
def local_offset_copy_bwd(grad_out, attn, v, offset, radius: int, dilation: int, boundary: str, window: str):
    """Gradients (dattn, dv) of local_offset_copy_fwd."""
    return _copy_bwd(grad_out, attn, v, _offsets(offset, radius, dilation, boundary, window, v))


@register_kernel("local_offset_attention_fwd", "reference")
def local_offset_attention_fwd(q, k, v, offset, radius: int, dilation: int, scale: float, boundary: str, window: str,
                               topk: int):
    """local_attention_fwd with offset -> out (B,C,H,W), lse (B,H,W), idx (B,H,W,topk)."""
    return _attention_fwd(q, k, v, _offsets(offset, radius, dilation, boundary, window, q), scale, topk)


@register_kernel("local_offset_attention_bwd", "reference")
def local_offset_attention_bwd(grad_out, q, k, v, offset, out, lse, idx, radius: int, dilation: int, scale: float,
                               boundary: str, window: str):
    """Gradients (dq, dk, dv) of local_offset_attention_fwd (softmax recomputed per row chunk)."""
    return _attention_bwd(grad_out, q, k, v, idx, _offsets(offset, radius, dilation, boundary, window, q), scale)


# --------------------------------------------------------------------------- plain-PyTorch ops


def global_affinity(q, k, scale: float):
    """q (B,N,D), k (B,M,D) -> (B,N,M): softmax over keys of scale * q.k (materialised)."""
    return torch.softmax(scale * torch.bmm(_acc(q), _acc(k).transpose(1, 2)), -1).to(q.dtype)


def bbox_from_coords(coords, weights):
    """coords (B,N,2), weights (B,N) or None -> centre (B,2), size (B,2) = 2 x mean |dev|."""
    c = _acc(coords)
    if weights is None:
        centre = c.mean(1)
        size = 2 * (c - centre[:, None]).abs().mean(1)
    else:
        w = _acc(weights)[..., None]
        total = w.sum(1)
        centre = (w * c).sum(1) / total
        size = 2 * (w * (c - centre[:, None]).abs()).sum(1) / total
    return centre.to(coords.dtype), size.to(coords.dtype)


def bbox_from_coords_bwd(grad_centre, grad_size, coords, weights):
    """Gradients (dcoords, dweights or None) of bbox_from_coords (sign(0) taken as 0)."""
    c = _acc(coords)
    w = torch.ones_like(c[..., 0]) if weights is None else _acc(weights)
    total = w.sum(1)[:, None, None]  # (B, 1, 1)
    w3 = w[..., None]
    centre = (w3 * c).sum(1, keepdim=True) / total
    dev = c - centre
    sgn = torch.sign(dev)
    wsgn = (w3 * sgn).sum(1, keepdim=True)  # (B, 1, 2)
    size = 2 * (w3 * dev.abs()).sum(1, keepdim=True) / total
    gc, gs = _acc(grad_centre)[:, None], _acc(grad_size)[:, None]
    dcoords = gc * w3 / total + gs * 2 * (w3 * sgn - w3 * wsgn / total) / total
    if weights is None:
        return dcoords.to(coords.dtype), None
    dweights = gc * dev / total + gs * ((2 / total) * (dev.abs() - wsgn * dev / total) - size / total)
    return dcoords.to(coords.dtype), dweights.sum(-1).to(weights.dtype)


__all__ = [
    "CHUNK_ELEMENTS",
    "global_attention_fwd",
    "global_attention_bwd",
    "project_coords_fwd",
    "project_coords_bwd",
    "local_affinity_fwd",
    "local_affinity_bwd",
    "local_copy_fwd",
    "local_copy_bwd",
    "local_attention_fwd",
    "local_attention_bwd",
    "local_offset_affinity_fwd",
    "local_offset_affinity_bwd",
    "local_offset_copy_fwd",
    "local_offset_copy_bwd",
    "local_offset_attention_fwd",
    "local_offset_attention_bwd",
    "global_affinity",
    "bbox_from_coords",
    "window_offsets",
    "window_size",
    "key_grid",
]
