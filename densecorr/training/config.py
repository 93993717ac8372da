"""What a training run depends on: `TrainConfig`, the presets beside each model, and building a
config from plain values (a preset, a config file, FIELD=VALUE overrides).

`preset(model, name)` reads the `PRESETS` dict that sits beside the model's config class in its
module (models/mast.py, ...): {"paper": {...}, "cpu": {...}}, each a dict of TrainConfig fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import sys
from typing import Any, Sequence

from densecorr.data.io import DataError


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
    max_skipped_steps: a step whose loss, gradients or parameters are not finite is skipped;
        this many skipped in a row stop the run (TrainingDiverged), the last checkpoint intact.
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
    max_skipped_steps: int = 3
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
        """ValueError naming the first field that is out of range (one line)."""

        def bad(name, why):
            raise ValueError(f"TrainConfig.{name} {why}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.model, str) or not self.model:
            bad("model", "must be a registered model name")
        if not isinstance(self.model_config, dict):
            bad("model_config", "must be a mapping of the model's config fields")
        for name in ("batch_size", "accum_steps", "steps", "log_every", "ckpt_every", "keep_last", "max_skipped_steps"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
                bad(name, "must be an int >= 1")
        for name in ("warmup_steps", "eval_every", "workers"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be an int >= 0")
        if not is_int(self.seed):
            bad("seed", "must be an int")
        if not isinstance(self.flip, bool):
            bad("flip", "must be true or false")
        for name in ("threads", "resize", "eval_max_frames", "eval_height"):
            v = getattr(self, name)
            if v is not None and not (is_int(v) and v >= 1):
                bad(name, "must be an int >= 1 or None")
        if not (is_real(self.lr) and self.lr > 0):
            bad("lr", "must be a finite number > 0")
        for name in ("momentum", "weight_decay", "gamma", "min_lr_ratio"):
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be a finite number >= 0")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in self.betas)):
            bad("betas", "must be two numbers in [0, 1)")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad("optimizer", "must be 'adam', 'adamw' or 'sgd'")
        if self.schedule not in ("constant", "step", "cosine"):
            bad("schedule", "must be 'constant', 'step' or 'cosine'")
        if not all(is_int(m) and m >= 0 for m in self.milestones):
            bad("milestones", "must be a list of steps (ints >= 0)")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            bad("amp", "must be 'auto', 'off', 'bf16' or 'fp16'")
        if not (isinstance(self.crop, tuple) and len(self.crop) == 2 and all(is_int(c) and c >= 1 for c in self.crop)):
            bad("crop", "must be (H, W) with positive sides")
        if not (isinstance(self.gaps, tuple) and self.gaps and all(is_int(g) and g >= 1 for g in self.gaps)):
            bad("gaps", "must be a non-empty list of ints >= 1")
        if self.clip_grad is not None and not (is_real(self.clip_grad) and self.clip_grad > 0):
            bad("clip_grad", "must be a finite number > 0 or None")
        if not isinstance(self.device, str):
            bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

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


# --------------------------------------------------------------------------- presets


def model_presets(model: str) -> dict:
    """The training presets of registered model `model`: the `PRESETS` dict ({name: TrainConfig
    fields}) beside its config class in the model's module (e.g. models/mast.py)."""
    from densecorr import models

    if model not in models.list_models():
        raise ValueError(f"unknown model {model!r}; available: {models.list_models()}")
    module = sys.modules[models.model_class(model).__module__]
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


# --------------------------------------------------------------------------- building a config from plain values


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def _yaml_load(text: str):
    """yaml.safe_load, except that an exponent without a dot (3e-4, 1E5) is a float, as in YAML
    1.2 and Python: PyYAML follows YAML 1.1 and would hand `lr: 3e-4` on as the string '3e-4'."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str):
    """A FIELD=VALUE value: YAML (so 5e-4, [128, 128], null, true), else JSON, else the text."""
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return _yaml_load(text)
    except yaml.YAMLError:
        return text


def read_config_file(path: str) -> dict:
    """The mapping of TrainConfig fields in a YAML (.yaml/.yml) or JSON file; DataError (one line)
    when it is missing, unreadable, malformed or not a mapping."""
    if not os.path.isfile(path):
        raise DataError(f"--config {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--config {path!r} cannot be read ({exc})") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            values = _yaml_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise DataError(f"--config {path!r} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"--config {path!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(values, dict):
        raise DataError(f"--config {path!r} must hold a mapping of TrainConfig fields, got {type(values).__name__}")
    if "model_config" in values and values["model_config"] is not None and not isinstance(values["model_config"], dict):
        raise DataError(f"--config {path!r}: model_config must be a mapping of the model's fields")
    return values


def parse_assignments(items: Sequence[str], option: str = "--set") -> dict:
    """{"FIELD": value} from "FIELD=VALUE" strings (values parsed by `parse_value`)."""
    out = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise DataError(f"{option} needs FIELD=VALUE, got {item!r}")
        out[key.strip()] = parse_value(val)
    return out


def resolve_preset_name(name: str) -> str:
    """'auto' -> 'paper' on a machine with a CUDA GPU, else 'cpu'; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def config_from_values(model: str | None = None, preset_name: str = "auto", config_file: str | None = None,
                       sets: Sequence[str] | dict = (), model_sets: Sequence[str] | dict = (), **fields) -> TrainConfig:
    """The TrainConfig of a run, from plain values, each layer over the one before: the preset of
    `model` (or of the config file's "model"), the fields in `config_file`, the `sets`
    ("FIELD=VALUE" or a dict), the `model_sets` (model config fields), then keyword `fields`
    whose value is not None (e.g. steps=..., lr=..., data=...). The model fields are validated
    too. DataError (one line) for anything that is not a valid config."""
    base = read_config_file(config_file) if config_file else {}
    model = model or base.get("model")
    if not model:
        raise DataError("give --model (one of densecorr.models.list_models()) or a --config with 'model'")
    sets = dict(sets) if isinstance(sets, dict) else parse_assignments(sets, "--set")
    model_sets = dict(model_sets) if isinstance(model_sets, dict) else parse_assignments(model_sets, "--model-set")
    try:
        values = preset(model, resolve_preset_name(preset_name)).to_dict()
        mc = dict(values["model_config"])
        mc.update(base.pop("model_config", None) or {})
        values.update(base)
        if "model_config" in sets:
            extra = sets.pop("model_config")
            if not isinstance(extra, dict):
                raise DataError(f"--set model_config= needs a mapping, e.g. '{{width: 32}}', got {extra!r}")
            mc.update(extra)
        values.update(sets)
        mc.update(model_sets)
        values["model_config"] = mc
        values.update({k: v for k, v in fields.items() if v is not None})
        values["model"] = model  # an explicit --model wins over the config file's
        cfg = TrainConfig.from_dict(values)
        from densecorr import models

        models.get_config(cfg.model, **cfg.model_config)  # validates the model fields now
    except (ValueError, TypeError) as exc:
        raise DataError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return cfg


__all__ = ["TrainConfig", "model_presets", "preset", "parse_value", "read_config_file", "parse_assignments",
           "resolve_preset_name", "config_from_values"]
