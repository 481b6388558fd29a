"""``lsdata split``: targets (from :mod:`lsdata.split`) -> labelled samples in ``split/samples.parquet``.

A sample is a pointer into a stored sequence, never a copy of it: ``(user, target_pos, hist_end)`` with the
candidate ``(item, cate)``, the label and the target time. ``hist_end`` is the number of the user's events
with ``ts < target ts``, so the history is ``sequence[:hist_end]`` and can never contain the target or any
event at its timestamp.

With ``pairs`` every target gives a positive and a negative sample (MIMN's Amazon protocol; GAUC becomes
defined). Otherwise labels follow the reference: with probability ``neg_ratio`` (seeded) the candidate is replaced by an item
drawn uniformly from all items except the true target (drawn directly from ``{1..I} minus {true}``, no redraw
loop), with that item's category; the target time stays the true one. Draws are made in (user, set) order
for the whole dataset at once, so the result does not depend on the partitioning.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from lsdata import split as split_rule
from lsdata.dataset import Dataset
from lsdata.defaults import SPLITS, SplitOptions
from lsdata.events import write_parquet
from lsdata.io import InputError, publish, staging_dir, write_model_atomic
from lsdata.schemas import SampleRow, SetReport, SplitReport, arrow_schema


def flat_list(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list Series; ``values[offsets[i]:offsets[i+1]]`` is row i."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return _numpy(arr.values), _numpy(arr.offsets).astype(np.int64)


def _numpy(arr: pa.Array) -> np.ndarray:
    """``arr.to_numpy(zero_copy_only=False)``, read straight from the buffer for fixed-width numbers without nulls
    (``to_numpy`` imports pandas: 0.2-0.4 s at the start of every command)."""
    t = arr.type
    if arr.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        dtype = np.dtype(t.to_pandas_dtype())
        if len(arr) == 0:
            return np.zeros(0, dtype)
        return np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))[arr.offset :]
    return arr.to_numpy(zero_copy_only=False)


def item_categories(ds: Dataset) -> np.ndarray:
    """``lut[item_id] = cate_id`` (index 0 = padding -> 0)."""
    v = pl.read_parquet(ds.vocab_path("item"), columns=["id", "cate"])
    lut = np.zeros(v.height + 1, dtype=np.int32)
    lut[v["id"].to_numpy()] = v["cate"].to_numpy()
    return lut


def locate_targets(seq: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
    """Target time, true item/category and ``hist_end`` for targets of users in one sequences part."""
    users = seq["user"].to_numpy()
    ts, off = flat_list(seq["ts"])
    items, _ = flat_list(seq["item"])
    cates, _ = flat_list(seq["cate"])
    row = np.searchsorted(users, targets["user"].to_numpy())
    pos = off[row] + targets["target_pos"].to_numpy()
    tts = ts[pos]
    hist_end = ends_before(ts, off, row, tts) - off[row]
    return targets.with_columns(
        pl.Series("ts", tts, dtype=pl.Int64),
        pl.Series("true_item", items[pos], dtype=pl.Int32),
        pl.Series("true_cate", cates[pos], dtype=pl.Int32),
        pl.Series("hist_end", hist_end, dtype=pl.Int32),
    )


def ends_before(ts: np.ndarray, off: np.ndarray, row: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Flat end position of the events of sequence ``row[k]`` with ``ts < t[k]`` (strictly before; O(log n) each).

    ``ts``/``off`` are a list column's flat values and offsets, each row's values non-decreasing; ``t`` is
    clipped to [0, 2^32 - 1], which is exact for event times in [MIN_TS, MAX_TS].
    """
    key = (np.repeat(np.arange(off.size - 1, dtype=np.int64), np.diff(off)) << 32) | ts.astype(np.int64)
    t = np.clip(np.asarray(t, dtype=np.int64), 0, (1 << 32) - 1)
    return np.searchsorted(key, (np.asarray(row, dtype=np.int64) << 32) | t, side="left")


