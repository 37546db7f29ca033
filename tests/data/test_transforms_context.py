"""Augmenting a sweep slice with its neighbours (issue #17): one geometry and one appearance draw for every
plane, and 2-D frames augmented exactly as before."""

from __future__ import annotations

import numpy as np

from tpnet.data.transforms import Frame, TrainTransform


def _frame(context: bool) -> Frame:
    rng = np.random.default_rng(0)
    bmode = rng.uniform(0.2, 0.8, (40, 48)).astype(np.float32)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 12:30] = 1
    planes = np.stack([bmode, bmode]) if context else None
    return Frame(bmode=bmode, elasto_kpa=np.full((40, 48), 25.0, np.float32), mask=mask, context=planes)


def _always() -> TrainTransform:
    # Every geometric and appearance step on, speckle noise off: the only per-pixel random draw, which
    # rightly differs between planes (each slice has its own speckle).
    return TrainTransform(
        hflip_p=1.0, affine_p=1.0, brightness_contrast_p=1.0, gamma_p=1.0, speckle_noise_p=0.0, blur_p=1.0,
        shadow_p=1.0,
    )  # fmt: skip


def test_identical_neighbours_come_out_identical_to_the_centre():
    out = _always()(_frame(context=True), np.random.default_rng(5), out_size=(32, 32))
    assert out.context.shape == (2, 32, 32) and out.bmode.shape == (32, 32)
    for plane in out.context:
        np.testing.assert_array_equal(plane, out.bmode)


def test_the_centre_plane_is_augmented_exactly_as_a_2d_frame_is():
    # Per-pixel speckle draws one field per plane, and every draw after it then differs: off here.
    transform = TrainTransform(speckle_noise_p=0.0, blur_p=1.0, affine_p=1.0, hflip_p=1.0, shadow_p=1.0)
    with_context = transform(_frame(context=True), np.random.default_rng(9), out_size=(32, 32))
    alone = transform(_frame(context=False), np.random.default_rng(9), out_size=(32, 32))
    assert alone.context is None
    np.testing.assert_array_equal(with_context.bmode, alone.bmode)
    np.testing.assert_array_equal(with_context.mask, alone.mask)


def test_flips_are_lateral_for_the_neighbours_too():
    frame = _frame(context=True)
    frame.context = np.stack([np.tile(np.arange(48, dtype=np.float32) / 48, (40, 1))] * 2)
    transform = TrainTransform(
        hflip_p=1.0, affine_p=0.0, brightness_contrast_p=0.0, gamma_p=0.0, speckle_noise_p=0.0, blur_p=0.0
    )
    out = transform(frame, np.random.default_rng(0))
    assert out.context[0, 0, 0] > out.context[0, 0, -1]  # the ramp now falls from left to right
