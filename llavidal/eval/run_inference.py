r"""Batched, resumable, sharded generation over a benchmark's records through the inference engine.

Run as:
    llavidal eval infer --benchmark adlmcq_forecasting --records lemma_mcq.json --weights out/stage3 \
        --video_folder feats/video --pose_folder feats/pose --object_folder feats/object --output preds.jsonl
    torchrun --nproc_per_node=8 -m llavidal.eval.commands infer ...same flags...   # one shard per rank

Each record's prediction is one JSON line appended (and fsynced) as soon as it is generated; a rerun
skips ids already predicted (status ``ok``) with the same generation settings by the same weights (rows record
``weights_sha256``) and tries the others again. Under torchrun each rank writes
``{output stem}.rank{r}.jsonl``; rank 0 merges them into ``--output`` after the ranks' barrier (shards
run without torchrun: once every rank is done; else ``--merge_only`` or any later single-process run
merges them; :func:`llavidal.utils.dist.merge_rank_outputs`). A record whose feature file is missing
for a passed modality is written with ``status: missing_features`` and the missing modalities; it is
never generated without them. A feature file that cannot be used (unreadable, not floating point, NaN/Inf
values, another feature dim than the model's projector) is written with ``status: feature_error`` and the
file named; such rows (and ``generation_error`` rows) are failures: ``llavidal eval infer`` exits 1 after
writing them, and a rerun tries them again. Every row carries ``benchmark_total`` (the number of records
asked for), so that scoring without ``--records`` still knows how many there were. Before generating, the
command compares each feature folder's ``manifest.json`` with the manifests the weights record
(:func:`check_feature_manifests`). Row format: :mod:`llavidal.eval.predictions`.

Records are taken longest prompt first (batches of similar length pad less; the merged file is in record
order). ``mcq_scoring`` other than ``generate`` scores each choice of a multiple-choice record by its
log-likelihood instead of generating (:mod:`llavidal.eval.loglik`); the rows are the same, with the chosen
letter as the prediction and each choice's log-likelihood in ``option_scores``.

Feature files: ``{stem}{suffix}`` in each modality's folder with any supported extension, where ``stem``
is the record's video file name without extension and ``suffix`` the modality's ``file_suffix``
(``""`` for video, ``_pose``, ``_object``): ``v1.mp4`` -> ``video/v1.pkl``, ``pose/v1_pose.pickle``,
``object/v1_object.safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from llavidal.data.feature_store import (
    FEATURE_EXTENSIONS,
    FeatureFileError,
    FeatureFolder,
    FeatureManifest,
    UnsafePickleError,
    check_feature_array,
)
from llavidal.eval.records import EvalRecord
from llavidal.eval.tasks import TaskSpec
from llavidal.utils import dist
from llavidal.utils.io import append_jsonl, read_jsonl

logger = logging.getLogger(__name__)

DEFAULT_FILE_SUFFIXES = {"video": "", "pose": "_pose", "object": "_object"}


@dataclass
class InferenceSummary:
    output: str
    total: int
    """Records in this rank's shard."""
    skipped_done: int = 0
    generated: int = 0
    missing_features: int = 0
    errors: int = 0
    merged: bool = False
    seconds: float = 0.0
    missing_examples: list[str] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)
    """The first few failed records' reasons (every reason is in its row's ``error`` field)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.output}: {self.total} records in shard, {self.skipped_done} already done, {self.generated} "
            f"generated, {self.missing_features} missing features, {self.errors} failed ({self.seconds:.1f}s)"
        )

    def note_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(message)


class FeatureManifestMismatch(ValueError):
    """Feature folders made differently from the features the weights were trained on."""


def check_feature_manifests(
    weights_dir: str | Path, feature_folders: dict[str, str | Path | None], allow_mismatch: bool = False
) -> list[str]:
    """Compare each feature folder's ``manifest.json`` with the manifest the weights record for its modality.

    Raises :class:`FeatureManifestMismatch` naming every mismatching folder, the weights and each difference
    (:func:`llavidal.features.extractor.manifest_differences`), unless ``allow_mismatch``: then the
    differences are logged as warnings. Folders without a manifest (upstream pickles) and modalities the
    weights record nothing for cannot be checked; that is logged too. Returns the warnings logged.
    """
    from llavidal.features.extractor import manifest_differences
    from llavidal.model.builder import recorded_manifests

    folders = {name: Path(folder) for name, folder in feature_folders.items() if folder}
    if not folders:
        return []
    recorded = recorded_manifests(weights_dir)  # none for upstream weights (a file, no llavidal_config.json)
    warnings: list[str] = []
    mismatches: list[str] = []
    for name, folder in folders.items():
        if not folder.is_dir():
            continue  # the feature folder's own check names it
        actual = FeatureManifest.load(folder)
        expected = recorded.get(name)
        if actual is None or expected is None:
            missing = (f"{folder} has no manifest.json" if actual is None
                       else f"{weights_dir} records no {name} manifest")
            warnings.append(f"--{name}_folder {folder}: not checked against the weights ({missing}); make sure the "
                            f"{name} features were extracted the way training's were")
            continue
        differences = manifest_differences(expected, actual)
        if differences:
            mismatches.append(f"--{name}_folder {folder}: {'; '.join(differences)}")
    if mismatches:
        message = (f"feature folders do not match the features the weights {weights_dir} were trained on: "
                   f"{' | '.join(mismatches)}")
        if not allow_mismatch:
            raise FeatureManifestMismatch(
                f"{message}. Re-extract the features with the recipe the weights record (feature_manifests in "
                f"{Path(weights_dir) / 'llavidal_config.json'}), or pass --allow_feature_mismatch to run anyway"
            )
        warnings.append(f"{message} (running anyway: --allow_feature_mismatch)")
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


def shard_path(output: str | Path, shard_rank: int) -> Path:
    """``preds.jsonl`` -> ``preds.rank{r}.jsonl``, the file rank ``r`` appends to."""
    return dist.rank_path(output, shard_rank)


def _all_rows(output: str | Path) -> list[dict]:
    """Rows of the merged file and every rank file (rank files last: they are newer)."""
    rows = read_jsonl(output)
    for part in dist.rank_files(output):
        rows.extend(read_jsonl(part))
    return rows


def completed_ids(output: str | Path, generation: dict | None = None) -> set[str]:
    """Ids whose latest row has status ``ok`` (others are tried again); with ``generation``, only rows written
    with those generation settings and by the same weights count (a rerun with another ``--mcq_scoring``, lead
    or token limit, or after the weights were trained again, answers every record again, and the merge keeps the
    new rows)."""
    wanted = None if generation is None else json.dumps(generation, sort_keys=True)
    latest: dict[str, bool] = {}
    for row in _all_rows(output):
        same = wanted is None or json.dumps(row.get("generation"), sort_keys=True) == wanted
        latest[str(row["id"])] = row.get("status", "ok") == "ok" and same
    return {rid for rid, ok in latest.items() if ok}


def merge_predictions(output: str | Path, records: Sequence[EvalRecord] | None = None) -> Path:
    """Write one row per id (the latest) to ``output`` atomically, in record order; remove rank files.

    Idempotent: a rerun (or ``--merge_only``) after a cut-short merge writes the same file.
    """
    output = Path(output)
    order = [r.id for r in records] if records is not None else None
    dist.merge_rank_outputs([output], key="id", order=order, write_empty=True)
    return output


def repair_torn_tail(path: str | Path) -> bool:
    """Cut an unterminated last line (a write killed half-way) so that new rows start on a fresh line."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, 2)
        if handle.read(1) == b"\n":
            return False
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)
    logger.warning("%s: removed a torn last line left by an interrupted run", path)
    return True


