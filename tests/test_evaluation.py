"""Metrics against hand-computed values; thresholds from validation only; report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrecls import report as report_module
from genrecls.cli import main
from genrecls.evaluation import evaluate_predictions, map_at_k, most_common_prediction, random_guess_f1
from genrecls.policies import argmax, fixed, per_genre_thresholds
from genrecls.report import COMPARISON_HEAD, compare_runs, evaluate_run
from genrecls.training import train
from tests.helpers import tiny_config

# 4 posters, 3 genres; genre C has no positives in this split.
Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
P = np.array([[0.9, 0.2, 0.1], [0.6, 0.4, 0.7], [0.3, 0.8, 0.2], [0.7, 0.1, 0.4]])
TRAIN = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1]])  # prevalences 3/4, 2/4, 1/4


def test_per_genre_and_overall_metrics_by_hand():
    r = evaluate_predictions(Y, P, ["A", "B", "C"], fixed(3, 0.5), TRAIN)
    a, b, c = (r["genres"][g] for g in "ABC")
    # A: predicted on posters 0,1,3; true on 0,1 -> P 2/3, R 1, F1 0.8
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((2 / 3, 1, 0.8, 2))
    # B: predicted on poster 2 only; true on 1,2 -> P 1, R 1/2, F1 2/3
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((1, 0.5, 2 / 3))
    # C: no positives, one false positive: zeros and nulls, no NaN or crash
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0, 0, 0, 0)
    assert c["roc_auc"] is None and c["average_precision"] is None
    assert a["confusion"] == [[1, 1], [0, 2]]
    assert a["roc_auc"] == pytest.approx(3 / 4)  # 3 of 4 positive-negative pairs ranked right
    assert b["roc_auc"] == pytest.approx(1.0)  # both positives outrank both negatives
    o = r["overall"]
    # micro: TP 3 (A 2, B 1), FP 2 (A 1, C 1), FN 1 (B) -> P 3/5, R 3/4, F1 2/3
    assert o["f1_micro"] == pytest.approx(2 / 3)
    assert o["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert o["f1_weighted"] == pytest.approx((0.8 * 2 + 2 / 3 * 2) / 4)
    assert o["hamming_loss"] == pytest.approx(3 / 12)
    assert o["subset_accuracy"] == pytest.approx(2 / 4)  # posters 0 and 2 exactly right
    # AP of A: ranks pos, neg, pos -> (1 + 2/3) / 2; AP of B: 1; C undefined
    assert o["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    # random guess: F1 = 2pq/(p+q) with train prevalence p, test prevalence q
    assert a["random_f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert c["random_f1"] == 0.0
    assert a["beats_random"] and not c["beats_random"]
    # most common: 1.5 genres per training poster round to 2 -> always predict A and B
    assert r["baselines"]["most_common"]["genres"] == ["A", "B"]
    assert a["most_common_f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_baselines_and_map_at_k_by_hand():
    np.testing.assert_allclose(random_guess_f1([0.5, 0.0], [0.5, 0.0]), [0.5, 0.0])
    assert most_common_prediction(np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0]]), 2).tolist() == [[1, 1, 0]] * 2
    # poster 0: ranks A(hit); AP@2 = 1/1. poster 1: ranks C(miss) A(hit) -> (1/2)/min(2,2) = 1/4
    # poster 2: ranks B(hit) -> 1/1. poster 3 has no genres: skipped.
    assert map_at_k(Y, P, k=2) == pytest.approx((1 + 0.25 + 1) / 3)


def _scores_with_ties(n: int, k: int, edge: float, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.2).astype(int)
    y[0] = 0  # a poster without genres (left out of MAP@k)
    p = np.clip(edge * y + rng.random((n, k)), 0, 1).round(1)  # rounded: many tied scores
    return y, p


def test_the_bootstraps_draw_by_draw_scores_are_scikit_learns_on_the_same_posters():
    """Each draw scores a multiset of posters: with every poster once the scores are the report's
    own; with poster counts they are scikit-learn's on the posters repeated that often (ties included)."""
    from genrecls.evaluation import _f1s_by_draw, _rankings_by_draw
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    y, p = _scores_with_ties(60, 6, 0.3, seed=0)
    # a genre without positives, one whose only negative is poster 0 (the genre-less one: a draw without it
    # has no negatives for that genre, nor a poster left out of MAP@k), a column of tied scores
    y[:, 4], y[1:, 5], p[:, 3] = 0, 1, 0.5
    pred = (p > 0.5).astype(int)
    counts = np.random.default_rng(1).multinomial(60, np.full(60, 1 / 60), size=3).astype("float32")
    for W in (np.ones((1, 60), "float32"), counts):
        f1s, ranks = _f1s_by_draw(W, y, pred), _rankings_by_draw(W, y, p, 2)
        for b, w in enumerate(W.astype(int)):
            rows = np.repeat(np.arange(60), w)
            yb, pb = y[rows], p[rows]
            for avg in ("micro", "macro", "weighted", "samples"):
                assert f1s[f"f1_{avg}"][b] == pytest.approx(f1_score(yb, pred[rows], average=avg, zero_division=0))
            np.testing.assert_allclose(f1s["f1_by_genre"][b], f1_score(yb, pred[rows], average=None, zero_division=0),
                                       rtol=1e-6)
            defined = [j for j in range(6) if 0 < yb[:, j].sum() < len(yb)]
            assert ranks["roc_auc_mean"][b] == pytest.approx(np.mean([roc_auc_score(yb[:, j], pb[:, j]) for j in defined]))
            assert ranks["map"][b] == pytest.approx(np.mean([average_precision_score(yb[:, j], pb[:, j]) for j in defined]))
            assert ranks["map_at_2"][b] == pytest.approx(map_at_k(yb, pb, 2))


