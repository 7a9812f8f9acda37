"""``llavidal synth``: generate the embedded ADL world.

Run as: llavidal synth --out world --preset small [--seed 0] [--workers N] [--preview]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llavidal.sim.plan import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llavidal synth",
        description="Generate a small ADL dataset offline: videos of a humanoid doing daily activities from three "
                    "cameras, NTU .skeleton files, object tracks, and question-answer annotations in the upstream "
                    "formats. Reruns resume: finished clips are kept.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="world size: tiny (tests), small (a minute), medium (the quickstart, a few minutes)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--preview", action="store_true",
                        help="also write a contact sheet of every activity to OUT/preview.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("llavidal synth: --workers must be at least 1", file=sys.stderr)
        return 2
    from llavidal.utils.optional import MissingDependencyError

    try:
        from llavidal.sim.world import generate_world

        root = generate_world(args.out, preset=args.preset, seed=args.seed, workers=args.workers,
                              preview=args.preview, progress=not args.quiet)
    except MissingDependencyError as err:
        print(f"llavidal synth: {err}", file=sys.stderr)
        return 1
    if args.preview and not args.quiet:
        print(f"preview: {root / 'preview.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
