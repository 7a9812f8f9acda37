"""The humanoid: per-subject body proportions, poses, forward kinematics and the NTU 25-joint skeleton.

The body is pybullet's DeepMimic humanoid (``humanoid/humanoid.urdf``, 4x life size, loaded with
``globalScaling=0.25``). Its URDF frame is Y-up with x forward and z to the body's right. Per subject we
rewrite the URDF with separate length factors for torso, arms and legs and a girth factor, so subjects
differ in proportions, not only in size.

A :class:`Pose` is what one frame needs: root position and orientation in the world (Z-up) and the
local rotations of the 12 driven joints.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavidal.sim import quat

URDF_SCALE = 0.25  # the URDF is 4x life size
SPHERICAL = ("chest", "neck", "right_hip", "right_ankle", "right_shoulder", "left_hip", "left_ankle", "left_shoulder")
REVOLUTE = ("right_knee", "right_elbow", "left_knee", "left_elbow")
LINK_INDEX = {
    "root": 0, "chest": 1, "neck": 2, "right_hip": 3, "right_knee": 4, "right_ankle": 5,
    "right_shoulder": 6, "right_elbow": 7, "right_wrist": 8, "left_hip": 9, "left_knee": 10,
    "left_ankle": 11, "left_shoulder": 12, "left_elbow": 13, "left_wrist": 14,
}
DRIVEN_JOINTS = [LINK_INDEX[name] for name in ("chest", "neck", "right_hip", "right_knee", "right_ankle",
                                               "right_shoulder", "right_elbow", "left_hip", "left_knee",
                                               "left_ankle", "left_shoulder", "left_elbow")]
Y_TO_Z = quat.axis_angle("x", math.pi / 2)  # the URDF's Y-up frame -> the world's Z-up frame
SEGMENT_OF_LINK = {
    "root": "torso", "chest": "torso", "neck": "head",
    "right_hip": "legs", "right_knee": "legs", "right_ankle": "legs",
    "left_hip": "legs", "left_knee": "legs", "left_ankle": "legs",
    "right_shoulder": "arms", "right_elbow": "arms", "right_wrist": "arms",
    "left_shoulder": "arms", "left_elbow": "arms", "left_wrist": "arms",
}


def swap_side(name: str) -> str:
    if name.startswith("right_"):
        return "left_" + name[6:]
    if name.startswith("left_"):
        return "right_" + name[5:]
    return name


@dataclass(frozen=True)
class BodyShape:
    """A subject's build: overall size, per-segment length factors, girth and colours (RGBA 0-1)."""

    size: float = 1.0
    torso: float = 1.0
    arms: float = 1.0
    legs: float = 1.0
    girth: float = 1.0
    shirt: tuple[float, float, float] = (0.2, 0.35, 0.75)
    trousers: tuple[float, float, float] = (0.25, 0.25, 0.3)
    skin: tuple[float, float, float] = (0.85, 0.65, 0.5)

    @property
    def scale(self) -> float:
        """pybullet ``globalScaling`` for this subject."""
        return URDF_SCALE * self.size

    def length_factor(self, link: str) -> float:
        return {"torso": self.torso, "arms": self.arms, "legs": self.legs, "head": 1.0}[SEGMENT_OF_LINK[link]]

    def colour_of(self, link: str) -> tuple[float, float, float, float]:
        if link in ("neck", "right_wrist", "left_wrist"):
            rgb = self.skin
        elif link in ("root", "right_hip", "right_knee", "left_hip", "left_knee", "right_ankle", "left_ankle"):
            rgb = self.trousers
        else:
            rgb = self.shirt
        return (*rgb, 1.0)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else round(v, 4)) for k, v in self.__dict__.items()}


def _scaled(text: str, factor: float) -> str:
    return " ".join(f"{float(v) * factor:.6f}" for v in text.split())


