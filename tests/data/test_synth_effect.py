"""The synthetic generator's active/latent effect sizes (issue #14): defaults reproduce the generator from before
they existed, byte for byte; a non-default effect changes active trigger points only; bad values are refused
naming the argument; names and caches keep effects apart; dataset.yaml says the data are synthetic."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from tpnet.core.contract import ContractError, load_spec
from tpnet.data.cli import main
from tpnet.data.datamodule import dataset_root
from tpnet.data.synth import (
    ACTIVE_TRP,
    LATENT_TRP,
    NERVE,
    VESSEL,
    ensure_synthetic_dataset,
    generate_frame,
    synthetic_dataset_name,
    write_synthetic_dataset,
)

REPO = Path(__file__).resolve().parents[2]
# The last commit of src/tpnet/data/synth.py before the effect parameters existed.
BEFORE_EFFECT = "b5f6a4a48827eadb25f299377b1fd9f3200ff507"
KEYS = [  # (seed, subject, frame, height, width, appearance)
    (0, 0, 0, 256, 256, "literature"),
    (1, 3, 2, 256, 256, "literature"),
    (7, 1, 1, 192, 96, "literature"),
    (3, 2, 0, 64, 64, "wide"),
    (5, 1, 3, 128, 128, "shifted"),
]
# How far a change at an active TrP can reach: its soft edge plus the B-mode point-spread function (a few tenths
# of a mm) or the SWE blur (Gaussian cut at 4 sigma of a <= 1.5 mm FWHM, about 2.6 mm, plus the soft edge).
BMODE_REACH_MM, SWE_REACH_MM = 2.0, 5.0


def _frame_hash(frame: dict) -> str:
    digest = hashlib.sha256()
    for key in ("bmode", "mask", "tissue"):
        digest.update(np.ascontiguousarray(frame[key]).tobytes())
    elasto = frame["elasto"]
    digest.update(b"none" if elasto is None else np.ascontiguousarray(elasto).tobytes())
    digest.update(repr((frame["spacing_mm"], frame["objects"])).encode())
    return digest.hexdigest()


def _generator_before_effect():
    """synth.py as committed before the effect parameters, imported under its own name (same environment, so the
    comparison tests the code, not the OpenCV/NumPy builds)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot read the generator from before the effect parameters")
    shown = subprocess.run(
        ["git", "show", f"{BEFORE_EFFECT}:src/tpnet/data/synth.py"], cwd=REPO, capture_output=True, text=True
    )
    if shown.returncode != 0:
        pytest.skip(f"commit {BEFORE_EFFECT[:7]} is not in this checkout: {shown.stderr.strip()}")
    name = "tpnet_synth_before_effect"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class body runs
    try:
        exec(compile(shown.stdout, f"{BEFORE_EFFECT[:7]}:synth.py", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def test_defaults_reproduce_the_generator_from_before_the_effect_byte_for_byte():
    before = _generator_before_effect()
    for key in KEYS:
        old = _frame_hash(before.generate_frame(*key))
        assert _frame_hash(generate_frame(*key)) == old, key
        assert _frame_hash(generate_frame(*key, active_stiffness_factor=1.0, active_echo_db=0.0)) == old, key


def test_nerves_change_the_old_generator_only_around_themselves():
    """Nerves (generator version 2) come from their own random stream after every other object: away from a
    nerve and its bundle's vessel the frame is the older generator's, byte for byte, and so is every old label."""
    before = _generator_before_effect()
    with_nerves = with_companion = 0
    for appearance in ("literature", "wide", "shifted"):
        for subject in range(3):
            for index in range(4):
                key = (11, subject, index, 192, 128, appearance)
                old, new = before.generate_frame(*key), generate_frame(*key)
                # The old objects (repr: a vessel's stiffness ratio is NaN), then the nerves and bundle vessels.
                assert repr(new["objects"][: len(old["objects"])]) == repr(old["objects"]), key
                added = new["objects"][len(old["objects"]) :]
                assert all(o["label"] == NERVE or o.get("bundle_companion") for o in added), key
                old_labelled = old["mask"] > 0
                assert np.array_equal(new["mask"][old_labelled], old["mask"][old_labelled]), key
                changed_labels = new["mask"] != old["mask"]
                assert set(np.unique(new["mask"][changed_labels])) <= {VESSEL, NERVE}, key
                if not added:
                    assert _frame_hash(new) == _frame_hash(old), key
                    continue
                with_nerves += 1
                s = new["spacing_mm"]
                outside = (~changed_labels).astype(np.uint8)
                distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * s
                # A bundle's own vessel brightens the tissue below it (posterior enhancement), a few mm either side.
                below_vessel = np.zeros_like(changed_labels)
                rows, cols = np.indices(changed_labels.shape)
                for vessel in (o for o in added if o.get("bundle_companion")):
                    with_companion += 1
                    below_vessel |= (np.abs((cols + 0.5) * s - vessel["cx_mm"]) < 6.0) & (
                        (rows + 0.5) * s > vessel["cz_mm"] - 3.0
                    )
                bmode_changed = _changed(old["bmode"], new["bmode"])
                # wide/shifted: a lateral PSF with side lobes reaches 3 x its first zero (up to 2.5 mm), and an SWE
                # blur of up to 3 mm FWHM 4 sigma (5.1 mm).
                bmode_reach, swe_reach = (
                    (BMODE_REACH_MM, SWE_REACH_MM) if appearance == "literature" else (3.5, 6.0)
                )
                assert not (bmode_changed & (distance > bmode_reach) & ~below_vessel).any(), key
                if new["elasto"] is not None:
                    assert not (_changed(old["elasto"], new["elasto"]) & (distance > swe_reach)).any(), key
    # the comparison saw nerves, and bundles with their vessel
    assert with_nerves >= 6 and with_companion >= 1


def _distance_to_active_mm(frame: dict) -> np.ndarray:
    outside = (frame["mask"] != ACTIVE_TRP).astype(np.uint8)
    return cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * frame["spacing_mm"]


def _changed(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    assert (a is None) == (b is None)
    if a is None:
        return np.zeros((1, 1), bool)
    same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
    return ~same


def test_the_effect_changes_active_trigger_points_only():
    factor, echo_db = 2.0, 6.0
    frames_with_active = stiffness_ratios = 0
    kpa_gain, grey_drop = [], []
    for subject in range(6):
        for index in range(6):
            base = generate_frame(11, subject, index, 192, 128)
            both = generate_frame(
                11, subject, index, 192, 128, active_stiffness_factor=factor, active_echo_db=echo_db
            )
            stiff_only = generate_frame(11, subject, index, 192, 128, active_stiffness_factor=factor)
            echo_only = generate_frame(11, subject, index, 192, 128, active_echo_db=echo_db)
            for other in (both, stiff_only, echo_only):  # labels, anatomy, pixel size: the same draws
                assert np.array_equal(other["mask"], base["mask"])
                assert np.array_equal(other["tissue"], base["tissue"])
                assert other["spacing_mm"] == base["spacing_mm"]
            assert np.array_equal(stiff_only["bmode"], base["bmode"])  # stiffness alone: B-mode untouched
            assert not _changed(echo_only["elasto"], base["elasto"]).any()  # echo alone: SWE untouched

            for old, new in zip(base["objects"], both["objects"], strict=True):
                if old["label"] == ACTIVE_TRP:
                    stiffness_ratios += 1
                    assert new["stiffness_ratio"] == pytest.approx(factor * old["stiffness_ratio"])
                    assert new["contrast_db"] == pytest.approx(old["contrast_db"] + echo_db)
                    assert {k: v for k, v in new.items() if k not in ("stiffness_ratio", "contrast_db")} == {
                        k: v for k, v in old.items() if k not in ("stiffness_ratio", "contrast_db")
                    }
                else:
                    assert repr(new) == repr(old)  # latent TrPs, confounders, vessels (NaN ratio)

            active = base["mask"] == ACTIVE_TRP
            if not active.any():
                assert _frame_hash(both) == _frame_hash(base)
                continue
            frames_with_active += 1
            distance = _distance_to_active_mm(base)
            assert not (_changed(base["bmode"], both["bmode"]) & (distance > BMODE_REACH_MM)).any()
            if base["elasto"] is not None:
                assert not (_changed(base["elasto"], both["elasto"]) & (distance > SWE_REACH_MM)).any()
                far_latent = (base["mask"] == LATENT_TRP) & (distance > SWE_REACH_MM)
                assert np.array_equal(base["elasto"][far_latent], both["elasto"][far_latent], equal_nan=True)
                measured = active & np.isfinite(base["elasto"])
                if measured.sum() > 50:
                    kpa_gain.append(both["elasto"][measured].mean() / base["elasto"][measured].mean())
            grey_drop.append(base["bmode"][active].mean() - both["bmode"][active].mean())

    assert frames_with_active >= 5 and stiffness_ratios >= 5
    # The measured SWE inside active TrPs roughly doubles (the soft edge and the SWE blur keep it under 2x).
    assert len(kpa_gain) >= 3 and all(1.5 < gain <= 2.05 for gain in kpa_gain), kpa_gain
    # 6 dB of a 50-60 dB display range is about 25 grey levels; the speckle keeps it from being exact.
    assert all(10 < drop < 40 for drop in grey_drop), grey_drop


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"active_stiffness_factor": 0.0}, "active_stiffness_factor"),
        ({"active_stiffness_factor": -1.5}, "active_stiffness_factor"),
        ({"active_stiffness_factor": float("nan")}, "active_stiffness_factor"),
        ({"active_stiffness_factor": float("inf")}, "active_stiffness_factor"),
        ({"active_echo_db": float("nan")}, "active_echo_db"),
        ({"active_echo_db": float("-inf")}, "active_echo_db"),
    ],
)
def test_bad_effect_sizes_are_refused_naming_the_argument(tmp_path: Path, arguments: dict, named: str):
    with pytest.raises(ValueError, match=named):
        generate_frame(0, 0, 0, 64, 64, **arguments)
    with pytest.raises(ValueError, match=named):
        write_synthetic_dataset(tmp_path / "ds", 1, 1, seed=0, height=48, width=48, **arguments)
    assert not (tmp_path / "ds").exists()  # refused before anything is written
    with pytest.raises(ValueError, match=named):
        ensure_synthetic_dataset(tmp_path / "cache", 1, 1, seed=0, height=48, width=48, **arguments)
    assert not (tmp_path / "cache").exists()


