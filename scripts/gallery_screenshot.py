"""Reproduce the README's results-gallery screenshot (docs/images/gallery.png).

Starts ``llavidal gallery`` as a subprocess on 127.0.0.1 at a free port, opens it in the system chromium
through playwright, optionally keeps only the samples where the runs disagree, steps to the ``--sample``-th
sample, saves a full-page screenshot to ``--out`` (written to a temporary file, then renamed) and prints
the page's summary. The gallery is always stopped; on a failure the end of its log is printed.

Run as:

    python scripts/gallery_screenshot.py --out docs/images/gallery.png --disagree     # what the README shows
    python scripts/gallery_screenshot.py --runs results/run_a results/run_b --video_folder world/videos \\
        --out gallery.png

Without ``--runs`` the two runs are baselines on the embedded world's held-out (cross-subject test) ADLMCQ
questions, scored by the real tasks (``adlmcq_action_recognition``, ``adlmcq_forecasting``): "first
choice" always answers (A), "random choice" picks a letter with a seeded generator. They need no model, so
the screenshot is reproducible in seconds; a world is made with ``llavidal synth --preset tiny`` unless
``--world`` names one. Needs the playwright Python package and chromium (``scripts/install_test_deps.sh``);
playwright never downloads a browser here.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from llavidal.demo.browser import (
    BrowserUnavailable,
    free_port,
    launch_chromium,
    sync_playwright,
)
from llavidal.eval.gallery import ELEM_IDS
from llavidal.utils.io import atomic_path

MCQ_FILES = {"adlmcq_action_recognition": "mcq_action_recognition.json", "adlmcq_forecasting": "mcq_forecasting.json"}


class ScreenshotError(RuntimeError):
    """Something went wrong that the user can act on (the message says what)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/gallery_screenshot.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=None, metavar="RESULT_DIR",
                        help="result folders to show; default: two baselines on the embedded world")
    parser.add_argument("--world", default=None,
                        help="world folder (llavidal synth) for the baselines; default: a tiny one made in a temporary folder")
    parser.add_argument("--split", default="cross_subject", help="the world's split whose test questions are used")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-choice baseline")
    parser.add_argument("--video_folder", default=None, help="videos of --runs (default with baselines: WORLD/videos)")
    parser.add_argument("--disagree", action="store_true", help="keep only the samples where the runs disagree")
    parser.add_argument("--sample", type=int, default=1, help="which sample to show (1 = the first)")
    parser.add_argument("--out", required=True, help="PNG to write (parent folders are created)")
    parser.add_argument("--viewport", default="1400x1000", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for the gallery to answer")
    return parser


def baseline_runs(world: Path, split: str, seed: int, out: Path) -> list[Path]:
    """Two result folders ('first choice', 'random choice') as 'llavidal eval mcq' writes them."""
    from llavidal.eval.report import write_report
    from llavidal.eval.tasks import load_task

    folder = world / "annotations" / split / "test"
    if not folder.is_dir():
        raise ScreenshotError(f"{folder} does not exist; is {world} a world folder (llavidal synth --out)?")
    rng = random.Random(seed)
    results: dict[str, list[dict]] = {"first_choice": [], "random_choice": []}
    for benchmark, name in MCQ_FILES.items():
        spec = load_task(benchmark)
        records = spec.load_records(folder / name)
        first = {r.id: f"({next(iter(r.choices))})" for r in records}
        random_letters = {r.id: f"({rng.choice(sorted(r.choices))})" for r in records}
        results["first_choice"].append(spec.score(first, records))
        results["random_choice"].append(spec.score(random_letters, records))
    runs = []
    for name, scored in results.items():
        write_report(scored, out / name, video_root=world / "videos", title=f"{name} baseline")
        runs.append(out / name)
    return runs


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ScreenshotError(f"the gallery exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ScreenshotError(f"the gallery did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def screenshot(url: str, args: argparse.Namespace, viewport: dict[str, int]) -> str:
    from playwright.sync_api import expect

    out = Path(args.out)
    with sync_playwright()() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(url)
            count = page.locator(f"#{ELEM_IDS['count']}")
            expect(count).to_contain_text("samples", timeout=60_000)
            if args.disagree:
                before = count.inner_text()
                page.locator(f"#{ELEM_IDS['disagree']} input").check()
                expect(count).not_to_have_text(before, timeout=30_000)
            for step in range(1, args.sample):
                page.locator(f"#{ELEM_IDS['next']}").click()
                expect(page.locator(f"#{ELEM_IDS['position']}")).to_contain_text(f"sample {step + 1} of", timeout=30_000)
            page.wait_for_timeout(1500)  # the video's first frame
            with atomic_path(out) as partial:
                page.screenshot(path=str(partial), full_page=True)
            return (page.locator(f"#{ELEM_IDS['summary']}").inner_text() + "\n" + count.inner_text() + "\n"
                    + page.locator(f"#{ELEM_IDS['position']}").inner_text())
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.viewport.lower().split("x"))
    except ValueError:
        parser.error(f"--viewport {args.viewport!r}: expected WIDTHxHEIGHT, e.g. 1400x1000")
    with tempfile.TemporaryDirectory(prefix="gallery_screenshot_") as scratch_name:
        scratch = Path(scratch_name)
        try:
            if args.runs:
                runs, videos = [Path(r) for r in args.runs], args.video_folder
            else:
                world = Path(args.world) if args.world else scratch / "world"
                if not args.world:
                    subprocess.run([sys.executable, "-m", "llavidal.cli", "synth", "--out", str(world), "--preset",
                                    "tiny"], check=True, stdout=subprocess.DEVNULL)
                # Named like the runs they are, in the page's header.
                runs, videos = baseline_runs(world, args.split, args.seed, scratch / "results"), world / "videos"
            port = free_port()
            command = [sys.executable, "-m", "llavidal.cli", "gallery", *map(str, runs), "--port", str(port)]
            if videos:
                command += ["--video_folder", str(videos)]
            log = scratch / "gallery.log"
            env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                   "GRADIO_TEMP_DIR": str(scratch / "gradio")}
            with open(log, "w") as log_file:
                process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    wait_for(url, process, log, args.start_timeout)
                    print(screenshot(url, args, {"width": width, "height": height}))
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
        except (ScreenshotError, BrowserUnavailable, subprocess.CalledProcessError) as err:
            print(f"gallery_screenshot: error: {err}", file=sys.stderr)
            return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
