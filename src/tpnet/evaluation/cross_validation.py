"""Cross-validation that ends in one answer (nnU-Net's habit): out-of-fold records, the sweep's summary, and the
comparison of configurations on their pooled out-of-fold metrics.

A k-fold sweep (``tpnet-train -m cv.fold=0,1,2``) leaves one run folder per fold. Each fold writes
``oof_records.json``: the per-frame counts (``FrameRecord``) of its best checkpoint on its validation subjects,
the subjects no other fold predicts. The summary reads them back, checks that every non-test subject was
predicted exactly once, and pools all frames into one set of metrics with subject-bootstrap CIs; folds that
crashed are reported, not fatal. ``compare`` ranks configurations (sweeps) by a pooled metric, with a paired
subject bootstrap of the differences when they predicted the same subjects.

No torch here: ``tpnet-cv`` reads JSON files only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tpnet.core.atomic import atomic_write_text
from tpnet.core.contract import ClassRoles, parse_roles, trp_class_indices
from tpnet.evaluation.metrics import FrameRecord, aggregate, bootstrap_ci, bootstrap_samples, json_safe

OOF_FILE = "oof_records.json"
OOF_FORMAT = "tpnet-oof-records/1"
SUMMARY_FILE = "cv_summary.json"
SUMMARY_MD = "cv_summary.md"
SUMMARY_FORMAT = "tpnet-cv-summary/1"
COMPARE_FORMAT = "tpnet-cv-compare/1"
PARENT_RUN_FILE = "cv_parent_run.json"  # the sweep's MLflow parent run: id, tracking URI, experiment
PLAN_FILE = "plan.json"
# Metrics where lower is better; every other metric is ranked higher-is-better.
LOWER_IS_BETTER = frozenset({"loc_err_mm", "fp_per_frame"})
# Metrics shown in the tables (when present).
SHOWN_METRICS: tuple[str, ...] = (
    "det_f1",
    "det_precision",
    "det_recall",
    "dice_mean",
    "loc_err_mm",
    "frame_auc",
)
OPTIMISM_NOTE = (
    "post-processing (threshold, minimum area) was calibrated on each fold's own validation subjects, the "
    "subjects it predicts out of fold: the pooled OOF figures are mildly optimistic; the test split is the "
    "unbiased estimate"
)


class CrossValidationError(ValueError):
    """A folder that cannot be summarised or compared; the message names it."""


# ----------------------------------------------------------------------------------------------- records
def record_to_dict(record: FrameRecord) -> dict[str, Any]:
    """One FrameRecord as JSON values (arrays and tuples as lists, NaN as null)."""
    return {f.name: json_safe(getattr(record, f.name)) for f in dataclasses.fields(FrameRecord)}


def record_from_dict(raw: dict[str, Any]) -> FrameRecord:
    """The FrameRecord of ``record_to_dict``; a field the file lacks takes its default (a record written before
    the field existed), a field without a default is an error."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(FrameRecord):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"frame record {raw.get('sample_id', '?')!r} lacks {f.name!r}")
            continue
        values[f.name] = _typed(raw[f.name], str(f.type))
    return FrameRecord(**values)


def _typed(value: Any, annotation: str) -> Any:
    """A JSON value back as the field's type (the annotations are strings: ``from __future__ import annotations``)."""
    if "ndarray" in annotation:
        return (
            None if value is None else np.asarray(value, dtype=np.float64 if "None" in annotation else None)
        )
    if annotation.startswith("tuple"):
        return tuple(_number(v) for v in value)
    if annotation.startswith("list"):
        return [_number(v) for v in value]
    if annotation == "float":
        return _number(value)
    return value


def _number(value: Any) -> Any:
    return math.nan if value is None else value


