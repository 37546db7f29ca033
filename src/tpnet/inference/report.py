"""``report.html``: one self-contained page a clinician can open, print or e-mail with the overlays.

Frame sections are streamed to a temporary file as frames finish; ``finish`` writes the header (which needs the
final counts), copies the sections after it and closes the page, so memory does not grow with the run.

The HTML comes from the Jinja2 templates in ``templates/`` with autoescaping on: every file name, warning and
model-card string is escaped by the template engine, never by hand. This module only turns numbers and the
model card into plain words and table cells (``model_statement``, ``frame_context``); the templates lay them out.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from urllib.parse import quote

import jinja2

from tpnet.core.atomic import atomic_open
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.overlay import class_colour
from tpnet.core.postprocess import TriggerPoint
from tpnet.inference.inputs import FrameInput, Rejection
from tpnet.inference.predictor import MIN_SWE_COVERAGE

TEMPLATES = Path(__file__).with_name("templates")
CLASS_LABELS = {
    "active_trp": "Active trigger point",
    "latent_trp": "Latent trigger point",
    "indeterminate": "Trigger point, type indeterminate",
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
# tpnet.core.input_check's warning codes, in plain words for the banner (an unknown code shows as it is).
WARNING_TITLES = {
    "missing_modality": "no elastography (SWE) although the model was trained with it",
    "pixel_size_assumed": "pixel size unknown (assumed): no millimetre figures",
    "intensity_unlike_training": "image statistics unlike the training images",
    "spacing_implausible": "implausible pixel size",
    "field_of_view_implausible": "implausible field of view",
    "spacing_far_from_training": "pixel size far from the training images'",
}
NO_FINDING = "no trigger point found"
CLASS_PLURALS = {"indeterminate": "Trigger points, type indeterminate"}


def class_label(name: str) -> str:
    return CLASS_LABELS.get(name, name.replace("_", " ").capitalize())


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: float | None, digits: int, missing: str = "—") -> str:
    return f"{value:.{digits}f}" if _finite(value) else missing


def _pct(value: float | None, missing: str = "—") -> str:
    return f"{100.0 * value:.0f} %" if _finite(value) else missing


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is text to show, never markup
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the tests instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["hex"] = _hex
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def _render(template: str, **context: object) -> str:
    return _environment().get_template(template).render(**context)


# ---------------------------------------------------------------------------------------- what the model is


def _metric(block: Mapping | None, key: str) -> tuple[float | None, tuple[float, float] | None]:
    """(value, 95 % CI) of a validation figure; None where absent or NaN."""
    entry = (block or {}).get(key)
    if isinstance(entry, Mapping):
        value = entry.get("value")
        ci = entry.get("ci95")
    else:
        value, ci = entry, None
    value = float(value) if _finite(value) else None
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_finite(v) for v in ci):
        return value, (float(ci[0]), float(ci[1]))
    return value, None


def _with_ci(
    block: Mapping | None, key: str, percent: bool = True, digits: int = 2, unit: str = ""
) -> str | None:
    """ "81 % (95 % CI 74-88 %)" or "1.2 mm (95 % CI 0.9-1.5 mm)"; None when the figure is unknown."""
    value, ci = _metric(block, key)
    if value is None:
        return None

    def show(v: float) -> str:
        return f"{100 * v:.0f}" if percent else f"{v:.{digits}f}"

    unit = " %" if percent else unit
    text = f"{show(value)}{unit}"
    if ci is not None:
        text += f" (95 % CI {show(ci[0])}–{show(ci[1])}{unit})"
    return text


def model_statement(model_meta: Mapping | None) -> dict:
    """What the header and the "what this model can and cannot tell" box say, from the model card (older models
    without one: said so) and the calibration record. Tolerates any missing key."""
    meta = model_meta or {}
    card = meta.get("model_card") if isinstance(meta.get("model_card"), Mapping) else None
    calibration = meta.get("calibration") if isinstance(meta.get("calibration"), Mapping) else None
    statement: dict = {
        "has_card": card is not None,
        "can": [],
        "cannot": [],
        "figures": [],
        "fingerprint": None,
        "channels": None,
        "spacing_mm": None,
    }

    if card is None:
        statement["what"] = "No model card: unknown training data, no validated figures."
        statement["cannot"].append(
            "This model file carries no model card, so what it was trained on and how well it works are unknown: "
            "treat every finding as unvalidated."
        )
    else:
        data = card.get("training_data") if isinstance(card.get("training_data"), Mapping) else {}
        name = str(data.get("name") or "unnamed data set")
        subjects = data.get("subjects") if isinstance(data.get("subjects"), Mapping) else {}
        split = ", ".join(f"{subjects[k]} {k}" for k in ("train", "val", "test") if _finite(subjects.get(k)))
        if data.get("synthetic") is True:
            statement["what"] = (
                f"A research model trained on synthetic (computer-generated) images only ({name}), "
                "never on patients' scans."
            )
            statement["cannot"].append(
                "It has not been validated on real patients: the figures below come from synthetic images and "
                "may not hold on a real scan."
            )
        elif data.get("synthetic") is False:
            statement["what"] = f"A research model trained on the data set “{name}”."
        else:
            statement["what"] = (
                f"A research model trained on “{name}” (whether real or synthetic is not recorded)."
            )
        if split:
            statement["what"] += f" Subjects: {split}."
        statement["fingerprint"] = data.get("fingerprint") or None
        channels = card.get("channels")
        if isinstance(channels, Sequence) and not isinstance(channels, str) and channels:
            statement["channels"] = ", ".join(str(c) for c in channels)
        statement["spacing_mm"] = card.get("spacing_mm") if _finite(card.get("spacing_mm")) else None
        for split_name, block in (("validation", card.get("validation")), ("test", card.get("test"))):
            if isinstance(block, Mapping):
                statement["figures"].append(_figures(split_name, block))
        _can_statements(statement, card)

    separable = _separable(card, calibration)
    statement["active_separable"] = separable
    classes = next((f for f in statement["figures"] if f["class_acc"] is not None), None)
    accuracy = f"{classes['class_acc_kind']} {classes['class_acc']}" if classes else None
    if separable is True:
        band = (calibration or {}).get("active_band")
        near = f"within {100 * band:.0f} % of even odds" if _finite(band) else "close to even odds"
        statement["can"].append(
            "Tell active from latent trigger points"
            + (f" (validated {accuracy})" if accuracy else "")
            + f"; a call {near} is reported as “indeterminate”."
        )
    elif separable is False:  # first: the one thing a clinician would otherwise read into the class column
        chance = f": its validated {accuracy} at it is no better than chance" if accuracy else ""
        statement["cannot"].insert(
            0,
            f"It cannot tell active from latent trigger points{chance}. So every trigger point it finds is "
            "reported as “indeterminate” (type unknown), not as active or latent.",
        )
    else:
        statement["cannot"].insert(
            0,
            "Whether it can tell active from latent trigger points was never validated: treat its active/latent "
            "calls as unproven.",
        )
    if calibration is None:
        statement["cannot"].append(
            "Its confidence is not calibrated: a “confidence” is the model's own mean probability, not the "
            "chance that the finding is real."
        )
    statement["cannot"].append("It does not diagnose: every finding must be confirmed by a clinician.")
    return statement


def _class_accuracy(block: Mapping) -> dict:
    """The validated active/latent accuracy to show: balanced (chance is 0.5 whatever the share of active TrPs;
    plain accuracy rewards calling every TrP the commoner type), from p_active's test in calibration, else from
    the classes; plain accuracy only for cards that have nothing else."""
    for key in ("active_latent_balanced_acc", "class_balanced_acc"):
        if _with_ci(block, key):
            return {"class_acc": _with_ci(block, key), "class_acc_kind": "balanced accuracy"}
    return {"class_acc": _with_ci(block, "class_acc"), "class_acc_kind": "accuracy"}


def _figures(split_name: str, block: Mapping) -> dict:
    n_frames, n_subjects = block.get("n_frames"), block.get("n_subjects")
    where = ", ".join(
        f"{int(n)} {what}" for n, what in ((n_frames, "frames"), (n_subjects, "subjects")) if _finite(n)
    )
    return {
        "split": split_name,
        "where": where,
        "det_f1": _with_ci(block, "det_f1"),
        "det_precision": _with_ci(block, "det_precision"),
        "det_recall": _with_ci(block, "det_recall"),
        **_class_accuracy(block),
        "loc_err_mm": _with_ci(block, "loc_err_mm", percent=False, digits=1, unit=" mm"),
        "detection_ece": _with_ci(block, "detection_ece", percent=False, digits=3),
        "detection_brier": _with_ci(block, "detection_brier", percent=False, digits=3),
        "pixel_ece": _with_ci(block, "pixel_ece", percent=False, digits=3),
        "frame_auc": _with_ci(block, "frame_auc", percent=False, digits=2),
        "frame_ece": _with_ci(block, "frame_ece", percent=False, digits=3),
    }


# Detection ECE at or under which the box says the confidence is calibrated (issue #14's goal).
CALIBRATED_ECE = 0.05


def _can_statements(statement: dict, card: Mapping) -> None:
    """Plain-word sentences from the best split's figures (test if there is one, else validation)."""
    figures = statement["figures"]
    if not figures:
        statement["cannot"].append("No validated figures are recorded in its model card.")
        return
    best = figures[-1]
    on = f"on its {'held-out test' if best['split'] == 'test' else 'validation'} images"
    on += f" ({best['where']})" if best["where"] else ""
    recall, precision = (
        _metric(card.get(best["split"]), "det_recall")[0],
        _metric(card.get(best["split"]), "det_precision")[0],
    )
    if recall is not None and precision is not None:
        statement["can"].append(
            f"Find trigger points: {on} it found {100 * recall:.0f} of every 100 trigger points, and "
            f"{100 * precision:.0f} of every 100 it marked were real. Detection F1: {best['det_f1'] or 'unknown'}."
        )
    elif best["det_f1"]:
        statement["can"].append(f"Find trigger points: detection F1 {best['det_f1']} {on}.")
    if best["loc_err_mm"]:
        statement["can"].append(f"Place them: a found trigger point's centre lay on average {best['loc_err_mm']} from the true one.")  # fmt: skip
    ece = _metric(card.get(best["split"]), "detection_ece")[0]
    if ece is not None and ece <= CALIBRATED_ECE:
        statement["can"].append(
            "Say how sure it is: “confidence” is calibrated, i.e. of the findings it gives 80 %, about 80 "
            f"in 100 were real. Calibration error (ECE): {best['detection_ece']}."
        )
    elif ece is not None:  # a claim of calibration the figures do not support is not made
        statement["cannot"].append(
            f"Say exactly how sure it is: its “confidence” is only roughly calibrated {on}: stated and observed "
            f"shares of real findings differed by {100 * ece:.0f} percentage points on average (detection ECE "
            f"{best['detection_ece']}; the goal is {CALIBRATED_ECE:.2f} or less), so read a confidence as that "
            "much either way."
        )
    if best["frame_auc"]:
        statement["can"].append(
            f"Say whether an image shows a trigger point at all. AUC: {best['frame_auc']}."
        )


