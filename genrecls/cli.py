"""The `genrecls` command: a thin shell over the Python API.

Each subcommand parses its arguments, calls the API and prints. Modules that
import TensorFlow are imported inside the handlers, so `--help` and the
data commands start fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from genrecls.errors import GenreclsError


class Parser(argparse.ArgumentParser):
    """argparse with genrecls's error form: one line `genrecls: error: ...`, exit status 1."""

    def error(self, message):
        command = self.prog.removeprefix("genrecls").strip()
        raise GenreclsError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


def _add_data_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Options every command that reads a dataset folder accepts."""
    p.add_argument("data", nargs=None if defaults else "?",
                   help="dataset folder (movielens, letterboxd, kaggle or csv format)")
    p.add_argument("--format", choices=["movielens", "letterboxd", "kaggle", "csv"],
                   help="dataset format (default: detected from the files in DATA)")
    p.add_argument("--genre-sep", default="|" if defaults else None,
                   help="separator inside a genre string (default: |)")
    from genrecls.config import MAX_PIXELS

    p.add_argument("--max-pixels", type=_number(int, 1), default=MAX_PIXELS if defaults else None,
                   help=f"refuse posters larger than this many pixels (decompression bombs) [{MAX_PIXELS:,}]")
    p.add_argument("--text", help="table columns to read beside each poster, comma-separated: title (the title, "
                   "year stripped; every format) or any column of the table (csv format, Kaggle's MovieGenre.csv, "
                   "Letterboxd's movies.csv, e.g. description). A missing text is empty, never a dropped poster")
    if defaults:
        p.add_argument("--no-check-images", dest="check_images", action="store_false",
                       help="skip the header check that drops empty, truncated, oversized and non-image files")
    g = p.add_argument_group("csv format options")
    g.add_argument("--csv-file", help="table file inside DATA (default: labels.csv)")
    g.add_argument("--path-column", help="column of image paths relative to DATA (default: path)")
    g.add_argument("--genres-column", help="column of genre strings (default: genres)")
    g.add_argument("--id-column", help="column of movie ids (default: image file stem)")
    g.add_argument("--title-column", help="column of titles (default: title, when present)")
    g.add_argument("--delimiter", help="CSV field delimiter (default: ,)")


def load_table(args):
    """Call datasets.load_dataset with the data options of a parsed command line."""
    from genrecls.datasets import load_dataset

    return load_dataset(args.data, args.format, genre_sep=args.genre_sep, check_images=args.check_images,
                        max_pixels=args.max_pixels, text=args.text, **_csv_options(args))


def cmd_summary(args) -> None:
    from genrecls.datasets import format_summary, summarize

    if args.plot:
        from genrecls.plots import check_plot_path

        check_plot_path(args.plot)
    summary = summarize(load_table(args))
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
    if args.plot:
        from genrecls.plots import plot_genre_distribution

        plot_genre_distribution(summary["genre_counts"], args.plot)
        print(f"genre distribution plot written to {args.plot}", file=sys.stderr)


def cmd_demo_data(args) -> None:
    from genrecls.demo import make_demo_dataset

    out = make_demo_dataset(args.out, per_genre=args.per_genre, seed=args.seed)
    print(f"demo dataset written to {out} (csv format: labels.csv + posters/)")


def _csv_options(args) -> dict:
    from genrecls.datasets import CSV_OPTIONS

    return {k: getattr(args, k) for k in CSV_OPTIONS if getattr(args, k, None) is not None}


def train_config(args):
    """TrainConfig from --config (if given) overridden by the options given on the line."""
    from genrecls.config import TrainConfig

    from genrecls.config import RECIPES

    base = dict(RECIPES[args.recipe]) if args.recipe else {}
    if args.config:
        base.update(TrainConfig.load(args.config).to_json())
    given = {k: getattr(args, k) for k in (*TRAIN_FIELDS, "shard") if getattr(args, k, None) is not None}
    if "backbone" in given and given["backbone"] != base.get("backbone"):
        # the saved size and weights were resolved for the old backbone: resolve them anew
        base.pop("image_size", None)
        base.pop("weights", None)
    csv_options = _csv_options(args)
    if csv_options:
        given["csv_options"] = csv_options
    if args.data:
        given["data"] = args.data
    if "data" not in {**base, **given}:
        raise GenreclsError("name the dataset folder (DATA) or pass --config with one")
    if args.quiet:
        given["verbose"] = 2
    return TrainConfig.from_json({**base, **given})


def cmd_train(args) -> None:
    cfg = train_config(args)  # a bad setting fails before TensorFlow loads (seconds, and its log lines)
    from genrecls.training import train

    out = args.out or os.path.join("models", f"{cfg.mode}-{cfg.backbone}")
    report = train(cfg, out, overwrite=args.overwrite, evaluate=args.report, plots=True)
    if report:
        _print_evaluation(out, report)


def cmd_combine(args) -> None:
    from genrecls.training import combine_shards

    report = combine_shards(args.out, args.shards, overwrite=args.overwrite, data=args.data, evaluate=args.report,
                            plots=True)
    if report:
        _print_evaluation(args.out, report)


def _print_evaluation(run, report: dict, plots: bool = True) -> None:
    from genrecls.evaluation import format_table

    print(f"\n{report['split']} split, decisions: {report['policy']['name']} ({report['policy']['reason']})")
    print(format_table(report))
    from genrecls import runs

    print(f"\nreport written to {os.path.join(run, runs.REPORT)} and {runs.REPORT_HTML} (with {runs.METRICS}, "
          f"the decision policy{' and plots' if plots else ''})")


def cmd_evaluate(args) -> None:
    from genrecls.report import evaluate_run

    from genrecls.config import DEFAULT_THRESHOLD

    threshold = args.threshold if args.threshold is not None else (DEFAULT_THRESHOLD if args.global_threshold else None)
    report = evaluate_run(args.run, data=args.data, split=args.split, optimize=args.optimize, threshold=threshold,
                          plots=args.plots, gradcam=args.gradcam)
    _print_evaluation(args.run, report, args.plots)


def _count_failures(results: list, done: str) -> None:
    """Say how many files failed (each already has its error line); exit 1 when none succeeded."""
    failed = sum(1 for r in results if r["error"])
    if failed and failed == len(results):
        raise GenreclsError(f"none of the {len(results)} files could be {done}")
    if failed:
        print(f"{failed} of {len(results)} files could not be {done}", file=sys.stderr)


def cmd_explain(args) -> None:
    from genrecls.explain import explain_posters, format_explanations

    results = explain_posters(args.run, args.posters, genres=args.genres, top_k=args.top_k, out=args.out,
                              texts=args.text)
    print(format_explanations(results))
    _count_failures(results, "explained")


def cmd_compare(args) -> None:
    from genrecls.report import compare_runs

    table = compare_runs(args.runs, args.out)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.out:
        print(f"\nwritten to {os.path.join(args.out, 'comparison.md')} and comparison.csv")


def cmd_tune(args) -> None:
    cfg = train_config(args)  # a bad setting fails before TensorFlow loads
    from genrecls.tuning import format_trials, load_space, tune

    out = args.out or os.path.join("models", f"{cfg.mode}-{cfg.backbone}_tune")
    table = tune(cfg, out, max_trials=args.max_trials, executions_per_trial=args.executions_per_trial,
                 objective=args.objective, algorithm=args.algorithm, space=load_space(args.space, cfg),
                 ova_scope=args.ova_scope, overwrite=args.overwrite)
    if table.empty:
        return
    from genrecls import runs

    print("\n" + format_trials(table, args.objective))
    print(f"\ntrial table written to {os.path.join(out, 'trials.csv')}; "
          f"best settings to {os.path.join(out, runs.CONFIG)} (genrecls train --config accepts it)")
    if args.retrain:
        from genrecls.runs import RunFolder
        from genrecls.training import train

        best = os.path.join(out, "best")
        _print_evaluation(best, train(RunFolder(out).load_config(), best, overwrite=True, plots=True))


def cmd_features(args) -> None:
    cfg = train_config(args)
    if not cfg.feature_store:  # before TensorFlow loads
        raise GenreclsError("name the store with --feature-store DIR (train and tune reuse it when given the "
                            "same --feature-store)")
    from genrecls.preparation import fill_feature_store

    done = fill_feature_store(cfg, args.feature_shard)
    computed = ", ".join(map(str, done["computed"])) or "none"
    print(f"{done['entry']}: {done['posters']} posters in {done['shards']} shard(s); computed shard(s) {computed}")
    if done["complete"]:
        print("complete: train and tune with the same settings and --feature-store reuse it")
    else:
        print(f"still missing shard(s) {', '.join(map(str, done['missing']))}: run the other --shard parts "
              "(a run computes whatever is missing itself)")


def _shard(text):
    """An argparse type for --shard I/N."""
    from genrecls.config import parse_shard

    try:
        return parse_shard(text)
    except GenreclsError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shard ")) from None


def cmd_quality(args) -> None:
    from genrecls.quality import run_quality

    modes = args.modes.split(",") if args.modes else None
    run_quality(data=args.data, out=args.out, runs=args.runs, modes=modes, recipe=args.recipe, epochs=args.epochs,
                seed=args.seed, inputs=args.inputs.split(","), text=args.text.split(","), trunk_from=args.trunk_from)
    print(open(os.path.join(args.out, "quality.md"), encoding="utf-8").read())
    print(f"written to {os.path.join(args.out, 'quality.json')} and quality.md; runs in {args.runs}")


def cmd_export(args) -> None:
    from genrecls.export import export_run

    out = export_run(args.run, args.out, args.format, verbose=True)
    print(f"exported to {out}")


def cmd_predict(args) -> None:
    from genrecls.export import format_predictions, predict_files

    texts = args.text
    if args.text_table:
        if texts:
            raise GenreclsError("give --text or --text-table, not both")
        texts = _text_table(args.text_table)
    results = predict_files(args.source, args.images, top_k=args.top_k, texts=texts)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print(format_predictions(results))
    _count_failures(results, "predicted")


def _text_table(path: str) -> dict:
    """--text-table: a CSV with columns file and text -> {file: text}."""
    from pathlib import Path

    from genrecls.datasets import DropReport, _read_csv

    if not os.path.isfile(path):
        raise GenreclsError(f"--text-table {path} is not a file")
    dropped = DropReport()
    frame = _read_csv(Path(path), dropped)
    if not {"file", "text"} <= set(frame.columns):
        raise GenreclsError(f"--text-table {path} needs the columns file and text; it has {', '.join(frame.columns)}")
    if dropped.total:
        print(f"--text-table: skipped {dropped}", file=sys.stderr)
    return dict(zip(frame["file"].str.strip(), frame["text"]))


def cmd_download(args) -> None:
    from genrecls.download import download_posters

    summary = download_posters(args.csv, args.out, url_column=args.url_column, id_column=args.id_column,
                               workers=args.workers, rate=args.rate, retries=args.retries, timeout=args.timeout,
                               deadline=args.deadline, max_bytes=int(args.max_mb * 1024 * 1024))
    print(summary)


def cmd_bench(args) -> None:
    from genrecls.bench import format_markdown, run_benchmarks

    sections = args.sections.split(",") if args.sections else None
    results = run_benchmarks(data=args.data, out=args.out, scale=args.scale, sections=sections)
    print("\n" + format_markdown(results))
    print(f"\nwritten to {os.path.join(args.out, 'results.json')} and results.md")


def _number(kind, lo=None, hi=None):
    """An argparse type: a finite int or float, optionally bounded (NaN and infinity refused)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value) or (lo is not None and value < lo) or \
                (hi is not None and value > hi):
            bounds = f"{'' if lo is None else f'>= {lo}'}{' and ' if lo is not None and hi is not None else ''}" \
                     f"{'' if hi is None else f'<= {hi}'}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds})")
        return value
    return parse


