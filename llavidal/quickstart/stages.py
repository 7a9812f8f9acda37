"""The quickstart's steps: each a :class:`~llavidal.quickstart.steps.Step` whose commands are the public CLI
(``llavidal synth``, ``llavidal extract ...``, ``llavidal pose-pretrain``, ``llavidal align``, torchrun of
``llavidal/train/train_mem.py``, ``llavidal eval infer/mcq/judge/report``), so that any one can be rerun by
hand (``OUT/commands.sh``). In-process work is limited to writing the files those commands read (the
training curriculum, pose pairs, alignment labels) and the report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llavidal.quickstart import curriculum
from llavidal.quickstart.layout import (
    DESCRIPTION_BENCHMARK,
    MCQ_BENCHMARKS,
    MCQ_FILES,
    MODALITY_SETS,
    PROTOCOL,
    SCORINGS,
    Paths,
    read_json,
)
from llavidal.quickstart.recipes import Recipe
from llavidal.quickstart.steps import Command, Step
from llavidal.utils.io import atomic_write_json, atomic_write_text

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Every extractor runs as one single-threaded torchrun rank per worker (``--workers``), each extracting its share
of the clips (decoding in its own process): the features do not depend on the machine's core count (a crop's
object features change with the thread count; the frame encoder's do not at the quickstart's sizes). On 2 idle
cores the medium world's video features take 222 s as two ranks against 259 s as one process of two threads with
a decoding worker, every one of the 1559 tensors identical."""
TRAIN_MEM = Path(__file__).resolve().parents[1] / "train" / "train_mem.py"
LOGLIK_MODE = "loglik_norm"
"""``llavidal eval infer --mcq_scoring`` mode of the log-likelihood evaluation (per-token normalised)."""
WORLD_FORMAT = "typed questions; every forecasting prefix; attribute MCQs"
"""Part of the world step's settings: worlds written before records' questions had a ``type`` are remade."""


@dataclass
class Quickstart:
    """What the steps need: the command line's choices, the recipe with the user's changes, the layout."""

    paths: Paths
    recipe: Recipe
    preset: str
    llm: str
    seed: int
    workers: int
    train_flags: dict[str, str] = field(default_factory=dict)
    """Extra train_mem.py flags (``--train_flag FLAG=VALUE``)."""

    @property
    def base_model(self) -> str:
        """The backbone's folder: the embedded LLM's cache, the tiny test LLM's folder or the user's folder."""
        if self.llm == "embedded":
            from llavidal.model.embedded import default_cache_dir

            return str(default_cache_dir())
        if self.llm == "tiny":
            return str(self.paths.tiny_llm)
        return str(Path(self.llm).expanduser().resolve())

    def settings(self) -> dict:
        """The run's choices as the report records them."""
        return {"preset": self.preset, "llm": self.llm if self.llm in ("embedded", "tiny") else "local folder",
                "recipe": self.recipe.name, "seed": self.seed, "extra_train_flags": self.train_flags}


def cli(*words: str) -> list[str]:
    """Our own CLI in a child process of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "llavidal", *words]


def torchrun(procs: int, *program: str) -> list[str]:
    """``program`` (a script and its arguments, or ``-m module ...``) under torchrun with ``procs`` ranks on this
    machine, on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *program]


