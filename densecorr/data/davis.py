"""The DAVIS layout (2016 and 2017).

```
ROOT/JPEGImages/480p/<seq>/00000.jpg ...
ROOT/Annotations/480p/<seq>/00000.png ...   2016: grayscale {0, 255}; 2017: palette, one id per object
ROOT/ImageSets/480p/val.txt                 2016: "/JPEGImages/480p/<seq>/00000.jpg /Annotations/..." lines
ROOT/ImageSets/2017/val.txt                 2017: one sequence name per line
```
The resolution folder (480p, Full-Resolution) may be absent (ROOT/JPEGImages/<seq>/...).
DAVIS is CC BY-NC 4.0 (Perazzi et al., CVPR 2016; Pont-Tuset et al., arXiv 2017).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from densecorr.data.io import DataError, FrameSource, list_images, read_mask


@dataclass
class DavisSequence:
    """One sequence: its frames (lazy) and annotation files (None where a frame has none)."""

    name: str
    frames: FrameSource
    mask_files: list  # str | None per frame

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def names(self) -> list[str]:
        return self.frames.names

    def mask(self, i: int) -> np.ndarray:
        """Ground-truth ids (H, W) of frame i (uint8, or uint16 from 16-bit PNGs; see read_mask)."""
        path = self.mask_files[i]
        if path is None:
            raise DataError(f"sequence {self.name!r} has no annotation for frame {self.names[i]}")
        return read_mask(path)

    def has_mask(self, i: int) -> bool:
        return self.mask_files[i] is not None


class Davis:
    """A DAVIS root: `Davis(root).sequences` lists names, `Davis(root)[name]` a DavisSequence.

    Args:
        root: the folder holding JPEGImages/ and Annotations/.
        resolution: the sub-folder name ("480p", "Full-Resolution"), or None to find it
            ("480p" if present, else none).
        split: the ImageSets list to read ("val", "train", ...); sequences are taken from
            ImageSets/<resolution>/<split>.txt (2016) or ImageSets/2017/<split>.txt (2017) when
            present, else from the JPEGImages folder listing.
    """

    def __init__(self, root: str, resolution: str | None = None, split: str = "val"):
        if not os.path.isdir(root):
            raise DataError(f"DAVIS root {root!r} does not exist")
        jpeg = os.path.join(root, "JPEGImages")
        if not os.path.isdir(jpeg):
            raise DataError(f"{root!r} is not a DAVIS root: it has no JPEGImages/ folder")
        if resolution is None:
            resolution = "480p" if os.path.isdir(os.path.join(jpeg, "480p")) else ""
        self.root = root
        self.resolution = resolution
        self.split = split
        self.frame_dir = os.path.join(jpeg, resolution) if resolution else jpeg
        self.mask_dir = os.path.join(root, "Annotations", resolution) if resolution else os.path.join(root, "Annotations")
        if not os.path.isdir(self.frame_dir):
            raise DataError(f"DAVIS root {root!r} has no JPEGImages/{resolution} folder")
        self.sequences = self._read_split()

    def _read_split(self) -> list[str]:
        candidates = []
        if self.resolution:
            candidates.append(os.path.join(self.root, "ImageSets", self.resolution, f"{self.split}.txt"))
        candidates += [
            os.path.join(self.root, "ImageSets", "2017", f"{self.split}.txt"),
            os.path.join(self.root, "ImageSets", f"{self.split}.txt"),
        ]
        for path in candidates:
            if os.path.isfile(path):
                return parse_imageset(path)
        return sorted(d for d in os.listdir(self.frame_dir) if os.path.isdir(os.path.join(self.frame_dir, d)))

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self):
        for name in self.sequences:
            yield self[name]

    def __getitem__(self, name: str) -> DavisSequence:
        folder = os.path.join(self.frame_dir, name)
        if not os.path.isdir(folder):
            raise DataError(f"sequence {name!r} not found in {self.frame_dir!r} (known: {', '.join(self.sequences)})")
        frames = FrameSource(folder)
        mask_folder = os.path.join(self.mask_dir, name)
        mask_files = []
        for stem in frames.names:
            path = os.path.join(mask_folder, stem + ".png")
            mask_files.append(path if os.path.isfile(path) else None)
        if mask_files[0] is None:
            raise DataError(f"sequence {name!r} has no first-frame annotation {os.path.join(mask_folder, frames.names[0] + '.png')!r}")
        return DavisSequence(name, frames, mask_files)


def parse_imageset(path: str) -> list[str]:
    """Sequence names, in order of first appearance, from a DAVIS ImageSets list (2016 or 2017 format)."""
    names: list[str] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            first = line.split()[0]
            if "/" in first:  # 2016: /JPEGImages/480p/<seq>/<frame>.jpg
                name = first.strip("/").split("/")[-2]
            else:  # 2017: <seq>
                name = first
            if name not in names:
                names.append(name)
    if not names:
        raise DataError(f"ImageSets list {path!r} is empty")
    return names


def object_ids(mask: np.ndarray) -> list[int]:
    """The object ids present in a mask: every value but background 0 and, in 8-bit masks,
    DAVIS 'void' 255 (16-bit masks, read from 16-bit PNGs, have no void value: 255 is an id)."""
    void = 255 if mask.dtype == np.uint8 else None
    return [int(i) for i in np.unique(mask) if i != 0 and i != void]


__all__ = ["Davis", "DavisSequence", "parse_imageset", "object_ids", "list_images"]
