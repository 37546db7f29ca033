"""Re-make the README's report pictures with the real tpnet-infer and Debian's headless Chromium:

- docs/img/report_ood.png: the top of a report on the two real DL_Track frames (tests/fixtures/dltrack: no SWE,
  no pixel size) and synthetic frames, showing the header, the "what this model can and cannot tell" box and the
  out-of-distribution banner;
- docs/img/overlay_legend.png: one overlay of a synthetic frame (tpnet.data.synth.generate_frame) with its
  trigger points, legend, scale bar, depth ruler from the skin line and the SWE colour layer, opened in the
  browser as a clinician would see it.

    .venv/bin/python scripts/report_screenshots.py [--out docs/img] [--model outputs/demo/<run>/export/model.pt]

With ``--model`` (what the README's picture uses: the main job's exported model, whose model card holds its own
measured figures) the report is made with that model; without it, with the tests' blob detector, whose card
carries made-up figures for the layout only.

Needs the dev extra (selenium) and Debian's chromium + chromium-driver (.ci/run installs them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "inference")]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from test_report_browser import chromium, write_report_inputs  # noqa: E402
from test_trust_outputs import _reference as training_reference  # noqa: E402

from tpnet.core.io import write_png, write_tiff  # noqa: E402
from tpnet.core.overlay import render_overlay  # noqa: E402
from tpnet.core.postprocess import find_trigger_points  # noqa: E402
from tpnet.core.skin_line import find_skin_row  # noqa: E402
from tpnet.data.synth import generate_frame  # noqa: E402
from tpnet.inference.cli import main as infer  # noqa: E402

CLASSES = ("background", "active_trp", "latent_trp", "vessel")


def report_screenshot(work: Path, out: Path, model: Path | None = None) -> None:
    inputs = write_report_inputs(work, input_reference=training_reference())  # + the statistic test
    # Beside the two real DL_Track frames, synthetic frames of subjects the reference never saw (the test's flat
    # blob frames are, rightly, unlike the training images too): the banner then flags the real frames only.
    for old in inputs["input"].glob("*"):
        if not old.name.startswith("img_"):
            old.unlink()
    # Beyond the main job's 120 subjects (frames no model here has seen), the first three with SWE.
    samples = (generate_frame(0, subject, 0, 128, 128) for subject in range(200, 300))
    with_swe = [(200 + i, sample) for i, sample in enumerate(samples) if sample["elasto"] is not None]
    for subject, sample in with_swe[:3]:
        stem = f"synthetic_s{subject}"
        write_png(inputs["input"] / f"{stem}_bmode.png", sample["bmode"])
        if sample["elasto"] is not None:
            write_tiff(inputs["input"] / f"{stem}_elasto.tif", sample["elasto"])
        (inputs["input"] / f"{stem}.json").write_text(json.dumps({"spacing_mm": sample["spacing_mm"]}))
    report = work / "out"
    infer(["--model", str(model or inputs["model"]), "--input", str(inputs["input"]), "--output", str(report)])
    driver = chromium(width=1200, height=1150)
    try:
        driver.get((report / "report.html").as_uri())
        driver.save_screenshot(str(out / "report_ood.png"))
    finally:
        driver.quit()


def synthetic_overlay(path: Path) -> None:
    """A generated frame with SWE and at least two trigger points, drawn as tpnet-infer draws its overlays; the
    uncertainty circles and classes are set by hand (a TTA spread, one indeterminate) to show every element."""
    for seed in range(100):
        frame = generate_frame(seed, 0, 0, 256, 256)
        points = find_trigger_points(frame["mask"], frame["spacing_mm"], CLASSES, elasto_kpa=frame["elasto"])
        if frame["elasto"] is not None and len(points) >= 2:
            break
    points = [
        dataclasses.replace(p, centroid_sd_mm=0.5 + 0.4 * i, reported_class="indeterminate" if i == 0 else "")
        for i, p in enumerate(points)
    ]
    bmode = frame["bmode"].astype(np.float32) / 255.0
    overlay = render_overlay(
        bmode, frame["mask"], CLASSES, points, frame["elasto"],
        spacing_mm=frame["spacing_mm"], skin_row=find_skin_row(bmode),
        title=f"synthetic seed {seed} subject 0 frame 0 (bmode.png)", swe_layer=True,
    )  # fmt: skip
    write_png(path, overlay)


def overlay_screenshot(work: Path, out: Path) -> None:
    image = work / "overlay.png"
    synthetic_overlay(image)
    height, width = cv2.imread(str(image)).shape[:2]
    page = work / "overlay.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>body{margin:0;background:#fff}"
        f"img{{display:block}}</style></head><body><img src='{image.name}' width='{width}' height='{height}'>"
        "</body></html>"
    )
    driver = chromium(width=width, height=height)
    try:
        driver.get(page.as_uri())
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(width + (width - inner[0]), height + (height - inner[1]))
        driver.save_screenshot(str(out / "overlay_legend.png"))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--model", type=Path, default=None, help="an exported model (default: the tests' one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report_screenshot(Path(tmp) / "report", args.out, args.model)
        overlay_screenshot(Path(tmp), args.out)
    print(f"wrote {args.out / 'report_ood.png'} and {args.out / 'overlay_legend.png'}")


if __name__ == "__main__":
    main()
