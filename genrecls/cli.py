"""The `genrecls` command: a thin shell over the Python API.

Each subcommand parses its arguments, calls the API and prints. Modules that
import TensorFlow are imported inside the handlers, so `--help` and the
data commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genrecls.errors import GenreclsError


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Options every command that reads a dataset folder accepts."""
    p.add_argument("data", help="dataset folder (movielens, letterboxd, kaggle or csv format)")
    p.add_argument("--format", choices=["movielens", "letterboxd", "kaggle", "csv"],
                   help="dataset format (default: detected from the files in DATA)")
    p.add_argument("--genre-sep", default="|", help="separator inside a genre string (default: |)")
    p.add_argument("--no-check-images", dest="check_images", action="store_false",
                   help="skip the byte check that drops empty, truncated and non-image files")
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

    csv_keys = ("csv_file", "path_column", "genres_column", "id_column", "title_column", "delimiter")
    csv_options = {k: getattr(args, k) for k in csv_keys if getattr(args, k, None) is not None}
    return load_dataset(
        args.data, args.format, genre_sep=args.genre_sep, check_images=args.check_images, **csv_options
    )


def cmd_summary(args) -> None:
    from genrecls.datasets import format_summary, summarize

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    p = sub.add_parser("demo-data", help="write a small synthetic poster dataset (no download)",
                       description="Write a deterministic synthetic dataset in the csv format: "
                       "posters/<id>.jpg with a learnable look per genre, and labels.csv.")
    p.add_argument("out", help="folder to write (created if missing)")
    p.add_argument("--per-genre", type=int, default=60, help="posters per genre (default: 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Hide TensorFlow's INFO chatter; its warnings (e.g. skipped images) still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GenreclsError as exc:
        print(f"genrecls: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("genrecls: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
