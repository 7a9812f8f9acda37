"""The quickstart's report: ``report/report.md``, ``report.json`` and PNG plots.

The figures come from the reports the ``llavidal eval mcq`` / ``eval judge`` commands wrote under ``eval/``
(:func:`collect_results`, also saved as ``eval/results.json``), the training and alignment outputs and the
steps' records; the markdown tables are :func:`llavidal.eval.report.markdown_table`'s.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llavidal.eval.report import format_value, load_results, markdown_table
from llavidal.quickstart.curriculum import FORECAST_LEAD
from llavidal.quickstart.layout import MCQ_FILES, MODALITY_SETS, PROTOCOL, SCORINGS, Paths, read_json, split_ids
from llavidal.quickstart.recipes import Recipe
from llavidal.utils.io import atomic_write_json, atomic_write_text

DIGITS = 3
ATTRIBUTES = ("hand", "object", "colour")
COLUMNS = (("recognition", "recognition", None), ("forecasting", "forecasting", None),
           ("forecasting, object-dependent", "forecasting", "object_dependent"),
           ("which hand", "attributes", "hand"), ("which object", "attributes", "object"),
           ("what colour", "attributes", "colour"))
"""The MCQ table's columns: (title, task, subset of the task's items or None for all of them)."""
SCORING_TITLES = {"loglik": "log-likelihood of each option, its per-token mean (every held-out question)",
                  "generate": "generated answer + parser"}


def _fmt(value: Any) -> str:
    return format_value(value, DIGITS)


# --------------------------------------------------------------------------- figures from the eval result files
def _block(items: list[dict]) -> dict:
    correct = sum(bool(item.get("correct")) for item in items)
    return {"accuracy": correct / len(items) if items else None, "n": len(items), "correct": correct}


def _object_dependent_ids(paths: Paths) -> set[str]:
    """Ids of the held-out forecasting questions whose answer depends on the object held (the world marks them)."""
    path = paths.annotations("test") / MCQ_FILES["forecasting"]
    if not path.is_file():
        return set()
    return {str(r.get("id")) for r in read_json(path) if r.get("object_dependent")}


def _subset_filters(paths: Paths, task: str) -> dict[str, Any]:
    """The subsets a task's column splits into: name -> predicate on a scored item."""
    if task == "forecasting":
        dependent = _object_dependent_ids(paths)
        return {"object_dependent": lambda item: str(item.get("id")) in dependent}
    if task == "attributes":
        return {attribute: (lambda item, attribute=attribute: item.get("task") == attribute)
                for attribute in ATTRIBUTES}
    return {}


