"""One sweep's section of ``report.html`` (issue #17): its pictures (``tpnet.inference.sweep_views``) and a
table of its 3-D trigger points, an ``HtmlReport.add_section`` fragment in the frame sections' style.

As in 2-D, the HTML comes from a Jinja2 template (``templates/sweep.html.j2``) through ``report._render``, with
autoescaping: file names are escaped by the engine, never here; this module only turns numbers into table
text ("—" where a figure is NaN) and says what the model cannot tell. A TrP's class is the one shown for it
(``sweep_views.shown_classes``, the 2-D rule): "indeterminate" unless the caller says otherwise.

The pictures of one sweep share one mm scale (``sweep_views.sweep_px_per_mm``); the page keeps it by showing
every picture at the same fraction of its pixel width, so a 20 mm sweep beside a 50 mm frame looks 20 / 50 as
wide and depths line up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from tpnet.core.overlay import class_colour
from tpnet.core.volume_postprocess import TriggerPoint3D
from tpnet.inference.predictor import MIN_SWE_COVERAGE
from tpnet.inference.report import _finite, _num, _pct, _render, class_label
from tpnet.inference.sweep_views import INDETERMINATE, mid_slice_index, shown_class

# On the page the widest of a sweep's pictures is this wide (px), as a frame's overlay is (report.css).
DISPLAY_WIDTH_PX = 420
NO_FINDING = "no trigger point found"
UNCALIBRATED_NOTE = (
    "the model's mean trigger-point probability inside the trigger point, not calibrated for sweeps: it is not "
    "the chance that the finding is real."
)
CALIBRATED_NOTE = "the calibrated probability that the finding is a real trigger point."
INDETERMINATE_NOTE = (
    "the model is not validated to tell active from latent trigger points, or its call for this one was too "
    "close to even odds, so the type is not given (see “What this model can and cannot tell”)."
)


@dataclass(frozen=True)
class SweepPicture:
    """A PNG the caller wrote: its path relative to the report and its width in pixels (image.shape[1])."""

    relpath: str
    width_px: int


@dataclass(frozen=True)
class TrpPictures:
    """One TrP's pictures (None: not drawn)."""

    mid_slice: SweepPicture | None = None
    along_sweep: SweepPicture | None = None


def sweep_section_html(
    name: str,
    stem: str,
    trps: Sequence[TriggerPoint3D],
    shape_zyx: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    projection: SweepPicture | None = None,
    trp_pictures: Mapping[int, TrpPictures] | None = None,
    class_shown: Mapping[int, str] | None = None,
    elasto: bool = False,
    subject_id: str | None = None,
    confidence_calibrated: bool = False,
    warnings: Sequence[str] = (),
) -> str:
    """The report's HTML for one analysed sweep: the projection (None: not drawn, e.g. ``--no-overlays``; said
    in its place), the table of its TrPs and each TrP's pictures (``trp_pictures``: trp_id -> them).

    ``class_shown``: trp_id -> the class to show (``sweep_views.shown_classes``); absent: "indeterminate".
    ``confidence_calibrated``: whether the TrPs' confidence went through a calibration fitted for sweeps (else
    it is the raw mean probability, and the note says so). ``warnings``: plain-text cautions above the table."""
    context = sweep_context(
        name, stem, trps, shape_zyx, spacing_mm, projection=projection, trp_pictures=trp_pictures,
        class_shown=class_shown, elasto=elasto, subject_id=subject_id,
        confidence_calibrated=confidence_calibrated, warnings=warnings,
    )  # fmt: skip
    return _render("sweep.html.j2", **context)


