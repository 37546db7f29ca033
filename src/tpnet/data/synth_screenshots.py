"""Screenshot mode of the synthetic generator: frames drawn the way a scanner's screen shows them (issue #11).

A clinic rarely has raw kPa arrays; it has screenshots: a dark screen with UI chrome (title bar, text, a logo),
a depth ruler, the B-mode view, the shear-wave elastography (SWE) colour map blended over grey, and a colour bar
whose tick labels state the kPa range. This module renders synthetic frames (``tpnet.data.synth``) that way and
writes, beside each screenshot, what was really there (the true kPa map and the labels) plus the scanner profile
that fits, so the colour decoder's error can be measured instead of assumed.

Layouts: ``dual`` = B-mode left, SWE view right (the same B-mode with the colour blended over it);
``overlay`` = one view, the colour blended over the B-mode inside the SWE region. Colour = OpenCV's colour map
(jet, turbo) of the kPa scaled into the bar's range and clipped; NaN kPa (no signal) stays pure grey.

All frames of one dataset share one screen geometry and one pixel size (a scanner preset has one depth
setting), so each frame is first resampled to the display's ``mm_per_px``: the B-mode box is the frame's
``height x width`` at that pixel size, centred laterally, depth 0 at the top (padding is black, no echo).
"""

from __future__ import annotations

import csv
import datetime
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.io import atomic_write_bytes, read_elasto, write_png, write_tiff
from tpnet.data.synth import (
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    check_synth_arguments,
    generate_frame,
    write_frame_files,
)

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO}
LAYOUTS = ("dual", "overlay")
DEFAULT_RANGE_KPA = (0.0, 180.0)
DEFAULT_MM_PER_PX = 0.1  # the middle of the generator's 0.08-0.12 mm subjects
DEFAULT_ALPHA = 0.65  # colour opacity over grey: typical scanners show the map at 60-70 %

# Screen geometry in pixels around the views (fixed, so one profile fits every frame of a dataset).
TITLE_H = 24
TOP_GAP = 10
BOTTOM_H = 30
RULER_W = 40  # depth ruler and its labels left of the first view
VIEW_GAP = 24
BAR_GAP = 16
BAR_W = 12
BAR_LABELS_W = 56
SIDE_PANEL_W = 110  # overlay only: the parameter list right of the colour bar
FONT = cv2.FONT_HERSHEY_SIMPLEX
SCREEN_BG = (12, 12, 16)
TEXT_WHITE = (235, 235, 235)
TEXT_GREY = (150, 150, 150)


