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
from fixtures.tiny_adl_data import VIDEO_DIM, VIDEO_TOKENS, write_features

from llavidal.data.feature_store import FeatureManifest, save_features
from llavidal.quickstart.layout import PROTOCOL, Paths
from llavidal.quickstart.recipes import RECIPES

TRAIN = [f"S001C001P001R001A{index:03d}" for index in range(1, 5)]
TEST = ["S001C001P003R001A001", "S001C001P003R001A002", "S001C001P003R001Q001K1"]
ACTIVITIES = ["drinking from a cup", "reading a book", "clapping", "sitting down"]
GRID_FRAMES, GRID_SIDE = 4, 2  # the ci recipe's 4 frames x 2x2 patches


def _mcq(clip: str, index: int, question: str, task: str) -> dict:
    choices = {letter: ACTIVITIES[(index + offset) % len(ACTIVITIES)] for offset, letter in enumerate("ABCD")}
    return {"video_filename": f"{clip}.mp4", "question": question, "answer_choices": choices,
            "ground_truth_letter": "ABCD"[index % 4], "id": clip, "task": task, "label": choices["ABCD"[index % 4]]}


def write_train_annotations(paths: Paths) -> None:
    """The train split's world annotations the video protocol reads (typed record turns, recognition MCQs) and a
    tiny image-instruction set (two JPEGs, LLaVA-format records) with its features already extracted."""
    from PIL import Image

    train_dir = paths.annotations("train")
    records = [{"id": clip, "video": f"{clip}.pkl", "pose": f"{clip}_pose.pkl", "object": f"{clip}_object.pkl",
                "conversations": [{"from": "human", "value": "<video>\nWhat is the person doing?", "type": "recognition"},
                                  {"from": "gpt", "value": f"The person is {ACTIVITIES[i]}."},
                                  {"from": "human", "value": "Describe the video.", "type": "detail"},
                                  {"from": "gpt", "value": "A long description."}]}
               for i, clip in enumerate(TRAIN)]
    (train_dir / "records.json").write_text(json.dumps(records))
    mcqs = [_mcq(clip, i, "What is the person doing?", "action_recognition") for i, clip in enumerate(TRAIN[:3])]
    (train_dir / "mcq_action_recognition.json").write_text(json.dumps(mcqs))
    (train_dir / "images").mkdir()
    image_records = []
    rng = np.random.default_rng(2)
    for clip in TRAIN[:2]:
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(train_dir / "images" / f"{clip}.jpg")
        image_records.append({"id": f"{clip}_frame", "image": f"{clip}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nIs the person standing or sitting?"},
            {"from": "gpt", "value": "The person is standing."}]})
        save_features(paths.features / "image" / f"{clip}.safetensors",
                      rng.standard_normal((VIDEO_TOKENS, VIDEO_DIM)).astype(np.float16))
    (train_dir / "image_records.json").write_text(json.dumps(image_records))
    FeatureManifest.load(paths.video).save(paths.features / "image")  # made like the video features


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
    (paths.data / "mirror.json").write_text("[]")  # the mirrored hand clips' samples (the ablation trains without them)

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
                 "--protocol", "curriculum", "--max_steps", "2", "--preset", "tiny", "--llm", "tiny", "--recipe", "ci", "--train_procs", "1",
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
    commands = (paths.out / "ablation" / "commands.sh").read_text()
    assert "--pretrain_mm_mlp_adapter" in commands
    # every design on padded rows, though the preset packs (PLLaVA's pooling reads whole clips)
    assert "packing: true" in RECIPES["ci"].config_path().read_text()
    assert commands.count("--packing False") == 2

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


