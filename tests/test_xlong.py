"""XLong: synthetic generator, sample-format ingest (base store, valid carve, quarantine) and layouts."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lsdata.dataset import open_dataset
from lsdata.defaults import Behavior, IngestOptions
from lsdata.ingest import ingest
from lsdata.io import InputError, read_json
from lsdata.layouts import build
from lsdata.synth.xlong import generate

HIST, SIDE, USERS, ITEMS = 50, 12, 40, 500
CLICK = int(Behavior.click)


def raw_lines(path: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in path.read_text().splitlines()]


def ints(field: str) -> list[int]:
    return [int(x) for x in field.split(",")] if field else []


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> list[Path]:
    return generate(tmp_path_factory.mktemp("raw"), n_users=USERS, hist_len=HIST, side_len=SIDE, n_items=ITEMS, seed=3)


@pytest.fixture(scope="module")
def opts() -> IngestOptions:
    return IngestOptions(xlong_valid_fraction=0.25, seed=7)


@pytest.fixture(scope="module")
def out(raw, opts, tmp_path_factory) -> Path:
    o = tmp_path_factory.mktemp("ds")
    ingest("xlong", [str(raw[2]), str(raw[1]), str(raw[0])], o, opts)  # any order: kinds come from content + name
    return o


def base(out: Path, split: str) -> pl.DataFrame:
    return pl.read_parquet(out / "xlong" / f"{split}.parquet")


# --------------------------------------------------------------------------- generator


def test_generator_format_and_determinism(tmp_path, raw):
    again = generate(tmp_path, n_users=USERS, hist_len=HIST, side_len=SIDE, n_items=ITEMS, seed=3)
    assert [p.name for p in again] == [
        "synthetic_train_corpus_total_dual.txt",
        "synthetic_test_corpus_total_dual.txt",
        "synthetic_graph_emb.txt",
    ]
    for a, b in zip(raw, again):
        assert a.read_bytes() == b.read_bytes()
        side = json.loads(Path(str(b) + ".synthetic.json").read_text())
        assert side["synthetic"] is True and side["generator"] == "lsdata.synth.xlong"
        assert "not real XLong data" in side["note"]
    other = generate(tmp_path / "o", n_users=USERS, hist_len=HIST, side_len=SIDE, n_items=ITEMS, seed=4)
    assert other[0].read_bytes() != raw[0].read_bytes()
    train, test = raw_lines(raw[0]), raw_lines(raw[1])
    assert len(train) + len(test) == USERS
    uids = [int(f[1]) for f in train + test]
    assert sorted(uids) == list(range(USERS))  # one line per user
    for f in train + test:
        assert len(f) == 7
        assert len(ints(f[2])) == HIST and len(ints(f[5])) == SIDE and len(ints(f[6])) == SIDE
        assert 0 <= int(f[3]) < ITEMS and 0 <= int(f[4]) < ITEMS and f[3] != f[4]
    emb = np.loadtxt(raw[2])
    assert emb.shape == (ITEMS, 16)


def test_generator_has_signal(out):
    """Cosine(target embedding, mean history embedding) separates positives from negatives."""
    init = np.load(out / "item_init.npy")
    d = pl.concat([base(out, s) for s in ("train", "valid", "test")])
    hist = np.stack(d["hist_item"].to_numpy())
    h = init[hist].mean(1)
    e = init[d["item"].to_numpy()]
    score = (h * e).sum(1) / np.linalg.norm(h, axis=1) / np.linalg.norm(e, axis=1)
    y = d["label"].to_numpy()
    auc = (score[y == 1][:, None] > score[y == 0][None, :]).mean()
    assert auc > 0.6


# --------------------------------------------------------------------------- ingest


def test_samples_ids_and_order(raw, out):
    train_lines, test_lines = raw_lines(raw[0]), raw_lines(raw[1])
    tv = pl.concat([base(out, "train"), base(out, "valid")])
    te = base(out, "test")
    assert tv.height == 2 * len(train_lines) and te.height == 2 * len(test_lines)
    assert tv.schema["hist_item"] == pl.List(pl.Int32) and tv.schema["user"] == pl.Int32
    assert tv.schema["label"] == pl.Int8 and tv.schema["ts"] == pl.Int64
    for df, lines in ((tv, train_lines), (te, test_lines)):
        rows = df.sort("ts", maintain_order=True).to_dicts()
        for k, f in enumerate(lines):
            pos, neg = rows[2 * k], rows[2 * k + 1]
            assert pos["ts"] == neg["ts"] == k + 1  # ts = 1-based line number (XLong has no time)
            assert (pos["label"], neg["label"]) == (1, 0)
            assert pos["user"] == neg["user"] == int(f[1]) + 1
            assert pos["item"] == int(f[3]) + 1 and neg["item"] == int(f[4]) + 1
            assert pos["hist_item"] == neg["hist_item"] == [i + 1 for i in ints(f[2])]
            assert pos["side_user"] == [i + 1 for i in ints(f[5])]
            assert neg["side_user"] == [i + 1 for i in ints(f[6])]
            assert pos["cate"] == neg["cate"] == 0
    # within a file, samples keep line order with the positive first
    t = base(out, "test")
    assert t["ts"].is_sorted() and t["label"].to_list()[:2] == [1, 0]


def test_valid_carve(raw, out, opts, tmp_path):
    train, valid = base(out, "train"), base(out, "valid")
    tu, vu = set(train["user"]), set(valid["user"])
    assert not tu & vu and not (tu | vu) & set(base(out, "test")["user"])
    n_train_users = len(raw_lines(raw[0]))
    assert len(vu) == round(0.25 * n_train_users)
    assert valid.height == 2 * len(vu)  # both samples of a line go together
    again = tmp_path / "again"
    ingest("xlong", [str(p) for p in raw], again, opts.model_copy(update={"chunk_bytes": 1 << 10}))
    assert set(base(again, "valid")["user"]) == vu  # same seed: same carve, whatever the chunking / file order
    for s in ("train", "valid", "test"):
        assert base(again, s).equals(base(out, s))
    other = tmp_path / "other"
    ingest("xlong", [str(p) for p in raw], other, opts.model_copy(update={"seed": 8}))
    assert set(base(other, "valid")["user"]) != vu
    none = tmp_path / "none"
    ingest("xlong", [str(p) for p in raw], none, opts.model_copy(update={"xlong_valid_fraction": 0.0}))
    assert base(none, "valid").height == 0 and base(none, "train").height == 2 * n_train_users


def test_manifest_and_item_init(raw, out):
    m = open_dataset(out).manifest
    assert m.dataset == "xlong" and m.synthetic is True
    assert m.cates == 0 and m.ts_min is None and m.ts_max is None and m.partitions == 1
    assert m.users == USERS  # largest user id (= uid + 1)
    assert m.items == ITEMS  # graph_emb rows cover every raw item
    assert m.events == USERS * HIST  # history entries, once per line
    assert m.quarantined == 0
    kinds = {Path(s.path).name: s.kind for s in m.sources}
    assert kinds == {
        "synthetic_train_corpus_total_dual.txt": "xlong_train",
        "synthetic_test_corpus_total_dual.txt": "xlong_test",
        "synthetic_graph_emb.txt": "graph_emb",
    }
    for s in m.sources:
        assert s.rows_read == s.rows_kept + s.rows_rejected + s.rows_dropped
    tr = next(s for s in m.sources if s.kind == "xlong_train")
    assert tr.notes["history_len_min"] == tr.notes["history_len_max"] == HIST
    assert tr.notes["history_len_not_1000"] == tr.rows_kept
    assert tr.notes["samples"] == 2 * tr.rows_kept
    init = np.load(out / "item_init.npy")
    assert init.dtype == np.float32 and init.shape == (m.items + 1, 16)
    assert not init[0].any()
    np.testing.assert_allclose(init[1:], np.loadtxt(raw[2]), rtol=1e-6)
    assert set(m.files) >= {"xlong/train.parquet", "xlong/valid.parquet", "xlong/test.parquet", "item_init.npy"}
    assert not list(out.glob(".ingest.tmp-*"))


def test_plain_layout_built_at_ingest(out):
    rep = read_json(out / "layouts" / "plain" / "report.json")
    assert rep["widths"] == {"hist": 1000, "side": 184}
    p = pl.read_parquet(out / "layouts" / "plain" / "test.parquet")
    b = base(out, "test")
    assert p.height == b.height == rep["rows"]["test"]
    row, src = p.row(0, named=True), b.row(0, named=True)
    assert row["hist_len"] == HIST and row["side_len"] == SIDE
    assert list(row["hist_item"][:HIST]) == src["hist_item"] and not any(row["hist_item"][HIST:])  # post-padded
    assert list(row["side_user"][:SIDE]) == src["side_user"] and not any(row["side_user"][SIDE:])
    assert set(row["hist_behavior"][:HIST]) == {CLICK} and not any(row["hist_cate"])


def test_layouts(out):
    ds = open_dataset(out)
    over = {
        "hpmn": {"hist": 64, "side": 16},
        "shan": {"hist": 40, "short": 10, "side": 12, "side_short": 4},
        "mimn": {"hist": 30, "side": 8},
    }
    reports = build(ds, ["hpmn", "shan", "mimn"], overrides=over)
    assert reports["hpmn"].widths == {"hist": 64, "side": 16}
    assert reports["shan"].widths == {"long": 30, "short": 10, "side_long": 8, "side_short": 4}
    b = base(out, "train")
    src = b.row(0, named=True)
    h, s = src["hist_item"], src["side_user"]

    hp = pl.read_parquet(ds.layout_dir("hpmn") / "train.parquet")
    assert hp.height == b.height == reports["hpmn"].rows["train"]
    r = hp.row(0, named=True)
    assert list(r["hist_item"]) == [0] * 14 + h and r["hist_len"] == HIST  # front-padded, most recent last
    assert list(r["side_user"]) == [0] * 4 + s and r["side_len"] == SIDE
    assert list(r["hist_behavior"]) == [0] * 14 + [CLICK] * HIST

    sh = pl.read_parquet(ds.layout_dir("shan") / "train.parquet").row(0, named=True)
    assert list(sh["short_item"]) == h[-10:] and sh["short_len"] == 10
    assert list(sh["long_item"]) == h[-40:-10] and sh["long_len"] == 30  # the 30 before the short part
    assert list(sh["side_short_user"]) == s[-4:] and sh["side_short_len"] == 4
    assert list(sh["side_long_user"]) == s[-12:-4] and sh["side_long_len"] == 8

    mm = pl.read_parquet(ds.layout_dir("mimn") / "train.parquet")
    r = mm.row(0, named=True)
    assert list(r["hist_item"]) == h[-30:] and list(r["side_user"]) == s[-8:]
    hist = np.stack(mm["hist_item"].to_numpy())
    neg = np.stack(mm["neg_item"].to_numpy())
    mask = hist > 0
    assert (neg[mask] > 0).all() and (neg[~mask] == 0).all() and (neg <= ds.manifest.items).all()
    assert not any(np.isin(neg[i], hist[i][mask[i]]).any() for i in range(len(neg)))
    assert not np.stack(mm["neg_cate"].to_numpy()).any()
    for name in ("hpmn", "shan", "mimn"):
        for split in ("train", "valid", "test"):
            assert reports[name].rows[split] == base(out, split).height
    # layout widths longer than the history: shan with the XLong preset keeps everything in long+short
    rep = build(ds, ["shan"])["shan"]
    assert rep.widths == {"long": 768, "short": 233, "side_long": 160, "side_short": 24}
    r = pl.read_parquet(ds.layout_dir("shan") / "train.parquet").row(0, named=True)
    assert r["long_len"] == 0 and r["short_len"] == HIST and list(r["short_item"][:HIST]) == h  # < short: all short


# --------------------------------------------------------------------------- bad input

GOOD = "0\t5\t1,2,3\t7\t8\t4,5\t6"


def write_corpus(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


BAD = {  # line text -> (field, reason fragment)
    "": ("line", "empty line"),
    "garbage here": ("line", "expected 7"),
    "0\t5\t1,2,3\t7\t8\t4,5": ("line", "got 6"),
    "0\t5\t1,2,3\t7\t8\t4,5\t6\t9": ("line", "got 8"),
    "x\t5\t1,2,3\t7\t8\t4,5\t6": ("index", "not an integer"),
    "0\tu5\t1,2,3\t7\t8\t4,5\t6": ("uid", "not an integer"),
    "0\t5\t\t7\t8\t4,5\t6": ("history", "empty"),
    "0\t5\t1,zz,3\t7\t8\t4,5\t6": ("history", "element 2 ('zz')"),
    "0\t5\t1,2,-3\t7\t8\t4,5\t6": ("history", "element 3"),
    "0\t5\t1,2,3\t-7\t8\t4,5\t6": ("pos_item", "not an integer"),
    "0\t5\t1,2,3\t7\t8.5\t4,5\t6": ("neg_item", "not an integer"),
    "0\t5\t1,2,3\t7\t8\t4,,5\t6": ("pos_side", "element 2"),
    "0\t5\t1,2,3\t7\t8\t4,5\t99999999999": ("neg_side", "element 1"),
    "0\t5\t1,2,3\t2147483647\t8\t4,5\t6": ("pos_item", "not an integer in 0..2147483646"),
    "0\t5\t1 2,3\t7\t8\t4,5\t6": ("history", "element 1 ('1 2')"),
}


def test_malformed_lines_are_quarantined(tmp_path):
    lines = []
    expect = {}
    rng = np.random.default_rng(0)
    for k in range(30):
        lines.append(GOOD.replace("0\t5", f"{k}\t{k}", 1))
    lines[5] = "5 \t 5\t 1, 2 ,3 \t7 \t8\t4 , 5\t\r"  # spaces around fields and commas are fine; empty side list
    bad_lines = list(BAD)
    at = sorted(rng.choice(np.arange(1, 45), size=len(bad_lines), replace=False))
    for pos, text in zip(at, bad_lines):
        lines.insert(int(pos), text)
    for i, text in enumerate(lines):
        if text in BAD:
            expect[i + 1] = BAD[text]
    # a few random bytes of fuzz as well
    fuzz = ["\t".join(["1"] * 7), "\x00\x01\x02", "0\t1\t2\t3\t4\t5\t6\t"]
    lines += fuzz
    expect[len(lines) - 1] = ("line", "expected 7")  # 1-based: the last two lines
    expect[len(lines)] = ("line", "got 8")
    train = write_corpus(tmp_path / "train_corpus_total_dual.txt", lines)
    test = write_corpus(tmp_path / "test_corpus_total_dual.txt", [GOOD, "1\t2"])
    emb = tmp_path / "graph_emb.txt"
    emb.write_text("0.5 1\n\n1 2\nnope 3\n3 4 5\n7 8\n")  # rows 0..4 (blank line takes no row)
    m = ingest("xlong", [str(train), str(test), str(emb)], tmp_path / "o", IngestOptions(xlong_valid_fraction=0.0))
    q = pl.read_parquet(tmp_path / "o" / "quarantine.parquet")
    qt = q.filter(pl.col("file") == str(train))
    got = {r["line"]: (r["field"], r["reason"]) for r in qt.to_dicts()}
    assert set(got) == set(expect)
    for line, (field, frag) in expect.items():
        assert got[line][0] == field, (line, got[line])
        assert frag in got[line][1], (line, got[line])
    src = {Path(s.path).name: s for s in m.sources}
    tr = src["train_corpus_total_dual.txt"]
    assert tr.rows_read == len(lines) == tr.rows_kept + tr.rows_rejected
    assert tr.rows_kept == 31 and tr.rows_rejected == len(expect)  # 30 good + the all-'1' fuzz line
    te = src["test_corpus_total_dual.txt"]
    assert (te.rows_read, te.rows_kept, te.rows_rejected) == (2, 1, 1)
    ge = src["graph_emb.txt"]
    assert (ge.rows_read, ge.rows_kept, ge.rows_rejected, ge.rows_dropped) == (6, 3, 2, 1)
    assert set(q.filter(pl.col("file") == str(emb))["field"]) == {"row", "value"}
    assert m.quarantined == q.height == len(expect) + 1 + 2
    init = np.load(tmp_path / "o" / "item_init.npy")
    assert init.shape == (m.items + 1, 2) and m.items == 9  # largest item id: raw 8 + 1
    np.testing.assert_array_equal(init[:6], [[0, 0], [0.5, 1], [1, 2], [0, 0], [0, 0], [7, 8]])
    b = base(tmp_path / "o", "train")
    assert b.height == 2 * 31
    r = b.filter(pl.col("user") == 6).rows(named=True)
    assert [x["hist_item"] for x in r] == [[2, 3, 4]] * 2 and [x["side_user"] for x in r] == [[5, 6], []]


def test_strict_raises_with_location(tmp_path):
    train = write_corpus(tmp_path / "train_corpus_total_dual.txt", [GOOD, GOOD, "0\t5\t1,zz,3\t7\t8\t4,5\t6"])
    with pytest.raises(InputError, match=r"train_corpus_total_dual\.txt:3:history"):
        ingest("xlong", [str(train)], tmp_path / "o", IngestOptions(strict=True))
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert not list((tmp_path / "o").glob(".ingest.tmp-*"))


def test_wrong_format_and_names(tmp_path, raw):
    tb = tmp_path / "UserBehavior.csv"
    tb.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,pv,1511561733\n")
    with pytest.raises(InputError, match="does not look like an XLong file"):
        ingest("xlong", [str(tb)], tmp_path / "o")
    with pytest.raises(InputError, match="no XLong corpus"):
        ingest("xlong", [str(raw[2])], tmp_path / "o")
    plain = tmp_path / "corpus.txt"
    shutil.copy(raw[1], plain)
    with pytest.raises(InputError, match="train or test"):
        ingest("xlong", [str(plain)], tmp_path / "o")
    with pytest.raises(InputError, match="unknown XLong kind"):
        ingest("xlong", [str(plain)], tmp_path / "o", IngestOptions(kinds={str(plain): "behavior"}))
    m = ingest("xlong", [str(plain)], tmp_path / "o", IngestOptions(kinds={str(plain): "xlong_test"}))
    assert m.sources[0].kind == "xlong_test" and m.synthetic is False  # no sidecar next to the copy
    assert base(tmp_path / "o", "test").height == 2 * len(raw_lines(raw[1]))
    assert not (tmp_path / "o" / "item_init.npy").exists()  # no graph_emb given


def test_gzip_input(tmp_path, raw, out, opts):
    gz = tmp_path / "train_corpus_total_dual.txt.gz"
    gz.write_bytes(gzip.compress(raw[0].read_bytes()))
    o = tmp_path / "o"
    ingest("xlong", [str(gz), str(raw[1]), str(raw[2])], o, opts)
    for s in ("train", "valid", "test"):
        assert base(o, s).equals(base(out, s))


def test_reingest_replaces_outputs(tmp_path, raw, opts):
    o = tmp_path / "o"
    ingest("xlong", [str(p) for p in raw], o, opts)
    build(open_dataset(o), ["hpmn"], overrides={"hpmn": {"hist": 8, "side": 4}})
    ingest("xlong", [str(raw[0])], o, opts)  # no graph_emb this time
    assert not (o / "item_init.npy").exists()
    assert not (o / "layouts" / "hpmn").exists()  # layouts of the old data are gone
    assert (o / "layouts" / "plain" / "report.json").exists()
    assert base(o, "test").height == 0
