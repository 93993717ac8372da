"""The state of a run: RNG states, training checkpoints, resuming, and exporting the model.

A training checkpoint `OUT/ckpt-<step>.pt` is a model checkpoint (densecorr.checkpoint:
"model", "config", "state_dict", so it loads wherever a model does) plus "format" and
"train": optimiser, scheduler, scaler, step, the RNG states of every rank, the TrainConfig
and the world size. Every file is written through `densecorr.checkpoint.atomic_save`
(temporary file, fsync, rename): a kill during a write leaves the previous checkpoint intact;
the temporary files of killed writers are removed when the next run starts.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import sys
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from densecorr.checkpoint import CheckpointError, atomic_save, load_file, save_model, validate

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_TMP_RE = re.compile(r"^\.(ckpt-\d+\.pt|model\.pt)\.tmp-(\d+)$")


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """The torch, Python, NumPy (and CUDA) RNG states of this process."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the exact bytes of every parameter (equal iff the parameters are bitwise equal)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the ckpt-<step>.pt files in `folder`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "ckpt-*.pt")):
        m = _CKPT_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files that writers killed mid-write left in `folder` (those of
    processes still alive are kept); returns the paths removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        m = _TMP_RE.match(name)
        if m and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def load_checkpoint(path: str) -> dict:
    """A training checkpoint; CheckpointError (saying what is wrong and what to do) when the
    file is missing, truncated, corrupt or not a training checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = load_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}: the file is corrupt or truncated; delete it to resume from an earlier one") from None
    if not isinstance(ckpt, dict) or "train" not in ckpt or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path!r} is not a training checkpoint (keys {keys}; expected 'model', 'config', 'state_dict', 'train')")
    return validate(ckpt, path)


def find_resume(folder: str, warn: Callable[[str], None]) -> tuple[str, dict] | None:
    """The newest readable checkpoint in `folder` (unreadable newer ones are reported and passed
    over), or None when there is none."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"warning: {exc}")
    return None


def parameters_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and floating-point buffer of `model` is finite (one sync)."""
    flags = [torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def save_checkpoint(out: str, step: int, cfg, net, optimizer, scheduler, scaler, info) -> str | None:
    """Write OUT/ckpt-<step>.pt atomically (rank 0; every rank's RNG state gathered) and keep the
    newest cfg.keep_last. Returns the path written on rank 0, else None."""
    rng = rng_state()
    if info.enabled:
        rngs = [None] * info.world_size
        dist.all_gather_object(rngs, rng)
        # DDP keeps replicas identical; check it where it is cheap (once per checkpoint).
        prints = [None] * info.world_size
        dist.all_gather_object(prints, parameter_fingerprint(net))
        if info.main:
            if len(set(prints)) != 1:
                print(f"warning: model replicas differ across ranks at step {step}: {prints}", file=sys.stderr)
            with open(os.path.join(out, "log.jsonl"), "a") as f:
                f.write(json.dumps({"kind": "sync", "step": step, "fingerprints": prints}) + "\n")
    else:
        rngs = [rng]
    if not info.main:
        return None
    ckpt = {
        "model": cfg.model,
        "config": net.config.to_dict(),
        "state_dict": net.state_dict(),
        "format": CHECKPOINT_FORMAT,
        "train": {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs,
            "config": cfg.to_dict(),
            "world_size": info.world_size,
        },
    }
    path = os.path.join(out, f"ckpt-{step:08d}.pt")
    atomic_save(ckpt, path)
    for _, old in list_checkpoints(out)[: -cfg.keep_last]:
        os.remove(old)
    return path


def open_resume(resume: str | None, out: str, warn: Callable[[str], None]) -> tuple[str, dict] | None:
    """The checkpoint to resume from: resume "auto" (the newest readable one in `out`, if
    any), a checkpoint path, or None (start afresh)."""
    if resume == "auto":
        return find_resume(out, warn) if os.path.isdir(out) else None
    if resume:
        return resume, load_checkpoint(resume)
    return None


def restore(found: tuple[str, dict], model_name: str, net, optimizer, scheduler, scaler, info, warn) -> int:
    """Load a checkpoint (path, dict) into the model, optimiser, scheduler, scaler and this
    rank's RNGs; returns its step. CheckpointError when it does not fit."""
    path, ckpt = found
    if ckpt.get("model") != model_name:
        raise CheckpointError(f"checkpoint {path!r} is for model {ckpt.get('model')!r}, not {model_name!r}")
    try:
        net.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["train"]["optimizer"])
        scheduler.load_state_dict(ckpt["train"]["scheduler"])
        scaler.load_state_dict(ckpt["train"]["scaler"])
        step = int(ckpt["train"]["step"])
        rngs = ckpt["train"]["rng"]
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} does not fit this model/optimiser ({str(exc).splitlines()[0][:200]})") from None
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        warn(f"warning: checkpoint was written by {len(rngs)} processes, now {info.world_size}: random augmentation streams restart")
    warn(f"resumed from {path} at step {step}")
    return step


def export_model(checkpoint: str, dest: str, **config_changes) -> dict:
    """Write the model part of a training checkpoint (a model checkpoint, densecorr.checkpoint:
    "model", "config", "state_dict", "trained") to `dest`, atomically; `config_changes` replace
    model config fields that do not change the weights (e.g. affinity="densecorr"). Returns the
    dict written."""
    ckpt = load_checkpoint(checkpoint)
    config = {**ckpt["config"], **config_changes}
    from densecorr import models

    try:
        model = models.create(ckpt["model"], config)
        model.load_state_dict(ckpt["state_dict"])  # the changed config must still fit the weights
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint!r} does not build its model ({str(exc).splitlines()[0][:200]})") from None
    trained = {"step": ckpt["train"]["step"], "train_config": ckpt["train"]["config"]}
    return save_model(dest, ckpt["model"], model.config.to_dict(), model.state_dict(), trained)


def save_final_model(path: str, model_name: str, net) -> dict:
    """OUT/model.pt: the weights-only model checkpoint at the end of a run."""
    return save_model(path, model_name, net.config.to_dict(), net.state_dict())


__all__ = ["CheckpointError", "CHECKPOINT_FORMAT", "atomic_save", "rng_state", "set_rng_state", "parameter_fingerprint",
           "list_checkpoints", "remove_stale_temporaries", "load_checkpoint", "find_resume", "parameters_finite",
           "save_checkpoint", "open_resume", "restore", "export_model", "save_final_model"]
