"""The quality benchmark: does each mode beat the trivial baselines on real posters?

Trains a recipe (`config.RECIPES`) in each mode on one dataset (by default
../shared/datasets/ml1m, the default seeded split), evaluates each run on its
test split with the decision rule chosen on validation, and writes

    OUT/quality.json   per mode: scores, their baselines, beats flags, seconds; the machine and date
    OUT/quality.md     the table the README shows

The runs stay in RUNS/<mode> (reports and plots included) for a closer look.
This is a benchmark, not a test: it takes minutes per mode on a CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from genrecls.config import RECIPES, TrainConfig
from genrecls.errors import GenreclsError
from genrecls.evaluation import metric_name
from genrecls.modes import MODES

ML1M = Path("../shared/datasets/ml1m")  # relative to where the command runs: the repository root
HEADLINE = ("f1_micro", "f1_macro", "f1_weighted", "map_at_3", "roc_auc_mean")


def default_data() -> Path:
    if (ML1M / "movies.dat").is_file():
        return ML1M
    raise GenreclsError(f"no dataset at {ML1M}; pass --data FOLDER (the quality benchmark needs real posters)")


def run_quality(data=None, out="benchmarks", runs="models/quality", modes=None, recipe: str = "scratch",
                epochs: int | None = None, seed: int = 0) -> dict:
    """Train and evaluate `recipe` in each mode; write OUT/quality.json and quality.md."""
    from genrecls.training import train, versions

    if recipe not in RECIPES:
        raise GenreclsError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    modes = list(modes or MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise GenreclsError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    data = Path(data) if data else default_data()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**RECIPES[recipe], **({"epochs": epochs} if epochs else {})}
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), **versions()},
               "data": str(data.resolve()), "recipe": recipe, "settings": settings, "modes": {}}
    earlier = _earlier(out / "quality.json", results)
    results["modes"] = {m: r for m, r in earlier.items() if m not in modes}  # keep other modes of the same setup
    for i, mode in enumerate(modes, 1):
        cfg = TrainConfig(data=str(data), mode=mode, seed=seed, verbose=2, **settings)
        print(f"[{i}/{len(modes)}] {mode}: training {cfg.backbone} at {cfg.image_size} px", flush=True)
        started = time.time()
        report = train(cfg, Path(runs) / mode, overwrite=True)
        results["modes"][mode] = summarize(report, time.time() - started)
        (out / "quality.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
        (out / "quality.md").write_text(format_markdown(results))
    return results


def _earlier(path: Path, now: dict) -> dict:
    """Per-mode results of an earlier run with the same data, recipe and settings (else nothing)."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = all(before.get(k) == json.loads(json.dumps(now[k])) for k in ("data", "recipe", "settings"))
    return before.get("modes", {}) if same else {}


def summarize(report: dict, seconds: float) -> dict:
    versus = report["versus_baselines"]
    return {
        "scores": {k: round(versus[k]["model"], 4) for k in HEADLINE if k in versus},
        "baselines": {k: {"value": round(versus[k]["baseline"], 4), "name": versus[k]["baseline_name"]}
                      for k in HEADLINE if k in versus},
        "beats": {k: versus[k]["beats"] for k in HEADLINE if k in versus},
        "policy": report["policy"]["name"], "ece_mean": round(report["overall"]["ece_mean"], 4),
        "posters": report["overall"]["posters"], "seconds": round(seconds, 1),
    }


def format_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# genrecls quality: every mode beside its trivial baselines",
        "",
        f"{results['date']}, {m['cpu_count']} CPUs, {m['platform']}, TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}; data `{results['data']}`, recipe `{results['recipe']}`: "
        + ", ".join(f"{k}={v}" for k, v in results["settings"].items()),
        "",
        "| mode | " + " | ".join(metric_name(k) for k in HEADLINE) + " | decisions | seconds |",
        "| --- |" + " ---: |" * len(HEADLINE) + " --- | ---: |",
    ]
    baselines = {}
    for mode, r in results["modes"].items():
        cells = [f"{r['scores'][k]:.3f}" + ("" if r["beats"][k] else " ⚠") if k in r["scores"] else "–"
                 for k in HEADLINE]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {r['policy']} | {r['seconds']:.0f} |")
        baselines.update({k: v for k, v in r["baselines"].items()})
    for name in dict.fromkeys(v["name"] for v in baselines.values()):
        cells = [f"{baselines[k]['value']:.3f}" if k in baselines and baselines[k]["name"] == name else ""
                 for k in HEADLINE]
        lines.append(f"| *{name}* | " + " | ".join(cells) + " | | |")
    lines += ["", "⚠ marks a score that does not beat its baseline. Baselines are computed on the same test "
              "split from the training split's genre prevalence.", ""]
    return "\n".join(lines)
