"""The Keras layers and losses genrecls defines, registered for safe loading.

Everything a saved `.keras` file of a run may contain beyond stock Keras
lives here, so loading a run imports exactly this module.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np
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


# ------------------------------------------------- OvA members fitted as heads of one model
#
# With cached features every OvA member is a small head, so all of them train in one Keras fit: a model
# whose K heads' outputs are concatenated to (N, K), fed the union of the members' balanced sets. Row i
# weighs on member j only as often as it is in j's set (sample weight (N, K), 0 elsewhere), so each member
# still learns from exactly its own set; the heads share no weights, so each gets the gradients it would
# get alone. The pieces below are used while fitting only and never saved (a member is saved as its head).


class MaskedMemberLoss(keras.losses.Loss):
    """Per-member binary loss of a one-fit OvA model, masked by an (N, K) sample weight.

    `base` is a member's elementwise loss (Keras BinaryCrossentropy or BinaryFocalCrossentropy);
    each element's loss is divided by the batch size and the weighted values are summed, so each
    member's term is its weighted mean over the batch, whatever the other members do.
    """

    def __init__(self, base, name="masked_member_loss", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.base = base

    def elementwise(self, y_true, y_pred):
        """(N, K) labels and probabilities -> (N, K) losses (the base loss of each element alone)."""
        return self.base.call(ops.cast(y_true, y_pred.dtype)[..., None], y_pred[..., None])

    def call(self, y_true, y_pred):
        return self.elementwise(y_true, y_pred) / ops.cast(ops.shape(y_pred)[0], y_pred.dtype)


class MemberLoss(keras.metrics.Metric):
    """One member's mean loss over its own rows (weighted by the sample weight of its column).

    As a validation metric it is exactly the loss that member's own fit would report, which is
    what its early stopping watches.
    """

    def __init__(self, loss: MaskedMemberLoss, column: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.masked, self.column = loss, column
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.weight = self.add_variable((), initializer="zeros", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        j = self.column
        values = self.masked.elementwise(y_true[:, j:j + 1], y_pred[:, j:j + 1])[:, 0]
        w = ops.ones_like(values) if sample_weight is None else ops.cast(sample_weight[:, j], values.dtype)
        self.total.assign_add(ops.sum(w * values))
        self.weight.assign_add(ops.sum(w))

    def result(self):
        return ops.divide_no_nan(self.total, self.weight)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)


class MemberAdam(keras.optimizers.Adam):
    """Adam whose learning rate is scaled per group of variables (an OvA member's own rate in one fit).

    rate_factors: [(variables, factor)]; other variables keep factor 1. A factor is a number, or an
    array that broadcasts against the variable (one value per member of a stack, `MemberWeights`).
    It scales the learning rate (and a schedule's every value) of exactly those variables, or those
    slices, as a fit of that member alone would: Adam's update is elementwise.
    """

    def __init__(self, rate_factors=(), **kwargs):
        super().__init__(**kwargs)
        self._factor_of = {id(v): np.asarray(f, "float32") for variables, f in rate_factors for v in variables}
        self._rate_factors = ()

    def build(self, variables):
        if not self.built:
            self._rate_factors = tuple(self._factor_of.get(id(v)) for v in variables)
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        factor = self._rate_factors[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate if factor is None else learning_rate * factor)


@keras.saving.register_keras_serializable(package="genrecls")
class StackedDense(layers.Layer):
    """K dense layers side by side, one per OvA member: member k's kernel is kernel[k].

    Reads (N, d), the features every member shares, or (N, K * d) with `stacked_input`, the previous
    stacked layer's output (member k's d values at k * d); gives (N, K * units), member-major. Stacked
    heads compute exactly what K separate Dense layers would, but a fit traces one matmul and one
    Adam update per layer instead of K, so its graph does not grow with the number of members.
    """

    def __init__(self, members: int, units: int, activation=None, stacked_input: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.members, self.units, self.stacked_input = int(members), int(units), bool(stacked_input)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        d = input_shape[-1] // self.members if self.stacked_input else input_shape[-1]
        self.kernel = self.add_weight(shape=(self.members, d, self.units), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.members, self.units), initializer="zeros", name="bias")

    def call(self, x):
        if self.stacked_input:
            x = ops.reshape(x, (-1, self.members, self.kernel.shape[1]))
            y = ops.einsum("nkd,kdu->nku", x, self.kernel)
        else:
            y = ops.einsum("nd,kdu->nku", x, self.kernel)
        return ops.reshape(self.activation(y + self.bias), (-1, self.members * self.units))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members * self.units)

    def get_config(self):
        return {**super().get_config(), "members": self.members, "units": self.units,
                "activation": keras.activations.serialize(self.activation), "stacked_input": self.stacked_input}


class MemberWeights:
    """Each OvA member's weights inside a one-fit model, by member name: a head of its own, or a slice of a
    stack of heads (`models.stack_heads`, where every weight holds the members' weights member-major).

    get / set read and write members' weights in the layout of the member's own head (its get_weights()),
    so early stopping can keep each member's best epoch and the fitted members can be saved as heads.
    """

    def __init__(self):
        self.groups = []  # (model, member names, the member head's weight shapes, or None: the model is the head)

    @classmethod
    def of_heads(cls, heads: dict) -> "MemberWeights":
        members = cls()
        for name, head in heads.items():
            members.add(head, [name])
        return members

    def add(self, model, names: list, shapes=None) -> None:
        self.groups.append((model, list(names), shapes))

    @property
    def names(self) -> list:
        return [name for _, names, _ in self.groups for name in names]

    def get(self, names) -> dict:
        out = {}
        for model, members, shapes in self.groups:
            wanted = [n for n in members if n in names]
            weights = model.get_weights() if wanted else []
            for n in wanted:
                k = members.index(n)
                out[n] = weights if shapes is None else [
                    w.reshape(len(members), -1)[k].reshape(s) for w, s in zip(weights, shapes)]
        return out

    def set(self, values: dict) -> None:
        for model, members, shapes in self.groups:
            wanted = [n for n in members if n in values]
            if not wanted:
                continue
            if shapes is None:
                model.set_weights(values[wanted[0]])
                continue
            weights = model.get_weights()
            for n in wanted:
                for w, v in zip(weights, values[n]):
                    w.reshape(len(members), -1)[members.index(n)] = np.reshape(v, -1)
            model.set_weights(weights)

    def rate_factors(self, factors: dict) -> list:
        """[(variables, factor)] for MemberAdam: `factors` {member name: learning-rate factor}."""
        out = []
        for model, members, shapes in self.groups:
            if not any(n in factors for n in members):
                continue
            per_member = np.array([factors.get(n, 1.0) for n in members], "float32")
            if shapes is None:
                out.append((model.trainable_variables, float(per_member[0])))
                continue
            for v in model.trainable_variables:  # broadcast over each variable's member-major layout
                rows = np.repeat(per_member, v.shape[0] // len(members))
                out.append(([v], rows.reshape((-1,) + (1,) * (len(v.shape) - 1))))
        return out


class MemberEarlyStopping(keras.callbacks.Callback):
    """Early stopping per member of a one-fit OvA model, each member's best epoch restored.

    members: MemberWeights named by each member's loss metric. Like Keras EarlyStopping on each member's
    own validation loss (`val_<name>`): a member that has waited `patience` epochs without improving
    stops counting (its best epoch is final, however long the others train); the fit stops when every
    member has; at the end each head gets back the weights of its own best epoch. The state and the
    best weights are written to `state_dir` every epoch, so a fit resumed by BackupAndRestore carries
    on; the folder is removed when the fit ends. `state[name]["stopped"]` is the last epoch a member
    counted (None: it never ran out of patience).
    """

    def __init__(self, members: MemberWeights, patience: int, state_dir):
        super().__init__()
        self.members, self.patience, self.state_dir = members, patience, Path(state_dir)

    def on_train_begin(self, logs=None):
        saved = self.state_dir / "state.json"
        names = self.members.names
        self.state = json.loads(saved.read_text()) if saved.exists() else {
            name: {"best": math.inf, "best_epoch": None, "wait": 0, "stopped": None} for name in names}
        self.best = {name: self._load(name) for name in names if self.state[name]["best_epoch"] is not None}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        improved = []
        for name, s in self.state.items():
            if s["stopped"] is not None:
                continue
            current = logs.get(f"val_{name}", math.nan)
            s["wait"] += 1
            if current < s["best"] or s["best_epoch"] is None:
                s.update(best=float(current), best_epoch=epoch, wait=0)
                improved.append(name)
            elif s["wait"] >= self.patience and epoch > 0:
                s["stopped"] = epoch
        for name, weights in self.members.get(improved).items():
            self.best[name] = weights
            np.savez(self.state_dir / f"{name}.npz", *weights)
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_dir / "state.json")
        if all(s["stopped"] is not None for s in self.state.values()):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.members.set(self.best)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _load(self, name: str) -> list:
        with np.load(self.state_dir / f"{name}.npz") as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]
