"""The dataset fingerprint: structure sizes in mm from connected components, frame sizes, B-mode statistics of
the imaged region, SWE presence; datasets without trigger points, DICOM rows, and a broken file named."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import write_us_dicom
from tpnet.core.contract import load_manifest, load_spec
from tpnet.planning.fingerprint import FingerprintError, dataset_fingerprint

SPACING_MM = 0.1


def write_dataset(root: Path, classes: list[str], frames: list[dict], spacing_mm: float = SPACING_MM) -> Path:
    """frames: dicts with "bmode" (float [0, 1] or a DICOM path relative to root), "mask", optional "elasto_kpa",
    "subject"; a plain contract dataset written with cv2/numpy."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(
        f"name: crafted\nclasses: [{', '.join(classes)}]\nspacing_mm: {spacing_mm}\n"
    )
    lines = ["sample_id,subject_id,bmode,elasto,mask"]
    for i, frame in enumerate(frames):
        bmode = frame["bmode"]
        if isinstance(bmode, np.ndarray):
            cv2.imwrite(str(root / f"b{i}.png"), np.round(bmode * 255).astype(np.uint8))
            bmode = f"b{i}.png"
        cv2.imwrite(str(root / f"m{i}.png"), frame["mask"].astype(np.uint8))
        elasto = ""
        if frame.get("elasto_kpa") is not None:
            np.save(root / f"e{i}.npy", frame["elasto_kpa"].astype(np.float32))
            elasto = f"e{i}.npy"
        lines.append(f"f{i},{frame.get('subject', f's{i}')},{bmode},{elasto},m{i}.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def fingerprint(root: Path, workers: int = 2):
    return dataset_fingerprint(load_spec(root), load_manifest(root), workers=workers)


def test_an_ellipse_and_a_thin_band_are_measured_in_mm(tmp_path):
    mask = np.zeros((80, 120), np.uint8)
    cv2.ellipse(mask, (40, 40), (20, 6), 0, 0, 360, 1, -1)  # 41 x 13 px: 4.1 x 1.3 mm
    yy, xx = np.mgrid[:80, :120]
    ring = np.hypot(yy - 75, xx - 80) - 27
    mask[(ring >= 0) & (ring < 3) & (yy < 75)] = 2  # a curved band 3 px (0.3 mm) thick, 9 mm long
    bmode = np.full(mask.shape, 0.4, np.float32)
    bmode[:, :10] = 0.0  # outside the imaged region: not in the statistics
    bmode[mask == 1] = 0.1
    root = write_dataset(
        tmp_path / "ds", ["background", "active_trp", "aponeurosis"], [{"bmode": bmode, "mask": mask}]
    )
    fp = fingerprint(root)
    (frame,) = fp.frames
    assert frame.shape_px == (80, 120) and frame.shape_mm == pytest.approx((8.0, 12.0))
    assert frame.spacing_mm == SPACING_MM and not frame.has_swe
    trp = [s for s in frame.structures if s.class_name == "active_trp"]
    band = [s for s in frame.structures if s.class_name == "aponeurosis"]
    assert len(trp) == 1 and len(band) == 1
    assert trp[0].minor_mm == pytest.approx(1.3, abs=0.1) and trp[0].major_mm == pytest.approx(4.1, rel=0.1)
    assert trp[0].area_mm2 == pytest.approx(np.pi * 2.05 * 0.65, rel=0.1)
    # Second moments would measure the bend (several mm); the inscribed radius measures the band.
    assert band[0].minor_mm == pytest.approx(0.3, abs=0.06) and band[0].major_mm > 3.0
    imaged = bmode[bmode > 0]
    assert frame.bmode_mean == pytest.approx(float(np.round(imaged * 255).mean() / 255), abs=1e-3)
    assert frame.imaged_fraction == pytest.approx(110 / 120)
    assert fp.foreground_bmode["mean"] == pytest.approx(
        float(np.round(bmode[mask > 0] * 255).mean() / 255), abs=0.01
    )


def test_summary_percentiles_swe_and_a_dataset_without_trigger_points(tmp_path):
    frames = []
    for i, thickness in enumerate((2, 3, 4, 5)):
        mask = np.zeros((64, 96), np.uint8)
        mask[20 + i : 20 + i + thickness, 5:90] = 1  # 0.4 to 1.0 mm thick, 17 mm long
        frames.append({"bmode": np.full(mask.shape, 0.5, np.float32), "mask": mask,
                       "elasto_kpa": np.full(mask.shape, 20.0) if i % 2 else None, "subject": f"s{i // 2}"})  # fmt: skip
    root = write_dataset(tmp_path / "apo", ["background", "aponeurosis"], frames, spacing_mm=0.2)
    fp = fingerprint(root)
    summary = fp.summary()
    assert summary["n_frames"] == 4 and summary["n_subjects"] == 2 and summary["swe_fraction"] == 0.5
    assert summary["spacing_mm"]["median"] == 0.2 and summary["frame_mm"] == {
        "median_height": 12.8,
        "median_width": 19.2,
    }
    bands = summary["structures"]["aponeurosis"]
    assert bands["n_structures"] == 4 and 0.3 <= bands["minor_mm_p10"] <= 0.6 and bands["major_mm_p90"] > 15
    assert summary["structures"]["all"]["n_structures"] == 4


def test_dicom_rows_are_read_through_the_contract_with_the_files_pixel_size(tmp_path):
    root = tmp_path / "dcm"
    root.mkdir()
    # 24 x 32 frame, image region x 4..28, y 2..20 (18 x 24 px), 0.2 mm pixels from the ultrasound region.
    write_us_dicom(root / "a.dcm", region=(4, 2, 28, 20), delta_cm=(0.02, 0.02))
    mask = np.zeros((24, 32), np.uint8)
    mask[8:14, 10:20] = 1  # full-frame-sized mask: cropped like the B-mode
    frames = [{"bmode": "a.dcm", "mask": mask}]
    write_dataset(root, ["background", "active_trp", "latent_trp", "vessel"], frames, spacing_mm=0.5)
    (frame,) = fingerprint(root).frames
    assert frame.spacing_mm == pytest.approx(0.2)  # the file's calibration wins over dataset.yaml
    assert frame.shape_px == (18, 24)
    (structure,) = frame.structures
    assert structure.area_mm2 == pytest.approx(60 * 0.04)


def test_a_broken_file_is_named(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    root = write_dataset(
        tmp_path / "bad", ["background", "active_trp"], [{"bmode": np.ones((16, 16)) * 0.5, "mask": mask}]
    )
    (root / "b0.png").write_bytes(b"not a png")
    with pytest.raises(FingerprintError, match="b0.png"):
        fingerprint(root)


def test_threads_give_the_same_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        mask = np.zeros((48, 48), np.uint8)
        cv2.circle(mask, (int(rng.integers(10, 38)), 24), int(rng.integers(3, 8)), 1, -1)
        frames.append({"bmode": rng.random((48, 48)).astype(np.float32), "mask": mask})
    root = write_dataset(tmp_path / "ds", ["background", "active_trp"], frames)
    assert fingerprint(root, workers=1) == fingerprint(root, workers=4)