def exact_mcnemar_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test of paired right/wrong outcomes: a binomial test of ``gained`` against
    ``gained + lost`` discordant pairs at one half."""
    from math import comb

    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, i) for i in range(min(gained, lost) + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def _paired_block(items: list[dict], correct_by_sum: dict[str, bool]) -> dict:
    """Accuracy of ``items`` ranked by the summed log-likelihood, and the questions it gets right that the
    per-token mean misses (``gained``) and the reverse (``lost``), with the exact McNemar p of the two."""
    flags = [(bool(item.get("correct")), correct_by_sum.get(str(item.get("id")), False)) for item in items]
    gained = sum(by_sum and not by_mean for by_mean, by_sum in flags)
    lost = sum(by_mean and not by_sum for by_mean, by_sum in flags)
    correct = sum(by_sum for _, by_sum in flags)
    return {"accuracy": correct / len(items) if items else None, "n": len(items), "correct": correct,
            "gained": gained, "lost": lost, "p": exact_mcnemar_p(gained, lost)}


def _by_sum(paths: Paths, task: str, set_name: str, items: list[dict]) -> dict | None:
    """The log-likelihood rows of one run ranked again by each option's summed log-likelihood (lm-eval's ``acc``)
    instead of its per-token mean: the same forward passes, the runner's own choice
    (:meth:`llavidal.serve.engine.OptionScores.best`) with no normalisation. A question without a row counts wrong
    under both rules."""
    from llavidal.serve.engine import OptionScores
    from llavidal.utils.io import load_json_or_jsonl

    path = paths.predictions(task, set_name, "loglik")
    if not path.is_file():
        return None
    correct_by_sum: dict[str, bool] = {}
    answers = {str(item.get("id")): item.get("answer_letter") for item in items}
    for row in load_json_or_jsonl(path):  # the last row of an id wins, as everywhere
        scores = row.get("option_scores") if isinstance(row, dict) else None
        if not scores or row.get("status", "ok") != "ok":
            continue
        letters = list(scores)
        options = OptionScores(letters, [scores[k]["loglik"] for k in letters], [scores[k]["tokens"] for k in letters],
                               [scores[k]["chars"] for k in letters])
        correct_by_sum[str(row.get("id"))] = letters[options.best("none")] == answers.get(str(row.get("id")))
    if not correct_by_sum:
        return None
    entry = _paired_block(items, correct_by_sum)
    entry["subsets"] = {name: _paired_block([item for item in items if keep(item)], correct_by_sum)
                        for name, keep in _subset_filters(paths, task).items()}
    return entry


def _mcq_entry(paths: Paths, task: str, set_name: str, scoring: str = "generate") -> dict | None:
    path = paths.scored(task, set_name, scoring)
    if not path.is_file():
        return None
    (scored,) = load_results(path)
    items = scored.get("items") or []
    subsets = {name: _block([item for item in items if keep(item)])
               for name, keep in _subset_filters(paths, task).items()}
    extra = {}
    if scoring == "loglik":
        by_sum = _by_sum(paths, task, set_name, items)
        if by_sum is not None:
            extra["by_sum"] = by_sum
    return {
        "accuracy": scored["metrics"]["accuracy"] / 100.0,
        "n": scored["metrics"]["n"],
        "correct": scored["metrics"]["correct"],
        "missing": scored["metrics"]["missing"],
        "chance": sum(1.0 / len(item["choices"]) for item in items) / max(1, len(items)),
        "per_class": {k: {"accuracy": v["accuracy"] / 100.0 if v.get("accuracy") is not None else None,
                          "n": v["n"]} for k, v in scored.get("per_class", {}).items()},
        "subsets": subsets,
        "predictions": str(paths.predictions(task, set_name, scoring).relative_to(paths.out)),
        **extra,
    }


def _descriptions_entry(paths: Paths) -> dict | None:
    path = paths.scored("descriptions", "all")
    if not path.is_file():
        return None
    (judged,) = load_results(path)
    items = judged.get("items") or []
    return {
        "judge": judged.get("judge"),
        "n": len(items),
        "metrics": judged.get("metrics"),
        "predictions": str(paths.predictions("descriptions", "all").relative_to(paths.out)),
        "examples": [{"id": item["id"], "reference": item["answer"], "prediction": item["prediction"]}
                     for item in items[:3]],
    }


def collect_results(paths: Paths) -> dict:
    """The held-out figures: per MCQ scoring (log-likelihood, generation), ADLMCQ task and modality set
    (accuracy as a fraction, counts, chance, per class, subsets: object-dependent forecasting, each attribute),
    and the judged descriptions, read from the eval commands' result files."""
    results: dict[str, Any] = {"protocol": PROTOCOL, "split": "test", "mcq": {}, "descriptions": None}
    for scoring in SCORINGS:
        for task in MCQ_FILES:
            for set_name in MODALITY_SETS:
                entry = _mcq_entry(paths, task, set_name, scoring)
                if entry is not None:
                    results["mcq"].setdefault(scoring, {}).setdefault(task, {})[set_name] = entry
    results["descriptions"] = _descriptions_entry(paths)
    return results


def _main_scoring(results: dict) -> dict:
    """The figures the plots show: log-likelihood scoring when it ran, else generation."""
    mcq = results.get("mcq") or {}
    return mcq.get("loglik") or mcq.get("generate") or {}


def loss_history(paths: Paths) -> list[dict]:
    history = paths.train / "loss_history.jsonl"
    rows = []
    if history.is_file():
        for line in history.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    if not rows and (paths.train / "trainer_state.json").is_file():
        rows = [r for r in read_json(paths.train / "trainer_state.json").get("log_history", []) if "loss" in r]
    return [r for r in rows if "loss" in r]


