"""A sweep one slice at a time (tpnet.core.volume_stream): the streaming finder reports exactly what the
whole-volume finder reports on the stacked arrays, holds little per slice, and the label writer's NIfTI files
read back as the volume written."""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tpnet.core.contract import ClassRoles
from tpnet.core.volume_io import read_volume_mask
from tpnet.core.volume_postprocess import TriggerPoint3D, find_trigger_points_3d
from tpnet.core.volume_stream import NiftiLabelWriter, StreamingTriggerPoints3D, _PackedMask

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")
BG, ACTIVE, LATENT, VESSEL, NERVE = range(5)
SPACING_MM = (0.5, 0.1, 0.1)
FLOAT_FIELDS = ("stiffness_kpa_mean", "confidence")  # sums of floats: added up in another order


def streamed(
    labels: np.ndarray,
    spacing_mm: tuple[float, float, float] = SPACING_MM,
    classes: tuple[str, ...] = CLASSES,
    elasto_kpa: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    **kwargs,
) -> list[TriggerPoint3D]:
    finder = StreamingTriggerPoints3D(classes, spacing_mm, **kwargs)
    for z in range(labels.shape[0]):
        finder.add_slice(
            labels[z],
            None if elasto_kpa is None else elasto_kpa[z],
            None if probs is None else probs[:, z],
        )
    return finder.finish()


def assert_same_points(ours: list[TriggerPoint3D], theirs: list[TriggerPoint3D]) -> None:
    """Same points in the same order; every field equal (NaN = NaN), the float sums to 1e-9."""
    assert len(ours) == len(theirs)
    for mine, expected in zip(ours, theirs, strict=True):
        for field in dataclasses.fields(TriggerPoint3D):
            a, b = getattr(mine, field.name), getattr(expected, field.name)
            if field.name in FLOAT_FIELDS and not math.isnan(b):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12), field.name
            elif isinstance(b, float) and math.isnan(b):
                assert math.isnan(a), field.name
            else:
                assert a == b, field.name


def check_against_whole_volume(labels: np.ndarray, **kwargs) -> list[TriggerPoint3D]:
    spacing = kwargs.pop("spacing_mm", SPACING_MM)
    classes = kwargs.pop("classes", CLASSES)
    expected = find_trigger_points_3d(labels, spacing, classes, **kwargs)
    assert_same_points(streamed(labels, spacing, classes, **kwargs), expected)
    return expected


# ------------------------------------------------------------------------- same as the whole volume


@pytest.mark.parametrize("seed", range(6))
def test_random_volumes_give_the_whole_volume_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 10)), int(rng.integers(4, 24)), int(rng.integers(4, 24)))
    labels = rng.choice(5, size=shape, p=[0.55, 0.2, 0.1, 0.1, 0.05]).astype(np.uint8)
    kpa = (rng.random(shape) * 90).astype(np.float32)
    kpa[rng.random(shape) < 0.3] = np.nan  # no signal
    probs = rng.dirichlet(np.ones(5), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
    spacing = (float(rng.uniform(0.3, 2.0)), 0.1, 0.1)
    for elasto in (None, kpa):
        for p in (None, probs):
            for min_volume in (0.0, 0.002):
                points = check_against_whole_volume(
                    labels, spacing_mm=spacing, elasto_kpa=elasto, probs=p, min_volume_mm3=min_volume
                )
                assert points or min_volume > 0  # random labels always hold TrP voxels


def test_random_blobs_spanning_slices() -> None:
    rng = np.random.default_rng(11)
    shape = (24, 40, 40)
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, np.uint8)
    for _ in range(12):  # ellipsoids over several slices, some touching, some crossing others
        centre = rng.uniform((0, 0, 0), shape)
        radii = rng.uniform((1, 2, 2), (5, 8, 8))
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
        labels[inside] = rng.choice([ACTIVE, LATENT, VESSEL, NERVE])
    kpa = np.where(rng.random(shape) < 0.5, rng.random(shape) * 60, np.nan).astype(np.float32)
    points = check_against_whole_volume(labels, elasto_kpa=kpa, min_volume_mm3=0.0)
    assert len(points) >= 3
    assert any(p.slices[1] > p.slices[0] for p in points)  # blobs do span slices
    assert all(math.isfinite(p.nearest_critical_mm) for p in points)


