"""Conformance of densecorr's propagation protocols with the reference trackers' released code.

tests/conformance/ re-encodes each reference's rules independently of densecorr.propagation
(docs/protocols.md cites the file:line of each rule). Here both are fed the same features
(random, tie-free: each test first checks that no top-k boundary or fed-back argmax of the
reference was within MIN_MARGIN of a tie) and compared:

- test_propagation: the label maps on the feature grid of every frame, max abs diff <= 1e-5,
  from the same first-frame grid labels;
- test_first_labels: how the first frame's id mask is brought to the feature grid;
- test_masks: the output id masks, end to end from a full-resolution first mask.

Every protocol conforms (docs/protocols.md lists what densecorr does not reproduce: frame
resizing and output file conventions, outside these comparisons). The test_<method>_* tests
check the encodings themselves on cases that can be worked out by hand, and where densecorr has
an option for a reference's quirk or bug, that option too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conformance import corrflow, crw, cycletime, dino, driver, mast, uvc
from conformance.common import bilinear, consecutive_margin, l2n, nearest_index, one_hot_ids, pil_nearest, sample_bilinear_zeros, window, topk_margin

ATOL = 1e-5
K = 4  # background + 3 objects
D, H, W = 16, 12, 16  # feature channels, grid


def features(T: int, seed: int, h: int = H, w: int = W, norms: tuple[float, float] = (2.0, 4.0)) -> torch.Tensor:
    """Random features (T, D, h, w) with norms uniform in `norms` (what a raw-feature reference
    sees; the L2-normalising ones normalise them themselves), exactly representable in float32."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(T, D, h, w, generator=g, dtype=torch.float64)
    lo, hi = norms
    return (l2n(f, 1) * (lo + (hi - lo) * torch.rand(T, 1, h, w, generator=g, dtype=torch.float64))).float().double()


