"""Weights on disk: save/reload to identical logits (frozen, LoRA, full), upstream mm_projector.bin,
merge_weights (later keys win), export of a standalone folder, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llavidal.model.builder import build_model, load_pretrained
from llavidal.model.config import CONFIG_NAME, TRAINABLE_NAME, LoraSettings
from llavidal.model.merge import main as merge_main
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)

DIMS = dict(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tiny_causal_lm_dir(tmp_path_factory.mktemp("base") / "llm", "llama")


def registry(names=None) -> ModalityRegistry:
    return ModalityRegistry.default(names, **DIMS)


def inputs(tokenizer, reg: ModalityRegistry):
    torch.manual_seed(3)
    features = {"video": torch.randn(6, 16), "object": torch.randn(2, 8, 10), "pose": torch.randn(4, 12)}
    features = {k: v for k, v in features.items() if k in reg}
    rows = {k: (v.shape[0] * v.shape[1] if v.dim() == 3 else v.shape[0]) for k, v in features.items()}
    text = expand_placeholders("Describe it.\n<video><object><human_pose> The", reg, rows)
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    return input_ids, {k: [v] for k, v in features.items()}


def logits(model, input_ids, features):
    model.eval()
    with torch.no_grad():
        return model(input_ids, modality_features=features).logits


def randomize(model):
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.requires_grad:
                param.normal_(std=0.05)


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_save_and_reload_gives_identical_logits(base_dir, tmp_path, mode):
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]) if mode == "lora" else None
    model, tokenizer = build_model(base_dir, registry(), freeze_llm=mode != "full", lora=lora, template="chat")
    randomize(model)  # every trainable tensor (LoRA B included) away from its initial value
    input_ids, features = inputs(tokenizer, model.modalities)
    expected = logits(model, input_ids, features)
    model.save_pretrained(tmp_path / "w")
    assert (tmp_path / "w" / CONFIG_NAME).is_file() and (tmp_path / "w" / TRAINABLE_NAME).is_file()
    assert (tmp_path / "w" / "llm").is_dir() == (mode == "full")
    saved = json.loads((tmp_path / "w" / CONFIG_NAME).read_text())
    assert saved["template"] == "chat" and [m["name"] for m in saved["modalities"]] == ["video", "object", "pose"]

    reloaded, tokenizer2 = load_pretrained(tmp_path / "w")
    assert reloaded.token_ids == model.token_ids and len(tokenizer2) == len(tokenizer)
    torch.testing.assert_close(logits(reloaded, input_ids, features), expected, atol=0, rtol=0)


def test_moved_base_needs_override(base_dir, tmp_path):
    model, _ = build_model(base_dir, registry(["video"]))
    model.save_pretrained(tmp_path / "w")
    config_file = tmp_path / "w" / CONFIG_NAME
    data = json.loads(config_file.read_text())
    data["base_model"] = str(tmp_path / "gone")
    config_file.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="pass base_model"):
        load_pretrained(tmp_path / "w")
    reloaded, _ = load_pretrained(tmp_path / "w", base_model=str(base_dir))
    assert reloaded.config.base_model == str(base_dir)


def upstream_state(model, seed: int = 5) -> dict[str, torch.Tensor]:
    """An upstream LLAVIDAL mm_projector.bin: model.mm_projector*.{weight,bias} + the full embedding matrix."""
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    dims = {"mm_projector": 16, "mm_projector_forobject": 10, "mm_projector_forpose": 12}
    state = {}
    for key, dim in dims.items():
        state[f"model.{key}.weight"] = torch.randn(hidden, dim, generator=generator)
        state[f"model.{key}.bias"] = torch.randn(hidden, generator=generator)
    state["model.embed_tokens.weight"] = torch.randn(vocab, hidden, generator=generator)
    return state


def test_upstream_mm_projector_bin_loads_into_the_right_modules(base_dir, tmp_path):
    model, _ = build_model(base_dir, registry())
    state = upstream_state(model)
    torch.save(state, tmp_path / "mm_projector.bin")
    report = model.load_trainable(tmp_path / "mm_projector.bin", strict=True)
    assert not report.missing
    torch.testing.assert_close(model.projectors["video"].weight, state["model.mm_projector.weight"])
    torch.testing.assert_close(model.projectors["pose"].bias, state["model.mm_projector_forpose.bias"])
    torch.testing.assert_close(model.projectors["object"].weight, state["model.mm_projector_forobject.weight"])
    for name, ids in model.token_ids.items():
        rows = state["model.embed_tokens.weight"][[ids["patch"], ids["start"], ids["end"]]]
        torch.testing.assert_close(model.token_embeddings[name].detach(), rows)

    # Without the "model." prefix, through the builder flag, into a video+pose model (object skipped).
    bare = {k[len("model."):]: v for k, v in state.items()}
    torch.save(bare, tmp_path / "bare.bin")
    small, _ = build_model(base_dir, registry(["video", "pose"]), pretrain_mm_mlp_adapter=tmp_path / "bare.bin")
    torch.testing.assert_close(small.projectors["video"].weight, state["model.mm_projector.weight"])


def test_bad_weight_files_fail_clearly(base_dir, tmp_path):
    model, _ = build_model(base_dir, registry(["video"]))
    torch.save({"model.mm_projector.weight": torch.zeros(32, 16), "model.something_else": torch.zeros(1)},
               tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="something_else"):
        model.load_trainable(tmp_path / "odd.bin")
    torch.save({"model.mm_projector.weight": torch.zeros(32, 99)}, tmp_path / "shape.bin")
    with pytest.raises(ValueError, match=r"projectors.video.weight: file \(32, 99\) vs model \(32, 16\)"):
        model.load_trainable(tmp_path / "shape.bin")
    torch.save({"model.mm_projector.weight": torch.zeros(32, 16)}, tmp_path / "partial.bin")
    with pytest.raises(ValueError, match="projectors.video.bias"):
        model.load_trainable(tmp_path / "partial.bin", strict=True)
    assert "projectors.video.bias" in model.load_trainable(tmp_path / "partial.bin").missing
    with pytest.raises(FileNotFoundError, match="neither"):
        model.load_trainable(tmp_path)


def test_merge_weights_later_keys_win(base_dir, tmp_path):
    # Stage files: video alone, pose alone, then video again (its keys must win).
    stages = []
    for index, names in enumerate((["video"], ["pose"], ["video"])):
        model, _ = build_model(base_dir, registry(names))
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.fill_(float(index + 1))
        model.save_pretrained(tmp_path / f"stage{index}")
        stages.append(tmp_path / f"stage{index}")
    out = tmp_path / "merged" / TRAINABLE_NAME
    assert merge_main(["--inputs", *map(str, stages), "--output", str(out)]) == 0
    full, _ = build_model(base_dir, registry(["video", "pose"]), pretrain_mm_mlp_adapter=out)
    assert torch.all(full.projectors["video"].weight == 3.0) and torch.all(full.token_embeddings["video"] == 3.0)
    assert torch.all(full.projectors["pose"].weight == 2.0) and torch.all(full.token_embeddings["pose"] == 2.0)

    # Upstream files merge into an upstream-named .bin, through the script at its upstream path.
    a = {"model.mm_projector.weight": torch.ones(2, 2), "model.mm_projector.bias": torch.ones(2)}
    b = {"mm_projector.weight": torch.full((2, 2), 2.0), "model.mm_projector_forpose.weight": torch.zeros(2, 2)}
    torch.save(a, tmp_path / "a.bin")
    torch.save(b, tmp_path / "b.bin")
    script = Path(__file__).resolve().parents[1] / "scripts" / "merge_weights.py"
    subprocess.run([sys.executable, str(script), "--inputs", str(tmp_path / "a.bin"), str(tmp_path / "b.bin"),
                    "--output", str(tmp_path / "up" / "mm_projector.bin")], check=True, capture_output=True)
    merged = torch.load(tmp_path / "up" / "mm_projector.bin", weights_only=True)
    assert set(merged) == {"model.mm_projector.weight", "model.mm_projector.bias", "model.mm_projector_forpose.weight"}
    assert torch.all(merged["model.mm_projector.weight"] == 2.0) and torch.all(merged["model.mm_projector.bias"] == 1.0)


def test_export_standalone_folder(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llavidal.model.export import main as export_main

    model, tokenizer = build_model(base_dir, registry(), lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    randomize(model)
    input_ids, features = inputs(tokenizer, model.modalities)
    expected = logits(model, input_ids, features)
    model.save_pretrained(tmp_path / "w")
    assert export_main(["--weights", str(tmp_path / "w"), "--output", str(tmp_path / "export")]) == 0
    exported, _ = load_pretrained(tmp_path / "export")
    assert exported.config.lora is None
    torch.testing.assert_close(logits(exported, input_ids, features), expected, atol=1e-5, rtol=1e-5)
    text_model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert text_model.get_input_embeddings().weight.shape[0] == model.llm.get_input_embeddings().weight.shape[0]


def test_full_finetune_checkpoint_resumes_llm_weights(base_dir, tmp_path):
    model, tokenizer = build_model(base_dir, registry(["video"]), freeze_llm=False)
    randomize(model)  # LLM weights too (full fine-tuning)
    input_ids, features = inputs(tokenizer, model.modalities)
    expected = logits(model, input_ids, features)
    model.save_pretrained(tmp_path / "checkpoint-1")
    fresh, _ = build_model(base_dir, registry(["video"]), freeze_llm=False)
    assert not torch.equal(logits(fresh, input_ids, features), expected)
    fresh.load_trainable(tmp_path / "checkpoint-1", strict=True)  # what the trainer does on resume
    torch.testing.assert_close(logits(fresh, input_ids, features), expected, atol=0, rtol=0)
