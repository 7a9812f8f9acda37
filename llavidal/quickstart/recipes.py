"""The quickstart's recipes: everything it chooses besides paths (feature sizes, the training config and
its overrides, the curriculum, evaluation sizes), and the training YAML under ``configs/`` they name.

``RECIPES["embedded"]`` is the preset (``configs/quickstart_embedded.yaml``); ``frozen`` is upstream's recipe
on the same data; ``ci`` is the smoke run. ``--recipe_set FIELD=VALUE`` changes one field
(:func:`apply_recipe_settings`).
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llavidal.config import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"
NOT_SETTABLE = ("name", "description")
EVALUATION_FIELDS = ("mcq_scorings", "mcq_max_new_tokens", "description_limit", "description_max_new_tokens",
                     "ablation_limit", "full_eval_sets", "generate_limit", "eval_batch_size", "loglik_batch_size", "eval_procs")


@dataclass(frozen=True)
class Recipe:
    """Everything the quickstart chooses besides paths: feature sizes, training config, evaluation sizes."""

    name: str
    description: str
    train_config: str
    """A train_mem.py YAML config under configs/ (its flags; ``train_overrides`` win)."""
    train_overrides: dict = field(default_factory=dict)
    video_encoder: str = "efficientnet-lite0@160"
    """Vision encoder of the video frames: ImageNet-pretrained EfficientNet-Lite0 (from PyPI) on 160 px
    frames (a 5x5 feature map per frame, half the compute of its native 224 px), or ``embedded`` (a random
    CLIP-architecture encoder), a CLIP folder, ``open_clip:...`` (see ``llavidal extract video --help``)."""
    object_encoder: str = "efficientnet-lite0@96"
    """Vision encoder of the object crops (the same backbone; crops are small, so 96 px)."""
    video_frames: int = 8
    """Frames sampled per video (upstream: 100)."""
    video_temporal_tokens: int = 4
    video_spatial_grid: int = 2
    """Video tokens per clip = temporal tokens + grid^2 spatial tokens."""
    video_batch: int = 64
    """Frames per encoder forward pass of the video extraction (``llavidal extract video --batch_size``); the
    features depend on it by float rounding (float16 values one rounding step apart), so it is part of what the
    video step's files depend on. On CPU EfficientNet-Lite0 at 160 px runs faster in small batches (the medium
    world's video step 156.7 s at 8 against 218.1 s at 64, back to back; benchmarks/README.md), but the one
    fresh-clone run at 8 (139 s for the step) read no better than the committed run at 64 (recognition with every
    modality 184/208 against 190/208, with the video alone 105/208 against 112/208; notes.md), so the preset
    keeps the command's default, 64, with which its committed report was made."""
    pose_tokens: int = 8
    pose_frames: int = 32
    pose_hidden: int = 128
    pose_heads: int = 4
    pose_depth: int = 2
    pose_steps: int = 150
    pose_batch: int = 64
    pose_segments: bool = True
    """Pretrain the pose encoder on each segment of a multi-activity train clip (the segment's frames,
    encoded within the whole clip, against that activity's text) instead of the whole clip against "A,
    then B". The tokens then say what happens when, which forecasting needs (the activity a routine
    prefix ends with)."""
    mcq_answer: str = "text"
    """How MCQ training answers are written: ``text`` ("reading a book", the option's text, which the MCQ
    parser maps to its letter), ``letter`` ("B") or ``letter_text`` ("(B) reading a book"). With the letter
    first, the one token that depends on the features comes before the model has named anything, and a
    small model learns a constant letter instead; naming the option is what the features can answer."""
    align: bool = True
    """Run ``llavidal align`` first: fit the projectors so that a train clip's feature tokens reproduce the
    LLM's embeddings of its activity's name (no LLM pass), and start training from them."""
    align_steps: int = 400
    align_temperature: float = 1.0
    """``llavidal align --align_temperature``: the softmax temperature of the contrastive term over the labels.
    A sharper softmax fits every projector better on the alignment's held-out tenth of the medium world's train
    split (same features, seed and steps; docs/quickstart_report/notes.md), 1.0 -> 0.1: video 30/77 -> 36/77
    (26 activities), pose 83/142 -> 94/142, objects 74/99 -> 78/99 (87 names); but the LLM trained from the
    0.1 alignment did not answer better (recognition with video alone 106/208 against 112/208, with everything
    185/208 against 190/208; forecasting 100/211 against 97/211 and 156/211 against 159/211), so the preset
    keeps 1.0."""
    align_object_names: bool = True
    """Fit each object's tokens to its own name ("purple bottle": colour and class, from the world's metadata)
    instead of the clip's activity name. An object does not tell the activity (a cup is on the table of
    many clips), but it tells which object and what colour, and what follows picking it up; fitted to the
    activity, the object tokens carried none of that (held-out nearest-label accuracy 0.054, against 0.892
    for the names). Measured on the medium world, held-out, all modalities (docs/quickstart_report/notes.md,
    with intervals): which object 15/40 -> 22/40 (21/40 with a second training seed), what colour 13/40 ->
    17/40, forecasting 146/211 -> 150/211. ``false`` reproduces the previous release's alignment exactly."""
    align_hands: bool = True
    """Fit the pose tokens of a one-handed activity to its hand and name ("right hand, waving a hand", from the
    world's metadata; :func:`llavidal.quickstart.curriculum.hand_label`), and with ``hand_mirrors`` the mirrored
    clips' pose tokens too (the other hand), instead of the name alone. The pose features tell the hand (a
    linear probe on the train split reads it for 61 of 64 held-out hand questions), yet with the activity-only
    alignment the model answered "which hand" near chance: the aligned tokens named the hand of 28 of the 64
    held-out hand clips (nearest of "left hand, X" / "right hand, X"), 55 with this (56 after training).
    Measured with ``attribute_variants=2`` (docs/quickstart_report/notes.md): which hand, all modalities,
    0.562 (36/64; 0.44-0.68) -> 0.625 (40/64; 0.50-0.73)."""
    forecast_variants: int = 1
    """Extra training samples per train-split forecasting clip, each the same question with options drawn
    again from the world's rules (other distractors, other order). "What comes next" is the one question
    whose answer is not what the features show; without enough of them the model answers with the activity
    it sees. One is enough now that every routine prefix is a forecasting clip (424 in the medium world's
    train split; three were needed when each routine gave one)."""
    attribute_variants: int = 2
    """Extra training samples per train-split attribute MCQ (which hand, which object, what colour), each the
    question drawn again from the world's rules with another seed (other wording, other distractors, other
    order), asked alone with every modality the clip has; the mirrored clips' hand MCQs get as many. The split
    has few of them (231 in the medium world, against 4000 other samples), and the hand is read from the pose,
    the object and its colour from the object crops: details the mixed data rarely asks for. Measured with
    ``align_hands`` (held-out, all modalities, docs/quickstart_report/notes.md): which object 0.400 (16/40;
    0.26-0.55) -> 0.525 (21/40; 0.37-0.67), what colour 0.325 (13/40; 0.20-0.48) -> 0.400 (16/40; 0.26-0.55)."""
    object_questions: int = 0
    """Draws per train-split clip of :func:`llavidal.sim.annotate.object_mcqs` for the clips the world asks no
    attribute question of (routines, forecasting prefixes): what colour each object in view is, and which object
    the person handles when it handles one (in the medium world 279 colour and 229 object questions per draw,
    against 64 of each the world asks of its single-activity clips). Off: measured with 1 draw and 360 steps
    (the same world, features and alignment as the committed run; docs/quickstart_report/notes.md), held out,
    all modalities, it read the object and its colour no better (which object 0.475, 19/40, 0.33-0.63; what
    colour 0.425, 17/40, 0.29-0.58; committed 0.525 and 0.400) and lost elsewhere: recognition 0.793 (165/208;
    0.73-0.84) against 0.889 (185/208; 0.84-0.93), which hand 0.484 (31/64) against 0.625 (40/64)."""
    hand_mirrors: bool = True
    """Mirror the train clips whose hand is asked (:mod:`llavidal.sim.mirror`: frames flipped, skeleton and
    object boxes reflected, the metadata's hands swapped) and train on their hand questions too. The medium
    world's train subjects answer "the right hand" to 85% of the hand questions (88 of 103) while two of the
    five test subjects are left-handed, so the model had learnt the prior: held-out "which hand" with every
    modality was 0.453 (29/64; 0.34-0.57). The mirrors make the hand 50/50 in training, with real
    pixels and poses; only the hand questions are asked of them. Measured (docs/quickstart_report/notes.md):
    left-handed clips 3/28 (0.04-0.27) -> 20/28 (0.53-0.85), right-handed 26/36 (0.56-0.84) -> 16/36
    (0.30-0.60), all 0.562 (36/64; 0.44-0.68): the prior is gone, the hand is not yet read."""
    forecast_reasoning: bool = True
    """Forecasting training answers first name what the clip ends with, then the answer: "The video ends
    with sitting down on a chair. The answer is standing up from a chair." (the MCQ parser takes the
    choice after "the answer is"). Forecasting is two steps, recognising the last activity and knowing
    what follows it; written out, the first is the recognition the model learns anyway and the second
    becomes a text-to-text rule, where a small LLM otherwise names what it sees."""
    forecast_from_successors: int = 1
    """Forecasting questions per train clip built from what the train split's routines show: a clip that
    ends with activity X is asked what comes next, the answer drawn (uniformly) from the activities seen
    right after X in train routines, the other options from activities never seen after X. Teaches the succession
    rules from many more clips than the split has routine prefixes (train-split statistics only)."""
    reduced_modality_copies: bool = True
    """Add, per train MCQ, a copy that shows a random reduced modality set (video / pose / video+pose), so
    that the same model answers when features are withheld at inference (the ablation)."""
    record_turns: tuple[str, ...] = ("recognition", "description", "last", "hand", "object")
    """Which kinds of question of the world's training records are kept (besides the MCQ turn), by the
    ``type`` the world writes on each question: recognition, description (the world's ``detail``), object,
    hand, count, first, next, last, forecast. "last" ("Which activity does the person finish with?") trains
    what forecasting starts from."""
    video_only_samples: bool = True
    """Add the video-only set (:func:`llavidal.quickstart.curriculum.build_video_only_records`): per train clip its
    recognition and forecasting MCQs and its "What is the person doing?" turns, each a one-turn sample with the
    video features alone. The video is the modality the LLM learns to read last (pose answers most questions
    of the mixed data), and these short samples are where it has to: on the medium world 150 steps of them take
    held-out video-only recognition from 0.337 (70/208; 0.28-0.40; 50 steps) to 0.510 (106/208; 0.44-0.58)
    (docs/quickstart_report/notes.md)."""
    description_fraction: float = 0.25
    """Share of the clips whose detailed description is trained on (descriptions are the longest turns;
    a quarter teaches their form and costs a fraction of the time)."""
    mcq_scorings: tuple[str, ...] = ("loglik", "generate")
    """How held-out MCQs are answered: ``loglik`` (each option's log-likelihood, every record of every modality
    set) and/or ``generate`` (free text + the parser; every record with all modalities, ``ablation_limit``
    records for the reduced sets)."""
    mcq_max_new_tokens: int = 40
    description_limit: int | None = 24
    """Held-out description records generated and judged (None: all)."""
    description_max_new_tokens: int = 96
    ablation_limit: int | None = 40
    """Held-out MCQs per task for the modality sets not in ``full_eval_sets`` (None: all), and for generation
    with every set but ``all``."""
    full_eval_sets: tuple[str, ...] = ("video", "all")
    """Modality sets whose log-likelihood evaluation uses every held-out record (n >= 200 per task)."""
    generate_limit: int | None = 80
    """Held-out MCQs per task answered by generation with all modalities (None: all)."""
    eval_batch_size: int = 16
    loglik_batch_size: int = 8
    eval_procs: int = 1
    """torchrun ranks of the evaluation (``eval infer --jobs``), each scoring its share of every run's records with
    the cores it is left (cores / ranks threads); 1: one process with every core."""
    train_procs: int = 2
    train_threads: int = 1

    def evaluation_fields(self) -> dict[str, Any]:
        """The fields that only change the evaluation (changing them reruns evaluation, not training)."""
        return {name: getattr(self, name) for name in EVALUATION_FIELDS}

    def training_fields(self) -> dict[str, Any]:
        """Every other field: what the features, the data, the alignment and the training depend on."""
        return {k: v for k, v in asdict(self).items() if k not in EVALUATION_FIELDS}

    def config_path(self) -> Path:
        path = Path(self.train_config)
        return path if path.is_absolute() else CONFIG_DIR / path

    def train_settings(self, extra_flags: dict[str, Any] | None = None) -> dict[str, Any]:
        """The training flags in effect: the YAML config, then ``train_overrides``, then the user's flags."""
        import yaml

        config = yaml.safe_load(self.config_path().read_text()) or {}
        return {**config, **self.train_overrides, **(extra_flags or {})}


