"""The ``llavidal`` command: a thin dispatcher to each stage's ``main(argv)``.

Every stage is an importable module with ``main(argv: list[str] | None) -> int`` that parses its flags
with :mod:`llavidal.config`; the same functions run as scripts at the upstream paths (``scripts/``,
``llavidal/train/train_mem.py``, ``evaluation/``). Modules are imported only when their command runs, and
``llavidal <command> --help`` is printed from the argument dataclasses' source without importing them,
so it is instant and needs none of the command's extras.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    target: str
    """``module:function`` called with the remaining arguments."""
    help: str
    args: tuple[str, ...] = ()
    """The argument dataclasses (``module:Class``) the target parses, for ``--help``."""


_EVAL = "llavidal.eval.commands"
_JUDGE_ARGS = (f"{_EVAL}:JudgeRunArguments", f"{_EVAL}:JudgeArguments")
_TRAIN_ARGS = ("llavidal.train.args:ModelArguments", "llavidal.train.args:DataArguments",
               "llavidal.train.args:TrainingArguments")

COMMANDS: dict[tuple[str, ...], Command] = {
    ("synth",): Command("llavidal.sim.synth:main", "generate the embedded ADL world (videos, skeletons, objects, QA)",
                        ("llavidal.sim.synth:SynthArguments",)),
    ("extract", "video"): Command("llavidal.features.video:main", "spatio-temporal CLIP video features",
                                  ("llavidal.features.video:VideoExtractionArgs",)),
    ("extract", "pose"): Command("llavidal.features.pose.extract:main", "pose features from .skeleton files or video",
                                 ("llavidal.features.pose.extract:PoseExtractionArgs",)),
    ("extract", "object"): Command("llavidal.features.objects.extract:main", "object features from tracks or a detector",
                                   ("llavidal.features.objects.extract:ObjectExtractionArgs",)),
    ("pose-pretrain",): Command("llavidal.features.pose.pretrain:main",
                                "contrastive (PoseCLIP-style) pose encoder pretraining",
                                ("llavidal.features.pose.pretrain:PosePretrainArguments",
                                 "llavidal.features.pose.pretrain:PoseEncoderArguments")),
    ("align",): Command("llavidal.train.align:main",
                        "fit projectors to the LLM's embeddings of label texts (before training)",
                        ("llavidal.train.args:ModelArguments", "llavidal.train.args:DataArguments",
                         "llavidal.train.align:AlignArguments")),
    ("train",): Command("llavidal.train.train:main", "train (same flags as llavidal/train/train_mem.py)", _TRAIN_ARGS),
    ("convert",): Command("llavidal.data.convert:main", "convert Video-ChatGPT QA JSON to training records",
                          ("llavidal.data.convert:ConvertArguments",)),
    ("merge-weights",): Command("llavidal.model.merge:main", "merge projector weights of LLAVIDAL's staged recipe",
                                ("llavidal.model.merge:MergeArguments",)),
    ("apply-delta",): Command("llavidal.model.delta:main", "base + delta weights, tensor by tensor (LLaVA's apply_delta)",
                              ("llavidal.model.delta:ApplyDeltaArguments",)),
    ("prepare-model",): Command("llavidal.model.prepare:main", "make a model folder from local files (never downloads)",
                                ("llavidal.model.prepare:PrepareModelArguments",)),
    ("export",): Command("llavidal.model.export:main", "export a merged, standalone Hugging Face model folder",
                         ("llavidal.model.export:ExportArguments",)),
    ("embedded-llm",): Command("llavidal.model.embedded:main", "convert the bundled SmolLM2 GGUF into a cached HF folder",
                               ("llavidal.model.embedded:EmbeddedLLMArguments",)),
    ("eval",): Command(f"{_EVAL}:main", "inference, MCQ scoring, judging and reports (see llavidal eval -h)"),
    ("eval", "infer"): Command(f"{_EVAL}:cmd_infer", "generate answers for a benchmark's records",
                               (f"{_EVAL}:InferArguments",)),
    ("eval", "mcq"): Command(f"{_EVAL}:cmd_mcq", "score multiple-choice predictions",
                             (f"{_EVAL}:McqArguments", f"{_EVAL}:JudgeArguments")),
    ("eval", "judge", "descriptions"): Command(f"{_EVAL}:cmd_judge_descriptions", "judge ADL descriptions", _JUDGE_ARGS),
    ("eval", "judge", "videochatgpt"): Command(f"{_EVAL}:cmd_judge_videochatgpt",
                                               "judge Video-ChatGPT's five criteria", _JUDGE_ARGS),
    ("eval", "judge", "zeroshot"): Command(f"{_EVAL}:cmd_judge_zeroshot", "judge zero-shot QA", _JUDGE_ARGS),
    ("eval", "report"): Command(f"{_EVAL}:cmd_report", "combine results into one report",
                                (f"{_EVAL}:ReportArguments",)),
    ("eval", "benchmarks"): Command(f"{_EVAL}:cmd_benchmarks", "list the evaluation benchmarks (tasks)"),
    ("gallery",): Command("llavidal.eval.gallery:main", "browse and compare result folders side by side (Gradio)",
                          ("llavidal.eval.gallery:GalleryArguments",)),
    ("eval", "tasks"): Command(f"{_EVAL}:cmd_tasks", "list the evaluation tasks (same as eval benchmarks)"),
    ("demo",): Command("llavidal.demo.video_demo:main", "the Gradio chat demo", ("llavidal.demo.video_demo:DemoArguments",)),
    ("serve",): Command("llavidal.serve.server:main", "OpenAI-compatible chat-completions server for the video model",
                        ("llavidal.serve.server:ServeArguments",)),
    ("quickstart",): Command("llavidal.quickstart:main", "the whole pipeline on the embedded default",
                             ("llavidal.quickstart.command:QuickstartArguments",)),
    ("ablate",): Command("llavidal.quickstart.ablate:main", "compare the video designs on a quickstart folder (same budget)",
                         ("llavidal.quickstart.ablate:AblateArguments",)),
}
MAX_WORDS = max(len(words) for words in COMMANDS)


def _usage() -> str:
    lines = ["usage: llavidal <command> [args]", "", "commands:"]
    for words, command in COMMANDS.items():
        lines.append(f"  {' '.join(words):<24} {command.help}")
    lines += ["", "Run 'llavidal <command> -h' for a command's flags."]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(command words, remaining arguments) for the longest command that ``argv`` starts with."""
    for length in range(MAX_WORDS, 0, -1):
        key = tuple(argv[:length])
        if key in COMMANDS:
            return key, argv[length:]
    return None


def run(words: tuple[str, ...], argv: list[str]) -> int:
    """Run command ``words`` with ``argv`` (``--help`` is answered without importing the command)."""
    command = COMMANDS[words]
    prog = "llavidal " + " ".join(words)
    if command.args and ("-h" in argv or "--help" in argv):
        from llavidal.config import static_help

        print(static_help(command.args, prog=prog, description=command.help))
        return 0
    module_name, func_name = command.target.split(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, func_name)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from llavidal import __version__

        print(__version__)
        return 0
    found = resolve(argv)
    if found is None:
        print(f"llavidal: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run(*found)


if __name__ == "__main__":
    sys.exit(main())
