"""The quickstart's training data, all from the TRAIN split (held-out subjects stay unseen).

- :func:`build_training_records`: the instruction-tuning conversations (``data/train.json``): per clip its
  ADLMCQ question (with the benchmark's own prompt) plus the recipe's kinds of question from the world's
  training record, reduced-modality copies of the MCQs, and extra forecasting questions;
- :func:`build_alignment_labels`: ``llavidal align``'s records (each clip's feature files and activity);
- :func:`pose_text_pairs`: ``llavidal pose-pretrain``'s skeleton/text pairs;
- :func:`build_mirror_records`: the hand questions of the mirrored train clips (``data/mirror.json``).

A question of a world record is classified by the ``type`` the world writes on its human turn
(:func:`llavidal.sim.annotate.training_record`), never by its wording.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from llavidal.quickstart.layout import (
    MCQ_BENCHMARKS,
    MCQ_FILES,
    MODALITY_SETS,
    PLACEHOLDERS,
    Paths,
    last_label,
    read_json,
    split_ids,
)
from llavidal.quickstart.recipes import Recipe

TURN_KINDS = {"detail": "description"}
"""The world's turn types that recipes name otherwise (``Recipe.record_turns``); the others keep their name."""
_PLACEHOLDER_PATTERN = re.compile(r"<video>|<human_pose>|<object>")


def placeholder_text(modalities: list[str]) -> str:
    # registry order (video, object, pose), as the inference engine writes them
    return "".join(PLACEHOLDERS[m] for m in ("video", "object", "pose") if m in modalities)


def turn_kind(message: dict, where: str = "") -> str:
    """What a world record's human turn asks: its ``type`` (``detail`` named ``description``)."""
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"{where}: a question has no 'type' (a world written before question types existed); "
            "delete the quickstart's world/ folder and rerun to regenerate it"
        )
    return TURN_KINDS.get(kind, kind)


def record_turns(record: dict, where: str = "") -> list[tuple[str, str, str]]:
    """(kind, question without placeholders, answer) for each question-answer pair of a training record."""
    turns, messages = [], record.get("conversations") or []
    for human, gpt in zip(messages[0::2], messages[1::2]):
        question = _PLACEHOLDER_PATTERN.sub("", str(human["value"])).strip()
        turns.append((turn_kind(human, f"{where} record {record.get('id')!r}"), question, str(gpt["value"])))
    return turns


def build_training_records(paths: Paths, recipe: Recipe, seed: int = 0) -> tuple[list[dict], dict]:
    """Training conversations from the TRAIN split: one per clip, plus reduced-modality MCQ copies, forecasting
    variants and (``recipe.video_only_samples``) the one-turn video-only set.

    Each clip's conversation asks its ADLMCQ question (recognition, or forecasting for routine prefixes)
    with the exact prompt the benchmark uses at evaluation, answered as ``recipe.mcq_answer`` says, and the
    recipe's kinds of turns from the world's training record (e.g. "What is the person doing?", a detailed
    description for a share of the clips), in a per-clip random order. The features' placeholders follow
    the first question, as the inference engine writes them.
    """
    rng = random.Random(seed)
    records_path = paths.annotations("train") / "records.json"
    records = {r["id"]: r for r in read_json(records_path)}
    counts = {"clips": 0, "mcq": 0, "record_turns": 0, "reduced_copies": 0}
    mcq_turns = train_mcq_turns(paths, recipe, counts)

    out: list[dict] = []
    variants = forecast_variants(paths, recipe, records) + successor_questions(paths, recipe, records, rng)
    counts["forecast_variants"] = len(variants)
    for clip_id, question, answer in variants:
        subset = [m for m in rng.choice(list(MODALITY_SETS.values())) if records[clip_id].get(m)]
        out.append(conversation(clip_id, records[clip_id], subset, [(question, answer)], suffix=f"#f{len(out)}"))
    for clip_id, record in records.items():
        modalities = [m for m in ("video", "pose", "object") if record.get(m)]
        pairs = list(mcq_turns.get(clip_id, []))
        with_description = rng.random() < recipe.description_fraction
        kept = [(q, a) for kind, q, a in record_turns(record, str(records_path))
                if kind in recipe.record_turns and (kind != "description" or with_description)]
        counts["record_turns"] += len(kept)
        pairs += kept
        rng.shuffle(pairs)
        if not pairs:
            continue
        out.append(conversation(clip_id, record, modalities, pairs, suffix=""))
        counts["clips"] += 1
        if recipe.reduced_modality_copies:
            for index, (question, answer) in enumerate(mcq_turns.get(clip_id, [])):
                out.append(conversation(clip_id, record, reduced_modality_set(record, rng), [(question, answer)],
                                        suffix=f"#m{index}"))
                counts["reduced_copies"] += 1
    if recipe.attribute_variants > 0:
        attributes = attribute_variants(paths, recipe, records)
        out += attributes
        counts["attribute_variants"] = len(attributes)
    if recipe.object_questions > 0:
        objects = object_questions(paths, recipe, records)
        out += objects
        counts["object_questions"] = len(objects)
    if recipe.video_only_samples:
        video_only, _ = build_video_only_records(paths, recipe, seed=seed)
        out += video_only
        counts["video_only"] = len(video_only)
    rng.shuffle(out)
    counts["samples"] = len(out)
    return out, counts