def shaped_urdf(source: str | Path, shape: BodyShape) -> str:
    """The humanoid URDF text with ``shape``'s segment lengths and girth applied.

    Link geometry scales by its segment's length factor (radii also by girth); a joint's origin scales
    with its parent link, so limbs get longer or shorter without detaching.
    """
    # the shipped file ends in a NUL byte, which XML parsers reject
    text = Path(source).read_text(encoding="utf-8", errors="replace").rstrip("\x00\r\n\t ")
    robot = ET.fromstring(text)
    for link in robot.iter("link"):
        name = link.get("name")
        if name not in SEGMENT_OF_LINK:
            continue
        length = shape.length_factor(name)
        radial = shape.girth if name != "neck" else 1.0
        for element in list(link.iter("collision")) + list(link.iter("inertial")):
            origin = element.find("origin")
            if origin is not None:
                origin.set("xyz", _scaled(origin.get("xyz", "0 0 0"), length))
        for geometry in link.iter("geometry"):
            for shape_element in geometry:
                if shape_element.tag == "sphere":
                    shape_element.set("radius", f"{float(shape_element.get('radius')) * radial:.6f}")
                elif shape_element.tag == "capsule":
                    shape_element.set("radius", f"{float(shape_element.get('radius')) * radial:.6f}")
                    shape_element.set("length", f"{float(shape_element.get('length')) * length:.6f}")
                elif shape_element.tag == "box":
                    shape_element.set("size", _scaled(shape_element.get("size"), length))
    for joint in robot.iter("joint"):
        parent = joint.find("parent").get("link")
        origin = joint.find("origin")
        if parent in SEGMENT_OF_LINK and origin is not None:
            factor = shape.length_factor(parent)
            if joint.get("name", "").endswith("_hip") or joint.get("name", "").endswith("_shoulder"):
                factor *= math.sqrt(shape.girth)  # broader builds stand wider
            origin.set("xyz", _scaled(origin.get("xyz", "0 0 0"), factor))
    text = ET.tostring(robot, encoding="unicode")
    return re.sub(r"\s+\n", "\n", text)


@dataclass
class Pose:
    """One frame of the body: world root (Z-up) and local joint rotations (URDF frames)."""

    root_pos: np.ndarray  # (3,) metres
    root_orn: np.ndarray  # (4,) x y z w
    rotations: dict[str, np.ndarray] = field(default_factory=dict)  # spherical joint -> (4,) quaternion
    angles: dict[str, float] = field(default_factory=dict)  # knee/elbow -> radians

    @staticmethod
    def neutral(root_pos=(0.0, 0.0, 0.9), yaw: float = 0.0) -> "Pose":
        return Pose(
            root_pos=np.array(root_pos, dtype=np.float64),
            root_orn=quat.multiply(quat.axis_angle("z", yaw), Y_TO_Z),
            rotations={name: quat.IDENTITY.copy() for name in SPHERICAL},
            angles={name: 0.0 for name in REVOLUTE},
        )

    def copy(self) -> "Pose":
        return Pose(self.root_pos.copy(), self.root_orn.copy(),
                    {k: v.copy() for k, v in self.rotations.items()}, dict(self.angles))

    def mirrored(self) -> "Pose":
        """Left-right mirror in the body frame (root unchanged): a right-handed action done left-handed."""
        return Pose(
            self.root_pos.copy(), self.root_orn.copy(),
            {swap_side(k): quat.mirror_z(v) for k, v in self.rotations.items()},
            {swap_side(k): v for k, v in self.angles.items()},
        )

    def blend(self, other: "Pose", weight: float) -> "Pose":
        """Slerp towards ``other`` by ``weight`` in [0, 1]."""
        return Pose(
            self.root_pos + weight * (other.root_pos - self.root_pos),
            quat.slerp(self.root_orn, other.root_orn, weight),
            {k: quat.slerp(v, other.rotations[k], weight) for k, v in self.rotations.items()},
            {k: v + weight * (other.angles[k] - v) for k, v in self.angles.items()},
        )

    def joint_targets(self) -> list[list[float]]:
        out = []
        for name in ("chest", "neck", "right_hip", "right_knee", "right_ankle", "right_shoulder", "right_elbow",
                     "left_hip", "left_knee", "left_ankle", "left_shoulder", "left_elbow"):
            out.append(list(self.rotations[name]) if name in self.rotations else [self.angles[name]])
        return out