@pytest.mark.parametrize("edge, clearly", [(0.6, True), (0.0, False)])
def test_a_gain_is_clear_only_when_its_interval_is_above_zero(edge, clearly):
    """A model with a real edge beats every baseline clearly; one with none may beat a baseline on these
    posters by chance, but its gain's interval then reaches 0 and the report says so."""
    y, p = _scores_with_ties(400, 5, edge, seed=2)
    train = _scores_with_ties(400, 5, 0.0, seed=3)[0]
    r = evaluate_predictions(y, p, list("ABCDE"), fixed(5, 0.5), train)
    for key, v in r["versus_baselines"].items():
        low, high = v["gain_interval"]
        assert low < v["model"] - v["baseline"] < high, key
        assert v["clearly_beats"] == (v["beats"] and low > 0)
    for name, g in r["genres"].items():  # each genre's F1 against guessing it at random
        low, high = g["f1_gain_interval"]
        assert low < g["f1"] - g["random_f1"] < high, name
        assert g["clearly_beats_random"] == (g["beats_random"] and low > 0)
        assert g["clearly_beats_random"] or not clearly, name
    verdicts = [v["clearly_beats"] for v in r["versus_baselines"].values()]
    assert all(verdicts) if clearly else not any(v["clearly_beats"] for k, v in r["versus_baselines"].items()
                                                 if k in ("roc_auc_mean", "map"))
    again = evaluate_predictions(y, p, list("ABCDE"), fixed(5, 0.5), train)
    assert again["versus_baselines"] == r["versus_baselines"]  # a fixed seed: the same report every time


def test_the_console_summary_flags_a_gain_within_noise():
    from genrecls.evaluation import format_versus

    report = {"versus_baselines": {
        "f1_micro": {"model": 0.40, "baseline": 0.38, "baseline_name": "most common", "beats": True,
                     "gain_interval": [-0.01, 0.05], "clearly_beats": False},
        "f1_macro": {"model": 0.20, "baseline": 0.10, "baseline_name": "random", "beats": True,
                     "gain_interval": [0.05, 0.15], "clearly_beats": True},
        "map": {"model": 0.30, "baseline": 0.35, "baseline_name": "constant", "beats": False}}}  # an older run
    micro, macro, mean_ap = format_versus(report).splitlines()[1:]
    assert "+0.020 [-0.010, +0.050]" in micro and "within noise" in micro
    assert "+0.100 [+0.050, +0.150]" in macro and "<-" not in macro
    assert "does NOT beat" in mean_ap and "-0.050" in mean_ap


