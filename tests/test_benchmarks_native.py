"""PLLaVA's benchmarks in their native formats (committed tiny fixtures in tests/fixtures/benchmarks/, the
upstream shapes): MVBench, VCG bench, zero-shot QA pairs and recaption, each scored with a hand-checked result
(the judge is the scripted fake OpenAI server: markers in a prediction choose the judge's reply)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_openai_server import PROXY_VARIABLES, FakeOpenAIServer

from llavidal.eval.judges.openai_judge import OpenAIJudge
from llavidal.eval.mcq import wilson_interval
from llavidal.eval.predictions import Prediction, load_predictions
from llavidal.eval.records import load_records
from llavidal.eval.run_inference import run_inference
from llavidal.eval.tasks import load_task

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
MVBENCH_TASKS = [
    "action_sequence", "action_prediction", "action_antonym", "fine_grained_action", "unexpected_action",
    "object_existence", "object_interaction", "object_shuffle", "moving_direction", "action_localization",
    "scene_transition", "action_count", "moving_count", "moving_attribute", "state_change", "fine_grained_pose",
    "character_order", "egocentric_navigation", "episodic_reasoning", "counterfactual_inference",
]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def judge(tmp_path):
    with FakeOpenAIServer(max_lifetime=60) as server:
        yield OpenAIJudge(model="judge-model-2024-01-01", base_url=server.url, cache_path=tmp_path / "cache.sqlite",
                          backoff_base=0.01, backoff_max=0.05, timeout=5.0, max_retries=1, concurrency=4)


def test_mvbench_twenty_task_files_prompt_and_first_letter_accuracy():
    spec = load_task("mvbench")
    assert spec.tasks == MVBENCH_TASKS
    records = spec.load_records(FIXTURES / "MVBench" / "json")
    assert sorted({r.task for r in records}) == sorted(MVBENCH_TASKS) and len(records) == 22
    by_id = {r.id: r for r in records}
    # the same video in two tasks stays two records; candidates are lettered in order; the answer is the
    # candidate's text, even when candidates are letters themselves (character_order)
    assert {"action_sequence/shared00", "object_shuffle/shared00"} <= set(by_id)
    assert by_id["character_order/char16"].choices == {"A": "c", "B": "a", "C": "e"}
    assert by_id["character_order/char16"].answer_letter == "B"
    assert by_id["action_count/acti11"].answer_letter == "A"  # candidates ["3", "2", "4"], answer "3"
    prompt = spec.prompts(by_id["action_antonym/acti02"])["main"]
    assert prompt.endswith("Question: What is the action performed by the person in the video?\nOptions:\n"
                           "(A) Not sure\n(B) Scattering something down\n(C) Piling something up\n"
                           "Only give the best option.")
    assert spec.answer_prompt == "Best option:("

    # Replies continue "Best option:(": all right except four (hand-checked below).
    replies = {r.id: f"{r.answer_letter}) {r.answer}" for r in records}
    replies["action_sequence/shared00"] = "B) Tidied up the blanket."  # wrong letter
    replies["object_shuffle/obje07"] = "The answer is C"  # first token is not a letter: no answer
    replies["character_order/char16"] = "a"  # letter A, the right one is B
    replies["episodic_reasoning/epis18"] = ""  # empty
    replies["fine_grained_action/fine03"] = "(A) watering"  # "(A)" and "D." count as the letter
    replies["moving_direction/movi08"] = "D."
    result = spec.score(replies, records)
    metrics = result["metrics"]
    assert (metrics["correct"], metrics["n"]) == (18, 22)
    assert metrics["accuracy"] == pytest.approx(100 * 18 / 22)
    low, high = wilson_interval(18, 22)
    assert metrics["ci95"] == pytest.approx([100 * low, 100 * high]) and metrics["ci95"][0] == pytest.approx(61.5, abs=0.1)
    per_task = result["per_task"]
    assert per_task["action_sequence"]["accuracy"] == 50.0 and per_task["action_sequence"]["n"] == 2
    assert per_task["object_shuffle"]["accuracy"] == 50.0
    assert per_task["character_order"]["accuracy"] == 0.0 and per_task["episodic_reasoning"]["accuracy"] == 0.0
    assert all(per_task[t]["ci95"] is not None for t in MVBENCH_TASKS)
    # the average of the 20 task accuracies: (16 x 100 + 50 + 50 + 0 + 0) / 20
    assert metrics["task_average"] == pytest.approx(85.0) and metrics["tasks"] == 20


class PrefixEngine:
    """Records the answer prefix of each request (the engine's generate signature)."""

    def __init__(self):
        from llavidal.model.modality import ModalityRegistry

        self.modalities = ModalityRegistry.default(["video"], video_dim=16, video_tokens=6)
        self.prefixes: list[str] = []

    def generate(self, requests, max_new_tokens=256, temperature=0.0, top_p=1.0, batch_size=8):
        self.prefixes += [r.answer_prefix for r in requests]
        return ["A) yes" for _ in requests]


def test_mvbench_answer_prompt_reaches_the_engine_and_the_prompt_text(tmp_path):
    from llavidal.data.feature_store import save_features
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    spec = load_task("mvbench")
    records = spec.load_records(FIXTURES / "MVBench" / "json", limit=3)
    folder = tmp_path / "features"
    folder.mkdir()
    for record in records:
        save_features(folder / f"{record.video_stem}.safetensors", np.zeros((6, 16), np.float32))
    engine = PrefixEngine()
    run_inference(engine, records, {"video": folder}, tmp_path / "p.jsonl", benchmark=spec, show_progress=False)
    assert engine.prefixes == ["Best option:("] * 3
    # The prompt text: the answer prompt right after the assistant's turn begins.
    prompt = InferenceEngine.build_prompt(_TemplateOnly(), GenerationRequest("Q?", {}, answer_prefix="Best option:("))
    assert prompt[0].endswith("ASSISTANT: Best option:(")


class _TemplateOnly:
    """Just what build_prompt needs of an engine for a text-only request with the v1 template."""

    def __init__(self):
        from types import SimpleNamespace

        from llavidal.model.modality import ModalityRegistry

        self.modalities = ModalityRegistry.default(["video"], video_dim=16, video_tokens=6)
        self.template = "llavidal_v1"
        self.tokenizer = None
        self.model = SimpleNamespace(config=SimpleNamespace(use_modality_string_prefix=False))

    def _features_of(self, request):
        return {}


def test_zeroshot_pairs_of_every_dataset_and_lstp_predictions_without_video(tmp_path, judge):
    spec = load_task("zeroshot_qa")
    counts = {}
    for dataset in ("MSVD_Zero_Shot_QA", "MSRVTT_Zero_Shot_QA", "ActivityNet", "TGIF_Zero_Shot_QA"):
        folder = FIXTURES / "VideoQA" / dataset
        records = load_records(folder / "test_q.json", "zeroshot", answers=folder / "test_a.json")
        counts[dataset] = len(records)
        assert all(r.answer and r.question and r.meta.get("type") is not None for r in records)
    assert counts == {"MSVD_Zero_Shot_QA": 4, "MSRVTT_Zero_Shot_QA": 2, "ActivityNet": 2, "TGIF_Zero_Shot_QA": 1}

    # LSTP writes {id, question, answer, pred} (no video field): judged yes/no + score as upstream
    folder = FIXTURES / "VideoQA" / "MSVD_Zero_Shot_QA"
    records = load_records(folder / "test_q.json", "zeroshot", answers=folder / "test_a.json")
    marks = ["[[score=5]] dancing", "[[pred=no]] [[score=1]] a woman", "[[score=4]] an onion", "cutting"]
    rows = [{"id": r.id, "question": r.question, "answer": r.answer, "pred": m} for r, m in zip(records, marks)]
    path = tmp_path / "merge.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    predictions = load_predictions(path, "zeroshot")
    assert [p.record.video for p in predictions] == [r.id for r in records]  # the id stands for the video
    result = spec.score(predictions, judge=judge)
    block = result["criteria"]["zeroshot"]
    assert (block["yes"], block["no"], block["n"]) == (3, 1, 4)
    assert result["metrics"]["accuracy"] == pytest.approx(75.0)  # yes / (yes + no)
    assert result["metrics"]["score"] == pytest.approx((5 + 1 + 4 + 3) / 4)  # unmarked: the fake judge's 3
    low, high = wilson_interval(3, 4)
    assert block["ci95"] == pytest.approx([100 * low, 100 * high])


def test_vcg_bench_generic_temporal_consistency(judge):
    spec = load_task("videochatgpt")
    folder = FIXTURES / "VCGBench" / "Zero_Shot_QA"
    splits = {name: spec.load_records(folder / f"{name}_qa.json") for name in ("generic", "temporal", "consistency")}
    assert [len(v) for v in splits.values()] == [2, 2, 2]
    assert splits["consistency"][0].consistency_questions == ["What is the man holding?",
                                                              "Which object is in the man's hand?"]
    generic = [Prediction(r.id, {"main": m}, record=r) for r, m in zip(splits["generic"], ["[[score=4]] a", "[[score=2]] b"])]
    temporal = [Prediction(r.id, {"main": m}, record=r) for r, m in zip(splits["temporal"], ["[[score=5]] c", "d"])]
    consistency = [Prediction(r.id, {"main": "x", "cons1": a, "cons2": "y"}, record=r)
                   for r, a in zip(splits["consistency"], ["[[score=1]] e", "[[score=3]] f"])]
    result = spec.score({"generic": generic, "temporal": temporal, "consistency": consistency}, judge=judge)
    means = {c: b["mean"] for c, b in result["criteria"].items()}
    assert means == pytest.approx({"correctness": 3.0, "detail": 3.0, "context": 3.0, "temporal": 4.0,
                                   "consistency": 2.0})
    assert result["metrics"]["overall"] == pytest.approx((3 + 3 + 3 + 4 + 2) / 5)


def test_recaption_annotations_are_judged_and_uncaptioned_ones_refused(tmp_path, judge):
    spec = load_task("recaption")
    records = spec.load_records(FIXTURES / "Recaption" / "Inter4K" / "annotations.json")
    assert [r.video for r in records] == ["973", "1024"] and records[0].question == spec.default_question
    predictions = [Prediction(r.id, {"main": m}, record=r) for r, m in zip(records, ["[[score=5]] night street",
                                                                                    "[[score=3]] a dog"])]
    result = spec.score(predictions, judge=judge)
    assert {c: b["mean"] for c, b in result["criteria"].items()} == pytest.approx(
        {"correctness": 4.0, "detail": 4.0, "context": 4.0})
    # PLLaVA's own annotations carry only {"video_name"}: inference runs, judging asks for references
    bare = tmp_path / "annotations.json"
    bare.write_text(json.dumps([{"video_name": "973"}]))
    uncaptioned = spec.load_records(bare)
    with pytest.raises(ValueError, match="no reference to judge against"):
        spec.score([Prediction(uncaptioned[0].id, {"main": "x"}, record=uncaptioned[0])], judge=judge)