def _engine_suffixes(engine: Any) -> dict[str, str]:
    registry = getattr(engine, "modalities", None)
    if registry is None:
        return dict(DEFAULT_FILE_SUFFIXES)
    return {spec.name: spec.file_suffix for spec in registry}


def _default_request_factory() -> Callable[..., Any]:
    from llavidal.serve.engine import GenerationRequest

    return GenerationRequest


def _open_folders(
    feature_folders: dict[str, str | Path | FeatureFolder], engine: Any, allow_text_only: bool
) -> dict[str, FeatureFolder]:
    folders: dict[str, FeatureFolder] = {}
    engine_modalities = set(_engine_suffixes(engine))
    for name, folder in feature_folders.items():
        if folder is None:
            continue
        if name not in engine_modalities:
            raise ValueError(
                f"--{name}_folder was passed but the model has no '{name}' modality "
                f"(it has {sorted(engine_modalities)}); drop the flag or load weights trained with it"
            )
        if not isinstance(folder, FeatureFolder):
            refuse_video_files_folder(name, folder)
        folders[name] = folder if isinstance(folder, FeatureFolder) else FeatureFolder(folder, modality=name)
    if "video" in engine_modalities and "video" not in folders and not allow_text_only:
        raise ValueError(
            "no --video_folder: the model reads video features and would answer without seeing the video. "
            "Pass --video_folder, or --allow_text_only to measure a text-only baseline on purpose."
        )
    return folders


