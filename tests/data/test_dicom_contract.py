"""DICOM rows in a contract dataset (issue #11): the real scanner files pydicom ships pass ``tpnet-data check``
and load in training; broken DICOM is named with its reason; the ``frame`` column; the pixel-size precedence
(manifest > file > dataset.yaml); the ultrasound image region crop, with masks of either size."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from dicom_files import (
    default_pixels,
    philips_palette_path,
    sonosite_cine_path,
    write_dicom_needing_missing_decoder,
    write_dicom_without_pixels,
    write_not_dicom,
    write_truncated_dicom,
    write_undecodable_dicom,
    write_us_dicom,
)
from tpnet.core.contract import ContractError, load_manifest, load_spec, parse_row, row_spacing_mm
from tpnet.core.contract_frames import row_spacing
from tpnet.core.encoding import Encoding
from tpnet.core.io import write_png
from tpnet.data.check import check_dataset
from tpnet.data.dataset import FullFrameDataset, TrainPatchDataset, frame_spacing_mm, load_frame
from train_helpers import run_train

SONOSITE_MM = 0.5104970559477806  # PhysicalDeltaX 0.05104970559477806 cm in its ultrasound region
PHILIPS_MM = 0.26228787661969977
# write_us_dicom's default frame is 24 x 32 (rows x columns); this region leaves an 18 x 24 image.
REGION = (4, 2, 28, 20)  # x0, y0, x1, y1 (exclusive)
REGION_HW = (18, 24)


def write_dataset(root: Path, rows: list[str], yaml: str = "name: t\n", header: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml)
    columns = header or "sample_id,subject_id,bmode,mask,spacing_mm,frame"
    (root / "manifest.csv").write_text("\n".join([columns, *rows]) + "\n")
    return root


def errors_by_sample(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for problem in check_dataset(root, workers=2).errors:
        out.setdefault(problem.where, []).append(problem.reason)
    return out


def blob_mask(shape: tuple[int, int], centre: tuple[int, int], label: int, radius: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, label, -1)
    return mask


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SonoSite cine (three of its 30 frames by the frame column) and the Philips palette frame, with
    masks of the full frame (cine) and of the image region (Philips)."""
    root = tmp_path_factory.mktemp("real") / "ds"
    (root / "dicom").mkdir(parents=True)
    shutil.copy(sonosite_cine_path(), root / "dicom" / "cine.dcm")
    shutil.copy(philips_palette_path(), root / "dicom" / "philips.dcm")
    # Region boxes as the reader clips them: cine (84, 31, 320, 240) of 320x240, Philips (120, 60, 800, 350).
    write_png(root / "cine_mask.png", blob_mask((240, 320), (200, 120), 1, 8))
    write_png(root / "philips_mask.png", blob_mask((290, 680), (300, 150), 2, 10))
    rows = [f"cine_f{f:04d},p1,dicom/cine.dcm,cine_mask.png,,{f}" for f in (0, 7, 29)]
    rows.append("philips,p2,dicom/philips.dcm,philips_mask.png,,")
    return write_dataset(root, rows)


def test_real_scanner_files_pass_check_with_the_files_pixel_size(real_root: Path) -> None:
    report = check_dataset(real_root, workers=2)
    assert report.ok, [str(p) for p in report.errors]
    assert report.summary["frames_usable"] == 4 and report.summary["frames_labelled"] == 4
    assert report.summary["trp_count"] == {"active_trp": 3, "latent_trp": 1}
    # The clipped-region note is said once per file, not once per frame row.
    notes = [p for p in report.warnings if "reaches beyond" in p.reason]
    assert [p.where for p in notes] == ["cine_f0000", "philips"]
    assert "(and 2 more row(s) of this file)" in notes[0].reason
    spec = load_spec(real_root)
    rows = load_manifest(real_root)
    assert [r.frame for r in rows] == [0, 7, 29, None]
    assert [row_spacing(real_root, r, spec) for r in (rows[0], rows[3])] == [
        (pytest.approx(SONOSITE_MM), "DICOM ultrasound region"),
        (pytest.approx(PHILIPS_MM), "DICOM ultrasound region"),
    ]
    assert frame_spacing_mm(spec, rows[1]) == pytest.approx(SONOSITE_MM)  # what training resamples from


