"""Training arguments: the upstream flags verbatim, YAML config + CLI overrides, CPU precision fallback,
modality dims from flags / manifests."""

from __future__ import annotations

import logging

import pytest

from fixtures.tiny_adl_data import make_records, write_features
from llavidal.data.feature_store import FeatureFileError
from llavidal.train import args as train_args
from llavidal.train.args import build_registry, parse_args

UPSTREAM_FLAGS = [
    "--version", "v1", "--tune_mm_mlp_adapter", "True", "--mm_use_vid_start_end", "--bf16", "True",
    "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
    "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "3000", "--save_total_limit", "3", "--learning_rate", "2e-5", "--weight_decay", "0.",
    "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "100", "--tf32", "True",
    "--model_max_length", "2048", "--gradient_checkpointing", "True", "--lazy_preprocess", "True",
]


def paths(tmp_path) -> list[str]:
    return ["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "llm"),
            "--data_path", str(tmp_path / "train.json"), "--video_folder", str(tmp_path)]


def test_upstream_flags_parse_and_degrade_on_cpu(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(train_args, "_CPU_PRECISION_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="llavidal"):
        model_args, data_args, training = parse_args(UPSTREAM_FLAGS + paths(tmp_path))
    assert model_args.version == "v1" and model_args.tune_mm_mlp_adapter and model_args.mm_use_vid_start_end
    assert data_args.lazy_preprocess and data_args.feature_folders() == {"video": str(tmp_path)}
    assert training.model_max_length == 2048 and training.save_steps == 3000 and training.learning_rate == 2e-5
    assert str(getattr(training.eval_strategy, "value", training.eval_strategy)) == "no"
    assert training.get_warmup_steps(1000) == 30  # --warmup_ratio 0.03
    assert training.train_gradient_checkpointing is True
    # no CUDA here: bf16 / tf32 degrade to float32 with exactly one warning
    assert training.bf16 is False and not training.tf32
    warnings = [r for r in caplog.records if "no CUDA device" in r.message]
    assert len(warnings) == 1 and "--bf16 True" in warnings[0].message and "--tf32 True" in warnings[0].message
    parse_args(UPSTREAM_FLAGS + paths(tmp_path))  # a second parse does not warn again
    assert len([r for r in caplog.records if "no CUDA device" in r.message]) == 1


def test_yaml_config_with_cli_override(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "version: llavidal_v1\nlearning_rate: 0.001\nper_device_train_batch_size: 3\npose_folder: /poses\n"
        "video_mask_prob: 0.25\ntune_mm_mlp_adapter: true\nlora_target_modules: q_proj,v_proj\n"
    )
    model_args, data_args, training = parse_args(["--config", str(config), "--learning_rate", "0.5"] + paths(tmp_path))
    assert model_args.version == "llavidal_v1" and model_args.tune_mm_mlp_adapter is True
    assert training.learning_rate == 0.5  # the command line wins
    assert training.per_device_train_batch_size == 3
    assert data_args.pose_folder == "/poses" and data_args.video_mask_prob == 0.25
    assert model_args.lora_target_modules == "q_proj,v_proj"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rat'"):
        parse_args([f"--config={config}"] + paths(tmp_path))


def test_shipped_example_configs_parse(tmp_path):
    from pathlib import Path

    for config in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        model_args, data_args, training = parse_args(["--config", str(config)] + paths(tmp_path))
        assert model_args.model_name_or_path == str(tmp_path / "llm"), config


def test_flag_validation_messages(tmp_path):
    with pytest.raises(ValueError, match="video_mask_prob"):
        parse_args(paths(tmp_path) + ["--video_mask_prob", "2"])
    with pytest.raises(ValueError, match="mm_projector_type"):
        parse_args(paths(tmp_path) + ["--mm_projector_type", "qformer"])
    flags = paths(tmp_path)
    without_folder = flags[: flags.index("--video_folder")]
    with pytest.raises(ValueError, match="feature folder"):
        parse_args(without_folder)


def test_registry_dims_from_flags_manifest_and_defaults(tmp_path):
    records = make_records(2)
    pickles = write_features(tmp_path / "p", records, fmt="pickle")
    stores = write_features(tmp_path / "s", records, fmt="safetensors")
    base = ["--output_dir", str(tmp_path / "o"), "--model_name_or_path", "m", "--data_path", "d"]

    model_args, data_args, _ = parse_args(base + ["--video_folder", str(pickles["video"])])
    reg = build_registry(model_args, data_args)
    assert reg.names() == ["video"] and reg["video"].num_tokens == 356 and reg["video"].feature_dim == 1024

    model_args, data_args, _ = parse_args(base + ["--video_folder", str(stores["video"]), "--object_folder",
                                                  str(stores["object"]), "--pose_folder", str(stores["pose"])])
    reg = build_registry(model_args, data_args)  # read from the manifests
    assert (reg["video"].num_tokens, reg["video"].feature_dim) == (6, 16)
    assert (reg["pose"].num_tokens, reg["pose"].feature_dim) == (4, 12)
    assert (reg["object"].group_size, reg["object"].feature_dim) == (8, 10)

    model_args, data_args, _ = parse_args(base + ["--video_folder", str(stores["video"]), "--video_feature_dim", "1024"])
    with pytest.raises(FeatureFileError, match="16-d"):
        build_registry(model_args, data_args)


def test_video_chatgpt_script_flags_are_accepted(tmp_path):
    from llavidal.train.args import parse_args

    model, data, _ = parse_args(["--model_name_or_path", "m", "--data_path", "d", "--video_folder", "v",
                                 "--output_dir", str(tmp_path), "--freeze_backbone", "True", "--is_multimodal", "True",
                                 "--sep_video_conv_front", "False", "--video_token_len", "356",
                                 "--frame_aspect_ratio", "square", "--force_fsdp", "False"])
    assert model.tune_mm_mlp_adapter is True and model.video_tokens == 356
    with pytest.raises(ValueError, match="freeze_mm_mlp_adapter"):
        parse_args(["--model_name_or_path", "m", "--data_path", "d", "--video_folder", "v",
                    "--output_dir", str(tmp_path), "--freeze_mm_mlp_adapter", "True"])


def test_mm_projector_lr_values():
    from llavidal.train.args import projector_learning_rates

    assert projector_learning_rates(None) == {} and projector_learning_rates("") == {}
    assert projector_learning_rates("2e-5") == {"*": 2e-5} and projector_learning_rates(2e-5) == {"*": 2e-5}
    assert projector_learning_rates("object=0, video=2e-5") == {"object": 0.0, "video": 2e-5}
    for bad in ("object=-1", "object=fast", "object=0,object=1", "1e-4,object=0", "=1"):
        with pytest.raises(ValueError, match="--mm_projector_lr"):
            projector_learning_rates(bad)
