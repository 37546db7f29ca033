"""2.5-D input (issue #17, ``Encoding.context_slices``): neighbour planes sit right after the B-mode, scaled
like it, and the 2-D encoding is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.core.encoding import Encoding


def _frame(seed: int = 0, shape=(8, 10)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, shape).astype(np.float32)


def test_context_planes_follow_the_bmode_and_precede_the_elastography():
    k = 2
    encoding = Encoding(context_slices=k)
    bmode, kpa = _frame(0), np.full((8, 10), 30.0, np.float32)
    context = np.stack([_frame(i) for i in range(1, 2 * k + 1)])
    planes = encoding.encode(bmode, kpa, context=context)
    assert planes.shape == (3 + 2 * k, 8, 10) == (encoding.in_channels, 8, 10)
    np.testing.assert_array_equal(planes[0], bmode)
    np.testing.assert_array_equal(planes[1 : 1 + 2 * k], context)
    np.testing.assert_allclose(planes[1 + 2 * k], 0.3)  # elasto = kPa / 100
    np.testing.assert_array_equal(planes[2 + 2 * k], 1.0)  # elasto_valid


def test_neighbours_are_scaled_by_the_centre_frames_statistics():
    encoding = Encoding(context_slices=1, bmode_norm="zscore_frame")
    bmode = _frame(0)
    context = np.stack([bmode * 0.5, bmode])
    planes = encoding.encode(bmode, None, context=context)
    mean, std = bmode.mean(), bmode.std()
    np.testing.assert_allclose(planes[2], planes[0], rtol=1e-6)  # the same image, the same scaling
    np.testing.assert_allclose(planes[1], (bmode * 0.5 - mean) / std, rtol=1e-5, atol=1e-5)


def test_without_context_the_2d_encoding_is_bitwise_unchanged():
    bmode, kpa = _frame(3), np.full((8, 10), np.nan, np.float32)
    np.testing.assert_array_equal(
        Encoding(context_slices=0).encode(bmode, kpa), Encoding().encode(bmode, kpa)
    )
    assert Encoding().in_channels == 3


@pytest.mark.parametrize("context", [None, np.zeros((1, 8, 10), np.float32), np.zeros((2, 4, 4), np.float32)])
def test_a_context_model_refuses_a_frame_without_its_neighbours(context):
    with pytest.raises(ValueError, match=r"context must be \(2, 8, 10\)"):
        Encoding(context_slices=1).encode(_frame(), None, context=context)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_context_slices_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match="context_slices"):
        Encoding(context_slices=bad)


def test_context_slices_round_trip_through_a_model_file_dict_and_default_to_2d():
    encoding = Encoding(context_slices=2)
    assert Encoding.from_dict(encoding.to_dict()) == encoding
    legacy = encoding.to_dict()
    del legacy["context_slices"]
    assert Encoding.from_dict(legacy).context_slices == 0


def test_context_planes_step_in_slices_or_interpolate_at_a_fixed_spacing():
    from tpnet.core.encoding import context_planes

    # The sweep's own spacing: the neighbours themselves; past the ends: () (all 0).
    assert context_planes(0, 10, 2, 0.5) == [(), (), ((1, 1.0),), ((2, 1.0),)]
    assert context_planes(5, 10, 1, 0.5, 0.5) == [((4, 1.0),), ((6, 1.0),)]
    # 0.75 mm planes on a 0.5 mm sweep: 1.5 slices away, halfway between two slices.
    minus, plus = context_planes(5, 10, 1, 0.5, 0.75)
    assert minus == ((3, 0.5), (4, 0.5)) and plus == ((6, 0.5), (7, 0.5))
    assert context_planes(9, 10, 1, 1.0, 0.5)[1] == ()  # 9.5 lies past the last slice


def test_a_blended_plane_is_the_weighted_mean_of_its_slices():
    from tpnet.core.encoding import blend_slices

    slices = [np.full((2, 3), float(z), np.float32) for z in range(4)]
    plane = blend_slices(slices.__getitem__, ((1, 0.25), (2, 0.75)), (2, 3))
    np.testing.assert_allclose(plane, 1.75)
    np.testing.assert_array_equal(blend_slices(slices.__getitem__, (), (2, 3)), 0.0)
