import os

import pytest
import torch

# Tolerances keyed by dtype (atol, rtol) for comparisons against an oracle.
TOLERANCE = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("DENSECORR_BACKEND", raising=False)
