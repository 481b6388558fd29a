"""lsdata.stats and lsdata.validate on the real Taobao slice (43 users, 4,321 rows) and the bundled XLong sample.

A clean dataset must validate with no violations; planted leaks and rule breaks must each be caught
with a message naming the file, the row and the field. Stats must match PROVENANCE.md.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from lsdata import layouts, samples, stats, validate
from lsdata.dataset import Dataset, open_dataset
from lsdata.defaults import IngestOptions, SplitOptions
from lsdata.ingest import ingest

CSV = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "taobao_fattydelivery" / "UserBehavior.csv"
XLONG = Path(__file__).resolve().parents[1] / "sample_data" / "xlong"
LAYOUTS = ["plain", "hpmn", "shan", "mimn"]


def need_csv() -> None:
    if not CSV.exists():
        pytest.skip(f"real Taobao slice not found at {CSV}")


def build(root: Path, options: IngestOptions) -> Dataset:
    need_csv()
    ingest("taobao", [str(CSV)], root, options)
    ds = open_dataset(root)
    samples.build(ds, SplitOptions())
    layouts.build(ds, LAYOUTS)
    return ds


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("taobao") / "ds"
    build(root, IngestOptions(partitions=3))
    return root


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    """A private copy of the clean dataset, for planting a fault."""
    dst = tmp_path / "ds"
    shutil.copytree(clean, dst)
    return dst


def rewrite(path: Path, fn) -> None:
    """Replace a Parquet file by ``fn(frame)``, keeping its exact Arrow schema."""
    table = pq.read_table(path)
    pq.write_table(fn(pl.from_arrow(table)).to_arrow().cast(table.schema), path)


def set_list(frame: pl.DataFrame, col: str, row: int, pos: int, value: int) -> pl.DataFrame:
    lists = frame[col].to_list()
    lists[row][pos] = value
    return frame.with_columns(pl.Series(col, lists, dtype=frame.schema[col]))


def sequences(root: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((root / "sequences").glob("part-*.parquet")))


def found(messages: list[str], *parts: str) -> bool:
    return any(all(p in m for p in parts) for m in messages)


# --------------------------------------------------------------------------- clean data


def test_clean_dataset_has_no_violations(clean):
    ds = open_dataset(clean)
    assert validate.validate(ds) == []
    assert validate.validate(ds, max_rows=3) == []


# --------------------------------------------------------------------------- planted faults


def test_hist_end_past_the_target_time_is_a_leak(copy):
    s = pl.read_parquet(copy / "split" / "samples.parquet")
    seq = sequences(copy)
    row = 5
    user, ts, hist_end = s["user"][row], s["ts"][row], s["hist_end"][row]
    user_ts = seq.filter(pl.col("user") == user)["ts"][0].to_list()
    assert user_ts[hist_end] >= ts  # the next event is at/after the target time: including it leaks
    rewrite(copy / "split" / "samples.parquet",
            lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.col("hist_end") + 1)
                                     .otherwise(pl.col("hist_end")).alias("hist_end")))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"split/samples.parquet row {row} (user {user})", "hist_end", "at/after the target time"), msgs


def test_target_item_in_hpmn_history_is_caught(copy):
    path = copy / "layouts" / "hpmn" / "test.parquet"
    d = pl.read_parquet(path)
    ok = d.with_row_index("i").filter(
        (pl.col("label") == 1) & (pl.col("hist_item").arr.last() != pl.col("item"))
    )
    row, user = ok["i"][0], ok["user"][0]
    rewrite(path, lambda f: set_list(f, "hist_item", row, -1, f["item"][row]))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"layouts/hpmn/test.parquet row {row} (user {user})", "hist_item"), msgs


def test_train_user_moved_to_test_breaks_the_split_rule(copy):
    s = pl.read_parquet(copy / "split" / "samples.parquet")
    row = int((s["split"] == "train").arg_true()[0])
    user = s["user"][row]
    rewrite(copy / "split" / "samples.parquet",
            lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit("test"))
                                     .otherwise(pl.col("split")).alias("split")))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"split/samples.parquet row {row} (user {user})", "split is 'test'", "puts the user in 'train'"), msgs
    assert found(msgs, "split/report.json", "sets.test.samples")


def test_unsorted_sequence_is_caught(copy):
    path = copy / "sequences" / "part-00001.parquet"
    d = pl.read_parquet(path)
    ts = d["ts"].to_list()
    k = next(j for j in range(1, len(ts[0])) if ts[0][j] != ts[0][j - 1])
    ts[0][k - 1], ts[0][k] = ts[0][k], ts[0][k - 1]
    rewrite(path, lambda f: f.with_columns(pl.Series("ts", ts, dtype=f.schema["ts"])))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, f"sequences/part-00001.parquet row 0 (user {d['user'][0]})", "ts decreases", f"position {k}"), msgs
    assert found(msgs, "sequences/part-00001.parquet", "sha256 differs from manifest.json")


def test_item_side_and_mimn_negatives_are_checked(copy):
    rewrite(copy / "layouts" / "plain" / "train.parquet", lambda f: f.with_columns(pl.col("side_len") + 1))
    mimn = copy / "layouts" / "mimn" / "train.parquet"
    d = pl.read_parquet(mimn)
    shown = d["hist_item"][0].to_list()[-1]
    rewrite(mimn, lambda f: set_list(f, "neg_item", 0, -2, shown))
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, "layouts/plain/train.parquet row 0", "side_len"), msgs
    assert found(msgs, "layouts/mimn/train.parquet row 0", "neg_item", "in the row's history"), msgs


def test_schema_drift_is_caught(copy):
    path = copy / "split" / "samples.parquet"
    pl.read_parquet(path).with_columns(pl.col("hist_end").cast(pl.Int64)).write_parquet(path)
    msgs = validate.validate(open_dataset(copy))
    assert found(msgs, "split/samples.parquet: schema differs from SampleRow", "hist_end is int64"), msgs


# --------------------------------------------------------------------------- stats


def test_stats_match_provenance(tmp_path):
    ds = build(tmp_path / "all", IngestOptions(partitions=3, keep_out_of_window=True))
    st = stats.compute(ds)
    assert (st.users, st.items, st.cates, st.events) == (43, 3276, 567, 4321)
    assert st.seq_len.max == 466 and st.seq_len.p50 == 84 and round(st.seq_len.mean, 2) == 100.49
    assert st.seq_len.count == 43 and st.item_len.count == 3276 and st.item_len.mean == pytest.approx(4321 / 3276)
    assert st.behaviors == {"pv": 3926, "cart": 190, "fav": 128, "buy": 77}
    utc = lambda s: int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp())
    assert (st.ts_min, st.ts_max) == (utc("2017-09-11 08:16:39"), utc("2017-12-03 15:59:13"))
    assert st.split_method == "cut" and st.layouts == LAYOUTS
    report = ds.split_report()
    for name, s in st.sets.items():
        r = report.sets[name]
        assert (s.samples, s.users, s.positives) == (r.samples, r.users, r.positives)
    assert validate.validate(ds) == []


def test_stats_default_ingest_and_summary_line(clean):
    ds = open_dataset(clean)
    st = stats.compute(ds)
    assert st.events == ds.manifest.events == 4320  # one out-of-window row dropped by default
    assert st.users == 43 and st.seq_len.max == 466
    line = stats.summary_line(st)
    assert line.startswith("taobao: 43 users, 3,275 items, 4,320 events; seq len p50 84 max 466; train/valid/test ")
    assert "\n" not in line
    json.loads(st.model_dump_json())  # serialisable for the CLI's --json


def test_plot_writes_a_png(clean, tmp_path):
    out = stats.plot(open_dataset(clean), tmp_path / "plots" / "taobao.png")
    data = out.read_bytes()
    assert out == tmp_path / "plots" / "taobao.png" and len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["taobao.png"]  # no temp file left behind


def test_stats_without_split(tmp_path):
    need_csv()
    ingest("taobao", [str(CSV)], tmp_path / "raw", IngestOptions(partitions=2))
    ds = open_dataset(tmp_path / "raw")
    st = stats.compute(ds)
    assert st.sets == {} and st.layouts == [] and st.split_method is None
    assert "samples" not in stats.summary_line(st)
    assert validate.validate(ds) == []


# --------------------------------------------------------------------------- XLong (no time: structure and ids)


def test_xlong_sample_data(tmp_path):
    """XLong stores samples (xlong/{split}.parquet): stats skip events, validate checks shapes and ids."""
    files = sorted(XLONG.glob("synthetic_*.txt"))
    if not files:
        pytest.skip(f"no XLong sample data in {XLONG}")
    ingest("xlong", [str(f) for f in files], tmp_path / "xl", IngestOptions(partitions=1))
    ds = open_dataset(tmp_path / "xl")
    layouts.build(ds, LAYOUTS)
    assert validate.validate(ds) == []

    st = stats.compute(ds)
    rows = {s: pq.ParquetFile(tmp_path / "xl" / "xlong" / f"{s}.parquet").metadata.num_rows for s in st.sets}
    assert st.events is None and st.behaviors == {} and st.split_method == "pre-split"
    assert {s: x.samples for s, x in st.sets.items()} == rows and sum(rows.values()) > 0
    assert st.seq_len.count == sum(rows.values()) and st.layouts == LAYOUTS
    assert stats.summary_line(st).startswith("xlong: ")
    assert stats.plot(ds, tmp_path / "xl.png").stat().st_size > 0

    hpmn = tmp_path / "xl" / "layouts" / "hpmn" / "train.parquet"
    d = pl.read_parquet(hpmn)
    row = int((d["hist_len"] > 0).arg_true()[0])
    width = d.schema["hist_item"].size
    real = d["hist_item"][row].to_list()[-1]
    rewrite(hpmn, lambda f: set_list(f, "hist_item", row, width - 1, real + 1))
    msgs = validate.validate(open_dataset(tmp_path / "xl"))
    assert found(msgs, f"layouts/hpmn/train.parquet row {row}", f"hist_item position {width - 1} holds {real + 1}, "
                 f"expected {real}"), msgs
