"""UVC: joint-task self-supervised learning for temporal correspondence (Li et al., NeurIPS 2019).

A patch of frame 0 is localised in frame 1 (region level), then matched pixel by pixel inside
the found box (fine level), both through one kind of affinity on the same features
(ResNet-18 at stride 8 on the grayscale image, L2-normalised, temperature T):
  1. region: `project_coords` maps each patch cell to its expected (x, y) in frame 1;
     `bbox_from_coords` gives the box centre (mean) -- the box keeps the patch's size, as in
     UVC's code (`crop_size_from_coords=True` uses the coordinates' spread instead); a
     differentiable crop (affine_grid / grid_sample) cuts frame 1's features, colour
     features and Lab image to the box;
  2. fine: `global_attention` from the crop's cells to the patch's cells copies the patch's
     colour features (a small Lab encoder), and a decoder turns them into the crop's Lab
     image: L1 reconstruction loss;
  3. orthogonal (cycle) regularisation, through chains of `global_attention`: the colour
     features copied the other way (crop -> patch) must decode to the patch's Lab (colour
     cycle), and the patch's cell coordinates sent to the crop and back must return
     unchanged (coordinate cycle);
  4. concentration regularisation: within each window of w x w neighbouring cells, the
     positions their affinity projects to (`project_coords`, both directions between patch
     and crop, normalised to [-1, 1]) should stay close to their mean (their variance).
Weights follow UVC's code (colour and coordinate cycles 0.1). Differences, on purpose: the
colour encoder/decoder are trained jointly (UVC loads a frozen pretrained pair; nothing is
downloaded here); the patch is cut from frame 0's feature map at whole cells rather than
re-encoded from an image crop.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .affinity import cell_grid
from .backbones import build_backbone
from .colour import normalise_lab, rgb_to_lab
from .common import image, tokens
from .registry import CorrespondenceModel, ModelConfig, register_model


@dataclasses.dataclass
class UVCConfig(ModelConfig):
    """Backbone (ResNet-18 at stride 8 on the L channel; out_dim None = its 8 * width
    channels); colour_dim channels of the colour encoder/decoder; patch_scale: patch side /
    frame side; temperature of all softmaxes; concentration_window (cells); loss weights."""

    arch: str = "resnet18"
    stride: int = 8
    width: int = 64
    out_dim: int | None = None
    colour_dim: int = 64
    patch_scale: float = 0.5
    temperature: float = 0.05
    crop_size_from_coords: bool = False
    concentration_window: int = 4
    reconstruction_weight: float = 1.0
    colour_cycle_weight: float = 0.1
    coord_cycle_weight: float = 0.1
    concentration_weight: float = 1.0

    def validate(self):
        self._positive("width", "colour_dim", "temperature", "concentration_window")
        if not 0 < self.patch_scale <= 1:
            raise ValueError(f"UVCConfig.patch_scale must be in (0, 1], got {self.patch_scale}")


def _colour_encoder(dim: int, stride: int) -> nn.Sequential:
    """Lab (B, 3, H, W) -> (B, dim, H / stride, W / stride): stride-2 convs."""
    layers, cin = [], 3
    steps = stride.bit_length() - 1
    for i in range(steps):
        cout = dim if i == steps - 1 else max(dim // 2 ** (steps - 1 - i), 8)
        layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU(inplace=True)]
        cin = cout
    layers.append(nn.Conv2d(cin, dim, 3, 1, 1))
    return nn.Sequential(*layers)


def _colour_decoder(dim: int, stride: int) -> nn.Sequential:
    """(B, dim, h, w) -> Lab (B, 3, h * stride, w * stride): upsample x2 + conv per step."""
    layers, cin = [nn.Conv2d(dim, dim, 3, 1, 1), nn.ReLU(inplace=True)], dim
    for _ in range(stride.bit_length() - 1):
        cout = max(cin // 2, 8)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True)]
        cin = cout
    layers.append(nn.Conv2d(cin, 3, 3, 1, 1))
    return nn.Sequential(*layers)


# Training presets (densecorr.training.preset(name, preset)): TrainConfig fields over its defaults.
# "paper": the paper's setting (its data at 256 px; clip gaps chosen for DAVIS' 24 fps);
# "cpu": a narrow ResNet-18 (width 16) on 64 x 64 crops of the native 256p frames (objects at
# the scale they have when evaluated at 240p), a few hundred steps on 2 cores.
PRESETS = {
    # Li et al. 2019: frame pairs, 256 x 256, Adam 1e-4, batch 16.
    "paper": dict(model_config={}, crop=(256, 256), gaps=(1, 2, 3, 4, 5), batch_size=16, lr=1e-4, steps=200_000),
    "cpu": dict(model_config={"width": 16, "colour_dim": 16}, gaps=(1, 2, 3, 4, 5), lr=1e-4, steps=500, resize=None, crop=(64, 64), batch_size=4, ckpt_every=50, eval_max_frames=12),
}


@register_model("uvc")
class UVC(CorrespondenceModel):
    """Region localisation + fine matching. Clip (B, 2, 3, H, W): frame 0 holds the patch."""

    Config = UVCConfig

    def __init__(self, config: UVCConfig):
        super().__init__(config)
        if config.stride & (config.stride - 1):
            raise ValueError(f"UVCConfig.stride must be a power of two, got {config.stride}")
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=1)
        self.colour_encoder = _colour_encoder(config.colour_dim, config.stride)
        self.decoder = _colour_decoder(config.colour_dim, config.stride)

    @property
    def clip_length(self) -> int:
        return 2

    @property
    def stride(self) -> int:
        return self.config.stride

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> L2-normalised features (B, D, H / stride, W / stride)."""
        self.check_frames(frames)
        return self._embed_lab(normalise_lab(rgb_to_lab(frames)))

    def _embed_lab(self, lab):
        return F.normalize(self.backbone(lab[:, :1]), dim=1)

    def weights(self):
        c = self.config
        return {
            "reconstruction": c.reconstruction_weight,
            "colour_cycle": c.colour_cycle_weight,
            "coord_cycle": c.coord_cycle_weight,
            "concentration": c.concentration_weight,
        }

    def concentration(self, coords: torch.Tensor, h: int, w: int, size_h: int, size_w: int) -> torch.Tensor:
        """Mean variance, within w x w windows of cells, of their projected positions.

        coords (B, h*w, 2) (x, y) in cells of a size_h x size_w map -> scalar (units of the
        map normalised to [-1, 1]).
        """
        scale = coords.new_tensor([2.0 / size_w, 2.0 / size_h])
        pos = image(coords * scale, h, w)  # (B, 2, h, w)
        win = min(self.config.concentration_window, h, w)
        mean = F.avg_pool2d(pos, win, win)
        mean_sq = F.avg_pool2d(pos**2, win, win)
        return (mean_sq - mean**2).sum(1).mean()

    def loss_terms(self, clip):
        c = self.config
        b = clip.shape[0]
        s = 1.0 / c.temperature
        lab = normalise_lab(rgb_to_lab(clip))  # (B, 2, 3, H, W)
        feats = self._embed_lab(lab.flatten(0, 1))
        colour = self.colour_encoder(lab.flatten(0, 1))
        d, h, w = feats.shape[1:]
        feats = feats.view(b, 2, d, h, w)
        colour = colour.view(b, 2, -1, h, w)
        ph, pw = max(1, round(h * c.patch_scale)), max(1, round(w * c.patch_scale))
        st = self.stride

        # The patch: a random whole-cell crop of frame 0 (features, colour features, Lab).
        ys = torch.randint(0, h - ph + 1, (b,)).tolist()
        xs = torch.randint(0, w - pw + 1, (b,)).tolist()
        fp = torch.stack([feats[i, 0, :, y : y + ph, x : x + pw] for i, (y, x) in enumerate(zip(ys, xs))])
        cp = torch.stack([colour[i, 0, :, y : y + ph, x : x + pw] for i, (y, x) in enumerate(zip(ys, xs))])
        lab_p = torch.stack(
            [lab[i, 0, :, y * st : (y + ph) * st, x * st : (x + pw) * st] for i, (y, x) in enumerate(zip(ys, xs))]
        )

        # Region level: where the patch went in frame 1, and a differentiable crop there.
        coords = self.ops.project_coords(fp, feats[:, 1], scale=s)  # (B, ph*pw, 2), frame-1 cells
        centre, size = self.ops.bbox_from_coords(coords)
        if not c.crop_size_from_coords:
            size = coords.new_tensor([pw, ph]).expand(b, 2)
        size = size.clamp_min(1.0)
        cx = (2 * centre[:, 0] + 1) / w - 1
        cy = (2 * centre[:, 1] + 1) / h - 1
        zero = torch.zeros_like(cx)
        theta = torch.stack(
            [torch.stack([size[:, 0] / w, zero, cx], 1), torch.stack([zero, size[:, 1] / h, cy], 1)], 1
        )

        def crop(x, oh, ow):
            grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
            return F.grid_sample(x, grid, align_corners=False)

        fc = F.normalize(crop(feats[:, 1], ph, pw), dim=1)
        cc = crop(colour[:, 1], ph, pw)
        lab_c = crop(lab[:, 1], ph * st, pw * st)

        # Fine level: colour features copied patch -> crop, decoded to the crop's Lab.
        copied = self.ops.global_attention(tokens(fc), tokens(fp), tokens(cp), scale=s)
        reconstruction = F.l1_loss(self.decoder(image(copied, ph, pw)), lab_c)
        # Orthogonal regularisation: the other direction (colour), and there and back (coordinates).
        copied_back = self.ops.global_attention(tokens(fp), tokens(fc), tokens(cc), scale=s)
        colour_cycle = F.l1_loss(self.decoder(image(copied_back, ph, pw)), lab_p)
        grid_p = cell_grid(ph, pw, fp).expand(b, -1, -1)
        grid_p = grid_p * grid_p.new_tensor([2.0 / pw, 2.0 / ph])  # normalised patch units
        there = self.ops.global_attention(tokens(fc), tokens(fp), grid_p, scale=s)
        back = self.ops.global_attention(tokens(fp), tokens(fc), there, scale=s)
        coord_cycle = F.l1_loss(back, grid_p)
        # Concentration of the fine affinity, both directions.
        to_crop = self.ops.project_coords(fp, fc, scale=s)
        to_patch = self.ops.project_coords(fc, fp, scale=s)
        concentration = self.concentration(to_crop, ph, pw, ph, pw) + self.concentration(to_patch, ph, pw, ph, pw)
        return {
            "reconstruction": reconstruction,
            "colour_cycle": colour_cycle,
            "coord_cycle": coord_cycle,
            "concentration": concentration,
        }
