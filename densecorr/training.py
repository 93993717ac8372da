"""Training of the self-supervised correspondence models (densecorr.models) on unlabelled video.

    python examples/train.py --model mast --preset cpu --out runs/mast
    torchrun --nproc_per_node 4 examples/train.py --model mast --preset paper --data VIDEOS --out runs/mast
    densecorr train ...            # the same arguments (`main`)

or from Python: `train(preset("mast", "cpu"), out="runs/mast")`.

- Data: folders of frames or video files (`densecorr.data.VideoClips`; default
  ../shared/data/davis2016_train_256p). A sequence that cannot be read is skipped with a warning;
  a clip that fails to decode mid-run is replaced by the next one, with a warning.
- Clip sampling and augmentation per method (`TrainConfig.gaps`, `resize`, `crop`, `flip`;
  the models add their own input augmentations, e.g. CorrFlow's channel dropout).
- Determinism: the sample stream is a fixed function of (seed, position): epoch e is a seeded
  permutation of all clips and each clip's crop/flip is drawn from a seed derived from its
  stream position. Global batch s is stream positions [s G, (s + 1) G), G = batch_size x
  world_size x accum_steps, split into world_size x accum_steps micro-batches; process `rank`
  takes micro-batches rank * accum_steps + a. So a run resumes exactly from a checkpoint, and
  N processes with batch b give the same parameters as one process with batch b and
  accum_steps N (the BatchNorm statistics are then per micro-batch in both).
- Distributed data parallel under `torchrun` (NCCL on GPU, gloo on CPU); AMP on GPU (bf16, or
  fp16 with a gradient scaler); gradient clipping; optimiser Adam/AdamW/SGD with warm-up and a
  constant, step or cosine schedule.
- Logs: console, `OUT/log.jsonl` (one JSON object per logged step or evaluation), TensorBoard
  event files in OUT/tb when the `tensorboard` package is installed; a tqdm bar with loss and
  clips/s.
- Checkpoints `OUT/ckpt-<step>.pt` every `ckpt_every` steps, written atomically (temporary
  file, fsync, rename), the last `keep_last` kept. Each is also a model checkpoint in the
  format `densecorr.propagation.load_model` reads ("model", "config", "state_dict"), plus
  "train": optimiser, scheduler, scaler, step, RNG states of every rank, the TrainConfig.
  `OUT/model.pt` (weights only) is written at the end.
- Periodic J&F on DAVIS (`eval_every`, a few sequences/frames at reduced height).
- Resuming uses the TrainConfig given now (so `steps`, the schedule or the data can change
  between phases); state that counts forward passes inside a model (CorrFlow's scheduled
  sampling) advances once per micro-batch.

Training data: DAVIS-2016 (CC BY-NC 4.0, Perazzi et al., CVPR 2016) when the default is used.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from densecorr.data.io import DataError

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(DataError):
    """A checkpoint that cannot be used (corrupt, truncated, or from another model/config)."""


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (plain values: round-trips through JSON/YAML).

    model / model_config: the registered model name and its config fields (densecorr.models).
    data: frame folders / video files / DAVIS-style roots (None: ../shared/data/davis2016_train_256p).
    resize: short side after resizing (None: native); crop: (H, W) random crop; flip: random
        horizontal flips; gaps: frame steps within a clip, one drawn per clip (equal shares of
        the clips of each gap).
    batch_size: clips per process per micro-batch; accum_steps: micro-batches per step.
    steps: optimiser steps in all.
    optimizer: "adam", "adamw" or "sgd"; lr, betas, momentum (sgd), weight_decay.
    schedule: "constant", "step" (x gamma at each of `milestones`) or "cosine" (to
        lr * min_lr_ratio at `steps`), after `warmup_steps` of linear warm-up.
    clip_grad: max global gradient norm (None: no clipping).
    amp: "auto" (bf16 on a GPU that has it, else fp16 on GPU; off on CPU), "off", "bf16", "fp16".
    device: "auto" (cuda:LOCAL_RANK when available, else cpu), or a torch device.
    threads: torch CPU threads (None: torch's default).
    workers: DataLoader worker processes per rank.
    log_every / ckpt_every / keep_last: logging and checkpoint periods (steps) and how many
        checkpoints to keep.
    eval_every: steps between J&F evaluations (0: never); eval_root (None: davis2016_subset,
        else the shipped sample), eval_sequences (None: all of the root's), eval_max_frames,
        eval_height, eval_protocol: the evaluation protocol (densecorr.propagation).
    """

    model: str = "mast"
    model_config: dict = dataclasses.field(default_factory=dict)
    data: Any = None
    resize: int | None = 256
    crop: tuple = (256, 256)
    flip: bool = True
    gaps: tuple = (1,)
    batch_size: int = 8
    accum_steps: int = 1
    steps: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    milestones: tuple = ()
    gamma: float = 0.5
    min_lr_ratio: float = 0.0
    clip_grad: float | None = None
    amp: str = "auto"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 3
    eval_every: int = 0
    eval_root: str | None = None
    eval_sequences: tuple | None = None
    eval_max_frames: int | None = 20
    eval_height: int | None = 240
    eval_protocol: str = "crw"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list) and f.name != "data":
                setattr(self, f.name, tuple(v))
        if isinstance(self.crop, int):
            self.crop = (self.crop, self.crop)
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"TrainConfig.{name} {why}, got {getattr(self, name)!r}")

        for name in ("batch_size", "accum_steps", "steps", "log_every", "ckpt_every", "keep_last"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                bad(name, "must be an int >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad("optimizer", "must be 'adam', 'adamw' or 'sgd'")
        if self.schedule not in ("constant", "step", "cosine"):
            bad("schedule", "must be 'constant', 'step' or 'cosine'")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            bad("amp", "must be 'auto', 'off', 'bf16' or 'fp16'")
        if len(self.crop) != 2 or min(self.crop) < 1:
            bad("crop", "must be (H, W) with positive sides")
        if not self.gaps or min(self.gaps) < 1:
            bad("gaps", "must be a non-empty list of ints >= 1")
        if self.clip_grad is not None and not self.clip_grad > 0:
            bad("clip_grad", "must be > 0 or None")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.workers < 0:
            raise ValueError(f"TrainConfig warmup_steps, eval_every and workers must be >= 0, got {self.warmup_steps}, {self.eval_every}, {self.workers}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {unknown}; fields: {sorted(names)}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def model_presets(model: str) -> dict:
    """The training presets of registered model `model`: the `PRESETS` dict ({name: TrainConfig
    fields}) beside its config class in the model's module (e.g. models/mast.py)."""
    import sys as _sys

    from densecorr import models

    if model not in models.list_models():
        raise ValueError(f"unknown model {model!r}; available: {models.list_models()}")
    module = _sys.modules[models.model_class(model).__module__]
    return dict(getattr(module, "PRESETS", {}))


def preset(model: str, name: str = "cpu", **overrides) -> TrainConfig:
    """The TrainConfig of `model` for preset `name` ("paper", "cpu", or another the model's
    PRESETS define), with field `overrides`."""
    presets = model_presets(model)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for model {model!r}; choose one of {sorted(presets)}")
    base = {**presets[name], "model": model}
    base["model_config"] = dict(base.get("model_config", {}))
    cfg = TrainConfig.from_dict(base)
    return cfg.replace(**overrides) if overrides else cfg


# --------------------------------------------------------------------------- distributed


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that `torchrun` describes in the environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"device {spec!r} was asked for but no CUDA GPU is available; use cpu")
        if device.index is None:
            device = torch.device(f"cuda:{info.local_rank}")
    return device


# --------------------------------------------------------------------------- data


def default_train_root() -> str:
    """../shared/data/davis2016_train_256p (the default training video)."""
    from densecorr.data.paths import shared_data_root

    shared = shared_data_root()
    path = os.path.join(shared, "davis2016_train_256p") if shared else None
    if not path or not os.path.isdir(path):
        raise DataError("no training data given and ../shared/data/davis2016_train_256p not found; pass --data (folders of frames or video files)")
    return path


def readable_sequences(roots: Sequence[str], warn: Callable[[str], None]) -> list[str]:
    """The frame folders / video files under `roots` that can be opened; the others are
    skipped with a warning (one unreadable video must not stop a long run)."""
    from densecorr.data.clips import find_sequences
    from densecorr.data.io import FrameSource

    good = []
    for root in roots:
        for path in find_sequences(root):
            try:
                FrameSource(path)
            except DataError as exc:
                warn(f"warning: skipping unreadable sequence {path}: {exc}")
                continue
            good.append(path)
    if not good:
        raise DataError(f"no readable frame folders or video files in {list(roots)}")
    return good


class SeededClips(torch.utils.data.Dataset):
    """Clips of several frame gaps; item (index, seed) -> clip (T, 3, H, W), its random crop and
    flip drawn from `seed` (so a clip depends only on its stream position, in any worker).

    A clip that fails to decode is replaced by the next index, with a warning.
    """

    def __init__(self, paths: Sequence[str], clip_len: int, gaps: Sequence[int], resize, crop, flip: bool):
        from densecorr.data.clips import VideoClips

        self.parts = []
        for gap in gaps:
            try:
                self.parts.append(VideoClips(list(paths), clip_len=clip_len, gap=gap, resize=resize, size=tuple(crop), train=True, flip=flip))
            except DataError as exc:
                warnings.warn(f"no clips with gap {gap}: {exc}")
        if not self.parts:
            raise DataError(f"no sequence has enough frames for clips of {clip_len} frames with gaps {tuple(gaps)}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _get(self, index: int) -> torch.Tensor:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]

    def __getitem__(self, item) -> torch.Tensor:
        index, seed = item
        state = random.getstate()
        try:
            for attempt in range(len(self)):
                random.seed(seed)
                try:
                    return self._get((index + attempt) % len(self))
                except DataError as exc:
                    warnings.warn(f"skipping clip {(index + attempt) % len(self)}: {exc}")
            raise DataError("no clip of the training data could be read")
        finally:
            random.setstate(state)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python runs)."""
    h = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class StreamBatches(torch.utils.data.Sampler):
    """This process's micro-batches of lists of (index, seed), from step `start` on (endless).

    Stream position p is clip perm_e[p mod n] of epoch e = p // n (perm_e a permutation seeded
    by (seed, e)); see the module docstring for how global batches are split.
    """

    def __init__(self, n: int, batch_size: int, accum_steps: int, rank: int, world_size: int, seed: int, start: int = 0):
        self.n, self.b, self.accum, self.rank, self.world = n, batch_size, accum_steps, rank, world_size
        self.seed, self.start = seed, start
        self._perm = (None, None)

    def perm(self, epoch: int) -> torch.Tensor:
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, "epoch", epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def __iter__(self) -> Iterator[list]:
        g = self.b * self.world * self.accum
        step = self.start
        while True:
            for a in range(self.accum):
                first = step * g + (self.rank * self.accum + a) * self.b
                batch = []
                for p in range(first, first + self.b):
                    epoch, i = divmod(p, self.n)
                    batch.append((int(self.perm(epoch)[i]), _mix(self.seed, "clip", p)))
                yield batch
            step += 1


# --------------------------------------------------------------------------- optimiser


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of cfg.lr at optimiser step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the ckpt-<step>.pt files in `folder`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "ckpt-*.pt")):
        m = _CKPT_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def load_checkpoint(path: str) -> dict:
    """A training checkpoint; CheckpointError (saying what is wrong and what to do) when the
    file is missing, truncated, corrupt or not a training checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors all mean the file is unusable
        size = os.path.getsize(path)
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) is corrupt or truncated and cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); delete it to resume from an earlier one"
        ) from None
    if not isinstance(ckpt, dict) or "train" not in ckpt or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path!r} is not a training checkpoint (keys {keys}; expected 'model', 'config', 'state_dict', 'train')")
    return ckpt


