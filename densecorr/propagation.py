"""Label propagation: track masks or keypoints through a video with any feature extractor.

A *model* is anything with `embed(frames (B, 3, H, W) float in [0, 1]) -> (B, D, H/stride,
W/stride)` and an int attribute `stride` (densecorr.models, or `LabEmbedding`, the Lab-pixel
baseline that needs no training, named "lab" wherever a model is chosen).

Given the first frame's labels (one-hot masks or keypoint heat maps), each later frame's
labels are predicted from a bounded memory of reference frames (DESIGN section 4):

| protocol | references | affinity | labels fed back |
|---|---|---|---|
| crw | frame 0 (global) + the 20 previous frames (circle window, radius 12) | top-10 jointly over all, s = 20 | soft |
| mast | frames {0, 5} + {t-1, t-3, t-5}, local windows radius 12 (stride 4) | one joint softmax | hard |
| uvc, cycletime | frame 0 + the 7 previous frames, global | top-5 jointly over all | soft |
| corrflow | the previous frame, local window radius 6 | softmax | hard |

Features are L2-normalised and the logits scaled by s = 1 / temperature (0.05 by default).
The first frame's id mask becomes one-hot channels at full resolution *before* it is
area-averaged to the feature grid (ids are never interpolated as numbers); predictions are
upsampled bilinearly to the frame size, then argmax. Keypoints become Gaussian heat maps (one
channel per joint, on the feature grid); a joint's prediction is the argmax of its upsampled
map. Frames are read one at a time and only the reference memory is kept, so memory does not
grow with the sequence length (a 480p sequence stays far below 2 GB of host RAM).

The crw protocol's joint top-k over a global first frame and 20 local windows is computed
exactly and in bounded memory: the joint top-k is a subset of the first frame's top-k and the
windows' joint top-k, which the streamed densecorr kernels (global attention and local
attention with topk) find, with their indices; the 2k candidates' logits are recomputed and
the final top-k taken over them. Frame 0 appears only once (as the global reference), also
while it is among the 20 previous frames.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import densecorr
from densecorr.data.io import DataError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_CHECKPOINT = os.path.join(ASSETS, "default.pt")


# --------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring's table).

    Attributes:
        kind: "crw" (global first frame + local windows, joint top-k), "global" or "local".
        long_term: fixed reference frames (e.g. (0, 5) for MAST) kept once they exist.
        previous: offsets d of the short-term references t - d.
        radius, window: local window (feature cells) for "local" and "crw".
        topk: keep only the top-k logits (None: all).
        temperature: softmax temperature; the logit scale is 1 / temperature.
        feedback: "soft" (predicted distributions become references) or "hard" (their argmax, one-hot).
        stride: feature stride used by the Lab baseline under this protocol (models have their own).
    """

    name: str
    kind: str
    long_term: tuple
    previous: tuple
    radius: int | None = None
    window: str = "square"
    topk: int | None = None
    temperature: float = 0.05
    feedback: str = "soft"
    stride: int = 8

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature

    def references(self, t: int) -> list[int]:
        """The reference frames for frame t (> 0), long-term first, without duplicates."""
        refs = [i for i in self.long_term if i < t]
        refs += [t - d for d in self.previous if t - d >= 0 and t - d not in refs]
        return refs

    def keep_after(self, t: int) -> set[int]:
        """Frames (<= t) that a later frame may still use as a reference."""
        horizon = max(self.previous)
        return {i for i in self.long_term if i <= t} | set(range(max(0, t + 1 - horizon), t + 1))


PROTOCOLS = {
    "crw": Protocol("crw", "crw", (0,), tuple(range(1, 21)), radius=12, window="circle", topk=10, feedback="soft", stride=8),
    "mast": Protocol("mast", "local", (0, 5), (1, 3, 5), radius=12, window="square", feedback="hard", stride=4),
    "uvc": Protocol("uvc", "global", (0,), tuple(range(1, 8)), topk=5, feedback="soft", stride=8),
    "cycletime": Protocol("cycletime", "global", (0,), tuple(range(1, 8)), topk=5, feedback="soft", stride=8),
    "corrflow": Protocol("corrflow", "local", (), (1,), radius=6, window="square", feedback="hard", stride=4),
}


