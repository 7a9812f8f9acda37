"""Ground truth in the upstream formats, written from clip metadata by templates.

Per protocol (``cross_subject``, ``cross_view``) and split (``train``, ``val``, ``test``), under
``annotations/{protocol}/{split}/``:

- ``records.json``: training records ``{id, video, pose, object?, conversations}`` (LLAVIDAL's names:
  ``<id>.pkl``, ``<id>_pose.pkl``, ``<id>_object.pkl``; ``object`` only when the clip has objects). The
  first human turn carries the placeholders of the modalities present (``<video><object><human_pose>``);
  each human turn's ``type`` says what it asks (``recognition``, ``detail``, ``object``, ``hand``, ``count``,
  ``first``, ``next``, ``last``, ``forecast``).
- ``mcq_action_recognition.json`` / ``mcq_forecasting.json``: ADLMCQ ``{video_filename, question,
  answer_choices, ground_truth_letter}`` plus ``id``, ``task``, ``label``; forecasting records also say
  ``object_dependent`` (the next activity is one only the object in hand allows: drink, read, phone call;
  the other two are then always among the options).
- ``mcq_attributes.json``: which hand, which object, what colour, for single-activity clips, in the same
  format (``task`` = ``hand`` / ``object`` / ``colour``, ``id`` = ``{clip}:{task}``), scored against the
  clip's metadata.
- ``descriptions.json``: ADL description records ``{video_name, Q, A, cons_Q1, cons_Q2, cons_A}``.
- ``qa_generic.json``, ``qa_temporal.json``: Video-ChatGPT QA ``{video_id, q, a}``;
  ``qa_consistency.json``: ``{video_id, q, q2, a}`` (two paraphrases, one answer).

``annotations/splits.json`` lists the clip ids of every split. Protocols follow NTU RGB+D: cross-subject
holds out every third subject for test; cross-view tests on camera 1 and trains on cameras 2 and 3.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from llavidal.sim.activities import ACTIVITIES, BY_NAME, MOCAP, PROCEDURAL, TRANSITIONS, confusable_with
from llavidal.sim.images import write_image_records
from llavidal.sim.plan import _State, _apply, feasible, parse_clip_id
from llavidal.sim.props import COLOURS, HAND_OBJECTS
from llavidal.utils.io import atomic_write_json

LETTERS = "ABCDEF"
FURNITURE = ("tray", "food", "chair", "table")  # props that are not "the object used"
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

RECOGNITION_QUESTIONS = (
    "What is the person doing?", "What activity is shown in the video?", "What is the person in the video doing?",
    "Which action does the person perform?", "What action is being performed in this video?",
)
DETAIL_QUESTIONS = (
    "Describe the video in detail.", "Can you describe what happens in this video in detail?",
    "Give a detailed description of the video.", "What happens in the video? Describe it in detail.",
)
OBJECT_QUESTIONS = ("Which object does the person use?", "What object is the person interacting with?",
                    "Which object is involved in the activity?")
HAND_QUESTIONS = ("Which hand does the person use?", "Is the person using the left or the right hand?",
                  "With which hand does the person do this?")
FORECAST_QUESTIONS = ("What will the person do next?", "What is the person most likely to do next?",
                      "Which activity comes next?")
FIRST_QUESTIONS = ("What does the person do first?", "What happens first in the video?",
                   "Which activity does the person start with?")
LAST_QUESTIONS = ("What does the person do last?", "What happens at the end of the video?",
                  "Which activity does the person finish with?")
COUNT_QUESTIONS = {
    "drink": "How many sips does the person take?", "eat": "How many times does the person bring food to the mouth?",
    "read": "How many times does the person turn a page?", "wave": "How many times does the person wave back and forth?",
    "clap": "How many times does the person clap?",
}


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _colour_name(rgb) -> str:
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - rgb) ** 2)))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------- phrases
def _object_phrase(meta: dict, segment: dict) -> str | None:
    """'a red mug' for the object a segment used (None when it used none)."""
    used = [c for c in segment["objects"] if c not in FURNITURE]
    if used:
        kind = used[0]
        colours = [o["colour"] for o in meta["objects"] if o["class"] == kind]
        colour = colours[0] if colours else ""
        words = f"{colour} {kind}".strip()
        return f"{_article(words)} {words}"
    if "tray" in segment["objects"]:
        return "food from a tray"
    if "chair" in segment["objects"]:
        return "a chair"
    return None


def _segment_sentence(meta: dict, segment: dict, rng: np.random.Generator) -> str:
    """A verb phrase for a segment, with the specifics: object, hand, repetitions, posture."""
    activity = BY_NAME[segment["activity"]]
    name = activity.name
    thing = _object_phrase(meta, segment)
    hand = f" with the {segment['hand']} hand" if segment.get("hand") else ""
    reps = segment.get("repetitions")
    if name == "drink":
        text = f"drinks from {thing}{hand}" + (f", taking {_number(reps)} sip{'s' if reps != 1 else ''}" if reps else "")
    elif name == "eat":
        text = f"takes food from a tray on the table and eats it{hand}" + (f", {_number(reps)} time{'s' if reps != 1 else ''}" if reps else "")
    elif name == "pick_up":
        text = f"picks up {thing} from the table{hand}"
    elif name == "put_down":
        text = f"puts {thing} down on the table{hand}"
    elif name == "read":
        text = f"reads {thing}, holding it with both hands" + (f" and turning the page {_number(reps)} time{'s' if reps != 1 else ''}" if reps else "")
    elif name == "phone_call":
        text = f"holds {thing} to the ear{hand} and talks on the phone"
    elif name == "wave":
        text = f"waves{hand}" + (f", {_number(reps)} times back and forth" if reps else "")
    elif name == "clap":
        text = f"claps {_number(reps)} times" if reps else "claps"
    elif name == "point":
        direction = segment.get("details", {}).get("direction", "ahead")
        text = f"points {direction}{hand}"
    elif name == "stoop":
        text = f"stoops down towards the floor, reaching down{hand}, and straightens up again"
    else:
        text = _pick(rng, activity.phrases)
    if segment.get("posture") == "sitting" and name not in ("stand_up", "sit_down"):
        text += " while sitting on a chair"
    return text


def _view_phrase(meta: dict) -> str:
    relative = (meta["view"]["azimuth_deg"] - meta["facing_deg"] + 180.0) % 360.0 - 180.0
    if abs(relative) < 30:
        side = "from the front"
    elif abs(relative) < 75:
        side = "from the front " + ("left" if relative > 0 else "right")
    elif abs(relative) < 120:
        side = "from the " + ("left" if relative > 0 else "right") + " side"
    else:
        side = "from behind"
    height = meta["view"]["camera_height"]
    angle = ", slightly from above" if height > 1.65 else (", from a low angle" if height < 1.2 else "")
    return side + angle


def _person_phrase(meta: dict) -> str:
    shape = meta["subject_shape"]
    shirt = _colour_name(shape["shirt"])
    trousers = _colour_name(shape["trousers"])
    build = "tall" if shape["size"] * shape["legs"] > 1.06 else ("short" if shape["size"] * shape["legs"] < 0.9 else "")
    words = " ".join(w for w in (build, "person") if w)
    return f"{_article(words)} {words} in a {shirt} top and {trousers} trousers"


def detailed_description(meta: dict, rng: np.random.Generator) -> str:
    segments = meta["segments"]
    person = _person_phrase(meta)
    view = _view_phrase(meta)
    speed = meta["speed"]
    pace = " quickly" if speed > 1.12 else (" slowly" if speed < 0.88 else "")
    if len(segments) == 1:
        activity = BY_NAME[segments[0]["activity"]]
        sentence = _segment_sentence(meta, segments[0], rng)
        text = f"The video shows {person}, seen {view}. The person{pace} {sentence}. {activity.description}"
    else:
        parts = [_segment_sentence(meta, s, rng) for s in segments]
        steps = [f"First, the person {parts[0]}."]
        for k, part in enumerate(parts[1:], 1):
            connector = "Finally" if k == len(parts) - 1 and meta["kind"] != "forecast" else _pick(rng, ("Then", "Next", "After that"))
            steps.append(f"{connector}, the person {part}.")
        text = f"The video shows {person}, seen {view}, doing {_number(len(parts))} activities in a row. " + " ".join(steps)
    unused = sorted({o["class"] for o in meta["objects"] if not o["used"] and o["class"] not in ("food",)})
    if unused:
        text += " There is also " + " and ".join(f"{_article(c)} {c}" for c in unused) + " in the scene."
    return text


def recognition_answer(meta: dict, rng: np.random.Generator) -> str:
    segment = meta["segments"][0]
    activity = BY_NAME[segment["activity"]]
    style = int(rng.integers(3))
    if style == 0:
        return f"The person is {activity.label}."
    if style == 1:
        return f"The person {_segment_sentence(meta, segment, rng)}."
    return f"In the video, the person {_pick(rng, activity.phrases)}."


def routine_answer(meta: dict, rng: np.random.Generator) -> str:
    labels = [BY_NAME[s["activity"]].label for s in meta["segments"]]
    return "The person is " + ", then ".join(labels) + "."


# ---------------------------------------------------------------------------------------------- per clip QA
def clip_questions(meta: dict, seed: int) -> list[tuple[str, str, str]]:
    """(type, question, answer) pairs that the clip's metadata answers."""
    rng = _rng(seed, "qa", meta["clip_id"])
    segments = meta["segments"]
    out: list[tuple[str, str, str]] = []
    if meta["kind"] == "single":
        out.append(("recognition", _pick(rng, RECOGNITION_QUESTIONS), recognition_answer(meta, rng)))
    elif len(segments) == 1:  # a forecasting cut that shows one activity
        out.append(("recognition", _pick(rng, RECOGNITION_QUESTIONS), f"The person is {segments[0]['label']}."))
    else:
        out.append(("recognition", _pick(rng, RECOGNITION_QUESTIONS), routine_answer(meta, rng)))
    out.append(("detail", _pick(rng, DETAIL_QUESTIONS), detailed_description(meta, rng)))
    if meta["kind"] == "single":
        segment = segments[0]
        thing = _object_phrase(meta, segment)
        if thing:
            out.append(("object", _pick(rng, OBJECT_QUESTIONS), f"The person uses {thing}."))
        if segment.get("hand"):
            out.append(("hand", _pick(rng, HAND_QUESTIONS), f"The person uses the {segment['hand']} hand."))
        if segment.get("repetitions") and segment["activity"] in COUNT_QUESTIONS:
            reps = segment["repetitions"]
            out.append(("count", COUNT_QUESTIONS[segment["activity"]],
                        f"{_number(reps).capitalize()} time{'s' if reps != 1 else ''}."))
    else:
        out.extend(temporal_questions(meta, rng))
    if meta["kind"] == "forecast":
        label = BY_NAME[meta["next_activity"]].label
        out.append(("forecast", _pick(rng, FORECAST_QUESTIONS), f"Next, the person will be {label}."))
    return out


