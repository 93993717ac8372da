"""Reading frames (image folders, video files) and label masks; writing palette masks.

Frames are returned as uint8 numpy arrays (H, W, 3), RGB. Masks are arrays (H, W) of object
ids (0 = background): uint8 when read from an 8-bit image, uint16 from a 16-bit one (up to
65535 objects; written back as 16-bit PNGs, so ids above 255 are kept). Everything is read
lazily, one frame at a time, so that a sequence of any length can be processed in bounded
memory.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".gif")


class DataError(ValueError):
    """Bad input data (missing, unreadable or inconsistent files). The message says what to fix."""


def natural_key(name: str):
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: str) -> list[str]:
    """The image files in `folder` (not recursive), in natural order."""
    if not os.path.isdir(folder):
        raise DataError(f"frame folder {folder!r} does not exist")
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    if not names:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in frame folder {folder!r}")
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def read_image(path: str) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3)."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {path!r} does not exist") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path!r} ({exc}); replace or remove the file") from None


def read_mask(path: str) -> np.ndarray:
    """A label mask (H, W) of object ids, 0 = background.

    Accepted encodings:
    - palette-indexed PNG (DAVIS-2017, several objects): pixel value = palette index = object id;
    - 8-bit grayscale with values {0, 255} (DAVIS-2016, one object): 255 becomes id 1;
    - 8-bit grayscale with small values (< 128): taken as ids; other grayscale masks are
      thresholded at 128 (anti-aliased binary masks);
    - 16-bit grayscale (more than 255 objects): values {0, 65535} are one object (id 1), any
      other values are ids, kept as they are (uint16);
    - 1-bit images: id 1 where set.
    8-bit encodings give uint8 masks, 16-bit ones uint16. RGB masks are refused (colours are
    ambiguous): save them palette-indexed. 32-bit masks are accepted when their values fit
    16 bits, else refused.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                return np.array(im, dtype=np.uint8)
            if mode == "1":
                return np.array(im, dtype=np.uint8)
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return wide_to_ids(np.array(im), path)
            if mode in ("L", "LA"):
                arr = np.array(im.convert("L") if mode != "L" else im)
            elif mode in ("RGB", "RGBA"):
                arr = np.asarray(im.convert("RGB"))
                if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                    arr = arr[..., 0]  # grey saved as RGB
                else:
                    raise DataError(
                        f"mask {path!r} is an RGB colour image; save it as a palette-indexed PNG "
                        "(pixel value = object id) or a 0/255 grayscale PNG"
                    )
            else:
                raise DataError(f"mask {path!r} has unsupported image mode {mode!r}; use a palette or grayscale PNG")
    except FileNotFoundError:
        raise DataError(f"mask {path!r} does not exist") from None
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path!r} ({exc})") from None
    return grayscale_to_ids(arr)


def wide_to_ids(arr: np.ndarray, path: str = "mask") -> np.ndarray:
    """Object ids (uint16) from a 16- or 32-bit grayscale mask: {0, 65535} is one object (id 1),
    other values are ids; values outside [0, 65535] are refused (DataError)."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise DataError(f"mask {path!r} holds values outside 0..65535 ({int(arr.min())}..{int(arr.max())}); object ids must fit 16 bits")
    if np.isin(np.unique(arr), (0, 65535)).all():
        return (arr == 65535).astype(np.uint8)
    return arr.astype(np.uint16)


def grayscale_to_ids(arr: np.ndarray) -> np.ndarray:
    """Object ids from an 8-bit grayscale mask (see read_mask for the rule)."""
    values = np.unique(arr)
    if np.isin(values, (0, 255)).all():
        return (arr == 255).astype(np.uint8)
    if values.max() < 128:
        return arr.astype(np.uint8)
    return (arr >= 128).astype(np.uint8)


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour palette (768 ints): id 0 black, 1 red, 2 green, ..."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_mask(path: str, mask: np.ndarray) -> None:
    """Save an (H, W) id mask as a PNG that `read_mask` reads back to the same ids: a
    palette-indexed PNG (pixel value = object id, DAVIS colours) when every id is < 256, else
    a 16-bit grayscale PNG (ids up to 65535; ValueError above, or for negative ids)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    top = int(mask.max()) if mask.size else 0
    if mask.size and int(mask.min()) < 0:
        raise ValueError(f"mask ids must be >= 0, got min {int(mask.min())}")
    if top > 65535:
        raise ValueError(f"mask ids must be < 65536, got max {top}")
    if top > 255:
        if np.isin(np.unique(mask), (0, 65535)).all():
            raise ValueError("a mask whose only object id is 65535 reads back as id 1; renumber the object")
        Image.fromarray(mask.astype(np.uint16)).save(path)  # mode I;16
        return
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(path)


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame with each object's id colour blended in and a dark outline, uint8 (H, W, 3)."""
    pal = np.asarray(davis_palette(), dtype=np.float32).reshape(256, 3)
    out = frame.astype(np.float32).copy()
    fg = mask > 0
    ids = mask[fg].astype(np.int64)
    out[fg] = (1 - alpha) * out[fg] + alpha * pal[(ids - 1) % 255 + 1]  # ids > 255 reuse the colours 1..255
    edge = np.zeros_like(fg)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    out[edge] = 0.3 * out[edge]
    return out.clip(0, 255).astype(np.uint8)


