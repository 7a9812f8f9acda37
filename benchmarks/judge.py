"""Judge throughput: concurrency 16 vs sequential against a local OpenAI-compatible server.

Run as:
    python benchmarks/judge.py [--items 64] [--latency 0.1] [--concurrency 16]

The server (``tests/fake_openai_server.py``) runs in its own process on 127.0.0.1 (as a remote judge
would: its CPU time is not the client's) and sleeps ``--latency`` seconds per call; every run uses a
fresh cache so that every item is a real HTTP call through the ``openai`` client. Prints a markdown
table of wall times and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llavidal.eval.judges.base import JudgeItem
from llavidal.eval.judges.openai_judge import OpenAIJudge

SERVER = Path(__file__).resolve().parents[1] / "tests" / "fake_openai_server.py"


def run(url: str, items: list[JudgeItem], concurrency: int, cache_dir: Path) -> tuple[float, int, float]:
    """(wall seconds, HTTP requests, client CPU seconds) for judging ``items`` with a fresh cache."""
    judge = OpenAIJudge(
        model="bench-judge-2024-01-01",
        base_url=url,
        concurrency=concurrency,
        cache_path=cache_dir / f"cache_c{concurrency}.sqlite",
        timeout=30.0,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    results = judge.judge(items)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return seconds, judge.stats["requests"], cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(name, None)  # talk to the local server directly
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    items = [
        JudgeItem("correctness", f"What happens in video {i}?", "The person drinks.", f"[[score={i % 6}]] answer {i}")
        for i in range(args.items)
    ]
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--latency", str(args.latency), "--lifetime", "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server did not start (printed {url!r})")
        with tempfile.TemporaryDirectory() as tmp:
            # Warm-up outside the timings: imports and the first connection.
            run(url, [JudgeItem("correctness", "warm", "up", "[[score=1]]")], 1, Path(tmp))
            sequential, n_seq, cpu_seq = run(url, items, 1, Path(tmp))
            concurrent, n_conc, cpu_conc = run(url, items, args.concurrency, Path(tmp))
    finally:
        server.kill()
        server.wait()
    ideal = args.items * args.latency
    print(
        f"{args.items} judge calls, {args.latency * 1000:.0f} ms server latency per call, "
        "openai client over HTTP on 127.0.0.1\n"
    )
    print("| concurrency | requests | wall time (s) | client CPU (s) | calls/s | speed-up |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 (sequential) | {n_seq} | {sequential:.2f} | {cpu_seq:.2f} | {args.items / sequential:.1f} | 1.0x |")
    print(
        f"| {args.concurrency} | {n_conc} | {concurrent:.2f} | {cpu_conc:.2f} | {args.items / concurrent:.1f} "
        f"| {sequential / concurrent:.1f}x |"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nlatency-only lower bounds: sequential {ideal:.2f}s, concurrent {ideal / args.concurrency:.2f}s; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} (the concurrent run is CPU-bound when the machine is busy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
