"""Volume reading (tpnet.core.volume_io) against real files written here with nibabel, pynrrd and pydicom:
values, spacing and axis order survive a round trip in every format, units become mm, and a file that does
not say how large its voxels are (or a DICOM cine) is refused with the file named."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_files import write_us_dicom
from tpnet.core.io import FrameReadError
from tpnet.core.volume_io import (
    open_volume,
    read_volume,
    read_volume_bmode,
    read_volume_kpa,
    read_volume_mask,
)

SHAPE = (5, 12, 16)  # (Z, H, W): three different sizes, so a transposition changes the shape
SPACING = (1.5, 0.3, 0.2)  # (slice, row, column) mm: three different sizes, so a swapped axis shows
CINE_REASON = "no slice spacing (SpacingBetweenSlices / per-frame positions): a cine loop, not a sweep?"


def asymmetric_volume() -> np.ndarray:
    """(Z, H, W) uint16 with every voxel different: any flip or transposition changes the values."""
    return np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)


def refused(path: Path, call: Callable = read_volume, **kwargs) -> str:
    """The FrameReadError message, checked to start with the path."""
    with pytest.raises(FrameReadError) as info:
        call(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------------------------------------- NIfTI


def write_nifti(
    path: Path, volume: np.ndarray, spacing: tuple[float, ...] = SPACING, unit: str = "mm"
) -> Path:
    """NIfTI stores (x, y, z) = (columns, rows, slices); pixdim follows the affine's diagonal."""
    slice_size, row_size, col_size = spacing
    image = nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([col_size, row_size, slice_size, 1.0]))
    image.header.set_xyzt_units(unit)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("name", ["sweep.nii", "sweep.nii.gz"])
def test_nifti_round_trip_keeps_values_spacing_and_axis_order(tmp_path: Path, name: str) -> None:
    volume = read_volume(write_nifti(tmp_path / name, asymmetric_volume()))
    np.testing.assert_array_equal(volume.voxels, asymmetric_volume())
    assert volume.voxels.dtype == np.uint16
    assert volume.spacing_mm == pytest.approx(SPACING)
    assert (volume.source, volume.notes, volume.path) == ("NIfTI", (), tmp_path / name)


@pytest.mark.parametrize(("unit", "per_mm"), [("meter", 1e-3), ("micron", 1e3)])
def test_nifti_in_metres_or_microns_is_converted_to_mm(tmp_path: Path, unit: str, per_mm: float) -> None:
    stored = tuple(s * per_mm for s in SPACING)
    volume = read_volume(write_nifti(tmp_path / "sweep.nii.gz", asymmetric_volume(), stored, unit))
    assert volume.spacing_mm == pytest.approx(SPACING)


def test_nifti_without_units_is_taken_as_mm_and_noted(tmp_path: Path) -> None:
    volume = read_volume(write_nifti(tmp_path / "sweep.nii", asymmetric_volume(), unit="unknown"))
    assert volume.spacing_mm == pytest.approx(SPACING)
    assert volume.notes == ("xyzt_units does not state the unit: spacing taken as mm",)


@pytest.mark.parametrize("compressed", [False, True])
def test_nifti_with_zero_pixdim_is_refused_not_given_1_mm(tmp_path: Path, compressed: bool) -> None:
    plain = write_nifti(tmp_path / "plain.nii", asymmetric_volume())
    data = bytearray(plain.read_bytes())
    data[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4] (nibabel itself would repair them to 1)
    path = tmp_path / ("zero.nii.gz" if compressed else "zero.nii")
    path.write_bytes(gzip.compress(bytes(data)) if compressed else bytes(data))
    message = refused(path)
    assert "no usable voxel spacing: pixdim[1:4]" in message and "does not guess 1 mm" in message


def test_a_2d_nifti_is_not_a_volume(tmp_path: Path) -> None:
    path = tmp_path / "frame.nii"
    nib.save(nib.Nifti1Image(np.zeros((16, 12), np.uint8), np.eye(4)), path)
    assert "a single frame, not a volume" in refused(path)


def test_nifti_with_a_trailing_time_axis_of_one_is_a_volume(tmp_path: Path) -> None:
    path = tmp_path / "sweep.nii"
    image = nib.Nifti1Image(asymmetric_volume().transpose(2, 1, 0)[..., None], np.diag([0.2, 0.3, 1.5, 1.0]))
    nib.save(image, path)
    np.testing.assert_array_equal(read_volume(path).voxels, asymmetric_volume())


