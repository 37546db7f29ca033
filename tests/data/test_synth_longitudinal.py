"""Synthetic longitudinal studies (issue #18): byte-identical per seed and worker count, a trigger point seen again
where the probe shift puts it, softening by the drawn fraction on the SWE map, resolved nodules gone from the
frame, and a dataset that tpnet's contract and check accept, with a consistent tracks.csv. Small frames."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tpnet.core.contract import load_manifest
from tpnet.core.io import read_array
from tpnet.data.check import check_dataset
from tpnet.data.cli import main
from tpnet.data.synth import ACTIVE_TRP, LATENT_TRP
from tpnet.data.synth_longitudinal import (
    MANIFEST_COLUMNS,
    TRACK_COLUMNS,
    ProbePlacement,
    Study,
    Track,
    TrackResponse,
    draw_study,
    render_visit,
    write_longitudinal_dataset,
    write_study_files,
)

# 25.6 x 25.6 mm frames at 0.2 mm/px: deep enough for the whole trapezius.
SMALL = {"height": 128, "width": 128, "spacing_mm": 0.2}
UNCHANGED = TrackResponse(appears_at=0, responder=False, softening=0.0, shrinkage=0.0, resolves_at=None)


@pytest.fixture(scope="module")
def studies() -> list[Study]:
    return [draw_study(3, subject, visits_min=2, visits_max=3, **SMALL) for subject in range(8)]


def central_track(studies: list[Study], margin_mm: float = 6.0) -> tuple[Study, Track]:
    """A study and a baseline nodule whose centre lies ``margin_mm`` inside the frame (room for a shifted probe)."""
    for study in studies:
        side_mm = study.margin_px[1] * study.spacing_mm
        for track in study.tracks:
            x = track.trp.centre[0] - side_mm
            if track.response.appears_at == 0 and margin_mm < x < study.width_mm - margin_mm:
                return study, track
    raise AssertionError("no study with a central trigger point")


def only(study: Study, track: Track, response: TrackResponse, second: ProbePlacement, **trp) -> Study:
    """``study`` with only ``track`` (its nodule changed by ``trp``, its response set) and visit 1 at ``second``."""
    track = replace(track, trp=replace(track.trp, **trp), response=response)
    placements = (study.placements[0], second, *study.placements[2:])
    return replace(study, tracks=(track,), placements=placements)


def trp_components(mask: np.ndarray) -> list[tuple[float, float, int]]:
    """(x_mm, y_mm, pixels) of each 8-connected trigger-point component of a label map at 0.2 mm/px."""
    binary = np.isin(mask, (ACTIVE_TRP, LATENT_TRP)).astype(np.uint8)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    s = SMALL["spacing_mm"]
    return [((cx + 0.5) * s, (cy + 0.5) * s, int(stats[k, cv2.CC_STAT_AREA])) for k, (cx, cy) in
            enumerate(centroids) if k > 0]  # fmt: skip


def test_same_seed_same_bytes_workers_do_not_change_them(tmp_path: Path) -> None:
    settings = {"subjects": 3, "visits_min": 2, "visits_max": 3, "seed": 5, "height": 64, "width": 64,
                "spacing_mm": 0.4}  # fmt: skip
    one = write_longitudinal_dataset(tmp_path / "one", workers=1, **settings)
    two = write_longitudinal_dataset(tmp_path / "two", workers=2, **settings)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    visits = len(load_manifest(one))
    # dataset.yaml, manifest.csv, tracks.csv; three images and two truth files a visit
    assert visits >= 6 and len(files) == 3 + 5 * visits
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    other = render_visit(draw_study(6, 0, height=64, width=64, spacing_mm=0.4), 0)
    assert not np.array_equal(other["bmode"], cv2.imread(str(one / "bmode" / "s000_v0.png"), 0))


def test_track_map_marks_exactly_the_trigger_point_pixels(studies: list[Study]) -> None:
    seen = 0
    for study in studies[:4]:
        for visit in range(study.visits):
            frame = render_visit(study, visit)
            trp_pixels = np.isin(frame["mask"], (ACTIVE_TRP, LATENT_TRP))
            assert np.array_equal(frame["tracks"] > 0, trp_pixels)
            ids = {r["track_id"] for r in frame["truth"]["tracks"] if r["status"] != "resolved"}
            assert set(np.unique(frame["tracks"])) - {0} == ids
            seen += len(ids)
    assert seen > 0


def test_a_trigger_point_is_seen_again_shifted_by_the_probe(studies: list[Study]) -> None:
    study, track = central_track(studies)
    again = ProbePlacement(2.4, 0.0, 0.0, study.placements[0].gain_db + 1.5, 0.8)
    study = only(study, track, UNCHANGED, again)
    (x0, y0, n0), = trp_components(render_visit(study, 0)["mask"])  # fmt: skip
    (x1, y1, n1), = trp_components(render_visit(study, 1)["mask"])  # fmt: skip
    pixel = SMALL["spacing_mm"]
    assert abs(x1 - (x0 - 2.4)) < 2 * pixel and abs(y1 - y0) < 2 * pixel
    assert abs(n1 - n0) <= 0.05 * n0  # the same section, moved


def test_truth_maps_a_tilted_visit_back_to_the_baseline(studies: list[Study]) -> None:
    study, track = central_track(studies)
    tilted = ProbePlacement(-1.5, 0.0, 2.5, study.placements[0].gain_db, 0.75)
    study = only(study, track, UNCHANGED, tilted)
    baseline, follow_up = render_visit(study, 0), render_visit(study, 1)
    (x0, y0, _), = trp_components(baseline["mask"])  # fmt: skip
    (x1, y1, _), = trp_components(follow_up["mask"])  # fmt: skip
    record = follow_up["truth"]["tracks"][0]
    assert (record["dx_mm"], record["tilt_deg"]) == (-1.5, 2.5)
    assert abs(record["x_mm"] - x1) < 0.01 and abs(record["y_mm"] - y1) < 0.01  # the component's own centroid
    pixel = SMALL["spacing_mm"]
    assert math.hypot(record["x_base_mm"] - x0, record["y_base_mm"] - y0) < 2 * pixel
    assert math.hypot(x1 - x0, y1 - y0) > 1.0  # the tilt and shift did move it in the frame
    xb, yb = tilted.to_baseline_mm(x1, y1, study.width_mm)
    assert np.allclose(tilted.from_baseline_mm(xb, yb, study.width_mm), (x1, y1))


def test_stiffness_falls_by_the_drawn_fraction_on_the_swe_map(studies: list[Study]) -> None:
    """A responder losing half of its excess stiffness over the muscle, probe placed as at baseline: inside the
    nodule, the SWE map's excess over the same visit with the nodule as stiff as its muscle halves, and an
    active TrP turns latent."""
    study, track = central_track(studies)
    softened = TrackResponse(appears_at=0, responder=True, softening=0.5, shrinkage=0.0, resolves_at=None)
    stiff = only(study, track, softened, study.placements[0], ratio=2.0, label=ACTIVE_TRP)
    plain = only(study, track, softened, study.placements[0], ratio=1.0, label=ACTIVE_TRP)  # no excess
    excess, drawn, at_muscle = [], [], []
    for visit in (0, 1):
        frame, muscle = render_visit(stiff, visit), render_visit(plain, visit)
        inside = frame["tracks"] == track.track_id
        assert np.isfinite(frame["elasto"][inside]).mean() > 0.5  # the SWE box is on the nodule
        excess.append(np.nanmean((frame["elasto"] - muscle["elasto"])[inside]))
        drawn.append(
            frame["truth"]["tracks"][0]["stiffness_kpa_mean"]
            - muscle["truth"]["tracks"][0]["stiffness_kpa_mean"]
        )
        at_muscle.append(muscle["truth"]["tracks"][0]["stiffness_kpa_mean"])
        labels = set(np.unique(frame["mask"][inside]))
        assert labels == ({ACTIVE_TRP} if visit == 0 else {LATENT_TRP})
    assert at_muscle[1] == pytest.approx(at_muscle[0], abs=1e-3)  # never softer than its muscle
    assert excess[0] > 5.0  # a 2x nodule stands out of its muscle
    assert excess[1] / excess[0] == pytest.approx(0.5, abs=0.1)
    assert drawn[1] / drawn[0] == pytest.approx(0.5, abs=1e-3)  # as drawn: exactly the fraction


def test_a_resolved_trigger_point_leaves_no_component(studies: list[Study], tmp_path: Path) -> None:
    study, track = central_track(studies)
    gone = TrackResponse(appears_at=0, responder=True, softening=0.3, shrinkage=0.1, resolves_at=1)
    study = only(study, track, gone, replace(study.placements[1], dx_mm=1.0))
    assert len(trp_components(render_visit(study, 0)["mask"])) == 1
    follow_up = render_visit(study, 1)
    assert trp_components(follow_up["mask"]) == [] and not follow_up["tracks"].any()
    _, track_rows = write_study_files(tmp_path, study)
    row = next(r for r in track_rows if r["visit_index"] == "1")
    assert row["status"] == "resolved" and row["dx_mm"] == "1.0000"
    assert all(row[c] == "" for c in ("x_mm", "y_mm", "area_mm2", "stiffness_kpa_mean", "stiffness_kpa_max"))


def test_dataset_passes_the_contract_and_tracks_are_consistent(tmp_path: Path) -> None:
    root = write_longitudinal_dataset(tmp_path / "ds", subjects=4, seed=2, workers=1, **SMALL)
    rows = load_manifest(root)
    with (root / "manifest.csv").open() as fh:
        raw = list(csv.DictReader(fh))
    assert tuple(raw[0]) == MANIFEST_COLUMNS
    assert check_dataset(root).errors == []
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    assert spec["synthetic"] is True and spec["generator"]["name"] == "tpnet.data.synth_longitudinal"
    assert spec["generator"]["model"]["response"]["responder_p"] == 0.79
    with (root / "truth" / "tracks.csv").open() as fh:
        tracks = list(csv.DictReader(fh))
    assert tuple(tracks[0]) == TRACK_COLUMNS
    for subject in sorted({r.subject_id for r in rows}):
        visits = [r for r in raw if r["subject_id"] == subject]
        dates = [r["visit"] for r in visits]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)  # ISO dates sort by time
        assert [r["event"] for r in visits] == ["injection"] + [""] * (len(visits) - 1)
        mine = [t for t in tracks if t["subject_id"] == subject]
        assert mine, subject  # every subject enrolled with a trigger point
        for track_id in {t["track_id"] for t in mine}:
            course = [t for t in mine if t["track_id"] == track_id]
            first = int(course[0]["visit_index"])
            assert [int(t["visit_index"]) for t in course] == list(range(first, len(visits)))
            statuses = "".join(t["status"][0] for t in course)  # n(ew), p(ersisting), r(esolved)
            assert re.fullmatch("np*r*", statuses), (subject, track_id, statuses)
        for visit in visits:
            present = {int(t["track_id"]) for t in mine if t["sample_id"] == visit["sample_id"]
                       and t["status"] != "resolved"}  # fmt: skip
            ids = read_array(root / "truth" / f"{visit['sample_id']}_tracks.png")
            assert ids.dtype == np.uint16 and ids.shape == (SMALL["height"], SMALL["width"])
            assert set(np.unique(ids)) - {0} == present
            truth = json.loads((root / "truth" / f"{visit['sample_id']}.json").read_text())
            assert truth["visit"] == visit["visit"] and (truth["event"] is not None) == (visit["event"] != "")


def test_cli_writes_the_set_and_names_a_bad_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synth-longitudinal", str(tmp_path / "ds"), "--subjects", "1", "--visits-min", "2", "--visits-max",
            "2", "--height", "48", "--width", "48", "--spacing-mm", "0.5", "--seed", "1", "--workers", "1"]  # fmt: skip
    assert main(args) == 0
    assert len(load_manifest(tmp_path / "ds")) == 2
    assert main(["synth-longitudinal", str(tmp_path / "bad"), "--visits-min", "3", "--visits-max", "2"]) == 2
    assert "visits_min" in capsys.readouterr().err
