"""``lsdata ingest --engine spark``: raw files -> the same dataset as :func:`lsdata.ingest.ingest`, on Spark.

Jobs, in order (every row-level step is the single-machine function, see :mod:`lsdata.spark`):

0. **side tables** (driver, not distributed): the source's ``prepare`` runs on the driver exactly as in the
   single-machine engine. For Amazon it reads every meta file (2014 Python literals, 2018 JSON) into the asin ->
   category table, its rejects going to the quarantine first and its duplicate asins counted, as single-machine;
   meta files are much smaller than reviews. What ``prepare`` leaves in ``IngestContext.side`` is broadcast to
   the parse tasks (Taobao: nothing).
1. **spans**: each plain event file (Taobao CSV, Amazon review JSON lines or ratings CSV) is cut into byte spans
   of ``chunk_bytes``; one task per span counts the lines that start in it, so every span knows its first line
   number (compressed files are one span: not seekable).
2. **parse**: one task per span runs the source's own ``read`` (:mod:`lsdata.ingest.taobao`,
   :mod:`lsdata.ingest.amazon`, which joins the broadcast meta table) on that span and tags each event with its
   user partition (:func:`lsdata.events.partition_of`, the same hash). Per-span counts, rejected rows and input
   errors go to side files in the staging directory; the events to ``work/raw``.
3. **vocab**: ``groupBy`` counts per raw user/item/category and each item's category at its earliest
   ``(ts, src_file, src_row)`` (``min_by``) - a distributed aggregation over the events; the driver ranks the
   unique ids with :func:`lsdata.events.dense_vocabs` (dense id = rank of the raw id, as single-machine; Amazon
   meta categories override the event's, as single-machine).
4. **partitions**: ``groupBy(user partition).applyInArrow``: each partition is sorted back into
   ``(src_file, src_row)`` order and handed to :func:`lsdata.events.write_user_partition`; its item-side rows are
   shuffled by item partition to :func:`lsdata.events.write_item_partition`. No stage sorts globally.

Counts are reconciled per file and the manifest is written last by :func:`lsdata.ingest.publish_ingest`.

XLong (samples, not events) has its own jobs in :mod:`lsdata.spark.xlong`; :func:`ingest` hands it over after the
same input checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from lsdata import spark as sp
from lsdata.defaults import IngestOptions
from lsdata.events import (
    ITEM_ROW_SCHEMA,
    _Remapper,
    dense_vocabs,
    item_rows,
    partition_of,
    raw_schema,
    write_item_partition,
    write_user_partition,
    write_vocabs,
)
from lsdata.ingest import SOURCES, check_events, partition_count, publish_ingest, source_module
from lsdata.ingest.common import FileCounts, FileTask, IngestContext, Quarantine
from lsdata.io import InputError, compression_of, count_span_lines, staging_dir
from lsdata.schemas import Manifest

SPARK_SOURCES = ("taobao", "amazon", "xlong")  # sources whose parser reads a span of a file (FileTask.span)


def plan_spans(spark, tasks: list[FileTask], span_bytes: int) -> list[FileTask]:
    """Each event file cut into byte spans of ``span_bytes`` with their first line numbers (one counting job)."""
    spans: list[FileTask] = []
    for t in tasks:
        size = Path(t.path).stat().st_size if "::" not in t.path else 0
        if "::" in t.path or compression_of(t.path) != "none" or size <= span_bytes:
            spans.append(t)  # whole file, as single-machine
            continue
        spans += [replace(t, span=(a, min(a + span_bytes, size))) for a in range(0, size, span_bytes)]
    todo = [s for s in spans if s.span is not None]
    if not todo:
        return spans

    def count(batches):
        for i in sp.ids(batches):
            yield pa.RecordBatch.from_pydict({"i": [i], "n": [count_span_lines(todo[i].path, todo[i].span)]})

    rows = sp.tasks(spark, len(todo)).mapInArrow(count, "i long, n long").toArrow()
    lines = dict(zip(rows["i"].to_pylist(), rows["n"].to_pylist()))
    first: dict[int, int] = {}  # file index -> first line of its next span
    out, k = [], 0
    for s in spans:
        if s.span is not None:
            s = replace(s, first_line=first.get(s.index, 1))
            first[s.index] = s.first_line + lines[k]
            k += 1
        out.append(s)
    return out


class _Events:
    """The ``builder`` a parse task hands its source parser: keeps the emitted batches."""

    def __init__(self):
        self.frames: list[pl.DataFrame] = []

    def add(self, df: pl.DataFrame) -> None:
        if df.height:
            self.frames.append(df)


class SpanRejects:
    """The ``quarantine`` of a parse task: keeps rejected rows as the parser gave them (strictness is decided by
    the driver, which replays them in file order through the real :class:`Quarantine`)."""

    def __init__(self):
        self.frames: list[pl.DataFrame] = []

    def add(self, path: str, rejects: pl.DataFrame) -> int:
        if rejects.height:
            self.frames.append(rejects)
        return rejects.height


def _side(work: Path, i: int) -> Path:
    return work / "spans" / f"{i:06d}"


def write_side(work: Path, i: int, rejects, info: dict) -> None:
    """Span ``i``'s side files, written by its task: the rejected rows (``rejects.frames``, Arrow IPC, if any) and
    ``info`` (JSON: counts and whatever the driver needs from the span)."""
    side = _side(work, i)
    side.parent.mkdir(parents=True, exist_ok=True)
    if rejects.frames:
        schema = rejects.frames[0].to_arrow().schema
        with ipc.new_file(str(side) + ".rejects.arrow", schema) as w:
            for f in rejects.frames:
                w.write_table(f.to_arrow().cast(schema))
    side.with_suffix(".json").write_text(json.dumps(info))


def read_side(work: Path, i: int) -> tuple[dict, pl.DataFrame | None]:
    """(info, rejected rows or None) of span ``i``, as :func:`write_side` left them."""
    side = _side(work, i)
    rej = Path(str(side) + ".rejects.arrow")
    return json.loads(side.with_suffix(".json").read_text()), (pl.read_ipc(rej) if rej.exists() else None)


def parse(
    spark, dataset: str, spans: list[FileTask], options: IngestOptions, partitions: int, work: Path, side: dict | None = None
):
    """Job 2: every span parsed by the source's ``read``; returns the raw events (with ``_p``) from ``work/raw``.

    ``side``: the driver's ``IngestContext.side`` after ``prepare`` (e.g. Amazon's meta table), broadcast to the tasks."""
    raw_type = SOURCES[dataset].RAW_TYPE
    schema = pl.DataFrame(schema={**raw_schema(raw_type), "_p": pl.Int32}).to_arrow().schema
    work_s = str(work)
    shared = spark.sparkContext.broadcast(dict(side or {}))

    def run(batches):
        mod = SOURCES[dataset]
        for i in sp.ids(batches):
            task = spans[i]
            events, rejects = _Events(), SpanRejects()
            ctx = IngestContext(events, rejects, options, side=dict(shared.value))
            error = None
            try:
                mod.read(task, ctx)
            except InputError as e:  # e.g. an unknown --behaviors value: reported by the driver
                error = str(e)
            write_side(Path(work_s), i, rejects, {"counts": asdict(ctx.file(task)), "error": error})
            for df in events.frames:
                df = df.with_columns(partition_of(pl.col("user"), partitions).alias("_p"))
                yield from df.to_arrow().cast(schema).to_batches()

    raw_dir = work / "raw"
    try:
        sp.tasks(spark, len(spans)).mapInArrow(run, sp.schema_of(schema)).write.mode("overwrite").parquet(str(raw_dir))
    finally:
        shared.destroy()
    return spark.read.parquet(str(raw_dir))


def collect_side(work: Path, spans: list[FileTask], ctx: IngestContext) -> None:
    """Per-span counts, rejects and errors into the driver's context, in (file, line) order: the first input
    error raises, and in --strict mode the real Quarantine raises at the first rejected row, as single-machine."""
    for i, task in enumerate(spans):
        info, rej = read_side(work, i)
        if info["error"]:
            raise InputError(info["error"])
        got = FileCounts(**info["counts"])
        if rej is not None:
            ctx.reject(task, rej)  # counts them in ctx.file(task).rejected
        c = ctx.file(task)
        c.read += got.read
        c.kept += got.kept
        for reason, n in got.dropped.items():
            c.drop(reason, n)
        for key, n in got.notes.items():
            c.note(key, n)


def vocabs(raw, item_category: pl.DataFrame | None = None) -> dict[str, pl.DataFrame]:
    """Job 3: the distributed aggregation per raw id; dense ids by :func:`lsdata.events.dense_vocabs`."""
    from pyspark.sql import functions as F

    def agg(key: str, *extra) -> pl.DataFrame:
        df = pl.from_arrow(raw.groupBy(key).agg(F.count("*").alias("count"), *extra).toArrow())
        return df.with_columns(pl.col("count").cast(pl.UInt32))

    users = agg("user")
    cates = agg("cate")
    items = agg("item", F.min_by("cate", F.struct("ts", "src_file", "src_row")).alias("cate_raw"))
    return dense_vocabs(users, cates, items, item_category)


_REMAP: dict[str, dict] = {}


def _remappers(root: str) -> dict:
    """The dataset's vocabularies as remappers, read once per Python worker."""
    if root not in _REMAP:
        _REMAP.clear()
        _REMAP[root] = {k: _Remapper(pl.read_parquet(Path(root) / "vocab" / f"{k}.parquet", columns=["id", "raw"]))
                        for k in ("user", "item", "cate")}
    return _REMAP[root]