# ----------------------------------------------------------------------------------------------- NRRD


@pytest.mark.parametrize(
    ("name", "header"),
    [
        # pynrrd's C order writes the array's last axis (columns) as the file's first, fastest axis
        ("sweep.nrrd", {"space directions": np.diag(SPACING[::-1]), "space units": ["mm"] * 3}),
        ("sweep.nhdr", {"spacings": list(SPACING[::-1])}),  # detached header + data file; no unit: mm
    ],
)
def test_nrrd_round_trip_keeps_values_spacing_and_axis_order(tmp_path: Path, name: str, header: dict) -> None:
    path = tmp_path / name
    nrrd.write(
        str(path), asymmetric_volume(), header, index_order="C", detached_header=name.endswith(".nhdr")
    )
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.voxels, asymmetric_volume())
    assert volume.spacing_mm == pytest.approx(SPACING)
    assert volume.source == "NRRD"


def test_nrrd_space_units_in_metres_are_converted(tmp_path: Path) -> None:
    path = tmp_path / "sweep.nrrd"
    header = {"space directions": np.diag(SPACING[::-1]) / 1000, "space units": ["m"] * 3}
    nrrd.write(str(path), asymmetric_volume(), header, index_order="C")
    volume = read_volume(path)
    assert volume.spacing_mm == pytest.approx(SPACING) and volume.notes == ()


def test_nrrd_without_spacing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.nrrd"
    nrrd.write(str(path), asymmetric_volume(), index_order="C")
    assert "neither 'space directions' nor 'spacings'" in refused(path)


# ----------------------------------------------------------------------------------------------- DICOM


def write_sweep_dicom(path: Path, edit: Callable[[Dataset], None], **kwargs) -> Path:
    """A 5-frame ultrasound DICOM (tests/dicom_files.py) of the asymmetric volume's low bytes, changed by
    ``edit`` and saved again."""
    pixels = (asymmetric_volume() % 256).astype(np.uint8)
    write_us_dicom(path, pixels=pixels, **kwargs)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def per_frame_positions(z_mm: list[float]) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        items = []
        for z in z_mm:
            position, item = Dataset(), Dataset()
            position.ImagePositionPatient = [0.0, 0.0, z]
            item.PlanePositionSequence = DicomSequence([position])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)

    return edit


def spacing_between_slices(ds: Dataset) -> None:
    ds.SpacingBetweenSlices = "1.5"


def test_dicom_with_spacing_between_slices_is_a_volume(tmp_path: Path) -> None:
    path = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices, delta_cm=(0.02, 0.02))
    volume = read_volume(path)
    expected = (asymmetric_volume() % 256).astype(np.uint8)
    np.testing.assert_array_equal(volume.voxels, expected)
    assert volume.spacing_mm == pytest.approx((1.5, 0.2, 0.2))  # PhysicalDeltaX/Y 0.02 cm
    assert (volume.source, volume.notes) == ("DICOM", ())
    bmode = read_volume_bmode(path)
    assert bmode.voxels.dtype == np.float32 and bmode.spacing_mm == volume.spacing_mm
    np.testing.assert_allclose(bmode.voxels, expected / 255.0, atol=1e-6)


def test_dicom_with_per_frame_positions_takes_their_distance(tmp_path: Path) -> None:
    edit = per_frame_positions([10.0, 10.8, 11.6, 12.4, 13.2])
    volume = read_volume(write_sweep_dicom(tmp_path / "sweep.dcm", edit, pixel_spacing_mm=0.25))
    assert volume.spacing_mm == pytest.approx((0.8, 0.25, 0.25))
    np.testing.assert_array_equal(volume.voxels, (asymmetric_volume() % 256).astype(np.uint8))


def test_dicom_with_uneven_positions_is_refused(tmp_path: Path) -> None:
    edit = per_frame_positions([0.0, 0.8, 1.6, 2.8, 3.6])  # one gap of 1.2 mm among 0.8 mm gaps
    message = refused(write_sweep_dicom(tmp_path / "sweep.dcm", edit, pixel_spacing_mm=0.25))
    assert "not evenly spaced" in message and "0.8 to 1.2 mm" in message


