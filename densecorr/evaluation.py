"""Evaluation loops: DAVIS J&F and BADJA keypoint PCK of label propagation, written once.

The CLI (`densecorr eval-davis`, `eval-keypoints`) and training's periodic evaluation both
call these. Each loop reads every frame once, checks the first mask once and calls an
optional hook for every frame, so the caller can write masks or overlays without a second
pass:

    results = list(davis_sequences(propagator, Davis(root), ["dog"], on_frame=hook))
    total = davis_total(results)                      # the DAVIS overall row

    evaluate_davis(model, root, max_frames=20, height=240, protocol="crw")   # one call, a dict

Scores follow densecorr.metrics (J = region IoU, F = boundary F). The frames scored are those
of the official davis2017-evaluation (semi-supervised task, davis2017/evaluation.py): every
annotated frame except the first (given) and the sequence's last annotated frame
(`all_gt_masks[:, 1:-1]`); with max_frames the last frame read is scored unless it is the
sequence's last. See docs/design.md ("Evaluation protocols") and docs/protocols.md.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from densecorr.data.io import DataError
from densecorr.system import peak_rss_mb

PCK_ALPHAS = (0.1, 0.2)
SCORED_FRAMES = "frames scored as the official davis2017-evaluation: all annotated frames except the first and the sequence's last"


def scored_frames(seq, n: int | None = None, official: bool = True) -> list[int]:
    """The frame indices of `seq` (among its first `n`) whose masks are scored: annotated, not
    frame 0 and, when `official`, not the sequence's last annotated frame (davis2017-evaluation
    scores `all_gt_masks[:, 1:-1]`)."""
    annotated = [i for i in range(len(seq)) if seq.has_mask(i)]
    if official and annotated:
        annotated = annotated[:-1]
    n = len(seq) if n is None else n
    return [i for i in annotated if 0 < i < n]


# --------------------------------------------------------------------------- DAVIS J&F


@dataclass
class SequenceResult:
    """One evaluated DAVIS sequence: its scores (densecorr.metrics.SequenceScores), the
    summary row (J&F, J/F mean, recall, decay, frames, s_per_frame, peak_mib) and its frames."""

    name: str
    scores: object
    row: dict
    frames: int


def davis_sequences(
    propagator,
    davis,
    sequences: Sequence[str] | None = None,
    max_frames: int | None = None,
    *,
    on_start: Callable[[object, int], None] | None = None,
    on_frame: Callable[[object, int, np.ndarray, np.ndarray], None] | None = None,
    progress: bool = False,
    official: bool = True,
) -> Iterator[SequenceResult]:
    """Propagate each sequence's first-frame mask and score every annotated later frame.

    Args:
        propagator: a densecorr.propagation.Propagator (model, protocol, device, height).
        davis: a densecorr.data.Davis (or the root folder of one).
        sequences: names (default: the root's list); every name is checked before any work.
        max_frames: only the first N frames of each sequence (None: all; >= 2).
        on_start(seq, n): called before a sequence's frames, with the number of frames used.
        on_frame(seq, t, frame, mask): called for t = 0 (the ground-truth first mask) and for
            each predicted frame t >= 1, in order (frame uint8 (H, W, 3), mask ids (H, W)).
        progress: a tqdm bar per sequence.
        official: score the frames of the official davis2017-evaluation (every annotated frame
            but the first and the sequence's last, `scored_frames`); False: the last one too.
    Yields:
        a SequenceResult after each sequence (its row's "frames" = the number of frames scored).
    Raises:
        DataError: an unknown sequence, an empty first mask, a mask of another size than the frames.
    """
    from densecorr.data.davis import Davis
    from densecorr.metrics import SequenceScores
    from densecorr.propagation import check_first_mask, propagate_mask

    if isinstance(davis, (str, os.PathLike)):
        davis = Davis(os.fspath(davis))
    if max_frames is not None and max_frames < 2:
        raise DataError(f"max_frames must be >= 2, got {max_frames}")
    names = list(sequences) if sequences is not None else list(davis.sequences)
    seqs = [davis[n] for n in names]  # checks every name before any work
    for seq in seqs:
        n = len(seq) if max_frames is None else min(len(seq), max_frames)
        frames = (seq.frames[i] for i in range(n))
        first_frame = next(frames)
        first = seq.mask(0)
        try:
            ids = check_first_mask(first, first_frame.shape)
        except DataError as exc:
            raise DataError(f"sequence {seq.name!r}: {exc}") from None
        score = SequenceScores(seq.name, ids)
        scored = set(scored_frames(seq, n, official))
        if on_start is not None:
            on_start(seq, n)
        if on_frame is not None:
            on_frame(seq, 0, first_frame, first)
        propagator.timer = 0.0
        peak_rss_mb(reset=True)
        stream = propagate_mask(propagator, itertools.chain([first_frame], frames), first, seq.name if progress else None, n - 1, ids=ids)
        for t, frame, mask in stream:
            if on_frame is not None:
                on_frame(seq, t, frame, mask)
            if t in scored:
                gt = seq.mask(t)
                if gt.shape != mask.shape:
                    raise DataError(
                        f"sequence {seq.name!r}: the ground-truth mask {seq.mask_files[t]!r} is {gt.shape[1]}x{gt.shape[0]} "
                        f"but the frames are {mask.shape[1]}x{mask.shape[0]}; every mask must have its frame's size"
                    )
                score.add(seq.names[t], mask, gt)
        row = score.summary()
        row["s_per_frame"] = propagator.timer / max(1, n - 1)
        row["peak_mib"] = peak_rss_mb()
        yield SequenceResult(seq.name, score, row, n)


def davis_total(results: Iterable[SequenceResult]) -> dict:
    """The overall row (densecorr.metrics.overall: statistics over all objects of all
    sequences) with the mean s_per_frame and the largest peak_mib."""
    from densecorr.metrics import overall

    results = list(results)
    total = overall([r.scores for r in results])
    rows = [r.row for r in results]
    total["s_per_frame"] = float(np.mean([r["s_per_frame"] for r in rows])) if rows else float("nan")
    total["peak_mib"] = float(max(r["peak_mib"] for r in rows)) if rows else float("nan")
    return total


def evaluate_davis(model, root: str | None = None, sequences: Sequence[str] | None = None, max_frames: int | None = 20,
                   height: int | None = 240, protocol: str = "crw", device="cpu", *,
                   on_frame: Callable | None = None, progress: bool = False) -> dict:
    """J&F of label propagation with `model` (embed/stride) on DAVIS sequences: the first
    `max_frames` frames of each, processed at `height` (None: native), with `protocol`.

    `model` is put in eval mode for the evaluation and back in its former mode after it.
    Returns the overall row of densecorr.metrics.overall plus "sequences" (per-sequence J&F)
    and "seconds" (time spent propagating). `root` defaults to
    densecorr.data.paths.default_davis_root() (../shared/data/davis2016_subset or the sample).
    """
    from densecorr.data.paths import default_davis_root
    from densecorr.metrics import overall
    from densecorr.propagation import Propagator

    root = root or default_davis_root()[0]
    propagator = Propagator(model, protocol, device=device, height=height)
    was_training = model.training
    model.eval()
    seconds = 0.0
    results = []
    try:
        for result in davis_sequences(propagator, root, sequences, max_frames, on_frame=on_frame, progress=progress):
            seconds += propagator.timer
            results.append(result)
    finally:
        model.train(was_training)
    out = overall([r.scores for r in results])
    out["sequences"] = {r.name: r.row["J&F"] for r in results}
    out["seconds"] = seconds
    return out


# --------------------------------------------------------------------------- keypoints (BADJA PCK)


@dataclass
class KeypointResult:
    """One sequence's PCK: the row (sequence, frames, annotated, joints, PCK@alpha, s_per_frame,
    peak_mib) and the (correct, total) counts per alpha."""

    name: str
    row: dict
    counts: dict = field(default_factory=dict)


def keypoint_sequences(
    propagator,
    davis,
    annotations: str,
    sequences: Sequence[str] | None = None,
    sigma: float = 1.0,
    alphas: Sequence[float] = PCK_ALPHAS,
    *,
    on_frame: Callable[[str, int, np.ndarray], None] | None = None,
    progress: bool = False,
) -> Iterator[KeypointResult]:
    """Propagate each sequence's first annotated BADJA joints and score PCK on the later
    annotated frames (joints visible in the start and the target frame; threshold alpha x the
    larger side of the box of the target frame's visible joints).

    Args:
        davis: a densecorr.data.Davis (or its root) holding the sequences' frames.
        annotations: folder of BADJA <sequence>.json files.
        sequences: names (default: every .json file in `annotations`).
        sigma: heat-map standard deviation in feature cells (> 0).
        on_frame(name, t, xy): called for each propagated frame t >= 1 (t counted from the
            first annotated frame) with the predicted (J, 2) positions.
    Yields:
        a KeypointResult per sequence.
    """
    from densecorr.data.badja import BADJA_SOURCE_SIZE, read_badja
    from densecorr.data.davis import Davis
    from densecorr.metrics import pck
    from densecorr.propagation import propagate_keypoints

    if isinstance(davis, (str, os.PathLike)):
        davis = Davis(os.fspath(davis))
    if not os.path.isdir(annotations):
        raise DataError(f"no BADJA annotation folder {annotations!r}; pass --annotations")
    names = list(sequences) if sequences is not None else sorted(os.path.splitext(f)[0] for f in os.listdir(annotations) if f.endswith(".json"))
    if not names:
        raise DataError(f"no <sequence>.json files in {annotations!r}")
    if not sigma > 0 or not np.isfinite(sigma):
        raise DataError(f"sigma must be a finite number > 0, got {sigma}")
    seqs = [davis[n] for n in names]
    for name, seq in zip(names, seqs):
        # joints in BADJA's own pixels first: the frames' size is known once the first one is read
        ann = read_badja(os.path.join(annotations, name + ".json"), BADJA_SOURCE_SIZE)
        index = {n: i for i, n in enumerate(seq.names)}
        ann = [a for a in ann if a.name in index and a.visible.any()]
        if len(ann) < 2:
            raise DataError(f"sequence {name!r}: BADJA needs at least two annotated frames with visible joints among its frames")
        start, end = index[ann[0].name], index[ann[-1].name]
        frames = (seq.frames[i] for i in range(start, end + 1))
        first_frame = next(frames)
        H, W = first_frame.shape[:2]
        sx, sy = W / BADJA_SOURCE_SIZE[0], H / BADJA_SOURCE_SIZE[1]
        for a in ann:  # read_badja's scaling to (W, H), the same floating-point products
            a.xy = a.xy * np.array([sx, sy])
        joints = np.nonzero(ann[0].visible)[0]
        targets = {index[a.name] - start: a for a in ann[1:]}
        counts = {a: [0, 0] for a in alphas}
        propagator.timer = 0.0
        peak_rss_mb(reset=True)
        stream = propagate_keypoints(propagator, itertools.chain([first_frame], frames), ann[0].xy[joints], sigma, name if progress else None, end - start)
        for t, xy in stream:
            if on_frame is not None:
                on_frame(name, t, xy)
            if t in targets:
                a = targets[t]
                for alpha in alphas:
                    c, n = pck(xy, a.xy[joints], a.visible[joints], alpha)
                    counts[alpha][0] += c
                    counts[alpha][1] += n
        row = {"sequence": name, "frames": end - start + 1, "annotated": len(targets), "joints": int(counts[alphas[0]][1])}
        for alpha in alphas:
            row[f"PCK@{alpha}"] = counts[alpha][0] / counts[alpha][1] if counts[alpha][1] else float("nan")
        row["s_per_frame"] = propagator.timer / max(1, end - start)
        row["peak_mib"] = peak_rss_mb()
        yield KeypointResult(name, row, counts)


def keypoint_total(results: Iterable[KeypointResult], alphas: Sequence[float] = PCK_ALPHAS) -> dict:
    """The "mean" row: PCK over all joints of all sequences (counts pooled), mean s_per_frame,
    largest peak_mib."""
    results = list(results)
    rows = [r.row for r in results]
    totals = {a: [sum(r.counts[a][0] for r in results), sum(r.counts[a][1] for r in results)] for a in alphas}
    total = {"sequence": "mean", "frames": sum(r["frames"] for r in rows), "annotated": sum(r["annotated"] for r in rows), "joints": totals[alphas[0]][1]}
    for alpha in alphas:
        total[f"PCK@{alpha}"] = totals[alpha][0] / totals[alpha][1] if totals[alpha][1] else float("nan")
    total["s_per_frame"] = float(np.mean([r["s_per_frame"] for r in rows])) if rows else float("nan")
    total["peak_mib"] = float(max(r["peak_mib"] for r in rows)) if rows else float("nan")
    return total


def evaluate_keypoints(model, root: str | None = None, annotations: str | None = None, sequences: Sequence[str] | None = None,
                       height: int | None = None, protocol: str = "crw", device="cpu", sigma: float = 1.0) -> dict:
    """PCK of keypoint propagation with `model` on BADJA joint tracks: the "mean" row of
    `keypoint_total` plus "sequences" (per-sequence rows). `annotations` defaults to
    ROOT/BADJA/joint_annotations."""
    from densecorr.data.paths import default_davis_root
    from densecorr.propagation import Propagator

    root = root or default_davis_root()[0]
    propagator = Propagator(model, protocol, device=device, height=height)
    was_training = model.training
    model.eval()
    try:
        results = list(keypoint_sequences(propagator, root, annotations or os.path.join(root, "BADJA", "joint_annotations"), sequences, sigma))
    finally:
        model.train(was_training)
    out = keypoint_total(results)
    out["sequences"] = [r.row for r in results]
    return out


__all__ = [
    "SequenceResult", "SCORED_FRAMES", "scored_frames", "davis_sequences", "davis_total", "evaluate_davis",
    "KeypointResult", "keypoint_sequences", "keypoint_total", "evaluate_keypoints", "PCK_ALPHAS",
]
