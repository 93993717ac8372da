"""Tests of the defects that kept methods from learning (issue 13), one group per model; each
fails on the code before the fix.

UVC: concentration window / normalisation, patch from a separate image crop, L/a/b weights and
the per-clip drop threshold, coordinate cycle off, the warm-up stage. CycleTime: the initial
patch is a separately encoded, rotated image crop at a high-motion window. Vid.Color: the
pointing is not one-hot at init. MAST: only the dropped channel is reconstructed. CorrFlow:
the CPU preset is the default's trunk recipe. CRW: patch nodes, walks, reflect padding.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import densecorr.models as dm
from densecorr.models.affinity import cell_grid
from densecorr.models.colour import normalise_lab, rgb_to_lab
from densecorr.models.common import normalise_rgb
from densecorr.training import preset

from test_models import clip_from_frames


def cpu_model(name: str, **overrides) -> dm.CorrespondenceModel:
    return dm.create(name, **{**preset(name, "cpu").model_config, **overrides})


def sampled_pixels(theta: torch.Tensor, h: int, w: int, oh: int, ow: int) -> torch.Tensor:
    """(B, H, W) bool: the pixels that bilinear sampling with affine `theta` (oh x ow output) reads."""
    grid = F.affine_grid(theta, [theta.shape[0], 1, oh, ow], align_corners=False)
    x = ((grid[..., 0] + 1) * w - 1) / 2
    y = ((grid[..., 1] + 1) * h - 1) / 2
    mask = torch.zeros(theta.shape[0], h, w, dtype=torch.bool)
    for dy in (0, 1):
        for dx in (0, 1):
            yi = (y.floor() + dy).long().clamp(0, h - 1)
            xi = (x.floor() + dx).long().clamp(0, w - 1)
            for i in range(theta.shape[0]):
                mask[i, yi[i].flatten(), xi[i].flatten()] = True
    return mask


# ------------------------------------------------------------------------------ UVC
@pytest.mark.parametrize("kind", ["cpu", "paper"])
def test_uvc_concentration_costs_little_for_a_one_to_one_mapping(kind):
    """A correct one-to-one mapping between patch and crop must cost far less in weighted
    concentration than what a collapse (every cell copying one colour) loses in
    reconstruction; otherwise the regulariser's minimum is the collapse (the old CPU preset:
    the 4 x 4 window was the whole 4 x 4 patch, ~1.25 at weight 1)."""
    cfg = preset("uvc", kind)
    model = dm.create("uvc", **cfg.model_config)
    c = model.config
    fh = cfg.crop[0] // c.stride
    ph = max(1, round(fh * c.patch_scale))
    one_to_one = cell_grid(ph, ph, torch.zeros(())).unsqueeze(0)  # (1, ph*ph, 2) cell i -> cell i
    collapse = torch.full_like(one_to_one, ph / 2)
    cost = c.concentration_weight * 2 * model.concentration(one_to_one, ph, ph, ph, ph)  # both directions
    assert model.concentration(collapse, ph, ph, ph, ph) < 1e-6
    # What a collapse costs in reconstruction: the L/a/b-weighted L1 of real crops to their median colour.
    frames = clip_from_frames(1, size=ph * c.stride, batch=2)[:, 0]
    lab = normalise_lab(rgb_to_lab(frames))
    flat = lab.median(dim=-1, keepdim=True).values.median(dim=-2, keepdim=True).values.expand_as(lab)
    collapse_l1 = model.per_clip_l1(flat, lab).mean()
    assert cost < 0.1 * collapse_l1, (kind, cost.item(), collapse_l1.item())


def test_uvc_concentration_is_normalised_as_uvc():
    """UVC's setting (8 x 8 windows on a 32 x 32 map, coordinates in [-1, 1], mean over the two
    coordinates): a one-to-one mapping costs (64 - 1) / 12 * (2 / 32)^2 per direction."""
    model = dm.create("uvc", width=8, concentration_window=8)
    coords = cell_grid(32, 32, torch.zeros(())).unsqueeze(0)
    expected = (64 - 1) / 12 * (2 / 32) ** 2
    assert model.concentration(coords, 32, 32, 32, 32).item() == pytest.approx(expected, rel=1e-4)
    assert 0.3 * 2 * expected == pytest.approx(0.0123, abs=1e-4)  # "about 0.012"


def _uvc_loss(model, clip, seed):
    torch.manual_seed(seed)
    return {k: v.item() for k, v in model(clip).items()}


@pytest.mark.parametrize("stage", ["warmup", "localisation"])
def test_uvc_patch_is_a_separate_image_crop(stage):
    """The patch is an image crop of frame 0 encoded on its own: frame 0's pixels outside it
    change nothing (before, the patch was cut from frame 0's feature map, whose cells see
    beyond the patch)."""
    torch.manual_seed(0)
    model = dm.create("uvc", width=8, colour_dim=8, stride=8, patch_scale=0.5, patch_rotation=10.0,
                      warmup_epochs=1 if stage == "warmup" else 0, epoch_steps=5).eval()
    clip = clip_from_frames(2, size=64, batch=2)
    torch.manual_seed(3)
    ph = round(64 // 8 * 0.5) * 8
    theta = model.patch_theta(2, 64, 64, ph, ph, clip.device, clip.dtype)
    used = sampled_pixels(theta, 64, 64, ph, ph)
    assert 0.1 < used.float().mean() < 0.5  # a real crop, with room outside it
    other = clip.clone()
    noise = torch.rand(2, 3, 64, 64)
    other[:, 0] = torch.where(used.unsqueeze(1), clip[:, 0], noise)
    a, b = _uvc_loss(model, clip, 3), _uvc_loss(model, other, 3)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    # ...while pixels inside the patch do matter.
    inside = clip.clone()
    inside[:, 0] = torch.where(used.unsqueeze(1), noise, clip[:, 0])
    assert _uvc_loss(model, inside, 3)["colour_cycle"] != pytest.approx(a["colour_cycle"], rel=1e-3)


def test_uvc_patch_rotation_range():
    model = dm.create("uvc", width=8, patch_rotation=10.0)
    torch.manual_seed(0)
    theta = model.patch_theta(2000, 64, 64, 32, 32, "cpu", torch.float32)
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0]).abs()
    assert angle.max() <= math.radians(10.0) + 1e-5 and angle.max() > math.radians(9.0)
    # Corners of the rotated box stay inside the frame.
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    pts = torch.einsum("bij,kj->bki", theta, corners)
    assert pts.abs().max() <= 1.0 + 1e-5


def test_uvc_lab_weights_are_1_10_10():
    target = torch.zeros(1, 3, 4, 4)
    for channel, weight in enumerate((1.0, 10.0, 10.0)):
        pred = target.clone()
        pred[:, channel] = 0.1
        assert dm.model_class("uvc").per_clip_l1(pred, target).item() == pytest.approx(0.1 * weight)


def test_uvc_drop_threshold_schedule_and_effect():
    """UVC's thr: none in the first epoch and the first two after the warm-up, else clips whose
    reconstruction error exceeds it are left out of the loss."""
    model = dm.create("uvc", width=8, colour_dim=8, epoch_steps=2, warmup_epochs=3, drop_threshold=2.5)
    expected = {0: None, 1: None, 2: 2.5, 4: 2.5, 6: None, 9: None, 10: 2.5, 30: 2.5}
    for step, thr in expected.items():
        assert model.set_step(step).threshold() == thr, step
    assert model.set_step(5).warming_up and not model.set_step(6).warming_up
    clip = clip_from_frames(2, size=64, batch=2)
    tiny = dm.create("uvc", width=8, colour_dim=8, epoch_steps=2, warmup_epochs=3, drop_threshold=1e-6).eval()
    dropped = _uvc_loss(tiny.set_step(4), clip, 0)
    kept = _uvc_loss(tiny.set_step(0), clip, 0)
    assert dropped["reconstruction"] == 0.0 and dropped["colour_cycle"] == 0.0
    assert kept["reconstruction"] > 0.1


def test_uvc_coordinate_cycle_off_and_concentration_delayed():
    model = dm.create("uvc", width=8, colour_dim=8, epoch_steps=2, warmup_epochs=2)
    assert model.config.coord_cycle_weight == 0.0 and "coord_cycle" not in model.weights()
    assert model.config.concentration_weight == 0.3
    on = dm.create("uvc", width=8, colour_dim=8, coord_cycle_weight=0.1)
    assert on.weights()["coord_cycle"] == 0.1
    clip = clip_from_frames(2, size=64, batch=1)
    model.eval()
    assert _uvc_loss(model.set_step(0), clip, 0)["concentration"] == 0.0  # first warm-up epoch: off
    assert _uvc_loss(model.set_step(2), clip, 0)["concentration"] > 0.0


def test_uvc_warm_up_matches_the_same_crop_then_localises():
    """Warm-up: the patch is matched to the same crop of frame 1 (frame 1 outside it does not
    matter); afterwards the patch is localised in the whole of frame 1."""
    torch.manual_seed(0)
    model = dm.create("uvc", width=8, colour_dim=8, patch_scale=0.5, epoch_steps=3, warmup_epochs=1)
    clip = clip_from_frames(2, size=64, batch=2)
    model.train()
    for _ in range(3):
        assert model.warming_up
        model(clip)
    assert int(model.num_steps) == 3 and not model.warming_up
    model.eval()
    torch.manual_seed(3)
    theta = model.patch_theta(2, 64, 64, 32, 32, clip.device, clip.dtype)
    used = sampled_pixels(theta, 64, 64, 32, 32)
    other = clip.clone()
    other[:, 1] = torch.where(used.unsqueeze(1), clip[:, 1], torch.rand(2, 3, 64, 64))
    model.set_step(0)
    assert _uvc_loss(model, clip, 3)["reconstruction"] == pytest.approx(_uvc_loss(model, other, 3)["reconstruction"], rel=1e-5)
    model.set_step(3)
    assert _uvc_loss(model, clip, 3)["reconstruction"] != pytest.approx(_uvc_loss(model, other, 3)["reconstruction"], rel=1e-4)


# ------------------------------------------------------------------------------ CycleTime
def test_cycletime_initial_patch_carries_no_position_code():
    """On a blank clip (one grey everywhere), the initial patch's features cannot depend on where
    it was cut: it is an image crop encoded on its own. (Cut from the frame's zero-padded feature
    map, as before, it carried the code of its place, which "stay in place" exploited.) Checked
    with zero padding, where the frame's features do code position; the CPU preset's reflect
    padding codes none on a blank frame."""
    torch.manual_seed(0)
    model = cpu_model("cycletime", padding="zeros").eval()
    frame = torch.full((1, 3, 64, 64), 0.5)
    thetas = [model.theta(torch.tensor([[tx, ty, a]])) for tx, ty, a in ((-0.6, -0.6, 0.0), (0.5, 0.1, 0.7))]
    p0, p1 = (model.encode_patch(frame, t) for t in thetas)
    torch.testing.assert_close(p0, p1)
    # The frame's own features do code position (the border), so a cut would have differed.
    feats = F.normalize(model.features(frame), dim=1)
    assert (feats[..., 0, 0] - feats[..., 4, 4]).abs().max() > 1e-3


def test_cycletime_patch_ignores_pixels_outside_its_crop():
    torch.manual_seed(0)
    model = cpu_model("cycletime").eval()
    frame = clip_from_frames(1, size=64, batch=1)[:, 0]
    theta = model.theta(torch.tensor([[0.2, -0.3, 0.5]]))
    side = model.stride * model.config.patch_cells
    used = sampled_pixels(theta, 64, 64, side, side)
    other = torch.where(used.unsqueeze(1), frame, torch.rand_like(frame))
    torch.testing.assert_close(model.encode_patch(frame, theta), model.encode_patch(other, theta))


def test_cycletime_initial_patch_rotation_and_motion_windows():
    """theta0: rotated up to 45 degrees; placed where the last two frames differ (TimeCycle)."""
    torch.manual_seed(0)
    model = cpu_model("cycletime", motion_windows=3, patch_scale=1 / 3)
    clip = torch.full((64, model.clip_length, 3, 128, 128), 0.5)
    clip[:, -1, :, 80:120, 8:48] = torch.rand(64, 3, 40, 40)  # motion only in the lower left
    theta = model.initial_theta(clip)
    s = model.config.patch_scale
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert angle.abs().max() <= math.radians(45) + 1e-5 and angle.abs().max() > math.radians(35)
    torch.testing.assert_close(theta[:, 0, 0] ** 2 + theta[:, 1, 0] ** 2, torch.full((64,), s * s))
    cx, cy = theta[:, 0, 2], theta[:, 1, 2]  # normalised centre; the moving box is x in [-0.9, -0.25], y in [0.25, 0.9]
    assert (cx < -0.1).all() and (cy > 0.1).all(), (cx, cy)
    anywhere = cpu_model("cycletime", motion_windows=0).initial_theta(clip)
    assert (anywhere[:, 0, 2] > 0.1).any()


def test_cycletime_future_gap_takes_the_patch_from_a_frame_after_the_clip():
    """TimeCycle (vlog_train.py) tracks a patch of a frame predDistance gaps after the clip, and
    picks its place by the motion between that frame and the next. With future_gap the clip is
    the tracked frames, the skipped ones, the patch frame and its motion partner."""
    model = cpu_model("cycletime", future_gap=2)
    t = model.config.clip_length
    assert model.clip_length == t + 2 + 1
    clip = torch.rand(2, model.clip_length, 3, 64, 64)

    def loss(c):
        torch.manual_seed(0)
        return model(c)["loss"]

    base = loss(clip)
    skipped = clip.clone()
    skipped[:, t - 1 : -2] = torch.rand_like(skipped[:, t - 1 : -2])  # the frames of the gap are not used
    torch.testing.assert_close(loss(skipped), base)
    for i in (0, t - 2, -2):  # tracked frames and the patch frame are
        moved = clip.clone()
        moved[:, i] = torch.rand_like(moved[:, i])
        assert not torch.allclose(loss(moved), base)
    # the last frame only places the patch: where it differs from the patch frame
    frames = torch.full((64, model.clip_length, 3, 128, 128), 0.5)
    frames[:, -2, :, 80:120, 8:48] = torch.rand(64, 3, 40, 40)
    placed = cpu_model("cycletime", future_gap=2, motion_windows=3, patch_scale=1 / 3, frame_size=128)
    theta = placed.initial_theta(frames[:, :-1], frames[:, -1])
    assert (theta[:, 0, 2] < -0.1).all() and (theta[:, 1, 2] > 0.1).all()
    with pytest.raises(ValueError, match="clips of 7 frames"):
        model(clip[:, :-1])


def test_cycletime_procrustes_reads_the_transform_from_the_affinity():
    """The CPU preset's transform is where the affinity's mass is (no free regressor that a
    constant theta can come from): expected positions made by a known transform give it back."""
    model = cpu_model("cycletime")
    assert model.config.transform == "procrustes" and model.config.inlier_weight == 0.0
    n, h = model.config.patch_cells, model.config.frame_size // 8
    theta = model.theta(torch.tensor([[0.2, -0.35, 0.6], [-0.4, 0.1, -0.3]]))
    lin = (torch.arange(n) * 2 + 1.0) / n - 1
    uy, ux = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([ux.flatten(), uy.flatten(), torch.ones(n * n)], 1)  # patch points, normalised
    xy = torch.einsum("bij,kj->bki", theta, pts)  # normalised frame coordinates
    cells = ((xy + 1) * h - 1) / 2  # -> cell units (x, y)
    torch.testing.assert_close(model.procrustes(cells, h, h), theta, atol=1e-5, rtol=0)
    # A constant affinity (all mass spread evenly) gives the frame's centre, unrotated.
    flat = torch.full((1, n * n, 2), (h - 1) / 2)
    centre = model.procrustes(flat, h, h)
    assert centre[0, :, 2].abs().max() < 1e-6


# ------------------------------------------------------------------------------ Vid.Color
def test_vidcolor_pointing_is_not_one_hot_at_init():
    """At init (BN in training mode, as in training), the pointing must spread over several
    reference pixels; unnormalised features at T = 0.5 gave ~0.97 on the best one."""
    torch.manual_seed(0)
    model = cpu_model("vidcolor").train()
    clip = clip_from_frames(model.clip_length, size=64)
    q, k, _ = model.pointing(clip)
    attn = model.ops.global_affinity(q, k, scale=1.0 / model.config.temperature)
    assert attn.max(-1).values.mean() < 0.5
    assert model.config.normalise and model.config.temperature == 0.05
    torch.testing.assert_close(model.embed(clip[:, 0]).norm(dim=1), torch.ones(2, 16, 16))


# ------------------------------------------------------------------------------ MAST
def test_mast_reconstructs_only_the_dropped_channel():
    torch.manual_seed(0)
    model = dm.create("mast", width=8, out_dim=16, radius=2, roi_radius=1, roi_dilation=2)
    lab = torch.rand(8, 4, 3, 16, 16)
    dropped, channels = model.drop_channel(lab)
    for i in range(8):
        zero = [c for c in range(3) if dropped[i, :, c].abs().max() == 0]
        assert len(zero) == 1 and zero[0] in (1, 2)
        assert channels[i].tolist() == [float(c == zero[0]) for c in range(3)]
    target = torch.rand(8, 3, 16, 16)
    pred = target.clone()
    pred[:, 0] += 1.0  # L wrong, and the kept a/b channel wrong
    for i in range(8):
        kept = 3 - int(channels[i].argmax()) if channels[i, 1:].any() else 1
        pred[i, kept] += 1.0
    assert model.reconstruction_loss(pred, target, channels).item() == 0.0
    pred2 = pred.clone()
    pred2[channels.bool().unsqueeze(-1).unsqueeze(-1).expand_as(pred2)] += 0.5
    assert model.reconstruction_loss(pred2, target, channels).item() > 0.0
    # Without dropout every channel is reconstructed.
    model.config.dropout_p = 0.0
    _, all_channels = model.drop_channel(lab)
    assert torch.equal(all_channels, torch.ones(8, 3))


# ------------------------------------------------------------------------------ CorrFlow
def test_corrflow_cpu_preset_is_the_default_trunk_recipe():
    """The old CPU preset (stride 8, radius 4 on 64 px crops) let the 9 x 9 window cover the whole
    8 x 8 map; the CPU preset is now the shipped default's recipe (stride 4, one stage,
    normalised, radius 6)."""
    cf, ma = preset("corrflow", "cpu").model_config, preset("mast", "cpu").model_config
    for key in ("stride", "stages", "normalise", "scale", "radius"):
        assert cf[key] == ma[key], key
    assert cf["stride"] == 4 and cf["stages"] == 1 and cf["normalise"] and cf["radius"] == 6
    model = cpu_model("corrflow")
    frames = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model.embed(frames).norm(dim=1), torch.ones(1, 16, 16))


def test_corrflow_drops_the_same_channels_in_every_frame_of_a_clip():
    """CorrFlow's dropout2d zeroes the same RGB channels in all frames it is given (a clip);
    dropping per frame would let a frame's colours be read off its neighbours' inputs."""
    from densecorr.models.common import channel_dropout

    torch.manual_seed(0)
    clips = torch.ones(64, 4, 3, 2, 2)
    out = channel_dropout(clips, p=0.7, max_drop=2)
    scale = out[..., 0, 0]  # (B, T, C): 0 for a dropped channel, C / (C - n) for a kept one
    assert torch.equal(scale, scale[:, :1].expand_as(scale)), "frames of one clip dropped different channels"
    dropped = (scale == 0).sum(-1)[:, 0]
    assert set(dropped.tolist()) == {0, 1, 2}  # 1 or 2 channels, or none (probability 0.3)
    torch.testing.assert_close(scale.sum(-1), torch.full((64, 4), 3.0))  # magnitude kept
    images = channel_dropout(clips[:, 0], p=0.7, max_drop=2)  # (B, C, H, W): each image its own
    assert images.shape == (64, 3, 2, 2)
    with pytest.raises(ValueError, match="channel_dropout takes"):
        channel_dropout(torch.ones(3, 2, 2), p=0.5)


# ------------------------------------------------------------------------------ CRW
def test_crw_patches_are_grid_windows_jittered_independently():
    torch.manual_seed(0)
    model = dm.create("crw", width=8, stride=4, stages=2, embed_stages=2, patch_size=16, frame_crop_scale=None)
    h = w = 128
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 3, h, w)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(1, 3, h, w)
    frame = torch.cat([xs[:, :1], ys[:, :1], torch.zeros(1, 1, h, w)], 1)
    patches = model.patches(frame)  # (1, 49, 3, 16, 16)
    assert patches.shape == (1, 49, 3, 16, 16)
    g = 7
    centres = (torch.arange(g) + 1) / (g + 1)  # window centres, frame units
    mx = patches[0, :, 0].mean((1, 2)).view(g, g)
    my = patches[0, :, 1].mean((1, 2)).view(g, g)
    assert (mx - centres.view(1, g)).abs().max() < 0.06
    assert (my - centres.view(g, 1)).abs().max() < 0.06
    # Each patch has its own jitter: the offsets from the window centres differ across patches
    # and across calls.
    offs = (mx - centres.view(1, g)).flatten()
    assert offs.std() > 1e-3
    again = model.patches(frame)
    assert (again - patches).abs().max() > 1e-3


def test_crw_lays_each_frames_grid_on_its_own_random_crop():
    """videowalk's `--frame-transforms crop`: every frame gets its own RandomResizedCrop (area
    0.8-0.95, aspect 0.7-1.3) before the patch grid is cut, so the grid's place and scale
    differ from frame to frame of a clip."""
    torch.manual_seed(0)
    model = dm.create("crw", width=8, stride=4, stages=2, embed_stages=2, patch_size=16)
    h = w = 128
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 1, h, w)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(1, 1, h, w)
    frames = torch.cat([xs, ys, torch.zeros(1, 1, h, w)], 1).expand(6, 3, h, w)
    patches = model.patches(frames)  # (6, 49, 3, 16, 16)
    g = 7
    centres = (torch.arange(g, dtype=torch.float32) + 1) / (g + 1)
    fits = []
    for i in range(6):
        mx = patches[i, :, 0].mean((1, 2)).view(g, g).mean(0)  # column centres, frame units
        my = patches[i, :, 1].mean((1, 2)).view(g, g).mean(1)
        for m in (mx, my):  # m = x0 + centres * side: a straight line in the window centres
            a = torch.stack([torch.ones(g), centres], 1)
            coef = torch.linalg.lstsq(a, m.unsqueeze(1)).solution.squeeze(1)
            assert (a @ coef - m).abs().max() < 0.03
            fits.append(coef)
    fits = torch.stack(fits).view(6, 2, 2)  # frame, axis, (x0, side)
    area = fits[:, 0, 1] * fits[:, 1, 1]
    assert (area > 0.8 - 0.05).all() and (area < 0.95 + 0.05).all(), area
    assert (fits[:, :, 0] > -0.03).all() and (fits[:, :, 0] + fits[:, :, 1] < 1.03).all()  # inside the frame
    assert fits[:, 0, 0].std() > 0.01 and fits[:, 0, 1].std() > 0.01  # each frame its own crop


def test_crw_walk_loss_rewards_distinct_nodes():
    model = dm.create("crw", width=8, stride=4, stages=2, embed_stages=2, patch_size=8, grid=5).eval()
    n = 25
    distinct = F.normalize(torch.eye(n, 128)[None, None].expand(2, 4, n, 128), dim=-1)
    collapsed = F.normalize(torch.ones(2, 4, n, 128), dim=-1)
    low = torch.stack(model.walk_losses(distinct)).mean()
    flat = torch.stack(model.walk_losses(collapsed)).mean()
    assert low < 0.01 and flat.item() == pytest.approx(math.log(n), rel=1e-4)
    assert len(model.walk_losses(distinct)) == 2  # palindromes through 3 and 4 frames


def test_crw_edge_dropout_and_transitions():
    torch.manual_seed(0)
    model = dm.create("crw", width=8, stride=4, stages=2, embed_stages=2, patch_size=8, edge_dropout=0.3)
    q = F.normalize(torch.randn(2, 49, 16), dim=-1)
    model.train()
    keep_f, keep_b = model.edge_masks(2, 49, q)
    a = model.transition(q, q, keep_f)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 49))
    assert 0.2 < (a == 0).float().mean() < 0.4
    # videowalk's backward edge j -> i is gone when the forward edge i -> j was dropped, and
    # draws its own dropout besides: 1 - 0.7^2 = 0.51 of the backward edges are dropped.
    assert ((keep_f.transpose(1, 2) == 0) <= (keep_b == 0)).all()
    assert 0.45 < (model.transition(q, q, keep_b) == 0).float().mean() < 0.57
    model.eval()
    assert model.edge_masks(2, 49, q) == (None, None)
    assert (model.transition(q, q) > 0).all()


def test_crw_head_is_linear_as_videowalks_training_default():
    head = dm.create("crw", width=8).head
    assert [type(m) for m in head] == [torch.nn.Linear]  # train.py --head-depth 0: one linear map


def test_crw_trunk_is_reflect_padded_and_embed_drops_the_last_stage():
    model = dm.create("crw", width=8)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and sum(m.padding) > 0]
    assert convs and all(m.padding_mode == "reflect" for m in convs)
    feats = model.embed(torch.rand(1, 3, 64, 96))
    assert feats.shape == (1, model.backbone.channels_after(3), 8, 12) and feats.shape[1] == 32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(1, 8, 12))
    assert model.config.temperature == 0.05 and model.config.embed_dim == 128
    with pytest.raises(ValueError, match="clip_length"):
        dm.create("crw", clip_length=2)


def test_crw_cell_nodes_are_every_cell_of_each_frames_own_crop():
    model = dm.create("crw", width=8, stride=4, stages=1, embed_stages=1, patch_size=16, nodes="cells")
    clip = torch.rand(2, 4, 3, 32, 48)
    assert model.nodes(clip).shape == (2, 4, 8 * 12, 128)
    frames = torch.rand(1, 3, 16, 16).expand(3, 3, 16, 16)
    crops = model.frames_cropped(frames)  # the same image, three different crops
    assert crops.shape == frames.shape and (crops[0] - crops[1]).abs().max() > 1e-3
    whole = dm.create("crw", width=8, nodes="cells", frame_crop_scale=(1.0, 1.0), frame_crop_ratio=(1.0, 1.0))
    torch.testing.assert_close(whole.frames_cropped(frames), frames)
    with pytest.raises(ValueError, match="frame_crop_scale"):
        dm.create("crw", nodes="cells", frame_crop_scale=None)
    with pytest.raises(ValueError, match="nodes"):
        dm.create("crw", nodes="pixels")


def test_crw_patch_context_surrounds_the_same_patch_and_nodes_pool_its_own_cells():
    """`context` widens every jittered box by that many pixels of its own scale: the centre of a
    context patch is the bare patch, pixel for pixel; a node pools only its patch's cells (or
    the central `node_cells` of them), never the context's."""
    kw = dict(width=8, stride=4, stages=1, embed_stages=1, patch_size=16, frame_crop_scale=None)
    frames = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    bare = dm.create("crw", **kw).patches(frames)
    torch.manual_seed(3)
    wide = dm.create("crw", context=8, **kw).patches(frames)
    assert bare.shape == (2, 49, 3, 16, 16) and wide.shape == (2, 49, 3, 32, 32)
    torch.testing.assert_close(wide[..., 8:24, 8:24], bare)
    assert (wide[..., :8, :] - wide[..., 8:16, :]).abs().max() > 1e-3  # real surroundings, not padding
    maps = torch.zeros(5, 2, 8, 8)
    maps[..., 2:6, 2:6] = 1.0  # the patch's own 4 x 4 cells inside 2 cells of context
    maps[..., 3:5, 3:5] = 3.0
    torch.testing.assert_close(dm.create("crw", context=8, **kw).pool_nodes(maps), torch.full((5, 2), 1.5))
    torch.testing.assert_close(dm.create("crw", context=8, node_cells=2, **kw).pool_nodes(maps), torch.full((5, 2), 3.0))
    assert dm.create("crw", context=8, **kw).nodes(torch.rand(1, 3, 3, 64, 64)).shape == (1, 3, 49, 128)
    with pytest.raises(ValueError, match="context"):
        dm.create("crw", **{**kw, "context": 6})
    with pytest.raises(ValueError, match="node_cells"):
        dm.create("crw", **{**kw, "node_cells": 5})


