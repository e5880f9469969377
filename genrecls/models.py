"""The model factory: backbone + head + compile, OvA assembly, calibration.

Training, tuning and the benchmarks all build their models here, so a model
is assembled the same way wherever it is trained. A whole model reads an
image tensor, or a dict {"image", "text"} when it has a text branch, or
{"text"} alone with --backbone none (`input_names`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from genrecls.backbones import build_backbone, set_trainable
from genrecls.components import (ActiveMembers, Calibration, MemberAdam, MemberWeights, OneFitModel, PadMembers,
                                 StackedBatchNorm, StackedDense)
from genrecls.config import NO_BACKBONE, TrainConfig
from genrecls.distribute import sync_batch_norm
from genrecls.errors import GenreclsError
from genrecls.heads import build_head
from genrecls.modes import Mode
from genrecls.text import TEXT_INPUT


@dataclass
class Built:
    backbone: keras.Model | None  # None: text only
    head: keras.Model  # features (+ text) -> probabilities
    full: keras.Model | None  # image (+ text) -> probabilities; None when built head_only
    trainable: str  # frozen | partial | all | none (no backbone)


def fine_tune(cfg: TrainConfig) -> tuple:
    """(fine_tune_last, freeze_until) for set_trainable: random weights train everything."""
    if cfg.fine_tune_last is None and cfg.freeze_until is None and cfg.weights is None:
        return (-1, None)
    return (cfg.fine_tune_last, cfg.freeze_until)


def new_backbone(cfg: TrainConfig, fine_tune_last: int | None = None) -> tuple[keras.Model, str]:
    """The config's backbone with its trainable layers set (`fine_tune_last` overrides the config).

    (None, "none") for a text-only model."""
    if cfg.backbone == NO_BACKBONE:
        return None, NO_BACKBONE
    backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights)
    layers = (fine_tune_last, None) if fine_tune_last is not None else fine_tune(cfg)
    return backbone, set_trainable(backbone, *layers)


IMAGE_INPUT = "image"  # the name of a whole model's poster input


def input_names(model: keras.Model) -> tuple:
    """What a whole model reads: ("image",), ("image", "text") or ("text",)."""
    return tuple(model.input) if isinstance(model.input, dict) else (IMAGE_INPUT,)


def fresh_inputs(model: keras.Model):
    """New keras.Input tensors like the model's inputs (one tensor, or a dict by name)."""
    return keras.tree.map_structure(lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name),
                                    model.input)


def _through_backbone(backbone: keras.Model, text: bool, trainable: str):
    """(inputs of a whole model, what its head reads): image -> backbone, and the text as it comes."""
    image = keras.Input(backbone.input_shape[1:], name=IMAGE_INPUT)
    features = backbone(image, training=None if trainable == "all" else False)
    if not text:
        return image, features
    words = keras.Input((), dtype="string", name=TEXT_INPUT)
    return {IMAGE_INPUT: image, TEXT_INPUT: words}, {"features": features, TEXT_INPUT: words}


def attach(backbone: keras.Model | None, head: keras.Model, trainable: str, name: str = "genrecls") -> keras.Model:
    """Image (+ text) -> backbone -> head. Frozen or partly tuned backbones run in inference mode.

    Without a backbone (text only) the head is the whole model."""
    if backbone is None:
        return head
    inputs, head_inputs = _through_backbone(backbone, TEXT_INPUT in input_names(head), trainable)
    return keras.Model(inputs, head(head_inputs), name=name)


def build_model(cfg: TrainConfig, outputs: int, activation: str, backbone: tuple | None = None,
                head=None, dropout: float | None = None, name: str = "genrecls", text=None,
                head_only: bool = False) -> Built:
    """Backbone (built, or the (model, trainable) given) + a head of `outputs` units.

    text: a function of the string input giving text features (text.TextEncoder.branch), or None.
    Under a distribution strategy (build in its scope) batch normalization uses the global batch."""
    backbone, trainable = backbone or new_backbone(cfg)
    head = build_head(backbone.output_shape[-1] if backbone is not None else 0, outputs, activation,
                      cfg.head if head is None else head, cfg.dropout if dropout is None else dropout,
                      name=name if backbone is None else f"{name}_head", text_branch=text)
    # head_only: the head is fitted on cached features, so the whole model is not wired up (seconds for a big backbone)
    full = None if head_only else attach(backbone, head, trainable, name=name)
    sync_batch_norm(head if head_only else full)
    return Built(backbone, head, full, trainable)


def optimizer(cfg: TrainConfig, learning_rate: float | None = None, steps_per_epoch: int | None = None,
              members: MemberWeights | None = None, rate_factors: dict | None = None):
    """Adam at the config's rate (or `learning_rate`), on its schedule.

    members: the one-fit OvA model's members (MemberAdam: per-member steps), with `rate_factors`
    {member name: factor} scaling some members' rates."""
    rate = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.lr_schedule == "cosine" and steps_per_epoch:
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps_per_epoch * cfg.epochs, alpha=0.05)
    if members is None:
        return keras.optimizers.Adam(rate)
    factors = rate_factors or {}
    return MemberAdam(members.stacked(), [factors.get(n, 1.0) for n in members.names], learning_rate=rate)


def compile_model(model: keras.Model, mode: Mode, cfg: TrainConfig, learning_rate: float | None = None,
                  pos_weight=None, steps_per_epoch: int | None = None) -> None:
    """Adam (optionally on a cosine schedule), the mode's loss and its metrics."""
    model.compile(optimizer=optimizer(cfg, learning_rate, steps_per_epoch),
                  loss=mode.loss(cfg.loss, pos_weight, cfg.label_smoothing), metrics=mode.metrics())


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _concatenate(outputs: list):
    return keras.layers.Concatenate(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]


