"""Feature store, offline half: point-in-time retrieval (parity with the layouts), append/versions, catalog."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.defaults import LAYOUTS, SPLITS
from lsdata.io import InputError
from lsdata.retrieve import retrieve

runner = CliRunner()


def retrieved(ds, requests: pl.DataFrame, layout: str, **kw) -> pl.DataFrame:
    return pl.concat([pl.from_arrow(t) for t in retrieve(ds, requests, layout, **kw)])


def comparable(layout: str, df: pl.DataFrame) -> list[str]:
    """The layout's columns that retrieval must reproduce (mimn's negatives are drawn from another stream)."""
    return [c for c in df.columns if not c.startswith("neg_") and c != "request"]


# --------------------------------------------------------------------------- retrieval


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.sampled_from(LAYOUTS),
    split=st.sampled_from(SPLITS),
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
    batch=st.integers(1, 50),
)
def test_retrieval_of_a_layouts_targets_returns_exactly_its_rows(taobao_layouts, layout, split, picks, batch):
    ds = open_dataset(taobao_layouts)
    lay = pl.read_parquet(ds.layout_dir(layout) / f"{split}.parquet")
    rows = lay[[p % lay.height for p in picks]]  # any subset, any order, repeats
    got = retrieved(ds, rows.select("user", "ts", "item", "label"), layout, batch=batch)
    cols = comparable(layout, rows)
    assert got.select(cols).equals(rows.select(cols))
    assert got["request"].to_list() == list(range(rows.height))
    if layout == "mimn":  # own draws, same invariants: never a shown history item, 0 exactly at padding
        hist = np.stack(got["hist_item"].to_numpy())
        neg = np.stack(got["neg_item"].to_numpy())
        assert ((neg == 0) == (hist == 0)).all()
        assert not ((neg[:, :, None] == hist[:, None, :]) & (hist[:, None, :] > 0)).any()


def naive(ds, user: int, ts: int, item: int, hist_w: int, side_w: int) -> tuple[list[int], list[int]]:
    """History items and item-side users strictly before ts, front-padded, by a Python scan (the reference)."""
    seq = pl.concat([pl.read_parquet(p) for p in ds.parts("sequences")]).filter(pl.col("user") == user).row(0, named=True)
    hist = [i for i, t in zip(seq["item"], seq["ts"]) if t < ts][-hist_w:]
    ie = pl.concat([pl.read_parquet(p) for p in ds.parts("item_events")]).filter((pl.col("item") == item) & (pl.col("ts") < ts))
    side = ie["user"].to_list()[-side_w:]  # item_events are sorted by (item, ts, src_file, src_row)
    return [0] * (hist_w - len(hist)) + hist, [0] * (side_w - len(side)) + side


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_retrieval_is_strictly_before_the_request_time_including_same_second_ties(taobao_layouts, data):
    ds = open_dataset(taobao_layouts)
    ev = pl.concat([pl.read_parquet(p, columns=["user", "item", "ts"]) for p in ds.parts("events")])
    n = data.draw(st.integers(1, 12))
    reqs = []
    for _ in range(n):
        e = ev.row(data.draw(st.integers(0, ev.height - 1)), named=True)
        shift = data.draw(st.sampled_from([-3600, -1, 0, 0, 1, 86400]))  # 0: ties with a stored event
        other = ev.row(data.draw(st.integers(0, ev.height - 1)), named=True)
        item = data.draw(st.sampled_from([e["item"], other["item"], 0]))
        reqs.append((e["user"], e["ts"] + shift, item))
    req = pl.DataFrame(reqs, schema={"user": pl.Int32, "ts": pl.Int64, "item": pl.Int32}, orient="row")
    hist_w, side_w = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 12))
    got = retrieved(ds, req, "hpmn", overrides={"hist": hist_w, "side": side_w}, batch=data.draw(st.integers(1, 8)))
    for k, (u, t, i) in enumerate(reqs):
        h, s = naive(ds, u, t, i, hist_w, side_w)
        assert got["hist_item"][k].to_list() == h, (u, t)
        assert got["side_user"][k].to_list() == s, (i, t)
        assert got["hist_len"][k] == sum(x > 0 for x in h)
    assert got["label"].null_count() == got.height  # no label in the requests -> null, never invented


def test_retrieval_with_raw_ids_maps_through_the_vocabulary(taobao_layouts):
    ds = open_dataset(taobao_layouts)
    lay = pl.read_parquet(ds.layout_dir("plain") / "test.parquet")
    vu = pl.read_parquet(ds.vocab_path("user"), columns=["id", "raw"])
    vi = pl.read_parquet(ds.vocab_path("item"), columns=["id", "raw"])
    raw = lay.select(
        pl.col("user").replace_strict(vu["id"], vu["raw"]), "ts", pl.col("item").replace_strict(vi["id"], vi["raw"])
    )
    unknown = pl.DataFrame({"user": [10**12], "ts": [lay["ts"][0]], "item": [10**12]})
    got = retrieved(ds, pl.concat([raw, unknown]), "plain", raw_ids=True)
    cols = [c for c in comparable("plain", lay) if c != "label"]
    assert got.head(lay.height).select(cols).equals(lay.select(cols))
    last = got.row(-1, named=True)
    assert (last["user"], last["item"], last["hist_len"], last["side_len"]) == (0, 0, 0, 0)


def test_bad_requests_name_the_row_and_field(taobao_layouts, tmp_path):
    ds = open_dataset(taobao_layouts)
    with pytest.raises(InputError, match="row 1: field user: id 99999"):
        list(retrieve(ds, pl.DataFrame({"user": [1, 99999], "ts": [0, 0]}), "hpmn"))
    with pytest.raises(InputError, match="missing column.*ts"):
        list(retrieve(ds, pl.DataFrame({"user": [1]}), "hpmn"))
    p = tmp_path / "r.parquet"
    pl.DataFrame({"user": [1, None], "ts": [1, 2]}).write_parquet(p)
    r = runner.invoke(app, ["retrieve", str(taobao_layouts), str(p), "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "row 1: field user is null" in r.output
    assert not (tmp_path / "o.parquet").exists()


def test_retrieve_cli_writes_the_layout_rows(taobao_layouts, tmp_path):
    lay = pl.read_parquet(taobao_layouts / "layouts" / "shan" / "valid.parquet")
    req = tmp_path / "req.parquet"
    lay.select("user", "ts", "item", "label").write_parquet(req)
    out = tmp_path / "out.parquet"
    r = runner.invoke(app, ["retrieve", str(taobao_layouts), str(req), "--layout", "shan", "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = pl.read_parquet(out)
    assert got.drop("request").equals(lay)
