"""The world's image-instruction set: single frames with questions about pose, objects and hand.

For each clip of a split, the frame at the middle of its (middle) activity is taken from the rendered clip video
and written as ``annotations/{protocol}/{split}/images/{clip_id}.jpg``; ``image_records.json`` beside it holds
LLaVA-format records (``{"id": "{clip_id}_frame", "image": "{clip_id}.jpg", "conversations": [...]}``, ``<image>``
in the first question) whose answers the clip's metadata gives: posture (standing / sitting), the object in
use and the objects in the scene, and which hand. Extract their features with ``llavidal extract video
--video_dir_path .../images --clip_feat_path ...`` (each image a 1-frame video) and train with
``--image_folder`` (see :mod:`llavidal.data.dataset`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from llavidal.utils.io import atomic_path, atomic_write_json

IMAGE_FOLDER = "images"
RECORDS_NAME = "image_records.json"
JPEG_QUALITY = 95
_NOT_HELD = ("tray", "food", "chair", "table")  # props that are not the object in the hand

POSE_QUESTIONS = ("Is the person standing or sitting?", "What is the posture of the person in the image?")
OBJECT_QUESTIONS = ("What object is the person using?", "Which object is the person interacting with?")
SCENE_QUESTIONS = ("Which objects can you see in the image?", "What objects are in the scene?")
HAND_QUESTIONS = ("Which hand is the person using?", "Is the person using the left or the right hand?")


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return "an" if words[:1] in "aeiou" else "a"


def middle_segment(meta: dict) -> dict:
    """The segment whose frame is taken: the clip's activity (the middle one of a routine)."""
    segments = meta["segments"]
    return segments[len(segments) // 2]


def middle_frame_index(meta: dict) -> int:
    """Index of the frame at the middle of :func:`middle_segment`, within the clip's frames."""
    segment = middle_segment(meta)
    index = int(round(0.5 * (float(segment["start"]) + float(segment["end"])) * float(meta["fps"])))
    return min(max(index, 0), max(int(meta.get("frames") or 1) - 1, 0))


def read_video_frame(path: str | Path, index: int) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` of frame ``index`` of a video (the last frame when it has fewer)."""
    from llavidal.utils.optional import require

    av = require("av", "reading the world's clips")
    last = None
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            last = frame.to_ndarray(format="rgb24")
            if number >= index:
                break
    if last is None:
        raise ValueError(f"{path}: no video frames to take an image from")
    return last


def image_conversation(meta: dict, seed: int) -> list[dict]:
    """Question-answer turns about the middle frame (``<image>`` in the first question)."""
    rng = _rng(seed, "image", meta["clip_id"])
    segment = middle_segment(meta)
    pairs = []
    sitting = segment.get("posture") == "sitting"
    pairs.append((_pick(rng, POSE_QUESTIONS),
                  "The person is sitting on a chair." if sitting else "The person is standing."))
    used = [c for c in segment.get("objects", []) if c not in _NOT_HELD]
    if used:
        colours = [o.get("colour", "") for o in meta.get("objects", []) if o["class"] == used[0]]
        words = f"{colours[0] if colours else ''} {used[0]}".strip()
        pairs.append((_pick(rng, OBJECT_QUESTIONS), f"The person is using {_article(words)} {words}."))
    scene = sorted({o["class"] for o in meta.get("objects", []) if o["class"] != "food"})
    if scene:
        listed = ", ".join(f"{_article(c)} {c}" for c in scene[:-1])
        last = f"{_article(scene[-1])} {scene[-1]}"
        pairs.append((_pick(rng, SCENE_QUESTIONS), f"I can see {listed + ' and ' + last if listed else last}."))
    if segment.get("hand") in ("left", "right"):
        pairs.append((_pick(rng, HAND_QUESTIONS), f"The person is using the {segment['hand']} hand."))
    order = rng.permutation(len(pairs))
    conversation = []
    for turn, k in enumerate(order):
        question, answer = pairs[int(k)]
        conversation.append({"from": "human", "value": f"<image>\n{question}" if turn == 0 else question})
        conversation.append({"from": "gpt", "value": answer})
    return conversation


def write_image_records(root: str | Path, out: str | Path, metas: Sequence[dict], seed: int) -> int:
    """Write ``out/images/{clip_id}.jpg`` (the middle frame of each clip's activity, from ``root/videos``) and
    ``out/image_records.json``; returns the number of records."""
    from PIL import Image

    root, out = Path(root), Path(out)
    folder = out / IMAGE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for meta in metas:
        clip = meta["clip_id"]
        video = root / "videos" / f"{clip}.mp4"
        if not video.is_file():
            continue
        frame = read_video_frame(video, middle_frame_index(meta))
        with atomic_path(folder / f"{clip}.jpg") as tmp:
            Image.fromarray(frame).save(tmp, format="JPEG", quality=JPEG_QUALITY)
        records.append({"id": f"{clip}_frame", "image": f"{clip}.jpg", "conversations": image_conversation(meta, seed)})
    atomic_write_json(out / RECORDS_NAME, records)
    return len(records)
