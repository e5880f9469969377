"""The three modes on tiny data, cached features, resume, run folder contents."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest

from genrecls.cli import main
from genrecls.errors import GenreclsError
from genrecls.pipeline import make_dataset
from genrecls.components import WeightedBinaryCrossentropy
from genrecls.config import TrainConfig
from genrecls.runs import RunFolder
from genrecls.config import PLATEAU_FACTOR
from genrecls.training import fit, train
from tests.helpers import REPO, multi_genre_lists, tiny_config as _config, write_image


def load_run_model(run):
    return RunFolder.open(run).load_model()


@pytest.mark.parametrize("mode", ["multiclass", "multilabel", "ova"])
def test_each_mode_trains_one_epoch_and_writes_its_run(mode, demo_dir, tmp_path):
    run = tmp_path / mode
    k = 3 if mode == "ova" else 7  # fewer OvA members keep the test quick
    report = train(_config(demo_dir, mode=mode, epochs=1, class_weight="balanced", top_k=k,
                           tensorboard=mode == "multiclass"), run)
    genres = json.loads((run / "genres.json").read_text())["genres"]
    assert len(genres) == k
    assert set(report["genres"]) == set(genres)
    saved = json.loads((run / "metrics.json").read_text())
    for m in saved["genres"].values():
        assert {"precision", "recall", "f1", "support", "random_f1"} <= set(m)
    assert {"f1_micro", "f1_macro", "f1_weighted"} <= set(saved["overall"])
    assert sum(m["support"] for m in saved["genres"].values()) >= saved["overall"]["posters"]
    config = json.loads((run / "config.json").read_text())
    assert config["mode"] == mode and "tensorflow" in config["versions"]
    assert TrainConfig.from_json(config).to_json() == {k: v for k, v in config.items() if k != "versions"}
    history = pd.read_csv(run / "history.csv")
    assert "val_loss" in history and len(history) == (3 if mode == "ova" else 1)
    split = json.loads((run / "split.json").read_text())
    assert not set(split["test"]) & set(split["train"])
    assert any((run / "tensorboard").rglob("events.out.tfevents.*")) == (mode == "multiclass")

    model = load_run_model(run)
    assert model.output_shape == (None, k)
    probs = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    if mode == "multiclass":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert ((probs >= 0) & (probs <= 1)).all()
    if mode == "ova":
        members = sorted(p.name for p in (run / "ova").glob("*.keras"))
        assert len(members) == 4 and "combined.keras" in members


@pytest.mark.slow
def test_cached_features_match_training_through_the_frozen_backbone(demo_dir, tmp_path):
    """fine_tune_last=0 freezes the (random) backbone, so heads can train on cached features.

    Both paths see the same posters in the same order from the same initial
    weights; only float rounding differs (convolutions over other batches),
    which Adam amplifies a little, hence the tolerances.
    """
    common = dict(mode="multilabel", epochs=3, fine_tune_last=0, weights=None, learning_rate=0.01)
    cached = train(_config(demo_dir, cache_features=True, **common), tmp_path / "cached")
    direct = train(_config(demo_dir, cache_features=False, **common), tmp_path / "direct")
    first_loss = [pd.read_csv(tmp_path / r / "history.csv")["loss"][0] for r in ("cached", "direct")]
    assert first_loss[0] == pytest.approx(first_loss[1], rel=1e-3)
    a, b = load_run_model(tmp_path / "cached"), load_run_model(tmp_path / "direct")
    images = np.concatenate([x for x, _ in make_dataset(
        sorted((demo_dir / "posters").glob("*.jpg"))[::6], np.zeros(14), image_size=32, batch_size=16)])
    pa, pb = a.predict(images, verbose=0), b.predict(images, verbose=0)
    assert np.abs(pa - 0.5).mean() > 0.1  # the heads learned something to compare
    np.testing.assert_allclose(pa, pb, atol=0.03)
    assert cached["overall"]["f1_micro"] == pytest.approx(direct["overall"]["f1_micro"], abs=0.03)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_backup(demo_dir, tmp_path):
    """SIGKILL the training process after its second epoch, then run the same command again."""
    run = tmp_path / "run"
    script = tmp_path / "train_once.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, keras
        from genrecls.config import TrainConfig
        from genrecls.training import PLATEAU_FACTOR, fit, train

        class KillAfterSecondEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1 and sys.argv[1] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)

        class RecordEpochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                print("EPOCH", epoch, flush=True)

        cfg = TrainConfig(data={str(demo_dir)!r}, mode="multiclass", epochs=4, patience=10,
                          backbone="simple", image_size=32, batch_size=16, head=(16,), verbose=0)
        train(cfg, {str(run)!r}, callbacks=[KillAfterSecondEpoch(), RecordEpochs()])
    """))
    first = subprocess.run([sys.executable, str(script), "kill"], capture_output=True, text=True, cwd=REPO)
    assert first.returncode == -9, first.stderr[-2000:]
    assert [line for line in first.stdout.splitlines() if line.startswith("EPOCH")] == ["EPOCH 0", "EPOCH 1"]
    assert not (run / "metrics.json").exists() and not RunFolder(run).finished
    second = subprocess.run([sys.executable, str(script), "resume"], capture_output=True, text=True, cwd=REPO)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming the unfinished run" in second.stdout
    assert [line for line in second.stdout.splitlines() if line.startswith("EPOCH")] == ["EPOCH 2", "EPOCH 3"]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert (run / "metrics.json").exists() and RunFolder(run).finished


