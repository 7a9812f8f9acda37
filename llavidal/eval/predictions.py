"""Model predictions: the rows the inference runner writes, and upstream prediction files.

Our rows (one JSON line per record, the last line per id wins)::

    {"id", "status": "ok" | "missing_features" | "feature_error" | "generation_error",
     "outputs": {"main": text, "cons1": text, "cons2": text}, "prediction": outputs["main"],
     "prompts": {same keys: the text sent to the model},
     "missing": [modality, ...], "error": "...", "record": {EvalRecord fields},
     "benchmark", "benchmark_version", "modalities", "generation": {...}}

Rows written by ``llavidal eval infer`` also carry ``benchmark_total``: how many records the run was asked
for, so that a file cut short (a killed run, a torn last line) still says how many predictions are missing.

Upstream (Video-ChatGPT / LLAVIDAL) prediction files are flat: the benchmark record's fields plus
``pred`` (``pred1``/``pred2`` for consistency), or, from Video-ChatGPT's ActivityNet-QA inference,
``{id, question, answer, pred}`` (no video field). Both are read into :class:`Prediction`;
:func:`videochatgpt_rows` writes ours back in Video-ChatGPT's shape.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llavidal.eval.records import (
    EvalRecord,
    RecordFormatError,
    assign_ids,
    iter_raw_records,
    normalise_record,
)
from llavidal.utils.io import load_json_or_jsonl

logger = logging.getLogger(__name__)

PREDICTION_STATUSES = ("ok", "missing_features", "feature_error", "generation_error")
FAILED_STATUSES = ("feature_error", "generation_error")
"""Rows that are failures (a rerun of ``llavidal eval infer`` tries them again); ``missing_features`` is not:
it is reported as missing, and generated once the features are extracted."""
_PRED_KEYS = ("pred", "prediction", "output", "model_output", "response", "generated")


@dataclass
class Prediction:
    id: str
    outputs: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    error: str = ""
    missing: list[str] = field(default_factory=list)
    record: EvalRecord | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def text(self) -> str:
        return self.outputs.get("main", "")


def _from_row(row: dict) -> Prediction:
    record = EvalRecord.from_dict(row["record"]) if isinstance(row.get("record"), dict) else None
    return Prediction(
        id=str(row["id"]),
        outputs=dict(row.get("outputs") or {}),
        status=row.get("status", "ok"),
        error=row.get("error", ""),
        missing=list(row.get("missing") or []),
        record=record,
    )


def _from_flat(raw: dict, kind: str, where: str) -> Prediction:
    record = normalise_record(raw, kind, where, video_optional=True)  # ActivityNet rows: id/question/answer/pred
    outputs: dict[str, str] = {}
    if "pred1" in raw and "pred2" in raw:
        outputs["cons1"], outputs["cons2"] = str(raw["pred1"]), str(raw["pred2"])
        outputs["main"] = str(raw.get("pred", raw["pred1"]))
    else:
        value = next((raw[k] for k in _PRED_KEYS if k in raw and raw[k] is not None), None)
        if value is None:
            raise RecordFormatError(f"{where}: no prediction field (one of {', '.join(_PRED_KEYS)}, or pred1/pred2)")
        outputs["main"] = str(value)
    return Prediction(id=record.id, outputs=outputs, record=record)


def predictions_from_data(data: Any, kind: str, source: str) -> list[Prediction]:
    """Rows of either shape (ours or upstream flat) -> predictions; the last row per id wins."""
    items = iter_raw_records(data, source)
    ours = [raw for _, raw in items if "outputs" in raw and "id" in raw]
    if ours and len(ours) == len(items):
        by_id: dict[str, Prediction] = {}
        for raw in ours:
            prediction = _from_row(raw)
            by_id[prediction.id] = prediction
        return list(by_id.values())
    predictions = []
    for index, (fallback_id, raw) in enumerate(items):
        prediction = _from_flat(raw, kind, f"{source}:{index}")
        if not prediction.record.id and fallback_id:
            prediction.record.id = fallback_id
        predictions.append(prediction)
    assign_ids([p.record for p in predictions])
    for prediction in predictions:
        prediction.id = prediction.record.id
    return predictions


@dataclass
class PredictionFile:
    """A predictions file as read: its predictions, and what reading it found."""

    path: str
    predictions: list[Prediction]
    torn_line: int | None = None
    """Number of an unterminated, unparsable last line (a write cut short), which was left out."""
    benchmark_total: int | None = None
    """Records the run that wrote the file was asked for (``benchmark_total`` of its rows), when recorded."""

    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if p.status in FAILED_STATUSES]


def torn_last_line(path: str | Path) -> int | None:
    """The line number of a JSONL file's torn last line (no newline, not valid JSON), else ``None``."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    tail = data[data.rfind(b"\n") + 1 :]
    if not tail.strip():
        return None
    try:
        json.loads(tail)
    except ValueError:
        return data.count(b"\n") + 1
    return None


