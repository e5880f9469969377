"""From a config to model inputs: labels, the split, and datasets of images or cached features.

When the backbone is frozen and no augmentation is asked for, its pooled
features are computed once per poster and every head (every OvA member,
every tuner trial) trains on them: one pass over the posters instead of one
per member per epoch. They are kept in a feature store (genrecls.features),
so a resumed run, a later run with --feature-store and `genrecls features`
share them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from genrecls.config import NO_BACKBONE, TrainConfig
from genrecls.datasets import PosterTable, load_dataset
from genrecls.distribute import get_strategy
from genrecls.errors import GenreclsError
from genrecls.features import Features, stored_features, update_entry
from genrecls.labels import GenreVocabulary, Split, collapse, keep_labelled, split_posters
from genrecls.models import steps
from genrecls.modes import get_mode
from genrecls.pipeline import Augmentation, make_dataset, shard_by_data
from genrecls.progress import progress_bar
from genrecls.text import TEXT_INPUT

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The table turned into labels and a split, ready for any mode."""

    table: PosterTable
    vocab: GenreVocabulary
    ids: np.ndarray
    paths: np.ndarray
    Y: np.ndarray  # multi-hot (N, K)
    strata: np.ndarray  # collapsed single label per poster
    split: Split | None  # None for a trained run's vocabulary: its split.json holds its split
    unlabelled: int  # posters with no genre inside the vocabulary
    texts: np.ndarray | None = None  # the text beside each poster (cfg.text), or None
    table_rows: np.ndarray | None = None  # each poster's row in the table (the feature store's rows)

    def targets(self, mode: str) -> np.ndarray:
        """What a mode's model learns (one-hot collapsed labels or multi-hot genres)."""
        return get_mode(mode).targets(self.Y, self.strata)

    def split_ids(self) -> dict:
        return {part: self.ids[getattr(self.split, part)].tolist() for part in ("train", "val", "test")}

    def rows(self, ids) -> tuple[np.ndarray, int]:
        """Row indices of saved movie ids in this data, and how many of them are gone."""
        where = {movie_id: i for i, movie_id in enumerate(self.ids)}
        rows = np.array([where[i] for i in ids if i in where], dtype="int64")
        return rows, len(ids) - len(rows)


def load_table(cfg: TrainConfig) -> PosterTable:
    return load_dataset(cfg.data, cfg.format, genre_sep=cfg.genre_sep, max_pixels=cfg.max_pixels,
                        verbose=cfg.verbose, text=cfg.text, **cfg.csv_options)


def prepare_data(cfg: TrainConfig, table: PosterTable | None = None, vocab: GenreVocabulary | None = None) -> PreparedData:
    """Load the table, fit the vocabulary, encode, and split (labels.split_posters) with the seed.

    With a trained run's `vocab` (evaluation) nothing is split: the run's own split.json names its posters,
    and a split of other data could only fail on genres that data lacks (with advice for training)."""
    if table is not None and cfg.text and table.text != cfg.text:
        table = None  # a table read without this run's text: read it again with it
    table = table or load_table(cfg)
    genre_lists = list(table.frame["genres"])
    trained = vocab is not None
    vocab = vocab or GenreVocabulary.fit(
        genre_lists, min_count=cfg.min_count, top_k=cfg.top_k, other=cfg.other, genres=cfg.genres
    )
    Y = vocab.encode(genre_lists)
    keep = keep_labelled(Y)
    Y = Y[keep]
    strata = collapse(Y, cfg.collapse)
    # one split for every mode; multiclass, which learns the collapsed label, needs it in every part
    split = None if trained else split_posters(Y, vocab.names, cfg.split, cfg.seed, strata,
                                               one_label=get_mode(cfg.mode).one_hot)
    return PreparedData(
        table, vocab, table.frame["id"].to_numpy()[keep], table.frame["path"].to_numpy()[keep],
        Y, strata, split, len(table) - len(keep),
        table.frame["text"].to_numpy(dtype=object)[keep] if cfg.text else None, keep,
    )


