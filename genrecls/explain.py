"""Grad-CAM: which part of a poster drives a genre (`genrecls explain`, and the HTML report's gallery).

The keras-io recipe ("Grad-CAM class activation visualization", F. Chollet):
the gradient of a genre's score with respect to the last convolutional
feature map, averaged over the map's positions, weighs the map's channels;
their positive sum, scaled to 0..1, is the heatmap. As in the recipe the
score is the genre's logit: while explaining, each head's output layer
drops its sigmoid or softmax and the Calibration layer passes its input
through, so a genre the model is sure of still has a gradient.

genrecls models nest their networks (image -> backbone -> base network ->
pooling -> head -> Calibration; OvA members inside the combined model), so
no layer is named: the feature maps are the inputs of every layer that
pools a 4-D map into a vector, recorded while the whole model runs. That
finds the map of every backbone in backbones.BACKBONES, and of each
member's own backbone in an OvA run: output j comes from member j, so only
member j's map has a gradient for it, and that map is the one shown.

The poster goes to the model input named "image"; another input named
"text" gets `texts` (empty strings by default), so models that also read a
title or plot keep working.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from PIL import Image

from genrecls.components import Calibration
from genrecls.datasets import image_problem
from genrecls.errors import GenreclsError
from genrecls.export import expand_inputs, is_export, texts_for
from genrecls.heads import OUTPUT
from genrecls.models import IMAGE_INPUT, input_names
from genrecls.pipeline import decode_image
from genrecls.plots import save_png, written_by_genrecls
from genrecls.runs import EXPLAIN, RunFolder
from genrecls.text import TEXT_INPUT

ALPHA = 0.4  # the recipe's heatmap opacity over the poster
LONGEST = 384  # pixels on the long side of an overlay written by `explain`
BATCH = 16
FINAL_ACTIVATIONS = (keras.activations.sigmoid, keras.activations.softmax)


# ------------------------------------------------------------------ the model's parts


def _models(model: keras.Model):
    """`model` and every model nested in it, each once."""
    seen, stack = set(), [model]
    while stack:
        current = stack.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            stack.extend(layer for layer in reversed(current.layers) if isinstance(layer, keras.Model))


def _all_layers(model: keras.Model) -> list:
    return [layer for current in _models(model) for layer in current.layers]


def _rank(layer, attribute: str) -> int | None:
    try:
        tensor = getattr(layer, attribute)
    except (AttributeError, ValueError, RuntimeError):  # a layer never called has neither
        return None
    return len(tensor.shape) if hasattr(tensor, "shape") else None  # a list: several inputs


def pooling_layers(model: keras.Model) -> list:
    """The layers that pool each backbone's last 4-D feature map into a vector; their inputs are Grad-CAM's maps.

    A pooling layer followed by more 4-D layers in its model (EfficientNet's
    squeeze-and-excitation) pools a side branch, not the final map.
    """
    found = []
    for current in _models(model):
        ranks = [_rank(layer, "output") for layer in current.layers]
        last_map = max((i for i, rank in enumerate(ranks) if rank == 4), default=-1)
        found += [layer for i, layer in enumerate(current.layers) if i > last_map and ranks[i] == 2
                  and not isinstance(layer, keras.Model) and _rank(layer, "input") == 4]
    return found


@contextlib.contextmanager
def _explaining(model: keras.Model, record):
    """Inside: pooling layers hand their input map to `record`, heads output logits, Calibration passes through."""
    pooling = pooling_layers(model)
    layers = _all_layers(model)
    outputs = [layer for layer in layers if layer.name == OUTPUT and getattr(layer, "activation", None) in
               FINAL_ACTIVATIONS]
    calibrations = [layer for layer in layers if isinstance(layer, Calibration)]
    if not pooling:
        raise GenreclsError(f"model {model.name} pools no 4-D feature map, so Grad-CAM has nothing to show; "
                            "it needs a convolutional backbone")

    def recording(call):
        def call_and_record(inputs, *args, **kwargs):
            record(inputs)
            return call(inputs, *args, **kwargs)
        return call_and_record

    activations = [layer.activation for layer in outputs]
    try:
        for layer in pooling:
            layer.call = recording(layer.call)
        for layer in calibrations:
            layer.call = lambda inputs, *args, **kwargs: inputs
        for layer in outputs:
            layer.activation = keras.activations.linear
        yield
    finally:
        for layer in pooling + calibrations:
            if "call" in vars(layer):
                del layer.call  # the class's own call again
        for layer, activation in zip(outputs, activations):
            layer.activation = activation


def model_inputs(model: keras.Model, images, texts=None):
    """What `model` is called with: the images, or a dict by input name when it also takes a text."""
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if len(names) == 1:
        return images
    unknown = sorted(set(names) - {IMAGE_INPUT, TEXT_INPUT})
    if IMAGE_INPUT not in names or unknown:
        raise GenreclsError(f"model {model.name} takes inputs {', '.join(names)}; Grad-CAM can give it "
                            f"{IMAGE_INPUT!r} (the poster) and {TEXT_INPUT!r} only")
    texts = [""] * len(images) if texts is None else list(texts)
    if len(texts) != len(images):
        raise GenreclsError(f"{len(images)} posters but {len(texts)} texts")
    return {IMAGE_INPUT: images, TEXT_INPUT: tf.constant(texts, tf.string)}


def image_size(model: keras.Model) -> int:
    """The side of the square poster the model's image input takes."""
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    tensor = model.inputs[names.index(IMAGE_INPUT) if IMAGE_INPUT in names else 0]
    return int(tensor.shape[1])


