"""Projector alignment in the LLM's embedding space: a cheap stage before instruction tuning.

Upstream's first stage trains the projectors through the frozen LLM on captions, which costs a full
forward and backward pass of the LLM per sample. This stage needs no LLM pass at all: for samples whose
label text is known (an activity name, e.g. the correct option of a training MCQ), each modality's
projector is fitted so that the sample's projected tokens reproduce the LLM's own input embeddings of
that text (the label's token embeddings, repeated to the modality's token count), with a contrastive term
that makes the tokens closer to their label than to every other label of the set. After it the feature
tokens "spell" their label in a form the LLM already reads, and instruction tuning starts from features
the LLM can use instead of from random projections; on the embedded world it is what takes held-out
recognition from chance to well above it in a few minutes of CPU (see docs/quickstart_report/).

Input: a JSON list (or JSONL) of records naming feature files as training records do, with the label::

    {"id": "clip_1", "video": "clip_1.pkl", "pose": "clip_1_pose.pkl", "label": "drinking from a cup or bottle"}

A record may add ``"duration"`` (seconds) and ``"segments"`` ([{"start", "end", "label"}, ...]) for a clip
that shows several activities: the tokens of time-ordered modalities (``--align_temporal_modalities``,
default pose) are then fitted, each, to the activity at its time, so that a routine's tokens name its
activities in order and the last tokens the one it ends with.

A record may also name each object (or other grouped modality's group) with ``"group_labels"``:
``{"object": ["purple bottle", "brown table"]}``, one text per group of its feature file, in the file's
order. Those groups are fitted to their own name instead of the clip's ``label``, so that object tokens
spell what the object is (the clip's activity is what the video and pose say).

A record (and each of its ``segments``) may give one modality another text than its ``label`` with
``"modality_labels"``: ``{"label": "drinking from a cup or bottle", "modality_labels": {"pose": "right hand,
drinking from a cup or bottle"}}`` fits the pose tokens to the second text and the other modalities to the
first, for what one modality shows and the others do not (the hand, from the skeleton). Each projector's
contrastive term and nearest-label accuracy are over the texts its tokens can be fitted to: every
record's ``label`` and segment labels when some of its tokens take them, plus the group names it uses.

The held-out samples (``--align_val_fraction``, by a hash of the id) are chosen by record ``"holdout_group"``
when a record gives one: records of the same group are held out together, so that the same performance
filmed by another camera (or mirrored) is not in the fit of a held-out one (the quickstart groups by the
world's ``performance_id``).

Output: ``trainable.safetensors`` + ``llavidal_config.json`` (projectors and token rows), which
``train_mem.py --pretrain_mm_mlp_adapter DIR`` starts from, and ``align_report.json`` (per modality:
samples, labels, loss and nearest-label accuracy on held-out samples before and after).

    llavidal align --model_name_or_path LLM --data_path labels.json --video_folder feats/video \\
        --pose_folder feats/pose --mm_projector_type mlp2x_gelu --output_dir runs/align
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from llavidal.config import command

logger = logging.getLogger("llavidal.align")

REPORT_NAME = "align_report.json"


@dataclass
class AlignArguments:
    """Settings of the alignment stage (model and feature flags are train_mem.py's)."""

    output_dir: str = field(metadata={"help": "Where trainable.safetensors, llavidal_config.json and align_report.json go."})
    align_steps: int = field(default=400, metadata={"help": "Optimizer steps per modality."})
    align_batch_size: int = field(default=64, metadata={"help": "Samples per step."})
    align_learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    align_contrastive_weight: float = field(
        default=1.0, metadata={"help": "Weight of the contrastive term (0: plain regression onto the label's embeddings)."}
    )
    align_temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature over labels; squared distances are first divided by the labels' mean "
                          "squared token norm, so the value does not depend on the LLM's embedding scale."},
    )
    align_val_fraction: float = field(
        default=0.1, metadata={"help": "Share of samples held out to report nearest-label accuracy, drawn by a hash "
                                       "of each record's holdout_group (else its id); 0 trains on all."}
    )
    align_temporal_modalities: str = field(
        default="pose",
        metadata={"help": "Comma-separated modalities whose tokens are in time order: for records with "
                          "'segments' and 'duration', each token is fitted to the label of the segment at its time."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the projector initialisation and the batches."})

    def temporal(self) -> set[str]:
        return {name.strip() for name in self.align_temporal_modalities.split(",") if name.strip()}

    def __post_init__(self) -> None:
        if self.align_steps < 0 or self.align_batch_size <= 0:
            raise ValueError("--align_steps must be >= 0 and --align_batch_size > 0")
        if not 0.0 <= self.align_val_fraction < 1.0:
            raise ValueError(f"--align_val_fraction must be in [0, 1), got {self.align_val_fraction}")
        if self.align_temperature <= 0:
            raise ValueError(f"--align_temperature must be positive, got {self.align_temperature}")


# ---------------------------------------------------------------------------- data
def load_label_records(path: str | Path) -> list[dict]:
    """Records with a ``label`` string; errors name the file and the record."""
    from llavidal.data.dataset import load_records

    records = load_records(path)
    for index, record in enumerate(records):
        label = record.get("label") if isinstance(record, dict) else None
        if not isinstance(label, str) or not label.strip():
            rid = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
            raise ValueError(
                f"{path}: record {rid} has no 'label' text; every alignment record needs one "
                f"(e.g. the activity name the clip shows)"
            )
        for item in [record] + list(record.get("segments") or []):
            given = item.get("modality_labels") if isinstance(item, dict) else None
            if given is not None and not (isinstance(given, dict) and all(
                    isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in given.items())):
                raise ValueError(
                    f"{path}: record {record.get('id', f'#{index}')} gives modality_labels = {given!r}; give a "
                    f"mapping of modality name to a non-empty text (e.g. {{\"pose\": \"right hand, waving\"}})"
                )
    return records


def _held_out(record_id: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def label_targets(tokenizer: Any, embeddings: Tensor, labels: Sequence[str], num_tokens: int) -> Tensor:
    """(L, num_tokens, H): each label's token embeddings (as it appears after a space), cycled to length."""
    rows = []
    for label in labels:
        ids = tokenizer.encode(" " + label.strip(), add_special_tokens=False)
        if not ids:
            raise ValueError(f"label {label!r} tokenises to nothing")
        index = torch.arange(num_tokens) % len(ids)
        rows.append(embeddings[torch.as_tensor(ids)[index]])
    return torch.stack(rows)


def modality_label(item: dict, modality: str) -> str:
    """The text a record's (or segment's) tokens of ``modality`` are fitted to: its ``modality_labels`` entry
    for the modality, else its ``label``."""
    given = (item.get("modality_labels") or {}).get(modality) if modality else None
    return str(given if given is not None else item["label"]).strip()


def record_labels(record: dict, groups: bool = True, modality: str | None = None) -> list[str]:
    """The label texts a record uses: its ``label`` and those of its ``segments``, with their
    ``modality_labels`` (every modality's, or only ``modality``'s in place of the label), and (``groups``) its
    ``group_labels``."""
    items = [record] + [seg for seg in record.get("segments") or [] if seg.get("label")]
    if modality is not None:
        return [modality_label(item, modality) for item in items]
    out = [str(item["label"]).strip() for item in items]
    out += [str(text).strip() for item in items for text in (item.get("modality_labels") or {}).values()]
    for texts in (record.get("group_labels") or {}).values() if groups else ():
        out += [str(text).strip() for text in texts]
    return out


def group_labels(record: dict, modality: str, groups: int, where: str) -> list[str] | None:
    """The texts of a record's ``groups`` groups (objects) of ``modality`` from its ``group_labels``, or None
    when it gives none for that modality (every group then takes the record's ``label``)."""
    given = (record.get("group_labels") or {}).get(modality)
    if given is None:
        return None
    if not isinstance(given, list) or len(given) != groups or not all(isinstance(t, str) and t.strip() for t in given):
        raise ValueError(
            f"{where}: record {record.get('id')} gives group_labels[{modality!r}] = {given!r}, but its {modality} "
            f"feature file has {groups} group(s); give one non-empty text per group, in the file's order "
            f"(or leave the key out to fit every group to the record's label)"
        )
    return [text.strip() for text in given]


def token_labels(record: dict, k: int, temporal: bool, modality: str = "") -> list[str]:
    """The label each of ``k`` tokens (of ``modality``: its ``modality_labels`` where given) is fitted to.

    Tokens of a temporal modality cover equal spans of the clip in order (as the pose encoder pools its
    time-major sequence); when the record gives ``segments`` ({start, end, label}, seconds) and
    ``duration``, token i takes the label of the segment at the middle of its span, so that the tokens
    of a clip showing several activities spell them in order. Otherwise every token takes ``label``.
    """
    label = modality_label(record, modality)
    segments = [seg for seg in record.get("segments") or [] if seg.get("label") is not None]
    duration = float(record.get("duration") or 0.0)
    if not temporal or not segments or duration <= 0:
        return [label] * k
    segments = sorted(segments, key=lambda seg: float(seg["start"]))
    out = []
    for index in range(k):
        time_point = (index + 0.5) / k * duration
        current = segments[0]
        for seg in segments:
            if float(seg["start"]) <= time_point:
                current = seg
        out.append(modality_label(current, modality))
    return out


@dataclass
class _ModalityData:
    features: Tensor  # (S, k, D): one row per sample (per object for grouped modalities)
    label_index: Tensor  # (S, k): the label of every token, an index into ``labels``
    held_out: Tensor  # (S,) bool
    labels: list[str] = field(default_factory=list)  # the texts this modality's tokens are fitted to, sorted


def collect(
    records: Sequence[dict], modality: Any, folder: Any, val_fraction: float, temporal: bool = False
) -> _ModalityData | None:
    """Features of one modality for every record that names a file of it (objects: one row per object, fitted
    to the record's ``group_labels`` for the modality when it gives them)."""
    feats, token_texts, held = [], [], []
    named_texts: set[str] = set()
    takes_record_labels = False
    k = modality.group_size if modality.variable else modality.num_tokens
    for index, record in enumerate(records):
        name = record.get(modality.name)
        if not name:
            continue
        rid = str(record.get("id", index))
        array = folder.get(str(name), record_id=rid)
        if array is None:
            continue
        array = np.asarray(array, dtype=np.float32)
        if array.shape[-1] != modality.feature_dim:
            raise ValueError(
                f"{folder.folder}: {modality.name} features of record {rid} have shape {array.shape}; the model "
                f"expects {modality.feature_dim}-d rows; re-extract them with the settings this model uses"
            )
        tensor = torch.from_numpy(array.reshape(-1, modality.feature_dim))
        rows = tensor.shape[0]
        if modality.variable and rows == 0:
            continue  # a clip without objects
        if (modality.variable and rows % k) or (not modality.variable and rows != k):
            expected = f"a multiple of {k}" if modality.variable else str(k)
            raise ValueError(
                f"{folder.folder}: {modality.name} features of record {rid} have {rows} rows, the model expects "
                f"{expected}; re-extract them with the settings this model uses"
            )
        groups = tensor.reshape(-1, k, modality.feature_dim)
        per_token = token_labels(record, k, temporal and not modality.variable, modality.name)
        named = group_labels(record, modality.name, len(groups), str(folder.folder)) if modality.variable else None
        named_texts.update(named or ())
        takes_record_labels = takes_record_labels or not named
        for number, group in enumerate(groups):
            feats.append(group)
            token_texts.append([named[number]] * k if named else per_token)
            held.append(_held_out(str(record.get("holdout_group") or rid), val_fraction))
    if not feats:
        return None
    # the texts the tokens compete over: every record's label (and segment labels) when tokens take them,
    # as a clip's tokens may take any of them, and the group names in use
    record_texts = {text for record in records for text in record_labels(record, groups=False, modality=modality.name)}
    labels = sorted(named_texts | (record_texts if takes_record_labels else set()))
    position = {text: index for index, text in enumerate(labels)}
    label_index = torch.as_tensor([[position[text] for text in texts] for texts in token_texts])
    return _ModalityData(torch.stack(feats), label_index, torch.as_tensor(held, dtype=torch.bool), labels)


# ---------------------------------------------------------------------------- fitting
def _distances(tokens: Tensor, targets: Tensor) -> Tensor:
    """(B, k, L): squared distance of each projected token (B, k, H) to each label's target at its position (L, k, H)."""
    diff = tokens[:, :, None] - targets.permute(1, 0, 2)[None]  # (B, k, L, H)
    return diff.pow(2).sum(-1)


def _evaluate(projector: nn.Module, data: _ModalityData, mask: Tensor, targets: Tensor) -> float | None:
    """Nearest-label accuracy: for each sample and each label its tokens are fitted to (one, or one per
    segment), is the label whose targets are nearest to those tokens, summed over them, the right one?"""
    if int(mask.sum()) == 0:
        return None
    with torch.no_grad():
        distances = _distances(projector(data.features[mask]), targets)  # (S, k, L)
    hits = total = 0
    for sample_distances, truth in zip(distances, data.label_index[mask]):
        for label in torch.unique(truth):
            chosen = truth == label
            hits += int(sample_distances[chosen].sum(0).argmin() == label)
            total += 1
    return hits / total


def fit_projector(
    projector: nn.Module, data: _ModalityData, targets: Tensor, args: AlignArguments, generator: torch.Generator
) -> dict:
    """Adam on regression + contrastive loss; returns the figures for the report."""
    train = ~data.held_out
    train_index = torch.nonzero(train).flatten()
    if train_index.numel() == 0:
        raise ValueError("every sample is held out; lower --align_val_fraction")
    scale = targets.pow(2).sum(-1).mean()  # the labels' mean squared token norm: the regression's unit
    before = {"train": _evaluate(projector, data, train, targets), "held_out": _evaluate(projector, data, data.held_out, targets)}
    optimizer = torch.optim.Adam(projector.parameters(), lr=args.align_learning_rate)
    losses: list[float] = []
    for step in range(args.align_steps):
        lr = args.align_learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(1, args.align_steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        pick = train_index[torch.randint(train_index.numel(), (args.align_batch_size,), generator=generator)]
        tokens = projector(data.features[pick])  # (B, k, H)
        truth = data.label_index[pick]  # (B, k)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        regression = (tokens - targets[truth, positions]).pow(2).sum(-1).mean() / scale
        loss = regression
        if args.align_contrastive_weight > 0:
            logits = -_distances(tokens, targets) / (scale * args.align_temperature)  # (B, k, L)
            loss = loss + args.align_contrastive_weight * nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), truth.reshape(-1)
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = {"train": _evaluate(projector, data, train, targets), "held_out": _evaluate(projector, data, data.held_out, targets)}
    with torch.no_grad():
        norm = float(projector(data.features[train_index[:256]]).norm(dim=-1).mean())
    return {
        "samples": int(train.sum()),
        "held_out_samples": int(data.held_out.sum()),
        "labels": int(torch.unique(data.label_index).numel()),
        "multi_label_samples": int((data.label_index != data.label_index[:, :1]).any(-1).sum()),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-20:])) if losses else None,
        "accuracy_before": before,
        "accuracy_after": after,
        "chance": 1.0 / targets.shape[0],
        "token_norm": norm,
        "label_token_norm": float(targets.norm(dim=-1).mean()),
    }


