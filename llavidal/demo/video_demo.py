"""The LLAVIDAL chat demo: upload a video or an image (or pick an example), ask questions, get streamed answers.

Run as (the upstream command; ``llavidal demo`` takes the same flags):

    python llavidal/demo/video_demo.py --model-name BASE_LLM --projection_path WEIGHTS_DIR
    llavidal demo --projection_path quickstart_out/train --examples quickstart_out/world

Features are computed on the fly by the extractors training used (the vision encoder and pooling that
the weights' feature manifests record; pose from the world's skeleton file or mediapipe; objects from
tracks or a detector; an uploaded image is a 1-frame video, :mod:`llavidal.features.images`), and answers come
from the one inference engine
(:mod:`llavidal.serve.engine`). The server binds 127.0.0.1 unless ``--host`` says otherwise; gradio's
queue serves concurrent users, each with their own history.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Protocol, Sequence

from llavidal.config import arg, command, parse
from llavidal.demo.features import DemoFeatures, ExtractionError
from llavidal.demo.session import DemoSession
from llavidal.demo.video_io import VIDEO_EXTENSIONS, ImageInfo, VideoLimits, VideoRejected
from llavidal.model.modality import ModalityRegistry

if TYPE_CHECKING:
    import gradio as gr
    import numpy as np

    from llavidal.serve.engine import GenerationRequest

logger = logging.getLogger("llavidal.demo")

TITLE = "LLAVIDAL: chat about activities of daily living"
GENERATION_CONCURRENCY_ID = "llavidal-generate"
"""Send and Enter share one queue, so the concurrency limit counts every model call once."""
SLOT_WAIT_S = 300.0
"""Longest a question waits for an earlier answer's generation to end before it is refused."""
MAX_EXAMPLES = 8
# Elements the browser test (and users' own scripts) find by id.
ELEM_IDS = {
    "video": "llavidal-video", "image": "llavidal-image", "status": "llavidal-status", "chatbot": "llavidal-chatbot",
    "question": "llavidal-question", "send": "llavidal-send", "reset": "llavidal-reset",
    "temperature": "llavidal-temperature", "max_new_tokens": "llavidal-max-new-tokens",
    "modalities": "llavidal-modalities", "skeleton": "llavidal-skeleton", "examples": "llavidal-examples",
}


class ChatEngine(Protocol):
    """What the demo needs of :class:`llavidal.serve.engine.InferenceEngine`."""

    modalities: ModalityRegistry

    def stream(
        self, request: "GenerationRequest", max_new_tokens: int = ..., temperature: float = ..., top_p: float = ...,
    ) -> Generator[str, None, None]:
        """The growing answer; closing the generator stops the generation before it returns."""


class FeatureSource(Protocol):
    """What the demo needs of :class:`llavidal.demo.features.DemoFeaturePipeline`."""

    def extract(
        self, video_path: str | os.PathLike, progress: Callable[[float, str], None] | None = None,
    ) -> DemoFeatures: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class DemoSettings:
    """Everything about the demo that is not the model."""

    limits: VideoLimits = VideoLimits()
    examples: tuple[Path, ...] = ()
    default_temperature: float = 0.2
    default_max_new_tokens: int = 256
    max_new_tokens_limit: int = 1024
    top_p: float = 1.0
    concurrency: int = 1
    """Model calls that run at once; further requests wait in gradio's queue (a cancelled answer counts
    until its generation has stopped)."""
    queue_size: int = 64
    model_description: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.default_temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.default_temperature}")
        if not 1 <= self.default_max_new_tokens <= self.max_new_tokens_limit:
            raise ValueError(
                f"max new tokens must be in [1, {self.max_new_tokens_limit}], got {self.default_max_new_tokens}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")


# ---------------------------------------------------------------------------------------------------
# Handlers: plain functions of (inputs, session) so that they are testable without a browser.


class NotReady(ValueError):
    """A question arrived before a video, or an empty one (the message is for the user)."""


