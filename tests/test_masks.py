"""Masks with more than 255 objects: 16-bit PNGs are read with their ids, written back as
16-bit PNGs, and ids that do not fit are refused; never silently merged or dropped."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densecorr.data import DataError, object_ids, overlay, read_mask, write_mask
from densecorr.propagation import labels_to_mask, one_hot, to_grid


def wide_mask():
    m = np.zeros((8, 10), np.uint16)
    m[0:4, 0:5] = 1
    m[0:4, 5:10] = 255
    m[4:8, 0:5] = 300
    m[4:8, 5:10] = 65000
    return m


def test_16_bit_png_keeps_every_id(tmp_path):
    """Old code: converted to 8 bits and thresholded: ids 1, 255, 300, 65000 became 0 and 1."""
    Image.fromarray(wide_mask()).save(tmp_path / "m.png")
    got = read_mask(str(tmp_path / "m.png"))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, wide_mask())
    assert object_ids(got) == [1, 255, 300, 65000]  # 255 is an object in a 16-bit mask, not DAVIS void


def test_write_mask_above_255_round_trips(tmp_path):
    """Old code: ValueError for ids > 255."""
    write_mask(str(tmp_path / "w.png"), wide_mask())
    with Image.open(tmp_path / "w.png") as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "w.png")), wide_mask())
    small = (wide_mask() == 1).astype(np.uint8) * 7
    write_mask(str(tmp_path / "p.png"), small)  # ids < 256 stay palette PNGs
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    with pytest.raises(ValueError, match="65536"):
        write_mask(str(tmp_path / "x.png"), np.full((2, 2), 70000, np.int64))


def test_32_bit_values_that_do_not_fit_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(DataError, match="16 bits"):
        read_mask(str(tmp_path / "i.tif"))
    Image.fromarray(np.array([[0, 3], [500, 0]], np.int32)).save(tmp_path / "ok.tif")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "ok.tif")), [[0, 3], [500, 0]])


def test_binary_16_bit_mask_is_one_object(tmp_path):
    Image.fromarray((np.eye(4) * 65535).astype(np.uint16)).save(tmp_path / "b.png")
    got = read_mask(str(tmp_path / "b.png"))
    assert got.dtype == np.uint8 and object_ids(got) == [1]


def test_labels_to_mask_keeps_large_ids():
    """Old code: the id lookup table was uint8, so id 300 became 44."""
    m = wide_mask()
    ids = object_ids(m)
    grid = to_grid(one_hot(m, ids), (8, 10))
    back = labels_to_mask(grid, ids, (8, 10))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, m)
    assert labels_to_mask(grid[:2], [1], (8, 10)).dtype == np.uint8


def test_overlay_colours_large_ids():
    frame = np.full((8, 10, 3), 100, np.uint8)
    out = overlay(frame, wide_mask())
    assert out.shape == frame.shape and not (out[4:8, 0:5] == 100).all()
    assert torch.equal(torch.from_numpy(overlay(frame, np.zeros((8, 10), np.uint8))), torch.from_numpy(frame))
