"""Coming from Video-ChatGPT / LLAVIDAL / the Breakfast fork: their weights as they are, and apply_delta.

The commands are the upstream READMEs' (paths changed, tiny sizes):
    python scripts/apply_delta.py --base-model-path B --target-model-path T --delta-path D
    python llavidal/demo/video_demo.py --model-name LLM --projection_path mm_projector.bin
    llavidal eval infer ... --model-name LLM --projection_path mm_projector.bin
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llavidal.data.feature_store import save_pickle_features
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 32  # llavidal.testing.tiny_config
EMBEDDED_DIM = 256  # the embedded vision encoder's feature dim (256 patches per frame, as CLIP ViT-L/14)
VIDEO_TOKENS = 356  # upstream: 100 temporal + 256 spatial


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_causal_lm_dir(tmp_path_factory.mktemp("upstream") / "llm")


def video_chatgpt_projector(feature_dim: int = EMBEDDED_DIM, seed: int = 0) -> dict[str, torch.Tensor]:
    """What Video-ChatGPT's training saves as mm_projector.bin (projector only, upstream key names)."""
    generator = torch.Generator().manual_seed(seed)
    return {"model.mm_projector.weight": torch.randn(HIDDEN, feature_dim, generator=generator) * 0.02,
            "model.mm_projector.bias": torch.randn(HIDDEN, generator=generator) * 0.02}


def saved(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# --------------------------------------------------------------------------------------- apply_delta


def make_delta(base: Path, folder: Path, extra_rows: int = 3) -> dict[str, torch.Tensor]:
    """A LLaVA-style delta of ``base``: a random difference per tensor, ``extra_rows`` added-token rows in
    embed_tokens / lm_head, a projector only the delta has; saved as two torch .bin shards with an index,
    the config and a tokenizer with the added tokens."""
    from transformers import AutoTokenizer

    from llavidal.model.weights import read_weights

    generator = torch.Generator().manual_seed(1)
    delta = {}
    for key, value in read_weights(base).items():
        shape = list(value.shape)
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            shape[0] += extra_rows
        delta[key] = torch.randn(shape, generator=generator) * 0.01
    delta["model.mm_projector.weight"] = torch.randn(HIDDEN, 16, generator=generator)
    delta["model.mm_projector.bias"] = torch.randn(HIDDEN, generator=generator)
    folder.mkdir(parents=True)
    keys = sorted(delta)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, names in shards.items():
        torch.save({k: delta[k] for k in names}, folder / name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, names in shards.items() for k in names}}))
    config = json.loads((base / "config.json").read_text())
    config["vocab_size"] += extra_rows
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(["<vid_patch>", "<vid_start>", "<vid_end>"], special_tokens=True)
    tokenizer.save_pretrained(folder)
    return delta


