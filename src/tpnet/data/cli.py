"""``tpnet-data``: synthesise a dataset, check one, render sample frames, import scanner screenshots and check a
scanner profile against one (all in the base install, no torch), plan an experiment and preprocess a dataset for
training (the training extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tpnet.extras import EXIT_MISSING_EXTRA, missing_extra_message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpnet-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic B-mode + SWE dataset in the contract format")
    synth.add_argument("out", type=Path)
    synth.add_argument("--subjects", type=int, required=True)
    synth.add_argument("--frames-per-subject", type=int, required=True)
    synth.add_argument("--seed", type=int, required=True)
    synth.add_argument("--height", type=int, default=256)
    synth.add_argument("--width", type=int, default=256)
    synth.add_argument("--workers", type=int, default=1)
    synth.add_argument(
        "--appearance",
        choices=("literature", "wide", "shifted"),
        default="literature",
        help="appearance preset (docs/synthetic-data.md): literature ranges, wide (domain randomisation), "
        "or shifted (the generalisation benchmark's domain B)",
    )
    synth.add_argument(
        "--active-stiffness-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="active TrPs' stiffness ratio x F (docs/synthetic-data.md, 'Active vs latent'; 1 = no difference)",
    )
    synth.add_argument(
        "--active-echo-db",
        type=float,
        default=0.0,
        metavar="DB",
        help="active TrPs DB darker than latent ones (docs/synthetic-data.md; 0 = no difference)",
    )
    synth.add_argument(
        "--screenshots",
        action="store_true",
        help="draw the frames as scanner screenshots (colour map, colour bar, UI) with the true kPa and a profile",
    )
    synth.add_argument("--colormap", default="jet", help="screenshot colour map (jet, turbo)")
    synth.add_argument("--layout", choices=("dual", "overlay"), default="dual", help="screenshot layout")
    synth.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        metavar="Q",
        help="write screenshots as JPEG of quality Q (1-100)",
    )

    sweeps = sub.add_parser(
        "synth-sweeps",
        help="write synthetic 3-D sweeps (volume rows, contract version 2; docs/synthetic-data.md, 'Sweeps')",
    )
    sweeps.add_argument("root", type=Path)
    # None = the generator's defaults (tpnet.data.synth_sweeps), so they live in one place
    sweeps.add_argument("--subjects", type=int, default=None, help="subjects, one sweep each (default 12)")
    sweeps.add_argument("--sweeps-per-subject", type=int, default=None, help="sweeps per subject (default 1)")
    sweeps.add_argument("--slices", type=int, default=None, help="frames per sweep (default 48)")
    sweeps.add_argument("--height", type=int, default=None, help="rows per frame (default 128)")
    sweeps.add_argument("--width", type=int, default=None, help="columns per frame (default 128)")
    sweeps.add_argument("--spacing-mm", type=float, default=None, help="pixel size in mm (default 0.2)")
    sweeps.add_argument(
        "--slice-spacing-mm", type=float, default=None, help="nominal mm between slices (default 0.5)"
    )
    sweeps.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    sweeps.add_argument(
        "--jitter-mm", type=float, default=None, help="free-hand out-of-plane noise, sd in mm (default 0)"
    )
    sweeps.add_argument(
        "--drop-p", type=float, default=None, help="probability that a frame is dropped (default 0)"
    )
    sweeps.add_argument(
        "--format", dest="file_format", choices=("npy", "nifti", "nrrd", "dicom"), default=None,
        help="volume files: npy (default), nifti (.nii.gz), nrrd, dicom (multi-frame B-mode; SWE, mask .nii.gz)",
    )  # fmt: skip
    sweeps.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")

    longitudinal = sub.add_parser(
        "synth-longitudinal",
        help="write synthetic longitudinal studies: visits before and after an injection, with each trigger "
        "point's track (docs/synthetic-data.md, 'Longitudinal studies')",
    )
    longitudinal.add_argument("root", type=Path)
    # None = the generator's defaults (tpnet.data.synth_longitudinal), so they live in one place
    longitudinal.add_argument(
        "--subjects", type=int, default=None, help="subjects, one study each (default 24)"
    )
    longitudinal.add_argument(
        "--visits-min",
        type=int,
        default=None,
        help="fewest visits per subject, baseline included (default 2)",
    )
    longitudinal.add_argument(
        "--visits-max", type=int, default=None, help="most visits per subject (default 4)"
    )
    longitudinal.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    longitudinal.add_argument("--height", type=int, default=None, help="rows per frame (default 256)")
    longitudinal.add_argument("--width", type=int, default=None, help="columns per frame (default 256)")
    longitudinal.add_argument(
        "--spacing-mm", type=float, default=None, help="pixel size in mm (default 0.15)"
    )
    longitudinal.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")

    check = sub.add_parser("check", help="validate a dataset against the contract")
    check.add_argument("root", type=Path)

    render = sub.add_parser("render", help="render sample frames (B-mode | SWE | labels) to PNG")
    render.add_argument("root", type=Path)
    render.add_argument("out", type=Path)
    render.add_argument("--n", type=int, default=3)
    render.add_argument("--seed", type=int, default=0)

    screenshots = sub.add_parser(
        "import-screenshots",
        help="turn a folder of scanner screenshots into a contract dataset (B-mode, kPa)",
    )
    screenshots.add_argument(
        "input", type=Path, metavar="IN", help="folder of PNG/JPEG/BMP screenshots (nested ok)"
    )
    screenshots.add_argument("out", type=Path, metavar="OUT", help="new dataset folder (not inside IN)")
    screenshots.add_argument("--profile", type=Path, required=True, help="scanner profile YAML")
    screenshots.add_argument(
        "--labels", type=Path, default=None, metavar="DIR", help="label maps DIR/<same relative stem>.png"
    )

    check_profile = sub.add_parser(
        "profile-check",
        help="draw a scanner profile's boxes over a screenshot and print the decoded kPa range",
    )
    check_profile.add_argument("screenshot", type=Path)
    check_profile.add_argument("--profile", type=Path, required=True, help="scanner profile YAML")
    check_profile.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PNG",
        help="image to write (default ./<stem>_profile_check.png)",
    )
    plan = sub.add_parser(
        "plan",
        help="derive the experiment plan (spacing, patch, depth, batch, normalisation) from a dataset",
    )
    plan.add_argument("root", type=Path)
    plan.add_argument("--out", type=Path, default=None, metavar="JSON", help="also write the plan here")
    preprocess = sub.add_parser(
        "preprocess",
        help="build tpnet-train's preprocessed frame cache (decoded, kPa, resampled; memory-mapped) ahead of time",
    )
    preprocess.add_argument("root", type=Path)
    preprocess.add_argument(
        "--spacing-mm", type=float, default=None, metavar="S", help="target mm/pixel (default: the plan's)"
    )
    preprocess.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache root (default: data.cache.dir's default, $TPNET_PREPROCESSED or .cache/tpnet/preprocessed)",
    )
    preprocess.add_argument("--workers", type=int, default=None, help="build processes (default: every core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth" and args.screenshots:
        return _synth_screenshots(args)
    if args.command == "synth":
        from tpnet.data.synth import write_synthetic_dataset

        try:
            root = write_synthetic_dataset(
                args.out,
                subjects=args.subjects,
                frames_per_subject=args.frames_per_subject,
                seed=args.seed,
                height=args.height,
                width=args.width,
                workers=args.workers,
                appearance=args.appearance,
                active_stiffness_factor=args.active_stiffness_factor,
                active_echo_db=args.active_echo_db,
            )
        except ValueError as exc:
            print(f"tpnet-data synth: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.subjects * args.frames_per_subject} frames to {root}")
        return 0
    if args.command == "synth-sweeps":
        return _synth_sweeps(args)
    if args.command == "synth-longitudinal":
        return _synth_longitudinal(args)
    if args.command == "check":
        from tpnet.data.check import main_check

        return main_check(args.root)
    if args.command == "import-screenshots":
        return _import_screenshots(args)
    if args.command == "profile-check":
        return _profile_check(args)
    if args.command == "plan":
        # The planner reads frames through the training data pipeline (torch, OmegaConf): the training extra.
        message = missing_extra_message("tpnet-data plan", "train")
        if message is not None:
            print(message, file=sys.stderr)
            return EXIT_MISSING_EXTRA
        from tpnet.planning.cli import main_plan

        return main_plan(args.root, args.out)
    if args.command == "preprocess":
        message = missing_extra_message("tpnet-data preprocess", "train")  # reads frames as training does
        if message is not None:
            print(message, file=sys.stderr)
            return EXIT_MISSING_EXTRA
        from tpnet.planning.cli import main_preprocess

        return main_preprocess(args.root, args.spacing_mm, args.cache_dir, args.workers)
    from tpnet.data.render import render_samples

    for path in render_samples(args.root, args.out, n=args.n, seed=args.seed):
        print(path)
    return 0


def _synth_sweeps(args: argparse.Namespace) -> int:
    from tpnet.data.synth_sweeps import write_sweep_dataset

    names = ("subjects", "sweeps_per_subject", "slices", "height", "width", "spacing_mm", "slice_spacing_mm",
             "seed", "jitter_mm", "drop_p", "file_format", "workers")  # fmt: skip
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        root = write_sweep_dataset(args.root, **given)
    except ValueError as exc:
        print(f"tpnet-data synth-sweeps: {exc}", file=sys.stderr)
        return 2
    print(f"wrote synthetic sweeps to {root} (manifest.csv: one volume row per sweep)")
    return 0


def _synth_longitudinal(args: argparse.Namespace) -> int:
    from tpnet.data.synth_longitudinal import write_longitudinal_dataset

    names = ("subjects", "visits_min", "visits_max", "seed", "height", "width", "spacing_mm", "workers")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        root = write_longitudinal_dataset(args.root, **given)
    except ValueError as exc:
        print(f"tpnet-data synth-longitudinal: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote synthetic longitudinal studies to {root} (manifest.csv: one row per visit; truth/tracks.csv)"
    )
    return 0


def _synth_screenshots(args: argparse.Namespace) -> int:
    from tpnet.data.synth_screenshots import write_screenshot_dataset

    if args.active_stiffness_factor != 1.0 or args.active_echo_db != 0.0:
        print(
            "tpnet-data synth: --screenshots supports only the default active/latent effect", file=sys.stderr
        )
        return 2
    if args.appearance != "literature":
        # The screenshot layout is drawn for one fixed frame size and pixel size; presets vary both.
        print("tpnet-data synth: --screenshots supports only --appearance literature", file=sys.stderr)
        return 2
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        print(f"tpnet-data synth: --jpeg-quality must be 1-100, got {args.jpeg_quality}", file=sys.stderr)
        return 2
    try:
        root = write_screenshot_dataset(
            args.out,
            subjects=args.subjects,
            frames_per_subject=args.frames_per_subject,
            seed=args.seed,
            height=args.height,
            width=args.width,
            colormap=args.colormap,
            layout=args.layout,
            jpeg_quality=args.jpeg_quality,
        )
    except ValueError as exc:
        print(f"tpnet-data synth: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.subjects * args.frames_per_subject} screenshots to {root}")
    return 0


def _import_screenshots(args: argparse.Namespace) -> int:
    """Exit 0 when every screenshot was imported, 3 when some were skipped (each named), 2 when nothing could start."""
    from tpnet.core.scanner_profile import ProfileError
    from tpnet.data.screenshots import ScreenshotImportError, import_screenshots

    try:
        report = import_screenshots(args.input, args.out, args.profile, labels_dir=args.labels)
    except (ProfileError, ScreenshotImportError) as exc:
        print(f"tpnet-data import-screenshots: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"skipped {problem}", file=sys.stderr)
    print(
        f"imported {len(report.written)} screenshot(s) to {report.out}"
        + (f"; {len(report.problems)} skipped (listed above)" if report.problems else "")
    )
    return 3 if report.problems else 0


def _profile_check(args: argparse.Namespace) -> int:
    """Exit 0 when the profile fits the screenshot, 2 with the reason when it does not."""
    from tpnet.core.scanner_profile import ProfileError
    from tpnet.data.screenshots import ScreenshotImportError, profile_check

    try:
        result = profile_check(args.screenshot, args.profile, args.out)
    except (ProfileError, ScreenshotImportError) as exc:
        print(f"tpnet-data profile-check: {exc}", file=sys.stderr)
        return 2
    for line in result.lines:
        print(line)
    return 0 if result.ok else 2


if __name__ == "__main__":
    sys.exit(main())