# ------------------------------------------------------------------ heatmaps


def gradcam(model: keras.Model, images, targets, texts=None, batch_size: int = BATCH) -> np.ndarray:
    """Heatmaps (n, h, w) in 0..1 at the feature map's resolution: where image i's genre targets[i] comes from.

    images: float32 (n, S, S, 3) in 0..255, as the model takes them; targets:
    a genre index per image. A heatmap of zeros means nothing in the poster
    raises that genre's score.
    """
    images = np.asarray(images, "float32")
    targets = np.asarray(targets, "int32").reshape(-1)
    if len(targets) != len(images) or (texts is not None and len(texts) != len(images)):
        raise GenreclsError(f"{len(images)} posters but {len(targets)} genres"
                            f"{'' if texts is None else f' and {len(texts)} texts'} to explain")
    chunks = [_gradcam(model, images[i:i + batch_size], targets[i:i + batch_size],
                       None if texts is None else list(texts[i:i + batch_size]))
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0), "float32")


def _gradcam(model, images, targets, texts) -> np.ndarray:
    maps = []
    # Only what follows the feature maps is recorded: the backbones' own activations are not kept.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        def record(feature_map):
            tape.watch(feature_map)
            maps.append(feature_map)

        with _explaining(model, record):
            logits = model(model_inputs(model, tf.constant(images), texts), training=False)
            score = tf.reduce_sum(tf.gather(logits, tf.constant(targets), axis=1, batch_dims=1))
    if not maps:
        raise GenreclsError(f"model {model.name} never used its pooling layers, so Grad-CAM has no feature map")
    grads = tape.gradient(score, maps, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    heatmaps = combined_cams([m.numpy() for m in maps], [g.numpy() for g in grads])
    peak = heatmaps.max(axis=(1, 2), keepdims=True)
    return np.divide(heatmaps, peak, out=np.zeros_like(heatmaps), where=peak > 0)


def combined_cams(maps: list, grads: list) -> np.ndarray:
    """(n, h, w) Grad-CAM from every feature map the score reads: each map weighed by its gradient averaged per
    channel (the recipe), the weighted maps summed over the maps, then ReLU.

    Several maps come from `--trunks N` (the head reads every trunk: each adds what it contributes) and from OvA
    members that each own a backbone (the other members' maps have no gradient for the genre, so they add 0).
    Maps of different sizes cannot be summed: then the map with the strongest gradient speaks alone."""
    cams = [np.einsum("nhwc,nc->nhw", feature_map, grad.mean(axis=(1, 2))) for feature_map, grad in zip(maps, grads)]
    if len({cam.shape for cam in cams}) == 1:
        return np.maximum(np.sum(cams, axis=0), 0)
    strongest = np.argmax([np.abs(grad).sum(axis=(1, 2, 3)) for grad in grads], axis=0)
    return np.stack([np.maximum(cams[m][i], 0) for i, m in enumerate(strongest)])


def overlay(poster: Image.Image, heatmap: np.ndarray, size: int, resize: str = "pad",
            longest: int = LONGEST) -> Image.Image:
    """The heatmap in the recipe's jet colours over the poster itself, `longest` pixels on its long side.

    The heatmap covers the square the model saw (pipeline.decode_image: the
    poster padded or cropped to size x size); it is mapped back onto the
    whole poster, and the ends a crop cut off get no heat.
    """
    w, h = poster.size
    scale = size / (max(w, h) if resize == "pad" else min(w, h))
    nw, nh = max(round(w * scale), 1), max(round(h * scale), 1)
    square = np.asarray(Image.fromarray(heatmap.astype("float32")).resize((size, size), Image.BILINEAR))
    if resize == "pad":  # the scaled poster sits in the middle of the square
        top, left = (size - nh) // 2, (size - nw) // 2
        scaled = np.ascontiguousarray(square[top:top + nh, left:left + nw])
    else:  # the square is the middle of the scaled poster
        nw, nh = max(nw, size), max(nh, size)
        scaled = np.zeros((nh, nw), "float32")
        top, left = (nh - size) // 2, (nw - size) // 2
        scaled[top:top + size, left:left + size] = square
    k = longest / max(w, h)
    shown = (max(round(w * k), 1), max(round(h * k), 1))
    heat = np.asarray(Image.fromarray(scaled).resize(shown, Image.BILINEAR)).clip(0, 1)
    jet = colormaps["jet"](heat)[..., :3] * 255
    base = np.asarray(poster.convert("RGB").resize(shown, Image.LANCZOS), "float32")
    return Image.fromarray(((1 - ALPHA) * base + ALPHA * jet).round().astype("uint8"))


def load_posters(paths, size: int, resize: str) -> np.ndarray:
    """Posters as the model sees them: float32 (n, size, size, 3) in 0..255 (decoded as in training)."""
    return np.stack([decode_image(tf.constant(Path(p).read_bytes()), size, resize).numpy() for p in paths])


# ------------------------------------------------------------------ explain RUN POSTER...


def genre_indices(genres, names: list[str]) -> list[int] | None:
    """--genres (a comma list or a list) as vocabulary indices; None when not given."""
    if genres is None:
        return None
    wanted = [g.strip() for g in (genres.split(",") if isinstance(genres, str) else genres) if g.strip()]
    if not wanted:
        raise GenreclsError(f"--genres names no genre; this run knows {', '.join(names)}")
    unknown = [g for g in wanted if g not in names]
    if unknown:
        raise GenreclsError(f"unknown genre {', '.join(map(repr, unknown))}: this run knows {', '.join(names)}")
    return [names.index(g) for g in dict.fromkeys(wanted)]


def _open_run(source: Path) -> RunFolder:
    if is_export(source):
        hint = f" (this export's run is probably {source.parent})" if RunFolder(source.parent).is_run else ""
        raise GenreclsError(f"{source} is an export; explain needs the run folder it was exported from, whose "
                            f"Keras model keeps the layers Grad-CAM reads{hint}")
    return RunFolder.open(source)


def _png_path(out: Path, stem: str, genre: str) -> Path:
    path = out / f"{stem}.{re.sub(r'[^A-Za-z0-9_-]+', '_', genre)}.png"
    if path.exists() and not written_by_genrecls(path):
        raise GenreclsError(f"{path} already exists and genrecls did not write it; name another --out "
                            "(genrecls never overwrites files it did not create)")
    return path


def explain_images(model: keras.Model, images: np.ndarray, genres: list[int] | None = None, top_k: int = 3,
                   texts=None):
    """(image index, genre index, probability, heatmap) for each image's top_k genres, or for `genres`."""
    probabilities = model(model_inputs(model, tf.constant(images), texts), training=False).numpy()
    pairs = [(n, int(j)) for n, p in enumerate(probabilities)
             for j in (genres if genres is not None else np.argsort(-p)[:top_k])]
    heat = gradcam(model, images[[n for n, _ in pairs]], [j for _, j in pairs],
                   None if texts is None else [texts[n] for n, _ in pairs])
    return [(n, j, float(probabilities[n, j]), heatmap) for (n, j), heatmap in zip(pairs, heat)]


def explain_posters(run, posters: list, genres=None, top_k: int = 3, out=None, texts=None) -> list[dict]:
    """Grad-CAM overlays of each poster for its top_k genres (or `genres`), as PNGs in `out` (default RUN/explain).

    One result per file: {"file", "error", "genres": [{"genre", "probability", "image"}]}; an
    unreadable poster gets its error and the rest are still explained.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise GenreclsError(f"top-k must be a positive integer, not {top_k!r}")
    folder = _open_run(Path(run))
    cfg = folder.load_config()
    names = folder.load_vocab().names
    chosen = genre_indices(genres, names)
    files = expand_inputs(posters)
    texts = None if texts is None else texts_for(files, texts)  # one per poster, cleaned as in training
    out = Path(out) if out else folder / EXPLAIN
    if out.exists() and not out.is_dir():
        raise GenreclsError(f"--out {out} is a file; name a folder for the heatmaps")
    model = folder.load_model()
    if IMAGE_INPUT not in input_names(model):
        raise GenreclsError(f"{run} is a text-only model (--backbone none): it has no poster to explain")
    if texts is not None and TEXT_INPUT not in input_names(model):
        raise GenreclsError(f"{run} reads posters only; it was not trained with --text")
    size, stems, results = image_size(model), _unique_stems(files), []
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), BATCH):
        rows, images = [], []
        for i in range(start, min(start + BATCH, len(files))):
            results.append({"file": str(files[i]), "error": image_problem(files[i]), "genres": []})
            if results[i]["error"] is None:
                try:
                    images.append(load_posters([files[i]], size, cfg.resize)[0])
                    rows.append(i)
                except tf.errors.OpError:
                    results[i]["error"] = "cannot be decoded"
        if not rows:
            continue
        batch_texts = None if texts is None else [texts[i] for i in rows]
        for n, j, probability, heatmap in explain_images(model, np.stack(images), chosen, top_k, batch_texts):
            target = _png_path(out, stems[rows[n]], names[j])
            with Image.open(files[rows[n]]) as poster:
                save_png(overlay(poster, heatmap, size, cfg.resize), target)
            results[rows[n]]["genres"].append({"genre": names[j], "probability": probability, "image": str(target)})
    return results


def _unique_stems(files: list[Path]) -> list[str]:
    """Each file's stem, numbered where several posters share one (a.jpg, b/a.jpg: a, a-2)."""
    counts, stems = {}, []
    for path in files:
        counts[path.stem] = counts.get(path.stem, 0) + 1
        stems.append(path.stem if counts[path.stem] == 1 else f"{path.stem}-{counts[path.stem]}")
    return stems


def format_explanations(results: list[dict]) -> str:
    lines = []
    for r in results:
        if r["error"]:
            lines.append(f"{r['file']}: ERROR {r['error']}")
            continue
        shown = ", ".join(f"{g['genre']} {g['probability']:.2f} -> {g['image']}" for g in r["genres"])
        lines.append(f"{r['file']}: {shown}")
    return "\n".join(lines)
