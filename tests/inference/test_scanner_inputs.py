"""tpnet-infer on what scanners write (issue #11): DICOM stills and cine loops (pydicom's real SonoSite and
Philips files, and files written with pydicom), scanner screenshots with a profile, plain images in nested
folders, and broken files among them: every good input analysed, every bad one named with its reason."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from dicom_files import (
    philips_palette_path,
    sonosite_cine_path,
    write_dicom_needing_missing_decoder,
    write_dicom_without_pixels,
    write_truncated_dicom,
    write_us_dicom,
)
from model_files import BACKGROUND, NODULE, make_model_file
from tpnet.core.io import read_array, write_png, write_tiff
from tpnet.inference.cli import main
from tpnet.inference.inputs import discover_inputs

SONOSITE_SPACING_MM = 0.5104970559477806  # its ultrasound region: PhysicalDeltaX = 0.05104970559477806 cm
SONOSITE_FRAME_TIME_S = 0.033333  # FrameTime 33.333 ms


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"))


def _csv(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _run(model_path, in_dir, out_dir, *extra):
    return main(["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir), *extra])


def _scene(height, width, discs, value=NODULE):
    """uint8 grey frame: background with dark discs (x, y, r in px): the test detector's active TrPs."""
    frame = np.full((height, width), round(BACKGROUND * 255), np.uint8)
    for x, y, r in discs:
        cv2.circle(frame, (x, y), r, round(value * 255), -1)
    return frame


def test_pydicom_real_ultrasound_files_every_frame_with_spacing_and_frame_times(tmp_path, model_path):
    in_dir = tmp_path / "export"
    (in_dir / "sonosite").mkdir(parents=True)
    (in_dir / "philips").mkdir()
    (in_dir / "sonosite" / "cine.dcm").write_bytes(sonosite_cine_path().read_bytes())
    (in_dir / "philips" / "IM0001").write_bytes(philips_palette_path().read_bytes())  # no suffix: by preamble

    code = _run(model_path, in_dir, tmp_path / "out")

    assert code == 0
    frames = {r["stem"]: r for r in _csv(tmp_path / "out" / "frames.csv")}
    cine = [frames[f"sonosite__cine_f{i:04d}"] for i in range(30)]  # every frame of the loop, one stem each
    assert all(r["status"] == "analysed" and r["kind"] == "dicom" for r in frames.values())
    assert len(frames) == 31
    assert all(float(r["spacing_mm"]) == pytest.approx(SONOSITE_SPACING_MM, abs=1e-4) for r in cine)
    assert all(r["spacing_source"] == "dicom" for r in cine)
    assert [float(r["t_s"]) for r in cine] == pytest.approx(
        [i * SONOSITE_FRAME_TIME_S for i in range(30)], abs=1e-3
    )
    assert frames["philips__IM0001"]["spacing_source"] == "dicom"
    # The millimetre columns rest on the file's own pixel size.
    rows = [r for r in _csv(tmp_path / "out" / "detections.csv") if r["stem"].startswith("sonosite")]
    assert rows, "the test detector marks the dark tissue of the real frames"
    for r in rows:
        assert float(r["x_mm"]) == pytest.approx(float(r["x_px"]) * SONOSITE_SPACING_MM, abs=6e-3)
        assert r["t_s"] != ""
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (loop,) = summary["loops"]
    assert loop["loop"] == "sonosite__cine" and loop["frames_analysed"] == 30
    # Its frames carry colour, read as grey: said once for the file, not once per frame.
    colour = [w for w in summary["warnings"] if "read as grey" in w]
    assert len(colour) == 1 and colour[0].startswith("sonosite/cine.dcm: its frames hold colour")
    assert any(w.startswith("sonosite/cine.dcm: ultrasound region") for w in summary["warnings"])


