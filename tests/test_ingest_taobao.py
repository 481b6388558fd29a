"""Taobao UserBehavior parsing: real slice counts, options, malformed rows, atomic output."""

from __future__ import annotations

import gzip
import json
import zipfile

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsdata.defaults import TAOBAO_WINDOW, IngestOptions
from lsdata.ingest import ingest
from lsdata.io import InputError
from tests.conftest import write_taobao

T0 = TAOBAO_WINDOW[0] + 3600


def events(out):
    return pl.read_parquet(out / "events" / "*.parquet")


def test_real_slice_counts_match_provenance(taobao_slice, tmp_path):
    m = ingest("taobao", [str(taobao_slice)], tmp_path / "d", IngestOptions(keep_out_of_window=True))
    assert (m.events, m.users, m.items, m.cates) == (4321, 43, 3276, 567)
    ev = events(tmp_path / "d")
    counts = dict(ev.group_by("behavior").len().iter_rows())
    assert counts == {1: 3926, 2: 190, 3: 128, 4: 77}  # pv, cart, fav, buy per PROVENANCE
    seq = pl.read_parquet(tmp_path / "d" / "sequences" / "*.parquet")
    assert seq["length"].max() == 466 and seq["length"].median() == 84
    assert m.sources[0].sha256 == "e6f47712a2ae149885993ac7b520cf5ba3b099b2e52f90cfddd912455c710e6d"


def test_out_of_window_row_is_dropped_by_default_and_counted(taobao_slice, tmp_path):
    m = ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    s = m.sources[0]
    assert (s.rows_read, s.rows_kept, s.rows_dropped) == (4321, 4320, 1)
    assert s.dropped == {"timestamp outside collection window": 1}


