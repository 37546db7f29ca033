"""Scanner profiles: a typo or a bad value fails naming the file and the key; a profile that does not fit a
screenshot is refused naming both; a fitting one reads B-mode, kPa and the pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from screenshot_images import RANGE_KPA, draw_screenshot, write_image, write_profile
from tpnet.core.io import FrameReadError
from tpnet.core.scanner_profile import ProfileError, load_profile, read_screenshot

REPO = Path(__file__).resolve().parents[2]
BASE = {"bmode_box": [0, 0, 100, 80], "colorbar_box": [110, 0, 10, 80], "colorbar_range": [0, 180]}


def _write(tmp_path: Path, **keys) -> Path:
    return write_profile(tmp_path / "scanner.yaml", {**BASE, **keys})


def test_a_minimal_profile_has_documented_defaults(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path))
    assert profile.name == "scanner"  # the file's stem
    assert profile.swe_box == profile.bmode_box  # colour over the B-mode when no swe_box is given
    assert profile.layout == "overlay" and profile.blend == "overlay"
    assert profile.colorbar_orientation == "bottom-to-top"
    assert profile.colorbar_range_kpa == (0.0, 180.0) and profile.spacing_mm() is None
    bmode_only = load_profile(
        write_profile(tmp_path / "b.yaml", {"bmode_box": [0, 0, 10, 10], "mm_per_px": 0.1})
    )
    assert bmode_only.swe_box is None and bmode_only.layout == "bmode" and bmode_only.spacing_mm() == 0.1


def test_speed_ranges_become_kpa_and_ruler_ticks_give_the_pixel_size(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, colorbar_range=[0, 10], colorbar_unit="m/s"))
    assert profile.colorbar_range_kpa == pytest.approx((0.0, 300.0))  # E = 3 * 1000 * 10^2 Pa
    profile = load_profile(_write(tmp_path, colorbar_range="0.5-7.7 m/s"))
    assert profile.colorbar_range_kpa == pytest.approx((0.75, 177.87))
    assert load_profile(_write(tmp_path, colorbar_range="0 - 180 kPa")).colorbar_range_kpa == (0.0, 180.0)
    profile = load_profile(_write(tmp_path, depth_scale={"y1_px": 40, "y1_mm": 0, "y2_px": 240, "y2_mm": 40}))
    assert profile.spacing_mm() == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ({"bmode_bx": [0, 0, 1, 1]}, "bmode_bx", "did you mean bmode_box"),
        (
            {"colorbar_range": [0, 180], "colourbar_unit": "kPa"},
            "colourbar_unit",
            "did you mean colorbar_unit",
        ),
        ({"bmode_box": [0, 0, 100]}, "bmode_box", "[x, y, w, h]"),
        ({"bmode_box": [0, 0, "100", 80]}, "bmode_box", "whole numbers"),
        ({"bmode_box": [-5, 0, 100, 80]}, "bmode_box", "must not be negative"),
        ({"swe_box": [0, 0, 0, 80]}, "swe_box", "must be positive"),
        ({"colorbar_range": [180, 0]}, "colorbar_range", "min < max"),
        ({"colorbar_range": "0 to lots"}, "colorbar_range", "MIN-MAX kPa"),
        ({"colorbar_range": [0, 10], "colorbar_unit": "mph"}, "colorbar_unit", "not one of"),
        ({"colorbar_range": "0-10 m/s", "colorbar_unit": "kPa"}, "colorbar_unit", "contradicts"),
        ({"colorbar_orientation": "upwards"}, "colorbar_orientation", "bottom-to-top"),
        ({"blend": "mix"}, "blend", "overlay"),
        ({"mm_per_px": -0.1}, "mm_per_px", "positive"),
        ({"mm_per_px": "0.1mm"}, "mm_per_px", "finite number"),
        (
            {"mm_per_px": 0.1, "depth_scale": {"y1_px": 0, "y1_mm": 0, "y2_px": 1, "y2_mm": 1}},
            "depth_scale",
            "one",
        ),
        ({"depth_scale": {"y1_px": 0, "y1_mm": 0, "y2_px": 10}}, "depth_scale.y2_mm", "missing"),
        (
            {"depth_scale": {"y1_px": 0, "y1_mm": 0, "y2_px": 10, "y2_mm": 5, "y3": 1}},
            "depth_scale.y3",
            "not a",
        ),
        ({"depth_scale": {"y1_px": 5, "y1_mm": 0, "y2_px": 5, "y2_mm": 5}}, "depth_scale", "must differ"),
        ({"overlay_alpha": 1.5}, "overlay_alpha", "(0, 1]"),
        ({"image_size": [100, 50]}, "bmode_box", "outside the image_size"),
        ({"image_size": [640]}, "image_size", "[width, height]"),
        ({"colorbar_box": [110, 0, 10, 8]}, "colorbar_box", "at least 16 px"),
        ({"swe_box": [50, 40, 100, 80]}, "swe_box", "partly overlaps"),
        ({"swe_box": [200, 0, 90, 80]}, "swe_box", "the same size"),
    ],
)
def test_bad_keys_fail_naming_the_file_and_key(tmp_path: Path, keys: dict, key: str, words: str) -> None:
    path = _write(tmp_path, **keys)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}:") and words in message, message


def test_missing_keys_and_broken_files(tmp_path: Path) -> None:
    cases = {
        "no_bmode.yaml": ({"colorbar_box": [0, 0, 10, 80]}, "bmode_box: missing"),
        "no_bar.yaml": ({"bmode_box": [0, 0, 9, 9], "swe_box": [0, 0, 9, 9]}, "colorbar_box: missing"),
        "no_range.yaml": (
            {"bmode_box": [0, 0, 9, 9], "colorbar_box": [0, 0, 9, 90]},
            "colorbar_range: missing",
        ),
        "list.yaml": ([1, 2], "mapping of keys"),
    }
    for name, (content, words) in cases.items():
        path = write_profile(tmp_path / name, content)
        with pytest.raises(ProfileError, match=words) as info:
            load_profile(path)
        assert str(info.value).startswith(str(path))
    (tmp_path / "bad.yaml").write_text("bmode_box: [0, 0\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(tmp_path / "bad.yaml")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.yaml")


@pytest.mark.parametrize("layout", ["dual", "overlay"])
def test_read_screenshot_gives_bmode_kpa_and_spacing(tmp_path: Path, layout: str) -> None:
    screen, kpa, grey, profile_dict = draw_screenshot("turbo", layout, alpha=0.65, seed=2)
    shot = write_image(tmp_path / "shot.jpg", screen, quality=90)
    frame = read_screenshot(shot, load_profile(write_profile(tmp_path / "p.yaml", profile_dict)))
    w, h = profile_dict["bmode_box"][2:]
    assert frame.bmode.shape == frame.elasto_kpa.shape == (h, w)
    assert frame.bmode.dtype == frame.elasto_kpa.dtype == np.float32
    assert frame.spacing_mm == 0.2
    valid = np.isfinite(kpa)
    assert np.isfinite(frame.elasto_kpa[valid]).mean() >= 0.95
    assert np.nanmedian(np.abs(frame.elasto_kpa - kpa)[valid]) <= 0.03 * (RANGE_KPA[1] - RANGE_KPA[0])
    assert np.median(np.abs(frame.bmode - grey)) < 0.05  # grey, also where the colour covered it
    if layout == "overlay":  # outside the SWE box: no signal, whatever the pixels show
        x, y, sw, sh = profile_dict["swe_box"]
        ox, oy = x - profile_dict["bmode_box"][0], y - profile_dict["bmode_box"][1]
        outside = np.ones((h, w), bool)
        outside[oy : oy + sh, ox : ox + sw] = False
        assert np.isnan(frame.elasto_kpa[outside]).all()
    assert any("opacity estimated as 0.6" in note for note in frame.notes)


def test_a_profile_that_does_not_fit_is_refused_by_name(tmp_path: Path) -> None:
    screen, _, _, profile_dict = draw_screenshot("jet", "dual", seed=4)
    shot = write_image(tmp_path / "shot.png", screen)
    cases = {
        "size.yaml": ({"image_size": [640, 480]}, "320x240 px, the profile's image_size is 640x480"),
        "outside.yaml": (
            {"image_size": None, "colorbar_box": [315, 28, 10, 180]},
            "colorbar_box [315, 28, 10, 180] reaches outside",
        ),
        "grey_bar.yaml": ({"colorbar_box": [20, 30, 10, 80]}, "not a colour ramp"),
        "frame_bar.yaml": ({"colorbar_box": [284, 20, 10, 188]}, "jumps"),
    }
    for name, (changes, words) in cases.items():
        path = write_profile(tmp_path / name, {**profile_dict, **changes})
        with pytest.raises(FrameReadError) as info:
            read_screenshot(shot, load_profile(path))
        message = str(info.value)
        assert message.startswith(f"{shot}: scanner profile {path}") and words in message, message


def test_the_shipped_example_profiles_load() -> None:
    shipped = sorted((REPO / "profiles").glob("*.yaml"))
    assert {p.name for p in shipped} >= {"generic-dual-view.yaml", "generic-overlay.yaml"}
    layouts = {load_profile(p).layout for p in shipped}
    assert layouts >= {"dual", "overlay"}
    assert all(
        load_profile(p).spacing_mm() == pytest.approx(0.1) for p in shipped
    )  # mm_per_px and depth_scale
