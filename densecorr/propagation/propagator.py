"""The propagator: first-frame labels carried through a video by a model and a protocol.

A *model* is anything with `embed(frames (B, 3, H, W) float in [0, 1]) -> (B, D, H/stride,
W/stride)` and an int attribute `stride` (densecorr.models, including `LabEmbedding`, the
Lab-pixel baseline that needs no training, named "lab" wherever a model is chosen).

Similarity: features are L2-normalised (cosine similarity) unless the model declares
`similarity = "euclidean"` (LabEmbedding does: colours are compared by distance, lightness
included) or the protocol asks for raw features (`Protocol.features == "raw"`, plain dot
products). A Euclidean model's features x are stored as keys [x, |x|^2] and each query is
[2x, -1], so that query . key = -|x_q - x_k|^2 + |x_q|^2: the negative squared distance up to a
per-query constant, which every softmax (and every top-k) over the references ignores.
Under a raw-feature protocol (uvc, corrflow, mast: the reference's own model at scale 1) a
model is compared as it was trained when it says how: `logit_scale` (the Lab baseline: 20) or
`config.normalise` / `config.scale` (densecorr's trackers); otherwise raw q . k at scale 1.

Given the first frame's labels (one-hot masks or keypoint heat maps), each later frame's
labels are predicted from a bounded memory of reference frames (densecorr.propagation.protocols;
docs/design.md, "Evaluation protocols"). Frames are read one at a time and only the reference
memory is kept, so memory does not grow with the sequence length (a 480p sequence stays far
below 2 GB of host RAM). `Propagator.run` yields `(t, frame, labels)`, so callers that write
or score each frame need no copy of the frames.

The crw protocol's joint top-k over a global first frame and 20 local windows is computed
exactly and in bounded memory: the joint top-k is a subset of the first frame's top-k and the
windows' joint top-k, which the streamed densecorr kernels (global attention and local
attention with topk and return_indices=True) find, with their indices; the 2k candidates'
logits are recomputed and the final top-k taken over them. Frame 0 appears only once (as the global reference), also
while it is among the 20 previous frames.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import densecorr
from densecorr.data.io import DataError
from densecorr.propagation.labels import check_first_mask, first_grid_labels, heatmap_peaks, heatmaps, labels_to_mask, upsample
from densecorr.propagation.labels import first_labels as protocol_first_labels
from densecorr.propagation.protocols import Protocol, get_protocol


def working_size(frame_size: tuple[int, int], stride: int, height: int | None = None) -> tuple[int, int]:
    """The size (H', W') frames are resized to before embedding: height `height` (default: the
    frame's), aspect kept, both rounded to multiples of the stride (so the feature grid tiles it)."""
    H, W = frame_size
    target_h = height or H
    target_w = W * target_h / H
    return max(stride, round(target_h / stride) * stride), max(stride, round(target_w / stride) * stride)


class Propagator:
    """Propagates labels through frames with a model and a protocol.

    Args:
        model: embed()/stride (see module docstring).
        protocol: a Protocol or its name.
        device: where features and affinities are computed.
        height: process frames at this height (None: native), for speed; outputs keep the frame size.
    """

    def __init__(self, model, protocol: str | Protocol = "crw", device: str | torch.device = "cpu", height: int | None = None):
        self.model = model
        self.protocol = get_protocol(protocol)
        self.device = torch.device(device)
        self.height = height
        self.stride = int(getattr(model, "stride"))
        similarity = getattr(model, "similarity", "cosine")
        if similarity not in ("cosine", "euclidean"):
            raise ValueError(f"model.similarity must be 'cosine' or 'euclidean', got {similarity!r}")
        self.similarity = similarity
        self.normalise = self.protocol.features != "raw"
        self.scale = self.protocol.scale
        if self.protocol.features == "raw":
            # A raw-feature protocol (UVC, CorrFlow, MAST: q . k at scale 1) uses its own model's
            # similarity as trained; another model is compared as *it* was trained, when it says
            # how: `logit_scale` (the Lab baseline), or config.normalise / config.scale (the
            # densecorr trackers). A model that says nothing gets raw dot products at scale 1.
            own = getattr(model, "logit_scale", None)
            config = getattr(model, "config", None)
            if own is not None:
                self.scale = float(own)
            elif config is not None and getattr(config, "scale", None) is not None:
                self.scale = float(config.scale)
                self.normalise = bool(getattr(config, "normalise", False))
        self.timer = 0.0
        self._warm = False

    @torch.inference_mode()
    def embed(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> the frame's key features (D', h, w) on the device: L2-normalised
        (cosine), raw (protocol features "raw") or [x, |x|^2] (Euclidean model); see `query`."""
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None].float().div_(255)
        size = working_size(x.shape[-2:], self.stride, self.height)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        feats = self.model.embed(x)
        if feats.dim() != 4 or feats.shape[0] != 1:
            raise RuntimeError(f"model.embed returned shape {tuple(feats.shape)}, expected (1, D, h, w)")
        return self.keys(feats[0].float())

    def keys(self, feats: torch.Tensor) -> torch.Tensor:
        """Model features (D, h, w) -> the key form stored for reference frames."""
        if self.similarity == "euclidean":
            return torch.cat([feats, feats.square().sum(0, keepdim=True)])
        return F.normalize(feats, dim=0) if self.normalise else feats

    def query(self, keys: torch.Tensor) -> torch.Tensor:
        """Key form (D', h, w) -> query form: itself, or [2x, -1] for a Euclidean model, so that
        query . key = -|x_q - x_k|^2 + (a per-query constant)."""
        if self.similarity == "euclidean":
            return torch.cat([2 * keys[:-1], -torch.ones_like(keys[-1:])])
        return keys

    @torch.inference_mode()
    def run(self, frames: Iterable[np.ndarray], first_labels: Callable[[tuple[int, int], tuple[int, int]], torch.Tensor], keypoints: bool = False) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
        """Yields (t, frame t (H, W, 3) uint8, soft labels (K, h, w) on the CPU) for t = 1, 2, ... of `frames`.

        Args:
            frames: uint8 (H, W, 3) arrays, the first one labelled.
            first_labels: called once as first_labels(frame_size (H, W), grid (h, w)); returns the
                first frame's label channels on the feature grid (K, h, w).
            keypoints: labels are heat maps (always fed back soft; no softmax-normalised argmax).
        Memory: the features and labels of at most len(long_term) + max(previous) frames.
        `self.timer` accumulates the seconds spent here (embedding and propagation).
        """
        proto = self.protocol
        feats: dict[int, torch.Tensor] = {}
        labels: dict[int, torch.Tensor] = {}
        size = None
        for t, frame in enumerate(frames):
            start = time.perf_counter()
            if size is None:
                size = tuple(frame.shape)
            elif tuple(frame.shape) != size:
                raise DataError(f"frame {t} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {size[1]}x{size[0]}; all frames must have one size")
            q = self.embed(frame)
            if t == 0:
                lab = first_labels(frame.shape[:2], tuple(q.shape[-2:])).to(self.device, torch.float32)
                if lab.shape[-2:] != q.shape[-2:]:
                    raise RuntimeError(f"first labels {tuple(lab.shape)} do not match the feature grid {tuple(q.shape[-2:])}")
                feats[0], labels[0] = q, lab
                if proto.predict_first:  # TimeCycle: frame 0 from its padded copies, min-max normalised
                    n = len(proto.references(len(proto.previous) + 1))
                    feats[-1], labels[-1] = q, _min_max(self.step(self.query(q), [q] * n, [lab] * n, global_first=True))
                self.timer += time.perf_counter() - start
                if not self._warm:
                    # The first call of an op pays one-time set-up (torch imports its compiler
                    # stack: seconds); keep it out of the per-frame timing.
                    self.step(self.query(q), [q, q], [lab, lab], global_first=True)
                    if proto.roi and proto.kind == "local":
                        self.step(self.query(q), [q, q], [lab, lab], global_first=True, dilations=[2, None])
                    self._warm = True
                continue
            refs = proto.references(t)
            pred = self.step(self.query(q), [feats[i] for i in refs], [labels[i] for i in refs], global_first=(refs[0] == 0),
                             dilations=[proto.roi_dilation(t, i) for i in refs])
            if proto.feedback == "hard" and not keypoints:
                fed = F.one_hot(pred.argmax(0), pred.shape[0]).permute(2, 0, 1).float()
            elif proto.feedback == "soft_minmax":
                pred = fed = _min_max(pred)
            elif proto.feedback == "hard_full" and not keypoints:
                # the argmax at full (working) resolution, brought back by the first-label rule
                h, w = pred.shape[-2:]
                full = upsample(pred, (h * self.stride, w * self.stride)).argmax(0)
                fed = first_grid_labels(full.cpu().numpy(), list(range(1, pred.shape[0])), (h, w), proto.first).to(pred.device)
            else:
                fed = pred
            feats[t], labels[t] = q, fed
            for i in [i for i in feats if i not in proto.keep_after(t)]:
                del feats[i], labels[i]
            out = pred.cpu()
            _release_free_memory()
            self.timer += time.perf_counter() - start
            yield t, frame, out

    def step(self, q: torch.Tensor, ref_feats: list, ref_labels: list, global_first: bool, dilations: Sequence | None = None) -> torch.Tensor:
        """One frame: query features (D', h, w) (query form), references' features (key form) /
        labels -> labels (K, h, w). `dilations`: per reference, its coarse-search dilation
        (a long-term reference searched by ROI localisation, `Protocol.roi_dilation`) or None."""
        proto = self.protocol
        if proto.kind == "local" and dilations is not None and any(d is not None for d in dilations):
            return roi_local_step(q, ref_feats, ref_labels, dilations, proto.radius, self.scale, proto.window,
                                  proto.roi_shared_offset, proto.roi_half_pixel)
        if proto.kind == "global":
            D, h, w = q.shape
            k = torch.stack(ref_feats).flatten(2).transpose(1, 2).reshape(1, -1, D)
            v = torch.stack(ref_labels).flatten(2).transpose(1, 2).reshape(1, k.shape[1], -1)
            topk = min(proto.topk, k.shape[1]) if proto.topk else None
            out = densecorr.global_attention(q.flatten(1).T[None], k, v, scale=self.scale, topk=topk)
            return out[0].T.reshape(-1, h, w)
        if proto.kind == "local":
            k = torch.stack(ref_feats)[None]
            v = torch.stack(ref_labels)[None]
            topk = min(proto.topk, k.shape[1] * _window_size(proto.radius, proto.window)) if proto.topk else None
            out = densecorr.local_attention(q[None], k, v, proto.radius, scale=self.scale, boundary=proto.boundary, window=proto.window, topk=topk)
            return out[0]
        if proto.kind == "crw":
            if global_first:
                return crw_topk_step(q, ref_feats[0], ref_labels[0], ref_feats[1:], ref_labels[1:], proto.radius, proto.topk, self.scale, proto.window, proto.strict)
            return crw_topk_step(q, None, None, ref_feats, ref_labels, proto.radius, proto.topk, self.scale, proto.window, proto.strict)
        if proto.kind == "average":
            return per_reference_topk(q, ref_feats, ref_labels, proto.topk, self.scale)
        raise ValueError(f"unknown protocol kind {proto.kind!r}")


def coarse_offset(q: torch.Tensor, k: torch.Tensor, radius: int, dilation: int, scale: float) -> torch.Tensor:
    """MAST's ROI localisation of one long-term reference: each query's expected offset (2, h, w)
    (dy, dx in cells) under the softmax of scale * q . k over the square window of `radius`
    dilated by `dilation`, positions outside the image at logit 0 (its zero-padded correlation),
    times the dilation (models/colorizer.py:70-80). Memory: the (P, h, w) softmax (64 MB at
    120 x 214 cells)."""
    from densecorr.geometry import window_offsets

    D, h, w = q.shape
    attn = densecorr.local_affinity(q[None], k[None], radius, dilation=dilation, scale=float(scale), normalize=True, boundary="zero")
    grid = (torch.tensor(window_offsets(radius, "square"), device=q.device, dtype=attn.dtype) - radius) * dilation  # (P, 2) dy, dx
    return (grid.T @ attn[0].reshape(grid.shape[0], h * w)).reshape(2, h, w)


def roi_local_step(
    q: torch.Tensor,
    ref_feats: Sequence[torch.Tensor],
    ref_labels: Sequence[torch.Tensor],
    dilations: Sequence[int | None],
    radius: int,
    scale: float,
    window: str = "square",
    shared_offset: bool = False,
    half_pixel: bool = False,
) -> torch.Tensor:
    """MAST's memory with ROI localisation: one joint softmax over every reference's window.

    A reference with a dilation d (long-term) gets each query's expected offset from its coarse
    search (`coarse_offset`) and its fine window of `radius` around it (keys and labels sampled
    bilinearly, zero outside); the others (None) their plain window; outside positions enter the
    softmax at logit 0 with label 0 (boundary "zero"). All references go through one
    local_attention call, the short-term ones with offset 0, since the op's softmax is joint over
    its references.

    shared_offset, half_pixel: MAST's released code instead of its paper: every long-term
    reference's labels sampled with the last long-term reference's offset (colorizer.py:101);
    sampling positions normalised by (size - 1) but read by grid_sample with align_corners=False
    (deform_im2col_util.py:14-42), i.e. position p read at p * size / (size - 1) - 0.5.

    Args: q (D, h, w) (query form); ref_feats / ref_labels: lists of (D, h, w) / (K, h, w).
    Returns (K, h, w). Memory: the coarse (P, h, w) softmax per long-term reference, then the
    fused kernel's; with half_pixel or shared_offset the (T * P, h, w) logits.
    """
    D, h, w = q.shape
    T = len(ref_feats)
    if len(dilations) != T:
        raise ValueError(f"{len(dilations)} dilations for {T} references")
    long = [i for i, d in enumerate(dilations) if d is not None]
    k = torch.stack(list(ref_feats))[None]  # (1, T, D, h, w)
    v = torch.stack(list(ref_labels))[None]
    offset = torch.zeros(1, T, 2, h, w, dtype=q.dtype, device=q.device)
    for i in long:
        offset[0, i] = coarse_offset(q, ref_feats[i], radius, dilations[i], scale)
    if not (shared_offset or half_pixel):
        return densecorr.local_attention(q[None], k, v, radius, scale=float(scale), boundary="zero", window=window, offset=offset)[0]
    if window != "square":
        raise DataError("MAST's released-code options (roi_shared_offset, roi_half_pixel) take its square windows")
    label_offset = offset.clone()
    if shared_offset:
        label_offset[0, long] = offset[0, long[-1]]  # the leftover loop variable offset0
    if not half_pixel:
        attn = densecorr.local_affinity(q[None], k, radius, scale=float(scale), normalize=True, boundary="zero", offset=offset)
        return densecorr.local_copy(attn, v, radius, boundary="zero", offset=label_offset)[0]
    if h < 2 or w < 2:
        raise DataError(f"roi_half_pixel normalises positions by (size - 1): it needs a feature grid of at least 2x2, got {h}x{w}")
    # the long-term windows as MAST's deform_im2col reads them, the short-term ones by the op
    short = [i for i in range(T) if dilations[i] is None]
    P = (2 * radius + 1) ** 2
    logits = torch.empty(T * P, h, w, dtype=q.dtype, device=q.device)  # long-term references first
    for n, i in enumerate(long):
        logits[n * P:(n + 1) * P] = scale * _deform_windows(ref_feats[i], offset[0, i], radius, q)
    if short:
        logits[len(long) * P:] = densecorr.local_affinity(q[None], k[:, short], radius, scale=float(scale), normalize=False, boundary="zero")[0]
    # softmax over dim 0 with the sum accumulated in float64 (torch's float32 softmax over 3125
    # positions along a strided dim sums sequentially: its weights then sum to 1 +- 3e-5)
    attn = logits.sub_(logits.amax(0, keepdim=True)).exp_()
    attn /= attn.sum(0, keepdim=True, dtype=torch.float64).to(attn.dtype)
    out = torch.zeros(v.shape[2], h, w, dtype=q.dtype, device=q.device)
    for n, i in enumerate(long):
        out += (attn[None, n * P:(n + 1) * P] * _deform_windows(ref_labels[i], label_offset[0, i], radius)).sum(1)
    if short:
        out += densecorr.local_copy(attn[None, len(long) * P:], v[:, short], radius, boundary="zero")[0]
    return out


def _deform_windows(img: torch.Tensor, offset: torch.Tensor, radius: int, q: torch.Tensor | None = None) -> torch.Tensor:
    """MAST's deform_im2col as its released code runs it (models/deform_im2col_util.py): img
    (C, h, w) at (y + oy + dy, x + ox + dx) for each window offset (dy, dx) (row-major), the
    position normalised by (size - 1) and read by F.grid_sample(align_corners=False) with zero
    padding. Returns (C, P, h, w) in img's dtype, or with `q` (C, h, w) the dot products (P, h, w).
    Sampled in float64 (the normalised grid's float32 rounding would move positions by ~1e-6
    cells), in chunks of query rows (at most ~128 MB of samples at a time)."""
    C, h, w = img.shape
    f64 = torch.float64
    r = torch.arange(-radius, radius + 1, device=img.device, dtype=f64)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    dy, dx = dy.reshape(-1, 1, 1), dx.reshape(-1, 1, 1)
    P = dy.shape[0]
    out = torch.empty((P, h, w) if q is not None else (C, P, h, w), dtype=img.dtype, device=img.device)
    rows = max(1, (1 << 24) // (C * P * w))
    xs = torch.arange(w, device=img.device, dtype=f64)
    src = img[None].to(f64)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        ys = torch.arange(y0, y1, device=img.device, dtype=f64)[:, None]
        py = ys + offset[0, y0:y1].to(f64) + dy  # (P, rows, w)
        px = xs + offset[1, y0:y1].to(f64) + dx
        grid = torch.stack([px / (w - 1) * 2 - 1, py / (h - 1) * 2 - 1], -1).reshape(1, P * (y1 - y0), w, 2)
        samples = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        samples = samples.reshape(C, P, y1 - y0, w)
        if q is not None:
            out[:, y0:y1] = torch.einsum("cpyx,cyx->pyx", samples, q[:, y0:y1].to(f64))
        else:
            out[:, :, y0:y1] = samples
    return out


_MALLOC_TRIM = None


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim; elsewhere a no-op).

    Each frame allocates and frees tensors of a few to ~60 MB; glibc serves those below its
    dynamic mmap threshold (which rises to 32 MB once a large block is freed) from the heap,
    and the freed holes stay resident: measured at 480p under mast, the RSS rose by ~3 MB per
    frame (473 -> 1042 MiB over 70 frames of Lab, 2.6 GB after the 7 sequences) although the
    live memory is constant; trimming after each frame keeps it flat (394 MiB), at ~1 ms."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Each channel of (K, h, w) as (x - min) / max(x - min) over the frame (TimeCycle's feedback;
    a constant channel becomes 0)."""
    flat = x.flatten(1)
    shifted = flat - flat.min(1, keepdim=True).values
    top = shifted.max(1, keepdim=True).values
    return torch.where(top > 0, shifted / top.clamp_min(torch.finfo(x.dtype).tiny), shifted).reshape(x.shape)


def _window_size(radius: int, window: str) -> int:
    from densecorr.reference import window_size

    return window_size(radius, window)


def crw_topk_step(
    q: torch.Tensor,
    first: torch.Tensor | None,
    first_labels: torch.Tensor | None,
    local_feats: Sequence[torch.Tensor],
    local_labels: Sequence[torch.Tensor],
    radius: int,
    topk: int,
    scale: float,
    window: str = "circle",
    strict: bool = False,
) -> torch.Tensor:
    """Exact joint top-k attention over a global reference and local windows in other references.

    out_j = sum over the topk largest logits l of query j among {all positions of `first`} and
    {window(j) in each local reference} of softmax(l) * label, logits = scale * q_j . k_i.

    The joint top-k is a subset of (top-k of the global part) + (top-k of the local part), so
    each part is searched by its streamed, memory-bounded public op (global_attention /
    local_attention with topk and return_indices=True: one joint top-k over all local
    references' windows, with the kept indices); the 2k candidates' logits are recomputed
    from those indices (2k dot products per query) and the final top-k taken over them.

    Args:
        q: (D, h, w) query features. first: (D, h, w) or None; first_labels (K, h, w).
        local_feats / local_labels: lists of (D, h, w) / (K, h, w) (may be empty).
        radius, window: the local window (boundary "mask": positions outside the image are excluded).
        strict: leave out the window's offsets at exactly `radius` (dy^2 + dx^2 = radius^2 for a
            circle, max(|dy|, |dx|) = radius for a square): videowalk's mask is D < radius. The
            local search then keeps topk + (excluded offsets) x T candidates where needed, so
            the result stays exact.
    Returns:
        (K, h, w). Memory: O(h w k (D + K)) beyond the kernels' own O(h w k).
    """
    D, h, w = q.shape
    N = h * w
    qt = q.flatten(1).T.contiguous()  # (N, D)
    cand_logits, cand_labels = [], []
    if first is not None:
        kt = first.flatten(1).T.contiguous()
        vt = first_labels.flatten(1).T.contiguous()
        _, idx = densecorr.global_attention(qt[None], kt[None], vt[None], scale=float(scale), topk=min(topk, N), return_indices=True)
        idx = idx[0]  # (N, k) key indices
        cand_logits.append(scale * torch.einsum("nkd,nd->nk", kt[idx], qt))
        cand_labels.append(vt[idx])
    if local_feats:
        from densecorr.geometry import window_offsets

        k = torch.stack(list(local_feats))  # (T, D, h, w)
        v = torch.stack(list(local_labels))  # (T, K, h, w)
        T = k.shape[0]
        offsets = torch.tensor(window_offsets(radius, window), device=q.device) - radius  # (P, 2) (dy, dx)
        P = offsets.shape[0]
        edge = offsets.abs().amax(1) if window == "square" else offsets.square().sum(1)
        excluded = (edge == (radius if window == "square" else radius * radius)) if strict else torch.zeros(P, dtype=torch.bool, device=q.device)
        n_excluded = int(excluded.sum())

        def candidates(m):
            _, idx = densecorr.local_attention(q[None], k[None], v[None], radius, scale=float(scale), boundary="mask", window=window,
                                               topk=m, return_indices=True)
            idx = idx[0].reshape(N, -1)  # (N, m) window positions t * P + p
            ref, pos = idx // P, idx % P
            yy = torch.arange(h, device=q.device).repeat_interleave(w)[:, None] + offsets[pos, 0]
            xx = torch.arange(w, device=q.device).repeat(h)[:, None] + offsets[pos, 1]
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & ~excluded[pos]  # outside: only short windows pick these
            return ref, pos, yy, xx, valid

        m = min(topk + (min(n_excluded, 4) if n_excluded else 0), T * P)
        ref, pos, yy, xx, valid = candidates(m)
        full = min(topk + n_excluded * T, T * P)
        if n_excluded and m < full and bool((valid.sum(1) < topk).any()):
            # some query lost candidates to excluded offsets: topk + every excluded one is exact
            ref, pos, yy, xx, valid = candidates(full)
        pix = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
        # gather the candidates' keys and labels straight from (T, D, h*w): no transposed copy
        kf = k.flatten(2)[ref, :, pix]  # (N, k, D)
        logits = scale * torch.einsum("nkd,nd->nk", kf, qt)
        cand_logits.append(logits.masked_fill(~valid, float("-inf")))
        cand_labels.append(v.flatten(2)[ref, :, pix])  # (N, k, K)
    logits = torch.cat(cand_logits, 1)
    labels = torch.cat(cand_labels, 1)
    if logits.shape[1] > topk:
        logits, sel = logits.topk(topk, dim=1)
        labels = torch.gather(labels, 1, sel[..., None].expand(-1, -1, labels.shape[2]))
    weights = torch.softmax(logits, dim=1)
    out = (weights[..., None] * labels).sum(1)  # (N, K)
    return out.T.reshape(-1, h, w)


def per_reference_topk(q: torch.Tensor, ref_feats: Sequence[torch.Tensor], ref_labels: Sequence[torch.Tensor], topk: int, scale: float) -> torch.Tensor:
    """UVC's and TimeCycle's rule: each reference on its own, softmax over all its positions of
    scale * q . k, only the topk largest weights kept and NOT renormalised; the references'
    results averaged.

    out_j = mean_r sum_{i in topk_r(j)} exp(l_ji - logsumexp_i' l_ji') v_i

    Per reference, two streamed passes of global_attention, never the (hw) x (hw) matrix: the
    top-k with its indices (their logits recomputed: lse_k = logsumexp of the kept logits), then
    the kept fraction of the softmax mass r = Z_k / Z from a full softmax in which one extra key,
    of logit lse_k for each query (an extra feature channel), carries the value 1:
    o = e^lse_k / (Z + e^lse_k), r = o / (1 - o).
    Args: q (D, h, w) (query form); ref_feats, ref_labels: lists of (D, h, w) / (K, h, w). Returns (K, h, w).
    """
    D, h, w = q.shape
    N = h * w
    qt = q.flatten(1).T.contiguous()  # (N, D)
    out = torch.zeros(N, ref_labels[0].shape[0], dtype=torch.float32, device=q.device)
    for k, v in zip(ref_feats, ref_labels):
        kt, vt = k.flatten(1).T.contiguous(), v.flatten(1).T.contiguous()  # (M, D), (M, K)
        M = kt.shape[0]
        m = min(topk, M)
        _, idx = densecorr.global_attention(qt[None], kt[None], vt[None], scale=float(scale), topk=m, return_indices=True)
        idx = idx[0]
        top = scale * torch.einsum("nkd,nd->nk", kt[idx], qt)  # (N, m)
        lse_k = torch.logsumexp(top, 1)
        if m < M:
            q2 = torch.cat([qt, (lse_k / scale)[:, None]], 1)
            k2 = torch.zeros(M + 1, D + 1, dtype=kt.dtype, device=kt.device)
            k2[:M, :D] = kt
            k2[M, D] = 1
            v2 = torch.zeros(M + 1, 1, dtype=vt.dtype, device=vt.device)
            v2[M] = 1
            o = densecorr.global_attention(q2[None], k2[None], v2[None], scale=float(scale))[0, :, 0].double()
            kept = (o / (1 - o)).float()  # Z_k / Z
        else:
            kept = torch.ones(N, dtype=torch.float32, device=q.device)
        weights = torch.softmax(top, 1) * kept[:, None]
        out += torch.einsum("nk,nkc->nc", weights, vt[idx])
    out /= len(ref_feats)
    return out.T.reshape(-1, h, w)


def propagate_mask(
    propagator: Propagator,
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    progress: str | None = None,
    total: int | None = None,
    ids: Sequence[int] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Track the objects of `first_mask` (H, W) ids through `frames`.

    Yields (t, frame (H, W, 3) uint8, predicted ids (H, W)) for t = 1, 2, ...; the ids are
    those of the first mask in the protocol's label set (all of them but under cycletime's
    TimeCycle rule, which drops ids of 11 pixels or fewer) (uint8, or uint16 when an id exceeds 255). `progress`: tqdm
    description (None: no bar).
    The first mask is checked once, against frame 0: DataError when it is empty or its size
    differs from the frames'. `ids`: the mask's object ids when the caller has already checked
    it (`check_first_mask(first_mask, frame_size)`); then it is not checked again.
    """
    known = list(ids) if ids is not None else None
    channels: list[int] = []  # the ids of label channels 1.. (the protocol's label set of `known`)

    def first_labels(frame_size, grid):
        nonlocal known, channels
        if known is None:
            known = check_first_mask(first_mask, frame_size)
        channels, lab = protocol_first_labels(first_mask, known, grid, proto)
        return lab

    proto = propagator.protocol
    bar = _progress(progress, total)
    try:
        for t, frame, labels in propagator.run(frames, first_labels):
            mask = labels_to_mask(labels, channels, frame.shape[:2], proto.output, propagator.stride)
            if bar is not None:
                bar.update(1)
            yield t, frame, mask
    finally:
        if bar is not None:
            bar.close()


def propagate_keypoints(
    propagator: Propagator,
    frames: Iterable[np.ndarray],
    xy: np.ndarray,
    sigma: float = 1.0,
    progress: str | None = None,
    total: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Track keypoints `xy` (J, 2) (x, y pixels of the first frame) as Gaussian heat maps.

    Yields (t, predicted xy (J, 2)) for t = 1, 2, ...; `sigma` is the heat maps' standard
    deviation in feature cells."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        raise DataError("no keypoints to track: the first annotated frame has no visible joints")
    bar = _progress(progress, total)
    try:
        for t, frame, maps in propagator.run(frames, lambda size, grid: heatmaps(xy, size, grid, sigma), keypoints=True):
            if bar is not None:
                bar.update(1)
            yield t, heatmap_peaks(maps, frame.shape[:2])
    finally:
        if bar is not None:
            bar.close()


def _progress(desc: str | None, total: int | None):
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)


__all__ = ["working_size", "Propagator", "crw_topk_step", "per_reference_topk", "roi_local_step", "coarse_offset", "propagate_mask", "propagate_keypoints"]
