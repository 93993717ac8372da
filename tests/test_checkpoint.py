"""The model-checkpoint format (densecorr.checkpoint) and resolving a model spec (densecorr.models.load)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from densecorr import models
from densecorr.checkpoint import CheckpointError, atomic_save, read_model, save_model
from densecorr.data.io import DataError

TINY = {"width": 4, "out_dim": 8, "stride": 8, "radius": 2}


def test_save_and_read_round_trip(tmp_path):
    net = models.create("corrflow", **TINY)
    path = tmp_path / "m.pt"
    written = save_model(str(path), "corrflow", net.config.to_dict(), net.state_dict(), trained={"step": 5})
    ckpt = read_model(str(path))
    assert ckpt["model"] == "corrflow" and ckpt["config"] == net.config.to_dict() and ckpt["trained"] == {"step": 5}
    assert set(written) == {"model", "config", "state_dict", "trained"}
    loaded, desc = models.load(str(path), log=lambda s: None)
    assert "m.pt" in desc and isinstance(loaded, type(net)) and not loaded.training
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert not [n for n in os.listdir(tmp_path) if n != "m.pt"]  # no temporary file left


@pytest.mark.parametrize(
    "content,words",
    [
        (None, "does not exist"),
        (b"PK\x03\x04 not a zip", "cannot read checkpoint"),
        ({"weights": {}}, "'model', 'config', 'state_dict'"),
        ([1, 2], "'model', 'config', 'state_dict'"),
        ({"model": 3, "config": {}, "state_dict": {}}, "'model' must be a model name"),
        ({"model": "lab", "config": "stride=2", "state_dict": {}}, "'config' must be a dict"),
        ({"model": "lab", "config": {"stride": float("inf")}, "state_dict": {}}, "finite"),
        ({"model": "lab", "config": {}, "state_dict": [1]}, "'state_dict' must be a dict"),
    ],
)
def test_read_model_errors_are_one_line(tmp_path, content, words):
    path = tmp_path / "c.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as exc:
        read_model(str(path))
    assert words in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, DataError)


@pytest.mark.parametrize(
    "ckpt,words",
    [
        ({"model": "lab", "config": {"strid": 2}, "state_dict": {}}, "bad config"),
        ({"model": "lab", "config": {"stride": 0}, "state_dict": {}}, "bad config"),
        ({"model": "lab", "config": {"stride": 2.5}, "state_dict": {}}, "bad config"),
        ({"model": "corrflow", "config": {"width": -3}, "state_dict": {}}, "bad config"),
        ({"model": "corrflow", "config": {"no_such_field": 1}, "state_dict": {}}, "bad config"),
        ({"model": "nope", "config": {}, "state_dict": {}}, "does not register"),
    ],
)
def test_load_refuses_bad_configs(tmp_path, ckpt, words):
    """Old code: a lab checkpoint with an unknown field was a TypeError traceback."""
    path = tmp_path / "c.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=words):
        models.load(str(path))


def test_load_specs(capsys):
    lab, desc = models.load("lab", stride=4)
    assert isinstance(lab, models.LabEmbedding) and lab.stride == 4 and desc == "lab (stride 4)"
    net, desc = models.load("corrflow:init")  # a bare name is its shipped trained checkpoint now (issue 13)
    assert desc == "corrflow (random init)" and "randomly initialised" in capsys.readouterr().out
    with pytest.raises(DataError, match="unknown model"):
        models.load("no-such-model")
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load("missing.pt")
    with pytest.raises(DataError, match="stride"):
        models.load("lab", stride=-1)
    from densecorr.propagation import load_model

    assert load_model is models.load  # the old name, one function


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    atomic_save({"v": 1}, str(path))

    def broken(obj, f, *a, **k):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"v": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.pt"]


def test_sigkill_during_writes_leaves_a_readable_checkpoint(tmp_path):
    """A process writing checkpoints in a loop is SIGKILLed at several moments: the file is
    always the previous or the next complete checkpoint."""
    path = tmp_path / "m.pt"
    save_model(str(path), "lab", {"stride": 2}, {}, trained={"step": -1})
    code = (
        "import sys, torch\n"
        "from densecorr.checkpoint import save_model\n"
        "big = {'w': torch.randn(2_000_000)}\n"
        "step = 0\n"
        "while True:\n"
        "    save_model(sys.argv[1], 'lab', {'stride': 2}, big, trained={'step': step})\n"
        "    step += 1\n"
        "    print(step, flush=True)\n"
    )
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            proc.stdout.readline()  # one write done
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        ckpt = read_model(str(path))
        assert ckpt["trained"]["step"] >= 0 and ckpt["state_dict"]["w"].shape == (2_000_000,)
