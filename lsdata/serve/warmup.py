"""Warm-up: every user's state folded from the offline sequences (MIMN's UIC is warmed on the last 120 days).

The window is ``[end - days, until)`` where ``end`` is ``until`` when given, else the dataset's last event
time; ``days=None`` takes the whole stored history before ``until``. Users are processed a partition at a
time, sorted by their window length and cut into batches of ``batch`` users; each batch is folded with one
``update`` call per event position for the whole batch (no Python loop per user or per event). The whole
state is replaced (:meth:`StateStore.replace_all`): SQLite in one transaction; Redis behind status
``warming``, which a server refuses until the warm-up finishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import polars as pl
import torch

from lsdata.serve.engine import Engine
from lsdata.serve.state import READY, WARMING, Record

DAY = 86_400


def last_event_time(engine: Engine) -> int:
    ds = engine.dataset
    ends = [ds.read("sequences", p, ["ts"])["ts"].list.max().max() for p in ds.parts("sequences")]
    ends = [int(e) for e in ends if e is not None]
    return max(ends) if ends else 0


def window_records(engine: Engine, lo: int | None, hi: int | None, batch: int = 1024) -> Iterator[dict[int, Record]]:
    """Records of every user with events in ``[lo, hi)`` (None = unbounded), ``batch`` users at a time."""
    ds = engine.dataset
    cols = ["item", "cate", "behavior", "ts"]
    for part in ds.parts("sequences"):
        flat = ds.read("sequences", part, ["user", *cols]).explode(cols)
        if lo is not None:
            flat = flat.filter(pl.col("ts") >= lo)
        if hi is not None:
            flat = flat.filter(pl.col("ts") < hi)
        flat = flat.drop_nulls("item")
        if flat.height == 0:
            continue
        user = flat["user"].to_numpy()
        arr = {c: flat[c].to_numpy().astype(np.int64) for c in cols}
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])  # a user's events are contiguous, in time order
        lens = np.diff(np.r_[starts, len(user)])
        order = np.argsort(lens, kind="stable")
        for s in range(0, len(order), batch):
            sel = order[s: s + batch]
            st, ln = starts[sel], lens[sel]
            width = int(ln.max())
            pos = np.arange(width)[None, :]
            valid = pos < ln[:, None]
            idx = np.where(valid, st[:, None] + pos, 0)
            mat = {c: torch.from_numpy(np.where(valid, arr[c][idx], 0)) for c in ("item", "cate", "behavior")}
            state = engine.fold_matrix(engine.model.init_state(len(sel)), mat["item"], mat["cate"], mat["behavior"])
            last = arr["ts"][st + ln - 1]
            yield {int(u): Record(b, int(n), int(t), engine.version)
                   for u, b, n, t in zip(user[st], engine.codec.encode(state), ln, last)}


def warmup(engine: Engine, store, days: float | None = 120.0, until: int | None = None, batch: int = 1024) -> dict:
    """Replace the store's state by the offline warm-up; returns what it did (also stored in the metadata)."""
    t0 = time.perf_counter()
    end = until if until is not None else last_event_time(engine) + 1
    lo = int(end - days * DAY) if days is not None else None
    store.set_meta(status=WARMING)
    counts = {"users": 0, "events": 0}

    def batches() -> Iterator[dict[int, Record]]:
        for recs in window_records(engine, lo, end, batch):
            counts["users"] += len(recs)
            counts["events"] += sum(r.events for r in recs.values())
            yield recs

    info = {"days": days, "from_ts": lo, "until_ts": end, "dataset_version": engine.dataset.version}
    store.replace_all(batches(), {"status": READY})
    info |= counts | {"seconds": round(time.perf_counter() - t0, 3)}
    store.set_meta(warmup=info, rolled_back_to=None)
    return info
