"""``llavidal ablate``: the video designs compared on a quickstart folder, with the same training budget each.

Run as::

    llavidal ablate --quickstart_dir quickstart_out --designs upstream,pllava,pe,xattn,inject,sampler,qformer \\
        --output_dir docs/ablation [--max_steps N] [--limit N] [--budget_minutes M]

What it reuses: the quickstart folder's world, backbone, pose/object features, pooled video features, training
data and alignment. Steps of the quickstart that are missing are run first, by the quickstart's own steps
(:mod:`llavidal.quickstart.stages`), with the choices the folder records (``OUT/.steps/*.json``; for a new folder
``--preset/--llm/--recipe/--seed``).

What it adds, under ``OUT/ablation/`` (its own ``.steps/``, ``logs/`` and ``commands.sh``, as the quickstart):

* with ``--protocol video`` (the default) the training data every design shares, ``OUT/ablation/video_train.json``:
  per train clip its recognition and forecasting MCQs (the benchmarks' prompts, the recipe's answers) and its
  "what is the person doing" turn, one short video-only sample each; the designs change only the video path, so
  this is where they differ, and a small budget goes to reading the video. ``--protocol curriculum`` trains on the
  quickstart's own ``data/train.json`` instead and evaluates with all modalities too;
* for the ``images`` entry (the upstream design with the world's image-instruction set mixed in, ``--data_mixture``
  with ``--image_weight``): the images' features once, in ``OUT/features/image`` (``llavidal extract video`` on the
  image folder with the pooled features' encoder and flags: each image a 1-frame video);

* per-frame grid features once, in ``OUT/features/video_grid`` (``llavidal extract video --pooling grid``, the
  recipe's encoder): the recipe's frames (8 in the preset) x ``--grid_side`` x ``--grid_side`` patches per frame
  (2 x 2: 32 rows of the encoder's width per clip, small enough for CPU), for the designs that read whole grids
  (pllava, sampler, qformer);
* per design, a training run (``OUT/ablation/<design>/train``) with the SAME budget: the quickstart recipe's flags
  (config, LoRA, batch, learning rate, schedule, seed; ``--max_steps`` when given), started from the aligned
  projectors, plus only the design's flags. Every design's video projector is of the recipe's type
  (``--video_projector``), so the aligned video projector fits every design except ``qformer`` (a Q-Former
  replaces it): that one starts its video projector fresh (pose/object projectors and token rows aligned);
  xattn/inject keep the aligned projector for the video span and start their gated conditioning at zero;
* per design, the evaluation on held-out subjects: recognition and forecasting ADLMCQ, video only (and all
  modalities with ``--protocol curriculum``), scored by option log-likelihood (``--mcq_scoring``, default ``loglik_norm``), in-process (the
  same functions as ``llavidal eval infer`` / ``eval mcq``; predictions in ``OUT/ablation/<design>/eval``);
* ``OUTPUT_DIR/ablation.md`` and ``ablation.json``: per design, accuracy with correct/n and the 95% Wilson
  interval for each (task, modality set), video tokens per clip in the prompt, trainable parameters (projectors,
  token rows, conditioning, LoRA), training seconds (the Trainer's runtime) and evaluation seconds.

Each design's training and evaluation are resumable steps: a finished design is neither retrained nor
re-evaluated (a changed budget or design retrains it); files are written atomically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from llavidal.config import arg, command, parse

DESCRIPTION = ("Compare the video designs on a quickstart folder: each trained with the same budget from the aligned "
               "projectors and evaluated on held-out recognition and forecasting (video only; all modalities too with --protocol curriculum) by "
               "log-likelihood; a table with n and 95% intervals.")
DEFAULT_DESIGNS = "upstream,pllava,pe,xattn,inject,sampler,qformer"
ABLATION_TASKS = ("recognition", "forecasting")
ABLATION_SETS = ("video", "all")
PREREQUISITES = ("world", "llm", "video", "pose_pretrain", "pose", "object", "data", "align")
"""The quickstart's steps the ablation needs (everything before its own training)."""


@dataclass(frozen=True)
class AblationDesign:
    """How one design of :data:`llavidal.model.designs.DESIGN_PRESETS` is trained in the ablation."""

    preset: str
    grid: bool
    """Reads per-frame grid features (``OUT/features/video_grid``) instead of the pooled rows."""
    aligned_video: bool
    """Starts its video projector from the aligned one (False: fresh)."""
    note: str
    sampler_train: str = ""
    images: bool = False
    """Trains on the world's image-instruction set mixed in (``--data_mixture``), images as 1-frame videos."""


