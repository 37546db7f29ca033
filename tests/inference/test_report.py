"""report.html from its Jinja2 templates (issue #14): what the model is and what it can and cannot tell (from
the model card, tolerating older models without one and missing or NaN figures), the out-of-distribution banner,
the per-TrP columns with low SWE coverage marked, frames without a finding, the per-subject table, print CSS
and escaping. Real templates, real files; the page is parsed back with the standard library's HTML parser.
The same page in a real browser: test_report_browser.py."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import TriggerPoint
from tpnet.inference.inputs import FrameInput, Rejection
from tpnet.inference.report import HtmlReport, frame_section, model_statement

CLASSES = ("background", "active_trp", "latent_trp", "vessel")
CARD = {
    "training_data": {
        "name": "tpnet synthetic",
        "fingerprint": "abc123",
        "synthetic": True,
        "subjects": {"train": 28, "val": 6, "test": 6},
    },
    "channels": ["bmode", "elasto", "elasto_valid"],
    "spacing_mm": 0.2,
    "validation": {
        "det_f1": {"value": 0.82, "ci95": [0.76, 0.87]},
        "det_precision": {"value": 0.85, "ci95": [0.79, 0.9]},
        "det_recall": {"value": 0.79, "ci95": [0.72, 0.85]},
        "class_acc": {"value": 0.52, "ci95": [0.44, 0.6]},
        "loc_err_mm": {"value": 0.6, "ci95": [0.5, 0.7]},
        "detection_ece": {"value": 0.04, "ci95": [None, None]},
        "frame_auc": {"value": math.nan, "ci95": [math.nan, math.nan]},
        "n_frames": 120,
        "n_subjects": 6,
    },
    "test": None,
    "active_separable": False,
    "input_reference": {"bulky": list(range(50))},
}


def _frame(stem: str, spacing_mm: float | None = 0.2, subject: str | None = None, name: str | None = None):
    return FrameInput(
        stem=stem,
        name=name or f"{stem}_bmode.png",
        bmode_path=Path(f"{stem}_bmode.png"),
        elasto_path=Path(f"{stem}_elasto.tif"),
        spacing_mm=spacing_mm,
        spacing_source="sidecar" if spacing_mm else "",
        subject_id=subject,
    )


def _point(trp_id: int, **fields) -> TriggerPoint:
    values = dict(
        trp_id=trp_id, class_name="active_trp", label=1, x_px=30.0, y_px=40.0, x_mm=6.0, y_mm=8.0,
        area_mm2=7.1, stiffness_kpa_mean=42.4, confidence=0.81, nearest_vessel_mm=math.nan,
        stiffness_kpa_median=40.2, stiffness_kpa_sd=5.6, swe_coverage=0.9, p_active=math.nan,
        reported_class="indeterminate", confidence_sd=0.03, centroid_sd_mm=0.4, depth_from_skin_mm=6.9,
    )  # fmt: skip
    values.update(fields)
    return TriggerPoint(**values)


class _Page(HTMLParser):
    """Elements of interest: text by id and by class, table rows by class, attributes of every <img>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.text_by_id: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._row_class = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
            return
        if tag in ("meta", "br", "link", "input"):
            return
        self.stack.append((tag, attrs))
        if tag == "tr":
            self._row, self._row_class = [], attrs.get("class") or ""
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._row_class, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        for _, attrs in self.stack:
            if "id" in attrs:
                self.text_by_id[attrs["id"]] = self.text_by_id.get(attrs["id"], "") + data
        if self._cell is not None:
            self._cell.append(data)


