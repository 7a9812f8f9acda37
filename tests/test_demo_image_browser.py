"""The demo in a real browser answers about an uploaded image (a 1-frame video through the video extractor).

Same set-up as ``test_demo_browser.py``: the demo runs as users start it on a tiny model; skipped, with the
reason, only where playwright or chromium is not installed (``scripts/install_test_deps.sh`` installs both).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_demo_browser import artifacts_dir, browser, demo_url, open_demo  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("pictures") / "table.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_uploaded_image_is_answered(browser, demo_url, picture, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context()
    page = open_demo(context, demo_url)
    box = page.locator("#llavidal-question textarea")
    expect(box).to_be_disabled()  # nothing uploaded yet
    page.locator("#llavidal-image input[type=file]").set_input_files(str(picture))
    status = page.locator("#llavidal-status")
    expect(status).to_contain_text("Ready", timeout=30_000)
    expect(status).to_contain_text("an image, 80x60 (used as a 1-frame video)")
    expect(status).to_contain_text("Ask a question about the image")
    expect(page.locator("#llavidal-modalities")).to_contain_text("24 tokens x 256-d")
    expect(page.locator("#llavidal-modalities")).to_contain_text("(an image: 1 frame)")

    expect(box).to_be_enabled(timeout=30_000)
    box.fill("What is on the table?")
    box.press("Enter")
    user_rows = page.locator("#llavidal-chatbot .message-row.user-row")
    expect(user_rows).to_have_count(1, timeout=30_000)
    expect(user_rows.first).to_contain_text("What is on the table?")
    expect(box).to_be_enabled(timeout=30_000)  # disabled while the answer streams
    expect(page.locator("#llavidal-chatbot .message-row.bot-row")).to_have_count(1, timeout=30_000)
    shot = artifacts_dir(tmp_path) / "demo_image_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.locator("#llavidal-reset").click()  # a new conversation: the image is cleared too
    expect(page.locator("#llavidal-chatbot .message-row")).to_have_count(0)
    expect(box).to_be_disabled()
    context.close()
