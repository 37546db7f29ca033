"""``tpnet-cv``: the cross-validation summary of a sweep folder, and the comparison of configurations.

    tpnet-cv summarize SWEEP_DIR            cv_summary.json / .md from the folds' out-of-fold records (a sweep
                                            run under SLURM, or interrupted: the same summary as at sweep end)
    tpnet-cv compare SWEEP_DIR [SWEEP_DIR ...] [--metric det_f1] [--out compare.json]
                                            rank configurations by a pooled out-of-fold metric, say which to use

Exit codes: 0 done, 2 a folder that cannot be summarised or compared (one line naming it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "tpnet-cv"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Cross-validation summaries and comparisons.")
    commands = parser.add_subparsers(dest="command", required=True)
    summarize = commands.add_parser(
        "summarize", help="write cv_summary.json/.md into a sweep folder (and finish its MLflow parent run)"
    )
    summarize.add_argument("sweep_dir", type=Path)
    summarize.add_argument(
        "--n-boot", type=int, default=1000, help="subject-bootstrap resamples (default 1000)"
    )
    summarize.add_argument("--seed", type=int, default=0)
    summarize.add_argument(
        "--no-mlflow", action="store_true", help="leave the sweep's MLflow parent run alone"
    )
    compare = commands.add_parser("compare", help="rank configurations by a pooled out-of-fold metric")
    compare.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP_DIR")
    compare.add_argument(
        "--metric", default=None, help="pooled metric (default det_f1 with TrP classes, else dice_mean)"
    )
    compare.add_argument("--n-boot", type=int, default=1000)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--out", type=Path, default=None, help="write the comparison as JSON")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.n_boot < 1:
        return _fail("--n-boot must be at least 1")
    # A wrong folder fails in a fraction of a second, before numpy and scipy are imported.
    for folder in [args.sweep_dir] if args.command == "summarize" else args.sweep_dirs:
        problem = _folder_problem(folder, need_records=args.command == "compare")
        if problem:
            return _fail(f"{folder}: {problem}")
    from tpnet.evaluation.cross_validation import CrossValidationError

    try:
        if args.command == "summarize":
            return _summarize(args)
        return _compare(args)
    except CrossValidationError as exc:
        return _fail(str(exc))


def _folder_problem(folder: Path, need_records: bool) -> str | None:
    if not folder.is_dir():
        return "no such folder"
    if next(folder.glob("**/oof_records.json"), None) is not None:
        return None
    if need_records:
        return "no cross-validation fold with out-of-fold records (oof_records.json) in it"
    if next(folder.glob("**/.hydra/overrides.yaml"), None) is None:
        return "not a sweep folder (no job folder with .hydra/overrides.yaml or oof_records.json in it)"
    return None


def _summarize(args: argparse.Namespace) -> int:
    from tpnet.evaluation.cross_validation import OOF_FILE, CrossValidationError, record_summary

    summary, lines = record_summary(
        args.sweep_dir, n_boot=args.n_boot, seed=args.seed, log_mlflow=not args.no_mlflow
    )
    print("\n".join(lines))
    if not any(config["pooled"] for config in summary["configurations"]):
        raise CrossValidationError(f"{args.sweep_dir}: no fold has finished (no {OOF_FILE} in it yet)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tpnet.evaluation.cross_validation import (
        CrossValidationError,
        compare_configurations,
        compare_table,
        configurations,
        write_json,
    )

    groups = []
    for sweep_dir in args.sweep_dirs:
        found = [g for g in configurations(sweep_dir) if g.records]
        if not found:
            raise CrossValidationError(
                f"{sweep_dir}: no cross-validation fold with out-of-fold records in it"
            )
        groups += found
    result = compare_configurations(groups, metric=args.metric, n_boot=args.n_boot, seed=args.seed)
    print(compare_table(result))
    if args.out is not None:
        if args.out.resolve() in {p.resolve() for p in args.sweep_dirs}:
            return _fail(f"{args.out}: --out is a sweep folder; give a file name")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"comparison: {args.out}")
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
