from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tpnet.core.io import FrameReadError, write_npy, write_png, write_tiff
from tpnet.inference.inputs import SpacingUnknownWarning, discover_inputs, load_frame

MODEL_SPACING = 0.2


def _bmode(path, shape=(8, 12)):
    write_png(path, np.full(shape, 100, np.uint8))


def _elasto(path, shape=(8, 12)):
    write_tiff(path, np.full(shape, 25.0, np.float32))


def _by_stem(frames):
    return {f.stem: f for f in frames}


def test_pairs_by_stem_and_rejects_orphans_and_strays(tmp_path):
    _bmode(tmp_path / "a_bmode.png")
    _elasto(tmp_path / "a_elasto.tif")
    write_npy(tmp_path / "b_bmode.npy", np.zeros((8, 12), np.float32))
    _elasto(tmp_path / "orphan_elasto.tiff")
    _bmode(tmp_path / "holiday.png")  # a plain image without the _bmode suffix: a B-mode-only frame
    _bmode(tmp_path / "scan.dcm.txt")  # not an image by its suffix: ignored
    _bmode(tmp_path / "c_elasto.png")  # elastography as PNG cannot carry kPa
    (tmp_path / "notes.txt").write_text("scanned 2024-05-01")  # not an image: ignored

    frames, rejected = discover_inputs(tmp_path, spacing_mm_cli=0.15, model_spacing_mm=MODEL_SPACING)

    frames = _by_stem(frames)
    assert sorted(frames) == ["a", "b", "holiday"]
    assert frames["holiday"].elasto_path is None and frames["holiday"].kind == "image"
    assert frames["a"].elasto_path == tmp_path / "a_elasto.tif"
    assert frames["b"].elasto_path is None and frames["b"].bmode_path.suffix == ".npy"
    reasons = {r.name: r.reason for r in rejected}
    assert set(reasons) == {"orphan_elasto.tiff", "c_elasto.png"}
    assert "without a B-mode" in reasons["orphan_elasto.tiff"]
    assert "TIFF or .npy" in reasons["c_elasto.png"]


def test_spacing_precedence_sidecar_then_cli(tmp_path):
    _bmode(tmp_path / "a_bmode.png")
    _bmode(tmp_path / "b_bmode.png")
    (tmp_path / "a.json").write_text(json.dumps({"spacing_mm": 0.1}))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI spacing covers b: no warning expected
        frames, rejected = discover_inputs(tmp_path, spacing_mm_cli=0.3, model_spacing_mm=MODEL_SPACING)

    frames = _by_stem(frames)
    assert not rejected
    assert (frames["a"].spacing_mm, frames["a"].spacing_source) == (0.1, "sidecar")
    assert (frames["b"].spacing_mm, frames["b"].spacing_source) == (0.3, "cli")


def test_frames_without_any_spacing_keep_none_and_warn_once_naming_them(tmp_path):
    for stem in ("a", "b", "c"):
        _bmode(tmp_path / f"{stem}_bmode.png")

    with pytest.warns(SpacingUnknownWarning, match="3 frame.*a_bmode.png") as record:
        frames, _ = discover_inputs(tmp_path, spacing_mm_cli=None, model_spacing_mm=MODEL_SPACING)

    assert len([w for w in record if issubclass(w.category, SpacingUnknownWarning)]) == 1
    # Never filled from an assumed spacing (issue #11): the mm columns stay empty.
    assert all(f.spacing_mm is None and f.spacing_source == "" for f in frames)


def test_bad_sidecar_rejects_that_frame_only(tmp_path):
    _bmode(tmp_path / "a_bmode.png")
    _bmode(tmp_path / "b_bmode.png")
    (tmp_path / "a.json").write_text(json.dumps({"spacing_mm": -2}))

    frames, rejected = discover_inputs(tmp_path, spacing_mm_cli=0.2, model_spacing_mm=MODEL_SPACING)

    assert [f.stem for f in frames] == ["b"]
    assert rejected[0].name == "a_bmode.png" and "a.json" in rejected[0].reason


def test_contract_root(tmp_path):
    (tmp_path / "frames").mkdir()
    _bmode(tmp_path / "frames" / "s1.png")
    _elasto(tmp_path / "frames" / "s1_swe.tif")
    _bmode(tmp_path / "frames" / "s2.png")
    (tmp_path / "dataset.yaml").write_text("name: demo\nspacing_mm: 0.25\nelasto_unit: kPa\n")
    (tmp_path / "manifest.csv").write_text(
        "sample_id,subject_id,bmode,elasto,spacing_mm\n"
        "s1,p1,frames/s1.png,frames/s1_swe.tif,0.1\n"
        "s2,p1,frames/s2.png,,\n"
        "evil,p2,../outside.png,,\n"
        ",p3,frames/s2.png,,\n"
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames, rejected = discover_inputs(tmp_path, spacing_mm_cli=0.5, model_spacing_mm=MODEL_SPACING)

    frames = _by_stem(frames)
    assert sorted(frames) == ["s1", "s2"]
    assert frames["s1"].elasto_path == (tmp_path / "frames" / "s1_swe.tif").resolve()
    assert (frames["s1"].spacing_mm, frames["s1"].spacing_source) == (0.1, "manifest")
    assert (frames["s2"].spacing_mm, frames["s2"].spacing_source) == (0.25, "dataset.yaml")
    reasons = {r.name: r.reason for r in rejected}
    assert "escapes the dataset root" in reasons["evil"]
    assert "empty sample_id" in reasons["manifest.csv line 5"]


def test_load_frame_reads_lazily_and_checks_shapes(tmp_path):
    _bmode(tmp_path / "ok_bmode.png")
    _elasto(tmp_path / "ok_elasto.tif")
    _bmode(tmp_path / "bad_bmode.png")
    _elasto(tmp_path / "bad_elasto.tif", shape=(4, 6))
    coloured = np.zeros((8, 12, 3), np.uint8)
    coloured[:, :4] = (255, 0, 0)  # a third of the frame red: colour, not grey stored as RGB
    write_png(tmp_path / "rgb_bmode.png", coloured)
    frames, _ = discover_inputs(tmp_path, spacing_mm_cli=0.2, model_spacing_mm=MODEL_SPACING)
    frames = _by_stem(frames)  # discovery alone accepted all three: reading is what fails

    bmode, kpa = load_frame(frames["ok"])
    assert bmode.shape == kpa.shape == (8, 12)
    assert bmode.dtype == np.float32 and np.allclose(bmode, 100 / 255)
    with pytest.raises(
        FrameReadError, match=r"bad_elasto.tif: elastography is 6x4 px .* bad_bmode.png is 12x8"
    ):
        load_frame(frames["bad"])
    with pytest.raises(FrameReadError, match="rgb_bmode.png: .*colour"):
        load_frame(frames["rgb"])
