"""Vid.Color: tracking emerges by colorizing videos (Vondrick et al., ECCV 2018).

The network sees grayscale frames. The target frame's colours are predicted by pointing
to the reference frames: with features f, the target pixel j gets the colour distribution
    y_j = sum_i softmax_i(f_j . f_i / T) c_i
over all pixels i of the references, c_i the one-hot of reference pixel i's colour cluster
(Lab a/b quantised into 16 k-means clusters). The loss is the cross-entropy of y against the
target's clusters. The pointing is one `global_attention` call over all references.

Temperature and normalisation. The paper points with unnormalised features at T = 1 in
training (0.5 at test, in the reimplementations); the "paper" preset keeps that. At init a
random trunk's unnormalised features have large, uneven norms, so at T = 0.5 the pointing is
near one-hot on a random reference pixel, and its cross-entropy stays above that of uniform
attention (2.2 vs 1.26 after 500 CPU steps): nothing is learned. The default here (and the CPU
preset) L2-normalises the features and points at T = 0.05, as the propagation protocols do at
test time: the attention starts spread over similar pixels and sharpens as the features learn
(J&F 0.28 -> 0.42 in 500 CPU steps; 0.53 with a shallow stride-4 trunk, the CPU preset's).

Differences from the paper, on purpose: a ResNet-18 at stride 8 (the paper adds a 3D-conv
head over the clip; here each frame is embedded alone so that `embed` is per frame); no
pretraining; normalised features at T = 0.05 by default (above). The colour clusters default to a fixed fit on DAVIS-2016 train
(`colour.DEFAULT_AB_CENTROIDS`); call `fit_colour_clusters(frames)` to fit them to your data.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .backbones import build_backbone
from .colour import ColourQuantiser, rgb_to_gray, rgb_to_lab
from .common import area_downsample, tokens
from .registry import CorrespondenceModel, ModelConfig, register_model

# The copied distribution is exactly 0 for a cluster no reference pixel has; the floor keeps
# the cross-entropy finite there.
_PROB_FLOOR = 1e-8


@dataclasses.dataclass
class VidColorConfig(ModelConfig):
    """arch/stride/width/out_dim/stages: the backbone; num_refs reference frames + 1 target per
    clip; num_clusters colour clusters; temperature T of the pointing softmax (logits / T);
    normalise: L2-normalise the features before pointing (cosine similarity)."""

    arch: str = "resnet18"
    stride: int = 8
    width: int = 64
    out_dim: int | None = 64
    stages: int = 4
    num_refs: int = 3
    num_clusters: int = 16
    temperature: float = 0.05
    normalise: bool = True

    def validate(self):
        self._positive("num_refs", "num_clusters", "temperature", "width")


# Training presets (densecorr.training.preset(name, preset)): TrainConfig fields over its defaults.
# "paper": the paper's setting (its data at 256 px; clip gaps chosen for DAVIS' 24 fps);
# "cpu": a narrow ResNet-18 (width 16) on 64 x 64 crops of the native 256p frames (objects at
# the scale they have when evaluated at 240p), a few hundred steps on 2 cores.
PRESETS = {
    # Vondrick et al. 2018: 3 reference frames + 1 target, 256 x 256 grayscale input, Adam 1e-3, batch 32.
    # The paper points with unnormalised features at temperature 1 in training.
    "paper": dict(model_config={"normalise": False, "temperature": 1.0}, crop=(256, 256), gaps=(3,), batch_size=32,
                  lr=1e-3, steps=400_000),
    # Normalised features at T = 0.05 (see the module docstring) on the default checkpoint's shallow
    # stride-4 trunk; 2000 cosine steps (~10 min on 2 cores).
    "cpu": dict(model_config={"width": 16, "out_dim": 32, "stride": 4, "stages": 1, "normalise": True,
                              "temperature": 0.05},
                gaps=(3,), lr=1e-3, steps=2000, schedule="cosine", resize=None, crop=(64, 64), batch_size=4,
                ckpt_every=100, eval_max_frames=12),
}


@register_model("vidcolor")
class VidColor(CorrespondenceModel):
    """Colourisation by pointing. Clip (B, num_refs + 1, 3, H, W): references first, target last."""

    Config = VidColorConfig

    def __init__(self, config: VidColorConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=1,
                                       stages=config.stages)
        self.quantiser = ColourQuantiser(config.num_clusters)

    @property
    def clip_length(self) -> int:
        return self.config.num_refs + 1

    @property
    def stride(self) -> int:
        return self.config.stride

    def fit_colour_clusters(self, frames: torch.Tensor, **kwargs) -> "VidColor":
        """Fit the colour clusters to training frames (..., 3, H, W) RGB in [0, 1] (kwargs: see ColourQuantiser.fit)."""
        self.quantiser.fit(frames, **kwargs)
        return self

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> (B, D, H / stride, W / stride), from the grayscale
        image (L2-normalised when config.normalise)."""
        self.check_frames(frames)
        feats = self.backbone(rgb_to_gray(frames))
        return F.normalize(feats, dim=1) if self.config.normalise else feats

    def weights(self):
        return {"colour": 1.0}

    def pointing(self, clip: torch.Tensor):
        """clip (B, R + 1, 3, H, W) -> (q (B, hw, D) target pixels, k (B, R*hw, D) reference
        pixels, labels (B, R + 1, h, w) colour clusters); the pointing is softmax(q k^T / T)."""
        cfg = self.config
        b, t, _, h, w = clip.shape
        feats = self.backbone(rgb_to_gray(clip.flatten(0, 1)))  # (B*T, D, h, w)
        if cfg.normalise:
            feats = F.normalize(feats, dim=1)
        d, fh, fw = feats.shape[1:]
        feats = feats.view(b, t, d, fh, fw)
        ab = area_downsample(rgb_to_lab(clip.flatten(0, 1))[:, 1:], self.stride)  # (B*T, 2, h, w)
        labels = self.quantiser(ab).view(b, t, fh, fw)
        refs = cfg.num_refs
        q = tokens(feats[:, -1])  # (B, hw, D)
        k = feats[:, :refs].permute(0, 1, 3, 4, 2).reshape(b, refs * fh * fw, d)  # (B, R*hw, D)
        return q, k, labels

    def loss_terms(self, clip):
        cfg = self.config
        b = clip.shape[0]
        q, k, labels = self.pointing(clip)
        refs = cfg.num_refs
        v = F.one_hot(labels[:, :refs].reshape(b, -1), cfg.num_clusters).to(q.dtype)  # (B, R*hw, K)
        prob = self.ops.global_attention(q, k, v, scale=1.0 / cfg.temperature)  # (B, hw, K)
        logp = torch.log(prob.clamp_min(_PROB_FLOOR))
        colour = F.nll_loss(logp.reshape(-1, cfg.num_clusters), labels[:, -1].reshape(-1))
        return {"colour": colour}
