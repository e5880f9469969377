"""Text beside the poster (issue 14): reading texts, the text branch, fusion, export and predict."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from genrecls.cli import main
from genrecls.datasets import format_summary, load_dataset, summarize
from genrecls.errors import GenreclsError
from genrecls.export import Predictor, export_run, predict_files
from genrecls.runs import RunFolder
from genrecls.text import MAX_TEXT_CHARS, clean_text
from genrecls.training import train
from tests.helpers import tiny_config, write_image

GENRE_WORDS = {"Horror": ["blood", "night", "scream"], "Comedy": ["laugh", "party", "funny"],
               "Romance": ["love", "kiss", "heart"]}
FILLER = ["the", "of", "return", "story", "big", "last", "man", "city"]


def titled_set(root, n_per=24, seed=0, extra=None):
    """A csv dataset whose posters carry no signal (random grey) and whose titles name the genre."""
    rng = np.random.default_rng(seed)
    rows = []
    for genre, words in GENRE_WORDS.items():
        for i in range(n_per):
            name = f"{genre.lower()}{i}"
            shade = int(rng.integers(60, 200))
            write_image(root / "posters" / f"{name}.jpg", color=(shade, shade, shade))
            title = f"{rng.choice(FILLER)} {rng.choice(words)} {rng.choice(FILLER)}"
            rows.append({"path": f"posters/{name}.jpg", "genres": genre, "title": title,
                         "plot": f"A {rng.choice(words)} tale." if i % 3 else ""})
    for row in extra or []:
        write_image(root / row["path"], color=(128, 128, 128))
        rows.append({"plot": "", **row})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["path", "genres", "title", "plot"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# ------------------------------------------------------------------ reading texts


def test_clean_text_keeps_words_and_removes_what_breaks_them():
    assert clean_text(None) == "" and clean_text(float("nan")) == ""
    assert clean_text("Al\x00ien\t\n  Resurrection") == "Al ien Resurrection"
    assert clean_text("東京物語 🎬") == "東京物語 🎬"
    assert len(clean_text("word " * 5000)) == MAX_TEXT_CHARS


def test_text_columns_are_read_joined_and_missing_ones_counted(tmp_path):
    root = titled_set(tmp_path, n_per=6)
    table = load_dataset(root, text="title,plot")
    assert len(table) == 18  # a missing plot never drops a poster
    row = table.frame[table.frame["id"] == "posters/horror1"].iloc[0]
    assert row["text"].startswith(row["title"]) and row["text"].endswith("tale.")
    plots = load_dataset(root, text="plot")
    empty = int((plots.frame["text"] == "").sum())
    assert empty == 6  # i % 3 == 0 has no plot
    summary = summarize(plots)
    assert summary["text"] == {"columns": ["plot"], "empty": 6}
    assert "12 posters have text, 6 have none" in format_summary(summary)
    assert (load_dataset(root).frame["text"] == "").all()  # no text asked for


def test_a_text_column_that_does_not_exist_names_the_columns_that_do(tmp_path):
    root = titled_set(tmp_path, n_per=2)
    with pytest.raises(GenreclsError, match=r"no column 'synopsis'; the text can come from 'title', 'path', 'genres', 'plot'"):
        load_dataset(root, text="synopsis")
    ml = tmp_path / "ml"
    write_image(ml / "posters" / "1.jpg")
    (ml / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    assert load_dataset(ml, text="title").frame["text"].tolist() == ["Toy Story"]
    with pytest.raises(GenreclsError, match="movies.dat has no column 'plot'"):
        load_dataset(ml, text="plot")
    with pytest.raises(GenreclsError, match="distinct, non-empty"):
        load_dataset(ml, text="title,,")


def test_letterboxd_and_kaggle_texts(tmp_path):
    lb = tmp_path / "lb"
    for i in (1, 2):
        write_image(lb / "posters" / f"{i}.jpg")
    (lb / "genres.csv").write_text("id,genre\n1,Drama\n2,Comedy\n2,Drama\n")
    with pytest.raises(GenreclsError, match="movies.csv beside genres.csv"):
        load_dataset(lb, text="description")
    (lb / "movies.csv").write_text('id,name,description\n1,Barbie (2023),"A doll, in the real world."\n')
    table = load_dataset(lb, text="title,description")
    texts = dict(zip(table.frame["id"], table.frame["text"]))
    assert texts == {"1": "Barbie A doll, in the real world.", "2": ""}
    kg = tmp_path / "kg"
    write_image(kg / "posters" / "7.jpg")
    (kg / "MovieGenre.csv").write_text("imdbId,Title,Genre\n7,Heat (1995),Action|Crime\n", encoding="utf-8")
    assert load_dataset(kg, text="title").frame["text"].tolist() == ["Heat"]


# ------------------------------------------------------------------ models with text


def test_text_only_model_learns_genres_from_titles(tmp_path):
    root = titled_set(tmp_path / "data")
    report = train(tiny_config(root, mode="multilabel", backbone="none", text=["title"], epochs=25,
                               head=(), text_width=16, text_dropout=0.2, learning_rate=1e-2, patience=25),
                   tmp_path / "run")
    assert report["overall"]["roc_auc_mean"] > 0.9  # the titles name the genre; the posters are grey
    model = RunFolder.open(tmp_path / "run").load_model()
    probs = model({"text": tf.constant(["night blood scream", "laugh party funny"])}).numpy()
    names = json.loads((tmp_path / "run" / "genres.json").read_text())["genres"]
    assert names[probs[0].argmax()] == "Horror" and names[probs[1].argmax()] == "Comedy"


@pytest.mark.parametrize("mode", ["multiclass", "multilabel", "ova"])
def test_fused_model_trains_exports_and_predicts_with_text(mode, tmp_path):
    root = titled_set(tmp_path / "data", n_per=8)
    run = tmp_path / "run"
    # multiclass also trains through augmentation, and in two stages (shared trunk, then the fused head)
    train(tiny_config(root, mode=mode, text=["title"], epochs=1, text_width=8, image_size=16, top_k=2 if mode == "ova"
                      else None, augment=mode == "multiclass", trunk="end-to-end" if mode == "multilabel" else "shared"),
          run)
    if mode != "multilabel":  # OvA members are then heads on one frozen trunk: quicker than a CNN each
        assert (run / "checkpoints" / "trunk.keras").exists()
    model = RunFolder.open(run).load_model()
    assert set(model.input) == {"image", "text"}
    posters = sorted((root / "posters").glob("*.jpg"))[:3]
    texts = ["blood night", "", "東京物語 🎬"]
    from_run = Predictor.load(run).predict([p.read_bytes() for p in posters], texts)[0]
    export = export_run(run)
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    out = serve(images=tf.constant([p.read_bytes() for p in posters]), texts=tf.constant(texts))
    np.testing.assert_allclose(out["probabilities"].numpy(), from_run, atol=1e-5)
    assert json.loads((export / "metadata.json").read_text())["inputs"] == ["image", "text"]
    results = predict_files(export, [str(p) for p in posters], texts=texts)
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in results], from_run, atol=1e-5)
    # the text changes the answer: the same poster with another title gets other probabilities
    other = Predictor.load(run).predict([posters[0].read_bytes()], ["laugh party funny"])[0]
    assert not np.allclose(other[0], from_run[0])
    if mode == "multilabel":  # Grad-CAM and the HTML gallery give the model each poster's text
        from genrecls.explain import explain_posters
        from genrecls.report import evaluate_run

        explained = explain_posters(run, [str(posters[0])], top_k=1, texts=["blood night"])
        assert explained[0]["error"] is None and len(explained[0]["genres"]) == 1
        report = evaluate_run(run, plots=True, gradcam=2)
        assert report["inputs"] == ["poster", "text (title)"]
        assert "inputs: **poster + text (title)**" in (run / "report.md").read_text(encoding="utf-8")
        assert (run / "report.html").read_text(encoding="utf-8").count("data:image/png") > 2


def test_cached_poster_features_with_text(tmp_path):
    """A frozen backbone's features are computed once; the text still goes through its branch every epoch."""
    root = titled_set(tmp_path / "data", n_per=8)
    report = train(tiny_config(root, mode="multilabel", text=["title"], epochs=2, fine_tune_last=0), tmp_path / "run")
    assert report["overall"]["posters"] > 0
    head_inputs = json.loads((tmp_path / "run" / "config.json").read_text())
    assert head_inputs["fine_tune_last"] == 0 and head_inputs["text"] == ["title"]


