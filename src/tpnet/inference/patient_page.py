"""One patient's page of the report (issue #18, ``tpnet-infer --longitudinal``): each trigger point's fate across
the visits, in one self-contained HTML file (``patients/<subject>.html``, linking back to ``../report.html``).

What it shows, top to bottom: the visits that could not be tracked and why; the visits table (date, days since
the first visit and since the injection, events, the registration to the baseline: shift, tilt, residual, and
"reliable" or the reason it is not); the trend plot (``trend_plot_png``: stiffness and size per track over
time); one table row per track (first and latest visit, the change with its ± SD, status, why it is flagged);
the visit pictures (``track_picture``: the B-mode with each track's outline and label "T<id>") side by side;
and what the ± do and do not include.

Pictures and the plot are embedded as ``data:`` URIs, so the page is one file that can be e-mailed. As in the
report, the HTML comes from a Jinja2 template (``templates/patient.html.j2``) through ``report._render`` with
autoescaping: subject ids, visit labels and reasons are escaped by the engine, never here.

Track colours: a stable colour per track id from the Okabe-Ito colour-blind-safe palette without its yellow
and sky blue (close to the latent-TrP and vessel class colours of the overlays), cycling after six tracks (the
label "T<id>" still tells them apart). matplotlib (a base dependency) is imported only where the plot is drawn.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tpnet.core.atomic import atomic_write_text
from tpnet.core.longitudinal import Change, Registration, TrackRow, area_sd, stiffness_mean_sd
from tpnet.core.overlay import (
    HALO_COLOUR,
    PANEL_COLOUR,
    _depth_ruler,
    _legend,
    _scaled_bmode,
    _title,
    _upscale,
    _wrap_legend,
    draw_text,
    label_rects,
    overlay_layout,
)
from tpnet.core.skin_line import find_skin_row
from tpnet.inference.report import _finite, _num, _render
from tpnet.inference.sweep_views import _cross, _draw_outlines

# Okabe & Ito (2008) colours (RGB): orange, bluish green, reddish purple, vermillion, blue, light grey.
TRACK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (213, 94, 0),
    (0, 114, 178),
    (200, 200, 200),
)
UNTRACKED_COLOUR = (255, 255, 255)  # a TrP outline with no track row near it (thin white)
FLAG_MARK = "*"  # after a label whose match rests on an unreliable registration
PLOT_SIZE_IN = (9.0, 6.4)  # at PLOT_DPI: 900 x 640 px, the page's plot width
PLOT_DPI = 100
INJECTION_COLOUR = "#a3261b"
NO_PLOT_NOTE = "no trend plot: matplotlib is not installed"
HONEST_NOTE = (
    "Changes are measured from each trigger point's first visit (its baseline), not between consecutive "
    "visits. The ± figures are one standard deviation of the measurement within a visit (the stiffness mean's "
    "standard error over its elastography samples, the segmented outline's position for the area); the "
    "session-to-session repeatability of shear-wave elastography (probe pressure, region of interest) is not "
    "included, so a real change must be larger than they suggest. A flagged row's match rests on an unreliable "
    "registration of its visit to the baseline: the trigger point may not be the same one."
)


@dataclass
class VisitView:
    """One visit of the patient as the page shows it."""

    visit_id: str  # label: ISO date or ordinal
    date: str  # ISO date or ""
    days_since_first: float  # NaN for ordinal visits
    days_since_injection: float | None
    stem: str  # the frame's output name (links ../overlays/<stem>.png)
    events: list[str]  # e.g. ["injection (2 ml lidocaine 1 %)"]
    registration: Registration | None  # None for the baseline
    problem: str = ""  # why this visit is not tracked ("" = tracked), e.g. "not analysed: <reason>"


def track_colour(track_id: int) -> tuple[int, int, int]:
    """The colour of a track (RGB), the same on every picture and in the plot."""
    return TRACK_COLOURS[(int(track_id) - 1) % len(TRACK_COLOURS)]


def track_label(row: TrackRow) -> str:
    """ "T<id>", with ``FLAG_MARK`` when the row's match rests on an unreliable registration."""
    return f"T{row.track_id}" + (FLAG_MARK if row.flagged else "")


