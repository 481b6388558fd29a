"""The Spark engine (lsdata/spark) against the single-machine engine: same inputs and seed -> the same files.

What is compared, for every file the single-machine run writes (events/, sequences/, item_events/, vocab/,
quarantine.parquet, manifest.json, split/, layouts/*/; for XLong xlong/, item_init.npy,
quarantine.parquet, manifest.json, layouts/plain/): the Spark run has the same file; Parquet files have the
same schema and the same rows in the same order (dense ids, samples, split sets, layout arrays); and the bytes are
identical (so the manifests, which hash every output file, are equal too).

Runs PySpark in local[2] mode (needs Java 17+ and ``pip install 'lsdata[spark]'``, both provided in CI by the
README set-up and .ci/run). Alone: ``python -m pytest -q -m spark``.
"""

from __future__ import annotations

import gzip
import json
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
from tests.conftest import REALDATA, need, write_taobao

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


def run_both(
    spark, src: list[str], root: Path, opts: IngestOptions, split: SplitOptions, dataset: str = "taobao"
) -> tuple[Path, Path]:
    from lsdata.spark import ingest as spark_ingest
    from lsdata.spark import layouts as spark_layouts
    from lsdata.spark import split as spark_split

    single, dist = root / "single", root / "spark"
    ingest(dataset, src, single, opts)
    ds = open_dataset(single)
    samples.build(ds, split)
    layouts.build(ds, list(LAYOUTS))
    spark_ingest.ingest(spark, dataset, src, dist, opts)
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
def test_spark_takes_more_partitions_than_256_and_equals_single_machine(spark, tmp_path):
    # 1,000 partitions for 600 events of 150 users: most user and item partitions are empty, and both engines
    # write them as the same empty files (every part number present, as the manifest's partitions says)
    from lsdata.spark import ingest as spark_ingest

    src = write_taobao(tmp_path / "small.csv", [(u % 150, 1 + (u * 7) % 200, 1 + u % 9, "pv", T0 + u) for u in range(600)])
    opts = IngestOptions(partitions=1000)
    single, dist = tmp_path / "single", tmp_path / "spark"
    ingest("taobao", [str(src)], single, opts)
    spark_ingest.ingest(spark, "taobao", [str(src)], dist, opts)
    assert assert_same_files(single, dist) == 3 * 1000 + 3 + 2
    ds = open_dataset(dist)
    assert ds.manifest.partitions == 1000
    for table in ("events", "sequences", "item_events"):
        rows = [pq.ParquetFile(p).metadata.num_rows for p in ds.parts(table)]
        assert len(rows) == 1000 and rows.count(0) > 500 and sum(rows) == (150 if table == "sequences" else 600)


def test_partition_limits_give_clear_errors(tmp_path, monkeypatch):
    import resource

    from pydantic import ValidationError

    from lsdata.defaults import MAX_PARTITIONS, MAX_SPARK_PARTITIONS

    assert 256 < MAX_PARTITIONS < MAX_SPARK_PARTITIONS < 100_000  # part names have 5 digits
    with pytest.raises(ValidationError, match=f"less than or equal to {MAX_SPARK_PARTITIONS}"):
        IngestOptions(partitions=MAX_SPARK_PARTITIONS + 1)
    src = [str(write_taobao(tmp_path / "small.csv", [(1, 2, 3, "pv", T0)]))]
    with pytest.raises(InputError, match=f"single-machine engine takes at most {MAX_PARTITIONS} .*--engine spark"):
        ingest("taobao", src, tmp_path / "a", IngestOptions(partitions=MAX_PARTITIONS + 1))
    # one spill file per partition is open: a low soft limit is raised, a low hard limit is a clear error
    monkeypatch.setattr(resource, "getrlimit", lambda _: (100, 200))
    with pytest.raises(InputError, match="needs ~556 open files, but `ulimit -Hn` is 200"):
        ingest("taobao", src, tmp_path / "a", IngestOptions(partitions=300))
    assert not (tmp_path / "a").exists()
    raised = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (100, 10_000))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: raised.append(limits))
    ingest("taobao", src, tmp_path / "b", IngestOptions(partitions=300))
    assert raised == [(556, 10_000)] and open_dataset(tmp_path / "b").manifest.partitions == 300


def bad_taobao(root: Path) -> Path:
    rows = [(1, 10, 1, "pv", T0 + i) for i in range(400)]
    rows[250] = (1, 10, 1, "pv", "soon")
    rows[300] = (1, 10, 1, "click", T0)
    return write_taobao(root / "bad.csv", rows)


