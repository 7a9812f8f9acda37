"""Reports: a markdown table, the full JSON, a bar chart (PNG) and an HTML gallery to browse items.

``write_report(results, out_dir, video_root=None)`` takes the dicts returned by
:func:`llavidal.eval.mcq.score_mcq` and :func:`llavidal.eval.scoring.score_judged` and writes

    out_dir/report.md     one table per benchmark, with missing counts and the judge that scored it
    out_dir/report.json   everything, including per-item results
    out_dir/report.png    headline metrics as bars
    out_dir/gallery.html  per item: <video> (path relative to the report, the file found in ``video_root``
                          whatever its extension), question, answer, prediction and scores; a filter
                          shows only wrong or missing items (Jinja2 template ``templates/report_gallery.html.j2``)

The report has no timestamps, so identical results give byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llavidal.utils.io import atomic_path, atomic_write_json, atomic_write_text

PERCENT_KINDS = ("mcq",)


def format_value(value: Any, digits: int = 2) -> str:
    """A table cell: ``n/a`` for None, floats with ``digits`` decimals, anything else as ``str``."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_fmt = format_value


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> list[str]:
    """Lines of a markdown table: the header, its separator, then one line per row (cells via format_value)."""
    lines = ["| " + " | ".join(str(name) for name in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(cell, digits) for cell in row) + " |" for row in rows]
    return lines


def _title(result: dict) -> str:
    name = result.get("name") or result.get("benchmark") or "results"
    version = result.get("benchmark_version")
    return f"{name} (v{version})" if version is not None else name


def _judge_line(judge: dict | None) -> str:
    if not judge:
        return ""
    served = judge.get("served_models") or []
    served_text = f", served as {', '.join(served)}" if served else ""
    settings = ""
    if "temperature" in judge:
        settings = f", temperature {judge['temperature']}, seed {judge.get('seed')}"
    return f"Judge: `{judge.get('judge_id')}`{served_text}, prompt `{judge.get('prompt_version')}`{settings}."


def _markdown_mcq(result: dict) -> list[str]:
    m = result["metrics"]
    ci = m.get("ci95")
    interval = f"{_fmt(ci[0])}-{_fmt(ci[1])}" if ci else "-"
    lines = [
        "| metric | value | 95% interval | n | correct | missing |",
        "|---|---|---|---|---|---|",
        f"| accuracy (%) | {_fmt(m['accuracy'])} | {interval} | {m['n']} | {m['correct']} | {m['missing']} |",
        f"| accuracy of answered (%) | {_fmt(m['accuracy_answered'])} | - | {m['n'] - m['missing']} | {m['correct']} | - |",
        "",
    ]
    if len(result.get("per_task", {})) > 1 or result.get("per_task"):
        lines += ["| task | accuracy (%) | n | missing |", "|---|---|---|---|"]
        for task, block in result["per_task"].items():
            lines.append(f"| {task} | {_fmt(block['accuracy'])} | {block['n']} | {block['missing']} |")
        lines.append("")
    if result.get("per_class"):
        lines += [
            "<details><summary>per class</summary>",
            "",
            "| class | accuracy (%) | n | missing |",
            "|---|---|---|---|",
        ]
        for label, block in result["per_class"].items():
            lines.append(f"| {label} | {_fmt(block['accuracy'])} | {block['n']} | {block['missing']} |")
        lines += ["", "</details>", ""]
    reasons = result.get("missing_reasons") or {}
    lines.append(
        "Missing answers (counted wrong): "
        + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")
        + "."
    )
    lines.append(
        f"Parser `{result.get('parser_version')}`; "
        f"judge fallback: {(result.get('judge') or {}).get('judge_id') or 'none'}."
    )
    return lines


