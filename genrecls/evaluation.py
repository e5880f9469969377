"""Metrics and baselines, computed with scikit-learn.

Multi-label accuracy flatters a model that predicts nothing, so the
package reports per-genre precision, recall, F1, ROC-AUC and average
precision; micro/macro/weighted/samples F1, Hamming loss, subset accuracy,
mAP and MAP@k; and beside them two baselines: guessing each genre at random
with its training prevalence, and always predicting the most common genres.

Truth is always the movies' real (multi-hot) genres; decisions come from
the run's decision policy (`policies`), chosen on validation. Every overall score is set beside the trivial
baseline it must beat, and flagged when it does not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from genrecls.calibration import expected_calibration_error
from genrecls.policies import Policy

# ------------------------------------------------------------------ baselines


def random_guess_f1(train_prevalence: np.ndarray, test_prevalence: np.ndarray) -> np.ndarray:
    """Expected F1 of predicting each genre at random with its training prevalence.

    Guessing "yes" with probability p on a test set where a share q is
    positive gives precision q and recall p, so F1 = 2pq / (p + q), exactly
    (report 004's "random guess" column, computed rather than sampled).
    """
    p = np.asarray(train_prevalence, dtype=float)
    q = np.asarray(test_prevalence, dtype=float)
    total = p + q
    return np.divide(2 * p * q, total, out=np.zeros_like(total), where=total > 0)


def prevalence_ranking(train_truth: np.ndarray, n: int) -> np.ndarray:
    """Every poster scored by the genres' training prevalence: the constant ranking."""
    return np.broadcast_to(np.asarray(train_truth, float).mean(axis=0), (n, np.shape(train_truth)[1]))


def most_common_prediction(train_truth: np.ndarray, n: int) -> np.ndarray:
    """Predict the m most common training genres for every poster.

    m is the mean number of genres per training poster, rounded, at least 1.
    """
    train_truth = np.asarray(train_truth)
    m = max(1, int(round(train_truth.sum(axis=1).mean())))
    top = np.argsort(-train_truth.sum(axis=0), kind="stable")[:m]
    pred = np.zeros((n, train_truth.shape[1]), dtype=int)
    pred[:, top] = 1
    return pred


# -------------------------------------------------------------------- metrics


def map_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean over posters of AP@k of the top-k ranked genres (report 000).

    AP@k = sum over ranks i <= k of precision@i at each hit, divided by
    min(k, number of true genres). Posters without genres are skipped.
    """
    y_true = np.asarray(y_true).astype(bool)
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y_true, order, axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    relevant = y_true.sum(axis=1)
    keep = relevant > 0
    ap = (precision_at * hits).sum(axis=1)[keep] / np.minimum(relevant[keep], k)
    return float(ap.mean()) if len(ap) else 0.0


def _per_column(metric, y_true: np.ndarray, scores: np.ndarray) -> list:
    """A ranking metric per genre, None where it is undefined (one class only)."""
    out = []
    for j in range(y_true.shape[1]):
        column = y_true[:, j]
        out.append(float(metric(column, scores[:, j])) if 0 < column.sum() < len(column) else None)
    return out


def _f1s(y_true, y_pred) -> dict:
    return {
        f"f1_{avg}": float(f1_score(y_true, y_pred, average=avg, zero_division=0))
        for avg in ("micro", "macro", "weighted", "samples")
    }


def evaluate_predictions(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str],
    policy: Policy,
    train_truth: np.ndarray,
    true_class: np.ndarray | None = None,
    k: int = 3,
) -> dict:
    """Every metric and baseline of one split, as a JSON-ready dict.

    y_true: multi-hot real genres (N, K). probabilities: model output (N, K).
    policy: the decision rule turning probabilities into genres.
    train_truth: multi-hot training labels, for the baselines' prevalences.
    true_class: one collapsed label per poster, for the multiclass view.
    A genre with no positives gets zeros and nulls, never a crash or NaN.
    """
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    names = list(names)
    y_pred = policy.decide(probabilities)

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    auc = _per_column(roc_auc_score, y_true, probabilities)
    ap = _per_column(average_precision_score, y_true, probabilities)
    confusion = multilabel_confusion_matrix(y_true, y_pred)
    random_f1 = random_guess_f1(np.asarray(train_truth).mean(axis=0), y_true.mean(axis=0))
    common = most_common_prediction(train_truth, len(y_true))
    _, _, common_f1, _ = precision_recall_fscore_support(y_true, common, average=None, zero_division=0)
    constant = prevalence_ranking(train_truth, len(y_true))
    constant_ap = _per_column(average_precision_score, y_true, constant)
    ece = expected_calibration_error(y_true, probabilities)

    genres = {}
    for j, name in enumerate(names):
        genres[name] = {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "roc_auc": auc[j],
            "average_precision": ap[j],
            "threshold": None if policy.kind == "argmax" else float(policy.thresholds[j]),
            "ece": float(ece[j]),
            "random_f1": float(random_f1[j]),
            "most_common_f1": float(common_f1[j]),
            "beats_random": bool(f1[j] > random_f1[j]),
            "confusion": confusion[j].tolist(),  # [[tn, fp], [fn, tp]]
        }
    overall = {
        **_f1s(y_true, y_pred),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "map": _mean(ap),
        f"map_at_{k}": map_at_k(y_true, probabilities, k),
        "roc_auc_mean": _mean(auc),
        "ece_mean": float(ece.mean()),
        "posters": int(len(y_true)),
    }
    baselines = {
        "random": {"f1_macro": float(random_f1.mean())},
        "most_common": {**_f1s(y_true, common), "genres": [n for n, c in zip(names, common[0]) if c]},
        "prevalence_ranking": {"map": _mean(constant_ap), f"map_at_{k}": map_at_k(y_true, constant, k),
                               "roc_auc_mean": 0.5},
    }
    report = {"policy": {"kind": policy.kind, "name": policy.name, "top_k": policy.top_k,
                         "at_least_one": policy.at_least_one, "shrink": policy.shrink, "reason": policy.reason,
                         "validation": policy.validation},
              "genres": genres, "overall": overall, "baselines": baselines,
              "versus_baselines": versus_baselines(overall, baselines, k)}
    if true_class is not None:
        report["multiclass_view"] = multiclass_view(true_class, probabilities, names)
    return report


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# overall score -> the baseline it must beat (a key of report["baselines"]) and how to name it
BASELINE_OF = {
    "f1_micro": ("most_common", "always the most common genres"),
    "f1_weighted": ("most_common", "always the most common genres"),
    "f1_samples": ("most_common", "always the most common genres"),
    "f1_macro": ("random", "random guess at training prevalence"),
    "map": ("prevalence_ranking", "constant prevalence ranking"),
    "map_at_k": ("prevalence_ranking", "constant prevalence ranking"),
    "roc_auc_mean": ("prevalence_ranking", "constant score"),
}


def versus_baselines(overall: dict, baselines: dict, k: int = 3) -> dict:
    """Each headline score beside its trivial baseline, with whether it beats it."""
    out = {}
    for metric, (source, label) in BASELINE_OF.items():
        key = f"map_at_{k}" if metric == "map_at_k" else metric
        model, base = overall.get(key), baselines[source].get(key)
        if model is None or base is None:
            continue
        out[key] = {"model": model, "baseline": base, "baseline_name": label, "beats": bool(model > base)}
    return out


def multiclass_view(true_class: np.ndarray, probabilities: np.ndarray, names: Sequence[str]) -> dict:
    """Argmax accuracy and per-class precision/recall against one label per poster (report 002)."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_class, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(true_class, predicted)),
        "classes": {
            name: {"precision": float(precision[j]), "recall": float(recall[j]),
                   "f1": float(f1[j]), "support": int(support[j])}
            for j, name in enumerate(names)
        },
    }


