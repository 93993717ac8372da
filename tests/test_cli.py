"""The `densecorr` command: track, eval-davis, eval-keypoints, and its handling of bad input."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from densecorr.cli import main
from densecorr.data import read_mask, sample_root, write_mask


def make_video_folder(folder, n=4, h=32, w=48):
    """Frames with two textured objects moving right by 4 px per frame; first-frame ids 1 and 2."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    bg = torch.nn.functional.interpolate(torch.rand(1, 3, 3, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)[0]
    bg = (bg * 100).permute(1, 2, 0).to(torch.uint8).numpy()
    tex = (torch.rand(2, 2, 2, 3, generator=g) * 155 + 100).to(torch.uint8).numpy().repeat(4, 1).repeat(4, 2)
    first = np.zeros((h, w), np.uint8)
    for t in range(n):
        f = bg.copy()
        f[4:12, 4 + 4 * t : 12 + 4 * t] = tex[0]
        f[20:28, 4 + 4 * t : 12 + 4 * t] = tex[1]
        Image.fromarray(f).save(os.path.join(folder, f"{t:05d}.png"))
    first[4:12, 4:12] = 1
    first[20:28, 4:12] = 2
    return first


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_track_folder_two_objects(tmp_path, capsys):
    first = make_video_folder(tmp_path / "frames")
    write_mask(str(tmp_path / "first.png"), first)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "track", tmp_path / "frames", "--mask", tmp_path / "first.png", "--out", out, "--protocol", "corrflow", "--stride", "4", "--quiet")
    assert code == 0, err
    names = sorted(os.listdir(out / "masks"))
    assert names == [f"{t:05d}.png" for t in range(4)]
    for t, name in enumerate(names):
        with Image.open(out / "masks" / name) as im:
            assert im.mode == "P" and im.size == (48, 32)
        m = read_mask(str(out / "masks" / name))
        # both objects followed, each with its own id
        assert (m[6:10, 6 + 4 * t : 10 + 4 * t] == 1).all() and (m[22:26, 6 + 4 * t : 10 + 4 * t] == 2).all()
    assert sorted(os.listdir(out / "overlays")) == [f"{t:05d}.jpg" for t in range(4)]
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 4
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]
    assert "s/frame" in stdout


def test_track_video_file_binary_mask(tmp_path, capsys):
    import av

    make_video_folder(tmp_path / "frames", n=3)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for t in range(3):
            frame = np.asarray(Image.open(tmp_path / "frames" / f"{t:05d}.png").convert("RGB"))
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    binary = np.zeros((32, 48), np.uint8)
    binary[4:12, 4:12] = 255  # DAVIS-2016 style
    Image.fromarray(binary).save(tmp_path / "first.png")
    code, _, err = run(capsys, "track", path, "--mask", tmp_path / "first.png", "--out", tmp_path / "out", "--protocol", "mast", "--stride", "4", "--quiet")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == ["00000.png", "00001.png", "00002.png"]
    assert set(np.unique(read_mask(str(tmp_path / "out" / "masks" / "00002.png")))) <= {0, 1}


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing_frames", "neither a folder"),
        ("missing_mask", "does not exist"),
        ("mask_size", "give a mask of the frames' size"),
        ("empty_mask", "empty"),
        ("protocol", "unknown protocol"),
        ("model", "unknown model"),
        ("checkpoint", "cannot read checkpoint"),
        ("corrupt_frame", "00002.png"),
    ],
)
def test_track_bad_input(tmp_path, capsys, case, message):
    first = make_video_folder(tmp_path / "frames")
    write_mask(str(tmp_path / "first.png"), first)
    args = {"video": tmp_path / "frames", "mask": tmp_path / "first.png", "extra": []}
    if case == "missing_frames":
        args["video"] = tmp_path / "nothing"
    elif case == "missing_mask":
        args["mask"] = tmp_path / "nothing.png"
    elif case == "mask_size":
        write_mask(str(tmp_path / "first.png"), first[:, :40])
    elif case == "empty_mask":
        write_mask(str(tmp_path / "first.png"), np.zeros_like(first))
    elif case == "protocol":
        args["extra"] = ["--protocol", "bogus"]
    elif case == "model":
        args["extra"] = ["--model", "no-such-model"]
    elif case == "checkpoint":
        (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 a truncated zip, not a checkpoint")
        args["extra"] = ["--model", tmp_path / "broken.pt"]
    elif case == "corrupt_frame":
        (tmp_path / "frames" / "00002.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    code, _, err = run(capsys, "track", args["video"], "--mask", args["mask"], "--out", out, "--stride", "4", "--quiet", *args["extra"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densecorr: error:") and message in lines[0], err
    # nothing half-written is left looking complete
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_eval_davis_on_the_shipped_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DENSECORR_DATA", str(tmp_path / "no-shared-data"))  # force the fallback
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "eval-davis", "--max-frames", "3", "--height", "96", "--protocol", "uvc", "--out", out, "--quiet")
    assert code == 0, err
    assert "shipped" in stdout and "horsejump-high" in stdout and "J&F" in stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["horsejump-high", "mean"]
    assert rows[0]["frames"] == "2"
    jf = float(rows[0]["J&F"])
    assert 0.2 < jf <= 1.0  # the Lab baseline follows the horse over two frames
    with open(out / "results.json") as f:
        res = json.load(f)
    assert res["meta"]["protocol"] == "uvc" and res["mean"]["J&F"] == pytest.approx(jf)
    assert len(res["per_frame"]["horsejump-high"]["J"]["1"]) == 2
    assert float(rows[0]["s_per_frame"]) > 0 and float(rows[0]["peak_mib"]) > 0
    assert sorted(os.listdir(out / "horsejump-high" / "masks")) == ["00000.png", "00001.png", "00002.png"]
    assert len(os.listdir(out / "horsejump-high" / "overlays")) == 3


def test_eval_davis_unknown_sequence(tmp_path, capsys):
    code, _, err = run(capsys, "eval-davis", "--root", sample_root(), "--sequences", "nope", "--out", tmp_path / "e")
    assert code == 2 and "not found" in err and not (tmp_path / "e").exists()


def test_eval_keypoints_on_the_shipped_sample(tmp_path, capsys):
    out = tmp_path / "kp"
    code, stdout, err = run(capsys, "eval-keypoints", "--root", sample_root(), "--height", "64", "--protocol", "corrflow", "--out", out, "--quiet")
    assert code == 0, err
    with open(out / "results.json") as f:
        res = json.load(f)
    row = res["sequences"][0]
    assert row["sequence"] == "horsejump-high" and row["annotated"] == 4  # frames 2, 7, 8, 18
    assert row["joints"] > 40
    assert 0 <= row["PCK@0.1"] <= row["PCK@0.2"] <= 1
    assert "PCK@0.1" in stdout


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("track", "eval-davis", "eval-keypoints"):
        assert name in out


def test_train_subcommand_forwards_to_the_training_parser(capsys):
    from densecorr import cli

    assert cli.main(["train", "--model", "corrflow", "--preset", "cpu", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["model"] == "corrflow"
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval-davis", "--no-such-option"])
    assert exc.value.code == 2
