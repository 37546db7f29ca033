"""Screenshot mode of the synthetic generator (issue #11): what it draws, what it writes beside it, and the
colour decoder's error measured against the true kPa (the goal is asserted, so a decoder regression fails)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tpnet.core.contract import load_manifest, resolve_path
from tpnet.core.io import read_bmode, read_elasto, read_mask
from tpnet.core.scanner_profile import load_profile
from tpnet.data.synth import generate_frame
from tpnet.data.synth_screenshots import (
    GOAL_MEDIAN_ABS_ERROR_PCT,
    GOAL_RECOVERED_PCT,
    colormap_lut,
    encode_screenshot,
    measure_decode_error,
    render_screenshot,
    to_display,
    write_screenshot_dataset,
)

H, W = 96, 96  # ~9.6 mm at the display's 0.1 mm/px: the SWE box covers most of the frame


def _frame_with_swe(seed: int = 5) -> dict:
    for frame in range(20):
        sample = generate_frame(seed, 0, frame, H, W)
        if sample["elasto"] is not None and np.isfinite(sample["elasto"]).sum() > 500:
            return sample
    raise AssertionError("no frame with SWE signal in 20 tries")


def _crop(image: np.ndarray, box: list[int]) -> np.ndarray:
    x, y, w, h = box
    return image[y : y + h, x : x + w]


@pytest.mark.parametrize("layout", ["dual", "overlay"])
def test_render_draws_views_bar_and_chrome_where_the_profile_says(layout: str):
    sample = _frame_with_swe()
    screen, profile = render_screenshot(sample, "turbo", layout, (0.0, 180.0), np.random.default_rng(1))
    assert screen.dtype == np.uint8 and screen.shape == (*profile["image_size"][::-1], 3)
    assert profile["blend"] == "overlay" and profile["colorbar_unit"] == "kPa"
    assert profile["colorbar_range"] == [0.0, 180.0] and profile["mm_per_px"] == sample["spacing_mm"]
    signal = np.isfinite(sample["elasto"])
    swe = _crop(screen, profile["swe_box"]).astype(int)
    # Signal pixels are coloured; pixels without signal stay grey (no colour where the scanner has none),
    # except the region's light-grey outline, which is grey too.
    chroma = swe.max(axis=2) - swe.min(axis=2)
    assert np.median(chroma[signal]) > 30
    assert (chroma[~signal] == 0).all()
    if layout == "dual":  # the B-mode view is the grey frame itself, the outline aside
        bmode = _crop(screen, profile["bmode_box"])
        outline = (bmode[..., 0] == 200) & (sample["bmode"] != 200)
        assert (bmode[..., 0][~outline] == sample["bmode"][~outline]).all()
        assert 0 < outline.mean() < 0.1
    # Colour bar: the colour map's minimum at the bottom, maximum at the top.
    bar = _crop(screen, profile["colorbar_box"])
    lut = colormap_lut("turbo")
    assert (bar[-1] == lut[0]).all() and (bar[0] == lut[255]).all()
    # UI chrome (title text, a logo, tick labels) lies outside every box: something a decoder must ignore.
    outside = np.ones(screen.shape[:2], bool)
    for key in ("bmode_box", "swe_box", "colorbar_box"):
        x, y, w, h = profile[key]
        outside[y : y + h, x : x + w] = False
    lit = screen.max(axis=2) > 100
    assert (lit & outside).sum() > 500
    logo = screen[:24, :30].astype(int)
    assert (logo.max(axis=2) - logo.min(axis=2)).max() > 100  # a coloured logo, not just grey text


def test_colour_follows_the_kpa_and_nan_gives_pure_grey():
    sample = _frame_with_swe()
    sample = {**sample, "elasto": np.full((H, W), np.nan, np.float32)}
    sample["elasto"][10:20, 10:20] = 0.0  # bar minimum
    sample["elasto"][30:40, 30:40] = 500.0  # above the bar: clipped to its maximum
    screen, profile = render_screenshot(sample, "jet", "overlay", alpha=1.0)
    swe = _crop(screen, profile["swe_box"])
    lut = colormap_lut("jet")
    assert (swe[12:18, 12:18] == lut[0]).all() and (swe[32:38, 32:38] == lut[255]).all()
    grey = swe[50:, 50:]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_display_resampling_keeps_physical_size_and_labels():
    sample = generate_frame(3, 1, 0, H, W)
    shown = to_display(sample, 0.05)  # finer pixels than the frame's: the frame fills more than the box
    assert shown["bmode"].shape == (H, W) and shown["spacing_mm"] == 0.05
    assert set(np.unique(shown["mask"])) <= set(np.unique(sample["mask"]))
    scale = sample["spacing_mm"] / 0.05
    # A depth d mm lies at row d / 0.05: the row of the first bright skin echo scales with the spacing.
    first = int(np.argmax(sample["bmode"][:, W // 2] > 150))
    assert abs(int(np.argmax(shown["bmode"][:, W // 2] > 150)) - first * scale) <= scale + 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_screenshot_dataset(tmp_path_factory.mktemp("shots") / "ds", 2, 2, seed=4, height=H, width=W)


def test_dataset_layout_profile_truth_and_raw_contract(dataset: Path):
    shots = sorted((dataset / "screenshots").rglob("*.png"))
    assert [p.relative_to(dataset / "screenshots").as_posix() for p in shots] == [
        "s000/f000.png", "s000/f001.png", "s001/f000.png", "s001/f001.png",
    ]  # fmt: skip
    profile = load_profile(dataset / "profile.yaml")  # the real loader accepts every key written
    assert profile.layout == "dual" and profile.mm_per_px == 0.1
    assert profile.colorbar_range_kpa == (0.0, 180.0)
    assert tuple(yaml.safe_load((dataset / "profile.yaml").read_text())["image_size"]) == profile.image_size
    rows = {row.sample_id: row for row in load_manifest(dataset / "raw")}
    assert len(rows) == 4 and {r.spacing_mm for r in rows.values()} == {0.1}
    for shot in shots:
        subject, frame = shot.parent.name, shot.stem
        screen = cv2.imread(str(shot))
        assert screen.shape[1::-1] == profile.image_size
        labels = read_mask(dataset / "labels" / subject / f"{frame}.png")
        truth = read_elasto(dataset / "truth" / subject / f"{frame}_kpa.tif")
        assert labels.shape == truth.shape == (H, W)
        # out/raw/ holds the very arrays the screenshot shows.
        row = rows[f"{subject}_{frame}"]
        assert (read_mask(resolve_path(dataset / "raw", row.mask)) == labels).all()
        if row.elasto is None:
            assert np.isnan(truth).all()
        else:
            raw_kpa = read_elasto(resolve_path(dataset / "raw", row.elasto))
            np.testing.assert_array_equal(raw_kpa, truth)
        bmode = read_bmode(resolve_path(dataset / "raw", row.bmode))
        x, y, w, h = profile.bmode_box
        grey = screen[y : y + h, x : x + w, 0].astype(np.float32) / 255.0
        assert np.mean(np.abs(grey - bmode) < 1e-6) > 0.9  # all but the SWE region's outline
    from tpnet.data.check import check_dataset  # imported here: the contract check reads DICOM too

    report = check_dataset(dataset / "raw", workers=1)
    assert report.ok, [str(p) for p in report.errors]


def test_same_seed_writes_the_same_bytes(tmp_path: Path):
    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    kwargs = {"height": 64, "width": 64, "colormap": "turbo", "layout": "overlay", "jpeg_quality": 90}
    first = files(write_screenshot_dataset(tmp_path / "a", 1, 2, seed=9, **kwargs))
    second = files(write_screenshot_dataset(tmp_path / "b", 1, 2, seed=9, **kwargs))
    other = files(write_screenshot_dataset(tmp_path / "c", 1, 2, seed=10, **kwargs))
    assert first == second
    assert "screenshots/s000/f001.jpg" in first and "raw/manifest.csv" in first
    assert first["screenshots/s000/f000.jpg"] != other["screenshots/s000/f000.jpg"]
    assert load_profile(tmp_path / "a" / "profile.yaml").layout == "overlay"


def test_bad_arguments_are_refused_before_writing(tmp_path: Path):
    with pytest.raises(ValueError, match="colour map"):
        write_screenshot_dataset(tmp_path / "x", 1, 1, 0, 64, 64, colormap="viridis-ish")
    with pytest.raises(ValueError, match="layout"):
        write_screenshot_dataset(tmp_path / "x", 1, 1, 0, 64, 64, layout="triple")
    with pytest.raises(ValueError, match="jpeg_quality"):
        write_screenshot_dataset(tmp_path / "x", 1, 1, 0, 64, 64, jpeg_quality=0)
    assert not (tmp_path / "x").exists()


# Three small frames per case, all with SWE signal (seed 2: subjects 0-2, frame 0), JPEG quality 90 as the
# issue states. Asserts the goal on the real decoder: if this fails, the decoder regressed.
@pytest.mark.parametrize("colormap", ["jet", "turbo"])
@pytest.mark.parametrize("layout", ["dual", "overlay"])
def test_decoder_meets_the_goal_at_jpeg_90(tmp_path: Path, colormap: str, layout: str):
    root = write_screenshot_dataset(tmp_path / "ds", 3, 1, 2, 128, 128, colormap, layout, jpeg_quality=90)
    error = measure_decode_error(root)
    assert error.frames == 3 and error.valid_px > 10_000
    summary = (
        f"{colormap}/{layout}: median |error| {error.median_abs_error_pct:.2f} % of the range "
        f"(goal <= {GOAL_MEDIAN_ABS_ERROR_PCT}), recovered {error.recovered_pct:.1f} % (goal >= "
        f"{GOAL_RECOVERED_PCT}), bias {error.median_error_pct:+.2f} %, false signal {error.false_signal_pct:.2f} %"
    )
    assert error.meets_goal(), summary


# A scanner screenshot whose SWE view holds no colour at all (the scanner found no signal, or SWE was off:
# 15 % of the generator's frames) is valid input: it decodes to "no signal" everywhere, not to an error.
@pytest.mark.parametrize("layout", ["dual", "overlay"])
def test_screenshot_without_colour_decodes_to_no_signal(tmp_path: Path, layout: str):
    from tpnet.core.scanner_profile import read_screenshot

    sample = generate_frame(5, 0, 2, H, W)
    assert sample["elasto"] is None
    screen, profile = render_screenshot(sample, "jet", layout)
    shot = tmp_path / "no-swe.png"
    shot.write_bytes(encode_screenshot(screen))
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    decoded = read_screenshot(shot, load_profile(tmp_path / "profile.yaml"))
    assert decoded.elasto_kpa is None or np.isnan(decoded.elasto_kpa).all()
    assert decoded.bmode.shape == (H, W)
