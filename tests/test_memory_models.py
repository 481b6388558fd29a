"""HPMN and MIMN beyond the generic model tests: the periodic clock, the regularisers, the read-out
contracts (weights are distributions, the target read never writes), and batched == event-by-event for
every option that changes the recursion. Small synthetic data, so these run without the real slices."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from lsdata.models.base import DataSpec
from lsdata.models.blocks import front_mask, history
from lsdata.models.memory import (
    HPMN,
    MIMN,
    content_address,
    shift_sharpen,
    slot_covariance_penalty,
    utilisation_loss,
)

N_ITEMS, N_CATES = 60, 7


def _spec(layout: str) -> DataSpec:
    return DataSpec("taobao", layout, n_users=50, n_items=N_ITEMS, n_cates=N_CATES)


def _build(cls, **overrides):
    torch.manual_seed(0)
    model = cls(_spec(cls.layout), cls.make_params("taobao", overrides))
    return model.eval()


def _batch(lengths, width, seed=0):
    """Front-padded random histories with the given lengths, candidates and the mimn negatives."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(lengths, dtype=torch.int32)
    b = len(lengths)
    real = front_mask(n.long(), width)

    def ids(hi, shape):
        return torch.randint(1, hi + 1, shape, generator=g, dtype=torch.int32)

    return {
        "hist_item": ids(N_ITEMS, (b, width)) * real, "hist_cate": ids(N_CATES, (b, width)) * real,
        "hist_behavior": ids(4, (b, width)) * real, "hist_len": n,
        "neg_item": ids(N_ITEMS, (b, width)) * real, "neg_cate": ids(N_CATES, (b, width)) * real,
        "item": ids(N_ITEMS, (b,)), "cate": ids(N_CATES, (b,)), "label": torch.randint(0, 2, (b,), generator=g).float(),
    }


