"""Convert the Breakfast fork's instruction data (Q/A text files + ``.labels`` segments) into training records.

Run as (the fork's script path and flags; ours are optional)::

    python scripts/convert_instruction_txt_to_training_format_breakfast.py \\
        --input_json_file breakfast_qa/ --output_json_file train.json \\
        [--layout "{person}/{camera}/{video}.txt"] [--repeat segments=12,default=2] [--num_frames 1000]

The input folder holds one Q/A text file per video and camera (``P03/cam01/P03_cereals.txt``: ``Q:`` and
``A:`` lines; an answer goes on until the next ``Q:``) and, beside it, the video's ``.labels`` file (Breakfast's
segmentation: ``1-30 SIL`` lines, 1-based inclusive frame ranges). For every video it writes:

- each Q/A pair, with frame numbers (``a-b`` ranges, ``frame N``) rescaled from the video's frames (the end of
  its last labelled segment) to the ``--num_frames`` rows of its features (the fork: 1000);
- the question "List down all the segments. action is {action}" answered with the rescaled segments, one
  ``a-b label`` line each (what ``video_chatgpt/eval/metrics.py`` reads back);

each repeated as ``--repeat`` says (the fork: the segments question 12 times, every other question twice),
in our training-record format (:func:`llavidal.data.convert.training_record`): ``{id, video: "<id>.pkl",
conversations}``, ``<video>`` alternating after / before the question. The id joins the layout's fields
(``P03_cam01_P03_cereals``: one feature file per video and camera, as ``llavidal extract video --video_id
path`` names them). Videos named in ``valid.txt`` (the fork's validation split; ``--valid_file``, found in the
input folder by default) are left out.

``--layout`` describes where the files are instead of editing loops: ``{name}`` matches one path part (or
part of one), ``*`` anything within a part. Fields ``video`` (the video's name) and ``action`` (default: the
video name after its first ``_``: ``P03_cereals`` -> ``cereals``) have meanings; any others only name things.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from llavidal.config import arg, command, parse
from llavidal.data.convert import VIDEO_PLACEHOLDER, feature_stems, training_record
from llavidal.utils.io import atomic_write_json

DEFAULT_LAYOUT = "{person}/{camera}/{video}.txt"
SEGMENTS_QUESTION = "List down all the segments. action is {action}"
DEFAULT_REPEAT = "segments=12,default=2"
VALID_FILE_NAME = "valid.txt"
LABELS_SUFFIXES = (".labels", ".avi.labels")
"""Where a video's segments are looked for when ``--labels_layout`` is not given: the Q/A file's path with
its extension replaced by each of these, in ``--labels_dir``."""

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FRAME_NUMBERS = re.compile(
    r"(?P<word>\bframes?\s+)?(?<!\w)(?<!\d\.)(?P<start>\d+)(?:\s*-\s*(?P<end>\d+))?(?!\w|\.\d)", re.IGNORECASE)
"""A frame range ``a-b`` (with or without the word frame), or ``frame N``; other numbers are left alone."""
_LABEL_LINE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s+(\S.*?)\s*$")


class BreakfastDataError(ValueError):
    """The input does not follow the layout or the formats; the message names the file and line."""


# ---------------------------------------------------------------------------------------------------
# The layout


@dataclass(frozen=True)
class Layout:
    """A path pattern such as ``{person}/{camera}/{video}.txt``, relative to the input folder."""

    pattern: str

    def __post_init__(self) -> None:
        if not _FIELD.search(self.pattern):
            raise ValueError(f"--layout {self.pattern!r}: name at least one field, e.g. {DEFAULT_LAYOUT!r}")
        if self.pattern.startswith("/") or "\\" in self.pattern:
            raise ValueError(f"--layout {self.pattern!r}: write a relative path with '/' separators")

    @property
    def fields(self) -> list[str]:
        """Distinct field names, in the order they first appear."""
        return list(dict.fromkeys(_FIELD.findall(self.pattern)))

    def regex(self) -> re.Pattern:
        parts, seen, position = [], set(), 0
        for found in _FIELD.finditer(self.pattern):
            parts.append(_literal(self.pattern[position : found.start()]))
            name = found.group(1)
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)")
            seen.add(name)
            position = found.end()
        parts.append(_literal(self.pattern[position:]))
        return re.compile("^" + "".join(parts) + "$")

    def match(self, relative_path: str) -> dict[str, str] | None:
        found = self.regex().match(relative_path)
        return found.groupdict() if found else None

    def format(self, values: dict[str, str]) -> str:
        missing = [name for name in self.fields if name not in values]
        if missing:
            raise ValueError(f"layout {self.pattern!r} needs the fields {missing}, which the Q/A layout does not name")
        return _FIELD.sub(lambda found: values[found.group(1)], self.pattern)


def _literal(text: str) -> str:
    return "[^/]*?".join(re.escape(piece) for piece in text.split("*"))  # '*': anything within one path part


# ---------------------------------------------------------------------------------------------------
# The file formats


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    label: str

    def line(self) -> str:
        return f"{self.start}-{self.end} {self.label}"


def parse_segment_lines(text: str, source: str = "segments") -> list[Segment]:
    """``a-b label`` lines (Breakfast ``.labels``; the segments answers) -> segments; blank lines are skipped."""
    segments = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = _LABEL_LINE.match(line)
        if not found:
            raise BreakfastDataError(f"{source}:{number}: expected 'start-end label' (e.g. '1-30 SIL'), got {line.strip()!r}")
        start, end, label = int(found.group(1)), int(found.group(2)), found.group(3)
        if end < start:
            raise BreakfastDataError(f"{source}:{number}: segment ends ({end}) before it starts ({start})")
        segments.append(Segment(start, end, label))
    return segments


def read_labels(path: str | os.PathLike) -> list[Segment]:
    path = Path(path)
    segments = parse_segment_lines(path.read_text(encoding="utf-8", errors="replace"), str(path))
    if not segments:
        raise BreakfastDataError(f"{path}: no segments ('start-end label' lines); fix or remove the file")
    return segments


def parse_qa_text(text: str, source: str = "qa") -> list[tuple[str, str]]:
    """``Q:`` / ``A:`` lines -> (question, answer) pairs; lines after an ``A:`` continue the answer."""
    pairs: list[tuple[str, str]] = []
    question: list[str] | None = None
    answer: list[str] | None = None
    question_line = 0

    def close(number: int) -> None:
        if question is None:
            return
        if answer is None:
            raise BreakfastDataError(f"{source}:{question_line}: question without an 'A:' line before line {number}")
        pairs.append(("\n".join(question).strip(), "\n".join(answer).strip()))

    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        head = line.lstrip()[:2].upper()
        if head == "Q:":
            close(number)
            question, answer, question_line = [line.lstrip()[2:].strip()], None, number
        elif head == "A:":
            if question is None:
                raise BreakfastDataError(f"{source}:{number}: 'A:' before any 'Q:' line")
            if answer is not None:
                raise BreakfastDataError(f"{source}:{number}: a second 'A:' for the question of line {question_line}")
            answer = [line.lstrip()[2:].strip()]
        elif line.strip():
            if answer is not None:
                answer.append(line.strip())
            elif question is not None:
                question.append(line.strip())
            else:
                raise BreakfastDataError(f"{source}:{number}: text before the first 'Q:' line: {line.strip()!r}")
    close(len(lines) + 1)
    return pairs


# ---------------------------------------------------------------------------------------------------
# Rescaling frame numbers to the feature rows


def rescale_range(start: int, end: int, total_frames: int, num_frames: int) -> tuple[int, int]:
    """A 1-based inclusive frame range of a ``total_frames`` video -> the same range of ``num_frames`` rows.

    ``start -> round((start - 1) * T / N) + 1`` and ``end -> round(end * T / N)``: consecutive segments stay
    consecutive (no gap, no overlap) and the last one ends at row ``T``. A segment shorter than one row can
    come out empty (``end < start``).
    """
    scale = num_frames / total_frames
    return int(round((start - 1) * scale)) + 1, min(num_frames, int(round(end * scale)))


def rescale_segments(segments: Sequence[Segment], total_frames: int, num_frames: int) -> list[Segment]:
    rescaled = []
    for segment in segments:
        start, end = rescale_range(segment.start, segment.end, total_frames, num_frames)
        if end >= start:  # shorter than one feature row: no row of its own
            rescaled.append(Segment(start, end, segment.label))
    return rescaled


def rescale_text(text: str, total_frames: int, num_frames: int) -> str:
    """Frame numbers in a question or answer (``a-b`` ranges, ``frame N``) rescaled to the feature rows."""
    def one(found: re.Match) -> str:
        word, start = found.group("word") or "", int(found.group("start"))
        if found.group("end") is not None:
            end = int(found.group("end"))
            if end < start:  # not a frame range (e.g. a date); leave it
                return found.group(0)
            start, end = rescale_range(start, end, total_frames, num_frames)
            return f"{word}{start}-{max(start, end)}"
        if not word:  # a number that is not said to be a frame
            return found.group(0)
        return f"{word}{max(1, min(num_frames, int(round(start * num_frames / total_frames))))}"

    return _FRAME_NUMBERS.sub(one, text)


# ---------------------------------------------------------------------------------------------------
# Repetition per question type


@dataclass(frozen=True)
class RepeatPolicy:
    """How many copies each question type gets: ``segments`` (the added question), ``default`` (any other),
    and any other key: questions containing it (case-insensitive), the first such key in order."""

    segments: int = 12
    default: int = 2
    by_text: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "RepeatPolicy":
        values: dict[str, int] = {}
        by_text = []
        for item in (part.strip() for part in (text or "").split(",")):
            if not item:
                continue
            key, sep, count = item.rpartition("=")
            if not sep or not key.strip():
                raise ValueError(f"--repeat {text!r}: write TYPE=N items, e.g. {DEFAULT_REPEAT} or 'how many=3'")
            try:
                number = int(count)
            except ValueError:
                raise ValueError(f"--repeat {text!r}: {count!r} is not a whole number") from None
            if number < 0:
                raise ValueError(f"--repeat {text!r}: {key.strip()}={number} is negative")
            key = key.strip()
            if key.lower() in ("segments", "default"):
                values[key.lower()] = number
            else:
                by_text.append((key.lower(), number))
        return cls(segments=values.get("segments", cls.segments), default=values.get("default", cls.default),
                   by_text=tuple(by_text))

    def copies(self, question: str, is_segments: bool = False) -> int:
        if is_segments:
            return self.segments
        lowered = question.lower()
        for key, number in self.by_text:
            if key in lowered:
                return number
        return self.default


# ---------------------------------------------------------------------------------------------------
# Conversion


@dataclass
class VideoQA:
    """One video (and camera): its Q/A file, fields from the layout, and its segments."""

    video_id: str
    qa_path: Path
    fields: dict[str, str]
    labels_path: Path | None = None

    @property
    def video(self) -> str:
        return self.fields.get("video") or self.qa_path.stem

    @property
    def action(self) -> str:
        if self.fields.get("action"):
            return self.fields["action"]
        name = self.video
        return name.split("_", 1)[1] if "_" in name else name


@dataclass
class BreakfastCounts:
    files: int = 0
    videos: int = 0
    skipped_valid: int = 0
    missing_labels: int = 0
    missing_video: int = 0
    qa_pairs: int = 0
    records: int = 0
    segment_records: int = 0
    unmatched: list[str] = field(default_factory=list)

    def line(self) -> str:
        dropped = [f"{value} {what}" for what, value in
                   (("listed as validation videos", self.skipped_valid), ("without .labels", self.missing_labels),
                    ("without features", self.missing_video)) if value]
        return (f"{self.records} records ({self.segment_records} segment lists, {self.records - self.segment_records} "
                f"from {self.qa_pairs} Q/A pairs) from {self.videos} videos of {self.files} Q/A files"
                + (f"; left out: {', '.join(dropped)}" if dropped else "")
                + (f"; {len(self.unmatched)} files do not match the layout (e.g. {self.unmatched[0]})" if self.unmatched else ""))


def find_qa_files(root: Path, layout: Layout, id_format: str | None = None) -> tuple[list[VideoQA], list[str]]:
    """Q/A files under ``root`` that match ``layout`` (sorted by path), and the ``.txt`` files that do not."""
    pattern = layout.regex()
    suffix = Path(layout.pattern).suffix
    found, unmatched, ids = [], [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name == VALID_FILE_NAME or (suffix and not name.endswith(suffix)):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            matched = pattern.match(relative)
            if matched is None:
                if name.endswith(".txt"):
                    unmatched.append(relative)
                continue
            fields = matched.groupdict()
            video_id = id_format.format(**fields) if id_format else "_".join(fields[name] for name in layout.fields)
            if video_id in ids:
                raise BreakfastDataError(
                    f"{relative} and {ids[video_id]} both give the id {video_id!r}; put every distinguishing folder "
                    "in --layout as a field (e.g. {person}/{camera}/{video}.txt) or change --id_format")
            ids[video_id] = relative
            found.append(VideoQA(video_id, path, fields))
    found.sort(key=lambda item: item.qa_path)
    return found, unmatched


def read_valid_list(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            names.add(name)
            names.add(re.sub(r"\.(txt|avi|mp4|labels|pkl)$", "", name))
    return names


def in_valid(item: VideoQA, root: Path, valid: set[str]) -> bool:
    relative = item.qa_path.relative_to(root).with_suffix("").as_posix()
    return bool({item.video_id, item.video, relative, item.qa_path.stem} & valid)


def labels_candidates(item: VideoQA, root: Path, labels_dir: Path, labels_layout: Layout | None) -> list[Path]:
    if labels_layout is not None:
        return [labels_dir / labels_layout.format(item.fields)]
    relative = item.qa_path.relative_to(root).with_suffix("")
    return [labels_dir / relative.with_name(relative.name + suffix) for suffix in LABELS_SUFFIXES]


def convert_breakfast(
    root: str | os.PathLike,
    *,
    layout: Layout = Layout(DEFAULT_LAYOUT),
    labels_dir: str | os.PathLike | None = None,
    labels_layout: Layout | None = None,
    repeat: RepeatPolicy = RepeatPolicy(),
    num_frames: int = 1000,
    segments_question: str = SEGMENTS_QUESTION,
    valid: Iterable[str] = (),
    video_features: set[str] | None = None,
    skip_missing_labels: bool = False,
    rescale_frames: bool = True,
    id_format: str | None = None,
) -> tuple[list[dict], BreakfastCounts]:
    """The Breakfast Q/A folder ``root`` -> training records and counts (see the module docstring)."""
    root = Path(root)
    labels_dir = Path(labels_dir) if labels_dir else root
    valid = set(valid)
    videos, unmatched = find_qa_files(root, layout, id_format)
    counts = BreakfastCounts(files=len(videos), unmatched=unmatched)
    records: list[dict] = []

    def add(video_id: str, question: str, answer: str, copies: int) -> None:
        for _ in range(copies):
            # <video> after the question at even positions and before it at odd ones, as upstream
            records.append(training_record(video_id, question, answer, len(records), VIDEO_PLACEHOLDER))

    for item in videos:
        if valid and in_valid(item, root, valid):
            counts.skipped_valid += 1
            continue
        if video_features is not None and item.video_id not in video_features:
            counts.missing_video += 1
            continue
        candidates = labels_candidates(item, root, labels_dir, labels_layout)
        labels_path = next((path for path in candidates if path.is_file()), None)
        if labels_path is None:
            if skip_missing_labels:
                counts.missing_labels += 1
                continue
            raise FileNotFoundError(
                f"{item.qa_path}: no segments file ({' or '.join(str(p) for p in candidates)}); pass --labels_dir / "
                "--labels_layout where the .labels files are, or --skip_missing_labels to leave such videos out")
        segments = read_labels(labels_path)
        total_frames = segments[-1].end
        pairs = parse_qa_text(item.qa_path.read_text(encoding="utf-8", errors="replace"), str(item.qa_path))
        counts.videos += 1
        counts.qa_pairs += len(pairs)
        for question, answer in pairs:
            if rescale_frames:
                question, answer = (rescale_text(question, total_frames, num_frames),
                                    rescale_text(answer, total_frames, num_frames))
            add(item.video_id, question, answer, repeat.copies(question))
        rescaled = rescale_segments(segments, total_frames, num_frames) if rescale_frames else list(segments)
        before = len(records)
        add(item.video_id, segments_question.format(action=item.action, video=item.video),
            "\n".join(segment.line() for segment in rescaled), repeat.copies("", is_segments=True))
        counts.segment_records += len(records) - before
    counts.records = len(records)
    return records, counts


def looks_like_breakfast(folder: str | os.PathLike, limit: int = 2000) -> bool:
    """Whether ``folder`` looks like the fork's input: ``.labels`` files, or Q/A ``.txt`` files in subfolders."""
    folder = Path(folder)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            seen += 1
            if name.endswith(".labels"):
                return True
            if name.endswith(".txt") and name != VALID_FILE_NAME and Path(dirpath) != folder:
                try:
                    head = (Path(dirpath) / name).read_text(encoding="utf-8", errors="replace")[:2000]
                except OSError:
                    continue
                if re.search(r"^\s*Q:", head, re.MULTILINE):
                    return True
            if seen >= limit:
                return False
    return False