def resolved_here(rows: Sequence[TrackRow]) -> list[int]:
    """Track ids resolved at this visit (its rows): not found again, so not drawn on its picture."""
    return [r.track_id for r in rows if r.status == "resolved"]


def _present(rows: Sequence[TrackRow]) -> list[TrackRow]:
    return [r for r in rows if r.status != "resolved" and math.isfinite(r.x_mm) and math.isfinite(r.y_mm)]


# ------------------------------------------------------------------------------------------------ the picture


def _component_tracks(
    components: np.ndarray, count: int, anchors_px: Sequence[tuple[float, float]]
) -> dict[int, int]:
    """component index -> index of the row it belongs to: the component under the row's centre, else the one
    with the nearest pixel (a centroid can fall outside a crescent-shaped outline)."""
    owner: dict[int, int] = {}
    if count <= 1:
        return owner
    rows, cols = np.nonzero(components)
    for i, (x, y) in enumerate(anchors_px):
        r = int(np.clip(round(y), 0, components.shape[0] - 1))
        c = int(np.clip(round(x), 0, components.shape[1] - 1))
        index = int(components[r, c])
        if index == 0:
            nearest = int(np.argmin((rows - y) ** 2 + (cols - x) ** 2))
            index = int(components[rows[nearest], cols[nearest]])
        owner.setdefault(index, i)
    return owner


