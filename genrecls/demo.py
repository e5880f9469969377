"""A small synthetic poster dataset, so the package runs with no download.

Each genre has a visual signature a small CNN can learn: a palette, a
shape or texture. About a quarter of the posters carry a second genre,
drawn in the lower part of the poster, so multi-label training has
something to find. Deterministic for a seed; written in the `csv` format.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from genrecls import __version__
from genrecls.errors import GenreclsError

MARKER = "demo.json"  # genrecls's claim on a demo folder: the files it wrote
WIDTH, HEIGHT = 96, 144  # 2:3, a poster's shape

# genre -> (background RGB, pattern RGB, pattern name)
SIGNATURES = {
    "Action": ((150, 30, 20), (250, 160, 30), "diagonals"),
    "Comedy": ((250, 220, 60), (40, 140, 230), "dots"),
    "Horror": ((15, 10, 15), (170, 0, 0), "drips"),
    "Romance": ((240, 150, 190), (200, 20, 80), "blobs"),
    "Sci-Fi": ((10, 20, 70), (0, 230, 230), "grid"),
    "Western": ((200, 150, 90), (90, 50, 20), "bands"),
    "Drama": ((90, 100, 120), (200, 200, 210), "noise"),
}


def _pattern(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A boolean mask (h, w) of where the pattern colour goes."""
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.integers(0, 16)
    if name == "diagonals":
        return ((x + y + phase) // 8) % 2 == 0
    if name == "dots":
        return ((x + phase) % 16 - 8) ** 2 + ((y + phase) % 16 - 8) ** 2 < 16
    if name == "drips":
        starts = rng.integers(0, w, size=6)
        lengths = rng.integers(h // 4, h, size=6)
        mask = np.zeros((h, w), bool)
        for s, n in zip(starts, lengths):
            mask[:n, max(0, s - 2) : s + 2] = True
        return mask
    if name == "blobs":
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        r = rng.integers(w // 5, w // 3)
        return (x - cx) ** 2 + (y - cy) ** 2 < r * r
    if name == "grid":
        return ((x + phase) % 12 < 2) | ((y + phase) % 12 < 2)
    if name == "bands":
        return ((y + phase) // 10) % 3 == 0
    if name == "noise":
        return rng.random((h, w)) < 0.25
    raise ValueError(name)


def draw_poster(genres: list[str], rng: np.random.Generator) -> np.ndarray:
    """One uint8 (HEIGHT, WIDTH, 3) poster showing its genres' signatures."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    first = SIGNATURES[genres[0]]
    image[:] = first[0]
    image[_pattern(first[2], rng, HEIGHT, WIDTH)] = first[1]
    if len(genres) > 1:  # the second genre owns the lower 40 %
        top = int(HEIGHT * 0.6)
        bg, fg, name = SIGNATURES[genres[1]]
        part = image[top:]
        part[:] = bg
        part[_pattern(name, rng, HEIGHT - top, WIDTH)] = fg
    image += rng.normal(0, 12, image.shape)  # sensor-like noise
    image *= rng.uniform(0.8, 1.2)  # exposure
    return np.clip(image, 0, 255).astype(np.uint8)


def _claim(out: Path) -> None:
    """A new or empty folder, or a demo set genrecls wrote there before (whose files it then removes).

    Refuses anything else, so demo posters never mix with a user's dataset.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise GenreclsError(f"{out} is a file or a link; name a new folder for the demo dataset")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
        ours = set(marker["files"]) if marker.get("kind") == "demo" and "genrecls" in marker else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = None
    if ours is None:
        raise GenreclsError(f"{out} already holds files genrecls did not write (no demo {MARKER}); "
                            "name a new or empty folder for the demo dataset (a demo set made before "
                            f"{MARKER} existed must be deleted by hand)")
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    foreign = sorted(present - ours - {MARKER})
    if foreign:
        raise GenreclsError(f"{out} holds files the demo did not write ({', '.join(foreign[:3])}); "
                            "move them or name another folder")
    for name in ours & present:
        (out / name).unlink()


def make_demo_dataset(
    out: str | os.PathLike, per_genre: int = 60, seed: int = 0, multi_share: float = 0.25
) -> Path:
    """Write posters/<id>.jpg, labels.csv (path, genres, title) and the demo marker under `out`.

    Rewriting a demo set genrecls made is allowed (make demo does it every time); a
    folder with anything else in it is refused.
    """
    if per_genre < 10:
        raise GenreclsError("--per-genre must be at least 10 so every split gets every genre")
    out = Path(out)
    _claim(out)
    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(SIGNATURES)
    rows = []
    for g, genre in enumerate(names):
        for i in range(per_genre):
            genres = [genre]
            if rng.random() < multi_share:
                genres.append(names[(g + rng.integers(1, len(names))) % len(names)])
            movie_id = f"{genre.lower().replace('-', '')}{i:04d}"
            Image.fromarray(draw_poster(genres, rng)).save(posters / f"{movie_id}.jpg", quality=90)
            rows.append((f"posters/{movie_id}.jpg", "|".join(genres), f"{genre} Movie {i} ({1950 + i % 70})"))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "genres", "title"])
        writer.writerows(rows)
    files = ["labels.csv"] + [path for path, _, _ in rows]
    (out / MARKER).write_text(json.dumps({"kind": "demo", "genrecls": __version__, "seed": seed,
                                          "per_genre": per_genre, "files": files}, indent=1), encoding="utf-8")
    return out
