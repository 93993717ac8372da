"""The evaluation loops (densecorr.evaluation): one DAVIS J&F loop and one PCK loop for the CLI and training."""
from __future__ import annotations

import os

import numpy as np
import pytest

from densecorr import evaluation
from densecorr.data import Davis, DataError, sample_root, write_mask
from densecorr.metrics import SequenceScores, overall
from densecorr.models import LabEmbedding
from densecorr.propagation import Propagator, propagate_mask


def test_evaluate_davis_matches_a_hand_written_loop():
    """The numbers of the loop training used before (propagate_mask + SequenceScores by hand)."""
    model = LabEmbedding(8)
    davis = Davis(sample_root())
    seq = davis["horsejump-high"]
    prop = Propagator(model, "crw", height=96)
    score = SequenceScores(seq.name, [1])
    for t, _, mask in propagate_mask(prop, (seq.frames[i] for i in range(6)), seq.mask(0)):
        score.add(seq.names[t], mask, seq.mask(t))
    expected = overall([score])
    got = evaluation.evaluate_davis(model, root=sample_root(), max_frames=6, height=96, protocol="crw")
    assert set(got) == set(expected) | {"sequences", "seconds"}
    for key, value in expected.items():
        assert got[key] == value, key
    assert got["sequences"] == {"horsejump-high": expected["J&F"]} and got["seconds"] > 0


def test_per_frame_hook_and_summary_rows():
    seen = []
    prop = Propagator(LabEmbedding(8), "uvc", height=64)
    results = list(evaluation.davis_sequences(prop, sample_root(), max_frames=4,
                                              on_start=lambda seq, n: seen.append(("start", seq.name, n)),
                                              on_frame=lambda seq, t, frame, mask: seen.append((t, frame.shape, mask.shape))))
    assert seen[0] == ("start", "horsejump-high", 4)
    assert [s[0] for s in seen[1:]] == [0, 1, 2, 3]
    assert all(s[1] == (480, 854, 3) and s[2] == (480, 854) for s in seen[1:])
    (r,) = results
    assert r.name == "horsejump-high" and r.row["frames"] == 3 and r.row["s_per_frame"] > 0 and r.row["peak_mib"] > 0
    total = evaluation.davis_total(results)
    assert total["J&F"] == pytest.approx(r.row["J&F"]) and total["peak_mib"] == r.row["peak_mib"]


def test_model_mode_is_restored():
    model = LabEmbedding(8).train()
    evaluation.evaluate_davis(model, root=sample_root(), max_frames=2, height=64)
    assert model.training


def _tiny_root(tmp, gt_size=None):
    rng = np.random.default_rng(0)
    frames = os.path.join(tmp, "JPEGImages", "480p", "s")
    ann = os.path.join(tmp, "Annotations", "480p", "s")
    os.makedirs(frames)
    os.makedirs(ann)
    from PIL import Image

    for t in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(os.path.join(frames, f"{t:05d}.png"))
        m = np.zeros((32, 48), np.uint8)
        m[8:20, 8:20] = 1
        if gt_size is not None and t == 1:
            m = np.ones(gt_size, np.uint8)
        write_mask(os.path.join(ann, f"{t:05d}.png"), m)
    return str(tmp)


def test_ground_truth_of_another_size_is_a_data_error(tmp_path):
    root = _tiny_root(tmp_path, gt_size=(16, 24))
    with pytest.raises(DataError, match="00001.png.*24x16"):
        evaluation.evaluate_davis(LabEmbedding(4), root=root, max_frames=None, height=None, protocol="corrflow")


def test_keypoint_loop_on_the_sample():
    res = evaluation.evaluate_keypoints(LabEmbedding(4), root=sample_root(), height=64, protocol="corrflow")
    (row,) = res["sequences"]
    assert row["sequence"] == "horsejump-high" and row["annotated"] == 4 and row["joints"] > 40
    assert 0 <= row["PCK@0.1"] <= row["PCK@0.2"] <= 1
    assert res["PCK@0.1"] == row["PCK@0.1"] and res["joints"] == row["joints"]
    with pytest.raises(DataError, match="sigma"):
        list(evaluation.keypoint_sequences(Propagator(LabEmbedding(4), "corrflow"), sample_root(),
                                           os.path.join(sample_root(), "BADJA", "joint_annotations"), sigma=float("inf")))


def test_scored_frames_are_the_official_ones(tmp_path):
    """davis2017-evaluation scores all_gt_masks[:, 1:-1]: neither the first nor the sequence's
    last annotated frame; a truncated sequence (max_frames) keeps its last frame read."""
    root = _tiny_root(tmp_path)
    prop = Propagator(LabEmbedding(4), "corrflow")
    (r,) = evaluation.davis_sequences(prop, root, max_frames=None)
    assert r.scores.frames == ["00001"] and r.row["frames"] == 1
    (r,) = evaluation.davis_sequences(prop, root, max_frames=None, official=False)
    assert r.scores.frames == ["00001", "00002"]
    seq = Davis(sample_root())["horsejump-high"]
    n = len(seq)
    assert evaluation.scored_frames(seq) == list(range(1, n - 1))
    assert evaluation.scored_frames(seq, 4) == [1, 2, 3]
