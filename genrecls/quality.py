"""The quality benchmark: does each mode beat the trivial baselines on real posters?

Trains a recipe (`config.RECIPES`) in each mode on one dataset (by default
../shared/datasets/ml1m, the default seeded split), evaluates each run on its
test split with the decision rule chosen on validation, and writes

    OUT/quality.json   per row: scores, their baselines, beats flags, seconds; the machine and date
    OUT/quality.md     the table the README shows

A row is a mode and its inputs: the poster alone, the text alone (`--backbone
none`) or both fused (`inputs`, with `text` naming the columns, e.g. title).
With the recipe's shared trunk, rows after the first reuse the trunk the first
one trained (same data, seed and trunk settings), so their seconds leave it out.
The runs stay in RUNS/<row> (reports and plots included) for a closer look.
This is a benchmark, not a test: it takes minutes per row on a CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from genrecls.config import NO_BACKBONE, RECIPES, TrainConfig
from genrecls.errors import GenreclsError
from genrecls.evaluation import CONFIDENCE, MARKS, metric_name, standing
from genrecls.modes import MODES
from genrecls.runs import CHECKPOINTS, TRUNK, claim_outputs

ML1M = Path("../shared/datasets/ml1m")  # relative to where the command runs: the repository root
MD_HEAD = "# genrecls quality"  # how quality.md shows genrecls wrote it (and may replace it)
HEADLINE = ("f1_micro", "f1_macro", "f1_weighted", "map_at_3", "roc_auc_mean")
MACRO_COLUMN = "decided for macro: macro / micro F1"
# What a row feeds the model: its label after the mode's name, and the settings it changes.
INPUTS = {
    "poster": ("", lambda text: {}),
    "text": (" · {text} only", lambda text: {"text": text, "backbone": "none"}),
    "both": (" · poster + {text}", lambda text: {"text": text}),
}


def default_data() -> Path:
    if (ML1M / "movies.dat").is_file():
        return ML1M
    raise GenreclsError(f"no dataset at {ML1M}; pass --data FOLDER (the quality benchmark needs real posters)")


def run_quality(data=None, out="benchmarks", runs="models/quality", modes=None, recipe: str = "scratch",
                epochs: int | None = None, seed: int = 0, inputs=("poster",), text=("title",),
                trunk_from: str | os.PathLike | None = None) -> dict:
    """Train and evaluate `recipe` in each mode with each of `inputs`; write OUT/quality.json and quality.md.

    trunk_from: the checkpoints/trunk.keras of an earlier quality row; every poster row reuses it
    after a check that its run had the same settings (data, seed, recipe) but the mode and text.
    """
    from genrecls.report import evaluate_run
    from genrecls.training import train, versions

    out = Path(out)
    claim_outputs(out, "quality.json", "modes", "quality.md", MD_HEAD)
    if recipe not in RECIPES:
        raise GenreclsError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    modes = list(modes or MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise GenreclsError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    data = Path(data) if data else default_data()
    unknown = [i for i in inputs if i not in INPUTS]
    if unknown:
        raise GenreclsError(f"unknown input(s) {', '.join(unknown)}; choose from {', '.join(INPUTS)}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {**RECIPES[recipe], **({"epochs": epochs} if epochs else {})}
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), **versions()},
               "data": str(data.resolve()), "recipe": recipe, "settings": settings, "modes": {}}
    earlier = _earlier(out / "quality.json", results)
    rows = [(f"{mode}{INPUTS[i][0].format(text=' + '.join(text))}", mode, INPUTS[i][1](list(text)))
            for i in inputs for mode in modes]
    results["modes"] = {m: r for m, r in earlier.items() if m not in {label for label, _, _ in rows}}
    trunk = None
    for n, (label, mode, changes) in enumerate(rows, 1):
        cfg = TrainConfig(data=str(data), mode=mode, seed=seed, verbose=2, **{**settings, **changes})
        print(f"[{n}/{len(rows)}] {label}: training {cfg.backbone}"
              + (f" at {cfg.image_size} px" if cfg.image_size else ""), flush=True)
        run = Path(runs) / label.replace(" · ", "-").replace(" + ", "+").replace(" ", "-")
        if trunk_from and trunk is None and cfg.backbone != NO_BACKBONE:
            trunk = checked_trunk(Path(trunk_from), cfg)
        started = time.time()
        report = train(cfg, run, overwrite=True, trunk_from=trunk)
        seconds = time.time() - started
        trained = run / CHECKPOINTS / TRUNK
        # what a user who asks for macro F1 (--optimize macro) gets from the same model
        for_macro = evaluate_run(run, optimize="macro", plots=False, save=False)
        results["modes"][label] = {**summarize(report, seconds, for_macro),
                                   "inputs": (["poster"] if cfg.backbone != NO_BACKBONE else []) + (cfg.text or []),
                                   **({"reused_trunk": True} if trunk and trained.exists() else {})}
        trunk = trunk or (trained if trained.exists() else None)
        (out / "quality.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
        (out / "quality.md").write_text(format_markdown(results))
    return results


# Settings that change only what is fitted on the trunk: a trunk is reusable across them.
HEAD_ONLY = {"mode", "text", "text_width", "text_dropout", "optimize", "calibration", "verbose", "shard",
             "member_overrides", "loss", "label_smoothing", "ova_fit"}


def checked_trunk(path: Path, cfg: TrainConfig) -> Path:
    """A shared trunk from an earlier run, refused unless that run trained it with cfg's trunk settings."""
    from genrecls.runs import RunFolder

    if not path.is_file() or path.name != TRUNK or path.parent.name != CHECKPOINTS:
        raise GenreclsError(f"--trunk-from {path}: expected a run's {CHECKPOINTS}/{TRUNK}")
    theirs = RunFolder.open(path.parents[1], finished=False).load_config().to_json()
    differ = [k for k in cfg.changed_from(theirs) if k not in HEAD_ONLY
              and not (k == "data" and Path(theirs[k]).resolve() == Path(cfg.data).resolve())]
    if differ:
        raise GenreclsError(f"--trunk-from {path}: its run was trained with other {', '.join(differ)}; "
                            "a trunk is reused only with the same data, seed and trunk settings")
    return path