def temporal_questions(meta: dict, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    segments = meta["segments"]
    out = [("first", _pick(rng, FIRST_QUESTIONS),
            f"First, the person {_segment_sentence(meta, segments[0], rng)}.")]
    k = int(rng.integers(len(segments) - 1)) if len(segments) > 1 else 0
    if len(segments) > 1:
        before = BY_NAME[segments[k]["activity"]].label
        out.append(("next", f"What does the person do after {before}?",
                    f"After {before}, the person {_segment_sentence(meta, segments[k + 1], rng)}."))
        if meta["kind"] != "forecast":
            out.append(("last", _pick(rng, LAST_QUESTIONS),
                        f"At the end, the person {_segment_sentence(meta, segments[-1], rng)}."))
    count = len(segments)
    if count > 1:
        out.append(("count", "How many different activities does the person do in the video?",
                    f"{_number(count).capitalize()} activities: "
                    + ", then ".join(BY_NAME[s['activity']].label for s in segments) + "."))
    return out


def placeholders(meta: dict) -> str:
    has_objects = any(o["class"] for o in meta["objects"])
    return "<video>" + ("<object>" if has_objects else "") + "<human_pose>"


def training_record(meta: dict, seed: int) -> dict:
    clip = meta["clip_id"]
    rng = _rng(seed, "record", clip)
    pairs = clip_questions(meta, seed)
    first, rest = pairs[:1], pairs[1:]
    order = [rest[i] for i in rng.permutation(len(rest))]
    if meta["kind"] == "forecast":  # the forecast question leads: it is what these clips are for
        forecast = [p for p in pairs if p[0] == "forecast"]
        first, order = forecast, [p for p in pairs if p[0] != "forecast"]
    conversations = []
    tokens = placeholders(meta)
    for index, (kind, question, answer) in enumerate(first + order):
        if index == 0:
            value = f"{question}\n{tokens}" if zlib.crc32(clip.encode()) % 2 == 0 else f"{tokens}\n{question}"
        else:
            value = question
        conversations.append({"from": "human", "value": value, "type": kind})
        conversations.append({"from": "gpt", "value": answer})
    record = {"id": clip, "video": f"{clip}.pkl", "pose": f"{clip}_pose.pkl"}
    if "<object>" in tokens:
        record["object"] = f"{clip}_object.pkl"
    record["conversations"] = conversations
    return record


# ---------------------------------------------------------------------------------------------- MCQ
def _mcq(meta: dict, seed: int, task: str, question: str, truth: str, distractors: list[str], choices: int,
         forced: tuple[str, ...] = (), text=None) -> dict:
    """An ADLMCQ record: ``truth`` and ``choices - 1`` distractors (``forced`` ones first), shuffled.

    ``text`` turns an option name into its wording (default: the activity's label).
    """
    text = text or (lambda name: BY_NAME[name].label)
    rng = _rng(seed, task, meta["clip_id"])
    forced = [d for d in forced if d in distractors][: choices - 1]
    rest = [d for d in distractors if d not in forced]
    picked = forced + [rest[i] for i in rng.permutation(len(rest))[: choices - 1 - len(forced)]]
    options = picked + [truth]
    options = [options[i] for i in rng.permutation(len(options))]
    letters = {LETTERS[k]: text(name) for k, name in enumerate(options)}
    truth_letter = LETTERS[options.index(truth)]
    return {"video_filename": f"{meta['clip_id']}.mp4", "question": question, "answer_choices": letters,
            "ground_truth_letter": truth_letter, "id": meta["clip_id"], "task": task, "label": truth}


def recognition_mcq(meta: dict, seed: int) -> dict:
    truth = meta["activity"]
    excluded = confusable_with(truth) | {truth}
    distractors = [a.name for a in ACTIVITIES if a.name not in excluded]
    rng = _rng(seed, "arq", meta["clip_id"])
    return _mcq(meta, seed, "action_recognition", _pick(rng, RECOGNITION_QUESTIONS), truth, distractors, 4)


def state_after(segments: list[dict]) -> _State:
    state = _State()
    for segment in segments:
        kinds = [c for c in segment["objects"] if c not in FURNITURE]
        _apply(segment["activity"], state, kinds[0] if kinds else None)
    return state


def forecasting_distractors(meta: dict) -> list[str]:
    """Activities that cannot, or by the routine table would not, come next; never the true next one.

    Procedural activities impossible in the state the video ends in (e.g. standing up while standing,
    drinking with empty hands) or absent from the table's row for the last activity come first; mocap
    activities, which never occur in routines, fill the rest.
    """
    truth = meta["next_activity"]
    state = state_after(meta["segments"])
    last = meta["segments"][-1]["activity"]
    likely = TRANSITIONS.get(last, {})
    excluded = confusable_with(truth) | {truth}
    implausible = [a for a in PROCEDURAL if a not in excluded and (not feasible(a, state) or a not in likely)]
    return implausible + [a for a in MOCAP if a not in excluded]


OBJECT_SPECIFIC = ("drink", "read", "phone_call")
"""Activities only the object in hand allows (a cup is drunk from, a book read, a phone called on)."""


def object_dependent(meta: dict) -> bool:
    """Whether a forecasting clip's answer depends on the object held: the next activity is one that only
    that object allows, and the question's options hold the other object-specific activities."""
    return meta.get("next_activity") in OBJECT_SPECIFIC


def forecasting_mcq(meta: dict, seed: int) -> dict:
    rng = _rng(seed, "afq", meta["clip_id"])
    choices = int(rng.integers(4, 7))
    distractors = forecasting_distractors(meta)
    procedural = [d for d in distractors if d in PROCEDURAL]
    # mostly procedural distractors (the plausible-looking kind), a mocap one only when needed
    pool = procedural if len(procedural) >= choices - 1 else distractors
    dependent = object_dependent(meta)
    # when the object held decides, the other object-specific activities are always among the options,
    # so that the question cannot be answered without seeing which object it is
    forced = tuple(a for a in OBJECT_SPECIFIC if a != meta["next_activity"]) if dependent else ()
    record = _mcq(meta, seed, "action_forecasting", _pick(rng, FORECAST_QUESTIONS), meta["next_activity"], pool,
                  choices, forced=forced)
    record["object_dependent"] = dependent
    return record


COLOUR_QUESTIONS = ("What colour is the {kind}?", "Which colour does the {kind} have?")
ATTRIBUTE_TASKS = ("hand", "object", "colour")


def attribute_mcqs(meta: dict, seed: int) -> list[dict]:
    """Which hand, which object, what colour: multiple-choice questions a single-activity clip's metadata
    answers (record ids ``{clip}:{task}``; task ``hand`` / ``object`` / ``colour``)."""
    if meta["kind"] != "single":
        return []
    segment = meta["segments"][0]
    rng = _rng(seed, "attr", meta["clip_id"])
    out = []
    if segment.get("hand") in ("left", "right"):
        out.append(_mcq(meta, seed, "hand", _pick(rng, HAND_QUESTIONS), segment["hand"],
                        [h for h in ("left", "right") if h != segment["hand"]], 2,
                        text=lambda name: f"the {name} hand"))
    used = [c for c in segment["objects"] if c in HAND_OBJECTS]
    if used:
        out.append(_object_mcq(meta, seed, rng, used[0]))
        colour = _colour_mcq(meta, seed, rng, used[0])
        if colour is not None:
            out.append(colour)
    for record in out:
        record["id"] = f"{meta['clip_id']}:{record['task']}"
    return out


def _object_mcq(meta: dict, seed: int, rng: np.random.Generator, kind: str) -> dict:
    return _mcq(meta, seed, "object", _pick(rng, OBJECT_QUESTIONS), kind, [k for k in HAND_OBJECTS if k != kind], 4,
                text=lambda name: f"{_article(name)} {name}")


def _colour_mcq(meta: dict, seed: int, rng: np.random.Generator, kind: str) -> dict | None:
    """"What colour is the {kind}?" (the first object of that kind), or None when its colour has no name."""
    colours = [o["colour"] for o in meta["objects"] if o["class"] == kind and o.get("colour") in COLOURS]
    if not colours:
        return None
    return _mcq(meta, seed, "colour", _pick(rng, COLOUR_QUESTIONS).format(kind=kind), colours[0],
                [c for c in COLOURS if c != colours[0]], 4, text=str)


def object_mcqs(meta: dict, seed: int) -> list[dict]:
    """Which object and what colour for a clip of any kind (a routine, a forecasting prefix, a single activity), in
    the format of :func:`attribute_mcqs`: "What colour is the {kind}?" for every hand object in view (used or not),
    and the object question when the person handles exactly one (``used`` in the metadata), so that its answer
    is not ambiguous. The world does not write these (its attribute questions are those of the single-activity
    clips); they are training data for reading objects, drawn from a clip's metadata. Ids ``{clip}:{task}``
    (``{clip}:colour:{kind}`` for the colours)."""
    rng = _rng(seed, "objects", meta["clip_id"])
    in_view = sorted({o["class"] for o in meta["objects"] if o["class"] in HAND_OBJECTS})
    used = sorted({o["class"] for o in meta["objects"] if o["class"] in HAND_OBJECTS and o.get("used")})
    out = []
    if len(used) == 1:
        out.append(_object_mcq(meta, seed, rng, used[0]))
        out[-1]["id"] = f"{meta['clip_id']}:object"
    for kind in in_view:
        colour = _colour_mcq(meta, seed, rng, kind)
        if colour is not None:
            out.append({**colour, "id": f"{meta['clip_id']}:colour:{kind}"})
    return out


def split_of(meta: dict, protocol: str) -> str:
    ids = parse_clip_id(meta["clip_id"])
    if protocol == "cross_subject":
        subject = ids["subject"]
        if subject % 3 == 0:
            return "test"
        return "val" if subject % 3 == 1 and (subject // 3) % 3 == 1 else "train"
    if protocol == "cross_view":
        if ids["camera"] == 1:
            return "test"
        digest = int(hashlib.sha256(meta["performance_id"].encode()).hexdigest(), 16)
        return "val" if digest % 8 == 0 else "train"
    raise ValueError(f"unknown protocol {protocol!r}")


PROTOCOLS = {
    "cross_subject": "NTU cross-subject: subjects 3, 6, 9, ... are test; subjects 4, 13, 22, ... are val; the rest train",
    "cross_view": "NTU cross-view: camera 1 is test; cameras 2 and 3 train, with 1 performance in 8 held out as val",
}


def write_annotations(root: Path, metas: list[dict], seed: int) -> dict:
    """Write every annotation file; returns counts for world.json."""
    folder = root / "annotations"
    splits: dict[str, dict] = {}
    counts: dict[str, dict] = {}
    records = {m["clip_id"]: training_record(m, seed) for m in metas}
    for protocol, description in PROTOCOLS.items():
        members: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
        for meta in metas:
            members[split_of(meta, protocol)].append(meta)
        splits[protocol] = {"description": description, **{k: [m["clip_id"] for m in v] for k, v in members.items()}}
        counts[protocol] = {}
        for split, group in members.items():
            out = folder / protocol / split
            singles = [m for m in group if m["kind"] == "single"]
            forecasts = [m for m in group if m["kind"] == "forecast"]
            atomic_write_json(out / "records.json", [records[m["clip_id"]] for m in group])
            atomic_write_json(out / "mcq_action_recognition.json", [recognition_mcq(m, seed) for m in singles])
            atomic_write_json(out / "mcq_forecasting.json", [forecasting_mcq(m, seed) for m in forecasts])
            attributes = [r for m in singles for r in attribute_mcqs(m, seed)]
            atomic_write_json(out / "mcq_attributes.json", attributes)
            descriptions, generic, temporal, consistency = [], [], [], []
            for meta in group:
                rng = _rng(seed, "desc", meta["clip_id"])
                questions = [DETAIL_QUESTIONS[i] for i in rng.permutation(len(DETAIL_QUESTIONS))[:3]]
                answer = detailed_description(meta, _rng(seed, "qa", meta["clip_id"]))
                descriptions.append({"video_name": meta["clip_id"], "Q": questions[0], "A": answer,
                                     "cons_Q1": questions[1], "cons_Q2": questions[2], "cons_A": answer})
                pairs = clip_questions(meta, seed)
                for kind, question, reply in pairs:
                    target = temporal if kind in ("first", "next", "last", "forecast") else generic
                    target.append({"video_id": meta["clip_id"], "q": question, "a": reply})
                recognition = [p for p in pairs if p[0] == "recognition"][0]
                paraphrases = [q for q in RECOGNITION_QUESTIONS if q != recognition[1]]
                consistency.append({"video_id": meta["clip_id"], "q": recognition[1],
                                    "q2": _pick(rng, paraphrases), "a": recognition[2]})
            atomic_write_json(out / "descriptions.json", descriptions)
            atomic_write_json(out / "qa_generic.json", generic)
            atomic_write_json(out / "qa_temporal.json", temporal)
            atomic_write_json(out / "qa_consistency.json", consistency)
            write_image_records(root, out, group, seed)  # images/*.jpg + image_records.json (llavidal.sim.images)
            counts[protocol][split] = {"clips": len(group), "records": len(group),
                                       "mcq_action_recognition": len(singles), "mcq_forecasting": len(forecasts),
                                       "mcq_attributes": len(attributes)}
    atomic_write_json(folder / "splits.json", splits)
    return {"splits": counts}
