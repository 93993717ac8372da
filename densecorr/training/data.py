"""Training data: the sequences to read, seeded clips and the deterministic sample stream.

- `readable_sequences(roots)`: the frame folders / video files under the roots; one that cannot
  be opened is skipped with a warning (one unreadable video must not stop a long run).
- `SeededClips`: item (index, seed) -> clip (T, 3, H, W), its crop and flip drawn from `seed`,
  so a clip depends only on its stream position, in any worker and after any resume. A clip
  that cannot be read (a corrupt frame, a frame of another size than most of its sequence's,
  a video that fails to decode) is replaced by another clip drawn from (seed, attempt); each
  bad frame is reported by one warning and never read again by this dataset.
- `StreamBatches`: this process's micro-batches of (index, seed) from step `start` on: stream
  position p is clip perm_e[p mod n] of epoch e = p // n (perm_e a permutation seeded by
  (seed, e)). Global batch s is positions [s G, (s + 1) G), G = batch_size x world_size x
  accum_steps, split into world_size x accum_steps micro-batches; process `rank` takes
  micro-batches rank * accum_steps + a. So a run resumes exactly from a checkpoint, and N
  processes with batch b give the same parameters as one process with batch b and
  accum_steps N.
"""
from __future__ import annotations

import collections
import hashlib
import os
import random
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from densecorr.data.io import DataError


def mix_seed(*values) -> int:
    """A 63-bit seed from integers and strings (stable across processes and Python runs)."""
    h = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def default_train_root() -> str:
    """../shared/data/davis2016_train_256p (the default training video)."""
    from densecorr.data.paths import shared_data_root

    shared = shared_data_root()
    path = os.path.join(shared, "davis2016_train_256p") if shared else None
    if not path or not os.path.isdir(path):
        raise DataError("no training data given and ../shared/data/davis2016_train_256p not found; pass --data (folders of frames or video files)")
    return path


def readable_sequences(roots: Sequence[str], warn: Callable[[str], None]) -> list[str]:
    """The frame folders / video files under `roots` that can be opened; the others are
    skipped with a warning (one unreadable video must not stop a long run)."""
    from densecorr.data.clips import find_sequences
    from densecorr.data.io import FrameSource

    good = []
    for root in roots:
        for path in find_sequences(root):
            try:
                FrameSource(path)
            except DataError as exc:
                warn(f"warning: skipping unreadable sequence {path}: {exc}")
                continue
            good.append(path)
    if not good:
        raise DataError(f"no readable frame folders or video files in {list(roots)}")
    return good


