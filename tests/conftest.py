import os

import pytest
import torch

# The one tolerance table: (atol, rtol) by the dtype a kernel computed in, for comparisons
# against a float64 oracle (every backend, every test file). Half precision is further held
# to flash-attention's rule (error at most twice plain PyTorch's in the same dtype: `HALF_RULE`).
TOLERANCE = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (3e-5, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 5e-2),
}
HALF_RULE = 2.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_close(actual, expected, dtype=None):
    """actual ~ expected (tensors or sequences of tensors) within the tolerance of `dtype`
    (default: expected's dtype)."""
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, dtype)
        return
    atol, rtol = TOLERANCE[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol)


def close(name, got, want, dtype):
    """got ~ want (compared in float64) within TOLERANCE[dtype], the message naming `name`."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("DENSECORR_BACKEND", raising=False)
