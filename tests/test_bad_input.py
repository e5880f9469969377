"""Bad input at every boundary, tried as a new user would (issue #12).

Each case runs `genrecls.cli.main` in-process and checks that the user gets
one line `genrecls: error: ...` naming the problem, exit status 1, no
traceback, and that every file the user had is still there, byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrecls.cli import main
from tests.helpers import write_image

GENRES = ["Action", "Comedy", "Drama"]


def _dataset(root: Path, n: int = 36) -> Path:
    """A csv-format dataset: n posters, one or two genres each."""
    rows = ["path,genres"]
    for i in range(n):
        write_image(root / "posters" / f"{i}.jpg", color=(40 * (i % 3), 90, 200 - 30 * (i % 3)))
        genres = GENRES[i % 3] + ("|" + GENRES[(i + 1) % 3] if i % 4 == 0 else "")
        rows.append(f"posters/{i}.jpg,{genres}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def snapshot(*roots: Path) -> dict:
    """Every file under roots with its bytes (a link is recorded as its target)."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = ("link", str(p.readlink()))
            elif p.is_file():
                out[str(p)] = p.read_bytes()
    return out


@pytest.fixture
def ctx(tmp_path, tiny_runs):
    data = _dataset(tmp_path / "data")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "thesis.pdf").write_bytes(b"%PDF-1.4 precious")
    afile = tmp_path / "afile.txt"
    afile.write_text("a user's file\n")
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["multilabel"], run)
    poster = data / "posters" / "0.jpg"
    return {"tmp": tmp_path, "data": data, "user": user, "afile": afile, "run": run, "poster": poster}


