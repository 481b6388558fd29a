"""The split rule, in one place.

**Global cut time (default, the HPMN rule, protocol.md §2.1 step 6).** Each user contributes one
sample whose target is their last event. Sort the users' last-event times; the cut is the value at
position ``int(q * n)`` (or an explicit ``--cut-time``). A user goes to **test iff their last event is
strictly after the cut** (``last > cut``); ties at the cut go to train. Validation is carved from the
train users by the same rule on their own last-event times (``--valid-quantile`` / ``--valid-cut-time``),
so no model is ever selected on test. Every train target is at or before the validation cut, every
validation target at or before the test cut: no target of an earlier set is later than one of a later set.

**Leave-one-out (``loo``, for comparability only).** Every user's last event is a test target, the second
last a validation target and the third last a train target. This leaks global time: a train or validation
target can be later than another user's test target, and item-side features can see "future" popularity.
A warning says so in the report and on the console.

This module only decides *which event of which user is a target in which set*; labels and negatives are
:mod:`lsdata.samples`' job.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lsdata.defaults import SplitOptions

LOO_WARNING = (
    "leave-one-out split: targets are chosen per user, not by a global cut time, so training targets can be "
    "later than test targets of other users (global time leak). Use it only to compare with papers that use it."
)


def quantile_cut(last_ts: np.ndarray, q: float, counts: np.ndarray | None = None) -> int:
    """The HPMN cut: ``sorted(last_ts)[int(q * n)]``.

    ``counts``: ``last_ts`` are distinct values, each standing for that many users (a histogram, as a distributed
    engine aggregates it); the result is the same as on the expanded array.
    """
    counts = np.ones(last_ts.size, np.int64) if counts is None else np.asarray(counts, np.int64)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no users to split")
    order = np.argsort(last_ts, kind="stable")
    k = min(int(q * n), n - 1)
    return int(last_ts[order][np.searchsorted(np.cumsum(counts[order]), k, side="right")])


def cut_times(last_ts: np.ndarray, opts: SplitOptions, counts: np.ndarray | None = None) -> dict:
    """The test and validation cuts of the users' last-event times (``counts`` as in :func:`quantile_cut`), and
    the number of users tied at the test cut."""
    counts = np.ones(last_ts.size, np.int64) if counts is None else np.asarray(counts, np.int64)
    cut = opts.cut_time if opts.cut_time is not None else quantile_cut(last_ts, opts.cut_quantile, counts)
    train = last_ts <= cut
    vcut = None
    if opts.valid_cut_time is not None:
        vcut = int(opts.valid_cut_time)
    elif opts.valid_quantile is not None and counts[train].sum():
        vcut = quantile_cut(last_ts[train], opts.valid_quantile, counts[train])
    return {"cut_time": int(cut), "valid_cut_time": vcut, "ties_at_cut": int(counts[last_ts == cut].sum())}


def assign_cut(users: pl.DataFrame, opts: SplitOptions, cuts: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """Targets of the cut-time split.

    ``users`` has columns ``user``, ``length``, ``last_ts``. Returns ``(targets, info)`` where targets has
    ``user``, ``split`` (train/valid/test) and ``target_pos`` (index of the user's last event) and info has
    the cut values and the number of users tied at the test cut (:func:`cut_times`; ``cuts`` = those of all
    users, for assigning one partition's users).
    """
    last = users["last_ts"].to_numpy()
    info = cuts if cuts is not None else cut_times(last, opts)
    cut, vcut = info["cut_time"], info["valid_cut_time"]
    test = last > cut
    valid = np.zeros_like(test)
    if vcut is not None:
        valid = ~test & (last > vcut)
    split = np.where(test, "test", np.where(valid, "valid", "train"))
    targets = users.select(
        "user",
        pl.Series("split", split, dtype=pl.Utf8),
        (pl.col("length") - 1).cast(pl.Int32).alias("target_pos"),
    )
    return targets, info


def assign_loo(users: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Targets of leave-one-out: positions n-1 (test), n-2 (valid), n-3 (train) where they exist."""
    frames = []
    for split, back in (("train", 3), ("valid", 2), ("test", 1)):
        frames.append(
            users.filter(pl.col("length") >= back).select(
                "user", pl.lit(split).alias("split"), (pl.col("length") - back).cast(pl.Int32).alias("target_pos")
            )
        )
    return pl.concat(frames), {"cut_time": None, "valid_cut_time": None, "ties_at_cut": 0}


def assign(users: pl.DataFrame, opts: SplitOptions, cuts: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """Dispatch on ``opts.method``; see the module docstring for the rules (``cuts``: see :func:`assign_cut`)."""
    if opts.method == "loo":
        return assign_loo(users)
    return assign_cut(users, opts, cuts)
