"""The ``llavidal`` command: a thin dispatcher to each stage's ``main(argv)``.

Every stage is an importable module with ``main(argv: list[str] | None) -> int``; the same modules run
as scripts at the upstream paths (``scripts/``, ``llavidal/train/train_mem.py``, ``evaluation/``).
Modules are imported only when their command runs, so optional extras are needed only for their stage.
"""

from __future__ import annotations

import importlib
import sys

# command words -> (module:function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("synth",): ("llavidal.sim.cli:main", "generate the embedded ADL world (videos, skeletons, objects, QA)"),
    ("extract", "video"): ("llavidal.features.video:main", "spatio-temporal CLIP video features"),
    ("extract", "pose"): ("llavidal.features.pose.extract:main", "pose features from .skeleton files or video"),
    ("extract", "object"): ("llavidal.features.objects.extract:main", "object features from tracks or a detector"),
    ("pose-pretrain",): ("llavidal.features.pose.pretrain:main", "contrastive (PoseCLIP-style) pose encoder pretraining"),
    ("align",): ("llavidal.train.align:main", "fit projectors to the LLM's embeddings of label texts (before training)"),
    ("train",): ("llavidal.train.train:main", "train (same flags as llavidal/train/train_mem.py)"),
    ("convert",): ("llavidal.data.convert:main", "convert Video-ChatGPT QA JSON to training records"),
    ("merge-weights",): ("llavidal.model.merge:main", "merge projector weights of LLAVIDAL's staged recipe"),
    ("export",): ("llavidal.model.export:main", "export a merged, standalone Hugging Face model folder"),
    ("embedded-llm",): ("llavidal.model.embedded:main", "convert the bundled SmolLM2 GGUF into a cached HF folder"),
    ("eval",): ("llavidal.eval.cli:main", "inference, MCQ scoring, judging and reports (see llavidal eval -h)"),
    ("demo",): ("llavidal.demo.video_demo:main", "the Gradio chat demo"),
    ("quickstart",): ("llavidal.quickstart:main", "the whole pipeline on the embedded default"),
}


def _usage() -> str:
    lines = ["usage: llavidal <command> [args]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_text}")
    lines.append("")
    lines.append("Run 'llavidal <command> -h' for a command's flags.")
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    for length in (2, 1):
        key = tuple(argv[:length])
        if key in COMMANDS:
            return COMMANDS[key][0], argv[length:]
    return None


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
    target, rest = found
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    result = getattr(module, func_name)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
