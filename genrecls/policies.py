"""Decision policies: which genres a poster gets from its probabilities.

A policy is plain data (the run folder saves it, runs.POLICY) with one
rule, applied the same way in NumPy (reports, predict from a run) and in
TensorFlow (the exported graph):

    above    = probability >= threshold of the genre
    top_k    keeps only the k most likely genres (if set)
    at_least_one adds the most likely genre to a poster with none

per-genre thresholds, one global threshold, plain top-k and argmax are all
special cases; per-genre thresholds can also be shrunk part of the way toward
the global one (a genre with a handful of validation positives gets a noisy
threshold of its own). `choose_policy` scores every candidate rule by
cross-validation on the validation split (each fitted on four fifths, scored on
the fifth left out), keeps the one that maximises the metric the user asked for,
and fits it again on the whole validation split.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from functools import cache

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve
from sklearn.model_selection import KFold

from genrecls.errors import GenreclsError

OPTIMIZE = ("micro", "macro", "samples", "weighted")  # the F1 average a policy maximises
TOP_K_CANDIDATES = (1, 2, 3)
# per-genre candidates: how far each genre's threshold is pulled toward the global one (0: its own, as fitted)
SHRINK_CANDIDATES = (0.0, 0.25, 0.5, 0.75)
CV_FOLDS = 5  # the validation split's folds for scoring the candidates; fewer rows: scored on all of it
MIN_CV_ROWS = 50
SWEEP_CELLS = 20_000_000  # decisions the global-threshold sweep holds at once (cuts x posters x genres)


@dataclass(frozen=True)
class Policy:
    kind: str  # per-genre | global | top-k | argmax
    thresholds: tuple  # one per genre
    top_k: int | None = None
    at_least_one: bool = False
    shrink: float = 0.0  # per-genre: the share of the way each threshold was pulled toward the global one
    reason: str = ""
    validation: dict = field(default_factory=dict)  # candidate -> validation score

    def __post_init__(self):
        # float32, like the probabilities and the exported graph, so NumPy and TF decide alike
        values = tuple(float(np.float32(t)) for t in self.thresholds)
        if not values or not all(math.isfinite(t) and 0 <= t <= 1 for t in values):
            raise GenreclsError(f"policy thresholds must be numbers in [0, 1], not {list(self.thresholds)}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise GenreclsError(f"policy top_k must be a positive integer, not {self.top_k!r}")
        if isinstance(self.shrink, bool) or not (isinstance(self.shrink, numbers.Real) and 0 <= self.shrink < 1):
            raise GenreclsError(f"policy shrink must be a number in [0, 1), not {self.shrink!r}")
        object.__setattr__(self, "thresholds", values)
        object.__setattr__(self, "shrink", float(self.shrink))

    @property
    def name(self) -> str:
        shrunk = f" (shrunk {self.shrink:.0%} toward global)" if self.shrink else ""
        return self.kind + shrunk + (" + at least one" if self.at_least_one and self.kind != "argmax" else "")

    def decide(self, probabilities) -> np.ndarray:
        """Binary decisions (N, K) in NumPy."""
        p = np.asarray(probabilities, dtype=np.float32)
        above = p >= np.asarray(self.thresholds, dtype=np.float32)
        if self.top_k is not None or self.at_least_one:
            rank = np.argsort(np.argsort(-p, axis=1, kind="stable"), axis=1, kind="stable")
            if self.top_k is not None:
                above &= rank < self.top_k
            if self.at_least_one:
                above |= rank == 0
        return above.astype(int)

    def decide_tf(self, probabilities):
        """The same rule as graph ops, for the exported SavedModel (bool (N, K))."""
        import tensorflow as tf

        k = len(self.thresholds)
        above = tf.cast(probabilities, tf.float32) >= tf.constant(self.thresholds, tf.float32)
        if self.top_k is not None:
            top = tf.math.top_k(probabilities, k=min(self.top_k, k)).indices
            above &= tf.reduce_any(tf.one_hot(top, k) > 0.5, axis=1)
        if self.at_least_one:
            above |= tf.one_hot(tf.argmax(probabilities, axis=1), k) > 0.5
        return above

    def to_json(self, genres) -> dict:
        doc = asdict(self)
        doc["thresholds"] = dict(zip(genres, self.thresholds))
        return doc

    @classmethod
    def from_json(cls, doc: dict, genres) -> "Policy":
        try:
            thresholds = doc["thresholds"]
            if isinstance(thresholds, dict):
                thresholds = [thresholds[g] for g in genres]
            if len(thresholds) != len(genres):
                raise GenreclsError(f"{len(thresholds)} thresholds for {len(genres)} genres")
            if "kind" not in doc:  # saved before policies existed: per-genre thresholds
                return cls("per-genre", thresholds, reason=doc.get("source", ""))
            return cls(doc["kind"], thresholds, doc.get("top_k"), bool(doc.get("at_least_one", False)),
                       float(doc.get("shrink", 0.0)), doc.get("reason", ""), doc.get("validation", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise GenreclsError(f"damaged decision policy ({type(exc).__name__}: {exc}); evaluate the run again") from None


def argmax(k: int) -> Policy:
    return Policy("argmax", [0.0] * k, top_k=1, reason="one genre per poster (multiclass)")


def fixed(k: int, threshold: float) -> Policy:
    return Policy("global", [threshold] * k, reason=f"one global threshold {threshold} given by the user")


# ------------------------------------------------------------------ choosing


def per_genre_thresholds(y_val, p_val, default: float = 0.5) -> np.ndarray:
    """Per-genre threshold maximising that genre's F1 on the validation split.

    Every threshold between the best cut and the next lower score makes the
    same validation decisions; the midpoint is taken, so the threshold does
    not sit right on the lowest positive score. A genre without positives in
    validation keeps `default`.
    """
    y_val = np.asarray(y_val).astype(int)
    thresholds = np.full(y_val.shape[1], default, dtype=float)
    for j in range(y_val.shape[1]):
        if y_val[:, j].sum() == 0:
            continue
        precision, recall, cuts = precision_recall_curve(y_val[:, j], p_val[:, j])
        f1 = np.divide(2 * precision * recall, precision + recall,
                       out=np.zeros_like(precision), where=(precision + recall) > 0)
        best = int(np.argmax(f1[:-1]))  # the last point has no threshold
        thresholds[j] = between(cuts[best - 1], cuts[best]) if best > 0 else float(np.float32(cuts[best]))
    return thresholds


def between(lower: float, upper: float) -> float:
    """A float32 threshold above `lower` and at most `upper`: the midpoint, unless rounding lands on `lower`."""
    lower, upper = np.float32(lower), np.float32(upper)
    mid = np.float32((float(lower) + float(upper)) / 2)
    return float(mid if mid > lower else np.nextafter(lower, np.float32(np.inf)))


def score(y_true, decisions, optimize: str) -> float:
    return float(f1_score(y_true, decisions, average=optimize, zero_division=0))


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn) elementwise, 0 where nothing is predicted or true (zero_division=0)."""
    denominator = 2 * np.asarray(tp) + fp + fn
    return np.divide(2 * np.asarray(tp, float), denominator, out=np.zeros(np.shape(denominator)),
                     where=denominator > 0)


