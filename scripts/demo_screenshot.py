"""Reproduce the README's demo screenshot (docs/demo_screenshot.png) from real weights.

Starts the demo (``llavidal/demo/video_demo.py``) as a subprocess on 127.0.0.1 at a free port, opens it
in the system chromium through playwright, clicks a bundled example (or uploads ``--video``), asks each
question in turn, waits for each streamed answer to finish, saves a full-page screenshot to ``--out``
(written to a temporary file, then renamed), and prints the answers. The demo is always stopped, also on
Ctrl-C or an error; on a failure the end of its log is printed.

Run as, with the quickstart's outputs:

    python scripts/demo_screenshot.py --projection_path quickstart_out/train \\
        --examples quickstart_out/world --pose-encoder quickstart_out/pose_encoder \\
        --example S001C001P002R001A004 --out docs/demo_screenshot.png

Any other demo flag goes after ``--`` and is passed through, e.g. ``-- --vision_tower_name embedded``.
Needs the playwright Python package and chromium (``scripts/install_test_deps.sh``); playwright never
downloads a browser here. Generation is greedy by default (``--temperature 0``), so a rerun with the same
weights gives the same answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from llavidal.demo.browser import BrowserUnavailable, free_port, launch_chromium, sync_playwright
from llavidal.demo.video_demo import ELEM_IDS, MAX_EXAMPLES, find_examples

DEMO = REPO / "llavidal" / "demo" / "video_demo.py"
DEFAULT_QUESTIONS = ["What is the person doing?", "Which hand does the person use?"]


class ScreenshotError(RuntimeError):
    """Something went wrong that the user can act on (the message says what)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/demo_screenshot.py", description=__doc__.split("\n\n")[0],
        epilog="Flags after '--' go to the demo unchanged.", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model (passed to the demo)")
    model.add_argument("--projection_path", "--projection-path", required=True,
                       help="folder written by training (llavidal_config.json + trainable.safetensors)")
    model.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                       help="base LLM folder; default: the base recorded with the weights")
    model.add_argument("--pose-encoder", default=None,
                       help="pose encoder checkpoint folder; default: the one training's pose features record")
    model.add_argument("--device", default="cpu", help="torch device of the demo")
    model.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit")
    model.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, reproducible answers")
    clip = parser.add_argument_group("what to show")
    clip.add_argument("--examples", action="append", default=[],
                      help="world folder (or folder of videos) whose clips the demo offers as examples (repeatable)")
    clip.add_argument("--example", default=None,
                      help="click the first example whose file name contains this; default: the first example")
    clip.add_argument("--video", default=None, help="upload this video instead of clicking an example")
    clip.add_argument("--questions", nargs="+", default=DEFAULT_QUESTIONS, metavar="QUESTION",
                      help="asked in turn, one conversation")
    shot = parser.add_argument_group("screenshot")
    shot.add_argument("--out", required=True, help="PNG to write (parent folders are created)")
    shot.add_argument("--viewport", default="1400x1050", help="browser window, WIDTHxHEIGHT")
    shot.add_argument("--port", type=int, default=0, help="demo port on 127.0.0.1; 0 picks a free one")
    shot.add_argument("--threads", type=int, default=None,
                      help="OMP/MKL threads of the demo process (default: the environment's)")
    shot.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the demo to load the model")
    shot.add_argument("--answer-timeout", type=float, default=600.0,
                      help="seconds for a video's features, and for each answer")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.examples and not args.video:
        parser.error("pass --examples WORLD (to click an example) or --video FILE (to upload one)")
    if args.video and args.example:
        parser.error("--example picks a bundled example; with --video the given file is uploaded instead")
    if not args.questions or any(not q.strip() for q in args.questions):
        parser.error("--questions: give at least one non-empty question")
    try:
        width, height = (int(v) for v in args.viewport.lower().split("x"))
        args.viewport = {"width": width, "height": height}
    except ValueError:
        parser.error(f"--viewport {args.viewport!r}: expected WIDTHxHEIGHT, e.g. 1400x1050")
    if args.video and not Path(args.video).is_file():
        parser.error(f"--video {args.video}: no such file")
    return args, extra


def choose_example(examples: list[Path], name: str | None) -> Path:
    """The example the demo shows (the same list and order as the demo) whose name contains ``name``."""
    if not examples:
        raise ScreenshotError("the --examples folders hold no videos")
    if name is None:
        return examples[0]
    for video in examples:
        if name in video.name:
            return video
    raise ScreenshotError(
        f"no example among the {len(examples)} the demo shows (it shows at most {MAX_EXAMPLES}) has "
        f"{name!r} in its name; they are: {', '.join(v.name for v in examples)}. "
        "Pass one of those, or upload any video with --video."
    )


def demo_command(args: argparse.Namespace, port: int, extra: list[str]) -> list[str]:
    command = [
        sys.executable, str(DEMO), "--projection_path", args.projection_path, "--host", "127.0.0.1",
        "--port", str(port), "--device", args.device, "--temperature", str(args.temperature),
        "--max-new-tokens", str(args.max_new_tokens),
    ]
    if args.model_name:
        command += ["--model-name", args.model_name]
    if args.pose_encoder:
        command += ["--pose-encoder", args.pose_encoder]
    for folder in args.examples:
        command += ["--examples", folder]
    return command + extra


