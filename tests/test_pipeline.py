"""The tf.data pipeline on real and deliberately broken posters."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from genrecls.datasets import image_problem, image_problems
from genrecls.errors import GenreclsError
from genrecls.pipeline import Augmentation, decode_image, make_dataset
from tests.helpers import write_image


def _images(ds) -> np.ndarray:
    return np.concatenate([x.numpy() for x in ds]) if ds is not None else None


def test_every_odd_format_decodes_to_rgb_float_in_range(broken_files):
    reference = np.asarray(Image.open(broken_files["good"]).convert("RGB"), dtype=np.float32)
    for name in ("good", "png_named_jpg", "grayscale", "cmyk"):
        data = tf.io.read_file(str(broken_files[name]))
        image = decode_image(data, image_size=268).numpy()
        assert image.shape == (268, 268, 3) and image.dtype == np.float32, name
        assert 0 <= image.min() and image.max() <= 255, name
        # 268 px high poster: no vertical scaling, only horizontal padding
        middle = image[:, 44:223]
        tolerance = 25 if name in ("grayscale", "cmyk") else 3
        assert abs(middle.mean() - reference.mean()) < tolerance, name
    gray = decode_image(tf.io.read_file(str(broken_files["grayscale"])), 64).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-4)  # gray -> equal channels


def test_pad_keeps_aspect_and_crop_fills(tmp_path):
    # a 40x80 (w x h) white poster: padding puts black bars left and right
    path = write_image(tmp_path / "tall.png", size=(40, 80), color=(255, 255, 255))
    data = tf.io.read_file(str(path))
    padded = decode_image(data, 32, "pad").numpy()
    assert padded[:, :7].max() == 0 and padded[:, 25:].max() == 0
    assert padded[:, 9:23].min() > 250
    cropped = decode_image(data, 32, "crop").numpy()
    assert cropped.min() > 250
    with pytest.raises(GenreclsError):
        decode_image(data, 32, "stretch")


def test_shrinking_gives_the_pixels_of_tfs_area_resize_of_the_decoded_uint8_image(tmp_path):
    # the pipeline casts to float32 before the area resize (faster); the pixels must not change
    rng = np.random.default_rng(0)
    path = tmp_path / "noisy.png"
    Image.fromarray(rng.integers(0, 256, (150, 101, 3), dtype=np.uint8)).save(path)
    data = tf.io.read_file(str(path))
    uint8 = tf.io.decode_image(data, channels=3)
    for size, resize, new in ((64, "pad", (64, 43)), (32, "crop", (48, 32))):
        expected = tf.image.resize(uint8, new, method="area").numpy()
        got = decode_image(data, size, resize).numpy()
        if resize == "pad":
            np.testing.assert_array_equal(got[:, 10:53], expected)
        else:
            np.testing.assert_array_equal(got, expected[8:40])


def test_broken_files_are_skipped_counted_and_named(broken_files, caplog):
    paths = list(broken_files.values())
    labels = np.arange(len(paths))
    with caplog.at_level(logging.WARNING, logger="genrecls.pipeline"):
        ds = make_dataset(paths, labels, image_size=32, batch_size=4)
    seen = np.concatenate([y.numpy() for _, y in ds])
    kept = {p.name for p, i in zip(paths, labels) if i in seen}
    assert kept == {"good.jpg", "png.jpg", "gray.jpg", "cmyk.jpg"}
    message = caplog.text
    assert "skipped 3 of 7" in message
    for name in ("truncated.jpg", "empty.jpg", "text.jpg"):
        assert name in message


def test_decode_failures_after_the_byte_check_do_not_stop_the_epoch(tmp_path, ml1m):
    """A file that passes the byte check but is corrupt inside is skipped by tf.data."""
    good = [ml1m / "posters" / f"{i}.jpg" for i in (1, 2, 3)]
    raw = good[0].read_bytes()
    bad = tmp_path / "inside.jpg"
    bad.write_bytes(raw[:300] + b"\x00" * 2000 + raw[-100:])  # header and end marker intact
    ds = make_dataset(good[:2] + [bad] + good[2:], np.arange(4), image_size=32, batch_size=2)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert 0 in labels and 1 in labels and 3 in labels  # the good ones all arrive


def test_pipeline_is_lazy(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg", color=(i * 20, 0, 0)) for i in range(6)]
    ds = make_dataset(paths, np.arange(6), image_size=16, batch_size=6, check_files=False)
    paths[0].write_bytes(b"")  # changed after the dataset was built: read at iteration time
    (_, y), = list(ds)
    assert y.numpy().tolist() == [1, 2, 3, 4, 5]


def test_cache_shuffle_and_augment(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg", color=(i * 10, 100, 200)) for i in range(20)]
    labels = np.arange(20)
    plain = make_dataset(paths, labels, image_size=16, batch_size=8)
    order = np.concatenate([y.numpy() for _, y in plain])
    assert order.tolist() == list(range(20))
    for cache in ("memory", str(tmp_path / "cache")):
        ds = make_dataset(paths, labels, image_size=16, batch_size=8, shuffle=True, seed=1, cache=cache)
        first = np.concatenate([y.numpy() for _, y in ds])
        second = np.concatenate([y.numpy() for _, y in ds])
        assert sorted(first.tolist()) == list(range(20)) == sorted(second.tolist())
        assert first.tolist() != second.tolist()  # reshuffled each epoch
    # a file cache is per dataset: another dataset with the same prefix reads its own posters
    other = make_dataset(paths[:5], labels[:5] + 100, image_size=16, batch_size=8, cache=str(tmp_path / "cache"))
    assert sorted(np.concatenate([y.numpy() for _, y in other]).tolist()) == list(range(100, 105))
    again = make_dataset(paths, labels, image_size=16, batch_size=8, shuffle=True, seed=1)
    same = make_dataset(paths, labels, image_size=16, batch_size=8, shuffle=True, seed=1)
    assert [y.numpy().tolist() for _, y in again] == [y.numpy().tolist() for _, y in same]

    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 255  # left half white: a flip or shift must change pixels
    Image.fromarray(image).save(tmp_path / "half.png")
    aug = make_dataset([tmp_path / "half.png"] * 8, image_size=32, batch_size=8,
                       augment=Augmentation(rotation=0.1, zoom=0.2, translation=0.2), seed=3)
    out = _images(aug)
    base = _images(make_dataset([tmp_path / "half.png"], image_size=32, batch_size=1))
    assert out.shape == (8, 32, 32, 3)
    assert all(np.abs(o - base[0]).max() > 1 for o in out)


def test_images_without_labels_and_input_errors(tmp_path):
    paths = [write_image(tmp_path / f"{i}.jpg") for i in range(3)]
    batches = list(make_dataset(paths, image_size=8, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 1]
    with pytest.raises(GenreclsError, match="3 posters but 2 labels"):
        make_dataset(paths, [0, 1])
    with pytest.raises(GenreclsError, match="no posters"):
        make_dataset([])
    (tmp_path / "bad.jpg").write_bytes(b"")
    with pytest.raises(GenreclsError, match="none of the posters"):
        make_dataset([tmp_path / "bad.jpg"])


def _posters_with_one_that_fails_at_decode(folder, n: int = 10, bad: int = 3) -> list:
    """n noise JPEGs; poster `bad` passes the byte and header checks but its Huffman table is bogus."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(paths[-1])
    raw = paths[bad].read_bytes()
    table = raw.index(b"\xff\xc4") + 5  # marker, length, class/id: then 16 code counts
    paths[bad].write_bytes(raw[:table] + b"\xff" * 16 + raw[table + 16:])
    assert image_problem(paths[bad]) is None  # only decoding finds it
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(tf.io.read_file(str(paths[bad])))
    return paths


