"""Decision policies: which genres a poster gets from its probabilities.

A policy is plain data (the run folder saves it, runs.POLICY) with one
rule, applied the same way in NumPy (reports, predict from a run) and in
TensorFlow (the exported graph):

    above    = probability >= threshold of the genre
    top_k    keeps only the k most likely genres (if set)
    at_least_one adds the most likely genre to a poster with none

per-genre thresholds, one global threshold, plain top-k and argmax are all
special cases. `choose_policy` fits each family on the validation split and
keeps the one that maximises the metric the user asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve

from genrecls.errors import GenreclsError

OPTIMIZE = ("micro", "macro", "samples", "weighted")  # the F1 average a policy maximises
TOP_K_CANDIDATES = (1, 2, 3)


@dataclass(frozen=True)
class Policy:
    kind: str  # per-genre | global | top-k | argmax
    thresholds: tuple  # one per genre
    top_k: int | None = None
    at_least_one: bool = False
    reason: str = ""
    validation: dict = field(default_factory=dict)  # candidate -> validation score

    def __post_init__(self):
        # float32, like the probabilities and the exported graph, so NumPy and TF decide alike
        values = tuple(float(np.float32(t)) for t in self.thresholds)
        if not values or not all(math.isfinite(t) and 0 <= t <= 1 for t in values):
            raise GenreclsError(f"policy thresholds must be numbers in [0, 1], not {list(self.thresholds)}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise GenreclsError(f"policy top_k must be a positive integer, not {self.top_k!r}")
        object.__setattr__(self, "thresholds", values)

    @property
    def name(self) -> str:
        return self.kind + (" + at least one" if self.at_least_one and self.kind != "argmax" else "")

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
                       doc.get("reason", ""), doc.get("validation", {}))
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


def global_threshold(y_val, p_val, optimize: str, at_least_one: bool) -> float:
    """The one threshold for every genre that maximises the chosen F1 on validation."""
    k = y_val.shape[1]
    levels = np.unique(np.quantile(np.asarray(p_val, np.float32), np.linspace(0, 1, 201)))
    cuts = [between(a, b) for a, b in zip(levels[:-1], levels[1:])] or [float(levels[0])]
    scores = [score(y_val, Policy("global", [c] * k, at_least_one=at_least_one).decide(p_val), optimize)
              for c in cuts]
    return cuts[int(np.argmax(scores))]


def candidates(y_val, p_val, optimize: str, default: float = 0.5) -> list[Policy]:
    k = y_val.shape[1]
    per_genre = per_genre_thresholds(y_val, p_val, default)
    out = []
    for at_least_one in (False, True):
        out.append(Policy("per-genre", per_genre, at_least_one=at_least_one))
        out.append(Policy("global", [global_threshold(y_val, p_val, optimize, at_least_one)] * k,
                          at_least_one=at_least_one))
    out += [Policy("top-k", [0.0] * k, top_k=n) for n in TOP_K_CANDIDATES if n < k]
    return out


def choose_policy(y_val, p_val, optimize: str = "micro", default: float = 0.5) -> Policy:
    """The candidate policy with the best `optimize` F1 on the validation split.

    Takes only validation arrays, so the test split cannot leak in. On a tie
    the later (simpler) candidate wins: top-k over global over per-genre.
    """
    if optimize not in OPTIMIZE:
        raise GenreclsError(f"optimize must be one of {', '.join(OPTIMIZE)}, not {optimize!r}")
    y_val = np.asarray(y_val).astype(int)
    p_val = np.asarray(p_val, dtype=float)
    pool = candidates(y_val, p_val, optimize, default)
    scores = [score(y_val, c.decide(p_val), optimize) for c in pool]
    label = [f"{c.name}" + (f" k={c.top_k}" if c.top_k else "") for c in pool]
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], -i))
    best = order[0]
    reason = (f"maximised {optimize} F1 on the validation split ({scores[best]:.3f}) "
              f"among {len(pool)} candidate rules")
    return replace(pool[best], reason=reason, validation=dict(zip(label, map(lambda s: round(s, 4), scores))))