# ---------------------------------------------------------------------------------------------------
# The command


@dataclass
class BreakfastConvertArguments:
    """Convert the Breakfast fork's Q/A text files and .labels segments into LLAVIDAL training records."""

    input_json_file: str = arg(None, "The Q/A folder (the fork's flag name): person/camera/*.txt files with Q:/A: lines and .labels beside them.", aliases=["--input_dir"])
    output_json_file: str = arg(None, "Where to write the training records (JSON list).", aliases=["--output"])
    layout: str = arg(DEFAULT_LAYOUT, "Where the Q/A files are under the input folder: {field} matches (part of) a path part, * anything within one; e.g. {person}/{camera}/{video}.txt or {person}/*/{video}.txt.")
    labels_dir: str | None = arg(None, "Folder of the .labels files (default: the input folder).")
    labels_layout: str | None = arg(None, "Where a video's .labels file is under --labels_dir, with --layout's fields (default: the Q/A file's path with .labels or .avi.labels for .txt).")
    repeat: str = arg(DEFAULT_REPEAT, "Copies per question type: segments (the added segments question), default (any other), or TEXT=N for questions containing TEXT (the fork: segments=12,default=2).")
    num_frames: int = arg(1000, "Feature rows per video that frame numbers are rescaled to (the fork: 1000 frames).")
    segments_question: str = arg(SEGMENTS_QUESTION, "The added question, answered with the video's segments ({action}, {video} filled in).")
    valid_file: str | None = arg(None, "Videos to leave out, one name per line (the fork's valid.txt; default: valid.txt in the input folder when present; 'none' to keep all).")
    clip_feature_path: str | None = arg(None, "Video feature folder: leave out videos without a feature file (named by the id).")
    id_format: str | None = arg(None, "The record id from the layout's fields, e.g. {person}_{camera}_{video} (default: every field joined with '_').")
    skip_missing_labels: bool = arg(False, "Leave out videos without a .labels file instead of stopping.")
    rescale_frames: bool = arg(True, "Rescale frame numbers to --num_frames rows (--no_rescale_frames keeps them).")

    def __post_init__(self) -> None:
        if not self.input_json_file or not self.output_json_file:
            raise ValueError("--input_json_file (the Q/A folder) and --output_json_file are required")
        if self.num_frames < 1:
            raise ValueError(f"--num_frames {self.num_frames}: must be positive")
        Layout(self.layout)  # validates
        RepeatPolicy.parse(self.repeat)