def test_cli_effect_options(tmp_path: Path, capsys):
    args = ["synth", "--subjects", "1", "--frames-per-subject", "1", "--seed", "0", "--height", "48"]
    assert main([*args, str(tmp_path / "bad"), "--active-stiffness-factor", "0"]) == 2
    assert "active_stiffness_factor must be a positive number" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "shots"), "--screenshots", "--active-echo-db", "3"]) == 2
    assert "--screenshots supports only the default active/latent effect" in capsys.readouterr().err
    out = tmp_path / "ok"
    assert main([*args, str(out), "--active-stiffness-factor", "2", "--active-echo-db", "-1.5"]) == 0
    generator = yaml.safe_load((out / "dataset.yaml").read_text())["generator"]
    assert (generator["active_stiffness_factor"], generator["active_echo_db"]) == (2.0, -1.5)


def test_names_and_caches_keep_effect_sizes_apart(tmp_path: Path):
    assert synthetic_dataset_name(4, 2, 1, 64, 64) == "synth-v2-seed1-4x2-64x64"  # as before the effect
    assert synthetic_dataset_name(4, 2, 1, 64, 64, "literature", 1.0, 0.0) == "synth-v2-seed1-4x2-64x64"
    names = {
        synthetic_dataset_name(4, 2, 1, 64, 64, "literature", factor, echo)
        for factor, echo in [(1.0, 0.0), (1.5, 0.0), (1.5000001, 0.0), (2.0, 0.0), (1.0, 3.0), (2.0, 3.0)]
    }
    assert len(names) == 6
    assert synthetic_dataset_name(4, 2, 1, 64, 64, "wide", 2, 0) == (
        "synth-v2-seed1-4x2-64x64-wide-active-stiffness2.0x-echo0.0db"
    )

    settings = {"subjects": 1, "frames_per_subject": 2, "seed": 0, "height": 48, "width": 48}
    default = ensure_synthetic_dataset(tmp_path, **settings)
    stiffer = ensure_synthetic_dataset(tmp_path, **settings, active_stiffness_factor=2.0)
    assert stiffer != default and stiffer.name == default.name + "-active-stiffness2.0x-echo0.0db"
    assert ensure_synthetic_dataset(tmp_path, **settings, active_stiffness_factor=2) == stiffer  # reused
    darker = ensure_synthetic_dataset(tmp_path, **settings, active_echo_db=3.0)
    assert len({default, stiffer, darker}) == 3

    spec = yaml.safe_load((stiffer / "dataset.yaml").read_text())
    assert spec["name"] == "synthetic-trapezius-s0-active-stiffness2.0x-echo0.0db"
    assert spec["generator"]["active_stiffness_factor"] == 2.0 and spec["generator"]["active_echo_db"] == 0.0
    assert yaml.safe_load((default / "dataset.yaml").read_text())["name"] == "synthetic-trapezius-s0"


