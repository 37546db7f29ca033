"""CSV injection: no cell tpnet writes starts a spreadsheet formula; numbers stay numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from model_files import blob_frame, make_model_file
from tpnet.core.csv_safe import safe_cell, safe_row
from tpnet.core.io import write_png
from tpnet.inference.cli import main


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+2+cmd", "'=1+2+cmd"),
        ("+HYPERLINK(x)", "'+HYPERLINK(x)"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-1.5abc", "'-1.5abc"),
        ("-1.5", "-1.5"),  # plain numbers are not formulas: numeric columns stay numeric
        ("+3", "+3"),
        ("-2e-05", "-2e-05"),
        ("-.5", "-.5"),
        ("12.50", "12.50"),
        ("", ""),
        ("scene_1", "scene_1"),
        ("a=b", "a=b"),  # only the first character matters
    ],
)
def test_safe_cell(cell, written):
    assert safe_cell(cell) == written


def test_safe_row_takes_any_values():
    assert safe_row(["=x", -1.5, 3, None]) == ["'=x", "-1.5", "3", ""]


def test_a_frame_named_like_a_formula_is_written_as_text(tmp_path):
    model_path = make_model_file(tmp_path / "model")
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    bmode = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0]
    for stem in ("=1+2+cmd", "@SUM(A1)", "-1.5"):
        write_png(scans / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
        (scans / f"{stem}.json").write_text(json.dumps({"spacing_mm": 0.2}))

    assert main(["--model", str(model_path), "--input", str(scans), "--output", str(out)]) == 0

    with (out / "detections.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert sorted({r[0] for r in rows}) == ["'=1+2+cmd", "'@SUM(A1)", "-1.5"]
    raw = (out / "detections.csv").read_text(encoding="utf-8")
    assert not any(line.startswith(("=", "+", "@")) for line in raw.splitlines())
    for row in rows:
        for value in row[4:9]:  # x_px .. area_mm2: numbers, as written
            float(value)
