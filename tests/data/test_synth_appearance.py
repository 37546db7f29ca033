"""Appearance presets of the synthetic generator: literature unchanged, wide varies more, shifted differs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tpnet.core.contract import load_manifest, resolve_path
from tpnet.core.io import read_mask
from tpnet.data.check import check_or_raise
from tpnet.data.cli import main
from tpnet.data.synth import (
    APPEARANCES,
    ensure_synthetic_dataset,
    generate_frame,
    sample_subject,
    synthetic_dataset_name,
    write_synthetic_dataset,
)

# Frames whose bytes "literature" must reproduce. Until 2026-12-02 this test compared them with sha256 hashes
# taken from the generator before appearance presets existed (commit 5fea537); those bytes depend on the installed
# OpenCV/NumPy builds (a newer mirror moved them, for the pre-preset generator as much as for today's), so a fixed
# hash tests the environment. What stays testable anywhere: the default is "literature", byte for byte, and the
# generator is deterministic. (Re-checked by hand on 2026-12-02: 5fea537's generate_frame and today's give equal
# hashes for these keys in the same environment.)
LITERATURE_KEYS = [
    (0, 0, 0, 256, 256),
    (1, 3, 2, 256, 256),
    (7, 1, 1, 192, 96),
    (11, 5, 4, 128, 160),
    (3, 2, 0, 64, 64),
]


def _frame_hash(frame: dict) -> str:
    digest = hashlib.sha256()
    for key in ("bmode", "mask", "tissue"):
        digest.update(np.ascontiguousarray(frame[key]).tobytes())
    elasto = frame["elasto"]
    digest.update(b"none" if elasto is None else np.ascontiguousarray(elasto).tobytes())
    digest.update(repr(frame["spacing_mm"]).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("key", LITERATURE_KEYS)
def test_literature_is_the_default_byte_for_byte_and_deterministic(key):
    default = _frame_hash(generate_frame(*key))
    assert _frame_hash(generate_frame(*key, appearance="literature")) == default
    assert _frame_hash(generate_frame(*key)) == default
    assert _frame_hash(generate_frame(*key, appearance="wide")) != default


def test_literature_dataset_keeps_its_name_and_dataset_yaml(tmp_path: Path):
    # The cache name carries the generator version (2 since nerves, issue #16: four-class caches are not reused);
    # literature adds no preset suffix.
    assert synthetic_dataset_name(4, 2, 1, 64, 64) == "synth-v2-seed1-4x2-64x64"
    assert synthetic_dataset_name(4, 2, 1, 64, 64, "literature") == "synth-v2-seed1-4x2-64x64"
    assert synthetic_dataset_name(4, 2, 1, 64, 64, "wide") == "synth-v2-seed1-4x2-64x64-wide"
    root = write_synthetic_dataset(tmp_path / "lit", 1, 1, seed=2, height=48, width=48)
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    assert spec["name"] == "synthetic-trapezius-s2"
    # Since issue #14 the generator block also records the active/latent effect (defaults: none), and
    # ``synthetic: true`` says no patient is behind the frames; the name stays.
    assert spec["synthetic"] is True
    assert spec["generator"] == {
        "name": "tpnet.data.synth", "version": 2, "seed": 2, "active_stiffness_factor": 1.0, "active_echo_db": 0.0
    }  # fmt: skip


def _spread(appearance: str, field: str, subjects: int = 40) -> float:
    return float(np.std([getattr(sample_subject(5, i, appearance), field) for i in range(subjects)]))


def test_wide_draws_vary_more_than_literature():
    for field in ("spacing_mm", "gain_db", "dynamic_range_db", "lateral_fwhm_mm", "trapezius_mm", "fat_mm"):
        assert _spread("wide", field) > 1.5 * _spread("literature", field), field
    sizes = {sample_subject(5, i, "wide").frame_size(256, 256) for i in range(40)}
    assert len(sizes) > 20 and all(h % 2 == 0 and w % 2 == 0 for h, w in sizes)
    assert all(192 <= h <= 320 and 192 <= w <= 320 for h, w in sizes)
    spacings = [sample_subject(5, i, "wide").spacing_mm for i in range(40)]
    assert min(spacings) < 0.08 and max(spacings) > 0.12  # beyond the literature's 0.08-0.12 mm
    # Knobs the literature does not have at all.
    subjects = [sample_subject(5, i, "wide") for i in range(40)]
    assert len({s.log_gamma for s in subjects}) == 40 and any(s.tgc_error_db for s in subjects)
    assert all(s.speckle_nu is not None and s.noise_floor_db is not None for s in subjects)


def test_frames_of_one_subject_share_its_draws_and_are_reproducible():
    a = [generate_frame(4, 2, frame, 96, 96, "wide") for frame in range(3)]
    assert len({f["bmode"].shape for f in a}) == 1 and len({f["spacing_mm"] for f in a}) == 1
    assert _frame_hash(generate_frame(4, 2, 1, 96, 96, "wide")) == _frame_hash(a[1])
    assert _frame_hash(a[0]) != _frame_hash(a[1])
    other = generate_frame(4, 3, 0, 96, 96, "wide")
    assert (other["bmode"].shape, other["spacing_mm"]) != (a[0]["bmode"].shape, a[0]["spacing_mm"])


def test_shifted_differs_from_literature_in_the_documented_ways():
    lit, shifted = APPEARANCES["literature"], APPEARANCES["shifted"]
    subjects = [sample_subject(5, i, "shifted") for i in range(20)]
    assert {s.frame_size(256, 256) for s in subjects} == {(224, 320)}
    assert all(s.spacing_mm > lit.spacing_mm[1] for s in subjects)  # pixel size outside the literature's
    assert all(s.speckle_nu is not None and s.speckle_nu < 5 for s in subjects)  # K-distributed speckle
    assert all(max(abs(v) for v in s.tgc_error_db) > 0.5 for s in subjects)  # a mis-set TGC
    assert shifted.swe_box_width_mm[1] < lit.swe_box_width_mm[0]  # smaller SWE box ...
    assert shifted.swe_on_trp < lit.swe_on_trp  # ... less often on the nodule
    mean_count = np.mean([np.dot(p, np.arange(len(p))) for s in subjects for p in s.counts])
    literature_count = np.mean([np.dot(p, np.arange(len(p))) for p in sample_subject(5, 0).counts])
    assert mean_count > 1.5 * literature_count  # more confounders
    frames = [generate_frame(6, subject, 0, 128, 128, "shifted") for subject in range(6)]
    assert {f["bmode"].shape for f in frames} == {(112, 160)}
    for frame in frames:
        if frame["elasto"] is not None:
            cols = np.nonzero(np.isfinite(frame["elasto"]).any(axis=0))[0]
            assert (cols.max() - cols.min() + 1) * frame["spacing_mm"] <= shifted.swe_box_width_mm[1] + 0.5


@pytest.mark.parametrize("appearance", ["wide", "shifted"])
def test_preset_datasets_pass_the_contract_check_and_keep_clinical_trp_sizes(tmp_path: Path, appearance: str):
    root = write_synthetic_dataset(
        tmp_path / appearance, 4, 2, seed=3, height=160, width=160, appearance=appearance
    )
    check_or_raise(root, workers=1)
    rows = load_manifest(root)
    assert len({row.spacing_mm for row in rows}) == 4  # one pixel size per subject, written per row
    for row in rows:
        mask = read_mask(resolve_path(root, row.mask))
        assert mask.shape[0] % 2 == 0 and mask.shape[1] % 2 == 0
    assert yaml.safe_load((root / "dataset.yaml").read_text())["generator"]["appearance"] == appearance
    frames = [
        generate_frame(8, subject, frame, 256, 256, appearance) for subject in range(8) for frame in range(3)
    ]
    areas = np.array([o["area_mm2"] for f in frames for o in f["objects"] if o["label"] in (1, 2)])
    assert len(areas) >= 8
    assert areas.min() >= 4.0 - 1e-6 and areas.max() <= 45.0 + 1e-6 and 8.0 < areas.mean() < 26.0
    # The painted nodules, in mm^2 at each subject's own pixel size, are the same clinical size.
    for frame in frames:
        count, components = cv2.connectedComponents(np.isin(frame["mask"], (1, 2)).astype(np.uint8))
        for component in range(1, count):
            area_mm2 = (components == component).sum() * frame["spacing_mm"] ** 2
            assert 3.0 < area_mm2 < 50.0


def test_workers_do_not_change_the_bytes(tmp_path: Path):
    a = write_synthetic_dataset(tmp_path / "a", 2, 2, seed=5, height=64, width=64, appearance="wide")
    b = write_synthetic_dataset(
        tmp_path / "b", 2, 2, seed=5, height=64, width=64, workers=2, appearance="wide"
    )
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    for path in sorted((a / "bmode").iterdir()):
        assert path.read_bytes() == (b / "bmode" / path.name).read_bytes()


def test_unknown_preset_is_refused_naming_the_allowed_ones(tmp_path: Path):
    for call in (
        lambda: sample_subject(0, 0, "wild"),
        lambda: generate_frame(0, 0, 0, 64, 64, "wild"),
        lambda: write_synthetic_dataset(tmp_path / "x", 1, 1, seed=0, appearance="wild"),
        lambda: ensure_synthetic_dataset(tmp_path / "cache", 1, 1, seed=0, appearance="wild"),
    ):
        with pytest.raises(ValueError, match="literature, wide, shifted"):
            call()
    assert not (tmp_path / "x").exists() and not (tmp_path / "cache").exists()


def test_cli_appearance(tmp_path: Path, capsys):
    argv = ["synth", str(tmp_path / "b"), "--subjects", "1", "--frames-per-subject", "1", "--seed", "1"]
    assert main([*argv, "--height", "64", "--width", "64", "--appearance", "shifted"]) == 0
    row = load_manifest(tmp_path / "b")[0]
    assert read_mask(resolve_path(tmp_path / "b", row.mask)).shape == (56, 80)
    assert main([*argv[:1], str(tmp_path / "s"), *argv[2:], "--screenshots", "--appearance", "wide"]) == 2
    assert "literature" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--appearance", "wild"])
