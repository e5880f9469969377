"""Benchmarks: is the pipeline fast and lean enough, measured as ratios.

Absolute speeds say more about the machine than about the code, so every
figure here is a ratio against a baseline run in the same process (or, for
memory, in twin subprocesses): the tf.data pipeline against a plain PIL loop
and against bare JPEG decoding, training fed by the pipeline against training
fed a constant batch, OvA members fitted at once on cached features against
one fit each on cached features and through the backbone, 10x the posters
against 1x, and 10x the rows against 1x.

    genrecls bench --scale 0.1 --out /tmp/bench [--data DATA] [--sections a,b]

writes out/results.json and out/results.md. `scale` shortens or lengthens
every section (poster counts, steps, epochs, row counts); scale 1 takes
under 10 minutes on 2 cores.

results.json:

    machine   cpu_count, platform, python, tensorflow, keras, numpy, pillow
    date      ISO time the run started
    data      dataset folder used; posters (its size), scale, seed, seconds
    sections  name -> {
        measurements  raw numbers (seconds, counts, sizes, per-genre F1 ...)
        checks        [{name, measured, baseline, ratio, target, met}, ...]
                      (ratio is the number compared with target)
        met           all checks met
        seconds       wall time of the section
        note          (ova_cost only) what to read beside the checks
    }
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genrecls.errors import GenreclsError
from genrecls.runs import claim_outputs

if TYPE_CHECKING:
    from genrecls.datasets import PosterTable

ML1M = Path("../shared/datasets/ml1m")  # relative to where the command runs: the repository root
FULL_SET = 3256  # posters in ml1m: what scale 1 means
SECTION_NAMES = ("input_pipeline", "training_throughput", "ova_cost", "memory", "scaling", "letterboxd_scale")

# (backbone, image size, batch): EfficientNet's batch is small because one
# trainable step at 224 px takes seconds on two cores.
THROUGHPUT_RUNS = (("simple", 64, 128), ("efficientnetb0", 224, 16))
OVA_TOP_K = 6
# Report 002's way is an EfficientNet per member; 96 px keeps the slow path inside the budget.
OVA_RUN = ("efficientnetb0", 96)
OVA_POSTERS = 1000  # at scale 1
PIPELINE_PASSES = 3  # input_pipeline times each way this many times and keeps the fastest
MEMORY_POSTERS = 1000  # the 1x count at scale 1; 10x then streams 10,000
SCALING_ROWS = 10_000  # the smallest size at scale 1; the others are 10x and 100x it


def _say(msg: str) -> None:
    print(msg, flush=True)


def _check(name: str, measured: str, baseline: str, ratio: float, target: str, met: bool) -> dict:
    return {"name": name, "measured": measured, "baseline": baseline, "ratio": round(float(ratio), 4),
            "target": target, "met": bool(met)}


@dataclass
class Context:
    """What every section shares: the table, a fixed poster order, and the knobs."""

    table: PosterTable
    scale: float
    seed: int
    work: Path

    def __post_init__(self):
        self.order = np.random.default_rng(self.seed).permutation(len(self.table))

    def rows(self, n: int) -> np.ndarray:
        """n row indices in a fixed random order, cycling when n exceeds the table."""
        return np.resize(self.order, n)

    def paths(self, n: int) -> list[str]:
        return self.table.frame["path"].to_numpy()[self.rows(n)].tolist()


# ---------------------------------------------------------------- input pipeline


def _pil_batches(paths, size: int = 224, batch: int = 128) -> int:
    """The same work as the pipeline, by hand: decode, pad-resize, float32, stack."""
    from PIL import Image

    done, pending = 0, []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            canvas = np.zeros((size, size, 3), np.float32)
            top, left = (size - nh) // 2, (size - nw) // 2
            canvas[top:top + nh, left:left + nw] = np.asarray(im, dtype=np.float32)
        pending.append(canvas)
        if len(pending) == batch:
            done += len(np.stack(pending))
            pending = []
    if pending:
        done += len(np.stack(pending))
    return done


def _decode_only(paths) -> int:
    """Read and decode alone, in parallel: the ceiling for any image pipeline.

    Each image is reduced to its size and batched, so Python touches 1 in 128
    elements and its per-element overhead does not lower the ceiling.
    """
    import tensorflow as tf

    def decode(path):
        return tf.size(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))

    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return sum(int(b.shape[0]) for b in ds.batch(128).prefetch(tf.data.AUTOTUNE))


def _pipeline(paths, check_files: bool = False) -> int:
    """make_dataset as a run reads posters: their headers were checked when the table was loaded."""
    from genrecls.pipeline import make_dataset

    ds = make_dataset(paths, image_size=224, batch_size=128, check_files=check_files)
    return sum(int(images.shape[0]) for images in ds)


def _checked_pipeline(paths) -> int:
    """make_dataset called on bare paths: every file's header is checked first."""
    return _pipeline(paths, check_files=True)


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def bench_input_pipeline(ctx: Context) -> dict:
    import tensorflow as tf

    n = min(len(ctx.table), max(32, int(FULL_SET * ctx.scale)))
    paths = ctx.paths(n)
    # One cold pass each, no warm-up pass: but the same warm OS file cache for
    # all three, and tf.data's own one-time start-up paid outside the timings.
    for p in paths:
        Path(p).read_bytes()
    list(tf.data.Dataset.range(4).map(lambda x: x + 1, num_parallel_calls=tf.data.AUTOTUNE))
    _pipeline(paths[:8])  # make_dataset's first call converts its map functions (autograph): seconds

    rates, counts = {}, {}
    for name, fn in (("decode_only", _decode_only), ("pipeline", _pipeline), ("pipeline_checking_files", _checked_pipeline),
                     ("pil_numpy", _pil_batches)):
        # the fastest of a few passes, as timeit does: a pass of 1 to 2 s moves by a third with the machine's load
        seconds, counts[name] = min((_timed(fn, paths) for _ in range(PIPELINE_PASSES)), key=lambda t: t[0])
        rates[name] = counts[name] / seconds
        _say(f"  {name:<12} {counts[name]} posters in {seconds:.2f} s = {rates[name]:.0f} posters/s "
             f"(fastest of {PIPELINE_PASSES} passes)")
    vs_pil = rates["pipeline"] / rates["pil_numpy"]
    vs_decode = rates["pipeline"] / rates["decode_only"]
    return {
        "measurements": {"posters": n, "image_size": 224, "batch_size": 128,
                         "posters_per_second": {k: round(v, 2) for k, v in rates.items()},
                         "posters_done": counts},
        "checks": [
            _check("make_dataset vs PIL + NumPy loop", f"{rates['pipeline']:.0f} posters/s",
                   f"{rates['pil_numpy']:.0f} posters/s (PIL loop)", vs_pil, ">= 2.0", vs_pil >= 2.0),
            _check("make_dataset vs decode-only ceiling", f"{rates['pipeline']:.0f} posters/s",
                   f"{rates['decode_only']:.0f} posters/s (read+decode_jpeg)", vs_decode, ">= 0.8",
                   vs_decode >= 0.8),
        ],
        "note": (f"pipeline as a run reads posters (headers checked when the table loaded); called on bare paths "
                 f"make_dataset first checks every file's header: {rates['pipeline_checking_files']:.0f} posters/s"),
    }


