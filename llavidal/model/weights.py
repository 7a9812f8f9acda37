"""Weight files and the key layouts they come in: the one place that reads, writes and translates them.

    state = read_weights("runs/stage1/trainable.safetensors")    # or a .bin/.pt, or a sharded model folder
    write_weights(state, "merged/mm_projector.bin")              # atomic; format by suffix
    canonical = canonicalize(state, registry)                    # any known layout -> our parts
    layout = infer_layout(state, source)                         # modalities, dims, projector types (no config)
    lazy = LazyWeights("llama-7b/")                              # keys and shapes now, tensors one at a time

Layouts understood (``model.`` prefixes are optional everywhere)::

    ours (save_pretrained, merge)  projectors.<modality>.<param>   token_embeddings.<modality> (3, H)   lora.<peft key>
                                   (save_pretrained writes LoRA as a peft folder: adapter_config.json +
                                   adapter_model.safetensors, read back as lora.<peft key> by read_peft_adapter;
                                   older trainable.safetensors files hold the lora.* keys themselves)
    Video-ChatGPT / LLaVA v1       mm_projector.<param>             embed_tokens.weight (V, H): the full matrix,
    LLAVIDAL per modality          mm_projector_forpose.<param>     from which the modality tokens' rows are
                                   mm_projector_forobject.<param>   taken by id
    LLaVA v1 checkpoint            vision_tower.*, *.rotary_emb.inv_freq: dropped (we read features;
                                   rotary buffers are recomputed); every other key is the LLaMA's own

The upstream projector heads come from the modality registry (``ModalitySpec.upstream_projector_key``),
so a modality added by config is translated like the upstream ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from llavidal.model.config import CONFIG_NAME, TRAINABLE_NAME
from llavidal.utils.io import atomic_path

if TYPE_CHECKING:
    from llavidal.model.modality import ModalityRegistry

logger = logging.getLogger(__name__)

UPSTREAM_PROJECTOR_FILE = "mm_projector.bin"
LORA_PREFIX = "lora."
"""Prefix of LoRA adapter keys in a state dict of ours (``lora.<peft key>``). ``save_pretrained`` writes the
adapters as a standard peft folder instead (:data:`ADAPTER_CONFIG_NAME` + :data:`ADAPTER_WEIGHTS_NAME`);
``trainable.safetensors`` files written before that hold them under this prefix and still load."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_WEIGHTS_FILES = (ADAPTER_WEIGHTS_NAME, "adapter_model.bin")
"""peft's adapter weight files (older peft wrote ``adapter_model.bin``), in order of preference."""
UPSTREAM_PREFIX = "model."
TOKEN_ROLES = ("patch", "start", "end")
"""Order of the rows of ``token_embeddings.<modality>`` (upstream adds patch, start, end)."""
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SHARD_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.")

# ---------------------------------------------------------------------------------------------------
# Reading and writing


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """Weight files of a model folder: from an index .json, else model*.safetensors / pytorch_model*.bin."""
    folder = Path(folder)
    for index_name in INDEX_FILES:
        if (folder / index_name).is_file():
            return _index_shards(folder / index_name)
    for pattern in SHARD_PATTERNS:
        files = sorted(folder.glob(pattern))
        if files:
            _check_shard_series(folder, files)
            return files
    raise FileNotFoundError(
        f"{folder}: no weights found (model*.safetensors, pytorch_model*.bin or an index .json); "
        "is this the checkpoint folder?"
    )


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{index}: not a valid weights index ({err}); re-download or delete it") from None
    files = sorted({index.parent / name for name in weight_map.values()})
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{index}: lists shard(s) that are not in the folder: {absent}; copy them there")
    return files