# --------------------------------------------------------------------------- plots
def plots(paths: Paths, results: dict, losses: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r.get("step", i) for i, r in enumerate(losses)], [r["loss"] for r in losses], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title("Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(paths.report / "loss_curve.png", dpi=110)
        plt.close(fig)
        written.append("loss_curve.png")
    mcq = {task: by_set for task, by_set in _main_scoring(results).items() if task != "attributes"}
    if mcq:
        import numpy as np

        sets = list(MODALITY_SETS)
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        width = 0.8 / max(1, len(mcq))
        for index, (task, by_set) in enumerate(mcq.items()):
            values = [by_set.get(s, {}).get("accuracy") or 0.0 for s in sets]
            bars = ax.bar(np.arange(len(sets)) + index * width, values, width, label=task)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
            chance = by_set.get("all", {}).get("chance")
            if chance:
                ax.axhline(chance, color=bars.patches[0].get_facecolor(), linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(len(sets)) + width * (len(mcq) - 1) / 2, sets)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (held-out subjects)")
        ax.set_title("ADLMCQ accuracy per modality set (dotted: chance)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(paths.report / "accuracy_by_modality.png", dpi=110)
        plt.close(fig)
        written.append("accuracy_by_modality.png")
        per_class = (mcq.get("recognition") or {}).get("all", {}).get("per_class") or {}
        if per_class:
            names = sorted(per_class, key=lambda k: per_class[k]["accuracy"] or 0.0)
            fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.28 * len(names))))
            ax.barh(names, [per_class[n]["accuracy"] or 0.0 for n in names])
            ax.set_xlim(0, 1.0)
            ax.set_xlabel("recognition accuracy, all modalities")
            ax.set_title("Accuracy per activity (held-out subjects)")
            ax.tick_params(axis="y", labelsize=7)
            fig.tight_layout()
            fig.savefig(paths.report / "accuracy_by_activity.png", dpi=110)
            plt.close(fig)
            written.append("accuracy_by_activity.png")
    return written


