"""``tpnet-data import-screenshots`` and ``profile-check`` end to end on screenshots drawn in the test: nested
folders, labels, bad screenshots named and skipped (exit 3), the result passing ``tpnet-data check``."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from screenshot_images import draw_screenshot, write_image, write_profile
from tpnet.core.io import read_rgb
from tpnet.data.check import main_check
from tpnet.data.cli import main
from tpnet.data.screenshots import BOX_COLOURS


@pytest.fixture()
def shots(tmp_path: Path) -> tuple[Path, Path, Path]:
    """IN with nested patient/visit folders (two a.jpg), a flat file, a wrong-size and a broken screenshot;
    labels for two of them (one of the wrong size); the profile."""
    screen, _, _, profile = draw_screenshot("turbo", "dual", seed=11)
    screen2, _, _, _ = draw_screenshot("turbo", "dual", seed=12)
    inp = tmp_path / "IN"
    write_image(inp / "P01" / "visit1" / "a.jpg", screen)
    write_image(inp / "P01" / "visit2" / "a.jpg", screen2)
    write_image(inp / "P02" / "b.png", screen2)
    write_image(inp / "flat.bmp", screen)
    write_image(inp / "P02" / "small.png", screen[:200])  # another export size
    (inp / "P02" / "broken.jpg").write_bytes(cv2.imencode(".jpg", screen)[1].tobytes()[:500])
    (inp / ".hidden").mkdir()
    write_image(inp / ".hidden" / "thumb.png", screen)  # hidden folders are skipped
    labels = tmp_path / "labels"
    w, h = profile["bmode_box"][2:]
    mask = np.zeros((h, w), np.uint8)
    mask[40:50, 40:52] = 1
    (labels / "P01" / "visit1").mkdir(parents=True)
    cv2.imwrite(str(labels / "P01" / "visit1" / "a.png"), mask)
    (labels / "P02").mkdir()
    cv2.imwrite(str(labels / "P02" / "b.png"), np.zeros((h + 1, w), np.uint8))  # wrong size: refused
    return inp, labels, write_profile(tmp_path / "scanner.yaml", profile)


def _manifest(root: Path) -> dict[str, dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return {row["sample_id"]: row for row in csv.DictReader(fh)}


def test_import_writes_a_contract_dataset_and_names_every_bad_screenshot(shots, tmp_path, capsys) -> None:
    inp, labels, profile = shots
    out = tmp_path / "OUT"
    assert (
        main(["import-screenshots", str(inp), str(out), "--profile", str(profile), "--labels", str(labels)])
        == 3
    )
    captured = capsys.readouterr()
    assert "P02/small.png: scanner profile" in captured.err and "320x200 px" in captured.err
    assert "P02/broken.jpg: unreadable or truncated JPEG" in captured.err
    assert (
        "P02/b.png: its label" in captured.err
        and "121 px" not in captured.err
        and "120x101 px" in captured.err
    )
    assert "imported 3 screenshot(s)" in captured.out and "3 skipped" in captured.out

    rows = _manifest(out)
    assert sorted(rows) == ["P01__visit1__a", "P01__visit2__a", "flat"]  # two a.jpg, no collision
    assert rows["P01__visit1__a"]["subject_id"] == "P01" and rows["flat"]["subject_id"] == "flat"
    assert rows["P01__visit1__a"]["mask"] == "masks/P01/visit1/a.png" and rows["P01__visit2__a"]["mask"] == ""
    assert rows["P01__visit2__a"]["source"] == "P01/visit2/a.jpg"
    assert all(row["spacing_mm"] == "0.2" for row in rows.values())
    bmode = cv2.imread(str(out / rows["flat"]["bmode"]), cv2.IMREAD_UNCHANGED)
    assert bmode.dtype == np.uint8 and bmode.shape == (100, 120)
    kpa = tifffile.imread(out / rows["flat"]["elasto"])
    assert kpa.dtype == np.float32 and kpa.shape == (100, 120)
    assert np.isnan(kpa[:, :6]).all() and np.isfinite(kpa[:, 10:]).mean() > 0.9  # no signal stays NaN
    assert not (out / "bmode" / ".hidden").exists()
    assert (out / "dataset.yaml").read_text().count("elasto_unit: kPa") == 1

    assert main_check(out) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_all_good_exits_0_and_bad_folders_or_profiles_exit_2(shots, tmp_path, capsys) -> None:
    inp, _, profile = shots
    for bad in ("small.png", "broken.jpg"):
        (inp / "P02" / bad).unlink()
    out = tmp_path / "OUT"
    assert main(["import-screenshots", str(inp), str(out), "--profile", str(profile)]) == 0
    assert len(_manifest(out)) == 4 and all(not row["mask"] for row in _manifest(out).values())
    capsys.readouterr()

    before = sorted(p.relative_to(inp) for p in inp.rglob("*"))
    assert main(["import-screenshots", str(inp), str(inp / "P01" / "out"), "--profile", str(profile)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert main(["import-screenshots", str(inp), str(inp), "--profile", str(profile)]) == 2
    assert main(["import-screenshots", str(inp), str(out), "--profile", str(profile)]) == 2  # not empty
    assert "not an empty folder" in capsys.readouterr().err
    assert sorted(p.relative_to(inp) for p in inp.rglob("*")) == before  # IN untouched

    typo = tmp_path / "typo.yaml"
    typo.write_text(profile.read_text().replace("colorbar_box", "colourbar_box"))
    assert main(["import-screenshots", str(inp), str(tmp_path / "new"), "--profile", str(typo)]) == 2
    err = capsys.readouterr().err
    assert f"{typo}: colourbar_box: not a scanner profile key (did you mean colorbar_box?" in err
    assert not (tmp_path / "new").exists()


def test_profile_check_draws_the_boxes_and_prints_the_decoded_range(shots, tmp_path, capsys) -> None:
    inp, _, profile = shots
    out_png = tmp_path / "check.png"
    shot = inp / "P02" / "b.png"
    assert main(["profile-check", str(shot), "--profile", str(profile), "--out", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "layout dual, blend overlay" in printed and "spacing: 0.2 mm/px" in printed
    assert "decoded kPa: min" in printed and "median" in printed and "of the SWE box" in printed
    assert "colour bar: 0-180 kPa" in printed
    drawn = read_rgb(out_png)
    original = read_rgb(shot)
    assert drawn.shape[0] == original.shape[0] and drawn.shape[1] > original.shape[1]  # + the decoded panel
    x, y, w, h = 8, 24, 120, 100  # the dual bmode_box: its outline in the box colour
    assert tuple(drawn[y + h // 2, x]) == BOX_COLOURS["bmode_box"]
    assert tuple(drawn[y + h - 1, x + w // 2]) == BOX_COLOURS["bmode_box"]

    small = inp / "P02" / "small.png"
    assert main(["profile-check", str(small), "--profile", str(profile), "--out", str(out_png)]) == 2
    printed = capsys.readouterr().out
    assert "does not fit" in printed and "320x200 px" in printed
    assert read_rgb(out_png).shape == (200, 320, 3)  # the boxes are still drawn, to see what is off


def test_synth_screenshots_import_and_check(tmp_path, capsys) -> None:
    """tpnet-data synth --screenshots writes screenshots, labels and the profile that fits; importing them
    gives a dataset that passes check."""
    synth = tmp_path / "synth"
    args = ["--subjects", "2", "--frames-per-subject", "1", "--seed", "3", "--height", "64", "--width", "64"]
    flags = ["--screenshots", "--colormap", "turbo", "--layout", "overlay", "--jpeg-quality", "90"]
    assert main(["synth", str(synth), *args, *flags]) == 0
    assert sorted(p.suffix for p in (synth / "screenshots").rglob("*.*")) == [".jpg", ".jpg"]
    out = tmp_path / "imported"
    argv = [
        "import-screenshots",
        str(synth / "screenshots"),
        str(out),
        "--profile",
        str(synth / "profile.yaml"),
    ]
    assert main([*argv, "--labels", str(synth / "labels")]) == 0
    assert main_check(out) == 0
    assert main(["synth", str(tmp_path / "x"), *args, "--screenshots", "--jpeg-quality", "101"]) == 2