def block_ids(shape: tuple[int, int], block: int, seed: int) -> torch.Tensor:
    """Ids 0..K-1 in random block x block squares (not aligned to the stride at full resolution)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, K, (-(-shape[0] // block), -(-shape[1] // block)), generator=g)
    return ids.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]


def grid_labels(seed: int = 2) -> torch.Tensor:
    return one_hot_ids(block_ids((H, W), 3, seed), K)


# Per protocol: the reference encoding, the feature stride, the sequence length and the seed of
# its features (chosen so the reference's decisions are far from ties), its tie margin.
CASES = {
    "crw": dict(stride=8, T=22, seed=7, mask_seed=0),
    "dino": dict(stride=16, T=12, seed=17, mask_seed=0),
    "uvc": dict(stride=8, T=12, seed=2, mask_seed=0),
    "cycletime": dict(stride=8, T=12, seed=0, mask_seed=0),
    "corrflow": dict(stride=4, T=12, seed=4, mask_seed=0),
    "mast": dict(stride=4, T=12, seed=24, mask_seed=0),
    # smaller norms: the coarse search's expected offset amplifies rounding in larger logits
    "mast-long-term": dict(stride=4, T=24, seed=2, norms=(1.0, 2.0)),
}
# float32 logits are within ~2e-6 of the float64 ones here (features of norm <= 4, D = 16, s <= 23);
# a reference decision (top-k boundary, fed-back argmax) closer than this to a tie is refused.
MIN_MARGIN = 1.5e-5
# output pixels whose two best label scores are closer than this may differ (float rounding)
PIXEL_MARGIN = 1e-5

def _reference(case: str, feats: torch.Tensor, labels0: torch.Tensor):
    if case == "crw":
        return crw.propagate(feats, labels0)
    if case == "dino":
        return dino.propagate(feats, labels0)
    if case == "uvc":
        return uvc.propagate(feats, labels0)
    if case == "cycletime":
        return cycletime.propagate(feats, labels0)
    if case == "corrflow":
        return corrflow.propagate(feats, labels0)
    return mast.propagate(feats, labels0)


# --------------------------------------------------------------------------- densecorr vs reference


@pytest.mark.parametrize("case", list(CASES))
def test_propagation(case):
    cfg = CASES[case]
    feats = features(cfg["T"], cfg["seed"], norms=cfg.get("norms", (2.0, 4.0)))
    labels0 = grid_labels()
    ref, margin = _reference(case, feats, labels0)
    assert margin > MIN_MARGIN, f"test data too close to a tie ({margin:.3g})"
    protocol = case.split("-")[0]
    ours = driver.labels(protocol, feats, labels0, cfg["stride"])
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"max abs difference of the label maps {diff:.3g}"


@pytest.mark.parametrize("bugs", ["shared_offset", "half_pixel", "both"])
def test_propagation_mast_code_bugs(bugs):
    """MAST's released code (its bugs as options of densecorr's mast protocol) against the
    encoding's `shared_offset` / `half_pixel`, on the long-term case; on these features each
    option changes the labels by far more than the tolerance, so the comparison can fail."""
    cfg = CASES["mast-long-term"]
    feats = features(cfg["T"], cfg["seed"], norms=cfg["norms"])
    labels0 = grid_labels()
    shared, half = bugs in ("shared_offset", "both"), bugs in ("half_pixel", "both")
    ref, margin = mast.propagate(feats, labels0, shared_offset=shared, half_pixel=half)
    assert margin > MIN_MARGIN, f"test data too close to a tie ({margin:.3g})"
    paper, _ = mast.propagate(feats, labels0)
    assert (ref - paper).abs().max() > 30 * ATOL
    ours = driver.labels("mast", feats, labels0, cfg["stride"], roi_shared_offset=shared, roi_half_pixel=half)
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"max abs difference of the label maps {diff:.3g}"


def _reference_first_labels(protocol: str, mask: torch.Tensor, grid):
    if protocol == "crw":
        return crw.first_labels(one_hot_ids(mask, K), grid)
    if protocol == "dino":
        return dino.first_labels(mask, grid)
    if protocol == "uvc":
        return uvc.first_labels(mask, grid)
    if protocol == "cycletime":
        return cycletime.first_labels(mask, grid)
    if protocol == "corrflow":
        return corrflow.first_labels(mask, K)
    return mast.first_labels(mask, K)


PROTOCOLS = ["crw", "dino", "uvc", "cycletime", "corrflow", "mast"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_first_labels(protocol):
    stride = CASES[protocol]["stride"]
    mask = block_ids((H * stride, W * stride), 5, seed=CASES[protocol]["mask_seed"])
    assert sorted(mask.unique().tolist()) == list(range(K))
    ref = _reference_first_labels(protocol, mask, (H, W))
    ours = driver.first_labels(protocol, mask, list(range(1, K)), (H, W))
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-6, f"max abs difference of the first labels {diff:.3g}"


def _reference_masks(protocol: str, feats: torch.Tensor, mask: torch.Tensor, stride: int):
    """The reference's output id masks of frames 1.., per pixel the gap between its two best
    scores, and the margin of its propagation decisions."""
    size = tuple(mask.shape)
    labels0 = _reference_first_labels(protocol, mask, (H, W))
    maps, margin = _reference(protocol, feats, labels0)
    if protocol == "dino":
        outs = [dino.masks(m, stride, size) for m in maps]
    elif protocol == "uvc":
        outs = [uvc.masks(m, size, stride) for m in maps]
    elif protocol == "cycletime":
        outs = [cycletime.masks(m, size, cycletime.label_set(mask)) for m in maps]
    else:
        outs = [{"crw": crw, "corrflow": corrflow, "mast": mast}[protocol].masks(m, size) for m in maps]
    gaps = []
    for ids, scores, _ in outs:
        top = scores.topk(2, dim=0).values
        gap = top[0] - top[1]
        if gap.shape != ids.shape:  # resized after the argmax (DINO, UVC): the gap of the pixel read
            gap = gap[nearest_index(gap.shape[0], size[0])][:, nearest_index(gap.shape[1], size[1])]
        gaps.append(gap)
    return [o[0] for o in outs], gaps, margin


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_masks(protocol):
    cfg = CASES[protocol]
    stride = cfg["stride"]
    feats = features(cfg["T"], cfg["seed"])
    mask = block_ids((H * stride, W * stride), 5, seed=cfg["mask_seed"])
    ref, gaps, margin = _reference_masks(protocol, feats, mask, stride)
    assert margin > MIN_MARGIN, f"test data too close to a tie ({margin:.3g})"
    ours = driver.masks(protocol, feats, mask, stride)
    assert len(ours) == len(ref)
    wrong = sum(int(((o != r) & (g >= PIXEL_MARGIN)).sum()) for o, r, g in zip(ours, ref, gaps))
    assert wrong == 0, f"{wrong} of {len(ref) * mask.numel()} pixels differ"


def test_driver_feeds_the_given_features():
    """The driver's FixedFeatures model reaches densecorr's propagator: with top-1, a frame that is
    frame 0 shifted by 3 columns copies frame 0's labels from 3 columns to the left."""
    h, w, s = 4, 12, 3
    codes = torch.eye(h * w, dtype=torch.float64).T.reshape(h * w, h, w)  # cell (y, x) -> e_{y w + x}
    f1 = torch.zeros_like(codes)
    f1[:, :, s:] = codes[:, :, :-s]
    f1[:, :, :s] = codes[:, :, -s:]  # wrap around: every query has a unique match
    labels0 = one_hot_ids(block_ids((h, w), 1, seed=5), K)
    ours = driver.labels("crw", torch.stack([codes, f1]), labels0, 8, topk=1)
    assert torch.allclose(ours[0], labels0.roll(s, dims=2), atol=1e-6)


