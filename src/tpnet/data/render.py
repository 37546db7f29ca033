"""Render dataset frames to PNG for a quick look: B-mode | colour-mapped SWE | label overlay.

The SWE panel mimics a scanner display: a jet colour map over 0-100 kPa at 50 % opacity on the
B-mode, drawn only where the map has signal, with the SWE box outline and a colour bar.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tpnet.core.contract import load_manifest, load_spec, resolve_path, trp_class_indices
from tpnet.core.contract_frames import fit_to_bmode, read_row_bmode, row_spacing
from tpnet.core.io import read_elasto, read_mask, write_png
from tpnet.data.dataset import frame_spacing_mm, load_frame, read_row_mask
from tpnet.data.volumes import slice_rows

SWE_RANGE_KPA = (0.0, 100.0)
SWE_OPACITY = 0.5
TITLE_PX = 22
COLOUR_BAR_PX = 44
# RGB per class name; unknown classes get a grey outline.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "active_trp": (255, 40, 40),
    "latent_trp": (255, 220, 0),
    "vessel": (40, 110, 255),
    "nerve": (0, 230, 230),  # cyan: yellow, the atlases' nerve colour, is latent_trp's here
}


def _title(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.zeros((TITLE_PX, panel.shape[1], 3), np.uint8)
    scale = 0.45 if panel.shape[1] >= 160 else 0.32
    cv2.putText(
        bar, text, (4, TITLE_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.vstack([bar, panel])


def _jet_rgb(values_0_1: np.ndarray) -> np.ndarray:
    grey = np.clip(values_0_1 * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB


def swe_panel(bmode: np.ndarray, elasto_kpa: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) RGB: B-mode with the SWE colour overlay where valid and the SWE box outlined."""
    grey = (np.clip(bmode, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if elasto_kpa is None:
        cv2.putText(rgb, "no SWE", (6, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        return rgb
    valid = np.isfinite(elasto_kpa)
    if not valid.any():
        return rgb
    lo, hi = SWE_RANGE_KPA
    colour = _jet_rgb((np.nan_to_num(elasto_kpa, nan=lo) - lo) / (hi - lo))
    blended = (1 - SWE_OPACITY) * rgb + SWE_OPACITY * colour
    rgb = np.where(valid[..., None], blended, rgb).astype(np.uint8)
    rows, cols = np.nonzero(valid)
    rgb = np.ascontiguousarray(rgb)
    cv2.rectangle(
        rgb, (int(cols.min()), int(rows.min())), (int(cols.max()), int(rows.max())), (255, 255, 255), 1
    )
    return rgb


def colour_bar(height: int) -> np.ndarray:
    """Vertical jet bar, 100 kPa at the top, labelled."""
    bar = np.zeros((height, COLOUR_BAR_PX, 3), np.uint8)
    ramp = np.linspace(1.0, 0.0, max(height - 20, 2), dtype=np.float32)[:, None]
    bar[10 : 10 + ramp.shape[0], 2:12] = _jet_rgb(np.repeat(ramp, 10, axis=1))
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.3
    cv2.putText(bar, f"{SWE_RANGE_KPA[1]:.0f}", (14, 16), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(
        bar, f"{SWE_RANGE_KPA[0]:.0f}", (14, height - 10), font, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    cv2.putText(bar, "kPa", (14, height // 2), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def mask_panel(bmode: np.ndarray, mask: np.ndarray | None, classes: tuple[str, ...]) -> np.ndarray:
    """(H, W, 3) RGB: B-mode with each labelled class lightly filled and outlined in its colour."""
    grey = (np.clip(bmode, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if mask is None:
        return rgb.astype(np.uint8)
    outlines = []
    for index, name in enumerate(classes):
        if index == 0:
            continue
        region = mask == index
        if not region.any():
            continue
        colour = CLASS_COLOURS.get(name, (180, 180, 180))
        rgb[region] = 0.75 * rgb[region] + 0.25 * np.array(colour, np.float32)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outlines.append((contours, colour))
    out = np.ascontiguousarray(rgb.astype(np.uint8))
    for contours, colour in outlines:
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def render_frame(
    bmode: np.ndarray,
    elasto_kpa: np.ndarray | None,
    mask: np.ndarray | None,
    classes: tuple[str, ...],
    spacing_mm: float | None = None,
) -> np.ndarray:
    """One RGB image, (TITLE_PX + H, 3 W + COLOUR_BAR_PX, 3): the three panels side by side."""
    h = bmode.shape[0]
    grey = (np.clip(bmode, 0.0, 1.0) * 255).astype(np.uint8)
    spacing = f" {spacing_mm:.3f} mm/px" if spacing_mm else ""
    panels = [
        _title(np.repeat(grey[..., None], 3, axis=2), "B-mode" + spacing),
        _title(swe_panel(bmode, elasto_kpa), "SWE (kPa)"),
        _title(colour_bar(h), ""),
        _title(mask_panel(bmode, mask, classes), "labels"),
    ]
    return np.hstack(panels)


def _pick_rows(rows, n: int, seed: int):
    """Prefer frames with both a trigger point and SWE; then with either; then any."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    ranked = sorted(order, key=lambda i: -rows[i][1])
    return [rows[i][0] for i in ranked[:n]]


def render_samples(root: Path, out_dir: Path, n: int = 3, seed: int = 0) -> list[Path]:
    """Write ``n`` rendered frames of the dataset at ``root`` to ``out_dir``; returns their paths."""
    root, out_dir = Path(root), Path(out_dir)
    spec = load_spec(root)
    trp_labels = trp_class_indices(spec.classes, spec.class_roles)
    scored = []
    for row in slice_rows(spec, load_manifest(root)):  # a sweep (volume row) offers each of its slices
        score = int(row.elasto is not None)
        if row.mask is not None and trp_labels:
            mask = read_row_mask(spec, row)
            score += 2 * int(np.isin(mask, trp_labels).any())
        scored.append((row, score))
    written = []
    for k, row in enumerate(_pick_rows(scored, n, seed)):
        path = out_dir / f"sample_{k}.png"
        if row.slice_index is not None:  # a slice of a sweep, at its own pixel size
            spacing_mm = frame_spacing_mm(spec, row)
            frame = load_frame(spec, row, spacing_mm)
            mask = frame.mask if row.mask else None
            write_png(path, render_frame(frame.bmode, frame.elasto_kpa, mask, spec.classes, spacing_mm))
            written.append(path)
            continue
        # The contract's one reading of a row: a DICOM frame cropped to its image region, maps fitted to it.
        row_bmode = read_row_bmode(resolve_path(root, row.bmode), row.frame)
        elasto = read_elasto(resolve_path(root, row.elasto), spec.elasto_unit) if row.elasto else None
        elasto = None if elasto is None else fit_to_bmode(elasto, "elasto", row_bmode)
        mask = read_mask(resolve_path(root, row.mask)) if row.mask else None
        mask = None if mask is None else fit_to_bmode(mask, "mask", row_bmode)
        spacing_mm, _ = row_spacing(root, row, spec, row_bmode.header)
        image = render_frame(row_bmode.grey, elasto, mask, spec.classes, spacing_mm)
        write_png(path, image)
        written.append(path)
    return written
