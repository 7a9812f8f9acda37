"""Multiple choice by option log-likelihood (engine.score_options, --mcq_scoring) and length-sorted batches:
values equal a hand computation, do not depend on the batch, come back in request order, and a choice the
model is made to prefer wins through the CLI; sorted generation gives the same answers as unsorted."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from llavidal.eval.loglik import check_scoring, continuations
from llavidal.eval.records import EvalRecord
from llavidal.eval.tasks import load_task
from llavidal.model.llavidal_model import LlavidalModel
from llavidal.model.modality import ModalityRegistry
from llavidal.serve.engine import GenerationRequest, InferenceEngine, OptionScores
from llavidal.testing import tiny_config, tiny_tokenizer

torch.set_num_threads(1)

DIMS = {"video_dim": 16, "video_tokens": 6, "pose_dim": 12, "pose_tokens": 4, "object_dim": 10}
SIX = {"A": "drink water", "B": "eat food", "C": "read a book", "D": "make a phone call", "E": "sit down",
       "F": "stand up"}


def tiny_engine() -> InferenceEngine:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tokenizer)), attn_implementation="eager")
    model = LlavidalModel(llm, tokenizer, ModalityRegistry.default(**DIMS), template="chat")
    with torch.no_grad():
        for projector in model.projectors.values():
            projector.weight.mul_(20.0)  # features strong enough to change the scores
    return InferenceEngine(model, tokenizer)


def mixed_requests(n: int = 10) -> tuple[list[GenerationRequest], list[list[str]]]:
    """Requests of different prompt lengths (question length, modalities, object count) and option counts."""
    rng = np.random.default_rng(1)
    requests, options = [], []
    for i in range(n):
        features = {"video": rng.standard_normal((6, 16)).astype(np.float32)}
        if i % 3 == 1:
            features["pose"] = rng.standard_normal((4, 12)).astype(np.float32)
        if i % 4 == 2:
            features["object"] = rng.standard_normal((1 + i % 3, 8, 10)).astype(np.float32)
        question = "What does the person do next?" + " Look closely." * (i % 5)
        requests.append(GenerationRequest(question, features, request_id=f"q{i}"))
        options.append(list(SIX.values())[: 2 + i % 5])
    return requests, options


def hand_logliks(engine: InferenceEngine, request: GenerationRequest, options: list[str]) -> list[float]:
    """Sum of log-softmax of each option's tokens after the prompt, from one full forward per option."""
    text, features = engine.build_prompt(request)
    assert text.endswith("\n")  # the chat template: the option follows without a separator
    prompt = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    suppressed = engine.model.modality_token_ids()  # generation never produces them
    values = []
    for option in options:
        ids = engine.tokenizer(text + option, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt and len(ids) > len(prompt)
        with torch.no_grad():
            logits = engine.model(torch.tensor([ids]), modality_features={k: [v] for k, v in features.items()}).logits[0]
        logits[:, suppressed] = float("-inf")
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        values.append(sum(float(log_probs[t - 1, ids[t]]) for t in range(len(prompt), len(ids))))
    return values


def test_option_loglik_equals_hand_computation_and_normalisation():
    engine = tiny_engine()
    requests, options = mixed_requests(3)
    scored = engine.score_options(requests, options, batch_size=3)
    for request, opts, result in zip(requests, options, scored):
        assert result.options == opts
        np.testing.assert_allclose(result.logliks, hand_logliks(engine, request, opts), rtol=0, atol=1e-4)
        assert all(v < 0 for v in result.logliks) and result.num_chars == [len(o) for o in opts]
    # Normalisation: sum, per token, per character; the best option is the argmax of the chosen one.
    result = OptionScores(["ab", "abcdef"], [-4.0, -6.0], num_tokens=[1, 3], num_chars=[2, 6])
    assert result.scores("none") == [-4.0, -6.0] and result.best("none") == 0
    assert result.scores("token") == [-4.0, -2.0] and result.best("token") == 1
    assert result.scores("char") == [-2.0, -1.0] and result.best("char") == 1
    assert OptionScores(["x", "y"], [-1.0, -1.0], [1, 1], [1, 1]).best() == 0  # ties: the first option
    with pytest.raises(ValueError, match="normalization"):
        result.scores("bytes")
    with pytest.raises(ValueError, match="empty"):
        engine.score_options([requests[0]], [["sit down", " "]])


def test_scores_do_not_depend_on_batch_size_or_sorting():
    engine = tiny_engine()
    requests, options = mixed_requests(10)
    lengths = engine.prompt_lengths(requests)
    assert len(set(lengths)) > 3  # batches really mix lengths
    single = [engine.score_options([r], [o], batch_size=1)[0] for r, o in zip(requests, options)]
    for batch_size, sort in ((8, True), (8, False), (3, True)):
        batched = engine.score_options(requests, options, batch_size=batch_size, sort_by_length=sort)
        assert [b.options for b in batched] == options  # request order restored
        for one, many in zip(single, batched):
            assert one.best("token") == many.best("token") and one.best("char") == many.best("char")
            np.testing.assert_allclose(many.logliks, one.logliks, rtol=0, atol=1e-5)
    assert len({tuple(s.logliks) for s in single}) == len(single)  # prompts and features change the values


def test_sorted_generation_equals_unsorted_and_per_request():
    engine = tiny_engine()
    requests, _ = mixed_requests(7)
    per_request = [engine.generate([r], max_new_tokens=6)[0] for r in requests]
    assert engine.generate(requests, max_new_tokens=6, batch_size=3, sort_by_length=True) == per_request
    assert engine.generate(requests, max_new_tokens=6, batch_size=3, sort_by_length=False) == per_request
    assert len(set(per_request)) > 1


def test_task_field_and_scoring_modes():
    spec = load_task("adlmcq_forecasting")
    assert spec.loglik and load_task("adlmcq_action_recognition").loglik
    assert check_scoring("generate", spec) is None and check_scoring("loglik_norm", spec) == "token"
    assert check_scoring("loglik", spec) == "none" and check_scoring("loglik_char", spec) == "char"
    with pytest.raises(ValueError, match="does not allow log-likelihood"):
        check_scoring("loglik_norm", load_task("adl_descriptions"))
    with pytest.raises(ValueError, match="not one of"):
        check_scoring("loglik_bytes", spec)
    record = EvalRecord(id="r", video="v.mp4", question="?", choices={"A": "sit", "B": "stand"}, answer_letter="B")
    assert continuations(spec, record) == (["A", "B"], ["sit", "stand"])


def prefer_token(base, token_id: int) -> None:
    """Make the tiny LLM in ``base`` put almost all probability on ``token_id`` after any ordinary token:
    attention and MLP outputs zeroed (the last hidden state is the normalised input embedding), every
    embedding row the same vector, and an LM head that only has a row for ``token_id``."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for layer in llm.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = llm.get_input_embeddings().weight
        embeddings.copy_(embeddings[0].expand_as(embeddings))
        hidden = llm.model.norm(embeddings[:1])[0]
        llm.lm_head.weight.zero_()
        llm.lm_head.weight[token_id] = 30.0 * hidden / hidden.norm() ** 2  # logit 30, every other logit 0
    llm.save_pretrained(base)


def test_cli_loglik_predictions_are_scored_and_the_preferred_choice_wins(tmp_path):
    from llavidal.data.feature_store import save_features
    from llavidal.eval.commands import main as eval_main
    from llavidal.model.builder import build_model
    from llavidal.testing import tiny_causal_lm_dir
    from llavidal.utils.io import read_jsonl

    base = tiny_causal_lm_dir(tmp_path / "llm", "llama")
    tokenizer = tiny_tokenizer()
    first_tokens = {letter: tokenizer(text, add_special_tokens=False)["input_ids"] for letter, text in SIX.items()}
    # A choice whose first token appears in no other choice: made the model's favourite.
    winner = next(letter for letter, ids in first_tokens.items()
                  if all(ids[0] not in other for k, other in first_tokens.items() if k != letter))
    prefer_token(base, first_tokens[winner][0])
    model, _ = build_model(base, ModalityRegistry.default(["video"], **DIMS), template="chat")
    model.save_pretrained(tmp_path / "weights")
    video = tmp_path / "video"
    video.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i, truth in enumerate([winner, winner, "A" if winner != "A" else "B"]):
        save_features(video / f"v{i}.safetensors", rng.standard_normal((6, 16)).astype(np.float32))
        records.append({"video_filename": f"v{i}.mp4", "question": "What happens next?", "answer_choices": dict(SIX),
                        "ground_truth_letter": truth})
    (tmp_path / "mcq.json").write_text(json.dumps(records))
    out = tmp_path / "preds.jsonl"
    assert eval_main(["infer", "--benchmark", "adlmcq_forecasting", "--records", str(tmp_path / "mcq.json"),
                      "--weights", str(tmp_path / "weights"), "--video_folder", str(video), "--output", str(out),
                      "--batch_size", "2", "--device", "cpu", "--mcq_scoring", "loglik_norm"]) == 0
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert list(rows) == ["v0", "v1", "v2"]
    for row in rows.values():
        assert row["status"] == "ok" and row["prediction"] == winner
        scores = row["option_scores"]
        assert set(scores) == set(SIX) and max(scores, key=lambda k: scores[k]["score"]) == winner
        assert all(s["score"] == pytest.approx(s["loglik"] / s["tokens"]) for s in scores.values())
        assert row["generation"]["mcq_scoring"] == "loglik_norm"
    assert eval_main(["mcq", "--predictions", str(out), "--output_dir", str(tmp_path / "res"),
                      "--benchmark", "adlmcq_forecasting"]) == 0
    result = json.loads((tmp_path / "res" / "adlmcq_forecasting_results.json").read_text())
    assert result["metrics"]["n"] == 3 and result["metrics"]["correct"] == 2

    # A task that does not allow it is a usage error, before any model is loaded.
    assert eval_main(["infer", "--benchmark", "adl_descriptions", "--records", str(tmp_path / "mcq.json"),
                      "--weights", str(tmp_path / "weights"), "--video_folder", str(video),
                      "--output", str(tmp_path / "d.jsonl"), "--mcq_scoring", "loglik_norm"]) == 2
    assert not (tmp_path / "d.jsonl").exists()


def test_cut_at_lead():
    from llavidal.eval.loglik import cut_at_lead

    assert cut_at_lead("The video ends with sitting. The answer is reading. The answer is", "The answer is") == \
        "The video ends with sitting. The answer is"
    assert cut_at_lead("The video ends with sitting.  ", "The answer is") == "The video ends with sitting. The answer is"
    assert cut_at_lead("", "The answer is") == "The answer is"


def test_loglik_after_a_generated_lead_is_batch_independent_and_resumes_by_settings(tmp_path):
    """--loglik_lead: the choices are scored after the model's own greedy answer cut at the lead (the row keeps
    it), the same at batch 1 and 8; a rerun with the same settings skips every record, one without the lead
    answers them all again and the merged file holds the new rows."""
    from llavidal.data.feature_store import save_features
    from llavidal.eval.loglik import cut_at_lead
    from llavidal.eval.run_inference import run_inference
    from llavidal.utils.io import read_jsonl

    engine = tiny_engine()
    spec = load_task("adlmcq_forecasting")
    video = tmp_path / "video"
    video.mkdir()
    rng = np.random.default_rng(3)
    records, arrays = [], []
    for i in range(9):
        arrays.append(rng.standard_normal((6, 16)).astype(np.float32))
        save_features(video / f"v{i}.safetensors", arrays[-1])
        choices = dict(list(SIX.items())[: 3 + i % 4])
        records.append(EvalRecord(id=f"v{i}", video=f"v{i}.mp4", question="What will the person do next?" + " Hm." * i,
                                  choices=choices, answer_letter="A"))
    lead = "the answer is"
    rows = {}
    for batch in (1, 8):
        out = tmp_path / f"b{batch}.jsonl"
        summary = run_inference(engine, records, {"video": video}, out, benchmark=spec, batch_size=batch,
                                max_new_tokens=6, mcq_scoring="loglik_norm", loglik_lead=lead, show_progress=False)
        assert summary.generated == 9
        rows[batch] = {row["id"]: row for row in read_jsonl(out)}
    for rid, row in rows[1].items():
        other = rows[8][rid]
        assert row["prediction"] == other["prediction"] and row["lead"] == other["lead"]
        assert row["lead"].endswith(lead) and row["generation"]["loglik_lead"] == lead
        for letter, score in row["option_scores"].items():
            assert score["loglik"] == pytest.approx(other["option_scores"][letter]["loglik"], abs=1e-4)
    # the lead is the greedy answer cut at the lead, and the choices are scored right after it
    record = records[4]
    features = {"video": arrays[4]}
    prompt = spec.prompts(record)["main"]
    answer = engine.generate([GenerationRequest(prompt, features, request_id="v4")], max_new_tokens=6)[0]
    assert rows[1]["v4"]["lead"] == cut_at_lead(answer, lead)
    scored = engine.score_options([GenerationRequest(prompt, features, request_id="v4", answer_prefix=rows[1]["v4"]["lead"])],
                                  [list(record.choices.values())])[0]
    assert [rows[1]["v4"]["option_scores"][k]["loglik"] for k in record.choices] == pytest.approx(scored.logliks, abs=1e-4)
    plain = engine.score_options([GenerationRequest(prompt, features, request_id="v4")], [list(record.choices.values())])[0]
    assert scored.logliks != pytest.approx(plain.logliks, abs=1e-3)  # the lead changes what is scored

    out = tmp_path / "b8.jsonl"
    again = run_inference(engine, records, {"video": video}, out, benchmark=spec, batch_size=8, max_new_tokens=6,
                          mcq_scoring="loglik_norm", loglik_lead=lead, show_progress=False)
    assert again.generated == 0 and again.skipped_done == 9
    without = run_inference(engine, records, {"video": video}, out, benchmark=spec, batch_size=8, max_new_tokens=6,
                            mcq_scoring="loglik_norm", show_progress=False)
    assert without.generated == 9
    merged = read_jsonl(out)
    assert len(merged) == 9 and all("lead" not in row and "loglik_lead" not in row["generation"] for row in merged)
    with pytest.raises(ValueError, match="needs --mcq_scoring"):
        run_inference(engine, records, {"video": video}, tmp_path / "g.jsonl", benchmark=spec, loglik_lead=lead,
                      show_progress=False)


def test_generation_stops_at_a_stop_string_row_by_row():
    """engine.generate(stop=...): a row ends once its text holds a stop string (the lead of --loglik_lead is
    generated no further than needed); its answer is a prefix of the unstopped greedy answer that holds the
    string, and a row of the same batch that never writes it is unchanged."""
    engine = tiny_engine()
    rng = np.random.default_rng(5)
    requests = [GenerationRequest(f"Question {i}: what happens next?", {"video": rng.standard_normal((6, 16)).astype(np.float32)},
                                  request_id=f"r{i}") for i in range(4)]
    full = engine.generate(requests, max_new_tokens=16, batch_size=4)
    # an early word of one answer that another never writes
    first, other, stop = next((i, j, word) for i in range(4) for j in range(4) if i != j
                              for word in re.findall(r"[A-Za-z]{3,}", full[i][: len(full[i]) // 2]) if word not in full[j])
    pair = [requests[first], requests[other]]
    stopped = engine.generate(pair, max_new_tokens=16, batch_size=2, stop=[stop])
    assert stop in stopped[0] and full[first].startswith(stopped[0]) and len(stopped[0]) < len(full[first])
    assert stopped[1] == full[other]
    assert engine.generate(pair[:1], max_new_tokens=16, batch_size=1, stop=[stop]) == stopped[:1]