ABLATION_DESIGNS: dict[str, AblationDesign] = {
    "upstream": AblationDesign("upstream", False, True, "pooled rows (T+S) through the projector"),
    "pllava": AblationDesign("pllava", True, True, "per-frame grids, projector on every patch, adaptive 3D pooling "
                             "to T/2 x side x side"),
    "pe": AblationDesign("pe", False, True, "pooled rows + learned temporal/spatial positional encodings"),
    "xattn": AblationDesign("xattn", False, True, "pooled rows spliced + gated cross-attention (every 4th layer)"),
    "inject": AblationDesign("inject", False, True, "pooled rows spliced + gated per-layer injection"),
    "sampler": AblationDesign("sampler", True, True, "per-frame grids, question-guided sampler keeps T/2 frames "
                              "(straight-through)"),
    "sampler_pseudo": AblationDesign("sampler", True, True, "as sampler, trained with LSTP pseudo-labels "
                                     "(auxiliary loss)", sampler_train="pseudo"),
    "qformer": AblationDesign("qformer", True, False, "per-frame grids read by a Q-Former (T/2 x side x side "
                              "queries, question-aware); video projector fresh"),
    "images": AblationDesign("upstream", False, True, "upstream, with the world's image-instruction set (single "
                             "frames: posture, object, hand) mixed into its training data", images=True),
}
PROTOCOLS = {
    "video": "every design trained on video-only samples (the train split's recognition and forecasting MCQs and "
             "\"what is the person doing\" turns, one per sample) and evaluated with the video alone",
    "curriculum": "every design trained on the quickstart's own training data (all modalities, reduced-modality "
                  "copies) and evaluated with the video alone and with all modalities",
}


@dataclass
class AblateArguments:
    quickstart_dir: str = arg(help="a quickstart output folder (finished or not: its missing steps up to the "
                                   "alignment are run first)", aliases=["--out"])
    designs: str = arg(DEFAULT_DESIGNS, "comma-separated designs to compare: upstream, pllava, pe, xattn, inject, "
                                        "sampler, sampler_pseudo (the sampler trained with LSTP pseudo-labels), qformer, "
                                        "images (upstream with the world's image-instruction set mixed in)")
    protocol: str = arg("video", "what each design trains and is evaluated on: video (video-only samples, video-only "
                                 "evaluation: the designs change only the video path, and short samples let a small "
                                 "budget learn) or curriculum (the quickstart's training data; video and all "
                                 "modalities)", choices=list(PROTOCOLS))
    image_weight: float = arg(0.5, "sampling weight of the image-instruction set for the images design (share of its "
                                   "samples drawn per epoch, as --data_mixture)")
    output_dir: str = arg("docs/ablation", "where ablation.md and ablation.json are written")
    max_steps: Optional[int] = arg(None, "optimizer steps of every design (default: the quickstart recipe's)")
    limit: Optional[int] = arg(None, "held-out MCQs per task (default: all)")
    budget_minutes: Optional[float] = arg(None, "time you have for the whole ablation: the measured time per design "
                                                "is printed against it")
    grid_side: int = arg(2, "patches per side of each frame of the grid features (2: 2x2 per frame)")
    mcq_scoring: str = arg("loglik_norm", "how MCQs are answered: loglik_norm, loglik_char, loglik (option "
                                          "log-likelihood) or generate", choices=["loglik_norm", "loglik_char",
                                                                                  "loglik", "generate"])
    eval_batch_size: Optional[int] = arg(None, "records per evaluation batch (default: the recipe's)")
    train_procs: Optional[int] = arg(None, "torchrun ranks per training (default: the recipe's; 1 runs llavidal "
                                           "train without torchrun)")
    train_threads: Optional[int] = arg(None, "threads per rank (default: the recipe's)")
    preset: Optional[str] = arg(None, "world size of a NEW quickstart folder (default: what the folder records, else "
                                      "medium)")
    llm: Optional[str] = arg(None, "backbone of a new quickstart folder (default: what the folder records, else "
                                   "embedded)")
    recipe: Optional[str] = arg(None, "recipe of a new quickstart folder (default: what the folder records, else "
                                      "embedded)")
    seed: Optional[int] = arg(None, "seed of a new quickstart folder and of every design's training (default: what "
                                    "the folder records, else 0)")
    workers: Optional[int] = arg(None, "worker processes for the quickstart's world and decoding steps (default: "
                                       "all CPU cores)")

    def design_list(self) -> list[str]:
        names = [n.strip() for n in self.designs.split(",") if n.strip()]
        unknown = [n for n in names if n not in ABLATION_DESIGNS]
        if unknown or not names:
            raise ValueError(f"--designs {self.designs!r}: unknown {unknown}; choose from {', '.join(ABLATION_DESIGNS)}")
        return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- the quickstart it reuses
