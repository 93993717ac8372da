"""Training loop: deterministic sampling, resume after a kill, DDP equivalence, bad data.

Tiny models (width 4) on 32 x 32 crops of frames made from the DAVIS sample shipped in the
package (densecorr.data.sample_root), so the suite needs nothing outside the repository.
"""
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

from densecorr import cli, training
from densecorr.data import FrameSource, sample_root
from densecorr.data.io import DataError
from densecorr.training import (
    CheckpointError,
    SeededClips,
    StreamBatches,
    TrainConfig,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    lr_factor,
    preset,
    readable_sequences,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "vidcolor": {"width": 4, "out_dim": 8},
    "corrflow": {"width": 4, "out_dim": 8, "stride": 8, "radius": 2},
}


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    """Two short frame folders (48 px high) cut from the shipped DAVIS sample."""
    root = tmp_path_factory.mktemp("video")
    src = FrameSource(os.path.join(sample_root(), "JPEGImages", "480p", "horsejump-high"))
    for s, (a, b) in enumerate([(0, 10), (10, 20)]):
        folder = root / f"seq{s}"
        folder.mkdir()
        for i in range(a, b):
            im = Image.fromarray(src[i]).resize((85, 48), Image.BILINEAR)
            im.save(folder / f"{i:05d}.png")
    return str(root)


def tiny_config(model: str, data: str, **changes) -> TrainConfig:
    values = dict(model=model, model_config=dict(TINY[model]), data=data, resize=36, crop=(32, 32), gaps=(1, 2),
                  batch_size=2, steps=6, lr=1e-3, log_every=1, ckpt_every=1, keep_last=2, threads=1, eval_every=0)
    values.update(changes)
    return TrainConfig.from_dict(values)


def run_cli(args, env_extra=None, **popen):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def cli_args(cfg: TrainConfig, out: str) -> list[str]:
    path = os.path.join(os.path.dirname(out), os.path.basename(out) + ".json")
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f)
    # The file holds every field; the paper presets' model_config is {}, so the run's model is exactly cfg's.
    return ["examples/train.py", "--config", path, "--out", out, "--quiet", "--preset", "paper"]