def reduced_modality_set(record: dict, rng: random.Random) -> list[str]:
    """A random reduced modality set (not ``all``) the record has every modality of (a clip without objects is
    never "object" only): what a reduced-modality copy of an MCQ shows."""
    return list(rng.choice([s for name, s in MODALITY_SETS.items() if name != "all" and all(record.get(m) for m in s)]))


def train_mcq_turns(paths: Paths, recipe: Recipe, counts: dict | None = None,
                    tasks: tuple[str, ...] | None = None) -> dict[str, list[tuple[str, str]]]:
    """clip id -> [(the benchmark's prompt, the recipe's answer)] of the TRAIN split's ADLMCQ questions
    (``tasks``: the MCQ_FILES keys to read, default all)."""
    from llavidal.eval.tasks import load_task

    train_dir = paths.annotations("train")
    turns: dict[str, list[tuple[str, str]]] = {}
    for task, file_name in MCQ_FILES.items():
        path = train_dir / file_name
        if (tasks is not None and task not in tasks) or not path.is_file():
            continue  # a world without MCQs for this task: the records alone are used
        spec = load_task(MCQ_BENCHMARKS[task])
        for mcq in spec.load_records(path):
            answer = mcq_answer(recipe, mcq)
            if task == "forecasting":
                answer = forecast_answer(recipe, answer, _clip_last_label(paths, mcq.video_stem))
            turns.setdefault(mcq.video_stem, []).append((spec.prompts(mcq)["main"], answer))
            if counts is not None:
                counts["mcq"] = counts.get("mcq", 0) + 1
    return turns


def build_video_only_records(paths: Paths, recipe: Recipe, seed: int = 0,
                             tasks: tuple[str, ...] = ("recognition", "forecasting"),
                             record_kinds: tuple[str, ...] = ("recognition",)) -> tuple[list[dict], dict]:
    """Training data that exercises the video path alone (``llavidal ablate --protocol video``): per TRAIN clip its
    ADLMCQ questions of ``tasks`` and its record turns of ``record_kinds`` ("What is the person doing?"), each a
    one-turn sample with the video features only. Short samples: a design's budget goes to reading the video."""
    rng = random.Random(seed)
    records_path = paths.annotations("train") / "records.json"
    records = {r["id"]: r for r in read_json(records_path)}
    counts = {"clips": 0, "mcq": 0, "record_turns": 0}
    turns = train_mcq_turns(paths, recipe, counts, tasks)
    out: list[dict] = []
    for clip_id, record in records.items():
        if not record.get("video"):
            continue
        pairs = list(turns.get(clip_id, []))
        kept = [(q, a) for kind, q, a in record_turns(record, str(records_path)) if kind in record_kinds]
        counts["record_turns"] += len(kept)
        pairs += kept
        if pairs:
            counts["clips"] += 1
        for index, pair in enumerate(pairs):
            out.append(conversation(clip_id, record, ["video"], [pair], suffix=f"#v{index}"))
    rng.shuffle(out)
    counts["samples"] = len(out)
    return out, counts


def _clip_last_label(paths: Paths, clip_id: str) -> str | None:
    meta_path = paths.world / "meta" / f"{clip_id}.json"
    return last_label(read_json(meta_path)) if meta_path.is_file() else None


