"""The three training modes, their callbacks, and training on cached features.

multiclass  one label per poster (collapsed), softmax, categorical cross-entropy
multilabel  multi-hot labels, sigmoid, (weighted) binary cross-entropy
ova         one binary member per genre on its own balanced set (report 002),
            combined into one model that outputs a probability per genre

When the backbone is frozen and no augmentation is asked for, its pooled
features are computed once per poster and every head (every OvA member)
trains on them: one pass over the posters instead of one per member.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from genrecls import __version__
from genrecls.backbones import build_backbone, get_spec, normalize_weights, set_trainable
from genrecls.datasets import PosterTable, load_dataset
from genrecls.errors import GenreclsError
from genrecls.evaluation import DEFAULT_THRESHOLD, evaluate_predictions, format_table
from genrecls.heads import build_head, parse_units
from genrecls.labels import (
    GenreVocabulary,
    Split,
    check_split_covers,
    class_weights,
    collapse,
    keep_labelled,
    oversample,
    ova_subset,
    positive_weights,
    stratified_split,
    undersample,
)
from genrecls.pipeline import Augmentation, make_dataset

log = logging.getLogger(__name__)
MODES = ("multiclass", "multilabel", "ova")
BALANCING = {"undersample": undersample, "oversample": oversample}


@dataclass
class TrainConfig:
    """Everything needed to repeat a run; saved as the run's config.json."""

    data: str
    mode: str = "ova"
    format: str | None = None
    csv_options: dict = field(default_factory=dict)
    genre_sep: str = "|"
    # labels
    genres: list | None = None
    top_k: int | None = None
    other: bool = False
    min_count: int = 1
    collapse: str = "least"
    split: tuple = (0.7, 0.15, 0.15)
    balance: str | None = None  # undersample | oversample, on the collapsed label
    class_weight: str | None = None  # balanced | log
    positive_share: float = 0.3  # ova members
    # model
    backbone: str = "efficientnetv2b0"
    weights: str | None = "default"  # imagenet for pretrained backbones, none for simple
    image_size: int | None = None
    resize: str = "pad"
    fine_tune_last: int | None = None
    freeze_until: int | None = None
    head: tuple = (512, 256)
    dropout: float = 0.0
    # per-genre OvA settings chosen by `genrecls tune`: genre -> {head, dropout, learning_rate}
    member_overrides: dict | None = None
    # fitting
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 128
    patience: int = 3
    seed: int = 0
    augment: bool = False
    cache: str | None = None  # None | memory | file prefix: cache decoded posters
    cache_features: bool = True  # train heads on cached backbone features when frozen
    tensorboard: bool = False
    verbose: str | int = "auto"

    def __post_init__(self):
        if self.mode not in MODES:
            raise GenreclsError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.balance not in (None, *BALANCING):
            raise GenreclsError(f"balance must be one of {', '.join(BALANCING)}, not {self.balance!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise GenreclsError("epochs and batch size must be at least 1")
        spec = get_spec(self.backbone)
        if self.weights == "default":
            self.weights = "imagenet" if spec.pretrained else None
        self.weights = normalize_weights(self.weights)
        self.head = parse_units(self.head)
        self.split = tuple(self.split)
        self.data = os.path.abspath(self.data)
        if self.image_size is None:
            self.image_size = spec.default_size

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["head"] = list(self.head)
        data["split"] = list(self.split)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"versions"})
        if unknown:
            raise GenreclsError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def changed_from(self, saved: dict) -> list[str]:
        """Names of the settings that differ from a saved config (verbosity aside)."""
        return sorted(k for k, v in self.to_json().items() if k != "verbose" and saved.get(k) != v)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            raise GenreclsError(f"cannot read config {path}: {exc}") from None


