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
from genrecls.config import TrainConfig
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


def test_f1_search_keeps_the_highest_score_and_resumes(demo_dir, tmp_path, capsys):
    cfg = _cfg(demo_dir)
    out = tmp_path / "tune"
    first = tune(cfg, out, max_trials=2, objective="val_f1_micro", space=_space(cfg, tmp_path))
    assert len(first) == 2 and set(first["status"]) == {"COMPLETED"}
    best_row = first.loc[first["val_f1_micro"].idxmax()]
    best = json.loads((out / "config.json").read_text())
    assert best["head"] == [int(best_row["units_0"])]
    assert best["learning_rate"] == pytest.approx(best_row["learning_rate"])
    capsys.readouterr()

    again = tune(cfg, out, max_trials=3, objective="val_f1_micro", space=_space(cfg, tmp_path))
    started = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert started == ["trial 2 started by tuner0"]  # only the new trial ran
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
