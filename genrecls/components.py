"""The Keras layers and losses genrecls defines, registered for safe loading.

Everything a saved `.keras` file of a run may contain beyond stock Keras
lives here, so loading a run imports exactly this module.
"""

from __future__ import annotations

import keras
from keras import layers, ops

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="genrecls")
class CaffePreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean (ResNet50's preprocessing)."""

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="genrecls")
class Calibration(layers.Layer):
    """Per-genre recalibration of probabilities, inside the model.

    sigmoid outputs: p -> sigmoid(scale * logit(p) + bias), per genre.
    softmax outputs: p -> softmax(scale * log(p) + bias) over the genres.
    The prior-shift correction is scale 1 and bias -log(odds ratio); Platt
    scaling fits both on validation. Plain numbers, so exports need nothing.
    """

    def __init__(self, scale, bias, activation="sigmoid", **kwargs):
        super().__init__(**kwargs)
        self.scale = [float(v) for v in scale]
        self.bias = [float(v) for v in bias]
        self.activation = activation

    def call(self, probabilities):
        eps = 1e-7
        p = ops.clip(probabilities, eps, 1 - eps)
        scale = ops.convert_to_tensor(self.scale, dtype=p.dtype)
        bias = ops.convert_to_tensor(self.bias, dtype=p.dtype)
        if self.activation == "softmax":
            return ops.softmax(scale * ops.log(p) + bias, axis=-1)
        return ops.sigmoid(scale * (ops.log(p) - ops.log1p(-p)) + bias)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "bias": self.bias, "activation": self.activation}


@keras.saving.register_keras_serializable(package="genrecls")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a per-genre weight on positive labels.

    The multi-label answer to imbalance: Keras's class_weight would weight
    each poster by its argmax genre, which is wrong for multi-hot labels.
    """

    def __init__(self, pos_weight, label_smoothing=0.0, name="weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1 - eps)
        y = ops.cast(y_true, p.dtype)
        y = y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        w = ops.convert_to_tensor(self.pos_weight, dtype=p.dtype)
        loss = -(w * y * ops.log(p) + (1 - y) * ops.log(1 - p))
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="genrecls")
class SoftF1(keras.losses.Loss):
    """1 - macro soft F1 over the batch, plus `bce` times binary cross-entropy.

    Soft F1 counts probabilities as fractional hits, so it is differentiable;
    alone it pushes probabilities to extremes, so a little cross-entropy
    keeps them ranked and calibratable.
    """

    def __init__(self, bce=1.0, name="soft_f1", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.bce = float(bce)

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, y_pred.dtype)
        tp = ops.sum(y * y_pred, axis=0)
        fp = ops.sum((1 - y) * y_pred, axis=0)
        fn = ops.sum(y * (1 - y_pred), axis=0)
        soft_f1 = 2 * tp / (2 * tp + fp + fn + 1e-7)
        loss = 1 - ops.mean(soft_f1)
        if self.bce:
            loss = loss + self.bce * ops.mean(keras.losses.binary_crossentropy(y, y_pred))
        return loss

    def get_config(self):
        return {**super().get_config(), "bce": self.bce}
