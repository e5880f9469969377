"""One-vs-all members fitted in one Keras fit, sharded members and `genrecls combine`."""

from __future__ import annotations

import dataclasses
import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from genrecls.cli import main
from genrecls.components import MaskedMemberLoss, MemberAdam, MemberEarlyStopping, MemberLosses, MemberWeights
from genrecls.errors import GenreclsError
from genrecls.heads import build_head
from genrecls.models import one_fit_model, optimizer
from genrecls.pipeline import make_dataset
from genrecls.runs import RunFolder
from genrecls.preparation import Inputs
from genrecls.training import Trainer, combine_shards, train
from tests.helpers import tiny_config

# a frozen random backbone: the members train on cached features, so all of them in one fit
ONE_FIT = dict(mode="ova", top_k=3, epochs=2, fine_tune_last=0, learning_rate=0.01, ova_fit="one")


def _posters(demo_dir) -> np.ndarray:
    paths = sorted((demo_dir / "posters").glob("*.jpg"))
    return np.concatenate([x for x, _ in make_dataset(paths, np.zeros(len(paths)), image_size=32, batch_size=32)])


def _probabilities(run, images) -> np.ndarray:
    return RunFolder.open(run).load_model().predict(images, verbose=0)


def test_masked_loss_ignores_rows_outside_a_members_set():
    masked = MaskedMemberLoss(keras.losses.BinaryCrossentropy())
    y = np.array([[1, 0], [0, 1], [1, 1]], "float32")
    weights = np.array([[1, 0], [2, 1], [0, 1]], "float32")  # row 2 is not in member 0's set; row 1 twice
    logits = tf.Variable(np.array([[0.5, -1.0], [0.2, 0.3], [-0.4, 0.8]], "float32"))

    def loss_and_gradient(labels):
        with tf.GradientTape() as tape:
            loss = masked(labels, tf.sigmoid(logits), sample_weight=weights)
        return float(loss), tape.gradient(loss, logits).numpy()

    loss, grad = loss_and_gradient(y)
    flipped = y.copy()
    flipped[2, 0] = 0  # the label of a row member 0 never sees
    assert loss_and_gradient(flipped)[0] == pytest.approx(loss)
    np.testing.assert_array_equal(loss_and_gradient(flipped)[1], grad)
    assert grad[2, 0] == 0 and grad[0, 1] == 0
    p = 1 / (1 + np.exp(-logits.numpy()))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert loss == pytest.approx((weights * bce).sum() / 3, rel=1e-5)  # each member's weighted mean over the batch

    metric = MemberLosses(masked, ["loss_00", "loss_01"])
    metric.update_state(y, tf.sigmoid(logits), sample_weight=weights)
    for j, value in enumerate(metric.result().values()):  # each member's weighted mean over its own rows
        assert float(value) == pytest.approx((weights[:, j] * bce[:, j]).sum() / weights[:, j].sum(), rel=1e-5)


def test_member_adam_scales_the_rate_of_its_members_variables_only():
    a, b = keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones((2, 2), "float32"))  # b: members 0 and 1
    optimizer = MemberAdam({id(b): (0, 2)}, [1.0, 3.0], learning_rate=0.1)
    optimizer.apply([tf.constant([1.0, -1.0]), tf.constant([[1.0, -1.0]] * 2)], [a, b])
    np.testing.assert_allclose(1 - a.numpy(), [0.1, -0.1], rtol=1e-4)  # Adam's first step moves by the rate
    np.testing.assert_allclose(1 - b.numpy(), [[0.1, -0.1], [0.3, -0.3]], rtol=1e-4)


def _heads(widths: dict, features: int) -> dict:
    heads = {}
    for j, (name, units) in enumerate(widths.items()):
        keras.utils.set_random_seed(j)
        heads[name] = build_head(features, 1, "sigmoid", units, 0.0, name=f"head_{j}")
    return heads


