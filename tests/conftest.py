"""Shared fixtures: tiny generated images, broken files, the real ml1m set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
ML1M = REPO.parent / "shared" / "datasets" / "ml1m"


@pytest.fixture(scope="session")
def ml1m() -> Path:
    if not (ML1M / "movies.dat").is_file():
        pytest.skip(f"real dataset not found at {ML1M} (CI has it beside the repo)")
    return ML1M


def write_image(path: Path, size=(40, 60), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    """Write a small solid image; size is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"))
    return path


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


def rng_labels(n: int, k: int, seed: int = 0, p: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, k)) < p).astype("float32")
    Y[np.arange(n), rng.integers(0, k, n)] = 1  # every row has a genre
    return Y


@pytest.fixture(scope="session")
def tiny_runs(demo_dir, tmp_path_factory) -> dict[str, Path]:
    """One evaluated one-epoch run per mode, trained once for the whole session."""
    from genrecls.report import evaluate_run
    from genrecls.training import TrainConfig, train

    runs = {}
    for mode in ("multiclass", "multilabel", "ova"):
        run = tmp_path_factory.mktemp("runs") / mode
        cfg = TrainConfig(data=str(demo_dir), mode=mode, top_k=3 if mode == "ova" else None, backbone="simple",
                          image_size=32, batch_size=16, head=(16,), epochs=1, verbose=0)
        train(cfg, run)
        evaluate_run(run, plots=False)
        runs[mode] = run
    return runs
