"""Load test of ``lsdata serve`` on 127.0.0.1: events/s and p50/p99 latency of POST /events and POST /score.

Configurations: HPMN and MIMN state, each with 1 server worker on the embedded SQLite store and with 4
workers on Redis (a redis-server started here on a free port; skipped, and said so, when not installed).
Data: the bundled synthetic Taobao sample (``sample_data/taobao``), ingested, split and laid out in a
temporary directory, and a one-step training run per model (latency and parity do not depend on the
weights' values). Each server is warmed up on the events before the median event time
(``--warmup-all --warmup-until T --warmup-batch 1``); the later events are then replayed: ``--clients``
client threads, each owning a set of users (so each user's events stay in time order), one event per
request. Then every client sends ``--score-requests`` / clients score requests of ``--candidates`` items.
Bounded: the event replay and the score loop have fixed sizes; every request has a 60 s timeout.

Parity: after the replay every user's state holds its whole sequence; the served logits of one candidate
per user are compared with the model's update/score offline one user at a time (``parity``; see
:mod:`lsdata.serve.parity` for why MIMN is compared that way), and with the batched forward (``forward``).

    python benchmarks/serve_load.py            # prints a table, writes benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from lsdata.serve.testing import start_redis, start_server, stop_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT / "sample_data" / "taobao" / "UserBehavior_synthetic.csv"


def prepare(work: Path) -> tuple[Path, dict[str, Path]]:
    from lsdata import ingest, layouts, samples
    from lsdata.dataset import open_dataset
    from lsdata.defaults import SplitOptions, TrainConfig
    from lsdata.train import train

    data = work / "taobao"
    ingest.ingest("taobao", [str(SAMPLE)], data)
    ds = open_dataset(data)
    samples.build(ds, SplitOptions())
    layouts.build(ds, ["hpmn", "mimn"])
    runs = {}
    for name in ("hpmn", "mimn"):
        runs[name] = work / "runs" / name
        train(TrainConfig(model=name, data=str(data), out=str(runs[name]), max_steps=1, device="cpu", max_eval_rows=8))
    return data, runs


def pct(ms: list[float]) -> dict:
    a = np.array(ms)
    return {"requests": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}


def run_clients(url: str, lanes: list[list[dict]], path: str) -> tuple[list[float], float, int]:
    """Each lane's requests in order on its own connection; returns latencies (ms), wall seconds, errors."""
    lat: list[list[float]] = [[] for _ in lanes]
    errors = [0] * len(lanes)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for body in lanes[k]:
                t0 = time.perf_counter()
                r = c.post(path, json=body)
                lat[k].append((time.perf_counter() - t0) * 1e3)
                errors[k] += r.status_code != 200

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(lanes))]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return [x for part in lat for x in part], time.perf_counter() - t0, sum(errors)


def bench(name: str, run: Path, store: str, workers: int, args) -> dict:
    from lsdata.serve.engine import Engine
    from lsdata.serve.parity import fold_logits, forward_logits, later_events, median_time

    engine = Engine(run)
    t = median_time(engine)
    events = later_events(engine, t)
    proc, url, pids = start_server(run, store, "--warmup-all", "--warmup-until", str(t), "--warmup-batch", "1", "--reset",
                                   "--namespace", f"bench-{name}-{workers}", workers=workers)
    if len(pids) < workers:
        print(f"warning: only {len(pids)} of {workers} workers answered /health before the load", file=sys.stderr)
    try:
        lanes: list[list[dict]] = [[] for _ in range(args.clients)]
        for e in events:
            lanes[hash(e["user"]) % args.clients].append({"events": [e]})
        ev_lat, ev_wall, ev_err = run_clients(url, lanes, "/events")
        rng = np.random.default_rng(0)
        users = [engine.users.raw(u) for u in range(1, engine.users.size + 1)]
        per = args.score_requests // args.clients
        slanes = [[{"user": users[rng.integers(len(users))],
                    "items": [engine.items.raw(int(i)) for i in rng.integers(1, engine.items.size + 1, args.candidates)]}
                   for _ in range(per)] for _ in range(args.clients)]
        sc_lat, sc_wall, sc_err = run_clients(url, slanes, "/score")
        ids = list(range(1, engine.users.size + 1))
        cands = rng.integers(1, engine.items.size + 1, len(ids))
        with httpx.Client(base_url=url, timeout=60) as c:
            online = np.array([c.post("/score", json={"user": engine.users.raw(u), "items": [engine.items.raw(int(i))]})
                               .json()["logits"][0] for u, i in zip(ids, cands)])
    finally:
        stop_server(proc)
    return {"model": name, "workers": workers, "store": "redis" if store.startswith("redis") else "sqlite",
            "clients": args.clients, "warmup_until": t, "events": len(events), "events_per_s": round(len(events) / ev_wall, 1),
            "events_latency": pct(ev_lat), "events_errors": ev_err, "score_candidates": args.candidates,
            "scores_per_s": round(len(sc_lat) / sc_wall, 1), "score_latency": pct(sc_lat), "score_errors": sc_err,
            "parity_max_abs_logit_diff": float(np.abs(online - fold_logits(engine, ids, cands)).max()),
            "forward_max_abs_logit_diff": float(np.abs(online - forward_logits(engine, ids, cands)).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads (each owns a set of users)")
    ap.add_argument("--score-requests", type=int, default=400, help="POST /score requests in all")
    ap.add_argument("--candidates", type=int, default=50, help="candidates per POST /score")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        work = Path(tmp)
        _, runs = prepare(work)
        redis_proc, redis_url = start_redis(work) or (None, None)
        try:
            for name, run in runs.items():
                rows.append(bench(name, run, str(work / f"{name}.sqlite"), 1, args))
                if redis_url:
                    rows.append(bench(name, run, redis_url, 4, args))
                else:
                    print("redis-server not installed: the 4-worker Redis rows are skipped", file=sys.stderr)
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)
    head = ("| model | store | workers | events/s | /events p50 ms | p99 ms | /score p50 ms | p99 ms | scores/s | "
            "parity max abs logit diff (update/score) | vs batched forward |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['model']} | {r['store']} | {r['workers']} | {r['events_per_s']:,.0f} | {r['events_latency']['p50_ms']} | "
              f"{r['events_latency']['p99_ms']} | {r['score_latency']['p50_ms']} | {r['score_latency']['p99_ms']} | "
              f"{r['scores_per_s']:,.0f} | {r['parity_max_abs_logit_diff']:.1e} | {r['forward_max_abs_logit_diff']:.1e} |")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__}, "date": time.strftime("%Y-%m-%d"), "data": str(SAMPLE.relative_to(ROOT)),
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