class FrameSource:
    """The frames of a video: a folder of images or a video file (mp4, avi, webm, ... via PyAV).

    `len(source)` is the number of frames, `source.names` the frame names used for outputs
    (image stems, or 00000, 00001, ... for video files; `source.name(i)` also past the end),
    `source[i]` / iteration give uint8 (H, W, 3) RGB arrays. Folders are read one image at a
    time; video files are decoded sequentially (random access re-decodes from the start, so
    iterate in order).

    A video's frame count comes from its container's metadata (the stream's frame count), not
    from decoding it. Where the container does not state it (webm, mkv), `count="exact"` (the
    default) decodes the video once to count, and `count="estimate"` takes duration x frame
    rate instead: then `len` is only a hint (for progress bars) and iteration yields every
    frame that decodes, however many.
    """

    def __init__(self, path: str, count: str = "exact"):
        if count not in ("exact", "estimate"):
            raise ValueError(f"count must be 'exact' or 'estimate', got {count!r}")
        self.path = path
        self.exact = True
        if os.path.isdir(path):
            self.files = list_images(path)
            self.names = [os.path.splitext(os.path.basename(f))[0] for f in self.files]
            self.kind = "folder"
        elif os.path.isfile(path):
            self.files = None
            self.kind = "video"
            self._count = self._count_frames(count)
            self.names = [f"{i:05d}" for i in range(self._count)]
        else:
            raise DataError(f"{path!r} is neither a folder of frames nor a video file")

    def name(self, i: int) -> str:
        """The output name of frame i (also for frames past a video's estimated count)."""
        if i < len(self.names):
            return self.names[i]
        return f"{i:05d}"

    def _open(self):
        try:
            import av
        except ImportError:
            raise DataError("reading video files needs PyAV: pip install av (or pass a folder of frames)") from None
        try:
            return av.open(self.path)
        except Exception as exc:  # PyAV raises many error types (av.error.*)
            raise DataError(f"cannot open video {self.path!r} ({exc}); pass a readable video or a folder of frames") from None

    def _count_frames(self, count: str) -> int:
        container = self._open()
        try:
            if not container.streams.video:
                raise DataError(f"{self.path!r} has no video stream")
            stream = container.streams.video[0]
            n = int(stream.frames or 0)
            if n <= 0 and count == "estimate" and container.duration and stream.average_rate:
                n = max(1, round(container.duration / 1e6 * float(stream.average_rate)))
                self.exact = False
        finally:
            container.close()
        if n > 0:
            return n
        for _ in self._decode():  # the container does not say: count by decoding
            n += 1
        if n == 0:
            raise DataError(f"video {self.path!r} has no decodable frames")
        return n

    def _decode(self) -> Iterator[np.ndarray]:
        container = self._open()
        try:
            if not container.streams.video:
                raise DataError(f"{self.path!r} has no video stream")
            stream = container.streams.video[0]
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"video {self.path!r} is corrupt or truncated ({exc})") from None
        finally:
            container.close()

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind == "folder":
            for f in self.files:
                yield read_image(f)
            return
        n = 0
        for arr in self._decode():
            if self.exact and n >= self._count:
                break
            n += 1
            yield arr
        if n == 0:
            raise DataError(f"video {self.path!r} has no decodable frames")

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i %= len(self)
        if self.kind == "folder":
            return read_image(self.files[i])
        for j, arr in enumerate(self._decode()):
            if j == i:
                return arr
        raise DataError(f"video {self.path!r} ended before frame {i}")


def frames_to_tensor(frames: Sequence[np.ndarray]):
    """uint8 (H, W, 3) arrays -> float tensor (T, 3, H, W) in [0, 1]."""
    import torch

    arr = np.stack([np.asarray(f) for f in frames])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255)