def track_picture(
    bmode: np.ndarray,
    label_map: np.ndarray | None,
    trp_labels: Sequence[int],
    rows: Sequence[TrackRow],
    spacing_mm: float,
    title: str,
) -> np.ndarray:
    """RGB uint8: the visit's (H, W) B-mode in [0, 1], upscaled as the overlays are (``overlay_layout``), each
    TrP outline from ``label_map`` (pixels whose value is in ``trp_labels``; None: no outlines) in the colour
    of the track whose centre it holds, each present row's cross and label "T<id>" (``track_label``) at its
    (x_mm, y_mm) / ``spacing_mm``, the depth ruler from the skin line, a scale bar and the title. Resolved rows
    have no position in this frame: not drawn, named in the legend ("resolved here")."""
    grey = np.nan_to_num(np.asarray(bmode, np.float64), nan=0.0).clip(0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"bmode must be an (H, W) frame; got shape {grey.shape}")
    if label_map is not None and label_map.shape != grey.shape:
        raise ValueError(f"label_map shape {label_map.shape} differs from the B-mode's {grey.shape}")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be > 0; got {spacing_mm}")
    present = _present(rows)
    skin_row = find_skin_row(grey)
    entries: list[tuple[str, tuple[int, int, int] | None]] = [
        (f"T{r.track_id} {r.status}", track_colour(r.track_id)) for r in present
    ]
    if not present:
        entries.append(("no tracked trigger point in this visit", None))
    if any(r.flagged for r in present):
        entries.append((f"{FLAG_MARK}: matched on an unreliable registration", None))
    gone = resolved_here(rows)
    if gone:
        entries.append(("resolved here (not drawn): " + ", ".join(f"T{t}" for t in gone), None))
    origin = "skin line" if skin_row is not None else "image top (no skin line found)"
    entries.append((f"left ruler: depth in mm below the {origin}", None))
    probe = overlay_layout(grey.shape, spacing_mm=spacing_mm, title=title)
    lines = _wrap_legend(entries, probe)
    layout = overlay_layout(grey.shape, spacing_mm=spacing_mm, title=title, legend_lines=len(lines) + 1)

    canvas = np.full((layout.height, layout.width, 3), PANEL_COLOUR, np.uint8)
    canvas[
        layout.image_y : layout.image_y + layout.image_h, layout.image_x : layout.image_x + layout.image_w
    ] = _scaled_bmode(grey, layout.scale)

    anchors_px = [(r.x_mm / spacing_mm, r.y_mm / spacing_mm) for r in present]
    anchors = [layout.to_overlay(x, y) for x, y in anchors_px]
    # A label starts from its outline's top-right corner (without an outline: its cross's), so it sits beside
    # the outline, not on it.
    half = max(7, layout.text_px) // 2  # sweep_views._cross's arm
    label_anchors = [(x + half, y - half) for x, y in anchors]
    if label_map is not None and len(trp_labels):
        in_trp = np.isin(label_map, list(trp_labels)).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            in_trp, connectivity=8, ltype=cv2.CV_32S
        )
        owner = _component_tracks(components, count, anchors_px)
        outlines = []
        for index in range(1, count):
            mask = _upscale((components == index).astype(np.uint8), layout.scale)
            if index in owner:
                outlines.append((mask, track_colour(present[owner[index]].track_id), layout.thickness + 1))
                x, y, w, _ = (int(v) for v in stats[index, :4])
                label_anchors[owner[index]] = layout.to_overlay(x + w - 0.5, y - 0.5)
            else:
                outlines.append((mask, UNTRACKED_COLOUR, max(1, layout.thickness - 1)))
        _draw_outlines(canvas, layout, outlines)
    for anchor in anchors:
        _cross(canvas, layout, anchor)
    texts = [track_label(r) for r in present]
    if texts:
        gap = (
            layout.thickness + 3
        )  # small: the anchor is the outline's corner, the label goes just outside it
        rects = label_rects(texts, label_anchors, layout, gap=gap)
        for row, text, (lx, ly), rect in zip(present, texts, label_anchors, rects, strict=True):
            colour = track_colour(row.track_id)
            cx, cy = (rect[0] + rect[2]) // 2, (rect[1] + rect[3]) // 2
            beside = (gap + max(rect[2] - rect[0], rect[3] - rect[1]) // 2) * math.sqrt(2) + 2  # first ring
            if math.hypot(cx - lx, cy - ly) > beside:  # moved away from its place: a leader line back to it
                cv2.line(canvas, (lx, ly), (cx, cy), HALO_COLOUR, layout.thickness + 2)
                cv2.line(canvas, (lx, ly), (cx, cy), colour, max(1, layout.thickness - 1))
            draw_text(canvas, text, (rect[0] + 2, rect[3] - 3), layout, colour)

    _title(canvas, layout, title)
    _depth_ruler(canvas, layout, spacing_mm, skin_row)
    _legend(canvas, layout, lines, spacing_mm)
    return canvas


# ------------------------------------------------------------------------------------------- the trend plot


def _visit_x(visits: Sequence[VisitView]) -> tuple[dict[str, float], str]:
    """visit_id -> x on the plot: days since the first visit when every visit has them, else the visit's
    position (ordinal visits); and the axis label."""
    if visits and all(_finite(v.days_since_first) for v in visits):
        return {v.visit_id: float(v.days_since_first) for v in visits}, "days since the first visit"
    return {v.visit_id: float(i) for i, v in enumerate(visits)}, "visit (in order; no dates)"


def _injection_xs(visits: Sequence[VisitView], x_of: Mapping[str, float], by_days: bool) -> list[float]:
    """Where injections lie on the x axis: visits with an injection event, and (dated visits) the day the
    ``days_since_injection`` of each visit points back to."""
    xs = {x_of[v.visit_id] for v in visits if any(e.lower().startswith("injection") for e in v.events)}
    if by_days:
        xs |= {
            round(float(v.days_since_first) - float(v.days_since_injection), 6)
            for v in visits
            if v.days_since_injection is not None and _finite(v.days_since_injection)
        }
    return sorted(xs)


def _latest_change(changes: Sequence[Change]) -> dict[int, Change]:
    latest: dict[int, Change] = {}
    for change in changes:
        latest[change.track_id] = change  # changes come in row order: the last is the latest visit
    return latest


def _signed(value: float, sd: float, digits: int, unit: str) -> str:
    if not _finite(value):
        return "—"
    text = f"{value:+.{digits}f}".replace("-", "−")
    return text + (f" ± {sd:.{digits}f}" if _finite(sd) else "") + f" {unit}"


def trend_plot_png(
    subject_tracks: Sequence[TrackRow], changes: Sequence[Change], visits: Sequence[VisitView]
) -> bytes:
    """PNG bytes (Agg, ``PLOT_DPI``, 900 px wide): the patient's tracks over time, one line per track in its
    colour. Top: mean stiffness (kPa) with error bars of its standard error (``stiffness_mean_sd``); bottom:
    area (mm²) with error bars of ``area_sd``. x: days since the first visit (the visit's position when the
    visits have no dates), ticks at the visits; injections as vertical red lines. A resolved track ends in an
    x (area 0; stiffness at its last value, nothing measured); a flagged point is hollow. Legend: each track's
    latest change from its first visit (``changes``)."""
    from matplotlib.figure import Figure  # only where a plot is drawn (lazy import)

    x_of, x_label = _visit_x(visits)
    by_days = x_label.startswith("days")
    figure = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    figure.subplots_adjust(left=0.08, right=0.7, top=0.93, bottom=0.14, hspace=0.12)
    stiff_ax, area_ax = figure.subplots(2, 1, sharex=True)
    latest = _latest_change(changes)
    by_track: dict[int, list[TrackRow]] = {}
    for row in subject_tracks:
        if row.visit_id in x_of:
            by_track.setdefault(row.track_id, []).append(row)
    for track_id, rows in sorted(by_track.items()):
        colour = tuple(c / 255 for c in track_colour(track_id))
        change = latest.get(track_id)
        series = (
            (
                stiff_ax,
                lambda r: r.stiffness_kpa_mean,
                stiffness_mean_sd,
                "delta_stiffness_kpa_mean",
                1,
                "kPa",
            ),
            (area_ax, lambda r: r.area_mm2, lambda r: area_sd(r.area_mm2), "delta_area_mm2", 1, "mm²"),
        )
        for ax, value, sd, delta, digits, unit in series:
            xs = [x_of[r.visit_id] for r in rows]
            ys = [value(r) if r.status != "resolved" else math.nan for r in rows]
            errs = [sd(r) if r.status != "resolved" else math.nan for r in rows]
            label = f"T{track_id}"
            if change is not None and change.status == "resolved" and ax is stiff_ax:
                label += ": resolved"  # nothing measured at its latest visit
            elif change is not None:
                label += f": {_signed(getattr(change, delta), getattr(change, delta + '_sd'), digits, unit)}"
            ax.plot(xs, ys, color=colour, linewidth=1.8, label=label)
            for x, y, e, r in zip(xs, ys, errs, rows, strict=True):
                if not _finite(y):
                    continue
                ax.errorbar(
                    [x], [y], yerr=[e] if _finite(e) else None, color=colour, marker="o", markersize=6,
                    markerfacecolor="white" if r.flagged else colour, markeredgewidth=1.5, capsize=3,
                )  # fmt: skip
            for i, r in enumerate(rows):
                if r.status != "resolved" or i == 0:
                    continue
                last_y = ys[i - 1] if ax is stiff_ax else 0.0  # nothing is left to measure: area 0
                if ax is area_ax and _finite(ys[i - 1]):
                    ax.plot([xs[i - 1], xs[i]], [ys[i - 1], 0.0], color=colour, linestyle=":", linewidth=1.2)
                if _finite(last_y):
                    ax.plot([xs[i]], [last_y], color=colour, marker="x", markersize=9, markeredgewidth=2.2)
    for ax in (stiff_ax, area_ax):
        for x in _injection_xs(visits, x_of, by_days):
            ax.axvline(x, color=INJECTION_COLOUR, linewidth=1.2, linestyle="--")
        ax.grid(alpha=0.3)
        if by_track:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="change from first visit",
                      title_fontsize=9, frameon=False)  # fmt: skip
    stiff_ax.set_ylabel("mean stiffness (kPa)")
    area_ax.set_ylabel("area (mm²)")
    area_ax.set_ylim(bottom=0)
    area_ax.set_xlabel(x_label)
    ticks = [x_of[v.visit_id] for v in visits]
    area_ax.set_xticks(ticks, [_tick_label(v, by_days) for v in visits], fontsize=9)
    if len(ticks) == 1:
        area_ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
    figure.suptitle(
        "Each trigger point over the visits (bars: ± 1 SD within a visit; hollow: flagged match; x: resolved;"
        " dashed red: injection)",
        fontsize=9, x=0.08, ha="left",
    )  # fmt: skip
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _tick_label(visit: VisitView, by_days: bool) -> str:
    label = visit.visit_id if len(visit.visit_id) <= 12 else visit.visit_id[:11] + "…"
    return f"{label}\nday {visit.days_since_first:g}" if by_days else label