def align_model(model: Any, tokenizer: Any, records: Sequence[dict], folders: dict[str, Any], args: AlignArguments) -> dict:
    """Fit every projector of ``model`` whose modality has a folder and labelled samples; returns the report."""
    labels = sorted({name for record in records for name in record_labels(record)})
    embeddings = model.llm.get_input_embeddings().weight.detach().float().cpu()
    generator = torch.Generator().manual_seed(args.seed)
    report: dict[str, Any] = {"labels": labels, "records": len(records), "settings": asdict(args), "modalities": {}}
    for spec in model.modalities:
        if spec.name not in folders:
            continue
        data = collect(records, spec, folders[spec.name], args.align_val_fraction, temporal=spec.name in args.temporal())
        if data is None:
            logger.info("%s: no labelled samples with features; projector left as initialised", spec.name)
            report["modalities"][spec.name] = {"samples": 0}
            continue
        k = data.features.shape[1]
        targets = label_targets(tokenizer, embeddings, data.labels, k)
        projector = model.projectors[spec.name]
        device = next(projector.parameters()).device
        data = _ModalityData(data.features.to(device), data.label_index.to(device), data.held_out.to(device), data.labels)
        start = time.perf_counter()
        figures = fit_projector(projector, data, targets.to(device), args, generator)
        figures["seconds"] = round(time.perf_counter() - start, 2)
        report["modalities"][spec.name] = figures
        after = figures["accuracy_after"]
        logger.info(
            "%s: %d samples, %d labels, loss %.3f -> %.3f; nearest-label accuracy train %.3f, held-out %s "
            "(chance %.3f), %.1fs", spec.name, figures["samples"], figures["labels"], figures["loss_first"] or 0.0,
            figures["loss_last"] or 0.0, after["train"] or 0.0,
            "n/a" if after["held_out"] is None else f"{after['held_out']:.3f}", figures["chance"], figures["seconds"],
        )
    return report


