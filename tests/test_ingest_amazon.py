"""Amazon ingest: real slices (2014 reviews + Python-literal meta, 2014 5-core, 2018 5-core), ratings CSV,
malformed input (quarantine, --strict), wrong formats, safe meta parsing, and the synthetic generator."""

from __future__ import annotations

import bz2
import gzip
import json
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsdata.defaults import UNKNOWN_CATEGORY, Behavior, IngestOptions
from lsdata.ingest import ingest
from lsdata.io import InputError
from lsdata.synth import amazon as synth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "realdata"
BOOKS = SHARED / "amazon2014_kmucs-bigdata"
MUSIC = SHARED / "amazon2014_recohut" / "Musical_Instruments.json.gz"
FASHION = SHARED / "amazon2018_NathanJackyLee" / "AMAZON_FASHION_5.json.gz"
TAOBAO = SHARED / "taobao_fattydelivery" / "UserBehavior.csv"


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real-data slice not available: {', '.join(missing)} (expected under {SHARED})")


def run(paths, out: Path, **opts):
    return ingest("amazon", [str(p) for p in paths], out, IngestOptions(**opts))


def events(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "events" / "*.parquet")


def item_categories(out: Path) -> dict[str, str]:
    """raw asin -> raw category name, from vocab/item.parquet and vocab/cate.parquet."""
    items = pl.read_parquet(out / "vocab" / "item.parquet")
    cates = pl.read_parquet(out / "vocab" / "cate.parquet").select(cate="id", name="raw")
    return dict(items.join(cates, on="cate", how="left").select("raw", "name").iter_rows())


def quarantine(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "quarantine.parquet")


def utc(s: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp())


def review(user: str, asin: str, ts: int, overall: float | None = 5.0) -> str:
    rec = {"reviewerID": user, "asin": asin, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
           "overall": overall, "summary": "s", "unixReviewTime": ts, "reviewTime": "01 1, 2014"}
    return json.dumps(rec)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.parametrize("meta_first", [False, True])
def test_books_reviews_with_python_literal_meta(tmp_path, meta_first):
    reviews, meta = BOOKS / "reviews_sample.txt", BOOKS / "meta-1000.json"
    need(reviews, meta)
    paths = [meta, reviews] if meta_first else [reviews, meta]
    m = run(paths, tmp_path)
    assert (m.events, m.users, m.items) == (1000, 996, 12)
    assert m.quarantined == 0
    kinds = {Path(s.path).name: s for s in m.sources}
    assert kinds["reviews_sample.txt"].kind == "reviews" and kinds["meta-1000.json"].kind == "meta"
    assert kinds["meta-1000.json"].rows_read == kinds["meta-1000.json"].rows_kept == 1000
    assert kinds["reviews_sample.txt"].notes == {}  # every review asin is in the meta slice
    cats = item_categories(tmp_path)
    assert UNKNOWN_CATEGORY not in cats.values()
    ev = events(tmp_path)
    assert ev["behavior"].unique().to_list() == [int(Behavior.review)]
    assert ev["src_file"].unique().to_list() == [1 if meta_first else 0]
    assert (m.ts_min, m.ts_max) == (utc("1998-12-13"), utc("2014-07-10"))


@pytest.mark.parametrize("category_path", ["last", "first"])
def test_books_category_leaf(tmp_path, category_path):
    """meta-1000.json has one path per record (asin 000100039X: [['Books']]): both rules give 'Books'."""
    reviews, meta = BOOKS / "reviews_sample.txt", BOOKS / "meta-1000.json"
    need(reviews, meta)
    line = next(ln for ln in meta.read_text().splitlines() if "'asin': '000100039X'" in ln)
    assert "'categories': [['Books']]" in line
    run([reviews, meta], tmp_path, category_path=category_path)
    assert item_categories(tmp_path)["000100039X"] == "Books"


def test_musical_instruments_2014_without_meta(tmp_path):
    need(MUSIC)
    m = run([MUSIC], tmp_path)
    assert (m.events, m.users, m.items, m.cates) == (10_261, 1_429, 900, 1)
    assert (m.ts_min, m.ts_max) == (utc("2004-09-18"), utc("2014-07-22"))
    (src,) = m.sources
    assert src.rows_read == src.rows_kept == 10_261
    assert src.notes == {"reviews with unknown category (no meta)": 10_261}
    assert set(item_categories(tmp_path).values()) == {UNKNOWN_CATEGORY}
    ev = events(tmp_path)
    assert ev["rating"].null_count() == 0 and ev["rating"].is_between(1, 5).all()


