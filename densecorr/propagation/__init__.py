"""Label propagation: track masks or keypoints through a video with any feature extractor.

- `protocols`: `Protocol`, `PROTOCOLS`, `get_protocol` (which references, which affinity).
- `labels`: id masks <-> one-hot channels on the feature grid, keypoints <-> heat maps.
- `propagator`: `Propagator` (its `run` yields `(t, frame, labels)`), `propagate_mask`,
  `propagate_keypoints`, the exact crw top-k step, MAST's ROI-localised memory (`roi_local_step`).

Models come from `densecorr.models.load(spec)` ("default", "lab", a registered name or a
checkpoint path); `load_model` here is the same function. See docs/design.md.

    from densecorr.models import load
    from densecorr.propagation import Propagator, propagate_mask
    model, _ = load("lab", stride=8)
    for t, frame, mask in propagate_mask(Propagator(model, "crw"), frames, first_mask):
        ...
"""
from densecorr.checkpoint import DEFAULT_CHECKPOINT
from densecorr.models.lab import LabEmbedding
from densecorr.models.registry import load as load_model
from densecorr.propagation.labels import (
    check_first_mask,
    first_grid_labels,
    first_labels,
    label_channels,
    heatmap_peaks,
    heatmaps,
    labels_to_mask,
    mask_dtype,
    one_hot,
    to_grid,
    upsample,
)
from densecorr.propagation.propagator import (
    Propagator,
    coarse_offset,
    crw_topk_step,
    per_reference_topk,
    propagate_keypoints,
    propagate_mask,
    roi_local_step,
    working_size,
)
from densecorr.propagation.protocols import PROTOCOLS, Protocol, get_protocol
from densecorr.system import peak_rss_mb

__all__ = [
    "Protocol", "PROTOCOLS", "get_protocol", "LabEmbedding", "load_model", "DEFAULT_CHECKPOINT", "Propagator", "crw_topk_step", "per_reference_topk", "roi_local_step", "coarse_offset",
    "propagate_mask", "propagate_keypoints", "check_first_mask", "first_grid_labels", "first_labels", "label_channels", "one_hot", "heatmaps", "to_grid", "upsample", "mask_dtype",
    "labels_to_mask", "heatmap_peaks", "working_size", "peak_rss_mb",
]
