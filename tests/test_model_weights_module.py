"""llavidal.model.weights: every upstream key layout into our parts, the one reader and writer, and the
merge-weights command through the ``llavidal`` dispatcher (tiny tensors built here, no LLM)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llavidal.cli import main as cli_main
from llavidal.model import weights
from llavidal.model.modality import ModalityRegistry
from llavidal.model.weights import (
    canonicalize,
    plan_load,
    read_weights,
    split_llava_v1_state,
    to_upstream_keys,
    write_weights,
)

torch.set_num_threads(1)

HIDDEN = 4


def registry(names=None) -> ModalityRegistry:
    return ModalityRegistry.default(names, video_dim=3, video_tokens=2, pose_dim=5, pose_tokens=2, object_dim=6)


def projector(dim: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(HIDDEN, dim, generator=generator), "bias": torch.randn(HIDDEN, generator=generator)}


# ---------------------------------------------------------------------------------------------------
# Key layouts


def test_video_chatgpt_mm_projector_bin():
    video = projector(3, 0)
    for prefix in ("model.", ""):  # Video-ChatGPT saves with the prefix; hand-made files often without
        state = {f"{prefix}mm_projector.{k}": v for k, v in video.items()}
        canonical = canonicalize(state, registry(["video"]))
        assert set(canonical.projectors) == {"video"}
        assert canonical.projectors["video"]["weight"] is video["weight"]
        assert canonical.origin["projectors.video.bias"] == f"{prefix}mm_projector.bias"
        assert not (canonical.unexpected or canonical.token_rows or canonical.lora or canonical.skipped_modalities)


def test_llavidal_per_modality_projectors_and_full_matrix():
    matrix = torch.randn(20, HIDDEN)
    state = {"model.mm_projector.weight": torch.zeros(HIDDEN, 3), "model.mm_projector_forpose.weight": torch.ones(HIDDEN, 5),
             "model.mm_projector_forobject.bias": torch.ones(HIDDEN), "model.embed_tokens.weight": matrix}
    canonical = canonicalize(state, registry())
    assert set(canonical.projectors) == {"video", "pose", "object"}
    assert torch.equal(canonical.projectors["pose"]["weight"], torch.ones(HIDDEN, 5))
    assert canonical.full_embedding is matrix and canonical.full_embedding_key == "model.embed_tokens.weight"

    # A model without object: its weights are skipped, not errors (staged training merges every projector).
    small = canonicalize(state, registry(["video", "pose"]))
    assert set(small.projectors) == {"video", "pose"} and small.skipped_modalities == ["object"]
    assert set(canonicalize(state).projectors) == {"video", "pose", "object"}  # no registry: all kept


def test_llava_v1_checkpoint_layout():
    state = {"model.mm_projector.weight": torch.zeros(HIDDEN, 3), "model.mm_projector.bias": torch.zeros(HIDDEN),
             "model.embed_tokens.weight": torch.zeros(10, HIDDEN), "model.vision_tower.encoder.weight": torch.zeros(2),
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2), "model.norm.weight": torch.zeros(HIDDEN),
             "lm_head.weight": torch.zeros(10, HIDDEN)}
    # As a projector file: the vision tower and rotary buffers are dropped; LLaMA weights fit nothing here.
    canonical = canonicalize(state, registry(["video"]))
    assert set(canonical.projectors["video"]) == {"weight", "bias"} and canonical.full_embedding is not None
    assert sorted(canonical.dropped) == ["model.layers.0.self_attn.rotary_emb.inv_freq", "model.vision_tower.encoder.weight"]
    assert sorted(canonical.unexpected) == ["lm_head.weight", "model.norm.weight"]
    # As the base LLM: projector apart (prefix removed), the rest is the LLaMA's own (embed_tokens included).
    llama, projector_state = split_llava_v1_state(state)
    assert set(projector_state) == {"mm_projector.weight", "mm_projector.bias"}
    assert set(llama) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


def test_our_layout_and_merged_stages():
    rows = torch.randn(3, HIDDEN)
    ours = {"projectors.video.weight": torch.zeros(HIDDEN, 3), "projectors.pose.0.weight": torch.zeros(HIDDEN, 5),
            "token_embeddings.video": rows, "token_embeddings.object": rows,
            "lora.base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2, HIDDEN)}
    canonical = canonicalize(ours, registry(["video", "pose"]))
    assert canonical.projectors == {"video": {"weight": ours["projectors.video.weight"]},
                                    "pose": {"0.weight": ours["projectors.pose.0.weight"]}}
    assert set(canonical.token_rows) == {"video"} and canonical.skipped_modalities == ["object"]
    assert set(canonical.lora) == {"base_model.model.layers.0.q_proj.lora_A.weight"}

    # What merge-weights writes from mixed inputs: our names plus an upstream full matrix.
    merged = {"projectors.video.weight": torch.zeros(HIDDEN, 3), "model.embed_tokens.weight": torch.zeros(10, HIDDEN),
              "model.projectors.pose.bias": torch.zeros(HIDDEN)}
    canonical = canonicalize(merged, registry(["video", "pose"]))
    assert set(canonical.projectors) == {"video", "pose"} and canonical.full_embedding is not None


def test_upstream_names_round_trip_and_refuse_our_token_rows():
    state = {"mm_projector.weight": torch.zeros(1), "projectors.pose.bias": torch.zeros(1),
             "model.embed_tokens.weight": torch.zeros(1)}
    assert set(to_upstream_keys(state)) == {"model.mm_projector.weight", "model.mm_projector_forpose.bias",
                                            "model.embed_tokens.weight"}
    with pytest.raises(ValueError, match="no upstream name"):
        to_upstream_keys({"token_embeddings.video": torch.zeros(3, HIDDEN)})


def test_plan_load_checks_names_then_shapes():
    projector_state = {"video.weight": torch.zeros(HIDDEN, 3), "video.bias": torch.zeros(HIDDEN)}
    token_ids = {"video": {"patch": 7, "start": 8, "end": 9}}
    kwargs = dict(projector_state=projector_state, token_ids=token_ids, hidden_size=HIDDEN,
                  projector_types={"video": "linear"}, source="f.bin")
    matrix = torch.arange(10 * HIDDEN, dtype=torch.float32).reshape(10, HIDDEN)
    own_rows = torch.ones(3, HIDDEN)
    plan = plan_load(canonicalize({"mm_projector.weight": torch.ones(HIDDEN, 3), "embed_tokens.weight": matrix}),
                     **kwargs)
    assert set(plan.projectors) == {"video.weight"} and torch.equal(plan.token_rows["video"], matrix[7:10])
    plan = plan_load(canonicalize({"embed_tokens.weight": matrix, "token_embeddings.video": own_rows}), **kwargs)
    assert torch.equal(plan.token_rows["video"], own_rows)  # explicit rows win over the full matrix
    with pytest.raises(ValueError, match=r"f.bin: 1 key\(s\) match nothing.*mm_projector.0.weight.*'video': 'linear'"):
        plan_load(canonicalize({"model.mm_projector.0.weight": torch.ones(HIDDEN, 3)}), **kwargs)
    with pytest.raises(ValueError, match=r"projectors.video.weight: file \(4, 9\) vs model \(4, 3\)"):
        plan_load(canonicalize({"mm_projector.weight": torch.ones(HIDDEN, 9)}), **kwargs)
    with pytest.raises(ValueError, match=r"embed_tokens.weight: file \(5, 4\); needs \(> 9, 4\)"):
        plan_load(canonicalize({"embed_tokens.weight": torch.zeros(5, HIDDEN)}), **kwargs)


# ---------------------------------------------------------------------------------------------------
# Reading and writing


def test_reader_formats(tmp_path, monkeypatch):
    state = {"a": torch.randn(3, 2), "b.c": torch.arange(4)}
    save_file(state, str(tmp_path / "x.safetensors"))
    torch.save(state, tmp_path / "x.bin")  # a zip checkpoint: memory-mapped
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # read whole
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    for name in ("x.safetensors", "x.bin", "legacy.pt"):
        loaded = read_weights(tmp_path / name)
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state), name
    assert [(k["weights_only"], k.get("mmap", False)) for k in calls] == [(True, True), (True, False)]
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        read_weights(tmp_path / "gone.bin")


def test_reader_sharded_folders(tmp_path):
    indexed = tmp_path / "indexed"
    indexed.mkdir()
    save_file({"a": torch.zeros(2)}, str(indexed / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(2)}, str(indexed / "model-00002-of-00002.safetensors"))
    (indexed / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert set(read_weights(indexed)) == {"a", "b"}
    assert set(read_weights(indexed / "model.safetensors.index.json")) == {"a", "b"}

    bare = tmp_path / "bare"  # shards without an index: their names say how many there are
    bare.mkdir()
    torch.save({"a": torch.zeros(2)}, bare / "pytorch_model-00001-of-00003.bin")
    torch.save({"c": torch.zeros(2)}, bare / "pytorch_model-00003-of-00003.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00003.bin"):
        read_weights(bare)
    torch.save({"b": torch.zeros(2)}, bare / "pytorch_model-00002-of-00003.bin")
    assert set(read_weights(bare)) == {"a", "b", "c"}

    (indexed / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        read_weights(indexed)
    with pytest.raises(FileNotFoundError, match="no weights found"):
        read_weights(tmp_path / "bare" / "..")


class NotATensor:
    pass


def test_reader_refuses_corrupt_files_and_non_tensors(tmp_path):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="corrupt.safetensors: could not be read as safetensors"):
        read_weights(tmp_path / "corrupt.safetensors")
    torch.save({"a": torch.zeros(2)}, tmp_path / "cut.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "cut.bin").read_bytes()[:40])  # truncated zip
    with pytest.raises(ValueError, match="cut.bin: could not be read as a torch state dict"):
        read_weights(tmp_path / "cut.bin")

    torch.save({"a": torch.zeros(2), "step": "100"}, tmp_path / "mixed.bin")  # loads under weights_only
    with pytest.raises(ValueError, match=r"mixed.bin: expected a dict of tensors.*'step' holds a str"):
        read_weights(tmp_path / "mixed.bin")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: expected a dict of tensors"):
        read_weights(tmp_path / "list.pt")
    with open(tmp_path / "code.bin", "wb") as handle:  # a pickle that would build an arbitrary object
        pickle.dump({"a": NotATensor()}, handle, protocol=2)
    with pytest.raises(ValueError, match="code.bin: could not be read .* weights_only=True"):
        read_weights(tmp_path / "code.bin")


def test_writer_is_atomic_and_picks_the_format_by_suffix(tmp_path):
    state = {"w": torch.randn(2, 2).t()}  # non-contiguous
    write_weights(state, tmp_path / "out" / "a.safetensors", metadata={"producer": "test"})
    write_weights(state, tmp_path / "out" / "a.bin")
    assert torch.equal(load_file(str(tmp_path / "out" / "a.safetensors"))["w"], state["w"])
    assert torch.equal(torch.load(tmp_path / "out" / "a.bin", weights_only=True)["w"], state["w"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "a.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "producer": "test"}
    with pytest.raises(ValueError, match="a.ckpt: weights are written as"):
        write_weights(state, tmp_path / "out" / "a.ckpt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin", "a.safetensors"]  # no temporaries


def test_resolve_trainable_file(tmp_path):
    (tmp_path / "mm_projector.bin").write_bytes(b"")
    assert weights.resolve_trainable_file(tmp_path) == tmp_path / "mm_projector.bin"
    (tmp_path / "trainable.safetensors").write_bytes(b"")
    assert weights.resolve_trainable_file(tmp_path) == tmp_path / "trainable.safetensors"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        weights.resolve_trainable_file(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------
# Commands


def test_merge_weights_cli_with_overrides(tmp_path, capsys):
    save_file({"projectors.video.weight": torch.ones(2, 2)}, str(tmp_path / "a.safetensors"))
    torch.save({"model.mm_projector.weight": torch.full((2, 2), 2.0), "mm_projector_forpose.bias": torch.ones(2)},
               tmp_path / "b.bin")
    out = tmp_path / "merged"
    # Positional inputs, key=value overrides and the --output_dir spelling.
    assert cli_main(["merge-weights", str(tmp_path / "a.safetensors"), str(tmp_path / "b.bin"),
                     "format=llavidal", f"output_dir={out}"]) == 0
    merged = load_file(str(out / "trainable.safetensors"))
    assert set(merged) == {"projectors.video.weight", "projectors.pose.bias"}
    assert torch.all(merged["projectors.video.weight"] == 2.0)  # the later file wins
    assert "merged 2 file(s)" in capsys.readouterr().out

    # Upstream names when asked for, here into a named .bin.
    assert cli_main(["merge-weights", "--inputs", str(tmp_path / "b.bin"), "--format", "upstream",
                     "--output", str(tmp_path / "up.bin")]) == 0
    assert set(torch.load(tmp_path / "up.bin", weights_only=True)) == {"model.mm_projector.weight",
                                                                        "model.mm_projector_forpose.bias"}
    # User errors: one line naming the problem, exit 2.
    assert cli_main(["merge-weights", str(tmp_path / "a.safetensors"), "format=upstream", f"output={out}"]) == 2
    assert "llavidal merge-weights: error: --format upstream" in capsys.readouterr().err
    assert cli_main(["merge-weights", f"output={out}"]) == 2
    assert "at least one input" in capsys.readouterr().err
    (tmp_path / "bad.bin").write_bytes(b"not a checkpoint")
    assert cli_main(["merge-weights", str(tmp_path / "bad.bin"), f"output={out}"]) == 2
    assert "bad.bin: could not be read" in capsys.readouterr().err


def test_embedded_llm_cli_flag_spellings(monkeypatch, tmp_path, capsys):
    from llavidal.model import embedded

    seen = []
    monkeypatch.setattr(embedded, "ensure_embedded_llm", lambda folder: seen.append(folder) or Path(folder or "x"))
    for argv in (["--cache_dir", str(tmp_path)], ["--output_dir", str(tmp_path)], [f"cache_dir={tmp_path}"]):
        assert cli_main(["embedded-llm", *argv]) == 0
    assert seen == [str(tmp_path)] * 3
