"""Two torchrun ranks (gloo, CPU) write the same features as one process, and one merged manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from video_testutils import save_tiny_clip, write_synthetic_video  # noqa: E402

from llavidal.data.feature_store import FeatureManifest, load_feature_file  # noqa: E402
from llavidal.features.video import extract_video_features  # noqa: E402

pytest.importorskip("av")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "save_spatio_temporal_clip_features.py"


def test_two_ranks_write_the_same_files_as_one_process(tmp_path):
    videos = tmp_path / "videos"
    for index in range(7):
        frames = [12, 30, 45, 110, 25, 60, 18][index]  # uneven lengths, so the two runs batch differently
        write_synthetic_video(videos / f"part{index % 2}" / f"v{index}.mp4", frames, 120, 90, seed=index)
    (videos / "part1" / "broken.mp4").write_bytes(b"")
    clip = save_tiny_clip(tmp_path / "tiny_clip")

    single = tmp_path / "single"
    summary = extract_video_features(videos, single, str(clip), batch_size=32, workers=0, progress=False)
    assert (summary.done, summary.failed) == (7, 1)

    ranks = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
         "--video_dir_path", str(videos), "--clip_feat_path", str(ranks), "--encoder", str(clip),
         "--batch_size", "32", "--workers", "1", "--progress", "False"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0  # the empty file failed on one of the ranks
    assert "7 done, 0 skipped, 1 failed of 8" in proc.stdout, proc.stdout + proc.stderr[-3000:]

    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in ranks.iterdir())  # no manifest.rank*.json or failed.rank*.jsonl left
    assert "manifest.json" in names and "failed.jsonl" in names
    for path in single.glob("*.safetensors"):
        np.testing.assert_array_equal(load_feature_file(path), load_feature_file(ranks / path.name))  # bitwise
    assert FeatureManifest.load(single).same_recipe(FeatureManifest.load(ranks))
    failures = [json.loads(line) for line in (ranks / "failed.jsonl").read_text().splitlines()]
    assert [f["video_id"] for f in failures] == ["broken"]
