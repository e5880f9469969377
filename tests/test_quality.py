"""The quality benchmark's trunk reuse: only from a run that trained it with the same settings."""

from __future__ import annotations

import dataclasses

import pytest

from genrecls.config import TrainConfig
from genrecls.errors import GenreclsError
from genrecls.quality import checked_trunk
from genrecls.runs import RunFolder


def test_a_trunk_is_reused_only_from_a_run_with_the_same_trunk_settings(tmp_path):
    cfg = TrainConfig(data=str(tmp_path), mode="multilabel", backbone="simple", weights=None, trunk="shared")
    folder = RunFolder.claim(tmp_path / "multilabel", cfg)
    trunk = folder.trunk_path
    trunk.parent.mkdir(parents=True, exist_ok=True)
    trunk.write_bytes(b"stage 1")
    # the mode, the text and the decision settings are fitted on the trunk: reusable
    assert checked_trunk(trunk, dataclasses.replace(cfg, mode="ova", text=["title"], optimize="macro")) == trunk
    for change, named in ((dict(seed=1), "seed"), (dict(image_size=96), "image_size"), (dict(trunks=2), "trunks"),
                          (dict(data=str(tmp_path / "other")), "data")):
        with pytest.raises(GenreclsError, match=named):
            checked_trunk(trunk, dataclasses.replace(cfg, **change))
    stray = tmp_path / "trunk.keras"
    stray.write_bytes(b"")
    with pytest.raises(GenreclsError, match="checkpoints/trunk.keras"):
        checked_trunk(stray, cfg)


@pytest.mark.slow
def test_each_row_also_reports_the_decisions_for_macro_f1_without_touching_the_run(demo_dir, tmp_path):
    import json

    from genrecls.quality import run_quality
    from genrecls.report import evaluate_run
    from genrecls.runs import METRICS, POLICY

    results = run_quality(data=demo_dir, out=tmp_path / "out", runs=tmp_path / "runs", modes=["multilabel"],
                          epochs=1)
    row = results["modes"]["multilabel"]
    run = tmp_path / "runs" / "multilabel"
    saved = json.loads((run / POLICY).read_text())
    metrics = json.loads((run / METRICS).read_text())
    # the run keeps the rule chosen for its own --optimize (micro) and the scores it gave
    assert "micro F1" in saved["reason"] and "micro F1" in metrics["policy"]["reason"]
    assert metrics["overall"]["f1_macro"] == pytest.approx(row["scores"]["f1_macro"], abs=1e-4)
    # the second rule is the one evaluate --optimize macro chooses, and choosing it wrote nothing
    before = {f.name: f.stat().st_mtime_ns for f in run.iterdir() if f.is_file()}
    for_macro = evaluate_run(run, optimize="macro", plots=False, save=False)
    assert {f.name: f.stat().st_mtime_ns for f in run.iterdir() if f.is_file()} == before
    assert "macro F1" in for_macro["policy"]["reason"] and row["for_macro"]["policy"] == for_macro["policy"]["name"]
    assert row["for_macro"]["f1_macro"] == pytest.approx(for_macro["overall"]["f1_macro"], abs=1e-4)
    table = (tmp_path / "out" / "quality.md").read_text()
    assert "decided for macro: macro / micro F1" in table
    assert f"{row['for_macro']['f1_macro']:.3f}" in table.split("| multilabel |")[1].splitlines()[0]


def test_the_table_marks_a_score_within_noise_and_one_below_its_baseline():
    from genrecls.quality import format_markdown

    row = {"scores": {"f1_micro": 0.40, "f1_macro": 0.20, "roc_auc_mean": 0.45},
           "baselines": {"f1_micro": {"value": 0.38, "name": "always the most common genres"},
                         "f1_macro": {"value": 0.10, "name": "random"},
                         "roc_auc_mean": {"value": 0.5, "name": "constant score"}},
           "beats": {"f1_micro": True, "f1_macro": True, "roc_auc_mean": False},
           "clearly_beats": {"f1_micro": False, "f1_macro": True, "roc_auc_mean": False},
           "policy": "global", "seconds": 1.0,
           "for_macro": {"f1_macro": 0.21, "f1_micro": 0.35, "beats": True, "clearly_beats": False, "policy": "x"}}
    old = {**row, "for_macro": {**row["for_macro"], "clearly_beats": None}}
    del old["clearly_beats"]  # a row measured before the intervals: no ≈, the ⚠ as before
    results = {"date": "d", "machine": {"cpu_count": 2, "platform": "p", "tensorflow": "t", "keras": "k"},
               "data": "ml1m", "recipe": "scratch", "settings": {}, "modes": {"new": row, "old": old}}
    lines = {line.split(" | ")[0]: line.split(" | ") for line in format_markdown(results).splitlines()
             if line.startswith(("| new", "| old"))}
    assert lines["| new"][1:3] == ["0.400 ≈", "0.200"] and lines["| new"][5] == "0.450 ⚠"
    assert lines["| new"][7] == "0.210 ≈ / 0.350"
    assert lines["| old"][1:3] == ["0.400", "0.200"] and lines["| old"][5] == "0.450 ⚠"
    assert lines["| old"][7] == "0.210 / 0.350"