# ---------------------------------------------------------------------------- CLI
@command("llavidal align")
def main(argv: list[str] | None = None) -> int:
    from llavidal.data.feature_store import FeatureFolder
    from llavidal.model.builder import build_model
    from llavidal.train.args import DataArguments, ModelArguments, build_registry, describe_registry, parse_args
    from llavidal.utils.io import atomic_write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, args = parse_args(argv, (ModelArguments, DataArguments, AlignArguments), "llavidal align")
    if data_args.data_mixture or data_args.image_folder:
        raise ValueError("llavidal align reads one --data_path of label records; --data_mixture and --image_folder are "
                         "for llavidal train")
    records = load_label_records(data_args.data_path)
    registry = build_registry(model_args, data_args)
    torch.manual_seed(args.seed)  # the projectors' initialisation
    model, tokenizer = build_model(
        model_args.model_name_or_path, registry, torch_dtype="float32", freeze_llm=True,
        use_modality_string_prefix=model_args.use_modality_string_prefix, template=model_args.version,
        pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter,
    )
    logger.info("aligning %s to %s's embeddings on %d labelled records", describe_registry(registry),
                model_args.model_name_or_path, len(records))
    folders = {name: FeatureFolder(path, modality=name, strict=data_args.strict_features)
               for name, path in data_args.feature_folders().items()}
    report = align_model(model, tokenizer, records, folders, args)
    missing = {name: len(folder.missing) for name, folder in folders.items() if folder.missing}
    if missing:
        logger.warning("records whose feature file was not found (skipped for that modality): %s", missing)
        report["missing_features"] = missing
    out = Path(args.output_dir)
    model.config.extra = {**(model.config.extra or {}), "stage": "align", "data_path": data_args.data_path}
    model.save_pretrained(out)
    atomic_write_json(out / REPORT_NAME, report)
    logger.info("saved %s (trainable.safetensors, llavidal_config.json, %s)", out, REPORT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
