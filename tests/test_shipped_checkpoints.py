"""The trained checkpoint shipped for every registered method (densecorr/assets/checkpoints/,
issue 13): `models.load("NAME")` is it, `models.load("NAME:init")` the same network at
training's initialisation, and the trained one propagates labels better than its own init."""
import os

import pytest
import torch

from densecorr import models
from densecorr.checkpoint import ASSETS, read_model
from densecorr.data.io import DataError
from densecorr.evaluation import evaluate_davis
from densecorr.models.registry import init_model, shipped_checkpoint

METHODS = models.list_models()
SAMPLE = os.path.join(ASSETS, "davis_sample")

# J&F on the packaged sample (horsejump-high), crw protocol, height 160, first 10 frames: the
# trained checkpoint must beat its own init by this much. Measured gaps (trained - init, one
# thread): vidcolor +0.227, corrflow +0.164 (the 4000-step preset of 2026-12-02), uvc +0.243 (8000 steps), cycletime +0.094 (width 32, 3000 steps), crw +0.098 (box nodes, 2026-12-07),
# mast +0.270; each margin is about half its gap. (cycletime: the one-stage stride-4 preset of
# 2026-12-02, whose init already tracks well on this one short sequence; the gaps at 480p on
# the seven sequences are in docs/methods.md.)
SAMPLE_MARGIN = {"vidcolor": 0.1, "corrflow": 0.08, "uvc": 0.1, "cycletime": 0.05, "crw": 0.05, "mast": 0.12}


def _quiet(_msg):
    pass


@pytest.mark.parametrize("name", METHODS)
def test_shipped_checkpoint_loads(name):
    path = shipped_checkpoint(name)
    assert os.path.isfile(path), f"no trained checkpoint shipped for {name!r} at {path}"
    assert os.path.getsize(path) < 5 * 2**20, "shipped checkpoints stay small (tens of kB to a few MB)"
    ckpt = read_model(path)
    assert ckpt["model"] == name and ckpt["trained"]["step"] > 0
    model, desc = models.load(name, log=_quiet)
    assert isinstance(model, models.model_class(name)) and not model.training
    assert desc == f"{name} (trained, {name}.pt)"
    frames = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.embed(frames)
    assert feats.shape[-2:] == (64 // model.stride, 64 // model.stride) and torch.isfinite(feats).all()


@pytest.mark.parametrize("name", METHODS)
def test_init_is_the_same_network_untrained(name, capsys):
    trained, _ = models.load(name, log=_quiet)
    state = torch.get_rng_state()
    init, desc = models.load(f"{name}:init")
    assert torch.equal(state, torch.get_rng_state()), "NAME:init must not move the global torch RNG"
    assert desc == f"{name} (random init)" and "randomly initialised" in capsys.readouterr().out
    assert init.config == trained.config  # same architecture ...
    a, b = trained.state_dict(), init.state_dict()
    assert a.keys() == b.keys()
    assert any(a[k].is_floating_point() and not torch.equal(a[k], b[k]) for k in a)  # ... other weights
    again = init_model(name)  # reproducible: training's seeded initialisation
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in b.items())


def test_unshipped_method_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(models.registry, "shipped_checkpoint", lambda name: str(tmp_path / f"{name}.pt"))
    with pytest.raises(DataError) as err:
        models.load("crw")
    text = str(err.value)
    assert "\n" not in text and "'crw:init'" in text and "densecorr train --model crw --preset cpu" in text
    model, desc = models.load("crw:init", log=_quiet)  # the preset's network, still available
    assert desc == "crw (random init)"
    with pytest.raises(DataError, match="unknown model"):
        models.load("crw:trained")


@pytest.mark.parametrize("name", METHODS)
def test_trained_beats_its_init_on_the_sample(name):
    scores = {}
    for spec in (name, f"{name}:init"):
        model, _ = models.load(spec, log=_quiet)
        scores[spec] = evaluate_davis(model, SAMPLE, max_frames=10, height=160, protocol="crw")["J&F"]
    assert scores[name] > scores[f"{name}:init"] + SAMPLE_MARGIN[name], scores