def _separable(card: Mapping | None, calibration: Mapping | None) -> bool | None:
    for source in (card, calibration):
        if isinstance(source, Mapping) and isinstance(source.get("active_separable"), bool):
            return source["active_separable"]
    return None


# ---------------------------------------------------------------------------------------------- the page


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
        patients: Sequence[dict] = (),
    ) -> None:
        """Write the final page atomically and remove the temporary sections file. ``frame_summaries``: one
        per frame found (stem, name, subject_id, status, trp_count, p_trp_frame, warnings: codes). ``patients``:
        one per patient of a --longitudinal run (``SubjectResult.summary()``), linking its page."""
        self._sections.close()
        analysed = [f for f in frame_summaries if f.get("status") == "analysed"]
        head = _render(
            "head.html.j2",
            model_name=model_name,
            model_file=model_file,
            input_name=input_name,
            created=created,
            counts=counts,
            cards=[
                (counts["frames_processed"], "frames analysed"),
                (counts["frames_rejected"], "inputs not analysed"),
            ]
            + [
                (n, CLASS_PLURALS.get(name, class_label(name) + "s")) for name, n in trp_counts.items()
            ],  # fmt: skip
            model=model_statement(model_meta),
            warnings=list(warnings),
            rejected=list(rejected),
            out_of_distribution=_banner(analysed),
            subjects=_subject_rows(frame_summaries),
            frames=[_frame_row(f) for f in frame_summaries],
            patients=list(patients),
            legend=_legend(classes, trp_counts),
        )
        with atomic_open(self.path, "w") as out:
            out.write(head)
            with self._sections_path.open(encoding="utf-8") as sections:
                shutil.copyfileobj(sections, out)
            out.write(_render("foot.html.j2"))
        self._sections_path.unlink()

    def abort(self) -> None:
        self._sections.close()
        self._sections_path.unlink(missing_ok=True)


