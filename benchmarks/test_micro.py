"""Microbenchmarks of each public op (pytest-benchmark), default backend, tiny to medium sizes.

    pytest benchmarks/ --benchmark-only [--benchmark-compare] [-k local]

Not part of the test suite (tests/ is). Each op is timed in forward (no_grad) and in
forward + backward; the comparison against the alternatives is `python -m benchmarks`.
"""
import pytest
import torch
import torch.nn.functional as F

import densecorr

torch.manual_seed(0)


def _normed(*shape, dim):
    return F.normalize(torch.randn(*shape), dim=dim)


def _global(n, d, c):
    return _normed(1, n, d, dim=-1), _normed(1, n, d, dim=-1), torch.randn(1, n, c)


def _local(side, d, c, t):
    k = _normed(1, t, d, side, side, dim=2)
    v = torch.randn(1, t, c, side, side)
    if t == 1:
        k, v = k[:, 0], v[:, 0]
    return _normed(1, d, side, side, dim=1), k, v


# name -> (function of the inputs, input factory); sizes: "tiny" and "medium"
OPS = {
    "global_attention-1024-d64-c3": (lambda q, k, v: densecorr.global_attention(q, k, v, 14.0), lambda: _global(1024, 64, 3)),
    "global_attention-4096-d64-c3": (lambda q, k, v: densecorr.global_attention(q, k, v, 14.0), lambda: _global(4096, 64, 3)),
    "global_attention-top10-2048-d64-c7": (
        lambda q, k, v: densecorr.global_attention(q, k, v, 14.0, topk=10), lambda: _global(2048, 64, 7)
    ),
    "global_affinity-512-d64": (lambda q, k, v: densecorr.global_affinity(q, k, 14.0), lambda: _global(512, 64, 1)),
    "project_coords-1024-32x32-d64": (
        lambda q, k, v: densecorr.project_coords(q, k, 14.0),
        lambda: (_normed(1, 1024, 64, dim=-1), _normed(1, 64, 32, 32, dim=1), None),
    ),
    "local_affinity-32x32-d64-r6": (
        lambda q, k, v: densecorr.local_affinity(q, k, 6, scale=14.0), lambda: _local(32, 64, 16, 1)
    ),
    "local_copy-32x32-c16-r6": (
        lambda a, k, v: densecorr.local_copy(a, v, 6),
        lambda: (torch.softmax(torch.randn(1, 169, 32, 32), 1), None, torch.randn(1, 16, 32, 32)),
    ),
    "local_attention-32x32-d64-c16-r6": (
        lambda q, k, v: densecorr.local_attention(q, k, v, 6, scale=14.0), lambda: _local(32, 64, 16, 1)
    ),
    "local_attention-64x64-d64-c16-r6": (
        lambda q, k, v: densecorr.local_attention(q, k, v, 6, scale=14.0), lambda: _local(64, 64, 16, 1)
    ),
    "local_attention-3refs-48x48-d64-c7-r12": (
        lambda q, k, v: densecorr.local_attention(q, k, v, 12, scale=14.0, boundary="zero"),
        lambda: _local(48, 64, 7, 3),
    ),
}


@pytest.mark.parametrize("name", list(OPS))
def test_forward(benchmark, name):
    fn, make = OPS[name]
    inputs = make()
    benchmark.group = "forward"

    def run():
        with torch.no_grad():
            return fn(*inputs)

    out = benchmark(run)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(OPS))
def test_forward_backward(benchmark, name):
    fn, make = OPS[name]
    inputs = [None if x is None else x.requires_grad_(True) for x in make()]
    benchmark.group = "forward+backward"

    def run():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for x in inputs:
            if x is not None:
                x.grad = None

    benchmark(run)


def test_bbox_from_coords(benchmark):
    coords = torch.rand(8, 4096, 2) * 64
    weights = torch.rand(8, 4096)
    benchmark.group = "forward"
    centre, size = benchmark(densecorr.bbox_from_coords, coords, weights)
    assert centre.shape == size.shape == (8, 2)
