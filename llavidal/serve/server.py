"""``llavidal serve``: an OpenAI-compatible chat-completions server for the video model.

Run as::

    llavidal serve --projection_path runs/stage3 --port 8000            # http://127.0.0.1:8000/v1
    LLAVIDAL_API_KEY=secret llavidal serve --projection_path runs/stage3 --api_key_env LLAVIDAL_API_KEY

and ask it with the official ``openai`` client::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")  # any key without --api_key_env
    client.chat.completions.create(model="llavidal-stage3", messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///data/world/videos/clip.mp4"}},
        {"type": "text", "text": "What is the person doing?"}]}])

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming, or SSE ``chat.completion.chunk``
events ending with ``data: [DONE]`` when ``stream`` is true) and ``GET /health`` (no key needed).

Message content is a string or a list of parts:

- ``{"type": "text", "text": ...}``;
- ``{"type": "video_url", "video_url": {"url": ...}}`` with a local path, a ``file://`` URL or a
  ``data:video/mp4;base64,...`` URL (as vLLM accepts; remote http URLs are refused: the server does not
  fetch). Features of every modality the weights use are extracted with the extractors rebuilt from the
  recipes the weights record (:class:`llavidal.demo.features.DemoFeaturePipeline`); a video inside a world
  folder (``WORLD/videos/x.mp4``), or a copy of a clip of an ``--examples`` world sent by any path or as a data
  URL, brings its ``skeletons/`` and ``tracks/`` files;
- ``{"type": "image_url", "image_url": {"url": ...}}`` (OpenAI's image part) with a ``data:image/png;base64,...``
  (jpeg, png, webp) URL, a ``file://`` URL or a local path: the image is answered as a 1-frame video (the video
  extractor encodes and pools it as ``llavidal extract video`` does a folder of images; other modalities unused);
- ``{"type": "video_features", "video_features": {"video": "x.safetensors", "pose": ..., "object": ...}}``:
  precomputed feature files (``.safetensors``, ``.npy`` or upstream ``.pkl``), one per modality, as written
  by ``llavidal extract``; when the file's folder has a ``manifest.json`` it must match the recipe the
  weights record.

At most one video, image or feature reference per conversation; as in training records its features go with
the first user turn. Earlier user/assistant messages are the history; system messages are prepended to
the first question (the weights' own template supplies the system prompt). ``temperature``, ``top_p``,
``max_tokens`` (or ``max_completion_tokens``), ``stop``, ``stream`` and ``stream_options.include_usage`` are
honoured; ``seed`` and penalties are accepted and ignored; ``n`` must be 1.

Throughput: all model work runs on one worker thread. Concurrent non-streaming requests with the same
sampling settings are collected for ``--batch_wait_ms`` and run as one ``engine.generate`` batch of at most
``--max_batch_size``. ``--queue_size`` requests may be in the server at once (extracting, waiting or
generating); more are refused with HTTP 429. A streaming request whose client disconnects stops generating
within one decoding step. Bad input gets a 4xx with OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from llavidal.config import arg, command, parse
from llavidal.utils.optional import require

if TYPE_CHECKING:
    from llavidal.demo.features import DemoFeaturePipeline
    from llavidal.model.modality import ModalityRegistry
    from llavidal.serve.engine import GenerationRequest

logger = logging.getLogger("llavidal.serve")

PROG = "llavidal serve"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                  "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "application/octet-stream": ".mp4"}
IMAGE_SUFFIXES = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "image/png": ".png", "image/webp": ".webp"}
JSON_SLACK_BYTES = 1 << 20
"""Request bodies may exceed the upload limit (base64 grows it by 4/3) by this much for the rest of the JSON."""
FEATURE_CACHE_SIZE = 16
"""Videos whose features are kept: a multi-turn chat sends its video again with every turn."""


# ---------------------------------------------------------------------------------------------------
# Flags


@dataclass
class ServeArguments:
    """Flags of ``llavidal serve``."""

    projection_path: str = arg(None, "folder written by training (llavidal_config.json + trainable.safetensors), or "
                                     "upstream weights (a file or a folder holding one) with --model-name",
                               aliases=["--weights"])
    model_name: str | None = arg(None, "base LLM folder; default: the base recorded in the weights' llavidal_config.json",
                                 aliases=["--base_model"])
    served_model_name: str | None = arg(None, "the model id clients send and /v1/models lists; default: "
                                              "'llavidal-' + the weights folder's name")
    host: str = arg("127.0.0.1", "interface to bind; 0.0.0.0 exposes the server (and the files it can read) to your network")
    port: int = arg(8000, "port to serve on (0: any free port, printed at start)")
    api_key_env: str | None = arg(None, "name of an environment variable holding the API key; clients must then send "
                                        "'Authorization: Bearer <key>' (the key is never a flag)")
    max_upload_mb: float = arg(200.0, "largest accepted video (a local file or a data URL's decoded bytes), MiB")
    max_duration: float = arg(300.0, "longest accepted video, seconds")
    queue_size: int = arg(64, "requests in the server at once (extracting, waiting or generating); more get HTTP 429")
    max_batch_size: int = arg(8, "most non-streaming requests generated together in one batch")
    batch_wait_ms: float = arg(10.0, "how long the first waiting request waits for others to join its batch")
    default_max_tokens: int = arg(256, "max new tokens when a request sets no max_tokens")
    max_tokens_limit: int = arg(2048, "largest max_tokens a request may ask for")
    default_temperature: float = arg(0.2, "temperature when a request sets none (0: greedy)")
    allowed_local_media_path: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "folders from which local paths and file:// URLs may be read (repeatable); default: any file the "
                "server can read, which is only safe on 127.0.0.1", "action": "extend"})
    examples: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "world folders (or folders of videos) whose clips, sent by any path or as a data URL, bring their "
                "skeleton and object-tracks files (repeatable)", "action": "extend"})
    allow_feature_mismatch: bool = arg(False, "accept feature files whose manifest differs from the recipe the weights record")
    vision_tower_name: str | None = arg(None, "vision encoder (a CLIP folder or 'embedded'); default: the one the "
                                              "video features of training were made with, as the weights record it")
    pose_encoder: str | None = arg(None, "pose encoder checkpoint folder; default: the one training's pose features record")
    object_encoder: str | None = arg(None, "vision encoder of the object crops, when training used another than the video's")
    detector: str | None = arg(None, "object detector for videos outside a world folder (ssd:PATH or owlv2:FOLDER)")
    device: str | None = arg(None, "torch device (default: cuda when available, else cpu)")
    dtype: str | None = arg(None, "float32, bfloat16 or float16 (default: engine's choice)")
    log_level: str = arg("info", "uvicorn's log level", choices=["critical", "error", "warning", "info", "debug"])

    def __post_init__(self) -> None:
        if not self.projection_path:
            raise ValueError("--projection_path is required: the weights folder written by training")
        if self.queue_size < 1 or self.max_batch_size < 1:
            raise ValueError(f"--queue_size and --max_batch_size must be at least 1, got {self.queue_size} and "
                             f"{self.max_batch_size}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError(f"--default_max_tokens must be in [1, --max_tokens_limit={self.max_tokens_limit}], got "
                             f"{self.default_max_tokens}")
        if not 0.0 <= self.default_temperature <= 2.0:
            raise ValueError(f"--default_temperature must be in [0, 2], got {self.default_temperature}")
        if self.max_upload_mb <= 0 or self.max_duration <= 0:
            raise ValueError("--max_upload_mb and --max_duration must be positive")


@dataclass(frozen=True)
class ServerSettings:
    """Everything about the server that is not the model (built from :class:`ServeArguments`)."""

    served_model_name: str = "llavidal"
    api_key: str | None = None
    max_upload_mb: float = 200.0
    max_duration_s: float = 300.0
    queue_size: int = 64
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    default_temperature: float = 0.2
    allowed_local_media_paths: tuple[Path, ...] = ()
    allow_feature_mismatch: bool = False
    weights_dir: Path | None = None
    """The weights folder, whose recorded feature manifests feature files are checked against."""

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes * 4 // 3 + JSON_SLACK_BYTES


# ---------------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


# ---------------------------------------------------------------------------------------------------
# Messages -> one generation request


@dataclass
class VideoSource:
    """A ``video_url`` part (``url``) or a ``video_features`` part (``feature_files``), and where it was."""

    param: str
    url: str | None = None
    feature_files: dict[str, str] | None = None
    kind: str = "video_url"
    """The part's type: ``video_url``, ``image_url`` (an image, answered as a 1-frame video) or ``video_features``."""


