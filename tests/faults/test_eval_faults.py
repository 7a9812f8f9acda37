"""Evaluation faults (issue 19), each driven through the real CLI: feature manifests checked against the
weights, non-zero exits when rows failed, non-finite / wrong-dtype features refused, non-UTF-8 inputs
named, credentials in --base_url redacted, torn lines reported and n counted over the whole benchmark."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from llavidal.cli import main
from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.utils.io import read_jsonl

DIMS = dict(video_dim=16, video_tokens=6)
CHOICES = {"A": "drink water", "B": "eat food", "C": "read a book", "D": "sit down"}
TRAINED_ENCODER = "a" * 64
OTHER_ENCODER = "b" * 64


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    from fake_openai_server import PROXY_VARIABLES

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def video_manifest(encoder_sha: str) -> FeatureManifest:
    return FeatureManifest(modality="video", extractor="tests.random", feature_dim=16, shape=[6, 16],
                           model_id=f"encoder-{encoder_sha[:4]}", weights_sha256=encoder_sha)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny real weights (video only) that record the video features' manifest, as training writes it."""
    import torch

    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry
    from llavidal.testing import tiny_causal_lm_dir

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval_faults")
    model, _ = build_model(tiny_causal_lm_dir(root / "llm", "llama"), ModalityRegistry.default(["video"], **DIMS),
                           template="chat")
    model.config.feature_manifests = {"video": video_manifest(TRAINED_ENCODER).to_dict()}
    model.save_pretrained(root / "weights")
    return root / "weights"


def feature_folder(path: Path, arrays: dict[str, np.ndarray], manifest: FeatureManifest | None) -> Path:
    path.mkdir(parents=True)
    for stem, array in arrays.items():
        save_features(path / f"{stem}.safetensors", array)
    if manifest is not None:
        manifest.save(path)
    return path


def good(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((6, 16)).astype(np.float32)


def records_file(path: Path, stems: list[str]) -> Path:
    rows = [{"video_filename": f"{stem}.mp4", "question": "What happens?", "answer_choices": CHOICES,
             "ground_truth_letter": "B"} for stem in stems]
    path.write_text(json.dumps(rows))
    return path


def infer(weights: Path, records: Path, video: Path, out: Path, *extra: str) -> int:
    return main(["eval", "infer", "--benchmark", "adlmcq_forecasting", "--records", str(records), "--weights",
                 str(weights), "--video_folder", str(video), "--output", str(out), "--max_new_tokens", "2",
                 "--device", "cpu", *extra])


def infer_row(stem: str, status: str = "ok", prediction: str | None = "(B)", total: int | None = None) -> dict:
    row = {"id": stem, "status": status, "prediction": prediction,
           "outputs": {"main": prediction} if prediction is not None else {},
           "error": "" if status == "ok" else f"record {stem!r}: video features: scripted",
           "record": {"id": stem, "video": f"{stem}.mp4", "question": "What happens?", "choices": CHOICES,
                      "answer_letter": "B", "answer": CHOICES["B"], "task": "t"}}
    if total is not None:
        row["benchmark_total"] = total
    return row


def write_rows(path: Path, rows: list[dict], torn: str = "") -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + torn)
    return path


def test_manifest_mismatch_is_refused_unless_allowed(weights, tmp_path, capsys, caplog):
    """Before: features from another encoder (same shape) ran silently. After: refused before loading the
    model, naming the folder, the weights and the difference; --allow_feature_mismatch runs with a warning;
    a folder without a manifest runs with a warning that nothing was checked."""
    records = records_file(tmp_path / "mcq.json", ["v0"])
    other = feature_folder(tmp_path / "other", {"v0": good()}, video_manifest(OTHER_ENCODER))
    out = tmp_path / "preds.jsonl"
    assert infer(weights, records, other, out) == 2
    err = capsys.readouterr().err
    assert str(other) in err and str(weights) in err and "encoder" in err and "--allow_feature_mismatch" in err
    assert err.count("\n") == 1 and not out.exists()

    caplog.set_level(logging.WARNING)
    assert infer(weights, records, other, out, "--allow_feature_mismatch") == 0
    assert any("running anyway" in r.getMessage() and str(other) in r.getMessage() for r in caplog.records)
    assert read_jsonl(out)[0]["status"] == "ok"

    caplog.clear()
    same = feature_folder(tmp_path / "same", {"v0": good()}, video_manifest(TRAINED_ENCODER))
    assert infer(weights, records, same, tmp_path / "same.jsonl") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "manifest" in r.getMessage()]
    unchecked = feature_folder(tmp_path / "pickles", {"v0": good()}, None)
    assert infer(weights, records, unchecked, tmp_path / "unchecked.jsonl") == 0
    assert any("not checked" in r.getMessage() and str(unchecked) in r.getMessage() for r in caplog.records)