class DemoHandlers:
    """The demo's behaviour, independent of the page layout."""

    def __init__(self, engine: ChatEngine, features: FeatureSource, settings: DemoSettings):
        self.engine = engine
        self.features = features
        self.settings = settings
        # gradio frees its concurrency slot when a run is cancelled, before it closes the run's generator;
        # this semaphore is held until the generation has really stopped, so a new question never runs
        # beside an answer that is still winding down.
        self.generation_slots = threading.BoundedSemaphore(settings.concurrency)

    def analyse(
        self, video_path: str | None, session: DemoSession, progress: Callable[[float, str], None] | None = None,
    ) -> tuple[DemoSession, str, str, "np.ndarray | None"]:
        """A new video: extract its features and start a new conversation.

        Returns (session, status markdown, modality panel markdown, skeleton image or None). A video the
        demo cannot use raises :class:`VideoRejected` / :class:`ExtractionError` (shown to the user).
        """
        session.clear()
        if not video_path:
            return session, waiting_status(), modality_panel(None, self.engine.modalities), None
        result = self.features.extract(video_path, progress)
        session.video_name = Path(video_path).name
        session.features = dict(result.features)
        kind = "image" if isinstance(result.video, ImageInfo) else "video"
        status = f"**Ready:** {result.video.describe()}. Ask a question about the {kind}."
        return session, status, modality_panel(result, self.engine.modalities), result.skeleton_image

    def reply(
        self, question: str, session: DemoSession, temperature: float, max_new_tokens: int,
    ) -> Iterator[list[dict[str, str]]]:
        """Stream the chat transcript while the answer grows; the finished turn joins the history.

        Closing this generator (gradio does when the user presses stop, closes the tab or the run is
        cancelled) closes the engine's stream, which stops the generation; the close returns once it has
        stopped. A cancelled turn does not join the history.
        """
        from llavidal.serve.engine import GenerationRequest

        question = (question or "").strip()
        if not session.ready:
            raise NotReady("Upload a video or pick an example first, then ask your question.")
        if not question:
            raise NotReady("Type a question about the video first.")
        max_new_tokens = max(1, min(int(max_new_tokens), self.settings.max_new_tokens_limit))
        temperature = max(0.0, float(temperature))
        request = GenerationRequest(
            question=question, features=session.features, history=list(session.history),
            request_id=session.session_id,
        )
        earlier = session.chat_messages() + [{"role": "user", "content": question}]
        yield [*earlier, {"role": "assistant", "content": ""}]
        answer = ""
        if not self.generation_slots.acquire(timeout=SLOT_WAIT_S):
            raise RuntimeError(f"the model is still busy with earlier answers after {SLOT_WAIT_S:.0f} s; ask again")
        try:
            stream = self.engine.stream(
                request, max_new_tokens=max_new_tokens, temperature=temperature, top_p=self.settings.top_p,
            )
            with closing(stream):  # closed even when this generator is: that is what stops the generation
                for text in stream:
                    if text == answer:
                        continue  # the streamer repeats itself while a multi-byte character is incomplete
                    answer = text
                    yield [*earlier, {"role": "assistant", "content": answer}]
        finally:
            self.generation_slots.release()
        session.history.append((question, answer))
        logger.info("session %s: turn %d answered (%d characters)",
                    session.session_id, len(session.history), len(answer))
        messages = session.chat_messages()
        used = frames_used_line(self.engine, request)
        if used:  # shown under the answer; the history (the next prompt) keeps the answer alone
            messages[-1] = {"role": "assistant", "content": f"{answer}\n\n{used}"}
        yield messages


def frames_used_line(engine: Any, request: "GenerationRequest") -> str:
    """``"frames used: 3, 7, 12"``: the frames the model's temporal sampler kept for this question; "" for a model
    without a sampler (or an engine that cannot tell)."""
    pick = getattr(engine, "sampled_frames", None)
    frames = pick(request) if pick is not None else None
    return f"frames used: {', '.join(str(int(i)) for i in frames)}" if frames else ""


def new_session() -> DemoSession:
    return DemoSession()


def waiting_status() -> str:
    return ("Upload a video or an image (or pick an example below them); its features are computed when it arrives.")


def modality_panel(result: DemoFeatures | None, registry: ModalityRegistry) -> str:
    """Markdown list: which modality the model uses, whether this video gave it, and from what."""
    lines = []
    for name in ("video", "pose", "object"):
        if name not in registry:
            lines.append(f"- **{name}**: not used (the loaded weights have no {name} projector)")
        elif result is None:
            lines.append(f"- **{name}**: waiting for a video")
        elif name not in result.outcomes:
            lines.append(f"- **{name}**: not extracted")
        else:
            outcome = result.outcomes[name]
            lines.append(f"- **{name}**: {'used' if outcome.used else 'not used'}, {_one_line(outcome.detail)}")
    if "pose" in registry and not _mediapipe_installed():
        lines.append(POSE_ON_UPLOADS_NOTE)
    return "\n".join(lines)


