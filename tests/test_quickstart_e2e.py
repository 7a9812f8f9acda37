"""End to end: `llavidal quickstart` on the small world with a tiny random LLM, run twice.

The first run goes through every step (world, features, pose pretraining, data, torchrun training,
evaluation, report); the second must skip them all. Quality is not checked here (the LLM is random);
the committed report of a real medium run is docs/quickstart_report/.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pybullet")
pytest.importorskip("av")
pytest.importorskip("sentence_transformers")

STEPS = ["world", "llm", "video", "pose_pretrain", "pose", "object", "mirror", "data", "align", "train", "evaluate", "report"]


def _run(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "llavidal", "quickstart", "--out", str(out), "--preset", "small", "--llm", "tiny",
         "--recipe", "ci", "--workers", "2"],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.mark.timeout(900)
def test_quickstart_small_tiny_runs_every_step_then_skips_them(tmp_path):
    out = tmp_path / "qs"
    first = _run(out)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for step in STEPS:
        assert (out / ".steps" / f"{step}.json").is_file(), f"step {step} left no completion record"

    report_dir = out / "report"
    for name in ("report.md", "report.json", "loss_curve.png", "accuracy_by_modality.png"):
        assert (report_dir / name).is_file(), f"missing {name}"
    report = json.loads((report_dir / "report.json").read_text())
    scorings = report["results"]["mcq"]
    assert set(scorings) == {"loglik", "generate"}
    for scoring, mcq in scorings.items():
        assert set(mcq) == {"recognition", "forecasting", "attributes"}, scoring
        for task, by_set in mcq.items():
            assert set(by_set) == {"video", "pose", "object", "video+pose", "all"}, task
            for set_name, entry in by_set.items():
                assert isinstance(entry["accuracy"], float) and 0.0 <= entry["accuracy"] <= 1.0, (task, set_name, entry)
                assert entry["n"] > 0
        assert set(mcq["attributes"]["all"]["subsets"]) == {"hand", "object", "colour"}
        assert "object_dependent" in mcq["forecasting"]["all"]["subsets"]
    # log-likelihood scoring answers every record of the full sets (video, all) and a subset of the others
    # (the recipe's ablation_limit): no parser, nothing missing
    for by_set in scorings["loglik"].values():
        assert by_set["video"]["n"] == by_set["all"]["n"]
        assert all(entry["n"] <= by_set["all"]["n"] for entry in by_set.values())
        assert all(entry["missing"] == 0 for entry in by_set.values())
        # the same rows ranked by each option's summed log-likelihood, paired with the per-token ranking
        for entry in by_set.values():
            by_sum = entry["by_sum"]
            assert by_sum["n"] == entry["n"] and 0.0 <= by_sum["p"] <= 1.0
            assert by_sum["correct"] - entry["correct"] == by_sum["gained"] - by_sum["lost"]
    markdown = (report_dir / "report.md").read_text()
    assert "log-likelihood" in markdown and "which hand" in markdown and "object-dependent" in markdown
    assert "each option's sum instead of its per-token mean" in markdown
    descriptions = report["results"]["descriptions"]
    assert descriptions is not None and descriptions["n"] > 0
    assert report["training"]["global_steps"] == 4
    assert all(math.isfinite(v) for v in report["step_seconds"].values())
    assert "-m llavidal demo" in first.stdout and "--projection_path" in first.stdout  # the demo command, absolute paths

    # Pose pretraining and the projector alignment saw train-split clips only (held-out subjects stay unseen).
    splits = json.loads((out / "world" / "annotations" / "splits.json").read_text())["cross_subject"]
    pairs = [json.loads(line) for line in (out / "pose_encoder" / "train_pairs.jsonl").read_text().splitlines()]
    assert {p["id"].split("#")[0] for p in pairs} == set(splits["train"])
    # a multi-activity clip is pretrained one segment (frame window) at a time, against that segment's text
    windowed = [p for p in pairs if "start_frame" in p]
    assert windowed and all("#" in p["id"] and 0 <= p["start_frame"] < p["end_frame"] for p in windowed)
    labels = json.loads((out / "data" / "align_labels.json").read_text())
    assert labels and {r["id"].split("#")[0] for r in labels} <= set(splits["train"])
    # ... the mirrored train clips' pose features among them, fitted to the other hand (align_hands)
    mirror_labels = [r for r in labels if r["id"].endswith("#mirror")]
    assert mirror_labels and all(r["pose"].startswith(str(out / "mirror" / "features" / "pose")) and
                                 r["modality_labels"]["pose"].split(" hand, ")[0] in ("left", "right")
                                 for r in mirror_labels)
    assert set(report["alignment"]) >= {"video", "pose"}
    # training started from the aligned projectors
    assert f"--pretrain_mm_mlp_adapter {out / 'align'}" in first.stdout
    # ... on the training conversations and the mirrored clips' hand questions, with the mirror's features
    mirror_features = out / "mirror" / "features"
    assert f"--data_mixture {out / 'data' / 'train.json'}:1,{out / 'data' / 'mirror.json'}:1:video={mirror_features / 'video'}" in first.stdout
    mirrored = json.loads((out / "data" / "mirror.json").read_text())
    trained = len(json.loads((out / "data" / "train.json").read_text()))
    assert f"{trained + len(mirrored)} samples ({trained} + {len(mirrored)} of mirrored clips;" in markdown
    assert mirrored and {s["id"].split("#")[0] for s in mirrored} <= set(splits["train"])
    assert all((mirror_features / "pose" / f"{s['id'].split('#')[0]}_pose.safetensors").is_file() for s in mirrored)
    # MCQ answers are trained as the option's text, which the parser maps back to the letter
    samples = json.loads((out / "data" / "train.json").read_text())
    mcq_answers = [s["conversations"][1]["value"] for s in samples if "Choices are" in s["conversations"][0]["value"]]
    assert mcq_answers and not any(a.startswith("(") for a in mcq_answers)
    # extra forecasting questions: on train clips only; each answer names what the clip ends with, then
    # one of its own options, and the MCQ parser reads that option
    from llavidal.eval.mcq import parse_mcq_answer

    extra = [s for s in samples if "#f" in s["id"]]
    assert extra, "no extra forecasting questions in the training data"
    for sample in extra:
        clip = sample["id"].split("#")[0]
        assert clip in set(splits["train"])
        prompt, answer = sample["conversations"][0]["value"], sample["conversations"][1]["value"]
        meta = json.loads((out / "world" / "meta" / f"{clip}.json").read_text())
        match = re.fullmatch(r"The video ends with (.+)\. The answer is (.+)\.", answer)
        assert match and match.group(1) == meta["segments"][-1]["label"], sample
        choices = dict(re.findall(r"(?m)\(([A-F])\) (.+?)(?= \([A-F]\) |$)", prompt))
        assert "next" in prompt and match.group(2) in choices.values(), sample
        parsed = parse_mcq_answer(answer, choices)
        assert parsed.status == "ok" and choices[parsed.letter] == match.group(2), (sample, parsed)

    second = _run(out)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert second.stdout.count("done already, skipped") == len(STEPS), second.stdout
    assert "$ " not in second.stdout  # no command was run


def test_recipe_settings_from_the_command_line(tmp_path, capsys):
    from llavidal.quickstart import RECIPES, apply_recipe_settings, main

    recipe = apply_recipe_settings(RECIPES["embedded"], [
        "forecast_from_successors=2", "forecast_reasoning=false", "description_fraction=1",
        'record_turns=["recognition", "last"]', "description_limit=None"])
    assert (recipe.forecast_from_successors, recipe.forecast_reasoning, recipe.description_fraction) == (2, False, 1.0)
    assert recipe.record_turns == ("recognition", "last") and recipe.description_limit is None
    assert RECIPES["embedded"].forecast_reasoning is True  # the preset itself is untouched
    for bad, message in (("nope=1", "expected FIELD=VALUE"), ("forecast_reasoning=3", "takes a bool"),
                         ("align_steps=many", "takes an int"), ("name=x", "expected FIELD=VALUE")):
        with pytest.raises(ValueError, match=message):
            apply_recipe_settings(RECIPES["embedded"], [bad])
    assert main(["--out", str(tmp_path / "qs"), "--recipe_set", "align_steps=many"]) == 2
    assert "align_steps takes an int" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()
