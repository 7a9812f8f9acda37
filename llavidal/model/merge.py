"""Merge projector weight files of LLAVIDAL's staged recipe (MMPro): later files' keys win.

Run as::

    llavidal merge-weights --inputs runs/video/trainable.safetensors runs/pose/trainable.safetensors \
        runs/object/trainable.safetensors --output runs/merged/trainable.safetensors
    python scripts/merge_weights.py --inputs video/mm_projector.bin pose/mm_projector.bin \
        --output merged/mm_projector.bin

Each stage trains some projectors; the next stage starts (``--pretrain_mm_mlp_adapter``) from the
merge. Inputs may be our ``trainable.safetensors`` (or their folders) or upstream ``mm_projector.bin``
files. When every input is upstream, the output keeps upstream key names (usable by upstream code);
otherwise upstream projector keys are renamed to ours (``projectors.<modality>.*``) and an upstream
full embedding matrix is kept as ``model.embed_tokens.weight`` (``load_trainable`` reads both). Key
layouts are translated by :mod:`llavidal.model.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from llavidal.config import ConfigError, arg, command, parse

if TYPE_CHECKING:
    from torch import Tensor

OUTPUT_FORMATS = ("auto", "llavidal", "upstream")


@dataclass
class MergeArguments:
    output: str = arg(help="output file (.safetensors, .bin, .pt, .pth) or folder (gets trainable.safetensors, "
                           "or mm_projector.bin for upstream key names)", aliases=["--output_dir"])
    inputs: list[str] = arg(default_factory=list, help="weight files or folders, in order (later keys win); "
                                                       "they may also be given as positional arguments")
    format: str = arg("auto", "key names of the output: auto = upstream when every input is upstream, else llavidal",
                      choices=OUTPUT_FORMATS)


def merge_state_dicts(
    states: Sequence[dict[str, Tensor]], upstream_format: bool
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(merged state, key -> index of the input it came from); later inputs win."""
    from llavidal.model.weights import canonical_key, upstream_key

    merged: dict[str, Tensor] = {}
    origin: dict[str, int] = {}
    rename = upstream_key if upstream_format else canonical_key
    for index, state in enumerate(states):
        for key, value in state.items():
            name = rename(key)
            merged[name] = value
            origin[name] = index
    return merged, origin


def output_file(output: Path, upstream_format: bool) -> Path:
    """``output`` itself when it names a weights file, else the usual file name inside that folder."""
    from llavidal.model.config import TRAINABLE_NAME
    from llavidal.model.weights import UPSTREAM_PROJECTOR_FILE, WEIGHT_SUFFIXES

    if output.suffix in WEIGHT_SUFFIXES:
        return output
    return output / (UPSTREAM_PROJECTOR_FILE if upstream_format else TRAINABLE_NAME)


@command("llavidal merge-weights")
def main(argv: Sequence[str] | None = None) -> int:
    from llavidal.model.weights import is_upstream_state, read_weights, resolve_trainable_file, write_weights

    args, positional = parse((MergeArguments,), argv, prog="llavidal merge-weights",
                             description="Merge projector weight files; keys of later files win.",
                             keymap={"output_dir": "output"}, return_remaining=True)
    flags = [token for token in positional if token.startswith("-")]
    if flags:
        raise ConfigError(f"llavidal merge-weights: unknown option {flags[0]!r}; see --help for the accepted options")
    inputs = list(positional) + list(args.inputs)
    if not inputs:
        raise ConfigError("give at least one input file (--inputs FILE ... or positional FILEs)")
    files = [resolve_trainable_file(p) for p in inputs]
    states = [read_weights(f) for f in files]
    all_upstream = all(is_upstream_state(s) for s in states)
    if args.format == "upstream" and not all_upstream:
        raise ConfigError(
            "--format upstream: some inputs use llavidal key names (projectors.*, token_embeddings.*), which have "
            "no upstream equivalent without the tokenizer; use --format llavidal"
        )
    upstream_format = all_upstream if args.format == "auto" else args.format == "upstream"
    merged, origin = merge_state_dicts(states, upstream_format)
    out = write_weights(merged, output_file(Path(args.output), upstream_format), metadata={"producer": "llavidal.merge"})
    print(f"merged {len(files)} file(s) into {out} ({'upstream' if upstream_format else 'llavidal'} key names):")
    for index, file in enumerate(files):
        kept = sorted(k for k, i in origin.items() if i == index)
        overridden = len(states[index]) - len(kept)
        print(f"  [{index}] {file}: {len(kept)} key(s) kept, {overridden} overridden by later files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