# --------------------------------------------------------------------------- the encodings themselves


def test_common_nearest_is_pil():
    from PIL import Image

    ids = torch.arange(37 * 23).reshape(23, 37) % 251
    img = Image.fromarray(ids.numpy().astype(np.uint8))
    for size in [(5, 7), (23, 37), (12, 16), (46, 74)]:
        pil = torch.from_numpy(np.array(img.resize(size[::-1], 0))).long()
        assert torch.equal(pil_nearest(ids, size), pil), size
    assert nearest_index(854, 52)[:3].tolist() == [8, 24, 41]


def test_common_bilinear_sampler_is_grid_sample_align_corners():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    px = torch.rand(4, 6, generator=g, dtype=torch.float64) * 10 - 2
    py = torch.rand(4, 6, generator=g, dtype=torch.float64) * 8 - 2
    grid = torch.stack([px / (7 - 1) * 2 - 1, py / (5 - 1) * 2 - 1], -1)[None]
    ref = torch.nn.functional.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    assert torch.allclose(sample_bilinear_zeros(img, px, py), ref, atol=1e-12)


def test_common_bilinear_is_cv2_linear():
    """The written-out INTER_LINEAR rule: hand values (a downscale reads the 2 pixels around the
    half-pixel source position whatever the factor; the border is replicated), and torch's
    F.interpolate(bilinear, align_corners=False, antialias=False) on down- and upscales."""
    row = torch.arange(16, dtype=torch.float64)[None, None]  # (1, 1, 16): value = column
    assert bilinear(row, (1, 2))[0, 0].tolist() == [3.5, 11.5]  # src 3.5, 11.5: pixels 3-4, 11-12
    assert bilinear(row, (1, 5))[0, 0, 0].item() == pytest.approx(1.1)  # src 16/5 * 0.5 - 0.5 = 1.1
    up = bilinear(torch.tensor([[[0.0, 8.0]]]), (1, 8))[0, 0].tolist()
    assert up[:2] == [0.0, 0.0] and up[-2:] == [8.0, 8.0]  # src < 0 or > 1: the border pixel
    assert up[2] == pytest.approx(1.0)  # src (2.5 / 4) - 0.5 = 0.125
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 24, 40, generator=g, dtype=torch.float64)
    for size in [(3, 5), (12, 20), (7, 13), (24, 40), (48, 80), (50, 97), (1, 1)]:
        ref = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
        assert torch.allclose(bilinear(x, size), ref, atol=1e-12), size


