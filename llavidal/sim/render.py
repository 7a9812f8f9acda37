"""Perform and film one performance: build the motion and props, then render every requested view.

A *performance* (one subject, one activity or routine, one replication) is filmed by several cameras at
once, as in NTU RGB+D; each (performance, camera) pair is one clip. :func:`perform` turns a plan entry
into a timeline of poses and object states; :func:`film` renders it from one camera into frames, the
NTU skeleton and object tracks.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llavidal.sim import props, quat
from llavidal.sim.activities import BY_NAME
from llavidal.sim.body import BodyShape, Humanoid, Pose, shaped_urdf
from llavidal.sim.bullet import Client, data_path, silenced
from llavidal.sim.camera import CameraRig, View, place, smooth_path
from llavidal.sim.motion import MocapTrack, Placement, load_mocap
from llavidal.sim.procedural import (PROGRAMS, TRAY_LATERAL, Builder, ObjectPhase, SceneObject, compose_transform,
                                     grip_offset_at)

FLOOR_RGB = (0.62, 0.60, 0.55)
SKY_RGB = (1.0, 1.0, 1.0)  # the tiny renderer's clear colour
REFERENCE_ROOT_HEIGHT = 0.93  # grounded standing root height of the default body (the mocap's scale)
LIGHT = {"lightDirection": [0.4, -0.3, 1.0], "lightAmbientCoeff": 0.55, "lightDiffuseCoeff": 0.5,
         "lightSpecularCoeff": 0.05}


@dataclass
class Performance:
    """Everything needed to film: per-frame poses and object poses, the segments, what was used."""

    fps: float
    poses: list[Pose]
    objects: list[SceneObject]
    object_poses: list[dict[str, tuple[np.ndarray, np.ndarray] | None]]  # per frame, key -> pose (None: hidden)
    segments: list[dict]
    humanoid: Humanoid
    activity_ends: list[float]  # when each activity's own motion ends, before the blend into the next one

    @property
    def num_frames(self) -> int:
        return len(self.poses)


class Stage:
    """A physics client reused across performances in one worker process."""

    def __init__(self) -> None:
        self.client = Client()
        self.source_urdf = Path(data_path()) / "humanoid" / "humanoid.urdf"
        self.motions = Path(data_path()) / "data" / "motions"

    def reset(self) -> None:
        with silenced():
            self.client.resetSimulation()

    def humanoid(self, shape: BodyShape) -> Humanoid:
        """Load the humanoid with ``shape``'s proportions (pybullet reads the URDF from a file once)."""
        with tempfile.TemporaryDirectory(prefix="llavidal-sim-") as folder:
            path = Path(folder) / "humanoid.urdf"
            path.write_text(shaped_urdf(self.source_urdf, shape), encoding="utf-8")
            return Humanoid(self.client, path, shape)

    def close(self) -> None:
        self.client.close()


class PropBodies:
    """One prop as one pybullet multibody: a box per link, so one reset moves it all."""

    def __init__(self, client: Client, model: props.PropModel) -> None:
        self.client = client
        self.model = model
        visuals = [client.createVisualShape(client.p.GEOM_BOX, halfExtents=list(box.half), rgbaColor=[*box.colour, 1.0],
                                            visualFramePosition=list(box.centre) if k == 0 else [0, 0, 0])
                   for k, box in enumerate(model.boxes)]
        links = len(model.boxes) - 1
        self.id = client.createMultiBody(
            baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=visuals[0], basePosition=[0, 0, -10],
            linkMasses=[0] * links, linkCollisionShapeIndices=[-1] * links, linkVisualShapeIndices=visuals[1:],
            linkPositions=[list(box.centre) for box in model.boxes[1:]], linkOrientations=[[0, 0, 0, 1]] * links,
            linkInertialFramePositions=[[0, 0, 0]] * links, linkInertialFrameOrientations=[[0, 0, 0, 1]] * links,
            linkParentIndices=[0] * links, linkJointTypes=[client.p.JOINT_FIXED] * links,
            linkJointAxis=[[0, 0, 1]] * links)
        self.centre = model.corners().mean(axis=0)

    def set_pose(self, pose: tuple[np.ndarray, np.ndarray] | None) -> None:
        if pose is None:  # hidden (eaten): far below the floor
            self.client.resetBasePositionAndOrientation(self.id, [0, 0, -10], [0, 0, 0, 1])
        else:
            self.client.resetBasePositionAndOrientation(self.id, pose[0].tolist(), pose[1].tolist())


