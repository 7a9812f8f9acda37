"""One way to configure every command: typed dataclasses become flags.

Every ``llavidal`` command (and every script at an upstream path) parses its flags here:

    @dataclass
    class SynthArguments:
        out: str = arg(help="output folder", aliases=["--output_dir"])
        seed: int = 0
        \"\"\"Random seed (a field's docstring is its --help).\"\"\"

    @command("llavidal synth")
    def main(argv=None) -> int:
        (args,) = parse((SynthArguments,), argv, prog="llavidal synth")

Sources, later wins: the dataclass defaults < ``experiment=NAME`` and ``--config FILE.yaml`` (in the order
given) < ``key=value`` overrides and ``--flag value`` (in the order given). That is:

- ``--flag value``, ``--flag=value``, ``--flag-name`` for ``--flag_name``; booleans as ``--flag``,
  ``--flag True``, ``--flag true`` or ``--no_flag`` (transformers' ``HfArgumentParser`` does the typing);
- ``--config file.yaml``: a mapping of field names to values (nested mappings flatten: ``model: {lora_r: 8}``
  sets ``lora_r``); repeatable;
- Hydra-style ``key=value`` and ``group.key=value`` (the last dotted part names the field, or the whole
  key with dots as underscores), ``+key=value`` alike;
- ``experiment=NAME``: ``configs/experiment/NAME.yaml`` (in the current folder or the project's), or a
  path; its ``defaults:`` list names other files of the same folder to apply first;
- PLLaVA's shape: a config file as the first argument (``.yaml``, ``.json``, or a PLLaVA ``.py`` config whose
  simple assignments are read with ``ast.literal_eval``, never executed), then bare ``key value`` pairs
  (dotted keys: ``model.lora_r 8 optimizer.lr 2e-5``). Upstream key names (:data:`UPSTREAM_KEYS`: PLLaVA's
  ``model.repo_id``, ``optimizer.lr``, ``scheduler.epochs``; LSTP's ``trainer.max_epochs``) map to fields.

``--help`` is answered from the dataclasses' source without importing them (no torch, no transformers),
so it is instant for every command; a test checks it lists exactly the flags the real parser accepts.
:func:`command` is the one error wrapper: a user's mistake prints ``prog: error: what, where, what to do``
and exits 2 instead of a traceback (``LLAVIDAL_TRACEBACK=1`` shows the traceback too).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import json
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

CONFIG_FLAG = "--config"
EXPERIMENT_KEY = "experiment"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_DIRS = ("configs/experiment",)
"""Folders (relative to the current folder, then to the project) that hold ``experiment=NAME`` files."""


class ConfigError(ValueError):
    """A config file, override or flag is wrong; the message names it and what to do."""


def arg(default: Any = dataclasses.MISSING, help: str = "", *, aliases: Sequence[str] = (),
        choices: Sequence[Any] | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its ``--help`` text, extra flag names and choices."""
    metadata: dict[str, Any] = {}
    if help:
        metadata["help"] = help
    if aliases:
        metadata["aliases"] = list(aliases)
    if choices is not None:
        metadata["choices"] = list(choices)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# Dataclasses named by reference ("module:Class"), so that --help never imports them

DataclassRef = "type | str"


def resolve_type(ref: Any) -> type:
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