def get_protocol(name: str | Protocol, **overrides) -> Protocol:
    """A protocol by name, with fields replaced by the non-None `overrides` (e.g. temperature=0.07)."""
    if isinstance(name, Protocol):
        proto = name
    else:
        if name not in PROTOCOLS:
            raise DataError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
        proto = PROTOCOLS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(proto, **overrides) if overrides else proto


# --------------------------------------------------------------------------- models


class LabEmbedding(torch.nn.Module):
    """The Lab-pixel baseline: each feature cell is the mean CIE Lab colour of its stride x stride
    pixels (channels scaled to about [-1, 1]). No parameters, no training.

    embed(frames (B, 3, H, W) in [0, 1]) -> (B, 3, H // stride, W // stride).
    """

    def __init__(self, stride: int = 8):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        from densecorr.models.colour import normalise_lab, rgb_to_lab

        lab = normalise_lab(rgb_to_lab(frames))
        return F.avg_pool2d(lab, self.stride) if self.stride > 1 else lab

    forward = embed


def load_model(spec: str = "default", device: str | torch.device = "cpu", stride: int | None = None, log: Callable[[str], None] = print):
    """A model for propagation from a name or a checkpoint path.

    Args:
        spec: "lab" (Lab-pixel baseline), "default" (the shipped checkpoint
            densecorr/assets/default.pt; while it does not exist, "lab" with a note), a path to a
            checkpoint (a torch.save'd dict with "model" (registered name), "config" (dict) and
            "state_dict"), or a name registered in densecorr.models (randomly initialised).
        stride: the Lab baseline's stride (ignored for other models).
        log: where notes go.
    Returns:
        (model in eval mode on `device`, a short description).
    Raises:
        DataError: unknown name, unreadable or inconsistent checkpoint.
    """
    if spec == "default":
        if os.path.isfile(DEFAULT_CHECKPOINT):
            spec = DEFAULT_CHECKPOINT
        else:
            log("note: no trained default checkpoint is shipped yet (densecorr/assets/default.pt); using the Lab-pixel baseline 'lab'")
            spec = "lab"
    if spec == "lab":
        model = LabEmbedding(stride or 8)
        return model.to(device).eval(), f"lab (stride {model.stride})"
    if os.path.isfile(spec) or spec.endswith((".pt", ".pth", ".ckpt")):
        return _load_checkpoint(spec, device)
    names = _registered_models()
    if spec not in names:
        known = ", ".join(["lab", "default"] + sorted(names))
        raise DataError(f"unknown model {spec!r}: not a file and not a registered model (known: {known})")
    from densecorr import models

    model = models.create(spec)
    if not hasattr(model, "embed") or not hasattr(model, "stride"):
        raise DataError(f"model {spec!r} has no embed()/stride, so it cannot propagate labels")
    log(f"note: model {spec!r} is randomly initialised (no checkpoint given)")
    return model.to(device).eval(), f"{spec} (random init)"


def _registered_models() -> list[str]:
    try:
        from densecorr import models
    except ImportError:
        return []
    return list(models.list_models())


