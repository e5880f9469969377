"""report.html: a run's report as one self-contained page for a browser.

The tables of report.md, the plots, and a gallery of evaluated posters: for
each genre its most confident hits, its most confident false alarms and its
worst misses, with Grad-CAM heatmaps (genrecls.explain) for a few of them.
Every image is embedded as a data: URI, so the page needs no other file and
fetches nothing. Rendered with Jinja2, autoescaping on, from the package's
templates/report.html.j2.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GALLERY_SIZE = 3  # posters per genre in each group
GRADCAM_IMAGES = 8  # heatmaps per report: each genre's top hit, then each genre's top false alarm, until this many
THUMBNAIL = 150  # pixels on a gallery image's long side
TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Group:
    """Which posters of a genre a gallery row shows."""

    title: str
    truth: bool  # the poster has the genre
    predicted: bool  # the model gave it the genre
    confident_first: bool  # highest probability first, else lowest first


GROUPS = {
    "hits": Group("most confident hits", True, True, True),
    "false_alarms": Group("most confident false alarms", False, True, True),
    "misses": Group("worst misses", True, False, False),
}
GRADCAM_GROUPS = ("hits", "false_alarms")  # where a heatmap shows what drove the decision


def gallery_rows(truth: np.ndarray, probabilities: np.ndarray, decisions: np.ndarray,
                 size: int = GALLERY_SIZE) -> list[dict[str, list[int]]]:
    """Per genre, per group (GROUPS): the rows of the posters shown, the most telling first."""
    picks = []
    for j in range(truth.shape[1]):
        has, given, p = truth[:, j] > 0, decisions[:, j] > 0, probabilities[:, j]
        genre = {}
        for key, group in GROUPS.items():
            rows = np.flatnonzero((has == group.truth) & (given == group.predicted))
            order = np.argsort(-p[rows] if group.confident_first else p[rows], kind="stable")
            genre[key] = rows[order][:size].tolist()
        picks.append(genre)
    return picks


def gradcam_pairs(picks: list[dict], limit: int = GRADCAM_IMAGES) -> list[tuple[int, int]]:
    """(row, genre) pairs that get a heatmap: each genre's top hit, then each genre's top false alarm."""
    pairs = [(genre[key][0], j) for key in GRADCAM_GROUPS for j, genre in enumerate(picks) if genre[key]]
    return pairs[:max(0, limit)]


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def thumbnail_uri(path) -> str | None:
    """A small JPEG of the poster as a data: URI; None when the file cannot be read."""
    try:
        with Image.open(path) as poster:
            poster = poster.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None
    scale = THUMBNAIL / max(poster.size)  # the size of a Grad-CAM overlay beside it
    return image_uri(poster.resize((max(round(poster.width * scale), 1), max(round(poster.height * scale), 1)),
                                   Image.LANCZOS))


def build_gallery(paths, titles, truth, probabilities, decisions, names, model=None, resize: str = "pad",
                  gradcam: int = GRADCAM_IMAGES, size: int = GALLERY_SIZE, texts=None) -> list[dict]:
    """The gallery's sections, one per genre, ready for the template.

    paths, titles: per evaluated poster (rows of truth and probabilities);
    decisions: the policy's 0/1 per poster and genre. `gradcam` heatmaps
    (0: none) come from `model` (with each poster's text when it reads `texts`; a
    text-only model has no poster to explain).
    """
    from genrecls.models import input_names

    picks = gallery_rows(truth, probabilities, decisions, size)
    explainable = model is not None and gradcam and "image" in input_names(model)
    heat = _heatmaps(model, paths, gradcam_pairs(picks, gradcam), resize, texts) if explainable else {}
    thumbs: dict[int, str | None] = {}

    def card(row: int, j: int) -> dict:
        if row not in thumbs:
            thumbs[row] = thumbnail_uri(paths[row])
        return {
            "title": titles[row] or Path(paths[row]).stem, "file": Path(paths[row]).name,
            "probability": float(probabilities[row, j]), "thumbnail": thumbs[row], "heatmap": heat.get((row, j)),
            "truth": [names[k] for k in np.flatnonzero(truth[row])],
            "predicted": [(names[k], float(probabilities[row, k])) for k in np.flatnonzero(decisions[row])],
        }

    return [{"genre": name, "groups": [{"key": key, "title": GROUPS[key].title,
                                        "cards": [card(row, j) for row in picks[j][key]]} for key in GROUPS]}
            for j, name in enumerate(names)]


def _heatmaps(model, paths, pairs: list[tuple[int, int]], resize: str, texts=None) -> dict[tuple[int, int], str]:
    """Grad-CAM overlays of the (row, genre) pairs, as data: URIs."""
    if not pairs:
        return {}
    from genrecls.explain import gradcam, image_size, load_posters, overlay

    size = image_size(model)
    images = load_posters([paths[row] for row, _ in pairs], size, resize)
    heat = gradcam(model, images, [j for _, j in pairs], None if texts is None else [texts[row] for row, _ in pairs])
    out = {}
    for (row, j), heatmap in zip(pairs, heat):
        with Image.open(paths[row]) as poster:
            out[(row, j)] = image_uri(overlay(poster, heatmap, size, resize, longest=THUMBNAIL))
    return out


def render_html(context: dict) -> str:
    """The page from templates/report.html.j2; every value is HTML-escaped unless marked safe."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("genrecls", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)