def _check_shard_series(folder: Path, files: list[Path]) -> None:
    """``x-00001-of-00003.bin`` names say how many shards there are: name any that are absent."""
    present = {f.name for f in files}
    for file in files:
        match = _SHARD_NAME.search(file.name)
        if not match:
            continue
        total, width = int(match.group(2)), len(match.group(1))
        head, tail = file.name[: match.start()], file.name[match.end() - 1:]
        wanted = [f"{head}-{i:0{width}d}-of-{match.group(2)}{tail}" for i in range(1, total + 1)]
        absent = [name for name in wanted if name not in present]
        if absent:
            raise FileNotFoundError(f"{folder}: shard(s) missing from the checkpoint: {absent}; copy them there")


def read_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A state dict (name -> tensor) from a weights file or a (sharded) model folder.

    ``.safetensors`` files are memory-mapped by safetensors; torch files (``.bin``/``.pt``/``.pth``) load
    with ``torch.load(weights_only=True)``, memory-mapped when they are zip checkpoints (every
    ``torch.save`` since 1.6; legacy files are read whole). A folder (or an ``*.index.json``) reads every
    shard. Errors name the file and say what to do: a missing file or shard, an unreadable file, or one
    that holds anything but a dict of tensors (no code is ever unpickled).
    """
    path = Path(path)
    if path.is_dir():
        files = weight_files(path)
    elif path.name.endswith(".index.json") and path.is_file():
        files = _index_shards(path)
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such weights file or folder")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(_read_file(file, device))
    return state


def _read_file(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends, re-raised with the file named
            raise ValueError(
                f"{path}: could not be read as safetensors ({err}); the file is truncated or not safetensors: "
                "re-download or re-save it (weights written by llavidal: re-run the training or alignment that "
                "wrote them)"
            ) from None
    try:
        if zipfile.is_zipfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:  # legacy (pre-zip) torch files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path}: could not be read as a torch state dict with weights_only=True ({err}). Only plain "
            "tensor state dicts are loaded; re-save it as a dict of tensors (or safetensors)."
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path}: expected a dict of tensors (a state dict); got {type(state).__name__}. Re-save it as "
            "{name: tensor} (torch.save(model.state_dict(), ...) or safetensors)"
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{path}: expected a dict of tensors (a state dict), but key {key!r} holds a {type(value).__name__}; "
                "re-save only the tensors (a nested checkpoint keeps them under e.g. 'state_dict')"
            )
    state = dict(state)
    if torch.device(device).type != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    return state


def write_weights(state: Mapping[str, Tensor], path: str | os.PathLike,
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` atomically: safetensors for ``.safetensors``, ``torch.save`` for ``.bin``/``.pt``/``.pth``.

    ``metadata`` (strings) goes into the safetensors header, beside ``format: pt``.
    """
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: weights are written as {', '.join(WEIGHT_SUFFIXES)}; name the file so")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
            save_file(tensors, str(tmp), metadata=header)
        else:
            torch.save(tensors, tmp)
    return path


PROJECTOR_FILE_NAMES = (TRAINABLE_NAME, UPSTREAM_PROJECTOR_FILE, "mm_projector.safetensors", "model.bin",
                        "model.safetensors")
"""Names a projector weights file has in a folder, in order of preference: ours, Video-ChatGPT / LLAVIDAL's
``mm_projector.bin`` (and its safetensors form), the Breakfast fork's ``model.bin``."""


