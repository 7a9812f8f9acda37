r"""``llavidal eval``: inference, MCQ scoring, judging and reports; one function per subcommand.

Run as:
    llavidal eval infer  --benchmark adlmcq_forecasting --records lemma.json --weights W --video_folder V \
        --output preds.jsonl
    torchrun --nproc_per_node=8 -m llavidal.eval.commands infer ...same flags...     # one shard per rank
    llavidal eval mcq    --predictions preds.jsonl --output_dir results/lemma
    llavidal eval judge descriptions --pred_path preds.jsonl --judge_model gpt-4o-2024-08-06 --output_dir results/desc
    llavidal eval judge videochatgpt --pred_path generic.jsonl --temporal_pred_path temporal.jsonl \
        --consistency_pred_path consistency.jsonl --judge local --output_dir results/vcgpt
    llavidal eval judge zeroshot --pred_path msvd.jsonl --judge_model M --base_url http://127.0.0.1:8000/v1 \
        --output_dir R
    llavidal eval report --results results/lemma/report.json results/desc/report.json --output_dir results/all
    llavidal eval tasks          (or: llavidal eval benchmarks)

Every command accepts ``--config FILE.yaml`` whose keys are flag names, and ``key=value`` overrides;
flags on the command line win (:mod:`llavidal.config`). ``-h`` lists a command's flags. API keys come
from the environment only (``OPENAI_API_KEY`` or the variable named by ``--api_key_env``).

Exit status: 0 when every row was done; 1 when any row failed (``infer``: a ``feature_error`` or
``generation_error`` row; ``mcq`` / ``judge``: such rows in the predictions, or judgements that failed),
after writing every result; 2 for a usage error (nothing run). Missing features and missing predictions
are results (counted as missing), not failures.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llavidal.config import arg, command, parse
from llavidal.utils import dist

logger = logging.getLogger("llavidal.eval")

JUDGE_TASKS = {"descriptions": "adl_descriptions", "videochatgpt": "videochatgpt", "zeroshot": "zeroshot_qa"}
"""``llavidal eval judge WHICH`` -> the task it scores by default."""


@dataclass
class JudgeArguments:
    judge: str = arg("openai", "openai (any OpenAI-compatible endpoint) or local (offline MiniLM similarity)",
                     choices=["openai", "local"])
    judge_model: Optional[str] = arg(
        None, "pinned judge model id, required for --judge openai (e.g. gpt-4o-2024-08-06); recorded in every result"
    )
    base_url: Optional[str] = arg(
        None, "OpenAI-compatible base URL for local servers (vLLM, llama.cpp, Ollama), e.g. http://127.0.0.1:8000/v1"
    )
    api_key_env: str = arg("OPENAI_API_KEY", "name of the environment variable holding the API key (the key is never a flag)")
    api_key: Optional[str] = arg(None, "refused: pass keys through the environment (see --api_key_env), never on the command line")
    seed: int = arg(0, "seed sent to the judge (with temperature 0)")
    judge_max_tokens: Optional[int] = arg(None, "max tokens of a judge reply (not sent when unset)")
    max_retries: int = arg(4, "retries per call on 429/5xx/timeouts (bounded; exponential backoff with jitter)")
    backoff_base: float = arg(1.0, "first backoff delay in seconds (doubles each retry)")
    backoff_max: float = arg(30.0, "longest backoff delay in seconds")
    timeout: float = arg(60.0, "seconds per judge request before it counts as a timeout")
    concurrency: int = arg(8, "judge calls in flight at most", aliases=["--num_tasks"])
    cache: Optional[str] = arg(None, "sqlite judge cache (default: $LLAVIDAL_CACHE_DIR or ~/.cache/llavidal/judge_cache.sqlite)")
    allow_unpinned_judge: bool = arg(False, "allow an OpenAI model alias without a snapshot date (scores may drift)")

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
    benchmark: Optional[str] = arg(None, "task name (see 'llavidal eval tasks') or a task YAML path")
    records: Optional[str] = arg(None, "benchmark records (.json/.jsonl); with --answers, the questions only",
                                 aliases=["--gt_file", "--question_file", "--gt_file_question"])
    answers: Optional[str] = arg(None, "reference answers of --records' questions, joined by question_id or position "
                                 "(the ActivityNet-QA pair of files)", aliases=["--gt_file_answers"])
    weights: Optional[str] = arg(None, "trained weights: a folder written by training, or upstream weights (a file "
                                       "such as mm_projector.bin / model.bin, or a folder holding one; then "
                                       "--model-name is required)", aliases=["--projection_path"])
    base_model: Optional[str] = arg(None, "base LLM folder when the weights do not name a reachable one (required "
                                          "for upstream weights)", aliases=["--model-name"])
    video_folder: Optional[str] = arg(None, "video features folder ({stem}.pkl|.safetensors|...)",
                                      aliases=["--video_dir"])
    pose_folder: Optional[str] = arg(None, "pose features folder ({stem}_pose.*)")
    object_folder: Optional[str] = arg(None, "object features folder ({stem}_object.*)")
    output: Optional[str] = arg(None, "predictions .jsonl (default: OUTPUT_DIR/OUTPUT_NAME.jsonl)")
    output_dir: Optional[str] = arg(None, "folder for predictions when --output is not given")
    output_name: Optional[str] = arg(None, "file name (without .jsonl) for predictions in --output_dir")
    task: str = arg("", "task name for per-task results (default: the records file's stem)")
    batch_size: int = arg(8, "records per generation batch")
    mcq_scoring: str = arg("generate", "multiple choice: generate (free text, letter parsed), or choose the choice "
                           "of highest log-likelihood: loglik_norm (per token), loglik_char (per character), loglik "
                           "(sum); see llavidal/eval/loglik.py",
                           choices=["generate", "loglik_norm", "loglik_char", "loglik"])
    loglik_lead: str = arg("", "with --mcq_scoring loglik*: the words the trained answer names its choice after (e.g. "
                           "'The answer is'); the model first generates its answer greedily (at most "
                           "--max_new_tokens) up to them, then each choice is scored after that generated lead "
                           "(for models trained to reason before answering; see llavidal/eval/loglik.py)")
    max_new_tokens: int = arg(256, "longest answer in tokens")
    temperature: float = arg(0.0, "0 for greedy decoding")
    top_p: float = arg(1.0, "nucleus sampling when temperature > 0")
    limit: Optional[int] = arg(None, "only the first N records (smoke runs)")
    optional_modalities: str = arg("", "comma list of modalities a record may lack (e.g. object)")
    allow_text_only: bool = arg(False, "run without --video_folder (a text-only baseline, on purpose)")
    allow_feature_mismatch: bool = arg(
        False, "run even when a feature folder's manifest.json differs from the manifests the weights record "
        "(the differences are logged as a warning)"
    )
    merge_only: bool = arg(False, "only merge the per-rank files of an earlier sharded run")
    merge_timeout: float = arg(6 * 3600.0, "seconds the torchrun ranks wait for each other before rank 0 merges")
    device: Optional[str] = arg(None, "device for the engine (default: cuda:LOCAL_RANK if available, else cpu)")
    dtype: Optional[str] = arg(None, "dtype for the engine (float16, bfloat16, float32)")
    conv_mode: Optional[str] = arg(None, "conversation template of the prompt (default: the one the weights were "
                                   "trained with; Video-ChatGPT's video-chatgpt_v1 is llavidal_v1)")
    videochatgpt_json: bool = arg(False, "also write Video-ChatGPT's prediction file: --output with .json, a JSON "
                                  "list of {id, question, answer, pred} or the benchmark record + pred (pred1/pred2)")
    jobs: Optional[str] = arg(None, "a file of runs of one model, one per line: the flags of one 'eval infer' (shell "
                              "words; '#' starts a comment), after the flags of the command line, which every run "
                              "shares. The model is loaded once: every line must give the same --weights, "
                              "--base_model, --device, --dtype and --conv_mode. Each run resumes on its own")

    def __post_init__(self) -> None:
        if self.jobs:
            return  # each line is parsed, and checked, as a command line of its own
        if not self.output:
            if not (self.output_dir and self.output_name):
                raise ValueError("pass --output FILE.jsonl (or --output_dir and --output_name)")
            self.output = str(Path(self.output_dir) / f"{self.output_name}.jsonl")
        for name in ("benchmark", "records"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if not self.merge_only and not self.weights:
            raise ValueError("--weights is required")
        if self.videochatgpt_json and Path(self.output).suffix == ".json":
            raise ValueError(f"--output {self.output} ends in .json, the name of the --videochatgpt_json file; "
                             "use .jsonl for --output")
        if self.conv_mode:
            from llavidal.data.templates import get_template

            get_template(self.conv_mode)  # an unknown name is a usage error now, not after loading the model


@dataclass
class McqArguments:
    predictions: Optional[str] = arg(
        None, "predictions (.jsonl from 'infer', or an upstream file with a 'pred' field)", aliases=["--pred_path"]
    )
    records: Optional[str] = arg(None, "benchmark records; needed only when the predictions do not carry them")
    benchmark: str = arg("adlmcq_action_recognition", "MCQ task name or YAML (its parser, metric, name and version)")
    task: str = arg("", "task name for records without one")
    output_dir: Optional[str] = arg(None, "where results and the report go")
    fallback_judge: str = arg("none", "judge for replies the parser cannot decide: none, openai or local",
                              choices=["none", "openai", "local"])
    video_root: Optional[str] = arg(None, "folder of the videos, for the gallery's <video> links")

    def __post_init__(self) -> None:
        if not self.predictions or not self.output_dir:
            raise ValueError("--predictions and --output_dir are required")


@dataclass
class JudgeRunArguments:
    pred_path: Optional[str] = arg(None, "predictions to judge (generic QA for videochatgpt)", aliases=["--predictions"])
    temporal_pred_path: Optional[str] = arg(None, "videochatgpt: predictions on the temporal QA file")
    consistency_pred_path: Optional[str] = arg(None, "videochatgpt: predictions on the consistency QA file")
    records: Optional[str] = arg(None, "benchmark records; needed only when the predictions do not carry them")
    benchmark: Optional[str] = arg(None, "override the task YAML")
    criteria: str = arg("", "comma list of criteria (default: all of the task's)")
    output_dir: Optional[str] = arg(None, "where results and the report go")
    output_json: Optional[str] = arg(None, "also write the results JSON here (upstream flag)")
    video_root: Optional[str] = arg(None, "folder of the videos, for the gallery's <video> links")

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        if not (self.pred_path or self.temporal_pred_path or self.consistency_pred_path):
            raise ValueError("--pred_path is required")


@dataclass
class ReportArguments:
    results: list[str] = arg(help="results JSON files (report.json or *_results.json)", default_factory=list)
    output_dir: Optional[str] = arg(None, "where the combined report goes")
    video_root: Optional[str] = arg(None, "folder of the videos, for the gallery's <video> links")
    title: str = arg("LLAVIDAL evaluation", "report title")

    def __post_init__(self) -> None:
        if not self.results or not self.output_dir:
            raise ValueError("--results and --output_dir are required")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


def _interval(block: dict) -> str:
    ci = block.get("ci95")
    return f"; 95% interval {ci[0]:.1f}-{ci[1]:.1f}%" if ci else ""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _read_predictions(path: str, kind: str, torn: list[str]):
    """Predictions of ``path`` (a :class:`~llavidal.eval.predictions.PredictionFile`); a torn last line is
    warned about by the reader and noted in ``torn``."""
    from llavidal.eval.predictions import read_prediction_file

    found = read_prediction_file(path, kind)
    if found.torn_line is not None:
        torn.append(f"{found.path}:{found.torn_line}")
    return found


def _failed_rows_line(files: list) -> str:
    """One line about prediction rows that are failures, or "" when there are none."""
    from collections import Counter

    failed = [(f.path, p) for f in files for p in f.failed()]
    if not failed:
        return ""
    counts = Counter(p.status for _, p in failed)
    paths = sorted({path for path, _ in failed})
    first = failed[0][1]
    return (f"{len(failed)} predictions failed in 'llavidal eval infer' "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); the reasons are in the rows' 'error' "
            f"field in {', '.join(paths)} (e.g. {first.id}: {first.error or first.status}). Fix the cause and rerun "
            "'llavidal eval infer' with the same --output (it tries failed rows again), then score again")


# ---------------------------------------------------------------------------------------------------
# Subcommands


def _write_videochatgpt_json(args: InferArguments, kind: str) -> None:
    if args.videochatgpt_json:
        from llavidal.eval.predictions import write_videochatgpt_predictions

        path = Path(args.output).with_suffix(".json")
        print(f"Video-ChatGPT predictions: {path} ({write_videochatgpt_predictions(args.output, path, kind)} rows)")


@command("llavidal eval infer")
def cmd_infer(argv: list[str] | None = None) -> int:
    """Generate predictions for a task's records (resumable; sharded under torchrun); with --jobs FILE, several
    runs of one model in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = parse((InferArguments,), argv, prog="llavidal eval infer", description=cmd_infer.__doc__)
    _setup_logging()
    if not args.jobs:
        return _infer(args, {})
    jobs = read_infer_jobs(args.jobs, _without_flag(argv, "--jobs"))
    engines: dict = {}
    # under torchrun, one process group for every run: each run's merge meets the other ranks in it (a group made
    # and destroyed per run would rendezvous again on the same store, which hangs)
    with dist.process_group(timeout=args.merge_timeout):
        failed = [where for where, job in jobs if _infer(job, engines) != 0]
    print(f"{len(jobs)} runs from {args.jobs}: {len(jobs) - len(failed)} complete"
          + (f", {len(failed)} with failed records ({', '.join(failed)}); rerun the same command to retry them"
             if failed else ""))
    return 1 if failed else 0


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        elif not word.startswith(flag + "="):
            out.append(word)
    return out