POSE_ON_UPLOADS_NOTE = (
    "\n**Pose on uploaded videos needs MediaPipe, which is not installed here.** Its last release that ships a "
    "pose model (`mediapipe==0.10.21`, the extra `llavidal[mediapipe]`) needs numpy<2, so it lives in a separate "
    "environment: run the demo from there for pose on any upload. Here, a clip of an `--examples` world folder "
    "(any clip of its `videos/`, uploaded or picked) uses the world's own skeleton and object tracks."
)


def _mediapipe_installed() -> bool:
    from llavidal.utils.optional import available

    return available("mediapipe")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------
# The page


def build_app(engine: ChatEngine, features: FeatureSource, settings: DemoSettings) -> "gr.Blocks":
    """The gradio Blocks app (not launched)."""
    from llavidal.utils.optional import require

    gr = require("gradio", "the demo")
    handlers = DemoHandlers(engine, features, settings)

    def on_video(video_path: str | None, session: DemoSession, progress=gr.Progress()):
        def report(fraction: float, step: str) -> None:
            progress(fraction, desc=step)

        try:
            session, status, panel, skeleton = handlers.analyse(video_path, session, report)
        except (VideoRejected, ExtractionError) as err:
            # Said twice on purpose: a toast that catches the eye and a status line that stays.
            gr.Warning(str(err), title="Cannot use this video")
            session.clear()
            status = f"**Cannot use this video.** {err}"
            panel, skeleton = modality_panel(None, engine.modalities), None
        return (
            session, status, panel, gr.update(value=skeleton, visible=skeleton is not None), [],
            gr.update(interactive=session.ready, placeholder=_question_placeholder(session.ready)),
        )

    def on_question(question: str, session: DemoSession, temperature: float, max_new_tokens: int):
        try:
            # closing(): gradio's cancel closes this generator; pass that on at once, not whenever the
            # inner one happens to be collected.
            with closing(handlers.reply(question, session, temperature, max_new_tokens)) as replies:
                for messages in replies:
                    yield messages, session, gr.update(value="", interactive=False)
        except NotReady as err:
            raise gr.Error(str(err), title="Not yet", print_exception=False) from None
        except Exception as err:  # the boundary to the user: say what failed instead of a silent stop
            logger.exception("generation failed for session %s", session.session_id)
            raise gr.Error(f"Generation failed: {type(err).__name__}: {err}", title="Generation failed") from None
        yield session.chat_messages(), session, gr.update(interactive=True)

    def on_clear_chat(session: DemoSession) -> DemoSession:
        session.history = []  # the chat's own clear button: same video, new conversation
        return session

    def on_reset(session: DemoSession):
        session.clear()
        return (
            session, None, [], waiting_status(), modality_panel(None, engine.modalities),
            gr.update(value=None, visible=False),
            gr.update(value="", interactive=False, placeholder=_question_placeholder(False)), None,
        )

    with gr.Blocks(title="LLAVIDAL demo", analytics_enabled=False) as app:
        session = gr.State(new_session)  # a callable: called for each browser session that loads the page
        gr.Markdown(f"## {TITLE}\n{settings.model_description}")
        with gr.Row():
            with gr.Column(scale=5):
                video = gr.Video(
                    label="Video", sources=["upload"], elem_id=ELEM_IDS["video"], height=300,
                )
                image = gr.Image(
                    label="... or an image (answered as a 1-frame video)", sources=["upload"], type="filepath",
                    elem_id=ELEM_IDS["image"], height=160,
                )
                if settings.examples:
                    gr.Examples(
                        examples=[[str(p)] for p in settings.examples], inputs=[video],
                        label="Examples (click one)", examples_per_page=MAX_EXAMPLES,
                        elem_id=ELEM_IDS["examples"],
                    )
                status = gr.Markdown(waiting_status(), elem_id=ELEM_IDS["status"])
                with gr.Accordion("Modalities used", open=True):
                    modalities = gr.Markdown(modality_panel(None, engine.modalities), elem_id=ELEM_IDS["modalities"])
                    skeleton = gr.Image(
                        label="Extracted skeleton over a frame", visible=False, interactive=False,
                        elem_id=ELEM_IDS["skeleton"], height=240, format="png",
                    )
                gr.Markdown(f"<small>{features.describe()}</small>")
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(
                    label="Conversation", elem_id=ELEM_IDS["chatbot"], height=430, buttons=["copy", "copy_all"],
                    feedback_options=None,
                )
                with gr.Row():
                    question = gr.Textbox(
                        show_label=False, placeholder=_question_placeholder(False), interactive=False,
                        elem_id=ELEM_IDS["question"], scale=8, lines=1, max_lines=4,
                    )
                    send = gr.Button("Send", variant="primary", elem_id=ELEM_IDS["send"], scale=1, min_width=80)
                with gr.Row():
                    temperature = gr.Slider(
                        0.0, 1.5, value=settings.default_temperature, step=0.05, label="Temperature (0 = greedy)",
                        elem_id=ELEM_IDS["temperature"],
                    )
                    max_new_tokens = gr.Slider(
                        8, settings.max_new_tokens_limit, value=settings.default_max_new_tokens, step=8,
                        label="Max new tokens", elem_id=ELEM_IDS["max_new_tokens"],
                    )
                reset = gr.Button("Reset (new video, new conversation)", elem_id=ELEM_IDS["reset"])

        video.change(
            on_video, inputs=[video, session],
            outputs=[session, status, modalities, skeleton, chatbot, question],
            show_progress="full",
        )
        image.upload(  # an image: the same analysis, as a 1-frame video
            on_video, inputs=[image, session],
            outputs=[session, status, modalities, skeleton, chatbot, question],
            show_progress="full",
        )
        chat_inputs = [question, session, temperature, max_new_tokens]
        chat_outputs = [chatbot, session, question]
        question.submit(on_question, inputs=chat_inputs, outputs=chat_outputs, show_progress="minimal",
                        concurrency_id=GENERATION_CONCURRENCY_ID)
        send.click(on_question, inputs=chat_inputs, outputs=chat_outputs, show_progress="minimal",
                   concurrency_id=GENERATION_CONCURRENCY_ID)
        chatbot.clear(on_clear_chat, inputs=[session], outputs=[session], queue=False)
        reset.click(
            on_reset, inputs=[session],
            outputs=[session, video, chatbot, status, modalities, skeleton, question, image], queue=False,
        )
    app.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return app