def read_prediction_file(path: str | Path, kind: str) -> PredictionFile:
    """Read a predictions file (ours or upstream); a torn last line is left out with a warning naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction file {path} does not exist; run 'llavidal eval infer' first")
    data = load_json_or_jsonl(path)  # non-UTF-8 text: an error naming the file and byte
    torn = torn_last_line(path)
    if torn is not None:
        logger.warning("%s:%d: torn last line (a write cut short) left out; its record counts as having no "
                       "prediction. Rerun 'llavidal eval infer' with the same --output to redo it", path, torn)
    totals = [row.get("benchmark_total") for row in data if isinstance(row, dict)] if isinstance(data, list) else []
    totals = [t for t in totals if isinstance(t, int) and not isinstance(t, bool)]
    predictions = predictions_from_data(data, kind, str(path))
    return PredictionFile(str(path), predictions, torn, max(totals) if totals else None)


def load_predictions(path: str | Path, kind: str) -> list[Prediction]:
    return read_prediction_file(path, kind).predictions


def as_predictions(predictions: Any, kind: str) -> list[Prediction]:
    """Predictions given as :class:`Prediction` objects, rows (dicts, ours or upstream), a file path, or a
    plain ``{id: text}`` dict -> a list of :class:`Prediction`."""
    if isinstance(predictions, (str, Path)):
        return load_predictions(predictions, kind)
    if isinstance(predictions, dict):
        return [Prediction(id=str(k), outputs={"main": str(v)}) for k, v in predictions.items()]
    predictions = list(predictions)
    if predictions and all(isinstance(p, dict) for p in predictions):
        return predictions_from_data(predictions, kind, "<predictions>")
    return predictions


def join(
    records: Iterable[EvalRecord] | None, predictions: Iterable[Prediction]
) -> list[tuple[EvalRecord, Prediction | None]]:
    """Pair each record with its prediction (``None`` when it has none).

    Without ``records``, the records stored in the predictions are used (every prediction must carry
    one). With ``records``, predictions for ids not in the records are an error: they usually mean the
    wrong file was passed.
    """
    predictions = list(predictions)
    by_id = {p.id: p for p in predictions}
    if records is None:
        pairs = []
        for p in predictions:
            if p.record is None:
                raise RecordFormatError(f"prediction {p.id!r} carries no record; pass the benchmark file as well")
            pairs.append((p.record, p))
        return pairs
    records = list(records)
    known = {r.id for r in records}
    stray = [pid for pid in by_id if pid not in known]
    if stray:
        raise RecordFormatError(
            f"{len(stray)} predictions have ids that are not in the benchmark records (e.g. {stray[:3]}); "
            "check that the prediction and benchmark files belong together"
        )
    return [(r, by_id.get(r.id)) for r in records]


def _source_item(source: str, cache: dict[str, list | None]) -> dict | None:
    """The raw benchmark record at ``source`` (``file:index``, as :class:`EvalRecord` notes it), or ``None``
    when that file can no longer be read."""
    path, _, index = source.rpartition(":")
    if not path or not index.isdigit():
        return None
    if path not in cache:
        try:
            cache[path] = [raw for _, raw in iter_raw_records(load_json_or_jsonl(path), path)]
        except (OSError, ValueError):
            cache[path] = None
    items = cache[path]
    if items is None or int(index) >= len(items) or not isinstance(items[int(index)], dict):
        return None
    return items[int(index)]


def videochatgpt_rows(predictions: Iterable[Prediction]) -> list[dict]:
    """Predictions in Video-ChatGPT's prediction-file shape (what its ``run_inference_*`` scripts write), in
    order, for the predictions that are ``ok`` (Video-ChatGPT leaves out records it could not answer):

    * records read from a question + answer pair of files (ActivityNet-QA): ``{id, question, answer, pred}``;
    * others: the benchmark record as it is in its file (``video_name, Q, A``, ...) plus ``pred``, and
      ``pred1``/``pred2`` when the record has two consistency questions. When the benchmark file can no
      longer be read, ``{video_name, Q, A}`` (and ``Q1``/``Q2``) are written from the record.
    """
    rows: list[dict] = []
    cache: dict[str, list | None] = {}
    for prediction in predictions:
        record = prediction.record
        if not prediction.ok or record is None:
            continue
        outputs = prediction.outputs
        if record.meta.get("answers_file"):
            rows.append({"id": record.id, "question": record.question, "answer": record.answer,
                         "pred": outputs.get("main", "")})
            continue
        raw = _source_item(record.source, cache)
        if raw is None:
            raw = {"video_name": record.video, "Q": record.question, "A": record.answer}
            if len(record.consistency_questions) == 2:
                raw["Q1"], raw["Q2"] = record.consistency_questions
        row = {k: v for k, v in raw.items() if k not in ("pred", "pred1", "pred2")}
        row["pred"] = outputs.get("main", "")
        if "cons1" in outputs and "cons2" in outputs:
            row["pred1"], row["pred2"] = outputs["cons1"], outputs["cons2"]
        rows.append(row)
    return rows


def write_videochatgpt_predictions(predictions_path: str | Path, output: str | Path, kind: str) -> int:
    """Read our predictions file and write it as Video-ChatGPT's (one JSON list, :func:`videochatgpt_rows`)
    to ``output``; returns the number of rows written."""
    from llavidal.utils.io import atomic_write_json

    rows = videochatgpt_rows(load_predictions(predictions_path, kind))
    atomic_write_json(output, rows)
    return len(rows)
