"""``llavidal prepare-model``: make a model folder from files already on this machine (no downloads).

PLLaVA's ``python_scripts/hf.py`` downloads checkpoints from the Hugging Face hub into ``MODELS/``. Here
nothing is downloaded: get the files however you like (``huggingface-cli download REPO --local-dir DIR`` on a
machine with internet, a shared drive, a copy), then

    llavidal prepare-model --from /data/llava-v1.6-vicuna-7b-hf --output_dir MODELS/pllava-7b

checks that the folder is a usable model (``config.json`` that transformers reads, a tokenizer, weight files
that the index names) and links (or, with ``--mode copy``, copies) its files into ``--output_dir``, writing
``prepare_model.json`` (source, files, model type). The output folder is what ``--model_name_or_path``,
``--model-name`` and ``scripts/demo.sh MODEL_DIR`` take.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llavidal.config import arg, command, parse

HUB_MESSAGE = (
    "llavidal never downloads from the Hugging Face hub: fetch the model yourself (e.g. "
    "'huggingface-cli download {repo} --local-dir DIR' on a machine with internet) and pass that folder with --from"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class PrepareModelArguments:
    source: Optional[str] = arg(None, "local model folder (config.json, tokenizer, weights), e.g. a copy of "
                                      "llava-v1.6-vicuna-7b-hf or vicuna-7b-v1.5; never a hub id",
                                aliases=["--from", "--model_dir"])
    output_dir: Optional[str] = arg(None, "the model folder to make (e.g. MODELS/pllava-7b)", aliases=["--local_dir"])
    mode: str = arg("link", "link (symbolic links to the source files) or copy", choices=["link", "copy"])
    overwrite: bool = arg(False, "replace files already in --output_dir")
    repo_id: Optional[str] = arg(None, "accepted for PLLaVA's hf.py: the hub repository the files came from "
                                       "(recorded, never contacted)")

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("--from is required: a local model folder. " + HUB_MESSAGE.format(repo=self.repo_id or "REPO"))
        if not self.output_dir:
            raise ValueError("--output_dir is required: the model folder to make")


def check_model_folder(folder: Path) -> dict:
    """What a model folder holds (model type, tokenizer files, weight files); a ValueError naming the folder
    and what is missing when it is not usable."""
    if not folder.is_dir():
        looks_like_hub = len(folder.parts) == 2 and not folder.is_absolute() and not str(folder).startswith(".")
        hint = HUB_MESSAGE.format(repo=folder if looks_like_hub else "REPO")
        raise FileNotFoundError(f"--from {folder}: no such folder. {hint}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: no config.json; give the folder of a transformers model (it holds config.json, "
                         "the tokenizer and the weights)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err}); the download may be incomplete") from None
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{config_path}: transformers cannot read it ({err}); check model_type "
                         f"({config.get('model_type')!r}) and the transformers version") from None
    tokenizer = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not tokenizer:
        raise ValueError(f"{folder}: no tokenizer (one of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of "
                         "the model into the folder")
    weights = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                     and not p.name.startswith("training_args"))
    if not weights:
        raise ValueError(f"{folder}: no weight files (*.safetensors or pytorch_model*.bin)")
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{index}: not valid JSON ({err}); the download may be incomplete") from None
        missing = sorted(name for name in shards if not (folder / name).is_file())
        if missing:
            raise ValueError(f"{index} names {len(missing)} weight files that are not in {folder} (e.g. {missing[0]}); "
                             "the download is incomplete")
    return {"model_type": config.get("model_type"), "architectures": config.get("architectures") or [],
            "tokenizer_files": tokenizer, "weight_files": weights}


def prepare_model(source: str | os.PathLike, output_dir: str | os.PathLike, mode: str = "link",
                  overwrite: bool = False, repo_id: str | None = None) -> dict:
    """Check ``source`` and link or copy its files into ``output_dir``; returns what ``prepare_model.json`` says."""
    from llavidal.utils.io import atomic_write_json

    source, output = Path(source).expanduser(), Path(output_dir).expanduser()
    found = check_model_folder(source)
    if output.resolve() == source.resolve():
        raise ValueError(f"--output_dir {output} is the --from folder; give another folder")
    output.mkdir(parents=True, exist_ok=True)
    placed = []
    for item in sorted(source.iterdir()):
        if not item.is_file() or item.name.startswith("."):
            continue
        target = output / item.name
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise ValueError(f"{target} exists; pass --overwrite to replace it, or another --output_dir")
            target.unlink()
        if mode == "copy":
            shutil.copy2(item, target)
        else:
            target.symlink_to(item.resolve())
        placed.append(item.name)
    record = {"format": "llavidal-prepared-model/1", "source": str(source.resolve()), "mode": mode,
              "repo_id": repo_id, "files": placed, **found}
    atomic_write_json(output / "prepare_model.json", record)
    return record


@command("llavidal prepare-model")
def main(argv: list[str] | None = None) -> int:
    """Make a model folder from local files (validated; linked or copied). Never downloads."""
    (args,) = parse((PrepareModelArguments,), argv, prog="llavidal prepare-model", description=main.__doc__)
    record = prepare_model(args.source, args.output_dir, args.mode, args.overwrite, args.repo_id)
    print(f"{args.output_dir}: {len(record['files'])} files {'linked' if args.mode == 'link' else 'copied'} from "
          f"{record['source']} (model_type {record['model_type']}, tokenizer {', '.join(record['tokenizer_files'])}, "
          f"{len(record['weight_files'])} weight files)")
    return 0


if __name__ == "__main__":
    import sys

    from llavidal.model.prepare import main as _main

    sys.exit(_main())