def test_dicom_slice_thickness_is_the_last_resort_and_noted(tmp_path: Path) -> None:
    def slice_thickness(ds: Dataset) -> None:
        ds.SliceThickness = "2"

    volume = read_volume(write_sweep_dicom(tmp_path / "sweep.dcm", slice_thickness, pixel_spacing_mm=0.25))
    assert volume.spacing_mm == pytest.approx((2.0, 0.25, 0.25))
    assert any("SliceThickness (2 mm)" in note and "contiguous" in note for note in volume.notes)


def test_dicom_cine_without_slice_spacing_is_refused(tmp_path: Path) -> None:
    path = write_sweep_dicom(tmp_path / "cine.dcm", lambda ds: None, delta_cm=(0.02, 0.02), frame_time_ms=33)
    assert CINE_REASON in refused(path)
    assert CINE_REASON in refused(path, read_volume_bmode)


def test_dicom_without_pixel_size_is_refused(tmp_path: Path) -> None:
    path = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices)
    assert "no pixel size" in refused(path)


def test_single_frame_dicom_is_not_a_volume(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "still.dcm", pixel_spacing_mm=0.25)
    assert "a single DICOM frame, not a volume" in refused(path)


def test_kpa_from_dicom_is_refused(tmp_path: Path) -> None:
    path = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices, delta_cm=(0.02, 0.02))
    assert "grey levels, not kPa" in refused(path, read_volume_kpa)


# ------------------------------------------------------------------------------------------------- npy


def test_npy_takes_the_callers_spacing(tmp_path: Path) -> None:
    path = tmp_path / "sweep.npy"
    np.save(path, asymmetric_volume())
    volume = read_volume(path, spacing_mm=SPACING)
    np.testing.assert_array_equal(volume.voxels, asymmetric_volume())
    assert (volume.spacing_mm, volume.source) == (SPACING, "npy")


def test_npy_without_spacing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.npy"
    np.save(path, asymmetric_volume())
    assert "pass spacing_mm=(slice_mm, row_mm, col_mm)" in refused(path)
    assert "three positive numbers" in refused(path, spacing_mm=(1.5, 0.0, 0.2))


def test_a_2d_npy_is_not_a_volume(tmp_path: Path) -> None:
    path = tmp_path / "frame.npy"
    np.save(path, np.zeros((12, 16), np.uint8))
    assert "a single frame, not a volume" in refused(path, spacing_mm=SPACING)


# ------------------------------------------------------------------------------ the caller's spacing


def test_callers_spacing_must_agree_with_the_files(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "sweep.nii", asymmetric_volume())
    assert read_volume(path, spacing_mm=(1.5, 0.3, 0.2001)).spacing_mm == pytest.approx(SPACING)  # rounding
    message = refused(path, spacing_mm=(0.2, 0.3, 1.5))  # given in the file's (x, y, z) order by mistake
    assert "passed, but the file declares (1.5, 0.3, 0.2) mm" in message


def test_unsupported_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "sweep.mha").write_bytes(b"ObjectType = Image\n")
    assert "unsupported volume file type" in refused(tmp_path / "sweep.mha")
    assert refused(tmp_path / "missing.nii").endswith("file not found")


# ------------------------------------------------------------------------------------------- values


def test_bmode_is_scaled_like_the_2d_reader(tmp_path: Path) -> None:
    stored = (asymmetric_volume() % 256).astype(np.uint8)
    volume = read_volume_bmode(write_nifti(tmp_path / "sweep.nii", stored))
    assert volume.voxels.dtype == np.float32
    np.testing.assert_allclose(volume.voxels, stored / 255.0, atol=1e-6)
    twelve_bit = read_volume_bmode(write_nifti(tmp_path / "deep.nii", asymmetric_volume()))  # max 959
    np.testing.assert_allclose(twelve_bit.voxels, asymmetric_volume() / 4095.0, atol=1e-6)
    assert any("read as 12-bit data" in note for note in twelve_bit.notes)  # the guess is noted


def test_mask_keeps_labels_as_uint8(tmp_path: Path) -> None:
    labels = (asymmetric_volume() % 3).astype(np.uint8)
    volume = read_volume_mask(write_nifti(tmp_path / "mask.nii.gz", labels))
    assert volume.voxels.dtype == np.uint8
    np.testing.assert_array_equal(volume.voxels, labels)


