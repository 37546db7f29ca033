"""The per-patient page of ``tpnet-infer --longitudinal`` (issue #18): the track pictures, the trend plot and
the HTML page, built from hand-made detections through the real tracking core (``build_tracks`` /
``track_changes``), and the written page opened in headless Chromium (skipped, with the reason, where none is
installed, as in test_report_browser.py)."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tpnet.core.longitudinal import Detection, Registration, Visit, build_tracks, track_changes
from tpnet.inference.patient_page import (
    FLAG_MARK,
    VisitView,
    render_patient_page,
    track_colour,
    track_picture,
    trend_plot_png,
    write_patient_page,
)

SPACING_MM = 0.2
SUBJECT = "<script>alert(1)</script>"
RELIABLE = Registration(0.4, 0.1, 0.5, 8.0, 0.12, 0.9, 0.8, 0.3, 5.0, 120, 0.4, True, "")
UNRELIABLE = Registration(
    1.0, 0.2, 0.0, 8.0, 0.9, 0.6, 0.3, 2.0, 0.5, 40, 0.1, False, "residual 0.90 mm > 0.5 mm"
)
# (x_mm, y_mm, radius_mm, mean kPa) per visit; the third baseline TrP resolves at the second visit.
BASELINE = [(4.0, 4.0, 1.2, 42.0), (11.0, 6.0, 1.5, 55.0), (8.0, 9.5, 1.0, 38.0)]
SECOND = [(3.6, 3.9, 1.0, 33.0), (10.6, 5.9, 1.4, 50.0)]
THIRD = [(3.5, 3.8, 0.8, 28.0), (12.5, 9.0, 0.9, 40.0)]


def _detection(x: float, y: float, r: float, kpa: float) -> Detection:
    return Detection(
        x_mm=x, y_mm=y, area_mm2=math.pi * r * r, stiffness_kpa_mean=kpa, stiffness_kpa_max=1.4 * kpa,
        stiffness_kpa_sd=5.0, swe_coverage=0.9, class_name="indeterminate", confidence=0.8,
        depth_from_skin_mm=y - 1.0,
    )  # fmt: skip


def _frame(nodules, shape=(60, 80), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A B-mode in [0, 1] (speckle, a skin echo, a fascia) with dark discs where the TrPs are, and its labels."""
    rng = np.random.default_rng(seed)
    bmode = 0.3 + 0.1 * rng.random(shape)
    bmode[3:6], bmode[40:42] = 0.9, 0.8
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for x, y, r, _ in nodules:
        disc = (xx - x / SPACING_MM) ** 2 + (yy - y / SPACING_MM) ** 2 <= (r / SPACING_MM) ** 2
        bmode[disc], labels[disc] = 0.12, 1
    return bmode, labels


def _patient(third=THIRD, third_registration=UNRELIABLE):
    visits = [
        Visit("2024-01-10", 0.0, [_detection(*n) for n in BASELINE], None, "2024-01-10", 0.0),
        Visit("2024-01-24", 14.0, [_detection(*n) for n in SECOND], RELIABLE, "2024-01-24", 14.0),
        Visit("2024-02-21", 42.0, [_detection(*n) for n in third], third_registration, "2024-02-21", 42.0),
    ]
    tracks = build_tracks(visits, subject_id=SUBJECT)
    views = [
        VisitView("2024-01-10", "2024-01-10", 0.0, 0.0, "p1_v1", ["injection (2 ml lidocaine 1 %)"], None),
        VisitView("2024-01-24", "2024-01-24", 14.0, 14.0, "p1_v2", [], RELIABLE),
        VisitView("2024-02-21", "2024-02-21", 42.0, 42.0, "p1_v3", [], third_registration),
        VisitView("2024-03-20", "2024-03-20", 70.0, 70.0, "p1_v4", [], None, "not analysed: truncated PNG"),
    ]
    return tracks, track_changes(tracks), views


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    assert ok
    return buffer.tobytes()


def _pictures(tracks) -> dict[str, bytes]:
    pictures = {}
    for visit_id, nodules in (("2024-01-10", BASELINE), ("2024-02-21", THIRD)):
        bmode, labels = _frame(nodules)
        rows = [r for r in tracks if r.visit_id == visit_id]
        pictures[visit_id] = _png(track_picture(bmode, labels, [1], rows, SPACING_MM, f"visit {visit_id}"))
    return pictures


