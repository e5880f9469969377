"""Fitting: the house callbacks, the single-model and one-vs-all loops, calibration.

`train()` claims a run folder, fits the config's mode, appends the
calibration that maps the model's outputs back to the real genre
prevalence (and, if asked, Platt / temperature scaling fitted on
validation), marks the run finished and evaluates it (`report`).
"""

from __future__ import annotations

import json
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
from genrecls.components import MaskedMemberLoss, MemberEarlyStopping, MemberLosses
from genrecls.config import PLATEAU_FACTOR, TrainConfig, parse_shard
from genrecls.errors import GenreclsError
from genrecls.datasets import PosterTable
from genrecls.distribute import agree, all_ok, get_strategy, scratch_folder, task
from genrecls.labels import Split, class_weights, oversample, ova_subset, positive_weights, undersample
from genrecls.models import (build_model, calibrated, combine_heads, combine_members, compile_model, new_backbone,
                             one_fit_model, optimizer, side_by_side, steps)
from genrecls.modes import MEMBER, Mode, get_mode
from genrecls.preparation import Inputs, PreparedData, cached_features, predict_split, prepare_data
from genrecls.runs import RunFolder, damaged, load_keras, member_slug, save_keras
from genrecls.text import TextEncoder

BALANCING = {"undersample": undersample, "oversample": oversample}
# OvA member losses one fit can mask per member (elementwise); soft F1 is a whole batch's, so it keeps one fit each
ELEMENTWISE_LOSSES = ("bce", "focal")


def versions() -> dict:
    return {
        "genrecls": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def fit(model, train_ds, val_ds, cfg: TrainConfig, work: Path, name: str, class_weight=None,
        extra_callbacks=(), stopping=None) -> pd.DataFrame:
    """model.fit with the house callbacks; returns the epoch history.

    EarlyStopping (val_loss, patience, best weights restored; or `stopping`,
    e.g. per OvA member), BackupAndRestore so a killed run resumes at its last
    finished epoch, TerminateOnNaN, a CSV log, TensorBoard.
    """
    work.mkdir(parents=True, exist_ok=True)
    history = work / f"{name}.history.csv"
    backup = work / "backup" / name
    # under multiworker every worker must resume at the same epoch, or the ones ahead wait for the others
    agree(tf.distribute.get_strategy(), backed_up_epoch(backup), f"the epoch the {name} fit resumes at")
    stop, *schedule = stopping_and_schedule(cfg, stopping)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        stop,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history), append=True),
        *schedule,
        *extra_callbacks,
    ]
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(work.parent / "tensorboard" / name)))
    if not model.optimizer.built:  # its variables made before fit: Keras then traces the train step once, not twice
        model.optimizer.build(model.trainable_variables)
    # The datasets know their length (pipeline keep_length), so every epoch's bar has its total.
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks,
              class_weight=class_weight, shuffle=False, verbose=cfg.verbose)
    return pd.read_csv(history) if history.exists() else pd.DataFrame()


