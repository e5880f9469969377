"""Shared fixtures: tiny generated images, broken files, the real ml1m set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ML1M, tiny_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def ml1m() -> Path:
    if not (ML1M / "movies.dat").is_file():
        pytest.skip(f"real dataset not found at {ML1M} (CI has it beside the repo)")
    return ML1M


@pytest.fixture
def broken_files(tmp_path, ml1m) -> dict[str, Path]:
    """Real broken and odd-format files, made from a real poster."""
    real = (ml1m / "posters" / "1.jpg").read_bytes()
    d = tmp_path / "odd"
    d.mkdir()
    files = {}
    files["truncated"] = d / "truncated.jpg"
    files["truncated"].write_bytes(real[: len(real) // 2])
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = d / "text.jpg"
    files["text"].write_text("<html>404 not found</html>")
    poster = Image.open(ml1m / "posters" / "1.jpg")
    files["png_named_jpg"] = d / "png.jpg"
    poster.save(files["png_named_jpg"], format="PNG")
    files["grayscale"] = d / "gray.jpg"
    poster.convert("L").save(files["grayscale"])
    files["cmyk"] = d / "cmyk.jpg"
    poster.convert("CMYK").save(files["cmyk"])
    files["good"] = d / "good.jpg"
    files["good"].write_bytes(real)
    return files


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from genrecls.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), per_genre=12, seed=0)


@pytest.fixture(scope="session")
def tiny_runs(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """One evaluated one-epoch run per mode, trained once for the whole session."""
    from genrecls.training import train

    runs = {}
    for mode in ("multiclass", "multilabel", "ova"):
        run = tmp_path_factory.mktemp("runs") / mode
        train(tiny_config(demo_dir, mode=mode, top_k=3 if mode == "ova" else None, epochs=1), run)
        runs[mode] = run
    return runs
