"""The multimodal model: any Hugging Face causal LM with modality features spliced into its tokens.

``LlavidalModel`` wraps a causal LM (``.llm``) and adds, per modality of its registry, a projector
(``.projectors[name]``: features -> hidden size) and three token rows (patch, start, end) that live in
their own trainable parameters (``.token_embeddings[name]``, shape (3, H)). The input embeddings are
composed as ``llm embedding lookup`` with the modality-token positions replaced by those rows, then the
projected features are ``masked_scatter``-ed into the patch positions::

    text  : ... <vid_start> <vid_patch> x k <vid_end> ... <pose_start> <pose_patch> x m <pose_end> ...
    embeds: ... row_start   proj(video) (k, H)  row_end   ... row_start    proj(pose) (m, H)   row_end  ...

Keeping the new rows outside the LLM's embedding matrix means that with the LLM frozen the optimiser
never sees the old rows (so weight decay cannot move them), and tied input/output embeddings (SmolLM2)
keep working: the LLM's own matrix, resized with mean-initialised rows, still serves as output head.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from llavidal.constants import IGNORE_INDEX  # noqa: F401  (re-exported; the loss lives in the shared splice)
from llavidal.model.config import (
    FULL_LLM_SUBDIR,
    TRAINABLE_NAME,
    LlavidalConfig,
    LoraSettings,
)

# The splice and the loss are shared with the transformers-native model (self-contained, copied beside exports).
from llavidal.model.hf.modeling_llavidal import (  # noqa: F401  (shifted_labels etc. stay importable from here)
    causal_lm_loss,
    compose_token_embeddings,
    flatten_features,
    generate_spliced,
    new_token_tables,
    video_conditioning_context,
    row_name,
    shifted_labels,
    splice_features,
    supervised_positions,
)
from llavidal.model.modality import ModalityRegistry, ModalitySpec, SpliceError
from llavidal.model.hf.frontends import VideoFrontend, build_conditioning, normalize_conditioning, text_context
from llavidal.model.projectors import build_projectors
from llavidal.model.seq2seq import is_encoder_decoder, new_decoder_tokens, seq2seq_forward
from llavidal.model.weights import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_FILES,
    ADAPTER_WEIGHTS_NAME,
    LORA_PREFIX,
    TOKEN_ROLES,
    canonicalize,
    plan_load,
    read_peft_adapter,
    read_weights,
    resolve_trainable_file,
    write_weights,
)

logger = logging.getLogger(__name__)

ModalityFeatures = Mapping[str, Sequence[Tensor | None]]
"""modality name -> one entry per batch row: None or features (k, feature_dim) / (n, group, feature_dim)."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("llavidal")
    except Exception:  # noqa: BLE001 - metadata missing in a source checkout
        return ""


@dataclass
class LoadReport:
    """What :meth:`LlavidalModel.load_trainable` did."""

    path: str
    loaded: list[str] = field(default_factory=list)
    """Our parameter names that received values."""
    skipped_modalities: list[str] = field(default_factory=list)
    """Modalities present in the file but not in this model (ignored; normal in staged training)."""
    missing: list[str] = field(default_factory=list)
    """Our parameter names the file had no value for."""


def _transformers_keeps_masked_logits() -> bool:
    """Whether transformers' ``slice_logits_to_keep`` takes a boolean (B, T) mask (5.x does)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep

        kept = slice_logits_to_keep(torch.zeros(2, 3, 1), torch.tensor([[True, False, True], [False, False, True]]))
    except Exception:  # noqa: BLE001 - an older transformers: positions only
        return False
    return tuple(kept.shape) == (3, 1)


def _frontend_keys(canonical: Any, projector_state: Mapping[str, Tensor], projectors: nn.ModuleDict) -> None:
    """Plain projector weights (``projectors.video.weight``, an upstream ``mm_projector.bin``, ``llavidal align``'s
    output) given to a modality whose projector is a video frontend go to the frontend's own projector
    (``projectors.video.projector.weight``): a design can start from an aligned projector."""
    for modality, params in canonical.projectors.items():
        if modality not in projectors or not isinstance(projectors[modality], VideoFrontend):
            continue
        for param in list(params):
            if f"{modality}.{param}" not in projector_state and f"{modality}.projector.{param}" in projector_state:
                params[f"projector.{param}"] = params.pop(param)
                origin = canonical.origin.pop(f"projectors.{modality}.{param}", None)
                if origin is not None:
                    canonical.origin[f"projectors.{modality}.projector.{param}"] = origin


def add_modality_tokens(
    llm: nn.Module, tokenizer: Any, modalities: ModalityRegistry, initialize_new_rows: bool = True
) -> tuple[int, dict[str, dict[str, int]], list[int]]:
    """Add every modality's patch/start/end tokens to ``tokenizer`` and grow the LLM's embeddings.

    Tokens are added as special tokens (never split, skipped when decoding). Rows of tokens that were
    not in the tokenizer before are set to the mean of the existing rows (input and, when untied,
    output embeddings), as upstream does. Tokens the tokenizer already had (an exported model, a base
    that ships them) keep their rows. ``initialize_new_rows=False`` keeps all rows (reloading a fully
    fine-tuned LLM whose matrix already holds trained rows).

    Returns (base_vocab_size, token_ids name -> {patch, start, end}, ids of newly added tokens).
    """
    base_vocab_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    wanted = modalities.new_tokens()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    token_ids = {
        spec.name: {
            role: int(tokenizer.convert_tokens_to_ids(token))
            for role, token in zip(TOKEN_ROLES, spec.new_tokens, strict=True)
        }
        for spec in modalities
    }
    added_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in missing]

    input_embeddings = llm.get_input_embeddings()
    old_rows = input_embeddings.weight.shape[0]
    needed = len(tokenizer)
    if needed > old_rows:
        # Never shrink (Qwen2 pads its matrix beyond the tokenizer); mean init is done below, exactly.
        llm.resize_token_embeddings(needed, mean_resizing=False)
    if initialize_new_rows and added_ids:
        reference_rows = min(base_vocab_size, old_rows)
        ids = torch.tensor(added_ids, dtype=torch.long)
        with torch.no_grad():
            matrices = [llm.get_input_embeddings().weight]
            output = llm.get_output_embeddings()
            if output is not None and output.weight is not matrices[0]:
                matrices.append(output.weight)
            for weight in matrices:
                mean = weight[:reference_rows].float().mean(dim=0).to(weight.dtype)  # (H,)
                weight[ids.to(weight.device)] = mean
    return base_vocab_size, token_ids, added_ids


CONDITIONING_PREFIX = "conditioning."
"""Key prefix of the video conditioning's weights in ``trainable.safetensors``."""