def test_gzip_and_zip_inputs_give_identical_events(taobao_slice, tmp_path):
    raw = taobao_slice.read_bytes()
    gz = tmp_path / "ub.csv.gz"
    gz.write_bytes(gzip.compress(raw))
    zp = tmp_path / "ub.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.writestr("UserBehavior.csv", raw)
    outs = []
    for i, p in enumerate([taobao_slice, gz, zp]):
        ingest("taobao", [str(p)], tmp_path / f"o{i}")
        outs.append((tmp_path / f"o{i}" / "events" / "part-00000.parquet").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_behaviors_filter_keeps_only_selected_and_counts_the_rest(taobao_slice, tmp_path):
    m = ingest("taobao", [str(taobao_slice)], tmp_path / "d", IngestOptions(behaviors=("buy", "cart"), keep_out_of_window=True))
    ev = events(tmp_path / "d")
    assert set(ev["behavior"].unique()) <= {2, 4}
    s = m.sources[0]
    assert s.rows_kept == 190 + 77
    assert s.dropped["behavior not selected (--behaviors)"] == 3926 + 128


def test_ties_are_broken_by_file_then_line(tmp_path):
    a = write_taobao(tmp_path / "a.csv", [(1, 10, 1, "pv", T0), (1, 11, 1, "pv", T0)])
    b = write_taobao(tmp_path / "b.csv", [(1, 12, 1, "pv", T0 - 5), (1, 13, 1, "pv", T0)])
    ingest("taobao", [str(b), str(a)], tmp_path / "d")  # b is file 0
    ev = events(tmp_path / "d")
    raw = pl.read_parquet(tmp_path / "d" / "vocab" / "item.parquet").select("id", "raw")
    order = ev.join(raw, left_on="item", right_on="id", maintain_order="left")["raw"].to_list()
    assert order == [12, 13, 10, 11]
    assert ev.select("src_file", "src_row").rows() == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_item_category_is_that_of_its_earliest_event_by_time_file_line(tmp_path):
    # the same item in three categories: earliest by ts, then file, then line (the packed one-key order and the
    # three-column order it replaces must agree, including across files)
    a = write_taobao(tmp_path / "a.csv", [(1, 7, 50, "pv", T0 + 9), (2, 7, 51, "pv", T0), (3, 8, 60, "pv", T0)])
    b = write_taobao(tmp_path / "b.csv", [(4, 7, 52, "pv", T0), (5, 8, 61, "pv", T0 - 1), (6, 8, 62, "pv", T0 - 1)])
    from lsdata import events as ev_mod
    from lsdata.ingest.taobao import RAW_TYPE

    for paths, want in (([b, a], {7: 52, 8: 61}), ([a, b], {7: 51, 8: 61})):
        ingest("taobao", [str(x) for x in paths], tmp_path / "d")
        v = pl.read_parquet(tmp_path / "d" / "vocab" / "item.parquet").join(
            pl.read_parquet(tmp_path / "d" / "vocab" / "cate.parquet").select(pl.col("id").alias("cate"), pl.col("raw").alias("cate_raw")),
            on="cate",
        )
        assert dict(v.select("raw", "cate_raw").rows()) == want
    builder = ev_mod.EventBuilder(tmp_path / "w", 2, RAW_TYPE)
    frame = pl.DataFrame(
        {"user": [1, 2, 3], "item": [7, 7, 7], "cate": [1, 2, 3], "behavior": [1, 1, 1], "ts": [T0, T0, T0 - 1],
         "rating": [None] * 3, "src_file": [1, 0, 1], "src_row": [5, 9, 1 << 40]},
        schema=ev_mod.raw_schema(RAW_TYPE),
    )
    builder.add(frame)
    builder.add(frame.with_columns(pl.col("src_row") + 1, pl.col("cate") + 3))
    builder.spills()
    assert isinstance(builder._first_key(), list)  # src_row needs 41 bits: ts + file + row do not fit one int64
    v = builder.build_vocabs()["item"]
    assert v["count"].to_list() == [6] and v["cate"].to_list() == [3]  # raw cate 3 (file 1, row 2^40) is dense id 3


def test_an_error_in_a_background_write_fails_the_ingest_and_leaves_no_staging(tmp_path, monkeypatch):
    good = write_taobao(tmp_path / "a.csv", [(1, 2, 3, "pv", T0), (2, 3, 3, "pv", T0 + 1)])
    from lsdata import events as ev_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ev_mod, "_write_parquet_now", boom)
    with pytest.raises(OSError, match="disk full"):
        ingest("taobao", [str(good)], tmp_path / "d", IngestOptions(partitions=2))
    assert not (tmp_path / "d" / "manifest.json").exists()
    assert not list((tmp_path / "d").glob(".ingest.tmp-*"))


def test_dense_ids_are_one_based_in_raw_order(tmp_path):
    p = write_taobao(tmp_path / "a.csv", [(30, 7, 5, "pv", T0), (10, 9, 5, "buy", T0 + 1), (20, 7, 6, "fav", T0 + 2)])
    ingest("taobao", [str(p)], tmp_path / "d")
    for name, raws in {"user": [10, 20, 30], "item": [7, 9], "cate": [5, 6]}.items():
        v = pl.read_parquet(tmp_path / "d" / "vocab" / f"{name}.parquet")
        assert v["raw"].to_list() == raws and v["id"].to_list() == list(range(1, len(raws) + 1))
    assert events(tmp_path / "d")["item"].min() >= 1


def test_malformed_rows_are_quarantined_with_line_and_reason(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        f"1,2,3,pv,{T0}\n"
        "\n"
        f"1,2,3,{T0}\n"
        f"x,2,3,pv,{T0}\n"
        f"1,2,3,click,{T0}\n"
        "1,2,3,pv,later\n"
        f"1,2,3,pv,{T0},extra\n"
        f"-4,2,3,pv,{T0}\n"
        f"5,6,7,buy,{T0 + 9}"  # last line without newline is still read
    )
    m = ingest("taobao", [str(p)], tmp_path / "d")
    s = m.sources[0]
    assert (s.rows_read, s.rows_kept, s.rows_rejected) == (9, 2, 7)
    q = pl.read_parquet(tmp_path / "d" / "quarantine.parquet").sort("line")
    assert q["line"].to_list() == [2, 3, 4, 5, 6, 7, 8]
    assert q["field"].to_list() == ["line", "line", "user", "behavior", "ts", "line", "user"]
    assert "expected 5" in q["reason"][1] and "click" in q["reason"][3]
    assert set(q["file"]) == {str(p)}


