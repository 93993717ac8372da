"""The model-checkpoint format, read and written in one place.

A model checkpoint is a `torch.save`d dict:

    {"model": "mast",            # a name registered in densecorr.models, or "lab"
     "config": {...},            # the model's config fields (ModelConfig.to_dict())
     "state_dict": {...},        # the weights (empty for "lab")
     "trained": {...}}           # optional: where the weights come from (step, training config)

Training checkpoints (densecorr.training) are model checkpoints with more keys ("train": the
optimiser, scheduler and RNG states); every reader here ignores keys it does not know, so a
training checkpoint loads wherever a model checkpoint does. Building the model from a
checkpoint is `densecorr.models.load(path)`.

Files are written atomically (`atomic_save`: a temporary file in the same folder, fsync,
rename), so a kill during a write leaves the previous file intact. See docs/design.md
("Checkpoints").
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import torch

from densecorr.data.io import DataError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_CHECKPOINT = os.path.join(ASSETS, "default.pt")
"""The trained checkpoint shipped in the package, used when no model is given."""

REQUIRED_KEYS = ("model", "config", "state_dict")


class CheckpointError(DataError):
    """A checkpoint that cannot be used (missing, corrupt, truncated, wrong keys, bad config).
    The message is one line that names the file and what to do."""


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a
    crash leaves either the old file or the new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def model_dict(name: str, config: Mapping[str, Any], state_dict: Mapping[str, Any], trained: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint dict of a model (validated as `read_model` would)."""
    ckpt = {"model": name, "config": dict(config), "state_dict": dict(state_dict)}
    if trained is not None:
        ckpt["trained"] = dict(trained)
    validate(ckpt, "<model checkpoint>")
    return ckpt


def save_model(path: str, name: str, config: Mapping[str, Any], state_dict: Mapping[str, Any], trained: Mapping[str, Any] | None = None) -> dict:
    """Write a model checkpoint to `path` atomically; returns the dict written."""
    ckpt = model_dict(name, config, state_dict, trained)
    atomic_save(ckpt, path)
    return ckpt


def load_file(path: str) -> Any:
    """torch.load (weights only, on the CPU) of any checkpoint file; CheckpointError when the
    file is missing or cannot be read."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors all mean: not a usable checkpoint
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path!r} ({os.path.getsize(path)} bytes; {type(exc).__name__}: {first}); "
            "pass a file written by densecorr (torch.save of a dict)"
        ) from None


def validate(ckpt: Any, path: str) -> dict:
    """Check the model-checkpoint keys and value types; returns `ckpt` with "config" filled in
    ({} when absent). CheckpointError names what is wrong."""
    if not isinstance(ckpt, dict) or not {"model", "state_dict"} <= set(ckpt):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path!r} must be a dict with keys 'model', 'config', 'state_dict'; it has {keys}")
    if not isinstance(ckpt["model"], str) or not ckpt["model"]:
        raise CheckpointError(f"checkpoint {path!r}: 'model' must be a model name (str), got {ckpt['model']!r:.80}")
    config = ckpt.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"checkpoint {path!r}: 'config' must be a dict of model config fields, got {type(config).__name__}")
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"checkpoint {path!r}: config field {key!r} is {value}; a finite number is needed")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise CheckpointError(f"checkpoint {path!r}: 'state_dict' must be a dict of tensors, got {type(ckpt['state_dict']).__name__}")
    if "trained" in ckpt and not isinstance(ckpt["trained"], dict):
        raise CheckpointError(f"checkpoint {path!r}: 'trained' must be a dict, got {type(ckpt['trained']).__name__}")
    ckpt["config"] = config
    return ckpt


def read_model(path: str) -> dict:
    """The model checkpoint at `path`, validated: {"model", "config", "state_dict"[, "trained"]}
    plus any other keys the file holds. CheckpointError (one line) when the file is missing,
    unreadable, lacks those keys or holds a config that is not a dict of finite values."""
    return validate(load_file(path), path)


__all__ = ["CheckpointError", "DEFAULT_CHECKPOINT", "atomic_save", "model_dict", "save_model", "load_file", "validate", "read_model"]