def fails_cleanly(argv, capsys, *expected) -> str:
    """Run the command; assert exit 1, one error line naming `expected`, no traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # pragma: no cover - a failure here is the bug being tested
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("genrecls: error:")]
    assert code == 1 and len(lines) == 1, f"exit {code}: {err[-2000:]}"
    for text in expected:
        assert text.lower() in lines[0].lower(), lines[0]
    return lines[0]


# ------------------------------------------------ options refused where they enter

TRAIN = ["train", "{data}", "--epochs", "1", "--backbone", "simple", "--image-size", "16", "--out", "{tmp}/out"]
OPTION_CASES = {
    "learning rate negative": (TRAIN + ["--learning-rate", "-1"], "--learning-rate"),
    "learning rate nan": (TRAIN + ["--learning-rate", "nan"], "--learning-rate"),
    "top-k negative": (TRAIN + ["--top-k", "-1"], "--top-k"),
    "image size zero": (TRAIN + ["--image-size", "0"], "--image-size"),
    "seed negative": (TRAIN + ["--seed", "-1"], "--seed"),
    "dropout inf": (TRAIN + ["--dropout", "inf"], "--dropout"),
    "epochs not a number": (TRAIN + ["--epochs", "1.5"], "--epochs"),
    "empty genre separator": (TRAIN + ["--genre-sep", ""], "genre-sep"),
    "summary empty genre separator": (["summary", "{data}", "--genre-sep", ""], "genre-sep"),
    "cache in a missing folder": (TRAIN + ["--cache", "{tmp}/missing/cache"], "cache", "missing"),
    "predict top-k negative": (["predict", "{run}", "{poster}", "--top-k", "-1"], "--top-k"),
    "evaluate threshold nan": (["evaluate", "{run}", "--threshold", "nan"], "--threshold"),
    "evaluate a file": (["evaluate", "{afile}"], "is a file, not a run folder"),
    "evaluate threshold above one": (["evaluate", "{run}", "--threshold", "1.5"], "--threshold"),
    "unknown mode": (TRAIN + ["--mode", "fuzzy"], "--mode"),
    "demo-data per-genre zero": (["demo-data", "{tmp}/demo", "--per-genre", "0"], "--per-genre"),
    "demo-data per-genre below the minimum": (["demo-data", "{tmp}/demo", "--per-genre", "9"], "--per-genre", ">= 10"),
    "demo-data per-genre huge": (["demo-data", "{tmp}/demo", "--per-genre", "100000000"], "--per-genre", "<= 5000"),
    "head wider than memory": (TRAIN + ["--head", "99999999"], "head widths", "16384"),
    "max pixels zero": (["summary", "{data}", "--max-pixels", "0"], "--max-pixels"),
}


def _fill(argv, ctx):
    return [a.format(**ctx) if isinstance(a, str) else a for a in argv]


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_options_are_one_line_errors(case, ctx, capsys):
    argv, *expected = OPTION_CASES[case]
    before = snapshot(ctx["data"], ctx["user"], ctx["run"])
    fails_cleanly(_fill(argv, ctx), capsys, *expected)
    assert snapshot(ctx["data"], ctx["user"], ctx["run"]) == before
    assert not (ctx["tmp"] / "out").exists()


# ------------------------------------------------ never touch what genrecls did not write

PROTECTED_CASES = {
    "overwrite a user folder": (TRAIN[:-1] + ["{user}", "--overwrite"], "did not write"),
    "overwrite the dataset": (TRAIN[:-1] + ["{data}", "--overwrite"], "{data}"),
    "train into a file": (TRAIN[:-1] + ["{afile}"], "afile.txt"),
    "tune into a file": (["tune", "{data}", "--out", "{afile}", "--max-trials", "1"], "afile.txt"),
    "demo-data into a dataset": (["demo-data", "{data}"], "{data}"),
    "demo-data into a user folder": (["demo-data", "{user}"], "{user}"),
    "demo-data into a file": (["demo-data", "{afile}"], "afile.txt"),
    "export into a file": (["export", "{run}", "--out", "{afile}"], "afile.txt"),
    "export over a user folder": (["export", "{run}", "--out", "{user}"], "{user}"),
    "compare into a file": (["compare", "{run}", "{run}", "--out", "{afile}"], "afile.txt"),
    "summary plot to a folder": (["summary", "{data}", "--plot", "{user}"], "--plot"),
    "summary plot in a missing folder": (["summary", "{data}", "--plot", "{tmp}/missing/plot.png"], "missing"),
    "summary plot with a non-image name": (["summary", "{data}", "--plot", "{tmp}/plot.txt"], ".txt"),
    "summary plot over a user file": (["summary", "{data}", "--plot", "{afile}"], "afile.txt"),
}


@pytest.mark.parametrize("case", list(PROTECTED_CASES))
def test_user_files_are_never_touched(case, ctx, capsys):
    argv, *expected = PROTECTED_CASES[case]
    before = snapshot(ctx["data"], ctx["user"], ctx["afile"], ctx["run"])
    fails_cleanly(_fill(argv, ctx), capsys, *_fill(expected, ctx))
    assert snapshot(ctx["data"], ctx["user"], ctx["afile"], ctx["run"]) == before


def test_demo_data_regenerates_only_its_own_folder(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["demo-data", str(demo), "--per-genre", "10"]) == 0
    first = snapshot(demo)
    assert main(["demo-data", str(demo), "--per-genre", "10"]) == 0  # make demo runs it every time
    assert snapshot(demo) == first
    (demo / "posters" / "mine.jpg").write_bytes(b"a poster of the user's")
    fails_cleanly(["demo-data", demo, "--per-genre", "10"], capsys, "mine.jpg")
    assert (demo / "posters" / "mine.jpg").read_bytes() == b"a poster of the user's"


def test_a_demo_set_cut_short_is_still_genreclss_to_rewrite(tmp_path, monkeypatch):
    """The marker comes first, naming every file the run will write: a kill halfway leaves a folder it may redo."""
    from genrecls import demo

    demo_dir, calls = tmp_path / "demo", []

    def killed_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return np.zeros((8, 8, 3), "uint8")

    monkeypatch.setattr(demo, "draw_poster", killed_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        demo.make_demo_dataset(demo_dir, per_genre=10)
    assert len(list((demo_dir / "posters").iterdir())) == 4 and not (demo_dir / "labels.csv").exists()
    monkeypatch.undo()
    # a file named like a poster of a genre the run had not reached is not the demo's: refused, kept
    (demo_dir / "posters" / "m00050.jpg").write_bytes(b"a poster of the user's")
    assert main(["demo-data", str(demo_dir), "--per-genre", "10"]) == 1
    assert (demo_dir / "posters" / "m00050.jpg").read_bytes() == b"a poster of the user's"
    (demo_dir / "posters" / "m00050.jpg").unlink()
    assert main(["demo-data", str(demo_dir), "--per-genre", "10"]) == 0
    assert len(list((demo_dir / "posters").iterdir())) == 70


# ------------------------------------------------ damaged run folders

def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)))


DAMAGE = {
    "config truncated": ("config.json", _truncate),
    "config a list": ("config.json", lambda p: p.write_text("[1, 2]")),
    "config null": ("config.json", lambda p: p.write_text("null")),
    "config epochs a string": ("config.json", lambda p: _edit_json(p, lambda d: {**d, "epochs": "1"})),
    "thresholds not json": ("thresholds.json", lambda p: p.write_text("{not json")),
    "thresholds lack a genre": ("thresholds.json", lambda p: _edit_json(
        p, lambda d: {**d, "thresholds": dict(list(d["thresholds"].items())[1:])})),
    "genres one short": ("genres.json", lambda p: _edit_json(p, lambda d: d[1:] if isinstance(d, list) else {
        **d, "genres": d["genres"][1:]})),
    "genres not names": ("genres.json", lambda p: p.write_text("[1, 2, 3]")),
    "genres repeated": ("genres.json", lambda p: _edit_json(p, lambda d: [d[0]] * len(d) if isinstance(d, list) else {
        **d, "genres": [d["genres"][0]] * len(d["genres"])})),
    "split without test": ("split.json", lambda p: _edit_json(p, lambda d: {"train": d["train"], "val": d["val"]})),
    "model garbage": ("model.keras", lambda p: p.write_bytes(b"not a zip file at all")),
    "marker garbage": ("run.json", lambda p: p.write_text("{")),
}
COMMANDS = {
    "evaluate": ["evaluate", "{run}"],
    "predict": ["predict", "{run}", "{poster}"],
    "export": ["export", "{run}", "--out", "{tmp}/export"],
}
# split.json only matters to evaluate; evaluate chooses thresholds.json anew, so it never reads it.
DAMAGE_CASES = [(d, c) for d in DAMAGE for c in COMMANDS
                if not (d == "split without test" and c != "evaluate") and not (d.startswith("thresholds") and c == "evaluate")]


@pytest.mark.parametrize("damage,command", DAMAGE_CASES)
def test_damaged_run_files_are_named(damage, command, ctx, capsys):
    name, change = DAMAGE[damage]
    change(ctx["run"] / name)
    line = fails_cleanly(_fill(COMMANDS[command], ctx), capsys, name)
    assert str(ctx["run"]) in line or name in line
    assert line.count("is damaged") <= 1 and line.count(name) <= 2, line  # said once, not wrapped in itself


@pytest.mark.parametrize("damage", ["config truncated", "config epochs a string", "marker garbage"])
def test_resuming_a_damaged_run_names_the_file(damage, ctx, capsys):
    run = ctx["run"]
    marker = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**marker, "finished": False}))
    name, change = DAMAGE[damage]
    change(run / name)
    before = snapshot(ctx["data"], ctx["user"])
    fails_cleanly(_fill(TRAIN[:-1], ctx) + [run, "--weights", "none"], capsys, name)
    assert snapshot(ctx["data"], ctx["user"]) == before and run.is_dir()


def test_running_out_of_memory_is_one_line_and_leaves_nothing_to_overwrite(ctx, capsys, monkeypatch):
    import tensorflow as tf

    from genrecls.training import Trainer

    def exhausted(self, *args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[128,99999999]")

    monkeypatch.setattr(Trainer, "_run", exhausted)
    fails_cleanly(_fill(TRAIN, ctx), capsys, "out of memory", "--batch-size")
    out = ctx["tmp"] / "out"
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()  # the corrected command needs no --overwrite
    assert main(_fill(TRAIN, ctx) + ["--weights", "none", "--no-report", "--quiet"]) == 0


def test_overrides_for_a_genre_the_run_lacks_are_refused(ctx, capsys):
    """A misspelt genre in --config's member_overrides would have its settings ignored without a word."""
    config = ctx["tmp"] / "settings.json"
    config.write_text(json.dumps({"data": str(ctx["data"]), "mode": "ova",
                                  "member_overrides": {"Comdy": {"dropout": 0.2}}}))
    fails_cleanly(_fill(TRAIN, ctx) + ["--config", config], capsys, "member-overrides", "Comdy", "Comedy")
    assert not (ctx["tmp"] / "out").exists()