def test_mask_of_whole_number_floats_is_read_and_noted_fractions_refused(tmp_path: Path) -> None:
    labels = (asymmetric_volume() % 3).astype(np.float32)
    volume = read_volume_mask(write_nifti(tmp_path / "mask.nii", labels))
    np.testing.assert_array_equal(volume.voxels, labels.astype(np.uint8))
    assert volume.notes == ("labels stored as float32 (whole numbers): read as integers",)
    assert "whole-number labels" in refused(write_nifti(tmp_path / "soft.nii", labels / 2), read_volume_mask)


def test_mask_values_above_255_are_refused(tmp_path: Path) -> None:
    assert "outside 0..255" in refused(write_nifti(tmp_path / "m.nii", asymmetric_volume()), read_volume_mask)


def test_kpa_keeps_nan_and_converts_shear_speed(tmp_path: Path) -> None:
    kpa = asymmetric_volume().astype(np.float32) / 10
    kpa[2, 3, 4] = np.nan  # no signal
    path = tmp_path / "swe.nrrd"
    nrrd.write(str(path), kpa, {"spacings": list(SPACING[::-1])}, index_order="C")
    volume = read_volume_kpa(path)
    assert volume.voxels.dtype == np.float32 and np.isnan(volume.voxels[2, 3, 4])
    np.testing.assert_array_equal(volume.voxels, kpa)
    speed = read_volume_kpa(path, unit="m/s").voxels  # E = 3 * rho * c^2: 3 m/s -> 27 kPa
    np.testing.assert_allclose(speed[0, 0, 3], 3 * 0.3**2, rtol=1e-5)


# --------------------------------------------------------------------------- slice by slice (open_volume)

WHOLE_READERS = {"bmode": read_volume_bmode, "kpa": read_volume_kpa, "mask": read_volume_mask}


def write_any(path: Path, volume: np.ndarray) -> Path:
    """``volume`` (Z, H, W) in the format ``path``'s name says, with SPACING."""
    name = path.name
    if name.endswith(".npy"):
        np.save(path, volume)
    elif name.endswith((".nii", ".nii.gz")):
        write_nifti(path, volume)
    else:
        header = {"space directions": np.diag(SPACING[::-1]), "space units": ["mm"] * 3}
        nrrd.write(str(path), volume, header, index_order="C", detached_header=name.endswith(".nhdr"))
    return path


def assert_slices_match_whole(path: Path, values: str, **kwargs) -> None:
    """Every slice, and shape, spacing, source and notes, as the whole-volume reader gives them."""
    whole_kwargs = dict(kwargs)
    if "elasto_unit" in whole_kwargs:
        whole_kwargs["unit"] = whole_kwargs.pop("elasto_unit")
    whole = WHOLE_READERS[values](path, **whole_kwargs)
    with open_volume(path, values=values, **kwargs) as slices:
        assert (slices.path, slices.shape, slices.spacing_mm) == (
            whole.path,
            whole.voxels.shape,
            whole.spacing_mm,
        )
        assert (slices.source, slices.notes, len(slices)) == (
            whole.source,
            whole.notes,
            whole.voxels.shape[0],
        )
        for z in (2, 0, len(slices) - 1, 1):  # out of order too: a .nii.gz seeks back
            plane = slices.slice(z)
            assert plane.dtype == whole.voxels.dtype and plane.flags.c_contiguous
            np.testing.assert_array_equal(plane, whole.voxels[z])
        np.testing.assert_array_equal(np.stack(list(slices)), whole.voxels)
        np.testing.assert_array_equal(slices.slice(-1), whole.voxels[-1])


FILE_NAMES = ["sweep.npy", "sweep.nii", "sweep.nii.gz", "sweep.nrrd", "sweep.nhdr"]


def spacing_for(name: str) -> dict:
    return {"spacing_mm": SPACING} if name.endswith(".npy") else {}


@pytest.mark.parametrize("name", FILE_NAMES)
@pytest.mark.parametrize(
    "stored",
    [
        (asymmetric_volume() % 256).astype(np.uint8),
        asymmetric_volume(),  # uint16 up to 959: read as 12-bit, noted
        (asymmetric_volume() / 959.0).astype(np.float32),  # floats in [0, 1]
        asymmetric_volume().astype(np.float64) / 4,  # floats up to 240: 0..255, noted
    ],
    ids=["uint8", "uint16", "float01", "float255"],
)
def test_slices_are_the_whole_readers_bmode(tmp_path: Path, name: str, stored: np.ndarray) -> None:
    assert_slices_match_whole(write_any(tmp_path / name, stored), "bmode", **spacing_for(name))


