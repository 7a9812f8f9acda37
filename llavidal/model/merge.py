"""Merge projector weight files of LLAVIDAL's staged recipe (MMPro): later files' keys win.

Run as::

    python scripts/merge_weights.py --inputs runs/video/trainable.safetensors runs/pose/trainable.safetensors \
        runs/object/trainable.safetensors --output runs/merged/trainable.safetensors
    python scripts/merge_weights.py --inputs video/mm_projector.bin pose/mm_projector.bin \
        --output merged/mm_projector.bin

Each stage trains some projectors; the next stage starts (``--pretrain_mm_mlp_adapter``) from the
merge. Inputs may be our ``trainable.safetensors`` (or their folders) or upstream ``mm_projector.bin``
files. When every input is upstream, the output keeps upstream key names (usable by upstream code);
otherwise upstream projector keys are renamed to ours (``projectors.<modality>.*``) and an upstream
full embedding matrix is kept as ``model.embed_tokens.weight`` (``load_trainable`` reads both).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from llavidal.model.config import TRAINABLE_NAME
from llavidal.model.llavidal_model import UPSTREAM_PROJECTOR_FILE, read_state_dict, resolve_trainable_file
from llavidal.model.modality import default_modalities

logger = logging.getLogger(__name__)

_OUR_HEADS = ("projectors", "token_embeddings", "lora")


def _upstream_heads() -> dict[str, str]:
    return {spec.upstream_projector_key: spec.name for spec in default_modalities().values()}


def is_upstream_state(state: dict[str, Tensor]) -> bool:
    """True when no key uses our names (projectors.*, token_embeddings.*, lora.*)."""
    return not any(key.split(".", 1)[0] in _OUR_HEADS for key in state)


def upstream_key(key: str) -> str:
    """Upstream keys in their usual ``model.``-prefixed form."""
    return key if key.startswith("model.") else "model." + key


def canonical_key(key: str) -> str:
    """Our key name for any key: upstream projector heads become ``projectors.<modality>``."""
    bare = key[len("model."):] if key.startswith("model.") else key
    head, _, rest = bare.partition(".")
    heads = _upstream_heads()
    if head in heads:
        return f"projectors.{heads[head]}.{rest}"
    if bare == "embed_tokens.weight":
        return "model.embed_tokens.weight"
    return bare


def merge_state_dicts(
    states: Sequence[dict[str, Tensor]], upstream_format: bool
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(merged state, key -> index of the input it came from); later inputs win."""
    merged: dict[str, Tensor] = {}
    origin: dict[str, int] = {}
    rename = upstream_key if upstream_format else canonical_key
    for index, state in enumerate(states):
        for key, value in state.items():
            name = rename(key)
            merged[name] = value
            origin[name] = index
    return merged, origin


def _output_file(output: Path, upstream_format: bool) -> Path:
    if output.suffix in (".safetensors", ".bin", ".pt", ".pth"):
        return output
    return output / (UPSTREAM_PROJECTOR_FILE if upstream_format else TRAINABLE_NAME)


def write_state_dict(state: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "llavidal.merge"})
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="merge_weights", description="Merge projector weight files; keys of later files win."
    )
    parser.add_argument("inputs_positional", nargs="*", metavar="INPUT", help="weight files or folders, in order")
    parser.add_argument("--inputs", nargs="+", default=[], help="weight files or folders, in order (later wins)")
    parser.add_argument("--output", required=True, help="output file (.safetensors or .bin) or folder")
    parser.add_argument(
        "--format", choices=("auto", "llavidal", "upstream"), default="auto",
        help="key names of the output: auto = upstream when every input is upstream, else llavidal",
    )
    args = parser.parse_args(argv)
    inputs = list(args.inputs_positional) + list(args.inputs)
    if len(inputs) < 1:
        parser.error("give at least one input file")
    files = [resolve_trainable_file(p) for p in inputs]
    states = [read_state_dict(f) for f in files]
    all_upstream = all(is_upstream_state(s) for s in states)
    if args.format == "upstream" and not all_upstream:
        raise SystemExit(
            "--format upstream: some inputs use llavidal key names (projectors.*, token_embeddings.*), which have "
            "no upstream equivalent without the tokenizer; use --format llavidal"
        )
    upstream_format = all_upstream if args.format == "auto" else args.format == "upstream"
    merged, origin = merge_state_dicts(states, upstream_format)
    out = _output_file(Path(args.output), upstream_format)
    write_state_dict(merged, out)
    print(f"merged {len(files)} file(s) into {out} ({'upstream' if upstream_format else 'llavidal'} key names):")
    for index, file in enumerate(files):
        kept = sorted(k for k, i in origin.items() if i == index)
        overridden = len(states[index]) - len(kept)
        print(f"  [{index}] {file}: {len(kept)} key(s) kept, {overridden} overridden by later files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