def _registry_for_conditioning(modalities: ModalityRegistry, settings: dict | None) -> ModalityRegistry:
    """``modalities``, with ``splice: False`` written into the conditioned modality's design when the video
    conditioning keeps the video out of the prompt (so placeholder expansion, which reads only the registry,
    leaves its span out)."""
    if settings is None:
        return modalities
    name = settings["modality"]
    if name not in modalities:
        raise ValueError(f"video_conditioning reads modality {name!r}, which the model lacks ({modalities.names()}); "
                         "give its feature folder or drop --video_conditioning")
    spec = modalities[name]
    if settings["splice"] == spec.spliced:
        return modalities
    import dataclasses

    design = dict(spec.design or {}, splice=settings["splice"])
    specs = dict(modalities.specs)
    specs[name] = dataclasses.replace(spec, design=design)
    return ModalityRegistry(specs)


def _record_qformer_configs(projectors: nn.ModuleDict, modalities: ModalityRegistry) -> None:
    """A Q-Former's architecture is written into the design (``qformer``: its config dict; a folder it was read
    from stays as ``qformer_path``), so that reloading the weights needs neither the folder nor today's defaults."""
    for spec in modalities:
        frontend = projectors[spec.name]
        if not isinstance(frontend, VideoFrontend) or not hasattr(frontend.projector, "config_dict"):
            continue
        if isinstance(spec.design.get("qformer"), str):
            spec.design["qformer_path"] = spec.design["qformer"]
        data = frontend.projector.config_dict()
        spec.design["qformer"] = data
        frontend.design.update({k: spec.design[k] for k in ("qformer", "qformer_path") if k in spec.design})


