"""Fitting: the house callbacks, the single-model and one-vs-all loops, calibration.

`train()` claims a run folder, fits the config's mode, appends the
calibration that maps the model's outputs back to the real genre
prevalence (and, if asked, Platt / temperature scaling fitted on
validation), marks the run finished and evaluates it (`report`).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from genrecls import __version__, calibration
from genrecls.config import TrainConfig
from genrecls.errors import GenreclsError
from genrecls.datasets import PosterTable
from genrecls.labels import Split, class_weights, oversample, ova_subset, positive_weights, undersample
from genrecls.models import build_model, calibrated, combine_heads, combine_members, compile_model, new_backbone, steps
from genrecls.modes import MEMBER, Mode, get_mode
from genrecls.preparation import Inputs, PreparedData, cached_features, predict_split, prepare_data
from genrecls.runs import RunFolder, load_keras, member_slug, save_keras
from genrecls.text import TextEncoder

BALANCING = {"undersample": undersample, "oversample": oversample}


def versions() -> dict:
    return {
        "genrecls": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def fit(model, train_ds, val_ds, cfg: TrainConfig, work: Path, name: str, class_weight=None,
        extra_callbacks=()) -> pd.DataFrame:
    """model.fit with the house callbacks; returns the epoch history.

    EarlyStopping (val_loss, patience, best weights restored), BackupAndRestore
    so a killed run resumes at its last finished epoch, TerminateOnNaN, a CSV
    log, TensorBoard.
    """
    work.mkdir(parents=True, exist_ok=True)
    history = work / f"{name}.history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / "backup" / name)),
        keras.callbacks.EarlyStopping("val_loss", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history), append=True),
    ]
    callbacks.extend(extra_callbacks)
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(work.parent / "tensorboard" / name)))
    # The datasets know their length (pipeline keep_length), so every epoch's bar has its total.
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
              class_weight=class_weight, shuffle=False, verbose=cfg.verbose)
    return pd.read_csv(history) if history.exists() else pd.DataFrame()


def imbalance_weights(cfg: TrainConfig, mode: Mode, targets: np.ndarray, strata: np.ndarray):
    """(positive weights for a weighted BCE, Keras class_weight) for the training rows.

    Multi-hot targets get per-genre positive weights, never class_weight (Keras
    would weight each row by its argmax); one-hot targets get class_weight.
    """
    if not cfg.class_weight:
        return None, None
    if mode.one_hot:
        return None, class_weights(strata, cfg.class_weight)
    return positive_weights(targets, cfg.class_weight), None


def member_sets(cfg: TrainConfig, T: np.ndarray, train: np.ndarray, val: np.ndarray, j: int):
    """One OvA member's balanced train and validation rows, binary labels and class_weight.

    Training and tuning both call this, so a tuned member sees the same sets it is retrained on.
    """
    tr, y_train = ova_subset(T[train], j, cfg.positive_share, cfg.seed + j)
    va, y_val = ova_subset(T[val], j, cfg.positive_share, cfg.seed + j)
    weights = class_weights(y_train.astype(int), cfg.class_weight) if cfg.class_weight else None
    return train[tr], y_train, val[va], y_val, weights


def balanced_rows(cfg: TrainConfig, strata: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The training rows after --balance (undersample / oversample on the collapsed label)."""
    return rows[BALANCING[cfg.balance](strata[rows], seed=cfg.seed)] if cfg.balance else rows