def bad_amazon(root: Path) -> Path:
    lines = [json.dumps({"reviewerID": f"U{i % 7}", "asin": f"B{i % 5}", "unixReviewTime": T0 + i}) for i in range(400)]
    lines[250] = lines[250].replace(f"{T0 + 250}", '"soon"')
    lines[300] = "oops"
    (root / "bad.json").write_text("\n".join(lines) + "\n")
    return root / "bad.json"


def bad_xlong(root: Path) -> Path:
    lines = [f"{i}\t{i}\t1,2,3\t7\t8\t4,5\t6" for i in range(400)]
    lines[250] = "250\t250\t1,zz,3\t7\t8\t4,5\t6"
    lines[300] = "oops"
    (root / "train_corpus_total_dual.txt").write_text("\n".join(lines) + "\n")
    return root / "train_corpus_total_dual.txt"


@pytest.mark.spark
@pytest.mark.parametrize(
    ("dataset", "write", "where"),
    [("taobao", bad_taobao, "bad.csv:251:ts"), ("amazon", bad_amazon, "bad.json:251:unixReviewTime"),
     ("xlong", bad_xlong, "train_corpus_total_dual.txt:251:history")],
)
def test_spark_strict_mode_names_the_same_first_bad_row(spark, tmp_path, dataset, write, where):
    from lsdata.spark import ingest as spark_ingest

    p = write(tmp_path)
    opts = IngestOptions(strict=True, chunk_bytes=1 << 10)  # 1 KiB spans: the bad rows are in later ones
    with pytest.raises(InputError) as single:
        ingest(dataset, [str(p)], tmp_path / "a", opts)
    with pytest.raises(InputError) as dist:
        spark_ingest.ingest(spark, dataset, [str(p)], tmp_path / "b", opts)
    assert str(dist.value) == str(single.value) and where in str(dist.value)
    assert not (tmp_path / "b" / "manifest.json").exists()


AMAZON_BOOKS = REALDATA / "amazon2014_kmucs-bigdata"  # 2014 reviews (plain JSON lines) + Python-literal meta
AMAZON_FASHION = REALDATA / "amazon2018_NathanJackyLee" / "AMAZON_FASHION_5.json.gz"  # 2018 5-core reviews, gzip


@pytest.mark.spark
def test_spark_equals_single_machine_on_the_real_amazon_slices(spark, tmp_path):
    reviews, meta = need(AMAZON_BOOKS / "reviews_sample.txt"), need(AMAZON_BOOKS / "meta-1000.json")
    # 64 KiB spans: the 833 KiB plain 2014 reviews are parsed by 14 tasks joining the broadcast meta table; the
    # 2018 .gz is one task; meta (given between them) is read on the driver, as single-machine
    opts = IngestOptions(chunk_bytes=64 << 10, partitions=3)
    assert reviews.stat().st_size > 10 * opts.chunk_bytes
    src = [str(reviews), str(meta), str(need(AMAZON_FASHION))]
    single, dist = run_both(spark, src, tmp_path, opts, SplitOptions(), dataset="amazon")
    assert assert_same_files(single, dist) == 3 * 3 + 3 + 2 + 2 + 4 * 4
    m = open_dataset(dist).manifest
    assert (m.events, m.quarantined) == (1000 + 3176, 0)
    assert [(s.kind, s.rows_kept) for s in m.sources] == [("reviews", 1000), ("meta", 1000), ("reviews", 3176)]


def amazon_generated(root: Path) -> list[str]:
    """Every Amazon format from ``lsdata.synth.amazon`` with malformed lines: plain 2014 reviews (JSON and Python
    literal lines), the generator's .gz reviews, 2014 Python-literal meta (a bad record, a duplicate asin), 2018
    JSON meta, a plain ratings CSV with a header and a .gz one."""
    from lsdata.synth import amazon

    gz, meta = amazon.generate(root / "gen", n_users=300, n_items=80, seed=3, missing_meta=0.2)
    lines = gzip.decompress(gz.read_bytes()).decode().splitlines()
    recs = [json.loads(x) for x in lines]
    bad = ["not json", '{"reviewerID": "U1", "asin": "B1"}', "", '{"reviewerID": "", "asin": "B1", "unixReviewTime": 1}']
    out = [repr(r) if k % 50 == 7 else x for k, (x, r) in enumerate(zip(lines, recs, strict=True))]
    for k, b in enumerate(bad):
        out.insert(300 * (k + 1), b)
    plain = root / "reviews.json"
    plain.write_text("\n".join(out) + "\n")
    meta_lines = meta.read_text().splitlines()
    meta14 = root / "meta14.json"
    meta14.write_text("\n".join([meta_lines[0], "{'asin': 'B9', 'categories': 'Books'}", *meta_lines, "[1, 2]"]) + "\n")
    asins = sorted({r["asin"] for r in recs})
    meta18 = root / "meta18.json"
    meta18.write_text("".join(json.dumps({"asin": a, "title": "t", "category": ["Fashion", f"Leaf{i % 4}"]}) + "\n"
                              for i, a in enumerate(asins)))
    ratings = [f"{r['reviewerID']}x,{r['asin']},{r['overall']},{r['unixReviewTime'] + k}" for k, r in enumerate(recs)]
    ratings[500], ratings[1700] = "A1,B2,five,1300000000", "A1,B2,3.0"
    csv = root / "ratings.csv"
    csv.write_text("user,item,rating,timestamp\n" + "\n".join(ratings) + "\n")
    csv_gz = root / "ratings2.csv.gz"
    csv_gz.write_bytes(gzip.compress(("\n".join(ratings[:400]) + "\n").encode()))
    return [str(p) for p in (plain, str(gz), meta14, meta18, csv, csv_gz)]


