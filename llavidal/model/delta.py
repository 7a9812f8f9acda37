"""Apply a delta checkpoint to its base model: target = base + delta, tensor by tensor (LLaVA's apply_delta).

Run as (the LLaVA / Video-ChatGPT command; ``llavidal apply-delta`` takes the same flags)::

    python scripts/apply_delta.py --base-model-path LLaMA-7B --target-model-path LLaVA-7B-Lightening-v1-1 \
        --delta-path LLaVA-Lightning-7B-delta-v1-1

Released LLaVA weights were published as deltas against LLaMA (its licence forbade publishing the sum).
For each tensor of the delta:

- same shape as the base's: ``base + delta``;
- more rows than the base's (``embed_tokens`` / ``lm_head`` of the tokens LLaVA added): the base's rows are
  summed, the extra rows keep the delta's values (``delta[:rows, :cols] += base``);
- not in the base (``model.mm_projector.*``): kept as it is;
- rotary ``inv_freq`` buffers (old checkpoints): left out, transformers recomputes them.

Base tensors the delta lacks are not written (the delta defines the target, as upstream). Both may be
safetensors or torch ``.bin`` shards (read through :mod:`llavidal.model.weights`, one tensor at a time, so a
7B model never sits in memory twice); the target gets safetensors shards with an index, the delta's
``config.json`` and the delta's tokenizer. Sums are computed in float32 and stored in ``--dtype`` (float16,
as upstream loads both models).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llavidal.config import arg, command, parse

logger = logging.getLogger("llavidal.delta")

DTYPES = ("float16", "bfloat16", "float32")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)
"""The delta's tokenizer: copied as is (it holds the tokens the delta's extra rows belong to)."""
INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"


@dataclass
class ApplyDeltaArguments:
    """Flags of ``llavidal apply-delta`` / ``scripts/apply_delta.py`` (LLaVA's spellings, dashes or underscores)."""

    base_model_path: str = arg(None, "the base model folder (e.g. LLaMA-7B in Hugging Face format)")
    target_model_path: str = arg(None, "folder to write the result to (safetensors shards, config, tokenizer)")
    delta_path: str = arg(None, "the delta folder (e.g. LLaVA-Lightning-7B-delta-v1-1)")
    dtype: str = arg("float16", "dtype the target's floating-point tensors are stored in (upstream: float16)",
                     choices=list(DTYPES))
    max_shard_size_gb: float = arg(4.0, "largest output shard, in GB (bounds the memory used while writing)")
    overwrite: bool = arg(False, "replace weight files already in --target-model-path")

    def __post_init__(self) -> None:
        for flag in ("base_model_path", "target_model_path", "delta_path"):
            if not getattr(self, flag):
                raise ValueError(f"--{flag.replace('_', '-')} is required")
        if self.max_shard_size_gb <= 0:
            raise ValueError(f"--max_shard_size_gb must be positive, got {self.max_shard_size_gb}")


@dataclass
class DeltaReport:
    """What :func:`apply_delta` did, key by key."""

    target: Path
    summed: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    """Tensors with more rows in the delta (added tokens): base rows summed, extra rows the delta's."""
    delta_only: list[str] = field(default_factory=list)
    """Kept as they are (projector keys)."""
    base_only: list[str] = field(default_factory=list)
    """In the base, not in the delta: not written."""
    left_out: list[str] = field(default_factory=list)
    """Rotary buffers, recomputed by transformers."""
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0

    def summary(self) -> str:
        lines = [
            f"wrote {self.target} ({len(self.files)} shard(s), {self.total_bytes / 1e9:.2f} GB)",
            f"  base + delta:              {len(self.summed)} tensors",
            f"  grown (added-token rows):  {len(self.grown)} {self.grown}",
            f"  kept from the delta only:  {len(self.delta_only)} {self.delta_only[:8]}",
        ]
        if self.base_only:
            lines.append(f"  in the base only, left out: {len(self.base_only)} {self.base_only[:8]}")
        if self.left_out:
            lines.append(f"  rotary buffers left out:   {len(self.left_out)}")
        return "\n".join(lines)


def combine(name: str, base: Any, delta: Any, dtype: Any = None) -> Any:
    """One target tensor from its base tensor (or None) and its delta tensor (see the module docstring).

    Floating-point results are computed in float32 and cast to ``dtype`` (default: the delta's).
    """
    import torch

    out_dtype = dtype if (dtype is not None and delta.is_floating_point()) else delta.dtype
    if base is None or not delta.is_floating_point():
        return delta.to(out_dtype).clone()
    if check_shapes(name, tuple(base.shape), tuple(delta.shape)) == "sum":
        return (delta.to(torch.float32) + base.to(torch.float32)).to(out_dtype)
    result = delta.to(torch.float32).clone()
    result[: base.shape[0]] += base.to(torch.float32)  # the added tokens' rows keep the delta's values
    return result.to(out_dtype)


def check_shapes(name: str, base_shape: tuple[int, ...], delta_shape: tuple[int, ...]) -> str:
    """``sum`` (same shapes) or ``grow`` (a matrix whose delta has more rows: added tokens); else a
    ``ValueError`` naming the tensor and both shapes."""
    if base_shape == delta_shape:
        return "sum"
    if len(base_shape) == len(delta_shape) == 2 and delta_shape[0] > base_shape[0] and delta_shape[1] == base_shape[1]:
        return "grow"
    raise ValueError(
        f"{name}: base {base_shape} and delta {delta_shape} cannot be added (only an embedding or output matrix "
        "may have more rows in the delta, for added tokens); is this delta made against this base model?"
    )


def _is_rotary_buffer(key: str) -> bool:
    return key.endswith("rotary_emb.inv_freq")


def _shard_plan(keys: Sequence[str], sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for key in keys:
        if shards[-1] and used + sizes[key] > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    return shards


def _existing_weight_files(folder: Path) -> list[Path]:
    from llavidal.model.weights import INDEX_FILES, SHARD_PATTERNS

    found = [folder / name for name in INDEX_FILES if (folder / name).is_file()]
    for pattern in SHARD_PATTERNS:
        found.extend(sorted(folder.glob(pattern)))
    return found


def apply_delta(
    base_model_path: str | Path,
    delta_path: str | Path,
    target_model_path: str | Path,
    dtype: str = "float16",
    max_shard_bytes: int = 4 * 10**9,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> DeltaReport:
    """Write ``target = base + delta`` (see the module docstring) and return what was done."""
    import torch

    from llavidal.model.weights import LazyWeights, write_weights

    base_path, delta_path, target = (Path(p).expanduser() for p in (base_model_path, delta_path, target_model_path))
    for flag, path in (("--base-model-path", base_path), ("--delta-path", delta_path)):
        if not path.exists():
            raise FileNotFoundError(f"{flag} {path}: does not exist")
    if target.exists() and target.resolve() in (base_path.resolve(), delta_path.resolve()):
        raise ValueError(f"--target-model-path {target}: is the base or the delta folder; pass a new folder")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: one of {DTYPES}")
    out_dtype = getattr(torch, dtype)
    stale = _existing_weight_files(target) if target.is_dir() else []
    if stale and not overwrite:
        raise ValueError(f"--target-model-path {target}: already holds weights ({[p.name for p in stale][:4]}); pass "
                         "an empty folder, or --overwrite to replace them")

    base = LazyWeights(base_path)
    delta = LazyWeights(delta_path)
    report = DeltaReport(target=target)
    keys = []
    for key in delta.keys():
        if _is_rotary_buffer(key):
            report.left_out.append(key)
        else:
            keys.append(key)
    report.base_only = [k for k in base.keys() if k not in delta and not _is_rotary_buffer(k)]
    for key in keys:  # every shape is checked before anything is written
        if key in base:
            check_shapes(key, base.shape(key), delta.shape(key))
    sizes = {}
    for key in keys:
        numel = 1
        for d in delta.shape(key):
            numel *= d
        kept = delta.dtype(key)
        sizes[key] = numel * (out_dtype if kept.is_floating_point else kept).itemsize
    shards = _shard_plan(keys, sizes, max_shard_bytes)
    names = ([SINGLE_FILE_NAME] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    target.mkdir(parents=True, exist_ok=True)
    for path in stale:  # only with overwrite
        path.unlink()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(keys), desc="apply delta", unit="tensor", disable=not show_progress)
    weight_map: dict[str, str] = {}
    for shard_keys, name in zip(shards, names):
        tensors = {}
        for key in shard_keys:
            delta_tensor = delta.get(key)
            base_tensor = base.get(key) if key in base else None
            tensors[key] = combine(key, base_tensor, delta_tensor, out_dtype)
            if base_tensor is None:
                report.delta_only.append(key)
            elif tuple(base_tensor.shape) != tuple(delta_tensor.shape):
                report.grown.append(key)
            else:
                report.summed.append(key)
            weight_map[key] = name
            bar.update(1)
        report.files.append(write_weights(tensors, target / name))
        report.total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": report.total_bytes}, "weight_map": weight_map}
        (target / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    _write_config(base_path, delta_path, target, dtype, delta)
    _copy_tokenizer(base_path, delta_path, target)
    return report


def _folder_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _write_config(base_path: Path, delta_path: Path, target: Path, dtype: str, delta: Any) -> None:
    """The delta's config.json (base's, with the delta's vocabulary size, when the delta has none), stating
    the dtype written; generation_config.json copied likewise."""
    source = _folder_of(delta_path) / "config.json"
    if not source.is_file():
        source = _folder_of(base_path) / "config.json"
        if not source.is_file():
            raise FileNotFoundError(f"neither {delta_path} nor {base_path} has a config.json; the target needs one")
        logger.warning("%s has no config.json; the base's is used", delta_path)
    config = json.loads(source.read_text())
    for key in delta.keys():
        if key.endswith("embed_tokens.weight"):
            config["vocab_size"] = int(delta.shape(key)[0])
            break
    config["torch_dtype"] = dtype
    if "dtype" in config:
        config["dtype"] = dtype
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in CONFIG_FILES[1:]:
        for folder in (_folder_of(delta_path), _folder_of(base_path)):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)
                break


def _copy_tokenizer(base_path: Path, delta_path: Path, target: Path) -> None:
    for folder in (_folder_of(delta_path), _folder_of(base_path)):
        files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if files:
            if folder != _folder_of(delta_path):
                logger.warning("%s has no tokenizer files; the base's are copied (tokens the delta added are missing "
                               "from it)", delta_path)
            for file in files:
                shutil.copyfile(file, target / file.name)
            return
    logger.warning("neither %s nor %s has tokenizer files; copy a tokenizer into %s", delta_path, base_path, target)


@command("llavidal apply-delta")
def main(argv: list[str] | None = None) -> int:
    """target = base + delta, tensor by tensor (LLaVA's apply_delta)."""
    (args,) = parse((ApplyDeltaArguments,), argv, prog="llavidal apply-delta", description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = apply_delta(
        args.base_model_path, args.delta_path, args.target_model_path, dtype=args.dtype,
        max_shard_bytes=int(args.max_shard_size_gb * 10**9), overwrite=args.overwrite,
    )
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