def test_real_scanner_files_load_in_training(real_root: Path) -> None:
    spec = load_spec(real_root)
    rows = load_manifest(real_root)
    # At the files' own pixel size nothing is resampled: the network sees exactly the image region.
    frames = [load_frame(spec, row, frame_spacing_mm(spec, row)) for row in rows]
    assert [f.bmode.shape for f in frames] == [(209, 236)] * 3 + [(290, 680)]
    assert all(f.mask.shape == f.bmode.shape and f.bmode.dtype == np.float32 for f in frames)
    assert not np.array_equal(frames[0].bmode, frames[2].bmode)  # the frame column picks different frames
    assert np.unique(frames[0].mask).tolist() == [0, 1] and np.unique(frames[3].mask).tolist() == [0, 2]

    full = FullFrameDataset(spec, rows, Encoding(), 0.4)
    item = full[0]
    assert item["image"].shape == (3, 267, 301) and item["mask"].shape == (267, 301)
    assert full[3]["image"].shape == (3, 190, 446)
    patches = TrainPatchDataset(spec, rows, Encoding(), 0.4, (32, 48), seed=1)
    for key in ((0, True), (3, True)):
        image, mask = patches[key]
        assert image.shape == (3, 32, 48) and mask.shape == (32, 48) and mask.max() > 0


