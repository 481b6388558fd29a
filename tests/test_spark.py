"""The Spark engine (lsdata/spark) against the single-machine engine: same inputs and seed -> the same files.

What is compared, for every file the single-machine run writes (events/, sequences/, item_events/, vocab/,
quarantine.parquet, manifest.json, split/, layouts/*/): the Spark run has the same file; Parquet files have the
same schema and the same rows in the same order (dense ids, samples, split sets, layout arrays); and the bytes are
identical (so the manifests, which hash every output file, are equal too).

Runs PySpark in local[2] mode (needs Java 17+ and ``pip install 'lsdata[spark]'``, both provided in CI by the
README set-up and .ci/run). Alone: ``python -m pytest -q -m spark``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsdata import layouts, samples
from lsdata.dataset import open_dataset
from lsdata.defaults import LAYOUTS, TAOBAO_WINDOW, IngestOptions, SplitOptions
from lsdata.ingest import ingest
from lsdata.io import InputError, count_span_lines, iter_line_chunks
from lsdata.split import quantile_cut
from tests.conftest import write_taobao

T0 = TAOBAO_WINDOW[0] + 3600


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark", reason="pip install 'lsdata[spark]'")
    if shutil.which("java") is None:
        pytest.skip("the Spark engine needs a Java runtime (java on PATH)")
    from lsdata.spark import session

    s = session("local[2]", driver_memory="2g", shuffle_partitions=2)
    yield s
    s.stop()


def run_both(spark, src: list[str], root: Path, opts: IngestOptions, split: SplitOptions) -> tuple[Path, Path]:
    from lsdata.spark import ingest as spark_ingest
    from lsdata.spark import layouts as spark_layouts
    from lsdata.spark import split as spark_split

    single, dist = root / "single", root / "spark"
    ingest("taobao", src, single, opts)
    ds = open_dataset(single)
    samples.build(ds, split)
    layouts.build(ds, list(LAYOUTS))
    spark_ingest.ingest(spark, "taobao", src, dist, opts)
    ds = open_dataset(dist)
    spark_split.build(spark, ds, split)
    spark_layouts.build(spark, ds, list(LAYOUTS))
    return single, dist


def assert_same_files(a: Path, b: Path) -> int:
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
    for f in files:
        if f.suffix == ".parquet":
            ta, tb = pq.read_table(a / f), pq.read_table(b / f)
            assert ta.schema == tb.schema, f
            assert ta.equals(tb), f"{f}: rows differ"
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f}: bytes differ"
    return len(files)


@pytest.mark.spark
def test_spark_equals_single_machine_on_the_real_slice(spark, taobao_slice, tmp_path):
    # 32 KiB spans: the 158 KiB file is parsed by 5 Spark tasks, each numbering its lines from its counted start
    opts = IngestOptions(chunk_bytes=32 << 10, partitions=3)
    single, dist = run_both(spark, [str(taobao_slice)], tmp_path, opts, SplitOptions())
    n = assert_same_files(single, dist)
    assert n == 3 * 3 + 3 + 2 + 2 + 4 * 4  # events/sequences/item_events parts, vocab, quarantine+manifest, split, layouts
    m = open_dataset(dist).manifest
    assert (m.events, m.users, m.items) == (4320, 43, 3275)


@pytest.mark.spark
def test_spark_equals_single_machine_on_generated_data(spark, tmp_path):
    from lsdata.synth import taobao

    src = taobao.generate(tmp_path / "gen.csv", rows=20_000, seed=5, bad_rate=0.01)
    gz = tmp_path / "gen2.csv.gz"  # a second, compressed input: one whole-file span, src_file 1
    gz.write_bytes(gzip.compress(Path(taobao.generate(tmp_path / "gen2.csv", rows=3_000, seed=6)).read_bytes()))
    opts = IngestOptions(chunk_bytes=64 << 10, partitions=4)
    single, dist = run_both(spark, [str(src), str(gz)], tmp_path, opts, SplitOptions(pairs=True))
    assert_same_files(single, dist)
    m = open_dataset(dist).manifest
    assert m.quarantined > 0 and len(m.sources) == 2 and m.events > 20_000


@pytest.mark.spark
def test_spark_strict_mode_names_the_same_first_bad_row(spark, tmp_path):
    from lsdata.spark import ingest as spark_ingest

    rows = [(1, 10, 1, "pv", T0 + i) for i in range(400)]
    rows[250] = (1, 10, 1, "pv", "soon")
    rows[300] = (1, 10, 1, "click", T0)
    p = write_taobao(tmp_path / "bad.csv", rows)
    opts = IngestOptions(strict=True, chunk_bytes=1 << 10)
    with pytest.raises(InputError) as single:
        ingest("taobao", [str(p)], tmp_path / "a", opts)
    with pytest.raises(InputError) as dist:
        spark_ingest.ingest(spark, "taobao", [str(p)], tmp_path / "b", opts)
    assert str(dist.value) == str(single.value) and "bad.csv:251:ts" in str(dist.value)
    assert not (tmp_path / "b" / "manifest.json").exists()


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"", b"a", b"bb,c", b"x" * 40, b"\r"]), min_size=0, max_size=30),
    trailing=st.booleans(),
    span=st.integers(1, 64),
)
def test_spans_cover_every_line_once_with_its_number(tmp_path_factory, lines, trailing, span):
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    if not data:
        return
    p = tmp_path_factory.mktemp("span") / "f.txt"
    p.write_bytes(data)
    whole = [(first, chunk) for first, _, chunk in iter_line_chunks(p, 16)]
    expect = [(first + k, line) for first, chunk in whole for k, line in enumerate(chunk.split(b"\n")[:-1])]
    got, first = [], 1
    for a in range(0, len(data), span):
        s = (a, min(a + span, len(data)))
        n = count_span_lines(p, s)
        for f, k, chunk in iter_line_chunks(p, 7, s, first):
            assert k == chunk.count(b"\n")
            got += [(f + j, line) for j, line in enumerate(chunk.split(b"\n")[:-1])]
        first += n
    assert got == expect


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=200), st.floats(0.01, 0.99))
def test_quantile_cut_of_a_histogram_equals_the_cut_of_the_users(last, q):
    last = np.array(last, np.int64)
    values, counts = np.unique(last, return_counts=True)
    assert quantile_cut(values[::-1].copy(), q, counts[::-1].copy()) == int(np.sort(last)[min(int(q * last.size), last.size - 1)])
