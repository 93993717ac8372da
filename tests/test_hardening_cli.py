"""The CLI never loses the user's files, leaves outputs complete or visibly incomplete, and
answers bad input with one line: the hardening items of issue 11, each a test that failed on
the old code (noted where it did not)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from densecorr.cli import main
from densecorr.data import read_mask, write_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--model", "lab", "--protocol", "corrflow", "--stride", "4", "--quiet"]


def make_frames(folder, n=4, h=32, w=48, seed=0):
    """Frames with two textured squares moving right by 4 px per frame; first-frame ids 1 and 2."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    bg = torch.nn.functional.interpolate(torch.rand(1, 3, 3, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)[0]
    bg = (bg * 100).permute(1, 2, 0).to(torch.uint8).numpy()
    tex = (torch.rand(2, 2, 2, 3, generator=g) * 155 + 100).to(torch.uint8).numpy().repeat(4, 1).repeat(4, 2)
    masks = []
    for t in range(n):
        f = bg.copy()
        m = np.zeros((h, w), np.uint8)
        x = 4 + (4 * t) % max(4, w - 16)
        f[4:12, x : x + 8] = tex[0]
        f[20:28, x : x + 8] = tex[1]
        m[4:12, x : x + 8] = 1
        m[20:28, x : x + 8] = 2
        Image.fromarray(f).save(os.path.join(folder, f"{t:05d}.png"))
        masks.append(m)
    return masks


def make_davis(root, names=("a", "b", "c"), n=4, h=32, w=48):
    """A DAVIS-layout root with every frame annotated."""
    for k, name in enumerate(names):
        masks = make_frames(os.path.join(root, "JPEGImages", "480p", name), n, h, w, seed=k)
        ann = os.path.join(root, "Annotations", "480p", name)
        os.makedirs(ann, exist_ok=True)
        for t, m in enumerate(masks):
            write_mask(os.path.join(ann, f"{t:05d}.png"), m)
    return str(root)


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `densecorr ARGV` in this process (argument errors
    end in SystemExit, as from the console script)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densecorr") and "error" in lines[0], err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def partials(folder):
    return [n for n in os.listdir(folder) if ".partial-" in n or ".old-" in n] if os.path.isdir(folder) else []


@pytest.fixture
def video(tmp_path):
    first = make_frames(tmp_path / "frames")[0]
    write_mask(str(tmp_path / "first.png"), first)
    return tmp_path / "frames", tmp_path / "first.png"


# --------------------------------------------------------------------------- never delete or overwrite


def test_track_refuses_to_replace_a_user_folder(tmp_path, capsys, video):
    """Old code: `--out` holding a user's masks/ folder had it deleted."""
    frames, mask = video
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "mine.txt").write_text("precious")
    (out / "notes.txt").write_text("mine too")
    code, stdout, err = run(capsys, "track", frames, "--mask", mask, "--out", out, *FAST)
    assert code == 2
    one_error_line(err, "'masks'", "--overwrite")
    assert (out / "masks" / "mine.txt").read_text() == "precious" and (out / "notes.txt").read_text() == "mine too"
    assert "tracking" not in stdout  # refused before any work
    # with --overwrite the clash is replaced; the user's other files stay
    code, _, err = run(capsys, "track", frames, "--mask", mask, "--out", out, "--overwrite", *FAST)
    assert code == 0, err
    assert sorted(os.listdir(out / "masks")) == [f"{t:05d}.png" for t in range(4)]
    assert (out / "notes.txt").read_text() == "mine too"
    # a second run into its own output replaces it without --overwrite
    code, _, err = run(capsys, "track", frames, "--mask", mask, "--out", out, *FAST)
    assert code == 0, err
    assert not partials(out) and not partials(tmp_path)


def test_eval_davis_refuses_a_user_folder_named_like_a_sequence(tmp_path, capsys):
    root = make_davis(tmp_path / "davis", names=("a",))
    out = tmp_path / "eval"
    (out / "a").mkdir(parents=True)
    (out / "a" / "keep.txt").write_text("x")
    code, _, err = run(capsys, "eval-davis", "--root", root, "--out", out, *FAST)
    assert code == 2
    one_error_line(err, "'a'")
    assert (out / "a" / "keep.txt").read_text() == "x" and not (out / "results.csv").exists()


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, video):
    """Old code: tracked the whole video, then failed (and kept nothing)."""
    frames, mask = video
    target = tmp_path / "file.txt"
    target.write_text("mine")
    code, stdout, err = run(capsys, "track", frames, "--mask", mask, "--out", target, *FAST)
    assert code == 2 and "tracking" not in stdout
    one_error_line(err, "is an existing file")
    assert target.read_text() == "mine"
    code, stdout, err = run(capsys, "eval-davis", "--root", make_davis(tmp_path / "d", ("a",)), "--out", target, *FAST)
    assert code == 2 and "model" not in stdout
    one_error_line(err, "is an existing file")


