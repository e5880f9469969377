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
from genrecls.components import MaskedMemberLoss, MemberAdam, MemberEarlyStopping, MemberLoss, MemberWeights
from genrecls.errors import GenreclsError
from genrecls.heads import build_head
from genrecls.models import combine_heads, one_fit_model
from genrecls.pipeline import make_dataset
from genrecls.runs import RunFolder
from genrecls.training import Trainer, combine_shards, member_weights, train
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

    metric = MemberLoss(masked, 0, "loss_00")
    metric.update_state(y, tf.sigmoid(logits), sample_weight=weights)
    assert float(metric.result()) == pytest.approx((weights[:, 0] * bce[:, 0]).sum() / 3, rel=1e-5)


def test_member_weights_count_duplicates_and_fold_in_class_weights():
    parts = [(np.array([0, 2, 2, 5]), np.array([1.0, 2.0, 2.0, 1.0])), (np.array([1, 5]), np.ones(2))]
    rows, weights = member_weights(parts, [1])
    assert rows.tolist() == [0, 1, 2, 5]  # every member's rows, even when only member 1 is fitted
    assert weights[:, 0].tolist() == [0, 1, 0, 1]
    assert member_weights(parts, [0, 1])[1][:, 0].tolist() == [1, 0, 4, 1]


def test_member_adam_scales_the_rate_of_its_members_variables_only():
    a, b = keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones(2, "float32"))
    optimizer = MemberAdam([([b], 3.0)], learning_rate=0.1)
    optimizer.apply([tf.constant([1.0, -1.0]), tf.constant([1.0, -1.0])], [a, b])
    np.testing.assert_allclose(1 - a.numpy(), [0.1, -0.1], rtol=1e-4)  # Adam's first step moves by the rate
    np.testing.assert_allclose(1 - b.numpy(), [0.3, -0.3], rtol=1e-4)


def test_member_adam_scales_each_members_slice_of_a_stacked_variable():
    stacked = keras.Variable(np.ones((2, 3), "float32"))  # two members' rows
    optimizer = MemberAdam([([stacked], np.array([[1.0], [3.0]]))], learning_rate=0.1)
    optimizer.apply([tf.ones((2, 3))], [stacked])
    np.testing.assert_allclose(1 - stacked.numpy(), [[0.1] * 3, [0.3] * 3], rtol=1e-4)


def _heads(widths: dict, features: int = 6) -> dict:
    heads = {}
    for j, (name, units) in enumerate(widths.items()):
        keras.utils.set_random_seed(j)
        heads[name] = build_head(features, 1, "sigmoid", units, 0.0, name=f"head_{j}")
    return heads


def test_stacked_heads_train_exactly_as_separate_heads_in_one_fit():
    widths = {"a": (5, 4), "b": (5, 4), "c": (3,), "d": (5, 4)}
    heads, reference = _heads(widths), _heads(widths)  # the same seeds: the same starting weights
    stacked, members = one_fit_model(heads)
    assert members.names == ["a", "b", "d", "c"] and len(members.groups) == 2  # one stack per architecture
    separate = combine_heads([reference[n] for n in members.names])  # one fit of separate heads
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = (rng.random((40, 4)) < 0.4).astype("float32")
    w = (rng.random((40, 4)) < 0.7).astype("float32") * rng.integers(1, 3, (40, 4))  # masked and duplicated rows
    start = {n: h.get_weights() for n, h in heads.items()}
    for model, rates in ((stacked, members.rate_factors({"b": 3.0})), (separate, [(reference["b"].trainable_variables, 3.0)])):
        model.compile(optimizer=MemberAdam(rates, learning_rate=0.01), loss=MaskedMemberLoss(keras.losses.BinaryCrossentropy()))
        model.fit(x, y, sample_weight=w, epochs=3, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_allclose(stacked.predict(x, verbose=0), separate.predict(x, verbose=0), atol=1e-5)
    fitted = members.get(members.names)
    for name in members.names:  # every weight, batch-norm statistics included, in the member head's own layout
        assert max(np.abs(f - s).max() for f, s in zip(fitted[name], start[name])) > 1e-3
        for f, r in zip(fitted[name], reference[name].get_weights()):
            np.testing.assert_allclose(f, r, atol=1e-5)

    members.set({"b": [np.zeros_like(v) for v in fitted["b"]]})  # writes b's slices, and only them
    after = members.get(members.names)
    assert all(not v.any() for v in after["b"])
    for name in ("a", "d", "c"):
        for f, r in zip(after[name], fitted[name]):
            np.testing.assert_array_equal(f, r)


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
    np.testing.assert_allclose(one, loop, atol=0.06)  # batches differ: the loop's hold one member's rows only
    for j in range(3):
        assert np.corrcoef(one[:, j], loop[:, j])[0, 1] > 0.95
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
