"""``llavidal serve`` through the official ``openai`` client, against a real server on 127.0.0.1 serving a tiny
model: video_url parts (a world video by path, a video as a data URL), feature files, streaming, batching of
concurrent clients, the API key, limits and errors, and the project's judge using the server as --base_url."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from demo_helpers import make_tiny_weights, make_world_examples
from fake_openai_server import PROXY_VARIABLES

pytest.importorskip("av")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

SERVED = "llavidal-tiny"
QUESTION = "What is the person doing?"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Clients must talk to the local server directly, never through a proxy from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world_examples(tmp_path_factory.mktemp("serve_world"), frames=24)


@pytest.fixture(scope="module")
def served(tmp_path_factory, world):
    """(app, settings, base_url) of a real server of a tiny model on a free port of 127.0.0.1."""
    from llavidal.serve.server import BackgroundServer, ServeArguments, load_server

    llm, weights = make_tiny_weights(tmp_path_factory.mktemp("serve_model"))
    # Batches of two, so that two concurrent clients fill a batch at once and single requests wait little.
    args = ServeArguments(projection_path=str(weights), model_name=str(llm), device="cpu", port=0,
                          served_model_name=SERVED, max_batch_size=2, batch_wait_ms=300, default_temperature=0.0,
                          examples=[str(world)])
    app, settings = load_server(args)
    with BackgroundServer(app) as server:
        yield app, settings, server.base_url


def client_for(base_url: str, api_key: str = "none") -> "openai.OpenAI":
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


def video_message(url: str, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                          {"type": "text", "text": question}]}]


def ask(client, messages, **kwargs):
    return client.chat.completions.create(model=SERVED, messages=messages, temperature=0, max_tokens=8, **kwargs)


# --------------------------------------------------------------------------------------- answers


def test_video_url_by_path_and_data_url(served, world):
    app, _, base_url = served
    client = client_for(base_url)
    assert [model.id for model in client.models.list().data] == [SERVED]

    text_only = ask(client, [{"role": "user", "content": QUESTION}])
    by_path = ask(client, video_message(str(world / "videos" / "clip_b.mp4")))
    assert by_path.object == "chat.completion" and by_path.model == SERVED
    assert isinstance(by_path.choices[0].message.content, str)
    assert by_path.choices[0].finish_reason in ("stop", "length")
    # The video is not silently ignored: its token spans are in the prompt (24 video tokens at least).
    assert by_path.usage.prompt_tokens >= text_only.usage.prompt_tokens + 24
    assert by_path.usage.total_tokens == by_path.usage.prompt_tokens + by_path.usage.completion_tokens

    # The same video as a data URL (no world files beside it, like clip_b): the same features, the same answer.
    data = base64.b64encode((world / "videos" / "clip_b.mp4").read_bytes()).decode()
    by_data = ask(client, video_message(f"data:video/mp4;base64,{data}"))
    assert by_data.choices[0].message.content == by_path.choices[0].message.content
    assert by_data.usage.prompt_tokens == by_path.usage.prompt_tokens

    # A world video by file:// URL brings its skeleton and object tracks: object spans join the prompt.
    world_clip = ask(client, video_message((world / "videos" / "clip_a.mp4").as_uri()))
    assert world_clip.usage.prompt_tokens >= by_path.usage.prompt_tokens + 16  # 2 objects x 8 tokens

    # The same world clip uploaded as a data URL is recognised among the --examples: the same features.
    data = base64.b64encode((world / "videos" / "clip_a.mp4").read_bytes()).decode()
    uploaded = ask(client, video_message(f"data:video/mp4;base64,{data}"))
    assert uploaded.usage.prompt_tokens == world_clip.usage.prompt_tokens
    assert uploaded.choices[0].message.content == world_clip.choices[0].message.content

    # Multi-turn: the history is in the prompt.
    follow_up = ask(client, video_message(str(world / "videos" / "clip_b.mp4")) + [
        {"role": "assistant", "content": by_path.choices[0].message.content or "walking"},
        {"role": "user", "content": "And then?"}])
    assert follow_up.usage.prompt_tokens > by_path.usage.prompt_tokens


def test_feature_file_part(served, world, tmp_path):
    from llavidal.data.feature_store import save_features
    from llavidal.serve.server import VideoSource

    app, _, base_url = served
    service = app.state.service
    features = service.features.features(VideoSource("x", url=str(world / "videos" / "clip_b.mp4")))
    files = {}
    for name, array in features.items():
        files[name] = str(tmp_path / f"clip_b_{name}.safetensors")
        save_features(files[name], array)
    client = client_for(base_url)
    by_files = ask(client, [{"role": "user", "content": [{"type": "video_features", "video_features": files},
                                                         {"type": "text", "text": QUESTION}]}])
    by_video = ask(client, video_message(str(world / "videos" / "clip_b.mp4")))
    assert by_files.choices[0].message.content == by_video.choices[0].message.content
    assert by_files.usage.prompt_tokens == by_video.usage.prompt_tokens

    save_features(tmp_path / "wrong.safetensors", features["video"][:5])
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, [{"role": "user", "content": [
            {"type": "video_features", "video_features": {"video": str(tmp_path / "wrong.safetensors")}},
            {"type": "text", "text": QUESTION}]}])
    assert caught.value.code == "invalid_features" and "the video projector takes 24 rows" in caught.value.message


def test_streaming_matches_the_answer_and_ends_with_done(served, world):
    _, _, base_url = served
    client = client_for(base_url)
    messages = video_message(str(world / "videos" / "clip_b.mp4"))
    whole = ask(client, messages)
    chunks = list(ask(client, messages, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    # A stop string ends the answer before it, streamed or not.
    answer = whole.choices[0].message.content
    if len(answer) >= 4:
        stop = answer[2:4]
        cut = answer[: answer.index(stop)]
        stopped = ask(client, messages, stop=[stop])
        assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (cut, "stop")
        streamed = list(ask(client, messages, stop=stop, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut
        assert streamed[-1].choices[0].finish_reason == "stop"

    # On the wire: server-sent events ending with data: [DONE].
    import httpx

    body = {"model": SERVED, "messages": messages, "stream": True, "max_tokens": 4, "temperature": 0}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_concurrent_clients_get_their_own_answers_in_one_batch(served, world):
    from llavidal.serve.engine import GenerationRequest
    from llavidal.serve.server import VideoSource

    app, _, base_url = served
    service = app.state.service
    video = str(world / "videos" / "clip_b.mp4")
    questions = ["What is the person doing?", "Which objects are on the table and who moved them?"]
    ask(client_for(base_url), video_message(video))  # features cached: both requests reach the batcher at once
    before = dict(service.scheduler.stats)
    answers: dict[int, str] = {}

    def run(index: int) -> None:
        answers[index] = ask(client_for(base_url), video_message(video, questions[index])).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stats = service.scheduler.stats
    assert stats["generate_calls"] - before["generate_calls"] == 1  # one engine.generate for both
    assert stats["batched_requests"] - before["batched_requests"] == 2 and stats["largest_batch"] == 2

    # Each client got the answer to its own question (what the engine gives for that batch, row by row).
    features = service.features.features(VideoSource("x", url=video))
    expected = service.engine.generate([GenerationRequest(q, features) for q in questions], max_new_tokens=8)
    assert [answers[0], answers[1]] == expected and answers[0] != answers[1]


# --------------------------------------------------------------------------------------- errors and limits


def test_bad_input_gets_openai_errors(served, world, tmp_path):
    _, _, base_url = served
    client = client_for(base_url)
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                                          {"type": "text", "text": "?"}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, audio)
    assert caught.value.code == "unsupported_content_type" and "'input_audio'" in caught.value.message
    assert caught.value.body["param"] == "messages[0].content[0].type"

    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, video_message(str(tmp_path / "missing.mp4")))
    assert caught.value.code == "video_not_found" and "missing.mp4" in caught.value.message

    junk = base64.b64encode(b"not a video" * 50).decode()
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, video_message(f"data:video/mp4;base64,{junk}"))
    assert caught.value.code == "invalid_video" and "could not be read as a video" in caught.value.message

    with pytest.raises(openai.BadRequestError, match="http URLs are not fetched"):
        ask(client, video_message("http://example.com/clip.mp4"))
    with pytest.raises(openai.BadRequestError, match="one video per conversation"):
        ask(client, video_message(str(world / "videos" / "clip_b.mp4")) * 2)
    with pytest.raises(openai.NotFoundError, match="does not exist on this server"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_upload_limits_and_api_key(served, world, monkeypatch):
    import dataclasses

    import httpx

    from llavidal.serve.server import BackgroundServer, FeatureService, create_app

    app, settings, _ = served
    service = app.state.service
    size = (world / "videos" / "clip_b.mp4").stat().st_size
    small = dataclasses.replace(settings, api_key="secret-key", max_upload_mb=size / 2 / 2**20)
    features = FeatureService(service.features.pipeline, service.features.registry, small)
    with BackgroundServer(create_app(service.engine, features, small)) as server:
        with pytest.raises(openai.AuthenticationError):
            client_for(server.base_url, "wrong").models.list()
        assert httpx.get(f"{server.base_url}/models").status_code == 401
        client = client_for(server.base_url, "secret-key")
        assert [m.id for m in client.models.list().data] == [SERVED]

        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, video_message(str(world / "videos" / "clip_b.mp4")))
        assert caught.value.status_code == 413 and "larger than this server's limit" in caught.value.message
        data = base64.b64encode((world / "videos" / "clip_b.mp4").read_bytes()).decode()
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, video_message(f"data:video/mp4;base64,{data}"))
        assert caught.value.status_code == 413
        # A body far over the limit is refused before it is read.
        huge = {"model": SERVED, "messages": video_message("data:video/mp4;base64," + "A" * (2 << 20))}
        response = httpx.post(f"{server.base_url}/chat/completions", json=huge,
                              headers={"Authorization": "Bearer secret-key"}, timeout=30)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


class BlockingEngine:
    """Stands in for the engine: generate waits for a signal; stream yields until it is closed."""

    def __init__(self):
        self.release = threading.Event()
        self.stream_closed = threading.Event()
        self.calls = 0

    def generate(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, batch_size=8):
        self.calls += 1
        self.release.wait(30)
        return [f"answer to {r.question}" for r in requests]

    def stream(self, request, max_new_tokens=256, temperature=0.0, top_p=1.0):
        text = ""
        try:
            while True:
                text += " word"
                yield text.strip()
                time.sleep(0.01)
        finally:
            self.stream_closed.set()


def test_full_queue_is_refused_and_disconnect_stops_a_stream():
    import httpx

    from llavidal.model.modality import ModalityRegistry
    from llavidal.serve.server import BackgroundServer, FeatureService, ServerSettings, create_app

    engine = BlockingEngine()
    settings = ServerSettings(served_model_name=SERVED, queue_size=1, batch_wait_s=0.0)
    features = FeatureService(None, ModalityRegistry.default(["video"], video_dim=8, video_tokens=4), settings)
    body = {"model": SERVED, "messages": [{"role": "user", "content": "first"}]}
    with BackgroundServer(create_app(engine, features, settings)) as server:
        url = f"{server.base_url}/chat/completions"
        results = []
        first = threading.Thread(target=lambda: results.append(httpx.post(url, json=body, timeout=30)))
        first.start()
        deadline = time.monotonic() + 10
        while engine.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = httpx.post(url, json={**body, "messages": [{"role": "user", "content": "second"}]}, timeout=30)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
        engine.release.set()
        first.join(30)
        assert results[0].json()["choices"][0]["message"]["content"] == "answer to first"

        # A client that leaves a stream: the engine's stream is closed (generation stops), the slot freed.
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=30) as response:
            for line in response.iter_lines():
                if '"word' in line:
                    break
        assert engine.stream_closed.wait(10)
        deadline = time.monotonic() + 10
        while server.server.config.app.state.service.scheduler.stats["in_server"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert httpx.post(url, json=body, timeout=30).status_code == 200


def test_parse_messages():
    from llavidal.serve.server import APIError, parse_messages

    chat = parse_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What happens?"},
                                     {"type": "video_url", "video_url": {"url": "a.mp4"}}]},
        {"role": "assistant", "content": "Someone drinks."},
        {"role": "user", "content": "Then?"},
        {"role": "user", "content": [{"type": "text", "text": "Briefly."}]},
    ])
    assert chat.history == [("Be brief.\n\nWhat happens?", "Someone drinks.")]
    assert chat.question == "Then?\nBriefly." and chat.video.url == "a.mp4"
    for bad, match in (([{"role": "assistant", "content": "hi"}], "start with a user"),
                       ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "last message"),
                       ([{"role": "tool", "content": "x"}], "not supported"),
                       ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a.mp4"}}]}], "no text")):
        with pytest.raises(APIError, match=match):
            parse_messages(bad)


def test_missing_api_key_variable_fails_before_loading(tmp_path, monkeypatch, capsys):
    from llavidal.serve.server import main

    monkeypatch.delenv("LLAVIDAL_TEST_SERVE_KEY", raising=False)
    code = main(["--projection_path", str(tmp_path), "--api_key_env", "LLAVIDAL_TEST_SERVE_KEY"])
    assert code == 2 and "LLAVIDAL_TEST_SERVE_KEY" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- the judge


def test_the_judge_uses_the_server_as_base_url(served, tmp_path):
    from llavidal.eval.commands import main as eval_main

    _, _, base_url = served
    predictions = tmp_path / "zeroshot.json"
    predictions.write_text(json.dumps([
        {"id": "1", "video_name": "m", "question": "Is the person drinking?", "answer": "yes", "pred": "yes"},
        {"id": "2", "video_name": "m", "question": "Is the person sitting?", "answer": "no", "pred": "yes"},
    ]))
    code = eval_main(["judge", "zeroshot", "--pred_path", str(predictions), "--output_dir", str(tmp_path / "out"),
                      "--judge_model", SERVED, "--base_url", base_url, "--cache", str(tmp_path / "c.sqlite"),
                      "--judge_max_tokens", "8", "--max_retries", "0"])
    assert code == 0
    result = json.loads(next((tmp_path / "out").glob("*results.json")).read_text())
    assert result["judge"]["served_models"] == [SERVED]
    # Every call was answered; a tiny random model's replies hold no score, so they count as malformed.
    block = result["criteria"]["zeroshot"]
    assert block["judge_failed"] == 0 and block["judge_malformed"] + block["judged"] == 2
