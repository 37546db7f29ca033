"""report.html in a real browser (issue #14): the real tpnet-infer on a real exported model, run on synthetic
frames with and without trigger points and on the two REAL DL_Track frames (no SWE, no pixel size: named
out-of-distribution warnings), then the page opened in Debian's headless Chromium through selenium. Every image
must load, every frame section and detection row of the CSVs must be on the page, the banner must name the
flagged frames, and the browser must log no error. Skipped, with the reason, only where no Chromium/chromedriver
is installed (.ci/run installs Debian's when it can).

``write_report_inputs`` and ``chromium`` are also used by scripts/report_screenshots.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_files import MODEL_SPACING_MM, blob_frame, make_model_file
from tpnet.core.confidence import Calibration
from tpnet.core.io import write_png, write_tiff
from tpnet.inference.cli import main

DLTRACK = Path(__file__).parents[1] / "fixtures" / "dltrack" / "images"
CHROMIUM = Path(os.environ.get("TPNET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TPNET_CHROMEDRIVER", "/usr/bin/chromedriver"))


def _figure(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci95": [low, high]}


# The model card the training side writes (the schema of issue #14), with figures a synthetic-trained model might
# have: detection good, active/latent at chance, so active_separable is false.
MODEL_CARD = {
    "training_data": {
        "name": "tpnet synthetic (literature appearance)",
        "fingerprint": "sha256:3f9a0c1d",
        "synthetic": True,
        "subjects": {"train": 28, "val": 6, "test": 6},
    },
    "channels": ["bmode", "elasto", "elasto_valid"],
    "spacing_mm": MODEL_SPACING_MM,
    "validation": {
        "det_f1": _figure(0.82, 0.76, 0.87),
        "det_precision": _figure(0.85, 0.79, 0.9),
        "det_recall": _figure(0.79, 0.72, 0.85),
        "class_acc": _figure(0.52, 0.44, 0.6),
        "loc_err_mm": _figure(0.6, 0.5, 0.7),
        "detection_ece": _figure(0.04, 0.02, 0.06),
        "detection_brier": _figure(0.12, 0.1, 0.14),
        "pixel_ece": _figure(0.01, None, None),
        "frame_auc": _figure(0.93, 0.89, 0.96),
        "frame_ece": _figure(float("nan"), None, None),
        "n_frames": 120,
        "n_subjects": 6,
    },
    "test": None,
    "active_separable": False,
}


def write_report_inputs(folder: Path, dltrack: bool = True, input_reference: dict | None = None) -> dict:
    """A model file and an input folder for a report with every kind of frame: two with trigger points (one with
    SWE partly over a nodule: low coverage), one with none, and (``dltrack``) the two real DL_Track frames.
    ``input_reference``: the card's training-input reference (none: no image-statistic test, which the test
    does not need and which costs seconds to build). Returns {"model": path, "input": folder}."""
    meta_calibration = Calibration(temperature=2.0, tta=True, active_separable=False).to_dict()

    def edit(meta: dict) -> None:
        card = MODEL_CARD if input_reference is None else {**MODEL_CARD, "input_reference": input_reference}
        meta.update(model_card=card, calibration=meta_calibration)

    model = make_model_file(folder / "model", name="synthetic_trp.pt", edit_meta=edit)
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    frames = {
        "two_nodules": blob_frame(
            (12.8, 12.8), 0.2, nodules=[(3.0, 4.0, 1.2), (9.0, 8.0, 1.5)], swe_box_mm=(0, 0, 12.8, 12.8)
        ),
        "half_swe": blob_frame(
            (12.8, 12.8), 0.2, nodules=[(6.0, 6.0, 1.5)], swe_box_mm=(0.0, 0.0, 12.8, 5.6)
        ),
        "empty": blob_frame((9.6, 9.6), 0.2, swe_box_mm=(0, 0, 9.6, 9.6)),
    }
    for stem, (bmode, kpa) in frames.items():
        bmode[:4], bmode[4:7] = 0.45, 0.8  # gel, then the skin echo (background to the detector)
        write_png(inputs / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
        write_tiff(inputs / f"{stem}_elasto.tif", kpa)
        (inputs / f"{stem}.json").write_text(json.dumps({"spacing_mm": 0.2}))
    if dltrack:
        for image in DLTRACK.glob("*.png"):
            shutil.copy(image, inputs / image.name)
    return {"model": model, "input": inputs}


def chromium(width: int = 1280, height: int = 1000):
    """Debian's headless Chromium through its chromedriver; selenium-manager never downloads anything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no headless browser: {', '.join(missing)} not found (.ci/run installs Debian's chromium "
                    "and chromium-driver when it can)")  # fmt: skip
    pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    _require_browser()
    folder = tmp_path_factory.mktemp("report")
    inputs = write_report_inputs(folder)
    out = folder / "out"
    assert main(["--model", str(inputs["model"]), "--input", str(inputs["input"]), "--output", str(out)]) == 0
    return out


