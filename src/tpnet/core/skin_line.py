"""Where the skin is in a B-mode frame: the origin of "depth below the skin" (issue #14). numpy only.

The rule. A linear probe images the skin as the first strong echo below the transducer face: above it lie the
coupling gel or a stand-off (dark, anechoic) or nothing (the skin echo starts at row 0). So:

1. Row profile: the median grey of each row across the frame's columns (robust to a depth ruler, text or a
   vessel that covers a minority of the columns), smoothed over ``SMOOTH_ROWS`` rows.
2. Search the top ``SEARCH_FRACTION`` of the rows (skin, gel and stand-off lie within the first centimetre of a
   3-5 cm musculoskeletal frame; deeper rows hold fascia and bone, which can be brighter than the skin).
3. The skin row is the first row from the top whose profile reaches half-way between the darkest and the
   brightest row of that search band (the half-maximum of the first rising edge).
4. When the band's brightest and darkest rows differ by less than ``MIN_CONTRAST`` (grey in [0, 1]) there is no
   skin echo to find (a flat or cropped image): None, and depths from the skin are left empty.

Known limits: a bright band drawn above the image (a scanner's title bar) is taken for the skin; crop the image
region (a DICOM ultrasound region or a scanner profile does) before asking. On the synthetic frames the rule
lands within 2 rows (~0.2 mm) of the generator's skin surface (tests/core/test_skin_line.py).
"""

from __future__ import annotations

import numpy as np

SEARCH_FRACTION = 0.3
SMOOTH_ROWS = 3
MIN_CONTRAST = 0.08


def find_skin_row(bmode: np.ndarray) -> int | None:
    """The skin line's row in an (H, W) B-mode in [0, 1]; None when the frame shows no skin echo."""
    grey = np.asarray(bmode, dtype=np.float32)
    if grey.ndim != 2 or grey.shape[0] < 2 or grey.shape[1] < 1:
        return None
    profile = np.median(grey, axis=1)
    kernel = np.ones(SMOOTH_ROWS, np.float32) / SMOOTH_ROWS
    smooth = np.convolve(np.pad(profile, SMOOTH_ROWS // 2, mode="edge"), kernel, mode="valid")
    band = smooth[: max(2, int(round(len(smooth) * SEARCH_FRACTION)))]
    dark, bright = float(band.min()), float(band.max())
    if bright - dark < MIN_CONTRAST:
        return None
    half_way = dark + 0.5 * (bright - dark)
    return int(np.argmax(band >= half_way))
