"""Raw events -> canonical ``events/``, ``sequences/`` and ``vocab/`` (the source-agnostic stage).

Sources (``lsdata.ingest.*``) hand :class:`EventBuilder` polars frames of *raw* events::

    user, item, cate : raw ids (Int64 or Utf8, one type per dataset; never null)
    behavior         : Int8 code (lsdata.defaults.Behavior)
    ts               : Int64 unix seconds
    rating           : Float32, nullable
    src_file, src_row: Int16 file index, Int64 1-based line number

Out of core by construction, in two passes whose memory is bounded by one partition:

1. ``add``: each batch is hash-partitioned on the raw user id and appended to that partition's
   spill file (Arrow IPC, uncompressed: lz4 cost ~10 % of the ingest CPU, for spills that live minutes; they
   take ~47 bytes per Taobao event on disk). All of a user's events land in one partition.
2. ``finish``: vocabularies are built by one streaming aggregation over the spills (dense ids =
   rank of the raw id, 1-based); then each partition is remapped, sorted by
   ``(user, ts, src_file, src_row)`` and written twice: flat (``events/part-NNNNN.parquet``) and
   grouped into list columns (``sequences/part-NNNNN.parquet``, zero-copy from the sorted arrays).
   The same rows are spilled again by dense item id, then sorted by ``(item, ts, src_file, src_row)``
   into ``item_events/part-NNNNN.parquet`` (item, ts, user, behavior): the item-side view that
   layouts binary-search for "users who touched item i strictly before t".

Memory never holds more than one partition plus the vocabularies (a few hundred MB at Taobao's
4.2M items); the partition count is chosen from the input size (:mod:`lsdata.defaults`). With a
:class:`lsdata.io.Background` the spill and Parquet writes (and the sha256 of each output file, for the
manifest) run on worker threads, in order per file, while the next batch or partition is computed; at most
two calls per file kind wait, so memory stays bounded by a few partitions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from lsdata.io import Background, sha256_file
from lsdata.schemas import EventRow, ItemEventRow, ItemVocabRow, SequenceRow, VocabRow, arrow_schema
from lsdata.views import arrow_array

PARQUET_OPTS = dict(compression="zstd", compression_level=1, write_statistics=True)
LOW_CARDINALITY = ("behavior", "src_file", "split", "label")  # dictionary-encoded; other columns plain
DELTA_COLUMNS = ("ts", "src_row")  # sorted or near-sorted int64: delta encoding
_LUT_MAX = 1 << 28  # integer raw ids below this are remapped through a lookup array


def raw_schema(raw_type: pl.DataType) -> dict[str, pl.DataType]:
    return {
        "user": raw_type,
        "item": raw_type,
        "cate": raw_type,
        "behavior": pl.Int8,
        "ts": pl.Int64,
        "rating": pl.Float32,
        "src_file": pl.Int16,
        "src_row": pl.Int64,
    }


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options for ``schema``: zstd, dictionaries only where they pay, delta for time columns.

    (Dictionary-encoding high-cardinality id columns costs more time than it saves space.)
    """
    flat = [f for f in schema if not pa.types.is_list(f.type) and not pa.types.is_fixed_size_list(f.type)]
    return dict(
        PARQUET_OPTS,
        use_dictionary=[f.name for f in flat if f.name in LOW_CARDINALITY],
        column_encoding={f.name: "DELTA_BINARY_PACKED" for f in flat if f.name in DELTA_COLUMNS and pa.types.is_integer(f.type)},
    )


@functools.cache
def _reusing_pool() -> pa.MemoryPool | None:
    try:
        pa.jemalloc_set_decay_ms(10_000)  # applies to arenas created from now on: this pool's, at its first use
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return None


@contextlib.contextmanager
def arrow_memory() -> Iterator[None]:
    """Arrow allocations made inside (Parquet encoding buffers above all) come from Arrow's jemalloc pool keeping
    freed pages 10 s for reuse. The default pool (mimalloc) hands freed huge pages back at once, so every row group
    faulted fresh zeroed pages in again (the layout stage's system time halves, ~6 % of its CPU). On leaving, the
    process's default pool is restored and the pool's unused pages are given back; the bytes written do not depend
    on the pool."""
    pool = _reusing_pool()
    if pool is None:
        yield
        return
    old = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(old)
        pool.release_unused()


