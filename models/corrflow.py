"""CorrFlow: self-supervised learning for video correspondence flow (Lai & Xie, BMVC 2019).

Each frame's colours are reconstructed from the previous frame's by copying through a local
window: with stride-4 features f, pixel j of frame t gets
    y_j = sum_{i in window(j)} softmax_i(f_j . f_i) c_i ,   radius 6,
one `local_attention` call, c the previous frame's colours as one-hot maps of 16 Lab
clusters. The loss is the cross-entropy of y against frame t's clusters.

- Information bottleneck on the input: random channel dropout (with probability 0.7 one or
  two RGB channels are zeroed in every frame of the clip, the rest rescaled) and brightness/contrast jitter, so the
  features cannot carry the colours being predicted.
- Scheduled sampling: along the clip the colours copied into frame t are, per pixel, the
  ground truth with probability p and the model's own prediction for frame t-1 otherwise; p
  decays linearly from 0.9 to 0.6 over `sampling_decay_steps` training steps. The step count
  is a buffer (`num_steps`), so it checkpoints with the model.
- Cycle: the last frame's prediction is propagated back to the first frame through the same
  local attention (predictions fed back), and compared with the first frame (weight 0.1).

The paper's trunk is kept as the default (ResNet-18 at stride 4, unnormalised features, scale
1, radius 6). The CPU preset (64 x 64 crops) used stride 8 and radius 4: a 9 x 9 window on
an 8 x 8 map lets every pixel see the whole crop, and J&F did not rise above init. It now
uses the shipped default's recipe instead (MAST's CPU preset): stride 4 with one residual
stage (`stages`, a small receptive field), L2-normalised features at temperature 0.05
(`normalise`, scale 20) and radius 6, with frame gaps of 5-12 instead of 1-2 (see PRESETS).
Until 2026-12-02 the channel dropout was drawn per frame, so a frame's dropped colour could be
read off its neighbours' inputs; CorrFlow's `dropout2d` drops the same channels in every frame
of the clip, and so does this model now (dino J&F at 480p 0.650 -> 0.685).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .backbones import build_backbone
from .colour import ColourQuantiser, rgb_to_lab
from .common import area_downsample, brightness_contrast_jitter, channel_dropout, normalise_rgb
from .registry import CorrespondenceModel, ModelConfig, register_model

# Copied distributions can be exactly 0 for a cluster absent from a window.
_PROB_FLOOR = 1e-8


@dataclasses.dataclass
class CorrFlowConfig(ModelConfig):
    """Backbone (ResNet-18 at stride 4, out_dim channels, the first `stages` residual stages);
    clip_length frames; local window radius (feature cells) and logit scale; normalise:
    L2-normalise the features (cosine similarity; `scale` is then 1 / temperature); num_clusters colour clusters; channel dropout
    probability and max channels; jitter amplitudes; scheduled sampling from
    sampling_start to sampling_end over sampling_decay_steps; cycle loss weight."""

    arch: str = "resnet18"
    stride: int = 4
    width: int = 64
    out_dim: int = 64
    stages: int = 4
    normalise: bool = False
    clip_length: int = 4
    radius: int = 6
    scale: float = 1.0
    num_clusters: int = 16
    dropout_p: float = 0.7
    dropout_max_channels: int = 2
    brightness: float = 0.1
    contrast: float = 0.1
    sampling_start: float = 0.9
    sampling_end: float = 0.6
    sampling_decay_steps: int = 100_000
    cycle_weight: float = 0.1

    def validate(self):
        self._positive("width", "out_dim", "num_clusters", "sampling_decay_steps", "scale")
        if self.clip_length < 2:
            raise ValueError(f"CorrFlowConfig.clip_length must be >= 2, got {self.clip_length}")
        if self.radius < 0:
            raise ValueError(f"CorrFlowConfig.radius must be >= 0, got {self.radius}")
        for name in ("dropout_p", "sampling_start", "sampling_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CorrFlowConfig.{name} must be in [0, 1], got {getattr(self, name)}")


# Training presets (densecorr.training.preset(name, preset)): TrainConfig fields over its defaults.
# "paper": the paper's setting (its data at 256 px; clip gaps chosen for DAVIS' 24 fps);
# "cpu": a narrow ResNet-18 (width 16) on 64 x 64 crops of the native 256p frames (objects at
# the scale they have when evaluated at 240p), a few hundred steps on 2 cores.
PRESETS = {
    # Lai & Xie 2019: 256 x 256 crops, Adam 1e-3 halved on a schedule, batch 12.
    "paper": dict(model_config={}, crop=(256, 256), gaps=(1, 2), batch_size=12, lr=1e-3, schedule="step",
                  milestones=(100_000, 200_000), gamma=0.5, steps=300_000),
    # The shipped default's trunk recipe (MAST's CPU preset; see the module docstring), 4000
    # cosine steps. Frame gaps 5, 8 and 12 (the paper's 1-2 are for 256 px crops): in a 64 px
    # crop of a 256p frame, neighbouring frames move less than one stride-4 cell, so copying
    # from the same place is a shortcut. J&F under dino at 480p (init 0.616, Lab 0.624), with
    # channels dropped per frame: gaps (1, 2) 2000 steps 0.615, (3, 5, 8) 2000 steps 0.635,
    # (5, 8, 12) 4000 steps 0.648-0.650, (6, 10, 14) 4000 steps 0.644; dropped per clip, as
    # CorrFlow's code, (5, 8, 12) 4000 steps: 0.685 (the shipped corrflow.pt).
    "cpu": dict(model_config={"width": 16, "out_dim": 32, "stride": 4, "stages": 1, "normalise": True, "scale": 20.0,
                              "radius": 6},
                gaps=(5, 8, 12), lr=1e-3, steps=4000, schedule="cosine", resize=None, crop=(64, 64), batch_size=4,
                ckpt_every=100, eval_max_frames=12),
}


@register_model("corrflow")
class CorrFlow(CorrespondenceModel):
    """Recursive local colour copying with scheduled sampling. Clip (B, clip_length, 3, H, W)."""

    Config = CorrFlowConfig

    def __init__(self, config: CorrFlowConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=3,
                                       stages=config.stages)
        self.quantiser = ColourQuantiser(config.num_clusters)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def clip_length(self) -> int:
        return self.config.clip_length

    @property
    def stride(self) -> int:
        return self.config.stride

    def fit_colour_clusters(self, frames: torch.Tensor, **kwargs) -> "CorrFlow":
        """Fit the colour clusters to training frames (..., 3, H, W) RGB in [0, 1]."""
        self.quantiser.fit(frames, **kwargs)
        return self

    def sampling_probability(self) -> float:
        """Probability of copying ground-truth (rather than predicted) colours at this step."""
        c = self.config
        frac = min(int(self.num_steps) / c.sampling_decay_steps, 1.0)
        return c.sampling_start + (c.sampling_end - c.sampling_start) * frac

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> (B, out_dim, H / 4, W / 4); no augmentation."""
        self.check_frames(frames)
        feats = self.backbone(normalise_rgb(frames))
        return F.normalize(feats, dim=1) if self.config.normalise else feats

    def weights(self):
        return {"colour": 1.0, "cycle": self.config.cycle_weight}

    def _copy(self, q, k, colours):
        c = self.config
        return self.ops.local_attention(q, k, colours, c.radius, scale=c.scale)

    def loss_terms(self, clip):
        c = self.config
        b, t, _, h, w = clip.shape
        frames = clip.flatten(0, 1)
        noisy = normalise_rgb(brightness_contrast_jitter(frames, c.brightness, c.contrast))
        # the same channels dropped in every frame of a clip, as CorrFlow's dropout2d
        noisy = channel_dropout(noisy.view(b, t, *noisy.shape[1:]), c.dropout_p, c.dropout_max_channels).flatten(0, 1)
        feats = self.backbone(noisy)
        if c.normalise:
            feats = F.normalize(feats, dim=1)
        feats = feats.view(b, t, *feats.shape[1:])
        ab = area_downsample(rgb_to_lab(frames)[:, 1:], self.stride)
        labels = self.quantiser(ab).view(b, t, *ab.shape[-2:])  # (B, T, h, w)
        truth = F.one_hot(labels, c.num_clusters).movedim(-1, 2).to(feats.dtype)  # (B, T, K, h, w)

        p = self.sampling_probability()
        if self.training:
            self.num_steps += 1

        def nll(prob, target):
            return F.nll_loss(torch.log(prob.clamp_min(_PROB_FLOOR)), target)

        # Forward along the clip; the colours fed to the next step mix truth and prediction.
        colours = truth[:, 0]
        colour_terms = []
        for i in range(1, t):
            prob = self._copy(feats[:, i], feats[:, i - 1], colours)  # (B, K, h, w)
            colour_terms.append(nll(prob, labels[:, i]))
            use_truth = (torch.rand(b, 1, *prob.shape[-2:], device=prob.device) < p).to(prob.dtype)
            colours = use_truth * truth[:, i] + (1 - use_truth) * prob
        # Cycle back from the last frame's prediction to the first frame, predictions only.
        back = prob
        for i in range(t - 2, -1, -1):
            back = self._copy(feats[:, i], feats[:, i + 1], back)
        return {"colour": torch.stack(colour_terms).mean(), "cycle": nll(back, labels[:, 0])}
