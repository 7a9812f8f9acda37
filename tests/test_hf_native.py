"""The transformers-native model: `llavidal export` writes a folder that AutoModelForCausalLM loads with
trust_remote_code where `import llavidal` is impossible, and natively once llavidal is imported, with the
logits and generations of LlavidalModel; the processor builds the engine's inputs; the model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from llavidal.model.builder import build_model, load_pretrained
from llavidal.model.config import LlavidalConfig, LoraSettings
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)

DIMS = {"video_dim": 16, "video_tokens": 6, "pose_dim": 12, "pose_tokens": 4, "object_dim": 10}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(weights folder, exported folder): a LoRA model with perturbed projectors, token rows and adapters."""
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.model.export import main as export_main

    root = tmp_path_factory.mktemp("hf")
    base = tiny_causal_lm_dir(root / "llm", "llama")
    model, _ = build_model(base, ModalityRegistry.default(**DIMS), template="chat",
                           lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.05)
    model.config.feature_manifests = {
        "video": FeatureManifest(modality="video", extractor="clip-test", feature_dim=16, shape=[6, 16],
                                 model_id="tiny-clip", pooling="6 tokens").to_dict()}
    weights = root / "weights"
    model.save_pretrained(weights)
    config = LlavidalConfig.from_json_file(weights)
    config.extra = {"data_path": "world/annotations/train.json", "feature_folders": {"video": "features/video"}}
    config.to_json_file(weights)
    (weights / "report.json").write_text(json.dumps({"title": "t", "results": [
        {"name": "ADLMCQ-AR", "kind": "mcq", "metrics": {"accuracy": 61.5, "answered": 13}}]}))
    out = root / "export"
    assert export_main(["--weights", str(weights), "--output_dir", str(out), "--max_shard_size", "40KB"]) == 0
    return weights, out


def _inputs(tokenizer, registry):
    torch.manual_seed(3)
    features = {"video": torch.randn(6, 16), "object": torch.randn(2, 8, 10), "pose": torch.randn(4, 12)}
    text = expand_placeholders("Describe it.\n<video><object><human_pose> The", registry,
                               {"video": 6, "object": 16, "pose": 4})
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    return input_ids, {k: [v] for k, v in features.items()}


@pytest.fixture(scope="module")
def reference(exported):
    """LlavidalModel's logits and greedy tokens on inputs with every modality."""
    weights, _ = exported
    model, tokenizer = load_pretrained(weights)
    input_ids, features = _inputs(tokenizer, model.modalities)
    with torch.no_grad():
        logits = model(input_ids, modality_features=features).logits
    tokens = model.generate(input_ids, modality_features=features, max_new_tokens=5, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return input_ids, features, logits, tokens


def test_folder_is_a_transformers_model(exported):
    _, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llavidal" and config["architectures"] == ["LlavidalForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llavidal.LlavidalForCausalLM"
    assert config["text_config"]["model_type"] == "llama"
    assert set(config["token_ids"]) == {"video", "object", "pose"}
    assert (out / "model.safetensors.index.json").is_file()  # sharded at 40KB
    for name in ("configuration_llavidal.py", "modeling_llavidal.py"):
        code = (out / name).read_text()
        assert "import llavidal" not in code and "from llavidal" not in code, name
    assert (out / "processor_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    card = (out / "README.md").read_text()
    for expected in ("library_name: transformers", "| video | `<video>` | 6 | 16 | linear |", "clip-test",
                     "world/annotations/train.json", "| ADLMCQ-AR | accuracy | 61.5 |", "LoRA r=4"):
        assert expected in card, expected


BLOCKED = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "llavidal" or name.startswith("llavidal."):
                raise ImportError("llavidal is blocked in this test")
    sys.meta_path.insert(0, Block())
    try:
        import llavidal  # noqa: F401
        raise SystemExit("llavidal was importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM
    out, data = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    model.eval()
    with torch.no_grad():
        logits = model(data["input_ids"], modality_features=data["features"]).logits
    tokens = model.generate(data["input_ids"], modality_features=data["features"], max_new_tokens=5,
                            do_sample=False, pad_token_id=data["pad"])
    torch.save({"logits": logits, "tokens": tokens, "class": type(model).__module__,
                "llavidal": sorted(m for m in sys.modules if m.split(".")[0] == "llavidal")}, sys.argv[3])
""")


def test_loads_with_remote_code_where_llavidal_cannot_be_imported(exported, reference, tmp_path):
    _, out = exported
    input_ids, features, logits, tokens = reference
    torch.save({"input_ids": input_ids, "features": features, "pad": 3}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", BLOCKED, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "o.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "o.pt", weights_only=True)
    assert got["llavidal"] == [] and got["class"].startswith("transformers_modules")
    torch.testing.assert_close(got["logits"], logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(got["tokens"], tokens)


def test_loads_natively_once_llavidal_is_imported(exported, reference):
    from transformers import AutoModelForCausalLM

    import llavidal  # noqa: F401  (registers model_type "llavidal")
    from llavidal.model.hf.modeling_llavidal import LlavidalForCausalLM

    _, out = exported
    input_ids, features, logits, tokens = reference
    model = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert type(model) is LlavidalForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids, modality_features=features).logits, logits, atol=1e-5, rtol=1e-5)
        # features as <name>_features keyword arguments, and a loss with labels
        labels = input_ids.clone()
        output = model(input_ids, labels=labels, **{f"{k}_features": v for k, v in features.items()})
    torch.testing.assert_close(output.logits, logits, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(output.loss)
    assert torch.equal(model.generate(input_ids, modality_features=features, max_new_tokens=5, do_sample=False,
                                      pad_token_id=3), tokens)


def test_processor_builds_the_engine_inputs(exported, tmp_path):
    import numpy as np

    from llavidal.model.hf.processing_llavidal import LlavidalProcessor
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    weights, out = exported
    processor = LlavidalProcessor.from_pretrained(out)
    assert processor.feature_manifests["video"]["model_id"] == "tiny-clip"
    rng = np.random.default_rng(0)
    features = {"video": rng.standard_normal((6, 16)).astype(np.float32),
                "pose": rng.standard_normal((4, 12)).astype(np.float32)}
    np.save(tmp_path / "clip_pose.npy", features["pose"])
    inputs = processor(["What is the person doing?", "And now?"],
                       features=[{"video": features["video"], "pose": str(tmp_path / "clip_pose.npy")},
                                 {"video": features["video"]}])
    model, tokenizer = load_pretrained(weights)
    engine = InferenceEngine(model, tokenizer)
    expected, expected_features, _ = engine._encode([GenerationRequest("What is the person doing?", features),
                                                     GenerationRequest("And now?", {"video": features["video"]})])
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    assert torch.equal(inputs["attention_mask"], expected["attention_mask"])
    assert inputs["modality_features"]["pose"][1] is None
    torch.testing.assert_close(inputs["modality_features"]["pose"][0], expected_features["pose"][0])
    processor.save_pretrained(tmp_path / "proc")
    again = LlavidalProcessor.from_pretrained(tmp_path / "proc")
    assert torch.equal(again("What is the person doing?", features=features)["input_ids"][0],
                       expected["input_ids"][0][expected["attention_mask"][0].bool()])