def write_parquet(
    table: pa.Table, path: Path, row_group_size: int | None = None, bg: Background | None = None,
    hashes: dict[Path, str] | None = None, lane: str = "parquet",
) -> None:
    """Deterministic Parquet write (same table -> same bytes).

    With ``bg`` the write runs on its ``lane`` (see :class:`lsdata.io.Background`) and, when ``hashes`` is given,
    the file's sha256 is recorded there right after it is written (publishing need not read it again).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if bg is not None:
        bg.submit(lane, _write_parquet_now, table, path, row_group_size, hashes)
    else:
        _write_parquet_now(table, path, row_group_size, hashes)


def _write_parquet_now(table: pa.Table, path: Path, row_group_size: int | None, hashes: dict[Path, str] | None) -> None:
    pq.write_table(table, path, row_group_size=row_group_size, **parquet_options(table.schema))
    if hashes is not None:
        hashes[path] = sha256_file(path)


def partition_of(col: pl.Expr, n: int) -> pl.Expr:
    """Partition index of a raw user id: a fixed-seed hash modulo ``n``."""
    return (col.hash(seed=0x5EED) % n).cast(pl.Int32)


class EventBuilder:
    """Accumulates raw event batches and builds the canonical tables. See the module docstring."""

    def __init__(self, workdir: Path, partitions: int, raw_type: pl.DataType, bg: Background | None = None):
        self.workdir = Path(workdir)
        self.partitions = partitions
        self.schema = raw_schema(raw_type)
        self.raw_type = raw_type
        self.bg = bg  # spill and Parquet writes run there (in order per file) when given
        self._arrow_schema = pl.DataFrame(schema=self.schema).to_arrow().schema
        self._writers: dict[int, ipc.RecordBatchFileWriter] = {}
        self.rows = 0
        self._bounds = None  # min/max of ts, src_file, src_row over all rows (see _first_key)
        #: sha256 of the output files written so far (recorded by the writer threads right after each write)
        self.hashes: dict[Path, str] = {}
        (self.workdir / "spill").mkdir(parents=True, exist_ok=True)

    def _spill_path(self, p: int) -> Path:
        return self.workdir / "spill" / f"p{p:05d}.arrow"

    def add(self, df: pl.DataFrame) -> None:
        """Append a batch of raw events (columns as in the module docstring)."""
        if df.height == 0:
            return
        df = df.select([pl.col(c).cast(t) for c, t in self.schema.items()])
        self.rows += df.height
        b = df.select(
            *(f(c).cast(pl.Int64).alias(f"{c}_{i}") for c in ("ts", "src_file", "src_row") for i, f in enumerate((pl.min, pl.max)))
        ).row(0)
        self._bounds = b if self._bounds is None else tuple(
            (min if i % 2 == 0 else max)(x, y) for i, (x, y) in enumerate(zip(self._bounds, b))
        )
        if self.partitions == 1:
            groups = {0: df}
        else:
            parts = df.with_columns(partition_of(pl.col("user"), self.partitions).alias("_p"))
            groups = {k[0]: g.drop("_p") for k, g in parts.partition_by("_p", as_dict=True, maintain_order=True).items()}
        if self.bg is None:
            self._spill(groups)
        else:
            self.bg.submit("spill", self._spill, groups)

    def _spill(self, groups: dict[int, pl.DataFrame]) -> None:
        for p, g in groups.items():
            w = self._writers.get(p)
            if w is None:
                w = ipc.new_file(
                    str(self._spill_path(p)), self._arrow_schema, options=ipc.IpcWriteOptions(compression=None)
                )
                self._writers[p] = w
            for b in g.to_arrow().cast(self._arrow_schema).to_batches():
                w.write_batch(b)

    def _close(self) -> None:
        if self.bg is not None:
            self.bg.wait("spill")
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def spills(self) -> dict[int, Path]:
        """Close the spill files and return them by partition (raw events in input order), for stages that
        do their own finishing (``lsdata append``)."""
        self._close()
        return {p: self._spill_path(p) for p in self._written()}

    # ------------------------------------------------------------------ finish

    def _scan(self) -> pl.LazyFrame:
        paths = [str(self._spill_path(p)) for p in sorted(self._written())]
        return pl.scan_ipc(paths)

    def _written(self) -> list[int]:
        return [p for p in range(self.partitions) if self._spill_path(p).exists()]

    def build_vocabs(self, item_category: pl.DataFrame | None = None) -> dict[str, pl.DataFrame]:
        """Dense vocabularies from the spills (one streaming pass).

        ``item_category`` (raw item -> raw cate), when given (Amazon meta), fixes each item's category;
        otherwise an item's category is that of its earliest event by (ts, src_file, src_row).
        """
        lf = self._scan()
        users = lf.group_by("user").agg(pl.len().alias("count"))
        cates = lf.group_by("cate").agg(pl.len().alias("count"))
        items = lf.group_by("item").agg(
            pl.len().alias("count"),
            pl.col("cate").sort_by(self._first_key()).first().alias("cate_raw"),
        )
        users, cates, items = pl.collect_all([users, cates, items], engine="streaming")
        return dense_vocabs(users, cates, items, item_category)

    def _first_key(self) -> pl.Expr | list[str]:
        """The (ts, src_file, src_row) order as one int64 ``ts << (f + r) | src_file << r | src_row`` when the spilled
        values fit in 63 bits (a single-key minimum is much cheaper than a three-key one; the order is the same),
        else the three columns."""
        if self._bounds is None:
            return ["ts", "src_file", "src_row"]
        ts_lo, ts_hi, f_lo, f_hi, r_lo, r_hi = self._bounds
        f_bits, r_bits = int(f_hi).bit_length(), int(r_hi).bit_length()
        if min(ts_lo, f_lo, r_lo) < 0 or int(ts_hi).bit_length() + f_bits + r_bits > 63:
            return ["ts", "src_file", "src_row"]
        return (
            pl.col("ts") * (1 << (f_bits + r_bits)) + pl.col("src_file").cast(pl.Int64) * (1 << r_bits) + pl.col("src_row")
        )

    def finish(
        self,
        out: Path,
        item_category: pl.DataFrame | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict:
        """Write ``vocab/``, ``events/``, ``sequences/`` under ``out``; return summary counts."""
        self._close()
        out = Path(out)
        if self.rows == 0:
            raise ValueError("no events to write")
        vocabs = self.build_vocabs(item_category)
        write_vocabs(vocabs, out, self.raw_type)
        remap = {k: _Remapper(v) for k, v in vocabs.items()}
        item_spill = _Spiller(self.workdir / "item_spill", self.partitions, self.bg)
        ts_min, ts_max = None, None
        for p in range(self.partitions):
            if not self._spill_path(p).exists():
                df = pl.DataFrame(schema=self.schema)
            else:
                df = pl.read_ipc(self._spill_path(p))
            df = write_user_partition(df, remap, out, p, self.bg, self.hashes)
            if df.height:
                lo, hi = df["ts"].min(), df["ts"].max()
                ts_min = lo if ts_min is None else min(ts_min, lo)
                ts_max = hi if ts_max is None else max(ts_max, hi)
            item_spill.add(item_rows(df, self.partitions))
            self._spill_path(p).unlink(missing_ok=True)
            if progress:
                progress(df.height)
        for p in range(self.partitions):
            write_item_partition(item_spill.read(p), out, p, self.bg, self.hashes)
        if self.bg is not None:
            self.bg.wait()
        return {
            "events": self.rows,
            "users": vocabs["user"].height,
            "items": vocabs["item"].height,
            "cates": vocabs["cate"].height,
            "ts_min": ts_min,
            "ts_max": ts_max,
        }


def dense_vocabs(
    users: pl.DataFrame, cates: pl.DataFrame, items: pl.DataFrame, item_category: pl.DataFrame | None = None
) -> dict[str, pl.DataFrame]:
    """Dense vocabularies from per-raw-id aggregates (any engine): ``users`` (user, count), ``cates`` (cate, count),
    ``items`` (item, count, cate_raw = the category of the item's earliest event). Dense id = rank of the raw id,
    1-based; ``item_category`` (raw item -> raw cate) overrides an item's category where it has one."""

    def dense(df: pl.DataFrame, key: str) -> pl.DataFrame:
        df = df.sort(key)
        return df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int32).alias("id")).rename({key: "raw"})

    v_user = dense(users, "user").select("id", "raw", "count")
    v_cate = dense(cates, "cate").select("id", "raw", "count")
    v_item = dense(items, "item")
    if item_category is not None:
        v_item = (
            v_item.join(item_category.rename({"item": "raw", "cate": "meta_cate"}), on="raw", how="left")
            .with_columns(pl.coalesce("meta_cate", "cate_raw").alias("cate_raw"))
            .drop("meta_cate")
        )
    v_item = (
        v_item.join(v_cate.select(pl.col("raw").alias("cate_raw"), pl.col("id").alias("cate")), on="cate_raw", how="left")
        .sort("id")
        .select("id", "raw", "count", pl.col("cate").fill_null(0).cast(pl.Int32))
    )
    return {"user": v_user, "item": v_item, "cate": v_cate}


