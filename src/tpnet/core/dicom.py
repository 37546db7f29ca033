"""Scanner DICOM as B-mode input: the header (frames, pixel size, image region, frame times) read without
decoding any pixel, and one frame decoded at a time (a cine loop is never decoded whole to read one frame).

Pixel size: the 2-D tissue regions of ``SequenceOfUltrasoundRegions`` (PhysicalDeltaX/Y in cm) first, then
``PixelSpacing``, else none (the caller states its fallback). tpnet needs square pixels: X and Y sizes that
differ by more than ``ANISOTROPY_TOLERANCE`` are refused with both values named, rather than resampled.

Photometric interpretations: MONOCHROME1 (inverted) and MONOCHROME2, RGB, YBR_FULL and YBR_FULL_422 (pydicom
converts them to RGB), YBR_ICT/YBR_RCT (JPEG 2000, converted by the decoder), PALETTE COLOR (the file's colour
table is applied); 8 to 16 bits stored. Colour frames become grey by ITU-R BT.601 luma; the RGB is kept.

Compressed transfer syntaxes are decoded by pydicom's plug-ins; one whose plug-in is not installed is refused
with the name of the syntax and what to install. Every error is a ``FrameReadError`` whose message starts with
the file's path. pydicom is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tpnet.core.image_header import MAX_FRAME_PIXELS_ENV, max_frame_pixels
from tpnet.core.io import FrameReadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOMDIR_NAME = "DICOMDIR"  # a media directory's index file: DICOM, but it holds no image
ANISOTROPY_TOLERANCE = 0.02  # |dx - dy| / min(dx, dy): scanners write square pixels to many digits
CM_UNITS = 3  # PhysicalUnitsX/YDirection code for cm (PS3.3 C.8.5.5.1.15)
TISSUE_2D_FORMAT = 1  # RegionSpatialFormat code for a 2-D image (PS3.3 C.8.5.5.1.1)
BT601_LUMA = (0.299, 0.587, 0.114)

_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# pydicom returns these as RGB (raw=False converts YBR_FULL(_422); the JPEG 2000 decoder undoes ICT/RCT).
_RGB_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_PALETTE = "PALETTE COLOR"
_SUPPORTED_PHOTOMETRICS = _GREY_PHOTOMETRICS + _RGB_PHOTOMETRICS + (_PALETTE,)
_PIXEL_DATA_TAG = 0x7FE00010
_FLOAT_PIXEL_TAGS = (0x7FE00008, 0x7FE00009)  # Float / Double Float Pixel Data: not ultrasound B-mode
_UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED_UID = "1.2.840.10008.1.2.1.99"
JPEG_EXTENDED_UID = "1.2.840.10008.1.2.4.51"  # 12-bit JPEG: Pillow, the base install's plug-in, cannot
_DEFER_BYTES = 4096  # larger values (pixel data, colour tables) are skipped when the header is read
_INSTALL_HINT = {  # what to pip install for the plug-ins pydicom names in missing_dependencies
    "pylibjpeg-libjpeg": "pip install pylibjpeg pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg": "pip install pylibjpeg pylibjpeg-openjpeg",
    "pylibjpeg-rle": "pip install pylibjpeg pylibjpeg-rle",
    "pyjpegls": "pip install pyjpegls",
    "gdcm": "pip install python-gdcm",
}


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM suffix (any case), or the ``DICM`` marker at byte 128 (DICOMDIR-style exports name their
    files without a suffix). A media directory's ``DICOMDIR`` index is not an image: False. Unreadable
    files without a DICOM suffix are False (never raises)."""
    path = Path(path)
    if path.name.upper() == DICOMDIR_NAME:
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DicomHeader:
    path: Path
    n_frames: int
    rows: int
    columns: int
    spacing_mm: float | None  # isotropic pixel size in mm, None when the file has none
    spacing_source: str  # "ultrasound region", "PixelSpacing" or ""
    image_box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1), x1/y1 exclusive, inside the frame:
    # the ultrasound region holding the image; None = the whole frame
    frame_times_s: (
        tuple[float, ...] | None
    )  # start of each frame in s from the first (0.0, ...); None: unknown
    photometric: str
    transfer_syntax: str  # its name, e.g. "JPEG Baseline (Process 1)"
    notes: tuple[str, ...]  # things a reader of the results should know (e.g. other regions ignored)
    transfer_syntax_uid: str = ""
    bits_allocated: int = 8
    bits_stored: int = 8
    samples_per_pixel: int = 1
    modality: str = ""
    study_instance_uid: str = ""  # for outputs that refer back to the source (Secondary Capture, SEG)
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    patient_id: str = ""  # PatientID: a longitudinal run's subject (issue #18)
    study_date: str = ""  # StudyDate as written (DICOM DA, e.g. "20260123"): the visit