@pytest.mark.parametrize("name", FILE_NAMES)
@pytest.mark.parametrize(
    "stored",
    [
        (asymmetric_volume() % 7).astype(np.uint8),
        (asymmetric_volume() % 7).astype(np.float32),  # whole numbers as floats: noted
        (asymmetric_volume() % 200).astype(np.int16),
    ],
    ids=["uint8", "float", "int16"],
)
def test_slices_are_the_whole_readers_mask(tmp_path: Path, name: str, stored: np.ndarray) -> None:
    assert_slices_match_whole(write_any(tmp_path / name, stored), "mask", **spacing_for(name))


@pytest.mark.parametrize("name", FILE_NAMES)
@pytest.mark.parametrize("unit", ["kPa", "m/s"])
def test_slices_are_the_whole_readers_kpa(tmp_path: Path, name: str, unit: str) -> None:
    kpa = asymmetric_volume().astype(np.float32) / 10
    kpa[2, 3, 4] = kpa[0, 0, 0] = np.nan  # no signal
    assert_slices_match_whole(write_any(tmp_path / name, kpa), "kpa", elasto_unit=unit, **spacing_for(name))


def test_slices_of_scaled_nifti_are_the_whole_readers(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "sweep.nii.gz", (asymmetric_volume() % 256).astype(np.uint8))
    image = nib.load(path)
    image.header.set_slope_inter(0.5, 3.0)  # stored values * 0.5 + 3: kPa as some tools save them
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj.get_unscaled()), image.affine, image.header), path)
    assert_slices_match_whole(path, "kpa")


def test_dicom_slices_are_the_whole_readers(tmp_path: Path) -> None:
    path = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices, delta_cm=(0.02, 0.02))
    assert_slices_match_whole(path, "bmode")
    assert_slices_match_whole(path, "mask")


def test_dicom_bmode_decodes_only_the_frame_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tpnet.core.volume_io as volume_io

    path = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices, delta_cm=(0.02, 0.02))
    decoded: list[int] = []
    real = volume_io.read_dicom_frame

    def counting(path, index, header):
        decoded.append(index)
        return real(path, index, header)

    monkeypatch.setattr(volume_io, "read_dicom_frame", counting)
    with open_volume(path) as slices:
        assert decoded == []
        slices.slice(3)
    assert decoded == [3]