VIDEO_FILE_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
EXTRACTION_COMMANDS = {
    "video": "python scripts/save_spatio_temporal_clip_features.py --video_dir_path {folder} --clip_feat_path FEATURES",
    "pose": "llavidal extract pose ... --output_dir FEATURES",
    "object": "llavidal extract object ... --output_dir FEATURES",
}


def refuse_video_files_folder(name: str, folder: str | Path) -> None:
    """Refuse a feature folder that holds videos and no feature files (Video-ChatGPT's ``--video_dir`` held
    videos and extracted features on the fly; here features are extracted once, beforehand)."""
    path = Path(folder)
    if not path.is_dir():
        return
    video_example = None
    with os.scandir(path) as entries:
        for entry in entries:
            suffix = Path(entry.name).suffix.lower()
            if suffix in FEATURE_EXTENSIONS:
                return  # a features folder (videos beside them are the user's business)
            if video_example is None and suffix in VIDEO_FILE_EXTENSIONS:
                video_example = entry.name
    if video_example is not None:
        command = EXTRACTION_COMMANDS.get(name, f"llavidal extract {name} ...").format(folder=path)
        raise ValueError(
            f"--{name}_folder {path} holds videos ({video_example}), not {name} features: features are read from a "
            f"features folder, not extracted on the fly. Extract them first ({command}) and pass that FEATURES "
            "folder instead"
        )


def _engine_feature_dims(engine: Any) -> dict[str, int]:
    registry = getattr(engine, "modalities", None)
    return {} if registry is None else {spec.name: int(spec.feature_dim) for spec in registry}


def _load_features(
    record: EvalRecord,
    folders: dict[str, FeatureFolder],
    suffixes: dict[str, str],
    optional: set[str],
    feature_dims: dict[str, int] | None = None,
) -> tuple[dict[str, Any], list[str], str]:
    """(features, missing modalities, error message)."""
    features: dict[str, Any] = {}
    missing: list[str] = []
    for name, folder in folders.items():
        file_name = record.video_stem + suffixes.get(name, "")
        try:
            array, path = folder.read(file_name, record_id=record.id)
            if array is not None:
                array = check_feature_array(array, path, record.id)
                want = (feature_dims or {}).get(name)
                if want and (array.ndim < 2 or array.shape[-1] != want):
                    raise FeatureFileError(
                        f"{path}: {name} features of shape {tuple(array.shape)}, but the model's {name} projector "
                        f"takes {want}-d features; re-extract them with the recipe the weights record"
                    )
        except (FeatureFileError, UnsafePickleError, OSError, ValueError) as err:
            return {}, [], f"record {record.id!r}: {name} features: {err}"
        if array is None:
            if name not in optional:
                missing.append(name)
            continue
        features[name] = array
    return features, missing, ""


