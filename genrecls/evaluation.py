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

import warnings
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
from genrecls.policies import Policy, f1_from_counts

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


def ap_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> np.ndarray:
    """Each poster's AP@k of its top-k ranked genres (report 000); NaN for a poster without genres.

    AP@k = sum over ranks i <= k of precision@i at each hit, divided by
    min(k, number of true genres).
    """
    y_true = np.asarray(y_true).astype(bool)
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y_true, order, axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    relevant = y_true.sum(axis=1)
    return np.divide((precision_at * hits).sum(axis=1), np.minimum(relevant, k),
                     out=np.full(len(relevant), np.nan), where=relevant > 0)


def map_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean over posters of AP@k (`ap_at_k`); posters without genres are skipped."""
    ap = ap_at_k(y_true, scores, k)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


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
    intervals = bootstrap_gains(y_true, y_pred, probabilities, common, constant, np.asarray(train_truth).mean(axis=0), k)

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
            "f1_gain_interval": list(intervals["f1_by_genre"][j]),
            "clearly_beats_random": verdict(f1[j] > random_f1[j], intervals["f1_by_genre"][j]),
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
              "versus_baselines": versus_baselines(overall, baselines, k, intervals)}
    if true_class is not None:
        report["multiclass_view"] = multiclass_view(true_class, probabilities, names)
    return report


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# ------------------------------------------------------------- uncertainty

# A paired bootstrap over the evaluated posters: each draw resamples them with replacement, and the model and
# its baseline are scored on the same draw, so the interval is that of the gain, not of two separate scores.
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_CELLS = 4_000_000  # draws x posters held at once (float32): the draws go in chunks of this size
CONFIDENCE = 0.95


def _f1s_by_draw(W: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Micro, macro, weighted and samples F1 (as `_f1s`, zero_division=0) and each genre's F1 ("f1_by_genre",
    (draws, genres)) on each draw: W[b, i] = how often poster i is in draw b."""
    t, p = y_true.astype("float32"), y_pred.astype("float32")
    tp, fp, fn = W @ (t * p), W @ ((1 - t) * p), W @ (t * (1 - p))  # (draws, genres)
    per_genre, support = f1_from_counts(tp, fp, fn), W @ t
    per_poster = f1_from_counts((t * p).sum(axis=1), ((1 - t) * p).sum(axis=1), (t * (1 - p)).sum(axis=1))
    return {"f1_micro": f1_from_counts(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)),
            "f1_macro": per_genre.mean(axis=1),
            "f1_weighted": np.divide((per_genre * support).sum(axis=1), support.sum(axis=1),
                                     out=np.zeros(len(W)), where=support.sum(axis=1) > 0),
            "f1_samples": W @ per_poster / W.sum(axis=1), "f1_by_genre": per_genre}


def _ranking_by_draw(W: np.ndarray, y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One genre's ROC-AUC and average precision on each draw (NaN where a draw lacks positives or negatives),
    as scikit-learn computes them: tied scores form one threshold (AUC counts a tie as half)."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # groups of tied scores, highest first
    weights = W[:, order]
    pos = np.add.reduceat(weights * y[order], starts, axis=1)
    total = np.add.reduceat(weights, starts, axis=1)
    neg = total - pos
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    precision = np.cumsum(pos, axis=1) / np.maximum(np.cumsum(total, axis=1), 1e-12)
    ap = (pos * precision).sum(axis=1) / np.maximum(n_pos, 1e-12)
    below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored lower than each group
    auc = (pos * (below + neg / 2)).sum(axis=1) / np.maximum(n_pos * n_neg, 1e-12)
    return np.where(both, auc, np.nan), np.where(both, ap, np.nan)


def _rankings_by_draw(W, y_true, scores, k: int) -> dict:
    """mAP, MAP@k and mean ROC-AUC on each draw (a genre undefined on a draw is left out of its means)."""
    per_genre = [_ranking_by_draw(W, y_true[:, j].astype("float32"), scores[:, j]) for j in range(y_true.shape[1])]
    auc, ap = (np.stack(column, axis=1) for column in zip(*per_genre))
    ap_k = ap_at_k(y_true, scores, k)
    labelled = np.isfinite(ap_k)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # a draw where nothing is defined stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"map": np.nanmean(ap, axis=1), "roc_auc_mean": np.nanmean(auc, axis=1),
                f"map_at_{k}": W[:, labelled] @ ap_k[labelled] / W[:, labelled].sum(axis=1)}


