"""Longitudinal core (issue #18) on hand-made frames and detections: anatomy profiles, registration, matching,
tracks and changes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from tpnet.core.longitudinal import (
    Detection,
    Registration,
    Visit,
    anatomy_profile,
    area_sd,
    build_tracks,
    match_visits,
    register,
    stiffness_mean_sd,
    track_changes,
)

SPACING_MM = 0.1


def _scene(shift_mm=0.0, seed=0, gain=1.0, offset=0.0, depth_shift_mm=0.0, tilt_deg=0.0, undulate=True):
    """A 200 x 256 frame: dark gel, a bright skin echo at ~1 mm, and two bright interfaces (~6 and ~14 mm) that
    undulate along the probe axis; fresh speckle per ``seed``; ``gain`` and ``offset`` change the grey levels.
    The probe lies where ``Registration`` with these ``shift_mm``, ``tilt_deg``, ``depth_shift_mm`` says: pixel
    (x, y) of this frame shows the scene at the registration's baseline position."""
    rng = np.random.default_rng(seed)
    height, width = 200, 256
    y, x = np.mgrid[0:height, 0:width] * SPACING_MM
    pivot, t = (width - 1) * SPACING_MM / 2, math.radians(tilt_deg)
    xb = pivot + shift_mm + (x - pivot) * math.cos(t) - y * math.sin(t)
    z = (x - pivot) * math.sin(t) + y * math.cos(t) + depth_shift_mm
    wave = 1.0 if undulate else 0.0
    skin = 1.0 + wave * 0.1 * np.sin(2 * np.pi * xb / 17.0)
    grey = np.where(z >= skin, 0.35, 0.05)
    grey = np.where((z >= skin) & (z < skin + 0.3), 0.8, grey)  # the skin's entry echo
    for depth in (
        6.0 + wave * 0.5 * np.sin(2 * np.pi * xb / 20.0 + 1.0),
        14.0 + wave * 0.4 * np.sin(xb / 2.0),
    ):
        grey = np.where((z >= depth) & (z < depth + 0.5), 0.85, grey)
    grey = grey + 0.08 * rng.standard_normal(grey.shape)
    return np.clip(grey * gain + offset, 0.0, 1.0).astype(np.float32)


def _register(baseline, follow_up):
    return register(anatomy_profile(baseline, SPACING_MM), anatomy_profile(follow_up, SPACING_MM))


# ---- anatomy profile ----


def test_profile_finds_the_skin_and_both_interfaces():
    profile = anatomy_profile(_scene(), SPACING_MM)
    assert np.nanmedian(profile.skin_mm) == pytest.approx(1.0, abs=0.2)
    assert len(profile.interfaces_mm) == 2
    assert np.nanmean(profile.interfaces_mm, axis=1) == pytest.approx([6.0, 14.0], abs=0.3)
    assert np.isfinite(profile.interfaces_mm).mean() > 0.9
    # The traced depth follows the undulation (0.5 mm amplitude), not a flat line.
    truth = 6.0 + 0.5 * np.sin(2 * np.pi * profile.x_mm / 20.0 + 1.0)
    assert np.nanmax(np.abs(profile.interfaces_mm[0] - truth)) < 0.25


def test_profile_depths_do_not_move_with_the_gain():
    frame = _scene(seed=3)
    dim = np.clip(frame * 0.6 + 0.15, 0, 1)  # the same speckle, another gain and offset
    a, b = anatomy_profile(frame, SPACING_MM), anatomy_profile(dim, SPACING_MM)
    assert a.interfaces_mm.shape == b.interfaces_mm.shape
    assert np.nanmax(np.abs(a.interfaces_mm - b.interfaces_mm)) < 0.05
    assert a.interface_strength == pytest.approx(b.interface_strength, rel=0.05)


def test_speckle_alone_has_no_interface():
    speckle = np.clip(0.4 + 0.1 * np.random.default_rng(0).standard_normal((200, 256)), 0, 1)
    profile = anatomy_profile(speckle.astype(np.float32), SPACING_MM)
    assert len(profile.interfaces_mm) == 0
    assert any("no long interface" in note for note in profile.notes)


