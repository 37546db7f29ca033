"""The skin line: found on frames whose skin row is known (hand-drawn and the synthetic generator's)."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.core.skin_line import find_skin_row
from tpnet.data.synth import SKIN, generate_frame


def _frame_with_skin_at(row, height=200, width=160, seed=0):
    """Dark coupling gel above ``row``, a bright skin echo there, then speckled tissue; a bright depth ruler
    down the left edge and a dark vessel in the tissue (a minority of the columns: the median ignores them)."""
    rng = np.random.default_rng(seed)
    grey = np.clip(0.35 + 0.12 * rng.standard_normal((height, width)), 0, 1).astype(np.float32)
    grey[:row] = np.clip(0.03 + 0.02 * rng.standard_normal((row, width)), 0, 1)
    grey[row : row + 3] = 0.9
    grey[:, :6] = 1.0  # ruler
    grey[row + 20 : row + 40, 60:90] = 0.02  # anechoic vessel just under the skin
    return grey


@pytest.mark.parametrize("row", [0, 4, 17, 40])
def test_skin_row_on_hand_drawn_frames(row):
    assert abs(find_skin_row(_frame_with_skin_at(row, seed=row)) - row) <= 1


def test_skin_row_on_synthetic_frames_within_two_rows():
    for subject in range(6):
        frame = generate_frame(0, subject, 0, 128, 128)
        true_row = float(np.median(np.argmax(frame["tissue"] >= SKIN, axis=0)))  # the skin surface
        found = find_skin_row(frame["bmode"].astype(np.float32) / 255.0)
        assert found is not None and abs(found - true_row) <= 2, (subject, found, true_row)


def test_no_skin_echo_means_no_skin_row():
    flat = np.full((100, 80), 0.5, np.float32) + np.float32(0.01) * np.random.default_rng(0).random((100, 80))
    assert find_skin_row(flat.astype(np.float32)) is None
    assert find_skin_row(np.zeros((1, 5), np.float32)) is None
