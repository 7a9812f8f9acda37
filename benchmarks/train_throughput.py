"""Training throughput of padded vs packed batches on an ADL-X-like length distribution.

Run as: python benchmarks/train_throughput.py                      # CPU: tiny + small Llama configs
        python benchmarks/train_throughput.py --configs 1b 7b      # CUDA: bf16, random weights

Two length distributions of training records (``--records``); token ids and features are random:

* ``six_qa`` (default): ADL-X instruction data as upstream lays it out: videos with 6 QAs each, every QA
  one sample of a system prompt, a question (8-30 tokens), the video span (356 tokens), an object span
  (8 per object, 1-6 objects), a pose span (256 tokens) and an answer (20-300 tokens);
* ``single_qa``: every QA its own record, as in mixed Video-ChatGPT + ADL-X data: a question of 10-40
  tokens and an answer of 20-300 tokens; half the records are Video-ChatGPT-like (video span only), the
  other half ADL-X-like (video + pose, and an object span of 1-6 objects in 2 of 3 of them). Same
  number of samples as ``six_qa`` (``--videos`` x 6), each with its own features;
* ``mixed_lengths``: lengths spread widely, as in a mix of text-only, image and video data: a third text-only
  records (40-200 tokens), a third video-only (356 video tokens + a 10-40 token question + a 5-60 token answer),
  a third full ADL-X (video + pose + 1-6 objects, answers of 20-600 tokens).

``--sweep`` prints one table over the three distributions x micro-batch sizes (``--sweep_batch_sizes``,
default 1 4 8) x {padded, length-grouped, packed} (in this process, one model per cell, every micro-batch
of the data set timed, fastest of ``--sweep_repeat`` interleaved passes; ratios against padded of the same
distribution and micro-batch size) and says where packing is worth turning on. Per-sample losses are the
same in the three layouts (``tests/test_extract_fast.py``, ``tests/test_packing*.py``).

The LLM is a randomly initialised Llama of the chosen size, frozen; the projectors and modality token
rows train (upstream ``--tune_mm_mlp_adapter True``), with AdamW. Training-mode forwards compute the
LM head only where a label is supervised (``LlavidalModel.forward``); ``--full_logits`` computes it at
every position (the behaviour before that change).

Each mode runs in its own subprocess (its own peak memory), on the same samples in the same order
(``padded-grouped`` reorders them with the HF length-grouped sampler, as ``--group_by_length`` does):

* ``padded``: the upstream collator, rows padded to the longest sample, attention ``sdpa``;
* ``padded-grouped``: the same with length-grouped batches;
* ``packed``: ``--packing True``: one padding-free row per micro-batch, exact per-sample attention
  (flash-attention varlen when installed on CUDA, else ``llavidal_varlen_sdpa``).

Printed per mode: the positions the LM head ran at (``all`` or ``supervised``), useful-token fraction (sample tokens / computed token slots), tokens/s (sample
tokens per second of training steps, first step excluded as warm-up), peak memory (CPU: peak RSS of the
process; CUDA: ``torch.cuda.max_memory_allocated``), mean loss, and on CUDA the model FLOPs
utilisation (model FLOPs of the sample tokens only / step time / peak FLOP/s). Ratios vs ``padded``
come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

SYSTEM_TOKENS = 44  # the v1 system prompt + "USER:" in a LLaMA tokenizer
VIDEO_TOKENS, POSE_TOKENS, OBJECT_GROUP = 356, 256, 8
VIDEO_DIM, POSE_DIM, OBJECT_DIM = 1024, 216, 512

# name: (hidden, layers, heads, kv heads, intermediate, vocab)
CONFIGS: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (64, 2, 4, 4, 172, 32000),
    "small": (256, 4, 4, 4, 688, 32000),
    "1b": (2048, 16, 32, 8, 8192, 32000),  # Llama-3.2-1B shape with the LLaMA-2 vocabulary
    "7b": (4096, 32, 32, 32, 11008, 32000),  # LLaMA-7B / Vicuna (the upstream base)
}
CPU_CONFIGS = ("tiny", "small")
MODES = ("padded", "padded-grouped", "packed")
PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


@dataclass
class Result:
    config: str
    mode: str
    device: str
    attention: str
    steps: int
    tokens: int
    slots: int
    seconds: float
    peak_memory_mb: float
    mean_loss: float
    model_flops: float
    lm_head: str = "all"
    """Positions the training forward runs the LM head at: ``all``, or ``supervised`` (sparse logits)."""

    @property
    def useful_fraction(self) -> float:
        return self.tokens / max(self.slots, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


# ---------------------------------------------------------------------------------------------- data
class _Draw:
    """Seeded draws for synthetic records: integers, random text token ids (never a modality token), features."""

    def __init__(self, token_ids: dict[str, dict[str, int]], vocab: int, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.first_text_id = 1 + max(i for ids in token_ids.values() for i in ids.values())
        self.vocab = vocab

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def text(self, count: int) -> list[int]:
        return torch.randint(self.first_text_id, self.vocab, (count,), generator=self.generator).tolist()

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)


def _spans(token_ids: dict[str, dict[str, int]], features: dict[str, torch.Tensor]) -> list[int]:
    """The placeholder ids of the modalities present: start, one patch id per feature row, end."""
    spans: list[int] = []
    for name in ("video", "object", "pose"):
        if name in features:
            ids = token_ids[name]
            rows = OBJECT_GROUP * int(features[name].shape[0]) if name == "object" else int(features[name].shape[0])
            spans += [ids["start"], *[ids["patch"]] * rows, ids["end"]]
    return spans


def _item(context: list[int], answer: list[int], features: dict[str, torch.Tensor], item_id: str) -> dict[str, Any]:
    return {"input_ids": torch.tensor(context + answer), "labels": torch.tensor([-100] * len(context) + answer),
            "modality_features": features, "id": item_id}


def make_samples(num_videos: int, vocab: int, token_ids: dict[str, dict[str, int]], seed: int) -> list[dict[str, Any]]:
    """ADL-X-like items (dataset format): 6 QAs per video, answers 20-300 tokens, 1-6 objects."""
    draw = _Draw(token_ids, vocab, seed)
    items = []
    for video in range(num_videos):
        objects = draw.randint(1, 6)
        features = {"video": draw.randn(VIDEO_TOKENS, VIDEO_DIM), "object": draw.randn(objects, OBJECT_GROUP, OBJECT_DIM),
                    "pose": draw.randn(POSE_TOKENS, POSE_DIM)}
        spans = _spans(token_ids, features)
        for question in range(6):
            context = draw.text(SYSTEM_TOKENS) + draw.text(draw.randint(8, 30)) + spans + draw.text(3)  # "... ASSISTANT:"
            answer = draw.text(draw.randint(20, 300)) + [2]  # answer + </s>
            items.append(_item(context, answer, features, f"video{video:03d}_q{question}"))
    return items


def make_single_qa_samples(
    num_records: int, vocab: int, token_ids: dict[str, dict[str, int]], seed: int
) -> list[dict[str, Any]]:
    """One QA per record: questions 10-40 tokens, answers 20-300; half video-only (Video-ChatGPT-like),
    half ADL-X-like (video + pose, objects 1-6 in 2 of 3 records)."""
    draw = _Draw(token_ids, vocab, seed)
    items = []
    for record in range(num_records):
        adl = draw.randint(0, 1) == 1
        objects = draw.randint(1, 6) if adl and draw.randint(0, 2) > 0 else 0
        features: dict[str, torch.Tensor] = {"video": draw.randn(VIDEO_TOKENS, VIDEO_DIM)}
        if objects:
            features["object"] = draw.randn(objects, OBJECT_GROUP, OBJECT_DIM)
        if adl:
            features["pose"] = draw.randn(POSE_TOKENS, POSE_DIM)
        context = draw.text(SYSTEM_TOKENS) + draw.text(draw.randint(10, 40)) + _spans(token_ids, features) + draw.text(3)
        answer = draw.text(draw.randint(20, 300)) + [2]  # answer + </s>
        items.append(_item(context, answer, features, f"{'adl' if adl else 'vcgpt'}{record:04d}"))
    return items


def make_mixed_length_samples(
    num_records: int, vocab: int, token_ids: dict[str, dict[str, int]], seed: int
) -> list[dict[str, Any]]:
    """Widely spread lengths: text-only (40-200 tokens), video-only (short QA) and full ADL-X (long answers)."""
    draw = _Draw(token_ids, vocab, seed)
    items = []
    for record in range(num_records):
        kind = ("text", "video", "adl")[record % 3]
        features: dict[str, torch.Tensor] = {}
        if kind != "text":
            features["video"] = draw.randn(VIDEO_TOKENS, VIDEO_DIM)
        if kind == "adl":
            features["object"] = draw.randn(draw.randint(1, 6), OBJECT_GROUP, OBJECT_DIM)
            features["pose"] = draw.randn(POSE_TOKENS, POSE_DIM)
        if kind == "text":
            question, answer_length = draw.text(draw.randint(20, 100)), draw.randint(20, 100)
        elif kind == "video":
            question, answer_length = draw.text(draw.randint(10, 40)), draw.randint(5, 60)
        else:
            question, answer_length = draw.text(draw.randint(10, 40)), draw.randint(20, 600)
        context = draw.text(SYSTEM_TOKENS) + question + _spans(token_ids, features) + draw.text(3)
        answer = draw.text(answer_length) + [2]
        items.append(_item(context, answer, features, f"{kind}{record:04d}"))
    return items


RECORDS = {"six_qa": make_samples, "single_qa": lambda videos, *rest: make_single_qa_samples(videos * 6, *rest),
           "mixed_lengths": lambda videos, *rest: make_mixed_length_samples(videos * 6, *rest)}
"""--records: name -> (videos, vocab, token_ids, seed) -> items."""


def batch_order(items: list[dict[str, Any]], batch_size: int, mode: str, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    if mode == "padded-grouped":
        from llavidal.data.packing import length_grouped_batches

        lengths = [int(item["input_ids"].shape[0]) for item in items]
        # Mega-batches of 50 micro-batches, as the Trainer makes on a real data set of thousands of samples (its
        # default for a data set this small is 4 mega-batches, which groups almost nothing here).
        mega_batch_mult = max(1, min(50, len(items) // batch_size))
        return length_grouped_batches(lengths, batch_size, generator=generator, mega_batch_mult=mega_batch_mult,
                                      drop_last=True)
    order = torch.randperm(len(items), generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


# ---------------------------------------------------------------------------------------------- model
def build(config_name: str, device: torch.device, dtype: torch.dtype, attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llavidal.model.llavidal_model import LlavidalModel
    from llavidal.model.modality import ModalityRegistry
    from llavidal.testing import tiny_tokenizer

    hidden, layers, heads, kv_heads, intermediate, vocab = CONFIGS[config_name]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = attention
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM(config).to(dtype)
    # Any tokenizer works: its added modality tokens land on ids inside the 32000-row matrix.
    tokenizer = tiny_tokenizer()
    registry = ModalityRegistry.default(video_dim=VIDEO_DIM, pose_dim=POSE_DIM, object_dim=OBJECT_DIM)
    model = LlavidalModel(llm, tokenizer, registry)
    model.setup_training(freeze_llm=True)
    for parameter in model.parameters():  # trainable weights in float32 (master weights), as train.py does
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model, tokenizer


def linear_params(config_name: str) -> int:
    hidden, layers, heads, kv_heads, intermediate, vocab = CONFIGS[config_name]
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    return layers * (attention + 3 * hidden * intermediate) + hidden * vocab  # + lm_head


def model_flops(config_name: str, segment_lengths: list[int]) -> float:
    """FLOPs of forward + input-gradient backward (frozen LLM) over the sample tokens only."""
    hidden, layers = CONFIGS[config_name][0], CONFIGS[config_name][1]
    tokens = sum(segment_lengths)
    dense = 2 * linear_params(config_name) * tokens * 2  # forward 2N per token; backward (inputs only) 2N
    causal_pairs = sum(n * (n + 1) / 2 for n in segment_lengths)
    attention = 4 * hidden * causal_pairs * layers * 3  # QK^T + AV forward; backward twice that
    return float(dense + attention)


# ---------------------------------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace) -> Result:
    from llavidal.data.collator import PaddedCollator
    from llavidal.data.packing import make_packing_collator, prepare_model_for_packing

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention = "sdpa"
    if device.type == "cuda" and args.mode == "packed":
        from llavidal.model.builder import best_attn_implementation

        attention = best_attn_implementation(device=device, torch_dtype=dtype)
    model, tokenizer = build(args.config, device, dtype, attention)
    if args.mode == "packed":
        attention = prepare_model_for_packing(model)
        collator = make_packing_collator(tokenizer, max_length=args.packing_max_length, attn_implementation=attention)
    else:
        model.llm.config.use_cache = False
        collator = PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    items = RECORDS[args.records](args.videos, CONFIGS[args.config][5], model.token_ids, args.seed)
    batches = batch_order(items, args.batch_size, args.mode, args.seed)[: args.steps + 1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    if args.full_logits:
        model.sparse_training_logits = False  # LM head at every position, as before sparse logits
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    tokens = slots = 0
    seconds = flops = 0.0
    losses = []
    for step, indices in enumerate(batches):
        chosen = [items[i] for i in indices]
        batch = collator(chosen)
        lengths = [int(item["input_ids"].shape[0]) for item in chosen]
        num_items = sum(int((item["labels"][1:] != -100).sum()) for item in chosen)
        batch = {k: _to(v, device) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            outputs = model(**batch, num_items_in_batch=num_items)
            loss, logits = outputs.loss, outputs.logits  # logits (N, V) when only supervised rows are kept
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach()))
        lm_head = "supervised" if logits.dim() == 2 else "all"
        if step == 0:
            continue  # warm-up
        seconds += elapsed
        tokens += sum(lengths)
        slots += int(batch["input_ids"].numel())
        flops += model_flops(args.config, lengths)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Result(
        config=args.config, mode=args.mode, device=str(device), attention=attention, steps=len(batches) - 1,
        tokens=tokens, slots=slots, seconds=seconds, peak_memory_mb=peak,
        mean_loss=sum(losses[1:]) / max(len(losses) - 1, 1), model_flops=flops, lm_head=lm_head,
    )


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- driver
def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in device_name:
            return value
    return None


def print_table(results: list[Result], peak: float | None) -> None:
    header = f"{'config':<7}{'mode':<16}{'attention':<22}{'lm head':<11}{'useful':>7}{'tokens/s':>11}{'x padded':>9}{'peak MB':>10}{'loss':>8}"
    if peak:
        header += f"{'MFU':>7}"
    print(header)
    print("-" * len(header))
    for result in results:
        base = next((r for r in results if r.config == result.config and r.mode == "padded"), None)
        ratio = result.tokens_per_second / base.tokens_per_second if base else float("nan")
        line = (
            f"{result.config:<7}{result.mode:<16}{result.attention:<22}{result.lm_head:<11}{result.useful_fraction:>7.3f}"
            f"{result.tokens_per_second:>11.0f}{ratio:>8.2f}x{result.peak_memory_mb:>10.0f}{result.mean_loss:>8.4f}"
        )
        if peak:
            line += f"{result.model_flops / result.seconds / (peak * 1e12):>7.1%}"
        print(line)


MODE_NAMES = {"padded": "padded", "padded-grouped": "length-grouped", "packed": "packed"}
WORTH_PACKING = 1.10
"""Packing is called worth turning on where it beats the best padded layout by this factor."""


def run_sweep(args: argparse.Namespace) -> list[Result]:
    """Every distribution x micro-batch size x mode, in this process (a fresh model per cell, same seed, every
    micro-batch of the data set timed). ``--sweep_repeat`` passes interleave the modes; the fastest pass counts."""
    best: dict[tuple[str, int, str], Result] = {}
    for _ in range(args.sweep_repeat):
        for records in RECORDS:
            for batch_size in args.sweep_batch_sizes:
                for mode in args.modes:
                    cell = argparse.Namespace(**{**vars(args), "records": records, "batch_size": batch_size, "mode": mode,
                                                  "config": args.configs[0] if args.configs else "tiny"})
                    print(f"running {records} x{batch_size} {mode} ...", file=sys.stderr, flush=True)
                    result = run_worker(cell)
                    result.mode = f"{records}|{batch_size}|{mode}"
                    key = (records, batch_size, mode)
                    if key not in best or result.tokens_per_second > best[key].tokens_per_second:
                        best[key] = result
    return list(best.values())


def print_sweep(results: list[Result], modes: list[str]) -> None:
    print("| records | micro-batch | layout | useful-token fraction | tokens/s | vs padded |")
    print("|---|---:|---|---:|---:|---:|")
    cells: dict[tuple[str, str], dict[str, Result]] = {}
    for result in results:
        records, batch_size, mode = result.mode.split("|")
        cells.setdefault((records, batch_size), {})[mode] = result
    worth = []
    for (records, batch_size), by_mode in cells.items():
        base = by_mode.get("padded")
        for mode in modes:
            result = by_mode[mode]
            ratio = result.tokens_per_second / base.tokens_per_second if base else float("nan")
            print(f"| {records} | {batch_size} | {MODE_NAMES[mode]} | {result.useful_fraction:.3f} | "
                  f"{result.tokens_per_second:.0f} | {ratio:.2f}x |")
        padded_best = max((by_mode[m].tokens_per_second for m in ("padded", "padded-grouped") if m in by_mode), default=0)
        if "packed" in by_mode and padded_best and by_mode["packed"].tokens_per_second >= WORTH_PACKING * padded_best:
            worth.append(f"{records} x{batch_size} ({by_mode['packed'].tokens_per_second / padded_best:.2f}x)")
    print(f"\npacking is worth turning on (>= {WORTH_PACKING:.2f}x the best padded layout, length-grouped included) "
          f"for: {', '.join(worth) if worth else 'none of these cells'}; elsewhere padded batches, length-grouped "
          "(--group_by_length), do as well. With one sample per micro-batch there is no padding to remove.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None,
                        help="model sizes (default: tiny small on CPU, 1b 7b on CUDA)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--videos", type=int, default=6, help="videos (6 samples each; single_qa makes the same number of records)")
    parser.add_argument("--batch_size", type=int, default=4, help="samples per micro-batch (upstream: 4)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode (after one warm-up step)")
    parser.add_argument("--packing_max_length", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", choices=sorted(RECORDS), default="six_qa",
                        help="length distribution: six_qa (6 QAs per video) or single_qa (one QA per record, "
                             "mixed Video-ChatGPT + ADL-X modalities)")
    parser.add_argument("--full_logits", action="store_true",
                        help="compute the LM head at every position (the behaviour before sparse training logits)")
    parser.add_argument("--sweep", action="store_true",
                        help="one table over every --records distribution x --sweep_batch_sizes x mode (first --configs)")
    parser.add_argument("--sweep_batch_sizes", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--sweep_repeat", type=int, default=2, help="passes over the sweep; the fastest counts per cell")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        args.config, args.mode = args.worker
        print(json.dumps(asdict(run_worker(args))))
        return 0

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.sweep:
        if args.steps == parser.get_default("steps"):
            args.steps = 10**9  # every micro-batch of the data set
        results = run_sweep(args)
        threads = args.threads or torch.get_num_threads()
        print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({threads} threads)'}; "
              f"model {args.configs[0] if args.configs else 'tiny'}; {args.videos * 6} samples per distribution, every "
              f"micro-batch but the first (warm-up) timed, fastest of {args.sweep_repeat} interleaved passes; "
              f"packing_max_length {args.packing_max_length}; "
              f"load average {os.getloadavg()[0]:.1f}")
        print_sweep(results, args.modes)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump([asdict(r) | {"useful_fraction": r.useful_fraction, "tokens_per_second": r.tokens_per_second}
                           for r in results], handle, indent=1)
        return 0
    configs = args.configs or (["1b", "7b"] if device.type == "cuda" else list(CPU_CONFIGS))
    if device.type == "cpu" and any(c not in CPU_CONFIGS for c in configs):
        raise SystemExit(f"{configs}: the 1b and 7b configs need a CUDA device (bf16)")
    results: list[Result] = []
    for config in configs:
        for mode in args.modes:
            command = [sys.executable, os.path.abspath(__file__), "--worker", config, mode,
                       "--device", args.device, "--videos", str(args.videos), "--batch_size", str(args.batch_size),
                       "--steps", str(args.steps), "--packing_max_length", str(args.packing_max_length),
                       "--seed", str(args.seed), "--records", args.records]
            if args.full_logits:
                command.append("--full_logits")
            if args.threads:
                command += ["--threads", str(args.threads)]
            print(f"running {config} {mode} ...", file=sys.stderr, flush=True)
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                raise SystemExit(f"{config} {mode} failed:\n{completed.stderr[-4000:]}")
            results.append(Result(**json.loads(completed.stdout.strip().splitlines()[-1])))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = args.threads or torch.get_num_threads()
    print(f"device: {device_name}" + (f" ({threads} threads)" if device.type == "cpu" else "")
          + f"; records {args.records}, {args.videos * 6} samples, {args.batch_size} per micro-batch, "
          f"{args.steps} timed steps per mode; packing_max_length {args.packing_max_length}")
    print_table(results, peak_tflops(device_name, args.peak_tflops) if device.type == "cuda" else None)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(r) | {"useful_fraction": r.useful_fraction, "tokens_per_second": r.tokens_per_second}
                       for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