def _record_settings(out: Path, step: str) -> dict | None:
    try:
        return json.loads((out / ".steps" / f"{step}.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return None


def _recipe_from_record(data: dict):
    from llavidal.quickstart.recipes import Recipe

    known = {f.name: f for f in fields(Recipe)}
    values = {}
    for key, value in data.items():
        if key not in known:
            continue
        default = known[key].default
        values[key] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return Recipe(**values)


def quickstart_of(args: AblateArguments):
    """The :class:`~llavidal.quickstart.stages.Quickstart` of the folder: the choices its step records hold (a flag
    that disagrees with them is refused), else the flags (a new folder)."""
    from llavidal.quickstart.layout import Paths
    from llavidal.quickstart.recipes import resolve_recipe
    from llavidal.quickstart.stages import Quickstart

    paths = Paths(args.quickstart_dir)
    world, llm, data = (_record_settings(paths.out, s) for s in ("world", "llm", "data"))
    align = _record_settings(paths.out, "align") or {}
    recorded = {"preset": (world or {}).get("preset"), "llm": (llm or {}).get("llm"),
                "recipe": ((data or {}).get("recipe") or {}).get("name"), "seed": (data or world or {}).get("seed")}
    for name, value in recorded.items():
        given = getattr(args, name)
        if value is not None and given is not None and given != value:
            raise ValueError(f"--{name} {given}: {paths.out} was made with {name} {value} ({paths.out / '.steps'}); "
                             f"leave --{name} out to use the folder's, or ablate another folder")
    recipe = _recipe_from_record(data["recipe"]) if data and data.get("recipe") else \
        resolve_recipe(args.recipe or "embedded", [])
    if args.train_procs or args.train_threads:
        from dataclasses import replace

        recipe = replace(recipe, train_procs=args.train_procs or recipe.train_procs,
                         train_threads=args.train_threads or recipe.train_threads)
    return Quickstart(paths=paths, recipe=recipe, preset=recorded["preset"] or args.preset or "medium",
                      llm=recorded["llm"] or args.llm or "embedded",
                      seed=recorded["seed"] if recorded["seed"] is not None else (args.seed or 0),
                      workers=args.workers or os.cpu_count() or 1, train_flags=dict(align.get("extra") or {}))


def ensure_prerequisites(qs, log=print) -> list[str]:
    """Run the quickstart's steps up to the alignment that are missing (their outputs do not validate), through its
    step runner (steps it has a record of are skipped). Returns the names of the steps that were missing."""
    from llavidal.quickstart.stages import build_steps
    from llavidal.quickstart.steps import StepRunner

    steps = build_steps(qs)
    needed = [s for s in steps if s.name in PREREQUISITES]
    missing = [s.name for s in needed if not s.validate()]
    if missing:
        log(f"quickstart steps missing in {qs.paths.out}: {', '.join(missing)}; running them")
        runner = StepRunner(qs.paths.out, log=log)
        runner.run(needed)
        runner.write_script(steps)  # the quickstart's commands.sh keeps its later steps
    return missing


# --------------------------------------------------------------------------- the ablation's steps
@dataclass
class Ablation:
    qs: Any
    designs: list[str]
    max_steps: int | None = None
    limit: int | None = None
    grid_side: int = 2
    mcq_scoring: str = "loglik_norm"
    eval_batch_size: int = 16
    protocol: str = "video"
    image_weight: float = 0.5
    work: Path = field(init=False)
    grid_folder: Path = field(init=False)
    image_folder: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        self.work = self.qs.paths.out / "ablation"
        self.grid_folder = self.qs.paths.features / "video_grid"
        self.image_folder = self.qs.paths.features / "image"

    @property
    def sets(self) -> tuple[str, ...]:
        """The modality sets evaluated: the video alone (protocol video), or the video alone and all."""
        return ("video",) if self.protocol == "video" else ABLATION_SETS

    def data_path(self) -> Path:
        """The training records every design shares."""
        return self.work / "video_train.json" if self.protocol == "video" else self.qs.paths.data / "train.json"

    @property
    def image_dir(self) -> Path:
        return self.qs.paths.annotations("train") / "images"

    @property
    def image_records(self) -> Path:
        return self.qs.paths.annotations("train") / "image_records.json"

    def needs_images(self) -> bool:
        return any(ABLATION_DESIGNS[n].images for n in self.designs)

    # ---------------------------------------------------------------- sizes
    @property
    def frames(self) -> int:
        return int(self.qs.recipe.video_frames)

    def train_settings(self) -> dict[str, Any]:
        """The budget every design shares: the recipe's flags, the quickstart's extra flags, ``--max_steps``."""
        settings = self.qs.recipe.train_settings(self.qs.train_flags)
        if self.max_steps:
            settings["max_steps"] = int(self.max_steps)
        return settings

    def design_flags(self, name: str) -> dict[str, Any]:
        """The train flags that make design ``name`` (on top of the shared budget)."""
        design = ABLATION_DESIGNS[name]
        projector = str(self.train_settings().get("mm_projector_type", "linear"))
        half = max(1, self.frames // 2)
        flags: dict[str, Any] = {"video_design": design.preset}
        if design.preset in ("pllava", "pe", "sampler"):
            flags["video_projector"] = projector  # the aligned video projector's type: it loads into the frontend
        if design.preset == "pllava":
            flags["video_pool"] = f"{half},{self.grid_side},{self.grid_side}"
        if design.preset == "sampler":
            flags["sampler_k"] = half
        if design.sampler_train:
            flags["sampler_train"] = design.sampler_train
        if design.preset == "qformer":
            flags["qformer_queries"] = half * self.grid_side * self.grid_side
        return flags

    def video_folder(self, name: str) -> Path:
        return self.grid_folder if ABLATION_DESIGNS[name].grid else self.qs.paths.video

    def design_dir(self, name: str) -> Path:
        return self.work / name

    def needs_grid(self) -> bool:
        return any(ABLATION_DESIGNS[n].grid for n in self.designs)

    # ---------------------------------------------------------------- grid features
    def grid_valid(self) -> bool:
        from llavidal.data.feature_store import FeatureManifest
        from llavidal.quickstart.stages import _clips, features_complete

        if not features_complete(self.grid_folder, "*.safetensors", _clips(self.qs)):
            return False
        manifest = FeatureManifest.load(self.grid_folder)
        return manifest is not None and list(manifest.shape[:2]) == [self.frames, self.grid_side ** 2]

    def grid_encoder(self) -> str:
        """The encoder of the pooled video features (their manifest's recipe), else the recipe's: grids and pooled
        rows come from the same encoder."""
        from llavidal.data.feature_store import FeatureManifest

        manifest = FeatureManifest.load(self.qs.paths.video) if self.qs.paths.video.is_dir() else None
        recorded = (manifest.recipe or {}).get("encoder") if manifest is not None else None
        return str(recorded or getattr(self.qs.recipe, "video_encoder", "") or "")

    def grid_step(self):
        from llavidal.quickstart.stages import video_extract_command
        from llavidal.quickstart.steps import Step

        paths = self.qs.paths
        return Step(
            "video_grid", f"Extract per-frame grid video features ({self.frames} frames x {self.grid_side}x"
                          f"{self.grid_side} patches)", self.grid_valid,
            {"frames": self.frames, "grid": self.grid_side, "encoder": self.grid_encoder(),
             "batch": self.qs.recipe.video_batch},
            commands=lambda: [video_extract_command(
                self.qs, "--video_dir_path", str(paths.world / "videos"),
                "--clip_feat_path", str(self.grid_folder), "--pooling", "grid", "--num_frames", str(self.frames),
                *(["--encoder", self.grid_encoder()] if self.grid_encoder() else []),
                "--spatial_grid", str(self.grid_side))],
            clear_on_change=(self.grid_folder,),
        )

    # ---------------------------------------------------------------- the video-only training data
    def write_video_data(self) -> None:
        from llavidal.quickstart.curriculum import build_video_only_records
        from llavidal.utils.io import atomic_write_json

        records, counts = build_video_only_records(self.qs.paths, self.qs.recipe, seed=self.qs.seed)
        if not records:
            raise ValueError(f"{self.qs.paths.annotations('train')}: no train clip with video features and an MCQ or "
                             "a recognition turn; the world's annotations are incomplete (rerun llavidal quickstart)")
        atomic_write_json(self.data_path(), records)
        atomic_write_json(self.work / "video_train_summary.json", counts)

    def data_step(self):
        from llavidal.quickstart.steps import Step

        recipe = self.qs.recipe
        return Step(
            "video_data", "Build the video-only training data (train split: MCQs and recognition turns)",
            lambda: self.data_path().is_file(),
            {"protocol": self.protocol, "seed": self.qs.seed, "mcq_answer": recipe.mcq_answer,
             "forecast_reasoning": recipe.forecast_reasoning},
            prepare=self.write_video_data,
            prepares=f"{self.data_path()} (llavidal.quickstart.curriculum.build_video_only_records)",
        )

    # ---------------------------------------------------------------- image features
    def image_count(self) -> int:
        from llavidal.features.images import find_images

        return len(find_images(self.image_dir)) if self.image_dir.is_dir() else 0

    def images_valid(self) -> bool:
        from llavidal.quickstart.stages import features_complete

        count = self.image_count()
        return count > 0 and features_complete(self.image_folder, "*.safetensors", count)

    def check_image_set(self) -> None:
        if not self.image_records.is_file() or not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"design images: {self.image_records} (and its images/ folder) not found: the world predates the "
                "image-instruction set; regenerate it (llavidal synth --out WORLD --preset PRESET --seed SEED, "
                "the quickstart's world step) or leave the images design out")

    def image_step(self):
        from llavidal.quickstart.stages import video_extract_command
        from llavidal.quickstart.steps import Step

        recipe = self.qs.recipe
        return Step(
            "image_features", f"Extract image features of the world's image-instruction set ({self.grid_encoder()}, "
                              "each image a 1-frame video)", self.images_valid,
            {"frames": recipe.video_frames, "temporal": recipe.video_temporal_tokens,
             "grid": recipe.video_spatial_grid, "encoder": self.grid_encoder(), "batch": recipe.video_batch},
            commands=lambda: [video_extract_command(
                self.qs, "--video_dir_path", str(self.image_dir), "--clip_feat_path", str(self.image_folder),
                *(["--encoder", self.grid_encoder()] if self.grid_encoder() else []),
                "--num_frames", str(recipe.video_frames), "--temporal_tokens", str(recipe.video_temporal_tokens),
                "--spatial_grid", str(recipe.video_spatial_grid))],
            clear_on_change=(self.image_folder,),
        )

    # ---------------------------------------------------------------- training
    def adapter(self, name: str) -> Path | None:
        """What the design starts from: the aligned projectors, or them without the video projector."""
        if not self.qs.recipe.align:
            return None
        if ABLATION_DESIGNS[name].aligned_video:
            return self.qs.paths.align
        return self.work / "align_without_video" / "trainable.safetensors"

    def write_adapter_without_video(self) -> None:
        from llavidal.model.config import TRAINABLE_NAME
        from llavidal.model.weights import read_weights, write_weights

        state = read_weights(self.qs.paths.align / TRAINABLE_NAME)
        kept = {k: v for k, v in state.items() if not k.startswith("projectors.video.")}
        target = self.work / "align_without_video" / TRAINABLE_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        write_weights(kept, target, metadata={"producer": "llavidal ablate"})

    def train_command(self, name: str):
        from llavidal.quickstart.stages import TRAIN_MEM, cli, flag_value, torchrun
        from llavidal.quickstart.steps import Command

        qs, recipe = self.qs, self.qs.recipe
        paths = qs.paths
        flags = {**recipe.train_overrides, **qs.train_flags}
        if self.max_steps:
            flags["max_steps"] = int(self.max_steps)
        flags.update(self.design_flags(name))
        # every design on padded rows, whatever the preset's config says: the designs that read whole clips or
        # condition the LLM on one video per row cannot pack, and the comparison changes nothing but the design
        flags["packing"] = False
        if ABLATION_DESIGNS[name].images:
            data = ["--data_mixture", f"{self.data_path()}:1,{self.image_records}:{self.image_weight:g}",
                    "--image_folder", str(self.image_folder)]
        else:
            data = ["--data_path", str(self.data_path())]
        main_args = ["--config", str(recipe.config_path()), "--model_name_or_path", qs.base_model, *data,
                     "--video_folder", str(self.video_folder(name)),
                     "--pose_folder", str(paths.pose), "--object_folder", str(paths.object),
                     "--output_dir", str(self.design_dir(name) / "train"), "--seed", str(qs.seed)]
        adapter = self.adapter(name)
        if adapter is not None and "pretrain_mm_mlp_adapter" not in flags:
            main_args += ["--pretrain_mm_mlp_adapter", str(adapter)]
        for key, value in flags.items():
            main_args += [f"--{key}", flag_value(value)]
        if recipe.train_procs > 1:
            argv = torchrun(recipe.train_procs, str(TRAIN_MEM), *main_args)
        else:
            argv = cli("train", *main_args)
        return Command(argv, {"OMP_NUM_THREADS": str(recipe.train_threads), "TOKENIZERS_PARALLELISM": "false"})

    def train_valid(self, name: str) -> bool:
        folder = self.design_dir(name) / "train"
        return all((folder / n).is_file() for n in ("trainable.safetensors", "llavidal_config.json",
                                                    "trainer_state.json"))

    def train_step(self, name: str):
        from llavidal.quickstart.steps import Step

        qs = self.qs
        needs_adapter = self.qs.recipe.align and not ABLATION_DESIGNS[name].aligned_video

        def prepare() -> None:
            # predictions of earlier weights must not be resumed by the new weights' evaluation
            import shutil

            shutil.rmtree(self.design_dir(name) / "eval", ignore_errors=True)
            self.results_path(name).unlink(missing_ok=True)
            if needs_adapter:
                self.write_adapter_without_video()
        return Step(
            f"train_{name}", f"Train design {name} ({ABLATION_DESIGNS[name].note})", lambda: self.train_valid(name),
            {"design": self.design_flags(name), "budget": self.train_settings(), "recipe": asdict(qs.recipe),
             "llm": qs.base_model, "seed": qs.seed, "video": "grid" if ABLATION_DESIGNS[name].grid else "pooled",
             "grid": self.grid_side if ABLATION_DESIGNS[name].grid else None,
             "aligned_video": ABLATION_DESIGNS[name].aligned_video, "protocol": self.protocol,
             "images": self.image_weight if ABLATION_DESIGNS[name].images else None},
            commands=lambda: [self.train_command(name)],
            prepare=prepare,
            prepares=(f"removes {self.design_dir(name) / 'eval'} (predictions of earlier weights)"
                      + (f"; writes {self.work / 'align_without_video'} (the aligned projectors without the video one)"
                         if needs_adapter else "")),
        )

    # ---------------------------------------------------------------- evaluation
    def evaluation_plan(self) -> list[tuple[str, str]]:
        from llavidal.quickstart.layout import MCQ_FILES

        test_dir = self.qs.paths.annotations("test")
        return [(task, set_name) for task in ABLATION_TASKS if (test_dir / MCQ_FILES[task]).is_file()
                for set_name in self.sets]

    def results_path(self, name: str) -> Path:
        return self.design_dir(name) / "results.json"

    def evaluate(self, name: str) -> dict:
        """Held-out MCQs of :meth:`evaluation_plan` for one trained design, in-process (one engine for all)."""
        from llavidal.eval.run_inference import check_feature_manifests, run_inference
        from llavidal.eval.tasks import load_task
        from llavidal.quickstart.layout import MCQ_BENCHMARKS, MCQ_FILES, MODALITY_SETS
        from llavidal.serve.engine import InferenceEngine
        from llavidal.utils.io import atomic_write_json

        paths = self.qs.paths
        weights = self.design_dir(name) / "train"
        start = time.perf_counter()
        engine = InferenceEngine.from_pretrained(weights, device="cpu", dtype="float32")
        results: dict[str, dict[str, dict]] = {}
        for task, set_name in self.evaluation_plan():
            spec = load_task(MCQ_BENCHMARKS[task])
            records = spec.load_records(paths.annotations("test") / MCQ_FILES[task], limit=self.limit)
            folders = {m: (self.video_folder(name) if m == "video" else paths.folders()[m])
                       for m in MODALITY_SETS[set_name]}
            check_feature_manifests(weights, folders)
            predictions = self.design_dir(name) / "eval" / f"{task}__{set_name}.jsonl"
            summary = run_inference(engine, records, folders, predictions, benchmark=spec,
                                    batch_size=self.eval_batch_size, max_new_tokens=self.qs.recipe.mcq_max_new_tokens,
                                    optional_modalities=["object"], show_progress=False, mcq_scoring=self.mcq_scoring)
            if summary.errors:
                raise RuntimeError(f"design {name}: {summary.errors} records of {task} ({set_name}) failed, e.g. "
                                   f"{summary.error_examples[0]}; rerun to try them again")
            scored = spec.score(str(predictions), records)["metrics"]
            results.setdefault(task, {})[set_name] = {
                "accuracy": scored["accuracy"], "correct": scored["correct"], "n": scored["n"],
                "missing": scored["missing"], "ci95": scored["ci95"], "predictions": str(predictions),
            }
            print(f"  {name} {task} {set_name}: {format_accuracy(results[task][set_name])}", flush=True)
        video_spec = engine.modalities["video"]
        from llavidal.data.feature_store import FeatureManifest

        shape = FeatureManifest.load(self.video_folder(name)).shape
        summary = {
            "design": name, "preset": ABLATION_DESIGNS[name].preset, "note": ABLATION_DESIGNS[name].note,
            "train_flags": self.design_flags(name),
            "video_features": "grid" if ABLATION_DESIGNS[name].grid else "pooled",
            "video_feature_shape": list(shape),
            "aligned_video_projector": bool(self.qs.recipe.align and ABLATION_DESIGNS[name].aligned_video),
            "video_tokens": int(video_spec.tokens_for(tuple(shape))),
            "conditioning": engine.model.conditioning_settings,
            "trainable_parameters": trainable_parameters(weights),
            "train_seconds": train_runtime(weights),
            "eval_seconds": round(time.perf_counter() - start, 1),
            "scoring": self.mcq_scoring, "limit": self.limit, "protocol": self.protocol,
            "image_weight": self.image_weight if ABLATION_DESIGNS[name].images else None, "results": results,
        }
        atomic_write_json(self.results_path(name), summary)
        return summary

    def eval_step(self, name: str, train):
        from llavidal.quickstart.steps import Step

        return Step(
            f"eval_{name}", f"Evaluate design {name} (held-out {', '.join(ABLATION_TASKS)} x "
                            f"{', '.join(self.sets)}, {self.mcq_scoring})",
            lambda: self.results_path(name).is_file(),
            {"train": train.settings, "scoring": self.mcq_scoring, "limit": self.limit,
             "plan": [list(p) for p in self.evaluation_plan()]},
            prepare=lambda: self.evaluate(name),
            prepares=(f"{self.design_dir(name) / 'eval'} and {self.results_path(name)} (llavidal eval infer "
                      f"--mcq_scoring {self.mcq_scoring} + eval mcq, in-process)"),
        )

    def check_grid_folder(self) -> None:
        """Refuse grid features of another shape than asked (the folder is made once and reused)."""
        from llavidal.data.feature_store import FeatureManifest

        manifest = FeatureManifest.load(self.grid_folder) if self.grid_folder.is_dir() else None
        if manifest is not None and list(manifest.shape[:2]) != [self.frames, self.grid_side ** 2]:
            raise ValueError(f"{self.grid_folder} holds grids of {manifest.shape[0]} frames x {manifest.shape[1]} "
                             f"patches, not {self.frames} x {self.grid_side}x{self.grid_side}: pass the --grid_side it "
                             "was made with, or delete the folder to extract it again")
        pooled = FeatureManifest.load(self.qs.paths.video) if self.qs.paths.video.is_dir() else None
        if manifest is not None and pooled is not None and \
                (manifest.model_id, manifest.weights_sha256) != (pooled.model_id, pooled.weights_sha256):
            raise ValueError(f"{self.grid_folder} was made with encoder {manifest.model_id or '?'} but "
                             f"{self.qs.paths.video} with {pooled.model_id or '?'}: the designs would not compare "
                             "like with like; delete the grid folder to extract it again with the quickstart's encoder")

    def steps(self) -> list:
        """The grid extraction (when a design needs grids and the folder is not complete yet), then per design its
        training and its evaluation."""
        steps = []
        if self.protocol == "video":
            steps.append(self.data_step())
        if self.needs_images():
            self.check_image_set()
            if not self.images_valid():
                steps.append(self.image_step())
        if self.needs_grid():
            self.check_grid_folder()
            if not self.grid_valid():
                steps.append(self.grid_step())
        for name in self.designs:
            train = self.train_step(name)
            steps += [train, self.eval_step(name, train)]
        return steps


# --------------------------------------------------------------------------- measurements and the table
def trainable_parameters(weights: Path) -> int:
    """Elements of every trained tensor: ``trainable.safetensors`` (projectors, token rows, conditioning) and the
    LoRA adapter beside it."""
    from safetensors import safe_open

    total = 0
    for name in ("trainable.safetensors", "adapter_model.safetensors"):
        path = weights / name
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                total += _numel(handle.get_slice(key).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def train_runtime(weights: Path) -> float | None:
    """The Trainer's ``train_runtime`` (seconds of training, model loading excluded) from ``trainer_state.json``."""
    try:
        history = json.loads((weights / "trainer_state.json").read_text()).get("log_history") or []
    except (OSError, ValueError):
        return None
    values = [entry["train_runtime"] for entry in history if "train_runtime" in entry]
    return float(values[-1]) if values else None  # unrounded: a tiny run takes well under 0.1 s


def format_accuracy(entry: dict | None) -> str:
    if not entry or entry.get("accuracy") is None:
        return "n/a"
    low, high = entry["ci95"]
    return f"{entry['accuracy']:.1f}% ({entry['correct']}/{entry['n']}; {low:.1f}-{high:.1f})"


def correct_by_question(ablation: Ablation, row: dict, task: str, set_name: str) -> dict[str, bool]:
    """Question id -> answered correctly, re-scored from a design's predictions file (the same scorer as its
    accuracy)."""
    from llavidal.eval.tasks import load_task
    from llavidal.quickstart.layout import MCQ_BENCHMARKS, MCQ_FILES

    spec = load_task(MCQ_BENCHMARKS[task])
    records = spec.load_records(ablation.qs.paths.annotations("test") / MCQ_FILES[task], limit=ablation.limit)
    scored = spec.score(row["results"][task][set_name]["predictions"], records)
    return {str(item["id"]): bool(item["correct"]) for item in scored["items"]}


def paired_against(ablation: Ablation, rows: dict[str, dict], base: str, columns: list[tuple[str, str]]) -> dict:
    """design -> "task/set" -> :func:`llavidal.eval.mcq.paired_difference` against design ``base`` on the same
    questions."""
    from llavidal.eval.mcq import paired_difference

    out: dict[str, dict] = {}
    for task, set_name in columns:
        if set_name not in rows[base]["results"].get(task, {}):
            continue
        reference = correct_by_question(ablation, rows[base], task, set_name)
        for name, row in rows.items():
            if name != base and set_name in row["results"].get(task, {}):
                other = correct_by_question(ablation, row, task, set_name)
                out.setdefault(name, {})[f"{task}/{set_name}"] = paired_difference(reference, other)
    return out


def format_difference(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    low, high = entry["ci95"]
    return (f"{100 * entry['difference']:+.1f} ({entry['other_only']} vs {entry['base_only']}; "
            f"{100 * low:+.1f} to {100 * high:+.1f}; p={entry['p_mcnemar']:.2g})")


def write_table(ablation: Ablation, output_dir: Path, wall: dict[str, float]) -> tuple[Path, Path, dict]:
    """``ablation.md`` + ``ablation.json`` from every design's ``results.json`` (atomic writes)."""
    from llavidal.utils.io import atomic_write_json, atomic_write_text

    qs = ablation.qs
    rows = {}
    for name in ablation.designs:
        data = json.loads(ablation.results_path(name).read_text())
        data["wall_seconds"] = wall.get(name)
        rows[name] = data
    budget = ablation.train_settings()
    shared = {key: budget.get(key) for key in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                                               "learning_rate", "lr_scheduler_type", "warmup_ratio", "lora_enable",
                                               "lora_r", "mm_projector_type", "version")}
    shared.update(seed=qs.seed, train_procs=qs.recipe.train_procs, llm=qs.llm, preset=qs.preset,
                  recipe=qs.recipe.name, aligned=bool(qs.recipe.align), protocol=ablation.protocol)
    data_counts = None
    if ablation.protocol == "video" and (ablation.work / "video_train_summary.json").is_file():
        data_counts = json.loads((ablation.work / "video_train_summary.json").read_text())
    report = {
        "quickstart_dir": str(qs.paths.out), "budget": shared, "scoring": ablation.mcq_scoring, "limit": ablation.limit,
        "protocol": ablation.protocol, "protocol_note": PROTOCOLS[ablation.protocol], "training_data": data_counts,
        "grid_features": {"folder": str(ablation.grid_folder), "frames": ablation.frames,
                          "patches_per_frame": f"{ablation.grid_side}x{ablation.grid_side}"}
        if ablation.needs_grid() else None,
        "tasks": list(ABLATION_TASKS), "modality_sets": list(ablation.sets), "designs": rows,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    columns = [(task, s) for task in ABLATION_TASKS for s in ABLATION_SETS
               if any(task in r["results"] and s in r["results"][task] for r in rows.values())]
    lines = [
        "# Video design ablation",
        "",
        f"Quickstart folder `{qs.paths.out.name}` (preset {qs.preset}, LLM {qs.llm}, recipe {qs.recipe.name}); every "
        f"design trained with the same budget: {shared['max_steps']} steps x batch "
        f"{shared['per_device_train_batch_size']} x {qs.recipe.train_procs} rank(s), learning rate "
        f"{shared['learning_rate']}, seed {qs.seed}" + (", from the aligned projectors" if qs.recipe.align else "")
        + f". Held-out subjects, MCQs answered by {ablation.mcq_scoring}"
        + (f", first {ablation.limit} per task" if ablation.limit else "") + ".",
        "",
        f"Protocol `{ablation.protocol}`: {PROTOCOLS[ablation.protocol]}"
        + (f" ({data_counts['samples']} samples from {data_counts['clips']} train clips: {data_counts['mcq']} MCQs, "
           f"{data_counts['record_turns']} recognition turns)" if data_counts else "") + ".",
        "",
        ("Accuracy (correct/n; 95% Wilson interval, percent). `video`: video features only"
         + ("; `all`: video, pose and objects." if "all" in ablation.sets else ".")),
        "",
        "| design | " + " | ".join(f"{task} ({s})" for task, s in columns)
        + " | video tokens | trainable params | train s | eval s |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for name, row in rows.items():
        cells = [format_accuracy(row["results"].get(task, {}).get(s)) for task, s in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['video_tokens']} | {row['trainable_parameters']:,} "
                     f"| {_seconds(row['train_seconds'])} | {_seconds(row['eval_seconds'])} |")
    base = "upstream" if "upstream" in rows else None
    if base is not None and len(rows) > 1:
        paired = paired_against(ablation, rows, base, columns)
        report["paired_vs_upstream"] = paired
        lines += ["", (f"Against `{base}` on the same questions (paired): difference in accuracy points (questions "
                       f"only this design got right vs only `{base}` did; 95% interval; McNemar's exact p)."), "",
                  "| design | " + " | ".join(f"{task} ({s})" for task, s in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for name in rows:
            if name != base:
                lines.append(f"| {name} | " + " | ".join(format_difference(paired.get(name, {}).get(f"{task}/{s}"))
                                                        for task, s in columns) + " |")
    lines += ["", "Designs:", ""]
    for name, row in rows.items():
        fresh = "" if row["aligned_video_projector"] else " Video projector started fresh (not aligned)."
        if row.get("image_weight"):
            fresh += (f" Training data: `--data_mixture` of the above (weight 1) and the world's image-instruction set "
                      f"`{ablation.image_records.relative_to(qs.paths.out)}` (weight {row['image_weight']:g}; features "
                      f"`{ablation.image_folder.relative_to(qs.paths.out)}`, each image a 1-frame video).")
        flags = " ".join(f"--{k} {v}" for k, v in row["train_flags"].items())
        lines.append(f"- **{name}**: {row['note']}; {row['video_features']} video features "
                     f"{tuple(row['video_feature_shape'])}; flags `{flags}`.{fresh}")
    if ablation.needs_grid():
        lines += ["", (f"Grid features: `{ablation.grid_folder.relative_to(qs.paths.out)}`, {ablation.frames} frames "
                       f"x {ablation.grid_side}x{ablation.grid_side} patches per frame (`llavidal extract video "
                       "--pooling grid`).")]
    lines += ["", ("Made by `llavidal ablate` (llavidal/quickstart/ablate.py); commands in "
                   f"`{qs.paths.out.name}/ablation/commands.sh`.")]
    output_dir.mkdir(parents=True, exist_ok=True)
    md, js = output_dir / "ablation.md", output_dir / "ablation.json"
    atomic_write_json(js, report)
    atomic_write_json(ablation.work / "table.json", report)  # beside the runs: the quickstart report reads it
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md, js, report


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def design_wall_seconds(ablation: Ablation) -> dict[str, float]:
    """Measured wall seconds (training + evaluation steps) of each finished design."""
    out = {}
    for name in ablation.designs:
        total, found = 0.0, False
        for step in (f"train_{name}", f"eval_{name}"):
            try:
                total += float(json.loads((ablation.work / ".steps" / f"{step}.json").read_text())["seconds"])
                found = True
            except (OSError, ValueError, KeyError):
                pass
        if found:
            out[name] = round(total, 1)
    return out


def budget_hint(ablation: Ablation, budget_minutes: float | None, wall: dict[str, float]) -> str:
    """The measured time per design against ``--budget_minutes``."""
    measured = {n: s for n, s in wall.items() if s > 0}
    if not measured:
        return "no design measured yet: the first one's time tells what the others will take"
    mean = sum(measured.values()) / len(measured)
    todo = [n for n in ablation.designs if n not in measured]
    line = (f"measured {len(measured)} design(s): {', '.join(f'{n} {s / 60:.1f} min' for n, s in measured.items())}; "
            f"mean {mean / 60:.1f} min per design")
    if todo:
        line += f"; {len(todo)} to go ({', '.join(todo)}): about {len(todo) * mean / 60:.0f} min more"
    if budget_minutes:
        total = (sum(measured.values()) + len(todo) * mean) / 60
        verdict = "within" if total <= budget_minutes else "OVER"
        line += (f". All {len(ablation.designs)} designs: about {total:.0f} min, {verdict} the budget of "
                 f"{budget_minutes:.0f} min")
        if total > budget_minutes:
            line += " (lower --max_steps or --limit, or drop designs)"
    return line


@command("llavidal ablate")
def main(argv: list[str] | None = None) -> int:
    (args,) = parse((AblateArguments,), argv, prog="llavidal ablate", description=DESCRIPTION)
    from llavidal.quickstart.steps import StepFailed, StepRunner

    designs = args.design_list()
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max_steps must be at least 1, got {args.max_steps}")
    if args.grid_side < 1:
        raise ValueError(f"--grid_side must be at least 1, got {args.grid_side}")
    if not Path(args.quickstart_dir).is_dir():
        raise FileNotFoundError(f"--quickstart_dir {args.quickstart_dir}: no such folder; run llavidal quickstart "
                                "--output_dir FOLDER first (or give the folder it wrote)")
    qs = quickstart_of(args)
    if args.image_weight <= 0:
        raise ValueError(f"--image_weight must be positive, got {args.image_weight}")
    ablation = Ablation(qs, designs, max_steps=args.max_steps, limit=args.limit, grid_side=args.grid_side,
                        mcq_scoring=args.mcq_scoring, protocol=args.protocol, image_weight=args.image_weight,
                        eval_batch_size=args.eval_batch_size or qs.recipe.eval_batch_size)
    print(budget_hint(ablation, args.budget_minutes, design_wall_seconds(ablation)))
    try:
        ensure_prerequisites(qs)
        StepRunner(ablation.work).run(ablation.steps())
    except StepFailed as err:
        print(f"llavidal ablate: {err}", file=sys.stderr)
        print("Fix the cause and rerun the same command: finished designs are skipped.", file=sys.stderr)
        return 1
    wall = design_wall_seconds(ablation)
    md, js, _ = write_table(ablation, Path(args.output_dir), wall)
    print("\n" + md.read_text())
    print(budget_hint(ablation, args.budget_minutes, wall))
    print(f"Table: {md} (and {js.name}); commands: {ablation.work / 'commands.sh'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
