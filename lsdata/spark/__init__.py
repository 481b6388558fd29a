"""The pipeline on Apache Spark (``--engine spark``): the same stages, the same per-partition code, the same files.

Nothing here re-implements a stage. Spark distributes the work and does the aggregations; every row is parsed,
remapped, sorted, grouped and written by the single-machine functions, called inside Arrow UDFs
(``mapInArrow`` / ``groupBy().applyInArrow``):

==============  ===========================================================  =======================================
stage           runs per Spark task (single-machine function)                Spark does
==============  ===========================================================  =======================================
ingest: meta    (``source.prepare`` on the driver, as single-machine)         broadcast of its side table
ingest: parse   ``source.read`` on one byte span of a raw file               line counts per span, span -> task
ingest: vocab   (``events.dense_vocabs`` on the driver, over the aggregates)  ``groupBy(raw id)`` counts, ``min_by``
ingest: users   ``events.write_user_partition`` on one user-hash partition   shuffle by ``partition_of(user)``
ingest: items   ``events.write_item_partition`` on one item partition        shuffle by ``item % partitions``
ingest: xlong   ``xlong.read_chunk`` on a span; ``samples_of`` per batch     line counts, distinct train users,
                (``xlong.write_samples``, ``finish`` on the driver)          lines grouped into write batches
split           ``samples.user_last`` / ``samples.locate_part`` per part    exact quantile cut from a histogram
layouts         ``layouts.side_part`` / ``layouts.part_tables`` per part     join of samples, side windows, parts
layouts: xlong  ``xlong.batch_tables`` per batch of samples                   one task per batch, driver appends
==============  ===========================================================  =======================================

Sources: Taobao, XLong and Amazon (all its formats: 2014/2018 review JSON lines, 2014 Python-literal and 2018 JSON meta,
ratings CSV; plain files in byte spans, compressed files one task each). Amazon meta is not distributed: the
single-machine ``amazon.prepare`` reads it on the driver (meta files are much smaller than reviews) and its asin ->
category table is broadcast to the tasks parsing reviews and ratings, which join it exactly as single-machine.

XLong (samples, not events; :mod:`lsdata.spark.xlong`) reuses the same span plan: one task per corpus span runs
``xlong.read_chunk`` (``parse_corpus``) on its chunks, each line numbered exactly (``ts`` = line number) from the
counted spans; Spark collects the distinct train users for ``xlong.valid_users`` (the seeded carve, on the driver)
and groups the kept lines into the single-machine engine's write batches (train/valid: batches of lines by global
position, split by ``xlong.carve``; test: per single-machine chunk), each turned into samples by ``samples_of`` in
a task; the driver appends them with ``xlong.write_samples`` and ends with ``xlong.finish``. ``graph_emb.txt`` (one
small float matrix) is read on the driver by the single-machine ``read_emb``. XLong layouts (``layouts/plain``
after the manifest, and ``lsdata layout XLONG NAMES --engine spark``): one task per batch of ``LAYOUT_BATCH``
samples of a set - the single-machine engine's batches - runs ``xlong.batch_tables`` on it; the driver appends the
tables in batch order. ``lsdata append`` has no Spark engine.

Partitions: ``--partitions`` goes up to ``MAX_SPARK_PARTITIONS`` (16,384) on Spark, where each partition is one
call of the per-partition functions; the single-machine engine takes up to ``MAX_PARTITIONS`` (4,096: one open
spill file per partition, a fixed cost growing with them), which is also the most ``--partitions`` auto picks on
either engine (:mod:`lsdata.defaults`).

The outputs are those of the single-machine engine on the same input, options and seed: the same files with the
same rows in the same order (``tests/test_spark.py`` compares them). Tasks write their partition's files straight
into the stage's staging directory (named by partition, so a retried task rewrites the same file) and the driver
publishes it when every job has finished, manifest/report last, exactly as the single-machine engine does. The
staging directory and the inputs must therefore be on a file system every executor sees (any path in
``local[N]`` mode; a shared mount on a cluster), and executors need lsdata installed (or ``--py-files``).

Run it with ``lsdata ingest|split|layout ... --engine spark [--spark-master URL]`` or through ``spark-submit``::

    spark-submit --master local[2] --driver-memory 4g "$(python -c 'import lsdata.spark.submit as m; print(m.__file__)')" \
        ingest taobao UserBehavior.csv --out data/taobao

(:mod:`lsdata.spark.submit` takes the same arguments as ``lsdata`` and adds ``--engine spark``.)
"""

from __future__ import annotations

import os
import sys

DEFAULT_MASTER = "local[2]"
DEFAULT_DRIVER_MEMORY = "4g"
DEFAULT_SHUFFLE_PARTITIONS = 4


def session(
    master: str | None = DEFAULT_MASTER,
    driver_memory: str = DEFAULT_DRIVER_MEMORY,
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS,
    conf: dict[str, str] | None = None,
):
    """A SparkSession for lsdata (``getOrCreate``: an active session is reused).

    ``master`` None: ``spark-submit``'s ``--master`` when running under it, else :data:`DEFAULT_MASTER`. Python
    workers run this interpreter, so they import the same lsdata, polars and pyarrow as the driver.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:  # pragma: no cover - depends on the installation
        from lsdata.io import InputError

        raise InputError("--engine spark needs PySpark: pip install 'lsdata[spark]' (and Java 17+)") from e

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    b = SparkSession.builder.appName("lsdata")
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this process: its settings win
    if master or not submitted:
        b = b.master(master or DEFAULT_MASTER)
    settings = {} if submitted else {"spark.driver.memory": driver_memory}
    settings = {
        **settings,
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        **(conf or {}),
    }
    for k, v in settings.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def tasks(spark, n: int):
    """A DataFrame with one row ``id`` = 0..n-1 per Spark partition: the i-th unit of work runs as its own task."""
    return spark.range(0, n, 1, numPartitions=max(n, 1))


def ids(batches) -> list[int]:
    """The ``id`` values of a ``mapInArrow`` input (the rows of :func:`tasks` that reached this task)."""
    return [i for b in batches for i in b.column("id").to_pylist()]


def schema_of(arrow_schema):
    """The Spark schema (StructType) of an Arrow schema, for a UDF's declared output."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema)
