"""The feature store: its key, reuse, kills, damage, shards, whose folder it is, and the CLI and a run on it.

The tuner's reuse (one extraction for every trial, none for a resumed search) is checked in
tests/test_tuning.py's resume test, which runs those searches anyway.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from genrecls import config, features
from genrecls.backbones import build_backbone
from genrecls.cli import main
from genrecls.errors import GenreclsError
from genrecls.features import MANIFEST, STORE_MARKER, key_of, key_parts, open_store, stored_features, update_entry
from tests.helpers import tiny_config, write_image

ROWS = 4  # rows per shard here: 11 posters make 3 shards


@pytest.fixture(scope="module")
def posters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("posters")
    paths = [write_image(folder / f"{i}.jpg", size=(30 + i, 44), color=(20 * i, 100, 250 - 20 * i)) for i in range(10)]
    broken = folder / "broken.jpg"
    broken.write_text("<html>not an image</html>")  # fails at decode: recorded, not fatal
    return [str(p) for p in paths[:5] + [broken] + paths[5:]]


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return build_backbone("simple", 32, None)


def _cfg(tmp_path, **kw):
    return tiny_config(tmp_path, **{"weights": None, "fine_tune_last": 0, "batch_size": 4, **kw})


@pytest.fixture
def calls(monkeypatch):
    """How many shards were computed (features.shard_features calls)."""
    count = []
    real = features.shard_features

    def counted(*args):
        count.append(1)
        return real(*args)

    monkeypatch.setattr(features, "shard_features", counted)
    return count


def _entry(store):
    (entry,) = [p for p in store.iterdir() if p.is_dir()]
    return entry


def test_the_key_follows_each_part_and_nothing_else(posters, backbone, tmp_path):
    def key(b=backbone, **kw):
        return key_of(key_parts(b, posters, _cfg(tmp_path, **kw), ROWS))

    base = key()
    assert key(batch_size=8) == base  # the batch size does not change the features
    stat = os.stat(posters[3])
    os.utime(posters[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = key()
    assert touched != base
    assert key(image_size=48) != touched
    assert key(resize="crop") != touched
    keras.utils.set_random_seed(1)
    other = build_backbone("simple", 32, None)
    assert key(other) != touched  # other random weights
    other.set_weights(backbone.get_weights())
    assert key(other) == touched  # the same arrays: a trunk or a weights file is known by what it holds
    other.weights[0].assign(other.weights[0] * 0.5)  # a trained shared trunk
    assert key(other) != touched


def test_a_second_run_reuses_the_store_through_memory_maps(posters, backbone, tmp_path, calls):
    store, cfg = tmp_path / "store", _cfg(tmp_path)
    first = stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    assert len(calls) == 3 and first.shape == (11, backbone.output_shape[-1])
    shards = sorted(_entry(store).glob("shard-*"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    second = stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    assert len(calls) == 3 and [p.stat().st_mtime_ns for p in shards] == stamps  # nothing recomputed or rewritten
    assert all(isinstance(s, np.memmap) for s in second.shards)
    assert second.decoded.tolist() == [True] * 5 + [False] + [True] * 5  # the broken poster, from the manifest
    assert json.loads((_entry(store) / MANIFEST).read_text())["failed"] == [5]
    whole, failed = features.shard_features(backbone, np.array(posters), cfg)  # one unsharded pass in memory
    np.testing.assert_array_equal(second.take(np.arange(11)), whole)
    view = second.select([7, 2, 5])  # a run's posters among the table's
    np.testing.assert_array_equal(view.take([0, 1]), whole[[7, 2]])
    assert view.decoded.tolist() == [True, True, False]


def test_a_killed_extraction_leaves_no_finished_entry(posters, backbone, tmp_path, calls, monkeypatch):
    store, cfg = tmp_path / "store", _cfg(tmp_path)
    real = features.shard_features

    def dies_on_the_second_shard(*args):
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed mid-way
        return real(*args)

    monkeypatch.setattr(features, "shard_features", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    monkeypatch.undo()
    save = np.save

    def half_written(f, array):  # killed while a shard's bytes are being written
        save(f, array[: len(array) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    monkeypatch.undo()
    entry = _entry(store)
    assert sorted(p.name for p in entry.iterdir()) == ["shard-00000.json", "shard-00000.npy"]  # no manifest, no part

    count = []
    monkeypatch.setattr(features, "shard_features", lambda *a: count.append(1) or real(*a))
    done = stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    assert len(count) == 2  # only the shards that were not finished
    np.testing.assert_array_equal(done.take(np.arange(11)), real(backbone, np.array(posters), cfg)[0])


def test_a_damaged_entry_is_named_and_computed_again(posters, backbone, tmp_path, calls, caplog):
    store, cfg = tmp_path / "store", _cfg(tmp_path)
    expected = stored_features(backbone, posters, cfg, store, shard_rows=ROWS).take(np.arange(11))
    entry = _entry(store)
    data = (entry / "shard-00001.npy").read_bytes()
    (entry / "shard-00001.npy").write_bytes(data[: len(data) - 40])  # truncated
    np.save(entry / "shard-00002.npy", np.zeros((2, expected.shape[1]), "float32"))  # the wrong shape
    (entry / MANIFEST).write_text("{")
    with caplog.at_level("WARNING"):
        again = stored_features(backbone, posters, cfg, store, shard_rows=ROWS)
    warnings = [r.getMessage() for r in caplog.records if r.name == "genrecls.features"]
    assert any(MANIFEST in w and "damaged" in w for w in warnings)
    assert any("shard-00001.npy cannot be read" in w for w in warnings)
    assert any("shard-00002.npy holds float32 (2, " in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    assert len(calls) == 3 + 2  # the two damaged shards, not the good one
    np.testing.assert_array_equal(again.take(np.arange(11)), expected)


def test_shards_computed_apart_equal_one_extraction(posters, backbone, tmp_path, capsys):
    cfg = _cfg(tmp_path)
    apart = tmp_path / "apart"
    entry, computed = update_entry(backbone, posters, cfg, apart, shard=(1, 2), shard_rows=ROWS)
    assert computed == [1, 2] and entry.missing() == [0] and not (entry.dir / MANIFEST).exists()
    entry, computed = update_entry(backbone, posters, cfg, apart, shard=(0, 2), shard_rows=ROWS)
    assert computed == [0] and (entry.dir / MANIFEST).exists()
    whole = stored_features(backbone, posters, cfg, tmp_path / "whole", shard_rows=ROWS)
    joined = stored_features(backbone, posters, cfg, apart, shard_rows=ROWS)
    np.testing.assert_allclose(joined.take(np.arange(11)), whole.take(np.arange(11)), rtol=1e-6, atol=1e-6)
    assert joined.decoded.tolist() == whole.decoded.tolist()

    partial = tmp_path / "partial"
    update_entry(backbone, posters, cfg, partial, shard=(0, 3), shard_rows=ROWS)
    capsys.readouterr()
    stored_features(backbone, posters, _cfg(tmp_path, verbose=2), partial, shard_rows=ROWS)
    assert "lacks shard(s) 1, 2 of 3; computing them" in capsys.readouterr().out


def test_the_store_writes_only_into_a_folder_it_marked(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(GenreclsError, match="did not write"):
        open_store(mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (mine / STORE_MARKER).write_text("[]")  # a marker genrecls did not write
    with pytest.raises(GenreclsError, match="damaged or genrecls did not write it"):
        open_store(mine)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenreclsError, match="is a file"):
        open_store(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (open_store(empty) / STORE_MARKER).is_file() and open_store(empty) == empty


def test_features_command_fills_a_store_in_shards_that_a_run_reuses(demo_dir, tmp_path, calls, monkeypatch, capsys):
    from genrecls.training import train

    monkeypatch.setattr(config, "FEATURE_SHARD_ROWS", 50)  # the demo set's 84 posters make 2 shards
    store = tmp_path / "store"
    args = ["features", str(demo_dir), "--backbone", "simple", "--weights", "none", "--image-size", "32",
            "--fine-tune-last", "0", "--feature-store", str(store)]
    for bad in ("2/2", "-1/2", "1", "a/b"):
        assert main(args + [f"--shard={bad}"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("genrecls: error:") and "0 <= I < N" in err and "\n" not in err
    assert main(args[:-2]) == 1 and "--feature-store DIR" in capsys.readouterr().err
    assert main(args + ["--shard", "1/2"]) == 0
    assert "still missing shard(s) 0" in capsys.readouterr().out
    assert main(args + ["--shard", "0/2", "--quiet"]) == 0
    assert "complete" in capsys.readouterr().out and len(calls) == 2

    cfg = tiny_config(demo_dir, mode="multilabel", top_k=3, epochs=1, fine_tune_last=0, feature_store=str(store))
    train(cfg, tmp_path / "run", evaluate=False)
    assert len(calls) == 2  # the run found the store complete
    assert not (tmp_path / "run" / "features").exists()