def read_infer_jobs(path: str | Path, shared: list[str]) -> list[tuple[str, InferArguments]]:
    """("FILE line N", arguments) of each run of an ``eval infer --jobs FILE``: the shared flags, then the line's.

    Every run must use the same model (weights, base model, device, dtype, template): a line that differs is an
    error naming it, before anything runs; so is a line that ``eval infer`` would refuse, or a second line
    writing the same output file.
    """
    import shlex

    from llavidal.config import ConfigError

    jobs: list[tuple[str, InferArguments]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"--jobs {path}: cannot read it ({err})") from err
    engine_keys = ("weights", "base_model", "device", "dtype", "conv_mode")
    outputs: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        where = f"{path} line {number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise ValueError(f"{where}: not shell words ({err})") from err
        if not words:
            continue
        if "--jobs" in words or any(w.startswith("--jobs=") for w in words):
            raise ValueError(f"{where}: a run cannot name --jobs")
        try:
            (job,) = parse((InferArguments,), shared + words, prog=f"llavidal eval infer ({where})")
        except (ValueError, ConfigError, SystemExit) as err:
            raise ValueError(f"{where}: {err}") from err
        if jobs:
            first_where, first = jobs[0]
            differ = [k for k in engine_keys if getattr(job, k) != getattr(first, k)]
            if differ:
                raise ValueError(f"{where}: --{', --'.join(differ)} differ from {first_where}; the runs of one --jobs "
                                 "file share one model (put the other model's runs in a file of their own)")
        output = str(Path(job.output).resolve())
        if output in outputs:
            raise ValueError(f"{where}: --output {job.output} is written by {outputs[output]} too")
        outputs[output] = where
        jobs.append((where, job))
    if not jobs:
        raise ValueError(f"--jobs {path}: no runs in it (one line of 'eval infer' flags per run)")
    return jobs


