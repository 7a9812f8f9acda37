"""LLAVIDAL as a transformers model: a causal LM with modality features spliced into its token stream.

SELF-CONTAINED: imports only torch and transformers (and the configuration file beside it), because
``llavidal export`` copies this file beside the weights so that::

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

works where the ``llavidal`` package is not installed. The package's own
:class:`llavidal.model.llavidal_model.LlavidalModel` uses the splice functions defined here, so both give
the same embeddings (and logits) for the same weights and inputs.

The splice. Each modality has a projector (features -> hidden size) and three token rows (patch, start,
end) kept apart from the LLM's embedding matrix. A prompt holds ``start + k x patch + end`` per span;
the embeddings are the LLM's lookup with the modality-token positions replaced by those rows, then the
projected features ``masked_scatter``-ed into the patch positions, in order of appearance::

    text  : ... <vid_start> <vid_patch> x k <vid_end> ... <pose_start> <pose_patch> x m <pose_end> ...
    embeds: ... row_start   proj(video) (k, H)  row_end   ... row_start    proj(pose) (m, H)   row_end  ...

``modality_features`` maps a modality name to one entry per batch row: None, or the features of every span
of that modality in that row, (k, feature_dim) (or (n, group, feature_dim) for objects).

Video designs (``frontends.py``): a modality whose registry entry carries a ``design`` may have a
:class:`VideoFrontend` as its projector; its entries are then one sample's features ((T, P, D) grids or (N, D)
rows; a list of them for a packed row), and it is given the :class:`TextContext` of the row's question (prompt
text tokens only: never answers, never modality tokens). The model config's ``video_conditioning`` adds a
``VideoConditioning`` module (``conditioning.py``) that hooks the LLM's decoder layers; the video features are set
as its context around every LLM call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.generation.utils import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_llavidal import TOKEN_ROLES, LlavidalHFConfig
from .frontends import (
    TextContext,
    VideoFrontend,
    build_conditioning,
    build_modality_projector,
    conditioning_inputs,
    normalize_conditioning,
    normalize_design,
    num_output_tokens,
    text_context,
)

IGNORE_INDEX = -100
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")

ModalityFeatures = Mapping[str, Sequence[Any]]
"""modality name -> one entry per batch row: None or features (k, feature_dim) / (n, group, feature_dim)."""


class SpliceError(ValueError):
    """Placeholders and features of a sample disagree (raised with the sample named)."""


# ---------------------------------------------------------------------------------------------------
# Losses


def shifted_labels(labels: Tensor) -> Tensor:
    """labels (B, T) -> the label each position predicts (B, T): ``labels[:, t + 1]``, ``IGNORE_INDEX`` last."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def supervised_positions(labels: Tensor) -> Tensor:
    """(B, T) bool: positions whose next label is supervised, the only ones whose logits the loss uses."""
    return shifted_labels(labels) != IGNORE_INDEX


