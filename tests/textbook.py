"""Textbook formulas for the ops: materialised affinities and windows built by plain Python
loops, written independently of densecorr.reference so that they can check it. The window's
membership rule (which cells a circle keeps) is densecorr.geometry's, the one definition;
the key coordinates (axis_cells, including NATTEN's clamp rule) are computed here
independently of it."""
import torch

from densecorr.geometry import in_window


def axis_cells(n, y, radius, dilation, boundary):
    """Key coordinates (or None if outside) of window cells -r..r for coordinate y."""
    if boundary == "clamp":
        grid = list(range(y % dilation, n, dilation))  # y's dilation sub-grid
        pos = grid.index(y)
        start = min(max(pos - radius, 0), len(grid) - (2 * radius + 1))
        return [grid[start + i] for i in range(2 * radius + 1)]
    cells = [y + d * dilation for d in range(-radius, radius + 1)]
    return [c if 0 <= c < n else None for c in cells]


def window_table(H, W, radius, dilation, boundary, window):
    """(H*W, P) long: flat key index of each query's window position p, -1 if outside."""
    table = []
    for y in range(H):
        rows = axis_cells(H, y, radius, dilation, boundary)
        for x in range(W):
            cols = axis_cells(W, x, radius, dilation, boundary)
            entry = []
            for i in range(2 * radius + 1):
                for j in range(2 * radius + 1):
                    if not in_window(i - radius, j - radius, radius, window):
                        continue
                    r, c = rows[i], cols[j]
                    entry.append(-1 if r is None or c is None else r * W + c)
            table.append(entry)
    return torch.tensor(table, dtype=torch.long)


def local_logits(q, k, radius, dilation, scale, boundary, window):
    """q (B,D,H,W), k (B,T,D,H,W) -> logits (B, T*P, H, W), valid (T*P, H, W)."""
    B, D, H, W = q.shape
    T = k.shape[1]
    table = window_table(H, W, radius, dilation, boundary, window)  # (HW, P)
    valid = table >= 0
    qf = q.flatten(2)  # (B, D, HW)
    logits, valids = [], []
    for t in range(T):
        kf = k[:, t].flatten(2)
        kg = kf[:, :, table.clamp(min=0)]  # (B, D, HW, P)
        lg = scale * (qf[..., None] * kg).sum(1)  # (B, HW, P)
        lg = torch.where(valid, lg, torch.zeros((), dtype=lg.dtype) if boundary == "zero" else float("-inf"))
        logits.append(lg)
        valids.append(valid)
    logits = torch.cat(logits, -1).permute(0, 2, 1).reshape(B, -1, H, W)
    valid = torch.cat(valids, -1).T.reshape(-1, H, W)
    return logits, valid


def local_copy(attn, v, radius, dilation, boundary, window):
    """attn (B, T*P, H, W), v (B, T, C, H, W) -> (B, C, H, W)."""
    B, _, H, W = attn.shape
    T, C = v.shape[1], v.shape[2]
    table = window_table(H, W, radius, dilation, boundary, window)
    valid = table >= 0
    out = 0
    P = table.shape[1]
    for t in range(T):
        vg = v[:, t].flatten(2)[:, :, table.clamp(min=0)] * valid  # (B, C, HW, P)
        a = attn[:, t * P : (t + 1) * P].flatten(2).transpose(1, 2)  # (B, HW, P)
        out = out + (a[:, None] * vg).sum(-1)
    return out.view(B, C, H, W)


def topk_softmax(logits, topk, dim):
    """softmax over dim keeping only the topk largest entries."""
    if topk:
        idx = logits.topk(topk, dim=dim).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(dim, idx, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.softmax(logits, dim)


def local_attention(q, k, v, radius, dilation, scale, boundary, window, topk=0):
    logits, _ = local_logits(q, k, radius, dilation, scale, boundary, window)
    return local_copy(topk_softmax(logits, topk, 1), v, radius, dilation, boundary, window)


def local_affinity(q, k, radius, dilation, scale, normalize, boundary, window):
    logits, _ = local_logits(q, k, radius, dilation, scale, boundary, window)
    return torch.softmax(logits, 1) if normalize else logits


def global_attention(q, k, v, scale, topk=0):
    """Naive bmm + softmax + bmm (with optional top-k)."""
    return torch.bmm(topk_softmax(scale * torch.bmm(q, k.transpose(1, 2)), topk, -1), v)


def project_coords(q, k, scale):
    """q (B,N,D), k (B,D,H,W) -> (B,N,2) with an explicit (x, y) grid."""
    B, D, H, W = k.shape
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1).to(q.dtype).expand(B, -1, -1)
    return global_attention(q, k.flatten(2).transpose(1, 2), grid, scale)


def bbox(coords, weights=None):
    w = torch.ones_like(coords[..., 0]) if weights is None else weights
    centre = (w[..., None] * coords).sum(1) / w.sum(1, keepdim=True)
    size = 2 * (w[..., None] * (coords - centre[:, None]).abs()).sum(1) / w.sum(1, keepdim=True)
    return centre, size
