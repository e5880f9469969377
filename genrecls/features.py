"""The feature store: a frozen backbone's pooled features of every poster, computed once, kept on disk.

    DIR/
      genrecls-features.json    the store's marker: genrecls writes and removes files only in a folder carrying it
      <key>/                    one entry per key (below): the features of one table's posters by one backbone
        shard-00000.npy         float32 (rows, dim): FEATURE_SHARD_ROWS posters a shard, in table order
        shard-00000.json        that shard's rows and the ones that failed to decode; written after its .npy
        manifest.json           written once every shard is there: the key's parts, rows, dim, failed rows

The key hashes everything the features depend on: the poster files (path, size and
mtime_ns of each), the backbone's name, its weights (the label imagenet / none / file
and a hash of the weight arrays themselves, so random weights from a seed, a weights
file and a trained shared trunk are all told apart by what they are), the image size,
the resize mode, the shard size and the genrecls, TensorFlow and Keras versions. Runs,
tuner trials and `genrecls features` processes with the same key share one entry.

Every file is written under a temporary name and renamed when complete: a killed
extraction leaves finished shards (the next run keeps them and computes the rest) and
never a manifest, so an entry is read as finished only when all of it is there. A
damaged shard or manifest (truncated, wrong shape, not ours) is named in a warning and
computed again. Features are read through memory maps (np.load mmap_mode="r"), a batch
of rows at a time, so no array of every poster's features is ever held in memory.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from genrecls import __version__, config
from genrecls.errors import GenreclsError
from genrecls.pipeline import make_dataset
from genrecls.progress import progress_bar

log = logging.getLogger(__name__)
STORE_MARKER = "genrecls-features.json"
MANIFEST = "manifest.json"
FORMAT = 1  # the layout above


# ---------------------------------------------------------------- the key


def poster_fingerprint(paths) -> str:
    """A hash of each poster's path, size and mtime_ns.

    Not of the bytes: reading and hashing 150,000 posters (several GB) would take minutes
    on every run, where a stat of each takes about a second. A file replaced by one of the
    same size with its mtime put back (cp -p, rsync -t) goes unnoticed.
    """
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{os.path.abspath(path)}\0{stamp}\n".encode())
    return digest.hexdigest()


def weights_fingerprint(backbone: keras.Model) -> str:
    """A hash of the backbone's weight arrays (trainable or not), in their fixed order.

    Layer names are left out: Keras numbers them per session, the arrays are what counts.
    """
    digest = hashlib.sha256()
    for weight in backbone.weights:
        array = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def key_parts(backbone: keras.Model, paths, cfg, shard_rows: int) -> dict:
    weights = cfg.weights if cfg.weights in (None, "imagenet") else "file"
    return {
        "format": FORMAT, "genrecls": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
        "posters": len(paths), "poster_files": poster_fingerprint(paths),
        "backbone": cfg.backbone, "weights": weights or "none", "weight_arrays": weights_fingerprint(backbone),
        "image_size": cfg.image_size, "resize": cfg.resize, "dim": int(backbone.output_shape[-1]),
        "shard_rows": shard_rows,
    }


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- the store


def _atomic(path: Path, write) -> None:
    """write(file) into a temporary name beside `path`, renamed to it only when complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, doc) -> None:
    _atomic(path, lambda f: f.write(json.dumps(doc, indent=1).encode()))


def _read_json(path: Path):
    """The JSON object in `path`, or None when it is missing or not a JSON object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def open_store(path) -> Path:
    """The store folder, created and marked when new or empty; any other folder is refused."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise GenreclsError(f"feature store {root} is a file, not a folder; choose another --feature-store")
    marker = root / STORE_MARKER
    if marker.exists():
        doc = _read_json(marker)
        if not doc or doc.get("kind") != "feature-store" or "genrecls" not in doc:
            raise GenreclsError(f"{marker} is damaged or genrecls did not write it, so genrecls will not write "
                                "into that folder; choose another --feature-store")
        return root
    if root.is_dir() and any(root.iterdir()):
        raise GenreclsError(f"{root} holds files genrecls did not write (it has no {STORE_MARKER}); choose a new "
                            "or empty folder for --feature-store (genrecls never writes into folders it did not create)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenreclsError(f"cannot create feature store {root}: {exc.strerror}; choose another "
                            "--feature-store") from None
    _write_json(marker, {"kind": "feature-store", "genrecls": __version__,
                         "created": datetime.datetime.now().isoformat(timespec="seconds")})
    return root