def test_a_failed_train_leaves_nothing_to_overwrite(ctx, capsys):
    out = ctx["tmp"] / "out"
    fails_cleanly(_fill(TRAIN, ctx) + ["--weights", f"{ctx['tmp']}/missing.weights.h5"], capsys, "missing.weights.h5")
    assert not out.exists() or not any(out.iterdir())
    # the corrected command needs no --overwrite
    assert main(_fill(TRAIN, ctx) + ["--weights", "none", "--no-report", "--quiet"]) == 0


# ------------------------------------------------ tables: every row loaded or counted

def _summary(data, capsys, *options) -> dict:
    assert main(["summary", str(data), "--json", *map(str, options)]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_csv_row_is_loaded_or_counted(ctx, capsys):
    data = ctx["data"]
    lines = (data / "labels.csv").read_text().splitlines()
    bad = [
        'posters/0.jpg,"Action',  # a quote never closed: must not swallow the rows after it
        "posters/1.jpg",  # a single field
        "posters/2.jpg,Drama,extra,fields",  # more fields than the header
        "posters/3.jpg,Dra\x00ma",  # a NUL inside a genre name
    ]
    body = lines[1:]
    body[0:4] = bad  # the first data row has too many fields too: nothing may shift
    body.insert(0, "posters/4.jpg,Comedy,one more")
    (data / "labels.csv").write_text("\n".join([lines[0], *body]) + "\n")
    summary = _summary(data, capsys)
    assert summary["records"] == len(body) == summary["posters"] + summary["dropped"]["total"]
    counts = summary["dropped"]["counts"]
    assert counts["unclosed quote"] == 1 and counts["malformed genre string"] == 1
    assert counts["wrong number of fields (expected 2)"] == 3  # the single field and both wide rows
    assert set(summary["genre_counts"]) == set(GENRES)  # no 'Dra\x00ma', no shifted column as a genre


def test_a_poster_listed_under_several_spellings_is_kept_once(ctx, capsys):
    data = ctx["data"]
    (data / "posters" / "link.jpg").symlink_to(data / "posters" / "5.jpg")
    with open(data / "labels.csv", "a") as f:
        f.write("./posters/6.jpg,Comedy\nposters//7.jpg,Drama\nposters/./8.jpg,Action\nposters/link.jpg,Drama\n")
    summary = _summary(data, capsys)
    assert summary["posters"] == 36 and summary["dropped"]["counts"] == {"same poster file as another row": 4}


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """A tiny valid PNG whose header claims width x height (a decompression bomb's shape)."""
    import struct
    import zlib

    write_image(path, size=(4, 4), fmt="PNG")
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(raw))