RECIPES: dict[str, Recipe] = {
    # The preset: LoRA on the LLM's attention and two-layer projectors (see configs/quickstart_embedded.yaml).
    "embedded": Recipe(
        name="embedded",
        description="LoRA (r 16) on q/k/v/o + mlp2x_gelu projectors, LLM otherwise frozen",
        train_config="quickstart_embedded.yaml",
    ),
    # Upstream's recipe (frozen LLM, linear projectors), same data and time, for comparison.
    "frozen": Recipe(
        name="frozen",
        description="LLM frozen, linear projectors + new token rows trained (upstream's recipe)",
        train_config="quickstart_embedded.yaml",
        train_overrides={"lora_enable": False, "tune_mm_mlp_adapter": True, "mm_projector_type": "linear",
                         "learning_rate": 1e-3},
    ),
    # The CI smoke run: a tiny random LLM, few tokens and steps; checks that every step works, not quality.
    "ci": Recipe(
        name="ci",
        description="smoke test: tiny sizes, a few optimizer steps",
        train_config="quickstart_embedded.yaml",
        train_overrides={"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1, "lora_r": 4,
                         "lora_alpha": 8},
        video_frames=4, video_temporal_tokens=2, video_spatial_grid=1,
        pose_tokens=2, pose_frames=8, pose_hidden=32, pose_heads=2, pose_depth=1, pose_steps=5, pose_batch=16,
        align_steps=20, forecast_variants=1, forecast_from_successors=1,  # the successor and mirror paths run in CI
        mcq_max_new_tokens=4, description_limit=4, description_max_new_tokens=8, ablation_limit=4, generate_limit=None,
        eval_batch_size=8, train_procs=2, train_threads=1,
    ),
}