def test_u_shape_joined_only_several_slices_later() -> None:
    # Two columns through slices 0-5 that meet only in slice 6: the union merges labels that were apart for
    # six slices; a vessel beside one arm (near) and a nerve ten slices further on (far).
    labels = np.zeros((18, 12, 20), np.uint8)
    labels[0:7, 4:7, 2:5] = ACTIVE
    labels[0:7, 4:7, 14:17] = LATENT
    labels[6, 4:7, 2:17] = LATENT
    labels[2, 5, 7] = VESSEL
    labels[17, 10, 10] = NERVE
    (point,) = check_against_whole_volume(labels, min_volume_mm3=0.0)
    assert point.slices == (0, 6)
    assert point.nearest_critical_mm == pytest.approx(0.3, rel=1e-6)  # three pixels beside the left arm

    far_only = labels.copy()
    far_only[far_only == VESSEL] = BG
    (point,) = check_against_whole_volume(far_only, min_volume_mm3=0.0)
    assert point.nearest_critical_mm > 5.0  # 11 slices of 0.5 mm away at least


def test_a_join_that_merges_two_earlier_joins() -> None:
    # Four columns, joined pairwise in slice 3 and all together in slice 5: roots change twice.
    labels = np.zeros((6, 5, 20), np.uint8)
    for x in (1, 6, 11, 16):
        labels[0:6, 2, x] = ACTIVE
    labels[3, 2, 1:7] = ACTIVE
    labels[3, 2, 11:17] = ACTIVE
    labels[5, 2, 1:17] = ACTIVE
    labels[0, 0, 0] = LATENT  # a separate point with its own number
    points = check_against_whole_volume(labels, min_volume_mm3=0.0)
    assert [p.voxel_count for p in points] == [1, 4 * 6 + 4 + 4 + 12]  # columns, then the new pixels


def test_equal_centroids_keep_the_whole_volume_order() -> None:
    # A tube (a ring in three slices) and the dot at its centre have the same centroid: the order falls to
    # the component numbering, the smallest slice-component label of each (the tube's 1 before the dot's 3;
    # rooting the union at its largest label would put the dot, 3, before the tube, 4, first).
    labels = np.zeros((3, 11, 11), np.uint8)
    labels[:, 2:9, 2:9] = ACTIVE
    labels[:, 3:8, 3:8] = BG
    labels[1, 5, 5] = LATENT
    points = check_against_whole_volume(labels, min_volume_mm3=0.0)
    assert [p.class_name for p in points] == ["active_trp", "latent_trp"]
    assert points[0].centroid_mm == points[1].centroid_mm


def test_gaps_and_empty_slices() -> None:
    labels = np.zeros((9, 10, 10), np.uint8)
    labels[0:2, 1:4, 1:4] = ACTIVE
    labels[4, 1:4, 1:4] = ACTIVE  # same place after two empty slices: another point
    labels[8, 6:9, 6:9] = LATENT
    labels[6, 0, :] = VESSEL
    points = check_against_whole_volume(labels, min_volume_mm3=0.0)
    assert [p.slices for p in points] == [(0, 1), (4, 4), (8, 8)]


def test_thin_and_dense_critical_structures() -> None:
    # A one-pixel vessel (kept as pixel indices) and a nerve filling half a slice (kept as bits).
    labels = np.zeros((7, 30, 30), np.uint8)
    labels[1:3, 10:14, 10:14] = ACTIVE
    labels[5:7, 20:24, 3:8] = LATENT
    labels[0, 25, :] = VESSEL
    labels[4, :15, :] = NERVE
    check_against_whole_volume(labels, min_volume_mm3=0.0)


def test_declared_roles_and_no_trp_class() -> None:
    classes = ("background", "nodule", "artery")
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[0:3, 2:12, 2:12] = 1
    labels[1, 15, 15] = 2
    roles = ClassRoles(trp=("nodule",), critical=("artery",))
    (point,) = check_against_whole_volume(labels, classes=classes, roles=roles, min_volume_mm3=0.0)
    assert point.class_name == "nodule"
    assert check_against_whole_volume(labels, classes=classes, min_volume_mm3=0.0) == []  # no TrP class


def test_no_signal_everywhere_and_no_slices() -> None:
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = ACTIVE
    (point,) = check_against_whole_volume(
        labels, elasto_kpa=np.full(labels.shape, np.nan), min_volume_mm3=0.0
    )
    assert math.isnan(point.stiffness_kpa_mean) and point.swe_coverage == 0.0
    assert StreamingTriggerPoints3D(CLASSES, SPACING_MM).finish() == []