def draw_labels(n: int, true_item: np.ndarray, n_items: int, neg_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(label, candidate): label 0 with prob. ``neg_ratio``, candidate uniform over items != true."""
    rng = np.random.default_rng(seed)
    neg = rng.random(n) < neg_ratio
    if n_items < 2:
        neg[:] = False
    r = rng.integers(1, max(n_items, 2), size=n)  # uniform on 1..n_items-1
    other = r + (r >= true_item)  # skip the true item: uniform on {1..n_items} minus {true}
    return (~neg).astype(np.int8), np.where(neg, other, true_item).astype(np.int32)


def build(ds: Dataset, opts: SplitOptions, progress: Callable[[int], None] | None = None) -> SplitReport:
    """Run the split stage on a dataset and publish ``split/``; returns the report."""
    check_splittable(ds)
    parts = ds.parts("sequences")
    users = pl.concat([user_last(ds, p) for p in parts])
    targets, info = split_rule.assign(users, opts)
    located = []
    for p in parts:
        located.append(locate_part(ds, p, targets))
        if progress:
            progress(1)
    return finish(ds, opts, pl.concat(located), users.height, info)


def check_splittable(ds: Dataset) -> None:
    if ds.name == "xlong":
        raise InputError(f"{ds.root}: XLong arrives pre-split; its samples were written by ingest")


def user_last(ds: Dataset, part: Path) -> pl.DataFrame:
    """``user``, ``length``, ``last_ts`` of the users in one sequences part (what the split rule needs)."""
    return ds.read("sequences", part, ["user", "length", "ts"]).select("user", "length", pl.col("ts").list.last().alias("last_ts"))


def locate_part(ds: Dataset, part: Path, targets: pl.DataFrame) -> pl.DataFrame:
    """The targets of the users in one sequences part, located (:func:`locate_targets`; possibly no rows)."""
    seq = ds.read("sequences", part, ["user", "item", "cate", "ts"])
    return locate_targets(seq, targets.join(seq.select("user"), on="user", how="semi"))


def finish(ds: Dataset, opts: SplitOptions, located: pl.DataFrame, users_total: int, info: dict) -> SplitReport:
    """Located targets of all users (any order) -> labels and negatives, drawn in (user, set) order for the whole
    dataset -> ``split/`` published; returns the report."""
    order = {s: i for i, s in enumerate(SPLITS)}
    df = located.sort("user", pl.col("split").replace_strict(order, return_dtype=pl.Int8))
    lut = item_categories(ds)
    if opts.pairs:  # one positive and one negative per target, positive first
        df = pl.concat([df, df]).with_columns(pl.Series("_copy", np.repeat([0, 1], df.height)))
        df = df.sort("user", pl.col("split").replace_strict(order, return_dtype=pl.Int8), "_copy").drop("_copy")
        _, negative = draw_labels(df.height, df["true_item"].to_numpy(), lut.size - 1, 1.0, opts.seed)
        label = np.tile(np.array([1, 0], dtype=np.int8), df.height // 2)
        cand = np.where(label == 1, df["true_item"].to_numpy(), negative).astype(np.int32)
    else:
        label, cand = draw_labels(df.height, df["true_item"].to_numpy(), lut.size - 1, opts.neg_ratio, opts.seed)
    df = df.with_columns(
        pl.Series("label", label),
        pl.Series("item", cand),
        pl.Series("cate", lut[cand]),
    ).select(list(SampleRow.model_fields))
    report = SplitReport(
        options=opts.model_dump(mode="json"),
        method=opts.method,
        users_total=users_total,
        sets={s: set_report(df.filter(pl.col("split") == s)) for s in SPLITS},
        **info,
    )
    if opts.method == "loo":
        report.warnings.append(split_rule.LOO_WARNING)
    for s, r in report.sets.items():
        if r.samples == 0:
            report.warnings.append(f"the {s} set is empty")
    with staging_dir(ds.root, "split") as tmp:
        out = tmp / "split"
        write_parquet(df.to_arrow().cast(arrow_schema(SampleRow)), out / "samples.parquet")
        write_model_atomic(out / "report.json", report)
        shutil.rmtree(ds.root / "layouts", ignore_errors=True)
        publish(out, ds.root / "split", ["samples.parquet", "report.json"], "report.json")
    return report


def set_report(df: pl.DataFrame) -> SetReport:
    return SetReport(
        users=df["user"].n_unique(),
        samples=df.height,
        positives=int(df["label"].sum() or 0),
        empty_history=int((df["hist_end"] == 0).sum()),
        target_ts_min=df["ts"].min(),
        target_ts_max=df["ts"].max(),
    )