def _colour_near(image: np.ndarray, xy: tuple[int, int], colour, radius: int) -> int:
    """Pixels within ``radius`` of ``xy`` that have exactly ``colour``."""
    x, y = xy
    patch = image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
    return int(np.all(patch == np.array(colour, np.uint8), axis=-1).sum())


def _layout_of(frame_hw: tuple[int, int]):
    """The picture's image box (its legend height does not move the image)."""
    from tpnet.core.overlay import overlay_layout

    return overlay_layout(frame_hw, spacing_mm=SPACING_MM, title="t")


# ---------------------------------------------------------------------------------------------- the picture


def test_track_picture_outlines_and_labels_each_track_in_its_colour():
    tracks, _, _ = _patient()
    bmode, labels = _frame(BASELINE)
    rows = [r for r in tracks if r.visit_id == "2024-01-10"]
    picture = track_picture(bmode, labels, [1], rows, SPACING_MM, "baseline")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    layout = _layout_of(bmode.shape)
    assert layout.scale == 8 and picture.shape[1] == layout.width  # upscaled as the overlays are
    assert picture.shape[0] > layout.legend_y  # the legend panel below the image
    for row in rows:
        # The outline in the track's colour runs at the disc's edge: radius r mm from the centre.
        radius_mm = math.sqrt(row.area_mm2 / math.pi)
        edge = layout.to_overlay((row.x_mm + radius_mm) / SPACING_MM, row.y_mm / SPACING_MM)
        assert _colour_near(picture, edge, track_colour(row.track_id), 6) > 0, row.track_id
        # Its label "T<id>" is drawn in the same colour near the centre.
        centre = layout.to_overlay(row.x_mm / SPACING_MM, row.y_mm / SPACING_MM)
        assert _colour_near(picture, centre, track_colour(row.track_id), 5 * layout.text_px) > 20
    # Three tracks, three different colours, none of them the overlay's class colours.
    from tpnet.core.overlay import CLASS_COLOURS

    colours = {track_colour(r.track_id) for r in rows}
    assert len(colours) == 3 and not colours & set(CLASS_COLOURS.values())


def test_track_picture_skips_resolved_rows_and_draws_nothing_outside_trps():
    tracks, _, _ = _patient()
    bmode, labels = _frame(SECOND)
    rows = [r for r in tracks if r.visit_id == "2024-01-24"]
    assert [r.status for r in rows] == ["persisting", "persisting", "resolved"]
    picture = track_picture(bmode, labels, [1], rows, SPACING_MM, "second")
    resolved_colour = track_colour(3)
    layout = _layout_of(bmode.shape)
    image = picture[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ]
    assert not np.all(image == np.array(resolved_colour, np.uint8), axis=-1).any()  # T3 is not drawn
    # A label map without TrP pixels (trp_labels not in it): no outlines, only the labels.
    bare = track_picture(bmode, labels, [7], rows, SPACING_MM, "second")
    assert (bare != picture).any()
    with pytest.raises(ValueError, match="label_map shape"):
        track_picture(bmode, labels[:-1], [1], rows, SPACING_MM, "x")


def test_track_picture_of_a_visit_without_trps():
    bmode, _ = _frame([])
    picture = track_picture(bmode, None, [1], [], SPACING_MM, "empty")
    assert picture.shape[0] > 480 and picture.shape[1] > 640


# ----------------------------------------------------------------------------------------------- the plot


def test_trend_plot_is_a_png_that_changes_with_the_data():
    tracks, changes, views = _patient()
    png = trend_plot_png(tracks, changes, views)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 900 and image.shape[0] == 640
    softer = [(x, y, r, kpa - 10.0) for x, y, r, kpa in THIRD]
    other_tracks, other_changes, _ = _patient(third=softer)
    other = cv2.imdecode(np.frombuffer(trend_plot_png(other_tracks, other_changes, views), np.uint8), 1)
    assert other.shape == image.shape and (other != image).any()
    # Track colours are in the plot (the lines), so the plot and the pictures agree.
    for track_id in (1, 2, 3):
        bgr = np.array(track_colour(track_id)[::-1], np.uint8)
        assert np.all(image == bgr, axis=-1).sum() > 50, track_id


def test_trend_plot_of_ordinal_visits_and_a_single_visit():
    visits = [Visit("1", math.nan, [_detection(*BASELINE[0])]), Visit("2", math.nan, [], RELIABLE)]
    tracks = build_tracks(visits, subject_id="s")
    views = [
        VisitView("1", "", math.nan, None, "a", [], None),
        VisitView("2", "", math.nan, None, "b", [], RELIABLE),
    ]
    assert (
        cv2.imdecode(np.frombuffer(trend_plot_png(tracks, track_changes(tracks), views), np.uint8), 1)
        is not None
    )
    single = trend_plot_png(tracks[:1], [], views[:1])
    assert cv2.imdecode(np.frombuffer(single, np.uint8), 1) is not None


