"""The results gallery in a real browser: Debian's chromium driven by playwright's Python package.

``llavidal gallery RUN_A RUN_B --video_folder V`` runs as users start it, on two tiny result folders scored
by the real MCQ task. Skipped, with the reason, only where playwright or chromium is not installed
(``scripts/install_test_deps.sh`` installs both). The screenshot goes to ``$LLAVIDAL_TEST_ARTIFACTS`` when
set, else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from demo_helpers import make_video

from llavidal.demo.browser import chromium_path, free_port, launch_chromium
from llavidal.eval.gallery import ELEM_IDS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHOICES = {"A": "drinking water", "B": "reading a book", "C": "walking", "D": "eating food"}
RECORDS = [  # id, correct letter, run_a's reply, run_b's reply
    ("clip_1", "A", "(A) drinking water", "(A)"),
    ("clip_2", "B", "The person is reading a book.", "(C) walking"),
    ("clip_3", "C", "(C)", "(C) walking"),
    ("clip_4", "D", "(B) reading a book", "(D) eating food"),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (run scripts/install_test_deps.sh)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; see scripts/install_test_deps.sh)")
    with sync_api.sync_playwright() as playwright:
        launched = launch_chromium(playwright, executable)  # the system chromium; never a download
        yield launched
        launched.close()


def make_results(root: Path) -> tuple[Path, Path, Path]:
    """(run_a, run_b, videos): two result folders of 'llavidal eval mcq' on four records whose videos are
    named without an extension."""
    from llavidal.eval.report import write_report
    from llavidal.eval.tasks import load_task

    videos = root / "videos"
    for index, (clip, *_) in enumerate(RECORDS):
        make_video(videos / f"{clip}.mp4", frames=8, shade=30 + 40 * index)
    records = root / "mcq.json"
    records.write_text(json.dumps([
        {"id": clip, "video_filename": clip, "question": f"What is the person doing in {clip}?",
         "answer_choices": CHOICES, "ground_truth_letter": letter, "task": "action_recognition"}
        for clip, letter, _, _ in RECORDS
    ]))
    spec = load_task("adlmcq_action_recognition")
    runs = []
    for name, column in (("run_a", 2), ("run_b", 3)):
        replies = {row[0]: row[column] for row in RECORDS}
        write_report(spec.score(replies, spec.load_records(records)), root / name)
        runs.append(root / name)
    return runs[0], runs[1], videos


@pytest.fixture(scope="module")
def gallery_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery_browser")
    run_a, run_b, videos = make_results(root)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(root / "gradio")}
    with open(root / "gallery.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llavidal.cli", "gallery", str(run_a), str(run_b), "--video_folder", str(videos),
             "--port", str(port), "--share", "false"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the gallery exited with {process.returncode}:\n{(root / 'gallery.log').read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the gallery did not answer within 60 s:\n{(root / 'gallery.log').read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def by_id(page, name: str):
    return page.locator(f"#{ELEM_IDS[name]}")


def test_step_through_samples_and_filter_disagreements(browser, gallery_url, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(gallery_url)
    expect(by_id(page, "count")).to_contain_text("4 of 4 samples", timeout=30_000)
    # Header: n and the 95% interval of each run (run_a 3/4 right, run_b 3/4 right).
    expect(by_id(page, "summary")).to_contain_text("75.0% (3/4;")
    expect(by_id(page, "summary")).to_contain_text("run_b")
    expect(by_id(page, "position")).to_contain_text("sample 1 of 4")
    expect(by_id(page, "sample")).to_contain_text("clip_1")
    expect(page.locator(f"#{ELEM_IDS['video']} video")).to_have_count(1)  # clip_1, found without an extension

    by_id(page, "next").click()
    expect(by_id(page, "position")).to_contain_text("sample 2 of 4")
    expect(by_id(page, "sample")).to_contain_text("clip_2")
    answers = by_id(page, "answers")
    expect(answers.locator("[data-run='run_a'] .llavidal-prediction")).to_have_text("The person is reading a book.")
    expect(answers.locator("[data-run='run_b'] .llavidal-prediction")).to_have_text("(C) walking")
    expect(answers.locator("[data-run='run_a'] .llavidal-verdict")).to_have_text("right")
    expect(answers.locator("[data-run='run_b'] .llavidal-verdict")).to_have_text("wrong")

    by_id(page, "disagree").locator("input").check()
    expect(by_id(page, "count")).to_contain_text("2 of 4 samples")  # clip_2 and clip_4
    expect(by_id(page, "position")).to_contain_text("sample 1 of 2")
    expect(by_id(page, "sample")).to_contain_text("clip_2")
    by_id(page, "next").click()
    expect(by_id(page, "sample")).to_contain_text("clip_4")
    expect(answers.locator("[data-run='run_a'] .llavidal-prediction")).to_have_text("(B) reading a book")
    expect(answers.locator("[data-run='run_b'] .llavidal-prediction")).to_have_text("(D) eating food")

    by_id(page, "jump").locator("textarea, input").first.fill("clip_1")
    by_id(page, "jump_button").click()
    expect(by_id(page, "position")).to_contain_text("id clip_1 is hidden by the filters")
    by_id(page, "disagree").locator("input").uncheck()
    expect(by_id(page, "count")).to_contain_text("4 of 4 samples")
    by_id(page, "jump_button").click()
    expect(by_id(page, "position")).to_contain_text("sample 1 of 4")
    expect(by_id(page, "sample")).to_contain_text("clip_1")

    folder = Path(os.environ.get("LLAVIDAL_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "gallery_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    context.close()