def test_nearest_critical_is_reproducible_and_exact() -> None:
    # OpenCV's distance maps alternate in the last float32 bit of some pixels from call to call (without the
    # snapping to whole squared pixel distances, two runs of this volume disagreed); now every run of both
    # finders gives the same figures, the exact distances between voxel centres.
    rng = np.random.default_rng(9)
    labels = np.zeros((4, 48, 48), np.uint8)
    labels[rng.random(labels.shape) < 0.01] = NERVE
    labels[(rng.random(labels.shape) < 0.03) & (labels == BG)] = ACTIVE  # some 200 TrPs, mostly single voxels
    runs = set()
    for _ in range(5):
        runs.add(
            tuple(
                p.nearest_critical_mm
                for p in find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0)
            )
        )
        runs.add(tuple(p.nearest_critical_mm for p in streamed(labels, min_volume_mm3=0)))
    assert len(runs) == 1
    (nearest,) = runs
    assert len(nearest) > 150
    spacing = np.asarray(SPACING_MM)
    critical_mm = np.argwhere(labels == NERVE) * spacing
    for point, distance in zip(
        find_trigger_points_3d(labels, SPACING_MM, CLASSES, min_volume_mm3=0), nearest, strict=True
    ):
        if point.voxel_count == 1:
            z, y, x = point.slices[0], round(point.centroid_mm[1] / 0.1), round(point.centroid_mm[0] / 0.1)
            brute = np.sqrt((((np.array([z, y, x]) * spacing) - critical_mm) ** 2).sum(axis=1)).min()
            assert distance == pytest.approx(brute, rel=1e-12)


def test_packed_masks_round_trip_in_both_forms() -> None:
    rng = np.random.default_rng(2)
    for share, form in ((0.005, "flat"), (0.5, "bits")):
        mask = rng.random((37, 53)) < share
        packed = _PackedMask.of(mask)
        assert (packed.flat is not None, packed.bits is not None) == (form == "flat", form == "bits")
        assert packed.nbytes <= mask.size // 8 + 1
        np.testing.assert_array_equal(packed.unpack(mask.shape), mask)


# ------------------------------------------------------------------------------------------ memory


