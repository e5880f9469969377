"""Read a poster dataset folder, in any supported format, into one table.

The table (a pandas DataFrame) has one row per usable poster:

    id      str        movie id (or the poster's file stem for the csv format)
    title   str        title with the release year stripped ("" when unknown)
    path    str        absolute path of the poster image
    genres  list[str]  genre names, trimmed, case-variants merged
    text    str        the columns asked for with `text=` (e.g. the title, a plot summary) joined,
                       cleaned by text.clean_text; "" when not asked for or missing (counted, never dropped)

Every row that cannot be used is dropped *and counted* in a `DropReport`
(reason -> count, with a few examples), never silently lost.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import unicodedata
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

import pandas as pd
from PIL import Image

from genrecls.config import MAX_PIXELS
from genrecls.errors import GenreclsError
from genrecls.progress import progress_bar
from genrecls.text import clean_text

log = logging.getLogger(__name__)

FORMATS = ("movielens", "letterboxd", "kaggle", "csv")
# The file whose presence identifies each format, checked in this order.
FORMAT_MARKERS = {
    "movielens": "movies.dat",
    "letterboxd": "genres.csv",
    "kaggle": "MovieGenre.csv",
    "csv": "labels.csv",
}
POSTER_DIRS = ("posters", "images")
POSTER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Genre strings that mean "no genre" in real tables.
NO_GENRE_MARKERS = {"(no genres listed)", "n/a", "na", "nan", "none", "unknown", ""}
# Characters that signal a genre string split with the wrong separator.
SUSPECT_SEPARATORS = set(",;|/\t")
YEAR_SUFFIX = re.compile(r"\s*\(\s*\d{4}\s*\)\s*$")

# Reasons a row is dropped; the keys of DropReport.counts.
NO_POSTER = "no poster file"
NO_GENRE = "no genre"
DUPLICATE_ID = "duplicate id"
NO_ID = "no id"
UNPARSEABLE = "unparseable line"
MALFORMED_GENRES = "malformed genre string"
OUTSIDE_FOLDER = "path outside dataset folder"
UNREADABLE = "unreadable image"
WRONG_FIELDS = "wrong number of fields"
UNCLOSED_QUOTE = "unclosed quote"
SAME_FILE = "same poster file as another row"


@dataclass
class DropReport:
    """What was dropped and why: counts per reason plus a few examples each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}

    def __str__(self) -> str:
        if not self.counts:
            return "nothing dropped"
        return ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())


@dataclass
class PosterTable:
    """The canonical table plus where it came from and what was dropped."""

    frame: pd.DataFrame
    root: Path
    format: str
    dropped: DropReport
    text: list | None = None  # the columns the text column was made from ("title": the title)

    def __len__(self) -> int:
        return len(self.frame)

    def genre_counts(self) -> Counter:
        return Counter(g for genres in self.frame["genres"] for g in genres)


# ---------------------------------------------------------------- genre strings


def strip_year(title: str) -> str:
    """'Toy Story (1995)' -> 'Toy Story' (report 000 drops the year)."""
    return YEAR_SUFFIX.sub("", str(title)).strip()


def parse_genres(value, sep: str = "|") -> list[str] | None:
    """Split a genre string into trimmed, de-duplicated names.

    Returns [] for a missing or "no genre" value and None for a malformed
    one (a name that still contains another separator, which means the
    string was split with the wrong separator).
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    names = []
    for token in str(value).split(sep):
        name = " ".join(token.split())  # trim and collapse inner whitespace
        if name.lower() in NO_GENRE_MARKERS:
            continue
        if SUSPECT_SEPARATORS.intersection(name) - {sep} or any(unicodedata.category(c) == "Cc" for c in name):
            return None  # split with the wrong separator, or a NUL or other control character
        if name not in names:
            names.append(name)
    return names


def merge_case_variants(genre_lists: list[list[str]]) -> list[list[str]]:
    """Map 'sci-fi', 'Sci-Fi', 'SCI-FI' to the most common spelling."""
    spellings = Counter(g for genres in genre_lists for g in genres)
    canonical: dict[str, str] = {}
    for name, _ in sorted(spellings.items(), key=lambda kv: -kv[1]):
        canonical.setdefault(name.lower(), name)
    merged = []
    for genres in genre_lists:
        out = []
        for g in genres:
            c = canonical[g.lower()]
            if c not in out:
                out.append(c)
        merged.append(out)
    return merged


# ------------------------------------------------------------------ image files


def image_problem(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> str | None:
    """Why a poster file cannot be used, or None when it looks sound.

    Reads the first and last bytes and the header, whatever the image size:
    catches missing, empty, non-image and truncated files (a JPEG without its
    end marker, a PNG without IEND), headers no decoder can read, formats the
    TensorFlow decoder gets wrong (BMPs other than 24/32-bit: an 8-bit palette
    BMP would decode as grey palette indices) and images of more than
    max_pixels pixels (decompression bombs; None: no limit).
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(34)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    problem = _byte_problem(head, tail, size)
    return problem or _header_problem(path, max_pixels)