def _image_size(path: str):
    """(W, H) of an image from its header, or None when it cannot be opened."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):
        return None


class SeededClips(torch.utils.data.Dataset):
    """Clips of several frame gaps; item (index, seed) -> clip (T, 3, H, W), its random crop and
    flip drawn from `seed` (so a clip depends only on its stream position, in any worker).

    A clip that cannot be read is replaced by a clip drawn from (seed, attempt), with one
    warning per bad frame (or per bad video, or per other reason).
    """

    def __init__(self, paths: Sequence[str], clip_len: int, gaps: Sequence[int], resize, crop, flip: bool):
        from densecorr.data.clips import VideoClips

        self.parts = []
        for gap in gaps:
            try:
                self.parts.append(VideoClips(list(paths), clip_len=clip_len, gap=gap, resize=resize, size=tuple(crop), train=True, flip=flip))
            except DataError as exc:
                warnings.warn(f"no clips with gap {gap}: {exc}")
        if not self.parts:
            raise DataError(f"no sequence has enough frames for clips of {clip_len} frames with gaps {tuple(gaps)}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self._bad_frames: dict[str, set[int]] = {}  # source path -> frame indices known to be unreadable
        self._bad_sources: set[str] = set()  # video files that failed to decode
        self._reported: set = set()
        self._size: dict[str, tuple | None] = {}  # source path -> (W, H) of most of its frames

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int):
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        clips = self.parts[part]
        i = index - int(self.offsets[part])
        k, start = clips.index[i]
        return clips, i, clips.sources[k], [start + t * clips.gap for t in range(clips.clip_len)]

    def _warn_once(self, key, msg: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            warnings.warn(msg, stacklevel=3)

    def _reference_size(self, src):
        """The most common frame size of folder `src` (read from the image headers, once)."""
        if src.path not in self._size:
            sizes = collections.Counter(s for s in map(_image_size, src.files) if s is not None)
            self._size[src.path] = sizes.most_common(1)[0][0] if sizes else None
        return self._size[src.path]

    def _find_bad_frames(self, src, wanted: Sequence[int]) -> list[tuple[int, str]]:
        """(frame, why) for the frames of `wanted` in folder `src` that are corrupt or of another
        size than most of the sequence's frames."""
        from densecorr.data.io import read_image

        ref = self._reference_size(src)
        found = []
        for j in wanted:
            path = src.files[j]
            try:
                arr = read_image(path)
            except DataError as exc:
                found.append((j, str(exc)))
                continue
            if ref is not None and (arr.shape[1], arr.shape[0]) != tuple(ref):
                found.append((j, f"it is {arr.shape[1]}x{arr.shape[0]}, the sequence's frames are {ref[0]}x{ref[1]}"))
        return found

    def _get(self, index: int) -> torch.Tensor:
        clips, i, src, wanted = self._locate(index)
        if src.path in self._bad_sources or self._bad_frames.get(src.path, set()) & set(wanted):
            raise _KnownBad()
        try:
            return clips[i]
        except (DataError, ValueError, RuntimeError) as exc:  # ValueError: frames of different sizes
            if src.kind == "folder":
                bad = self._find_bad_frames(src, wanted)
                if bad:
                    for j, why in bad:
                        self._bad_frames.setdefault(src.path, set()).add(j)
                        self._warn_once((src.path, j), f"skipping frame {src.files[j]} in training (clips with it are replaced): {why}")
                    raise _KnownBad() from None
            else:
                self._bad_sources.add(src.path)
                self._warn_once(src.path, f"skipping video {src.path} in training (its clips are replaced): {exc}")
                raise _KnownBad() from None
            self._warn_once(("clip", str(exc)), f"skipping clip {index} (and any other that fails the same way): {exc}")
            raise _KnownBad() from None

    def __getitem__(self, item) -> torch.Tensor:
        index, seed = item
        state = random.getstate()
        try:
            candidate = index
            for attempt in range(1, 64 * len(self) + 1):
                random.seed(seed)
                try:
                    return self._get(candidate)
                except _KnownBad:
                    candidate = mix_seed(seed, "resample", attempt) % len(self)
            raise DataError("no clip of the training data could be read (every frame tried was corrupt or of another size)")
        finally:
            random.setstate(state)


class _KnownBad(Exception):
    """A clip that holds a frame or video known to be unreadable (already reported)."""


class StreamBatches(torch.utils.data.Sampler):
    """This process's micro-batches of lists of (index, seed), from step `start` on (endless).

    Stream position p is clip perm_e[p mod n] of epoch e = p // n (perm_e a permutation seeded
    by (seed, e)); see the module docstring for how global batches are split.
    """

    def __init__(self, n: int, batch_size: int, accum_steps: int, rank: int, world_size: int, seed: int, start: int = 0):
        self.n, self.b, self.accum, self.rank, self.world = n, batch_size, accum_steps, rank, world_size
        self.seed, self.start = seed, start
        self._perm = (None, None)

    def perm(self, epoch: int) -> torch.Tensor:
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def __iter__(self) -> Iterator[list]:
        g = self.b * self.world * self.accum
        step = self.start
        while True:
            for a in range(self.accum):
                first = step * g + (self.rank * self.accum + a) * self.b
                batch = []
                for p in range(first, first + self.b):
                    epoch, i = divmod(p, self.n)
                    batch.append((int(self.perm(epoch)[i]), mix_seed(self.seed, "clip", p)))
                yield batch
            step += 1


def make_loader(paths: Sequence[str], clip_len: int, cfg, rank: int, world_size: int, start_step: int, pin_memory: bool):
    """(dataset, an endless iterator of this process's micro-batches from step `start_step`)."""
    dataset = SeededClips(paths, clip_len, cfg.gaps, cfg.resize, cfg.crop, cfg.flip)
    sampler = StreamBatches(len(dataset), cfg.batch_size, cfg.accum_steps, rank, world_size, cfg.seed, start=start_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=pin_memory,
        persistent_workers=cfg.workers > 0, generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
    return dataset, iter(loader)


__all__ = ["mix_seed", "default_train_root", "readable_sequences", "SeededClips", "StreamBatches", "make_loader"]
