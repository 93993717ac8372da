"""The `densecorr` command.

    densecorr track VIDEO_OR_FOLDER --mask FIRST.png --out DIR [--model default] [--protocol crw]
    densecorr eval-davis [--root DAVIS_ROOT] [--sequences ...] [--model ...] [--protocol ...] [--out DIR]
    densecorr eval-keypoints [--root DAVIS_ROOT] [--sequences ...] [--model ...] [--protocol ...]

Each subcommand is a pair of small functions: `add_<name>(subparsers)` declares its
arguments and `cmd_<name>(args) -> exit status` runs it; register a new one in SUBCOMMANDS.
Bad input ends with a one-line `densecorr: error: ...` and exit status 2. Outputs are written
into a staging folder next to the destination and moved into place only when complete.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from densecorr.data.io import DataError

MAX_GIF_FRAMES = 150
GIF_WIDTH = 360


# --------------------------------------------------------------------------- shared helpers


def _add_model_args(p: argparse.ArgumentParser, default_protocol: str = "crw") -> None:
    from densecorr.propagation import PROTOCOLS

    p.add_argument("--model", default="default", help="'default' (the trained checkpoint shipped in the package; the default), 'lab' (Lab-pixel baseline), a model name registered in densecorr.models (random init), or a checkpoint path")
    p.add_argument("--protocol", default=default_protocol, help=f"label-propagation protocol: {', '.join(PROTOCOLS)} (default {default_protocol})")
    p.add_argument("--height", type=int, default=None, help="process frames at this height in pixels (aspect kept) for speed; outputs and scores stay at the frames' size (default: native)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default: the protocol's, 0.05)")
    p.add_argument("--stride", type=int, default=None, help="feature stride of the 'lab' baseline (default: the protocol's: 8 for crw/uvc/cycletime, 4 for mast/corrflow)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _propagator(args, log=print):
    """The model and Propagator that the model arguments ask for."""
    import torch

    from densecorr.propagation import Propagator, get_protocol, load_model

    protocol = get_protocol(args.protocol, temperature=args.temperature)
    if args.temperature is not None and not args.temperature > 0:
        raise DataError(f"--temperature must be > 0, got {args.temperature}")
    if args.height is not None and args.height < 8:
        raise DataError(f"--height must be >= 8 pixels, got {args.height}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise DataError(f"unknown --device {args.device!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    model, desc = load_model(args.model, device=device, stride=args.stride or protocol.stride, log=log)
    return Propagator(model, protocol, device=device, height=args.height), desc


@contextmanager
def staged_output(dest: str):
    """Yields a fresh staging folder; on success its entries replace those of `dest` (created if
    needed), on failure it is removed, so a half-written output never looks complete."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dest))}.partial-", dir=parent)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not os.path.isdir(dest):
        if os.path.exists(dest):
            shutil.rmtree(stage, ignore_errors=True)
            raise DataError(f"--out {dest!r} exists and is not a folder")
        os.replace(stage, dest)
        return
    for name in os.listdir(stage):
        target = os.path.join(dest, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(stage, name), target)
    os.rmdir(stage)


