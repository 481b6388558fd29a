"""The long-dependency benchmark in next-item framing (issue #5): DMAN, SDM and HPMN (``hpmn_next``), full ranking.

Data: ``lsdata.synth.longdep`` with the generator's defaults (the "paper" preset of ``benchmarks/longdep.py``): the
user's current interest category is planted 80-250 events before the target, which is each user's **last** event
and with probability ``rho`` an item of that category. Pipeline: ``lsdata ingest taobao`` -> ``lsdata split
--method loo`` (test target = each user's last event = the planted target; the script checks it) -> ``lsdata train``
with a long window (``--long``, 300: always shows the latest interest event) and a short one (``--short``, 50:
never shows it), test NDCG@10 / HR@10 over **all** items, validation-selected, test scored once.

References computed here from the generator's knowledge (:mod:`lsdata.synth.longdep`), same metrics, ties broken
uniformly at random (exact expectation): **oracle W** ranks every item by the Bayes-optimal ``P_target(c | h)`` with
the latest interest category visible in the last ``W`` events (window 300: the current interest's items first, then
noise items by popularity; window 50: no interest is visible); **popularity** ranks by training-target counts.
Every row is also split into test targets that are interest items (the planted ``rho`` part) and noise items.

    python benchmarks/longdep_next.py --users 2000 --epochs 3 --stride 100 --threads 1

``--stride`` thins the training targets (every s-th position of a user, ``lsdata train --stride``) to fit a small
CPU; every model trains one target per sample (``--targets last``; for ``dman`` instead of its all-position
default, which allows no stride), so all see the same training targets.
Writes ``benchmarks/results/longdep_next.json`` and prints a markdown table.

``--generator contextual`` (:mod:`lsdata.synth.contextual`): the long-range rule governs ordinary positions (a
response to a recurring context shows the user's fixed option for it, last shown ~120 events earlier), so
training, validation and test targets all follow it; the oracle is that module's Bayes rule (the option visible in
the window, if any), the "interest targets" are the responses that show an option (27% of targets), and an extra
row ranks by the full history. Models with a per-position encoder (sasrec, dman, gru4rec_next) train on every
position (``--targets all``, ``--stride`` ignored), the others on every ``--stride``-th one; all with the full
softmax (``--loss ce``). Writes ``benchmarks/results/longdep_next_contextual.json``::

    python benchmarks/longdep_next.py --generator contextual --epochs 10 --patience 3 --stride 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: (model, window) -> extra `lsdata train` arguments; dman's window must be a multiple of its segment length
RUNS = {
    ("hpmn_next", "long"): [],
    ("dman", "long"): ["--set", "seg_len=50", "--targets", "last"],
    ("sdm", "long"): ["--set", "short_len=20"],
    ("hpmn_next", "short"): [],
    ("dman", "short"): ["--set", "seg_len=10", "--targets", "last"],
    ("sdm", "short"): ["--set", "short_len=20"],
    ("gru4rec_next", "short"): [],
}
#: all-position training with batches of 16 windows (4,800 targets at L 300: the default 128 windows gave 40 steps
#: per epoch on 2,000 users and no learning in 3 epochs)
ALL = ["--targets", "all", "--batch-size", "16"]
#: ``--generator contextual``: the rule governs ordinary positions, so models with a per-position encoder train on every
#: position (``--targets all``, no stride) and the others on every ``--stride``-th one; full softmax for all
#: (``--loss ce``) so that a few CPU epochs suffice
CONTEXTUAL_RUNS = {
    (m, w): ["--loss", "ce", *extra, *(["--set", f"seg_len={50 if w == 'long' else 10}"] if m == "dman" else [])]
    for w in ("long", "short")
    for m, extra in (("sasrec", ALL), ("dman", ALL), ("gru4rec_next", ALL), ("hpmn_next", []), ("sdm", ["--set", "short_len=20"]))
}


def sh(*args: str) -> None:
    subprocess.run(["lsdata", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prepare(work: Path, users: int, seed: int, generator: str = "longdep") -> Path:
    from lsdata.synth import contextual, longdep

    tag = "" if generator == "longdep" else f"_{generator}"
    raw = work / f"longdep{tag}_{users}_{seed}.csv"
    data = work / f"longdep_next{tag}_{users}_{seed}"
    if not (data / "split" / "report.json").exists():
        {"longdep": longdep, "contextual": contextual}[generator].generate(raw, users=users, seed=seed)
        shutil.rmtree(data, ignore_errors=True)
        sh("ingest", "taobao", str(raw), "--out", str(data))
        sh("split", str(data), "--method", "loo")
    return data


def expected_metrics(above: np.ndarray, ties: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean HR@k and NDCG@k when the target has ``above`` items strictly ahead and ``ties`` other items with its
    score, the ties broken uniformly at random (rank uniform on ``above .. above + ties``, 0-based)."""
    gain = np.r_[1.0 / np.log2(np.arange(k) + 2), 0.0]
    cum_hit, cum_gain = np.r_[0, np.arange(1, k + 1), k], np.r_[0.0, np.cumsum(gain)]  # over ranks < r, r = 0..k+1
    lo, hi = np.minimum(above, k), np.minimum(above + ties + 1, k)  # ranks [lo, hi) that are < k
    n = ties + 1.0
    return {f"hr@{k}": float(np.mean((cum_hit[hi] - cum_hit[lo]) / n)),
            f"ndcg@{k}": float(np.mean((cum_gain[hi] - cum_gain[lo]) / n))}