def apply_recipe_settings(recipe: Recipe, items: list[str]) -> Recipe:
    """``recipe`` with ``FIELD=VALUE`` changes (values parsed as literals, typed like the field's default)."""
    known = {f.name: f for f in fields(Recipe)}
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in known or key in NOT_SETTABLE:
            raise ValueError(f"--recipe_set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(k for k in known if k not in NOT_SETTABLE)}")
        literal = {"true": "True", "false": "False", "null": "None", "none": "None"}.get(text.strip().lower(), text)
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            value = text  # a bare string
        current = getattr(recipe, key)
        if value is None and "None" in str(known[key].type):
            changes[key] = None
            continue
        if isinstance(current, bool) and not isinstance(value, bool) or (
            isinstance(current, (int, float)) and not isinstance(current, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float)))):
            kind = {"bool": "a bool (true/false)", "int": "an int", "float": "a number"}[type(current).__name__]
            raise ValueError(f"--recipe_set {item!r}: {key} takes {kind}, got {value!r}")
        if isinstance(current, tuple) and isinstance(value, (list, tuple, str)):
            value = tuple([value] if isinstance(value, str) else value)
        changes[key] = float(value) if isinstance(current, float) else value
    return replace(recipe, **changes)


def resolve_recipe(name: str, settings: list[str], train_procs: int | None = None,
                   train_threads: int | None = None) -> Recipe:
    """The named recipe with the command line's changes; errors say what to pass instead."""
    if name not in RECIPES:
        raise ValueError(f"unknown --recipe {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    recipe = replace(recipe, train_procs=train_procs or recipe.train_procs,
                     train_threads=train_threads or recipe.train_threads)
    recipe = apply_recipe_settings(recipe, settings)
    if not recipe.config_path().is_file():
        raise FileNotFoundError(f"training config {recipe.config_path()} not found (run from a source checkout)")
    return recipe
