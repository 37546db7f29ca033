"""The planned B-mode normalisation (``Encoding.bmode_norm``): per-frame z-score over the imaged region, a crop
scaled with its whole frame's statistics (training patches = inference frames), SWE untouched, and model files
from before the key load as "none"."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.core.encoding import Encoding
from tpnet.core.model_file import build_meta


def frame() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    bmode = rng.uniform(0.2, 0.9, (40, 60)).astype(np.float32)
    bmode[:, :8] = 0.0  # a sector corner: not imaged
    kpa = np.full(bmode.shape, 30.0, np.float32)
    kpa[:10] = np.nan
    return bmode, kpa


def test_zscore_over_the_imaged_region_leaves_outside_at_zero_and_swe_physical():
    bmode, kpa = frame()
    plain = Encoding().encode(bmode, kpa)
    z = Encoding(bmode_norm="zscore_frame").encode(bmode, kpa)
    imaged = z[0][:, 8:]
    assert abs(float(imaged.mean())) < 1e-4 and float(imaged.std()) == pytest.approx(1.0, abs=1e-3)
    assert np.all(z[0][:, :8] == 0.0)
    np.testing.assert_array_equal(z[1:], plain[1:])  # elasto (kPa / scale) and validity unchanged
    np.testing.assert_array_equal(plain[0], bmode)  # "none" is the reader's [0, 1]


def test_a_crop_uses_the_whole_frames_statistics():
    bmode, kpa = frame()
    encoding = Encoding(bmode_norm="zscore_frame")
    whole = encoding.encode(bmode, kpa)
    stats = encoding.bmode_stats(bmode)
    crop = encoding.encode(bmode[5:25, 10:40], kpa[5:25, 10:40], stats)
    np.testing.assert_allclose(crop, whole[:, 5:25, 10:40], atol=1e-6)
    assert Encoding().bmode_stats(bmode) is None


def test_old_model_meta_loads_as_none_and_new_meta_round_trips():
    old = {"channels": ["bmode", "elasto", "elasto_valid"], "kpa_scale": 100.0, "kpa_clip": 300.0}
    assert Encoding.from_dict(old).bmode_norm == "none"
    encoding = Encoding(bmode_norm="zscore_frame")
    assert Encoding.from_dict(encoding.to_dict()) == encoding
    meta = build_meta(
        model_name="UNet", classes=["background", "active_trp"], encoding=encoding, spacing_mm=0.2,
        size_multiple=16, postprocess={"threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0},
        export_method="script",
    )  # fmt: skip
    assert meta["encoding"]["bmode_norm"] == "zscore_frame"
    with pytest.raises(ValueError, match="bmode_norm"):
        Encoding(bmode_norm="minmax")