def _fold(model, batch, upto=None):
    state = model.init_state(batch["label"].shape[0])
    for t in range(batch["hist_item"].shape[1] if upto is None else upto):
        state = model.update(state, {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")})
    return state


def _cand(batch):
    return {"item": batch["item"], "cate": batch["cate"]}


# -- HPMN -------------------------------------------------------------------------------------------------


def test_hpmn_layer_j_changes_exactly_on_the_events_where_i_mod_t_j_is_zero():
    model = _build(HPMN)  # taobao preset: t = 1, 2, 4, 12
    periods = model.p.periods
    assert periods == (1, 2, 4, 12)
    lead = 5  # row 1 starts with 5 padding events: they change nothing and do not advance its clock
    batch = _batch([30, 25], 30, seed=1)
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(30):
            before = state[0].clone()
            state = model.update(state, {k: batch[f"hist_{k}"][:, t] for k in ("item", "cate", "behavior")})
            for row, i in ((0, t + 1), (1, t + 1 - lead)):
                assert state[1][row].item() == max(i, 0)
                for j, t_j in enumerate(periods):
                    changed = not torch.equal(before[row, j], state[0][row, j])
                    assert changed == (i >= 1 and i % t_j == 0), (row, i, j, t_j)


@pytest.mark.parametrize("periods", [(1, 2, 4, 12), (1, 3, 6), (1, 1, 2)])
@pytest.mark.parametrize("append_target", [False, True])
def test_hpmn_batched_memory_and_scores_equal_the_event_by_event_fold(periods, append_target):
    model = _build(HPMN, periods=periods, append_target=append_target)
    width = 30
    batch = _batch([0, 1, 2, 3, 11, 12, 13, 24, 29, 30], width, seed=2)
    with torch.no_grad():
        x, _, n, _ = history(model.emb, batch, append_target)
        slots = model.memory(x, n)
        full, _ = model(batch)
        state = _fold(model, batch)
        folded = model.score(state, _cand(batch))
        if append_target:
            e = model.emb(batch["item"], batch["cate"], None)
            state = model.fold(state, e, torch.ones(len(e), dtype=torch.bool))
    torch.testing.assert_close(slots, state[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded, full, rtol=1e-5, atol=1e-5)
    # a layer with t_j > n has never updated: its slot is the zero initial state
    for row, length in enumerate(n.tolist()):
        for j, t_j in enumerate(periods):
            assert bool(slots[row, j].abs().sum() == 0) == (length < t_j)


def test_hpmn_slot_gradient_reaches_exactly_the_events_the_slot_has_consumed():
    """Slot j after n events depends on events 1 .. t_j * floor(n / t_j) of its own row, through every lower layer:
    the gradient must reach all of them (nothing detached between layers: the slow layers are the only path from a
    label to an event 25-75 steps back, benchmarks/RESULTS.md issue #4) and nothing else (later events, padding,
    other rows). The fold test pins the values; this pins the gradient path."""
    model = _build(HPMN, periods=(1, 2, 4, 12))
    width = 30
    lengths = [30, 25, 13, 11, 3, 0]
    batch = _batch(lengths, width, seed=15)
    x, _, n, _ = history(model.emb, batch, False)
    x = x.detach().requires_grad_(True)
    slots = model.memory(x, n)
    for row, length in enumerate(lengths):
        for j, t_j in enumerate(model.p.periods):
            (g,) = torch.autograd.grad(slots[row, j].sum(), x, retain_graph=True)
            reached = g.abs().sum(-1) > 0  # [B, T]
            consumed = t_j * (length // t_j)  # events 1..consumed, at positions width - length .. + consumed - 1
            expected = torch.zeros_like(reached)
            expected[row, width - length: width - length + consumed] = True
            assert torch.equal(reached, expected), (row, j, t_j)


def test_covariance_penalty_is_zero_for_uncorrelated_slots_and_the_off_diagonal_norm_otherwise():
    a = torch.tensor([1.0, -1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 1.0, -1.0])
    uncorrelated = torch.stack([a + 3.0, b - 1.0])  # centred over h they are orthogonal: C is diagonal
    correlated = torch.stack([a, 2 * a])  # C[0, 1] = (1*2 + 1*2) / 4 = 1, so the norm is sqrt(2)
    mem = torch.stack([uncorrelated, correlated])
    assert slot_covariance_penalty(mem[:1]).item() == 0.0
    assert slot_covariance_penalty(mem[1:]).item() == pytest.approx(math.sqrt(2))
    assert slot_covariance_penalty(mem, "mean").item() == pytest.approx(math.sqrt(2) / 2)
    assert slot_covariance_penalty(mem, "sum").item() == pytest.approx(math.sqrt(2))
    # users without history have all-zero slots: penalty 0 with a finite (zero) gradient
    zero = torch.zeros(3, 4, 32, requires_grad=True)
    slot_covariance_penalty(zero).backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))


def test_hpmn_extra_loss_is_the_weighted_penalty_on_its_memory_and_sum_scales_with_the_batch():
    batch = _batch([5, 17, 30, 0], 30, seed=3)
    for reduce, scale in (("mean", 1), ("sum", 4)):
        model = _build(HPMN, reg_reduce=reduce)
        with torch.no_grad():
            x, _, n, _ = history(model.emb, batch, False)
            expected = model.p.memory_reg * slot_covariance_penalty(model.memory(x, n), "mean") * scale
            _, extra = model(batch)
        assert extra.item() > 0
        torch.testing.assert_close(extra, expected)


def test_hpmn_score_cost_is_independent_of_the_history_length():
    model = _build(HPMN)
    cost = []
    for length in (3, 200):
        batch = _batch([length] * 4, 200, seed=4)
        with torch.no_grad():
            state = _fold(model, batch)
            assert state[0].shape == (4, len(model.p.periods), model.p.hidden)
            with FlopCounterMode(display=False) as flops:
                model.score(state, _cand(batch))
        cost.append(flops.get_total_flops())
    assert cost[0] == cost[1] > 0


@pytest.mark.parametrize("periods", [(1, 3, 4), (2, 4), (), (1, 0)])
def test_hpmn_periods_must_start_at_one_and_nest(periods):
    with pytest.raises(ValidationError, match="periods"):
        HPMN.make_params("taobao", {"periods": periods})


# -- MIMN -------------------------------------------------------------------------------------------------

MIMN_OPTIONS = [
    {},
    {"util_reg": "code", "static_keys": True, "beta_scale": 2.0, "miu_memory": "previous"},
    {"util_reg": "none", "miu": False},
    {"miu_topk": 3, "append_target": True},
    {"aux_weight": 2.0, "use_behavior": False},
]


def test_content_addressing_gives_distributions_that_prefer_the_most_similar_slot():
    g = torch.Generator().manual_seed(5)
    mem = torch.randn(3, 6, 8, generator=g)
    key = torch.stack([mem[:, 2], -mem[:, 4]], 1)  # head 0 looks for slot 2, head 1 for the opposite of slot 4
    w = content_address(key, torch.full((3, 2), 50.0), mem)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2))
    assert (w >= 0).all()
    assert (w[:, 0].argmax(-1) == 2).all() and (w[:, 1].argmin(-1) == 4).all()
    w2 = content_address(key, torch.ones(3, 2), mem, static_keys=torch.randn(6, 8, generator=g))
    torch.testing.assert_close(w2.sum(-1), torch.ones(3, 2))
    sharp = shift_sharpen(w[:, 0], torch.tensor([[0.0, 1.0, 0.0]] * 3), torch.full((3, 1), 3.0))
    torch.testing.assert_close(sharp.sum(-1), torch.ones(3))


@pytest.mark.parametrize("options", MIMN_OPTIONS)
def test_mimn_target_read_weights_sum_to_one(options):
    model = _build(MIMN, **options)
    batch = _batch([0, 4, 19], 20, seed=6)
    with torch.no_grad():
        state = _fold(model, batch)
        _, w = model.target_read(state, model.emb(batch["item"], batch["cate"], None))
    assert w.shape == (3, model.p.slots)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))


