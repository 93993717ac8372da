"""The one case table of the op tests: every backend's test file (test_ops: reference vs
textbook; test_cpu_kernels: cpu vs reference; test_triton: triton vs reference; test_backends:
op x backend x dtype) parametrises over these shapes."""
from typing import NamedTuple, Optional


class GlobalCase(NamedTuple):
    B: int
    N: int
    M: int
    D: int
    C: int
    topk: Optional[int]


class LocalCase(NamedTuple):
    B: int
    T: int
    D: int
    C: int
    H: int
    W: int
    radius: int
    dilation: int
    boundary: str
    window: str
    topk: Optional[int]


GLOBAL = [GlobalCase(*c) for c in [
    (1, 1, 1, 1, 1, None),
    (2, 1, 7, 3, 1, 1),
    (1, 5, 9, 4, 2, 9),
    (3, 13, 11, 5, 3, 4),
    (2, 33, 70, 8, 7, None),
    (1, 5, 7, 3, 1, None),
    (2, 70, 33, 20, 3, None),
    (1, 9, 130, 8, 2, None),
    (2, 19, 40, 5, 3, 1),
    (1, 37, 100, 17, 2, 10),
    (1, 6, 6, 4, 3, 6),
    (2, 4, 90, 3, 5, 33),
]]

LOCAL = [LocalCase(*c) for c in [
    (1, 1, 1, 1, 1, 1, 0, 1, "mask", "square", None),
    (2, 1, 3, 2, 5, 6, 1, 1, "mask", "square", None),
    (1, 2, 4, 1, 7, 5, 2, 2, "zero", "square", 3),
    (1, 3, 2, 3, 6, 9, 1, 3, "mask", "circle", 1),
    (2, 1, 3, 2, 6, 7, 1, 2, "clamp", "square", None),
    (1, 2, 2, 2, 9, 9, 2, 1, "clamp", "circle", None),
    (1, 1, 3, 1, 4, 11, 2, 1, "zero", "circle", 13),
    (1, 2, 2, 2, 5, 5, 1, 1, "mask", "square", 18),  # topk = all T*P
    (1, 1, 1, 1, 4, 5, 1, 1, "mask", "square", None),
    (1, 1, 3, 2, 5, 6, 0, 1, "mask", "square", None),
    (2, 2, 4, 3, 7, 5, 1, 1, "zero", "square", None),
    (1, 3, 5, 2, 10, 11, 2, 2, "clamp", "square", None),
    (1, 2, 2, 2, 6, 7, 2, 1, "mask", "circle", None),
    (1, 2, 3, 1, 6, 7, 2, 2, "mask", "square", None),
    (1, 3, 3, 3, 7, 9, 2, 1, "clamp", "circle", None),
    (1, 2, 3, 2, 6, 7, 1, 2, "zero", "circle", None),
    (1, 2, 3, 2, 5, 6, 1, 1, "mask", "square", 5),
    (1, 1, 3, 3, 6, 7, 2, 1, "zero", "circle", 10),
    (1, 2, 3, 1, 10, 10, 1, 2, "clamp", "square", 4),
    (1, 3, 2, 2, 5, 4, 1, 1, "mask", "circle", 1),
    # windows far larger than the image (run on an equivalent smaller window)
    (1, 2, 3, 2, 3, 4, 5, 1, "zero", "circle", None),
    (1, 1, 2, 2, 4, 3, 9, 2, "mask", "square", 3),
    (1, 2, 2, 1, 3, 3, 6, 1, "zero", "square", 4),
]]

# Cases without top-k: local_affinity / local_copy take no topk.
WINDOW = [c for c in LOCAL if c.topk is None]


def local_id(c: LocalCase) -> str:
    return f"B{c.B}T{c.T}D{c.D}C{c.C}-{c.H}x{c.W}-r{c.radius}d{c.dilation}-{c.boundary}-{c.window}-k{c.topk}"


def global_id(c: GlobalCase) -> str:
    return f"B{c.B}N{c.N}M{c.M}D{c.D}C{c.C}-k{c.topk}"


GLOBAL_IDS = [global_id(c) for c in GLOBAL]
LOCAL_IDS = [local_id(c) for c in LOCAL]
WINDOW_IDS = [local_id(c) for c in WINDOW]

# Window-offset cases (local_* with offset=, tests/test_offset_window.py): boundary "mask" or
# "zero" only; odd shapes (H or W = 1, D = 1, C = 1, radius 0, T = 3, dilation 2, circle).
OFFSET = [LocalCase(*c) for c in [
    (1, 1, 1, 1, 1, 1, 0, 1, "mask", "square", None),
    (2, 1, 3, 2, 5, 6, 1, 1, "mask", "square", None),
    (1, 2, 4, 1, 7, 5, 2, 2, "zero", "square", 3),
    (1, 3, 2, 3, 6, 9, 1, 1, "mask", "circle", 4),
    (1, 3, 2, 2, 5, 4, 2, 1, "zero", "circle", None),
    (1, 1, 3, 2, 1, 7, 1, 1, "mask", "square", None),
    (1, 2, 2, 1, 6, 1, 1, 2, "zero", "square", 2),
    (1, 2, 1, 1, 4, 5, 1, 1, "zero", "square", 18),  # topk = all T*P
    (1, 1, 2, 3, 4, 6, 0, 1, "zero", "square", None),
    (1, 2, 3, 2, 6, 7, 2, 1, "mask", "circle", None),
    (1, 2, 3, 2, 5, 6, 1, 1, "mask", "square", 5),
]]
OFFSET_IDS = [local_id(c) for c in OFFSET]
