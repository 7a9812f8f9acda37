"""PLLaVA's and LSTP-Chat's README commands as their users type them (paths changed, tiny sizes).

PLLaVA: a Python config file then `key value` pairs, `accelerate launch` with its bf16 multi-process config on
CPU, scripts/demo.sh, scripts/eval.sh (every benchmark), scripts/gallery.sh, python_scripts/hf.py.
LSTP-Chat: `python src/train.py experiment=NAME key=value`, eval/scripts/run_qa_*.sh (chunks + merge) and
eval_qa_*.sh (the judge), `python -m demo.demo`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, local_only_env
from fixtures.tiny_adl_data import make_records, write_features, write_records

from llavidal.config import parse
from llavidal.testing import tiny_causal_lm_dir

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
TRAIN = ("llavidal.train.args:ModelArguments", "llavidal.train.args:DataArguments",
         "llavidal.train.args:TrainingArguments")
ENV = local_only_env({**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                      "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable,
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})

# PLLaVA's tasks/train/config_pllava_nframe.py, shortened; the last lines would fail or leave a file if the
# config were executed (it never is: assignments are read with ast.literal_eval)
PLLAVA_CONFIG = '''
from utils.config import Config

data_dir = "DATAS/TRAIN_TEST"
anno_root_it = f"{data_dir}/magic_jsons"
train_corpus = "videochat2_instruction_debug"
train_file = "${available_corpus[${train_corpus}]}"
test_file = dict()
num_workers = 0
save_steps = 10000
deepspeed = False
num_frames = 16
batch_size = 1
gradient_accumulation_steps = 16
max_txt_l = 512
inputs = dict(image_res=336, video_input=dict(num_frames="${num_frames}", sample_type="rand"))
model = dict(
    repo_id="llava-hf/llava-v1.6-vicuna-7b-hf",
    torch_dtype="bfloat16",
    lora_target_modules=["q_proj", "v_proj"],
    use_lora=True,
    lora_r=128,
    lora_alpha=32,
    lora_dropout=0.05,
    num_frames="${num_frames}",
    pooling_shape=(16, 12, 12),
)
optimizer = dict(opt="adamW", lr=2e-5, weight_decay=0.01, max_grad_norm=-1)
scheduler = dict(sched="cosine", epochs=2, warmup_ratio=0.2, min_lr_multi=0.25)
fp16 = True
gradient_checkpointing = True
wandb = dict(enable=False, entity="user", project="videochat2")
output_dir = None
debug = False
seed = 42
open("EXECUTED", "w")
Config.loaded = True
'''

# PLLaVA's scripts/accel_config_multigpu.yaml, with 2 processes
ACCEL_CONFIG = """compute_environment: LOCAL_MACHINE
debug: false
distributed_type: MULTI_GPU
downcast_bf16: 'no'
gpu_ids: all
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 300) -> str:
    result = subprocess.run(command, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    llm = tiny_causal_lm_dir(root / "llm", initializer_range=0.2)
    records = make_records(8)
    data = write_records(root / "train.json", records)
    folders = write_features(root / "features", records, fmt="safetensors", seed=1)
    return {"llm": llm, "data": data, "video": folders["video"]}


def test_pllava_py_config_then_key_value_pairs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config_pllava_nframe.py"
    config.write_text(PLLAVA_CONFIG)
    argv = [str(config), "output_dir", "OUT", "data_path", "train.json", "video_folder", "F",
            "model.repo_id", "/models/vicuna", "optimizer.lr", "1e-4", "scheduler.epochs", "1",
            "model.lora_target_modules", "['q_proj', 'k_proj']", "train_corpus", "other_corpus", "--bf16", "True",
            "model.lora_r", "8"]
    model, data, training = parse(TRAIN, argv, prog="train")
    assert not (tmp_path / "EXECUTED").exists()
    assert (model.model_name_or_path, model.lora_enable, model.lora_r, model.lora_alpha) == ("/models/vicuna", True, 8, 32)
    assert model.lora_target_modules == "q_proj,k_proj" and data.video_folder == "F"
    assert (training.learning_rate, training.num_train_epochs, training.output_dir) == (1e-4, 1.0, "OUT")
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 16)
    assert (training.model_max_length, training.seed, training.save_steps, training.weight_decay) == (512, 42, 10000, 0.01)
    assert training.lr_scheduler_type == "cosine" and training.deepspeed is None
    assert model.video_pool == "16,12,12"  # PLLaVA's model.pooling_shape
    assert "settings have no equivalent here and are ignored: data_dir, anno_root_it, train_corpus" in caplog.text
    with pytest.raises(ValueError, match="unknown option 'optimizer.lrr'"):
        parse(TRAIN, [str(config), "optimizer.lrr", "1"], prog="train")