def write_vocabs(vocabs: dict[str, pl.DataFrame], out: Path, raw_type: pl.DataType) -> None:
    """``out/vocab/{user,item,cate}.parquet``."""
    raw_arrow = pl.DataFrame(schema={"raw": raw_type}).to_arrow().schema.field("raw").type
    for name, v in vocabs.items():
        model = ItemVocabRow if name == "item" else VocabRow
        t = v.to_arrow().cast(arrow_schema(model, raw_type=raw_arrow))
        write_parquet(t, out / "vocab" / f"{name}.parquet")


def write_user_partition(
    df: pl.DataFrame, remap: dict[str, Callable[[pl.Series], pl.Series]], out: Path, p: int,
    bg: Background | None = None, hashes: dict[Path, str] | None = None,
) -> pl.DataFrame:
    """User partition ``p``: raw events **in (src_file, src_row) order** -> ``events/`` and ``sequences/`` part ``p``
    (written on ``bg``'s lanes when given, see :func:`write_parquet`).

    Returns the partition remapped to dense ids and sorted by (user, ts, src_file, src_row).
    """
    name = f"part-{p:05d}.parquet"
    df = df.with_columns(remap["user"](df["user"]), remap["item"](df["item"]), remap["cate"](df["cate"]))
    # rows arrive in (src_file, src_row) order, so a stable sort on (user, ts) packed into one int64 gives the
    # full (user, ts, src_file, src_row) order
    df = df.sort(_pack("user", "ts"), maintain_order=True)
    events = df.select(list(EventRow.model_fields)).to_arrow().cast(arrow_schema(EventRow))
    write_parquet(events, out / "events" / name, 1 << 20, bg, hashes, lane="events")
    write_parquet(group_sequences(df).cast(arrow_schema(SequenceRow)), out / "sequences" / name, None, bg, hashes, lane="sequences")
    return df