def _module_file(module: str) -> Path | None:
    """The source file of ``module`` found without executing it (nor its parent packages)."""
    if module == "__main__":  # a command run as a script: its own file
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        return Path(main_file) if main_file else None
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ValueError, ImportError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        return Path(spec.origin) if spec.origin else None
    folder = Path(next(iter(spec.submodule_search_locations or []), ""))
    for part in parts[1:-1]:
        folder = folder / part
    for candidate in (folder / f"{parts[-1]}.py", folder / parts[-1] / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@dataclasses.dataclass
class _StaticField:
    name: str
    annotation: str
    default: str | None
    help: str
    aliases: list[str]
    required: bool


@functools.lru_cache(maxsize=None)
def _parse_module(module: str) -> tuple[ast.Module, str] | None:
    path = _module_file(module)
    if path is None:
        return None
    source = path.read_text(encoding="utf-8")
    return ast.parse(source), module


def _constant(module: str, name: str, depth: int = 0) -> Any:
    """The literal value of a module-level constant, following ``from x import NAME`` (without importing)."""
    parsed = _parse_module(module)
    if parsed is None or depth > 3:
        raise LookupError(name)
    tree, _ = parsed
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return _literal(module, node.value, depth + 1)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name and node.value:
            return _literal(module, node.value, depth + 1)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _constant(node.module, alias.name, depth + 1)
    raise LookupError(name)


def _literal(module: str, node: ast.AST, depth: int = 0) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        pass
    if isinstance(node, ast.Name):
        return _constant(module, node.id, depth)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(module, node.left, depth), _literal(module, node.right, depth)
        return left + right if isinstance(node.op, ast.Add) else left * right
    if isinstance(node, ast.JoinedStr):
        return "".join(str(_literal(module, v.value, depth)) if isinstance(v, ast.FormattedValue) else str(v.value)
                       for v in node.values)
    if isinstance(node, ast.Dict):
        return {_literal(module, k, depth): _literal(module, v, depth) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(module, e, depth) for e in node.elts]
    raise LookupError(ast.unparse(node))


def _static_fields(ref: str) -> list[_StaticField]:
    """The fields of dataclass ``module:Class`` (bases first), read from source."""
    module, _, class_name = ref.partition(":")
    parsed = _parse_module(module)
    if parsed is None:
        raise ConfigError(f"{ref}: module source not found")
    tree, _ = parsed
    classdef = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if classdef is None:
        raise ConfigError(f"{ref}: class not found in its module")
    fields: dict[str, _StaticField] = {}
    for base in classdef.bases:
        base_ref = _base_ref(tree, module, base)
        if base_ref:
            for item in _static_fields(base_ref):
                fields[item.name] = item
    body = classdef.body
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation = ast.unparse(node.annotation)
        if annotation.startswith(("ClassVar", "typing.ClassVar", "InitVar")):
            continue
        name = node.target.id
        default: str | None = None
        help_text, aliases, required, init = "", [], node.value is None, True
        value = node.value
        if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in ("field", "arg", "HfArg", "_help"):
            keywords = {k.arg: k.value for k in value.keywords if k.arg}
            func = ast.unparse(value.func).split(".")[-1]
            if func == "arg" and value.args:
                keywords.setdefault("default", value.args[0])
            if func in ("arg", "_help") and len(value.args) > 1:
                keywords.setdefault("help", value.args[1])
            if func == "_help" and value.args:
                keywords.setdefault("help", value.args[0])
            if "init" in keywords and isinstance(keywords["init"], ast.Constant) and keywords["init"].value is False:
                init = False
            required = "default" not in keywords and "default_factory" not in keywords and func != "_help"
            if "default" in keywords:
                default = _show(module, keywords["default"])
            elif "default_factory" in keywords:
                default = _show(module, keywords["default_factory"], factory=True)
            meta = keywords.get("metadata")
            if meta is not None:
                try:
                    meta_value = _literal(module, meta)
                except LookupError:
                    meta_value = {}
                help_text = str(meta_value.get("help", "")) if isinstance(meta_value, dict) else ""
                aliases = list(meta_value.get("aliases", []) or []) if isinstance(meta_value, dict) else []
            for key in ("help", "aliases"):
                if key in keywords:
                    try:
                        found = _literal(module, keywords[key])
                    except LookupError:
                        found = ast.unparse(keywords[key])
                    if key == "help":
                        help_text = str(found)
                    else:
                        aliases = [found] if isinstance(found, str) else list(found)
        elif value is not None:
            default = _show(module, value)
        following = body[index + 1] if index + 1 < len(body) else None
        if (not help_text and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            help_text = " ".join(following.value.value.split())
        if not init:
            fields.pop(name, None)
            continue
        fields[name] = _StaticField(name, annotation, default, " ".join(help_text.split()), aliases, required)
    return list(fields.values())


def _show(module: str, node: ast.AST, factory: bool = False) -> str:
    try:
        value = _literal(module, node)
        return repr(value)
    except LookupError:
        text = ast.unparse(node)
        if factory and text in ("list", "dict"):
            return "[]" if text == "list" else "{}"
        return text


def _base_ref(tree: ast.Module, module: str, base: ast.AST) -> str | None:
    """``module:Class`` of a dataclass base, when it is a dataclass we can read (else None)."""
    text = ast.unparse(base)
    if text == "transformers.TrainingArguments" or text.endswith("training_args.TrainingArguments"):
        return "transformers.training_args:TrainingArguments"
    if "." in text:
        return None
    if any(isinstance(n, ast.ClassDef) and n.name == text for n in tree.body):
        return f"{module}:{text}"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == text:
                    source = node.module if node.level == 0 else _relative(module, node.module, node.level)
                    if alias.name == "TrainingArguments" and source.startswith("transformers"):
                        return "transformers.training_args:TrainingArguments"
                    return f"{source}:{alias.name}"
    return None


def _relative(module: str, name: str, level: int) -> str:
    parts = module.split(".")[: -level]
    return ".".join(parts + [name])


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help: ``metadata["help"]``, else the docstring right after the field (bases too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        module = getattr(klass, "__module__", "")
        if not dataclasses.is_dataclass(klass) or module == "builtins":
            continue
        try:
            for item in _static_fields(f"{module}:{klass.__qualname__}"):
                if item.help:
                    docs[item.name] = item.help
        except (ConfigError, OSError, SyntaxError, ValueError):
            continue
    for item in dataclasses.fields(cls):
        if item.metadata.get("help"):
            docs[item.name] = " ".join(str(item.metadata["help"]).split())
    return docs


# ---------------------------------------------------------------------------------------------------
# Config files, experiments and key=value overrides -> flags

CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".py")
"""A first argument with one of these suffixes is a config file (PLLaVA: ``train.py config.py key value ...``)."""

UPSTREAM_KEYS = {
    # PLLaVA (tasks/train/config_pllava_nframe.py and its "key value" overrides)
    "model.repo_id": "model_name_or_path",
    "model.use_lora": "lora_enable",
    "model.torch_dtype": "torch_dtype",
    "model.pooling_shape": "video_pool",
    "optimizer.lr": "learning_rate",
    "optimizer.weight_decay": "weight_decay",
    "scheduler.sched": "lr_scheduler_type",
    "scheduler.epochs": "num_train_epochs",
    "scheduler.warmup_ratio": "warmup_ratio",
    "batch_size": "per_device_train_batch_size",
    "num_workers": "dataloader_num_workers",
    "max_txt_l": "model_max_length",
    "max_train_steps": "max_steps",
    # LSTP-Chat (Hydra: configs/experiment/*.yaml over data.*, model.*, trainer.*)
    "model.optimizer.lr": "learning_rate",
    "model.optimizer.weight_decay": "weight_decay",
    "data.batch_size": "per_device_train_batch_size",
    "data.num_workers": "dataloader_num_workers",
    "data.nframe": "num_frames",
    "trainer.max_epochs": "num_train_epochs",
    "trainer.max_steps": "max_steps",
    "trainer.accumulate_grad_batches": "gradient_accumulation_steps",
    "trainer.gradient_clip_val": "max_grad_norm",
    "trainer.log_every_n_steps": "logging_steps",
    "seed": "seed",
}
"""Upstream configuration keys -> field names; used when the field exists and the key is not itself a field."""


def _upstream_keymap(known: dict[str, Any]) -> dict[str, str]:
    return {key: name for key, name in UPSTREAM_KEYS.items() if name in known and key not in known}


def _py_value(node: ast.AST, scope: dict[str, Any]) -> Any:
    """A value of a PLLaVA ``.py`` config, read without executing it: literals, ``dict(...)`` calls, names
    of earlier assignments, f-strings, ``+``/``*``. Anything else raises ``ValueError``."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Name) and node.id in scope:
        return scope[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {k.arg: _py_value(k.value, scope) for k in node.keywords if k.arg}
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_py_value(k, scope): _py_value(v, scope) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_py_value(e, scope) for e in node.elts]
    if isinstance(node, ast.JoinedStr):
        return "".join(str(_py_value(v.value, scope)) if isinstance(v, ast.FormattedValue) else str(v.value)
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _py_value(node.left, scope), _py_value(node.right, scope)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(ast.unparse(node))


def _resolve_refs(value: Any, scope: dict[str, Any]) -> Any:
    """PLLaVA's lazy ``"${name}"`` / ``"${a.b}"`` strings -> the value they name (else left as written)."""
    if isinstance(value, dict):
        return {k: _resolve_refs(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, scope) for v in value]
    if isinstance(value, str) and value.startswith("${") and value.endswith("}") and value.count("${") == 1:
        found: Any = scope
        for part in value[2:-1].split("."):
            if not isinstance(found, dict) or part not in found:
                return value
            found = found[part]
        return found
    return value


def load_py_config(path: Path) -> tuple[dict, list[str]]:
    """The module-level assignments of a PLLaVA-style ``.py`` config (never executed) and the names of the
    assignments that are not plain data (skipped)."""
    if not path.is_file():
        raise ConfigError(f"config {path}: no such file")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise ConfigError(f"{path}: not valid Python ({err.msg}, line {err.lineno}); fix the file") from None
    scope: dict[str, Any] = {}
    skipped: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            scope[name] = _py_value(value, scope)
        except (ValueError, TypeError, KeyError):
            skipped.append(name)
    return _resolve_refs(scope, scope), skipped


def _flat_keys(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            items += _flat_keys(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _positional_config(path: Path, known: dict[str, Any], keymap: dict[str, str]) -> tuple[list[str], set[str]]:
    """Flags from a config file given as the first argument, and the keys it defines (which bare
    ``key value`` pairs may override even when they have no equivalent here)."""
    if path.suffix == ".py":
        values, skipped = load_py_config(path)
        tokens: list[str] = []
        ignored = list(skipped)
        for key, value in _flat_keys(values):
            name = _field_name(key, known, keymap)
            if name is None:
                ignored.append(key)
            elif value not in (None, False, "") or known[name] in (bool, bool | None):
                # PLLaVA writes False / None / "" for "off" (deepspeed=False, debug=False): the default here
                tokens += _as_tokens(name, _plain(value, known[name]), known[name])
        if ignored:
            import logging

            logging.getLogger("llavidal.config").warning(
                "%s: %d settings have no equivalent here and are ignored: %s", path, len(ignored),
                ", ".join(ignored[:12]) + (" ..." if len(ignored) > 12 else ""))
        return tokens, {key for key, _ in _flat_keys(values)} | set(skipped)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"config {path}: no such file")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); fix the file") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of option names to values")
    else:
        values = _load_yaml(path, "config")
    tokens = []
    for name, value in _flatten(values, known, keymap, str(path)):
        tokens += _as_tokens(name, value, known[name])
    return tokens, set()


def _plain(value: Any, kind: Any) -> Any:
    """A PLLaVA value for a field: lists for ``str`` fields become comma lists (``lora_target_modules``)."""
    if isinstance(value, (list, tuple)) and not _is_list(kind) and value:
        if all(isinstance(v, str) for v in value):
            return ",".join(value)  # lora_target_modules ["q_proj", "v_proj"] -> "q_proj,v_proj"
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return ",".join(str(v) for v in value)  # pooling_shape (16, 12, 12) -> "16,12,12"
    return value


def _bare_value(text: str, kind: Any) -> Any:
    """A bare ``key value`` pair's value, read as PLLaVA does (``literal_eval``, else the text)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return text  # keep the user's spelling; the flag's type converts it
    return _plain(value, kind)


def _load_yaml(path: Path, what: str) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err}); fix the file") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    return values


def find_experiment(name: str, dirs: Iterable[str | os.PathLike] = EXPERIMENT_DIRS) -> Path:
    """``experiment=NAME`` -> its YAML file (a path, or NAME.yaml under the experiment folders)."""
    direct = Path(name)
    if direct.suffix in (".yaml", ".yml") and direct.is_file():
        return direct
    tried = []
    for folder in dirs:
        for root in (Path.cwd(), PROJECT_ROOT):
            for suffix in (".yaml", ".yml"):
                candidate = root / folder / f"{name}{suffix}"
                tried.append(candidate)
                if candidate.is_file():
                    return candidate
    known = sorted({p.stem for folder in dirs for root in (Path.cwd(), PROJECT_ROOT)
                    for p in (root / folder).glob("*.y*ml")})
    raise ConfigError(
        f"experiment={name}: no such experiment (looked for {', '.join(str(p) for p in tried[:2])}); "
        f"known: {', '.join(known) or 'none'}"
    )


def _experiment_values(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    values = _load_yaml(path, "experiment")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: its defaults include itself")
    merged: dict = {}
    for entry in values.pop("defaults", None) or []:
        if entry == "_self_" or not isinstance(entry, str):
            continue  # Hydra group overrides (dicts) name config groups this project does not have
        _deep_merge(merged, _experiment_values(find_experiment(entry.lstrip("/"), [str(path.parent)]),
                                               seen + (path.resolve(),)))
    return _deep_merge(merged, values)


def _deep_merge(into: dict, values: dict) -> dict:
    """``values`` over ``into``, group by group (as Hydra merges a file over its defaults)."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def _flatten(values: dict, known: dict[str, Any], keymap: dict[str, str], source: str,
             prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        dotted = f"{prefix}{str(key).lstrip('-+')}"
        name = _field_name(dotted, known, keymap)
        if name is None and isinstance(value, dict):
            items += _flatten(value, known, keymap, source, dotted + ".")
            continue
        if name is None:
            raise ConfigError(_unknown(dotted, known, source))
        items.append((name, value))
    return items


def _field_name(key: str, known: dict[str, Any], keymap: dict[str, str]) -> str | None:
    for candidate in (key, key.replace("-", "_")):
        if candidate in keymap:
            return keymap[candidate]
    for candidate in (key, key.replace(".", "_"), key.split(".")[-1]):
        candidate = candidate.replace("-", "_")
        if candidate in known:
            return candidate
    return None


def _unknown(key: str, known: Iterable[str], source: str) -> str:
    close = difflib.get_close_matches(key.split(".")[-1], list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see --help for the accepted options"
    return f"{source}: unknown option {key!r}{hint}"


def _as_tokens(name: str, value: Any, kind: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{name}", "true" if value else "false"]
    if isinstance(value, (list, tuple)) and _is_list(kind):
        return [f"--{name}", *[str(v) for v in value]] if value else []
    if isinstance(value, (dict, list, tuple)):
        return [f"--{name}", json.dumps(value)]
    return [f"--{name}", str(value)]


def _is_list(kind: Any) -> bool:
    import typing

    origin = typing.get_origin(kind)
    if origin is list:
        return True
    return any(typing.get_origin(a) is list for a in typing.get_args(kind))


def _is_override(token: str) -> bool:
    if token.startswith("-") or "=" not in token:
        return False
    key = token.split("=", 1)[0].lstrip("+")
    return bool(key) and all(part.replace("-", "_").isidentifier() for part in key.split("."))


def _takes_value(token: str, known: dict[str, Any], keymap: dict[str, str]) -> bool:
    """Whether ``token`` is the ``--flag`` of a field that is not a bool (so the next token is its value)."""
    name = _field_name(token[2:], known, keymap) if token.startswith("--") and "=" not in token else None
    return name is not None and known[name] not in (bool, bool | None)


def expand_argv(argv: Sequence[str], known: dict[str, Any], keymap: dict[str, str] | None = None,
                experiment_dirs: Iterable[str] = EXPERIMENT_DIRS, positional_config: bool = True) -> list[str]:
    """Turn ``--config FILE``, ``experiment=NAME`` and ``key=value`` into plain ``--flag value`` tokens.

    With ``positional_config`` (commands that take no positional arguments), a first argument named
    ``*.yaml|.yml|.json|.py`` is a config file followed by bare ``key value`` pairs (PLLaVA's shape).
    ``known`` maps field names to their types. Files come first (in the order given), then the command
    line's overrides and flags in their order, so that the command line wins.
    """
    import yaml

    keymap = {**_upstream_keymap(known), **(keymap or {})}
    files: list[str] = []
    rest: list[str] = []
    tokens = list(argv)
    index = 0
    bare_pairs = False
    config_keys: set[str] = set()
    if positional_config and tokens and not tokens[0].startswith("-") and not _is_override(tokens[0]) \
            and Path(tokens[0]).suffix in CONFIG_SUFFIXES:
        # PLLaVA: `train.py CONFIG key value key value ...`
        files, config_keys = _positional_config(Path(tokens[0]), known, keymap)
        bare_pairs, index = True, 1
    while index < len(tokens):
        token = tokens[index]
        if bare_pairs and not token.startswith("-") and not _is_override(token) and tokens[index - 1].startswith("--") \
                and index > 1 and _field_name(token, known, keymap) is None:
            rest.append(token)  # the value of the flag before it (--bf16 True, a list flag)
            index += 1
            continue
        if bare_pairs and not token.startswith("-") and not _is_override(token):
            if index + 1 >= len(tokens):
                raise ConfigError(f"{token!r} has no value; after a config file, settings come as `key value` pairs")
            name = _field_name(token, known, keymap)
            if name is None and token not in config_keys:
                raise ConfigError(_unknown(token, known, f"setting {token!r} (a `key value` pair)"))
            if name is not None:
                rest += _as_tokens(name, _bare_value(tokens[index + 1], known[name]), known[name]) \
                    or [f"--{name}", tokens[index + 1]]
            index += 2
            continue
        if bare_pairs and _takes_value(token, known, keymap) and index + 1 < len(tokens):
            rest += [token, tokens[index + 1]]  # a flag's value is not a key
            index += 2
            continue
        if token == CONFIG_FLAG:
            if index + 1 >= len(tokens):
                raise ConfigError("--config needs a YAML file")
            path = Path(tokens[index + 1])
            for name, value in _flatten(_load_yaml(path, "--config"), known, keymap, str(path)):
                files += _as_tokens(name, value, known[name])
            index += 2
            continue
        if token.startswith(CONFIG_FLAG + "="):
            path = Path(token.split("=", 1)[1])
            for name, value in _flatten(_load_yaml(path, "--config"), known, keymap, str(path)):
                files += _as_tokens(name, value, known[name])
        elif _takes_value(token, known, keymap) and index + 1 < len(tokens) and _is_override(tokens[index + 1]):
            rest += [token, tokens[index + 1]]  # a flag's own value with "=" in it: --train_flag max_steps=4
            index += 1
        elif _is_override(token):
            key, text = token.split("=", 1)
            key = key.lstrip("+")
            if key == EXPERIMENT_KEY and EXPERIMENT_KEY not in known:
                path = find_experiment(text, experiment_dirs)
                for name, value in _flatten(_experiment_values(path), known, keymap, str(path)):
                    files += _as_tokens(name, value, known[name])
            else:
                name = _field_name(key, known, keymap)
                if name is None:
                    raise ConfigError(_unknown(key, known, f"override {token!r}"))
                try:
                    value = yaml.safe_load(text) if text else ""
                except yaml.YAMLError:
                    value = text
                if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    value = text  # keep the user's spelling ("1e-4", "007"); the flag's type converts it
                elif isinstance(value, bool) and known[name] not in (bool, bool | None):
                    value = text  # YAML reads "no" / "off" as false: save_strategy=no means "no"
                rest += _as_tokens(name, value, known[name]) or [f"--{name}", text]
        else:
            rest.append(token)
        index += 1
    return files + rest


# ---------------------------------------------------------------------------------------------------
# Parsing


HELP_EPILOG = (
    "Configuration: --config FILE.yaml (field: value; repeatable), experiment=NAME "
    "(configs/experiment/NAME.yaml), and key=value or group.key=value overrides; the command line wins. "
    "PLLaVA's shape also works: a config file first (FILE.yaml, .json, or a .py config, read, never run), then "
    "'key value' pairs."
)


def _known_fields(types: Sequence[type]) -> dict[str, Any]:
    import typing

    known: dict[str, Any] = {}
    for cls in types:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.init:
                known[item.name] = hints.get(item.name, str)
    return known


def _alias_keymap(types: Sequence[type]) -> dict[str, str]:
    """Every ``--alias`` of a field, as a ``key=value`` / YAML key (``clip_feat_path`` -> ``output_dir``)."""
    keymap: dict[str, str] = {}
    for cls in types:
        for item in dataclasses.fields(cls):
            aliases = item.metadata.get("aliases") or []
            for alias in [aliases] if isinstance(aliases, str) else aliases:
                if alias.startswith("--"):
                    keymap[alias[2:].replace("-", "_")] = item.name
    return keymap


def make_parser(types: Sequence[Any], prog: str, description: str | None = None):
    """transformers' ``HfArgumentParser`` over ``types``, with help from field docstrings."""
    from transformers.hf_argparser import HfArgumentParser

    classes = [resolve_type(t) for t in types]
    parser = HfArgumentParser(classes, prog=prog, description=description, epilog=HELP_EPILOG)
    parser.add_argument(CONFIG_FLAG, action="append", metavar="FILE.yaml",
                        help="YAML file of option values (applied before the command line's flags)")
    docs: dict[str, str] = {}
    for cls in classes:
        docs.update(field_docs(cls))
    for action in parser._actions:
        if not action.help and action.dest in docs:
            action.help = docs[action.dest]
    return parser


def parse(types: Sequence[Any], argv: Sequence[str] | None = None, *, prog: str, description: str | None = None,
          keymap: dict[str, str] | None = None, experiment_dirs: Iterable[str] = EXPERIMENT_DIRS,
          return_remaining: bool = False) -> tuple:
    """Parse ``argv`` into one instance of each dataclass in ``types`` (classes or ``"module:Class"``).

    ``keymap`` maps other spellings (upstream names, dotted Hydra keys) to field names. ``--help`` prints
    the flags without importing the dataclasses' modules and exits. Errors in files or overrides raise
    :class:`ConfigError`; a dataclass's own validation raises its ``ValueError``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(static_help(types, prog=prog, description=description))
        raise SystemExit(0)
    classes = [resolve_type(t) for t in types]
    known = _known_fields(classes)
    expanded = expand_argv(argv, known, {**_alias_keymap(classes), **(keymap or {})}, experiment_dirs,
                           positional_config=not return_remaining)
    parser = make_parser(classes, prog, description)
    namespace, remaining = parser.parse_known_args(expanded)
    if remaining and not return_remaining:
        flags = [r for r in remaining if r.startswith("-")]
        parser.error(_unknown(flags[0].lstrip("-"), known, "command line") if flags
                     else f"unexpected arguments: {' '.join(remaining)}")
    values = vars(namespace)
    values.pop("config", None)
    outputs = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        outputs.append(cls(**{k: v for k, v in values.items() if k in names}))
    return (*outputs, remaining) if return_remaining else tuple(outputs)


def flag_names(types: Sequence[Any]) -> set[str]:
    """Every ``--flag`` the real parser accepts for ``types`` (imports them)."""
    parser = make_parser(types, prog="x")
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option not in ("--help", CONFIG_FLAG)}


def static_flag_names(types: Sequence[Any]) -> set[str]:
    """Every ``--flag`` that :func:`static_help` lists (reads the source only)."""
    names: set[str] = set()
    for item in (f for t in types for f in _fields_for_help(t)):
        names.add(f"--{item.name}")
        if "_" in item.name:
            names.add(f"--{item.name.replace('_', '-')}")
        if item.default == "True" and item.annotation.replace(" ", "") in ("bool", "bool|None", "Optional[bool]"):
            names |= {f"--no_{item.name}", f"--no-{item.name.replace('_', '-')}"}
        names |= {a for a in item.aliases if a.startswith("--")}
    return names


def _fields_for_help(ref: Any) -> list[_StaticField]:
    if isinstance(ref, str):
        return _static_fields(ref)
    return _static_fields(f"{ref.__module__}:{ref.__qualname__}")


def static_help(types: Sequence[Any], *, prog: str, description: str | None = None) -> str:
    """``--help`` text for ``types`` read from their source (nothing is imported)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=HELP_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True)
    parser.add_argument(CONFIG_FLAG, metavar="FILE.yaml",
                        help="YAML file of option values (applied before the command line's flags)")
    for ref in types:
        title = ref.partition(":")[2] if isinstance(ref, str) else ref.__name__
        group = parser.add_argument_group(title)
        for item in _fields_for_help(ref):
            names = [f"--{item.name}", *[a for a in item.aliases if a.startswith("-")]]
            text = item.help or ""
            text = textwrap.shorten(text, 400) if len(text) > 400 else text
            suffix = " (required)" if item.required else (f" (default: {item.default})" if item.default is not None else "")
            group.add_argument(*names, dest=f"_{item.name}", metavar=_metavar(item.annotation),
                               help=(text + suffix).replace("%", "%%"))
    return parser.format_help()


def _metavar(annotation: str) -> str:
    text = annotation.replace("typing.", "").replace(" | None", "").replace("None | ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1]
    if text.startswith(("list[", "List[")):
        return _metavar(text[5:-1]) + " ..."
    return text.upper() if text in ("str", "int", "float", "bool") else "VALUE"


# ---------------------------------------------------------------------------------------------------
# The one error wrapper


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message meant for the user (what, where, what to do)."""
    from llavidal.utils.optional import MissingDependencyError

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            MissingDependencyError, UnicodeDecodeError)


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Wrap a command's ``main(argv)``: user errors print ``prog: error: ...`` and return 2."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None, **options: Any) -> int:
            try:
                return int(main(argv, **options) or 0)
            except SystemExit as done:  # --help, or argparse's own usage error (already printed)
                return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
            except argparse.ArgumentError as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
                return 130
            except user_errors() as err:
                if os.environ.get("LLAVIDAL_TRACEBACK"):
                    traceback.print_exc()
                print(f"{prog}: error: {err}", file=sys.stderr)
                return 2

        return run

    return wrap