def side_by_side(trunks: list) -> keras.Model:
    """Image -> the trunks' features concatenated (`--trunks N`): one backbone of N, read by one head."""
    if len(trunks) == 1:
        return trunks[0]
    for i, trunk in enumerate(trunks):
        trunk.name = f"trunk_{i}"  # nested models need names of their own
    image = fresh_inputs(trunks[0])
    return keras.Model(image, keras.layers.Concatenate(name="trunk_features")([t(image) for t in trunks]),
                       name="trunks")


def combine_heads(heads: list) -> keras.Model:
    """Features (+ text) -> a probability per genre, from OvA member heads."""
    inputs = fresh_inputs(heads[0])
    return keras.Model(inputs, _concatenate([h(inputs) for h in heads]), name="ova_heads")


def _stack_signature(head: keras.Model):
    """A head's input width and layers as (kind, settings); None where a stack cannot hold it (a text branch)."""
    if isinstance(head.input, dict):
        return None
    plan = []
    for layer in head.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Dense) and layer.use_bias:
            plan.append(("dense", layer.units, keras.activations.serialize(layer.activation)))
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.center and layer.scale:
            plan.append(("batch_norm", layer.momentum, layer.epsilon))
        elif isinstance(layer, keras.layers.Dropout):
            plan.append(("dropout", layer.rate))
        else:
            return None
    return (head.input.shape[-1], tuple(plan))


def stack_heads(heads: list, signature: tuple, name: str = "stack") -> keras.Model:
    """Heads of one architecture (their `_stack_signature`) side by side: [features (N, K, d), mask (N, K)]
    -> (N, K), member k reading features[:, k] with the weights in slice k of every weight,
    starting from the heads' own weights. Only the members up to the last one with rows in the
    batch are computed (ActiveMembers); the others' columns are 0.5, masked out of every loss."""
    width, plan = signature
    k = len(heads)
    features = keras.Input((k, width), name="features")
    mask = keras.Input((k,), name="mask")
    x, active = ActiveMembers(name=f"{name}_active")(features, mask)
    for i, (kind, *settings) in enumerate(plan):
        if kind == "dense":
            x = StackedDense(k, *settings, name=f"{name}_dense_{i}")(x)
        elif kind == "batch_norm":
            x = StackedBatchNorm(k, *settings, name=f"{name}_bn_{i}")(x, active)
        else:
            x = keras.layers.Dropout(settings[0], name=f"{name}_dropout_{i}")(x)
    stack = keras.Model([features, mask], PadMembers(k, name=f"{name}_out")(x), name=name)
    stack.set_weights([np.stack(ws).reshape(v.shape) for ws, v in
                       zip(zip(*(h.get_weights() for h in heads)), stack.weights, strict=True)])
    return stack


def one_fit_model(heads: dict) -> tuple[keras.Model, MemberWeights]:
    """{member name: head} -> (the one-fit OvA model, where each member's weights are in it).

    The model reads {"features": (N, K, d), "mask": (N, K)}: slot [n, k] holds a row of member k's
    own batch (preparation.Inputs.member_batches) and gives member k's probability, (N, K) in all.
    Heads of one architecture form one stack (`stack_heads`), so the fit's graph does not grow with
    their number; the columns follow `MemberWeights.names`. Heads with a text branch cannot stack."""
    groups = {}
    for member, head in heads.items():
        signature = _stack_signature(head)
        if signature is None:
            raise GenreclsError("OvA in one fit needs heads on features alone (no text branch)")
        groups.setdefault(signature, []).append(member)
    width = next(iter(groups))[0]
    features = keras.Input((len(heads), width), name="features")
    mask = keras.Input((len(heads),), name="mask")
    members, outputs, start = MemberWeights(), [], 0
    for signature, names in groups.items():
        stack = stack_heads([heads[n] for n in names], signature, name=f"stack_{len(outputs)}")
        members.add(stack, names, [w.shape for w in heads[names[0]].get_weights()])
        part = slice(start, start + len(names))
        outputs.append(stack([features, mask] if len(groups) == 1 else [features[:, part], mask[:, part]]))
        start += len(names)
    return OneFitModel({"features": features, "mask": mask}, _concatenate(outputs), name="ova_one_fit"), members


def combine_members(members: list, backbone: keras.Model | None) -> keras.Model:
    """One model, image -> a probability per genre, from the OvA members.

    With a shared frozen backbone the members are heads on its features and
    the backbone runs once per poster; otherwise each member is a whole model.
    """
    if backbone is not None:
        inputs, head_inputs = _through_backbone(backbone, TEXT_INPUT in input_names(members[0]), "frozen")
        outputs = [m(head_inputs) for m in members]
    else:
        inputs = fresh_inputs(members[0])
        outputs = [m(inputs) for m in members]
    return keras.Model(inputs, _concatenate(outputs), name="genrecls_ova")


def calibrated(model: keras.Model, scale, bias, activation: str) -> keras.Model:
    """The model followed by a Calibration layer (identity numbers give the same outputs)."""
    inputs = fresh_inputs(model)
    layer = Calibration(np.asarray(scale, float).tolist(), np.asarray(bias, float).tolist(), activation,
                        name="calibration")
    return keras.Model(inputs, layer(model(inputs)), name=model.name)