# -------------------------------------------------------------------------------------------------- the page


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _days(value: float | None) -> str:
    return f"{value:g}" if _finite(value) else "—"


def _registration_cells(visit: VisitView) -> dict:
    reg = visit.registration
    if reg is None:
        return {"text": "baseline (the reference frame)", "baseline": True, "reliable": True, "reason": ""}
    if reg.has_shift:
        text = (
            f"shift {_num(reg.lateral_shift_mm, 1)} mm lateral, {_num(reg.depth_shift_mm, 1)} mm depth; "
            f"tilt {_num(reg.tilt_deg, 1)}°; residual {_num(reg.residual_mm, 2)} mm"
        )
    else:
        text = "no shift found"
    return {"text": text, "baseline": False, "reliable": reg.reliable, "reason": reg.reason}


def _visit_rows(visits: Sequence[VisitView], overlay_stems: Collection[str] | None) -> list[dict]:
    rows = []
    for visit in visits:
        linked = visit.stem and not visit.problem and (overlay_stems is None or visit.stem in overlay_stems)
        rows.append(
            {
                "visit_id": visit.visit_id,
                "date": visit.date or "—",
                "days_first": _days(visit.days_since_first),
                "days_injection": _days(visit.days_since_injection),
                "events": "; ".join(visit.events),
                "href": f"../overlays/{visit.stem}.png" if linked else "",
                "registration": _registration_cells(visit),
                "problem": visit.problem,
            }
        )
    return rows