def test_failed_rows_make_every_command_exit_nonzero(weights, tmp_path, capsys):
    """Before: wrong-shaped features failed every row and infer, mcq and judge exited 0. After: each exits 1
    after writing its results, and says how many failed and where the reasons are."""
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer

    records = records_file(tmp_path / "mcq.json", ["v0", "v1"])
    video = feature_folder(tmp_path / "video", {"v0": good(), "v1": np.zeros((6, 32), np.float32)}, None)
    out = tmp_path / "preds.jsonl"
    assert infer(weights, records, video, out) == 1
    err = capsys.readouterr().err
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert rows["v0"]["status"] == "ok" and rows["v1"]["status"] == "feature_error"
    assert "v1.safetensors" in rows["v1"]["error"] and "16-d" in rows["v1"]["error"]
    assert "1 records failed" in err and str(out) in err

    assert main(["eval", "mcq", "--predictions", str(out), "--benchmark", "adlmcq_forecasting",
                 "--output_dir", str(tmp_path / "mcq")]) == 1
    err = capsys.readouterr().err
    assert "feature_error: 1" in err and str(out) in err
    assert (tmp_path / "mcq" / "report.json").is_file()

    descriptions = write_rows(tmp_path / "desc.jsonl", [
        {"id": "d0", "status": "ok", "outputs": {"main": "[[500x9]] drinks"},
         "record": {"id": "d0", "video": "d0.mp4", "question": "Describe.", "answer": "drinks"}},
        {"id": "d1", "status": "ok", "outputs": {"main": "[[score=4]] eats"},
         "record": {"id": "d1", "video": "d1.mp4", "question": "Describe.", "answer": "eats"}},
    ])
    with FakeOpenAIServer() as server:
        code = main(["eval", "judge", "descriptions", "--pred_path", str(descriptions), "--judge_model",
                     "judge-2024-01-01", "--base_url", server.url, "--cache", str(tmp_path / "cache.sqlite"),
                     "--max_retries", "0", "--criteria", "correctness", "--output_dir", str(tmp_path / "judged")])
    assert code == 1
    err = capsys.readouterr().err
    assert "1 judgements failed" in err and "d0" in err and str(tmp_path / "judged") in err


def test_non_finite_or_integer_features_are_refused(weights, tmp_path, capsys):
    """Before: a NaN in a video feature file gave status ok with an empty answer; int64 features were used.
    After: each such record is a feature_error row naming the file and the fix, counted, and infer exits 1."""
    records = records_file(tmp_path / "mcq.json", ["v0", "v1", "v2"])
    with_nan = good(1)
    with_nan[2, 3] = np.nan
    video = feature_folder(tmp_path / "video", {"v0": with_nan, "v1": np.ones((6, 16), np.int64), "v2": good(2)},
                           video_manifest(TRAINED_ENCODER))
    out = tmp_path / "preds.jsonl"
    assert infer(weights, records, video, out) == 1
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "2 records failed" in captured.err
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert rows["v0"]["status"] == "feature_error" and "v0.safetensors" in rows["v0"]["error"]
    assert "1 NaN" in rows["v0"]["error"] and "(2, 3)" in rows["v0"]["error"]
    assert rows["v1"]["status"] == "feature_error" and "v1.safetensors" in rows["v1"]["error"]
    assert "int64" in rows["v1"]["error"]
    assert rows["v2"]["status"] == "ok"


