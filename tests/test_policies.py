"""Decision policies: the rule, its TensorFlow twin, and choosing it on validation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from genrecls.errors import GenreclsError
from genrecls.policies import (OPTIMIZE, Policy, argmax, choose_policy, f1_by_cut, fixed, per_genre_thresholds,
                               score)

P = np.array([[0.9, 0.2, 0.1], [0.6, 0.4, 0.7], [0.3, 0.25, 0.2], [0.05, 0.1, 0.15]])


def test_the_rule_and_its_special_cases():
    assert fixed(3, 0.5).decide(P).tolist() == [[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert argmax(3).decide(P).tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]]
    assert Policy("top-k", [0] * 3, top_k=2).decide(P).sum(axis=1).tolist() == [2, 2, 2, 2]
    at_least_one = Policy("global", [0.5] * 3, at_least_one=True).decide(P)
    assert at_least_one.tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1]]
    capped = Policy("global", [0.3] * 3, top_k=1).decide(P)  # threshold and top-k together
    assert capped.tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("policy", [
    fixed(5, 0.4), argmax(5), Policy("top-k", [0] * 5, top_k=2),
    Policy("per-genre", [0.1, 0.5, 0.7, 0.3, 0.9], at_least_one=True),
    Policy("global", [0.6] * 5, top_k=3, at_least_one=True),
])
def test_numpy_and_tensorflow_decide_the_same(policy):
    p = np.random.default_rng(0).random((64, 5)).astype("float32")
    np.testing.assert_array_equal(policy.decide(p).astype(bool), policy.decide_tf(tf.constant(p)).numpy())


def test_json_round_trip_and_validation():
    genres = ["A", "B", "C"]
    policy = Policy("per-genre", [0.2, 0.3, 0.4], at_least_one=True, reason="why")
    assert Policy.from_json(policy.to_json(genres), genres) == policy
    old = {"source": "per genre", "thresholds": {"A": 0.1, "B": 0.2, "C": 0.3}}  # before policies
    assert Policy.from_json(old, genres).thresholds == pytest.approx((0.1, 0.2, 0.3))  # float32, like the graph
    with pytest.raises(GenreclsError, match="damaged decision policy"):
        Policy.from_json({"kind": "global", "thresholds": {"A": 0.5}}, genres)
    with pytest.raises(GenreclsError, match="thresholds must be numbers in \\[0, 1\\]"):
        Policy("global", [0.5, float("nan"), 0.5])
    with pytest.raises(GenreclsError, match="top_k must be a positive integer"):
        Policy("top-k", [0, 0, 0], top_k=0)
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(GenreclsError, match="shrink must be a number in \\[0, 1\\)"):
            Policy("per-genre", [0.5, 0.5, 0.5], shrink=bad)
    assert Policy("per-genre", [0.5] * 3, shrink=np.float32(0.25)).shrink == 0.25
    with pytest.raises(GenreclsError, match="damaged decision policy"):
        Policy.from_json({"kind": "per-genre", "thresholds": [0.5] * 3, "shrink": "half"}, genres)


def _posters(n: int, seed: int):
    """Two common genres the scores separate well, eight rare ones they do not separate at all."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.5, 0.4] + [0.03] * 8)
    y = (rng.random((n, 10)) < prevalence).astype(int)
    p = np.where(y == 1, rng.beta(5, 2, (n, 10)), rng.beta(2, 5, (n, 10)))
    p[:, 2:] = rng.random((n, 8)) * 0.5  # rare genres: noise
    return y, p


def test_global_threshold_beats_per_genre_thresholds_on_micro_f1():
    """Per-genre F1 thresholds flood the noisy rare genres with positives; one global threshold does not."""
    y_val, p_val = _posters(600, seed=1)
    y_test, p_test = _posters(3000, seed=2)
    per_genre = Policy("per-genre", per_genre_thresholds(y_val, p_val))
    chosen = choose_policy(y_val, p_val, "micro")
    assert chosen.kind != "per-genre"
    assert score(y_test, chosen.decide(p_test), "micro") > score(y_test, per_genre.decide(p_test), "micro") + 0.05
    assert "micro F1 in 5-fold cross-validation on the validation split" in chosen.reason
    assert len(chosen.validation) >= 5


def test_optimizing_macro_keeps_per_genre_thresholds_where_genres_differ():
    rng = np.random.default_rng(3)
    y = (rng.random((800, 3)) < [0.5, 0.2, 0.05]).astype(int)
    # each genre separable, but on its own scale: only per-genre thresholds get all three right
    centres = np.array([0.8, 0.5, 0.2])
    p = np.clip(np.where(y == 1, centres, centres - 0.15) + rng.normal(0, 0.03, y.shape), 0, 1)
    chosen = choose_policy(y, p, "macro")
    assert chosen.kind == "per-genre"
    assert score(y, chosen.decide(p), "macro") > 0.95
    with pytest.raises(GenreclsError, match="optimize must be one of"):
        choose_policy(y, p, "accuracy")