@dataclass(frozen=True)
class DicomFrame:
    grey: np.ndarray  # float32 (rows, columns) in [0, 1]: luma for colour, inverted for MONOCHROME1
    rgb: np.ndarray | None  # uint8 (rows, columns, 3) for colour photometrics (RGB/YBR/PALETTE), else None


# --------------------------------------------------------------------------------------------- header


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Everything about the file but its pixels, which are neither decoded nor read (only their length is
    checked against the file's). FrameReadError when the file is not DICOM, is truncated, has no pixel data,
    needs a decoder that is not installed, has an unsupported photometric interpretation or bit depth, a
    frame above the pixel limit, or non-square pixels."""
    path = Path(path)
    ds = _read_dataset(path)
    uid = _transfer_syntax_uid(ds)
    _check_pixel_data_present(path, ds)
    _check_decoder(path, uid, _int_or(ds, "BitsStored", 8))

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    rows, columns = _positive_int(path, ds, "Rows"), _positive_int(path, ds, "Columns")
    samples = _int_or(ds, "SamplesPerPixel", 1)
    bits_allocated = _positive_int(path, ds, "BitsAllocated")
    bits_stored = _int_or(ds, "BitsStored", bits_allocated)
    _check_pixel_format(path, ds, photometric, samples, bits_allocated, bits_stored)
    if rows * columns > (limit := max_frame_pixels()):
        raise FrameReadError(
            f"{path}: declares {columns}x{rows} px ({rows * columns / 1e6:.1f} megapixels) per frame, above "
            f"the limit of {limit / 1e6:g} megapixels (ultrasound frames are 0.3-2 MP). If the frame is "
            f"genuine, raise the limit with the environment variable {MAX_FRAME_PIXELS_ENV}=<pixels>"
        )
    n_frames = _n_frames(path, ds)
    if not uid.is_encapsulated:  # uncompressed: the pixel bytes must hold every declared frame
        _check_native_length(path, ds, uid, rows, columns, samples, bits_allocated, photometric, n_frames)

    notes: list[str] = []
    spacing_mm, source, image_box = _spacing(path, ds, rows, columns, notes)
    frame_times = _frame_times(ds, n_frames, notes)
    return DicomHeader(
        path=path,
        n_frames=n_frames,
        rows=rows,
        columns=columns,
        spacing_mm=spacing_mm,
        spacing_source=source,
        image_box=image_box,
        frame_times_s=frame_times,
        photometric=photometric,
        transfer_syntax=uid.name,
        notes=tuple(notes),
        transfer_syntax_uid=str(uid),
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        samples_per_pixel=samples,
        modality=str(ds.get("Modality", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
    )


def _text(ds: Dataset, keyword: str) -> str:
    """A string attribute stripped of DICOM's space padding; "" when absent or empty."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _read_dataset(path: Path) -> Dataset:
    """Parse the file with large values (pixel data) deferred; truncation that pydicom only warns about is
    an error here."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise FrameReadError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                ds = dcmread(path, defer_size=_DEFER_BYTES)
            except InvalidDicomError:
                # No preamble/"DICM": old exports write the bare data set. Accept it only when it parses
                # into DICOM attributes (an image's Rows or any SOP class), else it is simply not DICOM.
                ds = dcmread(path, defer_size=_DEFER_BYTES, force=True)
                if "Rows" not in ds and "SOPClassUID" not in ds:
                    raise InvalidDicomError("no DICM marker and no DICOM attributes") from None
        except InvalidDicomError:
            raise FrameReadError(
                f"{path}: not a DICOM file (no 'DICM' marker at byte 128 and no readable DICOM data set)"
            ) from None
        except (OSError, EOFError) as exc:
            raise FrameReadError(f"{path}: cannot be read: {exc}") from exc
        except Exception as exc:  # pydicom raises many types on damaged bytes; all mean the same here
            if "truncated" in str(exc).lower():  # e.g. zlib's "incomplete or truncated stream" (deflated)
                raise FrameReadError(f"{path}: truncated: {exc}") from exc
            raise FrameReadError(
                f"{path}: damaged DICOM, cannot be parsed ({type(exc).__name__}: {exc})"
            ) from exc
    cut = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if cut:
        raise FrameReadError(f"{path}: truncated: the file ends inside a DICOM element ({cut[0]})")
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != DEFLATED_UID:  # deflated: offsets are not the file's
        _check_not_cut(path, ds, size)
    return ds


def _check_not_cut(path: Path, ds: Dataset, size: int) -> None:
    """A file cut inside an element's value parses without complaint (the missing bytes are never read):
    compare where each top-level value ends with the file's size."""
    from pydicom.dataelem import RawDataElement

    end = 0
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)  # never read a deferred value
        if isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH:
            end = max(end, element.value_tell + element.length)
    if end > size:
        raise FrameReadError(
            f"{path}: truncated: the file has {size} bytes, but its elements run to byte {end} "
            "(an interrupted copy or download?)"
        )