# --------------------------------------------------------------------------- the report
def display_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it, else with ~."""
    path = Path(os.path.abspath(path))  # not resolve(): a symlinked folder keeps the name the user gave
    for base, shown in ((Path.cwd(), None), (Path.home(), Path("~"))):
        try:
            relative = path.relative_to(os.path.abspath(base))
        except ValueError:
            continue
        return str(shown / relative if shown else relative)
    return str(path)


def demo_command(paths: Paths, base_model: str) -> str:
    """The demo on the quickstart's result, runnable from any directory: the interpreter the quickstart ran
    in (its environment) and absolute paths (a base model that is no local path, a hub id, stays as given)."""
    base = os.path.abspath(base_model) if Path(base_model).expanduser().exists() else str(base_model)
    return shlex.join([
        sys.executable, "-m", "llavidal", "demo", "--model-name", base,
        "--projection_path", os.path.abspath(paths.train), "--examples", os.path.abspath(paths.world),
    ])


def _alignment(paths: Paths) -> dict | None:
    align_report = paths.align / "align_report.json"
    if not align_report.is_file():
        return None
    saved = read_json(align_report)
    return {name: {k: figures.get(k) for k in ("samples", "held_out_samples", "labels", "accuracy_before",
                                               "accuracy_after", "chance", "seconds")}
            for name, figures in saved.get("modalities", {}).items()}


def _ablation(paths: Paths) -> dict | None:
    """The last ``llavidal ablate`` table of this folder (``OUT/ablation/table.json``: one budget, one protocol):
    per design its held-out accuracies (fractions), video tokens, steps and training seconds, and the paired
    differences against upstream."""
    table_path = paths.out / "ablation" / "table.json"
    if not table_path.is_file():
        return None
    table = read_json(table_path)
    rows = []
    for name, saved in (table.get("designs") or {}).items():
        results = {task: {set_name: {"accuracy": entry["accuracy"] / 100.0 if entry.get("accuracy") is not None
                                     else None, "correct": entry["correct"], "n": entry["n"]}
                          for set_name, entry in by_set.items()}
                   for task, by_set in (saved.get("results") or {}).items()}
        rows.append({"design": name, "note": saved.get("note", ""), "image_weight": saved.get("image_weight"),
                     "video_tokens": saved.get("video_tokens"), "train_seconds": saved.get("train_seconds"),
                     "results": results})
    return {"protocol": table.get("protocol", "curriculum"), "steps": (table.get("budget") or {}).get("max_steps"),
            "rows": rows, "paired": table.get("paired_vs_upstream")}


def write_report(paths: Paths, recipe: Recipe, settings: dict, base_model: str) -> dict:
    results = collect_results(paths)
    atomic_write_json(paths.eval / "results.json", results)
    losses = loss_history(paths)
    paths.report.mkdir(parents=True, exist_ok=True)
    written = plots(paths, results, losses)
    steps, step_notes = {}, {}
    for record in sorted((paths.out / ".steps").glob("*.json"), key=lambda r: r.stat().st_mtime):
        saved = read_json(record)
        steps[record.stem] = round(float(saved.get("seconds", 0.0)), 1)
        if saved.get("note"):
            step_notes[record.stem] = saved["note"]
    train_config = read_json(paths.train / "llavidal_config.json") if (paths.train / "llavidal_config.json").is_file() else {}
    state = read_json(paths.train / "trainer_state.json") if (paths.train / "trainer_state.json").is_file() else {}
    data_counts = read_json(paths.data / "summary.json") if (paths.data / "summary.json").is_file() else {}
    world = read_json(paths.world / "world.json")
    report = {
        "recipe": asdict(recipe),
        "settings": settings,
        "world": {"preset": world.get("preset", {}).get("name"), "seed": world.get("seed"), "counts": world.get("counts"),
                  "protocol": PROTOCOL, "train_clips": len(split_ids(paths, "train")),
                  "test_clips": len(split_ids(paths, "test"))},
        "training_data": data_counts,
        "alignment": _alignment(paths),
        "ablation": _ablation(paths),
        "training": {"global_steps": state.get("global_step"), "epochs": state.get("epoch"),
                     "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
                     "modalities": train_config.get("modalities"), "template": train_config.get("template")},
        "results": results,
        "step_seconds": steps,
        "step_notes": step_notes,
        "total_seconds": round(sum(steps.values()), 1),
        "plots": written,
        "demo_command": demo_command(paths, base_model),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(paths.report / "report.json", report)
    atomic_write_text(paths.report / "report.md", render_markdown(report))
    return report


def _mcq_section(results: dict, forecast_reasoning: bool = False) -> list[str]:
    lines = ["## Multiple-choice accuracy on held-out subjects", "",
             "Same trained model; modalities withheld at inference. Each cell: accuracy (correct/n; 95% Wilson "
             "interval). Object-dependent forecasting: the questions whose next activity only the object in "
             "hand allows (drink, read, phone call; the other two are always among the options).", ""]
    if forecast_reasoning:
        lines += [(f"Forecasting is trained as reasoning then answer (\"The video ends with X. {FORECAST_LEAD} Y.\"); "
                   f"by log-likelihood the model first writes its own answer greedily up to \"{FORECAST_LEAD}\" and "
                   "the options are scored after it (`--loglik_lead`), the recognition and attribute options right "
                   "after the question."), ""]
    for scoring, by_task in (results.get("mcq") or {}).items():
        columns = [c for c in COLUMNS if c[1] in by_task]
        rows = []
        for set_name in MODALITY_SETS:
            cells = []
            for _, task, subset in columns:
                entry = by_task[task].get(set_name)
                if entry is not None and subset is not None:
                    entry = entry.get("subsets", {}).get(subset)
                cells.append(_accuracy_cell(entry) if entry and entry.get("n") else "n/a")
            rows.append([set_name, *cells])
        lines += [f"### {SCORING_TITLES.get(scoring, scoring)}", "",
                  *markdown_table(["modality set", *(title for title, _, _ in columns)], rows, DIGITS), ""]
        if scoring == "loglik":
            lines += _by_sum_table(by_task, columns)
    chance = [f"{task} {_fmt(by_set.get('all', {}).get('chance'))}" for task, by_set in _main_scoring(results).items()]
    if chance:
        lines += [f"Chance (mean 1/options): {', '.join(chance)}.", ""]
    return lines


def _by_sum_table(by_task: dict, columns: list) -> list[str]:
    """The log-likelihood rows ranked by the summed log-likelihood, beside the per-token table above."""
    rows, any_cell = [], False
    for set_name in MODALITY_SETS:
        cells = []
        for _, task, subset in columns:
            entry = (by_task[task].get(set_name) or {}).get("by_sum")
            if entry is not None and subset is not None:
                entry = entry.get("subsets", {}).get(subset)
            if entry and entry.get("n"):
                any_cell = True
                cells.append(f"{_accuracy_cell(entry)}; +{entry['gained']}/-{entry['lost']}, p {entry['p']:.2g}")
            else:
                cells.append("n/a")
        rows.append([set_name, *cells])
    if not any_cell:
        return []
    return ["### the same log-likelihoods, each option's sum instead of its per-token mean", "",
            ("The forward passes of the table above, ranked by lm-eval's `acc` rule instead of the per-token mean "
             "(`--mcq_scoring loglik` against `loglik_norm`). After each cell: the questions the sum gets right "
             "that the mean gets wrong (+), the reverse (-), and the exact McNemar p of the two rules."), "",
            *markdown_table(["modality set", *(title for title, _, _ in columns)], rows, DIGITS), ""]


def _accuracy_cell(entry: dict) -> str:
    """``0.952 (198/208; 0.91-0.97)``: accuracy, counts and its 95% Wilson interval."""
    from llavidal.eval.mcq import wilson_interval

    n = entry["n"]
    correct = entry.get("correct", round((entry["accuracy"] or 0.0) * n))
    interval = wilson_interval(correct, n)
    if interval is None:
        return f"{_fmt(entry['accuracy'])} (0/0)"
    return f"{_fmt(entry['accuracy'])} ({correct}/{n}; {interval[0]:.2f}-{interval[1]:.2f})"


def _descriptions_section(desc: dict | None) -> list[str]:
    if not desc:
        return []
    metrics = desc.get("metrics") or {}
    lines = ["## ADL descriptions (local judge: relative similarity + fact checks, 0-100)", "",
             f"{desc['n']} held-out records, all modalities; judge `{desc['judge']['judge_id']}`.", "",
             *markdown_table(list(metrics), [[v if not isinstance(v, dict) else v.get("score")
                                              for v in metrics.values()]], DIGITS), ""]
    for example in desc.get("examples", [])[:2]:
        lines += [f"- `{example['id']}`", f"  - reference: {example['reference']}", f"  - model: {example['prediction']}"]
    return lines + [""]


def _alignment_section(alignment: dict | None) -> list[str]:
    if not alignment:
        return []
    rows = [[name, f"{figures['samples']} ({figures['held_out_samples']})", figures.get("labels", "n/a"),
             (figures["accuracy_before"] or {}).get("held_out"), (figures["accuracy_after"] or {}).get("held_out"),
             figures["chance"]] for name, figures in alignment.items() if figures.get("samples")]
    return ["## Projector alignment (before training)", "",
            "Nearest-label accuracy of each modality's projected tokens in the LLM's embedding space, on train-split "
            "performances held out from the alignment fit (every camera of a performance, and its mirror, "
            "together). Video and pose tokens are fitted to the activity names (with the recipe's `align_hands`, "
            "the pose tokens of a one-handed activity to its hand and name, \"right hand, waving a hand\", "
            "mirrored clips included); object tokens, one sample per object, to the object's own "
            "name (colour and class) when the recipe's `align_object_names` is on, else to the clip's activity.", "",
            *markdown_table(["modality", "samples (held out)", "labels", "before", "after", "chance"], rows, DIGITS), ""]


def _ablation_section(ablation: dict | None) -> list[str]:
    """Video designs and data mixtures trained on this folder by ``llavidal ablate`` (its own budget and data:
    not the model above). The ``images`` row is the upstream design with the world's image-instruction set mixed
    in: beside the ``upstream`` row it shows what mixing images in does to held-out video recognition."""
    if not ablation or not ablation["rows"]:
        return []
    rows = ablation["rows"]
    columns = [(task, set_name) for task in ("recognition", "forecasting") for set_name in ("video", "all")
               if any(set_name in row["results"].get(task, {}) for row in rows)]
    table = []
    for row in rows:
        cells = []
        for task, set_name in columns:
            entry = row["results"].get(task, {}).get(set_name)
            cells.append(_accuracy_cell(entry) if entry and entry.get("n") else "n/a")
        table.append([row["design"], *cells, row["video_tokens"],
                      f"{row['train_seconds']:.0f}" if row["train_seconds"] is not None else "n/a"])
    lines = ["## Video designs and image data (`llavidal ablate` on this folder)", "",
             (f"Each row is its own training run from the aligned projectors with the ablation's budget "
              f"({ablation['steps']} steps) and data (protocol {ablation['protocol']}: see docs/ablation), evaluated "
              "on the same held-out questions by "
              "log-likelihood; not the model of the tables above. Each cell: accuracy (correct/n; 95% Wilson "
              "interval)."), ""]
    if any(row["design"] == "images" for row in rows):
        weight = next(row["image_weight"] for row in rows if row["design"] == "images")
        line = (f"`images` is `upstream` trained on the same video data with the world's image-instruction set "
                f"mixed in (weight {weight:g}, the same number of steps): beside `upstream` it shows what mixing "
                "images in does to held-out video recognition.")
        paired = (ablation.get("paired") or {}).get("images", {}).get("recognition/video")
        if paired:
            low, high = paired["ci95"]
            line += (f" Paired on the same {paired['n']} questions: {100 * paired['difference']:+.1f} points (right "
                     f"only with images {paired['other_only']}, only without {paired['base_only']}; 95% interval "
                     f"{100 * low:+.1f} to {100 * high:+.1f}; McNemar's exact p = {paired['p_mcnemar']:.2g}).")
        lines += [line, ""]
    lines += [*markdown_table(["design", *(f"{task} ({set_name})" for task, set_name in columns), "video tokens",
                               "train s"], table, DIGITS), ""]
    return lines


def _training_section(report: dict) -> list[str]:
    training, recipe = report["training"], report["recipe"]
    data = report["training_data"]
    mirrored = (data.get("hand_mirrors") or {}).get("samples", 0)
    total = (f"{data['samples'] + mirrored} samples ({data['samples']} + {mirrored} of mirrored clips; " if mirrored
             else f"{data.get('samples', 'n/a')} samples (")
    lines = ["## Training", "",
             (f"{total}{json.dumps(data)}); "
              f"{training['global_steps']} optimizer steps ({_fmt(training['epochs'])} epochs); loss "
              f"{_fmt(training['first_loss'])} -> {_fmt(training['last_loss'])}; "
              f"{recipe['train_procs']} torchrun rank(s) x {recipe['train_threads']} thread(s)."), ""]
    for name, title in (("loss_curve.png", "loss"), ("accuracy_by_modality.png", "accuracy per modality set"),
                        ("accuracy_by_activity.png", "accuracy per activity")):
        if name in report["plots"]:
            lines += [f"![{title}]({name})", ""]
    return lines


def _time_section(report: dict) -> list[str]:
    rows = [[name, str(seconds)] for name, seconds in report["step_seconds"].items()]
    rows.append(["**total**", str(report["total_seconds"])])
    lines = ["## Wall time per step (seconds)", "", *markdown_table(["step", "seconds"], rows)]
    for name, note in (report.get("step_notes") or {}).items():
        lines.append(f"\n{name}: {note}")
    return lines + [""]


def render_markdown(report: dict) -> str:
    recipe, world = report["recipe"], report["world"]
    lines = [
        "# LLAVIDAL quickstart report",
        "",
        (f"Recipe **{recipe['name']}**: {recipe['description']}. World preset **{world['preset']}** "
         f"(seed {world['seed']}); trained on the {PROTOCOL.replace('_', '-')} train split "
         f"({world['train_clips']} clips), evaluated on held-out subjects ({world['test_clips']} clips)."),
        "",
        *_mcq_section(report["results"], bool((report.get("recipe") or {}).get("forecast_reasoning"))),
        *_descriptions_section(report["results"].get("descriptions")),
        *_alignment_section(report.get("alignment")),
        *_training_section(report),
        *_ablation_section(report.get("ablation")),
        *_time_section(report),
        "## Settings", "", "```json", json.dumps({"settings": report["settings"], "recipe": recipe}, indent=1), "```", "",
    ]
    return "\n".join(lines)
