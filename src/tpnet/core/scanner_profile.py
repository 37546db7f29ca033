"""Scanner profiles: where a scanner's screenshot puts the B-mode view, the elastography view and its colour bar.

A profile is a small YAML file a person writes once per scanner preset (examples in ``profiles/`` at the
repository root). ``load_profile`` refuses, naming the file and the key, anything it does not understand:
an unknown key (a typo), a missing key, a wrong type, a negative or empty box. ``read_screenshot`` then checks
that the profile fits each screenshot (its size, boxes inside the image, a colour bar that is a colour ramp)
and decodes it: B-mode as grey, the colour map as kPa (``tpnet.core.colour_swe``), the pixel size from the
profile.

Keys (see ``profiles/generic-dual-view.yaml`` for a commented example):
  name                  text, shown in messages (default: the file's stem)
  image_size            [width, height] the screenshots must have (optional, recommended)
  bmode_box             [x, y, w, h] screen pixels of the B-mode image (required)
  swe_box               [x, y, w, h] of the elastography view: beside the B-mode (dual view, same w and h as
                        bmode_box) or inside bmode_box (colour blended over the B-mode). Default: bmode_box
                        when colorbar_box is given; without both the screenshots are B-mode only.
  colorbar_box          [x, y, w, h] of the coloured part of the colour bar (no frame, no tick labels)
  colorbar_range        [min, max] with colorbar_unit, or text "0-180 kPa" / "0.5-7.7 m/s"
  colorbar_unit         kPa (default) or m/s (shear-wave speed; E = 3 rho c^2 gives kPa)
  colorbar_orientation  bottom-to-top (default: minimum at the bottom), top-to-bottom, left-to-right, right-to-left
  mm_per_px             pixel size in mm, or instead
  depth_scale           {y1_px, y1_mm, y2_px, y2_mm}: two ticks of the depth ruler (mm_per_px = |dmm / dpx|)
  blend                 overlay (default: colour blended over grey B-mode) or replace (pure colour)
  overlay_alpha         opacity of the colour map in (0, 1] when blend is overlay (optional: estimated per image)
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tpnet.core.encoding import shear_speed_to_kpa

ORIENTATIONS: tuple[str, ...] = ("bottom-to-top", "top-to-bottom", "left-to-right", "right-to-left")
BLENDS: tuple[str, ...] = ("overlay", "replace")
UNITS: tuple[str, ...] = ("kPa", "m/s")
KEYS: tuple[str, ...] = (
    "name",
    "image_size",
    "bmode_box",
    "swe_box",
    "colorbar_box",
    "colorbar_range",
    "colorbar_unit",
    "colorbar_orientation",
    "mm_per_px",
    "depth_scale",
    "blend",
    "overlay_alpha",
)
DEPTH_SCALE_KEYS: tuple[str, ...] = ("y1_px", "y1_mm", "y2_px", "y2_mm")
MIN_COLORBAR_LENGTH_PX = 16  # fewer samples cannot resolve 3 % of the range
MAX_PROFILE_BYTES = 1_000_000  # a profile is a few hundred bytes; anything huge is not one
_RANGE_TEXT = re.compile(
    r"^\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*(?:-|to|\.\.)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*(kPa|m/s)\s*$"
)

Box = tuple[int, int, int, int]


class ProfileError(ValueError):
    """The profile file cannot be used; the message starts with its path and names the key."""


@dataclass(frozen=True)
class ScannerProfile:
    path: Path
    name: str
    image_size: tuple[int, int] | None  # (width, height) the screenshots must have
    bmode_box: Box  # (x, y, w, h) screen pixels
    swe_box: Box | None  # None: B-mode-only screenshots
    colorbar_box: Box | None
    colorbar_range_kpa: tuple[float, float] | None  # m/s already converted with E = 3 rho c^2
    colorbar_orientation: str
    mm_per_px: float | None
    blend: str
    overlay_alpha: float | None = None  # None: estimated from each screenshot
    colorbar_range_text: str = ""  # the range as the profile states it, for messages ("0-10 m/s")

    def spacing_mm(self) -> float | None:
        return self.mm_per_px

    @property
    def layout(self) -> str:
        """ "dual" (SWE view beside the B-mode), "overlay" (SWE inside the B-mode box) or "bmode" (no SWE)."""
        if self.swe_box is None:
            return "bmode"
        return "overlay" if _inside(self.swe_box, self.bmode_box) else "dual"

    def boxes(self) -> dict[str, Box]:
        """The boxes the profile sets, by key."""
        named = {"bmode_box": self.bmode_box, "swe_box": self.swe_box, "colorbar_box": self.colorbar_box}
        return {key: box for key, box in named.items() if box is not None}


def load_profile(path: str | Path) -> ScannerProfile:
    """Read and check a profile; ProfileError starting with the path and naming the key on any problem."""
    path = Path(path)
    raw = _read_yaml(path)

    def fail(key: str, reason: str) -> ProfileError:
        return ProfileError(f"{path}: {key}: {reason}")

    unknown = [str(k) for k in raw if k not in KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise fail(key, f"not a scanner profile key ({hint}keys: {', '.join(KEYS)})")
    if "bmode_box" not in raw:
        raise fail("bmode_box", "missing (the B-mode image's [x, y, w, h] in screen pixels is required)")

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"must be a non-empty text, got {name!r}")
    image_size = None
    if raw.get("image_size") is not None:
        image_size = _int_list(raw["image_size"], 2, "image_size", "[width, height]", fail)
        if min(image_size) < 1:
            raise fail("image_size", f"width and height must be positive, got {list(image_size)}")
    bmode_box = _box(raw["bmode_box"], "bmode_box", fail)
    colorbar_box = (
        _box(raw["colorbar_box"], "colorbar_box", fail) if raw.get("colorbar_box") is not None else None
    )
    swe_box = _box(raw["swe_box"], "swe_box", fail) if raw.get("swe_box") is not None else None
    if swe_box is None and colorbar_box is not None:
        swe_box = bmode_box  # colour blended over the whole B-mode view
    if swe_box is not None and colorbar_box is None:
        raise fail(
            "colorbar_box", "missing: swe_box is set, and its colours are decoded against the colour bar"
        )

    orientation = raw.get("colorbar_orientation", "bottom-to-top")
    if orientation not in ORIENTATIONS:
        raise fail("colorbar_orientation", f"{orientation!r} is not one of {list(ORIENTATIONS)}")
    range_kpa, range_text = None, ""
    if colorbar_box is not None:
        if "colorbar_range" not in raw:
            raise fail(
                "colorbar_range", "missing: the values at the two ends of the colour bar, e.g. [0, 180]"
            )
        range_kpa, range_text = _colorbar_range(raw, fail)
        along = colorbar_box[3] if orientation in ORIENTATIONS[:2] else colorbar_box[2]
        if along < MIN_COLORBAR_LENGTH_PX:
            raise fail(
                "colorbar_box",
                f"{along} px along a {orientation} bar; at least {MIN_COLORBAR_LENGTH_PX} px are needed "
                "(is colorbar_orientation right?)",
            )
    elif "colorbar_range" in raw or "colorbar_unit" in raw:
        raise fail("colorbar_range", "set without colorbar_box (where is the colour bar?)")

    if swe_box is not None:
        _check_layout(bmode_box, swe_box, fail)
    if image_size is not None:
        for key, box in (("bmode_box", bmode_box), ("swe_box", swe_box), ("colorbar_box", colorbar_box)):
            if box is not None and not _fits(box, image_size):
                raise fail(
                    key,
                    f"{list(box)} reaches outside the image_size {list(image_size)} (x + w <= width, y + h <= height)",
                )

    blend = raw.get("blend", "overlay")
    if blend not in BLENDS:
        raise fail("blend", f"{blend!r} is not one of {list(BLENDS)}")
    alpha = raw.get("overlay_alpha")
    if alpha is not None:
        alpha = _number(alpha, "overlay_alpha", fail)
        if not 0.0 < alpha <= 1.0:
            raise fail("overlay_alpha", f"must be in (0, 1] (the colour map's opacity), got {alpha}")

    return ScannerProfile(
        path=path,
        name=name.strip(),
        image_size=image_size,
        bmode_box=bmode_box,
        swe_box=swe_box,
        colorbar_box=colorbar_box,
        colorbar_range_kpa=range_kpa,
        colorbar_orientation=orientation,
        mm_per_px=_spacing(raw, fail),
        blend=blend,
        overlay_alpha=alpha,
        colorbar_range_text=range_text,
    )


def _read_yaml(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ProfileError(
                f"{path}: {path.stat().st_size} bytes is not a scanner profile (a few hundred bytes)"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: scanner profile not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the scanner profile ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ProfileError(
            f"{path}: a scanner profile is a mapping of keys (bmode_box: ..., ...), got {type(raw).__name__}"
        )
    return raw


def _number(value: object, key: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a finite number, got {value!r}")
    return float(value)


def _int_list(value: object, length: int, key: str, form: str, fail) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise fail(key, f"must be {form} ({length} whole numbers of screen pixels), got {value!r}")
    return tuple(int(v) for v in value)


def _box(value: object, key: str, fail) -> Box:
    box = _int_list(value, 4, key, "[x, y, w, h]", fail)
    x, y, w, h = box
    if x < 0 or y < 0:
        raise fail(key, f"x and y must not be negative, got {list(box)}")
    if w < 1 or h < 1:
        raise fail(key, f"w and h must be positive, got {list(box)}")
    return box  # type: ignore[return-value]


def _colorbar_range(raw: dict, fail) -> tuple[tuple[float, float], str]:
    value = raw["colorbar_range"]
    unit = raw.get("colorbar_unit")
    if isinstance(value, str):
        match = _RANGE_TEXT.match(value)
        if not match:
            raise fail(
                "colorbar_range", f"{value!r} is not 'MIN-MAX kPa' or 'MIN-MAX m/s' (e.g. '0-180 kPa')"
            )
        low, high, text_unit = float(match[1]), float(match[2]), match[3]
        if unit is not None and unit != text_unit:
            raise fail("colorbar_unit", f"{unit!r} contradicts the unit in colorbar_range {value!r}")
        unit = text_unit
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (_number(v, "colorbar_range", fail) for v in value)
    else:
        raise fail("colorbar_range", f"must be [min, max] or text like '0-180 kPa', got {value!r}")
    unit = "kPa" if unit is None else unit
    if unit not in UNITS:
        raise fail("colorbar_unit", f"{unit!r} is not one of {list(UNITS)}")
    if low < 0 or high <= low:
        raise fail("colorbar_range", f"needs 0 <= min < max, got [{low:g}, {high:g}] {unit}")
    text = f"{low:g}-{high:g} {unit}"
    if unit == "m/s":
        low, high = float(shear_speed_to_kpa(low**2)), float(shear_speed_to_kpa(high**2))
    return (low, high), text


def _spacing(raw: dict, fail) -> float | None:
    if raw.get("mm_per_px") is not None and raw.get("depth_scale") is not None:
        raise fail("depth_scale", "set together with mm_per_px; give one of them")
    if raw.get("mm_per_px") is not None:
        mm = _number(raw["mm_per_px"], "mm_per_px", fail)
        if mm <= 0:
            raise fail("mm_per_px", f"must be positive, got {mm:g}")
        return mm
    scale = raw.get("depth_scale")
    if scale is None:
        return None
    if not isinstance(scale, dict):
        raise fail("depth_scale", f"must be a mapping {{{', '.join(DEPTH_SCALE_KEYS)}}}, got {scale!r}")
    for key in scale:
        if key not in DEPTH_SCALE_KEYS:
            raise fail(f"depth_scale.{key}", f"not a depth_scale key (keys: {', '.join(DEPTH_SCALE_KEYS)})")
    values = {}
    for key in DEPTH_SCALE_KEYS:
        if key not in scale:
            raise fail(
                f"depth_scale.{key}", "missing (two ruler ticks: their y in screen pixels and depth in mm)"
            )
        values[key] = _number(scale[key], f"depth_scale.{key}", fail)
    dpx = values["y2_px"] - values["y1_px"]
    dmm = values["y2_mm"] - values["y1_mm"]
    if dpx == 0 or dmm == 0:
        raise fail("depth_scale", "the two ticks must differ in both y_px and y_mm")
    return abs(dmm / dpx)


def _inside(inner: Box, outer: Box) -> bool:
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _fits(box: Box, size: tuple[int, int]) -> bool:
    return box[0] + box[2] <= size[0] and box[1] + box[3] <= size[1]


def _check_layout(bmode_box: Box, swe_box: Box, fail) -> None:
    """The SWE view lies inside the B-mode view (overlay) or beside it with the same size (dual):
    a decoded pixel must map to one B-mode pixel."""
    if _inside(swe_box, bmode_box):
        return
    if _overlap(swe_box, bmode_box):
        raise fail(
            "swe_box",
            f"{list(swe_box)} partly overlaps bmode_box {list(bmode_box)}; it must lie inside it (colour over "
            "the B-mode) or beside it (dual view)",
        )
    if swe_box[2:] != bmode_box[2:]:
        raise fail(
            "swe_box",
            f"dual view: the SWE view is {swe_box[2]}x{swe_box[3]} px but the B-mode view is "
            f"{bmode_box[2]}x{bmode_box[3]} px; the two views must be the same size",
        )


def box_slices(box: Box) -> tuple[slice, slice]:
    """(rows, columns) slices of an (x, y, w, h) box."""
    x, y, w, h = box
    return slice(y, y + h), slice(x, x + w)


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    rows, cols = box_slices(box)
    return image[rows, cols]


# ------------------------------------------------------------------------------------------ reading screenshots
@dataclass(frozen=True)
class ScreenshotFrame:
    bmode: np.ndarray  # float32 [0, 1], the B-mode box's size
    elasto_kpa: np.ndarray | None  # float32 kPa, same shape as bmode, NaN = no signal / outside the SWE box
    spacing_mm: float | None
    notes: tuple[str, ...]


def read_screenshot(path: str | Path, profile: ScannerProfile) -> ScreenshotFrame:
    """Apply ``profile`` to one screenshot (PNG/JPEG/BMP). FrameReadError, starting with the screenshot's path
    and naming the profile, when the profile does not fit it: another image size, a box outside the image,
    a colour bar that is not a colour ramp."""
    from tpnet.core.colour_swe import colour_bar_problem, decode_swe, luma, sample_colour_bar
    from tpnet.core.io import FrameReadError, read_rgb

    path = Path(path)

    def misfit(reason: str) -> FrameReadError:
        return FrameReadError(
            f"{path}: scanner profile {profile.path} ({profile.name}) does not fit: {reason}"
        )

    rgb = read_rgb(path)
    height, width = rgb.shape[:2]
    if profile.image_size is not None and (width, height) != profile.image_size:
        raise misfit(
            f"the screenshot is {width}x{height} px, the profile's image_size is "
            f"{profile.image_size[0]}x{profile.image_size[1]} px (another scanner, preset or export size?)"
        )
    for key, box in profile.boxes().items():
        if not _fits(box, (width, height)):
            raise misfit(f"{key} {list(box)} reaches outside the {width}x{height} px screenshot")

    bmode = (luma(crop(rgb, profile.bmode_box).astype(np.float32)) / 255.0).astype(np.float32)
    notes: list[str] = []
    elasto = None
    if profile.swe_box is not None and profile.colorbar_box is not None and profile.colorbar_range_kpa:
        bar = sample_colour_bar(
            crop(rgb, profile.colorbar_box), profile.colorbar_orientation, profile.colorbar_range_kpa
        )
        problem = colour_bar_problem(bar)
        if problem is not None:
            raise misfit(f"colorbar_box {list(profile.colorbar_box)}: {problem}")
        swe_rgb = crop(rgb, profile.swe_box)
        if profile.layout == "dual":
            # The B-mode view shows the same grey that lies under the colour in the SWE view.
            decoded = decode_swe(swe_rgb, bar, profile.blend, grey=bmode, alpha=profile.overlay_alpha)
            elasto = decoded.kpa
        else:
            decoded = decode_swe(swe_rgb, bar, profile.blend, grey=None, alpha=profile.overlay_alpha)
            elasto = np.full(bmode.shape, np.nan, np.float32)
            x, y, w, h = profile.swe_box
            inner = (
                slice(y - profile.bmode_box[1], y - profile.bmode_box[1] + h),
                slice(x - profile.bmode_box[0], x - profile.bmode_box[0] + w),
            )
            elasto[inner] = decoded.kpa
            if decoded.grey is not None:
                bmode[inner] = decoded.grey  # the grey estimated under the colour, not the colour's luma
            elif profile.blend == "replace":
                notes.append(
                    f"{path}: the B-mode under the opaque colour map is hidden; read there as its luma"
                )
        if not np.isfinite(elasto).any():
            notes.append(f"{path}: no colour-map pixel found in swe_box {list(profile.swe_box)}")
        elif decoded.alpha is not None and profile.overlay_alpha is None:
            notes.append(f"{path}: colour map opacity estimated as {decoded.alpha:.2f}")
    return ScreenshotFrame(
        bmode=bmode, elasto_kpa=elasto, spacing_mm=profile.spacing_mm(), notes=tuple(notes)
    )