@pytest.mark.spark
def test_spark_equals_single_machine_on_generated_amazon_data(spark, tmp_path):
    src = amazon_generated(tmp_path)
    opts = IngestOptions(chunk_bytes=32 << 10, partitions=4, category_path="first")
    assert Path(src[0]).stat().st_size > 10 * opts.chunk_bytes and Path(src[4]).stat().st_size > 2 * opts.chunk_bytes
    single, dist = run_both(spark, src, tmp_path, opts, SplitOptions(pairs=True), dataset="amazon")
    assert_same_files(single, dist)
    m = open_dataset(dist).manifest
    assert [s.kind for s in m.sources] == ["reviews", "reviews", "meta", "meta", "ratings", "ratings"]
    assert m.quarantined == 4 + 2 + 2  # reviews.json, meta14.json, ratings.csv
    assert m.sources[2].dropped == {"duplicate asin (first record kept)": 1} and m.sources[3].rows_dropped > 0
    assert m.sources[4].dropped == {"header line": 1}


def run_xlong(spark, src: list[str], root: Path, opts: IngestOptions) -> tuple[Path, Path]:
    """XLong ingest (which writes layouts/plain too) by both engines into ROOT/single and ROOT/spark."""
    from lsdata.spark import ingest as spark_ingest

    single, dist = root / "single", root / "spark"
    ingest("xlong", src, single, opts)
    spark_ingest.ingest(spark, "xlong", src, dist, opts)
    return single, dist


XLONG_OUT = ["item_init.npy", "layouts/plain/report.json", "layouts/plain/test.parquet", "layouts/plain/train.parquet", "layouts/plain/valid.parquet",
             "manifest.json", "quarantine.parquet", "xlong/test.parquet", "xlong/train.parquet", "xlong/valid.parquet"]


