"""``tpnet-data preprocess ROOT [--spacing-mm S]``: build the preprocessed frame cache tpnet-train would build on
its first run, ahead of time (e.g. on a cluster's login node, or once for every fold of a cross-validation).

Without ``--spacing-mm`` the spacing is the plan's (``tpnet-data plan ROOT``), as tpnet-train plans it with its
defaults; a run with another ``data.spacing_mm`` builds its own cache.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main_preprocess(root: Path, spacing_mm: float | None, cache_dir: Path | None, workers: int | None) -> int:
    """Build (or find) the cache; prints its folder, frame count and size. 0, or 2 naming the problem."""
    from tpnet.core.contract import ContractError, load_manifest, load_spec
    from tpnet.data.preprocessed import CacheError, default_cache_root, ensure_preprocessed

    root = Path(root)
    try:
        spec = load_spec(root)
        labelled = [r for r in load_manifest(root) if r.mask]
        if not labelled:
            return _fail(f"{root / 'manifest.csv'}: no row has a mask; training reads labelled frames only")
        if spacing_mm is None:
            spacing_mm = _planned_spacing(spec, labelled)
        if spacing_mm <= 0:
            return _fail(f"--spacing-mm must be positive, got {spacing_mm}")
        frames = ensure_preprocessed(spec, labelled, spacing_mm, cache_dir or default_cache_root(), workers)
    except (ContractError, CacheError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(
        f"preprocessed cache {frames.folder}: {len(frames)} frames at {spacing_mm:.4f} mm/px, "
        f"{frames.size_bytes / 2**20:.1f} MiB"
    )
    return 0


def _planned_spacing(spec, labelled) -> float:
    from tpnet.data.splits import split_rows
    from tpnet.planning.apply import plan_rows
    from tpnet.planning.cli import DEFAULT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, _device
    from tpnet.planning.fingerprint import dataset_fingerprint
    from tpnet.planning.plan import default_memory_budget_mb, make_plan

    splits = split_rows(labelled, DEFAULT_SEED, DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION)
    device_type, total_mb = _device()
    plan = make_plan(
        dataset_fingerprint(spec, plan_rows(splits)),
        memory_budget_mb=default_memory_budget_mb(device_type, total_mb),
        device_type=device_type,
    )
    return float(plan.value("spacing_mm"))


def _fail(message: str) -> int:
    print(f"tpnet-data preprocess: {message}", file=sys.stderr)
    return 2