@pytest.mark.timeout(600)
def test_accelerate_launch_pllava_bf16_config_trains_on_cpu(tmp_path, train_data):
    """PLLaVA: accelerate launch --config_file scripts/accel_config_multigpu.yaml TRAIN_SCRIPT CONFIG key value ...
    (2 processes, 3 steps; the crash it once hit is also checked by test_splice_under_cpu_bf16_autocast_...)"""
    (tmp_path / "accel_config_multigpu.yaml").write_text(ACCEL_CONFIG)
    # the tiny features are (6, 16) rows, not per-frame grids: no PLLaVA pooling here
    (tmp_path / "config_pllava_nframe.py").write_text(PLLAVA_CONFIG.replace("    pooling_shape=(16, 12, 12),\n", ""))
    output = tmp_path / "pllava_out"
    log = run([
        str(Path(sys.executable).parent / "accelerate"), "launch", "--main_process_port", str(free_port()),
        "--config_file", str(tmp_path / "accel_config_multigpu.yaml"), str(REPO / "llavidal/train/train_mem.py"),
        str(tmp_path / "config_pllava_nframe.py"),
        "output_dir", str(output), "model.repo_id", str(train_data["llm"]), "data_path", str(train_data["data"]),
        "video_folder", str(train_data["video"]), "video_tokens", "6", "video_feature_dim", "16",
        "model.lora_r", "4", "batch_size", "2", "gradient_accumulation_steps", "1", "optimizer.lr", "1e-2",
        "max_train_steps", "3", "save_strategy", "no", "report_to", "none", "logging_steps", "1",
    ], cwd=tmp_path)
    assert log.count("no CUDA device:") == 1, log[-3000:]  # one warning, rank 0 only
    assert "accelerate's mixed_precision: bf16" in log and "training in float32 on CPU" in log
    assert "world size 2 (DistributedType.MULTI_CPU, backend gloo)" in log
    assert "Unexpected floating ScalarType" not in log
    args = json.loads((output / "training_args.json").read_text())
    assert (args["learning_rate"], args["per_device_train_batch_size"], args["max_steps"]) == (0.01, 2, 3)
    config = json.loads((output / "llavidal_config.json").read_text())
    assert config["base_model"] == str(train_data["llm"])
    assert (output / "adapter_config.json").is_file()  # model.use_lora=True from the config file
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_splice_under_cpu_bf16_autocast_with_fp16_features():
    """The crash `accelerate launch` with mixed_precision bf16 hit on CPU: torch.cat of fp16 feature rows
    under CPU autocast ("Unexpected floating ScalarType in at::autocast::prioritize")."""
    import torch

    from llavidal.model.hf.modeling_llavidal import ModalityInfo, splice_features

    spec = ModalityInfo({"name": "video", "feature_dim": 4, "patch_token": "<p>"})
    projector = torch.nn.Linear(4, 8)
    input_ids = torch.tensor([[1, 5, 5, 2], [1, 5, 2, 2]])
    features = {"video": [torch.ones(2, 4, dtype=torch.float16), torch.ones(1, 4, dtype=torch.float16)]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeds, used = splice_features(torch.zeros(2, 4, 8), input_ids, [spec], {"video": {"patch": 5}},
                                       {"video": projector}, features)
    expected = projector(torch.ones(1, 4)).detach()
    assert used == {"video"} and embeds.dtype == torch.float32
    assert torch.allclose(embeds[0, 1], expected[0], atol=0.05) and torch.equal(embeds[1, 2], torch.zeros(8))


def test_lstp_src_train_experiment_and_key_value(tmp_path, train_data):
    """LSTP: python src/train.py experiment=NAME key=value (Hydra-style names of data.*, model.*, trainer.*)."""
    experiments = tmp_path / "configs" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "lstp_tiny.yaml").write_text(
        "data:\n  batch_size: 2\n  num_workers: 0\n"
        "model:\n  optimizer:\n    lr: 0.05\n  lora_enable: false\n"
        "trainer:\n  max_steps: 2\n  accumulate_grad_batches: 1\n  log_every_n_steps: 1\n")
    output = tmp_path / "lstp_out"
    run([sys.executable, str(REPO / "src/train.py"), "experiment=lstp_tiny",
         f"model_name_or_path={train_data['llm']}", f"data_path={train_data['data']}",
         f"video_folder={train_data['video']}", f"output_dir={output}", "video_tokens=6", "video_feature_dim=16",
         "trainer.max_steps=3", "report_to=none", "save_strategy=no"], cwd=tmp_path)
    args = json.loads((output / "training_args.json").read_text())
    # experiment values reach the trainer; the command line's trainer.max_steps=3 wins over the experiment's 2
    assert (args["per_device_train_batch_size"], args["learning_rate"], args["max_steps"]) == (2, 0.05, 3)
    assert args["logging_steps"] == 1 and args["gradient_accumulation_steps"] == 1
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((output / "llavidal_config.json").read_text())["base_model"] == str(train_data["llm"])


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory):
    """A tiny model (video only, 6 tokens x 16-d) and the benchmark fixtures with random features."""
    from llavidal.data.feature_store import save_features
    from llavidal.eval.records import load_records
    from llavidal.model.builder import build_model
    from llavidal.model.modality import ModalityRegistry

    root = tmp_path_factory.mktemp("eval")
    llm = tiny_causal_lm_dir(root / "llm")
    model, _ = build_model(llm, ModalityRegistry.default(["video"], video_dim=16, video_tokens=6))
    model.save_pretrained(root / "weights")
    data = root / "DATAS"
    shutil.copytree(FIXTURES, data)
    rng = np.random.default_rng(0)
    sources = {"MVBench": [("MVBench/json", "mcq")], "VCGBench": [("VCGBench/Zero_Shot_QA/generic_qa.json", "open")],
               "Recaption/Inter4K": [("Recaption/Inter4K/annotations.json", "open")]}
    for name in ("MSVD_Zero_Shot_QA", "MSRVTT_Zero_Shot_QA", "ActivityNet", "TGIF_Zero_Shot_QA"):
        sources[f"VideoQA/{name}"] = [(f"VideoQA/{name}/test_q.json", "zeroshot")]
    for bench, files in sources.items():
        folder = data / bench / "features"
        folder.mkdir(parents=True, exist_ok=True)
        for path, kind in files:
            for record in load_records(data / path, kind, default_question="?"):
                save_features(folder / f"{record.video_stem}.safetensors", rng.standard_normal((6, 16)).astype(np.float32))
    return {"llm": llm, "weights": root / "weights", "data": data}