def hand_sum(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The expected target, written out case by case, in float16 as upstream stores it."""
    expected = {}
    for key, d in delta.items():
        if key not in base:
            expected[key] = d.clone()  # the projector: kept as it is
        elif base[key].shape == d.shape:
            expected[key] = base[key].float() + d.float()
        else:  # added tokens: the base's rows summed, the extra rows the delta's own
            rows = base[key].shape[0]
            expected[key] = torch.cat([base[key].float() + d[:rows].float(), d[rows:].float()])
    return {k: v.half() for k, v in expected.items()}


def test_apply_delta_script_matches_a_hand_computed_sum(tmp_path, llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llavidal.model.weights import read_weights

    base_state = read_weights(llm)
    delta = make_delta(llm, tmp_path / "delta")
    target = tmp_path / "target"
    done = subprocess.run(
        [sys.executable, "scripts/apply_delta.py", "--base-model-path", str(llm), "--target-model-path", str(target),
         "--delta-path", str(tmp_path / "delta")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "grown (added-token rows):  2" in done.stdout

    result = read_weights(target)
    expected = hand_sum(base_state, delta)
    assert sorted(result) == sorted(expected)
    for key, value in expected.items():
        assert result[key].dtype == torch.float16, key
        torch.testing.assert_close(result[key], value, rtol=0, atol=0, msg=key)
    vocab = base_state["model.embed_tokens.weight"].shape[0]
    assert torch.equal(result["model.embed_tokens.weight"][vocab:], delta["model.embed_tokens.weight"][vocab:].half())

    # A usable model: the delta's config and tokenizer (with its added tokens) came along.
    config = json.loads((target / "config.json").read_text())
    assert config["vocab_size"] == vocab + 3 and config["torch_dtype"] == "float16"
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert len(tokenizer) == vocab + 3 and tokenizer.convert_tokens_to_ids("<vid_end>") == vocab + 2
    model = AutoModelForCausalLM.from_pretrained(target)  # the projector key is unused by the plain LLM
    assert model.get_input_embeddings().weight.shape == (vocab + 3, HIDDEN)


def test_apply_delta_command_shards_and_refuses_mistakes(tmp_path, llm, capsys):
    from llavidal.cli import main as cli
    from llavidal.model.weights import read_weights, write_weights

    make_delta(llm, tmp_path / "delta")
    one = tmp_path / "one"
    assert cli(["apply-delta", "--base_model_path", str(llm), "--target_model_path", str(one),
                "--delta_path", str(tmp_path / "delta"), "--dtype", "float32"]) == 0
    many = tmp_path / "many"
    assert cli(["apply-delta", "--base-model-path", str(llm), "--target-model-path", str(many),
                "--delta-path", str(tmp_path / "delta"), "--dtype", "float32", "--max_shard_size_gb", "0.00002"]) == 0
    shards = sorted(p.name for p in many.glob("model-*.safetensors"))
    assert len(shards) > 1 and (many / "model.safetensors.index.json").is_file()
    single, sharded = read_weights(one), read_weights(many)
    assert sorted(single) == sorted(sharded) and all(torch.equal(single[k], sharded[k]) for k in single)
    assert single["model.norm.weight"].dtype == torch.float32

    # A target that already holds weights is not silently mixed with the new ones.
    assert cli(["apply-delta", "--base-model-path", str(llm), "--target-model-path", str(one),
                "--delta-path", str(tmp_path / "delta")]) == 2
    assert "already holds weights" in capsys.readouterr().err

    # A delta made against another base: the tensor and both shapes are named.
    bad = tmp_path / "bad_delta"
    bad.mkdir()
    write_weights({"model.norm.weight": torch.zeros(HIDDEN + 1)}, bad / "model.safetensors")
    (bad / "config.json").write_text((llm / "config.json").read_text())
    assert cli(["apply-delta", "--base-model-path", str(llm), "--target-model-path", str(tmp_path / "t2"),
                "--delta-path", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.norm.weight: base (32,) and delta (33,) cannot be added" in err


# --------------------------------------------------------------------------------------- upstream weights


def test_engine_infers_the_model_from_upstream_weights(tmp_path, llm):
    from llavidal.model.builder import config_from_upstream_weights
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    state = video_chatgpt_projector()
    file = saved(state, tmp_path / "videochatgpt" / "mm_projector.bin")
    for path in (file, file.parent):  # the file, or a folder holding only it
        engine = InferenceEngine.from_pretrained(path, base_model=str(llm), device="cpu")
        spec = engine.modalities["video"]
        assert engine.modalities.names() == ["video"] and engine.template == "llavidal_v1"
        assert (spec.feature_dim, spec.num_tokens, spec.projector_type) == (EMBEDDED_DIM, VIDEO_TOKENS, "linear")
        assert torch.equal(engine.model.projectors["video"].weight, state["model.mm_projector.weight"])
    answer = engine.generate([GenerationRequest("What is the person doing?", {"video": np.zeros((356, 256))})],
                             max_new_tokens=3)
    assert len(answer) == 1

    # LLAVIDAL's merged stages: per-modality projectors (an MLP among them) and the full embedding matrix,
    # from which the modality tokens' rows are taken; as safetensors. The Breakfast fork's model.bin may
    # carry modules this model does not have: they are named and left out.
    generator = torch.Generator().manual_seed(2)
    merged = {
        **video_chatgpt_projector(1024),
        "model.mm_projector_forpose.0.weight": torch.randn(HIDDEN, 216, generator=generator),
        "model.mm_projector_forpose.0.bias": torch.zeros(HIDDEN),
        "model.mm_projector_forpose.2.weight": torch.randn(HIDDEN, HIDDEN, generator=generator),
        "model.mm_projector_forpose.2.bias": torch.zeros(HIDDEN),
        "model.mm_projector_forobject.weight": torch.randn(HIDDEN, 512, generator=generator),
        "model.mm_projector_forobject.bias": torch.zeros(HIDDEN),
        "model.embed_tokens.weight": torch.randn(600, HIDDEN, generator=generator),
    }
    config = config_from_upstream_weights(saved(merged, tmp_path / "llavidal" / "mm_projector.safetensors"), llm)
    registry = config.registry
    assert registry.names() == ["video", "object", "pose"] and config.template == "v1"
    assert [(s.feature_dim, s.projector_type) for s in registry] == [(1024, "linear"), (512, "linear"),
                                                                      (216, "mlp2x_gelu")]
    assert (registry["pose"].num_tokens, registry["object"].group_size) == (256, 8)
    breakfast = saved({**merged, "model.video_pos_embedding.0": torch.zeros(1000, 1024)},
                      tmp_path / "breakfast" / "model.bin")
    engine = InferenceEngine.from_pretrained(breakfast.parent, base_model=str(llm), device="cpu")
    assert engine.model.config.extra["ignored_keys"] == ["model.video_pos_embedding.0"]
    pose_id = engine.model.token_ids["pose"]["start"]
    assert torch.equal(engine.model.token_embeddings["pose"][1], merged["model.embed_tokens.weight"][pose_id])


def write_mcq_fixture(root: Path) -> tuple[Path, Path]:
    """Three ADLMCQ records and upstream video pickles of (356, 256)."""
    videos = root / "features"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        save_pickle_features(videos / f"v{i}.pkl", rng.standard_normal((VIDEO_TOKENS, EMBEDDED_DIM)).astype(np.float16))
        records.append({"video_filename": f"v{i}.mp4", "question": "What happens next?",
                        "answer_choices": {"A": "sit down", "B": "stand up"}, "ground_truth_letter": "AB"[i % 2]})
    (root / "mcq.json").write_text(json.dumps(records))
    return root / "mcq.json", videos


def infer_args(records: Path, videos: Path, weights: Path | str, out: Path, llm: Path | None) -> list[str]:
    args = ["infer", "--benchmark", "adlmcq_forecasting", "--gt_file", str(records), "--projection_path", str(weights),
            "--video_folder", str(videos), "--output", str(out), "--max_new_tokens", "3", "--device", "cpu"]
    return args + (["--model-name", str(llm)] if llm is not None else [])


def test_eval_infer_on_a_bare_mm_projector_file_and_folder(tmp_path, llm, capsys):
    from llavidal.eval.commands import main as eval_main
    from llavidal.utils.io import read_jsonl

    records, videos = write_mcq_fixture(tmp_path)
    file = saved(video_chatgpt_projector(), tmp_path / "weights" / "mm_projector.bin")
    for name, weights in (("file", file), ("folder", file.parent)):
        out = tmp_path / f"{name}.jsonl"
        assert eval_main(infer_args(records, videos, weights, out, llm)) == 0, capsys.readouterr().err
        rows = read_jsonl(out)
        assert [row["status"] for row in rows] == ["ok"] * 3 and rows[0]["modalities"] == ["video"]

    # Without the base LLM, or with a projector whose dims cannot be read: one clear line, exit 2.
    assert eval_main(infer_args(records, videos, file, tmp_path / "x.jsonl", None)) == 2
    assert "do not say which base LLM they sit on; pass its folder with --model-name" in capsys.readouterr().err
    odd = saved({"model.mm_projector.weight": torch.zeros(HIDDEN)}, tmp_path / "odd" / "mm_projector.bin")
    assert eval_main(infer_args(records, videos, odd, tmp_path / "y.jsonl", llm)) == 2
    err = capsys.readouterr().err
    assert f"{odd}: cannot infer the video projector's dims" in err and "Traceback" not in err
    other = saved({"model.layers.0.mlp.weight": torch.zeros(4, 4)}, tmp_path / "other" / "model.bin")
    assert eval_main(infer_args(records, videos, other, tmp_path / "z.jsonl", llm)) == 2
    assert "no projector weights found" in capsys.readouterr().err
    wide = saved({"model.mm_projector.weight": torch.zeros(64, EMBEDDED_DIM)}, tmp_path / "wide" / "mm_projector.bin")
    assert eval_main(infer_args(records, videos, wide, tmp_path / "w.jsonl", llm)) == 2
    assert "output 64-d embeddings, but the base LLM" in capsys.readouterr().err


def test_demo_loads_a_bare_mm_projector_file(tmp_path, llm, capsys):
    from demo_helpers import make_video

    from llavidal.demo.features import DemoFeaturePipeline, IncompatibleProjectorError
    from llavidal.demo.video_demo import load_demo, main, parse_demo_args
    from llavidal.demo.video_io import VideoLimits
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    file = saved(video_chatgpt_projector(), tmp_path / "weights" / "mm_projector.bin")
    args = parse_demo_args(["--model-name", str(llm), "--projection_path", str(file), "--device", "cpu"])
    app, settings = load_demo(args, VideoLimits(), ())
    assert app is not None and "video (256-d)" in settings.model_description

    # No recorded manifest: the upstream recipe (100 temporal + 256 spatial tokens) with the named encoder.
    engine = InferenceEngine.from_pretrained(file, base_model=str(llm), device="cpu")
    pipeline = DemoFeaturePipeline.for_weights(file, engine.modalities, options={"video": {"encoder": "embedded"}},
                                               device="cpu")
    features = pipeline.extract(make_video(tmp_path / "clip.mp4", frames=6)).features
    assert features["video"].shape == (VIDEO_TOKENS, EMBEDDED_DIM)
    assert len(engine.generate([GenerationRequest("What happens?", features)], max_new_tokens=2)) == 1

    # Real upstream weights are 1024-d (CLIP ViT-L/14): the embedded encoder does not fit, and the user is told
    # to pass a CLIP folder.
    clip_sized = saved(video_chatgpt_projector(1024), tmp_path / "clip_sized" / "mm_projector.bin")
    args = parse_demo_args(["--model-name", str(llm), "--projection_path", str(clip_sized), "--device", "cpu"])
    with pytest.raises(IncompatibleProjectorError, match=r"1024-d features.*--vision_tower_name PATH"):
        load_demo(args, VideoLimits(), ())
    assert main(["--model-name", str(llm), "--projection_path", str(clip_sized), "--device", "cpu", "--port", "0"]) == 2
    assert "CLIP ViT-L/14 folder" in capsys.readouterr().err