@dataclass
class ParsedChat:
    question: str
    history: list[tuple[str, str]]
    video: VideoSource | None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


def _content_text(content: Any, index: int, role: str) -> tuple[str, list[VideoSource]]:
    """(text of a message's content, the video parts in it)."""
    where = f"messages[{index}].content"
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of content parts, got {type(content).__name__}", where)
    texts, videos = [], []
    for number, part in enumerate(content):
        param = f"{where}[{number}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{param} must be an object with a 'type'", param)
        kind = part["type"]
        if kind in ("text", "input_text"):
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{param}.text must be a string", f"{param}.text")
            texts.append(part["text"])
        elif kind in ("video_url", "image_url", "video_features"):
            if role != "user":
                raise bad_request(f"{param}: a {kind} part may only be sent in a user message, not {role!r}", param)
            value = part.get(kind)
            if kind in ("video_url", "image_url"):
                url = value.get("url") if isinstance(value, dict) else value
                example = "data:video/mp4;base64,..." if kind == "video_url" else "data:image/png;base64,..."
                if not isinstance(url, str) or not url:
                    raise bad_request(f"{param}.{kind}.url must be a non-empty string (a path, file:// or "
                                      f"{example} URL)", f"{param}.{kind}")
                videos.append(VideoSource(param, url=url, kind=kind))
            else:
                if not isinstance(value, dict) or not value or not all(
                        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
                    raise bad_request(f"{param}.video_features must map modality names to feature file paths, e.g. "
                                      '{"video": "clip.safetensors", "pose": "clip_pose.safetensors"}',
                                      f"{param}.video_features")
                videos.append(VideoSource(param, feature_files=dict(value)))
        else:
            raise bad_request(
                f"{param}: unsupported content part type {kind!r}; this server accepts 'text', 'video_url', "
                "'image_url' and 'video_features'", f"{param}.type", "unsupported_content_type")
    return "\n".join(t for t in texts if t), videos


def parse_messages(messages: Any) -> ParsedChat:
    """The question, the earlier (question, answer) turns and the one video of an OpenAI ``messages`` list.

    Consecutive messages of one role are joined; system (and developer) messages are prepended to the first
    question; the conversation must end with a user message."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[list[Any]] = []  # [role, text]
    videos: list[VideoSource] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object with 'role' and 'content'", f"messages[{index}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad_request(f"messages[{index}].role {role!r} is not supported; use system, user or assistant",
                              f"messages[{index}].role")
        text, found = _content_text(message.get("content"), index, role)
        videos.extend(found)
        if role in ("system", "developer"):
            if text:
                system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] = "\n".join(t for t in (turns[-1][1], text) if t)
        else:
            turns.append([role, text])
    if len(videos) > 1:
        raise bad_request(f"{len(videos)} videos were sent ({', '.join(v.param for v in videos)}); the model answers "
                          "about one video per conversation", videos[1].param, "too_many_videos")
    if not turns or turns[0][0] != "user":
        raise bad_request("the conversation must start with a user message (after any system messages)", "messages")
    if turns[-1][0] != "user":
        raise bad_request("the last message must be a user message (the question to answer)", "messages")
    if system:
        turns[0][1] = "\n\n".join([*system, turns[0][1]])
    if not turns[-1][1].strip():
        raise bad_request("the last user message has no text: add a text part with the question",
                          f"messages[{len(messages) - 1}].content")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return ParsedChat(turns[-1][1], history, videos[0] if videos else None)


def sampling_params(body: dict[str, Any], settings: ServerSettings) -> SamplingParams:
    """The request's sampling settings, checked the way OpenAI checks them."""
    def number(name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
        value = body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (low < value if low_open else low <= value) and value <= high):
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise bad_request(f"'{name}' must be a number in {bound}, got {value!r}", name)
        return float(value)

    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= settings.max_tokens_limit:
        raise bad_request(f"'{name}' must be an integer in [1, {settings.max_tokens_limit}], got {max_tokens!r}", name)
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request(f"'n' must be 1 (one answer per request), got {n!r}", "n")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=number("temperature", settings.default_temperature, 0.0, 2.0),
        top_p=number("top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=tuple(stop),
    )


def _stop_kwargs(params: Any) -> dict:
    """The engine ends a row's generation once it has written a stop string; the text is cut by :func:`cut_at_stop`."""
    return {"stop": list(params.stop)} if params.stop else {}


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(``text`` up to the first stop string, whether one was found)."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


# ---------------------------------------------------------------------------------------------------
# Videos and feature files -> features


class FeatureService:
    """Resolves a request's video source to features for the engine (one extraction at a time)."""

    def __init__(self, pipeline: "DemoFeaturePipeline | None", registry: "ModalityRegistry", settings: ServerSettings):
        self.pipeline, self.registry, self.settings = pipeline, registry, settings
        self._cache: collections.OrderedDict[tuple, dict[str, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- sources
    def features(self, source: VideoSource) -> dict[str, np.ndarray]:
        if source.feature_files is not None:
            return self._feature_files(source)
        assert source.url is not None
        if source.url.startswith("data:"):
            with tempfile.TemporaryDirectory(prefix="llavidal-serve-") as folder:
                return self._extract(self._write_data_url(source, Path(folder)), source, local=False)
        path = self._local_path(source.url, f"{source.param}.{source.kind}")
        if source.kind == "image_url" and path.suffix.lower() not in set(IMAGE_SUFFIXES.values()) | {".jpeg"}:
            raise bad_request(f"{source.param}.image_url: {path.name} is not a jpg, png or webp image",
                              f"{source.param}.image_url", "unsupported_media_type")
        return self._extract(path, source, local=True)

    def _local_path(self, url: str, param: str) -> Path:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https", "ftp", "s3", "gs"):
            raise bad_request(f"{param}: {scheme} URLs are not fetched by this server; pass a local path, a file:// "
                              "URL or a data:video/mp4;base64,... URL", param, "remote_url_not_supported")
        if scheme == "file":
            parts = urllib.parse.urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise bad_request(f"{param}: file:// URLs must name a file on this machine, not host "
                                  f"{parts.netloc!r}", param)
            path = Path(urllib.request.url2pathname(parts.path))
        elif len(scheme) > 1:  # (a one-letter scheme is a Windows drive)
            raise bad_request(f"{param}: unsupported URL scheme {scheme!r}; pass a local path, a file:// URL or a "
                              "data:video/mp4;base64,... URL", param)
        else:
            path = Path(url)
        path = path.expanduser()
        allowed = self.settings.allowed_local_media_paths
        if allowed:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(folder) for folder in allowed):
                raise APIError(403, f"{param}: {path} is outside the folders this server may read "
                                    f"(--allowed_local_media_path)", param, "path_not_allowed")
        if not path.is_file():
            raise bad_request(f"{param}: {path} does not exist on the server (paths are read on the server's "
                              "machine; send a data: URL to upload a file)", param, "video_not_found")
        size = path.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise APIError(413, f"{param}: {path.name} is {size / 2**20:.1f} MB, larger than this server's limit of "
                                f"{self.settings.max_upload_mb:g} MB (--max_upload_mb); trim or compress it",
                           param, "video_too_large")
        return path

    def _write_data_url(self, source: VideoSource, folder: Path) -> Path:
        param = f"{source.param}.{source.kind}"
        url = source.url or ""
        image = source.kind == "image_url"
        example = "data:image/png;base64" if image else "data:video/mp4;base64"
        match = DATA_URL.match(url)
        if not match or not match.group("b64"):
            raise bad_request(f"{param}: a data URL must look like {example},<base64 bytes>", param)
        mime = (match.group("mime") or "application/octet-stream").lower()
        if image and mime not in IMAGE_SUFFIXES:
            raise bad_request(f"{param}: the data URL holds {mime!r}, not a jpeg, png or webp image (send "
                              f"{example},...)", param, "unsupported_media_type")
        if not image and not (mime.startswith("video/") or mime == "application/octet-stream"):
            raise bad_request(f"{param}: the data URL holds {mime!r}, not a video (send data:video/mp4;base64,...)",
                              param, "unsupported_media_type")
        payload = url[match.end():]
        if len(payload) * 3 // 4 > self.settings.max_upload_bytes + 3:
            raise APIError(413, f"{param}: the video is about {len(payload) * 3 / 4 / 2**20:.1f} MB, larger than "
                                f"this server's limit of {self.settings.max_upload_mb:g} MB (--max_upload_mb)",
                           param, "video_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{param}: the data URL's payload is not valid base64", param) from None
        path = folder / ("upload" + (IMAGE_SUFFIXES[mime] if image else VIDEO_SUFFIXES.get(mime, ".mp4")))
        path.write_bytes(data)
        return path

    # -------------------------------------------------------------- extraction
    def _extract(self, path: Path, source: VideoSource, local: bool) -> dict[str, np.ndarray]:
        from llavidal.demo.features import DemoFeaturePipeline, ExampleIndex, ExtractionError
        from llavidal.demo.video_io import VideoRejected

        param = f"{source.param}.{source.kind}"
        if self.pipeline is None:
            raise bad_request(f"{param}: this server has no feature extractors; send a video_features part",
                              param)
        # A video inside a world folder (WORLD/videos/x.mp4) brings its skeleton and object tracks; so does a
        # copy of a clip of the --examples folders.
        examples = ExampleIndex([path]) if local and path.parent.name == "videos" else self.pipeline.examples
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = (digest, str(path.resolve().parent.parent) if local and path.parent.name == "videos" else "")
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            pipeline = DemoFeaturePipeline(self.pipeline.extractors, self.pipeline.limits, examples)
            try:
                result = pipeline.extract(path, progress=lambda fraction, step: None)
            except VideoRejected as err:
                status = 413 if "larger than the limit" in str(err) or "longer than the limit" in str(err) else 400
                message = str(err).replace("The demo accepts", "This server accepts")
                raise APIError(status, f"{param}: {message}", param,
                               "video_too_large" if status == 413 else "invalid_video") from None
            except ExtractionError as err:
                raise bad_request(f"{param}: {err}", param, "invalid_video") from None
            for name, outcome in result.outcomes.items():
                logger.info("%s: %s %s", path.name, name, outcome.detail)
            self._cache[key] = result.features
            while len(self._cache) > FEATURE_CACHE_SIZE:
                self._cache.popitem(last=False)
            return result.features

    def _feature_files(self, source: VideoSource) -> dict[str, np.ndarray]:
        from llavidal.data.feature_store import FeatureFileError, FeatureManifest, check_feature_array, load_feature_file

        features = {}
        for name, file in (source.feature_files or {}).items():
            param = f"{source.param}.video_features.{name}"
            if name not in self.registry:
                raise bad_request(f"{param}: {name!r} is not a modality of this model (it uses "
                                  f"{', '.join(self.registry.names())})", param, "unknown_modality")
            path = self._local_path(file, param)
            try:
                array = check_feature_array(load_feature_file(path), path)
                manifest = FeatureManifest.load(path.parent)
            except (FeatureFileError, ValueError, OSError) as err:
                raise bad_request(f"{param}: {err}", param, "invalid_features") from None
            self._check_manifest(name, manifest, path, param)
            features[name] = self._check_shape(name, array.astype(np.float32, copy=False), path, param)
        return features

    def _check_manifest(self, name: str, manifest: Any, path: Path, param: str) -> None:
        if manifest is None or self.settings.weights_dir is None:
            return
        from llavidal.features.extractor import manifest_differences
        from llavidal.model.builder import recorded_manifests

        expected = recorded_manifests(self.settings.weights_dir).get(name)
        differences = manifest_differences(expected, manifest) if expected is not None else []
        if differences and not self.settings.allow_feature_mismatch:
            raise bad_request(
                f"{param}: {path} was made differently from the {name} features the weights were trained on "
                f"({'; '.join(differences)}, per {path.parent / 'manifest.json'}); re-extract it with the recipe the "
                "weights record, or start the server with --allow_feature_mismatch", param, "feature_mismatch")

    def _check_shape(self, name: str, array: np.ndarray, path: Path, param: str) -> np.ndarray:
        spec = self.registry[name]
        rows = array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array
        fits = rows.ndim == 2 and rows.shape[-1] == spec.feature_dim and (
            rows.shape[0] % spec.group_size == 0 and rows.shape[0] > 0 if spec.variable
            else rows.shape[0] == spec.num_tokens)
        if not fits:
            want = (f"a multiple of {spec.group_size} rows" if spec.variable else f"{spec.num_tokens} rows")
            raise bad_request(f"{param}: {path} holds features of shape {tuple(array.shape)}; the {name} projector "
                              f"takes {want} of {spec.feature_dim}-d features", param, "invalid_features")
        return array


# ---------------------------------------------------------------------------------------------------
# The scheduler: one worker thread, batches of non-streaming requests, streams one at a time


@dataclass
class Completion:
    """A finished answer: the text (cut at a stop string), why it ended, and OpenAI's token usage."""

    text: str
    finish_reason: str
    usage: dict[str, int]


@dataclass
class _Job:
    request: "GenerationRequest"
    params: SamplingParams
    future: concurrent.futures.Future
    on_text: Callable[[str], None] | None = None
    """For a stream: called with the growing text; ``None`` for a batched request."""
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


class Scheduler:
    """Runs every generation on one worker thread; waiting non-streaming requests with equal sampling settings
    are generated together (``engine.generate(batch)``). Futures resolve to :class:`Completion`; token counts
    are made on the worker thread too, because a tokenizer must not be used from two threads at once."""

    def __init__(self, engine: Any, max_batch_size: int = 8, batch_wait_s: float = 0.01, queue_size: int = 64):
        self.engine, self.max_batch_size, self.batch_wait_s = engine, max_batch_size, batch_wait_s
        self._slots = threading.BoundedSemaphore(queue_size)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: collections.deque[_Job] = collections.deque()
        self.stats = {"generate_calls": 0, "batched_requests": 0, "largest_batch": 0, "streams": 0,
                      "cancelled_streams": 0, "in_server": 0}
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="llavidal-serve-worker", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- admission
    def try_admit(self) -> Callable[[], None] | None:
        """A release function when a slot is free (call it once the request is done), else ``None``."""
        if not self._slots.acquire(blocking=False):
            return None
        self._count("in_server", 1)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._count("in_server", -1)
                self._slots.release()
        return release

    def _count(self, key: str, delta: int) -> None:
        with self._stats_lock:
            self.stats[key] += delta

    # -------------------------------------------------------------- submission
    def submit(self, request: "GenerationRequest", params: SamplingParams) -> concurrent.futures.Future:
        job = _Job(request, params, concurrent.futures.Future())
        self._queue.put(job)
        return job.future

    def submit_stream(self, request: "GenerationRequest", params: SamplingParams,
                      on_text: Callable[[str], None]) -> _Job:
        job = _Job(request, params, concurrent.futures.Future(), on_text=on_text)
        self._queue.put(job)
        return job

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    # -------------------------------------------------------------- worker
    def _next(self, timeout: float | None) -> _Job | None:
        if self._pending:
            return self._pending.popleft()
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _run(self) -> None:
        while True:
            job = self._next(None)
            if job is None:
                return
            if job.on_text is not None:
                self._stream(job)
                continue
            batch, deferred = [job], []
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    other = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if other is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if other.on_text is None and other.params == job.params:
                    batch.append(other)
                else:
                    deferred.append(other)
            self._pending.extendleft(reversed(deferred))
            self._generate(batch)

    def _generate(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        params = batch[0].params
        with self._stats_lock:
            self.stats["generate_calls"] += 1
            self.stats["batched_requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            answers = self.engine.generate([job.request for job in batch], max_new_tokens=params.max_tokens,
                                           temperature=params.temperature, top_p=params.top_p,
                                           batch_size=len(batch), **_stop_kwargs(params))
        except Exception as err:  # noqa: BLE001 - handed to each request
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            # One bad request must not fail the others: generate them one by one.
            logger.warning("a batch of %d failed (%s); generating its requests one by one", len(batch), err)
            for job in batch:
                self._generate_one(job)
            return
        for job, answer in zip(batch, answers):
            job.future.set_result(self._finish(job, *cut_at_stop(answer, job.params.stop)))

    def _generate_one(self, job: _Job) -> None:
        params = job.params
        self._count("generate_calls", 1)
        try:
            (answer,) = self.engine.generate([job.request], max_new_tokens=params.max_tokens,
                                             temperature=params.temperature, top_p=params.top_p, batch_size=1,
                                             **_stop_kwargs(params))
        except Exception as err:  # noqa: BLE001
            job.future.set_exception(err)
        else:
            job.future.set_result(self._finish(job, *cut_at_stop(answer, params.stop)))

    def _finish(self, job: _Job, text: str, stopped: bool) -> Completion:
        tokenizer = getattr(self.engine, "tokenizer", None)
        try:
            prompt, _ = self.engine.build_prompt(job.request)
            prompt_tokens = _token_count(tokenizer, prompt)
        except Exception:  # noqa: BLE001 - usage is informative; an engine without build_prompt still answers
            prompt_tokens = _token_count(tokenizer, job.request.question)
        # Re-encoding the decoded text may split it differently; the model made at most max_tokens.
        completion_tokens = min(_token_count(tokenizer, text), job.params.max_tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        finish_reason = "stop" if stopped or completion_tokens < job.params.max_tokens else "length"
        return Completion(text, finish_reason, usage)

    def _stream(self, job: _Job) -> None:
        if job.cancelled.is_set():  # the client left while it waited
            job.future.cancel()
        if not job.future.set_running_or_notify_cancel():
            return
        self._count("streams", 1)
        params = job.params
        stream: Iterator[str] = self.engine.stream(job.request, max_new_tokens=params.max_tokens,
                                                   temperature=params.temperature, top_p=params.top_p)
        text, stopped = "", False
        try:
            for text in stream:
                if job.cancelled.is_set():
                    self._count("cancelled_streams", 1)
                    break
                text, stopped = cut_at_stop(text, params.stop)
                assert job.on_text is not None
                job.on_text(text)
                if stopped:
                    break
        except Exception as err:  # noqa: BLE001
            job.future.set_exception(err)
            return
        finally:
            stream.close()  # stops the generation thread before returning (engine.stream's contract)
        job.future.set_result(self._finish(job, text, stopped))


# ---------------------------------------------------------------------------------------------------
# The app


def _token_count(tokenizer: Any, text: str) -> int:
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class ChatService:
    """Request handling, independent of HTTP (the FastAPI routes are thin)."""

    def __init__(self, engine: Any, features: FeatureService, settings: ServerSettings):
        self.engine, self.features, self.settings = engine, features, settings
        self.scheduler = Scheduler(engine, settings.max_batch_size, settings.batch_wait_s, settings.queue_size)
        # One extraction at a time: extractors hold encoders on the device and are not shared across threads.
        self.extract_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llavidal-serve-extract")
        self.created = int(time.time())

    def close(self) -> None:
        self.scheduler.close()
        self.extract_pool.shutdown(wait=False, cancel_futures=True)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.settings.served_model_name, "object": "model",
                                             "created": self.created, "owned_by": "llavidal"}]}

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required (see GET /v1/models)", "model")
        if model != self.settings.served_model_name:
            raise APIError(404, f"the model {model!r} does not exist on this server; it serves "
                                f"{self.settings.served_model_name!r}", "model", "model_not_found")

    async def prepare(self, body: dict[str, Any]) -> tuple["GenerationRequest", SamplingParams]:
        from llavidal.serve.engine import GenerationRequest

        self.check_model(body)
        chat = parse_messages(body.get("messages"))
        params = sampling_params(body, self.settings)
        features: dict[str, np.ndarray] = {}
        if chat.video is not None:
            loop = asyncio.get_running_loop()
            features = await loop.run_in_executor(self.extract_pool, self.features.features, chat.video)
        request_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        return GenerationRequest(chat.question, features, chat.history, request_id=request_id), params

    async def complete(self, request: "GenerationRequest", params: SamplingParams) -> dict[str, Any]:
        completion: Completion = await asyncio.wrap_future(self.scheduler.submit(request, params))
        return {
            "id": request.request_id, "object": "chat.completion", "created": int(time.time()),
            "model": self.settings.served_model_name, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "logprobs": None, "finish_reason": completion.finish_reason}],
            "usage": completion.usage,
        }

    async def stream(self, request: "GenerationRequest", params: SamplingParams, include_usage: bool,
                     release: Callable[[], None]):
        """SSE events of ``chat.completion.chunk`` objects, then ``data: [DONE]``; leaving early (the client
        disconnected) cancels the generation."""
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        job = self.scheduler.submit_stream(request, params, lambda text: loop.call_soon_threadsafe(texts.put_nowait, text))
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(texts.put_nowait, None))
        job.future.add_done_callback(lambda _: release())
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, usage: dict | None = None) -> str:
            event = {"id": request.request_id, "object": "chat.completion.chunk", "created": created,
                     "model": self.settings.served_model_name, "system_fingerprint": None,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if include_usage:
                event["usage"] = usage
            return f"data: {json.dumps(event)}\n\n"

        sent = ""
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                text = await texts.get()
                if text is None:
                    break
                # Each item is the whole text so far; a text that does not extend what was sent (the decoder
                # revised a partial character) waits for the next one.
                if text.startswith(sent) and len(text) > len(sent):
                    yield chunk({"content": text[len(sent):]})
                    sent = text
            try:
                completion: Completion = await asyncio.wrap_future(job.future)
            except Exception as err:  # headers are sent: the error goes in the stream
                logger.exception("request %s failed while streaming", request.request_id)
                yield f"data: {json.dumps(_error_for(err).body())}\n\n"
                return
            if completion.text.startswith(sent) and len(completion.text) > len(sent):
                yield chunk({"content": completion.text[len(sent):]})
            yield chunk({}, completion.finish_reason)
            if include_usage:
                event = {"id": request.request_id, "object": "chat.completion.chunk", "created": created,
                         "model": self.settings.served_model_name, "choices": [], "usage": completion.usage}
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a disconnected client: the worker closes the engine's stream at its next token
            if job.future.done():
                release()


def _error_for(err: BaseException) -> APIError:
    """An engine error as an API error: a user's input the model cannot take is a 400, anything else a 500."""
    from llavidal.model.modality import SpliceError

    if isinstance(err, APIError):
        return err
    if isinstance(err, SpliceError):
        return bad_request(str(err), "messages", "invalid_features")
    return APIError(500, f"generation failed ({type(err).__name__}: {err}); see the server's log", None, "server_error")


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 before they are buffered."""

    def __init__(self, app: Any, limit: int, max_upload_mb: float):
        self.app, self.limit, self.max_upload_mb = app, limit, max_upload_mb

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        body = json.dumps(APIError(413, f"the request body is larger than this server accepts (videos up to "
                                        f"{self.max_upload_mb:g} MB, --max_upload_mb)", "messages",
                                   "request_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def create_app(engine: Any, features: FeatureService, settings: ServerSettings) -> Any:
    """The FastAPI app serving ``engine`` (tests build it around a tiny model)."""
    fastapi = require("fastapi", "llavidal serve", extra="serve")
    from fastapi.responses import JSONResponse, StreamingResponse

    service = ChatService(engine, features, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any):
        yield
        service.close()

    app = fastapi.FastAPI(title="LLAVIDAL", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                          lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes, max_upload_mb=settings.max_upload_mb)

    @app.exception_handler(APIError)
    async def api_error(_: Any, err: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        if err.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(404)
    async def not_found(request: Any, _: Any) -> JSONResponse:
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}; this server has "
                                          "GET /v1/models and POST /v1/chat/completions", code="not_found").body(),
                            status_code=404)

    def authorize(request: Any) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key this "
                                "server was started with", code="invalid_api_key")

    # Plain (Starlette) routes: the handlers read the body themselves, so that every error has OpenAI's shape.
    async def health(_: Any) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": settings.served_model_name, **service.scheduler.stats})

    async def models(request: Any) -> JSONResponse:
        authorize(request)
        return JSONResponse(service.models())

    async def chat_completions(request: Any) -> Any:
        authorize(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        release = service.scheduler.try_admit()
        if release is None:
            raise APIError(429, f"the server is busy ({settings.queue_size} requests in progress, --queue_size); "
                                "retry shortly", code="queue_full", type="rate_limit_error")
        streaming = False
        try:
            generation, params = await service.prepare(body)
            if body.get("stream"):
                options = body.get("stream_options") or {}
                include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
                streaming = True
                return StreamingResponse(service.stream(generation, params, include_usage, release),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            try:
                return JSONResponse(await service.complete(generation, params))
            except APIError:
                raise
            except Exception as err:  # mapped to an OpenAI error below
                mapped = _error_for(err)
                if mapped.status >= 500:
                    logger.exception("request %s failed", generation.request_id)
                raise mapped from None
        finally:
            if not streaming:
                release()

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


# ---------------------------------------------------------------------------------------------------
# Running it


class BackgroundServer:
    """Serve ``app`` with uvicorn in a thread (tests, notebooks): ``with BackgroundServer(app) as server:
    server.base_url``; ``port=0`` picks a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        uvicorn = require("uvicorn", "llavidal serve", extra="serve")
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    timeout_graceful_shutdown=5))
        self.host = host
        self.thread = threading.Thread(target=self.server.run, name="llavidal-serve-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def settings_from_args(args: ServeArguments, weights: Path) -> ServerSettings:
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise ValueError(f"--api_key_env {args.api_key_env}: that environment variable is not set (or empty); "
                             f"export {args.api_key_env}=<key>, or drop the flag to serve without a key")
    name = args.served_model_name or "llavidal-" + (weights.stem if weights.is_file() else weights.resolve().name)
    return ServerSettings(
        served_model_name=name, api_key=api_key, max_upload_mb=args.max_upload_mb, max_duration_s=args.max_duration,
        queue_size=args.queue_size, max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
        default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit,
        default_temperature=args.default_temperature,
        allowed_local_media_paths=tuple(Path(p).expanduser().resolve() for p in args.allowed_local_media_path),
        allow_feature_mismatch=args.allow_feature_mismatch, weights_dir=weights,
    )


def example_videos(folder: str | os.PathLike) -> list[Path]:
    """The videos of a world folder (``videos/``) or of a plain folder."""
    from llavidal.demo.video_io import VIDEO_EXTENSIONS

    root = Path(folder).expanduser()
    videos = root / "videos" if (root / "videos").is_dir() else root
    if not videos.is_dir():
        raise ValueError(f"--examples {folder}: not a folder; pass a world folder (with videos/) or a folder of videos")
    return sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def load_server(args: ServeArguments) -> tuple[Any, ServerSettings]:
    """Load the engine and the extractors, check that they fit the weights, and build the app."""
    from llavidal.demo.features import DemoFeaturePipeline, IncompatibleProjectorError
    from llavidal.demo.video_io import VideoLimits
    from llavidal.serve.engine import InferenceEngine

    require("fastapi", "llavidal serve", extra="serve")
    require("uvicorn", "llavidal serve", extra="serve")
    weights = Path(args.projection_path).expanduser()
    settings = settings_from_args(args, weights)  # a missing key fails before the model loads
    logger.info("loading the model from %s", weights)
    engine = InferenceEngine.from_pretrained(weights, base_model=args.model_name, device=args.device, dtype=args.dtype)
    options = {"video": {"encoder": args.vision_tower_name}, "pose": {"encoder": args.pose_encoder},
               "object": {"encoder": args.object_encoder, "detector": args.detector}}
    examples = [video for folder in args.examples for video in example_videos(folder)]
    try:
        pipeline = DemoFeaturePipeline.for_weights(weights, engine.modalities,
                                                   limits=VideoLimits(args.max_upload_mb, args.max_duration),
                                                   options=options, device=args.device, examples=examples)
    except IncompatibleProjectorError as err:
        raise IncompatibleProjectorError(f"{err} (video_url parts need extractors that fit the weights; pass the "
                                         "encoders training used, e.g. --vision_tower_name PATH)") from None
    logger.info("%s", pipeline.describe())
    return create_app(engine, FeatureService(pipeline, engine.modalities, settings), settings), settings


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    (args,) = parse((ServeArguments,), argv, prog=PROG, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn = require("uvicorn", "llavidal serve", extra="serve")
    app, settings = load_server(args)
    if args.host not in LOOPBACK:
        logger.warning("binding %s: anyone who can reach this machine on port %d can use the model%s", args.host,
                       args.port, "" if settings.api_key else " (no --api_key_env)")
        if not settings.allowed_local_media_paths:
            logger.warning("and have it read any video file the server can read; restrict that with "
                           "--allowed_local_media_path DIR")
    logger.info("serving %r: POST http://%s:%s/v1/chat/completions (GET /v1/models)", settings.served_model_name,
                args.host, args.port or "<port>")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
