"""--distribute: TF_CONFIG checks, and two worker processes on 127.0.0.1 training one run for real."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genrecls.distribute import cluster_task, scratch_folder
from genrecls.errors import GenreclsError
from tests.helpers import TINY

REPO = Path(__file__).resolve().parents[1]


def _tf_config(ports, index, kind="worker"):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize("text, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "list of host:port"),
    ('{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "no worker or chief"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "needs a task"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}', "not in its cluster"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}', "0..1"),
])
def test_bad_tf_config_is_one_clear_error(text, message):
    with pytest.raises(GenreclsError, match=message):
        cluster_task({} if text is None else {"TF_CONFIG": text})


def test_the_chief_is_worker_0_unless_the_cluster_names_one():
    two = ["127.0.0.1:1", "127.0.0.1:2"]
    assert cluster_task({"TF_CONFIG": _tf_config([1, 2], 0)}).chief
    assert not cluster_task({"TF_CONFIG": _tf_config([1, 2], 1)}).chief
    named = {"cluster": {"chief": ["127.0.0.1:3"], "worker": two}, "task": {"type": "worker", "index": 0}}
    assert not cluster_task({"TF_CONFIG": json.dumps(named)}).chief
    assert cluster_task({"TF_CONFIG": json.dumps({**named, "task": {"type": "chief", "index": 0}})}).chief
    # a worker's scratch folder is its own, and the same when it restarts
    assert scratch_folder("/x/run", 1) == scratch_folder("/x/run", 1) != scratch_folder("/x/run", 2)


def test_multiworker_without_tf_config_fails_before_any_work(demo_dir, tmp_path, monkeypatch):
    from genrecls.training import train
    from tests.helpers import tiny_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(GenreclsError, match="TF_CONFIG"):
        train(tiny_config(demo_dir, distribute="multiworker"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_multiworker_refuses_ova_members_with_their_own_backbones(demo_dir, tmp_path):
    """One network per genre spreads over machines with --shard; a one-worker cluster refuses it before claiming."""
    out = tmp_path / "run"
    command = _train_command(demo_dir, out, "--distribute", "multiworker") + ["--mode", "ova", "--trunk", "end-to-end"]
    done = subprocess.run(command, env=_env(TF_CONFIG=_tf_config(_free_ports(1), 0)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "--shard I/N" in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr
    assert not out.exists()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_command(data, out, *extra):
    args = ["--backbone", TINY["backbone"], "--image-size", str(TINY["image_size"]), "--batch-size", "16",
            "--head", "16", "--epochs", "2", "--seed", "0", "--mode", "multilabel", "--quiet", *extra]
    return [sys.executable, "-c", "import sys; from genrecls.cli import main; sys.exit(main())",
            "train", str(data), "--out", str(out), *args]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **extra}


def test_two_workers_on_loopback_train_the_run_one_process_trains(demo_dir, tmp_path):
    """MultiWorkerMirroredStrategy over two processes: the chief writes the run, the other worker
    leaves nothing behind, and the test metrics are those of the same run in one process."""
    ports = _free_ports(2)
    out = tmp_path / "together"
    workers = [subprocess.Popen(_train_command(demo_dir, out, "--distribute", "multiworker"),
                                env=_env(TF_CONFIG=_tf_config(ports, i)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log[-3000:]
    assert "the chief wrote the run" in logs[1]
    assert not Path(scratch_folder(out, 1)).exists()
    alone = tmp_path / "alone"
    done = subprocess.run(_train_command(demo_dir, alone), env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    together_m = json.loads((out / "metrics.json").read_text())
    alone_m = json.loads((alone / "metrics.json").read_text())
    for key in ("roc_auc_mean", "map"):
        assert together_m["overall"][key] == pytest.approx(alone_m["overall"][key], abs=0.02), key
    history = [(p / "checkpoints" / "model.history.csv").read_text().splitlines() for p in (out, alone)]
    assert len(history[0]) == len(history[1]) == 3  # a header and the same two epochs
    last = [dict(zip(h[0].split(","), map(float, h[-1].split(",")))) for h in history]
    assert last[0]["val_loss"] == pytest.approx(last[1]["val_loss"], abs=0.005)


def test_mirrored_on_one_device_gives_the_run_of_no_strategy(demo_dir, tmp_path):
    """MirroredStrategy with one replica (no GPU here) trains exactly the default run: Keras's
    build under a strategy takes no batch, so the first epoch sees the same shuffled order."""
    from genrecls.training import train
    from tests.helpers import tiny_config

    runs = {}
    for name in ("none", "mirrored"):
        train(tiny_config(demo_dir, mode="multilabel", distribute=name, epochs=2), tmp_path / name, evaluate=False)
        runs[name] = (tmp_path / name / "checkpoints" / "model.history.csv").read_text()
    rows = [[dict(zip(r.splitlines()[0].split(","), map(float, line.split(",")))) for line in r.splitlines()[1:]]
            for r in runs.values()]
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(*rows):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)


def test_a_search_under_mirrored_scores_its_trials_as_one_without(demo_dir, tmp_path):
    """keras-tuner builds every trial's model in the strategy's scope; one replica changes no score."""
    from genrecls.tuning import tune
    from tests.test_tuning import _cfg, _space

    tables = {}
    for name in ("none", "mirrored"):
        cfg = _cfg(demo_dir, distribute=name)
        tables[name] = tune(cfg, tmp_path / name, max_trials=2, objective="val_f1_micro", space=_space(cfg, tmp_path))
    assert len(tables["none"]) == len(tables["mirrored"]) == 2
    assert tables["mirrored"]["val_f1_micro"].tolist() == pytest.approx(tables["none"]["val_f1_micro"].tolist(), abs=1e-4)
    with pytest.raises(GenreclsError, match="keras-tuner's distributed search"):
        tune(_cfg(demo_dir, distribute="multiworker"), tmp_path / "multi")


def test_features_take_the_local_gpus_and_refuse_multiworker(demo_dir, tmp_path, capsys):
    from genrecls.cli import main

    store = tmp_path / "store"
    base = ["features", str(demo_dir), "--backbone", "simple", "--image-size", "32", "--fine-tune-last", "0",
            "--feature-store", str(store)]
    assert main(base + ["--distribute", "mirrored"]) in (0, None)
    assert "complete" in capsys.readouterr().out
    assert main(base + ["--distribute", "multiworker"]) == 1
    assert "--shard I/N" in capsys.readouterr().err
