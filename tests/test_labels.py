"""Labels: vocabulary, collapsing, sampling proportions, stratified splits (single- and multi-label)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from genrecls.errors import GenreclsError
from genrecls.labels import (
    GenreVocabulary,
    check_split_covers,
    class_weights,
    collapse,
    oversample,
    ova_subset,
    positive_weights,
    split_posters,
    stratified_split,
    undersample,
)
from tests.helpers import multi_genre_lists, rng_labels

MOVIES = [["Drama"], ["Drama", "Comedy"], ["Comedy"], ["Horror", "Drama"], ["Western"], ["Drama"]]


def test_vocabulary_order_min_count_top_k_and_other(tmp_path):
    vocab = GenreVocabulary.fit(MOVIES)
    assert vocab.names == ["Drama", "Comedy", "Horror", "Western"]
    assert GenreVocabulary.fit(MOVIES, min_count=2).names == ["Drama", "Comedy"]
    top = GenreVocabulary.fit(MOVIES, top_k=2, other=True)
    assert top.names == ["Drama", "Comedy", "Other"]
    Y = top.encode(MOVIES)
    np.testing.assert_array_equal(
        Y, [[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0]]
    )
    assert Y.dtype == np.float32
    top.save(tmp_path / "genres.json")
    assert GenreVocabulary.load(tmp_path / "genres.json") == top


def test_vocabulary_without_other_ignores_outside_genres():
    vocab = GenreVocabulary.fit(MOVIES, genres=["drama", "Western"])
    assert vocab.names == ["Drama", "Western"]
    Y = vocab.encode(MOVIES)
    assert Y[2].sum() == 0 and Y[4].tolist() == [0, 1]


def test_duplicate_and_single_genre_lists():
    assert GenreVocabulary.fit(MOVIES, genres=["Drama", "drama", "Comedy"]).names == ["Drama", "Comedy"]
    with pytest.raises(GenreclsError, match="only 'Drama' is left.*--other"):
        GenreVocabulary.fit(MOVIES, genres=["Drama"])
    assert GenreVocabulary.fit(MOVIES, genres=["Drama"], other=True).names == ["Drama", "Other"]


def test_unknown_genre_is_a_clear_error():
    with pytest.raises(GenreclsError, match="unknown genre.*'Musicals'.*the data has: Comedy, Drama"):
        GenreVocabulary.fit(MOVIES, genres=["Drama", "Musicals"])


def test_collapse_least_and_most_common():
    Y = GenreVocabulary.fit(MOVIES).encode(MOVIES)  # Drama 4, Comedy 2, Horror 1, Western 1
    assert collapse(Y, "least").tolist() == [0, 1, 1, 2, 3, 0]
    assert collapse(Y, "most").tolist() == [0, 0, 1, 0, 3, 0]
    Y[0] = 0
    assert collapse(Y)[0] == -1
    with pytest.raises(GenreclsError):
        collapse(Y, "median")


def test_undersample_cuts_every_class_to_the_smallest():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 7)
    idx = undersample(labels, seed=1)
    assert Counter(labels[idx].tolist()) == {0: 7, 1: 7, 2: 7}
    assert len(set(idx.tolist())) == len(idx)
    np.testing.assert_array_equal(idx, undersample(labels, seed=1))
    assert not np.array_equal(idx, undersample(labels, seed=2))


def test_oversample_reaches_largest_class_within_cap():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 5)
    full = Counter(labels[oversample(labels, seed=0)].tolist())
    assert full == {0: 50, 1: 50, 2: 50}
    capped = Counter(labels[oversample(labels, max_factor=2.0, seed=0)].tolist())
    assert capped == {0: 50, 1: 40, 2: 10}
    # every original poster is still there
    assert set(range(75)) <= set(oversample(labels, max_factor=2.0).tolist())


def test_class_weights_balanced_and_log():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    balanced = class_weights(labels, "balanced")
    assert balanced == pytest.approx({0: 100 / 180, 1: 100 / 90, 2: 100 / 30})
    log = class_weights(labels, "log")
    assert log == pytest.approx({0: 1.0, 1: 1 + np.log(2), 2: 1 + np.log(6)})


def test_positive_weights_per_genre():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype="float32")
    np.testing.assert_allclose(positive_weights(Y), [1 / 3, 1.0, 1.0])
    np.testing.assert_allclose(positive_weights(Y, "log"), [1.0, 1.0, 1.0])


def test_ova_subset_share_and_uniform_negatives():
    Y = np.zeros((1000, 4), dtype="float32")
    Y[:100, 0] = 1  # the genre under test: 100 positives
    Y[100:600, 1] = 1  # 500 of genre 1
    Y[600:900, 2] = 1  # 300 of genre 2
    Y[900:1000, 3] = 1  # 100 of genre 3
    idx, y = ova_subset(Y, 0, positive_share=0.3, seed=0)
    assert y.sum() == 100 and len(y) == 100 + 233  # 30 % positives
    negatives = idx[y == 0]
    per_genre = Counter(Y[negatives].argmax(axis=1).tolist())
    assert per_genre == {1: 78, 2: 78, 3: 77}  # uniform across the other genres
    assert set(idx[y == 1].tolist()) == set(range(100))


def test_ova_subset_fills_from_larger_genres_and_cuts_positives():
    Y = np.zeros((300, 3), dtype="float32")
    Y[:200, 0] = 1
    Y[200:290, 1] = 1
    Y[290:, 2] = 1  # only 10 of genre 2
    idx, y = ova_subset(Y, 0, positive_share=0.5, seed=0)
    # 100 negatives available -> positives cut to 100 to keep the 50 % share
    assert (y == 1).sum() == 100 and (y == 0).sum() == 100
    assert Counter(Y[idx[y == 0]].argmax(axis=1).tolist()) == {1: 90, 2: 10}


def test_stratified_split_fractions_reproducible_and_covering():
    Y = rng_labels(600, 5, seed=3)
    strata = collapse(Y)
    split = stratified_split(strata, seed=7)
    sizes = [len(split.train), len(split.val), len(split.test)]
    assert sizes == [420, 90, 90]
    everything = np.concatenate([split.train, split.val, split.test])
    assert sorted(everything.tolist()) == list(range(600))
    for part in (split.val, split.test):  # class shares match within one poster
        for c in np.unique(strata):
            expected = (strata == c).mean() * len(part)
            assert abs((strata[part] == c).sum() - expected) <= 1
    again = stratified_split(strata, seed=7)
    np.testing.assert_array_equal(split.test, again.test)
    assert not np.array_equal(split.test, stratified_split(strata, seed=8).test)
    check_split_covers(Y, split, list("abcde"))


def test_split_rejects_tiny_classes_and_reports_missing_genre():
    strata = np.array([0] * 50 + [1] * 3)
    with pytest.raises(GenreclsError, match=r"collapsed to genre 'b' \(3\) for a 70%/15%/15% split, which needs 7"):
        stratified_split(strata, names=["a", "b"])
    Y = np.zeros((60, 2), dtype="float32")
    Y[:, 0] = 1
    Y[0, 1] = 1
    split = stratified_split(np.zeros(60, dtype=int))
    with pytest.raises(GenreclsError, match=r"has no poster of genre 'b' \(1 in all\); leave it out"):
        check_split_covers(Y, split, ["a", "b"])


PARTS = ("train", "val", "test")


def test_multilabel_split_stratifies_every_genre_of_multi_genre_posters():
    """Issue #12: nearly every poster has 2-3 genres, and neither --collapse rule gives every genre 7 posters.

    Tolerance: each genre's count in each part stays within 2.5 posters of its fair
    share (part size x prevalence), i.e. prevalence within 0.06 in the 42-poster train
    and within 0.28 in a 9-poster part, whose prevalence moves in steps of 0.11; and
    within 1 poster on average, where a seeded random split is further off.
    """
    lists = multi_genre_lists(60, seed=0)
    vocab = GenreVocabulary.fit(lists)
    Y = vocab.encode(lists)
    assert len(vocab) == 6 and (Y.sum(axis=1) >= 2).mean() > 0.85
    for how in ("least", "most"):  # multiclass cannot learn this table; the other modes can
        with pytest.raises(GenreclsError, match=r"too few posters collapsed to genres? '"):
            split_posters(Y, vocab.names, strata=collapse(Y, how), one_label=True)

    ours, shuffled = [], []
    for seed in range(5):
        split = split_posters(Y, vocab.names, seed=seed)  # multilabel, ova: no strata
        parts = [getattr(split, p) for p in PARTS]
        assert [len(p) for p in parts] == [42, 9, 9]
        assert sorted(np.concatenate(parts).tolist()) == list(range(60))  # no poster in two parts, none lost
        for part in parts:
            assert (Y[part].sum(axis=0) > 0).all()  # every genre in train, val and test
            off = np.abs(Y[part].sum(axis=0) - Y.mean(axis=0) * len(part))
            assert off.max() <= 2.5 + 1e-6
            ours.append(off.mean())
        again = split_posters(Y, vocab.names, seed=seed)
        assert all(np.array_equal(getattr(split, p), getattr(again, p)) for p in PARTS)
        perm = np.random.default_rng(seed).permutation(60)  # an unstratified split of the same sizes
        for q in (perm[:42], perm[42:51], perm[51:]):
            shuffled.append(np.abs(Y[q].sum(axis=0) - Y.mean(axis=0) * len(q)).mean())
    assert np.mean(ours) <= 1.0 and np.mean(ours) < np.mean(shuffled)
    assert not np.array_equal(split_posters(Y, vocab.names, seed=0).test, split_posters(Y, vocab.names, seed=1).test)


def test_multilabel_split_refuses_a_genre_too_rare_for_every_part():
    lists = multi_genre_lists(60, seed=0)
    lists[:3] = [gs + ["Film-Noir"] for gs in lists[:3]]
    vocab = GenreVocabulary.fit(lists)
    with pytest.raises(GenreclsError) as info:
        split_posters(vocab.encode(lists), vocab.names)
    message = str(info.value)
    assert "\n" not in message
    assert message == ("too few posters of genre 'Film-Noir' (3) for a 70%/15%/15% split, which needs 7 to put one "
                       "in every part: leave it out with --min-count 7, --top-k or --genres")
    kept = GenreVocabulary.fit(lists, min_count=7)  # the suggested fix
    assert "Film-Noir" not in kept.names
    split = split_posters(kept.encode(lists), kept.names)
    assert len(split.train) + len(split.val) + len(split.test) == 60
