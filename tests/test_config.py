"""TrainConfig: validated where it is built and loaded, no TensorFlow, the CLI's single source."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from genrecls.config import TrainConfig, default
from genrecls.errors import GenreclsError
from genrecls.modes import MODES, get_mode
from tests.helpers import REPO


def test_importing_config_does_not_import_tensorflow():
    code = ("import sys, genrecls.config, genrecls.runs, genrecls.modes, genrecls.policies; "
            "print([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("bad, message", [
    ({"learning_rate": -1}, "learning-rate must be a number in"),
    ({"learning_rate": math.nan}, "learning-rate must be a number in"),
    ({"learning_rate": math.inf}, "learning-rate must be a number in"),
    ({"top_k": -1}, "top-k must be an integer >= 1"),
    ({"top_k": 2.5}, "top-k must be an integer"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"batch_size": True}, "batch-size must be an integer"),
    ({"dropout": 1.0}, "dropout must be a number in \\[0, 1\\)"),
    ({"positive_share": 0}, "positive-share must be a number in \\(0, 1\\)"),
    ({"split": [0.5, 0.5, 0.5]}, "split must be three fractions"),
    ({"mode": "regression"}, "mode must be one of multiclass, multilabel, ova"),
    ({"loss": "hinge"}, "loss must be one of bce, focal, soft-f1"),
    ({"optimize": "accuracy"}, "optimize must be one of"),
    ({"head": "wide"}, "head 'wide' is neither a preset"),
    ({"head": "99999999"}, "head widths must be whole numbers in \\[1, 16384\\]"),
    ({"augment": "yes"}, "augment must be true or false"),
    ({"member_overrides": {"Drama": {"depth": 3}}}, "member-overrides of Drama must be a mapping with keys"),
    ({"fine_tune_last": 3, "freeze_until": 2}, "either --fine-tune-last or --freeze-until"),
])
def test_every_bad_value_fails_when_built_and_when_loaded(bad, message, tmp_path):
    with pytest.raises(GenreclsError, match=message):
        TrainConfig(data=str(tmp_path), **bad)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": str(tmp_path), **bad}, allow_nan=True))
    with pytest.raises(GenreclsError, match=message):
        TrainConfig.load(path)


def test_round_trip_defaults_and_damaged_files(tmp_path):
    cfg = TrainConfig(data=str(tmp_path), backbone="simple", head="small")
    assert (cfg.weights, cfg.image_size, cfg.head) == (None, 64, (128, 64))
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert default("learning_rate") == 1e-3 and default("split") == (0.7, 0.15, 0.15)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenreclsError, match="cannot read config"):
        TrainConfig.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GenreclsError, match="JSON object"):
        TrainConfig.load(tmp_path / "list.json")


def test_mode_registry_records():
    assert set(MODES) == {"multiclass", "multilabel", "ova"}
    assert [m.activation for m in MODES.values()] == ["softmax", "sigmoid", "sigmoid"]
    assert [m.name for m in MODES.values() if m.members] == ["ova"]
    assert get_mode("multiclass").default_policy(3).kind == "argmax"
    import numpy as np

    Y = np.array([[1, 1, 0], [0, 1, 0]], "float32")
    assert get_mode("multiclass").targets(Y, np.array([0, 1])).tolist() == [[1, 0, 0], [0, 1, 0]]
    assert get_mode("multilabel").targets(Y, np.array([0, 1])) is Y
    with pytest.raises(GenreclsError, match="unknown mode"):
        get_mode("member")


def test_cli_choices_and_defaults_come_from_config(capsys):
    from genrecls.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{multiclass,multilabel,ova}" in text and "{bce,focal,soft-f1}" in text
    assert f"Adam learning rate [{default('learning_rate')}]" in text
    assert f"[{default('patience')}]" in text


def test_calibration_defaults_to_the_modes_and_a_choice_is_kept(tmp_path):
    """OvA's independently fitted members get Platt scaling by default; the other modes the prior correction."""
    made = {mode: TrainConfig(data=str(tmp_path), mode=mode).calibration for mode in MODES}
    assert made == {"multiclass": "prior", "multilabel": "prior", "ova": "platt"}
    assert TrainConfig(data=str(tmp_path), mode="ova", calibration="prior").calibration == "prior"
    cfg = TrainConfig(data=str(tmp_path), mode="ova")
    assert TrainConfig.from_json(cfg.to_json()).calibration == "platt"  # saved resolved: a run keeps its own
    assert TrainConfig.from_json({**cfg.to_json(), "calibration": "prior"}).calibration == "prior"  # runs saved before
    with pytest.raises(GenreclsError, match="calibration must be one of none, prior, platt"):
        TrainConfig(data=str(tmp_path), calibration="isotonic")


def test_a_config_saved_with_the_old_ova_trunk_setting_still_loads(tmp_path):
    old = TrainConfig.from_json({"data": str(tmp_path), "ova_trunk": "separate"})
    assert old.trunk == "end-to-end"
    assert TrainConfig.from_json({"data": str(tmp_path), "ova_trunk": "shared"}).trunk == "shared"
    with pytest.raises(GenreclsError, match="trunk must be one of end-to-end, shared"):
        TrainConfig.from_json({"data": str(tmp_path), "ova_trunk": "sideways"})


def test_trunks_need_a_shared_trunk_and_a_bound(tmp_path):
    assert TrainConfig(data=str(tmp_path), trunk="shared", trunks=3).trunks == 3
    with pytest.raises(GenreclsError, match="needs --trunk shared"):
        TrainConfig(data=str(tmp_path), trunks=2)  # end to end: there is no shared trunk to repeat
    for bad in (0, 9, 2.5, "two"):
        with pytest.raises(GenreclsError, match="trunks must be an integer"):
            TrainConfig(data=str(tmp_path), trunk="shared", trunks=bad)


def test_a_setting_added_later_counts_as_unchanged_at_its_default(tmp_path):
    cfg = TrainConfig(data=str(tmp_path))
    saved = {k: v for k, v in cfg.to_json().items() if k != "trunks"}  # a run saved before --trunks existed
    assert cfg.changed_from(saved) == []
    assert TrainConfig(data=str(tmp_path), trunk="shared", trunks=2).changed_from(saved) == ["trunk", "trunks"]


def test_text_settings_are_checked_where_they_enter(tmp_path):
    assert TrainConfig(data=str(tmp_path), text="title, plot").text == ["title", "plot"]
    for bad in ({"text_width": 0}, {"text_dropout": 1.0}, {"text": ["title", "title"]}, {"text": 3},
                {"backbone": "none"}):
        with pytest.raises(GenreclsError):
            TrainConfig(data=str(tmp_path), **bad)
    text_only = TrainConfig(data=str(tmp_path), backbone="none", text=["title"], augment=True)
    assert text_only.image_size is None and text_only.weights is None and not text_only.augment
