"""Output names are bounded and unique whatever the sample_id or file name; a frame whose outputs cannot be
written is rejected by name and the run goes on."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from model_files import blob_frame, make_model_file
from tpnet.core.io import write_png
from tpnet.data.synth import write_synthetic_dataset
from tpnet.inference.cli import main
from tpnet.inference.output_names import MAX_STEM_BYTES, bounded_stem


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"))


def _stems(out):
    with (out / "detections.csv").open(newline="", encoding="utf-8") as fh:
        return {row["stem"] for row in csv.DictReader(fh)}


def test_bounded_stem_keeps_short_names_and_tells_long_ones_apart():
    assert bounded_stem("scene_1") == "scene_1"
    a, b = bounded_stem("x" * 300 + "a"), bounded_stem("x" * 300 + "b")
    assert a != b and a.startswith("x" * 100)
    assert len(a.encode()) <= MAX_STEM_BYTES and len(b.encode()) <= MAX_STEM_BYTES
    umlauts = bounded_stem("ü" * 200)  # bytes, not characters, are bounded; never half a character
    assert len(umlauts.encode()) <= MAX_STEM_BYTES and umlauts.startswith("ü")


def test_long_sample_ids_in_a_dataset_are_analysed(tmp_path, model_path, capsys):
    dataset = write_synthetic_dataset(
        tmp_path / "ds", subjects=1, frames_per_subject=4, seed=0, height=64, width=64
    )
    manifest = dataset / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    long_a, long_b = "visit-2026/" + "a" * 240 + "/left", "visit-2026/" + "a" * 240 + "/right"
    rows[1]["sample_id"], rows[2]["sample_id"] = long_a, long_b  # same 250-character head
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"

    code = main(["--model", str(model_path), "--input", str(dataset), "--output", str(out)])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["frames_processed"] == 4 and summary["rejected"] == []
    masks = sorted(p.name for p in (out / "masks").iterdir())
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(masks) == 4 and masks == overlays  # one per frame: the two long ids did not collide
    assert all(len(name.encode()) <= MAX_STEM_BYTES + len(".png") for name in masks)
    assert _stems(out) <= {name.removesuffix(".png") for name in masks}  # CSV names the files written
    page = (out / "report.html").read_text()
    assert long_a in page and long_b in page  # the report still shows the full ids


def test_a_long_file_name_in_a_folder_is_analysed(tmp_path, model_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    bmode = np.round(blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0] * 255).astype(np.uint8)
    long_stem = "b" * 240  # 240 + "_bmode.png" fits a file name; "." + 240 + ".png" + a temp suffix does not
    for stem in ("short", long_stem):
        (scans / f"{stem}_bmode.png").write_bytes(cv2.imencode(".png", bmode)[1].tobytes())  # no temp name
        (scans / f"{stem}.json").write_text(json.dumps({"spacing_mm": 0.2}))

    assert main(["--model", str(model_path), "--input", str(scans), "--output", str(out)]) == 0

    assert (out / "masks" / f"{bounded_stem(long_stem)}.png").is_file()
    assert _stems(out) == {"short", bounded_stem(long_stem)}


def test_a_frame_whose_outputs_cannot_be_written_is_rejected_and_the_run_goes_on(
    tmp_path, model_path, capsys
):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    bmode = np.round(blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)])[0] * 255).astype(np.uint8)
    for stem in ("a", "b", "c"):
        write_png(scans / f"{stem}_bmode.png", bmode)
        (scans / f"{stem}.json").write_text(json.dumps({"spacing_mm": 0.2}))
    args = ["--model", str(model_path), "--input", str(scans), "--output", str(out), "--batch-size", "1"]
    assert main(args) == 0
    (out / "overlays" / "b.png").unlink()
    (out / "overlays" / "b.png").mkdir()  # a real obstacle: b's overlay cannot be written over a folder

    code = main([*args, "--overwrite"])

    assert code == 3
    captured = capsys.readouterr()
    assert (
        "REJECTED b_bmode.png: cannot write its results" in captured.out and "Traceback" not in captured.err
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"frames_found": 3, "frames_processed": 2, "frames_rejected": 1}
    assert [r["name"] for r in summary["rejected"]] == ["b_bmode.png"]
    assert _stems(out) == {"a", "c"}
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "c.png"]  # no mask without overlay
    assert 'src="overlays/b.png"' not in (out / "report.html").read_text()