def versions() -> dict:
    return {
        "genrecls": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """The table turned into labels and a split, ready for any mode."""

    table: PosterTable
    vocab: GenreVocabulary
    ids: np.ndarray
    paths: np.ndarray
    Y: np.ndarray  # multi-hot (N, K)
    strata: np.ndarray  # collapsed single label per poster
    split: Split
    unlabelled: int  # posters with no genre inside the vocabulary

    def targets(self, mode: str) -> np.ndarray:
        """What the model learns: one-hot collapsed labels (multiclass) or multi-hot."""
        if mode == "multiclass":
            return np.eye(self.Y.shape[1], dtype="float32")[self.strata]
        return self.Y


def prepare_data(cfg: TrainConfig, table: PosterTable | None = None) -> PreparedData:
    table = table or load_dataset(cfg.data, cfg.format, genre_sep=cfg.genre_sep, **cfg.csv_options)
    genre_lists = list(table.frame["genres"])
    vocab = GenreVocabulary.fit(
        genre_lists, min_count=cfg.min_count, top_k=cfg.top_k, other=cfg.other, genres=cfg.genres
    )
    Y = vocab.encode(genre_lists)
    keep = keep_labelled(Y)
    Y = Y[keep]
    strata = collapse(Y, cfg.collapse)
    split = stratified_split(strata, cfg.split, cfg.seed)
    check_split_covers(Y, split, vocab.names)
    return PreparedData(
        table, vocab, table.frame["id"].to_numpy()[keep], table.frame["path"].to_numpy()[keep],
        Y, strata, split, len(table) - len(keep),
    )


# --------------------------------------------------------------------- models


@keras.saving.register_keras_serializable(package="genrecls")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a per-genre weight on positive labels.

    The multi-label answer to imbalance: Keras's class_weight would weight
    each poster by its argmax genre, which is wrong for multi-hot labels.
    """

    def __init__(self, pos_weight, name="weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        eps = keras.config.epsilon()
        p = keras.ops.clip(y_pred, eps, 1 - eps)
        y = keras.ops.cast(y_true, p.dtype)
        w = keras.ops.convert_to_tensor(self.pos_weight, dtype=p.dtype)
        loss = -(w * y * keras.ops.log(p) + (1 - y) * keras.ops.log(1 - p))
        return keras.ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def compile_for(model: keras.Model, kind: str, learning_rate: float, pos_weight=None) -> None:
    """Adam, the mode's loss, and metrics that do not lie about imbalance.

    Every kind reports `f1_micro` and `f1_macro` (so `val_f1_micro` can be a
    tuning objective in any mode): argmax-based for multiclass, thresholded
    at 0.5 otherwise (keras F1Score's default threshold=None means argmax).
    """
    threshold = None if kind == "multiclass" else 0.5
    metrics = [keras.metrics.F1Score(average=avg, threshold=threshold, name=f"f1_{avg}") for avg in ("micro", "macro")]
    if kind == "multiclass":
        loss = "categorical_crossentropy"
        metrics.insert(0, keras.metrics.CategoricalAccuracy(name="accuracy"))
    elif kind == "multilabel":
        loss = WeightedBinaryCrossentropy(pos_weight) if pos_weight is not None else "binary_crossentropy"
        metrics.append(keras.metrics.AUC(multi_label=True, name="auc"))
    elif kind == "member":  # one binary OvA member, labels shaped (N, 1)
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), *metrics, keras.metrics.Recall(name="recall")]
    else:
        raise ValueError(kind)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def attach(backbone: keras.Model, head: keras.Model, trainable_mode: str, name: str = "genrecls") -> keras.Model:
    """Image -> backbone -> head. Frozen or partly tuned backbones run in inference mode."""
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    training = None if trainable_mode == "all" else False
    return keras.Model(inputs, head(backbone(inputs, training=training)), name=name)


def extract_features(backbone: keras.Model, paths, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of every poster, one pass. Returns (features, decoded mask).

    Indices travel with the images, so a poster tf.data skips cannot shift
    the rows of the ones after it.
    """
    n = len(paths)
    ds = make_dataset(paths, np.arange(n), image_size=cfg.image_size, batch_size=cfg.batch_size,
                      resize=cfg.resize, check_files=False)
    features = np.zeros((n, backbone.output_shape[-1]), dtype="float32")
    decoded = np.zeros(n, dtype=bool)
    verbose = cfg.verbose if cfg.verbose in (0, 2) else 1
    progress = keras.utils.Progbar(n, unit_name="poster", verbose=verbose)
    if verbose:
        print(f"computing {backbone.name} features of {n} posters once", flush=True)
    for images, idx in ds:
        idx = idx.numpy()
        features[idx] = backbone(images, training=False).numpy()
        decoded[idx] = True
        progress.add(len(idx))
    return features, decoded


class Inputs:
    """Datasets for a set of poster indices: from cached features or from images."""

    def __init__(self, cfg: TrainConfig, paths: np.ndarray, backbone: keras.Model | None):
        self.cfg = cfg
        self.paths = paths
        self.features = None
        self.decoded = np.ones(len(paths), dtype=bool)
        if backbone is not None:
            self.features, self.decoded = extract_features(backbone, paths, cfg)
            if not self.decoded.all():
                log.warning("%d posters failed to decode and are left out", (~self.decoded).sum())

    def usable(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.decoded[idx]]

    def dataset(self, idx: np.ndarray, targets: np.ndarray, training: bool) -> tf.data.Dataset:
        cfg = self.cfg
        if self.features is not None:
            ds = tf.data.Dataset.from_tensor_slices((self.features[idx], targets))
            if training:
                ds = ds.shuffle(len(idx), seed=cfg.seed, reshuffle_each_iteration=True)
            return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)
        return make_dataset(
            self.paths[idx], targets, image_size=cfg.image_size, batch_size=cfg.batch_size,
            resize=cfg.resize, shuffle=training, seed=cfg.seed, cache=cfg.cache,
            augment=Augmentation() if (training and cfg.augment) else None, check_files=False,
        )


def fit(model, train_ds, val_ds, cfg: TrainConfig, work: Path, name: str, class_weight=None,
        extra_callbacks=()) -> pd.DataFrame:
    """model.fit with the house callbacks; returns the epoch history.

    EarlyStopping (val_loss, patience, best weights restored), a .keras
    checkpoint of the best epoch, BackupAndRestore so a killed run resumes
    at its last finished epoch, TerminateOnNaN, a CSV log, TensorBoard.
    """
    work.mkdir(parents=True, exist_ok=True)
    history = work / f"{name}.history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / "backup" / name)),
        keras.callbacks.EarlyStopping("val_loss", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(work / f"{name}.best.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history), append=True),
    ]
    callbacks.extend(extra_callbacks)
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(work.parent / "tensorboard" / name)))
    with warnings.catch_warnings():
        # tf.data's error skipping hides the dataset length, so Keras warns at each
        # first epoch's end that the data "ran out": expected, not a problem.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
                  class_weight=class_weight, shuffle=False, verbose=cfg.verbose)
    return pd.read_csv(history) if history.exists() else pd.DataFrame()


