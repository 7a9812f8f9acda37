"""The demo without a browser: video checks, skeleton drawing, handlers (fake engine), the feature
pipeline on a tiny model, and refusal of weights whose feature dims the extractors do not make.
Cancelled answers with a real engine: tests/faults/test_demo_faults.py."""

from __future__ import annotations

import numpy as np
import pytest

from demo_helpers import make_tiny_weights, make_video, make_world_examples

pytest.importorskip("av")


# --------------------------------------------------------------------------------------- video checks


def test_probe_accepts_a_video_and_refuses_bad_ones(tmp_path):
    from llavidal.demo.video_io import VideoLimits, VideoRejected, probe_video

    video = make_video(tmp_path / "clip.mp4", frames=24, fps=8)
    info = probe_video(video)
    assert (info.width, info.height, info.codec) == (64, 64, "h264")
    assert info.duration_s == pytest.approx(3.0, abs=0.2)
    assert info.num_frames == 24

    with pytest.raises(VideoRejected, match="longer than the limit"):
        probe_video(video, VideoLimits(max_upload_mb=10, max_duration_s=1.0))
    with pytest.raises(VideoRejected, match="larger than the limit"):
        probe_video(video, VideoLimits(max_upload_mb=video.stat().st_size / 2**20 / 2, max_duration_s=60))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 20)
    with pytest.raises(VideoRejected, match="could not be read as a video"):
        probe_video(junk)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoRejected, match="empty"):
        probe_video(empty)


def test_skeleton_is_drawn_where_the_joints_are():
    from llavidal.demo.skeleton_draw import draw_skeletons

    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    joints = np.stack([np.full(25, 32.0), np.linspace(60, 4, 25)], axis=-1)
    joints[3] = np.nan  # a missing joint is skipped, with its bones
    drawn = draw_skeletons(frame, [joints])
    assert drawn.shape == frame.shape and frame.sum() == 0  # the input is not modified
    assert drawn[30:34, 30:35].sum() > 0  # on the column of joints
    assert drawn[:, :20].sum() == 0  # nothing far from it
    with pytest.raises(ValueError, match="pixel coordinates"):
        draw_skeletons(frame, [np.zeros((25, 3))])


# --------------------------------------------------------------------------------------- handlers


class FakeEngine:
    """Stands in for InferenceEngine: streams an answer that names the turn and the question."""

    def __init__(self):
        from llavidal.model.modality import ModalityRegistry

        self.modalities = ModalityRegistry.default(["video", "pose"], video_dim=8, video_tokens=4)
        self.requests = []

    def stream(self, request, max_new_tokens=256, temperature=0.0, top_p=1.0):
        self.requests.append((request, max_new_tokens, temperature))
        words = f"turn {len(request.history) + 1}: {request.question}".split()
        for end in range(1, len(words) + 1):
            yield " ".join(words[:end])
            yield " ".join(words[:end])  # the real streamer repeats itself too


class FakeFeatures:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    def extract(self, video_path, progress=None):
        from llavidal.demo.features import DemoFeatures, ModalityOutcome
        from llavidal.demo.video_io import probe_video

        if progress:
            progress(0.5, "halfway")
        return DemoFeatures(
            video=probe_video(video_path), features={"video": np.ones((4, 8), np.float32)},
            outcomes={"video": ModalityOutcome(True, "4 tokens"), "pose": ModalityOutcome(False, "not detected")},
        )

    def describe(self):
        return "fake"


def test_handlers_keep_each_session_s_own_history(tmp_path):
    from llavidal.demo.session import DemoSession
    from llavidal.demo.video_demo import DemoHandlers, DemoSettings, NotReady

    engine = FakeEngine()
    handlers = DemoHandlers(engine, FakeFeatures(tmp_path), DemoSettings(default_max_new_tokens=64))
    video = str(make_video(tmp_path / "clip.mp4"))
    first, second = DemoSession(), DemoSession()
    assert first.session_id != second.session_id

    with pytest.raises(NotReady, match="Upload a video"):
        list(handlers.reply("hello?", first, 0.2, 64))
    steps = []
    first, status, panel, image = handlers.analyse(video, first, lambda f, s: steps.append(s))
    assert first.ready and "Ready" in status and steps == ["halfway"] and image is None
    assert "- **pose**: not used, not detected" in panel
    assert "- **object**: not used (the loaded weights have no object projector)" in panel
    with pytest.raises(NotReady, match="Type a question"):
        list(handlers.reply("   ", first, 0.2, 64))

    transcripts = list(handlers.reply("What happens?", first, 0.3, 5000))
    assert [t[-1]["content"] for t in transcripts[1:-1]] == ["turn", "turn 1:", "turn 1: What", "turn 1: What happens?"]
    assert first.history == [("What happens?", "turn 1: What happens?")]
    request, max_new_tokens, temperature = engine.requests[-1]
    assert max_new_tokens == 1024 and temperature == 0.3  # clamped to the slider's range
    assert request.features is first.features and request.history == []

    handlers.analyse(video, second)
    list(handlers.reply("Who is there?", second, 0.0, 16))
    list(handlers.reply("And then?", first, 0.0, 16))
    assert [q for q, _ in first.history] == ["What happens?", "And then?"]
    assert second.history == [("Who is there?", "turn 1: Who is there?")]
    assert engine.requests[-1][0].history == [("What happens?", "turn 1: What happens?")]

    # A new video starts a new conversation.
    handlers.analyse(video, first)
    assert first.history == [] and first.ready


