r"""``llavidal eval``: inference, MCQ scoring, judging and reports.

Run as:
    llavidal eval infer  --benchmark adlmcq_forecasting --records lemma.json --weights W --video_folder V \
        --output preds.jsonl
    llavidal eval mcq    --predictions preds.jsonl --output_dir results/lemma
    llavidal eval judge descriptions --pred_path preds.jsonl --judge_model gpt-4o-2024-08-06 --output_dir results/desc
    llavidal eval judge videochatgpt --pred_path generic.jsonl --temporal_pred_path temporal.jsonl \
        --consistency_pred_path consistency.jsonl --judge local --output_dir results/vcgpt
    llavidal eval judge zeroshot --pred_path msvd.jsonl --judge_model M --base_url http://127.0.0.1:8000/v1 \
        --output_dir R
    llavidal eval report --results results/lemma/report.json results/desc/report.json --output_dir results/all
    llavidal eval benchmarks

Every command accepts ``--config FILE.yaml`` whose keys are flag names; flags on the command line win.
API keys come from the environment only (``OPENAI_API_KEY`` or the variable named by ``--api_key_env``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

logger = logging.getLogger("llavidal.eval")

JUDGE_COMMANDS = {"descriptions": "adl_descriptions", "videochatgpt": "videochatgpt", "zeroshot": "zeroshot_qa"}


def _help(text: str, **extra: Any) -> Any:
    return field(default=extra.pop("default", None), metadata={"help": text, **extra})


@dataclass
class JudgeArguments:
    judge: str = field(
        default="openai",
        metadata={
            "help": "openai (any OpenAI-compatible endpoint) or local (offline MiniLM similarity)",
            "choices": ["openai", "local"],
        },
    )
    judge_model: Optional[str] = _help(
        "pinned judge model id, required for --judge openai (e.g. gpt-4o-2024-08-06); recorded in every result"
    )
    base_url: Optional[str] = _help(
        "OpenAI-compatible base URL for local servers (vLLM, llama.cpp, Ollama), e.g. http://127.0.0.1:8000/v1"
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "name of the environment variable holding the API key (the key is never a flag)"},
    )
    api_key: Optional[str] = _help(
        "refused: pass keys through the environment (see --api_key_env), never on the command line"
    )
    seed: int = field(default=0, metadata={"help": "seed sent to the judge (with temperature 0)"})
    judge_max_tokens: Optional[int] = _help("max tokens of a judge reply (not sent when unset)")
    max_retries: int = field(
        default=4, metadata={"help": "retries per call on 429/5xx/timeouts (bounded; exponential backoff with jitter)"}
    )
    backoff_base: float = field(default=1.0, metadata={"help": "first backoff delay in seconds (doubles each retry)"})
    backoff_max: float = field(default=30.0, metadata={"help": "longest backoff delay in seconds"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per judge request before it counts as a timeout"})
    concurrency: int = field(default=8, metadata={"help": "judge calls in flight at most", "aliases": ["--num_tasks"]})
    cache: Optional[str] = _help(
        "sqlite judge cache (default: $LLAVIDAL_CACHE_DIR or ~/.cache/llavidal/judge_cache.sqlite)"
    )
    allow_unpinned_judge: bool = field(
        default=False, metadata={"help": "allow an OpenAI model alias without a snapshot date (scores may drift)"}
    )

    def __post_init__(self) -> None:
        if self.api_key:
            raise ValueError(
                "--api_key is refused: keys on the command line end up in shell history and process lists. "
                f"Set the environment variable {self.api_key_env} instead."
            )

    def build(self, kind: str | None = None):
        from llavidal.eval.judges import make_judge

        kind = kind or self.judge
        if kind == "local":
            return make_judge("local")
        if not self.judge_model:
            raise ValueError("--judge_model is required for --judge openai (a pinned model id; there is no default)")
        return make_judge(
            "openai",
            model=self.judge_model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            seed=self.seed,
            max_tokens=self.judge_max_tokens,
            max_retries=self.max_retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            timeout=self.timeout,
            concurrency=self.concurrency,
            cache_path=self.cache,
            allow_unpinned=self.allow_unpinned_judge,
            show_progress=sys.stderr.isatty(),
        )


@dataclass
class InferArguments:
    benchmark: Optional[str] = _help("benchmark name (see 'llavidal eval benchmarks') or a benchmark YAML path")
    records: Optional[str] = _help("benchmark records (.json/.jsonl)", aliases=["--gt_file", "--question_file"])
    weights: Optional[str] = _help("trained weights folder (InferenceEngine.from_pretrained)")
    base_model: Optional[str] = _help(
        "base LLM folder when the weights do not name a reachable one", aliases=["--model-name"]
    )
    video_folder: Optional[str] = _help("video features folder ({stem}.pkl|.safetensors|...)")
    pose_folder: Optional[str] = _help("pose features folder ({stem}_pose.*)")
    object_folder: Optional[str] = _help("object features folder ({stem}_object.*)")
    output: Optional[str] = _help("predictions .jsonl (default: OUTPUT_DIR/OUTPUT_NAME.jsonl)")
    output_dir: Optional[str] = _help("folder for predictions when --output is not given")
    output_name: Optional[str] = _help("file name (without .jsonl) for predictions in --output_dir")
    task: str = field(
        default="", metadata={"help": "task name for per-task results (default: the records file's stem)"}
    )
    batch_size: int = field(default=8, metadata={"help": "records per generation batch"})
    max_new_tokens: int = field(default=256, metadata={"help": "longest answer in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 for greedy decoding"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling when temperature > 0"})
    limit: Optional[int] = _help("only the first N records (smoke runs)")
    optional_modalities: str = field(
        default="", metadata={"help": "comma list of modalities a record may lack (e.g. object)"}
    )
    allow_text_only: bool = field(
        default=False, metadata={"help": "run without --video_folder (a text-only baseline, on purpose)"}
    )
    merge_only: bool = field(
        default=False, metadata={"help": "only merge the per-rank files of an earlier torchrun run"}
    )
    merge_timeout: float = field(
        default=6 * 3600.0, metadata={"help": "seconds rank 0 waits for the other ranks before merging"}
    )
    device: Optional[str] = _help("device for the engine (default: cuda if available)")
    dtype: Optional[str] = _help("dtype for the engine (float16, bfloat16, float32)")

    def __post_init__(self) -> None:
        if not self.output:
            if not (self.output_dir and self.output_name):
                raise ValueError("pass --output FILE.jsonl (or --output_dir and --output_name)")
            self.output = str(Path(self.output_dir) / f"{self.output_name}.jsonl")
        for name in ("benchmark", "records"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if not self.merge_only and not self.weights:
            raise ValueError("--weights is required")


@dataclass
class McqArguments:
    predictions: Optional[str] = _help(
        "predictions (.jsonl from 'infer', or an upstream file with a 'pred' field)", aliases=["--pred_path"]
    )
    records: Optional[str] = _help("benchmark records; needed only when the predictions do not carry them")
    benchmark: str = field(
        default="adlmcq_action_recognition", metadata={"help": "MCQ benchmark name or YAML (for name/version)"}
    )
    task: str = field(default="", metadata={"help": "task name for records without one"})
    output_dir: Optional[str] = _help("where results and the report go")
    fallback_judge: str = field(
        default="none",
        metadata={
            "help": "judge for replies the parser cannot decide: none, openai or local",
            "choices": ["none", "openai", "local"],
        },
    )
    video_root: Optional[str] = _help("folder of the videos, for the gallery's <video> links")

    def __post_init__(self) -> None:
        if not self.predictions or not self.output_dir:
            raise ValueError("--predictions and --output_dir are required")


@dataclass
class JudgeRunArguments:
    pred_path: Optional[str] = _help("predictions to judge (generic QA for videochatgpt)", aliases=["--predictions"])
    temporal_pred_path: Optional[str] = _help("videochatgpt: predictions on the temporal QA file")
    consistency_pred_path: Optional[str] = _help("videochatgpt: predictions on the consistency QA file")
    records: Optional[str] = _help("benchmark records; needed only when the predictions do not carry them")
    benchmark: Optional[str] = _help("override the benchmark YAML")
    criteria: str = field(default="", metadata={"help": "comma list of criteria (default: all of the benchmark's)"})
    output_dir: Optional[str] = _help("where results and the report go")
    output_json: Optional[str] = _help("also write the results JSON here (upstream flag)")
    video_root: Optional[str] = _help("folder of the videos, for the gallery's <video> links")

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        if not (self.pred_path or self.temporal_pred_path or self.consistency_pred_path):
            raise ValueError("--pred_path is required")


@dataclass
class ReportArguments:
    results: list[str] = field(
        default_factory=list, metadata={"help": "results JSON files (report.json or *_results.json)"}
    )
    output_dir: Optional[str] = _help("where the combined report goes")
    video_root: Optional[str] = _help("folder of the videos, for the gallery's <video> links")
    title: str = field(default="LLAVIDAL evaluation", metadata={"help": "report title"})

    def __post_init__(self) -> None:
        if not self.results or not self.output_dir:
            raise ValueError("--results and --output_dir are required")


def _add_dataclass_arguments(parser: argparse.ArgumentParser, dataclass_type: type) -> None:
    """Flags from a dataclass's fields (``metadata["help"]``, ``choices``, ``aliases``).

    The same conventions as transformers' ``HfArgumentParser``, without importing transformers, so that
    judging and scoring start fast and need no torch.
    """
    hints = typing.get_type_hints(dataclass_type)
    for item in fields(dataclass_type):
        if not item.init:
            continue
        meta = dict(item.metadata)
        names = [f"--{item.name}", *meta.get("aliases", [])]
        kind = hints[item.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = (
            item.default
            if item.default is not MISSING
            else (item.default_factory() if item.default_factory is not MISSING else None)
        )
        options: dict[str, Any] = {"dest": item.name, "default": default, "help": meta.get("help", "")}
        if kind is bool:
            options.update(type=_to_bool, nargs="?", const=True)
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        else:
            options["type"] = kind
        if "choices" in meta:
            options["choices"] = meta["choices"]
        parser.add_argument(*names, **options)


def _to_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse(dataclass_types: tuple, argv: list[str], prog: str) -> tuple:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for dataclass_type in dataclass_types:
        _add_dataclass_arguments(parser, dataclass_type)
    parser.add_argument("--config", help="YAML file of flag values (command-line flags override it)")
    if known.config:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        names = {f.name for t in dataclass_types for f in fields(t)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {unknown}")
        parser.set_defaults(**values)
    parsed = parser.parse_args(rest)
    outputs = []
    for dataclass_type in dataclass_types:
        keys = {f.name for f in fields(dataclass_type) if f.init}
        outputs.append(dataclass_type(**{k: v for k, v in vars(parsed).items() if k in keys}))
    return tuple(outputs)


def _write_results(
    result: dict, output_dir: str, video_root: str | None, extra_json: str | None = None
) -> dict[str, Path]:
    from llavidal.eval.report import write_report
    from llavidal.utils.io import atomic_write_json

    paths = write_report(result, output_dir, video_root=video_root)
    results_path = Path(output_dir) / f"{result.get('benchmark') or 'results'}_results.json"
    atomic_write_json(results_path, result)
    paths["results"] = results_path
    if extra_json:
        atomic_write_json(extra_json, result)
    return paths


def cmd_infer(argv: list[str]) -> int:
    (args,) = _parse((InferArguments,), argv, "llavidal eval infer")
    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.run_inference import merge_predictions, run_inference

    spec = load_benchmark(args.benchmark)
    records = spec.load_records(args.records, task=args.task, limit=args.limit)
    if args.merge_only:
        path = merge_predictions(args.output, records)
        print(f"merged predictions into {path}")
        return 0
    from llavidal.serve.engine import InferenceEngine

    engine = InferenceEngine.from_pretrained(
        args.weights, base_model=args.base_model, device=args.device, dtype=args.dtype
    )
    summary = run_inference(
        engine,
        records,
        {"video": args.video_folder, "pose": args.pose_folder, "object": args.object_folder},
        args.output,
        benchmark=spec,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        optional_modalities=[m for m in args.optional_modalities.split(",") if m],
        allow_text_only=args.allow_text_only,
        merge_timeout=args.merge_timeout,
    )
    print(summary.line())
    if summary.missing_examples:
        print(f"missing features, e.g.: {'; '.join(summary.missing_examples)} (recorded; rerun after extracting them)")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def cmd_mcq(argv: list[str]) -> int:
    args, judge_args = _parse((McqArguments, JudgeArguments), argv, "llavidal eval mcq")
    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.mcq import score_mcq
    from llavidal.eval.predictions import load_predictions

    spec = load_benchmark(args.benchmark)
    if spec.kind != "mcq":
        raise ValueError(f"benchmark {spec.name} is not multiple choice; use 'llavidal eval judge'")
    predictions = load_predictions(args.predictions, "mcq")
    records = spec.load_records(args.records, task=args.task) if args.records else None
    if records is None and args.task:
        for prediction in predictions:
            if prediction.record is not None and not prediction.record.task:
                prediction.record.task = args.task
    judge = judge_args.build(args.fallback_judge) if args.fallback_judge != "none" else None
    result = score_mcq(predictions, records, benchmark=spec.name, benchmark_version=spec.version, judge=judge)
    paths = _write_results(result, args.output_dir, args.video_root)
    m = result["metrics"]
    print(
        f"{spec.name}: accuracy {_percent(m['accuracy'])} ({m['correct']}/{m['n']}), missing {m['missing']} "
        f"{result['missing_reasons'] or ''}".rstrip()
    )
    for task, block in result["per_task"].items():
        print(f"  {task}: {_percent(block['accuracy'])} (n={block['n']}, missing {block['missing']})")
    print(f"report: {paths['markdown']}")
    return 0


def cmd_judge(argv: list[str]) -> int:
    if not argv or argv[0] not in JUDGE_COMMANDS:
        print(f"usage: llavidal eval judge {{{','.join(JUDGE_COMMANDS)}}} [flags]  (-h for flags)", file=sys.stderr)
        return 2
    which, argv = argv[0], argv[1:]
    args, judge_args = _parse((JudgeRunArguments, JudgeArguments), argv, f"llavidal eval judge {which}")
    from llavidal.eval.benchmarks import load_benchmark
    from llavidal.eval.predictions import load_predictions
    from llavidal.eval.scoring import DEFAULT_SPLIT, score_judged

    spec = load_benchmark(args.benchmark or JUDGE_COMMANDS[which])
    splits: dict[str, list] = {}
    if spec.criterion_splits:
        given = {
            "generic": args.pred_path,
            "temporal": args.temporal_pred_path,
            "consistency": args.consistency_pred_path,
        }
        for split, path in given.items():
            if path:
                splits[split] = load_predictions(path, spec.kind)
    else:
        splits[DEFAULT_SPLIT] = load_predictions(args.pred_path, spec.kind)
    records = None
    if args.records:
        if len(splits) != 1:
            raise ValueError("--records can only be used with a single prediction file")
        records = {next(iter(splits)): spec.load_records(args.records)}
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()] or None
    judge = judge_args.build()
    result = score_judged(splits, spec, judge, criteria=criteria, records=records)
    paths = _write_results(result, args.output_dir, args.video_root, args.output_json)
    print(f"{spec.name} judged by {result['judge']['judge_id']} (prompt {result['judge']['prompt_version']})")
    for criterion, block in result["criteria"].items():
        value = block.get("accuracy") if criterion == "zeroshot" else block["scaled"]
        extra = f", score {block['mean']:.3f}" if criterion == "zeroshot" and block["mean"] is not None else ""
        value_text = "n/a" if value is None else f"{value:.3f}"
        print(
            f"  {criterion}: {value_text}{extra} (judged {block['judged']}/{block['total']}, missing predictions "
            f"{block['missing_predictions']}, judge failed {block['judge_failed']}, "
            f"malformed {block['judge_malformed']})"
        )
    if "overall" in result["metrics"]:
        overall = result["metrics"]["overall"]
        print(f"  overall: {'n/a' if overall is None else f'{overall:.3f}'}")
    stats = getattr(judge, "stats", None)
    if stats:
        print(f"  judge calls: {stats}")
    print(f"report: {paths['markdown']}")
    return 0


def cmd_report(argv: list[str]) -> int:
    (args,) = _parse((ReportArguments,), argv, "llavidal eval report")
    from llavidal.eval.report import load_results, write_report

    results = [r for path in args.results for r in load_results(path)]
    paths = write_report(results, args.output_dir, video_root=args.video_root, title=args.title)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_benchmarks(argv: list[str]) -> int:
    from llavidal.eval.benchmarks import list_benchmarks, load_benchmark

    for name in list_benchmarks():
        spec = load_benchmark(name)
        print(f"{name:<28} v{spec.version} {spec.kind:<9} {spec.description}")
    return 0


# Video-ChatGPT's quantitative_evaluation scripts, one criterion each; their flags map onto ours.
UPSTREAM_SCRIPTS = {
    "correctness": ("videochatgpt", "--pred_path"),
    "detail": ("videochatgpt", "--pred_path"),
    "context": ("videochatgpt", "--pred_path"),
    "temporal": ("videochatgpt", "--temporal_pred_path"),
    "consistency": ("videochatgpt", "--consistency_pred_path"),
    "zeroshot": ("zeroshot", "--pred_path"),
}


def upstream_main(criterion: str, argv: list[str] | None = None) -> int:
    """Entry of the scripts at Video-ChatGPT's paths: same flags (``--pred_path``, ``--output_dir``,
    ``--output_json``, ``--num_tasks``), one criterion; ``--judge_model`` (or ``--judge local``) is
    added because the judge must be pinned; ``--api_key`` is refused (use the environment)."""
    which, pred_flag = UPSTREAM_SCRIPTS[criterion]
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [
        pred_flag
        if a == "--pred_path"
        else (pred_flag + a[len("--pred_path") :] if a.startswith("--pred_path=") else a)
        for a in argv
    ]
    extra = [] if which == "zeroshot" else ["--criteria", criterion]
    return main(["judge", which, *extra, *argv])


COMMANDS = {"infer": cmd_infer, "mcq": cmd_mcq, "judge": cmd_judge, "report": cmd_report, "benchmarks": cmd_benchmarks}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from llavidal.eval.judges.base import JudgeConfigError
    from llavidal.utils.optional import MissingDependencyError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except (
        FileNotFoundError,
        ValueError,
        JudgeConfigError,
        MissingDependencyError,
    ) as err:  # incl. feature/record errors
        print(f"llavidal eval {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
