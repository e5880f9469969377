"""A small synthetic poster dataset, so the package runs with no download.

Like real posters, the demo's are only partly readable. Each genre has a
motif (a shape or texture) and a palette of its own, but the palettes also
turn up on other genres' posters, a motif covers only part of a poster at
varying strength, and other genres' motifs appear as decoys. Some posters
show no trace of a genre they have (a sure miss) and some wear the whole look
of one they do not have (a sure false alarm), so no model is perfect. Clutter
(figures, text-like title and credit blocks), noise and exposure sit on top.
About a quarter of the posters carry a second genre whose look mixes with the
first. Titles hint at the genres only weakly: some words come from a genre's
list, most are shared filler. The README gives the demo's measured F1.
Deterministic for a seed; written in the `csv` format.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from genrecls import __version__
from genrecls.config import DEMO_PER_GENRE
from genrecls.errors import GenreclsError

MARKER = "demo.json"  # genrecls's claim on a demo folder: the files it wrote
WIDTH, HEIGHT = 96, 144  # 2:3, a poster's shape

# How readable the posters are: the knobs the demo's measured F1 depends on.
HIDDEN = 0.07  # chance that a genre leaves no trace on a poster of it (no palette, no motif): a sure miss
LOOKALIKE = 0.07  # chance that a poster wears the whole look of a genre it does not have: a sure false alarm
MOTIF_ALPHA = (0.5, 1.0)  # opacity of a motif
DECOY = 0.2  # chance of one more motif from a genre the poster does not have
SIGNATURE = 0.92  # chance that a poster has its genre's own palette (a genre's first)
SHARED = 0.05  # chance of one of the genre's other palettes, each also another genre's own (else any palette)
NOISE = 14.0  # sensor-like noise, standard deviation in 0..255
TITLE_HINT = 0.4  # chance that a title word comes from one of the poster's genres
TITLE_DECOY = 0.1  # chance that it comes from another genre's words

# palette name -> (background RGB, motif RGB): each is one genre's own and another two genres' second choice
PALETTES = {
    "ember": ((150, 30, 20), (250, 160, 30)),
    "sunny": ((250, 220, 60), (40, 140, 230)),
    "night": ((15, 10, 25), (170, 0, 0)),
    "rose": ((240, 150, 190), (200, 20, 80)),
    "neon": ((25, 45, 140), (0, 230, 230)),
    "dust": ((200, 150, 90), (90, 50, 20)),
    "slate": ((90, 100, 120), (200, 200, 210)),
}
FILLER_WORDS = ("The", "Last", "Night", "Return", "Story", "City", "Man", "Woman", "Day", "Home", "Time", "Road",
                "House", "River", "Summer", "Secret", "Game", "World", "Lost", "Final", "Big", "One", "Girl", "Boy")


@dataclass(frozen=True)
class Look:
    """A genre's visual and verbal signature."""

    motif: str  # a name in MOTIFS
    palettes: tuple[str, ...]  # names in PALETTES: its own first, then two other genres' own
    words: tuple[str, ...]  # title words that hint at the genre


GENRES = {
    "Action": Look("diagonals", ("ember", "slate", "night"),
                   ("Fury", "Strike", "Bullet", "Force", "Mission", "Rogue", "Target", "Vengeance")),
    "Comedy": Look("dots", ("sunny", "rose", "neon"),
                   ("Wedding", "Crazy", "Party", "Trouble", "Vacation", "Roommates", "Pranks", "Silly")),
    "Horror": Look("drips", ("night", "ember", "slate"),
                   ("Blood", "Haunting", "Curse", "Scream", "Grave", "Demon", "Nightmare", "Evil")),
    "Romance": Look("blobs", ("rose", "sunny", "dust"),
                    ("Love", "Heart", "Kiss", "Forever", "Valentine", "Darling", "Wedding", "Promise")),
    "Sci-Fi": Look("grid", ("neon", "night", "slate"),
                   ("Galaxy", "Robot", "Planet", "Star", "Android", "Orbit", "Alien", "Signal")),
    "Western": Look("bands", ("dust", "ember", "sunny"),
                    ("Outlaw", "Sheriff", "Canyon", "Rider", "Frontier", "Saddle", "Ranch", "Stagecoach")),
    "Drama": Look("speckle", ("slate", "dust", "rose"),
                  ("Silence", "Family", "Winter", "Letters", "Memory", "Daughter", "Promise", "Years")),
}