def test_report_in_headless_chromium(report):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frames = _rows(report / "frames.csv")
    detections = [r for r in _rows(report / "detections.csv") if r["trp_id"]]
    analysed = [f for f in frames if f["status"] == "analysed"]
    assert len(analysed) == 5 and len(detections) >= 3  # the scene is what the test says it is

    driver = chromium()
    try:
        driver.get((report / "report.html").as_uri())
        sections = driver.find_elements(By.CSS_SELECTOR, "section.frame")
        assert [s.find_element(By.TAG_NAME, "h3").text for s in sections] == [f["name"] for f in analysed]

        # Every image, lazy ones too once scrolled to, loads and decodes.
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == len(analysed)
        for image in images:
            driver.execute_script("arguments[0].scrollIntoView()", image)
            WebDriverWait(driver, 10).until(
                lambda d, i=image: d.execute_script("return arguments[0].complete", i)
            )
            assert driver.execute_script("return arguments[0].naturalWidth", image) > 0, image.get_attribute(
                "src"
            )

        # Every detection row of detections.csv is in its frame's table, with its number and reported class.
        for section, frame in zip(sections, analysed, strict=True):
            expected = [r for r in detections if r["stem"] == frame["stem"]]
            rows = section.find_elements(By.CSS_SELECTOR, "tr.detection")
            assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [r["trp_id"] for r in expected]
            for row, detection in zip(rows, expected, strict=True):
                assert "indeterminate" in row.text.lower() and detection["class"] == "indeterminate"
            if not expected:
                assert "No trigger point found" in section.text
            flagged = bool(frame["warnings"])
            assert bool(section.find_elements(By.CSS_SELECTOR, ".frame-warnings")) == flagged, frame["name"]
        half = sections[[f["stem"] for f in analysed].index("half_swe")]
        assert half.find_elements(By.CSS_SELECTOR, "td.low .badge")  # its stiffness rests on < 50 % SWE

        # The out-of-distribution banner names the two real frames; the top box says what the model cannot do.
        banner = driver.find_element(By.ID, "ood-banner")
        assert "2 of 5 analysed frame(s)" in banner.text
        for name in ("img_00085.png", "img_00304.png"):
            assert name in banner.text
        assert "missing_modality" in banner.text and "pixel_size_assumed" in banner.text
        box = driver.find_element(By.ID, "capabilities").text
        assert "cannot tell active from latent" in box and "indeterminate" in box
        assert "synthetic" in driver.find_element(By.TAG_NAME, "header").text

        # Printed: no shadows, frame sections kept whole, the header's colour printed.
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        style = driver.execute_script(
            "const s = getComputedStyle(document.querySelector('section.frame'));"
            "const h = getComputedStyle(document.querySelector('header'));"
            "return [s.boxShadow, s.breakInside, h.printColorAdjust || h.webkitPrintColorAdjust];"
        )
        assert style == ["none", "avoid", "exact"]

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
