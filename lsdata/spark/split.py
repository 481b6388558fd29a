"""``lsdata split --engine spark``: the same ``split/samples.parquet`` and report as :func:`lsdata.samples.build`.

* users' last-event times: one task per sequences part (:func:`lsdata.samples.user_last`);
* the global cut: ``groupBy(last_ts).count()`` - a histogram whose size is the number of distinct times, not
  users - ranked exactly by :func:`lsdata.split.cut_times` on the driver (no global sort, no approximation);
* targets: one task per part assigns its users with those cuts (:func:`lsdata.split.assign`) and locates them
  (:func:`lsdata.samples.locate_part`);
* labels and negatives: :func:`lsdata.samples.finish` on the driver, because the seeded draws are made in
  (user, set) order over the whole dataset (one sample per target: O(samples) memory, the size of the output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from lsdata import samples
from lsdata import spark as sp
from lsdata import split as split_rule
from lsdata.dataset import Dataset, open_dataset
from lsdata.defaults import SplitOptions
from lsdata.schemas import SplitReport

USERS = {"user": pl.Int32, "length": pl.Int32, "last_ts": pl.Int64}
LOCATED = {"user": pl.Int32, "split": pl.Utf8, "target_pos": pl.Int32, "ts": pl.Int64, "true_item": pl.Int32,
           "true_cate": pl.Int32, "hist_end": pl.Int32}


def _arrow(schema: dict) -> pa.Schema:
    return pl.DataFrame(schema=schema).to_arrow().schema


def build(spark, ds: Dataset, opts: SplitOptions) -> SplitReport:
    """:func:`lsdata.samples.build` on Spark (``spark`` from :func:`lsdata.spark.session`)."""
    samples.check_splittable(ds)
    parts = [str(p) for p in ds.parts("sequences")]
    root, version = str(ds.root), ds.version
    users_schema, located_schema = _arrow(USERS), _arrow(LOCATED)

    def last(batches):
        d = open_dataset(root, version)
        for i in sp.ids(batches):
            yield from samples.user_last(d, Path(parts[i])).to_arrow().cast(users_schema).to_batches()

    users = sp.tasks(spark, len(parts)).mapInArrow(last, sp.schema_of(users_schema))
    users_total = users.count()
    cuts = None
    if opts.method == "cut":
        hist = users.groupBy("last_ts").count().toArrow()
        cuts = split_rule.cut_times(hist["last_ts"].to_numpy(), opts, hist["count"].to_numpy().astype(np.int64))

    def locate(batches):
        d = open_dataset(root, version)
        for i in sp.ids(batches):
            part = Path(parts[i])
            targets, _ = split_rule.assign(samples.user_last(d, part), opts, cuts)
            yield from samples.locate_part(d, part, targets).to_arrow().cast(located_schema).to_batches()

    located = pl.from_arrow(sp.tasks(spark, len(parts)).mapInArrow(locate, sp.schema_of(located_schema)).toArrow())
    info = cuts if cuts is not None else split_rule.assign(pl.DataFrame(schema=USERS), opts)[1]
    return samples.finish(ds, opts, located, users_total, info)