def score_ranks(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items strictly ahead of the target, other items tied with it) per row; ``scores`` ``[n, I + 1]``, column 0
    (padding) never counts."""
    s = scores[:, 1:]
    t = scores[np.arange(len(target)), target][:, None]
    return (s > t).sum(1), (s == t).sum(1) - 1


def with_split(above: np.ndarray, ties: np.ndarray, interest: np.ndarray) -> dict:
    return {"all": expected_metrics(above, ties), "interest_targets": expected_metrics(above[interest], ties[interest]),
            "noise_targets": expected_metrics(above[~interest], ties[~interest])}


def references(data: Path, windows: tuple[int, int], generator: str = "longdep") -> dict:
    """Split checks, oracle per window and popularity, on the test targets."""
    from lsdata.dataset import open_dataset
    from lsdata.nextitem import build_index, load_sequences, split_protocol
    from lsdata.synth import contextual, longdep

    ds = open_dataset(data)
    seq = load_sequences(ds)
    method, cut, vcut, _ = split_protocol(ds)
    idx = build_index(seq, method, cut, vcut, 1, 1)
    test, valid, train = idx["test"], idx["valid"], idx["train"]
    last = seq.offsets[1:] - 1
    model = contextual.model_for_dataset(data) if generator == "contextual" else longdep.model_for_dataset(data)
    n_items = model.n_items
    cate_of = np.zeros(n_items + 1, dtype=np.int64)
    cate_of[seq.item] = seq.cate
    assert (cate_of[seq.item] == seq.cate).all(), "an item with two categories"
    interest_item = (model.kind[cate_of] == contextual.INTEREST) if generator == "contextual" else model.interest[cate_of]
    checks = {
        "method": method, "users": int(seq.user.size), "test_targets": len(test),
        "test_target_is_last_event": bool(np.array_equal(np.sort(test.target), last)),
        "test_hist_is_all_earlier_events": bool(np.array_equal(test.hist_end, test.target)),
        "test_interest_share": float(interest_item[seq.item[test.target]].mean()),
        "valid_interest_share": float(interest_item[seq.item[valid.target]].mean()),
        "train_targets": len(train), "train_interest_share": float(interest_item[seq.item[train.target]].mean()),
    }
    tgt = seq.item[test.target].astype(np.int64)
    interest = interest_item[tgt]
    items = np.arange(n_items + 1)
    out = {"checks": checks}
    starts = seq.offsets[:-1]
    # per window: `state(w)` summarises each test target's visible history once; `probability(st, sl)` is P_target
    # over all items for the targets in slice `sl`, [targets, n_items + 1]
    if generator == "contextual":
        def state(w):  # (x, k): the previous event's context, the option visible in the window
            return contextual.history_state(seq.cate, model, starts[test.row], test.hist_end, w)

        def probability(st, sl):
            x, k = st[0][sl, None], st[1][sl, None]
            return contextual.target_probability(x, k, items[None, :], cate_of[None, :], model)

        # training targets a long window can predict and a short one cannot: interest items (responses showing the
        # user's option) whose option the long window shows and the short one does not
        tr_long = contextual.history_state(seq.cate, model, starts[train.row], train.target, windows[0])[1] > 0
        tr_short = contextual.history_state(seq.cate, model, starts[train.row], train.target, windows[1])[1] > 0
        tr_int = interest_item[seq.item[train.target]]
        checks["train_long_only_signal_share"] = float((tr_int & tr_long & ~tr_short).mean())
        checks["train_short_signal_share"] = float((tr_int & tr_short).mean())
    else:
        pos_interest = np.where(model.interest[seq.cate], np.arange(seq.cate.size), -1)
        latest_pos = np.maximum.accumulate(pos_interest)  # per flat position: latest interest event at or before it

        def state(w):  # the latest interest category in the window (0 = none)
            target, start = test.hist_end, starts[test.row]
            lp = latest_pos[np.maximum(target - 1, 0)]
            visible = (lp >= np.maximum(start, target - w)) & (target > start)
            return np.where(visible, seq.cate[np.maximum(lp, 0)], 0)

        def probability(st, sl):
            return longdep.target_probability(st[sl, None], items[None, :], cate_of[None, :], model)

        # training targets a long window can predict and a short one cannot: an interest item whose category is the
        # latest interest category of the last `long` history events, with no interest event in the last `short`
        lp = latest_pos[np.maximum(train.hist_end - 1, 0)]
        tstart = starts[train.row]
        gap = train.hist_end - lp  # 1 = the event just before the target
        seen = (lp >= tstart) & (train.hist_end > tstart)
        same = seen & (seq.cate[np.maximum(lp, 0)] == seq.cate[train.target])
        checks["train_long_only_signal_share"] = float((same & (gap > windows[1]) & (gap <= windows[0])).mean())
        checks["train_short_signal_share"] = float((same & (gap <= windows[1])).mean())
    for w in (None, *windows, *((1,) if generator == "contextual" else ())):  # window 1: the context, no memory
        above, ties, nll = [], [], []
        st = state(w if w is not None else 1 << 62)
        for s in range(0, len(tgt), 500):
            p = probability(st, slice(s, s + 500))
            a, t = score_ranks(p, tgt[s:s + 500])
            above.append(a)
            ties.append(t)
            nll.append(-np.log(p[np.arange(len(a)), tgt[s:s + 500]] / p[:, 1:].sum(1)))
        key = "oracle_full" if w is None else f"oracle_w{w}"
        out[key] = with_split(np.concatenate(above), np.concatenate(ties), interest)
        out[key]["all"]["cross_entropy"] = float(np.concatenate(nll).mean())  # the full-softmax loss it attains
    pop = np.bincount(seq.item[train.target], minlength=n_items + 1).astype(np.float64)
    a, t = score_ranks(np.broadcast_to(pop, (1, n_items + 1)).repeat(len(tgt), 0), tgt)
    out["popularity"] = with_split(a, t, interest)
    out["interest"] = interest
    return out


def train(model: str, data: Path, out: Path, width: int, extra: list[str], a: argparse.Namespace) -> dict:
    cmd = ["lsdata", "train", model, str(data), "--out", str(out), "--epochs", str(a.epochs), "--patience",
           str(a.patience), "--threads", str(a.threads), "--device", "cpu", "--seed", str(a.train_seed),
           "--set", f"max_len={width}", *extra]
    if "all" not in extra:  # --targets all predicts every position (no stride)
        cmd += ["--stride", str(a.stride)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"command": " ".join(cmd), "error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]}
    m = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    return {"command": " ".join(cmd), "test": m["test"]["full"], "valid": m["valid"]["full"] if m.get("valid") else None,
            "epochs_run": m["epochs_run"], "train_samples": conf["samples"]["train"], "loss": conf["loss"],
            "seconds": time.perf_counter() - t0}


def split_metrics(run_dir: Path, interest: np.ndarray) -> dict:
    """Test metrics of a finished run on interest-item and noise-item targets (per-target full ranks)."""
    import torch

    from lsdata.ranking import ranking_metrics
    from lsdata.train import load_run

    torch.set_num_threads(1)
    r = load_run(run_dir, device="cpu")
    full, _ = r.ranks(r.eval_data("test"))
    pick = lambda m: {k: m[k] for k in ("hr@10", "ndcg@10")}  # noqa: E731
    return {"interest_targets": pick(ranking_metrics(full[interest])), "noise_targets": pick(ranking_metrics(full[~interest]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lsdata-bench-longdep-next"))
    ap.add_argument("--generator", choices=("longdep", "contextual"), default="longdep",
                    help="longdep: the rule plants each user's last event (the CTR generator); contextual: "
                    "lsdata.synth.contextual, the rule governs a third of all positions")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--long", type=int, default=300)
    ap.add_argument("--short", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--stride", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="", help="comma list model:long|short restricting the runs (default: all); rows "
                    "of earlier runs in the JSON are kept, the references recomputed (--runs none: references only)")
    a = ap.parse_args()
    import torch

    a.work.mkdir(parents=True, exist_ok=True)
    data = prepare(a.work, a.users, a.seed, a.generator)
    ref = references(data, (a.long, a.short), a.generator)
    interest = ref.pop("interest")
    print(json.dumps(ref, indent=1), flush=True)
    only = set(filter(None, a.runs.split(",")))
    rows = []
    for (model, which), extra in (CONTEXTUAL_RUNS if a.generator == "contextual" else RUNS).items():
        if only and f"{model}:{which}" not in only:
            continue
        width = a.long if which == "long" else a.short
        out = data / "runs" / f"{model}-w{width}"
        r = {"model": model, "window": width, **train(model, data, out, width, extra, a)}
        if "error" not in r:
            r.update(split_metrics(out, interest))
        rows.append(r)
        print(json.dumps(r), flush=True)
    out = HERE / "results" / ("longdep_next.json" if a.generator == "longdep" else f"longdep_next_{a.generator}.json")
    if only and out.exists():  # a partial rerun replaces its own rows, keeps the others
        done = {(r["model"], r["window"]) for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"] if (r["model"], r["window"]) not in done] + rows
    commands = ["python benchmarks/longdep_next.py " + " ".join(sys.argv[1:])]
    if only and out.exists():  # the invocations that made the merged rows
        old = json.loads(out.read_text())
        commands = (old.get("commands") or [old["command"]]) + commands
    result = {"commands": commands, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other work), "
                         f"{'a GPU' if torch.cuda.is_available() else 'no GPU'} (runs use --device cpu), "
                         f"python {platform.python_version()}, torch {torch.__version__}",
              "generator": a.generator, "users": a.users, "seed": a.seed, "references": ref, "rows": rows}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | window | test NDCG@10 | test HR@10 | HR@10 interest targets | HR@10 noise targets | epochs | "
          "train samples | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, key in (("oracle (Bayes, full history)", "oracle_full"), (f"oracle (Bayes, window {a.long})", f"oracle_w{a.long}"),
                      (f"oracle (Bayes, window {a.short})", f"oracle_w{a.short}"), ("oracle (Bayes, window 1)", "oracle_w1"),
                      ("popularity (train targets)", "popularity")):
        if key not in ref:
            continue
        m = ref[key]
        print(f"| {name} | | {m['all']['ndcg@10']:.4f} | {m['all']['hr@10']:.4f} | {m['interest_targets']['hr@10']:.4f} | "
              f"{m['noise_targets']['hr@10']:.4f} | | | |")
    for r in sorted(rows, key=lambda r: (-r["window"], r["model"])):
        if "error" in r:
            print(f"| {r['model']} | {r['window']} | error: {r['error']} ||||||")
            continue
        print(f"| {r['model']} | {r['window']} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} | "
              f"{r['interest_targets']['hr@10']:.4f} | {r['noise_targets']['hr@10']:.4f} | {r['epochs_run']:g} | "
              f"{r['train_samples']:,} | {r['seconds']:.0f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
