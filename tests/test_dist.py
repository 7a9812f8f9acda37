"""The one rank helper: shards, per-rank files, and the idempotent merge of their outputs."""

from __future__ import annotations

import json

from llavidal.data.feature_store import FeatureManifest, merge_rank_manifests, rank_manifest_name
from llavidal.utils import dist
from llavidal.utils.io import append_jsonl, read_jsonl


def write_rank(out, shard_rank, ids, failed_ids=()):
    for sample_id in ids:
        append_jsonl(dist.rank_path(out / "preds.jsonl", shard_rank), {"id": sample_id, "status": "ok", "rank": shard_rank})
    for sample_id in failed_ids:
        append_jsonl(dist.rank_path(out / "failed.jsonl", shard_rank), {"id": sample_id, "error": "broken"})
    dist.mark_done(out / "preds.jsonl", shard_rank)


def manifest(**extra):
    return FeatureManifest(modality="pose", extractor="test", feature_dim=4, shape=[2, 4], dtype="float32", **extra)


def test_shards_cover_every_item_once():
    items = list(range(11))
    shards = [dist.shard(items, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == items and shards[0] == [0, 3, 6, 9]


def test_two_ranks_merged_rerun_idempotent(tmp_path):
    ids = [f"s{i}" for i in range(12)]  # more than 10 ranks' worth of names sort wrongly as text; ranks sort by number
    write_rank(tmp_path, 1, dist.shard(ids, 1, 2), failed_ids=["s3"])
    write_rank(tmp_path, 0, dist.shard(ids, 0, 2), failed_ids=["s0"])
    for r in (0, 1):
        manifest().save(tmp_path, rank_manifest_name(r))
    assert dist.pending_ranks(tmp_path / "preds.jsonl", 2) == []
    assert [p.name for p in dist.rank_files(tmp_path / "preds.jsonl")] == ["preds.rank0.jsonl", "preds.rank1.jsonl"]

    def merge():
        dist.merge_rank_outputs([tmp_path / "preds.jsonl"], key="id", order=ids)
        dist.merge_rank_outputs([tmp_path / "failed.jsonl"])
        merge_rank_manifests(tmp_path)

    merge()
    assert [row["id"] for row in read_jsonl(tmp_path / "preds.jsonl")] == ids  # record order, not rank order
    assert [row["id"] for row in read_jsonl(tmp_path / "failed.jsonl")] == ["s0", "s3"]  # rank 0's, then rank 1's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed.jsonl", "manifest.json", "preds.jsonl"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    merge()  # nothing left to merge: nothing changes
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    # A merge killed after writing the merged files, before removing the rank files: the rerun gives the same files.
    write_rank(tmp_path, 0, ["s0"], failed_ids=["s0"])
    merge()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_leftovers_of_a_run_without_rendezvous_are_merged_by_a_later_single_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in ("1", "0"):  # ranks launched without torchrun: no process group, nothing merged
        monkeypatch.setenv("RANK", r)
        with dist.process_group() as group:
            assert not group.active and group.world_size == 2 and group.sum_counts([3, 1]) == [3, 1]
            group.barrier()  # returns at once
            write_rank(tmp_path, group.rank, [f"r{r}a", f"r{r}b"], failed_ids=[f"r{r}b"])
            manifest().save(tmp_path, rank_manifest_name(group.rank))
    assert not (tmp_path / "preds.jsonl").exists() and not (tmp_path / "manifest.json").exists()

    # Earlier merged rows stay (older); a rank's newer row for the same id wins.
    append_jsonl(tmp_path / "preds.jsonl", {"id": "r1a", "status": "generation_error"})
    append_jsonl(tmp_path / "preds.jsonl", {"id": "old", "status": "ok"})
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    with dist.process_group() as group:
        assert not group.active and group.is_main
        dist.merge_rank_outputs([tmp_path / "preds.jsonl"], key="id")
        dist.merge_rank_outputs([tmp_path / "failed.jsonl"])
        merge_rank_manifests(tmp_path)
    rows = read_jsonl(tmp_path / "preds.jsonl")
    assert [row["id"] for row in rows] == ["r1a", "old", "r0a", "r0b", "r1b"]
    assert rows[0]["status"] == "ok" and rows[0]["rank"] == 1
    assert [row["id"] for row in read_jsonl(tmp_path / "failed.jsonl")] == ["r0b", "r1b"]
    assert FeatureManifest.load(tmp_path).same_recipe(manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed.jsonl", "manifest.json", "preds.jsonl"]


def test_empty_merge_and_stale_rank_files(tmp_path):
    # No failures anywhere: no failed.jsonl is created; an empty predictions file is, when asked for.
    dist.merge_rank_outputs([tmp_path / "failed.jsonl"])
    dist.merge_rank_outputs([tmp_path / "preds.jsonl"], key="id", write_empty=True)
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"] and read_jsonl(tmp_path / "preds.jsonl") == []
    # Files of ranks beyond this run's world size are an earlier, larger run's leftovers.
    for r in (0, 1, 2, 11):
        dist.rank_path(tmp_path / "failed.jsonl", r).write_text(json.dumps({"id": r}) + "\n")
    dist.remove_stale_rank_files(tmp_path / "failed.jsonl", 2)
    assert [p.name for p in dist.rank_files(tmp_path / "failed.jsonl")] == ["failed.rank0.jsonl", "failed.rank1.jsonl"]


TORCHRUN_INFERENCE = '''
import sys
from llavidal.eval.records import EvalRecord
from llavidal.eval.run_inference import run_inference
from llavidal.utils import dist


class Engine:
    def generate(self, requests, **settings):
        return [f"{r.request_id} by rank {dist.rank()}" for r in requests]


class Request:
    def __init__(self, question, features, history, request_id):
        self.request_id = request_id


records = [EvalRecord(id=f"r{i}", video=f"v{i}.mp4", question="What happens?") for i in range(7)]
summary = run_inference(Engine(), records, {}, sys.argv[1], allow_text_only=True, request_factory=Request,
                        show_progress=False, merge_timeout=120)
print(f"rank {dist.rank()}: {summary.generated} generated, merged {summary.merged}")
'''


def test_torchrun_ranks_meet_at_a_barrier_and_rank_0_merges(tmp_path):
    """Two gloo ranks (CPU) share the records; rank 0 merges after the barrier, with no marker files or polling."""
    import os
    import subprocess
    import sys

    script = tmp_path / "infer.py"
    script.write_text(TORCHRUN_INFERENCE)
    out = tmp_path / "preds.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "rank 0: 4 generated, merged True" in result.stdout and "rank 1: 3 generated, merged False" in result.stdout
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(7)]
    assert [row["prediction"].split()[-1] for row in rows] == ["0", "1"] * 3 + ["0"]  # round-robin shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infer.py", "preds.jsonl"]
