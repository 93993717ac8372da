"""The dino protocol (facebookresearch/dino eval_video_segmentation.py) with its parameters as
options: the DIFT/TED-style setting against the independent encoding in tests/conformance/dino.py,
and bounded memory at 480p."""
import numpy as np
import pytest
import torch

from conformance import dino, driver
from conformance.common import l2n, one_hot_ids
from densecorr.data import DataError
from densecorr.propagation import Propagator, get_protocol, propagate_mask
from densecorr.system import peak_rss_mb


def _features(T, D, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    f = l2n(torch.randn(T, D, h, w, generator=g, dtype=torch.float64), 1)
    return (f * (2 + 2 * torch.rand(T, 1, h, w, generator=g, dtype=torch.float64))).float().double()


@pytest.mark.parametrize("settings,shape,seed", [
    (dict(n_last_frames=28, radius=15, topk=10, temperature=0.2), (31, 4, 5), 4),  # DIFT / TED
    (dict(n_last_frames=3, radius=2, topk=4, temperature=0.1), (32, 10, 13), 5),  # windows smaller than the grid
])
def test_dino_options_match_the_reference(settings, shape, seed):
    """Seeds chosen so that the reference's top-k boundaries are far from ties (margin checked)."""
    (T, h, w), D = shape, 16
    feats = _features(T, D, h, w, seed=seed)
    g = torch.Generator().manual_seed(3)
    labels0 = one_hot_ids(torch.randint(0, 3, (h, w), generator=g), 3)
    ref, margin = dino.propagate(feats, labels0, **settings)
    assert margin > 1.5e-5, margin
    ours = driver.labels("dino", feats, labels0, 16, **settings)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert get_protocol("dino", n_last_frames=28).previous == tuple(range(1, 29))
    with pytest.raises(DataError, match="n_last_frames"):
        get_protocol("dino", n_last_frames=0)


class _Random:
    """A model with 32-channel random features at stride 4 (the shipped model's shape)."""
    stride = 4

    def embed(self, x):
        g = torch.Generator().manual_seed(int(x[0, 0, 0, 0] * 255))
        return torch.randn(1, 32, x.shape[2] // 4, x.shape[3] // 4, generator=g)


def test_dino_dift_settings_run_in_bounded_memory_at_480p():
    """28 context frames, radius 15, top-10 at 480p, stride 4 (120 x 214 cells): a dense
    (hw) x (hw) affinity would be 2.6 GB per reference; the windowed top-k needs far less."""
    frames = [np.full((480, 856, 3), t, np.uint8) for t in range(4)]
    mask = np.zeros((480, 856), np.uint8)
    mask[100:300, 200:500] = 1
    prop = Propagator(_Random(), get_protocol("dino", n_last_frames=28, radius=15, topk=10, temperature=0.2))
    base = peak_rss_mb(reset=True)
    out = list(propagate_mask(prop, frames, mask))
    assert len(out) == 3 and out[-1][2].shape == (480, 856)
    if base == base:  # peak RSS is measurable here
        assert peak_rss_mb() - base < 1000