def _banner(analysed: Sequence[dict]) -> dict | None:
    """The out-of-distribution banner: how many analysed frames carry a named warning, per code."""
    flagged = [f for f in analysed if f.get("warnings")]
    if not flagged:
        return None
    per_code: dict[str, list[str]] = {}
    for frame in flagged:
        for code in frame["warnings"]:
            per_code.setdefault(code, []).append(str(frame.get("name") or frame.get("stem")))
    return {
        "n_flagged": len(flagged),
        "n_analysed": len(analysed),
        "codes": [
            {
                "code": code,
                "title": WARNING_TITLES.get(code, code),
                "count": len(names),
                "frames": names[:10],
                "more": max(0, len(names) - 10),
            }
            for code, names in per_code.items()
        ],  # fmt: skip
    }


def _subject_rows(frame_summaries: Sequence[dict]) -> list[dict]:
    """Per subject (frames with a subject_id only; none: no table)."""
    subjects: dict[str, dict] = {}
    for frame in frame_summaries:
        subject = frame.get("subject_id")
        if not subject:
            continue
        row = subjects.setdefault(
            subject,
            {"subject_id": subject, "found": 0, "analysed": 0, "with_trp": 0, "trps": 0, "flagged": 0, "p_max": None},
        )  # fmt: skip
        row["found"] += 1
        if frame.get("status") == "analysed":
            row["analysed"] += 1
            row["with_trp"] += bool(frame.get("trp_count"))
            row["trps"] += frame.get("trp_count") or 0
            row["flagged"] += bool(frame.get("warnings"))
            p = frame.get("p_trp_frame")
            if _finite(p) and (row["p_max"] is None or p > row["p_max"]):
                row["p_max"] = p
    return [subjects[key] for key in sorted(subjects)]