class Features:
    """Stored feature rows read through memory maps; `take` reads only the rows asked for.

    rows: the store row of each of this view's rows (None: every store row, in order).
    """

    def __init__(self, shards: list, shard_rows: int, dim: int, decoded: np.ndarray, rows=None):
        self.shards, self.shard_rows, self.dim = shards, shard_rows, dim
        self._all_decoded = decoded
        self.rows = None if rows is None else np.asarray(rows, dtype="int64")
        self.decoded = decoded if rows is None else decoded[self.rows]

    def __len__(self) -> int:
        return len(self.decoded)

    @property
    def shape(self) -> tuple:
        return (len(self), self.dim)

    def select(self, rows) -> "Features":
        """A view of some rows, in the order given."""
        rows = np.asarray(rows, dtype="int64")
        return Features(self.shards, self.shard_rows, self.dim, self._all_decoded,
                        rows if self.rows is None else self.rows[rows])

    def take(self, idx) -> np.ndarray:
        """float32 (len(idx), dim): the features of these rows of the view."""
        rows = np.asarray(idx, dtype="int64")
        if self.rows is not None:
            rows = self.rows[rows]
        out = np.empty((len(rows), self.dim), dtype="float32")
        shard = rows // self.shard_rows
        for j in np.unique(shard):
            here = shard == j
            out[here] = self.shards[j][rows[here] - j * self.shard_rows]
        return out