def sweep_context(
    name: str,
    stem: str,
    trps: Sequence[TriggerPoint3D],
    shape_zyx: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    projection: SweepPicture | None = None,
    trp_pictures: Mapping[int, TrpPictures] | None = None,
    class_shown: Mapping[int, str] | None = None,
    elasto: bool = False,
    subject_id: str | None = None,
    confidence_calibrated: bool = False,
    warnings: Sequence[str] = (),
) -> dict:
    """The figures of one sweep's section as the template shows them (text, already rounded; "—" for NaN)."""
    slices, height, width = (int(v) for v in shape_zyx)
    slice_mm, row_mm, _ = (float(v) for v in spacing_mm)
    trp_pictures = trp_pictures or {}
    drawn = [projection] + [p for t in trps for p in _pair(trp_pictures.get(t.trp_id))]
    widest = max((p.width_px for p in drawn if p is not None), default=0)
    scale = DISPLAY_WIDTH_PX / widest if widest > 0 else 1.0

    def shown_image(picture: SweepPicture, alt: str) -> dict:
        return {"href": quote(picture.relpath), "alt": alt, "width": max(1, round(picture.width_px * scale))}

    rows, pictures = [], []
    for t in trps:
        rows.append(_row(t, shown_class(t, class_shown)))
        mid, along = _pair(trp_pictures.get(t.trp_id))
        images, parts = [], []
        if mid is not None:
            images.append(shown_image(mid, f"Trigger point {t.trp_id}: the slice through its centre"))
            parts.append(f"slice {mid_slice_index(t, spacing_mm)} through its centre (its slices {t.slices[0]}–{t.slices[1]})")  # fmt: skip
        if along is not None:
            images.append(shown_image(along, f"Trigger point {t.trp_id}: the plane along the sweep through its centre"))  # fmt: skip
            parts.append(
                f"the plane along the sweep at lateral {t.centroid_mm[0]:.1f} mm, the bracket over its extent of "
                f"{t.extent_along_sweep_mm:.1f} mm"
            )
        if images:
            sides = ("left, ", "right, ") if len(parts) == 2 else ("",)
            caption = "; ".join(side + part for side, part in zip(sides, parts, strict=True)) + "."
            pictures.append({"trp_id": t.trp_id, "images": images, "caption": caption})
    return {
        "anchor": "sweep-" + quote(stem, safe=""),
        "name": name,
        "projection": None
        if projection is None
        else shown_image(projection, f"Projection along the sweep {name}"),
        "slices": slices,
        "width": width,
        "height": height,
        "pixel_mm": f"{row_mm:.3g}",
        "slice_mm": f"{slice_mm:.3g}",
        "sweep_mm": f"{slices * slice_mm:.1f}",
        "elasto": elasto,
        "subject_id": subject_id,
        "warnings": list(warnings),
        "rows": rows,
        "pictures": pictures,
        "no_finding": NO_FINDING,
        "confidence_note": CALIBRATED_NOTE if confidence_calibrated else UNCALIBRATED_NOTE,
        "any_indeterminate": any(shown_class(t, class_shown) == INDETERMINATE for t in trps),
        "indeterminate_note": INDETERMINATE_NOTE,
        "any_low_coverage": any(r["low_coverage"] for r in rows),
        "min_coverage": _pct(MIN_SWE_COVERAGE),
        "any_no_stiffness": any(not _finite(t.stiffness_kpa_mean) for t in trps),
        "any_no_critical": any(not _finite(t.nearest_critical_mm) for t in trps),
        "any_no_confidence": any(not _finite(t.confidence) for t in trps),
    }


def _pair(pictures: TrpPictures | None) -> tuple[SweepPicture | None, SweepPicture | None]:
    return (None, None) if pictures is None else (pictures.mid_slice, pictures.along_sweep)


def _row(t: TriggerPoint3D, shown: str) -> dict:
    coverage = t.swe_coverage
    first, last = t.slices
    return {
        "trp_id": t.trp_id,
        "label": class_label(shown),
        "colour": class_colour(shown, t.label),
        "confidence": _pct(t.confidence),
        "kpa_mean": _num(t.stiffness_kpa_mean, 0),
        "kpa_max": _num(t.stiffness_kpa_max, 0),
        "coverage": _pct(coverage),
        "low_coverage": _finite(coverage) and 0.0 < coverage < MIN_SWE_COVERAGE,
        "x_mm": _num(t.centroid_mm[0], 1),
        "y_mm": _num(t.centroid_mm[1], 1),
        "z_mm": _num(t.centroid_mm[2], 1),
        "volume": _num(t.volume_mm3, 1),
        "extent": _num(t.extent_along_sweep_mm, 1),
        "slices": f"{first}–{last}",
        "critical": _num(t.nearest_critical_mm, 1),
    }
