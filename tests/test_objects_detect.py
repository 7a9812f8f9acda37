"""Detectors and the tracker: SSD anchors/NMS, tracks from a detector, the objectron SSD (when its
asset can be had offline from the npm cache) and a tiny random OWLv2 loaded by path."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llavidal.features.objects.detect import (
    Detection,
    Detector,
    IoUTracker,
    box_iou,
    detect_tracks,
    load_detector,
    non_max_suppression,
    ssd_anchors,
)
from llavidal.features.objects.extract import extract_object_features, object_features_for_video

av = pytest.importorskip("av")


def test_iou_nms_and_anchor_layout():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_allclose(box_iou(boxes[0], boxes[1]), [[81 / 119]])
    assert non_max_suppression(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 10) == [0, 2]
    anchors = ssd_anchors()
    # 19x19x3 + (10x10 + 5x5 + 3x3 + 2x2 + 1x1) x 6, as the model's 1917 outputs.
    assert anchors.shape == (1917, 4)
    np.testing.assert_allclose(anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], rtol=1e-5)


def test_tracker_links_detections_and_tolerates_gaps():
    tracker = IoUTracker(iou_threshold=0.3, max_gap=2)
    for t in range(6):
        detections = [Detection((10 + 2 * t, 10, 30 + 2 * t, 30), "mug", 0.9)]
        if t != 3:  # the book is missed once
            detections.append(Detection((50, 50, 70, 90), "book", 0.8))
        detections.append(Detection((12 + 2 * t, 10, 32 + 2 * t, 30), "cat", 0.5))  # overlaps, other class
        tracker.update(t, detections)
    objects = {o["class"]: o for o in tracker.objects()}
    assert sorted(objects) == ["book", "cat", "mug"]
    assert [f["frame"] for f in objects["mug"]["frames"]] == list(range(6))
    assert [f["frame"] for f in objects["book"]["frames"]] == [0, 1, 2, 4, 5]
    assert sorted(o["object_id"] for o in tracker.objects()) == [0, 1, 2]


class ColourDetector(Detector):
    """Finds pure red / green regions (a stand-in for a real detector on synthetic video)."""

    name = "colour"

    def detect(self, frames):
        results = []
        for frame in frames:
            found = []
            for label, channel in (("mug", 0), ("book", 1)):
                mask = (frame[..., channel] > 200) & (frame[..., 2] < 60)
                if mask.any():
                    ys, xs = np.nonzero(mask)
                    found.append(Detection((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), label, 1.0))
            results.append(found)
        return results


def test_tracks_from_a_detector_feed_object_extraction(tmp_path):
    from test_objects_extract import RecordingEncoder, green_box, red_box, write_video

    video = write_video(tmp_path / "videos" / "clip.mkv")
    tracks = detect_tracks(video, ColourDetector(), frame_stride=2)
    assert tracks["source"] == "detector:colour" and (tracks["width"], tracks["height"], tracks["num_frames"]) == (160, 120, 12)
    by_class = {o["class"]: o for o in tracks["objects"]}
    assert [f["frame"] for f in by_class["mug"]["frames"]] == [0, 2, 4, 6, 8, 10]
    assert by_class["mug"]["frames"][1]["box"] == red_box(2) and by_class["book"]["frames"][2]["box"] == green_box(4)
    assert object_features_for_video(video, tracks, RecordingEncoder()).shape == (2, 8, 3)
    # --detector: a missing tracks file is made, saved, and used.
    out = tmp_path / "features"
    summary = extract_object_features(tmp_path / "videos", out, RecordingEncoder(), tracks_dir=tmp_path / "tracks",
                                      detector=ColourDetector(), progress=False)
    assert summary.done == 1 and json.loads((tmp_path / "tracks" / "clip.json").read_text())["objects"]


def _objectron_assets(tmp_path: Path) -> Path | None:
    named = os.environ.get("LLAVIDAL_OBJECTRON_DATA")
    if named:
        return Path(named)
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:  # offline: only succeeds when the package is already in the npm cache
        subprocess.run([npm, "pack", "--offline", "--silent", "@mediapipe/objectron"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
    except (subprocess.SubprocessError, OSError):
        return None
    archives = list(tmp_path.glob("mediapipe-objectron-*.tgz"))
    if not archives:
        return None
    import tarfile

    with tarfile.open(archives[0]) as archive:
        member = archive.getmember("package/objectron_solution_packed_assets.data")
        archive.extract(member, tmp_path, filter="data")
    return tmp_path / "package" / "objectron_solution_packed_assets.data"


def _demo_video() -> Path | None:
    spec = importlib.util.find_spec("Sports2D")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "Demo" / "demo.mp4"
    return path if path.is_file() else None


def test_objectron_ssd_finds_the_person(tmp_path):
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed (optional extra llavidal[detect])")
    assets = _objectron_assets(tmp_path)
    if assets is None or not assets.is_file():
        pytest.skip("the objectron SSD is not available offline: run 'npm pack @mediapipe/objectron' once "
                    "(fills the npm cache) or set LLAVIDAL_OBJECTRON_DATA to objectron_solution_packed_assets.data")
    from llavidal.features.objects.detect import extract_objectron_ssd

    video = _demo_video()
    if video is None:
        pytest.skip("no real video of a person: pip install --no-deps sports2d (Demo/demo.mp4)")
    tflite = extract_objectron_ssd(assets, tmp_path / "ssd.tflite")
    detector = load_detector(str(tflite), classes=["Person", "Chair", "Mug"], score_threshold=0.45)
    frames = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in (40, 60):
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= 60:
                break
    detections = detector.detect(np.stack(frames))
    people = [d for per_frame in detections for d in per_frame if d.label == "Person"]
    assert people, f"no person found: {detections}"
    x1, y1, x2, y2 = people[0].box
    height = frames[0].shape[0]
    assert 0.2 * height < y2 - y1 < height and y2 - y1 > x2 - x1, "a standing person's box is tall"
    # The packed .data file loads directly too, with the labels stored in it.
    assert load_detector(f"ssd:{assets}").labels[4] == "Person"


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte-to-character table (to build a tiny CLIP BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def save_tiny_owlv2(folder: Path) -> Path:
    """A random 2-layer OWLv2 (64 px, 16 px patches, 32-d) with a byte-level CLIP tokenizer, saved."""
    import torch
    import transformers
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor_class = getattr(transformers, "Owlv2ImageProcessorPil", None) or transformers.Owlv2ImageProcessor
    processor = Owlv2Processor(image_processor=image_processor_class(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Owlv2ForObjectDetection(config)
    # Random box heads predict degenerate (zero-size) boxes; zero the last layer so every patch
    # predicts its prior box and the decoding path has boxes to work on.
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_tiny_random_owlv2_by_path(tmp_path):
    folder = save_tiny_owlv2(tmp_path / "owlv2")
    detector = load_detector(f"owlv2:{folder}", classes=["mug", "book"], score_threshold=0.0, max_detections=5)
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 80, 3), dtype=np.uint8)
    detections = detector.detect(frames)
    assert len(detections) == 2
    for per_frame in detections:
        assert 1 <= len(per_frame) <= 5
        for d in per_frame:
            x1, y1, x2, y2 = d.box
            assert d.label in ("mug", "book") and 0 <= d.score <= 1
            assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 48
    with pytest.raises(ValueError, match="class names"):
        load_detector(f"owlv2:{folder}")
