"""Evaluate a run folder (decision policy, metrics, report.md, plots) and compare runs."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from genrecls.config import NO_BACKBONE
from genrecls.datasets import PosterTable
from genrecls.errors import GenreclsError
from genrecls.evaluation import (BOOTSTRAP_DRAWS, CONFIDENCE, MARKS, evaluate_predictions, gain_text, metric_name,
                                 standing)
from genrecls.html_report import GRADCAM_IMAGES, build_gallery, data_uri, render_html
from genrecls.plots import (
    plot_confusion_matrices,
    plot_f1_against_random,
    plot_genre_distribution,
    plot_precision_recall,
    plot_reliability,
    plot_training_curves,
)
from genrecls.policies import OPTIMIZE, choose_policy, fixed
from genrecls.preparation import Inputs, predict_split, prepare_data
from genrecls.runs import HISTORY, REPORT, REPORT_HTML, SPLITS, RunFolder

PLOTS = {
    "genre_distribution.png": "Genre distribution",
    "training_curves.png": "Training curves",
    "f1_vs_random.png": "Per-genre F1 against random guessing",
    "precision_recall.png": "Precision-recall curves",
    "reliability.png": "Reliability (calibration) per genre",
    "confusion_matrices.png": "Per-genre confusion matrices",
}


def evaluate_run(
    run: str | os.PathLike,
    data: str | None = None,
    split: str = "test",
    optimize: str | None = None,
    threshold: float | None = None,
    k: int = 3,
    plots: bool = True,
    table: PosterTable | None = None,
    gradcam: int = GRADCAM_IMAGES,
    save: bool = True,
) -> dict:
    """Evaluate a trained run on one split and write its report files into the run.

    report.md and report.html hold the same tables; with `plots` the PNG plots
    are written and shown, and report.html gets a gallery of the split's
    posters with `gradcam` Grad-CAM heatmaps (0: none). Without `plots`,
    both reports are tables only.

    Decisions: the policy that maximises the `optimize` F1 (default: the
    run's config) on the validation split (argmax, top-k, global or
    per-genre thresholds), or one global `threshold` when given. The policy is saved in the run for
    predict and export. Never chosen on the split being evaluated unless
    that split is "val" itself (the report then says so). With `save=False` nothing is written: the
    report is only returned (the quality benchmark's second decision rule).
    """
    if split not in SPLITS:
        raise GenreclsError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if optimize is not None and optimize not in OPTIMIZE:
        raise GenreclsError(f"optimize must be one of {', '.join(OPTIMIZE)}, not {optimize!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise GenreclsError(f"threshold must be a number in [0, 1], not {threshold!r}")
    if not isinstance(k, int) or k < 1:
        raise GenreclsError(f"k must be a positive integer, not {k!r}")
    if isinstance(gradcam, bool) or not isinstance(gradcam, int) or gradcam < 0:
        raise GenreclsError(f"gradcam must be a number of heatmaps (0 or more), not {gradcam!r}")
    folder = RunFolder.open(run)
    cfg = folder.load_config(os.path.abspath(data) if data else None)
    vocab = folder.load_vocab()
    prepared = prepare_data(cfg, table if not data else None, vocab=vocab)
    model = folder.load_model()
    names = vocab.names
    inputs = Inputs(cfg, prepared.paths, None, prepared.texts)  # the whole model, as predict and export see it

    saved = folder.load_split()
    train_rows, _ = prepared.rows(saved["train"])
    rows, missing = prepared.rows(saved[split])
    if not len(rows):
        raise GenreclsError(f"none of the run's {split} posters is in {cfg.data}")

    if threshold is not None:
        policy = fixed(len(names), float(threshold))
    else:
        val_rows, _ = prepared.rows(saved["val"])
        p_val, val_seen = predict_split(model, inputs, val_rows, "validation")
        policy = choose_policy(prepared.Y[val_seen], p_val, optimize or cfg.optimize)
    if save:
        folder.save_policy(policy, names)

    probabilities, seen = predict_split(model, inputs, rows, split)
    report = evaluate_predictions(
        prepared.Y[seen], probabilities, names, policy,
        train_truth=prepared.Y[train_rows], true_class=prepared.strata[seen], k=k,
    )
    report = {
        "mode": cfg.mode, "backbone": cfg.backbone, "data": cfg.data, "split": split,
        "inputs": (["poster"] if cfg.backbone != NO_BACKBONE else [])
                  + ([f"text ({', '.join(cfg.text)})"] if cfg.text else []),
        "trunk": cfg.trunk, **report,
        "dropped": {**prepared.table.dropped.to_dict(), "no genre in vocabulary": prepared.unlabelled,
                    f"{split} posters no longer in the data": missing,
                    "failed to decode": int(len(rows) - len(seen))},
    }
    if not save:
        return report
    folder.save_metrics(report)
    gallery = []
    if plots:
        _write_plots(folder.path, prepared, report, probabilities, seen, names)
        titles = dict(zip(prepared.table.frame["id"], prepared.table.frame["title"]))
        gallery = build_gallery(prepared.paths[seen], [titles.get(i, "") for i in prepared.ids[seen]],
                                prepared.Y[seen], probabilities, policy.decide(probabilities), names,
                                model=model, resize=cfg.resize, gradcam=gradcam,
                                texts=None if prepared.texts is None else prepared.texts[seen])
    (folder / REPORT).write_text(render_markdown(folder.path, report, plots), encoding="utf-8")
    (folder / REPORT_HTML).write_text(render_report_html(folder.path, report, plots, gallery), encoding="utf-8")
    return report


def _write_plots(run: Path, prepared, report: dict, probabilities, seen, names) -> None:
    counts = dict(zip(names, prepared.Y.sum(axis=0).astype(int).tolist()))
    plot_genre_distribution(dict(sorted(counts.items(), key=lambda kv: -kv[1])), run / "genre_distribution.png")
    if (run / HISTORY).exists():
        plot_training_curves(pd.read_csv(run / HISTORY), run / "training_curves.png")
    plot_f1_against_random(report, run / "f1_vs_random.png")
    plot_precision_recall(prepared.Y[seen], probabilities, names, run / "precision_recall.png")
    plot_reliability(prepared.Y[seen], probabilities, names, run / "reliability.png")
    plot_confusion_matrices(report, run / "confusion_matrices.png")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


# The report's tables, as text cells both report.md and report.html show.
GENRE_COLUMNS = ("genre", "precision", "recall", "F1", "random F1", "most-common F1", "ROC-AUC", "AP", "ECE",
                 "threshold", "support")
BASELINE_COLUMNS = ("score", "model", "baseline", "baseline is", f"gain [{CONFIDENCE:.0%} interval]", "beats it")
BASELINE_NOTE = (f"The gain's interval is a paired bootstrap over the evaluated posters ({BOOTSTRAP_DRAWS} draws, "
                 f"{CONFIDENCE:.0%}): \"within noise\" marks a score above its baseline whose interval still "
                 "includes 0, so these posters cannot tell the model from the baseline on it.")
WARNING_NOTE = ("⚠ marks a genre whose F1 does not beat guessing at random with its training prevalence, ≈ one "
                f"that beats it within the noise (the {CONFIDENCE:.0%} interval of the gain, a paired bootstrap over "
                "the evaluated posters, includes 0: metrics.json's f1_gain_interval).")


def genre_rows(report: dict) -> list[tuple[list[str], bool]]:
    """(cells, beats random) per genre, in GENRE_COLUMNS order; an F1 that does not beat random carries ⚠,
    one that beats it within the noise ≈."""
    rows = []
    for name, m in report["genres"].items():
        f1 = f"{m['f1']:.3f}" + MARKS[standing(m["beats_random"], m.get("clearly_beats_random"))]
        cells = [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f1, f"{m['random_f1']:.3f}",
                 f"{m['most_common_f1']:.3f}", _fmt(m["roc_auc"]), _fmt(m["average_precision"]), f"{m['ece']:.3f}",
                 _fmt(m["threshold"]), str(m["support"])]
        rows.append((cells, bool(m["beats_random"])))
    return rows


def baseline_rows(report: dict) -> list[tuple[list[str], bool]]:
    """(cells, beats the baseline) per overall score, in BASELINE_COLUMNS order; the last cell says
    yes, within noise ⚠ or NO ⚠ (`evaluation.standing`)."""
    rows = []
    for key, v in report["versus_baselines"].items():
        verdict = standing(v["beats"], v.get("clearly_beats"))
        rows.append(([metric_name(key), f"{v['model']:.3f}", f"{v['baseline']:.3f}", v["baseline_name"], gain_text(v),
                      verdict + ("" if verdict == "yes" else " ⚠")], bool(v["beats"])))
    return rows


def dropped_counts(report: dict) -> list[tuple[str, int]]:
    """(reason, posters) for everything left out of the evaluation."""
    dropped = report["dropped"]
    return list(dropped.get("counts", {}).items()) + [
        (reason, n) for reason, n in dropped.items() if reason not in ("counts", "examples", "total")]


def render_markdown(run: Path, report: dict, plots: bool = True) -> str:
    """report.md: the tables a person reads first, then the plots."""
    o = report["overall"]
    lines = [
        f"# genrecls report: {run.name}",
        "",
        f"- mode **{report['mode']}**, backbone **{report['backbone']}**, data `{report['data']}`",
        f"- inputs: **{' + '.join(report.get('inputs', ['poster']))}**",
        f"- evaluated on the **{report['split']}** split: {o['posters']} posters",
        f"- decisions: **{report['policy']['name']}**: {report['policy']['reason']}",
    ]
    if report["split"] == "val" and "validation" in report["policy"]["reason"]:
        lines.append("- note: thresholds were chosen on this same split, so these scores are optimistic")
    lines += [
        "",
        "## Per genre",
        "",
        "| " + " | ".join(GENRE_COLUMNS) + " |",
        "| --- |" + " ---: |" * (len(GENRE_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells, _ in genre_rows(report)]
    lines += ["", WARNING_NOTE, ""]
    lines += [
        "## Overall, against the trivial baselines",
        "",
        "| " + " | ".join(BASELINE_COLUMNS) + " |",
        "| --- | ---: | ---: | --- | ---: | :---: |",
    ]
    lines += ["| " + " | ".join(cells[:-1] + [cells[-1] if beats else "**NO** ⚠"]) + " |"
              for cells, beats in baseline_rows(report)]
    lines += ["", BASELINE_NOTE]
    lines += [
        "",
        f"Hamming loss {o['hamming_loss']:.3f}, subset accuracy {o['subset_accuracy']:.3f}, "
        f"mean expected calibration error {o['ece_mean']:.3f} (per genre in the table above).",
        "",
        f"The most-common baseline always predicts: {', '.join(report['baselines']['most_common']['genres'])}.",
        "",
    ]
    candidates = report["policy"].get("validation") or {}
    if candidates:
        lines += ["### Decision rules tried on the validation split", "",
                  "Each rule's score: " + ("fitted on four fifths of the validation split and scored on the fifth "
                                           "left out, fold by fold" if "cross-validation" in report["policy"]["reason"]
                                           else "fitted and scored on the whole validation split") + ".", "",
                  "| rule | validation score |", "| --- | ---: |"]
        lines += [f"| {rule} | {value:.3f} |" for rule, value in candidates.items()]
        lines.append("")
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
    lines += [f"- {reason}: {n}" for reason, n in dropped_counts(report)]
    lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for name, title in PLOTS.items() if (run / name).exists()]
    return "\n".join(lines)


def render_report_html(run: Path, report: dict, plots: bool = True, gallery: list | None = None) -> str:
    """report.html: report.md's tables, the run's plots (embedded) and the poster gallery (html_report)."""
    plots = [(title, data_uri((run / name).read_bytes(), "image/png"))
             for name, title in PLOTS.items() if plots and (run / name).exists()]
    return render_html({
        "run": run.name, "report": report,
        "optimistic": report["split"] == "val" and "validation" in report["policy"]["reason"],
        "genre_columns": GENRE_COLUMNS, "genre_rows": genre_rows(report), "warning_note": WARNING_NOTE,
        "baseline_columns": BASELINE_COLUMNS, "baseline_rows": baseline_rows(report),
        "baseline_note": BASELINE_NOTE,
        "dropped": dropped_counts(report), "plots": plots, "gallery": gallery or [],
        "heatmaps": sum(bool(card["heatmap"]) for section in gallery or [] for group in section["groups"]
                        for card in group["cards"]),
    })


COMPARISON_HEAD = "<!-- written by genrecls compare -->\n"


def compare_runs(runs: list, out: str | os.PathLike | None = None) -> pd.DataFrame:
    """Side-by-side per-genre F1 of several runs (report 002's table 4)."""
    if len(runs) < 2:
        raise GenreclsError("compare needs at least two run folders")
    columns = {}
    for run in map(Path, runs):
        metrics = RunFolder.open(run).load_metrics()
        label = f"{run.name} ({metrics.get('mode', '?')})"
        columns[label] = {g: m["f1"] for g, m in metrics["genres"].items()}
        columns[label]["macro F1"] = metrics["overall"]["f1_macro"]
        columns[label]["micro F1"] = metrics["overall"]["f1_micro"]
    table = pd.DataFrame(columns)
    if out:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise GenreclsError(f"--out {out} is a file; name a folder for comparison.md and comparison.csv")
        md = out / "comparison.md"
        if md.exists() and not md.read_text(encoding="utf-8", errors="replace").startswith(COMPARISON_HEAD):
            raise GenreclsError(f"{md} exists and genrecls did not write it; name another --out folder")
        if (out / "comparison.csv").exists() and not md.exists():
            raise GenreclsError(f"{out / 'comparison.csv'} exists and genrecls did not write it; name another --out")
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "comparison.csv", index_label="genre")
        md.write_text(COMPARISON_HEAD + _markdown(table), encoding="utf-8")
    return table


def _markdown(table: pd.DataFrame) -> str:
    head = "| genre | " + " | ".join(table.columns) + " |"
    rule = "| --- |" + " ---: |" * len(table.columns)
    body = ["| " + str(g) + " | " + " | ".join("–" if pd.isna(v) else f"{v:.3f}" for v in row) + " |"
            for g, row in table.iterrows()]
    return "\n".join([head, rule, *body]) + "\n"