def run_inference(
    engine: Any,
    benchmark_records: Sequence[EvalRecord],
    feature_folders: dict[str, str | Path | FeatureFolder | None],
    out_jsonl: str | Path,
    *,
    benchmark: TaskSpec | None = None,
    prompt_fn: Callable[[EvalRecord], dict[str, str]] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    optional_modalities: Iterable[str] = (),
    allow_text_only: bool = False,
    shard_rank: int | None = None,
    num_shards: int | None = None,
    merge: bool = True,
    merge_timeout: float = 6 * 3600.0,
    request_factory: Callable[..., Any] | None = None,
    show_progress: bool = True,
    mcq_scoring: str = "generate",
    sort_by_length: bool = True,
    loglik_lead: str = "",
) -> InferenceSummary:
    """Generate predictions for ``benchmark_records`` (see the module docstring).

    ``prompt_fn(record) -> {"main": text, ...}`` gives the questions to ask; by default the
    benchmark's prompts (:meth:`TaskSpec.prompts`), or the record's question. Generation is through
    ``engine.generate(requests, max_new_tokens=, temperature=, top_p=, batch_size=)``; with ``mcq_scoring``
    ``loglik_norm`` / ``loglik_char`` / ``loglik`` through ``engine.score_options(requests, options,
    batch_size=)`` (:mod:`llavidal.eval.loglik`); with ``loglik_lead`` the choices are scored after the model's
    own greedy answer up to that lead (:func:`llavidal.eval.loglik.cut_at_lead`). ``sort_by_length``
    takes the records longest prompt text first, so that batches hold prompts of similar length.
    """
    from llavidal.eval.loglik import check_scoring, cut_at_lead, score_ready

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    scoring = check_scoring(mcq_scoring, benchmark)
    if loglik_lead and scoring is None:
        raise ValueError("loglik_lead scores the choices after a generated lead: it needs --mcq_scoring loglik_norm, "
                         "loglik_char or loglik")
    start = time.time()
    shard_rank = dist.rank() if shard_rank is None else shard_rank
    num_shards = dist.world_size() if num_shards is None else num_shards
    out_jsonl = Path(out_jsonl)
    ids = [r.id for r in benchmark_records]
    if len(set(ids)) != len(ids):
        raise ValueError("benchmark records have duplicate ids; load them with llavidal.eval.records.load_records")
    prompt_fn = prompt_fn or (benchmark.prompts if benchmark is not None else (lambda r: {"main": r.question}))
    make_request = request_factory or _default_request_factory()
    folders = _open_folders(dict(feature_folders), engine, allow_text_only)
    suffixes = _engine_suffixes(engine)
    feature_dims = _engine_feature_dims(engine)
    optional = set(optional_modalities)
    target = out_jsonl if num_shards == 1 else shard_path(out_jsonl, shard_rank)
    if num_shards > 1:
        dist.done_marker(out_jsonl, shard_rank).unlink(missing_ok=True)  # a stale marker from an earlier run
    generation: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    if scoring is not None:
        generation = {"mcq_scoring": mcq_scoring, "loglik_continuation": benchmark.loglik_continuation}
        if loglik_lead:
            generation.update(loglik_lead=loglik_lead, max_new_tokens=max_new_tokens)
    # what a row records it was answered with: the settings, and the weights (rows of retrained weights are redone)
    answered_with = {**generation, **({"weights_sha256": engine.weights_sha256}
                                      if getattr(engine, "weights_sha256", None) else {})}
    repair_torn_tail(target)
    done = completed_ids(out_jsonl, answered_with)
    shard = dist.shard(list(benchmark_records), shard_rank, num_shards)
    todo = [r for r in shard if r.id not in done]
    if sort_by_length:  # stable: records of equal length keep their order
        todo.sort(key=lambda r: -sum(len(text) for text in prompt_fn(r).values()))
    summary = InferenceSummary(output=str(target), total=len(shard), skipped_done=len(shard) - len(todo))
    identity = benchmark.identity if benchmark is not None else {}

    def row(
        record: EvalRecord,
        status: str,
        outputs: dict[str, str] | None = None,
        missing: list[str] | None = None,
        error: str = "",
        used: list[str] | None = None,
        extra: dict | None = None,
    ) -> dict:
        outputs = outputs or {}
        return {
            "id": record.id,
            "status": status,
            "prediction": outputs.get("main"),
            "outputs": outputs,
            "prompts": prompt_fn(record),
            "missing": missing or [],
            "error": error,
            "modalities": used or [],
            **identity,
            "generation": answered_with,
            "benchmark_total": len(benchmark_records),
            "record": record.to_dict(),
            **(extra or {}),
        }

    progress = None
    if show_progress and todo:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(todo), desc=f"infer rank {shard_rank}" if num_shards > 1 else "infer", unit="rec")
    for chunk_start in range(0, len(todo), batch_size):
        chunk = todo[chunk_start : chunk_start + batch_size]
        ready: list[tuple[EvalRecord, dict[str, Any], dict[str, str]]] = []
        for record in chunk:
            features, missing, error = _load_features(record, folders, suffixes, optional, feature_dims)
            if error:
                append_jsonl(target, row(record, "feature_error", error=error))
                summary.note_error(error)
            elif missing:
                append_jsonl(
                    target,
                    row(
                        record,
                        "missing_features",
                        missing=missing,
                        error=f"no {', '.join(missing)} feature file for video {record.video_stem!r}",
                    ),
                )
                summary.missing_features += 1
                if len(summary.missing_examples) < 5:
                    summary.missing_examples.append(f"{record.id} ({', '.join(missing)})")
            else:
                ready.append((record, features, prompt_fn(record)))
        if scoring is None:
            results = [(outputs, error, {}) for outputs, error in
                       _generate(engine, make_request, ready, generation, batch_size,
                                 getattr(benchmark, "answer_prompt", ""))]
        else:
            leads = None
            if loglik_lead:  # the model's own greedy answer up to the lead, then the choices after it
                answer_prompt = getattr(benchmark, "answer_prompt", "")
                # generation ends at the lead (the text after it is not used)
                greedy = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0, "stop": [loglik_lead]}
                main_only = [(record, features, {"main": prompts["main"]}) for record, features, prompts in ready]
                leads = [("", error) if error else (answer_prompt + cut_at_lead(outputs["main"], loglik_lead), "")
                         for outputs, error in _generate(engine, make_request, main_only, greedy, batch_size,
                                                         answer_prompt)]
            results = score_ready(engine, make_request, ready, benchmark, mcq_scoring, batch_size, leads)
        for (record, features, _), (outputs, error, extra) in zip(ready, results):
            if error:
                append_jsonl(target, row(record, "generation_error", error=error, used=sorted(features)))
                summary.note_error(error)
            else:
                prefix = getattr(benchmark, "answer_prefix", "") if scoring is None else ""
                extra = {**(extra or {}), **_sampled_frames(engine, make_request, record, features,
                                                            prompt_fn(record)["main"], prefix)}
                append_jsonl(target, row(record, "ok", outputs=outputs, used=sorted(features), extra=extra))
                summary.generated += 1
        if progress is not None:
            progress.update(len(chunk))
    if progress is not None:
        progress.close()

    if num_shards == 1:
        if merge:
            merge_predictions(out_jsonl, benchmark_records)
            summary.merged = True
    else:
        summary.merged = _merge_shards(out_jsonl, shard_rank, num_shards, benchmark_records, merge, merge_timeout)
    summary.seconds = time.time() - start
    return summary