# ----------------------------------------------------------- training throughput


def _mean_step_seconds(model, ds, skip: int, steps: int) -> float:
    """Mean wall time per training step, input wait included, after `skip` >= 1 steps."""
    import keras

    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    model.fit(ds, epochs=1, steps_per_epoch=skip + steps, callbacks=[Clock()], shuffle=False, verbose=0)
    return float(np.mean(np.diff(ends[skip - 1:])))


def bench_training_throughput(ctx: Context) -> dict:
    import keras
    import tensorflow as tf

    from genrecls.config import TrainConfig
    from genrecls.labels import GenreVocabulary
    from genrecls.models import build_model, compile_model
    from genrecls.modes import MODES
    from genrecls.pipeline import make_dataset

    steps = max(2, round(3 * ctx.scale))
    genre_lists = list(ctx.table.frame["genres"])
    Y = GenreVocabulary.fit(genre_lists).encode(genre_lists)
    runs, checks = {}, []
    for name, size, batch in THROUGHPUT_RUNS:
        # Exactly one pass of full batches per fit: the cache then serves every step.
        rows = ctx.rows(batch * (1 + steps))
        paths = ctx.table.frame["path"].to_numpy()[rows].tolist()
        ds = make_dataset(paths, Y[rows], image_size=size, batch_size=batch, cache="memory",
                          shuffle=True, seed=ctx.seed)
        fill, _ = _timed(list, ds)  # one pass fills the cache
        x, y = next(iter(ds))
        constant = tf.data.Dataset.from_tensors((x, y)).repeat()

        keras.utils.set_random_seed(ctx.seed)
        cfg = TrainConfig(data=str(ctx.table.root), mode="multilabel", backbone=name, weights=None, image_size=size,
                          fine_tune_last=-1, head=(256,))
        built = build_model(cfg, Y.shape[1], "sigmoid")
        model, mode = built.full, built.trainable
        compile_model(model, MODES["multilabel"], cfg)
        trace, _ = _timed(model.fit, constant, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
        t_pipe = _mean_step_seconds(model, ds.repeat(), 1, steps)
        t_const = _mean_step_seconds(model, constant, 1, steps)
        wait = max(0.0, 1 - t_const / t_pipe)
        label = f"{name} @ {size} px"
        runs[name] = {"image_size": size, "batch_size": batch, "steps": steps, "trainable": mode,
                      "cache_fill_seconds": round(fill, 3), "first_step_seconds": round(trace, 3),
                      "step_seconds_pipeline": round(t_pipe, 4), "step_seconds_constant": round(t_const, 4),
                      "posters_per_second": round(batch / t_pipe, 2),
                      "posters_per_second_constant": round(batch / t_const, 2),
                      "input_wait_share": round(wait, 4)}
        _say(f"  {label}: {batch / t_pipe:.1f} posters/s from the cached pipeline, "
             f"{batch / t_const:.1f} from a constant batch; input wait {wait:.1%}")
        checks.append(_check(f"{label} input wait share (1 - t_const/t_pipeline)",
                             f"{t_pipe:.3f} s/step ({batch / t_pipe:.1f} posters/s, cached pipeline)",
                             f"{t_const:.3f} s/step (constant batch)", wait, "< 0.10", wait < 0.10))
        del model, built
        keras.backend.clear_session()
    return {"measurements": {"backbones": runs}, "checks": checks}


# ----------------------------------------------------------------------- OvA cost


def _ova_top_k(cfg_kwargs: dict, table, want: int) -> int:
    """The most genres (<= want) this table can split with every genre in every split."""
    from genrecls.config import TrainConfig
    from genrecls.preparation import prepare_data

    for k in range(want, 0, -1):
        try:
            prepare_data(TrainConfig(**cfg_kwargs, top_k=k), table)
            return k
        except GenreclsError:
            continue
    raise GenreclsError("the data is too small for any OvA split; use a larger --scale or dataset")


# (label, train on cached features, all members in one fit): the same posters and members three ways
OVA_WAYS = (("one_fit", True, "one"), ("member_by_member", True, "members"), ("through_backbone", False, "members"))


def _max_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over the genres where both are numbers."""
    return max((abs(a[g] - b[g]) for g in a if a[g] is not None and b[g] is not None), default=0.0)


def _timed_members():
    """A Trainer that also times its OvA members' fitting (`member_seconds`)."""
    from genrecls.training import Trainer

    class TimedMembers(Trainer):
        def _train_ova(self, *args):
            self.member_seconds, out = _timed(super()._train_ova, *args)
            return out

    return TimedMembers


def _warm_up_keras() -> None:
    """A process's first Keras fit pays one-time start-up (seconds); paid here, outside the timings,
    so the first way timed is not charged for it (as the pipeline section warms tf.data)."""
    import keras

    x, y = np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)
    model.predict_on_batch(x)
    keras.backend.clear_session()


