"""ADLMCQ evaluation speed: free generation at batch 1 / 8 / 32 (with and without length sorting) against
choosing each answer by option log-likelihood, on the embedded world with the embedded LLM.

Run as: python benchmarks/eval_inference.py                       # 96 records (about 5 minutes on 2 cores)
        python benchmarks/eval_inference.py --records 16          # a short run
        python benchmarks/eval_inference.py --world runs/quickstart/world --records 200

Records: the ADLMCQ files (action recognition and forecasting, every split of the cross-subject protocol)
of an embedded world (``--world``, else ``llavidal synth --preset small`` into ``--workdir``), repeated
with new ids up to ``--records``. Features: random arrays of the quickstart's shapes (8 video tokens, 8 pose
tokens, 8 tokens per object of the clip), written to feature folders, so the timing includes reading them
as ``llavidal eval infer`` does. Model: SmolLM2-135M-Instruct (``llavidal embedded-llm``) with its chat
template, two-layer projectors and LoRA (r 16) on the attention projections, as the quickstart trains it;
random projectors and random LoRA weights (timing only, so the answers are not meant to be right).

Every mode runs :func:`llavidal.eval.run_inference.run_inference`, the code path of ``llavidal eval infer``,
on the same records in the same process; ratios are against generation at batch 1 in the same run. The
table says whether each mode gives the same answers as its reference: the generated texts of batch 1,
or the chosen letters of log-likelihood scoring at batch 1 (with the largest log-likelihood difference:
float32 rounding differs between batch shapes). It also
gives the share of prompt tokens that all prompts have in common (the system prompt), and the time a
prefill of all prompts takes, an upper bound of what reusing that prefix could save.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DIMS = {"video_dim": 512, "pose_dim": 216, "object_dim": 512, "video_tokens": 8, "pose_tokens": 8}
TASKS = {"mcq_action_recognition.json": "adlmcq_action_recognition", "mcq_forecasting.json": "adlmcq_forecasting"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=96, help="ADLMCQ records to run (repeated with new ids)")
    parser.add_argument("--world", default=None, help="an embedded world (llavidal synth output); default: synth")
    parser.add_argument("--workdir", default=None, help="folder for the world, features and predictions")
    parser.add_argument("--llm", default=None, help="base LLM folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32], help="batched runs besides 1")
    parser.add_argument("--max_new_tokens", type=int, default=40, help="the quickstart's MCQ answer length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    return parser.parse_args()


def world_records(world: Path, count: int) -> list:
    """(task spec, record) pairs from the world's ADLMCQ files, repeated with new ids up to ``count``."""
    from llavidal.eval.tasks import load_task

    found = []
    for split in ("test", "val", "train"):
        for name, task in TASKS.items():
            path = world / "annotations" / "cross_subject" / split / name
            if path.is_file():
                spec = load_task(task)
                found.extend((spec, record) for record in spec.load_records(path))
    if not found:
        raise SystemExit(f"{world}: no ADLMCQ files under annotations/cross_subject/*/ (is it a llavidal synth output?)")
    out = []
    for index in range(count):
        spec, record = found[index % len(found)]
        copy = type(record)(**{**record.to_dict(), "id": f"{record.id}#{index}", "video": f"v{index}.mp4"})
        out.append((spec, copy, record.video_stem))
    return out


