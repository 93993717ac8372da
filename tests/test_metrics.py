"""DAVIS J / F / statistics and PCK against hand-computed answers."""
import math

import numpy as np
import pytest

from densecorr.metrics import (
    SequenceScores,
    boundary_f,
    boundary_radius,
    dilate_disk,
    iou,
    overall,
    pck,
    seg2bmap,
    statistics,
)


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_seg2bmap_square_by_hand():
    # A 3x3 square at rows/cols 2..4 of a 7x7 image. The DAVIS rule marks the pixel
    # above-left of the object (outer ring, top and left) and the object's own bottom row
    # and right column.
    m = box((7, 7), 2, 5, 2, 5)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(seg2bmap(m), expected)


def test_seg2bmap_last_row_and_column():
    # Object touching the bottom-right corner: in the last row only the east neighbour counts,
    # in the last column only the south one, and the corner never: the object's edges along
    # the image border are not boundary.
    m = box((4, 4), 2, 4, 2, 4)
    expected = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0]], bool)
    np.testing.assert_array_equal(seg2bmap(m), expected)


def test_dilate_disk_matches_definition():
    b = np.zeros((9, 9), bool)
    b[4, 4] = True
    d = dilate_disk(b, 2)
    yy, xx = np.mgrid[:9, :9]
    np.testing.assert_array_equal(d, (yy - 4) ** 2 + (xx - 4) ** 2 <= 4)
    # near the border the disk is cut, not wrapped
    b = np.zeros((5, 6), bool)
    b[0, 0] = True
    d = dilate_disk(b, 1)
    assert d.sum() == 3 and d[0, 1] and d[1, 0] and not d[-1, -1] and not d[0, -1]


def test_identical_masks():
    m = box((20, 30), 3, 12, 5, 20)
    assert iou(m, m) == 1.0
    assert boundary_f(m, m) == 1.0


def test_empty_masks():
    e = np.zeros((10, 10), bool)
    m = box((10, 10), 2, 5, 2, 5)
    assert iou(e, e) == 1.0 and boundary_f(e, e) == 1.0  # nothing to find, nothing found
    assert iou(e, m) == 0.0 and boundary_f(e, m) == 0.0  # missed the object
    assert iou(m, e) == 0.0 and boundary_f(m, e) == 0.0  # hallucinated one


def test_disjoint_masks():
    a = box((40, 40), 2, 8, 2, 8)
    b = box((40, 40), 25, 35, 25, 35)
    assert iou(a, b) == 0.0
    assert boundary_f(a, b) == 0.0


def test_shifted_square_one_pixel():
    # 4x4 squares shifted by one column: |A & B| = 12, |A | B| = 20. The 10x10 image's
    # tolerance is ceil(0.008 * 14.14) = 1 px, and every boundary pixel moved by exactly 1.
    a = box((10, 10), 3, 7, 2, 6)
    b = box((10, 10), 3, 7, 3, 7)
    assert boundary_radius(a.shape) == 1
    assert iou(a, b) == pytest.approx(0.6)
    assert boundary_f(a, b) == 1.0


def test_thin_line_boundary_by_hand():
    # A one-pixel line (row 5, cols 2..7); its DAVIS boundary is rows 4 and 5, cols 1..7
    # (14 pixels). The prediction is the line two rows lower: boundary rows 6 and 7.
    gt = box((12, 12), 5, 6, 2, 8)
    pred = box((12, 12), 7, 8, 2, 8)
    assert seg2bmap(gt).sum() == 14
    assert iou(pred, gt) == 0.0
    # tolerance 1 px: pred row 6 is within 1 of gt row 5 (7 of 14), gt row 5 within 1 of
    # pred row 6 (7 of 14) -> P = R = F = 0.5
    assert boundary_f(pred, gt, bound_th=1) == pytest.approx(0.5)
    # tolerance 2 px: everything matches although the regions do not overlap at all
    assert boundary_f(pred, gt, bound_th=2) == 1.0
    # a region measure would call a thick blob around the line "half right"; F does not
    blob = box((12, 12), 3, 9, 1, 9)
    assert boundary_f(blob, gt, bound_th=1) < 0.5


def test_davis_tolerance_at_480p():
    # 854x480: ceil(0.008 * 979.7) = 8 px. A 200x300 box has a 1000-pixel DAVIS boundary.
    # Shifted right by 8 every boundary pixel is within 8 px of the other boundary -> F = 1.
    # Shifted by 9: of the prediction's 1000 boundary pixels, the top row matches 300 (of
    # 301), the bottom row 299 (of 300), the left column 17 (within 8 rows of the top/bottom
    # edges), the right column none: P = R = 616 / 1000.
    gt = box((480, 854), 100, 300, 200, 500)
    assert boundary_radius(gt.shape) == 8
    assert seg2bmap(gt).sum() == 1000
    assert boundary_f(np.roll(gt, 8, axis=1), gt) == 1.0
    assert boundary_f(np.roll(gt, 9, axis=1), gt) == pytest.approx(0.616)
    assert iou(np.roll(gt, 9, axis=1), gt) == pytest.approx(291 / 309)


def test_statistics_mean_recall_decay():
    s = statistics([1, 1, 1, 1, 0, 0, 0, 0])
    # bins (DAVIS rule) are frames [0:3], [2:5], [4:6], [5:8]: decay = 1 - 0
    assert s == {"mean": 0.5, "recall": 0.5, "decay": 1.0}
    s = statistics([0.2, 0.6, 0.6, 0.9])
    assert s["mean"] == pytest.approx(0.575)
    assert s["recall"] == pytest.approx(0.75)
    # 4 frames: ids = round([1, 1.75, 2.5, 3.25, 4] + 1e-10) - 1 = [0, 1, 2, 2, 3]; the first
    # bin is frames [0:2], the last [2:4] (DAVIS bins overlap): 0.4 - 0.75
    assert s["decay"] == pytest.approx(-0.35)


def test_sequence_scores_several_objects():
    gt = np.zeros((10, 10), np.uint8)
    gt[1:4, 1:4] = 1
    gt[6:9, 6:9] = 2
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
    s = SequenceScores("toy", [1, 2])
    s.add("00001", gt, gt)
    s.add("00002", swapped, gt)
    summary = s.summary()
    assert s.j == {1: [1.0, 0.0], 2: [1.0, 0.0]}
    assert summary["J_mean"] == 0.5 and summary["F_mean"] == 0.5 and summary["J&F"] == 0.5
    total = overall([s, s])
    assert total["objects"] == 4 and total["J&F"] == 0.5
    with pytest.raises(ValueError, match="differ in size"):
        s.add("00003", gt[:5], gt)


def test_pck_by_hand():
    gt = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 50.0], [0.0, 50.0]])  # box side 100
    pred = gt + np.array([[5.0, 0], [0, 12], [0, 0], [300, 0]])
    vis = np.array([True, True, True, True])
    assert pck(pred, gt, vis, 0.1) == (2, 4)  # errors 5, 12, 0, 300 vs 10
    assert pck(pred, gt, vis, 0.2) == (3, 4)  # vs 20
    assert pck(pred, gt, np.array([True, False, True, False]), 0.1) == (2, 2)
    assert pck(pred, gt, vis, 0.1, size=150) == (3, 4)  # threshold 15
    assert pck(pred, gt, np.zeros(4, bool), 0.1) == (0, 0)
    with pytest.raises(ValueError):
        pck(pred[:3], gt, vis, 0.1)


def test_radius_for_pixel_thresholds():
    assert boundary_radius((10, 10), 3) == 3
    assert boundary_radius((480, 854)) == math.ceil(0.008 * math.hypot(480, 854))