def _load_checkpoint(path: str, device):
    if not os.path.isfile(path):
        raise DataError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean: not a usable checkpoint
        raise DataError(f"cannot read checkpoint {path!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); pass a file written by torch.save") from None
    if not isinstance(ckpt, dict) or not {"model", "state_dict"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DataError(f"checkpoint {path!r} must be a dict with keys 'model', 'config', 'state_dict'; it has {keys}")
    name, config = ckpt["model"], ckpt.get("config") or {}
    if name == "lab":
        model = LabEmbedding(**config)
        return model.to(device).eval(), f"lab (stride {model.stride}, {os.path.basename(path)})"
    names = _registered_models()
    if name not in names:
        raise DataError(f"checkpoint {path!r} is for model {name!r}, which densecorr.models does not register (known: {', '.join(sorted(names)) or 'none'})")
    from densecorr import models

    try:
        model = models.create(name, **config)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise DataError(f"checkpoint {path!r} does not fit model {name!r} ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), f"{name} ({os.path.basename(path)})"


# --------------------------------------------------------------------------- labels


def one_hot(mask: np.ndarray | torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Id mask (H, W) -> float (K, H, W), channel 0 = background, channel c = ids[c - 1].

    Pixels whose id is not in `ids` count as background."""
    m = torch.as_tensor(np.asarray(mask)).long()
    out = torch.zeros(len(ids) + 1, *m.shape)
    out[0] = 1
    for c, i in enumerate(ids, start=1):
        sel = m == i
        out[c][sel] = 1
        out[0][sel] = 0
    return out


def heatmaps(xy: np.ndarray, frame_size: tuple[int, int], grid: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """Gaussian heat maps (J, h, w) on the feature grid for keypoints `xy` (J, 2) in frame pixels.

    Args:
        xy: (x, y) in pixels of a frame of `frame_size` (H, W), pixel centres at integers.
        grid: (h, w), the feature grid covering the frame.
        sigma: standard deviation in feature cells.
    """
    H, W = frame_size
    h, w = grid
    xy = torch.as_tensor(np.asarray(xy), dtype=torch.float32)
    u = (xy[:, 0] + 0.5) * w / W - 0.5  # feature-cell coordinates of the keypoints
    v = (xy[:, 1] + 0.5) * h / H - 0.5
    gx = torch.arange(w, dtype=torch.float32)
    gy = torch.arange(h, dtype=torch.float32)
    d2 = (gy[None, :, None] - v[:, None, None]) ** 2 + (gx[None, None, :] - u[:, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def to_grid(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Full-resolution label channels (K, H, W) -> their area averages on the feature grid (K, h, w)."""
    return F.interpolate(labels[None], size=grid, mode="area")[0]


def upsample(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label channels (K, h, w) -> (K, H, W), bilinear (align_corners=False)."""
    return F.interpolate(labels[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def labels_to_mask(labels: torch.Tensor, ids: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Soft labels (K, h, w) (channel 0 background) -> id mask (H, W) uint8: upsample, argmax, map to ids."""
    lut = torch.tensor([0] + list(ids), dtype=torch.uint8)
    return lut[upsample(labels, size).argmax(0)].numpy()


def heatmap_peaks(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Heat maps (J, h, w) -> (J, 2) (x, y) pixel positions of each upsampled map's maximum."""
    up = upsample(maps, size)
    flat = up.flatten(1).argmax(1)
    W = size[1]
    return torch.stack([flat % W, flat // W], 1).double().numpy()


# --------------------------------------------------------------------------- propagation


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
        self.timer = 0.0
        self._warm = False

    @torch.inference_mode()
    def embed(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> L2-normalised features (D, h, w) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None].float().div_(255)
        size = working_size(x.shape[-2:], self.stride, self.height)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        feats = self.model.embed(x)
        if feats.dim() != 4 or feats.shape[0] != 1:
            raise RuntimeError(f"model.embed returned shape {tuple(feats.shape)}, expected (1, D, h, w)")
        return F.normalize(feats[0].float(), dim=0)

    @torch.inference_mode()
    def run(self, frames: Iterable[np.ndarray], first_labels: Callable[[tuple[int, int], tuple[int, int]], torch.Tensor], keypoints: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields (t, soft labels (K, h, w) on the CPU) for t = 1, 2, ... of `frames`.

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
                self.timer += time.perf_counter() - start
                if not self._warm:
                    # The first call of an op pays one-time set-up (torch imports its compiler
                    # stack: seconds); keep it out of the per-frame timing.
                    self.step(q, [q, q], [lab, lab], global_first=True)
                    self._warm = True
                continue
            refs = proto.references(t)
            pred = self.step(q, [feats[i] for i in refs], [labels[i] for i in refs], global_first=(refs[0] == 0))
            if proto.feedback == "hard" and not keypoints:
                fed = F.one_hot(pred.argmax(0), pred.shape[0]).permute(2, 0, 1).float()
            else:
                fed = pred
            feats[t], labels[t] = q, fed
            for i in [i for i in feats if i not in proto.keep_after(t)]:
                del feats[i], labels[i]
            out = pred.cpu()
            self.timer += time.perf_counter() - start
            yield t, out

    def step(self, q: torch.Tensor, ref_feats: list, ref_labels: list, global_first: bool) -> torch.Tensor:
        """One frame: query features (D, h, w), references' features / labels -> labels (K, h, w)."""
        proto = self.protocol
        if proto.kind == "global":
            D, h, w = q.shape
            k = torch.stack(ref_feats).flatten(2).transpose(1, 2).reshape(1, -1, D)
            v = torch.stack(ref_labels).flatten(2).transpose(1, 2).reshape(1, k.shape[1], -1)
            topk = min(proto.topk, k.shape[1]) if proto.topk else None
            out = densecorr.global_attention(q.flatten(1).T[None], k, v, scale=proto.scale, topk=topk)
            return out[0].T.reshape(-1, h, w)
        if proto.kind == "local":
            k = torch.stack(ref_feats)[None]
            v = torch.stack(ref_labels)[None]
            topk = min(proto.topk, k.shape[1] * _window_size(proto.radius, proto.window)) if proto.topk else None
            out = densecorr.local_attention(q[None], k, v, proto.radius, scale=proto.scale, window=proto.window, topk=topk)
            return out[0]
        if proto.kind == "crw":
            if global_first:
                return crw_topk_step(q, ref_feats[0], ref_labels[0], ref_feats[1:], ref_labels[1:], proto.radius, proto.topk, proto.scale, proto.window)
            return crw_topk_step(q, None, None, ref_feats, ref_labels, proto.radius, proto.topk, proto.scale, proto.window)
        raise ValueError(f"unknown protocol kind {proto.kind!r}")


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
) -> torch.Tensor:
    """Exact joint top-k attention over a global reference and local windows in other references.

    out_j = sum over the topk largest logits l of query j among {all positions of `first`} and
    {window(j) in each local reference} of softmax(l) * label, logits = scale * q_j . k_i.

    The joint top-k is a subset of (top-k of the global part) + (top-k of the local part), so
    each part is searched by its streamed, memory-bounded densecorr kernel
    (global_attention_fwd / local_attention_fwd with topk: one joint top-k over all local
    references' windows), which also return the indices of their top-k; the 2k candidates'
    logits are recomputed from those indices and the final top-k taken over them.

    Args:
        q: (D, h, w) query features. first: (D, h, w) or None; first_labels (K, h, w).
        local_feats / local_labels: lists of (D, h, w) / (K, h, w) (may be empty).
        radius, window: the local window (boundary "mask": positions outside the image are excluded).
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
        _, _, idx = torch.ops.densecorr.global_attention_fwd(qt[None], kt[None], vt[None], float(scale), min(topk, N), "auto")
        idx = idx[0]  # (N, k) key indices
        cand_logits.append(scale * torch.einsum("nkd,nd->nk", kt[idx], qt))
        cand_labels.append(vt[idx])
    if local_feats:
        from densecorr.reference import window_offsets

        k = torch.stack(list(local_feats))  # (T, D, h, w)
        v = torch.stack(list(local_labels))  # (T, K, h, w)
        T, K = k.shape[0], v.shape[1]
        offsets = torch.tensor(window_offsets(radius, window), device=q.device) - radius  # (P, 2) (dy, dx)
        P = offsets.shape[0]
        _, _, idx = torch.ops.densecorr.local_attention_fwd(
            q[None].contiguous(), k[None].contiguous(), v[None].contiguous(), radius, 1, float(scale), "mask", window, min(topk, T * P), "auto"
        )
        idx = idx[0].reshape(N, -1)  # (N, k) window positions t * P + p
        ref, pos = idx // P, idx % P
        yy = torch.arange(h, device=q.device).repeat_interleave(w)[:, None] + offsets[pos, 0]
        xx = torch.arange(w, device=q.device).repeat(h)[:, None] + offsets[pos, 1]
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # only short windows could pick these
        flat = (ref * h + yy.clamp(0, h - 1)) * w + xx.clamp(0, w - 1)
        kf = k.permute(0, 2, 3, 1).reshape(T * N, D)[flat]  # (N, k, D)
        logits = scale * torch.einsum("nkd,nd->nk", kf, qt)
        cand_logits.append(logits.masked_fill(~valid, float("-inf")))
        cand_labels.append(v.permute(0, 2, 3, 1).reshape(T * N, K)[flat])
    logits = torch.cat(cand_logits, 1)
    labels = torch.cat(cand_labels, 1)
    if logits.shape[1] > topk:
        logits, sel = logits.topk(topk, dim=1)
        labels = torch.gather(labels, 1, sel[..., None].expand(-1, -1, labels.shape[2]))
    weights = torch.softmax(logits, dim=1)
    out = (weights[..., None] * labels).sum(1)  # (N, K)
    return out.T.reshape(-1, h, w)


# --------------------------------------------------------------------------- masks and keypoints


class _Remember:
    """Iterates `frames` and keeps the last frame seen (for overlays) without storing the rest."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self.frames = frames
        self.last: np.ndarray | None = None

    def __iter__(self):
        for frame in self.frames:
            self.last = frame
            yield frame


def check_first_mask(mask: np.ndarray, frame_size: tuple[int, int] | None = None) -> list[int]:
    """The object ids of a first-frame mask; DataError if it is empty or not of `frame_size` (H, W)."""
    from densecorr.data.davis import object_ids

    if frame_size is not None and tuple(mask.shape) != tuple(frame_size[:2]):
        raise DataError(f"the first-frame mask is {mask.shape[1]}x{mask.shape[0]} but the frames are {frame_size[1]}x{frame_size[0]}; give a mask of the frames' size")
    ids = object_ids(mask)
    if not ids:
        raise DataError("the first-frame mask is empty (all background): mark at least one object (pixel value = object id)")
    return ids


def propagate_mask(
    propagator: Propagator,
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    progress: str | None = None,
    total: int | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Track the objects of `first_mask` (H, W) ids through `frames`.

    Yields (t, frame (H, W, 3) uint8, predicted ids (H, W) uint8) for t = 1, 2, ...; the ids are
    those of the first mask. `progress`: tqdm description (None: no bar).
    Raises DataError when the first mask is empty or its size differs from the frames'.
    """
    ids = check_first_mask(first_mask)
    source = _Remember(frames)

    def first_labels(frame_size, grid):
        check_first_mask(first_mask, frame_size)
        return to_grid(one_hot(first_mask, ids), grid)

    bar = _progress(progress, total)
    try:
        for t, labels in propagator.run(source, first_labels):
            frame = source.last
            mask = labels_to_mask(labels, ids, frame.shape[:2])
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
    source = _Remember(frames)
    bar = _progress(progress, total)
    try:
        for t, maps in propagator.run(source, lambda size, grid: heatmaps(xy, size, grid, sigma), keypoints=True):
            if bar is not None:
                bar.update(1)
            yield t, heatmap_peaks(maps, source.last.shape[:2])
    finally:
        if bar is not None:
            bar.close()


def _progress(desc: str | None, total: int | None):
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- memory


def peak_rss_mb(reset: bool = False) -> float:
    """Peak resident memory of this process in MiB (Linux VmHWM; `reset=True` restarts the
    count where the kernel allows it, else the process-wide peak is returned)."""
    if reset:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024


__all__ = [
    "Protocol", "PROTOCOLS", "get_protocol", "LabEmbedding", "load_model", "Propagator", "crw_topk_step",
    "propagate_mask", "propagate_keypoints", "check_first_mask", "one_hot", "heatmaps", "to_grid", "upsample", "labels_to_mask", "heatmap_peaks", "working_size", "peak_rss_mb",
]
