"""Benchmark cases: the problems every provider solves, with the same seeded inputs.

A global case is attention over tokens, q (B, N, D), k (B, M, D), v (B, M, C), optionally
restricted to each query's `topk` largest logits. A local case is windowed attention over
images, q (B, D, H, W), k (B, T, D, H, W), v (B, T, C, H, W), window radius r (square),
one joint softmax over the T references' windows.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

# q and k are L2-normalised along D, so the logits are cosine similarities; scale = 1 / 0.07,
# a usual temperature of the trackers (CRW uses 1 / 0.05), keeps the softmax realistic.
DEFAULT_SCALE = 1.0 / 0.07


@dataclass(frozen=True)
class Case:
    kind: str  # "global" or "local"
    B: int = 1
    D: int = 64
    C: int = 3
    N: int = 0  # global: queries
    M: int = 0  # global: keys
    topk: int | None = None
    H: int = 0  # local: image size
    W: int = 0
    T: int = 1  # local: references
    radius: int = 0
    dilation: int = 1
    boundary: str = "zero"  # local: "zero" is what correlation sampler + unfold compute
    scale: float = DEFAULT_SCALE
    family: str | None = None  # cases of one family differ in size only (plotted together)
    big: bool = False  # skipped by --quick (GBs of memory for the naive providers)
    label: str | None = None  # what the case stands for (e.g. "MAST at 480p")

    @property
    def name(self) -> str:
        if self.kind == "global":
            s = f"global N={self.N} M={self.M} D={self.D} C={self.C}"
            if self.topk:
                s += f" top{self.topk}"
        else:
            s = f"local {self.H}x{self.W} D={self.D} C={self.C} r={self.radius} T={self.T}"
            if self.dilation != 1:
                s += f" dil={self.dilation}"
        return s if self.B == 1 else f"{s} B={self.B}"

    @property
    def size(self) -> int:
        """The x axis of the size plot: N (global) or the pixels H*W*T of the references (local)."""
        return self.N if self.kind == "global" else self.H * self.W * self.T

    @property
    def window(self) -> int:
        """P, the number of window positions per reference (local)."""
        return (2 * self.radius + 1) ** 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["name"] = self.name
        return d

    @staticmethod
    def from_dict(d: dict) -> "Case":
        fields = {f.name for f in dataclasses.fields(Case)}
        return Case(**{k: v for k, v in d.items() if k in fields})

    def shrunk(self) -> "Case":
        """A tiny case of the same kind and options (for warming up lazy initialisation)."""
        if self.kind == "global":
            n = min(self.N, 64)
            return dataclasses.replace(self, B=1, N=n, M=n, topk=min(self.topk, n) if self.topk else None)
        side = max(2 * self.radius * self.dilation + 2, 8)
        return dataclasses.replace(self, B=1, H=side, W=side)


def make_inputs(case: Case, device="cpu", dtype=torch.float32, seed: int = 0):
    """Seeded inputs (q, k, v) of `case` (layouts in the module docstring) and a gradient for
    the output (B, N, C) or (B, C, H, W)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    if case.kind == "global":
        q = torch.nn.functional.normalize(randn(case.B, case.N, case.D), dim=-1)
        k = torch.nn.functional.normalize(randn(case.B, case.M, case.D), dim=-1)
        v = randn(case.B, case.M, case.C)
        grad = randn(case.B, case.N, case.C)
    elif case.kind == "local":
        q = torch.nn.functional.normalize(randn(case.B, case.D, case.H, case.W), dim=1)
        k = torch.nn.functional.normalize(randn(case.B, case.T, case.D, case.H, case.W), dim=2)
        v = randn(case.B, case.T, case.C, case.H, case.W)
        grad = randn(case.B, case.C, case.H, case.W)
    else:
        raise ValueError(f"unknown case kind {case.kind!r}")
    return q, k, v, grad


def _global_sweep():
    fam = "global D=64 C=3"
    return [
        Case("global", N=n, M=n, D=64, C=3, family=fam, big=n > 8192) for n in (1024, 2048, 4096, 8192, 16384)
    ]


def _local_sweep():
    fam = "local D=64 C=16 r=6 T=1"
    return [Case("local", H=s, W=s, D=64, C=16, radius=6, family=fam) for s in (32, 48, 64, 96, 128)]


SUITES = {
    "global": lambda: _global_sweep()
    + [Case("global", N=4096, M=4096, D=64, C=16, label="global, training size (fwd+bwd)")],
    "local": lambda: _local_sweep()
    + [
        Case(
            "local", H=120, W=214, D=64, C=7, radius=12, T=5, big=True,
            label="MAST at 480p (stride 4, 5 references)",
        )
    ],
    "topk": lambda: [
        Case("global", N=6420, M=6420, D=256, C=7, topk=10, label="CRW/UVC evaluation (top-10)")
    ],
    # tiny problems for the harness's own test
    "smoke": lambda: [
        Case("global", N=256, M=256, D=16, C=3, family="smoke global"),
        Case("global", N=512, M=512, D=16, C=3, family="smoke global"),
        Case("local", H=12, W=12, D=8, C=4, radius=2, T=2),
    ],
}
OP_SUITES = ("global", "local", "topk")


def cases_for(suite: str, quick: bool = False) -> list[Case]:
    """The cases of `suite` ("global", "local", "topk", "smoke", or "all" = the op suites)."""
    names = OP_SUITES if suite == "all" else (suite,)
    out = []
    for s in names:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; choose from {sorted(SUITES)} or 'all'")
        out += [c for c in SUITES[s]() if not (quick and c.big)]
    return out
