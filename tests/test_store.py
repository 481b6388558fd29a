"""Feature store, offline half: point-in-time retrieval (parity with the layouts), append/versions, catalog."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("layout", ["hpmn", "mimn"])
def test_read_rounds_do_not_change_the_rows(taobao_layouts, monkeypatch, layout):
    """Rounds (each partition read once per round) of one chunk, of two chunks, and one round for all give the
    same tables, mimn's negatives included (their random stream is per chunk, not per round)."""
    from lsdata import retrieve as retrieve_mod

    ds = open_dataset(taobao_layouts)
    lay = pl.concat([pl.read_parquet(ds.layout_dir(layout) / f"{s}.parquet") for s in SPLITS])
    req = lay.select("user", "ts", "item", "label").sample(fraction=1.0, shuffle=True, seed=1)
    w = retrieve_mod.layout_lengths(ds, layout, None)
    per_request = w.hist * 9 + w.side * 5
    outs = {}
    for chunks in (1, 2, None):
        monkeypatch.setattr(retrieve_mod, "ROUND_BYTES", chunks * 7 * per_request if chunks else 1 << 30)
        assert retrieve_mod.round_rows(7, w) == (chunks * 7 if chunks else (1 << 30) // per_request // 7 * 7)
        tables = list(retrieve(ds, req, layout, batch=7))
        assert [t.num_rows for t in tables[:-1]] == [7] * (len(tables) - 1)
        outs[chunks] = pl.concat([pl.from_arrow(t) for t in tables])
    assert outs[1].equals(outs[None]) and outs[2].equals(outs[None])
    cols = comparable(layout, lay)
    assert outs[None].select(cols).equals(req.join(lay, on=["user", "ts", "item", "label"], how="left",
                                                   maintain_order="left").select(cols))


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


# --------------------------------------------------------------------------- append and versions

import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from lsdata import catalog, layouts, samples  # noqa: E402
from lsdata.append import FAULT_ENV, append  # noqa: E402
from lsdata.defaults import SplitOptions  # noqa: E402
from lsdata.ingest import ingest  # noqa: E402
from lsdata.versions import version_log  # noqa: E402

from .conftest import write_taobao  # noqa: E402


def raw_sequences(ds) -> pl.DataFrame:
    """Every user's sequence in raw ids (item, cate, behavior, ts lists), sorted by raw user: content that does not
    depend on the dense ids or the partitioning."""
    v = {n: pl.read_parquet(ds.vocab_path(n), columns=["id", "raw"]) for n in ("user", "item", "cate")}
    seq = pl.concat([ds.read("sequences", p) for p in ds.parts("sequences")]).explode("item", "cate", "behavior", "ts")
    for c in ("user", "item", "cate"):
        seq = seq.with_columns(pl.col(c).replace_strict(v[c]["id"], v[c]["raw"]))
    return seq.group_by("user", maintain_order=True).agg("item", "cate", "behavior", "ts").sort("user")


def raw_item_events(ds) -> pl.DataFrame:
    v = {n: pl.read_parquet(ds.vocab_path(n), columns=["id", "raw"]) for n in ("user", "item")}
    ie = pl.concat([ds.read("item_events", p) for p in ds.parts("item_events")])
    for c in ("user", "item"):
        ie = ie.with_columns(pl.col(c).replace_strict(v[c]["id"], v[c]["raw"]))
    return ie.group_by("item", maintain_order=True).agg("ts", "user", "behavior").sort("item")


def split_lines(src, tmp_path, every: int):
    """a.csv / b.csv from the slice: b has every ``every``-th line of the even users (interleaved in time with their
    lines in a) and all lines of the users with id % 5 == 1 (new users); odd users are untouched by b."""
    lines = src.read_text().splitlines(keepends=True)
    user = [int(x.split(",")[0]) for x in lines]
    to_b = [u % 5 == 1 or (u % 2 == 0 and k % every == 0) for k, u in enumerate(user)]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("".join(x for x, m in zip(lines, to_b) if not m))
    b.write_text("".join(x for x, m in zip(lines, to_b) if m))
    return a, b


@pytest.mark.parametrize("every", [3, 7])
def test_append_equals_a_reingest_of_the_concatenated_input(taobao_slice, tmp_path, every):
    a, b = split_lines(taobao_slice, tmp_path, every)
    ingest("taobao", [str(a)], tmp_path / "app", None)
    before = open_dataset(tmp_path / "app")
    v1_vocab = {n: pl.read_parquet(before.vocab_path(n)) for n in ("user", "item", "cate")}
    v1_seq = raw_sequences(before)
    info = append(tmp_path / "app", [str(b)])
    ingest("taobao", [str(a), str(b)], tmp_path / "all", None)
    got, want = open_dataset(tmp_path / "app"), open_dataset(tmp_path / "all")
    assert got.version == 2 and info.events == want.manifest.events and info.users == want.manifest.users
    assert raw_sequences(got).equals(raw_sequences(want))
    assert raw_item_events(got).equals(raw_item_events(want))
    for n in ("user", "item", "cate"):
        new = pl.read_parquet(got.vocab_path(n))
        assert new["id"].to_list() == list(range(1, new.height + 1))  # dense, 1-based
        assert new.head(v1_vocab[n].height).select("id", "raw").equals(v1_vocab[n].select("id", "raw"))  # earlier ids kept
        ref = pl.read_parquet(want.vocab_path(n)).select("raw", "count").sort("raw")
        assert new.select("raw", "count").sort("raw").equals(ref)
    # only touched users were rewritten, and version 1 still reads as before
    delta = pl.concat([pl.read_parquet(p) for p in (tmp_path / "app" / "versions" / "00002" / "sequences").glob("*.parquet")])
    assert 0 < info.users_new < delta.height == info.users_touched < info.users
    assert raw_sequences(open_dataset(tmp_path / "app", version=1)).equals(v1_seq)


def test_amazon_append_of_reviews_keeps_the_meta_categories_of_known_items(tmp_path):
    import gzip

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "amazon"
    lines = gzip.open(sample / "reviews_Synthetic_5.json.gz", "rt").read().splitlines(keepends=True)
    (tmp_path / "ra.json").write_text("".join(lines[::2]))
    (tmp_path / "rb.json").write_text("".join(lines[1::2]))
    meta = str(sample / "meta_Synthetic.json")
    ingest("amazon", [meta, str(tmp_path / "ra.json")], tmp_path / "app", None)
    append(tmp_path / "app", [str(tmp_path / "rb.json")])
    ingest("amazon", [meta, str(tmp_path / "ra.json"), str(tmp_path / "rb.json")], tmp_path / "all", None)
    got, want = open_dataset(tmp_path / "app"), open_dataset(tmp_path / "all")
    assert raw_sequences(got).equals(raw_sequences(want))
    assert raw_item_events(got).equals(raw_item_events(want))


def test_ties_across_appended_files_keep_file_order_and_stay_out_of_history(tmp_path):
    t = 1511600000
    a = write_taobao(tmp_path / "a.csv", [(1, 10, 5, "pv", t), (1, 11, 5, "pv", t + 60), (2, 10, 5, "buy", t + 60)])
    b = write_taobao(tmp_path / "b.csv", [(1, 12, 5, "cart", t), (1, 13, 6, "pv", t + 60), (3, 10, 5, "pv", t + 30)])
    ingest("taobao", [str(a)], tmp_path / "d", None)
    append(tmp_path / "d", [str(b)])
    ingest("taobao", [str(a), str(b)], tmp_path / "ref", None)
    ds = open_dataset(tmp_path / "d")
    assert raw_sequences(ds).equals(raw_sequences(open_dataset(tmp_path / "ref")))
    assert raw_sequences(ds).row(0, named=True)["item"] == [10, 12, 11, 13]  # (ts, file, line) order
    vi = pl.read_parquet(ds.vocab_path("item"))
    item = dict(zip(vi["raw"], vi["id"]))
    users = dict(zip(*pl.read_parquet(ds.vocab_path("user")).select("raw", "id").to_dict().values()))
    got = retrieved(ds, pl.DataFrame({"user": [users[1]] * 2, "ts": [t + 60, t + 61], "item": [item[10]] * 2}), "plain",
                    overrides={"hist": 5, "side": 5})
    inv = {v: k for k, v in item.items()}
    hist = [[inv[i] for i in r if i] for r in got["hist_item"].to_list()]
    assert hist == [[10, 12], [10, 12, 11, 13]]  # events at the request's second are never history
    side = got["side_len"].to_list()
    assert side == [2, 3]  # item 10: users 1 (t), 3 (t+30), then 2 (t+60) only strictly before t+61


def test_duplicate_files_are_refused_and_versions_are_checked(taobao_slice, tmp_path):
    a, b = split_lines(taobao_slice, tmp_path, 5)
    ingest("taobao", [str(a)], tmp_path / "d", None)
    for paths, msg in (([str(a)], "version 1"), ([str(b), str(b)], "refusing to append it twice")):
        with pytest.raises(InputError, match=msg):
            append(tmp_path / "d", paths)
    assert version_log(tmp_path / "d").versions == []
    append(tmp_path / "d", [str(b)])
    copy = tmp_path / "b_copy.csv"
    shutil.copy(b, copy)  # same content under another name: still the same data
    r = runner.invoke(app, ["append", str(tmp_path / "d"), str(copy)])
    assert r.exit_code == 2 and "already in the dataset" in r.output and "version 2" in r.output
    with pytest.raises(InputError, match="no version 3; versions 1..2"):
        open_dataset(tmp_path / "d", version=3)


def _state(root) -> tuple[int, pl.DataFrame]:
    ds = open_dataset(root)
    return ds.version, raw_sequences(ds)


def _append_in_subprocess(root, path, fault: str | None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    code = "import sys; from lsdata.append import append; append(sys.argv[1], [sys.argv[2]])"
    return subprocess.Popen([sys.executable, "-c", code, str(root), str(path)], env=env)


def test_a_killed_append_leaves_the_old_version_intact_or_the_new_one_complete(taobao_slice, tmp_path):
    a, b = split_lines(taobao_slice, tmp_path, 4)
    ingest("taobao", [str(a)], tmp_path / "d", None)
    ingest("taobao", [str(a), str(b)], tmp_path / "ref", None)
    old = _state(tmp_path / "d")
    new = raw_sequences(open_dataset(tmp_path / "ref"))
    for fault in ("append:staged", "append:moved"):  # killed before the commit: the old version, complete
        p = _append_in_subprocess(tmp_path / "d", b, fault)
        assert p.wait(60) == -signal.SIGKILL
        v, seq = _state(tmp_path / "d")
        assert v == 1 and seq.equals(old[1])
    assert any((tmp_path / "d").glob("versions/*")) or any((tmp_path / "d").glob(".append.tmp-*"))  # debris of the kills
    # killed at a random moment: either version, never half of one
    for delay in (0.3, 0.9):
        p = _append_in_subprocess(tmp_path / "d", b, None)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(60)
        v, seq = _state(tmp_path / "d")
        assert (v, seq.equals(old[1] if v == 1 else new)) in ((1, True), (2, True))
        if v == 2:
            break
    if open_dataset(tmp_path / "d").version == 1:
        p = _append_in_subprocess(tmp_path / "d", b, "append:committed")  # killed just after the commit: the new one
        assert p.wait(60) == -signal.SIGKILL
    v, seq = _state(tmp_path / "d")
    assert v == 2 and seq.equals(new)
    assert [d.name for d in (tmp_path / "d" / "versions").iterdir()] == ["00002"]  # the next append cleaned the debris


def test_split_and_layouts_on_an_appended_version_match_retrieval_and_old_versions_stay_readable(taobao_slice, tmp_path):
    a, b = split_lines(taobao_slice, tmp_path, 3)
    ingest("taobao", [str(a)], tmp_path / "d", None)
    v1 = open_dataset(tmp_path / "d")
    req = pl.DataFrame({"user": [1, 2, 3, 4], "ts": [1512000000, 1512100000, 1512200000, 1512300000], "item": [1, 2, 3, 4]})
    before = retrieved(v1, req, "hpmn")
    append(tmp_path / "d", [str(b)])
    assert retrieved(open_dataset(tmp_path / "d", version=1), req, "hpmn").equals(before)
    ds = open_dataset(tmp_path / "d")
    samples.build(ds, SplitOptions())
    layouts.build(ds, ["shan"])
    lay = pl.concat([pl.read_parquet(ds.layout_dir("shan") / f"{s}.parquet") for s in SPLITS])
    got = retrieved(ds, lay.select("user", "ts", "item", "label"), "shan")
    assert got.drop("request").equals(lay)
    assert lay.height == ds.split_report().users_total == version_log(tmp_path / "d").versions[-1].users


# --------------------------------------------------------------------------- catalog


def test_catalog_records_sources_versions_and_layouts(taobao_slice, tmp_path, monkeypatch):
    cat = tmp_path / "cat.duckdb"
    monkeypatch.setenv("LSDATA_CATALOG", str(cat))
    a, b = split_lines(taobao_slice, tmp_path, 3)
    d = tmp_path / "taobao"
    for args in (["ingest", "taobao", a, "--out", d], ["append", d, b], ["split", d], ["layout", d, "hpmn"]):
        r = runner.invoke(app, [str(x) for x in args])
        assert r.exit_code == 0, r.output
    rows = catalog.list_datasets()
    assert [(r["name"], r["version"], r["layouts"], r["exists"]) for r in rows] == [("taobao", 2, "hpmn", True)]
    info = catalog.show("taobao")
    assert [(s["version"], s["file"]) for s in info["sources"]] == [(1, str(a)), (2, str(b))]
    assert [v["version"] for v in info["versions"]] == [1, 2] and info["events"] == info["versions"][-1]["events"]
    assert info["layouts"][0]["from_version"] == 2 and info["splits"][0]["from_version"] == 2
    r = runner.invoke(app, ["store", "show", "taobao"])
    assert r.exit_code == 0 and "v2" in r.output and b.name in r.output
    # a second directory with the same name gets its own entry; re-registering one path keeps its name
    ingest("taobao", [str(a)], tmp_path / "x" / "taobao", None)
    r = runner.invoke(app, ["store", "add", str(tmp_path / "x" / "taobao"), "--catalog", str(cat)])
    assert r.exit_code == 0 and "taobao-2" in r.output
    catalog.register(d)
    assert sorted(r["name"] for r in catalog.list_datasets()) == ["taobao", "taobao-2"]
    r = runner.invoke(app, ["store", "show", "nope"])
    assert r.exit_code == 2 and "known: taobao, taobao-2" in r.output
