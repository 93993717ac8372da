"""The public ops (docs/design.md, "The ops"), one module per family."""
from densecorr.ops.global_ops import bbox_from_coords, global_affinity, global_attention, project_coords
from densecorr.ops.local_ops import local_affinity, local_attention, local_copy

__all__ = [
    "global_attention",
    "global_affinity",
    "project_coords",
    "bbox_from_coords",
    "local_affinity",
    "local_copy",
    "local_attention",
]