def bench_ova_cost(ctx: Context) -> dict:
    from genrecls.config import TrainConfig
    from genrecls.datasets import PosterTable
    from genrecls.report import evaluate_run

    timed_trainer = _timed_members()
    n = min(len(ctx.table), max(300, int(OVA_POSTERS * ctx.scale)))
    frame = ctx.table.frame.iloc[np.sort(ctx.rows(n))].reset_index(drop=True)
    table = PosterTable(frame, ctx.table.root, ctx.table.format, ctx.table.dropped)
    epochs = max(1, round(2 * ctx.scale))
    backbone, size = OVA_RUN
    common = dict(data=str(ctx.table.root), mode="ova", backbone=backbone, weights=None, image_size=size,
                  fine_tune_last=0, epochs=epochs, seed=ctx.seed, verbose=0)
    top_k = _ova_top_k(common, table, OVA_TOP_K)
    _warm_up_keras()
    seconds, member_seconds, reports = {}, {}, {}
    for label, cached, ova_fit in OVA_WAYS:
        cfg = TrainConfig(**common, top_k=top_k, cache_features=cached, ova_fit=ova_fit)
        with contextlib.redirect_stdout(io.StringIO()):  # training and evaluation print progress and tables
            # training alone is timed: data, features (cached ways), fitting, calibration, saving
            trainer = timed_trainer(cfg, ctx.work / f"ova_{label}")
            seconds[label], _ = _timed(trainer.run, table)
            member_seconds[label] = trainer.member_seconds
            reports[label] = evaluate_run(ctx.work / f"ova_{label}", table=table, plots=False)
        _say(f"  {label:<16} {top_k} members, {epochs} epoch(s): {seconds[label]:.1f} s "
             f"({member_seconds[label]:.1f} s fitting the members)")
    genres = list(reports["one_fit"]["genres"])
    f1 = {label: {g: round(r["genres"][g]["f1"], 4) for g in genres} for label, r in reports.items()}
    # F1 at 0.5 can be 0 for both after a short run on a random frozen backbone;
    # ROC AUC is threshold-free, so it still shows whether two runs agree.
    auc = {label: {g: r["genres"][g]["roc_auc"] for g in genres} for label, r in reports.items()}
    pairs = {"one_fit_vs_member_by_member": ("one_fit", "member_by_member"),
             "cached_vs_through_backbone": ("member_by_member", "through_backbone")}
    f1_diff = {name: round(_max_difference(f1[a], f1[b]), 4) for name, (a, b) in pairs.items()}
    auc_diff = {name: round(_max_difference(auc[a], auc[b]), 4) for name, (a, b) in pairs.items()}
    vs_backbone = seconds["through_backbone"] / seconds["one_fit"]
    # the same features either way: the members' fitting is what differs (data, features and saving do not)
    vs_loop = member_seconds["member_by_member"] / member_seconds["one_fit"]
    return {
        "measurements": {"posters": n, "members": top_k, "epochs": epochs, "backbone": backbone,
                         "image_size": size, "seconds": {k: round(v, 2) for k, v in seconds.items()},
                         "member_seconds": {k: round(v, 2) for k, v in member_seconds.items()},
                         "f1": f1, "max_abs_f1_difference": f1_diff,
                         "roc_auc": auc, "max_abs_roc_auc_difference": auc_diff},
        "checks": [
            _check("OvA in one fit on cached features vs through the backbone", f"{seconds['one_fit']:.1f} s (one fit)",
                   f"{seconds['through_backbone']:.1f} s (through backbone)", vs_backbone, ">= 10", vs_backbone >= 10),
            _check("OvA members' fitting: one fit vs member by member, both on cached features",
                   f"{member_seconds['one_fit']:.1f} s (one fit)",
                   f"{member_seconds['member_by_member']:.1f} s (member by member)", vs_loop, ">= 3", vs_loop >= 3),
        ],
        "note": (f"per-genre test F1 / ROC AUC, max |difference| over {top_k} genres: one fit vs member by member "
                 f"{f1_diff['one_fit_vs_member_by_member']:.3f} / {auc_diff['one_fit_vs_member_by_member']:.3f} "
                 f"(each member trains on its own batches either way, the same model up to float rounding; F1 at a "
                 f"threshold can still flip on a genre whose scores sit at it after so short a fit); cached vs through "
                 f"the backbone {f1_diff['cached_vs_through_backbone']:.3f} / "
                 f"{auc_diff['cached_vs_through_backbone']:.3f} (equal within noise)"),
    }