def test_finished_and_conflicting_runs_are_protected(demo_dir, tmp_path):
    run = tmp_path / "run"
    train(_config(demo_dir, mode="multiclass", epochs=1), run)
    with pytest.raises(GenreclsError, match="finished run"):
        train(_config(demo_dir, mode="multiclass", epochs=1), run)
    marker = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**marker, "finished": False}))  # as if killed mid-run
    with pytest.raises(GenreclsError, match="other settings \\(epochs\\)"):
        train(_config(demo_dir, mode="multiclass", epochs=2), run)
    train(_config(demo_dir, mode="multiclass", epochs=1, balance="undersample"), run, overwrite=True)
    assert (run / "metrics.json").exists()


def test_weighted_binary_crossentropy():
    y = np.array([[1.0, 0.0]], "float32")
    p = np.array([[0.8, 0.3]], "float32")
    loss = WeightedBinaryCrossentropy([2.0, 1.0])(y, p)
    expected = -(2.0 * np.log(0.8) + np.log(0.7)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(WeightedBinaryCrossentropy([2.0, 1.0])))
    assert restored.pos_weight == [2.0, 1.0]
    smoothed = WeightedBinaryCrossentropy([1.0, 1.0], label_smoothing=0.2)(y, p)
    assert float(smoothed) == pytest.approx(float(keras.losses.BinaryCrossentropy(label_smoothing=0.2)(y, p)), rel=1e-4)


def test_config_errors_are_clear(demo_dir):
    with pytest.raises(GenreclsError, match="mode must be one of"):
        _config(demo_dir, mode="regression")
    with pytest.raises(GenreclsError, match="backbone must be one of"):
        _config(demo_dir, backbone="vgg")
    with pytest.raises(GenreclsError, match="unknown config keys: colour"):
        TrainConfig.from_json({"data": str(demo_dir), "colour": "red"})


