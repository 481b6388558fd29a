"""The contextual generator (next-item long-dependency data): reproducible, ingestible, every response follows
the user's fixed option for its context, and the Bayes rule reads that option only from earlier responses."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsdata import ingest as ingest_mod
from lsdata import samples
from lsdata.dataset import open_dataset
from lsdata.defaults import SplitOptions
from lsdata.synth import contextual, longdep


def read_raw(path) -> pl.DataFrame:
    return pl.read_csv(path, has_header=False, new_columns=["user", "item", "cate", "behavior", "ts"])


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    kw = dict(users=300, block_users=128, len_min=50, len_max=120)
    a = contextual.generate(tmp_path / "a.csv", seed=4, **kw)
    b = contextual.generate(tmp_path / "b.csv", seed=4, **kw)
    c = contextual.generate(tmp_path / "c.csv", seed=5, **kw)
    assert digest(a) == digest(b) != digest(c)


def test_responses_follow_a_context_and_always_show_the_users_one_option_for_it(tmp_path):
    src = contextual.generate(tmp_path / "f.csv", users=400, seed=6, len_min=100, len_max=200)
    p = contextual.read_params(src)
    cat = contextual.catalogue(contextual.resolve(p), p["seed"])
    x_n, r = p["contexts"], p["options"]
    k = x_n * r
    kind_of_raw = dict(zip(cat.cate_raw.tolist(), np.where(np.arange(cat.cate_raw.size) < k, "interest",
                                                           np.where(np.arange(cat.cate_raw.size) < k + x_n, "context", "noise")).tolist()))
    group_of_raw = dict(zip(cat.cate_raw.tolist(), np.r_[np.arange(k) // r, np.arange(x_n), np.full(cat.cate_raw.size - k - x_n, -1)].tolist()))
    df = read_raw(src).with_columns(pl.col("cate").replace_strict(kind_of_raw).alias("kind"),
                                    pl.col("cate").replace_strict(group_of_raw).alias("group"))
    df = df.with_columns(pl.col("kind").shift(1).over("user").alias("prev_kind"),
                         pl.col("group").shift(1).over("user").alias("prev_group"))
    assert df["ts"].diff().filter(df["user"].diff() == 0).min() > 0  # strictly increasing times per user
    assert df.group_by("user").len()["len"].is_between(100, 200).all()
    # interest events occur exactly after a context event, as an option of that context
    inter = df.filter(pl.col("kind") == "interest")
    assert (inter["prev_kind"] == "context").all() and (inter["group"] == inter["prev_group"]).all()
    # a context event never follows a context event; responses show an option with rate rho
    assert df.filter((pl.col("kind") == "context") & (pl.col("prev_kind") == "context")).height == 0
    resp = df.filter(pl.col("prev_kind") == "context")
    assert abs((resp["kind"] == "interest").mean() - p["rho"]) < 0.02
    assert abs((df["kind"] == "context").mean() - p["tau"] / (1 + p["tau"])) < 0.01
    # one option per (user, context): the choice never changes; across users the options are spread
    opts = inter.group_by("user", "group").agg(pl.col("cate").n_unique().alias("n"), pl.col("cate").first())
    assert opts["n"].max() == 1
    assert opts.group_by("group").agg(pl.col("cate").n_unique())["cate"].min() == r


def brute_state(cate, model, start, target, window):
    xs, ks = [], []
    for s0, t in zip(start, target):
        lo = s0 if window is None else max(s0, t - window)
        x = -1
        if t - 1 >= lo and model.kind[cate[t - 1]] == contextual.CONTEXT:
            x = int(model.group[cate[t - 1]])
        k = 0
        if x >= 0:
            for q in range(t - 2, lo - 1, -1):
                if model.kind[cate[q]] == contextual.INTEREST and model.group[cate[q]] == x:
                    k = int(cate[q])
                    break
        xs.append(x)
        ks.append(k)
    return np.array(xs), np.array(ks)


def toy_model(contexts=3, options=2):
    """Dense categories: 1..contexts*options interest (group = (c - 1) // options), then contexts, then 2 noise."""
    k = contexts * options
    n_cates = k + contexts + 2
    kind = np.zeros(n_cates + 1, dtype=np.int8)
    group = np.full(n_cates + 1, -1)
    kind[1:k + 1], group[1:k + 1] = contextual.INTEREST, np.arange(k) // options
    kind[k + 1:k + contexts + 1], group[k + 1:k + contexts + 1] = contextual.CONTEXT, np.arange(contexts)
    kind[k + contexts + 1:] = contextual.NOISE
    return contextual.Model(0.8, 0.5, contexts, 1, options, 1, kind, group, np.zeros(n_cates + 1), n_cates)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([None, 1, 2, 5, 17]))
