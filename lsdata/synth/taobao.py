"""Synthetic Taobao ``UserBehavior.csv`` with the real file's shape, fast enough for 100M rows.

What it imitates (Tianchi UserBehavior, ~100M rows):

* ~101 events per user on average (987,994 users per 100M rows), heavy-tailed per-user activity
  (log-normal, median ~ 0.6 x mean);
* items Zipf-distributed (exponent ``zipf_a``, 4.16M items per 100M rows), categories Zipf over ~9.4k;
  each item belongs to one category;
* behaviour mix pv/buy/cart/fav ~ 89/2/6/3 %;
* each user's events time-ascending inside the collection window (2017-11-25..12-03, UTC+8), with
  timestamp ties (``tie_rate`` of events share the previous event's second) and a few out-of-window
  timestamps (``out_of_window_rate``), as in the real file;
* rows grouped by user, users in ascending id order; no header.

Optionally ``bad_rate`` of lines are replaced by malformed ones (for quarantine demos and tests).
Generation streams in blocks of users, so memory stays flat whatever ``rows`` is. Every output gets a
``FILE.synthetic.json`` sidecar; ingest then marks the dataset ``synthetic``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from lsdata.defaults import TAOBAO_WINDOW
from lsdata.synth import write_sidecar

BEHAVIORS = np.array(["pv", "buy", "cart", "fav"])
BEHAVIOR_P = np.array([0.89, 0.02, 0.06, 0.03])
USERS_PER_ROW = 987_994 / 100_150_807
ITEMS_PER_ROW = 4_162_024 / 100_150_807
BAD_LINES = ["", "1,2,3", "x,2,3,pv,1511544070", "1,2,3,click,1511544070", "1,2,3,pv,soon", "1,2,3,pv,1511544070,9"]


def _zipf_ranks(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """Ranks in [0, n) with P(rank k) ~ (k+1)^-a (inverse CDF of a bounded continuous power law)."""
    u = rng.random(size)
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * np.log(n + 1))
    else:
        x = (1 + u * ((n + 1) ** (1 - a) - 1)) ** (1 / (1 - a))
    return np.minimum(x.astype(np.int64) - 1, n - 1).clip(0)


def generate(
    path: str | Path,
    rows: int = 100_000,
    seed: int = 0,
    zipf_a: float = 1.1,
    tie_rate: float = 0.05,
    out_of_window_rate: float = 1e-5,
    bad_rate: float = 0.0,
    block_users: int = 50_000,
) -> Path:
    """Write about ``rows`` lines (exactly ``rows`` unless rows < users) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = max(1, round(rows * USERS_PER_ROW))
    n_items = max(2, round(rows * ITEMS_PER_ROW))
    n_cates = max(2, min(9_439, n_items // 50 + 2))
    # per-user activity: log-normal, rescaled to sum to `rows`, at least 1 event each
    act = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    counts = np.maximum(1, np.floor(act / act.sum() * rows)).astype(np.int64)
    short = rows - counts.sum()
    if short > 0:
        np.add.at(counts, rng.choice(n_users, size=int(short), replace=True), 1)
    elif short < 0:
        big = np.argsort(-counts)[: int(-short)]
        counts[big] -= 1
        counts = np.maximum(counts, 1)
    user_ids = np.sort(rng.choice(np.arange(1, int(n_users * 1.05) + 2), size=n_users, replace=False))
    item_ids = rng.choice(np.arange(1, int(n_items * 1.25) + 2), size=n_items, replace=False)
    item_cate_rank = _zipf_ranks(rng, n_cates, n_items, 1.0)
    cate_ids = rng.choice(np.arange(1, n_cates * 500), size=n_cates, replace=False)
    lo, hi = TAOBAO_WINDOW
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    written = 0
    with open(tmp, "wb") as f:
        for b0 in range(0, n_users, block_users):
            c = counts[b0 : b0 + block_users]
            n = int(c.sum())
            users = np.repeat(user_ids[b0 : b0 + block_users], c)
            ranks = _zipf_ranks(rng, n_items, n, zipf_a)
            item = item_ids[ranks]
            cate = cate_ids[item_cate_rank[ranks]]
            beh = BEHAVIORS[rng.choice(4, size=n, p=BEHAVIOR_P)]
            # time-ascending per user: sorted uniform draws inside the window, then ties
            ts = rng.integers(lo, hi, size=n)
            order = np.lexsort((ts, np.repeat(np.arange(c.size), c)))
            ts = ts[order]
            starts = np.r_[0, np.cumsum(c)[:-1]]
            tie = rng.random(n) < tie_rate
            tie[starts] = False
            idx = np.where(tie, 0, np.arange(n))
            np.maximum.accumulate(idx, out=idx)
            ts = ts[idx]
            oow = rng.random(n) < out_of_window_rate
            ts = np.where(oow, ts - rng.integers(86_400, 90 * 86_400, size=n), ts)
            df = pl.DataFrame({"u": users, "i": item, "c": cate, "b": beh, "t": ts})
            if bad_rate > 0:
                text = df.select(pl.concat_str(pl.all().cast(pl.Utf8), separator=",").alias("x"))["x"].to_numpy()
                bad = np.flatnonzero(rng.random(n) < bad_rate)
                text[bad] = np.array(BAD_LINES)[rng.integers(0, len(BAD_LINES), size=bad.size)]
                f.write(("\n".join(text) + "\n").encode())
            else:
                df.write_csv(f, include_header=False)
            written += n
    os.replace(tmp, path)
    params = {
        "rows": written, "seed": seed, "zipf_a": zipf_a, "tie_rate": tie_rate,
        "out_of_window_rate": out_of_window_rate, "bad_rate": bad_rate,
        "users": n_users, "items": n_items, "categories": n_cates,
    }
    write_sidecar(path, "lsdata.synth.taobao", "Tianchi UserBehavior.csv (user,item,category,behavior,ts; no header)",
                  params, "synthetic data in the Taobao UserBehavior format; not real Tianchi data")
    return path