def _frame_row(frame: dict) -> dict:
    status = str(frame.get("status") or "")
    count = frame.get("trp_count")
    if status == "analysed":
        finding = NO_FINDING if not count else f"{count} trigger point{'s' if count != 1 else ''}"
    else:
        finding = "not analysed"
    return {
        "name": frame.get("name") or frame.get("stem"),
        # A sweep's row links its sweep section (its own anchor); a frame's, its frame section.
        "anchor": (frame.get("anchor") or _anchor(str(frame.get("stem") or "")))
        if status == "analysed"
        else None,
        "subject_id": frame.get("subject_id") or "",
        "status": status,
        "finding": finding,
        "p_frame": frame.get("p_trp_frame"),
        "warnings": [WARNING_TITLES.get(code, code) for code in frame.get("warnings") or ()],
    }


def _legend(classes: Sequence[str], trp_classes: Iterable[str]) -> list[dict]:
    """The overlay colours; "indeterminate" (a TrP of undecided type) when the model has trigger-point classes
    (``trp_classes``, by the model's roles)."""
    entries = [
        {"label": class_label(name), "colour": class_colour(name, i)}
        for i, name in enumerate(classes)
        if i > 0
    ]
    if set(trp_classes) & set(classes):
        entries.append({"label": class_label("indeterminate"), "colour": class_colour("indeterminate", 0)})
    return entries


def _anchor(stem: str) -> str:
    return "frame-" + quote(stem, safe="")


# ------------------------------------------------------------------------------------------- frame sections


def frame_section(
    frame: FrameInput,
    overlay_relpath: str | None,
    trigger_points: Sequence[TriggerPoint],
    shape: tuple[int, int],
    *,
    frame_warnings: Sequence[dict] = (),
    p_frame: float | None = None,
    guidance: GuidanceParams | None = None,
) -> str:
    """The report's HTML for one analysed frame. ``overlay_relpath``: its overlay PNG (None: not drawn, e.g.
    ``--no-overlays``; the section says so in its place); ``frame_warnings``: its named warnings (dicts with
    "code" and "message"); ``p_frame``: the calibrated probability that it shows a trigger point (None: not known);
    ``guidance``: the settings the needle paths were judged by (None: no needle table)."""
    return _render("frame.html.j2", **frame_context(frame, overlay_relpath, trigger_points, shape, frame_warnings, p_frame, guidance))  # fmt: skip


