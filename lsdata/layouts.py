"""``lsdata layout``: samples + stored sequences -> fixed-width Parquet layouts, materialised on request.

Layouts (widths from :data:`lsdata.defaults.PRESETS`, overridable):

* ``plain`` - history post-padded (real events first), item side post-padded, lengths.
* ``hpmn``  - both front-padded (zeros first, most recent event last), as HPMN's ``front_padding``.
* ``shan``  - the reference ``crop``: long part front-padded + short part (most recent ``short``), each
  with its length, for the history and for the item side.
* ``mimn``  - ``hpmn`` plus a per-position negative history (``neg_item``/``neg_cate``) for the DIEN/MIMN
  auxiliary loss: uniform items never in the sample's shown history, 0 at padded positions.

The target is never inside the history arrays: its item/category/time are separate columns and every
history and item-side event is strictly earlier than ``ts``. A model that wants the reference's
"candidate as the last step" appends it itself.

Item side: the users who touched the candidate item strictly before ``ts`` (most recent first kept),
found by binary search in ``item_events/`` (sorted by item, then time) - no join, no Python loop.

Work is bounded by one partition: item-side windows for all samples are computed one item partition at a
time (kept as ``[n_samples, max side width]`` matrices), then histories one user partition at a time,
each partition appended as row groups to ``layouts/NAME/{train,valid,test}.parquet``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lsdata.dataset import Dataset
from lsdata.defaults import LAYOUTS, PRESETS, SPLITS, LayoutLengths
from lsdata.events import arrow_memory, parquet_options
from lsdata.io import Background, InputError, publish, sha256_file, staging_dir, write_model_atomic
from lsdata.samples import flat_list, item_categories
from lsdata.schemas import LAYOUT_ROWS, LayoutReport, arrow_schema
from lsdata.views import arrow_array, fixed_list, pad_values, split_window_rows, take, window_rows

HIST_FIELDS = {"item": pa.int32(), "cate": pa.int32(), "behavior": pa.int8()}
SIDE_FIELDS = {"user": pa.int32(), "behavior": pa.int8()}


@dataclass
class Ranges:
    """Flat value arrays and, per sample, the half-open range of its sequence in them."""

    values: dict[str, np.ndarray]
    starts: np.ndarray
    ends: np.ndarray
    #: field -> (pad, values zero-padded by pad): made once, shared by subsets (see :meth:`take`)
    padded: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def take(self, f: str, view: tuple[np.ndarray, np.ndarray, np.ndarray], holes: np.ndarray | None = None) -> np.ndarray:
        """Field ``f`` over a window ``view`` = ``(first, mask, length)`` from :func:`lsdata.views.window_rows`
        (0 at padded positions; ``holes`` = ``~mask`` when the caller has it)."""
        first, mask, _ = view
        width = mask.shape[1]
        pad, vp = self.padded.get(f, (-1, None))
        if pad < width:
            pad = width
            vp = pad_values(self.values[f], pad)
            self.padded[f] = (pad, vp)
        return take(vp, pad, first, mask, holes=holes)


def widths_of(name: str, w: LayoutLengths) -> dict[str, int]:
    """Fixed-list widths of a layout's columns (keys as in the schemas' ``x-width``)."""
    if name == "shan":
        if not (0 < w.short <= w.hist and 0 < w.side_short <= w.side):
            raise InputError(f"shan needs 0 < short <= hist and 0 < side_short <= side, got {w}")
        return {"long": w.hist - w.short, "short": w.short, "side_long": w.side - w.side_short, "side_short": w.side_short}
    return {"hist": w.hist, "side": w.side}


def lengths_for(dataset: str, name: str, overrides: dict[str, int] | None = None) -> LayoutLengths:
    if name not in LAYOUTS:
        raise InputError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")
    base = PRESETS[dataset][name]
    return base.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})


class NegativeSampler:
    """Per-position negatives for ``mimn``: uniform items, never one in the row's shown history."""

    def __init__(self, n_items: int, item_cate: np.ndarray, seed: int):
        self.n_items = n_items
        self.item_cate = item_cate
        self.seed = seed

    def __call__(self, hist: np.ndarray, mask: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, stream])
        n, width = hist.shape
        rows = np.arange(n, dtype=np.int64)[:, None]
        span = np.int64(self.n_items + 1)
        own = np.sort((rows * span + hist)[mask])  # duplicates are harmless for the membership test
        if not own.size:  # no history shown in this batch: a key no draw (>= 1) can equal, nothing clashes
            own = np.zeros(1, np.int64)
        neg = rng.integers(1, self.n_items + 1, size=(n, width))
        todo = mask.copy()
        for _ in range(64):  # rejection: expected rounds ~ 1 + |history| / n_items
            keys = rows * span + neg
            pos = np.searchsorted(own, keys)
            clash = (pos < own.size) & (own[np.minimum(pos, max(own.size - 1, 0))] == keys) & todo
            if not clash.any():
                break
            neg[clash] = rng.integers(1, self.n_items + 1, size=int(clash.sum()))
        else:
            raise InputError(
                f"mimn: could not draw negatives outside the histories: only {self.n_items} items for histories of "
                f"up to {width}; use a smaller --hist"
            )
        neg = np.where(mask, neg, 0).astype(np.int32)
        return neg, self.item_cate[neg]