def test_fashion_2018(tmp_path):
    need(FASHION)
    m = run([FASHION], tmp_path)
    assert (m.events, m.users, m.items) == (3_176, 406, 31)
    assert (m.ts_min, m.ts_max) == (utc("2009-12-25"), utc("2018-07-05"))
    assert m.quarantined == 0


def test_compressed_variants_give_the_same_events(tmp_path):
    need(BOOKS / "reviews_sample.txt")
    data = (BOOKS / "reviews_sample.txt").read_bytes()
    (tmp_path / "r.bz2").write_bytes(bz2.compress(data))
    with zipfile.ZipFile(tmp_path / "r.zip", "w") as z:
        z.writestr("reviews.json", data)
    (tmp_path / "r.txt").write_bytes(data)
    frames = []
    for name in ("r.txt", "r.bz2", "r.zip"):
        out = tmp_path / f"out_{name}"
        run([tmp_path / name], out, chunk_bytes=64 << 10)
        frames.append(events(out).sort("src_row"))
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])


# ------------------------------------------------------------------------------------------ meta rules


def test_category_path_last_vs_first_and_2018_flat_category(tmp_path):
    meta14 = tmp_path / "meta14.json"
    meta14.write_text(
        "{'asin': 'A1', 'categories': [['Electronics', 'Cables'], ['Electronics', 'Computers', 'Keyboards']]}\n"
        "{'asin': 'A2', 'title': \"Children's\", 'categories': []}\n"
        "{'asin': 'A1', 'categories': [['Ignored']]}\n"
    )
    meta18 = tmp_path / "meta18.json"
    meta18.write_text(json.dumps({"asin": "B1", "category": ["Clothing", "Women", "Shoes"], "title": "t"}) + "\n")
    rev = tmp_path / "reviews.json"
    asins = ["A1", "A2", "B1", "C9"]
    rev.write_text("\n".join(review(f"U{i}", a, 1_400_000_000 + i) for i, a in enumerate(asins)) + "\n")
    want = {"last": "Keyboards", "first": "Cables"}
    for rule, leaf in want.items():
        out = tmp_path / rule
        m = run([rev, meta14, meta18], out, category_path=rule)
        cats = item_categories(out)
        assert cats == {"A1": leaf, "A2": UNKNOWN_CATEGORY, "B1": "Shoes", "C9": UNKNOWN_CATEGORY}
        by = {Path(s.path).name: s for s in m.sources}
        assert by["meta14.json"].dropped == {"duplicate asin (first record kept)": 1}
        assert by["meta14.json"].rows_kept == 2
        assert by["reviews.json"].notes == {
            "reviews with unknown category (no meta)": 1,
            "reviews with unknown category (meta without category)": 1,
        }


def test_meta_is_parsed_with_ast_not_eval(tmp_path):
    marker = tmp_path / "pwned"
    meta = tmp_path / "meta.json"
    meta.write_text(
        "{'asin': 'A1', 'categories': [['Books']]}\n"
        f"{{'asin': __import__('pathlib').Path({str(marker)!r}).touch(), 'categories': [['X']]}}\n"
        "{'asin': 'A2', 'categories': [['Books']]}\n"
        "{'asin': __import__('os').system('true')}\n"
        "{'asin': 'A3', 'categories': [['Books']]}\n"
    )
    rev = tmp_path / "reviews.json"
    rev.write_text(review("U1", "A1", 1_400_000_000) + "\n")
    m = run([rev, meta], tmp_path / "out")
    assert not marker.exists()
    q = quarantine(tmp_path / "out")
    assert q["line"].to_list() == [2, 4]
    assert set(q["field"]) == {"line"}
    assert m.quarantined == 2


# ------------------------------------------------------------------------------------------ ratings CSV


