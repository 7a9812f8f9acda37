"""Unit tests of the world generator's pieces that need no rendering."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from llavidal.sim import quat
from llavidal.sim.activities import ACTIVITIES, PROCEDURAL, TRANSITIONS, confusable_with
from llavidal.sim.annotate import forecasting_distractors, split_of
from llavidal.sim.plan import PRESETS, _apply, _State, clip_id, feasible, make_plan, parse_clip_id, sample_routine


def test_quaternion_helpers_match_rotation_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = quat.normalize(rng.normal(size=4))
        vector = rng.normal(size=3)
        matrix = quat.to_matrix(q)
        assert np.allclose(quat.rotate(q, vector), matrix @ vector)
        assert np.allclose(quat.to_matrix(quat.from_matrix(matrix)), matrix)
        other = quat.normalize(rng.normal(size=4))
        assert np.allclose(quat.to_matrix(quat.multiply(q, other)), matrix @ quat.to_matrix(other))
        assert np.allclose(quat.mirror_z(quat.mirror_z(q)), q)
        # mirroring through z: M R M with M = diag(1, 1, -1)
        mirror = np.diag([1.0, 1.0, -1.0])
        assert np.allclose(quat.to_matrix(quat.mirror_z(q)), mirror @ matrix @ mirror)
    a, b = quat.axis_angle("z", 0.2), quat.axis_angle("z", 1.0)
    assert np.allclose(quat.slerp(a, b, 0.5), quat.axis_angle("z", 0.6))


def test_plan_is_deterministic_and_seed_dependent():
    preset = PRESETS["small"]
    first = json.dumps(make_plan(preset, 0), sort_keys=True)
    assert first == json.dumps(make_plan(preset, 0), sort_keys=True)
    assert first != json.dumps(make_plan(preset, 1), sort_keys=True)


@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_plan_ids_are_unique_and_parse(preset):
    plan = make_plan(PRESETS[preset], 0)
    ids = [p["performance_id"] for p in plan["performances"]]
    assert len(ids) == len(set(ids))
    for performance in plan["performances"]:
        for camera in performance["cameras"]:
            parsed = parse_clip_id(clip_id(performance, camera["camera"]))
            assert parsed["camera"] == camera["camera"] and parsed["subject"] == performance["subject"]
    names = {s["activity"] for p in plan["performances"] if p["kind"] == "single" for s in p["segments"]}
    assert names == {a.name for a in ACTIVITIES}


def test_routines_are_feasible_and_follow_the_table():
    rng = np.random.default_rng(0)
    followed = total = 0
    for _ in range(300):
        segments, table_object = sample_routine(rng, int(rng.integers(2, 5)), noise=0.15)
        state = _State()
        previous = "start"
        for segment in segments:
            assert feasible(segment["activity"], state), segments
            followed += segment["activity"] in TRANSITIONS.get(previous, {})
            total += 1
            _apply(segment["activity"], state, segment["object"])
            previous = segment["activity"]
        if any(s["activity"] == "pick_up" for s in segments):
            assert table_object is not None
    assert 0.7 < followed / total < 0.98  # mostly the table, with noise


def test_forecasting_distractors_exclude_the_truth_and_likely_options():
    for truth in PROCEDURAL:
        meta = {"next_activity": truth,
                "segments": [{"activity": "pick_up", "objects": ["mug", "table"]}]}
        options = forecasting_distractors(meta)
        assert truth not in options and not (confusable_with(truth) & set(options))
        assert "drink" not in options or truth == "drink"
    meta = {"next_activity": "put_down", "segments": [{"activity": "pick_up", "objects": ["mug", "table"]}]}
    assert "drink" not in forecasting_distractors(meta)  # possible and likely: never a distractor


def test_splits_follow_ntu_protocols():
    def meta(clip):
        return {"clip_id": clip, "performance_id": clip[:4] + clip[8:]}

    assert split_of(meta("S001C002P003R001A001"), "cross_subject") == "test"
    assert split_of(meta("S001C002P004R001A001"), "cross_subject") == "val"
    assert split_of(meta("S001C002P001R001A001"), "cross_subject") == "train"
    assert split_of(meta("S001C001P001R001A001"), "cross_view") == "test"
    assert split_of(meta("S001C002P001R001A001"), "cross_view") in ("train", "val")


def test_silenced_hides_c_level_output(capfd):
    from llavidal.sim.bullet import silenced

    with silenced():
        os.write(1, b"noise on fd 1\n")
        os.write(2, b"noise on fd 2\n")
    print("visible")
    out, err = capfd.readouterr()
    assert out == "visible\n" and err == ""


def test_video_writer_is_deterministic(tmp_path):
    pytest.importorskip("av")
    from llavidal.sim.video import read_mp4, write_mp4

    frames = np.zeros((12, 64, 64, 3), dtype=np.uint8)
    for t in range(12):
        frames[t, 10:30, 5 + 3 * t:20 + 3 * t] = (200, 40, 40)
    write_mp4(tmp_path / "a.mp4", frames, 10)
    write_mp4(tmp_path / "b.mp4", frames, 10)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    # Textured frames, encoded several times in one process: each encode must not depend on the ones before
    # (with x264's mbtree on, the 2nd and 4th encodes of such frames differed from the 1st).
    textured = (np.random.default_rng(0).random((24, 112, 112, 3)) * 60).astype(np.uint8) + frames[:1, :1, :1] // 4
    textured[:, 30:80, 20:60] = (180, 90, 30)
    for t in range(24):
        textured[t, 40:50, 2 * t:2 * t + 20] = (20, 200, 20)
    encodes = []
    for k in range(4):
        write_mp4(tmp_path / f"t{k}.mp4", textured, 15)
        encodes.append((tmp_path / f"t{k}.mp4").read_bytes())
    assert all(e == encodes[0] for e in encodes)
    decoded = read_mp4(tmp_path / "a.mp4")
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 4
