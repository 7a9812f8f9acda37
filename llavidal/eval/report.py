"""Reports: a markdown table, the full JSON, a bar chart (PNG) and an HTML gallery to browse items.

``write_report(results, out_dir, video_root=None)`` takes the dicts returned by
:func:`llavidal.eval.mcq.score_mcq` and :func:`llavidal.eval.scoring.score_judged` and writes

    out_dir/report.md     one table per benchmark, with missing counts and the judge that scored it
    out_dir/report.json   everything, including per-item results
    out_dir/report.png    headline metrics as bars
    out_dir/gallery.html  per item: <video> (path relative to the report), question, answer,
                          prediction and scores; a filter shows only wrong or missing items

The report has no timestamps, so identical results give byte-identical files.
"""

from __future__ import annotations

import html
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


def _video_src(video: str, video_root: str | Path | None, out_dir: Path) -> str:
    if not video:
        return ""
    if video_root is None:
        return video
    return Path(os.path.relpath(Path(video_root).resolve() / video, out_dir.resolve())).as_posix()


def _item_bad(result: dict, item: dict) -> bool:
    if result.get("kind") == "mcq":
        return not item.get("correct")
    scores = item.get("scores", {})
    return any(v is None for v in scores.values()) or any(v is not None and v < 3 for v in scores.values())


def render_gallery(
    results: list[dict], out_dir: Path, video_root: str | Path | None, title: str, max_items: int
) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
        ".card{display:flex;gap:1em;border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.6em 0}"
        ".card video{width:320px;max-height:240px;background:#000}.bad{border-color:#d55}"
        ".meta{color:#666;font-size:.85em}.ok{color:#2a7}.miss{color:#d55}td,th{padding:2px 8px}"
        "table{border-collapse:collapse}</style>",
        "<script>function f(b){for(const c of document.querySelectorAll('.card'))"
        "{c.style.display=(!b||c.classList.contains('bad'))?'flex':'none'}}</script>",
        f"</head><body><h1>{esc(title)}</h1>",
        "<label><input type='checkbox' onchange='f(this.checked)'> only wrong, low-scored or missing</label>",
    ]
    for result in results:
        parts.append(f"<h2>{esc(_title(result))}</h2>")
        items = result.get("items", [])
        if len(items) > max_items:
            parts.append(f"<p class='meta'>showing the first {max_items} of {len(items)} items</p>")
        for item in items[:max_items]:
            bad = _item_bad(result, item)
            src = _video_src(item.get("video", ""), video_root, out_dir)
            video = f"<video controls preload='none' src='{esc(src, quote=True)}'></video>" if src else ""
            body = [
                f"<div class='meta'>{esc(str(item.get('id')))} · {esc(str(item.get('task', '')))} · "
                f"{esc(item.get('video', ''))}</div>",
                f"<p><b>Q:</b> {esc(item.get('question') or '')}</p>",
            ]
            if result.get("kind") == "mcq":
                rows = "".join(
                    f"<li>{'<b>' if letter == item.get('answer_letter') else ''}({esc(letter)}) {esc(text)}"
                    f"{'</b>' if letter == item.get('answer_letter') else ''}</li>"
                    for letter, text in (item.get("choices") or {}).items()
                )
                verdict = (
                    "correct"
                    if item.get("correct")
                    else ("missing: " + str(item.get("parse_status")) if item.get("missing") else "wrong")
                )
                body += [
                    f"<ul>{rows}</ul>",
                    f"<p><b>Prediction:</b> {esc(item.get('prediction') or '(none)')}</p>",
                    f"<p><b>Parsed:</b> {esc(str(item.get('parsed_letter')))} "
                    f"({esc(str(item.get('parse_method') or ''))}) — "
                    f"<span class='{'ok' if item.get('correct') else 'miss'}'>{esc(verdict)}</span></p>",
                ]
            else:
                body += [
                    f"<p><b>Answer:</b> {esc(item.get('answer') or '')}</p>",
                    f"<p><b>Prediction:</b> {esc(item.get('prediction') or '(none)')}</p>",
                ]
                if item.get("consistency_predictions"):
                    p1, p2 = item["consistency_predictions"]
                    body.append(f"<p class='meta'>Consistency predictions: {esc(p1)} | {esc(p2)}</p>")
                cells = "".join(
                    f"<tr><td>{esc(c)}</td><td>{'—' if v is None else esc(_fmt(v))}</td>"
                    f"<td class='{'ok' if item['status'].get(c) == 'ok' else 'miss'}'>"
                    f"{esc(str(item['status'].get(c)))}</td></tr>"
                    for c, v in item.get("scores", {}).items()
                )
                if item.get("pred"):
                    cells += f"<tr><td>match</td><td>{esc(item['pred'])}</td><td></td></tr>"
                body.append(f"<table><tr><th>criterion</th><th>score</th><th>status</th></tr>{cells}</table>")
            parts.append(f"<div class='card{' bad' if bad else ''}'>{video}<div>{''.join(body)}</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


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
