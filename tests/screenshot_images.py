"""Scanner-like screenshots drawn with OpenCV for the screenshot tests: a dark screen, a B-mode view, a
shear-wave colour map (cv2's jet/turbo of a known kPa field) blended over it or beside it, a framed colour bar
with tick labels, and the scanner profile that fits. Small (320 x 240) so tests stay fast."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO}
SCREEN_SIZE = (320, 240)  # width, height
RANGE_KPA = (0.0, 180.0)
MM_PER_PX = 0.2
# Boxes (x, y, w, h). Dual: two equal views side by side; overlay: one view, the SWE region inside it.
DUAL = {"bmode_box": [8, 24, 120, 100], "swe_box": [140, 24, 120, 100]}
OVERLAY = {"bmode_box": [8, 24, 200, 150], "swe_box": [48, 44, 120, 100]}
COLORBAR_BOX = [284, 28, 10, 180]


def true_fields(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth kPa field covering most of the range, NaN in a few holes and a border strip, and grey speckle."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    t = (
        0.5
        + 0.25 * np.sin(xx / 17.0 + phase[0])
        + 0.2 * np.cos(yy / 13.0 + phase[1]) * np.sin(xx / 29.0 + phase[2])
    )
    kpa = (RANGE_KPA[0] + np.clip(t, 0.0, 1.0) * (RANGE_KPA[1] - RANGE_KPA[0])).astype(np.float32)
    kpa[:, :6] = np.nan  # no signal at one side
    cy, cx = rng.integers(20, h - 20), rng.integers(20, w - 20)
    kpa[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = np.nan  # a void (fluid)
    grey = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 1.2)
    grey = 0.05 + 0.8 * (grey - grey.min()) / (grey.max() - grey.min())
    return kpa, grey.astype(np.float32)


def colour_of(kpa: np.ndarray, colormap: str) -> np.ndarray:
    """RGB float of each kPa value through the cv2 colour map (256 entries, index 0 = range minimum)."""
    t = np.clip((np.nan_to_num(kpa, nan=RANGE_KPA[0]) - RANGE_KPA[0]) / (RANGE_KPA[1] - RANGE_KPA[0]), 0, 1)
    index = np.round(t * 255).astype(np.uint8)
    return cv2.applyColorMap(index, COLORMAPS[colormap])[..., ::-1].astype(np.float32)


def draw_screenshot(
    colormap: str = "jet", layout: str = "dual", alpha: float = 0.65, seed: int = 0, blend: str = "overlay"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(screenshot RGB uint8, true kPa in B-mode box coordinates, true grey B-mode in [0, 1], profile dict)."""
    boxes = DUAL if layout == "dual" else OVERLAY
    width, height = SCREEN_SIZE
    screen = np.full((height, width, 3), 14, np.uint8)
    cv2.putText(screen, "SCANNER 9  L18-4  MSK", (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 230, 230), 1)
    bx, by, bw, bh = boxes["bmode_box"]
    sx, sy, sw, sh = boxes["swe_box"]
    kpa_swe, grey_swe = true_fields((sh, sw), seed)
    if layout == "dual":
        grey_bmode = grey_swe
    else:
        _, grey_bmode = true_fields((bh, bw), seed + 1)
        grey_swe = grey_bmode[sy - by : sy - by + sh, sx - bx : sx - bx + sw]
    grey8 = np.repeat(np.round(grey_bmode * 255)[..., None], 3, axis=2)
    screen[by : by + bh, bx : bx + bw] = grey8.astype(np.uint8)
    under = np.repeat(grey_swe[..., None] * 255, 3, axis=2)
    opacity = 1.0 if blend == "replace" else alpha
    colour = opacity * colour_of(kpa_swe, colormap) + (1 - opacity) * under
    view = np.where(np.isfinite(kpa_swe)[..., None], colour, under if blend == "overlay" else 0.0)
    screen[sy : sy + sh, sx : sx + sw] = np.clip(np.round(view), 0, 255).astype(np.uint8)
    cx, cy, cw, ch = COLORBAR_BOX
    cv2.rectangle(screen, (cx - 2, cy - 2), (cx + cw + 1, cy + ch + 1), (200, 200, 200), 1)  # the bar's frame
    ramp = np.linspace(255, 0, ch).round().astype(np.uint8)[:, None].repeat(cw, axis=1)  # top = maximum
    screen[cy : cy + ch, cx : cx + cw] = cv2.applyColorMap(ramp, COLORMAPS[colormap])[..., ::-1]
    for value, y in ((RANGE_KPA[1], cy + 4), (RANGE_KPA[0], cy + ch)):
        cv2.putText(screen, f"{value:g}", (cx + cw + 3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (230, 230, 230), 1)
    if layout == "dual":
        kpa_bmode = kpa_swe
    else:
        kpa_bmode = np.full((bh, bw), np.nan, np.float32)
        kpa_bmode[sy - by : sy - by + sh, sx - bx : sx - bx + sw] = kpa_swe
    profile = {
        "name": f"test {layout} {colormap}",
        "image_size": [width, height],
        **boxes,
        "colorbar_box": COLORBAR_BOX,
        "colorbar_range": list(RANGE_KPA),
        "colorbar_unit": "kPa",
        "mm_per_px": MM_PER_PX,
        "blend": blend,
    }
    return screen, kpa_bmode, grey_bmode, profile


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """The image after a JPEG round trip (OpenCV's encoder, 4:2:0 chroma as scanners' exports)."""
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def write_image(path: Path, image: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), params)
    return path


def write_profile(path: Path, profile: dict) -> Path:
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path
