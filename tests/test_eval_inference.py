"""The inference runner: batched, resumable, sharded, missing features recorded; and the real engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llavidal.data.feature_store import save_features, save_pickle_features
from llavidal.eval.records import EvalRecord, load_records
from llavidal.eval.run_inference import completed_ids, run_inference, shard_path
from llavidal.eval.tasks import load_benchmark
from llavidal.model.modality import ModalityRegistry
from llavidal.utils.io import read_jsonl

SIX = {
    "A": "drink water",
    "B": "eat food",
    "C": "read a book",
    "D": "make a phone call",
    "E": "sit down",
    "F": "stand up",
}
DIMS = dict(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)


class FakeEngine:
    """Same generate signature as InferenceEngine; answers name what it was given."""

    def __init__(self, names=("video", "pose", "object"), fail_on: str = ""):
        self.modalities = ModalityRegistry.default(list(names), **DIMS)
        self.calls: list[int] = []
        self.fail_on = fail_on

    def generate(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, batch_size=8):
        self.calls.append(len(requests))
        if any(r.request_id == self.fail_on for r in requests):
            raise RuntimeError("scripted failure")
        return [f"{r.request_id}:{'+'.join(sorted(r.features))}:{r.question.split()[0]}" for r in requests]


def make_request(question, features, history, request_id):
    return {"question": question, "features": features, "history": history, "request_id": request_id}


class Req:
    def __init__(self, question, features, history, request_id):
        self.question, self.features, self.history, self.request_id = question, features, history, request_id


def mcq_records(n=5):
    return [
        EvalRecord(
            id=f"r{i}",
            video=f"clip{i}.mp4",
            question=f"Q{i} what next?",
            choices=dict(SIX),
            answer_letter="A",
            answer=SIX["A"],
            task="t",
        )
        for i in range(n)
    ]


@pytest.fixture
def folders(tmp_path):
    video, pose = tmp_path / "video", tmp_path / "pose"
    video.mkdir()
    pose.mkdir()
    for i in range(5):
        if i % 2:
            save_pickle_features(video / f"clip{i}.pkl", np.zeros((6, 16), np.float16))  # upstream pickle
        else:
            save_features(video / f"clip{i}.safetensors", np.zeros((6, 16), np.float32))
        if i != 3:  # clip3 has no pose file
            save_features(pose / f"clip{i}_pose.safetensors", np.zeros((4, 12), np.float32))
    return {"video": video, "pose": pose}


def test_batched_resumable_and_missing_recorded(tmp_path, folders):
    spec = load_benchmark("adlmcq_forecasting")
    engine = FakeEngine()
    out = tmp_path / "preds.jsonl"
    summary = run_inference(
        engine, mcq_records(), folders, out, benchmark=spec, batch_size=2, request_factory=Req, show_progress=False
    )
    assert (summary.generated, summary.missing_features, summary.errors) == (4, 1, 0)
    assert engine.calls == [2, 1, 1]  # batches of records; r3 is not sent to the engine at all
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert list(rows) == [f"r{i}" for i in range(5)]  # compacted, in record order
    assert rows["r3"]["status"] == "missing_features" and rows["r3"]["missing"] == ["pose"]
    assert rows["r3"]["prediction"] is None
    assert rows["r0"]["prediction"].startswith("r0:pose+video:Q0")
    assert rows["r0"]["prompts"]["main"].endswith(
        "Choices are (A) drink water (B) eat food (C) read a book (D) make a phone call (E) sit down (F) stand up"
    )
    assert rows["r0"]["benchmark"] == "adlmcq_forecasting" and rows["r0"]["modalities"] == ["pose", "video"]

    # A rerun skips done ids; after the missing file appears, only that record is generated.
    engine.calls.clear()
    again = run_inference(engine, mcq_records(), folders, out, benchmark=spec, request_factory=Req, show_progress=False)
    assert (again.skipped_done, again.generated, again.missing_features) == (4, 0, 1) and engine.calls == []
    save_features(folders["pose"] / "clip3_pose.safetensors", np.zeros((4, 12), np.float32))
    third = run_inference(engine, mcq_records(), folders, out, benchmark=spec, request_factory=Req, show_progress=False)
    assert (third.generated, third.missing_features) == (1, 0) and engine.calls == [1]
    assert completed_ids(out) == {f"r{i}" for i in range(5)}
    assert len(read_jsonl(out)) == 5

    # Weights trained again (another fingerprint): every record is answered again, and the new rows are kept.
    engine.weights_sha256 = "retrained"
    engine.calls.clear()
    fourth = run_inference(engine, mcq_records(), folders, out, benchmark=spec, request_factory=Req, show_progress=False)
    assert (fourth.skipped_done, fourth.generated) == (0, 5) and sum(engine.calls) == 5
    assert {row["generation"]["weights_sha256"] for row in read_jsonl(out)} == {"retrained"}


def test_torn_line_from_a_killed_run_is_redone(tmp_path, folders):
    out = tmp_path / "preds.jsonl"
    engine = FakeEngine()
    run_inference(engine, mcq_records(2), folders, out, request_factory=Req, show_progress=False)
    with open(out, "a") as handle:
        handle.write('{"id": "r2", "status": "o')  # killed mid-write
    summary = run_inference(engine, mcq_records(3), folders, out, request_factory=Req, show_progress=False)
    assert (summary.skipped_done, summary.generated) == (2, 1)
    assert [row["id"] for row in read_jsonl(out)] == ["r0", "r1", "r2"]


def test_sharded_over_ranks_then_merged(tmp_path, folders):
    out = tmp_path / "preds.jsonl"
    records = mcq_records()
    rank1 = run_inference(
        FakeEngine(), records, folders, out, shard_rank=1, num_shards=2, request_factory=Req, show_progress=False
    )
    assert rank1.total == 2 and shard_path(out, 1).exists() and not out.exists()
    rank0 = run_inference(
        FakeEngine(),
        records,
        folders,
        out,
        shard_rank=0,
        num_shards=2,
        request_factory=Req,
        merge_timeout=10,
        show_progress=False,
    )
    assert rank0.total == 3 and rank0.merged
    assert [row["id"] for row in read_jsonl(out)] == [r.id for r in records]
    assert not list(tmp_path.glob("preds.rank*"))


def test_generation_errors_are_isolated_per_record(tmp_path, folders):
    out = tmp_path / "preds.jsonl"
    summary = run_inference(
        FakeEngine(fail_on="r1"), mcq_records(3), folders, out, batch_size=3, request_factory=Req, show_progress=False
    )
    assert (summary.generated, summary.errors) == (2, 1)
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert rows["r1"]["status"] == "generation_error" and "scripted failure" in rows["r1"]["error"]


def test_refuses_to_run_blind_or_with_unknown_modalities(tmp_path, folders):
    with pytest.raises(ValueError, match="without seeing the video"):
        run_inference(FakeEngine(), mcq_records(), {"pose": folders["pose"]}, tmp_path / "p.jsonl", request_factory=Req)
    with pytest.raises(ValueError, match="no 'pose' modality"):
        run_inference(FakeEngine(["video"]), mcq_records(), folders, tmp_path / "p.jsonl", request_factory=Req)
    # Optional modalities may be absent; a corrupt file is an error row naming the record.
    (folders["video"] / "clip0.safetensors").write_bytes(b"not a tensor file")
    summary = run_inference(
        FakeEngine(),
        mcq_records(4),
        folders,
        tmp_path / "p.jsonl",
        optional_modalities=["pose"],
        request_factory=Req,
        show_progress=False,
    )
    assert (summary.generated, summary.errors, summary.missing_features) == (3, 1, 0)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "p.jsonl")}
    assert "record 'r0'" in rows["r0"]["error"] and rows["r3"]["modalities"] == ["video"]


def test_consistency_questions_are_asked_once_each(tmp_path, folders):
    path = tmp_path / "desc.json"
    path.write_text(
        json.dumps(
            [
                {
                    "video_name": "clip0.mp4",
                    "Q": "Describe it.",
                    "A": "x",
                    "cons_Q1": "What happens?",
                    "cons_Q2": "Describe it.",
                }
            ]
        )
    )
    spec = load_benchmark("adl_descriptions")
    engine = FakeEngine()
    run_inference(
        engine,
        load_records(path, "open"),
        folders,
        tmp_path / "d.jsonl",
        benchmark=spec,
        request_factory=Req,
        show_progress=False,
    )
    row = read_jsonl(tmp_path / "d.jsonl")[0]
    assert engine.calls == [2]  # "Describe it." asked once, shared by main and cons2
    assert row["outputs"]["main"] == row["outputs"]["cons2"] != row["outputs"]["cons1"]


def test_real_engine_through_the_cli(tmp_path):
    """llavidal eval infer with a tiny real model saved by the model code, then llavidal eval mcq."""
    import torch

    from llavidal.eval.commands import main as eval_main
    from llavidal.model.builder import build_model
    from llavidal.testing import tiny_causal_lm_dir

    torch.set_num_threads(1)
    base = tiny_causal_lm_dir(tmp_path / "llm", "llama")
    model, _ = build_model(base, ModalityRegistry.default(["video", "pose"], **DIMS), template="chat")
    model.save_pretrained(tmp_path / "weights")
    video, pose = tmp_path / "video", tmp_path / "pose"
    video.mkdir()
    pose.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        save_pickle_features(video / f"v{i}.pkl", rng.standard_normal((6, 16)).astype(np.float16))
        if i != 2:
            save_features(pose / f"v{i}_pose.safetensors", rng.standard_normal((4, 12)).astype(np.float32))
        records.append(
            {
                "video_filename": f"v{i}.mp4",
                "question": "What happens next?",
                "answer_choices": dict(SIX),
                "ground_truth_letter": "BCF"[i],
            }
        )
    (tmp_path / "mcq.json").write_text(json.dumps(records))
    out = tmp_path / "preds.jsonl"
    args = [
        "infer",
        "--benchmark",
        "adlmcq_forecasting",
        "--records",
        str(tmp_path / "mcq.json"),
        "--weights",
        str(tmp_path / "weights"),
        "--video_folder",
        str(video),
        "--pose_folder",
        str(pose),
        "--output",
        str(out),
        "--max_new_tokens",
        "4",
        "--batch_size",
        "2",
        "--device",
        "cpu",
    ]
    assert eval_main(args) == 0
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert rows["v0"]["status"] == rows["v1"]["status"] == "ok" and isinstance(rows["v0"]["prediction"], str)
    assert rows["v2"]["status"] == "missing_features"
    from llavidal.data.feature_store import weights_fingerprint  # the rows name the weights that answered

    assert rows["v0"]["generation"]["weights_sha256"] == weights_fingerprint(tmp_path / "weights")
    assert (
        eval_main(
            [
                "mcq",
                "--predictions",
                str(out),
                "--output_dir",
                str(tmp_path / "res"),
                "--benchmark",
                "adlmcq_forecasting",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "res" / "adlmcq_forecasting_results.json").read_text())
    assert result["metrics"]["n"] == 3 and result["missing_reasons"].get("missing_features") == 1
    for name in ("report.md", "report.json", "report.png", "gallery.html"):
        assert (tmp_path / "res" / name).is_file()