def _earlier(path: Path, now: dict) -> dict:
    """Per-mode results of an earlier run with the same data, recipe and settings (else nothing)."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(before.get(k) == json.loads(json.dumps(now[k])) for k in ("data", "recipe", "settings"))
    return before.get("modes", {}) if same else {}


def summarize(report: dict, seconds: float, for_macro: dict | None = None) -> dict:
    """A row of the table; `for_macro`: the same run's report with the decisions chosen for macro F1."""
    versus = report["versus_baselines"]
    macro = for_macro and for_macro["versus_baselines"].get("f1_macro")
    return {
        "scores": {k: round(versus[k]["model"], 4) for k in HEADLINE if k in versus},
        "baselines": {k: {"value": round(versus[k]["baseline"], 4), "name": versus[k]["baseline_name"]}
                      for k in HEADLINE if k in versus},
        "beats": {k: versus[k]["beats"] for k in HEADLINE if k in versus},
        "gain_intervals": {k: [round(v, 4) for v in versus[k]["gain_interval"]]
                           for k in HEADLINE if versus.get(k, {}).get("gain_interval")},
        "clearly_beats": {k: versus[k]["clearly_beats"] for k in HEADLINE if "clearly_beats" in versus.get(k, {})},
        "policy": report["policy"]["name"], "ece_mean": round(report["overall"]["ece_mean"], 4),
        "posters": report["overall"]["posters"], "seconds": round(seconds, 1),
        **({"for_macro": {"f1_macro": round(macro["model"], 4), "f1_micro": round(for_macro["overall"]["f1_micro"], 4),
                          "beats": macro["beats"], **({"clearly_beats": macro["clearly_beats"]}
                                                      if "clearly_beats" in macro else {}),
                          "policy": for_macro["policy"]["name"]}} if macro else {}),
    }


def format_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        MD_HEAD + ": every mode beside its trivial baselines",
        "",
        f"{results['date']}, {m['cpu_count']} CPUs, {m['platform']}, TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}; data `{results['data']}`, recipe `{results['recipe']}`: "
        + ", ".join(f"{k}={v}" for k, v in results["settings"].items()),
        "",
        "| mode · inputs | " + " | ".join(metric_name(k) for k in HEADLINE) + " | decisions | "
        + f"{MACRO_COLUMN} | seconds |",
        "| --- |" + " ---: |" * len(HEADLINE) + " --- | ---: | ---: |",
    ]
    baselines = {}
    for mode, r in results["modes"].items():
        cells = [f"{r['scores'][k]:.3f}" + MARKS[standing(r["beats"][k], r.get("clearly_beats", {}).get(k))]
                 if k in r["scores"] else "–" for k in HEADLINE]
        seconds = f"{r['seconds']:.0f}" + (" †" if r.get("reused_trunk") else "")
        m = r.get("for_macro")
        macro = (f"{m['f1_macro']:.3f}" + MARKS[standing(m["beats"], m.get("clearly_beats"))]
                 + f" / {m['f1_micro']:.3f}") if m else "–"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {r['policy']} | {macro} | {seconds} |")
        baselines.update({k: v for k, v in r["baselines"].items()})
    for name in dict.fromkeys(v["name"] for v in baselines.values()):
        cells = [f"{baselines[k]['value']:.3f}" if k in baselines and baselines[k]["name"] == name else ""
                 for k in HEADLINE]
        lines.append(f"| *{name}* | " + " | ".join(cells) + " | | | |")
    lines += ["", "⚠ marks a score that does not beat its baseline, ≈ one that beats it within the noise (the "
              f"{CONFIDENCE:.0%} interval of its gain, a paired bootstrap over the test posters, includes 0; "
              "quality.json holds the intervals). Baselines are computed on the same test "
              "split from the training split's genre prevalence.",
              f"*{MACRO_COLUMN}*: the same model's scores with the decision rule chosen for macro F1 "
              "(`--optimize macro`) instead of the run's own."]
    if any(r.get("reused_trunk") for r in results["modes"].values()):
        lines.append("† reused the shared trunk an earlier row trained (same data, seed and trunk settings); "
                     "its seconds leave that stage out.")
    lines.append("")
    return "\n".join(lines)
