"""Clips of T frames from unlabelled video, for self-supervised training.

`VideoClips(root, clip_len=T, gap=g, size=...)[i]` is a float tensor (T, 3, H, W) in [0, 1]:
frames s, s+g, ..., s+(T-1)g of one sequence, resized so that the short side is `resize`,
then cropped to `size` (the same crop for all T frames). Item i enumerates every valid start
s of every sequence (a sequence shorter than (T-1)g+1 frames gives none).

Sequences are found under `root`:
- a DAVIS-style root (`root/JPEGImages[/480p]/<seq>/*.jpg`), e.g. ../shared/data/davis2016_train_256p;
- otherwise every sub-folder of `root` holding images, and every video file in `root`;
- or `root` itself when it is a folder of frames or a video file.
A list of such paths is accepted too. Video files are decoded from the start for each clip
(simple, slow): extract frames to folders for long training runs.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from densecorr.data.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DataError, FrameSource, frames_to_tensor, natural_key


def find_sequences(root: str) -> list[str]:
    """The frame folders / video files under `root` (see the module docstring)."""
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise DataError(f"video root {root!r} does not exist")
    jpeg = os.path.join(root, "JPEGImages")
    if os.path.isdir(jpeg):
        base = os.path.join(jpeg, "480p") if os.path.isdir(os.path.join(jpeg, "480p")) else jpeg
        return [os.path.join(base, d) for d in sorted(os.listdir(base), key=natural_key) if os.path.isdir(os.path.join(base, d))]
    entries = sorted(os.listdir(root), key=natural_key)
    if any(e.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
        return [root]
    found = []
    for e in entries:
        path = os.path.join(root, e)
        if os.path.isdir(path) and any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(path)):
            found.append(path)
        elif e.lower().endswith(VIDEO_EXTENSIONS):
            found.append(path)
    if not found:
        raise DataError(f"no frame folders or video files under {root!r}")
    return found


class VideoClips(torch.utils.data.Dataset):
    """Clips (T, 3, H, W) float in [0, 1] sampled from folders of frames or video files.

    Args:
        root: a path or list of paths (see the module docstring).
        clip_len: T, frames per clip.
        gap: step between consecutive clip frames (1 = adjacent frames).
        resize: short side after resizing (bilinear, antialiased), or None to keep the size.
        size: (H, W) crop, or None for no crop. Random crop (and horizontal flip if `flip`)
            when `train`, centre crop otherwise.
        stride: step between the start frames of consecutive items (default 1: every start).
    """

    def __init__(
        self,
        root: str | Sequence[str],
        clip_len: int = 8,
        gap: int = 1,
        resize: int | None = None,
        size: tuple[int, int] | None = None,
        train: bool = True,
        flip: bool = False,
        stride: int = 1,
    ):
        if clip_len < 1 or gap < 1 or stride < 1:
            raise ValueError(f"clip_len, gap and stride must be >= 1, got {clip_len}, {gap}, {stride}")
        roots = [root] if isinstance(root, str) else list(root)
        paths = [p for r in roots for p in find_sequences(r)]
        self.sources = [FrameSource(p) for p in paths]
        self.clip_len, self.gap, self.resize, self.size = clip_len, gap, resize, size
        self.train, self.flip = train, flip
        span = (clip_len - 1) * gap + 1
        self.index = [(k, s) for k, src in enumerate(self.sources) for s in range(0, len(src) - span + 1, stride)]
        if not self.index:
            raise DataError(f"no sequence has the {span} frames a clip of {clip_len} frames with gap {gap} needs")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        k, start = self.index[i]
        src = self.sources[k]
        wanted = [start + t * self.gap for t in range(self.clip_len)]
        if src.kind == "folder":
            frames = [src[j] for j in wanted]
        else:
            frames, want = [], set(wanted)
            for j, arr in enumerate(src):
                if j in want:
                    frames.append(arr)
                if j >= wanted[-1]:
                    break
        clip = frames_to_tensor(frames)
        return self.transform(clip)

    def transform(self, clip: torch.Tensor) -> torch.Tensor:
        """Resize, crop and flip a clip (T, 3, H, W), the same way for all its frames."""
        if self.resize is not None:
            h, w = clip.shape[-2:]
            s = self.resize / min(h, w)
            clip = F.interpolate(clip, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False, antialias=True)
            clip = clip.clamp_(0, 1)
        if self.size is not None:
            ch, cw = self.size
            h, w = clip.shape[-2:]
            if h < ch or w < cw:
                raise DataError(f"crop {self.size} is larger than the frames ({h}, {w}); lower size or raise resize")
            if self.train:
                y, x = random.randint(0, h - ch), random.randint(0, w - cw)
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            clip = clip[..., y : y + ch, x : x + cw]
        if self.train and self.flip and random.random() < 0.5:
            clip = clip.flip(-1)
        return clip.contiguous()


__all__ = ["VideoClips", "find_sequences"]
