"""Action-segmentation metrics as the Breakfast community reports them: MoF, Edit, F1@{10,25,50}.

Run as (the Breakfast fork's entry; ``--help`` lists every flag)::

    python video_chatgpt/eval/metrics.py --pred_path predictions.json [--labels_dir breakfast_labels/]
        [--background SIL] [--output_json metrics.json]

The definitions are MS-TCN's (``eval.py``, from Lea et al.'s TCN metrics), so numbers compare with published
ones:

- frames become segments by runs of equal labels; runs of a ``--background`` label are not segments
  (MS-TCN's default background is the label ``background``, so Breakfast's ``SIL`` counts as an action unless
  named). Segment ``j`` spans ``[start_j, end_j)`` in 0-based frames, except that the last segment ends at
  ``len - 1`` (MS-TCN's quirk, kept so that F1 matches theirs);
- **MoF** (frame accuracy): correct frames / all frames, over all videos together, x 100;
- **Edit**: per video ``(1 - levenshtein(P, Y) / max(|P|, |Y|)) x 100`` over the predicted and true segment
  label sequences, averaged over videos (100 when both are empty);
- **F1@k**: each predicted segment, in order, is matched to the true segment of the same label with the
  highest IoU (``intersection = min(ends) - max(starts)``, ``union = max(ends) - min(starts)``); IoU >= k
  and that true segment not yet hit -> a true positive, else a false positive; unhit true segments are false
  negatives. tp/fp/fn are summed over videos; ``F1 = 2PR / (P + R) x 100`` (0 when undefined).

Predictions are per video a text of ``a-b label`` lines (1-based inclusive frame ranges, what the Breakfast
converter's segments answers and the fork's model write) or a list of per-frame labels; the ground truth the
same, or the video's Breakfast ``.labels`` file. A predicted frame no segment covers counts as wrong;
predicted frames past the ground truth's end are ignored; where predicted segments overlap, the later wins.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from llavidal.config import arg, command, parse
from llavidal.utils.io import atomic_write_json, load_json_or_jsonl

OVERLAPS = (0.10, 0.25, 0.50)
MSTCN_BACKGROUND = ("background",)
UNCOVERED = "\x00uncovered"
"""The label of a predicted frame that no predicted segment covers (never equal to a true label)."""

_SEGMENT_LINE = re.compile(r"(\d+)\s*-\s*(\d+)\s*[:,]?\s+(\S[^\n]*?)\s*$")


# ---------------------------------------------------------------------------------------------------
# MS-TCN's definitions


def frame_segments(frame_labels: Sequence[str], background: Iterable[str] = MSTCN_BACKGROUND
                   ) -> tuple[list[str], list[int], list[int]]:
    """Per-frame labels -> (labels, starts, ends) of the non-background runs, as MS-TCN's
    ``get_labels_start_end_time`` (0-based; ``end`` exclusive, but the last run ends at ``len - 1``)."""
    background = set(background)
    labels: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    if not frame_labels:
        return labels, starts, ends
    last = frame_labels[0]
    if last not in background:
        labels.append(last)
        starts.append(0)
    for index, label in enumerate(frame_labels):
        if label != last:
            if label not in background:
                labels.append(label)
                starts.append(index)
            if last not in background:
                ends.append(index)
            last = label
    if last not in background:
        ends.append(len(frame_labels) - 1)  # MS-TCN: the loop's last index, not len
    return labels, starts, ends


def levenshtein(first: Sequence[str], second: Sequence[str]) -> int:
    """Edit distance (insert, delete, substitute: cost 1 each)."""
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i] + [0] * len(second)
        for j, b in enumerate(second, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b))
        previous = current
    return previous[-1]


def edit_score(predicted: Sequence[str], truth: Sequence[str], background: Iterable[str] = MSTCN_BACKGROUND) -> float:
    """MS-TCN's normalised edit score (0-100) of two per-frame label sequences."""
    background = tuple(background)
    p_labels = frame_segments(predicted, background)[0]
    y_labels = frame_segments(truth, background)[0]
    longest = max(len(p_labels), len(y_labels))
    if longest == 0:
        return 100.0  # both all background (MS-TCN divides by zero here)
    return (1 - levenshtein(p_labels, y_labels) / longest) * 100