def final_state(out: str) -> dict:
    return torch.load(os.path.join(out, "model.pt"), weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- sampling and schedule


def test_stream_batches_split_global_batches_and_resume():
    n, b, steps = 7, 2, 5
    single = StreamBatches(n, b, accum_steps=2, rank=0, world_size=1, seed=3)
    ranks = [StreamBatches(n, b, accum_steps=1, rank=r, world_size=2, seed=3) for r in range(2)]
    it1 = iter(single)
    its = [iter(s) for s in ranks]
    seen = []
    for step in range(steps):
        micro = [next(it1), next(it1)]
        assert micro == [next(its[0]), next(its[1])]  # same global batch, same split
        seen += [i for m in micro for i, _ in m]
    # Every clip once per epoch: the first 7 positions are a permutation.
    assert sorted(seen[:n]) == list(range(n))
    # A sampler started at step 3 continues exactly where the first left off.
    again = iter(StreamBatches(n, b, accum_steps=2, rank=0, world_size=1, seed=3, start=3))
    ref = iter(StreamBatches(n, b, accum_steps=2, rank=0, world_size=1, seed=3))
    for _ in range(6):
        next(ref)
    assert [next(again) for _ in range(4)] == [next(ref) for _ in range(4)]
    # Another seed, another order.
    other = iter(StreamBatches(n, b, accum_steps=2, rank=0, world_size=1, seed=4))
    assert [next(other) for _ in range(4)] != [next(iter(StreamBatches(n, b, 2, 0, 1, 3))) for _ in range(4)]


def test_lr_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 100) == pytest.approx(0.1)
    step = TrainConfig(schedule="step", milestones=(5, 8), gamma=0.5)
    assert [lr_factor(step, s) for s in (0, 4, 5, 7, 8, 20)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="TrainConfig.optimizer"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_dict({"learning_rate": 1})
    from densecorr import models

    for name in models.list_models():
        for kind in ("cpu", "paper"):
            cfg = preset(name, kind)
            config = models.get_config(name, **cfg.model_config)
            stride = getattr(config, "stride", 8)
            assert cfg.crop[0] % stride == 0 and cfg.crop[1] % stride == 0, (name, kind)
            if hasattr(config, "frame_size"):
                assert tuple(cfg.crop) == (config.frame_size,) * 2, (name, kind)
    assert cli.main(["train", "--model", "nosuchmodel", "--print-config"]) == 2


def test_presets_live_beside_each_model():
    import sys as _sys

    from densecorr import models

    for name in models.list_models():
        module = _sys.modules[models.model_class(name).__module__]
        assert set(module.PRESETS) >= {"cpu", "paper"}, name
        for kind, fields in module.PRESETS.items():
            cfg = preset(name, kind)
            expected = TrainConfig.from_dict({**fields, "model": name}).to_dict()
            assert cfg.to_dict() == expected, (name, kind)
    # The shipped default's recipe (models/mast.py) and an override on top.
    assert preset("mast", "cpu").steps == 4000 and preset("mast", "cpu").schedule == "cosine"
    assert preset("mast", "cpu", lr=5e-4).lr == 5e-4
    with pytest.raises(ValueError, match="unknown preset 'gpu' for model 'mast'"):
        preset("mast", "gpu")
    with pytest.raises(ValueError, match="unknown model"):
        preset("nosuchmodel")


def test_exponent_without_a_dot_is_a_number_in_set_values_and_yaml_configs(tmp_path):
    # PyYAML (YAML 1.1) reads "3e-4" as the string '3e-4', so `--set lr=3e-4` and `lr: 3e-4` in a
    # config file failed with "TrainConfig.lr must be a finite number > 0, got '3e-4'".
    assert training.parse_value("3e-4") == 3e-4 and isinstance(training.parse_value("3e-4"), float)
    assert training.parse_value("-2E+3") == -2000.0 and training.parse_value("1e5") == 1e5
    assert training.parse_value("5.0e-4") == 5e-4 and training.parse_value("12") == 12
    assert training.parse_value("1e") == "1e" and training.parse_value("e5") == "e5"
    assert training.parse_value("[3e-4, 1]") == [3e-4, 1]
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-4\nmodel_config: {temperature: 7e-2}\n")
    values = training.read_config_file(str(path))
    assert values == {"lr": 3e-4, "model_config": {"temperature": 0.07}}
    assert TrainConfig.from_dict({**values, "model": "crw"}).lr == 3e-4


# --------------------------------------------------------------------------- training, checkpoints, eval


def test_train_logs_checkpoints_and_periodic_eval(frames_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_config("vidcolor", frames_root, steps=8, lr=3e-3, eval_every=8, eval_root=sample_root(),
                      eval_max_frames=3, eval_height=128, gaps=(1,))
    result = training.train(cfg, out, quiet=True, log=lambda m: None)
    assert result["step"] == 8
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert all(np.isfinite(r["loss"]) and r["clips_per_s"] > 0 for r in train_rows)
    # The picture of the curves: redrawn at the end, and on demand from the log.
    curves = os.path.join(out, "curves.png")
    assert os.path.getsize(curves) > 1000
    os.remove(curves)
    assert cli.main(["plot", out]) == 0 and os.path.getsize(curves) > 1000
    assert cli.main(["plot", str(tmp_path / "nothing-here")]) == 2
    # The colourisation loss on the training clips (fixed crops) falls from the initial weights.
    from densecorr import models

    clips = SeededClips(readable_sequences([frames_root], print), 4, (1,), cfg.resize, cfg.crop, cfg.flip)
    batch = torch.stack([clips[(i, i)] for i in range(len(clips))])
    torch.manual_seed(training._mix(cfg.seed, "init") % 2**63)  # the initialisation train() used
    before = models.create("vidcolor", **TINY["vidcolor"])
    after = models.create("vidcolor", **TINY["vidcolor"])
    after.load_state_dict(torch.load(os.path.join(out, "model.pt"), weights_only=True)["state_dict"])
    with torch.no_grad():
        loss_before, loss_after = float(before(batch)["loss"]), float(after(batch)["loss"])
    assert loss_after < 0.9 * loss_before, (loss_before, loss_after)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["J&F"] <= 1.0
    # Only the newest keep_last checkpoints remain; each is also a model checkpoint.
    assert [s for s, _ in list_checkpoints(out)] == [7, 8]
    from densecorr.propagation import load_model

    model, desc = load_model(os.path.join(out, "ckpt-00000008.pt"), log=lambda m: None)
    assert model.stride == 8 and "vidcolor" in desc
    ckpt = load_checkpoint(os.path.join(out, "ckpt-00000008.pt"))
    assert ckpt["train"]["step"] == 8 and ckpt["model"] == "vidcolor"
    # `densecorr export` strips the training state and keeps the weights.
    exported = str(tmp_path / "exported.pt")
    assert cli.main(["export", os.path.join(out, "ckpt-00000008.pt"), exported]) == 0
    assert set(torch.load(exported, weights_only=True)) == {"model", "config", "state_dict", "trained"}
    assert load_model(exported, log=lambda m: None)[0].stride == 8
    final = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    for k, v in final["state_dict"].items():
        assert torch.equal(v, ckpt["state_dict"][k]), k


def test_resume_after_kill_matches_uninterrupted_run(frames_root, tmp_path):
    # CorrFlow draws random channel dropout and scheduled sampling: the RNG and the
    # scheduled-sampling step count must come back with the checkpoint.
    cfg = tiny_config("corrflow", frames_root, steps=10, model_config={**TINY["corrflow"], "sampling_decay_steps": 10})
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    p_full = run_cli(cli_args(cfg, full))
    p_cut = run_cli(cli_args(cfg, cut))
    deadline = time.time() + 150
    while not any(s >= 3 for s, _ in list_checkpoints(cut)):
        assert p_cut.poll() is None, p_cut.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    p_cut.send_signal(signal.SIGKILL)
    p_cut.wait()
    killed_at = max(s for s, _ in list_checkpoints(cut))
    assert killed_at < cfg.steps, "the run finished before it was killed; the test needs a slower run"
    assert not os.path.exists(os.path.join(cut, "model.pt"))
    p_resume = run_cli(cli_args(cfg, cut))
    out_resume, _ = p_resume.communicate(timeout=150)
    out_full, _ = p_full.communicate(timeout=150)
    assert p_resume.returncode == 0, out_resume
    assert p_full.returncode == 0, out_full
    a, b = final_state(full), final_state(cut)
    assert a.keys() == b.keys()
    assert int(b["num_steps"]) == cfg.steps
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {killed_at}"


def test_ddp_two_processes_match_single_process(frames_root, tmp_path):
    cfg = tiny_config("vidcolor", frames_root, steps=3, batch_size=1, ckpt_every=3)
    ddp, single = str(tmp_path / "ddp"), str(tmp_path / "single")
    p = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cli_args(cfg, ddp)])
    q = run_cli(cli_args(cfg.replace(accum_steps=2), single))
    out_p, _ = p.communicate(timeout=200)
    out_q, _ = q.communicate(timeout=200)
    assert p.returncode == 0, out_p
    assert q.returncode == 0, out_q
    rows = [json.loads(line) for line in open(os.path.join(ddp, "log.jsonl"))]
    sync = [r for r in rows if r["kind"] == "sync"]
    assert sync and all(len(r["fingerprints"]) == 2 and len(set(r["fingerprints"])) == 1 for r in sync)
    a, b = final_state(ddp), final_state(single)
    from densecorr import models

    torch.manual_seed(training._mix(cfg.seed, "init") % 2**63)  # the initialisation train() used
    init = dict(models.create("vidcolor", **TINY["vidcolor"]).named_parameters())
    for k in init:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert sum(not torch.equal(init[k].detach(), a[k]) for k in init) > len(init) // 2  # training moved them