def _infer(args: InferArguments, engines: dict) -> int:
    """One ``eval infer`` run; ``engines`` keeps the loaded model for the next run of the same weights."""
    from llavidal.eval.loglik import check_scoring
    from llavidal.eval.run_inference import merge_predictions, run_inference
    from llavidal.eval.tasks import load_task

    spec = load_task(args.benchmark)
    check_scoring(args.mcq_scoring, spec)  # a task that does not allow --mcq_scoring loglik*: a usage error now
    if args.answers:
        from llavidal.eval.records import load_records

        records = load_records(args.records, spec.kind, task=args.task, limit=args.limit, answers=args.answers)
    else:
        records = spec.load_records(args.records, task=args.task, limit=args.limit)
    if args.merge_only:
        path = merge_predictions(args.output, records)
        print(f"merged predictions into {path}")
        _write_videochatgpt_json(args, spec.kind)
        return 0
    from llavidal.eval.run_inference import check_feature_manifests, refuse_video_files_folder
    from llavidal.serve.engine import InferenceEngine

    folders = {"video": args.video_folder, "pose": args.pose_folder, "object": args.object_folder}
    for name, folder in folders.items():
        if folder:
            refuse_video_files_folder(name, folder)  # before loading the model: a usage error
    check_feature_manifests(args.weights, folders, allow_mismatch=args.allow_feature_mismatch)
    key = (args.weights, args.base_model, args.device, args.dtype, args.conv_mode)
    if key not in engines:
        engines.clear()  # one model in memory at a time
        engines[key] = InferenceEngine.from_pretrained(
            args.weights, base_model=args.base_model, device=args.device, dtype=args.dtype, template=args.conv_mode
        )
    engine = engines[key]
    summary = run_inference(
        engine,
        records,
        folders,
        args.output,
        benchmark=spec,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        optional_modalities=[m for m in args.optional_modalities.split(",") if m],
        allow_text_only=args.allow_text_only,
        merge_timeout=args.merge_timeout,
        mcq_scoring=args.mcq_scoring,
        loglik_lead=args.loglik_lead,
    )
    print(summary.line())
    if summary.merged:
        _write_videochatgpt_json(args, spec.kind)
    if summary.missing_examples:
        print(f"missing features, e.g.: {'; '.join(summary.missing_examples)} (recorded; rerun after extracting them)")
    if summary.errors:
        print(f"{summary.errors} records failed; the reasons are in the rows' 'error' field in {summary.output} "
              f"(e.g. {summary.error_examples[0]}). Fix the cause and rerun the same command: it tries only the "
              "records not done", file=sys.stderr)
        return 1
    return 0


