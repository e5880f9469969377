"""Labels: genre vocabulary, multi-hot and single labels, balancing, splits.

Sampling helpers return *index arrays* into the table, so they compose with
any table and never copy images. Every random choice takes a seed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MultiLabelBinarizer
from sklearn.utils.class_weight import compute_class_weight

from genrecls.errors import GenreclsError

OTHER = "Other"


@dataclass(frozen=True)
class GenreVocabulary:
    """The fixed, ordered list of genres a model predicts.

    other: name of the catch-all column (report 004's "Others"), or None.
    A movie gets the catch-all when any of its genres is outside the list.
    """

    genres: tuple[str, ...]
    other: str | None = None

    @classmethod
    def fit(
        cls,
        genre_lists: Sequence[Sequence[str]],
        *,
        min_count: int = 1,
        top_k: int | None = None,
        other: bool = False,
        genres: Sequence[str] | None = None,
    ) -> "GenreVocabulary":
        """Choose the genres: an explicit list, or the top-k of those with min_count posters.

        Order is by descending count (ties by name), so the vocabulary of a
        given table is reproducible.
        """
        counts = Counter(g for gs in genre_lists for g in gs)
        if genres is not None:
            by_lower = {g.lower(): g for g in counts}
            unknown = [g for g in genres if g.strip().lower() not in by_lower]
            if unknown:
                raise GenreclsError(
                    f"unknown genre(s) {', '.join(map(repr, unknown))}; "
                    f"the data has: {', '.join(sorted(counts))}"
                )
            chosen = list(dict.fromkeys(by_lower[g.strip().lower()] for g in genres))
        else:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            chosen = [g for g, n in ranked if n >= min_count]
            if top_k is not None:
                chosen = chosen[:top_k]
        if not chosen:
            raise GenreclsError(f"no genre has at least {min_count} posters")
        if other and OTHER in chosen:
            raise GenreclsError(f"the data already has a genre named {OTHER!r}")
        if len(chosen) + bool(other) < 2:
            raise GenreclsError(
                f"only {chosen[0]!r} is left to predict: every poster would be that genre. "
                "Keep at least two genres, or add --other for everything else"
            )
        return cls(tuple(chosen), OTHER if other else None)

    @property
    def names(self) -> list[str]:
        """Column names of the label matrix: the genres, then the catch-all."""
        return list(self.genres) + ([self.other] if self.other else [])

    def __len__(self) -> int:
        return len(self.names)

    def restrict(self, genre_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each movie's genres within the vocabulary (plus the catch-all)."""
        known = set(self.genres)
        out = []
        for gs in genre_lists:
            kept = [g for g in gs if g in known]
            if self.other and len(kept) < len(gs):
                kept.append(self.other)
            out.append(kept)
        return out

    def encode(self, genre_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Multi-hot matrix (N, K) float32; genres outside the vocabulary are ignored."""
        binarizer = MultiLabelBinarizer(classes=self.names)
        return binarizer.fit_transform(self.restrict(genre_lists)).astype("float32")

    def to_json(self) -> dict:
        return {"genres": list(self.genres), "other": self.other}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, doc) -> "GenreVocabulary":
        """The vocabulary a run saved, checked: distinct non-empty names, at least two columns."""
        genres, other = (doc.get("genres"), doc.get("other")) if isinstance(doc, dict) else (doc, None)
        names = list(genres) + [other] if isinstance(genres, list) and other is not None else genres
        if not isinstance(names, list) or not all(isinstance(g, str) and g.strip() for g in names):
            raise GenreclsError("genres must be a list of genre names")
        if len(set(names)) != len(names) or len(names) < 2:
            raise GenreclsError(f"genres must be at least two distinct names, not {names}")
        return cls(tuple(genres), other)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GenreVocabulary":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))


def keep_labelled(Y: np.ndarray) -> np.ndarray:
    """Indices of rows with at least one genre in the vocabulary."""
    return np.flatnonzero(Y.sum(axis=1) > 0)


# ------------------------------------------------------------------ one label


def collapse(Y: np.ndarray, how: str = "least") -> np.ndarray:
    """One class index per movie: its least (report 002) or most common genre.

    Commonness is counted over Y itself; ties go to the earlier column, so
    the result is deterministic. Rows with no genre get -1.
    """
    if how not in ("least", "most"):
        raise GenreclsError(f"collapse how must be 'least' or 'most', not {how!r}")
    counts = Y.sum(axis=0).astype(float)
    # Score each present genre by its count; absent genres can never win.
    if how == "least":
        scores = np.where(Y > 0, counts, np.inf)
        out = scores.argmin(axis=1)
    else:
        scores = np.where(Y > 0, counts, -np.inf)
        out = scores.argmax(axis=1)
    out[Y.sum(axis=1) == 0] = -1
    return out


# ------------------------------------------------------------------ balancing


def _by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {c: np.flatnonzero(labels == c) for c in np.unique(labels)}


def undersample(labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices with every class cut to the size of the smallest (report 002)."""
    rng = np.random.default_rng(seed)
    groups = _by_class(labels)
    smallest = min(len(idx) for idx in groups.values())
    picked = [rng.choice(idx, smallest, replace=False) for idx in groups.values()]
    return np.sort(np.concatenate(picked))


def oversample(labels: Sequence[int], max_factor: float | None = None, seed: int = 0) -> np.ndarray:
    """Indices with every class repeated up to the largest class's size.

    max_factor caps the growth: a class grows to at most max_factor times
    its own size, so a tiny class is not copied a hundred times over.
    Every original index is kept; extra copies are drawn at random.
    """
    rng = np.random.default_rng(seed)
    groups = _by_class(labels)
    largest = max(len(idx) for idx in groups.values())
    picked = []
    for idx in groups.values():
        target = largest if max_factor is None else min(largest, int(len(idx) * max_factor))
        extra = rng.choice(idx, max(0, target - len(idx)), replace=True)
        picked.append(np.concatenate([idx, extra]))
    return np.sort(np.concatenate(picked))


def class_weights(labels: Sequence[int], method: str = "balanced") -> dict[int, float]:
    """Keras `class_weight` for single-label (multiclass, OvA) training.

    balanced: n / (k * n_c), scikit-learn's rule (report 004).
    log: 1 + ln(n_max / n_c), a log-smoothed weight (report 003) that
        favours rare classes without giving them huge weights.
    Not for multi-hot labels: Keras would weight each row by its argmax.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if method == "balanced":
        weights = compute_class_weight("balanced", classes=classes, y=labels)
    elif method == "log":
        counts = np.array([(labels == c).sum() for c in classes], dtype=float)
        weights = 1.0 + np.log(counts.max() / counts)
    else:
        raise GenreclsError(f"class weight method must be 'balanced' or 'log', not {method!r}")
    return {int(c): float(w) for c, w in zip(classes, weights)}


def positive_weights(Y: np.ndarray, method: str = "balanced") -> np.ndarray:
    """Per-genre weight of a positive label, for a weighted binary cross-entropy.

    balanced: n_negative / n_positive per genre; log: 1 + ln of that ratio.
    A genre with no positives gets weight 1 (there is nothing to weight).
    """
    pos = Y.sum(axis=0).astype(float)
    neg = len(Y) - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    if method == "balanced":
        return ratio.astype("float32")
    if method == "log":
        return (1.0 + np.log(np.maximum(ratio, 1.0))).astype("float32")
    raise GenreclsError(f"positive weight method must be 'balanced' or 'log', not {method!r}")


def ova_subset(
    Y: np.ndarray, genre: int, positive_share: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A balanced binary set for one genre's one-vs-all member (report 002).

    Positives are the movies with the genre; negatives are drawn so that
    each other genre (a negative's least common genre) contributes equally,
    filling up from larger genres when a small one runs out. When there are
    too few negatives, positives are cut to keep the share.
    Returns (indices, binary labels).
    """
    if not 0 < positive_share < 1:
        raise GenreclsError(f"positive share must be between 0 and 1, not {positive_share}")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(Y[:, genre] > 0)
    neg = np.flatnonzero(Y[:, genre] == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise GenreclsError(
            f"genre column {genre} has {'no' if len(pos) == 0 else 'only'} positives in this split; "
            "a one-vs-all member needs both (use more data or fewer genres)"
        )
    others = Y[neg].copy()
    others[:, genre] = 0
    strata = collapse(others, "least")
    groups = [rng.permutation(neg[strata == s]) for s in np.unique(strata)]

    n_neg = round(len(pos) * (1 - positive_share) / positive_share)
    if n_neg > len(neg):
        n_neg = len(neg)
        n_pos = max(1, round(n_neg * positive_share / (1 - positive_share)))
        pos = rng.choice(pos, min(n_pos, len(pos)), replace=False)
    quotas = _water_fill([len(g) for g in groups], n_neg)
    chosen_neg = np.concatenate([g[:q] for g, q in zip(groups, quotas)])
    idx = np.concatenate([pos, chosen_neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(chosen_neg))]).astype("float32")
    order = np.argsort(idx, kind="stable")
    return idx[order], y[order]


def _water_fill(sizes: list[int], total: int) -> list[int]:
    """Split `total` as evenly as possible over groups of the given sizes."""
    quotas = [0] * len(sizes)
    open_groups = [i for i, s in enumerate(sizes) if s > 0]
    left = total
    while left > 0 and open_groups:
        share, extra = divmod(left, len(open_groups))
        for rank, i in enumerate(list(open_groups)):
            take = min(sizes[i] - quotas[i], share + (1 if rank < extra else 0))
            quotas[i] += take
            left -= take
        open_groups = [i for i in open_groups if quotas[i] < sizes[i]]
    return quotas


# --------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_json(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


def split_posters(
    Y: np.ndarray,
    names: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strata: Sequence[int] | None = None,
    one_label: bool = False,
) -> Split:
    """The train/validation/test split of a labelled table: the one place it is made.

    Every mode gets the same split of a table and seed, stratified by
    iterative stratification on every genre and on the collapsed label
    (strata) at once, so runs in different modes are scored on the same test
    posters (`genrecls compare`). one_label (multiclass, which learns the
    collapsed label) also requires every collapsed class in every part.
    A genre missing from a part is a GenreclsError naming the genre and the fix.
    """
    collapsed = None if strata is None else np.eye(Y.shape[1], dtype=bool)[np.asarray(strata)]
    if one_label:  # strata given: multiclass learns them
        _refuse_rare_collapsed(dict(enumerate(collapsed.sum(axis=0).tolist())), names, fractions)
    split = multilabel_split(Y, fractions, seed, names, also=collapsed)
    check_split_covers(Y, split, names)
    if one_label:
        check_split_covers(collapsed, split, [f"{n} (collapsed)" for n in names])
    return split


def _part_sizes(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Posters per part, as two scikit-learn splits make them: floor(train share), then val, test the rest."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise GenreclsError(f"split fractions must be three positive numbers summing to 1, not {tuple(fractions)}")
    train = math.floor(fractions[0] * n)
    val = math.floor(fractions[1] / (fractions[1] + fractions[2]) * (n - train))
    return np.array([train, val, n - train - val])


def _refuse_rare(counts: dict, names: Sequence[str] | None, fractions, of: str, fix: str) -> None:
    """Raise, naming them, when genres (column index -> posters) have too few posters to reach every part."""
    needed = math.ceil(1 / min(fractions))
    rare = [(names[j] if names is not None else f"#{j}", n) for j, n in counts.items() if n < needed]
    if rare:
        listed = ", ".join(f"{name!r} ({n})" for name, n in rare)
        raise GenreclsError(
            f"too few posters {of} genre{'s' if len(rare) > 1 else ''} {listed} for a "
            f"{'/'.join(f'{f:.0%}' for f in fractions)} split, which needs {needed} to put one in every part: "
            + fix.format(needed=needed, it="it" if len(rare) == 1 else "them")
        )


def _refuse_rare_collapsed(counts: dict, names, fractions) -> None:
    """`_refuse_rare` for collapsed labels (class index -> posters), with the fixes that apply to them."""
    _refuse_rare(counts, names, fractions, "collapsed to",
                 "try the other --collapse rule, leave {it} out with --top-k or --genres, "
                 "or train in multilabel or ova mode, which learn every genre")


def stratified_split(
    strata: Sequence[int],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> Split:
    """Seeded train/validation/test indices, stratified on one label per movie (scikit-learn).

    Not the package's split (`split_posters`); kept for the label-scaling benchmark's baseline.

    names: the genre of each class index, for messages. A class with fewer
    than ceil(1 / smallest fraction) posters (7 for 70/15/15) is refused
    with a GenreclsError naming its genre, rather than letting a part miss it.
    """
    strata = np.asarray(strata)
    _part_sizes(len(strata), fractions)  # checks the fractions; scikit-learn makes the same sizes
    _refuse_rare_collapsed(dict(sorted(Counter(strata.tolist()).items())), names, fractions)
    idx = np.arange(len(strata))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=strata, random_state=seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = train_test_split(rest, train_size=val_share, stratify=strata[rest], random_state=seed)
    return Split(np.sort(train), np.sort(val), np.sort(test))


def multilabel_split(
    Y: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] | None = None,
    also: np.ndarray | None = None,
) -> Split:
    """Seeded train/validation/test indices, stratified on every genre at once.

    also: further label columns to stratify on (the collapsed label), never refused as rare.

    Iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011):
    take the genre with the fewest posters still unplaced and deal those
    posters out one by one, each to the part that still wants the most of
    that genre (ties: the part with the most room left); repeat until every
    poster is placed. The seed shuffles the posters first, so it decides
    which posters go where. Two changes to the paper: a full part takes no
    more, so the part sizes are exactly those of `stratified_split`
    (floor(70 % of n) train, then half the rest rounded down for val), and a
    part still missing more of the poster's genres comes first, so every
    genre reaches every part whenever it can.

    A genre with fewer than ceil(1 / smallest fraction) posters (7 for
    70/15/15) cannot have a fair share in every part, and its validation
    thresholds and test F1 would rest on one or no poster: it is refused with
    a GenreclsError that names it and says how to leave it out (--min-count,
    --top-k or --genres), rather than training on a split that misses it.
    """
    Y = np.asarray(Y) > 0
    sizes = _part_sizes(len(Y), fractions)
    _refuse_rare(dict(enumerate(Y.sum(axis=0).tolist())), names, fractions, "of",
                 "leave {it} out with --min-count {needed}, --top-k or --genres")
    if also is not None:
        Y = np.hstack([Y, np.asarray(also) > 0])
    room = sizes.copy()  # posters each part still takes
    want = np.outer(sizes / len(Y), Y.sum(axis=0))  # posters of each genre each part still wants
    has = np.zeros(want.shape, dtype=bool)  # part already holds the genre
    part = np.full(len(Y), -1)
    left = np.random.default_rng(seed).permutation(len(Y))  # unplaced posters, in seeded order
    while left.size:
        counts = Y[left].sum(axis=0)
        if not counts.any():  # posters without a genre fill the room that is left
            part[left] = np.repeat(np.arange(3), room)
            break
        genre = np.flatnonzero(counts == counts[counts > 0].min())[0]
        for row in left[Y[left, genre]]:
            p = max(np.flatnonzero(room > 0), key=lambda p: ((Y[row] & ~has[p]).sum(), want[p, genre], room[p]))
            part[row] = p
            room[p] -= 1
            want[p, Y[row]] -= 1
            has[p, Y[row]] = True
        left = left[part[left] < 0]
    return Split(*(np.flatnonzero(part == p) for p in range(3)))


def check_split_covers(Y: np.ndarray, split: Split, names: Sequence[str]) -> None:
    """Raise when a genre has no poster in some part (its thresholds or F1 would be meaningless)."""
    for part in ("train", "val", "test"):
        missing = np.flatnonzero(Y[getattr(split, part)].sum(axis=0) == 0)
        if missing.size:
            listed = ", ".join(f"{names[j]!r} ({int(Y[:, j].sum())} in all)" for j in missing)
            raise GenreclsError(
                f"the {part} split has no poster of genre{'s' if missing.size > 1 else ''} {listed}; "
                f"leave {'it' if missing.size == 1 else 'them'} out with --min-count, --top-k or --genres, or add data"
            )
