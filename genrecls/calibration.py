"""Calibrated probabilities: prior-shift correction, Platt / temperature scaling, ECE.

A model fit on a set whose genre shares differ from the real ones (an OvA
member's 30 % positives, undersampling) or with weighted classes states
odds multiplied by (s / (1 - s)) / (pi / (1 - pi)) times the class weight,
with s the share it saw and pi the real prevalence. Subtracting the log of
that factor from its logit (a softmax: from its log-probability) undoes the
shift exactly; Platt scaling (sigmoid) or temperature scaling (softmax)
fitted on validation can follow. The result is one `components.Calibration`
layer appended to the model, so predict, the export and every report see
calibrated probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logit
from sklearn.linear_model import LogisticRegression

EPS = 1e-7


def prior_shift_bias(real_share, fit_share, weight_ratio=None, activation: str = "sigmoid") -> np.ndarray:
    """Per-genre bias that maps a shifted model back to the real prevalence.

    real_share: each genre's share on the (unbalanced) training split.
    fit_share: its share on the set the model was fit on.
    weight_ratio: positive / negative loss weight per genre (1 when unweighted).
    sigmoid: bias = logit(real) - logit(fit) - log(weight); softmax: log(real / fit) - log(weight).
    """
    real = np.clip(np.asarray(real_share, float), EPS, 1 - EPS)
    fit = np.clip(np.asarray(fit_share, float), EPS, 1 - EPS)
    weight = np.ones_like(real) if weight_ratio is None else np.asarray(weight_ratio, float)
    if activation == "softmax":
        bias = np.log(real) - np.log(fit) - np.log(weight)
        return bias - bias.mean()  # softmax is shift-invariant: keep numbers small
    return logit(real) - logit(fit) - np.log(weight)


def apply(probabilities, scale, bias, activation: str = "sigmoid") -> np.ndarray:
    """NumPy twin of components.Calibration (for fitting and tests)."""
    p = np.clip(np.asarray(probabilities, float), EPS, 1 - EPS)
    if activation == "softmax":
        return np.exp(log_softmax(np.asarray(scale) * np.log(p) + np.asarray(bias), axis=1))
    return 1 / (1 + np.exp(-(np.asarray(scale) * logit(p) + np.asarray(bias))))


def fit_platt(y_val, p_val, min_positives: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre (scale, bias) of a logistic regression on the validation logits.

    A genre with fewer than `min_positives` positives (or negatives) in
    validation keeps the identity: too few points to fit two numbers. So does
    a genre whose fitted scale is not positive: its validation posters rank
    against the model's scores, which on a few hundred posters is noise, and
    a negative scale would turn its ranking upside down for every poster.
    """
    y_val = np.asarray(y_val).astype(int)
    z = logit(np.clip(np.asarray(p_val, float), EPS, 1 - EPS))
    scale, bias = np.ones(y_val.shape[1]), np.zeros(y_val.shape[1])
    for j in range(y_val.shape[1]):
        positives = int(y_val[:, j].sum())
        if min(positives, len(y_val) - positives) < min_positives:
            continue
        lr = LogisticRegression(C=1.0).fit(z[:, [j]], y_val[:, j])
        if lr.coef_[0, 0] > 0:
            scale[j], bias[j] = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return scale, bias


def fit_temperature(true_class, p_val) -> float:
    """The softmax temperature (as a scale on log-probabilities) minimising validation NLL."""
    logp = np.log(np.clip(np.asarray(p_val, float), EPS, 1))
    rows = np.arange(len(true_class))

    def nll(scale):
        return -log_softmax(scale * logp, axis=1)[rows, true_class].mean()

    return float(minimize_scalar(nll, bounds=(0.05, 20), method="bounded").x)


def reliability(y_true, probabilities, bins: int = 10) -> dict:
    """Per genre: mean predicted probability, observed frequency and count in equal-width bins."""
    y_true = np.asarray(y_true, float)
    p = np.asarray(probabilities, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = {"edges": edges.tolist(), "predicted": [], "observed": [], "count": []}
    for j in range(p.shape[1]):
        count = np.bincount(which[:, j], minlength=bins)
        pred = np.bincount(which[:, j], weights=p[:, j], minlength=bins)
        obs = np.bincount(which[:, j], weights=y_true[:, j], minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["predicted"].append(np.where(count > 0, pred / count, np.nan))
            out["observed"].append(np.where(count > 0, obs / count, np.nan))
        out["count"].append(count)
    return out


def expected_calibration_error(y_true, probabilities, bins: int = 10) -> np.ndarray:
    """Per-genre ECE: the count-weighted mean gap between predicted and observed frequency."""
    table = reliability(y_true, probabilities, bins)
    n = len(np.asarray(y_true))
    ece = []
    for pred, obs, count in zip(table["predicted"], table["observed"], table["count"]):
        gap = np.nan_to_num(np.abs(pred - obs))
        ece.append(float((count * gap).sum() / max(n, 1)))
    return np.array(ece)