def test_non_utf8_records_and_predictions_are_named(tmp_path, capsys):
    """Before: a raw UnicodeDecodeError without the file's name. After: one line naming the file, the byte
    offset and the fix (re-save as UTF-8)."""
    records = tmp_path / "mcq.json"
    records.write_bytes(b'[{"video_filename": "v0.mp4", "question": "Caf\xe9?", "answer_choices": ["a", "b"], '
                        b'"ground_truth_letter": "A"}]')
    code = main(["eval", "infer", "--benchmark", "adlmcq_forecasting", "--records", str(records), "--weights",
                 str(tmp_path / "never_loaded"), "--video_folder", str(tmp_path), "--output",
                 str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(records) in err and "byte 46, line 1" in err and "UTF-8" in err

    predictions = tmp_path / "preds.jsonl"
    predictions.write_bytes(json.dumps(infer_row("v0")).encode() + b'\n{"id": "v1", "outputs": {"main": "\xff"}}\n')
    code = main(["eval", "judge", "descriptions", "--pred_path", str(predictions), "--judge", "local",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(predictions) in err and "line 2" in err and "UTF-8" in err


def test_credentials_in_base_url_are_redacted(tmp_path, capsys):
    """Before: http://user:secret@host/v1 was copied into report.json. After: http://user:***@host/v1
    everywhere the URL is recorded or shown; so are credential-like query parameters."""
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer

    predictions = write_rows(tmp_path / "desc.jsonl", [
        {"id": "d0", "status": "ok", "outputs": {"main": "[[score=4]] drinks"},
         "record": {"id": "d0", "video": "d0.mp4", "question": "Describe.", "answer": "drinks"}}])
    with FakeOpenAIServer() as server:
        url = server.url.replace("http://", "http://user:s3cr3t@")
        code = main(["eval", "judge", "descriptions", "--pred_path", str(predictions), "--judge_model",
                     "judge-2024-01-01", "--base_url", url, "--cache", str(tmp_path / "cache.sqlite"),
                     "--criteria", "correctness", "--output_dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "user:***@127.0.0.1" in json.dumps(report)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(b"s3cr3t" in p.read_bytes() for p in written)
    assert "s3cr3t" not in captured.out + captured.err

    from llavidal.eval.judges.openai_judge import redact_url  # query keys (the client cannot send them to a server)

    assert redact_url("http://h:1/v1?key=s3cr3t&api-version=2024") == "http://h:1/v1?key=***&api-version=2024"


def test_torn_last_line_is_reported(tmp_path, caplog, capsys):
    """Before: eval mcq / eval judge dropped a torn last line silently. After: a warning naming the file and
    line, counted in the results; the record counts as having no prediction."""
    pytest.importorskip("openai")
    from fake_openai_server import FakeOpenAIServer

    caplog.set_level(logging.WARNING)
    rows = [infer_row(f"v{i}", total=3) for i in range(2)]
    predictions = write_rows(tmp_path / "preds.jsonl", rows, torn='{"id": "v2", "status": "o')
    assert main(["eval", "mcq", "--predictions", str(predictions), "--benchmark", "adlmcq_forecasting",
                 "--output_dir", str(tmp_path / "mcq")]) == 0
    assert any(f"{predictions}:3" in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    result = json.loads((tmp_path / "mcq" / "adlmcq_forecasting_results.json").read_text())
    assert result["torn_lines"] == [f"{predictions}:3"]
    assert result["metrics"]["n"] == 3 and result["missing_reasons"] == {"no_prediction": 1}
    assert f"{predictions}:3" in capsys.readouterr().out

    caplog.clear()
    described = write_rows(tmp_path / "desc.jsonl", [
        {"id": "d0", "status": "ok", "outputs": {"main": "[[score=4]] drinks"},
         "record": {"id": "d0", "video": "d0.mp4", "question": "Describe.", "answer": "drinks"}}],
        torn='{"id": "d1", "outputs": {"ma')
    with FakeOpenAIServer() as server:
        assert main(["eval", "judge", "descriptions", "--pred_path", str(described), "--judge_model",
                     "judge-2024-01-01", "--base_url", server.url, "--cache", str(tmp_path / "cache.sqlite"),
                     "--criteria", "correctness", "--output_dir", str(tmp_path / "judged")]) == 0
    assert any(f"{described}:2" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "judged" / "report.json").read_text())


def test_mcq_without_records_counts_the_whole_benchmark(tmp_path, capsys):
    """Before: eval mcq without --records reported n=10 for a 26-record benchmark (a run cut short). After:
    n is the benchmark's record count the rows carry; without it, the output says n counts predictions only."""
    rows = [infer_row("v0", total=5), infer_row("v1", prediction="(C)", total=5),
            infer_row("v2", status="missing_features", prediction=None, total=5)]
    predictions = write_rows(tmp_path / "preds.jsonl", rows)
    assert main(["eval", "mcq", "--predictions", str(predictions), "--benchmark", "adlmcq_forecasting",
                 "--output_dir", str(tmp_path / "mcq")]) == 0
    result = json.loads((tmp_path / "mcq" / "adlmcq_forecasting_results.json").read_text())
    assert result["metrics"]["n"] == 5 and result["metrics"]["correct"] == 1 and result["metrics"]["accuracy"] == 20.0
    assert result["missing_reasons"] == {"missing_features": 1, "no_prediction": 2}
    assert "(1/5; 95% interval 3.6-62.4%)" in capsys.readouterr().out  # n and interval of the whole benchmark

    upstream = tmp_path / "upstream.json"
    upstream.write_text(json.dumps([{"video_filename": "v0.mp4", "question": "What happens?",
                                     "answer_choices": CHOICES, "ground_truth_letter": "B", "pred": "(B)"}]))
    assert main(["eval", "mcq", "--predictions", str(upstream), "--benchmark", "adlmcq_forecasting",
                 "--output_dir", str(tmp_path / "up")]) == 0
    assert "n counts predictions only; pass --records for missing ones" in capsys.readouterr().out
