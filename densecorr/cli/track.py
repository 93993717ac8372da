"""`densecorr track VIDEO_OR_FOLDER --mask FIRST.png [--out DIR]`: propagate a first-frame mask.

Writes masks/ (one PNG per frame: palette, or 16-bit when ids exceed 255), overlays/ (JPEGs)
and overlay.gif into --out (default tracked/<video name>), all three moved into place together
when complete. Each frame is read once (the frame count of a video file comes from its
container's metadata) and the first mask is checked once.
"""
from __future__ import annotations

import itertools
import os

from densecorr.cli import common
from densecorr.data.io import DataError

NAME = "track"
ENTRIES = ["masks", "overlays", "overlay.gif"]


def add(sub) -> None:
    p = sub.add_parser(NAME, help="track the objects of a first-frame mask through a video or folder of frames")
    p.add_argument("video", metavar="VIDEO_OR_FOLDER", help="a video file (mp4, avi, webm, ...) or a folder of frames")
    p.add_argument("--mask", required=True, help="first-frame mask: 0/255 PNG (one object), palette PNG (pixel value = object id) or 16-bit PNG (more than 255 objects)")
    p.add_argument("--out", default=None, help="output folder for masks/ (PNGs), overlays/ (JPEGs) and overlay.gif (default tracked/<video name>)")
    common.add_model_args(p)


def default_out(video: str) -> str:
    base = os.path.basename(os.path.normpath(video))
    stem = base if os.path.isdir(video) else os.path.splitext(base)[0]
    return os.path.join("tracked", stem or "video")


def run(args) -> int:
    from densecorr.cli.output import OutputDir
    from densecorr.data.io import FrameSource, read_mask
    from densecorr.propagation import check_first_mask, propagate_mask
    from densecorr.system import peak_rss_mb

    out = OutputDir(args.out if args.out is not None else default_out(args.video), overwrite=args.overwrite)
    frames = FrameSource(args.video, count="estimate")
    first_mask = read_mask(args.mask)
    out.claim(ENTRIES)
    stream = iter(frames)
    try:
        first_frame = next(stream)
    except StopIteration:
        raise DataError(f"{args.video!r} has no frames") from None
    ids = check_first_mask(first_mask, first_frame.shape)
    propagator, desc = common.make_propagator(args)
    n = len(frames)
    about = "" if frames.exact else "about "
    print(f"tracking {about}{n} frames of {args.video} with {desc}, protocol {propagator.protocol.name}; writing to {out.given}", flush=True)
    peak_rss_mb(reset=True)
    count = 1
    try:
        with out.entries_together(ENTRIES) as paths:
            writer = common.Writer(paths["masks"], paths["overlays"], paths["overlay.gif"], n)
            writer.add(frames.name(0), first_frame, first_mask)
            bar = None if args.quiet else os.path.basename(os.path.normpath(args.video))
            for t, frame, mask in propagate_mask(propagator, itertools.chain([first_frame], stream), first_mask, bar, n - 1, ids=ids):
                writer.add(frames.name(t), frame, mask)
                count += 1
            writer.close()
    except BaseException:
        out.abandon()
        raise
    spf = propagator.timer / max(1, count - 1)
    print(f"wrote {count} masks to {os.path.join(out.given, 'masks')}, overlays and overlay.gif; {spf:.3f} s/frame, peak memory {peak_rss_mb():.0f} MiB")
    return 0