# train option -> TrainConfig field; None on the command line means "not given", so
# --config values survive. Choices and the defaults shown in --help come from genrecls.config.
TRAINING_OPTIONS = {
    "labels": [
        ("--mode", "training mode", {"choices": "MODES"}),
        ("--genres", "comma-separated genres to predict [all]", {}),
        ("--top-k", "keep the K most common genres (report 004 keeps 6)", {"type": _number(int, 1)}),
        ("--other", "add an 'Other' column for genres outside the kept ones", {"action": "store_true"}),
        ("--min-count", "drop genres with fewer posters", {"type": _number(int, 1)}),
        ("--collapse", "single label per poster for multiclass (and its split): its least or most common genre",
         {"choices": "COLLAPSE_RULES"}),
        ("--balance", "balance the training split on the collapsed label", {"choices": "BALANCE_METHODS"}),
        ("--class-weight", "weight rare classes (multilabel: per-genre weighted binary cross-entropy)",
         {"choices": "CLASS_WEIGHT_METHODS"}),
        ("--positive-share", "share of positives in each OvA member's set", {"type": _number(float, 0, 1)}),
        ("--trunk", "with a trainable backbone: end-to-end (OvA: one network per genre, report 002) or shared "
         "(the backbone trained on all genres first, then frozen; the head, each OvA member and the text branch "
         "are fitted on its cached features)", {"choices": "TRUNKS"}),
        ("--trunks", "with --trunk shared: train N trunks (trunk i's draws from seed SEED+i) and fit the head on "
         "their features side by side (an ensemble; N times the first stage's time; at most 8)",
         {"type": _number(int, 1), "metavar": "N"}),
        ("--ova-fit", "OvA members on cached features: all in one fit (one: each member still learns exactly as "
         "alone, several times faster) or one fit each (members; always so with text, soft-f1 or a schedule)",
         {"choices": "OVA_FITS"}),
    ],
    "model": [
        ("--backbone", "feature extractor; none: a text-only model (needs --text)", {"choices": "BACKBONE_CHOICES"}),
        ("--weights", "imagenet, none, or a weights file path [imagenet; none for simple]", {}),
        ("--image-size", "square input size [the backbone's: 224, 299 or 64]", {"type": _number(int, 16, 1024)}),
        ("--resize", "keep the whole poster (pad) or fill (crop)", {"choices": "RESIZE_MODES"}),
        ("--fine-tune-last", "train the backbone's last N layers (-1: all)", {"type": _number(int, -1)}),
        ("--freeze-until", "freeze the backbone's layers before this index", {"type": _number(int, 0)}),
        ("--head", "hidden widths like 256,128 or a preset: report002, report004, small", {}),
        ("--dropout", "dropout before the output layer", {"type": _number(float, 0, 0.99)}),
        ("--text-width", "with --text: units of the text branch fused with the poster features",
         {"type": _number(int, 1, 4096)}),
        ("--text-dropout", "with --text: dropout around the text branch's dense layer", {"type": _number(float, 0, 0.99)}),
    ],
    "loss, probabilities and decisions": [
        ("--loss", "bce, focal (Keras BinaryFocalCrossentropy) or soft-f1 (macro soft F1 + BCE); "
         "multiclass always uses categorical cross-entropy", {"choices": "LOSSES"}),
        ("--label-smoothing", "label smoothing of the loss", {"type": _number(float, 0, 0.49)}),
        ("--calibration", "none; prior: undo the shift of balanced OvA sets, --balance and --class-weight; "
         "platt: prior, then Platt (temperature for multiclass) scaling fitted on validation; "
         "default: platt for ova, prior for the other modes",
         {"choices": "CALIBRATIONS"}),
        ("--optimize", "the F1 average the decision rule maximises (5-fold cross-validation on the validation "
         "split)", {"choices": "OPTIMIZE"}),
    ],
    "fitting": [
        ("--epochs", "maximum epochs (early stopping may end sooner)", {"type": _number(int, 1)}),
        ("--batch-size", "posters per batch", {"type": _number(int, 1)}),
        ("--learning-rate", "Adam learning rate", {"type": _number(float, 1e-9, 1)}),
        ("--lr-schedule", "constant, cosine decay over the epochs, or plateau (the rate times 0.3 when the "
         "validation loss has not improved for a third of --patience epochs)", {"choices": "LR_SCHEDULES"}),
        ("--patience", "early-stopping patience in epochs", {"type": _number(int, 0)}),
        ("--seed", "random seed for splits, sampling and weights", {"type": _number(int, 0)}),
        ("--augment", "random flips, rotations, zooms, shifts", {"action": "store_true"}),
        ("--cache", "cache decoded posters: 'memory' or a file prefix", {}),
        ("--no-cache-features", "train through the frozen backbone every epoch instead of on cached features",
         {"action": "store_false", "dest": "cache_features"}),
        ("--feature-store", "folder keeping those cached features; runs and searches given the same folder "
         "reuse them [the run folder's features/]", {"metavar": "DIR"}),
        ("--tensorboard", "write TensorBoard logs", {"action": "store_true"}),
        ("--distribute", "none; mirrored: the local GPUs; multiworker: the machines in TF_CONFIG (README, "
         "'Distributed training'); --batch-size stays the global batch", {"choices": "DISTRIBUTE"}),
    ],
}
TRAIN_FIELDS = ("format", "genre_sep", "max_pixels", "text") + tuple(kw.get("dest", flag.lstrip("-").replace("-", "_"))
                                               for options in TRAINING_OPTIONS.values() for flag, _, kw in options)