def test_cli_train_with_config_and_overrides(demo_dir, tmp_path, capsys):
    args = ["train", str(demo_dir), "--mode", "multilabel", "--backbone", "simple", "--image-size", "32",
            "--epochs", "1", "--batch-size", "16", "--head", "16", "--quiet", "--out", str(tmp_path / "a")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "micro F1" in out and "random" in out
    config = tmp_path / "a" / "config.json"
    assert main(["train", "--config", str(config), "--top-k", "3", "--quiet", "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["top_k"] == 3 and again["mode"] == "multilabel" and again["image_size"] == 32
    assert len(json.loads((tmp_path / "b" / "genres.json").read_text())["genres"]) == 3
    assert main(["train", str(demo_dir), "--backbone", "vgg"]) == 1  # the choices come from the registry
    assert "invalid choice: 'vgg'" in capsys.readouterr().err
    # a new backbone on top of an old config gets its own input size and weights
    from genrecls.cli import build_parser, train_config

    switched = train_config(build_parser().parse_args(["train", "--config", str(config), "--backbone", "resnet50"]))
    assert (switched.image_size, switched.weights, switched.mode) == (224, "imagenet", "multilabel")


def test_cli_trains_multilabel_on_a_table_of_multi_genre_posters(tmp_path, capsys):
    """Issue #12: a Kaggle table where almost every poster has 2-3 genres trains on all genres, no --collapse."""
    data = tmp_path / "kaggle"
    lines = ["imdbId,Imdb Link,Title,IMDB Score,Genre,Poster"]
    rng = np.random.default_rng(0)
    for i, genres in enumerate(multi_genre_lists(60, seed=0), 1000):
        lines.append(f"{i},http://x/tt{i},Movie {i} (2001),7.0,{'|'.join(genres)},http://p/{i}.jpg")
        write_image(data / "posters" / f"{i}.jpg", size=(16, 24), color=tuple(int(c) for c in rng.integers(0, 256, 3)))
    (data / "MovieGenre.csv").write_text("\n".join(lines) + "\n")
    common = ["train", str(data), "--image-size", "16", "--epochs", "1", "--backbone", "simple", "--weights", "none",
              "--batch-size", "16", "--head", "8", "--quiet"]

    assert main([*common, "--mode", "multilabel", "--out", str(tmp_path / "run")]) == 0
    assert len(json.loads((tmp_path / "run" / "genres.json").read_text())["genres"]) == 6
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [len(split[p]) for p in ("train", "val", "test")] == [42, 9, 9]
    # multiclass also needs every collapsed class in every part, which this table cannot feed: one line naming genres
    capsys.readouterr()
    assert main([*common, "--mode", "multiclass", "--out", str(tmp_path / "mc")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "too few posters collapsed to genres 'Drama' (1), 'Comedy' (5)" in err


@pytest.mark.slow
def test_real_posters_train_multilabel(ml1m, tmp_path):
    """One epoch on the real MovieLens posters, top three genres plus Other."""
    cfg = TrainConfig(data=str(ml1m), mode="multilabel", top_k=3, other=True, backbone="simple",
                      image_size=32, batch_size=64, epochs=1, head=(16,), verbose=0)
    report = train(cfg, tmp_path / "ml1m")
    assert list(report["genres"]) == ["Drama", "Comedy", "Action", "Other"]
    assert report["overall"]["posters"] == 489  # 15 % of 3,256
    assert report["genres"]["Drama"]["support"] > 150


def test_ova_probabilities_are_corrected_to_the_real_prevalence(demo_dir, tmp_path):
    """Members fit on 70 % positives overstate every genre; the Calibration layer in the saved model undoes it."""
    common = dict(mode="ova", top_k=3, epochs=3, positive_share=0.7, learning_rate=0.01, fine_tune_last=0,
                  weights=None)
    probs = {}
    for calibration in ("none", "prior"):
        run = tmp_path / calibration
        train(_config(demo_dir, calibration=calibration, **common), run, evaluate=False)
        images = np.concatenate([x for x, _ in make_dataset(
            sorted((demo_dir / "posters").glob("*.jpg")), np.zeros(84), image_size=32, batch_size=32)])
        probs[calibration] = load_run_model(run).predict(images, verbose=0).astype(float)
    means = {calibration: p.mean(axis=0) for calibration, p in probs.items()}
    labels = pd.read_csv(demo_dir / "labels.csv")
    genres = json.loads((tmp_path / "prior" / "genres.json").read_text())["genres"]
    kept = labels[labels["genres"].apply(lambda g: any(x in g.split("|") for x in genres))]
    prevalence = np.array([kept["genres"].str.split("|").apply(lambda g, x=x: x in g).mean() for x in genres])
    assert (means["none"] > prevalence + 0.1).all()  # raw members: the 70 % share shows through
    assert (means["prior"] < means["none"]).all()  # the correction lowers every overstated genre
    # The same seed trains the same members, so the correction is all that differs: each genre's log-odds
    # move by the same amount on every poster, from the 70 % share to the genre's training prevalence
    # (a mean after three epochs says less: a member still short of its share is over-corrected).
    logit = {calibration: np.log(p / (1 - p)) for calibration, p in probs.items()}
    shift = logit["prior"] - logit["none"]
    assert shift.std(axis=0).max() < 0.02
    np.testing.assert_allclose(shift.mean(axis=0), np.log(prevalence / (1 - prevalence)) - np.log(0.7 / 0.3), atol=0.3)


@pytest.mark.parametrize("mode", ["ova"])  # a single-model mode's shared trunk: tests/test_text.py (fused multiclass)
def test_shared_trunk_trains_once_and_the_head_on_its_features(mode, demo_dir, tmp_path, capsys):
    run = tmp_path / mode
    report = train(_config(demo_dir, mode=mode, top_k=3, epochs=2, trunk="shared"), run)
    out = capsys.readouterr().out
    assert out.count("training the shared trunk") == 1 and "stage 2: fitting the head" in out
    assert (run / "checkpoints" / "trunk.keras").exists()
    model = load_run_model(run)
    assert model.output_shape == (None, 3) and model.layers[-1].name == "calibration"
    history = pd.read_csv(run / "checkpoints" / "trunk.history.csv")
    assert len(history) == 2  # stage 1 ran its epochs; the head's are in history.csv
    assert report["policy"]["reason"].startswith("maximised micro F1")


def test_several_shared_trunks_learn_from_their_own_seeds_and_the_head_reads_them_all(demo_dir, tmp_path, capsys):
    settings = dict(mode="multilabel", top_k=3, epochs=2, trunk="shared")
    train(_config(demo_dir, **settings), tmp_path / "one", evaluate=False)
    train(_config(demo_dir, **settings, trunks=2), tmp_path / "two", evaluate=False)
    out = capsys.readouterr().out
    assert "training the shared trunk 1 of 2" in out and "training the shared trunk 2 of 2" in out
    load = lambda path: keras.saving.load_model(path, compile=False)  # noqa: E731
    one = load(tmp_path / "one" / "checkpoints" / "trunk.keras")
    first, second = (load(tmp_path / "two" / "checkpoints" / f"trunk-{i}.keras") for i in (0, 1))
    both = load(tmp_path / "two" / "checkpoints" / "trunk.keras")
    assert both.output_shape == (None, 2 * one.output_shape[-1])
    for a, b in zip(one.get_weights(), first.get_weights(), strict=True):  # trunk 1 of N: the single trunk's seed
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(first.get_weights(), second.get_weights())) > 1e-2
    images = next(iter(make_dataset(sorted((demo_dir / "posters").glob("*.jpg"))[:4], image_size=one.input_shape[1],
                                    batch_size=4)))
    np.testing.assert_allclose(both.predict(images, verbose=0),
                               np.concatenate([first.predict(images, verbose=0), second.predict(images, verbose=0)],
                                              axis=1), rtol=1e-4, atol=1e-5)
    model = load_run_model(tmp_path / "two")
    assert model.output_shape == (None, 3)

    # killed after trunk 1 of 2: the resumed run loads it and trains only trunk 2 again
    run = tmp_path / "two"
    marker = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**marker, "finished": False}))
    for name in ("trunk.keras", "trunk-1.keras"):
        (run / "checkpoints" / name).unlink()
    train(_config(demo_dir, **settings, trunks=2), run, evaluate=False)
    out = capsys.readouterr().out
    assert "shared trunk 1 of 2 already trained" in out and "training the shared trunk 2 of 2" in out
    assert "training the shared trunk 1 of 2" not in out
    for a, b in zip(second.get_weights(), load(run / "checkpoints" / "trunk-1.keras").get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_several_trunks_need_a_backbone_that_trains(demo_dir, tmp_path):
    with pytest.raises(GenreclsError, match="frozen here"):
        train(_config(demo_dir, trunk="shared", trunks=2, fine_tune_last=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schedule", ["plateau", "constant"])
def test_plateau_schedule_cuts_the_rate_each_time_the_validation_loss_stalls(schedule, tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 2)).astype("float32"), (rng.random((32, 1)) < 0.5).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="binary_crossentropy")  # too slow to improve
    fit(model, ds, ds, _config(".", epochs=4, patience=3, lr_schedule=schedule), tmp_path, "m")
    # patience 3 waits one epoch for the rate: epochs 1, 2 and 3 each stall and cut it
    expected = 1e-5 * (PLATEAU_FACTOR ** 3 if schedule == "plateau" else 1)
    assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-3)