def background(view: View) -> np.ndarray:
    """(H, W, 3) uint8 floor and sky as seen by ``view``.

    The floor is drawn analytically (a ray-plane test per pixel) instead of by the renderer, which
    spends most of each frame filling a floor polygon; renders are composited over this wherever the
    segmentation mask is empty. The floor gets a slight fall-off with distance, which reads as depth.
    """
    rows, cols = np.mgrid[0:view.height, 0:view.width]
    x = -((cols + 0.5) - view.width / 2.0) / view.focal  # Kinect camera space direction (x to the left)
    y = -((rows + 0.5) - view.height / 2.0) / view.focal
    rotation = view.matrix[:3, :3]  # world -> eye
    eye_directions = np.stack([-x, y, -np.ones_like(x)], axis=-1)  # back to OpenGL eye space
    world_directions = eye_directions @ rotation  # eye -> world is the transpose
    down = world_directions[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(down < -1e-6, -view.eye[2] / down, np.inf)
    reach = np.linalg.norm(world_directions[..., :2], axis=-1) * distance
    shade = np.clip(1.0 - 0.012 * np.nan_to_num(reach, posinf=0.0), 0.82, 1.0)[..., None]
    floor = np.array(FLOOR_RGB)[None, None] * shade
    image = np.where(np.isfinite(distance)[..., None], floor, np.array(SKY_RGB)[None, None])
    return np.round(image * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- perform
def _colour(rng: np.random.Generator, avoid: tuple[str, ...] = ()) -> tuple[str, tuple[float, float, float]]:
    names = [n for n in props.COLOURS if n not in avoid]
    name = names[int(rng.integers(len(names)))]
    return name, props.COLOURS[name]


def _object_model(obj: SceneObject) -> props.PropModel:
    if obj.kind == "table":
        return props.table(**obj.model_args)
    if obj.kind == "chair":
        return props.chair(**obj.model_args)
    if obj.kind == "tray":
        return props.tray(obj.colour)
    return props.hand_object(obj.kind, obj.colour)


def _setup_procedural(b: Builder, plan: dict, rng: np.random.Generator) -> None:
    """Create the props a plan needs, in their starting state.

    Plan keys used: ``held_object`` (kind in hand at the start), ``table_object`` (kind resting on the
    table), ``table`` / ``chair`` / ``tray`` (whether present), ``posture`` (at the start).
    """
    forward = np.array([math.cos(b.yaw), math.sin(b.yaw), 0.0])
    side = np.array([-forward[1], forward[0], 0.0])  # the performer's left
    facing = quat.axis_angle("z", b.yaw)
    if plan.get("held_object"):
        name, colour = _colour(rng)
        b.add_object("held", plan["held_object"], name, colour)
        b.start_holding("held")
    if plan.get("table"):
        objects_point = b.reach_point("objects", 0.0)
        tray_point = b.reach_point("tray", TRAY_LATERAL)
        centre = (objects_point + tray_point) / 2.0 + 0.12 * forward
        centre[2] = b.table_top
        table = b.add_object("table", "table", "brown", props.WOOD, top_height=round(b.table_top, 4),
                             size_x=0.55, size_y=0.75)
        table.fixed = True
        table.phases.append(ObjectPhase(0.0, "rest", pose=(centre, facing)))
        if plan.get("table_object"):
            name, colour = _colour(rng)
            b.add_object("table_object", plan["table_object"], name, colour)
            b.place_on_table("table_object", objects_point[:2])
        if plan.get("tray"):
            tray_name, tray_colour = _colour(rng, avoid=("brown",))
            tray = b.add_object("tray", "tray", tray_name, tray_colour)
            tray.fixed = True
            tray.phases.append(ObjectPhase(0.0, "rest", pose=(np.array([*tray_point[:2], b.table_top]), facing)))
            food_name, food_colour = _colour(rng, avoid=(tray_name,))
            for k in range(3):
                food = b.add_object(f"food{k}", "food", food_name, food_colour)
                spot = tray_point + (k - 1) * 0.07 * side
                food.phases.append(ObjectPhase(0.0, "rest", pose=(np.array([spot[0], spot[1], b.table_top + 0.03]), facing)))
    if plan.get("chair"):
        sitting = b.sitting_base()
        thigh_radius = 0.22 * b.humanoid.shape.scale * b.humanoid.shape.girth
        seat_top = float(sitting.root_pos[2] - thigh_radius)
        seat_centre = sitting.root_pos + 0.1 * forward
        seat_centre[2] = seat_top
        if plan["chair"] == "aside":  # present in the room but not used
            seat_centre = seat_centre - 0.3 * forward - 0.7 * side
        chair = b.add_object("chair", "chair", "brown", props.WOOD, seat_height=round(seat_top, 4))
        chair.fixed = True
        chair.phases.append(ObjectPhase(0.0, "rest", pose=(seat_centre, facing)))
    if plan.get("posture") == "sitting":
        b.posture = "sitting"


MIN_SINGLE_SECONDS = 2.0
MAX_SINGLE_SECONDS = 6.0


def _build_procedural(humanoid: Humanoid, spot: np.ndarray, yaw: float, speed: float, plan: dict) -> Builder:
    """Run the plan's activity programs; the keyframes, objects and segments end up in the builder."""
    from llavidal.sim.procedural import HOLD_RIGHT, REST_ARMS

    rng = np.random.default_rng([plan["seed"], 1])
    builder = Builder(humanoid, spot, yaw, plan["hand"], speed, rng)
    _setup_procedural(builder, plan, rng)
    builder.key(0.2, HOLD_RIGHT if builder.held else (REST_ARMS if builder.posture == "standing" else {}))
    for entry in plan["segments"]:
        if entry["activity"] == "pick_up" and not builder.objects_on_table():
            raise RuntimeError(f"plan {plan['performance_id']}: pick_up with nothing on the table")
        segment = builder.begin(entry["activity"])
        segment.hand = builder.hand if BY_NAME[entry["activity"]].one_handed else None
        if builder.held and entry["activity"] in ("drink", "phone_call", "put_down", "read"):
            segment.objects = [builder.objects[builder.held].kind]
        PROGRAMS[entry["activity"]](builder, rng, segment)
        if entry["activity"] == "pick_up":
            segment.objects = [builder.objects[builder.held].kind]
        if entry["activity"] in ("pick_up", "put_down"):
            segment.objects = segment.objects + ["table"]
        if entry["activity"] == "eat":
            segment.objects = ["tray", "food", "table"]
        if entry["activity"] in ("sit_down", "stand_up"):
            segment.objects = ["chair"]
        builder.end(segment)
    builder.hold(0.25)
    return builder


def perform(stage: Stage, plan: dict) -> Performance:
    """Build a performance from its plan entry (see ``llavidal.sim.plan``)."""
    stage.reset()
    shape = BodyShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan["subject_shape"].items()})
    humanoid = stage.humanoid(shape)
    fps = float(plan["fps"])
    yaw = math.radians(plan["facing_deg"])
    spot = np.array(plan["position"], dtype=np.float64)
    segments_out: list[dict] = []
    objects: list[SceneObject] = []
    if plan["source"] == "mocap":
        clip = load_mocap(str(stage.motions / f"humanoid3d_{plan['mocap_clip']}.txt"))
        speed = float(plan["speed"])
        stand = humanoid.grounded(Pose.neutral(yaw=yaw), spot)
        scale = float(stand.root_pos[2] / REFERENCE_ROOT_HEIGHT)
        start = float(plan["start_phase"]) * (clip.duration if clip.loop else 0.0)
        if clip.loop:
            duration = float(plan["duration"])
        else:
            start = -0.25 * speed  # a moment of stillness before a one-shot motion
            duration = min(max(clip.duration / speed + 0.5, 2.0), 6.0)
        placement = Placement(scale=scale, yaw=yaw, mirror=bool(plan["mirror"]))
        origin = placement.apply(clip.pose_at(max(start, 0.0))).root_pos
        placement.offset = np.array([spot[0] - origin[0], spot[1] - origin[1], 0.0])
        track = MocapTrack(clip, start, speed, placement)
        count = max(2, int(round(duration * fps)))
        poses = [track.pose_at(i / fps) for i in range(count)]
        activity = plan["segments"][0]["activity"]
        segments_out.append({"activity": activity, "start": 0.0, "end": round(count / fps, 4), "objects": [],
                             "hand": None, "repetitions": None, "posture": "standing", "details": {}})
        object_poses = [{} for _ in poses]
        activity_ends = [segments_out[0]["end"]]
    else:
        speed = float(plan["speed"])
        builder = _build_procedural(humanoid, spot, yaw, speed, plan)
        if plan["kind"] == "single" and builder.time > MAX_SINGLE_SECONDS:
            # a long draw (many repetitions at a slow pace): perform it faster to stay within the clip length
            speed *= builder.time / (MAX_SINGLE_SECONDS - 0.2)
            builder = _build_procedural(humanoid, spot, yaw, speed, plan)
        if plan["kind"] == "single" and builder.time < MIN_SINGLE_SECONDS:
            builder.hold((MIN_SINGLE_SECONDS - builder.time + 0.05) * builder.speed)
        track = builder.track()
        count = max(2, int(round(track.duration * fps)) + 1)
        poses = [track.pose_at(i / fps) for i in range(count)]
        objects = list(builder.objects.values())
        object_poses = []
        for i, pose in enumerate(poses):
            t = i / fps
            needs_fk = any(o.phases and o.phase_at(t).mode == "held" for o in objects)
            frames = humanoid.fk(pose) if needs_fk else None
            current: dict = {}
            for obj in objects:
                phase = obj.phase_at(t)
                if phase.mode == "rest":
                    current[obj.key] = phase.pose
                elif phase.mode == "held":
                    wrist = frames[f"{phase.hand}_wrist"]
                    current[obj.key] = compose_transform(wrist, grip_offset_at(phase.offsets, t))
                else:
                    current[obj.key] = None
            object_poses.append(current)
        for segment in builder.segments:
            segments_out.append({"activity": segment.activity, "start": round(segment.start, 4),
                                 "end": round(segment.end, 4), "objects": segment.objects, "hand": segment.hand,
                                 "repetitions": segment.repetitions, "posture": segment.posture,
                                 "details": segment.details})
        activity_ends = [s["end"] for s in segments_out]
        # boundaries sit in the middle of each blend, so segments tile the clip
        for before, after in zip(segments_out, segments_out[1:]):
            middle = round((before["end"] + after["start"]) / 2.0, 4)
            before["end"], after["start"] = middle, middle
        segments_out[0]["start"] = 0.0
        segments_out[-1]["end"] = round(count / fps, 4)
    return Performance(fps=fps, poses=poses, objects=objects, object_poses=object_poses, segments=segments_out,
                       humanoid=humanoid, activity_ends=activity_ends)


