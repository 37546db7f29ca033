"""Boundary distances on masks whose answer can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpnet.evaluation.boundary import boundary_distances_mm, surface


def _line(shape: tuple[int, int], row: int, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, cols] = True
    return mask


@pytest.mark.parametrize("k", [1, 3, 7])
def test_two_lines_k_rows_apart_are_k_pixels_apart_everywhere(k: int) -> None:
    # A one-pixel line is all surface; each pixel's nearest pixel of the other line is straight above it.
    truth = _line((40, 100), 10, slice(5, 95))
    pred = _line((40, 100), 10 + k, slice(5, 95))
    result = boundary_distances_mm(pred, truth, spacing_mm=0.5)
    assert result == {"assd_mm": pytest.approx(0.5 * k), "hd95_mm": pytest.approx(0.5 * k), "empty": None}


def test_two_squares_offset_by_k_rows() -> None:
    # Squares 10 x 10 px (surface: a ring of 36 px), the prediction 4 rows lower. Prediction -> truth:
    # bottom edge 10 px at 4 (below the truth's bottom edge); top edge (row 14, inside the truth) 0 at its two
    # corners, on the truth's sides, and 1, 2, 3, 4, 4, 3, 2, 1 to the nearest side between them (20); side
    # columns 16 px: 10 on the truth's sides (0) and 3 + 3 below its corners at 1, 2, 3 (12). Sum 72, and the
    # same back by symmetry: ASSD 72 / 36 = 2 px; 12 of 36 distances are 4 px, so both 95th percentiles are 4.
    truth = np.zeros((40, 40), dtype=bool)
    truth[10:20, 10:20] = True
    pred = np.roll(truth, 4, axis=0)
    result = boundary_distances_mm(pred, truth, spacing_mm=0.25)
    assert result["hd95_mm"] == pytest.approx(4 * 0.25)
    assert result["assd_mm"] == pytest.approx(72 / 36 * 0.25)


def test_a_single_stray_pixel_moves_the_assd_but_not_the_hd95() -> None:
    truth = _line((60, 120), 10, slice(0, 100))
    pred = truth.copy()
    pred[50, 50] = True  # 40 px below the line
    result = boundary_distances_mm(pred, truth, spacing_mm=1.0)
    assert result["assd_mm"] == pytest.approx(40 / (101 + 100))
    assert result["hd95_mm"] == 0.0  # 95th percentile of 100 zeros and one 40


def test_identical_masks_are_zero_apart() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 8:12] = True
    assert boundary_distances_mm(mask, mask, 0.2) == {"assd_mm": 0.0, "hd95_mm": 0.0, "empty": None}


def test_empty_masks() -> None:
    empty = np.zeros((30, 40), dtype=bool)
    full = empty.copy()
    full[10, 10] = True
    assert boundary_distances_mm(empty, empty, 0.1) == {"assd_mm": 0.0, "hd95_mm": 0.0, "empty": "both"}
    diagonal_mm = math.hypot(30, 40) * 0.1  # 5 mm
    assert boundary_distances_mm(empty, full, 0.1) == {
        "assd_mm": pytest.approx(diagonal_mm),
        "hd95_mm": pytest.approx(diagonal_mm),
        "empty": "pred",
    }
    assert boundary_distances_mm(full, empty, 0.1)["empty"] == "truth"


def test_surface_of_a_filled_square_is_its_ring() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 2:7] = True
    assert surface(mask).sum() == 16  # 5 x 5 minus the 3 x 3 inside


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same shape"):
        boundary_distances_mm(np.zeros((4, 4)), np.zeros((4, 5)), 1.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        boundary_distances_mm(np.zeros((4, 4)), np.zeros((4, 4)), 0.0)
