"""Grad-CAM on models whose answer is known, on every backbone; `genrecls explain`; the self-contained report.html."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import keras
import numpy as np
import pytest
from PIL import Image

from genrecls.backbones import BACKBONES, base_network
from genrecls.cli import main
from genrecls.explain import LONGEST, gradcam, pooling_layers
from genrecls.models import build_model, calibrated, combine_members
from genrecls.plots import written_by_genrecls
from genrecls.report import evaluate_run, genre_rows, render_report_html
from genrecls.runs import RunFolder
from tests.helpers import tiny_config

SIZE, PATCH = 32, 8


def corner_posters(n: int, seed: int):
    """Grey noise; genre 0 is a red patch in the top-left corner, genre 1 a blue one in the bottom-right."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(40, 160, (n, SIZE, SIZE, 3)).astype("float32")
    labels = (rng.random((n, 2)) < 0.5).astype("float32")
    images[labels[:, 0] == 1, :PATCH, :PATCH] = (255, 0, 0)
    images[labels[:, 1] == 1, -PATCH:, -PATCH:] = (0, 0, 255)
    return images, labels


@pytest.fixture(scope="module")
def corner_model():
    keras.utils.set_random_seed(0)
    images, labels = corner_posters(128, 0)
    model = build_model(tiny_config("unused", image_size=SIZE, head=(8,)), 2, "sigmoid").full
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    return model


def assert_each_genre_lights_its_corner(model):
    test, labels = corner_posters(64, 1)
    p = model(test).numpy()
    for j in range(2):  # the model learned both signals
        assert p[labels[:, j] == 1, j].mean() > p[labels[:, j] == 0, j].mean() + 0.1
    both = corner_posters(4, 2)[0]
    both[:, :PATCH, :PATCH] = (255, 0, 0)
    both[:, -PATCH:, -PATCH:] = (0, 0, 255)
    before = model(both).numpy()
    heat = gradcam(model, np.concatenate([both, both]), [0] * 4 + [1] * 4)
    half = heat.shape[1] // 2
    mass = heat.sum(axis=(1, 2))
    top_left, bottom_right = heat[:, :half, :half].sum(axis=(1, 2)) / mass, heat[:, half:, half:].sum(axis=(1, 2)) / mass
    assert (top_left[:4] > 0.6).all() and (bottom_right[:4] < 0.2).all(), (top_left, bottom_right)
    assert (bottom_right[4:] > 0.6).all() and (top_left[4:] < 0.2).all(), (top_left, bottom_right)
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    np.testing.assert_allclose(model(both).numpy(), before, rtol=1e-6)  # the model is itself again afterwards


def test_gradcam_lights_the_corner_that_carries_each_genre(corner_model):
    assert_each_genre_lights_its_corner(calibrated(corner_model, [1, 1], [0, 0], "sigmoid"))


def test_gradcam_of_ova_members_that_each_own_a_backbone(corner_model):
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    members = []
    for j in range(2):  # member j: its own copy of the network, answering genre j only
        copy = keras.models.clone_model(corner_model)
        copy.set_weights(corner_model.get_weights())
        members.append(keras.Model(inputs, copy(inputs)[:, j:j + 1], name=f"member_{j}"))
    ova = calibrated(combine_members(members, None), [1, 1], [0, 0], "sigmoid")
    assert len(pooling_layers(ova)) == 2  # one feature map per member: output j must use member j's
    assert_each_genre_lights_its_corner(ova)


def test_gradcam_of_several_trunks_adds_what_each_contributes():
    """--trunks N: the head reads every trunk's map, so the heatmap is the sum of their weighted maps: a
    genre that trunk 0 sees in the top-left corner and trunk 1 in the bottom-right lights both corners."""
    from genrecls.explain import combined_cams

    maps = [np.zeros((1, 4, 4, 2), "float32") for _ in range(2)]
    maps[0][0, :2, :2, 0] = 1.0  # trunk 0: channel 0 fires in the top-left
    maps[1][0, 2:, 2:, 1] = 1.0  # trunk 1: channel 1 fires in the bottom-right
    grads = [np.zeros_like(m) for m in maps]
    grads[0][..., 0] = 0.5  # the score rises with both, trunk 0's a little less
    grads[1][..., 1] = 1.0
    grads[0][..., 1] = -2.0  # a channel that lowers the score (never fires here)
    heat = combined_cams(maps, grads)[0]
    assert heat[:2, :2] == pytest.approx(np.full((2, 2), 0.5)) and heat[2:, 2:] == pytest.approx(np.ones((2, 2)))
    assert heat[:2, 2:].max() == 0 and heat[2:, :2].max() == 0
    # an OvA member without a gradient for the genre adds nothing; maps of other sizes: the strongest alone
    assert combined_cams([maps[0], maps[1]], [grads[0], np.zeros_like(grads[1])])[0][2:, 2:].max() == 0
    small = np.ones((1, 2, 2, 2), "float32")
    alone = combined_cams([maps[1], small], [grads[1], np.full_like(small, 0.01)])[0]
    assert alone.shape == (4, 4) and alone[2:, 2:] == pytest.approx(np.ones((2, 2)))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradcam_reads_the_last_feature_map_of_every_backbone(name):
    size = 75 if name == "inceptionv3" else 64
    built = build_model(tiny_config("unused", backbone=name, image_size=size, weights=None), 3, "softmax")
    model = calibrated(built.full, [1.0] * 3, [0.0] * 3, "softmax")
    (pool,) = pooling_layers(model)  # EfficientNet's squeeze-and-excitation pools are not the final map
    expected = tuple(base_network(built.backbone).output.shape[1:3])
    assert tuple(pool.input.shape[1:3]) == expected
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    heat = gradcam(model, images, [0, 2])
    assert heat.shape == (2, *expected) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1


