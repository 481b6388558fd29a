"""The long-range synthetic generator: it goes through the normal pipeline, is reproducible, plants its
signal only beyond the last 50 events, and its Bayes-optimal scores separate full-history from short-window
information."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from lsdata import ingest as ingest_mod
from lsdata import layouts, samples
from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.defaults import TAOBAO_WINDOW, SplitOptions
from lsdata.metrics import auc
from lsdata.synth import longdep

runner = CliRunner()


def read_raw(path) -> pl.DataFrame:
    return pl.read_csv(path, has_header=False, new_columns=["user", "item", "cate", "behavior", "ts"])


def build(tmp_path, users: int, seed: int = 0, **params):
    src = longdep.generate(tmp_path / "UserBehavior.csv", users=users, seed=seed, **params)
    d = tmp_path / "ds"
    ingest_mod.ingest("taobao", [str(src)], d)
    ds = open_dataset(d)
    samples.build(ds, SplitOptions())
    layouts.build(ds, ["hpmn", "plain"])
    return src, d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("longdep"), users=3000, seed=3)


def layout_arrays(d, name: str) -> dict[str, np.ndarray]:
    df = pl.concat([pl.read_parquet(d / "layouts" / name / f"{s}.parquet") for s in ("train", "valid", "test")])
    width = df.schema["hist_cate"].size
    out = {c: df[c].to_numpy() for c in ("hist_len", "item", "cate", "label", "user")}
    out.update({c: df[c].to_numpy().reshape(df.height, width) for c in ("hist_item", "hist_cate")})
    return out


def scores(model, a, window=None, padding="front"):
    return longdep.bayes_scores(a["hist_item"], a["hist_cate"], a["hist_len"], a["item"], a["cate"], model,
                                window=window, padding=padding)


def test_generated_file_runs_through_ingest_split_layout_cli_with_nothing_quarantined(tmp_path):
    src = longdep.generate(tmp_path / "UserBehavior.csv", users=400, seed=1)
    d = tmp_path / "d"
    for args in (["ingest", "taobao", src, "--out", d], ["split", d], ["layout", d, "hpmn"]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
    m = json.loads((d / "manifest.json").read_text())
    rows = json.loads((tmp_path / "UserBehavior.csv.synthetic.json").read_text())["params"]["rows"]
    assert m["quarantined"] == 0 and m["synthetic"] and m["events"] == rows and m["users"] == 400
    assert sum(s["rows_dropped"] for s in m["sources"]) == 0
    rep = json.loads((d / "split" / "report.json").read_text())
    assert all(rep["sets"][s]["samples"] > 0 for s in ("train", "valid", "test"))
    assert (d / "layouts" / "hpmn" / "test.parquet").exists()


def test_raw_rows_are_grouped_by_user_with_strictly_increasing_times_inside_the_window(tmp_path):
    df = read_raw(longdep.generate(tmp_path / "f.csv", users=300, seed=2, block_users=70))
    u, t = df["user"].to_numpy(), df["ts"].to_numpy()
    assert np.all(np.diff(u) >= 0) and np.unique(u).size == 300
    same = u[1:] == u[:-1]
    assert np.all(np.diff(t)[same] > 0)
    assert t.min() >= TAOBAO_WINDOW[0] and t.max() < TAOBAO_WINDOW[1]
    assert set(df["behavior"].unique()) <= {"pv", "buy", "cart", "fav"}
    # each item has exactly one category
    assert df.group_by("item").agg(pl.col("cate").n_unique())["cate"].max() == 1


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    a = longdep.generate(tmp_path / "a.csv", users=500, seed=4, block_users=128)
    b = longdep.generate(tmp_path / "b.csv", users=500, seed=4, block_users=128)
    c = longdep.generate(tmp_path / "c.csv", users=500, seed=5, block_users=128)
    assert digest(a) == digest(b) != digest(c)


def test_last_50_history_events_never_hold_an_interest_event_but_the_last_300_always_do(tmp_path):
    src = longdep.generate(tmp_path / "f.csv", users=1000, seed=6)
    params = longdep.read_params(src)
    cat = longdep.catalogue(longdep.resolve(params), params["seed"])
    interest_raw = cat.cate_raw[: params["interest_categories"]]
    df = read_raw(src).with_columns(pl.col("cate").is_in(interest_raw.tolist()).alias("interest"))
    # position counted back from the target: 0 = target, 1 = most recent history event, ...
    df = df.with_columns((pl.len().over("user") - 1 - pl.int_range(pl.len()).over("user")).alias("back"))
    latest = df.filter(pl.col("interest") & (pl.col("back") > 0)).group_by("user").agg(pl.col("back").min())
    assert latest.height == 1000  # every user shows its interest somewhere
    assert latest["back"].min() > 50 and latest["back"].max() <= 300
    assert latest["back"].min() >= params["gap_min"] and latest["back"].max() <= params["gap_max"]
    # the target is in the latest interest category with rate ~ rho
    cur = df.filter(pl.col("interest") & (pl.col("back") > 0)).sort("back").group_by("user").agg(pl.col("cate").first().alias("k"))
    tgt = df.filter(pl.col("back") == 0).join(cur, on="user")
    assert abs((tgt["cate"] == tgt["k"]).mean() - params["rho"]) < 0.06


def test_bayes_auc_full_history_is_far_above_window_50_on_the_hpmn_layout(built):
    _, d = built
    model = longdep.model_for_dataset(d)
    a = layout_arrays(d, "hpmn")
    full = auc(a["label"], scores(model, a))
    w300 = auc(a["label"], scores(model, a, window=300))
    w50 = auc(a["label"], longdep.bayes_scores_window(a["hist_item"], a["hist_cate"], a["hist_len"], a["item"], a["cate"], model, 50))
    # expected (exact model): full = w300 ~ 0.937, w50 ~ 0.584
    assert full > 0.9 and w50 < 0.65 and full - w50 > 0.25
    assert w300 == full


def test_layout_scores_equal_scores_on_the_stored_full_histories(built):
    _, d = built
    model = longdep.model_for_dataset(d)
    a = layout_arrays(d, "hpmn")
    for w in (None, 50):
        ref = longdep.dataset_scores(d, model, window=w)
        got = pl.DataFrame({"user": a["user"], "s": scores(model, a, window=w)}).join(ref, on="user")
        assert got.height == a["user"].size
        np.testing.assert_allclose(got["s"].to_numpy(), got["score"].to_numpy())
    aucs = longdep.bayes_aucs(d, split=None, windows=(None, 300, 50))
    assert aucs["full"] == aucs["w300"] > aucs["w50"]


def test_post_padded_plain_layout_gives_the_same_scores_as_front_padded_hpmn(built):
    _, d = built
    model = longdep.model_for_dataset(d)
    h, p = layout_arrays(d, "hpmn"), layout_arrays(d, "plain")
    hs = pl.DataFrame({"user": h["user"], "a": scores(model, h)})
    ps = pl.DataFrame({"user": p["user"], "b": scores(model, p, padding="post")})
    for w in (None, 120):
        hs = hs.with_columns(pl.Series(f"a{w}", scores(model, h, window=w)))
        ps = ps.with_columns(pl.Series(f"b{w}", scores(model, p, window=w, padding="post")))
    j = hs.join(ps, on="user")
    assert j.height == h["user"].size
    for w in ("", "None", "120"):
        np.testing.assert_array_equal(j[f"a{w}"].to_numpy(), j[f"b{w}"].to_numpy())


def test_bayes_posterior_is_calibrated_and_zero_for_interest_items_outside_the_current_interest(built):
    _, d = built
    df = longdep.dataset_scores(d)
    s, y = df["score"].to_numpy(), df["label"].to_numpy()
    assert (s == 0).sum() > 500 and y[s == 0].sum() == 0
    for lo, hi in ((0.2, 0.5), (0.5, 0.8), (0.8, 1.01)):
        k = (s >= lo) & (s < hi)
        mean = s[k].mean()  # label rate within 4 standard errors of the mean predicted probability
        assert k.sum() > 100 and abs(mean - y[k].mean()) < 4 * np.sqrt(mean * (1 - mean) / k.sum())


def test_window_rule_on_hand_made_rows_uses_only_the_latest_visible_interest_event():
    # dense categories: 1, 2 interest; 3 noise. items: 1..4 in cate 1, 5..8 in cate 2, 9..10 noise
    model = longdep.Model(
        rho=0.6, n_interest=2, items_per_interest=4, interest=np.array([False, True, True, False]),
        p_noise=np.r_[np.zeros(9), 0.75, 0.25], n_items=10,
    )
    # front padded width 6: [pad, 1(int), 3, 2(int), 3, 3] -> latest interest cate 2 at 3rd most recent
    hc = np.array([[0, 1, 3, 2, 3, 3]] * 3)
    hi = np.where(hc > 0, 9, 0)
    cand_item, cand_cate = np.array([5, 1, 9]), np.array([2, 1, 3])
    full = longdep.bayes_scores(hi, hc, np.full(3, 5), cand_item, cand_cate, model)
    pt = np.array([0.6 / 4, 0.0, 0.4 * 0.75])
    np.testing.assert_allclose(full, longdep.posterior(pt, model))
    short = longdep.bayes_scores(hi, hc, np.full(3, 5), cand_item, cand_cate, model, window=2)
    pt = np.array([0.6 / 8, 0.6 / 8, 0.4 * 0.75])
    np.testing.assert_allclose(short, longdep.posterior(pt, model))
    # posterior formula: q = 1/2, N = 10
    np.testing.assert_allclose(longdep.posterior(np.array([0.1]), model), 0.1 / (0.1 + 0.9 / 9))


def test_layout_narrower_than_the_gap_loses_the_signal_that_the_stored_history_keeps(tmp_path):
    _, d = build(tmp_path, users=800, seed=7, gap_min=320, gap_max=400, lead_max=200)
    model = longdep.model_for_dataset(d)
    a = layout_arrays(d, "hpmn")  # width 300 < gap: the layout never shows the interest
    lay = auc(a["label"], scores(model, a))
    aucs = longdep.bayes_aucs(d, split=None, windows=(None, 300))
    assert aucs["full"] > 0.85 and abs(lay - aucs["w300"]) < 1e-12 and aucs["w300"] < 0.7


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        longdep.generate(tmp_path / "x.csv", users=10, gapmin=3)
    with pytest.raises(ValueError):
        longdep.generate(tmp_path / "x.csv", users=10, burst_max=500)
    assert not (tmp_path / "x.csv").exists()
