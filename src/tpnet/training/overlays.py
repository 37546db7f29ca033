"""Validation overlay images (ground truth | prediction) for MLflow, drawn with the inference tool's renderer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tpnet.core.contract import ClassRoles
from tpnet.core.io import write_png
from tpnet.core.overlay import render_overlay
from tpnet.core.postprocess import find_trigger_points


def write_overlays(
    frames: Sequence[dict], classes: Sequence[str], out_dir: Path, roles: ClassRoles | None = None
) -> list[Path]:
    """One PNG per frame: left the ground truth, right the prediction with numbered TrPs (``roles``: which
    classes are trigger points; None: the naming rule)."""
    paths = []
    for frame in frames:
        bmode = frame["image"][0].numpy()
        gt = frame["mask"].numpy().astype(np.uint8)
        gt_points = find_trigger_points(
            gt, float(frame["spacing_mm"]), classes, elasto_kpa=frame["elasto_kpa"], roles=roles
        )
        left = render_overlay(bmode, gt, classes, gt_points, frame["elasto_kpa"], roles=roles)
        right = render_overlay(bmode, frame["pred"], classes, frame["points"], frame["elasto_kpa"], roles=roles)
        gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
        path = out_dir / f"{frame['sample_id']}.png"
        write_png(path, np.concatenate([left, gap, right], axis=1))
        paths.append(path)
    return paths