def _figure(row: TrackRow) -> dict:
    """One visit's measurements of a track, as table text."""
    if row.status == "resolved":
        return {"visit": row.visit_id, "kpa": "not found", "area": ""}
    return {
        "visit": row.visit_id,
        "kpa": f"{_num(row.stiffness_kpa_mean, 1)} ± {_num(stiffness_mean_sd(row), 1)}",
        "area": f"{_num(row.area_mm2, 1)}",
    }


def _track_rows(tracks: Sequence[TrackRow], changes: Sequence[Change]) -> list[dict]:
    by_track: dict[int, list[TrackRow]] = {}
    for row in tracks:
        by_track.setdefault(row.track_id, []).append(row)
    latest = _latest_change(changes)
    out = []
    for track_id, rows in sorted(by_track.items()):
        first, last = rows[0], rows[-1]
        change = latest.get(track_id)
        reasons = list(dict.fromkeys(r.flag_reason for r in rows if r.flagged and r.flag_reason))
        relative = change.relative_area_change if change is not None else math.nan
        out.append(
            {
                "label": f"T{track_id}",
                "colour": track_colour(track_id),
                "class_name": first.class_name.replace("_", " ") or "—",
                "first": _figure(first),
                "last": _figure(last) if len(rows) > 1 else None,
                "status": last.status,
                "d_kpa": "—"
                if change is None
                else _signed(
                    change.delta_stiffness_kpa_mean, change.delta_stiffness_kpa_mean_sd, 1, "kPa"
                ),  # fmt: skip
                "d_kpa_max": "—"
                if change is None
                else _signed(
                    change.delta_stiffness_kpa_max, change.delta_stiffness_kpa_max_sd, 1, "kPa"
                ),  # fmt: skip
                "d_area": "—"
                if change is None
                else _signed(change.delta_area_mm2, change.delta_area_mm2_sd, 1, "mm²"),  # fmt: skip
                "d_area_rel": f"{100 * relative:+.0f} %".replace("-", "−") if _finite(relative) else "",
                "flagged": bool(reasons),
                "reasons": reasons,
            }
        )
    return out


