"""Training arguments: every flag of the upstream LLAVIDAL / Video-ChatGPT command, plus ours.

Three dataclasses parsed by :mod:`llavidal.config`: :class:`ModelArguments`, :class:`DataArguments` and
:class:`TrainingArguments` (transformers' own, extended). ``--config file.yaml``, ``experiment=NAME`` and
``key=value`` supply any of their fields; the command line wins over files.

Compatibility notes:

* ``--evaluation_strategy`` (renamed ``eval_strategy`` by transformers) and ``--warmup_ratio`` (folded into
  ``warmup_steps`` by transformers 5) are accepted and mapped;
* ``--mm_use_vid_start_end`` and ``--lazy_preprocess`` are accepted: spans always carry start/end tokens
  and data are always read lazily, as the upstream command asks;
* without CUDA, ``--bf16``/``--fp16``/``--tf32`` degrade to fp32 with one warning, and torchrun runs
  DDP on the CPU over gloo;
* ``--fsdp`` without CUDA is refused (accelerate applies FSDP only on accelerators: on CPU the run would be
  plain DDP while the flag says otherwise), as is ``--fsdp_config`` without ``--fsdp``; ``--deepspeed FILE``
  without the deepspeed package, or with a file that is not JSON, is refused naming the fix. Shipped
  configs: ``configs/fsdp/``, ``configs/deepspeed/``, ``configs/accelerate/``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from llavidal.constants import DEFAULT_POSE_TOKENS, DEFAULT_VIDEO_TOKENS, OBJECT_TOKENS_PER_OBJECT
from llavidal.data.feature_store import FeatureManifest, check_manifest_compatible
from llavidal.model.hf.frontends import SAMPLER_TRAINING, uses_frontend
from llavidal.model.modality import PROJECTOR_TYPES, ModalityRegistry
from llavidal.utils import dist

logger = logging.getLogger(__name__)

UPSTREAM_DIMS = {"video": 1024, "pose": 216, "object": 512}
"""Feature dims of the upstream extractors (CLIP ViT-L/14, PoseCLIP, object CLIP)."""
MODALITY_NAMES = ("video", "pose", "object")
_TRANSFORMERS_FIELDS = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}


@dataclass
class ModelArguments:
    """The base LLM and the modality model around it."""

    model_name_or_path: str = field(
        metadata={"help": "Base causal LM: a local folder (LLaMA/Vicuna, LLaVA-7B-Lightening, Qwen2, SmolLM2...)."}
    )
    version: str = field(
        default="v1",
        metadata={"help": "Conversation template: v1 (Vicuna v1.1, upstream), llavidal_v1, or chat (the tokenizer's own)."},
    )
    tune_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "Freeze the LLM and train only the projectors and the new token rows (upstream recipe). "
                          "False without --lora_enable trains the whole LLM."},
    )
    mm_use_vid_start_end: bool = field(
        default=False,
        metadata={"help": "Accepted for upstream compatibility: spans always carry <vid_start>/<vid_end>-style tokens."},
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None,
        metadata={"help": "Projector/token weights to start from: our trainable.safetensors (or its folder) or an "
                          "upstream mm_projector.bin (staged recipe)."},
    )
    mm_projector_type: str = field(
        default="linear", metadata={"help": f"Projector of every modality: one of {PROJECTOR_TYPES}."}
    )
    use_modality_string_prefix: bool = field(
        default=False, metadata={"help": "Write ' video: ', ' pose: ', ' object: ' before each span (upstream option)."}
    )
    video_tokens: int | None = field(
        default=None,
        metadata={"help": f"Video feature rows per sample (default: the folder's manifest, else {DEFAULT_VIDEO_TOKENS})."},
    )
    video_feature_dim: int | None = field(
        default=None, metadata={"help": "Video feature dim (default: the folder's manifest, else 1024)."}
    )
    pose_tokens: int | None = field(
        default=None,
        metadata={"help": f"Pose feature rows per sample (default: the folder's manifest, else {DEFAULT_POSE_TOKENS})."},
    )
    pose_feature_dim: int | None = field(
        default=None, metadata={"help": "Pose feature dim (default: the folder's manifest, else 216)."}
    )
    object_tokens: int | None = field(
        default=None,
        metadata={"help": f"Tokens per object (default: the folder's manifest, else {OBJECT_TOKENS_PER_OBJECT})."},
    )
    object_feature_dim: int | None = field(
        default=None, metadata={"help": "Object feature dim (default: the folder's manifest, else 512)."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel: eager, sdpa, flash_attention_2 (train_mem.py picks the fastest exact one)."},
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the LLM weights (float32, bfloat16, float16). Default: bfloat16/float16 with "
                          "--bf16/--fp16 when the LLM is frozen or LoRA-tuned, else float32. Trainable weights stay float32."},
    )
    lora_enable: bool = field(default=False, metadata={"help": "Add LoRA adapters to the LLM (peft); the base stays frozen."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "Comma-separated names of the LLM layers that get adapters, or all-linear."},
    )
    lora_bias: str = field(default="none", metadata={"help": "peft bias option: none, all, lora_only."})
    # Flags of Video-ChatGPT's training script that its README command does not show.
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Video-ChatGPT's flag: freeze the LLM (here: the same as --tune_mm_mlp_adapter True)."}
    )
    video_token_len: int | None = field(
        default=None, metadata={"help": "Video-ChatGPT's name for --video_tokens (356 upstream)."}
    )
    freeze_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "Video-ChatGPT's flag to keep the projector frozen; not supported (refused when True)."}
    )
    is_multimodal: bool = field(default=False, metadata={"help": "Accepted for Video-ChatGPT compatibility (always multimodal)."})
    sep_video_conv_front: bool = field(default=False, metadata={"help": "Accepted for Video-ChatGPT compatibility (no effect)."})
    frame_aspect_ratio: str | None = field(default=None, metadata={"help": "Accepted for Video-ChatGPT compatibility (no effect)."})
    force_fsdp: bool = field(default=False, metadata={"help": "Accepted for Video-ChatGPT compatibility; use --fsdp."})
    # Video-token designs (llavidal.model.designs: one table of presets; recorded with the weights).
    video_design: str | None = field(
        default=None,
        metadata={"help": "How video becomes LLM input: upstream (default: pooled rows + projector), pllava (adaptive "
                          "3D pooling of per-frame grids), pe (positional encodings), sampler (question-guided "
                          "temporal sampler), qformer (Q-Former projector), xattn (gated cross-attention in the LLM), "
                          "inject (per-layer injection). The flags below override a preset's values."},
    )
    video_pool: str | None = field(
        default=None, metadata={"help": "Adaptive pooling of per-frame grids to T,h,w tokens (PLLaVA: 16,12,12)."}
    )
    video_pool_position: str | None = field(
        default=None, metadata={"help": "Pool 'after' the projector (PLLaVA) or 'before' it."}
    )
    video_pe: str | None = field(
        default=None, metadata={"help": "Positional encodings added to video features: none, learned or sinusoidal."}
    )
    video_projector: str | None = field(
        default=None, metadata={"help": "Projector of the video design: linear, mlp2x_gelu or qformer (default: --mm_projector_type)."}
    )
    qformer_path: str | None = field(
        default=None,
        metadata={"help": "Q-Former weights to start from (a saved Blip2QFormerModel or a BLIP-2/InstructBLIP folder); "
                          "implies the qformer projector."},
    )
    qformer_queries: int | None = field(default=None, metadata={"help": "Learned queries of the Q-Former projector (32)."})
    sampler_k: int | None = field(
        default=None, metadata={"help": "Frames the temporal sampler keeps (adds the sampler to the design; 8 in the preset)."}
    )
    sampler_motion: str | None = field(
        default=None, metadata={"help": "Motion signal of the temporal sampler: diff (feature differences; the preset) or none. "
                                  "(flow is refused: feature files do not carry optical flow yet.)"}
    )
    sampler_train: str | None = field(
        default=None,
        metadata={"help": "How the temporal sampler learns: straight_through (end to end, no extra loss; the preset) or "
                          "pseudo (LSTP: an auxiliary loss towards per-frame relevance targets, --sampler_loss_weight)."},
    )
    video_conditioning: str | None = field(
        default=None, metadata={"help": "Video conditioning inside the LLM: xattn, inject or none."}
    )
    conditioning_layers: str | None = field(
        default=None, metadata={"help": "Comma-separated decoder layers that get video conditioning (default: the mode's)."}
    )
    video_conditioning_splice: bool | None = field(
        default=None,
        metadata={"help": "With video conditioning, keep the video span in the prompt too (default True); False: the "
                          "video reaches the LLM only through the conditioning."},
    )

    def __post_init__(self) -> None:
        if self.freeze_backbone and not self.lora_enable:
            self.tune_mm_mlp_adapter = True
        if self.video_token_len is not None and self.video_tokens is None:
            self.video_tokens = self.video_token_len
        if self.freeze_mm_mlp_adapter:
            raise ValueError("--freeze_mm_mlp_adapter True is not supported: the projectors are what training trains "
                             "here; train the LLM with --lora_enable True and a --pretrain_mm_mlp_adapter instead")
        if self.mm_projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"--mm_projector_type {self.mm_projector_type!r}: use one of {PROJECTOR_TYPES}")
        for name in ("video_tokens", "pose_tokens", "object_tokens", "video_feature_dim", "pose_feature_dim", "object_feature_dim",
                     "qformer_queries", "sampler_k"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}")
        self.video_design_settings()  # refuse an unknown preset or a malformed --video_pool before anything loads

    def video_design_settings(self) -> tuple[dict | None, dict | None]:
        """(the video modality's design dict or None, the model's video_conditioning or None), from
        ``--video_design`` and the flags that override it (:func:`llavidal.model.designs.resolve_design`)."""
        from llavidal.model.designs import resolve_design

        design, conditioning = resolve_design(
            self.video_design, pool=self.video_pool, pool_position=self.video_pool_position, positional=self.video_pe,
            projector=self.video_projector, qformer_path=self.qformer_path, num_queries=self.qformer_queries,
            sampler_k=self.sampler_k, sampler_motion=self.sampler_motion, conditioning=self.video_conditioning,
            conditioning_layers=self.conditioning_layers, conditioning_splice=self.video_conditioning_splice,
        )
        if self.sampler_train:
            if self.sampler_train not in SAMPLER_TRAINING:
                raise ValueError(f"--sampler_train {self.sampler_train!r}: one of {', '.join(SAMPLER_TRAINING)}")
            if not design or not design.get("sampler"):
                raise ValueError("--sampler_train needs a temporal sampler: add --video_design sampler (or --sampler_k K)")
            design["sampler"] = dict(design["sampler"], train=self.sampler_train)
        return design, conditioning

    def lora_settings(self) -> dict | None:
        if not self.lora_enable:
            return None
        return {
            "r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
            "target_modules": self.lora_target_modules, "bias": self.lora_bias,
        }


@dataclass
class DataArguments:
    """Instruction records and the feature folders (only modalities with a folder are used)."""

    data_path: str | None = field(default=None, metadata={"help": (
        "Training records: a JSON list or JSONL of {id, video, pose?, object?, conversations}; LLaVA-format image "
        "records {id, image, conversations} with <image> (read from --image_folder) and text-only records may be mixed in.")})
    data_mixture: str | None = field(default=None, metadata={"help": (
        "Several record files in one run, with sampling weights: PATH:WEIGHT[:KEY=DIR...],... e.g. "
        "video.json:1,images.json:0.5:image=feats/coco,text.json:0.2. WEIGHT is the share of the file's samples drawn "
        "per epoch (1 each once, 0.5 a seeded half, 2 each twice); KEY=DIR (video, image, pose, object) points that "
        "file at its own feature folder, else the global --video_folder / --image_folder / ... are used. Replaces "
        "--data_path.")})
    image_folder: str | None = field(default=None, metadata={"help": (
        "Folder of image features for records with an 'image' field (`llavidal extract video` on the images: each "
        "a 1-frame video through the video projector; 000123.jpg -> 000123.safetensors).")})
    video_folder: str | None = field(default=None, metadata={"help": "Folder of video features ({id}.pkl / .safetensors / .npy)."})
    pose_folder: str | None = field(default=None, metadata={"help": "Folder of pose features ({id}_pose.pkl ...); enables the pose modality."})
    object_folder: str | None = field(default=None, metadata={"help": "Folder of object features ({id}_object.pkl ...); enables the object modality."})
    lazy_preprocess: bool = field(default=True, metadata={"help": "Accepted for upstream compatibility; data are always read lazily."})
    video_mask_prob: float = field(default=0.0, metadata={"help": "Probability of zeroing a sample's video features (modality dropout)."})
    pose_mask_prob: float = field(default=0.0, metadata={"help": "Probability of zeroing a sample's pose features."})
    object_mask_prob: float = field(default=0.0, metadata={"help": "Probability of zeroing a sample's object features."})
    strict_features: bool = field(
        default=False,
        metadata={"help": "A missing feature file, or one holding NaN/Inf or non-float values, is an error naming the file "
                          "and record (default: zeros for a missing file, the sample skipped for bad values; both counted "
                          "and warned about)."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Override the template's system prompt."})
    packing: bool = field(default=False, metadata={"help": "Pack several samples per row (needs llavidal.data.packing)."})
    packing_max_length: int | None = field(
        default=None, metadata={"help": "Tokens per packed row (default: --model_max_length)."}
    )

    def __post_init__(self) -> None:
        for name in ("video_mask_prob", "pose_mask_prob", "object_mask_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name} must be in [0, 1], got {value}")
        if not any(getattr(self, f"{name}_folder") for name in MODALITY_NAMES) and not self.image_folder:
            raise ValueError("give at least one feature folder: --video_folder, --image_folder, --pose_folder or --object_folder")
        if bool(self.data_path) == bool(self.data_mixture):
            raise ValueError("give the training records with --data_path FILE or --data_mixture FILE:WEIGHT,... (one of them)")
        if self.data_mixture:
            from llavidal.data.mixture import parse_data_mixture

            parse_data_mixture(self.data_mixture)  # refuse a malformed mixture before anything loads

    def feature_folders(self) -> dict[str, str]:
        """Modality -> feature folder; with only --image_folder (image-only training) the video modality's folder
        is the image features'."""
        folders = {name: str(getattr(self, f"{name}_folder")) for name in MODALITY_NAMES if getattr(self, f"{name}_folder")}
        if self.image_folder and "video" not in folders:
            folders = {"video": str(self.image_folder), **folders}
        return folders

    def mask_probs(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_mask_prob") for name in MODALITY_NAMES}


_CPU_PRECISION_WARNED = False


def projector_learning_rates(value: str | float | None) -> dict[str, float]:
    """``--mm_projector_lr`` as {modality: lr}; ``"*"`` stands for every projector ("2e-5" -> {"*": 2e-5},
    "object=0,video=2e-5" -> {"object": 0.0, "video": 2e-5}; None or "" -> {})."""
    if value is None or str(value).strip() == "":
        return {}
    text = str(value).replace(" ", "")
    pairs = [part.split("=", 1) if "=" in part else ["*", part] for part in text.split(",") if part]
    rates: dict[str, float] = {}
    for name, rate in pairs:
        try:
            number = float(rate)
        except ValueError:
            number = float("nan")
        if not name or name in rates or not number >= 0:
            raise ValueError(f"--mm_projector_lr {value!r}: write one learning rate >= 0 ('2e-5') or MODALITY=LR pairs, "
                             "each modality once ('object=0,video=2e-5')")
        rates[name] = number
    if "*" in rates and len(rates) > 1:
        raise ValueError(f"--mm_projector_lr {value!r}: give one rate for every projector or MODALITY=LR pairs, not both")
    return rates


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """transformers' TrainingArguments plus the upstream extras (see the module docstring)."""

    model_max_length: int = field(
        default=2048, metadata={"help": "Longest sample in tokens; longer ones are truncated without cutting a modality span."}
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Old name of --eval_strategy (upstream command); mapped to it."}
    )
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of the steps used for linear warm-up (upstream command)."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch samples of similar length together (lengths known without reading features)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Accepted for upstream compatibility (unused: no hub)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: items carry modality features the model reads by name."}
    )
    sampler_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the temporal sampler's pseudo-label loss (designs whose sampler has train: pseudo, "
                          "--sampler_train pseudo); logged as sampler_loss. 0 turns it off."},
    )
    mm_projector_lr: str | None = field(
        default=None,
        metadata={"help": "Learning rate of the projectors (LLaVA-1.5's flag): one value for every projector, or "
                          "MODALITY=LR pairs ('object=0,video=2e-5'; the projectors not named keep --learning_rate). "
                          "0 keeps a projector as it starts, e.g. aligned by 'llavidal align' (--pretrain_mm_mlp_adapter)."},
    )
    train_gradient_checkpointing: bool = field(
        default=False, init=False, metadata={"help": "Set from --gradient_checkpointing; applied by train.py to the LLM."}
    )

    def __post_init__(self) -> None:
        if self.mm_projector_lr is not None:
            self.mm_projector_lr = str(self.mm_projector_lr)
            projector_learning_rates(self.mm_projector_lr)  # refuse a malformed value before anything loads
        if not self.sampler_loss_weight >= 0:
            raise ValueError(f"--sampler_loss_weight must be >= 0, got {self.sampler_loss_weight}")
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None and "warmup_ratio" not in _TRANSFORMERS_FIELDS:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio  # transformers 5: a float < 1 is a ratio
        if self.group_by_length and "train_sampling_strategy" in _TRANSFORMERS_FIELDS:
            self.train_sampling_strategy = "group_by_length"
        # train.py enables checkpointing on the LLM itself (the wrapper is not a PreTrainedModel).
        checkpointing = bool(self.gradient_checkpointing) or bool(getattr(self, "activation_checkpointing", False))
        self.train_gradient_checkpointing = checkpointing
        self.gradient_checkpointing = False
        if "activation_checkpointing" in _TRANSFORMERS_FIELDS:
            self.activation_checkpointing = False
        self._check_distributed_flags()
        if not torch.cuda.is_available():
            self._degrade_precision_without_cuda()
            self.dataloader_pin_memory = False  # nothing to pin for
            if dist.world_size() > 1:
                # torchrun on CPU: accelerate treats the run as distributed (DDP over gloo; NCCL needs
                # CUDA) only with use_cpu; without it every rank would train alone, unsynchronised.
                self.use_cpu = True
                if self.ddp_backend is None:
                    self.ddp_backend = "gloo"
        super().__post_init__()

    def _check_distributed_flags(self) -> None:
        """Refuse sharding flags that would not do what they say (one line naming the fix)."""
        if self.fsdp_config and not self.fsdp:
            raise ValueError(f"--fsdp_config {self.fsdp_config} has no effect without --fsdp; add --fsdp (FSDP needs "
                             "CUDA devices) or drop --fsdp_config")
        if self.fsdp and not torch.cuda.is_available():
            raise ValueError(
                f"--fsdp {self.fsdp!r}: no CUDA device, and accelerate shards with FSDP only on accelerators (on CPU the "
                "run would silently be plain DDP); run on CUDA devices (e.g. --fsdp --fsdp_config "
                "configs/fsdp/fsdp_full_shard.json), or drop --fsdp to train with DDP over gloo under torchrun"
            )
        if isinstance(self.fsdp_config, str):
            _read_json_config(self.fsdp_config, "--fsdp_config")
        if self.deepspeed:
            if isinstance(self.deepspeed, str):
                _read_json_config(self.deepspeed, "--deepspeed")
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise ValueError(
                    f"--deepspeed {self.deepspeed}: the deepspeed package is not installed; pip install "
                    "'llavidal[deepspeed]' on a CUDA machine, or drop --deepspeed (torchrun alone trains with DDP)"
                )

    def _degrade_precision_without_cuda(self) -> None:
        global _CPU_PRECISION_WARNED
        asked = [name for name in ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval") if getattr(self, name, False)]
        if self.tf32:
            asked.append("tf32")
        import os

        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched in ("bf16", "fp16"):  # accelerate launch's mixed_precision: CPU autocast, which fp16 lacks
            os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
        if not asked and launched not in ("bf16", "fp16"):
            return
        for name in ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval"):
            if hasattr(self, name):
                setattr(self, name, False)
        self.tf32 = None
        if not _CPU_PRECISION_WARNED and dist.is_main_process():
            logger.warning(
                "no CUDA device: %s ignored, training in float32 on CPU",
                ", ".join([f"--{n} True" for n in asked]
                          + ([f"accelerate's mixed_precision: {launched}"] if launched in ("bf16", "fp16") else [])),
            )
        _CPU_PRECISION_WARNED = True


def _read_json_config(path: str, flag: str) -> dict:
    """A JSON config file given to ``flag``, or a ValueError naming the file and what is wrong."""
    import json
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; the shipped ones are in configs/fsdp/ and configs/deepspeed/")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path}: not valid JSON ({err}); fix the file or use one from configs/") from err
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path}: holds a {type(data).__name__}, not a JSON object of settings")
    return data


