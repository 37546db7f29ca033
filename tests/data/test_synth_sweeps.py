"""Synthetic sweeps (issue #17): determinism, anatomy consistent along the sweep, trigger points as fibre-aligned
ellipsoids spanning several slices, tubes, speckle decorrelation, free-hand jitter and dropped frames, and every
file format read back by tpnet.core.volume_io. Tiny sweeps throughout."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.volume_io import read_volume_bmode, read_volume_kpa, read_volume_mask
from tpnet.data.cli import main
from tpnet.data.synth import MUSCLE, VESSEL, Subject, _form_bmode
from tpnet.data.synth_sweeps import (
    FILE_FORMATS,
    MANIFEST_COLUMNS,
    _bmode_from_scatterers,
    _continue,
    generate_sweep,
    speckle_correlation,
    sweep_positions_mm,
    write_sweep_dataset,
)

# 19 x 16 mm frames at 0.2 mm/px: deep enough for the trapezius; 20 slices of 0.5 mm = a 9.5 mm sweep.
SMALL = {"slices": 20, "height": 96, "width": 80}


@pytest.fixture(scope="module")
def sweeps() -> list[dict]:
    return [generate_sweep(4, subject, **SMALL) for subject in range(6)]


def trps_of(sweep: dict) -> list[dict]:
    return [o for o in sweep["objects"] if o["kind"] == "trp"]


def test_same_seed_same_bytes_other_seed_other_sweep() -> None:
    first, again = generate_sweep(2, 1, **SMALL), generate_sweep(2, 1, **SMALL)
    for key in ("bmode", "elasto", "mask", "tissue"):
        assert first[key].tobytes() == again[key].tobytes(), key  # NaN bytes included
    assert first["objects"] == again["objects"]
    other = generate_sweep(3, 1, **SMALL)
    assert not np.array_equal(first["bmode"], other["bmode"])


def test_workers_do_not_change_the_files(tmp_path: Path) -> None:
    settings = {"subjects": 3, "slices": 4, "height": 48, "width": 40, "seed": 5}
    one = write_sweep_dataset(tmp_path / "one", workers=1, **settings)
    two = write_sweep_dataset(tmp_path / "two", workers=2, **settings)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 2 + 3 * 4  # yaml, csv; three volumes and a scene per sweep
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_volumes_have_the_asked_shape_and_types(sweeps: list[dict]) -> None:
    sweep = sweeps[0]
    shape = (SMALL["slices"], SMALL["height"], SMALL["width"])
    assert sweep["bmode"].shape == sweep["elasto"].shape == sweep["mask"].shape == shape
    assert (sweep["bmode"].dtype, sweep["elasto"].dtype, sweep["mask"].dtype) == (
        np.uint8,
        np.float32,
        np.uint8,
    )
    assert set(np.unique(sweep["mask"])) <= set(range(len(DEFAULT_CLASSES)))
    valid = np.isfinite(sweep["elasto"])
    assert 0.1 < valid.mean() < 0.95  # a SWE box, NaN outside it
    assert np.nanmin(sweep["elasto"]) > 0


def test_layers_drift_slowly_along_the_sweep(sweeps: list[dict]) -> None:
    for sweep in sweeps:
        # The trapezius' top, read from the tissue map: the first muscle row of every column, slice by slice.
        top = np.argmax(sweep["tissue"] == MUSCLE, axis=1)  # (Z, W)
        assert np.abs(np.diff(top.astype(int), axis=0)).max() <= 1  # at most a pixel per 0.5 mm slice
        for name in ("trap_top", "trap_bottom", "fascia_top"):
            depth = sweep["boundaries_mm"][name]
            assert np.abs(np.diff(depth, axis=0)).max() < 0.1  # mm per 0.5 mm step
    drift = [np.ptp(s["boundaries_mm"]["trap_top"].mean(axis=1)) for s in sweeps]
    assert max(drift) > 0.02  # they do move: not one frame repeated


def test_trps_are_fibre_aligned_ellipsoids_spanning_several_slices(sweeps: list[dict]) -> None:
    checked = 0
    for sweep in sweeps:
        s, dz = sweep["spacing_mm"], sweep["slice_spacing_mm"]
        for trp in trps_of(sweep):
            x, y, z = trp["centre_mm"]
            row, col = int(y / s), int(x / s)
            labels = sweep["mask"][:, row, col]
            assert (labels == trp["label"]).sum() >= 3  # at least 1.5 mm across the sweep at 0.5 mm slices
            centre_slice = sweep["mask"][int(round(z / dz))]
            _, components = cv2.connectedComponents((centre_slice == trp["label"]).astype(np.uint8))
            ys, xs = np.nonzero(components == components[row, col])
            values, vectors = np.linalg.eigh(np.cov(np.vstack([xs, ys])))
            major = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
            error = abs((major - sweep["fibre_angle_deg"] + 90.0) % 180.0 - 90.0)
            assert error < 15.0, (trp, sweep["fibre_angle_deg"])
            assert math.sqrt(values[1] / values[0]) > 1.5  # elongated (aspect 2-3 drawn)
            semi = trp["semi_axes_mm"]
            assert semi[0] > semi[1] and semi[0] >= semi[2] >= 1.0  # longest along the fibres
            checked += 1
    assert checked >= 4


def test_trps_of_one_band_lie_along_the_fibres() -> None:
    rows = []
    for subject in range(12):
        sweep = generate_sweep(0, subject, slices=12, height=112, width=128)
        by_band: dict[int, list[dict]] = {}
        for trp in trps_of(sweep):
            by_band.setdefault(trp["band"], []).append(trp)
        rows += [band for band in by_band.values() if len(band) > 1]
    assert rows, "no band with two or more nodules in 12 sweeps"
    for band in rows:
        labels = {trp["label"] for trp in band}
        assert len(labels) == 1  # active / latent shared along a band
        step = np.subtract(band[1]["centre_mm"], band[0]["centre_mm"])
        fibre = np.asarray(band[0]["axis_mm"])
        cosine = abs(step @ fibre) / np.linalg.norm(step)
        assert cosine > 0.98  # the second nodule sits further along the fibres (its axis wobbles +/-4 deg)


def test_vessels_and_nerves_are_tubes_through_the_sweep(sweeps: list[dict]) -> None:
    tubes = 0
    for sweep in sweeps:
        for tube in (o for o in sweep["objects"] if o["kind"] in ("vessel", "nerve")):
            per_slice = (sweep["mask"] == tube["label"]).sum(axis=(1, 2))
            assert (per_slice > 0).all()  # seen in every slice
            tubes += 1
        vessel = sweep["mask"] == VESSEL
        if vessel.any() and len([o for o in sweep["objects"] if o["kind"] == "vessel"]) == 1:
            cols = [np.nonzero(v)[1].mean() for v in vessel]
            assert np.abs(np.diff(cols)).max() * sweep["spacing_mm"] < 0.5  # the centre drifts slowly
    assert tubes >= 2


def test_speckle_correlation_model() -> None:
    assert speckle_correlation(0.0, 1.5) == 1.0
    assert speckle_correlation(0.5, 1.5) > speckle_correlation(1.0, 1.5) > speckle_correlation(2.0, 1.5) > 0
    assert speckle_correlation(1.0, 2.0) > speckle_correlation(1.0, 1.0)  # a wider beam: slower decorrelation
    rng = np.random.default_rng(0)
    previous = rng.standard_normal((200, 200)).astype(np.float32)
    rho = speckle_correlation(1.0, 1.5)
    following = _continue(previous, rng.standard_normal((200, 200)).astype(np.float32), rho)
    assert np.corrcoef(previous.ravel(), following.ravel())[0, 1] == pytest.approx(rho, abs=0.02)
    assert following.std() == pytest.approx(1.0, abs=0.02)


def test_neighbouring_slices_decorrelate_with_slice_spacing() -> None:
    """B-mode correlation of neighbouring slices inside the muscle: between 0 and 1, falling as slices part."""
    means = []
    for spacing in (0.25, 1.0, 3.0):
        values = []
        for subject in range(2):
            sweep = generate_sweep(1, subject, slices=6, height=96, width=64, slice_spacing_mm=spacing)
            grey, tissue = sweep["bmode"].astype(float), sweep["tissue"]
            for k in range(len(grey) - 1):
                muscle = (tissue[k] == MUSCLE) & (tissue[k + 1] == MUSCLE)
                values.append(np.corrcoef(grey[k][muscle], grey[k + 1][muscle])[0, 1])
        means.append(float(np.mean(values)))
    assert 0.0 < means[2] < means[1] < means[0] < 1.0, means


def test_bmode_formation_is_synths_given_its_scatterers() -> None:
    subject = Subject(
        spacing_mm=0.2, skin_mm=1.5, fat_mm=3.0, fascia_mm=1.2, trapezius_mm=11.5, deep_muscle_mm=4.0,
        fibre_angle_rad=0.2, undulation=(), muscle_db=-33.0, fat_db=-39.0, gain_db=0.5, f0_mhz=9.0, cycles=2.5,
        lateral_fwhm_mm=0.5, alpha_db_cm_mhz=0.7, tgc_fraction=0.8, dynamic_range_db=55.0, muscle_kpa=34.0,
        fat_kpa=12.0, deep_kpa_ratio=1.0,
    )  # fmt: skip
    db = np.random.default_rng(1).uniform(-50.0, -5.0, (40, 36)).astype(np.float32)
    depth = ((np.arange(40, dtype=np.float32) + 0.5) * 0.2)[:, None]
    scatterers = np.random.default_rng(9).standard_normal((40, 36, 2), dtype=np.float32)
    expected = _form_bmode(np.random.default_rng(9), db, depth, subject)  # draws the same field itself
    np.testing.assert_array_equal(_bmode_from_scatterers(scatterers, db, depth, subject), expected)


def test_jitter_and_dropped_frames_move_positions_not_shapes() -> None:
    motorised = generate_sweep(6, 2, **SMALL)
    np.testing.assert_allclose(motorised["sweep_mm"], np.arange(SMALL["slices"]) * 0.5)
    jittered = generate_sweep(6, 2, jitter_mm=0.3, **SMALL)
    dropped = generate_sweep(6, 2, drop_p=0.3, **SMALL)
    for other in (jittered, dropped):
        assert other["bmode"].shape == other["mask"].shape == motorised["bmode"].shape
        assert other["objects"] == motorised["objects"]  # the same scene, sampled elsewhere
        assert not np.array_equal(other["bmode"], motorised["bmode"])
    wobble = jittered["sweep_mm"] - motorised["sweep_mm"]
    assert 0.1 < wobble.std() < 0.6
    gaps = np.diff(dropped["sweep_mm"])
    assert np.allclose(gaps / 0.5, np.round(gaps / 0.5)) and gaps.min() >= 0.5 - 1e-9 and gaps.max() >= 1.0
    assert dropped["sweep_mm"][-1] > motorised["sweep_mm"][-1]  # the kept frames reach further


def test_sweep_positions_are_reproducible() -> None:
    def positions(seed: int) -> np.ndarray:
        return sweep_positions_mm(np.random.default_rng(seed), 30, 0.5, jitter_mm=0.2, drop_p=0.2)

    np.testing.assert_array_equal(positions(3), positions(3))
    assert len(positions(3)) == 30


def test_active_latent_effect_changes_only_active_trp_values() -> None:
    plain = generate_sweep(0, 0, **SMALL)
    assert any(t["label"] == 1 for t in trps_of(plain))  # subject 0 of seed 0 has an active TrP
    stiffer = generate_sweep(0, 0, active_stiffness_factor=2.0, **SMALL)
    np.testing.assert_array_equal(stiffer["bmode"], plain["bmode"])
    np.testing.assert_array_equal(stiffer["mask"], plain["mask"])
    changed = np.isfinite(plain["elasto"]) & (stiffer["elasto"] != plain["elasto"])
    assert changed.any()
    kernel = np.ones((41, 41), np.uint8)  # 4 mm either side: the SWE blur carries the change past the edge
    near_active = np.stack([cv2.dilate((m == 1).astype(np.uint8), kernel) > 0 for m in plain["mask"]])
    near_active[1:] |= near_active[:-1].copy()  # and one slice beyond: the nodule's soft edge (a few %)
    near_active[:-1] |= near_active[1:].copy()
    assert near_active[changed].all()


@pytest.mark.parametrize("file_format", FILE_FORMATS)
def test_every_format_reads_back_with_volume_io(tmp_path: Path, file_format: str) -> None:
    settings = {"subjects": 1, "slices": 5, "height": 48, "width": 40, "spacing_mm": 0.25,
                "slice_spacing_mm": 0.7, "seed": 3, "workers": 1}  # fmt: skip
    root = write_sweep_dataset(tmp_path / file_format, file_format=file_format, **settings)
    expected = generate_sweep(3, 0, slices=5, height=48, width=40, spacing_mm=0.25, slice_spacing_mm=0.7)
    (row,) = csv.DictReader((root / "manifest.csv").open(newline=""))
    spacing = (0.7, 0.25, 0.25)
    given = spacing if file_format == "npy" else None  # .npy carries none; the others their own
    bmode = read_volume_bmode(root / row["bmode"], spacing_mm=given)
    kpa = read_volume_kpa(root / row["elasto"], spacing_mm=given)
    mask = read_volume_mask(root / row["mask"], spacing_mm=given)
    for volume in (bmode, kpa, mask):
        assert volume.voxels.shape == (5, 48, 40)
        assert volume.spacing_mm == pytest.approx(spacing)
        assert volume.notes == ()
    np.testing.assert_array_equal(np.round(bmode.voxels * 255).astype(np.uint8), expected["bmode"])
    np.testing.assert_array_equal(kpa.voxels, expected["elasto"])  # NaN where NaN
    np.testing.assert_array_equal(mask.voxels, expected["mask"])
    if file_format == "dicom":
        assert row["bmode"].endswith(".dcm") and row["elasto"].endswith(".nii.gz")


def test_manifest_and_dataset_yaml(tmp_path: Path) -> None:
    root = write_sweep_dataset(tmp_path / "ds", subjects=2, slices=3, height=32, width=32, seed=8, workers=1,
                               sweeps_per_subject=2, jitter_mm=0.1)  # fmt: skip
    with (root / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
    assert [r["sample_id"] for r in rows] == ["s000_w00", "s000_w01", "s001_w00", "s001_w01"]
    assert {r["kind"] for r in rows} == {"volume"}
    assert [r["subject_id"] for r in rows] == ["s000", "s000", "s001", "s001"]
    for row in rows:
        assert float(row["spacing_mm"]) == 0.2 and float(row["slice_spacing_mm"]) == 0.5
        for column in ("bmode", "elasto", "mask"):
            assert row[column].startswith("sweeps/") and (root / row[column]).is_file()
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    assert spec["contract_version"] == 2 and spec["synthetic"] is True and spec["elasto_unit"] == "kPa"
    assert spec["classes"] == list(DEFAULT_CLASSES)
    generator = spec["generator"]
    assert (generator["name"], generator["version"], generator["seed"]) == ("tpnet.data.synth_sweeps", 1, 8)
    assert generator["jitter_mm"] == 0.1 and generator["sweeps_per_subject"] == 2 and generator["slices"] == 3


def test_sweeps_of_one_subject_differ_but_share_the_body() -> None:
    first, second = (generate_sweep(0, 3, sweep, **SMALL) for sweep in (0, 1))
    assert first["fibre_angle_deg"] == second["fibre_angle_deg"]
    assert not np.array_equal(first["bmode"], second["bmode"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"slices": 1}, "at least 2 slices"),
        ({"drop_p": 1.0}, "drop_p"),
        ({"jitter_mm": -0.1}, "jitter_mm"),
        ({"slice_spacing_mm": 0.0}, "slice_spacing_mm"),
        ({"height": 16}, "at least 32x32"),
        ({"file_format": "png"}, "unknown file_format"),
    ],
)
def test_impossible_settings_are_refused_before_writing(tmp_path: Path, change: dict, message: str) -> None:
    settings = {"subjects": 1, "slices": 3, "height": 32, "width": 32, "workers": 1, **change}
    with pytest.raises(ValueError, match=message):
        write_sweep_dataset(tmp_path / "ds", **settings)
    assert not (tmp_path / "ds").exists()


def test_cli_writes_a_sweep_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synth-sweeps", str(tmp_path / "ds"), "--subjects", "1", "--slices", "3", "--height", "32",
            "--width", "32", "--format", "nrrd", "--jitter-mm", "0.2", "--workers", "1"]  # fmt: skip
    assert main(args) == 0
    (row,) = csv.DictReader((tmp_path / "ds" / "manifest.csv").open(newline=""))
    assert row["kind"] == "volume" and row["bmode"].endswith(".nrrd")
    assert yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())["generator"]["jitter_mm"] == 0.2
    assert main(["synth-sweeps", str(tmp_path / "bad"), "--drop-p", "2"]) == 2
    assert "drop_p" in capsys.readouterr().err