METRIC_NAMES = {"f1_micro": "micro F1", "f1_macro": "macro F1", "f1_weighted": "weighted F1",
                "f1_samples": "samples F1", "map": "mAP", "roc_auc_mean": "mean ROC-AUC"}


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key) or (f"MAP@{key.rsplit('_', 1)[-1]}" if key.startswith("map_at_") else key)


def format_versus(report: dict) -> str:
    """One line per headline score: model, baseline, and a flag where it does not beat it."""
    lines = [f"{'score':<14}{'model':>8}{'baseline':>10}  baseline is"]
    for key, v in report["versus_baselines"].items():
        flag = "" if v["beats"] else "   <- does NOT beat its baseline"
        lines.append(f"{metric_name(key):<14}{v['model']:>8.3f}{v['baseline']:>10.3f}  {v['baseline_name']}{flag}")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The per-genre table printed at the end of training and evaluation."""
    lines = [f"{'genre':<18}{'prec':>7}{'recall':>8}{'F1':>7}{'random':>8}{'common':>8}{'support':>9}"]
    for name, m in report["genres"].items():
        flag = "" if m["beats_random"] else "  <= random"
        lines.append(
            f"{name:<18}{m['precision']:>7.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
            f"{m['random_f1']:>8.3f}{m['most_common_f1']:>8.3f}{m['support']:>9}{flag}"
        )
    lines += ["", f"{report['overall']['posters']} posters; decisions: {report.get('policy', {}).get('name', '?')}",
              format_versus(report)]
    return "\n".join(lines)