def _diagonals(rng, y, x, period):
    return ((x + y + rng.integers(0, period)) // (period // 2)) % 2 == 0


def _dots(rng, y, x, period):
    phase = rng.integers(0, period)
    return ((x + phase) % period - period / 2) ** 2 + ((y + phase) % period - period / 2) ** 2 < (period / 3) ** 2


def _drips(rng, y, x, period):
    h, w = y.shape
    mask = np.zeros((h, w), bool)
    for s, n in zip(rng.integers(0, w, size=max(2, w // period + 1)), rng.integers(h // 3, h + 1, size=w)):
        mask[:n, max(0, s - 3): s + 3] = True
    return mask


def _blobs(rng, y, x, period):
    h, w = y.shape
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    r = rng.uniform(0.3, 0.5) * min(h, w) + 3
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _grid(rng, y, x, period):
    phase, width = rng.integers(0, period), period // 4
    return ((x + phase) % period < width) | ((y + phase) % period < width)


def _bands(rng, y, x, period):
    return ((y + rng.integers(0, period)) // (period // 2)) % 3 == 0


def _speckle(rng, y, x, period):
    h, w = y.shape
    cells = rng.random((h // 4 + 1, w // 4 + 1)) < 0.3  # 4-pixel flecks survive downscaling
    return np.kron(cells, np.ones((4, 4), bool))[:h, :w]


# motif name -> f(rng, y, x, period) -> boolean mask of where the motif colour goes
MOTIFS = {"diagonals": _diagonals, "dots": _dots, "drips": _drips, "blobs": _blobs, "grid": _grid,
          "bands": _bands, "speckle": _speckle}


def _region(rng, min_share: float = 0.4) -> tuple[slice, slice]:
    """A random rectangle of the poster, each side at least `min_share` of the poster's."""
    h = int(HEIGHT * rng.uniform(min_share, 1.0))
    w = int(WIDTH * rng.uniform(min_share, 1.0))
    top, left = rng.integers(0, HEIGHT - h + 1), rng.integers(0, WIDTH - w + 1)
    return slice(top, top + h), slice(left, left + w)


def _jitter(colour, rng, spread: float = 15.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, spread, 3), 0, 255)


def _paint(image, mask, colour, alpha: float) -> None:
    image[mask] = (1 - alpha) * image[mask] + alpha * colour


def _motif(image, name: str, colour, rng, alpha: float, min_share: float = 0.4) -> None:
    rows, cols = _region(rng, min_share)
    part = image[rows, cols]
    y, x = np.mgrid[0: part.shape[0], 0: part.shape[1]]
    period = int(rng.integers(14, 24))
    _paint(part, MOTIFS[name](rng, y, x, period), colour, alpha)


def _text_block(image, rng, top: int, lines: int, height: int) -> None:
    """Rows of letter-like marks: a title or the credits."""
    colour = np.full(3, 235.0) if rng.random() < 0.5 else np.full(3, 20.0)
    for line in range(lines):
        y = top + line * (height + 2)
        x = int(rng.integers(4, 16))
        end = WIDTH - int(rng.integers(4, 16))
        while x < end - 2 and y + height <= HEIGHT:
            w = int(rng.integers(2, 6))
            image[y: y + height, x: min(x + w, end)] = colour
            x += w + int(rng.integers(1, 3)) + (4 if rng.random() < 0.2 else 0)  # letters, sometimes a space


def _clutter(image, rng) -> None:
    """Figures: a few ellipses in any colour, as people and objects on a poster."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for _ in range(rng.integers(0, 3)):
        cy, cx = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
        ry, rx = rng.integers(6, 30), rng.integers(4, 18)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        _paint(image, mask, rng.uniform(0, 255, 3), rng.uniform(0.5, 1.0))


def _shown(genres: list[str], rng: np.random.Generator) -> list[str]:
    """The genres whose look a poster wears: its own unless hidden, sometimes one it does not have."""
    shown = [g for g in genres if rng.random() >= HIDDEN]
    if rng.random() < LOOKALIKE:
        others = [g for g in GENRES if g not in genres]
        shown.append(others[rng.integers(len(others))])
    return shown


def _palette(shown: list[str], rng: np.random.Generator) -> str:
    draw = rng.random()
    if not shown or draw >= SIGNATURE + SHARED:
        return list(PALETTES)[rng.integers(len(PALETTES))]
    palettes = GENRES[shown[rng.integers(len(shown))]].palettes
    return palettes[0] if draw < SIGNATURE else palettes[rng.integers(1, len(palettes))]


def draw_poster(genres: list[str], rng: np.random.Generator) -> np.ndarray:
    """One uint8 (HEIGHT, WIDTH, 3) poster whose genres show only partly (see the module's note)."""
    shown = _shown(genres, rng)
    palette = _palette(shown, rng)
    background, accent = PALETTES[palette]
    shade = np.linspace(rng.uniform(0.75, 1.1), rng.uniform(0.75, 1.1), HEIGHT, dtype=np.float32)[:, None, None]
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    image[:] = _jitter(background, rng)
    image *= shade  # a vertical light gradient
    _clutter(image, rng)
    if rng.random() < DECOY:
        others = [g for g in GENRES if g not in genres]
        decoy = others[rng.integers(len(others))]
        _motif(image, GENRES[decoy].motif, _jitter(accent, rng, 40), rng, rng.uniform(*MOTIF_ALPHA), 0.3)
    for genre in shown:
        _motif(image, GENRES[genre].motif, _jitter(accent, rng), rng, rng.uniform(*MOTIF_ALPHA))
    title_top = int(rng.integers(4, 20)) if rng.random() < 0.5 else int(rng.integers(HEIGHT - 50, HEIGHT - 30))
    _text_block(image, rng, title_top, lines=int(rng.integers(1, 3)), height=6)
    _text_block(image, rng, HEIGHT - 14, lines=3, height=2)  # credits
    image += rng.normal(0, NOISE, image.shape)
    image *= rng.uniform(0.85, 1.15)  # exposure
    return np.clip(image, 0, 255).astype(np.uint8)


def make_title(genres: list[str], rng: np.random.Generator) -> str:
    """A plain-ASCII title whose words hint at the genres only sometimes, and sometimes mislead."""
    words = []
    for _ in range(rng.integers(2, 5)):
        draw = rng.random()
        if draw < TITLE_HINT:
            pool = GENRES[genres[rng.integers(len(genres))]].words
        elif draw < TITLE_HINT + TITLE_DECOY:
            pool = GENRES[list(GENRES)[rng.integers(len(GENRES))]].words
        else:
            pool = FILLER_WORDS
        word = pool[rng.integers(len(pool))]
        if word not in words:
            words.append(word)
    return " ".join(words)


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
    low, high = DEMO_PER_GENRE
    if isinstance(per_genre, bool) or not isinstance(per_genre, int) or not low <= per_genre <= high:
        raise GenreclsError(f"--per-genre must be a whole number in [{low}, {high}] (at least {low} so every split "
                            f"gets every genre), not {per_genre!r}")
    out = Path(out)
    _claim(out)
    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(GENRES)
    rows = []
    for g, genre in enumerate(names):
        # the marker names each genre's posters just before they are written: a run cut short leaves only files
        # it names (genrecls may rewrite the folder), and names no file further on that it had not started
        _write_marker(out, seed, per_genre, [path for path, _, _ in rows] + [_poster_path(len(rows) + i)
                                                                              for i in range(per_genre)])
        for i in range(per_genre):
            genres = [genre]
            if rng.random() < multi_share:
                genres.append(names[(g + rng.integers(1, len(names))) % len(names)])
            path = _poster_path(len(rows))
            Image.fromarray(draw_poster(genres, rng)).save(out / path, quality=90)
            title = f"{make_title(genres, rng)} ({rng.integers(1950, 2020)})"
            rows.append((path, "|".join(genres), title))
    _write_marker(out, seed, per_genre, ["labels.csv"] + [path for path, _, _ in rows])
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "genres", "title"])
        writer.writerows(rows)
    return out


def _poster_path(i: int) -> str:
    return f"posters/m{i:05d}.jpg"  # a neutral id: nothing in a file name tells the genre


def _write_marker(out: Path, seed: int, per_genre: int, files: list) -> None:
    (out / MARKER).write_text(json.dumps({"kind": "demo", "genrecls": __version__, "seed": seed,
                                          "per_genre": per_genre, "files": files}, indent=1), encoding="utf-8")