# ------------------------------------------------------------------------ memory

_MEMORY_CHILD = r"""
import json, resource, sys, time
from genrecls.pipeline import make_dataset

def peak_mb():
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # bytes on macOS

paths = json.load(open(sys.argv[1])) * int(sys.argv[2])
before = peak_mb()
start, n = time.perf_counter(), 0
for images in make_dataset(paths, image_size=224, batch_size=128):
    n += int(images.shape[0])
print(json.dumps({"posters": n, "seconds": time.perf_counter() - start,
                  "peak_rss_mb_after_import": before, "peak_rss_mb": peak_mb()}))
"""


# The feature store's cost as the posters grow: extraction into a fresh store, then one epoch of a
# head reading the features back through the store's memory maps (as training and tuning do).
_STORE_CHILD = r"""
import json, resource, sys, time
import keras, numpy as np
from genrecls.backbones import build_backbone
from genrecls.config import TrainConfig
from genrecls.features import stored_features
from genrecls.heads import build_head
from genrecls.preparation import Inputs

def peak_mb():
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024

paths = json.load(open(sys.argv[1])) * int(sys.argv[2])
cfg = TrainConfig(data=sys.argv[3], backbone="simple", weights=None, image_size=64, batch_size=128,
                  fine_tune_last=0, verbose=0)
before = peak_mb()
start = time.perf_counter()
keras.utils.set_random_seed(0)
backbone = build_backbone("simple", 64, None)
features = stored_features(backbone, paths, cfg, sys.argv[3])
rows = np.arange(len(paths))
head = build_head(features.dim, 1, "sigmoid", (64,), 0.0)
head.compile("adam", "binary_crossentropy")
head.fit(Inputs(cfg, np.array(paths), features).dataset(rows, (rows % 2)[:, None].astype("float32"), True),
         epochs=1, verbose=0)
print(json.dumps({"posters": len(paths), "seconds": time.perf_counter() - start,
                  "peak_rss_mb_after_import": before, "peak_rss_mb": peak_mb()}))
"""