def sweep_slice(z: int, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice z of an endless sweep: a TrP blob every few slices (about 1 % of the pixels), a vessel in each
    slice, kPa and two-class probabilities everywhere."""
    labels = np.zeros((height, width), np.uint8)
    if z % 5 < 3:
        labels[40:52, 20 + z % 40 : 34 + z % 40] = ACTIVE
    labels[100, :] = VESSEL
    kpa = np.full((height, width), 30.0, np.float32)
    probs = np.full((len(CLASSES), height, width), 0.2, np.float32)
    return labels, kpa, probs


def test_memory_per_slice_is_small_bookkeeping() -> None:
    finder = StreamingTriggerPoints3D(CLASSES, SPACING_MM)
    tracemalloc.start()
    try:
        for z in range(40):
            finder.add_slice(*sweep_slice(z))
        held_40, traced_40 = finder.held_bytes, tracemalloc.get_traced_memory()[0]
        for z in range(40, 400):
            finder.add_slice(*sweep_slice(z))
        held_400, traced_400 = finder.held_bytes, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Per slice: the blob's 168 voxels at 5 bytes, the vessel's 128 pixels at 4, a component row: ~1.5 kB;
    # a kept label slice alone would be 16 kB, its kPa map 64 kB.
    label_slice = 128 * 128
    assert (held_400 - held_40) / 360 < label_slice / 8
    assert (traced_400 - traced_40) / 360 < label_slice / 4  # all allocations, Python objects included
    points = finder.finish()
    assert len(points) == 80  # one blob per five slices


# ------------------------------------------------------------------------------------------ refused


def test_slices_that_do_not_fit_the_sweep_are_refused() -> None:
    finder = StreamingTriggerPoints3D(CLASSES, SPACING_MM)
    labels = np.zeros((6, 7), np.uint8)
    finder.add_slice(labels, np.zeros((6, 7), np.float32))
    with pytest.raises(ValueError, match="the sweep's slices are"):
        finder.add_slice(np.zeros((7, 6), np.uint8), np.zeros((7, 6), np.float32))
    with pytest.raises(ValueError, match="every slice gives them alike"):
        finder.add_slice(labels)
    with pytest.raises(ValueError, match="elasto_kpa shape"):
        finder.add_slice(labels, np.zeros((6, 6), np.float32))
    with pytest.raises(ValueError, match="integer label map"):
        finder.add_slice(labels.astype(np.float32), np.zeros((6, 7), np.float32))
    assert finder.slices == 1
    finder.finish()
    with pytest.raises(RuntimeError, match="no more slices"):
        finder.add_slice(labels, np.zeros((6, 7), np.float32))
    with pytest.raises(RuntimeError, match="already called"):
        finder.finish()

    with pytest.raises(ValueError, match="probs must be"):
        StreamingTriggerPoints3D(CLASSES, SPACING_MM).add_slice(labels, probs=np.zeros((2, 6, 7)))
    with pytest.raises(ValueError, match="square pixels"):
        StreamingTriggerPoints3D(CLASSES, (0.5, 0.1, 0.2))
    with pytest.raises(ValueError, match="min_volume_mm3"):
        StreamingTriggerPoints3D(CLASSES, SPACING_MM, min_volume_mm3=-1.0)


# ----------------------------------------------------------------------------------- label writer


def label_volume(shape: tuple[int, int, int] = (5, 12, 16)) -> np.ndarray:
    """(Z, H, W) uint8 with neighbouring voxels different: a flip or transposition changes it."""
    return (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_written_labels_read_back_as_the_volume(tmp_path: Path, name: str) -> None:
    volume, spacing = label_volume(), (1.5, 0.3, 0.2)
    path = tmp_path / "out" / name  # the folder is made
    with NiftiLabelWriter(path, 12, 16, spacing) as writer:
        for labels in volume:
            writer.write_slice(labels)
            assert not path.exists()  # nothing under the final name before close
        assert writer.slices_written == 5
    read = read_volume_mask(path)
    np.testing.assert_array_equal(read.voxels, volume)
    assert read.spacing_mm == pytest.approx(spacing) and read.notes == ()

    image = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume.transpose(2, 1, 0))
    assert image.header.get_zooms() == pytest.approx((0.2, 0.3, 1.5))
    assert image.header.get_xyzt_units()[0] == "mm"
    assert image.get_data_dtype() == np.uint8
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert len(raw) == 352 + volume.size
    assert nib.Nifti1Header.from_fileobj(io.BytesIO(raw))["vox_offset"] == 352
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_a_failed_write_leaves_no_file_and_an_old_one_untouched(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with (
        pytest.raises(RuntimeError, match="inference failed"),
        NiftiLabelWriter(path, 4, 4, (1.0, 0.1, 0.1)) as writer,
    ):
        writer.write_slice(np.ones((4, 4), np.uint8))
        raise RuntimeError("inference failed")
    assert list(tmp_path.iterdir()) == []

    path.write_bytes(b"the previous result")
    writer = NiftiLabelWriter(path, 4, 4, (1.0, 0.1, 0.1))
    writer.write_slice(np.ones((4, 4), np.uint8))
    writer.abort()
    assert path.read_bytes() == b"the previous result"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_writer_refuses_what_is_not_a_label_slice(tmp_path: Path) -> None:
    path = tmp_path / "labels.nii.gz"
    with pytest.raises(ValueError, match=r"named \.nii or \.nii\.gz"):
        NiftiLabelWriter(tmp_path / "labels.nrrd", 4, 4, (1.0, 0.1, 0.1))
    with pytest.raises(ValueError, match="three positive numbers"):
        NiftiLabelWriter(path, 4, 4, (1.0, 0.0, 0.1))
    with pytest.raises(ValueError, match="width must be"):
        NiftiLabelWriter(path, 4, 0, (1.0, 0.1, 0.1))
    writer = NiftiLabelWriter(path, 4, 5, (1.0, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"must be \(4, 5\) uint8"):
        writer.write_slice(np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"must be \(4, 5\) uint8"):
        writer.write_slice(np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match="no slice written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_vessel_straight_behind_a_nodules_inside_and_a_slice_full_of_trp() -> None:
    # The nearest voxel is inside the nodule, not on its rim, when a vessel lies right under it in another
    # slice; and a slice wholly TrP has no rim at all: what the finder keeps must still give the exact distance.
    labels = np.zeros((5, 24, 24), np.uint8)
    labels[1, 6:18, 6:18] = ACTIVE
    labels[3, 11:13, 11:13] = VESSEL  # behind the nodule's centre, two slices on
    labels[4] = LATENT  # every pixel
    nodule, full = check_against_whole_volume(labels, min_volume_mm3=0.0)
    assert nodule.slices == (1, 1) and nodule.nearest_critical_mm == pytest.approx(2 * SPACING_MM[0])
    assert full.slices == (4, 4) and full.nearest_critical_mm == pytest.approx(SPACING_MM[0])


@pytest.mark.parametrize("seed", range(4))
def test_large_random_trp_areas_next_to_critical_slices(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    smooth = np.stack([cv2_blur(rng.random((40, 40))) for _ in range(8)])
    labels = np.where(smooth > 0.5, ACTIVE, BG).astype(np.uint8)
    labels[rng.random(labels.shape) > 0.995] = VESSEL
    check_against_whole_volume(labels)


def cv2_blur(plane: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(plane.astype(np.float32), (9, 9), 3)
