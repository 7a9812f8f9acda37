"""The modality registry: each modality is data, not a forward argument.

A :class:`ModalitySpec` says how a modality appears in text (placeholder, patch/start/end tokens),
how many tokens a sample carries, what feature dimension it has and which projector maps it into the
LLM. Adding a modality is a new entry here (or in a config file), nothing else.

Upstream (LLAVIDAL) layout of one sample's spans::

    <vid_start> 356 x <vid_patch> <vid_end> <object_start> 8n x <object_patch> <object_end>
    <pose_start> 256 x <pose_patch> <pose_end>
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from llavidal.constants import DEFAULT_POSE_TOKENS, DEFAULT_VIDEO_TOKENS, OBJECT_TOKENS_PER_OBJECT

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


@dataclass
class ModalitySpec:
    """One modality spliced into the LLM's token stream."""

    name: str
    """Registry key: ``video``, ``pose``, ``object``."""
    placeholder: str
    """Text placeholder written in instruction data (``<video>``)."""
    patch_token: str
    start_token: str
    end_token: str
    feature_dim: int
    """Last dimension of the stored features (1024 for CLIP ViT-L/14)."""
    num_tokens: int = 0
    """Fixed number of tokens per sample; 0 when the count is variable (see ``group_size``)."""
    group_size: int = 0
    """For variable-length modalities: tokens per item (8 per object); the count is a multiple."""
    projector_type: str = "linear"
    """``linear`` (upstream) or ``mlp2x_gelu``."""
    text_prefix: str = ""
    """Text written before the span when ``use_modality_string_prefix`` is on (" video: ")."""
    file_suffix: str = ""
    """Upstream feature file suffix before the extension (``_pose`` for ``{id}_pose.pickle``)."""
    upstream_projector_key: str = ""
    """Key prefix of this projector in upstream ``mm_projector.bin`` files."""
    design: dict | None = None
    """How features become tokens beyond the plain projector (PLLaVA pooling, positional encodings, temporal
    sampler, Q-Former; see :mod:`llavidal.model.hf.frontends`), with every default written out; None: upstream."""

    def __post_init__(self) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"modality {self.name!r}: projector_type {self.projector_type!r} is not one of {PROJECTOR_TYPES}"
            )
        if self.num_tokens <= 0 and self.group_size <= 0:
            raise ValueError(f"modality {self.name!r}: set num_tokens (fixed) or group_size (variable)")
        if self.feature_dim <= 0:
            raise ValueError(f"modality {self.name!r}: feature_dim must be positive")
        if self.design is not None:
            from llavidal.model.hf.frontends import normalize_design

            try:
                self.design = normalize_design(self.design, self.num_tokens, self.projector_type)
            except ValueError as err:
                raise ValueError(f"modality {self.name!r}: {err}") from None

    @property
    def variable(self) -> bool:
        return self.num_tokens <= 0

    @property
    def new_tokens(self) -> list[str]:
        """Tokens this modality adds to the tokenizer, in upstream order (patch, start, end)."""
        return [self.patch_token, self.start_token, self.end_token]

    @property
    def spliced(self) -> bool:
        """False when the design leaves this modality out of the prompt (video conditioning only)."""
        return not self.design or bool(self.design.get("splice", True))

    def expected_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features before any is read: (rows, D), or (T, P, D) for the grids of a design."""
        rows = self.num_tokens if not self.variable else self.group_size
        patches = int((self.design or {}).get("patches") or 0)
        return (rows, patches, self.feature_dim) if patches else (rows, self.feature_dim)

    def shape_problem(self, shape: Sequence[int]) -> str | None:
        """Why features of ``shape`` (one sample, objects flattened) do not fit this modality, or None."""
        shape = tuple(int(s) for s in shape)
        allowed = (2, 3, 4) if self.design else (2,)
        if len(shape) not in allowed or shape[-1] != self.feature_dim:
            grids = f" or (T, P, {self.feature_dim}) grids" if self.design else ""
            return f"expected (k, {self.feature_dim}){grids}"
        try:
            self.tokens_for(shape)
        except ValueError as err:
            return str(err)
        return None

    def tokens_for(self, feature_rows: int | Sequence[int]) -> int:
        """Number of patch tokens for a sample's features (validates them): ``feature_rows`` is their number of
        rows, or their shape. With a ``design``, the frontend's :func:`num_output_tokens` of that shape (an int
        stands for (rows, P, D) when the design names ``patches``, else (rows, D))."""
        if not isinstance(feature_rows, int):
            shape = tuple(int(s) for s in feature_rows)
        elif self.design:
            patches = int(self.design.get("patches") or 0)
            shape = (feature_rows, patches, self.feature_dim) if patches else (feature_rows, self.feature_dim)
        else:
            shape = (feature_rows, self.feature_dim)
        if self.design:
            from llavidal.model.hf.frontends import num_output_tokens

            if not self.variable and shape[0] != self.num_tokens:
                raise ValueError(f"modality {self.name!r} expects {self.num_tokens} feature rows, got {shape[0]}")
            try:
                return num_output_tokens(self.design, shape)
            except ValueError as err:
                raise ValueError(f"modality {self.name!r}: {err}") from None
        feature_rows = int(math.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])
        if not self.variable:
            if feature_rows != self.num_tokens:
                raise ValueError(
                    f"modality {self.name!r} expects {self.num_tokens} feature rows, got {feature_rows}"
                )
            return self.num_tokens
        if feature_rows % self.group_size:
            raise ValueError(
                f"modality {self.name!r} expects a multiple of {self.group_size} rows, got {feature_rows}"
            )
        return feature_rows

    def span_text(self, feature_rows: int | Sequence[int], use_prefix: bool = False) -> str:
        """Text that replaces the placeholder: [prefix] start + k patch tokens + end ("" when the design keeps
        the modality out of the prompt). ``feature_rows``: rows, or the features' shape (see :meth:`tokens_for`)."""
        k = self.tokens_for(feature_rows)
        if not self.spliced:
            return ""
        prefix = self.text_prefix if use_prefix else ""
        return prefix + self.start_token + self.patch_token * k + self.end_token

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data.get("design") is None:
            data.pop("design", None)  # registries without a design save (and compare) as before designs existed
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModalitySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_modalities(
    video_dim: int = 1024,
    pose_dim: int = 216,
    object_dim: int = 512,
    video_tokens: int = DEFAULT_VIDEO_TOKENS,
    pose_tokens: int = DEFAULT_POSE_TOKENS,
    object_group: int = OBJECT_TOKENS_PER_OBJECT,
    projector_type: str = "linear",
) -> dict[str, ModalitySpec]:
    """The upstream LLAVIDAL modalities, in upstream span order (video, object, pose)."""
    return {
        "video": ModalitySpec(
            name="video", placeholder="<video>", patch_token="<vid_patch>", start_token="<vid_start>",
            end_token="<vid_end>", feature_dim=video_dim, num_tokens=video_tokens,
            projector_type=projector_type, text_prefix=" video: ", file_suffix="",
            upstream_projector_key="mm_projector",
        ),
        "object": ModalitySpec(
            name="object", placeholder="<object>", patch_token="<object_patch>",
            start_token="<object_start>", end_token="<object_end>", feature_dim=object_dim,
            group_size=object_group, projector_type=projector_type, text_prefix=" object: ",
            file_suffix="_object", upstream_projector_key="mm_projector_forobject",
        ),
        "pose": ModalitySpec(
            name="pose", placeholder="<human_pose>", patch_token="<pose_patch>",
            start_token="<pose_start>", end_token="<pose_end>", feature_dim=pose_dim,
            num_tokens=pose_tokens, projector_type=projector_type, text_prefix=" pose: ",
            file_suffix="_pose", upstream_projector_key="mm_projector_forpose",
        ),
    }


