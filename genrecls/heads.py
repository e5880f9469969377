"""Fully connected heads on pooled backbone features (and the text branch, when there is text).

Dense + ReLU + batch normalisation per hidden layer (report 002), optional
dropout before the output, output width and activation set by the mode.
With a text branch the head reads {"features", "text"} (or "text" alone for a
text-only model) and concatenates the poster features with the text features
before its first layer: the fusion of reports 000 and 001.
"""

from __future__ import annotations

from typing import Sequence

from genrecls.errors import GenreclsError

OUTPUT = "probabilities"  # the name of every head's output layer (Grad-CAM reads its logits)

MAX_UNITS = 16384  # widest hidden layer accepted: a wider one exhausts memory before it learns anything
# Named widths that mirror the reports; any comma list works too.
HEAD_PRESETS = {
    "report002": (512, 256),  # two hidden layers; the second is what report 002 tuned (64..512)
    "report004": (1024, 128),
    "small": (128, 64),
}


def parse_units(spec: str | Sequence[int]) -> tuple[int, ...]:
    """'256,128' or a preset name -> (256, 128); '' -> no hidden layer."""
    if not isinstance(spec, str):
        if not isinstance(spec, (list, tuple)) or not all(isinstance(u, int) and not isinstance(u, bool)
                                                          for u in spec):
            raise GenreclsError(f"head must be widths like 256,128 or a preset, not {spec!r}")
        units = tuple(spec)
    elif spec in HEAD_PRESETS:
        units = HEAD_PRESETS[spec]
    else:
        try:
            units = tuple(int(u) for u in spec.split(",") if u.strip())
        except ValueError:
            raise GenreclsError(
                f"head {spec!r} is neither a preset ({', '.join(HEAD_PRESETS)}) nor widths like 256,128"
            ) from None
    if any(not 0 < u <= MAX_UNITS for u in units):
        raise GenreclsError(f"head widths must be whole numbers in [1, {MAX_UNITS}], not {units}")
    return units


def build_head(
    feature_dim: int,
    outputs: int,
    activation: str,
    units: Sequence[int] = HEAD_PRESETS["report002"],
    dropout: float = 0.0,
    name: str = "head",
    text_branch=None,
):
    """Features (feature_dim,) -> `outputs` probabilities (a keras.Model).

    text_branch: a function of the string input returning text features
    (text.TextEncoder.branch); the head then takes a dict with "text" and, when
    feature_dim > 0, "features". Without it the head takes the features tensor.
    """
    import keras
    from keras import layers

    from genrecls.text import TEXT_INPUT

    if not 0 <= dropout < 1:
        raise GenreclsError(f"dropout must be in [0, 1), not {dropout}")
    inputs, parts = {}, []
    if feature_dim:
        inputs["features"] = keras.Input((feature_dim,), name="features")
        parts.append(inputs["features"])
    if text_branch is not None:
        inputs[TEXT_INPUT] = keras.Input((), dtype="string", name=TEXT_INPUT)
        parts.append(text_branch(inputs[TEXT_INPUT]))
    x = layers.Concatenate(name="fused")(parts) if len(parts) > 1 else parts[0]
    inputs = inputs if text_branch is not None else inputs["features"]
    for i, width in enumerate(units):
        x = layers.Dense(width, activation="relu", name=f"dense_{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn_{i}")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(outputs, activation=activation, name=OUTPUT)(x)
    return keras.Model(inputs, out, name=name)