def test_awkward_texts_train_and_predict(tmp_path, capsys):
    """Empty titles, other scripts, emoji, a 10,000-character plot and a NUL byte are texts like any other."""
    awkward = ["", "東京物語", "🎬🍿👻", "blood " * 2000, "Al\x00ien"]
    extra = [{"path": f"posters/odd{i}.jpg", "genres": "Horror", "title": t} for i, t in enumerate(awkward)]
    root = titled_set(tmp_path / "data", n_per=8, extra=extra)
    table = load_dataset(root, text="title")
    assert len(table) == 24 + len(awkward) and summarize(table)["text"]["empty"] == 1
    run = tmp_path / "run"
    train(tiny_config(root, mode="multilabel", text=["title"], epochs=1), run)
    poster = str(root / "posters" / "odd0.jpg")
    results = predict_files(run, [poster] * len(awkward), texts=awkward)
    assert all(r["error"] is None and np.isfinite(list(r["probabilities"].values())).all() for r in results)
    assert main(["predict", str(run), poster, "--text", "a", "--text", "b"]) == 1
    assert "2 texts for 1 posters" in capsys.readouterr().err


def test_predict_refuses_texts_a_model_cannot_read(tmp_path, tiny_runs, capsys):
    poster = next((tmp_path / "data" / "posters").glob("*.jpg"), None) or write_image(tmp_path / "p.jpg")
    assert main(["predict", str(tiny_runs["multilabel"]), str(poster), "--text", "Alien"]) == 1
    assert "not trained with --text" in capsys.readouterr().err
    root = titled_set(tmp_path / "data", n_per=8)
    run = tmp_path / "text-only"
    train(tiny_config(root, mode="multilabel", backbone="none", text=["title"], epochs=1), run, evaluate=False)
    assert main(["predict", str(run), str(poster)]) == 1
    assert "text-only model: give texts" in capsys.readouterr().err
    assert main(["predict", str(run), "--text", "blood night"]) == 0
    assert "'blood night':" in capsys.readouterr().out
    assert main(["explain", str(run), str(poster)]) == 1
    assert "text-only model (--backbone none): it has no poster to explain" in capsys.readouterr().err
    table = tmp_path / "texts.csv"
    table.write_text("poster,title\np.jpg,Alien\n")
    assert main(["predict", str(run), "--text-table", str(table)]) == 1
    assert "needs the columns file and text" in capsys.readouterr().err
    assert main(["train", str(root), "--backbone", "none", "--out", str(tmp_path / "x")]) == 1
    assert "--backbone none trains on text alone" in capsys.readouterr().err