def f_score_counts(predicted: Sequence[str], truth: Sequence[str], overlap: float,
                   background: Iterable[str] = MSTCN_BACKGROUND) -> tuple[int, int, int]:
    """MS-TCN's (tp, fp, fn) of one video at IoU threshold ``overlap``."""
    background = tuple(background)
    p_labels, p_starts, p_ends = frame_segments(predicted, background)
    y_labels, y_starts, y_ends = frame_segments(truth, background)
    true_positives = false_positives = 0
    hit = [False] * len(y_labels)
    for label, start, end in zip(p_labels, p_starts, p_ends):
        ious = []
        for y_label, y_start, y_end in zip(y_labels, y_starts, y_ends):
            intersection = min(end, y_end) - max(start, y_start)
            union = max(end, y_end) - min(start, y_start)
            ious.append(intersection / union * (label == y_label) if union else 0.0)
        best = max(range(len(ious)), key=lambda k: (ious[k], -k)) if ious else None  # argmax: first of the best
        if best is not None and ious[best] >= overlap and not hit[best]:
            true_positives += 1
            hit[best] = True
        else:
            false_positives += 1
    return true_positives, false_positives, len(y_labels) - sum(hit)


def f1_from_counts(true_positives: float, false_positives: float, false_negatives: float) -> float:
    precision = true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0
    recall = true_positives / (true_positives + false_negatives) if true_positives + false_negatives else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall) * 100


# ---------------------------------------------------------------------------------------------------
# Segment texts <-> frames


def parse_segments(text: str, strict: bool = False, source: str = "segments") -> tuple[list[tuple[int, int, str]], int]:
    """``a-b label`` lines -> ([(start, end, label)], number of lines that are not segments).

    A model's answer may carry other text: such lines are skipped and counted, unless ``strict`` (ground
    truth), where they are an error naming ``source`` and the line.
    """
    segments, skipped = [], 0
    for number, line in enumerate(str(text).splitlines(), 1):
        if not line.strip():
            continue
        found = _SEGMENT_LINE.search(line) if not strict else re.match(r"^\s*" + _SEGMENT_LINE.pattern, line)
        if found is None or int(found.group(2)) < int(found.group(1)):
            if strict:
                raise ValueError(f"{source}:{number}: expected 'start-end label' (e.g. '1-30 SIL'), got {line.strip()!r}")
            skipped += 1
            continue
        segments.append((int(found.group(1)), int(found.group(2)), found.group(3)))
    return segments, skipped


def segments_to_frames(segments: Sequence[tuple[int, int, str]], length: int | None = None,
                       fill: str = UNCOVERED) -> list[str]:
    """1-based inclusive segments -> per-frame labels of ``length`` frames (default: the last end)."""
    if length is None:
        length = max((end for _, end, _ in segments), default=0)
    frames = [fill] * length
    for start, end, label in segments:
        for index in range(max(start, 1) - 1, min(end, length)):
            frames[index] = label
    return frames


# ---------------------------------------------------------------------------------------------------
# Whole runs


@dataclass
class VideoResult:
    name: str
    frames: int
    correct: int
    edit: float
    counts: dict[float, tuple[int, int, int]]
    unparsed_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "frames": self.frames, "MoF": 100.0 * self.correct / self.frames if self.frames else 0.0,
                "Edit": self.edit, "unparsed_lines": self.unparsed_lines,
                **{f"F1@{round(k * 100)}": f1_from_counts(*c) for k, c in self.counts.items()},
                **{f"tp_fp_fn@{round(k * 100)}": list(c) for k, c in self.counts.items()}}


