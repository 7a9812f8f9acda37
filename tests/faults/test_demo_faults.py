"""Fault cases of the demo (issue 19): a cancelled answer stops generating, and the limits that already
held (loopback bind, upload size and duration) stay.

The model is the tiny one the demo tests use (``demo_helpers.make_tiny_weights``), loaded through
``InferenceEngine.from_pretrained`` as the demo loads it, with its end-of-text token suppressed so that
an answer left alone would run to ``max_new_tokens``: any early end is the cancellation's doing. Tokens
are counted at the LM head (one call per generated token).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from demo_helpers import make_tiny_weights, make_video
from llavidal.serve.engine import GenerationRequest, InferenceEngine

torch.set_num_threads(1)  # the fault suite shares two cores

MAX_NEW_TOKENS = 1024  # the demo's largest; at ~2 ms a token an unstopped answer runs for seconds
FEW_TOKENS = MAX_NEW_TOKENS // 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_weights(tmp_path_factory.mktemp("demo_faults"), modalities=("video",))


class EndlessEngine:
    """An engine whose answers never end by themselves; ``tokens`` counts the tokens generated, in all
    and by the thread that generated them."""

    def __init__(self, weights: Path):
        self.engine = InferenceEngine.from_pretrained(str(weights), device="cpu")
        self.tokens = 0
        self.tokens_by_thread: Counter[threading.Thread] = Counter()
        end_of_text = self.engine.tokenizer.eos_token_id

        def count_and_suppress_end(module, args, logits):
            self.tokens += 1
            self.tokens_by_thread[threading.current_thread()] += 1
            logits = logits.clone()
            logits[..., end_of_text] = float("-inf")
            return logits

        self.engine.model.llm.get_output_embeddings().register_forward_hook(count_and_suppress_end)

    def features(self) -> dict[str, np.ndarray]:
        spec = self.engine.modalities["video"]
        rows = spec.num_tokens  # what the demo's video extractor gives these weights
        return {"video": np.random.default_rng(0).standard_normal((rows, spec.feature_dim)).astype(np.float32)}

    def request(self, request_id: str = "cancelled") -> GenerationRequest:
        return GenerationRequest("What is the person doing?", self.features(), request_id=request_id)


@pytest.fixture
def endless(tiny_model) -> EndlessEngine:
    return EndlessEngine(tiny_model[1])


@contextmanager
def new_threads():
    """Collects the threads started inside the block (the generation threads)."""
    before = set(threading.enumerate())
    started: list[threading.Thread] = []
    yield started
    started.extend(t for t in threading.enumerate() if t not in before)


def assert_stopped(threads: list[threading.Thread], endless: EndlessEngine, what: str) -> None:
    for thread in threads:
        thread.join(timeout=1.0)
    assert not [t for t in threads if t.is_alive()], f"{what}: the generation thread is still running 1 s later"
    generated = endless.tokens
    time.sleep(0.2)
    assert endless.tokens == generated, f"{what}: tokens are still being generated after the cancel"
    assert generated < FEW_TOKENS, f"{what}: {generated} tokens generated, expected a few (max_new_tokens {MAX_NEW_TOKENS})"


# --------------------------------------------------------------------------------------- case 3: cancels


def test_closing_a_stream_stops_its_generation(endless):
    with new_threads() as threads:
        stream = endless.engine.stream(endless.request(), max_new_tokens=MAX_NEW_TOKENS)
        first, second = next(stream), next(stream)
    assert threads, "the stream should generate in a thread"
    assert isinstance(first, str) and second.startswith(first)

    started = time.monotonic()
    stream.close()  # what gradio does on stop, a closed tab or a cancelled run
    assert time.monotonic() - started < 1.0, "closing the stream should return within a decoding step or two"
    assert not [t for t in threads if t.is_alive()], "close() returned while the generation thread still ran"
    assert_stopped(threads, endless, "a closed stream")


def test_repeated_cancels_leave_no_threads_behind(endless):
    baseline = threading.active_count()
    for index in range(6):
        stream = endless.engine.stream(endless.request(f"cancel-{index}"), max_new_tokens=MAX_NEW_TOKENS)
        next(stream)
        stream.close()
    assert threading.active_count() == baseline, (
        f"{threading.active_count() - baseline} generation threads outlived their cancelled requests"
    )
    generated = endless.tokens
    time.sleep(0.2)
    assert endless.tokens == generated and generated < 6 * FEW_TOKENS


def test_a_cancelled_demo_answer_stops_and_holds_its_slot_until_stopped(endless):
    """Through the demo's handlers: a user stops an answer while another user's question is waiting.

    gradio frees its concurrency slot as soon as it cancels a run and closes the run's generator only
    afterwards; the waiting question must not start generating before the cancelled one has stopped.
    """
    from llavidal.demo.session import DemoSession
    from llavidal.demo.video_demo import DemoHandlers, DemoSettings

    handlers = DemoHandlers(endless.engine, features=None, settings=DemoSettings(concurrency=1))
    cancelled, waiting = DemoSession(features=endless.features()), DemoSession(features=endless.features())
    cancelled_still_generating: list[bool] = []  # seen by the waiting question when its answer began

    with new_threads() as threads:
        replies = handlers.reply("What is the person doing?", cancelled, 0.0, MAX_NEW_TOKENS)
        next(replies)  # the question, with an empty answer
        partial = next(replies)
    assert partial[-1]["role"] == "assistant" and partial[-1]["content"]

    def second_user() -> None:
        for transcript in handlers.reply("And then?", waiting, 0.0, 8):
            if transcript[-1]["role"] == "assistant" and transcript[-1]["content"] and not cancelled_still_generating:
                cancelled_still_generating.append(any(t.is_alive() for t in threads))

    other = threading.Thread(target=second_user, name="second-user")
    other.start()
    time.sleep(0.5)  # room for the second question to start generating too early
    replies.close()  # the cancelled answer kept generating while nobody read it: that is fine
    generated = sum(endless.tokens_by_thread[t] for t in threads)
    assert not [t for t in threads if t.is_alive()], "the cancelled answer's generation is still running"
    other.join(timeout=30)
    assert not other.is_alive()
    assert cancelled_still_generating == [False], "the waiting question generated beside the cancelled answer"
    assert sum(endless.tokens_by_thread[t] for t in threads) == generated < MAX_NEW_TOKENS
    assert endless.tokens - generated == 8, "only the waiting question's 8 tokens besides the cancelled ones"
    assert cancelled.history == [] and [q for q, _ in waiting.history] == ["And then?"]


def test_the_page_s_question_handler_passes_the_cancel_on(endless, tmp_path):
    """The function gradio runs (and closes on cancel) for Send / Enter, from the built page."""
    from llavidal.demo.session import DemoSession
    from llavidal.demo.video_demo import DemoSettings, build_app

    class NoFeatures:
        def extract(self, video_path, progress=None):
            raise AssertionError("no video is analysed in this test")

        def describe(self):
            return "none"

    app = build_app(endless.engine, NoFeatures(), DemoSettings())
    (on_question,) = {f.fn for f in app.fns.values() if f.name == "on_question"}
    session = DemoSession(features=endless.features())
    with new_threads() as threads:
        run = on_question("What is the person doing?", session, 0.0, MAX_NEW_TOKENS)
        next(run)
        messages, _, _ = next(run)
    assert messages[-1]["content"]
    run.close()
    assert not [t for t in threads if t.is_alive()], "closing the page's handler left its generation running"
    assert_stopped(threads, endless, "a cancelled page run")


# --------------------------------------------------------------------------------------- held already


UPLOAD_LIMIT_MB = 0.004  # 4.1 kB: the 1 s test clips (about 2 kB) fit, the 1 s clip of 48 larger frames not
DURATION_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def served_demo(tiny_model):
    """``llavidal demo`` as a user starts it, up to the call that would start serving (recorded instead)."""
    import gradio

    from llavidal.cli import main

    llm, weights = tiny_model
    launched: dict = {}

    def record_launch(app, **kwargs):
        launched.update(kwargs, app=app)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradio.Blocks, "launch", record_launch)
        code = main(["demo", "--model-name", str(llm), "--projection_path", str(weights), "--device", "cpu",
                     "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-duration", str(DURATION_LIMIT_S)])
    assert code == 0 and launched, "llavidal demo should have started serving"
    return launched


def test_demo_binds_loopback_and_hands_its_upload_limit_to_gradio(served_demo):
    assert served_demo["server_name"] == "127.0.0.1"
    assert not served_demo["share"]
    assert served_demo["max_file_size"] == int(UPLOAD_LIMIT_MB * 2**20)


@pytest.mark.parametrize("clip", ["too_long", "too_large", "fine"])
def test_demo_refuses_uploads_over_its_limits(served_demo, tmp_path, clip):
    pytest.importorskip("av")
    from llavidal.demo.session import DemoSession

    frames, size, fps = {"too_long": (8, 64, 2), "too_large": (48, 128, 48), "fine": (8, 64, 8)}[clip]
    video = make_video(tmp_path / f"{clip}.mp4", frames=frames, size=size, fps=fps)
    limit_bytes = UPLOAD_LIMIT_MB * 2**20
    assert (video.stat().st_size > limit_bytes) == (clip == "too_large"), "the test clip's size has drifted"

    (on_video,) = {f.fn for f in served_demo["app"].fns.values() if f.name == "on_video"}
    refusal = {"too_long": "longer than the limit", "too_large": "larger than the limit"}.get(clip)
    with warnings.catch_warnings(record=True) as toasts:  # gr.Warning outside a page is a UserWarning
        warnings.simplefilter("always")
        session, status, *_ = on_video(str(video), DemoSession(), progress=lambda *args, **kwargs: None)
    if refusal:
        assert status.startswith("**Cannot use this video.**") and refusal in status
        assert any(refusal in str(toast.message) for toast in toasts), "the refusal should also pop up"
        assert not session.ready
    else:
        assert status.startswith("**Ready:**") and session.ready