def test_odd_images_are_refused_with_a_counted_reason(ctx, capsys):
    from PIL import Image

    data, posters = ctx["data"], ctx["data"] / "posters"
    Image.new("RGB", (20, 30), (200, 30, 30)).convert("P").save(posters / "0.jpg", format="BMP")
    _png_header_claiming(posters / "1.jpg", 20000, 20000)
    _png_header_claiming(posters / "3.jpg", 9000, 9000)
    (posters / "2.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9")
    summary = _summary(data, capsys)
    reasons = summary["dropped"]["counts"]
    assert summary["posters"] == 32 and summary["dropped"]["total"] == 4
    assert any("unsupported BMP (8-bit" in r for r in reasons), reasons
    assert any("too large (9000x9000 pixels" in r for r in reasons), reasons
    assert any("too large (over" in r for r in reasons), reasons  # PIL refuses the 20000x20000 header itself
    assert any("cannot be decoded" in r for r in reasons), reasons
    # the limit is the user's to move
    assert _summary(data, capsys, "--max-pixels", 100_000_000)["posters"] == 33


def test_nothing_decodable_is_a_clear_error(ctx, capsys):
    for poster in (ctx["data"] / "posters").iterdir():
        poster.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) + b"\xff\xd9")
    fails_cleanly(_fill(TRAIN, ctx), capsys, "no usable posters", "cannot be decoded")