def test_closing_a_reply_closes_the_engine_stream_and_frees_its_slot(tmp_path):
    from llavidal.demo.session import DemoSession
    from llavidal.demo.video_demo import DemoHandlers, DemoSettings

    engine, closed = FakeEngine(), []

    def endless_stream(request, **kwargs):
        try:
            text = ""
            while True:
                text += "x"
                yield text
        finally:
            closed.append(request.question)

    engine.stream = endless_stream
    handlers = DemoHandlers(engine, FakeFeatures(tmp_path), DemoSettings(concurrency=1))
    session = DemoSession(features={"video": np.ones((4, 8), np.float32)})
    replies = handlers.reply("Stop me?", session, 0.0, 64)
    next(replies), next(replies)
    replies.close()  # what gradio does on cancel
    assert closed == ["Stop me?"] and session.history == []  # a cancelled turn is not remembered
    assert handlers.generation_slots.acquire(blocking=False), "the cancelled answer kept its slot"
    handlers.generation_slots.release()


def test_find_examples_reads_world_folders(tmp_path):
    from llavidal.demo.video_demo import find_examples

    world = make_world_examples(tmp_path / "world", frames=8)
    assert [p.name for p in find_examples([world])] == ["clip_a.mp4", "clip_b.mp4"]
    assert [p.name for p in find_examples([world / "videos"], limit=1)] == ["clip_a.mp4"]
    with pytest.raises(FileNotFoundError, match="no video files"):
        find_examples([tmp_path / "world" / "skeletons"])


def test_defaults_bind_loopback_and_accept_upstream_flags():
    from llavidal.demo.video_demo import parse_demo_args

    args = parse_demo_args(
        ["--model-name", "base", "--projection_path", "w", "--conv-mode", "video-chatgpt_v1",
         "--controller-url", "http://localhost:21001"]
    )
    assert args.host == "127.0.0.1" and args.model_name == "base" and args.projection_path == "w"


# --------------------------------------------------------------------------------------- real extractors


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("tiny_demo_model"))


def test_pipeline_makes_training_shaped_features(tiny_weights, tmp_path):
    from llavidal.demo.features import DemoFeaturePipeline
    from llavidal.model.config import LlavidalConfig

    _, weights = tiny_weights
    registry = LlavidalConfig.from_json_file(weights).registry
    world = make_world_examples(tmp_path / "world", frames=24)
    examples = sorted((world / "videos").iterdir())
    pipeline = DemoFeaturePipeline.for_weights(weights, registry, device="cpu", examples=examples)
    assert "8 frames, 24 tokens" in pipeline.describe()

    # An example from a world folder, as gradio hands it over: a copy under another folder.
    upload = tmp_path / "upload" / "clip_a.mp4"
    upload.parent.mkdir()
    upload.write_bytes(examples[0].read_bytes())
    steps = []
    result = pipeline.extract(upload, lambda fraction, step: steps.append(step))
    assert result.features["video"].shape == (24, 256) and result.features["video"].dtype == np.float32
    assert result.features["pose"].shape == (256, 216)
    assert result.outcomes["pose"].used and "skeleton file" in result.outcomes["pose"].detail
    image = result.skeleton_image
    assert image is not None and image.shape == (320, 320, 3)  # the 64 px frame, enlarged 5 times
    red = (image[..., 0] > 200) & (image[..., 1] < 100) & (image[..., 2] < 100)  # the first body's bones
    assert red[:, 150:175].sum() > 10 and red[:, :140].sum() == 0 and red[:, 185:].sum() == 0  # at x = 32 px x 5
    assert result.features["object"].shape == (2, 8, 256)
    assert result.outcomes["object"].used and result.outcomes["object"].detail.startswith("mug, book (2 objects")
    assert steps[0] == "Checking the video" and steps[-1] == "Done"

    # An upload that is not a world example: pose from MediaPipe only, objects from a detector only.
    other = pipeline.extract(examples[1])
    assert "object" not in other.features and "no object detector" in other.outcomes["object"].detail
    assert set(other.features) <= {"video", "pose"} and other.features["video"].shape == (24, 256)
    if "pose" not in other.features:
        assert not other.outcomes["pose"].used and "not detected" in other.outcomes["pose"].detail
        assert other.skeleton_image is None


def test_weights_with_other_feature_dims_are_refused(tiny_weights, tmp_path):
    from llavidal.demo.features import DemoFeaturePipeline, IncompatibleProjectorError
    from llavidal.model.config import LlavidalConfig

    llm, weights = make_tiny_weights(tmp_path, modalities=("video",), video_dim=1024)
    registry = LlavidalConfig.from_json_file(weights).registry
    expected = r"expects 24 tokens of 1024-d features.*gives 24 tokens of 256-d"
    with pytest.raises(IncompatibleProjectorError, match=expected):
        DemoFeaturePipeline.for_weights(weights, registry, device="cpu")


def test_main_refuses_incompatible_weights_before_serving(tiny_weights, tmp_path, capsys):
    from llavidal.demo.video_demo import main

    llm, weights = make_tiny_weights(tmp_path, modalities=("video",), video_dim=1024)
    code = main(["--model-name", str(llm), "--projection_path", str(weights), "--device", "cpu", "--port", "0"])
    assert code == 2
    assert "1024-d" in capsys.readouterr().err