def test_nifti_slices_read_only_their_own_bytes(tmp_path: Path) -> None:
    # A .nii cut short in its last slice: the whole reader fails, the slices before it still read.
    path = write_nifti(tmp_path / "sweep.nii", asymmetric_volume().astype(np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    assert "unreadable NIfTI" in refused(path, read_volume_kpa)
    with open_volume(path, values="kpa") as slices:
        np.testing.assert_array_equal(slices.slice(3), asymmetric_volume()[3].astype(np.float32))
        with pytest.raises(FrameReadError) as info:
            slices.slice(4)
    assert str(info.value).startswith(f"{path}: unreadable NIfTI (slice 4")


@pytest.mark.parametrize(
    ("name", "stored", "values"),
    [
        ("frac.nii", (asymmetric_volume() % 3).astype(np.float32) / 2, "mask"),
        ("big.nii", asymmetric_volume(), "mask"),  # labels above 255
        ("neg.nrrd", asymmetric_volume().astype(np.int16) - 3, "bmode"),  # negative grey levels
        ("deep.npy", asymmetric_volume().astype(np.int64) * 100, "bmode"),  # beyond 16 bits
        ("bool.npy", asymmetric_volume() % 2 == 0, "mask"),
    ],
)
def test_whole_volume_errors_come_on_opening_with_the_same_message(
    tmp_path: Path, name: str, stored: np.ndarray, values: str
) -> None:
    stored = stored.copy()
    if name == "neg.nrrd":
        stored[4, 11, 15] = -3  # in the last slice only: found by the pass over every slice
    path = write_any(tmp_path / name, stored)
    whole = refused(path, WHOLE_READERS[values], **spacing_for(name))
    assert refused(path, open_volume, values=values, **spacing_for(name)) == whole


def test_nan_in_the_last_slice_of_a_bmode_volume_is_refused_on_opening(tmp_path: Path) -> None:
    stored = asymmetric_volume().astype(np.float32) / 959
    stored[-1, -1, -1] = np.nan
    path = write_any(tmp_path / "sweep.nii.gz", stored)
    assert refused(path, open_volume) == refused(path, read_volume_bmode)


def test_open_volume_refuses_as_the_whole_readers_do(tmp_path: Path) -> None:
    npy = write_any(tmp_path / "sweep.npy", asymmetric_volume())
    assert refused(npy, open_volume) == refused(npy, read_volume)  # .npy without spacing
    nii = write_nifti(tmp_path / "sweep.nii", asymmetric_volume())
    assert refused(nii, open_volume, spacing_mm=(0.2, 0.3, 1.5)) == refused(
        nii, read_volume, spacing_mm=(0.2, 0.3, 1.5)
    )
    dcm = write_sweep_dicom(tmp_path / "sweep.dcm", spacing_between_slices, delta_cm=(0.02, 0.02))
    assert refused(dcm, open_volume, values="kpa") == refused(dcm, read_volume_kpa)
    assert refused(tmp_path / "missing.nii", open_volume).endswith("file not found")
    with pytest.raises(ValueError, match="values must be one of bmode, kpa, mask"):
        open_volume(nii, values="labels")
    with pytest.raises(ValueError, match="unknown elastography unit"):
        open_volume(nii, values="kpa", elasto_unit="Pa")


def test_volume_slices_are_new_arrays_and_closing_ends_reading(tmp_path: Path) -> None:
    path = write_any(tmp_path / "sweep.nrrd", (asymmetric_volume() % 7).astype(np.uint8))  # held whole
    slices = open_volume(path, values="mask")
    slices.slice(1)[:] = 99
    assert slices.slice(1).max() < 7
    with pytest.raises(IndexError, match="out of range: the volume has 5 slices"):
        slices.slice(5)
    slices.close()
    slices.close()  # again: nothing
    with pytest.raises(ValueError, match="closed"):
        slices.slice(0)


@pytest.mark.parametrize("layout", ["fortran", "big-endian"])
def test_npy_slices_of_any_layout_are_the_whole_readers(tmp_path: Path, layout: str) -> None:
    stored = asymmetric_volume()
    stored = np.asfortranarray(stored) if layout == "fortran" else stored.astype(">u2")
    path = tmp_path / "sweep.npy"
    np.save(path, stored)
    for values in ("bmode", "mask", "kpa"):
        if values == "mask":
            np.save(path, (stored % 200).astype(stored.dtype))
        assert_slices_match_whole(path, values, spacing_mm=SPACING)


def test_npy_cut_after_opening_names_the_slice(tmp_path: Path) -> None:
    path = write_any(tmp_path / "sweep.npy", asymmetric_volume())
    with open_volume(path, values="kpa", spacing_mm=SPACING) as slices:
        path.write_bytes(path.read_bytes()[:-100])  # e.g. a copy still arriving
        np.testing.assert_array_equal(slices.slice(0), asymmetric_volume()[0].astype(np.float32))
        with pytest.raises(FrameReadError, match=r"unreadable \.npy \(slice 4: the file ends before it\)"):
            slices.slice(4)


def test_a_cache_reads_each_slice_of_a_sliding_window_once(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "sweep.nii.gz", (asymmetric_volume() % 256).astype(np.uint8))
    whole = read_volume_bmode(path).voxels
    with open_volume(path, cache_slices=3) as slices:
        read: list[int] = []
        underlying = slices._read_slice

        def counting(z: int) -> np.ndarray:
            read.append(z)
            return underlying(z)

        slices._read_slice = counting
        for z in range(len(slices)):  # a window of one neighbour on each side, as 2.5-D context reads it
            for neighbour in (z, z - 1, z + 1):
                if 0 <= neighbour < len(slices):
                    np.testing.assert_array_equal(slices.slice(neighbour), whole[neighbour])
        assert read == [0, 1, 2, 3, 4]
        slices.slice(4)[:] = 7  # a copy: the cached slice stays as read
        np.testing.assert_array_equal(slices.slice(4), whole[4])
    with pytest.raises(ValueError, match="cache_slices must be"):
        open_volume(path, cache_slices=-1)
