"""Train a LLAVIDAL model: parse flags, build model + data, ``Trainer.train()``, save.

Run as (the upstream command; any subset of --video_folder / --pose_folder / --object_folder)::

    torchrun --nproc_per_node=8 --master_port 29001 llavidal/train/train_mem.py --version v1 \\
        --tune_mm_mlp_adapter True --mm_use_vid_start_end --bf16 True --num_train_epochs 3 \\
        --per_device_train_batch_size 4 ... --model_name_or_path BASE --data_path train.json \\
        --video_folder feats/video --pose_folder feats/pose --object_folder feats/object --output_dir runs/x

or ``llavidal train --config configs/train_video.yaml --learning_rate 1e-4`` (flags override the file).
A run whose output folder holds ``checkpoint-*`` resumes from the last one.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

from llavidal.config import command
from llavidal.data.collator import PaddedCollator
from llavidal.data.dataset import LazySupervisedDataset
from llavidal.train.args import (
    DataArguments,
    TrainingArguments,
    build_registry,
    describe_registry,
    parse_args,
    resolve_torch_dtype,
)
from llavidal.train.trainer import LlavidalTrainer
from llavidal.utils import dist

logger = logging.getLogger("llavidal.train")


def configure_logging(training_args: TrainingArguments) -> None:
    level = logging.INFO if dist.is_main_process() else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    logging.getLogger("llavidal").setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def make_collator(
    data_args: DataArguments, training_args: TrainingArguments, tokenizer: Any, attn_implementation: str | None = None
) -> Callable:
    """The single place where the batch collator is chosen (padded rows, or packed rows with --packing).

    With --packing, ``attn_implementation`` is what ``prepare_model_for_packing`` returned: varlen kernels
    get one padding-free row per micro-batch, mask-based ones rows of at most --packing_max_length tokens.
    """
    if data_args.packing:
        from llavidal.data.packing import make_packing_collator

        return make_packing_collator(
            tokenizer, max_length=data_args.packing_max_length or training_args.model_max_length,
            attn_implementation=attn_implementation,
        )
    return PaddedCollator(pad_token_id=tokenizer.pad_token_id, max_length=training_args.model_max_length)


def find_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """``--resume_from_checkpoint`` when given, else the last ``checkpoint-*`` in the output folder."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if os.path.isdir(training_args.output_dir):
        return get_last_checkpoint(training_args.output_dir)
    return None


@command("llavidal train")
def main(argv: list[str] | None = None, *, fastest_attention: bool = False) -> int:
    """Entry point of ``llavidal train`` / ``train.py`` / ``train_mem.py`` (``fastest_attention=True``)."""
    model_args, data_args, training_args = parse_args(argv)
    configure_logging(training_args)
    from llavidal.model.builder import best_attn_implementation, build_model

    registry = build_registry(model_args, data_args)
    torch_dtype = resolve_torch_dtype(model_args, training_args)
    attn = model_args.attn_implementation
    if attn is None and fastest_attention:
        attn = best_attn_implementation(torch_dtype=torch_dtype)
    # Seed before the projectors are created, so that a run is reproducible from its arguments.
    transformers.set_seed(training_args.seed)
    model, tokenizer = build_model(
        model_args.model_name_or_path, registry, torch_dtype=torch_dtype, attn_implementation=attn,
        use_modality_string_prefix=model_args.use_modality_string_prefix,
        freeze_llm=model_args.tune_mm_mlp_adapter, lora=model_args.lora_settings(),
        pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter, template=model_args.version,
    )
    for parameter in model.parameters():  # trainable weights stay float32 (master weights under autocast)
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if training_args.train_gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # How the features were made, so that a weights folder describes its own extractors wherever the
    # feature folders went (evaluation, the demo and servers rebuild them from these recipes).
    model.config.feature_manifests = feature_manifests(data_args.feature_folders())

    dataset = LazySupervisedDataset(
        data_args.data_path, tokenizer, registry, data_args.feature_folders(), template=model_args.version,
        system=data_args.system_prompt, max_length=training_args.model_max_length,
        use_modality_string_prefix=model_args.use_modality_string_prefix,
        strict_features=data_args.strict_features, mask_probs=data_args.mask_probs(), seed=training_args.seed,
        log_summary=dist.is_main_process(),
    )
    if data_args.packing:  # cache off (else samples of a row see each other), exact per-sample attention
        from llavidal.data.packing import prepare_model_for_packing

        attn = prepare_model_for_packing(model)
    collator = make_collator(data_args, training_args, tokenizer, attn_implementation=attn)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    state = training_args.distributed_state
    logger.info(
        "model %s (%s, attention %s); modalities: %s; template %s; trainable %d of %d parameters (%s); "
        "%d samples; world size %d (%s, backend %s)",
        model_args.model_name_or_path, torch_dtype, attn or "default", describe_registry(registry),
        model_args.version, trainable, total,
        "LoRA" if model_args.lora_enable else ("LLM frozen" if model_args.tune_mm_mlp_adapter else "full LLM"),
        len(dataset), training_args.world_size, getattr(state, "distributed_type", "single process"),
        getattr(state, "backend", None),
    )
    trainer = LlavidalTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator,
        extra_config={
            "feature_folders": data_args.feature_folders(),
            "data_path": data_args.data_path,
            "model_max_length": training_args.model_max_length,
        },
    )
    checkpoint = find_resume_checkpoint(training_args)
    if checkpoint:
        logger.info("resuming from checkpoint %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if dist.is_main_process():
        logger.info("saved %s (trainable.safetensors, llavidal_config.json, trainer_state.json)", training_args.output_dir)
    return 0


def feature_manifests(folders: dict) -> dict[str, dict]:
    """Modality -> the manifest of its feature folder, recipe paths absolute (relative ones are relative to
    the folder)."""
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import absolute_manifest

    manifests = {}
    for name, folder in (folders or {}).items():
        manifest = FeatureManifest.load(folder) if folder else None
        if manifest is not None:
            manifests[name] = absolute_manifest(manifest, folder).to_dict()
    return manifests


if __name__ == "__main__":
    sys.exit(main())
