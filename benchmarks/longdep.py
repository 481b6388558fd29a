"""Where long memory matters: train the zoo on planted long-range structure, next to the Bayes-optimal AUC.

Data: ``lsdata generate longdep`` (Taobao format; :mod:`lsdata.synth.longdep` documents the generative
process and its Bayes-optimal rule). The predictive signal (the category of the user's latest *interest*
event) is always 80-250 events back, so the last 50 events never show it and the last 300 always do.

Runs (all through the normal pipeline and ``lsdata train``, validation-selected, test scored once):

* **short window** (``--short 50``): DNN, GRU4Rec, DIN, DIEN on ``hpmn`` layouts of width 50, the window
  these models are run with in production (MIMN paper §1) - the Bayes ceiling there is the window-50 AUC;
* **lifelong** (width 300): the memory models HPMN, MIMN, RUM, SHAN, SAM, and, as a control, DNN, GRU4Rec,
  DIN, DIEN given the same 300 events.

Prints a markdown table (model, window, test AUC, Bayes AUC for that window) and writes
``benchmarks/results/longdep.json``.

    python benchmarks/longdep.py --preset paper --users 20000 --epochs 6   # generator defaults, windows 50 / 300
    python benchmarks/longdep.py --preset cpu --users 8000 --epochs 3      # 3x shorter scale for a 2-core CPU

Presets: ``paper`` = the generator's defaults (signal 80-250 events back; windows 50 and 300); ``cpu`` = the same
structure at a third of the scale (signal 25-75 events back, interest bursts every 60-90 events; windows 20 and
100) with a smaller catalogue, so recurrent models at L = 100 train in minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = {
    "paper": {"short": 50, "long": 300, "params": {}},
    "cpu": {"short": 20, "long": 100, "params": {
        "interest_categories": 10, "items_per_interest": 30, "noise_categories": 30, "noise_items": 300, "rho": 0.5,
        "gap_min": 25, "gap_max": 75, "burst_min": 2, "burst_max": 4, "period_min": 60, "period_max": 90,
        "lead_min": 0, "lead_max": 60}},
}
SHORT_MODELS = ("dnn", "gru4rec", "din", "dien")
MEMORY_MODELS = ("hpmn", "mimn", "rum", "shan", "sam")


def sh(*args: str) -> None:
    subprocess.run(["lsdata", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prepare(work: Path, users: int, seed: int, short: int, long: int, preset: str) -> dict[int, Path]:
    from lsdata.synth import longdep

    raw = work / f"longdep_{preset}_{users}_{seed}.csv"
    base = work / f"longdep_{preset}_{users}_{seed}_w{long}"
    if not (base / "layouts" / "shan" / "report.json").exists():
        longdep.generate(raw, users=users, seed=seed, **PRESETS[preset]["params"])
        shutil.rmtree(base, ignore_errors=True)
        sh("ingest", "taobao", str(raw), "--out", str(base))
        sh("split", str(base))
        sh("layout", str(base), "hpmn", "mimn", "--hist", str(long))
        sh("layout", str(base), "shan", "--hist", str(long))
    small = work / f"longdep_{preset}_{users}_{seed}_w{short}"
    if not (small / "layouts" / "hpmn" / "report.json").exists():
        shutil.rmtree(small, ignore_errors=True)
        shutil.copytree(base, small, ignore=shutil.ignore_patterns("layouts", "runs"))
        sh("layout", str(small), "hpmn", "--hist", str(short))
    return {long: base, short: small}


def train(model: str, data: Path, out: Path, a: argparse.Namespace, seed: int | None = None) -> dict:
    cmd = ["lsdata", "train", model, str(data), "--out", str(out), "--epochs", str(a.epochs), "--device", a.device,
           "--patience", str(a.patience), "--threads", str(a.threads), *(["--seed", str(seed)] if seed is not None else [])]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    m = json.loads((out / "metrics.json").read_text())
    return {"valid_auc": (m["valid"] or {}).get("auc"), "test_auc": m["test"]["auc"], "test_logloss": m["test"]["logloss"],
            "epochs_run": m["epochs_run"], "samples_per_s": m["train_samples_per_s"], "seconds": time.perf_counter() - t0}


def over_seeds(model: str, data: Path, a: argparse.Namespace, seeds: list[int]) -> dict:
    """One run per training seed (``runs/{model}-s{seed}``): means of the metrics, the test AUC's sample standard
    deviation, min and max, and every run."""
    runs = [{"seed": s, **train(model, data, data / "runs" / f"{model}-s{s}", a, s)} for s in seeds]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "runs": runs}
    out: dict = {"seeds": [r["seed"] for r in ok], "runs": runs}
    for k in ("valid_auc", "test_auc", "test_logloss", "epochs_run", "samples_per_s", "seconds"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        out[k] = statistics.fmean(vals) if vals else None
    test = [r["test_auc"] for r in ok]
    out.update(test_auc_std=statistics.stdev(test) if len(test) > 1 else 0.0, test_auc_min=min(test), test_auc_max=max(test))
    return out


def test_cell(r: dict) -> str:
    """``0.6600`` for one run; ``mean ± sd (min-max, n seeds)`` over seeds."""
    if "seeds" not in r:
        return f"{r['test_auc']:.4f}"
    return (f"{r['test_auc']:.4f} ± {r['test_auc_std']:.4f} ({r['test_auc_min']:.4f}-{r['test_auc_max']:.4f}, "
            f"{len(r['seeds'])} seeds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lsdata-bench-longdep"))
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="", help="comma list restricting the models run")
    ap.add_argument("--seeds", default="", help="comma list of training seeds (lsdata train --seed): every model runs "
                    "once per seed and is reported as mean ± standard deviation (min-max); default: one run, seed 1111. "
                    "MIMN's take-off on this data depends on the seed (RESULTS.md), so one seed misreports it")
    a = ap.parse_args()
    from lsdata.synth import longdep

    a.work.mkdir(parents=True, exist_ok=True)
    a.short, a.long = PRESETS[a.preset]["short"], PRESETS[a.preset]["long"]
    data = prepare(a.work, a.users, a.seed, a.short, a.long, a.preset)
    bayes = longdep.bayes_aucs(data[a.long], split="test", windows=(None, a.long, a.short))
    bayes_at = {a.long: bayes[f"w{a.long}"], a.short: bayes[f"w{a.short}"]}
    print(f"Bayes-optimal test AUC: full history {bayes['full']:.4f}, last {a.long} {bayes_at[a.long]:.4f}, "
          f"last {a.short} {bayes_at[a.short]:.4f}", flush=True)
    only = set(filter(None, a.models.split(",")))
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    plan = [(m, a.short) for m in SHORT_MODELS] + [(m, a.long) for m in MEMORY_MODELS + SHORT_MODELS]
    rows = []
    for model, width in plan:
        if only and model not in only:
            continue
        res = over_seeds(model, data[width], a, seeds) if seeds else train(model, data[width], data[width] / "runs" / model, a)
        r = {"model": model, "window": width, "bayes_auc": bayes_at[width], **res,
             "command": "python benchmarks/longdep.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d")}
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| model | window (events) | valid AUC | test AUC | Bayes AUC (window) | epochs | train samples/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['window']} | error: {r['error']} |||||")
            continue
        print(f"| {r['model']} | {r['window']} | {r['valid_auc']:.4f} | {test_cell(r)} | {r['bayes_auc']:.4f} | "
              f"{r['epochs_run']:g} | {r['samples_per_s'] or 0:,.0f} |")
    out = HERE / "results" / f"longdep-{a.preset}.json"
    out.parent.mkdir(exist_ok=True)
    if only and out.exists():  # a partial rerun replaces its own rows of the same data, keeps the others
        old = json.loads(out.read_text())
        if (old["users"], old["seed"], old.get("preset")) == (a.users, a.seed, a.preset):
            done = {(r["model"], r["window"]) for r in rows}
            rows = [r for r in old["rows"] if (r["model"], r["window"]) not in done] + rows
    out.write_text(json.dumps({"preset": a.preset, "users": a.users, "seed": a.seed, "bayes": bayes, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