def test_corrupt_checkpoint_is_reported_and_passed_over(frames_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_config("vidcolor", frames_root, steps=2, gaps=(1,))
    training.train(cfg, out, quiet=True, log=lambda m: None)
    newest = os.path.join(out, "ckpt-00000002.pt")
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    notes = []
    path, ckpt = find_resume(out, notes.append)
    assert path.endswith("ckpt-00000001.pt") and ckpt["train"]["step"] == 1
    assert any("ckpt-00000002.pt" in n and "corrupt" in n for n in notes)
    # Asked for explicitly, the bad file ends the command with a clear error (exit status 2).
    assert cli.main(["train", "--model", "vidcolor", "--data", frames_root, "--out", out, "--resume", newest, "--quiet"]) == 2
    not_ckpt = str(tmp_path / "weights.pt")
    torch.save({"state_dict": {}}, not_ckpt)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(not_ckpt)


def test_unreadable_video_is_skipped_with_a_warning(frames_root, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    os.symlink(os.path.join(frames_root, "seq0"), root / "good")
    notes = []
    paths = readable_sequences([str(root)], notes.append)
    assert paths == [str(root / "good")]
    assert len(notes) == 1 and "broken.mp4" in notes[0] and "skipping" in notes[0]
    clips = SeededClips(paths, clip_len=3, gaps=(1,), resize=36, crop=(32, 32), flip=True)
    a, b = clips[(2, 11)], clips[(2, 11)]
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)  # the crop is a function of the seed
    with pytest.raises(DataError, match="no readable"):
        readable_sequences([str(root / "broken.mp4")], notes.append)


# --------------------------------------------------------------------------- hardening


def _bad_frames_root(frames_root, tmp_path):
    """seq0 with a corrupt frame (00003.png) and a frame of another size (00006.png); seq1 intact."""
    import shutil

    root = tmp_path / "badframes"
    for name in ("seq0", "seq1"):
        shutil.copytree(os.path.join(frames_root, name), root / name)
    (root / "seq0" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.open(root / "seq0" / "00006.png").resize((64, 40)).save(root / "seq0" / "00006.png")
    return str(root)


def test_bad_frames_are_skipped_with_one_warning_each(frames_root, tmp_path):
    import warnings

    root = _bad_frames_root(frames_root, tmp_path)
    paths = readable_sequences([root], print)
    assert len(paths) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clips = SeededClips(paths, clip_len=3, gaps=(1, 2), resize=36, crop=(32, 32), flip=True)
        first = [clips[(i, 100 + i)] for i in range(len(clips))]
        again = [clips[(i, 100 + i)] for i in range(len(clips))]  # a second epoch: no new warnings
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2, notes
    assert any("00003.png" in n for n in notes) and any("00006.png" in n and "64x40" in n for n in notes)
    assert all(c.shape == (3, 3, 32, 32) for c in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # The replacement of a bad clip depends only on (index, seed): a fresh dataset read in
    # another order (another worker, a resumed run) gives the same clips.
    fresh = SeededClips(paths, clip_len=3, gaps=(1, 2), resize=36, crop=(32, 32), flip=True)
    for i in reversed(range(len(fresh))):
        assert torch.equal(fresh[(i, 100 + i)], first[i]), i


def test_resume_is_exact_after_bad_frames(frames_root, tmp_path):
    root = _bad_frames_root(frames_root, tmp_path)
    cfg = tiny_config("vidcolor", root, steps=6, gaps=(1,), ckpt_every=1)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    training.train(cfg, full, quiet=True, log=lambda m: None)
    training.train(cfg.replace(steps=3), cut, quiet=True, log=lambda m: None)  # stops at step 3 ...
    notes = []
    training.train(cfg, cut, quiet=True, log=notes.append)  # ... and resumes from its checkpoint
    assert any("resumed from" in n and "ckpt-00000003.pt" in n for n in notes)
    a, b = final_state(full), final_state(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _tiny_mast_args(data, out, lr):
    return ["examples/train.py", "--model", "mast", "--preset", "cpu", "--model-set", "width=4", "--model-set", "out_dim=8",
            "--data", data, "--set", "resize=36", "--set", "crop=[32,32]", "--set", "gaps=[1]", "--set", "batch_size=2",
            "--set", "ckpt_every=1", "--set", "log_every=1", "--set", "threads=1", "--steps", "6", "--lr", lr, "--out", out, "--quiet"]


def test_diverging_run_stops_cleanly_with_its_last_good_checkpoint(frames_root, tmp_path):
    # lr 1e30: the first update makes MAST's features overflow, the loss turns NaN. Before, the
    # backward through NaN grid_sample coordinates crashed the process (SIGSEGV).
    out = str(tmp_path / "run")
    p = run_cli(_tiny_mast_args(frames_root, out, "1e30"))
    text, _ = p.communicate(timeout=200)
    assert p.returncode == 2, text
    last = text.strip().splitlines()[-1]
    assert "training stopped at step 4: 3 steps in a row skipped (non-finite loss)" in last, text
    assert "Traceback" not in text
    assert [s for s, _ in list_checkpoints(out)] == [1] and "ckpt-00000001.pt" in last
    ckpt = load_checkpoint(os.path.join(out, "ckpt-00000001.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not os.path.exists(os.path.join(out, "model.pt"))


def test_a_non_finite_step_is_skipped_before_backward(frames_root, tmp_path, monkeypatch):
    from densecorr import models
    from densecorr.training import DistInfo, build_optimizer, train_step

    cfg = tiny_config("corrflow", frames_root, gaps=(1,), accum_steps=2)
    torch.manual_seed(0)
    model = models.create("corrflow", **TINY["corrflow"])
    clips = SeededClips(readable_sequences([frames_root], print), model.clip_length, (1,), cfg.resize, cfg.crop, cfg.flip)
    batches = iter([torch.stack([clips[(i, i)] for i in range(j, j + 2)]) for j in range(0, 8, 2)])
    optimizer = build_optimizer(cfg, model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    real_forward = type(model).forward
    calls = []

    def forward(self, clip):
        out = real_forward(self, clip)
        calls.append(1)
        if len(calls) == 1:  # the first micro-batch of the first step
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(type(model), "forward", forward)
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: pytest.fail("backward ran on a non-finite loss"))
    before = training.parameter_fingerprint(model)
    res = train_step(model, batches, optimizer, scaler, cfg, torch.device("cpu"), None, DistInfo())
    assert res.skipped == "non-finite loss" and res.clips == 4 and len(calls) == 1  # both micro-batches drawn, one run
    assert training.parameter_fingerprint(model) == before
    assert int(model.num_steps) == 0  # the buffers (step counter, BatchNorm statistics) are restored
    assert all(p.grad is None for p in model.parameters())
    monkeypatch.undo()
    res = train_step(model, batches, optimizer, scaler, cfg, torch.device("cpu"), None, DistInfo())
    assert res.skipped is None and np.isfinite(res.terms["loss"]) and int(model.num_steps) == 2
    assert training.parameter_fingerprint(model) != before


_KILL_DURING_SAVE = r"""
import json, os, signal, sys
import torch
from densecorr import cli, training

real_save = torch.save


def save(obj, f, *args, **kwargs):
    # Die in the middle of writing checkpoint 3: some bytes are out, the rest never comes.
    if "ckpt-00000003" in getattr(f, "name", str(f)):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
cfg = training.TrainConfig.from_dict(json.load(open(sys.argv[1])))
training.train(cfg, sys.argv[2], quiet=True)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(frames_root, tmp_path):
    cfg = tiny_config("vidcolor", frames_root, steps=5, gaps=(1,), keep_last=3)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg.to_dict()))
    p = run_cli(["-c", _KILL_DURING_SAVE, str(config), cut])
    text, _ = p.communicate(timeout=200)
    assert p.returncode == -signal.SIGKILL, text
    assert [s for s, _ in list_checkpoints(cut)] == [1, 2]
    assert load_checkpoint(os.path.join(cut, "ckpt-00000002.pt"))["train"]["step"] == 2
    leftovers = [n for n in os.listdir(cut) if ".tmp-" in n]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt-00000003.pt")
    notes = []
    training.train(cfg, cut, quiet=True, log=notes.append)
    assert any("resumed from" in n and "ckpt-00000002.pt" in n for n in notes), notes
    assert not [n for n in os.listdir(cut) if ".tmp-" in n]  # the killed writer's file is cleaned up
    training.train(cfg, full, quiet=True, log=lambda m: None)
    a, b = final_state(full), final_state(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("args, says", [
    (["--set", "threads=-1"], "TrainConfig.threads"),
    (["--lr", "nan"], "TrainConfig.lr"),
    (["--lr", "inf"], "TrainConfig.lr"),
    (["--lr", "-0.001"], "TrainConfig.lr"),
    (["--set", "clip_grad=inf"], "TrainConfig.clip_grad"),
    (["--set", "batch_size=2.5"], "TrainConfig.batch_size"),
    (["--set", "nosuchfield=1"], "no field"),
    (["--model-set", "width=-4"], "width"),
    (["--config", "BAD.json"], "is not valid JSON (line 1"),
    (["--config", "BAD.yaml"], "is not valid YAML"),
    (["--config", "LIST.yaml"], "must hold a mapping"),
    (["--config", "MISSING.json"], "does not exist"),
])
def test_bad_training_arguments_end_in_one_line(frames_root, tmp_path, capsys, args, says):
    (tmp_path / "BAD.json").write_text('{"lr": 1e-3,, }')
    (tmp_path / "BAD.yaml").write_text("lr: [1e-3\nsteps: 2\n")
    (tmp_path / "LIST.yaml").write_text("- lr\n- steps\n")
    args = [str(tmp_path / a) if a.isupper() or a.startswith(("BAD", "LIST", "MISSING")) else a for a in args]
    out = str(tmp_path / "run")
    argv = ["--model", "vidcolor", "--preset", "cpu", "--model-set", "width=4", "--data", frames_root, "--steps", "1",
            "--set", "resize=36", "--set", "crop=[32,32]", "--out", out, "--quiet", *args]
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and says in err[0], err
    assert not os.path.exists(os.path.join(out, "model.pt"))


def test_sigterm_stops_training_cleanly_and_it_resumes(frames_root, tmp_path):
    cfg = tiny_config("vidcolor", frames_root, steps=400, gaps=(1,))
    out = str(tmp_path / "run")
    p = run_cli(cli_args(cfg, out))
    deadline = time.time() + 150
    while not list_checkpoints(out):
        assert p.poll() is None, p.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    text, _ = p.communicate(timeout=100)
    assert p.returncode == 143, text
    assert text.strip().splitlines()[-1].startswith("densecorr train: terminated; run it again with the same --out"), text
    assert "Traceback" not in text and not os.path.exists(os.path.join(out, "model.pt"))
    step, newest = list_checkpoints(out)[-1]
    assert load_checkpoint(newest)["train"]["step"] == step < cfg.steps
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"kind": "train", "step": 99')  # a row cut short, as by a kill
    notes = []
    training.train(cfg.replace(steps=step + 1), out, quiet=True, log=notes.append)
    assert any(f"ckpt-{step:08d}.pt" in n for n in notes), notes
    rows = [line for line in open(os.path.join(out, "log.jsonl"))]
    assert json.loads(rows[-1])["step"] == step + 1  # the next row is whole, on its own line
