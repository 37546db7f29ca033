"""The DL_Track converter on two crops of real screenshots (tests/fixtures/dltrack, Apache-2.0)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.io import read_bmode, read_mask
from tpnet.data.check import check_dataset
from tpnet.data.dltrack import DLTrackError, ScreenLayout, convert_dltrack, convert_frame

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dltrack"

# The two layouts moved into the crops' coordinates (see tests/fixtures/dltrack/README.md).
RIGHT_RULER = ScreenLayout("crop-660", (220, 200), (0, 13, 183, 187), ticks_x=205, mm_per_tick=10.0)
LEFT_RULER = ScreenLayout("crop-800", (260, 300), (104, 29, 156, 271), ticks_x=2, mm_per_tick=10.0)


def test_ruler_gives_the_pixel_size_and_the_box_is_cropped() -> None:
    frame = convert_frame(FIXTURES / "images/img_00304.png", FIXTURES / "masks/img_00304.png", [RIGHT_RULER])
    # ticks at crop rows 13, 89.5 and 167.5 (screen 43, 119.5, 197.5): 77.25 px per 10 mm
    assert frame.spacing_mm == pytest.approx(10 / 77.25, rel=1e-3)
    assert frame.bmode.shape == frame.mask.shape == (187, 183)
    assert set(np.unique(frame.mask)) == {0, 1}  # 255 -> 1


def test_black_margin_inside_the_box_is_trimmed() -> None:
    frame = convert_frame(FIXTURES / "images/img_00085.png", FIXTURES / "masks/img_00085.png", [LEFT_RULER])
    # this depth setting draws a narrower image: screen columns 104..135 are black and trimmed away
    assert frame.bmode.shape[1] == 156 - 32
    assert frame.bmode[:, :3].max() > 12
    assert frame.spacing_mm == pytest.approx(10 / 78.67, rel=5e-3)  # long ticks every 78.7 px


def test_converted_dataset_passes_the_contract_check(tmp_path: Path) -> None:
    rows = convert_dltrack(FIXTURES, tmp_path / "out", layouts=[RIGHT_RULER, LEFT_RULER], test_fraction=0.5,
                           val_fraction=0.0)  # fmt: skip
    spec = load_spec(tmp_path / "out")
    assert spec.classes == ("background", "aponeurosis")
    assert not check_dataset(tmp_path / "out").errors
    manifest = load_manifest(tmp_path / "out")
    assert [r.subject_id for r in manifest] == [r.sample_id for r in manifest]  # one subject per frame
    assert sorted(r["split"] for r in rows) == ["test", "train"]
    bmode = read_bmode(tmp_path / "out" / manifest[0].bmode)
    assert bmode.shape == read_mask(tmp_path / "out" / manifest[0].mask).shape


def test_a_screen_without_ruler_gets_the_median_measured_pixel_size(tmp_path: Path) -> None:
    no_ruler = ScreenLayout("crop-800-no-ruler", (260, 300), (104, 29, 156, 271))
    rows = convert_dltrack(FIXTURES, tmp_path / "out", layouts=[RIGHT_RULER, no_ruler])
    by_id = {r["sample_id"]: r for r in rows}
    assert by_id["img_00085"]["spacing_source"] == "assumed"
    assert by_id["img_00085"]["spacing_mm"] == by_id["img_00304"]["spacing_mm"]
    with (tmp_path / "out" / "manifest.csv").open() as f:
        assert "spacing_source" in next(csv.reader(f))


def test_unknown_screen_size_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source)
    with pytest.raises(DLTrackError, match="matches no layout"):
        convert_dltrack(source, tmp_path / "out", layouts=[RIGHT_RULER])