def resolve_trainable_file(path: str | os.PathLike) -> Path:
    """A weights file, or a folder holding one: ``trainable.safetensors``, ``mm_projector.bin``,
    ``model.bin`` (:data:`PROJECTOR_FILE_NAMES`), or else its only weights file (``video_chatgpt-7B.bin``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in PROJECTOR_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        # A peft adapter beside the projectors is read by read_peft_adapter, never as the projector file.
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in ADAPTER_WEIGHTS_FILES)
        if len(found) == 1:
            return found[0]
        listed = f"; it holds {[p.name for p in found]}: pass one of them" if found else ""
        raise FileNotFoundError(
            f"{path}: holds neither {TRAINABLE_NAME} nor an upstream projector file "
            f"({', '.join(PROJECTOR_FILE_NAMES[1:])}){listed}. Pass the weights file itself, or a "
            f"folder written by save_pretrained ({CONFIG_NAME} + {TRAINABLE_NAME})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file or folder")
    return path


def peft_adapter_file(folder: str | os.PathLike) -> Path | None:
    """The peft adapter weights file of ``folder`` (``adapter_model.safetensors`` / ``.bin`` beside an
    ``adapter_config.json``), or None when the folder holds no peft adapter."""
    folder = Path(folder).expanduser()
    if not folder.is_dir() or not (folder / ADAPTER_CONFIG_NAME).is_file():
        return None
    for name in ADAPTER_WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder / ADAPTER_CONFIG_NAME}: a peft adapter config without its weights ({' or '.join(ADAPTER_WEIGHTS_FILES)}); "
        "copy the whole weights folder, or delete the adapter config if the model has no LoRA"
    )


def read_peft_adapter(folder: str | os.PathLike) -> dict[str, Tensor]:
    """The LoRA adapters a weights folder holds as a peft adapter, keys ``lora.<peft key>`` (the layout of
    :func:`canonicalize`); empty when it holds none. peft writes keys without the adapter name
    (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), as ``get_peft_model_state_dict``
    gives them, so these load exactly like the ``lora.*`` keys of older ``trainable.safetensors`` files."""
    file = peft_adapter_file(folder)
    if file is None:
        return {}
    return {LORA_PREFIX + key: value for key, value in read_weights(file).items()}


# ---------------------------------------------------------------------------------------------------
# Key layouts

PROJECTOR, TOKEN_ROWS, FULL_EMBEDDING, LORA, DROPPED, OTHER = (
    "projector", "token_rows", "full_embedding", "lora", "dropped", "other")


@dataclass(frozen=True)
class KeyRole:
    """What one key of a weights file is, in any known layout."""

    kind: str
    """projector, token_rows, full_embedding, lora, dropped or other (an LLM weight, or unknown)."""
    modality: str = ""
    name: str = ""
    """The projector's parameter (``weight``, ``0.bias``) or the LoRA adapter key."""


def upstream_heads(registry: ModalityRegistry | None = None) -> dict[str, str]:
    """Upstream projector key head (``mm_projector_forpose``) -> modality name.

    The upstream set, overridden by the heads ``registry``'s modalities declare.
    """
    from llavidal.model.modality import default_modalities

    heads = {spec.upstream_projector_key: spec.name for spec in default_modalities().values()}
    if registry is not None:
        heads.update({spec.upstream_projector_key: spec.name for spec in registry if spec.upstream_projector_key})
    return heads


def key_role(key: str, heads: Mapping[str, str]) -> KeyRole:
    """The one table of key layouts (see the module docstring); ``heads`` from :func:`upstream_heads`."""
    if key.startswith(LORA_PREFIX):
        return KeyRole(LORA, name=key[len(LORA_PREFIX):])
    bare = key[len(UPSTREAM_PREFIX):] if key.startswith(UPSTREAM_PREFIX) else key
    head, _, rest = bare.partition(".")
    if head == "projectors":
        modality, _, param = rest.partition(".")
        return KeyRole(PROJECTOR, modality, param)
    if head == "token_embeddings":
        return KeyRole(TOKEN_ROWS, rest)
    if head in heads:
        return KeyRole(PROJECTOR, heads[head], rest)
    if bare == "embed_tokens.weight":
        return KeyRole(FULL_EMBEDDING)
    if bare.startswith("vision_tower") or bare.endswith("rotary_emb.inv_freq"):
        return KeyRole(DROPPED)
    return KeyRole(OTHER)


