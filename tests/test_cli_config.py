"""One config/CLI mechanism: every command's --help is fast and lists exactly the flags its parser accepts;
YAML configs, key=value and experiment=NAME overrides drive a real training run; errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from llavidal.cli import COMMANDS
from llavidal.config import ConfigError, expand_argv, flag_names, parse, static_flag_names

WITH_ARGS = sorted(words for words, command in COMMANDS.items() if command.args)


@pytest.mark.parametrize("words", WITH_ARGS, ids=lambda words: "-".join(words))
def test_help_lists_exactly_the_flags_the_parser_accepts(words):
    command = COMMANDS[words]
    assert static_flag_names(command.args) == flag_names(command.args)


def test_every_command_help_is_fast_and_imports_nothing_heavy():
    """`llavidal <command> --help` for every command in one process each, under 2 s, without torch."""
    probe = (
        "import sys, time, io, contextlib\n"
        "from llavidal.cli import COMMANDS, run\n"
        "slow = []\n"
        "for words in COMMANDS:\n"
        "    start = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        code = run(words, ['--help']) if COMMANDS[words].args else 0\n"
        "    assert code == 0 and (not COMMANDS[words].args or '--' in out.getvalue()), words\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
    for words in WITH_ARGS:  # as a user types it: a fresh interpreter each
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "llavidal.cli", *words, "--help"], capture_output=True,
                                text=True, timeout=60)
        seconds = time.perf_counter() - start
        assert result.returncode == 0 and "--config" in result.stdout, (words, result.stderr)
        assert seconds < 2.0, f"llavidal {' '.join(words)} --help took {seconds:.2f} s"


def test_overrides_configs_and_experiments_expand_in_order(tmp_path, monkeypatch):
    known = {"learning_rate": float, "max_steps": int, "report_to": list[str], "bf16": bool, "output_dir": str}
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "base.yaml").write_text("max_steps: 3\nlearning_rate: 0.1\n")
    (tmp_path / "configs" / "experiment" / "short.yaml").write_text(
        "defaults: [base, _self_]\nmodel:\n  optimizer:\n    learning_rate: 0.01\n")
    config = tmp_path / "run.yaml"
    config.write_text("bf16: true\nreport_to: [none]\n")
    monkeypatch.chdir(tmp_path)
    argv = expand_argv(["experiment=short", "--config", str(config), "trainer.max_steps=7", "--output_dir", "o"], known)
    # files first (the experiment's defaults before its own values), then the command line: the last wins
    assert argv == ["--max_steps", "3", "--learning_rate", "0.1", "--learning_rate", "0.01", "--bf16", "true",
                    "--report_to", "none", "--max_steps", "7", "--output_dir", "o"]
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'.*did you mean learning_rate"):
        expand_argv(["learning_rat=1"], known)
    with pytest.raises(ConfigError, match="experiment=nope: no such experiment.*known: base, .*short"):
        expand_argv(["experiment=nope"], known)


def test_aliases_hyphens_and_booleans(tmp_path):
    from llavidal.features.objects.extract import ObjectExtractionArgs

    base = ["--video_dir", "v", "--tracks-dir", "t"]
    for spelling in (["--out", "o"], ["--output_dir", "o"], ["output_dir=o"], ["out=o"]):
        (args,) = parse((ObjectExtractionArgs,), base + spelling + ["--no_square"], prog="x")
        assert args.output_dir == "o" and args.tracks_dir == "t" and args.square is False
    for flag in (["--overwrite"], ["--overwrite", "True"], ["--overwrite", "true"], ["overwrite=true"]):
        (args,) = parse((ObjectExtractionArgs,), base + ["--out", "o", *flag], prog="x")
        assert args.overwrite is True


def test_user_errors_are_one_line_naming_the_problem(tmp_path, capsys):
    from llavidal.cli import main

    assert main(["extract", "object", "--video_dir", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--tracks_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llavidal extract object: error:") and "none" in err[0]
    assert main(["synth", "preset=huge", "--out", str(tmp_path)]) == 2
    assert "preset" in capsys.readouterr().err


def test_train_driven_by_key_value_overrides_and_an_experiment(tmp_path, monkeypatch):
    """Hydra-style `key=value` and `experiment=NAME` end to end through `llavidal train`."""
    import torch

    from fixtures.tiny_adl_data import make_records, size_flags, write_features, write_records
    from llavidal.cli import main
    from llavidal.testing import tiny_causal_lm_dir

    torch.set_num_threads(1)
    llm = tiny_causal_lm_dir(tmp_path / "llm", initializer_range=0.2)
    records = make_records(6)
    data = write_records(tmp_path / "train.json", records)
    folders = write_features(tmp_path / "feats", records, fmt="safetensors")
    experiments = tmp_path / "configs" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "tiny_frozen.yaml").write_text(
        "model:\n  tune_mm_mlp_adapter: true\n  mm_projector_type: mlp2x_gelu\n"
        "trainer:\n  max_steps: 5\n  learning_rate: 0.05\n  save_strategy: 'no'\n  report_to: [none]\n"
    )
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    sizes = [f"{flag.lstrip('-')}={value}" for flag, value in zip(size_flags()[::2], size_flags()[1::2])]
    code = main(["train", "experiment=tiny_frozen", f"model_name_or_path={llm}", f"data_path={data}",
                 f"output_dir={output}", f"video_folder={folders['video']}", f"pose_folder={folders['pose']}",
                 "per_device_train_batch_size=2", "trainer.max_steps=3", "logging_steps=1", "disable_tqdm=true",
                 *sizes])
    assert code == 0
    saved = json.loads((output / "llavidal_config.json").read_text())
    assert saved["freeze_llm"] is True
    assert {m["name"]: m["projector_type"] for m in saved["modalities"]} == {"video": "mlp2x_gelu", "pose": "mlp2x_gelu"}
    losses = (output / "loss_history.jsonl").read_text().splitlines()
    assert len(losses) == 3  # the command line's trainer.max_steps=3 won over the experiment's 5
    assert os.path.isfile(output / "trainable.safetensors")


@pytest.mark.parametrize("name", ["llavidal", "llavidal_lora"])
def test_shipped_experiments_parse(name, tmp_path):
    from llavidal.train.args import parse_args

    model, data, training = parse_args([f"experiment={name}", "model_name_or_path=llm", "data_path=d.json",
                                        "video_folder=v", f"output_dir={tmp_path}", "save_steps=10"])
    assert training.num_train_epochs == 3 and training.save_steps == 10  # the experiment, then the override
    assert model.version == ("v1" if name == "llavidal" else "chat")
    assert model.lora_enable is (name == "llavidal_lora") and (model.lora_r, model.lora_alpha)[0] in (64, 8)
