"""``llavidal serve`` answers OpenAI ``image_url`` parts (a ``data:`` URL or ``file://``) with the image as a
1-frame video: the video extractor's image features, no other modality; bad image parts are refused by name."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from demo_helpers import make_tiny_weights
from fake_openai_server import PROXY_VARIABLES

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
Image = pytest.importorskip("PIL.Image")

SERVED = "llavidal-tiny"
QUESTION = "What is on the table?"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from llavidal.serve.server import BackgroundServer, ServeArguments, load_server

    llm, weights = make_tiny_weights(tmp_path_factory.mktemp("serve_image_model"), modalities=("video", "object"))
    args = ServeArguments(projection_path=str(weights), model_name=str(llm), device="cpu", port=0,
                          served_model_name=SERVED, max_batch_size=1, default_temperature=0.0)
    app, _ = load_server(args)
    with BackgroundServer(app) as server:
        yield app, server.base_url


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("picture") / "kitchen.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def ask(base_url, part, question=QUESTION):
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
    return client.chat.completions.create(model=SERVED, temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": [part, {"type": "text", "text": question}]}])


def test_image_url_is_answered_as_a_one_frame_video(served, picture, tmp_path):
    from llavidal.data.feature_store import save_features
    from llavidal.features.images import image_features
    from llavidal.serve.server import VideoSource

    app, base_url = served
    service = app.state.service
    data_url = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    by_data = ask(base_url, {"type": "image_url", "image_url": {"url": data_url}})
    by_file = ask(base_url, {"type": "image_url", "image_url": {"url": picture.as_uri()}})
    assert isinstance(by_data.choices[0].message.content, str)
    assert by_data.choices[0].message.content == by_file.choices[0].message.content
    assert by_data.usage.prompt_tokens == by_file.usage.prompt_tokens

    # The features are the video extractor's of the image (temporal rows beyond the one frame are zeros); the
    # object modality is not used for an image.
    features = service.features.features(VideoSource("x", url=picture.as_uri(), kind="image_url"))
    assert set(features) == {"video"}
    extractor = service.features.pipeline.extractors["video"]
    np.testing.assert_array_equal(features["video"], image_features(extractor, picture))
    assert features["video"].shape[0] == 8 + 16 and not features["video"][1:8].any() and features["video"][0].any()

    # The same features sent as a feature file give the same answer: the image was answered through them.
    save_features(tmp_path / "kitchen.safetensors", features["video"])
    by_features = ask(base_url, {"type": "video_features", "video_features": {"video": str(tmp_path / "kitchen.safetensors")}})
    assert by_features.choices[0].message.content == by_data.choices[0].message.content
    assert by_features.usage.prompt_tokens == by_data.usage.prompt_tokens
    # and a text-only question is a shorter prompt (no video span)
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
    plain = client.chat.completions.create(model=SERVED, temperature=0, max_tokens=8,
                                           messages=[{"role": "user", "content": QUESTION}])
    assert plain.usage.prompt_tokens < by_data.usage.prompt_tokens


def test_bad_image_parts_are_refused_by_name(served, picture, tmp_path):
    _, base_url = served
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()
    with pytest.raises(openai.BadRequestError) as caught:
        ask(base_url, {"type": "image_url", "image_url": {"url": gif}})
    assert "messages[0].content[0].image_url" in str(caught.value) and "image/gif" in str(caught.value)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png" * 20)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(base_url, {"type": "image_url", "image_url": {"url": broken.as_uri()}})
    assert "could not be read as an image" in str(caught.value)

    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(base_url, {"type": "image_url", "image_url": {"url": str(tmp_path / "clip.mp4")}})
    assert "clip.mp4 is not a jpg, png or webp image" in str(caught.value)
