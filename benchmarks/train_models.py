"""Train every registered model on one dataset with ``lsdata train`` and tabulate throughput and accuracy.

For each model: ``lsdata train MODEL DATA --max-steps N --eval-every E`` (its default layout, reference
hyper-parameters), then read the run's ``metrics.json``: training samples/s (median over logged intervals,
from ``log.csv``), peak RSS (CPU) or peak CUDA memory, validation AUC of the selected checkpoint, test AUC
and logloss (test scored once, with that checkpoint). Prints a markdown table and writes
``benchmarks/results/train_models[-TAG].json``.

    # the 1M-user Taobao-format dataset of the pipeline benchmark (hpmn, mimn, shan layouts built)
    python benchmarks/train_models.py /tmp/bench/tb1m --max-steps 300 --tag cpu-1m
    # on a GPU machine
    python benchmarks/train_models.py DATA --device cuda --max-steps 2000 --batch-size 1024 --tag h100
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_model(model: str, data: Path, out: Path, a: argparse.Namespace) -> dict:
    cmd = ["lsdata", "train", model, str(data), "--out", str(out), "--max-steps", str(a.max_steps),
           "--eval-every", str(a.eval_every), "--device", a.device, "--epochs", "1"]
    if a.max_eval_rows:
        cmd += ["--max-eval-rows", str(a.max_eval_rows)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.streaming:
        cmd += ["--streaming"]
    if a.batch_size:
        cmd += ["--batch-size", str(a.batch_size)]
    for s in a.set or []:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"model": model, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    m = json.loads((out / "metrics.json").read_text())
    with open(out / "log.csv", newline="") as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r["kind"] == "train" and r["samples_per_s"]]
    return {
        "model": model, "layout": m["layout"], "steps": m["steps"], "params": m["n_parameters"],
        "samples_per_s": statistics.median(rates[1:] or rates) if rates else m["train_samples_per_s"],
        "peak_rss_mib": m["peak_rss_mib"], "peak_cuda_mib": m["peak_cuda_mib"],
        "valid_auc": (m["valid"] or {}).get("auc"), "test_auc": m["test"]["auc"], "test_logloss": m["test"]["logloss"],
        "test_n": m["test"]["n"], "wall_seconds": wall, "device": m["device"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--models", default="", help="comma list (default: every registered model)")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-eval-rows", type=int, default=None, help="score only the first N valid/test rows")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--streaming", action="store_true", help="stream row groups instead of loading each split")
    ap.add_argument("--set", action="append", help="model parameter override passed to every model")
    ap.add_argument("--runs", type=Path, default=None, help="where run directories go (default DATA/runs-bench)")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    from lsdata import models

    names = [m for m in a.models.split(",") if m] or models.names()
    runs = a.runs or a.data / "runs-bench"
    rows = []
    for name in names:
        r = run_model(name, a.data, runs / name, a)
        rows.append(r)
        print(json.dumps(r), flush=True)
    mem = "peak CUDA MiB" if a.device == "cuda" else "peak RSS MiB"
    print(f"\n| model | layout | steps | samples/s | {mem} | valid AUC | test AUC | test logloss |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} |||||||")
            continue
        peak = r["peak_cuda_mib"] if a.device == "cuda" else r["peak_rss_mib"]
        f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"| {r['model']} | {r['layout']} | {r['steps']} | {r['samples_per_s']:,.0f} | {peak:,.0f} | {f(r['valid_auc'])} | "
              f"{f(r['test_auc'])} | {f(r['test_logloss'])} |")
    out = HERE / "results" / f"train_models{'-' + a.tag if a.tag else ''}.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"data": str(a.data), "machine": platform.node(), "device": a.device, "max_steps": a.max_steps,
            "eval_every": a.eval_every, "batch_size": a.batch_size, "max_eval_rows": a.max_eval_rows, "threads": a.threads,
            "streaming": a.streaming}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