@dataclass
class ModalityRegistry:
    """An ordered set of modalities (order = span order in text and token-adding order)."""

    specs: dict[str, ModalitySpec] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.specs.values())

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> ModalitySpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(f"unknown modality {name!r}; known: {list(self.specs)}") from None

    def names(self) -> list[str]:
        return list(self.specs)

    def select(self, names: Iterable[str]) -> "ModalityRegistry":
        """Sub-registry with only ``names`` (kept in registry order)."""
        wanted = set(names)
        unknown = wanted - set(self.specs)
        if unknown:
            raise KeyError(f"unknown modalities {sorted(unknown)}; known: {list(self.specs)}")
        return ModalityRegistry({k: v for k, v in self.specs.items() if k in wanted})

    def by_placeholder(self) -> dict[str, ModalitySpec]:
        return {s.placeholder: s for s in self.specs.values()}

    def new_tokens(self) -> list[str]:
        tokens: list[str] = []
        for spec in self.specs.values():
            tokens.extend(spec.new_tokens)
        return tokens

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.specs.values()]

    @classmethod
    def from_list(cls, items: list[dict]) -> "ModalityRegistry":
        specs = [ModalitySpec.from_dict(d) for d in items]
        return cls({s.name: s for s in specs})

    @classmethod
    def default(cls, names: Iterable[str] | None = None, **dims) -> "ModalityRegistry":
        reg = cls(default_modalities(**dims))
        return reg.select(names) if names is not None else reg


class SpliceError(ValueError):
    """Placeholders and features of a sample disagree (raised with the sample named)."""


def expand_placeholders(
    text: str,
    registry: ModalityRegistry,
    feature_rows: dict[str, int],
    use_prefix: bool = False,
    sample_id: str = "",
) -> str:
    """Replace each modality placeholder in ``text`` by its span (start + k patch tokens + end).

    ``feature_rows`` maps modality name -> number of feature rows the sample carries for it, or the shape of its
    features (what a modality with a ``design`` needs: its span holds ``num_output_tokens(design, shape)``
    tokens, none when the design keeps it out of the prompt). A
    placeholder of a modality the sample lacks (or one that is not in the registry's selection) is
    removed, so that a record written for video+pose+object trains a video-only model unchanged.
    Each placeholder may appear once; a repeat is an error naming the sample.
    """
    for spec in registry:
        count = text.count(spec.placeholder)
        if count > 1:
            raise SpliceError(
                f"sample {sample_id or '<unnamed>'}: placeholder {spec.placeholder} appears {count} times; "
                "each modality may appear once per sample"
            )
        if count == 0:
            continue
        rows = feature_rows.get(spec.name)
        # A variable-length modality with no items (a clip without objects) is absent, not an empty span.
        absent = rows is None or (spec.variable and (rows == 0 if isinstance(rows, int) else not math.prod(rows[:-1])))
        replacement = "" if absent else spec.span_text(rows, use_prefix)
        text = text.replace(spec.placeholder, replacement)
    return text


def strip_placeholders(text: str, placeholders: Iterable[str] = ("<video>", "<human_pose>", "<object>")) -> str:
    """Remove modality placeholders (for text-only use of a record) and tidy the whitespace."""
    for p in placeholders:
        text = text.replace(p, "")
    return text.strip()
