"""Evaluate a run folder: thresholds, metrics.json, report.md and plots; compare runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from genrecls.errors import GenreclsError
from genrecls.evaluation import DEFAULT_THRESHOLD, choose_thresholds, evaluate_predictions
from genrecls.labels import GenreVocabulary
from genrecls.plots import (
    plot_confusion_matrices,
    plot_f1_against_random,
    plot_genre_distribution,
    plot_precision_recall,
    plot_training_curves,
)
from genrecls.training import Inputs, TrainConfig, load_run_model, predict_split, prepare_data

SPLITS = ("train", "val", "test")
PLOTS = {
    "genre_distribution.png": "Genre distribution",
    "training_curves.png": "Training curves",
    "f1_vs_random.png": "Per-genre F1 against random guessing",
    "precision_recall.png": "Precision-recall curves",
    "confusion_matrices.png": "Per-genre confusion matrices",
}


def _rows(run: Path, data, part: str) -> tuple[np.ndarray, int]:
    """Row indices of a saved split's posters in the freshly loaded data, and how many are gone."""
    ids = json.loads((run / "split.json").read_text())[part]
    where = {movie_id: i for i, movie_id in enumerate(data.ids)}
    rows = np.array([where[i] for i in ids if i in where], dtype="int64")
    return rows, len(ids) - len(rows)


def evaluate_run(
    run: str | os.PathLike,
    data: str | None = None,
    split: str = "test",
    tune_thresholds: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    k: int = 3,
    plots: bool = True,
) -> dict:
    """Evaluate a trained run on one split and write its report files into the run.

    Thresholds: per genre, chosen on the validation split to maximise F1
    (tune_thresholds), or one global `threshold`; saved as thresholds.json
    for predict and export. Never chosen on the split being evaluated
    unless that split is "val" itself (the report then says so).
    """
    run = Path(run)
    if split not in SPLITS:
        raise GenreclsError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not (run / "config.json").exists() or not (run / "split.json").exists():
        raise GenreclsError(f"{run} is not a finished run folder (no config.json or split.json)")
    cfg = TrainConfig.load(run / "config.json")
    if data:
        cfg.data = os.path.abspath(data)
    prepared = prepare_data(cfg)
    vocab = GenreVocabulary.load(run / "genres.json")
    if prepared.vocab.names != vocab.names:
        raise GenreclsError(f"the data's genres {prepared.vocab.names} differ from the run's {vocab.names}")
    model = load_run_model(run)
    names = vocab.names
    inputs = Inputs(cfg, prepared.paths, backbone=None)  # whole model on images, as predict and export see it

    train_rows, _ = _rows(run, prepared, "train")
    val_rows, _ = _rows(run, prepared, "val")
    rows, missing = _rows(run, prepared, split)
    if not len(rows):
        raise GenreclsError(f"none of the run's {split} posters is in {cfg.data}")

    if tune_thresholds and cfg.mode != "multiclass":
        p_val, val_seen = predict_split(model, inputs, val_rows)
        thresholds = choose_thresholds(prepared.Y[val_seen], p_val, default=threshold)
        source = "per genre, maximising F1 on the validation split"
    else:
        thresholds = np.full(len(names), threshold)
        source = "argmax (multiclass)" if cfg.mode == "multiclass" else f"global {threshold}"
    thresholds_doc = {"source": source, "thresholds": dict(zip(names, map(float, thresholds)))}
    (run / "thresholds.json").write_text(json.dumps(thresholds_doc, indent=2, ensure_ascii=False))

    probabilities, seen = predict_split(model, inputs, rows)
    report = evaluate_predictions(
        prepared.Y[seen], probabilities, names, cfg.mode, thresholds,
        train_truth=prepared.Y[train_rows], true_class=prepared.strata[seen], k=k,
    )
    report = {
        "mode": cfg.mode, "backbone": cfg.backbone, "data": cfg.data, "split": split,
        "thresholds_source": source, **report,
        "dropped": {**prepared.table.dropped.to_dict(), "no genre in vocabulary": prepared.unlabelled,
                    f"{split} posters no longer in the data": missing,
                    "failed to decode": int(len(rows) - len(seen))},
    }
    (run / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if plots:
        _write_plots(run, prepared, report, probabilities, seen, names)
    (run / "report.md").write_text(render_markdown(run, report, thresholds_doc, plots))
    return report


def _write_plots(run: Path, prepared, report: dict, probabilities, seen, names) -> None:
    counts = dict(zip(names, prepared.Y.sum(axis=0).astype(int).tolist()))
    plot_genre_distribution(dict(sorted(counts.items(), key=lambda kv: -kv[1])), run / "genre_distribution.png")
    if (run / "history.csv").exists():
        plot_training_curves(pd.read_csv(run / "history.csv"), run / "training_curves.png")
    plot_f1_against_random(report, run / "f1_vs_random.png")
    plot_precision_recall(prepared.Y[seen], probabilities, names, run / "precision_recall.png")
    plot_confusion_matrices(report, run / "confusion_matrices.png")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_markdown(run: Path, report: dict, thresholds: dict, plots: bool = True) -> str:
    """report.md: the tables a person reads first, then the plots."""
    o = report["overall"]
    lines = [
        f"# genrecls report: {run.name}",
        "",
        f"- mode **{report['mode']}**, backbone **{report['backbone']}**, data `{report['data']}`",
        f"- evaluated on the **{report['split']}** split: {o['posters']} posters",
        f"- decisions: {thresholds['source']}",
    ]
    if report["split"] == "val" and "validation" in thresholds["source"]:
        lines.append("- note: thresholds were chosen on this same split, so these scores are optimistic")
    lines += [
        "",
        "## Per genre",
        "",
        "| genre | precision | recall | F1 | random F1 | most-common F1 | ROC-AUC | AP | threshold | support |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in report["genres"].items():
        f1 = f"{m['f1']:.3f}" if m["beats_random"] else f"{m['f1']:.3f} ⚠"
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {f1} | {m['random_f1']:.3f} | "
            f"{m['most_common_f1']:.3f} | {_fmt(m['roc_auc'])} | {_fmt(m['average_precision'])} | "
            f"{_fmt(m['threshold'])} | {m['support']} |"
        )
    lines += ["", "⚠ marks a genre whose F1 does not beat guessing at random with its training prevalence.", ""]
    base = report["baselines"]
    map_k = next(key for key in o if key.startswith("map_at_"))
    lines += [
        "## Overall",
        "",
        "| score | model | random guess | most common genres |",
        "| --- | ---: | ---: | ---: |",
        f"| micro F1 | {o['f1_micro']:.3f} | | {base['most_common']['f1_micro']:.3f} |",
        f"| macro F1 | {o['f1_macro']:.3f} | {base['random']['f1_macro']:.3f} "
        f"| {base['most_common']['f1_macro']:.3f} |",
        f"| weighted F1 | {o['f1_weighted']:.3f} | | {base['most_common']['f1_weighted']:.3f} |",
        f"| samples F1 | {o['f1_samples']:.3f} | | {base['most_common']['f1_samples']:.3f} |",
        f"| Hamming loss | {o['hamming_loss']:.3f} | | |",
        f"| subset accuracy | {o['subset_accuracy']:.3f} | | |",
        f"| mAP | {_fmt(o['map'])} | | |",
        f"| MAP@{map_k.split('_')[-1]} | {o[map_k]:.3f} | | |",
        "",
        f"The most-common baseline always predicts: {', '.join(base['most_common']['genres'])}.",
        "",
    ]
    if "multiclass_view" in report:
        view = report["multiclass_view"]
        lines += [
            "## Multi-class view (argmax against one label per poster)",
            "",
            f"Accuracy {view['accuracy']:.3f}.",
            "",
            "| class | precision | recall | support |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [f"| {n} | {c['precision']:.3f} | {c['recall']:.3f} | {c['support']} |"
                  for n, c in view["classes"].items()]
        lines.append("")
    lines += ["## Dropped data", ""]
    dropped = report["dropped"]
    lines += [f"- {reason}: {n}" for reason, n in dropped.get("counts", {}).items()]
    lines += [f"- {reason}: {n}" for reason, n in dropped.items() if reason not in ("counts", "examples", "total")]
    lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for name, title in PLOTS.items() if (run / name).exists()]
    return "\n".join(lines)