def test_dicom_region_the_network_sees_and_results_mapped_back_to_the_whole_frame(tmp_path, model_path):
    # A 96x128 screen, the image in a region at (32, 16)-(96, 80) at 0.2 mm/px; a dark TrP at (60, 40) in
    # the region and a dark "UI" block outside it that must not be analysed.
    frame = np.zeros((96, 128), np.uint8)
    frame[16:80, 32:96] = _scene(64, 64, [(28, 24, 6)])
    frame[85:95, 2:30] = round(NODULE * 255)  # dark UI text block below the image
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    write_us_dicom(in_dir / "still.dcm", pixels=frame[None], region=(32, 16, 96, 80), delta_cm=(0.02, 0.02))

    assert _run(model_path, in_dir, tmp_path / "out") == 0

    mask = read_array(tmp_path / "out" / "masks" / "still.png")
    assert mask.shape == (96, 128)  # the whole frame
    assert not mask[:16].any() and not mask[80:].any() and not mask[:, :32].any() and not mask[:, 96:].any()
    (row,) = _csv(tmp_path / "out" / "detections.csv")
    assert float(row["x_px"]) == pytest.approx(60, abs=1) and float(row["y_px"]) == pytest.approx(40, abs=1)
    assert float(row["x_mm"]) == pytest.approx(60 * 0.2, abs=0.2)
    assert float(row["area_mm2"]) == pytest.approx(np.pi * 6**2 * 0.04, rel=0.25)


def test_cine_loop_tracks_a_stable_trigger_point_and_flags_a_one_frame_finding(tmp_path, model_path):
    frames = []
    for i in range(6):
        discs = [(20 + i, 30, 6)]  # drifts 1 px (0.2 mm) per frame: the same TrP
        if i == 3:
            discs.append((70, 20, 5))  # seen in one frame only
        frames.append(_scene(64, 96, discs))
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    write_us_dicom(
        in_dir / "loop.dcm",
        pixels=np.stack(frames),
        delta_cm=(0.02, 0.02),
        frame_time_vector_ms=[0, 40, 40, 50, 40, 40],
    )

    assert _run(model_path, in_dir, tmp_path / "out", "--min-frames", "4") == 0

    times = {r["stem"]: float(r["t_s"]) for r in _csv(tmp_path / "out" / "frames.csv")}
    assert times["loop_f0000"] == 0.0 and times["loop_f0003"] == pytest.approx(0.13)
    tracks = _csv(tmp_path / "out" / "loops.csv")
    stable = [t for t in tracks if t["stable"] == "yes"]
    assert len(stable) == 1 and stable[0]["n_frames"] == "6"
    assert (stable[0]["first_frame"], stable[0]["last_frame"]) == ("0", "5")
    (single,) = [t for t in tracks if t["stable"] == "no"]
    assert single["n_frames"] == "1" and single["first_frame"] == "3"
    (loop,) = json.loads((tmp_path / "out" / "summary.json").read_text())["loops"]
    assert loop["stable_tracks"] == 1 and loop["tracks"] == 2


def _profile(path, width=200, height=100):
    """A dual-view screen: B-mode left (10, 10, 80, 80), SWE view right (110, 10, 80, 80), bar at x 192."""
    path.write_text(
        "name: test-dual\n"
        f"image_size: [{width}, {height}]\n"
        "bmode_box: [10, 10, 80, 80]\n"
        "swe_box: [110, 10, 80, 80]\n"
        "colorbar_box: [194, 10, 4, 80]\n"
        "colorbar_range: [0, 180]\n"
        "colorbar_unit: kPa\n"
        "mm_per_px: 0.2\n"
        "blend: overlay\n"
    )
    return path


