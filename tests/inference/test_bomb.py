"""tpnet-infer, as a clinician runs it (a separate process), on a folder holding a decompression bomb and a
12-bit frame exported in a 16-bit PNG: the bomb is rejected by name from its header, the rest is analysed."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from crafted_images import write_png16, write_png_bomb
from model_files import blob_frame, make_model_file, separable
from peak_rss import run_with_peak_rss
from tpnet.core.io import write_png
from tpnet.inference.cli import EXIT_REJECTED, LOCK_NAME

PEAK_LIMIT_MIB = 1500  # torch and the model take a few hundred MB; decoding the bomb alone takes 900 MB


def _detections(csv_path, stem):
    with csv_path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["stem"] == stem]
    return sorted((r["class"], round(float(r["x_mm"]), 1), round(float(r["y_mm"]), 1)) for r in rows)


@pytest.mark.slow  # ~20 s: a fresh process imports torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc (Linux)")
def test_bomb_is_rejected_by_name_and_the_run_completes(tmp_path):
    model = make_model_file(tmp_path / "model", edit_meta=separable)  # reports classes
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    bmode, _ = blob_frame((12.8, 12.8), 0.2, nodules=[(3.0, 3.0, 1.5)], vessels=[(9.0, 9.0, 1.2)])
    write_png(in_dir / "eight_bmode.png", np.round(bmode * 255).astype(np.uint8))
    write_png16(
        in_dir / "twelve_bmode.png", np.round(bmode * 4095).astype(np.uint16)
    )  # 12-bit scanner export
    write_png_bomb(in_dir / "bomb_bmode.png", 30_000, 30_000)
    for stem in ("eight", "twelve", "bomb"):
        (in_dir / f"{stem}.json").write_text(json.dumps({"spacing_mm": 0.2}))

    done, peak_mib = run_with_peak_rss(
        "tpnet.inference.cli",
        ["--model", str(model), "--input", str(in_dir), "--output", str(out_dir), "--device", "cpu"],
    )

    log = done.stdout + done.stderr
    assert done.returncode == EXIT_REJECTED, log
    assert "Traceback" not in log
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["counts"] == {"frames_found": 3, "frames_processed": 2, "frames_rejected": 1}
    (rejection,) = summary["rejected"]
    assert rejection["name"] == "bomb_bmode.png"
    assert "30000x30000 px" in rejection["reason"] and "TPNET_MAX_FRAME_PIXELS" in rejection["reason"]
    assert "REJECTED bomb_bmode.png: declares 30000x30000 px" in done.stdout
    assert (out_dir / "report.html").is_file() and not (out_dir / LOCK_NAME).exists()
    assert peak_mib < PEAK_LIMIT_MIB, f"tpnet-infer peaked at {peak_mib:.0f} MiB"

    # The 12-bit frame is read on its own scale (with a warning), so it finds what the 8-bit one finds.
    assert "twelve_bmode.png: uint16 B-mode read as 12-bit" in done.stderr
    # ... and that warning reaches the clinician's summary and report, not only the console
    assert any(w.startswith("twelve_bmode.png: uint16 B-mode read as 12-bit") for w in summary["warnings"])
    assert "twelve_bmode.png: uint16 B-mode read as 12-bit" in (out_dir / "report.html").read_text()
    eight = _detections(out_dir / "detections.csv", "eight")
    assert eight == [("active_trp", 3.0, 3.0)]
    assert _detections(out_dir / "detections.csv", "twelve") == eight
