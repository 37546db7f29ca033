from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from model_files import CLASSES, blob_frame, make_model_file, separable
from tpnet.core.io import read_array, write_npy, write_png, write_tiff
from tpnet.core.overlay import MIN_IMAGE_SIDE_PX
from tpnet.inference.cli import CSV_COLUMNS, LOCK_NAME, OUTPUT_MARKER, main

ACTIVE, LATENT, VESSEL = (CLASSES.index(n) for n in ("active_trp", "latent_trp", "vessel"))
BROKEN = {"trunc_bmode.png", "zero_bmode.png", "text_bmode.png", "mismatch_bmode.png", "orphan_elasto.tif"}


def _separable_with_guidance(meta):
    """The blob detector gives every background pixel ~0.11 vessel probability (logits 0 against -2), which the
    default critical_prob_threshold (0.1) rightly reads as "a vessel may be anywhere": its model file carries a
    guidance setting of 0.25 instead (and so tests that guidance settings travel in the file)."""
    separable(meta)  # reports classes
    meta["guidance"] = {"critical_prob_threshold": 0.25}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"), edit_meta=_separable_with_guidance)


def _write_pair(folder, stem, bmode, kpa=None, spacing_mm=None, bmode_format="png"):
    if bmode_format == "png":
        write_png(folder / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
    else:
        write_npy(folder / f"{stem}_bmode.npy", bmode)
    if kpa is not None:
        write_tiff(folder / f"{stem}_elasto.tif", kpa)
    if spacing_mm is not None:
        (folder / f"{stem}.json").write_text(json.dumps({"spacing_mm": spacing_mm}))


def _good_frames(folder):
    """Frames of three sizes and spacings; returns {stem: expected [(class, x_mm, y_mm)]}."""
    scene = blob_frame(
        (12.8, 12.8), 0.2, nodules=[(3.0, 3.0, 1.5)], vessels=[(9.0, 9.0, 1.2)],
        stiff_nodules=[(9.0, 3.0, 1.2)], swe_box_mm=(6.0, 0.4, 12.0, 6.0),
    )  # fmt: skip
    _write_pair(folder, "scene", *scene, spacing_mm=0.2)
    wide = blob_frame((8.0, 16.0), 0.25, nodules=[(12.0, 4.0, 1.5)])[0]  # B-mode only
    _write_pair(folder, "wide", wide, spacing_mm=0.25, bmode_format="npy")
    fine = blob_frame((7.2, 9.6), 0.15, nodules=[(4.0, 3.5, 1.5)], swe_box_mm=(0.0, 0.0, 9.6, 7.2))
    _write_pair(folder, "fine", *fine, spacing_mm=0.15)
    return {
        "scene": [("active_trp", 3.0, 3.0), ("latent_trp", 9.0, 3.0)],
        "wide": [("active_trp", 12.0, 4.0)],
        "fine": [("active_trp", 4.0, 3.5)],
    }


def _broken_frames(folder):
    ok = np.full((40, 40), 0.6, np.float32)
    _write_pair(folder, "trunc", ok, spacing_mm=0.2)
    data = (folder / "trunc_bmode.png").read_bytes()
    (folder / "trunc_bmode.png").write_bytes(data[: len(data) // 2])
    (folder / "zero_bmode.png").write_bytes(b"")
    (folder / "text_bmode.png").write_text("patient list, not an image\n")
    _write_pair(folder, "mismatch", ok, np.full((20, 40), 30.0, np.float32), spacing_mm=0.2)
    write_tiff(folder / "orphan_elasto.tif", np.full((40, 40), 30.0, np.float32))


def _read_csv(path):
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def _components(mask, label):
    n, _, stats, centroids = cv2.connectedComponentsWithStats(
        (mask == label).astype(np.uint8), connectivity=8
    )
    return [(centroids[i], stats[i, cv2.CC_STAT_AREA]) for i in range(1, n)]


def test_mixed_folder_end_to_end(tmp_path, model_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    expected = _good_frames(in_dir)
    _broken_frames(in_dir)

    code = main(
        ["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir), "--batch-size", "2",
         "--min-clearance-mm", "6"]
    )  # fmt: skip

    assert code == 3
    stdout = capsys.readouterr().out
    for name in BROKEN:
        assert f"REJECTED {name}" in stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    assert {r["name"] for r in summary["rejected"]} == BROKEN
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert "zero-byte" in reasons["zero_bmode.png"] and "truncated" in reasons["trunc_bmode.png"]
    assert "not a PNG" in reasons["text_bmode.png"] and "mismatch_elasto.tif" in reasons["mismatch_bmode.png"]
    assert summary["counts"] == {"frames_found": 8, "frames_processed": 3, "frames_rejected": 5}
    assert summary["trp_by_class"] == {"active_trp": 3, "latent_trp": 1}
    assert summary["model"]["meta"]["model_name"] == "blob_detector"
    assert summary["timing"]["total_s"] > 0

    rows = _read_csv(out_dir / "detections.csv")
    for stem, spacing in (("scene", 0.2), ("wide", 0.25), ("fine", 0.15)):
        bmode = read_array(in_dir / f"{stem}_bmode.{'npy' if stem == 'wide' else 'png'}")
        mask = read_array(out_dir / "masks" / f"{stem}.png")
        overlay = read_array(out_dir / "overlays" / f"{stem}.png")
        # Masks at the input's own size; the overlay larger: upscaled to a legible size, with margins.
        assert mask.shape == bmode.shape and overlay.ndim == 3 and overlay.shape[2] == 3
        assert min(overlay.shape[:2]) >= max(min(bmode.shape), MIN_IMAGE_SIDE_PX)
        frame_rows = [r for r in rows if r["stem"] == stem]
        # Every CSV row is a component of the written label map, at centroid * the frame's spacing.
        trp_components = _components(mask, ACTIVE) + _components(mask, LATENT)
        assert len(frame_rows) == len(trp_components)
        for row in frame_rows:
            label = CLASSES.index(row["class"])
            centroids = np.array([c for c, _ in _components(mask, label)])
            xy_px = np.array([float(row["x_px"]), float(row["y_px"])])
            nearest = centroids[np.argmin(np.linalg.norm(centroids - xy_px, axis=1))]
            assert np.allclose(nearest, xy_px, atol=0.01)
            assert float(row["x_mm"]) == pytest.approx(nearest[0] * spacing, abs=1e-3)
            assert float(row["y_mm"]) == pytest.approx(nearest[1] * spacing, abs=1e-3)
        # ... and the detections are where the scene put them.
        found = sorted((r["class"], float(r["x_mm"]), float(r["y_mm"])) for r in frame_rows)
        assert [f[0] for f in found] == sorted(e[0] for e in expected[stem])
        for (_, x, y), (_, ex, ey) in zip(found, sorted(expected[stem]), strict=True):
            assert abs(x - ex) < 0.3 and abs(y - ey) < 0.3
    scene = {r["class"]: r for r in rows if r["stem"] == "scene"}
    assert float(scene["latent_trp"]["stiffness_kpa_mean"]) == pytest.approx(150.0, abs=1.0)
    assert scene["active_trp"]["stiffness_kpa_mean"] == ""  # outside the SWE box: no value, not 0
    assert float(scene["active_trp"]["nearest_vessel_mm"]) == pytest.approx(np.hypot(6.0, 6.0) - 1.2, abs=0.3)
    assert (_components(read_array(out_dir / "masks" / "scene.png"), VESSEL)[0][1]) > 50
    # Needle paths (issue #16): no skin echo in these flat frames, so they enter at the top row. Both scene
    # TrPs lie above the vessel and their paths climb away from it: the clearance is the centroid's distance to
    # the vessel (less the soft rim the probability rule adds), 7.3 mm for the active one, 4.8 mm for the latent
    # one, which --min-clearance-mm 6 calls unsafe.
    guidance = summary["settings"]["guidance"]
    assert (guidance["min_clearance_mm"], guidance["critical_prob_threshold"]) == (6.0, 0.25)  # flag, file
    for name, safe, radius_mm in (("active_trp", "yes", 1.5), ("latent_trp", "no", 1.2)):
        row = scene[name]
        vessel_mm = float(row["nearest_vessel_mm"])
        assert row["path_safe"] == safe and row["needle_side"] in ("left", "right")
        assert vessel_mm - 0.6 <= float(row["needle_clearance_mm"]) <= vessel_mm + 1e-3
        rim_mm = vessel_mm - radius_mm  # nearest_critical_mm runs from the TrP's rim
        assert float(row["nearest_critical_mm"]) == pytest.approx(rim_mm, abs=0.4)
        assert row["nearest_nerve_mm"] == ""  # no nerve class in this model
        rise = float(row["y_px"]) - float(row["needle_entry_y_px"])
        run = abs(float(row["x_px"]) - float(row["needle_entry_x_px"]))
        assert float(row["needle_entry_y_px"]) == 0.0
        assert math.degrees(math.atan2(rise, run)) == pytest.approx(float(row["needle_angle_deg"]), abs=0.1)
        assert float(row["needle_depth_mm"]) == pytest.approx(math.hypot(rise, run) * 0.2, abs=2e-3)

    page = (out_dir / "report.html").read_text()
    assert page.count('<section class="frame">') == 3
    assert page.count('<tr class="needle') == 4 and page.count('<tr class="needle unsafe">') == 1
    assert "UNSAFE: passes 4." in page and "under 6 mm" in page
    assert 'src="overlays/scene.png"' in page
    for name in BROKEN:
        assert name in page
    assert "<script" not in page and not list(out_dir.glob(".*"))  # no temporary files left behind


def test_same_anatomy_at_half_spacing_gives_same_mm(tmp_path, model_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    discs = {"nodules": [(3.1, 4.3, 1.4), (9.0, 8.7, 1.8)], "vessels": [(9.0, 3.0, 1.0)]}
    _write_pair(in_dir, "coarse", blob_frame((12.8, 12.8), 0.2, **discs)[0], spacing_mm=0.2)
    _write_pair(in_dir, "fine", blob_frame((12.8, 12.8), 0.1, **discs)[0], spacing_mm=0.1)

    assert main(["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir)]) == 0

    rows = _read_csv(out_dir / "detections.csv")
    coarse = [r for r in rows if r["stem"] == "coarse"]
    fine = [r for r in rows if r["stem"] == "fine"]
    assert len(coarse) == len(fine) == 2
    assert read_array(out_dir / "masks" / "fine.png").shape == (128, 128)
    for a, b in zip(coarse, fine, strict=True):
        for key in ("x_mm", "y_mm", "nearest_vessel_mm"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=0.25), key  # about a model pixel
        assert float(a["area_mm2"]) == pytest.approx(float(b["area_mm2"]), rel=0.15)


def test_all_good_folder_exits_0_and_tta_runs(tmp_path, model_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _write_pair(in_dir, "one", blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0])  # no sidecar

    code = main(["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir), "--tta"])

    assert code == 0
    assert "REJECTED" not in capsys.readouterr().out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["rejected"] == [] and summary["settings"]["tta"] is True
    # No pixel size anywhere: flagged, and the mm columns stay empty rather than filled from an assumption.
    no_size, no_reference = summary["warnings"]  # and an old model without a training-input reference:
    assert "no pixel size" in no_size and "no training-input reference" in no_reference
    (frame_warnings,) = summary["frame_warnings"]  # the frame's own named warnings
    assert [w["code"] for w in frame_warnings["warnings"]] == ["missing_modality", "pixel_size_assumed"]
    assert summary["warning_counts"] == {"missing_modality": 1, "pixel_size_assumed": 1}
    assert summary["frames_without_spacing"] == 1
    assert "UNKNOWN" in (out_dir / "report.html").read_text()
    with (out_dir / "detections.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["x_mm"] == r["y_mm"] == r["area_mm2"] == "" and r["x_px"] for r in rows)
    # The path is planned (angles need no scale), but its mm figures and the safety call (a margin in mm) are not.
    for r in rows:
        assert r["needle_side"] and r["needle_clearance_mm"] == r["needle_depth_mm"] == r["path_safe"] == ""
    with (out_dir / "frames.csv").open(newline="") as fh:
        (frame,) = list(csv.DictReader(fh))
    assert (frame["stem"], frame["spacing_mm"], frame["spacing_source"]) == ("one", "", "unknown")


def test_refuses_unsafe_or_non_empty_output(tmp_path, model_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    _write_pair(in_dir, "one", blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0], spacing_mm=0.2)
    args = ["--model", str(model_path), "--input", str(in_dir), "--output"]

    assert main([*args, str(in_dir / "results")]) == 2
    assert "inside" in capsys.readouterr().err
    assert not (in_dir / "results").exists()
    assert main([*args, str(in_dir)]) == 2
    assert (
        main(["--model", str(model_path), "--input", str(in_dir), "--output", str(tmp_path)]) == 2
    )  # IN in OUT

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("earlier work")
    assert main([*args, str(out_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]

    (out_dir / OUTPUT_MARKER).write_text("{}")  # an earlier tpnet-infer run's folder: --overwrite may replace
    write_png(out_dir / "masks" / "stale.png", np.zeros((4, 4), np.uint8))  # from an earlier run
    assert main([*args, str(out_dir), "--overwrite"]) == 0
    assert sorted(p.name for p in (out_dir / "masks").iterdir()) == ["one.png"]
    assert (out_dir / "keep.txt").exists()  # only our own outputs are replaced


def test_one_run_per_output_folder_and_stale_locks_are_taken_over(tmp_path, model_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _write_pair(in_dir, "one", blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0], spacing_mm=0.2)
    args = ["--model", str(model_path), "--input", str(in_dir), "--output", str(out_dir), "--overwrite"]
    assert main(args) == 0
    assert not (out_dir / LOCK_NAME).exists()  # released at the end
    first_csv = (out_dir / "detections.csv").read_text()

    # Another run holds the folder's OS lock (filelock), as a live tpnet-infer would.
    owner = (
        "import sys, time; from pathlib import Path; from tpnet.core.run_lock import lock_folder; "
        "lock_folder(Path(sys.argv[1]), sys.argv[2], 'tpnet-infer', 'x'); print('locked', flush=True); "
        "time.sleep(60)"
    )
    running = subprocess.Popen(
        [sys.executable, "-c", owner, str(out_dir), LOCK_NAME], stdout=subprocess.PIPE, text=True
    )
    try:
        assert running.stdout.readline().strip() == "locked"
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"process {running.pid}" in err and "another tpnet-infer" in err
        assert (out_dir / "detections.csv").read_text() == first_csv  # its files were left alone
    finally:
        running.kill()  # SIGKILL: no clean-up runs, the kernel drops its lock, the file stays
        running.wait()

    # The owner is gone (killed run): its lock file is left, the next run takes over.
    assert (out_dir / LOCK_NAME).exists()
    assert main(args) == 0
    assert not (out_dir / LOCK_NAME).exists()


def test_unusable_model_or_empty_input_exits_2(tmp_path, model_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bad_model = make_model_file(tmp_path / "bad", edit_meta=lambda meta: meta.update(format_version=99))
    args = ["--input", str(in_dir), "--output", str(tmp_path / "out")]

    assert main(["--model", str(bad_model), *args]) == 2
    err = capsys.readouterr().err
    assert "unusable model" in err and str(bad_model) in err

    assert main(["--model", str(model_path), *args]) == 2  # nothing to analyse
    assert "no frames found" in capsys.readouterr().err
    assert main(["--model", str(model_path), *args, "--batch-size", "0"]) == 2
    assert not (tmp_path / "out").exists()
