"""Layouts: the window primitives against a naive reference, and whole layouts on the real Taobao slice."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsdata import layouts, samples, views
from lsdata.dataset import open_dataset
from lsdata.defaults import IngestOptions, SplitOptions
from lsdata.ingest import ingest

ranges = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=20).map(
    lambda rs: [(min(a, b), max(a, b)) for a, b in rs]
)


def naive(values, start, end, width, side):
    real = list(values[max(start, end - width) : end])
    pad = [0] * (width - len(real))
    return pad + real if side == "front" else real + pad


@settings(max_examples=200, deadline=None)
@given(rs=ranges, width=st.integers(1, 12), side=st.sampled_from(["front", "post"]))
def test_window_keeps_the_most_recent_events_on_the_padding_side(rs, width, side):
    values = np.arange(1, 32, dtype=np.int32)
    s, e = np.array(rs).T
    idx, mask, n = views.window(s, e, width, side)
    got = views.gather(values, idx, mask)
    for k, (a, b) in enumerate(rs):
        assert got[k].tolist() == naive(values, a, b, width, side)
        assert n[k] == min(width, b - a)


@settings(max_examples=200, deadline=None)
@given(rs=ranges, width=st.integers(1, 12), side=st.sampled_from(["front", "post"]), long=st.integers(1, 10), short=st.integers(1, 6))
def test_row_windows_take_what_the_position_windows_gather(rs, width, side, long, short):
    values = np.arange(1, 32, dtype=np.int32)
    s, e = np.array(rs).T
    pad = max(width, long, short)
    padded = views.pad_values(values, pad)
    idx, mask, n = views.window(s, e, width, side)
    first, mask2, n2 = views.window_rows(s, e, width, side)
    assert np.array_equal(mask, mask2) and np.array_equal(n, n2)
    assert np.array_equal(views.take(padded, pad, first, mask2), views.gather(values, idx, mask))
    for (i, m, k), (f, m2, k2) in zip(views.split_window(s, e, long, short), views.split_window_rows(s, e, long, short)):
        assert np.array_equal(views.take(padded, pad, f, m2, holes=~m2), views.gather(values, i, m)) and np.array_equal(k, k2)
    empty = views.pad_values(values[:0], pad)
    assert not views.take(empty, pad, first, np.zeros_like(mask2)).any()


def naive_crop(seq, long, short):
    """HPMN util.crop on the history only (protocol.md §2.3)."""
    if len(seq) < short:
        return [0] * long, seq + [0] * (short - len(seq))
    que = seq[-short:]
    mem = seq[:-short][-long:] if long else []
    return [0] * (long - len(mem)) + mem, que


@settings(max_examples=200, deadline=None)
@given(rs=ranges, long=st.integers(1, 10), short=st.integers(1, 6))
def test_split_window_is_the_reference_crop(rs, long, short):
    values = np.arange(1, 32, dtype=np.int32)
    s, e = np.array(rs).T
    (li, lm, ln), (si, sm, sn) = views.split_window(s, e, long, short)
    lg, sg = views.gather(values, li, lm), views.gather(values, si, sm)
    for k, (a, b) in enumerate(rs):
        mem, que = naive_crop(values[a:b].tolist(), long, short)
        assert lg[k].tolist() == mem and sg[k].tolist() == que
        assert ln[k] == sum(x != 0 for x in mem) and sn[k] == sum(x != 0 for x in que)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tests.conftest import TAOBAO_SLICE, need

    d = tmp_path_factory.mktemp("lay") / "d"
    ingest("taobao", [str(need(TAOBAO_SLICE))], d, IngestOptions(partitions=3))
    ds = open_dataset(d)
    samples.build(ds, SplitOptions())
    layouts.build(ds, ["plain", "hpmn", "shan", "mimn"])
    return ds


def load(ds, name):
    return pl.concat([pl.read_parquet(ds.layout_dir(name) / f"{s}.parquet") for s in ("train", "valid", "test")])


def joined(ds, name):
    seq = pl.read_parquet(ds.root / "sequences" / "*.parquet")
    s = pl.read_parquet(ds.samples_path).select("user", "hist_end")
    return load(ds, name).join(s, on="user").join(seq.select("user", pl.col("item").alias("seq_item"), pl.col("ts").alias("seq_ts")), on="user")


@pytest.mark.parametrize("name,side", [("plain", "post"), ("hpmn", "front"), ("mimn", "front")])
def test_history_is_the_sequence_before_the_target_padded_on_the_right_side(built, name, side):
    df = joined(built, name)
    width = df["hist_item"].dtype.size
    assert width == (200 if name == "mimn" else 300)
    for r in df.iter_rows(named=True):
        expect = naive(r["seq_item"], 0, r["hist_end"], width, side)
        assert list(r["hist_item"]) == expect
        assert r["hist_len"] == min(width, r["hist_end"])
        assert all(t < r["ts"] for t in r["seq_ts"][: r["hist_end"]])


def test_item_side_holds_only_earlier_touches_of_the_candidate(built):
    df = load(built, "hpmn")
    ie = pl.read_parquet(built.root / "item_events" / "*.parquet")
    for r in df.iter_rows(named=True):
        before = ie.filter((pl.col("item") == r["item"]) & (pl.col("ts") < r["ts"]))
        expect = naive(before["user"].to_list(), 0, before.height, 36, "front")
        assert list(r["side_user"]) == expect and r["side_len"] == min(36, before.height)


def test_shan_is_the_crop_of_the_history(built):
    df = joined(built, "shan")
    for r in df.iter_rows(named=True):
        mem, que = naive_crop(r["seq_item"][: r["hist_end"]][-300:], 256, 44)
        assert list(r["long_item"]) == mem and list(r["short_item"]) == que


def test_mimn_negatives_avoid_the_shown_history_and_padding(built):
    df = load(built, "mimn")
    lut = samples.item_categories(built)
    for r in df.iter_rows(named=True):
        hist, neg = np.array(r["hist_item"]), np.array(r["neg_item"])
        assert ((neg == 0) == (hist == 0)).all()
        assert not set(neg[neg > 0]) & set(hist[hist > 0])
        assert (np.array(r["neg_cate"]) == lut[neg]).all()


def test_mimn_negatives_of_a_batch_without_any_shown_history():
    # e.g. a part of the real Amazon Books slice whose users all have one review: every history is empty
    sampler = layouts.NegativeSampler(5, np.arange(6, dtype=np.int32), seed=1)
    neg, cate = sampler(np.zeros((3, 4), np.int32), np.zeros((3, 4), bool), stream=0)
    assert (neg == 0).all() and (cate == 0).all()
    hist = np.array([[2, 0], [0, 0]], np.int32)
    neg, _ = sampler(hist, hist > 0, stream=0)
    assert neg[0, 0] not in (0, 2) and (neg[0, 1:] == 0).all() and (neg[1] == 0).all()


def test_layouts_are_byte_identical_when_rebuilt(built):
    before = {s: (built.layout_dir("mimn") / f"{s}.parquet").read_bytes() for s in ("train", "test")}
    layouts.build(built, ["mimn"])
    assert before == {s: (built.layout_dir("mimn") / f"{s}.parquet").read_bytes() for s in ("train", "test")}


def test_layouts_read_without_lsdata_in_duckdb_and_pandas(built):
    import duckdb

    p = str(built.layout_dir("hpmn") / "test.parquet")
    n, width = duckdb.sql(f"select count(*), max(len(hist_item)) from '{p}'").fetchall()[0]
    assert n == pl.read_parquet(p).height and width == 300
    import pandas as pd

    assert len(pd.read_parquet(p)) == n


def test_overrides_change_widths(built):
    r = layouts.build(built, ["shan"], {"shan": {"hist": 20, "short": 5, "side": 6, "side_short": 2}})
    assert r["shan"].widths == {"long": 15, "short": 5, "side_long": 4, "side_short": 2}
    with pytest.raises(Exception, match="short"):
        layouts.build(built, ["shan"], {"shan": {"hist": 4, "short": 5}})