def build_partitions(spark, raw, tmp: Path, partitions: int, raw_type: pl.DataType) -> dict:
    """Job 4: user partitions -> events/ and sequences/, their item rows -> item_events/ (vocab/ already in ``tmp``)."""
    root = str(tmp)
    item_schema = pl.DataFrame(schema={**ITEM_ROW_SCHEMA, "_p": pl.Int32}).to_arrow().schema

    def user_part(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t)
        p = int(df["_p"][0])
        df = df.drop("_p").sort("src_file", "src_row")  # the order the single-machine spill holds
        df = write_user_partition(df, _remappers(root), Path(root), p)
        return item_rows(df, partitions).with_columns(pl.col("_p").cast(pl.Int32)).to_arrow().cast(item_schema)

    def item_part(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t)
        q = int(df["_p"][0])
        write_item_partition(df.drop("_p"), Path(root), q)
        return pa.table({"p": pa.array([q], pa.int32()), "rows": [df.height], "ts_min": [df["ts"].min()], "ts_max": [df["ts"].max()]})

    stats = (
        raw.groupBy("_p").applyInArrow(user_part, sp.schema_of(item_schema))
        .groupBy("_p").applyInArrow(item_part, "p int, rows long, ts_min long, ts_max long")
        .toArrow()
    )
    for p in range(partitions):  # partitions no user/item hashed to: empty files, as single-machine
        if not (tmp / "events" / f"part-{p:05d}.parquet").exists():
            write_user_partition(pl.DataFrame(schema=raw_schema(raw_type)), _remappers(root), tmp, p)
        if not (tmp / "item_events" / f"part-{p:05d}.parquet").exists():
            write_item_partition(pl.DataFrame(schema=ITEM_ROW_SCHEMA), tmp, p)
    _REMAP.clear()
    return {
        "events": int(pa.compute.sum(stats["rows"]).as_py() or 0),
        "ts_min": pa.compute.min(stats["ts_min"]).as_py(),
        "ts_max": pa.compute.max(stats["ts_max"]).as_py(),
    }