def test_profile_rejects_a_bad_frame():
    with pytest.raises(ValueError, match="spacing_mm"):
        anatomy_profile(_scene(), 0.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        anatomy_profile(np.zeros((4, 4, 3)), SPACING_MM)


# ---- registration ----


@pytest.mark.parametrize(("shift_mm", "seed"), [(3.0, 1), (-2.5, 2), (0.0, 4)])
def test_register_recovers_the_lateral_shift_despite_a_gain_change(shift_mm, seed):
    follow_up = _scene(shift_mm=shift_mm, seed=seed + 100, gain=0.7, offset=0.1)
    reg = _register(_scene(seed=seed), follow_up)
    assert reg.lateral_shift_mm == pytest.approx(shift_mm, abs=2 * SPACING_MM)  # within two pixels
    assert reg.depth_shift_mm == pytest.approx(0.0, abs=SPACING_MM)
    assert reg.tilt_deg == pytest.approx(0.0, abs=0.3)
    assert reg.reliable, reg.reason
    assert reg.reason == ""
    assert reg.residual_mm < 0.3
    assert reg.overlap_fraction == pytest.approx(1 - abs(shift_mm) / 25.5, abs=0.02)
    assert math.isfinite(reg.intensity_correlation)  # reported, not a rule
    assert reg.rival_margin > 2.0


def test_register_recovers_a_depth_shift_and_a_tilt():
    # The follow-up probe sits on a thicker gel layer (everything 0.8 mm deeper in its frame) and is rocked 2 deg.
    reg = _register(_scene(seed=5), _scene(shift_mm=1.5, seed=6, depth_shift_mm=-0.8, tilt_deg=2.0))
    assert reg.reliable, reg.reason
    assert reg.depth_shift_mm == pytest.approx(-0.8, abs=SPACING_MM)
    assert reg.lateral_shift_mm == pytest.approx(1.5, abs=2 * SPACING_MM)
    assert reg.tilt_deg == pytest.approx(2.0, abs=0.3)
    # A translation alone leaves the tilt's ~0.45 mm depth error at the frame's ends in the residual.
    flat = register(
        anatomy_profile(_scene(seed=5), SPACING_MM),
        anatomy_profile(_scene(shift_mm=1.5, seed=6, depth_shift_mm=-0.8, tilt_deg=2.0), SPACING_MM),
        max_tilt_deg=0.0,
    )
    assert flat.tilt_deg == 0.0 and flat.residual_mm > 2 * reg.residual_mm
    # to_baseline is the rigid map: the pivot (probe face centre) moves by the shift and the depth shift only.
    assert reg.to_baseline(reg.pivot_x_mm, 0.0) == pytest.approx(
        (reg.pivot_x_mm + reg.lateral_shift_mm, reg.depth_shift_mm)
    )
    x_base, y_base = reg.to_baseline(reg.pivot_x_mm + 10.0, 0.0)
    assert y_base - reg.depth_shift_mm == pytest.approx(10.0 * math.sin(math.radians(reg.tilt_deg)))


@pytest.mark.parametrize("which", ["follow-up", "baseline"])
def test_an_empty_frame_is_never_a_zero_shift(which):
    black = np.zeros((200, 256), np.float32)
    frames = (_scene(), black) if which == "follow-up" else (black, _scene())
    reg = _register(*frames)
    assert not reg.reliable
    assert "no interface" in reg.reason and which in reg.reason
    assert math.isnan(reg.lateral_shift_mm) and math.isnan(reg.depth_shift_mm)
    assert reg.to_baseline(3.0, 4.0) == (3.0, 4.0)  # nothing to apply


def test_flat_interfaces_leave_the_lateral_shift_undetermined():
    reg = _register(_scene(seed=1, undulate=False), _scene(shift_mm=3.0, seed=2, undulate=False))
    assert not reg.reliable
    assert "lateral shift not determined" in reg.reason
    assert reg.lateral_uncertainty_mm > 1.5


def test_other_anatomy_is_unreliable():
    # A follow-up of someone else: interfaces at other depths (shifted by more than the depth search) and shapes.
    other = np.clip(np.flipud(_scene(seed=8)) * 0.9, 0, 1)
    reg = _register(_scene(seed=7), other)
    assert not reg.reliable and reg.reason


def test_register_rejects_a_negative_search_range():
    profile = anatomy_profile(_scene(), SPACING_MM)
    with pytest.raises(ValueError, match="max_shift_mm"):
        register(profile, profile, max_shift_mm=-1.0)


# ---- matching ----


def _det(x, y, area=10.0, kpa=30.0, kpa_max=45.0, sd=6.0, coverage=1.0):
    return Detection(
        x_mm=x,
        y_mm=y,
        area_mm2=area,
        stiffness_kpa_mean=kpa,
        stiffness_kpa_max=kpa_max,
        stiffness_kpa_sd=sd,
        swe_coverage=coverage,
        class_name="active_trp",
    )


def _shifted(dx, dz, reliable=True, reason=""):
    return replace(
        Registration.identity(), lateral_shift_mm=dx, depth_shift_mm=dz, reliable=reliable, reason=reason
    )


def test_match_is_optimal_where_greedy_is_not():
    # Greedy pairs the closest (B0, F0) at 1 mm and is left with (B1, F1) at 5 mm: 6 mm in all. The optimum,
    # (B0, F1) 2 mm + (B1, F0) 2 mm, is 4 mm.
    baseline = [_det(0.0, 0.0), _det(0.0, 3.0)]
    follow = [_det(0.0, 1.0), _det(0.0, -2.0)]
    matches = match_visits(baseline, follow, Registration.identity(), max_distance_mm=6.0)
    pairs = {(m.baseline_index, m.follow_index): m.distance_mm for m in matches}
    assert pairs == {(0, 1): pytest.approx(2.0), (1, 0): pytest.approx(2.0)}
    assert not any(m.flagged for m in matches)


def test_match_applies_the_registration_and_the_distance_limit():
    baseline = [_det(10.0, 5.0), _det(20.0, 8.0)]
    # The follow-up frame starts 3 mm further along: its TrPs sit 3 mm to the left in its own frame.
    follow = [_det(7.2, 5.1), _det(30.0, 8.0)]
    matches = match_visits(baseline, follow, _shifted(3.0, 0.0), max_distance_mm=5.0)
    assert [(m.baseline_index, m.follow_index) for m in matches] == [(0, 0), (1, None), (None, 1)]
    assert matches[0].x_base_mm == pytest.approx(10.2) and matches[0].distance_mm == pytest.approx(
        math.hypot(0.2, 0.1)
    )
    assert matches[2].x_base_mm == pytest.approx(33.0)
    # Unregistered, the first pair would be 2.8 mm apart and still match; at 2 mm it must not.
    assert (
        match_visits(baseline, follow, Registration.identity(), max_distance_mm=2.0)[0].follow_index is None
    )


def test_an_unreliable_registration_flags_every_match():
    matches = match_visits(
        [_det(10.0, 5.0), _det(20.0, 5.0)],
        [_det(10.5, 5.0)],
        _shifted(0.0, 0.0, False, "overlap 30% below 50%"),
    )
    assert len(matches) == 2 and all(m.flagged for m in matches)
    assert all("unreliable registration: overlap 30% below 50%" in m.reason for m in matches)
    empty = replace(
        Registration.identity(),
        lateral_shift_mm=math.nan,
        depth_shift_mm=math.nan,
        reliable=False,
        reason="none",
    )
    unregistered = match_visits([_det(10.0, 5.0)], [_det(10.5, 5.0)], empty)
    assert unregistered[0].follow_index == 0 and unregistered[0].flagged
    assert "compared unregistered" in unregistered[0].reason


def test_match_with_nothing_on_one_side():
    assert match_visits([], [], Registration.identity()) == []
    only_follow = match_visits([], [_det(1.0, 1.0)], Registration.identity())
    assert [(m.baseline_index, m.follow_index) for m in only_follow] == [(None, 0)]


# ---- tracks and changes ----


def _visits():
    baseline = Visit("v1", 0.0, [_det(10.0, 5.0, area=12.0, kpa=40.0), _det(20.0, 8.0, area=8.0)])
    # Follow-up frame starts 2 mm further along: the first TrP is found at x = 8.1 (10.1 in the baseline frame),
    # softer and smaller; the second is gone; a new one appears at 30 mm (baseline frame).
    follow = Visit(
        "v2",
        42.0,
        [_det(8.1, 5.2, area=9.0, kpa=31.0, kpa_max=40.0, sd=5.0), _det(28.0, 12.0)],
        registration=_shifted(2.0, 0.0),
        days_since_injection=28.0,
    )
    third = Visit(
        "v3", 90.0, [_det(10.3, 5.0, area=7.0, kpa=28.0)], registration=_shifted(0.0, 0.0, False, "why")
    )
    return [baseline, follow, third]


def test_tracks_with_a_resolved_and_a_new_trigger_point():
    rows = build_tracks(_visits(), subject_id="s01")
    table = [(r.visit_id, r.track_id, r.status) for r in rows]
    assert table == [
        ("v1", 1, "new"),
        ("v1", 2, "new"),
        ("v2", 1, "persisting"),
        ("v2", 3, "new"),
        ("v2", 2, "resolved"),
        ("v3", 1, "persisting"),
        ("v3", 3, "resolved"),  # track 2 resolved at v2: no second resolved row
    ]
    persisting = rows[2]
    assert (persisting.x_base_mm, persisting.y_base_mm) == pytest.approx((10.1, 5.2))
    assert (persisting.x_mm, persisting.y_mm) == pytest.approx((8.1, 5.2))
    assert persisting.detection_index == 0 and persisting.days_since_injection == 28.0
    assert rows[3].x_base_mm == pytest.approx(30.0)
    resolved = rows[4]
    assert resolved.detection_index is None and math.isnan(resolved.area_mm2) and math.isnan(resolved.x_mm)
    assert (resolved.x_base_mm, resolved.y_base_mm) == (20.0, 8.0)  # where it was last seen
    assert all(r.subject_id == "s01" for r in rows)
    assert not any(r.flagged for r in rows[:5])
    assert all(r.flagged and "why" in r.flag_reason for r in rows[5:])


def test_a_trigger_point_found_again_continues_its_track():
    visits = _visits()[:2] + [Visit("v3", 90.0, [_det(20.2, 8.0)], registration=_shifted(0.0, 0.0))]
    rows = build_tracks(visits)
    assert [(r.track_id, r.status) for r in rows if r.visit_id == "v3"] == [
        (2, "persisting"),
        (1, "resolved"),
        (3, "resolved"),
    ]


def test_tracks_refuse_visits_out_of_order_or_unregistered():
    a, b, _ = _visits()
    with pytest.raises(ValueError, match="date order"):
        build_tracks([b, a])
    b.registration = None
    with pytest.raises(ValueError, match="no registration"):
        build_tracks([a, b])
    a.registration = _shifted(1.0, 0.0)
    with pytest.raises(ValueError, match="baseline"):
        build_tracks([a])
    assert build_tracks([]) == []


def test_changes_from_each_tracks_first_visit_with_their_uncertainty():
    rows = build_tracks(_visits(), subject_id="s01")
    changes = {(c.track_id, c.visit_id): c for c in track_changes(rows)}
    assert set(changes) == {(1, "v2"), (1, "v3"), (2, "v2"), (3, "v3")}
    softer = changes[(1, "v2")]
    assert softer.reference_visit_id == "v1"
    assert softer.delta_stiffness_kpa_mean == pytest.approx(-9.0)
    assert softer.delta_stiffness_kpa_max == pytest.approx(-5.0)
    assert softer.delta_area_mm2 == pytest.approx(-3.0) and softer.relative_area_change == pytest.approx(
        -0.25
    )
    # Standard errors: SD / sqrt(covered area / 1 mm2), added in quadrature; the maximum carries one SD per visit.
    assert softer.delta_stiffness_kpa_mean_sd == pytest.approx(math.hypot(6.0 / math.sqrt(12.0), 5.0 / 3.0))
    assert softer.delta_stiffness_kpa_max_sd == pytest.approx(math.hypot(6.0, 5.0))
    assert softer.delta_area_mm2_sd == pytest.approx(math.hypot(area_sd(12.0), area_sd(9.0)))
    assert not softer.flagged
    gone = changes[(2, "v2")]
    assert gone.status == "resolved" and gone.delta_area_mm2 == pytest.approx(-8.0)
    assert math.isnan(gone.delta_stiffness_kpa_mean) and math.isnan(gone.delta_stiffness_kpa_max_sd)
    assert changes[(1, "v3")].flagged and "why" in changes[(1, "v3")].flag_reason
    assert changes[(3, "v3")].reference_visit_id == "v2"  # a new TrP's reference is its first visit


def test_uncertainty_rules():
    row = build_tracks([Visit("v1", 0.0, [_det(0.0, 0.0, area=4.0, sd=6.0, coverage=0.5)])])[0]
    assert stiffness_mean_sd(row) == pytest.approx(6.0 / math.sqrt(2.0))  # 2 independent SWE samples
    row.swe_coverage = 0.1
    assert stiffness_mean_sd(row) == pytest.approx(6.0)  # never fewer than one sample
    row.swe_coverage = math.nan
    assert math.isnan(stiffness_mean_sd(row))
    assert area_sd(math.pi) == pytest.approx(0.2 * 2 * math.pi)  # a 1 mm disc's boundary moved by 0.2 mm
