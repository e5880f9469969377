"""Calibration: prior-shift correction, Platt and temperature scaling, ECE, and the Keras layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.special import expit, logit

from genrecls import calibration
from genrecls.components import Calibration


def test_prior_correction_turns_a_balanced_member_into_the_true_prevalence():
    """A member trained on 30 % positives outputs the balanced-set posterior; the correction restores the real one."""
    rng = np.random.default_rng(0)
    prevalence, share = 0.04, 0.3
    n = 200_000
    y = rng.random(n) < prevalence
    x = rng.normal(np.where(y, 1.0, 0.0), 1.0)  # one feature, unit-variance classes
    true_logit = x - 0.5 + logit(prevalence)  # the Bayes posterior at the real prevalence
    balanced = expit(x - 0.5 + logit(share))  # what a perfect member fit on the balanced set outputs
    assert balanced.mean() > 5 * prevalence  # raw: rare genre hugely overstated
    bias = calibration.prior_shift_bias([prevalence], [share])
    corrected = calibration.apply(balanced[:, None], 1.0, bias)[:, 0]
    np.testing.assert_allclose(logit(corrected), true_logit, atol=1e-6)
    assert corrected.mean() == pytest.approx(y.mean(), rel=0.05)


def test_class_weight_and_softmax_corrections():
    # a weighted BCE with positive weight w multiplies the odds by w: dividing them back restores p
    p = np.array([[0.2, 0.6]])
    w = np.array([4.0, 1.0])
    weighted = expit(logit(p) + np.log(w))
    np.testing.assert_allclose(calibration.apply(weighted, 1.0, calibration.prior_shift_bias([0.1, 0.1], [0.1, 0.1], w)), p)
    # softmax trained on uniform classes, real shares 0.6/0.3/0.1: multiply by the prior ratio, renormalise
    q = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
    real = np.array([0.6, 0.3, 0.1])
    bias = calibration.prior_shift_bias(real, [1 / 3] * 3, activation="softmax")
    expected = q * real / (q * real).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(calibration.apply(q, 1.0, bias, "softmax"), expected, atol=1e-9)


def test_platt_recovers_a_known_distortion_and_temperature_a_known_scale():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (20_000, 2))
    y = (rng.random(z.shape) < expit(z)).astype(int)
    distorted = expit((z - 1.0) / 2.0)  # shifted and squashed: the truth is sigmoid(2 * logit + 1)
    scale, bias = calibration.fit_platt(y, distorted)
    np.testing.assert_allclose(scale, [2.0, 2.0], atol=0.1)
    np.testing.assert_allclose(bias, [1.0, 1.0], atol=0.1)
    sparse = np.zeros((100, 1), int)
    sparse[:3] = 1  # too few positives to fit: identity
    assert calibration.fit_platt(sparse, rng.random((100, 1))) == ([1.0], [0.0])


def test_platt_never_turns_a_genre_upside_down():
    """Validation posters that rank against a genre's scores (noise on a rare genre) keep its identity;
    a genre beside it is still fitted."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, (400, 2))
    y = np.stack([rng.random(400) < expit(2 * z[:, 0]), rng.random(400) < expit(-2 * z[:, 1])], axis=1).astype(int)
    scale, bias = calibration.fit_platt(y, expit(z))
    assert scale[0] > 1 and (scale[1], bias[1]) == (1.0, 0.0)
    # the flipped genre's order on new posters is the model's own
    fresh = expit(np.sort(rng.normal(0, 1, (50, 2)), axis=0))
    assert (np.diff(calibration.apply(fresh, scale, bias), axis=0) > 0).all()

    logits = rng.normal(0, 1.5, (20_000, 4))
    truth = np.array([rng.choice(4, p=row) for row in np.exp(logits) / np.exp(logits).sum(1, keepdims=True)])
    hot = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # three times too confident
    assert calibration.fit_temperature(truth, hot) == pytest.approx(1 / 3, rel=0.05)


def test_expected_calibration_error_by_hand():
    y = np.array([[1], [0], [0], [0]])
    p = np.array([[0.9], [0.9], [0.1], [0.1]])  # bin 9: said 0.9, saw 0.5; bin 1: said 0.1, saw 0
    assert calibration.expected_calibration_error(y, p)[0] == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    perfect = calibration.expected_calibration_error(np.array([[1], [0]]), np.array([[1.0], [0.0]]))
    assert perfect[0] == pytest.approx(0.0)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_layer_matches_numpy_and_survives_saving(activation, tmp_path):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), 8) if activation == "softmax" else rng.random((8, 3))
    scale, bias = [1.5, 0.7, 1.0], [0.3, -1.0, 0.0]
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Calibration(scale, bias, activation)(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    expected = calibration.apply(p, scale, bias, activation)
    np.testing.assert_allclose(loaded.predict(p.astype("float32"), verbose=0), expected, atol=1e-5)