def test_the_per_genre_table_marks_an_f1_above_random_only_within_noise():
    from genrecls.evaluation import format_table
    from genrecls.report import genre_rows

    def genre(f1, beats, clearly):
        return {"precision": f1, "recall": f1, "f1": f1, "support": 5, "roc_auc": None, "average_precision": None,
                "threshold": 0.5, "ece": 0.0, "random_f1": 0.1, "most_common_f1": 0.0, "beats_random": beats,
                **({} if clearly is None else {"clearly_beats_random": clearly})}

    report = {"genres": {"Clear": genre(0.5, True, True), "Noisy": genre(0.15, True, False),
                         "Below": genre(0.05, False, False), "Old": genre(0.3, True, None)},  # a run from before
              "overall": {"posters": 9}, "policy": {"name": "global"}, "versus_baselines": {}}
    f1s = {cells[0]: cells[3] for cells, _ in genre_rows(report)}
    assert f1s == {"Clear": "0.500", "Noisy": "0.150 ≈", "Below": "0.050 ⚠", "Old": "0.300"}
    lines = {line.split()[0]: line for line in format_table(report).splitlines()[1:5]}
    assert lines["Noisy"].endswith("(within noise)") and lines["Below"].endswith("<= random")
    assert not lines["Clear"].endswith(("random", "noise)")) and not lines["Old"].endswith(("random", "noise)"))


def test_multiclass_decisions_and_view():
    assert argmax(3).decide(P).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    r = evaluate_predictions(Y, P, ["A", "B", "C"], argmax(3), TRAIN, true_class=np.array([0, 1, 1, 0]))
    assert r["genres"]["A"]["threshold"] is None
    view = r["multiclass_view"]
    assert view["accuracy"] == pytest.approx(3 / 4)  # argmax 0,2,1,0 against 0,1,1,0
    assert view["classes"]["B"]["recall"] == pytest.approx(0.5)


def test_thresholds_maximise_validation_f1():
    y_val = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    p_val = np.array([[0.35, 0.9], [0.3, 0.2], [0.2, 0.1], [0.1, 0.3]])
    thresholds = per_genre_thresholds(y_val, p_val, default=0.5)
    # 0.3 is the best cut (both positives, no false one); every threshold in (0.2, 0.3]
    # decides the same, and the midpoint keeps a margin on both sides
    assert thresholds[0] == pytest.approx(0.25)
    assert thresholds[1] == 0.5  # no positives in validation: the default stays


@pytest.fixture(scope="module")
def demo_run(demo_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ova"
    train(tiny_config(demo_dir, mode="ova", top_k=3, epochs=2), run)
    return run


def test_evaluate_run_uses_validation_for_thresholds_and_writes_report(demo_run, monkeypatch):
    seen = {}
    real_choose = report_module.choose_policy

    def spy(y_val, p_val, optimize):
        seen["n"], seen["optimize"] = len(y_val), optimize
        return real_choose(y_val, p_val, optimize)

    monkeypatch.setattr(report_module, "choose_policy", spy)
    report = evaluate_run(demo_run, optimize="macro")
    split = json.loads((demo_run / "split.json").read_text())
    assert seen == {"n": len(split["val"]), "optimize": "macro"}  # chosen on exactly the validation posters
    assert report["overall"]["posters"] == len(split["test"])
    thresholds = json.loads((demo_run / "thresholds.json").read_text())
    assert "validation" in thresholds["reason"] and thresholds["kind"] == report["policy"]["kind"]
    assert list(thresholds["thresholds"]) == list(report["genres"])
    assert [report["genres"][g]["threshold"] for g in report["genres"]] == list(thresholds["thresholds"].values())
    for name in ("genre_distribution.png", "training_curves.png", "f1_vs_random.png",
                 "precision_recall.png", "reliability.png", "confusion_matrices.png"):
        assert (demo_run / name).read_bytes()[:4] == b"\x89PNG", name
    md = (demo_run / "report.md").read_text()
    assert "| Action |" in md and "random F1" in md and "![Precision-recall curves](precision_recall.png)" in md
    saved = json.loads((demo_run / "metrics.json").read_text())
    assert saved["split"] == "test" and "multiclass_view" in saved and "map_at_3" in saved["overall"]

    glob = evaluate_run(demo_run, threshold=0.3, plots=False)
    assert all(m["threshold"] == pytest.approx(0.3) for m in glob["genres"].values())  # float32, as in the export


def test_evaluate_and_compare_cli(demo_run, tmp_path, capsys):
    assert main(["evaluate", str(demo_run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val split" in out and "micro F1" in out
    assert "optimistic" in (demo_run / "report.md").read_text()
    assert main(["compare", str(demo_run), str(demo_run), "--out", str(tmp_path)]) == 0
    assert "macro F1" in capsys.readouterr().out
    assert (tmp_path / "comparison.md").read_text().startswith(COMPARISON_HEAD + "| genre |")
    table = compare_runs([demo_run, demo_run])
    assert list(table.index[:3]) == json.loads((demo_run / "genres.json").read_text())["genres"]
    assert main(["compare", str(demo_run)]) == 1
    assert main(["evaluate", str(tmp_path)]) == 1
