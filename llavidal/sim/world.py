"""Generate a world: plan, render performances in parallel, write clips, annotations and world.json.

Layout (see docs/ARCHITECTURE.md)::

    DIR/world.json                      preset, seed, counts, package version, activity list
    DIR/videos/{clip_id}.mp4            H.264
    DIR/skeletons/{clip_id}.skeleton    NTU format, that view's camera coordinates
    DIR/tracks/{clip_id}.json           object tracks
    DIR/meta/{clip_id}.json             activity or segment timeline, objects, view, subject, hand, seed...
    DIR/annotations/                    splits.json and per protocol/split question-answer files

Reruns skip performances whose clips all exist and validate, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

from llavidal import __version__
from llavidal.sim.activities import ACTIVITIES, BY_NAME
from llavidal.sim.plan import PRESETS, clip_id, make_plan, parse_clip_id
from llavidal.utils.io import atomic_write_json

SUBDIRS = ("videos", "skeletons", "tracks", "meta")
BODY_ID_BASE = 72057594037927936  # NTU body ids are 64-bit tracking ids


def _plan_digest(performance: dict) -> str:
    return hashlib.sha256(json.dumps(performance, sort_keys=True).encode()).hexdigest()[:16]


def forecast_cuts(performance: dict) -> list[int]:
    """The prefixes of a routine that are forecasting clips (plans written before the list had one)."""
    return list(performance.get("forecast_cuts") or [performance["forecast_cut"]])


def clip_ids_of(performance: dict) -> list[str]:
    ids = []
    for camera in performance["cameras"]:
        ids.append(clip_id(performance, camera["camera"]))
        if performance["kind"] == "routine":
            ids.extend(clip_id(performance, camera["camera"], cut) for cut in forecast_cuts(performance))
    return ids


def _valid_clip(root: Path, clip: str, digest: str) -> dict | None:
    """The clip's metadata if every file of the clip exists and matches the current plan entry."""
    meta_path = root / "meta" / f"{clip}.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("plan_digest") != digest:
        return None
    for sub, suffix in (("videos", ".mp4"), ("skeletons", ".skeleton"), ("tracks", ".json")):
        path = root / sub / f"{clip}{suffix}"
        if not path.is_file() or path.stat().st_size == 0:
            return None
    return meta


# ---------------------------------------------------------------------------------------------- worker
_STAGE = None


def _stage():
    global _STAGE
    if _STAGE is None:
        from llavidal.sim.render import Stage

        _STAGE = Stage()
    return _STAGE


def _segment_json(segment: dict) -> dict:
    out = dict(segment)
    out["label"] = BY_NAME[segment["activity"]].label
    return out