def _picture_cards(
    visits: Sequence[VisitView], tracks: Sequence[TrackRow], pictures: Mapping[str, bytes]
) -> list[dict]:
    """The given pictures in visit order, each with its caption: the tracks drawn, and those seen at an earlier
    visit but not in this one (resolved here or before: not drawn)."""
    cards = []
    seen_before: list[int] = []
    last_with_picture = max((i for i, v in enumerate(visits) if v.visit_id in pictures), default=-1)
    for index, visit in enumerate(visits):
        rows = [r for r in tracks if r.visit_id == visit.visit_id]
        present = _present(rows)
        absent = [t for t in seen_before if t not in {r.track_id for r in present}]
        seen_before += [r.track_id for r in present if r.track_id not in seen_before]
        if visit.visit_id not in pictures:
            continue
        role = "baseline" if index == 0 else ("latest visit" if index == last_with_picture else "visit")
        when = visit.date or (f"day {visit.days_since_first:g}" if _finite(visit.days_since_first) else "")
        cards.append(
            {
                "src": _data_uri(pictures[visit.visit_id]),
                "heading": f"{role.capitalize()}: {visit.visit_id}"
                + (f" ({when})" if when and when != visit.visit_id else ""),  # fmt: skip
                "absent": ", ".join(f"T{t}" for t in absent),
                "present": ", ".join(track_label(r) for r in present),
                "flagged": any(r.flagged for r in rows),
            }
        )
    return cards


def render_patient_page(
    subject_id: str,
    visits: Sequence[VisitView],
    tracks: Sequence[TrackRow],
    changes: Sequence[Change],
    pictures: Mapping[str, bytes],
    problems: Sequence[str],
    plot_png: bytes | None,
    plot_note: str = "",
    *,
    overlay_stems: Collection[str] | None = None,
) -> str:
    """The patient's page (HTML, one file): ``visits`` in date order (the first is the baseline), the subject's
    ``tracks`` (``build_tracks``) and ``changes`` (``track_changes``), ``pictures`` (visit_id -> PNG bytes,
    shown in visit order: usually the baseline's and the latest visit's ``track_picture``), ``problems`` (each
    a reason, named at the top), the trend plot (None: ``plot_note`` says why, default ``NO_PLOT_NOTE``).
    ``overlay_stems``: the stems whose ../overlays/<stem>.png exists (None: every tracked visit with a stem)."""
    visit_problems = [f"{v.visit_id}: {v.problem}" for v in visits if v.problem]
    context = {
        "subject_id": subject_id,
        "problems": list(dict.fromkeys([*problems, *visit_problems])),
        "visits": _visit_rows(visits, overlay_stems),
        "unreliable": [
            v.visit_id for v in visits if v.registration is not None and not v.registration.reliable
        ],
        "plot_src": _data_uri(plot_png) if plot_png else "",
        "plot_note": plot_note or NO_PLOT_NOTE,
        "tracks": _track_rows(tracks, changes),
        "pictures": _picture_cards(visits, tracks, pictures),
        "honest_note": HONEST_NOTE,
        "flag_mark": FLAG_MARK,
    }
    return _render("patient.html.j2", **context)


def write_patient_page(path: Path, html: str) -> None:
    """Write the page atomically: a reader never sees half a page."""
    atomic_write_text(path, html)