# ---------------------------------------------------------------------------------------------- film
@dataclass
class Footage:
    frames: np.ndarray  # (T, H, W, 3) uint8
    skeleton_camera: np.ndarray  # (T, 25, 3) Kinect camera space
    skeleton_pixels: np.ndarray  # (T, 25, 2) video pixels
    tracks: list[dict]  # tracks.json "objects"
    views: list[View]


def film(stage: Stage, performance: Performance, rig: CameraRig, size: int) -> Footage:
    """Render ``performance`` from ``rig`` (following the subject): frames, skeleton, object tracks."""
    client = stage.client
    humanoid = performance.humanoid
    bodies = {obj.key: PropBodies(client, _object_model(obj)) for obj in performance.objects}
    roots = np.array([pose.root_pos[:2] for pose in performance.poses])
    follow = smooth_path(roots, performance.fps)
    projection = client.computeProjectionMatrixFOV(rig.fov_deg, 1.0, 0.05, 40.0)
    frames = np.zeros((performance.num_frames, size, size, 3), dtype=np.uint8)
    skeleton_camera = np.zeros((performance.num_frames, 25, 3))
    skeleton_pixels = np.zeros((performance.num_frames, 25, 2))
    track_frames: dict[str, list[dict]] = {obj.key: [] for obj in performance.objects}
    views = []
    backdrops: dict[bytes, np.ndarray] = {}  # a following camera only translates: one backdrop per clip
    for index, pose in enumerate(performance.poses):
        humanoid.apply(pose)
        joints = humanoid.skeleton(humanoid.link_frames())
        for key, prop in bodies.items():
            prop.set_pose(performance.object_poses[index].get(key))
        view = place(rig, follow[index], size, size)
        views.append(view)
        _, _, rgba, _, segmentation = client.getCameraImage(
            size, size, view.matrix.T.reshape(-1).tolist(), projection, renderer=client.p.ER_TINY_RENDERER,
            shadow=0, **LIGHT)
        mask = np.asarray(segmentation, dtype=np.int64).reshape(size, size)
        rendered = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3]
        backdrop_key = np.round(np.append(view.matrix[:3, :3].ravel(), view.eye[2]), 6).tobytes()
        if backdrop_key not in backdrops:
            backdrops[backdrop_key] = background(view)
        frames[index] = np.where((mask < 0)[..., None], backdrops[backdrop_key], rendered)
        camera_points = view.to_camera(joints)
        skeleton_camera[index] = camera_points
        skeleton_pixels[index] = view.project(camera_points)
        for key, prop in bodies.items():
            object_pose = performance.object_poses[index].get(key)
            if object_pose is None:
                continue
            visible = mask == prop.id
            if not visible.any():
                continue
            rows = np.flatnonzero(visible.any(axis=1))
            cols = np.flatnonzero(visible.any(axis=0))
            centre = object_pose[0] + quat.rotate(object_pose[1], prop.centre)
            track_frames[key].append({
                "frame": index,
                "box": [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1],
                "position_3d": [round(float(v), 4) for v in view.to_camera(centre[None])[0]],
                "score": 1.0,
            })
    tracks = []
    for object_id, obj in enumerate(performance.objects):
        tracks.append({"object_id": object_id, "class": obj.kind, "frames": track_frames[obj.key]})
    return Footage(frames=frames, skeleton_camera=skeleton_camera, skeleton_pixels=skeleton_pixels, tracks=tracks,
                   views=views)