def _byte_problem(head: bytes, tail: bytes, size: int) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        # The end-of-image marker; trailing padding after it is tolerated.
        return None if b"\xff\xd9" in tail else "truncated JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if tail.rstrip(b"\x00").endswith(b";") else "truncated GIF"
    if head.startswith(b"BM"):
        declared = int.from_bytes(head[2:6], "little")
        bits, compression = int.from_bytes(head[28:30], "little"), int.from_bytes(head[30:34], "little")
        if bits not in (24, 32) or compression not in (0, 3):
            return f"unsupported BMP ({bits}-bit{', compressed' if compression not in (0, 3) else ''})"
        return None if declared <= size else "truncated BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "unsupported format (WebP)"
    return "not an image"


def _header_problem(path, max_pixels: int | None) -> str | None:
    """The header, read by PIL without decoding the pixels: dimensions and sanity."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return f"too large (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, PIL's decompression-bomb limit)"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"cannot be decoded ({str(exc)[:60]})"
    if max_pixels is not None and width * height > max_pixels:
        return f"too large ({width}x{height} pixels, limit {max_pixels:,}; see --max-pixels)"
    return None


def image_problems(paths: list[str], max_pixels: int | None = MAX_PIXELS, workers: int = 8,
                   verbose: int | str = 0) -> list[str | None]:
    """`image_problem` for many files, on a few threads (the reads release the GIL; one for a few files).

    verbose: progress as in genrecls.progress (0, the default: none)."""
    progress = progress_bar(len(paths), f"checking {len(paths):,} poster files", verbose, unit="file")
    problems = []
    with ThreadPoolExecutor(max_workers=workers if len(paths) >= 256 else 1) as pool:
        for problem in pool.map(image_problem, paths, [max_pixels] * len(paths), chunksize=64):
            problems.append(problem)
            progress.add(1)
    return problems


# --------------------------------------------------------------------- helpers


def _read_text(path: Path) -> str:
    """UTF-8 if it decodes, else Latin-1 (old MovieLens and Kaggle files).

    A UTF-8 file with a few lines that are not (a title pasted from elsewhere) is read line by line, so one
    stray byte does not turn every accented name of the file into mojibake; a warning names those lines.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines, latin, utf8 = raw.splitlines(keepends=True), [], False
    for i, line in enumerate(lines):
        try:
            lines[i] = line.decode("utf-8-sig" if i == 0 else "utf-8")
            utf8 = utf8 or not line.isascii()
        except UnicodeDecodeError:
            lines[i] = line.decode("latin-1")
            latin.append(i + 1)
    if not utf8:
        return raw.decode("latin-1")  # no UTF-8 beside them: a Latin-1 file
    shown = ", ".join(map(str, latin[:10])) + (f" and {len(latin) - 10} more" if len(latin) > 10 else "")
    log.warning("%s is UTF-8 but %d line(s) are not (line %s); read those as Latin-1, check their text",
                path, len(latin), shown)
    return "".join(lines)