def causal_lm_loss(logits: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Next-token cross-entropy, shifted as transformers does.

    logits: (B, T, V) at every position, or (N, V) at the :func:`supervised_positions` of ``labels`` only
    (row-major order); labels: (B, T) with ``IGNORE_INDEX`` on unsupervised positions. Returns the sum over
    supervised tokens divided by ``num_items_in_batch`` when given (the HF Trainer passes the count over all
    gradient-accumulation micro-batches), else the mean over this batch's supervised tokens.
    """
    labels = labels.to(logits.device)
    shift_labels = shifted_labels(labels).reshape(-1)  # (B*T,)
    if logits.dim() == 2:  # kept logits: one row per supervised position
        shift_labels = shift_labels[shift_labels != IGNORE_INDEX]  # (N,)
        if logits.shape[0] != shift_labels.shape[0]:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} hold {logits.shape[0]} positions but the labels supervise "
                f"{shift_labels.shape[0]}; pass (B, T, V) logits or those of supervised_positions(labels)"
            )
    flat_logits = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V) or (N, V)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="mean")
    loss = F.cross_entropy(flat_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if isinstance(num_items_in_batch, Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


# ---------------------------------------------------------------------------------------------------
# The splice (shared with llavidal.model.llavidal_model.LlavidalModel)


def build_projector(projector_type: str, feature_dim: int, hidden_size: int) -> nn.Module:
    """A projector ``(..., feature_dim) -> (..., hidden_size)`` (upstream key layouts)."""
    if projector_type == "linear":
        return nn.Linear(feature_dim, hidden_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    raise ValueError(f"unknown projector_type {projector_type!r}; one of {PROJECTOR_TYPES}")


def new_token_tables(token_ids: Mapping[str, Mapping[str, int]], device: Any = None) -> tuple[Tensor, Tensor]:
    """(sorted ids of every modality token (3M,), where each sits in the (3M, H) table of rows (3M,)).

    The table is the modalities' (3, H) rows concatenated in ``token_ids`` order (patch, start, end each)."""
    order = [int(token_ids[name][role]) for name in token_ids for role in TOKEN_ROLES]
    if len(set(order)) != len(order):
        raise ValueError(f"modality tokens must be distinct; got ids {dict(token_ids)}")
    sorted_ids, permutation = torch.sort(torch.tensor(order, dtype=torch.long, device=device))
    return sorted_ids, permutation


def compose_token_embeddings(
    embedding: nn.Module,
    input_ids: Tensor,
    token_rows: Mapping[str, Tensor],
    token_ids: Mapping[str, Mapping[str, int]],
    sorted_ids: Tensor,
    permutation: Tensor,
) -> Tensor:
    """Token embeddings (B, T) -> (B, T, H): the LLM's lookup, modality-token rows taken from ``token_rows``."""
    embeds = embedding(input_ids)  # (B, T, H)
    table = torch.cat([token_rows[name] for name in token_ids], dim=0)  # (3M, H)
    table = table[permutation.to(table.device)]  # rows in sorted-id order
    sorted_ids = sorted_ids.to(input_ids.device)
    position = torch.searchsorted(sorted_ids, input_ids.contiguous()).clamp_(max=sorted_ids.numel() - 1)  # (B, T)
    is_new = sorted_ids[position] == input_ids  # (B, T)
    return torch.where(is_new.unsqueeze(-1), table.to(embeds.device)[position].to(embeds.dtype), embeds)


def row_name(row: int, sample_ids: Sequence[Any] | None) -> str:
    """How an error names batch row ``row`` (its sample id(s) when known)."""
    if sample_ids is not None and row < len(sample_ids) and sample_ids[row] not in (None, ""):
        value = sample_ids[row]
        if isinstance(value, (list, tuple)):
            return "packed row " + ", ".join(str(v) for v in value)
        return f"sample {value}"
    return f"batch row {row}"


def flatten_features(
    spec: Any, features: Any, row: int, sample_ids: Sequence[Any] | None = None, error: type = SpliceError
) -> Tensor | None:
    """One row's features of modality ``spec`` as (k, feature_dim), or None when it has none."""
    if features is None:
        return None
    if not isinstance(features, Tensor):
        features = torch.as_tensor(features)
    if features.dim() == 3:  # objects (n, group, D) -> (n * group, D)
        features = features.reshape(-1, features.shape[-1])
    if features.dim() != 2 or features.shape[-1] != spec.feature_dim:
        raise error(
            f"{row_name(row, sample_ids)}: {spec.name} features have shape {tuple(features.shape)}; "
            f"expected (k, {spec.feature_dim}) (or (n, group, {spec.feature_dim}) for grouped modalities). "
            "Check that the feature folder matches the model's modality config"
        )
    return features if features.shape[0] else None


def splice_features(
    embeds: Tensor,
    input_ids: Tensor,
    specs: Iterable[Any],
    token_ids: Mapping[str, Mapping[str, int]],
    projectors: Mapping[str, nn.Module],
    modality_features: ModalityFeatures | None = None,
    sample_ids: Sequence[Any] | None = None,
    error: type = SpliceError,
    labels: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, set[str]]:
    """Put the projected features of every modality into its patch positions.

    embeds: (B, T, H) token embeddings of input_ids (B, T). ``specs``: the modalities (objects with ``name``,
    ``feature_dim``, ``patch_token``, ``placeholder``, optionally ``design``), in span order. Returns (embeds,
    names of the modalities whose projector ran). Raises ``error`` naming the sample when a row's patch-token
    count differs from its feature rows, or when features come for a modality the model lacks. A modality whose
    projector is a :class:`VideoFrontend` gets the question's :class:`TextContext` (``labels`` (B, T) leave the
    answer tokens out, ``attention_mask`` the padding); one whose design says ``splice: False`` is skipped (its
    features reach the LLM through video conditioning).
    """
    specs = list(specs)
    names = [spec.name for spec in specs]
    batch = input_ids.shape[0]
    modality_features = dict(modality_features or {})
    for name in list(modality_features):
        if name not in names:
            entries = modality_features.pop(name)
            if entries is not None and any(e is not None for e in entries):
                raise error(
                    f"features given for modality {name!r}, which this model does not have "
                    f"(modalities: {names}); drop them or build the model with it"
                )
    used: set[str] = set()
    question: list[TextContext | None] = []  # computed once, for the first frontend that needs it

    def question_context() -> TextContext:
        if not question:
            ids = [int(i) for roles in token_ids.values() for i in roles.values()]
            question.append(text_context(embeds, input_ids, ids, labels, attention_mask))
        return question[0]

    for spec in specs:
        design = getattr(spec, "design", None)
        if design and not design.get("splice", True):
            continue  # conditioning only: no span in the prompt
        patch_mask = input_ids == token_ids[spec.name]["patch"]  # (B, T)
        counts = patch_mask.sum(dim=1).tolist()
        entries = modality_features.get(spec.name)
        if entries is None:
            entries = [None] * batch
        if isinstance(entries, Tensor) and entries.dim() >= 3 and entries.shape[0] == batch:
            entries = list(entries)  # a batched tensor (B, k, D): one entry per row
        if len(entries) != batch:
            raise error(
                f"modality_features[{spec.name!r}] has {len(entries)} entries for a batch of {batch} rows; "
                "give one entry (None or a tensor) per row"
            )
        projector = projectors[spec.name]
        if isinstance(projector, VideoFrontend):
            projected = _run_frontend(spec, projector, entries, counts, question_context, sample_ids, error)
            if projected is not None:
                projected = projected.to(device=embeds.device, dtype=embeds.dtype)
                embeds = embeds.masked_scatter(patch_mask.unsqueeze(-1).to(embeds.device), projected)
                used.add(spec.name)
            continue
        rows: list[Tensor] = []
        for row, features in enumerate(entries):
            features = flatten_features(spec, features, row, sample_ids, error)
            k = 0 if features is None else features.shape[0]
            if counts[row] != k:
                raise error(
                    f"{row_name(row, sample_ids)}: the text holds {counts[row]} {spec.patch_token} tokens "
                    f"but {k} {spec.name} feature rows were given; expand each {spec.placeholder} with the "
                    f"feature rows of that sample (llavidal.model.modality.expand_placeholders, or the processor)"
                )
            if k:
                rows.append(features)
        if not rows:
            continue
        projector_weight = next(projector.parameters())
        # Each row takes the projector's dtype before the concatenation: rows of several dtypes (fp16 feature
        # files) make torch.cat fail under CPU autocast ("Unexpected floating ScalarType in prioritize").
        stacked = torch.cat([r.to(device=projector_weight.device, dtype=projector_weight.dtype) for r in rows],
                            dim=0)  # (K, D)
        projected = projector(stacked).to(device=embeds.device, dtype=embeds.dtype)  # (K, H)
        embeds = embeds.masked_scatter(patch_mask.unsqueeze(-1).to(embeds.device), projected)
        used.add(spec.name)
    return embeds, used


def frontend_inputs(spec: Any, features: Any, row: int, sample_ids: Sequence[Any] | None = None,
                    error: type = SpliceError) -> list[Tensor]:
    """One row's features of a modality with a :class:`VideoFrontend`: a list with one tensor per span (an entry
    may be one tensor, or a list of tensors for a packed row); grids keep their shape."""
    if features is None:
        return []
    spans = list(features) if isinstance(features, (list, tuple)) else [features]
    out = []
    for value in spans:
        value = value if isinstance(value, Tensor) else torch.as_tensor(value)
        if value.dim() not in (2, 3, 4) or value.shape[-1] != spec.feature_dim:
            raise error(
                f"{row_name(row, sample_ids)}: {spec.name} features have shape {tuple(value.shape)}; expected "
                f"(N, {spec.feature_dim}) rows or (T, P, {spec.feature_dim}) grids for the design {spec.design}"
            )
        if value.shape[0]:
            out.append(value)
    return out


def _run_frontend(spec: Any, frontend: VideoFrontend, entries: Sequence[Any], counts: list[int],
                  question: Any, sample_ids: Sequence[Any] | None, error: type) -> Tensor | None:
    """The frontend's tokens of every span in the batch, concatenated in row order (K, H), checked against the
    patch counts of each row first; None when no row has features."""
    spans: list[Tensor] = []
    span_rows: list[int] = []
    for row, entry in enumerate(entries):
        values = frontend_inputs(spec, entry, row, sample_ids, error)
        try:
            expected = sum(num_output_tokens(frontend.design, v.shape) for v in values)
        except ValueError as err:
            raise error(f"{row_name(row, sample_ids)}: {spec.name}: {err}") from None
        if counts[row] != expected:
            raise error(
                f"{row_name(row, sample_ids)}: the text holds {counts[row]} {spec.patch_token} tokens but the "
                f"{spec.name} design makes {expected} tokens of features {[tuple(v.shape) for v in values]}; expand "
                f"each {spec.placeholder} with num_output_tokens(design, feature shape) patch tokens "
                "(llavidal.model.modality.expand_placeholders does)"
            )
        spans.extend(values)
        span_rows.extend([row] * len(values))
    if not spans:
        return None
    context = question().select(span_rows)
    return torch.cat(frontend(spans, context), dim=0)


@contextmanager
def video_conditioning_context(model: Any, features: Mapping[str, Any] | None, batch: int) -> Iterator[None]:
    """Set the model's video conditioning context (``model.conditioning``, from ``model.conditioning_settings``)
    to the features of its modality for the span of an LLM call; a no-op for a model without conditioning."""
    conditioning = getattr(model, "conditioning", None)
    settings = getattr(model, "conditioning_settings", None)
    if conditioning is None or not settings:
        yield
        return
    parameter = next(conditioning.parameters(), None)
    inputs = conditioning_inputs(settings, (features or {}).get(settings["modality"]), batch,
                                 device=None if parameter is None else parameter.device,
                                 dtype=None if parameter is None else parameter.dtype)
    if inputs is None:
        conditioning.clear_context()
        yield
        return
    conditioning.set_context(*inputs)
    try:
        yield
    finally:
        conditioning.clear_context()


class ModalityInfo:
    """What the splice needs of one modality, from the config's registry entry (a dict)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)
        self.name = str(data["name"])
        self.placeholder = str(data.get("placeholder", f"<{self.name}>"))
        self.patch_token = str(data.get("patch_token", ""))
        self.feature_dim = int(data["feature_dim"])
        self.projector_type = str(data.get("projector_type", "linear"))
        self.num_tokens = int(data.get("num_tokens") or 0)
        self.design = normalize_design(data.get("design"), self.num_tokens, self.projector_type)

    def __repr__(self) -> str:
        return f"ModalityInfo({self.name!r}, feature_dim={self.feature_dim}, projector={self.projector_type})"


# ---------------------------------------------------------------------------------------------------
# The model


class LlavidalForCausalLM(PreTrainedModel, GenerationMixin):
    """The base causal LM (``.llm``, built from ``config.text_config``), a projector per modality
    (``.projectors[name]``) and the modality token rows (``.token_embeddings[name]``, (3, H): patch, start,
    end). Parameter names match :class:`llavidal.model.llavidal_model.LlavidalModel`'s.

    ``forward(input_ids, attention_mask, labels, modality_features=...)`` and ``generate(...)`` take the
    features as ``modality_features`` (a dict name -> one entry per row) or as ``<name>_features`` keyword
    arguments (what :class:`LlavidalProcessor` returns). ``generate`` returns only the new tokens (as
    transformers does when generating from embeddings); prompts of a batch must be LEFT-padded.
    """

    config_class = LlavidalHFConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: LlavidalHFConfig) -> None:
        super().__init__(config)
        from transformers.models.auto.modeling_auto import AutoModelForCausalLM

        if config.text_config is None:
            raise ValueError("LlavidalHFConfig has no text_config (the base LLM's configuration)")
        self.llm = AutoModelForCausalLM.from_config(config.text_config)
        self._no_split_modules = list(getattr(self.llm, "_no_split_modules", None) or [])
        self.modality_specs = [ModalityInfo(m) for m in config.modalities]
        hidden = int(config.text_config.hidden_size)
        self.projectors = nn.ModuleDict({
            s.name: build_modality_projector(s.projector_type, s.feature_dim, hidden, s.design, s.num_tokens)
            for s in self.modality_specs
        })
        self.conditioning_settings = normalize_conditioning(getattr(config, "video_conditioning", None))
        if self.conditioning_settings is not None:
            source = {s.name: s for s in self.modality_specs}.get(self.conditioning_settings["modality"])
            if source is None:
                raise ValueError(f"video_conditioning reads modality {self.conditioning_settings['modality']!r}, "
                                 f"which this model lacks ({self.modalities})")
            self.conditioning = build_conditioning(self.conditioning_settings, config.text_config, source.feature_dim)
            self.conditioning.attach(self.llm)
        self.token_embeddings = nn.ParameterDict(
            {s.name: nn.Parameter(torch.zeros(len(TOKEN_ROLES), hidden)) for s in self.modality_specs}
        )
        self._token_tables: dict[str, tuple[Tensor, Tensor]] = {}
        self.post_init()

    # -------------------------------------------------------------- transformers plumbing
    def _init_weights(self, module: nn.Module) -> None:
        if module is self:  # the token rows: the mean of the LLM's rows (only when missing from a checkpoint)
            return
        if isinstance(module, nn.Linear) and any(module is m for p in self.projectors.values() for m in p.modules()):
            std = float(getattr(self.config.text_config, "initializer_range", 0.02))
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.llm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.llm.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.llm.get_decoder()

    @property
    def modalities(self) -> list[str]:
        return [s.name for s in self.modality_specs]

    def modality_token_ids(self) -> list[int]:
        """Ids of every modality token (patch, start, end of each modality)."""
        return self.config.modality_token_ids

    # -------------------------------------------------------------- splice
    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        key = str(device)
        if key not in self._token_tables:
            self._token_tables[key] = new_token_tables(self.config.token_ids, device=device)
        return self._token_tables[key]

    def _gather_features(self, modality_features: ModalityFeatures | None, kwargs: dict) -> dict[str, Any]:
        features = dict(modality_features or {})
        for name in self.modalities:
            value = kwargs.pop(f"{name}_features", None)
            if value is not None:
                features[name] = value
        return features

    def embed_inputs(
        self,
        input_ids: Tensor,
        modality_features: ModalityFeatures | None = None,
        sample_ids: Sequence[Any] | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, set[str]]:
        """(inputs_embeds (B, T, H) with the projected features in the patch positions, modalities used).

        ``labels`` / ``attention_mask`` only shape the question context given to video frontends."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq); got shape {tuple(input_ids.shape)}")
        sorted_ids, permutation = self._tables(input_ids.device)
        embeds = compose_token_embeddings(
            self.llm.get_input_embeddings(), input_ids, self.token_embeddings, self.config.token_ids,
            sorted_ids, permutation,
        )
        return splice_features(
            embeds, input_ids, self.modality_specs, self.config.token_ids, self.projectors, modality_features,
            sample_ids, labels=labels, attention_mask=attention_mask,
        )

    # -------------------------------------------------------------- forward / generate
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        modality_features: ModalityFeatures | None = None,
        inputs_embeds: Tensor | None = None,
        sample_ids: Sequence[Any] | None = None,
        num_items_in_batch: int | Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Splice the features, run the LLM; the loss (mean next-token cross-entropy over supervised
        labels, or their sum over ``num_items_in_batch``) when ``labels`` (B, T) are given."""
        features = self._gather_features(modality_features, kwargs)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            if kwargs.get("past_key_values") is not None and input_ids.shape[1] == 1 and not features:
                inputs_embeds = compose_token_embeddings(  # a decoding step of an outer generation loop
                    self.llm.get_input_embeddings(), input_ids, self.token_embeddings, self.config.token_ids,
                    *self._tables(input_ids.device),
                )
            else:
                inputs_embeds, _ = self.embed_inputs(input_ids, features, sample_ids, labels, attention_mask)
        with video_conditioning_context(self, features, inputs_embeds.shape[0]):
            outputs = self.llm(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        loss = None
        if labels is not None:
            loss = causal_lm_loss(outputs.logits, labels, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=outputs.logits,
            past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        modality_features: ModalityFeatures | None = None,
        sample_ids: Sequence[Any] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """Generate from spliced prompts; returns only the new tokens (B, new_len).

        Batches must be LEFT-padded. Keyword arguments (max_new_tokens, do_sample, temperature, top_p,
        streamer, generation_config...) go to the LLM's ``generate``; modality tokens are never generated
        unless ``suppress_tokens`` or a ``generation_config`` is given.
        """
        features = self._gather_features(modality_features, generate_kwargs)
        if input_ids is None:
            raise ValueError("generate() needs input_ids (the prompt with its modality spans expanded)")
        if "generation_config" not in generate_kwargs and getattr(self, "generation_config", None) is not None:
            generate_kwargs.setdefault("suppress_tokens", self.modality_token_ids())
            generate_kwargs["generation_config"] = self.generation_config
        return generate_spliced(self, input_ids, attention_mask, features, sample_ids, generate_kwargs)


def generate_spliced(model: Any, input_ids: Tensor, attention_mask: Tensor | None, features: Any,
                     sample_ids: Sequence[Any] | None, generate_kwargs: dict[str, Any]) -> Tensor:
    """``model.llm.generate`` on the spliced prompt embeddings (shared by both model classes).

    Batches must be LEFT-padded (the last column of ``attention_mask`` all ones). Modality tokens are
    inputs only: unless the caller says otherwise they are suppressed (a weakly trained projector can
    otherwise make a model answer with patch tokens that decode to nothing)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.shape[0] > 1 and not bool(attention_mask[:, -1].all()):
        raise ValueError("generate() needs LEFT padding (tokenizer.padding_side = 'left'): some rows end in padding")
    inputs_embeds, _ = model.embed_inputs(input_ids, features, sample_ids, attention_mask=attention_mask)
    if "suppress_tokens" not in generate_kwargs and "generation_config" not in generate_kwargs:
        generate_kwargs["suppress_tokens"] = model.modality_token_ids()
    with video_conditioning_context(model, features, input_ids.shape[0]):
        return model.llm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs)


__all__ = [
    "LlavidalForCausalLM",
    "generate_spliced",
    "SpliceError",
    "causal_lm_loss",
    "compose_token_embeddings",
    "flatten_features",
    "frontend_inputs",
    "new_token_tables",
    "splice_features",
    "video_conditioning_context",
]