def _sampled_frames(engine: Any, make_request: Callable[..., Any], record: EvalRecord, features: dict,
                    question: str, answer_prefix: str = "") -> dict:
    """``{"sampled_frames": [i, ...]}``: the video frames a temporal sampler kept for the record's main question
    (ascending frame indices of its features); empty for a model without a sampler."""
    pick = getattr(engine, "sampled_frames", None)
    if pick is None or "video" not in features:
        return {}
    prefix = {"answer_prefix": answer_prefix} if answer_prefix else {}
    frames = pick(make_request(question=question, features=features, history=[], request_id=record.id, **prefix))
    return {} if frames is None else {"sampled_frames": [int(i) for i in frames]}


def _generate(
    engine: Any, make_request: Callable[..., Any], ready: list, generation: dict, batch_size: int,
    answer_prefix: str = "",
) -> list[tuple[dict[str, str], str]]:
    """Outputs per ready record; a failing batch is retried record by record to isolate the culprit."""
    if not ready:
        return []
    requests, owners = [], []
    for index, (record, features, prompts) in enumerate(ready):
        unique = list(dict.fromkeys(prompts.values()))
        for question in unique:
            prefix = {"answer_prefix": answer_prefix} if answer_prefix else {}  # MVBench's "Best option:("
            requests.append(make_request(question=question, features=features, history=[], request_id=record.id,
                                         **prefix))
            owners.append((index, question))
    try:
        texts = engine.generate(requests, batch_size=batch_size, **generation)
        if len(texts) != len(requests):
            raise RuntimeError(f"engine returned {len(texts)} outputs for {len(requests)} requests")
    except Exception as err:  # noqa: BLE001 - isolate which record fails; errors are recorded per record
        if len(ready) == 1:
            record = ready[0][0]
            return [({}, f"record {record.id!r}: generation failed: {type(err).__name__}: {err}")]
        return [result for item in ready
                for result in _generate(engine, make_request, [item], generation, batch_size, answer_prefix)]
    answers: list[dict[str, str]] = [{} for _ in ready]
    for (index, question), text in zip(owners, texts):
        answers[index][question] = text
    out = []
    for (_, _, prompts), by_question in zip(ready, answers):
        out.append(({key: by_question[question] for key, question in prompts.items()}, ""))
    return out


