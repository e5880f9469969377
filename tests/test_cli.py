"""The command line: output people read, files they open, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genrecls.cli import main


def test_summary_text_json_and_plot(ml1m, tmp_path, capsys):
    plot = tmp_path / "genres.png"
    assert main(["summary", str(ml1m), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "posters   3,256" in out and "genres    18" in out
    assert "627  no poster file" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    assert main(["summary", str(ml1m), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["posters"] == 3256 and summary["dropped"]["counts"] == {"no poster file": 627}


def test_a_bad_setting_fails_before_tensorflow_loads(tmp_path):
    """Only the error: no TensorFlow start-up lines printed before it (they come with importing it)."""
    for command in ("train", "tune"):
        result = subprocess.run([sys.executable, "-m", "genrecls.cli", command, str(tmp_path), "--head", "-5"],
                                capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == ["genrecls: error: head widths must be whole numbers in "
                                                      "[1, 16384], not (-5,)"]


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "genrecls.cli", "summary", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"genrecls: error: dataset folder {tmp_path / 'missing'} does not exist"


def test_demo_data_is_deterministic_and_learnable_format(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "a"), "--per-genre", "10", "--seed", "4"]) == 0
    assert main(["demo-data", str(tmp_path / "b"), "--per-genre", "10", "--seed", "4"]) == 0
    a = sorted(p.name for p in (tmp_path / "a" / "posters").iterdir())
    assert len(a) == 70
    assert all(
        (tmp_path / "a" / "posters" / n).read_bytes() == (tmp_path / "b" / "posters" / n).read_bytes() for n in a
    )
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "a"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "csv" and summary["posters"] == 70 and summary["genres"] == 7
    assert 0.05 < summary["multi_genre_share"] < 0.5
    assert main(["demo-data", str(tmp_path / "c"), "--per-genre", "3"]) == 1


def test_help_explains_every_command(capsys):
    for command in ([], ["summary"], ["demo-data"]):
        try:
            main(command + ["--help"])
        except SystemExit as exit:
            assert exit.code == 0
        out = capsys.readouterr().out
        assert "usage: genrecls" in out


def test_help_names_every_benchmark_section_and_no_default_for_a_flag(capsys):
    from genrecls.bench import SECTION_NAMES

    def helped(*command) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    text = helped("bench")
    assert all(name in text for name in SECTION_NAMES)
    text = helped("train")
    assert "instead of on cached features [" not in text  # --no-cache-features: a flag, not a value