@pytest.mark.parametrize("options", [dict(shuffle=True), dict(shuffle=True, cache="memory"), dict()])
def test_a_fit_dataset_knows_its_length_even_when_a_poster_fails_at_decode(tmp_path, options):
    paths = _posters_with_one_that_fails_at_decode(tmp_path)
    assert make_dataset(paths, np.arange(10), image_size=16, batch_size=4).cardinality() == \
        tf.data.UNKNOWN_CARDINALITY  # what skipping decode errors does to a dataset's length
    ds = make_dataset(paths, np.arange(10), image_size=16, batch_size=4, keep_length=True, seed=1, **options)
    assert ds.cardinality() == 3
    for _ in range(2):  # every pass: 10 posters, the broken one stood in for by a good one
        labels = np.concatenate([y.numpy() for _, y in ds])
        assert len(labels) == 10 and 3 not in labels and set(labels) == set(range(10)) - {3}


def test_keras_shows_each_epochs_total_and_finishes_the_epoch_past_a_broken_poster(tmp_path, capsys):
    import keras

    paths = _posters_with_one_that_fails_at_decode(tmp_path)
    train = make_dataset(paths, np.arange(10) % 2, image_size=16, batch_size=4, shuffle=True, keep_length=True)
    val = make_dataset(paths, np.arange(10) % 2, image_size=16, batch_size=4, keep_length=True)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(train, validation_data=val, epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert len(history.history["val_loss"]) == 2
    assert "3/3" in out.split("Epoch 2/2")[0] and "Unknown" not in out  # the first epoch has its total
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_predictions_count_each_poster_once_and_show_progress(tmp_path, capsys):
    import keras

    from genrecls.preparation import Inputs, predict_split
    from tests.helpers import tiny_config

    paths = _posters_with_one_that_fails_at_decode(tmp_path)
    assert image_problems([str(p) for p in paths], verbose=0) == [None] * 10
    assert capsys.readouterr().out == ""
    image_problems([str(p) for p in paths], verbose=2)
    assert capsys.readouterr().out.startswith("checking 10 poster files\n10/10")

    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    for verbose, shown in ((2, "predicting 10 test posters\n10/10"), (0, "")):
        inputs = Inputs(tiny_config(tmp_path, image_size=16, batch_size=4, verbose=verbose), np.array(paths), None)
        probabilities, rows = predict_split(model, inputs, np.arange(10), "test")
        assert rows.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # in order, once each, the broken one left out
        expected = model.predict(np.concatenate([x for x, _ in make_dataset(
            [paths[i] for i in rows], np.zeros(9), image_size=16, batch_size=9)]), verbose=0)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        assert capsys.readouterr().out.startswith(shown)