# ---------------------------------------------------------------------------- parsing

TRAIN_ARGUMENTS = (ModelArguments, DataArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None, types: tuple = TRAIN_ARGUMENTS, prog: str = "llavidal train") -> tuple:
    """Parse flags, ``--config file.yaml``, ``key=value`` and ``experiment=NAME`` (see :mod:`llavidal.config`)
    into ``types`` (default: ModelArguments, DataArguments, TrainingArguments)."""
    from llavidal.config import parse

    return parse(types, argv, prog=prog, description=__doc__.split("\n\n")[0])


# ---------------------------------------------------------------------------- modality registry

def build_registry(model_args: ModelArguments, data_args: DataArguments) -> ModalityRegistry:
    """The modalities of the folders given, with dims from flags, else manifests, else upstream defaults.

    A flag that disagrees with a folder's manifest is refused here, before the model is built.
    """
    folders = data_args.feature_folders()
    dims: dict[str, Any] = {"projector_type": model_args.mm_projector_type}
    defaults = {"video": DEFAULT_VIDEO_TOKENS, "pose": DEFAULT_POSE_TOKENS, "object": OBJECT_TOKENS_PER_OBJECT}
    for name in MODALITY_NAMES:
        manifest = FeatureManifest.load(folders[name]) if name in folders else None
        tokens = getattr(model_args, f"{name}_tokens")
        feature_dim = getattr(model_args, f"{name}_feature_dim")
        if manifest is not None:
            if feature_dim is None:
                feature_dim = int(manifest.feature_dim)
            if tokens is None and manifest.shape:
                if name == "object":
                    tokens = int(manifest.shape[1]) if len(manifest.shape) == 3 and manifest.shape[1] > 0 else None
                elif manifest.shape[0] > 0:
                    tokens = int(manifest.shape[0])
        feature_dim = feature_dim or UPSTREAM_DIMS[name]
        tokens = tokens or defaults[name]
        if name in folders:
            check_manifest_compatible(folders[name], name, feature_dim, tokens if name != "object" else None)
        dims[f"{name}_dim"] = feature_dim
        dims["object_group" if name == "object" else f"{name}_tokens"] = tokens
    registry = ModalityRegistry.default(list(folders), **dims)
    design, conditioning = model_args.video_design_settings()
    if (design or conditioning) and "video" not in registry:
        raise ValueError(f"--video_design {model_args.video_design or ''} / the video design flags need video features: "
                         "pass --video_folder")
    if design:
        registry = with_video_design(registry, design, FeatureManifest.load(folders["video"]))
        if data_args.packing and uses_frontend(registry["video"].design):
            # a packed row concatenates its samples' features: their frames would become one clip
            raise ValueError("--packing cannot be used with a video design that reads whole clips (pooling, "
                             "positional encodings, sampler, Q-Former); train without --packing")
    if data_args.packing and conditioning:
        # the conditioning blocks read one video per row: a packed row's samples would share one
        raise ValueError(f"--packing cannot be used with video conditioning inside the LLM "
                         f"({conditioning.get('mode', 'conditioning')}: one video per row); train without --packing")
    return registry