@command("llavidal eval mcq")
def cmd_mcq(argv: list[str] | None = None) -> int:
    """Score multiple-choice predictions: deterministic parsing, accuracy with missing counted wrong."""
    args, judge_args = parse((McqArguments, JudgeArguments), argv, prog="llavidal eval mcq",
                             description=cmd_mcq.__doc__)
    _setup_logging()
    from llavidal.eval.mcq import add_unpredicted
    from llavidal.eval.tasks import load_task

    spec = load_task(args.benchmark)
    if spec.kind != "mcq":
        raise ValueError(f"benchmark {spec.name} is not multiple choice; use 'llavidal eval judge'")
    torn: list[str] = []
    found = _read_predictions(args.predictions, "mcq", torn)
    predictions = found.predictions
    records = spec.load_records(args.records, task=args.task) if args.records else None
    if records is None and args.task:
        for prediction in predictions:
            if prediction.record is not None and not prediction.record.task:
                prediction.record.task = args.task
    judge = judge_args.build(args.fallback_judge) if args.fallback_judge != "none" else None
    result = spec.score(predictions, records, judge=judge)
    notes = []
    if records is None:
        if found.benchmark_total is not None:
            unseen = add_unpredicted(result, found.benchmark_total)
            if unseen:
                notes.append(f"{unseen} of the benchmark's {found.benchmark_total} records have no row in "
                             f"{args.predictions} (counted as missing; not in the per-task lines: pass --records "
                             "for those)")
        else:
            notes.append("n counts predictions only; pass --records for missing ones")
    if torn:
        notes.append(f"torn last line left out: {', '.join(torn)}")
    result["torn_lines"] = torn
    result["notes"] = notes
    paths = _write_results(result, args.output_dir, args.video_root)
    m = result["metrics"]
    print(
        f"{spec.name}: accuracy {_percent(m['accuracy'])} ({m['correct']}/{m['n']}{_interval(m)}), missing {m['missing']} "
        f"{result['missing_reasons'] or ''}".rstrip()
    )
    for task, block in result["per_task"].items():
        print(f"  {task}: {_percent(block['accuracy'])} (n={block['n']}{_interval(block)}, missing {block['missing']})")
    if m.get("task_average") is not None:  # MVBench: the mean of the task accuracies
        print(f"  average over {m['tasks']} tasks: {_percent(m['task_average'])}")
    for note in notes:
        print(f"  note: {note}")
    print(f"report: {paths['markdown']}")
    failed = _failed_rows_line([found])
    if failed:
        print(failed, file=sys.stderr)
        return 1
    return 0


