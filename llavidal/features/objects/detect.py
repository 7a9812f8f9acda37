"""Object detection on video frames and a simple tracker that writes the object-tracks format.

    detector = load_detector("ssd:/models/objectron_solution_packed_assets.data")  # or a .tflite
    detector = load_detector("owlv2:/models/owlv2-base-patch16", classes=["mug", "book", "chair"])
    detections = detector.detect(frames)        # uint8 (N, H, W, 3) -> N lists of Detection
    tracks = detect_tracks("clip.mp4", detector) # the tracks/{clip_id}.json format (docs/ARCHITECTURE.md)

Backends (all offline, weights by local path):

- ``ssd``: the SSD MobileNetV2 (Open Images v4, 24 outputs: a background slot and 23 classes such as
  Person, Chair, Table, Mug, Coffee cup, Bottle, Book, Laptop) that npm ``@mediapipe/objectron`` ships
  inside ``objectron_solution_packed_assets.data`` (bytes 184..9987912 are the ``.tflite``; the first
  184 bytes are its label list). Get it with ``npm pack @mediapipe/objectron`` and pass the ``.data``
  file or a ``.tflite`` cut from it (:func:`extract_objectron_ssd`). Runs with ``ai-edge-litert``
  (``pip install 'llavidal[detect]'``). Decoding follows MediaPipe's objectron graph: 300x300 input
  stretched from the frame, pixels in [-1, 1], SSD anchors (6 layers, scales 0.2..0.95, strides
  16..512, aspect ratios 1, 2, 1/2, 3, 1/3, fewer boxes in the lowest layer), box scales 10/10/5/5,
  sigmoid scores, then per-class non-maximum suppression.
- ``owlv2``: OWLv2 open-vocabulary detection through transformers (``Owlv2ForObjectDetection`` and its
  processor from a local folder), queried with the class names you pass.

The tracker links detections of the same class over frames by box overlap (greedy IoU matching,
tolerating short gaps).
"""

from __future__ import annotations

import abc
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from llavidal.utils.optional import require

logger = logging.getLogger(__name__)

OBJECTRON_ASSET_RANGE = (184, 9987912)
"""Byte range of the SSD MobileNetV2 ``.tflite`` inside npm @mediapipe/objectron's packed assets."""
OBJECTRON_LABELS = (
    "???", "Bicycle", "Boot", "Laptop", "Person", "Chair", "Cattle", "Desk", "Cat", "Computer mouse",
    "Computer monitor", "Box", "Mug", "Coffee cup", "Stationary bicycle", "Table", "Bottle", "High heels",
    "Vehicle", "Footwear", "Dog", "Book", "Camera", "Car",
)
"""The model's output classes in order (index 0, ``???``, is the background and never reported)."""


@dataclass
class Detection:
    box: tuple[float, float, float, float]
    """``(x1, y1, x2, y2)`` in pixels of the frame; ``x2, y2`` exclusive."""
    label: str
    score: float


class Detector(abc.ABC):
    """``detect(frames)``: uint8 RGB ``(N, H, W, 3)`` -> one list of :class:`Detection` per frame."""

    name: str = ""

    @abc.abstractmethod
    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        raise NotImplementedError


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames (N, H, W, 3), got {frames.shape} {frames.dtype}")
    return frames


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # no overflow for large |x|


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``(N, 4)`` and ``(M, 4)`` (x1, y1, x2, y2) -> ``(N, M)``."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> list[int]:
    """Indices kept by greedy NMS, best first."""
    order = list(np.argsort(-np.asarray(scores)))
    keep: list[int] = []
    while order and len(keep) < max_keep:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            overlaps = box_iou(boxes[best], boxes[order])[0]
            order = [i for i, o in zip(order, overlaps) if o <= iou_threshold]
    return keep