@dataclass
class CanonicalState:
    """A weights file in our terms, whatever its layout (see :func:`canonicalize`)."""

    projectors: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """modality -> projector parameter (``weight``, ``0.bias``) -> tensor."""
    token_rows: dict[str, Tensor] = field(default_factory=dict)
    """modality -> its (3, H) patch/start/end rows."""
    full_embedding: Tensor | None = None
    """An upstream full input-embedding matrix (V, H): the modality rows are taken from it by token id."""
    full_embedding_key: str = ""
    lora: dict[str, Tensor] = field(default_factory=dict)
    """peft adapter key -> tensor (``lora.`` removed)."""
    skipped_modalities: list[str] = field(default_factory=list)
    """Modalities in the file that the registry lacks (their weights are left out)."""
    dropped: list[str] = field(default_factory=list)
    """Keys that are never loaded (vision tower, rotary buffers)."""
    unexpected: list[str] = field(default_factory=list)
    """Keys of no known layout."""
    origin: dict[str, str] = field(default_factory=dict)
    """``projectors.<m>.<p>`` / ``token_embeddings.<m>`` -> the key it had in the file."""


def canonicalize(state: Mapping[str, Tensor], registry: ModalityRegistry | None = None) -> CanonicalState:
    """Sort every key of ``state`` (any mix of layouts) into projectors, token rows, full matrix, LoRA.

    With ``registry``, weights of modalities it lacks go to ``skipped_modalities`` (staged training
    merges every projector into one file); without, every modality is kept.
    """
    heads = upstream_heads(registry)
    result = CanonicalState()
    skipped: set[str] = set()
    for key, value in state.items():
        role = key_role(key, heads)
        if role.kind in (PROJECTOR, TOKEN_ROWS) and registry is not None and role.modality not in registry:
            skipped.add(role.modality)
        elif role.kind == PROJECTOR:
            result.projectors.setdefault(role.modality, {})[role.name] = value
            result.origin[f"projectors.{role.modality}.{role.name}"] = key
        elif role.kind == TOKEN_ROWS:
            result.token_rows[role.modality] = value
            result.origin[f"token_embeddings.{role.modality}"] = key
        elif role.kind == FULL_EMBEDDING:
            result.full_embedding, result.full_embedding_key = value, key
        elif role.kind == LORA:
            result.lora[role.name] = value
        elif role.kind == DROPPED:
            result.dropped.append(key)
        else:
            result.unexpected.append(key)
    result.skipped_modalities = sorted(skipped)
    return result


def canonical_key(key: str, registry: ModalityRegistry | None = None) -> str:
    """Our name for one key: upstream projector heads become ``projectors.<modality>``, an upstream full
    embedding matrix ``model.embed_tokens.weight``; other keys lose their ``model.`` prefix."""
    role = key_role(key, upstream_heads(registry))
    if role.kind == PROJECTOR:
        return f"projectors.{role.modality}.{role.name}"
    if role.kind == TOKEN_ROWS:
        return f"token_embeddings.{role.modality}"
    if role.kind == FULL_EMBEDDING:
        return UPSTREAM_PREFIX + "embed_tokens.weight"
    if role.kind == LORA:
        return key
    return key[len(UPSTREAM_PREFIX):] if key.startswith(UPSTREAM_PREFIX) else key


def upstream_key(key: str, registry: ModalityRegistry | None = None) -> str:
    """The upstream (``model.``-prefixed) name of one key; our token rows and LoRA keys have none."""
    heads = upstream_heads(registry)
    role = key_role(key, heads)
    if role.kind == PROJECTOR:
        head = {name: head for head, name in heads.items()}.get(role.modality)
        if head is None:
            raise ValueError(f"{key}: modality {role.modality!r} has no upstream projector key; keep llavidal names")
        return f"{UPSTREAM_PREFIX}{head}.{role.name}"
    if role.kind in (TOKEN_ROWS, LORA):
        raise ValueError(
            f"{key}: llavidal token rows and LoRA adapters have no upstream name without the tokenizer; "
            "keep llavidal names"
        )
    return key if key.startswith(UPSTREAM_PREFIX) else UPSTREAM_PREFIX + key