def frame_context(
    frame: FrameInput,
    overlay_relpath: str | None,
    trigger_points: Sequence[TriggerPoint],
    shape: tuple[int, int],
    frame_warnings: Sequence[dict] = (),
    p_frame: float | None = None,
    guidance: GuidanceParams | None = None,
) -> dict:
    """The numbers of one frame's section as the template shows them (text, already rounded)."""
    known = frame.spacing_mm is not None

    def mm(value: float, digits: int = 1) -> str:
        return _num(value, digits) if known else "?"

    rows = []
    for p in trigger_points:
        reported = p.reported_class or p.class_name
        coverage = p.swe_coverage
        low = _finite(coverage) and 0.0 < coverage < MIN_SWE_COVERAGE
        confidence = _pct(p.confidence, "")
        if confidence and _finite(p.confidence_sd):
            confidence += f" ± {100 * p.confidence_sd:.0f}"
        rows.append(
            {
                "trp_id": p.trp_id,
                "label": class_label(reported),
                "colour": class_colour(reported, p.label),
                "confidence": confidence,
                "p_active": _pct(p.p_active),
                "kpa_mean": _num(p.stiffness_kpa_mean, 0),
                "kpa_median": _num(p.stiffness_kpa_median, 0),
                "kpa_sd": _num(p.stiffness_kpa_sd, 0),
                "coverage": _pct(coverage),
                "low_coverage": low,
                "depth_skin": mm(p.depth_from_skin_mm),
                "x_mm": mm(p.x_mm),
                "y_mm": mm(p.y_mm),
                "area": mm(p.area_mm2),
                "vessel": mm(p.nearest_vessel_mm),
            }
        )
    return {
        "anchor": _anchor(frame.stem),
        "name": frame.name,
        "href": None if overlay_relpath is None else quote(overlay_relpath),
        "width": shape[1],
        "height": shape[0],
        "pixel_size": "unknown" if frame.spacing_mm is None else f"{frame.spacing_mm:.3g} mm",
        "spacing_note": SPACING_SOURCES.get(frame.spacing_source, frame.spacing_source),
        "t_s": None if frame.t_s is None else f"{frame.t_s:.3f}",
        "elasto": frame.elasto_path is not None or frame.kind == "screenshot",
        "subject_id": frame.subject_id,
        "p_frame": _pct(p_frame, "") if p_frame is not None else "",
        "warnings": [
            {
                "code": w.get("code", ""),
                "title": WARNING_TITLES.get(w.get("code", ""), w.get("code", "")),
                "message": w.get("message", ""),
            }
            for w in frame_warnings
        ],  # fmt: skip
        "rows": rows,
        "known": known,
        "no_finding": NO_FINDING,
        "any_no_stiffness": any(not _finite(p.stiffness_kpa_mean) for p in trigger_points),
        "any_low_coverage": any(r["low_coverage"] for r in rows),
        "any_no_vessel": any(not _finite(p.nearest_vessel_mm) for p in trigger_points),
        "any_depth_unknown": known and any(not _finite(p.depth_from_skin_mm) for p in trigger_points),
        "min_coverage": _pct(MIN_SWE_COVERAGE),
        "needles": [] if guidance is None else [_needle_row(p, known, guidance) for p in trigger_points],
        "guidance": None if guidance is None else _guidance_text(guidance),
    }


def _needle_row(p: TriggerPoint, known: bool, guidance: GuidanceParams) -> dict:
    """One TrP's needle path as the report shows it; ``unsafe`` rows are printed in red."""

    def mm(value: float) -> str:
        return _num(value, 1) if known else "?"

    planned = p.needle_side != ""
    clearance = p.needle_clearance_mm
    margin = f"{guidance.min_clearance_mm:g} mm"
    unsafe = not planned or (known and not p.path_safe)
    if not planned:
        verdict = "NO in-plane path (the target is above the skin, or every entry lies outside the image)"
    elif not known:
        verdict = "not judged: the pixel size is unknown"
    elif p.path_safe:
        verdict = f"clear: at least {margin} from every nerve and vessel seen"
    else:
        verdict = f"UNSAFE: passes {_num(clearance, 1)} mm from a nerve or vessel (under {margin})"
    return {
        "trp_id": p.trp_id,
        "verdict": verdict,
        "unsafe": unsafe,
        "side": p.needle_side or "—",
        "angle": _num(p.needle_angle_deg, 0),
        "depth": mm(p.needle_depth_mm) if planned else "—",
        "clearance": ("none in view" if clearance == math.inf else mm(clearance)) if planned else "—",
        "nerve": mm(p.nearest_nerve_mm),
        "critical": mm(p.nearest_critical_mm),
    }  # fmt: skip


def _guidance_text(guidance: GuidanceParams) -> str:
    """The planning rule in one sentence, under the needle table."""
    return (
        f"Needle path: the straight in-plane path from the skin line (left or right side of the image, "
        f"{guidance.min_angle_deg:g}-{guidance.max_angle_deg:g} degrees to the skin) to the trigger point's centre "
        f"that passes farthest from every nerve and vessel, counting pixels the model gives at least "
        f"{100 * guidance.critical_prob_threshold:.0f} % probability of one; clearance = its smallest distance to "
        f"them. Only this image is checked: structures outside it, or outside the scan plane, are not seen."
    )
