"""Train a LLAVIDAL model: parse flags, build model + data, ``Trainer.train()``, save.

Run as (the upstream command; any subset of --video_folder / --pose_folder / --object_folder)::

    torchrun --nproc_per_node=8 --master_port 29001 llavidal/train/train_mem.py --version v1 \\
        --tune_mm_mlp_adapter True --mm_use_vid_start_end --bf16 True --num_train_epochs 3 \\
        --per_device_train_batch_size 4 ... --model_name_or_path BASE --data_path train.json \\
        --video_folder feats/video --pose_folder feats/pose --object_folder feats/object --output_dir runs/x

or ``llavidal train --config configs/train_video.yaml --learning_rate 1e-4`` (flags override the file).
A run whose output folder holds ``checkpoint-*`` resumes from the newest complete one (a folder a kill
left half-written is moved aside to ``incomplete-checkpoint-*``, with one warning). Under torchrun, each
worker exits when its launcher dies (kill -9 of torchrun leaves no orphan training on).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers.trainer import TRAINER_STATE_NAME

from llavidal.config import command
from llavidal.data.collator import PaddedCollator
from llavidal.data.mixture import build_training_dataset
from llavidal.train.args import (
    DataArguments,
    ModelArguments,
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
    data_args: DataArguments, training_args: TrainingArguments, tokenizer: Any, attn_implementation: str | None = None,
    seq2seq: bool = False,
) -> Callable:
    """The single place where the batch collator is chosen (padded rows, or packed rows with --packing).

    With --packing, ``attn_implementation`` is what ``prepare_model_for_packing`` returned: varlen kernels
    get one padding-free row per micro-batch, mask-based ones rows of at most --packing_max_length tokens.
    ``seq2seq``: an encoder-decoder model (sources and targets padded apart; no packing).
    """
    if seq2seq and data_args.packing:
        raise ValueError("--packing is for causal LMs; the base model is an encoder-decoder (train without --packing)")
    if data_args.packing:
        from llavidal.data.packing import make_packing_collator

        return make_packing_collator(
            tokenizer, max_length=data_args.packing_max_length or training_args.model_max_length,
            attn_implementation=attn_implementation,
        )
    return PaddedCollator(pad_token_id=tokenizer.pad_token_id, max_length=training_args.model_max_length,
                          seq2seq=seq2seq)


_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_PREFIX = "incomplete-"
"""A half-written ``checkpoint-N`` is renamed ``incomplete-checkpoint-N`` (outside the Trainer's
``checkpoint-*`` rotation, so it is neither resumed from nor deleted)."""


def checkpoint_missing(folder: str | os.PathLike) -> list[str]:
    """What a ``checkpoint-N`` folder lacks to be resumed from (empty when complete): the Trainer's state
    (written last) and our trainable weights."""
    from llavidal.model.config import TRAINABLE_NAME

    return [name for name in (TRAINER_STATE_NAME, TRAINABLE_NAME) if not (Path(folder) / name).is_file()]


def find_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """``--resume_from_checkpoint`` when given, else the newest complete ``checkpoint-*`` in the output folder.

    A ``checkpoint-N`` without ``trainer_state.json`` or ``trainable.safetensors`` (a kill while saving)
    is reported in one warning and renamed ``incomplete-checkpoint-N`` by the main process (kept, not
    deleted: it may hold something the user wants); the other ranks skip it the same way.
    """
    given = training_args.resume_from_checkpoint
    if given:
        missing = checkpoint_missing(given) if os.path.isdir(given) else []
        if missing:
            raise FileNotFoundError(
                f"{given}: not a complete checkpoint (no {', '.join(missing)}; a run was stopped while saving it); "
                "pass an earlier checkpoint-*, or leave out --resume_from_checkpoint to resume from the newest "
                "complete one"
            )
        return given
    output = Path(training_args.output_dir)
    if not output.is_dir():
        return None
    found = []
    for child in output.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    chosen = None
    for _step, folder in sorted(found, reverse=True):
        missing = checkpoint_missing(folder)
        if not missing:
            chosen = folder
            break
        if dist.is_main_process():
            aside = _set_aside(folder)
            logger.warning(
                "%s: incomplete checkpoint (no %s; a run was stopped while saving it): moved to %s and not "
                "resumed from", folder, ", ".join(missing), aside,
            )
    return str(chosen) if chosen is not None else None


def _set_aside(folder: Path) -> Path:
    target = folder.with_name(INCOMPLETE_PREFIX + folder.name)
    number = 1
    while target.exists():
        number += 1
        target = folder.with_name(f"{INCOMPLETE_PREFIX}{folder.name}.{number}")
    try:
        folder.rename(target)
    except OSError as err:  # e.g. a read-only output folder: skipping it is enough to resume
        logger.warning("%s: could not be moved aside (%s); it is skipped", folder, err)
        return folder
    return target


def exit_with_launcher(poll_seconds: float = 1.0) -> threading.Thread | None:
    """Under torchrun (``LOCAL_RANK`` set), exit this worker when its launcher dies.

    torchrun's agent stops its workers when it is stopped cleanly, but a kill -9 of the launcher would leave
    them training (and writing checkpoints) to the end. A daemon thread checks the parent pid every
    ``poll_seconds``; when the worker is re-parented it logs one line and exits with status 1 at once.
    Nothing is done outside torchrun, or when the parent is already pid 1 (a container's init).
    """
    if "LOCAL_RANK" not in os.environ:
        return None
    parent = os.getppid()
    if parent == 1:
        return None

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                try:
                    logger.error("rank %d: the torchrun launcher (pid %d) is gone; this worker stops", dist.rank(), parent)
                    for handler in logging.getLogger().handlers:
                        handler.flush()
                except Exception:  # noqa: BLE001 - a closed stderr must not keep the worker alive
                    pass
                os._exit(1)

    thread = threading.Thread(target=watch, name="llavidal-launcher-watch", daemon=True)
    thread.start()
    return thread


def warn_adapter_recipe_differences(adapter: str | None, folders: dict[str, str]) -> int:
    """Warn once per modality when ``--pretrain_mm_mlp_adapter`` was trained on features made another way
    than the feature folders of this run (its recorded manifests against the folders'). Returns the number
    of warnings."""
    if not adapter:
        return 0
    from llavidal.data.feature_store import FeatureManifest
    from llavidal.features.extractor import manifest_differences
    from llavidal.model.config import CONFIG_NAME, LlavidalConfig

    weights_dir = Path(adapter) if Path(adapter).is_dir() else Path(adapter).parent
    if not (weights_dir / CONFIG_NAME).is_file():
        return 0  # upstream mm_projector.bin and friends record no recipe
    try:
        recorded = LlavidalConfig.from_json_file(weights_dir).recorded_manifests(weights_dir)
    except ValueError as err:
        logger.warning("--pretrain_mm_mlp_adapter %s: its feature recipes could not be read (%s)", adapter, err)
        return 0
    current = feature_manifests(folders)
    warned = 0
    for name, expected in recorded.items():
        if name not in current:
            continue
        differences = manifest_differences(expected, FeatureManifest.from_dict(current[name]))
        if differences:
            warned += 1
            logger.warning(
                "--pretrain_mm_mlp_adapter %s: its %s projector was trained on features made differently from "
                "those in %s (%s); it starts from a mapping for other features: re-align on these features or "
                "re-extract them with the adapter's recipe", adapter, name, folders[name], "; ".join(differences),
            )
    return warned


@command("llavidal train")
def main(argv: list[str] | None = None, *, fastest_attention: bool = False) -> int:
    """Entry point of ``llavidal train`` / ``train.py`` / ``train_mem.py`` (``fastest_attention=True``)."""
    model_args, data_args, training_args = parse_args(argv)
    configure_logging(training_args)
    exit_with_launcher()
    train(model_args, data_args, training_args, fastest_attention)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        leave_process_group()
    return 0


def leave_process_group() -> None:
    """Tear torch.distributed down after training (``train`` has returned), every rank together.

    Every rank destroys the group itself: one exiting with the group alive can abort in the C++ destructor
    ("terminate called without an active exception", exit -6). And the trainer goes first. The group's
    destructor joins gloo's worker threads, and a worker may still be releasing a finished collective whose
    tensors belong to Python, which takes the GIL; when DDP's reducer held the group's last reference, its
    deallocation (GIL held) ran that join and the rank hung after saving (about one run in ten). With the
    trainer collected before the group is destroyed, the last reference is the group's Python handle, whose
    destructor releases the GIL.
    """
    import gc

    gc.collect()  # the trainer, the DDP wrapper and its reducer (reference cycles)
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    if alive:
        logger.warning("rank %d: %d DistributedDataParallel model(s) outlived training; their reducer may hold the "
                       "process group and hang this rank at exit", dist.rank(), alive)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
          fastest_attention: bool) -> None:
    """Build the model and data, train, and save to ``--output_dir`` (resuming from its last checkpoint)."""
    from llavidal.model.builder import best_attn_implementation, build_model

    registry = build_registry(model_args, data_args)
    if dist.is_main_process():
        warn_adapter_recipe_differences(model_args.pretrain_mm_mlp_adapter, data_args.feature_folders())
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
        video_conditioning=model_args.video_design_settings()[1],
    )
    for parameter in model.parameters():  # trainable weights stay float32 (master weights under autocast)
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if training_args.train_gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # How the features were made, so that a weights folder describes its own extractors wherever the
    # feature folders went (evaluation, the demo and servers rebuild them from these recipes).
    model.config.feature_manifests = feature_manifests(data_args.feature_folders())
    seq2seq = model.is_encoder_decoder  # Flan-T5 and the like: one sample per answer, answers as decoder labels
    if seq2seq and data_args.packing:
        raise ValueError("--packing is for causal LMs; the base model is an encoder-decoder (train without --packing)")

    dataset = build_training_dataset(  # --data_path, or a weighted --data_mixture; per-source counts logged
        data_args, tokenizer, registry, log=dist.is_main_process(), template=model_args.version,
        system=data_args.system_prompt, max_length=training_args.model_max_length,
        use_modality_string_prefix=model_args.use_modality_string_prefix,
        strict_features=data_args.strict_features, mask_probs=data_args.mask_probs(), seed=training_args.seed,
        seq2seq=seq2seq,
    )
    if data_args.packing:  # cache off (else samples of a row see each other), exact per-sample attention
        from llavidal.data.packing import prepare_model_for_packing

        attn = prepare_model_for_packing(model)
    collator = make_collator(data_args, training_args, tokenizer, attn_implementation=attn, seq2seq=seq2seq)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    state = training_args.distributed_state
    logger.info(
        "model %s (%s%s, attention %s); modalities: %s; template %s; trainable %d of %d parameters (%s); "
        "%d samples; world size %d (%s, backend %s)",
        model_args.model_name_or_path, torch_dtype, ", encoder-decoder" if seq2seq else "", attn or "default", describe_registry(registry),
        model_args.version, trainable, total,
        "LoRA" if model_args.lora_enable else ("LLM frozen" if model_args.tune_mm_mlp_adapter else "full LLM"),
        len(dataset), training_args.world_size, getattr(state, "distributed_type", "single process"),
        getattr(state, "backend", None),
    )
    trainer = LlavidalTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator,
        extra_config={
            "feature_folders": data_args.feature_folders(),
            "data_path": data_args.data_path or data_args.data_mixture,
            "model_max_length": training_args.model_max_length,
        },
    )
    if hasattr(dataset, "epoch_callback"):  # a --data_mixture draws its samples anew each epoch
        trainer.add_callback(dataset.epoch_callback())
    checkpoint = find_resume_checkpoint(training_args)
    if checkpoint:
        logger.info("resuming from checkpoint %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    skipped = {**{f"{k} (replaced by the next sample)": v for k, v in dataset.runtime_drops.items()},
               **{f"missing {k} features (zeros used)": v for k, v in dataset.runtime_missing.items()}}
    if skipped:
        logger.warning("rank %d, while training: %s", dist.rank(),
                       ", ".join(f"{reason} {count}" for reason, count in skipped.items()))
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    if dist.is_main_process():
        logger.info("saved %s (trainable.safetensors, llavidal_config.json, trainer_state.json)", training_args.output_dir)


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