def _markdown_judged(result: dict) -> list[str]:
    scale = result.get("scale", 1)
    lines = [
        f"| criterion | score{' (x%g)' % scale if scale != 1 else ' (0-5)'} | judged / total "
        "| missing predictions | judge failed | judge malformed |",
        "|---|---|---|---|---|---|",
    ]
    for criterion, block in result["criteria"].items():
        value = block.get("accuracy") if criterion == "zeroshot" else block["scaled"]
        label = "zero-shot accuracy (%)" if criterion == "zeroshot" else criterion
        lines.append(
            f"| {label} | {_fmt(value)} | {block['judged']} / {block['total']} | {block['missing_predictions']} | "
            f"{block['judge_failed']} | {block['judge_malformed']} |"
        )
        if criterion == "zeroshot":
            lines.append(
                f"| zero-shot score (0-5) | {_fmt(block['mean'])} | {block['judged']} / {block['total']} | - | - | - |"
            )
    if "overall" in result["metrics"]:
        lines.append(f"| **overall** | **{_fmt(result['metrics']['overall'])}** | | | | |")
    lines.append("")
    lines.append("Means are over judged items; missing judgements are counted above, never scored 0.")
    if result.get("skipped_criteria"):
        lines.append(f"Not run (no prediction file given): {', '.join(result['skipped_criteria'])}.")
    return lines


def render_markdown(results: list[dict], title: str) -> str:
    lines = [f"# {title}", ""]
    for result in results:
        lines += [f"## {_title(result)}", ""]
        lines += _markdown_mcq(result) if result.get("kind") == "mcq" else _markdown_judged(result)
        judge_line = _judge_line(result.get("judge"))
        if judge_line and result.get("kind") != "mcq":
            lines.append(judge_line)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _bars(result: dict) -> tuple[list[str], list[float | None], float, str]:
    if result.get("kind") == "mcq":
        labels, values = ["all"], [result["metrics"]["accuracy"]]
        if len(result.get("per_task", {})) > 1:
            for task, block in result["per_task"].items():
                labels.append(task)
                values.append(block["accuracy"])
        return labels, values, 100.0, "accuracy (%)"
    if result.get("kind") == "zeroshot":
        block = result["criteria"].get("zeroshot", {})
        return (
            ["accuracy (%)", "score x20"],
            [block.get("accuracy"), (block.get("mean") or 0) * 20 if block.get("mean") is not None else None],
            100.0,
            "percent",
        )
    scale = result.get("scale", 1) or 1
    labels = list(result["criteria"])
    values = [result["criteria"][c]["scaled"] for c in labels]
    if "overall" in result["metrics"]:
        labels.append("overall")
        values.append(result["metrics"]["overall"])
    return labels, values, 5.0 * scale, f"score (0-{5 * scale:g})"