def cached_features(cfg: TrainConfig, data: PreparedData, backbone: keras.Model, store) -> Features:
    """The frozen backbone's features of the run's posters, from the feature store (cfg.feature_store, else `store`).

    The store's rows are the table's posters, whatever the labels keep, so runs with other
    genre options and `genrecls features` over the same posters share one entry.
    """
    paths = data.table.frame["path"].to_numpy()
    return stored_features(backbone, paths, cfg, cfg.feature_store or store).select(data.table_rows)


def fill_feature_store(cfg: TrainConfig, shard: tuple[int, int] | None = None) -> dict:
    """`genrecls features`: compute (shard I of N of) the config's backbone features into cfg.feature_store.

    The backbone is built as a run builds it (same seed), frozen, over the table a run reads.
    """
    from genrecls.models import new_backbone

    if not cfg.feature_store:
        raise GenreclsError("name the store with --feature-store DIR (train and tune reuse it when given the "
                            "same --feature-store)")
    if cfg.backbone == NO_BACKBONE:
        raise GenreclsError("--backbone none has no poster features to store")
    if cfg.augment or not cfg.cache_features:
        raise GenreclsError("a run with --augment or --no-cache-features reads no stored features; drop that option")
    if cfg.distribute == "multiworker":
        raise GenreclsError("features spreads over machines with --shard I/N, one process per part; "
                            "--distribute multiworker is for train")
    keras.utils.set_random_seed(cfg.seed)
    with get_strategy(cfg.distribute).scope():  # mirrored: the backbone runs on every local GPU
        backbone, trainable = new_backbone(cfg)
    if trainable != "frozen":
        raise GenreclsError(f"this config trains the backbone ({trainable}), so a run would not read stored "
                            "features; pass --fine-tune-last 0 to keep it frozen")
    table = load_table(cfg)
    entry, computed = update_entry(backbone, table.frame["path"].to_numpy(), cfg, cfg.feature_store, shard)
    return {"entry": str(entry.dir), "posters": entry.rows, "shards": entry.count, "computed": computed,
            "missing": entry.missing(), "complete": not entry.missing()}


