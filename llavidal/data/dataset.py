"""Instruction data: a lazy dataset over upstream LLAVIDAL / Video-ChatGPT training records.

A record (JSON list or JSONL, one record per line)::

    {"id": "v_1", "video": "v_1.pkl", "pose": "v_1_pose.pkl", "object": "v_1_object.pkl",
     "conversations": [{"from": "human", "value": "What happens?\\n<video><object><human_pose>"},
                       {"from": "gpt", "value": "The person drinks from a mug."}]}

Only the modalities whose feature folder is given are used; a placeholder of any other modality is
removed from the text. A sample uses a modality when its placeholder appears in one of its human turns;
the file comes from the record's field of that name (``video``, ``pose``, ``object``), else
``{id}{file_suffix}`` with any supported extension.

At construction every record is checked cheaply (structure, placeholders, feature files present, the
label mask against the tokenisation, length) and a summary is logged; the features themselves are read
lazily in ``__getitem__``. Items::

    {"input_ids": LongTensor (T,), "labels": LongTensor (T,),
     "modality_features": {name: Tensor (k, D)}, "id": str}

Rules (upstream behaviour unless noted):

* missing feature file: zeros of the modality's shape and a counted warning, or an error naming the
  record with ``strict_features=True``;
* feature values that are not finite (NaN/Inf) or not floating point: the sample is skipped with a counted
  warning naming the file (:func:`~llavidal.data.feature_store.check_feature_array`), or an error naming the
  file and record with ``strict_features=True``;
* label mask disagreeing with the tokenisation: the sample is dropped with a warning (upstream silently
  zeroes its labels);
* overlong sample: truncated to ``max_length`` without cutting into a modality span (a span that would
  be cut is removed whole, with its features); dropped, with a count, when nothing supervised remains;
* modality dropout: ``mask_probs[name]`` is the probability of zeroing that modality's features for a
  sample (seeded by seed, epoch and index).

Images and text (LLaVA-format records, as PLLaVA and LSTP-Chat train beside videos)::

    {"id": "000123", "image": "000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"}, {"from": "gpt", "value": "..."}]}

LLaVA's ``<image>`` placeholder is an alias of the video placeholder (:data:`PLACEHOLDER_ALIASES`): an image is
a 1-frame video whose features (``llavidal extract video`` on a folder of images, :mod:`llavidal.features.images`)
go through the video span and the video projector. A record with an ``image`` field (and no ``video`` field)
reads its video-span features from ``image_folder`` (the image's stem: ``000123.jpg`` -> ``000123.safetensors``);
without an ``image_folder`` such a record is dropped (``no_image_folder``). A record with no placeholder is a
text-only sample: no modality span, all modalities absent (the model's zero-weight projector term keeps DDP
whole). The summary counts usable records per source (``video``, ``image``, ``text``).

A sample found unusable only when its features are read (a wrong-shaped file, a truncation that leaves
nothing to learn) is replaced by the next usable one and counted, so a long run never crashes on it.

Encoder-decoder backbones (``seq2seq=True``, passed when the model is one, e.g. Flan-T5): a record gives one
sample per assistant answer. The SOURCE (encoder input) is the generation prompt of that answer, exactly as
the inference engine renders it (:func:`seq2seq_source`: system prompt, the earlier turns with their answers,
the question, with the modality spans of the turns it includes), tokenised with the tokenizer's special
tokens (none with the ``chat`` template, as the engine does); the TARGET (decoder labels) is the answer,
stripped, followed by the eos token. Items are then::

    {"input_ids": LongTensor (T,) source, "labels": LongTensor (L,) target,
     "modality_features": {name: Tensor (k, D)} of the spans in the source, "id": str}

A modality whose placeholder first appears in a later question is not part of the earlier answers'
samples. A source longer than ``max_length`` is truncated as above (never inside a span); a target longer
than ``max_length`` is cut to it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from llavidal.constants import IGNORE_INDEX
from llavidal.data.feature_store import (
    FEATURE_EXTENSIONS,
    FeatureFileError,
    FeatureFolder,
    check_feature_array,
    check_manifest_compatible,
)
from llavidal.data.templates import (
    ConversationMismatchError,
    get_template,
    normalize_conversation,
    render_generation_prompt,
    render_v1,
    tokenize_conversation,
)
from llavidal.model.modality import ModalityRegistry, ModalitySpec, SpliceError, default_modalities, expand_placeholders
from llavidal.utils.io import read_utf8_text

logger = logging.getLogger(__name__)

# How many individual warnings of one kind are logged before only the count is kept.
_WARN_LIMIT = 5

IMAGE_PLACEHOLDER = "<image>"
PLACEHOLDER_ALIASES = {IMAGE_PLACEHOLDER: "video"}
"""Placeholder -> the modality whose span it stands for (LLaVA's ``<image>``: the video span)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SOURCES = ("video", "image", "text")
"""What a record is made from: video features, an image (a 1-frame video), or text only."""


def record_source(record: Mapping[str, Any]) -> str:
    """``image`` for a record that names an ``image`` (and no ``video``), ``text`` for one without any modality
    placeholder in its human turns, else ``video``."""
    conversations = record.get("conversations")
    human = "".join(
        str(m.get("value", m.get("content", ""))) for m in (conversations if isinstance(conversations, list) else [])
        if isinstance(m, dict) and m.get("from", m.get("role")) in ("human", "user")
    )
    placeholders = [s.placeholder for s in default_modalities().values()] + list(PLACEHOLDER_ALIASES)
    if not any(p in human for p in placeholders):
        return "text"
    return "image" if isinstance(record.get("image"), str) and not record.get("video") else "video"


def _with_aliases(record: dict, registry: ModalityRegistry) -> dict:
    """The record with each alias placeholder (``<image>``) in its human turns written as its modality's
    placeholder (a copy; the record itself is left as it is)."""
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        return record
    changed = []
    for message in conversations:
        if isinstance(message, dict) and message.get("from", message.get("role")) in ("human", "user"):
            key = "value" if "value" in message else "content"
            text = message.get(key)
            if isinstance(text, str) and any(alias in text for alias in PLACEHOLDER_ALIASES):
                for alias, name in PLACEHOLDER_ALIASES.items():
                    target = registry[name].placeholder if name in registry else default_modalities()[name].placeholder
                    text = text.replace(alias, target)
                message = {**message, key: text}
        changed.append(message)
    return {**record, "conversations": changed}


class SampleDropped(Exception):
    """A sample cannot be used; ``reason`` is the summary key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_records(data_path: str | os.PathLike) -> list[dict]:
    """Records from a JSON list or a JSONL file (errors name the file and line)."""
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist; check --data_path")
    text = read_utf8_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({err.msg}); expected one record per line") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a JSON list of records (objects) or JSONL with one object per line")
    return records


@dataclass
class DatasetSummary:
    """Counts gathered while checking the records (logged at the start of training)."""

    records: int = 0
    usable: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    """reason -> number of records dropped before training (``tokenization_mismatch``, ``malformed``...)."""
    missing_features: collections.Counter = field(default_factory=collections.Counter)
    """modality -> records whose feature file is missing (replaced by zeros)."""
    truncated: int = 0
    """Records longer than ``max_length`` that will be truncated."""
    truncated_ids: list = field(default_factory=list)
    """The first few of them (named in the summary)."""
    modality_samples: collections.Counter = field(default_factory=collections.Counter)
    """modality -> records that use it."""
    examples: int = 0
    """Samples made from the usable records when there is one per answer (encoder-decoder); 0 otherwise."""
    sources: collections.Counter = field(default_factory=collections.Counter)
    """source (``video``, ``image``, ``text``) -> usable records of it."""

    def format(self, max_length: int, data_path: str = "") -> str:
        lines = [
            f"training data {data_path}: {self.records} records, {self.usable} usable"
            + (f" ({self.examples} samples: one per answer)" if self.examples else ""),
            "  modalities used: " + (", ".join(f"{k} {v}" for k, v in self.modality_samples.items()) or "none"),
            "  sources: " + (", ".join(f"{k} {self.sources[k]}" for k in SOURCES if self.sources.get(k)) or "none"),
        ]
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        if self.missing_features:
            lines.append(
                "  missing feature files (zeros used): "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.missing_features.items()))
            )
        if self.truncated:
            more = ", ..." if self.truncated > len(self.truncated_ids) else ""
            lines.append(f"  truncated to {max_length} tokens: {self.truncated} ({', '.join(self.truncated_ids)}{more})")
        return "\n".join(lines)


@dataclass
class _Prepared:
    """What the pre-check learned about one record (kept for ``__getitem__``)."""

    record_index: int
    sample_id: str
    modalities: list[str]
    """Modalities the sample uses (registry order)."""
    files: dict[str, str]
    """modality -> file name to resolve in that modality's folder."""
    length: int
    """Token count (objects counted as one object until their file is read)."""
    turn: int = 0
    """Which assistant answer of the record the sample supervises (encoder-decoder samples; 0 otherwise)."""
    source: str = "video"
    """``video``, ``image`` (the video span's features come from the image folder) or ``text``."""


def _list_folder(folder: Path) -> set[str]:
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _stem(name: str) -> str:
    base = Path(name).name
    for ext in FEATURE_EXTENSIONS:
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _resolvable(name: str, listing: set[str]) -> bool:
    """Whether ``FeatureFolder.resolve(name)`` would find a file, from a folder listing (no stat per file)."""
    if name in listing:
        return True
    stem = _stem(name)
    return any(stem + ext in listing for ext in FEATURE_EXTENSIONS)


class LazySupervisedDataset(Dataset):
    """Upstream training records with features read lazily (see the module docstring).

    ``modalities`` is the registry of the modalities in use (the model's), ``feature_folders`` maps each
    of its names to a folder. ``mask_probs`` maps modality -> dropout probability.
    """

    def __init__(
        self,
        data: str | os.PathLike | Sequence[dict],
        tokenizer: Any,
        modalities: ModalityRegistry,
        feature_folders: Mapping[str, str | os.PathLike],
        *,
        template: str = "v1",
        system: str | None = None,
        max_length: int = 2048,
        use_modality_string_prefix: bool = False,
        strict_features: bool = False,
        mask_probs: Mapping[str, float] | None = None,
        seed: int = 42,
        log_summary: bool = True,
        seq2seq: bool = False,
        image_folder: str | os.PathLike | None = None,
    ) -> None:
        self.data_path = "" if isinstance(data, (list, tuple)) else str(data)
        records = list(data) if isinstance(data, (list, tuple)) else load_records(data)
        self.records = [_with_aliases(record, modalities) for record in records]
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.max_length = int(max_length)
        self.use_prefix = bool(use_modality_string_prefix)
        self.strict_features = bool(strict_features)
        self.seed = int(seed)
        self.epoch = 0
        self.seq2seq = bool(seq2seq)
        if self.seq2seq and tokenizer.eos_token_id is None:
            raise ValueError("encoder-decoder training needs a tokenizer with an eos token (it ends every answer)")
        # The engine tokenises prompts with the tokenizer's special tokens, except for chat templates.
        self._source_special_tokens = get_template(template).style != "chat"
        missing_folders = [name for name in modalities.names() if name not in feature_folders]
        if missing_folders:
            raise ValueError(f"no feature folder given for modalities {missing_folders}; pass --{missing_folders[0]}_folder")
        self.modalities = modalities
        self.mask_probs = {name: float(p) for name, p in (mask_probs or {}).items() if p}
        for name, probability in self.mask_probs.items():
            if name not in modalities:
                raise ValueError(f"mask probability given for modality {name!r}, which is not in use ({modalities.names()})")
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"--{name}_mask_prob must be in [0, 1], got {probability}")
        self.folders: dict[str, FeatureFolder] = {}
        for spec in modalities:
            folder = Path(feature_folders[spec.name])
            self.folders[spec.name] = FeatureFolder(folder, spec.name, strict=self.strict_features)
            # Refuse features made for another model before any step runs.
            check_manifest_compatible(folder, spec.name, spec.feature_dim, spec.num_tokens or None)
        self.image_folder: FeatureFolder | None = None
        if image_folder:
            if "video" not in modalities:
                raise ValueError(f"--image_folder {image_folder}: images go through the video modality, which is not in "
                                 "use; give video features too (--video_folder) or a model with a video projector")
            self.image_folder = FeatureFolder(Path(image_folder), "image", strict=self.strict_features)
            video = modalities["video"]
            check_manifest_compatible(image_folder, "video", video.feature_dim, video.num_tokens or None)
        # Placeholders of modalities not in use are removed from the text.
        known = {spec.placeholder for spec in default_modalities().values()} | {s.placeholder for s in modalities}
        self.unused_placeholders = sorted(known - {s.placeholder for s in modalities})
        self.span_ids = {
            spec.name: (
                tokenizer.convert_tokens_to_ids(spec.start_token),
                tokenizer.convert_tokens_to_ids(spec.end_token),
            )
            for spec in modalities
        }
        for spec in modalities:
            for token in spec.new_tokens:
                token_id = tokenizer.convert_tokens_to_ids(token)
                if token_id is None or token_id == tokenizer.unk_token_id:
                    raise ValueError(
                        f"the tokenizer lacks the modality token {token!r}; build the tokenizer with "
                        "llavidal.model.builder.build_model (it adds the modality tokens)"
                    )
        self.summary = DatasetSummary(records=len(self.records))
        self.runtime_drops: collections.Counter = collections.Counter()
        self.runtime_missing: collections.Counter = collections.Counter()
        self._warned: collections.Counter = collections.Counter()
        self.samples: list[_Prepared] = self._precheck()
        if not self.samples:
            raise ValueError(
                f"{self.data_path or 'training data'}: no usable records out of {len(self.records)} "
                f"({dict(self.summary.dropped)}); see the warnings above"
            )
        if log_summary:
            logger.info(self.summary.format(self.max_length, self.data_path))

    # ------------------------------------------------------------------ checks at construction
    def _warn(self, kind: str, message: str) -> None:
        self._warned[kind] += 1
        if self._warned[kind] <= _WARN_LIMIT:
            logger.warning(message)
        elif self._warned[kind] == _WARN_LIMIT + 1:
            logger.warning("further '%s' warnings are only counted (see the data summary)", kind)

    def _sample_id(self, record: dict, index: int) -> str:
        value = record.get("id", record.get("video_id"))
        if value is None and isinstance(record.get("video"), str):
            value = _stem(record["video"])
        if value is None and isinstance(record.get("image"), str):
            value = Path(record["image"]).stem
        return str(value) if value is not None else f"#{index}"

    def _precheck(self) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        listings = {name: _list_folder(folder.folder) for name, folder in self.folders.items()}
        image_listing = _list_folder(self.image_folder.folder) if self.image_folder is not None else set()
        where = self.data_path or "records"
        for index, record in enumerate(self.records):
            sample_id = self._sample_id(record, index)
            try:
                conversations = record.get("conversations")
                if not isinstance(conversations, list):
                    raise SampleDropped("malformed", f"{where}: record {index} ({sample_id}) has no 'conversations' list")
                try:
                    normalize_conversation(conversations, sample_id)
                except ValueError as err:
                    raise SampleDropped("malformed", f"{where}: record {index}: {err}") from None
                used = self._modalities_in(conversations, sample_id)
                source = "image" if "video" in used and record_source(record) == "image" else ("video" if used else "text")
                if source == "image" and self.image_folder is None:
                    raise SampleDropped(
                        "no_image_folder",
                        f"{where}: record {index} ({sample_id}) names image {record['image']!r} but no image feature "
                        "folder was given; pass --image_folder (features from `llavidal extract video` on the images)",
                    )
                files: dict[str, str] = {}
                for name in used:
                    spec = self.modalities[name]
                    from_image = source == "image" and name == "video"
                    file_name = record.get(name) or f"{sample_id}{spec.file_suffix}"
                    if from_image:
                        image = Path(record["image"])
                        file_name = image.stem if image.suffix.lower() in IMAGE_SUFFIXES else image.name
                    if not isinstance(file_name, str):
                        raise SampleDropped("malformed", f"{where}: record {index} ({sample_id}): field {name!r} is not a file name")
                    files[name] = file_name
                    folder = self.image_folder.folder if from_image else self.folders[name].folder
                    if not _resolvable(file_name, image_listing if from_image else listings[name]):
                        kind = "image" if from_image else name
                        if self.strict_features:
                            raise FeatureFileError(
                                f"{where}: record {index} ({sample_id}): no {kind} feature file {file_name!r} in "
                                f"{folder} (any of {FEATURE_EXTENSIONS}); extract it or drop "
                                "--strict_features to train on zeros"
                            )
                        self.summary.missing_features[kind] += 1
                        self._warn(
                            f"missing_{kind}",
                            f"record {sample_id}: no {kind} features {file_name!r} in {folder}; zeros will be used",
                        )
                rows = {name: self.modalities[name].tokens_for(self.modalities[name].expected_shape()) for name in used}
                if self.seq2seq:
                    examples = self._precheck_seq2seq(conversations, used, rows, sample_id)
                else:
                    input_ids, labels = self._tokenize(conversations, rows, sample_id, compact=True)
                    length = len(input_ids) + sum(rows[name] - 1 for name in used if rows[name])  # compact spans hold one patch
                    if length > self.max_length:
                        expanded = self._expand_compact(input_ids, labels, rows)
                        self._truncate(expanded[0], expanded[1], dict.fromkeys(used), sample_id)
                        self.summary.truncated += 1
                        if len(self.summary.truncated_ids) < _WARN_LIMIT:  # name the first few in the summary
                            self.summary.truncated_ids.append(sample_id)
            except SampleDropped as dropped:
                self.summary.dropped[dropped.reason] += 1
                self._warn(dropped.reason, f"dropped ({dropped.reason.replace('_', ' ')}): {dropped}")
                continue
            for name in used:
                self.summary.modality_samples[name] += 1
            self.summary.sources[source] += 1
            if self.seq2seq:
                prepared.extend(
                    _Prepared(index, sample_id, names, {n: files[n] for n in names}, length, turn,
                              source if names else "text")
                    for turn, names, length in examples
                )
                self.summary.usable += 1
                continue
            prepared.append(_Prepared(index, sample_id, used, files, min(length, self.max_length), source=source))
        if self.seq2seq:
            self.summary.examples = len(prepared)
        else:
            self.summary.usable = len(prepared)
        return prepared

    def _precheck_seq2seq(
        self, conversations: list, used: list[str], rows: Mapping[str, int], sample_id: str
    ) -> list[tuple[int, list[str], int]]:
        """(answer index, modalities in its source, source length) of each answer of a record (encoder-decoder)."""
        turns = normalize_conversation(conversations, sample_id)  # already checked by the caller
        examples = []
        truncated = False
        for turn in range(len(turns) // 2):
            names = self._seq2seq_modalities(turns, used, turn)
            here = {name: rows[name] for name in names}
            source_ids, _ = self._tokenize_seq2seq(conversations, here, sample_id, turn)
            length = len(source_ids) + sum(count - 1 for count in here.values() if count)  # compact spans hold one patch
            if length > self.max_length:
                truncated = True
            examples.append((turn, names, min(length, self.max_length)))
        if truncated:
            self.summary.truncated += 1
            if len(self.summary.truncated_ids) < _WARN_LIMIT:
                self.summary.truncated_ids.append(sample_id)
        return examples

    def _seq2seq_modalities(self, turns: list[tuple[str, str]], used: list[str], turn: int) -> list[str]:
        """Modalities (of ``used``) whose placeholder is in a question up to the ``turn``-th answer."""
        questions = "".join(text for role, text in turns[: 2 * turn + 1] if role == "user")
        return [name for name in used if self.modalities[name].placeholder in questions]

    def _modalities_in(self, conversations: list, sample_id: str) -> list[str]:
        human_text = "".join(
            str(m.get("value", "")) for m in conversations if isinstance(m, dict) and m.get("from", m.get("role")) in ("human", "user")
        )
        used = []
        for spec in self.modalities:
            count = human_text.count(spec.placeholder)
            if count > 1:
                raise SampleDropped(
                    "repeated_placeholder",
                    f"record {sample_id}: {spec.placeholder} appears {count} times; each modality may appear once",
                )
            if count == 1:
                used.append(spec.name)
        return used

    @staticmethod
    def _expected_rows(spec: ModalitySpec) -> int:
        return spec.num_tokens if not spec.variable else spec.group_size  # one object until read

    # ------------------------------------------------------------------ text
    def _render_turn(self, text: str, rows: Mapping[str, int], sample_id: str, compact: bool) -> str:
        removed = False
        for placeholder in self.unused_placeholders:
            if placeholder in text:
                text = text.replace(placeholder, "")
                removed = True
        if compact:
            # One patch token per span: tokenises (and masks) exactly like the full span, since the
            # modality tokens are atomic added tokens; lengths are corrected by the caller.
            for spec in self.modalities:
                if spec.placeholder in text:
                    prefix = spec.text_prefix if self.use_prefix else ""
                    text = text.replace(
                        spec.placeholder,
                        (prefix + spec.start_token + spec.patch_token + spec.end_token) if rows.get(spec.name) else "",
                    )
        else:
            text = expand_placeholders(text, self.modalities, dict(rows), self.use_prefix, sample_id)
        return text.strip() if removed else text

    def _render_messages(self, conversations: list, rows: Mapping[str, int], sample_id: str, compact: bool) -> list[dict]:
        rendered = []
        for message in conversations:
            message = dict(message)
            if message.get("from", message.get("role")) in ("human", "user"):
                key = "value" if "value" in message else "content"
                message[key] = self._render_turn(str(message[key]), rows, sample_id, compact)
            rendered.append(message)
        return rendered

    def _tokenize(self, conversations: list, rows: Mapping[str, int], sample_id: str, compact: bool) -> tuple[list[int], list[int]]:
        rendered = self._render_messages(conversations, rows, sample_id, compact)
        try:
            return tokenize_conversation(rendered, self.tokenizer, self.template, system=self.system, sample_id=sample_id)
        except ConversationMismatchError as err:
            raise SampleDropped("tokenization_mismatch", str(err)) from None
        except (ValueError, SpliceError) as err:
            raise SampleDropped("malformed", f"record {sample_id}: {err}") from None

    def _tokenize_seq2seq(
        self, conversations: list, rows: Mapping[str, int], sample_id: str, turn: int
    ) -> tuple[list[int], list[int]]:
        """(source ids with compact spans, target ids ending with eos) of the ``turn``-th answer (see the
        module docstring)."""
        rendered = self._render_messages(conversations, rows, sample_id, compact=True)
        try:
            turns = normalize_conversation(rendered, sample_id)
            answer = 2 * turn + 1
            source = seq2seq_source(self.template, self.tokenizer, turns[:answer], system=self.system)
        except (ValueError, SpliceError) as err:
            raise SampleDropped("malformed", f"record {sample_id}: {err}") from None
        answer_text = turns[answer][1].strip()
        if not answer_text:
            raise SampleDropped("malformed", f"record {sample_id}: answer {turn + 1} is empty; nothing to supervise")
        source_ids = list(self.tokenizer(source, add_special_tokens=self._source_special_tokens)["input_ids"])
        target_ids = list(self.tokenizer(answer_text, add_special_tokens=False)["input_ids"])
        return source_ids, target_ids + [int(self.tokenizer.eos_token_id)]

    def _build_seq2seq(
        self, prepared: _Prepared, record: dict, features: dict[str, torch.Tensor], rows: Mapping[str, int]
    ) -> dict[str, Any]:
        source_ids, target_ids = self._tokenize_seq2seq(record["conversations"], rows, prepared.sample_id, prepared.turn)
        source_ids, _ = self._expand_compact(source_ids, [IGNORE_INDEX] * len(source_ids), rows)
        if len(source_ids) > self.max_length:  # never inside a span; the target is the labels, whole
            source_ids, _, features = self._truncate(source_ids, [0] * len(source_ids), features, prepared.sample_id)
        return {
            "input_ids": torch.tensor(source_ids, dtype=torch.long),
            "labels": torch.tensor(target_ids[: self.max_length], dtype=torch.long),
            "modality_features": features,
            "id": prepared.sample_id,
        }

    def _expand_compact(self, input_ids: list[int], labels: list[int], rows: Mapping[str, int]) -> tuple[list[int], list[int]]:
        patch_to_rows = {self.tokenizer.convert_tokens_to_ids(self.modalities[n].patch_token): r for n, r in rows.items()}
        ids_out: list[int] = []
        labels_out: list[int] = []
        for token, label in zip(input_ids, labels):
            repeat = patch_to_rows.get(token, 1)
            ids_out.extend([token] * repeat)
            labels_out.extend([label] * repeat)
        return ids_out, labels_out

    def _truncate(
        self, input_ids: list[int], labels: list[int], features: dict[str, Any], sample_id: str
    ) -> tuple[list[int], list[int], dict[str, Any]]:
        """Cut to ``max_length`` before any span the cut would enter; drop spans (and features) beyond it."""
        cut = self.max_length
        spans: dict[str, tuple[int, int]] = {}
        for name in features:
            start_id, end_id = self.span_ids[name]
            if start_id in input_ids:
                start = input_ids.index(start_id)
                end = input_ids.index(end_id, start)
                spans[name] = (start, end)
        for start, end in spans.values():  # spans never overlap, so one pass settles the cut
            if start < cut <= end:
                cut = start
        if self.use_prefix:  # do not leave a dangling " video: " before a removed span
            for name, (start, _end) in spans.items():
                if start == cut:
                    prefix_len = len(self.tokenizer(self.modalities[name].text_prefix, add_special_tokens=False)["input_ids"])
                    cut = max(0, cut - prefix_len)
        kept = {name: value for name, value in features.items() if name not in spans or spans[name][1] < cut}
        input_ids, labels = input_ids[:cut], labels[:cut]
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleDropped(
                "overlong",
                f"record {sample_id}: longer than --model_max_length {self.max_length} and no answer token "
                "remains after truncating without cutting a modality span",
            )
        return input_ids, labels, kept

    # ------------------------------------------------------------------ features
    def _load_features(self, prepared: _Prepared, index: int) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        for name in prepared.modalities:
            spec = self.modalities[name]
            store = self.image_folder if prepared.source == "image" and name == "video" else self.folders[name]
            try:
                array, path = store.read(prepared.files[name], prepared.sample_id)
            except FeatureFileError:
                if self.strict_features:
                    raise
                array, path = None, None
            if array is None:
                self.runtime_missing[name] += 1
                tensor = torch.zeros(spec.expected_shape())
            else:
                try:
                    array = check_feature_array(array, path, prepared.sample_id)
                except FeatureFileError as err:
                    if self.strict_features:
                        raise FeatureFileError(f"{err}; or drop --strict_features to skip such records") from None
                    raise SampleDropped("bad_feature_values", str(err)) from None
                tensor = self._shape_features(spec, array, prepared, path)
            probability = self.mask_probs.get(name, 0.0)
            if probability and self._rng(index, name).random() < probability:
                tensor = torch.zeros_like(tensor)
            features[name] = tensor
        return features

    def _shape_features(
        self, spec: ModalitySpec, array: np.ndarray, prepared: _Prepared, path: Path | None = None
    ) -> torch.Tensor:
        store = self.image_folder if prepared.source == "image" and spec.name == "video" else self.folders[spec.name]
        source = str(path or store.folder / prepared.files[spec.name])  # the file read
        while array.ndim > len(spec.expected_shape()) and array.shape[0] == 1 and not spec.variable:
            array = array[0]  # (1, T, D) -> (T, D)
        if spec.variable and array.ndim == 3:
            if array.shape[1] != spec.group_size:
                raise SampleDropped(
                    "bad_features",
                    f"record {prepared.sample_id}: {source} has shape {array.shape}; expected (n, {spec.group_size}, "
                    f"{spec.feature_dim})",
                )
            array = array.reshape(-1, array.shape[-1])  # (n, 8, D) -> (8n, D)
        problem = spec.shape_problem(array.shape)  # a design's grids (T, P, D) included
        if problem:
            message = (
                f"record {prepared.sample_id}: {source} has shape {array.shape}; {problem}. Pass the matching "
                f"--{spec.name}_tokens / --{spec.name}_feature_dim or re-extract the features"
            )
            if self.strict_features:
                raise FeatureFileError(message)
            raise SampleDropped("bad_features", message)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor if tensor.is_floating_point() else tensor.float()

    def _rng(self, index: int, name: str) -> np.random.Generator:
        salt = sum(ord(c) for c in name)
        return np.random.default_rng([self.seed, self.epoch, index, salt])

    def set_epoch(self, epoch: int) -> None:
        """Re-seed modality dropout for a new epoch (called by samplers/loops that support it)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ Dataset API
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Token count of each sample, known without reading features (objects counted as one)."""
        return [prepared.length for prepared in self.samples]

    @property
    def sources(self) -> list[str]:
        """Source of each sample (``video``, ``image``, ``text``), known without reading features."""
        return [prepared.source for prepared in self.samples]

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's convention: the length, negative for text-only samples (keeps them grouped apart)."""
        return [p.length if p.modalities else -p.length for p in self.samples]

    def build(self, index: int) -> dict[str, Any]:
        """The item at ``index``; raises :class:`SampleDropped` when it turns out unusable."""
        prepared = self.samples[index]
        record = self.records[prepared.record_index]
        features = self._load_features(prepared, index)
        # A variable-length modality with no items (a clip without objects) is absent for this sample.
        features = {
            name: tensor for name, tensor in features.items()
            if not (self.modalities[name].variable and tensor.shape[0] == 0)
        }
        rows = {name: self.modalities[name].tokens_for(tuple(tensor.shape)) for name, tensor in features.items()}
        if self.seq2seq:
            return self._build_seq2seq(prepared, record, features, rows)
        # Tokenise with one patch token per span, then repeat it k times: identical to tokenising the
        # text from expand_placeholders (patch tokens are atomic added tokens), without paying for
        # hundreds of patch tokens in the tokenizer (tests check the equivalence).
        input_ids, labels = self._tokenize(record["conversations"], rows, prepared.sample_id, compact=True)
        input_ids, labels = self._expand_compact(input_ids, labels, rows)
        if len(input_ids) > self.max_length:
            input_ids, labels, features = self._truncate(input_ids, labels, features, prepared.sample_id)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "modality_features": features,
            "id": prepared.sample_id,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.samples)):
            candidate = (index + attempt) % len(self.samples)
            try:
                return self.build(candidate)
            except SampleDropped as dropped:
                self.runtime_drops[dropped.reason] += 1
                self._warn(dropped.reason, f"skipped ({dropped.reason.replace('_', ' ')}; replaced by the next sample): {dropped}")
        raise RuntimeError(f"{self.data_path}: no sample could be built; see the warnings above")


def seq2seq_source(
    template_name: str, tokenizer: Any, turns: Sequence[tuple[str, str]], system: str | None = None
) -> str:
    """The encoder text of an encoder-decoder sample: the generation prompt for the answer after ``turns``
    ((role, text) pairs, alternating user / assistant, ending with the question), rendered as the inference
    engine renders it (:func:`~llavidal.data.templates.render_generation_prompt`); ``system`` overrides the
    template's system prompt."""
    turns = list(turns)
    if not turns or turns[-1][0] != "user":
        raise ValueError("a source must end with a user turn (the question)")
    if system is None:
        history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
        return render_generation_prompt(template_name, tokenizer, history, turns[-1][1])
    template = get_template(template_name)
    if template.style == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": role, "content": text} for role, text in turns
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_v1(template, [*turns, ("assistant", None)], system)


def feature_folders_from(args: Any, names: Iterable[str] = ("video", "pose", "object")) -> dict[str, str]:
    """``{name: folder}`` for each ``{name}_folder`` attribute of ``args`` that is set."""
    folders = {}
    for name in names:
        value = getattr(args, f"{name}_folder", None)
        if value:
            folders[name] = str(value)
    return folders