def _judge(which: str, argv: list[str] | None) -> int:
    prog = f"llavidal eval judge {which}"
    args, judge_args = parse((JudgeRunArguments, JudgeArguments), argv, prog=prog,
                             description=f"Judge predictions on the {JUDGE_TASKS[which]} task's criteria.")
    _setup_logging()
    from llavidal.eval.scoring import DEFAULT_SPLIT
    from llavidal.eval.tasks import load_task

    spec = load_task(args.benchmark or JUDGE_TASKS[which])
    splits: dict[str, list] = {}
    files: list = []
    torn: list[str] = []
    if spec.criterion_splits:
        given = {
            "generic": args.pred_path,
            "temporal": args.temporal_pred_path,
            "consistency": args.consistency_pred_path,
        }
        for split, path in given.items():
            if path:
                files.append(_read_predictions(path, spec.kind, torn))
                splits[split] = files[-1].predictions
    else:
        files.append(_read_predictions(args.pred_path, spec.kind, torn))
        splits[DEFAULT_SPLIT] = files[-1].predictions
    records = None
    if args.records:
        if len(splits) != 1:
            raise ValueError("--records can only be used with a single prediction file")
        records = {next(iter(splits)): spec.load_records(args.records)}
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()] or None
    judge = judge_args.build()
    result = spec.score(splits, records, judge=judge, criteria=criteria)
    notes = [f"torn last line left out: {', '.join(torn)}"] if torn else []
    if records is None:
        for found in files:
            unseen = (found.benchmark_total or 0) - len(found.predictions)
            if unseen > 0:
                notes.append(f"{unseen} of the benchmark's {found.benchmark_total} records have no row in {found.path} "
                             "(not judged, not counted: pass --records to count them as missing)")
    result["torn_lines"] = torn
    result["notes"] = notes
    paths = _write_results(result, args.output_dir, args.video_root, args.output_json)
    print(f"{spec.name} judged by {result['judge']['judge_id']} (prompt {result['judge']['prompt_version']})")
    for criterion, block in result["criteria"].items():
        value = block.get("accuracy") if criterion == "zeroshot" else block["scaled"]
        extra = f", score {block['mean']:.3f}" if criterion == "zeroshot" and block["mean"] is not None else ""
        if criterion == "zeroshot" and block.get("n"):
            extra += f"; accuracy n={block['n']}{_interval(block)}"
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
    for note in notes:
        print(f"  note: {note}")
    print(f"report: {paths['markdown']}")
    judge_failed = sum(block.get("judge_failed", 0) for block in result["criteria"].values())
    failed_rows = _failed_rows_line(files)
    if judge_failed:
        first = next((f"{item['id']}: {item['errors'].get(criterion, '')}" for item in result["items"]
                      for criterion, status in item.get("status", {}).items() if status == "failed"), "")
        print(f"{judge_failed} judgements failed (no usable reply after the retries; e.g. {first}); the reasons are "
              f"in the items' 'errors' in {paths['results']}. Rerun the same command: judgements already made are "
              "cached and not asked again", file=sys.stderr)
    if failed_rows:
        print(failed_rows, file=sys.stderr)
    return 1 if judge_failed or failed_rows else 0


