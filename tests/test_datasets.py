"""Dataset adapters: every format into one table, every drop counted."""

from __future__ import annotations

import pytest

from genrecls.datasets import (
    DUPLICATE_ID,
    MALFORMED_GENRES,
    NO_GENRE,
    NO_ID,
    NO_POSTER,
    OUTSIDE_FOLDER,
    UNPARSEABLE,
    WRONG_FIELDS,
    detect_format,
    image_problem,
    load_dataset,
    merge_case_variants,
    parse_genres,
    strip_year,
    summarize,
)
from genrecls.errors import GenreclsError
from tests.helpers import write_image


def test_real_movielens_counts(ml1m):
    table = load_dataset(ml1m)
    assert table.format == "movielens"
    assert len(table) == 3256
    counts = table.genre_counts()
    assert len(counts) == 18
    assert counts["Drama"] == 1255 and counts["Film-Noir"] == 40
    assert table.dropped.counts == {NO_POSTER: 627}
    summary = summarize(table)
    assert summary["multi_genre"] == 1707
    first = table.frame.iloc[0]
    assert (first["id"], first["title"], first["genres"]) == ("1", "Toy Story", ["Animation", "Children's", "Comedy"])
    assert first["path"].endswith("posters/1.jpg")


def _movielens(tmp_path, lines: list[str], encoding="utf-8"):
    (tmp_path / "movies.dat").write_bytes("\n".join(lines).encode(encoding))
    for movie_id in ("1", "2", "3", "4", "5", "6"):
        write_image(tmp_path / "posters" / f"{movie_id}.jpg")
    return tmp_path


def test_movielens_drops_are_counted(tmp_path):
    root = _movielens(
        tmp_path,
        [
            "1::Toy Story (1995)::Animation|Comedy|Drama",
            "2::No Genre (1990)::(no genres listed)",
            "3::Broken line without separators",
            "1::Duplicate of one (1995)::Drama",
            "7::No Poster (2000)::Drama",
            "4::Wrong Separator (1999)::Action,Drama",
            "5::Café Olé (1987)::  drama | COMEDY  ",
            "6::Spaced  ( 2001 ) ::Drama||Comedy|",
        ],
        encoding="latin-1",
    )
    table = load_dataset(root)
    assert list(table.frame["id"]) == ["1", "5", "6"]
    assert table.frame["title"].tolist() == ["Toy Story", "Café Olé", "Spaced"]
    # case variants merge to the most common spelling; empty tokens are ignored
    assert table.frame["genres"].tolist() == [
        ["Animation", "Comedy", "Drama"], ["Drama", "Comedy"], ["Drama", "Comedy"]
    ]
    assert table.dropped.counts == {
        NO_GENRE: 1, UNPARSEABLE: 1, DUPLICATE_ID: 1, NO_POSTER: 1, MALFORMED_GENRES: 1
    }
    assert "3::Broken line" in table.dropped.examples[UNPARSEABLE][0]


def test_one_stray_latin1_line_does_not_garble_a_utf8_table(tmp_path, caplog):
    rows = ["path,title,genres", "posters/1.jpg,Le Dîner,Comédie", "posters/2.jpg,Amélie,Comédie|Romance",
            "posters/3.jpg,Bad Byte,Drama"]
    data = "\n".join(rows).encode("utf-8").replace(b"Bad Byte", "Caf\u00e9 Olé".encode("latin-1"))
    (tmp_path / "labels.csv").write_bytes(data)
    for movie_id in "123":
        write_image(tmp_path / "posters" / f"{movie_id}.jpg")
    with caplog.at_level("WARNING"):
        table = load_dataset(tmp_path)
    assert table.frame["genres"].tolist()[:2] == [["Comédie"], ["Comédie", "Romance"]]
    assert table.frame["title"].tolist() == ["Le Dîner", "Amélie", "Café Olé"]
    assert "1 line(s) are not (line 4)" in caplog.text


def test_letterboxd_long_form(tmp_path):
    (tmp_path / "genres.csv").write_text(
        "id,genre\n10,Action\n10,Drama\n11, western \n12,Horror\n10,Action\n13,\n"
    )
    for movie_id in ("10", "11", "13"):
        write_image(tmp_path / "posters" / f"{movie_id}.jpg")
    table = load_dataset(tmp_path)
    assert table.format == "letterboxd"
    assert dict(zip(table.frame["id"], table.frame["genres"])) == {"10": ["Action", "Drama"], "11": ["western"]}
    assert table.dropped.counts == {NO_POSTER: 1, NO_GENRE: 1}


def test_kaggle_table(tmp_path):
    (tmp_path / "MovieGenre.csv").write_bytes(
        (
            "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
            "114709,http://x/tt0114709,Toy Story (1995),8.3,Animation|Adventure|Comedy,http://p/1.jpg\n"
            "113497,http://x/tt0113497,Jumanji (1995),6.9,Action|Adventure,http://p/2.jpg\n"
            "999,http://x/tt999,Amélie (2001),8.3,,http://p/3.jpg\n"
            "bad,line,with,too,many,fields,here,!\n"
        ).encode("latin-1")
    )
    write_image(tmp_path / "posters" / "114709.jpg")
    write_image(tmp_path / "posters" / "999.jpg")
    table = load_dataset(tmp_path)
    assert table.format == "kaggle"
    assert table.frame["title"].tolist() == ["Toy Story"]
    assert table.frame["genres"].tolist() == [["Animation", "Adventure", "Comedy"]]
    assert table.dropped.counts == {NO_POSTER: 1, NO_GENRE: 1, f"{WRONG_FIELDS} (expected 6)": 1}


