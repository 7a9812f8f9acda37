"""kill -9 in the middle of a judged run, then rerun: the same report, and no committed call asked again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llavidal.eval.commands import main as eval_main
from llavidal.eval.judges.cache import JudgeCache
from llavidal.eval.records import EvalRecord

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import PROXY_VARIABLES, FakeOpenAIServer, local_only_env  # noqa: E402


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Clients must talk to the local server directly, never through a proxy from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


pytest.importorskip("openai")
REPO = Path(__file__).resolve().parents[1]
N_RECORDS = 12  # x 5 criteria = 60 judge calls


def write_predictions(path: Path) -> None:
    with open(path, "w") as handle:
        for i in range(N_RECORDS):
            record = EvalRecord(
                id=f"v{i}",
                video=f"v{i}.mp4",
                question=f"Describe video {i}.",
                answer="The person drinks.",
                consistency_questions=[f"What happens in {i}?", f"What is done in {i}?"],
            )
            main = f"[[score={i % 6}]] answer {i}" if i != 7 else "[[reply=not a score]] answer 7"
            row = {
                "id": record.id,
                "status": "ok",
                "prediction": main,
                "outputs": {"main": main, "cons1": f"[[score={(i + 1) % 6}]] one {i}", "cons2": f"two {i}"},
                "record": record.to_dict(),
            }
            handle.write(json.dumps(row) + "\n")


def judge_args(server: FakeOpenAIServer, predictions: Path, cache: Path, out: Path) -> list[str]:
    return [
        "judge",
        "descriptions",
        "--pred_path",
        str(predictions),
        "--judge",
        "openai",
        "--judge_model",
        "judge-2024-01-01",
        "--base_url",
        server.url,
        "--cache",
        str(cache),
        "--output_dir",
        str(out),
        "--concurrency",
        "2",
        "--backoff_base",
        "0.01",
    ]


def test_kill9_then_rerun_gives_identical_report_without_repeating_committed_calls(tmp_path):
    predictions = tmp_path / "preds.jsonl"
    write_predictions(predictions)
    with FakeOpenAIServer(latency=0.05, max_lifetime=90) as server:
        # Reference: one uninterrupted run with its own cache.
        assert eval_main(judge_args(server, predictions, tmp_path / "ref.sqlite", tmp_path / "ref")) == 0
        all_keys = {e["key"] for e in server.log}
        assert len(all_keys) == N_RECORDS * 5
        server.reset_log()

        # Killed run.
        cache, out = tmp_path / "run.sqlite", tmp_path / "run"
        env = local_only_env({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
        command = [sys.executable, "-m", "llavidal.eval.commands", *judge_args(server, predictions, cache, out)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while len(server.completed()) < 12 and time.time() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()[-2000:]
        assert not (out / "report.json").exists()
        completed_before_kill = {e["key"] for e in server.completed()}
        committed = len(JudgeCache(cache).keys())
        assert 12 <= len(completed_before_kill) < len(all_keys)
        # What the server finished but the client had not committed yet (at most the calls in flight).
        uncommitted = len(completed_before_kill) - committed
        assert 0 <= uncommitted <= 2
        server.reset_log()

        # Rerun: only what was not committed is asked.
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        rerun_keys = [e["key"] for e in server.log]
        assert len(rerun_keys) == len(set(rerun_keys)) == len(all_keys) - committed
        assert len(set(rerun_keys) & completed_before_kill) == uncommitted
        assert set(rerun_keys) | completed_before_kill == all_keys

    for name in ("report.json", "report.md", "adl_descriptions_results.json"):
        assert (out / name).read_text() == (tmp_path / "ref" / name).read_text(), name
    report = json.loads((out / "report.json").read_text())["results"][0]
    assert report["criteria"]["correctness"]["judge_malformed"] == 1
    assert report["criteria"]["correctness"]["judged"] == N_RECORDS - 1