def test_history_state_is_the_previous_context_and_its_latest_visible_option(seed, window):
    rng = np.random.default_rng(seed)
    model = toy_model()
    lengths = rng.integers(1, 40, size=6)
    off = np.r_[0, np.cumsum(lengths)]
    cate = rng.integers(1, model.kind.size, size=int(off[-1]))
    rows = rng.integers(0, 6, size=25)
    target = off[rows] + (rng.random(25) * lengths[rows]).astype(np.int64)
    x, k = contextual.history_state(cate, model, off[rows], target, window)
    bx, bk = brute_state(cate, model, off[rows], target, window)
    np.testing.assert_array_equal(x, bx)
    np.testing.assert_array_equal(k, bk)


def test_target_probability_is_a_distribution_over_the_catalogue_in_every_state():
    model = toy_model(contexts=3, options=2)
    model.p_noise[-2:] = [0.25, 0.75]
    cates = np.arange(1, model.kind.size)
    items = cates  # one item per category in the toy catalogue
    for x, k in ((-1, 0), (1, 0), (1, 3), (2, 5)):
        p = contextual.target_probability(np.full(cates.size, x), np.full(cates.size, k), items, cates, model)
        assert p.sum() == pytest.approx(1.0)
        if k:
            assert p[k - 1] == pytest.approx(0.8)  # the shown option takes all of rho
        elif x >= 0:  # the option unknown: rho spread over the context's options
            np.testing.assert_allclose(p[x * 2:x * 2 + 2], 0.4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contextual")
    src = contextual.generate(tmp / "UserBehavior.csv", users=1500, seed=3, len_min=150, len_max=400)
    d = tmp / "ds"
    report = ingest_mod.ingest("taobao", [str(src)], d)
    samples.build(open_dataset(d), SplitOptions())
    return src, d, report


def test_generated_file_is_ingested_whole(built):
    src, d, report = built
    assert report.quarantined == 0 and report.sources[0].rows_kept == report.events == contextual.read_params(src)["rows"]


def test_model_for_dataset_maps_kinds_groups_and_noise_popularity(built):
    _, d, _ = built
    model = contextual.model_for_dataset(d)
    counts = np.bincount(model.kind[1:], minlength=4)
    assert counts[contextual.INTEREST] == 160 and counts[contextual.CONTEXT] == 40 and counts[contextual.NOISE] == 100
    assert np.bincount(model.group[model.kind == contextual.INTEREST]).tolist() == [4] * 40
    assert model.p_noise.sum() == pytest.approx(1.0) and model.n_items == 5600


def test_the_rule_holds_on_the_ingested_sequences_and_longer_windows_reveal_more_options(built):
    from lsdata.nextitem import load_sequences

    _, d, _ = built
    model = contextual.model_for_dataset(d)
    seq = load_sequences(open_dataset(d))
    starts = np.repeat(seq.offsets[:-1], np.diff(seq.offsets))
    target = np.arange(seq.cate.size)
    interest = model.kind[seq.cate] == contextual.INTEREST
    shown = {}
    for w in (None, 300, 50, 1):
        x, k = contextual.history_state(seq.cate, model, starts, target, w)
        # every interest event answers the context just before it; a revealed option is always the one shown
        assert (x[interest] == model.group[seq.cate[interest]]).all()
        assert (seq.cate[interest & (k > 0)] == k[interest & (k > 0)]).all()
        shown[w] = (k[x >= 0] > 0).mean()
    assert shown[1] == 0 and shown[50] + 0.2 < shown[300] < shown[None]  # 0.26, 0.545, 0.547 (users of 150-400 events)


def test_parameters_are_checked_and_sidecars_of_another_generator_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown contextual parameters"):
        contextual.generate(tmp_path / "x.csv", users=5, gap_min=3)
    with pytest.raises(ValueError, match="len_min"):
        contextual.generate(tmp_path / "x.csv", users=5, len_min=10, len_max=5)
    src = longdep.generate(tmp_path / "l.csv", users=5, seed=1)
    with pytest.raises(ValueError, match="not written by lsdata.synth.contextual"):
        contextual.read_params(src)


def test_cli_generates_a_file_that_a_next_item_model_trains_on(tmp_path):
    import json

    from typer.testing import CliRunner

    from lsdata.cli import app

    runner = CliRunner()
    src, d, run = tmp_path / "ctx.csv", tmp_path / "d", tmp_path / "run"
    for args in (["generate", "contextual", src, "--users", "40", "--seed", "2"], ["ingest", "taobao", src, "--out", d],
                 ["split", d, "--method", "loo"],
                 ["train", "sasrec", d, "--out", run, "--epochs", "1", "--threads", "1", "--set", "max_len=50",
                  "--loss", "ce", "--batch-size", "16"]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs_run"] == 1 and 0.0 <= m["test"]["full"]["ndcg@10"] <= 1.0
    assert json.loads((d / "manifest.json").read_text())["users"] == 40
