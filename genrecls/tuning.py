"""Keras Tuner search over heads, dropout, learning rate and trainable layers.

Report 002 chose its head by random search over the second layer's width
(64..512 step 64) and whether a dropout layer is present. Here that search
space is the default, any part of it can be changed from a JSON (or YAML)
file, objectives carry an explicit direction (keras-tuner would guess "min"
for an F1), and trials on a frozen backbone train on cached features.

Distributed search uses keras-tuner's own chief/worker mode: set
KERASTUNER_TUNER_ID (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT and run the same command in every process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
from functools import partial
from pathlib import Path

import keras
import keras_tuner as kt
import pandas as pd
from keras_tuner.src import config as kt_config

from genrecls.config import TrainConfig
from genrecls.distribute import get_strategy, sync_batch_norm
from genrecls.errors import GenreclsError
from genrecls.heads import MAX_UNITS, build_head
from genrecls.models import build_model, compile_model, new_backbone, steps
from genrecls.modes import MEMBER, Mode, get_mode
from genrecls.preparation import Inputs, cached_features, prepare_data
from genrecls.runs import RunFolder, member_slug
from genrecls.text import TextEncoder
from genrecls.training import balanced_rows, imbalance_weights, member_sets, stopping_and_schedule

OBJECTIVES = {
    "val_loss": kt.Objective("val_loss", direction="min"),
    "val_f1_micro": kt.Objective("val_f1_micro", direction="max"),
    "val_f1_macro": kt.Objective("val_f1_macro", direction="max"),
}
ALGORITHMS = ("random", "hyperband")
MAX_FAILED_IN_A_ROW = 3  # keras-tuner stops a search after this many failed trials in a row
OVA_SCOPES = ("per-genre", "shared")

# A list is a choice, {"min", "max", "step"} a range, anything else a fixed value.
DEFAULT_SPACE = {
    "units": [512, {"min": 64, "max": 512, "step": 64}],  # report 002: tune the second width
    "dropout": [False, True],  # report 002: is there a dropout layer
    "dropout_rate": {"min": 0.1, "max": 0.5, "step": 0.1},
    "learning_rate": [1e-3, 3e-4, 1e-4],
    "fine_tune_last": [0],  # 0 keeps the backbone frozen, so trials train on cached features
    "text_width": [32, 64, 128],  # with --text: the text branch (ignored without text)
    "text_dropout": {"min": 0.2, "max": 0.6, "step": 0.1},
}
TEXT_KEYS = ("text_width", "text_dropout")


def default_space(cfg: TrainConfig) -> dict:
    """DEFAULT_SPACE with the config's --fine-tune-last, else -1 (all) for random weights."""
    space = copy.deepcopy(DEFAULT_SPACE)
    if cfg.fine_tune_last is not None:
        space["fine_tune_last"] = [cfg.fine_tune_last]
    elif cfg.weights is None:
        space["fine_tune_last"] = [-1]
    return space