def test_track_default_out_is_printed_first(tmp_path, capsys, video, monkeypatch):
    """Old code: --out was required."""
    frames, mask = video
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "track", frames, "--mask", mask, *FAST)
    assert code == 0, err
    assert os.path.join("tracked", "frames") in stdout.splitlines()[0]
    assert len(os.listdir(tmp_path / "tracked" / "frames" / "masks")) == 4


# --------------------------------------------------------------------------- complete or visibly incomplete


def test_eval_davis_merges_results_of_earlier_runs(tmp_path, capsys):
    """Old code: the second run's results.csv held only its own sequence."""
    root = make_davis(tmp_path / "davis", names=("a", "b"))
    out, both = tmp_path / "eval", tmp_path / "both"
    assert run(capsys, "eval-davis", "--root", root, "--sequences", "a", "--out", out, *FAST)[0] == 0
    assert run(capsys, "eval-davis", "--root", root, "--sequences", "b", "--out", out, *FAST)[0] == 0
    assert run(capsys, "eval-davis", "--root", root, "--sequences", "a", "b", "--out", both, *FAST)[0] == 0
    merged, single = (json.load(open(p / "results.json")) for p in (out, both))
    assert [r["sequence"] for r in merged["sequences"]] == ["a", "b"]
    for key in ("J&F", "J_mean", "F_mean", "J_recall", "J_decay"):
        assert merged["mean"][key] == pytest.approx(single["mean"][key], abs=1e-12)
    assert sorted(os.listdir(out)) == sorted([".densecorr-output", "a", "b", "results.csv", "results.json"])
    # other settings are not merged silently
    code, _, err = run(capsys, "eval-davis", "--root", root, "--sequences", "a", "--out", out, "--model", "lab", "--protocol", "mast", "--stride", "4", "--quiet")
    assert code == 2
    one_error_line(err, "other settings", "protocol")


