"""Frame folders, video files, masks, the DAVIS layout, BADJA and training clips."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from densecorr.data import (
    Davis,
    DataError,
    FrameSource,
    VideoClips,
    find_sequences,
    object_ids,
    parse_imageset,
    read_badja,
    read_mask,
    sample_root,
    write_mask,
)
from densecorr.data.paths import default_davis_root


def colour_frames(n, h=32, w=48):
    """n distinct flat-colour frames (frame i has red = 20 * i), uint8 (H, W, 3)."""
    return [np.full((h, w, 3), (20 * i, 100, 200 - 10 * i), np.uint8) for i in range(n)]


def write_video(path, frames, codec, fps=10):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


# --------------------------------------------------------------------------- masks


def test_read_mask_encodings(tmp_path):
    ids = np.zeros((6, 8), np.uint8)
    ids[1:3, 1:3] = 1
    ids[4:6, 5:8] = 3
    write_mask(str(tmp_path / "pal.png"), ids)
    with Image.open(tmp_path / "pal.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
    np.testing.assert_array_equal(read_mask(str(tmp_path / "pal.png")), ids)

    binary = (ids > 0).astype(np.uint8) * 255  # DAVIS-2016: one object, 0/255
    Image.fromarray(binary).save(tmp_path / "bin.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "bin.png")), ids > 0)

    Image.fromarray(ids).save(tmp_path / "gray_ids.png")  # grayscale holding small ids
    np.testing.assert_array_equal(read_mask(str(tmp_path / "gray_ids.png")), ids)

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[ids > 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="palette"):
        read_mask(str(tmp_path / "rgb.png"))
    with pytest.raises(DataError, match="does not exist"):
        read_mask(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read"):
        read_mask(str(tmp_path / "bad.png"))


# --------------------------------------------------------------------------- frames


def test_frame_folder_natural_order(tmp_path):
    frames = colour_frames(12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    src = FrameSource(str(tmp_path))
    assert len(src) == 12
    assert src.names[:3] == ["frame0", "frame1", "frame2"] and src.names[-1] == "frame11"
    np.testing.assert_array_equal(src[10], frames[10])
    np.testing.assert_array_equal(src[-1], frames[11])
    assert [int(f[0, 0, 0]) for f in src] == [20 * i for i in range(12)]


def test_frame_folder_errors(tmp_path):
    with pytest.raises(DataError, match="neither a folder"):
        FrameSource(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        FrameSource(str(empty))
    Image.fromarray(colour_frames(1)[0]).save(empty / "00000.jpg")
    (empty / "00001.jpg").write_bytes(b"\xff\xd8 truncated")
    src = FrameSource(str(empty))
    with pytest.raises(DataError, match="00001.jpg"):
        list(src)


@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("avi", "mpeg4"), ("webm", "libvpx")])
def test_video_files(tmp_path, ext, codec):
    frames = colour_frames(6)
    path = tmp_path / f"clip.{ext}"
    write_video(path, frames, codec)
    src = FrameSource(str(path))
    assert len(src) == 6
    assert src.names == [f"{i:05d}" for i in range(6)]
    decoded = list(src)
    assert all(d.shape == (32, 48, 3) for d in decoded)
    # lossy codecs: each frame's colour comes back within a few levels, in order
    reds = [float(d[..., 0].mean()) for d in decoded]
    assert np.allclose(reds, [20 * i for i in range(6)], atol=8)
    assert abs(float(src[3][..., 0].mean()) - 60) < 8


def test_corrupt_video(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(DataError, match="broken.mp4"):
        FrameSource(str(path))


# --------------------------------------------------------------------------- DAVIS


def test_shipped_sample_is_a_davis_root():
    davis = Davis(sample_root())
    assert davis.sequences == ["horsejump-high"]
    seq = davis["horsejump-high"]
    assert len(seq) == 20 and seq.names[0] == "00000" and seq.names[-1] == "00019"
    assert seq.frames[0].shape == (480, 854, 3)
    m = seq.mask(0)
    assert m.shape == (480, 854) and object_ids(m) == [1]
    assert all(seq.has_mask(i) for i in range(20))
    assert os.path.isfile(os.path.join(sample_root(), "NOTICE.md"))
    assert os.path.isfile(os.path.join(sample_root(), "DAVIS_README.md"))


def test_davis_2017_layout(tmp_path):
    # 2017: palette masks with several objects, sequence names in ImageSets/2017/val.txt
    for seq in ("a", "b"):
        (tmp_path / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (tmp_path / "Annotations" / "480p" / seq).mkdir(parents=True)
        for i, f in enumerate(colour_frames(3, 16, 20)):
            Image.fromarray(f).save(tmp_path / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg")
        ids = np.zeros((16, 20), np.uint8)
        ids[2:6, 2:6], ids[8:12, 10:16] = 1, 2
        write_mask(str(tmp_path / "Annotations" / "480p" / seq / "00000.png"), ids)
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("b\n")
    davis = Davis(str(tmp_path))
    assert davis.sequences == ["b"]
    seq = davis["b"]
    assert object_ids(seq.mask(0)) == [1, 2]
    assert seq.has_mask(0) and not seq.has_mask(1)
    with pytest.raises(DataError, match="no annotation"):
        seq.mask(1)
    with pytest.raises(DataError, match="not found"):
        davis["zzz"]
    with pytest.raises(DataError, match="not a DAVIS root"):
        Davis(str(tmp_path / "JPEGImages"))


def test_parse_imageset_2016(tmp_path):
    p = tmp_path / "val.txt"
    p.write_text(
        "/JPEGImages/480p/cow/00000.jpg /Annotations/480p/cow/00000.png\n"
        "/JPEGImages/480p/cow/00001.jpg /Annotations/480p/cow/00001.png\n"
        "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\n\n"
    )
    assert parse_imageset(str(p)) == ["cow", "bear"]


def test_default_root_falls_back_to_sample(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSECORR_DATA", str(tmp_path / "absent"))
    assert default_davis_root() == (sample_root(), True)
    (tmp_path / "davis2016_subset").mkdir()
    monkeypatch.setenv("DENSECORR_DATA", str(tmp_path))
    assert default_davis_root() == (str(tmp_path / "davis2016_subset"), False)


# --------------------------------------------------------------------------- BADJA


def test_badja_scaling_row_col(tmp_path):
    entries = [
        {"image_path": "DAVIS/JPEGImages/Full-Resolution/x/00004.jpg", "segmentation_path": "",
         "joints": [[540, 960], [0, 1920], [1080, 0]], "visibility": [True, False, True]},
        {"image_path": "DAVIS/JPEGImages/Full-Resolution/x/00001.jpg", "segmentation_path": "",
         "joints": [[108, 192], [0, 0], [0, 0]], "visibility": [True, True, True]},
    ]
    p = tmp_path / "x.json"
    p.write_text(json.dumps(entries))
    frames = read_badja(str(p), (854, 480))
    assert [f.name for f in frames] == ["00001", "00004"]  # sorted by frame
    # [row, col] in 1920x1080 -> (x, y) in 854x480
    np.testing.assert_allclose(frames[1].xy, [[427, 240], [854, 0], [0, 480]])
    np.testing.assert_allclose(frames[0].xy[0], [85.4, 48.0])
    assert frames[1].visible.tolist() == [True, False, True]
    p.write_text(json.dumps([{"image_path": "a.jpg", "joints": [[1, 2]]}]))
    with pytest.raises(DataError, match="visibility"):
        read_badja(str(p), (854, 480))


def test_badja_sample_joints_land_on_the_horse():
    # Real data: the scaled joints must fall on the annotated object (swapping row/col or
    # the wrong source size would put most of them off it).
    from densecorr.metrics import dilate_disk

    root = sample_root()
    seq = Davis(root)["horsejump-high"]
    frames = read_badja(os.path.join(root, "BADJA", "joint_annotations", "horsejump-high.json"), (854, 480))
    assert [f.name for f in frames] == ["00000", "00002", "00007", "00008", "00018"]
    inside = swapped = total = 0
    for f in frames:
        mask = dilate_disk(seq.mask(seq.names.index(f.name)) > 0, 3)
        for x, y in f.xy[f.visible]:
            total += 1
            inside += bool(mask[min(int(round(y)), 479), min(int(round(x)), 853)])
            row, col = y * 1080 / 480, x * 1920 / 854  # back to the file's [row, col]
            xs, ys = row * 854 / 1920, col * 480 / 1080  # the pair misread as [x, y]
            swapped += bool(ys < 480 and mask[int(ys), int(xs)])
    assert total >= 60
    assert inside / total > 0.95
    assert swapped / total < 0.5


# --------------------------------------------------------------------------- clips


def test_video_clips(tmp_path):
    root = tmp_path / "JPEGImages"
    for seq, n in (("s1", 7), ("s2", 3)):
        (root / seq).mkdir(parents=True)
        for i, f in enumerate(colour_frames(n, 24, 40)):
            Image.fromarray(f).save(root / seq / f"{i:05d}.png")
    assert [os.path.basename(p) for p in find_sequences(str(tmp_path))] == ["s1", "s2"]
    ds = VideoClips(str(tmp_path), clip_len=3, gap=2)
    assert len(ds) == 3  # s1: starts 0, 1, 2 (a clip spans 5 of its 7 frames); s2 is too short
    clip = ds[1]
    assert clip.shape == (3, 3, 24, 40) and clip.dtype == torch.float32
    np.testing.assert_allclose(clip[:, 0, 0, 0] * 255, [20, 60, 100], atol=1e-3)  # frames 1, 3, 5
    ds = VideoClips(str(tmp_path), clip_len=2, gap=1, resize=12, size=(10, 16), train=False)
    assert len(ds) == 6 + 2
    assert ds[0].shape == (2, 3, 10, 16)
    with pytest.raises(DataError, match="larger than the frames"):
        VideoClips(str(tmp_path), clip_len=2, size=(100, 100))[0]
    with pytest.raises(DataError, match="no sequence"):
        VideoClips(str(tmp_path), clip_len=10)


def test_video_clips_from_video_file(tmp_path):
    write_video(tmp_path / "v.mp4", colour_frames(5), "libx264")
    ds = VideoClips(str(tmp_path), clip_len=2, gap=3)
    assert len(ds) == 2
    clip = ds[1]  # frames 1 and 4
    np.testing.assert_allclose(clip[:, 0].mean((1, 2)) * 255, [20, 80], atol=8)