FORECAST_LEAD = "The answer is"
"""The words a reasoned forecasting answer names its choice after; log-likelihood evaluation scores the choices
after the model's own generated answer up to them (``llavidal eval infer --loglik_lead``)."""


def forecast_answer(recipe: Recipe, answer: str, last: str | None) -> str:
    """A forecasting training answer; with ``recipe.forecast_reasoning`` it names the clip's last activity first."""
    if not recipe.forecast_reasoning or not last:
        return answer
    return f"The video ends with {last}. {FORECAST_LEAD} {answer}."


def mcq_answer(recipe: Recipe, mcq: Any) -> str:
    text = mcq.choices[mcq.answer_letter]
    return {"letter": mcq.answer_letter, "text": text, "letter_text": f"({mcq.answer_letter}) {text}"}[recipe.mcq_answer]


def forecast_variants(paths: Paths, recipe: Recipe, records: dict) -> list[tuple[str, str, str]]:
    """(clip id, prompt, answer) of ``recipe.forecast_variants`` re-drawn forecasting MCQs per train clip."""
    from llavidal.eval.tasks import load_task
    from llavidal.eval.records import normalise_record
    from llavidal.sim.annotate import forecasting_mcq

    path = paths.annotations("train") / MCQ_FILES["forecasting"]
    if recipe.forecast_variants <= 0 or not path.is_file():
        return []
    spec = load_task(MCQ_BENCHMARKS["forecasting"])
    world_seed = int(read_json(paths.world / "world.json").get("seed", 0))
    out = []
    for original in spec.load_records(path):
        meta_path = paths.world / "meta" / f"{original.video_stem}.json"
        if original.video_stem not in records or not meta_path.is_file():
            continue
        meta = read_json(meta_path)
        for variant in range(1, recipe.forecast_variants + 1):
            raw = forecasting_mcq(meta, seed=world_seed + 7919 * variant)
            mcq = normalise_record(raw, "mcq", where=f"{meta_path} (variant {variant})", default_task="action_forecasting")
            answer = forecast_answer(recipe, mcq_answer(recipe, mcq), last_label(meta))
            out.append((original.video_stem, spec.prompts(mcq)["main"], answer))
    return out


def attribute_variants(paths: Paths, recipe: Recipe, records: dict) -> list[dict]:
    """``recipe.attribute_variants`` one-turn samples per train-split attribute MCQ (see Recipe), redrawn by
    :func:`llavidal.sim.annotate.attribute_mcqs` with other seeds, every modality of the clip shown."""
    world_seed = int(read_json(paths.world / "world.json").get("seed", 0))
    out = []
    for clip_id in split_ids(paths, "train"):
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        record = records.get(clip_id)
        if record is None or not meta_path.is_file():
            continue
        out += redrawn_attribute_samples(clip_id, record, read_json(meta_path), recipe, world_seed, str(meta_path))
    return out


def redrawn_attribute_samples(clip_id: str, record: dict, meta: dict, recipe: Recipe, world_seed: int, where: str,
                              tasks: tuple[str, ...] = ("hand", "object", "colour"), suffix: str = "") -> list[dict]:
    """One-turn samples of a clip's attribute MCQs (of ``tasks``) redrawn ``recipe.attribute_variants`` times with
    other seeds (other wording, distractors and order), every modality of the clip shown."""
    from llavidal.sim.annotate import attribute_mcqs

    out = []
    for variant in range(1, recipe.attribute_variants + 1):
        raws = [raw for raw in attribute_mcqs(meta, seed=world_seed + 7919 * variant) if raw["task"] in tasks]
        out += attribute_samples(clip_id, record, raws, recipe, f"{where} (attribute variant {variant})",
                                 lambda raw: f"{suffix}#a{variant}{raw['task'][0]}")
    return out


def attribute_samples(clip_id: str, record: dict, raws: list[dict], recipe: Recipe, where: str,
                      suffix: Callable[[dict], str]) -> list[dict]:
    """One-turn samples of attribute MCQs in the world's format (``raws``), every modality of the clip shown, each
    asked with the benchmark's prompt and answered as the recipe writes MCQ answers."""
    from llavidal.eval.records import normalise_record
    from llavidal.eval.tasks import load_task

    spec = load_task(MCQ_BENCHMARKS["attributes"])
    modalities = [m for m in ("video", "pose", "object") if record.get(m)]
    out = []
    for raw in raws:
        mcq = normalise_record(raw, "mcq", where=where, default_task=raw.get("task", ""))
        out.append(conversation(clip_id, record, modalities, [(spec.prompts(mcq)["main"], mcq_answer(recipe, mcq))],
                                suffix=suffix(raw)))
    return out


