"""Triton kernels (GPU; CPU tensors under TRITON_INTERPRET=1 for the tests).

Importing this package registers the kernels with densecorr.backends as backend "triton",
with the signatures of the kernel op schemas in csrc/densecorr.cpp.
"""
from densecorr.triton import global_attention  # noqa: F401
from densecorr.triton import project_coords  # noqa: F401
from densecorr.triton import local_attention  # noqa: F401
from densecorr.triton import local_window  # noqa: F401
from densecorr.triton import local_offset  # noqa: F401
