"""Synthetic generator: contract format, label/stiffness semantics, geometry, determinism, caching."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tpnet.core.contract import load_manifest, load_spec, resolve_path
from tpnet.core.io import read_elasto, read_mask
from tpnet.data.cli import main
from tpnet.data.synth import (
    FIBROTIC,
    MUSCLE,
    SOFT_HYPOECHOIC,
    TRP,
    VESSEL_TISSUE,
    ensure_synthetic_dataset,
    generate_frame,
    write_synthetic_dataset,
)

# Deep enough (~19 mm at 0.1 mm/px) that the trapezius, and its nodules, are in view.
H, W = 192, 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", 3, 3, seed=7, height=H, width=W)


@pytest.fixture(scope="module")
def frames() -> list[dict]:
    return [generate_frame(11, subject, frame, H, 128) for subject in range(6) for frame in range(10)]


def test_dataset_follows_contract(dataset: Path):
    spec = load_spec(dataset)
    assert spec.classes == ("background", "active_trp", "latent_trp", "vessel", "nerve")
    assert spec.elasto_unit == "kPa"
    with (dataset / "manifest.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header == ["sample_id", "subject_id", "bmode", "elasto", "mask", "spacing_mm"]
    rows = load_manifest(dataset)
    assert len(rows) == 9 and len({r.subject_id for r in rows}) == 3
    for row in rows:
        mask = read_mask(resolve_path(dataset, row.mask))
        assert mask.shape == (H, W)
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
        assert 0.08 <= row.spacing_mm <= 0.12
        assert resolve_path(dataset, row.bmode).is_file()
        if row.elasto is not None:
            kpa = read_elasto(resolve_path(dataset, row.elasto))
            assert kpa.dtype == np.float32 and kpa.shape == (H, W)


def test_spacing_is_constant_within_a_subject(dataset: Path):
    by_subject: dict[str, set[float]] = {}
    for row in load_manifest(dataset):
        by_subject.setdefault(row.subject_id, set()).add(row.spacing_mm)
    assert all(len(values) == 1 for values in by_subject.values())


def test_frame_arrays(frames):
    for f in frames:
        assert f["bmode"].dtype == np.uint8 and f["mask"].dtype == np.uint8
        assert f["bmode"].shape == f["mask"].shape == (H, 128)
        assert f["bmode"].std() > 10  # speckle and layers, not a flat image
        if f["elasto"] is not None:
            assert f["elasto"].dtype == np.float32


def test_swe_is_nan_outside_one_box_and_missing_in_some_frames(frames):
    with_swe = [f for f in frames if f["elasto"] is not None]
    assert 0 < len(frames) - len(with_swe) < len(frames) // 2  # about 15 % have no SWE
    for f in with_swe:
        valid = np.isfinite(f["elasto"])
        rows, cols = np.nonzero(valid)
        box = np.zeros_like(valid)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert not (valid & ~box).any()
        assert valid.sum() < valid.size  # the box never covers the whole frame
        assert not valid[f["tissue"] == VESSEL_TISSUE].any()  # vessels have no signal
        assert (f["elasto"][valid] > 0).all()


def test_stiffness_ordering_by_class(frames):
    def mean_kpa(select) -> float:
        values = [
            f["elasto"][select(f) & np.isfinite(f["elasto"])] for f in frames if f["elasto"] is not None
        ]
        values = np.concatenate(values)
        assert values.size > 100
        return float(values.mean())

    trp = mean_kpa(lambda f: f["tissue"] == TRP)
    muscle = mean_kpa(lambda f: f["tissue"] == MUSCLE)
    background = mean_kpa(lambda f: f["mask"] == 0)
    fibrotic = mean_kpa(lambda f: f["tissue"] == FIBROTIC)
    soft = mean_kpa(lambda f: f["tissue"] == SOFT_HYPOECHOIC)
    assert trp > muscle > soft
    assert trp > background
    assert fibrotic > 1.2 * muscle


def test_trigger_points_are_darker_than_muscle(frames):
    trp = np.concatenate([f["bmode"][f["tissue"] == TRP] for f in frames]).astype(float)
    muscle = np.concatenate([f["bmode"][f["tissue"] == MUSCLE] for f in frames]).astype(float)
    assert trp.mean() < muscle.mean() - 5


def test_trigger_point_sizes_and_prevalence():
    frames = [generate_frame(3, subject, frame, 256, 256) for subject in range(4) for frame in range(12)]
    trps = [o for f in frames for o in f["objects"] if o["label"] in (1, 2)]
    areas = np.array([o["area_mm2"] for o in trps])
    assert len(trps) >= 20
    assert 9.0 < areas.mean() < 24.0  # 16 +/- 11 mm^2 (Sikdar 2009), clipped to 4-45
    assert areas.min() >= 4.0 - 1e-6 and areas.max() <= 45.0 + 1e-6
    without = sum(not any(o["label"] in (1, 2) for o in f["objects"]) for f in frames)
    assert 0.2 < without / len(frames) < 0.7  # about 40 % of frames show no nodule
    labels = {o["label"] for o in trps}
    assert labels == {1, 2}


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path):
    a = write_synthetic_dataset(tmp_path / "a", 2, 2, seed=5, height=64, width=64)
    b = write_synthetic_dataset(tmp_path / "b", 2, 2, seed=5, height=64, width=64, workers=2)
    c = write_synthetic_dataset(tmp_path / "c", 2, 2, seed=6, height=64, width=64)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    names = sorted(p.name for p in (a / "masks").iterdir())
    assert names and names == sorted(p.name for p in (b / "masks").iterdir())
    for name in names:
        assert (a / "masks" / name).read_bytes() == (b / "masks" / name).read_bytes()
        assert (a / "bmode" / name).read_bytes() == (b / "bmode" / name).read_bytes()
    assert any((a / "bmode" / n).read_bytes() != (c / "bmode" / n).read_bytes() for n in names)
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()


def test_frames_without_swe_have_empty_elasto_cell(tmp_path: Path):
    root = write_synthetic_dataset(tmp_path / "ds", 4, 5, seed=1, height=48, width=48)
    with (root / "manifest.csv").open() as fh:
        cells = [row["elasto"] for row in csv.DictReader(fh)]
    assert "" in cells and any(cells)
    assert all((root / cell).is_file() for cell in cells if cell)
    assert len(list((root / "elasto").iterdir())) == sum(bool(c) for c in cells)


def test_ensure_generates_once_and_reuses(tmp_path: Path):
    first = ensure_synthetic_dataset(tmp_path, subjects=1, frames_per_subject=2, seed=0, height=48, width=48)
    marker = first / "manifest.csv"
    stamp = marker.stat().st_mtime_ns
    second = ensure_synthetic_dataset(tmp_path, subjects=1, frames_per_subject=2, seed=0, height=48, width=48)
    assert second == first and marker.stat().st_mtime_ns == stamp
    other = ensure_synthetic_dataset(tmp_path, subjects=1, frames_per_subject=2, seed=1, height=48, width=48)
    assert other != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_bad_arguments_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="subject"):
        write_synthetic_dataset(tmp_path / "x", 0, 1, seed=0)


def test_cli_synth(tmp_path: Path):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--subjects", "2", "--frames-per-subject", "2", "--seed", "3"]
    assert main([*args, "--height", "48", "--width", "40"]) == 0
    rows = load_manifest(out)
    assert [r.sample_id for r in rows] == ["s000_f000", "s000_f001", "s001_f000", "s001_f001"]
    assert read_mask(resolve_path(out, rows[0].mask)).shape == (48, 40)