def object_questions(paths: Paths, recipe: Recipe, records: dict) -> list[dict]:
    """``recipe.object_questions`` draws of :func:`llavidal.sim.annotate.object_mcqs` per train-split clip that is not
    a single activity (the world asks those itself) and has object features: what colour each object in view is,
    and which object the person handles when there is one (see Recipe)."""
    from llavidal.sim.annotate import object_mcqs

    world_seed = int(read_json(paths.world / "world.json").get("seed", 0))
    out = []
    for clip_id in split_ids(paths, "train"):
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        record = records.get(clip_id)
        if record is None or not record.get("object") or not meta_path.is_file():
            continue
        meta = read_json(meta_path)
        if meta.get("kind") == "single":
            continue
        for draw in range(1, recipe.object_questions + 1):
            raws = object_mcqs(meta, seed=world_seed + 104729 * draw)
            out += attribute_samples(clip_id, record, raws, recipe, f"{meta_path} (object question, draw {draw})",
                                     lambda raw: f"#o{draw}{raw['id'].partition(':')[2].replace(':', '-')}")
    return out


def hand_mirror_clips(paths: Paths) -> list[str]:
    """TRAIN clips whose hand is asked (the world writes them a "which hand" MCQ), in split order: the clips
    :mod:`llavidal.sim.mirror` mirrors for ``recipe.hand_mirrors``."""
    from llavidal.sim.annotate import attribute_mcqs

    world_seed = int(read_json(paths.world / "world.json").get("seed", 0))
    out = []
    for clip_id in split_ids(paths, "train"):
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        if meta_path.is_file() and any(m["task"] == "hand" for m in attribute_mcqs(read_json(meta_path), world_seed)):
            out.append(clip_id)
    return out


def build_mirror_records(paths: Paths, recipe: Recipe, seed: int = 0) -> tuple[list[dict], dict]:
    """Training samples of the mirrored hand clips (``recipe.hand_mirrors``; features in the mirror's folders):
    per clip, its hand questions as the world writes them for the mirrored metadata (the attribute MCQ with the
    benchmark's prompt, and the record's "Which hand does the person use?" when ``recipe.record_turns`` has
    ``hand``) with every modality, plus the MCQ with a reduced modality set as the other MCQs get
    (``recipe.reduced_modality_copies``) and its ``recipe.attribute_variants`` redrawn copies, as the original
    clip's get. Counts give the answers' hands."""
    from llavidal.eval.records import normalise_record
    from llavidal.eval.tasks import load_task
    from llavidal.sim.annotate import attribute_mcqs, clip_questions
    from llavidal.sim.mirror import mirror_meta

    rng = random.Random(seed)
    records_path = paths.annotations("train") / "records.json"
    records = {r["id"]: r for r in read_json(records_path)}
    spec = load_task(MCQ_BENCHMARKS["attributes"])
    world_seed = int(read_json(paths.world / "world.json").get("seed", 0))
    out: list[dict] = []
    counts = {"clips": 0, "left": 0, "right": 0, "samples": 0}
    for clip_id in hand_mirror_clips(paths):
        record = records.get(clip_id)
        if record is None:
            continue
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        meta = mirror_meta(read_json(meta_path))
        modalities = [m for m in ("video", "pose", "object") if record.get(m)]
        mcqs = []
        for raw in attribute_mcqs(meta, seed=world_seed):
            if raw["task"] == "hand":
                mcq = normalise_record(raw, "mcq", where=f"{meta_path} (mirrored)", default_task="hand")
                mcqs.append((spec.prompts(mcq)["main"], mcq_answer(recipe, mcq)))
        turns = [(q, a) for kind, q, a in clip_questions(meta, world_seed)
                 if kind == "hand" and "hand" in recipe.record_turns]
        pairs = mcqs + turns
        if not pairs:
            continue
        rng.shuffle(pairs)
        out.append(conversation(clip_id, record, modalities, pairs, suffix="#mirror"))
        if recipe.reduced_modality_copies:
            for index, pair in enumerate(mcqs):
                out.append(conversation(clip_id, record, reduced_modality_set(record, rng), [pair],
                                        suffix=f"#mirror-m{index}"))
        # as many redrawn hand questions as the original clip gets (attribute_variants), so both hands stay as frequent
        out += redrawn_attribute_samples(clip_id, record, meta, recipe, world_seed, f"{meta_path} (mirrored)",
                                         tasks=("hand",), suffix="#mirror")
        counts["clips"] += 1
        counts[meta["segments"][0]["hand"]] += 1
    rng.shuffle(out)
    counts["samples"] = len(out)
    return out, counts


