"""Entry points: the upstream-path scripts and 'llavidal eval', end to end on small files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavidal.eval.commands import main as eval_main
from llavidal.eval.commands import upstream_main

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import PROXY_VARIABLES, FakeOpenAIServer, local_only_env  # noqa: E402


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Clients must talk to the local server directly, never through a proxy from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


REPO = Path(__file__).resolve().parents[1]
ENV = local_only_env({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
SIX = {
    "A": "drink water",
    "B": "eat food",
    "C": "read a book",
    "D": "make a phone call",
    "E": "sit down",
    "F": "stand up",
}


@pytest.fixture
def server():
    with FakeOpenAIServer(max_lifetime=60) as srv:
        yield srv


def upstream_mcq_predictions(path: Path) -> Path:
    """An upstream-style flat file: the ADLMCQ record plus the model's 'pred'."""
    rows = [
        {
            "video_filename": "lemma_1.mp4",
            "question": "Next?",
            "answer_choices": SIX,
            "ground_truth_letter": "F",
            "task": "lemma_tc",
            "pred": "The best answer is F.",
        },
        {
            "video_filename": "lemma_2.mp4",
            "question": "Next?",
            "answer_choices": SIX,
            "ground_truth_letter": "C",
            "task": "lemma_tc",
            "pred": "(D)",
        },
        {
            "video_filename": "tsu_1.mp4",
            "question": "Next?",
            "answer_choices": dict(list(SIX.items())[:4]),
            "ground_truth_letter": "A",
            "task": "tsu_tc",
            "pred": "I cannot tell.",
        },
    ]
    path.write_text(json.dumps(rows))
    return path


