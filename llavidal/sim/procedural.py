"""Procedural daily-living activities: keyframe programs with objects, composable into routines.

Each activity is a function ``program(builder, rng)`` that appends keyframes (and object events) to a
:class:`Builder`. Programs are authored for the right hand; a left-handed performer gets the mirror
image (:meth:`Pose.mirrored`). A builder tracks the performer's state between activities, posture
(standing or sitting) and the object in hand, so activities chain into routines with blended
transitions: the move from one activity's last key into the next one's first key is the blend.

Joint conventions (body frame x forward, y up, z right; found by testing): shoulder Rz+ raises the arm
forward, Rx- raises the right arm sideways; elbow 0..pi flexes; knee -pi..0 flexes; hip Rz+ swings the
leg forward; chest and neck Rz- bend forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from llavidal.sim import quat
from llavidal.sim.body import Humanoid, Pose
from llavidal.sim.motion import Key, KeyframeTrack, smoothstep

Spec = dict[str, object]  # joint name -> quaternion (spherical) or float (knee/elbow)


# ---------------------------------------------------------------------------------------------- joints
def arm(flex: float = 0.0, abduct: float = 0.1, swing: float = 0.0, twist: float = 0.0) -> np.ndarray:
    """Right shoulder rotation: ``flex`` raises forward, ``abduct`` sideways, ``swing`` turns the raised
    arm towards the midline (about the vertical), ``twist`` about the upper arm's own axis."""
    return quat.compose(("y", swing), ("z", flex), ("x", -abduct), ("y", twist))


def bend(forward: float = 0.0, turn: float = 0.0, side: float = 0.0) -> np.ndarray:
    """Chest or neck: ``forward`` bends forward (negative leans back), ``turn`` twists about the spine."""
    return quat.compose(("y", turn), ("z", -forward), ("x", side))


def leg(flex: float = 0.0, abduct: float = 0.0) -> np.ndarray:
    return quat.compose(("z", flex), ("x", -abduct))


REST_ARMS: Spec = {"right_shoulder": arm(0.05, 0.12), "right_elbow": 0.15,
                   "left_shoulder": quat.mirror_z(arm(0.05, 0.12)), "left_elbow": 0.15}
HOLD_RIGHT: Spec = {"right_shoulder": arm(0.35, 0.15, 0.1), "right_elbow": 1.35}  # object in front of the belly


def left(spec: Spec) -> Spec:
    """Right-arm spec written for the left arm (mirrored)."""
    out: Spec = {}
    for name, value in spec.items():
        other = name.replace("right_", "left_") if name.startswith("right_") else name.replace("left_", "right_")
        out[other] = quat.mirror_z(value) if isinstance(value, np.ndarray) else value
    return out


# ---------------------------------------------------------------------------------------------- objects
@dataclass
class ObjectPhase:
    """From ``time`` on, the object rests at ``pose`` (world), is held in ``hand`` with grip offset keys,
    or is hidden (eaten)."""

    time: float
    mode: str  # "rest" | "held" | "hidden"
    pose: tuple[np.ndarray, np.ndarray] | None = None
    hand: str = "right"
    offsets: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)  # (time, pos, orn)


@dataclass
class SceneObject:
    """An object of the performance: its class, colour, role and timeline of phases."""

    key: str
    kind: str
    colour_name: str
    colour: tuple[float, float, float]
    phases: list[ObjectPhase] = field(default_factory=list)
    fixed: bool = False  # furniture: one rest pose for the whole clip
    model_args: dict = field(default_factory=dict)

    def phase_at(self, t: float) -> ObjectPhase:
        current = self.phases[0]
        for phase in self.phases:
            if phase.time <= t + 1e-9:
                current = phase
        return current


def grip_offset_at(offsets, t: float) -> tuple[np.ndarray, np.ndarray]:
    if t <= offsets[0][0]:
        return offsets[0][1], offsets[0][2]
    for (t0, p0, q0), (t1, p1, q1) in zip(offsets, offsets[1:]):
        if t < t1:
            w = smoothstep((t - t0) / max(t1 - t0, 1e-9))
            return p0 + w * (p1 - p0), quat.slerp(q0, q1, w)
    return offsets[-1][1], offsets[-1][2]