ITEM_ROW_SCHEMA = {"item": pl.Int32, "ts": pl.Int64, "src_file": pl.Int16, "src_row": pl.Int64, "user": pl.Int32, "behavior": pl.Int8}


def item_rows(df: pl.DataFrame, partitions: int) -> pl.DataFrame:
    """A user partition's (dense) events as item-side rows, with ``_p`` = their item partition (item % partitions)."""
    return df.select(list(ITEM_ROW_SCHEMA)).with_columns((pl.col("item") % partitions).alias("_p"))


def write_item_partition(
    df: pl.DataFrame, out: Path, p: int, bg: Background | None = None, hashes: dict[Path, str] | None = None
) -> None:
    """Item partition ``p`` (rows of :func:`item_rows`, any order) -> ``item_events/`` part ``p``, sorted by
    (item, ts, src_file, src_row) (written on ``bg`` when given)."""
    df = df.sort(_pack("item", "ts"), (pl.col("src_file").cast(pl.Int64) * (1 << 40)) + pl.col("src_row"))
    t = df.select(list(ItemEventRow.model_fields)).to_arrow().cast(arrow_schema(ItemEventRow))
    write_parquet(t, out / "item_events" / f"part-{p:05d}.parquet", 1 << 20, bg, hashes, lane="item_events")


