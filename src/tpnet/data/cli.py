"""``tpnet-data``: synthesise a dataset, check one, render sample frames."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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

    check = sub.add_parser("check", help="validate a dataset against the contract")
    check.add_argument("root", type=Path)

    render = sub.add_parser("render", help="render sample frames (B-mode | SWE | labels) to PNG")
    render.add_argument("root", type=Path)
    render.add_argument("out", type=Path)
    render.add_argument("--n", type=int, default=3)
    render.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from tpnet.data.synth import write_synthetic_dataset

        root = write_synthetic_dataset(
            args.out,
            subjects=args.subjects,
            frames_per_subject=args.frames_per_subject,
            seed=args.seed,
            height=args.height,
            width=args.width,
            workers=args.workers,
        )
        print(f"wrote {args.subjects * args.frames_per_subject} frames to {root}")
        return 0
    if args.command == "check":
        from tpnet.data.check import main_check

        return main_check(args.root)
    from tpnet.data.render import render_samples

    for path in render_samples(args.root, args.out, n=args.n, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