@command("llavidal eval judge descriptions")
def cmd_judge_descriptions(argv: list[str] | None = None) -> int:
    """ADL descriptions: five judge criteria (x20, 0-100) and their mean."""
    return _judge("descriptions", argv)


@command("llavidal eval judge videochatgpt")
def cmd_judge_videochatgpt(argv: list[str] | None = None) -> int:
    """Video-ChatGPT benchmark: five judge criteria (0-5) on the generic, temporal and consistency files."""
    return _judge("videochatgpt", argv)


@command("llavidal eval judge zeroshot")
def cmd_judge_zeroshot(argv: list[str] | None = None) -> int:
    """Zero-shot QA: the judge's yes/no accuracy and mean 0-5 score."""
    return _judge("zeroshot", argv)


@command("llavidal eval report")
def cmd_report(argv: list[str] | None = None) -> int:
    """Combine results JSON files into one report (markdown, JSON, plot, gallery)."""
    (args,) = parse((ReportArguments,), argv, prog="llavidal eval report", description=cmd_report.__doc__)
    _setup_logging()
    from llavidal.eval.report import load_results, write_report

    results = [r for path in args.results for r in load_results(path)]
    paths = write_report(results, args.output_dir, video_root=args.video_root, title=args.title)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _list_tasks(argv: list[str] | None, prog: str) -> int:
    parse((), argv, prog=prog, description="List the built-in evaluation tasks (llavidal/eval/tasks/*.yaml).")
    from llavidal.eval.tasks import list_tasks, load_task

    for name in list_tasks():
        spec = load_task(name)
        print(f"{name:<28} v{spec.version} {spec.kind:<9} {spec.description}")
    return 0


