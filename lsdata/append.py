"""``lsdata append``: new raw events (any format the dataset's source reads) -> a new dataset version.

Nothing of the full history is re-processed. For version ``N+1`` (layout in :mod:`lsdata.versions`):

1. The new files are refused if any has a sha256 already in the lineage (``manifest.json`` sources and
   every published version's sources), or appears twice on the command line.
2. They are parsed by the dataset's source module with the **ingest's options** (same behaviour filter,
   time window, category path), their ``src_file`` indexes continuing after every earlier file, and
   spilled by the same raw-user hash as the ingest (rejected rows go to the version's quarantine).
3. Vocabularies: a raw id seen before keeps its dense id; new raw ids get ``previous size + 1, ...`` in
   ascending raw order, so ids of earlier versions never change and stay 1-based. Counts are updated. A
   new item's category follows the ingest rule (Amazon meta, else its earliest new event).
4. Per user partition with new events: only the touched users' sequences are read (prefiltered Parquet
   reads) and merged with their new events in ``(ts, src_file, src_row)`` order; those rows, the new flat
   events and the new item-side rows are written as the version's delta files.
5. Publication: everything is written in a staging directory, moved to ``versions/NNNNN/``, then
   ``versions.json`` is rewritten atomically (temp + fsync + rename): that rename is the commit. A run
   killed at any point leaves the previous version as the latest, complete and untouched; the leftover
   directory is removed by the next append. ``split/`` and ``layouts/`` describe the previous version and
   are removed after the commit (re-run ``lsdata split``/``lsdata layout``).

Cost: ``O(new events log new events)`` for parsing, vocab extension and sorting, plus reading and writing
the touched users' sequences (prefiltered reads decode the ``user`` column of a touched partition in full)
and the vocabularies (``O(vocab size)``, written whole per version). Memory: the new events plus one
partition's touched users.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from lsdata import versions
from lsdata.dataset import Dataset, open_dataset
from lsdata.defaults import UNKNOWN_CATEGORY, IngestOptions
from lsdata.events import EventBuilder, group_sequences, write_parquet
from lsdata.ingest import SOURCES, output_hashes
from lsdata.ingest.common import IngestContext, Quarantine, reconcile
from lsdata.io import InputError, check_input_file, file_bytes, sha256_file, staging_dir, write_model_atomic
from lsdata.schemas import EventRow, ItemEventRow, ItemVocabRow, SequenceRow, VersionInfo, VocabRow, arrow_schema

FAULT_ENV = "LSDATA_FAULT"  #: test hook: "append:staged" / "append:moved" / "append:committed" kills the process there
OUTPUTS = ["vocab", "events", "sequences", "item_events", "quarantine.parquet"]
SEQ_FIELDS = ["item", "cate", "behavior", "ts"]


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == f"append:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One writer at a time per dataset (an exclusive lock on ``DIR/.lsdata.lock``)."""
    with open(Path(root) / ".lsdata.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise InputError(f"{root}: another append is running on this dataset") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lineage(ds: Dataset) -> dict[str, tuple[int, str]]:
    """sha256 -> (version, path) of every raw file in the dataset so far."""
    out = {s.sha256: (1, s.path) for s in ds.manifest.sources}
    for v in versions.version_log(ds.root).versions:
        out.update({s.sha256: (v.version, s.path) for s in v.sources})
    return out


def extend_vocab(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """``old`` (id, raw, count, ...) with counts from ``new`` (raw, count) added; unseen raws appended with ids
    ``old.height + 1, ...`` in ascending raw order. Extra columns of fresh rows come from ``new``."""
    counts = old.join(new.select("raw", pl.col("count").alias("_add")), on="raw", how="left", maintain_order="left")
    counts = counts.with_columns((pl.col("count") + pl.col("_add").fill_null(0)).alias("count")).drop("_add")
    fresh = new.join(old.select("raw"), on="raw", how="anti").sort("raw")
    fresh = fresh.with_columns(pl.int_range(old.height + 1, old.height + 1 + fresh.height, dtype=pl.Int32).alias("id"))
    return pl.concat([counts, fresh.select(old.columns)], how="vertical_relaxed")


def _vocabs(ds: Dataset, raw: pl.LazyFrame, item_category: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    old = {n: pl.read_parquet(ds.vocab_path(n)) for n in ("user", "item", "cate")}
    users, cates, items = pl.collect_all([
        raw.group_by("user").agg(pl.len().cast(pl.Int64).alias("count")).rename({"user": "raw"}),
        raw.group_by("cate").agg(pl.len().cast(pl.Int64).alias("count")).rename({"cate": "raw"}),
        raw.group_by("item").agg(
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("cate").sort_by(["ts", "src_file", "src_row"]).first().alias("cate_raw"),
        ).rename({"item": "raw"}),
    ])
    if item_category is not None and item_category.height:
        items = (items.join(item_category.rename({"item": "raw", "cate": "_meta"}), on="raw", how="left")
                 .with_columns(pl.coalesce("_meta", "cate_raw").alias("cate_raw")).drop("_meta"))
    v_cate = extend_vocab(old["cate"], cates)
    items = items.join(v_cate.select(pl.col("raw").alias("cate_raw"), pl.col("id").alias("cate")), on="cate_raw", how="left")
    items = items.with_columns(pl.col("cate").fill_null(0).cast(pl.Int32))
    return {"user": extend_vocab(old["user"], users), "item": extend_vocab(old["item"], items), "cate": v_cate}


def _known_categories(ds: Dataset, raw: pl.DataFrame, meta: pl.DataFrame | None, vocab: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Amazon: an item's category comes from meta, read once. Events of items the dataset already knows and
    the new meta does not describe get the known category (as an ingest of all files together would)."""
    item = vocab["item"].select(pl.col("raw").alias("item"), pl.col("cate").alias("_cid"))
    known = item.join(vocab["cate"].select(pl.col("id").alias("_cid"), pl.col("raw").alias("_known")), on="_cid").drop("_cid")
    if meta is not None and meta.height:
        known = known.join(meta.select("item"), on="item", how="anti")
    out = raw.join(known, on="item", how="left", maintain_order="left")
    fix = pl.col("_known").is_not_null() & (pl.col("cate") == UNKNOWN_CATEGORY)
    return out.with_columns(pl.when(fix).then(pl.col("_known")).otherwise(pl.col("cate")).alias("cate")).drop("_known")


def _dense(df: pl.DataFrame, vocabs: dict[str, pl.DataFrame]) -> pl.DataFrame:
    for c in ("user", "item", "cate"):
        v = vocabs[c].select(pl.col("raw").alias(c), pl.col("id").alias("_id"))
        df = df.join(v, on=c, how="left", maintain_order="left").with_columns(pl.col("_id").alias(c)).drop("_id")
    return df


def _write_deltas(ds: Dataset, spills: dict[int, Path], vocabs: dict[str, pl.DataFrame], meta, out: Path) -> dict:
    """Delta files of the touched partitions; returns counts."""
    old_vocab = {n: pl.read_parquet(ds.vocab_path(n)) for n in ("item", "cate")}
    seq_parts = {p.name: p for p in ds.parts("sequences")}
    n_item_parts = len(ds.parts("item_events"))
    item_rows: list[pl.DataFrame] = []
    touched = added = 0
    ts_min = ts_max = None
    for p, spill in sorted(spills.items()):
        name = f"part-{p:05d}.parquet"
        raw = pl.read_ipc(spill)
        if ds.name == "amazon":
            raw = _known_categories(ds, raw, meta, old_vocab)
        # spills hold rows in (src_file, src_row) order: a stable (user, ts) sort gives the canonical order
        new = _dense(raw, vocabs).sort("user", "ts", maintain_order=True)
        users = new["user"].unique().sort()
        old = ds.read("sequences", seq_parts[name], ["user", *SEQ_FIELDS], users=users) if name in seq_parts else None
        flat = new.select("user", *SEQ_FIELDS)
        if old is not None and old.height:  # earlier events first: their src_file is lower, so ties keep this order
            flat = pl.concat([old.explode(SEQ_FIELDS).cast(flat.schema), flat]).sort("user", "ts", maintain_order=True)
        write_parquet(group_sequences(flat).cast(arrow_schema(SequenceRow)), out / "sequences" / name)
        write_parquet(new.select(list(EventRow.model_fields)).to_arrow().cast(arrow_schema(EventRow)), out / "events" / name)
        item_rows.append(new.select("item", "ts", "src_file", "src_row", "user", "behavior"))
        touched += users.len()
        added += new.height
        lo, hi = new["ts"].min(), new["ts"].max()
        ts_min = lo if ts_min is None else min(ts_min, lo)
        ts_max = hi if ts_max is None else max(ts_max, hi)
    items = pl.concat(item_rows).with_columns((pl.col("item") % n_item_parts).alias("_p"))
    for (q,), g in items.partition_by("_p", as_dict=True).items():
        g = g.sort("item", "ts", "src_file", "src_row")
        t = g.select(list(ItemEventRow.model_fields)).to_arrow().cast(arrow_schema(ItemEventRow))
        write_parquet(t, out / "item_events" / f"part-{q:05d}.parquet")
    return {"users_touched": touched, "events_added": added, "ts_min": ts_min, "ts_max": ts_max}


def append(root: str | Path, paths: list[str], strict: bool | None = None,
           progress: Callable[[int], None] | None = None) -> VersionInfo:
    """Append raw files to the dataset at ``root`` as a new version; returns its ``versions.json`` entry."""
    root = Path(root)
    if not paths:
        raise InputError("no input files given")
    for p in paths:
        check_input_file(p)
    ds = open_dataset(root)
    if ds.name == "xlong":
        raise InputError(f"{root}: XLong arrives as fixed samples without timestamps; it cannot be appended to")
    with locked(root):
        ds = open_dataset(root)  # the latest version, now that no other append can publish
        seen = lineage(ds)
        hashes = [sha256_file(p) for p in paths]
        for p, h in zip(paths, hashes):
            if h in seen:
                v, first = seen[h]
                raise InputError(f"{p}: already in the dataset (sha256 {h[:16]}..., version {v}, as {first}); refusing to append it twice")
            seen[h] = (ds.version + 1, p)
        versions.remove_unpublished(root)
        mod = SOURCES[ds.name]
        options = IngestOptions.model_validate(ds.manifest.options)
        if strict is not None:
            options = options.model_copy(update={"strict": strict})
        tasks = mod.plan(paths, options)
        first_index = len(lineage_sources(ds))
        for t in tasks:
            t.index += first_index
        with staging_dir(root, "append") as tmp:
            builder = EventBuilder(tmp / "work", ds.manifest.partitions, mod.RAW_TYPE)
            ctx = IngestContext(builder, Quarantine(options.strict), options, progress)
            meta = mod.prepare(tasks, ctx)
            for t in tasks:
                if t.kind in mod.EVENT_KINDS:
                    mod.read(t, ctx)
            if builder.rows == 0:
                raise InputError(f"no valid events in {', '.join(paths)} ({ctx.quarantine.count} rows quarantined); nothing to append")
            spills = builder.spills()
            raw = pl.scan_ipc([str(s) for s in spills.values()])
            if ds.name == "amazon":
                raw = _known_categories(ds, raw.collect(), meta, {n: pl.read_parquet(ds.vocab_path(n)) for n in ("item", "cate")}).lazy()
            vocabs = _vocabs(ds, raw, meta)
            out = tmp / "version"
            raw_arrow = pl.DataFrame(schema={"raw": mod.RAW_TYPE}).to_arrow().schema.field("raw").type
            for name, v in vocabs.items():
                model = ItemVocabRow if name == "item" else VocabRow
                write_parquet(v.select(list(model.model_fields)).to_arrow().cast(arrow_schema(model, raw_type=raw_arrow)),
                              out / "vocab" / f"{name}.parquet")
            counts = _write_deltas(ds, spills, vocabs, meta, out)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            ctx.quarantine.write(out / "quarantine.parquet")
            log = versions.version_log(root)
            prev = log.versions[-1] if log.versions else ds.manifest
            rel = versions.version_dir(root, ds.version + 1).relative_to(root)
            old_sizes = {n: pl.read_parquet(ds.vocab_path(n), columns=["id"]).height for n in ("user", "item", "cate")}
            info = VersionInfo(
                version=ds.version + 1,
                parent=ds.version,
                sources=[reconcile(t, ctx.file(t), h, file_bytes([t.path])) for t, h in zip(tasks, hashes)],
                events_added=counts["events_added"],
                users_touched=counts["users_touched"],
                users_new=vocabs["user"].height - old_sizes["user"],
                items_new=vocabs["item"].height - old_sizes["item"],
                cates_new=vocabs["cate"].height - old_sizes["cate"],
                quarantined=ctx.quarantine.count,
                events=prev.events + counts["events_added"],
                users=vocabs["user"].height,
                items=vocabs["item"].height,
                cates=vocabs["cate"].height,
                ts_min=min(x for x in (prev.ts_min, counts["ts_min"]) if x is not None),
                ts_max=max(x for x in (prev.ts_max, counts["ts_max"]) if x is not None),
                files={str(rel / k): h for k, h in output_hashes(out, OUTPUTS).items()},
            )
            _fault("staged")
            dst = versions.version_dir(root, info.version)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, dst)
            _fault("moved")
            log.versions.append(info)
            write_model_atomic(root / versions.LOG, log)  # the commit
            _fault("committed")
        for d in ("split", "layouts"):  # built from the previous version
            shutil.rmtree(root / d, ignore_errors=True)
    return info


def lineage_sources(ds: Dataset) -> list:
    """Every source file of the dataset so far, in ``src_file`` order."""
    return [*ds.manifest.sources, *(s for v in versions.version_log(ds.root).versions for s in v.sources)]