def ingest(spark, dataset: str, paths: list[str], out: str | Path, options: IngestOptions | None = None) -> Manifest:
    """:func:`lsdata.ingest.ingest` on Spark: same arguments (``spark`` = a session from :func:`lsdata.spark.session`),
    same files, same manifest."""
    options = options or IngestOptions()
    mod = source_module(dataset, paths)
    if dataset not in SPARK_SOURCES:
        raise InputError(f"--engine spark: {dataset} is not supported yet (supported: {', '.join(SPARK_SOURCES)}); use the default engine")
    if dataset == "xlong":  # samples, not events: its own jobs (lsdata.spark.xlong)
        from lsdata.spark import xlong

        return xlong.ingest(spark, paths, out, options)
    out = Path(out)
    tasks = mod.plan(paths, options)
    partitions = partition_count(paths, options, spark=True)
    with staging_dir(out, "ingest") as tmp:
        work = tmp / "work"
        quarantine = Quarantine(options.strict)
        ctx = IngestContext(None, quarantine, options)
        item_cat = mod.prepare(tasks, ctx)
        spans = plan_spans(spark, [t for t in tasks if t.kind in mod.EVENT_KINDS], options.chunk_bytes)
        raw = parse(spark, dataset, spans, options, partitions, work, ctx.side)
        collect_side(work, spans, ctx)
        rows = sum(ctx.file(t).kept for t in tasks if t.kind in mod.EVENT_KINDS)  # (meta files count their records)
        check_events(rows, paths, quarantine)
        v = vocabs(raw, item_cat)
        write_vocabs(v, tmp, mod.RAW_TYPE)
        summary = build_partitions(spark, raw, tmp, partitions, mod.RAW_TYPE)
        if summary["events"] != rows:
            raise AssertionError(f"spark ingest: {summary['events']} events written, {rows} kept")
        summary.update(users=v["user"].height, items=v["item"].height, cates=v["cate"].height)
        return publish_ingest(tmp, out, dataset, paths, options, tasks, ctx, partitions, summary)