def oof_document(
    records: Sequence[FrameRecord], classes: Sequence[str], *, fold: int, folds: int, checkpoint: str,
    postprocess: dict[str, float], calibrated_on_these_subjects: bool, non_test_subjects: Iterable[str],
    overrides: Sequence[str] = (), mlflow_run_id: str | None = None, roles: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a fold's ``oof_records.json`` holds: its validation frames' records and how they were predicted
    (``roles``: the dataset's class roles, ``ClassRoles.to_dict()``; absent in older files: the naming rule)."""
    return {
        "format": OOF_FORMAT,
        "fold": int(fold),
        "folds": int(folds),
        "classes": list(classes),
        **({"roles": dict(roles)} if roles is not None else {}),
        "checkpoint": str(checkpoint),
        "postprocess": dict(postprocess),
        # True: the threshold/min area were chosen on these very subjects (OOF mildly optimistic).
        "calibrated_on_these_subjects": bool(calibrated_on_these_subjects),
        "overrides": list(overrides),
        "mlflow_run_id": mlflow_run_id,
        "subjects": sorted({r.subject_id for r in records}),
        "non_test_subjects": sorted(set(non_test_subjects)),
        "metrics": json_safe(aggregate(records, classes)) if records else {},
        "records": [record_to_dict(r) for r in records],
    }


def write_json(path: Path, document: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(json_safe(document), indent=1, allow_nan=False) + "\n")
    return path


def load_oof(path: Path) -> tuple[dict[str, Any], list[FrameRecord]]:
    """A fold's ``oof_records.json``: its header (everything but the records) and its FrameRecords."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CrossValidationError(f"{path}: cannot read out-of-fold records ({exc})") from None
    if document.get("format") != OOF_FORMAT:
        raise CrossValidationError(
            f"{path}: not a tpnet out-of-fold file (format {document.get('format')!r})"
        )
    records = [record_from_dict(r) for r in document.pop("records")]
    return document, records


# ----------------------------------------------------------------------------------------------- the sweep
@dataclass
class FoldJob:
    """One job folder of a sweep: its fold, the overrides that define its configuration, and its files."""

    run_dir: Path
    fold: int | None
    folds: int | None
    overrides: list[str]  # the job's task overrides, cv.fold=... left out
    oof: dict[str, Any] | None = (
        None  # oof_records.json header; None: the fold left none (crashed, unfinished)
    )
    records: list[FrameRecord] = field(default_factory=list)
    problem: str | None = None


def find_jobs(sweep_dir: Path) -> list[FoldJob]:
    """Every job folder under ``sweep_dir`` (Hydra's ``.hydra/overrides.yaml``, or a fold's oof_records.json),
    in job order. Jobs without cv.fold are returned too (``fold`` None): callers decide."""
    sweep_dir = Path(sweep_dir)
    run_dirs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    run_dirs |= {p.parent for p in sweep_dir.glob(f"**/{OOF_FILE}")}
    jobs = [_read_job(run_dir) for run_dir in run_dirs if run_dir != sweep_dir]
    return sorted(jobs, key=lambda job: (_job_number(job.run_dir, sweep_dir), str(job.run_dir)))


def _job_number(run_dir: Path, sweep_dir: Path) -> float:
    name = run_dir.relative_to(sweep_dir).parts[0]
    return float(name) if name.isdigit() else math.inf


def _read_job(run_dir: Path) -> FoldJob:
    overrides = _hydra_overrides(run_dir)
    fold, folds = _fold_of(run_dir, overrides)
    job = FoldJob(run_dir, fold, folds, [o for o in overrides or [] if not _is_fold_override(o)])
    oof_path = run_dir / OOF_FILE
    if oof_path.is_file():
        try:
            job.oof, job.records = load_oof(oof_path)
        except (CrossValidationError, ValueError, TypeError, KeyError) as exc:
            job.problem = f"unreadable {OOF_FILE}: {exc}"
            return job
        job.fold, job.folds = int(job.oof["fold"]), int(job.oof["folds"])
        if overrides is None:
            job.overrides = [o for o in job.oof.get("overrides", []) if not _is_fold_override(o)]
    elif job.fold is not None:
        job.problem = (
            f"no {OOF_FILE}: the job crashed or has not finished (see {run_dir}/train.log or cli.log)"
        )
    return job


def _hydra_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]  # type: ignore[union-attr]


def _is_fold_override(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") == "cv.fold"


def _fold_of(run_dir: Path, overrides: list[str] | None) -> tuple[int | None, int | None]:
    """cv.fold and cv.folds of a job from its composed config (``.hydra/config.yaml``, else its config.yaml)."""
    from omegaconf import OmegaConf

    for path in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if path.is_file():
            cfg = OmegaConf.load(path)
            fold = OmegaConf.select(cfg, "cv.fold", default=None)
            folds = OmegaConf.select(cfg, "cv.folds", default=None)
            return (None if fold is None else int(fold)), (None if folds is None else int(folds))
    return None, None


@dataclass
class Configuration:
    """The folds of one configuration: jobs of a sweep that differ only in cv.fold."""

    name: str
    overrides: list[str]
    jobs: list[FoldJob]

    @property
    def records(self) -> list[FrameRecord]:
        return [r for job in self.jobs for r in job.records]


def configurations(sweep_dir: Path, jobs: Sequence[FoldJob] | None = None) -> list[Configuration]:
    """The sweep's cross-validation jobs grouped by configuration (every override but cv.fold); named by the
    overrides that vary between them (one configuration: by the sweep folder)."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir) if jobs is None else jobs
    groups: dict[tuple[str, ...], list[FoldJob]] = {}
    for job in jobs:
        if job.fold is not None:
            groups.setdefault(tuple(job.overrides), []).append(job)
    if not groups:
        return []
    common = set.intersection(*(set(key) for key in groups))
    out = []
    for key, group in groups.items():
        varying = [o for o in key if o not in common]
        name = f"{sweep_dir}" + (f" [{' '.join(varying)}]" if varying else "")
        out.append(Configuration(name, list(key), sorted(group, key=lambda job: job.fold or 0)))
    return out


def summarise_sweep(sweep_dir: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The cross-validation summary of ``sweep_dir`` (what cv_summary.json holds); ``CrossValidationError`` when
    the folder holds no cross-validation job."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise CrossValidationError(f"{sweep_dir}: no such folder")
    jobs = find_jobs(sweep_dir)
    groups = configurations(sweep_dir, jobs)
    if not groups:
        raise CrossValidationError(
            f"{sweep_dir}: no cross-validation fold in it (no job with cv.fold set: run "
            "tpnet-train -m cv.fold=0,1,2,3,4 to make one)"
        )
    return {
        "format": SUMMARY_FORMAT,
        "sweep_dir": str(sweep_dir),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "plan": check_plans(sweep_dir, [job for group in groups for job in group.jobs]),
        "configurations": [_summarise_configuration(group, n_boot, seed) for group in groups],
    }


def _summarise_configuration(group: Configuration, n_boot: int, seed: int) -> dict[str, Any]:
    done = [job for job in group.jobs if job.oof is not None]
    folds = max((job.folds or 0) for job in group.jobs)
    present = {job.fold for job in done}
    fold_rows = [_fold_row(job) for job in group.jobs]
    missing = sorted(set(range(folds)) - present)
    classes = _common_classes(done)
    coverage = _coverage(done, missing)
    out: dict[str, Any] = {
        "name": group.name,
        "overrides": group.overrides,
        "n_folds": folds,
        "folds": fold_rows,
        "missing_folds": missing,
        # Jobs of this sweep that left no out-of-fold records (the rest of missing_folds were never launched).
        "crashed_folds": sorted(j.fold for j in group.jobs if j.oof is None and j.fold is not None),
        "missing_why": {
            str(fold): next(
                (j.problem for j in group.jobs if j.fold == fold and j.problem), "not in this sweep"
            )
            for fold in missing
        },
        "classes": classes,
        "coverage": coverage,
        "complete": not missing and coverage["exactly_once"],
        "notes": [],
    }
    records = [r for job in done for r in job.records]
    if records:
        pooled: dict[str, Any] = dict(aggregate(records, classes))
        ci = bootstrap_ci(records, classes, n_boot=n_boot, seed=seed)
        pooled["ci95"] = {key: [lo, hi] for key, (lo, hi) in ci.items()}
        pooled["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": "subject"}
        out["pooled"] = pooled
        out["default_metric"] = default_metric(classes, _common_roles(done, classes))
    else:
        out["pooled"] = None
        out["notes"].append("no fold left out-of-fold records: nothing to pool")
    if any(job.oof.get("calibrated_on_these_subjects") for job in done):  # type: ignore[union-attr]
        out["notes"].append(OPTIMISM_NOTE)
    if missing:
        out["notes"].append(
            f"fold(s) {', '.join(map(str, missing))} missing: the pooled metrics cover "
            f"{coverage['n_predicted']} of {coverage['n_non_test_subjects']} non-test subjects"
        )
    if coverage["duplicated_subjects"]:
        out["notes"].append(
            "subject(s) predicted by more than one fold (the folds were not made from one split): "
            + ", ".join(coverage["duplicated_subjects"][:10])
        )
    return out


def _fold_row(job: FoldJob) -> dict[str, Any]:
    row: dict[str, Any] = {
        "fold": job.fold,
        "run_dir": str(job.run_dir),
        "status": "ok" if job.oof else "missing",
    }
    if job.problem:
        row["why"] = job.problem
    if job.oof is not None:
        row.update(
            n_frames=len(job.records),
            subjects=job.oof["subjects"],
            postprocess=job.oof["postprocess"],
            calibrated_on_these_subjects=job.oof["calibrated_on_these_subjects"],
            mlflow_run_id=job.oof.get("mlflow_run_id"),
            oof=job.oof["metrics"],
        )
    test = job.run_dir / "metrics.json"
    if test.is_file():
        try:
            report = json.loads(test.read_text())
            row["test"] = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
            row["test"]["ci95"] = report.get("ci95", {})
        except (OSError, json.JSONDecodeError):
            row["test"] = None
    return row


def _common_roles(done: Sequence[FoldJob], classes: Sequence[str]) -> ClassRoles | None:
    """The folds' class roles (the first fold's that records them; None: the naming rule)."""
    for job in done:
        raw = (job.oof or {}).get("roles")
        if raw is not None:
            return parse_roles(raw, classes, f"{job.run_dir}/{OOF_FILE}")
    return None


def _common_classes(done: Sequence[FoldJob]) -> list[str]:
    classes = [list(job.oof["classes"]) for job in done]  # type: ignore[index]
    for job, names in zip(done, classes, strict=True):
        if names != classes[0]:
            raise CrossValidationError(
                f"{job.run_dir}: classes {names} differ from {classes[0]} of {done[0].run_dir}: not one dataset"
            )
    return classes[0] if classes else []


def _coverage(done: Sequence[FoldJob], missing_folds: Sequence[int]) -> dict[str, Any]:
    """Every non-test subject predicted exactly once (and every frame at most once)?"""
    non_test = sorted({s for job in done for s in job.oof["non_test_subjects"]})  # type: ignore[index]
    times: dict[str, int] = {}
    for job in done:
        for subject in job.oof["subjects"]:  # type: ignore[index]
            times[subject] = times.get(subject, 0) + 1
    frames: dict[str, int] = {}
    for job in done:
        for record in job.records:
            frames[record.sample_id] = frames.get(record.sample_id, 0) + 1
    unpredicted = [s for s in non_test if s not in times]
    duplicated = sorted(s for s, n in times.items() if n > 1)
    return {
        "n_non_test_subjects": len(non_test),
        "n_predicted": len(times),
        "exactly_once": not unpredicted and not duplicated and not missing_folds and bool(non_test),
        "unpredicted_subjects": unpredicted,
        "duplicated_subjects": duplicated,
        "duplicated_frames": sorted(s for s, n in frames.items() if n > 1),
        "not_non_test": sorted(s for s in times if s not in set(non_test)),
    }


def check_plans(sweep_dir: Path, jobs: Sequence[FoldJob]) -> dict[str, Any]:
    """Are all folds' plan.json equal? ``differences``: the dotted keys that differ (with the folds' values)."""
    plans = {}
    for job in jobs:
        path = job.run_dir / PLAN_FILE
        if path.is_file():
            plans[str(job.run_dir)] = json.loads(path.read_text())
    if not plans:
        return {"equal": None, "n_plans": 0, "differences": [], "path": None}
    flat = {run: _flatten(plan) for run, plan in plans.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values())))
    differences = []
    for key in keys:
        values = {run: f.get(key) for run, f in flat.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            differences.append({"key": key, "values": values})
    return {
        "equal": not differences,
        "n_plans": len(plans),
        "differences": differences,
        "path": str(sweep_dir / PLAN_FILE) if not differences else None,
        "values": {k: v.get("value") for k, v in next(iter(plans.values())).get("values", {}).items()},
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """cv_summary.json, cv_summary.md and (when every fold's plan is equal) the sweep's plan.json."""
    sweep_dir = Path(sweep_dir)
    written = [write_json(sweep_dir / SUMMARY_FILE, summary)]
    atomic_write_text(sweep_dir / SUMMARY_MD, summary_markdown(summary))
    written.append(sweep_dir / SUMMARY_MD)
    if summary["plan"]["equal"]:
        first = next(job.run_dir for job in find_jobs(sweep_dir) if (job.run_dir / PLAN_FILE).is_file())
        atomic_write_text(sweep_dir / PLAN_FILE, (first / PLAN_FILE).read_text())
        written.append(sweep_dir / PLAN_FILE)
    return written


def plan_problem(summary: dict[str, Any]) -> str | None:
    """One sentence naming the planned keys that differ between folds, or None when the plans agree."""
    differences = summary["plan"]["differences"]
    if not differences:
        return None
    keys = [d["key"] for d in differences]
    return (
        f"the folds' plans differ in {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}: not one plan per "
        "dataset (set the differing keys explicitly, e.g. plan.memory_budget_mb on mixed hardware); no sweep "
        "plan.json written"
    )


def record_summary(
    sweep_dir: Path, n_boot: int = 1000, seed: int = 0, log_mlflow: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Summarise ``sweep_dir``, write the files, update its MLflow parent run; returns the summary and the lines
    to print. The one path behind the sweep's end (Hydra callback) and ``tpnet-cv summarize``."""
    summary = summarise_sweep(sweep_dir, n_boot=n_boot, seed=seed)
    written = write_summary(Path(sweep_dir), summary)
    lines = console_table(summary).splitlines()
    problem = plan_problem(summary)
    if problem:
        lines.append(f"WARNING: {problem}")
    lines.append(f"cross-validation summary: {written[0]} (table: {written[1]})")
    if log_mlflow:
        info = parent_run_info(Path(sweep_dir))
        lost = log_summary_to_parent(Path(sweep_dir), summary, written)
        if info is not None:
            lines.append(lost or f"MLflow parent run {info['run_id']} at {info['tracking_uri']}")
    return summary, lines


# ----------------------------------------------------------------------------------------------- reports
def default_metric(classes: Sequence[str], roles: ClassRoles | None = None) -> str:
    """det_f1 when the dataset has trigger-point classes (by ``roles``; None: the naming rule), else the mean
    foreground Dice."""
    return "det_f1" if trp_class_indices(classes, roles) else "dice_mean"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The human-readable summary: per configuration, a per-fold table and the pooled line."""
    lines = [f"# Cross-validation summary: {summary['sweep_dir']}", ""]
    problem = plan_problem(summary)
    plan = summary["plan"]
    if problem:
        lines += [f"**Plan: {problem}**", ""]
    elif plan["equal"]:
        shown = ", ".join(f"{k}={v}" for k, v in plan.get("values", {}).items())
        lines += [f"One plan for all {plan['n_plans']} folds (plan.json): {shown}", ""]
    for config in summary["configurations"]:
        lines += _configuration_markdown(config)
    return "\n".join(lines) + "\n"


def _configuration_markdown(config: dict[str, Any]) -> list[str]:
    metrics = [m for m in SHOWN_METRICS if config["pooled"] and m in config["pooled"]]
    lines = [f"## {config['name']}", ""]
    if config["overrides"]:
        lines += [f"overrides: `{' '.join(config['overrides'])}`", ""]
    lines += ["| fold | frames | subjects | " + " | ".join(f"OOF {m}" for m in metrics) + " | test " + _first(metrics)
              + " |", "|" + "---|" * (4 + len(metrics))]  # fmt: skip
    for row in config["folds"]:
        if row["status"] != "ok":
            lines.append(f"| {row['fold']} | missing: {row.get('why', '')} |")
            continue
        test = (row.get("test") or {}).get(_first(metrics))
        cells = [str(row["fold"]), str(row["n_frames"]), str(len(row["subjects"]))]
        cells += [_show(row["oof"].get(m)) for m in metrics] + [_show(test)]
        lines.append("| " + " | ".join(cells) + " |")
    pooled = config["pooled"]
    if pooled:
        cells = ["pooled", str(pooled["n_frames"]), str(pooled["n_subjects"])]
        cells += [f"{_show(pooled.get(m))} [{_ci(pooled['ci95'].get(m))}]" for m in metrics] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    coverage = config["coverage"]
    lines += [
        "",
        f"{coverage['n_predicted']} of {coverage['n_non_test_subjects']} non-test subjects predicted out of fold"
        + (
            ", each exactly once."
            if coverage["exactly_once"]
            else "; NOT each exactly once (see cv_summary.json)."
        ),
    ]
    lines += [f"- {note}" for note in config["notes"]]
    lines.append("")
    return lines


def _first(metrics: Sequence[str]) -> str:
    return metrics[0] if metrics else "det_f1"


def console_table(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: per configuration, the pooled default metric with its CI and coverage."""
    lines = []
    for config in summary["configurations"]:
        pooled, metric = config["pooled"], config.get("default_metric", "det_f1")
        shown = [metric] if metric == "dice_mean" else [metric, "dice_mean"]
        figure = (
            "pooled OOF "
            + ", ".join(f"{m} {_show(pooled.get(m))} [95% CI {_ci(pooled['ci95'].get(m))}]" for m in shown)
            + f" over {pooled['n_subjects']} subjects, {pooled['n_frames']} frames"
            if pooled
            else "no out-of-fold records"
        )
        folds = " ".join(
            f"{row['fold']}:{_show(row['oof'].get(metric))}"
            if row["status"] == "ok"
            else f"{row['fold']}:missing"
            for row in config["folds"]
        )
        lines.append(f"{config['name']}: {figure}; folds {folds}")
        if not config["complete"]:
            lines.append(f"  incomplete: missing folds {config['missing_folds'] or 'none'}, coverage "
                         f"{config['coverage']['n_predicted']}/{config['coverage']['n_non_test_subjects']}")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- compare
def compare_configurations(
    groups: Sequence[Configuration], metric: str | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Rank configurations by a pooled out-of-fold metric (``find_best_configuration`` in spirit). The best is
    compared with each other one by a subject bootstrap of the difference: paired (the same subject draws for
    both) when both predicted the same subjects, else unpaired (independent draws)."""
    usable = [g for g in groups if g.records]
    if not usable:
        raise CrossValidationError("no configuration has out-of-fold records to compare")
    classes = _common_classes([job for g in usable for job in g.jobs if job.oof is not None])
    notes = []
    if metric is None:
        metric = default_metric(classes, _common_roles([j for g in usable for j in g.jobs if j.oof], classes))
        if all(math.isnan(aggregate(g.records, classes).get(metric, math.nan)) for g in usable):
            # Like trainer.monitor's fallback: rank by something these frames can measure.
            notes.append(f"{metric} is undefined in every configuration (no true trigger point out of fold): "
                         "ranked by dice_mean")  # fmt: skip
            metric = "dice_mean"
    entries = []
    for group in usable:
        records = group.records
        point = aggregate(records, classes)
        if metric not in point:
            known = ", ".join(sorted(k for k in point if not k.startswith("n_")))
            raise CrossValidationError(f"unknown metric {metric!r}; pooled metrics are: {known}")
        samples = bootstrap_samples(records, classes, n_boot=n_boot, seed=seed)[metric]
        entries.append({
            "name": group.name, "value": float(point[metric]), "ci95": _percentile_ci(samples),
            "n_subjects": int(point["n_subjects"]), "n_frames": int(point["n_frames"]),
            "complete": _complete(group), "_samples": samples, "_subjects": {r.subject_id for r in records},
            "_records": records,
        })  # fmt: skip
    lower = metric in LOWER_IS_BETTER
    entries.sort(key=lambda e: (math.isnan(e["value"]), e["value"] if lower else -e["value"]))
    best = entries[0]
    for entry in entries[1:]:
        entry["vs_best"] = _difference(best, entry, classes, metric, n_boot, seed)
    result = {
        "format": COMPARE_FORMAT,
        "metric": metric,
        "higher_is_better": not lower,
        "n_boot": n_boot,
        "seed": seed,
        "ranking": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries],
        "best": best["name"],
        "notes": notes,
    }
    result["verdict"] = _verdict(result)
    return result


def _complete(group: Configuration) -> bool:
    folds = max((job.folds or 0) for job in group.jobs)
    done = [job for job in group.jobs if job.oof is not None]
    return {job.fold for job in done} == set(range(folds)) and _coverage(done, [])["exactly_once"]


def _difference(best: dict, other: dict, classes, metric: str, n_boot: int, seed: int) -> dict[str, Any]:
    """best - other over bootstrap resamples of subjects. Paired: the same seed draws the same subjects for both
    (bootstrap_samples resamples the sorted unique subjects), so each resample compares like with like."""
    paired = best["_subjects"] == other["_subjects"]
    if paired:
        other_samples = other["_samples"]
    else:  # independent draws for the other configuration
        other_samples = bootstrap_samples(other["_records"], classes, n_boot=n_boot, seed=seed + 1)[metric]
    diff = best["_samples"] - other_samples
    lo, hi = _percentile_ci(diff)
    within = lo is None or (lo <= 0.0 <= hi)
    return {
        "difference": best["value"] - other["value"],
        "ci95": [lo, hi],
        "paired": paired,
        "within_noise": bool(within),
        "note": "paired subject bootstrap (same subjects)"
        if paired
        else "unpaired: the configurations predicted different subjects (independent bootstraps)",
    }


def _percentile_ci(values: np.ndarray) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [None, None]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def _verdict(result: dict[str, Any]) -> str:
    ranking, metric = result["ranking"], result["metric"]
    best = ranking[0]
    line = f"use {best['name']} ({metric} {_show(best['value'])} [95% CI {_ci(best['ci95'])}])"
    if len(ranking) == 1:
        return line + "; nothing to compare it with"
    runner_up = ranking[1]
    vs = runner_up["vs_best"]
    kind = "paired" if vs["paired"] else "unpaired"
    if vs["within_noise"]:
        line += (f"; the difference to {runner_up['name']} ({_signed(vs['difference'])}, {kind} 95% CI "
                 f"[{_ci(vs['ci95'])}]) is within noise: either will do, prefer the simpler or cheaper")  # fmt: skip
    else:
        line += (f"; better than {runner_up['name']} by {_signed(vs['difference'])} ({kind} 95% CI "
                 f"[{_ci(vs['ci95'])}], excludes 0)")  # fmt: skip
    incomplete = [e["name"] for e in ranking if not e["complete"]]
    if incomplete:
        line += f"; incomplete cross-validation (missing folds or subjects): {', '.join(incomplete)}"
    return line


def compare_table(result: dict[str, Any]) -> str:
    metric = result["metric"]
    rows = [("rank", "configuration", metric, "95% CI", "vs best [95% CI]", "")]
    for rank, entry in enumerate(result["ranking"], 1):
        vs = entry.get("vs_best")
        diff = "best" if vs is None else f"{_signed(vs['difference'])} [{_ci(vs['ci95'])}]"
        note = (
            ""
            if vs is None
            else ("paired" if vs["paired"] else "unpaired")
            + (", within noise" if vs["within_noise"] else ", significant")
        )
        rows.append((str(rank), entry["name"], _show(entry["value"]), _ci(entry["ci95"]), diff, note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows]
    notes = "".join(f"note: {note}\n" for note in result.get("notes", []))
    return "\n".join(line.rstrip() for line in lines) + "\n" + notes + result["verdict"]


# ----------------------------------------------------------------------------------------------- MLflow
def parent_run_info(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's MLflow parent run (``cv_parent_run.json``: run_id, tracking_uri, experiment_name), if any."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if info.get("run_id") else None


def log_summary_to_parent(sweep_dir: Path, summary: dict[str, Any], written: Sequence[Path]) -> str | None:
    """Pooled OOF metrics, tags and the summary files into the sweep's parent run, which is then ended (FAILED
    when a fold's job left no out-of-fold records). Never fatal: returns what did not reach MLflow, or None."""
    from tpnet.tracking.mlflow_logger import MlflowTracker

    info = parent_run_info(sweep_dir)
    if info is None:
        return None
    tracker = MlflowTracker(info["tracking_uri"], info.get("experiment_name", "tpnet"), run_id=info["run_id"])
    tracker.start()
    several = len(summary["configurations"]) > 1
    tags: dict[str, Any] = {"cv.summary": str(Path(sweep_dir) / SUMMARY_FILE)}
    for index, config in enumerate(summary["configurations"]):
        prefix = f"config{index}/oof/" if several else "oof/"
        if several:
            tags[f"config{index}"] = config["name"]
        tags[f"{prefix.rstrip('/')}.complete".replace("/", ".")] = config["complete"]
        if config["missing_folds"]:
            tags[f"{prefix}missing_folds".replace("/", ".")] = ",".join(map(str, config["missing_folds"]))
        pooled = config["pooled"] or {}
        values = {prefix + k: float(v) for k, v in pooled.items() if _is_number(v) and not k.startswith("n_")}
        for key, (lo, hi) in (pooled.get("ci95") or {}).items():
            if lo is not None and hi is not None:
                values[f"{prefix}{key}_ci95_lo"], values[f"{prefix}{key}_ci95_hi"] = float(lo), float(hi)
        tracker.log_metrics(values, step=0)
    plan = summary["plan"]
    tags["cv.plan_equal"] = plan["equal"]
    for key, value in (plan.get("values") or {}).items():
        tags[f"plan.{key}"] = value
    tracker.set_tags(tags)
    for path in written:
        tracker.log_artifact(path)
    failed = any(c["crashed_folds"] for c in summary["configurations"])
    tracker.end("FAILED" if failed else "FINISHED")
    return tracker.summary_of_losses()


# ----------------------------------------------------------------------------------------------- helpers
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _ci(interval: Sequence[float | None] | None) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return "n/a"
    return f"{_show(float(interval[0]))}, {_show(float(interval[1]))}"


def _signed(value: float) -> str:
    return "n/a" if value != value else f"{value:+.3f}"