def _transfer_syntax_uid(ds: Dataset) -> Any:
    from pydicom import uid as uids

    declared = getattr(ds, "file_meta", None)
    declared = declared.get("TransferSyntaxUID") if declared is not None else None
    if declared:
        return uids.UID(str(declared))
    # A bare data set (no file meta): pydicom worked out the encoding while parsing.
    implicit, little = ds.original_encoding
    if implicit:
        return uids.ImplicitVRLittleEndian
    return uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian


def _check_pixel_data_present(path: Path, ds: Dataset) -> None:
    if _PIXEL_DATA_TAG in ds:
        return
    if any(tag in ds for tag in _FLOAT_PIXEL_TAGS):
        raise FrameReadError(f"{path}: holds float pixel data, which is not an ultrasound image")
    kind = getattr(ds.get("SOPClassUID"), "name", "") or str(ds.get("SOPClassUID", "unknown SOP class"))
    raise FrameReadError(
        f"{path}: no pixel data (7FE0,0010) in the file ({kind}): it holds no image; a structured report, "
        "a DICOMDIR or a file cut short before its pixels read the same"
    )


def _check_decoder(path: Path, uid: Any, bits_stored: int) -> None:
    from pydicom.pixels import get_decoder

    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        video = (
            " (a video stream: export the loop as JPEG or uncompressed frames)"
            if "MPEG" in uid.name or ("HEVC" in uid.name)
            else ""
        )
        raise FrameReadError(
            f"{path}: transfer syntax {name} has no pixel decoder in pydicom{video}"
        ) from None
    if decoder.is_available:
        if not (uid == JPEG_EXTENDED_UID and bits_stored > 8 and decoder.available_plugins == ("pillow",)):
            return
        missing = [m for m in decoder.missing_dependencies if not m.startswith("pillow")]
        raise FrameReadError(
            f"{path}: transfer syntax {name} with {bits_stored}-bit samples needs a decoder that is not "
            f"installed (Pillow decodes only 8-bit JPEG; {_install_advice(missing)})"
        )
    raise FrameReadError(
        f"{path}: transfer syntax {name} needs a decoder that is not installed "
        f"({_install_advice(decoder.missing_dependencies)})"
    )


def _install_advice(missing: list[str]) -> str:
    """pydicom's ``missing_dependencies`` ("pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1")
    turned into pip commands, the simplest first."""
    commands = []
    for line in missing:
        needs = line.split("requires", 1)[-1]
        for package, command in _INSTALL_HINT.items():
            if package in needs and command not in commands:
                commands.append(command)
                break
    if not commands:
        return "; ".join(missing) or "no plug-in for it is known to pydicom"
    return " or ".join(commands)


