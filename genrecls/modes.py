"""The training modes, as a registry like `backbones.BACKBONES`.

multiclass  one label per poster (collapsed), softmax, categorical cross-entropy
multilabel  multi-hot labels, sigmoid, binary cross-entropy (or focal / soft F1)
ova         one binary member per genre on its own balanced set (report 002),
            combined into one model that outputs a probability per genre

Each record says everything the rest of the package asks of a mode, so no
other module branches on a mode's name. Importing this module does not
import TensorFlow; the Keras pieces are built on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrecls import policies
from genrecls.errors import GenreclsError


@dataclass(frozen=True)
class Mode:
    name: str
    activation: str  # of the output layer
    one_hot: bool  # learns the collapsed single label (one-hot) instead of the multi-hot genres
    members: bool  # built from one binary member per genre
    description: str
    # --calibration's default (config.CALIBRATIONS): OvA members are fitted apart, each on its own balanced set,
    # so their probabilities are put on one scale per genre on validation (Platt) as well as prior-corrected
    calibration: str = "prior"

    def targets(self, Y: np.ndarray, strata: np.ndarray) -> np.ndarray:
        """What the model learns from multi-hot genres Y and the collapsed label of each poster."""
        return np.eye(Y.shape[1], dtype="float32")[strata] if self.one_hot else Y

    def default_policy(self, k: int, threshold: float = 0.5) -> policies.Policy:
        """The decisions of a run never evaluated: argmax for softmax, one global threshold otherwise."""
        return policies.argmax(k) if self.activation == "softmax" else policies.fixed(k, threshold)

    def loss(self, name: str = "bce", pos_weight=None, label_smoothing: float = 0.0):
        """The Keras loss: categorical cross-entropy for softmax, else `name` for sigmoid outputs."""
        import keras

        from genrecls.components import SoftF1, WeightedBinaryCrossentropy

        if self.activation == "softmax":
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        if name == "focal":
            return keras.losses.BinaryFocalCrossentropy(label_smoothing=label_smoothing)
        if name == "soft-f1":
            return SoftF1()
        if pos_weight is not None:
            return WeightedBinaryCrossentropy(pos_weight, label_smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)

    def metrics(self) -> list:
        """Metrics that do not lie about imbalance; every mode reports f1_micro and f1_macro.

        Argmax-based F1 for softmax, thresholded at 0.5 otherwise (Keras's
        F1Score threshold=None means argmax, wrong for multi-label).
        """
        import keras

        threshold = None if self.activation == "softmax" else 0.5
        f1 = [keras.metrics.F1Score(average=a, threshold=threshold, name=f"f1_{a}") for a in ("micro", "macro")]
        if self.activation == "softmax":
            return [keras.metrics.CategoricalAccuracy(name="accuracy"), *f1]
        if self is MEMBER:
            return [keras.metrics.BinaryAccuracy(name="accuracy"), *f1, keras.metrics.Recall(name="recall")]
        return [*f1, keras.metrics.AUC(multi_label=True, name="auc")]


MODES: dict[str, Mode] = {
    "multiclass": Mode("multiclass", "softmax", one_hot=True, members=False,
                       description="one genre per poster (its least common), softmax"),
    "multilabel": Mode("multilabel", "sigmoid", one_hot=False, members=False,
                       description="every genre of a poster, one sigmoid per genre"),
    "ova": Mode("ova", "sigmoid", one_hot=False, members=True,
                description="one binary member per genre on its own balanced set (report 002)", calibration="platt"),
}
# One binary OvA member, labels shaped (N, 1): not a user-facing mode.
MEMBER = Mode("member", "sigmoid", one_hot=False, members=False,
              description="one binary one-vs-all member")


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise GenreclsError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}") from None