def _write_clip(root: Path, clip: str, performance: dict, footage, frame_count: int, segments: list[dict],
                objects: list, rig: dict, extra: dict) -> dict:
    from llavidal.features.pose.ntu import sequence_from_arrays, write_skeleton
    from llavidal.sim.render import FLOOR_RGB, SKY_RGB
    from llavidal.sim.video import write_mp4

    fps = performance["fps"]
    view = footage.views[0]
    frames = footage.frames[:frame_count]
    write_mp4(root / "videos" / f"{clip}.mp4", frames, fps)
    pixels = footage.skeleton_pixels[:frame_count].reshape(-1, 2)
    sequence = sequence_from_arrays(
        footage.skeleton_camera[:frame_count],
        depth_xy=view.depth_pixels(pixels).reshape(frame_count, 1, 25, 2),
        color_xy=view.colour_pixels(pixels).reshape(frame_count, 1, 25, 2),
        body_ids=[str(BODY_ID_BASE + performance["subject"])],
    )
    write_skeleton(root / "skeletons" / f"{clip}.skeleton", sequence)
    tracks = {"video": f"{clip}.mp4", "fps": fps, "width": view.width, "height": view.height,
              "num_frames": frame_count, "source": "ground_truth",
              "objects": [{**t, "frames": [f for f in t["frames"] if f["frame"] < frame_count]} for t in footage.tracks]}
    atomic_write_json(root / "tracks" / f"{clip}.json", tracks, indent=None)
    used = {c for s in segments for c in s["objects"]}
    hands = sorted({s["hand"] for s in segments if s["hand"]})
    meta = {
        "clip_id": clip,
        "kind": extra.get("kind", performance["kind"]),
        "activity": segments[0]["activity"] if performance["kind"] == "single" else None,
        "label": BY_NAME[segments[0]["activity"]].label if performance["kind"] == "single" else None,
        "segments": [_segment_json(s) for s in segments],
        "objects": [{"object_id": k, "class": o.kind, "colour": o.colour_name, "used": o.kind in used}
                    for k, o in enumerate(objects)],
        "hand": hands[0] if len(hands) == 1 else None,
        "subject": performance["subject"], "subject_shape": performance["subject_shape"],
        "setup": performance["setup"], "camera": rig["camera"], "replication": performance["replication"],
        "view": {"camera": rig["camera"], "azimuth_deg": rig["azimuth_deg"], "camera_height": rig["height"],
                 "distance": rig["distance"], "target_height": rig["target_height"], "intrinsics": view.intrinsics(),
                 "coordinates": "kinect camera space: x left, y up, z forward (m)",
                 "colour_pixels": "colorX = 420 + u * 1080 / width, colorY = v * 1080 / height",
                 "depth_pixels": "depthX = 44 + u * 424 / width, depthY = v * 424 / height"},
        "background": {"sky_rgb": [round(255 * c) for c in SKY_RGB], "floor_rgb": [round(255 * c) for c in FLOOR_RGB]},
        "fps": fps, "frames": frame_count, "duration": round(frame_count / fps, 4),
        "width": view.width, "height": view.height,
        "facing_deg": performance["facing_deg"], "speed": performance["speed"], "posture": performance.get("posture"),
        "source": performance["source"], "mocap_clip": performance.get("mocap_clip"), "mirror": performance.get("mirror"),
        "seed": performance["seed"], "performance_id": performance["performance_id"],
        "plan_digest": extra["digest"],
        "files": {"video": f"videos/{clip}.mp4", "skeleton": f"skeletons/{clip}.skeleton", "tracks": f"tracks/{clip}.json"},
    }
    for key in ("next_activity", "forecast_cut", "routine_segments"):
        if key in extra:
            meta[key] = extra[key]
    atomic_write_json(root / "meta" / f"{clip}.json", meta)
    return meta


def render_task(task: tuple[str, dict]) -> list[dict]:
    """Worker entry: render one performance from each of its cameras, write its clips, return metas."""
    root_text, performance = task
    root = Path(root_text)
    digest = _plan_digest(performance)
    existing = [_valid_clip(root, clip, digest) for clip in clip_ids_of(performance)]
    if all(existing):
        return existing
    from llavidal.sim.camera import CameraRig
    from llavidal.sim.render import film, perform

    stage = _stage()
    result = perform(stage, performance)
    metas = []
    for rig_json in performance["cameras"]:
        rig = CameraRig(number=rig_json["camera"], **{k: v for k, v in rig_json.items() if k != "camera"})
        footage = film(stage, result, rig, performance["size"])
        clip = clip_id(performance, rig.number)
        metas.append(_write_clip(root, clip, performance, footage, result.num_frames, result.segments, result.objects,
                                 rig_json, {"digest": digest}))
        if performance["kind"] == "routine":
            for cut in forecast_cuts(performance):
                kept = [dict(s) for s in result.segments[:cut]]
                # cut where the k-th activity's own motion ends: no frame of the blend into the next one
                count = min(int(result.activity_ends[cut - 1] * result.fps) + 1, result.num_frames)
                kept[-1]["end"] = round(count / result.fps, 4)
                metas.append(_write_clip(
                    root, clip_id(performance, rig.number, cut), performance, footage, count, kept, result.objects,
                    rig_json, {"digest": digest, "kind": "forecast", "next_activity": result.segments[cut]["activity"],
                               "forecast_cut": cut, "routine_segments": [s["activity"] for s in result.segments]}))
    return metas