@pytest.fixture
def judge_env(tmp_path):
    with FakeOpenAIServer(max_lifetime=600) as server:
        yield {**ENV, "JUDGE_MODEL": "judge-model-2024-01-01", "BASE_URL": server.url,
               "CACHE": str(tmp_path / "judge_cache.sqlite")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pllava_eval_sh_runs_every_benchmark(tmp_path, eval_model, judge_env):
    """bash scripts/eval.sh MODEL_DIR WEIGHTS_DIR SAVE_DIR: 16 llavidal processes (slow: ~1 min on an idle
    2-core machine)."""
    save = tmp_path / "test_results" / "test_pllava_tiny"
    env = {**judge_env, "DATA_DIR": str(eval_model["data"]), "DEVICE": "cpu", "MAX_NEW_TOKENS": "6"}
    log = run(["bash", "scripts/eval.sh", str(eval_model["llm"]), str(eval_model["weights"]), str(save)], env=env,
              timeout=880)
    assert "scripts/eval.sh: every benchmark done" in log
    mvbench = json.loads((save / "mvbench/mvbench_results.json").read_text())
    assert mvbench["metrics"]["n"] == 22 and mvbench["metrics"]["tasks"] == 20
    vcg = json.loads((save / "vcgbench/videochatgpt_results.json").read_text())
    assert set(vcg["criteria"]) == {"correctness", "detail", "context", "temporal", "consistency"}
    assert vcg["metrics"]["overall"] == pytest.approx(3.0)  # the fake judge's score for unmarked answers
    for dataset, n in (("MSVD_Zero_Shot_QA", 4), ("MSRVTT_Zero_Shot_QA", 2), ("ActivityNet", 2), ("TGIF_Zero_Shot_QA", 1)):
        result = json.loads((save / f"videoqa_{dataset}/zeroshot_qa_results.json").read_text())
        assert result["criteria"]["zeroshot"]["n"] == n and result["metrics"]["accuracy"] == 100.0
    recaption = json.loads((save / "recaption/recaption_results.json").read_text())
    assert recaption["metrics"]["overall"] == pytest.approx(3.0)
    rows = [json.loads(line) for line in (save / "mvbench/predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 22 and all(row["status"] == "ok" for row in rows)
    # PLLaVA's gallery.sh lists these runs (one result folder per benchmark)
    from llavidal.eval.gallery import find_result_folders

    found = {p.name for p in find_result_folders([save.parent])}
    assert {"mvbench", "vcgbench", "videoqa_MSVD_Zero_Shot_QA", "recaption"} <= found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lstp_run_qa_in_chunks_and_merge(tmp_path, eval_model):
    """bash eval/scripts/run_qa_msvd.sh CKPT OUT with 2 chunks (3 llavidal processes; slow under load)."""
    data = eval_model["data"] / "VideoQA" / "MSVD_Zero_Shot_QA"
    out = tmp_path / "answers"
    env = {**ENV, "DATA_DIR": str(data), "CHUNKS": "2", "DEVICE": "cpu", "MAX_NEW_TOKENS": "4"}
    run(["bash", "eval/scripts/run_qa_msvd.sh", str(eval_model["weights"]), str(out)], env=env)
    merged = json.loads((out / "merge.json").read_text())
    questions = json.loads((data / "test_q.json").read_text())
    assert [row["id"] for row in merged] == [q["question_id"] for q in questions]
    assert all(set(row) == {"id", "question", "answer", "pred"} for row in merged)
    rows = [json.loads(line) for line in (out / "merge.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    assert not list(out.glob("merge.rank*.jsonl"))  # the chunks were merged


def test_lstp_eval_qa_judges_lstp_rows_as_upstream(tmp_path, judge_env):
    """bash eval/scripts/eval_qa_msvd.sh PRED OUT on LSTP's rows {id, question, answer, pred} (no video)."""
    data = FIXTURES / "VideoQA" / "MSVD_Zero_Shot_QA"
    questions = json.loads((data / "test_q.json").read_text())
    answers = {a["question_id"]: a["answer"] for a in json.loads((data / "test_a.json").read_text())}
    marks = ["[[score=5]] dance", "[[pred=no]] [[score=1]] woman", "[[score=4]] onion", "cut"]
    preds = tmp_path / "merge.jsonl"
    preds.write_text("".join(json.dumps({"id": q["question_id"], "question": q["question"],
                                         "answer": answers[q["question_id"]], "pred": mark}) + "\n"
                             for q, mark in zip(questions, marks)))
    log = run(["bash", "eval/scripts/eval_qa_msvd.sh", str(preds), str(tmp_path / "judged")], env=judge_env)
    # yes / (yes + no) = 3 / 4 with its n and 95% interval; mean score (5 + 1 + 4 + 3) / 4
    assert "zeroshot: 75.000, score 3.250; accuracy n=4; 95% interval 30.1-95.4%" in log
    result = json.loads((tmp_path / "judged" / "zeroshot_qa_results.json").read_text())
    assert (result["criteria"]["zeroshot"]["yes"], result["criteria"]["zeroshot"]["no"]) == (3, 1)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1 only
                return response.status
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


@pytest.mark.timeout(300)
def test_pllava_demo_sh_serves_then_stops(tmp_path):
    from demo_helpers import make_tiny_weights

    llm, weights = make_tiny_weights(tmp_path, modalities=("video",))
    port = free_port()
    env = {**ENV, "PORT": str(port), "DEVICE": "cpu", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(["bash", "scripts/demo.sh", str(llm), str(weights)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=240) == 200
    finally:
        os.killpg(process.pid, 15)  # this test's own process group (the script execs python)
        process.wait(timeout=30)


def test_python_m_demo_demo_and_gallery_sh_and_hf_py(tmp_path):
    # LSTP's `python -m demo.demo` is `llavidal demo` (its flags); the root package does not hide llavidal.demo
    log = run([sys.executable, "-m", "demo.demo", "--help"])
    assert "--projection_path" in log and "llavidal demo" in log
    log = run([sys.executable, "-c", "import demo, llavidal.demo.video_demo as v; print(demo.__file__, v.__file__)"])
    assert str(REPO / "demo" / "__init__.py") in log and str(REPO / "llavidal" / "demo" / "video_demo.py") in log
    # PLLaVA's gallery.sh SAVE_DIR runs `llavidal gallery SAVE_DIR`
    assert "llavidal gallery" in run(["bash", "scripts/gallery.sh", str(tmp_path), "--help"])
    # python_scripts/hf.py: no downloads; prepares a model folder from local files
    assert "prepare-model" in run([sys.executable, "python_scripts/hf.py"])
    llm = tiny_causal_lm_dir(tmp_path / "vicuna")
    log = run([sys.executable, "python_scripts/hf.py", "--from", str(llm), "--output_dir", str(tmp_path / "MODELS/m")])
    assert "files linked" in log
    made = tmp_path / "MODELS" / "m"
    assert (made / "config.json").resolve() == (llm / "config.json").resolve()
    record = json.loads((made / "prepare_model.json").read_text())
    assert record["model_type"] == "llama" and "model.safetensors" in record["weight_files"]


def test_prepare_model_refuses_hub_ids_and_incomplete_folders(tmp_path, capsys):
    from llavidal.model.prepare import main

    assert main(["--from", "ermu2001/pllava-7b", "--output_dir", str(tmp_path / "out")]) == 2
    assert "never downloads from the Hugging Face hub" in capsys.readouterr().err
    llm = tiny_causal_lm_dir(tmp_path / "llm")
    (llm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    assert main(["--from", str(llm), "--output_dir", str(tmp_path / "out")]) == 2
    assert "model-00002.safetensors" in capsys.readouterr().err and not (tmp_path / "out").exists()
