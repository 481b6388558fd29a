"""Point-in-time retrieval: ``(user, ts[, item])`` requests -> a layout's rows, from events strictly before ``ts``.

This is the serving-side twin of ``lsdata split`` + ``lsdata layout``: for a request equal to a built
sample's ``(user, ts, item)`` it returns exactly that sample's layout row (train/serve parity; a property
test checks it on every layout). It works on any dataset version (``open_dataset(DIR, version=N)``).

Semantics (identical to :mod:`lsdata.samples` and :mod:`lsdata.layouts`):

* **History** = the user's events with ``ts < request ts``: strictly before. Events in the same second as
  the request are never history, whatever their file order (this is how a layout treats the events that
  share its target's second). Earlier events keep the stored ``(ts, src_file, src_row)`` order and the
  window keeps the most recent ones in that order, so ties *before* the request are ordered exactly as in
  the layouts.
* **Item side** = the touches of the candidate item with ``ts < request ts`` (other users' and the
  requesting user's own earlier touches), most recent kept, as in the layouts.
* The candidate's category is the request's ``cate`` column when given, else the item vocabulary's (the
  rule the split uses for every candidate). A request without ``item`` (or with item 0) gets an empty item
  side and item/cate 0 (padding).
* ``label`` is passed through when the requests carry one, else null. ``mimn``'s negative history is drawn
  like the layout's (uniform, never an item of the shown history, seeded) but from its own random stream,
  so it is the one column that does not repeat the layout's values.

Requests are a Parquet (or CSV) table with integer columns ``user`` and ``ts`` (unix seconds, or a
datetime column) and optional ``item``, ``cate``, ``label``. Ids are dense (1-based, as in the layouts)
unless ``raw_ids``: then ``user``/``item`` are raw ids mapped through the vocabulary, unknown ones to 0
(empty history / item side) and counted.

Vectorised, never a Python loop per request. Requests are processed in **rounds** of as many chunks of
``batch`` as fit :data:`ROUND_BYTES` of window matrices (:func:`round_rows`; 100k+ requests of the Taobao
hpmn widths per round). Per round, each sequence partition holding a requested user is read once (one
merged read as of the version) and the history windows of all the round's requests in it are cut; each
item-event partition holding a requested item is read once, only the requested items' rows (a prefiltered
read). The round is then yielded chunk by chunk (one table of ``batch`` rows each). Every request costs
``O(log E)`` (one binary search in its partition's packed ``(row, ts)`` keys) plus ``O(W)`` for its window
of width ``W``. Total: ``O(R (log E + W))`` plus one read of the touched partitions per round (once per call
unless the requests exceed a round), memory ``O(min(R, round) * W + one partition)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lsdata.dataset import Dataset
from lsdata.defaults import LayoutLengths
from lsdata.events import parquet_options
from lsdata.io import InputError, check_input_file, read_json
from lsdata.layouts import (
    HIST_FIELDS,
    SIDE_FIELDS,
    NegativeSampler,
    Ranges,
    layout_table,
    lengths_for,
    side_windows,
    subset,
    widths_of,
)
from lsdata.samples import ends_before, flat_list, item_categories
from lsdata.schemas import RETRIEVED_ROWS, LayoutReport, arrow_schema
from lsdata.views import gather, window

DEFAULT_BATCH = 1 << 16  #: requests per chunk (one output table / row group)
ROUND_BYTES = 1 << 30  #: window matrices of one read round (see :func:`round_rows`)
INT_COLUMNS = ("user", "item", "cate", "label")


@dataclass
class RetrieveReport:
    """What one retrieval did (printed by the CLI)."""

    rows: int = 0
    layout: str = ""
    widths: dict[str, int] = field(default_factory=dict)
    version: int = 1
    unknown_users: int = 0
    unknown_items: int = 0
    empty_history: int = 0


def layout_lengths(ds: Dataset, name: str, overrides: dict[str, int] | None = None) -> LayoutLengths:
    """Widths of ``name``: those of the built layout when ``layouts/NAME/report.json`` exists (so retrieval
    matches what a model was trained on), else the dataset preset; ``overrides`` win."""
    w = lengths_for(ds.name, name)
    rep = ds.layout_dir(name) / "report.json"
    if rep.exists():
        built = LayoutReport.model_validate(read_json(rep)).widths
        if name == "shan":
            w = w.model_copy(update=dict(hist=built["long"] + built["short"], short=built["short"],
                                         side=built["side_long"] + built["side_short"], side_short=built["side_short"]))
        else:
            w = w.model_copy(update=dict(hist=built["hist"], side=built["side"]))
    w = w.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    widths_of(name, w)  # validates shan's parts
    return w


def read_requests(path: str | Path) -> pl.DataFrame:
    """The requests file (Parquet, or CSV by its ``.csv`` suffix), checked: a one-line InputError naming the
    file, row and field of the first problem."""
    check_input_file(path)
    p = Path(path)
    try:
        df = pl.read_csv(p) if p.suffix.lower() == ".csv" else pl.read_parquet(p)
    except Exception as e:
        raise InputError(f"{p}: cannot read requests: {str(e).splitlines()[0]}") from e
    return check_requests(df, str(p))


def check_requests(df: pl.DataFrame, source: str = "requests") -> pl.DataFrame:
    """Columns and types of a requests table (``user``, ``ts`` required); ``ts`` as int64 unix seconds."""
    missing = [c for c in ("user", "ts") if c not in df.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)} (requests need user, ts and optionally item, cate, label)")
    if df.schema["ts"].is_temporal():
        df = df.with_columns(pl.col("ts").dt.epoch("s"))
    for c in ("ts", *INT_COLUMNS):
        if c in df.columns and not (df.schema[c].is_integer() or (c in ("user", "item") and df.schema[c] == pl.Utf8)):
            raise InputError(f"{source}: field {c}: expected integers, got {df.schema[c]}")
        if c in df.columns and df[c].null_count():
            row = int(df[c].is_null().arg_max())
            raise InputError(f"{source}: row {row}: field {c} is null")
    return df


def _dense(df: pl.DataFrame, ds: Dataset, col: str, raw_ids: bool, source: str) -> tuple[np.ndarray, int]:
    """Dense ids of ``col`` (0 where unknown, raw mode only) and the number of unknown ones."""
    vocab = pl.read_parquet(ds.vocab_path(col), columns=["id", "raw"])
    if raw_ids:
        try:
            raw = df[col].cast(vocab.schema["raw"])
        except Exception as e:
            raise InputError(f"{source}: field {col}: raw ids must be {vocab.schema['raw']} for this dataset") from e
        ids = raw.to_frame("raw").join(vocab, on="raw", how="left", maintain_order="left")["id"].fill_null(0)
        ids = ids.to_numpy().astype(np.int64)
        return ids, int((ids == 0).sum())
    if df.schema[col] == pl.Utf8:
        raise InputError(f"{source}: field {col}: dense ids are integers (use --raw-ids for raw ids)")
    ids = df[col].to_numpy().astype(np.int64)
    bad = np.flatnonzero((ids < 1 if col == "user" else ids < 0) | (ids > vocab.height))
    if bad.size:
        raise InputError(f"{source}: row {int(bad[0])}: field {col}: id {int(ids[bad[0]])} is not a dense {col} id "
                         f"(1..{vocab.height}{', or 0 for none' if col == 'item' else ''}); use --raw-ids for raw ids")
    return ids, 0


def round_rows(batch: int, w: LayoutLengths) -> int:
    """Requests per read round: as many whole chunks of ``batch`` as the round's window matrices
    (``hist`` x 9 + ``side`` x 5 bytes a request) fit in :data:`ROUND_BYTES`, at least one chunk."""
    per_request = w.hist * sum(t.bit_width // 8 for t in HIST_FIELDS.values()) + \
        w.side * sum(t.bit_width // 8 for t in SIDE_FIELDS.values())
    return max(ROUND_BYTES // per_request // batch, 1) * batch


def user_partitions(ds: Dataset) -> np.ndarray:
    """``lut[user] = index of the sequences partition holding the user`` (-1 for 0 and unknown ids)."""
    n = pl.read_parquet(ds.vocab_path("user"), columns=["id"]).height
    lut = np.full(n + 1, -1, np.int32)
    for q, p in enumerate(ds.parts("sequences")):
        lut[ds.read("sequences", p, ["user"])["user"].to_numpy()] = q
    return lut


def history_windows(ds: Dataset, part_of: np.ndarray, users: np.ndarray, ts: np.ndarray, width: int) -> Ranges:
    """Most recent ``width`` events strictly before ``ts[k]`` of user ``users[k]``, as ``[n, width]`` front-padded
    rows wrapped in :class:`Ranges` (layouts re-window them like any sequence; windows of every layout are a
    suffix of this one, so nothing is lost). Each partition holding a requested user is read once."""
    n = users.size
    mats = {f: np.zeros((n, width), t.to_pandas_dtype()) for f, t in HIST_FIELDS.items()}
    lens = np.zeros(n, np.int64)
    where = part_of[users]
    for q, p in enumerate(ds.parts("sequences")):
        sel = np.flatnonzero(where == q)
        if sel.size == 0:
            continue
        seq = ds.read("sequences", p, ["user", *HIST_FIELDS, "ts"])
        row = np.searchsorted(seq["user"].to_numpy(), users[sel])
        ts_flat, off = flat_list(seq["ts"])
        idx, mask, ln = window(off[row], ends_before(ts_flat, off, row, ts[sel]), width, "front")
        for f in HIST_FIELDS:
            mats[f][sel] = gather(flat_list(seq[f])[0], idx, mask)
        lens[sel] = ln
    ends = (np.arange(n, dtype=np.int64) + 1) * width
    return Ranges({f: m.reshape(-1) for f, m in mats.items()}, ends - lens, ends)


def retrieve(
    ds: Dataset,
    requests: pl.DataFrame,
    layout: str,
    overrides: dict[str, int] | None = None,
    raw_ids: bool = False,
    batch: int = DEFAULT_BATCH,
    seed: int | None = None,
    source: str = "requests",
    report: RetrieveReport | None = None,
):
    """Yield the layout's rows (``RETRIEVED_ROWS[layout]`` tables) for ``requests``, in request order, one table
    per chunk of ``batch`` requests. See the module docstring for the semantics and the cost."""
    if ds.name == "xlong":
        raise InputError(f"{ds.root}: XLong has no timestamps or events (it arrives as samples); nothing to retrieve")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    requests = check_requests(requests, source)
    w = layout_lengths(ds, layout, overrides)
    report = report if report is not None else RetrieveReport()
    report.layout, report.widths, report.version = layout, widths_of(layout, w), ds.version
    users, report.unknown_users = _dense(requests, ds, "user", raw_ids, source)
    if "item" in requests.columns:
        items, report.unknown_items = _dense(requests, ds, "item", raw_ids, source)
    else:
        items = np.zeros(requests.height, np.int64)
    lut = item_categories(ds)
    cates = requests["cate"].to_numpy().astype(np.int32) if "cate" in requests.columns else lut[items]
    ts = requests["ts"].to_numpy().astype(np.int64)
    labels = requests["label"].cast(pl.Int8) if "label" in requests.columns else pl.Series("label", [None] * requests.height, pl.Int8)
    seed = seed if seed is not None else _split_seed(ds)
    negatives = NegativeSampler(lut.size - 1, lut, seed) if layout == "mimn" else None
    schema = arrow_schema(RETRIEVED_ROWS[layout], widths_of(layout, w))
    part_of = user_partitions(ds)
    step = round_rows(batch, w)
    for first in range(0, requests.height, step):  # a round: every partition read once, then its chunks
        last = min(first + step, requests.height)
        target = pl.DataFrame({
            "user": pl.Series(users[first:last], dtype=pl.Int32),
            # layout_table writes a label column; it is replaced by the request's (or null) below
            "label": pl.zeros(last - first, pl.Int8, eager=True),
            "item": pl.Series(items[first:last], dtype=pl.Int32),
            "cate": pl.Series(cates[first:last], dtype=pl.Int32),
            "ts": pl.Series(ts[first:last], dtype=pl.Int64),
        })
        hist = history_windows(ds, part_of, users[first:last], ts[first:last], w.hist)
        side = side_windows(ds, target, w.side, prefilter=True)
        for lo in range(first, last, batch):
            hi = min(lo + batch, last)
            sel = np.arange(lo - first, hi - first)
            h = subset(hist, sel)
            t = layout_table(layout, w, target[lo - first:hi - first], h, subset(side, sel), negatives, stream=lo // batch)
            t = t.set_column(t.schema.get_field_index("label"), "label", labels[lo:hi].to_arrow())
            t = t.add_column(0, "request", pa.array(np.arange(lo, hi, dtype=np.int64)))
            report.rows += t.num_rows
            report.empty_history += int(((h.ends - h.starts) == 0).sum())
            yield t.cast(schema)


def _split_seed(ds: Dataset) -> int:
    rep = ds.root / "split" / "report.json"
    return int(read_json(rep)["options"].get("seed", 0)) if rep.exists() else 0


def retrieve_to_file(
    ds: Dataset,
    requests_path: str | Path,
    layout: str,
    out: str | Path,
    overrides: dict[str, int] | None = None,
    raw_ids: bool = False,
    batch: int = DEFAULT_BATCH,
    seed: int | None = None,
) -> RetrieveReport:
    """Retrieve for a requests file and write ``out`` (Parquet, one row group per chunk) atomically."""
    out = Path(out)
    requests = read_requests(requests_path)
    report = RetrieveReport()
    w = layout_lengths(ds, layout, overrides)
    schema = arrow_schema(RETRIEVED_ROWS[layout], widths_of(layout, w))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema, **parquet_options(schema)) as wr:
            for t in retrieve(ds, requests, layout, overrides, raw_ids, batch, seed, str(requests_path), report):
                wr.write_table(t, row_group_size=1 << 16)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return report
