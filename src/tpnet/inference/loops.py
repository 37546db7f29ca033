"""Cine loops summarised: trigger points followed from frame to frame, and the loop's most confident frame.

A loop is many frames of one acquisition (a multi-frame DICOM). A finding seen in one frame only may be
speckle; one seen at the same place in ``min_frames`` consecutive frames is *stable*. Detections are linked
greedily, frame by frame in acquisition order: each detection (most confident first) continues the nearest
track whose last position lies within ``max_step_mm``; a track not continued in a frame ends there. Active
and latent labels may flip between frames (the classes are a clinical distinction the image hardly shows),
so tracks link any trigger-point class and report the class seen most often and how often it was seen.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_MIN_FRAMES = 3
# ~ one TrP radius (16 mm^2 -> r ~ 2.3 mm): a probe's drift between two frames stays below it.
DEFAULT_MAX_STEP_MM = 3.0

LOOP_COLUMNS: tuple[str, ...] = (
    "loop", "track_id", "class", "class_agreement", "n_frames", "stable", "first_frame", "last_frame",
    "t_first_s", "t_last_s", "x_px", "y_px", "x_mm", "y_mm", "max_confidence", "best_frame_stem",
)  # fmt: skip


@dataclass(frozen=True)
class LoopDetection:
    """One trigger point in one frame of a loop (from the frame's CSV row)."""

    frame_index: int
    stem: str
    t_s: float | None
    class_name: str
    x_px: float
    y_px: float
    confidence: float


@dataclass
class Track:
    loop: str
    track_id: int
    detections: list[LoopDetection] = field(default_factory=list)

    @property
    def last(self) -> LoopDetection:
        return self.detections[-1]

    def row(self, spacing_mm: float | None, min_frames: int) -> list[str]:
        classes = Counter(d.class_name for d in self.detections)
        name, count = classes.most_common(1)[0]
        best = max(self.detections, key=lambda d: d.confidence)
        x = sum(d.x_px for d in self.detections) / len(self.detections)
        y = sum(d.y_px for d in self.detections) / len(self.detections)
        first, last = self.detections[0], self.detections[-1]
        return [
            self.loop, str(self.track_id), name, f"{count / len(self.detections):.2f}",
            str(len(self.detections)), "yes" if len(self.detections) >= min_frames else "no",
            str(first.frame_index), str(last.frame_index), _fmt(first.t_s, 3), _fmt(last.t_s, 3),
            f"{x:.2f}", f"{y:.2f}", _fmt(None if spacing_mm is None else x * spacing_mm, 3),
            _fmt(None if spacing_mm is None else y * spacing_mm, 3), f"{best.confidence:.4f}", best.stem,
        ]  # fmt: skip


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def track_loop(
    loop: str,
    frames: Sequence[tuple[int, Sequence[LoopDetection]]],
    step_limit_px: float,
) -> list[Track]:
    """Tracks of one loop. ``frames``: (frame index, its detections) for every analysed frame, any order;
    ``step_limit_px``: the largest move between two consecutive frames, in pixels."""
    tracks: list[Track] = []
    active: list[Track] = []
    previous_index: int | None = None
    for index, detections in sorted(frames, key=lambda item: item[0]):
        if previous_index is not None and index != previous_index + 1:
            active = []  # a frame missing from the loop (rejected) breaks every track: not consecutive
        previous_index = index
        continued: list[Track] = []
        free = list(active)
        for det in sorted(detections, key=lambda d: -d.confidence):
            near = [(math.hypot(t.last.x_px - det.x_px, t.last.y_px - det.y_px), t) for t in free]
            near = [(d, t) for d, t in near if d <= step_limit_px]
            if near:
                track = min(near, key=lambda item: item[0])[1]
                free.remove(track)
            else:
                track = Track(loop, len(tracks) + 1)
                tracks.append(track)
            track.detections.append(det)
            continued.append(track)
        active = continued
    return tracks


def summarise_loop(
    loop: str,
    frames: Sequence[tuple[int, Sequence[LoopDetection]]],
    spacing_mm: float | None,
    working_spacing_mm: float,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_step_mm: float = DEFAULT_MAX_STEP_MM,
) -> tuple[dict, list[list[str]]]:
    """(the loop's summary for summary.json, its tracks as ``LOOP_COLUMNS`` rows)."""
    tracks = track_loop(loop, frames, max_step_mm / working_spacing_mm)
    rows = [t.row(spacing_mm, min_frames) for t in tracks]
    every = [d for _, dets in frames for d in dets]
    best = max(every, key=lambda d: d.confidence) if every else None
    summary = {
        "loop": loop,
        "frames_analysed": len(frames),
        "frames_with_trp": sum(1 for _, dets in frames if dets),
        "most_confident_frame": None
        if best is None
        else {
            "stem": best.stem,
            "frame": best.frame_index,
            "t_s": best.t_s,
            "confidence": round(best.confidence, 4),
        },
        "tracks": len(tracks),
        "stable_tracks": sum(len(t.detections) >= min_frames for t in tracks),
        "stable_rule": f"seen at the same place (within {max_step_mm:g} mm) in >= {min_frames} consecutive frames",
    }
    return summary, rows
