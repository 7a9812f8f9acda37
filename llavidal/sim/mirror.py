"""Left-right mirror images of world clips, written as clips of their own.

A mirror image of a clip is a clip of the same activity done with the other hand, seen from the mirrored side:
the video's frames flipped, the skeleton reflected (camera x negated, left and right joints swapped, pixel
coordinates flipped about the frame's centre), the object boxes flipped, and the metadata's hands and view
swapped. Its questions are then the mirrored metadata's, written by the world's own question writers
(:mod:`llavidal.sim.annotate`), so "which hand" is answered by the mirror, not by editing text.

The world's train split can be lopsided on a detail no activity fixes: the medium world's train subjects use the
right hand for 85% of the hand questions while two test subjects are left-handed. Mirrored clips balance that
with real (reflected) pixels and poses. Camera space is Kinect's (x left, y up, z forward) with the principal
point at the frame's centre, so a pixel column ``u`` becomes ``width - u`` and ``colorX``/``depthX`` become
``1920 - colorX`` / ``512 - depthX``.

    from llavidal.sim.mirror import mirror_clip
    mirror_clip("world", "S001C001P001R001A003", "mirrored")   # mirrored/{videos,skeletons,tracks,meta}/...
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from llavidal.features.pose.ntu import (
    COLOUR_SIZE,
    JOINT_INDEX,
    JOINT_NAMES,
    Body,
    SkeletonSequence,
    read_skeleton,
    write_skeleton,
)
from llavidal.sim.camera import DEPTH_SIZE
from llavidal.sim.video import read_mp4, write_mp4
from llavidal.utils.io import atomic_write_json

MIRRORED_JOINTS = np.array([JOINT_INDEX[name.replace("Left", "\0").replace("Right", "Left").replace("\0", "Right")]
                            for name in JOINT_NAMES])
"""Joint ``i`` of a mirrored body is joint ``MIRRORED_JOINTS[i]`` of the original (HandLeft <- HandRight, ...)."""
OTHER_SIDE = {"left": "right", "right": "left"}


def mirror_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) frames flipped left-right."""
    return np.ascontiguousarray(np.asarray(frames)[:, :, ::-1])


def mirror_body(body: Body) -> Body:
    """One body reflected in camera space: joints swapped side for side, x / pixel columns / orientations mirrored,
    the per-hand info fields (confidence, state) swapped and ``leanX`` negated."""
    joints = np.array(body.joints, dtype=np.float64)[MIRRORED_JOINTS]
    joints[:, 0] = -joints[:, 0]
    joints[:, 3] = DEPTH_SIZE[0] - joints[:, 3]
    joints[:, 5] = COLOUR_SIZE[0] - joints[:, 5]
    # a rotation (w, x, y, z) reflected through the plane x = 0 is (w, x, -y, -z)
    joints[:, 9] = -joints[:, 9]
    joints[:, 10] = -joints[:, 10]
    info = list(body.info)
    if len(info) >= 7:
        info[1], info[2], info[3], info[4] = info[3], info[4], info[1], info[2]
        info[6] = -info[6]
    return Body(body_id=body.body_id, joints=joints, info=info)


def mirror_skeleton(sequence: SkeletonSequence) -> SkeletonSequence:
    return SkeletonSequence(frames=[[mirror_body(body) for body in frame] for frame in sequence.frames])


def mirror_box(box: list[float], width: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [width - x1, y0, width - x0, y1]


def mirror_tracks(tracks: dict) -> dict:
    """Object tracks of the mirrored frames: boxes flipped about the frame's centre, 3-D positions' x negated."""
    out = copy.deepcopy(tracks)
    width = int(tracks["width"])
    for obj in out.get("objects", []):
        for entry in obj.get("frames", []):
            if entry.get("box"):
                entry["box"] = mirror_box(entry["box"], width)
            if entry.get("position_3d"):
                entry["position_3d"] = [-entry["position_3d"][0], *entry["position_3d"][1:]]
    return out


def mirror_meta(meta: dict) -> dict:
    """The metadata of the mirror image: every hand swapped, the camera's azimuth and the performer's facing
    negated (a front-left view becomes front-right); ``mirror_of`` names the original clip."""
    out = copy.deepcopy(meta)
    if out.get("hand") in OTHER_SIDE:
        out["hand"] = OTHER_SIDE[out["hand"]]
    for segment in out.get("segments", []):
        if segment.get("hand") in OTHER_SIDE:
            segment["hand"] = OTHER_SIDE[segment["hand"]]
    if isinstance(out.get("view"), dict) and "azimuth_deg" in out["view"]:
        out["view"]["azimuth_deg"] = -out["view"]["azimuth_deg"]
    if "facing_deg" in out:
        out["facing_deg"] = -out["facing_deg"]
    out["mirror_of"] = meta["clip_id"]
    return out


def mirror_clip(world: str | os.PathLike, clip_id: str, out: str | os.PathLike) -> dict:
    """Write the mirror image of ``world``'s clip ``clip_id`` under ``out`` (``videos/``, ``skeletons/``,
    ``tracks/``, ``meta/``, same file names; each written atomically). Returns the mirrored metadata."""
    world, out = Path(world), Path(out)
    meta_path = world / "meta" / f"{clip_id}.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    files = meta.get("files") or {}
    sources = {kind: world / files.get(kind, default) for kind, default in (
        ("video", f"videos/{clip_id}.mp4"), ("skeleton", f"skeletons/{clip_id}.skeleton"), ("tracks", f"tracks/{clip_id}.json"))}
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{meta_path}: clip {clip_id} has no {', '.join(missing)}; regenerate the world "
                                "(delete its folder and rerun)")
    write_mp4(out / "videos" / f"{clip_id}.mp4", mirror_frames(read_mp4(sources["video"])), fps=int(meta["fps"]))
    write_skeleton(out / "skeletons" / f"{clip_id}.skeleton", mirror_skeleton(read_skeleton(sources["skeleton"])))
    atomic_write_json(out / "tracks" / f"{clip_id}.json",
                      mirror_tracks(json.loads(sources["tracks"].read_text(encoding="utf-8"))))
    mirrored = mirror_meta(meta)
    atomic_write_json(out / "meta" / f"{clip_id}.json", mirrored)
    return mirrored