@dataclass
class SegmentationReport:
    videos: list[VideoResult] = field(default_factory=list)
    overlaps: tuple[float, ...] = OVERLAPS

    def metrics(self) -> dict[str, float]:
        """MoF over all frames, Edit averaged over videos, F1@k from tp/fp/fn summed over videos."""
        frames = sum(v.frames for v in self.videos)
        result = {"MoF": 100.0 * sum(v.correct for v in self.videos) / frames if frames else 0.0,
                  "Edit": sum(v.edit for v in self.videos) / len(self.videos) if self.videos else 0.0}
        for overlap in self.overlaps:
            summed = [sum(v.counts[overlap][i] for v in self.videos) for i in range(3)]
            result[f"F1@{round(overlap * 100)}"] = f1_from_counts(*summed)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics(), "videos": len(self.videos),
                "overlaps": list(self.overlaps), "per_video": [v.to_dict() for v in self.videos]}

    def table(self) -> str:
        metrics = self.metrics()
        head = " ".join(f"{name:>8}" for name in metrics)
        values = " ".join(f"{value:8.2f}" for value in metrics.values())
        return f"{len(self.videos)} videos\n{head}\n{values}"


def evaluate_video(name: str, predicted: Sequence[str], truth: Sequence[str],
                   background: Iterable[str] = MSTCN_BACKGROUND, overlaps: Sequence[float] = OVERLAPS,
                   unparsed_lines: int = 0) -> VideoResult:
    """Per-frame predicted and true labels of one video -> its counts (the prediction is cut or padded to
    the truth's length; padded frames are wrong)."""
    background = tuple(background)
    length = len(truth)
    predicted = list(predicted[:length]) + [UNCOVERED] * max(0, length - len(predicted))
    correct = sum(p == t for p, t in zip(predicted, truth))
    counts = {k: f_score_counts(predicted, truth, k, background) for k in overlaps}
    return VideoResult(name, length, correct, edit_score(predicted, truth, background), counts, unparsed_lines)


def as_frames(value: Any, length: int | None, strict: bool, source: str) -> tuple[list[str], int]:
    """A segments text (``a-b label`` lines) or a list of per-frame labels -> (per-frame labels, unparsed lines)."""
    if isinstance(value, (list, tuple)):
        return [str(label) for label in value], 0
    if value is None:
        return [], 0
    segments, skipped = parse_segments(str(value), strict=strict, source=source)
    return segments_to_frames(segments, length), skipped


def labels_index(folder: str | os.PathLike) -> dict[str, Path]:
    """Breakfast ``.labels`` files under ``folder`` by every name a prediction may use: the file stem
    (``.avi`` dropped) and the path under ``folder`` joined with ``_`` (``P03_cam01_P03_cereals``)."""
    index: dict[str, Path] = {}
    root = Path(folder)
    for path in sorted(root.rglob("*.labels")):
        relative = path.relative_to(root).as_posix()
        stem = re.sub(r"(\.avi)?\.labels$", "", relative)
        index.setdefault(stem.replace("/", "_"), path)
        index.setdefault(stem.rsplit("/", 1)[-1], path)
        index.setdefault(stem, path)
    return index


# ---------------------------------------------------------------------------------------------------
# The command

NAME_KEYS = ("name", "video_name", "id", "video_id", "video")
TRUTH_KEYS = ("truth", "gt", "answer", "A")
PRED_KEYS = ("pred", "prediction")