# What `genrecls features` takes: the settings the stored features depend on, and where they go.
FEATURE_OPTIONS = ("--backbone", "--weights", "--image-size", "--resize", "--fine-tune-last", "--batch-size",
                   "--seed", "--feature-store", "--distribute")


def _add_training_options(p: argparse.ArgumentParser, only: tuple | None = None) -> None:
    """The options of `train`, shared by `tune`, and those named in `only` for `features` (values not given stay None)."""
    from genrecls import config

    _add_data_options(p, defaults=False)
    p.add_argument("--config", help="the settings file of an earlier run or search (in its folder); "
                   "options given here override it")
    p.add_argument("--recipe", choices=list(config.RECIPES),
                   help="start from a named recipe (scratch: the measured CPU recipe without pretrained weights; "
                   "report002: EfficientNetV2B0 on ImageNet); --config and the options given override it")
    if only is None:
        p.add_argument("--out", help="run folder (default: models/MODE-BACKBONE)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing genrecls run folder (never a folder genrecls did not create)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    for group, options in TRAINING_OPTIONS.items():
        options = [o for o in options if only is None or o[0] in only]
        g = p.add_argument_group(group) if options else None
        for flag, text, kw in options:
            kw = dict(kw, default=None)
            field = kw.get("dest", flag.lstrip("-").replace("-", "_"))
            if isinstance(kw.get("choices"), str):
                kw["choices"] = list(getattr(config, kw["choices"]))
            shown = config.default(field)
            flag_only = kw.get("action") in ("store_true", "store_false")  # its default is not what it sets
            if shown not in (None, "default", False) and not flag_only and "[" not in text:
                text += f" [{','.join(map(str, shown)) if isinstance(shown, tuple) else shown}]"
            g.add_argument(flag, help=text, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="genrecls",
        description="Predict movie genres from poster images (Keras 3 on TensorFlow).",
        epilog="Run 'genrecls COMMAND --help' for the options of each command.",
    )
    from genrecls import __version__

    parser.add_argument("--version", action="version", version=f"genrecls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="count posters, genres and dropped rows of a dataset",
                       description="Read a dataset folder and print its posters, genres, per-genre "
                       "counts, multi-genre share and what was dropped and why.")
    _add_data_options(p)
    p.add_argument("--plot", metavar="FILE.png", help="also save the genre-distribution bar chart")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)

    from genrecls.config import DEMO_PER_GENRE

    p = sub.add_parser("demo-data", help="write a small synthetic poster dataset (no download)",
                       description="Write a deterministic synthetic dataset in the csv format: "
                       "posters/<id>.jpg with a learnable look per genre, and labels.csv.")
    p.add_argument("out", help="a new or empty folder, or an earlier demo set to rewrite (never a folder "
                   "holding other files)")
    p.add_argument("--per-genre", type=_number(int, *DEMO_PER_GENRE), default=60,
                   help=f"posters per genre, {DEMO_PER_GENRE[0]} to {DEMO_PER_GENRE[1]} (default: 60)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="random seed (default: 0)")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "train", help="train a model (multiclass, multilabel or one-vs-all) into a run folder",
        description="Train on DATA and write a run folder: the model (or ova/ with one member per "
        "genre and combined.keras), its settings, genres, history and split; then evaluate it (the "
        "decision policy, metrics, report.md, plots). Re-running the same "
        "command after an interruption resumes it.",
    )
    _add_training_options(p)
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the evaluation (thresholds, report.md, plots) after training")
    p.add_argument("--shard", metavar="I/N", help="OvA on several machines: train only the members j with "
                   "j %% N == I into --out (a shard run, not evaluated); join the N shards with 'genrecls combine'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "combine", help="join the shard runs of an OvA run (train --shard I/N) into one run folder",
        description="Check that the shard runs were trained with one command line (but --shard), on the same "
        "genres and split, and together hold every member once; then assemble them into OUT and finish it as "
        "train would (combined model, calibration, decision policy, report).",
    )
    p.add_argument("out", help="the run folder to write (new, or an unfinished combine of the same settings)")
    p.add_argument("shards", nargs="+", metavar="SHARD_RUN", help="the shard runs' folders")
    p.add_argument("--data", help="the dataset folder, if it lies elsewhere here than where the first shard was trained")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing genrecls run folder (never a folder genrecls did not create)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the evaluation (thresholds, report.md, plots)")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser(
        "tune", help="Keras Tuner search over head widths, dropout, learning rate, trainable layers",
        description="Random search (or Hyperband) over a head/dropout/learning-rate/trainable-layers "
        "space (report 002's by default; change it with --space FILE.json). Writes trials.csv and the "
        "best settings into --out; re-running continues the search. For a distributed search set "
        "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (see the README).",
    )
    _add_training_options(p)
    g = p.add_argument_group("search")
    g.add_argument("--max-trials", type=_number(int, 1), default=10, help="trials to run [10]")
    g.add_argument("--executions-per-trial", type=_number(int, 1), default=1, help="fits averaged per trial [1]")
    g.add_argument("--objective", default="val_loss", choices=["val_loss", "val_f1_micro", "val_f1_macro"],
                   help="minimised (loss) or maximised (F1) on the validation split [val_loss]")
    g.add_argument("--algorithm", default="random", choices=["random", "hyperband"], help="[random]")
    g.add_argument("--space", help="JSON or YAML file overriding parts of the search space")
    g.add_argument("--ova-scope", default="per-genre", choices=["per-genre", "shared"],
                   help="OvA: tune each genre's member, or one setting for all members [per-genre]")
    g.add_argument("--retrain", action="store_true", help="train the best config into OUT/best afterwards")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "features", help="compute a frozen backbone's poster features into a feature store (or one shard of them)",
        description="Compute the backbone's pooled features of every poster of DATA into --feature-store DIR, "
        "where train and tune with the same posters, backbone, weights, image size and resize (and the same "
        "--feature-store) find and reuse them. --shard I/N computes only shard I of N, so several processes or "
        "machines can fill one store; a run computes whatever shards are still missing.",
    )
    _add_training_options(p, only=FEATURE_OPTIONS)
    # its own dest: train's --shard (OvA members) is a config setting, this one is not
    p.add_argument("--shard", type=_shard, dest="feature_shard", metavar="I/N",
                   help="compute only part I of N (0 <= I < N) [all]")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "evaluate", help="per-genre report of a run against its baselines: metrics, report.md, plots",
        description="Evaluate a run folder on one split. The decision rule is chosen on the validation "
        "split (never on test) and saved for predict and export. Every overall score is shown beside "
        "its trivial baseline and flagged when it does not beat it. Writes the metrics, report.md "
        "and PNG plots (reliability diagrams included) into the run folder.",
    )
    p.add_argument("run", help="run folder written by 'genrecls train'")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="split to score [test]")
    p.add_argument("--optimize", choices=["micro", "macro", "samples", "weighted"],
                   help="choose the decision rule (per-genre thresholds, shrunk toward one global threshold or "
                   "not, one global threshold, top-k, at least one genre) that maximises this F1 in 5-fold "
                   "cross-validation on the validation split [the run's setting]")
    p.add_argument("--global-threshold", action="store_true",
                   help="one fixed threshold for every genre (--threshold) instead of a rule chosen on validation")
    p.add_argument("--threshold", type=_number(float, 0, 1),
                   help="the fixed global threshold (implies --global-threshold) [0.5]")
    from genrecls.html_report import GRADCAM_IMAGES

    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="tables only: no plots, and no poster gallery or Grad-CAM in report.html")
    p.add_argument("--gradcam", type=_number(int, 0), default=GRADCAM_IMAGES,
                   help=f"Grad-CAM heatmaps in report.html's gallery (0: none) [{GRADCAM_IMAGES}]")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "explain", help="Grad-CAM heatmaps: which part of a poster drives each genre",
        description="For each poster, a Grad-CAM heatmap (the keras-io recipe) of each of its top genres, or of "
        "the --genres given, laid over the poster and saved as PNG. Needs the run folder (an export keeps no "
        "layers to read); works for every backbone and mode (OvA: each member's own gradient).",
    )
    p.add_argument("run", help="run folder written by 'genrecls train'")
    p.add_argument("posters", nargs="+", help="poster files or folders")
    p.add_argument("--genres", help="comma-separated genres to explain [each poster's top genres]")
    p.add_argument("--top-k", type=_number(int, 1), default=3, help="top genres per poster without --genres [3]")
    p.add_argument("--out", help="folder for the PNGs [RUN/explain]")
    p.add_argument("--text", action="append", help="for a model trained with --text: the poster's text, once for "
                   "every poster or once per poster in order [empty]")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compare", help="side-by-side per-genre F1 of several runs",
                       description="Print (and with --out write as Markdown and CSV) the per-genre F1 "
                       "of several evaluated runs side by side, e.g. OvA against a single CNN.")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", help="folder for comparison.md and comparison.csv")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "export", help="write a SavedModel that serves raw image bytes",
        description="Export a run as a TensorFlow SavedModel. serving_default takes encoded JPEG/PNG "
        "bytes (decoding, resizing and preprocessing are inside the graph); serve_pixels takes float "
        "RGB 0..255; both return probabilities, above_threshold and genres_above. A run trained with --text "
        "takes a string per poster too (serving_default(images, texts)); a text-only run takes texts alone. "
        "Genres, thresholds and the inputs are stored in the graph and in metadata.json.",
    )
    p.add_argument("run", help="run folder (evaluate it first to export per-genre thresholds)")
    p.add_argument("--out", help="export folder [RUN/export, or RUN/model.tflite]")
    p.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model",
                   help="saved_model (bytes in) or tflite (LiteRT, pixels in) [saved_model]")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "predict", help="predict the genres of poster files",
        description="Print each poster's top genres with probabilities and the genres above their "
        "thresholds. Folders are expanded to the images inside; unreadable files are reported and "
        "the rest still predicted.",
    )
    p.add_argument("source", help="run folder or export folder")
    p.add_argument("images", nargs="*", help="poster files or folders (none for a text-only model)")
    p.add_argument("--text", action="append",
                   help="for a model trained with --text: the poster's text (e.g. its title); once for every "
                   "poster, or once per poster in order; a text-only model predicts each --text")
    p.add_argument("--text-table", metavar="CSV", help="a CSV with columns file and text (file: a poster's path "
                   "or name), for many posters")
    p.add_argument("--top-k", type=_number(int, 1), default=3, help="genres to list per poster [3]")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "download", help="download poster URLs from a CSV (e.g. Kaggle MovieGenre.csv)",
        description="Download each row's poster URL to OUT/<id>.jpg. Resumable (valid files are "
        "skipped), retries with back-off on timeouts, 429 (honouring Retry-After) and 5xx, no retry "
        "on 404, per-host rate limit, size cap, and a check that each body is an image. Failures are "
        "listed in OUT/download_report.csv.",
    )
    p.add_argument("csv", help="table with an id column and a URL column")
    p.add_argument("--out", required=True, help="poster folder to fill, e.g. DATA/posters")
    p.add_argument("--url-column", default="Poster", help="column holding the URLs [Poster]")
    p.add_argument("--id-column", default="imdbId", help="column naming each file [imdbId]")
    p.add_argument("--workers", type=_number(int, 1, 64), default=8, help="parallel downloads [8]")
    p.add_argument("--rate", type=_number(float, 1e-3), help="max requests per second per host [unlimited]")
    p.add_argument("--retries", type=_number(int, 0, 100), default=3, help="retries per URL after the first try [3]")
    p.add_argument("--timeout", type=_number(float, 0.001, 3600), default=10.0, help="seconds per read [10]")
    p.add_argument("--deadline", type=_number(float, 0.001, 86400), default=120.0,
                   help="seconds per request in all, however slowly the bytes come [120]")
    p.add_argument("--max-mb", type=_number(float, 0.001, 1024), default=10.0, help="largest poster accepted, in MiB [10]")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "bench", help="measure the pipeline, training, OvA cost, memory and label scaling",
        description="Run the benchmarks on ../shared/datasets/ml1m when present (else the demo set); "
        "every figure is a ratio against a baseline measured in the same run. Writes OUT/results.json "
        "and OUT/results.md.",
    )
    p.add_argument("--data", help="dataset folder [../shared/datasets/ml1m, else the demo set]")
    p.add_argument("--out", default="benchmarks", help="output folder [benchmarks]")
    p.add_argument("--scale", type=_number(float, 1e-4, 100), default=1.0, help="shorten (<1) or lengthen (>1) every section [1]")
    p.add_argument("--sections", help="comma-separated subset: input_pipeline, training_throughput, ova_cost, "
                   "memory, scaling, letterboxd_scale [all]")
    p.set_defaults(func=cmd_bench)

    from genrecls.config import RECIPES

    p = sub.add_parser(
        "quality", help="train a recipe in every mode on real posters and compare each score with its baseline",
        description="The quality benchmark: train the recipe in each mode on DATA (default "
        "../shared/datasets/ml1m), evaluate on the test split, and write OUT/quality.json and "
        "OUT/quality.md with micro, macro and weighted F1, MAP@3 and mean ROC-AUC beside their trivial "
        "baselines. Takes minutes per mode on a CPU.",
    )
    p.add_argument("--data", help="dataset folder [../shared/datasets/ml1m]")
    p.add_argument("--out", default="benchmarks", help="folder for quality.json and quality.md [benchmarks]")
    p.add_argument("--runs", default=os.path.join("models", "quality"), help="folder for the runs [models/quality]")
    p.add_argument("--modes", help="comma-separated subset of multiclass, multilabel, ova [all]")
    p.add_argument("--recipe", choices=list(RECIPES), default="scratch", help="[scratch]")
    p.add_argument("--epochs", type=_number(int, 1), help="override the recipe's maximum epochs")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="[0]")
    p.add_argument("--inputs", default="poster", help="comma-separated rows per mode: poster (the poster alone), "
                   "text (the --text alone) or both (fused) [poster]")
    p.add_argument("--text", default="title", help="the text columns of the text and both rows [title]")
    p.add_argument("--trunk-from", metavar="TRUNK", help="reuse the shared trunk an earlier quality run trained "
                   "(RUNS/ROW/checkpoints/trunk.keras; checked to have the same data, seed and settings) "
                   "instead of training stage 1 again: re-measures the heads in minutes")
    p.set_defaults(func=cmd_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Hide TensorFlow's INFO chatter; its warnings (e.g. skipped images) still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except GenreclsError as exc:
        print(f"genrecls: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("genrecls: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        print("genrecls: error: out of memory; try a smaller --batch-size, --image-size or --head "
              f"({type(exc).__name__})", file=sys.stderr)
        return 1
    return 0


def _out_of_memory(exc: Exception) -> bool:
    """Python's MemoryError or TensorFlow's (imported only if the command already did)."""
    tf = sys.modules.get("tensorflow")
    return isinstance(exc, MemoryError) or (tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError))


if __name__ == "__main__":
    sys.exit(main())
