"""The world plan: presets, subjects, camera setups, performances and splits, all from one seed.

Everything random about a world is drawn here (or from per-performance seeds drawn here), so the same
seed and preset give the same plan, and workers can render performances in any order.

Clip ids follow NTU RGB+D: ``S{setup}C{camera}P{subject}R{replication}A{action}`` (three digits each).
Routines use ``Q{routine}`` in place of ``A{action}``; the forecasting cut of a routine (the video up to
the end of its k-th activity) appends ``K{k}``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from llavidal.sim.activities import ACTIVITIES, BY_NAME, PROCEDURAL, TRANSITIONS
from llavidal.sim.body import BodyShape
from llavidal.sim.camera import CameraRig
from llavidal.sim.props import DRINKABLE, HAND_OBJECTS

CAMERA_AZIMUTHS = (-45.0, 0.0, 45.0)  # C001, C002, C003, as NTU's three horizontal angles


@dataclass(frozen=True)
class Preset:
    """Size of a generated world."""

    name: str
    subjects: int
    setups: int
    performances_per_activity: int  # single-activity performances per activity
    routines: int
    cameras_per_performance: int  # how many of the 3 cameras film each performance
    fps: int = 10
    size: int = 224
    loop_seconds: tuple[float, float] = (2.5, 3.5)  # clip length for looping mocap
    routine_length: tuple[int, int] = (2, 3)  # activities per routine (inclusive)
    noise: float = 0.15  # chance a routine step ignores the transition table
    forecast_cuts: str = "one"
    """Forecasting clips per routine: ``one`` (a random prefix) or ``all`` (every prefix: a routine of n
    activities gives n - 1 questions, for a test split large enough to read)."""

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # tests: every activity once, a few routines; well under a minute on 2 cores
    "tiny": Preset("tiny", subjects=3, setups=1, performances_per_activity=1, routines=2, cameras_per_performance=1,
                   fps=8, size=112, loop_seconds=(2.0, 2.0), routine_length=(2, 2)),
    "small": Preset("small", subjects=6, setups=2, performances_per_activity=1, routines=4,
                    cameras_per_performance=1, fps=10, loop_seconds=(2.0, 2.5), routine_length=(2, 3)),
    # the quickstart: enough for a small model to learn recognition on held-out subjects
    # every prefix of 300 routines: ~200 held-out forecasting questions, so a 95% interval is about +/-0.07
    "medium": Preset("medium", subjects=15, setups=3, performances_per_activity=24, routines=300,
                     cameras_per_performance=1, fps=10, loop_seconds=(2.5, 3.0), routine_length=(2, 4),
                     forecast_cuts="all"),
}


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def _child_seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1, np.uint32)[0])


def make_subjects(preset: Preset, seed: int) -> dict[int, dict]:
    palette_shirt = [(0.2, 0.35, 0.75), (0.75, 0.2, 0.2), (0.2, 0.6, 0.3), (0.85, 0.55, 0.1), (0.5, 0.3, 0.65),
                     (0.15, 0.55, 0.6), (0.8, 0.8, 0.8), (0.65, 0.6, 0.2)]
    palette_trousers = [(0.2, 0.2, 0.25), (0.25, 0.3, 0.5), (0.35, 0.25, 0.2), (0.15, 0.15, 0.15), (0.4, 0.4, 0.35)]
    palette_skin = [(0.92, 0.75, 0.6), (0.8, 0.6, 0.45), (0.6, 0.42, 0.3), (0.42, 0.28, 0.2)]
    subjects = {}
    for number in range(1, preset.subjects + 1):
        rng = _rng(seed, 1, number)
        shape = BodyShape(
            size=round(float(rng.uniform(0.9, 1.08)), 4), torso=round(float(rng.uniform(0.92, 1.08)), 4),
            arms=round(float(rng.uniform(0.92, 1.08)), 4), legs=round(float(rng.uniform(0.9, 1.1)), 4),
            girth=round(float(rng.uniform(0.85, 1.25)), 4),
            shirt=palette_shirt[int(rng.integers(len(palette_shirt)))],
            trousers=palette_trousers[int(rng.integers(len(palette_trousers)))],
            skin=palette_skin[int(rng.integers(len(palette_skin)))],
        )
        subjects[number] = {"subject": number, "shape": shape.to_json(),
                            "dominant_hand": "left" if rng.random() < 0.2 else "right"}
    return subjects


def make_setups(preset: Preset, seed: int) -> dict[int, list[CameraRig]]:
    setups = {}
    for number in range(1, preset.setups + 1):
        rng = _rng(seed, 2, number)
        heights = rng.permutation([float(rng.uniform(0.9, 1.2)), float(rng.uniform(1.3, 1.6)), float(rng.uniform(1.7, 2.0))])
        distance = float(rng.uniform(2.3, 2.7))
        setups[number] = [
            CameraRig(number=k + 1, azimuth_deg=CAMERA_AZIMUTHS[k] + float(rng.uniform(-5, 5)), height=float(heights[k]),
                      distance=distance + float(rng.uniform(-0.15, 0.15)), target_height=float(rng.uniform(0.75, 0.9)))
            for k in range(3)
        ]
    return setups


# ---------------------------------------------------------------------------------------------- routines
@dataclass
class _State:
    posture: str = "standing"
    held: str | None = None  # kind in hand
    on_table: str | None = None  # kind resting on the table (reachable)
    eaten: int = 0


def feasible(activity: str, state: _State) -> bool:
    needs = BY_NAME[activity].needs
    if activity == "pick_up":
        return state.posture == "standing" and state.held is None
    if activity == "eat":
        return state.posture == "standing" and state.held is None and state.eaten < 2
    if needs == "held":
        return state.held is not None and state.posture == "standing"
    if needs == "drinkable":
        return state.held in DRINKABLE
    if needs in ("book", "phone"):
        return state.held == needs
    if needs == "free":
        return state.held is None
    if needs == "standing":
        return state.posture == "standing"
    if needs == "sitting":
        return state.posture == "sitting"
    if needs == "standing_free":
        return state.posture == "standing" and state.held is None
    return True


def _apply(activity: str, state: _State, kind: str | None) -> None:
    if activity == "pick_up":
        state.held, state.on_table = kind, None
    elif activity == "put_down":
        state.on_table, state.held = state.held, None
    elif activity == "sit_down":
        state.posture = "sitting"
    elif activity == "stand_up":
        state.posture = "standing"
    elif activity == "eat":
        state.eaten += 1


def sample_routine(rng: np.random.Generator, length: int, noise: float) -> tuple[list[dict], str | None]:
    """A feasible sequence of procedural activities, mostly following :data:`TRANSITIONS`.

    Returns the segments (activity and, for pick_up, the object kind) and the kind that starts on the table.
    """
    state = _State()
    segments: list[dict] = []
    table_object: str | None = None
    previous = "start"
    for _ in range(length):
        weights = TRANSITIONS.get(previous, {})
        choices = [a for a in weights if feasible(a, state) and a != previous]
        if not choices or rng.random() < noise:
            choices = [a for a in PROCEDURAL if feasible(a, state) and a != previous]
            probabilities = np.ones(len(choices)) / len(choices)
        else:
            probabilities = np.array([weights[a] for a in choices], dtype=np.float64)
            probabilities /= probabilities.sum()
        activity = str(choices[int(rng.choice(len(choices), p=probabilities))])
        kind = None
        if activity == "pick_up":
            kind = state.on_table or str(rng.choice(["mug", "bottle", "book", "phone", "mug", "book", "phone", "box"]))
            if table_object is None and state.on_table is None:
                table_object = kind
        _apply(activity, state, kind)
        segments.append({"activity": activity, "object": kind})
        previous = activity
    return segments, table_object


# ---------------------------------------------------------------------------------------------- plan
def _base_entry(preset: Preset, seed: int, subjects, setups, subject: int, setup: int, replication: int,
                cameras: list[int], performance_seed: int) -> dict:
    rng = np.random.default_rng(performance_seed)
    # NTU: each action is performed twice, once towards the left camera and once towards the right one
    towards = CAMERA_AZIMUTHS[0] if replication % 2 == 1 else CAMERA_AZIMUTHS[2]
    return {
        "subject": subject, "subject_shape": subjects[subject]["shape"], "setup": setup, "replication": replication,
        "cameras": [setups[setup][c - 1].to_json() for c in cameras], "fps": preset.fps, "size": preset.size,
        "seed": performance_seed, "facing_deg": round(towards + float(rng.uniform(-30, 30)), 3),
        "position": [round(float(v), 4) for v in rng.uniform(-0.5, 0.5, size=2)],
        "speed": round(float(rng.uniform(0.8, 1.2)), 4),
    }


def _cameras_for(index: int, preset: Preset) -> list[int]:
    first = index % 3
    return sorted({(first + k) % 3 + 1 for k in range(preset.cameras_per_performance)})


def make_plan(preset: Preset, seed: int) -> dict:
    """The whole world: subjects, setups and the list of performances (JSON-serialisable)."""
    subjects = make_subjects(preset, seed)
    setups = make_setups(preset, seed)
    performances: list[dict] = []
    counter = 0
    for activity in ACTIVITIES:
        for repeat in range(preset.performances_per_activity):
            # spread each activity evenly over subjects and replications
            subject = (activity.number * 7 + repeat) % preset.subjects + 1
            if preset.performances_per_activity > preset.subjects:
                replication = repeat // preset.subjects + 1
            else:
                replication = (activity.number + repeat) % 2 + 1
            setup = (activity.number + repeat * 5) % preset.setups + 1
            performance_seed = _child_seed(seed, 3, activity.number, repeat)
            rng = np.random.default_rng(performance_seed + 1)
            entry = _base_entry(preset, seed, subjects, setups, subject, setup, replication,
                                _cameras_for(counter, preset), performance_seed)
            counter += 1
            entry.update({"kind": "single", "segments": [{"activity": activity.name, "object": None}]})
            if activity.source == "mocap":
                entry.update({
                    "source": "mocap", "hand": None,
                    "mocap_clip": activity.mocap_clips[int(rng.integers(len(activity.mocap_clips)))],
                    "duration": round(float(rng.uniform(*preset.loop_seconds)), 3),
                    "start_phase": round(float(rng.random()), 4), "mirror": bool(rng.random() < 0.5),
                })
            else:
                entry.update(_procedural_single(activity.name, rng, subjects[subject]["dominant_hand"]))
            entry["performance_id"] = f"S{setup:03d}P{subject:03d}R{replication:03d}A{activity.number:03d}"
            performances.append(entry)
    for number in range(1, preset.routines + 1):
        rng = _rng(seed, 4, number)
        step = 7 if math.gcd(7, preset.subjects) == 1 else 1  # visit every subject in turn
        subject = (number * step) % preset.subjects + 1
        setup = number % preset.setups + 1
        replication = number % 2 + 1
        length = int(rng.integers(preset.routine_length[0], preset.routine_length[1] + 1))
        segments, table_object = sample_routine(rng, length, preset.noise)
        performance_seed = _child_seed(seed, 5, number)
        entry = _base_entry(preset, seed, subjects, setups, subject, setup, replication,
                            _cameras_for(counter, preset), performance_seed)
        counter += 1
        activities = [s["activity"] for s in segments]
        entry.update({
            "kind": "routine", "source": "procedural", "segments": segments, "hand": _hand(rng, subjects[subject]),
            "table": any(a in ("pick_up", "put_down", "eat") for a in activities), "table_object": table_object,
            "tray": "eat" in activities, "chair": "use" if any(a in ("sit_down", "stand_up") for a in activities) else None,
            "held_object": None, "posture": "standing",
            "forecast_cut": int(rng.integers(1, len(segments))),
            "forecast_cuts": None,
            "performance_id": f"S{setup:03d}P{subject:03d}R{replication:03d}Q{number:03d}",
        })
        entry["forecast_cuts"] = ([entry["forecast_cut"]] if preset.forecast_cuts == "one"
                                  else list(range(1, len(segments))))
        performances.append(entry)
    return {"preset": preset.to_json(), "seed": seed, "subjects": subjects,
            "setups": {k: [r.to_json() for r in v] for k, v in setups.items()}, "performances": performances}


def _hand(rng: np.random.Generator, subject: dict) -> str:
    dominant = subject["dominant_hand"]
    other = "left" if dominant == "right" else "right"
    return dominant if rng.random() < 0.8 else other


def _procedural_single(name: str, rng: np.random.Generator, dominant: str) -> dict:
    """Starting state and props for one procedural activity performed on its own."""
    hand = dominant if rng.random() < 0.8 else ("left" if dominant == "right" else "right")
    entry = {"source": "procedural", "hand": hand, "held_object": None, "table": False, "table_object": None,
             "tray": False, "chair": None, "posture": "standing"}
    needs = BY_NAME[name].needs
    if name == "drink":
        entry["held_object"] = str(rng.choice(DRINKABLE))
    elif name == "read":
        entry["held_object"] = "book"
    elif name == "phone_call":
        entry["held_object"] = "phone"
    elif name == "put_down":
        entry["held_object"] = str(rng.choice(HAND_OBJECTS))
        entry["table"] = True
    elif name == "pick_up":
        entry["table"] = True
        entry["table_object"] = str(rng.choice(HAND_OBJECTS))
    elif name == "eat":
        entry["table"] = entry["tray"] = True
    if name in ("sit_down", "stand_up"):
        entry["chair"] = "use"
        entry["posture"] = "sitting" if name == "stand_up" else "standing"
    elif needs in ("drinkable", "book", "phone", "free") and rng.random() < 0.3:
        entry["chair"] = "use"  # done sitting down
        entry["posture"] = "sitting"
    elif rng.random() < 0.25:
        entry["chair"] = "aside"  # furniture in the room that is not used
    if not entry["table"] and entry["posture"] == "standing" and rng.random() < 0.25:
        entry["table"] = True  # a table with something on it, not used
        entry["table_object"] = str(rng.choice(HAND_OBJECTS))
    return entry


def clip_id(performance: dict, camera: int, cut: int | None = None) -> str:
    pid = performance["performance_id"]
    out = f"{pid[:4]}C{camera:03d}{pid[4:]}"
    return out if cut is None else f"{out}K{cut}"


def parse_clip_id(clip: str) -> dict:
    """The numbers in a clip id: setup, camera, subject, replication, action or routine, cut."""
    import re

    match = re.fullmatch(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})(?:A(\d{3})|Q(\d{3}))(?:K(\d+))?", clip)
    if not match:
        raise ValueError(f"not a world clip id: {clip!r}")
    setup, camera, subject, replication, action, routine, cut = match.groups()
    return {"setup": int(setup), "camera": int(camera), "subject": int(subject), "replication": int(replication),
            "action": int(action) if action else None, "routine": int(routine) if routine else None,
            "cut": int(cut) if cut else None}
