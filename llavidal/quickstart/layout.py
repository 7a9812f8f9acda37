"""Where the quickstart puts things (one folder per step under ``OUT``) and the constants of its protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL = "cross_subject"
MODALITY_SETS: dict[str, tuple[str, ...]] = {
    "video": ("video",),
    "pose": ("pose",),
    "object": ("object",),
    "video+pose": ("video", "pose"),
    "all": ("video", "pose", "object"),
}
"""The evaluation's modality sets: one trained model, the other modalities' features withheld at inference."""
PLACEHOLDERS = {"video": "<video>", "pose": "<human_pose>", "object": "<object>"}
MCQ_BENCHMARKS = {"recognition": "adlmcq_action_recognition", "forecasting": "adlmcq_forecasting",
                  "attributes": "adlmcq_attributes"}
MCQ_FILES = {"recognition": "mcq_action_recognition.json", "forecasting": "mcq_forecasting.json",
             "attributes": "mcq_attributes.json"}
DESCRIPTION_BENCHMARK = "adl_descriptions"


@dataclass
class Paths:
    out: Path

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()
        self.world = self.out / "world"
        self.features = self.out / "features"
        self.video = self.features / "video"
        self.pose = self.features / "pose"
        self.object = self.features / "object"
        self.mirror = self.out / "mirror"
        """Mirror images of the train clips whose hand is asked (``recipe.hand_mirrors``): ``mirror/world`` (clips)
        and ``mirror/features/{video,pose,object}``."""
        self.mirror_world = self.mirror / "world"
        self.pose_encoder = self.out / "pose_encoder"
        self.data = self.out / "data"
        self.align = self.out / "align"
        self.train = self.out / "train"
        self.eval = self.out / "eval"
        self.report = self.out / "report"
        self.logs = self.out / "logs"
        self.tiny_llm = self.out / "llm_tiny"

    def annotations(self, split: str) -> Path:
        return self.world / "annotations" / PROTOCOL / split

    def folders(self) -> dict[str, Path]:
        return {"video": self.video, "pose": self.pose, "object": self.object}

    def mirror_folders(self) -> dict[str, Path]:
        return {name: self.mirror / "features" / name for name in ("video", "pose", "object")}

    def predictions(self, task: str, set_name: str, scoring: str = "generate") -> Path:
        """``llavidal eval infer``'s output for one task, modality set and MCQ scoring (``generate``: free
        text parsed; ``loglik``: each option's log-likelihood)."""
        return self.eval / f"{task}__{set_name}{_scoring_suffix(scoring)}.jsonl"

    def scored(self, task: str, set_name: str, scoring: str = "generate") -> Path:
        """The ``report.json`` that ``llavidal eval mcq`` / ``eval judge`` writes for those predictions
        (read with :func:`llavidal.eval.report.load_results`)."""
        return self.eval / f"{task}__{set_name}{_scoring_suffix(scoring)}" / "report.json"


SCORINGS = ("loglik", "generate")
"""How MCQs are answered in the evaluation: by each option's log-likelihood (``llavidal eval infer
--mcq_scoring loglik_norm``: no parser, no refusal, every record), and by free generation then the parser."""


def _scoring_suffix(scoring: str) -> str:
    return "" if scoring == "generate" else f"__{scoring}"


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def split_ids(paths: Paths, split: str) -> list[str]:
    return list(read_json(paths.world / "annotations" / "splits.json")[PROTOCOL][split])


def last_label(meta: dict) -> str | None:
    """The activity a clip ends with (its label, or its last segment's)."""
    segments = meta.get("segments") or []
    return meta.get("label") or (segments[-1].get("label") if segments else None)
