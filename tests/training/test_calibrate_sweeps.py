"""The sweeps' volume threshold is chosen on validation (issue #17, tpnet.training.calibrate_sweeps)."""

from __future__ import annotations

import numpy as np

from tpnet.core.postprocess import PostprocessParams
from tpnet.training.calibrate import ValidationFrame
from tpnet.training.calibrate_sweeps import choose_min_volume

CLASSES = ("background", "active_trp", "vessel")
SHAPE = (10, 40, 40)  # slices of 0.5 mm, pixels of 0.2 mm: a voxel is 0.02 mm^3


def _sweep(volume_id: str, subject: str, specks: bool) -> list[ValidationFrame]:
    """A true 3 x 3 mm x 6-slice nodule (about 22 mm^3), predicted exactly, plus (``specks``) a false speck of
    a few voxels in every other slice: what a volume threshold is for."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[2:8, 10:25, 10:25] = 1
    pred = gt.copy()
    if specks:
        for z in range(0, SHAPE[0], 2):
            pred[z, 32:34, 32:34] = 1  # 4 voxels = 0.08 mm^3, not touching the neighbouring slices' specks
    frames = []
    for z in range(SHAPE[0]):
        probs = np.zeros((len(CLASSES), *SHAPE[1:]), np.float32)
        probs[0] = 1.0 - pred[z]
        probs[1] = pred[z]
        frame = {"volume_id": volume_id, "slice_index": z, "slice_spacing_mm": 0.5, "spacing_mm": 0.2,
                 "subject_id": subject, "sample_id": f"{volume_id}_z{z}"}  # fmt: skip
        frames.append(ValidationFrame(probs, probs, gt[z], 0.2, [], frame))
    return frames


def test_a_threshold_above_the_specks_and_below_the_nodules_wins():
    cached = _sweep("a", "s1", specks=True) + _sweep("b", "s2", specks=True)
    chosen, rows = choose_min_volume(cached, CLASSES, PostprocessParams())
    by_volume = {row["min_volume_mm3"]: row for row in rows}
    assert by_volume[0.0]["det3d_f1"] < 1.0  # the specks count as false trigger points
    assert 0.08 < chosen < 22.0 and by_volume[chosen]["det3d_f1"] == 1.0


def test_without_specks_the_default_is_kept_among_equals():
    chosen, _ = choose_min_volume(_sweep("a", "s1", specks=False), CLASSES, PostprocessParams())
    assert chosen == 2.0


def test_frames_that_are_not_sweeps_choose_nothing():
    frame = _sweep("a", "s1", specks=False)[0]
    frame.frame["volume_id"] = None
    assert choose_min_volume([frame], CLASSES, PostprocessParams()) == (None, [])