def _spawn(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "densecorr", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(cond, proc, timeout=120.0):
    start = time.time()
    while time.time() - start < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def test_sigkill_during_eval_davis_leaves_old_or_new_state(tmp_path):
    """Killed while merging into an earlier output: every sequence folder and the results
    files stay complete, and the next run removes the leftovers. Old code: the staging folder
    lived beside --out and no later run removed it."""
    names = ("a", "b", "c")
    root = make_davis(tmp_path / "davis", names=names, n=12, h=64, w=96)
    out = tmp_path / "eval"
    args = ["eval-davis", "--root", root, "--out", out, "--model", "lab", "--protocol", "crw", "--quiet"]
    first = subprocess.run([sys.executable, "-m", "densecorr", *map(str, args)], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr
    before = json.load(open(out / "results.json"))
    proc = _spawn(args)
    try:
        def mid_sequence():  # a sequence half written: its commit is frames away
            for p in partials(out):
                masks = os.path.join(out, p, "masks")
                if os.path.isdir(masks) and 1 <= len(os.listdir(masks)) <= 6:
                    return True
            return False

        assert _wait_for(mid_sequence, proc), "the run ended before a sequence was half written"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert partials(out)  # what a kill leaves ...
    assert json.load(open(out / "results.json"))["sequences"] == before["sequences"]
    for name in names:  # ... and every entry in place is complete
        assert len(os.listdir(out / name / "masks")) == 12
    again = subprocess.run([sys.executable, "-m", "densecorr", *map(str, args)], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert not partials(out) and not partials(tmp_path)  # ... is removed by the next run
    assert [r["sequence"] for r in json.load(open(out / "results.json"))["sequences"]] == list(names)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_track_exits_cleanly(tmp_path, sig, status):
    """SIGTERM is handled like Ctrl-C: one line, exit 143, no output left looking complete.
    Old code: SIGTERM killed the process (status -15) and left its staging folder."""
    # Enough frames that the run is still going when the signal comes (lab tracks 96 x 128 fast).
    masks = make_frames(tmp_path / "frames", n=400, h=96, w=128)
    write_mask(str(tmp_path / "first.png"), masks[0])
    out = tmp_path / "out"
    proc = _spawn(["track", tmp_path / "frames", "--mask", tmp_path / "first.png", "--out", out, "--model", "lab", "--protocol", "crw", "--quiet"])
    try:
        def writing():
            stages = [os.path.join(out, p) for p in partials(out)]
            return any(os.path.isdir(os.path.join(s, "masks")) and len(os.listdir(os.path.join(s, "masks"))) >= 3 for s in stages)

        assert _wait_for(writing, proc), "the run ended before it wrote masks"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("densecorr:"), err
    assert not out.exists() and not partials(tmp_path)


# --------------------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    "case,words",
    [
        ("empty_out", ["--out is empty"]),
        ("out_under_a_file", ["cannot be created"]),
        ("unwritable_out", ["not writable"]),
        ("negative_stride", ["--stride", ">= 1"]),
        ("zero_stride", ["--stride", ">= 1"]),
        ("height_0", ["--height", ">= 8"]),  # was already refused by the old code
        ("temperature_inf", ["--temperature", "finite"]),
        ("temperature_nan", ["--temperature", "finite"]),
        ("height_text", ["--height", "not an integer"]),
        ("ckpt_bad_lab_config", ["bad config"]),
        ("ckpt_nan_config", ["finite"]),
        ("ckpt_config_not_a_dict", ["'config' must be a dict"]),
        ("ckpt_bad_model_config", ["bad config"]),
    ],
)
def test_track_bad_arguments(tmp_path, capsys, video, case, words):
    frames, mask = video
    out, extra = tmp_path / "out", list(FAST)
    if case == "empty_out":
        out = ""
    elif case == "out_under_a_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub"
    elif case == "unwritable_out":
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs Linux /proc")
        out = "/proc/densecorr-test-out"
    elif case in ("negative_stride", "zero_stride"):
        extra[extra.index("--stride") + 1] = "-2" if case == "negative_stride" else "0"
    elif case == "height_0":
        extra += ["--height", "0"]
    elif case == "height_text":
        extra += ["--height", "nan"]
    elif case.startswith("temperature"):
        extra += ["--temperature", case.split("_")[1]]
    elif case.startswith("ckpt"):
        ckpt = tmp_path / "m.pt"
        obj = {"ckpt_bad_lab_config": {"model": "lab", "config": {"strid": 2}, "state_dict": {}},
               "ckpt_nan_config": {"model": "lab", "config": {"stride": float("nan")}, "state_dict": {}},
               "ckpt_config_not_a_dict": {"model": "lab", "config": "stride=2", "state_dict": {}},
               "ckpt_bad_model_config": {"model": "corrflow", "config": {"width": "wide"}, "state_dict": {}}}[case]
        torch.save(obj, ckpt)
        extra[extra.index("--model") + 1] = str(ckpt)
    code, stdout, err = run(capsys, "track", frames, "--mask", mask, "--out", out, *extra)
    assert code == 2, err
    one_error_line(err, *words)
    assert not (tmp_path / "out").exists() and not partials(tmp_path)


def test_eval_davis_ground_truth_of_another_size(tmp_path, capsys):
    """Old code: a ValueError traceback from the metrics."""
    root = make_davis(tmp_path / "davis", names=("a",), n=4)
    write_mask(os.path.join(root, "Annotations", "480p", "a", "00002.png"), np.ones((16, 20), np.uint8))
    code, _, err = run(capsys, "eval-davis", "--root", root, "--out", tmp_path / "e", *FAST)
    assert code == 2
    one_error_line(err, "00002.png", "20x16")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("argv,words", [
    (["--sigma", "inf"], ["--sigma", "finite"]),
    (["--sigma", "0"], ["--sigma", "finite"]),
])
def test_eval_keypoints_bad_numbers(tmp_path, capsys, argv, words):
    """Old code: --sigma inf was accepted (every heat map constant)."""
    from densecorr.data import sample_root

    code, _, err = run(capsys, "eval-keypoints", "--root", sample_root(), "--out", tmp_path / "k", *FAST, *argv)
    assert code == 2
    one_error_line(err, *words)


def test_eval_davis_max_frames_out_of_range(tmp_path, capsys):
    code, _, err = run(capsys, "eval-davis", "--root", make_davis(tmp_path / "d", ("a",)), "--max-frames", "1", "--out", tmp_path / "e", *FAST)
    assert code == 2
    one_error_line(err, "--max-frames", ">= 2")


# --------------------------------------------------------------------------- masks with many ids


def test_track_keeps_object_ids_above_255(tmp_path, capsys, video):
    """A 16-bit first mask with ids 1 and 300: the outputs keep both. Old code: the 16-bit
    mask was converted to 8 bits, merging the ids."""
    frames, _ = video
    m = read_mask(str(tmp_path / "first.png")).astype(np.uint16)
    m[m == 2] = 300
    Image.fromarray(m).save(tmp_path / "wide.png")  # 16-bit grayscale PNG
    code, _, err = run(capsys, "track", frames, "--mask", tmp_path / "wide.png", "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    for t in range(4):
        got = read_mask(str(tmp_path / "out" / "masks" / f"{t:05d}.png"))
        assert got.dtype == np.uint16 and set(np.unique(got)) == {0, 1, 300}
        assert (got[22:26, 6 + 4 * t : 10 + 4 * t] == 300).all() and (got[6:10, 6 + 4 * t : 10 + 4 * t] == 1).all()


# --------------------------------------------------------------------------- one pass over the data


def test_track_reads_each_frame_once_and_checks_the_mask_once(tmp_path, capsys, video, monkeypatch):
    """Old code: frame 0 was read twice and the first mask checked three times."""
    import densecorr.data.davis as davis
    import densecorr.data.io as io

    frames, mask = video
    reads, checks = [], []
    real_read, real_ids = io.read_image, davis.object_ids
    monkeypatch.setattr(io, "read_image", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(davis, "object_ids", lambda m: checks.append(1) or real_ids(m))
    code, _, err = run(capsys, "track", frames, "--mask", mask, "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    assert sorted(os.path.basename(p) for p in reads) == [f"{t:05d}.png" for t in range(4)]
    assert len(checks) == 1


def test_video_frame_count_comes_from_the_container(tmp_path, monkeypatch):
    """Old code: FrameSource decoded the whole video to count its frames."""
    import av

    from densecorr.data.io import FrameSource

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for t in range(7):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 48, 3), 30 * t, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    decoded = []
    real = FrameSource._decode
    monkeypatch.setattr(FrameSource, "_decode", lambda self: decoded.append(1) or real(self))
    src = FrameSource(str(path))
    assert len(src) == 7 and not decoded
    assert len(list(src)) == 7 and len(decoded) == 1


# --------------------------------------------------------------------------- the command itself


def test_version_and_python_m(capsys):
    """Old code: no --version, no densecorr/__main__.py."""
    import densecorr

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"densecorr {densecorr.__version__}"
    res = subprocess.run([sys.executable, "-m", "densecorr", "--version"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"densecorr {densecorr.__version__}"


def test_export_and_plot_subcommands(tmp_path, capsys):
    """Old code: only `densecorr train --export/--plot`."""
    from densecorr import models

    net = models.create("corrflow", width=4, out_dim=8, stride=8, radius=2)
    ckpt = tmp_path / "ckpt-00000003.pt"
    torch.save({"model": "corrflow", "config": net.config.to_dict(), "state_dict": net.state_dict(),
                "train": {"step": 3, "config": {"model": "corrflow"}}}, ckpt)
    code, stdout, err = run(capsys, "export", ckpt, tmp_path / "m.pt")
    assert code == 0, err
    assert "step 3" in stdout
    loaded, _ = models.load(str(tmp_path / "m.pt"), log=lambda s: None)
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    code, _, err = run(capsys, "export", tmp_path / "nothing.pt", tmp_path / "m2.pt")
    assert code == 2
    one_error_line(err, "does not exist")

    pytest.importorskip("matplotlib")
    runs = tmp_path / "run"
    runs.mkdir()
    with open(runs / "log.jsonl", "w") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"kind": "train", "step": step, "time": 0, "loss": 1.0 / step}) + "\n")
    code, stdout, err = run(capsys, "plot", runs)
    assert code == 0, err
    assert (runs / "curves.png").is_file()
    code, _, err = run(capsys, "plot", tmp_path / "norun")
    assert code == 2
    one_error_line(err, "log.jsonl")


def test_bench_without_the_harness_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "densecorr.bench", None)  # import fails
    code, _, err = run(capsys, "bench", "--help")
    assert code == 2
    one_error_line(err, "densecorr.bench")


APP_MODULES = [
    "densecorr.checkpoint", "densecorr.evaluation", "densecorr.system", "densecorr.propagation.protocols",
    "densecorr.propagation.labels", "densecorr.propagation.propagator", "densecorr.cli.output", "densecorr.cli.track",
    "densecorr.cli.eval_davis", "densecorr.models.registry", "densecorr.models.lab", "densecorr.data.io",
]


def test_application_modules_import_alone():
    """No import cycle: each application-layer module imports first, alone, in a fresh interpreter."""
    script = (
        "import subprocess, sys\nbad = []\nfor m in sys.argv[1:]:\n"
        "    r = subprocess.run([sys.executable, '-c', 'import importlib; importlib.import_module(%r)' % m], capture_output=True, text=True)\n"
        "    if r.returncode: bad.append(m + ': ' + (r.stderr.strip().splitlines() or ['?'])[-1])\n"
        "print(chr(10).join(bad)); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", script, *APP_MODULES], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