def render_chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(results))
    fig, axes = plt.subplots(1, count, figsize=(max(5.0, 4.2 * count), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        labels, values, top, ylabel = _bars(result)
        heights = [v if v is not None else 0.0 for v in values]
        colors = [
            "#BBBBBB" if v is None else ("#1F3A68" if label in ("all", "overall") else "#4C72B0")
            for label, v in zip(labels, values)
        ]
        bars = ax.bar(range(len(labels)), heights, color=colors)
        for bar, value in zip(bars, values):
            ax.annotate(
                "n/a" if value is None else f"{value:.1f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, top * 1.1)
        ax.set_ylabel(ylabel)
        missing = _missing_total(result)
        ax.set_title(_title(result) + (f"\n{missing} missing" if missing else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _missing_total(result: dict) -> int:
    if result.get("kind") == "mcq":
        return int(result["metrics"]["missing"])
    return sum(
        b["missing_predictions"] + b["judge_failed"] + b["judge_malformed"] for b in result.get("criteria", {}).values()
    )


VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv")
"""Extensions tried, in order, for a record whose video is named without one (or with a feature file's)."""
_NOT_VIDEO_SUFFIXES = (".safetensors", ".pickle", ".pkl", ".npy")


def resolve_video(video: str, video_root: str | Path | None) -> Path | None:
    """The video file a record names, or ``None`` when there is none.

    ``video`` is looked up as given (relative to ``video_root``, else to the current folder), then in
    ``video_root/videos/`` (a world folder), and, when that file does not exist, as its stem with each of
    :data:`VIDEO_EXTENSIONS`: records often give ``abc`` or ``abc.pkl`` for ``abc.mp4``.
    """
    if not video:
        return None
    root = Path(video_root).expanduser() if video_root is not None else Path(".")
    given = Path(video)
    folders = [root / given.parent]
    if (root / "videos").is_dir():
        folders.append(root / "videos" / given.parent)
    for folder in folders:
        exact = folder / given.name
        if exact.is_file():
            return exact
    name = given.name
    for suffix in (*VIDEO_EXTENSIONS, *_NOT_VIDEO_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for folder in folders:
        for suffix in VIDEO_EXTENSIONS:
            for candidate in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def video_link(video: str, video_root: str | Path | None, out_dir: Path) -> tuple[str, str]:
    """(``src`` relative to ``out_dir``, "") for a video that exists, else ("", the path that was looked for)."""
    if not video:
        return "", ""
    found = resolve_video(video, video_root)
    if found is None:
        root = Path(video_root) if video_root is not None else Path(".")
        return "", (root / video).as_posix()
    return Path(os.path.relpath(found.resolve(), out_dir.resolve())).as_posix(), ""


def _item_bad(result: dict, item: dict) -> bool:
    if result.get("kind") == "mcq":
        return not item.get("correct")
    scores = item.get("scores", {})
    return any(v is None for v in scores.values()) or any(v is not None and v < 3 for v in scores.values())


def template_environment():
    """The Jinja2 environment of ``llavidal/eval/templates`` (autoescaped HTML)."""
    from llavidal.utils.optional import require

    jinja2 = require("jinja2", "the HTML gallery", extra="eval")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True, keep_trailing_newline=True, trim_blocks=False,
    )


def _card(result: dict, item: dict, out_dir: Path, video_root: str | Path | None) -> dict:
    src, not_found = video_link(item.get("video", ""), video_root, out_dir)
    card = {
        "bad": _item_bad(result, item), "src": src, "not_found": not_found, "id": str(item.get("id")),
        "task": str(item.get("task", "")), "video": item.get("video", ""), "question": item.get("question") or "",
        "prediction": item.get("prediction") or "(none)", "mcq": result.get("kind") == "mcq",
    }
    if card["mcq"]:
        card.update(
            choices=[{"letter": letter, "text": text, "correct": letter == item.get("answer_letter")}
                     for letter, text in (item.get("choices") or {}).items()],
            parsed=str(item.get("parsed_letter")), parse_method=str(item.get("parse_method") or ""),
            correct=bool(item.get("correct")),
            verdict="correct" if item.get("correct")
            else ("missing: " + str(item.get("parse_status")) if item.get("missing") else "wrong"),
        )
    else:
        status = item.get("status") or {}
        card.update(
            answer=item.get("answer") or "", consistency=item.get("consistency_predictions"), match=item.get("pred"),
            scores=[{"criterion": c, "score": "—" if v is None else _fmt(v), "status": str(status.get(c)),
                     "ok": status.get(c) == "ok"} for c, v in (item.get("scores") or {}).items()],
        )
    return card


def render_gallery(
    results: list[dict], out_dir: Path, video_root: str | Path | None, title: str, max_items: int
) -> str:
    """The static ``gallery.html``: one card per item with its video (linked relative to ``out_dir``, the
    file found in ``video_root`` whatever extension it has; "video not found: PATH" when there is none)."""
    sections = []
    for result in results:
        items = result.get("items", [])
        sections.append({
            "title": _title(result), "total": len(items), "shown": min(len(items), max_items),
            "truncated": len(items) > max_items,
            "cards": [_card(result, item, out_dir, video_root) for item in items[:max_items]],
        })
    return template_environment().get_template("report_gallery.html.j2").render(title=title, sections=sections)


def write_report(
    results: dict | list[dict],
    out_dir: str | Path,
    video_root: str | Path | None = None,
    title: str = "LLAVIDAL evaluation",
    max_gallery_items: int = 2000,
) -> dict[str, Path]:
    """Write report.md, report.json, report.png and gallery.html to ``out_dir``; return their paths."""
    results = [results] if isinstance(results, dict) else list(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "json": out_dir / "report.json",
        "chart": out_dir / "report.png",
        "gallery": out_dir / "gallery.html",
    }
    atomic_write_json(paths["json"], {"title": title, "results": results})
    atomic_write_text(paths["markdown"], render_markdown(results, title))
    render_chart(results, paths["chart"])
    atomic_write_text(paths["gallery"], render_gallery(results, out_dir, video_root, title, max_gallery_items))
    return paths


def load_results(path: str | Path) -> list[dict]:
    """Results from a ``report.json`` or a single result JSON written by ``llavidal eval mcq/judge``."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and "results" in data:
        return list(data["results"])
    if isinstance(data, dict) and "metrics" in data:
        return [data]
    if isinstance(data, list):
        return data
    raise ValueError(f"{path}: not a results file (expected 'results' or 'metrics')")