@dataclass
class Entry:
    """One key's folder in a store: its shards, their checks, the manifest."""

    dir: Path
    parts: dict

    @property
    def key(self) -> str:
        return self.dir.name

    @property
    def rows(self) -> int:
        return self.parts["posters"]

    @property
    def shard_rows(self) -> int:
        return self.parts["shard_rows"]

    @property
    def count(self) -> int:
        return max(1, -(-self.rows // self.shard_rows))

    def span(self, j: int) -> tuple[int, int]:
        return j * self.shard_rows, min(self.rows, (j + 1) * self.shard_rows)

    def file(self, j: int, ext: str) -> Path:
        return self.dir / f"shard-{j:05d}.{ext}"

    def done(self) -> list[int]:
        return [j for j in range(self.count) if self.file(j, "json").exists()]

    def missing(self) -> list[int]:
        done = set(self.done())
        return [j for j in range(self.count) if j not in done]

    def _shard_problem(self, j: int) -> str | None:
        """Why a finished-looking shard cannot be used, or None."""
        doc = _read_json(self.file(j, "json"))
        if doc is None or doc.get("rows") != list(self.span(j)) or not isinstance(doc.get("failed"), list):
            return f"{self.file(j, 'json').name} is damaged"
        try:
            array = np.load(self.file(j, "npy"), mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            return f"{self.file(j, 'npy').name} cannot be read ({str(exc).splitlines()[0][:120]})"
        want = (self.span(j)[1] - self.span(j)[0], self.parts["dim"])
        if array.shape != want or array.dtype != np.float32:
            return f"{self.file(j, 'npy').name} holds {array.dtype} {array.shape}, not float32 {want}"
        return None

    def check(self) -> None:
        """Warn about and remove damaged shards and a manifest that does not match, so they are computed again."""
        manifest = self.dir / MANIFEST
        if manifest.exists():
            doc = _read_json(manifest)
            if doc is None or doc.get("key") != self.key or doc.get("parts") != self.parts:
                log.warning("feature store: %s is damaged or belongs to other settings; checking the shards and "
                            "computing any that are missing", manifest)
                manifest.unlink(missing_ok=True)
        for j in self.done():
            problem = self._shard_problem(j)
            if problem:
                log.warning("feature store: %s in %s; computing that shard again", problem, self.dir)
                for path in (self.dir / MANIFEST, self.file(j, "json"), self.file(j, "npy")):
                    path.unlink(missing_ok=True)

    def compute(self, backbone: keras.Model, paths, cfg, shards: list[int]) -> None:
        """The features of these shards' posters, each shard written as soon as it is complete."""
        total = sum(b - a for a, b in map(self.span, shards))
        progress = progress_bar(total, f"computing {backbone.name} features of {total} posters into {self.dir}",
                                cfg.verbose)
        embed = embedder(backbone)  # traced once for every shard
        for j in shards:
            a, b = self.span(j)
            features, failed = shard_features(backbone, paths[a:b], cfg, embed)
            _atomic(self.file(j, "npy"), lambda f: np.save(f, features))
            _write_json(self.file(j, "json"), {"rows": [a, b], "failed": [a + int(i) for i in failed]})
            progress.add(b - a)

    def finish(self) -> bool:
        """Write the manifest once every shard is there; True when the entry is complete."""
        if self.missing():
            return False
        if not (self.dir / MANIFEST).exists():
            failed = sorted(i for j in range(self.count) for i in _read_json(self.file(j, "json"))["failed"])
            _write_json(self.dir / MANIFEST, {"key": self.key, "parts": self.parts, "shards": self.count,
                                              "failed": failed})
        return True

    def load(self) -> Features:
        """The complete entry through memory maps, with its decoded mask from the manifest."""
        doc = _read_json(self.dir / MANIFEST)
        decoded = np.ones(self.rows, dtype=bool)
        decoded[np.asarray(doc["failed"], dtype="int64")] = False
        shards = [np.load(self.file(j, "npy"), mmap_mode="r") for j in range(self.count)]
        return Features(shards, self.shard_rows, self.parts["dim"], decoded)


def embedder(backbone: keras.Model):
    """The backbone as one traced graph for every batch size: about 4x faster than calling it eagerly
    (EfficientNetB0, 2 cores)."""
    return tf.function(lambda images: backbone(images, training=False),
                       input_signature=[tf.TensorSpec((None, *backbone.input_shape[1:]), tf.float32)])


def shard_features(backbone: keras.Model, paths, cfg, embed=None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of some posters, one pass: (features, positions of the posters that failed to decode).

    Indices travel with the images, so a poster tf.data skips cannot shift the rows after it.
    """
    n = len(paths)
    features = np.zeros((n, backbone.output_shape[-1]), dtype="float32")
    decoded = np.zeros(n, dtype=bool)
    ds = make_dataset(paths, np.arange(n), image_size=cfg.image_size, batch_size=cfg.batch_size,
                      resize=cfg.resize, check_files=False)
    embed = embed or embedder(backbone)
    for images, idx in ds:
        idx = idx.numpy()
        features[idx] = embed(images).numpy()
        decoded[idx] = True
    return features, np.flatnonzero(~decoded)


def shard_range(count: int, shard: tuple[int, int]) -> list[int]:
    """The store shards that process I of N computes: a contiguous block of about count / N."""
    i, n = shard
    return list(range(i * count // n, (i + 1) * count // n))


def _say(cfg, message: str) -> None:
    if cfg.verbose != 0:
        print(message, flush=True)


def update_entry(backbone: keras.Model, paths, cfg, store, shard: tuple[int, int] | None = None,
                 shard_rows: int | None = None) -> tuple[Entry, list[int]]:
    """Compute what the store lacks of the backbone's features of `paths` (shard: (I, N), only shard I of N).

    Returns the entry and the shards computed; the entry's manifest is written once it is complete.
    """
    paths = np.asarray([os.fspath(p) for p in paths], dtype=object)
    root = open_store(store)
    parts = key_parts(backbone, paths, cfg, shard_rows or config.FEATURE_SHARD_ROWS)
    entry = Entry(root / key_of(parts), parts)
    entry.dir.mkdir(exist_ok=True)
    entry.check()
    missing = entry.missing()
    todo = missing if shard is None else [j for j in shard_range(entry.count, shard) if j in missing]
    if not missing:
        _say(cfg, f"reusing the {cfg.backbone} features of {len(paths)} posters from {entry.dir}")
    elif shard is None and len(missing) < entry.count:
        _say(cfg, f"feature store entry {entry.dir} lacks shard(s) {', '.join(map(str, missing))} of "
                  f"{entry.count}; computing them")
    if todo:
        entry.compute(backbone, paths, cfg, todo)
    entry.finish()
    return entry, todo


def stored_features(backbone: keras.Model, paths, cfg, store, shard_rows: int | None = None) -> Features:
    """The backbone's features of `paths` (one row each, in order) from the store, computing what is missing."""
    entry, _ = update_entry(backbone, paths, cfg, store, shard_rows=shard_rows)
    return entry.load()
