"""densecorr: memory-efficient dense-correspondence ops for self-supervised video tracking.

    import densecorr
    out = densecorr.global_attention(q, k, v, scale=20.0, topk=10)   # (B, N, C)
    out = densecorr.local_attention(q, k, v, radius=12)             # (B, C, H, W)

See README.md for the API table and the backends (densecorr.backends).
"""
from densecorr import _ext
from densecorr import reference  # noqa: F401  (registers the reference backend)
from densecorr.backends import extension as _extension_backends  # noqa: F401  (registers cpu, cuda)
from densecorr.backends import triton as _triton_backend  # noqa: F401  (declares triton; kernels load on use)
from densecorr._ext import build_info
from densecorr.backends import available as available_backends
from densecorr.ops import (
    bbox_from_coords,
    global_affinity,
    global_attention,
    local_affinity,
    local_attention,
    local_copy,
    project_coords,
)

__version__ = "0.1.0"
__all__ = [
    "global_attention",
    "global_affinity",
    "project_coords",
    "bbox_from_coords",
    "local_affinity",
    "local_copy",
    "local_attention",
    "available_backends",
    "build_info",
    "__version__",
]