# Linux hands a process's peak RSS on across fork + exec, so a child started
# straight from this (large) process would report our peak as its own. A
# small launcher in between starts the measured child with a clean slate.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _in_child(code: str, *args: str) -> dict:
    """Run Python code in a fresh interpreter, so its peak RSS is its own; returns its last line's JSON."""
    package_root = str(Path(__file__).resolve().parents[1])  # where genrecls is importable from, installed or not
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _LAUNCHER, sys.executable, "-c", code, *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=package_root)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stream_in_child(path_file: Path, repeat: int, child: str = _MEMORY_CHILD, *extra: str) -> dict:
    """Run a child script over the posters in a fresh interpreter, so its peak RSS is its own."""
    return _in_child(child, str(path_file), str(repeat), *extra)


def bench_memory(ctx: Context) -> dict:
    n = max(256, int(MEMORY_POSTERS * ctx.scale))
    path_file = ctx.work / "memory_paths.json"
    path_file.write_text(json.dumps(ctx.paths(n)))
    runs, store = {}, {}
    for label, repeat in (("1x", 1), ("10x", 10)):
        runs[label] = _stream_in_child(path_file, repeat)
        store[label] = _stream_in_child(path_file, repeat, _STORE_CHILD, str(ctx.work / f"store_{label}"))
        for what, r in (("stream", runs[label]), ("store", store[label])):
            _say(f"  {label:<4} {what:<6} {r['posters']} posters in {r['seconds']:.1f} s, peak RSS "
                 f"{r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb_after_import']:.0f} MB after import)")
    ratio = runs["10x"]["peak_rss_mb"] / runs["1x"]["peak_rss_mb"]
    store_ratio = store["10x"]["peak_rss_mb"] / store["1x"]["peak_rss_mb"]
    rounded = {k: {f: round(v, 2) for f, v in r.items()} for k, r in runs.items()}
    return {
        "measurements": {"posters_1x": n, "image_size": 224, "batch_size": 128, "runs": rounded,
                         "feature_store": {"backbone": "simple", "image_size": 64, "batch_size": 128,
                                           "work": "extraction into a fresh store + one epoch of a head on it",
                                           "runs": {k: {f: round(v, 2) for f, v in r.items()}
                                                    for k, r in store.items()}}},
        "checks": [_check("peak RSS streaming 10x vs 1x the posters",
                          f"{runs['10x']['peak_rss_mb']:.0f} MB ({runs['10x']['posters']} posters)",
                          f"{runs['1x']['peak_rss_mb']:.0f} MB ({runs['1x']['posters']} posters)",
                          ratio, "< 1.2", ratio < 1.2),
                   _check("peak RSS feature store (extract + 1 epoch) 10x vs 1x the posters",
                          f"{store['10x']['peak_rss_mb']:.0f} MB ({store['10x']['posters']} posters)",
                          f"{store['1x']['peak_rss_mb']:.0f} MB ({store['1x']['posters']} posters)",
                          store_ratio, "<= 1.5", store_ratio <= 1.5)],
    }


