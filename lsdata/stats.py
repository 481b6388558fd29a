"""``lsdata stats``: what a dataset holds as of a version, computed partition by partition.

:func:`compute` never loads a whole table: every table is read through :meth:`Dataset.read` (one partition
at a time, appended versions merged in), so the numbers are those of ``ds.version``. Per-user lengths come
from the ``length`` column of ``sequences/`` (one integer per user), per-item lengths from the ``count``
column of the item vocabulary as of the version (one integer per item, equal to the item's number of rows
in ``item_events/``), behaviour counts and the time range from per-partition aggregations of ``events/``
(two columns of one partition in memory at a time). Users/items/cates are the version's totals
(``manifest.json`` or its ``versions.json`` entry). Split and layout facts are read from
``split/samples.parquet`` (aggregated lazily) and the ``report.json`` files.

XLong datasets arrive as samples (``xlong/{split}.parquet``, list columns ``hist_item`` and ``side_user``):
for them the history lengths are the ``hist_item`` list lengths, the item-side lengths the ``side_user``
list lengths, and whatever needs events (behaviours, time range) is left empty.

:func:`plot` draws both length distributions (log-binned, log y) to a PNG; :func:`summary_line` is the
one-line digest printed by the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from lsdata import versions
from lsdata.dataset import Dataset
from lsdata.defaults import LAYOUTS, SPLITS, Behavior

QUANTILES = {"p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "p99": 0.99}


class Quantiles(BaseModel):
    """Distribution of a length (linear interpolation between order statistics, as numpy's default)."""

    count: int = Field(description="number of values (users, items or samples)")
    min: float
    p25: float
    p50: float
    p75: float
    p90: float
    p99: float
    max: float
    mean: float


class SetStats(BaseModel):
    samples: int
    users: int | None = Field(None, description="distinct users (None where the store has no user column)")
    positives: int | None = Field(None, description="label == 1 samples (None where the store has no label)")


class Stats(BaseModel):
    """Everything :func:`compute` reports; fields that do not apply to a dataset are None/empty."""

    dataset: str
    synthetic: bool = False
    users: int | None
    items: int | None
    cates: int | None
    events: int | None = Field(description="stored events (None for XLong, which stores samples)")
    seq_len: Quantiles | None = Field(None, description="per-user sequence length (XLong: per-sample history length)")
    item_len: Quantiles | None = Field(
        None, description="events per item (XLong: per-sample item-side length)"
    )
    behaviors: dict[str, int] = Field(default_factory=dict, description="behaviour name -> events")
    ts_min: int | None = None
    ts_max: int | None = None
    split_method: str | None = Field(None, description="cut | loo from split/report.json; \"pre-split\" for XLong")
    sets: dict[str, SetStats] = Field(default_factory=dict, description="train/valid/test sample counts")
    layouts: list[str] = Field(default_factory=list, description="finished layouts (their report.json exists)")


# --------------------------------------------------------------------------- compute


def quantiles(lf: pl.LazyFrame, col: str) -> Quantiles | None:
    """Quantiles of one integer column of a lazy frame (None if it has no rows)."""
    c = pl.col(col).cast(pl.Float64)
    row = (
        lf.select(
            pl.len().alias("count"),
            c.min().alias("min"),
            *[c.quantile(q, interpolation="linear").alias(k) for k, q in QUANTILES.items()],
            c.max().alias("max"),
            c.mean().alias("mean"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    if not row["count"]:
        return None
    return Quantiles(**row)


def seq_lengths(ds: Dataset) -> pl.LazyFrame:
    """Per-user sequence lengths (column ``length``), or per-sample history lengths for XLong."""
    if ds.name == "xlong":
        return _xlong_lengths(ds, "hist_item")
    frames = [ds.read("sequences", p, ["length"]) for p in ds.parts("sequences")]  # one integer per user
    return pl.concat(frames).lazy() if frames else pl.LazyFrame(schema={"length": pl.Int32})


def item_lengths(ds: Dataset) -> pl.LazyFrame:
    """Events per item (column ``length``), or per-sample item-side lengths for XLong."""
    if ds.name == "xlong":
        return _xlong_lengths(ds, "side_user")
    p = ds.vocab_path("item")
    if not p.exists():
        return pl.LazyFrame(schema={"length": pl.Int64})
    return pl.scan_parquet(p).select(pl.col("count").alias("length"))


def _xlong_files(ds: Dataset) -> dict[str, Path]:
    return {s: p for s in SPLITS if (p := ds.root / "xlong" / f"{s}.parquet").exists()}


def _xlong_lengths(ds: Dataset, col: str) -> pl.LazyFrame:
    frames = []
    for p in _xlong_files(ds).values():
        lf = pl.scan_parquet(p)
        if col in lf.collect_schema().names():
            frames.append(lf.select(pl.col(col).list.len().alias("length")))
    return pl.concat(frames) if frames else pl.LazyFrame(schema={"length": pl.UInt32})


def _behavior_name(code: int) -> str:
    try:
        return Behavior(code).name
    except ValueError:
        return f"code_{code}"


def _event_stats(ds: Dataset) -> tuple[int | None, dict[str, int], int | None, int | None]:
    """(events, behaviour counts, ts_min, ts_max) from per-partition aggregations of ``events/``."""
    parts = ds.parts("events")
    if not parts:
        return None, {}, None, None
    per_part = [
        ds.read("events", p, ["behavior", "ts"]).group_by("behavior")
        .agg(pl.len().alias("n"), pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
        for p in parts
    ]
    by = (
        pl.concat(per_part).group_by("behavior")
        .agg(pl.col("n").sum(), pl.col("lo").min(), pl.col("hi").max())
        .sort("behavior")
    )
    behaviors = {_behavior_name(int(b)): int(n) for b, n in zip(by["behavior"], by["n"])}
    events = int(by["n"].sum()) if by.height else 0
    lo = by["lo"].min() if by.height else None
    hi = by["hi"].max() if by.height else None
    return events, behaviors, lo, hi


def _set_stats(ds: Dataset) -> tuple[str | None, dict[str, SetStats]]:
    """Per-set counts from ``split/samples.parquet`` (events datasets) or ``xlong/`` (XLong)."""
    if ds.name == "xlong":
        sets = {}
        for s, p in _xlong_files(ds).items():
            lf = pl.scan_parquet(p)
            names = lf.collect_schema().names()
            aggs = [pl.len().alias("samples")]
            if "user" in names:
                aggs.append(pl.col("user").n_unique().alias("users"))
            if "label" in names:
                aggs.append((pl.col("label") == 1).sum().alias("positives"))
            sets[s] = SetStats(**lf.select(aggs).collect(engine="streaming").row(0, named=True))
        return ("pre-split" if sets else None), sets
    report = ds.root / "split" / "report.json"
    if not report.exists() or not ds.samples_path.exists():
        return None, {}
    method = ds.split_report().method
    df = (
        pl.scan_parquet(ds.samples_path)
        .group_by("split")
        .agg(
            pl.len().alias("samples"),
            pl.col("user").n_unique().alias("users"),
            (pl.col("label") == 1).sum().alias("positives"),
        )
        .collect(engine="streaming")
    )
    found = {r["split"]: r for r in df.iter_rows(named=True)}  # at most three rows
    sets = {}
    for s in SPLITS:
        r = found.get(s, {"samples": 0, "users": 0, "positives": 0})
        sets[s] = SetStats(samples=r["samples"], users=r["users"], positives=r["positives"])
    return method, sets


def finished_layouts(ds: Dataset) -> list[str]:
    """Layouts whose ``layouts/NAME/report.json`` exists (known names first, in their canonical order)."""
    d = ds.root / "layouts"
    if not d.is_dir():
        return []
    found = {p.parent.name for p in d.glob("*/report.json")}
    return [n for n in LAYOUTS if n in found] + sorted(found - set(LAYOUTS))


def compute(ds: Dataset) -> Stats:
    """Statistics of a dataset as of ``ds.version``; see the module docstring for where each number comes from."""
    m = versions.totals(ds)[1]  # manifest.json, or the version's versions.json entry
    if ds.name == "xlong":
        events, behaviors, lo, hi = None, {}, None, None
    else:
        events, behaviors, lo, hi = _event_stats(ds)
    method, sets = _set_stats(ds)
    return Stats(
        dataset=ds.name,
        synthetic=ds.manifest.synthetic,
        users=m.users,
        items=m.items,
        cates=m.cates,
        events=events,
        seq_len=quantiles(seq_lengths(ds), "length"),
        item_len=quantiles(item_lengths(ds), "length"),
        behaviors=behaviors,
        ts_min=lo if lo is not None else m.ts_min,
        ts_max=hi if hi is not None else m.ts_max,
        split_method=method,
        sets=sets,
        layouts=finished_layouts(ds),
    )


# --------------------------------------------------------------------------- text and plot


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.1f}"


def summary_line(stats: Stats) -> str:
    """One line, e.g. ``taobao: 43 users, 3,276 items, 4,320 events; seq len p50 84 max 466; train/valid/test 28/3/12 samples``."""
    head = [f"{_num(stats.users)} users", f"{_num(stats.items)} items"]
    if stats.events is not None:
        head.append(f"{_num(stats.events)} events")
    parts = [f"{stats.dataset}: " + ", ".join(head)]
    if stats.seq_len is not None:
        parts.append(f"seq len p50 {_num(stats.seq_len.p50)} max {_num(stats.seq_len.max)}")
    if stats.sets:
        names = [s for s in SPLITS if s in stats.sets]
        parts.append("/".join(names) + " " + "/".join(_num(stats.sets[s].samples) for s in names) + " samples")
    if stats.layouts:
        parts.append("layouts " + ",".join(stats.layouts))
    return "; ".join(parts)


def _log_hist(ax, values: np.ndarray, title: str, xlabel: str) -> None:
    """Histogram with logarithmic bins on a log x axis and a log y axis."""
    values = values[values > 0]
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if values.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    hi = max(float(values.max()), 2.0)
    bins = np.unique(np.logspace(0, np.log10(hi) + 1e-9, num=min(50, max(int(hi), 2)) + 1))
    ax.hist(values, bins=bins, color="#4472c4", edgecolor="white", linewidth=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")


def plot(ds: Dataset, path: str | Path) -> Path:
    """Write a PNG with the user-side and item-side length histograms; returns the path.

    Only the per-user / per-item length columns are read (one integer each). Written atomically:
    a temp file in the same directory, then ``os.replace``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seq = seq_lengths(ds).collect(engine="streaming")["length"].to_numpy()
    side = item_lengths(ds).collect(engine="streaming")["length"].to_numpy()
    xlong = ds.name == "xlong"
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{ds.name}{' (synthetic)' if ds.manifest.synthetic else ''}: {ds.root.name}")
    ax1, ax2 = fig.subplots(1, 2)
    _log_hist(ax1, seq, "history length per sample" if xlong else "sequence length per user",
              "events (log bins)")
    _log_hist(ax2, side, "item-side length per sample" if xlong else "events per item", "events (log bins)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