def _merge_shards(output: Path, shard_rank: int, num_shards: int, records: Sequence[EvalRecord], merge: bool,
                  timeout: float) -> bool:
    """End of a sharded run: rank 0 merges every rank's file once all are done. True when merged here.

    Under torchrun the ranks meet at a barrier (a gloo group, created here when none exists). Shards
    run without a rendezvous (one after another, as the tests do, or as separate jobs that share only the
    file system) mark themselves done with a file instead, and rank 0 merges if every marker is there;
    otherwise a later ``--merge_only`` run, or any single-process run, merges what is left.
    """
    dist.mark_done(output, shard_rank)
    try:
        with dist.process_group(timeout=timeout) as group:
            if group.active and (group.rank, group.world_size) == (shard_rank, num_shards):
                group.barrier()  # every rank's file is complete
                merged = merge and shard_rank == 0
                if merged:
                    merge_predictions(output, records)
                group.barrier()  # the merge is done before any rank reports
                return merged
    except RuntimeError as err:  # torch's distributed errors: a rank did not arrive within --merge_timeout
        logger.warning("ranks did not all meet in %.0fs (%s); merge later with: llavidal eval infer --merge_only ...",
                       timeout, err)
        return False
    if not merge or shard_rank != 0:
        return False
    pending = dist.pending_ranks(output, num_shards)
    if pending:
        logger.warning("ranks %s have not finished; their rows are merged by a later run of rank 0, by "
                       "llavidal eval infer --merge_only ..., or by any single-process run", pending)
        return False
    merge_predictions(output, records)
    return True