# ----------------------------------------------------------------------- scaling


def synthetic_genre_lists(n: int, seed: int = 0, k: int = 19) -> list[list[str]]:
    """n movies with 1-3 genres each, genre popularity falling off like Zipf (as in ml1m)."""
    rng = np.random.default_rng(seed)
    names = [f"Genre{i:02d}" for i in range(k)]
    popularity = 1.0 / np.arange(1, k + 1)
    popularity /= popularity.sum()
    sizes = rng.choice([1, 2, 3], size=n, p=[0.5, 0.35, 0.15])
    drawn = rng.choice(k, size=(n, 3), p=popularity)
    return [list(dict.fromkeys(names[j] for j in row[:s])) for row, s in zip(drawn.tolist(), sizes)]


def _label_work(genre_lists) -> None:
    from genrecls.labels import GenreVocabulary, collapse, stratified_split

    Y = GenreVocabulary.fit(genre_lists).encode(genre_lists)
    stratified_split(collapse(Y, "least"))


def _timed_without_gc(fn, *args) -> float:
    """Seconds for fn(*args) with the cyclic GC paused, as timeit does: in a process that
    holds TensorFlow, each collection scans a large heap, which would bill the label code
    for memory it does not own."""
    gc.collect()
    gc.disable()
    try:
        return _timed(fn, *args)[0]
    finally:
        gc.enable()


def bench_scaling(ctx: Context) -> dict:
    first = max(1_000, int(SCALING_ROWS * ctx.scale))
    sizes = [first, first * 10, first * 100]  # always a decade apart, so exponents are defined
    seconds = {}
    for n in sizes:
        lists = synthetic_genre_lists(n, ctx.seed)
        repeats = 3 if n <= 100_000 else 2  # best of several: the first pass pays one-off costs
        seconds[n] = min(_timed_without_gc(_label_work, lists) for _ in range(repeats))
        _say(f"  {n:>9,} rows: {seconds[n]:.3f} s")
    checks = []
    for a, b in itertools.pairwise(sizes):
        exponent = math.log(seconds[b] / seconds[a]) / math.log(b / a)
        checks.append(_check(f"growth exponent {a:,} -> {b:,} rows", f"{seconds[b]:.3f} s at {b:,} rows",
                             f"{seconds[a]:.3f} s at {a:,} rows", exponent, "<= 1.2", exponent <= 1.2))
    return {
        "measurements": {"genres": 19, "seconds": {str(n): round(t, 4) for n, t in seconds.items()},
                         "work": "GenreVocabulary.fit + encode, collapse, stratified_split"},
        "checks": checks,
    }


# ------------------------------------------------------------- Letterboxd scale

LETTERBOXD_MOVIES = 557_539  # report 002's Letterboxd table
LETTERBOXD_POSTERS = (15_000, 150_000)  # at scale 1: the posters of the small and the large run
SCALE_MIN_COUNT = 20
SCALE_FLOOR = 300  # the fewest posters of the small run, whatever the scale
SCALE_STAGES = ("summary", "labels", "split", "ova_sampling", "features", "ova_fit")