def member_slug(j: int, genre: str) -> str:
    return f"{j:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', genre)}"


# ----------------------------------------------------------------------- runs


class Trainer:
    """Trains one run into its folder. `train()` is the function most callers want."""

    def __init__(self, cfg: TrainConfig, out: str | os.PathLike, overwrite: bool = False, callbacks=()):
        self.cfg = cfg
        self.out = Path(out)
        self.callbacks = list(callbacks)  # extra Keras callbacks for every fit
        self._claim_folder(overwrite)

    def _claim_folder(self, overwrite: bool) -> None:
        config_file = self.out / "config.json"
        if overwrite and self.out.exists():
            shutil.rmtree(self.out)
        if (self.out / "metrics.json").exists():
            raise GenreclsError(f"{self.out} already holds a finished run; pass --overwrite or another --out")
        if config_file.exists():
            changed = self.cfg.changed_from(json.loads(config_file.read_text()))
            if changed:
                raise GenreclsError(
                    f"{self.out} holds an unfinished run with other settings ({', '.join(changed)}); "
                    "pass --overwrite or another --out"
                )
            print(f"resuming the unfinished run in {self.out}", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps({**self.cfg.to_json(), "versions": versions()}, indent=2))

    def run(self, table: PosterTable | None = None) -> dict:
        cfg = self.cfg
        started = time.time()
        keras.utils.set_random_seed(cfg.seed)
        data = prepare_data(cfg, table)
        data.vocab.save(self.out / "genres.json")
        self._save_split(data)
        T = data.targets(cfg.mode)

        backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights)
        trainable = set_trainable(backbone, *self._fine_tune())
        use_features = trainable == "frozen" and not cfg.augment and cfg.cache_features
        inputs = Inputs(cfg, data.paths, backbone if use_features else None)
        split = Split(*(inputs.usable(getattr(data.split, p)) for p in ("train", "val", "test")))

        if cfg.mode == "ova":
            model, on_features = self._train_ova(data, T, split, backbone, trainable, inputs, use_features)
        else:
            model, on_features = self._train_single(data, T, split, backbone, trainable, inputs, use_features)

        probabilities, rows = predict_split(on_features or model, inputs, split.test)
        report = evaluate_predictions(
            data.Y[rows], probabilities, data.vocab.names, cfg.mode, DEFAULT_THRESHOLD,
            train_truth=data.Y[split.train], true_class=data.strata[rows],
        )
        report = {"mode": cfg.mode, "split": "test", **report}
        report["dropped"] = {**data.table.dropped.to_dict(), "no genre in vocabulary": data.unlabelled}
        report["seconds"] = round(time.time() - started, 1)
        (self.out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        shutil.rmtree(self.out / "checkpoints" / "backup", ignore_errors=True)
        print("\n" + format_table(report), flush=True)
        print(f"\nrun written to {self.out}", flush=True)
        return report

    def _fine_tune(self) -> tuple:
        cfg = self.cfg
        if cfg.fine_tune_last is None and cfg.freeze_until is None and cfg.weights is None:
            return (-1, None)  # random weights: nothing to keep frozen
        return (cfg.fine_tune_last, cfg.freeze_until)

    def _save_split(self, data: PreparedData) -> None:
        split = {part: data.ids[getattr(data.split, part)].tolist() for part in ("train", "val", "test")}
        (self.out / "split.json").write_text(json.dumps(split))

    def _balanced_train(self, data: PreparedData, train: np.ndarray) -> np.ndarray:
        if not self.cfg.balance:
            return train
        chosen = BALANCING[self.cfg.balance](data.strata[train], seed=self.cfg.seed)
        return train[chosen]

    def _train_single(self, data, T, split, backbone, trainable, inputs, use_features):
        cfg = self.cfg
        train = self._balanced_train(data, split.train)
        keras.utils.set_random_seed(cfg.seed)
        activation = "softmax" if cfg.mode == "multiclass" else "sigmoid"
        head = build_head(backbone.output_shape[-1], T.shape[1], activation, cfg.head, cfg.dropout)
        full = attach(backbone, head, trainable)
        fitted = head if use_features else full
        pos_weight, class_weight = imbalance_weights(cfg, T[train], data.strata[train])
        compile_for(fitted, cfg.mode, cfg.learning_rate, pos_weight)
        history = fit(fitted, inputs.dataset(train, T[train], True), inputs.dataset(split.val, T[split.val], False),
                      cfg, self.out / "checkpoints", "model", class_weight, self.callbacks)
        history.to_csv(self.out / "history.csv", index=False)
        full.save(self.out / "model.keras")
        return full, (head if use_features else None)

    def _train_ova(self, data, T, split, backbone, trainable, inputs, use_features):
        folder = self.out / "ova"
        folder.mkdir(exist_ok=True)
        members, histories = [], []
        for j, genre in enumerate(data.vocab.names):
            path = folder / f"{member_slug(j, genre)}.keras"
            if path.exists():  # finished before an interruption
                print(f"[{j + 1}/{T.shape[1]}] {genre}: already trained, loading {path.name}", flush=True)
                members.append(keras.models.load_model(path))
            else:
                print(f"[{j + 1}/{T.shape[1]}] training the {genre} member", flush=True)
                members.append(self._train_member(j, genre, T, split, backbone, trainable, inputs, use_features, path))
            hist_file = self.out / "checkpoints" / f"{member_slug(j, genre)}.history.csv"
            if hist_file.exists():
                histories.append(pd.read_csv(hist_file).assign(genre=genre))
        if histories:
            pd.concat(histories).to_csv(self.out / "history.csv", index=False)
        combined = combine_members(members, backbone if use_features else None)
        combined.save(folder / "combined.keras")
        return combined, (combine_heads(members) if use_features else None)

    def _train_member(self, j, genre, T, split, backbone, trainable, inputs, use_features, path):
        cfg = self.cfg
        train_idx, y_train, val_idx, y_val, weights = member_sets(cfg, T, split.train, split.val, j)
        keras.utils.set_random_seed(cfg.seed + j)
        if not use_features and trainable != "frozen":  # each member tunes its own backbone
            backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights)
            set_trainable(backbone, *self._fine_tune())
        own = (cfg.member_overrides or {}).get(genre, {})
        units = parse_units(own.get("head", cfg.head))
        head = build_head(backbone.output_shape[-1], 1, "sigmoid", units, own.get("dropout", cfg.dropout),
                          name=f"member_{j}")
        fitted = head if use_features else attach(backbone, head, trainable, name=f"member_{j}")
        compile_for(fitted, "member", own.get("learning_rate", cfg.learning_rate))
        fit(fitted, inputs.dataset(train_idx, y_train[:, None], True),
            inputs.dataset(val_idx, y_val[:, None], False),
            cfg, self.out / "checkpoints", member_slug(j, genre), weights, self.callbacks)
        fitted.save(path)
        return fitted