def compare_runs(runs: list, out: str | os.PathLike | None = None) -> pd.DataFrame:
    """Side-by-side per-genre F1 of several runs (report 002's table 4)."""
    if len(runs) < 2:
        raise GenreclsError("compare needs at least two run folders")
    columns = {}
    for run in map(Path, runs):
        path = run / "metrics.json"
        if not path.exists():
            raise GenreclsError(f"{run} has no metrics.json; train or evaluate it first")
        metrics = json.loads(path.read_text())
        label = f"{run.name} ({metrics.get('mode', '?')})"
        columns[label] = {g: m["f1"] for g, m in metrics["genres"].items()}
        columns[label]["macro F1"] = metrics["overall"]["f1_macro"]
        columns[label]["micro F1"] = metrics["overall"]["f1_micro"]
    table = pd.DataFrame(columns)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "comparison.csv", index_label="genre")
        (out / "comparison.md").write_text(_markdown(table))
    return table


def _markdown(table: pd.DataFrame) -> str:
    head = "| genre | " + " | ".join(table.columns) + " |"
    rule = "| --- |" + " ---: |" * len(table.columns)
    body = ["| " + str(g) + " | " + " | ".join("–" if pd.isna(v) else f"{v:.3f}" for v in row) + " |"
            for g, row in table.iterrows()]
    return "\n".join([head, rule, *body]) + "\n"
