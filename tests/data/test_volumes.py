"""Volume rows as training frames (issue #17, ``tpnet.data.volumes``): one row per slice, lazily read slices
with their neighbours, errors that name the sample; and the setup, loaders and check over a sweep set."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from tpnet.core.contract import load_manifest, load_spec
from tpnet.core.encoding import Encoding
from tpnet.core.volume_io import read_volume_bmode, read_volume_mask
from tpnet.data.check import check_dataset
from tpnet.data.dataset import FullFrameDataset, TrainPatchDataset, load_frame
from tpnet.data.synth_sweeps import write_sweep_dataset
from tpnet.data.volumes import slice_id, slice_rows

SETTINGS = {"subjects": 3, "slices": 6, "height": 48, "width": 40, "seed": 3, "workers": 1}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    return write_sweep_dataset(tmp_path_factory.mktemp("sweeps") / "set", **SETTINGS)


def _rows(root: Path):
    spec = load_spec(root)
    return spec, slice_rows(spec, load_manifest(root))


def test_a_volume_row_becomes_one_row_per_slice_in_order(sweeps):
    spec, rows = _rows(sweeps)
    volumes = load_manifest(sweeps)
    assert len(rows) == len(volumes) * SETTINGS["slices"]
    first = volumes[0]
    mine = [r for r in rows if r.volume_id == first.sample_id]
    assert [r.slice_index for r in mine] == list(range(SETTINGS["slices"]))
    assert mine[2].sample_id == slice_id(first.sample_id, 2) and mine[2].subject_id == first.subject_id


def test_a_slice_is_the_volumes_slice_with_its_neighbours_and_zeros_past_the_ends(sweeps):
    spec, rows = _rows(sweeps)
    volume_row = load_manifest(sweeps)[0]
    spacing = (volume_row.slice_spacing_mm, volume_row.spacing_mm, volume_row.spacing_mm)
    bmode = read_volume_bmode(sweeps / volume_row.bmode, spacing_mm=spacing).voxels
    mask = read_volume_mask(sweeps / volume_row.mask, spacing_mm=spacing).voxels
    first = rows[0]
    frame = load_frame(spec, first, volume_row.spacing_mm, context_slices=2)
    np.testing.assert_array_equal(frame.bmode, bmode[0])
    np.testing.assert_array_equal(frame.mask, mask[0])
    assert frame.context.shape == (4, *bmode.shape[1:])
    np.testing.assert_array_equal(frame.context[:2], 0.0)  # slices -2 and -1 do not exist
    np.testing.assert_array_equal(frame.context[2], bmode[1])
    np.testing.assert_array_equal(frame.context[3], bmode[2])


def test_a_frame_row_asked_for_context_is_refused_naming_it(sweeps, tmp_path):
    from tpnet.core.contract import ManifestRow

    row = ManifestRow(2, "still", "s1", "a.png", None, None, 0.2, None)
    with pytest.raises(ValueError, match=r"still: data.context_slices=1 needs sweeps"):
        load_frame(load_spec(sweeps), row, 0.2, context_slices=1)


def test_patches_and_full_frames_carry_the_context_channels(sweeps):
    spec, rows = _rows(sweeps)
    encoding = Encoding(context_slices=1)
    patches = TrainPatchDataset(spec, rows, encoding, 0.2, (32, 32), seed=0)
    image, mask = patches[3]
    assert image.shape == (5, 32, 32) and mask.shape == (32, 32)
    full = FullFrameDataset(spec, rows, encoding, 0.2)[7]
    assert full["image"].shape[0] == 5
    assert full["volume_id"] == rows[7].volume_id and full["slice_index"] == rows[7].slice_index
    assert full["slice_spacing_mm"] == pytest.approx(0.5)


def _rewrite_manifest(root: Path, change) -> None:
    path = root / "manifest.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    change(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _copy(sweeps: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(sweeps, tmp_path / "copy"))


def test_the_check_passes_a_sweep_set_and_counts_trigger_points_in_3d(sweeps):
    report = check_dataset(sweeps)
    assert report.ok, [str(p) for p in report.errors]
    assert report.summary["frames"] == SETTINGS["subjects"]  # rows: one per sweep


def test_the_check_names_a_sweep_without_slice_spacing(sweeps, tmp_path):
    root = _copy(sweeps, tmp_path)

    def drop(rows):
        rows[1]["slice_spacing_mm"] = ""

    _rewrite_manifest(root, drop)
    report = check_dataset(root)
    sample = load_manifest(root)[1].sample_id
    reasons = [p.reason for p in report.errors if p.where == sample]
    assert reasons and all("slice_spacing_mm" in r for r in reasons), reasons


def test_the_check_names_a_mask_of_another_shape(sweeps, tmp_path):
    root = _copy(sweeps, tmp_path)
    row = load_manifest(root)[0]
    mask = np.load(root / row.mask)
    np.save(root / row.mask, mask[:-1])  # one slice short
    report = check_dataset(root)
    errors = [p for p in report.errors if p.where == row.sample_id]
    assert any("shape mismatch" in p.reason and "mask" in p.reason for p in errors), errors


def test_a_volume_row_in_a_version_1_dataset_is_named(sweeps, tmp_path):
    root = _copy(sweeps, tmp_path)
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    del meta["contract_version"]
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    report = check_dataset(root)
    assert any("needs contract_version: 2" in p.reason for p in report.errors)
    spec = load_spec(root)
    with pytest.raises(ValueError, match=r"needs contract_version: 2"):
        slice_rows(spec, load_manifest(root))


def test_the_check_names_a_mask_saved_with_another_orientation(tmp_path):
    import nibabel as nib

    from tpnet.data.synth_sweeps import write_sweep_dataset as write

    root = write(tmp_path / "nifti", **{**SETTINGS, "subjects": 1}, file_format="nifti")
    row = load_manifest(root)[0]
    mask_path = root / row.mask
    image = nib.load(mask_path)
    flipped = image.affine.copy()
    flipped[0, 0] *= -1  # the columns run the other way: same shape and spacing, mirrored voxels
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), flipped, image.header), mask_path)
    report = check_dataset(root)
    errors = [p.reason for p in report.errors if p.where == row.sample_id]
    assert any("orientation differs" in reason for reason in errors), errors
    assert check_dataset(write(tmp_path / "clean", **{**SETTINGS, "subjects": 1}, file_format="nifti")).ok


@pytest.mark.parametrize("file_format", ["nifti", "nrrd", "dicom"])
def test_sweeps_in_every_format_pass_the_check_and_load_as_slices(tmp_path, file_format):
    from tpnet.data.synth_sweeps import write_sweep_dataset as write

    root = write(tmp_path / file_format, **{**SETTINGS, "subjects": 1}, file_format=file_format)
    report = check_dataset(root)
    assert report.ok, [str(p) for p in report.errors]
    spec, rows = _rows(root)
    assert len(rows) == SETTINGS["slices"]
    frame = load_frame(spec, rows[1], 0.2, context_slices=1)
    assert frame.bmode.shape == (SETTINGS["height"], SETTINGS["width"]) and frame.context.shape[0] == 2
