"""``tpnet-data plan ROOT [--out JSON]``: the plan tpnet-train would make for a dataset, as a table (and JSON);
``tpnet-data preprocess ROOT [--spacing-mm S]``: tpnet-train's preprocessed frame cache, built ahead of time (e.g.
on a cluster's login node, or once for every fold of a cross-validation; without ``--spacing-mm`` at the plan's
spacing, as tpnet-train plans it with its defaults).

The test split is left out as tpnet-train leaves it out with its defaults (seed 0, data.test_fraction 0.15, or
the manifest's split column); the memory budget is the default for this machine's device (CUDA when available).
"""

from __future__ import annotations

import sys
from pathlib import Path

# tpnet-train's defaults (train.yaml seed, data/synthetic.yaml val_fraction and test_fraction).
DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15


def main_plan(root: Path, out: Path | None = None) -> int:
    """Print the plan for the dataset at ``root`` (and write it as JSON to ``out``); 0, or 2 with one line naming
    the file when the dataset cannot be planned."""
    from tpnet.core.atomic import atomic_write_text
    from tpnet.core.contract import ContractError, load_manifest, load_spec
    from tpnet.data.splits import split_rows
    from tpnet.planning.apply import plan_rows
    from tpnet.planning.fingerprint import dataset_fingerprint
    from tpnet.planning.plan import make_plan

    root = Path(root)
    try:
        spec = load_spec(root)
        rows = load_manifest(root)
        if out is not None and _is_input_file(Path(out), root, rows):
            return _fail(f"--out {out} is a file of the dataset; choose another path")
        labelled = [r for r in rows if r.mask]
        if not labelled:
            return _fail(f"{root / 'manifest.csv'}: no row has a mask; a plan needs labelled frames")
        splits = split_rows(labelled, DEFAULT_SEED, DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION)
        fingerprint = dataset_fingerprint(spec, plan_rows(splits))
    except (ContractError, ValueError, OSError) as exc:  # FingerprintError and FrameReadError are ValueErrors
        return _fail(str(exc))
    device_type, total_mb = _device()
    from tpnet.planning.plan import default_memory_budget_mb

    plan = make_plan(
        fingerprint, memory_budget_mb=default_memory_budget_mb(device_type, total_mb), device_type=device_type
    )
    print(plan.describe())
    if out is not None:
        atomic_write_text(Path(out), plan.to_json())
        print(f"wrote {out}")
    return 0


def _is_input_file(out: Path, root: Path, rows) -> bool:
    inputs = {root / "dataset.yaml", root / "manifest.csv"}
    for row in rows:
        inputs.update(root / cell for cell in (row.bmode, row.elasto, row.mask) if cell)
    target = out.expanduser().resolve()
    return any(target == p.resolve() for p in inputs)


def _device() -> tuple[str, float | None]:
    """("cuda", total MB) when a GPU is visible (as trainer.device=auto picks it), else ("cpu", None)."""
    try:
        import torch
    except ImportError:
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_properties(0).total_memory / 2**20
    return "cpu", None


def _fail(message: str) -> int:
    print(f"tpnet-data plan: {message}", file=sys.stderr)
    return 2


def main_preprocess(root: Path, spacing_mm: float | None, cache_dir: Path | None, workers: int | None) -> int:
    """Build (or find) the cache; prints its folder, frame count and size. 0, or 2 naming the problem."""
    from tpnet.core.contract import ContractError, load_manifest, load_spec
    from tpnet.data.preprocessed import CacheError, default_cache_root, ensure_preprocessed

    root = Path(root)
    try:
        spec = load_spec(root)
        labelled = [r for r in load_manifest(root) if r.mask]
        if not labelled:
            return _fail_preprocess(
                f"{root / 'manifest.csv'}: no row has a mask; training reads labelled frames only"
            )
        if spacing_mm is None:
            spacing_mm = _planned_spacing(spec, labelled)
        if spacing_mm <= 0:
            return _fail_preprocess(f"--spacing-mm must be positive, got {spacing_mm}")
        frames = ensure_preprocessed(spec, labelled, spacing_mm, cache_dir or default_cache_root(), workers)
    except (ContractError, CacheError, ValueError, OSError) as exc:
        return _fail_preprocess(str(exc))
    print(
        f"preprocessed cache {frames.folder}: {len(frames)} frames at {spacing_mm:.4f} mm/px, "
        f"{frames.size_bytes / 2**20:.1f} MiB"
    )
    return 0


def _planned_spacing(spec, labelled) -> float:
    """The spacing tpnet-train would plan with its defaults (the planner of ``main_plan``)."""
    from tpnet.data.splits import split_rows
    from tpnet.planning.apply import plan_rows
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


def _fail_preprocess(message: str) -> int:
    print(f"tpnet-data preprocess: {message}", file=sys.stderr)
    return 2
