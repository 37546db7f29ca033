"""``report.html``: one self-contained page a clinician can open, print or e-mail with the overlays.

Frame sections are streamed to a temporary file as frames finish; ``finish`` writes the header (which
needs the final counts) and copies the sections after it, so memory does not grow with the run.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from tpnet.core.atomic import atomic_open
from tpnet.core.overlay import class_colour
from tpnet.core.postprocess import TriggerPoint
from tpnet.inference.inputs import FrameInput, Rejection

CLASS_LABELS = {
    "active_trp": "Active trigger point",
    "latent_trp": "Latent trigger point",
    "vessel": "Blood vessel",
}
SPACING_SOURCES = {
    "manifest": "from the dataset manifest",
    "dataset.yaml": "from the dataset description",
    "sidecar": "from the frame's .json file",
    "cli": "given on the command line",
    "dicom": "from the DICOM file",
    "profile": "from the scanner profile",
    "": "UNKNOWN: no millimetre figures for this frame",
}

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #1d2733;
       background: #f4f6f8; }
header { background: #16324f; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; color: #d4e0ec; font-size: 14px; }
main { padding: 16px 28px; max-width: 1100px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 16px 0; }
.card { background: #fff; border-radius: 6px; padding: 10px 16px; box-shadow: 0 1px 2px #0002; min-width: 120px; }
.card b { display: block; font-size: 24px; }
.card span { font-size: 13px; color: #5a6878; }
.notice { background: #fff4d6; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 8px 0; font-size: 14px; }
.rejected { background: #fdecec; border-left: 4px solid #c62828; padding: 8px 12px; margin: 8px 0; font-size: 14px; }
.legend span { display: inline-block; margin-right: 16px; font-size: 14px; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 2px; vertical-align: -2px;
          margin-right: 5px; border: 1px solid #0003; }
section.frame { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; margin: 14px 0; padding: 12px 16px;
                display: flex; gap: 18px; align-items: flex-start; page-break-inside: avoid; }
section.frame img { width: 280px; max-width: 40vw; image-rendering: auto; border: 1px solid #ccd; background: #000; }
section.frame h2 { margin: 0 0 4px 0; font-size: 17px; word-break: break-all; }
.meta { font-size: 13px; color: #5a6878; margin-bottom: 8px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border-bottom: 1px solid #e1e6eb; padding: 4px 10px; text-align: right; }
th { background: #eef2f6; font-weight: 600; }
td.text, th.text { text-align: left; white-space: nowrap; }
.note { font-size: 12px; color: #5a6878; margin-top: 4px; }
.none { color: #5a6878; font-style: italic; }
footer { color: #5a6878; font-size: 12px; padding: 8px 28px 24px 28px; }
"""


def class_label(name: str) -> str:
    return CLASS_LABELS.get(name, name.replace("_", " ").capitalize())


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _num(value: float, digits: int, missing: str) -> str:
    return missing if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class HtmlReport:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sections_path = self.path.with_name(f".{self.path.name}.sections.tmp")
        self._sections = self._sections_path.open("w", encoding="utf-8")

    def add_frame(
        self,
        frame: FrameInput,
        overlay_relpath: str,
        trigger_points: Sequence[TriggerPoint],
        shape: tuple[int, int],
    ) -> None:
        self.add_section(frame_section(frame, overlay_relpath, trigger_points, shape))

    def add_section(self, section: str) -> None:
        """One frame's section as made by ``frame_section`` (a resumed run re-adds the finished ones)."""
        self._sections.write(section)

    def finish(
        self,
        *,
        model_name: str,
        model_file: str,
        input_name: str,
        created: str,
        counts: dict[str, int],
        trp_counts: dict[str, int],
        classes: Sequence[str],
        rejected: Sequence[Rejection],
        warnings: Sequence[str],
        model_meta: dict | None = None,
        frame_summaries: Sequence[dict] = (),
    ) -> None:
        """Write the final page atomically and remove the temporary sections file."""
        self._sections.close()
        cards = [
            (counts["frames_processed"], "frames analysed"),
            (counts["frames_rejected"], "inputs not analysed"),
        ] + [(n, class_label(name) + "s") for name, n in trp_counts.items()]
        legend = "".join(
            f"<span><span class='swatch' style='background:{_hex(class_colour(name, i))}'></span>"
            f"{_esc(class_label(name))}</span>"
            for i, name in enumerate(classes)
            if i > 0
        )
        head = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>Trigger-point report: {_esc(model_name)}</title><style>{CSS}</style></head><body>",
            "<header><h1>Myofascial trigger-point findings</h1>",
            f"<p>Model: {_esc(model_name)} ({_esc(model_file)}) &middot; Generated: {_esc(created)}</p>",
            f"<p>Input: {_esc(input_name)} &middot; {counts['frames_found']} input(s) found</p></header><main>",
            "<div class='cards'>",
            *(f"<div class='card'><b>{n}</b><span>{_esc(label)}</span></div>" for n, label in cards),
            "</div>",
            *(f"<div class='notice'>{_esc(w)}</div>" for w in warnings),
        ]
        if rejected:
            head.append("<div class='rejected'><b>Inputs that could not be analysed:</b><ul>")
            head.extend(f"<li><b>{_esc(r.name)}</b>: {_esc(r.reason)}</li>" for r in rejected)
            head.append("</ul></div>")
        head.append(
            f"<p class='legend'>Outlines: {legend}<span><span class='swatch' style='background:#00dc00'></span>"
            "Elastography (SWE) box</span><span>+ numbered marker: trigger point (number as in the table)</span></p>"
        )
        tail = (
            "</main><footer>Positions are measured from the top-left corner of the image: lateral to the right, "
            "depth downwards. Research software: findings must be confirmed by a clinician.</footer></body></html>\n"
        )
        with atomic_open(self.path, "w") as out:
            out.write("\n".join(head) + "\n")
            with self._sections_path.open(encoding="utf-8") as sections:
                shutil.copyfileobj(sections, out)
            out.write(tail)
        self._sections_path.unlink()

    def abort(self) -> None:
        self._sections.close()
        self._sections_path.unlink(missing_ok=True)


