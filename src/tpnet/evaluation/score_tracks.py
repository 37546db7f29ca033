"""Score ``tpnet-infer --longitudinal``'s tracks.csv against a synthetic study's truth (issue #18).

    python -m tpnet.evaluation.score_tracks --truth DATA/truth/tracks.csv --tracks OUT/tracks.csv \\
        [--subjects s020,s021,...] [--out tracks_metrics.json]

Prints the track-matching accuracy (pairs linked correctly / true pairs), the median absolute error of the
estimated change in mean and maximum stiffness and in area against the truth's, and the share of true
resolutions recognised, each with a subject-bootstrap 95 % CI (``tpnet.evaluation.longitudinal_metrics``).
``--subjects``: score only these (e.g. the test subjects of the detector's split); default every truth subject.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tpnet.core.longitudinal import TrackRow
from tpnet.evaluation.longitudinal_metrics import TruthTrackRow, evaluate_tracks, read_truth_tracks
from tpnet.evaluation.metrics import json_safe

FIGURES = (
    ("track_accuracy", "track-matching accuracy"),
    ("pair_detection_rate", "  = true pairs detected at both visits"),
    ("linking_accuracy", "  x of those, linked correctly"),
    ("mae_stiffness_mean_kpa", "median |error| of the change in mean stiffness, kPa"),
    ("mae_stiffness_max_kpa", "median |error| of the change in maximum stiffness, kPa"),
    ("mae_area_mm2", "median |error| of the change in area, mm2"),
    ("resolved_accuracy", "true resolutions recognised"),
)


def predicted_rows(rows: list[TruthTrackRow]) -> list[TrackRow]:
    """tracks.csv as read by ``read_truth_tracks`` (same core columns) as the ``TrackRow`` the scorer takes."""
    nan = math.nan
    return [
        TrackRow(
            subject_id=r.subject_id,
            track_id=r.track_id,
            visit_id=r.visit,
            visit_index=-1,
            days_since_first=nan,
            days_since_injection=None,
            status=r.status,
            x_base_mm=r.x_base_mm,
            y_base_mm=r.y_base_mm,
            x_mm=r.x_mm,
            y_mm=r.y_mm,
            area_mm2=r.area_mm2,
            stiffness_kpa_mean=r.stiffness_kpa_mean,
            stiffness_kpa_max=r.stiffness_kpa_max,
            stiffness_kpa_sd=nan,
            swe_coverage=nan,
            class_name=r.class_name,
            confidence=nan,
            depth_from_skin_mm=nan,
            detection_index=None,
            match_distance_mm=nan,
            flagged=False,
            flag_reason="",
        )  # fmt: skip
        for r in rows
    ]


def _line(label: str, value: float, ci: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return f"{label}: n/a (nothing to measure)"
    return f"{label}: {value:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tpnet.evaluation.score_tracks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--truth", required=True, type=Path, help="the synthetic study's truth/tracks.csv")
    parser.add_argument("--tracks", required=True, type=Path, help="tpnet-infer --longitudinal's tracks.csv")
    parser.add_argument("--subjects", default="", help="comma-separated subject ids to score (default: all)")
    parser.add_argument(
        "--match-mm", type=float, default=5.0, help="detection-to-truth distance, mm (default 5)"
    )
    parser.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples of subjects (default 1000)"
    )
    parser.add_argument("--out", type=Path, help="write the metrics and CIs as JSON here")
    args = parser.parse_args(argv)
    try:
        truth = read_truth_tracks(args.truth)
        predicted = predicted_rows(read_truth_tracks(args.tracks))
    except (OSError, ValueError) as exc:
        print(f"score_tracks: error: {exc}", file=sys.stderr)
        return 2
    if args.subjects:
        wanted = {s.strip() for s in args.subjects.split(",") if s.strip()}
        unknown = wanted - {r.subject_id for r in truth}
        if unknown:
            print(f"score_tracks: error: subjects not in {args.truth}: {sorted(unknown)}", file=sys.stderr)
            return 2
        truth = [r for r in truth if r.subject_id in wanted]
        predicted = [r for r in predicted if r.subject_id in wanted]
    result = evaluate_tracks(predicted, truth, match_mm=args.match_mm, n_boot=args.n_boot)
    metrics, ci = result["metrics"], result["ci"]
    print(
        f"{metrics['n_subjects']} subject(s), {metrics['n_true_pairs']} true pair(s) "
        f"({metrics['n_correct_pairs']} linked correctly, {metrics['n_missed_pairs']} missed by the detector, "
        f"{metrics['n_broken_pairs']} linked to another track), {metrics['n_true_resolutions']} true resolution(s)"
    )
    for key, label in FIGURES:
        print(_line(label, metrics[key], ci[key]))
    if args.out is not None:
        args.out.write_text(json.dumps(json_safe(result), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