def _remove_stale_clips(root: Path, keep: set[str]) -> None:
    """Delete clips of an earlier plan (another preset or seed in the same folder), so the folder holds
    exactly this world."""
    for sub, suffix in (("videos", ".mp4"), ("skeletons", ".skeleton"), ("tracks", ".json"), ("meta", ".json")):
        for path in (root / sub).glob(f"*{suffix}"):
            name = path.name[: -len(suffix)]
            try:
                parse_clip_id(name)
            except ValueError:
                continue  # not ours: leave it
            if name not in keep:
                path.unlink()


def _estimated_cost(performance: dict) -> float:
    return len(performance["cameras"]) * (len(performance["segments"]) * 3.0 + (2 if performance["kind"] == "routine" else 0))


# ---------------------------------------------------------------------------------------------- main
def generate_world(out_dir: str | os.PathLike, preset: str = "small", seed: int = 0, workers: int | None = None,
                   preview: bool = False, progress: bool = True) -> Path:
    """Generate (or resume) a world under ``out_dir`` and return its path.

    ``preset`` is one of :data:`llavidal.sim.plan.PRESETS` ("tiny", "small", "medium"); ``workers``
    defaults to the number of CPU cores. With ``preview`` a contact sheet is written to
    ``out_dir/preview.png``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = Path(out_dir)
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = PRESETS[preset]
    plan = make_plan(config, seed)
    performances = plan["performances"]
    workers = max(1, int(workers or os.cpu_count() or 1))
    started = time.perf_counter()
    tasks = sorted(((str(root), p) for p in performances), key=lambda t: -_estimated_cost(t[1]))
    metas: list[dict] = []
    bar = _progress(len(performances), progress, f"synth {preset}")
    if workers == 1:
        for task in tasks:
            metas.extend(render_task(task))
            bar.update(1)
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with context.Pool(workers) as pool:
            for result in pool.imap_unordered(render_task, tasks, chunksize=1):
                metas.extend(result)
                bar.update(1)
    bar.close()
    metas.sort(key=lambda m: m["clip_id"])
    _remove_stale_clips(root, {m["clip_id"] for m in metas})

    from llavidal.sim.annotate import write_annotations

    summary = write_annotations(root, metas, seed)
    world = {
        "name": "llavidal embedded ADL world", "package_version": __version__, "preset": config.to_json(),
        "seed": seed,
        "counts": {"clips": len(metas), "performances": len(performances),
                   "single": sum(m["kind"] == "single" for m in metas),
                   "routines": sum(m["kind"] == "routine" for m in metas),
                   "forecast": sum(m["kind"] == "forecast" for m in metas),
                   "frames": sum(m["frames"] for m in metas), **summary},
        "subjects": plan["subjects"], "setups": plan["setups"],
        "activities": [a.to_json() for a in ACTIVITIES],
        "layout": {"videos": "videos/{clip_id}.mp4", "skeletons": "skeletons/{clip_id}.skeleton",
                   "tracks": "tracks/{clip_id}.json", "meta": "meta/{clip_id}.json", "annotations": "annotations/"},
    }
    atomic_write_json(root / "world.json", world)
    if preview:
        from llavidal.sim.preview import contact_sheet

        contact_sheet(root, root / "preview.png")
    elapsed = time.perf_counter() - started
    if progress:
        print(f"world: {len(metas)} clips ({world['counts']['frames']} frames) in {elapsed:.1f} s -> {root}")
    return root


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, description: str):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="perf", dynamic_ncols=True)


__all__ = ["generate_world", "render_task", "clip_ids_of"]
