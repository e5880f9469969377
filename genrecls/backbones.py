"""Interchangeable feature extractors, each carrying its own preprocessing.

Every backbone is a Keras model from float images in 0..255 to a pooled
feature vector. The preprocessing a family expects lives inside the model
(EfficientNet rescales itself; ResNet50 is caffe-style BGR mean subtraction;
InceptionV3 scales to [-1, 1]), so callers never preprocess by hand and an
exported model takes raw pixels.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable

from genrecls.errors import GenreclsError

# The registry below is plain data, so genrecls.config can read names and sizes
# without importing TensorFlow; Keras is imported when a backbone is built.


def _simple_cnn(input_shape, weights=None, name="simple"):
    """A small scratch CNN (reports 000 and 003): conv-BN-ReLU-pool blocks."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255.0)(inputs)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    model = keras.Model(inputs, x, name=name)
    if weights:
        model.load_weights(weights)
    return model


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one family: the Keras builder and its preprocessing."""

    builder: str | Callable  # a keras.applications name, or a function of (input_shape, weights)
    default_size: int
    preprocess: str | None  # a PREPROCESSING key; None: the model rescales itself
    imagenet_file: str | None  # the file Keras downloads for weights="imagenet"
    imagenet_md5: str | None = None  # set where a local copy of that file must go through Keras's cache

    @property
    def pretrained(self) -> bool:
        return self.imagenet_file is not None

    def build_base(self, shape, weights):
        import keras

        if callable(self.builder):
            return self.builder(shape, weights=weights)
        return getattr(keras.applications, self.builder)(include_top=False, weights=weights, input_shape=shape)


def _caffe():
    from genrecls.components import CaffePreprocess

    return CaffePreprocess()


def _minus_one_to_one():
    from keras import layers

    return layers.Rescaling(1 / 127.5, offset=-1.0)


PREPROCESSING = {"caffe": _caffe, "minus_one_to_one": _minus_one_to_one}


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnetb0": BackboneSpec(
        "EfficientNetB0", 224, None, "efficientnetb0_notop.h5",
        imagenet_md5="50bc09e76180e00e4465e1a485ddc09d",  # Keras's own checksum of that file
    ),
    "efficientnetv2b0": BackboneSpec(
        "EfficientNetV2B0", 224, None, "efficientnetv2-b0_notop.h5",
        imagenet_md5="893217f2bb855e2983157299931e43ff",
    ),
    "resnet50": BackboneSpec(
        "ResNet50", 224, "caffe",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "inceptionv3": BackboneSpec(
        "InceptionV3", 299, "minus_one_to_one",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "simple": BackboneSpec(_simple_cnn, 64, None, None),
}


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models or ~/.keras/models."""
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise GenreclsError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def normalize_weights(weights: str | None) -> str | None:
    """'none'/None -> None; 'imagenet' and file paths stay (files are checked when building)."""
    if weights is None or str(weights).lower() in ("none", ""):
        return None
    return weights if weights == "imagenet" else os.path.abspath(weights)


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _install_in_cache(spec: BackboneSpec, path: str) -> None:
    """Put a local copy of the official EfficientNet file where Keras looks for it.

    Passing that file's path straight to EfficientNet would skip a rescaling
    fix that the 'imagenet' route applies, silently changing the outputs.
    """
    target = os.path.join(keras_cache_dir(), spec.imagenet_file)
    if os.path.exists(target) and _md5(target) == spec.imagenet_md5:
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(path, target)


def _missing_weights_error(name: str, spec: BackboneSpec, exc: Exception) -> GenreclsError:
    wanted = spec.imagenet_file
    found = re.search(r"https?://\S+?/([^/\s:]+\.h5)", str(exc))
    if found:
        wanted = found.group(1)
    return GenreclsError(
        f"cannot get ImageNet weights for {name}: Keras could not download {wanted} "
        f"into {keras_cache_dir()} ({str(exc).splitlines()[0][:160]}). Put that file there, "
        "pass --weights PATH to a local weights file, or use --weights none to train from scratch."
    )


def build_backbone(name: str, image_size: int | None = None, weights: str | None = "imagenet"):
    """Image (size, size, 3) in 0..255 -> pooled features, preprocessing included.

    weights: 'imagenet' (Keras downloads and caches them), None/'none' for
    random initialisation, or the path of a weights file.
    """
    spec = get_spec(name)
    size = image_size or spec.default_size
    weights = normalize_weights(weights)
    if weights == "imagenet" and not spec.pretrained:
        raise GenreclsError(f"backbone {name!r} has no ImageNet weights; use --weights none or a file")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise GenreclsError(f"weights file {weights} does not exist; use 'imagenet', 'none' or a file path")
    shape = (size, size, 3)
    keras_weights, load_after = weights, None
    if weights not in (None, "imagenet") and spec.imagenet_md5:
        if _md5(weights) == spec.imagenet_md5:  # the official file: go the 'imagenet' way
            _install_in_cache(spec, weights)
            keras_weights = "imagenet"
        else:  # the user's own weights for this network (e.g. saved after fine-tuning)
            keras_weights, load_after = None, weights
    import keras
    from keras import layers

    try:
        base = spec.build_base(shape, keras_weights)
        if load_after:
            base.load_weights(load_after)
    except Exception as exc:  # Keras raises a bare Exception when a download fails
        if keras_weights == "imagenet":
            raise _missing_weights_error(name, spec, exc) from None
        raise GenreclsError(
            f"cannot build {name} at {size}x{size} with weights {weights}: {str(exc).splitlines()[0][:200]}"
        ) from None

    inputs = keras.Input(shape, name="image")
    x = PREPROCESSING[spec.preprocess]()(inputs) if spec.preprocess else inputs
    x = base(x)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name=f"{name}_backbone")


def base_network(backbone):
    """The keras.applications (or scratch) network inside a backbone."""
    import keras

    nested = [layer for layer in backbone.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else backbone


def set_trainable(backbone, fine_tune_last: int | None = None, freeze_until: int | None = None) -> str:
    """Freeze the backbone, or unfreeze its last N layers / the layers from an index.

    fine_tune_last=N: the last N layers of the base network train (report
    004 trains the last 40 of ResNet50). freeze_until=K: layers before
    index K stay frozen (report 003 freezes the first 172 of InceptionV3).
    -1 for fine_tune_last trains everything. Batch-norm layers always stay
    frozen, so they keep their ImageNet statistics while the rest adapts.
    Returns the mode name: "frozen", "partial" or "all".
    """
    if fine_tune_last is not None and freeze_until is not None:
        raise GenreclsError("give either --fine-tune-last or --freeze-until, not both")
    from keras import layers

    base = base_network(backbone)
    all_layers = base.layers
    if fine_tune_last == -1:
        first = 0
    elif fine_tune_last is not None:
        first = max(0, len(all_layers) - fine_tune_last)
    elif freeze_until is not None:
        first = freeze_until
    else:
        first = len(all_layers)
    if not 0 <= first <= len(all_layers):
        raise GenreclsError(f"layer index {first} is outside 0..{len(all_layers)} for {base.name}")
    backbone.trainable = True
    for i, layer in enumerate(all_layers):
        frozen = i < first or (first > 0 and isinstance(layer, layers.BatchNormalization))
        layer.trainable = not frozen
    if first == len(all_layers):
        backbone.trainable = False
        return "frozen"
    return "all" if first == 0 else "partial"