# ------------------------------------------------------------------ a trained run


@pytest.fixture(scope="module")
def ova_run(tiny_runs, tmp_path_factory):
    """A copy of the session's one-epoch OvA run, whose members each trained their own backbone."""
    run = tmp_path_factory.mktemp("runs") / "ova"
    shutil.copytree(tiny_runs["ova"], run)
    return run


def test_explain_writes_an_overlay_per_poster_and_genre(ova_run, demo_dir, tmp_path, capsys):
    genres = json.loads((ova_run / "genres.json").read_text())["genres"]
    posters = sorted((demo_dir / "posters").iterdir())[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "heat"
    assert main(["explain", str(ova_run), *map(str, posters), str(broken), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"{broken}: ERROR" in printed.out and "1 of 3 files could not be explained" in printed.err
    written = sorted(out.iterdir())
    assert len(written) == 2 * len(genres)  # top 3 of 3 genres per poster
    for path in written:
        assert written_by_genrecls(path) and path.name in printed.out
        with Image.open(path) as image:
            assert max(image.size) == LONGEST and image.size[0] < image.size[1]  # the poster's own shape
    assert main(["explain", str(ova_run), str(posters[0]), "--genres", genres[1], "--out", str(out)]) == 0
    assert capsys.readouterr().out.count(" -> ") == 1  # the genre asked for, written over genrecls's own file


def test_explain_refuses_an_export_and_an_unknown_genre_in_one_line(ova_run, tiny_runs, demo_dir, tmp_path, capsys):
    from genrecls.export import export_run

    poster = str(next((demo_dir / "posters").iterdir()))
    run = shutil.copytree(tiny_runs["multilabel"], tmp_path / "run")  # one backbone: a quicker export
    export = export_run(run)  # RUN/export
    assert main(["explain", str(export), poster]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an export" in err and "run folder" in err and str(run) in err
    assert main(["explain", str(ova_run), poster, "--genres", "Action,Nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genrecls: error: unknown genre 'Nope'")


class Page(HTMLParser):
    """The images, link targets and text of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def decoded(uri: str) -> Image.Image:
    head, _, payload = uri.partition(",")
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head[:40]
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    image.load()
    return image


def test_html_report_is_one_self_contained_page(ova_run):
    assert len(pooling_layers(RunFolder.open(ova_run).load_model())) == 3  # a backbone per member
    report = evaluate_run(ova_run, gradcam=4)
    html = (ova_run / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    text = " ".join(page.text)
    assert "http://" not in html and "https://" not in html and "url(" not in html
    assert all(link.startswith("#") for link in page.links)  # only anchors inside the page
    for image in page.images:  # every image embedded and decodable
        assert decoded(image["src"]).size[0] > 0
    alts = [image["alt"] for image in page.images]
    assert sum(alt in ("Per-genre F1 against random guessing", "Reliability (calibration) per genre") for alt in alts) == 2
    heatmaps = [alt for alt in alts if alt.startswith("Grad-CAM of")]
    assert 1 <= len(heatmaps) <= 4
    for cells, _ in genre_rows(report):  # report.md's table, cell for cell
        assert cells[0] in text and cells[3] in text
        assert f"<h3>{cells[0]}</h3>" in html  # and a gallery section per genre
    assert text.count("most confident hits") == len(report["genres"])

    escaped = render_report_html(ova_run, {**report, "data": "<script>alert(1)</script>"}, plots=False)
    assert "<script>" not in escaped and "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped  # autoescaping is on

    evaluate_run(ova_run, plots=False)  # tables only
    page = Page()
    page.feed((ova_run / "report.html").read_text(encoding="utf-8"))
    assert page.images == [] and all(g in " ".join(page.text) for g in report["genres"])
