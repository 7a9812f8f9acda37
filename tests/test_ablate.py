"""``llavidal ablate`` on a minimal quickstart folder: two designs trained with the same budget, evaluated by
log-likelihood, the table with n and 95% intervals; a rerun resumes without retraining.

The folder is what the quickstart's steps leave (world annotations, a tiny LLM, pooled video / pose / object
features, grid features, training data, aligned projectors), written directly with random features, so that the
test takes seconds rather than the minutes of a real quickstart run (tests/test_quickstart_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_adl_data import VIDEO_DIM, write_features

from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.quickstart.layout import PROTOCOL, Paths

TRAIN = [f"S001C001P001R001A{index:03d}" for index in range(1, 5)]
TEST = ["S001C001P003R001A001", "S001C001P003R001A002", "S001C001P003R001Q001K1"]
ACTIVITIES = ["drinking from a cup", "reading a book", "clapping", "sitting down"]
GRID_FRAMES, GRID_SIDE = 4, 2  # the ci recipe's 4 frames x 2x2 patches


def _mcq(clip: str, index: int, question: str, task: str) -> dict:
    choices = {letter: ACTIVITIES[(index + offset) % len(ACTIVITIES)] for offset, letter in enumerate("ABCD")}
    return {"video_filename": f"{clip}.mp4", "question": question, "answer_choices": choices,
            "ground_truth_letter": "ABCD"[index % 4], "id": clip, "task": task, "label": choices["ABCD"[index % 4]]}


def make_quickstart_folder(root: Path) -> Paths:
    """What `llavidal quickstart --preset tiny --llm tiny --recipe ci` leaves before training, with random features."""
    import torch

    from llavidal.model.builder import build_model
    from llavidal.testing import tiny_causal_lm_dir
    from llavidal.train.args import DataArguments, ModelArguments, build_registry

    paths = Paths(root / "qs")
    annotations = paths.world / "annotations"
    for split, ids in (("train", TRAIN), ("test", TEST)):
        (annotations / PROTOCOL / split).mkdir(parents=True)
        (annotations / PROTOCOL / split / "records.json").write_text("[]")
    (annotations / "splits.json").write_text(json.dumps({PROTOCOL: {"train": TRAIN, "val": [], "test": TEST}}))
    (paths.world / "world.json").write_text(json.dumps({"counts": {"clips": 0}}))  # no videos: grids are given
    test_dir = paths.annotations("test")
    recognition = [_mcq(clip, i, "What is the person doing?", "action_recognition") for i, clip in enumerate(TEST[:2])]
    forecasting = [_mcq(TEST[2], 1, "What is the person most likely to do next?", "action_forecasting")]
    (test_dir / "mcq_action_recognition.json").write_text(json.dumps(recognition))
    (test_dir / "mcq_forecasting.json").write_text(json.dumps(forecasting))
    tiny_causal_lm_dir(paths.tiny_llm, "llama")

    records = [{"id": clip, "video": f"{clip}.pkl", "pose": f"{clip}_pose.pkl", "object": f"{clip}_object.pkl",
                "conversations": [{"from": "human", "value": "<video><object><human_pose>\nWhat is the person doing?"},
                                  {"from": "gpt", "value": ACTIVITIES[i % len(ACTIVITIES)]}]}
               for i, clip in enumerate(TRAIN)]
    write_features(paths.features, records + [{"id": clip} for clip in TEST], fmt="safetensors")
    rng = np.random.default_rng(1)
    paths.features.joinpath("video_grid").mkdir()
    for clip in TRAIN + TEST:
        grid = rng.standard_normal((GRID_FRAMES, GRID_SIDE * GRID_SIDE, VIDEO_DIM)).astype(np.float16)
        save_features(paths.features / "video_grid" / f"{clip}.safetensors", grid)
    FeatureManifest(modality="video", extractor="tests.random", feature_dim=VIDEO_DIM,
                    shape=[GRID_FRAMES, GRID_SIDE * GRID_SIDE, VIDEO_DIM]).save(paths.features / "video_grid")
    paths.pose_encoder.mkdir()
    (paths.pose_encoder / "pose_encoder.safetensors").write_bytes(b"")  # only its presence is checked
    paths.data.mkdir()
    (paths.data / "train.json").write_text(json.dumps(records))
    (paths.data / "summary.json").write_text(json.dumps({"samples": len(records)}))

    # the alignment: projectors of the recipe's type for these folders, saved as `llavidal align` saves them
    registry = build_registry(ModelArguments(model_name_or_path=str(paths.tiny_llm), mm_projector_type="mlp2x_gelu"),
                              DataArguments(data_path=str(paths.data / "train.json"), video_folder=str(paths.video),
                                            pose_folder=str(paths.pose), object_folder=str(paths.object)))
    torch.manual_seed(0)
    model, _ = build_model(paths.tiny_llm, registry, template="chat")
    model.save_pretrained(paths.align)
    (paths.align / "align_report.json").write_text("{}")
    return paths


def _ablate(paths: Paths, output: Path, capsys) -> tuple[int, str]:
    from llavidal.quickstart.ablate import main

    code = main(["--quickstart_dir", str(paths.out), "--designs", "upstream,pllava", "--output_dir", str(output),
                 "--max_steps", "2", "--preset", "tiny", "--llm", "tiny", "--recipe", "ci", "--train_procs", "1",
                 "--budget_minutes", "30"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.timeout(300)
def test_ablate_two_designs_table_then_resume(tmp_path, capsys):
    paths = make_quickstart_folder(tmp_path)
    output = tmp_path / "docs_ablation"
    code, printed = _ablate(paths, output, capsys)
    assert code == 0, printed[-4000:]

    report = json.loads((output / "ablation.json").read_text())
    assert list(report["designs"]) == ["upstream", "pllava"]
    assert report["budget"]["max_steps"] == 2 and report["scoring"] == "loglik_norm"
    for name, row in report["designs"].items():
        for task, n in (("recognition", 2), ("forecasting", 1)):
            for set_name in ("video", "all"):
                entry = row["results"][task][set_name]
                assert entry["n"] == n and 0 <= entry["correct"] <= n, (name, task, set_name, entry)
                low, high = entry["ci95"]
                assert 0.0 <= low <= entry["accuracy"] <= high <= 100.0
                rows = [json.loads(line) for line in Path(entry["predictions"]).read_text().splitlines()]
                assert len(rows) == n and all(r["generation"]["mcq_scoring"] == "loglik_norm" for r in rows)
                assert all(r["modalities"] == (["video"] if set_name == "video" else ["object", "pose", "video"])
                           for r in rows)
        trainer_state = json.loads((paths.out / "ablation" / name / "train" / "trainer_state.json").read_text())
        assert trainer_state["global_step"] == 2  # the same budget for both
        assert row["trainable_parameters"] > 0 and row["train_seconds"] > 0 and row["aligned_video_projector"]
    # video tokens: pooled rows (6) vs PLLaVA's pooling of the 4 x 2x2 grid to 2 x 2 x 2
    assert report["designs"]["upstream"]["video_tokens"] == 6
    assert report["designs"]["pllava"]["video_tokens"] == 8
    assert report["designs"]["pllava"]["video_features"] == "grid"
    pllava_config = json.loads((paths.out / "ablation" / "pllava" / "train" / "llavidal_config.json").read_text())
    assert pllava_config["modalities"][0]["design"]["pool"] == [2, 2, 2]
    assert "--pretrain_mm_mlp_adapter" in (paths.out / "ablation" / "commands.sh").read_text()

    table = (output / "ablation.md").read_text()
    for name in ("upstream", "pllava"):
        line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert line.count("/2;") == 2 and line.count("/1;") == 2, line  # correct/n with an interval, each cell
    assert "95% Wilson interval" in table
    assert "within the budget of 30 min" in printed

    # a rerun trains and evaluates nothing again and writes the same table
    steps = {p.name: p.stat().st_mtime_ns for p in (paths.out / "ablation" / ".steps").iterdir()}
    code, printed = _ablate(paths, output, capsys)
    assert code == 0, printed[-4000:]
    assert printed.count("done already, skipped") == 4 and "$ " not in printed
    assert {p.name: p.stat().st_mtime_ns for p in (paths.out / "ablation" / ".steps").iterdir()} == steps
    again = json.loads((output / "ablation.json").read_text())
    assert again["designs"] == report["designs"]


def test_ablate_refuses_unknown_designs_and_other_folders_choices(tmp_path, capsys):
    from llavidal.quickstart.ablate import main

    assert main(["--quickstart_dir", str(tmp_path), "--designs", "upstream,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    (tmp_path / ".steps").mkdir()
    (tmp_path / ".steps" / "world.json").write_text(json.dumps({"settings": {"preset": "small", "seed": 0}}))
    assert main(["--quickstart_dir", str(tmp_path), "--preset", "medium"]) == 2
    assert "was made with preset small" in capsys.readouterr().err