def stopping_and_schedule(cfg: TrainConfig, stopping=None) -> list:
    """Early stopping on the validation loss (best weights restored; or `stopping`, e.g. per OvA member)
    and, with --lr-schedule plateau, the rate's cut when that loss stalls: every fit's, the tuner's trials'
    included, so a search tries its settings under the schedule the run will train with."""
    callbacks = [stopping or keras.callbacks.EarlyStopping("val_loss", patience=cfg.patience,
                                                           restore_best_weights=True)]
    if cfg.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=PLATEAU_FACTOR,
                                                           patience=max(1, cfg.patience // 3)))
    return callbacks


def backed_up_epoch(backup: Path) -> int:
    """The epoch a BackupAndRestore folder resumes at (-1: none, or unreadable)."""
    try:
        return int(json.loads((backup / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


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


def shard_members(cfg: TrainConfig, k: int) -> list[int]:
    """The members a run trains: all k, or with --shard I/N those j with j % N == I."""
    if not cfg.shard:
        return list(range(k))
    i, n = parse_shard(cfg.shard)
    return [j for j in range(k) if j % n == i]


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
        """Train into the run folder and return it; a non-chief worker returns None (the chief writes the run)."""
        cfg = self.cfg
        started = time.time()
        # The strategy first: a bad TF_CONFIG fails before any work, and collectives start before other ops.
        strategy, self.task = get_strategy(cfg.distribute), task(cfg.distribute)
        keras.utils.set_random_seed(cfg.seed)  # in every worker: identical initial weights
        # Mistakes in the data, the weights or the cache path fail here, before any folder is claimed.
        data = prepare_data(cfg, table)
        unknown = sorted(set(cfg.member_overrides or {}) - set(data.vocab.names))
        if unknown:  # a misspelt genre's settings would be ignored without a word
            raise GenreclsError(f"member-overrides name genres this run does not have: {', '.join(unknown)}; "
                                f"its genres are {', '.join(data.vocab.names)}")
        check_cache(cfg.cache)
        with strategy.scope():  # every model, and every variable, of the run lives in the strategy
            backbone, trainable = new_backbone(cfg)
            if cfg.trunks > 1 and trainable not in ("all", "partial"):
                raise GenreclsError(f"--trunks {cfg.trunks} trains several shared trunks, but the {cfg.backbone} "
                                    "backbone is frozen here (pretrained, --fine-tune-last 0): train it "
                                    "(--fine-tune-last -1) or drop --trunks")
            if cfg.distribute == "multiworker" and self.mode.members and \
                    trainable in ("all", "partial") and cfg.trunk != "shared":
                # each member is a network of its own (report 002): they need no collectives, and under
                # MultiWorkerMirroredStrategy such a member's fit fails in Keras (README, Distributed training)
                raise GenreclsError("OvA members that each train their own backbone spread over machines with "
                                    "--shard I/N and 'genrecls combine', not --distribute multiworker (or pass "
                                    "--trunk shared to train one trunk together)")
            self.folder = folder = self._claim(strategy)
            try:
                self._run(folder, data, backbone, trainable, started)
            except BaseException:  # a mistake, out of memory, Ctrl-C: whatever stops a run
                folder.release()  # before its first checkpoint leaves nothing to --overwrite
                raise
        if self.task.chief:
            if not cfg.shard:
                print(f"\nrun written to {folder}", flush=True)
            return folder
        shutil.rmtree(folder.path)  # the scratch folder this worker claimed
        print(f"\nworker {self.task.index} finished; the chief wrote the run", flush=True)
        return None

    def _claim(self, strategy) -> RunFolder:
        """The chief claims the run folder; another worker claims its own scratch folder instead.

        A worker whose claim fails still tells the others, so all of them stop
        (one that went on would wait for it in the first collective for ever).
        """
        out, overwrite = self.out, self.overwrite
        if not self.task.chief:
            out = scratch_folder(self.out, self.task.index)
            overwrite = overwrite or RunFolder(out).finished  # left by a worker killed as it finished
        try:
            folder = RunFolder.claim(out, self.cfg, overwrite, kind="shard" if self.cfg.shard else "run", versions=versions())
        except GenreclsError:
            all_ok(strategy, False)
            raise
        if not all_ok(strategy, True):
            folder.release()
            raise GenreclsError("another worker could not start the run (its error says why); "
                                "fix it and restart every worker")
        return folder

    def _run(self, folder: RunFolder, data: PreparedData, backbone, trainable, started: float) -> None:
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
        if model is None:  # a shard: its members wait for `genrecls combine`
            folder.clean_backups()
            folder.mark_finished(time.time() - started)
            print(f"\nshard {cfg.shard} written to {folder}; once every shard is trained, join them with "
                  "'genrecls combine OUT SHARD_RUN...'", flush=True)
            return
        scale, bias = self._calibration(on_features or model, self.inputs, data, self.split, bias)
        final = calibrated(model, scale, bias, self.mode.activation)
        folder.save_model(final, members=self.mode.members)
        folder.clean_backups()
        folder.mark_finished(time.time() - started)

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
        network's training early. With --trunks N, N trunks learn (`_train_trunk`)
        and the head reads their features side by side (an ensemble: trunks
        trained from scratch on a few thousand posters differ a lot from seed to
        seed). Saved, so a resumed run skips what is done.
        """
        cfg, path = self.cfg, self.folder.trunk_path
        if not path.exists() and self.trunk_from:
            shutil.copyfile(self.trunk_from, path)
        agree(tf.distribute.get_strategy(), path.exists(), "whether the shared trunk is trained")
        if path.exists():
            print(f"shared trunk already trained, loading {path.name}", flush=True)
            trunk = load_keras(path)
        else:
            trunks = [self._train_trunk(data, backbone, i) for i in range(cfg.trunks)]
            trunk = side_by_side(trunks)
            save_keras(trunk, path)
        trunk.trainable = False
        print("stage 2: fitting the head on the trunk's features" + (" and the text" if cfg.text else ""), flush=True)
        return trunk

    def _train_trunk(self, data, backbone, i: int) -> keras.Model:
        """Shared trunk i of --trunks N; with N > 1 each is saved on its own.

        Every trunk starts from the backbone weights the run's seed gives (`backbone` is trunk 0's,
        built from it); trunk i's own draws (the head's first weights, the batch order, augmentation
        and dropout) come from the seed + i, so trunk 0 is the one --trunks 1 trains."""
        cfg = self.cfg
        own = self.folder.checkpoints / f"trunk-{i}.keras"
        if cfg.trunks > 1 and own.exists():
            print(f"shared trunk {i + 1} of {cfg.trunks} already trained, loading it", flush=True)
            return load_keras(own)
        if i > 0:
            keras.utils.set_random_seed(cfg.seed)
            backbone = new_backbone(cfg)
        print("stage 1: training the shared trunk" + (f" {i + 1} of {cfg.trunks}" if cfg.trunks > 1 else "")
              + " on the posters' genres", flush=True)
        mode = get_mode("multilabel")
        keras.utils.set_random_seed(cfg.seed + i)
        built = build_model(cfg, data.Y.shape[1], mode.activation, backbone=backbone, name="trunk")
        compile_model(built.full, mode, cfg, steps_per_epoch=steps(len(data.split.train), cfg.batch_size))
        images = Inputs(cfg, data.paths, None)
        train, val = (images.usable(getattr(data.split, p)) for p in ("train", "val"))
        fit(built.full, images.dataset(train, data.Y[train], True), images.dataset(val, data.Y[val], False),
            cfg, self.folder.checkpoints, "trunk" if i == 0 else f"trunk-{i}", None, self.callbacks)
        if cfg.trunks > 1:
            save_keras(built.backbone, own)
        return built.backbone

    def _train_ova(self, data, T, split, backbone, inputs, use_features):
        """The OvA members (those of this shard), each on its own balanced set; then combined.

        On in-memory inputs (cached features, texts) the members are heads of one model fitted
        at once (`_fit_members`), else one fit each. Saved members are loaded, not trained again.
        """
        cfg, genres, folder = self.cfg, data.vocab.names, self.folder
        sets = [member_sets(cfg, T, split.train, split.val, j) for j in range(len(genres))]
        mine = shard_members(cfg, len(genres))
        todo = [j for j in mine if not folder.member_path(j, genres[j]).exists()]
        # under multiworker every worker must train the same members, or one waits for the others for ever
        agree(tf.distribute.get_strategy(), sum(1 << j for j in todo), "which members are left to train")
        for j in sorted(set(mine) - set(todo)):  # finished before an interruption
            print(f"[{j + 1}/{len(genres)}] {genres[j]}: already trained, loading it", flush=True)
        trained = self._fit_members(todo, genres, T, sets, backbone, inputs) if todo and self._one_fit(inputs) else {}
        for j in [j for j in todo if j not in trained]:
            print(f"[{j + 1}/{len(genres)}] training the {genres[j]} member", flush=True)
            trained[j] = self._train_member(j, genres[j], backbone, inputs, use_features, sets[j])
            save_keras(trained[j], folder.member_path(j, genres[j]))
        histories = [pd.read_csv(path).assign(genre=genre) for genre, path in
                     ((g, folder.checkpoints / f"{member_slug(j, g)}.history.csv") for j, g in enumerate(genres))
                     if path.exists()]
        if histories:
            pd.concat(histories).to_csv(folder.history_path, index=False)
        if cfg.shard:
            return None, None, None
        members = [trained[j] if j in trained else load_keras(folder.member_path(j, g)) for j, g in enumerate(genres)]
        shared = backbone[0] if backbone[1] == "frozen" else None  # members are heads on one frozen backbone
        fit_share = [y_train.mean() for _, y_train, _, _, _ in sets]
        ratio = [weights[1] / weights[0] if weights else 1.0 for *_, weights in sets]
        bias = calibration.prior_shift_bias(T[split.train].mean(axis=0), fit_share, ratio)
        return combine_members(members, shared), (combine_heads(members) if use_features else None), bias

    def _one_fit(self, inputs: Inputs) -> bool:
        """All members in one fit: on cached features without text, with a loss masked per member
        (elementwise), a constant learning rate (a schedule counts each member's own steps) and one
        replica (each member's batch-norm statistics come from its own rows in the whole batch)."""
        cfg = self.cfg
        return (cfg.ova_fit == "one" and inputs.features is not None and inputs.texts is None
                and cfg.loss in ELEMENTWISE_LOSSES and cfg.lr_schedule == "constant"
                and tf.distribute.get_strategy().num_replicas_in_sync == 1)

    def _member_model(self, j, genre, backbone, own_backbone: bool = False, head_only: bool = False):
        """Member j's model (Built), seeded by its index, with its own overrides (and backbone, if asked;
        head_only: fitted on cached features, the whole model is not built)."""
        cfg = self.cfg
        keras.utils.set_random_seed(cfg.seed + j)
        if own_backbone:
            backbone = new_backbone(cfg)
        own = (cfg.member_overrides or {}).get(genre, {})
        text = self.text and partial(self.text, width=own.get("text_width"), dropout=own.get("text_dropout"))
        return build_model(cfg, 1, "sigmoid", backbone=backbone, head=own.get("head"), dropout=own.get("dropout"),
                           name=f"member_{j}", text=text, head_only=head_only)

    def _train_member(self, j, genre, backbone, inputs, use_features, sets):
        cfg = self.cfg
        train_idx, y_train, val_idx, y_val, weights = sets
        # through a trainable backbone each member tunes its own (report 002)
        built = self._member_model(j, genre, backbone, not use_features and backbone[1] in ("all", "partial"),
                                   head_only=use_features)
        fitted = built.head if use_features else built.full
        own = (cfg.member_overrides or {}).get(genre, {})
        compile_model(fitted, MEMBER, cfg, own.get("learning_rate"), steps_per_epoch=steps(len(train_idx), cfg.batch_size))
        fit(fitted, inputs.dataset(train_idx, y_train[:, None], True), inputs.dataset(val_idx, y_val[:, None], False),
            cfg, self.folder.checkpoints, member_slug(j, genre), weights, self.callbacks)
        # on a shared frozen backbone a member is its head (the combined model runs the backbone once)
        return built.head if backbone[1] == "frozen" else built.full

    def _fit_members(self, todo, genres, T, sets, backbone, inputs) -> dict:
        """The members `todo` as the heads of one model, fitted at once; saved, and returned by index.

        Each head is the one its own fit would build (same seed and overrides), stacked with the
        others of its architecture (models.one_fit_model); every step holds each member's own next
        batch, drawn as its own fit would draw it (Inputs.member_batches), its loss is that batch's
        mean (components.MaskedMemberLoss, class weights folded in), its batch-norm statistics its own
        rows', its Adam step its own (MemberAdam: own rate, own step count), its early stopping and
        best epoch its own (MemberEarlyStopping). So each member is the model its own fit would
        give, up to float rounding and dropout's random draws.
        """
        cfg, folder = self.cfg, self.folder
        print(f"training the {', '.join(genres[j] for j in todo)} member{'s' * (len(todo) > 1)} in one fit", flush=True)
        heads = {j: self._member_model(j, genres[j], backbone, head_only=True).head for j in todo}
        names = {j: f"loss_{j:02d}" for j in todo}
        longest_first = sorted(todo, key=lambda j: -len(sets[j][0]))  # members whose epoch is over drop out of a step
        model, members = one_fit_model({names[j]: heads[j] for j in longest_first})
        member_of = {name: j for j, name in names.items()}
        order = [member_of[name] for name in members.names]  # the model's columns: a stack holds a group of members

        def parts(training: bool) -> list:
            out = []
            for j in order:
                train_rows, y_train, val_rows, y_val, weights = sets[j]
                if training:
                    w = np.array([weights[int(v)] for v in y_train]) if weights else np.ones(len(y_train))
                    out.append((train_rows, y_train, w, cfg.seed + j))
                else:
                    out.append((val_rows, y_val, np.ones(len(y_val)), cfg.seed + j))
            return out

        masked = MaskedMemberLoss(MEMBER.loss(cfg.loss, None, cfg.label_smoothing))
        own = {j: (cfg.member_overrides or {}).get(genres[j], {}) for j in todo}
        rates = {names[j]: own[j]["learning_rate"] / cfg.learning_rate for j in todo if "learning_rate" in own[j]}
        model.compile(optimizer=optimizer(cfg, members=members, rate_factors=rates), loss=masked)
        model.member_losses = MemberLosses(masked, [names[j] for j in order])
        stopping = MemberEarlyStopping(members, cfg.patience, folder.checkpoints / "backup" / "ova.members")
        history = fit(model, inputs.member_batches(parts(True), True), inputs.member_batches(parts(False), False),
                      cfg, folder.checkpoints, "ova", None, self.callbacks, stopping)
        fitted = members.get(set(names.values()))  # the best epochs (MemberEarlyStopping restored them)
        history = history.drop_duplicates("epoch", keep="last")  # an epoch repeated after a resume
        for j in todo:  # each member's own history: the epochs it counted, as its own fit would have run
            heads[j].set_weights(fitted[names[j]])
            stopped = stopping.state[names[j]]["stopped"]
            rows = history if stopped is None else history[history["epoch"] <= stopped]
            pd.DataFrame({"epoch": rows["epoch"], "loss": rows[names[j]], "val_loss": rows[f"val_{names[j]}"]}).to_csv(
                folder.checkpoints / f"{member_slug(j, genres[j])}.history.csv", index=False)
            save_keras(heads[j], folder.member_path(j, genres[j]))
        (folder.checkpoints / "ova.history.csv").unlink(missing_ok=True)
        return heads


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
    if not evaluate or cfg.shard or folder is None:  # a shard is evaluated once combined; None: not the chief
        return None
    from genrecls.report import evaluate_run

    return evaluate_run(folder.path, table=table, plots=plots)


def combine_shards(out: str | os.PathLike, shard_runs: list, overwrite: bool = False, data: str | None = None,
                   evaluate: bool = True, plots: bool = False) -> dict | None:
    """Join the shard runs of one OvA run (`train --shard I/N` on several machines) into the run folder `out`.

    The shards must be finished genrecls shards of the same settings (the shard and the dataset's
    path aside), genres and split that together hold every member exactly once. Their members (with
    their histories, and the shared trunk) are copied into `out`, claimed like any run, which is then
    finished as a resumed `train` of the whole run: the combined model, calibration, thresholds and
    report are those of a run trained on one machine. data: the dataset folder, if not the first shard's.
    """
    if not shard_runs:
        raise GenreclsError("name the shard runs to combine")
    shards = [RunFolder.open(path, kind="shard") for path in shard_runs]
    configs = [shard.load_config() for shard in shards]
    first, base = shards[0], configs[0].to_json()
    genres, split = first.load_vocab().names, first.load_split()
    for shard, cfg in zip(shards[1:], configs[1:]):
        changed = [k for k in cfg.changed_from(base) if k not in ("shard", "data")]
        if changed:
            raise GenreclsError(f"{shard} and {first} are shards of different runs ({', '.join(changed)} differ); "
                                "combine the shards of one command line")
        if shard.load_vocab().names != genres or shard.load_split() != split:
            raise GenreclsError(f"{shard} and {first} were trained on other genres or another split; "
                                "combine the shards of one command line on one dataset")
    owners = {j: [s for s, cfg in zip(shards, configs) if j in shard_members(cfg, len(genres))]
              for j in range(len(genres))}
    missing = [genres[j] for j, held in owners.items() if not held]
    if missing:
        raise GenreclsError(f"no shard run holds the {', '.join(missing)} member{'s' * (len(missing) > 1)}; "
                            "train the missing shard and combine all of them")
    twice = [f"{genres[j]} ({', '.join(str(s) for s in held)})" for j, held in owners.items() if len(held) > 1]
    if twice:
        raise GenreclsError(f"members held by more than one shard run: {'; '.join(twice)}; name each shard once")
    for j, genre in enumerate(genres):
        if not owners[j][0].member_path(j, genre).is_file():
            raise damaged(owners[j][0].member_path(j, genre), f"the {genre} member", "missing")
    trunks = [shard.trunk_path for shard in shards if shard.trunk_path.exists()]
    if trunks and (len(trunks) < len(shards) or not _same_weights(trunks)):
        raise GenreclsError(f"the shard runs hold different shared trunks ({', '.join(map(str, trunks))}): members "
                            "of different trunks cannot be combined; train the shards where stage 1 gives the same "
                            "trunk (same seed, machine type and library versions) or the whole run on one machine")

    cfg = TrainConfig.from_json({**base, "shard": None, "distribute": "none", **({"data": data} if data else {})})
    prepared = prepare_data(cfg)
    if prepared.vocab.names != genres or prepared.split_ids() != split:
        raise GenreclsError(f"{cfg.data} gives other genres or another split than the shards were trained on; "
                            "pass their dataset with --data")
    folder = RunFolder.claim(out, cfg, overwrite, versions=versions())
    print(f"combining {len(shards)} shard runs into {folder}", flush=True)
    folder.checkpoints.mkdir(exist_ok=True)
    for j, genre in enumerate(genres):
        _copy(owners[j][0].member_path(j, genre), folder.member_path(j, genre))
        history = f"{member_slug(j, genre)}.history.csv"
        if (owners[j][0].checkpoints / history).is_file():
            _copy(owners[j][0].checkpoints / history, folder.checkpoints / history)
    if trunks:
        _copy(trunks[0], folder.trunk_path)
    return train(cfg, out, table=prepared.table, evaluate=evaluate, plots=plots)


def _same_weights(paths: list) -> bool:
    weights = [load_keras(path).get_weights() for path in paths]
    return all(len(w) == len(weights[0]) and all(np.array_equal(a, b) for a, b in zip(w, weights[0]))
               for w in weights[1:])


def _copy(source: Path, target: Path) -> None:
    """Copy through a temporary name, so a kill never leaves half a file."""
    partial_file = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial_file)
    os.replace(partial_file, target)