class Humanoid:
    """A loaded, shaped humanoid in one pybullet client: apply poses, read joints, build skeletons."""

    def __init__(self, client, urdf_path: str | Path, shape: BodyShape) -> None:
        self.client = client
        self.shape = shape
        with_flags = client.p.URDF_MAINTAIN_LINK_ORDER
        from llavidal.sim.bullet import silenced

        with silenced():
            self.id = client.loadURDF(str(urdf_path), [0, 0, 1], globalScaling=shape.scale, flags=with_flags,
                                      useFixedBase=False)
        for link, index in LINK_INDEX.items():
            client.changeVisualShape(self.id, index, rgbaColor=shape.colour_of(link))
        client.changeVisualShape(self.id, -1, rgbaColor=shape.colour_of("root"))
        unit = shape.scale
        # Offsets (in link frames, metres) for the NTU joints the humanoid has no joint for.
        self.head_offset = np.array([0.0, 0.7 * unit, 0.0])  # centre of the head sphere
        self.spine_shoulder_offset = np.array([0.0, 0.8 * unit * shape.torso, 0.0])
        self.foot_offset = np.array([0.36 * unit * shape.legs, -0.14 * unit * shape.legs, 0.0])
        self.hand_radius = 0.16 * unit * shape.girth
        self.sole_offset = 0.2 * unit * shape.legs  # ankle joint to the sole of the foot box

    def apply(self, pose: Pose) -> None:
        self.client.resetBasePositionAndOrientation(self.id, pose.root_pos.tolist(), pose.root_orn.tolist())
        self.client.resetJointStatesMultiDof(self.id, DRIVEN_JOINTS, targetValues=pose.joint_targets())

    def link_frames(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """World (position, orientation) of every link's joint frame, after :meth:`apply`."""
        states = self.client.getLinkStates(self.id, list(range(15)), computeForwardKinematics=True)
        names = sorted(LINK_INDEX, key=LINK_INDEX.get)
        return {name: (np.array(state[4]), np.array(state[5])) for name, state in zip(names, states)}

    def skeleton(self, frames: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """(25, 3) NTU joints in world coordinates (order of ``llavidal.features.pose.ntu.JOINT_NAMES``)."""

        def at(link: str, offset: np.ndarray | None = None) -> np.ndarray:
            position, orientation = frames[link]
            return position if offset is None else position + quat.rotate(orientation, offset)

        joints = np.zeros((25, 3))
        joints[0] = at("root")
        joints[1] = at("chest")
        joints[2] = at("neck")
        joints[3] = at("neck", self.head_offset)
        joints[20] = at("chest", self.spine_shoulder_offset)
        for side, shoulder, elbow, wrist, hand, tip, thumb, hip, knee, ankle, foot in (
            ("left", 4, 5, 6, 7, 21, 22, 12, 13, 14, 15),
            ("right", 8, 9, 10, 11, 23, 24, 16, 17, 18, 19),
        ):
            joints[shoulder] = at(f"{side}_shoulder")
            joints[elbow] = at(f"{side}_elbow")
            centre = at(f"{side}_wrist")
            forearm = centre - joints[elbow]
            forearm /= max(np.linalg.norm(forearm), 1e-6)
            joints[wrist] = centre - 0.6 * self.hand_radius * forearm
            joints[hand] = centre + 0.3 * self.hand_radius * forearm
            joints[tip] = centre + 1.4 * self.hand_radius * forearm
            # the thumb sits on the forearm's forward side (the elbow's x axis)
            side_axis = quat.rotate(frames[f"{side}_elbow"][1], np.array([1.0, 0.0, 0.0]))
            joints[thumb] = centre + 0.6 * self.hand_radius * forearm + 0.8 * self.hand_radius * side_axis
            joints[hip] = at(f"{side}_hip")
            joints[knee] = at(f"{side}_knee")
            joints[ankle] = at(f"{side}_ankle")
            joints[foot] = at(f"{side}_ankle", self.foot_offset)
        return joints

    def fk(self, pose: Pose) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        self.apply(pose)
        return self.link_frames()

    def grounded(self, pose: Pose, feet_xy: np.ndarray | None = None) -> Pose:
        """``pose`` moved so that the lower foot rests on the floor and, if given, the feet's midpoint is
        at ``feet_xy`` (feet stay planted while the upper body moves)."""
        frames = self.fk(pose)
        ankles = np.stack([frames["right_ankle"][0], frames["left_ankle"][0]])
        out = pose.copy()
        out.root_pos[2] += self.sole_offset - ankles[:, 2].min()
        if feet_xy is not None:
            out.root_pos[:2] += np.asarray(feet_xy) - ankles[:, :2].mean(axis=0)
        return out

    def feet_xy(self, pose: Pose) -> np.ndarray:
        frames = self.fk(pose)
        return np.stack([frames["right_ankle"][0], frames["left_ankle"][0]])[:, :2].mean(axis=0)
