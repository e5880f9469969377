"""SavedModel export that serves raw image bytes (and texts), and prediction on new posters.

The export holds decoding, resizing, the backbone's preprocessing, the text
vectorizers, the model and the decision policy in one TensorFlow graph, so TF
Serving or plain `tf.saved_model.load` needs nothing from this package:

    serving_default(images: string[N])        encoded JPEG/PNG bytes
    serve_pixels(pixels: float32[N, S, S, 3]) decoded RGB in 0..255
    metadata()                                genres, thresholds and the policy (JSON)

A model trained with --text takes one string per poster as well:
serving_default(images, texts) and serve_pixels(pixels, texts); a text-only
model (--backbone none) has serving_default(texts) alone. metadata.json's
"inputs" and "text" say which. Every signature returns `probabilities`
float32[N, K], `above_threshold` bool[N, K] and `genres_above` string[N, K]
(the genre's name where it is above its threshold, "" elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from genrecls import __version__
from genrecls.config import DEFAULT_THRESHOLD, NO_BACKBONE
from genrecls.datasets import POSTER_EXTENSIONS, image_problem
from genrecls.errors import GenreclsError
from genrecls.modes import get_mode
from genrecls.pipeline import decode_image
from genrecls.policies import Policy
from genrecls.runs import MARKER, RunFolder
from genrecls.text import TEXT_INPUT, clean_text

log = logging.getLogger(__name__)
METADATA = "metadata.json"
SAVED_MODEL = "saved_model.pb"
# What an export folder holds: a SavedModel and genrecls's metadata (nothing else may be replaced with it).
EXPORT_NAMES = {SAVED_MODEL, "fingerprint.pb", "variables", "assets", METADATA}
OTHER_IMAGE_EXTENSIONS = (".webp", ".tif", ".tiff", ".avif", ".heic", ".heif")  # reported, never decoded


def run_policy(folder: RunFolder) -> tuple[Policy, dict]:
    """The run's decision policy (the mode's default when never evaluated) and its metadata."""
    cfg = folder.load_config()
    genres = folder.load_vocab().names
    mode = get_mode(cfg.mode)
    policy = folder.load_policy(genres)
    if policy is None:
        default = mode.default_policy(len(genres), DEFAULT_THRESHOLD)
        policy = dataclasses.replace(default, reason=f"{default.name} (run not evaluated)")
    meta = {
        "genres": genres, "thresholds": list(policy.thresholds), "policy": policy.to_json(genres),
        "mode": cfg.mode, "image_size": cfg.image_size, "resize": cfg.resize, "backbone": cfg.backbone,
        "inputs": (["image"] if cfg.backbone != NO_BACKBONE else []) + ([TEXT_INPUT] if cfg.text else []),
        "text": cfg.text, "genrecls": __version__,
    }
    return policy, meta


def is_export(path: str | os.PathLike) -> bool:
    """A SavedModel folder or a LiteRT file (what `export` writes), rather than a run folder."""
    path = Path(path)
    return (path / SAVED_MODEL).is_file() or (path.is_file() and path.suffix == ".tflite")


def _ours(metadata: Path) -> bool:
    try:
        return "genrecls" in json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def claim_export(out: Path, format: str) -> None:
    """Where an export may be written: a new path, or an earlier export of genrecls's (then replaced).

    A user's file or folder is refused; genrecls never overwrites what it did not write.
    """
    if format == "tflite":
        if out.suffix != ".tflite":  # its metadata goes beside it as NAME.json: never the file itself
            raise GenreclsError(f"name the LiteRT file NAME.tflite, not {out.name}")
        meta = out.with_suffix(".json")
        ours = _ours(meta)
        if out.is_dir() or out.is_symlink() or (out.exists() and not ours):
            raise GenreclsError(f"{out} already exists and is not a LiteRT export of genrecls's; name a new file")
        if meta.is_dir() or meta.is_symlink() or (meta.exists() and not ours):
            raise GenreclsError(f"{meta} already exists and genrecls did not write it; the export writes the "
                                f"genres and decisions there, so name another .tflite file")
        if not out.parent.is_dir():
            raise GenreclsError(f"the folder of {out} is missing; create it first")
        return
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise GenreclsError(f"{out} is a file or a link; name a new folder for the export")
    if out.is_dir() and any(out.iterdir()):
        if not _ours(out / METADATA) or {p.name for p in out.iterdir()} - EXPORT_NAMES:
            raise GenreclsError(f"{out} already holds files genrecls did not write; name a new folder for "
                                "the export (genrecls never overwrites what it did not create)")
        shutil.rmtree(out)


def _decisions(probabilities, genres, policy: Policy) -> dict:
    """Graph ops: which genres each poster gets, as dense tensors a signature can return."""
    above = policy.decide_tf(probabilities)
    names = tf.where(above, tf.broadcast_to(genres, tf.shape(above)), tf.constant(""))
    return {"probabilities": probabilities, "above_threshold": above, "genres_above": names}


def export_run(run: str | os.PathLike, out: str | os.PathLike | None = None, format: str = "saved_model",
               verbose: bool = False) -> Path:
    """Write the run's model as a SavedModel serving bytes (or a .tflite of the pixel model).

    verbose: say when the slow part (tracing and writing the graph, often tens of seconds) starts."""
    if format not in ("saved_model", "tflite"):
        raise GenreclsError(f"export format must be saved_model or tflite, not {format!r}")
    folder = RunFolder.open(run)
    out = Path(out) if out else folder / ("model.tflite" if format == "tflite" else "export")
    claim_export(out, format)
    policy, meta = run_policy(folder)
    model = folder.load_model()
    if verbose:
        print(f"tracing the model and writing {'a LiteRT model' if format == 'tflite' else 'the SavedModel'} "
              f"to {out}", flush=True)
    if format == "tflite":
        if meta["inputs"] != ["image"]:
            raise GenreclsError("a LiteRT export takes pixels only; this run reads text too, so export a SavedModel")
        return _export_tflite(model, meta, out)
    size, resize = meta["image_size"], meta["resize"]
    genres = tf.constant(meta["genres"])
    thresholds = tf.constant(meta["thresholds"], tf.float32)
    strings = tf.TensorSpec([None], tf.string)

    def decide(x):
        return _decisions(model(x, training=False), genres, policy)

    def decode(images):
        return tf.map_fn(lambda data: decode_image(data, size, resize), images,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    # keras.export.ExportArchive is the machinery behind model.export(); it lets
    # the bytes endpoint be serving_default and adds the pixel and metadata ones.
    archive = keras.export.ExportArchive()
    archive.track(model)
    pixels_spec = tf.TensorSpec([None, size, size, 3], tf.float32) if size else None
    if meta["inputs"] == ["image"]:
        archive.add_endpoint("serving_default", lambda images: decide(decode(images)), input_signature=[strings])
        archive.add_endpoint("serve_pixels", lambda pixels: decide(pixels), input_signature=[pixels_spec])
    elif meta["inputs"] == ["image", TEXT_INPUT]:
        archive.add_endpoint("serving_default", lambda images, texts: decide({"image": decode(images), TEXT_INPUT: texts}),
                             input_signature=[strings, strings])
        archive.add_endpoint("serve_pixels", lambda pixels, texts: decide({"image": pixels, TEXT_INPUT: texts}),
                             input_signature=[pixels_spec, strings])
    else:  # text only
        archive.add_endpoint("serving_default", lambda texts: decide({TEXT_INPUT: texts}), input_signature=[strings])
    policy_json = tf.constant(json.dumps(meta["policy"], ensure_ascii=False))
    archive.add_endpoint("metadata", lambda: {"genres": genres, "thresholds": thresholds, "policy": policy_json},
                         input_signature=[])
    archive.write_out(str(out), verbose=False)
    (out / METADATA).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return out


def _export_tflite(model, meta: dict, path: Path) -> Path:
    """A LiteRT flatbuffer of the pixel model (decoding is not a LiteRT op)."""
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        path.write_bytes(converter.convert())
    except Exception as exc:  # the converter raises many types; all mean "cannot convert here"
        raise GenreclsError(f"this TensorFlow cannot convert the model to LiteRT: {str(exc)[:200]}") from None
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return path


# ------------------------------------------------------------------ predicting


@dataclass
class Predictor:
    """Probabilities and decisions for encoded images (and texts), from a run folder or an export."""

    predict: callable  # (list[bytes] | None, list[str] | None) -> (probabilities (N, K), above threshold (N, K))
    genres: list
    inputs: tuple = ("image",)  # what the model reads: image, text or both

    @classmethod
    def load(cls, source: str | os.PathLike) -> "Predictor":
        source = Path(source)
        if (source / SAVED_MODEL).exists():
            try:
                serve = tf.saved_model.load(str(source)).signatures
                serve["serving_default"], serve["metadata"]
            except (OSError, ValueError, KeyError, tf.errors.OpError) as exc:
                raise GenreclsError(f"{source} is not a usable genrecls export ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:150]}); export the run again") from None

            wants = set(serve["serving_default"].structured_input_signature[1])  # images, texts
            inputs = tuple(name for name, arg in (("image", "images"), (TEXT_INPUT, "texts")) if arg in wants)

            def from_export(images, texts):
                given = {"images": images, "texts": texts}
                out = serve["serving_default"](**{k: tf.constant(given[k], tf.string) for k in wants})
                return out["probabilities"].numpy(), out["above_threshold"].numpy()

            genres = [g.decode() for g in serve["metadata"]()["genres"].numpy()]
            return cls(from_export, genres, inputs)
        if RunFolder(source).is_run or (source / MARKER).exists():
            folder = RunFolder.open(source)  # names a damaged marker
            policy, meta = run_policy(folder)
            model = folder.load_model()

            inputs = tuple(meta["inputs"])

            def from_run(images, texts):
                x = {}
                if "image" in inputs:
                    x["image"] = tf.stack([decode_image(tf.constant(b), meta["image_size"], meta["resize"])
                                           for b in images])
                if TEXT_INPUT in inputs:
                    x[TEXT_INPUT] = tf.constant(texts, tf.string)
                probabilities = model(x if TEXT_INPUT in inputs else x["image"], training=False).numpy()
                return probabilities, policy.decide(probabilities).astype(bool)

            return cls(from_run, meta["genres"], inputs)
        raise GenreclsError(f"{source} is neither a genrecls run folder nor an export (saved_model.pb)")


def expand_inputs(paths: list) -> list[Path]:
    """Files as given; folders become the image files directly inside them.

    Images in formats the model cannot read (WebP, TIFF, ...) are kept, so each gets its own error
    line instead of vanishing from the output. What a folder holds besides (subfolders, other files) is
    left out, and counted in a warning.
    """
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            entries = list(p.iterdir())
            images = sorted(f for f in entries if f.suffix.lower() in POSTER_EXTENSIONS + OTHER_IMAGE_EXTENSIONS
                            and not f.is_dir())
            if len(images) < len(entries):
                log.warning("left out %d of the %d entries in %s that are not image files (subfolders are not "
                            "searched)", len(entries) - len(images), len(entries), p)
            files += images
        else:
            files.append(p)
    if not files:
        raise GenreclsError("no poster files to predict")
    return files


def texts_for(files: list[Path], texts) -> list[str]:
    """One text per poster file from --text: one string for all, one per file in order, or file name -> text."""
    if texts is None:
        return [""] * len(files)
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, dict):
        return [clean_text(texts.get(str(f), texts.get(f.name, ""))) for f in files]
    texts = [clean_text(t) for t in texts]
    if len(texts) == 1:
        return texts * len(files)
    if len(texts) != len(files):
        raise GenreclsError(f"{len(texts)} texts for {len(files)} posters; give one text for all or one per poster")
    return texts


def predict_files(source, paths: list, top_k: int = 3, batch_size: int = 32, texts=None) -> list[dict]:
    """One result per file (or per text, for a text-only model): top-k genres, genres above threshold,
    or the error that stopped it.

    texts: for a model trained with --text, one string for every poster, a list with one per
    poster (after folders are expanded), or a mapping of file path or name -> text; a poster
    without one gets an empty text. A text-only model predicts each of `texts` and takes no files.
    An unreadable file is reported in its own result; the others are still
    predicted (a batch that fails to decode is retried one file at a time).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise GenreclsError(f"top-k must be a positive integer, not {top_k!r}")
    predictor = Predictor.load(source)
    genres = predictor.genres
    if "image" not in predictor.inputs:
        if paths or not texts or isinstance(texts, dict):
            raise GenreclsError(f"{source} is a text-only model: give texts (--text) and no poster files")
        texts = [texts] if isinstance(texts, str) else list(texts)
        results = [{"text": t, "error": None} for t in texts]
        items = [(None, clean_text(t)) for t in texts]
        readable = list(range(len(results)))
    else:
        files = expand_inputs(paths)
        if texts is not None and TEXT_INPUT not in predictor.inputs:
            raise GenreclsError(f"{source} reads posters only; it was not trained with --text")
        words = texts_for(files, texts)
        results, items, readable = [], [], []
        for path, text in zip(files, words):
            problem = image_problem(path)
            results.append({"file": str(path), "error": problem})
            items.append((path, text))
            if problem is None:
                readable.append(len(results) - 1)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        for i, probs, above in _predict_chunk(predictor, [items[i] for i in chunk]):
            result = results[chunk[i]]
            if probs is None:
                result["error"] = "cannot be decoded"
                continue
            order = np.argsort(-probs)[:top_k]
            result["top"] = [{"genre": genres[j], "probability": float(probs[j])} for j in order]
            result["above_threshold"] = [genres[j] for j in np.flatnonzero(above)]
            result["probabilities"] = dict(zip(genres, map(float, probs)))
    return results


def _predict_chunk(predictor: Predictor, items: list[tuple]):
    """(index, probabilities, above) per (file or None, text); a batch that fails is retried one by one."""
    images = None if "image" not in predictor.inputs else [Path(f).read_bytes() for f, _ in items]
    texts = [t for _, t in items]
    try:
        probabilities, above = predictor.predict(images, texts)
        yield from zip(range(len(items)), probabilities, above)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        for i in range(len(items)):
            try:
                probabilities, above = predictor.predict(images and images[i:i + 1], texts[i:i + 1])
                yield i, probabilities[0], above[0]
            except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
                yield i, None, None


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        name = r["file"] if "file" in r else repr(r["text"][:60])
        if r["error"]:
            lines.append(f"{name}: ERROR {r['error']}")
            continue
        top = ", ".join(f"{t['genre']} {t['probability']:.2f}" for t in r["top"])
        above = ", ".join(r["above_threshold"]) or "none"
        lines.append(f"{name}: {top}  | above threshold: {above}")
    return "\n".join(lines)
