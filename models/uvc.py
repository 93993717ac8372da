"""UVC: joint-task self-supervised learning for temporal correspondence (Li et al., NeurIPS 2019).

A patch of frame 0 is localised in frame 1 (region level), then matched pixel by pixel inside
the found box (fine level), both through one kind of affinity on the same features
(ResNet-18 on the grayscale image, L2-normalised, temperature T), as UVC's released code
(Liusifei/UVC, `track_match_v1.py` with its README's command):
  0. the patch: a separate image crop of frame 0 (side `patch_scale` of the frame, rotated
     by up to `patch_rotation` degrees, as UVC's 256 px crop of a 640 px frame rotated up to
     10 degrees), encoded on its own -- not cut from frame 0's feature map, whose cells see
     beyond the patch (and, with zero padding, code their absolute position);
  1. region: `project_coords` maps each patch cell to its expected (x, y) in frame 1's map;
     the box centre is their mean (`bbox_from_coords`); the box keeps the patch's size and
     stays inside the frame (UVC's `center2bbox`); a differentiable crop (affine_grid /
     grid_sample) cuts frame 1's features, colour features and Lab image to the box;
  2. fine: `global_attention` from the crop's cells to the patch's cells copies the patch's
     colour features (a small Lab encoder), and a decoder turns them into the crop's Lab
     image. Per clip, the L1 error of L, a and b weighted 1 / 10 / 10 (UVC's `L1_loss`);
  3. orthogonal (colour cycle) regularisation: the crop's colour features copied the other
     way (crop -> patch) must decode to the patch's Lab (weight 0.1, per clip as above).
     The coordinate cycle (the patch's coordinates there and back) is implemented but off
     (`coord_cycle_weight` 0), as in UVC's release (`--coord_switch 0`; its code for it
     does not run);
  4. concentration regularisation: within each `concentration_window` x
     `concentration_window` block of cells, the positions their affinity projects to (both
     directions between patch and crop, in [-1, 1] units of the other map) should stay close
     to their mean: the mean squared deviation over blocks, cells and the two coordinates,
     summed over the two directions (UVC's `ConcentrationSwitchLoss`), weight 0.3 (`--lc
     0.3`). The window is a fixed fraction of the patch -- UVC: 8 x 8 cells of a 32 x 32
     patch map -- so that a correct one-to-one mapping costs little (~0.012 there);
  5. clips whose reconstruction error (step 2) exceeds `drop_threshold` (2.5) are left out
     of the loss, except in the first "epoch" of each stage (UVC's `thr`).
Schedule (UVC's epochs, counted here in `epoch_steps` training steps by the `num_steps`
buffer, which each training forward advances and which checkpoints with the model; or set it
with `set_step`): the first `warmup_epochs` are a warm-up without localisation -- the patch
is matched to the same (rotated) crop of frame 1 -- with the concentration term from the
second epoch on; then the region + fine stage above.

Differences from the paper, on purpose: the colour encoder/decoder are trained jointly (UVC
loads a frozen pretrained pair; nothing is downloaded here); L2-normalised features at
temperature 0.05 (UVC: dot products at temperature 1); no ImageNet pretraining. Before this
version the patch was cut from frame 0's feature map, L/a/b were weighted equally, the
coordinate cycle was on, there was no warm-up, and the single 4 x 4 concentration window of
the CPU preset was the whole 4 x 4 patch (at weight 1, UVC-unnormalised): a one-to-one mapping
cost ~1.25 there, so the regulariser's minimum was every cell projecting to one point, and
J&F fell from 0.26 at init to 0.04 in 500 CPU steps.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .affinity import cell_grid
from .backbones import build_backbone
from .colour import normalise_lab, rgb_to_lab
from .common import image, tokens
from .registry import CorrespondenceModel, ModelConfig, register_model

# UVC's L1 weights of the L, a and b channels.
LAB_WEIGHTS = (1.0, 10.0, 10.0)


@dataclasses.dataclass
class UVCConfig(ModelConfig):
    """Backbone (ResNet-18 at `stride` on the L channel, its first `stages` residual stages;
    out_dim None = its own channels); colour_dim channels of the colour encoder/decoder;
    patch_scale: patch side / frame side; patch_rotation: max rotation of the patch crop
    (degrees); temperature of all softmaxes; crop_size_from_coords: box size from the
    coordinates' spread instead of the patch size; concentration_window (cells); loss weights;
    drop_threshold: clips whose reconstruction error is above it are left out (None: never);
    epoch_steps: training steps per UVC "epoch"; warmup_epochs: epochs of the warm-up stage."""

    arch: str = "resnet18"
    stride: int = 8
    width: int = 64
    out_dim: int | None = None
    stages: int = 4
    colour_dim: int = 64
    patch_scale: float = 0.4
    patch_rotation: float = 10.0
    temperature: float = 0.05
    crop_size_from_coords: bool = False
    concentration_window: int = 8
    reconstruction_weight: float = 1.0
    colour_cycle_weight: float = 0.1
    coord_cycle_weight: float = 0.0
    concentration_weight: float = 0.3
    drop_threshold: float | None = 2.5
    epoch_steps: int = 6000
    warmup_epochs: int = 10

    def validate(self):
        self._positive("width", "colour_dim", "temperature", "concentration_window", "epoch_steps")
        if not 0 < self.patch_scale <= 1:
            raise ValueError(f"UVCConfig.patch_scale must be in (0, 1], got {self.patch_scale}")
        if not 0 <= self.patch_rotation <= 90:
            raise ValueError(f"UVCConfig.patch_rotation must be in [0, 90] degrees, got {self.patch_rotation}")
        if self.warmup_epochs < 0:
            raise ValueError(f"UVCConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.drop_threshold is not None and not self.drop_threshold > 0:
            raise ValueError(f"UVCConfig.drop_threshold must be > 0 or None, got {self.drop_threshold}")


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
PRESETS = {
    # Li et al. 2019 / UVC's README: frame pairs, 30 epochs of Kinetics (~6000 steps of batch 40
    # each), the first 10 a warm-up, Adam 1e-4; 256 px patches (32 x 32 cells, concentration
    # window 8) of 640 px frames.
    "paper": dict(model_config={}, resize=640, crop=(640, 640), gaps=(1, 2, 3, 4, 5), batch_size=40, lr=1e-4,
                  steps=180_000),
    # The shipped default's trunk recipe (stride 4, one stage) on 64 x 64 crops: the patch is 32 px
    # (8 x 8 cells), the concentration window 2 x 2 cells (a quarter of the patch side, as UVC's
    # 8 of 32); 8000 steps in 30 "epochs" of 267 steps, 10 of them warm-up (dino 480p J&F 0.640;
    # 2000 steps in epochs of 67: 0.629; gaps 3/5/8: 0.627; init 0.456, Lab 0.624).
    "cpu": dict(model_config={"width": 16, "colour_dim": 16, "stride": 4, "stages": 1, "patch_scale": 0.5,
                              "concentration_window": 2, "epoch_steps": 267, "warmup_epochs": 10},
                gaps=(1, 2, 3, 4, 5), lr=1e-3, steps=8000, schedule="cosine", resize=None, crop=(64, 64),
                batch_size=4, ckpt_every=100, eval_max_frames=12),
}


@register_model("uvc")
class UVC(CorrespondenceModel):
    """Region localisation + fine matching. Clip (B, 2, 3, H, W): frame 0 holds the patch."""

    Config = UVCConfig

    def __init__(self, config: UVCConfig):
        super().__init__(config)
        if config.stride & (config.stride - 1):
            raise ValueError(f"UVCConfig.stride must be a power of two, got {config.stride}")
        self.backbone = build_backbone(config.arch, config.stride, config.width, config.out_dim, in_channels=1,
                                       stages=config.stages)
        self.colour_encoder = _colour_encoder(config.colour_dim, config.stride)
        self.decoder = _colour_decoder(config.colour_dim, config.stride)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def clip_length(self) -> int:
        return 2

    @property
    def stride(self) -> int:
        return self.config.stride

    # -- schedule -------------------------------------------------------------------------
    def set_step(self, step: int) -> "UVC":
        """Set the training step that the schedule (warm-up, thresholds) reads."""
        self.num_steps.fill_(int(step))
        return self

    @property
    def epoch(self) -> int:
        """UVC's epoch at the current step (num_steps // epoch_steps)."""
        return int(self.num_steps) // self.config.epoch_steps

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.config.warmup_epochs

    def threshold(self) -> float | None:
        """The per-clip drop threshold now: none in the first epoch and in the first two epochs
        after the warm-up (UVC's `thr`), else drop_threshold."""
        w = self.config.warmup_epochs
        e = self.epoch
        if e < 1 or w <= e < w + 2:
            return None
        return self.config.drop_threshold

    # -- features -------------------------------------------------------------------------
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> L2-normalised features (B, D, H / stride, W / stride)."""
        self.check_frames(frames)
        return self._embed_lab(normalise_lab(rgb_to_lab(frames)))

    def _embed_lab(self, lab):
        return F.normalize(self.backbone(lab[:, :1]), dim=1)

    def weights(self):
        c = self.config
        w = {"reconstruction": c.reconstruction_weight, "colour_cycle": c.colour_cycle_weight,
             "concentration": c.concentration_weight}
        if c.coord_cycle_weight > 0:
            w["coord_cycle"] = c.coord_cycle_weight
        return w

    def patch_theta(self, b: int, h: int, w: int, ph: int, pw: int, device, dtype) -> torch.Tensor:
        """Random rotated crop boxes (B, 2, 3) (affine_grid, normalised coordinates) of ph x pw
        pixels in an h x w frame, rotated by up to patch_rotation degrees and inside the frame."""
        angle = (torch.rand(b, device=device, dtype=dtype) * 2 - 1) * math.radians(self.config.patch_rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Half-extent (pixels) of the rotated box, so that its corners stay inside the frame.
        ext_x = (cos.abs() * pw + sin.abs() * ph) / 2
        ext_y = (sin.abs() * pw + cos.abs() * ph) / 2
        cx = ext_x + torch.rand(b, device=device, dtype=dtype) * (w - 2 * ext_x).clamp_min(0)
        cy = ext_y + torch.rand(b, device=device, dtype=dtype) * (h - 2 * ext_y).clamp_min(0)
        sx, sy = pw / w, ph / h
        # Output (u, v) in [-1, 1] -> input x = cx' + sx (cos u) - sy' (sin v) ... in normalised units,
        # with the rotation done in pixels (aspect-correct).
        row0 = torch.stack([cos * sx, -sin * ph / w, 2 * cx / w - 1], 1)
        row1 = torch.stack([sin * pw / h, cos * sy, 2 * cy / h - 1], 1)
        return torch.stack([row0, row1], 1)

    def crop_image(self, img: torch.Tensor, theta: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """img (B, C, H, W), theta (B, 2, 3) -> (B, C, oh, ow), bilinear, border padding."""
        grid = F.affine_grid(theta, [img.shape[0], img.shape[1], oh, ow], align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # -- losses ---------------------------------------------------------------------------
    @staticmethod
    def per_clip_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Lab (B, 3, H, W) pair -> (B,) mean absolute error of L, a, b weighted 1 / 10 / 10."""
        err = (pred - target).abs().mean(dim=(2, 3))  # (B, 3)
        return (err * err.new_tensor(LAB_WEIGHTS)).sum(1)

    def concentration(self, coords: torch.Tensor, h: int, w: int, size_h: int, size_w: int) -> torch.Tensor:
        """UVC's concentration of one direction: the mean squared deviation of the projected
        positions from their block mean, over window x window blocks of the querying map.

        coords (B, h*w, 2): (x, y) in cells of a size_h x size_w map, for the cells of an h x w
        map -> scalar, positions in [-1, 1] units of the size map (grid spacing 2 / size).
        """
        scale = coords.new_tensor([2.0 / size_w, 2.0 / size_h])
        pos = image(coords * scale, h, w)  # (B, 2, h, w)
        win = min(self.config.concentration_window, h, w)
        mean = F.avg_pool2d(pos, win, win)
        mean_sq = F.avg_pool2d(pos**2, win, win)
        return (mean_sq - mean**2).mean()

    def fine_terms(self, fp, cp, lab_p, fc, cc, lab_c, ph, pw):
        """The fine-level terms between patch (features fp, colour features cp, Lab lab_p) and
        crop (fc, cc, lab_c), all (B, C, ph, pw) / Lab at pixels -> per-clip reconstruction and
        colour cycle (B,), concentration and coordinate cycle (scalars)."""
        c = self.config
        b = fp.shape[0]
        s = 1.0 / c.temperature
        copied = self.ops.global_attention(tokens(fc), tokens(fp), tokens(cp), scale=s)
        reconstruction = self.per_clip_l1(self.decoder(image(copied, ph, pw)), lab_c)
        copied_back = self.ops.global_attention(tokens(fp), tokens(fc), tokens(cc), scale=s)
        colour_cycle = self.per_clip_l1(self.decoder(image(copied_back, ph, pw)), lab_p)
        to_crop = self.ops.project_coords(fp, fc, scale=s)
        to_patch = self.ops.project_coords(fc, fp, scale=s)
        concentration = self.concentration(to_crop, ph, pw, ph, pw) + self.concentration(to_patch, ph, pw, ph, pw)
        coord_cycle = None
        if c.coord_cycle_weight > 0:
            grid_p = cell_grid(ph, pw, fp).expand(b, -1, -1)
            grid_p = grid_p * grid_p.new_tensor([2.0 / pw, 2.0 / ph])  # normalised patch units
            there = self.ops.global_attention(tokens(fc), tokens(fp), grid_p, scale=s)
            back = self.ops.global_attention(tokens(fp), tokens(fc), there, scale=s)
            coord_cycle = F.l1_loss(back, grid_p)
        return reconstruction, colour_cycle, concentration, coord_cycle

    def loss_terms(self, clip):
        c = self.config
        b, _, _, h, w = clip.shape
        st = self.stride
        warm = self.warming_up
        thr = self.threshold()
        concentration_on = not (warm and self.epoch < 1)
        if self.training:
            self.num_steps += 1
        lab = normalise_lab(rgb_to_lab(clip))  # (B, 2, 3, H, W)
        fh, fw = h // st, w // st
        ph, pw = max(1, round(fh * c.patch_scale)), max(1, round(fw * c.patch_scale))

        # The patch: a rotated image crop of frame 0, encoded on its own.
        theta_p = self.patch_theta(b, h, w, ph * st, pw * st, clip.device, clip.dtype)
        lab_p = self.crop_image(lab[:, 0], theta_p, ph * st, pw * st)
        fp = self._embed_lab(lab_p)
        cp = self.colour_encoder(lab_p)

        if warm:
            # Warm-up: the same (rotated) crop of frame 1, encoded on its own; no localisation.
            lab_c = self.crop_image(lab[:, 1], theta_p, ph * st, pw * st)
            fc = self._embed_lab(lab_c)
            cc = self.colour_encoder(lab_c)
        else:
            feats1 = self._embed_lab(lab[:, 1])  # (B, D, fh, fw)
            colour1 = self.colour_encoder(lab[:, 1])
            # Region level: where the patch went in frame 1, and a differentiable crop there.
            coords = self.ops.project_coords(fp, feats1, scale=1.0 / c.temperature)  # frame-1 cells
            centre, size = self.ops.bbox_from_coords(coords)
            if not c.crop_size_from_coords:
                size = coords.new_tensor([pw, ph]).expand(b, 2)
            size = torch.minimum(size.clamp_min(1.0), coords.new_tensor([fw, fh]))
            # Keep the box inside the frame (UVC's center2bbox), in cell units.
            lo = size / 2 - 0.5
            hi = coords.new_tensor([fw, fh]) - size / 2 - 0.5
            centre = torch.maximum(torch.minimum(centre, hi), lo)
            cx = (2 * centre[:, 0] + 1) / fw - 1
            cy = (2 * centre[:, 1] + 1) / fh - 1
            zero = torch.zeros_like(cx)
            theta = torch.stack(
                [torch.stack([size[:, 0] / fw, zero, cx], 1), torch.stack([zero, size[:, 1] / fh, cy], 1)], 1
            )
            fc = F.normalize(self.crop_image(feats1, theta, ph, pw), dim=1)
            cc = self.crop_image(colour1, theta, ph, pw)
            lab_c = self.crop_image(lab[:, 1], theta, ph * st, pw * st)

        reconstruction, colour_cycle, concentration, coord_cycle = self.fine_terms(fp, cp, lab_p, fc, cc, lab_c, ph, pw)
        keep = torch.ones_like(reconstruction)
        if thr is not None:
            keep = (reconstruction.detach() <= thr).to(reconstruction.dtype)
        terms = {
            # Means over all clips, dropped ones counting 0 (UVC's `loss[loss > thr] = 0; mean`).
            "reconstruction": (reconstruction * keep).sum() / keep.numel(),
            "colour_cycle": (colour_cycle * keep).sum() / keep.numel(),
            "concentration": concentration if concentration_on else concentration * 0.0,
        }
        if coord_cycle is not None:
            terms["coord_cycle"] = coord_cycle
        return terms