def _positive_int(path: Path, ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise FrameReadError(f"{path}: {keyword} is {value!r}; an image needs a positive whole number")
    return number


def _int_or(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    try:
        return int(value) if value is not None and value != "" else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _check_pixel_format(
    path: Path, ds: Dataset, photometric: str, samples: int, bits_allocated: int, bits_stored: int
) -> None:
    if photometric not in _SUPPORTED_PHOTOMETRICS:
        raise FrameReadError(
            f"{path}: photometric interpretation {photometric or '(missing)'!r} is not supported "
            f"(supported: {', '.join(_SUPPORTED_PHOTOMETRICS)})"
        )
    want_samples = 3 if photometric in _RGB_PHOTOMETRICS else 1
    if samples != want_samples:
        raise FrameReadError(
            f"{path}: {photometric} with {samples} samples per pixel; it must have {want_samples}"
        )
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise FrameReadError(
            f"{path}: bit depth not supported: BitsAllocated {bits_allocated}, BitsStored {bits_stored} "
            "(tpnet reads 8- and 16-bit pixels)"
        )
    if _int_or(ds, "PixelRepresentation", 0) != 0:
        raise FrameReadError(
            f"{path}: signed pixel values (PixelRepresentation 1); ultrasound B-mode is stored unsigned"
        )


def _n_frames(path: Path, ds: Dataset) -> int:
    raw = ds.get("NumberOfFrames")
    if raw is None or str(raw).strip() == "":
        return 1
    try:
        frames = int(raw)
    except (TypeError, ValueError):
        frames = 0
    if frames <= 0:
        raise FrameReadError(f"{path}: NumberOfFrames is {raw!r}; it must be a positive whole number")
    return frames


def _check_native_length(
    path: Path,
    ds: Dataset,
    uid: Any,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    photometric: str,
    n_frames: int,
) -> None:
    """Uncompressed pixels must hold every declared frame (a cut file or a wrong NumberOfFrames)."""
    element = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    length = getattr(element, "length", None)
    if length is None or length == _UNDEFINED_LENGTH:
        return
    if photometric == "YBR_FULL_422":  # two luma + one Cb + one Cr per pixel pair
        per_frame = rows * columns * 2 * bits_allocated // 8
    else:
        per_frame = rows * columns * samples * bits_allocated // 8
    if length < per_frame * n_frames:
        raise FrameReadError(
            f"{path}: truncated pixel data: {length} bytes, but {n_frames} frame(s) of {columns}x{rows} px "
            f"({photometric}, {bits_allocated} bits) need {per_frame * n_frames}"
        )


# -------------------------------------------------------------------------------------------- spacing


@dataclass(frozen=True)
class _Region:
    number: int  # 1-based position in the sequence, for the notes
    box: tuple[int, int, int, int]  # x1/y1 exclusive, clipped to the frame
    declared: tuple[int, int, int, int]  # x1/y1 exclusive, as the file states it
    delta_cm: tuple[float, float] | None  # (x, y); None: not in cm

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(0, x1 - x0) * max(0, y1 - y0)


def _spacing(
    path: Path, ds: Dataset, rows: int, columns: int, notes: list[str]
) -> tuple[float | None, str, tuple[int, int, int, int] | None]:
    """(spacing_mm, source, image_box): the largest 2-D tissue region in cm, else PixelSpacing, else none."""
    regions = _tissue_regions(ds, rows, columns, notes)
    in_cm = [r for r in regions if r.delta_cm is not None and r.area > 0]
    image_box = None
    if in_cm:
        chosen = max(in_cm, key=lambda r: r.area)  # the first of equal areas
        others = [r for r in in_cm if r is not chosen and not _same_delta(r.delta_cm, chosen.delta_cm)]
        if others:
            listed = "; ".join(f"region {r.number} {r.declared}: {_fmt_delta(r.delta_cm)}" for r in others)
            notes.append(
                f"ultrasound regions differ in pixel size: used region {chosen.number} {chosen.declared} "
                f"({_fmt_delta(chosen.delta_cm)}, the largest); others: {listed}"
            )
        dx, dy = chosen.delta_cm  # type: ignore[misc]
        _check_square(path, dx * 10, dy * 10, f"ultrasound region {chosen.number} {chosen.declared}",
                      "PhysicalDeltaX", "PhysicalDeltaY")  # fmt: skip
        return (dx + dy) * 10 / 2, "ultrasound region", _box_or_none(chosen.box, rows, columns)
    if regions:  # 2-D regions without a usable size still say where the image is
        largest = max(regions, key=lambda r: r.area)
        if largest.area > 0:
            image_box = _box_or_none(largest.box, rows, columns)
    spacing = ds.get("PixelSpacing")
    if spacing is not None:
        try:
            row_mm, col_mm = (float(v) for v in spacing)
        except (TypeError, ValueError):
            notes.append(f"PixelSpacing {spacing!r} is not two numbers: ignored")
        else:
            if row_mm > 0 and col_mm > 0 and math.isfinite(row_mm + col_mm):
                _check_square(path, col_mm, row_mm, "PixelSpacing", "column spacing", "row spacing")
                return (row_mm + col_mm) / 2, "PixelSpacing", image_box
            notes.append(f"PixelSpacing {list(spacing)} is not positive: ignored")
    return None, "", image_box


def _tissue_regions(ds: Dataset, rows: int, columns: int, notes: list[str]) -> list[_Region]:
    found = []
    for number, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or (), start=1):
        if _int_or(item, "RegionSpatialFormat", 0) != TISSUE_2D_FORMAT:
            continue  # M-mode, spectral Doppler, waveforms: not the 2-D image
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1  # Max is inclusive
        except (AttributeError, TypeError, ValueError):
            notes.append(f"ultrasound region {number} has no complete RegionLocation: ignored")
            continue
        declared = (x0, y0, x1, y1)
        box = (max(0, x0), max(0, y0), min(columns, x1), min(rows, y1))
        if box[0] >= box[2] or box[1] >= box[3]:
            notes.append(
                f"ultrasound region {number} {declared} lies outside the {columns}x{rows} frame: ignored"
            )
            continue
        if box != declared:
            notes.append(
                f"ultrasound region {number} {declared} reaches beyond the {columns}x{rows} frame; clipped to "
                f"{box} (a frame resized after the regions were written would also have a wrong pixel size)"
            )
        delta = None
        units = (_int_or(item, "PhysicalUnitsXDirection", 0), _int_or(item, "PhysicalUnitsYDirection", 0))
        try:
            dx, dy = abs(float(item.PhysicalDeltaX)), abs(float(item.PhysicalDeltaY))
        except (AttributeError, TypeError, ValueError):
            dx = dy = math.nan
        if units != (CM_UNITS, CM_UNITS):
            notes.append(
                f"ultrasound region {number} has physical units {units}, not cm (3): its size is not used"
            )
        elif not (dx > 0 and dy > 0 and math.isfinite(dx + dy)):
            notes.append(f"ultrasound region {number} has no positive PhysicalDeltaX/Y: its size is not used")
        else:
            delta = (dx, dy)
        found.append(_Region(number, box, declared, delta))
    return found


def _same_delta(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return (
        a is not None
        and b is not None
        and all(math.isclose(p, q, rel_tol=1e-6) for p, q in zip(a, b, strict=True))
    )


def _fmt_delta(delta: tuple[float, float] | None) -> str:
    dx, dy = delta or (math.nan, math.nan)
    return f"{dx * 10:.4g} x {dy * 10:.4g} mm"


def _check_square(path: Path, x_mm: float, y_mm: float, where: str, x_name: str, y_name: str) -> None:
    spread = abs(x_mm - y_mm) / min(x_mm, y_mm)
    if spread > ANISOTROPY_TOLERANCE:
        raise FrameReadError(
            f"{path}: anisotropic pixels in {where}: {x_name} {x_mm:.6g} mm, {y_name} {y_mm:.6g} mm "
            f"(differ by {spread:.1%}, tolerance {ANISOTROPY_TOLERANCE:.0%}); tpnet needs square pixels: "
            "resample the export to square pixels (or export without a zoom/stretch setting)"
        )


def _box_or_none(box: tuple[int, int, int, int], rows: int, columns: int) -> tuple[int, int, int, int] | None:
    return None if box == (0, 0, columns, rows) else box


# ---------------------------------------------------------------------------------------- frame times


def _frame_times(ds: Dataset, n_frames: int, notes: list[str]) -> tuple[float, ...] | None:
    """FrameTimeVector (ms since the previous frame; the first is 0), else FrameTime (ms per frame)."""
    vector = ds.get("FrameTimeVector")
    if vector is not None and vector != "":
        values = list(vector) if isinstance(vector, Sequence) and not isinstance(vector, str) else [vector]
        try:
            steps = [float(v) for v in values]
        except (TypeError, ValueError):
            steps = []
        if len(steps) == n_frames and all(math.isfinite(s) and s >= 0 for s in steps):
            cumulative = np.cumsum(np.asarray(steps, np.float64)) / 1000.0
            cumulative -= cumulative[0]  # the first increment is 0 by the standard; some writers put a period
            return tuple(float(t) for t in cumulative)
        notes.append(
            f"FrameTimeVector has {len(steps)} usable values for {n_frames} frames (or negative ones): ignored"
        )
    frame_time = ds.get("FrameTime")
    if frame_time is not None and frame_time != "":
        try:
            period_ms = float(frame_time)
        except (TypeError, ValueError):
            period_ms = math.nan
        if period_ms > 0 and math.isfinite(period_ms):
            return tuple(i * period_ms / 1000.0 for i in range(n_frames))
        notes.append(f"FrameTime {frame_time!r} is not a positive number of ms: ignored")
    return None


# ---------------------------------------------------------------------------------------------- frames


def read_dicom_frame(path: str | Path, index: int = 0, header: DicomHeader | None = None) -> DicomFrame:
    """Decode frame ``index`` (0-based) alone. ``header`` (from ``read_dicom_header`` of the same file)
    saves reading the header again."""
    path = Path(path)
    header = header if header is not None else read_dicom_header(path)
    if not (isinstance(index, int | np.integer) and 0 <= index < header.n_frames):
        last = f"0 to {header.n_frames - 1}" if header.n_frames > 1 else "only 0"
        raise FrameReadError(
            f"{path}: frame {index} is out of range: the file has {header.n_frames} frame(s) ({last})"
        )
    pixels = _decode(path, int(index), header)
    expected = (header.rows, header.columns)
    if pixels.shape[:2] != expected:
        raise FrameReadError(
            f"{path}: frame {index} decoded to shape {pixels.shape}, but the header declares {expected}"
        )
    if header.photometric in _GREY_PHOTOMETRICS:
        grey = _unit_scale(pixels, header.bits_stored)
        if header.photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            grey = 1.0 - grey
        return DicomFrame(grey=grey.astype(np.float32), rgb=None)
    if header.photometric == _PALETTE:
        unit_rgb = _apply_palette(path, pixels)
    else:
        unit_rgb = _unit_scale(pixels, header.bits_stored)
    grey = unit_rgb @ np.asarray(BT601_LUMA, np.float32)
    rgb = np.round(unit_rgb * 255.0).astype(np.uint8)
    return DicomFrame(grey=np.clip(grey, 0.0, 1.0).astype(np.float32), rgb=rgb)


def _decode(path: Path, index: int, header: DicomHeader) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        if (
            header.transfer_syntax_uid == DEFLATED_UID
        ):  # one zlib stream: inflated whole, then one frame taken
            from pydicom import dcmread

            return pixel_array(dcmread(path), index=index)
        # A path (not a Dataset) lets pydicom read just this frame's bytes from the file.
        return pixel_array(path, index=index, transfer_syntax_uid=header.transfer_syntax_uid)
    except Exception as exc:  # decoders raise anything from ValueError to OSError on damaged data
        raise FrameReadError(
            f"{path}: frame {index} cannot be decoded ({header.transfer_syntax}): {type(exc).__name__}: "
            + " ".join(str(exc).split())  # pydicom lists each plug-in's failure on its own line
        ) from exc


def _unit_scale(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    full_scale = float(2**bits_stored - 1)
    return np.clip(pixels.astype(np.float32) / full_scale, 0.0, 1.0)


def _apply_palette(path: Path, indices: np.ndarray) -> np.ndarray:
    """The file's colour table applied; float32 RGB in [0, 1] (tables hold 8- or 16-bit entries)."""
    from pydicom import dcmread
    from pydicom.pixels import apply_color_lut

    try:
        ds = dcmread(path, stop_before_pixels=True)  # the tables sit before the pixels
        descriptor = ds.RedPaletteColorLookupTableDescriptor
        entry_bits = int(descriptor[2])
        rgb = apply_color_lut(indices, ds)
    except Exception as exc:
        raise FrameReadError(
            f"{path}: PALETTE COLOR without a usable colour table ({type(exc).__name__}: {exc})"
        ) from exc
    if entry_bits not in (8, 16):
        raise FrameReadError(f"{path}: colour table entries of {entry_bits} bits; DICOM allows 8 or 16")
    return rgb.astype(np.float32) / float(2**entry_bits - 1)