def layout_table(
    name: str,
    w: LayoutLengths,
    target: pl.DataFrame,
    hist: Ranges,
    side: Ranges,
    negatives: NegativeSampler | None = None,
    stream: int = 0,
) -> pa.Table:
    """One layout's rows for a batch of samples (``target`` has user, label, item, cate, ts)."""
    cols: dict[str, pa.Array] = {c: target[c].to_arrow() for c in ("user", "label", "item", "cate", "ts")}

    def put(prefix: str, fields: dict[str, pa.DataType], r: Ranges, view) -> None:
        holes = ~view[1]
        for f, t in fields.items():
            cols[f"{prefix}_{f}"] = fixed_list(r.take(f, view, holes), t)
        cols[f"{prefix}_len"] = arrow_array(view[2], pa.int32())

    if name == "shan":
        ws = widths_of(name, w)
        (hl, hs) = split_window_rows(hist.starts, hist.ends, ws["long"], ws["short"])
        (sl, ss) = split_window_rows(side.starts, side.ends, ws["side_long"], ws["side_short"])
        put("long", HIST_FIELDS, hist, hl)
        put("short", HIST_FIELDS, hist, hs)
        put("side_long", SIDE_FIELDS, side, sl)
        put("side_short", SIDE_FIELDS, side, ss)
    else:
        pad = "post" if name == "plain" else "front"
        hv = window_rows(hist.starts, hist.ends, w.hist, pad)
        put("hist", HIST_FIELDS, hist, hv)
        put("side", SIDE_FIELDS, side, window_rows(side.starts, side.ends, w.side, pad))
        if name == "mimn":
            if negatives is None:
                raise ValueError("mimn needs a NegativeSampler")
            items = hist.take("item", hv)
            neg_item, neg_cate = negatives(items, hv[1], stream)
            cols["neg_item"] = fixed_list(neg_item, pa.int32())
            cols["neg_cate"] = fixed_list(neg_cate, pa.int32())
    schema = arrow_schema(LAYOUT_ROWS[name], widths_of(name, w))
    return pa.table([cols[f.name] for f in schema], schema=schema)