class _Features:
    """A stand-in for the feature store: rows of one array."""

    def __init__(self, array):
        self.array, self.dim = np.asarray(array, "float32"), array.shape[1]

    def take(self, rows):
        return self.array[rows]


def test_one_fit_trains_each_member_exactly_as_its_own_keras_fit():
    """Members of two architectures, sets of different sizes (so members wait), duplicated rows, class
    weights and a member's own learning rate: after 3 epochs in one fit, every member's weights (batch-norm
    statistics included) are those of a plain Keras fit of its head alone on its own set."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 6)).astype("float32")
    widths = {"a": (5, 4), "b": (5, 4), "c": (3,)}
    sizes = {"a": 37, "b": 12, "c": 25}  # batches of 8: 5, 2 and 4 steps an epoch
    sets = {n: (rng.choice(60, size, replace=n == "b"), (rng.random(size) < 0.4).astype("float32"))
            for n, size in sizes.items()}
    class_weights = {"a": {0: 1.0, 1: 2.5}, "b": None, "c": {0: 0.5, 1: 1.0}}
    factors, seeds = {"b": 3.0}, {"a": 10, "b": 11, "c": 12}
    cfg = tiny_config(".", batch_size=8, seed=4, learning_rate=0.01, epochs=3)

    heads = _heads(widths, 6)
    model, members = one_fit_model(heads)
    assert members.names == ["a", "b", "c"] and len(members.groups) == 2  # one stack per architecture
    inputs = Inputs(cfg, np.array(["x"] * 60), None)
    inputs.features = _Features(features)
    parts = [(sets[n][0], sets[n][1], np.array([class_weights[n][int(v)] for v in sets[n][1]]) if class_weights[n]
              else np.ones(sizes[n]), seeds[n]) for n in members.names]
    masked = MaskedMemberLoss(keras.losses.BinaryCrossentropy())
    model.compile(optimizer=optimizer(cfg, members=members, rate_factors=factors), loss=masked)
    model.optimizer.build(model.trainable_variables)
    model.fit(inputs.member_batches(parts, True), epochs=3, shuffle=False, verbose=0)
    fitted = members.get(members.names)

    alone = _heads(widths, 6)  # the same starting weights, each fitted by Keras on its own
    for name, head in alone.items():
        rows, labels = sets[name]
        tf.random.set_seed(seeds[name])  # how its own fit's shuffle is seeded (Inputs.dataset after set_random_seed)
        ds = tf.data.Dataset.from_tensor_slices((features[rows], labels[:, None]))
        ds = ds.shuffle(len(rows), seed=cfg.seed, reshuffle_each_iteration=True).batch(8)
        head.compile(optimizer=keras.optimizers.Adam(0.01 * factors.get(name, 1.0)), loss="binary_crossentropy")
        start = head.get_weights()
        head.fit(ds, epochs=3, class_weight=class_weights[name], shuffle=False, verbose=0)
        assert max(np.abs(w - s).max() for w, s in zip(head.get_weights(), start)) > 1e-2  # it learned
        for got, expected in zip(fitted[name], head.get_weights(), strict=True):
            np.testing.assert_allclose(got, expected, atol=2e-5)
    assert model.optimizer.member_steps.numpy().tolist() == [15, 6, 12]  # each member's own steps


def test_member_batches_hold_each_members_own_batch_side_by_side():
    cfg = tiny_config(".", batch_size=4, seed=0)
    inputs = Inputs(cfg, np.array(["x"] * 10), None)
    inputs.features = _Features(np.arange(10, dtype="float32")[:, None] * [1, -1])
    parts = [(np.array([0, 1, 2, 3, 4, 5]), np.ones(6), np.full(6, 2.0), 0), (np.array([7, 9]), np.zeros(2), np.ones(2), 1)]
    batches = list(inputs.member_batches(parts, training=False))
    assert len(batches) == 2  # the longest member's two batches; the other waits in the second
    x, labels, weights = (np.asarray(v) for v in (batches[1][0]["features"], batches[1][1], batches[1][2]))
    mask = batches[1][0]["mask"].numpy()
    assert mask.tolist() == [[1, 0], [1, 0], [0, 0], [0, 0]]
    assert x[:2, 0, 0].tolist() == [4, 5] and x[0, 0, 1] == -4 and weights[:, 0].tolist() == [2, 2, 0, 0]
    first = batches[0]
    assert first[0]["features"].numpy()[:, 1, 0].tolist() == [7, 9, 0, 0] and first[1].numpy()[:, 0].tolist() == [1] * 4
    trained = list(inputs.member_batches(parts, training=True))  # shuffled; weights scaled to the batch's mean
    w, m = trained[1][2].numpy()[:, 0], trained[1][0]["mask"].numpy()[:, 0]
    assert m.tolist() == [1, 1, 0, 0] and w.tolist() == [4.0, 4.0, 0, 0]  # 2 x 4 slots / 2 rows
    assert sorted(np.concatenate([b[0]["features"].numpy()[b[0]["mask"].numpy()[:, 0] > 0, 0, 0]
                                  for b in trained]).tolist()) == [0, 1, 2, 3, 4, 5]


def test_each_member_stops_and_restores_its_own_best_epoch_and_resumes(tmp_path):
    heads = {f"loss_{j:02d}": keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]) for j in range(2)}
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    # member 0 peaks at epoch 1 and runs out of patience at epoch 3 (its later, lower losses no longer count);
    # member 1 peaks at epoch 4 and runs out at epoch 6, which ends the fit
    val = {"loss_00": [0.9, 0.5, 0.6, 0.7, 0.4, 0.3, 0.2], "loss_01": [0.9, 0.8, 0.7, 0.6, 0.5, 0.6, 0.7]}

    def callback():
        stopping = MemberEarlyStopping(MemberWeights.of_heads(heads), patience=2, state_dir=tmp_path / "state")
        stopping.set_model(model)
        stopping.on_train_begin()
        return stopping

    def epoch(stopping, e):
        for head in heads.values():  # the weights after epoch e: e everywhere
            head.set_weights([np.full_like(w, e) for w in head.get_weights()])
        stopping.on_epoch_end(e, {f"val_{name}": losses[e] for name, losses in val.items()})

    model.stop_training = False
    first = callback()
    for e in range(3):
        epoch(first, e)
    second = callback()  # killed after epoch 2: a resumed fit reads the state back
    assert second.state["loss_00"]["best_epoch"] == 1 and second.state["loss_00"]["wait"] == 1
    for e in range(3, 7):
        epoch(second, e)
        assert model.stop_training == (e == 6)
    second.on_train_end()
    assert second.state["loss_00"]["stopped"] == 3 and second.state["loss_01"]["stopped"] == 6
    assert {float(w.flat[0]) for w in heads["loss_00"].get_weights()} == {1.0}  # its own best epoch
    assert {float(w.flat[0]) for w in heads["loss_01"].get_weights()} == {4.0}  # not epoch 4's 0.4 of member 0
    assert not (tmp_path / "state").exists()


def test_shard_option_is_checked(demo_dir, tmp_path, capsys):
    common = ["train", str(demo_dir), "--backbone", "simple", "--out", str(tmp_path / "run")]
    for mode, shard, expected in (("ova", "2/2", "shard must be I/N with whole numbers 0 <= I < N"),
                                  ("ova", "one/two", "shard must be I/N"),
                                  ("multilabel", "0/2", "--shard splits the one-vs-all members over machines; "
                                                        "it needs --mode ova, not multilabel")):
        assert main([*common, "--mode", mode, "--shard", shard]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ova_runs(demo_dir, tmp_path_factory):
    """One OvA config trained four ways: one fit, member by member, and as shards 0/2 and 1/2."""
    root = tmp_path_factory.mktemp("ova")
    cfg = tiny_config(demo_dir, **ONE_FIT)
    Trainer(cfg, root / "one_fit").run()
    Trainer(dataclasses.replace(cfg, ova_fit="members"), root / "loop").run()
    for i in range(2):
        assert train(tiny_config(demo_dir, **ONE_FIT, shard=f"{i}/2"), root / f"shard{i}") is None
    return root


@pytest.mark.slow
def test_one_fit_members_match_member_by_member(ova_runs, demo_dir):
    images = _posters(demo_dir)
    one, loop = _probabilities(ova_runs / "one_fit", images), _probabilities(ova_runs / "loop", images)
    assert np.abs(one - one.mean(axis=0)).mean() > 0.005  # the members learned something to compare
    # each member's own batches, steps and statistics: the same model up to float rounding (1.4e-4 seen)
    np.testing.assert_allclose(one, loop, atol=5e-4)
    assert sorted(p.name for p in (ova_runs / "one_fit" / "ova").iterdir()) == sorted(
        p.name for p in (ova_runs / "loop" / "ova").iterdir())
    history = pd.read_csv(ova_runs / "one_fit" / "history.csv")
    assert len(history) == 6 and {"epoch", "loss", "val_loss", "genre"} <= set(history)


@pytest.mark.slow
def test_shards_combine_into_the_run_one_machine_trains(ova_runs, demo_dir, tmp_path, capsys):
    shards = [ova_runs / "shard0", ova_runs / "shard1"]
    assert json.loads((shards[0] / "run.json").read_text())["kind"] == "shard"
    assert sorted(p.name for p in (shards[0] / "ova").iterdir()) == ["00_Comedy.keras", "02_Action.keras"]
    assert not (shards[0] / "metrics.json").exists()
    with pytest.raises(GenreclsError, match="is a genrecls shard, not a trained run; join the shards"):
        RunFolder.open(shards[0])

    assert main(["combine", str(tmp_path / "run"), *map(str, shards), "--no-report"]) == 0
    assert "combining 2 shard runs" in capsys.readouterr().out
    images = _posters(demo_dir)  # the calibration is inside the saved models: its probabilities are compared too
    np.testing.assert_allclose(_probabilities(tmp_path / "run", images), _probabilities(ova_runs / "one_fit", images),
                               atol=1e-3)  # float rounding only (oneDNN kernels differ with the number of heads)
    assert RunFolder(tmp_path / "run").finished
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 6

    # refusals: one line each, and nothing written
    other = tmp_path / "other"
    shutil.copytree(shards[1], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "learning_rate": 0.1}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for args, expected in (
        ([shards[0]], "no shard run holds the Drama member"),
        ([shards[0], shards[1], shards[0]], "members held by more than one shard run: Comedy"),
        ([shards[0], other], "are shards of different runs (learning_rate differ)"),
        ([shards[0], ova_runs / "one_fit"], "is a genrecls run, not a shard"),
    ):
        assert main(["combine", str(tmp_path / "out"), *map(str, args)]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(GenreclsError, match="files genrecls did not write"):
        combine_shards(mine, shards, evaluate=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_an_interrupted_one_fit_resumes(demo_dir, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cfg = tiny_config(demo_dir, **{**ONE_FIT, "epochs": 3, "patience": 5})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", callbacks=[Interrupt()])
    state = tmp_path / "run" / "checkpoints" / "backup"
    assert (state / "ova" / "latest.weights.h5").exists() and (state / "ova.members" / "state.json").exists()
    assert not (tmp_path / "run" / "ova").exists() or not any((tmp_path / "run" / "ova").iterdir())

    epochs = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    train(cfg, tmp_path / "run", callbacks=[Record()], evaluate=False)
    assert epochs == [1, 2]
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history.groupby("genre")["epoch"].apply(list).tolist() == [[0, 1, 2]] * 3
    assert RunFolder(tmp_path / "run").finished and not state.exists()