def test_mcq_script_at_upstream_path(tmp_path):
    preds = upstream_mcq_predictions(tmp_path / "pred.json")
    out = tmp_path / "res"
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "lemma_1.mp4").write_bytes(b"mp4")  # the gallery links only videos that exist
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluation/ADLMCQ/evaluate_mcq.py"),
            "--pred_path",
            str(preds),
            "--output_dir",
            str(out),
            "--benchmark",
            "adlmcq_forecasting",
            "--video_root",
            str(tmp_path / "videos"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "adlmcq_forecasting: accuracy 33.33% (1/3; 95% interval 6.1-79.2%), missing 1 {'refusal': 1}" in result.stdout
    assert "lemma_tc: 50.00% (n=2; 95% interval 9.5-90.5%, missing 0)" in result.stdout
    report = (out / "report.md").read_text()
    assert "| accuracy (%) | 33.33 | 6.15-79.23 | 3 | 1 | 1 |" in report and "refusal 1" in report
    gallery = (out / "gallery.html").read_text()
    assert "src='../videos/lemma_1.mp4'" in gallery and "The best answer is F." in gallery
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_description_predictions(path: Path) -> Path:
    rows = [
        {
            "video_name": "d1.mp4",
            "Q": "Describe.",
            "A": "The person drinks.",
            "cons_Q1": "What happens?",
            "cons_Q2": "What is done?",
            "pred": "[[score=4]] drinks",
            "pred1": "[[score=5]] a",
            "pred2": "b",
        },
        {
            "video_name": "d2.mp4",
            "Q": "Describe.",
            "A": "The person eats.",
            "cons_Q1": "What happens?",
            "cons_Q2": "What is done?",
            "pred": "[[score=2]] eats",
            "pred1": "[[score=3]] a",
            "pred2": "b",
        },
    ]
    path.write_text(json.dumps(rows))
    return path


def test_descriptions_shell_script_with_env_vars(tmp_path, server):
    preds = write_description_predictions(tmp_path / "desc_pred.json")
    env = {
        **ENV,
        "PRED_PATH": str(preds),
        "OUTPUT_DIR": str(tmp_path / "out"),
        "JUDGE_MODEL": "judge-2024-01-01",
        "BASE_URL": server.url,
        "CACHE": str(tmp_path / "cache.sqlite"),
        "PYTHON": sys.executable,
    }
    script = REPO / "evaluation/ADL-Descriptions/eval/evaluate_all_benchmark_descriptions.sh"
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # correctness: (4 + 2) / 2 x 20 = 60; consistency: (5 + 3) / 2 x 20 = 80; overall (4 x 60 + 80) / 5 = 64
    assert "correctness: 60.000 (judged 2/2" in result.stdout
    assert "consistency: 80.000" in result.stdout and "overall: 64.000" in result.stdout
    assert "judge-2024-01-01" in (tmp_path / "out" / "report.md").read_text()
    assert server.count() == 10
    # Without arguments it prints its usage and fails.
    bare = subprocess.run(["bash", str(script)], env=ENV, capture_output=True, text=True, timeout=30)
    assert bare.returncode == 2 and "Usage" in bare.stderr


def test_videochatgpt_wrappers_and_zeroshot(tmp_path, server, capsys):
    temporal = tmp_path / "temporal.json"
    temporal.write_text(
        json.dumps([{"video_name": "t1", "Q": "Order?", "A": "sit then stand", "pred": "[[score=1]] x"}])
    )
    common = [
        "--output_dir",
        str(tmp_path / "t"),
        "--judge_model",
        "judge-2024-01-01",
        "--base_url",
        server.url,
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--num_tasks",
        "2",
    ]
    assert upstream_main("temporal", ["--pred_path", str(temporal), *common]) == 0
    result = json.loads((tmp_path / "t" / "videochatgpt_results.json").read_text())
    assert result["metrics"] == {"temporal": 1.0}
    assert list(result["criteria"]) == ["temporal"] and result["skipped_criteria"] == []

    zeroshot = tmp_path / "zs.json"
    zeroshot.write_text(
        json.dumps(
            [
                {"id": "1", "video_name": "m", "question": "dog?", "answer": "yes", "pred": "[[score=4]] yes"},
                {
                    "id": "2",
                    "video_name": "m",
                    "question": "cat?",
                    "answer": "no",
                    "pred": "[[pred=no]] [[score=0]] yes",
                },
            ]
        )
    )
    out_json = tmp_path / "zs_results.json"
    assert upstream_main("zeroshot", ["--pred_path", str(zeroshot), *common, "--output_json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())["metrics"]
    assert metrics == {"accuracy": 50.0, "score": 2.0}
    assert "zeroshot: 50.000, score 2.000" in capsys.readouterr().out


def test_keys_on_the_command_line_are_refused(tmp_path, capsys):
    preds = write_description_predictions(tmp_path / "p.json")
    code = eval_main(
        [
            "judge",
            "descriptions",
            "--pred_path",
            str(preds),
            "--output_dir",
            str(tmp_path / "o"),
            "--judge_model",
            "m-2024-01-01",
            "--api_key",
            "sk-should-not-be-used",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--api_key is refused" in err and "sk-should-not-be-used" not in err
    code = eval_main(["judge", "descriptions", "--pred_path", str(preds), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "--judge_model is required" in capsys.readouterr().err


def test_config_file_and_combined_report(tmp_path, server):
    preds = upstream_mcq_predictions(tmp_path / "pred.json")
    config = tmp_path / "mcq.yaml"
    config.write_text(f"predictions: {preds}\noutput_dir: {tmp_path / 'mcq'}\nbenchmark: adlmcq_forecasting\n")
    assert eval_main(["mcq", "--config", str(config)]) == 0
    desc = write_description_predictions(tmp_path / "d.json")
    assert (
        eval_main(
            [
                "judge",
                "descriptions",
                "--pred_path",
                str(desc),
                "--output_dir",
                str(tmp_path / "desc"),
                "--judge_model",
                "judge-2024-01-01",
                "--base_url",
                server.url,
                "--cache",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 0
    )
    assert (
        eval_main(
            [
                "report",
                "--results",
                str(tmp_path / "mcq" / "report.json"),
                str(tmp_path / "desc" / "report.json"),
                "--output_dir",
                str(tmp_path / "all"),
            ]
        )
        == 0
    )
    combined = json.loads((tmp_path / "all" / "report.json").read_text())
    assert [r["benchmark"] for r in combined["results"]] == ["adlmcq_forecasting", "adl_descriptions"]
    markdown = (tmp_path / "all" / "report.md").read_text()
    assert "## adlmcq_forecasting (v1)" in markdown and "| **overall** | **64.00** |" in markdown
    assert eval_main(["benchmarks"]) == 0


def test_each_subcommand_is_its_own_command(capsys):
    from llavidal.eval.commands import cmd_benchmarks, cmd_judge_descriptions, cmd_tasks

    assert cmd_tasks([]) == 0 and "adlmcq_forecasting" in capsys.readouterr().out
    assert cmd_benchmarks([]) == 0 and "zeroshot_qa" in capsys.readouterr().out
    assert cmd_judge_descriptions(["--output_dir", "o"]) == 2
    assert "llavidal eval judge descriptions: error: --pred_path is required" in capsys.readouterr().err
    assert eval_main(["judge"]) == 2 and "descriptions,videochatgpt,zeroshot" in capsys.readouterr().err
