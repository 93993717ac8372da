"""CRW: space-time correspondence as a contrastive random walk (Jabri, Owens & Efros, NeurIPS 2020).

Each frame of a clip becomes a graph of patch nodes; a random walk moves from frame to frame
along softmax transitions between neighbouring frames' nodes, and a walk that goes forward
through the clip and back (a palindrome) should return to the node it started from.

- Nodes: a `grid` x `grid` lattice of overlapping windows per frame (side 2 / (grid + 1) of the
  frame, stride half that: 7 x 7 windows of 64 px on a 256 px frame), each cut with its own
  random resized crop (area 0.7-0.9 of its window, aspect 3/4-4/3, random place) and
  resampled to `patch_size` px: the patches of one frame are augmented independently, so a
  node's position in its patch cannot tell which node it is.
- Embedding: the ResNet-18 trunk with reflect padding (zero padding lets features code their
  absolute position), its map mean-pooled per patch, a head (`head_depth` hidden layers; 0, as
  videowalk's train.py default that its training command keeps: one linear map) to
  `embed_dim` = 128 dimensions, L2-normalised.
- Transitions: A_t = softmax over frame t+1's nodes of q_t . q_{t+1} / T (T = temperature), and
  the backward A_t' = softmax over frame t's nodes of the transposed logits, both through
  `global_affinity`; edge dropout sets each transition to 0 with probability `edge_dropout`
  and renormalises the row (= the softmax with those logits at -inf, as videowalk's code),
  and a backward edge whose forward edge was dropped is dropped too (videowalk drops edges in
  place in the one affinity both directions read).
- Loss: for every palindrome 0 -> 1 -> ... -> k -> ... -> 1 -> 0, k = 2 .. T - 1 (videowalk's
  walks, which skip the trivial 2-step one), the cross-entropy of the walk's end-node
  distribution (the product of the transition matrices) against the start node (identity
  targets), averaged over walks.
- `embed` is what videowalk's test.py uses: the trunk's feature map (without the head and
  without its last `stages - embed_stages` stages: test.py removes layer4), L2-normalised,
  for the `crw` propagation protocol.

Differences from the paper, on purpose: the patch jitter is a crop in the frame's own
coordinates (one `grid_sample` for all patches) rather than PIL RandomResizedCrop per patch,
and videowalk's RandomResizedCrop of each frame (`--frame-transforms crop`: area 0.8-0.95,
aspect 0.7-1.3, drawn per frame) is a box in the frame that the grid is laid on
(`frame_crop_scale`; off in the CPU preset); no Sinkhorn targets (videowalk's experimental option). The CPU preset
uses a shallow stride-4 trunk and pools its nodes from each frame's map (`nodes="boxes"`)
rather than encoding 49 patches of a fifth of the frame separately (see PRESETS).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .common import normalise_rgb
from .registry import CorrespondenceModel, ModelConfig, register_model

# Keeps log() finite for a walk probability that underflows to 0 (videowalk's EPS).
_EPS = 1e-20


@dataclasses.dataclass
class CRWConfig(ModelConfig):
    """arch/stride/width/stages: the trunk (ResNet-18; `stages` residual stages trained);
    padding: the convolutions' padding ("reflect" as videowalk's scratch model, or "zeros");
    nodes: "patches" (the paper's: a grid of jittered patches, each pooled to one node),
    "cells" (videowalk's code without `--frame-aug grid`: every cell of each frame's feature
    map is a node, the frames each cut by their own random resized crop, `frame_crop_scale`) or
    "boxes" (the same jittered grid windows, pooled from the trunk's map of the whole frame,
    the grid laid `margin` px inside the frame's border: each node's cells are then computed
    from real surroundings, as at test time, and none sees the padding that could code its
    position; `patch_size` / `stride` samples per side of each window; `margin` should exceed
    half the trunk's receptive field: 28 for one stage, whose field is 43 px);
    embed_stages: the stages `embed` uses (videowalk evaluates without layer4: 3);
    clip_length frames; grid: nodes per side; patch_size: patch side in pixels after the
    jitter (a multiple of the stride); jitter_scale: (min, max) area fraction of each patch's
    random crop of its window; frame_crop_scale / frame_crop_ratio: each frame's own random
    resized crop (area fraction, aspect range) that the patch grid is laid on (videowalk's
    `--frame-transforms crop`; None: the whole frame); head_depth: hidden layers of the MLP head (0: linear);
    context: pixels of real surroundings resampled on each side of every patch (at the patch's
    scale; a multiple of the stride) so that its cells are computed from image content as at
    test time rather than from the padding (0: videowalk's bare patches); node_cells: the node
    is the mean of the central node_cells x node_cells cells of its patch (None: all the
    patch's cells, videowalk's mean pool); embed_dim: node embedding size; temperature of the
    transitions; edge_dropout: probability that a transition is dropped."""

    arch: str = "resnet18"
    stride: int = 8
    width: int = 64
    stages: int = 4
    padding: str = "reflect"
    nodes: str = "patches"
    embed_stages: int = 3
    clip_length: int = 4
    grid: int = 7
    patch_size: int = 64
    jitter_scale: tuple = (0.7, 0.9)
    context: int = 0
    node_cells: int | None = None
    margin: int = 28
    frame_crop_scale: tuple | None = (0.8, 0.95)
    frame_crop_ratio: tuple = (0.7, 1.3)
    head_depth: int = 0
    embed_dim: int = 128
    temperature: float = 0.05
    edge_dropout: float = 0.1

    def validate(self):
        self._positive("width", "grid", "patch_size", "embed_dim", "temperature")
        if self.clip_length < 3:
            raise ValueError(f"CRWConfig.clip_length must be >= 3 (the shortest palindrome visits 3 frames), got {self.clip_length}")
        if not 1 <= self.embed_stages <= self.stages:
            raise ValueError(f"CRWConfig.embed_stages must be in [1, stages={self.stages}], got {self.embed_stages}")
        if self.patch_size % self.stride:
            raise ValueError(f"CRWConfig.patch_size must be a multiple of the stride {self.stride}, got {self.patch_size}")
        if self.context < 0 or self.context % self.stride:
            raise ValueError(f"CRWConfig.context must be a multiple of the stride {self.stride} >= 0, got {self.context}")
        if self.node_cells is not None and not 1 <= self.node_cells <= self.patch_size // self.stride:
            raise ValueError(f"CRWConfig.node_cells must be None or in [1, patch_size / stride = "
                             f"{self.patch_size // self.stride}], got {self.node_cells}")
        if self.nodes not in ("patches", "cells", "boxes"):
            raise ValueError(f"CRWConfig.nodes must be 'patches', 'cells' or 'boxes', got {self.nodes!r}")
        if self.margin < 0:
            raise ValueError(f"CRWConfig.margin must be >= 0, got {self.margin}")
        if self.nodes == "cells" and self.frame_crop_scale is None:
            raise ValueError("CRWConfig.nodes='cells' needs frame_crop_scale (each frame's own crop): "
                             "with one crop for the whole clip a cell's place in the map would identify its node")
        if self.head_depth < 0:
            raise ValueError(f"CRWConfig.head_depth must be >= 0, got {self.head_depth}")
        if not 0.0 <= self.edge_dropout < 1.0:
            raise ValueError(f"CRWConfig.edge_dropout must be in [0, 1), got {self.edge_dropout}")
        for name in ("jitter_scale", "frame_crop_scale"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or not 0 < v[0] <= v[1] <= 1):
                raise ValueError(f"CRWConfig.{name} must be (min, max) with 0 < min <= max <= 1, got {v}")
        if self.jitter_scale is None:
            raise ValueError("CRWConfig.jitter_scale must be (min, max), got None")
        r = self.frame_crop_ratio
        if len(r) != 2 or not 0 < r[0] <= r[1]:
            raise ValueError(f"CRWConfig.frame_crop_ratio must be (min, max) with 0 < min <= max, got {r}")


# "paper": videowalk's training command (README): clips of 4 frames, temperature 0.05, edge
# dropout 0.1, batch 20, Adam 1e-4, 256 px frames with 7 x 7 patches of 64 px; Kinetics
# resampled to 8 fps (DAVIS' 24 fps: gap 3); 25 epochs (about 1.5M steps of 5 clips per
# Kinetics-400 video).
# "cpu": a narrow shallow trunk at stride 4 (one residual stage of width 32: 32-d features for
# `embed`, a hidden layer in the head) on 256 x 256 crops of the native 256p frames, batch 2, 2000
# cosine steps (~7 min on one thread). Its nodes are "boxes": the 7 x 7 jittered grid windows
# (about 50 px: a fifth of the frame, as videowalk's 64 px of 256) pooled from the trunk's map
# of the whole crop, the grid 28 px inside its border (the trunk's receptive field is 43 px) so
# that a node depends on image content only and its cells see real surroundings, as at test
# time. videowalk's separately encoded patches would cost 49 trunk passes per frame at that
# size; its small-patch stand-ins all tracked at or below the init (0.639; lab notebook,
# 2026-12-03): 16 px patches of 64 px crops of frames resized to 480 px 0.629, with real
# context 0.599-0.641, cells 0.36-0.51, a 15 x 15 grid 0.592. The window's share of the frame is
# what counts: boxes of 16 px (120 px crops at 480) 0.570, of 32 px (184 px native crops) 0.637,
# of 50 px (this preset) 0.689, dino at 480p on the seven sequences (Lab 0.624; docs/methods.md).
PRESETS = {
    "paper": dict(model_config={}, resize=256, crop=(256, 256), gaps=(3,), batch_size=20, lr=1e-4,
                  steps=1_500_000),
    "cpu": dict(model_config={"width": 32, "stride": 4, "stages": 1, "embed_stages": 1, "nodes": "boxes",
                              "patch_size": 32, "margin": 28, "frame_crop_scale": None, "head_depth": 1},
                gaps=(2, 3), lr=1e-3, steps=2000, schedule="cosine", resize=None, crop=(256, 256), batch_size=2,
                ckpt_every=100, eval_max_frames=12),
}


def _mlp(dim_in: int, dim_out: int, depth: int) -> nn.Sequential:
    """depth hidden layers of width dim_in (ReLU) then a linear map to dim_out; depth 0: linear."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dim_in, dim_out))
    return nn.Sequential(*layers)


@register_model("crw")
class CRW(CorrespondenceModel):
    """Contrastive random walk over patch nodes. Clip (B, clip_length, 3, H, W)."""

    Config = CRWConfig

    def __init__(self, config: CRWConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.arch, config.stride, config.width, None, in_channels=3,
                                       stages=config.stages, padding=config.padding)
        self.head = _mlp(self.backbone.out_channels, config.embed_dim, config.head_depth)

    @property
    def clip_length(self) -> int:
        return self.config.clip_length

    @property
    def stride(self) -> int:
        return self.config.stride

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> L2-normalised trunk features (B, C, H / stride, W / stride)."""
        self.check_frames(frames)
        return F.normalize(self.backbone.trunk(normalise_rgb(frames), self.config.embed_stages), dim=1)

    def weights(self):
        return {"walk": 1.0}

    # -- nodes ----------------------------------------------------------------------------
    @staticmethod
    def random_crops(shape, side: float, scale: tuple, log_ratio: tuple, device, dtype) -> tuple:
        """RandomResizedCrop's boxes inside windows of side `side` (frame units): area fraction
        uniform in `scale`, aspect log-uniform in mid +- half (`log_ratio`), each side clamped to
        the window, placed uniformly in it. Returns (x0, y0, w, h), each of `shape`, x0 and y0
        from the window's corner."""
        (lo, hi), (mid, half) = scale, log_ratio
        area = lo + (hi - lo) * torch.rand(shape, device=device, dtype=dtype)
        ratio = torch.exp((torch.rand(shape, device=device, dtype=dtype) * 2 - 1) * half + mid)
        w = (torch.sqrt(area * ratio) * side).clamp(max=side)
        h = (torch.sqrt(area / ratio) * side).clamp(max=side)
        x0 = torch.rand(shape, device=device, dtype=dtype) * (side - w)
        y0 = torch.rand(shape, device=device, dtype=dtype) * (side - h)
        return x0, y0, w, h

    def frame_boxes(self, n: int, device, dtype) -> torch.Tensor:
        """Each frame's own random resized crop (videowalk's RandomResizedCrop per frame, area
        `frame_crop_scale`, aspect `frame_crop_ratio`): (n, 4) as (x0, y0, w, h) in frame units."""
        c = self.config
        if c.frame_crop_scale is None:
            return torch.tensor([0.0, 0.0, 1.0, 1.0], device=device, dtype=dtype).expand(n, 4)
        lr0, lr1 = math.log(c.frame_crop_ratio[0]), math.log(c.frame_crop_ratio[1])
        return torch.stack(self.random_crops(n, 1.0, c.frame_crop_scale, ((lr0 + lr1) / 2, (lr1 - lr0) / 2),
                                             device, dtype), dim=-1)

    def patch_boxes(self, n: int, h: int, w: int, device, dtype) -> torch.Tensor:
        """Random jittered crops of the grid windows of n frames: (n, g*g, 4) as (cx, cy, sx, sy)
        in grid_sample's normalised coordinates (centre and half-size, [-1, 1] = the frame).
        The grid is laid on each frame's own random crop (`frame_boxes`), shrunk `margin` px
        inside the frame for nodes="boxes"."""
        g = self.config.grid
        # The windows: side 2 / (g + 1) of the frame, stride half of it (videowalk's patch grid).
        side = 2.0 / (g + 1)  # in units of the frame side
        starts = torch.arange(g, device=device, dtype=dtype) * side / 2
        wy, wx = torch.meshgrid(starts, starts, indexing="ij")
        # Each window's jitter: RandomResizedCrop's default aspect range 3/4 - 4/3.
        x0, y0, cw, ch = self.random_crops((n, g * g), side, self.config.jitter_scale, (0.0, math.log(4.0 / 3.0)),
                                           device, dtype)
        x0, y0 = wx.flatten() + x0, wy.flatten() + y0  # top-left corners, frame units in [0, 1]
        # crop units -> frame units
        fb = self.frame_boxes(n, device, dtype).unsqueeze(1)  # (n, 1, 4)
        if self.config.nodes == "boxes":  # the crop shrunk into the frame's interior
            mx, my = self.config.margin / w, self.config.margin / h
            if 2 * max(mx, my) >= 1:
                raise ValueError(f"CRW nodes='boxes': frames of {h}x{w} px leave no interior inside the "
                                 f"margin of {self.config.margin} px")
            scale = torch.tensor([1 - 2 * mx, 1 - 2 * my], device=device, dtype=dtype)
            fb = torch.cat([torch.tensor([mx, my], device=device, dtype=dtype) + fb[..., :2] * scale,
                            fb[..., 2:] * scale], dim=-1)
        x0, y0 = fb[..., 0] + x0 * fb[..., 2], fb[..., 1] + y0 * fb[..., 3]
        cw, ch = cw * fb[..., 2], ch * fb[..., 3]
        return self.normalised_boxes(x0, y0, cw, ch)

    @staticmethod
    def normalised_boxes(x0, y0, w, h) -> torch.Tensor:
        """Boxes in frame units [0, 1] (corner, size) -> (..., 4) as grid_sample's normalised
        [-1, 1] (cx, cy, sx, sy): centre 2 * (x0 + w / 2) - 1, half-size w."""
        return torch.stack([2 * x0 + w - 1, 2 * y0 + h - 1, w, h], dim=-1)

    @staticmethod
    def resample(frames: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """frames (n, C, H, W), boxes (n, k, 4) as `normalised_boxes` -> each box resampled
        bilinearly to (h, w): (n, k, C, h, w)."""
        (n, k), c = boxes.shape[:2], frames.shape[1]
        lin_x = (torch.arange(w, device=frames.device, dtype=frames.dtype) * 2 + 1) / w - 1  # (w,) in (-1, 1)
        lin_y = (torch.arange(h, device=frames.device, dtype=frames.dtype) * 2 + 1) / h - 1
        gx = boxes[..., 0, None, None] + boxes[..., 2, None, None] * lin_x.view(1, 1, 1, w)  # (n, k, 1, w)
        gy = boxes[..., 1, None, None] + boxes[..., 3, None, None] * lin_y.view(1, 1, h, 1)  # (n, k, h, 1)
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # (n, k, h, w, 2)
        out = F.grid_sample(frames, grid.reshape(n, k * h, w, 2), mode="bilinear", padding_mode="border",
                            align_corners=False)  # (n, C, k*h, w)
        return out.view(n, c, k, h, w).transpose(1, 2)

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (n, 3, H, W) -> independently jittered patches (n, g*g, 3, P, P), P = patch_size
        + 2 * context: each box widened by `context` px of its own scale on every side."""
        n, _, h, w = frames.shape
        p, c = self.config.patch_size, self.config.context
        boxes = self.patch_boxes(n, h, w, frames.device, frames.dtype)
        if c:
            boxes = torch.cat([boxes[..., :2], boxes[..., 2:] * ((p + 2 * c) / p)], dim=-1)
        return self.resample(frames, boxes, p + 2 * c, p + 2 * c)

    def pool_nodes(self, maps: torch.Tensor) -> torch.Tensor:
        """Patch feature maps (n, C, P' / s, P' / s) -> node features (n, C): the mean over the
        patch's own cells (inside its context) or over the central `node_cells` of them."""
        c = self.config
        k = c.patch_size // c.stride if c.node_cells is None else c.node_cells
        lo = (maps.shape[-1] - k) // 2
        return maps[..., lo:lo + k, lo:lo + k].mean(dim=(2, 3))

    def frames_cropped(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (n, 3, H, W) -> each resampled from its own random crop (`frame_boxes`) to (H, W)."""
        n, _, h, w = frames.shape
        fb = self.frame_boxes(n, frames.device, frames.dtype)  # (n, 4): x0, y0, w, h in frame units
        boxes = self.normalised_boxes(*fb.unbind(-1)).unsqueeze(1)  # (n, 1, 4)
        return self.resample(frames, boxes, h, w).squeeze(1)

    def nodes(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, T, 3, H, W) -> L2-normalised node embeddings (B, T, N, embed_dim): N = g*g
        patches or boxes, or (H / stride) * (W / stride) cells (`nodes`)."""
        b, t = clip.shape[:2]
        frames = normalise_rgb(clip.flatten(0, 1))
        if self.config.nodes == "boxes":
            n, _, h, w = frames.shape
            maps = self.backbone.trunk(frames)  # (B*T, C, H / s, W / s)
            k = self.config.patch_size // self.config.stride
            boxes = self.patch_boxes(n, h, w, frames.device, frames.dtype)  # normalised: the same on the map
            feats = self.head(self.resample(maps, boxes, k, k).mean(dim=(-2, -1)))  # (B*T, g*g, D)
            return F.normalize(feats, dim=-1).view(b, t, feats.shape[1], -1)
        if self.config.nodes == "cells":
            maps = self.backbone.trunk(self.frames_cropped(frames))  # (B*T, C, h, w)
            feats = self.head(maps.flatten(2).transpose(1, 2))  # (B*T, h*w, D)
            return F.normalize(feats, dim=-1).view(b, t, feats.shape[1], -1)
        patches = self.patches(frames)  # (B*T, N, 3, P, P)
        n = patches.shape[1]
        maps = self.backbone.trunk(patches.flatten(0, 1))  # (B*T*N, C, p, p)
        feats = self.head(self.pool_nodes(maps))
        return F.normalize(feats, dim=-1).view(b, t, n, -1)

    # -- walks ----------------------------------------------------------------------------
    def transition(self, src: torch.Tensor, dst: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, N, D), dst (B, M, D) -> row-stochastic (B, N, M); `keep` (B, N, M, 0/1): the
        edges that survive edge dropout (None: all), the kept transitions renormalised per row."""
        a = self.ops.global_affinity(src, dst, scale=1.0 / self.config.temperature)
        if keep is not None:
            a = a * keep
            a = a / a.sum(-1, keepdim=True).clamp_min(_EPS)
        return a

    def edge_masks(self, b: int, n: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Edge-dropout masks (B, N, N) of one step's forward and backward transitions (None, None
        when not training or no dropout). As videowalk's code, which drops edges in place in the
        affinity that both directions are read from, a backward edge j -> i is also dropped when
        the forward edge i -> j was, besides its own draw."""
        p = self.config.edge_dropout
        if not self.training or p <= 0:
            return None, None
        fwd = (torch.rand(b, n, n, device=like.device) >= p).to(like.dtype)
        bwd = (torch.rand(b, n, n, device=like.device) >= p).to(like.dtype) * fwd.transpose(1, 2)
        return fwd, bwd

    def walk_losses(self, q: torch.Tensor) -> list[torch.Tensor]:
        """q (B, T, N, D) -> the cross-entropy of each palindrome 0..k..0, k = 2 .. T - 1."""
        b, t, n, _ = q.shape
        forward, backward = [], []
        for i in range(t - 1):
            keep_f, keep_b = self.edge_masks(b, n, q)
            forward.append(self.transition(q[:, i], q[:, i + 1], keep_f))
            backward.append(self.transition(q[:, i + 1], q[:, i], keep_b))
        target = torch.arange(n, device=q.device).repeat(b)
        losses = []
        for k in range(2, t):
            walk = forward[0]
            for a in forward[1:k] + backward[:k][::-1]:
                walk = walk @ a
            losses.append(F.nll_loss(torch.log(walk + _EPS).flatten(0, 1), target))
        return losses

    def loss_terms(self, clip):
        return {"walk": torch.stack(self.walk_losses(self.nodes(clip))).mean()}