def test_training_config_reaches_the_generator(tmp_path: Path):
    data_cfg = OmegaConf.create(
        {
            "root": None,
            "synthetic": {
                "cache_dir": str(tmp_path), "subjects": 1, "frames_per_subject": 1, "seed": 0,
                "height": 48, "width": 48, "appearance": "literature",
                "active_stiffness_factor": 3.0, "active_echo_db": 1.0,
            },
        }
    )  # fmt: skip
    root = dataset_root(data_cfg)
    assert root.name == "synth-v2-seed0-1x1-48x48-active-stiffness3.0x-echo1.0db"
    assert load_spec(root).name == "synthetic-trapezius-s0-active-stiffness3.0x-echo1.0db"


def test_dataset_yaml_says_synthetic_and_load_spec_reads_it(tmp_path: Path):
    root = write_synthetic_dataset(tmp_path / "ds", 1, 1, seed=0, height=48, width=48)
    assert yaml.safe_load((root / "dataset.yaml").read_text())["synthetic"] is True
    assert load_spec(root).synthetic is True

    spec_path = root / "dataset.yaml"
    written = yaml.safe_load(spec_path.read_text())
    del written["synthetic"]
    spec_path.write_text(yaml.safe_dump(written))
    assert load_spec(root).synthetic is True  # cached before the key existed: the generator block says so
    spec_path.write_text(yaml.safe_dump({k: v for k, v in written.items() if k != "generator"}))
    assert load_spec(root).synthetic is False  # a dataset that does not say so: real frames
    spec_path.write_text(yaml.safe_dump({**written, "generator": {"name": "someone.elses.simulator"}}))
    assert load_spec(root).synthetic is False
    for wrong in ("yes please", 1):
        spec_path.write_text(yaml.safe_dump({**written, "synthetic": wrong}))
        with pytest.raises(ContractError, match="synthetic must be true or false"):
            load_spec(root)
