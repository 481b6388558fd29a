"""``lsdata layout --engine spark``: the same ``layouts/NAME/{train,valid,test}.parquet`` as :func:`lsdata.layouts.build`.

* item sides: samples shuffled by item partition (``item % parts``); one task per item-events part computes its
  samples' windows with :func:`lsdata.layouts.side_part`;
* histories: samples joined with their user's sequences part and their item side, grouped by part; one task per
  part builds every requested layout with :func:`lsdata.layouts.part_tables` (mimn negatives seeded by part
  number and set, as single-machine) and writes them to the staging directory as Arrow files;
* the driver appends each part's tables in part order as row groups to the single file per layout and set
  (:class:`lsdata.layouts.LayoutWriter`) - one part in memory at a time - and publishes, reports last.

XLong (samples with their histories, no events): :func:`lsdata.spark.xlong.build_layouts`, one task per batch of
samples, the same staging files and the same driver append (:func:`write_part`, :func:`append_parts`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from lsdata import layouts
from lsdata import spark as sp
from lsdata.dataset import Dataset, open_dataset
from lsdata.defaults import SPLITS
from lsdata.io import staging_dir
from lsdata.schemas import LayoutReport, SampleRow

SIDE = pa.schema([("idx", pa.int64()), ("side_user", pa.list_(pa.int32())), ("side_behavior", pa.list_(pa.int8())),
                  ("side_len", pa.int32())])


def _lists(matrix: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    n, width = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), pa.array(matrix.reshape(-1), type_))


def _matrix(col: pl.Series, width: int) -> np.ndarray:
    return col.explode().to_numpy().reshape(-1, width)


def _part_file(tmp: Path, part_no: int, split: str, name: str) -> Path:
    return tmp / "parts" / f"{part_no:05d}" / f"{name}-{split}.arrow"


def write_part(tmp: Path, part_no: int, split: str, name: str, table: pa.Table) -> None:
    """A task's rows of layout ``name`` and set ``split`` for unit ``part_no``: an Arrow file in the staging dir
    (named by unit, so a retried task rewrites the same file)."""
    f = _part_file(tmp, part_no, split, name)
    f.parent.mkdir(parents=True, exist_ok=True)
    with ipc.new_file(str(f), table.schema) as w:
        w.write_table(table)


def append_parts(tmp: Path, writers: dict[str, layouts.LayoutWriter], parts: int) -> None:
    """The driver: every unit's Arrow files appended in unit order as row groups (one unit's table in memory at a
    time), then the Arrow files removed."""
    for part_no in range(parts):
        for s in SPLITS:
            for n, wr in writers.items():
                f = _part_file(tmp, part_no, s, n)
                if f.exists():
                    with ipc.open_file(str(f)) as r:
                        wr.write(s, r.read_all())
    shutil.rmtree(tmp / "parts", ignore_errors=True)


def build(
    spark, ds: Dataset, names: list[str], overrides: dict[str, dict[str, int]] | None = None, seed: int | None = None
) -> dict[str, LayoutReport]:
    """:func:`lsdata.layouts.build` on Spark (``spark`` from :func:`lsdata.spark.session`)."""
    from pyspark.sql import functions as F

    if ds.name == "xlong":
        from lsdata.spark import xlong

        return xlong.build_layouts(spark, ds, names, overrides, seed)
    lengths, negatives = layouts.plan(ds, names, overrides, seed)
    width = max(w.side for w in lengths.values())
    root, version = str(ds.root), ds.version
    item_parts = [str(p) for p in ds.parts("item_events")]
    seq_parts = [str(p) for p in ds.parts("sequences")]
    samples = spark.read.parquet(str(ds.samples_path)).select("*", F.col("_metadata.row_index").alias("idx"))

    def side(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t)
        ev = open_dataset(root, version).read("item_events", Path(item_parts[int(df["_q"][0])]))
        users, behs, lens = layouts.side_part(ev, df["item"].to_numpy(), df["ts"].to_numpy(), width)
        return pa.table([df["idx"].to_arrow(), _lists(users, pa.int32()), _lists(behs, pa.int8()), pa.array(lens, pa.int32())],
                        schema=SIDE)

    sides = (samples.select("idx", "item", "ts", (F.col("item") % len(item_parts)).cast("int").alias("_q"))
             .groupBy("_q").applyInArrow(side, sp.schema_of(SIDE)))

    def part_users(batches):
        d = open_dataset(root, version)
        for i in sp.ids(batches):
            u = d.read("sequences", Path(seq_parts[i]), ["user"])["user"]
            yield pa.RecordBatch.from_arrays([u.to_arrow(), pa.array(np.full(u.len(), i, np.int32))], ["user", "_part"])

    with staging_dir(ds.root, "layouts") as tmp:
        tmp_s = str(tmp)

        def part(t: pa.Table) -> pa.Table:
            df = pl.from_arrow(t).sort("idx")
            part_no = int(df["_part"][0])
            seq = open_dataset(root, version).read("sequences", Path(seq_parts[part_no]), ["user", "item", "cate", "behavior"])
            rows = np.searchsorted(seq["user"].to_numpy(), df["user"].to_numpy())
            side_r = layouts.side_ranges(_matrix(df["side_user"], width), _matrix(df["side_behavior"], width),
                                         df["side_len"].to_numpy().astype(np.int64))
            batch = df.select(list(SampleRow.model_fields))
            written = []
            for s, n, table in layouts.part_tables(seq, batch, rows, side_r, lengths, negatives, part_no):
                write_part(Path(tmp_s), part_no, s, n, table)
                written.append(table.num_rows)
            return pa.table({"part": pa.array([part_no], pa.int32()), "rows": [sum(written)]})

        users = sp.tasks(spark, len(seq_parts)).mapInArrow(part_users, "user int, _part int")
        (samples.join(users, "user").join(sides, "idx")
         .groupBy("_part").applyInArrow(part, "part int, rows long").collect())
        writers = {n: layouts.LayoutWriter(tmp, n, w) for n, w in lengths.items()}
        append_parts(tmp, writers, len(seq_parts))
        return layouts.publish_layouts(ds, tmp, writers)