def colorize(kpa: np.ndarray, colormap: str, range_kpa: tuple[float, float]) -> np.ndarray:
    """RGB uint8 (..., 3) colour of each kPa value: scaled into ``range_kpa``, clipped, 256-entry colour map.

    NaN gets the colour of the range's minimum (callers mask it out)."""
    lo, hi = range_kpa
    t = np.clip((np.nan_to_num(kpa, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    index = np.round(t * 255.0).astype(np.uint8)
    return colormap_lut(colormap)[index]


def colormap_lut(colormap: str) -> np.ndarray:
    """The colour map's 256 RGB entries, index 0 = the range's minimum."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose from {sorted(COLORMAPS)}")
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(ramp, COLORMAPS[colormap])[:, 0, ::-1].copy()  # BGR -> RGB


def to_display(sample: dict, mm_per_px: float) -> dict:
    """The frame as the display shows it: resampled to ``mm_per_px`` on a box of the frame's own size.

    Depth 0 stays at the top, the image is centred laterally; uncovered pixels are black (B-mode), label 0
    and NaN kPa. B-mode is interpolated linearly, labels and kPa by nearest neighbour (no new label values,
    and the true kPa stay values the generator made)."""
    height, width = sample["bmode"].shape
    scale = sample["spacing_mm"] / mm_per_px  # source pixel -> display pixels
    # display x = scale * source x + shift, the frame's lateral centre on the box's centre.
    shift = (width - width * scale) / 2.0
    matrix = np.array([[scale, 0.0, shift], [0.0, scale, 0.0]], np.float64)

    def warp(arr: np.ndarray, interpolation: int, fill: float) -> np.ndarray:
        return cv2.warpAffine(
            arr,
            matrix,
            (width, height),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        )

    elasto = sample["elasto"]
    return {
        **sample,
        "bmode": warp(sample["bmode"], cv2.INTER_LINEAR, 0),
        "mask": warp(sample["mask"], cv2.INTER_NEAREST, 0),
        "elasto": None if elasto is None else warp(elasto, cv2.INTER_NEAREST, float("nan")),
        "spacing_mm": float(mm_per_px),
    }


def screen_geometry(height: int, width: int, layout: str) -> dict:
    """Where everything lies on the screen for a ``height x width`` view: image size and boxes (x, y, w, h)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    top = TITLE_H + TOP_GAP
    bmode_box = [RULER_W, top, width, height]
    # Dual: a second view right of the B-mode; overlay: the colour is blended over the B-mode view itself.
    swe_box = [RULER_W + width + VIEW_GAP, top, width, height] if layout == "dual" else list(bmode_box)
    bar_h = max(40, int(round(0.6 * height)))
    bar_x = swe_box[0] + width + BAR_GAP
    colorbar_box = [bar_x, top + (height - bar_h) // 2, BAR_W, bar_h]
    screen_w = bar_x + BAR_W + BAR_LABELS_W + (SIDE_PANEL_W if layout == "overlay" else 0)
    screen_h = top + height + BOTTOM_H
    return {
        "image_size": [screen_w, screen_h],
        "bmode_box": bmode_box,
        "swe_box": swe_box,
        "colorbar_box": colorbar_box,
    }


def profile_for(
    height: int,
    width: int,
    layout: str,
    range_kpa: tuple[float, float] = DEFAULT_RANGE_KPA,
    mm_per_px: float = DEFAULT_MM_PER_PX,
    name: str | None = None,
) -> dict:
    """The scanner profile (YAML-ready dict, keys of tpnet.core.scanner_profile) of screenshots rendered here."""
    geometry = screen_geometry(height, width, layout)
    return {
        "name": name or f"tpnet-synth-{layout}",
        "image_size": geometry["image_size"],
        "bmode_box": geometry["bmode_box"],
        "swe_box": geometry["swe_box"],
        "colorbar_box": geometry["colorbar_box"],
        "colorbar_range": [float(range_kpa[0]), float(range_kpa[1])],
        "colorbar_unit": "kPa",
        "colorbar_orientation": "bottom-to-top",
        "mm_per_px": float(mm_per_px),
        "blend": "overlay",
    }


def _text(screen: np.ndarray, text: str, x: int, y: int, scale: float = 0.35, colour=TEXT_WHITE) -> None:
    cv2.putText(screen, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def _draw_chrome(
    screen: np.ndarray, layout: str, rng: np.random.Generator, geometry: dict, alpha: float
) -> None:
    """Title bar, a coloured logo, parameter text: everything a decoder must ignore. Drawn first, so the views
    and the bar drawn afterwards are never covered by it."""
    screen_w, screen_h = geometry["image_size"]
    screen[:TITLE_H] = (44, 46, 56)
    # A small logo: a coloured rectangle (not grey, not on the bar) with its name beside it.
    cv2.rectangle(screen, (6, 5), (26, TITLE_H - 6), (30, 110, 200), thickness=-1)
    cv2.rectangle(screen, (10, 9), (22, TITLE_H - 10), (240, 180, 40), thickness=-1)
    when = datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=int(rng.integers(0, 300 * 86400)))
    _text(screen, f"SYNTHSCAN  L12-4  MSK Trapezius  {when:%Y-%m-%d %H:%M:%S}", 34, 16, 0.38)
    bx, by, bw, bh = geometry["bmode_box"]
    sx, sy, sw, sh = geometry["swe_box"]
    _text(screen, "B-mode" if layout == "dual" else "B-mode + SWE", bx, by - 2, 0.3, TEXT_GREY)
    if layout == "dual":
        _text(screen, "SWE", sx, sy - 2, 0.3, TEXT_GREY)
    gain = int(rng.integers(40, 70))
    rate = int(rng.integers(8, 20))
    footer = f"Gain {gain}  FR {rate} Hz  MI 1.{int(rng.integers(0, 4))}  TIs 0.{int(rng.integers(1, 5))}"
    _text(screen, footer, bx, by + bh + 18, 0.32, TEXT_GREY)
    if layout == "overlay":
        cx, cy, cw, ch = geometry["colorbar_box"]
        px = cx + cw + BAR_LABELS_W
        for row, line in enumerate(
            (
                "SWE",
                f"Opacity {alpha:.0%}",
                "Smooth 3",
                f"Depth {bh * geometry['mm_per_px'] / 10:.1f} cm",
                "Res Std",
            )
        ):
            _text(screen, line, px, by + 12 + 14 * row, 0.3, TEXT_GREY)


def _draw_ruler(screen: np.ndarray, box: list[int], mm_per_px: float) -> None:
    """Depth ruler left of a view: a tick every 5 mm, a label (cm) every 10 mm."""
    x, y, _, h = box
    line_x = x - 5
    cv2.line(screen, (line_x, y), (line_x, y + h - 1), TEXT_GREY, 1)
    depth_mm = 0
    while depth_mm / mm_per_px < h:
        row = y + int(round(depth_mm / mm_per_px))
        long = depth_mm % 10 == 0
        cv2.line(screen, (line_x - (6 if long else 3), row), (line_x, row), TEXT_WHITE, 1)
        if long and depth_mm:
            _text(screen, str(depth_mm // 10), line_x - 18, row + 4, 0.3)
        depth_mm += 5


def _draw_colorbar(screen: np.ndarray, box: list[int], colormap: str, range_kpa: tuple[float, float]) -> None:
    """Vertical bar, bottom = the range's minimum, with a grey frame and kPa tick labels to its right."""
    x, y, w, h = box
    t = (h - 1 - np.arange(h, dtype=np.float64)) / (h - 1)  # top row = 1 (max)
    index = np.round(t * 255.0).astype(np.uint8)
    screen[y : y + h, x : x + w] = colormap_lut(colormap)[index][:, None, :]
    cv2.rectangle(screen, (x - 1, y - 1), (x + w, y + h), TEXT_GREY, 1)
    lo, hi = range_kpa
    for fraction in (0.0, 0.5, 1.0):
        row = y + int(round((1.0 - fraction) * (h - 1)))
        cv2.line(screen, (x + w + 1, row), (x + w + 4, row), TEXT_WHITE, 1)
        _text(screen, f"{lo + fraction * (hi - lo):.0f}", x + w + 7, row + 4, 0.32)
    _text(screen, "kPa", x + w + 7, y - 12, 0.32, TEXT_GREY)


def _roi_outline(view: np.ndarray, elasto: np.ndarray | None) -> None:
    """The scanner's SWE region outline: a 1-px light-grey rectangle just outside the region with signal."""
    if elasto is None:
        return
    rows, cols = np.nonzero(np.isfinite(elasto))
    if rows.size == 0:
        return
    cv2.rectangle(
        view, (int(cols.min()) - 1, int(rows.min()) - 1), (int(cols.max()) + 1, int(rows.max()) + 1),
        (200, 200, 200), 1,
    )  # fmt: skip


def render_screenshot(
    sample: dict,
    colormap: str = "jet",
    layout: str = "dual",
    range_kpa: tuple[float, float] = DEFAULT_RANGE_KPA,
    rng: np.random.Generator | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    mm_per_px: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Draw ``sample`` (from ``tpnet.data.synth.generate_frame``) as a scanner screenshot.

    ``mm_per_px``: the display's pixel size; None = the sample's own (a box pixel per frame pixel). Returns
    (RGB uint8 screenshot, profile dict for it). ``rng`` varies only the chrome's text (time, gain), never
    the geometry, so every frame of a layout fits one profile."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not range_kpa[1] > range_kpa[0]:
        raise ValueError(f"range_kpa must be (min, max) with max > min, got {range_kpa}")
    if mm_per_px is not None and mm_per_px != sample["spacing_mm"]:
        sample = to_display(sample, mm_per_px)
    height, width = sample["bmode"].shape
    profile = profile_for(height, width, layout, range_kpa, sample["spacing_mm"])
    screen_w, screen_h = profile["image_size"]
    screen = np.empty((screen_h, screen_w, 3), np.uint8)
    screen[:] = SCREEN_BG
    _draw_chrome(screen, layout, rng, profile, alpha)

    grey = np.repeat(sample["bmode"][..., None], 3, axis=2)
    elasto = sample["elasto"]
    swe_view = grey.copy()
    if elasto is not None:
        signal = np.isfinite(elasto)
        colour = colorize(elasto, colormap, range_kpa).astype(np.float32)
        blended = alpha * colour + (1.0 - alpha) * grey.astype(np.float32)
        swe_view[signal] = np.round(blended[signal]).astype(np.uint8)
    _roi_outline(swe_view, elasto)
    bx, by, bw, bh = profile["bmode_box"]
    sx, sy, sw, sh = profile["swe_box"]
    if layout == "dual":
        bmode_view = grey.copy()
        _roi_outline(bmode_view, elasto)  # scanners repeat the region's outline on the B-mode view
        screen[by : by + bh, bx : bx + bw] = bmode_view
    screen[sy : sy + sh, sx : sx + sw] = swe_view
    _draw_ruler(screen, profile["bmode_box"], sample["spacing_mm"])
    _draw_colorbar(screen, profile["colorbar_box"], colormap, range_kpa)
    return screen, profile


def encode_screenshot(screen: np.ndarray, jpeg_quality: int | None = None) -> bytes:
    """PNG bytes, or JPEG at ``jpeg_quality`` (OpenCV's default 4:2:0 chroma subsampling, as most exports)."""
    bgr = np.ascontiguousarray(screen[..., ::-1])
    if jpeg_quality is None:
        ok, buf = cv2.imencode(".png", bgr)
    else:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:
        raise OSError("screenshot encoding failed")
    return buf.tobytes()


def write_screenshot_dataset(
    out: str | Path,
    subjects: int,
    frames_per_subject: int,
    seed: int,
    height: int = 256,
    width: int = 256,
    colormap: str = "jet",
    layout: str = "dual",
    jpeg_quality: int | None = None,
    *,
    range_kpa: tuple[float, float] = DEFAULT_RANGE_KPA,
    mm_per_px: float = DEFAULT_MM_PER_PX,
    alpha: float | None = None,
) -> Path:
    """Synthetic screenshots with their ground truth, nested by subject (the importer's first folder):

    out/screenshots/s000/f000.png (.jpg with ``jpeg_quality``), out/labels/s000/f000.png (labels at the B-mode
    box's size), out/truth/s000/f000_kpa.tif (the true kPa shown, NaN = no signal; all NaN for a frame
    without SWE), out/profile.yaml (the profile that fits), and out/raw/: the same display-geometry frames as
    a contract dataset (manifest.csv, bmode/, elasto/, masks/), so a run trained on decoded screenshots can be
    compared with one on the arrays they were drawn from. Same arguments -> the same bytes.

    ``alpha``: the colour's opacity; None = one drawn from ``seed`` in 0.60-0.70 for the whole dataset (one
    scanner preset), not written to the profile: the decoder has to estimate it, as with a real profile
    whose author does not know it."""
    check_synth_arguments(out, subjects, frames_per_subject, seed, height, width)
    # Unknown names and bad settings fail before anything is written.
    colormap_lut(colormap)
    screen_geometry(height, width, layout)
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"{out}: jpeg_quality must be 1..100, got {jpeg_quality}")
    if alpha is None:
        alpha = round(float(np.random.default_rng(np.random.SeedSequence([seed, 8])).uniform(0.6, 0.7)), 2)
    out = Path(out)
    suffix = ".png" if jpeg_quality is None else ".jpg"
    raw = out / "raw"
    rows = []
    for subject in range(subjects):
        subject_id = f"s{subject:03d}"
        for frame in range(frames_per_subject):
            sample = to_display(generate_frame(seed, subject, frame, height, width), mm_per_px)
            # Chrome text per frame from its own stream: frames stay independent of each other's order.
            rng = np.random.default_rng(np.random.SeedSequence([seed, 7, subject, frame]))
            screen, profile = render_screenshot(sample, colormap, layout, range_kpa, rng, alpha=alpha)
            stem = f"{subject_id}/f{frame:03d}"
            atomic_write_bytes(
                out / "screenshots" / f"{stem}{suffix}", encode_screenshot(screen, jpeg_quality)
            )
            write_png(out / "labels" / f"{stem}.png", sample["mask"])
            truth = sample["elasto"]
            if truth is None:
                truth = np.full(sample["bmode"].shape, np.nan, np.float32)
            write_tiff(out / "truth" / f"{stem}_kpa.tif", truth)
            rows.append(_write_raw_frame(raw, sample, subject_id, frame))
    profile = profile_for(
        height, width, layout, range_kpa, mm_per_px, name=f"tpnet-synth-{layout}-{colormap}"
    )
    atomic_write_bytes(out / "profile.yaml", yaml.safe_dump(profile, sort_keys=False).encode())
    _write_raw_manifest(
        raw, rows, seed, {"colormap": colormap, "layout": layout, "overlay_alpha": alpha}, mm_per_px
    )
    return out


def _write_raw_frame(raw: Path, sample: dict, subject_id: str, frame: int) -> dict[str, str]:
    """One frame of out/raw/, as tpnet.data.synth writes its frames (same layout, names, manifest row)."""
    return write_frame_files(raw, sample, f"{subject_id}_f{frame:03d}", subject_id)


def _write_raw_manifest(
    raw: Path, rows: list[dict[str, str]], seed: int, screenshots: dict, mm_per_px: float
) -> None:
    spec = {
        "name": f"synthetic-trapezius-s{seed}-display-{mm_per_px:g}mm",
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "generator": {
            "name": "tpnet.data.synth_screenshots",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "display_mm_per_px": mm_per_px,
            "screenshots": screenshots,  # how the screenshots beside this folder were drawn
        },
    }
    raw.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(raw / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False).encode())
    with (raw / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------- decode error
GOAL_MEDIAN_ABS_ERROR_PCT = 3.0  # issue #11: median |decoded - true| <= 3 % of the colour bar's range
GOAL_RECOVERED_PCT = 95.0  # ... with >= 95 % of the valid SWE pixels decoded (not NaN)


@dataclass(frozen=True)
class DecodeError:
    """How well ``tpnet.core.scanner_profile.read_screenshot`` recovers the true kPa of a screenshot dataset.

    Valid pixels: true kPa not NaN (inside the SWE region, with signal). The true kPa is clipped into the bar's
    range first: a colour cannot say more than its end of the bar."""

    frames: int
    valid_px: int
    recovered_pct: float  # valid pixels decoded (not NaN), % of the valid pixels
    median_abs_error_pct: float  # over the recovered valid pixels, % of the bar's range
    p95_abs_error_pct: float
    median_error_pct: float  # signed (decoded - true): a bias shows here
    false_signal_pct: float  # pixels without signal that decoded to a value, % of the pixels without signal
    decode_s: float  # time spent in read_screenshot (decoding alone, the truth's reading left out)

    def meets_goal(self) -> bool:
        return (
            self.median_abs_error_pct <= GOAL_MEDIAN_ABS_ERROR_PCT
            and self.recovered_pct >= GOAL_RECOVERED_PCT
        )


def measure_decode_error(root: str | Path) -> DecodeError:
    """Decode every screenshot of a ``write_screenshot_dataset`` folder with its profile.yaml; pool the errors.

    Raises ValueError naming the folder when it holds no frame with SWE signal (nothing to measure)."""
    from tpnet.core.scanner_profile import load_profile, read_screenshot

    root = Path(root)
    profile = load_profile(root / "profile.yaml")
    lo, hi = profile.colorbar_range_kpa
    errors, valid_px, recovered, no_signal_px, false_signal, decode_s = [], 0, 0, 0, 0, 0.0
    shots = sorted(p for p in (root / "screenshots").rglob("*") if p.suffix in (".png", ".jpg"))
    for shot in shots:
        stem = shot.relative_to(root / "screenshots").with_suffix("")
        truth = read_elasto(root / "truth" / f"{stem}_kpa.tif")
        start = time.perf_counter()
        decoded = read_screenshot(shot, profile).elasto_kpa
        decode_s += time.perf_counter() - start
        if decoded is None:
            decoded = np.full(truth.shape, np.nan, np.float32)
        if decoded.shape != truth.shape:
            raise ValueError(f"{shot}: decoded {decoded.shape} but the truth is {truth.shape}")
        valid = np.isfinite(truth)
        got = valid & np.isfinite(decoded)
        valid_px += int(valid.sum())
        recovered += int(got.sum())
        no_signal_px += int((~valid).sum())
        false_signal += int((~valid & np.isfinite(decoded)).sum())
        errors.append((decoded[got] - np.clip(truth[got], lo, hi)) / (hi - lo) * 100.0)
    if valid_px == 0:
        raise ValueError(f"{root}: no frame with SWE signal, nothing to measure")
    error = np.concatenate(errors) if recovered else np.full(1, np.nan)
    return DecodeError(
        frames=len(shots),
        valid_px=valid_px,
        recovered_pct=100.0 * recovered / valid_px,
        median_abs_error_pct=float(np.median(np.abs(error))),
        p95_abs_error_pct=float(np.percentile(np.abs(error), 95)),
        median_error_pct=float(np.median(error)),
        false_signal_pct=100.0 * false_signal / max(1, no_signal_px),
        decode_s=decode_s,
    )