@pytest.mark.timeout(300)
def test_ablate_video_protocol_and_images_design(tmp_path, capsys):
    """--protocol video: every design trains on one-turn video-only samples and is evaluated with the video alone;
    the images design trains on the same data with the image-instruction set mixed in (its image samples reach
    the model through --image_folder)."""
    from llavidal.quickstart.ablate import main

    paths = make_quickstart_folder(tmp_path)
    write_train_annotations(paths)
    output = tmp_path / "docs_ablation"
    argv = ["--quickstart_dir", str(paths.out), "--designs", "upstream,images", "--output_dir", str(output),
            "--max_steps", "2", "--train_procs", "1", "--image_weight", "2", "--preset", "tiny", "--llm", "tiny",
            "--recipe", "ci"]
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, (printed.out + printed.err)[-4000:]

    data = json.loads((paths.out / "ablation" / "video_train.json").read_text())
    # 3 MCQs + 4 recognition turns; descriptions are not taken; one turn each, the video alone
    assert len(data) == 7
    assert all(len(r["conversations"]) == 2 and "video" in r and "pose" not in r and "object" not in r for r in data)
    assert {r["conversations"][1]["value"] for r in data} >= {"The person is clapping."}

    report = json.loads((output / "ablation.json").read_text())
    assert report["protocol"] == "video" and report["modality_sets"] == ["video"]
    assert report["training_data"]["samples"] == 7
    for name in ("upstream", "images"):
        assert set(report["designs"][name]["results"]["recognition"]) == {"video"}
        assert report["designs"][name]["results"]["recognition"]["video"]["n"] == 2
    assert report["designs"]["images"]["image_weight"] == 2
    commands = (paths.out / "ablation" / "commands.sh").read_text()
    images_line = next(line for line in commands.splitlines() if "/images/train" in line)
    assert "--data_mixture" in images_line and "image_records.json:2" in images_line and "--image_folder" in images_line
    assert "video_train.json" in images_line
    train_log = (paths.out / "ablation" / "logs" / "train_images.log").read_text()
    assert "image 4" in train_log  # 2 image records at weight 2: each drawn twice per epoch
    table = (output / "ablation.md").read_text()
    assert "Protocol `video`" in table and "image-instruction set" in table and "(all)" not in table
    paired = report["paired_vs_upstream"]["images"]["recognition/video"]
    assert paired["n"] == 2 and paired["base_only"] + paired["other_only"] <= 2 and 0 < paired["p_mcnemar"] <= 1
    assert "| images | " in table.split("(paired)")[1]

    # the quickstart report of the folder shows both rows: images beside upstream, with counts and intervals
    from llavidal.quickstart.report import _ablation, _ablation_section

    ablation = _ablation(paths)
    assert ablation["protocol"] == "video" and ablation["steps"] == 2
    assert [row["design"] for row in ablation["rows"]] == ["upstream", "images"]
    assert ablation["rows"][1]["image_weight"] == 2
    assert all(row["results"]["recognition"]["video"]["n"] == 2 for row in ablation["rows"])
    section = "\n".join(_ablation_section(ablation))
    assert "Paired on the same 2 questions" in section and "(2 steps)" in section
    for name in ("upstream", "images"):
        line = next(line for line in section.splitlines() if line.startswith(f"| {name} |"))
        assert line.count("/2;") == 1 and line.count("/1;") == 1, line
    assert "mixed in (weight 2" in section and "(all)" not in section

    # a world without the image set: the images design is refused with what to do
    (paths.annotations("train") / "image_records.json").unlink()
    assert main(argv) == 2
    assert "predates the image-instruction set" in capsys.readouterr().err


def test_ablate_refuses_unknown_designs_and_other_folders_choices(tmp_path, capsys):
    from llavidal.quickstart.ablate import main

    assert main(["--quickstart_dir", str(tmp_path), "--designs", "upstream,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    (tmp_path / ".steps").mkdir()
    (tmp_path / ".steps" / "world.json").write_text(json.dumps({"settings": {"preset": "small", "seed": 0}}))
    assert main(["--quickstart_dir", str(tmp_path), "--preset", "medium"]) == 2
    assert "was made with preset small" in capsys.readouterr().err