def is_upstream_state(state: Mapping[str, Tensor]) -> bool:
    """True when no key uses our names (projectors.*, token_embeddings.*, lora.*)."""
    return not any(key.split(".", 1)[0] in ("projectors", "token_embeddings", "lora") for key in state)


def to_canonical_keys(state: Mapping[str, Tensor], registry: ModalityRegistry | None = None) -> dict[str, Tensor]:
    """``state`` with every key renamed by :func:`canonical_key`."""
    return {canonical_key(key, registry): value for key, value in state.items()}


def to_upstream_keys(state: Mapping[str, Tensor], registry: ModalityRegistry | None = None) -> dict[str, Tensor]:
    """``state`` with every key renamed by :func:`upstream_key` (what upstream code loads)."""
    return {upstream_key(key, registry): value for key, value in state.items()}


def split_llava_v1_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A LLaVA v1 checkpoint's keys -> (LLaMA state dict, projector state with ``model.`` removed).

    Upstream projector keys (``model.mm_projector.*``) go to the second; vision tower and rotary
    buffers are dropped; everything else (``model.embed_tokens.weight`` included) is the LLaMA's.
    """
    heads = upstream_heads()
    llama_state: dict[str, Tensor] = {}
    projector_state: dict[str, Tensor] = {}
    for key, value in state.items():
        bare = key[len(UPSTREAM_PREFIX):] if key.startswith(UPSTREAM_PREFIX) else key
        kind = key_role(key, heads).kind
        if kind == PROJECTOR and bare.partition(".")[0] in heads:
            projector_state[bare] = value
        elif kind != DROPPED:
            llama_state[key] = value
    return llama_state, projector_state


# ---------------------------------------------------------------------------------------------------
# Matching a file to a model


@dataclass
class LoadPlan:
    """Tensors of a :class:`CanonicalState` that fit a model, checked and ready to copy."""

    projectors: dict[str, Tensor] = field(default_factory=dict)
    """``<modality>.<param>`` (a key of the model's ``projectors.state_dict()``) -> tensor."""
    token_rows: dict[str, Tensor] = field(default_factory=dict)
    """modality -> (3, H) rows: from the full matrix first, then ``token_embeddings.<m>`` (which wins)."""


def plan_load(
    canonical: CanonicalState,
    *,
    projector_state: Mapping[str, Tensor],
    token_ids: Mapping[str, Mapping[str, int]],
    hidden_size: int,
    projector_types: Mapping[str, str],
    source: str,
) -> LoadPlan:
    """Check ``canonical`` against a model and say what to copy where.

    ``projector_state`` is the model's ``projectors.state_dict()``, ``token_ids`` modality -> {role: id}.
    Keys that fit nothing, then shapes that differ, raise a ``ValueError`` listing them all (before
    anything is copied, so a bad file leaves the model unchanged).
    """
    plan = LoadPlan()
    unexpected = list(canonical.unexpected)
    for modality, params in canonical.projectors.items():
        for param, value in params.items():
            key = f"{modality}.{param}"
            if key in projector_state:
                plan.projectors[key] = value
            else:
                unexpected.append(canonical.origin.get(f"projectors.{key}", f"projectors.{key}"))
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} key(s) match nothing in this model: {sorted(unexpected)[:20]}. "
            f"Expected projectors.<name>.* / token_embeddings.<name> / lora.* (ours) or "
            f"[model.]mm_projector*.* / [model.]embed_tokens.weight (upstream), with projector layouts "
            f"{dict(projector_types)}. "
            "A linear/mlp2x_gelu mismatch shows up here: build the model with the projector type of the file."
        )
    errors = []
    for key, value in plan.projectors.items():
        want = tuple(projector_state[key].shape)
        if tuple(value.shape) != want:
            errors.append(f"projectors.{key}: file {tuple(value.shape)} vs model {want}")
    rows_shape = (len(TOKEN_ROLES), hidden_size)
    for name, value in canonical.token_rows.items():
        if tuple(value.shape) != rows_shape:
            errors.append(f"token_embeddings.{name}: file {tuple(value.shape)} vs model {rows_shape}")
    matrix = canonical.full_embedding
    if matrix is not None:
        max_id = max(ids[r] for ids in token_ids.values() for r in TOKEN_ROLES)
        if matrix.dim() != 2 or matrix.shape[1] != hidden_size or matrix.shape[0] <= max_id:
            errors.append(
                f"{canonical.full_embedding_key}: file {tuple(matrix.shape)}; needs (> {max_id}, {hidden_size}) to "
                f"hold the rows of this tokenizer's modality tokens {dict(token_ids)}"
            )
    if errors:
        raise ValueError(
            f"{source}: shapes differ from this model: " + "; ".join(errors)
            + ". Check the feature dims and projector types of the modalities and the base LLM's hidden size."
        )
    if matrix is not None:
        for name, ids in token_ids.items():
            plan.token_rows[name] = matrix[torch.tensor([ids[r] for r in TOKEN_ROLES])]  # (3, H)
    plan.token_rows.update(canonical.token_rows)
    return plan



