"""Scanner DICOM reading (tpnet.core.dicom) against real files: ones written with pydicom here
(tests/dicom_files.py) and the real SonoSite and Philips ultrasound files pydicom's wheel ships."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_files import (
    default_pixels,
    palette_lut,
    philips_palette_path,
    pydicom_test_file,
    sonosite_cine_path,
    us_region,
    write_dicom_needing_missing_decoder,
    write_dicom_without_pixels,
    write_not_dicom,
    write_truncated_dicom,
    write_undecodable_dicom,
    write_us_dicom,
)
from tpnet.core.dicom import DicomHeader, is_dicom_file, read_dicom_frame, read_dicom_header
from tpnet.core.io import FrameReadError

LUMA = np.array([0.299, 0.587, 0.114])


def refused(path: Path, call=read_dicom_header, *args) -> str:
    """The FrameReadError message, checked to start with the path."""
    with pytest.raises(FrameReadError) as info:
        call(path, *args)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# ------------------------------------------------------------------------------------------ recognition


def test_is_dicom_file_by_suffix_or_marker(tmp_path: Path) -> None:
    bare = write_us_dicom(tmp_path / "IM000001.dcm").rename(tmp_path / "IM000001")  # DICOMDIR-style name
    (tmp_path / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (tmp_path / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + bytes(64))
    assert is_dicom_file(bare)
    assert is_dicom_file(tmp_path / "scan.DCM") and is_dicom_file(tmp_path / "scan.dicom")  # suffix alone
    assert not is_dicom_file(tmp_path / "frame.png")
    assert not is_dicom_file(tmp_path / "DICOMDIR")  # the media index holds no image
    assert not is_dicom_file(tmp_path / "missing")


# ----------------------------------------------------------------------------------------- photometrics


def test_monochrome2_8_bit_is_scaled_to_unit(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "a.dcm")
    frame = read_dicom_frame(path)
    stored = default_pixels(1, 24, 32)[0]
    assert frame.grey.dtype == np.float32 and frame.grey.shape == (24, 32) and frame.rgb is None
    np.testing.assert_allclose(frame.grey, stored / 255.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[[0, 255], [51, 204]]], np.uint8)
    frame = read_dicom_frame(write_us_dicom(tmp_path / "a.dcm", photometric="MONOCHROME1", pixels=pixels))
    np.testing.assert_allclose(frame.grey, [[1.0, 0.0], [0.8, 0.2]], atol=1e-6)


@pytest.mark.parametrize(
    ("bits_stored", "photometric"), [(16, "MONOCHROME2"), (12, "MONOCHROME2"), (12, "MONOCHROME1")]
)
def test_16_bit_grey_is_divided_by_its_stored_range(
    tmp_path: Path, bits_stored: int, photometric: str
) -> None:
    top = 2**bits_stored - 1
    pixels = np.array([[[0, top], [top // 4, top // 2]]], np.uint16)
    path = write_us_dicom(
        tmp_path / "a.dcm", photometric=photometric, bits=16, bits_stored=bits_stored, pixels=pixels
    )
    header = read_dicom_header(path)
    grey = read_dicom_frame(path, header=header).grey
    expected = pixels[0] / top
    expected = 1.0 - expected if photometric == "MONOCHROME1" else expected
    assert (header.bits_allocated, header.bits_stored) == (16, bits_stored)
    np.testing.assert_allclose(grey, expected, atol=1e-6)  # a 12-bit frame is not near-black


def _paired_rgb(frames: int = 2) -> np.ndarray:
    """RGB constant over each pair of columns, so 4:2:2 chroma subsampling loses nothing."""
    rgb = default_pixels(frames, 8, 16, "RGB")
    return np.repeat(rgb[:, :, ::2], 2, axis=2)


@pytest.mark.parametrize(("photometric", "tolerance"), [("RGB", 0), ("YBR_FULL", 2), ("YBR_FULL_422", 2)])
def test_colour_frames_give_rgb_and_luma(tmp_path: Path, photometric: str, tolerance: int) -> None:
    rgb = _paired_rgb()
    path = write_us_dicom(tmp_path / "a.dcm", photometric=photometric, pixels=rgb)
    frame = read_dicom_frame(path, 1)
    assert frame.rgb is not None and frame.rgb.dtype == np.uint8 and frame.rgb.shape == (8, 16, 3)
    assert np.abs(frame.rgb.astype(int) - rgb[1]).max() <= tolerance  # YBR converted back to RGB
    np.testing.assert_allclose(frame.grey, (frame.rgb / 255.0) @ LUMA, atol=1 / 255)  # BT.601 luma
    assert frame.grey.dtype == np.float32


def test_palette_colour_applies_the_files_table(tmp_path: Path) -> None:
    indices = np.array([[[0, 10, 200], [255, 128, 7]]], np.uint8)
    frame = read_dicom_frame(write_us_dicom(tmp_path / "a.dcm", photometric="PALETTE COLOR", pixels=indices))
    expected = (palette_lut()[indices[0]] / 257).astype(np.uint8)  # 16-bit table entries i * 257
    np.testing.assert_array_equal(frame.rgb, expected)
    np.testing.assert_allclose(frame.grey, (expected / 255.0) @ LUMA, atol=1e-5)


@pytest.mark.parametrize(
    ("photometric", "transfer_syntax", "mean_error"),
    [
        ("MONOCHROME2", JPEGBaseline8Bit, 2.0),
        ("YBR_FULL_422", JPEGBaseline8Bit, 4.0),
        ("RGB", RLELossless, 0.0),
        ("MONOCHROME2", ImplicitVRLittleEndian, 0.0),
        ("YBR_FULL", DeflatedExplicitVRLittleEndian, 1.0),
        ("MONOCHROME2", JPEG2000Lossless, 0.0),
        ("YBR_RCT", JPEG2000Lossless, 0.0),  # the decoder undoes the reversible colour transform
    ],
)
def test_transfer_syntaxes_of_the_base_install_decode_the_asked_frame(
    tmp_path: Path, photometric: str, transfer_syntax: str, mean_error: float
) -> None:
    path = write_us_dicom(
        tmp_path / "a.dcm", frames=3, photometric=photometric, transfer_syntax=transfer_syntax
    )
    header = read_dicom_header(path)
    stored = default_pixels(3, 24, 32, photometric)
    frame = read_dicom_frame(path, 2, header)
    got = frame.grey * 255 if frame.rgb is None else frame.rgb.astype(float)
    errors = [np.abs(got - stored[i]).mean() for i in range(3)]
    assert header.n_frames == 3 and header.transfer_syntax_uid == transfer_syntax
    assert errors[2] <= mean_error and errors[2] < min(errors[:2])  # frame 2, not frame 0


# ------------------------------------------------------------------------------------------- frames


def test_frame_index_out_of_range_says_how_many_frames(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "cine.dcm", frames=3)
    header = read_dicom_header(path)
    assert "frame 3 is out of range: the file has 3 frame(s) (0 to 2)" in refused(
        path, read_dicom_frame, 3, header
    )
    assert "frame -1 is out of range" in refused(path, read_dicom_frame, -1)
    single = write_us_dicom(tmp_path / "still.dcm")
    assert "has 1 frame(s) (only 0)" in refused(single, read_dicom_frame, 1)


def test_header_read_decodes_no_pixel(tmp_path: Path) -> None:
    path = write_undecodable_dicom(tmp_path / "garbage.dcm", frames=2)  # sound header, garbage JPEG frames
    header = read_dicom_header(path)
    assert (header.n_frames, header.rows, header.columns) == (2, 24, 32)
    assert "frame 1 cannot be decoded (JPEG Baseline (Process 1))" in refused(
        path, read_dicom_frame, 1, header
    )


def test_one_frame_is_read_without_the_others(tmp_path: Path) -> None:
    frames, side = 100, 96
    path = write_us_dicom(tmp_path / "cine.dcm", pixels=np.full((frames, side, side), 7, np.uint8))
    all_pixels = frames * side * side
    tracemalloc.start()
    try:
        header = read_dicom_header(path)
        header_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        frame = read_dicom_frame(path, 77, header)
        frame_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert float(frame.grey[0, 0]) == pytest.approx(7 / 255)
    assert header_peak < all_pixels / 10  # the pixel data is skipped, not read
    assert frame_peak < all_pixels / 4  # one frame (uint8 + float32 copies), not the cine


# ------------------------------------------------------------------------------------------- spacing


def test_ultrasound_region_gives_spacing_and_image_box(tmp_path: Path) -> None:
    path = write_us_dicom(
        tmp_path / "a.dcm", region=(4, 2, 28, 20), delta_cm=(0.02, 0.02), pixel_spacing_mm=0.5
    )
    header = read_dicom_header(path)
    assert header.spacing_mm == pytest.approx(0.2)  # cm -> mm, and the region wins over PixelSpacing
    assert header.spacing_source == "ultrasound region"
    assert header.image_box == (4, 2, 28, 20)  # DICOM's inclusive Max (27, 19) made exclusive
    assert header.notes == ()


def test_pixel_spacing_when_there_is_no_region(tmp_path: Path) -> None:
    header = read_dicom_header(write_us_dicom(tmp_path / "a.dcm", pixel_spacing_mm=(0.3, 0.3)))
    assert (header.spacing_mm, header.spacing_source, header.image_box) == (
        pytest.approx(0.3),
        "PixelSpacing",
        None,
    )
    bare = read_dicom_header(write_us_dicom(tmp_path / "b.dcm"))
    assert (bare.spacing_mm, bare.spacing_source, bare.image_box) == (None, "", None)


def test_region_without_cm_falls_back_to_pixel_spacing_and_says_so(tmp_path: Path) -> None:
    region = us_region((0, 0, 16, 12), (0.02, 0.02), units=(0, 0))
    header = read_dicom_header(
        write_us_dicom(tmp_path / "a.dcm", extra_regions=[region], pixel_spacing_mm=0.25)
    )
    assert (header.spacing_mm, header.spacing_source) == (pytest.approx(0.25), "PixelSpacing")
    assert header.image_box == (0, 0, 16, 12)  # the region still says where the image is
    assert any("not cm" in note for note in header.notes), header.notes


def test_largest_2d_region_wins_and_differing_ones_are_noted(tmp_path: Path) -> None:
    small = us_region((0, 0, 8, 8), (0.05, 0.05))
    large = us_region((8, 2, 32, 24), (0.01, 0.01))
    same = us_region((0, 20, 4, 24), (0.01, 0.01))
    waveform = us_region((0, 0, 32, 24), (0.5, 0.0), spatial_format=4, units=(4, 0))  # not an image
    header = read_dicom_header(
        write_us_dicom(tmp_path / "a.dcm", extra_regions=[small, large, same, waveform])
    )
    assert header.spacing_mm == pytest.approx(0.1) and header.image_box == (8, 2, 32, 24)
    assert len(header.notes) == 1 and "region 1 (0, 0, 8, 8): 0.5 x 0.5 mm" in header.notes[0]
    assert "region 3" not in header.notes[0]  # same pixel size: nothing to report
    agreeing = read_dicom_header(write_us_dicom(tmp_path / "b.dcm", extra_regions=[large, same]))
    assert agreeing.notes == ()


def test_anisotropic_pixels_are_refused_naming_both_sizes(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "a.dcm", delta_cm=(0.02, 0.03))
    message = refused(path)
    assert "anisotropic pixels" in message and "0.2 mm" in message and "0.3 mm" in message
    assert "square pixels" in message
    spacing = write_us_dicom(tmp_path / "b.dcm", pixel_spacing_mm=(0.3, 0.2))
    assert "row spacing 0.3 mm" in refused(spacing) and "column spacing 0.2 mm" in refused(spacing)


def test_nearly_square_pixels_use_the_mean(tmp_path: Path) -> None:
    header = read_dicom_header(write_us_dicom(tmp_path / "a.dcm", delta_cm=(0.0200, 0.0203)))  # 1.5 %
    assert header.spacing_mm == pytest.approx(0.2015)


def test_region_box_is_clipped_to_the_frame(tmp_path: Path) -> None:
    header = read_dicom_header(
        write_us_dicom(tmp_path / "a.dcm", region=(10, 5, 50, 40), delta_cm=(0.02, 0.02))
    )
    assert header.image_box == (10, 5, 32, 24)
    assert any("clipped to (10, 5, 32, 24)" in note for note in header.notes)
    outside = read_dicom_header(
        write_us_dicom(tmp_path / "b.dcm", region=(40, 30, 50, 40), delta_cm=(0.02, 0.02))
    )
    assert (outside.spacing_mm, outside.image_box) == (None, None)
    assert any("outside the 32x24 frame" in note for note in outside.notes)


# --------------------------------------------------------------------------------------- frame times


def test_frame_times_from_frame_time(tmp_path: Path) -> None:
    header = read_dicom_header(write_us_dicom(tmp_path / "a.dcm", frames=4, frame_time_ms=40))
    assert header.frame_times_s == pytest.approx((0.0, 0.04, 0.08, 0.12))


def test_frame_times_from_frame_time_vector(tmp_path: Path) -> None:
    path = write_us_dicom(
        tmp_path / "a.dcm", frames=4, frame_time_vector_ms=[0, 30, 40, 30], frame_time_ms=99
    )
    assert read_dicom_header(path).frame_times_s == pytest.approx((0.0, 0.03, 0.07, 0.10))  # the vector wins


def test_frame_time_vector_of_the_wrong_length_is_noted(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "a.dcm", frames=3, frame_time_vector_ms=[0, 30], frame_time_ms=50)
    header = read_dicom_header(path)
    assert header.frame_times_s == pytest.approx((0.0, 0.05, 0.10))
    assert any("FrameTimeVector has 2 usable values for 3 frames" in note for note in header.notes)
    assert read_dicom_header(write_us_dicom(tmp_path / "b.dcm", frames=2)).frame_times_s is None


# -------------------------------------------------------------------------------------- broken files


def test_not_dicom_and_missing_files_are_refused(tmp_path: Path) -> None:
    assert "not a DICOM file" in refused(write_not_dicom(tmp_path / "report.dcm"))
    assert "file not found" in refused(tmp_path / "missing.dcm")


@pytest.mark.parametrize("where", ["pixels", "header", "encapsulated"])
def test_truncated_files_are_refused(tmp_path: Path, where: str) -> None:
    assert "truncated" in refused(write_truncated_dicom(tmp_path / "cut.dcm", where))


def test_truncated_deflated_file_is_refused(tmp_path: Path) -> None:
    path = write_us_dicom(tmp_path / "a.dcm", frames=3, transfer_syntax=DeflatedExplicitVRLittleEndian)
    path.write_bytes(path.read_bytes()[:-100])
    assert "truncated" in refused(path)


def test_bare_data_set_without_file_meta_is_read(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(write_us_dicom(tmp_path / "a.dcm", frames=2))
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / "old.dcm"  # no preamble, no "DICM", no transfer syntax: an old export
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    header = read_dicom_header(path)
    assert (header.transfer_syntax, header.n_frames) == ("Implicit VR Little Endian", 2)
    np.testing.assert_allclose(
        read_dicom_frame(path, 1, header).grey, default_pixels(2, 24, 32)[1] / 255, atol=1e-6
    )


def test_file_without_pixel_data_is_refused(tmp_path: Path) -> None:
    assert "no pixel data (7FE0,0010)" in refused(write_dicom_without_pixels(tmp_path / "empty.dcm"))


def test_missing_decoder_names_the_syntax_and_what_to_install(tmp_path: Path) -> None:
    message = refused(write_dicom_needing_missing_decoder(tmp_path / "jls.dcm"))
    assert "JPEG-LS Lossless" in message and "1.2.840.10008.1.2.4.80" in message
    assert (
        "needs a decoder that is not installed" in message
        and "pip install pylibjpeg pylibjpeg-libjpeg" in message
    )


@pytest.mark.skipif(
    importlib.util.find_spec("pylibjpeg") is not None, reason="a 12-bit JPEG decoder is installed"
)
def test_12_bit_jpeg_needs_more_than_pillow() -> None:
    path = pydicom_test_file(
        "JPEG-lossy.dcm"
    )  # JPEG Extended, 12 bits stored; Pillow decodes 8-bit JPEG only
    message = refused(path)
    assert "JPEG Extended" in message and "12-bit" in message and "pip install" in message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"PhotometricInterpretation": "HSV"}, "photometric interpretation 'HSV' is not supported"),
        ({"BitsAllocated": 32, "BitsStored": 32, "HighBit": 31}, "bit depth not supported: BitsAllocated 32"),
        ({"PixelRepresentation": 1}, "signed pixel values"),
        ({"NumberOfFrames": 0}, "NumberOfFrames is"),
        ({"SamplesPerPixel": 3}, "MONOCHROME2 with 3 samples per pixel"),
    ],
)
def test_unsupported_pixel_formats_are_refused(tmp_path: Path, change: dict, reason: str) -> None:
    import pydicom

    path = write_us_dicom(tmp_path / "a.dcm", frames=2)
    ds = pydicom.dcmread(path)
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    assert reason in refused(path)


def test_native_pixels_shorter_than_the_frames_declared_are_refused(tmp_path: Path) -> None:
    import pydicom

    path = write_us_dicom(tmp_path / "a.dcm", frames=2)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 5
    ds.save_as(path)
    assert "truncated pixel data" in refused(path) and "5 frame(s)" in refused(path)


def test_frame_above_the_pixel_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPNET_MAX_FRAME_PIXELS", "100")
    assert "TPNET_MAX_FRAME_PIXELS" in refused(write_us_dicom(tmp_path / "a.dcm"))


# ------------------------------------------------------------------------------------- real scanners


def test_sonosite_cine() -> None:
    path = sonosite_cine_path()
    header = read_dicom_header(path)
    # From the file (pydicom's dump): 30 frames of 320x240, YBR_FULL_422 JPEG baseline, FrameTime 33.333 ms,
    # one 2-D region in cm, PhysicalDeltaX = PhysicalDeltaY = 0.05104970559477806 cm, RegionLocation
    # (84, 31)-(595, 414) inclusive: beyond the 320x240 frame, so clipped to (84, 31, 320, 240).
    assert isinstance(header, DicomHeader)
    assert (header.n_frames, header.rows, header.columns) == (30, 240, 320)
    assert header.photometric == "YBR_FULL_422" and header.transfer_syntax == "JPEG Baseline (Process 1)"
    assert header.spacing_mm == pytest.approx(0.5104970559477806, rel=1e-12)
    assert header.spacing_source == "ultrasound region"
    assert header.image_box == (84, 31, 320, 240)
    assert len(header.frame_times_s) == 30
    assert header.frame_times_s[1] == pytest.approx(0.033333) and header.frame_times_s[29] == pytest.approx(
        0.966657
    )
    assert any("clipped" in note for note in header.notes)
    first, last = read_dicom_frame(path, 0, header), read_dicom_frame(path, 29, header)
    assert first.rgb is not None and first.rgb.shape == (240, 320, 3)
    assert first.rgb[..., 1:].mean() < 60  # RGB of a dark grey scan, not raw Cb/Cr (about 128)
    assert first.grey.min() >= 0.0 and first.grey.max() <= 1.0 and first.grey.max() > 0.3
    assert not np.array_equal(first.rgb, last.rgb)


def test_philips_palette_frame() -> None:
    path = philips_palette_path()
    header = read_dicom_header(path)
    # From the file: 800x350 PALETTE COLOR, one frame; its 2-D region (120, 60)-(800, 518) in cm,
    # PhysicalDeltaX = PhysicalDeltaY = 0.02622878766196998 cm; a second region is a waveform (format 4).
    assert (header.n_frames, header.rows, header.columns) == (1, 350, 800)
    assert header.spacing_mm == pytest.approx(0.2622878766196998, rel=1e-12)
    assert header.image_box == (120, 60, 800, 350) and header.frame_times_s is None
    frame = read_dicom_frame(path, 0, header)
    assert frame.rgb is not None and frame.rgb.shape == (350, 800, 3) and frame.grey.shape == (350, 800)
    assert frame.grey.max() > 0.5


def test_importing_the_module_does_not_import_pydicom() -> None:
    code = "import sys, tpnet.core.dicom; print('pydicom' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
