"""return_indices=True on the public global_attention / local_attention: the kept top-k."""
import pytest
import torch

import densecorr
from densecorr.geometry import window_size


def _sorted(x):
    return x.sort(-1).values


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_global_attention_returns_the_topk_keys(backend):
    if backend == "cpu" and not densecorr.build_info()["extension"]:
        pytest.skip("extension not built")
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 9, 4, generator=g), torch.randn(2, 13, 4, generator=g), torch.randn(2, 13, 3, generator=g)
    out, idx = densecorr.global_attention(q, k, v, scale=2.0, topk=4, return_indices=True, backend=backend)
    assert idx.shape == (2, 9, 4) and idx.dtype == torch.int64
    logits = 2.0 * q @ k.transpose(1, 2)
    assert torch.equal(_sorted(idx), _sorted(logits.topk(4, -1).indices))
    torch.testing.assert_close(out, densecorr.global_attention(q, k, v, scale=2.0, topk=4, backend=backend))
    with pytest.raises(ValueError, match="return_indices=True needs topk"):
        densecorr.global_attention(q, k, v, return_indices=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shape,radius,window", [((7, 9), 2, "circle"), ((6, 8), 1, "square"), ((3, 4), 6, "circle"), ((3, 4), 5, "square")])
def test_local_attention_returns_the_topk_positions(backend, shape, radius, window):
    """Positions t*P + p of the given window, also when the image is smaller than the window
    (a smaller equivalent window runs), equal to the top-k of the dense windowed logits."""
    if backend == "cpu" and not densecorr.build_info()["extension"]:
        pytest.skip("extension not built")
    H, W = shape
    T, topk = 3, 5
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, H, W, generator=g, dtype=torch.float64)
    k = torch.randn(1, T, 4, H, W, generator=g, dtype=torch.float64)
    v = torch.randn(1, T, 2, H, W, generator=g, dtype=torch.float64)
    out, idx = densecorr.local_attention(q, k, v, radius, scale=1.5, window=window, topk=topk, return_indices=True, backend=backend)
    assert idx.shape == (1, H, W, topk)
    logits = densecorr.local_affinity(q, k, radius, scale=1.5, normalize=False, boundary="mask", window=window, backend="reference")
    assert logits.shape[1] == T * window_size(radius, window)
    expected = logits.masked_fill(~torch.isfinite(logits), float("-inf")).topk(topk, 1).indices.permute(0, 2, 3, 1)
    assert torch.equal(_sorted(idx), _sorted(expected))
    torch.testing.assert_close(out, densecorr.local_attention(q, k, v, radius, scale=1.5, window=window, topk=topk, backend=backend))
    with pytest.raises(ValueError, match="return_indices=True needs topk"):
        densecorr.local_attention(q, k, v, radius, return_indices=True)
