"""RecBole 1.2.1 vs lsdata: DIN, DIEN, GRU4Rec, Caser on the same samples (a benchmark, not CI).

Target (issue): lsdata at least as accurate (test AUC) and >= 2x faster per training epoch on the same
hardware. One run does, in the lsdata venv::

    generate (lsdata generate taobao --rows N --seed 7, if the CSV is missing)
    -> lsdata ingest / split / layout plain hpmn / layout mimn --hist 300    (one dataset, reused if present)
    -> benchmarks/recbole/convert.py   (RecBole atomic benchmark files with the same samples)
    -> benchmarks/recbole/run_recbole.py in the RecBole venv (subprocess)
    -> lsdata train MODEL D --device cpu ... for din, dien, gru4rec, caser
    -> one markdown table on stdout, benchmarks/results/recbole_compare.json, benchmarks/RECBOLE.md

The RecBole venv (see run_recbole.py for why the pins)::

    python3 -m venv /tmp/venv-recbole && . /tmp/venv-recbole/bin/activate \\
      && pip install torch==2.13.0 && pip install recbole==1.2.1 "numpy<2" "pandas<3"

Run (lsdata venv; about 20 k users at the default 2 M rows)::

    python benchmarks/recbole_compare.py --work /tmp/rbcmp --epochs 3
    python benchmarks/recbole_compare.py --work /tmp/rbcmp --skip-recbole    # lsdata side only, reuse recbole.json
    python benchmarks/recbole_compare.py --work /tmp/rbcmp --skip-recbole --skip-lsdata din gru4rec caser
                                                                 # re-train lsdata's dien only, rebuild the table

What is the same on both sides: the samples (users, candidates, labels), the histories (events strictly
before the target time, the most recent 300), the split (lsdata's cut time; RecBole reads pre-split benchmark
files and does not re-split, filter or augment), the test set the AUC is computed on, the number of training
rows per epoch (GRU4Rec/Caser: see convert.py ``--seq-train``), batch size, learning rate (Adam 1e-3),
embedding 16, epochs, model selection (best validation-AUC epoch scored once on test), CPU threads.

``--lsdata-params matched`` (default) sets lsdata's model knobs to RecBole's architecture and inputs where
lsdata has a knob (see ``matched()``): no behaviour-type input on either side (RecBole's models take none),
no category for GRU4Rec/Caser (RecBole's versions take item ids only), RecBole's 200-80 attention MLP and
un-normalised DIN weights, Dice heads without dropout for DIN, DIEN as RecBole builds it (its unprojected candidate
query with scores / sqrt(d), head on [h'_T; e_a], `Dice` = SiLU, and its auxiliary loss: RecBole's linear 200-80
auxiliary MLP on the ``mimn`` layout's negatives - the same ones convert.py gives RecBole - with RecBole's alpha 1 =
lsdata's aux_weight 0.5, see ``matched()``), Caser's paper filters (heights 1..L,
8 horizontal, 4 vertical, ReLU). ``--lsdata-params defaults`` trains lsdata's reference configurations.
Differences that remain are listed in NOTES (and in the markdown section).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from lsdata.models.baselines import RECBOLE_DIEN

HERE = Path(__file__).resolve().parent
LSDATA = [sys.executable, "-m", "lsdata.cli"]
#: `lsdata` with torch's oneDNN (mkldnn) backend off, for --no-mkldnn (typer reads sys.argv[1:])
NO_MKLDNN = "import torch; torch.backends.mkldnn.enabled = False; from lsdata.cli import app; app()"
PAIRS = {"din": "DIN", "dien": "DIEN", "gru4rec": "GRU4Rec", "caser": "Caser"}


def matched(model: str, caser_len: int) -> tuple[list[str], dict]:
    """(extra lsdata train args, --set params) that mirror RecBole's model where lsdata has the knob."""
    common = {"use_behavior": False, "emb_dim": 16}
    if model == "din":
        return [], {**common, "att_hidden": [200, 80], "att_act": "sigmoid", "att_norm": "none", "head": [200, 80],
                    "head_act": "dice", "head_norm": "batch", "dropout": 0.0}
    if model == "dien":
        # RECBOLE_DIEN (see its comment) at RecBole's sizes: item id + category = 32 = hidden, so the candidate
        # embedding can be the attention query; its e_u has no lsdata counterpart
        return ["--layout", "mimn"], {**common, "hidden": 32, "att_hidden": [200, 80], "att_act": "sigmoid",
                                      "head": [200, 80], "dropout": 0.0, "aux_hidden": [200, 80], **RECBOLE_DIEN}
    if model == "gru4rec":
        return [], {**common, "use_cate": False, "hidden": 32}
    if model == "caser":
        return [], {**common, "use_cate": False, "window": caser_len, "heights": list(range(1, caser_len + 1)),
                    "n_h": 8, "n_v": 4, "h_act": "relu"}
    raise KeyError(model)


