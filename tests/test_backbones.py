"""Backbones: shapes, preprocessing inside the model, weights, fine-tuning."""

from __future__ import annotations

import urllib.error

import keras
import numpy as np
import pytest

from genrecls.backbones import base_network, build_backbone, set_trainable
from genrecls.errors import GenreclsError
from genrecls.heads import build_head, parse_units

FAMILY_PREPROCESS = {
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "efficientnetv2b0": keras.applications.efficientnet_v2.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "inceptionv3": keras.applications.inception_v3.preprocess_input,
}
SIZES = {"inceptionv3": 75}  # InceptionV3's smallest input


@pytest.mark.parametrize("name", sorted(FAMILY_PREPROCESS))
def test_backbone_shape_and_preprocessing_match_keras(name):
    size = SIZES.get(name, 32)
    backbone = build_backbone(name, size, weights=None)
    base = base_network(backbone)
    assert backbone.input_shape == (None, size, size, 3)
    assert backbone.output_shape == (None, base.output_shape[-1])
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    # The reference: the family's own preprocess_input, then the same network, pooled.
    reference = base(FAMILY_PREPROCESS[name](x.copy()), training=False).numpy().mean(axis=(1, 2))
    ours = backbone(x, training=False).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_simple_backbone_and_unknown_name():
    backbone = build_backbone("simple", 32, weights="none")
    assert backbone.output_shape == (None, 128)
    with pytest.raises(GenreclsError, match="unknown backbone 'vgg16'.*efficientnetv2b0"):
        build_backbone("vgg16")
    with pytest.raises(GenreclsError, match="no ImageNet weights"):
        build_backbone("simple", 32, weights="imagenet")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Keras cache, whatever machine the tests run on."""
    from keras.src.utils import file_utils

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_missing_imagenet_weights_is_a_clear_error(offline):
    with pytest.raises(GenreclsError) as err:
        build_backbone("resnet50", 32, weights="imagenet")
    message = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(offline) in message and "--weights none" in message


def test_local_weights_file(tmp_path, offline):
    first = build_backbone("resnet50", 32, weights=None)
    path = tmp_path / "resnet.weights.h5"
    base_network(first).save_weights(path)
    second = build_backbone("resnet50", 32, weights=str(path))
    x = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(second(x).numpy(), first(x).numpy(), rtol=1e-5)
    with pytest.raises(GenreclsError, match="does not exist"):
        build_backbone("resnet50", 32, weights=str(tmp_path / "absent.h5"))
    # An EfficientNet file that is not Keras's official one (checked by its md5)
    # loads directly; a file that is no weights file at all is a clear error.
    effnet = build_backbone("efficientnetb0", 32, weights=None)
    own = tmp_path / "effnet.weights.h5"
    base_network(effnet).save_weights(own)
    again = build_backbone("efficientnetb0", 32, weights=str(own))
    np.testing.assert_allclose(again(x).numpy(), effnet(x).numpy(), rtol=1e-5, atol=1e-6)
    fake = tmp_path / "mine.h5"
    fake.write_bytes(b"not a weights file")
    with pytest.raises(GenreclsError, match="cannot build efficientnetb0"):
        build_backbone("efficientnetb0", 32, weights=str(fake))
    assert not offline.exists()  # nothing was put into the Keras cache


def test_fine_tuning_last_layers_and_freeze_until():
    backbone = build_backbone("resnet50", 32, weights=None)
    layers = base_network(backbone).layers
    assert set_trainable(backbone) == "frozen" and not backbone.trainable_weights
    assert set_trainable(backbone, fine_tune_last=40) == "partial"
    trainable = [i for i, layer in enumerate(layers) if layer.trainable and layer.weights]
    assert trainable and min(trainable) >= len(layers) - 40
    assert not any(isinstance(layers[i], keras.layers.BatchNormalization) for i in trainable)
    assert set_trainable(backbone, fine_tune_last=-1) == "all"
    assert all(layer.trainable for layer in layers)

    inception = build_backbone("inceptionv3", 75, weights=None)
    assert set_trainable(inception, freeze_until=172) == "partial"
    inner = base_network(inception).layers
    assert not any(layer.trainable for layer in inner[:172])
    assert any(layer.trainable for layer in inner[172:] if layer.weights)
    with pytest.raises(GenreclsError):
        set_trainable(inception, fine_tune_last=3, freeze_until=4)
    with pytest.raises(GenreclsError, match="outside"):
        set_trainable(inception, freeze_until=10_000)


def test_head_layers():
    assert parse_units("report004") == (1024, 128)
    assert parse_units("64, 32") == (64, 32) and parse_units("") == ()
    with pytest.raises(GenreclsError):
        parse_units("wide")
    head = build_head(16, 5, "sigmoid", (8, 4), dropout=0.3)
    kinds = [type(layer).__name__ for layer in head.layers]
    assert kinds == ["InputLayer", "Dense", "BatchNormalization", "Dense", "BatchNormalization",
                     "Dropout", "Dense"]
    assert head.output_shape == (None, 5)
    assert head.layers[-1].activation.__name__ == "sigmoid"
    assert "Dropout" not in [type(layer).__name__ for layer in build_head(16, 2, "softmax", (8,)).layers]
