"""Keras Tuner search: objective direction, resume, OvA scopes, best config, distributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import keras
import pandas as pd
import pytest

from genrecls.cli import main
from genrecls.errors import GenreclsError
from genrecls.config import PLATEAU_FACTOR, TrainConfig
from genrecls.training import train
from genrecls.tuning import OBJECTIVES, load_space, tune
from tests.helpers import REPO

# Frozen backbone (trials train on cached features) and a small space: seconds per trial.
SPACE = {"units": [{"min": 8, "max": 32, "step": 8}], "learning_rate": [0.01, 0.001], "fine_tune_last": [0]}


def _cfg(demo_dir, **kw):
    base = dict(data=str(demo_dir), mode="multilabel", top_k=3, backbone="simple", image_size=32,
                batch_size=16, epochs=2, verbose=0)
    return TrainConfig(**{**base, **kw})


def _space(cfg, tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return load_space(path, cfg)


def test_objectives_have_explicit_directions():
    assert OBJECTIVES["val_loss"].direction == "min"
    assert OBJECTIVES["val_f1_micro"].direction == "max"  # keras-tuner would guess "min"
    assert OBJECTIVES["val_f1_macro"].direction == "max"


def test_f1_search_keeps_the_highest_score_and_resumes(demo_dir, tmp_path, capsys, monkeypatch):
    from genrecls import features

    extractions = []
    real = features.shard_features
    monkeypatch.setattr(features, "shard_features", lambda *a: extractions.append(1) or real(*a))
    cfg = _cfg(demo_dir)
    out = tmp_path / "tune"
    first = tune(cfg, out, max_trials=2, objective="val_f1_micro", space=_space(cfg, tmp_path))
    assert len(extractions) == 1  # both trials trained on features computed once into out/features
    assert len(first) == 2 and set(first["status"]) == {"COMPLETED"}
    best_row = first.loc[first["val_f1_micro"].idxmax()]
    best = json.loads((out / "config.json").read_text())
    assert best["head"] == [int(best_row["units_0"])]
    assert best["learning_rate"] == pytest.approx(best_row["learning_rate"])
    capsys.readouterr()

    again = tune(cfg, out, max_trials=3, objective="val_f1_micro", space=_space(cfg, tmp_path))
    started = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert started == ["trial 2 started by tuner0"]  # only the new trial ran
    assert len(extractions) == 1  # the resumed search read them from its feature store
    assert len(again) == 3
    pd.testing.assert_frame_equal(again.iloc[:2].reset_index(drop=True), first.reset_index(drop=True),
                                  check_dtype=False)
    with pytest.raises(GenreclsError, match="other settings \\(epochs\\)"):
        tune(_cfg(demo_dir, epochs=3), out, max_trials=3, objective="val_f1_micro", space=_space(cfg, tmp_path))
    fresh = tune(cfg, out, max_trials=1, objective="val_f1_micro", space=_space(cfg, tmp_path), overwrite=True)
    assert len(fresh) == 1


def test_per_genre_ova_search_and_retraining_from_its_config(demo_dir, tmp_path):
    cfg = _cfg(demo_dir, mode="ova", top_k=None, genres=["Action", "Comedy"])
    out = tmp_path / "tune"
    table = tune(cfg, out, max_trials=2, space=_space(cfg, tmp_path))
    assert sorted(table["scope"].unique()) == ["Action", "Comedy"]
    assert table.groupby("scope").size().tolist() == [2, 2]
    best = TrainConfig.load(out / "config.json")
    assert set(best.member_overrides) == {"Action", "Comedy"}
    run = tmp_path / "best"
    train(best, run)
    for j, genre in enumerate(["Action", "Comedy"]):
        member = keras.models.load_model(next((run / "ova").glob(f"0{j}_*.keras")))
        dense = [layer for layer in member.layers if isinstance(layer, keras.layers.Dense)]
        assert dense[0].units == best.member_overrides[genre]["head"][0]
    assert (run / "metrics.json").exists()


def test_shared_ova_search_clears_the_session_between_members(demo_dir, tmp_path, monkeypatch):
    calls = []
    real = keras.backend.clear_session
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cfg = _cfg(demo_dir, mode="ova", top_k=2)
    table = tune(cfg, tmp_path / "tune", max_trials=2, space=_space(cfg, tmp_path), ova_scope="shared")
    assert table["scope"].tolist() == ["all", "all"]
    assert len(calls) >= 2 * 2  # every member of every trial starts from a clear session
    best = json.loads((tmp_path / "tune" / "config.json").read_text())
    assert best["member_overrides"] is None and len(best["head"]) == 1


@pytest.mark.parametrize("schedule, mode, scope", [
    ("cosine", "multilabel", "per-genre"), ("cosine", "ova", "shared"), ("cosine", "ova", "per-genre"),
    ("plateau", "multilabel", "per-genre"), ("plateau", "ova", "shared"), ("constant", "multilabel", "per-genre")])
def test_trials_train_under_the_runs_learning_rate_schedule(demo_dir, tmp_path, monkeypatch, schedule, mode, scope):
    """A search tries its settings under the schedule the run will train with: cosine decays over each
    model's own steps (to alpha 0.05 of the rate at the last step), plateau watches each fit's validation
    loss with the run's factor (training's own test checks what the callback then does to the rate)."""
    from genrecls.tuning import GenreHyperModel

    built, watched = [], []
    real = GenreHyperModel.build_for
    monkeypatch.setattr(GenreHyperModel, "build_for", lambda self, hp, n: built.append(real(self, hp, n)) or built[-1])
    plateau_end = keras.callbacks.ReduceLROnPlateau.on_epoch_end
    monkeypatch.setattr(keras.callbacks.ReduceLROnPlateau, "on_epoch_end",
                        lambda self, epoch, logs=None: (watched.append((self.model, self.factor)),
                                                        plateau_end(self, epoch, logs))[1])
    cfg = _cfg(demo_dir, mode=mode, top_k=2, epochs=3, patience=3, lr_schedule=schedule)
    tune(cfg, tmp_path / "tune", max_trials=1, space=_space(cfg, tmp_path), ova_scope=scope)
    trained = [m for m in built if int(m.optimizer.iterations) > 0]  # keras-tuner also builds one to list the space
    assert len(trained) == (1 if mode == "multilabel" else 2)  # one per OvA member
    for model in trained:
        # SPACE's rates are 0.01 and 0.001; after the fit's last step cosine is at 5 % of the trial's
        if schedule == "cosine":  # over exactly the fit's steps (3 epochs: patience 3 cannot stop it earlier)
            assert model.optimizer._learning_rate.decay_steps == int(model.optimizer.iterations)
        final = float(model.optimizer.learning_rate) / (0.05 if schedule == "cosine" else 1)
        assert schedule == "plateau" or any(final == pytest.approx(r, rel=1e-3) for r in (0.01, 0.001))
        assert [f for m, f in watched if m is model] == ([PLATEAU_FACTOR] * 3 if schedule == "plateau" else [])


# keras-tuner reloads a promoted trial's weights file, which also holds the optimizer's state; Keras skips that part
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")
def test_a_hyperband_trial_promoted_to_a_later_round_resumes_its_cosine_schedule(demo_dir, tmp_path, monkeypatch):
    """keras-tuner builds a promoted trial's model again and reloads its weights: its optimizer then starts at
    the round's first step, so the cosine decay reaches its end (5 % of the rate) at the run's last epoch."""
    from genrecls.tuning import GenreHyperModel

    built = []
    real = GenreHyperModel.build_for
    monkeypatch.setattr(GenreHyperModel, "build_for", lambda self, hp, n: built.append(
        (real(self, hp, n), hp.values.get("tuner/initial_epoch", 0), n)) or built[-1][0])
    cfg = _cfg(demo_dir, epochs=3, patience=3, lr_schedule="cosine")
    tune(cfg, tmp_path / "tune", space=_space(cfg, tmp_path), algorithm="hyperband")
    promoted = [(m, start, n) for m, start, n in built if start > 0]
    assert promoted  # max_epochs 3, factor 3: trials of 1 epoch, the best promoted to epochs 2 and 3
    for model, start, n in promoted:
        assert int(model.optimizer.iterations) == 3 * n  # resumed at start * n, then trained to the last epoch
        rate = float(model.optimizer.learning_rate) / 0.05
        assert any(rate == pytest.approx(r, rel=1e-3) for r in (0.01, 0.001))


def test_search_space_files_and_bad_options(demo_dir, tmp_path):
    cfg = _cfg(demo_dir)
    (tmp_path / "bad.json").write_text('{"colour": [1]}')
    with pytest.raises(GenreclsError, match="unknown search-space keys"):
        load_space(tmp_path / "bad.json", cfg)
    assert load_space(None, cfg)["fine_tune_last"] == [-1]  # random weights: train the whole backbone
    with pytest.raises(GenreclsError, match="objective"):
        tune(cfg, tmp_path / "x", objective="accuracy")
    with pytest.raises(GenreclsError, match="random only"):
        tune(_cfg(demo_dir, mode="ova"), tmp_path / "x", algorithm="hyperband", ova_scope="shared")


def test_cli_tune_prints_the_trial_table(demo_dir, tmp_path, capsys):
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    args = ["tune", str(demo_dir), "--mode", "multiclass", "--backbone", "simple", "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--max-trials", "2", "--space", str(tmp_path / "space.json"),
            "--objective", "val_f1_macro", "--out", str(tmp_path / "t"), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "val_f1_macro" in out and "COMPLETED" in out and "trials.csv" in out
    assert len(pd.read_csv(tmp_path / "t" / "trials.csv")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_on_loopback(demo_dir, tmp_path):
    """A chief and two workers on 127.0.0.1 share one search: every trial runs once."""
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    out = tmp_path / "dist"
    args = [sys.executable, "-m", "genrecls.cli", "tune", str(demo_dir), "--mode", "multilabel", "--top-k", "3",
            "--backbone", "simple", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
            "--max-trials", "4", "--space", str(tmp_path / "space.json"), "--out", str(out), "--quiet"]
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port()),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            procs[tuner_id] = subprocess.Popen(args, env={**env, "KERASTUNER_TUNER_ID": tuner_id}, cwd=REPO,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        logs = {name: p.communicate(timeout=400)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    assert all(p.returncode == 0 for p in procs.values()), logs
    ran = [line.split()[1] for name in ("tuner0", "tuner1") for line in logs[name].splitlines()
           if line.startswith("trial ")]
    assert sorted(ran) == ["0", "1", "2", "3"]  # each trial ran exactly once, across both workers
    assert "worker finished" in logs["tuner0"] and "worker finished" in logs["tuner1"]
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"].astype(str)) == ["0", "1", "2", "3"] and set(table["status"]) == {"COMPLETED"}
    best = json.loads((out / "config.json").read_text())
    assert best["head"] == [int(table.loc[table["val_loss"].idxmin(), "units_0"])]
    assert "trial table written" in logs["chief"]


# ---------------------------------------------------------------- failures and damaged inputs (issue #12)

TINY_SPACE = {**SPACE, "units": [[8, 16]], "dropout": [False]}  # 2 x 2 = 4 distinct trials


def _tune_args(demo_dir, out, space_file, trials=3):
    return ["tune", str(demo_dir), "--mode", "multilabel", "--top-k", "3", "--backbone", "simple",
            "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--max-trials", str(trials),
            "--space", str(space_file), "--out", str(out), "--quiet"]


def _fail_fit(monkeypatch, when=lambda hp: True):
    """Training raises in the trials `when` picks: a trial failure keras-tuner catches and records."""
    from genrecls.tuning import GenreHyperModel

    def fit(self, hp, model, *args, **kwargs):
        if when(hp):
            raise ValueError("posters ran out")
        return model.fit(*args, **kwargs)

    monkeypatch.setattr(GenreHyperModel, "fit", fit)


def test_a_search_whose_trials_all_failed_fails_and_writes_no_best_settings(demo_dir, tmp_path, capsys,
                                                                            monkeypatch):
    _fail_fit(monkeypatch)
    (tmp_path / "space.json").write_text(json.dumps(TINY_SPACE))
    out = tmp_path / "t"
    assert main(_tune_args(demo_dir, out, tmp_path / "space.json", trials=3)) == 1
    captured = capsys.readouterr()
    assert "genrecls: error: all 3 trials failed: ValueError: posters ran out" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "3 of 3 trials failed" in captured.out  # keras-tuner stops after 3 in a row; we report, not crash
    assert not (out / "config.json").exists()
    table = pd.read_csv(out / "trials.csv")
    assert set(table["status"]) == {"FAILED"} and set(table["error"]) == {"ValueError: posters ran out"}


def test_failed_trials_are_reported_and_the_best_completed_one_is_kept(demo_dir, tmp_path, capsys, monkeypatch):
    _fail_fit(monkeypatch, when=lambda hp: hp.get("units_0") == 8)
    cfg = _cfg(demo_dir, image_size=16, epochs=1)
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE))
    table = tune(cfg, tmp_path / "t", max_trials=4, space=load_space(path, cfg))
    assert "2 of 4 trials failed" in capsys.readouterr().out
    failed = table[table["units_0"] == 8]
    assert set(failed["status"]) == {"FAILED"} and set(failed["error"]) == {"ValueError: posters ran out"}
    assert set(table[table["units_0"] == 16]["status"]) == {"COMPLETED"}
    assert json.loads((tmp_path / "t" / "config.json").read_text())["head"] == [16]
    assert pd.read_csv(tmp_path / "t" / "trials.csv")["error"].notna().sum() == 2

    oracle = tmp_path / "t" / "tuner" / "search" / "oracle.json"  # keras-tuner's own state, half-written
    oracle.write_text(oracle.read_text()[:50])
    with pytest.raises(GenreclsError, match="keras-tuner's files there are damaged .*--overwrite"):
        tune(cfg, tmp_path / "t", max_trials=4, space=load_space(path, cfg))


BAD_SPACES = [  # (file content, what the one-line error must name)
    ("units: [64", "as JSON"),
    ("null", "not null"),
    ("[1, 2]", "not list"),
    ('{"colour": [1]}', "colour"),
    ('{"learning_rate": ["fast"]}', "learning_rate"),
    ('{"learning_rate": [NaN]}', "learning_rate"),
    ('{"learning_rate": {"min": 0.001, "max": Infinity}}', "learning_rate.max"),
    ('{"learning_rate": []}', "learning_rate is an empty list"),
    ('{"dropout_rate": {"min": 0.5, "max": 0.1}}', "dropout_rate.min (0.5) is above"),
    ('{"dropout": {"min": 0, "max": 1}}', "dropout"),
    ('{"units": 64}', "units"),
    ('{"units": [{"min": 8}]}', "units[0]"),
    ('{"units": [{"min": 8, "max": 32, "step": 0}]}', "units[0].step"),
    ('{"units": [[16, "32"]]}', "units[0]"),
    ('{"units": [[99999999]]}', "units[0] must be a whole number in [1, 16384]"),
    ('{"fine_tune_last": [0.5]}', "fine_tune_last"),
]


@pytest.mark.parametrize("text,named", BAD_SPACES)
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(demo_dir, tmp_path, capsys, text, named):
    path = tmp_path / "space.json"
    path.write_text(text)
    assert main(_tune_args(demo_dir, tmp_path / "t", path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("genrecls: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and named in err
    assert not (tmp_path / "t").exists()


def test_a_damaged_search_json_on_resume_says_which_file_and_what_to_do(demo_dir, tmp_path, capsys):
    from genrecls.runs import RunFolder

    (tmp_path / "space.json").write_text(json.dumps(TINY_SPACE))
    out = tmp_path / "t"
    cfg = _cfg(demo_dir)
    RunFolder.claim(out, {**cfg.to_json(), "search_space": TINY_SPACE}, kind="search")
    good = json.loads((out / "search.json").read_text())
    for damaged, named in [((out / "search.json").read_text()[:40], "damaged"), ("null", "search_space"),
                           ("[1]", "search_space"), (json.dumps({**good, "epochs": "many"}), "epochs"),
                           (json.dumps({**good, "search_space": [1]}), "search_space")]:
        (out / "search.json").write_text(damaged)
        assert main(_tune_args(demo_dir, out, tmp_path / "space.json")) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert str(out / "search.json") in err and named in err and "--overwrite" in err, err


@pytest.mark.parametrize("where", ["file", "inside_file"])
def test_tune_out_on_a_regular_file_is_one_line(demo_dir, tmp_path, capsys, where):
    (tmp_path / "space.json").write_text(json.dumps(TINY_SPACE))
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" if where == "file" else tmp_path / "notes.txt" / "search"
    assert main(_tune_args(demo_dir, out, tmp_path / "space.json")) == 1
    err = capsys.readouterr().err
    assert err.startswith("genrecls: error: ") and err.count("\n") == 1 and "--out" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
