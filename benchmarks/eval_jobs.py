"""``llavidal eval infer --jobs``: one process for many runs of one model, against one process per run.

Run as, on a finished quickstart folder:

    python benchmarks/eval_jobs.py --out quickstart_out                # its first 6 runs, 16 records each
    python benchmarks/eval_jobs.py --out quickstart_out --runs 31 --limit 40

Takes the first ``--runs`` lines of ``OUT/eval/infer_jobs.txt`` (the quickstart's evaluation), each cut to
``--limit`` records, and runs them twice into a temporary folder, in this order: each as its own ``llavidal eval
infer`` process (the model loaded once per run), then all as one ``llavidal eval infer --jobs`` process (loaded
once). Prints the seconds of each way, the ratio, and whether every run's predictions are the same both ways
(predictions, leads and option log-likelihoods).
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
        out[row["id"]] = (row.get("prediction"), row.get("lead"), json.dumps(row.get("option_scores"), sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a finished quickstart folder (OUT of llavidal quickstart)")
    parser.add_argument("--runs", type=int, default=6, help="the first N runs of OUT/eval/infer_jobs.txt")
    parser.add_argument("--limit", type=int, default=16, help="records per run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    jobs_file = out / "eval" / "infer_jobs.txt"
    lines = [shlex.split(line, comments=True) for line in jobs_file.read_text(encoding="utf-8").splitlines()]
    runs = [words for words in lines if words][: args.runs]
    shared = ["--weights", str(out / "train"), "--optional_modalities", "object", "--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cli = [sys.executable, "-m", "llavidal", "eval", "infer"]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        start = time.perf_counter()
        for index, words in enumerate(runs):
            subprocess.run([*cli, *shared, *with_output(words, tmp / f"alone{index}.jsonl", args.limit)], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        separate = time.perf_counter() - start
        jobs = tmp / "jobs.txt"
        jobs.write_text("".join(shlex.join(with_output(words, tmp / f"job{index}.jsonl", args.limit)) + "\n"
                                for index, words in enumerate(runs)), encoding="utf-8")
        start = time.perf_counter()
        subprocess.run([*cli, *shared, "--jobs", str(jobs)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        together = time.perf_counter() - start
        same = all(rows(tmp / f"alone{index}.jsonl") == rows(tmp / f"job{index}.jsonl") for index in range(len(runs)))
    print(f"{len(runs)} runs of {jobs_file}, at most {args.limit} records each\n")
    print("| way | seconds | ratio |\n|---|---|---|")
    print(f"| one process per run | {separate:.1f} | 1.00x |")
    print(f"| eval infer --jobs (one process) | {together:.1f} | {separate / together:.2f}x |")
    print(f"\nsame predictions both ways: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
