"""TrainConfig: every setting of a run, its defaults and their validation.

The one home of the training defaults and choices: the CLI reads its
choices and the defaults it shows from here. Importing this module does not
import TensorFlow, so a bad value fails at once with a clear message, before
any poster is read or any feature computed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field

from genrecls.backbones import BACKBONES, get_spec, normalize_weights
from genrecls.distribute import STRATEGIES
from genrecls.errors import GenreclsError
from genrecls.modes import MODES
from genrecls.policies import OPTIMIZE

FORMATS = ("movielens", "letterboxd", "kaggle", "csv")
BALANCE_METHODS = ("undersample", "oversample")
CLASS_WEIGHT_METHODS = ("balanced", "log")
COLLAPSE_RULES = ("least", "most")
RESIZE_MODES = ("pad", "crop")
LOSSES = ("bce", "focal", "soft-f1")
CALIBRATIONS = ("none", "prior", "platt")  # prior: undo balanced sets / class weights; platt: then fit on validation
LR_SCHEDULES = ("constant", "cosine", "plateau")  # plateau: Keras ReduceLROnPlateau on val_loss
PLATEAU_FACTOR = 0.3  # --lr-schedule plateau: the rate's factor each time the validation loss stalls
NO_BACKBONE = "none"  # --backbone none: a text-only model (needs --text)
BACKBONE_CHOICES = (*BACKBONES, NO_BACKBONE)
# With a trainable backbone: train it end to end with the head (OvA: one network per genre, report 002), or
# in two stages: a shared trunk trained on all genres first, then frozen, and the mode's head (each OvA
# member's, with the text branch when there is text) fitted on its cached features.
TRUNKS = ("end-to-end", "shared")
MAX_TRUNKS = 8  # --trunks N: shared trunks, trunk i's training draws from seed + i, their features side by side
# OvA members on cached features: all in one fit (the default: each member still trains exactly as its own
# fit would, README "Training modes"), or one fit each (always so for text branches, soft F1, a schedule)
OVA_FITS = ("one", "members")
DISTRIBUTE = tuple(STRATEGIES)  # none | mirrored (local GPUs) | multiworker (the machines in TF_CONFIG)
# Settings a resumed run may change: how it reports and where it runs, not what it learns.
RESUMABLE_CHANGES = ("verbose", "distribute")
DEFAULT_THRESHOLD = 0.5
# Posters above this many pixels are refused before decoding (a 20000x20000 PNG decodes into 1.2 GB);
# the largest real posters are about 4000x6000.
MAX_PIXELS = 50_000_000
DEMO_PER_GENRE = (10, 5000)  # demo-data: every split gets every genre; at most 35,000 posters
MEMBER_KEYS = ("head", "dropout", "learning_rate", "text_width", "text_dropout")
# Rows per shard of the feature store (genrecls.features): 4096 x 1280 EfficientNet features is 21 MB a shard,
# the most extraction holds in memory at once; `genrecls features --shard I/N` hands out whole shards.
FEATURE_SHARD_ROWS = 4096

# Named starting points (`genrecls train --recipe NAME`, `make train-* WEIGHTS=none`, `genrecls quality`);
# options given on the command line override them. "scratch" is the measured recipe for a user without
# pretrained weights on a CPU (README, "Quality"); "report002" is report 002's pretrained setting.
RECIPES = {
    "scratch": dict(backbone="simple", weights=None, image_size=128, head=(256,), dropout=0.5, augment=True,
                    batch_size=32, epochs=40, patience=6, trunk="shared"),
    "report002": dict(backbone="efficientnetv2b0", weights="imagenet", image_size=224, head=(512, 256),
                      batch_size=128, epochs=10, patience=3, trunk="end-to-end"),
}


def _fail(name: str, value, want: str):
    raise GenreclsError(f"{name.replace('_', '-')} must be {want}, not {value!r}")


def _int(lo=None, hi=None, optional=False):
    def check(name, value):
        if value is None and optional:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or \
                (lo is not None and value < lo) or (hi is not None and value > hi):
            _fail(name, value, f"an integer{'' if lo is None else f' >= {lo}'}{'' if hi is None else f' <= {hi}'}")
        return value
    return check


def _float(lo, hi, lo_open=False, hi_open=False):
    def check(name, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok:
            _fail(name, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
        return float(value)
    return check


def _choice(options, optional=False):
    def check(name, value):
        if value is None and optional:
            return None
        if value not in options:
            _fail(name, value, "one of " + ", ".join(map(str, options)))
        return value
    return check


def _bool(name, value):
    if not isinstance(value, bool):
        _fail(name, value, "true or false")
    return value


def _text(optional=False):
    def check(name, value):
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            _fail(name, value, "a non-empty string")
        return value
    return check


def _genres(name, value):
    if value is None:
        return None
    if isinstance(value, str):
        value = [g.strip() for g in value.split(",") if g.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(g, str) and g for g in value):
        _fail(name, value, "a non-empty list of genre names")
    return list(value)


def _split(name, value):
    try:
        parts = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(p) and 0 < p < 1 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        _fail(name, value, "three fractions (train, val, test) in (0, 1) that sum to 1")
    return parts


def _head(name, value):
    from genrecls.heads import parse_units  # no TensorFlow at import either

    return parse_units(value)


def _dict(name, value):
    if value is None:
        return None
    if not isinstance(value, dict):
        _fail(name, value, "a mapping")
    return value


def _member_overrides(name, value):
    if value is None:
        return None
    if not isinstance(value, dict):
        _fail(name, value, "a mapping of genre -> {head, dropout, learning_rate}")
    checked = {}
    for genre, own in value.items():
        if not isinstance(own, dict) or set(own) - set(MEMBER_KEYS):
            _fail(f"{name} of {genre}", own, "a mapping with keys " + ", ".join(MEMBER_KEYS))
        checked[genre] = {k: list(RULES[k](k, v)) if k == "head" else RULES[k](k, v) for k, v in own.items()}
    return checked


def _shard(name, value):
    if value is None:
        return None
    i, n = parse_shard(value)
    return f"{i}/{n}"


def _text_columns(name, value):
    from genrecls.datasets import text_columns  # no TensorFlow at import either

    return text_columns(value)


def _verbose(name, value):
    if value not in ("auto", 0, 1, 2):
        _fail(name, value, "auto, 0, 1 or 2")
    return value


RULES = {
    "data": _text(),
    "mode": _choice(tuple(MODES)),
    "format": _choice(FORMATS, optional=True),
    "csv_options": _dict,
    "genre_sep": _text(),
    "max_pixels": _int(1),
    "genres": _genres,
    "top_k": _int(1, optional=True),
    "other": _bool,
    "min_count": _int(1),
    "collapse": _choice(COLLAPSE_RULES),
    "split": _split,
    "balance": _choice(BALANCE_METHODS, optional=True),
    "class_weight": _choice(CLASS_WEIGHT_METHODS, optional=True),
    "positive_share": _float(0, 1, lo_open=True, hi_open=True),
    "trunk": _choice(TRUNKS),
    "trunks": _int(1, MAX_TRUNKS),
    "ova_fit": _choice(OVA_FITS),
    "text": _text_columns,
    "text_width": _int(1, 4096),
    "text_dropout": _float(0, 1, hi_open=True),
    "backbone": _choice(BACKBONE_CHOICES),
    "weights": _text(optional=True),
    "image_size": _int(16, 1024, optional=True),
    "resize": _choice(RESIZE_MODES),
    "fine_tune_last": _int(-1, optional=True),
    "freeze_until": _int(0, optional=True),
    "head": _head,
    "dropout": _float(0, 1, hi_open=True),
    "member_overrides": _member_overrides,
    "shard": _shard,
    "loss": _choice(LOSSES),
    "label_smoothing": _float(0, 0.5, hi_open=True),
    "calibration": _choice(CALIBRATIONS + ("default",)),
    "optimize": _choice(OPTIMIZE),
    "learning_rate": _float(0, 1, lo_open=True),
    "lr_schedule": _choice(LR_SCHEDULES),
    "epochs": _int(1),
    "batch_size": _int(1),
    "patience": _int(0),
    "seed": _int(0),
    "augment": _bool,
    "cache": _text(optional=True),
    "cache_features": _bool,
    "feature_store": _text(optional=True),
    "tensorboard": _bool,
    "verbose": _verbose,
    "distribute": _choice(DISTRIBUTE),
}


@dataclass
class TrainConfig:
    """Everything needed to repeat a run; the run folder saves it (runs.CONFIG)."""

    data: str
    mode: str = "ova"
    format: str | None = None
    csv_options: dict = field(default_factory=dict)
    genre_sep: str = "|"
    max_pixels: int = MAX_PIXELS  # posters above it are refused (decompression bombs)
    # labels
    genres: list | None = None
    top_k: int | None = None
    other: bool = False
    min_count: int = 1
    collapse: str = "least"
    split: tuple = (0.7, 0.15, 0.15)
    balance: str | None = None  # undersample | oversample, on the collapsed label
    class_weight: str | None = None  # balanced | log
    positive_share: float = 0.3  # ova members
    trunk: str = "end-to-end"  # with a trainable backbone: end to end, or a shared trunk first (TRUNKS)
    trunks: int = 1  # with a shared trunk: how many (trunk i's draws from seed + i); the head reads all their features
    ova_fit: str = "one"  # OvA members on cached features: one fit for all, or one fit each (OVA_FITS)
    # text beside the poster: the table's columns ("title": the title, year stripped), its branch's size
    text: list | None = None
    text_width: int = 64
    text_dropout: float = 0.5
    # model
    backbone: str = "efficientnetv2b0"  # or none: text only
    weights: str | None = "default"  # imagenet for pretrained backbones, none for simple
    image_size: int | None = None
    resize: str = "pad"
    fine_tune_last: int | None = None
    freeze_until: int | None = None
    head: tuple = (512, 256)
    dropout: float = 0.0
    # per-genre OvA settings chosen by `genrecls tune`: genre -> {head, dropout, learning_rate}
    member_overrides: dict | None = None
    # OvA on several machines: "I/N" trains only the members j with j % N == I (`genrecls combine` joins them)
    shard: str | None = None
    # loss, probabilities and decisions
    loss: str = "bce"
    label_smoothing: float = 0.0
    calibration: str = "default"  # the mode's (modes.Mode.calibration): platt for ova, prior otherwise
    optimize: str = "micro"  # the F1 average the decision policy maximises on validation
    # fitting
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    epochs: int = 10
    batch_size: int = 128
    patience: int = 3
    seed: int = 0
    augment: bool = False
    cache: str | None = None  # None | memory | file prefix: cache decoded posters
    cache_features: bool = True  # train heads on cached backbone features when frozen
    # where those features are kept (genrecls.features); None: the run (or search) folder's own features/
    feature_store: str | None = None
    tensorboard: bool = False
    verbose: str | int = "auto"
    distribute: str = "none"  # DISTRIBUTE; batch_size stays the global batch, split over the replicas

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, RULES[f.name](f.name, getattr(self, f.name)))
        self.data = os.path.abspath(self.data)
        if self.calibration == "default":
            self.calibration = MODES[self.mode].calibration
        if self.feature_store:
            self.feature_store = os.path.abspath(os.path.expanduser(self.feature_store))
        if self.backbone == NO_BACKBONE:
            if not self.text:
                raise GenreclsError("--backbone none trains on text alone; name the text with --text (e.g. title)")
            self.weights = self.image_size = None
            self.augment = False
        else:
            spec = get_spec(self.backbone)
            if self.weights == "default":
                self.weights = "imagenet" if spec.pretrained else None
            self.weights = normalize_weights(self.weights)
            if self.image_size is None:
                self.image_size = spec.default_size
        if self.fine_tune_last is not None and self.freeze_until is not None:
            raise GenreclsError("give either --fine-tune-last or --freeze-until, not both")
        if self.shard and not MODES[self.mode].members:
            members = ", ".join(name for name, mode in MODES.items() if mode.members)
            raise GenreclsError(f"--shard splits the one-vs-all members over machines; it needs --mode {members}, "
                                f"not {self.mode}")
        if self.trunks > 1 and self.trunk != "shared":
            raise GenreclsError(f"--trunks {self.trunks} trains several shared trunks; it needs --trunk shared")
        if self.class_weight and self.loss != "bce":
            raise GenreclsError(f"--class-weight weights the binary cross-entropy; it does not apply to "
                                f"--loss {self.loss} (drop one of them)")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["head"] = list(self.head)
        data["text"] = list(self.text) if self.text else None
        data["split"] = list(self.split)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise GenreclsError("a config must be a JSON object of settings")
        if "ova_trunk" in data:  # runs saved before the shared trunk served every mode
            data = {**{k: v for k, v in data.items() if k != "ova_trunk"},
                    "trunk": {"separate": "end-to-end"}.get(data["ova_trunk"], data["ova_trunk"])}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"versions"})
        if unknown:
            raise GenreclsError(f"unknown config keys: {', '.join(unknown)}")
        if "data" not in data:
            raise GenreclsError("a config needs its dataset folder (data)")
        return cls(**{k: v for k, v in data.items() if k in known})

    def changed_from(self, saved: dict) -> list[str]:
        """Names of the settings that differ from a saved config (RESUMABLE_CHANGES aside)."""
        # a setting the saved config lacks (added in a later version) had its default then
        return sorted(k for k, v in self.to_json().items()
                      if k not in RESUMABLE_CHANGES and saved.get(k, _json_default(k)) != v)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(json.load(f))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenreclsError(f"cannot read config {path}: {exc}") from None


def parse_shard(text) -> tuple[int, int]:
    """'I/N' -> (I, N): shard I of N of the feature store's rows, whole numbers with 0 <= I < N."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not found or not int(found[1]) < int(found[2]):
        raise GenreclsError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. 0/4 ... 3/4), not {text!r}")
    return int(found[1]), int(found[2])


def _json_default(name: str):
    value = default(name)
    return list(value) if isinstance(value, tuple) else value


def default(name: str):
    """The default of a TrainConfig field (what the CLI shows in its help)."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
