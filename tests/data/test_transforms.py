"""tpnet.data.transforms: no network call on import; the ultrasound artefacts (usaugment) change B-mode only,
inside the imaged region, reproducibly, and only when a config turns them on. (Geometry and kPa handling:
tests/training/test_augment.py.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tpnet.configuration import config_dir
from tpnet.data.transforms import Frame, TrainTransform

_CHILD = r"""
import socket, urllib.request

def refuse(*args, **kwargs):
    raise AssertionError(f"network call while importing tpnet.data.transforms: {args[:1]}")

urllib.request.urlopen = refuse
socket.create_connection = refuse
import tpnet.data.transforms  # noqa: F401
print("imported")
"""


def test_importing_transforms_makes_no_network_call():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
    assert "Error fetching version info" not in done.stderr


ULTRASOUND_PS = ("depth_attenuation_p", "shadow_p", "haze_p", "speckle_reduction_p")
# Everything but the ultrasound artefacts off, so any change to a frame is theirs.
ONLY_ULTRASOUND = {
    "hflip_p": 0.0,
    "affine_p": 0.0,
    "brightness_contrast_p": 0.0,
    "gamma_p": 0.0,
    "speckle_noise_p": 0.0,
    "blur_p": 0.0,
    "elasto_noise_std": 0.0,
    "elasto_void_p": 0.0,
    "elasto_drop_p": 0.0,
}


def _frame(size: int = 48) -> Frame:
    """Textured B-mode with a zero-filled left strip (outside the imaged region), labels, kPa with a NaN band."""
    rng = np.random.default_rng(0)
    bmode = rng.uniform(0.05, 0.95, (size, size)).astype(np.float32)
    bmode[:, :6] = 0.0
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 12:40] = 1
    mask[32:44, 20:28] = 3
    kpa = rng.uniform(5.0, 150.0, (size, size)).astype(np.float32)
    kpa[:8] = np.nan
    return Frame(bmode=bmode, elasto_kpa=kpa, mask=mask)


@pytest.mark.parametrize("name", ULTRASOUND_PS)
def test_ultrasound_artefact_changes_bmode_only_inside_the_imaged_region(name):
    frame = _frame()
    out = TrainTransform(**ONLY_ULTRASOUND, **{name: 1.0})(frame, np.random.default_rng(1))
    np.testing.assert_array_equal(out.mask, frame.mask)
    np.testing.assert_array_equal(out.elasto_kpa, frame.elasto_kpa)  # kPa and its NaN positions untouched
    assert out.bmode.dtype == np.float32 and out.bmode.min() >= 0.0 and out.bmode.max() <= 1.0
    assert np.abs(out.bmode - frame.bmode)[:, 6:].max() > 1e-3
    np.testing.assert_array_equal(out.bmode[:, :6], 0.0)  # the zero fill is not imaged tissue


def test_ultrasound_artefacts_are_reproducible_whatever_the_global_random_state():
    """usaugment draws from Python's and NumPy's global generators: the frame's own generator must decide."""
    transform = TrainTransform(**ONLY_ULTRASOUND, **{name: 1.0 for name in ULTRASOUND_PS})

    def run(item_seed: int, global_seed: int) -> np.ndarray:
        random.seed(global_seed)
        np.random.seed(global_seed)
        return transform(_frame(), np.random.default_rng(item_seed)).bmode

    np.testing.assert_array_equal(run(7, global_seed=1), run(7, global_seed=2))
    assert not np.array_equal(run(7, global_seed=1), run(8, global_seed=1))


def test_ultrasound_artefacts_leave_the_global_generators_as_they_were():
    transform = TrainTransform(**ONLY_ULTRASOUND, **{name: 1.0 for name in ULTRASOUND_PS})
    random.seed(3)
    np.random.seed(3)
    expected = random.random(), np.random.random()
    random.seed(3)
    np.random.seed(3)
    transform(_frame(), np.random.default_rng(7))
    assert (random.random(), np.random.random()) == expected


def _augment_config(option: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return instantiate(compose("train", overrides=[f"augment={option}"]).augment)


def test_ultrasound_artefacts_are_off_by_default_and_on_in_the_ultrasound_preset():
    default, ultrasound = _augment_config("default"), _augment_config("ultrasound")
    assert default.ultrasound is None  # no extra random draws: default runs are exactly as before
    assert ultrasound.ultrasound is not None
    assert {type(t).__name__ for t in ultrasound.ultrasound.transforms} == {
        "DepthAttenuation",
        "GaussianShadow",
        "HazeArtifact",
        "SpeckleReduction",
    }
