"""Test helper: real DICOM files written with pydicom (ultrasound stills and cine loops in every photometric
interpretation, bit depth and a few transfer syntaxes) and broken ones (truncated, no pixel data, a
compressed syntax whose decoder is not installed, undecodable pixels), plus the paths of the real scanner
files pydicom's wheel ships.

The pixel content is known: ``default_pixels`` gives what ``write_us_dicom`` stores when ``pixels`` is not
passed, so a test can compute the expected frame itself.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "YBR_RCT")
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
SONOSITE_CINE = "examples_ybr_color.dcm"  # SonoSite, 30 frames, YBR_FULL_422 JPEG baseline, 320x240
PHILIPS_PALETTE = "examples_palette.dcm"  # Philips, 1 frame, PALETTE COLOR, 800x350


def pydicom_test_file(name: str) -> Path:
    """A file from the installed pydicom wheel's own test data, located on disk. Never goes through
    ``get_testdata_file``: for a file the wheel does not ship, that downloads and sleeps between retries."""
    path = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not shipped by the installed pydicom {pydicom.__version__}")
    return path


def sonosite_cine_path() -> Path:
    return pydicom_test_file(SONOSITE_CINE)


def philips_palette_path() -> Path:
    return pydicom_test_file(PHILIPS_PALETTE)


def palette_lut() -> np.ndarray:
    """The 256-entry, 16-bit colour table ``write_us_dicom`` puts in PALETTE COLOR files: (256, 3) uint16."""
    index = np.arange(256, dtype=np.uint32)
    red, green, blue = index, 255 - index, (index * 3) % 256
    return (np.stack([red, green, blue], axis=1) * 257).astype(np.uint16)


def default_pixels(
    frames: int, rows: int, columns: int, photometric: str = "MONOCHROME2", bits_stored: int = 8
) -> np.ndarray:
    """What ``write_us_dicom`` stores by default: a ramp that differs per frame. Grey and PALETTE COLOR:
    (frames, rows, columns) of stored values (palette indices for PALETTE COLOR); RGB and YBR: (frames,
    rows, columns, 3) RGB uint8 (the writer converts to YBR itself)."""
    top = 255 if photometric in COLOUR_PHOTOMETRICS else 2**bits_stored - 1
    y, x = np.mgrid[0:rows, 0:columns]
    f = np.arange(frames)[:, None, None]
    scale = max(1, (top + 1) // 256)

    def triangle(v: np.ndarray) -> np.ndarray:  # 0..top and back: smooth, so JPEG and 4:2:2 stay close
        v = (v * scale) % (2 * top)
        return np.minimum(v, 2 * top - v)

    ramp = x[None] * 9 + y[None] * 5 + f * 37
    dtype = np.uint8 if top <= 255 else np.uint16
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT"):
        channels = [ramp, ramp[:, ::-1, :] + 80, ramp * 2 + 20]
        return np.stack([triangle(c) for c in channels], axis=-1).astype(np.uint8)
    return triangle(ramp).astype(dtype)


def us_region(
    box: tuple[int, int, int, int],
    delta_cm: tuple[float, float] | None,
    *,
    spatial_format: int = 1,
    units: tuple[int, int] = (3, 3),
    data_type: int = 1,
) -> Dataset:
    """One item of SequenceOfUltrasoundRegions. ``box`` = (x0, y0, x1, y1) with x1/y1 EXCLUSIVE (tpnet's
    convention); it is written as DICOM's inclusive RegionLocationMax = x1 - 1. ``delta_cm`` None writes
    no PhysicalDelta (and units 0)."""
    x0, y0, x1, y1 = box
    item = Dataset()
    item.RegionSpatialFormat = spatial_format
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1 - 1, y1 - 1
    if delta_cm is None:
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 0
    else:
        item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
        item.PhysicalDeltaX, item.PhysicalDeltaY = float(delta_cm[0]), float(delta_cm[1])
    return item


def write_us_dicom(
    path: str | Path,
    frames: int = 1,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    region: tuple[int, int, int, int] | None = None,
    delta_cm: tuple[float, float] | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    frame_time_ms: float | None = None,
    frame_time_vector_ms: Sequence[float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    *,
    rows: int = 24,
    columns: int = 32,
    bits_stored: int | None = None,
    pixels: np.ndarray | None = None,
    extra_regions: Sequence[Dataset] = (),
    force_multiframe: bool | None = None,
    comments: str | None = None,
) -> Path:
    """An ultrasound DICOM file; returns its path.

    ``photometric``: MONOCHROME2, MONOCHROME1, RGB, YBR_FULL, YBR_FULL_422 or PALETTE COLOR (the table is
    ``palette_lut()``). ``bits``: BitsAllocated 8 or 16 (colour and palette: 8); ``bits_stored`` defaults
    to ``bits``. ``pixels``: the stored values as ``default_pixels`` describes them (RGB for YBR).
    ``region`` (x0, y0, x1, y1; x1/y1 exclusive) and ``delta_cm`` (dx, dy) make one 2-D tissue region in cm
    (``delta_cm`` alone: the whole frame; ``region`` alone: a region without physical size);
    ``extra_regions`` (``us_region(...)``) are appended. ``pixel_spacing_mm``: PixelSpacing (row, column) or
    one number for both. ``transfer_syntax``: Explicit/Implicit VR Little Endian, Deflated, RLE Lossless
    (pydicom's own encoder), JPEG Baseline (Pillow; MONOCHROME2, YBR_FULL_422 or YBR_FULL) or JPEG 2000
    Lossless (Pillow; MONOCHROME2, RGB or YBR_RCT, 8 bits).
    ``force_multiframe``: write NumberOfFrames even for one frame (default: when frames > 1).
    ``comments``: an ImageComments value (a long one sits before the pixels, for truncation tests)."""
    path = Path(path)
    bits_stored = bits if bits_stored is None else bits_stored
    if pixels is None:
        pixels = default_pixels(frames, rows, columns, photometric, bits_stored)
    pixels = np.asarray(pixels)
    frames, rows, columns = pixels.shape[:3]
    multiframe = frames > 1 if force_multiframe is None else force_multiframe

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if multiframe else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.Manufacturer = "tpnet tests"
    if comments is not None:
        ds.ImageComments = comments
    regions = []
    if region is not None or delta_cm is not None:
        regions.append(us_region(region or (0, 0, columns, rows), delta_cm))
    regions.extend(extra_regions)
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence(regions)
    if pixel_spacing_mm is not None:
        row_mm, col_mm = (
            (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else pixel_spacing_mm
        )
        ds.PixelSpacing = [f"{float(row_mm):.10g}", f"{float(col_mm):.10g}"]
    if frame_time_ms is not None:
        ds.FrameTime = f"{float(frame_time_ms):.10g}"
    if frame_time_vector_ms is not None:
        ds.FrameTimeVector = [f"{float(v):.10g}" for v in frame_time_vector_ms]
    if multiframe:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181065 if frame_time_vector_ms is not None else 0x00181063

    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT")
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if photometric == "PALETTE COLOR":
        lut = palette_lut()
        for i, name in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{name}PaletteColorLookupTableData", lut[:, i].astype("<u2").tobytes())

    if transfer_syntax in (JPEGBaseline8Bit, JPEG2000Lossless):
        encode = _jpeg_bytes if transfer_syntax == JPEGBaseline8Bit else _jpeg2000_bytes
        ds.PixelData = encapsulate([encode(frame, photometric) for frame in pixels])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = _native_bytes(pixels, photometric, bits)
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"
        if transfer_syntax == RLELossless:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless, encoding_plugin="pydicom")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _native_bytes(pixels: np.ndarray, photometric: str, bits: int) -> bytes:
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
        if photometric == "YBR_FULL":
            return ybr.astype(np.uint8).tobytes()
        # 4:2:2: per pair of pixels Y0 Y1 Cb Cr, chroma averaged over the pair (PS3.3 C.7.6.3.1.2)
        if ybr.shape[2] % 2:
            raise ValueError("YBR_FULL_422 needs an even number of columns")
        pairs = ybr.astype(np.uint16).reshape(ybr.shape[0], ybr.shape[1], -1, 2, 3)
        packed = np.stack(
            [
                pairs[..., 0, 0],
                pairs[..., 1, 0],
                (pairs[..., 0, 1] + pairs[..., 1, 1] + 1) // 2,
                (pairs[..., 0, 2] + pairs[..., 1, 2] + 1) // 2,
            ],
            axis=-1,
        )
        return packed.astype(np.uint8).tobytes()
    dtype = "<u2" if bits == 16 else np.uint8
    return pixels.astype(dtype).tobytes()


def _jpeg_bytes(frame: np.ndarray, photometric: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if photometric == "MONOCHROME2":
        Image.fromarray(frame.astype(np.uint8), "L").save(buffer, "JPEG", quality=95)
    elif photometric in ("YBR_FULL_422", "YBR_FULL"):
        subsampling = "4:2:2" if photometric == "YBR_FULL_422" else "4:4:4"
        Image.fromarray(frame.astype(np.uint8), "RGB").save(
            buffer, "JPEG", quality=95, subsampling=subsampling
        )
    else:
        raise ValueError(f"JPEG baseline test files are MONOCHROME2 or YBR_FULL(_422), not {photometric}")
    return buffer.getvalue()


def _jpeg2000_bytes(frame: np.ndarray, photometric: str) -> bytes:
    """Lossless JPEG 2000 codestream (Pillow's OpenJPEG); YBR_RCT = RGB with the reversible colour transform."""
    from PIL import Image

    buffer = io.BytesIO()
    if photometric == "MONOCHROME2":
        image = Image.fromarray(frame.astype(np.uint8), "L")
    elif photometric in ("RGB", "YBR_RCT"):
        image = Image.fromarray(frame.astype(np.uint8), "RGB")
    else:
        raise ValueError(f"JPEG 2000 test files are MONOCHROME2, RGB or YBR_RCT, not {photometric}")
    image.save(buffer, "JPEG2000", irreversible=False, no_jp2=True, mct=int(photometric == "YBR_RCT"))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ broken files


def write_truncated_dicom(path: str | Path, where: str = "pixels") -> Path:
    """A cine file cut short. ``where``: "pixels" (inside the uncompressed pixel data: 3 frames declared,
    about 1.5 present), "header" (inside a long element before the pixels) or "encapsulated" (inside a
    JPEG frame of a compressed cine)."""
    path = Path(path)
    if where == "encapsulated":
        write_us_dicom(path, frames=3, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 200])
        return path
    write_us_dicom(path, frames=3, comments="x" * 600)
    data = path.read_bytes()
    if where == "pixels":
        cut = len(data) - int(24 * 32 * 1.5)
    elif where == "header":
        cut = data.index(b"x" * 600) + 300
    else:
        raise ValueError(f"where must be 'pixels', 'header' or 'encapsulated', not {where!r}")
    path.write_bytes(data[:cut])
    return path


def write_dicom_without_pixels(path: str | Path) -> Path:
    """An ultrasound image's header with no Pixel Data element (an export that dropped it)."""
    path = write_us_dicom(path)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_needing_missing_decoder(path: str | Path, transfer_syntax: str = JPEGLSLossless) -> Path:
    """A file in a compressed transfer syntax (default JPEG-LS Lossless, 1.2.840.10008.1.2.4.80) whose
    decoder plug-ins (pylibjpeg-libjpeg, pyjpegls, gdcm) are not installed; its fragments are fake bytes."""
    path = write_us_dicom(path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([b"\xff\xd8not really compressed\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_undecodable_dicom(path: str | Path, frames: int = 2) -> Path:
    """A JPEG baseline cine whose header is sound but whose frames are garbage bytes: reading the header
    works, decoding a frame fails."""
    path = write_us_dicom(path, frames=frames, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([bytes(range(256)) * 4 for _ in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_not_dicom(path: str | Path) -> Path:
    """A text file with a DICOM suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a report, not an image\n" * 10)
    return path