NOTES = [
    ("Same samples, histories (strictly before the target time, most recent 300), cut-time split and test set on both "
    "sides; RecBole reads them as pre-split benchmark files (`benchmark_filename`), so it does no re-splitting, "
    "filtering or prefix augmentation."),
    ("AUC/logloss: both on the lsdata test samples (candidate given history), best-validation-AUC epoch. RecBole "
    "DIN/DIEN: the probability from `model.predict` (RecBole's own labelled evaluation on the same loader agrees, "
    "stored as `recbole_eval_test`)."),
    ("RecBole GRU4Rec/Caser are next-item models (CE over all items): trained on one row per lsdata train sample, "
    "history -> the user's true target item (so they see the true item also for the samples whose candidate is a "
    "negative: a small information advantage for RecBole); they score the candidate by a dot product, logloss = "
    "sigmoid of that score (not a calibrated CTR). lsdata's are CTR models trained on the labelled samples."),
    ("RecBole's DIEN and Caser also embed the user id; under the cut-time split every user is in one set only, so "
    "test users' embeddings are untrained."),
    ("lsdata DIEN `matched` is RecBole 1.2.1's DIEN where lsdata has the knob (`matched()`): candidate embedding as "
     "the attention query, scores / sqrt(32), head on [h'_T; e_a] with batch norm and SiLU (RecBole's `Dice`: its "
     "alpha is a fixed zero tensor), linear 200-80 auxiliary MLP, aux_weight 0.5 (= RecBole's alpha 1, which averages "
     "the auxiliary BCE over 2N terms). What stays different: RecBole's user-id embedding in the head and its "
     "N(0, 1)-initialised AUGRU weights (lsdata: torch's GRU init)."),
    "RecBole GRU4Rec runs the GRU over all 300 padded positions (no packing); DIEN over the real steps.",
    ("A few train samples have an empty history (every earlier event shares the target's second): RecBole's "
    "GRU4Rec and DIEN fail on length 0, so those get length 1 over the padding item (run_recbole.py)."),
    ("s/epoch = training wall time of the fastest of the epochs (batches incl. data loading; validation "
    "excluded), both sides on the same machine, one after the other, same torch thread count. The fastest epoch "
    "is the least load-distorted estimate when the machine is shared; every epoch's time and the load average "
    "at the start of each training are in the JSON."),
    ("torch's oneDNN (mkldnn) backend is off on both sides (`--mkldnn` keeps it): on this torch 2.13 CPU build "
    "its conv backward returned NaN in RecBole's Caser (`Training loss is nan`) and segfaulted in lsdata's Caser "
    "for some filter heights."),
    ("RecBole 1.2.1 switches on torch anomaly detection when its model zoo is imported "
    "(`recbole/model/sequential_recommender/sine.py`), which slows every RecBole model; run_recbole.py switches "
    "it off again (`--recbole-anomaly-mode` keeps it, as plain `run_recbole` would)."),
]


def sh(cmd: list[str], log: Path | None = None, env: dict | None = None, check: bool = True) -> tuple[int, float]:
    """Run a command, streaming its output (and appending it to ``log``); returns (exit code, wall s)."""
    print("$ " + shlex.join(cmd), flush=True)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p,
        open(log or os.devnull, "a") as f,
    ):
        for line in p.stdout:
            f.write(line)
            if "Warning" not in line and "warnings.warn" not in line and line.strip():
                print("  " + line.rstrip()[:300], flush=True)
        code = p.wait()
    wall = time.perf_counter() - t0
    if check and code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}" + (f" (log: {log})" if log else ""))
    return code, wall


