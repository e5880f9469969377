"""The benchmark code runs end to end on a tiny input; timings are never asserted."""

from __future__ import annotations

import json

import pytest

from genrecls import bench
from genrecls.demo import make_demo_dataset
from genrecls.errors import GenreclsError

CHECK_KEYS = {"name", "measured", "baseline", "ratio", "target", "met"}
MACHINE_KEYS = {"cpu_count", "platform", "python", "tensorflow", "keras", "numpy", "pillow"}


@pytest.mark.slow
def test_every_section_runs_and_writes_json_and_markdown(tmp_path, monkeypatch):
    data = make_demo_dataset(tmp_path / "demo", per_genre=10, seed=0)
    # EfficientNet's first training step traces for about a minute on two
    # cores; the simple backbone walks the same code. Two OvA members suffice.
    monkeypatch.setattr(bench, "THROUGHPUT_RUNS", (("simple", 32, 32),))
    monkeypatch.setattr(bench, "OVA_TOP_K", 2)
    monkeypatch.setattr(bench, "OVA_RUN", ("simple", 32))
    monkeypatch.setattr(bench, "SCALE_FLOOR", 100)
    out = tmp_path / "bench"

    results = bench.run_benchmarks(data=data, out=out, scale=0.001, seed=0)

    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert MACHINE_KEYS <= set(written["machine"])
    assert {"date", "data", "scale", "seed", "seconds"} <= set(written)
    assert list(written["sections"]) == list(bench.SECTION_NAMES)
    for name, section in written["sections"].items():
        assert {"measurements", "checks", "met", "seconds"} <= set(section), name
        assert section["checks"], name
        for check in section["checks"]:
            assert CHECK_KEYS <= set(check), name
            assert isinstance(check["ratio"], float) and isinstance(check["met"], bool)
        assert section["met"] == all(c["met"] for c in section["checks"])

    sections = written["sections"]
    assert set(sections["input_pipeline"]["measurements"]["posters_per_second"]) == {
        "pipeline", "pipeline_checking_files", "pil_numpy", "decode_only"}
    assert len(sections["input_pipeline"]["checks"]) == 2
    assert "input_wait_share" in sections["training_throughput"]["measurements"]["backbones"]["simple"]
    ova = sections["ova_cost"]["measurements"]
    assert set(ova["f1"]) == {"one_fit", "member_by_member", "through_backbone"}
    assert set(ova["max_abs_roc_auc_difference"]) == {"one_fit_vs_member_by_member", "cached_vs_through_backbone"}
    assert len(sections["ova_cost"]["checks"]) == 2
    assert set(sections["memory"]["measurements"]["runs"]) == {"1x", "10x"}
    assert len(sections["scaling"]["measurements"]["seconds"]) == 3
    scale = sections["letterboxd_scale"]["measurements"]["runs"]
    assert sorted(map(int, scale)) == [100, 1000]
    for run in scale.values():
        assert set(bench.SCALE_STAGES) <= set(run) and run["counts"]["posters"] in (100, 1000)
        assert run["counts"]["records"] > run["counts"]["posters"]  # movies without a poster are counted drops

    markdown = (out / "results.md").read_text()
    assert markdown == bench.format_markdown(results)
    for name in bench.SECTION_NAMES:
        assert f"| {name}: " in markdown


def test_unknown_section_is_a_clear_error(tmp_path):
    with pytest.raises(GenreclsError, match="choose from"):
        bench.run_benchmarks(data=tmp_path, out=tmp_path / "out", sections=["speed"])


@pytest.mark.parametrize("run, names", [
    (lambda out: bench.run_benchmarks(out=out, sections=["nothing-yet"]), ("results.json", "results.md")),
    (lambda out: __import__("genrecls.quality").quality.run_quality(data=out, out=out, modes=["none"]),
     ("quality.json", "quality.md")),
])
def test_a_benchmark_never_overwrites_a_users_files_in_its_out_folder(tmp_path, run, names):
    """--out may hold only what genrecls wrote there: a user's results.md, or a JSON list, stays as it was."""
    for mine in (dict.fromkeys(names, "my notes"), {names[0]: "[1, 2]"}, {names[0]: '{"mine": 1}'}):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        out.mkdir()
        for name, text in mine.items():
            (out / name).write_text(text)
        with pytest.raises(GenreclsError, match="exists and genrecls did not write it; name another --out"):
            run(out)
        assert {name: (out / name).read_text() for name in mine} == mine
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenreclsError, match="is a file; name a folder"):
        run(tmp_path / "file")
