"""The model factory: backbone + head + compile, OvA assembly, calibration.

Training, tuning and the benchmarks all build their models here, so a model
is assembled the same way wherever it is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from genrecls.backbones import build_backbone, set_trainable
from genrecls.components import Calibration
from genrecls.config import TrainConfig
from genrecls.heads import build_head
from genrecls.modes import Mode


@dataclass
class Built:
    backbone: keras.Model
    head: keras.Model  # features -> probabilities
    full: keras.Model  # image -> probabilities
    trainable: str  # frozen | partial | all


def fine_tune(cfg: TrainConfig) -> tuple:
    """(fine_tune_last, freeze_until) for set_trainable: random weights train everything."""
    if cfg.fine_tune_last is None and cfg.freeze_until is None and cfg.weights is None:
        return (-1, None)
    return (cfg.fine_tune_last, cfg.freeze_until)


def new_backbone(cfg: TrainConfig, fine_tune_last: int | None = None) -> tuple[keras.Model, str]:
    """The config's backbone with its trainable layers set (`fine_tune_last` overrides the config)."""
    backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights)
    layers = (fine_tune_last, None) if fine_tune_last is not None else fine_tune(cfg)
    return backbone, set_trainable(backbone, *layers)


def attach(backbone: keras.Model, head: keras.Model, trainable: str, name: str = "genrecls") -> keras.Model:
    """Image -> backbone -> head. Frozen or partly tuned backbones run in inference mode."""
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    training = None if trainable == "all" else False
    return keras.Model(inputs, head(backbone(inputs, training=training)), name=name)


def build_model(cfg: TrainConfig, outputs: int, activation: str, backbone: tuple | None = None,
                head=None, dropout: float | None = None, name: str = "genrecls") -> Built:
    """Backbone (built, or the (model, trainable) given) + a head of `outputs` units."""
    backbone, trainable = backbone or new_backbone(cfg)
    head = build_head(backbone.output_shape[-1], outputs, activation, cfg.head if head is None else head,
                      cfg.dropout if dropout is None else dropout, name=f"{name}_head")
    return Built(backbone, head, attach(backbone, head, trainable, name=name), trainable)


def optimizer(cfg: TrainConfig, learning_rate: float | None = None, steps_per_epoch: int | None = None):
    rate = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.lr_schedule == "cosine" and steps_per_epoch:
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps_per_epoch * cfg.epochs, alpha=0.05)
    return keras.optimizers.Adam(rate)


def compile_model(model: keras.Model, mode: Mode, cfg: TrainConfig, learning_rate: float | None = None,
                  pos_weight=None, steps_per_epoch: int | None = None) -> None:
    """Adam (optionally on a cosine schedule), the mode's loss and its metrics."""
    model.compile(optimizer=optimizer(cfg, learning_rate, steps_per_epoch),
                  loss=mode.loss(cfg.loss, pos_weight, cfg.label_smoothing), metrics=mode.metrics())


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _concatenate(outputs: list):
    return keras.layers.Concatenate(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]


def combine_heads(heads: list) -> keras.Model:
    """Features -> a probability per genre, from OvA member heads."""
    inputs = keras.Input(heads[0].input_shape[1:], name="features")
    return keras.Model(inputs, _concatenate([h(inputs) for h in heads]), name="ova_heads")


def combine_members(members: list, backbone: keras.Model | None) -> keras.Model:
    """One model, image -> a probability per genre, from the OvA members.

    With a shared frozen backbone the members are heads on its features and
    the backbone runs once per poster; otherwise each member is a whole model.
    """
    if backbone is not None:
        inputs = keras.Input(backbone.input_shape[1:], name="image")
        features = backbone(inputs, training=False)
        outputs = [m(features) for m in members]
    else:
        inputs = keras.Input(members[0].input_shape[1:], name="image")
        outputs = [m(inputs) for m in members]
    return keras.Model(inputs, _concatenate(outputs), name="genrecls_ova")


def calibrated(model: keras.Model, scale, bias, activation: str) -> keras.Model:
    """The model followed by a Calibration layer (identity numbers give the same outputs)."""
    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name.split(":")[0])
    layer = Calibration(np.asarray(scale, float).tolist(), np.asarray(bias, float).tolist(), activation,
                        name="calibration")
    return keras.Model(inputs, layer(model(inputs)), name=model.name)