def build_dataset(work: Path, rows: int, seed: int) -> Path:
    csv = work / f"taobao_{rows}.csv"
    data = work / f"taobao_{rows}"
    if not csv.exists():
        sh(LSDATA + ["generate", "taobao", str(csv), "--rows", str(rows), "--seed", str(seed)])
    if not (data / "manifest.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        sh(LSDATA + ["ingest", "taobao", str(csv), "--out", str(data)])
    if not (data / "split" / "report.json").exists():
        sh(LSDATA + ["split", str(data)])
    if not all((data / "layouts" / n / "report.json").exists() for n in ("plain", "hpmn")):
        sh(LSDATA + ["layout", str(data), "plain", "hpmn"])
    if not (data / "layouts" / "mimn" / "report.json").exists():
        # DIEN's auxiliary-loss negatives at the full history width (the Taobao mimn preset is 200)
        sh(LSDATA + ["layout", str(data), "mimn", "--hist", "300"])
    return data


def fastest(xs: list[float]) -> float | None:
    return float(min(xs)) if xs else None


def run_lsdata(model: str, data: Path, out: Path, a) -> dict:
    extra, params = matched(model, a.caser_len or 300) if a.lsdata_params == "matched" else ([], {})
    base = LSDATA if not a.no_mkldnn else [sys.executable, "-c", NO_MKLDNN]
    cmd = base + ["train", model, str(data), "--out", str(out), "--epochs", str(a.epochs), "--device", "cpu",
                    "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--patience", str(max(a.epochs, 2))] + extra
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    for k, v in params.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    load0 = os.getloadavg()
    code, wall = sh(cmd, log=out.parent / f"{model}.log", check=False)
    res: dict = {"command": shlex.join(cmd), "params": params, "load_avg_before": load0, "load_avg_after": os.getloadavg(),
                 "wall_s": round(wall, 1)}
    mpath = out / "metrics.json"
    if code != 0 or not mpath.exists():
        res["error"] = f"exited {code} (log: {out.parent / f'{model}.log'})"
        return res
    m = json.loads(mpath.read_text())
    res.update(test=m.get("test"), epoch_seconds=m.get("epoch_seconds"), n_parameters=m.get("n_parameters"),
               best_step=m.get("best_step"), train_samples=m.get("train_samples"), valid=m.get("valid"))
    return res


def fmt(x, nd=4) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def table(rows: list[dict]) -> str:
    head = ("| model | RecBole AUC | lsdata AUC | RecBole logloss | lsdata logloss | RecBole s/epoch | lsdata s/epoch "
            "| speed ratio (RecBole / lsdata) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        ratio = (r["recbole_s"] / r["lsdata_s"]) if r["recbole_s"] and r["lsdata_s"] else None
        ll_rb = fmt(r["recbole_logloss"]) + ("*" if r["model"] in ("GRU4Rec", "Caser") and r["recbole_logloss"] else "")
        lines.append(f"| {r['model']} | {fmt(r['recbole_auc'])} | {fmt(r['lsdata_auc'])} | {ll_rb} | {fmt(r['lsdata_logloss'])} "
                     f"| {fmt(r['recbole_s'], 1)} | {fmt(r['lsdata_s'], 1)} | {'n/a' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def side_args(ap: argparse.ArgumentParser, models: list[str], lsdata_json: str) -> None:
    """Options every RecBole side by side has: oneDNN, the RecBole venv, reusing either side's earlier results."""
    ap.add_argument("--mkldnn", dest="no_mkldnn", action="store_false",
                    help="keep torch's oneDNN (mkldnn) backend on; by default it is off on both sides: with it, conv "
                         "backward gave NaN (RecBole Caser) and segfaults (lsdata Caser) on the torch 2.13 CPU build")
    ap.add_argument("--recbole-python", default="/tmp/venv-recbole/bin/python", help="python of the RecBole venv")
    ap.add_argument("--skip-recbole", nargs="*", metavar="MODEL", choices=models,
                    help="reuse these models' results from WORK/recbole.json (all models if none named)")
    ap.add_argument("--skip-lsdata", nargs="*", metavar="MODEL", choices=models,
                    help=f"reuse these models' results from {lsdata_json} (all models if none named)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rbcmp"), help="scratch dir (CSV, dataset, runs)")
    ap.add_argument("--rows", type=int, default=2_000_000, help="generated Taobao rows (~101 events/user: 2M = ~20k users)")
    ap.add_argument("--seed", type=int, default=7, help="generator seed")
    ap.add_argument("--data", type=Path, help="use this lsdata dataset dir instead of generating one")
    ap.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048, help="training batch, both sides (RecBole's default 2048)")
    ap.add_argument("--lr", type=float, default=0.001, help="Adam learning rate, both sides")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, both sides (0 = torch default = cores)")
    ap.add_argument("--caser-len", type=int, default=50,
                    help="Caser window L on both sides (default 50 = RecBole's MAX_ITEM_LIST_LENGTH; 300 = the full "
                         "history, very slow in RecBole: one conv per height 1..L)")
    ap.add_argument("--seq-train", default="targets", choices=["targets", "positives", "prefixes"],
                    help="RecBole GRU4Rec/Caser training rows (convert.py)")
    ap.add_argument("--lsdata-params", default="matched", choices=["matched", "defaults"],
                    help="lsdata model knobs: matched to RecBole's architectures (matched()) or lsdata's reference defaults")
    ap.add_argument("--recbole-anomaly-mode", action="store_true",
                    help="leave torch anomaly detection on in RecBole (RecBole 1.2.1 turns it on at import)")
    side_args(ap, list(PAIRS), "WORK/lsdata.json")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "recbole_compare.json")
    ap.add_argument("--markdown", type=Path, default=HERE / "RECBOLE.md")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)

    data = a.data or build_dataset(a.work, a.rows, a.seed)
    if a.data and not (data / "layouts" / "mimn" / "report.json").exists() and "dien" in a.models:
        sh(LSDATA + ["layout", str(data), "mimn", "--hist", "300"])
    rb_dir = a.work / "recbole_data"
    rb_json = a.work / "recbole.json"
    ls_json = a.work / "lsdata.json"

    def todo(skip: list[str] | None) -> list[str]:
        return list(a.models) if skip is None else [m for m in a.models if skip and m not in skip]

    rb = json.loads(rb_json.read_text()) if rb_json.exists() else {"models": {}}
    if todo(a.skip_recbole):
        sh([sys.executable, str(HERE / "recbole" / "convert.py"), str(data), str(rb_dir), "--seq-train", a.seq_train])
        new_json = a.work / "recbole_last.json"
        new_json.unlink(missing_ok=True)
        cmd = [a.recbole_python, str(HERE / "recbole" / "run_recbole.py"), "--data", str(rb_dir), "--json", str(new_json),
               "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
               "--work", str(a.work / "recbole_work"), "--caser-len", str(a.caser_len),
               "--models", *[PAIRS[m] for m in todo(a.skip_recbole)]]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        if a.recbole_anomaly_mode:
            cmd += ["--anomaly-mode"]
        if a.no_mkldnn:
            cmd += ["--no-mkldnn"]
        sh(cmd, log=a.work / "recbole.log", check=False)
        if new_json.exists():  # merge per model: earlier results of other models stay
            new = json.loads(new_json.read_text())
            rb = {**rb, **{k: v for k, v in new.items() if k != "models"}, "models": {**rb.get("models", {}), **new["models"]}}
            rb_json.write_text(json.dumps(rb, indent=2) + "\n")

    ls = json.loads(ls_json.read_text()) if ls_json.exists() else {"models": {}}
    for m in todo(a.skip_lsdata):
        ls["models"][m] = run_lsdata(m, data, a.work / "lsdata_runs" / m, a)
        ls_json.write_text(json.dumps(ls, indent=2) + "\n")

    rows = []
    for m in a.models:
        r = rb.get("models", {}).get(PAIRS[m], {})
        l_ = ls.get("models", {}).get(m, {})
        rows.append({
            "model": PAIRS[m],
            "recbole_auc": (r.get("test") or {}).get("auc"), "lsdata_auc": (l_.get("test") or {}).get("auc"),
            "recbole_logloss": (r.get("test") or {}).get("logloss"), "lsdata_logloss": (l_.get("test") or {}).get("logloss"),
            "recbole_s": fastest(r.get("epoch_seconds") or []), "lsdata_s": fastest(l_.get("epoch_seconds") or []),
            "recbole_epoch_seconds": r.get("epoch_seconds"), "lsdata_epoch_seconds": l_.get("epoch_seconds"),
            "recbole_error": r.get("error"), "lsdata_error": l_.get("error"),
        })
    meta = rb.get("meta") or (json.loads((rb_dir / "meta.json").read_text()) if (rb_dir / "meta.json").exists() else {})
    mach = rb.get("machine") or {"cores": os.cpu_count(), "python": platform.python_version()}
    sets = meta.get("sets", {})
    size = ", ".join(f"{k} {v['samples']:,}" for k, v in sets.items()) if sets else "?"
    md_table = table(rows)
    print()
    print(md_table)
    errors = [f"{r['model']}: RecBole {r['recbole_error']}" for r in rows if r["recbole_error"]]
    errors += [f"{r['model']}: lsdata {r['lsdata_error']}" for r in rows if r["lsdata_error"]]
    errors += [f"{PAIRS[m]}: RecBole stopped in {rb['models'][PAIRS[m]]['failed']} - scored its best finished epoch"
               for m in a.models if (rb.get("models", {}).get(PAIRS[m]) or {}).get("failed")]
    for e in errors:
        print("problem:", e)

    out = {"date": str(date.today()), "rows": a.rows if not a.data else None, "data": str(data), "samples": sets,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "machine": mach,
           "table": rows, "recbole": rb, "lsdata": ls, "notes": NOTES}
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(out, indent=2, default=str) + "\n")

    settings = (f"{a.epochs} epochs, batch {a.batch_size}, Adam lr {a.lr}, CPU{' (oneDNN off)' if a.no_mkldnn else ''}, torch threads "
                f"{a.threads or mach.get('torch_threads', 'default')}, lsdata params `{a.lsdata_params}`, RecBole "
                f"GRU4Rec/Caser training rows `{a.seq_train}`, Caser window {a.caser_len or 300} (most recent items)")
    md = [
        "## RecBole 1.2.1 vs lsdata (DIN, DIEN, GRU4Rec, Caser)",
        "",
        (f"Command: `python benchmarks/recbole_compare.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
         f"(date {out['date']}). Raw JSON: `{rel(a.results)}`."),
        "",
        f"Data: `lsdata generate taobao --rows {a.rows:,} --seed {a.seed}`"
        + (f" -> {size} samples (one per user), mean history {sets.get('train', {}).get('mean_history', '?')} (train) / "
           f"{sets.get('test', {}).get('mean_history', '?')} (test) events, max 300; {meta.get('n_items', '?'):,} items." if sets else ".")
        if not a.data else f"Data: `{data}` ({size} samples).",
        "",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('mem_gib', '?')} GiB, no GPU; "
        f"Python {mach.get('python', '?')}, RecBole {mach.get('recbole', '?')} with torch {mach.get('torch', '?')}, "
        f"numpy {mach.get('numpy', '?')}, pandas {mach.get('pandas', '?')} (separate venv). 1/5/15-min load average "
        "when each training started (the machine may be shared): "
        + "; ".join(f"{PAIRS[m]} RecBole {fmt_load(rb.get('models', {}).get(PAIRS[m], {}).get('load_avg_before'))}, "
                    f"lsdata {fmt_load(ls.get('models', {}).get(m, {}).get('load_avg_before'))}" for m in a.models)
        + ".",
        "",
        f"Settings: {settings}.",
        "",
        md_table,
        "",
        "Notes:",
        "",
        *[f"* {n}" for n in NOTES],
        "* `*` RecBole GRU4Rec/Caser logloss: sigmoid of an uncalibrated next-item score.",
        *[f"* problem: {e}" for e in errors],
        "",
    ]
    a.markdown.write_text("\n".join(md))
    print(f"\nwrote {a.results} and {a.markdown}")
    return 0 if not errors else 1


def rel(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else str(p)


def fmt_load(x) -> str:
    return "?" if not x else "/".join(f"{v:.1f}" for v in x)


if __name__ == "__main__":
    sys.exit(main())