def synthetic_letterboxd(root: Path, movies: int, posters: int, seed: int = 0) -> Path:
    """A Letterboxd-format folder: genres.csv in long form (one row per movie and genre) for
    `movies` movies with Zipf-like genres, and tiny generated posters for the first `posters`.

    A few hundred distinct JPEGs are encoded once and written under every poster's name, so
    150,000 posters take seconds; the pipeline still decodes each file.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lists = synthetic_genre_lists(movies, seed)
    ids = [f"lb{i:07d}" for i in range(movies)]
    with open(root / "genres.csv", "w", encoding="utf-8") as f:
        f.write("id,genre\n")
        f.writelines(f"{movie_id},{genre}\n" for movie_id, genres in zip(ids, lists) for genre in genres)
    templates = []
    for _ in range(256):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, size=(6, 4, 3), dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
        templates.append(buf.getvalue())
    folder = root / "posters"
    folder.mkdir(exist_ok=True)
    for i, movie_id in enumerate(ids[:posters]):
        (folder / f"{movie_id}.jpg").write_bytes(templates[i % len(templates)])
    return root


def _scale_stages(root: str, store: str, image_size: int = 32) -> None:
    """The child process of bench_letterboxd_scale: each stage's seconds and the peak RSS after it.

    The `simple` backbone, frozen with its random weights, at `image_size` px: the stages' cost at this
    size is the package's own (tables, labels, sampling, the store, one fit), not a large CNN's.
    """
    import keras

    from genrecls.config import TrainConfig
    from genrecls.datasets import load_dataset, summarize
    from genrecls.features import stored_features
    from genrecls.labels import GenreVocabulary, collapse, keep_labelled, split_posters
    from genrecls.models import new_backbone
    from genrecls.training import member_sets, train

    out, start = {}, time.perf_counter()

    def done(stage: str) -> None:
        nonlocal start
        out[stage] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(peak_mb(), 1)}
        start = time.perf_counter()

    out["import"] = {"peak_rss_mb": round(peak_mb(), 1)}
    table = load_dataset(root, "letterboxd", verbose=0)
    summary = summarize(table)
    done("summary")
    lists = list(table.frame["genres"])
    vocab = GenreVocabulary.fit(lists, min_count=SCALE_MIN_COUNT)  # the small runs' rarest genres cannot split
    Y = vocab.encode(lists)
    Y = Y[keep_labelled(Y)]
    strata = collapse(Y, "least")
    done("labels")
    split = split_posters(Y, vocab.names, seed=0, strata=strata)
    done("split")
    cfg = TrainConfig(data=root, format="letterboxd", mode="ova", backbone="simple", weights=None,
                      image_size=image_size, min_count=SCALE_MIN_COUNT, fine_tune_last=0, feature_store=store, ova_fit="one", epochs=1,
                      batch_size=256, verbose=0)
    members = [member_sets(cfg, Y, split.train, split.val, j)[0].size for j in range(Y.shape[1])]
    done("ova_sampling")
    keras.utils.set_random_seed(cfg.seed)
    backbone, _ = new_backbone(cfg)
    features = stored_features(backbone, table.frame["path"].to_numpy(), cfg, store)
    done("features")
    # train() on the same table: labels and split again (seconds, above), the stored features, one fit
    train(cfg, Path(store).parent / "ova_run", table=table, evaluate=False)
    done("ova_fit")
    out["counts"] = {"records": summary["records"], "posters": summary["posters"], "genres": len(vocab.names),
                     "train": int(len(split.train)), "member_rows": int(sum(members)),
                     "feature_dim": int(features.dim)}
    print(json.dumps(out))


def bench_letterboxd_scale(ctx: Context) -> dict:
    """Report 002's size: a synthetic 557,539-movie Letterboxd table with 150,000 posters against a tenth."""
    runs = {}
    small = max(SCALE_FLOOR, int(LETTERBOXD_POSTERS[0] * ctx.scale))
    for posters in (small, small * LETTERBOXD_POSTERS[1] // LETTERBOXD_POSTERS[0]):
        movies = round(LETTERBOXD_MOVIES * posters / LETTERBOXD_POSTERS[-1])
        root = ctx.work / f"letterboxd_{posters}"
        seconds, _ = _timed(synthetic_letterboxd, root, movies, posters, ctx.seed)
        _say(f"  generated {movies:,} movies and {posters:,} posters in {seconds:.0f} s")
        code = f"from genrecls.bench import _scale_stages; _scale_stages({str(root)!r}, {str(root / 'store')!r})"
        runs[posters] = _in_child(code)
        stages = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in runs[posters].items() if "seconds" in v)
        _say(f"  {posters:,} posters: {stages}; peak RSS {runs[posters]['ova_fit']['peak_rss_mb']:.0f} MB")
    small, large = (runs[n] for n in sorted(runs))
    ratio = large["ova_fit"]["peak_rss_mb"] / small["ova_fit"]["peak_rss_mb"]
    n_small, n_large = sorted(runs)
    return {
        "measurements": {"runs": {str(n): r for n, r in runs.items()}, "stages": list(SCALE_STAGES),
                         "backbone": "simple (random, frozen) at 32 px", "ova": "one fit, 1 epoch"},
        "checks": [_check(f"peak RSS, {n_large:,} vs {n_small:,} posters (every stage)",
                          f"{large['ova_fit']['peak_rss_mb']:.0f} MB", f"{small['ova_fit']['peak_rss_mb']:.0f} MB",
                          ratio, "<= 1.5", ratio <= 1.5)],
        "note": "seconds per stage at {0:,} / {1:,} posters: ".format(n_small, n_large) + ", ".join(
            f"{k} {small[k]['seconds']:.1f} / {large[k]['seconds']:.1f}" for k in SCALE_STAGES),
    }


