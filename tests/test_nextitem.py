"""Next-item data, samplers, ranking metrics, losses, models and `lsdata train sasrec` (issue #5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lsdata import models
from lsdata.cli import app
from lsdata.dataset import open_dataset
from lsdata.defaults import NextItemOptions, TrainConfig
from lsdata.io import InputError
from lsdata.loader import EpochSampler, collate
from lsdata.models.base import DataSpec
from lsdata.nextitem import (
    NegativeSampler,
    NextItemDataset,
    Sequences,
    WindowDataset,
    build_index,
    build_windows,
    extend_horizon,
    load_sequences,
    split_protocol,
    training_targets,
)
from lsdata.nextitem_train import NextItemRun, next_item_loss
from lsdata.ranking import count_above, ranking_metrics
from lsdata.train import train
from tests.conftest import TAOBAO_SLICE, need

NEXT = ["sasrec", "gru4rec_next", "stamp", "caser_next", "sdm", "dman"]
PER_POSITION = ["sasrec", "gru4rec_next", "dman"]  # models with encode_seq (--targets all)
SMALL = {"dman": {"max_len": 40, "seg_len": 10, "slots": 4, "emb_dim": 16}}  # 4 segments: the memory is updated


# -- samples: no history holds its target or anything at/after it ------------------------------------------------
user_ts = st.lists(st.integers(0, 12), min_size=1, max_size=15).map(sorted)  # small range: many ties


def _sequences(users: list[list[int]]) -> Sequences:
    ts = np.concatenate([np.asarray(u, dtype=np.int64) for u in users])
    off = np.r_[0, np.cumsum([len(u) for u in users])].astype(np.int64)
    item = (np.arange(ts.size) % 7 + 1).astype(np.int32)
    return Sequences(np.arange(1, len(users) + 1, dtype=np.int32), off, item, item % 3 + 1, np.ones(ts.size, np.int8), ts)


@settings(max_examples=60, deadline=None)
@given(users=st.lists(user_ts, min_size=1, max_size=8), method=st.sampled_from(["cut", "loo"]),
       cut=st.integers(0, 12), back=st.integers(0, 6), warmup=st.integers(1, 3), stride=st.integers(1, 3),
       width=st.integers(1, 6))
def test_no_history_contains_its_target_or_anything_at_or_after_it(users, method, cut, back, warmup, stride, width):
    seq = _sequences(users)
    vcut = cut - back
    sets = build_index(seq, method, cut, vcut, warmup, stride)
    for name, idx in sets.items():
        start = seq.offsets[idx.row]
        assert ((idx.target >= start) & (idx.target < seq.offsets[idx.row + 1])).all()
        assert (idx.hist_end <= idx.target).all() and (idx.hist_end - start >= warmup).all()
        for r, t, e in zip(idx.row, idx.target, idx.hist_end):
            assert (seq.ts[seq.offsets[r] : e] < seq.ts[t]).all()  # strictly earlier...
            assert (seq.ts[e : seq.offsets[r + 1]] >= seq.ts[t]).all()  # ...and every strictly earlier event is history
        if len(idx):  # the window the models see: the most recent `width` history events, front-padded
            b = NextItemDataset(seq, idx, width).__getitems__(np.arange(len(idx)))
            n = np.minimum(idx.hist_end - start, width)
            assert (b["hist_len"].numpy() == n).all() and (b["target"].numpy() == seq.item[idx.target]).all()
            pos = np.where(b["hist_item"].numpy() > 0)
            flat = idx.hist_end[pos[0]] - width + pos[1]  # the flat position each real slot was read from
            assert (flat >= start[pos[0]]).all() and (seq.ts[flat] < seq.ts[idx.target[pos[0]]]).all()
        if method == "cut":
            ts = seq.ts[idx.target]
            assert {"train": ts <= vcut, "valid": (ts > vcut) & (ts <= cut), "test": ts > cut}[name].all()
    if method == "loo":
        last = seq.offsets[1:] - 1
        assert set(sets["test"].target) <= set(last) and set(sets["valid"].target) <= set(last - 1)
        assert not set(sets["train"].target) & set(np.r_[last, last - 1])
    # stride: consecutive training targets of a user are `stride` positions apart, the most recent one kept
    tr = sets["train"]
    for r in np.unique(tr.row):
        t = tr.target[tr.row == r]
        assert (np.diff(t) % stride == 0).all()


@settings(max_examples=80, deadline=None)
@given(users=st.lists(user_ts, min_size=1, max_size=8), method=st.sampled_from(["cut", "loo"]),
       cut=st.integers(0, 12), back=st.integers(0, 6), warmup=st.integers(1, 3), width=st.integers(1, 6),
       tied=st.sampled_from(["earlier", "skip"]))
def test_all_position_windows_predict_each_target_from_an_output_that_saw_only_earlier_events(
        users, method, cut, back, warmup, width, tied):
    seq = _sequences(users)
    w = build_windows(seq, method, cut, cut - back, warmup, width, tied)
    train = build_index(seq, method, cut, cut - back, warmup, 1)["train"]
    assert set(np.flatnonzero(w.counted)) <= set(train.target)
    if not len(w):
        return
    b = WindowDataset(seq, w, width).__getitems__(np.arange(len(w)))
    item, tgt, src = b["hist_item"].numpy(), b["pos_target"].numpy(), b["pos_source"].numpy()
    seen, source_of = [], {}
    for i, (r, end) in enumerate(zip(w.row, w.end)):
        start = seq.offsets[r]
        assert start < end < seq.offsets[r + 1] and (tgt[i] > 0).any()  # no window without a counted target
        for j in np.flatnonzero(tgt[i]):
            t = end - width + j + 1  # the flat position of the target after input j
            k = src[i, j]  # the output that predicts it
            assert 0 <= k <= j and item[i, k] > 0
            inputs = np.arange(max(start, end - width), end - width + k + 1)  # what a causal output at k has seen
            assert (seq.ts[inputs] < seq.ts[t]).all() and tgt[i, j] == seq.item[t] and w.counted[t]
            assert (item[i, : k + 1][item[i, : k + 1] > 0] == seq.item[inputs]).all()
            assert seq.ts[inputs[-1] + 1] == seq.ts[t]  # nothing strictly earlier left out after the source
            seen.append(t)
            source_of[t] = inputs[-1]
    assert sorted(seen) == sorted(np.flatnonzero(w.counted))  # each counted target in exactly one window
    ties = seq.ts[train.target] == seq.ts[train.target - 1]
    untied = train.target[~ties]
    if tied == "skip":
        assert sorted(seen) == sorted(untied)  # every training target but the tied ones
    else:
        assert set(untied) <= set(seen) and all(source_of[t] == t - 1 for t in untied)
        lost = train.target[~np.isin(train.target, seen)]
        assert ties[~np.isin(train.target, seen)].all()  # only tied ones...
        last = {int(r): int(t) for r, t in zip(seq.row_of[train.target], train.target)}  # each row's last one
        for t in lost:  # ...whose last strictly earlier event lies before the first input of their window
            end = last[int(seq.row_of[t])] - (last[int(seq.row_of[t])] - t) // width * width
            assert w.source[t] < end - width and seq.ts[w.source[t]] < seq.ts[t] == seq.ts[w.source[t] + 1]


def test_a_target_tied_with_the_events_before_it_reads_the_output_before_the_tie():
    seq = _sequences([[0, 1, 1, 1, 2, 3]])  # events 1..3 share a time: 2 and 3 are tied targets
    w = build_windows(seq, "loo", None, None, 1, 4)  # training targets: flat 1..3 (4 valid, 5 test)
    b = WindowDataset(seq, w, 4).__getitems__(np.arange(len(w)))
    assert np.flatnonzero(w.counted).tolist() == [1, 2, 3] and w.end.tolist() == [3]
    # window inputs: [pad, 0, 1, 2] -> targets after each input: -, 1, 2, 3; sources: 1 <- event 0, 2 <- event 0, 3 <- event 0
    assert b["pos_target"][0].tolist() == [0, int(seq.item[1]), int(seq.item[2]), int(seq.item[3])]
    assert b["pos_source"][0].tolist() == [0, 1, 1, 1]
    skip = build_windows(seq, "loo", None, None, 1, 4, "skip")
    assert np.flatnonzero(skip.counted).tolist() == [1]


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=20), min_size=1, max_size=6),
       method=st.sampled_from(["cut", "loo"]), cut=st.integers(0, 40), width=st.integers(1, 7))
def test_without_ties_every_training_target_is_counted_exactly_once_per_epoch(gaps, method, cut, width):
    seq = _sequences([np.cumsum(g).tolist() for g in gaps])  # strictly increasing times
    w = build_windows(seq, method, cut, cut - 5, 1, width)
    train = build_index(seq, method, cut, cut - 5, 1, 1)["train"]
    assert np.array_equal(np.flatnonzero(w.counted), np.sort(train.target))
    got = []  # one epoch the way the trainer reads it
    if len(w):
        loader = torch.utils.data.DataLoader(WindowDataset(seq, w, width), batch_sampler=EpochSampler(len(w), 3, True, 0),
                                             collate_fn=collate)
        got = [int(v) for batch in loader for v in batch["pos_target"][batch["pos_target"] > 0]]
    assert sorted(got) == sorted(seq.item[train.target].tolist())
    per_user = np.bincount(seq.row_of[train.target], minlength=len(gaps))
    assert len(w) == sum(-(-int(n) // width) for n in per_user)  # non-overlapping chunks: ceil(targets / L) per user


def test_every_eligible_position_is_a_sample_exactly_once():
    seq = _sequences([[0, 1, 2, 3, 4, 5], [0, 0, 5, 9]])
    sets = build_index(seq, "cut", 4, 2, 1, 1)
    assert sorted(np.concatenate([s.target for s in sets.values()])) == [1, 2, 3, 4, 5, 8, 9]
    assert sets["train"].target.tolist() == [1, 2] and sets["valid"].target.tolist() == [3, 4]
    assert sets["test"].target.tolist() == [5, 8, 9]
    assert sets["test"].hist_end.tolist() == [5, 8, 9]  # user 2's events at ts 0 are both history of ts 5
    loo = build_index(seq, "loo", None, None, 2, 2)
    assert loo["test"].target.tolist() == [5, 9] and loo["valid"].target.tolist() == [4, 8]
    assert loo["train"].target.tolist() == [3]  # positions 0..3 of user 1, stride 2 back from 3, >= 2 earlier events


# -- negative samplers --------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n_items=st.integers(2, 40), seed=st.integers(0, 10**6), pop=st.booleans())
def test_a_sampled_negative_is_never_the_positive(n_items, seed, pop):
    rng = np.random.default_rng(seed)
    w = np.r_[0.0, rng.integers(0, 5, n_items).astype(float)] if pop else np.r_[0.0, np.ones(n_items)]
    w[rng.integers(1, n_items + 1)] += 1  # at least one item with mass
    s = NegativeSampler(w)
    pos = torch.as_tensor(rng.integers(1, n_items + 1, 64))
    neg = s.sample(pos, 20, torch.Generator().manual_seed(seed))
    assert neg.shape == (64, 20) and (neg != pos[:, None]).all() and (neg >= 1).all() and (neg <= n_items).all()
    again = s.sample(pos, 20, torch.Generator().manual_seed(seed))
    assert torch.equal(neg, again)  # seeded
    heavy = (w[1:] > 0).sum() > 1
    ok = torch.as_tensor(w)[neg] > 0  # only items with weight are drawn, unless the positive holds all of it
    assert ok.all() or not heavy


def test_popularity_sampler_draws_proportionally_to_weight_without_the_positive():
    w = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    neg = NegativeSampler(w).sample(torch.full((4000,), 3), 50, torch.Generator().manual_seed(0))
    freq = np.bincount(neg.numpy().ravel(), minlength=5) / neg.numel()
    np.testing.assert_allclose(freq, [0, 1 / 7, 2 / 7, 0, 4 / 7], atol=0.01)
    uni = NegativeSampler.uniform(4).sample(torch.full((4000,), 2), 50, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.bincount(uni.numpy().ravel(), minlength=5) / uni.numel(), [0, 1 / 3, 0, 1 / 3, 1 / 3], atol=0.01)


# -- ranking metrics, by hand --------------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    m = ranking_metrics(torch.tensor([0, 3, 15, 60, 200]), ks=(10, 20))
    assert m["n"] == 5
    assert m["hr@10"] == pytest.approx(2 / 5) and m["hr@20"] == pytest.approx(3 / 5) and m["recall@10"] == m["hr@10"]
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(17)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 4) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 16 + 1 / 61 + 1 / 201) / 5)


def test_metrics_with_several_targets_per_sample():
    # sample 1: targets at list positions 1 and 12; sample 2: one target at 0 (-1 = no second target)
    m = ranking_metrics(np.array([[1, 12], [0, -1]]), ks=(10,))
    assert m["hr@10"] == 1.0 and m["recall@10"] == pytest.approx((1 / 2 + 1) / 2)
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(((1 / math.log2(3)) / idcg2 + 1) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)


def test_ties_count_against_the_target():
    pos = torch.tensor([1.0, 1.0])
    scores = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.5, 0.5]])
    assert count_above(pos, scores).tolist() == [2, 1]
    assert count_above(pos, scores, torch.tensor([[False, True, True], [True, True, True]])).tolist() == [1, 1]
    assert ranking_metrics(count_above(torch.zeros(3), torch.zeros(3, 99)))["hr@10"] == 0.0  # a constant model


def test_losses_match_their_formulas():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    sig = torch.sigmoid
    assert next_item_loss("bce", logits, None).item() == pytest.approx(
        (-math.log(sig(torch.tensor(2.0))) - (math.log(1 - sig(torch.tensor(0.0))) + math.log(1 - sig(torch.tensor(-1.0)))) / 2))
    assert next_item_loss("bpr", logits, None).item() == pytest.approx(
        -(math.log(sig(torch.tensor(2.0))) + math.log(sig(torch.tensor(3.0)))) / 2)
    z = math.exp(2) + 1 + math.exp(-1)
    assert next_item_loss("sampled_softmax", logits, None).item() == pytest.approx(-math.log(math.exp(2) / z))
    logq = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    zq = math.exp(2) * 2 + 4 + math.exp(-1) * 4
    assert next_item_loss("sampled_softmax", logits, None, logq).item() == pytest.approx(-math.log(math.exp(2) * 2 / zq))
    assert next_item_loss("ce", logits, torch.tensor([0])).item() == pytest.approx(-math.log(math.exp(2) / z))


# -- models on the real Taobao slice --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def taobao_split(tmp_path_factory):
    """The real Taobao slice through the normal pipeline: `lsdata ingest`, `lsdata split`."""
    root = tmp_path_factory.mktemp("next") / "taobao"
    r = CliRunner().invoke(app, ["ingest", "taobao", str(need(TAOBAO_SLICE)), "--out", str(root)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["split", str(root)])
    assert r.exit_code == 0, r.output
    return root


def _batch(root, name, n=16, **params):
    cls = models.get(name)
    ds = open_dataset(root)
    seq = load_sequences(ds)
    method, cut, vcut, _ = split_protocol(ds)
    idx = build_index(seq, method, cut, vcut, 1, 1)["train"]
    m = ds.manifest
    spec = DataSpec(m.dataset, "sequences", m.users, m.items, m.cates)
    torch.manual_seed(0)
    nodrop = {"dropout": 0.0} if "dropout" in cls.Params.model_fields else {}
    model = cls(spec, cls.make_params(spec.dataset, {**nodrop, **SMALL.get(name, {}), **params}))
    rows = np.linspace(0, len(idx) - 1, n).astype(int)  # spread over users, long histories included
    return model, NextItemDataset(seq, idx, model.p.max_len).__getitems__(rows), spec


@pytest.mark.parametrize("name", NEXT)
def test_model_shapes_and_gradients_reach_every_parameter(name, taobao_split):
    model, batch, spec = _batch(taobao_split, name)
    logits, extra = model(batch)
    assert logits.shape == (16, spec.n_items + 1) and torch.isinf(logits[:, 0]).all()
    assert torch.isfinite(logits[:, 1:]).all() and torch.isfinite(extra)
    items = torch.randint(1, spec.n_items + 1, (16, 5))
    sub, _ = model(batch, items)
    torch.testing.assert_close(sub, logits.gather(1, items), rtol=1e-4, atol=1e-4)
    (next_item_loss("ce", logits, batch["target"]) + next_item_loss("bpr", sub, None) + extra).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize(("name", "tables"), [("sasrec", ("item", "pos")), ("gru4rec_next", ("item",))])
def test_item_tables_start_glorot_uniform_with_a_zero_padding_row_as_the_official_code(name, tables):
    spec = DataSpec("amazon", "sequences", 10, 3000, 5)
    cls = models.get(name)
    model = cls(spec, cls.make_params("amazon", {}))
    for table in (getattr(model, t).weight.detach() for t in tables):
        bound = math.sqrt(6 / sum(table.shape))
        assert float(table.abs().max()) <= bound and float(table.abs().max()) > 0.9 * bound
    assert not model.item.weight[0].any()


def test_sasrec_feed_forward_width_is_ffn_dim_and_defaults_to_d_as_the_official_block(taobao_split):
    model, batch, spec = _batch(taobao_split, "sasrec", ffn_dim=24)
    d = model.p.emb_dim
    assert all(tuple(b.w1.weight.shape) == (24, d) and tuple(b.w2.weight.shape) == (d, 24) for b in model.blocks)
    assert tuple(_batch(taobao_split, "sasrec")[0].blocks[0].w1.weight.shape) == (d, d)
    next_item_loss("ce", model(batch)[0], batch["target"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_gru4rec_next_with_recboles_layout_wider_gru_dense_map_and_embedding_dropout(taobao_split):
    """hidden != emb_dim: a GRU of `hidden` units and a linear map back to d (RecBole's `dense`); embedding dropout
    is active in training only; no item bias and no GRU biases (RecBole has neither); gradients reach every parameter
    and the encoder stays causal."""
    model, batch, spec = _batch(taobao_split, "gru4rec_next", hidden=12, embed_dropout=0.5, item_bias=False, gru_bias=False)
    assert model.gru.hidden_size == 12 and tuple(model.dense.weight.shape) == (model.p.emb_dim, 12)
    assert model.output()[1] is None and "bias" not in dict(model.named_parameters())
    assert not model.gru.bias and not [n for n, _ in model.gru.named_parameters() if "bias" in n]
    logits, extra = model(batch)
    assert logits.shape == (16, spec.n_items + 1)
    next_item_loss("ce", logits, batch["target"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert not torch.equal(model(batch)[0], model(batch)[0])  # dropout on the input embeddings in training
        model.eval()
        torch.testing.assert_close(model(batch)[0], model(batch)[0], rtol=0, atol=0)
        u, _ = model.encode_seq(batch)
        j = u.shape[1] // 2
        changed = dict(batch, hist_item=batch["hist_item"].clone())
        changed["hist_item"][:, j] = torch.where(changed["hist_item"][:, j] > 0, changed["hist_item"][:, j] % spec.n_items + 1, 0)
        torch.testing.assert_close(model.encode_seq(changed)[0][:, :j], u[:, :j], rtol=0, atol=0)


@pytest.mark.parametrize("name", NEXT)
def test_model_overfits_one_batch(name, taobao_split):
    model, batch, _ = _batch(taobao_split, name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = next_item_loss("ce", model(batch)[0], batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        top = model(batch)[0].argmax(1)
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert (top == batch["target"]).float().mean() >= 0.75


@pytest.mark.parametrize("name", PER_POSITION)
def test_encode_seq_is_causal_and_encode_is_its_last_position(name, taobao_split):
    model, batch, spec = _batch(taobao_split, name)
    model.eval()
    with torch.no_grad():
        u, _ = model.encode_seq(batch)
        last, _ = model.encode(batch)
        torch.testing.assert_close(last, u[:, -1], rtol=0, atol=0)
        L = u.shape[1]
        j = 3 * L // 8  # a position whose inputs are real for most rows (DMAN: segment 1 of 4, in memory from segment 3 on)
        rows = batch["hist_item"][:, j] > 0
        assert rows.sum() >= 4
        changed = dict(batch, hist_item=batch["hist_item"].clone())
        changed["hist_item"][:, j] = torch.where(rows, changed["hist_item"][:, j] % spec.n_items + 1, 0)
        v, _ = model.encode_seq(changed)
    torch.testing.assert_close(v[:, :j], u[:, :j], rtol=0, atol=1e-6)  # nothing earlier moves...
    assert ((v[rows, j] - u[rows, j]).abs().amax(-1) > 1e-4).all()  # ...the changed position does


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce", "bpr"])
def test_all_position_loss_is_the_mean_over_counted_positions(loss, taobao_split, tmp_path):
    cfg = TrainConfig(model="gru4rec_next", data=str(taobao_split), out=str(tmp_path / "r"), device="cpu", threads=1,
                      params={"emb_dim": 16, "max_len": 20, "dropout": 0.0},
                      next_item=NextItemOptions(targets="all", loss=loss, negatives=5, sampler="uniform"))
    r = NextItemRun(cfg)
    train_data = r.data()[0]
    everything = train_data.__getitems__(np.arange(len(train_data)))
    tied = ((everything["pos_source"] != torch.arange(20)) & (everything["pos_target"] > 0)).any(1)
    rows = np.r_[np.flatnonzero(tied.numpy())[:4], np.flatnonzero(~tied.numpy())[:4]]
    assert tied.sum() >= 2  # the real slice has same-second events: some targets read the output before a tie
    batch = train_data.__getitems__(rows)
    counted = batch["pos_target"] > 0
    assert counted.sum() > counted.shape[0]  # several targets per window
    torch.manual_seed(5)
    got, _ = r.loss(batch)
    torch.manual_seed(5)  # the same negatives, drawn for the flattened counted positions
    pos = batch["pos_target"][counted].long()
    u = r.model.encode_seq(batch)[0]
    u = torch.stack([u[i, batch["pos_source"][i]] for i in range(len(rows))])[counted]  # each target's source output
    w, bias = r.model.output()
    if loss == "ce":
        want = torch.nn.functional.cross_entropy((u @ w.T + bias).index_fill(1, torch.tensor([0]), -math.inf), pos)
    else:
        items = torch.cat([pos[:, None], r.sampler.sample(pos, 5)], 1)
        want = next_item_loss(loss, (u[:, None] * w[items]).sum(-1) + bias[items], pos)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", PER_POSITION)
def test_a_tied_target_is_scored_from_the_output_before_the_tie_on_real_data(name, taobao_split, tmp_path):
    cfg = TrainConfig(model=name, data=str(taobao_split), out=str(tmp_path / "r"), device="cpu", threads=1,
                      params={"emb_dim": 16, "max_len": 20, "dropout": 0.0} | ({"seg_len": 5} if name == "dman" else {}),
                      next_item=NextItemOptions(targets="all", loss="ce"))
    r = NextItemRun(cfg)
    r.model.eval()
    data = r.data()[0]
    every = data.__getitems__(np.arange(len(data)))
    slot = torch.arange(20).expand_as(every["pos_source"])
    moved = (every["pos_source"] != slot) & (every["pos_target"] > 0)  # same-second events in the Taobao slice
    rows = np.flatnonzero(moved.any(1).numpy())
    assert rows.size >= 2
    batch = data.__getitems__(rows)
    batch["pos_target"] = torch.where(moved[rows], batch["pos_target"], 0)  # only the tied targets count
    with torch.no_grad():
        got, _ = r.loss(batch)
        u = r.model.encode_seq(batch)[0]
    counted = batch["pos_target"] > 0
    pos = batch["pos_target"][counted].long()
    w, bias = r.model.output()

    def ce(v):
        scores = r.model.item_scores(v, w, bias).index_fill(1, torch.tensor([0]), -math.inf)
        return torch.nn.functional.cross_entropy(scores, pos)

    src = u.gather(1, batch["pos_source"][..., None].expand(-1, -1, u.shape[-1]))[counted]
    torch.testing.assert_close(got, ce(src))
    assert (got - ce(u[counted])).abs() > 1e-4  # the output at the tie itself would give another loss


def test_targets_all_needs_a_per_position_model_and_stride_1(taobao_split, tmp_path):
    base = TrainConfig(model="stamp", data=str(taobao_split), out=str(tmp_path / "x"), device="cpu", threads=1,
                       next_item=NextItemOptions(targets="all"))
    with pytest.raises(InputError, match="per-position"):
        NextItemRun(base)
    with pytest.raises(InputError, match="stride"):
        NextItemRun(base.model_copy(update={"model": "sasrec", "next_item": NextItemOptions(targets="all", stride=2)}))
    assert NextItemRun(base.model_copy(update={"model": "sasrec", "next_item": NextItemOptions()})).targets == "all"
    assert NextItemRun(base.model_copy(update={"model": "gru4rec_next", "next_item": NextItemOptions()})).targets == "last"


def test_lsdata_train_sasrec_with_all_position_targets_end_to_end(taobao_split, tmp_path):
    out = tmp_path / "all"
    r = CliRunner().invoke(app, ["train", "sasrec", str(taobao_split), "--out", str(out), "--targets", "all",
                                 "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--threads", "1"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    assert conf["targets"] == "all" and conf["loss"] == "bce" and conf["negatives"] == 1
    last = build_index(load_sequences(open_dataset(taobao_split)), "cut", *split_protocol(open_dataset(taobao_split))[1:3], 1, 1)
    assert conf["samples"]["train"] < conf["train_targets"] <= len(last["train"])  # windows hold several targets
    assert conf["samples"]["test"] == m["test"]["n"] == len(last["test"])  # evaluation unchanged: one target each
    assert m["steps"] == 3 * math.ceil(conf["samples"]["train"] / 8)
    losses = [float(x.split(",")[4]) for x in (out / "log.csv").read_text().splitlines() if x.startswith("train,")]
    assert losses[-1] < losses[0]  # the per-position BCE is learned
    assert 0.0 <= m["test"]["full"]["ndcg@10"] <= 1.0


# -- end to end: `lsdata train sasrec DATA` -------------------------------------------------------------------------
def test_lsdata_train_sasrec_end_to_end_selects_on_valid_and_tests_once(taobao_split, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "sasrec", str(taobao_split), "--out", str(out), "--max-steps", "6",
                                 "--eval-every", "2", "--batch-size", "64", "--device", "cpu", "--threads", "1",
                                 "--targets", "last"])
    assert r.exit_code == 0, r.output
    assert "test ndcg@10" in r.output
    for f in ("config.json", "log.csv", "metrics.json", "curve.png", "best.pt", "last.pt"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    assert conf["split_method"] == "cut" and conf["loss"] == "bce" and conf["samples"]["test"] == m["test"]["n"] > 0
    assert m["steps"] == 6 and m["selection"] == "valid ndcg@10 (full ranking)"
    for k in ("hr", "recall", "ndcg", "mrr"):
        for cut in (10, 20, 50, 100):
            assert 0.0 <= m["test"]["full"][f"{k}@{cut}"] <= 1.0
    rows = (out / "log.csv").read_text().splitlines()
    valid = [x for x in rows if x.startswith("valid,")]
    assert len(valid) == 3 and not any(x.startswith("test") for x in rows)
    again = CliRunner().invoke(app, ["eval", str(out), "--split", "test"])
    assert again.exit_code == 0 and json.loads(again.stdout)["full"] == m["test"]["full"]


def test_leave_one_out_and_options_flow_through(taobao_split, tmp_path):
    cfg = TrainConfig(model="stamp", data=str(taobao_split), out=str(tmp_path / "s"), device="cpu", threads=1,
                      max_steps=2, next_item=NextItemOptions(loss="sampled_softmax", negatives=7, sampler="popularity",
                                                             stride=3, eval_negatives=20, select_on="sampled"))
    m = train(cfg)
    conf = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (conf["loss"], conf["negatives"], conf["sampler"]) == ("sampled_softmax", 7, "popularity")
    assert m["selection"] == "valid ndcg@10 (sampled ranking)" and m["test"]["eval_negatives"] == 20
    r = CliRunner().invoke(app, ["split", str(taobao_split), "--method", "loo"])
    assert r.exit_code == 0, r.output
    try:
        m = train(cfg.model_copy(update={"out": str(tmp_path / "l")}))
        conf = json.loads((tmp_path / "l" / "config.json").read_text())
        assert conf["split_method"] == "loo" and "leak" in conf["warnings"][0]
        users = open_dataset(taobao_split).manifest.users
        assert m["test"]["n"] <= users and m["valid"]["n"] <= users
    finally:
        assert CliRunner().invoke(app, ["split", str(taobao_split)]).exit_code == 0


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(taobao_split, tmp_path):
    def cfg(out):  # negatives come from the global RNG, which last.pt saves
        return TrainConfig(model="gru4rec_next", data=str(taobao_split), out=str(tmp_path / out), device="cpu", threads=1,
                           max_steps=6, batch_size=256, checkpoint_every=1, params={"emb_dim": 16},
                           next_item=NextItemOptions(negatives=50))

    full = train(cfg("a"))

    def kill(ev):
        if ev["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg("b"), progress=kill)
    resumed = train(cfg("b"), resume=True)
    assert resumed["test"] == full["test"] and resumed["steps"] == full["steps"] == 6


@settings(max_examples=60, deadline=None)
@given(users=st.lists(user_ts, min_size=1, max_size=8), method=st.sampled_from(["cut", "loo"]),
       cut=st.integers(0, 12), back=st.integers(0, 6), warmup=st.integers(1, 3), stride=st.integers(1, 3),
       horizon=st.integers(1, 4))
def test_horizon_samples_predict_the_next_training_targets_from_the_first_ones_history(
        users, method, cut, back, warmup, stride, horizon):
    seq = _sequences(users)
    idx = build_index(seq, method, cut, cut - back, warmup, stride)["train"]
    every = build_index(seq, method, cut, cut - back, warmup, 1)["train"].target
    train = training_targets(seq, method, cut, cut - back, warmup)
    assert np.array_equal(np.flatnonzero(train), np.sort(every))
    got = extend_horizon(seq, idx, train, horizon)
    want = [(r, t + k, e) for r, t, e in zip(idx.row, idx.target, idx.hist_end) for k in range(horizon)
            if t + k < seq.offsets[r + 1] and train[t + k]]
    assert list(zip(got.row, got.target, got.hist_end)) == want
    for r, t, e in want:  # the history is strictly earlier than every target it predicts
        assert (seq.ts[seq.offsets[r] : e] < seq.ts[t]).all()
    if horizon == 1:
        assert got is idx
    if stride == 1:  # the sliding window: each training target predicted from up to `horizon` histories
        counts = np.bincount(got.target, minlength=seq.ts.size)[every]
        assert counts.max(initial=0) <= horizon and (counts >= 1).all()


def test_caser_trains_with_three_targets_per_history(taobao_split, tmp_path):
    cfg = TrainConfig(model="caser_next", data=str(taobao_split), out=str(tmp_path / "r"), device="cpu", threads=1,
                      max_steps=3, params={"emb_dim": 8}, next_item=NextItemOptions(horizon=3))
    r = NextItemRun(cfg)
    one = NextItemRun(cfg.model_copy(update={"next_item": NextItemOptions(horizon=1)}))
    assert r.horizon == 3 and one.horizon == 1
    assert len(one.index["train"]) < len(r.index["train"]) <= 3 * len(one.index["train"])
    assert r.n_train_targets == one.n_train_targets  # the same events, each predicted from more histories
    m = train(cfg)
    assert m["steps"] == 3 and json.loads((tmp_path / "r" / "config.json").read_text())["horizon"] == 3
    with pytest.raises(InputError, match="horizon"):
        NextItemRun(cfg.model_copy(update={"model": "sasrec", "next_item": NextItemOptions(horizon=3, targets="all")}))
