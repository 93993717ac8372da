"""MAST: a memory-augmented self-supervised tracker (Lai, Lu & Xie, CVPR 2020).

The target frame is reconstructed in Lab from several reference frames at once: with
stride-4 features f, target pixel j gets
    y_j = sum_{t, i in window_t(j)} softmax_{t,i}(f_j . f_{t,i}) lab_{t,i} ,
one softmax jointly over all references' windows: one `local_attention` call with the
references stacked as (B, T, D, h, w). The loss is the Huber (smooth L1) distance between y
and the target's Lab at feature resolution.

- Input: Lab, with channel dropout -- one of the a/b channels is zeroed in every frame of the
  clip (the others rescaled by 3/2), so the features cannot carry it; the loss is on the
  dropped channel only, as MAST's code (`compute_lphoto` reconstructs `rgb[:, ch]`, the
  dropped channels): the target's own input shows L and the other a/b channel, so
  reconstructing those could go through the target's own features instead of
  correspondence. A clip without dropout (dropout_p < 1) reconstructs all three channels.
- Memory: short-term references are the frames just before the target (window radius r
  around the same position); long-term references are the first frames of the clip, found by
  ROI localisation: a coarse window with dilation d gives each target pixel a softmax over
  far positions, whose expected offset is the ROI centre; the reference's features and
  colours are resampled at the ROI centres (bilinear), and a local window of radius r is
  taken there. The resampling warps the reference by the per-pixel offset field, so the
  window around pixel j is centred on j's own ROI where the field is locally constant (MAST
  samples each window around its own centre; this keeps to the fused op).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .backbones import build_backbone
from .colour import normalise_lab, rgb_to_lab
from .common import area_downsample
from .registry import CorrespondenceModel, ModelConfig, register_model


@dataclasses.dataclass
class MASTConfig(ModelConfig):
    """Backbone (ResNet-18 at stride 4, out_dim channels); num_long_refs (first frames, ROI
    localised) and num_short_refs (frames before the target) references, clip_length =
    their sum + 1; radius of the reference windows; roi_radius and roi_dilation of the
    coarse localisation window; scale of the logits; dropout_p: probability that a clip has
    one a/b channel dropped; huber_delta of the smooth L1 loss (normalised Lab units);
    stages: residual stages of the ResNet-18 kept (fewer: smaller receptive field);
    normalise: L2-normalise the features before the affinity (cosine similarity, `scale`
    then acts as 1 / temperature), as the propagation protocols do at test time."""

    arch: str = "resnet18"
    stride: int = 4
    width: int = 64
    out_dim: int = 64
    num_long_refs: int = 1
    num_short_refs: int = 2
    radius: int = 6
    roi_radius: int = 4
    roi_dilation: int = 4
    scale: float = 1.0
    dropout_p: float = 1.0
    huber_delta: float = 0.1
    stages: int = 4
    normalise: bool = False

    def validate(self):
        self._positive("width", "out_dim", "roi_dilation", "scale", "huber_delta")
        if self.num_short_refs < 0 or self.num_long_refs < 0 or self.num_short_refs + self.num_long_refs < 1:
            raise ValueError(
                f"MASTConfig needs >= 1 reference, got num_long_refs={self.num_long_refs}, num_short_refs={self.num_short_refs}"
            )
        if self.radius < 0 or self.roi_radius < 0:
            raise ValueError(f"MASTConfig radius and roi_radius must be >= 0, got {self.radius}, {self.roi_radius}")
        if not 0.0 <= self.dropout_p <= 1.0:
            raise ValueError(f"MASTConfig.dropout_p must be in [0, 1], got {self.dropout_p}")


# Training presets (densecorr.training.preset(name, preset)): TrainConfig fields over its defaults.
# "paper": the paper's setting (its data at 256 px; clip gaps chosen for DAVIS' 24 fps);
# "cpu": a narrow ResNet-18 (width 16) on 64 x 64 crops of the native 256p frames (objects at
# the scale they have when evaluated at 240p), a few hundred steps on 2 cores.
PRESETS = {
    # Lai et al. 2020: 256 x 256 crops, Adam (0.9, 0.999) 1e-3, halved at 0.4M/0.6M/0.8M steps, batch 24.
    "paper": dict(model_config={}, crop=(256, 256), gaps=(1, 2, 3), batch_size=24, lr=1e-3, schedule="step",
                  milestones=(400_000, 600_000, 800_000), gamma=0.5, steps=1_000_000),
    # The shipped default (densecorr/assets/default.pt), 4000 cosine steps: a shallow trunk at
    # stride 4 keeps small objects' own features; features L2-normalised at temperature 0.05, as
    # at test time.
    "cpu": dict(model_config={"width": 16, "out_dim": 32, "stride": 4, "stages": 1, "radius": 6, "roi_radius": 3,
                              "roi_dilation": 2, "normalise": True, "scale": 20.0},
                gaps=(1, 2, 3), lr=1e-3, steps=4000, schedule="cosine", resize=None, crop=(64, 64), batch_size=4, ckpt_every=50, eval_max_frames=12),
}


@register_model("mast")
class MAST(CorrespondenceModel):
    """Lab reconstruction from a multi-reference memory. Clip (B, long + short + 1, 3, H, W):
    long-term references first, then short-term references, target last."""

    Config = MASTConfig

    def __init__(self, config: MASTConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=3,
                                       stages=config.stages)
        r = config.roi_radius
        d = torch.arange(-r, r + 1, dtype=torch.float32) * config.roi_dilation
        dy, dx = torch.meshgrid(d, d, indexing="ij")  # row-major window order, as the ops
        self.register_buffer("roi_offsets", torch.stack([dx.flatten(), dy.flatten()], 1), persistent=False)

    @property
    def clip_length(self) -> int:
        return self.config.num_long_refs + self.config.num_short_refs + 1

    @property
    def stride(self) -> int:
        return self.config.stride

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> (B, out_dim, H / 4, W / 4), from the full Lab."""
        self.check_frames(frames)
        return self.backbone(normalise_lab(rgb_to_lab(frames)))

    def weights(self):
        return {"reconstruction": 1.0}

    def drop_channel(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lab (B, T, 3, H, W) normalised -> (one of a/b zeroed per clip (prob dropout_p), x 3/2;
        target mask (B, 3): the channels to reconstruct -- the dropped one, or all three for a
        clip without dropout)."""
        b = lab.shape[0]
        dropped = torch.rand(b, device=lab.device) < self.config.dropout_p
        channel = torch.randint(1, 3, (b,), device=lab.device)
        keep = torch.ones(b, 3, device=lab.device, dtype=lab.dtype)
        keep[torch.arange(b, device=lab.device), channel] = 0.0
        target = torch.where(dropped.unsqueeze(1), 1.0 - keep, torch.ones_like(keep))
        keep = torch.where(dropped.unsqueeze(1), keep * 1.5, torch.ones_like(keep))
        return lab * keep.view(b, 1, 3, 1, 1), target

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Huber loss of pred vs target (B, 3, h, w), averaged over the channels marked in
        `channels` (B, 3) (the dropped channel: `drop_channel`'s mask)."""
        per = F.smooth_l1_loss(pred, target, beta=self.config.huber_delta, reduction="none").mean(dim=(2, 3))
        return (per * channels).sum() / channels.sum().clamp_min(1.0)

    def localise(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """ROI localisation of a long-term reference.

        q: target features (B, D, h, w); k: reference features (B, D, h, w); v: reference
        colours (B, C, h, w). Returns k and v resampled at each target pixel's ROI centre.
        """
        c = self.config
        b, _, h, w = q.shape
        attn = self.ops.local_affinity(q, k, c.roi_radius, dilation=c.roi_dilation, scale=c.scale)
        offset = torch.einsum("bphw,pc->bchw", attn, self.roi_offsets.to(attn))  # (B, 2, h, w) in cells
        ys, xs = torch.meshgrid(
            torch.arange(h, device=q.device, dtype=q.dtype), torch.arange(w, device=q.device, dtype=q.dtype), indexing="ij"
        )
        x = xs + offset[:, 0]
        y = ys + offset[:, 1]
        # Cell centres -> grid_sample's normalised coordinates (align_corners=False).
        grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
        warp = lambda t: F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return warp(k), warp(v)

    def loss_terms(self, clip):
        c = self.config
        b, t = clip.shape[:2]
        lab = normalise_lab(rgb_to_lab(clip))  # (B, T, 3, H, W)
        dropped, channels = self.drop_channel(lab)
        feats = self.backbone(dropped.flatten(0, 1))
        feats = feats.view(b, t, *feats.shape[1:])
        if c.normalise:
            feats = F.normalize(feats, dim=2)
        colours = area_downsample(lab.flatten(0, 1), self.stride).view(b, t, 3, *feats.shape[-2:])
        q = feats[:, -1]
        keys, values = [], []
        for i in range(c.num_long_refs):
            k, v = self.localise(q, feats[:, i], colours[:, i])
            keys.append(k)
            values.append(v)
        for i in range(c.num_long_refs, t - 1):
            keys.append(feats[:, i])
            values.append(colours[:, i])
        pred = self.ops.local_attention(q, torch.stack(keys, 1), torch.stack(values, 1), c.radius, scale=c.scale)
        return {"reconstruction": self.reconstruction_loss(pred, colours[:, -1], channels)}