class LlavidalModel(nn.Module):
    """A causal LM with modality features spliced into its token stream (see module docstring).

    Build it with :func:`llavidal.model.builder.build_model` (loads the LLM, adds tokens, freezes or
    adds LoRA) or directly from an LLM and its tokenizer (the tokenizer gains the modality tokens).
    """

    # The HF Trainer passes ``num_items_in_batch`` and then treats the loss as already normalised.
    accepts_loss_kwargs = True
    # Let the HF Trainer know parameters may be frozen.
    supports_gradient_checkpointing = True
    # Training-mode forwards with labels compute the LM head only at supervised positions (see forward).
    # Set False (or pass ``full_logits=True``) for logits at every position.
    sparse_training_logits = True
    # LSTP's pseudo-label loss of temporal samplers whose design says ``train: pseudo`` (see
    # :meth:`sampler_pseudo_loss`): its weight (``--sampler_loss_weight``) and a scale the trainer sets so that
    # gradient accumulation does not multiply it. The latest value (detached) is kept for logging.
    sampler_loss_weight: float = 1.0
    auxiliary_loss_scale: float = 1.0
    last_sampler_loss: Tensor | None = None

    def __init__(
        self,
        llm: nn.Module,
        tokenizer: Any,
        modalities: ModalityRegistry,
        *,
        base_model: str = "",
        use_modality_string_prefix: bool = False,
        template: str = "v1",
        initialize_new_rows: bool = True,
        video_conditioning: dict | str | None = None,
    ) -> None:
        super().__init__()
        if len(modalities) == 0:
            raise ValueError("LlavidalModel needs at least one modality in the registry")
        self.llm = llm
        self.conditioning_settings = normalize_conditioning(video_conditioning)
        modalities = _registry_for_conditioning(modalities, self.conditioning_settings)
        self.modalities = modalities
        base_vocab_size, self.token_ids, _ = add_modality_tokens(llm, tokenizer, modalities, initialize_new_rows)
        llm_config = llm.config
        hidden_size = int(llm.get_input_embeddings().weight.shape[1])
        embedding_weight = llm.get_input_embeddings().weight
        self.projectors = build_projectors(modalities, hidden_size).to(
            device=embedding_weight.device, dtype=embedding_weight.dtype
        )
        _record_qformer_configs(self.projectors, modalities)
        self.conditioning: nn.Module | None = None
        if self.conditioning_settings is not None:
            source = modalities[self.conditioning_settings["modality"]]
            self.conditioning = build_conditioning(self.conditioning_settings, llm_config, source.feature_dim).to(
                device=embedding_weight.device)  # trainable weights stay float32 (as the projectors' master copy)
        self._conditioning_attached_to: int | None = None
        with torch.no_grad():
            self.token_embeddings = nn.ParameterDict(
                {
                    name: nn.Parameter(
                        embedding_weight[torch.tensor([ids[r] for r in TOKEN_ROLES], device=embedding_weight.device)]
                        .detach()
                        .clone()
                    )  # (3, H): patch, start, end
                    for name, ids in self.token_ids.items()
                }
            )
        # Lookup tables for composing embeddings: ids sorted, and where each sits in the (3M, H) table.
        sorted_ids, permutation = new_token_tables(self.token_ids)
        self.register_buffer("_new_ids_sorted", sorted_ids, persistent=False)
        self.register_buffer("_new_ids_permutation", permutation, persistent=False)

        all_tokens = modalities.new_tokens()
        self.config = LlavidalConfig(
            base_model=str(base_model),
            modalities=modalities.to_list(),
            use_modality_string_prefix=use_modality_string_prefix,
            template=template,
            base_vocab_size=base_vocab_size,
            new_tokens=all_tokens,
            new_token_ids=[int(tokenizer.convert_tokens_to_ids(t)) for t in all_tokens],
            hidden_size=hidden_size,
            llm_model_type=str(getattr(llm_config, "model_type", "")),
            freeze_llm=True,
            torch_dtype=str(embedding_weight.dtype).replace("torch.", ""),
            package_version=_package_version(),
            video_conditioning=self.conditioning_settings,
        )
        self.setup_training(freeze_llm=True)
        # Start in the LLM's mode, as a transformers model would (``from_pretrained`` gives eval mode);
        # the HF Trainer calls ``train()``.
        self.train(bool(llm.training))

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def is_encoder_decoder(self) -> bool:
        """An encoder-decoder backbone (Flan-T5...): features go into the encoder, answers are decoder labels."""
        return is_encoder_decoder(self.base_llm)

    @property
    def has_lora(self) -> bool:
        return self.config.lora is not None

    @property
    def base_llm(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        return self.llm.get_base_model() if self.has_lora else self.llm

    # ------------------------------------------------------------------ training setup
    def setup_training(self, freeze_llm: bool = True, lora: LoraSettings | dict | None = None) -> None:
        """Choose what trains: projectors + modality token rows always; the LLM frozen, LoRA or full.

        ``lora`` wraps the LLM with peft adapters (base frozen); ``freeze_llm=False`` without LoRA is
        full fine-tuning. Call once, right after construction.
        """
        lora_settings = LoraSettings.from_any(lora)
        if lora_settings is not None:
            if self.has_lora:
                raise RuntimeError("LoRA adapters are already attached to this model")
            from peft import LoraConfig, get_peft_model

            target = lora_settings.target_modules
            peft_config = LoraConfig(
                r=lora_settings.r,
                lora_alpha=lora_settings.alpha,
                lora_dropout=lora_settings.dropout,
                target_modules=target[0] if target == ["all-linear"] else list(target),
                bias=lora_settings.bias,
                task_type="SEQ_2_SEQ_LM" if self.is_encoder_decoder else "CAUSAL_LM",
            )
            self.llm = get_peft_model(self.llm, peft_config)  # freezes the base, adapters trainable
            self.config.lora = lora_settings.to_dict()
            self.config.freeze_llm = True
        elif not self.has_lora:
            self.llm.requires_grad_(not freeze_llm)
            self.config.freeze_llm = bool(freeze_llm)
        self.projectors.requires_grad_(True)
        self.token_embeddings.requires_grad_(True)
        self._attach_conditioning()

    def _attach_conditioning(self) -> None:
        """Hook the video conditioning into the LLM's decoder layers, once the LLM's final form (LoRA or not) is
        known; re-attached when LoRA wrapping changes the LLM object."""
        if self.conditioning is None:
            return
        self.conditioning.requires_grad_(True)
        if self._conditioning_attached_to == id(self.llm):
            return
        if self._conditioning_attached_to is not None and hasattr(self.conditioning, "detach"):
            self.conditioning.detach()
        self.conditioning.attach(self.llm)
        self._conditioning_attached_to = id(self.llm)

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Delegate to the LLM (the HF Trainer calls this). Non-reentrant by default, which works when
        the LLM is frozen and its inputs need no grad."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        kwargs.setdefault("use_reentrant", False)
        llm = self.base_llm
        if kwargs["use_reentrant"] and hasattr(llm, "enable_input_require_grads"):
            llm.enable_input_require_grads()  # reentrant checkpointing drops grads of inputs that need none
        if hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
            )
        else:  # transformers before the activation_* names
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Alias of :meth:`activation_checkpointing_enable` (the name older transformers use)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        llm = self.base_llm
        if hasattr(llm, "activation_checkpointing_disable"):
            llm.activation_checkpointing_disable()
        else:
            llm.gradient_checkpointing_disable()

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.base_llm.modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    # ------------------------------------------------------------------ embedding + splice
    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Token embeddings (B, T) -> (B, T, H), modality-token rows taken from ``token_embeddings``."""
        return compose_token_embeddings(self.llm.get_input_embeddings(), input_ids, self.token_embeddings,
                                        self.token_ids, self._new_ids_sorted, self._new_ids_permutation)

    def _row_name(self, row: int, sample_ids: Sequence[Any] | None) -> str:
        return row_name(row, sample_ids)

    def embed_inputs(
        self,
        input_ids: Tensor,
        modality_features: ModalityFeatures | None = None,
        sample_ids: Sequence[Any] | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, set[str]]:
        """Compose the input embeddings with projected features in the patch positions.

        ``labels`` / ``attention_mask`` (B, T) only shape the question context a video frontend reads (the
        prompt's text tokens: answers and padding left out).

        input_ids: (B, T). ``modality_features[name][row]``: None or (k, D) / (n, group, D) features of
        every span of that modality in the row, in order of appearance. Returns (inputs_embeds (B, T, H),
        names of the modalities whose projector ran). Raises :class:`SpliceError` naming the sample when
        a row's patch-token count differs from its feature rows. The splice itself is
        :func:`llavidal.model.hf.modeling_llavidal.splice_features` (shared with the exported model).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq); got shape {tuple(input_ids.shape)}")
        embeds = self.embed_tokens(input_ids)  # (B, T, H)
        return splice_features(embeds, input_ids, self.modalities, self.token_ids, self.projectors,
                               modality_features, sample_ids, error=SpliceError, labels=labels,
                               attention_mask=attention_mask)

    def _flatten_features(
        self, spec: ModalitySpec, features: Tensor | None, row: int, sample_ids: Sequence[Any] | None
    ) -> Tensor | None:
        return flatten_features(spec, features, row, sample_ids, error=SpliceError)

    def _zero_touch(self, used: Iterable[str]) -> Tensor | None:
        """0 * (sum of the unused projectors' parameters): their grads exist (zero), so DDP never waits."""
        used = set(used)
        terms = [
            p.sum() for name, projector in self.projectors.items() if name not in used
            for p in projector.parameters() if p.requires_grad
        ]
        if self.conditioning is not None:  # a batch without video leaves the conditioning unused
            terms.extend(p.sum() for p in self.conditioning.parameters() if p.requires_grad)
        if not terms:
            return None
        return torch.stack([t.float() for t in terms]).sum() * 0.0

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        modality_features: ModalityFeatures | None = None,
        sample_ids: Sequence[Any] | None = None,
        num_items_in_batch: int | Tensor | None = None,
        full_logits: bool | None = None,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Splice features, run the LLM, and compute the loss when ``labels`` are given.

        input_ids, attention_mask, labels, position_ids: (B, T). Extra kwargs (``use_cache``,
        flash-attention varlen ``cu_seq_lens_*`` of packed rows...) go to the LLM unchanged. A packed row
        is given with ``position_ids`` restarting at 0 for each sample and ``attention_mask=None``.

        Logits. By default (``full_logits=None``) a forward in training mode with ``labels`` runs the LM
        head only at the positions whose next label is supervised (:func:`supervised_positions`; the
        LLM's ``logits_to_keep`` with a boolean (B, T) mask), since the loss reads no other logits: the
        returned ``logits`` are then (N, V), N = number of supervised next-token labels, in row-major
        (row, position) order, so ``logits[i]`` predicts the i-th supervised label. Loss and gradients
        are those of the full logits. Otherwise (eval mode, no labels, ``full_logits=True`` or
        ``sparse_training_logits = False``, or an LLM whose forward takes no ``logits_to_keep``) the
        logits are (B, T, V), as before; ``full_logits=False`` asks for the sparse head in eval mode too.
        """
        inputs_embeds, used = self.embed_inputs(input_ids, modality_features, sample_ids, labels, attention_mask)
        sampler_loss = None
        if labels is not None and self.training and self.sampler_loss_weight > 0 and not self.is_encoder_decoder:
            sampler_loss = self.sampler_pseudo_loss(inputs_embeds, input_ids, labels, modality_features,
                                                    attention_mask, sample_ids)
        self.last_sampler_loss = None if sampler_loss is None else sampler_loss.detach()
        if self.is_encoder_decoder:  # spliced encoder input; the decoder learns the answer (llavidal.model.seq2seq)
            return seq2seq_forward(self, inputs_embeds, attention_mask, labels, position_ids, used,
                                   num_items_in_batch, llm_kwargs)
        # No KV cache unless asked: training needs none, and transformers only builds the block-diagonal
        # mask of packed rows (position_ids restarting, no attention_mask) when there is no cache.
        llm_kwargs.setdefault("use_cache", False)
        if full_logits is None:
            full_logits = not (self.training and self.sparse_training_logits)
        if labels is not None and not full_logits and "logits_to_keep" not in llm_kwargs and self._llm_keeps_logits():
            llm_kwargs["logits_to_keep"] = supervised_positions(labels).to(inputs_embeds.device)  # (B, T) bool
        with video_conditioning_context(self, modality_features, inputs_embeds.shape[0]):
            outputs = self.llm(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **llm_kwargs
            )
        loss = None
        if labels is not None:
            loss = causal_lm_loss(outputs.logits, labels, num_items_in_batch)
            touch = self._zero_touch(used)
            if touch is not None:
                loss = loss + touch.to(loss.device)
            if sampler_loss is not None:
                scale = self.sampler_loss_weight * self.auxiliary_loss_scale
                loss = loss + scale * sampler_loss.to(device=loss.device, dtype=loss.dtype)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=outputs.logits,
            past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def _llm_keeps_logits(self) -> bool:
        """Whether the LLM's forward takes ``logits_to_keep`` (transformers' causal LMs; a boolean
        (B, T) mask selects positions, flattened to (N, V), since transformers 5)."""
        cached = self.__dict__.get("_keeps_logits")
        if cached is None:
            import inspect

            try:
                parameters = inspect.signature(self.base_llm.forward).parameters
            except (TypeError, ValueError):
                parameters = {}
            cached = "logits_to_keep" in parameters and _transformers_keeps_masked_logits()
            if not cached:
                logger.info("%s takes no logits_to_keep: training computes logits at every position",
                            type(self.base_llm).__name__)
            self.__dict__["_keeps_logits"] = cached
        return cached

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        modality_features: ModalityFeatures | None = None,
        sample_ids: Sequence[Any] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """Generate from spliced prompts; returns only the new tokens (B, new_len).

        Batches must be LEFT-padded (the last column of ``attention_mask`` all ones). Uses the LLM's
        ``generate`` with ``inputs_embeds`` and its KV cache; kwargs (max_new_tokens, do_sample,
        temperature, top_p, eos_token_id, pad_token_id, streamer...) pass through.
        """
        new_tokens = generate_spliced(self, input_ids, attention_mask, modality_features, sample_ids, generate_kwargs)
        return new_decoder_tokens(new_tokens, generate_kwargs) if self.is_encoder_decoder else new_tokens

    # ------------------------------------------------------------------ temporal sampler
    def _pseudo_label_frontends(self) -> list[tuple[ModalitySpec, VideoFrontend]]:
        """Modalities whose frontend has a temporal sampler trained with pseudo-labels (``train: pseudo``)."""
        found = []
        for spec in self.modalities:
            frontend = self.projectors[spec.name]
            if isinstance(frontend, VideoFrontend) and frontend.sampler is not None and \
                    (frontend.design.get("sampler") or {}).get("train") == "pseudo":
                found.append((spec, frontend))
        return found

    def sampler_pseudo_loss(
        self,
        inputs_embeds: Tensor,
        input_ids: Tensor,
        labels: Tensor,
        modality_features: ModalityFeatures | None,
        attention_mask: Tensor | None = None,
        sample_ids: Sequence[Any] | None = None,
    ) -> Tensor | None:
        """LSTP's auxiliary loss for samplers with ``train: pseudo``, or None when the model has none (or the batch
        no clip for them).

        Per clip: the sampler's frame scores (for the clip's question, as the forward pass scored them) against
        :func:`~llavidal.model.hf.sampler.relevance_targets`, the cosine similarity of each frame's features after
        the frontend's projector with the mean input embedding of the row's answer tokens (its supervised labels);
        :func:`~llavidal.model.hf.sampler.pseudo_label_loss` between the two, averaged over the clips. Zero-padded
        frames (grids of clips shorter than the extraction's frame count) are left out. The gradient reaches the
        sampler's scorer only (the targets carry none).
        """
        from llavidal.model.hf.modeling_llavidal import frontend_inputs
        from llavidal.model.hf.sampler import frame_summaries, pseudo_label_loss, relevance_targets

        frontends = self._pseudo_label_frontends()
        if not frontends or not modality_features:
            return None
        supervised = labels != IGNORE_INDEX  # (B, T): the answers
        question = text_context(inputs_embeds, input_ids, self.modality_token_ids(), labels, attention_mask)
        losses: list[Tensor] = []
        weights: list[int] = []
        for spec, frontend in frontends:
            entries = modality_features.get(spec.name)
            if entries is None:
                continue
            if isinstance(entries, Tensor):
                entries = list(entries)
            if frontend.design["projector"] == "qformer":
                raise ValueError(f"{spec.name}: pseudo-label training of the temporal sampler compares projected "
                                 "frames with the answer, which a Q-Former projector cannot give per frame; use a "
                                 "linear/mlp2x_gelu projector or --sampler_train straight_through")
            groups: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
            for row, entry in enumerate(entries):
                if not bool(supervised[row].any()):
                    continue
                for value in frontend_inputs(spec, entry, row, sample_ids, SpliceError):
                    if value.dim() == 2:  # pooled (T + S, D) rows: the sampler reads the temporal rows
                        value = value[: frontend.design["temporal_rows"] or value.shape[0]]
                    groups.setdefault(tuple(value.shape), []).append((row, value))
            parameter = frontend.sampler.frame_proj.weight
            for members in groups.values():
                rows = [row for row, _ in members]
                frames = torch.stack([v for _, v in members]).to(device=parameter.device, dtype=parameter.dtype)
                context = question.select(rows)
                scores = frontend.sampler.score(frames, context.embeds.to(device=frames.device, dtype=frames.dtype),
                                                None, context.mask.to(frames.device))  # (G, T)
                index = torch.as_tensor(rows, device=inputs_embeds.device)
                answer_mask = supervised.index_select(0, index)  # (G, L)
                answer = inputs_embeds.index_select(0, index)  # (G, L, H)
                targets = relevance_targets(frames, answer, answer_mask, projector=frontend.projector)
                frame_mask = frame_summaries(frames).abs().sum(dim=-1) > 0  # (G, T): zero-padded frames out
                keep = frame_mask.any(dim=1)
                if not bool(keep.any()):
                    continue
                loss = pseudo_label_loss(scores[keep], targets[keep].to(scores.device), frame_mask[keep])
                losses.append(loss)
                weights.append(int(keep.sum()))
        if not losses:
            return None
        total = sum(weights)
        return sum(loss * (w / total) for loss, w in zip(losses, weights))

    @torch.no_grad()
    def sampled_frames(
        self,
        input_ids: Tensor,
        modality_features: ModalityFeatures | None,
        attention_mask: Tensor | None = None,
        sample_ids: Sequence[Any] | None = None,
    ) -> dict[str, list[list[int]]]:
        """The frames each temporal sampler keeps for a batch of prompts, as the forward pass chooses them (same
        question context, same scores): modality name -> one list of frame indices (ascending) per row, the spans
        of a row one after the other (empty for a row without that modality). Runs the samplers only (no projector,
        no LLM) and reads no state another thread's forward could change. Empty for a model without a sampler."""
        from llavidal.model.hf.modeling_llavidal import frontend_inputs

        frontends = {spec.name: (spec, self.projectors[spec.name]) for spec in self.modalities
                     if isinstance(self.projectors[spec.name], VideoFrontend)
                     and self.projectors[spec.name].sampler is not None}
        chosen: dict[str, list[list[int]]] = {name: [] for name in frontends}
        if not frontends:
            return chosen
        question = text_context(self.embed_tokens(input_ids), input_ids, self.modality_token_ids(), None,
                                attention_mask)
        for name, (spec, frontend) in frontends.items():
            entries = (modality_features or {}).get(name)
            if isinstance(entries, Tensor):
                entries = list(entries)
            parameter = frontend.sampler.frame_proj.weight
            for row in range(input_ids.shape[0]):
                entry = None if entries is None else entries[row]
                indices: list[int] = []
                for value in frontend_inputs(spec, entry, row, sample_ids, SpliceError):
                    if value.dim() == 2:  # pooled (T + S, D) rows: the sampler reads the temporal rows
                        value = value[: frontend.design["temporal_rows"] or value.shape[0]]
                    frames = value.unsqueeze(0).to(device=parameter.device, dtype=parameter.dtype)
                    context = question.select([row])
                    output = frontend.sampler(frames, context.embeds.to(device=frames.device, dtype=frames.dtype),
                                              motion=None, hard=True, text_mask=context.mask.to(frames.device))
                    indices.extend(int(i) for i in output.indices[0].tolist())
                chosen[name].append(indices)
        return chosen

    def modality_token_ids(self) -> list[int]:
        """Ids of every modality token (patch, start, end of each modality)."""
        return sorted({int(i) for ids in self.token_ids.values() for i in ids.values()})

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(
        self, include_lora: bool = True, state_dict: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Projectors, modality token rows and (``include_lora``) LoRA adapters (``lora.`` prefix), detached
        on CPU. :meth:`save_pretrained` writes the adapters as a peft folder instead (``include_lora=False``).

        ``state_dict``: this model's full state dict as a sharded run gathers it (FSDP ``FULL_STATE_DICT``,
        DeepSpeed ZeRO-3's consolidated weights), read instead of the (sharded) parameters."""
        state: dict[str, Tensor] = {}
        if state_dict:
            state.update({k: v for k, v in state_dict.items() if k.startswith(("projectors.", "token_embeddings."))})
        else:
            for key, value in self.projectors.state_dict().items():
                state[f"projectors.{key}"] = value
            for name, value in self.token_embeddings.items():
                state[f"token_embeddings.{name}"] = value
        if state_dict:
            state.update({k: v for k, v in state_dict.items() if k.startswith(CONDITIONING_PREFIX)})
        elif self.conditioning is not None:
            for key, value in self.conditioning.state_dict().items():
                state[CONDITIONING_PREFIX + key] = value
        if self.has_lora and include_lora:
            from peft import get_peft_model_state_dict

            # Only the adapters: the resized embedding matrix is the base's plus mean rows, rebuilt on load.
            adapters = get_peft_model_state_dict(self.llm, state_dict=self._llm_state(state_dict),
                                                 save_embedding_layers=False)
            for key, value in adapters.items():
                state[LORA_PREFIX + key] = value
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    @staticmethod
    def _llm_state(state_dict: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
        """The ``llm.`` part of a full state dict of this model, keyed as ``self.llm.state_dict()``."""
        if not state_dict:
            return None
        return {k[len("llm."):]: v for k, v in state_dict.items() if k.startswith("llm.")}

    def save_pretrained(
        self, save_directory: str | os.PathLike, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write ``llavidal_config.json`` + ``trainable.safetensors`` (projectors + modality token rows),
        the LoRA adapters when used as a standard peft adapter (``adapter_config.json`` +
        ``adapter_model.safetensors``: ``PeftModel.from_pretrained(base_llm, folder)`` loads them), and
        ``llm/`` when fully fine-tuned. ``state_dict``: see :meth:`trainable_state_dict` (the Trainer passes
        the gathered weights of an FSDP / ZeRO-3 run)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        full_llm = not self.config.freeze_llm and not self.has_lora
        if full_llm:
            llm_state = self._llm_state(state_dict)
            self.base_llm.save_pretrained(folder / FULL_LLM_SUBDIR, safe_serialization=True,
                                          **({"state_dict": llm_state} if llm_state else {}))
            self.config.full_llm_subdir = FULL_LLM_SUBDIR
        write_weights(self.trainable_state_dict(include_lora=False, state_dict=state_dict), folder / TRAINABLE_NAME,
                      metadata={"producer": "llavidal"})
        if self.has_lora:
            self.save_lora_adapter(folder, state_dict=state_dict)
        else:  # a folder reused by a run without LoRA must not keep an earlier run's adapter
            for name in (ADAPTER_CONFIG_NAME, *ADAPTER_WEIGHTS_FILES):
                (folder / name).unlink(missing_ok=True)
        self.config.to_json_file(folder)
        return folder

    def save_lora_adapter(
        self, save_directory: str | os.PathLike, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write the LoRA adapters with peft's own ``save_pretrained`` (``adapter_config.json`` +
        ``adapter_model.safetensors``), ``base_model_name_or_path`` = the base LLM this model records.

        The adapters only: the embedding rows of the modality tokens live in ``trainable.safetensors``, so
        the adapter applies to the unchanged base LLM (its original vocabulary). peft's model card and any
        other file it writes stay out of the folder (it saves into a temporary folder, the two files are
        moved in, config last). ``state_dict``: see :meth:`trainable_state_dict`.
        """
        import tempfile

        if not self.has_lora:
            raise RuntimeError("this model has no LoRA adapters to save")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        adapter_name = getattr(self.llm, "active_adapter", "default")
        peft_config = self.llm.peft_config[adapter_name]
        base = str(self.config.base_model)
        if base and not os.path.isabs(base) and Path(base).expanduser().exists():
            base = str(Path(base).expanduser().resolve())  # a local folder, usable from any directory
        recorded = peft_config.base_model_name_or_path
        peft_config.base_model_name_or_path = base or recorded
        try:
            with tempfile.TemporaryDirectory(dir=folder, prefix=".peft-adapter-") as staging:
                self.llm.save_pretrained(
                    staging, safe_serialization=True, selected_adapters=[adapter_name],
                    save_embedding_layers=False,  # the resized matrix is the base's + our rows; never saved
                    **({"state_dict": self._llm_state(state_dict)} if state_dict else {}),
                )
                written = Path(staging) if adapter_name == "default" else Path(staging) / adapter_name
                os.replace(written / ADAPTER_WEIGHTS_NAME, folder / ADAPTER_WEIGHTS_NAME)
                os.replace(written / ADAPTER_CONFIG_NAME, folder / ADAPTER_CONFIG_NAME)
        finally:
            peft_config.base_model_name_or_path = recorded
        (folder / "adapter_model.bin").unlink(missing_ok=True)  # never two adapters in one folder
        return folder

    def load_trainable(self, path: str | os.PathLike, strict: bool = False) -> LoadReport:
        """Load our ``trainable.safetensors`` or an upstream ``mm_projector.bin`` (file or folder).

        Upstream keys (``[model.]mm_projector.*``, ``mm_projector_forpose.*``,
        ``mm_projector_forobject.*``, ``embed_tokens.weight`` = the full embedding matrix, from which
        the rows of this model's modality tokens are taken by id) are mapped to our modules. Weights of
        modalities this model lacks are skipped (staged training merges all projectors). Keys that map
        to nothing, or shapes that differ, raise a ``ValueError`` listing them; parameters the file lacks
        are reported in the returned :class:`LoadReport` and raise only with ``strict=True``.
        LoRA adapters come from the peft adapter beside ``trainable.safetensors`` (``adapter_config.json`` +
        ``adapter_model.safetensors``) or, in folders written before that, from its ``lora.*`` keys.
        """
        file = resolve_trainable_file(path)
        state = read_weights(file)
        # LoRA adapters: a peft adapter beside the file (save_pretrained), or lora.* keys inside it (older
        # folders). A folder, or its trainable.safetensors, names both.
        given = Path(path).expanduser()
        folder = given if given.is_dir() else (file.parent if file.name == TRAINABLE_NAME else None)
        adapter = read_peft_adapter(folder) if folder is not None else {}
        source = str(file)
        if adapter:
            inside = [k for k in state if k.startswith(LORA_PREFIX)]
            if inside:
                logger.warning("%s: holds LoRA keys too; the peft adapter beside it (%s) is used", file,
                               folder / ADAPTER_WEIGHTS_NAME)
                state = {k: v for k, v in state.items() if not k.startswith(LORA_PREFIX)}
            state = {**state, **adapter}
            source = f"{file} + {folder / ADAPTER_CONFIG_NAME}"
        report = self.load_trainable_state_dict(state, source=source, strict=strict)
        full_llm = Path(path) / FULL_LLM_SUBDIR
        if Path(path).is_dir() and full_llm.is_dir() and not self.config.freeze_llm and not self.has_lora:
            self.load_full_llm(full_llm)  # resuming a full fine-tune: the LLM's weights are trainable too
            report.loaded.append(FULL_LLM_SUBDIR + "/*")
        return report

    def load_full_llm(self, folder: str | os.PathLike) -> None:
        """Load LLM weights saved by :meth:`save_pretrained` after full fine-tuning (``llm/``)."""
        state = read_weights(folder)
        result = self.llm.load_state_dict(state, strict=False)
        tied = self.llm.get_output_embeddings() is not None and (
            self.llm.get_output_embeddings().weight is self.llm.get_input_embeddings().weight
        )
        missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        # Tied copies (T5's encoder/decoder embed_tokens = shared) are saved once: loaded through their twin.
        every = dict(self.llm.named_parameters(remove_duplicate=False))
        loaded = {id(p) for name, p in every.items() if name in state}
        missing = [k for k in missing if k not in every or id(every[k]) not in loaded]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{folder}: LLM weights do not match this model (missing {missing[:10]}, unexpected "
                f"{list(result.unexpected_keys)[:10]}); was it saved from the same base model?"
            )

    def load_trainable_state_dict(
        self, state: Mapping[str, Tensor], source: str = "<state dict>", strict: bool = False
    ) -> LoadReport:
        """See :meth:`load_trainable`; ``state`` may mix our and upstream key layouts (see
        :mod:`llavidal.model.weights`)."""
        conditioning = {k[len(CONDITIONING_PREFIX):]: v for k, v in state.items() if k.startswith(CONDITIONING_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(CONDITIONING_PREFIX)}
        if conditioning and self.conditioning is None:
            raise ValueError(f"{source}: holds video conditioning weights (conditioning.*) but this model has no "
                             "video_conditioning; build it with the same video_conditioning (load_pretrained reads it "
                             "from llavidal_config.json)")
        canonical = canonicalize(state, self.modalities)
        projector_state = dict(self.projectors.state_dict())
        _frontend_keys(canonical, projector_state, self.projectors)
        plan = plan_load(  # raises before anything is copied, so a bad file leaves the model unchanged
            canonical, projector_state=projector_state, token_ids=self.token_ids, hidden_size=self.config.hidden_size,
            projector_types={s.name: s.projector_type for s in self.modalities}, source=source,
        )
        if canonical.lora and not self.has_lora:
            raise ValueError(
                f"{source}: holds LoRA adapter weights ({len(canonical.lora)} tensors) but this model has no LoRA; "
                "build it with lora=... (load_pretrained does this from llavidal_config.json)"
            )
        report = LoadReport(path=source, skipped_modalities=canonical.skipped_modalities)
        with torch.no_grad():
            modules = dict(self.projectors.named_parameters())
            modules.update(dict(self.projectors.named_buffers()))
            for key, value in plan.projectors.items():
                modules[key].copy_(value.to(modules[key].dtype))
                report.loaded.append(f"projectors.{key}")
            for name, rows in plan.token_rows.items():
                self.token_embeddings[name].copy_(rows.to(self.token_embeddings[name].dtype))
                report.loaded.append(f"token_embeddings.{name}")
        if canonical.lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.llm, canonical.lora)
            bad = list(getattr(result, "unexpected_keys", []) or [])
            if bad:
                raise ValueError(f"{source}: LoRA keys that match no adapter of this model: {bad[:20]}")
            report.loaded.extend(LORA_PREFIX + k for k in canonical.lora)
        if conditioning:
            result = self.conditioning.load_state_dict(conditioning, strict=False)
            if result.unexpected_keys:
                raise ValueError(f"{source}: conditioning keys that match nothing in this model's video conditioning: "
                                 f"{list(result.unexpected_keys)[:20]}")
            report.loaded.extend(CONDITIONING_PREFIX + k for k in conditioning)
        wanted = [f"projectors.{k}" for k in projector_state] + [f"token_embeddings.{n}" for n in self.token_ids]
        if self.conditioning is not None:
            wanted += [CONDITIONING_PREFIX + k for k in self.conditioning.state_dict()]
        report.missing = [k for k in wanted if k not in report.loaded]
        if self.has_lora and not canonical.lora:
            report.missing.append(LORA_PREFIX + "*")
        if report.missing:
            message = f"{source}: no weights for {report.missing} (they keep their current values)"
            if strict:
                raise ValueError(message + "; pass a file that holds them, or strict=False")
            if report.missing == [LORA_PREFIX + "*"]:
                # a projector-only file (upstream mm_projector.bin, `llavidal align`): the expected start of LoRA
                logger.info("%s: projectors and token rows loaded; the LoRA adapters start fresh", source)
            else:
                logger.warning(message)
        if report.skipped_modalities:
            logger.info("%s: skipped weights of modalities not in this model: %s", source, report.skipped_modalities)
        return report

    def write_token_rows_into_llm(self) -> None:
        """Copy the modality token rows into the LLM's input embedding matrix (used by export).

        When input and output embeddings are tied this also changes the output rows of these tokens.
        """
        weight = self.base_llm.get_input_embeddings().weight
        with torch.no_grad():
            for name, ids in self.token_ids.items():
                index = torch.tensor([ids[r] for r in TOKEN_ROLES], device=weight.device)
                weight[index] = self.token_embeddings[name].to(device=weight.device, dtype=weight.dtype)