@command("llavidal eval tasks")
def cmd_tasks(argv: list[str] | None = None) -> int:
    """List the built-in evaluation tasks."""
    return _list_tasks(argv, "llavidal eval tasks")


@command("llavidal eval benchmarks")
def cmd_benchmarks(argv: list[str] | None = None) -> int:
    """List the built-in evaluation tasks (the older name of 'llavidal eval tasks')."""
    return _list_tasks(argv, "llavidal eval benchmarks")


# ---------------------------------------------------------------------------------------------------
# Upstream scripts and the 'llavidal eval' group

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
    from llavidal.cli import run

    return run(("eval", "judge", which), [*extra, *argv])


def main(argv: list[str] | None = None) -> int:
    """``llavidal eval SUBCOMMAND ...`` (and ``python -m llavidal.eval.commands``): the subcommands are
    entries of the one command table, :data:`llavidal.cli.COMMANDS`."""
    from llavidal.cli import resolve, run

    argv = list(sys.argv[1:] if argv is None else argv)
    found = resolve(["eval", *argv])
    if found is not None and found[0] != ("eval",):
        return run(*found)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "judge":
        print(f"usage: llavidal eval judge {{{','.join(JUDGE_TASKS)}}} [flags]  (-h for flags)", file=sys.stderr)
    else:
        print(f"llavidal eval: unknown subcommand {argv[0]!r}\n\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: --help reads the dataclasses' source by module name.
    from llavidal.eval.commands import main as _main

    sys.exit(_main())