def _resize_bilinear(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, height, width, 3)`` (stretch, as MediaPipe's transform)."""
    image_module = require("PIL.Image", "resizing frames for detection", extra="extract")
    return np.stack([
        np.asarray(image_module.fromarray(frame).resize((width, height), image_module.BILINEAR), dtype=np.float32)
        for frame in frames
    ])


# ---------------------------------------------------------------------------------------------------
# SSD MobileNetV2 (MediaPipe objectron's detector)


def ssd_anchors(
    input_size: int = 300,
    num_layers: int = 6,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    strides: Sequence[int] = (16, 32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 0.3333),
    reduce_boxes_in_lowest_layer: bool = True,
    interpolated_scale_aspect_ratio: float = 1.0,
) -> np.ndarray:
    """MediaPipe's ``SsdAnchorsCalculator``: ``(num_anchors, 4)`` as ``(y_center, x_center, h, w)``, normalised."""

    def scale_at(index: int) -> float:
        return (min_scale + max_scale) / 2 if num_layers == 1 else min_scale + (max_scale - min_scale) * index / (num_layers - 1)

    anchors = []
    for layer in range(num_layers):
        ratios: list[float] = []
        scales: list[float] = []
        if layer == 0 and reduce_boxes_in_lowest_layer:
            ratios, scales = [1.0, 2.0, 0.5], [0.1, scale_at(layer), scale_at(layer)]
        else:
            for ratio in aspect_ratios:
                ratios.append(ratio)
                scales.append(scale_at(layer))
            if interpolated_scale_aspect_ratio > 0:
                following = 1.0 if layer == num_layers - 1 else scale_at(layer + 1)
                ratios.append(interpolated_scale_aspect_ratio)
                scales.append(math.sqrt(scale_at(layer) * following))
        sizes = [(s / math.sqrt(r), s * math.sqrt(r)) for s, r in zip(scales, ratios)]  # (h, w)
        cells = math.ceil(input_size / strides[layer])
        for y in range(cells):
            for x in range(cells):
                for height, width in sizes:
                    anchors.append(((y + 0.5) / cells, (x + 0.5) / cells, height, width))
    return np.asarray(anchors, dtype=np.float32)


def extract_objectron_ssd(data_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Cut the SSD ``.tflite`` out of npm @mediapipe/objectron's ``objectron_solution_packed_assets.data``."""
    from llavidal.utils.io import atomic_write_bytes

    model, _ = _read_objectron_assets(Path(data_path))
    atomic_write_bytes(out_path, model)
    return Path(out_path)


def _read_objectron_assets(path: Path) -> tuple[bytes, tuple[str, ...]]:
    data = path.read_bytes()
    start, end = OBJECTRON_ASSET_RANGE
    model = data[start:end]
    if len(data) < end or model[4:8] != b"TFL3":
        raise ValueError(
            f"{path}: not the objectron packed assets this backend knows (expected a TFLite model at bytes "
            f"{start}..{end}); pass the objectron_solution_packed_assets.data from npm @mediapipe/objectron "
            "or a .tflite SSD"
        )
    labels = tuple(data[:start].decode("utf-8", "replace").strip("\x00").split("\n"))
    labels = tuple(label for label in labels if label)
    return model, labels if len(labels) == len(OBJECTRON_LABELS) else OBJECTRON_LABELS


class SsdMobileNetDetector(Detector):
    """MediaPipe objectron's SSD MobileNetV2 through ``ai-edge-litert`` (see the module docstring)."""

    name = "ssd_mobilenetv2_oidv4"

    def __init__(
        self,
        model_path: str | os.PathLike,
        classes: Sequence[str] | None = None,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.45,
        max_detections: int = 20,
        num_threads: int = 1,
    ):
        litert = require("ai_edge_litert.interpreter", "the SSD object detector", extra="detect")
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SSD model not found (get it with 'npm pack @mediapipe/objectron')")
        if path.suffix == ".data":
            content, self.labels = _read_objectron_assets(path)
        else:
            content, self.labels = path.read_bytes(), OBJECTRON_LABELS
        self._interpreter = litert.Interpreter(model_content=content, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        boxes = [d for name, d in outputs.items() if "box" in name]
        scores = [d for name, d in outputs.items() if "class" in name or "score" in name]
        if not boxes or not scores:
            raise ValueError(f"{path}: expected raw SSD outputs (box encodings, class predictions), found {sorted(outputs)}")
        self._boxes, self._scores = boxes[0]["index"], scores[0]["index"]
        self.input_size = int(self._input["shape"][1])
        self.anchors = ssd_anchors(self.input_size)
        if len(self.anchors) != int(boxes[0]["shape"][1]):
            raise ValueError(f"{path}: {boxes[0]['shape'][1]} boxes but the anchor layout gives {len(self.anchors)}")
        if int(scores[0]["shape"][-1]) != len(self.labels):
            raise ValueError(f"{path}: {scores[0]['shape'][-1]} classes but {len(self.labels)} labels")
        wanted = {c.lower() for c in classes} if classes else None
        unknown = sorted(wanted - {label.lower() for label in self.labels}) if wanted else []
        if unknown:
            raise ValueError(f"classes {unknown} are not among this detector's labels {list(self.labels[1:])}")
        self._class_mask = np.array([i > 0 and (wanted is None or label.lower() in wanted) for i, label in enumerate(self.labels)])
        self.score_threshold, self.iou_threshold, self.max_detections = score_threshold, iou_threshold, max_detections

    def _decode(self, raw_boxes: np.ndarray, raw_scores: np.ndarray, width: int, height: int) -> list[Detection]:
        anchors = self.anchors  # (A, 4): y, x, h, w
        y_center = raw_boxes[:, 0] / 10.0 * anchors[:, 2] + anchors[:, 0]
        x_center = raw_boxes[:, 1] / 10.0 * anchors[:, 3] + anchors[:, 1]
        box_h = np.exp(raw_boxes[:, 2] / 5.0) * anchors[:, 2]
        box_w = np.exp(raw_boxes[:, 3] / 5.0) * anchors[:, 3]
        scores = _sigmoid(raw_scores)  # (A, C)
        scores[:, ~self._class_mask] = 0.0
        best_class = scores.argmax(axis=1)
        best_score = scores[np.arange(len(scores)), best_class]
        candidates = np.flatnonzero(best_score >= self.score_threshold)
        boxes = np.stack([
            (x_center - box_w / 2) * width, (y_center - box_h / 2) * height,
            (x_center + box_w / 2) * width, (y_center + box_h / 2) * height,
        ], axis=1).clip(0, [width, height, width, height])
        detections = []
        for label in np.unique(best_class[candidates]):
            members = candidates[best_class[candidates] == label]
            for i in non_max_suppression(boxes[members], best_score[members], self.iou_threshold, self.max_detections):
                index = members[i]
                detections.append(Detection(tuple(float(v) for v in boxes[index]), self.labels[label], float(best_score[index])))
        detections.sort(key=lambda d: -d.score)
        return detections[: self.max_detections]

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        frames = _check_frames(frames)
        height, width = frames.shape[1:3]
        inputs = _resize_bilinear(frames, self.input_size, self.input_size) / 127.5 - 1.0  # [-1, 1]
        results = []
        for image in inputs:
            self._interpreter.set_tensor(self._input["index"], image[None].astype(np.float32))
            self._interpreter.invoke()
            raw_boxes = self._interpreter.get_tensor(self._boxes)[0]  # (A, 4)
            raw_scores = self._interpreter.get_tensor(self._scores)[0]  # (A, C)
            results.append(self._decode(raw_boxes, raw_scores, width, height))
        return results


# ---------------------------------------------------------------------------------------------------
# OWLv2 (open vocabulary, transformers)


class Owlv2Detector(Detector):
    """OWLv2 from a local transformers folder, queried with ``classes`` (``"a photo of a {class}"``)."""

    name = "owlv2"

    def __init__(
        self,
        path: str | os.PathLike,
        classes: Sequence[str],
        score_threshold: float = 0.2,
        iou_threshold: float = 0.3,
        max_detections: int = 20,
        prompt_template: str = "a photo of a {}",
        device: str = "cpu",
    ):
        import torch
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        if not classes:
            raise ValueError("OWLv2 is open-vocabulary: pass the class names to look for (--classes mug,book,...)")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a folder with an OWLv2 model and processor (nothing is downloaded)")
        self.classes = list(classes)
        self.processor = Owlv2Processor.from_pretrained(path, local_files_only=True)
        self.model = Owlv2ForObjectDetection.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.prompts = [prompt_template.format(c) for c in self.classes]
        self._max_text_length = int(self.model.config.text_config.max_position_embeddings)  # 16 for OWLv2
        self.model_id = str(path)
        self.score_threshold, self.iou_threshold, self.max_detections = score_threshold, iou_threshold, max_detections

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        import torch

        frames = _check_frames(frames)
        height, width = frames.shape[1:3]
        side = max(height, width)  # OWLv2 pads to a square (bottom/right) before resizing
        results = []
        for frame in frames:
            inputs = self.processor(
                text=[self.prompts], images=[frame], return_tensors="pt", padding=True, truncation=True,
                max_length=self._max_text_length,
            ).to(self.device)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            logits = outputs.logits[0].float().cpu().numpy()  # (patches, queries)
            centre_boxes = outputs.pred_boxes[0].float().cpu().numpy()  # (patches, 4): cx, cy, w, h in [0, 1]
            scores = _sigmoid(logits)
            label = scores.argmax(axis=1)
            best = scores[np.arange(len(scores)), label]
            cx, cy, w, h = (centre_boxes[:, i] * side for i in range(4))
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).clip(0, [width, height, width, height])
            keep = np.flatnonzero((best >= self.score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
            detections = []
            for query in np.unique(label[keep]):
                members = keep[label[keep] == query]
                for i in non_max_suppression(boxes[members], best[members], self.iou_threshold, self.max_detections):
                    index = members[i]
                    detections.append(Detection(tuple(float(v) for v in boxes[index]), self.classes[query], float(best[index])))
            detections.sort(key=lambda d: -d.score)
            results.append(detections[: self.max_detections])
        return results


def load_detector(spec: str, classes: Sequence[str] | None = None, **kwargs) -> Detector:
    """``ssd:PATH`` (.data or .tflite), ``owlv2:FOLDER``, or a bare path (type inferred)."""
    kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("ssd", "owlv2") else ("", "", spec)
    if not kind:
        candidate = Path(path)
        if candidate.suffix in (".tflite", ".data"):
            kind = "ssd"
        elif (candidate / "config.json").is_file():
            kind = "owlv2"
        else:
            raise ValueError(
                f"detector {spec!r}: write 'ssd:PATH' (objectron .data or .tflite) or 'owlv2:FOLDER' (a local OWLv2 model)"
            )
    if kind == "ssd":
        return SsdMobileNetDetector(path, classes=classes, **kwargs)
    return Owlv2Detector(path, classes=list(classes or []), **kwargs)


# ---------------------------------------------------------------------------------------------------
# Tracking


@dataclass
class _Track:
    object_id: int
    label: str
    frames: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        return self.frames[-1]


class IoUTracker:
    """Greedy IoU tracker: a detection joins the same-class track whose last box (seen at most
    ``max_gap`` processed frames ago) it overlaps most, above ``iou_threshold``; otherwise it starts a
    new track. Tracks shorter than ``min_length`` detections are dropped."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 5, min_length: int = 1):
        self.iou_threshold, self.max_gap, self.min_length = iou_threshold, max_gap, min_length
        self._tracks: list[_Track] = []
        self._step = 0
        self._last_step: dict[int, int] = {}

    def update(self, frame_index: int, detections: Iterable[Detection]) -> None:
        detections = sorted(detections, key=lambda d: -d.score)
        active = [t for t in self._tracks if self._step - self._last_step[t.object_id] <= self.max_gap]
        taken: set[int] = set()
        for detection in detections:
            best, best_iou = None, self.iou_threshold
            for track in active:
                if track.object_id in taken or track.label != detection.label:
                    continue
                overlap = float(box_iou(np.array(track.last["box"]), np.array(detection.box))[0, 0])
                if overlap >= best_iou:
                    best, best_iou = track, overlap
            if best is None:
                best = _Track(object_id=len(self._tracks), label=detection.label)
                self._tracks.append(best)
            taken.add(best.object_id)
            self._last_step[best.object_id] = self._step
            best.frames.append({
                "frame": int(frame_index), "box": [round(v, 2) for v in detection.box],
                "position_3d": None, "score": round(float(detection.score), 4),
            })
        self._step += 1

    def objects(self) -> list[dict]:
        kept = [t for t in self._tracks if len(t.frames) >= self.min_length]
        return [{"object_id": i, "class": t.label, "frames": t.frames} for i, t in enumerate(kept)]


def detect_tracks(
    video_path: str | os.PathLike,
    detector: Detector,
    frame_stride: int = 1,
    batch_size: int = 8,
    tracker: IoUTracker | None = None,
) -> dict:
    """Detect objects in every ``frame_stride``-th frame and link them into the tracks format."""
    av = require("av", "video decoding")
    video_path = Path(video_path)
    tracker = tracker or IoUTracker(max_gap=max(2, 5 // max(frame_stride, 1)))
    try:
        container = av.open(str(video_path))
    except Exception as err:
        raise ValueError(f"{video_path}: cannot open the video ({type(err).__name__}: {err})") from None
    width = height = 0
    fps = 0.0
    count = 0
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if pending:
            found = detector.detect(np.stack([frame for _, frame in pending]))
            for (index, _), detections in zip(pending, found):
                tracker.update(index, detections)
            pending.clear()

    with container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0.0)
        for index, frame in enumerate(container.decode(stream)):
            count = index + 1
            if index % frame_stride:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            height, width = rgb.shape[:2]
            pending.append((index, rgb))
            if len(pending) >= batch_size:
                flush()
        flush()
    if count == 0:
        raise ValueError(f"{video_path}: the video has no decodable frames")
    return {
        "video": video_path.name, "fps": round(fps, 3), "width": width, "height": height, "num_frames": count,
        "source": f"detector:{detector.name}", "objects": tracker.objects(),
    }