def peak_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # bytes on macOS


SECTIONS = {
    "input_pipeline": bench_input_pipeline,
    "training_throughput": bench_training_throughput,
    "ova_cost": bench_ova_cost,
    "memory": bench_memory,
    "scaling": bench_scaling,
    "letterboxd_scale": bench_letterboxd_scale,
}


# ------------------------------------------------------------------------ runner


def machine() -> dict:
    import keras
    import PIL
    import tensorflow as tf

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__}


def _choose_sections(sections) -> list[str]:
    if sections is None:
        return list(SECTION_NAMES)
    if isinstance(sections, str):
        sections = [sections]
    chosen = [s.strip() for item in sections for s in str(item).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise GenreclsError(f"unknown benchmark section(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                            f"choose from {', '.join(SECTION_NAMES)}")
    return [s for s in SECTION_NAMES if s in chosen]


MD_HEAD = "# genrecls benchmarks"  # how results.md shows genrecls wrote it (and may replace it)


def _write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (out / "results.md").write_text(format_markdown(results))


def run_benchmarks(data=None, out="benchmarks", scale: float = 1.0, sections=None, seed: int = 0) -> dict:
    """Run the chosen sections, write out/results.json and out/results.md, return the results.

    data: a dataset folder; by default ../shared/datasets/ml1m (relative to
    the working directory), else a generated demo set. The files are rewritten after
    each section, so a run cut short still leaves what it measured.
    """
    from genrecls.datasets import load_dataset
    from genrecls.demo import make_demo_dataset

    if not scale > 0:
        raise GenreclsError(f"scale must be positive, not {scale}")
    out = Path(out)
    claim_outputs(out, "results.json", "sections", "results.md", MD_HEAD)
    chosen = _choose_sections(sections)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genrecls-bench-") as tmp:
        work = Path(tmp)
        if data is None:
            if (ML1M / "movies.dat").is_file():
                data = ML1M
            else:
                per_genre = max(10, min(500, int(FULL_SET / 7 * scale)))
                _say(f"no dataset at {ML1M}: generating a demo set ({per_genre} posters per genre)")
                data = make_demo_dataset(work / "demo", per_genre=per_genre, seed=seed)
        table = load_dataset(data)
        results = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "data": str(Path(data).resolve()), "posters": len(table), "scale": scale, "seed": seed,
                   "sections": {}}
        _say(f"benchmarking {len(chosen)} section(s) on {len(table)} posters from {data} (scale {scale})")
        ctx = Context(table, scale, seed, work)
        for i, name in enumerate(chosen, 1):
            _say(f"[{i}/{len(chosen)}] {name}")
            seconds, section = _timed(SECTIONS[name], ctx)
            section["met"] = all(c["met"] for c in section["checks"])
            section["seconds"] = round(seconds, 1)
            results["sections"][name] = section
            results["seconds"] = round(time.perf_counter() - started, 1)
            _write(results, out)
            ratios = ", ".join(f"{c['ratio']:.3g} ({c['target']})" for c in section["checks"])
            _say(f"  -> {ratios}: {'met' if section['met'] else 'NOT met'} ({seconds:.0f} s)")
    _say(f"wrote {out / 'results.json'} and {out / 'results.md'} in {results['seconds']:.0f} s")
    return results


def format_markdown(results: dict) -> str:
    """A short table: one row per check, then notes."""
    m = results.get("machine", {})
    lines = [
        MD_HEAD,
        "",
        (f"{results.get('date', '')}, {m.get('cpu_count')} CPUs, {m.get('platform', '')}, "
         f"TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}; data {results.get('data')} "
         f"({results.get('posters')} posters), scale {results.get('scale')}"),
        "",
        "| section | measured | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for name, section in results.get("sections", {}).items():
        for c in section["checks"]:
            lines.append(f"| {name}: {c['name']} | {c['measured']} | {c['baseline']} | {c['ratio']:.3g} "
                         f"| {c['target']} | {'yes' if c['met'] else 'no'} |")
        if section.get("note"):
            notes.append(f"- {name}: {section['note']}")
    return "\n".join(lines + ([""] + notes if notes else []) + [""])

