"""Video designs as components of one model: PLLaVA's adaptive pooling, positional encodings, the temporal
sampler, the Q-Former projector and video conditioning: their maths, training, saving and reloading, the prompt
token counts, export, and the upstream default left unchanged."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from llavidal.constants import IGNORE_INDEX
from llavidal.model.builder import build_model, load_pretrained
from llavidal.model.designs import DESIGN_PRESETS, resolve_design
from llavidal.model.hf.frontends import (
    DesignError,
    TextContext,
    VideoFrontend,
    num_output_tokens,
    sinusoidal_table,
    text_context,
)
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)

DIM, FRAMES, SIDE = 16, 4, 4  # grid features (T, P, D) = (4, 16, 16)
ROWS, TEMPORAL = 6, 4  # pooled rows (T + S, D) = (4 + 2, 16)


def registry(design: dict | None, grid: bool = True) -> ModalityRegistry:
    reg = ModalityRegistry.default(["video", "pose"], video_dim=DIM, video_tokens=FRAMES if grid else ROWS,
                                   pose_dim=12, pose_tokens=3)
    if design is None:
        return reg
    design = dict(design, **({"patches": SIDE * SIDE} if grid else {"temporal_rows": TEMPORAL}))
    return ModalityRegistry({**reg.specs, "video": dataclasses.replace(reg["video"], design=design)})


def features(seed: int, grid: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (FRAMES, SIDE * SIDE, DIM) if grid else (ROWS, DIM)
    return torch.randn(*shape, generator=generator)


# ----------------------------------------------------------------------------------------------- the maths


def test_adaptive_pooling_equals_the_grid_mean_and_has_the_documented_shapes():
    torch.manual_seed(0)
    grid = torch.randn(FRAMES, SIDE * SIDE, DIM)
    frontend = VideoFrontend({"pool": [2, 2, 2], "pool_position": "before"}, DIM, 8)
    pooled = frontend.pool(frontend.as_grid(grid[None]))[0]  # (2*2*2, D)
    cells = grid.reshape(FRAMES, SIDE, SIDE, DIM)
    expected = []
    for t in range(2):
        for i in range(2):
            for j in range(2):
                block = cells[2 * t:2 * t + 2, 2 * i:2 * i + 2, 2 * j:2 * j + 2]  # 2 frames x 2 x 2 patches
                expected.append(sum(block[a, b, c] for a in range(2) for b in range(2) for c in range(2)) / 8)
    torch.testing.assert_close(pooled, torch.stack(expected), atol=1e-6, rtol=0)

    # before vs after the projector: same shape; equal for a linear projector (a mean commutes with an affine map),
    # not for the MLP (PLLaVA pools after its 2-layer projector)
    after = VideoFrontend({"pool": [2, 2, 2], "pool_position": "after"}, DIM, 8)
    after.load_state_dict(frontend.state_dict())
    out_before, out_after = frontend([grid])[0], after([grid])[0]
    assert out_before.shape == out_after.shape == (8, 8)
    torch.testing.assert_close(out_before, out_after, atol=1e-5, rtol=1e-5)
    mlp = VideoFrontend({"pool": [2, 2, 2], "pool_position": "after", "projector": "mlp2x_gelu"}, DIM, 8)
    torch.testing.assert_close(mlp([grid])[0], mlp.pool(mlp.projector(mlp.as_grid(grid[None])))[0])
    # PLLaVA 7B: 16 frames of 24 x 24 patches -> 16 x 12 x 12 = 2304 tokens
    design = {"pool": [16, 12, 12], "projector": "mlp2x_gelu"}
    assert num_output_tokens(design, (16, 576, 1024)) == 2304
    pllava = VideoFrontend(design, 8, 8)
    assert pllava([torch.randn(16, 576, 8)])[0].shape == (2304, 8)
    # pooled rows cannot be pooled: a clear error
    with pytest.raises(DesignError, match="pooled rows"):
        num_output_tokens(design, (356, 1024))
    with pytest.raises(DesignError, match="pooled rows"):
        pllava([torch.randn(356, 8)])


def test_sinusoidal_encodings_equal_the_formula_and_are_added_before_the_projector():
    table = sinusoidal_table(torch.arange(7), 6)
    for p in range(7):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert math.isclose(float(table[p, 2 * i]), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(float(table[p, 2 * i + 1]), math.cos(angle), abs_tol=1e-6)

    # pooled (T+S, D) rows: temporal encodings on the first T rows, spatial ones on the S spatial rows
    frontend = VideoFrontend({"positional": "sinusoidal", "temporal_rows": TEMPORAL}, DIM, 8)
    rows = features(1, grid=False)
    temporal = sinusoidal_table(torch.arange(TEMPORAL), DIM)
    spatial = sinusoidal_table(torch.arange(ROWS - TEMPORAL), DIM)  # 2 rows: no square grid, 1-D positions
    expected = frontend.projector(rows + torch.cat([temporal, spatial]))
    torch.testing.assert_close(frontend([rows])[0], expected, atol=1e-6, rtol=0)

    # grids: temporal (per frame) + 2-D spatial (rows on the first half of the channels, columns on the second)
    frontend = VideoFrontend({"positional": "sinusoidal"}, DIM, 8)
    grid = features(2)
    index = torch.arange(SIDE * SIDE)
    spatial = torch.cat([sinusoidal_table(index // SIDE, DIM // 2), sinusoidal_table(index % SIDE, DIM // 2)], -1)
    expected = grid + sinusoidal_table(torch.arange(FRAMES), DIM)[:, None, :] + spatial[None]
    torch.testing.assert_close(frontend([grid])[0], frontend.projector(expected.reshape(-1, DIM)), atol=1e-6, rtol=0)


def test_learned_encodings_have_table_shapes_start_at_zero_and_train():
    frontend = VideoFrontend({"positional": "learned", "max_frames": 10, "patches": SIDE * SIDE}, DIM, 8)
    assert frontend.temporal_pe.weight.shape == (10, DIM)
    assert frontend.spatial_pe.weight.shape == (SIDE * SIDE, DIM)
    assert not frontend.temporal_pe.weight.any() and not frontend.spatial_pe.weight.any()  # zero-init
    plain = frontend.projector(features(3).reshape(-1, DIM))
    torch.testing.assert_close(frontend([features(3)])[0], plain)  # at step 0: the model without encodings
    optimizer = torch.optim.SGD(frontend.parameters(), lr=0.1)
    frontend([features(3)])[0].pow(2).sum().backward()
    assert frontend.temporal_pe.weight.grad[:FRAMES].abs().sum() > 0
    assert not frontend.temporal_pe.weight.grad[FRAMES:].any()  # frames beyond the clip are not touched
    optimizer.step()
    assert frontend.temporal_pe.weight[:FRAMES].abs().sum() > 0 and frontend.spatial_pe.weight.abs().sum() > 0
    with pytest.raises(DesignError, match="max_frames"):
        frontend([torch.randn(12, SIDE * SIDE, DIM)])


def test_text_context_keeps_prompt_text_only():
    embeds = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1).expand(2, 6, 3).clone()
    input_ids = torch.tensor([[5, 90, 91, 6, 7, 8], [0, 5, 6, 90, 7, 8]])  # 90, 91: modality tokens; row 1 left-padded
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 4:] = 7  # the answer of row 0
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    context = text_context(embeds, input_ids, [90, 91, 92], labels, mask)
    assert context.mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert context.embeds[0, :2, 0].tolist() == [0.0, 3.0]  # positions 0 and 3: no modality token, no answer
    assert context.embeds[1, :, 0].tolist() == [7.0, 8.0, 10.0, 11.0]  # padding and the modality token left out


# ----------------------------------------------------------------------------------------------- one model


DESIGNS = {
    "pllava": ({"pool": [2, 2, 2], "projector": "mlp2x_gelu"}, None, True),
    "pe_rows": ({"positional": "learned"}, None, False),
    "sampler": ({"sampler": {"k": 2, "motion": "diff"}, "positional": "sinusoidal"}, None, True),
    "qformer": ({"projector": "qformer", "num_queries": 3, "instruction_aware": True,
                 "qformer": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 32}}, None, False),
    "xattn": (None, {"mode": "xattn", "layers": [1], "num_heads": 2}, False),
    "inject_only": (None, {"mode": "inject", "splice": False}, True),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_causal_lm_dir(tmp_path_factory.mktemp("designs") / "llm", "llama")


def batch_for(model, tokenizer, grid: bool):
    """Two right-padded training rows (question, video [+ pose], answer) with labels on the answers only."""
    texts, labels_from, video = [], [], []
    for row, (question, answer) in enumerate((("What is the person doing?", " cooking"), ("Which?", " the mug now"))):
        value = features(10 + row, grid)
        shape = tuple(value.shape)
        prompt = expand_placeholders(f"{question}\n<video><human_pose>", model.modalities,
                                     {"video": shape, "pose": (3, 12)})
        texts.append(prompt + answer)
        labels_from.append(len(tokenizer(prompt).input_ids))
        video.append(value)
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch.input_ids.clone()
    for row, start in enumerate(labels_from):
        labels[row, :start] = IGNORE_INDEX
    labels[batch.attention_mask == 0] = IGNORE_INDEX
    pose = [torch.randn(3, 12, generator=torch.Generator().manual_seed(row)) for row in range(2)]
    return batch.input_ids, batch.attention_mask, labels, {"video": video, "pose": pose}


@pytest.mark.parametrize("name", list(DESIGNS))
def test_design_trains_saves_and_reloads_with_identical_logits(name, base, tmp_path):
    design, conditioning, grid = DESIGNS[name]
    torch.manual_seed(0)
    model, tokenizer = build_model(base, registry(design, grid), video_conditioning=conditioning)
    ids, mask, labels, feats = batch_for(model, tokenizer, grid)
    video = model.modalities["video"]
    patch = tokenizer.convert_tokens_to_ids(video.patch_token)
    assert int((ids[0] == patch).sum()) == video.tokens_for(tuple(feats["video"][0].shape))
    if conditioning and not conditioning.get("splice", True):
        assert video.tokens_for(tuple(feats["video"][0].shape)) == 0 and video.start_token not in tokenizer.decode(ids[0])

    model.train()
    output = model(ids, attention_mask=mask, labels=labels, modality_features=feats)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    trained = model.projectors["video"] if design else None
    if isinstance(trained, VideoFrontend):
        grads = [p.grad for p in trained.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    if conditioning:
        gates = model.conditioning.gates()
        assert gates and any(p.grad is not None and p.grad.abs().sum() > 0 for p in gates.values())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05).step()
    if conditioning:  # open the gates, so that reloading them is checked by the logits below
        with torch.no_grad():
            for gate in model.conditioning.gates().values():
                gate.fill_(0.5)
    model.eval()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, modality_features=feats).logits
        if conditioning:
            no_video = model(ids, attention_mask=mask, modality_features={"video": [None, None],
                                                                            "pose": feats["pose"]}).logits \
                if not video.spliced else None
            if no_video is not None:
                assert not torch.allclose(no_video, logits)  # the video reaches the LLM through the conditioning
    model.save_pretrained(tmp_path / "weights")
    saved = json.loads((tmp_path / "weights" / "llavidal_config.json").read_text())
    assert saved["modalities"][0]["name"] == "video"
    assert (saved["modalities"][0].get("design") is not None) == bool(design or not video.spliced)
    assert saved.get("video_conditioning", None) == model.conditioning_settings

    again, _ = load_pretrained(tmp_path / "weights")
    assert again.modalities["video"].design == video.design
    with torch.no_grad():
        reloaded = again(ids, attention_mask=mask, modality_features=feats).logits
    torch.testing.assert_close(reloaded, logits, atol=1e-6, rtol=1e-6)


def test_presets_build_and_flags_override_them(base, tmp_path):
    from llavidal.train.args import DataArguments, ModelArguments, build_registry

    assert set(DESIGN_PRESETS) == {"upstream", "pllava", "pe", "sampler", "qformer", "xattn", "inject"}
    for name in DESIGN_PRESETS:
        design, conditioning = resolve_design(name)
        registry(design, grid=True)  # every preset's design is valid
        assert (conditioning is None) == (name not in ("xattn", "inject"))
    design, conditioning = resolve_design("pllava", pool="8,6,6", conditioning="xattn", conditioning_layers="0,1",
                                          conditioning_splice=False)
    assert design["pool"] == [8, 6, 6] and conditioning == {"mode": "xattn", "splice": False, "layers": [0, 1]}
    with pytest.raises(ValueError, match="one of"):
        resolve_design("plava")
    with pytest.raises(ValueError, match="T,h,w"):
        resolve_design(None, pool="16,12")

    # flags -> the registry's video design, the grid size read from the folder's manifest
    from llavidal.data.feature_store import FeatureManifest

    folder = tmp_path / "video"
    folder.mkdir()
    FeatureManifest(modality="video", extractor="t", feature_dim=DIM, shape=[FRAMES, SIDE * SIDE, DIM]).save(folder)
    model_args = ModelArguments(model_name_or_path=str(base), video_design="pllava", video_pool="2,2,2",
                                video_conditioning="inject")
    reg = build_registry(model_args, DataArguments(data_path="x.json", video_folder=str(folder)))
    assert reg["video"].design["pool"] == [2, 2, 2] and reg["video"].design["patches"] == SIDE * SIDE
    assert reg["video"].num_tokens == FRAMES and reg["video"].tokens_for((FRAMES, SIDE * SIDE, DIM)) == 8
    assert model_args.video_design_settings()[1]["mode"] == "inject"
    with pytest.raises(ValueError, match="one of"):
        ModelArguments(model_name_or_path=str(base), video_design="nope")


def test_experiment_yamls_select_the_designs(tmp_path):
    from llavidal.train.args import parse_args

    for name in ("pllava", "pe", "sampler", "qformer", "xattn", "inject"):
        model_args, _, _ = parse_args([f"experiment=design_{name}", "model_name_or_path=m", "data_path=d.json",
                                       "video_folder=v", f"output_dir={tmp_path}", "--bf16", "false"])
        assert model_args.video_design == name and model_args.tune_mm_mlp_adapter


# ----------------------------------------------------------------------------------------------- prompts


def test_dataset_and_engine_expand_the_placeholder_to_num_output_tokens(base, tmp_path):
    from llavidal.data.dataset import LazySupervisedDataset
    from llavidal.serve.engine import GenerationRequest, InferenceEngine

    torch.manual_seed(0)
    design = {"pool": [2, 2, 2]}
    model, tokenizer = build_model(base, registry(design).select(["video"]))
    folder = tmp_path / "video"
    folder.mkdir()
    records = []
    for index in range(2):
        np.save(folder / f"clip_{index}.npy", features(index).numpy())
        records.append({"id": f"clip_{index}", "video": f"clip_{index}.pkl", "conversations": [
            {"from": "human", "value": "<video>\nWhat is the person doing?"}, {"from": "gpt", "value": "Cooking."}]})
    data = LazySupervisedDataset(records, tokenizer, model.modalities, {"video": folder})
    spec = model.modalities["video"]
    patch = tokenizer.convert_tokens_to_ids(spec.patch_token)
    expected = num_output_tokens(spec.design, (FRAMES, SIDE * SIDE, DIM))
    assert expected == 8
    for index in range(2):
        item = data[index]
        assert item["modality_features"]["video"].shape == (FRAMES, SIDE * SIDE, DIM)  # grids kept
        assert int((item["input_ids"] == patch).sum()) == expected
        assert data.lengths[index] == len(item["input_ids"])  # known before reading the features
        model.train()
        loss = model(item["input_ids"][None], labels=item["labels"][None],
                     modality_features={"video": [item["modality_features"]["video"]]}).loss
        assert torch.isfinite(loss)

    engine = InferenceEngine(model, tokenizer)
    request = GenerationRequest("What is the person doing?", {"video": features(0).numpy()})
    text, feats = engine.build_prompt(request)
    assert text.count(spec.patch_token) == expected and feats["video"].shape == (FRAMES, SIDE * SIDE, DIM)
    answers = engine.generate([request, GenerationRequest("And now?", {"video": features(1).numpy()})],
                              max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_a_wrong_token_count_names_the_sample(base):
    from llavidal.model.modality import SpliceError

    model, tokenizer = build_model(base, registry({"positional": "sinusoidal"}).select(["video"]))
    text = expand_placeholders("Q <video>", model.modalities, {"video": (FRAMES, SIDE * SIDE, DIM)})
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert int((ids == tokenizer.convert_tokens_to_ids("<vid_patch>")).sum()) == FRAMES * SIDE * SIDE
    with pytest.raises(SpliceError, match="sample clip_x: .*64 <vid_patch>.*design makes 32"):
        model(ids, modality_features={"video": [torch.randn(2, SIDE * SIDE, DIM)]}, sample_ids=["clip_x"])


# ----------------------------------------------------------------------------------------------- upstream + export


def test_upstream_default_is_unchanged(base, tmp_path):
    model, _ = build_model(base, registry(None))
    assert set(model.projectors.state_dict()) == {"video.weight", "video.bias", "pose.weight", "pose.bias"}
    assert set(model.trainable_state_dict()) == {"projectors.video.weight", "projectors.video.bias",
                                                 "projectors.pose.weight", "projectors.pose.bias",
                                                 "token_embeddings.video", "token_embeddings.pose"}
    assert model.conditioning is None and "design" not in model.modalities.to_list()[0]
    model.save_pretrained(tmp_path / "w")
    saved = json.loads((tmp_path / "w" / "llavidal_config.json").read_text())
    assert "video_conditioning" not in saved and all("design" not in m for m in saved["modalities"])
    # an aligned / upstream plain projector starts a design's projector
    designed, _ = build_model(base, registry({"positional": "learned"}, grid=False), pretrain_mm_mlp_adapter=tmp_path / "w")
    torch.testing.assert_close(designed.projectors["video"].projector.weight, model.projectors["video"].weight)


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "llavidal" or name.startswith("llavidal."):
            raise ImportError("llavidal is blocked in this test")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForCausalLM
out, data = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(data["input_ids"], attention_mask=data["mask"], modality_features=data["features"]).logits
torch.save({"logits": logits, "class": type(model).__module__}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def exported_design(base, tmp_path_factory):
    """(model, tokenizer, exported folder) of a grid design with every frontend stage a weight file must carry
    (learned encodings, sampler, Q-Former) and inject conditioning, all moved away from their initial values."""
    from llavidal.model.export import export_model

    tmp_path = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    design = {"positional": "learned", "sampler": {"k": 2}, "projector": "qformer", "num_queries": 3,
              "qformer": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}}
    model, tokenizer = build_model(base, registry(design), video_conditioning={"mode": "inject", "layers": [0]})
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)  # learned encodings and gates away from zero
    model.save_pretrained(tmp_path / "w")
    return model, tokenizer, export_model(tmp_path / "w", tmp_path / "export")


def test_export_carries_the_design_code_and_reloads_natively(exported_design):
    from transformers import AutoModelForCausalLM

    model, tokenizer, out = exported_design
    for name in ("frontends.py", "conditioning.py", "sampler.py", "qformer.py"):
        code = (out / name).read_text()
        assert "import llavidal" not in code and "from llavidal" not in code, name
    config = json.loads((out / "config.json").read_text())
    assert config["video_conditioning"]["mode"] == "inject" and config["modalities"][0]["design"]["num_queries"] == 3
    ids, mask, _, feats = batch_for(model, tokenizer, grid=True)
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, modality_features=feats).logits
        torch.testing.assert_close(hf(ids, attention_mask=mask, modality_features=feats).logits, expected,
                                   atol=1e-5, rtol=1e-5)
    one = {name: values[:1] for name, values in feats.items()}
    assert torch.equal(hf.generate(ids[:1], modality_features=one, max_new_tokens=3, do_sample=False, pad_token_id=0),
                       model.generate(ids[:1], modality_features=one, max_new_tokens=3, do_sample=False, pad_token_id=0))


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: tens of seconds on a loaded machine
def test_exported_design_loads_with_remote_code_where_llavidal_cannot_be_imported(exported_design, tmp_path):
    import os
    import subprocess
    import sys

    model, tokenizer, out = exported_design
    ids, mask, _, feats = batch_for(model, tokenizer, grid=True)
    with torch.no_grad():
        expected = model.eval()(ids, attention_mask=mask, modality_features=feats).logits
    torch.save({"input_ids": ids, "mask": mask, "features": feats}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", BLOCKED, str(out), str(tmp_path / "inputs.pt"), str(tmp_path / "o.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "o.pt", weights_only=True)
    assert got["class"].startswith("transformers_modules")
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=1e-5)


def test_text_context_select():
    context = TextContext(torch.randn(3, 2, 4), torch.tensor([[True, False], [True, True], [False, False]]))
    chosen = context.select([2, 0, 0])
    assert chosen.embeds.shape == (3, 2, 4) and chosen.mask.tolist() == [[False, False], [True, False], [True, False]]
    assert not chosen.pooled()[0].any()  # a row without question tokens gives zeros


def test_packing_is_refused_with_a_whole_clip_design_or_conditioning(base, tmp_path):
    """A packed row holds several samples: a design that reads whole clips would pool their frames together, and
    the conditioning blocks (one video per row) would let each sample attend to the others' videos."""
    from llavidal.train.args import DataArguments, ModelArguments, build_registry

    folder = tmp_path / "video"
    folder.mkdir()
    packed = DataArguments(data_path="x.json", video_folder=str(folder), packing=True)
    with pytest.raises(ValueError, match="--packing cannot be used with a video design"):
        build_registry(ModelArguments(model_name_or_path=str(base), video_design="pe"), packed)
    for mode in ("xattn", "inject"):
        with pytest.raises(ValueError, match=f"--packing cannot be used with video conditioning inside the LLM \\({mode}"):
            build_registry(ModelArguments(model_name_or_path=str(base), video_design=mode), packed)
        assert build_registry(ModelArguments(model_name_or_path=str(base), video_design=mode),
                              DataArguments(data_path="x.json", video_folder=str(folder)))
    assert build_registry(ModelArguments(model_name_or_path=str(base), video_design="upstream"), packed)


def test_sampler_flow_motion_is_refused_until_feature_files_carry_it():
    from llavidal.model.designs import resolve_design

    design, _ = resolve_design("sampler", sampler_motion="diff")
    assert design["sampler"]["motion"] == "diff"
    with pytest.raises(ValueError, match="not carried from extraction"):
        resolve_design("sampler", sampler_motion="flow")