def ranks_cli(procs: int, *words: str) -> list[str]:
    """Our CLI under torchrun with ``procs`` ranks (:func:`cli` when ``procs`` is 1)."""
    return cli(*words) if procs <= 1 else torchrun(procs, "-m", "llavidal", *words)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flag_value(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def features_complete(folder: Path, pattern: str, expected: int) -> bool:
    if not (folder / "manifest.json").is_file() or _count(folder, pattern) < expected:
        return False
    failed = folder / "failed.jsonl"
    return not (failed.is_file() and failed.read_text().strip())


def _clips(qs: Quickstart) -> int:
    return _count(qs.paths.world / "videos", "*.mp4")


# --------------------------------------------------------------------------- world and backbone
def world_step(qs: Quickstart) -> Step:
    paths = qs.paths

    def valid() -> bool:
        try:
            splits = read_json(paths.world / "annotations" / "splits.json")[PROTOCOL]
            counts = read_json(paths.world / "world.json")["counts"]
        except (OSError, KeyError, ValueError):
            return False
        return (_clips(qs) == counts["clips"]
                and all((paths.annotations(s) / "records.json").is_file() for s in ("train", "test"))
                and bool(splits["train"]) and bool(splits["test"]))

    return Step("world", f"Generate the embedded world ({qs.preset})", valid,
                {"preset": qs.preset, "seed": qs.seed, "format": WORLD_FORMAT},
                commands=lambda: [Command(cli("synth", "--out", str(paths.world), "--preset", qs.preset,
                                              "--seed", str(qs.seed), "--workers", str(qs.workers)))])


def llm_step(qs: Quickstart) -> Step:
    title, settings = f"Backbone LLM ({qs.llm})", {"llm": qs.llm}
    folder = Path(qs.base_model)
    if qs.llm == "embedded":
        from llavidal.model.embedded import is_complete

        return Step("llm", title, lambda: is_complete(folder), settings,
                    commands=lambda: [Command(cli("embedded-llm", "--cache_dir", str(folder)))])
    if qs.llm == "tiny":
        def make_tiny() -> None:
            from llavidal.testing import tiny_causal_lm_dir

            tiny_causal_lm_dir(folder)

        return Step("llm", title, lambda: (folder / "config.json").is_file(), settings, prepare=make_tiny,
                    prepares=f"a random tiny llama in {folder} (llavidal.testing.tiny_causal_lm_dir)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--llm {qs.llm}: not 'embedded', 'tiny' or a Hugging Face model folder "
                         f"(no {folder / 'config.json'})")
    return Step("llm", title, lambda: True, settings)


# --------------------------------------------------------------------------- features
def video_step(qs: Quickstart) -> Step:
    paths, recipe = qs.paths, qs.recipe
    return Step(
        "video", f"Extract video features ({recipe.video_encoder})",
        lambda: features_complete(paths.video, "*.safetensors", _clips(qs)),
        {"frames": recipe.video_frames, "temporal": recipe.video_temporal_tokens, "grid": recipe.video_spatial_grid,
         "encoder": recipe.video_encoder, "batch": recipe.video_batch},
        commands=lambda: [video_command(qs, paths.world, paths.video)], clear_on_change=(paths.video,),
    )


def video_command(qs: Quickstart, world: Path, out: Path) -> Command:
    """``llavidal extract video`` of a world folder's videos with the recipe's encoder and pooling."""
    recipe = qs.recipe
    return video_extract_command(
        qs, "--video_dir_path", str(world / "videos"), "--clip_feat_path", str(out), "--encoder", recipe.video_encoder,
        "--num_frames", str(recipe.video_frames), "--temporal_tokens", str(recipe.video_temporal_tokens),
        "--spatial_grid", str(recipe.video_spatial_grid))


def video_extract_command(qs: Quickstart, *flags: str) -> Command:
    """``llavidal extract video FLAGS`` as one single-threaded rank per worker, each decoding its own share of the
    videos (the features are those of one process: ``tests/test_extract_video_dist.py``), the encoder fed
    ``recipe.video_batch`` frames at a time."""
    return Command(ranks_cli(qs.workers, "extract", "video", *flags, "--batch_size", str(qs.recipe.video_batch),
                             "--workers", "0", "--no_progress"), SINGLE_THREAD)


def pose_pretrain_step(qs: Quickstart) -> Step:
    paths, recipe = qs.paths, qs.recipe
    pairs = paths.pose_encoder / "train_pairs.jsonl"

    def write_pairs() -> None:
        lines = [json.dumps(pair) for pair in curriculum.pose_text_pairs(paths, recipe)]
        pairs.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(pairs, "\n".join(lines) + "\n")

    return Step(
        "pose_pretrain", "Pretrain the pose encoder (contrastive, train-split skeletons only)",
        lambda: (paths.pose_encoder / "pose_encoder.safetensors").is_file(),
        {"tokens": recipe.pose_tokens, "frames": recipe.pose_frames, "hidden": recipe.pose_hidden,
         "depth": recipe.pose_depth, "steps": recipe.pose_steps, "seed": qs.seed,
         "segments": recipe.pose_segments, "token_pooling": "frames"},
        prepare=write_pairs, prepares=f"{pairs} (train-split skeleton/text pairs, llavidal.quickstart.curriculum)",
        commands=lambda: [Command(cli(
            "pose-pretrain", "--data", str(pairs), "--output_dir", str(paths.pose_encoder),
            "--tokens", str(recipe.pose_tokens), "--num_frames", str(recipe.pose_frames),
            "--hidden", str(recipe.pose_hidden), "--heads", str(recipe.pose_heads),
            "--depth", str(recipe.pose_depth), "--max_steps", str(recipe.pose_steps),
            "--batch_size", str(recipe.pose_batch), "--warmup_steps", str(max(1, recipe.pose_steps // 10)),
            "--log_steps", str(max(1, recipe.pose_steps // 6)), "--seed", str(qs.seed), "--device", "cpu"),
            SINGLE_THREAD)],
    )


def pose_step(qs: Quickstart, pretrain: Step) -> Step:
    paths = qs.paths
    return Step(
        "pose", "Extract pose features", lambda: features_complete(paths.pose, "*_pose.safetensors", _clips(qs)),
        {"encoder": pretrain.settings},
        commands=lambda: [pose_command(qs, paths.world, paths.pose)],
    )


def pose_command(qs: Quickstart, world: Path, out: Path) -> Command:
    """``llavidal extract pose`` of a world folder's skeletons with the pretrained pose encoder (one rank per
    worker)."""
    return Command(ranks_cli(
        qs.workers, "extract", "pose", "--skeleton_dir", str(world / "skeletons"), "--out", str(out),
        "--encoder", str(qs.paths.pose_encoder), "--device", "cpu", "--no_progress"), SINGLE_THREAD)


def object_step(qs: Quickstart) -> Step:
    paths, recipe = qs.paths, qs.recipe
    return Step(
        "object", f"Extract object features (ground-truth tracks, {recipe.object_encoder})",
        lambda: features_complete(paths.object, "*_object.safetensors", 1), {"encoder": recipe.object_encoder},
        commands=lambda: [object_command(qs, paths.world, paths.object)],
    )


def object_command(qs: Quickstart, world: Path, out: Path) -> Command:
    """``llavidal extract object`` of a world folder's videos and ground-truth tracks (one rank per worker)."""
    return Command(ranks_cli(
        qs.workers, "extract", "object", "--video_dir", str(world / "videos"), "--tracks_dir", str(world / "tracks"),
        "--encoder", qs.recipe.object_encoder, "--out", str(out), "--device", "cpu", "--no_progress"), SINGLE_THREAD)


def mirror_step(qs: Quickstart, world: Step, video: Step, pose: Step, obj: Step) -> Step:
    """Mirror images of the train clips whose hand is asked (``recipe.hand_mirrors``), and their features, made
    as the world's are (the same three extractors, into ``mirror/features``). The step owns ``OUT/mirror`` and
    remakes it whole when it runs (45 s for the medium world), so nothing of an earlier world or recipe stays."""
    paths = qs.paths
    folders = paths.mirror_folders()

    def write_clips() -> None:
        from llavidal.sim.mirror import mirror_clip

        shutil.rmtree(paths.mirror, ignore_errors=True)
        clips = curriculum.hand_mirror_clips(paths)
        for clip_id in clips:
            mirror_clip(paths.world, clip_id, paths.mirror_world)
        print(f"  {len(clips)} mirrored train clips in {paths.mirror_world}")

    def valid() -> bool:
        if not (paths.world / "annotations" / "splits.json").is_file():
            return False
        count = len(curriculum.hand_mirror_clips(paths))
        return (features_complete(folders["video"], "*.safetensors", count)
                and features_complete(folders["pose"], "*_pose.safetensors", count)
                and features_complete(folders["object"], "*_object.safetensors", 1))

    return Step(
        "mirror", "Mirror the train clips whose hand is asked, and extract their features", valid,
        {"world": world.settings, "video": video.settings, "pose": pose.settings, "object": obj.settings,
         "mirror": "hands"},
        prepare=write_clips, prepares=f"{paths.mirror_world} (mirror images of the train clips whose hand is asked, "
                                      "llavidal.sim.mirror)",
        commands=lambda: [video_command(qs, paths.mirror_world, folders["video"]),
                          pose_command(qs, paths.mirror_world, folders["pose"]),
                          object_command(qs, paths.mirror_world, folders["object"])],
    )


# --------------------------------------------------------------------------- training
def data_step(qs: Quickstart) -> Step:
    paths, recipe = qs.paths, qs.recipe

    def make_data() -> None:
        samples, counts = curriculum.build_training_records(paths, recipe, seed=qs.seed)
        if recipe.hand_mirrors:
            mirrored, mirror_counts = curriculum.build_mirror_records(paths, recipe, seed=qs.seed)
            atomic_write_json(paths.data / "mirror.json", mirrored)
            counts["hand_mirrors"] = mirror_counts
        atomic_write_json(paths.data / "train.json", samples)
        atomic_write_json(paths.data / "summary.json", counts)
        print(f"  {counts['samples']} training samples: {json.dumps(counts)}")

    return Step(
        "data", "Build training conversations (train split: records + ADLMCQ)",
        lambda: all((paths.data / name).is_file() for name in
                    ("train.json", "summary.json", *(["mirror.json"] if recipe.hand_mirrors else []))),
        {"recipe": recipe.training_fields(), "seed": qs.seed},
        prepare=make_data, prepares=f"{paths.data / 'train.json'} (the curriculum, llavidal.quickstart.curriculum)",
    )


def align_step(qs: Quickstart) -> Step:
    paths, recipe = qs.paths, qs.recipe
    labels_path = paths.data / "align_labels.json"

    def write_labels() -> None:
        labels, counts = curriculum.build_alignment_labels(paths, recipe)
        atomic_write_json(labels_path, labels)
        named = f", {counts['object_names']} object names" if counts["object_names"] else ""
        hands = (f", {counts['hand_labels']} hand-and-activity pose labels ({counts['mirrored']} of mirrored clips)"
                 if counts["hand_labels"] else "")
        print(f"  {counts['records']} labelled train clips, {counts['labels']} activities{named}{hands}")

    def commands() -> list[Command]:
        settings = recipe.train_settings(qs.train_flags)
        return [Command(cli(
            "align", "--model_name_or_path", qs.base_model, "--version", str(settings.get("version", "v1")),
            "--mm_projector_type", str(settings.get("mm_projector_type", "linear")),
            "--data_path", str(labels_path), "--video_folder", str(paths.video),
            "--pose_folder", str(paths.pose), "--object_folder", str(paths.object),
            "--align_steps", str(recipe.align_steps), "--align_temperature", str(recipe.align_temperature),
            "--seed", str(qs.seed), "--output_dir", str(paths.align)),
            {"OMP_NUM_THREADS": str(max(1, qs.workers)), "TOKENIZERS_PARALLELISM": "false"})]

    return Step(
        "align", "Align the projectors to the LLM's embeddings of the activity names (objects: their own names)",
        lambda: (paths.align / "trainable.safetensors").is_file() and (paths.align / "align_report.json").is_file(),
        {"recipe": recipe.training_fields(), "llm": qs.base_model, "seed": qs.seed, "extra": qs.train_flags},
        commands=commands, prepare=write_labels,
        prepares=f"{labels_path} (train clips, their activity and object names, llavidal.quickstart.curriculum)",
    )


def training_data_flags(qs: Quickstart) -> list[str]:
    """``--data_path data/train.json``, or with ``recipe.hand_mirrors`` a ``--data_mixture`` of it and
    ``data/mirror.json`` on the mirror's feature folders (each sample once per epoch)."""
    paths = qs.paths
    if not qs.recipe.hand_mirrors:
        return ["--data_path", str(paths.data / "train.json")]
    folders = ":".join(f"{name}={folder}" for name, folder in paths.mirror_folders().items())
    return ["--data_mixture", f"{paths.data / 'train.json'}:1,{paths.data / 'mirror.json'}:1:{folders}"]


def train_step(qs: Quickstart, align: Step | None) -> Step:
    paths, recipe = qs.paths, qs.recipe

    def commands() -> list[Command]:
        flags = {**recipe.train_overrides, **qs.train_flags}
        argv = [*torchrun(recipe.train_procs, str(TRAIN_MEM)),
                "--config", str(recipe.config_path()), "--model_name_or_path", qs.base_model,
                *training_data_flags(qs), "--video_folder", str(paths.video),
                "--pose_folder", str(paths.pose), "--object_folder", str(paths.object),
                "--output_dir", str(paths.train), "--seed", str(qs.seed)]
        if align is not None and "pretrain_mm_mlp_adapter" not in flags:
            argv += ["--pretrain_mm_mlp_adapter", str(paths.align)]
        for key, value in flags.items():
            argv += [f"--{key}", flag_value(value)]
        return [Command(argv, {"OMP_NUM_THREADS": str(recipe.train_threads), "TOKENIZERS_PARALLELISM": "false"})]

    return Step(
        "train", f"Train ({recipe.name} recipe, {recipe.train_procs} rank(s) x {recipe.train_threads} "
                 f"thread(s), torchrun on CPU)",
        lambda: all((paths.train / n).is_file() for n in ("trainable.safetensors", "llavidal_config.json",
                                                           "trainer_state.json")),
        {"recipe": recipe.training_fields(), "llm": qs.base_model, "extra": qs.train_flags, "seed": qs.seed,
         "config": recipe.config_path().read_text(), "align": align.settings if align is not None else None},
        commands=commands,
    )


# --------------------------------------------------------------------------- evaluation and report
def evaluation_plan(qs: Quickstart) -> list[tuple[str, str, str]]:
    """(task, modality set, scoring) triples evaluated: each ADLMCQ task the world's test split has, under every
    modality set, scored by log-likelihood (every record) and by generation + parser (every record for all
    modalities, ``recipe.ablation_limit`` for the reduced sets); then the descriptions (all modalities)."""
    test_dir = qs.paths.annotations("test")
    plan = [(task, set_name, scoring) for scoring in SCORINGS if scoring in qs.recipe.mcq_scorings
            for task, name in MCQ_FILES.items() if (test_dir / name).is_file() for set_name in MODALITY_SETS]
    if (test_dir / "descriptions.json").is_file():
        plan.append(("descriptions", "all", "generate"))
    return plan


def evaluation_runs(qs: Quickstart) -> list[tuple[tuple[str, str, str], list[str]]]:
    """(plan entry, ``llavidal eval infer`` flags of its run) for each entry of :func:`evaluation_plan`; the flags
    every run shares (:func:`shared_infer_flags`) are left out."""
    paths, recipe = qs.paths, qs.recipe
    test_dir = paths.annotations("test")
    runs = []
    for task, set_name, scoring in evaluation_plan(qs):
        modalities = MODALITY_SETS[set_name]
        if task == "descriptions":
            benchmark, records, limit = DESCRIPTION_BENCHMARK, test_dir / "descriptions.json", recipe.description_limit
            max_new_tokens = recipe.description_max_new_tokens
        else:
            benchmark, records = MCQ_BENCHMARKS[task], test_dir / MCQ_FILES[task]
            if scoring == "generate":
                limit = recipe.generate_limit if set_name == "all" else recipe.ablation_limit
            else:
                limit = None if set_name in recipe.full_eval_sets else recipe.ablation_limit
            max_new_tokens = recipe.mcq_max_new_tokens
        flags = ["--benchmark", benchmark, "--records", str(records),
                 "--output", str(paths.predictions(task, set_name, scoring)),
                 "--batch_size", str(recipe.eval_batch_size), "--max_new_tokens", str(max_new_tokens)]
        if scoring != "generate":
            # one prompt cache copied per option row: smaller batches score faster (benchmarks/eval_inference.py)
            flags += ["--mcq_scoring", LOGLIK_MODE, "--batch_size", str(recipe.loglik_batch_size)]
            if task == "forecasting" and recipe.forecast_reasoning:
                # trained to name the last activity first: score the choices after the model's own reasoning
                flags += ["--loglik_lead", curriculum.FORECAST_LEAD]
        for modality in modalities:
            flags += [f"--{modality}_folder", str(paths.folders()[modality])]
        if limit is not None:
            flags += ["--limit", str(limit)]
        if "video" not in modalities:
            flags.append("--allow_text_only")
        runs.append(((task, set_name, scoring), flags))
    return runs


def shared_infer_flags(qs: Quickstart) -> list[str]:
    """The ``llavidal eval infer`` flags of every evaluation run: one model, loaded once for all of them."""
    return ["--weights", str(qs.paths.train), "--optional_modalities", "object", "--device", "cpu", "--dtype", "float32"]


def infer_jobs_path(qs: Quickstart) -> Path:
    return qs.paths.eval / "infer_jobs.txt"


def write_infer_jobs(qs: Quickstart) -> None:
    """``eval/infer_jobs.txt``: one line of ``eval infer`` flags per evaluation run (``eval infer --jobs``)."""
    import shlex

    lines = ["# llavidal eval infer --jobs: one run per line, after the command line's shared flags"]
    lines += [f"# {task} / {set_name} / {scoring}\n{shlex.join(flags)}" for (task, set_name, scoring), flags
              in evaluation_runs(qs)]
    qs.paths.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_text(infer_jobs_path(qs), "\n".join(lines) + "\n")


def evaluation_commands(qs: Quickstart) -> list[Command]:
    """One ``llavidal eval infer --jobs`` for every entry of :func:`evaluation_plan` (the model loaded once; the
    runs are the lines :func:`write_infer_jobs` writes), then ``eval mcq`` (or ``eval judge descriptions``, local
    judge) for each, then ``eval report`` over all their results."""
    paths = qs.paths
    test_dir = paths.annotations("test")
    env = {"OMP_NUM_THREADS": str(max(1, os.cpu_count() or 1)), "TOKENIZERS_PARALLELISM": "false"}
    for task, name in MCQ_FILES.items():
        if not (test_dir / name).is_file():
            print(f"  no {name} in the world: {task} not evaluated")
    runs = evaluation_runs(qs)
    if not runs:
        return []
    procs = max(1, qs.recipe.eval_procs)
    infer_env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    commands = [Command(ranks_cli(procs, "eval", "infer", *shared_infer_flags(qs), "--jobs", str(infer_jobs_path(qs))),
                        infer_env)]
    results = []
    for (task, set_name, scoring), flags in runs:
        predictions, scored = paths.predictions(task, set_name, scoring), paths.scored(task, set_name, scoring)
        if task == "descriptions":
            score = ["eval", "judge", "descriptions", "--pred_path", str(predictions), "--judge", "local"]
        else:
            score = ["eval", "mcq", "--predictions", str(predictions), "--benchmark", flags[flags.index("--benchmark") + 1]]
        score += ["--output_dir", str(scored.parent), "--video_root", str(paths.world / "videos")]
        commands.append(Command(cli(*score), env))
        results.append(str(scored))
    commands.append(Command(cli("eval", "report", "--results", *results, "--output_dir", str(paths.eval / "report"),
                                "--video_root", str(paths.world / "videos"),
                                "--title", "LLAVIDAL quickstart evaluation (held-out subjects)"), env))
    return commands


def evaluate_step(qs: Quickstart, train: Step) -> Step:
    paths = qs.paths
    return Step(
        "evaluate", "Evaluate on held-out subjects (ADLMCQ x modality sets, descriptions)",
        lambda: (paths.eval / "report" / "report.json").is_file()
        and all(paths.scored(*entry).is_file() for entry in evaluation_plan(qs)),
        {"train": train.settings, "evaluation": qs.recipe.evaluation_fields(),
         "forecast_lead": curriculum.FORECAST_LEAD if qs.recipe.forecast_reasoning else None},
        commands=lambda: evaluation_commands(qs), prepare=lambda: write_infer_jobs(qs),
        prepares=f"{infer_jobs_path(qs)} (the eval infer runs, one per line: llavidal.quickstart.stages)",
    )


def report_step(qs: Quickstart, evaluate: Step) -> Step:
    from llavidal.quickstart.report import write_report

    paths = qs.paths
    return Step(
        "report", "Write the report",
        lambda: all((paths.report / n).is_file() for n in ("report.md", "report.json")), {"eval": evaluate.settings},
        prepare=lambda: write_report(paths, qs.recipe, qs.settings(), qs.base_model),
        prepares=f"{paths.report} (report.md, report.json and plots from the eval result files)",
    )


def build_steps(qs: Quickstart) -> list[Step]:
    """world, llm, video, pose_pretrain, pose, object, mirror (with ``recipe.hand_mirrors``), data, align (when the
    recipe aligns), train, evaluate, report."""
    world, pretrain = world_step(qs), pose_pretrain_step(qs)
    video, pose, obj = video_step(qs), pose_step(qs, pretrain), object_step(qs)
    mirror = [mirror_step(qs, world, video, pose, obj)] if qs.recipe.hand_mirrors else []
    align = align_step(qs) if qs.recipe.align else None
    train = train_step(qs, align)
    evaluate = evaluate_step(qs, train)
    return [world, llm_step(qs), video, pretrain, pose, obj, *mirror,
            data_step(qs), *([align] if align is not None else []), train, evaluate, report_step(qs, evaluate)]