class LayoutWriter:
    """Appends row groups per split to ``NAME/{train,valid,test}.parquet`` inside a staging dir.

    With ``bg`` the writes run on its lane ``NAME`` (in order; the three layouts' files are encoded concurrently,
    while the next partition is computed)."""

    def __init__(self, tmp: Path, name: str, w: LayoutLengths, bg: Background | None = None):
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.w = w
        self.bg = bg
        self.schema = arrow_schema(LAYOUT_ROWS[name], widths_of(name, w))
        self.writers = {s: pq.ParquetWriter(self.dir / f"{s}.parquet", self.schema, **parquet_options(self.schema)) for s in SPLITS}
        self.rows = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, table: pa.Table) -> None:
        if table.num_rows:
            if self.bg is None:
                self.writers[split].write_table(table, row_group_size=1 << 16)
            else:
                self.bg.submit(self.name, self.writers[split].write_table, table, row_group_size=1 << 16)
            self.rows[split] += table.num_rows

    def close(self) -> LayoutReport:
        """Finish the files (after the pending writes), write ``report.json``; returns the report."""
        if self.bg is not None:
            return self.bg.submit(self.name, self._close).result()
        return self._close()

    def _close(self) -> LayoutReport:
        for wr in self.writers.values():
            wr.close()
        files = {f"{s}.parquet": sha256_file(self.dir / f"{s}.parquet") for s in SPLITS}
        report = LayoutReport(layout=self.name, widths=widths_of(self.name, self.w), rows=self.rows, files=files)
        write_model_atomic(self.dir / "report.json", report)
        return report


def publish_layouts(ds: Dataset, tmp: Path, writers: dict[str, LayoutWriter]) -> dict[str, LayoutReport]:
    """Close every writer (concurrently, on their lanes, when they have one) and move its files into
    ``layouts/NAME/`` (report.json last)."""
    closing = {n: wr.bg.submit(n, wr._close) if wr.bg is not None else None for n, wr in writers.items()}
    reports = {n: f.result() if f is not None else writers[n].close() for n, f in closing.items()}
    for n in writers:
        publish(tmp / n, ds.layout_dir(n), [f"{s}.parquet" for s in SPLITS] + ["report.json"], "report.json")
    return reports


def side_windows(ds: Dataset, samples: pl.DataFrame, width: int, prefilter: bool = False) -> Ranges:
    """Most recent ``width`` item-side events of every sample's candidate, as ``[n, width]`` front-padded rows.

    Returned as :class:`Ranges` over the flattened matrices, so layouts re-window them like any sequence.
    ``prefilter``: read only the samples' items' rows of each partition (for a batch touching few items).
    """
    parts = ds.parts("item_events")
    n = samples.height
    users = np.zeros((n, width), np.int32)
    behs = np.zeros((n, width), np.int8)
    lens = np.zeros(n, np.int64)
    item = samples["item"].to_numpy().astype(np.int64)
    ts = samples["ts"].to_numpy().astype(np.int64)
    for q, p in enumerate(parts):
        sel = np.flatnonzero(item % len(parts) == q)
        if sel.size == 0:
            continue
        ev = ds.read("item_events", p, items=pl.Series("item", np.unique(item[sel]), dtype=pl.Int32) if prefilter else None)
        users[sel], behs[sel], lens[sel] = side_part(ev, item[sel], ts[sel], width)
    return side_ranges(users, behs, lens)