def f1_by_cut(y_true, decided, optimize: str) -> np.ndarray:
    """The `optimize` F1 of each of C decision matrices decided (C, N, K) at once: `score` for a sweep.

    The same counts scikit-learn's f1_score makes (zero_division=0), vectorised over the C candidate
    cuts of `global_threshold`, which would otherwise call f1_score hundreds of times.
    """
    y = np.asarray(y_true, bool)[None]
    if optimize == "samples":
        tp = (decided & y).sum(axis=2)
        return f1_from_counts(tp, decided.sum(axis=2) - tp, y.sum(axis=2) - tp).mean(axis=1)
    tp, fp, fn = ((decided & y).sum(axis=1), (decided & ~y).sum(axis=1), (~decided & y).sum(axis=1))
    if optimize == "micro":
        tp, fp, fn = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)
    f1 = f1_from_counts(tp, fp, fn)
    if optimize == "micro":
        return f1
    if optimize == "macro":
        return f1.mean(axis=1)
    support = y[0].sum(axis=0)
    return f1 @ support / support.sum() if support.sum() else np.zeros(len(f1))


def global_threshold(y_val, p_val, optimize: str, at_least_one: bool) -> float:
    """The one threshold for every genre that maximises the chosen F1 on validation."""
    p = np.asarray(p_val, np.float32)
    levels = np.unique(np.quantile(p, np.linspace(0, 1, 201)))
    cuts = [between(a, b) for a, b in zip(levels[:-1], levels[1:])] or [float(levels[0])]
    top = np.arange(p.shape[1]) == np.argmax(p, axis=1)[:, None]
    step = max(1, SWEEP_CELLS // p.size)  # cuts at a time: memory stays bounded on a large validation split
    scores = []
    for i in range(0, len(cuts), step):
        decided = p[None] >= np.asarray(cuts[i:i + step], np.float32)[:, None, None]
        scores.append(f1_by_cut(y_val, decided | top if at_least_one else decided, optimize))
    return cuts[int(np.argmax(np.concatenate(scores)))]


@dataclass(frozen=True)
class Candidate:
    """A decision rule to be fitted: its family and settings."""

    kind: str  # per-genre | global | top-k
    at_least_one: bool = False
    shrink: float = 0.0
    top_k: int | None = None

    @property
    def label(self) -> str:
        return Policy(self.kind, [0.0], self.top_k, self.at_least_one, self.shrink).name + (
            f" k={self.top_k}" if self.top_k else "")

    def fit(self, y, p, optimize: str, default: float = 0.5) -> Policy:
        return self.fit_from(_Fitted(y, p, optimize, default))

    def fit_from(self, fitted: "_Fitted") -> Policy:
        k = fitted.k
        if self.kind == "top-k":
            return Policy("top-k", [0.0] * k, top_k=self.top_k)
        overall = fitted.global_threshold(self.at_least_one)
        if self.kind == "global":
            return Policy("global", [overall] * k, at_least_one=self.at_least_one)
        own = fitted.per_genre()
        return Policy("per-genre", overall + (1 - self.shrink) * (own - overall), at_least_one=self.at_least_one,
                      shrink=self.shrink)


class _Fitted:
    """The thresholds fitted once on one sample (a fold, or all of validation) for every candidate."""

    def __init__(self, y, p, optimize: str, default: float):
        self.k = y.shape[1]
        self.per_genre = cache(lambda: per_genre_thresholds(y, p, default))
        self.global_threshold = cache(lambda at_least_one: global_threshold(y, p, optimize, at_least_one))


def candidates(k: int) -> list[Candidate]:
    """Every rule choose_policy weighs, the most flexible first: a tie goes to the later (simpler) one."""
    out = [Candidate("per-genre", at_least_one, shrink) for shrink in SHRINK_CANDIDATES for at_least_one in (False, True)]
    out += [Candidate("global", at_least_one) for at_least_one in (False, True)]
    return out + [Candidate("top-k", top_k=n) for n in TOP_K_CANDIDATES if n < k]


def choose_policy(y_val, p_val, optimize: str = "micro", default: float = 0.5) -> Policy:
    """The candidate rule with the best `optimize` F1 in cross-validation on the validation split.

    Each candidate is fitted on four folds of the validation split and decides the fifth, so a rule
    with a threshold per genre is scored on posters it did not see, as a rule with one threshold is;
    the winner is then fitted on the whole split. Takes only validation arrays, so the test split
    cannot leak in. On a tie the later (simpler) candidate wins: top-k over global over per-genre.
    """
    if optimize not in OPTIMIZE:
        raise GenreclsError(f"optimize must be one of {', '.join(OPTIMIZE)}, not {optimize!r}")
    y_val = np.asarray(y_val).astype(int)
    p_val = np.asarray(p_val, dtype=float)
    pool = candidates(y_val.shape[1])
    whole = _Fitted(y_val, p_val, optimize, default)  # the winner's thresholds, and the scores without folds
    if len(y_val) >= MIN_CV_ROWS:
        decided = [np.zeros_like(y_val) for _ in pool]
        for fit_rows, held in KFold(CV_FOLDS, shuffle=True, random_state=0).split(y_val):
            fitted = _Fitted(y_val[fit_rows], p_val[fit_rows], optimize, default)
            for d, c in zip(decided, pool):
                d[held] = c.fit_from(fitted).decide(p_val[held])
        where = f"{CV_FOLDS}-fold cross-validation on the validation split"
    else:
        decided = [c.fit_from(whole).decide(p_val) for c in pool]
        where = f"the validation split (too few posters, {len(y_val)}, to cross-validate)"
    scores = [score(y_val, d, optimize) for d in decided]
    best = sorted(range(len(pool)), key=lambda i: (-scores[i], -i))[0]
    reason = f"maximised {optimize} F1 in {where} ({scores[best]:.3f}) among {len(pool)} candidate rules"
    return replace(pool[best].fit_from(whole), reason=reason,
                   validation={c.label: round(s, 4) for c, s in zip(pool, scores)})