def test_accepted_formats_decode_to_the_pixels_pil_gives(tmp_path):
    """Every format the loader accepts gives PIL's RGB pixels (JPEG within decoder rounding)."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from genrecls.datasets import image_problem

    base = np.zeros((30, 20, 3), np.uint8)
    base[:15], base[15:], base[:, :5] = (200, 30, 30), (20, 180, 90), (10, 10, 250)
    image = Image.fromarray(base)
    variants = {"jpeg": ("RGB", "JPEG"), "jpeg-grey": ("L", "JPEG"), "jpeg-cmyk": ("CMYK", "JPEG"),
                "png": ("RGB", "PNG"), "png-alpha": ("RGBA", "PNG"), "png-palette": ("P", "PNG"),
                "png-grey": ("L", "PNG"), "gif": ("RGB", "GIF"), "bmp": ("RGB", "BMP"), "bmp-palette": ("P", "BMP"),
                "bmp-grey": ("L", "BMP"), "bmp-1bit": ("1", "BMP")}
    accepted = set()
    for name, (mode, fmt) in variants.items():
        path = tmp_path / f"{name}.img"
        image.convert(mode).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        if image_problem(path) is not None:
            continue
        accepted.add(name)
        ours = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False).numpy().astype(int)
        pil = np.asarray(Image.open(path).convert("RGB")).astype(int)
        diff = np.abs(ours - pil)
        if fmt == "JPEG":
            assert diff.mean() < 2 and diff.max() <= 16, name
        else:
            assert diff.max() == 0, name
    assert accepted == set(variants) - {"bmp-palette", "bmp-grey", "bmp-1bit"}


def test_predict_names_the_files_it_cannot_read(ctx, capsys, caplog):
    folder = ctx["tmp"] / "new"
    write_image(folder / "a.jpg")
    (folder / "b.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    (folder / "notes.txt").write_text("not a poster")
    write_image(folder / "sub" / "c.jpg")
    assert main(["predict", str(ctx["run"]), str(folder), "--json"]) == 0
    assert f"left out 2 of the 4 entries in {folder}" in caplog.text  # notes.txt and sub/
    results = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert set(results) == {"a.jpg", "b.webp"}
    assert results["a.jpg"]["error"] is None and "WebP" in results["b.webp"]["error"]
    # nothing predicted at all is a failure a script can see: exit status 1, after each file's own line
    assert main(["predict", str(ctx["run"]), str(folder / "b.webp"), str(folder / "gone.jpg")]) == 1
    printed = capsys.readouterr()
    assert "gone.jpg: ERROR" in printed.out and "genrecls: error: none of the 2 files could be predicted" in printed.err


def test_evaluate_on_other_data_uses_the_runs_split_whatever_that_data_lacks(ctx, tmp_path, capsys):
    """--data OTHER where a genre is down to one poster: no fresh split is made, so no advice about training."""
    trained_on = Path(json.loads((ctx["run"] / "config.json").read_text())["data"])
    genres = json.loads((ctx["run"] / "genres.json").read_text())["genres"]
    other = tmp_path / "other"
    shutil.copytree(trained_on, other)
    frame = pd.read_csv(other / "labels.csv")
    lists = frame["genres"].str.split("|")
    rare = genres[0]
    keep_one = lists.map(lambda g: rare in g).idxmax()  # the first poster with it keeps it; the rest lose it
    frame["genres"] = ["|".join(g) if i == keep_one else "|".join(x for x in g if x != rare) or "Unknown"
                       for i, g in lists.items()]
    frame.to_csv(other / "labels.csv", index=False)
    assert main(["evaluate", str(ctx["run"]), "--data", str(other), "--no-plots", "--gradcam", "0"]) == 0
    assert "min-count" not in capsys.readouterr().err


def test_evaluate_when_the_posters_became_undecodable(ctx, capsys):
    out = ctx["tmp"] / "out"
    assert main(_fill(TRAIN, ctx) + ["--weights", "none", "--no-report", "--quiet"]) == 0
    for poster in (ctx["data"] / "posters").iterdir():
        poster.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) + b"\xff\xd9")
    fails_cleanly(["evaluate", out], capsys, "no usable posters")


def test_export_replaces_only_an_export_of_its_own(ctx, capsys):
    out = ctx["tmp"] / "export"
    assert main(["export", str(ctx["run"]), "--out", str(out)]) == 0
    assert main(["export", str(ctx["run"]), "--out", str(out)]) == 0  # its own earlier export: replaced
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    fails_cleanly(["export", ctx["run"], "--out", out], capsys, "did not write")
    assert (out / "notes.txt").read_text() == "mine"
