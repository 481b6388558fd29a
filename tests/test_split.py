"""The split rule (lsdata.split) and labelled samples (lsdata.samples): property tests on generated data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsdata import samples, split
from lsdata.dataset import open_dataset
from lsdata.defaults import TAOBAO_WINDOW, IngestOptions, SplitOptions
from lsdata.ingest import ingest
from tests.conftest import write_taobao

T0 = TAOBAO_WINDOW[0]

# a user's events: (item, ts offset); small ts ranges force ties, including at the cut
user_events = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 40)), min_size=1, max_size=12)
datasets = st.dictionaries(st.integers(1, 10_000), user_events, min_size=2, max_size=25)


def build(tmp, data: dict, opts: SplitOptions):
    rows = [(u, i, i % 4 + 1, "pv", T0 + t) for u, evs in data.items() for i, t in evs]
    p = write_taobao(tmp / "ub.csv", rows)
    ingest("taobao", [str(p)], tmp / "d", IngestOptions(partitions=2))
    ds = open_dataset(tmp / "d")
    rep = samples.build(ds, opts)
    s = pl.read_parquet(ds.samples_path)
    seq = pl.read_parquet(tmp / "d" / "sequences" / "*.parquet")
    return ds, rep, s, seq


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=datasets, q=st.floats(0.05, 0.95), vq=st.floats(0.05, 0.95))
def test_cut_split_follows_the_hpmn_rule(tmp_path_factory, data, q, vq):
    ds, rep, s, seq = build(tmp_path_factory.mktemp("s"), data, SplitOptions(cut_quantile=q, valid_quantile=vq))
    last = seq.select("user", pl.col("ts").list.last().alias("last"), "length")
    lasts = np.sort(last["last"].to_numpy())
    cut = lasts[int(q * lasts.size)]
    assert rep.cut_time == cut
    j = s.join(last, on="user")
    # one sample per user; test iff last event > cut (ties go to train)
    assert s["user"].is_unique().all() and s.height == seq.height
    assert (j["split"] == "test").to_list() == (j["last"] > cut).to_list()
    # validation carved from train users by the same rule
    train_last = np.sort(j.filter(pl.col("last") <= cut)["last"].to_numpy())
    vcut = train_last[int(vq * train_last.size)]
    assert rep.valid_cut_time == vcut
    assert (j["split"] == "valid").to_list() == ((j["last"] <= cut) & (j["last"] > vcut)).to_list()
    # targets are the last event; no target of an earlier set is later than one of a later set
    assert (j["target_pos"] == j["length"] - 1).all()
    mx = {k: j.filter(pl.col("split") == k)["ts"].max() for k in ("train", "valid")}
    mn = {k: j.filter(pl.col("split") == k)["ts"].min() for k in ("valid", "test")}
    if mx["train"] is not None and mn["valid"] is not None:
        assert mx["train"] < mn["valid"]
    if mx["valid"] is not None and mn["test"] is not None:
        assert mx["valid"] < mn["test"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=datasets, method=st.sampled_from(["cut", "loo"]))
def test_history_ends_strictly_before_the_target_time(tmp_path_factory, data, method):
    ds, rep, s, seq = build(tmp_path_factory.mktemp("h"), data, SplitOptions(method=method))
    j = s.join(seq.select("user", "ts", "item"), on="user")
    for r in j.iter_rows(named=True):
        ts = r["ts_right"]
        assert ts[r["target_pos"]] == r["ts"]
        assert r["hist_end"] == sum(t < r["ts"] for t in ts)  # nothing at/after the target time
        if r["label"] == 1:
            assert r["item"] == r["item_right"][r["target_pos"]]
        else:
            assert r["item"] != r["item_right"][r["target_pos"]]


def test_cut_split_sets_are_user_disjoint_and_report_counts(taobao_slice, tmp_path):
    ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    ds = open_dataset(tmp_path / "d")
    rep = samples.build(ds, SplitOptions())
    s = pl.read_parquet(ds.samples_path)
    users = {k: set(s.filter(pl.col("split") == k)["user"]) for k in ("train", "valid", "test")}
    assert not (users["train"] & users["test"]) and not (users["train"] & users["valid"]) and not (users["valid"] & users["test"])
    assert sum(r.samples for r in rep.sets.values()) == rep.users_total == 43
    lasts = pl.read_parquet(tmp_path / "d" / "sequences" / "*.parquet")["ts"].list.last()
    assert rep.sets["test"].samples == int((lasts > rep.cut_time).sum()) > 0


def test_explicit_cut_time_accepts_iso_dates(taobao_slice, tmp_path):
    from lsdata.defaults import parse_time

    ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    ds = open_dataset(tmp_path / "d")
    rep = samples.build(ds, SplitOptions(cut_time=parse_time("2017-12-02")))
    assert rep.cut_time == 1512172800
    s = pl.read_parquet(ds.samples_path).join(
        pl.read_parquet(tmp_path / "d" / "sequences" / "*.parquet").select("user", pl.col("ts").list.last().alias("last")), on="user"
    )
    assert ((s["split"] == "test") == (s["last"] > 1512172800)).all()


def test_leave_one_out_warns_about_global_time_leak(taobao_slice, tmp_path):
    ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    rep = samples.build(open_dataset(tmp_path / "d"), SplitOptions(method="loo"))
    assert any("leak" in w for w in rep.warnings)
    assert rep.sets["test"].samples == rep.sets["valid"].samples == 43


def test_same_seed_gives_identical_bytes_and_another_seed_other_labels(taobao_slice, tmp_path):
    ingest("taobao", [str(taobao_slice)], tmp_path / "d")
    ds = open_dataset(tmp_path / "d")
    samples.build(ds, SplitOptions(seed=5))
    a = ds.samples_path.read_bytes()
    samples.build(ds, SplitOptions(seed=5))
    assert ds.samples_path.read_bytes() == a
    samples.build(ds, SplitOptions(seed=6))
    assert ds.samples_path.read_bytes() != a


def test_negatives_are_uniform_over_other_items():
    true = np.full(200_000, 3)
    label, cand = samples.draw_labels(true.size, true, 5, 0.5, seed=1)
    assert abs(label.mean() - 0.5) < 0.01
    neg = cand[label == 0]
    assert 3 not in set(neg.tolist())
    freq = np.bincount(neg, minlength=6)[1:] / neg.size
    assert np.allclose(freq[[0, 1, 3, 4]], 0.25, atol=0.01)


def test_quantile_cut_is_position_int_q_n():
    assert split.quantile_cut(np.array([5, 1, 4, 2, 3]), 0.7) == 4  # sorted[int(3.5)] = sorted[3]
    with pytest.raises(ValueError):
        split.quantile_cut(np.array([]), 0.5)