@pytest.mark.parametrize("header", [False, True])
def test_ratings_csv(tmp_path, header):
    rows = ["AU1,I1,4.0,1400000000", "AU1,I2,5,1400086400", "AU2,I1,1.0,1300000000"]
    text = ("user,item,rating,timestamp\n" if header else "") + "\n".join(rows) + "\n"
    p = tmp_path / "ratings.csv"
    p.write_text(text)
    m = run([p], tmp_path / "out")
    (src,) = m.sources
    assert src.kind == "ratings"
    assert (m.events, m.users, m.items, m.quarantined) == (3, 2, 2, 0)
    assert src.rows_read == 3 + header and src.dropped == ({"header line": 1} if header else {})
    ev = events(tmp_path / "out").sort("ts")
    assert ev["rating"].to_list() == [1.0, 4.0, 5.0]
    assert ev["behavior"].unique().to_list() == [int(Behavior.rating)]
    assert ev["src_row"].to_list() == [3 + header, 1 + header, 2 + header]
    assert src.notes == {"ratings with unknown category (no meta)": 3}


def test_ratings_csv_bad_rows(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text("AU1,I1,4.0,1400000000\nAU1,I2,five,1400086400\nAU2,I1,1.0\n\nAU3,I3,2.0,1400000000\n")
    m = run([p], tmp_path / "out")
    assert m.events == 2
    q = quarantine(tmp_path / "out").sort("line")
    assert q.select("line", "field").rows() == [(2, "rating"), (3, "line"), (4, "line")]


# ------------------------------------------------------------------------------------------ malformed input


GOOD = [review(f"U{i % 7}", f"I{i % 5}", 1_300_000_000 + 86_400 * i, float(1 + i % 5)) for i in range(40)]
NO_NEWLINE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
garbage = st.one_of(
    st.text(NO_NEWLINE, max_size=60).map(lambda t: t.encode("utf-8")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),  # often invalid UTF-8
    st.sampled_from(
        [
            b"{}",
            b"[1, 2]",
            b'{"reviewerID": "U1", "asin": "I1"}',
            b'{"reviewerID": 5, "asin": "I1", "unixReviewTime": 1}',
            b'{"reviewerID": "U1", "asin": "I1", "unixReviewTime": "1300000000"}',
            b'{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1300000000, "overall": "5"}',
            b'{"reviewerID": "U1", "asin": "", "unixReviewTime": 1300000000}',
            b'{"reviewerID": "U1\xff", "asin": "I1", "unixReviewTime": 1300000000}',
            b'{"reviewerID": "U1", "asin": "I1", "unixReviewTime": -1}',
            b'{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1300000000} trailing',
        ]
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bad=st.lists(st.tuples(st.integers(0, len(GOOD)), garbage), min_size=1, max_size=8),
    chunk=st.sampled_from([1024, 1 << 20]),
)
def test_fuzz_garbage_lines_are_quarantined(bad, chunk):
    lines = [(g.encode(), False) for g in GOOD]
    for pos, text in sorted(bad, key=lambda x: -x[0]):
        lines.insert(pos, (text, True))
    bad_lines = {i + 1 for i, (_, is_bad) in enumerate(lines) if is_bad}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "reviews.json"
        p.write_bytes(b"\n".join(t for t, _ in lines) + b"\n")
        out = Path(d) / "out"
        m = run([p], out, chunk_bytes=chunk, kinds={str(p): "reviews"})
        (src,) = m.sources
        assert src.rows_read == len(lines) == src.rows_kept + src.rows_rejected
        assert src.rows_kept == m.events == len(GOOD)
        q = quarantine(out)
        assert sorted(q["line"].to_list()) == sorted(bad_lines)
        assert q["field"].null_count() == 0 and q["reason"].null_count() == 0
        kept = events(out)["src_row"].to_list()
        assert sorted(kept) == [i + 1 for i, (_, is_bad) in enumerate(lines) if not is_bad]
        with pytest.raises(InputError, match=rf"{p}:{min(bad_lines)}:"):
            run([p], Path(d) / "strict", chunk_bytes=chunk, kinds={str(p): "reviews"}, strict=True)


def test_reject_names_the_field_and_strict_raises(tmp_path):
    lines = [
        review("U1", "I1", 1_300_000_000),
        '{"reviewerID": "U2", "asin": "I2", "overall": 4.0}',
        '{"reviewerID": "U3", "asin": ["I3"], "unixReviewTime": 1300000000}',
        '{"reviewerID": "U4", "asin": "I4", "unixReviewTime": 1300000000, "overall": "great"}',
        "not json at all",
        review("U5", "I5", 1_300_000_000, None),
    ]
    p = tmp_path / "reviews.json"
    p.write_text("\n".join(lines) + "\n")
    m = run([p], tmp_path / "out")
    assert m.events == 2
    q = quarantine(tmp_path / "out").sort("line")
    assert q.select("line", "field").rows() == [(2, "unixReviewTime"), (3, "asin"), (4, "overall"), (5, "line")]
    assert events(tmp_path / "out").sort("src_row")["rating"].to_list() == [5.0, None]
    with pytest.raises(InputError, match=rf"{p}:2:unixReviewTime"):
        run([p], tmp_path / "strict", strict=True)


def test_fast_and_line_by_line_paths_agree(tmp_path):
    """The same clean lines give the same events whether their batch took the fast or the exact path."""
    clean = tmp_path / "clean.json"
    clean.write_text("\n".join(GOOD) + "\n")
    dirty = tmp_path / "dirty.json"
    dirty.write_text("\n".join(GOOD) + "\n#bad\n")
    run([clean], tmp_path / "a")
    run([dirty], tmp_path / "b")
    assert events(tmp_path / "a").equals(events(tmp_path / "b"))


def test_crlf_and_gzip_with_trailing_line_without_newline(tmp_path):
    p = tmp_path / "r.json.gz"
    p.write_bytes(gzip.compress(("\r\n".join(GOOD[:5])).encode()))
    m = run([p], tmp_path / "out")
    assert m.events == 5 and m.quarantined == 0


# ------------------------------------------------------------------------------------------ wrong input


def test_taobao_csv_given_to_amazon(tmp_path):
    need(TAOBAO)
    with pytest.raises(InputError, match=r"does not look like an Amazon file.*first line is '1,2268318"):
        run([TAOBAO], tmp_path)


def test_only_meta_files(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'A1', 'categories': [['Books']]}\n")
    with pytest.raises(InputError, match="only meta files"):
        run([meta], tmp_path / "out")


def test_kind_override(tmp_path):
    p = tmp_path / "odd.txt"  # first lines unrecognisable, rest fine: --kind forces it
    p.write_text("junk\n" * 4 + "\n".join(GOOD[:3]) + "\n")
    with pytest.raises(InputError):
        run([p], tmp_path / "a")
    m = run([p], tmp_path / "b", kinds={str(p): "reviews"})
    assert m.events == 3 and m.quarantined == 4
    with pytest.raises(InputError, match="unknown kind"):
        run([p], tmp_path / "c", kinds={str(p): "behavior"})


# ------------------------------------------------------------------------------------------ generator


def test_synthetic_generator_is_deterministic_and_ingests(tmp_path):
    a = synth.generate(tmp_path / "a", n_users=50, n_items=30, seed=7)
    b = synth.generate(tmp_path / "b", n_users=50, n_items=30, seed=7)
    c = synth.generate(tmp_path / "c", n_users=50, n_items=30, seed=8)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    for p in a:
        side = json.loads(Path(str(p) + ".synthetic.json").read_text())
        assert side["synthetic"] is True and side["generator"] == "lsdata.synth.amazon"
        assert side["params"]["seed"] == 7
    with pytest.raises(json.JSONDecodeError):
        json.loads(a[1].read_text().splitlines()[0])  # meta is Python-literal, like 2014
    m = run(a, tmp_path / "out")
    assert m.synthetic and m.users == 50 and m.quarantined == 0
    assert m.sources[0].kind == "reviews" and m.sources[1].kind == "meta"
    ev = events(tmp_path / "out")
    assert (ev["ts"] % 86_400 == 0).all()
    assert ev.group_by("user").len()["len"].min() >= 5
    last = item_categories(tmp_path / "out")
    run(a, tmp_path / "out_first", category_path="first")
    assert last != item_categories(tmp_path / "out_first")


def test_python_literal_review_lines_are_read_with_ast(tmp_path):
    """Loose (Python-literal) review lines are not in the public files, but are read safely if met."""
    p = tmp_path / "reviews_loose.json"
    recs = [{"reviewerID": f"U{i}", "asin": "I1", "overall": 4.0, "unixReviewTime": 1_300_000 + i} for i in range(3)]
    p.write_text("".join(repr(r) + "\n" for r in recs))
    m = run([p], tmp_path / "out")
    assert m.sources[0].kind == "reviews" and (m.events, m.quarantined) == (3, 0)
