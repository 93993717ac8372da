"""What the subcommands share: argument types that refuse bad numbers in one line, the model
and protocol arguments, the per-sequence writer of masks and overlays, and table/CSV output."""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import numpy as np

from densecorr.data.io import DataError

MAX_GIF_FRAMES = 150
GIF_WIDTH = 360


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: ...; see prog --help`), exit 2."""

    def error(self, message):  # noqa: D401  (argparse's API)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- argument types


def int_at_least(low: int):
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (refuses nan, inf, 0 and negatives)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# --------------------------------------------------------------------------- model arguments


def add_model_args(p: argparse.ArgumentParser, default_protocol: str = "dino") -> None:
    from densecorr.propagation import PROTOCOLS

    p.add_argument("--model", default="default", help="'default' (the trained checkpoint shipped in the package; the default), 'lab' (Lab-pixel baseline), a model name registered in densecorr.models (its trained checkpoint shipped in the package), NAME:init (that network randomly initialised), or a checkpoint path")
    p.add_argument("--protocol", default=default_protocol, help=f"label-propagation protocol: {', '.join(PROTOCOLS)} (default {default_protocol})")
    p.add_argument("--height", type=int_at_least(8), default=None, help="process frames at this height in pixels (>= 8; aspect kept) for speed; outputs and scores stay at the frames' size (default: native)")
    p.add_argument("--temperature", type=positive_float, default=None, help="softmax temperature (default: the protocol's: crw 0.05, dino 0.1, cycletime 1/sqrt(512), uvc/corrflow/mast 1 on raw features, or what a trained model declares)")
    p.add_argument("--stride", type=int_at_least(1), default=None, help="feature stride of the 'lab' baseline (default: the protocol's: 8 for crw/uvc/cycletime/dino, 4 for mast/corrflow)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace entries of --out that were not written by densecorr (by default such a clash is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def make_propagator(args, log=print):
    """(Propagator, model description) for the model arguments."""
    import torch

    from densecorr.models import load
    from densecorr.propagation import Propagator, get_protocol

    protocol = get_protocol(args.protocol, temperature=args.temperature)
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise DataError(f"unknown --device {args.device!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    model, desc = load(args.model, device=device, stride=args.stride or protocol.stride, log=log)
    return Propagator(model, protocol, device=device, height=args.height), desc


def model_tag(spec: str) -> str:
    return os.path.splitext(os.path.basename(spec))[0] or "model"


def davis_root(args) -> str:
    from densecorr.data.paths import default_davis_root

    if args.root:
        return args.root
    root, is_sample = default_davis_root()
    if is_sample:
        print(f"note: ../shared/data/davis2016_subset not found; evaluating the sample shipped in the package ({root}: 20 frames of horsejump-high, DAVIS CC BY-NC 4.0)")
    else:
        print(f"using DAVIS root {root}")
    return root


def settings(args, model_desc: str, root: str, propagator) -> dict:
    """What determines an evaluation's scores (results merge only across equal settings)."""
    return {
        "model": args.model,
        "model_description": model_desc,
        "protocol": propagator.protocol.name,
        "protocol_settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(propagator.protocol).items() if k != "name"},
        "height": args.height,
        "root": os.path.abspath(root),
    }


def meta(args, model_desc: str, root: str, propagator) -> dict:
    import platform

    import torch

    import densecorr

    return {
        **settings(args, model_desc, root, propagator),
        "device": str(propagator.device),
        "densecorr": densecorr.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --------------------------------------------------------------------------- writing


class Writer:
    """Writes masks/ (PNGs: palette, or 16-bit for ids > 255), overlays/ (JPEGs) and overlay.gif
    of one sequence into the folders given."""

    def __init__(self, masks: str, overlays: str | None, gif: str | None, total: int):
        self.masks, self.overlays, self.gif_path = masks, overlays, gif
        os.makedirs(self.masks, exist_ok=True)
        if self.overlays:
            os.makedirs(self.overlays, exist_ok=True)
        self.gif_every = max(1, math.ceil(max(1, total) / MAX_GIF_FRAMES))
        self.gif_frames = []
        self.count = 0

    @classmethod
    def in_folder(cls, folder: str, total: int, overlays: bool = True) -> "Writer":
        return cls(os.path.join(folder, "masks"), os.path.join(folder, "overlays") if overlays else None,
                   os.path.join(folder, "overlay.gif") if overlays else None, total)

    def add(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        from PIL import Image

        from densecorr.data.io import overlay, write_mask

        write_mask(os.path.join(self.masks, name + ".png"), mask)
        if self.overlays:
            ov = Image.fromarray(overlay(frame, mask))
            ov.save(os.path.join(self.overlays, name + ".jpg"), quality=88)
            if self.gif_path and self.count % self.gif_every == 0:
                scale = min(1.0, GIF_WIDTH / ov.width)
                small = ov.resize((max(1, round(ov.width * scale)), max(1, round(ov.height * scale))), Image.BILINEAR)
                self.gif_frames.append(small.quantize(colors=255, method=Image.Quantize.MEDIANCUT))
        self.count += 1

    def close(self) -> None:
        if self.gif_frames:
            first, rest = self.gif_frames[0], self.gif_frames[1:]
            first.save(self.gif_path, save_all=True, append_images=rest, duration=100 * self.gif_every, loop=0)
        self.gif_frames = []


def fmt(x, digits: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> None:
    """Print rows as a plain table; columns are (key, header, digits; -1 = text)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([str(r.get(k, "")) if d < 0 else fmt(r.get(k), d) for k, _, d in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0 or (n == len(cells) - 2 and rows and rows[-1].get("sequence") == "mean"):
            print("  ".join("-" * w for w in widths))


def write_csv(path: str, rows: list[dict]) -> None:
    keys = list(rows[0].keys())
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_json(path: str, doc: dict) -> None:
    import json

    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def error(msg: str) -> None:
    print(f"densecorr: error: {msg}", file=sys.stderr)