class Trainer:
    """Trains one run into its folder. `train()` is the function most callers want."""

    def __init__(self, cfg: TrainConfig, out: str | os.PathLike, overwrite: bool = False, callbacks=(),
                 trunk_from: Path | None = None):
        self.cfg = cfg
        self.trunk_from = trunk_from  # a shared trunk trained by an earlier run with the same trunk settings
        self.mode = get_mode(cfg.mode)
        self.callbacks = list(callbacks)  # extra Keras callbacks for every fit
        self.out, self.overwrite = out, overwrite

    def run(self, table: PosterTable | None = None) -> RunFolder:
        cfg = self.cfg
        started = time.time()
        keras.utils.set_random_seed(cfg.seed)
        # Mistakes in the data, the weights or the cache path fail here, before any folder is claimed.
        data = prepare_data(cfg, table)
        check_cache(cfg.cache)
        backbone, trainable = new_backbone(cfg)
        self.folder = folder = RunFolder.claim(self.out, cfg, self.overwrite, versions=versions())
        try:
            return self._run(folder, data, backbone, trainable, started)
        except GenreclsError:
            folder.release()  # a run that failed before its first epoch leaves nothing to --overwrite
            raise

    def _run(self, folder: RunFolder, data: PreparedData, backbone, trainable, started: float) -> RunFolder:
        cfg = self.cfg
        folder.save_vocab(data.vocab)
        folder.save_split(data.split_ids())
        T = data.targets(cfg.mode)
        staged = cfg.trunk == "shared" and trainable in ("all", "partial")
        if staged:
            backbone, trainable = self._shared_trunk(data, (backbone, trainable)), "frozen"
        # a frozen backbone (pretrained, or the shared trunk) runs once per poster: heads fit on its features
        use_features = trainable == "frozen" and (staged or cfg.cache_features and not cfg.augment)
        features = cached_features(cfg, data, backbone, folder.features_path) if use_features else None
        inputs = Inputs(cfg, data.paths, features, data.texts)
        split = Split(*(inputs.usable(getattr(data.split, p)) for p in ("train", "val", "test")))
        # the text branch's vocabulary comes from the training split only
        self.text = TextEncoder(data.texts[split.train], cfg.text_width, cfg.text_dropout).branch if cfg.text else None

        self.inputs, self.split = inputs, split
        train_loop = self._train_ova if self.mode.members else self._train_single
        model, on_features, bias = train_loop(data, T, split, (backbone, trainable), inputs, use_features)
        scale, bias = self._calibration(on_features or model, self.inputs, data, self.split, bias)
        final = calibrated(model, scale, bias, self.mode.activation)
        folder.save_model(final, members=self.mode.members)
        folder.clean_backups()
        folder.mark_finished(time.time() - started)
        print(f"\nrun written to {folder}", flush=True)
        return folder

    # ------------------------------------------------------------ calibration

    def _calibration(self, model, inputs: Inputs, data: PreparedData, split: Split, bias: np.ndarray):
        """(scale, bias) of the Calibration layer: prior shift, then Platt / temperature on validation."""
        cfg = self.cfg
        k = len(data.vocab.names)
        if cfg.calibration == "none":
            return np.ones(k), np.zeros(k)
        if cfg.calibration == "prior":
            return np.ones(k), bias
        p_val, rows = predict_split(model, inputs, split.val, "validation")
        shifted = calibration.apply(p_val, 1.0, bias, self.mode.activation)
        if self.mode.activation == "softmax":
            scale = calibration.fit_temperature(data.strata[rows], shifted)
            return np.full(k, scale), scale * bias
        scale, platt_bias = calibration.fit_platt(data.Y[rows], shifted)
        return scale, scale * bias + platt_bias

    def _prior_bias(self, data: PreparedData, T: np.ndarray, train: np.ndarray, fitted_rows: np.ndarray,
                    weight_ratio=None):
        """Undo the shift from the shares the model was fit on to each genre's real prevalence.

        For multiclass the fit shares are those of the collapsed single label (a poster's least
        common genre), so the correction also re-ranks genres by how often posters really have them.
        """
        real = data.Y[train].mean(axis=0)
        return calibration.prior_shift_bias(real, T[fitted_rows].mean(axis=0), weight_ratio, self.mode.activation)

    # -------------------------------------------------------------- fitting

    def _train_single(self, data, T, split, backbone, inputs, use_features):
        cfg = self.cfg
        train = balanced_rows(cfg, data.strata, split.train)
        keras.utils.set_random_seed(cfg.seed)
        built = build_model(cfg, T.shape[1], self.mode.activation, backbone=backbone, text=self.text)
        fitted = built.head if use_features else built.full
        pos_weight, class_weight = imbalance_weights(cfg, self.mode, T[train], data.strata[train])
        compile_model(fitted, self.mode, cfg, pos_weight=pos_weight, steps_per_epoch=steps(len(train), cfg.batch_size))
        history = fit(fitted, inputs.dataset(train, T[train], True), inputs.dataset(split.val, T[split.val], False),
                      cfg, self.folder.checkpoints, "model", class_weight, self.callbacks)
        history.to_csv(self.folder.history_path, index=False)
        weights = pos_weight if pos_weight is not None else (
            [class_weight.get(c, 1.0) for c in range(T.shape[1])] if class_weight else None)
        bias = self._prior_bias(data, T, split.train, train, weights)
        return built.full, (built.head if use_features else None), bias

    def _shared_trunk(self, data, backbone) -> keras.Model:
        """--trunk shared: the backbone learns all genres at once (multilabel, posters only), then freezes.

        The mode's head (each OvA member's, on its own balanced set, as in report
        002; the text branch with it) is then fitted on its cached features: the
        shared trunk stands in for the pretrained backbone a user without ImageNet
        weights lacks, and a fast-learning text branch cannot stop the slow poster
        network's training early. Saved, so a resumed run skips it.
        """
        cfg, path = self.cfg, self.folder.trunk_path
        if not path.exists() and self.trunk_from:
            shutil.copyfile(self.trunk_from, path)
        if path.exists():
            print(f"shared trunk already trained, loading {path.name}", flush=True)
            trunk = load_keras(path)
        else:
            print("stage 1: training the shared trunk on the posters' genres", flush=True)
            mode = get_mode("multilabel")
            keras.utils.set_random_seed(cfg.seed)
            built = build_model(cfg, data.Y.shape[1], mode.activation, backbone=backbone, name="trunk")
            compile_model(built.full, mode, cfg, steps_per_epoch=steps(len(data.split.train), cfg.batch_size))
            images = Inputs(cfg, data.paths, None)
            train, val = (images.usable(getattr(data.split, p)) for p in ("train", "val"))
            fit(built.full, images.dataset(train, data.Y[train], True), images.dataset(val, data.Y[val], False),
                cfg, self.folder.checkpoints, "trunk", None, self.callbacks)
            trunk = built.backbone
            save_keras(trunk, path)
        trunk.trainable = False
        print("stage 2: fitting the head on the trunk's features" + (" and the text" if cfg.text else ""), flush=True)
        return trunk

    def _train_ova(self, data, T, split, backbone, inputs, use_features):
        members, histories, fit_share, ratio = [], [], [], []
        for j, genre in enumerate(data.vocab.names):
            train_idx, y_train, val_idx, y_val, weights = member_sets(self.cfg, T, split.train, split.val, j)
            fit_share.append(y_train.mean())
            ratio.append(weights[1] / weights[0] if weights else 1.0)
            path = self.folder.member_path(j, genre)
            if path.exists():  # finished before an interruption
                print(f"[{j + 1}/{T.shape[1]}] {genre}: already trained, loading {path.name}", flush=True)
                members.append(load_keras(path))
            else:
                print(f"[{j + 1}/{T.shape[1]}] training the {genre} member", flush=True)
                member = self._train_member(j, genre, backbone, inputs, use_features,
                                            (train_idx, y_train, val_idx, y_val, weights))
                save_keras(member, path)
                members.append(member)
            hist_file = self.folder.checkpoints / f"{member_slug(j, genre)}.history.csv"
            if hist_file.exists():
                histories.append(pd.read_csv(hist_file).assign(genre=genre))
        if histories:
            pd.concat(histories).to_csv(self.folder.history_path, index=False)
        shared = backbone[0] if backbone[1] == "frozen" else None  # members are heads on one frozen backbone
        real = T[split.train].mean(axis=0)
        bias = calibration.prior_shift_bias(real, fit_share, ratio)
        return combine_members(members, shared), (combine_heads(members) if use_features else None), bias

    def _train_member(self, j, genre, backbone, inputs, use_features, sets):
        cfg = self.cfg
        train_idx, y_train, val_idx, y_val, weights = sets
        keras.utils.set_random_seed(cfg.seed + j)
        if not use_features and backbone[1] in ("all", "partial"):  # each member tunes its own backbone
            backbone = new_backbone(cfg)
        own = (cfg.member_overrides or {}).get(genre, {})
        text = self.text and partial(self.text, width=own.get("text_width"), dropout=own.get("text_dropout"))
        built = build_model(cfg, 1, "sigmoid", backbone=backbone, head=own.get("head"), dropout=own.get("dropout"),
                            name=f"member_{j}", text=text)
        fitted = built.head if use_features else built.full
        compile_model(fitted, MEMBER, cfg, own.get("learning_rate"), steps_per_epoch=steps(len(train_idx), cfg.batch_size))
        fit(fitted, inputs.dataset(train_idx, y_train[:, None], True), inputs.dataset(val_idx, y_val[:, None], False),
            cfg, self.folder.checkpoints, member_slug(j, genre), weights, self.callbacks)
        # on a shared frozen backbone a member is its head (the combined model runs the backbone once)
        return built.head if backbone[1] == "frozen" else built.full


def check_cache(cache: str | None) -> None:
    """--cache names memory or a file prefix in an existing folder."""
    if cache and cache != "memory" and not os.path.isdir(os.path.dirname(os.path.abspath(cache))):
        raise GenreclsError(f"--cache {cache}: the folder {os.path.dirname(os.path.abspath(cache))} is missing; "
                            "create it or use --cache memory")


def train(cfg: TrainConfig, out: str | os.PathLike, overwrite: bool = False, table: PosterTable | None = None,
          callbacks=(), evaluate: bool = True, plots: bool = False, trunk_from: Path | None = None) -> dict | None:
    """Train one run into the folder `out`, evaluate it on the test split and return its metrics.

    Re-running it on the same folder with the same config resumes an
    interrupted run; `callbacks` are extra Keras callbacks for every fit.
    trunk_from: the shared trunk (checkpoints/trunk.keras) of an earlier run whose
    trunk settings, data and seed are the same, to skip stage 1 (the quality benchmark's rows).
    """
    folder = Trainer(cfg, out, overwrite, callbacks, trunk_from).run(table)
    if not evaluate:
        return None
    from genrecls.report import evaluate_run

    return evaluate_run(folder.path, table=table, plots=plots)
