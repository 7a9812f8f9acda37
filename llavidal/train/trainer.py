"""The HF Trainer, changed only where a LLAVIDAL model differs from a ``PreTrainedModel``.

* saving (final and every checkpoint) writes the trainable weights as ``trainable.safetensors`` and
  ``llavidal_config.json`` through ``LlavidalModel.save_pretrained``, never the frozen LLM;
* resuming loads them back from ``checkpoint-*`` (``load_trainable`` also restores a fully fine-tuned
  LLM from its ``llm/`` folder; optimizer, scheduler, RNG and trainer state are the Trainer's own);
* ``group_by_length`` takes lengths from the dataset (known without reading any feature file);
* the loss history is appended to ``loss_history.jsonl`` in the output folder as training goes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from llavidal.model.config import CONFIG_NAME

logger = logging.getLogger(__name__)

TRAINING_ARGS_JSON = "training_args.json"
LOSS_HISTORY = "loss_history.jsonl"


class LossHistoryCallback(TrainerCallback):
    """Append every log entry that carries a loss to ``{output_dir}/loss_history.jsonl`` (main process)."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - Trainer callback API
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        entry = {"step": state.global_step, "epoch": state.epoch, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, LOSS_HISTORY), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


class LlavidalTrainer(Trainer):
    """Trainer for :class:`~llavidal.model.llavidal_model.LlavidalModel` (see the module docstring)."""

    def __init__(self, *args: Any, extra_config: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_config = dict(extra_config or {})
        self.add_callback(LossHistoryCallback())

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self._unwrapped()
        model.config.extra = {**model.config.extra, **self.extra_config}
        model.save_pretrained(output_dir)
        with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as handle:
            handle.write(self.args.to_json_string())
        logger.info("saved trainable weights and %s to %s", CONFIG_NAME, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model if model is not None else self._unwrapped()
        if not os.path.isfile(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            raise FileNotFoundError(
                f"{resume_from_checkpoint}: no {CONFIG_NAME}; not a checkpoint written by llavidal training. "
                "Delete it or train into a new --output_dir"
            )
        report = model.load_trainable(resume_from_checkpoint, strict=True)
        # (load_trainable also restores a fully fine-tuned LLM from the checkpoint's llm/ folder)
        logger.info("resumed trainable weights from %s (%d entries)", resume_from_checkpoint, len(report.loaded))

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint:
            self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _get_train_sampler(self, *args: Any, **kwargs: Any):
        dataset = args[0] if args else kwargs.get("train_dataset", self.train_dataset)
        dataset = dataset if dataset is not None else self.train_dataset
        wants_grouping = getattr(self.args, "group_by_length", False) or (
            getattr(self.args, "train_sampling_strategy", "") == "group_by_length"
        )
        if wants_grouping and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                dataset=dataset,
                lengths=dataset.lengths,
            )
        return super()._get_train_sampler(*args, **kwargs)
