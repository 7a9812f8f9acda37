"""``llavidal eval infer --jobs FILE``: several runs of one model in one process (the quickstart's evaluation),
each the same as its own ``eval infer`` command, the model loaded once, each run resuming on its own."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from llavidal.cli import main
from llavidal.data.feature_store import save_features
from llavidal.utils.io import read_jsonl

DIMS = dict(video_dim=16, video_tokens=6)
CHOICES = {"A": "drink water", "B": "eat food", "C": "read a book", "D": "sit down"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry
    from llavidal.testing import tiny_causal_lm_dir

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("infer_jobs")
    model, _ = build_model(tiny_causal_lm_dir(root / "llm", "llama"), ModalityRegistry.default(["video"], **DIMS),
                           template="chat")
    model.save_pretrained(root / "weights")
    video = root / "video"
    video.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        save_features(video / f"v{i}.safetensors", rng.standard_normal((6, 16)).astype(np.float32))
        rows.append({"video_filename": f"v{i}.mp4", "question": "What happens next?" + " Hm." * i,
                     "answer_choices": CHOICES, "ground_truth_letter": "B"})
    (root / "records.json").write_text(json.dumps(rows))
    return root


RUNS = [
    ["--benchmark", "adlmcq_forecasting", "--max_new_tokens", "4"],
    ["--benchmark", "adlmcq_forecasting", "--mcq_scoring", "loglik_norm", "--loglik_lead", "answer", "--limit", "3"],
    ["--benchmark", "adlmcq_action_recognition", "--mcq_scoring", "loglik_norm", "--batch_size", "2"],
]


def shared(setup) -> list[str]:
    return ["--weights", str(setup / "weights"), "--records", str(setup / "records.json"),
            "--video_folder", str(setup / "video"), "--device", "cpu"]


def comparable(path) -> list[dict]:
    return sorted(({k: row.get(k) for k in ("id", "status", "prediction", "outputs", "lead", "option_scores",
                                             "generation", "benchmark_total")} for row in read_jsonl(path)),
                  key=lambda row: row["id"])


def test_jobs_match_their_own_commands_load_the_model_once_and_resume(setup, tmp_path, monkeypatch, capsys):
    from llavidal.serve.engine import InferenceEngine

    for index, run in enumerate(RUNS):
        assert main(["eval", "infer", *shared(setup), *run, "--output", str(tmp_path / f"alone{index}.jsonl")]) == 0
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# one run per line\n\n" + "".join(  # shell words: a quoted path with a space, comments
        shlex.join([*run, "--output", str(tmp_path / f"job {index}.jsonl")]) + "  # run\n" for index, run in enumerate(RUNS)))
    loads = []
    original = InferenceEngine.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(InferenceEngine, "from_pretrained", classmethod(counting))
    assert main(["eval", "infer", *shared(setup), "--jobs", str(jobs)]) == 0
    assert len(loads) == 1
    for index in range(len(RUNS)):
        alone, job = comparable(tmp_path / f"alone{index}.jsonl"), comparable(tmp_path / f"job {index}.jsonl")
        assert job == alone and len(job) == (3 if index == 1 else 5)
    assert all(row["lead"].endswith("answer") for row in read_jsonl(tmp_path / "job 1.jsonl"))
    capsys.readouterr()
    assert main(["eval", "infer", *shared(setup), f"--jobs={jobs}"]) == 0  # every run resumes: nothing left
    out = capsys.readouterr().out
    assert out.count("0 generated") == 3 and "3 runs from" in out and "3 complete" in out


def test_a_jobs_file_that_mixes_models_or_outputs_is_refused_before_anything_runs(setup, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"--benchmark adlmcq_forecasting --output {out}\n"
                    f"--benchmark adlmcq_forecasting --output {tmp_path / 'b.jsonl'} --weights {tmp_path}\n")
    assert main(["eval", "infer", *shared(setup), "--jobs", str(jobs)]) == 2
    err = capsys.readouterr().err
    assert f"{jobs} line 2" in err and "--weights" in err and "share one model" in err
    jobs.write_text(f"--benchmark adlmcq_forecasting --output {out}\n--benchmark adlmcq_action_recognition --output {out}\n")
    assert main(["eval", "infer", *shared(setup), "--jobs", str(jobs)]) == 2
    assert f"{jobs} line 2: --output {out} is written by {jobs} line 1" in capsys.readouterr().err
    jobs.write_text(f"--benchmark adlmcq_forecasting --output {out} --no_such_flag 1\n")
    assert main(["eval", "infer", *shared(setup), "--jobs", str(jobs)]) == 2
    assert f"{jobs} line 1" in capsys.readouterr().err
    jobs.write_text("# nothing\n")
    assert main(["eval", "infer", *shared(setup), "--jobs", str(jobs)]) == 2
    assert "no runs in it" in capsys.readouterr().err
    assert not out.exists()


def test_jobs_under_torchrun_share_every_run_between_the_ranks_as_one_process_would(setup, tmp_path):
    """``eval infer --jobs`` with two torchrun ranks (the quickstart's ``eval_procs``): each run's records are split
    between the ranks and merged by rank 0 after each run, all in one process group (one made per run would
    rendezvous again on the torchrun store and hang); the rows are those of one process."""
    import os
    import subprocess
    import sys

    for index, run in enumerate(RUNS):
        assert main(["eval", "infer", *shared(setup), *run, "--output", str(tmp_path / f"alone{index}.jsonl")]) == 0
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(shlex.join([*run, "--output", str(tmp_path / f"job{index}.jsonl")]) + "\n"
                            for index, run in enumerate(RUNS)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llavidal",
         "eval", "infer", *shared(setup), "--jobs", str(jobs)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "3 runs from" in result.stdout and "3 complete" in result.stdout
    for index in range(len(RUNS)):
        alone, job = comparable(tmp_path / f"alone{index}.jsonl"), comparable(tmp_path / f"job{index}.jsonl")
        assert [row["id"] for row in job] == [row["id"] for row in alone] and len(job) == (3 if index == 1 else 5)
        for mine, theirs in zip(job, alone):
            scores, expected = mine.pop("option_scores"), theirs.pop("option_scores")
            assert mine == theirs  # predictions, leads, generations
            if expected is not None:
                assert {k: v["loglik"] for k, v in scores.items()} == pytest.approx(
                    {k: v["loglik"] for k, v in expected.items()}, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if "rank" in p.name) == []  # rank files merged away