def _finish(tmp_path: Path, sections: list[str], **kwargs) -> str:
    report = HtmlReport(tmp_path / "report.html")
    for section in sections:
        report.add_section(section)
    options = dict(
        model_name="tiny", model_file="tiny.pt", input_name="in", created="2026-01-01 10:00",
        counts={"frames_found": 3, "frames_processed": 2, "frames_rejected": 1},
        trp_counts={"active_trp": 0, "latent_trp": 0, "indeterminate": 2}, classes=CLASSES,
        rejected=[Rejection("bad.png", "truncated")], warnings=[],
    )  # fmt: skip
    options.update(kwargs)
    report.finish(**options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # the streamed sections file is gone
    return (tmp_path / "report.html").read_text(encoding="utf-8")


def test_no_model_card_says_so(tmp_path):
    page = _finish(tmp_path, [], model_meta={"model_name": "old"})
    box = _Page(page).text_by_id["capabilities"]
    assert "No model card: unknown training data, no validated figures." in page
    assert "never validated" in box and "not calibrated" in box and "confirmed by a clinician" in box


def test_synthetic_model_that_cannot_separate_active_from_latent(tmp_path):
    meta = {"model_card": CARD, "calibration": {"active_separable": False, "active_band": 0.1}}
    page = _finish(tmp_path, [], model_meta=meta)
    parsed = _Page(page)
    header = page[page.index("<header>") : page.index("</header>")]
    assert "synthetic (computer-generated) images only" in header and "tpnet synthetic" in header
    assert "28 train, 6 val, 6 test" in header and "abc123" in header
    box = " ".join(parsed.text_by_id["capabilities"].split())
    cannot = box[box.index("It cannot") :]
    assert cannot.index("cannot tell active from latent") < cannot.index(
        "not been validated on real patients"
    )
    assert (
        "accuracy 52 % (95 % CI 44–60 %) at it is no better than chance" in box and "“indeterminate”" in box
    )
    assert "79 of every 100 trigger points" in box and "85 of every 100 it marked were real" in box
    assert "0.6 mm (95 % CI 0.5–0.7 mm)" in box and "0.040" in box  # a CI of None is left out
    assert "nan" not in page.lower() and "bulky" not in page  # NaN figures unknown, not "nan"; no reference
    (figures,) = [r for r in parsed.rows[""] if r[0] == "value (95 % CI)"]
    assert figures[1] == "82 % (95 % CI 76–87 %)" and figures[-1] == "—"  # frame AUC NaN


def test_separable_model_on_a_real_dataset(tmp_path):
    card = {
        **CARD,
        "training_data": {"name": "Clinic A 2025", "synthetic": False},
        "active_separable": True,
        "test": {
            "det_f1": {"value": 0.7, "ci95": [0.6, 0.8]},
            "class_acc": {"value": 0.71, "ci95": [0.62, 0.8]},
        },
    }
    page = _finish(tmp_path, [], model_meta={"model_card": card, "calibration": {"active_band": 0.15}})
    box = " ".join(_Page(page).text_by_id["capabilities"].split())
    assert "trained on the data set “Clinic A 2025”" in page and "synthetic (computer" not in page
    assert (
        "Tell active from latent" in box
        and "within 15 % of even odds" in box
        and "cannot tell active" not in box
    )
    assert "Validated on: test" in page and "Validated on: validation" in page
    assert "detection F1 70 % (95 % CI 60–80 %) on its held-out test images" in box  # the best split speaks


@pytest.mark.parametrize(
    "card",
    [{}, {"training_data": None, "validation": None}, {"validation": {"det_f1": None, "n_frames": "?"}}],
)
def test_incomplete_model_cards_are_tolerated(tmp_path, card):
    page = _finish(tmp_path, [], model_meta={"model_card": card})
    assert "What this model can and cannot tell" in page and "unnamed data set" in page


def test_trigger_point_columns_low_coverage_and_depth(tmp_path):
    points = [_point(1), _point(2, swe_coverage=0.3, stiffness_kpa_mean=55.0, y_px=60.0, p_active=0.64)]
    section = frame_section(_frame("scan"), "overlays/scan.png", points, (64, 80))
    rows = _Page(section).rows["detection"]
    assert len(rows) == 2
    first, second = rows
    assert first[:4] == ["1", "Trigger point, type indeterminate", "81 % ± 3", "—"]
    assert first[4:] == ["42 / 40 / 6", "90 %", "6.9", "6.0, 8.0", "7.1", "—"]
    assert second[3] == "64 %" and second[4] == "55 / 40 / 6 *" and second[5] == "30 %low"
    assert section.count('class="badge"') == 1 and "under 50 % of the trigger point" in section
    assert "no blood vessel detected" in section and '<img src="overlays/scan.png"' in section


def test_unknown_pixel_size_gives_no_millimetres(tmp_path):
    section = frame_section(_frame("scan", spacing_mm=None), "overlays/scan.png", [_point(1)], (64, 80))
    (row,) = _Page(section).rows["detection"]
    assert row[6:10] == ["?", "?, ?", "?", "?"] and "UNKNOWN" in section


def test_needle_paths_listed_per_trp_unsafe_ones_in_red():
    """Issue #16: each TrP's path figures; an unsafe path and a TrP without an in-plane path are flagged."""
    path = dict(needle_side="right", needle_angle_deg=62.0, needle_depth_mm=11.34, entry_x_px=35.0)
    figures = dict(nearest_nerve_mm=5.0, nearest_critical_mm=3.3)
    points = [
        _point(1, **path, **figures, needle_clearance_mm=4.26, path_safe=True),
        _point(2, **path, needle_clearance_mm=1.04, path_safe=False, nearest_critical_mm=0.8),
        _point(3),  # no in-plane path: side "", NaN figures
        _point(4, **path, needle_clearance_mm=math.inf, path_safe=True),  # no nerve or vessel in view
    ]
    guidance = GuidanceParams(min_clearance_mm=3.0)
    section = frame_section(_frame("scan"), "overlays/scan.png", points, (64, 80), guidance=guidance)
    page = _Page(section)
    clear, no_structure = page.rows["needle"]
    unsafe, no_path = page.rows["needle unsafe"]
    assert clear == ["1", "clear: at least 3 mm from every nerve and vessel seen", "right", "62", "11.3", "4.3",
                     "5.0", "3.3"]  # fmt: skip
    assert unsafe[:2] == ["2", "UNSAFE: passes 1.0 mm from a nerve or vessel (under 3 mm)"]
    assert unsafe[7] == "0.8"
    assert no_path[1].startswith("NO in-plane path") and no_path[2:6] == ["—", "—", "—", "—"]
    assert no_structure[5] == "none in view"
    assert "15-70 degrees" in section and "at least 10 % probability" in section
    # Without a pixel size the mm margin cannot be judged: said so, not flagged, no figures in mm.
    unknown = frame_section(_frame("scan", spacing_mm=None), None, points[:2], (64, 80), guidance=guidance)
    rows = _Page(unknown).rows["needle"]
    assert [r[1] for r in rows] == ["not judged: the pixel size is unknown"] * 2
    assert rows[0][4:6] == ["?", "?"]
    assert "needle" not in _Page(frame_section(_frame("scan"), None, points, (64, 80))).rows  # no guidance


def test_frames_without_finding_ood_banner_and_subjects(tmp_path):
    warning = {"code": "missing_modality", "message": "no SWE <b>here</b>"}
    sections = [
        frame_section(_frame("a", subject="p1"), "overlays/a.png", [_point(1)], (64, 64), p_frame=0.9),
        frame_section(
            _frame("b", subject="p2"), "overlays/b.png", [], (64, 64), frame_warnings=[warning], p_frame=0.1
        ),  # fmt: skip
    ]
    summaries = [
        {"stem": "a", "name": "a_bmode.png", "subject_id": "p1", "status": "analysed", "trp_count": 1,
         "p_trp_frame": 0.9, "warnings": []},
        {"stem": "b", "name": "b_bmode.png", "subject_id": "p2", "status": "analysed", "trp_count": 0,
         "p_trp_frame": 0.1, "warnings": ["missing_modality"]},
        {"stem": "c", "name": "bad.png", "subject_id": "p2", "status": "rejected: truncated", "trp_count": None,
         "p_trp_frame": None, "warnings": []},
    ]  # fmt: skip
    page = _finish(tmp_path, sections, frame_summaries=summaries)
    parsed = _Page(page)
    assert page.count('<section class="frame">') == 2 and "No trigger point found." in page
    banner = " ".join(parsed.text_by_id["ood-banner"].split())
    assert "1 of 2 analysed frame(s)" in banner and "(missing_modality): 1 frame(s): b_bmode.png" in banner
    assert "no SWE &lt;b&gt;here&lt;/b&gt;" in page  # a message is text, never markup
    subjects = [r for r in parsed.rows[""] if r[0] in ("p1", "p2")]
    assert subjects == [["p1", "1", "1", "1", "1", "0", "90 %"], ["p2", "2", "1", "0", "0", "1", "10 %"]]
    frames = {r[0]: r for r in parsed.rows[""] if r[0].endswith(".png")}
    assert (
        frames["b_bmode.png"][2] == "no trigger point found" and frames["a_bmode.png"][2] == "1 trigger point"
    )
    assert frames["bad.png"][2] == "not analysed (rejected: truncated)"
    # Header, then the sections in order, then the footer.
    assert page.index("ood-banner") < page.index("a_bmode.png</h3>") < page.index("b_bmode.png</h3>") < page.index("<footer>")  # fmt: skip


def test_print_css_and_no_banner_without_warnings(tmp_path):
    page = _finish(tmp_path, [frame_section(_frame("a"), "overlays/a.png", [], (8, 8))])
    assert "ood-banner" not in page
    css = page[page.index("@media print") :]
    assert "box-shadow: none" in css and "break-inside: avoid" in css and "print-color-adjust: exact" in css


def test_names_and_messages_are_escaped(tmp_path):
    name = '<script>alert("x")</script>&.png'
    section = frame_section(_frame("x", name=name), "overlays/x&y.png", [], (8, 8))
    page = _finish(
        tmp_path, [section], warnings=["<img src=x onerror=alert(1)>"], rejected=[Rejection(name, "<b>")]
    )
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert _Page(page).images == [
        {"src": "overlays/x%26y.png", "alt": f"Overlay for {name}", "loading": "lazy"}
    ]


def test_model_statement_never_fails_on_odd_values():
    for meta in (None, {}, {"model_card": "text"}, {"model_card": {"validation": {"det_recall": "high"}}}):
        statement = model_statement(meta)
        assert statement["what"] and statement["cannot"]


def test_the_box_prefers_the_balanced_active_latent_accuracy(tmp_path):
    """Plain accuracy rewards calling every TrP the commoner type; the card's balanced accuracy is shown."""
    card = {
        **CARD,
        "validation": {
            **CARD["validation"],
            "active_latent_balanced_acc": {"value": 0.5, "ci95": [0.45, 0.58]},
        },
    }
    page = _finish(tmp_path, [], model_meta={"model_card": card, "calibration": {"active_separable": False}})
    box = " ".join(_Page(page).text_by_id["capabilities"].split())
    assert "balanced accuracy 50 % (95 % CI 45–58 %) at it is no better than chance" in box
    assert "Active/latent balanced accuracy" in page


def test_a_confidence_the_figures_do_not_show_calibrated_is_not_called_calibrated(tmp_path):
    card = {
        **CARD,
        "validation": {**CARD["validation"], "detection_ece": {"value": 0.12, "ci95": [0.07, 0.2]}},
    }
    page = _finish(tmp_path, [], model_meta={"model_card": card, "calibration": {"active_separable": False}})
    box = " ".join(_Page(page).text_by_id["capabilities"].split())
    assert "is calibrated" not in box and "only roughly calibrated" in box and "12 percentage points" in box
