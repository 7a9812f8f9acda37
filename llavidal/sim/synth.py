"""``llavidal synth``: generate the embedded ADL world.

Run as: llavidal synth --output_dir world --preset small [--seed 0] [--workers N] [--preview]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from llavidal.config import arg, command, parse

PRESET_NAMES = ("tiny", "small", "medium")


@dataclass
class SynthArguments:
    """Generate a small ADL dataset offline: videos of a humanoid doing daily activities from three cameras,
    NTU .skeleton files, object tracks, and question-answer annotations in the upstream formats. Reruns
    resume: finished clips are kept."""

    output_dir: str = arg(None, "output folder (created if missing)", aliases=["--out"])
    preset: str = arg("small", "world size: tiny (tests), small (a minute), medium (the quickstart, a few minutes)",
                      choices=PRESET_NAMES)
    seed: int = arg(0, "random seed; the same seed gives byte-identical files")
    workers: int | None = arg(None, "worker processes (default: all CPU cores)")
    preview: bool = arg(False, "also write a contact sheet of every activity to OUTPUT_DIR/preview.png")
    quiet: bool = arg(False, "no progress bar or summary")

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir (or --out) is required: the folder to write the world into")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be at least 1")


@command("llavidal synth")
def main(argv: list[str] | None = None) -> int:
    (args,) = parse((SynthArguments,), argv, prog="llavidal synth", description=SynthArguments.__doc__)
    from llavidal.sim.plan import PRESETS
    from llavidal.sim.world import generate_world

    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r}: use one of {sorted(PRESETS)}")
    root = generate_world(args.output_dir, preset=args.preset, seed=args.seed, workers=args.workers,
                          preview=args.preview, progress=not args.quiet)
    if args.preview and not args.quiet:
        print(f"preview: {root / 'preview.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
