"""The run folder: the one place that knows its layout.

    models/<run>/
      run.json           genrecls's claim on the folder: kind (run | search | shard), created, finished
      config.json        every setting plus library versions (`train --config` repeats the run)
      genres.json        the ordered genre vocabulary
      split.json         movie ids of the train / val / test splits
      model.keras        or ova/<NN_genre>.keras per member + ova/combined.keras
      history.csv        one row per epoch (a genre column for OvA)
      thresholds.json    the decision policy chosen on the validation split
      metrics.json       evaluation of one split (schema in the README)
      search.json        (a search folder) the settings and space a resumed search must match
      report.md, *.png   the human-readable report and its plots
      report.html        the same report in one self-contained page, with a poster gallery and Grad-CAM
      explain/           Grad-CAM overlays written by `genrecls explain` (unless --out names another folder)
      checkpoints/       per-fit history and a backup for resuming; trunk.keras with --trunk shared
                         (and trunk-<i>.keras, each trunk of --trunks N)
      features/          the frozen backbone's cached features (genrecls.features), unless --feature-store names another

A shard (`train --shard I/N`) is a run folder holding some OvA members (ova/, checkpoints/, no
combined model, never evaluated) until `genrecls combine` joins the shards into a run.

A folder is claimed fresh, resumed (same settings, not finished) or refused.
genrecls only ever deletes a folder that carries its own run.json, so
`--overwrite` can never remove a user's files or a dataset.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from pathlib import Path

from genrecls import __version__
from genrecls.config import RESUMABLE_CHANGES, TrainConfig
from genrecls.errors import GenreclsError
from genrecls.labels import GenreVocabulary

MARKER = "run.json"
CONFIG = "config.json"
GENRES = "genres.json"
SPLIT = "split.json"
POLICY = "thresholds.json"
METRICS = "metrics.json"
MODEL = "model.keras"
OVA = "ova"
COMBINED = "combined.keras"
TRUNK = "trunk.keras"  # the shared backbone of a run with --trunk shared
HISTORY = "history.csv"
REPORT = "report.md"
REPORT_HTML = "report.html"
EXPLAIN = "explain"
CHECKPOINTS = "checkpoints"
FEATURES = "features"  # the feature store of a run or search without --feature-store
SEARCH = "search.json"
SPLITS = ("train", "val", "test")
# where a claim records the settings it must resume with; a shard holds some OvA members of a run (train --shard)
SETTINGS = {"run": CONFIG, "search": SEARCH, "shard": CONFIG}


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


RETRAIN = "restore it, or train the run again into a new --out (or with --overwrite)"


def damaged(path: Path, what: str, problem, fix: str = RETRAIN) -> GenreclsError:
    """The one wording for a run file genrecls cannot use: which file, what is wrong, what to do."""
    return GenreclsError(f"{path} ({what}) is damaged: {problem}; {fix}")


def _read_json(path: Path, what: str, expect: type | None = dict, fix: str = RETRAIN):
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenreclsError(f"{path.parent} has no {path.name} ({what}); is it a finished genrecls run?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, what, exc, fix) from None
    if expect is not None and not isinstance(doc, expect):
        raise damaged(path, what, f"expected a JSON {'object' if expect is dict else expect.__name__}, "
                                  f"found {type(doc).__name__}", fix)
    return doc


def _write_json(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)  # never a half-written file


def _checked_config(path: Path, doc: dict) -> TrainConfig:
    try:
        return TrainConfig.from_json(doc)
    except GenreclsError as exc:
        raise damaged(path, "settings", exc) from None


def claim_outputs(out: Path, json_name: str, json_key: str, md_name: str, md_head: str) -> None:
    """Refuse to write a benchmark's OUT/NAME.json and NAME.md over files genrecls did not write.

    Ours: the JSON is an object holding `json_key`, the Markdown starts with `md_head`."""
    if out.exists() and not out.is_dir():
        raise GenreclsError(f"--out {out} is a file; name a folder for {json_name} and {md_name}")
    for path, ours in ((out / json_name, lambda text: json_key in _json_object(text)),
                       (out / md_name, lambda text: text.startswith(md_head))):
        if path.is_symlink() or path.is_dir() or \
                (path.exists() and not ours(path.read_text(encoding="utf-8", errors="replace"))):
            raise GenreclsError(f"{path} exists and genrecls did not write it; name another --out folder")


def _json_object(text: str) -> dict:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def save_keras(model, path: Path) -> Path:
    """model.save through a temporary name, so a kill never leaves a half-written model behind."""
    tmp = path.with_name(path.stem + ".partial.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def load_keras(path: Path):
    """A saved Keras model in safe mode (nothing is unpickled); a damaged file is named, not a traceback."""
    import zipfile

    import keras

    import genrecls.components  # noqa: F401  (registers the layers a run's model may hold)

    if not zipfile.is_zipfile(path):
        raise damaged(path, "a Keras model", "not a .keras archive")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except ValueError as exc:  # e.g. a Lambda layer, which safe mode refuses to unpickle
        raise GenreclsError(f"refusing to load {path}: {str(exc).splitlines()[0][:300]}") from None
    except (OSError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise damaged(path, "a Keras model", str(exc)[:200]) from None


def member_slug(j: int, genre: str) -> str:
    return f"{j:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', genre)}"


class RunFolder:
    """A genrecls run (or search) folder: claim it, then save and load its parts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = None  # claim(): True when it made the folder, False when it took an empty one

    def release(self) -> None:
        """Undo a fresh claim whose run failed before saving any progress (no checkpoint yet).

        Only what this claim wrote goes: the folder if it made it, else its contents.
        """
        if self.created is None or (self.checkpoints.is_dir() and any(self.checkpoints.iterdir())):
            return
        if self.created:
            shutil.rmtree(self.path)
        else:
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------- claiming

    @property
    def is_genrecls(self) -> bool:
        """True when the folder carries genrecls's own marker (a run.json of someone else's is not one)."""
        try:
            doc = json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(doc, dict) and "genrecls" in doc and doc.get("kind") in SETTINGS

    @property
    def is_legacy(self) -> bool:
        """A run trained before run folders carried a marker: readable, never overwritten."""
        return (not (self.path / MARKER).exists() and (self.path / CONFIG).is_file()
                and (self.path / GENRES).is_file() and (self.model_path.is_file() or self.combined_path.is_file()))

    @property
    def is_run(self) -> bool:
        """A folder genrecls can read as a run: its own, or one from before the marker."""
        return self.is_genrecls or self.is_legacy

    def marker(self) -> dict:
        if self.is_legacy:
            return {"kind": "run", "finished": True, "legacy": True}
        if (self.path / MARKER).exists() and not self.is_genrecls:
            raise GenreclsError(f"{self.path / MARKER} is damaged or genrecls did not write it, so genrecls "
                                "will neither read nor replace this folder; choose another folder")
        return _read_json(self.path / MARKER, "the run marker")

    @classmethod
    def claim(cls, path, config: TrainConfig | dict, overwrite: bool = False, kind: str = "run",
              versions: dict | None = None) -> "RunFolder":
        """A folder for a new run, or the unfinished run with the same settings (resume).

        Refuses a finished run, a run with other settings, and any non-empty
        folder genrecls did not create; `overwrite` replaces only a genrecls folder.
        """
        run = cls(path)
        settings = config.to_json() if isinstance(config, TrainConfig) else dict(config)
        if run.path.is_symlink() or (run.path.exists() and not run.path.is_dir()):
            raise GenreclsError(f"{run.path} is a file or a link, not a run folder; choose another --out")
        occupied = run.path.is_dir() and any(run.path.iterdir())
        if occupied and (run.path / MARKER).exists():
            run.marker()  # refuses a damaged or foreign marker, naming it
        if occupied and not run.is_genrecls:
            raise GenreclsError(f"{run.path} already holds files genrecls did not write; "
                                "choose another --out (genrecls never deletes folders it did not create)")
        if occupied and run.marker().get("kind") != kind:
            raise GenreclsError(f"{run.path} holds a genrecls {run.marker().get('kind')}, not a {kind}; "
                                "choose another --out")
        if occupied and overwrite:
            shutil.rmtree(run.path)
            occupied = False
        if occupied:
            if kind == "search":
                saved = run.load_search()
            else:  # checked, so a damaged config.json is named, not taken for "other settings"
                saved = _read_json(run.path / CONFIG, "settings")
                _checked_config(run.path / CONFIG, saved)
            saved.pop("versions", None)
            if run.marker().get("finished"):
                raise GenreclsError(f"{run.path} already holds a finished {kind}; pass --overwrite or another --out")
            changed = sorted(k for k in set(settings) | set(saved)
                             if k not in RESUMABLE_CHANGES and settings.get(k) != saved.get(k))
            if changed:
                raise GenreclsError(f"{run.path} holds an unfinished {kind} with other settings "
                                    f"({', '.join(changed)}); pass --overwrite or another --out")
            print(f"resuming the unfinished {kind} in {run.path}", flush=True)
        else:
            run.created = not run.path.exists()
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GenreclsError(f"cannot create {run.path}: {exc.strerror}; choose another --out") from None
            _write_json(run.path / MARKER, {"kind": kind, "genrecls": __version__, "created": _now(),
                                            "finished": False})
        _write_json(run.path / SETTINGS[kind], {**settings, **({"versions": versions} if versions else {})})
        return run

    @classmethod
    def await_claim(cls, path, kind: str = "search", timeout: float = 120.0) -> "RunFolder":
        """A folder another process (a distributed search's chief) is claiming: wait for its marker."""
        import time

        run, deadline = cls(path), time.monotonic() + timeout
        while not (run.is_genrecls and run.marker().get("kind") == kind):
            if time.monotonic() > deadline:
                raise GenreclsError(f"no genrecls {kind} appeared in {run.path} within {timeout:.0f} s; "
                                    "start the chief first, with the same --out")
            time.sleep(0.5)
        return run

    @classmethod
    def open(cls, path, finished: bool = True, kind: str = "run") -> "RunFolder":
        """An existing run (or shard) folder, checked to be one (and finished, unless told otherwise)."""
        run = cls(path)
        if not run.path.is_dir():
            raise GenreclsError(f"{run.path} is a file, not a run folder" if run.path.exists()
                                else f"run folder {run.path} does not exist")
        if not run.is_run and not (run.path / MARKER).exists():
            raise GenreclsError(f"{run.path} is not a genrecls run folder (no {MARKER})")
        marker = run.marker()
        if marker.get("kind") != kind:
            hint = "; join the shards into a run with 'genrecls combine OUT SHARD_RUN...'" \
                if marker.get("kind") == "shard" else ""
            raise GenreclsError(f"{run.path} is a genrecls {marker.get('kind')}, not a "
                                f"{'trained run' if kind == 'run' else kind}{hint}")
        if finished and not marker.get("finished"):
            raise GenreclsError(f"{run.path} holds an unfinished {kind}; re-run its train command to finish it")
        return run

    def mark_finished(self, seconds: float | None = None) -> None:
        _write_json(self.path / MARKER, {**self.marker(), "finished": True, "finished_at": _now(),
                                         **({"train_seconds": round(seconds, 1)} if seconds is not None else {})})

    @property
    def finished(self) -> bool:
        return self.is_run and bool(self.marker().get("finished"))

    # ------------------------------------------------------------- parts

    def load_config(self, data: str | None = None) -> TrainConfig:
        path = self.path / CONFIG
        doc = _read_json(path, "settings")
        return _checked_config(path, {**doc, "data": data} if data else doc)

    def load_search(self) -> dict:
        """The settings a search started with (its config and search_space), checked before a resume."""
        path, fix = self.path / SEARCH, "run with --overwrite to start a new search, or choose another --out"
        if not path.is_file():
            raise GenreclsError(f"{self.path} has no {SEARCH} (the search settings); {fix}")
        try:
            doc = _read_json(path, "the search settings", expect=None)
        except GenreclsError as exc:
            raise GenreclsError(f"{exc}; {fix}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("search_space"), dict):
            raise GenreclsError(f"{path} is damaged: it needs an object of settings with a search_space; {fix}")
        try:
            TrainConfig.from_json({k: v for k, v in doc.items() if k != "search_space"})
        except GenreclsError as exc:
            raise GenreclsError(f"{path} holds invalid settings ({exc}); {fix}") from None
        return doc

    def save_config(self, cfg: TrainConfig, versions: dict | None = None) -> None:
        _write_json(self.path / CONFIG, {**cfg.to_json(), **({"versions": versions} if versions else {})})

    def save_vocab(self, vocab: GenreVocabulary) -> None:
        vocab.save(self.path / GENRES)

    def load_vocab(self) -> GenreVocabulary:
        path = self.path / GENRES
        doc = _read_json(path, "the genre vocabulary")
        try:
            return GenreVocabulary.from_json(doc)
        except GenreclsError as exc:
            raise damaged(path, "the genre vocabulary", exc) from None

    def save_split(self, ids_by_part: dict) -> None:
        _write_json(self.path / SPLIT, {part: list(ids_by_part[part]) for part in SPLITS})

    def load_split(self) -> dict:
        doc = _read_json(self.path / SPLIT, "the split")
        bad = [p for p in SPLITS if not (isinstance(doc.get(p), list) and all(isinstance(i, str) for i in doc[p]))]
        if bad:
            raise damaged(self.path / SPLIT, "the split", f"no list of movie ids for {', '.join(bad)}")
        return doc

    def save_policy(self, policy, genres) -> None:
        _write_json(self.path / POLICY, policy.to_json(genres))

    def load_policy(self, genres):
        """The saved decision policy, or None when the run was never evaluated."""
        from genrecls.policies import Policy

        path = self.path / POLICY
        if not path.is_file():
            return None
        what, fix = "the decision policy", "run 'genrecls evaluate' on the run to choose it again"
        doc = _read_json(path, what, fix=fix)
        try:
            return Policy.from_json(doc, genres)
        except GenreclsError as exc:
            raise damaged(path, what, exc, fix) from None

    def save_metrics(self, report: dict) -> None:
        """The only writer of metrics.json (schema in the README)."""
        _write_json(self.path / METRICS, report)

    def load_metrics(self) -> dict:
        doc = _read_json(self.path / METRICS, "metrics; evaluate the run first")
        if not isinstance(doc, dict) or not {"genres", "overall"} <= set(doc):
            raise GenreclsError(f"{self.path / METRICS} is damaged: it lacks genres or overall")
        return doc

    # ------------------------------------------------------------ models

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def combined_path(self) -> Path:
        return self.path / OVA / COMBINED

    def member_path(self, j: int, genre: str) -> Path:
        (self.path / OVA).mkdir(exist_ok=True)
        return self.path / OVA / f"{member_slug(j, genre)}.keras"

    @property
    def trunk_path(self) -> Path:
        (self.path / CHECKPOINTS).mkdir(exist_ok=True)
        return self.path / CHECKPOINTS / TRUNK

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def features_path(self) -> Path:
        return self.path / FEATURES

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    def load_model(self):
        """The trained model (safe mode: nothing is unpickled), checked against the genre vocabulary."""
        for candidate in (self.model_path, self.combined_path):
            if candidate.exists():
                model = load_keras(candidate)
                genres = self.load_vocab().names
                outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
                if outputs != len(genres):
                    raise damaged(self.path / GENRES, "the genre vocabulary",
                                  f"it names {len(genres)} genres but {candidate.name} predicts {outputs}")
                return model
        raise GenreclsError(f"{self.path} holds no {MODEL} or {OVA}/{COMBINED}; is it a run folder?")

    def save_model(self, model, members: bool = False) -> Path:
        path = self.combined_path if members else self.model_path
        path.parent.mkdir(exist_ok=True)
        return save_keras(model, path)

    def clean_backups(self) -> None:
        """Drop the resume backups of a finished run (genrecls wrote them)."""
        shutil.rmtree(self.checkpoints / "backup", ignore_errors=True)
