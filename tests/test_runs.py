"""The run folder: claim fresh, resume, refuse; never delete what genrecls did not create."""

from __future__ import annotations

import json

import pytest

from genrecls.errors import GenreclsError
from genrecls.runs import RunFolder
from genrecls.training import train
from tests.helpers import tiny_config

SETTINGS = {"data": "/data", "mode": "multilabel", "epochs": 2}


def test_claim_fresh_resume_finish_and_refuse(tmp_path, capsys):
    run = RunFolder.claim(tmp_path / "run", SETTINGS)
    assert run.marker()["kind"] == "run" and not run.finished
    again = RunFolder.claim(tmp_path / "run", SETTINGS)  # same settings, unfinished: resume
    assert "resuming the unfinished run" in capsys.readouterr().out and again.path == run.path
    with pytest.raises(GenreclsError, match="other settings \\(epochs\\)"):
        RunFolder.claim(tmp_path / "run", {**SETTINGS, "epochs": 3})
    run.mark_finished(1.5)
    assert run.finished and RunFolder.open(run.path).path == run.path
    with pytest.raises(GenreclsError, match="finished run"):
        RunFolder.claim(tmp_path / "run", SETTINGS)
    (run / "extra.txt").write_text("genrecls wrote this folder, so overwrite may replace it")
    RunFolder.claim(tmp_path / "run", {**SETTINGS, "epochs": 3}, overwrite=True)
    assert not (run / "extra.txt").exists()


@pytest.mark.parametrize("kind", ["user files", "dataset"])
def test_overwrite_never_deletes_a_folder_genrecls_did_not_create(tmp_path, kind, demo_dir):
    folder = demo_dir if kind == "dataset" else tmp_path / "mine"
    if kind == "user files":
        folder.mkdir()
        (folder / "thesis.docx").write_text("months of work")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(GenreclsError, match="genrecls did not write"):
        RunFolder.claim(folder, SETTINGS, overwrite=True)
    with pytest.raises(GenreclsError, match="genrecls did not write"):
        train(tiny_config(demo_dir, mode="multilabel", epochs=1), folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_open_refuses_unfinished_foreign_and_damaged_runs(tmp_path):
    with pytest.raises(GenreclsError, match="does not exist"):
        RunFolder.open(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(GenreclsError, match="not a genrecls run folder"):
        RunFolder.open(tmp_path / "plain")
    run = RunFolder.claim(tmp_path / "run", SETTINGS)
    with pytest.raises(GenreclsError, match="unfinished run"):
        RunFolder.open(run.path)
    search = RunFolder.claim(tmp_path / "search", SETTINGS, kind="search")
    with pytest.raises(GenreclsError, match="is a genrecls search"):
        RunFolder.open(search.path)
    with pytest.raises(GenreclsError, match="holds a genrecls search, not a run"):
        RunFolder.claim(search.path, SETTINGS)
    run.mark_finished()
    (run / "split.json").write_text('{"train": [1]')
    with pytest.raises(GenreclsError, match="split.json \\(the split\\) is damaged"):
        run.load_split()
    (run / "thresholds.json").write_text(json.dumps({"kind": "global", "thresholds": [float("nan")]}))
    with pytest.raises(GenreclsError, match="thresholds must be numbers in \\[0, 1\\]"):
        run.load_policy(["Drama"])


def test_a_foreign_run_json_or_a_link_is_not_a_claim(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text('{"kind": "run", "finished": true}')  # someone else's run.json
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(GenreclsError, match="genrecls did not write"):
        RunFolder.claim(mine, SETTINGS, overwrite=True)
    link = tmp_path / "link"
    link.symlink_to(RunFolder.claim(tmp_path / "real", SETTINGS).path)
    with pytest.raises(GenreclsError, match="a file or a link"):
        RunFolder.claim(link, SETTINGS, overwrite=True)
    assert (mine / "notes.txt").exists() and (tmp_path / "real" / "run.json").exists()


def test_runs_from_before_the_marker_are_read_but_never_overwritten(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "genres.json", "model.keras"):
        (old / name).write_text("{}")
    assert RunFolder.open(old).finished
    with pytest.raises(GenreclsError, match="genrecls did not write"):
        RunFolder.claim(old, SETTINGS, overwrite=True)
    assert (old / "model.keras").exists()