def _csv_rows(text: str, sep: str, dropped: DropReport) -> tuple[list[str] | None, list[list[str]]]:
    """(header, rows) of a CSV text; every line is in a row, blank, or counted as dropped.

    A quote that is never closed would swallow the following lines into one
    field (up to the end of the file or to the next quote); here only its own
    line is dropped and reading goes on from the next line. A quoted field may
    still span lines when the row it makes has the header's width (a plot summary).
    """
    lines = text.splitlines(keepends=True)
    header, rows, start = None, [], 0
    while start < len(lines):
        reader = csv.reader(lines[start:], delimiter=sep, strict=True)
        done = 0  # lines of lines[start:] consumed by the rows read so far
        try:
            for fields in reader:
                first, spanned, done = start + done, reader.line_num - done, reader.line_num
                if not fields or (fields == [""] and spanned == 1):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                elif len(fields) == len(header):
                    rows.append(fields)
                elif spanned > 1:
                    raise csv.Error("a quote opened here is never closed")
                else:
                    dropped.add(f"{WRONG_FIELDS} (expected {len(header)})",
                                f"line {first + 1}: {len(fields)} fields: {sep.join(fields)[:80]!r}")
            return header, rows
        except csv.Error as exc:
            first = start + done
            dropped.add(UNCLOSED_QUOTE, f"line {first + 1} ({exc}): {lines[first][:80].rstrip()!r}")
            start = first + 1
    return header, rows


def _read_csv(path: Path, dropped: DropReport, sep: str = ",") -> pd.DataFrame:
    """A table of strings; a row with the wrong number of fields is counted, never shifted into other columns."""
    if not isinstance(sep, str) or len(sep) != 1 or sep in "\"\r\n":
        raise GenreclsError(f"the CSV delimiter must be one character (not a quote or newline), not {sep!r}")
    header, rows = _csv_rows(_read_text(path), sep, dropped)
    if header is None:
        raise GenreclsError(f"{path} is empty")
    if len(set(header)) != len(header):
        raise GenreclsError(f"{path} repeats a column name in its header: {header}")
    return pd.DataFrame(rows, columns=header, dtype=str)


def _require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GenreclsError(
            f"{path.name} has no column {', '.join(map(repr, missing))}; "
            f"its columns are {', '.join(map(repr, frame.columns))}. "
            "Name the right ones with the column options (see --help)."
        )


def _poster_dir(root: Path) -> Path:
    for name in POSTER_DIRS:
        if (root / name).is_dir():
            return root / name
    raise GenreclsError(
        f"{root} has no poster folder: expected one of {', '.join(POSTER_DIRS)}/ "
        "holding <id>.jpg files"
    )


