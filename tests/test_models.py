"""Tests of densecorr.models: every registered model, on tiny configs and a few real frames.

Frames come from `clip_from_frames`, which reads a short clip of real video from the shared
data folder (densecorr.data.paths: $DENSECORR_DATA or ../shared/data, preferring the DAVIS-2016
training frames, davis2016_train_256p), else from the sample shipped in densecorr/assets.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import densecorr
import densecorr.models as dm
from densecorr.models import affinity as naive
from densecorr.models.colour import DEFAULT_AB_CENTROIDS, ColourQuantiser, kmeans, lab_to_rgb, rgb_to_lab

REPO = Path(__file__).resolve().parents[1]
TRAIN_SET = "davis2016_train_256p"

# Tiny configs: every registered model needs one (test_every_model_has_a_tiny_config).
TINY = {
    "vidcolor": dict(width=8, out_dim=16),
    "cycletime": dict(width=4, out_dim=16, frame_size=64, patch_cells=4, regressor_channels=16, clip_length=3),
    "corrflow": dict(width=8, out_dim=16, radius=2, clip_length=3),
    "mast": dict(width=8, out_dim=16, radius=2, roi_radius=1, roi_dilation=2),
    "uvc": dict(width=8, out_dim=16, colour_dim=16, warmup_epochs=0),  # the localisation stage
    "crw": dict(width=8, stride=4, stages=2, embed_stages=2, patch_size=8, grid=5, clip_length=3),
}
SIZE = 64  # clip side in tests (pixels): 16 x 16 feature cells at stride 4, 8 x 8 at stride 8


# ------------------------------------------------------------------------------ data
def data_root(path: str | os.PathLike | None = None) -> Path:
    """`path`, else the shared data folder (densecorr.data.paths: $DENSECORR_DATA or
    ../shared/data), else the sample shipped in the package."""
    from densecorr.data.paths import sample_root, shared_data_root

    return Path(path or shared_data_root() or sample_root())


def sequence_dir(root: Path, sequence: str | None = None) -> Path:
    """A folder of JPEG frames under `root`: `sequence` if given, preferring the training set."""
    dirs = sorted({p.parent for p in root.rglob("*.jpg")})
    if not dirs:
        raise FileNotFoundError(f"no JPEG frames under {root}")
    train = [d for d in dirs if TRAIN_SET in d.parts]
    dirs = train or dirs
    if sequence is not None:
        named = [d for d in dirs if d.name == sequence]
        if not named:
            raise FileNotFoundError(f"no sequence {sequence!r} under {root}")
        return named[0]
    return dirs[0]


def clip_from_frames(
    length: int, size: int = SIZE, batch: int = 2, root=None, sequence: str | None = None, step: int = 2
) -> torch.Tensor:
    """(batch, length, 3, size, size) float RGB in [0, 1]: `batch` clips of consecutive frames
    (every `step`-th) of one real sequence, centre-cropped square and resized."""
    frames_dir = sequence_dir(data_root(root), sequence)
    files = sorted(frames_dir.glob("*.jpg"))
    clips = []
    for b in range(batch):
        start = b * length * step
        picked = files[start : start + length * step : step]
        if len(picked) < length:
            raise FileNotFoundError(f"{frames_dir} has too few frames for {batch} clips of {length}")
        frames = []
        for f in picked:
            img = Image.open(f).convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            frames.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
        clips.append(torch.stack(frames))
    return torch.stack(clips)


def tiny_model(name: str, **overrides) -> dm.CorrespondenceModel:
    return dm.create(name, **{**TINY[name], **overrides})


MODELS = dm.list_models()


# ------------------------------------------------------------------------------ registry
def test_registry_lists_the_six_methods():
    assert set(MODELS) >= {"vidcolor", "cycletime", "corrflow", "uvc", "mast", "crw"}


def test_every_model_has_a_tiny_config():
    assert set(TINY) == set(MODELS)


def test_unknown_model_and_field_are_errors():
    with pytest.raises(ValueError, match="unknown model"):
        dm.create("nope")
    with pytest.raises(ValueError, match="no field"):
        dm.create("mast", radiuss=3)
    with pytest.raises(ValueError, match="affinity"):
        dm.create("mast", affinity="fast")


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trips(name):
    cfg = dm.get_config(name, **TINY[name], backend="reference")
    d = cfg.to_dict()
    assert type(cfg).from_dict(json.loads(json.dumps(d))) == cfg
    model = dm.create(name, config=d)
    assert model.config == cfg
    assert dm.create(name, config=cfg).config == cfg


# ------------------------------------------------------------------------------ interface
@pytest.mark.parametrize("name", MODELS)
def test_output_and_embedding_shapes(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    size = SIZE
    clip = clip_from_frames(model.clip_length, size=size)
    out = model(clip)
    assert set(out) == {"loss", *model.weights()}
    for key, value in out.items():
        assert value.shape == (), key
        assert torch.isfinite(value), key
    total = sum(model.weights()[k] * out[k] for k in model.weights())
    torch.testing.assert_close(out["loss"], total)
    s = model.stride
    feats = model.embed(clip[:, 0, :, :, : size // 2 + s])  # non-square: catches H/W mix-ups
    assert feats.dim() == 4 and feats.shape[0] == 2 and feats.shape[1] > 0
    assert feats.shape[2:] == (size // s, (size // 2 + s) // s)
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("name", MODELS)
def test_bad_clip_is_an_error_naming_the_shape(name):
    model = tiny_model(name)
    bad = torch.rand(1, model.clip_length + 1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"clip"):
        model(bad)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        model(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"frames"):
        model.embed(torch.rand(1, model.clip_length, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", MODELS)
def test_optimisation_lowers_the_loss_on_real_frames(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    clip = clip_from_frames(model.clip_length, size=SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_at_fixed_randomness():
        torch.manual_seed(123)  # same crops / channel drops / sampling draws each time
        return model(clip)["loss"]

    before = loss_at_fixed_randomness().item()
    for _ in range(6):
        loss = loss_at_fixed_randomness()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_at_fixed_randomness().item()
    assert math.isfinite(after)
    # At least 5% lower (losses can be negative: CycleTime's inlier term is a reward).
    assert after < before - 0.05 * abs(before), (before, after)


@pytest.mark.parametrize("name", MODELS)
def test_naive_affinity_gives_the_same_loss_and_gradients(name):
    """densecorr's ops (automatic backend, and the reference backend) vs. the textbook
    bmm/softmax/unfold computation: same losses and gradients, in float64."""
    torch.manual_seed(0)
    model = tiny_model(name).double()
    clip = clip_from_frames(model.clip_length, size=SIZE, batch=1).double()
    results = {}
    for mode, backend in (("naive", None), ("densecorr", None), ("densecorr", "reference")):
        model.use_affinity(mode, backend)
        model.zero_grad()
        torch.manual_seed(7)
        out = model(clip)
        out["loss"].backward()
        results[mode, backend] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    out_naive, grad_naive = results.pop(("naive", None))
    assert any(g.abs().sum() > 0 for g in grad_naive.values())
    for (out, grad) in results.values():
        for key in out_naive:
            torch.testing.assert_close(out[key], out_naive[key], rtol=1e-8, atol=1e-10, msg=key)
        for n in grad_naive:
            torch.testing.assert_close(grad[n], grad_naive[n], rtol=1e-6, atol=1e-9, msg=n)


def test_backend_reaches_the_ops():
    model = tiny_model("mast", backend="no-such-backend")
    with pytest.raises((ValueError, RuntimeError), match="no-such-backend"):
        model(clip_from_frames(model.clip_length, batch=1))


# ------------------------------------------------------------------------------ model state
def test_corrflow_sampling_schedule_is_checkpointed_state():
    model = tiny_model("corrflow", sampling_decay_steps=4, clip_length=2)
    clip = clip_from_frames(model.clip_length, size=16, batch=1)
    assert model.sampling_probability() == pytest.approx(0.9)
    model.train()
    for _ in range(2):
        model(clip)
    assert int(model.num_steps) == 2
    assert model.sampling_probability() == pytest.approx(0.75)
    model.eval()
    model(clip)  # evaluation does not advance the schedule
    assert int(model.num_steps) == 2
    restored = tiny_model("corrflow", sampling_decay_steps=4, clip_length=2)
    restored.load_state_dict(model.state_dict())
    assert restored.sampling_probability() == pytest.approx(0.75)
    for _ in range(3):
        model.train()(clip)
    assert model.sampling_probability() == pytest.approx(0.6)


@pytest.mark.parametrize("name", ["vidcolor", "corrflow"])
def test_colour_clusters_fit_and_checkpoint(name):
    model = tiny_model(name)
    torch.testing.assert_close(model.quantiser.centroids, DEFAULT_AB_CENTROIDS)
    frames = clip_from_frames(4, size=32, batch=1)[0]
    model.fit_colour_clusters(frames, pixels_per_frame=256, iters=10)
    fitted = model.quantiser.centroids.clone()
    assert fitted.shape == (16, 2) and not torch.allclose(fitted, DEFAULT_AB_CENTROIDS)
    restored = tiny_model(name)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.quantiser.centroids, fitted)


# ------------------------------------------------------------------------------ building blocks
@pytest.mark.parametrize(
    "make, stride, channels",
    [
        (lambda: dm.ResNet18(stride=8, width=8), 8, 64),
        (lambda: dm.ResNet18(stride=4, width=8, out_dim=24), 4, 24),
        (lambda: dm.ResNet18(stride=4, width=8, stages=2), 4, 16),
        (lambda: dm.ResNet18(stride=8, width=8, stages=3), 8, 32),
        (lambda: dm.ResNet50Res4(width=4), 8, 64),
        (lambda: dm.ResNet50Res4(width=4, out_dim=12, in_channels=1), 8, 12),
    ],
)
def test_backbone_strides_and_widths(make, stride, channels):
    net = make()
    cin = net.stem[0].in_channels
    out = net(torch.rand(2, cin, 48, 64))
    assert out.shape == (2, channels, 48 // stride, 64 // stride)
    assert net.stride == stride and net.out_channels == channels


def test_backbone_rejects_unsupported_stride():
    with pytest.raises(ValueError, match="stride"):
        dm.ResNet18(stride=16)
    with pytest.raises(ValueError, match="stages"):
        dm.ResNet18(stride=8, stages=1)  # stride 8 needs layer2
    with pytest.raises(ValueError, match="stages"):
        dm.build_backbone("resnet50_res4", 8, 4, None, 3, stages=2)


def test_mast_normalised_features_are_scale_free():
    """normalise=True: the affinity sees unit features, so scaling the projection's weights
    (every feature vector by the same factor) leaves the loss unchanged; without it, it does not."""
    clip = torch.rand(1, 4, 3, SIZE, SIZE)
    for normalise in (True, False):
        torch.manual_seed(0)
        model = dm.create("mast", **TINY["mast"], normalise=normalise, scale=5.0).eval()
        torch.manual_seed(1)  # the same channel dropped in both calls
        before = model(clip)["loss"].item()
        with torch.no_grad():
            model.backbone.proj.weight.mul_(3.0)
            model.backbone.proj.bias.mul_(3.0)
        torch.manual_seed(1)
        after = model(clip)["loss"].item()
        assert (abs(before - after) < 1e-5) == normalise, (normalise, before, after)


def test_lab_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).T.reshape(3, 2, 2)
    lab = rgb_to_lab(rgb)
    # Reference values (D65): white, sRGB red, black, mid grey.
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [0.0, 0.0, 0.0], [53.39, 0.0, 0.0]]).T.reshape(3, 2, 2)
    torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)
    frames = clip_from_frames(2, size=16, batch=1)[0]
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(frames)), frames, atol=1e-4, rtol=0)


def test_lab_gradient_is_finite_at_black():
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-50.0, 0.0], [0.0, 40.0], [30.0, -30.0]])
    points = torch.cat([c + torch.randn(200, 2, generator=gen) for c in centres])
    found, assign = kmeans(points, 3, seed=1)
    order = found[:, 0].argsort()
    torch.testing.assert_close(found[order], centres[centres[:, 0].argsort()], atol=0.3, rtol=0)
    assert assign.shape == (600,) and len(set(assign.tolist())) == 3
    again, _ = kmeans(points, 3, seed=1)
    torch.testing.assert_close(again, found)  # deterministic for a seed


def test_quantiser_maps_to_the_nearest_centroid():
    q = ColourQuantiser(16)
    ab = q.centroids.T.reshape(1, 2, 4, 4) + 0.01
    assert q(ab).flatten().tolist() == list(range(16))
    one_hot = q.one_hot(ab)
    assert one_hot.shape == (1, 16, 4, 4) and torch.equal(one_hot.sum(1), torch.ones(1, 4, 4))


# ------------------------------------------------------------------------------ naive ops
def _double(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("boundary", ["mask", "zero"])
@pytest.mark.parametrize("refs, dilation", [(None, 1), (2, 2)])
def test_naive_local_ops_match_densecorr(boundary, refs, dilation):
    torch.manual_seed(0)
    b, d, c, h, w, r = 2, 3, 2, 5, 6, 1
    q = _double(b, d, h, w)
    k = _double(b, d, h, w) if refs is None else _double(b, refs, d, h, w)
    v = _double(b, c, h, w) if refs is None else _double(b, refs, c, h, w)
    kw = dict(dilation=dilation, boundary=boundary)
    ref = dict(backend="reference")
    torch.testing.assert_close(
        naive.naive_local_attention(q, k, v, r, scale=0.7, **kw),
        densecorr.local_attention(q, k, v, r, scale=0.7, **kw, **ref),
    )
    attn = densecorr.local_affinity(q, k, r, scale=0.7, **kw, **ref)
    torch.testing.assert_close(naive.naive_local_affinity(q, k, r, scale=0.7, **kw), attn)
    torch.testing.assert_close(naive.naive_local_copy(attn, v, r, **kw), densecorr.local_copy(attn, v, r, **kw, **ref))


def test_naive_global_ops_match_densecorr():
    torch.manual_seed(0)
    q, k, v = _double(2, 7, 4), _double(2, 9, 4), _double(2, 9, 3)
    ref = dict(backend="reference")
    torch.testing.assert_close(naive.naive_global_attention(q, k, v, 0.5), densecorr.global_attention(q, k, v, 0.5, **ref))
    torch.testing.assert_close(
        naive.naive_global_attention(q, k, v, 0.5, topk=3), densecorr.global_attention(q, k, v, 0.5, topk=3, **ref)
    )
    torch.testing.assert_close(naive.naive_global_affinity(q, k, 0.5), densecorr.global_affinity(q, k, 0.5))
    kimg = _double(2, 4, 3, 3)
    torch.testing.assert_close(naive.naive_project_coords(q, kimg, 2.0), densecorr.project_coords(q, kimg, 2.0, **ref))


def test_use_affinity_switches_and_validates():
    model = tiny_model("mast")
    assert model.ops.mode == "densecorr"
    model.use_affinity("naive")
    assert model.ops.mode == "naive" and model.config.affinity == "naive"
    with pytest.raises(ValueError, match="affinity"):
        model.use_affinity("fast")
    with pytest.raises(ValueError, match="backend"):
        dm.Affinity("naive", backend="cpu")
