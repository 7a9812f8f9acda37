"""Convert Video-ChatGPT QA (``[{video_id, q, a}]``) into training records.

Run as (the upstream script path and flags)::

    python scripts/convert_instruction_json_to_training_format.py \\
        --input_json_file qa.json --output_json_file train.json [--clip_feature_path feats/video]

    llavidal convert --input_json_file qa.json --output_json_file train.json --with_pose_object

Each QA pair becomes ``{id, video: "<id>.pkl", conversations: [human, gpt]}``; the human turn alternates
``"{q}\\n<video>"`` (even input index) and ``"<video>\\n{q}"`` (odd), as upstream. With
``--clip_feature_path`` pairs whose video has no feature file (any supported extension) are dropped.
``--with_pose_object`` writes LLAVIDAL records: ``pose: "<id>_pose.pkl"``, ``object: "<id>_object.pkl"``
and ``<video><object><human_pose>`` in the human turn.

The Breakfast fork's Q/A text folders have their own converter (:mod:`llavidal.data.breakfast`,
``scripts/convert_instruction_txt_to_training_format_breakfast.py``), which writes the same records through
:func:`training_record`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llavidal.config import arg, command, parse
from llavidal.data.feature_store import FEATURE_EXTENSIONS
from llavidal.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

VIDEO_PLACEHOLDER = "<video>"
LLAVIDAL_PLACEHOLDERS = "<video><object><human_pose>"


def feature_stems(folder: str | os.PathLike | None) -> set[str] | None:
    """Stems of the feature files in ``folder`` (``v_1`` for ``v_1.pkl`` / ``v_1.safetensors``...)."""
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"feature folder {path} does not exist")
    stems = set()
    for name in os.listdir(path):
        for ext in FEATURE_EXTENSIONS:
            if name.endswith(ext):
                stems.add(name[: -len(ext)])
                break
    return stems


def training_record(video_id: str, question: str, answer: str, index: int, placeholders: str = VIDEO_PLACEHOLDER,
                    with_pose_object: bool = False) -> dict[str, Any]:
    """One training record: ``{id, video: "<id>.pkl", [object, pose,] conversations: [human, gpt]}``.

    The human turn is ``"{question}\\n{placeholders}"`` at an even ``index`` and ``"{placeholders}\\n{question}"``
    at an odd one, as upstream alternates them.
    """
    human = f"{question}\n{placeholders}" if index % 2 == 0 else f"{placeholders}\n{question}"
    record: dict[str, Any] = {"id": video_id, "video": f"{video_id}.pkl"}
    if with_pose_object:
        record["object"] = f"{video_id}_object.pkl"
        record["pose"] = f"{video_id}_pose.pkl"
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return record


def convert_records(
    qa: Sequence[dict[str, Any]],
    *,
    video_features: set[str] | None = None,
    with_pose_object: bool = False,
    pose_features: set[str] | None = None,
    object_features: set[str] | None = None,
    source: str = "input",
) -> tuple[list[dict], dict[str, int]]:
    """QA pairs -> training records, and counts (``kept``, ``missing_video``, ...).

    ``*_features`` are sets of file stems present; ``None`` keeps every pair.
    """
    records: list[dict] = []
    counts = {"input": len(qa), "kept": 0, "missing_video": 0, "missing_pose": 0, "missing_object": 0}
    placeholders = LLAVIDAL_PLACEHOLDERS if with_pose_object else VIDEO_PLACEHOLDER
    for index, item in enumerate(qa):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: item {index} is not an object with video_id, q, a")
        video_id = item.get("video_id", item.get("video_name", item.get("id")))
        missing = [key for key, value in (("video_id", video_id), ("q", item.get("q")), ("a", item.get("a"))) if value is None]
        if missing:
            raise ValueError(f"{source}: item {index} lacks {', '.join(missing)} (expected {{video_id, q, a}})")
        video_id = str(video_id)
        if video_features is not None and video_id not in video_features:
            counts["missing_video"] += 1
            continue
        if with_pose_object:
            if pose_features is not None and f"{video_id}_pose" not in pose_features:
                counts["missing_pose"] += 1
                continue
            if object_features is not None and f"{video_id}_object" not in object_features:
                counts["missing_object"] += 1
                continue
        records.append(training_record(video_id, str(item["q"]), str(item["a"]), index, placeholders, with_pose_object))
    counts["kept"] = len(records)
    return records, counts


@dataclass
class ConvertArguments:
    """Convert Video-ChatGPT QA JSON ([{video_id, q, a}]) into LLAVIDAL training records."""

    input_json_file: str = arg(None, "Video-ChatGPT QA JSON: a list of {video_id, q, a}.")
    output_json_file: str = arg(None, "Where to write the training records (JSON list).", aliases=["--output"])
    clip_feature_path: str | None = arg(None, "Video feature folder: drop pairs whose video has no feature file.")
    with_pose_object: bool = arg(False, "Write LLAVIDAL records with pose/object files and <video><object><human_pose>.")
    pose_feature_path: str | None = arg(None, "With --with_pose_object: drop pairs without a pose file here.")
    object_feature_path: str | None = arg(None, "With --with_pose_object: drop pairs without an object file here.")

    def __post_init__(self) -> None:
        if not self.input_json_file or not self.output_json_file:
            raise ValueError("--input_json_file and --output_json_file are required")


@command("llavidal convert")
def main(argv: list[str] | None = None) -> int:
    (args,) = parse((ConvertArguments,), argv, prog="llavidal convert", description=ConvertArguments.__doc__)
    input_path = Path(args.input_json_file)
    if input_path.is_dir():
        from llavidal.data.breakfast import looks_like_breakfast

        message = (f"--input_json_file {input_path} is a folder; this converter wants a JSON file (a list of "
                   "{video_id, q, a})")
        if looks_like_breakfast(input_path):
            message += (". The folder looks like the Breakfast fork's Q/A text files (person/camera/*.txt, .labels): "
                        "convert it with python scripts/convert_instruction_txt_to_training_format_breakfast.py "
                        f"--input_json_file {input_path} --output_json_file {args.output_json_file}")
        raise IsADirectoryError(message)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input_json_file {input_path} does not exist")
    try:
        qa = json.loads(input_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{input_path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(qa, list):
        raise ValueError(f"{input_path}: expected a JSON list of {{video_id, q, a}}")
    records, counts = convert_records(
        qa,
        video_features=feature_stems(args.clip_feature_path),
        with_pose_object=args.with_pose_object,
        pose_features=feature_stems(args.pose_feature_path) if args.with_pose_object else None,
        object_features=feature_stems(args.object_feature_path) if args.with_pose_object else None,
        source=str(input_path),
    )
    atomic_write_json(args.output_json_file, records, indent=None)
    dropped = ", ".join(f"{key} {value}" for key, value in counts.items() if key.startswith("missing") and value)
    print(f"Total annotations retained: {counts['kept']} of {counts['input']}" + (f" (dropped: {dropped})" if dropped else ""))
    print(f"wrote {args.output_json_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