def _question_placeholder(ready: bool) -> str:
    return "Ask about the video or image (Enter sends)" if ready else "Upload a video or an image, or pick an example first"


# ---------------------------------------------------------------------------------------------------
# Launcher


def find_examples(folders: Sequence[str | os.PathLike], limit: int | None = MAX_EXAMPLES) -> list[Path]:
    """Video files in ``folders`` (a folder of videos, or a world folder with ``videos/``), sorted; the first
    ``limit`` (the gallery), or all of them with ``limit=None`` (the index that finds an upload's world files)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--examples {folder}: not a folder; pass a folder of videos or a world folder")
        search = folder / "videos" if (folder / "videos").is_dir() else folder
        videos = sorted(p for p in search.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not videos:
            raise FileNotFoundError(f"--examples {folder}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in {search}")
        found.extend(videos)
    return found[:limit]


@dataclass
class DemoArguments:
    """Flags of ``llavidal demo`` / ``llavidal/demo/video_demo.py`` (upstream's spellings are accepted)."""

    projection_path: str = arg(None, "folder written by training (llavidal_config.json + trainable.safetensors), or "
                                     "upstream weights: a file (mm_projector.bin, model.bin, .safetensors) or a folder "
                                     "holding one, with --model-name")
    model_name: str | None = arg(None, "base LLM folder; default: the base recorded in the weights' llavidal_config.json",
                                 aliases=["--base_model"])
    vision_tower_name: str | None = arg(None, "vision encoder (a CLIP folder or 'embedded'); default: the one the "
                                              "video features of training were made with, as the weights record it")
    pose_encoder: str | None = arg(None, "pose encoder checkpoint folder; default: the one training's pose features record")
    object_encoder: str | None = arg(None, "vision encoder of the object crops, when training used another than the video's")
    detector: str | None = arg(None, "object detector for uploads (ssd:PATH or owlv2:FOLDER); examples from a world "
                                     "folder use the world's object tracks")
    conv_mode: str | None = arg(None, "accepted for compatibility; the template recorded with the weights is used")
    device: str | None = arg(None, "torch device (default: cuda when available, else cpu)")
    dtype: str | None = arg(None, "float32, bfloat16 or float16 (default: engine's choice)")
    host: str = arg("127.0.0.1", "interface to bind; 0.0.0.0 exposes the demo to your network")
    port: int = arg(7860, "port to serve on")
    share: bool = arg(False, "ask gradio for a public share link (needs internet)")
    concurrency_count: int = arg(1, "model calls that run at once; other users wait in the queue")
    queue_size: int = arg(64, "requests that may wait in the queue")
    examples: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "folders of example videos or world folders (repeatable)", "action": "extend"})
    max_upload_mb: float = arg(200.0, "largest accepted upload")
    max_duration: float = arg(300.0, "longest accepted video, seconds")
    temperature: float = arg(0.2, "initial temperature slider value")
    max_new_tokens: int = arg(256, "initial max-new-tokens slider value")
    top_p: float = arg(1.0, "initial top-p slider value")
    controller_url: str | None = arg(None, "upstream flag with no effect here (the model runs in this process)")
    model_list_mode: str | None = arg(None, "upstream flag with no effect here")
    moderate: bool = arg(False, "upstream flag with no effect here")
    embed: bool = arg(False, "upstream flag with no effect here")

    def __post_init__(self) -> None:
        if not self.projection_path:
            raise ValueError("--projection_path is required: the weights folder written by training")


