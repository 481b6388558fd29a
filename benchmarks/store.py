"""Feature store, offline half: point-in-time retrieval and incremental append on generated Taobao data.

1. ``lsdata generate taobao --rows N``; the file's lines are split 99 % / 1 % at random (the 1 % interleaves
   in time with the rest, and touches existing users as well as new ones).
2. ingest the 99 % (timed, for scale), then ``append`` the 1 % as version 2 (timed), and, as the
   yardstick, a full re-ingest of both files (timed).
3. retrieval of ``--requests`` random requests (user, ts uniform in the data's time range, random item) in
   the hpmn layout, as of the appended version (timed, rows/s).

Writes ``benchmarks/results/store.json`` (or ``--out``) with the machine, the numbers and the options.

    OMP_NUM_THREADS=1 python benchmarks/store.py --rows 1000000 --requests 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from lsdata.append import append
from lsdata.dataset import open_dataset
from lsdata.ingest import ingest
from lsdata.retrieve import retrieve
from lsdata.synth import taobao

HERE = Path(__file__).resolve().parent


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="generated Taobao rows")
    ap.add_argument("--requests", type=int, default=100_000, help="retrieval requests")
    ap.add_argument("--append-share", type=float, default=0.01, help="share of lines appended as version 2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "store.json")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the data (default: a temp dir)")
    args = ap.parse_args()
    os.environ.setdefault("LSDATA_CATALOG", "off")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lsdata-store-"))
    work.mkdir(parents=True, exist_ok=True)
    src = taobao.generate(work / "UserBehavior.csv", rows=args.rows, seed=args.seed)
    lines = Path(src).read_bytes().splitlines(keepends=True)
    rng = np.random.default_rng(args.seed)
    new = rng.random(len(lines)) < args.append_share
    base_f, new_f = work / "base.csv", work / "new.csv"
    base_f.write_bytes(b"".join(x for x, m in zip(lines, new) if not m))
    new_f.write_bytes(b"".join(x for x, m in zip(lines, new) if m))
    del lines

    _, t_ingest = timed(lambda: ingest("taobao", [str(base_f)], work / "d"))
    info, t_append = timed(lambda: append(work / "d", [str(new_f)]))
    _, t_reingest = timed(lambda: ingest("taobao", [str(base_f), str(new_f)], work / "all"))

    ds = open_dataset(work / "d")
    req = pl.DataFrame({
        "user": rng.integers(1, info.users + 1, args.requests),
        "ts": rng.integers(info.ts_min, info.ts_max + 1, args.requests),
        "item": rng.integers(1, info.items + 1, args.requests),
    })
    rows, t_retrieve = timed(lambda: sum(t.num_rows for t in retrieve(ds, req, "hpmn")))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "options": {k: str(v) for k, v in vars(args).items()},
        "base_events": info.events - info.events_added,
        "appended_events": info.events_added,
        "users_touched": info.users_touched,
        "users_new": info.users_new,
        "users_total": info.users,
        "ingest_base_s": round(t_ingest, 3),
        "append_s": round(t_append, 3),
        "reingest_all_s": round(t_reingest, 3),
        "append_vs_reingest": round(t_append / t_reingest, 3),
        "retrieve_requests": rows,
        "retrieve_s": round(t_retrieve, 3),
        "retrieve_rows_per_s": round(rows / t_retrieve),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
