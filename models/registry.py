"""Model registry, the config base class and the interface every model implements.

    model = densecorr.models.create("mast", radius=4, backend="reference")
    out = model(clip)            # clip (B, T, 3, H, W) RGB in [0, 1], T = model.clip_length
    out["loss"].backward()       # out also holds the loss's named terms (unweighted)
    feats = model.embed(frames)  # (B, 3, H, W) -> (B, D, H / stride, W / stride)

Configs are dataclasses (one per model) holding plain values, so they round-trip through
`to_dict` / `from_dict` (and JSON / YAML). Models read nothing global.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch
from torch import nn

from .affinity import Affinity

_REGISTRY: dict[str, type["CorrespondenceModel"]] = {}


@dataclasses.dataclass
class ModelConfig:
    """Fields every model has.

    backend: densecorr backend passed to every op call (None: automatic choice).
    affinity: "densecorr" (the memory-efficient ops) or "naive" (bmm/softmax/unfold, the
        textbook computation, for comparisons; same function, materialises the affinity).
    """

    backend: str | None = None
    affinity: str = "densecorr"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples become lists so that it serialises as JSON)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """The config with these field values; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
        return cls(**values)

    def __post_init__(self):
        # Lists (from JSON/YAML) become tuples so that configs compare and hash by value.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        if self.affinity not in ("densecorr", "naive"):
            raise ValueError(f"affinity must be 'densecorr' or 'naive', got {self.affinity!r}")
        self.validate()

    def validate(self) -> None:
        """Per-model checks of field values (raise ValueError naming the field)."""

    def _positive(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0, got {getattr(self, name)!r}")


class CorrespondenceModel(nn.Module):
    """Base class: a self-supervised correspondence model with an explicit config.

    Subclasses set `Config` (their dataclass), implement `embed` and `loss_terms`, and give
    their loss weights through `weights()`.
    """

    Config: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.ops = Affinity(config.affinity, config.backend)

    # -- interface ----------------------------------------------------------------------
    @property
    def clip_length(self) -> int:
        """Frames per training clip."""
        raise NotImplementedError

    @property
    def stride(self) -> int:
        """Output stride of `embed`."""
        raise NotImplementedError

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, H, W) RGB in [0, 1] -> features (B, D, H / stride, W / stride)."""
        raise NotImplementedError

    def loss_terms(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """clip (B, T, 3, H, W) -> the unweighted scalar loss terms."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Weight of each loss term in the total loss."""
        raise NotImplementedError

    def forward(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """clip (B, T, 3, H, W) float RGB in [0, 1], T = clip_length -> {"loss": scalar, terms...}."""
        self.check_clip(clip)
        terms = self.loss_terms(clip)
        weights = self.weights()
        loss = sum(weights[name] * value for name, value in terms.items())
        return {"loss": loss, **terms}

    # -- helpers ------------------------------------------------------------------------
    def check_clip(self, clip: torch.Tensor) -> None:
        if not isinstance(clip, torch.Tensor) or clip.dim() != 5 or clip.shape[2] != 3:
            shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise ValueError(f"clip must be a (B, T, 3, H, W) RGB tensor, got {shape}")
        if clip.shape[1] != self.clip_length:
            raise ValueError(
                f"{type(self).__name__} trains on clips of {self.clip_length} frames, got clip of shape {tuple(clip.shape)}"
            )
        if not clip.is_floating_point():
            raise ValueError(f"clip must be float RGB in [0, 1], got dtype {clip.dtype}")
        h, w = clip.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"clip height and width must be multiples of the stride {self.stride}, got {h} x {w}")

    def check_frames(self, frames: torch.Tensor) -> None:
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must be a (B, 3, H, W) RGB tensor, got {shape}")

    def use_affinity(self, affinity: str, backend: str | None = None) -> "CorrespondenceModel":
        """Switch this model (weights unchanged) to `affinity` ("densecorr"/"naive") and `backend`."""
        self.config = dataclasses.replace(self.config, affinity=affinity, backend=backend)
        self.ops = Affinity(affinity, backend)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def register_model(name: str) -> Callable[[type[CorrespondenceModel]], type[CorrespondenceModel]]:
    """Class decorator: make `create(name, ...)` build this model."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[CorrespondenceModel]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _REGISTRY[name]


def get_config(name: str, **overrides) -> ModelConfig:
    """The default config of model `name` with `overrides` applied."""
    return model_class(name).Config.from_dict(overrides)


def create(name: str, config: ModelConfig | dict | None = None, **overrides) -> CorrespondenceModel:
    """Build model `name` from a config (object or dict; default: the model's defaults),
    with keyword overrides of its fields, e.g. `create("corrflow", width=16, backend="reference")`."""
    cls = model_class(name)
    if config is None:
        config = cls.Config()
    elif isinstance(config, dict):
        config = cls.Config.from_dict(config)
    elif not isinstance(config, cls.Config):
        raise TypeError(f"config for {name!r} must be a {cls.Config.__name__} or dict, got {type(config).__name__}")
    if overrides:
        config = cls.Config.from_dict({**config.to_dict(), **overrides})
    return cls(config)


# --------------------------------------------------------------------------- loading a model spec


def load(spec: str = "default", device: str | torch.device = "cpu", log: Callable[[str], None] = print, stride: int | None = None):
    """A feature extractor for label propagation from a model spec.

    Args:
        spec: "default" (the trained checkpoint shipped in the package,
            densecorr/assets/default.pt; "lab" with a note while it does not exist), "lab" (the
            Lab-pixel baseline, `LabEmbedding`), a name registered here (that method's trained
            checkpoint shipped in the package, densecorr/assets/checkpoints/NAME.pt; `shipped_checkpoint`),
            "NAME:init" (the same network randomly initialised, as training initialises it: see
            `init_model`), or the path of a model checkpoint (densecorr.checkpoint's format;
            training checkpoints are model checkpoints too).
        device: where the model goes.
        log: where notes go.
        stride: the Lab baseline's stride (default 8; ignored for other models).
    Returns:
        (model in eval mode on `device`, a short description).
    Raises:
        densecorr.checkpoint.CheckpointError: a checkpoint that is missing, unreadable, has the
            wrong keys, a bad config or weights that do not fit its model.
        densecorr.data.io.DataError: an unknown name, or a registered method with no shipped
            checkpoint (the message names "NAME:init" and the train command).
    """
    import os

    from densecorr.checkpoint import DEFAULT_CHECKPOINT
    from densecorr.data.io import DataError

    from .lab import LabEmbedding

    spec = os.fspath(spec)
    if spec == "default":
        if os.path.isfile(DEFAULT_CHECKPOINT):
            spec = DEFAULT_CHECKPOINT
        else:
            log("note: no trained default checkpoint is shipped (densecorr/assets/default.pt); using the Lab-pixel baseline 'lab'")
            spec = "lab"
    if spec == "lab":
        try:
            model = LabEmbedding(8 if stride is None else stride)
        except ValueError as exc:
            raise DataError(f"lab baseline: {exc}") from None
        return model.to(device).eval(), f"lab (stride {model.stride})"
    if os.path.exists(spec) or spec.endswith((".pt", ".pth", ".ckpt")) or os.sep in spec:
        return from_checkpoint(spec, device)
    name, _, variant = spec.partition(":")
    if name not in _REGISTRY or variant not in ("", "init"):
        known = ", ".join(["default", "lab"] + list_models() + [f"{n}:init" for n in list_models()])
        raise DataError(f"unknown model {spec!r}: not a file and not a registered model (known: {known})")
    if variant == "":
        path = shipped_checkpoint(name)
        if not os.path.isfile(path):
            raise DataError(f"no trained checkpoint of {name!r} is shipped ({path}); use '{name}:init' for a random init, "
                            f"or train one: densecorr train --model {name} --preset cpu, then --model RUN/model.pt")
        model, _ = from_checkpoint(path, device)
        return model, f"{name} (trained, {os.path.basename(path)})"
    model = init_model(name)
    if not hasattr(model, "embed") or not hasattr(model, "stride"):
        raise DataError(f"model {spec!r} has no embed()/stride, so it cannot propagate labels")
    log(f"note: model {name!r} is randomly initialised ('{spec}')")
    return model.to(device).eval(), f"{name} (random init)"


def shipped_checkpoint(name: str) -> str:
    """Path of registered method `name`'s trained checkpoint in the package,
    densecorr/assets/checkpoints/NAME.pt (it may not exist; `load(name)` says so)."""
    from densecorr.checkpoint import ASSETS

    return os.path.join(ASSETS, "checkpoints", f"{name}.pt")


def init_model(name: str) -> CorrespondenceModel:
    """Method `name`'s network as its shipped checkpoint was before training: the checkpoint's
    model config (the CPU preset's while none is shipped), initialised exactly as
    `densecorr train` initialises it (torch seeded with mix_seed(seed, "init") first, seed the
    run's). The global torch RNG state is left as it was."""
    from densecorr.checkpoint import read_model
    from densecorr.training import mix_seed, preset

    path = shipped_checkpoint(name)
    if os.path.isfile(path):
        ckpt = read_model(path)
        config = dict(ckpt["config"])
        seed = ((ckpt.get("trained") or {}).get("train_config") or {}).get("seed", 0)
    else:
        cfg = preset(name, "cpu")
        config, seed = dict(cfg.model_config), cfg.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, "init") % 2**63)
        return create(name, config)


def from_checkpoint(path: str, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, description) from a model checkpoint file; see `load`."""
    import os

    from densecorr.checkpoint import CheckpointError, read_model

    from .lab import LabEmbedding

    ckpt = read_model(path)
    name, config = ckpt["model"], ckpt["config"]
    base = os.path.basename(path)
    if name == "lab":
        try:
            model = LabEmbedding(**config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path!r} has a bad config for the lab baseline ({_first_line(exc)}); its only field is 'stride' (int >= 1)") from None
        return model.to(device).eval(), f"lab (stride {model.stride}, {base})"
    if name not in _REGISTRY:
        raise CheckpointError(f"checkpoint {path!r} is for model {name!r}, which densecorr.models does not register (known: {', '.join(list_models()) or 'none'})")
    try:
        model = create(name, config)
    except (TypeError, ValueError, OverflowError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"checkpoint {path!r} has a bad config for model {name!r}, so its weights do not fit ({_first_line(exc)})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r} does not fit model {name!r} ({_first_line(exc)})") from None
    return model.to(device).eval(), f"{name} ({base})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