def _posters_by_stem(folder: Path) -> dict[str, str]:
    """One directory listing, so finding N posters costs no N stat calls."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in POSTER_EXTENSIONS:
            found.setdefault(stem, name)
    return found


def _inside(root: Path, relative: str) -> str | None:
    """Absolute path of `relative` under root, or None when it escapes root."""
    if not relative or os.path.isabs(relative) or "\x00" in relative:
        return None
    full = os.path.normpath(os.path.join(root, relative))
    return full if full.startswith(str(root) + os.sep) else None


# --------------------------------------------------------------- format readers
# Each reader returns raw records (id, title, poster path relative to root,
# genre string or list, text) and adds what it cannot parse to `dropped`.
TITLE = "title"  # the text source every format has: the title, year stripped


def _texts(columns: dict, text: list | None, path: Path, n: int) -> list[str]:
    """Each row's text: the `text` columns of a table (name -> values) joined, cleaned.

    An unknown column is one clear error naming the columns there are."""
    if not text:
        return [""] * n
    missing = [c for c in text if c not in columns]
    if missing:
        raise GenreclsError(f"--text {','.join(text)}: {path.name} has no column {', '.join(map(repr, missing))}; "
                            f"the text can come from {', '.join(map(repr, columns))}")
    return [clean_text(" ".join(str(p) for p in parts if isinstance(p, str) and p.strip()))
            for parts in zip(*(columns[c] for c in text))]


def _records_movielens(root: Path, dropped: DropReport, genre_sep: str, text=None, **_):
    path = root / "movies.dat"
    _texts({TITLE: []}, text, path, 0)  # movies.dat has titles only
    posters = _poster_dir(root)
    by_stem = _posters_by_stem(posters)
    for line in _read_text(path).splitlines():
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            dropped.add(UNPARSEABLE, line[:120])
            continue
        movie_id, title, genres = (p.strip() for p in parts)
        name = by_stem.get(movie_id)
        rel = f"{posters.name}/{name}" if name else None
        title = strip_year(title)
        yield movie_id, title, rel, parse_genres(genres, genre_sep), clean_text(title) if text else ""


def _letterboxd_movies(root: Path, text: list | None) -> dict:
    """id -> (title, text) from the movies.csv beside genres.csv (name, description, tagline...), if there."""
    path = root / "movies.csv"
    if not path.is_file():
        if text:
            raise GenreclsError(f"--text {','.join(text)}: Letterboxd texts come from movies.csv beside "
                                f"genres.csv, and {root} has none")
        return {}
    frame = _read_csv(path, DropReport())  # its rows are not posters: problems there cost only a text
    _require_columns(frame, ["id"], path)
    titles = list(frame["name"].map(strip_year)) if "name" in frame.columns else [""] * len(frame)
    columns = {TITLE: titles, **{c: list(frame[c]) for c in frame.columns}}
    return dict(zip(frame["id"].str.strip(), zip(titles, _texts(columns, text, path, len(frame)))))


def _records_letterboxd(root: Path, dropped: DropReport, text=None, **_):
    path = root / "genres.csv"
    frame = _read_csv(path, dropped)
    _require_columns(frame, ["id", "genre"], path)
    posters = _poster_dir(root)
    by_stem = _posters_by_stem(posters)
    movies = _letterboxd_movies(root, text)
    # Long form: one row per (movie, genre); group keeps first-seen order.
    grouped: dict[str, list[str]] = {}
    malformed: set[str] = set()
    for movie_id, genre in zip(frame["id"].str.strip(), frame["genre"]):
        if not movie_id:
            dropped.add(UNPARSEABLE, f"row with empty id (genre {genre!r})")
            continue
        names = parse_genres(genre, sep="\x1f")  # one genre per row: never split
        if names is None:
            malformed.add(movie_id)
        genres = grouped.setdefault(movie_id, [])
        genres.extend(g for g in names or [] if g not in genres)
    for movie_id, genres in grouped.items():
        name = by_stem.get(movie_id)
        rel = f"{posters.name}/{name}" if name else None
        title, words = movies.get(movie_id, ("", ""))
        yield movie_id, title, rel, None if movie_id in malformed else genres, words


def _records_kaggle(root: Path, dropped: DropReport, genre_sep: str, text=None, **_):
    path = root / "MovieGenre.csv"
    frame = _read_csv(path, dropped)
    _require_columns(frame, ["imdbId", "Title", "Genre"], path)
    posters = _poster_dir(root)
    by_stem = _posters_by_stem(posters)
    titles = list(frame["Title"].map(strip_year))
    texts = _texts({TITLE: titles, **{c: list(frame[c]) for c in frame.columns}}, text, path, len(frame))
    for movie_id, title, genres, words in zip(frame["imdbId"], titles, frame["Genre"], texts):
        movie_id = movie_id.strip()
        name = by_stem.get(movie_id)
        rel = f"{posters.name}/{name}" if name else None
        yield movie_id, title, rel, parse_genres(genres, genre_sep), words


def _records_csv(
    root: Path,
    dropped: DropReport,
    genre_sep: str,
    csv_file: str = "labels.csv",
    path_column: str = "path",
    genres_column: str = "genres",
    id_column: str | None = None,
    title_column: str | None = None,
    delimiter: str = ",",
    text: list | None = None,
    **_,
):
    path = root / csv_file
    frame = _read_csv(path, dropped, sep=delimiter)
    if title_column is None and "title" in frame.columns:
        title_column = "title"
    wanted = [path_column, genres_column] + [c for c in (id_column, title_column) if c]
    _require_columns(frame, wanted, path)
    n = len(frame)
    paths = frame[path_column].str.strip()
    ids = frame[id_column].str.strip() if id_column else [os.path.splitext(p)[0] for p in paths]
    titles = list(frame[title_column].map(strip_year)) if title_column else [""] * n
    texts = _texts({TITLE: titles, **{c: list(frame[c]) for c in frame.columns}}, text, path, n)
    for movie_id, title, rel, genres, words in zip(ids, titles, paths, frame[genres_column], texts):
        yield movie_id, title, rel, parse_genres(genres, genre_sep), words


CSV_OPTIONS = ("csv_file", "path_column", "genres_column", "id_column", "title_column", "delimiter")  # --format csv

READERS = {
    "movielens": _records_movielens,
    "letterboxd": _records_letterboxd,
    "kaggle": _records_kaggle,
    "csv": _records_csv,
}


def detect_format(root: str | os.PathLike) -> str:
    """Name the format from the marker file the folder holds."""
    root = Path(root)
    for fmt, marker in FORMAT_MARKERS.items():
        if (root / marker).is_file():
            return fmt
    expected = ", ".join(f"{m} ({f})" for f, m in FORMAT_MARKERS.items())
    raise GenreclsError(
        f"cannot tell the dataset format of {root}: it holds none of {expected}. "
        "Pass --format csv with --csv-file for another table."
    )


def load_dataset(
    root: str | os.PathLike,
    format: str | None = None,
    *,
    genre_sep: str = "|",
    check_images: bool = True,
    max_pixels: int = MAX_PIXELS,
    verbose: int | str = 0,
    text: list | str | None = None,
    **csv_options,
) -> PosterTable:
    """Read a dataset folder into a `PosterTable`.

    format: one of FORMATS, or None to detect it from the files present.
    genre_sep: separator inside a genre string ("|" in every known format).
    check_images: sniff each poster's bytes and header and drop empty,
        truncated, undecodable and non-image files and those above max_pixels
        pixels (counted), so training never meets them.
    verbose: progress of those checks, as in genrecls.progress (0: none).
    The same poster file reached by several rows (posters/1.jpg,
    ./posters/1.jpg, a link) is kept once and the others counted, so one
    poster can never land in two split parts.
    text: the columns whose text goes beside the poster ("title" is the title with
        the year stripped, in every format; any other name is a column of the
        table: the csv format's, MovieGenre.csv's, or Letterboxd's movies.csv),
        joined with spaces. A missing or empty text is "" (counted in the summary).
    csv_options: for format "csv": csv_file, path_column, genres_column,
        id_column, title_column, delimiter.
    """
    if not isinstance(genre_sep, str) or not genre_sep or genre_sep.isspace() or "\x00" in genre_sep:
        raise GenreclsError(f"--genre-sep must be a visible separator such as '|', not {genre_sep!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise GenreclsError(f"--max-pixels must be a positive integer, not {max_pixels!r}")
    text = text_columns(text)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GenreclsError(f"dataset folder {root} does not exist")
    root = Path(os.path.abspath(root))
    fmt = format or detect_format(root)
    if fmt not in READERS:
        raise GenreclsError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    unknown = sorted(set(csv_options) - set(CSV_OPTIONS))
    if unknown:  # a misspelt option would be ignored, and the table read with the default columns
        raise GenreclsError(f"unknown csv option(s) {', '.join(unknown)}; the csv format takes {', '.join(CSV_OPTIONS)}")
    marker = csv_options.get("csv_file", FORMAT_MARKERS[fmt])
    if not (root / marker).is_file():
        raise GenreclsError(f"{root} has no {marker}, which the {fmt} format reads")
    if fmt != "csv" and csv_options:
        raise GenreclsError(f"options {sorted(csv_options)} apply only to --format csv")

    dropped = DropReport()
    seen: set[str] = set()
    files: dict[tuple, str] = {}  # (device, inode) -> the id that has that poster file
    rows = []
    for movie_id, title, rel, genres, words in READERS[fmt](root, dropped, genre_sep=genre_sep, text=text,
                                                            **csv_options):
        label = f"{movie_id} ({title})" if title else movie_id
        if not str(movie_id).strip():  # an empty id cell: counted for what it is, not as the first duplicate
            dropped.add(NO_ID, title or "(a row without id)")
            continue
        if movie_id in seen:
            dropped.add(DUPLICATE_ID, label)
            continue
        seen.add(movie_id)
        if genres is None:
            dropped.add(MALFORMED_GENRES, label)
            continue
        if not genres:
            dropped.add(NO_GENRE, label)
            continue
        if rel is None:
            dropped.add(NO_POSTER, label)
            continue
        full = _inside(root, rel)
        if full is None:
            dropped.add(OUTSIDE_FOLDER, f"{label}: {rel}")
            continue
        try:
            stat = os.stat(full)
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            dropped.add(NO_POSTER, f"{label}: {rel}")
            continue
        identity = (stat.st_dev, stat.st_ino)
        if identity in files:
            dropped.add(SAME_FILE, f"{label}: {rel} is {files[identity]}'s poster")
            continue
        files[identity] = movie_id
        rows.append((movie_id, title, full, genres, words))

    if dropped.counts[MALFORMED_GENRES] > len(rows):
        raise GenreclsError(
            f"most genre strings in {root} look split with the wrong separator "
            f"(e.g. {dropped.examples[MALFORMED_GENRES][0]!r}); pass --genre-sep"
        )
    frame = pd.DataFrame(rows, columns=["id", "title", "path", "genres", "text"])
    frame["genres"] = merge_case_variants(list(frame["genres"]))

    if check_images and len(frame):
        problems = image_problems(list(frame["path"]), max_pixels, verbose=verbose)
        keep = []
        for path, problem in zip(frame["path"], problems):
            if problem:
                dropped.add(f"{UNREADABLE}: {problem}", os.path.relpath(path, root))
            keep.append(problem is None)
        frame = frame[keep].reset_index(drop=True)

    if frame.empty:
        raise GenreclsError(f"no usable posters in {root} ({dropped})")
    if text and not frame["text"].str.len().any():
        raise GenreclsError(f"--text {','.join(text)}: every poster's text is empty in {root}; name a column "
                            "that holds titles or summaries")
    return PosterTable(frame=frame, root=root, format=fmt, dropped=dropped, text=text)


def text_columns(text) -> list | None:
    """--text 'title,plot' -> ['title', 'plot']; None or '' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        text = text.split(",")
    if not isinstance(text, (list, tuple)) or not all(isinstance(c, str) for c in text):
        raise GenreclsError(f"--text must name columns like title or title,plot, not {text!r}")
    columns = [c.strip() for c in text]
    if not all(columns) or len(set(columns)) != len(columns):
        raise GenreclsError(f"--text must name distinct, non-empty columns like title,plot, not {','.join(text)!r}")
    return columns


def summarize(table: PosterTable) -> dict:
    """Numbers a person wants before training: sizes, genre counts, drops."""
    counts = table.genre_counts()
    n = len(table)
    multi = int(sum(len(g) > 1 for g in table.frame["genres"]))
    return {
        "root": str(table.root),
        "format": table.format,
        "records": n + table.dropped.total,  # rows of the table (movies for long-form tables): loaded + dropped
        "posters": n,
        "genres": len(counts),
        "genre_counts": dict(counts.most_common()),
        "multi_genre": multi,
        "multi_genre_share": multi / n if n else 0.0,
        "dropped": table.dropped.to_dict(),
        **({"text": {"columns": table.text, "empty": int((table.frame["text"] == "").sum())}} if table.text else {}),
    }


def format_summary(summary: dict) -> str:
    """The summary as the text `genrecls summary` prints."""
    lines = [
        f"dataset   {summary['root']} ({summary['format']})",
        f"records   {summary['records']:,} read: {summary['posters']:,} posters loaded, "
        f"{summary['dropped']['total']:,} dropped",
        f"posters   {summary['posters']:,}",
        f"genres    {summary['genres']}",
        f"multi     {summary['multi_genre']:,} posters have 2+ genres "
        f"({summary['multi_genre_share']:.1%})",
        "",
        f"{'genre':<20}{'posters':>9}{'share':>8}",
    ]
    for genre, count in summary["genre_counts"].items():
        lines.append(f"{genre:<20}{count:>9,}{count / summary['posters']:>8.1%}")
    if "text" in summary:
        text = summary["text"]
        lines.insert(5, f"text      {', '.join(text['columns'])}: {summary['posters'] - text['empty']:,} posters "
                        f"have text, {text['empty']:,} have none (an empty text, never dropped)")
    dropped = summary["dropped"]
    lines.append("")
    lines.append(f"dropped   {dropped['total']:,}")
    for reason, count in sorted(dropped["counts"].items(), key=lambda kv: -kv[1]):
        examples = ", ".join(dropped["examples"].get(reason, [])[:3])
        lines.append(f"  {count:>7,}  {reason}  (e.g. {examples})")
    return "\n".join(lines)
