"""Export a standalone Hugging Face model folder from LLAVIDAL weights.

Run as::

    llavidal export --weights runs/stage3 --output_dir exported/llavidal-stage3 [--base_model PATH]

The folder holds the LLM with its embeddings resized to the modality tokens (their trained rows
written in; LoRA adapters merged), the tokenizer with those tokens, and ``llavidal_config.json`` +
``trainable.safetensors`` (projectors and token rows) recording ``base_model: "."``, so that
``load_pretrained(folder)`` / ``InferenceEngine.from_pretrained(folder)`` need nothing else, and
``AutoModelForCausalLM.from_pretrained(folder)`` loads the text model alone. With tied input/output
embeddings (SmolLM2) the written rows also become the output rows of the modality tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llavidal.config import arg, command, parse


class OutputExistsError(FileExistsError, ValueError):
    """The output folder already holds files (a user error: the command reports it and exits 2)."""


@dataclass
class ExportArguments:
    weights: str = arg(help="folder written by save_pretrained / training", aliases=["--weights_dir"])
    output_dir: str = arg(help="new (or empty) folder for the standalone model", aliases=["--output"])
    base_model: str | None = arg(None, "base LLM folder (overrides the one in llavidal_config.json)")
    dtype: str | None = arg(None, "float32, bfloat16 or float16; unset keeps the stored dtype", aliases=["--torch_dtype"])


def export_model(
    weights_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_model: str | None = None,
    torch_dtype: Any = None,
) -> Path:
    """Write the merged standalone folder; returns its path."""
    from llavidal.model.builder import load_pretrained

    model, tokenizer = load_pretrained(weights_dir, base_model=base_model, torch_dtype=torch_dtype)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out}: exists and is not empty; choose a new output folder")
    out.mkdir(parents=True, exist_ok=True)
    if model.has_lora:
        model.llm = model.llm.merge_and_unload()
        model.config.lora = None
    model.write_token_rows_into_llm()
    model.llm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.config.base_model = "."
    model.config.freeze_llm = True  # the LLM is in the folder itself; nothing else to save
    model.config.full_llm_subdir = None
    model.config.extra = {**model.config.extra, "exported_from": str(weights_dir)}
    model.save_pretrained(out)
    return out


@command("llavidal export")
def main(argv: Sequence[str] | None = None) -> int:
    (args,) = parse((ExportArguments,), argv, prog="llavidal export", description=__doc__.split("\n\n")[0],
                    keymap={"output": "output_dir", "weights_dir": "weights", "torch_dtype": "dtype"})
    out = export_model(args.weights, args.output_dir, base_model=args.base_model, torch_dtype=args.dtype)
    print(f"exported {args.weights} -> {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