def load_space(path: str | os.PathLike | None, cfg: TrainConfig) -> dict:
    """The default space for this config, updated with a JSON or YAML file's keys (checked)."""
    space = default_space(cfg)
    if path is None:
        return space
    if not Path(path).is_file():
        raise GenreclsError(f"search space file {path} does not exist or is not a file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenreclsError(f"cannot read search space {path}: {exc}") from None
    if str(path).endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise GenreclsError("reading a YAML search space needs PyYAML; use JSON or pip install pyyaml") from None
        try:
            given = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GenreclsError(f"cannot parse search space {path}: {str(exc).splitlines()[0]}") from None
    else:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenreclsError(f"cannot parse search space {path} as JSON: {exc}") from None
    if not isinstance(given, dict):
        raise GenreclsError(f"search space {path} must be a mapping of keys ({', '.join(DEFAULT_SPACE)}), "
                            f"not {'null' if given is None else type(given).__name__}")
    unknown = set(given) - set(DEFAULT_SPACE)
    if unknown:
        raise GenreclsError(f"search space {path}: unknown search-space keys {sorted(unknown)}; "
                            f"known: {sorted(DEFAULT_SPACE)}")
    space.update(given)
    check_space(space, f"search space {path}")
    return space


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What one value of each key must be (the ranges TrainConfig accepts for the same setting).
VALUES = {
    "units": (lambda v: _whole(v) and 0 < v <= MAX_UNITS, f"a whole number in [1, {MAX_UNITS}]"),
    "dropout": (lambda v: isinstance(v, bool), "true or false"),
    "dropout_rate": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "learning_rate": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "fine_tune_last": (lambda v: _whole(v) and v >= -1, "a whole number >= -1 (-1: every layer)"),
    "text_width": (lambda v: _whole(v) and 0 < v <= 4096, "a whole number in [1, 4096]"),
    "text_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def _need(ok, what: str, value, where: str) -> None:
    if not ok(value):
        hint = " (a quoted number? YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
        raise GenreclsError(f"{where} must be {what}, not {value!r}{hint}")


def check_space(space: dict, source: str = "the search space") -> None:
    """Refuse a space keras-tuner would fail on (or, worse, search wrongly), naming the key."""
    missing = set(DEFAULT_SPACE) - set(space)
    if missing:
        raise GenreclsError(f"{source}: missing keys {sorted(missing)}")
    if not isinstance(space["units"], list):
        raise GenreclsError(f'{source}: units must be a list with one spec per hidden layer '
                            f'(e.g. [[64, 128]] or [{{"min": 64, "max": 512}}]), not {space["units"]!r}')
    specs = [(f"units[{i}]", "units", spec) for i, spec in enumerate(space["units"])]
    specs += [(key, key, space[key]) for key in DEFAULT_SPACE if key != "units"]
    for name, key, spec in specs:
        ok, what = VALUES[key]
        where = f"{source}: {name}"
        if isinstance(spec, list):
            if not spec:
                raise GenreclsError(f"{where} is an empty list of choices")
            for value in spec:
                _need(ok, what, value, where)
        elif isinstance(spec, dict):
            if key == "dropout" or set(spec) - {"min", "max", "step"} or not {"min", "max"} <= set(spec):
                raise GenreclsError(f"{where} must be a value, a list of choices"
                                    f"{'' if key == 'dropout' else ' or a range {min, max, step}'}, not {spec!r}")
            _need(ok, what, spec["min"], f"{where}.min")
            _need(ok, what, spec["max"], f"{where}.max")
            if spec["min"] > spec["max"]:
                raise GenreclsError(f"{where}.min ({spec['min']}) is above {name}.max ({spec['max']})")
            whole = key in ("units", "fine_tune_last", "text_width")
            if spec.get("step") is not None:
                _need(lambda v: (_whole(v) if whole else _number(v)) and v > 0,
                      f"a positive {'whole ' if whole else ''}number", spec["step"], f"{where}.step")
        else:
            _need(ok, what, spec, where)


def _hp(hp: kt.HyperParameters, name: str, spec):
    """One hyperparameter from its spec in the space file."""
    if isinstance(spec, list):
        if sorted(map(str, spec)) == ["False", "True"]:
            return hp.Boolean(name)
        if any(isinstance(v, float) for v in spec):  # keras-tuner refuses a choice of ints and floats
            spec = [float(v) for v in spec]
        return hp.Choice(name, spec)
    if isinstance(spec, dict):
        bounds = (spec["min"], spec["max"], spec.get("step"))
        if all(isinstance(v, int) for v in bounds if v is not None):
            return hp.Int(name, spec["min"], spec["max"], step=spec.get("step") or 1)
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"))
    return hp.Fixed(name, spec)


def head_settings(hp: kt.HyperParameters, space: dict, text: bool = False) -> dict:
    """Head widths, dropout rate, learning rate and trainable layers of one trial (and its text branch)."""
    units = tuple(_hp(hp, f"units_{i}", spec) for i, spec in enumerate(space["units"]))
    dropout = 0.0
    if _hp(hp, "dropout", space["dropout"]):
        with hp.conditional_scope("dropout", [True]):
            dropout = _hp(hp, "dropout_rate", space["dropout_rate"])
    return {
        "head": list(units), "dropout": float(dropout),
        "learning_rate": float(_hp(hp, "learning_rate", space["learning_rate"])),
        "fine_tune_last": int(_hp(hp, "fine_tune_last", space["fine_tune_last"])),
        **({"text_width": int(_hp(hp, "text_width", space["text_width"])),
            "text_dropout": float(_hp(hp, "text_dropout", space["text_dropout"]))} if text else {}),
    }


class GenreHyperModel(kt.HyperModel):
    """Builds one trial's model: a head on cached features, or backbone + head.

    steps_per_epoch: the training batches per epoch, so a cosine schedule decays over the fit's steps
    as it does in training (the OvA members' shared search passes each member's own to `build_for`)."""

    def __init__(self, cfg: TrainConfig, space: dict, mode: Mode, outputs: int, feature_dim: int | None,
                 pos_weight=None, text: TextEncoder | None = None, steps_per_epoch: int | None = None):
        super().__init__()
        self.cfg, self.space, self.mode, self.outputs = cfg, space, mode, outputs
        self.feature_dim, self.pos_weight, self.text = feature_dim, pos_weight, text
        self.steps_per_epoch = steps_per_epoch

    def build(self, hp):
        return self.build_for(hp, self.steps_per_epoch)

    def build_for(self, hp, steps_per_epoch: int | None):
        s = head_settings(hp, self.space, self.text is not None)
        branch = None if self.text is None else partial(self.text.branch, width=s["text_width"],
                                                         dropout=s["text_dropout"])
        if self.feature_dim is not None:
            model = build_head(self.feature_dim, self.outputs, self.mode.activation, s["head"], s["dropout"],
                               text_branch=branch)
            sync_batch_norm(model)
        else:
            model = build_model(self.cfg, self.outputs, self.mode.activation, head=s["head"], dropout=s["dropout"],
                                backbone=new_backbone(self.cfg, s["fine_tune_last"]), text=branch).full
        compile_model(model, self.mode, self.cfg, s["learning_rate"], self.pos_weight, steps_per_epoch)
        return model


class TrialLog:
    """Prints which process runs which trial: progress output, and a record for distributed runs."""

    def on_trial_begin(self, trial):
        print(f"trial {trial.trial_id} started by {self.tuner_id}", flush=True)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        if trial.status != "COMPLETED":  # one line here; keras-tuner's traceback printing is off
            print(f"trial {trial.trial_id} failed: {trial_error(trial, self.oracle.objective.name)}", flush=True)
        super().on_trial_end(trial)


class RandomSearch(TrialLog, kt.RandomSearch):
    pass


class Hyperband(TrialLog, kt.Hyperband):
    def _build_hypermodel(self, hp):
        """A trial promoted to a later round is built again and reloads its weights (keras-tuner); its
        optimizer resumes at the step that round starts from, so a cosine schedule goes on where it was."""
        model = super()._build_hypermodel(hp)
        done = hp.values.get("tuner/initial_epoch", 0) * (getattr(self.hypermodel, "steps_per_epoch", None) or 0)
        if done:
            model.optimizer.build(model.trainable_variables)
            model.optimizer.iterations.assign(done)
        return model


class SharedOvARandomSearch(TrialLog, kt.RandomSearch):
    """One hyperparameter set for every OvA member: a trial trains all of them.

    The trial's score is the mean over members of each member's best epoch,
    which keras-tuner computes from the list of histories.
    """

    def run_trial(self, trial, member_data, epochs, callbacks, verbose=0):
        histories = []
        for _ in range(self.executions_per_trial):
            for train_ds, val_ds, weights, member_steps in member_data:
                keras.backend.clear_session()  # keep memory flat across members and trials
                with self.distribution_strategy.scope() if self.distribution_strategy else contextlib.nullcontext():
                    model = self.hypermodel.build_for(trial.hyperparameters, member_steps)
                histories.append(model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=weights,
                                           callbacks=callbacks, shuffle=False, verbose=verbose))
        return histories


def is_worker() -> bool:
    """True in a distributed search's worker process (only the chief reports)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")


def _tuner(cls, hypermodel, objective, algorithm, max_trials, executions, epochs, directory, project, overwrite, seed,
           strategy=None):
    common = dict(objective=objective, directory=str(directory), project_name=project, overwrite=overwrite,
                  seed=seed, max_consecutive_failed_trials=MAX_FAILED_IN_A_ROW, distribution_strategy=strategy)
    project_dir = Path(directory) / project
    resuming = not overwrite and (project_dir / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json").exists()
    try:
        if algorithm == "hyperband":
            return Hyperband(hypermodel, max_epochs=epochs, executions_per_trial=executions, **common)
        return cls(hypermodel, max_trials=max_trials, executions_per_trial=executions, **common)
    except Exception as exc:  # resuming, the constructor only reloads keras-tuner's json files
        if not resuming:
            raise
        raise GenreclsError(f"cannot resume the search in {project_dir}: keras-tuner's files there are damaged "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                            "run with --overwrite to start a new search") from None


def tune(
    cfg: TrainConfig,
    out: str | os.PathLike,
    max_trials: int = 10,
    executions_per_trial: int = 1,
    objective: str = "val_loss",
    algorithm: str = "random",
    space: dict | None = None,
    ova_scope: str = "per-genre",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Run the search; write trials.csv and the best settings (a train config) into `out`.

    Re-running the same call continues from the trials already done
    (overwrite=True starts again). Returns the trial table.
    """
    if cfg.shard:
        raise GenreclsError(f"tune searches a whole run, not shard {cfg.shard}; drop shard from the config")
    if objective not in OBJECTIVES:
        raise GenreclsError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if algorithm not in ALGORITHMS:
        raise GenreclsError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    if ova_scope not in OVA_SCOPES:
        raise GenreclsError(f"OvA scope must be one of {', '.join(OVA_SCOPES)}, not {ova_scope!r}")
    mode = get_mode(cfg.mode)
    if mode.members and ova_scope == "shared" and algorithm == "hyperband":
        raise GenreclsError("the shared OvA search supports --algorithm random only")
    if mode.members and ova_scope == "per-genre" and "KERASTUNER_ORACLE_IP" in os.environ:
        raise GenreclsError("a distributed OvA search needs --ova-scope shared (one search for all genres)")
    if max_trials < 1 or executions_per_trial < 1:
        raise GenreclsError("--max-trials and --executions-per-trial must be at least 1")
    if cfg.freeze_until is not None:
        raise GenreclsError("tune searches the trainable layers as fine_tune_last; drop --freeze-until")
    if cfg.distribute == "multiworker":
        raise GenreclsError("tune does not run under --distribute multiworker: spread the trials over machines with "
                            "keras-tuner's distributed search (KERASTUNER_* variables, see the README), and use "
                            "--distribute mirrored for the GPUs of each machine")
    # every trial's model is built in the strategy's scope (keras-tuner's distribution_strategy)
    strategy = get_strategy(cfg.distribute) if cfg.distribute != "none" else None
    space = space or default_space(cfg)
    check_space(space)
    if is_worker():  # the chief claims the folder; workers only add trials to it
        folder = RunFolder.await_claim(out)
    else:
        folder = RunFolder.claim(out, {**cfg.to_json(), "search_space": space}, overwrite, kind="search")
    keras.utils.set_random_seed(cfg.seed)
    kt_config.DEBUG = False  # else keras-tuner prints each failed trial's traceback; trial_error keeps its line

    data = prepare_data(cfg)
    T = data.targets(cfg.mode)
    choices = space["fine_tune_last"]
    frozen = (choices if isinstance(choices, list) else [choices]) == [0]
    use_features = frozen and not cfg.augment and cfg.freeze_until is None and cfg.cache_features
    features = None
    if use_features:  # every trial (and a resumed search) reads the features from the store
        backbone, _ = new_backbone(cfg, fine_tune_last=0)  # frozen
        features = cached_features(cfg, data, backbone, folder.features_path)
    inputs = Inputs(cfg, data.paths, features, data.texts)
    train_idx = inputs.usable(data.split.train)  # OvA members draw their own balanced sets from it
    val_idx = inputs.usable(data.split.val)
    text = TextEncoder(data.texts[train_idx], cfg.text_width, cfg.text_dropout) if cfg.text else None
    feature_dim = features.dim if use_features else None
    stop = stopping_and_schedule(cfg)  # as the run trains: early stopping, and the plateau schedule if asked
    directory = folder / "tuner"
    target = OBJECTIVES[objective]

    def search(tuner, *args, **kwargs):
        try:
            tuner.search(*args, **kwargs)
        except RuntimeError as exc:  # keras-tuner gives up after MAX_FAILED_IN_A_ROW failed trials
            if "consecutive failures" not in str(exc):
                raise
            print(f"search stopped: {MAX_FAILED_IN_A_ROW} trials in a row failed", flush=True)
        return tuner

    tuners = {}
    if not mode.members:
        train_idx = balanced_rows(cfg, data.strata, train_idx)
        pos_weight, weights = imbalance_weights(cfg, mode, T[train_idx], data.strata[train_idx])
        model = GenreHyperModel(cfg, space, mode, T.shape[1], feature_dim, pos_weight, text,
                                steps(len(train_idx), cfg.batch_size))
        tuner = _tuner(RandomSearch, model, target, algorithm, max_trials, executions_per_trial,
                       cfg.epochs, directory, "search", overwrite, cfg.seed, strategy)
        tuners["all"] = search(tuner, inputs.dataset(train_idx, T[train_idx], True),
                               validation_data=inputs.dataset(val_idx, T[val_idx], False),
                               epochs=cfg.epochs, callbacks=stop, class_weight=weights, shuffle=False, verbose=0)
    else:
        members = []
        for j, genre in enumerate(data.vocab.names):
            tr, y_tr, va, y_va, weights = member_sets(cfg, T, train_idx, val_idx, j)
            members.append((genre, inputs.dataset(tr, y_tr[:, None], True),
                            inputs.dataset(va, y_va[:, None], False), weights, steps(len(tr), cfg.batch_size)))
        if ova_scope == "shared":
            model = GenreHyperModel(cfg, space, MEMBER, 1, feature_dim, text=text)  # each member's steps: build_for
            tuner = _tuner(SharedOvARandomSearch, model, target, algorithm, max_trials, executions_per_trial,
                           cfg.epochs, directory, "shared", overwrite, cfg.seed, strategy)
            tuners["all"] = search(tuner, [m[1:] for m in members], epochs=cfg.epochs, callbacks=stop)
        else:
            for j, (genre, train_ds, val_ds, weights, member_steps) in enumerate(members):
                print(f"[{j + 1}/{len(members)}] searching the {genre} member", flush=True)
                own = GenreHyperModel(cfg, space, MEMBER, 1, feature_dim, text=text, steps_per_epoch=member_steps)
                tuner = _tuner(RandomSearch, own, target, algorithm, max_trials, executions_per_trial,
                               cfg.epochs, directory, member_slug(j, genre), overwrite, cfg.seed + j, strategy)
                tuners[genre] = search(tuner, train_ds, validation_data=val_ds, epochs=cfg.epochs,
                                       callbacks=stop, class_weight=weights, shuffle=False, verbose=0)
    if is_worker():
        print("worker finished: the chief writes the results", flush=True)
        return pd.DataFrame()
    table = trial_table(tuners, objective)
    table.to_csv(folder / "trials.csv", index=False)
    report_failures(table)
    folder.save_config(best_config(cfg, tuners, space))
    return table


def trial_error(trial, objective: str) -> str:
    """Why a trial failed, in one line: the exception line of its traceback ("" when it completed)."""
    if trial.status == "COMPLETED":
        return ""
    if not trial.message:  # keras-tuner fails a trial whose score is NaN without a message
        return f"{objective} was NaN" if trial.status == "FAILED" else f"trial ended {trial.status}"
    lines = trial.message.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    after = [line for line in lines[frames[-1] + 1 if frames else 0:] if line and not line.startswith(" ")]
    return (after[0] if after else lines[-1]).strip()[:300]


def trial_table(tuners: dict, objective: str) -> pd.DataFrame:
    """One row per trial: scope (genre or all), trial id, status, hyperparameters, score, error."""
    rows = []
    for scope, tuner in tuners.items():
        for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
            rows.append({"scope": scope, "trial": trial.trial_id, "status": trial.status,
                         **trial.hyperparameters.values, objective: trial.score,
                         "error": trial_error(trial, objective)})
    table = pd.DataFrame(rows)
    fixed = ["scope", "trial", "status"]
    hps = sorted(c for c in table.columns if c not in fixed and c not in (objective, "error"))
    return table[fixed + hps + [objective, "error"]] if rows else table


def report_failures(table: pd.DataFrame) -> None:
    """Print how many trials failed and why; refuse a search (or OvA member) with no completed trial."""
    if table.empty:
        return
    for scope, rows in table.groupby("scope", sort=False):
        failed = rows[rows["status"] != "COMPLETED"]
        if failed.empty:
            continue
        of = "" if scope == "all" else f" of the {scope} member"
        print(f"{len(failed)} of {len(rows)} trials{of} failed:", flush=True)
        for error, same in failed.groupby("error", sort=False):
            print(f"  trial {', '.join(map(str, same['trial']))}: {error}", flush=True)
        if len(failed) == len(rows):
            raise GenreclsError(f"all {len(rows)} trials{of} failed: {failed['error'].iloc[0]}; "
                                "nothing written as best settings (trials.csv lists the trials; fix the cause, then "
                                "pass --overwrite to search again)")


def best_config(cfg: TrainConfig, tuners: dict, space: dict) -> TrainConfig:
    """The training config with the best trial's settings (per genre for a per-genre OvA search)."""
    def settings(tuner):
        best = tuner.oracle.get_best_trials(1)  # a failed trial when none completed
        if not best or best[0].status != "COMPLETED":
            raise GenreclsError("no trial completed; see the trial errors above")
        return head_settings(best[0].hyperparameters, space, bool(cfg.text))

    fields = {}
    if set(tuners) == {"all"}:
        s = settings(tuners["all"])
        fields = {"head": s["head"], "dropout": s["dropout"], "learning_rate": s["learning_rate"],
                  "fine_tune_last": s["fine_tune_last"], **{k: s[k] for k in TEXT_KEYS if k in s}}
    else:
        chosen = {genre: settings(t) for genre, t in tuners.items()}
        fields["member_overrides"] = {
            genre: {k: v for k, v in s.items() if k != "fine_tune_last"} for genre, s in chosen.items()
        }
        # trainable layers are one setting for the whole ensemble: the most common choice
        tuned = [s["fine_tune_last"] for s in chosen.values()]
        fields["fine_tune_last"] = max(set(tuned), key=tuned.count)
    return dataclasses.replace(cfg, **fields)


def format_trials(table: pd.DataFrame, objective: str) -> str:
    if table.empty:
        return "no trials"
    direction = OBJECTIVES[objective].direction
    shown = table.drop(columns="error", errors="ignore")  # report_failures prints the errors
    shown = shown.sort_values(["scope", objective], ascending=[True, direction == "min"], na_position="last")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