def find_resume(folder: str, warn: Callable[[str], None]) -> tuple[str, dict] | None:
    """The newest readable checkpoint in `folder` (unreadable newer ones are reported and passed
    over), or None when there is none."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"warning: {exc}")
    return None


# --------------------------------------------------------------------------- evaluation


def evaluate_davis(model, root: str | None = None, sequences: Sequence[str] | None = None, max_frames: int | None = 20,
                   height: int | None = 240, protocol: str = "crw", device="cpu") -> dict:
    """J&F of label propagation with `model` (embed/stride) on DAVIS sequences (the evaluation
    protocol of densecorr.propagation; first `max_frames` frames, frames at `height`).

    Returns the overall row of densecorr.metrics.overall plus "sequences" (per-sequence J&F)."""
    from densecorr.data.davis import Davis, object_ids
    from densecorr.data.paths import default_davis_root
    from densecorr.metrics import SequenceScores, overall
    from densecorr.propagation import Propagator, propagate_mask

    root = root or default_davis_root()[0]
    davis = Davis(root)
    names = list(sequences or davis.sequences)
    propagator = Propagator(model, protocol, device=device, height=height)
    scores = []
    was_training = model.training
    model.eval()
    try:
        for name in names:
            seq = davis[name]
            n = len(seq) if max_frames is None else min(len(seq), max_frames)
            first = seq.mask(0)
            score = SequenceScores(seq.name, object_ids(first))
            frames = (seq.frames[i] for i in range(n))
            for t, _, mask in propagate_mask(propagator, frames, first):
                if seq.has_mask(t):
                    score.add(seq.names[t], mask, seq.mask(t))
            scores.append(score)
    finally:
        model.train(was_training)
    out = overall(scores)
    out["sequences"] = {s.name: s.summary()["J&F"] for s in scores}
    out["seconds"] = propagator.timer
    return out


# --------------------------------------------------------------------------- logging


class Logger:
    """Console (through tqdm when a bar is shown), OUT/log.jsonl and TensorBoard (if installed).
    Only rank 0 writes."""

    def __init__(self, out: str, enabled: bool, bar_total: int, bar_start: int, quiet: bool):
        self.enabled = enabled
        self.bar = None
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(out, exist_ok=True)
        self.jsonl = open(os.path.join(out, "log.jsonl"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, "tb"))
        except ImportError:
            self.tb = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=bar_total, initial=bar_start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def record(self, step: int, values: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": time.time(), **values}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, n: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def plot_log(out: str) -> str | None:
    """Draw OUT/curves.png from OUT/log.jsonl: the loss and its terms against the step, and J&F
    when the run evaluated. Returns the path, or None without matplotlib or logged steps.
    After a resume the re-run steps are logged again; the last row of each step wins."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows: dict[tuple[str, int], dict] = {}
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            rows[(row.get("kind"), row.get("step"))] = row
    train_rows = [r for (k, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]) if k == "train"]
    eval_rows = [r for (k, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]) if k == "eval"]
    if not train_rows:
        return None
    skip = {"kind", "step", "time", "lr", "clips_per_s", "epoch", "grad_norm"}
    terms = [k for k in train_rows[-1] if k not in skip and isinstance(train_rows[-1][k], (int, float))]
    fig, axes = plt.subplots(1, 2 if eval_rows else 1, figsize=(11 if eval_rows else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in train_rows]
    for k in terms:
        ax.plot(steps, [r.get(k, float("nan")) for r in train_rows], label=k, lw=1.5 if k == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    if eval_rows:
        ax = axes[0][1]
        ax.plot([r["step"] for r in eval_rows], [r["J&F"] for r in eval_rows], "o-", label="J&F")
        ax.set_xlabel("step")
        ax.set_title("DAVIS J&F (eval_every)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- training


def _amp_dtype(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def train(cfg: TrainConfig, out: str, resume: str | None = "auto", quiet: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train `cfg.model` as `cfg` says; checkpoints and logs go to folder `out`.

    resume: "auto" (the newest readable checkpoint in `out`, if any), a checkpoint path, or None
    (start afresh). Returns {"step", "loss" (mean of the last logged window), "eval" (last J&F row or None)}.
    """
    from densecorr import models

    device_hint = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") else "cpu"
    info = init_distributed(device_hint)
    device = resolve_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = log or print

    def warn(msg):
        if info.main:
            say(msg)

    # Seed before building the model so its initialisation is reproducible; each rank gets its
    # own stream for the models' random augmentations.
    torch.manual_seed(_mix(cfg.seed, "init") % 2**63)
    model = models.create(cfg.model, dict(cfg.model_config)).to(device)
    torch.manual_seed(_mix(cfg.seed, "rank", info.rank) % 2**63)
    random.seed(_mix(cfg.seed, "python", info.rank))
    np.random.seed(_mix(cfg.seed, "numpy", info.rank) % 2**32)

    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step = 0
    ckpt = None
    if resume == "auto":
        found = find_resume(out, warn) if os.path.isdir(out) else None
        if found:
            resume_path, ckpt = found
    elif resume:
        resume_path, ckpt = resume, load_checkpoint(resume)
    if ckpt is not None:
        if ckpt.get("model") != cfg.model:
            raise CheckpointError(f"checkpoint {resume_path!r} is for model {ckpt.get('model')!r}, not {cfg.model!r}")
        try:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["train"]["optimizer"])
            scheduler.load_state_dict(ckpt["train"]["scheduler"])
            scaler.load_state_dict(ckpt["train"]["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {resume_path!r} does not fit this model/optimiser ({str(exc).splitlines()[0][:200]})") from None
        step = int(ckpt["train"]["step"])
        rngs = ckpt["train"]["rng"]
        if len(rngs) == info.world_size:
            _set_rng_state(rngs[info.rank])
        else:
            warn(f"warning: checkpoint was written by {len(rngs)} processes, now {info.world_size}: random augmentation streams restart")
        warn(f"resumed from {resume_path} at step {step}")

    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = _unwrap(model)
    net.train()

    roots = cfg.data if cfg.data is not None else default_train_root()
    roots = [roots] if isinstance(roots, str) else list(roots)
    paths = readable_sequences(roots, warn)
    dataset = SeededClips(paths, net.clip_length, cfg.gaps, cfg.resize, cfg.crop, cfg.flip)
    sampler = StreamBatches(len(dataset), cfg.batch_size, cfg.accum_steps, info.rank, info.world_size, cfg.seed, start=step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0, generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
    batches = iter(loader)

    logger = Logger(out, info.main, cfg.steps, step, quiet)
    if info.main and step == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"train": cfg.to_dict(), "model_config": net.config.to_dict(), "world_size": info.world_size}, f, indent=1)
    logger.print(
        f"training {cfg.model} ({net.num_parameters() / 1e6:.2f} M parameters) on {len(paths)} sequences, {len(dataset)} clips of "
        f"{net.clip_length} frames {tuple(cfg.crop)}, global batch {cfg.batch_size * info.world_size * cfg.accum_steps} "
        f"({info.world_size} process(es) x {cfg.batch_size} x {cfg.accum_steps} accumulation), device {device}, "
        f"amp {amp_dtype or 'off'}, steps {step} -> {cfg.steps}"
    )

    window: dict[str, list[float]] = {}
    window_clips, window_start = 0, time.perf_counter()
    last_eval = None
    last_loss = float("nan")
    while step < cfg.steps:
        optimizer.zero_grad(set_to_none=True)
        terms_sum: dict[str, float] = {}
        for a in range(cfg.accum_steps):
            clip = next(batches).to(device, non_blocking=True)
            sync = a == cfg.accum_steps - 1 or not info.enabled
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = model(clip)
                loss = outputs["loss"].float() / cfg.accum_steps
                scaler.scale(loss).backward()
            for k, v in outputs.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / cfg.accum_steps
        finite = math.isfinite(terms_sum["loss"])
        if info.enabled:  # every rank must agree on whether to step
            flag = torch.tensor([0.0 if finite else 1.0], device=device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        grad_norm = float("nan")
        if finite:
            scaler.unscale_(optimizer)
            if cfg.clip_grad is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad))
            scaler.step(optimizer)
            scaler.update()
        else:
            warn(f"warning: non-finite loss at step {step + 1} ({terms_sum}); step skipped")
        scheduler.step()
        step += 1

        for k, v in terms_sum.items():
            window.setdefault(k, []).append(v)
        window_clips += clip.shape[0] * cfg.accum_steps * info.world_size
        last_loss = terms_sum["loss"]
        logger.progress(1, {"loss": f"{last_loss:.4f}", "clips/s": f"{window_clips / max(1e-9, time.perf_counter() - window_start):.2f}"})
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            row = {k: float(np.mean(v)) for k, v in window.items()}
            row.update(lr=optimizer.param_groups[0]["lr"], clips_per_s=window_clips / max(elapsed, 1e-9),
                       epoch=step * cfg.batch_size * info.world_size * cfg.accum_steps / len(dataset))
            if cfg.clip_grad is not None:
                row["grad_norm"] = grad_norm
            logger.record(step, row)
            logger.print(f"step {step}/{cfg.steps}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
            last_loss = row["loss"]
            window, window_clips, window_start = {}, 0, time.perf_counter()
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_checkpoint(out, step, cfg, net, optimizer, scheduler, scaler, info)
            if info.main:
                plot_log(out)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            if info.main:
                res = evaluate_davis(net, cfg.eval_root, cfg.eval_sequences, cfg.eval_max_frames, cfg.eval_height, cfg.eval_protocol, device)
                last_eval = res
                logger.record(step, {k: v for k, v in res.items() if isinstance(v, float)}, kind="eval")
                logger.print(f"eval step {step}: J&F {res['J&F']:.4f} (J {res['J_mean']:.4f}, F {res['F_mean']:.4f}) on {len(res['sequences'])} sequences, {res['seconds']:.0f} s")
            if info.enabled:
                dist.barrier()
            window_start = time.perf_counter()  # evaluation time is not training throughput
    if info.main:
        atomic_save({"model": cfg.model, "config": net.config.to_dict(), "state_dict": net.state_dict()}, os.path.join(out, "model.pt"))
        plot_log(out)  # with the last evaluation
        logger.print(f"done: step {step}, wrote {os.path.join(out, 'model.pt')} and curves.png")
    logger.close()
    return {"step": step, "loss": last_loss, "eval": last_eval}


def save_checkpoint(out: str, step: int, cfg: TrainConfig, net, optimizer, scheduler, scaler, info: DistInfo) -> None:
    """Write OUT/ckpt-<step>.pt atomically (rank 0; every rank's RNG state gathered) and keep the
    newest cfg.keep_last."""
    rng = _rng_state()
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
        return
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
    atomic_save(ckpt, os.path.join(out, f"ckpt-{step:08d}.pt"))
    for _, old in list_checkpoints(out)[: -cfg.keep_last]:
        os.remove(old)


def export_model(checkpoint: str, dest: str, **config_changes) -> dict:
    """Write the model part of a training checkpoint ("model", "config", "state_dict": what
    densecorr.propagation.load_model reads) to `dest`, atomically; `config_changes` replace model
    config fields that do not change the weights (e.g. affinity="densecorr"). Returns the dict."""
    ckpt = load_checkpoint(checkpoint)
    config = {**ckpt["config"], **config_changes}
    from densecorr import models

    model = models.create(ckpt["model"], config)
    model.load_state_dict(ckpt["state_dict"])  # the changed config must still fit the weights
    out = {"model": ckpt["model"], "config": model.config.to_dict(), "state_dict": model.state_dict(),
           "trained": {"step": ckpt["train"]["step"], "train_config": ckpt["train"]["config"]}}
    atomic_save(out, dest)
    return out


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the exact bytes of every parameter (equal iff the parameters are bitwise equal)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- command line


def _parse_value(text: str):
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def _read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"--config {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise DataError(f"--config {path!r} must hold a mapping of TrainConfig fields")
    return values


def build_parser(prog: str = "densecorr train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a self-supervised correspondence model (densecorr.models) on unlabelled video. Use torchrun for several processes.")
    p.add_argument("--model", default=None, help="registered model name (densecorr.models.list_models())")
    p.add_argument("--preset", default="auto", choices=["auto", "cpu", "paper"], help="hyper-parameters: the paper's, or a small CPU run (auto: paper on GPU, cpu otherwise)")
    p.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields (model_config: the model's fields), applied over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field (value parsed as YAML), e.g. --set lr=5e-4 --set crop=[128,128]")
    p.add_argument("--model-set", dest="model_sets", action="append", default=[], metavar="FIELD=VALUE", help="override a model config field, e.g. --model-set width=32")
    p.add_argument("--data", nargs="+", default=None, help="folders of frames, video files or roots of them (default ../shared/data/davis2016_train_256p)")
    p.add_argument("--out", default=None, help="run folder for checkpoints and logs (default runs/<model>)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--eval-every", type=int, default=None, help="steps between DAVIS J&F evaluations (0: never)")
    p.add_argument("--resume", default="auto", help="'auto' (newest checkpoint in --out, default), a checkpoint path, or 'none'")
    p.add_argument("--print-config", action="store_true", help="print the resolved TrainConfig as JSON and exit")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"), default=None, help="write the weights-only model checkpoint of a training checkpoint to DEST (loadable with --model DEST in densecorr eval-davis) and exit")
    p.add_argument("--plot", metavar="RUN", default=None, help="draw RUN/curves.png (loss and J&F against the step) from RUN/log.jsonl and exit; training also redraws it at every checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> TrainConfig:
    base = _read_config_file(args.config) if args.config else {}
    model = args.model or base.get("model")
    if not model:
        raise DataError("give --model (one of densecorr.models.list_models()) or a --config with 'model'")
    name = args.preset if args.preset != "auto" else ("paper" if torch.cuda.is_available() else "cpu")
    try:
        cfg = preset(model, name)
        values = cfg.to_dict()
        mc = dict(values["model_config"])
        mc.update(base.pop("model_config", {}) or {})
        values.update(base)
        for item in args.sets:
            key, eq, val = item.partition("=")
            if not eq:
                raise DataError(f"--set needs FIELD=VALUE, got {item!r}")
            values[key] = _parse_value(val)
        for item in args.model_sets:
            key, eq, val = item.partition("=")
            if not eq:
                raise DataError(f"--model-set needs FIELD=VALUE, got {item!r}")
            mc[key] = _parse_value(val)
        values["model_config"] = mc
        for field, val in (("data", args.data), ("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                           ("device", args.device), ("eval_every", args.eval_every)):
            if val is not None:
                values[field] = val
        cfg = TrainConfig.from_dict(values)
        from densecorr import models

        models.get_config(cfg.model, **cfg.model_config)  # validates the model fields now
    except (ValueError, TypeError) as exc:
        raise DataError(str(exc)) from None
    return cfg


def main(argv: list[str] | None = None, prog: str = "densecorr train") -> int:
    """`densecorr train` / examples/train.py; returns the exit status (2: bad input or data)."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.plot:
            if not os.path.isfile(os.path.join(args.plot, "log.jsonl")):
                raise DataError(f"--plot: no log.jsonl in {args.plot!r} (give a run folder written by densecorr train)")
            path = plot_log(args.plot)
            if path is None:
                raise DataError("--plot needs matplotlib (pip install matplotlib) and at least one logged step")
            print(f"wrote {path}")
            return 0
        if args.export:
            out = export_model(*args.export, affinity="densecorr", backend=None)
            print(f"wrote {args.export[1]}: {out['model']} at step {out['trained']['step']}")
            return 0
        cfg = config_from_args(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        out = args.out or os.path.join("runs", cfg.model)
        resume = None if args.resume == "none" else args.resume
        train(cfg, out, resume=resume, quiet=args.quiet)
    except DataError as exc:
        print(f"densecorr train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densecorr train: interrupted (resume from the last checkpoint with the same --out)", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