def parse_demo_args(argv: Sequence[str] | None = None) -> DemoArguments:
    (args,) = parse((DemoArguments,), argv, prog="llavidal demo", description=__doc__.split("\n\n")[0])
    return args


@command("llavidal demo")
def main(argv: list[str] | None = None) -> int:
    args = parse_demo_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    for flag in ("controller_url", "model_list_mode", "moderate", "embed"):
        if getattr(args, flag):
            logger.warning("--%s has no effect: this demo runs the model in-process", flag.replace("_", "-"))
    settings_limits = VideoLimits(args.max_upload_mb, args.max_duration)
    examples = tuple(find_examples(args.examples))
    app, settings = load_demo(args, settings_limits, examples)
    allowed = sorted({str(p.parent.resolve()) for p in settings.examples})
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: anyone who can reach this machine on port %d can use the demo",
                       args.host, args.port)
    app.launch(
        server_name=args.host, server_port=args.port, share=args.share,
        max_file_size=settings.limits.max_upload_bytes, allowed_paths=allowed, show_error=True,
        ssr_mode=False, footer_links=[], quiet=False,
    )
    return 0


def load_demo(
    args: DemoArguments, limits: VideoLimits, examples: tuple[Path, ...],
) -> tuple["gr.Blocks", DemoSettings]:
    """Load the engine and the extractors, check that they fit, and build the app."""
    from llavidal.demo.features import DemoFeaturePipeline, IncompatibleProjectorError
    from llavidal.serve.engine import InferenceEngine

    weights = Path(args.projection_path).expanduser()
    logger.info("loading the model from %s", weights)
    engine = InferenceEngine.from_pretrained(weights, base_model=args.model_name, device=args.device, dtype=args.dtype)
    options = {"video": {"encoder": args.vision_tower_name}, "pose": {"encoder": args.pose_encoder},
               "object": {"encoder": args.object_encoder, "detector": args.detector}}
    try:
        pipeline = DemoFeaturePipeline.for_weights(
            weights, engine.modalities, limits=limits, options=options, device=args.device,
            # every clip of the --examples folders (held-out ones too), not only the gallery's first few
            examples=tuple(find_examples(args.examples, limit=None)) if args.examples else examples,
        )
    except IncompatibleProjectorError as err:
        from llavidal.model.builder import llavidal_weights_dir

        if llavidal_weights_dir(weights) is not None or args.vision_tower_name:
            raise
        raise IncompatibleProjectorError(
            f"{err} {weights} are upstream weights, which record no feature manifest, so the embedded encoder was "
            "assumed: pass the vision encoder they were trained with (upstream: a CLIP ViT-L/14 folder) as "
            "--vision_tower_name PATH"
        ) from None
    if args.conv_mode:
        logger.info("--conv-mode %s ignored: the weights' recorded template is used", args.conv_mode)
    settings = DemoSettings(
        limits=limits, examples=examples, default_temperature=args.temperature,
        default_max_new_tokens=args.max_new_tokens, top_p=args.top_p,
        concurrency=args.concurrency_count, queue_size=args.queue_size,
        model_description=describe_model(engine, weights),
    )
    return build_app(engine, pipeline, settings), settings


def describe_model(engine: Any, weights: Path) -> str:
    modalities = ", ".join(f"{s.name} ({s.feature_dim}-d)" for s in engine.modalities)
    base = getattr(engine, "base_model", None) or ""
    device = getattr(engine, "device", None) or ""
    parts = [f"weights `{weights.name}`"]
    if base:
        parts.append(f"base `{Path(str(base)).name}`")
    parts.append(f"modalities: {modalities}")
    if device:
        parts.append(f"device: {device}")
    return " · ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
