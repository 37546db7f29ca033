"""tpnet-infer on sweeps (issue #17): NIfTI, NRRD, multi-frame DICOM and contract volume rows are analysed
slice by slice and reported as 3-D trigger points (detections_3d.csv, a NIfTI label volume, the report's sweep
section); a 2.5-D model reads each slice's neighbours; sweeps that cannot be read are named with the reason."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from model_files import BACKGROUND, CLASSES, NODULE, VESSEL, make_model_file
from tpnet.core.volume_io import read_volume_mask
from tpnet.data.synth_sweeps import _write_dicom, _write_nifti, _write_nrrd
from tpnet.inference.cli import main
from tpnet.inference.sweep_run import DETECTIONS_3D_COLUMNS

PIXEL_MM, SLICE_MM = 0.2, 0.5
SHAPE = (24, 64, 64)  # slices, rows, columns: 12 x 12.8 x 12.8 mm
BALL = (6.4, 5.0, 6.0, 2.0)  # x, y, z centre and radius, mm
VESSEL_X_MM = 11.0  # a vessel along the sweep at this column, depth 5 mm, radius 1 mm


def sweep_volume() -> tuple[np.ndarray, int]:
    """uint8 B-mode sweep with a dark ball (an active TrP for the blob detector) and a bright tube (a vessel);
    the ball's voxel count."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    z, y, x = z * SLICE_MM, y * PIXEL_MM, x * PIXEL_MM
    grey = np.full(SHAPE, BACKGROUND, np.float32)
    ball = (x - BALL[0]) ** 2 + (y - BALL[1]) ** 2 + (z - BALL[2]) ** 2 <= BALL[3] ** 2
    grey[ball] = NODULE
    grey[(x - VESSEL_X_MM) ** 2 + (y - 5.0) ** 2 <= 1.0] = VESSEL
    return np.round(grey * 255).astype(np.uint8), int(ball.sum())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"), channels=("bmode",))


def _detections_3d(out: Path) -> list[dict]:
    with (out / "detections_3d.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == DETECTIONS_3D_COLUMNS
        return list(reader)


def _infer(model: Path, folder: Path, out: Path, *extra: str) -> int:
    return main(
        ["--model", str(model), "--input", str(folder), "--output", str(out), "--batch-size", "4", *extra]
    )


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "dicom"])
def test_a_sweep_in_each_format_gives_one_3d_trigger_point_of_the_balls_volume(tmp_path, model_path, fmt):
    volume, voxels = sweep_volume()
    folder = tmp_path / "in"
    folder.mkdir()
    name = {"nifti": "sweep.nii.gz", "nrrd": "sweep.nrrd", "dicom": "sweep.dcm"}[fmt]
    if fmt == "dicom":
        _write_dicom(folder / name, volume, PIXEL_MM, SLICE_MM, "sweep", "s1", 0)
    else:
        {"nifti": _write_nifti, "nrrd": _write_nrrd}[fmt](folder / name, volume, PIXEL_MM, SLICE_MM)
    out = tmp_path / "out"

    assert _infer(model_path, folder, out) == 0

    rows = _detections_3d(out)
    assert len(rows) == 1, rows
    trp = rows[0]
    assert trp["sweep"] == "sweep" and trp["class"] == "indeterminate"  # not validated to tell active/latent
    x, y, z = (float(trp[k]) for k in ("x_mm", "y_mm", "z_mm"))
    assert math.dist((x, y, z), BALL[:3]) < 0.3
    voxel_mm3 = PIXEL_MM * PIXEL_MM * SLICE_MM
    assert float(trp["volume_mm3"]) == pytest.approx(voxels * voxel_mm3, rel=0.05)
    assert float(trp["extent_along_sweep_mm"]) == pytest.approx(2 * BALL[3] + SLICE_MM, abs=SLICE_MM)
    # Vessel wall at x = 10 mm, the ball's edge at 8.4 mm: 1.6 mm apart (voxel centres: within a voxel).
    assert float(trp["nearest_critical_mm"]) == pytest.approx(VESSEL_X_MM - 1.0 - BALL[0] - BALL[3], abs=0.3)

    mask = read_volume_mask(out / "masks" / "sweep.nii.gz")
    assert mask.voxels.shape == SHAPE
    assert mask.spacing_mm == pytest.approx((SLICE_MM, PIXEL_MM, PIXEL_MM))
    assert abs(int((mask.voxels == CLASSES.index("active_trp")).sum()) - voxels) <= 0.05 * voxels
    assert not list((out / "masks").glob("*.png"))  # one label volume, not a PNG per slice
    report = (out / "report.html").read_text()
    assert "sweep" in report and "overlays/sweep_projection.png" in report
    assert 'href="#sweep-sweep"' in report and "slice 3</a>" not in report  # one row per sweep, linked
    assert (out / "overlays" / "sweep_projection.png").is_file()
    assert (out / "overlays" / "sweep_trp1_along.png").is_file()


