"""SavedModel export serving bytes, checked in a process that never imports genrecls."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from genrecls.cli import main
from genrecls.errors import GenreclsError
from genrecls.export import export_run, predict_files
from genrecls.pipeline import make_dataset
from genrecls.runs import RunFolder


def load_run_model(run):
    return RunFolder.open(run).load_model()

POSTERS = ["1.jpg", "2.jpg", "10.jpg", "260.jpg", "1196.jpg", "2571.jpg"]


@pytest.mark.slow
def test_exports_match_keras_in_a_fresh_process(tiny_runs, ml1m, tmp_path):
    files = [ml1m / "posters" / name for name in POSTERS]
    expected, exports = {}, {}
    for mode, run in tiny_runs.items():
        exports[mode] = str(export_run(run, tmp_path / f"{mode}_export"))
        pixels = np.concatenate([x.numpy() for x in make_dataset(files, image_size=32, batch_size=8)])
        np.save(tmp_path / f"{mode}_pixels.npy", pixels)
        expected[mode] = load_run_model(run).predict(pixels, verbose=0)
        meta = json.loads((tmp_path / f"{mode}_export" / "metadata.json").read_text())
        assert meta["genres"] == json.loads((run / "genres.json").read_text())["genres"]
        assert meta["thresholds"] == list(json.loads((run / "thresholds.json").read_text())["thresholds"].values())

    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        exports = {exports!r}
        images = tf.constant([open(p, "rb").read() for p in {[str(f) for f in files]!r}])
        for mode, path in exports.items():
            loaded = tf.saved_model.load(path)
            by_bytes = loaded.signatures["serving_default"](images=images)
            pixels = np.load({str(tmp_path)!r} + f"/{{mode}}_pixels.npy")
            by_pixels = loaded.signatures["serve_pixels"](pixels=tf.constant(pixels))
            np.save({str(tmp_path)!r} + f"/{{mode}}_bytes_out.npy", by_bytes["probabilities"].numpy())
            np.save({str(tmp_path)!r} + f"/{{mode}}_pixels_out.npy", by_pixels["probabilities"].numpy())
            meta = loaded.signatures["metadata"]()
            above = by_bytes["above_threshold"].numpy()
            names = by_bytes["genres_above"].numpy()
            assert ((names != b"") == above).all()
            print(mode, [g.decode() for g in meta["genres"].numpy()], above.sum())
        assert not any(m.startswith("genrecls") for m in sys.modules), "genrecls was imported"
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for mode in tiny_runs:
        by_bytes = np.load(tmp_path / f"{mode}_bytes_out.npy")
        by_pixels = np.load(tmp_path / f"{mode}_pixels_out.npy")
        assert by_bytes.shape == expected[mode].shape == (len(POSTERS), 3 if mode == "ova" else 7)
        np.testing.assert_allclose(by_bytes, expected[mode], atol=1e-5)
        np.testing.assert_allclose(by_pixels, by_bytes, atol=1e-5)


def test_predict_reports_a_corrupt_file_and_predicts_the_rest(tiny_runs, ml1m, tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in POSTERS[:3]:
        (folder / name).write_bytes((ml1m / "posters" / name).read_bytes())
    raw = (ml1m / "posters" / "1.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(raw[:300] + b"\x00" * 2000 + raw[-100:])  # passes the byte check
    (folder / "empty.jpg").write_bytes(b"")
    export = export_run(tiny_runs["multilabel"], tmp_path / "export")
    for source in (tiny_runs["multilabel"], export):
        results = {r["file"].split("/")[-1]: r for r in predict_files(source, [folder], top_k=2)}
        assert results["empty.jpg"]["error"] == "empty file"
        assert results["broken.jpg"]["error"] == "cannot be decoded"
        for name in POSTERS[:3]:
            r = results[name]
            assert r["error"] is None and len(r["top"]) == 2
            assert r["top"][0]["probability"] >= r["top"][1]["probability"]
            thresholds = json.loads((tiny_runs["multilabel"] / "thresholds.json").read_text())["thresholds"]
            assert r["above_threshold"] == [g for g, p in r["probabilities"].items() if p >= thresholds[g]]
    by_run = predict_files(tiny_runs["multilabel"], [folder / POSTERS[0]])[0]["probabilities"]
    by_export = predict_files(export, [folder / POSTERS[0]])[0]["probabilities"]
    assert by_run == pytest.approx(by_export, abs=1e-5)

    assert main(["predict", str(export), str(folder), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == 5 and sum(1 for r in printed if r["error"]) == 2


def test_multiclass_with_an_argmax_policy_predicts_exactly_one_genre(tiny_runs, ml1m, tmp_path):
    from genrecls.policies import argmax
    from genrecls.runs import RunFolder

    folder = RunFolder.open(tiny_runs["multiclass"])
    genres = folder.load_vocab().names
    folder.save_policy(argmax(len(genres)), genres)
    export = export_run(folder.path, tmp_path / "export")
    (export / "metadata.json").unlink()  # the graph alone knows the decisions
    for source in (folder.path, export):
        results = predict_files(source, [ml1m / "posters" / n for n in POSTERS])
        assert all(len(r["above_threshold"]) == 1 for r in results)
        assert all(r["above_threshold"][0] == r["top"][0]["genre"] for r in results)


def test_tflite_export_matches(tiny_runs, tmp_path):
    import tensorflow as tf

    path = export_run(tiny_runs["multilabel"], tmp_path / "model.tflite", format="tflite")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, load_run_model(tiny_runs["multilabel"])(x).numpy(), atol=1e-5)


def test_a_tflite_export_never_overwrites_a_users_file_beside_it(tmp_path):
    from genrecls.export import claim_export

    (tmp_path / "model.json").write_text('{"mine": "precious"}')
    with pytest.raises(GenreclsError, match="model.json already exists and genrecls did not write it"):
        claim_export(tmp_path / "model.tflite", "tflite")
    assert (tmp_path / "model.json").read_text() == '{"mine": "precious"}'
    with pytest.raises(GenreclsError, match="name the LiteRT file NAME.tflite"):
        claim_export(tmp_path / "model.json", "tflite")
    (tmp_path / "old.tflite").write_bytes(b"TFL3")  # an earlier export of genrecls's: replaced
    (tmp_path / "old.json").write_text('{"genrecls": "0.1", "genres": []}')
    claim_export(tmp_path / "old.tflite", "tflite")
    claim_export(tmp_path / "new.tflite", "tflite")  # nothing there yet


def test_unsafe_models_are_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    with pytest.raises(GenreclsError, match="not a genrecls run"):
        load_run_model(tmp_path / "run")  # genrecls did not write this folder
    with pytest.raises(GenreclsError, match="refusing to load"):
        RunFolder(tmp_path / "run").load_model()
    with pytest.raises(GenreclsError, match="neither a genrecls run folder"):
        predict_files(tmp_path, [tmp_path / "x.jpg"])
