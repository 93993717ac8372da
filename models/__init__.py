"""densecorr.models: backbones, colour tools and the self-supervised correspondence models.

    import densecorr.models as dm
    dm.list_models()                      # ['corrflow', 'cycletime', 'mast', 'uvc', 'vidcolor']
    model = dm.create("mast", width=32)   # config fields as keywords (see each *Config)
    out = model(clip)                     # clip (B, T, 3, H, W) in [0, 1]; out["loss"], terms
    feats = model.embed(frames)           # (B, 3, H, W) -> (B, D, H / stride, W / stride)
    model, desc = dm.load("default")      # "default", "lab", a name, or a checkpoint path

Each model file implements its paper's training objective over the densecorr ops.
"""
from . import corrflow, cycletime, mast, uvc, vidcolor  # noqa: F401  (each import registers its model)
from . import crw  # noqa: F401  (registers "crw")
from .affinity import Affinity
from .backbones import ResNet18, ResNet50Res4, build_backbone
from .colour import ColourQuantiser, fit_colour_clusters, kmeans, lab_to_rgb, rgb_to_lab
from .lab import LabEmbedding
from .registry import CorrespondenceModel, ModelConfig, create, get_config, list_models, load, from_checkpoint, model_class, register_model

__all__ = [
    "Affinity",
    "ColourQuantiser",
    "CorrespondenceModel",
    "ModelConfig",
    "ResNet18",
    "ResNet50Res4",
    "build_backbone",
    "create",
    "fit_colour_clusters",
    "get_config",
    "kmeans",
    "LabEmbedding",
    "load",
    "from_checkpoint",
    "lab_to_rgb",
    "list_models",
    "model_class",
    "register_model",
    "rgb_to_lab",
]