def test_common_windows():
    h, w = 1, 30
    def allowed(shape, r, dx):
        return bool(window(h, w, r, shape)[0, dx])
    assert not allowed("circle_strict", 12, 12) and allowed("circle_strict", 12, 11)
    assert allowed("circle", 12, 12) and allowed("square", 12, 12) and not allowed("square", 12, 13)
    big = window(13, 13, 12, "circle_strict")
    assert bool(big[0, 7 * 13 + 9])  # 7^2 + 9^2 = 130 < 144
    assert topk_margin(torch.tensor([[3.0], [1.0], [0.5]]), 1, 0) == 2.0
    assert consecutive_margin(torch.tensor([[3.0], [1.0], [0.5], [0.4]]), 2, 0) == pytest.approx(0.5)


def test_crw_context_pads_with_frame_0():
    assert crw.context(1) == [0] * 21
    assert crw.context(5) == [0] * 17 + [1, 2, 3, 4]
    assert crw.context(20) == [0, 0] + list(range(1, 20))
    assert crw.context(21) == [0] + list(range(1, 21))
    assert crw.context(30) == [0] + list(range(10, 30))
    assert crw.context(5, pad_with_first=False) == [0, 0, 1, 2, 3, 4]


def test_crw_first_labels_are_the_centre_pixels():
    """At stride 8, cv2 INTER_LINEAR reads the 2x2 pixels at the centre of each cell (3..4)."""
    onehot = torch.zeros(2, 16, 16, dtype=torch.float64)
    onehot[1, 3:5, 3:5] = 1  # only the centre of cell (0, 0)
    onehot[1, 8:11, 8:11] = 1  # the corner of cell (1, 1), away from its centre
    onehot[0] = 1 - onehot[1]
    small = crw.first_labels(onehot, (2, 2))
    assert small[1].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def _codes(h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    return torch.eye(h * w, dtype=torch.float64).T.reshape(h * w, h, w) * scale


def _shifted(codes: torch.Tensor, s: int) -> torch.Tensor:
    out = torch.zeros_like(codes)
    out[:, :, s:] = codes[:, :, :-s]
    return out


def test_dino_context_and_window():
    assert dino.context(1) == [0]
    assert dino.context(8) == list(range(8))
    assert dino.context(9) == [0] + list(range(2, 9))
    h, w = 3, 30
    codes = _codes(h, w)
    labels0 = one_hot_ids(block_ids((h, w), 1, seed=7), K)
    for s, found in [(12, True), (13, False)]:
        pred, _ = dino.propagate(torch.stack([codes, _shifted(codes, s)]), labels0, topk=1)
        copy = labels0[:, :, : w - s]
        diff = (pred[0, :, :, s:] - copy).abs().max().item()
        assert (diff < 1e-9) == found, (s, diff)


def test_dino_topk_renormalises():
    """Two equally good matches, top-2: each gets weight 1/2 (DINO divides by the kept sum)."""
    h, w = 1, 4
    codes = _codes(h, w)
    f0 = codes.clone()
    f0[:, 0, 1] = codes[:, 0, 0]  # cells 0 and 1 of frame 0 both match query cell 0
    labels0 = one_hot_ids(torch.tensor([[1, 2, 0, 0]]), K)
    pred, _ = dino.propagate(torch.stack([f0, codes]), labels0, topk=2)
    assert pred[0, 1, 0, 0].item() == pytest.approx(0.5) and pred[0, 2, 0, 0].item() == pytest.approx(0.5)


def test_uvc_topk_weights_are_not_renormalised():
    """Raw features with logit ln(N-1) for the match and 0 elsewhere: the match's softmax weight is
    1/2, and UVC's top-1 keeps it as it is, so frame 1 (= frame 0) gets half its labels."""
    h, w = 3, 5
    N = h * w
    codes = _codes(h, w, math.sqrt(math.log(N - 1)))
    labels0 = one_hot_ids(block_ids((h, w), 1, seed=7), K)
    pred, _ = uvc.propagate(torch.stack([codes, codes]), labels0, topk=1)
    assert torch.allclose(pred[0], labels0 / 2, atol=1e-12)
    assert uvc.context(3) == [0, 1, 2] and uvc.context(12) == [0] + list(range(5, 12))


def test_cycletime_context_and_label_set():
    assert cycletime.context(0) == list(range(8))  # real frame 0 from 8 copies of itself
    assert cycletime.context(1) == [0] + list(range(2, 9))  # padded 8 = real frame 0's predicted slot
    ids = torch.zeros(10, 10, dtype=torch.long)
    ids[0, 0] = 3  # 3 appears first, 12 pixels: kept
    ids[5, :] = 3
    ids[6, :1] = 3
    ids[7, 0] = 2  # 2: 11 pixels, counted 10 (not its first): dropped
    ids[9, :] = 2
    ids[8, :] = 1  # 10 pixels: dropped
    assert cycletime.label_set(ids) == [0, 3]


def test_cycletime_label_set_drops_small_objects():
    """densecorr's cycletime keeps TimeCycle's label set: an object with 11 pixels (10 counted)
    gets no channel and its pixels none either; `label_set="all"` tracks it as any other."""
    from densecorr.propagation import first_labels, get_protocol

    ids = block_ids((H * 8, W * 8), 5, seed=0)
    ids[ids == 2] = 1
    ids[43, 58:69] = 2  # 11 pixels of object 2 (row 43 and columns 59-60, 67-68 are read by cells (5, 7), (5, 8))
    keep = cycletime.label_set(ids)
    assert 2 not in keep and keep[0] == 0
    ref = cycletime.first_labels(ids, (H, W))
    channels, ours = first_labels(ids.numpy(), [1, 2, 3], (H, W), get_protocol("cycletime"))
    assert [0] + channels == keep
    assert (ours.double() - ref).abs().max() <= 1e-6
    assert ours.sum(0).min() == pytest.approx(0.5)  # the cells over object 2 lost its half, as in TimeCycle
    feats = features(4, seed=1)
    assert not any((m == 2).any() for m in driver.masks("cycletime", feats, ids, 8))
    channels, labs = first_labels(ids.numpy(), [1, 2, 3], (H, W), get_protocol("cycletime", label_set="all"))
    assert channels == [1, 2, 3] and torch.allclose(labs.sum(0), torch.ones(H, W))


def test_cycletime_feeds_back_min_max():
    feats = features(4, seed=1)
    out, _ = cycletime.propagate(feats, grid_labels(), with_frame0=True)
    for m in out.reshape(4, K, -1):
        assert torch.allclose(m.min(1).values, torch.zeros(K, dtype=m.dtype), atol=1e-12)
        assert torch.allclose(m.max(1).values, torch.ones(K, dtype=m.dtype), atol=1e-12)


def test_corrflow_interpolates_ids_as_numbers():
    ids = torch.ones(8, 8, dtype=torch.long)
    ids[:, 6:] = 3
    ids[4:, :2] = 0
    grid = corrflow.first_labels(ids, 4).argmax(0)
    # cell (0, 1) reads pixels 5 and 6 of its row: (1 + 3) / 2 = 2, an id the mask does not have;
    # cell (1, 0) reads pixels 1, 2 of columns: (0 + 1) / 2 = 0.5, truncated to 0
    assert grid.tolist() == [[1, 2], [0, 2]]


def test_mast_references_and_dilations():
    assert mast.ref_index(1) == [0]
    assert mast.ref_index(2) == [0, 1]
    assert mast.ref_index(6) == [0, 1, 3, 5]
    assert mast.ref_index(7) == [0, 2, 4, 5, 6]
    assert mast.ref_index(16) == [0, 5, 11, 13, 15]
    assert mast.dilation(16, 0) == 2 and mast.dilation(16, 5) is None and mast.dilation(15, 0) is None
    assert mast.dilation(21, 5) == 2 and mast.dilation(45, 0) == 4 and mast.dilation(100, 0) == 4
    from densecorr.propagation import get_protocol

    proto = get_protocol("mast")  # densecorr's references and dilations are the same
    for t in range(1, 80):
        assert sorted(proto.references(t)) == mast.ref_index(t), t
        assert [proto.roi_dilation(t, x) for x in mast.ref_index(t)] == [mast.dilation(t, x) for x in mast.ref_index(t)], t
    assert get_protocol("mast", roi=False).roi_dilation(40, 0) is None


def _mast_roi_case(T: int, h: int = 5, w: int = 40, s: int = 20):
    """Frame 0: random codes of norm 30 (logit 900 for a match, below 600 for any other cell);
    frame T-1: frame 0 shifted s > 12 cells right; the frames in between have zero features
    (logit 0 everywhere)."""
    g = torch.Generator().manual_seed(11)
    codes = l2n(torch.randn(32, h, w, generator=g, dtype=torch.float64), 0) * 30.0
    gram = codes.flatten(1).T @ codes.flatten(1)
    assert (gram - torch.diag(gram.diag())).max() < 600
    feats = torch.zeros(T, 32, h, w, dtype=torch.float64)
    feats[0] = codes
    feats[T - 1] = _shifted(codes, s)
    labels0 = one_hot_ids(block_ids((h, w), 2, seed=9), K)
    return feats, labels0


def _mast_refs(feats: torch.Tensor, labels0: torch.Tensor, t: int):
    """Frame t's references as MAST orders them, frame 0 with labels0, the others with zero labels."""
    return [(feats[x], labels0 if x == 0 else torch.zeros_like(labels0), mast.dilation(t, x)) for x in mast.ref_index(t)]


def test_mast_long_term_roi_finds_a_distant_match():
    """At t = 16 frame 0 is a long-term reference (16 > 15, dilation 2): the coarse search reaches
    20 cells (dx = -10 at dilation 2), so the fine window is centred on the match and each query
    copies the label of the cell 20 columns to its left, out of reach of a radius-12 window."""
    s = 20
    feats, labels0 = _mast_roi_case(17, s=s)
    refs = _mast_refs(feats, labels0, 16)
    assert [d for _, _, d in refs] == [2, None, None, None, None]
    pred = mast.step(feats[16], refs)
    assert torch.allclose(pred[:, :, s:], labels0[:, :, :-s], atol=1e-9)
    # without the long-term memory (frame 0 as a plain short-term window) it is not found
    plain = mast.step(feats[16], [(feats[0], labels0, None)])
    assert (plain[:, :, s:] - labels0[:, :, :-s]).abs().max() > 0.5
    # and the whole propagation takes that path at t = 16, densecorr's too (and not without it)
    full, _ = mast.propagate(feats, labels0)
    assert torch.allclose(full[15][:, :, s:], labels0[:, :, :-s], atol=1e-9)
    ours = driver.labels("mast", feats, labels0, 4)
    assert torch.allclose(ours[15][:, :, s:], labels0[:, :, :-s], atol=1e-6)
    short_only = driver.labels("mast", feats, labels0, 4, roi=False)
    assert (short_only[15][:, :, s:] - labels0[:, :, :-s]).abs().max() > 0.5


def test_mast_code_bugs():
    """t = 21: frames 0 and 5 are both long-term (dilation 2); frame 5 has zero features, so its
    coarse offset is 0. MAST's released code samples frame 0's labels with frame 5's offset (the
    last one): each query then copies the label of its own cell instead of the matched one. Its
    half-pixel sampling blurs the copy."""
    s = 20
    feats, labels0 = _mast_roi_case(22, s=s)
    refs = _mast_refs(feats, labels0, 21)
    assert [d for _, _, d in refs] == [2, 2, None, None, None]
    assert mast.coarse_offset(feats[21], feats[5], 2).abs().max() < 1e-12
    paper = mast.step(feats[21], refs)
    assert torch.allclose(paper[:, :, s:], labels0[:, :, :-s], atol=1e-9)
    shared = mast.step(feats[21], refs, shared_offset=True)
    assert torch.allclose(shared[:, :, s:], labels0[:, :, s:], atol=1e-9)
    blurred = mast.step(feats[21], refs, half_pixel=True)
    assert (blurred[:, :, s:] - labels0[:, :, :-s]).abs().max() > 0.05


def test_mast_boundary_is_zero():
    """A short-term window position outside the image has logit 0 and label 0 in MAST."""
    h, w = 1, 1
    q = torch.ones(1, h, w, dtype=torch.float64)
    k = torch.ones(1, h, w, dtype=torch.float64) * 2
    lab = torch.ones(1, h, w, dtype=torch.float64)
    out = mast.step(q, [(k, lab, None)])  # 1 position with logit 2, 624 outside with logit 0
    assert out.item() == pytest.approx(math.exp(2) / (math.exp(2) + 624))