def test_crw_box_nodes_see_only_real_surroundings_inside_the_margin():
    """nodes='boxes' pools each jittered grid window from the trunk's map of the whole frame, the
    grid laid `margin` px inside the border: a node is then a function of image content alone,
    the same when the frame is cut from a larger image (padding cannot code where it is), which
    fails without the margin."""
    kw = dict(width=8, stride=4, stages=1, embed_stages=1, patch_size=16, frame_crop_scale=None, nodes="boxes",
              head_depth=1)
    big = torch.rand(1, 3, 200, 200)
    frame = big[..., 40:160, 40:160]  # 120 px, 40 px of real surroundings on every side in `big`

    def nodes_and_from_big(margin):
        torch.manual_seed(0)
        model = dm.create("crw", margin=margin, **kw).eval()
        torch.manual_seed(5)
        q = model.nodes(frame[:, None])[0, 0]  # (49, 128)
        torch.manual_seed(5)
        boxes = model.patch_boxes(1, 120, 120, big.device, big.dtype)  # the same draw, frame-normalised
        px = (boxes[..., :2] + 1) / 2 * 120 + 40  # centres in `big`'s pixels
        boxes_big = torch.cat([px / 200 * 2 - 1, boxes[..., 2:] * 120 / 200], dim=-1)
        if margin:  # every window inside the margin
            lo, hi = px - boxes[..., 2:] * 60, px + boxes[..., 2:] * 60
            assert lo.min() >= 40 + margin - 1e-4 and hi.max() <= 160 - margin + 1e-4
        with torch.no_grad():
            maps = model.backbone.trunk(normalise_rgb(big))
            ref = F.normalize(model.head(model.resample(maps, boxes_big, 4, 4).mean(dim=(-2, -1))), dim=-1)[0]
        return q, ref

    q, ref = nodes_and_from_big(28)
    assert q.shape == (49, 128)
    torch.testing.assert_close(q, ref, atol=1e-5, rtol=1e-5)
    q0, ref0 = nodes_and_from_big(0)  # windows at the border: their cells see the reflect padding
    assert (q0 - ref0).abs().max() > 1e-3
    with pytest.raises(ValueError, match="margin"):
        dm.create("crw", **{**kw, "margin": 40}).nodes(torch.rand(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="margin"):
        dm.create("crw", **{**kw, "margin": -1})
