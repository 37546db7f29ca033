"""``--no-overlays``: masks, CSVs and the report as without it (bar the pictures), overlays/ left empty, and the
run says so in summary.json and on the page."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_files import blob_frame, make_model_file, separable
from tpnet.core.io import read_array, write_png, write_tiff
from tpnet.inference.cli import NO_OVERLAYS_NOTE, main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"), edit_meta=separable)


def test_no_overlays_writes_the_same_masks_and_csv_without_pictures(tmp_path, model_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bmode, kpa = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)], swe_box_mm=(0.0, 0.0, 6.4, 6.4))
    for stem in ("a", "b"):
        write_png(in_dir / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
        write_tiff(in_dir / f"{stem}_elasto.tif", kpa)
    base = ["--model", str(model_path), "--input", str(in_dir), "--spacing-mm", "0.2"]

    assert main([*base, "--output", str(tmp_path / "with")]) == 0
    assert main([*base, "--output", str(tmp_path / "without"), "--no-overlays"]) == 0

    with_dir, without_dir = tmp_path / "with", tmp_path / "without"
    assert sorted(p.name for p in (with_dir / "overlays").iterdir()) == ["a.png", "b.png"]
    assert list((without_dir / "overlays").iterdir()) == []
    for stem in ("a", "b"):
        mask = read_array(without_dir / "masks" / f"{stem}.png")
        assert np.array_equal(mask, read_array(with_dir / "masks" / f"{stem}.png")) and mask.any()
    csv_with = (with_dir / "detections.csv").read_text()
    assert (without_dir / "detections.csv").read_text() == csv_with and "active" in csv_with
    summary = json.loads((without_dir / "summary.json").read_text())
    assert summary["settings"]["overlays"] is False and NO_OVERLAYS_NOTE in summary["warnings"]
    assert json.loads((with_dir / "summary.json").read_text())["settings"]["overlays"] is True
    page = (without_dir / "report.html").read_text()
    assert 'href="overlays/' not in page and page.count("did not draw overlays (--no-overlays)") == 2
    assert (
        page.count('src="overlays/') == 0
        and (with_dir / "report.html").read_text().count('src="overlays/') == 2
    )
