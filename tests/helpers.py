"""Helpers shared by the tests: paths, tiny images, random labels, tiny configs.

Imported by test modules directly (not through conftest, which holds only fixtures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ML1M = REPO.parent / "shared" / "datasets" / "ml1m"
# The smallest useful model: seconds per epoch on the demo set.
TINY = dict(backbone="simple", image_size=32, batch_size=16, head=(16,), verbose=0)


def write_image(path: Path, size=(40, 60), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    """Write a small solid image; size is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"))
    return path


def rng_labels(n: int, k: int, seed: int = 0, p: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, k)) < p).astype("float32")
    Y[np.arange(n), rng.integers(0, k, n)] = 1  # every row has a genre
    return Y


def tiny_config(data, **kw):
    from genrecls.config import TrainConfig

    return TrainConfig(data=str(data), **{**TINY, **kw})


def multi_genre_lists(n: int = 60, seed: int = 0) -> list[list[str]]:
    """n movies, almost all with 2-3 of six genres of unequal popularity (like issue #12's Kaggle sample)."""
    rng = np.random.default_rng(seed)
    genres = ["Drama", "Comedy", "Action", "Romance", "Thriller", "Horror"]
    popularity = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    sizes = rng.choice([1, 2, 3], size=n, p=[0.05, 0.55, 0.40])
    return [[genres[j] for j in sorted(rng.choice(6, s, replace=False, p=popularity / popularity.sum()))]
            for s in sizes]