def test_a_2_5d_model_reads_each_slices_neighbours_and_finds_the_same_trigger_point(tmp_path):
    model = make_model_file(tmp_path / "model", channels=("bmode",), context_slices=2)
    volume, voxels = sweep_volume()
    folder = tmp_path / "in"
    folder.mkdir()
    _write_nifti(folder / "sweep.nii", volume, PIXEL_MM, SLICE_MM)
    _write_nifti(folder / "frame_like.nii", volume[:1], PIXEL_MM, SLICE_MM)  # a one-slice "sweep"
    out = tmp_path / "out"

    assert _infer(model, folder, out) == 0
    rows = [r for r in _detections_3d(out) if r["sweep"] == "sweep"]
    assert len(rows) == 1
    assert float(rows[0]["volume_mm3"]) == pytest.approx(voxels * PIXEL_MM * PIXEL_MM * SLICE_MM, rel=0.05)


def test_a_2_5d_model_refuses_single_frames_naming_them(tmp_path):
    from tpnet.core.io import write_png

    model = make_model_file(tmp_path / "model", channels=("bmode",), context_slices=1)
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "still_bmode.png", np.full((32, 32), 150, np.uint8))
    (folder / "still.json").write_text('{"spacing_mm": 0.2}')
    out = tmp_path / "out"
    _infer(model, folder, out)
    frames = (out / "frames.csv").read_text()
    assert "neighbouring slice" in frames and "not single frames" in frames


def _dataset(root: Path, volume: np.ndarray, slice_spacing: str) -> Path:
    (root / "sweeps").mkdir(parents=True)
    np.save(root / "sweeps" / "a.npy", volume)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"contract_version": 2, "classes": list(CLASSES)}))
    (root / "manifest.csv").write_text(
        "sample_id,subject_id,kind,bmode,spacing_mm,slice_spacing_mm\n"
        f"a,s1,volume,sweeps/a.npy,{PIXEL_MM},{slice_spacing}\n"
    )
    return root


def test_a_contract_volume_row_is_analysed_with_its_manifest_spacing(tmp_path, model_path):
    volume, voxels = sweep_volume()
    root = _dataset(tmp_path / "set", volume, str(SLICE_MM))
    assert _infer(model_path, root, tmp_path / "out") == 0
    rows = _detections_3d(tmp_path / "out")
    assert len(rows) == 1 and rows[0]["subject_id"] == "s1"
    assert float(rows[0]["z_mm"]) == pytest.approx(BALL[2], abs=0.3)


def test_a_volume_row_without_slice_spacing_is_rejected_with_its_reason(tmp_path, model_path, capsys):
    volume, _ = sweep_volume()
    root = _dataset(tmp_path / "set", volume, "")
    code = _infer(model_path, root, tmp_path / "out")
    printed = capsys.readouterr().out
    assert code != 0
    assert "REJECTED a:" in printed and "spacing" in printed


def test_a_run_stopped_mid_sweep_resumes_to_the_uninterrupted_results(tmp_path, model_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tpnet.inference.progress import PROGRESS_NAME

    volume, _ = sweep_volume()
    folder = tmp_path / "in"
    folder.mkdir()
    short = volume[6:18]  # 12 slices through the ball
    _write_nifti(folder / "a.nii", short, PIXEL_MM, SLICE_MM)
    _write_nifti(folder / "b.nii", short[:, :, ::-1], PIXEL_MM, SLICE_MM)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _infer(model_path, folder, straight) == 0

    def journalled() -> int:
        try:
            return len((stopped / PROGRESS_NAME).read_text().splitlines()) - 1
        except OSError:
            return 0

    env = {**os.environ, "TPNET_TEST_INFER_FRAME_DELAY_S": "0.3"}
    command = [sys.executable, "-m", "tpnet.inference.cli", "--model", str(model_path), "--input", str(folder),
               "--output", str(stopped), "--batch-size", "1", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while journalled() < len(short) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # sweep a is written and journalled: stop inside sweep b
        time.sleep(0.6)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert journalled() == len(short)  # sweep b's slices are not journalled before sweep b is written
    assert not (stopped / "masks" / "b.nii.gz").exists()  # nor its half-written label volume published

    assert _infer(model_path, folder, stopped, "--resume") == 0
    assert (stopped / "detections_3d.csv").read_text() == (straight / "detections_3d.csv").read_text()
    for sweep in ("a", "b"):
        again = read_volume_mask(stopped / "masks" / f"{sweep}.nii.gz").voxels
        np.testing.assert_array_equal(again, read_volume_mask(straight / "masks" / f"{sweep}.nii.gz").voxels)
