"""The label-propagation protocols: which reference frames, which affinity, what is fed back.

| protocol | references | affinity | labels fed back |
|---|---|---|---|
| crw | frame 0 (global) + the 20 previous frames t-20..t-1, clamped to frame 0 (strict circle window, dy^2 + dx^2 < 144) | top-10 jointly over all, s = 20 | soft |
| mast | frames {0, 5} + {t-1, t-3, t-5}, square windows radius 12 (stride 4), outside positions logit 0 / label 0, raw features, s = 1; for t - x > 15 the window around a coarse dilated search's expected offset | one joint softmax | hard, at full resolution |
| uvc | frame 0 + the 7 previous frames, global, each reference on its own | top-5 of each reference's softmax (not renormalised), averaged; raw features, s = 1 | soft |
| cycletime | frame 0 + frames t-7..t-1, padded with copies of frame 0 (real frame 0 predicted too), global, each reference on its own | top-5 of each reference's softmax (not renormalised), summed / 8; s = sqrt(512) | soft, each channel min-max normalised |
| corrflow | the previous frame, square window radius 6, raw features, s = 1 | softmax | hard, at full resolution |
| dino | frame 0 + the 7 previous frames (never frame 0 twice), square window radius 12 on every reference | top-5 jointly over all, s = 10 | soft |

crw = ajabri/videowalk `code/test.py` with its README settings: the video is padded with 20
copies of frame 0 (so for t <= 20 frame 0 is a local reference 21 - t times as well as the
global one; `pad_first=False` takes it once), the circle is strict (`strict=False`: <= 144),
first labels are the one-hot mask resized bilinearly without antialiasing (cv2 INTER_LINEAR).

uvc = Liusifei/UVC `test.py` (pre_num 7, topk 5, temp 1): raw features, each reference's own
softmax, its top-5 weights kept as they are, the 1 + len(queue) results averaged and fed back;
first labels by PIL NEAREST, output x stride, min-max, argmax, nearest (kind "average").

corrflow = zlai0/CorrFlow `benchmark.py` / `models/colorizer.py`: raw features at scale 1, window
positions outside the image excluded, labels (first and fed back) as CorrFlow's `prep`: the id
mask at full resolution interpolated bilinearly as numbers and truncated ("ids_bilinear"); fed
back hard at full resolution. Not reproduced: its crop of frames to multiples of 8 and the
3-column shift of its saved masks (benchmark.py:107-118).

mast = zlai0/MAST `benchmark.py` / `models/colorizer.py`: raw features at scale 1, boundary "zero",
first and fed-back labels subsampled at each cell's top-left pixel, fed back hard at full
resolution, and its long-term memory: a reference x with t - x > 15 (frame 0 from t = 16, frame
5 from t = 21) is found by ROI localisation (a coarse dilated search gives each query's expected
offset; the fine radius-12 window is sampled around it; `roi=False` turns it off), each
reference with its own offset and exact bilinear sampling as the paper describes. The released code's two bugs are
options: `roi_shared_offset=True` (labels of every long-term reference sampled with the last
one's offset) and `roi_half_pixel=True` (grid_sample half a pixel off).

cycletime = xiaolonw/TimeCycle `test_davis.py`: L2 features, scale sqrt(512), each reference's
own softmax with its top-5 probabilities kept as they are, summed over the 8 references / 8;
the context is padded with copies of frame 0 and real frame 0 is itself predicted from 8 copies
(its prediction is the label of the short-term reference t - 7 = 0); every prediction is min-max
normalised per channel ((x - min) / max(x - min)) and fed back so; first labels: the one-hot
mask resized bilinearly without antialiasing (cv2 INTER_LINEAR), over TimeCycle's label set
(ids in order of first appearance with more than 10 pixels besides the first; a smaller object
is dropped, its pixels in no channel; `label_set="all"` tracks every object). Not reproduced:
its 320x320 squashing of the frames (the label set is counted on the mask as given).

dino = facebookresearch/dino `eval_video_segmentation.py` (n_last_frames 7,
size_mask_neighborhood 12, topk 5, temperature 0.1): first labels by PIL NEAREST of the id
mask to the grid, output upsampled bilinearly by the stride, each channel min-max normalised,
argmax, PIL NEAREST to the frame size. Its parameters are options: `get_protocol("dino",
n_last_frames=28, radius=15, topk=10, temperature=0.2)` is the DIFT/TED-style setting; it runs
on the windowed top-k kernel, in memory linear in the frame (never a (hw) x (hw) matrix).
Differences from DINO's script: frames are resized to multiples of the feature stride (DINO:
widths floored to multiples of 64); a channel that is constant and positive stays as it is
(DINO divides by zero).

Features are L2-normalised and the logits scaled by s = 1 / temperature (0.05 by default).
See docs/design.md ("Evaluation protocols").
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from densecorr.data.io import DataError


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring's table).

    Attributes:
        kind: "crw" (global first frame + local windows, joint top-k), "global", "local" or
            "average" (UVC: each reference's own top-k softmax, averaged).
        long_term: fixed reference frames (e.g. (0, 5) for MAST) kept once they exist.
        previous: offsets d of the short-term references t - d.
        radius, window: local window (feature cells) for "local" and "crw".
        topk: keep only the top-k logits (None: all).
        temperature: softmax temperature; the logit scale is 1 / temperature.
        feedback: "soft" (predicted distributions become references), "soft_minmax" (each channel
            min-max normalised over the frame, yielded and fed back: TimeCycle), "hard" (their argmax on
            the grid, one-hot) or "hard_full" (the argmax of the labels upsampled bilinearly by
            the stride, brought back to the grid by the `first` rule: CorrFlow, MAST).
        stride: feature stride used by the Lab baseline under this protocol (models have their own).
        first: how the first frame's id mask reaches the feature grid (labels.FIRST_RULES:
            "area" average, "bilinear" (cv2 INTER_LINEAR), "nearest" (PIL NEAREST)).
        output: how grid labels become the output mask (labels.OUTPUT_RULES: "bilinear" to the
            frame size then argmax; "minmax": x stride, per-channel min-max, argmax, nearest).
        features: "l2" (L2-normalised: cosine similarity) or "raw" (plain dot products).
        pad_first: (crw) the short-term references t - d are clamped to frame 0 instead of
            dropped, so frame 0 is also a local reference 21 - t times for t <= 20 (videowalk
            pads the video with copies of frame 0). False: frame 0 only once, as the global one.
        strict: (crw) the window excludes offsets at exactly the radius (videowalk: D < radius).
        boundary: (local) window positions outside the image: "mask" (excluded) or "zero"
            (logit 0, label 0: MAST's zero-padded correlation).
        predict_first: (cycletime, with pad_first) frame 0 is itself predicted from its padded
            copies, and a short-term reference t - d = 0 carries that prediction (reference id
            -1) while the copies t - d < 0 and the long-term frame 0 carry the given labels. A model
            that declares `similarity = "euclidean"` (the Lab baseline) is compared by distance
            under every protocol (densecorr.propagation.propagator).
        roi: (local) long-term memory with ROI localisation (MAST): a reference x with
            t - x > roi_after (MAST's `dil_int`, 15) is searched coarsely first -- the softmax of its
            logits over the window of `radius` dilated by d = min(roi_max_dilation,
            (t - x) // roi_after + 1), positions outside the image at logit 0, gives each query
            its expected offset (times d) -- and its fine window is taken around that offset
            (keys and labels sampled bilinearly), in the one joint softmax with the others.
            False: every reference in the plain window.
        roi_max_dilation: the largest coarse dilation (MAST: 4).
        roi_shared_offset, roi_half_pixel: MAST's released code, not its paper (both False by
            default): the long-term references' labels all sampled with the LAST long-term
            reference's offset (colorizer.py:101), and grid_sample read half a pixel off
            (position p at p * size / (size - 1) - 0.5, deform_im2col_util.py:14-42).
        label_set: which object ids of the first mask get a channel (labels.LABEL_SETS): "all",
            or "timecycle" (TimeCycle: in order of first appearance, only ids with more than 10
            pixels besides their first; a dropped id's pixels are in no channel, so it is not tracked).
    """

    name: str
    kind: str
    long_term: tuple
    previous: tuple
    radius: int | None = None
    window: str = "square"
    topk: int | None = None
    temperature: float = 0.05
    feedback: str = "soft"
    stride: int = 8
    features: str = "l2"
    first: str = "area"
    output: str = "bilinear"
    pad_first: bool = False
    strict: bool = False
    boundary: str = "mask"
    predict_first: bool = False
    label_set: str = "all"
    roi: bool = False
    roi_after: int = 15
    roi_max_dilation: int = 4
    roi_shared_offset: bool = False
    roi_half_pixel: bool = False

    def __post_init__(self):
        for name in ("roi_after", "roi_max_dilation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be an integer >= 1, got {value!r}")
        if self.label_set not in ("all", "timecycle"):
            raise DataError(f"unknown label_set {self.label_set!r}; choose 'all' or 'timecycle'")

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature

    def references(self, t: int) -> list[int]:
        """The reference frames for frame t (> 0), long-term first, without duplicates (with
        `pad_first`: the short-term ones t - d clamped to 0, duplicates kept)."""
        if self.pad_first:
            if self.predict_first:
                return [i for i in self.long_term if i < t] + [t - d if t > d else (-1 if t == d else 0) for d in self.previous]
            return [i for i in self.long_term if i < t] + [max(0, t - d) for d in self.previous]
        refs = [i for i in self.long_term if i < t]
        refs += [t - d for d in self.previous if t - d >= 0 and t - d not in refs]
        return refs

    def roi_dilation(self, t: int, ref: int) -> int | None:
        """The coarse-search dilation of reference `ref` for frame t, or None (plain window)."""
        if not self.roi or ref < 0 or t - ref <= self.roi_after:
            return None
        return min(self.roi_max_dilation, (t - ref) // self.roi_after + 1)

    def keep_after(self, t: int) -> set[int]:
        """Frames (<= t) that a later frame may still use as a reference."""
        horizon = max(self.previous)
        first = {-1} if self.predict_first and t + 1 <= horizon else set()
        return {i for i in self.long_term if i <= t} | set(range(max(0, t + 1 - horizon), t + 1)) | first


PROTOCOLS = {
    "crw": Protocol("crw", "crw", (0,), tuple(range(1, 21)), radius=12, window="circle", topk=10, feedback="soft", stride=8,
                    first="bilinear", pad_first=True, strict=True),
    "mast": Protocol("mast", "local", (0, 5), (1, 3, 5), radius=12, window="square", temperature=1.0, feedback="hard_full", stride=4,
                     features="raw", first="subsample", boundary="zero", roi=True),
    "uvc": Protocol("uvc", "average", (0,), tuple(range(1, 8)), topk=5, temperature=1.0, feedback="soft", stride=8,
                    features="raw", first="nearest", output="minmax"),
    "cycletime": Protocol("cycletime", "average", (0,), tuple(range(1, 8)), topk=5, temperature=512 ** -0.5, feedback="soft_minmax", stride=8,
                          first="bilinear", pad_first=True, predict_first=True, label_set="timecycle"),
    "corrflow": Protocol("corrflow", "local", (), (1,), radius=6, window="square", temperature=1.0, feedback="hard_full", stride=4,
                         features="raw", first="ids_bilinear"),
    "dino": Protocol("dino", "local", (0,), tuple(range(1, 8)), radius=12, window="square", topk=5, temperature=0.1,
                     feedback="soft", stride=8, first="nearest", output="minmax"),
}


def get_protocol(name: str | Protocol, n_last_frames: int | None = None, **overrides) -> Protocol:
    """A protocol by name, with fields replaced by the non-None `overrides` (e.g. temperature=0.07).

    n_last_frames=n: the short-term references are the n previous frames (previous = 1..n)."""
    if n_last_frames is not None:
        if isinstance(n_last_frames, bool) or not isinstance(n_last_frames, int) or n_last_frames < 1:
            raise DataError(f"n_last_frames must be an integer >= 1, got {n_last_frames!r}")
        overrides["previous"] = tuple(range(1, n_last_frames + 1))
    if isinstance(name, Protocol):
        proto = name
    else:
        if name not in PROTOCOLS:
            raise DataError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
        proto = PROTOCOLS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(proto, **overrides) if overrides else proto


__all__ = ["Protocol", "PROTOCOLS", "get_protocol"]
