"""BADJA joint annotations (Biggs et al., "Creatures great and SMAL", ACCV 2018; MIT licence).

A BADJA file `joint_annotations/<seq>.json` is a list of annotated frames:
`{"image_path": ".../<seq>/00003.jpg", "segmentation_path": ..., "joints": [[row, col], ...],
"visibility": [bool, ...]}`. For the DAVIS sequences, the coordinates are in DAVIS
Full-Resolution pixels (1920x1080) and come as [row, col] = [y, x]; `read_badja` scales them
to the frame size actually used and returns them as (x, y).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from densecorr.data.io import DataError

BADJA_SOURCE_SIZE = (1920, 1080)  # (width, height) of DAVIS Full-Resolution frames


@dataclass
class KeypointFrame:
    """The annotation of one frame: `xy` float (J, 2) as (x, y) pixels, `visible` bool (J,)."""

    name: str
    xy: np.ndarray
    visible: np.ndarray


def read_badja(path: str, frame_size: tuple[int, int], source_size: tuple[int, int] = BADJA_SOURCE_SIZE) -> list[KeypointFrame]:
    """The annotated frames of a BADJA JSON file, sorted by frame name.

    Args:
        path: the JSON file.
        frame_size: (width, height) of the frames the keypoints will be used with (e.g. (854, 480)).
        source_size: (width, height) the file's coordinates refer to (1920x1080 for DAVIS).
    Returns:
        KeypointFrame list; `xy[:, 0] = col * W / source_W`, `xy[:, 1] = row * H / source_H`.
    """
    try:
        with open(path) as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise DataError(f"BADJA file {path!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read BADJA file {path!r} ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"BADJA file {path!r} should hold a non-empty list of annotated frames")
    sx = frame_size[0] / source_size[0]
    sy = frame_size[1] / source_size[1]
    frames = []
    for k, entry in enumerate(entries):
        try:
            joints = np.asarray(entry["joints"], dtype=np.float64).reshape(-1, 2)
            visible = np.asarray(entry["visibility"], dtype=bool).reshape(-1)
            name = os.path.splitext(os.path.basename(entry["image_path"]))[0]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"BADJA file {path!r}, entry {k}: expected image_path, joints [[row, col], ...] and visibility ({exc})") from None
        if len(visible) != len(joints):
            raise DataError(f"BADJA file {path!r}, entry {k}: {len(joints)} joints but {len(visible)} visibility flags")
        xy = np.stack([joints[:, 1] * sx, joints[:, 0] * sy], axis=1)
        frames.append(KeypointFrame(name, xy, visible))
    frames.sort(key=lambda f: f.name)
    return frames


__all__ = ["read_badja", "KeypointFrame", "BADJA_SOURCE_SIZE"]
