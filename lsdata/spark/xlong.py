"""``lsdata ingest xlong --engine spark``: XLong corpora -> the same files as :func:`lsdata.ingest.xlong.ingest`.

XLong is samples, not events: one line = one user's history and two targets, ``ts`` = the line number in its file,
validation carved by user from a seeded permutation. Jobs, in order (every row-level step is a function of
:mod:`lsdata.ingest.xlong`):

1. **spans**: each plain corpus is cut into byte spans of ``chunk_bytes`` and one task per span counts its lines
   (:func:`lsdata.spark.ingest.plan_spans`, as Taobao/Amazon), so every span numbers its lines exactly; a
   compressed corpus (or one no larger than a span) is one task reading the whole file.
2. **parse**: one task per span runs :func:`~lsdata.ingest.xlong.read_chunk` (``parse_corpus``, the counts and the
   length/id statistics of :class:`~lsdata.ingest.xlong.CorpusStats`) on every chunk of its span; kept lines go to
   ``work/lines`` tagged with their span, their position among the span's kept lines and the single-machine
   chunk they belong to (the chunk of ``chunk_bytes`` raw bytes in which the line's newline lies; the test file's
   row groups follow those chunks). Counts, statistics and rejected lines go to side files and are replayed by
   the driver in (file, line) order through the real quarantine (``--strict`` raises at the same line).
3. **graph_emb** (driver, not distributed): :func:`~lsdata.ingest.xlong.read_emb` reads it on the driver exactly as
   single-machine (it is one small float matrix, e.g. 16 columns), after the corpora's rejects.
4. **valid carve**: the distinct train users by a Spark ``distinct``; the driver draws the valid users with
   :func:`~lsdata.ingest.xlong.valid_users` (same seed, same draw).
5. **samples**: ``groupBy(batch).applyInArrow``: train lines in batches of ``SAMPLE_ROW_GROUP // 2`` by their
   global position (file, line) - the batches the single-machine pass 2 reads - are split by
   :func:`~lsdata.ingest.xlong.carve` and turned into sample tables by :func:`~lsdata.ingest.xlong.sample_table`;
   test lines likewise per single-machine chunk. Each table goes to an Arrow file in the staging directory.
6. **write**: the driver appends the tables in order to ``xlong/{split}.parquet`` with
   :func:`~lsdata.ingest.xlong.write_samples` (one batch in memory at a time), then
   :func:`~lsdata.ingest.xlong.finish` writes item_init.npy, the quarantine and the manifest (last) and publishes;
   ``layouts/plain`` is then built by :func:`build_layouts`.

Layouts (``lsdata layout XLONG NAMES --engine spark``, :func:`build_layouts`): one task per batch of
``LAYOUT_BATCH`` samples of a set - the batches the single-machine :func:`~lsdata.ingest.xlong.build_layouts`
reads, rows ``bno * LAYOUT_BATCH ..`` of ``xlong/{split}.parquet`` - reads only the row groups holding them and
turns them into every requested layout with :func:`~lsdata.ingest.xlong.batch_tables` (mimn negatives seeded by
set and batch number, as single-machine); the driver appends the tables in batch order
(:func:`lsdata.spark.layouts.append_parts`) and publishes, reports last.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from lsdata import spark as sp
from lsdata.dataset import Dataset
from lsdata.defaults import SPLITS, IngestOptions
from lsdata.ingest import xlong as x
from lsdata.ingest.common import FileCounts, FileTask, Quarantine
from lsdata.io import iter_line_chunks, open_binary, staging_dir
from lsdata.layouts import LayoutWriter, publish_layouts
from lsdata.schemas import LayoutReport, Manifest
from lsdata.spark.ingest import SpanRejects, read_side, write_side
from lsdata.spark.layouts import append_parts, write_part

_INT_LIST = pa.list_(pa.int32())
LINES = pa.schema(
    [("line", pa.int64()), ("user", pa.int32()), ("pos_item", pa.int32()), ("neg_item", pa.int32()),
     ("history", _INT_LIST), ("pos_side", _INT_LIST), ("neg_side", _INT_LIST),
     ("_span", pa.int32()), ("_r", pa.int64()), ("_key", pa.int64())]
)
BATCH_LINES = x.SAMPLE_ROW_GROUP // 2  # the single-machine pass 2's batch of train lines


def _span_start(path: str, span: tuple[int, int] | None) -> int:
    """Byte offset of the first line that starts in ``span`` (what :func:`lsdata.io.iter_line_chunks` reads first)."""
    if span is None or span[0] == 0:
        return 0
    with open_binary(path) as f:
        f.seek(span[0] - 1)
        return span[0] - 1 + len(f.readline())


def parse(spark, spans: list[FileTask], options: IngestOptions, work: Path):
    """Job 2: every span's chunks through :func:`lsdata.ingest.xlong.read_chunk`; returns the kept lines."""
    work_s, cb = str(work), options.chunk_bytes

    def run(batches):
        for i in sp.ids(batches):
            task = spans[i]
            rejects, counts, stats = SpanRejects(), FileCounts(), x.CorpusStats()
            pos = _span_start(task.path, task.span)
            size = Path(task.path).stat().st_size if task.span is not None else 0
            kept = 0
            for k, (first, n_lines, chunk) in enumerate(iter_line_chunks(task.path, cb, task.span, task.first_line)):
                good = x.read_chunk(task.path, first, n_lines, chunk, rejects, counts, stats)
                if good.height:
                    if task.span is None:  # the whole file, chunked as single-machine: the chunk's number
                        key = np.full(good.height, k, np.int64)
                    else:  # the single-machine chunk holding the line's newline; a last line without one: its own
                        ends = pos + np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
                        block = np.where(ends < size, ends // cb, (size - 1) // cb + 1)
                        key = block[good["line"].to_numpy() - first]
                    good = good.with_columns(
                        pl.lit(i, pl.Int32).alias("_span"),
                        (pl.int_range(0, good.height, dtype=pl.Int64) + kept).alias("_r"),
                        pl.Series("_key", key, pl.Int64),
                    )
                    kept += good.height
                    yield from good.to_arrow().cast(LINES).to_batches()
                pos += len(chunk)
            write_side(Path(work_s), i, rejects, {"counts": asdict(counts), "stats": stats.to_json()})

    lines_dir = work / "lines"
    sp.tasks(spark, len(spans)).mapInArrow(run, sp.schema_of(LINES)).write.mode("overwrite").parquet(str(lines_dir))
    return spark.read.schema(sp.schema_of(LINES)).parquet(str(lines_dir))  # (the schema: even if no line is kept)


def collect_side(work: Path, spans: list[FileTask], quarantine: Quarantine, counts: dict[int, FileCounts]) -> dict[int, x.CorpusStats]:
    """Per-span counts, statistics and rejects into the driver's books, in (file, line) order (the real quarantine
    raises at the first rejected line with ``--strict``). Returns the statistics per file index."""
    stats: dict[int, x.CorpusStats] = {}
    for i, task in enumerate(spans):
        info, rej = read_side(work, i)
        c = counts[task.index]
        if rej is not None:
            c.rejected += quarantine.add(task.path, rej)
        got = FileCounts(**info["counts"])
        c.read += got.read
        c.kept += got.kept
        stats.setdefault(task.index, x.CorpusStats()).merge(x.CorpusStats.from_json(info["stats"]))
    return stats


def _part(tmp: Path, split: str, f: int, g: int) -> Path:
    return tmp / "work" / "samples" / split / f"{f + 1:06d}-{g:012d}.arrow"


def sample_parts(spark, lines, spans: list[FileTask], valid: np.ndarray, tmp: Path) -> list[tuple]:
    """Job 5: the sample tables of every batch (train/valid) and chunk (test) as Arrow files; returns
    ``(split, file, group, lines)`` per file written."""
    from pyspark.sql import functions as F

    offsets, off = [], 0  # each train span's first position among all kept train lines, in (file, line) order
    for i, t in enumerate(spans):
        if t.kind == x.TRAIN:
            offsets.append((i, off))
            off += _kept(tmp, i)
    train = F.col("_span").isin([i for i, _ in offsets]) if offsets else F.lit(False)
    off_df = spark.createDataFrame(offsets or [(-1, 0)], "_span int, _off long")
    file_of = F.create_map(*[F.lit(v) for i, t in enumerate(spans) for v in (i, t.index)])
    grouped = (
        lines.join(F.broadcast(off_df), "_span", "left")
        .withColumn("_train", train)
        .withColumn("_f", F.when(F.col("_train"), F.lit(-1)).otherwise(file_of[F.col("_span")]))
        .withColumn("_o", F.when(F.col("_train"), F.col("_off") + F.col("_r")).otherwise(F.col("line")))
        .withColumn("_g", F.when(F.col("_train"), F.expr(f"_o div {BATCH_LINES}")).otherwise(F.col("_key")).cast("long"))
    )
    tmp_s, shared = str(tmp), spark.sparkContext.broadcast(valid)
    names = list(x.LINE_SCHEMA)

    def make(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t).sort("_o")
        f, g = int(df["_f"][0]), int(df["_g"][0])
        lines_ = df.select(names).cast(x.LINE_SCHEMA)
        parts = x.carve(lines_, shared.value) if f < 0 else [("test", lines_)]
        out = []
        for split, part in parts:
            if part.height:
                p = _part(Path(tmp_s), split, f, g)
                p.parent.mkdir(parents=True, exist_ok=True)
                table = x.sample_table(part)
                with ipc.new_file(str(p), table.schema) as w:
                    w.write_table(table)
                out.append((split, f, g, part.height))
        return pa.table({"split": [o[0] for o in out], "f": pa.array([o[1] for o in out], pa.int32()),
                         "g": pa.array([o[2] for o in out], pa.int64()), "n": pa.array([o[3] for o in out], pa.int64())})

    try:
        rows = grouped.groupBy("_f", "_g").applyInArrow(make, "split string, f int, g long, n long").toArrow()
    finally:
        shared.destroy()
    return sorted(zip(rows["split"].to_pylist(), rows["f"].to_pylist(), rows["g"].to_pylist(), rows["n"].to_pylist()))


def _kept(tmp: Path, i: int) -> int:
    return read_side(tmp / "work", i)[0]["counts"]["kept"]


def ingest(spark, paths: list[str], out: str | Path, options: IngestOptions) -> Manifest:
    """:func:`lsdata.ingest.xlong.ingest` on Spark (``spark`` from :func:`lsdata.spark.session`): same files."""
    from lsdata.spark.ingest import plan_spans

    tasks = x.plan(paths, options)
    out = Path(out)
    quarantine = Quarantine(options.strict)
    counts = {t.index: FileCounts() for t in tasks}
    corpora = [t for t in tasks if t.kind != x.EMB]
    emb_task = next((t for t in tasks if t.kind == x.EMB), None)
    with staging_dir(out, "ingest") as tmp:
        work = tmp / "work"
        spans = plan_spans(spark, corpora, options.chunk_bytes)
        lines = parse(spark, spans, options, work)
        by_file = collect_side(work, spans, quarantine, counts)
        stats = [by_file.get(t.index, x.CorpusStats()) for t in corpora]
        for t, st in zip(corpora, stats):
            st.note(counts[t.index])
        emb = x.read_emb(emb_task, options, quarantine, counts[emb_task.index], None) if emb_task else None
        x.check_lines(corpora, counts, paths, quarantine)
        train_spans = [i for i, t in enumerate(spans) if t.kind == x.TRAIN]
        users = lines.filter(lines["_span"].isin(train_spans)).select("user").distinct().toArrow()["user"].to_numpy()
        valid = x.valid_users(users.astype(np.int32), options.xlong_valid_fraction, options.seed)
        parts = sample_parts(spark, lines, spans, valid, tmp)
        writers = x.sample_writers(tmp)
        for split, f, g, _ in parts:  # sorted: per split, test by (file, chunk), train/valid by batch
            with ipc.open_file(str(_part(tmp, split, f, g))) as r:
                x.write_samples(writers[split], r.read_all())
        for w in writers.values():
            w.close()
        valid_lines = sum(n for split, _, _, n in parts if split == "valid")
        manifest = x.finish(tmp, out, paths, options, tasks, counts, stats, emb, quarantine, valid_lines, valid.size)
    build_layouts(spark, Dataset(out, manifest), ["plain"])
    return manifest


LAYOUT_COLUMNS = ["user", "label", "item", "cate", "ts", "hist_item", "side_user"]  # what batch_tables reads


def read_rows(path: str | Path, start: int, stop: int) -> pa.RecordBatch:
    """Rows ``start..stop`` of a Parquet file (``LAYOUT_COLUMNS``) as one record batch, reading only the row groups
    that hold them."""
    pf = pq.ParquetFile(path)
    groups, first, at = [], 0, 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if at < stop and at + n > start:
            first = first if groups else at
            groups.append(g)
        at += n
    t = pf.read_row_groups(groups, columns=LAYOUT_COLUMNS).slice(start - first, stop - start)
    return t.combine_chunks().to_batches()[0]


def build_layouts(
    spark, ds: Dataset, names: list[str], overrides: dict[str, dict[str, int]] | None = None, seed: int | None = None
) -> dict[str, LayoutReport]:
    """:func:`lsdata.ingest.xlong.build_layouts` on Spark: the same ``layouts/NAME/{train,valid,test}.parquet``."""
    lengths, _ = x.layout_plan(ds, names, overrides, seed)  # checks the inputs on the driver
    units = []  # (set, batch number, first row, end row), in the order the driver appends them
    for s in SPLITS:
        rows = pq.ParquetFile(ds.root / "xlong" / f"{s}.parquet").metadata.num_rows
        step = x.LAYOUT_BATCH
        units += [(s, b, b * step, min((b + 1) * step, rows)) for b in range(math.ceil(rows / step))]
    root, manifest = str(ds.root), ds.manifest
    with staging_dir(ds.root, "layouts") as tmp:
        tmp_s = str(tmp)

        def run(batches):
            lens, negatives = x.layout_plan(Dataset(Path(root), manifest), names, overrides, seed)
            for i in sp.ids(batches):
                s, bno, start, stop = units[i]
                batch = read_rows(Path(root) / "xlong" / f"{s}.parquet", start, stop)
                for n, table in x.batch_tables(batch, s, bno, lens, negatives):
                    write_part(Path(tmp_s), i, s, n, table)
                yield pa.RecordBatch.from_pydict({"i": [i]})

        sp.tasks(spark, len(units)).mapInArrow(run, "i long").collect()
        writers = {n: LayoutWriter(tmp, n, w) for n, w in lengths.items()}
        append_parts(tmp, writers, len(units))
        return publish_layouts(ds, tmp, writers)