def imbalance_weights(cfg: TrainConfig, targets: np.ndarray, strata: np.ndarray):
    """(positive weights for a weighted BCE, Keras class_weight) for the training rows.

    Multilabel gets per-genre positive weights, never class_weight (Keras
    would weight each multi-hot row by its argmax); multiclass gets class_weight.
    """
    if not cfg.class_weight:
        return None, None
    if cfg.mode == "multilabel":
        return positive_weights(targets, cfg.class_weight), None
    return None, class_weights(strata, cfg.class_weight)


def member_sets(cfg: TrainConfig, T: np.ndarray, train: np.ndarray, val: np.ndarray, j: int):
    """One OvA member's balanced train and validation rows, binary labels and class_weight.

    Training and tuning both call this, so a tuned member sees the same sets it is retrained on.
    """
    tr, y_train = ova_subset(T[train], j, cfg.positive_share, cfg.seed + j)
    va, y_val = ova_subset(T[val], j, cfg.positive_share, cfg.seed + j)
    weights = class_weights(y_train.astype(int), cfg.class_weight) if cfg.class_weight else None
    return train[tr], y_train, val[va], y_val, weights


def predict_split(model: keras.Model, inputs: Inputs, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and the row index of each (rows travel with the inputs, so skips cannot misalign)."""
    batches = [(model(x, training=False).numpy(), rows.numpy())
               for x, rows in inputs.dataset(idx, idx.astype("int64"), training=False)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def combine_heads(heads: list) -> keras.Model:
    """Features -> a probability per genre, from OvA member heads."""
    inputs = keras.Input(heads[0].input_shape[1:], name="features")
    outputs = [h(inputs) for h in heads]
    out = keras.layers.Concatenate(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, out, name="ova_heads")


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
    out = keras.layers.Concatenate(name="probabilities")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, out, name="genrecls_ova")


def train(cfg: TrainConfig, out: str | os.PathLike, overwrite: bool = False, table: PosterTable | None = None,
          callbacks=()) -> dict:
    """Train one run into the folder `out` and return its test metrics.

    Re-running it on the same folder with the same config resumes an
    interrupted run; `callbacks` are extra Keras callbacks for every fit.
    """
    return Trainer(cfg, out, overwrite, callbacks).run(table)


def load_run_model(run: str | os.PathLike) -> keras.Model:
    """The trained model of a run folder (safe mode: nothing is unpickled)."""
    run = Path(run)
    for candidate in (run / "model.keras", run / "ova" / "combined.keras"):
        if candidate.exists():
            try:
                return keras.models.load_model(candidate, safe_mode=True)
            except ValueError as exc:  # e.g. a Lambda layer, which safe mode refuses to unpickle
                raise GenreclsError(f"refusing to load {candidate}: {str(exc).splitlines()[0][:300]}") from None
    raise GenreclsError(f"{run} holds no model.keras or ova/combined.keras; is it a run folder?")
