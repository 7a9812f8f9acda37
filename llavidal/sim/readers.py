"""Readers of the embedded world's output (``llavidal synth --out DIR``) for the stages that train on it.

    samples = load_world_samples("world")                  # pose-text pairs for 'llavidal pose-pretrain'
    text = activity_text(meta)                             # a clip's activity description (meta/{id}.json)
    windows = segment_windows(meta)                        # [((start_frame, end_frame), text), ...] of a routine

The world is one source of data among others: library code (``llavidal.features``) takes samples and
never imports this package; commands that accept ``--world_dir`` call these readers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from llavidal.sim.activities import BY_NAME

logger = logging.getLogger(__name__)


def activity_text(meta: dict) -> str:
    """The description of a world clip's activity (or its routine's segments, in order)."""
    if isinstance(meta.get("description"), str) and meta["description"].strip():
        return meta["description"].strip()
    activity = meta.get("activity")
    if isinstance(activity, dict):
        for key in ("description", "text", "name"):
            if isinstance(activity.get(key), str):
                return _sentence(activity[key])
    if isinstance(activity, str) and activity.strip():
        return _describe_activity_name(activity)
    segments = meta.get("segments") or meta.get("timeline")
    if isinstance(segments, list) and segments:
        names = [activity_text(s) if isinstance(s, dict) else _describe_activity_name(str(s)) for s in segments]
        names = [n.rstrip(".") for n in names]
        return ", then ".join([names[0]] + [n[:1].lower() + n[1:] for n in names[1:]]) + "."
    raise ValueError("no 'activity', 'description' or 'segments' field")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def _describe_activity_name(name: str) -> str:
    """An activity name as a sentence, using the world's own description when it has one."""
    entry = BY_NAME.get(name)
    for key in ("description", "text", "caption"):
        value = entry.get(key) if isinstance(entry, dict) else getattr(entry, key, None)
        if isinstance(value, str) and value.strip():
            return _sentence(value)
    return f"A person {name.replace('_', ' ').strip()}."


def segment_windows(meta: dict, frames: int | None = None) -> list[tuple[tuple[int, int], str]]:
    """``[((start_frame, end_frame), text), ...]`` for the segments of a world clip's meta (times in
    seconds at ``meta['fps']``), clipped to ``frames`` (default ``meta['frames']``); segments that keep
    no frame are dropped."""
    fps = float(meta.get("fps") or 0)
    segments = meta.get("segments") or []
    if fps <= 0 or not segments:
        raise ValueError("needs 'fps' and 'segments' (with start/end seconds) for segment windows")
    frames = int(frames if frames is not None else meta.get("frames") or 0) or None
    windows = []
    for number, segment in enumerate(segments):
        try:
            start, end = int(round(float(segment["start"]) * fps)), int(round(float(segment["end"]) * fps))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"segment {number} needs numeric 'start' and 'end' (seconds)") from None
        if frames is not None:
            start, end = max(0, min(start, frames)), max(0, min(end, frames))
        if end > start:
            windows.append(((start, end), activity_text(segment)))
    return windows


DEFAULT_PROTOCOL = "cross_subject"
"""The world's protocol whose splits ``split=`` selects by default (the quickstart's)."""


def world_split_ids(world_dir: str | os.PathLike, split: str, protocol: str = DEFAULT_PROTOCOL) -> set[str]:
    """Clip ids of one split (``train``, ``val``, ``test``) of a protocol in ``annotations/splits.json``."""
    file = Path(world_dir) / "annotations" / "splits.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found, so the world's {split} split is unknown; rerun 'llavidal synth' "
                                "for a world with annotations, or pass --split all to use every clip")
    splits = json.loads(file.read_text(encoding="utf-8"))
    if protocol not in splits:
        raise ValueError(f"{file}: no protocol {protocol!r}; it has {sorted(splits)}")
    names = sorted(k for k, v in splits[protocol].items() if isinstance(v, list))
    if split not in names:
        raise ValueError(f"{file}: protocol {protocol!r} has no split {split!r}; use one of {names} or all")
    return {str(clip_id) for clip_id in splits[protocol][split]}


def world_pose_text_pairs(world_dir: str | os.PathLike, include_routines: bool = False,
                          routine_segments: bool = False, split: str | None = None,
                          protocol: str = DEFAULT_PROTOCOL) -> list[dict]:
    """Pose-text pairs of the world, in the pair-file format of ``llavidal pose-pretrain --data``:
    ``{"id", "skeleton", "text"}`` (plus ``start_frame``/``end_frame`` for a routine's segment).

    ``skeletons/{id}.skeleton`` with the text of ``meta/{id}.json``; single-activity clips only, unless
    ``include_routines`` (then a routine's text lists its activities in order) or ``routine_segments``
    (then each segment of a routine is a pair of its own: the segment's frames, encoded within the whole
    clip, with the segment's activity text). ``split`` (``train``, ``val``, ``test`` of ``protocol`` in
    ``annotations/splits.json``) keeps that split's clips only; None or ``all`` keeps every clip."""
    world_dir = Path(world_dir)
    keep = world_split_ids(world_dir, split, protocol) if split and split != "all" else None
    skeleton_dir, meta_dir = world_dir / "skeletons", world_dir / "meta"
    if not skeleton_dir.is_dir() or not meta_dir.is_dir():
        raise FileNotFoundError(f"{world_dir}: expected skeletons/ and meta/ (the output of 'llavidal synth')")
    pairs: list[dict] = []
    for skeleton in sorted(skeleton_dir.glob("*.skeleton")):
        if keep is not None and skeleton.stem not in keep:
            continue
        meta_path = meta_dir / f"{skeleton.stem}.json"
        if not meta_path.is_file():
            logger.warning("%s: no %s; skipped", skeleton, meta_path.name)
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            single = bool(meta.get("activity")) or len(meta.get("segments") or []) == 1
            if not single and routine_segments:
                for number, ((start, end), text) in enumerate(segment_windows(meta)):
                    pairs.append({"id": f"{skeleton.stem}#{number}", "skeleton": skeleton, "text": text,
                                  "start_frame": start, "end_frame": end})
                continue
            if not single and not include_routines:
                continue
            text = activity_text(meta)
        except (ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta_path}: cannot get an activity description ({err})") from None
        pairs.append({"id": skeleton.stem, "skeleton": skeleton, "text": text})
    if not pairs:
        where = f" of the {split} split ({protocol})" if keep is not None else ""
        raise FileNotFoundError(f"{skeleton_dir}: no .skeleton files{where} with meta/ records")
    return pairs


def load_world_samples(world_dir: str | os.PathLike, include_routines: bool = False,
                       routine_segments: bool = False, split: str | None = None,
                       protocol: str = DEFAULT_PROTOCOL) -> list:
    """:func:`world_pose_text_pairs` as :class:`llavidal.features.pose.pretrain.PoseTextSample` objects."""
    from llavidal.features.pose.pretrain import PoseTextSample  # torch: only for callers that train

    return [
        PoseTextSample(pair["id"], pair["skeleton"], pair["text"],
                       (pair["start_frame"], pair["end_frame"]) if "start_frame" in pair else None)
        for pair in world_pose_text_pairs(world_dir, include_routines, routine_segments, split, protocol)
    ]
