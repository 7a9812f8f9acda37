"""lmms-eval: the ``llavidal`` model adapter and the ADLMCQ / ADL-description task YAMLs.

lmms-eval 0.7.x requires torchvision, which from PyPI pulls a CUDA torch over ours, so it is not installed
beside the project. The end-to-end test runs lmms-eval's own CLI with the first Python that has it: this
one, or ``LLAVIDAL_LMMS_EVAL_PYTHON`` (an environment that sees this package and its torch, e.g. a venv with
a ``.pth`` line naming the project's site-packages and ``pip install --no-deps lmms-eval==0.7.3`` plus its
light dependencies; see the README, "Use it with lmms-eval"); otherwise it is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from llavidal.integrations.lmms_eval import TASK_DIR

LETTERS = "ABCD"
CHOICES = ["drink from a mug", "read a book", "sit down", "use a phone"]


def _records() -> tuple[list[dict], list[dict]]:
    mcq, descriptions = [], []
    for index in range(4):
        choices = dict(zip(LETTERS, CHOICES))
        mcq.append({"video_filename": f"clip_{index}.mp4", "question": "What is the person doing?",
                    "answer_choices": choices, "ground_truth_letter": LETTERS[index], "id": f"clip_{index}",
                    "task": "tiny_ar", "label": CHOICES[index]})
        descriptions.append({"video_name": f"clip_{index}.mp4", "Q": "Describe the video.",
                             "A": f"The person wants to {CHOICES[index]}."})
    return mcq, descriptions


class _FunctionLoader(yaml.SafeLoader):
    pass


_FunctionLoader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


def test_task_yamls_name_existing_functions_and_local_json():
    import importlib.util as util

    spec = util.spec_from_file_location("llavidal_lmms_task_utils", TASK_DIR / "utils.py")
    utils = util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    names = {}
    for path in sorted(TASK_DIR.glob("*.yaml")):
        config = yaml.load(path.read_text(), Loader=_FunctionLoader)
        names[config["task"]] = config
        assert config["dataset_path"] == "json" and "test" in config["dataset_kwargs"]["data_files"]
        for value in config.values():
            if isinstance(value, tuple) and value[0] == "function":
                module, _, function = value[1].partition(".")
                assert module == "utils" and callable(getattr(utils, function)), (path, value)
    assert set(names) == set(utils.SPECS)
    assert names["llavidal_adlmcq_recognition"]["output_type"] == "multiple_choice"
    assert names["llavidal_adl_descriptions"]["output_type"] == "generate_until"

    mcq, descriptions = _records()
    doc = dict(mcq[2], answer_choices=dict(mcq[2]["answer_choices"], E=None))  # datasets fills missing keys
    assert utils.doc_to_visual(doc) == ["clip_2.mp4"]
    assert utils.mcq_doc_to_choice(doc) == [f"({l}) {t}" for l, t in zip(LETTERS, CHOICES)]
    assert utils.mcq_doc_to_target(doc) == 2
    text = utils.mcq_recognition_doc_to_text(doc)
    assert text.startswith("What is the person doing?") and "(C) sit down" in text  # our task's prompt
    assert utils.descriptions_doc_to_text(descriptions[0]) == "Describe the video."
    assert utils.description_process_results(descriptions[0], [descriptions[0]["A"]]) == {"word_f1": 100.0}


def _lmms_python() -> str | None:
    if importlib.util.find_spec("lmms_eval") is not None:
        return sys.executable
    return os.environ.get("LLAVIDAL_LMMS_EVAL_PYTHON") or None


def test_lmms_eval_cli_runs_the_llavidal_model(tmp_path):
    python = _lmms_python()
    if python is None:
        pytest.skip("lmms-eval is not importable here (its torchvision requirement pulls a CUDA torch, so it is not "
                    "installed beside the project); set LLAVIDAL_LMMS_EVAL_PYTHON to a Python that has it")
    pytest.importorskip("av")
    from demo_helpers import make_tiny_weights, make_video

    _, weights = make_tiny_weights(tmp_path / "model", modalities=("video",))
    world = tmp_path / "world"
    for index in range(4):
        make_video(world / "videos" / f"clip_{index}.mp4", frames=12 + index)
    mcq, descriptions = _records()
    (world / "annotations").mkdir()
    (world / "annotations" / "mcq_action_recognition.json").write_text(json.dumps(mcq))
    (world / "annotations" / "descriptions.json").write_text(json.dumps(descriptions))

    out = tmp_path / "out"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TOKENIZERS_PARALLELISM="false")
    command = [
        python, "-m", "lmms_eval", "--model", "llavidal",
        "--model_args", f"pretrained={weights},video_dir={world / 'videos'},device=cpu",
        "--tasks", "llavidal_adlmcq_recognition,llavidal_adl_descriptions",
        "--include_path", str(TASK_DIR), "--output_path", str(out), "--batch_size", "2",
        "--gen_kwargs", "max_new_tokens=6",
    ]
    # The task YAMLs read a world folder's annotations/ relative to the working directory.
    done = subprocess.run(command, cwd=world, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    found = sorted(out.rglob("*_results.json"))
    assert found, f"lmms-eval wrote no results under {out}:\n{log[-4000:]}"
    results = json.loads(found[-1].read_text())["results"]
    accuracy = results["llavidal_adlmcq_recognition"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0
    assert 0.0 <= results["llavidal_adl_descriptions"]["word_f1,none"] <= 100.0