def test_predict_reads_texts_from_a_table(tmp_path):
    root = titled_set(tmp_path / "data", n_per=8)
    run = tmp_path / "run"
    train(tiny_config(root, mode="multilabel", text=["title"], epochs=1), run, evaluate=False)
    posters = sorted((root / "posters").glob("*.jpg"))[:2]
    table = tmp_path / "texts.csv"
    table.write_text(f"file,text\n{posters[0].name},blood night\n{posters[1]},laugh party\n", encoding="utf-8")
    from genrecls.cli import _text_table

    by_table = predict_files(run, [str(p) for p in posters], texts=_text_table(str(table)))
    by_order = predict_files(run, [str(p) for p in posters], texts=["blood night", "laugh party"])
    assert [r["probabilities"] for r in by_table] == [r["probabilities"] for r in by_order]


def test_tuner_searches_the_text_branch(tmp_path):
    from genrecls.tuning import tune

    root = titled_set(tmp_path / "data", n_per=8)
    cfg = tiny_config(root, mode="multilabel", text=["title"], epochs=1, fine_tune_last=0)
    table = tune(cfg, tmp_path / "search", max_trials=1)
    assert {"text_width", "text_dropout"} <= set(table.columns)
    best = RunFolder(tmp_path / "search").load_config()
    assert best.text_width in (32, 64, 128) and 0.2 <= best.text_dropout <= 0.6