def _screenshot(path, width=200, height=100):
    screen = np.zeros((height, width, 3), np.uint8)
    grey = _scene(80, 80, [(40, 40, 7)])
    screen[10:90, 10:90] = grey[..., None]
    ramp = np.linspace(255, 0, 80).astype(np.uint8)[:, None].repeat(4, axis=1)  # top = max
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[..., ::-1]
    screen[10:90, 194:198] = bar
    swe = grey[..., None].repeat(3, axis=2).copy()
    colour = cv2.applyColorMap(np.full((30, 30), 64, np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # ~45 kPa
    swe[25:55, 25:55] = (0.35 * swe[25:55, 25:55] + 0.65 * colour).astype(np.uint8)
    screen[10:90, 110:190] = swe
    write_png(path, screen)


def test_mixed_folder_every_good_input_analysed_every_bad_one_named(tmp_path, model_path, capsys):
    in_dir = tmp_path / "clinic"
    for sub in ("dicom", "screens", "pairs", "patient1/visit1", "patient2/visit1"):
        (in_dir / sub).mkdir(parents=True)
    write_us_dicom(
        in_dir / "dicom" / "good.dcm", pixels=_scene(64, 64, [(30, 30, 6)])[None], delta_cm=(0.02, 0.02)
    )
    write_truncated_dicom(in_dir / "dicom" / "truncated.dcm")
    write_dicom_without_pixels(in_dir / "dicom" / "nopixels.dcm")
    write_dicom_needing_missing_decoder(in_dir / "dicom" / "jpegls.dcm")
    profile = _profile(tmp_path / "profile.yaml")
    _screenshot(in_dir / "screens" / "shot1.png")
    _screenshot(in_dir / "screens" / "wrong_size.png", width=220)
    write_png(in_dir / "pairs" / "a_bmode.png", _scene(64, 64, [(20, 20, 6)]))
    write_tiff(in_dir / "pairs" / "a_elasto.tif", np.full((64, 64), 30.0, np.float32))
    # Two image1.png in two folders: two frames, two stems, never one file overwriting the other.
    write_tiff(in_dir / "patient1" / "visit1" / "image1.tif", _scene(64, 64, [(32, 32, 6)]))
    write_tiff(in_dir / "patient2" / "visit1" / "image1.tif", _scene(64, 64, [(32, 32, 6)]))
    # (With --profile a PNG/JPEG/BMP not named *_bmode is a screenshot; TIFF never is.)

    code = _run(model_path, in_dir, tmp_path / "out", "--profile", str(profile), "--spacing-mm", "0.2")

    assert code == 3
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {
        "dicom/truncated.dcm", "dicom/nopixels.dcm", "dicom/jpegls.dcm", "screens/wrong_size.png",
    }  # fmt: skip
    assert "no pixel data" in reasons["dicom/nopixels.dcm"].lower()
    assert "decoder" in reasons["dicom/jpegls.dcm"].lower()
    assert "220x100" in reasons["screens/wrong_size.png"]
    for name in reasons:
        assert f"REJECTED {name}" in out
    frames = {r["stem"]: r for r in _csv(tmp_path / "out" / "frames.csv")}
    analysed = {stem for stem, r in frames.items() if r["status"] == "analysed"}
    assert analysed == {
        "dicom__good", "screens__shot1", "pairs__a", "patient1__visit1__image1", "patient2__visit1__image1",
    }  # fmt: skip
    assert (
        frames["screens__shot1"]["kind"] == "screenshot"
        and frames["screens__shot1"]["spacing_source"] == "profile"
    )
    assert frames["dicom__good"]["spacing_source"] == "dicom"
    for stem in analysed:
        assert (tmp_path / "out" / "masks" / f"{stem}.png").is_file()
    # The screenshot's decoded elastography reaches the TrP under the colour patch.
    shot_rows = [r for r in _csv(tmp_path / "out" / "detections.csv") if r["stem"] == "screens__shot1"]
    assert shot_rows and float(shot_rows[0]["stiffness_kpa_mean"]) == pytest.approx(45, abs=12)


def test_a_screenshot_without_a_profile_is_a_plain_image_and_colour_is_refused_by_name(tmp_path):
    _screenshot(tmp_path / "shot.png")
    frames, rejected = discover_inputs(tmp_path, 0.2, 0.2)
    assert [f.kind for f in frames] == ["image"] and not rejected  # discovery reads no pixels

    from tpnet.core.io import FrameReadError
    from tpnet.inference.inputs import load_frame

    with pytest.raises(FrameReadError, match=r"shot\.png: .*colou?r.*profile"):
        load_frame(frames[0])