def test_a_threshold_between_two_float32_scores_decides_alike_in_numpy_and_tensorflow():
    low = np.float32(0.3)
    high = np.nextafter(low, np.float32(1))  # neighbouring float32 scores: no float32 midpoint exists
    y = np.array([[0], [1]])
    p = np.array([[low], [high]], dtype=np.float32)
    policy = Policy("per-genre", per_genre_thresholds(y, p))
    assert policy.decide(p).ravel().tolist() == [0, 1]  # the lower score stays out
    assert policy.decide_tf(tf.constant(p)).numpy().ravel().tolist() == [False, True]


@pytest.mark.parametrize("optimize", OPTIMIZE)
def test_the_threshold_sweep_scores_as_scikit_learn_does(optimize):
    rng = np.random.default_rng(4)
    y = (rng.random((40, 5)) < [0.5, 0.3, 0.1, 0.02, 0.0]).astype(int)  # a genre and some posters without positives
    decided = rng.random((6, 40, 5)) < rng.random((6, 1, 1))
    decided[0] = False  # a cut deciding nothing
    for truth in (y, np.zeros_like(y)):  # and a sample without any positive (weighted: no support)
        expected = [score(truth, d.astype(int), optimize) for d in decided]
        np.testing.assert_allclose(f1_by_cut(truth, decided, optimize), expected, atol=1e-12)


def _rare_genres(n: int, seed: int):
    """Ten rare genres, each separable a little and on a scale of its own: per-genre thresholds help, but
    fitted on a dozen positives each they are noisy."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 10)) < 0.04).astype(int)
    centre = np.linspace(0.3, 0.45, 10)
    return y, np.clip(centre + 0.1 * y + rng.normal(0, 0.1, y.shape), 0, 1)


def test_cross_validation_shrinks_noisy_per_genre_thresholds_toward_the_global_one():
    y_test, p_test = _rare_genres(20000, seed=100)
    gains, shrunk = [], []
    for draw in range(12):  # validation splits of 300 posters
        y_val, p_val = _rare_genres(300, seed=draw)
        own = Policy("per-genre", per_genre_thresholds(y_val, p_val))
        chosen = choose_policy(y_val, p_val, "macro")
        gains.append(score(y_test, chosen.decide(p_test), "macro") - score(y_test, own.decide(p_test), "macro"))
        shrunk.append(chosen.kind == "per-genre" and chosen.shrink > 0)
        # in sample the genres' own thresholds always look best: what cross-validation corrects
        assert score(y_val, own.decide(p_val), "macro") >= score(y_val, chosen.decide(p_val), "macro")
    assert np.mean(gains) > 0.002 and min(gains) > -0.01, gains
    assert sum(shrunk) >= 6, shrunk


def test_a_shrunk_policy_sits_between_the_global_and_the_genres_own_thresholds():
    from genrecls.policies import Candidate, global_threshold

    y, p = _rare_genres(300, seed=1)
    own, overall = per_genre_thresholds(y, p), global_threshold(y, p, "macro", False)
    policy = Candidate("per-genre", shrink=0.25).fit(y, p, "macro")
    np.testing.assert_allclose(policy.thresholds, overall + 0.75 * (own - overall), atol=1e-6)
    assert policy.name == "per-genre (shrunk 25% toward global)"
    genres = list("ABCDEFGHIJ")
    assert Policy.from_json(policy.to_json(genres), genres) == policy


@pytest.mark.parametrize("at_least_one", [False, True])
def test_the_threshold_sweep_in_chunks_finds_the_same_threshold(at_least_one, monkeypatch):
    import genrecls.policies as policies

    y, p = _posters(300, seed=7)
    whole = policies.global_threshold(y, p, "micro", at_least_one)
    # the threshold the policy itself scores best among the same cuts (Policy.decide + scikit-learn)
    levels = np.unique(np.quantile(p.astype(np.float32), np.linspace(0, 1, 201)))
    cuts = [policies.between(a, b) for a, b in zip(levels[:-1], levels[1:])]
    scores = [score(y, Policy("global", [c] * 10, at_least_one=at_least_one).decide(p), "micro") for c in cuts]
    assert whole == cuts[int(np.argmax(scores))]
    monkeypatch.setattr(policies, "SWEEP_CELLS", 3 * p.size)  # three cuts at a time
    assert policies.global_threshold(y, p, "micro", at_least_one) == whole
