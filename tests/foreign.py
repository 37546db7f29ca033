"""Datasets "written by another lab's tool": plain cv2/tifffile/numpy/csv, none of tpnet's writers.

``write_foreign_dataset`` makes a small, valid contract-v1 dataset that exercises what our own synthetic
generator never produces (odd sizes, 16-bit PNG, TIFF and .npy mixed, m/s elastography, extra and
reordered columns, subfolders, no split column). ``write_faulty_dataset`` plants one fault per sample.
Both are small and fast (well under a second) so any test may reuse them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

FOREIGN_CLASSES = ("background", "active_trp", "latent_trp", "vessel")
FOREIGN_SPACING_MM = 0.1  # the dataset.yaml default, for rows with an empty spacing_mm cell
FOREIGN_SUBJECTS = ("P01", "P02", "P03", "P04")
SPEED_RANGE_M_S = (2.0, 6.0)

# sample_id, subject, (H, W), bmode format, elasto format ("" = no SWE), labelled, spacing_mm ("" = default)
FOREIGN_ROWS = (
    ("P01_f0", "P01", (70, 90), "png8", "npy", True, "0.08"),
    ("P01_f1", "P01", (70, 90), "png16", "", True, ""),
    ("P01_f2", "P01", (83, 61), "npy", "tif", False, "0.08"),
    ("P02_f0", "P02", (83, 61), "tif", "npy", True, ""),
    ("P02_f1", "P02", (70, 90), "png8", "", False, "0.09"),
    ("P03_f0", "P03", (83, 61), "png16", "tif", True, ""),
    ("P03_f1", "P03", (70, 90), "npy8", "npy", True, "0.07"),
    ("P04_f0", "P04", (70, 90), "tif8", "", True, ""),
    ("P04_f1", "P04", (83, 61), "png8", "tif", False, ""),
    ("P04_f2", "P04", (70, 90), "png16", "npy", True, "0.08"),
)
# Another tool's column order, with columns tpnet does not know.
FOREIGN_COLUMNS = (
    "mask",
    "operator",
    "bmode",
    "subject_id",
    "spacing_mm",
    "sample_id",
    "elasto",
    "probe_mhz",
)

DEFAULT_YAML = "name: {name}\nclasses: [background, active_trp, latent_trp, vessel]\nelasto_unit: {unit}\n"


def write_foreign_dataset(root: Path) -> Path:
    """Write the foreign dataset into ``root`` (created) and return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(
        DEFAULT_YAML.format(name="foreign_lab", unit="m/s") + f"spacing_mm: {FOREIGN_SPACING_MM}\n"
    )
    rng = np.random.default_rng(1234)
    records = []
    for index, (sample_id, subject, shape, bmode_format, elasto_format, labelled, spacing) in enumerate(
        FOREIGN_ROWS
    ):
        mask = _blob_mask(shape, index)
        bmode_rel = _write_bmode(root / subject / "bmode" / sample_id, bmode_format, _bmode_image(rng, mask))
        elasto_rel = ""
        if elasto_format:
            speed = _shear_wave_speed(rng, mask)
            elasto_rel = f"{subject}/swe/{sample_id}.{elasto_format}"
            _save(root / elasto_rel, speed)
        mask_rel = ""
        if labelled:
            mask_rel = f"labels/{sample_id}.png"
            _save(root / mask_rel, mask)
        records.append(
            {
                "sample_id": sample_id,
                "subject_id": subject,
                "bmode": bmode_rel.relative_to(root).as_posix(),
                "elasto": elasto_rel,
                "mask": mask_rel,
                "spacing_mm": spacing,
                "operator": "dr_x",
                "probe_mhz": "12",
            }
        )
    _write_manifest(root, FOREIGN_COLUMNS, records)
    return root


