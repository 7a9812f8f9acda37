"""``llavidal eval infer --jobs``: one process for many runs of one model, against one process per run, and
the same jobs split over torchrun ranks.

Run as, on a finished quickstart folder:

    python benchmarks/eval_jobs.py --out quickstart_out                # its first 6 runs, 16 records each
    python benchmarks/eval_jobs.py --out quickstart_out --runs 31 --limit 40
    python benchmarks/eval_jobs.py --out quickstart_out --ways jobs ranks --ranks 2

Takes the first ``--runs`` lines of ``OUT/eval/infer_jobs.txt`` (the quickstart's evaluation), each cut to
``--limit`` records, and runs them into a temporary folder in each of the ``--ways``, in this order:

* ``alone``: each run as its own ``llavidal eval infer`` process (the model loaded once per run);
* ``jobs``: all as one ``llavidal eval infer --jobs`` process (loaded once), with every core's thread;
* ``ranks``: the same ``--jobs`` under torchrun with ``--ranks`` ranks of ``cores / ranks`` threads, each rank
  scoring its share of every run's records (the quickstart's evaluation when ``eval_procs`` is above 1).

Prints the seconds of each way, the ratio against the first, and whether every run's predictions are the same
every way (predictions, leads and option log-likelihoods rounded to 4 decimals: the thread count may change the
last bits of a sum).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def with_output(words: list[str], output: Path, limit: int) -> list[str]:
    words = list(words)
    words[words.index("--output") + 1] = str(output)
    if "--limit" in words:
        at = words.index("--limit")
        words[at + 1] = str(min(int(words[at + 1]), limit))
    else:
        words += ["--limit", str(limit)]
    return words


def rows(path: Path) -> dict:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        scores = {letter: round(option["loglik"], 4) for letter, option in (row.get("option_scores") or {}).items()}
        out[row["id"]] = (row.get("prediction"), row.get("lead"), json.dumps(scores, sort_keys=True))
    return out


WAYS = {"alone": "one process per run", "jobs": "eval infer --jobs (one process)",
        "ranks": "eval infer --jobs under torchrun"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a finished quickstart folder (OUT of llavidal quickstart)")
    parser.add_argument("--runs", type=int, default=6, help="the first N runs of OUT/eval/infer_jobs.txt")
    parser.add_argument("--limit", type=int, default=16, help="records per run")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=["alone", "jobs"], help="ways to run them")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun ranks of the 'ranks' way")
    args = parser.parse_args(argv)
    out = Path(args.out)
    jobs_file = out / "eval" / "infer_jobs.txt"
    lines = [shlex.split(line, comments=True) for line in jobs_file.read_text(encoding="utf-8").splitlines()]
    runs = [words for words in lines if words][: args.runs]
    shared = ["--weights", str(out / "train"), "--optional_modalities", "object", "--device", "cpu", "--dtype", "float32"]
    cores = os.cpu_count() or 1
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(cores)}
    cli = [sys.executable, "-m", "llavidal", "eval", "infer"]
    seconds, outputs = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for way in args.ways:
            outputs[way] = [tmp / f"{way}{index}.jsonl" for index in range(len(runs))]
            start = time.perf_counter()
            if way == "alone":
                for words, output in zip(runs, outputs[way]):
                    subprocess.run([*cli, *shared, *with_output(words, output, args.limit)], env=env, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            else:
                jobs = tmp / f"{way}.txt"
                jobs.write_text("".join(shlex.join(with_output(words, output, args.limit)) + "\n"
                                        for words, output in zip(runs, outputs[way])), encoding="utf-8")
                command, run_env = [*cli, *shared, "--jobs", str(jobs)], env
                if way == "ranks":
                    from llavidal.quickstart.stages import ranks_cli

                    command = ranks_cli(args.ranks, *command[3:])
                    run_env = {**env, "OMP_NUM_THREADS": str(max(1, cores // args.ranks))}
                subprocess.run(command, env=run_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[way] = time.perf_counter() - start
        first = args.ways[0]
        same = all(rows(a) == rows(b) for way in args.ways[1:] for a, b in zip(outputs[first], outputs[way]))
        differ = {}
        for way in args.ways[1:]:
            theirs = [(rows(a), rows(b)) for a, b in zip(outputs[first], outputs[way])]
            total = sum(len(a) for a, _ in theirs)
            answers = sum(a[key][:2] != b.get(key, (None, None))[:2] for a, b in theirs for key in a)
            scores = sum(a[key] != b.get(key) for a, b in theirs for key in a)
            differ[way] = (total, answers, scores)
    print(f"{len(runs)} runs of {jobs_file}, at most {args.limit} records each; {cores} cores\n")
    print("| way | seconds | ratio |\n|---|---|---|")
    for way in args.ways:
        label = WAYS[way] + (f", {args.ranks} ranks x {max(1, cores // args.ranks)} thread(s)" if way == "ranks" else "")
        print(f"| {label} | {seconds[way]:.1f} | {seconds[first] / seconds[way]:.2f}x |")
    for way, (total, answers, scores) in differ.items():
        print(f"{way} against {first}: {answers} of {total} rows with another prediction or lead, {scores} with another "
              "prediction, lead or option score (4 decimals)")
    print(f"\nsame predictions every way: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