def xlong_generated(root: Path, n_users: int, hist_len: int, side_len: int) -> tuple[list[str], int]:
    """XLong files from ``lsdata.synth.xlong`` with malformed lines: the train corpus split into a plain file and a
    gzipped one, the test corpus without its final newline, graph_emb with a blank line and a bad row.
    Returns the paths and the number of malformed corpus lines."""
    from lsdata.synth import xlong

    train, test, emb = xlong.generate(root / "gen", n_users=n_users, hist_len=hist_len, side_len=side_len, n_items=900, seed=5)
    lines = train.read_text().splitlines()
    bad = ["", "1\t2", "x\t3\t1,2\t4\t5\t6\t7", "7\t8\t1,zz\t4\t5\t6\t7", "9\t-1\t1\t2\t3\t4\t5"]
    for k, b in enumerate(bad):
        lines.insert((k + 1) * len(lines) // 7, b)
    lines[10] = lines[10].replace(",", " , ", 2)  # spaces around commas are fine
    half = len(lines) // 2
    plain = root / "train1_corpus_total_dual.txt"
    plain.write_text("\n".join(lines[:half]) + "\n")
    gz = root / "train2_corpus_total_dual.txt.gz"
    gz.write_bytes(gzip.compress(("\n".join(lines[half:]) + "\n").encode()))
    tl = test.read_text().splitlines()
    tl.insert(len(tl) // 2, "oops")
    te = root / "test_corpus_total_dual.txt"
    te.write_text("\n".join(tl))  # a last line without newline: its own chunk single-machine
    el = emb.read_text().splitlines()
    el.insert(3, "")
    el[10] = "nan 1"
    ge = root / "graph_emb.txt"
    ge.write_text("\n".join(el) + "\n")
    return [str(plain), str(ge), str(te), str(gz)], len(bad) + 1


@pytest.mark.spark
@pytest.mark.parametrize(
    ("n_users", "hist_len", "side_len", "chunk"),
    [(9000, 3, 2, 16 << 10), (60, 1000, 184, 2 << 10)],
    ids=["many-lines", "lines-longer-than-a-span"],
)
def test_spark_xlong_equals_single_machine_on_generated_data(spark, tmp_path, n_users, hist_len, side_len, chunk):
    # many-lines: > 2 * 4096 train lines over two train files (one plain in ~16 spans, one .gz in one task), so the
    # valid carve's batches straddle spans and files; the test corpus is cut into spans whose lines fall into the
    # single-machine chunks (its row groups). lines-longer-than-a-span: 2 KiB spans, ~6 KiB lines.
    src, n_bad = xlong_generated(tmp_path, n_users, hist_len, side_len)
    opts = IngestOptions(chunk_bytes=chunk, xlong_valid_fraction=0.2, seed=11)
    assert Path(src[0]).stat().st_size > 8 * chunk and Path(src[2]).stat().st_size > 4 * chunk
    single, dist = run_xlong(spark, src, tmp_path, opts)
    assert assert_same_files(single, dist) == len(XLONG_OUT)
    assert sorted(str(f.relative_to(dist)) for f in dist.rglob("*") if f.is_file()) == XLONG_OUT
    m = open_dataset(dist).manifest
    assert m.quarantined == n_bad + 1  # the corpora's malformed lines + graph_emb's bad row
    assert [s.kind for s in m.sources] == ["xlong_train", "graph_emb", "xlong_test", "xlong_train"]
    assert sum(s.rows_rejected for s in m.sources) == m.quarantined
    assert m.sources[0].notes["valid_lines"] > 0 and m.sources[1].rows_dropped == 1
    if n_users > 2 * 4096:
        assert pq.ParquetFile(dist / "xlong" / "train.parquet").metadata.num_row_groups > 1
        assert pq.ParquetFile(dist / "xlong" / "test.parquet").metadata.num_row_groups > 4


@pytest.mark.spark
def test_spark_xlong_equals_single_machine_on_gzipped_input(spark, tmp_path):
    # every file compressed: one task per file, chunked exactly as single-machine
    from lsdata.synth import xlong

    src = []
    for p in xlong.generate(tmp_path / "gen", n_users=300, hist_len=40, side_len=8, n_items=600, seed=2):
        gz = tmp_path / (p.name + ".gz")
        gz.write_bytes(gzip.compress(p.read_bytes()))
        src.append(str(gz))
    opts = IngestOptions(chunk_bytes=8 << 10, xlong_valid_fraction=0.3)
    single, dist = run_xlong(spark, src, tmp_path, opts)
    assert assert_same_files(single, dist) == len(XLONG_OUT)
    assert pq.ParquetFile(dist / "xlong" / "test.parquet").metadata.num_row_groups > 1


@pytest.mark.spark
def test_spark_xlong_layouts_equal_single_machine(spark, tmp_path):
    # every XLong layout on both engines from the same ingest: 12k lines, so train (row groups of the carved
    # batches), valid and test (row groups per 8 KiB chunk) hold several layout batches that cross row groups;
    # histories longer and shorter than the widths, mimn negatives seeded by set and batch
    from lsdata.ingest import xlong as x
    from lsdata.spark import layouts as spark_layouts
    from lsdata.synth import xlong

    src = xlong.generate(tmp_path / "gen", n_users=12_000, hist_len=30, side_len=4, n_items=900, seed=4)
    single, dist = tmp_path / "single", tmp_path / "spark"
    ingest("xlong", [str(p) for p in src], single, IngestOptions(chunk_bytes=8 << 10, xlong_valid_fraction=0.2))
    shutil.copytree(single, dist)
    widths = {"hist": 40, "side": 3, "short": 6, "side_short": 1}
    overrides = {n: widths if n == "shan" else {"hist": 20, "side": 3} for n in LAYOUTS}
    a = layouts.build(open_dataset(single), list(LAYOUTS), overrides, seed=7)
    b = spark_layouts.build(spark, open_dataset(dist), list(LAYOUTS), overrides, seed=7)
    assert a == b
    assert assert_same_files(single, dist) == len(XLONG_OUT) + 3 * 4  # plain rebuilt, hpmn, shan, mimn added
    for s in ("train", "test"):
        assert a["plain"].rows[s] > x.LAYOUT_BATCH
        groups = pq.ParquetFile(single / "xlong" / f"{s}.parquet").metadata
        assert any(groups.row_group(g).num_rows % x.LAYOUT_BATCH for g in range(groups.num_row_groups))


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