@pytest.mark.slow
def test_tpnet_train_runs_an_epoch_on_the_real_scanner_files(tmp_path: Path) -> None:
    """Ten frames of the SonoSite cine (one subject each, so tpnet can split) and the Philips frame."""
    root = tmp_path / "ds"
    (root / "dicom").mkdir(parents=True)
    shutil.copy(sonosite_cine_path(), root / "dicom" / "cine.dcm")
    shutil.copy(philips_palette_path(), root / "dicom" / "philips.dcm")
    write_png(root / "cine_mask.png", blob_mask((240, 320), (200, 120), 1, 8))
    write_png(root / "philips_mask.png", blob_mask((290, 680), (300, 150), 2, 10))
    rows = [f"cine_f{f:04d},c{f},dicom/cine.dcm,cine_mask.png,,{f}" for f in range(0, 30, 3)]
    write_dataset(root, [*rows, "philips,p,dicom/philips.dcm,philips_mask.png,,"])
    run_dir = tmp_path / "run"
    result = run_train(
        [f"data.root={root}", "data.spacing_mm=0.5", "data.patch_size=[32,32]", "data.batch_size=4",
         "data.num_workers=0", "model.base_width=4", "model.depth=2", "trainer.device=cpu",
         "evaluation.n_boot=20", "trainer.max_epochs=1", "logger.enabled=false", f"hydra.run.dir={run_dir}"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert re.search(r"train \d+/7, val \d+/2, test \d+/2", log), log[-2000:]
    assert "epoch 1/1  train/loss=" in log
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_each_broken_dicom_is_named_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    d = root / "dicom"
    write_truncated_dicom(d / "cut_pixels.dcm", "pixels")
    write_truncated_dicom(d / "cut_header.dcm", "header")
    write_dicom_without_pixels(d / "no_pixels.dcm")
    write_dicom_needing_missing_decoder(d / "jpeg_ls.dcm")
    write_undecodable_dicom(d / "garbage.dcm", frames=2)
    write_not_dicom(d / "report.dcm")
    write_us_dicom(d / "cine.dcm", frames=3, delta_cm=(0.01, 0.01))
    write_us_dicom(d / "uncalibrated.dcm")
    write_us_dicom(d / "IM_0001", delta_cm=(0.01, 0.01))  # a DICOMDIR-style name: DICOM by its content
    rows = [
        "cut_pixels,s1,dicom/cut_pixels.dcm,,0.1,",
        "cut_header,s1,dicom/cut_header.dcm,,0.1,",
        "no_pixels,s1,dicom/no_pixels.dcm,,0.1,",
        "jpeg_ls,s2,dicom/jpeg_ls.dcm,,0.1,",
        "garbage,s2,dicom/garbage.dcm,,0.1,1",
        "report,s2,dicom/report.dcm,,0.1,",
        "out_of_range,s3,dicom/cine.dcm,,,3",
        "no_spacing,s3,dicom/uncalibrated.dcm,,,",
        "missing,s3,dicom/missing.dcm,,,",
        "last_frame,s3,dicom/cine.dcm,,,2",
        "no_suffix,s3,dicom/IM_0001,,,",
    ]
    errors = errors_by_sample(write_dataset(root, rows))
    expected = {
        "cut_pixels": "dicom/cut_pixels.dcm: truncated",
        "cut_header": "dicom/cut_header.dcm: truncated",
        "no_pixels": "dicom/no_pixels.dcm: no pixel data",
        "jpeg_ls": "dicom/jpeg_ls.dcm: transfer syntax JPEG-LS Lossless",
        "garbage": "dicom/garbage.dcm: frame 1 cannot be decoded",
        "report": "dicom/report.dcm: not a DICOM file",
        "out_of_range": "dicom/cine.dcm: frame 3 is out of range; the file has 3 frame(s) (0..2)",
        "no_spacing": "dicom/uncalibrated.dcm: no pixel size anywhere",
        "missing": "dicom/missing.dcm: file not found",
    }
    assert sorted(errors) == sorted(expected), errors
    for sample_id, words in expected.items():
        assert len(errors[sample_id]) == 1 and words in errors[sample_id][0], (sample_id, errors[sample_id])
    assert "needs a decoder that is not installed" in errors["jpeg_ls"][0]


def test_frame_column_values(tmp_path: Path) -> None:
    raw = {"sample_id": "a", "subject_id": "s", "bmode": "x.dcm"}
    assert parse_row({**raw, "frame": ""}, 2).frame is None
    assert parse_row({**raw, "frame": "12"}, 2).frame == 12
    for cell, words in (("-1", "negative"), ("1.5", "not a whole number"), ("two", "not a whole number")):
        with pytest.raises(ContractError, match=f"^a: frame .*{words}"):
            parse_row({**raw, "frame": cell}, 2)
    with pytest.raises(ContractError, match="^a: frame 0 given, but bmode x.png is not a DICOM file"):
        parse_row({**raw, "bmode": "x.png", "frame": "0"}, 2)

    root = tmp_path / "ds"
    write_png(root / "b.png", np.zeros((24, 32), np.uint8))
    (root / "raw").mkdir()
    (root / "raw" / "scan").write_bytes(cv2.imencode(".png", np.zeros((24, 32), np.uint8))[1].tobytes())
    rows = ["png_frame,s1,b.png,,0.1,2", "png,s1,b.png,,0.1,", "nosuffix_frame,s1,raw/scan,,0.1,0"]
    errors = errors_by_sample(write_dataset(root, rows))
    assert sorted(errors) == ["nosuffix_frame", "png_frame"], errors
    assert errors["png_frame"] == [
        "frame 2 given, but bmode b.png is not a DICOM file; the frame column picks one frame of a "
        "multi-frame DICOM (leave it empty for other rows)"
    ]
    assert len(errors["nosuffix_frame"]) == 1
    assert "raw/scan: not a DICOM file, so the manifest's frame 0" in errors["nosuffix_frame"][0]


def test_spacing_precedence_manifest_then_file_then_dataset_yaml(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_us_dicom(root / "region.dcm", delta_cm=(0.05, 0.05), pixel_spacing_mm=0.3)
    write_us_dicom(root / "pixelspacing.dcm", pixel_spacing_mm=0.3)
    write_us_dicom(root / "bare.dcm")
    write_png(root / "b.png", np.zeros((24, 32), np.uint8))
    rows = [
        "manifest_wins,s1,region.dcm,,0.2,",
        "region,s1,region.dcm,,,",
        "pixelspacing,s1,pixelspacing.dcm,,,",
        "yaml_for_bare_dicom,s2,bare.dcm,,,",
        "png_manifest,s2,b.png,,0.25,",
        "png_yaml,s2,b.png,,,",
        "missing_png,s3,absent.png,,,",
    ]
    write_dataset(root, rows, yaml="name: t\nspacing_mm: 0.1\n")
    spec = load_spec(root)
    by_id = {r.sample_id: r for r in load_manifest(root)}
    expected = {
        "manifest_wins": (0.2, "manifest"),
        "region": (0.5, "DICOM ultrasound region"),  # regions before PixelSpacing (0.3), as the issue says
        "pixelspacing": (0.3, "DICOM PixelSpacing"),
        "yaml_for_bare_dicom": (0.1, "dataset.yaml"),
        "png_manifest": (0.25, "manifest"),
        "png_yaml": (0.1, "dataset.yaml"),
        "missing_png": (0.1, "dataset.yaml"),  # a non-DICOM row is never opened to find its spacing
    }
    for sample_id, (mm, source) in expected.items():
        row = by_id[sample_id]
        assert row_spacing(root, row, spec) == (pytest.approx(mm), source), sample_id
        if sample_id != "missing_png":
            assert frame_spacing_mm(spec, row) == pytest.approx(mm), sample_id  # training agrees
    # The file-blind function keeps its meaning: manifest, else dataset.yaml.
    assert (
        row_spacing_mm(by_id["region"], spec) == 0.1 and row_spacing_mm(by_id["manifest_wins"], spec) == 0.2
    )
    # tpnet-data check reads the same precedence: only the missing file is an error, no row lacks a spacing.
    report = check_dataset(root, workers=2)
    assert [(p.where, p.reason) for p in report.errors] == [
        ("missing_png", "bmode absent.png: file not found")
    ]
    assert not [p for p in report.warnings if "no spacing" in p.reason]


def test_region_crop_with_full_size_and_region_size_maps(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_us_dicom(root / "us.dcm", frames=2, region=REGION, delta_cm=(0.02, 0.02))
    x0, y0, x1, y1 = REGION
    full_mask = blob_mask((24, 32), (16, 11), 1, 3)
    full_kpa = np.full((24, 32), np.nan, np.float32)
    full_kpa[5:15, 8:20] = 40.0
    write_png(root / "full_mask.png", full_mask)
    write_png(root / "region_mask.png", full_mask[y0:y1, x0:x1])
    tifffile.imwrite(root / "full_kpa.tif", full_kpa)
    tifffile.imwrite(root / "region_kpa.tif", full_kpa[y0:y1, x0:x1])
    header = "sample_id,subject_id,bmode,elasto,mask,spacing_mm,frame"
    rows = [
        "full,s1,us.dcm,full_kpa.tif,full_mask.png,,1",
        "region,s2,us.dcm,region_kpa.tif,region_mask.png,,1",
    ]
    write_dataset(root, rows, header=header)
    assert check_dataset(root, workers=2).ok
    spec = load_spec(root)
    stored = default_pixels(2, 24, 32)[1].astype(np.float32) / 255.0  # frame 1 as written
    for row in load_manifest(root):
        frame = load_frame(spec, row, 0.2)  # the file's own pixel size: no resampling
        assert frame.bmode.shape == REGION_HW, row.sample_id
        np.testing.assert_allclose(frame.bmode, stored[y0:y1, x0:x1], atol=1e-6)
        np.testing.assert_array_equal(frame.mask, full_mask[y0:y1, x0:x1])
        np.testing.assert_array_equal(frame.elasto_kpa, full_kpa[y0:y1, x0:x1])


def test_map_of_another_size_is_refused_naming_sample_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_us_dicom(root / "us.dcm", region=REGION, delta_cm=(0.02, 0.02))
    write_us_dicom(root / "whole.dcm", delta_cm=(0.02, 0.02))  # no region crop: the frame's size only
    write_png(root / "odd_mask.png", np.zeros((20, 30), np.uint8))
    write_png(root / "region_mask.png", np.zeros(REGION_HW, np.uint8))
    rows = ["odd,s1,us.dcm,odd_mask.png,,", "whole,s2,whole.dcm,region_mask.png,,"]
    write_dataset(root, rows)
    errors = errors_by_sample(root)
    assert errors == {
        "odd": [
            "shape mismatch: mask odd_mask.png 20x30 is neither the DICOM frame's 24x32 nor its image "
            "region's 18x24 (x0, y0, x1, y1 = (4, 2, 28, 20)); give it one of those sizes"
        ],
        "whole": [
            "shape mismatch: bmode 24x32, mask 18x24 (bmode, elasto and mask of one row must have equal H x W)"
        ],
    }
    spec = load_spec(root)
    odd, whole = load_manifest(root)
    with pytest.raises(
        ValueError, match=r"^odd: shape mismatch: mask odd_mask.png 20x30 is neither .* 24x32 "
    ):
        load_frame(spec, odd, 0.2)
    with pytest.raises(ValueError, match=r"^whole: shape mismatch: mask region_mask.png 18x24 differs"):
        load_frame(spec, whole, 0.2)