def compose_transform(a, b):
    """a * b for (position, orientation) pairs."""
    return a[0] + quat.rotate(a[1], b[0]), quat.multiply(a[1], b[1])


def invert_transform(a):
    inverse = np.array([-a[1][0], -a[1][1], -a[1][2], a[1][3]])
    return -quat.rotate(inverse, a[0]), inverse


# ---------------------------------------------------------------------------------------------- builder
@dataclass
class Segment:
    """One activity inside a performance: [start, end] seconds, with what it involved."""

    activity: str
    start: float
    end: float
    objects: list[str] = field(default_factory=list)  # object classes used
    hand: str | None = None
    repetitions: int | None = None
    posture: str = "standing"
    details: dict = field(default_factory=dict)


class Builder:
    """Accumulates a performance: keyframes, objects and segments, with the performer's state."""

    def __init__(self, humanoid: Humanoid, spot: np.ndarray, yaw: float, hand: str, speed: float,
                 rng: np.random.Generator) -> None:
        self.humanoid = humanoid
        self.spot = np.asarray(spot, dtype=np.float64)  # where the feet stand (xy)
        self.yaw = yaw
        self.forward = np.array([math.cos(yaw), math.sin(yaw)])
        self.hand = hand
        self.speed = speed
        self.rng = rng
        self.keys: list[Key] = []
        self.objects: dict[str, SceneObject] = {}
        self.segments: list[Segment] = []
        self.time = 0.0
        self.posture = "standing"
        self.held: str | None = None  # key of the object in hand
        standing = Pose.neutral(yaw=yaw)
        self._apply_spec(standing, REST_ARMS)
        self.stand_base = humanoid.grounded(standing, self.spot)
        self.sit_base: Pose | None = None
        self.reach_points: dict[str, np.ndarray] = {}
        self.table_top: float | None = None
        self.last_spec: Spec = dict(REST_ARMS)

    # -- poses
    @staticmethod
    def _apply_spec(pose: Pose, spec: Spec) -> None:
        for name, value in spec.items():
            if isinstance(value, np.ndarray):
                pose.rotations[name] = value
            else:
                pose.angles[name] = float(value)

    def sitting_base(self) -> Pose:
        if self.sit_base is None:
            sitting = Pose.neutral(yaw=self.yaw)
            self._apply_spec(sitting, {
                "right_hip": leg(1.5, 0.06), "left_hip": quat.mirror_z(leg(1.5, 0.06)),
                "right_knee": -1.5, "left_knee": -1.5,
                "right_ankle": quat.compose(("z", 0.05)), "left_ankle": quat.compose(("z", 0.05)),
                "chest": bend(-0.05), **REST_ARMS,
                "right_shoulder": arm(0.35, 0.12), "left_shoulder": quat.mirror_z(arm(0.35, 0.12)),
                "right_elbow": 0.6, "left_elbow": 0.6,
            })
            self.sit_base = self.humanoid.grounded(sitting, self.spot)
        return self.sit_base

    def make_pose(self, spec: Spec, posture: str | None = None, ground: bool = True) -> Pose:
        """Posture base + the activity's joint overrides (right-handed spec, mirrored for the left)."""
        posture = posture or self.posture
        base = (self.stand_base if posture == "standing" else self.sitting_base()).copy()
        full = dict(spec)
        if self.hand == "left":
            full = left(full)
        self._apply_spec(base, full)
        if posture == "standing" and ground and any(k.endswith(("hip", "knee", "ankle", "chest")) for k in full):
            base = self.humanoid.grounded(base, self.spot)
        return base

    def key(self, duration: float, spec: Spec, posture: str | None = None, jitter: float = 0.04) -> Pose:
        """Move into the pose ``spec`` over ``duration`` seconds (scaled by the performer's speed).

        Joint angles get a little per-key noise (``jitter`` radians) so that no two performances match.
        """
        noisy: Spec = {}
        for name, value in spec.items():
            if isinstance(value, np.ndarray) and jitter:
                noise = self.rng.normal(0.0, jitter, size=3)
                noisy[name] = quat.multiply(value, quat.compose(("x", noise[0]), ("y", noise[1]), ("z", noise[2])))
            elif not isinstance(value, np.ndarray) and jitter:
                noisy[name] = float(value) + float(self.rng.normal(0.0, jitter))
            else:
                noisy[name] = value
        self.time += max(duration, 0.05) / self.speed
        pose = self.make_pose(noisy, posture)
        self.keys.append(Key(self.time, pose))
        self.last_spec = dict(spec)
        return pose

    def hold(self, duration: float) -> None:
        """Stay in the last pose (with a slight drift so the body is never frozen)."""
        spec = dict(self.last_spec)
        self.key(duration, spec, jitter=0.02)

    # -- hands and objects
    @property
    def hand_link(self) -> str:
        return f"{self.hand}_wrist"

    def hand_frame(self, pose: Pose, side: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        frames = self.humanoid.fk(pose)
        return frames[f"{side or self.hand}_wrist"]

    def add_object(self, key: str, kind: str, colour_name: str, colour, **model_args) -> SceneObject:
        obj = SceneObject(key, kind, colour_name, colour, model_args=model_args)
        self.objects[key] = obj
        return obj

    def default_grip(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Object centre in the hand sphere, its up axis along the forearm's palm side (wrist frame x)."""
        radius = self.humanoid.hand_radius
        position = np.array([0.2 * radius, -0.6 * radius, 0.0])
        orientation = quat.axis_angle("y", math.pi / 2)  # object z (up) -> wrist x
        if kind == "book":
            orientation = quat.compose(("y", math.pi / 2), ("x", math.pi / 2))
        return position, orientation

    def start_holding(self, key: str) -> None:
        obj = self.objects[key]
        position, orientation = self.default_grip(obj.kind)
        obj.phases.append(ObjectPhase(self.time, "held", hand=self.hand, offsets=[(self.time, position, orientation)]))
        self.held = key

    def place_on_table(self, key: str, point: np.ndarray) -> None:
        """Rest object ``key`` upright on the table top at ``point`` (xy), turned to face the performer."""
        obj = self.objects[key]
        from llavidal.sim.props import hand_object

        half = hand_object(obj.kind, obj.colour).half_extents
        position = np.array([point[0], point[1], (self.table_top or 0.75) + half[2]])
        obj.phases.append(ObjectPhase(self.time, "rest", pose=(position, quat.axis_angle("z", self.yaw))))

    def grab(self, key: str, pose: Pose) -> None:
        """Attach ``key`` to the hand at the current time, keeping its current world pose."""
        obj = self.objects[key]
        rest = obj.phase_at(self.time).pose
        wrist = self.hand_frame(pose)
        offset = compose_transform(invert_transform(wrist), rest)
        obj.phases.append(ObjectPhase(self.time, "held", hand=self.hand, offsets=[(self.time, *offset)]))
        self.held = key

    def regrip(self, key: str, duration_keys_before: float, target: tuple[np.ndarray, np.ndarray]) -> None:
        """Blend the held object's grip offset to ``target`` by the current time."""
        phase = self.objects[key].phase_at(self.time)
        last_time, position, orientation = phase.offsets[-1]
        start = max(last_time, self.time - duration_keys_before)
        if start > last_time:
            phase.offsets.append((start, position, orientation))
        phase.offsets.append((self.time, target[0], target[1]))

    def release(self, key: str, pose: Pose) -> None:
        """Put ``key`` down where the hand is: upright on the table top."""
        wrist = self.hand_frame(pose)
        self.place_on_table(key, wrist[0][:2])
        self.held = None

    def reach_point(self, name: str, lateral: float) -> np.ndarray:
        """A point on the table the hand can reach; the same name gives the same point in a performance."""
        if name not in self.reach_points:
            pose = self.make_pose(reach_spec(lateral), "standing")
            self.reach_points[name] = self.hand_frame(pose)[0]
            if self.table_top is None:
                self.table_top = float(self.reach_points[name][2] - self.humanoid.hand_radius)
        return self.reach_points[name]

    def _with_arms(self, pose: Pose, arms: Spec) -> Pose:
        """``pose`` with the (right-handed) arm joints of ``arms`` applied."""
        pose = pose.copy()
        self._apply_spec(pose, left(arms) if self.hand == "left" else arms)
        return pose

    def objects_on_table(self) -> list[str]:
        return [k for k, o in self.objects.items()
                if not o.fixed and o.kind != "food" and o.phases and o.phase_at(self.time).mode == "rest"]

    # -- segments
    def begin(self, activity: str) -> Segment:
        segment = Segment(activity, self.time, self.time, posture=self.posture)
        self.segments.append(segment)
        return segment

    def end(self, segment: Segment) -> None:
        segment.end = self.time

    def track(self) -> KeyframeTrack:
        return KeyframeTrack(self.keys)


TRAY_LATERAL = 0.3  # the tray sits this far (shoulder swing, radians) outwards of the objects' spot


def reach_spec(lateral: float) -> Spec:
    """Right arm reaching forward-down to a table top; ``lateral`` (rad) moves the target outwards."""
    return {"right_shoulder": arm(0.75, 0.12 + max(lateral, 0.0), -min(lateral, 0.0) + 0.05), "right_elbow": 0.35,
            "chest": bend(0.3), "neck": bend(0.25)}


# ---------------------------------------------------------------------------------------------- programs
Program = Callable[[Builder, np.random.Generator, Segment], None]


def _amp(rng: np.random.Generator, value: float, spread: float = 0.1) -> float:
    return float(value * (1.0 + rng.uniform(-spread, spread)))


def drink(b: Builder, rng, seg: Segment) -> None:
    """Raise the cup or bottle in hand to the mouth, tip it, lower it; 1-2 sips."""
    sips = int(rng.integers(1, 3))
    seg.repetitions = sips
    b.key(0.3, HOLD_RIGHT)
    for _ in range(sips):
        b.key(0.6, {"right_shoulder": arm(_amp(rng, 0.55), 0.25, 0.55), "right_elbow": _amp(rng, 2.2, 0.05), "neck": bend(0.05)})
        b.key(0.35, {"right_shoulder": arm(_amp(rng, 0.95), 0.3, 0.5), "right_elbow": 2.3, "neck": bend(-0.3)})
        b.hold(0.45)
        b.key(0.5, HOLD_RIGHT)
    b.hold(0.2)


def eat(b: Builder, rng, seg: Segment) -> None:
    """Take pieces of food from a tray on the table and bring them to the mouth; 1-3 bites."""
    bites = int(rng.integers(1, 4))
    seg.repetitions = bites
    food_keys = [k for k in b.objects if k.startswith("food")]
    b.key(0.25, REST_ARMS)
    for bite in range(bites):
        reach = b.key(0.6, reach_spec(TRAY_LATERAL))
        key = food_keys[bite % len(food_keys)] if food_keys else None
        if key and b.objects[key].phase_at(b.time).mode == "rest":
            b.grab(key, reach)
        b.hold(0.2)
        b.key(0.6, {"right_shoulder": arm(0.75, 0.25, 0.6), "right_elbow": 2.35, "neck": bend(0.1)})
        b.hold(0.35)
        if key:
            b.objects[key].phases.append(ObjectPhase(b.time, "hidden"))
            b.held = None
        b.key(0.5, REST_ARMS)


def pick_up(b: Builder, rng, seg: Segment) -> None:
    """Reach to the table, grasp the object, bring it to the belly."""
    key = b.objects_on_table()[0]
    seg.objects = [b.objects[key].kind]
    b.key(0.25, REST_ARMS)
    reach = b.key(0.8, reach_spec(0.0))
    b.hold(0.15)
    b.grab(key, reach)
    b.key(0.7, HOLD_RIGHT)
    b.regrip(key, 0.7, b.default_grip(b.objects[key].kind))
    b.hold(0.4)


def put_down(b: Builder, rng, seg: Segment) -> None:
    """Lower the object in hand onto the table and let go."""
    key = b.held
    seg.objects = [b.objects[key].kind]
    b.key(0.3, HOLD_RIGHT)
    reach = b.key(0.8, reach_spec(0.0))
    b.release(key, reach)
    b.hold(0.2)
    b.key(0.7, REST_ARMS)
    b.hold(0.3)


def read(b: Builder, rng, seg: Segment) -> None:
    """Hold the book open in front of the chest, head bowed, and turn pages with the other hand."""
    pages = int(rng.integers(1, 3))
    seg.repetitions = pages
    key = b.held
    seg.objects = [b.objects[key].kind]
    book = {"right_shoulder": arm(0.75, 0.1, 0.7), "right_elbow": 1.75,
            "left_shoulder": quat.mirror_z(arm(0.75, 0.1, 0.7)), "left_elbow": 1.75,
            "neck": bend(0.45), "chest": bend(0.08)}
    pose = b.key(0.8, book)
    # the book between the two hands, its face towards the head
    right = b.hand_frame(pose, b.hand)
    other = b.hand_frame(pose, "left" if b.hand == "right" else "right")
    centre = (right[0] + other[0]) / 2.0
    facing = np.array([math.cos(b.yaw), math.sin(b.yaw), 0.0])
    target_world = (centre + 0.03 * facing + np.array([0, 0, 0.03]),
                    quat.multiply(quat.axis_angle("z", b.yaw + math.pi / 2), quat.axis_angle("x", -0.5)))
    b.regrip(key, 0.8 / b.speed, compose_transform(invert_transform(right), target_world))
    b.hold(0.5)
    for _ in range(pages):
        turn = dict(book)
        turn["left_shoulder"] = quat.mirror_z(arm(0.9, 0.1, 1.0))
        turn["left_elbow"] = 1.5
        b.key(0.4, turn)
        b.key(0.4, book)
        b.hold(0.5)
    b.key(0.7, HOLD_RIGHT)
    b.regrip(key, 0.7 / b.speed, b.default_grip("book"))


def phone_call(b: Builder, rng, seg: Segment) -> None:
    """Lift the phone to the ear, talk (small head movements), lower it."""
    key = b.held
    seg.objects = [b.objects[key].kind]
    b.key(0.3, HOLD_RIGHT)
    ear = {"right_shoulder": arm(0.45, 0.55, 0.2, -0.4), "right_elbow": 2.55, "neck": bend(0.0, 0.0, 0.2)}
    b.key(0.7, ear)
    b.regrip(key, 0.7 / b.speed, (np.array([0.3 * b.humanoid.hand_radius, -0.8 * b.humanoid.hand_radius, 0.02]),
                                   quat.compose(("x", math.pi / 2))))
    talk = float(rng.uniform(1.0, 1.8))
    for _ in range(int(talk / 0.5)):
        b.key(0.5, {**ear, "neck": bend(float(rng.uniform(-0.1, 0.2)), float(rng.uniform(-0.3, 0.3)), 0.2)})
    b.key(0.6, HOLD_RIGHT)
    b.regrip(key, 0.6 / b.speed, b.default_grip(b.objects[key].kind))


def wave(b: Builder, rng, seg: Segment) -> None:
    """Raise the hand above the shoulder and wave it side to side 2-4 times."""
    waves = int(rng.integers(2, 5))
    seg.repetitions = waves
    up = _amp(rng, 1.45)
    b.key(0.6, {"right_shoulder": arm(0.3, up, 0.0, -1.5), "right_elbow": 1.3})
    for _ in range(waves):
        b.key(0.22, {"right_shoulder": arm(0.3, up, 0.0, -1.8), "right_elbow": 0.9})
        b.key(0.22, {"right_shoulder": arm(0.3, up, 0.0, -1.2), "right_elbow": 1.6})
    b.key(0.6, REST_ARMS)
    b.hold(0.2)


def clap(b: Builder, rng, seg: Segment) -> None:
    """Clap the hands in front of the chest 2-5 times."""
    claps = int(rng.integers(2, 6))
    seg.repetitions = claps
    lift = _amp(rng, 0.85)
    # found with forward kinematics: hands about 7 cm apart in front of the chest
    together = {"right_shoulder": arm(lift, 0.0, 0.6), "right_elbow": 1.5,
                "left_shoulder": quat.mirror_z(arm(lift, 0.0, 0.6)), "left_elbow": 1.5}
    apart = {"right_shoulder": arm(lift, 0.3, 0.05), "right_elbow": 1.4,
             "left_shoulder": quat.mirror_z(arm(lift, 0.3, 0.05)), "left_elbow": 1.4}
    b.key(0.45, apart)
    for _ in range(claps):
        b.key(0.16, together, jitter=0.01)
        b.key(0.18, apart, jitter=0.01)
    b.key(0.5, REST_ARMS)


def point(b: Builder, rng, seg: Segment) -> None:
    """Point with a straight arm at something ahead or to the side, hold, lower."""
    direction = float(rng.uniform(-0.5, 0.4))
    seg.details["direction"] = "to the side" if direction < -0.25 else "ahead"
    b.key(0.6, {"right_shoulder": arm(_amp(rng, 1.45), 0.1, direction), "right_elbow": 0.05, "neck": bend(0.0, -direction)})
    b.hold(float(rng.uniform(0.6, 1.1)))
    b.key(0.6, REST_ARMS)
    b.hold(0.2)


def sit_down(b: Builder, rng, seg: Segment) -> None:
    """Lower onto the chair behind: lean forward, bend the knees, settle back upright."""
    arms = {k: v for k, v in b.last_spec.items() if "shoulder" in k or "elbow" in k} if b.held else {}
    b.key(0.3, {**REST_ARMS, **arms}, "standing")
    start = b.stand_base
    sitting = b.sitting_base()
    mid = start.blend(sitting, 0.55)
    mid.rotations["chest"] = bend(0.55)
    mid.root_pos[2] -= 0.02
    b.time += 0.8 / b.speed
    b.keys.append(Key(b.time, b._with_arms(mid, arms)))
    b.posture = "sitting"
    b.key(0.7, {"chest": bend(-0.05), **({} if b.held else {"right_shoulder": arm(0.35, 0.12), "left_shoulder": quat.mirror_z(arm(0.35, 0.12)), "right_elbow": 0.6, "left_elbow": 0.6}), **arms}, "sitting")
    b.hold(0.4)


def stand_up(b: Builder, rng, seg: Segment) -> None:
    """Rise from the chair: lean forward, push up, straighten."""
    arms = {k: v for k, v in b.last_spec.items() if "shoulder" in k or "elbow" in k} if b.held else {}
    b.key(0.3, {"chest": bend(-0.05), **arms}, "sitting")
    b.key(0.5, {"chest": bend(0.6), "neck": bend(-0.1), **arms}, "sitting")
    mid = b.sitting_base().blend(b.stand_base, 0.5)
    mid.rotations["chest"] = bend(0.5)
    b.time += 0.7 / b.speed
    b.keys.append(Key(b.time, b._with_arms(mid, arms)))
    b.posture = "standing"
    b.key(0.6, {**REST_ARMS, **arms}, "standing")
    b.hold(0.3)


def stoop(b: Builder, rng, seg: Segment) -> None:
    """Bend down until the hand nearly touches the floor, pause, straighten up."""
    depth = _amp(rng, 1.0, 0.1)
    low = {"chest": bend(1.0 * depth), "neck": bend(0.1), "right_hip": leg(1.2 * depth), "left_hip": quat.mirror_z(leg(1.2 * depth)),
           "right_knee": -1.6 * depth, "left_knee": -1.6 * depth,
           "right_ankle": quat.compose(("z", 0.55 * depth)), "left_ankle": quat.compose(("z", 0.55 * depth)),
           "right_shoulder": arm(0.5, 0.15), "right_elbow": 0.1,
           "left_shoulder": quat.mirror_z(arm(0.3, 0.2)), "left_elbow": 0.5}
    b.key(0.3, REST_ARMS)
    b.key(0.9, low)
    b.hold(float(rng.uniform(0.3, 0.6)))
    b.key(0.9, REST_ARMS)
    b.hold(0.2)


PROGRAMS: dict[str, Program] = {
    "drink": drink, "eat": eat, "pick_up": pick_up, "put_down": put_down, "read": read,
    "phone_call": phone_call, "wave": wave, "clap": clap, "point": point, "sit_down": sit_down,
    "stand_up": stand_up, "stoop": stoop,
}