@pytest.mark.parametrize("append_target", [False, True])
def test_mimn_scoring_never_writes_into_the_state(append_target):
    model = _build(MIMN, append_target=append_target)
    batch, other = _batch([3, 12, 20], 20, seed=7), _batch([1, 1, 1], 20, seed=8)
    with torch.no_grad():
        state = _fold(model, batch, upto=15)
        snapshot = [None if t is None else t.clone() for t in state]
        first = model.score(state, _cand(other))
        score = model.score(state, _cand(batch))
        again = model.score(state, _cand(other))
        for before, after in zip(snapshot, state, strict=True):
            assert (before is None and after is None) or torch.equal(before, after)
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        # and the next event sees the same state as if nothing had been scored
        ev = {k: batch[f"hist_{k}"][:, 15] for k in ("item", "cate", "behavior")}
        clean = model.update(type(state)(*snapshot), ev)
        for a, b in zip(model.update(state, ev), clean, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    assert score.shape == (3,)


def test_mimn_padding_events_leave_every_part_of_the_state_untouched():
    model = _build(MIMN, util_reg="code")
    batch = _batch([8, 8], 8, seed=9)
    with torch.no_grad():
        state = _fold(model, batch)
        pad = {"item": torch.zeros(2, dtype=torch.int32), "cate": torch.zeros(2, dtype=torch.int32),
               "behavior": torch.zeros(2, dtype=torch.int32)}
        after = model.update(state, pad)
    for a, b in zip(state, after, strict=True):
        assert torch.equal(a, b)


def test_utilisation_loss_is_zero_for_uniform_write_weights_and_positive_otherwise():
    uniform = torch.full((4, 8), 2.5)
    assert utilisation_loss(uniform).item() == 0.0
    skew = torch.tensor([[3.0, 1.0, 0.0, 0.0]])
    assert utilisation_loss(skew).item() == pytest.approx(((3 - 1) ** 2 + 0 + 1 + 1) / 4)
    # in the model: zero head parameters give zero keys, so both heads address every slot uniformly
    model = _build(MIMN)
    with torch.no_grad():
        model.o2p.weight.zero_()
        model.o2p.bias.zero_()
    batch = _batch([0, 7, 20], 20, seed=10)
    with torch.no_grad():
        _, extra = model(batch)
        state = _fold(model, batch)
    assert extra.item() == 0.0
    torch.testing.assert_close(state.util, batch["hist_len"].float()[:, None].expand(-1, model.p.slots) / model.p.slots)


@pytest.mark.parametrize("options", MIMN_OPTIONS)
def test_mimn_batched_forward_equals_the_event_by_event_fold(options):
    model = _build(MIMN, **options)
    batch = _batch([0, 1, 2, 9, 23, 24], 24, seed=11)
    with torch.no_grad():
        full, extra = model(batch)
        state = _fold(model, batch)
        folded = model.score(state, _cand(batch))
        if model.p.append_target:  # the reference's candidate step is a write like any other event
            state = model.fold(state, model.emb(batch["item"], batch["cate"], None), torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(folded, full, rtol=1e-5, atol=1e-5)
    if model.p.util_reg != "none" and model.aux is None:
        torch.testing.assert_close(extra, model.p.util_weight * utilisation_loss(state.util), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("topk", [1, 3])
def test_mimn_induction_unit_updates_exactly_the_top_k_read_channels(topk):
    model = _build(MIMN, miu_topk=topk)
    batch = _batch([10, 10, 10], 10, seed=12)
    with torch.no_grad():
        state = _fold(model, batch, upto=9)
        e = model.emb(batch["hist_item"][:, 9], batch["hist_cate"][:, 9], batch["hist_behavior"][:, 9])
        _, prm = model._controller(state, model._project(e)[0])
        w_r = model._weights(prm, state.mem, 2)[:, 0]
        after = model.fold(state, e, torch.ones(3, dtype=torch.bool))
    changed = (after.miu != state.miu).any(-1)
    expected = torch.zeros_like(changed).scatter(1, w_r.topk(topk, -1).indices, True)
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("options", MIMN_OPTIONS)
def test_mimn_options_create_only_parameters_that_get_gradients(options):
    model = _build(MIMN, **options).train()
    batch = _batch([0, 3, 11, 24, 24], 24, seed=13)
    logit, extra = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"]) + extra
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert (model.util_map is not None) == (model.p.util_reg == "paper")
    assert (model.keys is not None) == model.p.static_keys
    assert (model.aux is not None) == (model.p.aux_weight > 0)
    assert (model.miu_cell is not None) == model.p.miu


def test_mimn_aux_loss_adds_a_positive_term_computed_from_the_negatives():
    model = _build(MIMN, aux_weight=2.0)
    batch = _batch([5, 24], 24, seed=14)
    with torch.no_grad():
        _, extra = model(batch)
        state = _fold(model, batch)
        util = model.p.util_weight * utilisation_loss(state.util)
        assert extra.item() > util.item()
        moved = dict(batch, neg_item=(batch["neg_item"] % N_ITEMS) + (batch["neg_item"] > 0))
        assert model(moved)[1].item() != extra.item()


def test_mimn_presets_follow_the_paper_slot_counts():
    assert MIMN.make_params("amazon").slots == 4
    assert MIMN.make_params("taobao").slots == 8
    with pytest.raises(ValidationError):
        MIMN.make_params("taobao", {"miu_topk": 9})