def successor_questions(paths: Paths, recipe: Recipe, records: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(clip id, prompt, answer): ``recipe.forecast_from_successors`` questions per train clip (see Recipe)."""
    from collections import Counter

    from llavidal.eval.tasks import load_task
    from llavidal.eval.records import normalise_record
    from llavidal.sim.annotate import FORECAST_QUESTIONS, LETTERS

    if recipe.forecast_from_successors <= 0:
        return []
    metas = {}
    for clip_id in split_ids(paths, "train"):
        path = paths.world / "meta" / f"{clip_id}.json"
        if clip_id in records and path.is_file():
            metas[clip_id] = read_json(path)
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
    spec = load_task(MCQ_BENCHMARKS["forecasting"])
    out = []
    for clip_id, meta in sorted(metas.items()):
        last = last_label(meta)
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
            out.append((clip_id, spec.prompts(mcq)["main"], forecast_answer(recipe, mcq_answer(recipe, mcq), last)))
    return out


def object_names(paths: Paths, clip_id: str, meta: dict) -> list[str] | None:
    """The name ("purple bottle": colour and class, from the world's metadata) of each object of a clip's object
    features, in their order: the tracks' objects that have a non-empty box, by ``object_id``, as the object
    extractor keeps them. None when the clip has no tracks file or an object the metadata does not describe."""
    from llavidal.features.objects.extract import kept_objects, load_tracks

    tracks_path = paths.world / "tracks" / f"{clip_id}.json"
    if not tracks_path.is_file():
        return None
    described = {obj.get("object_id"): obj for obj in meta.get("objects") or []}
    names = []
    for obj in kept_objects(load_tracks(tracks_path)):
        info = described.get(obj.get("object_id"))
        if info is None or not info.get("class"):
            return None
        names.append(" ".join(str(part) for part in (info.get("colour"), info["class"]) if part))
    return names


def hand_label(label: str, hand: str | None) -> str:
    """The text a one-handed activity's pose tokens are fitted to with ``recipe.align_hands``: the hand first
    ("right hand, waving"), so that it is within the pose tokens' count however long the activity's name."""
    return f"{hand} hand, {label}" if hand in ("left", "right") else label


def alignment_record(clip_id: str, meta: dict, record: dict, hands: bool) -> dict | None:
    """One ``llavidal align`` record of a clip: its activity (the last one, for a routine or prefix), its
    segments, its feature files, its performance as ``holdout_group`` (held out from the fit with every camera
    and mirror of it); with ``hands`` the pose tokens of each one-handed segment are fitted to
    :func:`hand_label` (``modality_labels``)."""
    label = last_label(meta)
    if not label:
        return None
    segments = [seg for seg in meta.get("segments") or [] if seg.get("label")]
    item: dict[str, Any] = {
        "id": clip_id, "label": label, "duration": meta.get("duration"),
        # held out from the fit with every camera (and mirror) of its performance
        "holdout_group": meta.get("performance_id") or clip_id,
        "segments": [{"start": seg["start"], "end": seg["end"], "label": seg["label"]} for seg in segments]}
    if hands:
        for out, seg in zip(item["segments"], segments):
            if seg.get("hand") in ("left", "right"):
                out["modality_labels"] = {"pose": hand_label(seg["label"], seg["hand"])}
        if segments and segments[-1]["label"] == label and segments[-1].get("hand") in ("left", "right"):
            item["modality_labels"] = {"pose": hand_label(label, segments[-1]["hand"])}
    item.update({m: record[m] for m in ("video", "pose", "object") if record.get(m)})
    return item


def build_alignment_labels(paths: Paths, recipe: Recipe) -> tuple[list[dict], dict]:
    """Records for ``llavidal align`` from the TRAIN split: each clip's feature files and the name of the
    activity it shows (for a routine or a forecasting prefix, the activity it ends with), as the world's
    metadata gives it; the same names are the ADLMCQ options. With ``recipe.align_object_names`` each object
    is fitted to its own name instead ("purple bottle", ``group_labels``; :func:`object_names`). With
    ``recipe.align_hands`` the pose tokens of a one-handed activity are fitted to its hand and name
    (:func:`hand_label`), and with ``recipe.hand_mirrors`` the mirrored clips' pose features (the other hand;
    their files named by absolute path) are fitted too, so that both hands are as frequent."""
    from llavidal.data.feature_store import FeatureFolder
    from llavidal.sim.mirror import mirror_meta
    from llavidal.train.align import record_labels

    records = {r["id"]: r for r in read_json(paths.annotations("train") / "records.json")}
    out, labels, objects = [], set(), set()
    metas = {}
    for clip_id in split_ids(paths, "train"):
        record = records.get(clip_id)
        meta_path = paths.world / "meta" / f"{clip_id}.json"
        if record is None or not meta_path.is_file():
            continue
        metas[clip_id] = meta = read_json(meta_path)
        item = alignment_record(clip_id, meta, record, recipe.align_hands)
        if item is None:
            continue
        if recipe.align_object_names and item.get("object"):
            names = object_names(paths, clip_id, meta)
            if names:
                item["group_labels"] = {"object": names}
                objects.update(names)
        out.append(item)
        labels.add(item["label"])
    mirrored = 0
    if recipe.align_hands and recipe.hand_mirrors:
        pose_folder = paths.mirror_folders()["pose"]
        if not pose_folder.is_dir():
            raise FileNotFoundError(f"{pose_folder}: no pose features of the mirrored clips; rerun the quickstart's "
                                    "mirror step (it extracts them)")
        folder = FeatureFolder(pose_folder, modality="pose")
        for clip_id in hand_mirror_clips(paths):
            record = records.get(clip_id)
            if record is None or clip_id not in metas or not record.get("pose"):
                continue
            found = folder.resolve(str(record["pose"]))
            if found is None:
                raise FileNotFoundError(
                    f"{folder.folder}: no pose features of the mirrored clip {clip_id} ({record['pose']}); "
                    "rerun the quickstart's mirror step (it extracts them)")
            item = alignment_record(f"{clip_id}#mirror", mirror_meta(metas[clip_id]), {"pose": str(found.resolve())},
                                    hands=True)
            if item is not None:
                out.append(item)
                mirrored += 1
    hands = {text for item in out for text in record_labels(item, groups=False, modality="pose")} - labels
    return out, {"records": len(out), "labels": len(labels), "object_names": len(objects),
                 "hand_labels": len(hands), "mirrored": mirrored}


def pose_text_pairs(paths: Paths, recipe: Recipe) -> list[dict]:
    """``llavidal pose-pretrain``'s pairs from the TRAIN split's skeletons: one per clip against its activity
    text, or with ``recipe.pose_segments`` one per segment of a multi-activity clip (a frame window)."""
    from llavidal.sim.readers import activity_text, segment_windows

    pairs = []
    for clip_id in split_ids(paths, "train"):
        meta = read_json(paths.world / "meta" / f"{clip_id}.json")
        skeleton = str(paths.world / "skeletons" / f"{clip_id}.skeleton")
        if recipe.pose_segments and len(meta.get("segments") or []) > 1:
            for number, ((start, end), text) in enumerate(segment_windows(meta)):
                pairs.append({"id": f"{clip_id}#{number}", "skeleton": skeleton, "text": text,
                              "start_frame": start, "end_frame": end})
        else:
            pairs.append({"id": clip_id, "skeleton": skeleton, "text": activity_text(meta)})
    return pairs


def conversation(clip_id: str, record: dict, modalities: list[str], pairs: list[tuple[str, str]], suffix: str) -> dict:
    conversations = []
    for index, (question, answer) in enumerate(pairs):
        text = f"{question}\n{placeholder_text(modalities)}" if index == 0 else question
        conversations += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    sample = {"id": clip_id + suffix, "conversations": conversations}
    for modality in modalities:
        sample[modality] = record[modality]
    return sample
