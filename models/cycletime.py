"""CycleTime: learning correspondence from the cycle-consistency of time (Wang et al., CVPR 2019).

A patch of the clip's last frame is tracked backward through the earlier frames and forward
again; where it comes back should be where it started. As TimeCycle's code
(xiaolonw/TimeCycle, `vlog_train.py` and `model_simple.py`), the initial patch is a separate
image crop of the last frame -- side `patch_scale` of the frame (80 of 240 px), rotated by up
to `max_rotation` degrees (45), at one of the `motion_windows` (10) windows of a 6 x 6 grid
where the last two frames differ most, with a small jitter -- and is encoded on its own. Its
transform theta0 (rotation, fixed scale, translation) is what every cycle must come back to.
TimeCycle takes that frame predDistance (4) frame gaps after the tracked ones, and the motion
windows from it and the frame one gap later: `future_gap` (the "paper" preset; 0, the CPU
preset: the patch frame follows the tracked ones, windows from it and the frame before).
One tracking step from a patch (features P, a grid of n x n cells) to a frame (features F,
h x w cells):
  1. A = global_affinity(P, F, 1 / T): for each patch cell, a softmax over the frame's cells,
     on L2-normalised features;
  2. a small conv + linear regressor reads A (channels = the h*w frame cells, spatial = the
     patch grid) and outputs a rotation angle and a translation; the scale is fixed;
  3. affine_grid / grid_sample crop the new patch from F with that transform.
Losses (weights as in the paper's code):
  - inlier (1): the affinity mass that each patch cell puts within one cell of where the
    predicted transform maps it (the code's weak inlier count), for the direct steps from the
    encoded patch to every earlier frame;
  - skip (0.1): from the patch tracked back to each earlier frame, one jump back to the last
    frame must land on theta0;
  - long (0.02): cycles of every length 1..T-1 (back k frames, forward k-1, then to the last
    frame) must land on theta0.
Landing errors are the mean squared distance between the points of a grid transformed by
the predicted and by the initial transform (normalised [-1, 1] image coordinates).

Why the separate crop: before this version the patch was cut, axis-aligned, from the last
frame's own feature map. A zero-padded trunk's features then code absolute position, and the
cut patch carries the code of the place it was cut from, so "stay in place" satisfied every
term without matching content (the predicted location in a frame of another clip correlated
0.997 with the true one). An image crop encoded on its own carries only its own content
(and its own borders), and the inlier term -- affinity mass where the regressor's theta
points -- can then only be earned by finding that content, not by a constant theta.

What the CPU preset changes, and why (measured on synthetic shifted textures, where the true
match is known; top-1 cell-match accuracy of `embed`, 100 steps of 4 clips):
  - the learned regressor (TimeCycle's) and the inlier term co-adapt: the inlier reached 0.96
    while the match accuracy stayed at init (0.04 -> 0.07) -- a theta that does not follow
    the content, and features that put the affinity where it points. `transform=
    "procrustes"` reads the transform from the affinity itself (the least-squares rotation +
    translation from the patch grid to the expected positions, no parameters), so theta is
    always where the affinity's mass is;
  - with it, the inlier term still made training unstable (0.36 then 0.07), while the pure
    cycle loss (skip + long; `inlier_weight` 0) learned steadily (0.04 -> 0.33 in 200 steps;
    the issue's DAVIS runs: the pure cycle at 128 px, J&F 0.16 -> 0.30 in 500 steps);
  - a shallower trunk than TimeCycle's (`stages`): with the whole 64 px frame in every
    cell's receptive field, the separately encoded patch did not resemble the frame's
    features at its place (0.04 -> 0.02 with four stages);
  - stride 4 and one residual stage, 32-d features (the other methods' CPU recipe, the
    shipped default's trunk): the previous two-stage stride-8 preset learned (J&F 0.32 ->
    0.52, crw protocol, 240p, 12 frames) but tracked below Lab colour under the default
    `dino` protocol at 480p (0.53 on six of the seven sequences, Lab 0.68 there); the
    stride-4 trunk keeps small objects' own features (32 px patches of 8 x 8 cells);
    1000 steps (dino at 240p, first 20 frames of the seven sequences: init 0.559, step 400
    0.578, step 1000 0.602; Lab 0.562). At 480p under dino that width-16 trunk scored 0.606,
    level with its init (0.611) and below Lab (0.624);
  - width 32 (a 1 x 1 projection to the same 32-d) and reflect padding, 3000 steps: dino 480p
    0.659 against its init's 0.574 (the same recipe from seed 1: 0.681 against 0.530). Reflect
    padding because the patch is an image crop encoded on its own: with zero padding its border
    cells carry a border code that the frame's features at that place do not (CRW's reason for
    reflect padding). The width-16 trunk's random inits vary a lot between seeds (0.569 and
    0.611), so its trained 0.61-0.63 hid gains of +0.02 to +0.05 over its own init;
  - temperature 0.05 (the paper's 1 / sqrt(out_dim) is 1 / 8 at out_dim 64: a flat affinity).
The "paper" preset keeps TimeCycle's regressor, inlier weight 1 and temperature.

The regressor's input channels are the frame's cells, so training frames have a fixed size
(`frame_size`); `embed` takes any size. Differences from the paper, on purpose: the
regressor's convolutions are 3 x 3 with a 4 x 4 adaptive pooling (so any patch grid works);
the crop windows are centred on the frame (TimeCycle's grid is offset); no ImageNet
pretraining; ResNet-50's res4 at stride 1 with a 1 x 1 projection + ReLU.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .common import normalise_rgb, tokens
from .registry import CorrespondenceModel, ModelConfig, register_model


@dataclasses.dataclass
class CycleTimeConfig(ModelConfig):
    """arch/stride/width/out_dim: backbone (ResNet-50 res4 at stride 1, 1 x 1 projection to out_dim;
    stride: output stride, 8 (TimeCycle's) or 4 (a "resnet18" trunk only);
    stages: residual stages of a "resnet18" trunk, 2-4; padding: "zeros" or "reflect");
    clip_length frames, the last holds the initial patch; future_gap: clip steps skipped
    between the tracked frames and the patch frame (TimeCycle's predDistance: its patch comes
    from a frame well after the clip; 0: the patch frame is the next one); frame_size: side of the (square)
    training frames; patch_scale: patch side / frame side (the fixed scale); patch_cells:
    side of the patch grid (the patch image is encoded at stride * patch_cells pixels);
    max_rotation: the initial patch's rotation range (+- degrees); motion_windows: the
    patch is placed at one of this many highest-motion windows (0: anywhere); encode_crops:
    each tracking step's new patch is an image crop encoded on its own instead of a crop of
    the frame's feature map (see the module docstring); transform: how a step's transform is
    read from the affinity -- "regressor" (TimeCycle's learned conv + linear regressor) or
    "procrustes" (the least-squares rotation + translation, at the fixed scale, from the patch
    grid to the affinity's expected positions; no parameters); temperature of the affinity softmax (None: out_dim ** -0.5, the
    paper's); regressor_channels; loss weights."""

    arch: str = "resnet50_res4"
    stride: int = 8
    width: int = 64
    out_dim: int = 512
    stages: int = 4
    padding: str = "zeros"
    clip_length: int = 4
    future_gap: int = 0
    frame_size: int = 128
    patch_scale: float = 1.0 / 3.0
    patch_cells: int = 8
    max_rotation: float = 45.0
    motion_windows: int = 10
    encode_crops: bool = False
    transform: str = "regressor"
    temperature: float | None = None
    regressor_channels: int = 128
    inlier_weight: float = 1.0
    skip_weight: float = 0.1
    long_weight: float = 0.02

    def validate(self):
        self._positive("width", "out_dim", "frame_size", "patch_cells", "regressor_channels")
        if self.clip_length < 2:
            raise ValueError(f"CycleTimeConfig.clip_length must be >= 2, got {self.clip_length}")
        if self.future_gap < 0:
            raise ValueError(f"CycleTimeConfig.future_gap must be >= 0, got {self.future_gap}")
        if not 0 < self.patch_scale <= 1:
            raise ValueError(f"CycleTimeConfig.patch_scale must be in (0, 1], got {self.patch_scale}")
        if self.stride not in (4, 8):
            raise ValueError(f"CycleTimeConfig.stride must be 4 or 8, got {self.stride}")
        if self.frame_size % self.stride:
            raise ValueError(f"CycleTimeConfig.frame_size must be a multiple of the stride {self.stride}, got {self.frame_size}")
        if not 0 <= self.max_rotation <= 90:
            raise ValueError(f"CycleTimeConfig.max_rotation must be in [0, 90] degrees, got {self.max_rotation}")
        if not 0 <= self.motion_windows <= 36:
            raise ValueError(f"CycleTimeConfig.motion_windows must be in [0, 36] (of a 6 x 6 grid), got {self.motion_windows}")
        if self.transform not in ("regressor", "procrustes"):
            raise ValueError(f"CycleTimeConfig.transform must be 'regressor' or 'procrustes', got {self.transform!r}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"CycleTimeConfig.temperature must be > 0, got {self.temperature}")


class TransformRegressor(nn.Module):
    """Affinity (B, M, ph, pw) -> rotation + translation (B, 3) = (tx, ty, angle)."""

    def __init__(self, frame_cells: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(frame_cells, channels, 3, padding=1, bias=False),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False),
            nn.LeakyReLU(0.1, inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.linear = nn.Linear(channels // 2 * 16, 3)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Small output at start: the first predictions are near the frame's centre, unrotated.
        nn.init.normal_(self.linear.weight, 0.0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, attn):
        return self.linear(self.body(attn).flatten(1))


# Training presets (densecorr.training.preset(name, preset)): TrainConfig fields over its defaults.
# "paper": the paper's setting (its data at 256 px; clip gaps chosen for DAVIS' 24 fps);
# "cpu": a narrow one-stage ResNet-18 (width 32) on 64 x 64 crops of the native 256p frames, a
# few thousand steps on 2 cores.
PRESETS = {
    # Wang et al. 2019: 4 tracked frames of 240 x 240 (frame_gap 2) and the patch from a frame
    # predDistance 4 gaps after them (vlog_train.py; here the 9th frame of the clip, TimeCycle's
    # is 1 frame earlier), 80 px patches (10 x 10 cells), Adam 2e-4, batch 32, ResNet-50 res4.
    "paper": dict(model_config={"frame_size": 240, "patch_cells": 10, "clip_length": 5, "future_gap": 4}, resize=240,
                  crop=(240, 240), gaps=(2,), batch_size=32, lr=2e-4, steps=100_000),
    # CPU scale (see the module docstring): a one-stage ResNet-18 of width 32 at stride 4 (a
    # 1 x 1 projection to 32-d) with reflect padding, on 64 x 64 crops, 32 px patches of 8 x 8
    # cells, the transform read by Procrustes from the affinity at T = 0.05, and the pure cycle
    # loss (inlier off); 3000 cosine steps. (Width 16 with zero padding, 1000 steps, the preset
    # before it: dino 480p 0.606 against its init's 0.611.) The patch comes from the frame right
    # after the tracked ones (future_gap 0): TimeCycle's far patch frame (future_gap 4) scored
    # lower on 64 px crops (dino 480p 0.591 at 2000 steps, vs 0.606).
    "cpu": dict(model_config={"arch": "resnet18", "stride": 4, "width": 32, "out_dim": 32, "stages": 1,
                              "padding": "reflect", "frame_size": 64, "patch_scale": 0.5, "patch_cells": 8, "transform": "procrustes",
                              "temperature": 0.05, "inlier_weight": 0.0},
                gaps=(2,), lr=1e-3, steps=3000, schedule="cosine", resize=None, crop=(64, 64), batch_size=4,
                ckpt_every=100, eval_max_frames=12),
}


@register_model("cycletime")
class CycleTime(CorrespondenceModel):
    """Cycle-consistent patch tracking. Clip (B, clip_length, 3, frame_size, frame_size)."""

    Config = CycleTimeConfig

    def __init__(self, config: CycleTimeConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=3, stages=config.stages,
                                       padding=config.padding)
        cells = config.frame_size // config.stride
        self.regressor = TransformRegressor(cells * cells, config.regressor_channels)
        # Fixed points whose transformed positions measure how far two transforms disagree.
        g = torch.linspace(-1.0, 1.0, 20)
        self.register_buffer("grid_points", torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2), persistent=False)

    @property
    def clip_length(self) -> int:
        """Frames per training clip: the tracked frames and the patch frame, plus, with a
        future gap, the skipped frames and one after the patch frame (the motion partner)."""
        c = self.config
        return c.clip_length + (c.future_gap + 1 if c.future_gap else 0)

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def scale(self) -> float:
        t = self.config.temperature
        return 1.0 / t if t is not None else math.sqrt(self.config.out_dim)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) -> unnormalised features (B, D, H / stride, W / stride) (after ReLU)."""
        return F.relu(self.backbone(normalise_rgb(frames)))

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> L2-normalised features (B, D, H / stride, W / stride)."""
        self.check_frames(frames)
        return F.normalize(self.features(frames), dim=1)

    def weights(self):
        c = self.config
        return {"inlier": c.inlier_weight, "skip": c.skip_weight, "long": c.long_weight}

    # -- transforms ---------------------------------------------------------------------
    def theta(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 3) (tx, ty, angle) -> (B, 2, 3) affine matrix with the fixed scale."""
        s = self.config.patch_scale
        tx, ty, a = params.unbind(1)
        cos, sin = torch.cos(a) * s, torch.sin(a) * s
        return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)

    def procrustes(self, coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The rotation + translation (fixed scale) that best maps the patch grid onto `coords`.

        coords (B, n*n, 2): the expected (x, y), in cells of an h x w frame map, of each patch
        cell (row-major) -> theta (B, 2, 3). Least squares: with centred patch points u_i
        (normalised patch units times the scale) and centred targets x_i (normalised frame
        units), the angle is atan2(sum u_i x x_i, sum u_i . x_i); the translation maps the
        patch centre (0, 0) to the targets' mean."""
        n = self.config.patch_cells
        lin = (torch.arange(n, device=coords.device, dtype=coords.dtype) * 2 + 1) / n - 1
        uy, ux = torch.meshgrid(lin, lin, indexing="ij")
        u = torch.stack([ux.flatten(), uy.flatten()], 1) * self.config.patch_scale  # (n*n, 2), centred
        x = torch.stack([(2 * coords[..., 0] + 1) / w - 1, (2 * coords[..., 1] + 1) / h - 1], -1)  # (B, n*n, 2)
        t = x.mean(1)
        xc = x - t.unsqueeze(1)
        dot = (u.unsqueeze(0) * xc).sum((1, 2))
        cross = (u[:, 0] * xc[..., 1] - u[:, 1] * xc[..., 0]).sum(1)
        angle = torch.atan2(cross, dot + 1e-12)
        return self.theta(torch.stack([t[:, 0], t[:, 1], angle], 1))

    def crop(self, feats: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """feats (B, D, h, w), theta (B, 2, 3) -> patch (B, D, patch_cells, patch_cells)."""
        n = self.config.patch_cells
        grid = F.affine_grid(theta, [feats.shape[0], feats.shape[1], n, n], align_corners=False)
        return F.grid_sample(feats, grid, align_corners=False)

    def grid_distance(self, theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared distance of the grid points under two transforms (B, 2, 3) -> scalar."""
        pts = self.grid_points.to(theta)
        a = pts @ theta[:, :, :2].transpose(1, 2) + theta[:, :, 2].unsqueeze(1)
        b = pts @ target[:, :, :2].transpose(1, 2) + target[:, :, 2].unsqueeze(1)
        return ((a - b) ** 2).sum(-1).mean()

    def track(self, patch: torch.Tensor, norm: torch.Tensor, raw: torch.Tensor, frame: torch.Tensor | None = None):
        """One step: patch (B, D, n, n) normalised, frame features norm/raw (B, D, h, w)
        -> (theta (B, 2, 3), new normalised patch (B, D, n, n), affinity (B, n*n, h*w)).

        The new patch is cropped from the frame's features (TimeCycle), or, with
        config.encode_crops and the frame's image `frame` (B, 3, H, W) given, an image crop
        encoded on its own (no position code carried from step to step). Without `frame`
        under encode_crops the new patch is None (callers that only need theta)."""
        b, _, h, w = norm.shape
        n = self.config.patch_cells
        attn = self.ops.global_affinity(tokens(patch), tokens(norm), scale=self.scale)  # (B, n*n, h*w)
        if self.config.transform == "procrustes":
            theta = self.procrustes(self.ops.project_coords(patch, norm, scale=self.scale), h, w)
        else:
            theta = self.theta(self.regressor(attn.transpose(1, 2).reshape(b, h * w, n, n)))
        if self.config.encode_crops:
            new = None if frame is None else self.encode_patch(frame, theta)
        else:
            new = F.normalize(self.crop(raw, theta), dim=1)
        return theta, new, attn

    def inlier(self, attn: torch.Tensor, theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Mean affinity mass within one cell of where `theta` maps each patch cell.

        attn (B, n*n, h*w), theta (B, 2, 3) -> scalar in [0, 1]. The 3 x 3 box sum of each
        cell's affinity map, read bilinearly at the transformed position (so the count is
        differentiable in the transform too).
        """
        b = attn.shape[0]
        n = self.config.patch_cells
        maps = attn.reshape(b * n * n, 1, h, w)
        box = F.avg_pool2d(maps, 3, 1, 1, count_include_pad=True) * 9  # sum over the 3 x 3 box
        where = F.affine_grid(theta, [b, 1, n, n], align_corners=False).reshape(b * n * n, 1, 1, 2)
        return F.grid_sample(box, where, align_corners=False).mean()

    # -- the initial patch ------------------------------------------------------------------
    def initial_theta(self, clip: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
        """clip (B, T, 3, H, W) -> theta0 (B, 2, 3): the initial patch's transform in the last
        frame -- one of the `motion_windows` windows of a 6 x 6 grid where the last frame and
        `partner` (B, 3, H, W; default the frame before it) differ most (TimeCycle's choice),
        jittered by up to 1/12 of the frame, rotated by up to max_rotation degrees, kept inside
        the frame."""
        cfg = self.config
        b = clip.shape[0]
        dev, dt = clip.device, clip.dtype
        partner = clip[:, -2] if partner is None else partner
        s = cfg.patch_scale
        margin = 1.0 - s
        locs = torch.linspace(-margin, margin, 6, device=dev, dtype=dt)
        ly, lx = torch.meshgrid(locs, locs, indexing="ij")
        centres = torch.stack([lx.flatten(), ly.flatten()], 1)  # (36, 2) (x, y) normalised
        if cfg.motion_windows > 0:
            diff = (clip[:, -1] - partner).abs().sum(1, keepdim=True)  # (B, 1, H, W)
            side = max(1, round(s * clip.shape[-1]))
            score = F.adaptive_avg_pool2d(F.avg_pool2d(diff, side, 1, side // 2, count_include_pad=False), 6)
            top = score.flatten(1).topk(cfg.motion_windows, dim=1).indices  # (B, k)
            pick = top[torch.arange(b, device=dev), torch.randint(cfg.motion_windows, (b,), device=dev)]
        else:
            pick = torch.randint(36, (b,), device=dev)
        xy = centres[pick] + (torch.rand(b, 2, device=dev, dtype=dt) - 0.5) * (2.0 / 12.0)
        xy = xy.clamp(-margin, margin)
        angle = (torch.rand(b, 1, device=dev, dtype=dt) * 2 - 1) * math.radians(cfg.max_rotation)
        return self.theta(torch.cat([xy, angle], 1))

    def encode_patch(self, frame: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, H, W), theta (B, 2, 3) -> the crop's own normalised features
        (B, D, patch_cells, patch_cells), from an image crop of stride * patch_cells pixels."""
        side = self.config.stride * self.config.patch_cells
        grid = F.affine_grid(theta, [frame.shape[0], 3, side, side], align_corners=False)
        crop = F.grid_sample(frame, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return F.normalize(self.features(crop), dim=1)

    # -- loss -----------------------------------------------------------------------------
    def loss_terms(self, clip):
        cfg = self.config
        h, w = clip.shape[-2:]
        if h != cfg.frame_size or w != cfg.frame_size:
            raise ValueError(
                f"cycletime trains on {cfg.frame_size} x {cfg.frame_size} frames (config.frame_size; the "
                f"transform regressor reads every frame cell), got clip of shape {tuple(clip.shape)}"
            )
        partner = None
        if cfg.future_gap:
            # TimeCycle's clip: the tracked frames, then (after the gap) the patch frame; the
            # frame after it only says where the motion is.
            partner = clip[:, -1]
            clip = torch.cat([clip[:, : cfg.clip_length - 1], clip[:, -2:-1]], 1)
        b, t = clip.shape[:2]
        raw = self.features(clip.flatten(0, 1))
        raw = raw.view(b, t, *raw.shape[1:])
        norm = F.normalize(raw, dim=2)
        fh, fw = raw.shape[-2:]
        last = t - 1

        # The initial patch: a rotated image crop of the last frame, encoded on its own.
        theta0 = self.initial_theta(clip, partner)
        patch0 = self.encode_patch(clip[:, last], theta0)

        # Backward chain last -> last-1 -> ... -> 0; step k reaches frame last-k.
        back = [patch0]
        inliers = []
        for k in range(1, t):
            theta, patch, attn = self.track(back[-1], norm[:, last - k], raw[:, last - k], clip[:, last - k])
            back.append(patch)
            if k == 1:
                inliers.append(self.inlier(attn, theta, fh, fw))
        # Direct steps from the initial patch to the other earlier frames, for the inlier count.
        for k in range(2, t):
            theta, _, attn = self.track(patch0, norm[:, last - k], raw[:, last - k])
            inliers.append(self.inlier(attn, theta, fh, fw))

        # Long cycles: back k frames, forward to frame last-1, then to the last frame.
        long_terms = []
        for k in range(1, t):
            patch = back[k]
            for frame in range(last - k + 1, last):
                _, patch, _ = self.track(patch, norm[:, frame], raw[:, frame], clip[:, frame])
            theta, _, _ = self.track(patch, norm[:, last], raw[:, last])
            long_terms.append(self.grid_distance(theta, theta0))

        # Skip cycles: from the patch tracked back to each earlier frame, straight to the last.
        skip_terms = []
        for k in range(1, t):
            theta, _, _ = self.track(back[k], norm[:, last], raw[:, last])
            skip_terms.append(self.grid_distance(theta, theta0))

        return {
            "inlier": -torch.stack(inliers).mean(),
            "skip": torch.stack(skip_terms).mean(),
            "long": torch.stack(long_terms).mean(),
        }
