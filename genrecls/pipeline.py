"""The lazy tf.data poster pipeline.

paths (+ labels) -> read -> decode any JPEG/PNG/GIF/BMP to RGB -> resize to a
square keeping the aspect ratio -> [cache] -> [shuffle] -> [augment] -> batch
-> prefetch.

Images come out float32 in 0..255: each backbone carries its own
preprocessing inside the model, so nothing here rescales.

Files are read only as batches are needed, so memory does not grow with the
number of posters. Before building the dataset each file's first and last
bytes are checked, and empty, truncated or non-image files are skipped with a
warning that names them; anything that still fails to decode is skipped by
tf.data (and logged) rather than stopping an epoch halfway. Datasets for
Keras keep their length (`keep_length`), so progress bars have their total.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from genrecls.datasets import image_problems
from genrecls.errors import GenreclsError

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
RESIZE_MODES = ("pad", "crop")


def decode_image(data: tf.Tensor, image_size: int = 224, resize: str = "pad") -> tf.Tensor:
    """Encoded bytes -> float32 (size, size, 3) in 0..255.

    Grayscale, CMYK and RGBA become RGB; a PNG named .jpg decodes as PNG;
    a GIF gives its first frame. resize "pad" keeps the whole poster and
    pads the short side with black; "crop" fills the square and cuts the
    long side's ends. Used by the training pipeline and by the exported
    serving graph, so both see the same pixels.
    """
    if resize not in RESIZE_MODES:
        raise GenreclsError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    # pad: the long side becomes image_size; crop: the short side does.
    side = tf.reduce_max(shape) if resize == "pad" else tf.reduce_min(shape)
    scale = image_size / side
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    if resize == "crop":
        new = tf.maximum(new, image_size)
    # Area averaging when shrinking (no aliasing), bilinear when enlarging; both
    # are several times faster than the antialiased kernels of resize_with_pad.
    # Area on float32 gives the same pixels as on uint8, faster (TF's uint8 area kernel is slow).
    image = tf.cond(
        scale < 1.0,
        lambda: tf.image.resize(tf.cast(image, tf.float32), new, method="area"),
        lambda: tf.image.resize(image, new, method="bilinear"),
    )
    if resize == "pad":
        pad = image_size - new
        image = tf.pad(image, [[pad[0] // 2, pad[0] - pad[0] // 2], [pad[1] // 2, pad[1] - pad[1] // 2], [0, 0]])
    else:
        image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    image.set_shape([image_size, image_size, 3])
    return image


def load_image(path: tf.Tensor, image_size: int = 224, resize: str = "pad") -> tf.Tensor:
    return decode_image(tf.io.read_file(path), image_size, resize)


def _cache_file(prefix: str, paths, labels, image_size: int, resize: str, texts=None) -> str:
    """A cache file per distinct dataset: tf.data would otherwise hand one dataset's
    cached posters to any other dataset given the same file prefix."""
    digest = hashlib.sha1(f"{image_size}|{resize}|".encode())
    digest.update("\0".join(paths).encode())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels).tobytes())
    if texts is not None:
        digest.update("\0".join(texts).encode())
    return f"{prefix}_{digest.hexdigest()[:16]}"


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Mark a dataset for multi-worker training: each worker keeps its share of every global batch.

    AutoShardPolicy.DATA, not FILE or OFF: these datasets start from
    from_tensor_slices (file names or cached features), so there are no input
    files to split among workers (AUTO would try FILE, fail and fall back to
    DATA with a warning on every fit), and OFF would hand every worker the
    whole dataset, so workers would train on the same posters and each epoch
    would see every poster once per worker. With DATA every worker runs the
    same seeded pipeline, in the same order, and keeps its part of each global
    batch: a step's batches together are exactly one process's batch. The
    price is that every worker reads and decodes every poster. Ignored without
    a multi-worker strategy.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def readable(paths: list[str]) -> np.ndarray:
    """Boolean mask of files that look decodable; logs one warning naming the rest.

    No pixel limit here: a table's posters were checked against the run's --max-pixels when loaded."""
    problems = image_problems(paths, max_pixels=None)
    bad = [(p, why) for p, why in zip(paths, problems) if why]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        log.warning("skipped %d of %d posters that cannot be decoded: %s%s", len(bad), len(paths), shown, more)
    return np.array([why is None for why in problems], dtype=bool)


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation, from Keras preprocessing layers.

    Defaults are mild; report 003 used rotation 40 deg, shifts 0.2, zoom 0.2
    and horizontal flips (`Augmentation.report_003()`).
    """

    flip: bool = True
    rotation: float = 0.05  # fraction of a full turn
    zoom: float = 0.1
    translation: float = 0.1

    @classmethod
    def report_003(cls) -> "Augmentation":
        return cls(flip=True, rotation=40 / 360, zoom=0.2, translation=0.2)

    def layers(self, seed: int):
        import keras

        out = []
        if self.flip:
            out.append(keras.layers.RandomFlip("horizontal", seed=seed))
        if self.rotation:
            out.append(keras.layers.RandomRotation(self.rotation, fill_mode="constant", seed=seed + 1))
        if self.zoom:
            out.append(keras.layers.RandomZoom(self.zoom, fill_mode="constant", seed=seed + 2))
        if self.translation:
            out.append(
                keras.layers.RandomTranslation(
                    self.translation, self.translation, fill_mode="constant", seed=seed + 3
                )
            )
        return keras.Sequential(out, name="augmentation")