@dataclass
class SegmentationMetricsArguments:
    """Action-segmentation metrics (MoF, Edit, F1@{10,25,50}, as MS-TCN computes them) of segment predictions."""

    pred_path: str = arg(None, "Predictions: a JSON list (or JSONL) of {name, truth, pred}, truth and pred as 'a-b label' lines or per-frame label lists (also id/video_name, answer).", aliases=["--pred_file", "--input"])
    labels_dir: str | None = arg(None, "Breakfast .labels files: the ground truth of rows without one, found by name (file stem, or person_camera_video).")
    num_frames: int = arg(1000, "Rows the .labels ground truth is rescaled to, as the converter rescaled the answers (the fork: 1000; 0 keeps the original frames).")
    background: str = arg("background", "Comma-separated labels that are not segments for Edit and F1 (MS-TCN: background; e.g. SIL to leave Breakfast's silence out). MoF counts every frame.")
    overlaps: str = arg("0.1,0.25,0.5", "IoU thresholds of F1 (MS-TCN: 0.1,0.25,0.5).")
    output_json: str | None = arg(None, "Also write the metrics and per-video results here (JSON).", aliases=["--output_file"])

    def __post_init__(self) -> None:
        if not self.pred_path:
            raise ValueError("--pred_path is required (a JSON list of {name, truth, pred})")
        try:
            values = tuple(float(part) for part in self.overlaps.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--overlaps {self.overlaps!r}: write thresholds such as 0.1,0.25,0.5") from None
        if not values or any(not 0 < value <= 1 for value in values):
            raise ValueError(f"--overlaps {self.overlaps!r}: thresholds must be in (0, 1]")
        self.overlap_values = values
        if self.num_frames < 0:
            raise ValueError("--num_frames must be 0 (keep frames) or positive")


def _first(record: dict, keys: Sequence[str]) -> Any:
    return next((record[key] for key in keys if record.get(key) is not None), None)


def _truth_from_labels(path: Path, num_frames: int) -> list[str]:
    from llavidal.data.breakfast import read_labels, rescale_segments

    segments = read_labels(path)
    if num_frames:
        segments = rescale_segments(segments, segments[-1].end, num_frames)
    return segments_to_frames([(s.start, s.end, s.label) for s in segments])


def evaluate_predictions(rows: Sequence[dict], *, source: str = "predictions", labels_dir: str | None = None,
                         num_frames: int = 1000, background: Iterable[str] = MSTCN_BACKGROUND,
                         overlaps: Sequence[float] = OVERLAPS) -> tuple[SegmentationReport, int]:
    """Prediction rows -> the report, and how many rows had no parsable prediction."""
    index = labels_index(labels_dir) if labels_dir else None
    report = SegmentationReport(overlaps=tuple(overlaps))
    empty = 0
    for number, row in enumerate(rows):
        where = f"{source} row {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with name, truth, pred")
        name = str(_first(row, NAME_KEYS) or f"row{number}")
        truth_value = _first(row, TRUTH_KEYS)
        if truth_value is not None:
            truth, _ = as_frames(truth_value, None, strict=True, source=f"{where} ({name}) truth")
        elif index is not None and name in index:
            truth = _truth_from_labels(index[name], num_frames)
        else:
            hint = f"no {name}.labels under --labels_dir {labels_dir}" if index is not None else "pass --labels_dir"
            raise ValueError(f"{where} ({name}): no ground truth (fields {', '.join(TRUTH_KEYS)}) and {hint}")
        if not truth:
            raise ValueError(f"{where} ({name}): the ground truth has no segments")
        predicted, unparsed = as_frames(_first(row, PRED_KEYS), len(truth), strict=False, source=where)
        if all(label == UNCOVERED for label in predicted):
            empty += 1
        report.videos.append(evaluate_video(name, predicted, truth, background, overlaps, unparsed))
    return report, empty


PROG = "video_chatgpt/eval/metrics.py"


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Print the metrics (and write ``--output_json``); 1 when no row had a parsable prediction."""
    (args,) = parse((SegmentationMetricsArguments,), argv, prog=PROG, description=SegmentationMetricsArguments.__doc__)
    path = Path(args.pred_path)
    if not path.is_file():
        raise FileNotFoundError(f"--pred_path {path} does not exist")
    rows = load_json_or_jsonl(path)
    if isinstance(rows, dict):  # {name: {truth, pred}} or {name: pred}
        rows = [{"name": key, **(value if isinstance(value, dict) else {"pred": value})} for key, value in rows.items()]
    if not rows:
        raise ValueError(f"{path}: no predictions")
    background = tuple(label.strip() for label in args.background.split(",") if label.strip())
    report, empty = evaluate_predictions(rows, source=str(path), labels_dir=args.labels_dir, num_frames=args.num_frames,
                                         background=background, overlaps=args.overlap_values)
    print(report.table())
    unparsed = sum(v.unparsed_lines for v in report.videos)
    if empty:
        print(f"{empty} of {len(report.videos)} videos have no 'a-b label' prediction line (every frame counted wrong)")
    if unparsed:
        print(f"{unparsed} prediction lines were not 'a-b label' segments and were skipped")
    if args.output_json:
        atomic_write_json(args.output_json, report.to_dict())
        print(f"wrote {args.output_json}")
    if empty == len(report.videos):
        print(f"{PROG}: error: no row of {path} has a prediction of 'a-b label' lines; check the predictions file",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