def test_strict_mode_names_file_line_and_field(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(f"1,2,3,pv,{T0}\n1,2,3,pv,soon\n")
    with pytest.raises(InputError, match=r"bad\.csv:2:ts"):
        ingest("taobao", [str(p)], tmp_path / "d", IngestOptions(strict=True))
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_wrong_format_missing_and_empty_files_are_one_line_errors(tmp_path):
    j = tmp_path / "reviews.json"
    j.write_text(json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1}) + "\n")
    with pytest.raises(InputError, match="does not look like a Taobao"):
        ingest("taobao", [str(j)], tmp_path / "d")
    e = tmp_path / "empty.csv"
    e.write_text("")
    with pytest.raises(InputError, match="empty"):
        ingest("taobao", [str(e)], tmp_path / "d")
    with pytest.raises(InputError, match="no such file"):
        ingest("taobao", [str(tmp_path / "nope.csv")], tmp_path / "d")


def test_a_failed_reingest_leaves_no_complete_looking_dataset(tmp_path, monkeypatch):
    good = write_taobao(tmp_path / "a.csv", [(1, 2, 3, "pv", T0), (1, 3, 3, "pv", T0 + 1)])
    ingest("taobao", [str(good)], tmp_path / "d")
    assert (tmp_path / "d" / "manifest.json").exists()
    from lsdata import events as ev_mod

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(ev_mod, "group_sequences", boom)
    with pytest.raises(RuntimeError):
        ingest("taobao", [str(good)], tmp_path / "d")
    # the earlier complete dataset is untouched; no staging directory is left behind
    assert (tmp_path / "d" / "manifest.json").exists()
    assert not list((tmp_path / "d").glob(".ingest.tmp-*"))


def test_partition_count_does_not_change_content(taobao_slice, tmp_path):
    ingest("taobao", [str(taobao_slice)], tmp_path / "p1", IngestOptions(partitions=1))
    ingest("taobao", [str(taobao_slice)], tmp_path / "p4", IngestOptions(partitions=4))
    for t in ("events", "sequences", "item_events"):
        a = pl.read_parquet(tmp_path / "p1" / t / "*.parquet")
        b = pl.read_parquet(tmp_path / "p4" / t / "*.parquet")
        key = ["user"] if t == "sequences" else list(a.columns)
        assert a.sort(key).equals(b.sort(key)), t


line = st.one_of(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 9), st.sampled_from(["pv", "buy", "cart", "fav"]),
              st.integers(TAOBAO_WINDOW[0], TAOBAO_WINDOW[1] - 1)).map(lambda r: ",".join(map(str, r))),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=40),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=60))
def test_fuzzed_lines_never_crash_and_every_line_is_accounted_for(tmp_path_factory, lines):
    d = tmp_path_factory.mktemp("fuzz")
    p = d / "f.csv"
    p.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    try:
        m = ingest("taobao", [str(p)], d / "out", IngestOptions(kinds={str(p): "behavior"}))
    except InputError as e:
        assert "no valid events" in str(e)
        return
    s = m.sources[0]
    assert s.rows_read == len(lines) == s.rows_kept + s.rows_rejected + s.rows_dropped
    q = pl.read_parquet(d / "out" / "quarantine.parquet")
    assert q.height == s.rows_rejected and q["line"].is_unique().all()
    assert events(d / "out").height == s.rows_kept