def test_csv_default_columns_and_escaping_paths(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.jpg")
    write_image(tmp_path.parent / "secret.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,genres,title\n"
        "img/a.png,Comedy|Drama,A (1990)\n"
        "img/b.jpg,Horror,B\n"
        "../secret.jpg,Drama,Escape\n"
        "/etc/passwd,Drama,Absolute\n"
        "img/../../secret.jpg,Drama,Sneaky\n"
        "img/missing.jpg,Drama,Missing\n"
    )
    table = load_dataset(tmp_path)
    assert table.format == "csv"
    assert table.frame["id"].tolist() == ["img/a", "img/b"]
    assert table.frame["title"].tolist() == ["A", "B"]
    assert table.dropped.counts == {OUTSIDE_FOLDER: 3, NO_POSTER: 1}


def test_csv_custom_columns_and_separators(tmp_path):
    write_image(tmp_path / "p" / "x.jpg")
    write_image(tmp_path / "p" / "y.jpg")
    (tmp_path / "mine.tsv").write_text("file\tlabels\tmovie\np/x.jpg\tAction;Drama\tm1\np/y.jpg\tDrama\tm2\n")
    table = load_dataset(
        tmp_path, "csv", csv_file="mine.tsv", path_column="file", genres_column="labels",
        id_column="movie", delimiter="\t", genre_sep=";",
    )
    assert table.frame["id"].tolist() == ["m1", "m2"]
    assert table.frame["genres"].tolist() == [["Action", "Drama"], ["Drama"]]
    # empty id cells are dropped as having no id, not loaded once and then counted as duplicates
    for name in ("z.jpg", "w.jpg"):
        write_image(tmp_path / "p" / name)
    (tmp_path / "mine.tsv").write_text("file\tlabels\tmovie\np/x.jpg\tDrama\tm1\np/z.jpg\tDrama\t\np/w.jpg\tDrama\t \n")
    table = load_dataset(tmp_path, "csv", csv_file="mine.tsv", path_column="file", genres_column="labels",
                         id_column="movie", delimiter="\t")
    assert table.frame["id"].tolist() == ["m1"] and table.dropped.counts == {NO_ID: 2}


def test_a_misspelt_csv_option_is_a_clear_error(tmp_path):
    write_image(tmp_path / "x.jpg")
    (tmp_path / "labels.csv").write_text("path,labels\nx.jpg,Drama\n")
    with pytest.raises(GenreclsError, match="unknown csv option.*genre_column; the csv format takes"):
        load_dataset(tmp_path, genre_column="labels")


def test_csv_wrong_column_is_a_clear_error(tmp_path):
    write_image(tmp_path / "x.jpg")
    (tmp_path / "labels.csv").write_text("file,genres\nx.jpg,Drama\n")
    with pytest.raises(GenreclsError, match="no column 'path'.*'file'"):
        load_dataset(tmp_path)


def test_wrong_genre_separator_everywhere_is_an_error(tmp_path):
    write_image(tmp_path / "x.jpg")
    write_image(tmp_path / "y.jpg")
    (tmp_path / "labels.csv").write_text("path,genres\nx.jpg,Action;Drama\ny.jpg,Comedy;Drama\n")
    with pytest.raises(GenreclsError, match="--genre-sep"):
        load_dataset(tmp_path)


def test_broken_posters_are_dropped_and_named(tmp_path, broken_files):
    rows = ["path,genres"] + [f"odd/{p.name},Drama" for p in broken_files.values()]
    root = broken_files["good"].parent.parent
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    table = load_dataset(root)
    kept = {p.split("/")[-1] for p in table.frame["path"]}
    assert kept == {"png.jpg", "gray.jpg", "cmyk.jpg", "good.jpg"}
    assert table.dropped.counts == {
        "unreadable image: truncated JPEG": 1,
        "unreadable image: empty file": 1,
        "unreadable image: not an image": 1,
    }
    assert table.dropped.examples["unreadable image: empty file"] == ["odd/empty.jpg"]


def test_image_problem_tolerates_padding_after_end_marker(tmp_path, ml1m):
    padded = tmp_path / "padded.jpg"
    padded.write_bytes((ml1m / "posters" / "2.jpg").read_bytes() + b"\x00" * 100)
    assert image_problem(padded) is None
    assert image_problem(tmp_path / "absent.jpg").startswith("cannot read")


def test_unknown_folder_and_format_errors(tmp_path):
    with pytest.raises(GenreclsError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(GenreclsError, match="cannot tell the dataset format"):
        detect_format(tmp_path)
    with pytest.raises(GenreclsError, match="unknown format"):
        load_dataset(tmp_path, "imdb")
    with pytest.raises(GenreclsError, match="has no movies.dat, which the movielens format reads"):
        load_dataset(tmp_path, "movielens")


def test_genre_string_parsing():
    assert parse_genres(" Action |drama||  Sci-Fi ") == ["Action", "drama", "Sci-Fi"]
    assert parse_genres("Action|Action") == ["Action"]
    assert parse_genres(None) == [] and parse_genres(float("nan")) == []
    assert parse_genres("Action, Drama") is None
    assert strip_year("City of Lost Children, The (1995)") == "City of Lost Children, The"
    assert merge_case_variants([["sci-fi"], ["Sci-Fi"], ["Sci-Fi", "SCI-FI"]]) == [["Sci-Fi"]] * 3