class Inputs:
    """Datasets for a set of poster indices: from cached features or from images, with their texts.

    What each batch holds matches the model's inputs: an image (or feature) tensor
    alone, or a dict with "image" (or "features") and "text"; text only with --backbone none.
    """

    def __init__(self, cfg: TrainConfig, paths: np.ndarray, features: Features | None = None,
                 texts: np.ndarray | None = None):
        self.cfg = cfg
        self.paths = paths
        self.texts = texts
        self.posters = cfg.backbone != NO_BACKBONE
        self.features = features  # stored backbone features, one row per path (cached_features), or None
        self.decoded = np.ones(len(paths), dtype=bool) if features is None else features.decoded
        if not self.decoded.all():
            log.warning("%d posters failed to decode and are left out", (~self.decoded).sum())

    def usable(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.decoded[idx]]

    @property
    def in_memory(self) -> bool:
        """Batches come from arrays (cached features and / or texts), not from decoding posters."""
        return self.features is not None or not self.posters

    def dataset(self, idx: np.ndarray, targets: np.ndarray, training: bool,
                weights: np.ndarray | None = None) -> tf.data.Dataset:
        """Batches of (inputs, targets), or (inputs, targets, sample weights) from in-memory inputs."""
        cfg = self.cfg
        texts = None if self.texts is None else [str(t) for t in self.texts[idx]]
        if self.in_memory:
            # rows (and texts) travel through shuffle and batch; each batch's features are then read from
            # the store's memory maps, so only a batch of them is in memory at a time
            x = {"row": idx.astype("int64")}
            if texts is not None:
                x[TEXT_INPUT] = tf.constant(texts, tf.string)
            ds = tf.data.Dataset.from_tensor_slices((x, targets) if weights is None else (x, targets, weights))
            if training:
                ds = ds.shuffle(len(idx), seed=cfg.seed, reshuffle_each_iteration=True)
            return shard_by_data(ds.batch(cfg.batch_size).map(self._model_inputs).prefetch(tf.data.AUTOTUNE))
        # keep_length: Keras knows each epoch's length even if a poster fails at decode (another stands in
        # for it: a validation loss may count one poster twice; predict_split drops the repeat)
        return make_dataset(
            self.paths[idx], targets, texts=texts, image_size=cfg.image_size, batch_size=cfg.batch_size,
            resize=cfg.resize, shuffle=training, seed=cfg.seed, cache=cfg.cache,
            augment=Augmentation() if (training and cfg.augment) else None, check_files=False, keep_length=True,
        )

    def member_batches(self, parts: list, training: bool) -> tf.data.Dataset:
        """Batches of the one-fit OvA model (models.one_fit_model): each step holds every member's own
        next batch side by side, ({"features": (B, K, d), "mask": (B, K)}, labels (B, K), weights (B, K)).

        parts: per member, in the model's column order, (its rows, their labels, their weights (class
        weights; 1 for validation), the random seed its own fit would run under). Training batches
        are shuffled as that member's own fit would shuffle them (same seeds, same order), and each
        member's weights are scaled by B / (its rows in the batch), so the masked loss is the mean over
        its own batch. A member whose batches run out before the longest member's waits in empty
        slots (mask 0). Cached features only: the heads read features, not texts.
        """
        cfg, size = self.cfg, self.cfg.batch_size
        slots = size * max(steps(len(rows), size) for rows, *_ in parts)
        streams = []
        for rows, labels, weights, seed in parts:
            ds = tf.data.Dataset.from_tensor_slices((rows.astype("int64"), labels.astype("float32"),
                                                     weights.astype("float32"), np.ones(len(rows), "float32")))
            if training:
                tf.random.set_seed(seed)  # tf.data derives the shuffle from the global and the op seed
                ds = ds.shuffle(len(rows), seed=cfg.seed, reshuffle_each_iteration=True)
            # empty slots after the member's last row fill its last batch and the steps it has no batch for
            empty = tf.data.Dataset.from_tensors((np.int64(0), np.float32(0), np.float32(0), np.float32(0)))
            streams.append(ds.concatenate(empty.repeat(slots - len(rows))).batch(size))
        tf.random.set_seed(cfg.seed)

        def columns(*members):  # (B,) per member -> (B, K); one small traced function whatever K is
            rows, labels, weights, mask = (tf.stack(part, axis=1) for part in zip(*members))
            if training:
                weights = weights * size / tf.maximum(tf.reduce_sum(mask, axis=0), 1.0)
            return self._member_features(rows, labels, weights, mask)

        ds = tf.data.Dataset.zip(tuple(streams)).map(columns)
        return shard_by_data(ds.prefetch(tf.data.AUTOTUNE))

    def _member_features(self, rows, labels, weights, mask):
        features = tf.numpy_function(self.features.take, [tf.reshape(rows, [-1])], tf.float32, stateful=False)
        features = tf.reshape(features, [tf.shape(rows)[0], tf.shape(rows)[1], self.features.dim])
        return {"features": features, "mask": mask}, labels, weights

    def _model_inputs(self, x: dict, *rest):
        """A batch of rows (and texts) -> what the head reads: features, {features, text} or {text};
        the targets (and sample weights) pass through."""
        rows, x = x["row"], {k: v for k, v in x.items() if k != "row"}
        if self.features is not None:
            features = tf.numpy_function(self.features.take, [rows], tf.float32, stateful=False)
            features.set_shape([None, self.features.dim])
            if TEXT_INPUT not in x:
                return (features, *rest)
            x["features"] = features
        return (x, *rest)


def predict_split(model: keras.Model, inputs: Inputs, idx: np.ndarray, part: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and the row index of each; `part` names the posters in the progress line.

    Rows travel with the inputs, so a poster skipped at decode cannot misalign the others, and the
    stand-in that keeps the dataset's length (a repeated poster) is dropped by its row.
    """
    progress = progress_bar(len(idx), f"predicting {len(idx)} {part + ' ' if part else ''}posters", inputs.cfg.verbose)
    batches = []
    for x, rows in inputs.dataset(idx, idx.astype("int64"), training=False):
        batches.append((np.asarray(model.predict_on_batch(x)), rows.numpy()))  # traced once, not run eagerly
        progress.add(len(batches[-1][1]))
    if not batches:
        return np.zeros((0, model.output_shape[-1]), "float32"), np.zeros(0, "int64")
    rows = np.concatenate([b[1] for b in batches])
    first = np.sort(np.unique(rows, return_index=True)[1])
    return np.concatenate([b[0] for b in batches])[first], rows[first]