class _Writer:
    """Writes masks, overlays and a GIF of one sequence into `folder`."""

    def __init__(self, folder: str, total: int, overlays: bool = True):
        self.masks = os.path.join(folder, "masks")
        self.overlays = os.path.join(folder, "overlays") if overlays else None
        self.gif_path = os.path.join(folder, "overlay.gif")
        os.makedirs(self.masks)
        if self.overlays:
            os.makedirs(self.overlays)
        self.gif_every = max(1, math.ceil(total / MAX_GIF_FRAMES))
        self.gif_frames = []
        self.count = 0

    def add(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        from PIL import Image

        from densecorr.data.io import overlay, write_mask

        write_mask(os.path.join(self.masks, name + ".png"), mask)
        if self.overlays:
            ov = Image.fromarray(overlay(frame, mask))
            ov.save(os.path.join(self.overlays, name + ".jpg"), quality=88)
            if self.count % self.gif_every == 0:
                scale = min(1.0, GIF_WIDTH / ov.width)
                small = ov.resize((max(1, round(ov.width * scale)), max(1, round(ov.height * scale))), Image.BILINEAR)
                self.gif_frames.append(small.quantize(colors=255, method=Image.Quantize.MEDIANCUT))
        self.count += 1

    def close(self) -> None:
        if self.gif_frames:
            first, rest = self.gif_frames[0], self.gif_frames[1:]
            first.save(self.gif_path, save_all=True, append_images=rest, duration=100 * self.gif_every, loop=0)
        self.gif_frames = []


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _print_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> None:
    """Print rows as a plain table; columns are (key, header, digits; -1 = text)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([str(r.get(k, "")) if d < 0 else _fmt(r.get(k), d) for k, _, d in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0 or (n == len(cells) - 2 and rows and rows[-1].get("sequence") == "mean"):
            print("  ".join("-" * w for w in widths))


def _write_csv(path: str, rows: list[dict]) -> None:
    keys = list(rows[0].keys())
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _meta(args, model_desc: str, root: str, propagator) -> dict:
    import platform

    import torch

    import densecorr

    return {
        "model": args.model,
        "model_description": model_desc,
        "protocol": propagator.protocol.name,
        "protocol_settings": {k: v for k, v in vars(propagator.protocol).items() if k != "name"},
        "height": args.height,
        "device": str(propagator.device),
        "root": os.path.abspath(root),
        "densecorr": densecorr.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _model_tag(spec: str) -> str:
    return os.path.splitext(os.path.basename(spec))[0] or "model"


# --------------------------------------------------------------------------- track


def add_track(sub) -> None:
    p = sub.add_parser("track", help="track the objects of a first-frame mask through a video or folder of frames")
    p.add_argument("video", metavar="VIDEO_OR_FOLDER", help="a video file (mp4, avi, webm, ...) or a folder of frames")
    p.add_argument("--mask", required=True, help="first-frame mask: 0/255 PNG (one object) or palette PNG (pixel value = object id)")
    p.add_argument("--out", required=True, help="output folder: masks/ (palette PNGs), overlays/ (JPEGs), overlay.gif")
    _add_model_args(p)
    p.set_defaults(func=cmd_track)


def cmd_track(args) -> int:
    from densecorr.data.io import FrameSource, read_mask
    from densecorr.propagation import check_first_mask, peak_rss_mb, propagate_mask

    frames = FrameSource(args.video)
    first_mask = read_mask(args.mask)
    first_frame = frames[0]
    check_first_mask(first_mask, first_frame.shape)
    propagator, desc = _propagator(args)
    n = len(frames)
    print(f"tracking {n} frames of {args.video} with {desc}, protocol {propagator.protocol.name}")
    peak_rss_mb(reset=True)
    with staged_output(args.out) as stage:
        writer = _Writer(stage, n)
        writer.add(frames.names[0], first_frame, first_mask)
        for t, frame, mask in propagate_mask(propagator, frames, first_mask, None if args.quiet else os.path.basename(args.video.rstrip("/")), n - 1):
            writer.add(frames.names[t], frame, mask)
        writer.close()
    spf = propagator.timer / max(1, n - 1)
    print(f"wrote {n} masks to {os.path.join(args.out, 'masks')}, overlays and overlay.gif; {spf:.3f} s/frame, peak memory {peak_rss_mb():.0f} MiB")
    return 0


# --------------------------------------------------------------------------- eval-davis


def _davis_root(args) -> str:
    from densecorr.data.paths import default_davis_root

    if args.root:
        return args.root
    root, is_sample = default_davis_root()
    if is_sample:
        print(f"note: ../shared/data/davis2016_subset not found; evaluating the sample shipped in the package ({root}: 20 frames of horsejump-high, DAVIS CC BY-NC 4.0)")
    else:
        print(f"using DAVIS root {root}")
    return root


def add_eval_davis(sub) -> None:
    p = sub.add_parser("eval-davis", help="J&F of label propagation on DAVIS sequences")
    p.add_argument("--root", default=None, help="DAVIS root (JPEGImages/, Annotations/); default ../shared/data/davis2016_subset when present, else the shipped sample")
    p.add_argument("--sequences", nargs="+", default=None, help="sequence names (default: the root's ImageSets val list)")
    p.add_argument("--out", default=None, help="output folder for results.csv, results.json and per-sequence masks/overlays (default eval-davis-<model>-<protocol>)")
    p.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames of each sequence (quick checks)")
    p.add_argument("--no-overlays", action="store_true", help="write only masks and results, no overlay images")
    _add_model_args(p)
    p.set_defaults(func=cmd_eval_davis)


def cmd_eval_davis(args) -> int:
    from densecorr.data.davis import Davis, object_ids
    from densecorr.metrics import SequenceScores, overall
    from densecorr.propagation import peak_rss_mb, propagate_mask

    root = _davis_root(args)
    davis = Davis(root)
    names = args.sequences or davis.sequences
    sequences = [davis[n] for n in names]  # checks every name before any work
    if args.max_frames is not None and args.max_frames < 2:
        raise DataError(f"--max-frames must be >= 2, got {args.max_frames}")
    propagator, desc = _propagator(args)
    out = args.out or f"eval-davis-{_model_tag(args.model)}-{propagator.protocol.name}"
    print(f"model {desc}, protocol {propagator.protocol.name}, {len(sequences)} sequences, height {args.height or 'native'}")
    rows, scores = [], []
    with staged_output(out) as stage:
        for seq in sequences:
            n = len(seq) if args.max_frames is None else min(len(seq), args.max_frames)
            first = seq.mask(0)
            ids = object_ids(first)
            if not ids:
                raise DataError(f"sequence {seq.name!r}: the first-frame annotation is empty")
            score = SequenceScores(seq.name, ids)
            writer = _Writer(os.path.join(stage, seq.name), n, overlays=not args.no_overlays)
            writer.add(seq.names[0], seq.frames[0], first)
            propagator.timer = 0.0
            peak_rss_mb(reset=True)
            frames = (seq.frames[i] for i in range(n))
            for t, frame, mask in propagate_mask(propagator, frames, first, None if args.quiet else seq.name, n - 1):
                writer.add(seq.names[t], frame, mask)
                if seq.has_mask(t):
                    score.add(seq.names[t], mask, seq.mask(t))
            writer.close()
            row = score.summary()
            row["s_per_frame"] = propagator.timer / max(1, n - 1)
            row["peak_mib"] = peak_rss_mb()
            rows.append(row)
            scores.append(score)
            # one line per sequence, also with --quiet (which only hides the progress bars)
            print(f"{seq.name}: J&F {row['J&F']:.3f} (J {row['J_mean']:.3f}, F {row['F_mean']:.3f}), {row['s_per_frame']:.3f} s/frame", flush=True)
        total = overall(scores)
        total["s_per_frame"] = float(np.mean([r["s_per_frame"] for r in rows]))
        total["peak_mib"] = float(max(r["peak_mib"] for r in rows))
        rows.append(total)
        _write_csv(os.path.join(stage, "results.csv"), rows)
        with open(os.path.join(stage, "results.json"), "w") as f:
            json.dump({"meta": _meta(args, desc, root, propagator), "sequences": rows[:-1], "mean": total,
                       "per_frame": {s.name: {"frames": s.frames, "J": s.j, "F": s.f} for s in scores}}, f, indent=1)
    print()
    _print_table(rows, [("sequence", "sequence", -1), ("frames", "frames", -1), ("J&F", "J&F", 3), ("J_mean", "J", 3), ("F_mean", "F", 3),
                        ("J_recall", "J-recall", 3), ("J_decay", "J-decay", 3), ("s_per_frame", "s/frame", 3), ("peak_mib", "peak MiB", 0)])
    print(f"\nwrote {os.path.join(out, 'results.csv')}, results.json and per-sequence masks/ and overlays/ in {out}")
    return 0


# --------------------------------------------------------------------------- eval-keypoints


def add_eval_keypoints(sub) -> None:
    p = sub.add_parser("eval-keypoints", help="PCK of keypoint propagation on BADJA joint tracks")
    p.add_argument("--root", default=None, help="DAVIS root holding BADJA/joint_annotations/<seq>.json (default as for eval-davis)")
    p.add_argument("--annotations", default=None, help="folder of BADJA <seq>.json files (default ROOT/BADJA/joint_annotations)")
    p.add_argument("--sequences", nargs="+", default=None, help="sequence names (default: every annotated sequence)")
    p.add_argument("--sigma", type=float, default=1.0, help="heat-map standard deviation in feature cells (default 1)")
    p.add_argument("--out", default=None, help="folder for results.csv / results.json (default eval-keypoints-<model>-<protocol>)")
    _add_model_args(p)
    p.set_defaults(func=cmd_eval_keypoints)


def cmd_eval_keypoints(args) -> int:
    from densecorr.data.badja import read_badja
    from densecorr.data.davis import Davis
    from densecorr.metrics import pck
    from densecorr.propagation import peak_rss_mb, propagate_keypoints

    root = _davis_root(args)
    davis = Davis(root)
    ann_dir = args.annotations or os.path.join(root, "BADJA", "joint_annotations")
    if not os.path.isdir(ann_dir):
        raise DataError(f"no BADJA annotation folder {ann_dir!r}; pass --annotations")
    names = args.sequences or sorted(os.path.splitext(f)[0] for f in os.listdir(ann_dir) if f.endswith(".json"))
    if not names:
        raise DataError(f"no <sequence>.json files in {ann_dir!r}")
    if not args.sigma > 0:
        raise DataError(f"--sigma must be > 0, got {args.sigma}")
    propagator, desc = _propagator(args)
    out = args.out or f"eval-keypoints-{_model_tag(args.model)}-{propagator.protocol.name}"
    print(f"model {desc}, protocol {propagator.protocol.name}, {len(names)} sequences, height {args.height or 'native'}")
    alphas = (0.1, 0.2)
    rows = []
    totals = {a: [0, 0] for a in alphas}
    for name in names:
        seq = davis[name]
        first = seq.frames[0]
        ann = read_badja(os.path.join(ann_dir, name + ".json"), (first.shape[1], first.shape[0]))
        index = {n: i for i, n in enumerate(seq.names)}
        ann = [a for a in ann if a.name in index]
        ann = [a for a in ann if a.visible.any()]
        if len(ann) < 2:
            raise DataError(f"sequence {name!r}: BADJA needs at least two annotated frames with visible joints among its frames")
        start, end = index[ann[0].name], index[ann[-1].name]
        joints = np.nonzero(ann[0].visible)[0]
        targets = {index[a.name] - start: a for a in ann[1:]}
        counts = {a: [0, 0] for a in alphas}
        propagator.timer = 0.0
        peak_rss_mb(reset=True)
        frames = (seq.frames[i] for i in range(start, end + 1))
        for t, xy in propagate_keypoints(propagator, frames, ann[0].xy[joints], args.sigma, None if args.quiet else name, end - start):
            if t in targets:
                a = targets[t]
                for alpha in alphas:
                    c, n = pck(xy, a.xy[joints], a.visible[joints], alpha)
                    counts[alpha][0] += c
                    counts[alpha][1] += n
        row = {"sequence": name, "frames": end - start + 1, "annotated": len(targets), "joints": int(counts[0.1][1])}
        for alpha in alphas:
            row[f"PCK@{alpha}"] = counts[alpha][0] / counts[alpha][1] if counts[alpha][1] else float("nan")
            totals[alpha][0] += counts[alpha][0]
            totals[alpha][1] += counts[alpha][1]
        row["s_per_frame"] = propagator.timer / max(1, end - start)
        row["peak_mib"] = peak_rss_mb()
        rows.append(row)
    total = {"sequence": "mean", "frames": sum(r["frames"] for r in rows), "annotated": sum(r["annotated"] for r in rows), "joints": totals[0.1][1]}
    for alpha in alphas:
        total[f"PCK@{alpha}"] = totals[alpha][0] / totals[alpha][1] if totals[alpha][1] else float("nan")
    total["s_per_frame"] = float(np.mean([r["s_per_frame"] for r in rows]))
    total["peak_mib"] = float(max(r["peak_mib"] for r in rows))
    rows.append(total)
    with staged_output(out) as stage:
        _write_csv(os.path.join(stage, "results.csv"), rows)
        with open(os.path.join(stage, "results.json"), "w") as f:
            meta = _meta(args, desc, root, propagator)
            meta.update(sigma=args.sigma, pck="joints visible in the start and target frame; threshold alpha x max side of the box of the target frame's visible joints")
            json.dump({"meta": meta, "sequences": rows[:-1], "mean": total}, f, indent=1)
    print()
    _print_table(rows, [("sequence", "sequence", -1), ("annotated", "frames scored", -1), ("joints", "joints", -1), ("PCK@0.1", "PCK@0.1", 3), ("PCK@0.2", "PCK@0.2", 3),
                        ("s_per_frame", "s/frame", 3), ("peak_mib", "peak MiB", 0)])
    print(f"\nwrote {os.path.join(out, 'results.csv')} and results.json")
    return 0


# --------------------------------------------------------------------------- main

def add_train(sub) -> None:
    # Options belong to densecorr.training's own parser (also used by examples/train.py).
    # main() hands it every argument after "train".
    p = sub.add_parser("train", add_help=False, help="train a model on unlabelled video (densecorr train --help)")
    p.set_defaults(func=cmd_train, forwards_arguments=True)


def cmd_train(args, rest: list[str]) -> int:
    from densecorr import training

    return training.main(rest, prog="densecorr train")


SUBCOMMANDS = [add_track, add_eval_davis, add_eval_keypoints, add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densecorr", description="Dense-correspondence tracking and evaluation (label propagation, DAVIS J&F, BADJA PCK).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `densecorr` console script; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "forwards_arguments", False):
        return args.func(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except DataError as exc:
        print(f"densecorr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densecorr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
