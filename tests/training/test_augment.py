"""Training augmentation (tpnet.data.transforms): geometry keeps labels and kPa values meaningful."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.data.transforms import Frame, TrainTransform, build_train_transform

GEOMETRY_ONLY = {
    "hflip_p": 0.5,
    "affine_p": 1.0,
    "rotate_deg": 15.0,
    "brightness_contrast_p": 0.0,
    "gamma_p": 0.0,
    "speckle_noise_p": 0.0,
    "blur_p": 0.0,
    "elasto_void_p": 0.0,
    "elasto_drop_p": 0.0,
}
KPA_LEVELS = np.array([8.0, 20.0, 50.0, 120.0, 290.0], np.float32)  # ratios >= 2.4: easy to tell apart


def _frame(seed: int = 0, size: int = 64) -> Frame:
    """Blocky label map; B-mode = label / 3 (so alignment is checkable); kPa from a few levels, NaN on the left."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 4, (size // 8, size // 8)), np.ones((8, 8), int)).astype(np.uint8)
    bmode = (mask / 3.0).astype(np.float32)
    kpa = np.kron(rng.choice(KPA_LEVELS, (size // 8, size // 8)), np.ones((8, 8))).astype(np.float32)
    kpa[:, : size // 4] = np.nan
    return Frame(bmode=bmode, elasto_kpa=kpa, mask=mask)


def _interior(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood has one label: there, linearly interpolated B-mode must equal the
    label exactly (r=2 leaves room for OpenCV's nearest-neighbour rounding, a sub-pixel offset)."""
    padded = np.pad(mask.astype(int), radius, constant_values=-1)  # the image border is never interior
    same = np.ones(mask.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    return same


@pytest.mark.parametrize("seed", range(5))
def test_geometry_moves_mask_and_bmode_together(seed):
    transform = TrainTransform(**GEOMETRY_ONLY, elasto_noise_std=0.0)
    out = transform(_frame(), np.random.default_rng(seed))
    inside = _interior(out.mask) & (out.bmode > 0)  # out.bmode 0 = fill outside the rotated frame, or label 0
    assert inside.sum() > 300
    np.testing.assert_allclose(out.bmode[inside], out.mask[inside] / 3.0, atol=1e-3)
    assert set(np.unique(out.mask)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(5))
def test_geometry_never_blends_kpa_values(seed):
    frame = _frame()
    out = TrainTransform(**GEOMETRY_ONLY, elasto_noise_std=0.0)(frame, np.random.default_rng(seed))
    values = out.elasto_kpa[np.isfinite(out.elasto_kpa)]
    assert values.size > 500
    assert set(np.unique(values)) <= set(KPA_LEVELS.tolist())  # nearest-neighbour: no new values
    assert np.isnan(out.elasto_kpa).any()  # the no-signal region moved with the frame, it was not filled


def test_elasto_noise_is_multiplicative_and_bounded():
    std = 0.05
    out = TrainTransform(**GEOMETRY_ONLY, elasto_noise_std=std)(_frame(), np.random.default_rng(3))
    values = out.elasto_kpa[np.isfinite(out.elasto_kpa)]
    nearest = KPA_LEVELS[np.abs(np.log(values[:, None] / KPA_LEVELS[None])).argmin(axis=1)]
    ratio = values / nearest
    assert np.all(np.abs(ratio - 1) < 6 * std) and np.all(values >= 0)
    assert ratio.std() == pytest.approx(std, rel=0.3)


def test_hflip_only_mirrors_every_channel_exactly():
    frame = _frame()
    flip = {**GEOMETRY_ONLY, "hflip_p": 1.0, "affine_p": 0.0}
    out = TrainTransform(**flip, elasto_noise_std=0.0)(frame, np.random.default_rng(0))
    np.testing.assert_array_equal(out.mask, frame.mask[:, ::-1])
    np.testing.assert_allclose(out.bmode, frame.bmode[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(out.elasto_kpa, frame.elasto_kpa[:, ::-1])  # NaN positions included


def test_modality_drop_gives_no_elastography():
    dropping = TrainTransform(**{**GEOMETRY_ONLY, "elasto_drop_p": 1.0})
    assert dropping(_frame(), np.random.default_rng(0)).elasto_kpa is None
    no_swe = _frame()
    no_swe.elasto_kpa = None
    assert TrainTransform()(no_swe, np.random.default_rng(0)).elasto_kpa is None


def test_same_rng_seed_same_result_and_different_seed_different_result():
    transform = TrainTransform()  # every augmentation on, with its default probability

    def run(seed: int) -> Frame:
        return transform(_frame(), np.random.default_rng(seed))

    a, b = run(11), run(11)
    np.testing.assert_array_equal(a.bmode, b.bmode)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.elasto_kpa is None) == (b.elasto_kpa is None)
    if a.elasto_kpa is not None:
        np.testing.assert_array_equal(a.elasto_kpa, b.elasto_kpa)
    assert any(not np.array_equal(run(s).bmode, a.bmode) for s in range(12, 16))


def test_build_train_transform_disabled_is_none():
    assert build_train_transform(enabled=False) is None
    assert isinstance(build_train_transform(enabled=True, hflip_p=0.0), TrainTransform)