def _blob_mask(shape: tuple[int, int], index: int) -> np.ndarray:
    """A few TrP/vessel blobs whose places vary by frame; frame index 4 has no TrP at all."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    if index % 5 != 4:
        cv2.ellipse(mask, (w // 3, h // 2), (7, 4), 10 * index, 0, 360, 1, -1)  # active_trp
    if index % 2 == 0:
        cv2.ellipse(mask, (2 * w // 3, h // 3 + index % 3), (5, 3), 0, 0, 360, 2, -1)  # latent_trp
    cv2.circle(mask, (w // 2, 4 * h // 5), 4, 3, -1)  # vessel
    return mask


def _bmode_image(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Float image in [0, 1]: speckle, darker (hypoechoic) TrPs and vessels."""
    image = 0.55 * rng.rayleigh(0.5, mask.shape)
    image[mask > 0] *= 0.4
    return np.clip(image, 0.0, 1.0)


def _shear_wave_speed(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """m/s inside a SWE box (NaN outside it), stiffer in TrPs."""
    h, w = mask.shape
    speed = np.full(mask.shape, np.nan, np.float32)
    box = (slice(h // 5, 4 * h // 5), slice(w // 6, 5 * w // 6))
    speed[box] = rng.uniform(2.0, 4.5, size=speed[box].shape)
    trp = np.zeros(mask.shape, bool)
    trp[box] = np.isin(mask[box], (1, 2))
    speed[trp] = rng.uniform(4.5, 6.0, size=int(trp.sum()))
    return speed.astype(np.float32)


def _write_bmode(stem: Path, fmt: str, image: np.ndarray) -> Path:
    if fmt == "png8":
        path, data = stem.with_suffix(".png"), np.round(image * 255).astype(np.uint8)
    elif fmt == "png16":
        path, data = stem.with_suffix(".png"), np.round(image * 65535).astype(np.uint16)
    elif fmt == "npy":
        path, data = stem.with_suffix(".npy"), image.astype(np.float32)
    elif fmt == "npy8":
        path, data = stem.with_suffix(".npy"), np.round(image * 255).astype(np.uint8)
    elif fmt == "tif":
        path, data = stem.with_suffix(".tif"), np.round(image * 65535).astype(np.uint16)
    elif fmt == "tif8":
        path, data = stem.with_suffix(".tiff"), np.round(image * 255).astype(np.uint8)
    else:
        raise ValueError(fmt)
    _save(path, data)
    return path


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        if not cv2.imwrite(str(path), data):
            raise OSError(f"{path}: cv2.imwrite failed")
    elif path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, data)
    else:
        np.save(path, data)


def _write_manifest(root: Path, columns: tuple[str, ...], records: list[dict[str, str]]) -> None:
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


# --- faults -----------------------------------------------------------------------------------------

# Fault name -> (level, words the reason must contain). One sample per fault, sample_id = fault name.
FAULTS: dict[str, tuple[str, str]] = {
    "missing_file": ("error", "file not found"),
    "truncated_png": ("error", "truncated"),
    "zero_byte": ("error", "zero-byte"),
    "text_as_png": ("error", "not a PNG"),
    "rgb_bmode": ("error", "RGB"),
    "bmode_nan": ("error", "NaN"),
    "shape_mismatch": ("error", "shape mismatch"),
    "label_outside_classes": ("error", "outside classes"),
    "path_dotdot": ("error", "escapes the dataset root"),
    "path_absolute": ("error", "absolute path"),
    "symlink_outside": ("error", "escapes the dataset root"),
    "duplicate_sample_id": ("error", "duplicate sample_id"),
    "empty_subject_id": ("error", "empty subject_id"),
    "subject_in_two_splits": ("error", "share one split"),
    "unknown_split": ("error", "split 'training'"),
    "spacing_negative": ("error", "positive"),
    "spacing_text": ("error", "not a number"),
    "no_spacing": ("warning", "no spacing_mm"),
    "elasto_all_nan": ("warning", "all NaN"),
    "elasto_inf": ("error", "absurd stiffness"),
    "elasto_negative": ("error", "absurd stiffness"),
    "elasto_too_stiff": ("error", "absurd stiffness"),
}
FAULT_SHAPE = (32, 40)


def write_faulty_dataset(root: Path) -> dict[str, str]:
    """A kPa dataset with a split column, three clean rows (``ok_*``), then one row per fault in
    ``FAULTS``. Returns sample_id -> fault name. Writes one file beside ``root`` (``outside.png``,
    the target of the escaping paths)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(DEFAULT_YAML.format(name="faulty", unit="kPa"))  # no spacing default
    rng = np.random.default_rng(7)
    h, w = FAULT_SHAPE
    good_bmode = (rng.random(FAULT_SHAPE) * 255).astype(np.uint8)
    good_mask = _blob_mask(FAULT_SHAPE, 0)
    good_kpa = np.full(FAULT_SHAPE, np.nan, np.float32)
    good_kpa[4:28, 5:35] = rng.uniform(10, 80, size=(24, 30))
    outside = root.parent / "outside.png"
    _save(outside, good_bmode)

    frames = root / "frames"
    records: list[dict[str, str]] = []

    def add(
        sample_id: str, subject: str, split: str = "train", spacing: str = "0.1", **files: np.ndarray | str
    ):
        record = {"sample_id": sample_id, "subject_id": subject, "split": split, "spacing_mm": spacing}
        for column in ("bmode", "elasto", "mask"):
            value = files.get(column, good_bmode if column == "bmode" else None)
            if isinstance(value, np.ndarray):
                suffix = {"bmode": ".png", "elasto": ".tif", "mask": ".png"}[column]
                if value.dtype == np.float32 and column == "bmode":
                    suffix = ".npy"
                rel = f"frames/{sample_id}_{column}{suffix}"
                _save(root / rel, value)
                value = rel
            record[column] = value or ""
        records.append(record)

    add("ok_a", "S01", "train", elasto=good_kpa, mask=good_mask)
    add("ok_b", "S02", "val", mask=good_mask)
    add("ok_c", "S03", "test", elasto=good_kpa)
    add("duplicate_sample_id", "S04", "train")

    def raw_file(name: str, content: bytes) -> str:
        path = frames / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return f"frames/{name}"

    png_bytes = cv2.imencode(".png", good_bmode)[1].tobytes()
    add("missing_file", "S10", bmode="frames/not_there.png")
    add("truncated_png", "S11", bmode=raw_file("truncated.png", png_bytes[: len(png_bytes) // 2]))
    add("zero_byte", "S12", bmode=raw_file("zero.png", b""))
    add("text_as_png", "S13", bmode=raw_file("notes.png", b"sample_id,comment\nP01,looks fine\n"))
    colour_bmode = np.dstack([good_bmode] * 3)  # grey stored as RGB is B-mode (issue #11): colour it for real
    colour_bmode[:, : FAULT_SHAPE[1] // 3, 0] = 255  # a red third: colour Doppler/SWE, refused
    add("rgb_bmode", "S14", bmode=colour_bmode)
    nan_bmode = rng.random(FAULT_SHAPE).astype(np.float32)
    nan_bmode[3, 4] = np.nan
    add("bmode_nan", "S15", bmode=nan_bmode)
    add("shape_mismatch", "S16", mask=np.zeros((h, w + 1), np.uint8))
    bad_labels = good_mask.copy()
    bad_labels[0, 0] = 7
    add("label_outside_classes", "S17", mask=bad_labels)
    add("path_dotdot", "S18", bmode="../outside.png")
    add("path_absolute", "S19", bmode=str(outside.resolve()))
    frames.mkdir(parents=True, exist_ok=True)
    os.symlink(outside.resolve(), frames / "link.png")
    add("symlink_outside", "S20", bmode="frames/link.png")
    add("duplicate_sample_id", "S21", "train")
    add("empty_subject_id", "")
    add("subject_in_two_splits", "S01", "test")
    add("unknown_split", "S22", "training")
    add("spacing_negative", "S23", spacing="-0.1")
    add("spacing_text", "S24", spacing="ten")
    add("no_spacing", "S25", spacing="")
    add("elasto_all_nan", "S26", elasto=np.full(FAULT_SHAPE, np.nan, np.float32))
    inf_kpa = good_kpa.copy()
    inf_kpa[10, 10] = np.inf
    add("elasto_inf", "S27", elasto=inf_kpa)
    add("elasto_negative", "S28", elasto=good_kpa - 50.0)
    add("elasto_too_stiff", "S29", elasto=good_kpa * 100.0)

    _write_manifest(
        root, ("sample_id", "subject_id", "split", "spacing_mm", "bmode", "elasto", "mask"), records
    )
    return {name: name for name in FAULTS}