def bootstrap_gains(y_true, y_pred, probabilities, common, constant, train_prevalence, k: int = 3,
                    draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict:
    """{headline score: (low, high)}: the CONFIDENCE interval of the model's gain over its baseline
    (`BASELINE_OF`), from a paired bootstrap over the posters, and "f1_by_genre": a (low, high) per genre
    of its F1's gain over guessing it at random. A fixed seed: the same report every time.

    A gain whose interval lies above 0 is one a fresh draw of as many posters would very likely show
    too; an interval around 0 means the data cannot tell the model from its baseline."""
    y_true = np.asarray(y_true).astype(int)
    probabilities, constant = np.asarray(probabilities, float), np.asarray(constant, float)
    n = len(y_true)
    rng = np.random.default_rng(seed)
    gains: dict[str, list] = {}
    chunk = max(1, BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, draws, chunk):
        W = rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, draws - start)).astype("float32")
        model = {**_f1s_by_draw(W, y_true, y_pred), **_rankings_by_draw(W, y_true, probabilities, k)}
        base = {**_f1s_by_draw(W, y_true, common), **_rankings_by_draw(W, y_true, constant, k)}
        prevalence = (W @ y_true.astype("float32")) / W.sum(axis=1, keepdims=True)
        base["f1_by_genre"] = random_guess_f1(np.broadcast_to(train_prevalence, prevalence.shape), prevalence)
        base["f1_macro"] = base["f1_by_genre"].mean(axis=1)
        base["roc_auc_mean"] = np.full(len(W), 0.5)
        for key in model:
            gains.setdefault(key, []).append(model[key] - base[key])
    tail = (1 - CONFIDENCE) / 2 * 100
    out = {}
    for key, parts in gains.items():
        values = np.concatenate(parts)
        if not np.isfinite(values).any():
            out[key] = None
            continue
        low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)  # NaN: a draw where it is undefined
        out[key] = [(float(lo), float(hi)) for lo, hi in zip(low, high)] if values.ndim > 1 else (float(low), float(high))
    return out


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


def versus_baselines(overall: dict, baselines: dict, k: int = 3, intervals: dict | None = None) -> dict:
    """Each headline score beside its trivial baseline, with whether it beats it; with `intervals`
    (`bootstrap_gains`), the interval of the gain and whether all of it is above 0 ("clearly")."""
    out = {}
    for metric, (source, label) in BASELINE_OF.items():
        key = f"map_at_{k}" if metric == "map_at_k" else metric
        model, base = overall.get(key), baselines[source].get(key)
        if model is None or base is None:
            continue
        out[key] = {"model": model, "baseline": base, "baseline_name": label, "beats": bool(model > base)}
        interval = (intervals or {}).get(key)
        if interval is not None:
            out[key].update(gain_interval=list(interval), clearly_beats=verdict(model > base, interval))
    return out


def verdict(beats: bool, interval) -> bool:
    """Whether a score beats its baseline beyond the noise: it beats it, and the gain's interval is above 0."""
    return bool(beats and interval[0] > 0)


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


def gain_text(v: dict) -> str:
    """'+0.032 [+0.011, +0.054]': a score's gain over its baseline and the gain's interval (the gain alone
    for a report written before the intervals)."""
    interval = v.get("gain_interval")
    gain = f"{v['model'] - v['baseline']:+.3f}"
    return f"{gain} [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else gain


def standing(beats: bool, clearly: bool | None) -> str:
    """'yes', 'within noise' (beats its baseline, but the gain's interval reaches 0) or 'NO'; `clearly` None:
    a report written before the intervals, judged on `beats` alone."""
    if not beats:
        return "NO"
    return "within noise" if clearly is False else "yes"


MARKS = {"yes": "", "within noise": " ≈", "NO": " ⚠"}  # beside a score in the markdown tables, by its standing


def format_versus(report: dict) -> str:
    """One line per headline score: model, baseline, the gain with its interval, and a flag where the
    score does not beat its baseline, or beats it only within the noise of the evaluated posters."""
    flags = {"yes": "", "within noise": "   <- within noise: the gain's interval includes 0",
             "NO": "   <- does NOT beat its baseline"}
    lines = [f"{'score':<14}{'model':>8}{'baseline':>10}  {f'gain [{CONFIDENCE:.0%} interval]':<27}baseline is"]
    for key, v in report["versus_baselines"].items():
        lines.append(f"{metric_name(key):<14}{v['model']:>8.3f}{v['baseline']:>10.3f}  {gain_text(v):<27}"
                     f"{v['baseline_name']}{flags[standing(v['beats'], v.get('clearly_beats'))]}")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The per-genre table printed at the end of training and evaluation."""
    lines = [f"{'genre':<18}{'prec':>7}{'recall':>8}{'F1':>7}{'random':>8}{'common':>8}{'support':>9}"]
    flags = {"yes": "", "within noise": "  ~ random (within noise)", "NO": "  <= random"}
    for name, m in report["genres"].items():
        flag = flags[standing(m["beats_random"], m.get("clearly_beats_random"))]
        lines.append(
            f"{name:<18}{m['precision']:>7.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
            f"{m['random_f1']:>8.3f}{m['most_common_f1']:>8.3f}{m['support']:>9}{flag}"
        )
    lines += ["", f"{report['overall']['posters']} posters; decisions: {report.get('policy', {}).get('name', '?')}",
              format_versus(report)]
    return "\n".join(lines)