def _pack(hi: str, ts: str) -> pl.Expr:
    """``hi << 32 | ts`` as one int64 sort key (ids < 2^31, 0 <= ts < 2^32 are checked at parse time)."""
    return (pl.col(hi).cast(pl.Int64) * (1 << 32)) + pl.col(ts)


class _Spiller:
    """Append frames to per-partition Arrow IPC files (column ``_p`` picks the partition); the writes run on
    ``bg``'s "item_spill" lane when given (in order)."""

    def __init__(self, directory: Path, partitions: int, bg: Background | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.bg = bg
        self.writers: dict[int, ipc.RecordBatchFileWriter] = {}
        self.schema: pa.Schema | None = None

    def add(self, df: pl.DataFrame) -> None:
        groups = [(p, g.drop("_p")) for (p,), g in df.partition_by("_p", as_dict=True, maintain_order=True).items()]
        if self.bg is None:
            self._write(groups)
        else:
            self.bg.submit("item_spill", self._write, groups)

    def _write(self, groups: list[tuple[int, pl.DataFrame]]) -> None:
        for p, g in groups:
            t = g.to_arrow()
            if self.schema is None:
                self.schema = t.schema
            w = self.writers.get(p)
            if w is None:
                w = self.writers[p] = ipc.new_file(
                    str(self.dir / f"p{p:05d}.arrow"), self.schema, options=ipc.IpcWriteOptions(compression=None)
                )
            for b in t.cast(self.schema).to_batches():
                w.write_batch(b)

    def read(self, p: int) -> pl.DataFrame:
        """Close all writers (first call) and return partition ``p`` (empty frame if none)."""
        if self.bg is not None:
            self.bg.wait("item_spill")
        for w in self.writers.values():
            w.close()
        self.writers.clear()
        path = self.dir / f"p{p:05d}.arrow"
        if not path.exists():
            return pl.DataFrame(schema=pl.from_arrow(self.schema.empty_table()).schema) if self.schema else pl.DataFrame()
        df = pl.read_ipc(path)
        path.unlink()
        return df


class _Remapper:
    """raw id -> dense id, via a lookup array for small non-negative integers, else a hash join."""

    def __init__(self, vocab: pl.DataFrame):
        self.vocab = vocab.select("raw", "id")
        raw = self.vocab["raw"]
        self.lut = None
        if raw.dtype.is_integer() and raw.len() and raw.min() >= 0 and raw.max() < _LUT_MAX:
            lut = np.zeros(int(raw.max()) + 1, dtype=np.int32)
            lut[raw.to_numpy()] = self.vocab["id"].to_numpy()
            self.lut = lut

    def __call__(self, s: pl.Series) -> pl.Series:
        if self.lut is not None:
            return pl.Series(s.name, self.lut[s.to_numpy()], dtype=pl.Int32)
        mapped = s.to_frame("raw").join(self.vocab, on="raw", how="left", maintain_order="left")["id"]
        if mapped.null_count():
            raise AssertionError(f"{s.name}: raw ids missing from the vocabulary")
        return mapped.alias(s.name)


def group_sequences(df: pl.DataFrame) -> pa.Table:
    """Sorted flat events -> one row per user with list columns (offsets computed, no copies per user)."""
    user = df["user"].to_numpy()
    n = len(user)
    if n:
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    else:
        starts = np.zeros(0, dtype=np.int64)
    offsets = arrow_array(np.r_[starts, n], pa.int32())
    lists = {
        c: pa.ListArray.from_arrays(offsets, df[c].to_arrow())
        for c in ("item", "cate", "behavior", "ts")
    }
    return pa.table(
        {
            "user": arrow_array(user[starts] if n else np.zeros(0, np.int32), pa.int32()),
            "length": arrow_array(np.diff(np.r_[starts, n]), pa.int32()),
            **lists,
        }
    )