def frame_section(
    frame: FrameInput,
    overlay_relpath: str,
    trigger_points: Sequence[TriggerPoint],
    shape: tuple[int, int],
    *,
    frame_warnings: Sequence[dict] = (),
    p_frame: float | None = None,
) -> str:
    """The report's HTML for one analysed frame."""
    href = quote(overlay_relpath)
    spacing_note = SPACING_SOURCES.get(frame.spacing_source, frame.spacing_source)
    size = "unknown" if frame.spacing_mm is None else f"{frame.spacing_mm:.3g} mm"
    when = "" if frame.t_s is None else f" &middot; t = {frame.t_s:.3f} s in its loop"
    has_elasto = frame.elasto_path is not None or frame.kind == "screenshot"
    parts = [
        '<section class="frame">',
        f'<a href="{href}"><img src="{href}" alt="Overlay for {_esc(frame.name)}" loading="lazy"></a>',
        "<div>",
        f"<h2>{_esc(frame.name)}</h2>",
        f'<div class="meta">{shape[1]} &times; {shape[0]} pixels &middot; pixel size {size} '
        f"({_esc(spacing_note)}){when} &middot; elastography: {'yes' if has_elasto else 'none'}</div>",
    ]
    if not trigger_points:
        parts.append('<p class="none">No trigger points detected.</p>')
    else:
        parts.append(
            "<table><tr><th>No.</th><th class='text'>Finding</th><th>Lateral position (mm)</th>"
            "<th>Depth (mm)</th><th>Area (mm&sup2;)</th><th>Mean stiffness (kPa)</th>"
            "<th>Distance to nearest vessel (mm)</th><th>Model confidence (%)</th></tr>"
        )
        known = frame.spacing_mm is not None

        def mm(value: float) -> str:
            return f"{value:.1f}" if known else "?"

        for p in trigger_points:
            colour = _hex(class_colour(p.class_name, p.label))
            parts.append(
                f"<tr><td>{p.trp_id}</td>"
                f"<td class='text'><span class='swatch' style='background:{colour}'></span>{_esc(class_label(p.class_name))}</td>"
                f"<td>{mm(p.x_mm)}</td><td>{mm(p.y_mm)}</td><td>{mm(p.area_mm2)}</td>"
                f"<td>{_num(p.stiffness_kpa_mean, 0, '&mdash;')}</td>"
                f"<td>{_num(p.nearest_vessel_mm, 1, '&mdash;') if known else '?'}</td>"
                f"<td>{_num(100.0 * p.confidence, 0, '')}</td></tr>"
            )
        parts.append("</table>")
        if any(not math.isfinite(p.stiffness_kpa_mean) for p in trigger_points):
            parts.append(
                "<p class='note'>&mdash; under mean stiffness: no elastography (SWE) signal over that trigger point.</p>"
            )
        if any(not math.isfinite(p.nearest_vessel_mm) for p in trigger_points):
            parts.append(
                "<p class='note'>&mdash; under distance: no blood vessel detected in this image.</p>"
            )
        if not known:
            parts.append(
                "<p class='note'>? : the pixel size is unknown, so no millimetre figure is given.</p>"
            )
    parts.append("</div></section>\n")
    return "".join(parts)
