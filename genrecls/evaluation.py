"""Per-genre metrics with a random-guess baseline, from scikit-learn.

Multi-label accuracy flatters a model that predicts nothing, so the
package reports per-genre precision, recall and F1, micro/macro/weighted
F1, and beside each genre's F1 the F1 of guessing at random.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support


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


def per_genre_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    names: Sequence[str],
    train_prevalence: np.ndarray,
) -> dict:
    """Per-genre precision/recall/F1/support, overall F1s, random baseline.

    y_true, y_pred: binary (N, K) arrays. A genre with no positives gets
    zeros (scikit-learn's zero_division=0), never a crash or a NaN.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    baseline = random_guess_f1(train_prevalence, y_true.mean(axis=0))
    genres = {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "random_f1": float(baseline[j]),
            "beats_random": bool(f1[j] > baseline[j]),
        }
        for j, name in enumerate(names)
    }
    overall = {
        f"f1_{avg}": float(f1_score(y_true, y_pred, average=avg, zero_division=0))
        for avg in ("micro", "macro", "weighted")
    }
    overall["random_f1_macro"] = float(baseline.mean())
    overall["test_posters"] = int(len(y_true))
    return {"genres": genres, "overall": overall}


def format_report(report: dict) -> str:
    """The per-genre table printed at the end of training."""
    lines = [f"{'genre':<18}{'prec':>7}{'recall':>8}{'F1':>7}{'random':>8}{'support':>9}"]
    for name, m in report["genres"].items():
        flag = "" if m["beats_random"] else "  <= random"
        lines.append(
            f"{name:<18}{m['precision']:>7.3f}{m['recall']:>8.3f}{m['f1']:>7.3f}"
            f"{m['random_f1']:>8.3f}{m['support']:>9}{flag}"
        )
    o = report["overall"]
    lines.append(
        f"micro F1 {o['f1_micro']:.3f}   macro F1 {o['f1_macro']:.3f}   weighted F1 {o['f1_weighted']:.3f}"
        f"   (random macro F1 {o['random_f1_macro']:.3f}, {o['test_posters']} test posters)"
    )
    return "\n".join(lines)
