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
# With cached features every OvA member is a small head, so all of them train in one Keras fit. The heads
# of one architecture are stacked: every weight gets a leading member axis (StackedDense, StackedBatchNorm),
# so the traced step does not grow with the number of members. Each step holds every member's own next
# batch side by side: features (B, K, d), a mask (B, K) that marks the slots holding a row, labels and
# sample weights (B, K). Member k's batches are those its own fit would draw, in the same order; its loss is
# its own batch's mean (MaskedMemberLoss), its batch-norm statistics are its own rows' and its Adam step
# counts only the steps where it has rows (MemberAdam, told by OneFitModel). So each member is the model its
# own fit would give, up to float rounding and dropout's random draws. The pieces below are used while
# fitting only and never saved (a member is saved as its own head).


class MaskedMemberLoss(keras.losses.Loss):
    """Per-member binary loss of a one-fit OvA model, masked by an (N, K) sample weight.

    `base` is a member's elementwise loss (Keras BinaryCrossentropy or BinaryFocalCrossentropy);
    each element's loss is divided by the batch size N and the weighted values are summed. The
    batches (preparation.Inputs.member_batches) scale a member's weights by N / (its rows in the
    batch), so each member's term is the mean over its own batch that its own fit would minimise.
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


class MemberLosses(keras.metrics.Metric):
    """Each member's mean loss over its own rows (weighted by the sample weight of its column), as
    {member name: value}: one update for all members, so the traced step does not grow with them.

    As validation metrics (weights 1 on a member's rows) they are exactly the losses the members' own
    fits would report, which is what their early stopping watches.
    """

    def __init__(self, loss: MaskedMemberLoss, names: list, name="member_losses", **kwargs):
        super().__init__(name=name, **kwargs)
        self.masked, self.names = loss, list(names)
        self.total = self.add_variable((len(self.names),), initializer="zeros", name="total")
        self.weight = self.add_variable((len(self.names),), initializer="zeros", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self.masked.elementwise(y_true, y_pred)
        w = ops.ones_like(values) if sample_weight is None else ops.cast(sample_weight, values.dtype)
        self.total.assign_add(ops.sum(w * values, axis=0))
        self.weight.assign_add(ops.sum(w, axis=0))

    def result(self):
        losses = ops.divide_no_nan(self.total, self.weight)
        return {name: losses[j] for j, name in enumerate(self.names)}

    def reset_state(self):
        self.total.assign(ops.zeros_like(self.total))
        self.weight.assign(ops.zeros_like(self.weight))


def _per_member(values, variable):
    """A (K,) vector shaped to broadcast over a stacked variable (K, ...)."""
    return ops.reshape(values, (-1,) + (1,) * (len(variable.shape) - 1))


class MemberAdam(keras.optimizers.Adam):
    """Adam with per-member steps and learning rates for the stacked variables of a one-fit OvA model.

    stacked: {id(variable): (a, b)}: the variable's leading axis holds members a..b-1 of the model.
    member_rates: each member's learning-rate factor (a tuned member's own rate; 1 otherwise), scaling
    the rate (and a schedule's every value) of its slices only. Such a slice moves only when its member
    has rows in the step (`member_active`, set by OneFitModel), and its bias correction counts its
    member's own steps (`member_steps`), as Adam in that member's own fit would: Adam is elementwise,
    so each slice gets the update its own fit would, and a member whose set ends early in an epoch
    waits, untouched, while the others finish theirs. Other variables get plain Adam.
    """

    def __init__(self, stacked=None, member_rates=(1.0,), **kwargs):
        super().__init__(**kwargs)
        self._stacked_of = dict(stacked or {})
        self._member_rates = np.asarray(member_rates, "float32")
        self._stacked = ()

    def build(self, variables):
        if not self.built:
            self._stacked = tuple(self._stacked_of.get(id(v)) for v in variables)
            super().build(variables)
            shape = (len(self._member_rates),)
            self.member_active = self.add_variable(shape, initializer="ones", name="member_active")
            self.member_steps = self.add_variable(shape, initializer="zeros", name="member_steps")

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        members = self._stacked[index]
        if members is None:
            return super().update_step(gradient, variable, learning_rate)
        a, b = members
        dtype = variable.dtype
        rate = ops.cast(learning_rate, dtype) * _per_member(ops.convert_to_tensor(self._member_rates[a:b], dtype), variable)
        active = _per_member(ops.cast(self.member_active[a:b], dtype), variable)
        step = _per_member(ops.cast(self.member_steps[a:b], dtype), variable) + 1
        gradient = ops.cast(gradient, dtype)
        alpha = (rate * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step))
                 / (1 - ops.power(ops.cast(self.beta_1, dtype), step)))
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, active * (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, active * (ops.square(gradient) - v) * (1 - self.beta_2))
        self.assign_sub(variable, active * alpha * m / (ops.sqrt(v) + self.epsilon))


class OneFitModel(keras.Model):
    """The one-fit OvA model: before each step it tells MemberAdam which members have rows in the
    batch (the `mask` input), and after it counts their steps. `member_losses` (MemberLosses, set
    before the fit) logs each member's own loss, as `loss_XX` and `val_loss_XX`."""

    member_losses = None

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self.member_losses is not None:
            self.member_losses.update_state(y, y_pred, sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def train_step(self, data):
        active = ops.cast(ops.any(ops.cast(data[0]["mask"], "bool"), axis=0), "float32")
        self.optimizer.member_active.assign(active)
        logs = super().train_step(data)
        self.optimizer.member_steps.assign_add(active)
        return logs


class ActiveMembers(layers.Layer):
    """[features (N, K, d), mask (N, K)] cut to the members up to the last one with rows in the batch.

    The stacked layers below compute only those members: with members ordered by the length of their
    sets (longest first), a member whose epoch is over is not computed while the longer ones finish theirs.
    """

    def call(self, features, mask):
        active = ops.any(ops.cast(mask, "bool"), axis=0)
        last = ops.max(ops.where(active, ops.arange(1, ops.shape(mask)[1] + 1), 0))
        return features[:, :last], mask[:, :last]


class PadMembers(layers.Layer):
    """(N, a, 1) probabilities of the first a members -> (N, K), the rest 0.5 (masked out of every loss)."""

    def __init__(self, members: int, **kwargs):
        super().__init__(**kwargs)
        self.members = int(members)

    def call(self, x):
        x = x[..., 0]
        return ops.pad(x, [[0, 0], [0, self.members - ops.shape(x)[1]]], constant_values=0.5)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members)


class StackedDense(layers.Layer):
    """K dense layers side by side, one per OvA member: (N, a, d) -> (N, a, units) for the first a <= K
    members, member k's kernel kernel[k].

    Computes what K separate Dense layers would, each on its own member's inputs, with one matmul and
    one Adam update per weight instead of K.
    """

    def __init__(self, members: int, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.members, self.units = int(members), int(units)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        shape = (self.members, input_shape[-1], self.units)
        self.kernel = self.add_weight(shape=shape, initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.members, self.units), initializer="zeros", name="bias")

    def call(self, x):
        a = ops.shape(x)[1]
        return self.activation(ops.einsum("nkd,kdu->nku", x, self.kernel[:a]) + self.bias[:a])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        return {**super().get_config(), "members": self.members, "units": self.units,
                "activation": keras.activations.serialize(self.activation)}


class StackedBatchNorm(layers.Layer):
    """K batch normalizations side by side: (N, a, u) and a mask (N, a) -> (N, a, u), the first a members.

    In training each member's statistics are those of its own rows (mask 1), as Keras
    BatchNormalization computes them on that member's batch alone; a member with no rows in the
    batch keeps its moving statistics. Weights (K, u) each: gamma, beta, moving mean and variance.
    """

    def __init__(self, members: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.members, self.momentum, self.epsilon = int(members), float(momentum), float(epsilon)

    def build(self, x_shape, mask_shape=None):
        shape = (self.members, x_shape[-1])
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=shape, initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=shape, initializer="ones", name="moving_variance",
                                               trainable=False)

    def call(self, x, mask, training=None):
        a = ops.shape(x)[1]
        if training:
            w = ops.cast(mask, x.dtype)[..., None]
            count = ops.sum(w, axis=0)
            mean = ops.sum(w * x, axis=0) / ops.maximum(count, 1)
            variance = ops.sum(w * ops.square(x - mean), axis=0) / ops.maximum(count, 1)
            rest = [[0, self.members - a], [0, 0]]  # members past the a computed: no rows, statistics kept
            seen = ops.pad(ops.cast(count > 0, x.dtype), rest) * (1 - self.momentum)
            self.moving_mean.assign(self.moving_mean + seen * (ops.pad(mean, rest) - self.moving_mean))
            self.moving_variance.assign(self.moving_variance + seen * (ops.pad(variance, rest) - self.moving_variance))
        else:
            mean, variance = self.moving_mean[:a], self.moving_variance[:a]
        return (x - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma[:a] + self.beta[:a]

    def compute_output_shape(self, x_shape, mask_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "members": self.members, "momentum": self.momentum, "epsilon": self.epsilon}


class MemberWeights:
    """Each OvA member's weights inside a one-fit model, by member name: a slice of a stack of heads
    (`models.one_fit_model`: every weight holds its members' weights along its first axis).

    get / set read and write members' weights in the layout of the member's own head (its get_weights()),
    so early stopping can keep each member's best epoch and the fitted members can be saved as heads.
    """

    def __init__(self):
        self.groups = []  # (a stack, its member names, the member head's weight shapes)

    @classmethod
    def of_heads(cls, heads: dict) -> "MemberWeights":
        """Separate heads, each a stack of one."""
        members = cls()
        for name, head in heads.items():
            members.add(head, [name], [w.shape for w in head.get_weights()])
        return members

    def add(self, stack, names: list, shapes: list) -> None:
        self.groups.append((stack, list(names), shapes))

    @property
    def names(self) -> list:
        return [name for _, names, _ in self.groups for name in names]

    def get(self, names) -> dict:
        out = {}
        for stack, members, shapes in self.groups:
            wanted = [n for n in members if n in names]
            weights = stack.get_weights() if wanted else []
            for n in wanted:
                k = members.index(n)
                out[n] = [w.reshape(len(members), -1)[k].reshape(s) for w, s in zip(weights, shapes)]
        return out

    def set(self, values: dict) -> None:
        for stack, members, _ in self.groups:
            wanted = [n for n in members if n in values]
            if wanted:
                weights = stack.get_weights()
                for n in wanted:
                    for w, v in zip(weights, values[n]):
                        w.reshape(len(members), -1)[members.index(n)] = np.reshape(v, -1)
                stack.set_weights(weights)

    def stacked(self) -> dict:
        """{id(variable): (a, b)}: each trainable variable's members, as columns a..b-1 of the model (MemberAdam)."""
        out, start = {}, 0
        for stack, members, _ in self.groups:
            out.update({id(v): (start, start + len(members)) for v in stack.trainable_variables})
            start += len(members)
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