def with_video_design(registry: ModalityRegistry, design: dict, manifest: FeatureManifest | None = None) -> ModalityRegistry:
    """``registry`` with ``design`` on its video modality; what the folder's manifest says of the features' layout
    (per-frame grids ``(T, P, D)``: ``patches``; pooled rows: the recipe's ``temporal_tokens``) fills the design's
    ``patches`` / ``temporal_rows`` unless given."""
    design = dict(design)
    if manifest is not None and manifest.shape:
        if len(manifest.shape) == 3 and manifest.shape[1] > 0:
            design.setdefault("patches", int(manifest.shape[1]))
        recipe = manifest.recipe if isinstance(manifest.recipe, dict) else {}
        if len(manifest.shape) == 2 and recipe.get("temporal_tokens"):
            design.setdefault("temporal_rows", int(recipe["temporal_tokens"]))
    specs = dict(registry.specs)
    specs["video"] = dataclasses.replace(specs["video"], design=design)
    return ModalityRegistry(specs)


def describe_registry(registry: ModalityRegistry) -> str:
    parts = []
    for spec in registry:
        count = f"{spec.num_tokens} tokens" if not spec.variable else f"{spec.group_size} tokens per item"
        design = ""
        if spec.design:
            shown = {k: v for k, v in spec.design.items() if k in ("pool", "positional", "projector", "sampler", "splice")
                     and v not in (None, "none")}
            design = f", design {shown}"
        parts.append(f"{spec.name} ({count} x {spec.feature_dim}-d, {spec.projector_type}{design})")
    return ", ".join(parts)


def resolve_torch_dtype(model_args: ModelArguments, training_args: TrainingArguments) -> str:
    """dtype of the LLM weights: explicit, else 16-bit for a frozen / LoRA LLM under --bf16/--fp16."""
    if model_args.torch_dtype:
        return model_args.torch_dtype
    frozen = model_args.tune_mm_mlp_adapter or model_args.lora_enable
    if frozen and training_args.bf16:
        return "bfloat16"
    if frozen and training_args.fp16:
        return "float16"
    return "float32"