# ---------------------------------------------------------------------------------------------------
# What a file without llavidal_config.json holds (upstream weights)


@dataclass(frozen=True)
class ProjectorLayout:
    """A projector as its weights show it: type and dims."""

    modality: str
    projector_type: str
    """``linear`` (``weight``, ``bias``) or ``mlp2x_gelu`` (``0.*``, ``2.*``)."""
    feature_dim: int
    hidden_size: int


@dataclass
class WeightsLayout:
    """What :func:`infer_layout` read from a weights file's keys and shapes."""

    projectors: dict[str, ProjectorLayout] = field(default_factory=dict)
    """modality -> its projector, in the file's order."""
    hidden_size: int = 0
    has_token_rows: bool = False
    """The file carries the modality tokens' embedding rows (ours, or an upstream full ``embed_tokens``)."""
    ignored: list[str] = field(default_factory=list)
    """Keys of no known layout (an upstream fork's own modules); a model built from the layout lacks them."""


def _projector_layout(modality: str, params: Mapping[str, Tensor], source: str) -> ProjectorLayout:
    shapes = {name: tuple(value.shape) for name, value in params.items()}
    linear, mlp = {"weight", "bias"}, {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(shapes) in (linear, {"weight"}) and len(shapes["weight"]) == 2:
        hidden, dim = shapes["weight"]
        kind = "linear"
        consistent = shapes.get("bias", (hidden,)) == (hidden,)
    elif set(shapes) in (mlp, {"0.weight", "2.weight"}) and len(shapes["0.weight"]) == 2:
        hidden, dim = shapes["0.weight"]
        kind = "mlp2x_gelu"
        consistent = (shapes["2.weight"] == (hidden, hidden) and shapes.get("0.bias", (hidden,)) == (hidden,)
                      and shapes.get("2.bias", (hidden,)) == (hidden,))
    else:
        raise ValueError(
            f"{source}: cannot infer the {modality} projector's dims from its keys and shapes {shapes}: expected "
            "a linear projector (weight (hidden, feature_dim), bias (hidden,)) or mlp2x_gelu (0.weight, 0.bias, "
            "2.weight, 2.bias). Pass the folder written by training, with its llavidal_config.json"
        )
    if not consistent:
        raise ValueError(f"{source}: the {modality} projector's shapes {shapes} do not fit together ({kind}); "
                         "is the file complete?")
    return ProjectorLayout(modality, kind, int(dim), int(hidden))


def infer_layout(state: Mapping[str, Tensor], source: str = "<state dict>") -> WeightsLayout:
    """Modalities, feature dims, projector types and hidden size of a weights file, from its keys and shapes.

    For weights without ``llavidal_config.json``: Video-ChatGPT's ``mm_projector.bin`` (a video projector),
    LLAVIDAL's per-modality and merged files (``mm_projector_forpose`` / ``_forobject``), ours
    (``projectors.<m>.*``). Only the upstream modalities (video, object, pose) can be rebuilt this way:
    their placeholders and tokens are the upstream ones. A ``ValueError`` names the file when nothing is
    inferable (no projector, unknown projector keys, mismatched hidden sizes, LoRA adapters).
    """
    from llavidal.model.modality import default_modalities

    canonical = canonicalize(state)
    if canonical.lora:
        raise ValueError(
            f"{source}: holds LoRA adapters, whose settings (rank, alpha, targets) the weights do not say; pass "
            f"the folder written by training, with its {CONFIG_NAME}"
        )
    known = default_modalities()
    strange = sorted(set(canonical.projectors) - set(known))
    if strange:
        raise ValueError(
            f"{source}: projector(s) of modality {strange}, whose tokens and placeholder only a {CONFIG_NAME} "
            f"records; pass the folder written by training (upstream modalities: {list(known)})"
        )
    if not canonical.projectors:
        heads = ", ".join(f"[model.]{spec.upstream_projector_key}.*" for spec in known.values())
        raise ValueError(
            f"{source}: no projector weights found (keys {sorted(state)[:8]}{'...' if len(state) > 8 else ''}); "
            f"expected {heads} (upstream) or projectors.<modality>.* (ours). Pass a projector file such as "
            "mm_projector.bin, or the folder written by training"
        )
    layout = WeightsLayout(ignored=list(canonical.unexpected))
    for modality, params in canonical.projectors.items():
        layout.projectors[modality] = _projector_layout(modality, params, source)
    hidden = {p.hidden_size for p in layout.projectors.values()}
    if len(hidden) > 1:
        raise ValueError(f"{source}: projectors output different hidden sizes "
                         f"{ {p.modality: p.hidden_size for p in layout.projectors.values()} }; they must share one LLM")
    layout.hidden_size = hidden.pop()
    layout.has_token_rows = bool(canonical.token_rows) or canonical.full_embedding is not None
    return layout


# ---------------------------------------------------------------------------------------------------
# Reading tensor by tensor (large checkpoints)


class LazyWeights:
    """The tensors of a weights file or (sharded) model folder, read one at a time.

    ``keys()`` comes from the safetensors headers (torch files are memory-mapped when they are zip
    checkpoints, so only the tensors asked for are read); ``shape(key)``, ``dtype(key)`` need no data;
    ``get(key)`` reads one tensor. For checkpoints too large to hold twice in memory (``apply_delta``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path).expanduser()
        if path.is_dir():
            self.files = weight_files(path)
        elif path.name.endswith(".index.json") and path.is_file():
            self.files = _index_shards(path)
        elif path.is_file():
            self.files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such weights file or folder")
        self.path = path
        self._where: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        for file in self.files:
            for key in self._handle(file).keys():
                self._where.setdefault(key, file)

    def _handle(self, file: Path) -> Any:
        """A safetensors ``safe_open`` handle, or the (memory-mapped) torch state dict of ``file``."""
        if file not in self._open:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    self._open[file] = safe_open(str(file), framework="pt", device="cpu")
                except Exception as err:  # noqa: BLE001 - re-raised with the file named
                    raise ValueError(f"{file}: could not be read as safetensors ({err}); the file is truncated or "
                                     "not safetensors: re-download it") from None
            else:
                self._open[file] = _read_file(file, "cpu")
        return self._open[file]

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def file_of(self, key: str) -> Path:
        return self._where[key]

    def get(self, key: str) -> Tensor:
        handle = self._handle(self._where[key])
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]

    def shape(self, key: str) -> tuple[int, ...]:
        handle = self._handle(self._where[key])
        if hasattr(handle, "get_slice"):
            return tuple(handle.get_slice(key).get_shape())
        return tuple(handle[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        handle = self._handle(self._where[key])
        if hasattr(handle, "get_slice"):
            return _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype(), torch.float32)
        return handle[key].dtype


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
