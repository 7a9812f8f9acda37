"""The HF Trainer, changed only where a LLAVIDAL model differs from a ``PreTrainedModel``.

* saving (final and every checkpoint) writes the trainable weights as ``trainable.safetensors`` and
  ``llavidal_config.json`` through ``LlavidalModel.save_pretrained``, never the frozen LLM; LoRA adapters
  as a standard peft adapter beside them (``adapter_config.json`` + ``adapter_model.safetensors``); under
  FSDP (``FULL_STATE_DICT``) or DeepSpeed ZeRO-3 from the weights the Trainer gathered;
* resuming loads them back from ``checkpoint-*`` (``load_trainable`` also restores a fully fine-tuned
  LLM from its ``llm/`` folder; optimizer, scheduler, RNG and trainer state are the Trainer's own);
* ``group_by_length`` takes lengths from the dataset (known without reading any feature file);
* the loss history is appended to ``loss_history.jsonl`` in the output folder as training goes (a resumed
  run first drops the rows after its checkpoint's step, so no step appears twice);
* a temporal sampler trained with pseudo-labels (``train: pseudo``) adds its auxiliary loss to the model's loss
  (weight ``--sampler_loss_weight``; one weight per optimizer step whatever the gradient accumulation), and its
  mean over the logging interval is logged apart as ``sampler_loss`` (also in ``loss_history.jsonl``);
* a non-finite loss or gradient norm stops training before the optimizer step, with the step and the
  batch's sample ids (:class:`NonFiniteTrainingError`): nothing is saved from that state, so the last
  checkpoint stays the last good one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from llavidal.model.config import CONFIG_NAME
from llavidal.utils.io import append_jsonl, atomic_write_text

logger = logging.getLogger(__name__)

TRAINING_ARGS_JSON = "training_args.json"
LOSS_HISTORY = "loss_history.jsonl"


class NonFiniteTrainingError(ValueError):
    """The loss or the gradient norm of a step is NaN or Inf; training stopped before the optimizer step."""


class LossHistoryCallback(TrainerCallback):
    """Append every log entry that carries a loss to ``{output_dir}/loss_history.jsonl`` (main process).

    At the start of training, rows of steps after the state training starts from (a resumed checkpoint's
    ``global_step``, 0 for a fresh run) are dropped: they were logged by a run that was stopped before its
    next checkpoint and are about to be logged again.
    """

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D401 - Trainer callback API
        if not state.is_world_process_zero:
            return
        path = os.path.join(args.output_dir, LOSS_HISTORY)
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
        kept = []
        for line in lines:
            try:
                step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                continue  # a torn line from a killed run
            if isinstance(step, int) and step <= state.global_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(kept))
            logger.info("%s: dropped %d rows after step %d (logged again by this run)", path, len(lines) - len(kept),
                        state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - Trainer callback API
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        entry = {"step": state.global_step, "epoch": state.epoch, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        append_jsonl(os.path.join(args.output_dir, LOSS_HISTORY), entry)


def _flat_ids(sample_ids: Any) -> list[str]:
    """The sample ids of a batch (packed rows carry a tuple of ids each)."""
    ids: list[str] = []
    for value in sample_ids or []:
        if isinstance(value, (list, tuple)):
            ids.extend(str(v) for v in value)
        else:
            ids.append(str(value))
    return ids


def split_projector_groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module, rates: dict[str, float]) -> None:
    """Move each projector named in ``rates`` (``"*"``: every one) out of the optimizer's parameter groups into
    groups of its own learning rate (weight decay kept per group). Before the first step: the state is empty."""
    projectors = getattr(model, "projectors", None)
    names = list(projectors.keys()) if projectors is not None else []
    unknown = sorted(set(rates) - set(names) - {"*"})
    if unknown:
        raise ValueError(f"--mm_projector_lr names {unknown}, but the model's projectors are {names}")
    owner: dict[int, str] = {}
    for name in names:
        if name in rates or "*" in rates:
            for param in projectors[name].parameters():
                owner[id(param)] = name
    groups = []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        rest = [p for p in group["params"] if id(p) not in owner]
        if rest:
            groups.append({**settings, "params": rest})
        for name in names:
            mine = [p for p in group["params"] if owner.get(id(p)) == name]
            if mine:
                rate = rates.get(name, rates.get("*"))
                groups.append({**settings, "params": mine, "lr": rate, "initial_lr": rate, "projector": name})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    logger.info("projector learning rates: %s", {g["projector"]: g["lr"] for g in groups if "projector" in g})


class LlavidalTrainer(Trainer):
    """Trainer for :class:`~llavidal.model.llavidal_model.LlavidalModel` (see the module docstring)."""

    def __init__(self, *args: Any, extra_config: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_config = dict(extra_config or {})
        self.add_callback(LossHistoryCallback())
        self._step_sample_ids: list[str] = []
        """Ids of the samples of the optimizer step in progress (all its micro-batches, this rank)."""
        self._sampler_losses: list[float] = []
        """The sampler's pseudo-label loss of each micro-batch since the last log (this rank)."""
        weight = getattr(self.args, "sampler_loss_weight", None)
        if weight is not None and hasattr(self.model, "sampler_loss_weight"):
            self.model.sampler_loss_weight = float(weight)

    # ------------------------------------------------------------------ the sampler's auxiliary loss
    def compute_loss(self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        unwrapped = self._unwrapped()
        if hasattr(unwrapped, "auxiliary_loss_scale"):
            # A loss normalised by num_items_in_batch is not divided by the accumulation steps afterwards: the
            # per-micro-batch auxiliary loss is, so that it weighs the same at any --gradient_accumulation_steps.
            scaled = num_items_in_batch is not None and getattr(self, "model_accepts_loss_kwargs", False)
            steps = max(1, int(getattr(self, "current_gradient_accumulation_steps", 0)
                               or self.args.gradient_accumulation_steps))
            unwrapped.auxiliary_loss_scale = 1.0 / steps if scaled else 1.0
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        value = getattr(unwrapped, "last_sampler_loss", None)
        if value is not None and model.training:
            self._sampler_losses.append(float(value))
        return result

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._sampler_losses:
            logs = {**logs, "sampler_loss": round(sum(self._sampler_losses) / len(self._sampler_losses), 6)}
            self._sampler_losses = []
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ non-finite loss / gradients
    def _stop_non_finite(self, what: str, value: Any, sample_ids: list[str]) -> None:
        step = self.state.global_step + 1
        rank = f" (rank {self.args.process_index})" if self.args.world_size > 1 else ""
        shown = ", ".join(sample_ids[:32]) + (f", ... ({len(sample_ids)} in all)" if len(sample_ids) > 32 else "")
        raise NonFiniteTrainingError(
            f"step {step}: {what} is {value} (not finite) on the batch of samples [{shown}]{rank}; training stopped "
            f"before the optimizer step and nothing was saved from this state: the last checkpoint in "
            f"{self.args.output_dir} (if any) is the last good one. Check these samples' features and records, "
            "or lower --learning_rate / set --max_grad_norm, then rerun (it resumes from the last checkpoint)"
        )

    def training_step(self, model: torch.nn.Module, inputs: dict, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch_ids = _flat_ids(inputs.get("sample_ids")) if isinstance(inputs, dict) else []
        self._step_sample_ids.extend(batch_ids)
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not bool(torch.isfinite(loss).all()):
            self._stop_non_finite("the loss", loss.float().mean().item(), batch_ids)
        return loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        sample_ids, self._step_sample_ids = self._step_sample_ids, []
        # Under fp16 loss scaling an overflowing gradient is expected now and then: the scaler skips that
        # step and lowers the scale, so only unscaled training stops here.
        scaled = getattr(self.accelerator, "scaler", None) is not None
        if grad_norm is not None and not scaled:
            value = float(grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm)
            if not math.isfinite(value):
                self._stop_non_finite("the gradient norm", value, sample_ids)
        return grad_norm

    # ------------------------------------------------------------------ the projectors' own learning rates
    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """transformers' optimizer, with the projectors named by ``--mm_projector_lr`` in groups of their own
        learning rate (the scheduler scales every group alike; a rate of 0 leaves a projector as it started)."""
        from llavidal.train.args import projector_learning_rates

        fresh = self.optimizer is None
        optimizer = super().create_optimizer(*args, **kwargs)
        rates = projector_learning_rates(getattr(self.args, "mm_projector_lr", None))
        if fresh and rates:
            split_projector_groups(optimizer, self._unwrapped(), rates)
        return optimizer

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self._unwrapped()
        model.config.extra = {**model.config.extra, **self.extra_config}
        # FSDP / ZeRO-3: the Trainer passes the gathered full state dict (the live parameters are shards).
        model.save_pretrained(output_dir, state_dict=state_dict or None)
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