def write_features(world: Path, items: list, folder: Path, seed: int) -> dict[str, Path]:
    from llavidal.data.feature_store import save_features

    rng = np.random.default_rng(seed)
    folders = {name: folder / name for name in ("video", "pose", "object")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    for _, record, stem in items:
        meta_path = world / "meta" / f"{stem}.json"
        objects = 1
        if meta_path.is_file():
            objects = max(1, sum(1 for o in json.loads(meta_path.read_text()).get("objects", []) if o.get("class")))
        name = record.video_stem
        save_features(folders["video"] / f"{name}.safetensors", rng.standard_normal((8, DIMS["video_dim"]), np.float32))
        save_features(folders["pose"] / f"{name}_pose.safetensors", rng.standard_normal((8, DIMS["pose_dim"]), np.float32))
        save_features(folders["object"] / f"{name}_object.safetensors",
                      rng.standard_normal((objects, 8, DIMS["object_dim"]), np.float32))
    return folders


def build_engine(llm_dir: str | None, seed: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llavidal.model.embedded import ensure_embedded_llm
    from llavidal.model.llavidal_model import LlavidalModel
    from llavidal.model.modality import ModalityRegistry
    from llavidal.serve.engine import InferenceEngine

    folder = llm_dir or str(ensure_embedded_llm())
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = LlavidalModel(llm, tokenizer, ModalityRegistry.default(projector_type="mlp2x_gelu", **DIMS), template="chat")
    model.setup_training(lora={"r": 16, "alpha": 32, "dropout": 0.0,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    with torch.no_grad():  # adapters as after some training (B starts at zero)
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    return InferenceEngine(model, tokenizer)


def run_mode(engine, items, folders, out_dir: Path, name: str, batch_size: int, scoring: str, sort: bool,
             max_new_tokens: int) -> tuple[float, dict[str, dict]]:
    """Seconds of ``run_inference`` over all items (both tasks), and the rows by id."""
    from llavidal.eval.run_inference import run_inference
    from llavidal.utils.io import read_jsonl

    rows: dict[str, dict] = {}
    seconds = 0.0
    for task in sorted({spec.name for spec, _, _ in items}):
        spec = next(s for s, _, _ in items if s.name == task)
        records = [record for s, record, _ in items if s.name == task]
        output = out_dir / f"{name}.{task}.jsonl"
        output.unlink(missing_ok=True)
        start = time.perf_counter()
        summary = run_inference(engine, records, folders, output, benchmark=spec, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, mcq_scoring=scoring, sort_by_length=sort,
                                show_progress=False)
        seconds += time.perf_counter() - start
        if summary.errors:
            raise SystemExit(f"{name}: {summary.errors} records failed: {summary.error_examples}")
        rows.update({row["id"]: row for row in read_jsonl(output)})
    return seconds, rows


def prefill_share(engine, items, folders, batch_size: int) -> tuple[int, float, float]:
    """(tokens every prompt starts with, mean prompt tokens, seconds of one prefill of all prompts)."""
    from llavidal.data.feature_store import FeatureFolder
    from llavidal.serve.engine import GenerationRequest

    requests = []
    for spec, record, _ in items:
        features = {}
        for name, folder in folders.items():
            array, _ = FeatureFolder(folder, modality=name).read(record.video_stem + {"video": "", "pose": "_pose",
                                                                                      "object": "_object"}[name])
            features[name] = array
        requests.append(GenerationRequest(spec.prompts(record)["main"], features, request_id=record.id))
    ids = []
    for request in requests:
        text, _ = engine.build_prompt(request)
        ids.append(engine.tokenizer(text, add_special_tokens=engine._add_special_tokens([text]))["input_ids"])
    common = 0
    while all(len(row) > common and row[common] == ids[0][common] for row in ids):
        common += 1
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(requests), batch_size):
            inputs, features, names = engine._encode(requests[first:first + batch_size])
            embeds, _ = engine.model.embed_inputs(inputs["input_ids"], features, names)
            engine.model.llm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], use_cache=True,
                             logits_to_keep=1)
    return common, statistics.mean(len(row) for row in ids), time.perf_counter() - start


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llavidal-eval-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    world = Path(args.world) if args.world else workdir / "world"
    if not args.world and not (world / "world.json").is_file():
        from llavidal.sim import generate_world

        print(f"generating the embedded world (small preset) in {world} ...")
        generate_world(world, preset="small", seed=args.seed, progress=False)
    items = world_records(world, args.records)
    folders = write_features(world, items, workdir / "features", args.seed)
    engine = build_engine(args.llm, args.seed)
    out_dir = workdir / "predictions"
    out_dir.mkdir(exist_ok=True)
    print(f"{len(items)} records ({', '.join(sorted({s.name for s, _, _ in items}))}), torch threads "
          f"{torch.get_num_threads()}, max_new_tokens {args.max_new_tokens}")

    modes = [("generate b1", 1, "generate", False)]
    for position, size in enumerate(args.batch_sizes):  # unsorted only at the first size: what sorting adds
        modes += [(f"generate b{size}", size, "generate", False)] if position == 0 else []
        modes += [(f"generate b{size} sorted", size, "generate", True)]
    modes += [("loglik_norm b1", 1, "loglik_norm", False)]
    modes += [(f"loglik_norm b{size} sorted", size, "loglik_norm", True) for size in args.batch_sizes]
    results = []
    reference: dict[str, dict[str, dict]] = {}
    for name, size, scoring, sort in modes:
        seconds, rows = run_mode(engine, items, folders, out_dir, name.replace(" ", "_"), size, scoring, sort,
                                 args.max_new_tokens)
        ref = reference.setdefault(scoring, rows)
        same = all(rows[i]["prediction"] == ref[i]["prediction"] for i in ref)  # texts, or chosen letters
        worst = 0.0
        if scoring != "generate":
            worst = max(abs(rows[i]["option_scores"][k]["loglik"] - ref[i]["option_scores"][k]["loglik"])
                        for i in ref for k in ref[i]["option_scores"])
        results.append({"mode": name, "batch_size": size, "scoring": scoring, "sorted": sort, "seconds": seconds,
                        "identical": same, "max_loglik_diff": worst})
        print(f"  {name}: {seconds:.1f}s")
    base = results[0]["seconds"]

    from llavidal.eval.mcq import parse_mcq_answer

    generated, scored = reference["generate"], reference["loglik_norm"]
    parsed = {i: parse_mcq_answer(r["prediction"], r["record"]["choices"]).letter for i, r in generated.items()}
    agree = sum(parsed[i] == scored[i]["prediction"] for i in scored)
    decided = sum(letter is not None for letter in parsed.values())

    print()
    print("| mode | batch | seconds | records/s | speed-up vs generate b1 | same answers as its batch-1 run |")
    print("|---|---|---|---|---|---|")
    for r in results:
        identical = "yes" if r["identical"] else "NO"
        if r["scoring"] != "generate" and r["batch_size"] != 1:
            identical += f" (log-likelihoods within {r['max_loglik_diff']:.1e})"
        print(f"| {r['mode']} | {r['batch_size']} | {r['seconds']:.1f} | {len(items) / r['seconds']:.2f} | "
              f"{base / r['seconds']:.2f}x | {identical} |")
    common, mean_len, prefill = prefill_share(engine, items, folders, max(args.batch_sizes))
    best_generate = min(r["seconds"] for r in results if r["scoring"] == "generate")
    print()
    print(f"generated answers the parser decides: {decided}/{len(items)}; log-likelihood choice = parsed "
          f"generated letter: {agree}/{len(items)} (random weights: agreement is not accuracy)")
    print(f"prompts: {mean_len:.0f} tokens on average, the first {common} shared by all ({common / mean_len:.0%}); "
          f"a prefill of all prompts at batch {max(args.batch_sizes)} takes {prefill:.1f}s, so reusing the shared "
          f"prefix could save at most about {prefill * common / mean_len:.1f}s of the fastest generation run's "
          f"{best_generate:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": len(items), "threads": torch.get_num_threads(),
                                               "max_new_tokens": args.max_new_tokens, "modes": results,
                                               "shared_prefix_tokens": common, "mean_prompt_tokens": mean_len,
                                               "prefill_seconds": prefill}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