# ------------------------------------------------------------------------------------------------ the page


def _page(plot=True, **kwargs) -> str:
    tracks, changes, views = _patient(**kwargs)
    plot_png = trend_plot_png(tracks, changes, views) if plot else None
    return render_patient_page(
        SUBJECT, views, tracks, changes, _pictures(tracks), ["visit 2024-03-20: broken file"], plot_png,
        "no trend plot: matplotlib is not installed" if not plot else "",
    )  # fmt: skip


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_page_names_problems_reasons_and_embeds_both_pictures_and_the_plot():
    html = _page()
    assert "visit 2024-03-20: broken file" in html  # the caller's problem
    assert "2024-03-20: not analysed: truncated PNG" in html  # the visit's own problem
    assert "unreliable: residual 0.90 mm &gt; 0.5 mm" in html  # the registration's reason, escaped
    assert "reliable</span>" in html
    assert '<a href="../report.html">' in html and 'href="../overlays/p1_v2.png"' in html
    assert 'href="../overlays/p1_v4.png"' not in html  # the visit that was not analysed has no overlay
    pngs = _embedded_pngs(html)
    assert len(pngs) == 3  # the plot, the baseline's picture, the latest's
    for png in pngs:
        assert cv2.imdecode(np.frombuffer(png, np.uint8), 1) is not None
    assert "Baseline: 2024-01-10" in html and "Latest visit: 2024-02-21" in html
    assert "not found here: T3" in html  # resolved at the second visit: named, not drawn
    # Per track: first and latest figures and the change with its SD; T3's stiffness change is unknown.
    assert html.count('<tr class="track') == 3
    assert "−14.0 ± 4.5 kPa" in html  # T1: 42 -> 28 kPa, SDs 5 / sqrt(covered mm2) added in quadrature
    assert "session-to-session repeatability" in html and "first visit" in html
    # The third visit's registration is unreliable: its matches are marked and the reason given per track.
    assert f"T1{FLAG_MARK}, T2{FLAG_MARK}" in html
    assert html.count(f"{FLAG_MARK} flagged: unreliable registration: residual 0.90 mm &gt; 0.5 mm") == 2
    assert "2024-01-24</b>: not found<" in html  # T3's latest visit


def test_page_escapes_the_subject_and_works_without_a_plot():
    html = _page(plot=False)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "no trend plot: matplotlib is not installed" in html
    assert len(_embedded_pngs(html)) == 2  # the two pictures only


def test_page_without_flags_has_no_unreliable_notice(tmp_path):
    html = _page(third_registration=RELIABLE)
    assert 'id="unreliable"' not in html and '<tr class="track flagged">' not in html
    path = tmp_path / "patients" / "p1.html"
    write_patient_page(path, html)
    assert path.read_text(encoding="utf-8") == html and not list(path.parent.glob(".*.tmp"))


# ------------------------------------------------------------------------------------- in a real browser


def test_patient_page_in_headless_chromium(tmp_path):
    from test_report_browser import _require_browser, chromium

    _require_browser()
    from selenium.webdriver.common.by import By

    page = tmp_path / "out" / "patients" / "p1.html"
    write_patient_page(page, _page())
    (tmp_path / "out" / "report.html").write_text("<!DOCTYPE html><title>report</title>", encoding="utf-8")
    driver = chromium(width=1280, height=2400)
    try:
        driver.get(page.as_uri())
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 3
        for image in images:
            assert (
                driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
            )
        assert SUBJECT in driver.find_element(By.TAG_NAME, "h1").text  # shown as text, not run
        assert "broken file" in driver.find_element(By.ID, "problems").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "tr.track")) == 3
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(max(height + 40, 800), 4000))
        shot = tmp_path / "patient-page.png"
        driver.save_screenshot(str(shot))
        Path("/tmp/patient-page.png").write_bytes(shot.read_bytes())
        screenshot = cv2.imread(str(shot))
        assert screenshot is not None and screenshot.std() > 20  # not blank
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        driver.find_element(By.LINK_TEXT, "← back to the report").click()
        assert driver.title == "report"
    finally:
        driver.quit()