def side_part(ev: pl.DataFrame, item: np.ndarray, ts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[k, width]`` front-padded item-side users and behaviours, and lengths, of ``k`` samples (candidate ``item``,
    time ``ts``) whose items are in the item-events partition ``ev``."""
    key = (ev["item"].to_numpy().astype(np.int64) << 32) | ev["ts"].to_numpy()
    item = item.astype(np.int64)
    first = np.searchsorted(key, item << 32, side="left")
    stop = np.searchsorted(key, (item << 32) | ts.astype(np.int64), side="left")  # strictly before ts
    view = window_rows(first, stop, width, "front")
    r = Ranges({"user": ev["user"].to_numpy(), "behavior": ev["behavior"].to_numpy()}, first, stop)
    holes = ~view[1]
    return r.take("user", view, holes), r.take("behavior", view, holes), view[2]


def side_ranges(users: np.ndarray, behs: np.ndarray, lens: np.ndarray) -> Ranges:
    """:class:`Ranges` over ``[n, width]`` front-padded item-side matrices (row i's events end at ``(i + 1) * width``)."""
    n, width = users.shape
    ends = (np.arange(n, dtype=np.int64) + 1) * width
    return Ranges({"user": users.reshape(-1), "behavior": behs.reshape(-1)}, ends - lens, ends)


def subset(r: Ranges, sel: np.ndarray) -> Ranges:
    return Ranges(r.values, r.starts[sel], r.ends[sel], r.padded)


def part_tables(
    seq: pl.DataFrame,
    batch: pl.DataFrame,
    rows: np.ndarray,
    side: Ranges,
    lengths: dict[str, LayoutLengths],
    negatives: NegativeSampler,
    part_no: int,
) -> Iterator[tuple[str, str, pa.Table]]:
    """``(split, layout, rows)`` of the samples ``batch`` of sequences part number ``part_no``: their users'
    sequences are rows ``rows`` of ``seq``, their item sides ``side`` (in batch order)."""
    values = {}
    for f in HIST_FIELDS:
        values[f], off = flat_list(seq[f])
    starts = off[rows]
    hist = Ranges(values, starts, starts + batch["hist_end"].to_numpy())
    splits = batch["split"].to_numpy()
    for s in SPLITS:
        m = np.flatnonzero(splits == s)
        if m.size == 0:
            continue
        for n, w in lengths.items():
            yield s, n, layout_table(n, w, batch[m], subset(hist, m), subset(side, m), negatives, stream=part_no * len(SPLITS) + SPLITS.index(s))


def plan(
    ds: Dataset, names: list[str], overrides: dict[str, dict[str, int]] | None, seed: int | None
) -> tuple[dict[str, LayoutLengths], NegativeSampler]:
    """Widths of each requested layout and mimn's negative sampler (seed: the split's unless given)."""
    seed = ds.split_report().options.get("seed", 0) if seed is None else seed
    lengths = {n: lengths_for(ds.name, n, (overrides or {}).get(n)) for n in dict.fromkeys(names)}
    lut = item_categories(ds)
    return lengths, NegativeSampler(lut.size - 1, lut, seed)


def build(
    ds: Dataset,
    names: list[str],
    overrides: dict[str, dict[str, int]] | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LayoutReport]:
    """Materialise layouts ``names`` for an events dataset; publishes ``layouts/NAME/``."""
    if ds.name == "xlong":
        from lsdata.ingest import xlong

        return xlong.build_layouts(ds, names, overrides, progress, seed=seed)
    lengths, negatives = plan(ds, names, overrides, seed)
    samples = pl.read_parquet(ds.samples_path)
    side = side_windows(ds, samples, max(w.side for w in lengths.values()))
    sample_users = samples["user"].to_numpy()
    # each layout's Parquet encoding runs on its own thread while the next partition's windows are gathered;
    # at most one partition's tables per layout wait to be written
    with arrow_memory(), staging_dir(ds.root, "layouts") as tmp, Background(limit=len(SPLITS)) as bg:
        writers = {n: LayoutWriter(tmp, n, w, bg) for n, w in lengths.items()}
        for part_no, p in enumerate(ds.parts("sequences")):
            seq = ds.read("sequences", p, ["user", "item", "cate", "behavior"])
            users = seq["user"].to_numpy()
            pos = np.searchsorted(users, sample_users)
            sel = np.flatnonzero((pos < users.size) & (users[np.minimum(pos, users.size - 1)] == sample_users))
            if sel.size == 0:
                continue
            for s, n, t in part_tables(seq, samples[sel], pos[sel], subset(side, sel), lengths, negatives, part_no):
                writers[n].write(s, t)
            if progress:
                progress(1)
        return publish_layouts(ds, tmp, writers)
