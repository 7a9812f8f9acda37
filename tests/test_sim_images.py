"""The world's image-instruction set: the middle frame of a clip's activity as a jpg, and LLaVA-format records
whose answers (posture, object, scene, hand) come from the clip's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llavidal.data.dataset import record_source
from llavidal.sim.images import RECORDS_NAME, middle_frame_index, write_image_records

pytest.importorskip("av")


def meta(clip_id: str, start: float, end: float, **segment) -> dict:
    return {"clip_id": clip_id, "fps": 8, "frames": 24,
            "segments": [{"activity": "drink", "start": start, "end": end, **segment}],
            "objects": [{"class": "mug", "colour": "red"}, {"class": "table", "colour": "brown"}]}


def test_middle_frames_and_records(tmp_path):
    from llavidal.sim.video import write_mp4

    root, out = tmp_path / "world", tmp_path / "world" / "annotations" / "cross_subject" / "train"
    (root / "videos").mkdir(parents=True)
    frames = np.stack([np.full((32, 32, 3), 10 * i, dtype=np.uint8) for i in range(24)])  # brightness = 10 x index
    metas = [
        meta("S001C001P001R001A001", 1.0, 2.0, objects=["mug", "table"], hand="left", posture="sitting"),
        meta("S001C001P001R001A002", 0.0, 1.0, objects=["table"], hand=None, posture="standing"),
        meta("S001C001P001R001A003", 0.0, 1.0, objects=[], posture="standing"),  # no rendered video: skipped
    ]
    for m in metas[:2]:
        write_mp4(root / "videos" / f"{m['clip_id']}.mp4", frames, fps=8)

    assert [middle_frame_index(m) for m in metas] == [12, 4, 4]
    assert write_image_records(root, out, metas, seed=0) == 2
    for m, index in zip(metas[:2], (12, 4)):
        pixels = np.asarray(Image.open(out / "images" / f"{m['clip_id']}.jpg").convert("RGB"), dtype=np.float64)
        assert abs(pixels.mean() - 10 * index) < 4  # that frame, not a neighbour (10 apart)

    records = json.loads((out / RECORDS_NAME).read_text())
    assert [r["image"] for r in records] == ["S001C001P001R001A001.jpg", "S001C001P001R001A002.jpg"]
    assert all(record_source(r) == "image" for r in records)
    first = records[0]["conversations"]
    assert first[0]["from"] == "human" and first[0]["value"].startswith("<image>\n")
    assert sum("<image>" in turn["value"] for turn in first) == 1
    answers = [turn["value"] for turn in first if turn["from"] == "gpt"]
    assert sorted(answers) == sorted(["The person is sitting on a chair.", "The person is using a red mug.",
                                      "I can see a mug and a table.", "The person is using the left hand."])
    second = [turn["value"] for turn in records[1]["conversations"] if turn["from"] == "gpt"]
    assert sorted(second) == sorted(["The person is standing.", "I can see a mug and a table."])
    # deterministic: the same seed writes the same records
    write_image_records(root, tmp_path / "again", metas, seed=0)
    assert json.loads((tmp_path / "again" / RECORDS_NAME).read_text()) == records