def make_dataset(
    paths,
    labels=None,
    *,
    texts=None,
    image_size: int = 224,
    batch_size: int = 128,
    resize: str = "pad",
    shuffle: bool = False,
    seed: int = 0,
    cache: str | None = None,
    augment: Augmentation | None = None,
    shuffle_buffer: int = 2048,
    check_files: bool = True,
    skip_errors: bool = True,
    deterministic: bool = True,
    keep_length: bool = False,
) -> tf.data.Dataset:
    """A batched tf.data.Dataset of (image, label), or images alone without labels.

    paths: poster file paths. labels: array-like with one row per path
    (multi-hot, one-hot, class index or binary), or None.
    texts: one string per path, or None; with texts each element's image becomes
        {"image": image, "text": text}, the inputs of a model with a text branch.
    cache: None, "memory", or a file path prefix for an on-disk cache. The
        cache holds decoded, resized images, so later epochs skip decoding;
        shuffling and augmentation run after it, so each epoch differs.
    deterministic: keep the order fixed for a seed (reproducible runs);
        False lets parallel decoding hand out batches as they finish.
    shuffle: reshuffled every epoch from `seed`. Without a cache the file
        list is shuffled before reading, which costs no image memory.
    keep_length: every pass yields exactly one element per path, so the
        dataset's length is known (skipping decode errors otherwise hides it,
        and Keras's first epoch then has no total and ends with a "ran out of
        data" warning). A poster that fails to decode at run time is stood in
        for by one from the next pass, so the epoch still ends normally. For
        fitting; where each poster must count once, leave it off or drop the
        repeats by a label that names the row.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise GenreclsError("no posters to read")
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(paths):
            raise GenreclsError(f"{len(paths)} posters but {len(labels)} labels")
    if texts is not None:
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in np.asarray(texts).tolist()]
        if len(texts) != len(paths):
            raise GenreclsError(f"{len(paths)} posters but {len(texts)} texts")
    if check_files:
        keep = readable(paths)
        paths = [p for p, k in zip(paths, keep) if k]
        labels = labels[keep] if labels is not None else None
        texts = [t for t, k in zip(texts, keep) if k] if texts is not None else None
        if not paths:
            raise GenreclsError("none of the posters is a readable image")
    columns = (paths,) + ((tf.constant(texts, tf.string),) if texts is not None else ())
    ds = tf.data.Dataset.from_tensor_slices(columns + ((labels,) if labels is not None else ()))

    if shuffle and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path, *rest):
        x = load_image(path, image_size, resize)
        if texts is not None:
            text, *rest = rest
            x = {"image": x, "text": text}
        return (x, *rest) if rest else x

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if skip_errors:
        # Safety net for files that pass the loader's byte checks yet fail to decode.
        ds = ds.ignore_errors(log_warning=True)
        if keep_length:  # cut an endless repeat at the length: known to tf.data, and true
            ds = ds.repeat().take(len(paths))
    if cache:
        ds = ds.cache("" if cache == "memory" else _cache_file(cache, paths, labels, image_size, resize, texts))
        if shuffle:
            ds = ds.shuffle(min(shuffle_buffer, len(paths)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        layers = augment.layers(seed)

        def augmented(x, *label):
            x = {**x, "image": layers(x["image"], training=True)} if texts is not None else layers(x, training=True)
            return (x, *label) if label else x

        ds = ds.map(augmented, num_parallel_calls=AUTOTUNE)
    return shard_by_data(ds.prefetch(AUTOTUNE))