class Demo:
    """The demo subprocess: started, waited for, and always stopped (its log kept for error messages)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        # Its own process group: Ctrl-C reaches this script only, which then stops the demo itself.
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_until_serving(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ScreenshotError(f"the demo exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ScreenshotError(f"the demo did not answer at {url} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(1.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group this script started
                self.process.wait()
        self._log.close()


def _wait(page, done, what: str, timeout: float, demo: Demo) -> None:
    """Poll ``done()`` until true; fail early on an error toast or a dead demo."""
    errors = page.locator('[data-testid="toast-body"].error')
    deadline = time.monotonic() + timeout
    while not done():
        if errors.count():
            raise ScreenshotError(f"{what}: the page shows an error: {' '.join(errors.first.inner_text().split())}")
        if demo.process.poll() is not None:
            raise ScreenshotError(f"{what}: the demo exited with {demo.process.returncode}:\n{demo.log_tail()}")
        if time.monotonic() > deadline:
            raise ScreenshotError(f"{what}: not done within {timeout:.0f} s (raise --answer-timeout)")
        page.wait_for_timeout(500)


def select_video(page, args: argparse.Namespace, example: Path | None, demo: Demo) -> str:
    """Click the example (or upload --video) and wait until its features are computed; the status line."""
    status = page.locator(f"#{ELEM_IDS['status']}")
    if example is not None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        # The example buttons show the videos; the one whose player loads this file is the one to click.
        button = page.locator(f"#{ELEM_IDS['examples']} button.gallery-item").filter(
            has=page.locator(f'video[src$="/{example.name}"]')).first
        try:
            button.wait_for(timeout=60_000)
        except PlaywrightTimeout:
            raise ScreenshotError(f"the page shows no example button for {example.name}") from None
        button.click()
    else:
        page.locator(f"#{ELEM_IDS['video']} input[type=file]").set_input_files(str(Path(args.video).resolve()))

    def settled() -> bool:
        text = status.inner_text()
        if "Cannot use this video" in text:
            raise ScreenshotError(f"the demo rejected the video: {' '.join(text.split())}")
        return "Ready" in text

    _wait(page, settled, "computing the video's features", args.answer_timeout, demo)
    return " ".join(status.inner_text().split())


def ask(page, question: str, turn: int, timeout: float, demo: Demo) -> str:
    """Ask, wait for the streamed answer to finish (the box is disabled while it streams), return it."""
    box = page.locator(f"#{ELEM_IDS['question']} textarea")
    user_rows = page.locator(f"#{ELEM_IDS['chatbot']} .message-row.user-row")
    bot_rows = page.locator(f"#{ELEM_IDS['chatbot']} .message-row.bot-row")
    _wait(page, box.is_enabled, "waiting for the question box", 60, demo)
    box.fill(question)
    box.press("Enter")
    _wait(page, lambda: user_rows.count() >= turn, f"question {turn}", 60, demo)
    _wait(page, lambda: box.is_enabled() and bot_rows.count() >= turn, f"answer {turn}", timeout, demo)
    return bot_rows.nth(turn - 1).inner_text().strip()


def screenshot(page, out: Path) -> None:
    """Full page to ``out``, atomically: a temporary file beside it, then a rename."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    out.parent.mkdir(parents=True, exist_ok=True)
    # Let the main video player show a frame rather than a black box (best effort).
    try:
        page.wait_for_function(
            f"() => {{ const v = document.querySelector('#{ELEM_IDS['video']} video');"
            " return !v || v.readyState >= 2; }",
            timeout=10_000,
        )
    except PlaywrightTimeout as err:  # cosmetic only: take the picture anyway
        print(f"note: the video player shows no frame yet ({type(err).__name__})", file=sys.stderr)
    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.wait_for_timeout(500)
    handle, temp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(handle)
    try:
        page.screenshot(path=temp, full_page=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
        os.replace(temp, out)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def run(args: argparse.Namespace, extra: list[str]) -> list[tuple[str, str]]:
    start_playwright = sync_playwright()  # fail before loading the model when playwright is missing
    example = None if args.video else choose_example(find_examples(args.examples), args.example)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="llavidal_screenshot_") as work:
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "GRADIO_TEMP_DIR": str(Path(work) / "gradio")}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        command = demo_command(args, port, extra)
        print("starting the demo:", " ".join(command[1:]), flush=True)
        demo = Demo(command, env, Path(work) / "demo.log")
        try:
            with start_playwright() as playwright:
                browser = launch_chromium(playwright)  # before the wait: a missing chromium fails fast
                try:
                    demo.wait_until_serving(url, args.start_timeout)
                    page = browser.new_page(viewport=args.viewport)
                    page.goto(url)
                    page.locator(f"#{ELEM_IDS['video']}").wait_for(timeout=60_000)
                    print(f"video: {example.name if example else args.video}", flush=True)
                    print(select_video(page, args, example, demo), flush=True)
                    answers = []
                    for turn, question in enumerate(args.questions, start=1):
                        answer = ask(page, question, turn, args.answer_timeout, demo)
                        answers.append((question, answer))
                        print(f"Q{turn}: {question}\nA{turn}: {answer}", flush=True)
                    screenshot(page, Path(args.out))
                finally:
                    browser.close()
        finally:
            demo.stop()
    return answers


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM as Ctrl-C: both unwind through the finally blocks that stop the demo.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(args, extra)
    except (ScreenshotError, BrowserUnavailable, FileNotFoundError) as err:
        print(f"demo_screenshot: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo_screenshot: interrupted; the demo was stopped", file=sys.stderr)
        return 130
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
