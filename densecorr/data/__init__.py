"""Video data: frame folders and video files, DAVIS and BADJA readers, training clips.

- `FrameSource(path)`: the frames of a folder of images or a video file, read lazily.
- `read_mask` / `write_mask`: id masks (DAVIS-2016 0/255 or DAVIS-2017 palette PNGs).
- `Davis(root)`: the DAVIS layout (JPEGImages/, Annotations/, ImageSets/).
- `read_badja(path, frame_size)`: BADJA joint tracks scaled to the frames used.
- `VideoClips(root, clip_len, gap, ...)`: clips of T frames for self-supervised training.
- `sample_root()` / `shared_data_root()`: the shipped sample and ../shared/data.
"""
from densecorr.data.badja import KeypointFrame, read_badja
from densecorr.data.clips import VideoClips, find_sequences
from densecorr.data.davis import Davis, DavisSequence, object_ids, parse_imageset
from densecorr.data.io import (
    DataError,
    FrameSource,
    davis_palette,
    frames_to_tensor,
    list_images,
    overlay,
    read_image,
    read_mask,
    write_mask,
)
from densecorr.data.paths import default_davis_root, sample_root, shared_data_root

__all__ = [
    "DataError", "FrameSource", "read_image", "read_mask", "write_mask", "davis_palette", "overlay",
    "list_images", "frames_to_tensor", "Davis", "DavisSequence", "object_ids", "parse_imageset",
    "read_badja", "KeypointFrame", "VideoClips", "find_sequences", "sample_root", "shared_data_root",
    "default_davis_root",
]
