"""The demo in a real browser: Debian's chromium driven by playwright's Python package.

The demo runs as users start it (``python llavidal/demo/video_demo.py --model-name ... --projection_path
...``) on a tiny model. Skipped, with the reason, only where playwright or chromium is not installed
(``scripts/install_test_deps.sh`` installs both). Screenshots go to ``$LLAVIDAL_TEST_ARTIFACTS`` when set,
else to the test's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo_helpers import make_tiny_weights, make_video
from llavidal.demo.browser import chromium_path, free_port, launch_chromium

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (run scripts/install_test_deps.sh)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; see scripts/install_test_deps.sh)")
    with sync_api.sync_playwright() as playwright:
        # Never let playwright fetch a browser: the system chromium, no background traffic.
        launched = launch_chromium(playwright, executable)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_browser")
    llm, weights = make_tiny_weights(root, modalities=("video",))
    port = free_port()
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
    }
    log = open(root / "demo.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "llavidal" / "demo" / "video_demo.py"), "--model-name", str(llm),
         "--projection_path", str(weights), "--device", "cpu", "--port", str(port), "--max-duration", "30",
         "--max-new-tokens", "24", "--temperature", "0"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}:\n{(root / 'demo.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not answer within 60 s:\n{(root / 'demo.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    broken = folder / "broken.mp4"
    broken.write_bytes(b"this is a text file, not a video\n" * 50)
    return {"good": make_video(folder / "kitchen.mp4", frames=24), "broken": broken}


def artifacts_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LLAVIDAL_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_demo(context, url):
    page = context.new_page()
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#llavidal-video").wait_for()
    return page


def upload_and_ask(page, video: Path, question: str, turn: int = 1) -> str:
    """Upload (first turn only), ask, wait for the streamed answer to finish; return the answer text."""
    from playwright.sync_api import expect

    if turn == 1:
        page.locator("#llavidal-video input[type=file]").set_input_files(str(video))
        expect(page.locator("#llavidal-status")).to_contain_text("Ready", timeout=30_000)
    box = page.locator("#llavidal-question textarea")
    expect(box).to_be_enabled(timeout=30_000)
    box.fill(question)
    box.press("Enter")
    user_rows = page.locator("#llavidal-chatbot .message-row.user-row")
    expect(user_rows).to_have_count(turn, timeout=30_000)
    expect(user_rows.nth(turn - 1)).to_contain_text(question)
    expect(box).to_be_enabled(timeout=30_000)  # disabled while the answer streams
    bot_rows = page.locator("#llavidal-chatbot .message-row.bot-row")
    expect(bot_rows).to_have_count(turn, timeout=30_000)
    return bot_rows.nth(turn - 1).inner_text()


def test_upload_ask_and_get_a_streamed_answer(browser, demo_url, videos, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context()
    page = open_demo(context, demo_url)
    expect(page.locator("#llavidal-question textarea")).to_be_disabled()  # no video yet
    upload_and_ask(page, videos["good"], "What is the person doing?")
    expect(page.locator("#llavidal-modalities")).to_contain_text("24 tokens x 256-d")
    upload_and_ask(page, videos["good"], "Describe it in detail.", turn=2)
    shot = artifacts_dir(tmp_path) / "demo_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.locator("#llavidal-reset").click()
    expect(page.locator("#llavidal-chatbot .message-row")).to_have_count(0)
    expect(page.locator("#llavidal-question textarea")).to_be_disabled()
    context.close()


def test_an_invalid_file_shows_an_error_in_the_page(browser, demo_url, videos):
    from playwright.sync_api import expect

    context = browser.new_context()
    page = open_demo(context, demo_url)
    page.locator("#llavidal-video input[type=file]").set_input_files(str(videos["broken"]))
    expect(page.locator("#llavidal-status")).to_contain_text("Cannot use this video", timeout=30_000)
    expect(page.locator("#llavidal-status")).to_contain_text("could not be read as a video")
    expect(page.get_by_text("Cannot use this video").first).to_be_visible()
    expect(page.locator("#llavidal-question textarea")).to_be_disabled()
    context.close()


def test_two_browser_sessions_keep_separate_histories(browser, demo_url, videos):
    first, second = browser.new_context(), browser.new_context()
    page_a, page_b = open_demo(first, demo_url), open_demo(second, demo_url)
    upload_and_ask(page_a, videos["good"], "Question from A?")
    upload_and_ask(page_b, videos["good"], "Question from B?")
    upload_and_ask(page_a, videos["good"], "Second question from A?", turn=2)

    def user_turns(page):
        return page.locator("#llavidal-chatbot .message-row.user-row").all_inner_texts()

    assert [t.strip() for t in user_turns(page_a)] == ["Question from A?", "Second question from A?"]
    assert [t.strip() for t in user_turns(page_b)] == ["Question from B?"]
    first.close()
    second.close()
