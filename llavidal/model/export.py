"""Export a transformers-native model folder from LLAVIDAL weights.

Run as::

    llavidal export --weights runs/stage3 --output_dir exported/llavidal-stage3 [--base_model PATH]

The folder is a Hugging Face model (``push_to_hub``-ready)::

    config.json                      model_type "llavidal", the base LLM's config as text_config, the modality
                                     registry, template, token ids, feature manifests; auto_map
    model*.safetensors (+ index)     the LLM (LoRA merged, modality-token rows written in), the projectors and
                                     the token rows, keys as LlavidalModel's (llm.*, projectors.*, token_embeddings.*)
    configuration_llavidal.py        the self-contained model code (torch + transformers only), so that
    modeling_llavidal.py             AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    frontends.py, sampler.py,        works without this package (and without remote code once llavidal is imported);
    qformer.py, conditioning.py      the video designs (pooling, positional encodings, sampler, Q-Former, conditioning)
    generation_config.json, tokenizer files (with the modality tokens)
    processor_config.json            LlavidalProcessor: registry, template, feature recipes
    llavidal_config.json + trainable.safetensors   base_model "." for llavidal's own loaders (eval, demo, engine)
    README.md                        a model card: base model, modalities, feature recipes, training data, scores
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llavidal.config import arg, command, parse

SCORE_FILES = ("report.json", "eval_results.json", "scores.json")
"""Evaluation results looked for in the weights folder (``llavidal eval report`` / ``eval mcq`` outputs)."""


class OutputExistsError(FileExistsError, ValueError):
    """The output folder already holds files (a user error: the command reports it and exits 2)."""


@dataclass
class ExportArguments:
    weights: str = arg(help="folder written by save_pretrained / training", aliases=["--weights_dir"])
    output_dir: str = arg(help="new (or empty) folder for the standalone model", aliases=["--output"])
    base_model: str | None = arg(None, "base LLM folder (overrides the one in llavidal_config.json)")
    dtype: str | None = arg(None, "float32, bfloat16 or float16; unset keeps the stored dtype", aliases=["--torch_dtype"])
    max_shard_size: str = arg("5GB", "largest safetensors shard of the LLM weights (e.g. 2GB)")
    scores: str | None = arg(None, "evaluation results for the model card (report.json of `llavidal eval report`, or "
                                   "a result JSON of `eval mcq` / `eval judge`); default: one found in the weights folder")


VIDEO_DESIGN_FILES = ("frontends.py", "sampler.py", "qformer.py", "conditioning.py")
"""Self-contained video-design code that ``modeling_llavidal.py`` imports (relatively) beside it."""


def exported_code_files(folder: Path) -> list[str]:
    """The code files an exported folder carries: the modeling files and the video-design files present."""
    from llavidal.model.hf import MODELING_FILES

    return list(MODELING_FILES) + [name for name in VIDEO_DESIGN_FILES if (folder / name).is_file()]


def _text_config(llm: Any) -> Any:
    import copy

    config = copy.deepcopy(llm.config)
    config.vocab_size = int(llm.get_input_embeddings().weight.shape[0])
    config.architectures = [type(llm).__name__]
    return config


def hf_config_for(model: Any, feature_manifests: dict[str, dict], base_model: str) -> Any:
    """The :class:`LlavidalHFConfig` of a (LoRA-merged) :class:`LlavidalModel`."""
    from llavidal.model.hf import AUTO_MAP
    from llavidal.model.hf.configuration_llavidal import LlavidalHFConfig

    config = LlavidalHFConfig(
        text_config=_text_config(model.base_llm),
        modalities=model.modalities.to_list(),
        token_ids=model.token_ids,
        template=model.config.template,
        use_modality_string_prefix=model.config.use_modality_string_prefix,
        base_model=base_model,
        base_vocab_size=model.config.base_vocab_size,
        feature_manifests=feature_manifests,
        llavidal_version=model.config.package_version,
        video_conditioning=model.conditioning_settings,
    )
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["LlavidalForCausalLM"]
    config.dtype = model.dtype
    return config


def save_hf_model(model: Any, out: Path, config: Any, max_shard_size: str = "5GB") -> None:
    """Save ``model`` (a LoRA-merged LlavidalModel) as a LlavidalForCausalLM folder, without a second copy in
    memory: the HF model is built on the meta device and takes over the LLM, projectors and token rows."""
    import torch

    from llavidal.model.hf.modeling_llavidal import LlavidalForCausalLM

    with torch.device("meta"):
        hf = LlavidalForCausalLM(config)
    hf.llm, hf.projectors, hf.token_embeddings = model.base_llm, model.projectors, model.token_embeddings
    if model.conditioning is not None:  # already hooked into model.base_llm's decoder layers
        hf.conditioning = model.conditioning
    hf.generation_config = model.base_llm.generation_config
    hf.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    here = Path(__file__).resolve().parent / "hf"
    for name in exported_code_files(here):  # the self-contained code the auto_map names, and what it imports
        shutil.copyfile(here / name, out / name)


def _scores(weights_dir: Path, scores: str | os.PathLike | None) -> list[dict]:
    from llavidal.eval.report import load_results

    candidates = [Path(scores)] if scores else [weights_dir / name for name in SCORE_FILES]
    for path in candidates:
        if path.is_file():
            return load_results(path)
        if scores:
            raise FileNotFoundError(f"{path}: no such results file; pass a report.json of `llavidal eval report`")
    return []


def _metric_rows(results: list[dict]) -> list[tuple[str, str, str]]:
    rows = []
    for result in results:
        name = str(result.get("name") or result.get("benchmark") or "results")
        for metric, value in (result.get("metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((name, str(metric), f"{value:.4g}"))
    return rows


def model_card(config: Any, training: dict[str, Any], results: list[dict], weights_dir: str) -> str:
    """The README.md of an exported folder."""
    from llavidal.data.feature_store import FeatureManifest

    modalities = config.modalities
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: video-text-to-text",
        "tags: [llavidal, video, activities-of-daily-living, custom_code]",
    ]
    base = str(config.base_model)
    if base and not os.path.isabs(base) and not base.startswith(".") and base.count("/") == 1:
        lines.append(f"base_model: {base}")
    lines += ["---", "", "# LLAVIDAL model", "",
              (f"A video LLM for Activities of Daily Living: the base LLM `{base or 'unknown'}` "
               f"({config.text_config.model_type}, hidden size {config.text_config.hidden_size}) with "
               f"{', '.join(m['name'] for m in modalities)} features projected into its token stream. "
               f"Exported by `llavidal export` from `{weights_dir}`."), "",
              "## Use it", "", "```python",
              "from transformers import AutoModelForCausalLM",
              "model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)  # or: import llavidal first",
              "# with the llavidal package: features from a video, the prompt as training built it",
              "from llavidal.model.hf.processing_llavidal import LlavidalProcessor",
              "processor = LlavidalProcessor.from_pretrained(FOLDER)",
              'inputs = processor("What is the person doing?", videos="clip.mp4")',
              "answer = processor.batch_decode(model.generate(**inputs, max_new_tokens=64), skip_special_tokens=True)",
              "```", "",
              ("Without the package, pass `modality_features={name: [tensor (k, feature_dim) per row]}` with "
               "`input_ids` whose placeholders are expanded to `start + k x patch + end` tokens (see `config.json`)."),
              "",
              "## Modalities", "", "| modality | placeholder | tokens | feature dim | projector |", "|---|---|---|---|---|"]
    for m in modalities:
        count = m.get("num_tokens") or f"{m.get('group_size')} per item"
        lines.append(f"| {m['name']} | `{m.get('placeholder')}` | {count} | {m.get('feature_dim')} | "
                     f"{m.get('projector_type')} |")
    lines += ["", "## Features (recipes)", ""]
    if config.feature_manifests:
        for name, data in config.feature_manifests.items():
            manifest = FeatureManifest.from_dict(data)
            recipe = json.dumps(manifest.recipe, sort_keys=True) if manifest.recipe else "(no typed recipe)"
            lines.append(f"- **{name}**: {manifest.extractor}, model `{manifest.model_id or '?'}`, shape "
                         f"{manifest.shape}, {manifest.pooling or ''}".rstrip(", ") + f"; recipe `{recipe}`")
    else:
        lines.append("No feature manifests recorded (upstream weights, or features made before recipes existed): "
                     "features follow the upstream recipe.")
    lines += ["", f"Conversation template: `{config.template}`.", "", "## Training", ""]
    if training.get("data_path"):
        lines.append(f"- data: `{training['data_path']}`")
    for name, folder in (training.get("feature_folders") or {}).items():
        if folder:
            lines.append(f"- {name} features: `{folder}`")
    if training.get("lora"):
        lora = training["lora"]
        lines.append(f"- LoRA r={lora.get('r')} alpha={lora.get('alpha')} (merged into the weights)")
    if not any(line.startswith("- ") for line in lines[-4:]):
        lines.append("Not recorded in the weights folder.")
    lines += ["", "## Evaluation", ""]
    rows = _metric_rows(results)
    if rows:
        lines += ["| benchmark | metric | value |", "|---|---|---|"] + [f"| {b} | {m} | {v} |" for b, m, v in rows]
    else:
        lines.append("No evaluation results were found beside the weights (`llavidal export --scores report.json`).")
    return "\n".join(lines) + "\n"


def export_model(
    weights_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model: str | None = None,
    torch_dtype: Any = None,
    max_shard_size: str = "5GB",
    scores: str | os.PathLike | None = None,
) -> Path:
    """Write the transformers-native folder (see the module docstring); returns its path."""
    from llavidal.features.extractor import relative_manifest
    from llavidal.model.builder import (
        llavidal_weights_dir,
        load_pretrained,
        weights_config,
    )
    from llavidal.model.hf import register
    from llavidal.model.hf.processing_llavidal import LlavidalProcessor

    register()
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out}: exists and is not empty; choose a new output folder")
    source = weights_config(weights_dir, base_model)
    folder = llavidal_weights_dir(weights_dir)
    results = _scores(Path(folder or Path(weights_dir).parent), scores)
    manifests = source.recorded_manifests(folder) if folder is not None else {}
    model, tokenizer = load_pretrained(weights_dir, base_model=base_model, torch_dtype=torch_dtype)
    out.mkdir(parents=True, exist_ok=True)
    training = {"lora": model.config.lora, **{k: source.extra.get(k) for k in ("data_path", "feature_folders")}}
    if model.has_lora:
        model.llm = model.llm.merge_and_unload()
        model.config.lora = None
    model.write_token_rows_into_llm()
    relative = {name: relative_manifest(m, out).to_dict() for name, m in manifests.items()}
    config = hf_config_for(model, relative, source.base_model)
    save_hf_model(model, out, config, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    LlavidalProcessor(tokenizer, config.modalities, relative, config.template, config.use_modality_string_prefix,
                      base_dir=out).save_pretrained(out)
    # llavidal's own format beside it: load_pretrained(out) / InferenceEngine.from_pretrained(out) need nothing else
    model.config.base_model = "."
    model.config.freeze_llm = True  # the LLM is in the folder itself; nothing else to save
    model.config.full_llm_subdir = None
    model.config.feature_manifests = {name: m.to_dict() for name, m in manifests.items()}
    model.config.extra = {**model.config.extra, "exported_from": str(weights_dir)}
    model.save_pretrained(out)
    (out / "README.md").write_text(model_card(config, training, results, str(weights_dir)))
    return out


@command("llavidal export")
def main(argv: Sequence[str] | None = None) -> int:
    (args,) = parse((ExportArguments,), argv, prog="llavidal export", description=__doc__.split("\n\n")[0],
                    keymap={"output": "output_dir", "weights_dir": "weights", "torch_dtype": "dtype"})
    out = export_model(args.weights, args.output_dir, base_model=args.base_model, torch_dtype=args.dtype,
                       max_shard_size=args.max_shard_size, scores=args.scores)
    print(f"exported {args.weights} -> {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name}")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