PROG = "convert_instruction_txt_to_training_format_breakfast.py"


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    (args,) = parse((BreakfastConvertArguments,), argv, prog=PROG, description=BreakfastConvertArguments.__doc__)
    root = Path(args.input_json_file)
    if not root.is_dir():
        hint = (" (a JSON file of {video_id, q, a}: use scripts/convert_instruction_json_to_training_format.py)"
                if root.is_file() else "")
        raise NotADirectoryError(f"--input_json_file {root}: expected the folder of Q/A text files{hint}")
    valid: set[str] = set()
    valid_path = None
    if args.valid_file is None:
        valid_path = root / VALID_FILE_NAME if (root / VALID_FILE_NAME).is_file() else None
    elif args.valid_file.strip().lower() not in ("", "none"):
        valid_path = Path(args.valid_file)
        if not valid_path.is_file():
            raise FileNotFoundError(f"--valid_file {valid_path} does not exist; pass the fork's valid.txt or 'none'")
    if valid_path is not None:
        valid = read_valid_list(valid_path)
    layout = Layout(args.layout)
    records, counts = convert_breakfast(
        root, layout=layout, labels_dir=args.labels_dir,
        labels_layout=Layout(args.labels_layout) if args.labels_layout else None,
        repeat=RepeatPolicy.parse(args.repeat), num_frames=args.num_frames,
        segments_question=args.segments_question, valid=valid,
        video_features=feature_stems(args.clip_feature_path), skip_missing_labels=args.skip_missing_labels,
        rescale_frames=args.rescale_frames, id_format=args.id_format,
    )
    if counts.files == 0:
        example = f" (found e.g. {counts.unmatched[0]})" if counts.unmatched else ""
        raise FileNotFoundError(f"{root}: no Q/A files match --layout {layout.pattern!r}{example}; describe where they "
                                "are with --layout, e.g. '{person}/{camera}/{video}.txt' or '{video}.txt'")
    atomic_write_json(args.output_json_file, records, indent=None)
    if valid_path is not None:
        print(f"validation videos: {valid_path} ({counts.skipped_valid} left out)")
    print(counts.line())
    print(f"wrote {args.output_json_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
